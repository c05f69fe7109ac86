//! A budget for the log lines written per request (`delivered`, `spooled`, `rejected`, ...):
//! at most `log.request_lines_per_sec` of them in each second; past that they are counted
//! (`cal_relay_log_lines_suppressed_total`) instead of formatted and written, and the first
//! line of the next second says how many were left out. A quiet relay logs every delivery; one
//! under load does not spend a tenth of its CPU, and its request tasks never wait on a slow
//! log reader, for lines nobody reads at 60,000 a second (the approach of Vector's rate-limited
//! internal logs).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// The default of `log.request_lines_per_sec`.
pub const DEFAULT_PER_SEC: u32 = 20;

static LIMIT: AtomicU32 = AtomicU32::new(DEFAULT_PER_SEC);
/// The current second (high 32 bits, since `EPOCH`) and lines written in it (low 32 bits).
static WINDOW: AtomicU64 = AtomicU64::new(0);
/// Lines left out since the last one written.
static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Every line left out, for `/metrics`.
pub static SUPPRESSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "cal_relay_log_lines_suppressed_total",
        "Per-request log lines left out beyond log.request_lines_per_sec.",
    )
    .expect("a valid metric name")
});

/// Set the budget: `per_sec` lines a second; 0 writes every line.
pub fn set_per_sec(per_sec: u32) {
    LIMIT.store(per_sec, Ordering::Relaxed);
}

/// Whether a per-request line may be written now: `Some(n)` when it may, `n` being the lines
/// left out before it (to say so first), `None` when the budget of this second is spent.
pub fn admit() -> Option<u64> {
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit == 0 {
        return Some(0);
    }
    let now = EPOCH.elapsed().as_secs() as u32;
    let mut state = WINDOW.load(Ordering::Relaxed);
    loop {
        let (second, written) = ((state >> 32) as u32, state as u32);
        let next = if second != now {
            (u64::from(now) << 32) | 1
        } else if written < limit {
            state + 1
        } else {
            LEFT_OUT.fetch_add(1, Ordering::Relaxed);
            SUPPRESSED.inc();
            return None;
        };
        match WINDOW.compare_exchange_weak(state, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) if second != now => return Some(LEFT_OUT.swap(0, Ordering::Relaxed)),
            Ok(_) => return Some(0),
            Err(current) => state = current,
        }
    }
}

/// Write a per-request line at `info` within the budget of [`admit`](crate::lines::admit).
/// Takes what `tracing::info!` takes; nothing is formatted when the line is left out or `info`
/// is off.
#[macro_export]
macro_rules! request_line {
    ($($line:tt)+) => {
        if ::tracing::enabled!(::tracing::Level::INFO) {
            if let Some(left_out) = $crate::lines::admit() {
                if left_out > 0 {
                    ::tracing::info!(
                        left_out,
                        "per-request lines left out since the last one (log.request_lines_per_sec)"
                    );
                }
                ::tracing::info!($($line)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_admits_its_budget_then_counts_the_rest() {
        set_per_sec(3);
        // Start at a fresh second so the window does not turn over mid-test.
        let start = EPOCH.elapsed().as_secs();
        while EPOCH.elapsed().as_secs() == start {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let admitted: Vec<_> = (0..10).map(|_| admit()).collect();
        let written = admitted.iter().filter(|a| a.is_some()).count();
        assert_eq!(written, 3, "{admitted:?}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            admit(),
            Some(7),
            "the next second's first line reports the 7 left out"
        );
        set_per_sec(0);
        assert!((0..100).all(|_| admit() == Some(0)));
        set_per_sec(DEFAULT_PER_SEC);
    }
}
