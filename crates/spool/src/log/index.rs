//! The in-memory index of pending entries: a [`Slot`] per entry (where its PUT frame is, the
//! sinks still to reach, its key's hash), the shared target sets, the entries compaction moved,
//! and the count of pending entries per key. Memory per pending entry, not per byte of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::record::Entry;

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

    pub(super) fn set(&self, at: Location) {
        let mut map = self.lock();
        map.insert(at.seq, at);
        self.moved.store(map.len(), Ordering::Release);
    }

    pub(super) fn forget(&self, seq: u64) {
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

    pub(super) fn add(&self, key: Option<u64>) {
        if let Some(k) = key {
            *self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(k)
                .or_default() += 1;
        }
    }

    pub(super) fn remove(&self, key: Option<u64>) {
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
