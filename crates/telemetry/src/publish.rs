//! One instrumented publish, the same in both delivery modes: the span, the publish
//! duration, and the published or failed count, around one `Sink::publish`.

use std::time::Instant;

use cal_relay_sink::{Message, Sink, SinkError};
use prometheus::{HistogramVec, IntCounterVec};

use crate::Trace;

/// The publish series: `…_published_total{sink,trigger}`, `…_errors_total{sink,trigger,reason}`
/// and the duration histogram `{sink}`, registered by the caller.
#[derive(Clone)]
pub struct PublishMetrics {
    pub published: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
}

/// Publish `message` to `sink` (named `name`) once: `span` fails with the error and ends here,
/// the duration is observed, and the message counted as published or failed under `label`.
pub async fn publish(
    metrics: &PublishMetrics,
    span: Trace,
    name: &str,
    label: &str,
    sink: &dyn Sink,
    message: &Message,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let result = sink.publish(message).await;
    if let Err(e) = &result {
        span.fail(e.to_string());
    }
    span.end();
    metrics
        .duration
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(()) => metrics.published.with_label_values(&[name, label]).inc(),
        Err(e) => metrics
            .errors
            .with_label_values(&[name, label, e.reason])
            .inc(),
    }
    result
}
