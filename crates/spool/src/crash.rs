//! The fsync discipline, shown rather than assumed. kill -9 cannot show a missing sync (the page
//! cache outlives the process), so these tests write the log through a disk that keeps what no
//! completed sync covers apart from what it does, and at a crash point keeps only the synced
//! bytes of each file (plus a random part of what followed them: a torn tail) and only the
//! directory entries a directory sync made durable. The spool is then opened on what is left:
//! no acknowledged delivery may be missing, and nothing corrupt may be forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cal_relay_sink::{Message, Sink, SinkError};
use proptest::prelude::*;

use crate::log::{segment_path, Disk, Files, SegmentFile};
use crate::testing::{message, metrics};
use crate::{RetryPolicy, Spool, SpoolConfig};

/// One segment as the page cache and as the platter see it.
#[derive(Default, Clone)]
struct FileState {
    /// What reads see now.
    current: Vec<u8>,
    /// What the last completed sync of the file made durable.
    durable: Vec<u8>,
    /// Whether the file is in the directory now, and whether a directory sync made that so.
    exists: bool,
    entry_durable: bool,
}

/// What the crashing disk knows; shared by the disk and its open files.
struct Shadow {
    files: BTreeMap<u64, FileState>,
    ops: u64,
    crash_at: u64,
    /// Of the bytes written after the last sync of each file, the part a crash keeps.
    tear: f64,
    /// The files a crash left, once it happened.
    image: Option<BTreeMap<u64, Vec<u8>>>,
}

impl Shadow {
    /// Count one operation; at the crash point, take the image. Err once crashed.
    fn step(&mut self) -> io::Result<()> {
        if self.image.is_none() {
            self.ops += 1;
            if self.ops >= self.crash_at {
                self.crash();
            }
        }
        match self.image {
            Some(_) => Err(io::Error::other("the machine crashed")),
            None => Ok(()),
        }
    }

    fn crash(&mut self) {
        if self.image.is_some() {
            return;
        }
        let mut image = BTreeMap::new();
        for (id, f) in &self.files {
            if !f.entry_durable {
                continue;
            }
            let mut kept = f.durable.clone();
            if f.current.starts_with(&f.durable) {
                let after = &f.current[f.durable.len()..];
                kept.extend_from_slice(&after[..(after.len() as f64 * self.tear) as usize]);
            }
            image.insert(*id, kept);
        }
        self.image = Some(image);
    }
}

struct CrashDisk {
    real: Box<dyn Disk>,
    shadow: Arc<Mutex<Shadow>>,
}

struct CrashFile {
    id: u64,
    real: Box<dyn SegmentFile>,
    shadow: Arc<Mutex<Shadow>>,
}

fn lock(shadow: &Mutex<Shadow>) -> std::sync::MutexGuard<'_, Shadow> {
    shadow.lock().unwrap_or_else(|p| p.into_inner())
}

impl SegmentFile for CrashFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.shadow);
        s.step()?;
        self.real.append(buf)?;
        s.files
            .entry(self.id)
            .or_default()
            .current
            .extend_from_slice(buf);
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = lock(&self.shadow);
        s.step()?;
        let f = s.files.entry(self.id).or_default();
        f.durable = f.current.clone();
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = lock(&self.shadow);
        s.step()?;
        self.real.set_len(len)?;
        s.files
            .entry(self.id)
            .or_default()
            .current
            .resize(len as usize, 0);
        Ok(())
    }
}

impl Disk for CrashDisk {
    fn dir(&self) -> &Path {
        self.real.dir()
    }
    fn create(&self, id: u64) -> io::Result<Box<dyn SegmentFile>> {
        let mut s = lock(&self.shadow);
        s.step()?;
        let real = self.real.create(id)?;
        let f = s.files.entry(id).or_default();
        f.exists = true;
        Ok(Box::new(CrashFile {
            id,
            real,
            shadow: self.shadow.clone(),
        }))
    }
    fn open(&self, id: u64) -> io::Result<Box<dyn SegmentFile>> {
        lock(&self.shadow).step()?;
        let real = self.real.open(id)?;
        Ok(Box::new(CrashFile {
            id,
            real,
            shadow: self.shadow.clone(),
        }))
    }
    fn remove(&self, id: u64) -> io::Result<()> {
        let mut s = lock(&self.shadow);
        s.step()?;
        self.real.remove(id)?;
        if let Some(f) = s.files.get_mut(&id) {
            f.exists = false;
        }
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        let mut s = lock(&self.shadow);
        s.step()?;
        s.files.retain(|_, f| f.exists);
        for f in s.files.values_mut() {
            f.entry_durable = true;
        }
        Ok(())
    }
}

/// A sink that records what it is handed; before the crash it confirms only messages whose
/// body has an even length (the rest fail, to be retried long after the test).
struct Recorder {
    confirm_all: bool,
    seen: Mutex<Vec<Message>>,
}

#[async_trait::async_trait]
impl Sink for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        if !self.confirm_all && message.body.len() % 2 == 1 {
            return Err(SinkError::transient("down", "recorder refuses odd bodies"));
        }
        self.seen.lock().unwrap().push(message.clone());
        Ok(())
    }
}

fn config(dir: &Path, fsync: bool) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 64 * 1024 * 1024,
        fsync,
        retry: RetryPolicy {
            initial: Duration::from_secs(600),
            max: Duration::from_secs(600),
            max_attempts: 5,
            max_age: None,
        },
        lanes: 2,
    }
}

/// What a crash run shows: acknowledged deliveries that never reached the sink, and forwarded
/// messages that are not what was sent.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: usize,
    lost: Vec<String>,
    corrupt: Vec<String>,
}

/// Send `sizes.len()` deliveries (in waves of `wave`, so group commits cover several) to a spool
/// writing through a disk that crashes after `crash_at` operations (or after the last
/// delivery), reopen the spool on what the crash left, and drain it.
fn crash_run(sizes: &[usize], wave: usize, crash_at: u64, tear: f64, fsync: bool) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sent: Vec<Message> = sizes
            .iter()
            .enumerate()
            .map(|(n, b)| message(n, *b))
            .collect();
        let (image, acknowledged, first) =
            before_the_crash(&sent, wave, crash_at, tear, fsync).await;
        let second = after_the_crash(&image).await;
        let by_id: BTreeMap<&str, &Message> = sent.iter().map(|m| (m.id.as_str(), m)).collect();
        let delivered: BTreeSet<String> = first
            .iter()
            .chain(second.iter())
            .map(|m| m.id.clone())
            .collect();
        let corrupt = second
            .iter()
            .filter(|m| {
                by_id
                    .get(m.id.as_str())
                    .is_none_or(|s| s.body != m.body || s.key != m.key)
            })
            .map(|m| m.id.clone())
            .collect();
        Outcome {
            acknowledged: acknowledged.len(),
            lost: acknowledged.difference(&delivered).cloned().collect(),
            corrupt,
        }
    })
}

/// Accept `sent` through the crashing disk: what the crash left (segment files by id), the
/// ids acknowledged, and what the sink was handed before the crash.
async fn before_the_crash(
    sent: &[Message],
    wave: usize,
    crash_at: u64,
    tear: f64,
    fsync: bool,
) -> (BTreeMap<u64, Vec<u8>>, BTreeSet<String>, Vec<Message>) {
    let dir = tempfile::tempdir().unwrap();
    let shadow = Arc::new(Mutex::new(Shadow {
        files: BTreeMap::new(),
        ops: 0,
        crash_at,
        tear,
        image: None,
    }));
    let disk = Box::new(CrashDisk {
        real: Files::boxed(dir.path()),
        shadow: shadow.clone(),
    });
    let sink = Arc::new(Recorder {
        confirm_all: false,
        seen: Mutex::default(),
    });
    let sinks: BTreeMap<String, Arc<dyn Sink>> = [("s".to_owned(), sink.clone() as _)].into();
    let targets = ["s".to_owned()];
    let mut acknowledged = BTreeSet::new();
    match Spool::open_on(disk, &config(dir.path(), fsync), &sinks, metrics()) {
        Ok(spool) => {
            for wave in sent.chunks(wave.max(1)) {
                let answers = futures_util::future::join_all(
                    wave.iter()
                        .map(|m| spool.accept(m, &targets, "BOOKING_CREATED")),
                )
                .await;
                for (m, answer) in wave.iter().zip(answers) {
                    if answer.is_ok() {
                        acknowledged.insert(m.id.clone());
                    }
                }
            }
            // Let the lanes confirm what they were handed (their DONEs may or may not make it
            // to the disk before the crash).
            tokio::time::sleep(Duration::from_millis(20)).await;
            lock(&shadow).crash();
            spool.shutdown().await;
        }
        // The crash came while the spool was opening: nothing was acknowledged.
        Err(_) => lock(&shadow).crash(),
    }
    let image = lock(&shadow).image.take().unwrap_or_default();
    let seen = std::mem::take(&mut *sink.seen.lock().unwrap());
    (image, acknowledged, seen)
}

/// Open a spool (real disk) on `image` and drain it: what the sink was handed.
async fn after_the_crash(image: &BTreeMap<u64, Vec<u8>>) -> Vec<Message> {
    let dir = tempfile::tempdir().unwrap();
    for (id, bytes) in image {
        std::fs::write(segment_path(dir.path(), *id), bytes).unwrap();
    }
    let sink = Arc::new(Recorder {
        confirm_all: true,
        seen: Mutex::default(),
    });
    let sinks: BTreeMap<String, Arc<dyn Sink>> = [("s".to_owned(), sink.clone() as _)].into();
    let metrics = metrics();
    let entries = metrics.entries.clone();
    let spool = Spool::open(&config(dir.path(), true), &sinks, metrics).unwrap();
    for _ in 0..500 {
        if entries.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spool.shutdown().await;
    let seen = std::mem::take(&mut *sink.seen.lock().unwrap());
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// At any crash point, with any part of the unsynced tail surviving, every acknowledged
    /// delivery is forwarded after the reopen and nothing corrupt is.
    #[test]
    fn a_crash_loses_no_acknowledged_delivery(
        sizes in proptest::collection::vec(0usize..3000, 1..40),
        wave in 1usize..8,
        crash_at in 1u64..120,
        tear in 0.0f64..1.0,
    ) {
        let outcome = crash_run(&sizes, wave, crash_at, tear, true);
        prop_assert!(outcome.lost.is_empty(), "{outcome:?}");
        prop_assert!(outcome.corrupt.is_empty(), "{outcome:?}");
    }
}

/// The same run with syncing switched off loses what it acknowledged: the disk above does
/// catch a writer that answers before its data is synced.
#[test]
fn a_writer_that_does_not_sync_is_caught() {
    let sizes: Vec<usize> = (0..20).map(|n| 100 + n).collect();
    let outcome = crash_run(&sizes, 4, u64::MAX, 0.5, false);
    assert_eq!(outcome.acknowledged, 20);
    assert!(!outcome.lost.is_empty(), "{outcome:?}");
    assert!(outcome.corrupt.is_empty(), "{outcome:?}");
}
