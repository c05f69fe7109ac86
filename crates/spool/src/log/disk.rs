//! The log's writes and syncs, behind one small interface: the writer touches segment files
//! only through [`Disk`] and [`SegmentFile`], so that a test can stand in a disk that forgets,
//! at a crash, every write no completed sync covers (the crash property test in
//! `crate::crash`). Reading (the scan at start, a lane reading an entry back) stays plain file
//! reads: what a crash leaves is what a read sees.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::segment::{segment_path, sync_dir};

/// An open segment, written at its end.
pub trait SegmentFile: Send {
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Make the file's data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Make the file's data and metadata durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
    /// Cut the file back (or extend it) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The directory of segments, as the writer changes it.
pub trait Disk: Send {
    /// The directory the segments are in (read back from there).
    fn dir(&self) -> &Path;
    /// Create segment `id` (or open it when it exists), for appending.
    fn create(&self, id: u64) -> io::Result<Box<dyn SegmentFile>>;
    /// Open the existing segment `id` for appending.
    fn open(&self, id: u64) -> io::Result<Box<dyn SegmentFile>>;
    /// Delete segment `id`.
    fn remove(&self, id: u64) -> io::Result<()>;
    /// Make the directory's entries (created and deleted segments) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// The real disk: segment files in a directory.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn boxed(dir: &Path) -> Box<dyn Disk> {
        Box::new(Files {
            dir: dir.to_path_buf(),
        })
    }
}

struct Segment(File);

impl SegmentFile for Segment {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Disk for Files {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn create(&self, id: u64) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, id))?;
        Ok(Box::new(Segment(file)))
    }
    fn open(&self, id: u64) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(&self.dir, id))?;
        Ok(Box::new(Segment(file)))
    }
    fn remove(&self, id: u64) -> io::Result<()> {
        std::fs::remove_file(segment_path(&self.dir, id))
    }
    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}
