//! Helpers the crate's unit tests share.

use cal_relay_sink::Message;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::SpoolMetrics;

/// Message `n`: a keyed delivery with a body of `bytes` bytes.
pub fn message(n: usize, bytes: usize) -> Message {
    Message {
        id: format!("{n:064x}"),
        destination: "cal.booking.created".into(),
        key: Some(format!("key-{n}")),
        headers: Vec::new(),
        content_type: "application/json".into(),
        body: bytes::Bytes::from(vec![b'x'; bytes]),
        json_checked: false,
        received_at: std::time::SystemTime::now(),
        event: Vec::new(),
    }
}

/// The spool's metrics, in a registry of their own.
pub fn metrics() -> SpoolMetrics {
    let registry = Registry::new();
    let published = IntCounterVec::new(Opts::new("p", "p"), &["sink", "trigger"]).unwrap();
    let errors = IntCounterVec::new(Opts::new("e", "e"), &["sink", "trigger", "reason"]).unwrap();
    let duration = HistogramVec::new(HistogramOpts::new("d", "d"), &["sink"]).unwrap();
    let publish = cal_relay_telemetry::PublishMetrics {
        published,
        errors,
        duration,
    };
    SpoolMetrics::register(&registry, publish).unwrap()
}
