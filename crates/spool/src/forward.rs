//! Forwarding spooled entries to their sinks. Each sink has a fixed number of lanes; an entry
//! goes to the lane its key hashes to (its id when it has no key), and a lane publishes one
//! entry at a time, retrying until the sink confirms. So entries with the same key reach a
//! sink in log order, across retries and restarts, while different keys go in parallel. A key
//! whose entry keeps failing is parked with its later entries, and the lane goes on with the
//! other keys: a stuck entry holds up only its own key.
//!
//! Lanes queue [`Slot`]s. An entry just written travels with its slot while the bodies held
//! that way stay under [`HELD_BYTES`]; beyond that (a lane far behind, a broker down for
//! hours) the entry is read back from the log when its turn comes, so memory does not grow
//! with the backlog.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cal_relay_sink::{Sink, SinkError};
use cal_relay_telemetry::{attr, SinkSeries, Trace};
use tokio::sync::{mpsc, watch};

use crate::log::{Dispatch, Dones, Location, Relocations, Slot};
use crate::record::{DeadLetter, Entry};
use crate::SpoolMetrics;

/// How failed publishes are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts before a message a sink refuses permanently becomes a dead letter. Transient
    /// failures (broker down, timeouts) are retried until `max_age`.
    pub max_attempts: u32,
    /// An entry still failing this long after it was received becomes a dead letter (reason
    /// `expired`), whatever the failure: one a broker refuses transiently forever does not
    /// hold its lane for good. `None`: retried without limit.
    pub max_age: Option<Duration>,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: a random wait in [d/2, d], d doubling per attempt.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let d = exp.min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Most bytes of message bodies the lanes hold in memory, over all sinks; entries beyond are
/// read back from the log when their turn comes.
pub const HELD_BYTES: u64 = 2 * 1024 * 1024;

/// An entry held in memory for the lanes, counted against [`HELD_BYTES`] until dropped.
pub struct Held {
    entry: Arc<Entry>,
    bytes: u64,
    /// `None` for an entry read back for its turn (not counted).
    budget: Option<Arc<AtomicU64>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// What a lane queues: where the entry is, how it is ordered, when it came, and the entry
/// itself when it is held in memory. Small: a lane far behind holds many.
struct Queued {
    at: Location,
    order: u64,
    received_at: SystemTime,
    entry: Option<Arc<Held>>,
    /// Permanent refusals so far: `max_attempts` counts these, not transient failures (an
    /// outage before a broker refuses must not make its first refusal the last).
    refusals: u32,
}

/// The lanes' senders, by sink; the log's writer dispatches into them.
pub struct Lanes {
    senders: BTreeMap<String, Vec<mpsc::UnboundedSender<Queued>>>,
    held: Arc<AtomicU64>,
}

/// Which of `n` lanes carries an entry ordered by `order` ([`Slot::order`]).
pub fn lane_of(order: u64, n: usize) -> usize {
    (order % n.max(1) as u64) as usize
}

impl Dispatch for Lanes {
    fn dispatch(&mut self, slot: &Slot, entry: Option<Arc<Entry>>) {
        // The body and about what the rest of an entry takes (id, headers, allocations).
        let bytes = entry
            .as_ref()
            .map_or(0, |e| e.message.body.len() as u64 + 1024);
        let held = entry.filter(|_| {
            self.held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                    (h + bytes <= HELD_BYTES).then_some(h + bytes)
                })
                .is_ok()
        });
        let held = held.map(|entry| {
            Arc::new(Held {
                entry,
                bytes,
                budget: Some(self.held.clone()),
            })
        });
        for target in slot.targets.iter() {
            if let Some(lanes) = self.senders.get(target) {
                if let Some(lane) = lanes.get(lane_of(slot.order, lanes.len())) {
                    let _ = lane.send(Queued {
                        at: slot.location(),
                        order: slot.order,
                        received_at: slot.received_at,
                        entry: held.clone(),
                        refusals: 0,
                    });
                }
            }
        }
    }
}

/// What every lane shares.
pub struct Context {
    pub dir: PathBuf,
    /// Where compaction moved entries to (a queued location may name a deleted segment).
    pub relocations: Arc<Relocations>,
    pub policy: RetryPolicy,
    pub metrics: SpoolMetrics,
    /// Where a lane marks an entry done for its sink.
    pub dones: Arc<Dones>,
    pub shutdown: watch::Receiver<bool>,
}

/// Start `per_sink` lanes for every sink; the dispatcher and the tasks.
pub fn start(
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
    per_sink: usize,
    ctx: Arc<Context>,
) -> (Lanes, Vec<tokio::task::JoinHandle<()>>) {
    let mut senders = BTreeMap::new();
    let mut tasks = Vec::new();
    let held = Arc::new(AtomicU64::new(0));
    for (name, sink) in sinks {
        let mut lanes = Vec::with_capacity(per_sink);
        for _ in 0..per_sink.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            lanes.push(tx);
            tasks.push(tokio::spawn(run_lane(
                ctx.clone(),
                name.clone(),
                sink.clone(),
                rx,
            )));
        }
        senders.insert(name.clone(), lanes);
    }
    (Lanes { senders, held }, tasks)
}

/// A key whose head entry failed and waits for its next attempt; the key's later entries queue
/// behind it, while other keys of the lane go on.
struct Parked {
    queue: std::collections::VecDeque<Queued>,
    attempt: u32,
    retry_at: tokio::time::Instant,
}

/// One lane: entries in arrival order, one publish at a time. An entry that fails parks its
/// key (with backoff) instead of holding up the lane, so a stuck entry delays only its own key.
async fn run_lane(
    ctx: Arc<Context>,
    name: String,
    sink: Arc<dyn Sink>,
    mut entries: mpsc::UnboundedReceiver<Queued>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut parked: std::collections::HashMap<u64, Parked> = std::collections::HashMap::new();
    // This lane's publish series, resolved once.
    let series = ctx.metrics.publish.series(&name);
    loop {
        let due = parked
            .iter()
            .min_by_key(|(_, p)| p.retry_at)
            .map(|(k, p)| (*k, p.retry_at));
        let next_retry = async {
            match due {
                Some((_, at)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let stopping = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            biased;
            () = stopping => return,
            () = next_retry => {
                let Some((key, _)) = due else { continue };
                // Retry the parked key's head; on success, go on with its queue.
                while let Some(p) = parked.get_mut(&key) {
                    let Some(head) = p.queue.front_mut() else {
                        parked.remove(&key);
                        break;
                    };
                    match attempt(&ctx, &series, sink.as_ref(), head, p.attempt + 1).await {
                        Step::Finished => {
                            p.queue.pop_front();
                            p.attempt = 0;
                        }
                        Step::RetryIn(delay) => {
                            p.attempt += 1;
                            p.retry_at = tokio::time::Instant::now() + delay;
                            break;
                        }
                    }
                }
            }
            entry = entries.recv() => {
                let Some(mut entry) = entry else { return };
                let key = entry.order;
                if let Some(p) = parked.get_mut(&key) {
                    p.queue.push_back(entry);
                    continue;
                }
                if let Step::RetryIn(delay) = attempt(&ctx, &series, sink.as_ref(), &mut entry, 1).await {
                    parked.insert(
                        key,
                        Parked {
                            queue: std::collections::VecDeque::from([entry]),
                            attempt: 1,
                            retry_at: tokio::time::Instant::now() + delay,
                        },
                    );
                }
            }
        }
    }
}

/// What one attempt left to do.
enum Step {
    /// Confirmed or dead-lettered: the entry is done here.
    Finished,
    /// Failed; try again after this long.
    RetryIn(Duration),
}

/// Publish `queued` to `sink` once (attempt number `attempt`, from 1), reading its entry back
/// from the log first when it is not held (and holding it while it is retried).
async fn attempt(
    ctx: &Context,
    series: &SinkSeries,
    sink: &dyn Sink,
    queued: &mut Queued,
    attempt: u32,
) -> Step {
    let name = series.name();
    let entry = match &queued.entry {
        Some(held) => held.entry.clone(),
        None => {
            // Read in place: one small pread, from the page cache when the lane is not far
            // behind the writer (a blocking-pool thread per read would cost more, and each
            // such thread keeps its own allocator cache).
            match read_back(ctx, &queued.at) {
                Ok(entry) => Arc::new(entry),
                Err(e) => return unreadable(ctx, name, queued, &e, attempt),
            }
        }
    };
    let step = publish_once(ctx, series, sink, &entry, attempt, &mut queued.refusals).await;
    // An entry read back is not kept for its retries: with distinct keys every parked key's
    // head would otherwise hold its body, outside the budget, and memory would follow the
    // backlog's bytes. It is read back again at its next attempt (from the page cache, mostly).
    if matches!(step, Step::RetryIn(_)) {
        queued.entry = None;
    }
    step
}

/// Read entry `at` back from the log, where compaction may have moved it (also while this read
/// was under way: a read that fails is tried once more at the entry's new place).
fn read_back(ctx: &Context, at: &Location) -> std::io::Result<Entry> {
    let first = ctx.relocations.resolve(at);
    match crate::log::read_entry(&ctx.dir, &first) {
        Err(_) if ctx.relocations.resolve(at) != first => {
            crate::log::read_entry(&ctx.dir, &ctx.relocations.resolve(at))
        }
        result => result,
    }
}

/// An entry whose PUT cannot be read back (the disk failed under it): retried like a failed
/// publish, and given up (marked done, with an error) once it is older than `max_age`.
fn unreadable(
    ctx: &Context,
    name: &str,
    queued: &Queued,
    e: &std::io::Error,
    attempt: u32,
) -> Step {
    let seq = queued.at.seq;
    let age = SystemTime::now()
        .duration_since(queued.received_at)
        .unwrap_or_default();
    if ctx.policy.max_age.is_some_and(|max| age >= max) {
        tracing::error!(sink = name, seq, error = %e, "spool: entry unreadable past max_age; given up");
        done(ctx, seq, name);
        return Step::Finished;
    }
    tracing::error!(sink = name, seq, error = %e, "spool: cannot read an entry back; will retry");
    ctx.metrics
        .retries
        .with_label_values(&[name, "spool_read"])
        .inc();
    Step::RetryIn(ctx.policy.delay(attempt - 1))
}

/// Publish `entry` to `sink` once. A publish in flight is not abandoned at shutdown: the
/// broker may already have the message, and only its DONE (written before the log closes)
/// keeps the next start from sending it again. Sinks bound a publish by their own timeouts.
async fn publish_once(
    ctx: &Context,
    series: &SinkSeries,
    sink: &dyn Sink,
    entry: &Entry,
    attempt: u32,
    refusals: &mut u32,
) -> Step {
    let (m, name) = (&ctx.metrics, series.name());
    // A new trace per attempt, linked to the span that accepted the delivery.
    let span = Trace::forward(name, sink, &entry.message, attempt);
    span.set(attr("cal.spool.seq", entry.seq as i64));
    let published =
        cal_relay_telemetry::publish(series, span, &entry.label, sink, &entry.message).await;
    let Err(error) = published else {
        done(ctx, entry.seq, name);
        return Step::Finished;
    };
    if error.permanent {
        *refusals += 1;
    }
    if error.permanent && *refusals >= ctx.policy.max_attempts {
        if bury(ctx, name, entry, &error, attempt).await {
            return Step::Finished;
        }
        return Step::RetryIn(ctx.policy.delay(attempt - 1));
    }
    let age = SystemTime::now()
        .duration_since(entry.message.received_at)
        .unwrap_or_default();
    if ctx.policy.max_age.is_some_and(|max| age >= max) {
        let expired = SinkError {
            reason: "expired",
            detail: format!(
                "still failing after {} s ({}: {})",
                age.as_secs(),
                error.reason,
                error.detail
            ),
            permanent: true,
        };
        if bury(ctx, name, entry, &expired, attempt).await {
            return Step::Finished;
        }
        return Step::RetryIn(ctx.policy.delay(attempt - 1));
    }
    m.retries.with_label_values(&[name, error.reason]).inc();
    let delay = ctx.policy.delay(attempt - 1);
    tracing::debug!(
        sink = name,
        seq = entry.seq,
        attempt,
        reason = error.reason,
        ?delay,
        "spool: retrying"
    );
    if attempt == 1 || attempt.is_power_of_two() {
        tracing::warn!(
            sink = name,
            seq = entry.seq,
            delivery_id = %entry.message.id,
            attempt,
            reason = error.reason,
            detail = %error.detail,
            "spool: publish failed; will retry"
        );
    }
    Step::RetryIn(delay)
}

fn done(ctx: &Context, seq: u64, sink: &str) {
    ctx.dones.mark(seq, sink);
}

/// Move `entry` to the dead-letter store for `sink`, then mark it done there. False when the
/// dead letter could not be stored: the entry stays, and is tried again later (publish, then
/// burial), so it is neither lost nor stranded until a restart.
async fn bury(ctx: &Context, sink: &str, entry: &Entry, error: &SinkError, attempts: u32) -> bool {
    let dead = DeadLetter {
        entry: Entry {
            targets: vec![sink.to_owned()],
            ..entry.clone()
        },
        sink: sink.to_owned(),
        reason: error.reason.to_owned(),
        detail: error.detail.clone(),
        attempts,
        dead_at: SystemTime::now(),
    };
    let dir = ctx.dir.clone();
    let stored = tokio::task::spawn_blocking(move || crate::dead::put_dead(&dir, &dead)).await;
    match stored {
        Ok(Ok(path)) => {
            tracing::warn!(
                sink,
                seq = entry.seq,
                delivery_id = %entry.message.id,
                reason = error.reason,
                detail = %error.detail,
                attempts,
                path = %path.display(),
                "spool: dead letter"
            );
            ctx.metrics
                .dead_letters
                .with_label_values(&[sink, error.reason])
                .inc();
            done(ctx, entry.seq, sink);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(sink, seq = entry.seq, error = %e, "spool: cannot store dead letter; will retry");
            ctx.metrics
                .retries
                .with_label_values(&[sink, "dead_letter_store"])
                .inc();
            false
        }
        Err(e) => {
            tracing::error!(sink, seq = entry.seq, error = %e, "spool: dead letter task");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_attempts: 3,
            max_age: None,
        };
        for _ in 0..100 {
            let d0 = p.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d30 = p.delay(30);
            assert!(d30 >= Duration::from_millis(2500) && d30 <= Duration::from_secs(5));
        }
    }

    #[test]
    fn same_key_same_lane() {
        let order = |id: &str, key: Option<&str>| {
            let mut e = crate::record::tests::entry(1, key.unwrap_or(""));
            e.message.id = id.into();
            e.message.key = key.map(Into::into);
            Slot::of(&e, Default::default(), 1, 0, 0).order
        };
        assert_eq!(
            lane_of(order("1", Some("uid")), 64),
            lane_of(order("2", Some("uid")), 64)
        );
        let spread: std::collections::BTreeSet<_> = (0..200)
            .map(|i| lane_of(order(&i.to_string(), None), 64))
            .collect();
        assert!(spread.len() > 32);
    }
}
