//! cal-relay's delivery policy: what makes an accepted delivery safe. [`Acceptor::accept`]
//! takes a routed message and its target sinks and de-duplicates it, appends it to the spool
//! (safe once fsync'd) or publishes it to every sink (safe once each confirmed), falls back to
//! publishing when the spool refuses, and never lets a message overtake entries its key has
//! waiting. It says what happened as an [`Outcome`]. It must not know about HTTP (the front end
//! turns outcomes into answers), Cal.com fields or any broker: sinks are the `Sink` trait.

mod dedup;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use cal_relay_sink::{Message, Sink, SinkError};
use cal_relay_spool::{Spool, SpoolError};
use cal_relay_telemetry::{attr, Kind, SinkSeries, Trace};
use prometheus::IntCounter;

pub use dedup::{Claim, Dedup};

/// The publish metrics the acceptor keeps: `{sink, trigger}`, `{sink, trigger, reason}`,
/// `{sink}`, and repeats not published again.
#[derive(Clone)]
pub struct AcceptMetrics {
    pub publish: cal_relay_telemetry::PublishMetrics,
    pub duplicates: IntCounter,
}

/// What became of a delivery.
#[derive(Debug)]
pub enum Outcome {
    /// Its id was accepted within the de-duplication window: not published again.
    Duplicate,
    /// Appended to the spool and fsync'd; forwarded later.
    Spooled { seq: u64 },
    /// Every target sink confirmed it (after the spool refused it, when `spool_error`).
    Published { spool_error: Option<SpoolError> },
    /// The spool refused it and its key has entries waiting there: not published (it would
    /// overtake them). The sender should retry.
    KeyWaiting { error: SpoolError },
    /// A copy of it arrived first and was still being made safe; that copy failed, so this
    /// one fails too (the sender retries), rather than being relayed a second time.
    CopyFailed,
    /// A sink did not confirm it (the others may have it); the spool's refusal when the
    /// publish was a fallback.
    Failed {
        failures: Vec<(String, SinkError)>,
        spool_error: Option<SpoolError>,
    },
}

/// A delivery to make safe: the message, the sinks it goes to, a bounded label for metrics,
/// whether a repeat of its id may be dropped (not for bodies that carry no time of their own,
/// which may be different events with identical bytes), and the span it is accepted in (the
/// spool append and each publish are its children).
pub struct Delivery<'a> {
    pub message: &'a Message,
    pub targets: &'a [String],
    /// The sinks the targets name: those of the configuration the delivery was routed by.
    pub sinks: &'a Sinks,
    pub label: &'a str,
    pub dedupable: bool,
    pub trace: &'a Trace,
}

impl Outcome {
    /// One word for what happened (a span attribute, a log field).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Duplicate => "duplicate",
            Outcome::Spooled { .. } => "spooled",
            Outcome::Published { .. } => "published",
            Outcome::KeyWaiting { .. } => "key_waiting",
            Outcome::CopyFailed => "copy_failed",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// The running sinks, by name.
pub type Sinks = BTreeMap<String, Arc<dyn Sink>>;

/// One configuration's sinks. Deliveries routed by that configuration hold it; when the last
/// of them lets go it is dropped, and a reload waiting to close the sinks it took out is told
/// so at once ([`Acceptor::retire`]) instead of polling.
pub struct SinkSet {
    sinks: Sinks,
    dropped: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl SinkSet {
    pub fn new(sinks: Sinks) -> SinkSet {
        SinkSet {
            sinks,
            dropped: std::sync::OnceLock::new(),
        }
    }
}

impl std::ops::Deref for SinkSet {
    type Target = Sinks;

    fn deref(&self) -> &Sinks {
        &self.sinks
    }
}

impl Drop for SinkSet {
    fn drop(&mut self) {
        if let Some(told) = self.dropped.take() {
            let _ = told.send(());
        }
    }
}

/// Sinks taken out of service by a reload, with their names, to be closed once the set they
/// belonged to is no longer in use.
pub struct Retired {
    pub sinks: Vec<(String, Arc<dyn Sink>)>,
    old: Arc<SinkSet>,
}

/// Sinks cannot be replaced while a spool forwards to them: its lanes are per sink.
#[derive(Debug, thiserror::Error)]
#[error("in spool mode, sinks change only with a restart (the spool's lanes are per sink)")]
pub struct SinksFixed;

/// The delivery policy: confirm mode without a spool, spool mode with one.
pub struct Acceptor {
    /// Replaced as a whole by a reload (confirm mode); a delivery uses the set it started with.
    sinks: ArcSwap<SinkSet>,
    /// Each sink's publish series, resolved once per sink (and replaced with the sinks).
    series: ArcSwap<BTreeMap<String, Arc<SinkSeries>>>,
    spool: Option<Arc<Spool>>,
    dedup: Option<Dedup>,
    metrics: AcceptMetrics,
}

fn series_of(sinks: &Sinks, metrics: &AcceptMetrics) -> BTreeMap<String, Arc<SinkSeries>> {
    sinks
        .keys()
        .map(|name| (name.clone(), metrics.publish.series(name)))
        .collect()
}

impl Acceptor {
    pub fn new(
        sinks: BTreeMap<String, Arc<dyn Sink>>,
        spool: Option<Arc<Spool>>,
        dedup: Option<Dedup>,
        metrics: AcceptMetrics,
    ) -> Acceptor {
        Acceptor {
            series: ArcSwap::from_pointee(series_of(&sinks, &metrics)),
            sinks: ArcSwap::from_pointee(SinkSet::new(sinks)),
            spool,
            dedup,
            metrics,
        }
    }

    /// The sinks running now.
    pub fn sinks(&self) -> Arc<SinkSet> {
        self.sinks.load_full()
    }

    /// Replace the running sinks with `new` (confirm mode only; sinks of `new` that are not
    /// running yet connected already), after `switch` has made new deliveries route by the
    /// configuration that names them. A delivery carries the sinks of the configuration it was
    /// routed by ([`Delivery::sinks`]), so one routed before the switch still finds its own.
    /// Returns the sinks no longer running, for [`Acceptor::retire`].
    pub fn replace_sinks(
        &self,
        new: Arc<SinkSet>,
        switch: impl FnOnce(),
    ) -> Result<Retired, SinksFixed> {
        if self.spool.is_some() {
            return Err(SinksFixed);
        }
        let old = self.sinks();
        let mut series = (**self.series.load()).clone();
        for (name, resolved) in series_of(&new, &self.metrics) {
            series.entry(name).or_insert(resolved);
        }
        self.series.store(Arc::new(series));
        switch();
        self.sinks.store(new.clone());
        let sinks = old
            .iter()
            .filter(|(name, sink)| !new.get(*name).is_some_and(|n| Arc::ptr_eq(n, sink)))
            .map(|(name, sink)| (name.clone(), sink.clone()))
            .collect();
        Ok(Retired { sinks, old })
    }

    /// Close sinks taken out by [`Acceptor::replace_sinks`] once the set they belonged to is
    /// dropped (the deliveries routed by the old configuration have finished), or after
    /// `within`.
    pub async fn retire(retired: Retired, within: Duration) {
        let Retired { sinks, old } = retired;
        if sinks.is_empty() {
            return;
        }
        let (told, dropped) = tokio::sync::oneshot::channel();
        let _ = old.dropped.set(told);
        drop(old);
        let _ = tokio::time::timeout(within, dropped).await;
        for (name, sink) in sinks {
            sink.shutdown().await;
            tracing::info!(sink = %name, "sink closed (no longer configured)");
        }
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// Make `delivery` safe, or say why it is not.
    pub async fn accept(&self, delivery: Delivery<'_>) -> Outcome {
        let message = delivery.message;
        let dedup = self.dedup.as_ref().filter(|_| delivery.dedupable);
        // The id is held from here until the delivery is safe or has failed: a copy arriving
        // meanwhile waits for this one's outcome and answers as it does.
        let reservation = match dedup.map(|d| d.claim(&message.id, Instant::now())) {
            Some(Claim::Seen) => {
                self.metrics.duplicates.inc();
                return Outcome::Duplicate;
            }
            Some(Claim::InFlight(first)) => {
                if first.outcome().await {
                    self.metrics.duplicates.inc();
                    return Outcome::Duplicate;
                }
                return Outcome::CopyFailed;
            }
            Some(Claim::First(r)) => Some(r),
            None => None,
        };
        let safe = || {
            if let Some(r) = reservation {
                r.safe();
            }
        };
        let mut spool_error = None;
        if let Some(spool) = &self.spool {
            let span = delivery
                .trace
                .child("spool append", Kind::Internal, Vec::new());
            let appended = spool
                .accept(message, delivery.targets, delivery.label)
                .await;
            match &appended {
                Ok(seq) => span.set(attr("cal.spool.seq", *seq as i64)),
                Err(e) => span.fail(e.to_string()),
            }
            span.end();
            match appended {
                Ok(seq) => {
                    safe();
                    return Outcome::Spooled { seq };
                }
                // Publishing directly would overtake what this key has waiting.
                Err(error) if spool.has_pending(message.key.as_deref()) => {
                    tracing::warn!(delivery_id = %message.id, reason = error.reason(), %error, "spool refused and the key has deliveries waiting");
                    return Outcome::KeyWaiting { error };
                }
                Err(error) => {
                    tracing::warn!(delivery_id = %message.id, reason = error.reason(), %error, "spool refused; publishing directly");
                    spool_error = Some(error);
                }
            }
        }
        let failures = self.publish(&delivery).await;
        if failures.is_empty() {
            safe();
            Outcome::Published { spool_error }
        } else {
            Outcome::Failed {
                failures,
                spool_error,
            }
        }
    }

    /// Publish to every target sink at once; the failures, by sink name.
    async fn publish(&self, delivery: &Delivery<'_>) -> Vec<(String, SinkError)> {
        let series = self.series.load();
        let jobs = delivery.targets.iter().map(|name| {
            let sink = delivery.sinks.get(name).cloned();
            let series = series
                .get(name)
                .cloned()
                .unwrap_or_else(|| self.metrics.publish.series(name));
            async move {
                let Some(sink) = sink else {
                    // A route naming a sink its configuration lacks (a bug elsewhere): a
                    // failure the sender retries, never a silent skip.
                    let e = SinkError::transient(
                        "sink_unavailable",
                        format!("sink {name} is not running"),
                    );
                    return (name, Err(e));
                };
                let span = delivery
                    .trace
                    .publish(name, sink.as_ref(), delivery.message);
                let result = cal_relay_telemetry::publish(
                    &series,
                    span,
                    delivery.label,
                    sink.as_ref(),
                    delivery.message,
                )
                .await;
                (name, result)
            }
        });
        futures_util::future::join_all(jobs)
            .await
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| (name.clone(), e)))
            .collect()
    }

    /// Stop forwarding from the spool (what is not confirmed stays for the next start), then
    /// flush and close every sink.
    pub async fn shutdown(&self) {
        if let Some(spool) = &self.spool {
            spool.shutdown().await;
        }
        let sinks = self.sinks();
        futures_util::future::join_all(sinks.values().map(|s| s.shutdown())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramVec, IntCounterVec};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    /// A stand-in sink (unit tests only): confirms, or fails transiently, and counts.
    struct Stub {
        fail: bool,
        published: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Sink for Stub {
        fn kind(&self) -> &'static str {
            "stub"
        }
        async fn publish(&self, _: &Message) -> Result<(), SinkError> {
            self.published.fetch_add(1, Ordering::Relaxed);
            if self.fail {
                Err(SinkError::transient("down", "stub down"))
            } else {
                Ok(())
            }
        }
    }

    fn metrics() -> AcceptMetrics {
        let vec =
            |labels: &[&str]| IntCounterVec::new(prometheus::Opts::new("x", "x"), labels).unwrap();
        AcceptMetrics {
            publish: cal_relay_telemetry::PublishMetrics {
                published: vec(&["sink", "trigger"]),
                errors: vec(&["sink", "trigger", "reason"]),
                duration: HistogramVec::new(prometheus::HistogramOpts::new("d", "d"), &["sink"])
                    .unwrap(),
            },
            duplicates: IntCounter::new("dup", "dup").unwrap(),
        }
    }

    #[tokio::test]
    async fn a_delivery_routed_before_a_sink_swap_keeps_its_sinks() {
        let stub = || {
            Arc::new(Stub {
                fail: false,
                published: AtomicUsize::new(0),
            })
        };
        let (old, new) = (stub(), stub());
        let mut sinks: Sinks = BTreeMap::new();
        sinks.insert("old".into(), old.clone());
        let acceptor = Acceptor::new(sinks, None, None, metrics());
        // Routed by the configuration in effect: it holds that configuration's sinks.
        let before = acceptor.sinks();
        let mut next: Sinks = BTreeMap::new();
        next.insert("new".into(), new.clone());
        let retired = acceptor
            .replace_sinks(Arc::new(SinkSet::new(next)), || {})
            .unwrap();
        assert_eq!(retired.sinks.len(), 1);
        assert_eq!(retired.sinks[0].0, "old");
        assert_eq!(acceptor.sinks().keys().collect::<Vec<_>>(), ["new"]);
        let off = Trace::off();
        let m = message("x");
        let deliver = |targets: &'static [&'static str], sinks: Arc<SinkSet>| {
            let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            let (acceptor, m, off) = (&acceptor, &m, &off);
            async move {
                acceptor
                    .accept(Delivery {
                        message: m,
                        targets: &targets,
                        label: "PING",
                        dedupable: false,
                        trace: off,
                        sinks: &sinks,
                    })
                    .await
            }
        };
        assert!(matches!(
            deliver(&["old"], before.clone()).await,
            Outcome::Published { .. }
        ));
        assert!(matches!(
            deliver(&["new"], acceptor.sinks()).await,
            Outcome::Published { .. }
        ));
        // A target its configuration lacks fails (the sender retries) instead of vanishing.
        let Outcome::Failed { failures, .. } = deliver(&["old"], acceptor.sinks()).await else {
            panic!("a missing sink must fail the delivery");
        };
        assert_eq!(failures[0].1.reason, "sink_unavailable");
        assert_eq!(old.published.load(Ordering::Relaxed), 1);
        assert_eq!(new.published.load(Ordering::Relaxed), 1);
        // The retired sink closes as soon as the old configuration is no longer in use, well
        // before its time limit.
        drop((before, old));
        tokio::time::timeout(
            Duration::from_secs(2),
            Acceptor::retire(retired, Duration::from_secs(30)),
        )
        .await
        .expect("retired once unused");
    }

    fn message(id: &str) -> Message {
        Message {
            id: id.into(),
            destination: "cal.ping".into(),
            key: None,
            headers: vec![],
            content_type: "application/json".into(),
            body: "{}".into(),
            json_checked: true,
            received_at: SystemTime::now(),
            event: vec![],
        }
    }

    #[tokio::test]
    async fn confirm_mode_publishes_once_and_answers_repeats_as_duplicates() {
        let ok = Arc::new(Stub {
            fail: false,
            published: AtomicUsize::new(0),
        });
        let down = Arc::new(Stub {
            fail: true,
            published: AtomicUsize::new(0),
        });
        let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
        sinks.insert("ok".into(), ok.clone());
        sinks.insert("down".into(), down.clone());
        let acceptor = Acceptor::new(
            sinks,
            None,
            Some(Dedup::new(Duration::from_secs(60), 100)),
            metrics(),
        );
        let to_ok = ["ok".to_owned()];
        let off = Trace::off();
        let running = acceptor.sinks();
        let delivery = |m, dedupable| Delivery {
            message: m,
            targets: &to_ok,
            label: "PING",
            dedupable,
            trace: &off,
            sinks: &running,
        };
        let m = message("a");
        assert!(matches!(
            acceptor.accept(delivery(&m, true)).await,
            Outcome::Published { spool_error: None }
        ));
        assert!(matches!(
            acceptor.accept(delivery(&m, true)).await,
            Outcome::Duplicate
        ));
        // Not de-duplicable (a template body): published again.
        assert!(matches!(
            acceptor.accept(delivery(&m, false)).await,
            Outcome::Published { .. }
        ));
        assert_eq!(ok.published.load(Ordering::Relaxed), 2);

        let both = ["ok".to_owned(), "down".to_owned()];
        let m = message("b");
        let outcome = acceptor
            .accept(Delivery {
                message: &m,
                targets: &both,
                label: "PING",
                dedupable: true,
                trace: &off,
                sinks: &running,
            })
            .await;
        let Outcome::Failed {
            failures,
            spool_error: None,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "down");
        // A failed delivery is not remembered: its retry is published.
        assert!(matches!(
            acceptor
                .accept(Delivery {
                    message: &m,
                    targets: &to_ok,
                    label: "PING",
                    dedupable: true,
                    trace: &off,
                    sinks: &running,
                })
                .await,
            Outcome::Published { .. }
        ));
    }
}
