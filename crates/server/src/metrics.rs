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
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let received = counter(
            "cal_relay_deliveries_received_total",
            "Deliveries received on a source path.",
            &["source"],
        )?;
        let rejected = counter(
            "cal_relay_deliveries_rejected_total",
            "Requests refused, by reason.",
            &["source", "reason"],
        )?;
        let published = counter(
            "cal_relay_messages_published_total",
            "Messages confirmed by a sink.",
            &["sink", "trigger"],
        )?;
        let publish_errors = counter(
            "cal_relay_publish_errors_total",
            "Publishes a sink failed, by reason.",
            &["sink", "trigger", "reason"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "cal_relay_request_duration_seconds",
                "Time from request to answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "cal_relay_publish_duration_seconds",
                "Time a sink took to confirm a message.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["sink"],
        )?;
        registry.register(Box::new(publish_duration.clone()))?;
        let in_flight = IntGauge::new(
            "cal_relay_requests_in_flight",
            "Requests being handled now.",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let sink_ready = IntGaugeVec::new(
            Opts::new(
                "cal_relay_sink_ready",
                "1 when the sink is connected and can take messages, else 0.",
            ),
            &["sink"],
        )?;
        registry.register(Box::new(sink_ready.clone()))?;
        let connections = IntGauge::new("cal_relay_connections", "Client connections open now.")?;
        registry.register(Box::new(connections.clone()))?;
        let duplicates = IntCounter::new(
            "cal_relay_duplicates_total",
            "Deliveries accepted without publishing: same delivery id seen within the window.",
        )?;
        registry.register(Box::new(duplicates.clone()))?;
        let schema_violations = counter(
            "cal_relay_schema_violations_total",
            "Published bodies that depart from their trigger's schema ([schema] check = \"warn\").",
            &["trigger"],
        )?;
        Ok(Metrics {
            registry,
            received,
            rejected,
            published,
            publish_errors,
            request_duration,
            publish_duration,
            in_flight,
            connections,
            sink_ready,
            duplicates,
            schema_violations,
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
