//! The relay's Prometheus metrics. Label values are bounded: source and sink names come from
//! config, triggers are known names or `other`, reasons are fixed words.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the relay exports, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub received: IntCounterVec,
    pub rejected: IntCounterVec,
    pub published: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub request_duration: Histogram,
    pub publish_duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Open client connections.
    pub connections: IntGauge,
    /// 1 when a sink says it can take messages, else 0; refreshed at each scrape.
    pub sink_ready: IntGaugeVec,
    pub duplicates: IntCounter,
    pub schema_violations: IntCounterVec,
    /// Deliveries accepted by a secret being retired, per source.
    pub retiring_secret: IntCounterVec,
    /// 1 per secret in use, by source and fingerprint; refreshed at each scrape.
    pub secret_info: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let latency = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        Ok(Metrics {
            received: counters(
                "cal_relay_deliveries_received_total",
                "Deliveries received on a source path.",
                &["source"],
            )?,
            rejected: counters(
                "cal_relay_deliveries_rejected_total",
                "Requests refused, by reason.",
                &["source", "reason"],
            )?,
            published: counters(
                "cal_relay_messages_published_total",
                "Messages confirmed by a sink.",
                &["sink", "trigger"],
            )?,
            publish_errors: counters(
                "cal_relay_publish_errors_total",
                "Publishes a sink failed, by reason.",
                &["sink", "trigger", "reason"],
            )?,
            request_duration: register(
                &r,
                Histogram::with_opts(latency(
                    "cal_relay_request_duration_seconds",
                    "Time from request to answer.",
                ))?,
            )?,
            publish_duration: register(
                &r,
                HistogramVec::new(
                    latency(
                        "cal_relay_publish_duration_seconds",
                        "Time a sink took to confirm a message.",
                    ),
                    &["sink"],
                )?,
            )?,
            in_flight: register(
                &r,
                IntGauge::new(
                    "cal_relay_requests_in_flight",
                    "Requests being handled now.",
                )?,
            )?,
            connections: register(
                &r,
                IntGauge::new("cal_relay_connections", "Client connections open now.")?,
            )?,
            sink_ready: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cal_relay_sink_ready",
                        "1 when the sink is connected and can take messages, else 0.",
                    ),
                    &["sink"],
                )?,
            )?,
            duplicates: register(
                &r,
                IntCounter::new(
                    "cal_relay_duplicates_total",
                    "Deliveries accepted without publishing: same delivery id seen within the \
                     window.",
                )?,
            )?,
            schema_violations: counters(
                "cal_relay_schema_violations_total",
                "Published bodies that depart from their trigger's schema ([schema] check = \
                 \"warn\").",
                &["trigger"],
            )?,
            retiring_secret: counters(
                "cal_relay_retiring_secret_deliveries_total",
                "Deliveries accepted by a secret being retired (rotate-secret's overlap): when \
                 it stays flat, the old secret is no longer used.",
                &["source"],
            )?,
            secret_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cal_relay_source_secret_info",
                        "1 for each secret a source accepts (not those being retired), by its \
                         fingerprint (16 hex digits of a SHA-256 of it, not the secret).",
                    ),
                    &["source", "fingerprint"],
                )?,
            )?,
            registry: {
                register(&r, cal_relay_telemetry::lines::SUPPRESSED.clone())?;
                r
            },
        })
    }

    /// The registry, for sinks or the binary to add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Register `metric` with `registry` and hand it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
