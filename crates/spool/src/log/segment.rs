//! Segment files: their names, the listing of a directory's, the writer's account of each
//! (size, live entries), and creating one durably.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::disk::{Disk, SegmentFile};
use crate::record::Record;

/// A segment's file name.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("seg-")?.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            out.push((id, path));
        }
    }
    out.sort();
    Ok(out)
}

/// A segment as the writer tracks it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: u64,
    pub size: u64,
    /// Entries written here that still have work, and the bytes of their PUT frames.
    pub live: u64,
    pub live_bytes: u64,
    /// When an entry here last finished (or the segment was made): a head whose entries are
    /// still finishing is being drained, not stuck.
    pub progress: Instant,
}

impl Segment {
    pub fn new(id: u64, size: u64) -> Segment {
        Segment {
            id,
            size,
            live: 0,
            live_bytes: 0,
            progress: Instant::now(),
        }
    }

    pub(super) fn add(&mut self, len: u32) {
        self.live += 1;
        self.live_bytes += u64::from(len);
    }

    pub(super) fn remove(&mut self, len: u32) {
        self.live = self.live.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(u64::from(len));
        self.progress = Instant::now();
    }
}

/// Create segment `id`, starting with a START record, synced with its directory entry.
pub(super) fn create_segment(
    disk: &dyn Disk,
    id: u64,
    next_seq: u64,
) -> io::Result<(Box<dyn SegmentFile>, u64)> {
    let mut file = disk.create(id)?;
    let start = Record::Start { next_seq }.encode();
    file.append(&start)?;
    file.sync_all()?;
    disk.sync_dir()?;
    Ok((file, start.len() as u64))
}

/// Make a directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
