//! cal-relay's OpenTelemetry traces. [`install`] starts exporting spans over OTLP/HTTP
//! (protobuf) through a bounded queue drained by its own thread; [`Trace`] is the handle the
//! other crates use to open spans (a delivery, its verification, a spool append, a publish, a
//! forward from the spool) and to carry the W3C trace context (`traceparent`, `tracestate`) in a
//! message's headers. Until [`install`] runs, a [`Trace`] is empty and costs nothing.
//!
//! It must not block a delivery: a span that finds the queue full is dropped and counted, and
//! export happens off the request path. It knows no HTTP server, broker client or Cal.com field:
//! callers name their spans and attributes; messaging attributes come from the [`Message`] a
//! sink is handed and the sink's kind.
//!
//! It also holds the budget of per-request log lines ([`lines`]): a delivery's line costs an
//! atomic check, and nothing more once the second's budget is spent.

pub mod lines;
mod publish;
mod queue;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cal_relay_sink::{Header, Message, Sink};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

pub use opentelemetry::trace::SpanKind as Kind;
pub use publish::{publish, InternalEvent, PublishEnded, PublishMetrics, SinkSeries};
pub use queue::TraceMetrics;

/// Name of the instrumentation scope the relay's spans carry.
const SCOPE: &str = "cal-relay";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being recorded (after [`install`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Settings {
    /// OTLP/HTTP endpoint: a base URL (`http://collector:4318`, to which `/v1/traces` is added)
    /// or the full traces URL.
    pub endpoint: String,
    pub service_name: String,
    /// Share of new traces recorded (0 to 1); a delivery with a sampled parent is recorded.
    pub sample_ratio: f64,
    /// Most finished spans waiting for export; beyond, spans are dropped and counted.
    pub queue_size: usize,
    /// Longest a finished span waits before its batch is sent.
    pub export_interval: Duration,
    /// Longest one export may take.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing.otlp_endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot start the span exporter: {0}")]
    Exporter(String),
}

/// The traces URL for `endpoint`: `/v1/traces` added to a URL without a path.
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let bad = |reason: &str| TelemetryError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if path.trim_end_matches('/').is_empty() {
        Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
    } else {
        Ok(endpoint.to_owned())
    }
}

/// The running export; [`Exporting::shutdown`] sends what is queued.
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Stop recording and send what is queued (bounded by the export timeout).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: shutdown did not complete");
        }
    }
}

/// Start recording spans and exporting them to `settings.endpoint`. Call once, before serving.
pub fn install(settings: &Settings, metrics: TraceMetrics) -> Result<Exporting, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let url = traces_url(&settings.endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let processor = queue::Queue::start(
        exporter,
        settings.queue_size.max(1),
        settings.export_interval,
        metrics,
    )
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio.clamp(0.0, 1.0),
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Exporting { provider })
}

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer_provider().tracer(SCOPE)
}

/// An attribute: a static key and a value.
pub fn attr(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// A span (with the trace it belongs to), or nothing while tracing is off. The span ends when
/// [`Trace::end`] is called or the last handle to it is dropped.
#[derive(Debug, Clone, Default)]
pub struct Trace(Option<Context>);

impl Trace {
    /// No span: every method does nothing.
    pub fn off() -> Trace {
        Trace(None)
    }

    /// A server span for a request that carried these W3C trace context headers: their span,
    /// when valid, is its parent.
    pub fn incoming(
        name: impl Into<Cow<'static, str>>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        if !enabled() {
            return Trace(None);
        }
        let carried: Vec<Header> = [("traceparent", traceparent), ("tracestate", tracestate)]
            .into_iter()
            .filter_map(|(k, v)| Some((Cow::Borrowed(k), v?.to_owned())))
            .collect();
        let parent = TraceContextPropagator::new().extract(&MessageHeaders(&carried));
        let span = tracer()
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&tracer(), &parent);
        Trace(Some(parent.with_span(span)))
    }

    /// A child span of this one (nothing when this is nothing).
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        let Some(cx) = &self.0 else {
            return Trace(None);
        };
        let span = tracer()
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&tracer(), cx);
        Trace(Some(cx.with_span(span)))
    }

    /// The producer span of publishing `message` to sink `sink` (of kind `kind`), a child of
    /// this one, with the messaging attributes of OpenTelemetry's semantic conventions.
    pub fn publish(&self, name: &str, sink: &dyn Sink, message: &Message) -> Trace {
        if self.0.is_none() {
            return Trace(None);
        }
        self.child(
            format!("publish {}", message.destination),
            SpanKind::Producer,
            messaging(name, sink, message),
        )
    }

    /// The producer span of forwarding a spooled `message` to sink `sink`: a new trace, linked
    /// to the span that accepted the delivery (the trace context in the message's headers).
    pub fn forward(name: &str, sink: &dyn Sink, message: &Message, attempt: u32) -> Trace {
        if !enabled() {
            return Trace(None);
        }
        let accepted = TraceContextPropagator::new().extract(&MessageHeaders(&message.headers));
        let links = match accepted.span().span_context() {
            sc if sc.is_valid() => vec![Link::with_context(sc.clone())],
            _ => Vec::new(),
        };
        let mut attributes = messaging(name, sink, message);
        attributes.push(attr("cal.spool.attempt", i64::from(attempt)));
        let span = tracer()
            .span_builder(format!("publish {}", message.destination))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&tracer(), &Context::new());
        Trace(Some(Context::new().with_span(span)))
    }

    /// Whether this is a span being recorded.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&self, attribute: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute);
        }
    }

    /// Mark the span failed, with why.
    pub fn fail(&self, description: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(description));
        }
    }

    /// End the span now.
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }

    /// The W3C trace context of this span as message headers (`traceparent`, and `tracestate`
    /// when there is one); none while tracing is off.
    pub fn context_headers(&self) -> Vec<Header> {
        struct Out(Vec<Header>);
        impl Injector for Out {
            fn set(&mut self, key: &str, value: String) {
                let key = match key {
                    "traceparent" => Cow::Borrowed("traceparent"),
                    "tracestate" => Cow::Borrowed("tracestate"),
                    other => Cow::Owned(other.to_owned()),
                };
                if !value.is_empty() {
                    self.0.push((key, value));
                }
            }
        }
        let Some(cx) = &self.0 else {
            return Vec::new();
        };
        let mut out = Out(Vec::with_capacity(2));
        TraceContextPropagator::new().inject_context(cx, &mut out);
        out.0
    }
}

/// Headers (a message's, or a request's trace context), read as a trace context carrier.
struct MessageHeaders<'a>(&'a [Header]);

impl Extractor for MessageHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The messaging semantic-convention attributes of publishing `message` to `sink` (named
/// `name`): the common ones, and the ones its broker adds.
fn messaging(name: &str, sink: &dyn Sink, message: &Message) -> Vec<KeyValue> {
    let mut attributes = vec![
        attr("messaging.system", sink.messaging_system()),
        attr("messaging.operation.type", "send"),
        attr("messaging.operation.name", "publish"),
        attr("messaging.destination.name", message.destination.clone()),
        attr("messaging.message.id", message.id.clone()),
        attr("messaging.message.body.size", message.body.len() as i64),
        attr("cal.sink", name.to_owned()),
    ];
    for (key, value) in sink.messaging_attributes(message) {
        attributes.push(attr(key, value));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("http:///v1").is_err());
    }

    #[test]
    fn off_costs_nothing_and_says_nothing() {
        let t = Trace::off();
        let child = t.child("x", SpanKind::Internal, vec![]);
        assert!(!child.is_on());
        assert!(child.context_headers().is_empty());
    }
}
