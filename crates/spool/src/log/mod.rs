//! The write-ahead log: numbered segment files `seg-NNNNNNNNNNNNNNNNNNNN.log` in one directory.
//! [`scan`] reads them back (truncating a torn tail when asked to repair); the [`Writer`] thread
//! appends with group commit, numbers entries in file order, hands them to the forwarder in that
//! order, and deletes a segment once every entry in it and before it is done.
//!
//! Memory does not grow with the backlog's bytes: per pending entry only a [`Slot`] (where its
//! PUT is, which sinks it still has to reach, its key's hash) is kept; the entry itself is read
//! back from its segment with [`read_entry`] when it is forwarded.
//!
//! Segments are deleted from the head only (a later segment may hold the DONEs of an earlier
//! one's entries), so an entry that stays pending (a key a broker keeps refusing) would pin
//! every segment behind it. Compaction prevents that: when the head segment's live entries are
//! a small part of it and the log has grown past it, they are copied forward (same seq, the
//! sinks still to reach) into the active segment, synced, and the head is deleted. A scan that
//! meets both copies keeps the later one; the lanes find moved entries in [`Relocations`].

mod capacity;
mod compact;
mod disk;
mod index;
mod protocol;
mod scan;
mod segment;
mod writer;

pub use capacity::{Capacity, NoRoom, Reservation};
pub use disk::{Disk, Files, SegmentFile};
pub use index::{Location, PendingKeys, Relocations, Slot, TargetSets, Targets};
pub use protocol::{Command, Dispatch, Dones};
pub use scan::{read_entry, scan, Records, Scan};
pub use segment::{segment_path, segments, sync_dir, Segment};
pub use writer::{Gauges, Writer};
