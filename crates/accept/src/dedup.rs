//! De-duplication of deliveries by delivery id within a time window, in bounded memory: the
//! oldest ids are forgotten first when the window holds more than `max_entries`. With a file,
//! the window survives a restart: each accepted id is appended (`<32 hex> <unix ms>` per line,
//! written before the answer, not fsync'd: a crash of the process loses nothing, a power cut
//! may lose the last ids), the file is read back at start and rewritten when it holds more than
//! twice the live ids.
//!
//! An id is claimed before its delivery is appended or published ([`Dedup::claim`]): a copy
//! that arrives while the first is still in flight waits for the first's outcome instead of
//! being relayed a second time (or answered `duplicate` before the first is safe).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Recently accepted delivery ids.
pub struct Dedup {
    window: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The ids of `order`, each once: `order` says when it was first seen.
    seen: HashSet<u128>,
    order: VecDeque<(u128, Instant)>,
    file: Option<Persist>,
    /// Ids claimed by a delivery still being made safe, and where its outcome will be told
    /// (as many as requests in flight).
    in_flight: HashMap<u128, watch::Sender<Option<bool>>>,
}

/// What [`Dedup::claim`] found.
pub enum Claim<'a> {
    /// Accepted within the window already.
    Seen,
    /// A copy is being made safe right now: [`InFlight::outcome`] says how that ends.
    InFlight(InFlight),
    /// This delivery is the first: it holds the id until it settles.
    First(Reservation<'a>),
}

/// The first copy's outcome, awaited by a later one.
pub struct InFlight(watch::Receiver<Option<bool>>);

impl InFlight {
    /// Whether the first copy was made safe (`false`: it failed, or was dropped unfinished).
    pub async fn outcome(mut self) -> bool {
        match self.0.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// An id claimed by the delivery making it safe. [`Reservation::safe`] remembers it; dropped
/// otherwise, it is released (a failed delivery may be retried).
pub struct Reservation<'a> {
    dedup: &'a Dedup,
    key: u128,
    settled: bool,
}

impl Reservation<'_> {
    /// The delivery is safe: remember its id, and tell the copies waiting.
    pub fn safe(mut self) {
        self.settle(true);
    }

    fn settle(&mut self, safe: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut inner = self.dedup.lock();
        // Remembered and released under one lock: a copy sees one or the other.
        if safe {
            self.dedup
                .insert_locked(&mut inner, self.key, Instant::now());
        }
        if let Some(tx) = inner.in_flight.remove(&self.key) {
            tx.send_replace(Some(safe));
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// The id file and how many lines it holds.
struct Persist {
    path: PathBuf,
    file: File,
    lines: usize,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 128 bits of a delivery id: its first 32 hex digits (ids are SHA-256 hex), else a hash.
fn digest(id: &str) -> u128 {
    id.get(..32)
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            let mut h = std::hash::DefaultHasher::new();
            id.hash(&mut h);
            u128::from(h.finish())
        })
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Dedup {
        Dedup {
            window,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Like [`Dedup::new`], remembering ids in `path` across restarts: the ids it holds that
    /// are still inside the window are loaded now.
    pub fn with_file(window: Duration, max_entries: usize, path: &Path) -> io::Result<Dedup> {
        let dedup = Dedup::new(window, max_entries);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let window_ms = window.as_millis() as u64;
        {
            let mut inner = dedup.lock();
            match File::open(path) {
                Ok(f) => {
                    for line in io::BufReader::new(f).lines() {
                        let Ok(line) = line else { break };
                        let Some((hex, ms)) = line.split_once(' ') else {
                            continue;
                        };
                        let (Ok(key), Ok(ms)) = (u128::from_str_radix(hex, 16), ms.parse::<u64>())
                        else {
                            continue;
                        };
                        let age = now_ms.saturating_sub(ms);
                        if age >= window_ms {
                            continue;
                        }
                        let at = now.checked_sub(Duration::from_millis(age)).unwrap_or(now);
                        inner.remember(key, at, dedup.max_entries);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            inner.file = Some(Persist::rewrite(path, &inner.order, now, now_ms)?);
        }
        Ok(dedup)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps stay usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` was accepted within the window.
    pub fn seen(&self, id: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.expire(now, self.window);
        inner.seen.contains(&digest(id))
    }

    /// Claim `id` for a delivery about to be made safe (see [`Claim`]).
    pub fn claim(&self, id: &str, now: Instant) -> Claim<'_> {
        let mut inner = self.lock();
        inner.expire(now, self.window);
        let key = digest(id);
        if inner.seen.contains(&key) {
            return Claim::Seen;
        }
        if let Some(tx) = inner.in_flight.get(&key) {
            return Claim::InFlight(InFlight(tx.subscribe()));
        }
        inner.in_flight.insert(key, watch::channel(None).0);
        Claim::First(Reservation {
            dedup: self,
            key,
            settled: false,
        })
    }

    /// Remember `id` as accepted at `now`. An id already remembered keeps its first time (so it
    /// expires, and is evicted, on schedule).
    pub fn insert(&self, id: &str, now: Instant) {
        let mut inner = self.lock();
        self.insert_locked(&mut inner, digest(id), now);
    }

    fn insert_locked(&self, inner: &mut Inner, key: u128, now: Instant) {
        inner.expire(now, self.window);
        if !inner.remember(key, now, self.max_entries) {
            return;
        }
        let live = inner.seen.len();
        let Inner { order, file, .. } = inner;
        let Some(persist) = file.as_mut() else {
            return;
        };
        if let Err(e) = persist.append(key) {
            tracing::warn!(error = %e, path = %persist.path.display(), "cannot record a delivery id for de-duplication");
        }
        if persist.lines > 2 * live + 1024 {
            match Persist::rewrite(&persist.path, order, now, unix_ms(SystemTime::now())) {
                Ok(p) => *persist = p,
                Err(e) => {
                    tracing::warn!(error = %e, path = %persist.path.display(), "cannot compact the de-duplication file")
                }
            }
        }
    }
}

impl Persist {
    /// Write the live ids to a new file and put it in place of `path`.
    fn rewrite(
        path: &Path,
        order: &VecDeque<(u128, Instant)>,
        now: Instant,
        now_ms: u64,
    ) -> io::Result<Persist> {
        let tmp = path.with_extension("tmp");
        {
            let mut w = io::BufWriter::new(File::create(&tmp)?);
            for (key, at) in order {
                let age = now.saturating_duration_since(*at).as_millis() as u64;
                writeln!(w, "{key:032x} {}", now_ms.saturating_sub(age))?;
            }
            w.flush()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Persist {
            path: path.to_path_buf(),
            file,
            lines: order.len(),
        })
    }

    fn append(&mut self, key: u128) -> io::Result<()> {
        let line = format!("{key:032x} {}\n", unix_ms(SystemTime::now()));
        self.file.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }
}

impl Inner {
    /// Add `key` seen at `at` unless known; evict the oldest past `max`. True when added.
    fn remember(&mut self, key: u128, at: Instant, max: usize) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((key, at));
        while self.seen.len() > max {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        true
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(key, at)) = self.order.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_in_flight_waits_for_the_first_and_answers_as_it_does() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        let Claim::First(first) = d.claim(A, now) else {
            panic!("the first claims")
        };
        let Claim::InFlight(copy) = d.claim(A, now) else {
            panic!("a copy waits")
        };
        let waiting = tokio::spawn(copy.outcome());
        first.safe();
        assert!(waiting.await.unwrap(), "the first was made safe");
        assert!(matches!(d.claim(A, now), Claim::Seen));

        // A first that fails (dropped unsettled) releases the id: its copy fails, a retry
        // after it claims anew.
        let Claim::First(first) = d.claim(B, now) else {
            panic!()
        };
        let Claim::InFlight(copy) = d.claim(B, now) else {
            panic!()
        };
        drop(first);
        assert!(!copy.outcome().await);
        assert!(matches!(d.claim(B, now), Claim::First(_)));
        assert!(!d.seen(B, now));
    }

    const A: &str = "8a1f0c7d2b3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccdd";
    const B: &str = "ffff0c7d2b3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccdd";

    #[test]
    fn remembers_within_the_window_only() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert!(!d.seen(A, t0));
        d.insert(A, t0);
        assert!(d.seen(A, t0 + Duration::from_secs(9)));
        assert!(!d.seen(B, t0));
        assert!(!d.seen(A, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn an_id_inserted_twice_still_expires() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        d.insert(A, t0);
        d.insert(A, t0 + Duration::from_secs(5));
        assert!(!d.seen(A, t0 + Duration::from_secs(11)));
        assert!(d.is_empty(), "the id leaked");
    }

    #[test]
    fn concurrent_identical_inserts_leave_one_entry() {
        let d = std::sync::Arc::new(Dedup::new(Duration::from_secs(10), 100));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        d.insert(A, t0 + Duration::from_millis(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(d.len(), 1);
        assert!(!d.seen(A, t0 + Duration::from_secs(10)));
        assert!(d.is_empty());
    }

    #[test]
    fn the_window_survives_a_restart_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.ids");
        let d = Dedup::with_file(Duration::from_secs(3600), 100, &path).unwrap();
        d.insert(A, Instant::now());
        drop(d);
        // A torn or foreign line is skipped; an id older than the window is dropped.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("zz 12\nnot a line\n");
        text.push_str(&format!("{:032x} 1000\n", digest(B))); // far outside the window
        std::fs::write(&path, text).unwrap();
        let d = Dedup::with_file(Duration::from_secs(3600), 100, &path).unwrap();
        assert!(d.seen(A, Instant::now()));
        assert!(!d.seen(B, Instant::now()));
        // Rewritten at start with the live ids only.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let d = Dedup::new(Duration::from_secs(3600), 2);
        let t0 = Instant::now();
        d.insert(A, t0);
        d.insert(B, t0);
        d.insert("not-hex", t0);
        assert!(!d.seen(A, t0));
        assert!(d.seen(B, t0));
        assert!(d.seen("not-hex", t0));
    }
}
