//! The span processor: finished spans go into a bounded queue (a full queue drops the span and
//! counts it, never waits), and one thread sends them in batches to the exporter.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, Registry};

/// Most spans in one export.
const BATCH: usize = 512;

/// What the export counts: `cal_relay_trace_spans_exported_total`,
/// `cal_relay_trace_spans_dropped_total` (queue full, or their export failed),
/// `cal_relay_trace_export_errors_total` (exports that failed).
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub export_errors: IntCounter,
}

impl TraceMetrics {
    pub fn register(registry: &Registry) -> Result<TraceMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(TraceMetrics {
            exported: counter(
                "cal_relay_trace_spans_exported_total",
                "Spans the OTLP endpoint accepted.",
            )?,
            dropped: counter(
                "cal_relay_trace_spans_dropped_total",
                "Spans not exported: the export queue was full, or their export failed.",
            )?,
            export_errors: counter(
                "cal_relay_trace_export_errors_total",
                "Exports of a batch of spans that failed.",
            )?,
        })
    }
}

enum Command {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(SyncSender<()>),
    Stop(SyncSender<()>),
}

/// A [`SpanProcessor`] with a bounded queue and its own export thread.
#[derive(Debug)]
pub struct Queue {
    spans: SyncSender<Command>,
    /// Flushes, the resource and the stop, which must not be lost to a full span queue.
    control: SyncSender<Command>,
    dropped: IntCounter,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    timeout: Duration,
}

impl Queue {
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        capacity: usize,
        interval: Duration,
        metrics: TraceMetrics,
    ) -> std::io::Result<Queue> {
        let (spans, span_rx) = sync_channel(capacity);
        let (control, control_rx) = sync_channel(4);
        let dropped = metrics.dropped.clone();
        let thread = std::thread::Builder::new()
            .name("cal-relay-traces".into())
            .spawn(move || run(exporter, span_rx, control_rx, interval, metrics))?;
        Ok(Queue {
            spans,
            control,
            dropped,
            thread: Mutex::new(Some(thread)),
            timeout: interval + Duration::from_secs(10),
        })
    }

    /// Send `command` on the control queue and wait (bounded) for the thread's answer.
    fn ask(
        &self,
        make: impl FnOnce(SyncSender<()>) -> Command,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (reply, answered) = sync_channel(1);
        self.control
            .send(make(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(Command::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Command::Flush, self.timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Command::Stop, timeout.max(self.timeout));
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if result.is_ok() {
                let _ = thread.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Command::Resource(resource.clone()));
    }
}

/// The export thread: a batch goes out when it is full or `interval` after its first span.
fn run<E: SpanExporter>(
    mut exporter: E,
    spans: Receiver<Command>,
    control: Receiver<Command>,
    interval: Duration,
    metrics: TraceMetrics,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut due = Instant::now() + interval;
    let export = |exporter: &E, batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match futures_executor::block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => metrics.exported.inc_by(n),
            Err(e) => {
                metrics.export_errors.inc();
                metrics.dropped.inc_by(n);
                tracing::warn!(error = %e, spans = n, "traces: export failed; spans dropped");
            }
        }
    };
    // Everything queued now, and the batch, sent.
    let export_queued = |exporter: &E, batch: &mut Vec<SpanData>| {
        while let Ok(Command::Span(span)) = spans.try_recv() {
            batch.push(*span);
            if batch.len() >= BATCH {
                export(exporter, batch);
            }
        }
        export(exporter, batch);
    };
    loop {
        while let Ok(command) = control.try_recv() {
            match command {
                Command::Resource(resource) => exporter.set_resource(&resource),
                Command::Flush(reply) => {
                    export_queued(&exporter, &mut batch);
                    let _ = reply.send(());
                }
                Command::Stop(reply) => {
                    export_queued(&exporter, &mut batch);
                    let _ = exporter.shutdown();
                    let _ = reply.send(());
                    return;
                }
                Command::Span(span) => batch.push(*span),
            }
        }
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        match spans.recv_timeout(wait) {
            Ok(Command::Span(span)) => {
                if batch.is_empty() {
                    due = Instant::now() + interval;
                }
                batch.push(*span);
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                export(&exporter, &mut batch);
                return;
            }
        }
        if batch.len() >= BATCH || (!batch.is_empty() && Instant::now() >= due) {
            export(&exporter, &mut batch);
        }
    }
}
