//! The log's room, owned by one type: the bytes the log holds on disk, the bytes appends have
//! reserved on their way to the writer, and the full flag with its gauge. Appends reserve here
//! ([`Capacity::try_reserve`]); the writer counts what it wrote and deleted, and is the only one
//! to clear the flag ([`Capacity::settle`]) once the log is back under half of `max_bytes`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// See the module documentation.
#[derive(Debug)]
pub struct Capacity {
    max_bytes: u64,
    /// Bytes of the log's segments.
    used: AtomicU64,
    /// Bytes of appends on their way to the writer, not yet in `used`.
    reserved: AtomicU64,
    full: AtomicBool,
    /// `cal_relay_spool_full`: what `full` shows.
    gauge: prometheus::IntGauge,
}

/// An append's room, given back when dropped (once the writer counted it, or refused it).
#[derive(Debug)]
pub struct Reservation<'a>(&'a Capacity, u64);

/// No room for an append: the log holds `used` of `max` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub used: u64,
    pub max: u64,
}

impl Capacity {
    pub fn new(max_bytes: u64, gauge: prometheus::IntGauge) -> Capacity {
        Capacity {
            max_bytes,
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            full: AtomicBool::new(false),
            gauge,
        }
    }

    /// Reserve `len` bytes for an append, so concurrent appends cannot together overshoot
    /// `max_bytes`; refused (and the spool marked full) when they do not fit.
    pub fn try_reserve(&self, len: u64) -> Result<Reservation<'_>, NoRoom> {
        let reserved = self.reserved.fetch_add(len, Ordering::AcqRel) + len;
        let reservation = Reservation(self, len);
        let used = self.used();
        if used + reserved > self.max_bytes {
            drop(reservation);
            self.mark_full();
            return Err(NoRoom {
                used,
                max: self.max_bytes,
            });
        }
        Ok(reservation)
    }

    /// Whether appends are refused now (see the module documentation).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Bytes of the log's segments.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The writer found `bytes` of log at start.
    pub(super) fn start_at(&self, bytes: u64) {
        self.used.store(bytes, Ordering::Relaxed);
    }

    /// The writer wrote `bytes` more.
    pub(super) fn grew(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The writer deleted or cut `bytes`.
    pub(super) fn shrank(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// Refuse appends until [`Capacity::settle`] clears it: a refused reservation, or a write
    /// that failed for lack of disk space.
    pub(super) fn mark_full(&self) {
        self.full.store(true, Ordering::Relaxed);
        self.gauge.set(1);
    }

    /// Clear the full flag once the log is back under half of `max_bytes` and the disk is not
    /// known to be full (`disk_full`), so readiness recovers even when no delivery arrives.
    pub(super) fn settle(&self, disk_full: bool) {
        if self.is_full() && self.used() <= self.max_bytes / 2 && !disk_full {
            self.full.store(false, Ordering::Relaxed);
            self.gauge.set(0);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(self.1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(max: u64) -> Capacity {
        Capacity::new(max, prometheus::IntGauge::new("full", "x").unwrap())
    }

    #[test]
    fn reservations_together_stay_within_max_bytes() {
        let c = capacity(100);
        c.start_at(60);
        let a = c.try_reserve(10).unwrap();
        assert_eq!(
            c.try_reserve(31).unwrap_err(),
            NoRoom { used: 60, max: 100 }
        );
        assert!(c.is_full());
        drop(a);
        // Room again, but the flag stays until the log is back under half.
        assert!(c.try_reserve(40).is_ok());
        c.settle(false);
        assert!(c.is_full());
        c.shrank(30);
        c.settle(true);
        assert!(c.is_full(), "a full disk keeps it");
        c.settle(false);
        assert!(!c.is_full());
        assert_eq!(c.gauge.get(), 0);
    }
}
