//! One instrumented publish, the same in both delivery modes, written as an internal event in
//! Vector's model: [`PublishEnded`] counts the publish (published or failed, by reason),
//! observes its duration and ends its span, all in one place. Each sink's label sets are
//! resolved once ([`SinkSeries`]), not looked up in the metric families per delivery.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cal_relay_sink::{Message, Sink, SinkError};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use crate::Trace;

/// Something that happened, shown in every way it is shown (counted, logged, noted on a span)
/// by its own `emit`: a call site says what happened, not how it is reported.
pub trait InternalEvent {
    fn emit(self);
}

/// Emit an [`InternalEvent`].
#[macro_export]
macro_rules! emit {
    ($event:expr) => {
        $crate::InternalEvent::emit($event)
    };
}

/// The publish series: `…_published_total{sink,trigger}`, `…_errors_total{sink,trigger,reason}`
/// and the duration histogram `{sink}`, registered by the caller.
#[derive(Clone)]
pub struct PublishMetrics {
    pub published: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
}

impl PublishMetrics {
    /// The series of sink `name`, resolved once for it.
    pub fn series(&self, name: &str) -> Arc<SinkSeries> {
        Arc::new(SinkSeries {
            duration: self.duration.with_label_values(&[name]),
            published: RwLock::default(),
            metrics: self.clone(),
            name: name.to_owned(),
        })
    }
}

/// One sink's publish series: its duration histogram, and its published counter per trigger
/// label, each resolved the first time the label is seen (a bounded set: known triggers,
/// `other`, `template`). Failures, off the hot path, are counted by reason in the family.
pub struct SinkSeries {
    name: String,
    duration: Histogram,
    published: RwLock<HashMap<String, IntCounter>>,
    metrics: PublishMetrics,
}

impl SinkSeries {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn count_published(&self, label: &str) {
        let known = self.published.read().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = known.get(label) {
            counter.inc();
            return;
        }
        drop(known);
        let counter = self
            .metrics
            .published
            .with_label_values(&[self.name.as_str(), label]);
        counter.inc();
        self.published
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_owned(), counter);
    }
}

/// A publish to one sink ended, confirmed or failed.
pub struct PublishEnded<'a> {
    pub series: &'a SinkSeries,
    /// The delivery's trigger label.
    pub label: &'a str,
    pub elapsed: Duration,
    pub result: &'a Result<(), SinkError>,
    /// The publish span, ended here (with the error when it failed).
    pub span: Trace,
}

impl InternalEvent for PublishEnded<'_> {
    fn emit(self) {
        if let Err(e) = self.result {
            self.span.fail(e.to_string());
        }
        self.span.end();
        self.series.duration.observe(self.elapsed.as_secs_f64());
        match self.result {
            Ok(()) => self.series.count_published(self.label),
            Err(e) => {
                self.series
                    .metrics
                    .errors
                    .with_label_values(&[self.series.name.as_str(), self.label, e.reason])
                    .inc();
                tracing::debug!(sink = %self.series.name, trigger = self.label, reason = e.reason, "publish failed");
            }
        }
    }
}

/// Publish `message` to `sink` once, under its `series`, counted under `label`.
pub async fn publish(
    series: &SinkSeries,
    span: Trace,
    label: &str,
    sink: &dyn Sink,
    message: &Message,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let result = sink.publish(message).await;
    crate::emit!(PublishEnded {
        series,
        label,
        elapsed: started.elapsed(),
        result: &result,
        span,
    });
    result
}
