//! The write-ahead log: numbered segment files `seg-NNNNNNNNNNNNNNNNNNNN.log` in one directory.
//! [`scan`] reads them back (truncating a torn tail when asked to repair); the [`Writer`] thread
//! appends with group commit, numbers entries in file order, hands them to the forwarder in that
//! order, and deletes a segment once every entry in it and before it is done.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::record::{self, Entry, FrameError, Record};

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
    /// Entries written here that still have work.
    pub live: u64,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries with work left, in log order; `targets` holds only the sinks still to reach.
    pub pending: Vec<(Entry, u64)>,
    pub segments: Vec<Segment>,
    pub next_seq: u64,
    /// Segments whose tail was unreadable: path, bytes kept, bytes dropped.
    pub damaged: Vec<(PathBuf, u64, u64)>,
}

/// The records of one segment's bytes, in order, up to the first that is torn, corrupt or
/// undecodable; [`Records::good_len`] is where the readable part ends. Pure: no I/O, no panic,
/// no allocation beyond the records it yields.
pub struct Records<'a> {
    data: &'a [u8],
    at: usize,
    stopped: bool,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Records {
            data,
            at: 0,
            stopped: false,
        }
    }

    /// Bytes of whole, valid records read so far (after the iterator ended: the good prefix).
    pub fn good_len(&self) -> usize {
        self.at
    }
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.stopped || self.at >= self.data.len() {
            return None;
        }
        let rec = match record::read_frame(&self.data[self.at..]) {
            Ok((body, used)) => Record::decode(body).map(|r| (r, used)),
            Err(FrameError::Short | FrameError::Corrupt) => None,
        };
        match rec {
            Some((r, used)) => {
                self.at += used;
                Some(r)
            }
            None => {
                self.stopped = true;
                None
            }
        }
    }
}

/// Read every segment of `dir`. With `repair`, an unreadable tail (torn write, bad checksum) is
/// cut off at the last good record and synced; without, it is only reported.
pub fn scan(dir: &Path, repair: bool) -> io::Result<Scan> {
    let mut out = Scan::default();
    // seq -> (entry, remaining targets, segment id), in log order.
    let mut live: BTreeMap<u64, (Entry, u64)> = BTreeMap::new();
    let mut order: Vec<u64> = Vec::new();
    for (id, path) in segments(dir)? {
        let data = std::fs::read(&path)?;
        let mut records = Records::new(&data);
        for rec in records.by_ref() {
            match rec {
                Record::Put(entry) => {
                    out.next_seq = out.next_seq.max(entry.seq.saturating_add(1));
                    order.push(entry.seq);
                    live.insert(entry.seq, (entry, id));
                }
                Record::Done { seq, sink } => {
                    if let Some((entry, _)) = live.get_mut(&seq) {
                        entry.targets.retain(|t| *t != sink);
                        if entry.targets.is_empty() {
                            live.remove(&seq);
                        }
                    }
                }
                Record::Start { next_seq } => out.next_seq = out.next_seq.max(next_seq),
            }
        }
        let at = records.good_len();
        if at < data.len() {
            let dropped = (data.len() - at) as u64;
            if repair {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
            out.damaged.push((path.clone(), at as u64, dropped));
        }
        out.segments.push(Segment {
            id,
            size: at as u64,
            live: 0,
        });
    }
    for seq in order {
        if let Some((entry, seg)) = live.remove(&seq) {
            if let Some(s) = out.segments.iter_mut().find(|s| s.id == seg) {
                s.live += 1;
            }
            out.pending.push((entry, seg));
        }
    }
    Ok(out)
}

/// A request to the writer thread.
pub enum Command {
    /// Append an encoded PUT frame (its seq is set by the writer); answer once durable.
    Put {
        entry: Box<Entry>,
        frame: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<io::Result<u64>>,
    },
    /// A target sink is done with entry `seq`.
    Done { seq: u64, sink: String },
    /// Write what came before, sync, and end the thread.
    Stop,
}

/// Where the writer hands durable entries, in log order.
pub trait Dispatch: Send + 'static {
    fn dispatch(&mut self, entry: Arc<Entry>);
}

/// Gauges the writer keeps current.
pub struct Gauges {
    pub bytes: Arc<AtomicU64>,
    pub entries: prometheus::IntGauge,
    pub bytes_gauge: prometheus::IntGauge,
    pub oldest_age: prometheus::Gauge,
    /// Set by a refused append; cleared here once the log is back under half of `max_bytes`,
    /// so readiness recovers even when no delivery arrives to succeed.
    pub full: prometheus::IntGauge,
    pub max_bytes: u64,
    /// Entries with work left, per key: what a delivery must not overtake.
    pub pending_keys: Arc<PendingKeys>,
}

/// How many entries with work left each message key has (keys by hash).
#[derive(Debug, Default)]
pub struct PendingKeys(std::sync::Mutex<std::collections::HashMap<u64, u32>>);

impl PendingKeys {
    pub fn hash(key: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    fn add(&self, key: Option<u64>) {
        if let Some(k) = key {
            *self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(k)
                .or_default() += 1;
        }
    }

    fn remove(&self, key: Option<u64>) {
        if let Some(k) = key {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
    }

    /// Whether `key` has entries with work left.
    pub fn contains(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&Self::hash(key))
    }
}

struct Live {
    segment: u64,
    remaining: Vec<String>,
    received_at: SystemTime,
    key: Option<u64>,
}

/// The single thread that owns the active segment.
pub struct Writer<D: Dispatch> {
    dir: PathBuf,
    fsync: bool,
    segment_limit: u64,
    idle_roll: u64,
    active: File,
    segments: VecDeque<Segment>,
    live: BTreeMap<u64, Live>,
    next_seq: u64,
    dispatch: D,
    gauges: Gauges,
    /// The active segment may end in bytes of a failed write: nothing more is written to it.
    torn: bool,
}

/// Most commands taken into one batch (one write, one fsync).
const MAX_BATCH: usize = 4096;

impl<D: Dispatch> Writer<D> {
    /// Continue the log found by `scan`: a fresh segment is started for new writes.
    pub fn new(
        dir: &Path,
        scan: &Scan,
        fsync: bool,
        max_bytes: u64,
        dispatch: D,
        gauges: Gauges,
    ) -> io::Result<Writer<D>> {
        let mut segments: VecDeque<Segment> = scan.segments.iter().cloned().collect();
        let mut live = BTreeMap::new();
        for (entry, seg) in &scan.pending {
            let key = entry.message.key.as_deref().map(PendingKeys::hash);
            gauges.pending_keys.add(key);
            live.insert(
                entry.seq,
                Live {
                    segment: *seg,
                    remaining: entry.targets.clone(),
                    received_at: entry.message.received_at,
                    key,
                },
            );
        }
        let next_id = segments.back().map(|s| s.id + 1).unwrap_or(1);
        let (active, size) = create_segment(dir, next_id, scan.next_seq)?;
        segments.push_back(Segment {
            id: next_id,
            size,
            live: 0,
        });
        gauges
            .bytes
            .store(segments.iter().map(|s| s.size).sum(), Ordering::Relaxed);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
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
        };
        writer.collect_garbage();
        writer.update_gauges();
        Ok(writer)
    }

    /// Serve commands until every sender is gone.
    pub fn run(mut self, commands: Receiver<Command>) {
        loop {
            let first = match commands.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
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
    fn write_batch(&mut self, mut batch: Vec<Command>) -> bool {
        if self.torn && !self.roll() {
            // No clean segment to write to (the disk is still full): refuse the puts, keep the
            // DONEs in memory only (their entries are sent again after a restart, never lost).
            let mut stop = false;
            for command in batch.drain(..) {
                match command {
                    Command::Put { reply, .. } => {
                        let _ = reply.send(Err(io::Error::other(
                            "the spool cannot start a clean segment",
                        )));
                    }
                    Command::Done { seq, sink } => self.done(seq, &sink),
                    Command::Stop => stop = true,
                }
            }
            return stop;
        }
        let mut stop = false;
        let mut buf = Vec::new();
        let mut puts = Vec::new();
        let mut dones = Vec::new();
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
                    buf.extend_from_slice(&frame);
                    puts.push((entry, reply));
                }
                Command::Done { seq, sink } => {
                    buf.extend_from_slice(
                        &Record::Done {
                            seq,
                            sink: sink.clone(),
                        }
                        .encode(),
                    );
                    dones.push((seq, sink));
                }
                Command::Stop => stop = true,
            }
        }
        let result = self.active.write_all(&buf).and_then(|()| {
            if self.fsync && !puts.is_empty() {
                self.active.sync_data()
            } else {
                Ok(())
            }
        });
        let active_id = self.segments.back().map(|s| s.id).unwrap_or(0);
        match result {
            Ok(()) => {
                if let Some(active) = self.segments.back_mut() {
                    active.size += buf.len() as u64;
                    active.live += puts.len() as u64;
                }
                self.gauges
                    .bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                for (entry, reply) in puts {
                    let key = entry.message.key.as_deref().map(PendingKeys::hash);
                    self.gauges.pending_keys.add(key);
                    self.live.insert(
                        entry.seq,
                        Live {
                            segment: active_id,
                            remaining: entry.targets.clone(),
                            received_at: entry.message.received_at,
                            key,
                        },
                    );
                    let seq = entry.seq;
                    self.dispatch.dispatch(Arc::from(entry));
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: write failed; refusing this batch");
                // Cut back whatever part of the batch reached the file. If even that fails, no
                // later record may follow the torn bytes (a restart would cut it off with
                // them): continue in a new segment.
                let size = self.segments.back().map(|s| s.size).unwrap_or(0);
                if let Err(cut) = self.active.set_len(size) {
                    tracing::error!(error = %cut, "spool: cannot cut back a failed write; moving to a new segment");
                    self.torn = true;
                }
                for (_, reply) in puts {
                    let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
        for (seq, sink) in dones {
            self.done(seq, &sink);
        }
        self.collect_garbage();
        stop
    }

    fn done(&mut self, seq: u64, sink: &str) {
        let Some(live) = self.live.get_mut(&seq) else {
            return;
        };
        live.remaining.retain(|t| t != sink);
        if live.remaining.is_empty() {
            let segment = live.segment;
            let key = live.key;
            self.live.remove(&seq);
            self.gauges.pending_keys.remove(key);
            if let Some(s) = self.segments.iter_mut().find(|s| s.id == segment) {
                s.live = s.live.saturating_sub(1);
            }
        }
    }

    /// Delete finished segments from the head; start a new segment when the active one is full,
    /// or idle with no work left (so a spool that drained gives its bytes back).
    fn collect_garbage(&mut self) {
        let active_size = self.segments.back().map(|s| s.size).unwrap_or(0);
        let roll = active_size >= self.segment_limit
            || (self.live.is_empty() && active_size >= self.idle_roll);
        if roll && !self.roll() && self.live.is_empty() {
            // No room for a new segment (a full disk), but nothing in the active one is needed
            // any more: empty it in place, which gives the space back.
            self.reset_active();
        }
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.live == 0) {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            match std::fs::remove_file(segment_path(&self.dir, seg.id)) {
                Ok(()) => {
                    let _ =
                        self.gauges
                            .bytes
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                Some(b.saturating_sub(seg.size))
                            });
                }
                Err(e) => {
                    tracing::warn!(error = %e, segment = seg.id, "spool: cannot delete segment");
                    self.segments.push_front(seg);
                    break;
                }
            }
        }
    }

    /// Cut the active segment back to a lone START record (only when no entry is live).
    fn reset_active(&mut self) {
        let start = Record::Start {
            next_seq: self.next_seq,
        }
        .encode();
        let result = self
            .active
            .set_len(0)
            .and_then(|()| self.active.write_all(&start))
            .and_then(|()| self.active.sync_all());
        match result {
            Ok(()) => {
                let freed = self.segments.back().map(|s| s.size).unwrap_or(0);
                if let Some(active) = self.segments.back_mut() {
                    active.size = start.len() as u64;
                }
                self.torn = false;
                let _ = self
                    .gauges
                    .bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(freed) + start.len() as u64)
                    });
                tracing::info!(
                    "spool: emptied the active segment in place (no room for a new one)"
                );
            }
            Err(e) => {
                self.torn = true;
                tracing::error!(error = %e, "spool: cannot empty the active segment");
            }
        }
    }

    /// Start a new active segment; false when it cannot be created.
    fn roll(&mut self) -> bool {
        let id = self.segments.back().map(|s| s.id + 1).unwrap_or(1);
        match create_segment(&self.dir, id, self.next_seq) {
            Ok((file, size)) => {
                if let Err(e) = self.active.sync_all() {
                    tracing::warn!(error = %e, "spool: sync before roll failed");
                }
                self.active = file;
                self.torn = false;
                self.gauges.bytes.fetch_add(size, Ordering::Relaxed);
                self.segments.push_back(Segment { id, size, live: 0 });
                true
            }
            Err(e) => {
                // A half-made segment holds at most a torn START; the scan cuts it.
                let _ = std::fs::remove_file(segment_path(&self.dir, id));
                tracing::error!(error = %e, "spool: cannot start a new segment");
                false
            }
        }
    }

    fn update_gauges(&self) {
        let bytes = self.gauges.bytes.load(Ordering::Relaxed);
        self.gauges.entries.set(self.live.len() as i64);
        self.gauges.bytes_gauge.set(bytes as i64);
        if self.gauges.full.get() == 1 && bytes <= self.gauges.max_bytes / 2 {
            self.gauges.full.set(0);
        }
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

/// Create segment `id`, starting with a START record, synced with its directory entry.
fn create_segment(dir: &Path, id: u64, next_seq: u64) -> io::Result<(File, u64)> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let start = Record::Start { next_seq }.encode();
    file.write_all(&start)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, start.len() as u64))
}

/// Make a directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::entry;

    fn append(dir: &Path, records: &[Record]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, 1))
            .unwrap();
        for r in records {
            f.write_all(&r.encode()).unwrap();
        }
    }

    #[test]
    fn scan_keeps_what_is_not_done_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        append(
            dir.path(),
            &[
                Record::Start { next_seq: 5 },
                Record::Put(entry(5, "k1")),
                Record::Put(entry(6, "k2")),
                Record::Done {
                    seq: 5,
                    sink: "a".into(),
                },
                Record::Done {
                    seq: 5,
                    sink: "b".into(),
                },
                Record::Done {
                    seq: 6,
                    sink: "a".into(),
                },
                Record::Put(entry(7, "k1")),
            ],
        );
        let scan = scan(dir.path(), true).unwrap();
        let seqs: Vec<_> = scan.pending.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, [6, 7]);
        assert_eq!(scan.pending[0].0.targets, ["b"]);
        assert_eq!(scan.next_seq, 8);
        assert!(scan.damaged.is_empty());
        assert_eq!(scan.segments[0].live, 2);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        append(
            dir.path(),
            &[Record::Put(entry(1, "k")), Record::Put(entry(2, "k"))],
        );
        let path = segment_path(dir.path(), 1);
        let good = std::fs::metadata(&path).unwrap().len();
        let third = Record::Put(entry(3, "k")).encode();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third[..third.len() / 2]).unwrap();
        drop(f);

        let report = scan(dir.path(), false).unwrap();
        assert_eq!(report.pending.len(), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            good + third.len() as u64 / 2
        );

        let repaired = scan(dir.path(), true).unwrap();
        assert_eq!(repaired.pending.len(), 2);
        assert_eq!(
            repaired.damaged,
            [(path.clone(), good, third.len() as u64 / 2)]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        assert!(scan(dir.path(), true).unwrap().damaged.is_empty());
    }

    #[test]
    fn garbage_after_a_good_record_is_cut_too() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[Record::Put(entry(1, "k"))]);
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0x10, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
        drop(f);
        let repaired = scan(dir.path(), true).unwrap();
        assert_eq!(repaired.pending.len(), 1);
        assert_eq!(repaired.damaged.len(), 1);
    }
}
