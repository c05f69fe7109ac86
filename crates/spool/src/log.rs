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

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

    fn add(&mut self, len: u32) {
        self.live += 1;
        self.live_bytes += u64::from(len);
    }

    fn remove(&mut self, len: u32) {
        self.live = self.live.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(u64::from(len));
        self.progress = Instant::now();
    }
}

/// How long the head segment must make no progress (no entry in it finishing) before it is
/// compacted: during a drain its entries finish by themselves, and copying them would be waste.
const COMPACT_AFTER: Duration = Duration::from_secs(1);

/// Where the entries compaction copied forward are now, by seq: a lane's queued location may
/// name a segment that is gone. Empty (one atomic load per lookup) unless something was moved.
#[derive(Debug, Default)]
pub struct Relocations {
    moved: AtomicUsize,
    map: std::sync::Mutex<std::collections::HashMap<u64, Location>>,
}

impl Relocations {
    /// Where the entry queued at `at` is now.
    pub fn resolve(&self, at: &Location) -> Location {
        if self.moved.load(Ordering::Acquire) == 0 {
            return *at;
        }
        self.lock().get(&at.seq).copied().unwrap_or(*at)
    }

    fn set(&self, at: Location) {
        let mut map = self.lock();
        map.insert(at.seq, at);
        self.moved.store(map.len(), Ordering::Release);
    }

    fn forget(&self, seq: u64) {
        if self.moved.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.lock();
        map.remove(&seq);
        self.moved.store(map.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Location>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pending entry as the spool remembers it: where its PUT frame is, and what is left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub segment: u64,
    /// Offset of the PUT frame in the segment, and its length (header included).
    pub offset: u64,
    pub len: u32,
    /// The sinks still to reach (one shared set per combination: see [`TargetSets`]).
    pub targets: Targets,
    /// Hash of the message key ([`PendingKeys::hash`]); `None` for a message without one.
    pub key: Option<u64>,
    /// The hash the entry is ordered by: its key's, else its id's (no order to keep).
    pub order: u64,
    pub received_at: SystemTime,
}

/// A set of sink names, shared by every entry with the same set.
pub type Targets = Arc<[String]>;

/// The distinct target sets seen (a handful: one per route combination), so that a pending
/// entry costs a pointer for its targets, not a list of strings.
#[derive(Debug, Default)]
pub struct TargetSets(Vec<Targets>);

impl TargetSets {
    pub fn get(&mut self, targets: &[String]) -> Targets {
        if let Some(t) = self.0.iter().find(|t| ***t == *targets) {
            return t.clone();
        }
        let t: Targets = targets.into();
        self.0.push(t.clone());
        t
    }

    /// `targets` less `sink`.
    pub fn without(&mut self, targets: &Targets, sink: &str) -> Targets {
        if !targets.iter().any(|t| t == sink) {
            return targets.clone();
        }
        let rest: Vec<String> = targets.iter().filter(|t| *t != sink).cloned().collect();
        self.get(&rest)
    }
}

impl Slot {
    /// The slot of `entry`, written at `offset` of `segment` in a frame of `len` bytes.
    pub fn of(entry: &Entry, targets: Targets, segment: u64, offset: u64, len: usize) -> Slot {
        let key = entry.message.key.as_deref().map(PendingKeys::hash);
        Slot {
            seq: entry.seq,
            segment,
            offset,
            len: len as u32,
            targets,
            key,
            order: key.unwrap_or_else(|| PendingKeys::hash(&entry.message.id)),
            received_at: entry.message.received_at,
        }
    }
}

impl Slot {
    pub fn location(&self) -> Location {
        Location {
            seq: self.seq,
            segment: self.segment,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Where entry `seq`'s PUT frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub seq: u64,
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Read the entry at `at` back from its segment (with the targets it was written with).
pub fn read_entry(dir: &Path, at: &Location) -> io::Result<Entry> {
    use std::os::unix::fs::FileExt;
    let file = File::open(segment_path(dir, at.segment))?;
    let mut frame = vec![0; at.len as usize];
    file.read_exact_at(&mut frame, at.offset)?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spool entry {}: {what}", at.seq),
        )
    };
    let (body, _) = record::read_frame(&frame).map_err(|_| bad("unreadable frame"))?;
    match Record::decode(body) {
        Some(Record::Put(entry)) if entry.seq == at.seq => Ok(entry),
        _ => Err(bad("not the PUT expected there")),
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries with work left, by seq (which is log order); `targets` holds only the sinks
    /// still to reach.
    pub pending: BTreeMap<u64, Slot>,
    pub segments: Vec<Segment>,
    pub next_seq: u64,
    /// Segments whose tail was unreadable: path, bytes kept, bytes dropped.
    pub damaged: Vec<(PathBuf, u64, u64)>,
    /// Whole frames with a bad checksum (or an undecodable body) in segments closed before the
    /// last one, skipped: corruption, not a torn write, so what follows them is read on.
    pub corrupt: Vec<(PathBuf, u64)>,
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
/// cut off at the last good record and synced; without, it is only reported. Frames are read
/// one at a time and PUT bodies checked, not kept: memory holds one frame and the slots.
pub fn scan(dir: &Path, repair: bool) -> io::Result<Scan> {
    let mut out = Scan::default();
    let mut sets = TargetSets::default();
    let mut frame = Vec::new();
    let all = segments(dir)?;
    let last = all.last().map(|(id, _)| *id);
    for (id, path) in all {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut reader = io::BufReader::with_capacity(256 * 1024, file);
        let mut at = 0u64;
        // Only the last segment can end in a torn write; in a closed one a frame that is whole
        // but fails its checksum is damage to skip, not the end of the log.
        let closed = Some(id) != last;
        loop {
            let record = match next_record(&mut reader, size - at, &mut frame)? {
                Read::Record(r) => *r,
                Read::End => break,
                Read::Corrupt(len) if closed => {
                    tracing::warn!(segment = %path.display(), offset = at, bytes = len, "spool: skipped a corrupt record in a closed segment");
                    out.corrupt.push((path.clone(), at));
                    at += len as u64;
                    continue;
                }
                Read::Corrupt(_) => break,
            };
            let len = frame.len();
            match record {
                Record::Put(entry) => {
                    out.next_seq = out.next_seq.max(entry.seq.saturating_add(1));
                    let targets = sets.get(&entry.targets);
                    out.pending
                        .insert(entry.seq, Slot::of(&entry, targets, id, at, len));
                }
                Record::Done { seq, sink } => {
                    if let Some(slot) = out.pending.get_mut(&seq) {
                        slot.targets = sets.without(&slot.targets, &sink);
                        if slot.targets.is_empty() {
                            out.pending.remove(&seq);
                        }
                    }
                }
                Record::Start { next_seq } => out.next_seq = out.next_seq.max(next_seq),
            }
            at += len as u64;
        }
        if at < size {
            let dropped = size - at;
            if repair {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(at)?;
                file.sync_all()?;
            }
            out.damaged.push((path.clone(), at, dropped));
        }
        out.segments.push(Segment::new(id, at));
    }
    for slot in out.pending.values() {
        if let Some(s) = out.segments.iter_mut().find(|s| s.id == slot.segment) {
            s.add(slot.len);
        }
    }
    Ok(out)
}

/// What [`next_record`] read.
enum Read {
    /// A record (PUT bodies left empty); its frame is in `frame`.
    Record(Box<Record>),
    /// The end, or a frame that is torn (shorter than its length says) or whose length is out
    /// of range: nothing after it can be trusted.
    End,
    /// A whole frame of this many bytes, length in range, whose checksum or body is bad.
    Corrupt(usize),
}

/// The next frame of `reader` (see [`Read`]). `left` is how many bytes the file still has, so
/// a garbage length allocates nothing.
fn next_record(reader: &mut impl io::Read, left: u64, frame: &mut Vec<u8>) -> io::Result<Read> {
    let header = record::FRAME_HEADER;
    frame.clear();
    frame.resize(header, 0);
    if left < header as u64 || !fill(reader, frame)? {
        return Ok(Read::End);
    }
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if len == 0 || len > record::MAX_FRAME || (header + len) as u64 > left {
        return Ok(Read::End);
    }
    frame.resize(header + len, 0);
    if !fill(reader, &mut frame[header..])? {
        return Ok(Read::End);
    }
    Ok(record::read_frame(frame)
        .ok()
        .and_then(|(body, _)| Record::decode_without_body(body))
        .map_or(Read::Corrupt(header + len), |r| Read::Record(Box::new(r))))
}

/// Fill `buf` from `reader`; false when the reader ends first.
fn fill(reader: &mut impl io::Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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

/// Where the writer hands durable entries, in log order: the slot, with the entry itself when
/// it was just written (the dispatcher may keep it, or leave it to be read back).
pub trait Dispatch: Send + 'static {
    fn dispatch(&mut self, slot: &Slot, entry: Option<Arc<Entry>>);
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
    /// What `full` shows, as the spool reads it (a flag, not a metric).
    pub is_full: Arc<std::sync::atomic::AtomicBool>,
    pub max_bytes: u64,
    /// Entries with work left, per key: what a delivery must not overtake.
    pub pending_keys: Arc<PendingKeys>,
    /// Entries copied forward by compaction.
    pub compacted: prometheus::IntCounter,
    pub relocations: Arc<Relocations>,
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

/// The single thread that owns the active segment.
pub struct Writer<D: Dispatch> {
    dir: PathBuf,
    fsync: bool,
    segment_limit: u64,
    idle_roll: u64,
    active: File,
    segments: VecDeque<Segment>,
    /// The pending entries' slots, by seq.
    live: BTreeMap<u64, Slot>,
    next_seq: u64,
    dispatch: D,
    gauges: Gauges,
    sets: TargetSets,
    /// The active segment may end in bytes of a failed write: nothing more is written to it.
    torn: bool,
    /// See [`COMPACT_AFTER`].
    compact_after: Duration,
    /// A write failed for lack of disk space: the spool counts as full until then at least
    /// (then the next put tells again), or until a put is written.
    disk_full_until: Option<Instant>,
}

/// How long a write refused for lack of disk space keeps the spool marked full before a put
/// may try again.
const DISK_FULL_HOLD: Duration = Duration::from_secs(5);

/// Most commands taken into one batch (one write, one fsync).
const MAX_BATCH: usize = 4096;

impl<D: Dispatch> Writer<D> {
    /// Continue the log found by `scan`: a fresh segment is started for new writes.
    pub fn new(
        dir: &Path,
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
        let active = match create_segment(dir, next_id, scan.next_seq) {
            Ok((file, size)) => {
                segments.push_back(Segment::new(next_id, size));
                file
            }
            // A full disk: the last segment (its tail cut clean by the scan) is written on,
            // so the relay starts and can drain its backlog (DONEs are small, and finished
            // segments are deleted as it goes).
            Err(e) if !segments.is_empty() => {
                let _ = std::fs::remove_file(segment_path(dir, next_id));
                let last = segments.back().map(|s| s.id).unwrap_or(next_id);
                tracing::warn!(error = %e, segment = last, "spool: cannot start a new segment; writing on in the last one");
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir, last))?
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
            sets: TargetSets::default(),
            compact_after: COMPACT_AFTER,
            disk_full_until: None,
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
            // Finished segments are still deleted (and the torn one, once it holds nothing
            // live, emptied), so the disk gets its space back.
            self.collect_garbage();
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
                    let at = buf.len();
                    buf.extend_from_slice(&frame);
                    puts.push((entry, reply, at, frame.len()));
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
        let base = self.segments.back().map(|s| s.size).unwrap_or(0);
        match result {
            Ok(()) => {
                if !puts.is_empty() {
                    self.disk_full_until = None;
                }
                if let Some(active) = self.segments.back_mut() {
                    active.size += buf.len() as u64;
                    for (_, _, _, len) in &puts {
                        active.add(*len as u32);
                    }
                }
                self.gauges
                    .bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                for (entry, reply, at, len) in puts {
                    let targets = self.sets.get(&entry.targets);
                    let slot = Slot::of(&entry, targets, active_id, base + at as u64, len);
                    self.gauges.pending_keys.add(slot.key);
                    self.dispatch.dispatch(&slot, Some(Arc::from(entry)));
                    let _ = reply.send(Ok(slot.seq));
                    self.live.insert(slot.seq, slot);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: write failed; refusing this batch");
                if e.kind() == io::ErrorKind::StorageFull {
                    self.disk_full_until = Some(Instant::now() + DISK_FULL_HOLD);
                    self.gauges.is_full.store(true, Ordering::Relaxed);
                    self.gauges.full.set(1);
                }
                // Cut back whatever part of the batch reached the file. If even that fails, no
                // later record may follow the torn bytes (a restart would cut it off with
                // them): continue in a new segment.
                let size = self.segments.back().map(|s| s.size).unwrap_or(0);
                if let Err(cut) = self.active.set_len(size) {
                    tracing::error!(error = %cut, "spool: cannot cut back a failed write; moving to a new segment");
                    self.torn = true;
                }
                for (_, reply, _, _) in puts {
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
        loop {
            self.delete_finished_head();
            let compactable = self.segments.len() >= 3
                && self.segments.front().is_some_and(|h| {
                    h.live > 0
                        && h.live_bytes.saturating_mul(4) <= h.size
                        && h.progress.elapsed() >= self.compact_after
                });
            if !compactable || self.torn || !self.copy_head_forward() {
                break;
            }
        }
    }

    /// Delete the segments at the head that hold no live entry (never the active one).
    fn delete_finished_head(&mut self) {
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

    /// Copy the head segment's live entries to the end of the active one (each with the sinks it
    /// still has to reach), synced, so the head holds nothing live and can be deleted. False
    /// when that failed (nothing changed then: the copies are cut back or superseded by none).
    fn copy_head_forward(&mut self) -> bool {
        let Some(head) = self.segments.front().map(|s| s.id) else {
            return false;
        };
        let size = self.segments.back().map(|s| s.size).unwrap_or(0);
        let active_id = self.segments.back().map(|s| s.id).unwrap_or(0);
        let mut buf = Vec::new();
        let mut moved = Vec::new();
        for slot in self.live.values().filter(|s| s.segment == head) {
            let mut entry = match read_entry(&self.dir, &slot.location()) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(error = %e, segment = head, "spool: cannot compact the head segment");
                    return false;
                }
            };
            entry.targets = slot.targets.to_vec();
            let frame = Record::put_frame(&entry);
            moved.push(Location {
                seq: slot.seq,
                segment: active_id,
                offset: size + buf.len() as u64,
                len: frame.len() as u32,
            });
            buf.extend_from_slice(&frame);
        }
        // Synced whatever `fsync` says: the head is deleted next, and the copies are then the
        // only ones.
        if let Err(e) = self
            .active
            .write_all(&buf)
            .and_then(|()| self.active.sync_data())
        {
            tracing::error!(error = %e, "spool: compaction write failed");
            if let Err(cut) = self.active.set_len(size) {
                tracing::error!(error = %cut, "spool: cannot cut back a failed write; moving to a new segment");
                self.torn = true;
            }
            return false;
        }
        self.gauges
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Some(active) = self.segments.back_mut() {
            active.size += buf.len() as u64;
        }
        for at in &moved {
            if let Some(slot) = self.live.get_mut(&at.seq) {
                let old = slot.len;
                slot.segment = at.segment;
                slot.offset = at.offset;
                slot.len = at.len;
                if let Some(h) = self.segments.front_mut() {
                    h.remove(old);
                }
                if let Some(a) = self.segments.back_mut() {
                    a.add(at.len);
                }
            }
            self.gauges.relocations.set(*at);
        }
        self.gauges.compacted.inc_by(moved.len() as u64);
        tracing::info!(
            segment = head,
            entries = moved.len(),
            bytes = buf.len(),
            "spool: compacted the head segment (its live entries copied forward)"
        );
        true
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
                self.segments.push_back(Segment::new(id, size));
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
        let disk_full = self.disk_full_until.is_some_and(|t| Instant::now() < t);
        if self.gauges.is_full.load(Ordering::Relaxed)
            && bytes <= self.gauges.max_bytes / 2
            && !disk_full
        {
            self.gauges.is_full.store(false, Ordering::Relaxed);
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

    struct Nowhere;
    impl Dispatch for Nowhere {
        fn dispatch(&mut self, _: &Slot, _: Option<Arc<Entry>>) {}
    }

    fn gauges() -> Gauges {
        let gauge = |n: &str| prometheus::IntGauge::new(n, "x").unwrap();
        Gauges {
            bytes: Arc::new(AtomicU64::new(0)),
            entries: gauge("e"),
            bytes_gauge: gauge("b"),
            oldest_age: prometheus::Gauge::new("o", "x").unwrap(),
            full: gauge("f"),
            is_full: Arc::default(),
            max_bytes: 1024 * 1024,
            pending_keys: Arc::default(),
            compacted: prometheus::IntCounter::new("c", "x").unwrap(),
            relocations: Arc::default(),
        }
    }

    fn put(commands: &std::sync::mpsc::Sender<Command>, entry: Entry) -> u64 {
        let (reply, done) = tokio::sync::oneshot::channel();
        let frame = Record::put_frame(&entry);
        commands
            .send(Command::Put {
                entry: Box::new(entry),
                frame,
                reply,
            })
            .unwrap();
        done.blocking_recv().unwrap().unwrap()
    }

    #[test]
    fn a_stuck_entry_is_copied_forward_and_pins_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let g = gauges();
        let (compacted, relocations) = (g.compacted.clone(), g.relocations.clone());
        let mut writer =
            Writer::new(dir.path(), Scan::default(), false, 1024 * 1024, Nowhere, g).unwrap();
        writer.compact_after = Duration::ZERO;
        let (commands, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(receiver));
        // The stuck entry reached sink "a", never "b".
        let stuck = put(&commands, entry(0, "stuck"));
        let sink = |s: &str| s.to_string();
        commands
            .send(Command::Done {
                seq: stuck,
                sink: sink("a"),
            })
            .unwrap();
        // 64 KiB segments (1 MiB / 16): 4,000 entries that finish make many of them.
        for n in 0..4000 {
            let mut e = entry(0, &format!("k{n}"));
            e.message.body = vec![b'x'; 200].into();
            let seq = put(&commands, e);
            for s in ["a", "b"] {
                commands.send(Command::Done { seq, sink: sink(s) }).unwrap();
            }
        }
        commands.send(Command::Stop).unwrap();
        thread.join().unwrap();
        assert!(compacted.get() >= 1, "never compacted");
        let files = segments(dir.path()).unwrap().len();
        assert!(files <= 3, "{files} segments left behind a stuck entry");
        // The stuck entry survives, with only the sink it still has to reach, readable where
        // the lanes are told it is now.
        let scan = scan(dir.path(), false).unwrap();
        let pending: Vec<_> = scan.pending.values().collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, stuck);
        assert_eq!(&*pending[0].targets, ["b".to_string()]);
        let first = Location {
            seq: stuck,
            segment: 1,
            offset: 0,
            len: 0,
        };
        let back = read_entry(dir.path(), &relocations.resolve(&first)).unwrap();
        assert_eq!(back.message.key.as_deref(), Some("stuck"));
        assert_eq!(back.targets, ["b".to_string()]);
    }

    /// Review finding 19 (a deterministic reproduction, the active segment torn and no new
    /// one can be made, as on a full disk after a failed cut-back): the DONEs still free the
    /// finished segments at the head, so the disk gets its space back.
    #[test]
    fn a_torn_writer_that_cannot_roll_still_deletes_finished_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(
            dir.path(),
            Scan::default(),
            false,
            1024 * 1024,
            Nowhere,
            gauges(),
        )
        .unwrap();
        let mut seqs = Vec::new();
        for n in 0..600 {
            let mut e = entry(0, &format!("k{n}"));
            e.message.body = vec![b'x'; 200].into();
            let (reply, answer) = tokio::sync::oneshot::channel();
            let frame = Record::put_frame(&e);
            w.write_batch(vec![Command::Put {
                entry: Box::new(e),
                frame,
                reply,
            }]);
            seqs.push(answer.blocking_recv().unwrap().unwrap());
        }
        assert!(w.segments.len() >= 2, "{} segments", w.segments.len());
        let head = w.segments.front().unwrap().id;
        // Torn, and the next segment cannot be created (a directory is in its place).
        w.torn = true;
        let next = w.segments.back().unwrap().id + 1;
        std::fs::create_dir(segment_path(dir.path(), next)).unwrap();
        let dones = seqs
            .iter()
            .flat_map(|&seq| {
                ["a", "b"].map(|sink| Command::Done {
                    seq,
                    sink: sink.into(),
                })
            })
            .collect();
        w.write_batch(dones);
        assert!(w.live.is_empty());
        assert!(
            !segment_path(dir.path(), head).exists(),
            "a finished segment was kept while torn"
        );
    }

    #[test]
    fn a_scan_that_meets_an_entry_and_its_copy_keeps_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = entry(1, "k");
        copy.targets = vec!["b".into()];
        append(
            dir.path(),
            &[
                Record::Put(entry(1, "k")),
                Record::Done {
                    seq: 1,
                    sink: "a".into(),
                },
                Record::Put(copy),
            ],
        );
        let scan = scan(dir.path(), false).unwrap();
        assert_eq!(scan.pending.len(), 1);
        assert_eq!(&*scan.pending[&1].targets, ["b".to_string()]);
        assert!(
            scan.pending[&1].offset > 0,
            "the copy's place, not the original's"
        );
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
        let pending: Vec<&Slot> = scan.pending.values().collect();
        let seqs: Vec<_> = pending.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [6, 7]);
        assert_eq!(*pending[0].targets, ["b".to_owned()]);
        // Read back from where the slots say: the entries as written.
        let read = |i: usize| read_entry(dir.path(), &pending[i].location()).unwrap();
        assert_eq!(read(0), entry(6, "k2"));
        assert_eq!(read(1), entry(7, "k1"));
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

    /// Review finding 10: a bad checksum in a closed segment loses that record only.
    #[test]
    fn a_corrupt_record_in_a_closed_segment_is_skipped_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (1..=3).map(|n| Record::Put(entry(n, "k"))).collect();
        append(dir.path(), &records);
        // A later segment: segment 1 is closed.
        std::fs::write(
            segment_path(dir.path(), 2),
            Record::Start { next_seq: 4 }.encode(),
        )
        .unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let first = records[0].encode().len();
        let second = records[1].encode().len();
        bytes[first + second - 2] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let scan = scan(dir.path(), true).unwrap();
        let seqs: Vec<u64> = scan.pending.keys().copied().collect();
        assert_eq!(seqs, [1, 3], "only the damaged record is lost");
        assert_eq!(scan.corrupt, [(path.clone(), first as u64)]);
        assert!(scan.damaged.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64);
        assert_eq!(
            read_entry(dir.path(), &scan.pending[&3].location()).unwrap(),
            entry(3, "k")
        );
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
