//! De-duplication of deliveries by delivery id within a time window, in bounded memory: the
//! oldest ids are forgotten first when the window holds more than `max_entries`.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recently accepted delivery ids.
pub struct Dedup {
    window: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<u128, Instant>,
    order: VecDeque<(u128, Instant)>,
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

    /// Whether `id` was accepted within the window.
    pub fn seen(&self, id: &str, now: Instant) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        inner.expire(now, self.window);
        inner.seen.contains_key(&digest(id))
    }

    /// Remember `id` as accepted at `now`.
    pub fn insert(&self, id: &str, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.expire(now, self.window);
        let key = digest(id);
        if inner.seen.insert(key, now).is_none() {
            inner.order.push_back((key, now));
        }
        while inner.seen.len() > self.max_entries {
            match inner.order.pop_front() {
                Some((old, _)) => {
                    inner.seen.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(key, at)) = self.order.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key) == Some(&at) {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
