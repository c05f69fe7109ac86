//! The writer thread: it owns the active segment, appends with group commit (one write and one
//! `fdatasync` per batch), numbers entries in file order, hands them to the forwarder in that
//! order, and keeps the spool's gauges.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::capacity::Capacity;
use super::compact::COMPACT_AFTER;
use super::disk::{Disk, SegmentFile};
use super::index::{PendingKeys, Relocations, Slot, TargetSets};
use super::protocol::{Command, Dispatch, Dones};
use super::scan::Scan;
use super::segment::{create_segment, Segment};
use crate::record::{self, Entry, Record};

/// Gauges the writer keeps current.
pub struct Gauges {
    /// The log's room: the writer counts its bytes and clears the full flag.
    pub capacity: Arc<Capacity>,
    pub entries: prometheus::IntGauge,
    pub bytes_gauge: prometheus::IntGauge,
    pub oldest_age: prometheus::Gauge,
    /// Entries with work left, per key: what a delivery must not overtake.
    pub pending_keys: Arc<PendingKeys>,
    /// Entries copied forward by compaction.
    pub compacted: prometheus::IntCounter,
    pub relocations: Arc<Relocations>,
}

/// The single thread that owns the active segment.
pub struct Writer<D: Dispatch> {
    /// Where the segments are read back from (compaction).
    pub(super) dir: PathBuf,
    /// Every write and sync of the log goes through here.
    pub(super) disk: Box<dyn Disk>,
    pub(super) fsync: bool,
    pub(super) segment_limit: u64,
    pub(super) idle_roll: u64,
    pub(super) active: Box<dyn SegmentFile>,
    pub(super) segments: VecDeque<Segment>,
    /// The pending entries' slots, by seq.
    pub(super) live: BTreeMap<u64, Slot>,
    pub(super) next_seq: u64,
    pub(super) dispatch: D,
    pub(super) gauges: Gauges,
    pub(super) sets: TargetSets,
    /// The active segment may end in bytes of a failed write: nothing more is written to it.
    pub(super) torn: bool,
    /// See [`COMPACT_AFTER`].
    pub(super) compact_after: Duration,
    /// A write failed for lack of disk space: the spool counts as full until then at least
    /// (then the next put tells again), or until a put is written.
    pub(super) disk_full_until: Option<Instant>,
}

/// A put of a batch being written: the entry, who waits for it, and its frame's offset in the
/// batch and length.
type Put = (
    Box<Entry>,
    tokio::sync::oneshot::Sender<io::Result<u64>>,
    usize,
    usize,
);

/// A batch laid out for one write.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    puts: Vec<Put>,
    dones: Vec<(u64, String)>,
    stop: bool,
}

/// How long a write refused for lack of disk space keeps the spool marked full before a put
/// may try again.
const DISK_FULL_HOLD: Duration = Duration::from_secs(5);

/// Most commands taken into one batch (one write, one fsync).
const MAX_BATCH: usize = 4096;

impl<D: Dispatch> Writer<D> {
    /// Continue the log found by `scan`: a fresh segment is started for new writes.
    pub fn new(
        disk: Box<dyn Disk>,
        scan: Scan,
        fsync: bool,
        max_bytes: u64,
        dispatch: D,
        gauges: Gauges,
    ) -> io::Result<Writer<D>> {
        let mut segments: VecDeque<Segment> = scan.segments.into_iter().collect();
        let live = scan.pending;
        for slot in live.values() {
            gauges.pending_keys.add(slot.key);
        }
        let next_id = segments.back().map(|s| s.id + 1).unwrap_or(1);
        let active = match create_segment(disk.as_ref(), next_id, scan.next_seq) {
            Ok((file, size)) => {
                segments.push_back(Segment::new(next_id, size));
                file
            }
            // A full disk: the last segment (its tail cut clean by the scan) is written on,
            // so the relay starts and can drain its backlog (DONEs are small, and finished
            // segments are deleted as it goes).
            Err(e) if !segments.is_empty() => {
                let _ = disk.remove(next_id);
                let last = segments.back().map(|s| s.id).unwrap_or(next_id);
                tracing::warn!(error = %e, segment = last, "spool: cannot start a new segment; writing on in the last one");
                disk.open(last)?
            }
            Err(e) => return Err(e),
        };
        // Only now that the log can record their outcome are the pending entries forwarded:
        // a start that fails before this point has published nothing it cannot mark done.
        let mut dispatch = dispatch;
        for slot in live.values() {
            dispatch.dispatch(slot, None);
        }
        gauges
            .capacity
            .start_at(segments.iter().map(|s| s.size).sum());
        let mut writer = Writer {
            dir: disk.dir().to_path_buf(),
            disk,
            fsync,
            segment_limit: (max_bytes / 16).clamp(64 * 1024, 16 * 1024 * 1024),
            idle_roll: (max_bytes / 4).clamp(1, 64 * 1024),
            active,
            segments,
            live,
            next_seq: scan.next_seq,
            dispatch,
            gauges,
            torn: false,
            sets: TargetSets::default(),
            compact_after: COMPACT_AFTER,
            disk_full_until: None,
        };
        writer.collect_garbage();
        writer.update_gauges();
        Ok(writer)
    }

    /// Serve commands (and the marks on `dones`) until every sender is gone.
    pub fn run(mut self, commands: Receiver<Command>, dones: Arc<Dones>) {
        loop {
            let first = match commands.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: segments behind a stuck entry are still compacted, and finished
                    // ones deleted, so a spool that filled (and so refuses puts, which would
                    // otherwise be the only writes) drains back under its bound by itself.
                    self.collect_garbage();
                    self.update_gauges();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            batch.extend(dones.take());
            let stop = self.write_batch(batch);
            self.update_gauges();
            if stop {
                break;
            }
        }
        if let Err(e) = self.active.sync_all() {
            tracing::error!(error = %e, "spool: final sync failed");
        }
    }

    /// Write a batch; true when it asked to stop.
    pub(super) fn write_batch(&mut self, batch: Vec<Command>) -> bool {
        if self.torn && !self.roll() {
            return self.refuse_batch(batch);
        }
        let batch = self.encode(batch);
        let result = self.active.append(&batch.buf).and_then(|()| {
            if self.fsync && !batch.puts.is_empty() {
                self.active.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => self.committed(batch.buf.len() as u64, batch.puts),
            Err(e) => self.write_failed(&e, batch.puts),
        }
        for (seq, sink) in batch.dones {
            self.done(seq, &sink);
        }
        self.collect_garbage();
        batch.stop
    }

    /// No clean segment to write to (the disk is still full): refuse the puts, keep the DONEs
    /// in memory only (their entries are sent again after a restart, never lost).
    fn refuse_batch(&mut self, batch: Vec<Command>) -> bool {
        let mut stop = false;
        for command in batch {
            match command {
                Command::Put { reply, .. } => {
                    let _ = reply.send(Err(io::Error::other(
                        "the spool cannot start a clean segment",
                    )));
                }
                Command::Done { seq, sink } => self.done(seq, &sink),
                Command::Wake => {}
                Command::Stop => stop = true,
            }
        }
        // Finished segments are still deleted (and the torn one, once it holds nothing live,
        // emptied), so the disk gets its space back.
        self.collect_garbage();
        stop
    }

    /// Number the batch's puts and lay every record out in one buffer.
    fn encode(&mut self, batch: Vec<Command>) -> Batch {
        let mut out = Batch::default();
        for command in batch {
            match command {
                Command::Put {
                    mut entry,
                    mut frame,
                    reply,
                } => {
                    entry.seq = self.next_seq;
                    self.next_seq += 1;
                    record::set_put_seq(&mut frame, entry.seq);
                    let at = out.buf.len();
                    out.buf.extend_from_slice(&frame);
                    out.puts.push((entry, reply, at, frame.len()));
                }
                Command::Done { seq, sink } => {
                    let done = Record::Done {
                        seq,
                        sink: sink.clone(),
                    };
                    out.buf.extend_from_slice(&done.encode());
                    out.dones.push((seq, sink));
                }
                Command::Wake => {}
                Command::Stop => out.stop = true,
            }
        }
        out
    }

    /// The batch's `written` bytes are durable: index its puts, hand them on, answer them.
    fn committed(&mut self, written: u64, puts: Vec<Put>) {
        let active_id = self.segments.back().map(|s| s.id).unwrap_or(0);
        let base = self.segments.back().map(|s| s.size).unwrap_or(0);
        if !puts.is_empty() {
            self.disk_full_until = None;
        }
        if let Some(active) = self.segments.back_mut() {
            active.size += written;
            for (_, _, _, len) in &puts {
                active.add(*len as u32);
            }
        }
        self.gauges.capacity.grew(written);
        for (entry, reply, at, len) in puts {
            let targets = self.sets.get(&entry.targets);
            let slot = Slot::of(&entry, targets, active_id, base + at as u64, len);
            self.gauges.pending_keys.add(slot.key);
            self.dispatch.dispatch(&slot, Some(Arc::from(entry)));
            let _ = reply.send(Ok(slot.seq));
            self.live.insert(slot.seq, slot);
        }
    }

    /// The batch's write or sync failed: refuse its puts and cut back what reached the file.
    fn write_failed(&mut self, e: &io::Error, puts: Vec<Put>) {
        tracing::error!(error = %e, "spool: write failed; refusing this batch");
        if e.kind() == io::ErrorKind::StorageFull {
            self.disk_full_until = Some(Instant::now() + DISK_FULL_HOLD);
            self.gauges.capacity.mark_full();
        }
        // Cut back whatever part of the batch reached the file. If even that fails, no later
        // record may follow the torn bytes (a restart would cut it off with them): continue in
        // a new segment.
        let size = self.segments.back().map(|s| s.size).unwrap_or(0);
        if let Err(cut) = self.active.set_len(size) {
            tracing::error!(error = %cut, "spool: cannot cut back a failed write; moving to a new segment");
            self.torn = true;
        }
        for (_, reply, _, _) in puts {
            let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }

    fn done(&mut self, seq: u64, sink: &str) {
        let Some(live) = self.live.get_mut(&seq) else {
            return;
        };
        live.targets = self.sets.without(&live.targets, sink);
        if live.targets.is_empty() {
            let (segment, key, len) = (live.segment, live.key, live.len);
            self.live.remove(&seq);
            self.gauges.pending_keys.remove(key);
            self.gauges.relocations.forget(seq);
            if let Some(s) = self.segments.iter_mut().find(|s| s.id == segment) {
                s.remove(len);
            }
        }
    }

    /// Start a new active segment; false when it cannot be created.
    pub(super) fn roll(&mut self) -> bool {
        let id = self.segments.back().map(|s| s.id + 1).unwrap_or(1);
        match create_segment(self.disk.as_ref(), id, self.next_seq) {
            Ok((file, size)) => {
                if let Err(e) = self.active.sync_all() {
                    tracing::warn!(error = %e, "spool: sync before roll failed");
                }
                self.active = file;
                self.torn = false;
                self.gauges.capacity.grew(size);
                self.segments.push_back(Segment::new(id, size));
                true
            }
            Err(e) => {
                // A half-made segment holds at most a torn START; the scan cuts it.
                let _ = self.disk.remove(id);
                tracing::error!(error = %e, "spool: cannot start a new segment");
                false
            }
        }
    }

    fn update_gauges(&self) {
        let bytes = self.gauges.capacity.used();
        self.gauges.entries.set(self.live.len() as i64);
        self.gauges.bytes_gauge.set(bytes as i64);
        let disk_full = self.disk_full_until.is_some_and(|t| Instant::now() < t);
        self.gauges.capacity.settle(disk_full);
        let age = self
            .live
            .values()
            .next()
            .and_then(|l| SystemTime::now().duration_since(l.received_at).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.gauges.oldest_age.set(age);
    }
}
