//! `serve`: a plan started in the order its parts depend on each other (metrics, traces,
//! sinks, the spool over them, the delivery policy over both, the front end), served until
//! SIGTERM or SIGINT, with a reloader beside it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cal_relay_config::{Config, DeliveryMode, SchemaCheck};
use cal_relay_server::{Metrics, Relay};
use cal_relay_sink::Sink;
use tokio::signal::unix::Signal;

use crate::plan::Plan;
use crate::reload::{Reloader, Reloads};
use crate::AppError;

/// How `serve` was started, beside its plan.
pub struct Serving {
    /// The `--config` path given, if any (reloads read it again).
    pub path: Option<PathBuf>,
    /// Reload when the file changes, too (`--watch-config`).
    pub watch: bool,
    /// SIGHUP, registered before anything slow starts (it is ignored until then).
    pub hangup: Option<Signal>,
}

/// A plan's parts started in the order they depend on each other and assembled into the
/// relay, not yet listening: what `serve` puts behind its listener, and what a test drives in
/// process.
pub struct Started {
    pub relay: Relay,
    traces: Option<cal_relay_telemetry::Exporting>,
}

/// Start the plan's parts: metrics, traces, sinks, the spool over them, the delivery policy
/// over both, the relay in front.
pub async fn start(plan: &Plan) -> Result<Started, AppError> {
    let config = &plan.config;
    let metrics = Metrics::new()?;
    let traces = start_tracing(config, metrics.registry())?;
    let sinks = crate::sinks::build_all(plan).await?;
    let spool = open_spool(config, &sinks, &metrics)?;
    let acceptor = cal_relay_accept::Acceptor::new(
        sinks,
        spool,
        open_dedup(config),
        cal_relay_accept::AcceptMetrics {
            publish: publish_metrics(&metrics),
            duplicates: metrics.duplicates.clone(),
        },
    );
    let mut relay = Relay::new(
        plan.endpoints.clone(),
        plan.routes.clone(),
        acceptor,
        plan.limits.clone(),
        metrics,
    )?;
    if config.schema.check == SchemaCheck::Warn {
        relay = relay.with_schema_check(cal_relay_contract::Checker::new()?);
    }
    Ok(Started { relay, traces })
}

/// Start `plan` and serve until a shutdown signal; then drain and close.
pub async fn serve(plan: Plan, how: Serving) -> Result<(), AppError> {
    let Started { relay, traces } = start(&plan).await?;
    let config = &plan.config;
    let listener = cal_relay_server::bind(&config.server)
        .map_err(|e| AppError::io(format!("cannot listen on {}", config.server.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::io("listener", e))?;
    tracing::info!(
        listen = %addr,
        tls = config.server.tls.is_some(),
        sources = config.sources.len(),
        sinks = ?config.sinks.keys().collect::<Vec<_>>(),
        delivery = %config.delivery.mode,
        "cal-relay listening"
    );
    let relay = Arc::new(relay);
    let reloader = Reloader {
        hangup: how.hangup,
        tls: plan.tls.clone(),
        relay: relay.clone(),
        path: how.path,
        watch: how.watch,
        reloads: Reloads::register(relay.metrics().registry(), &plan)?,
        started: plan.config.clone(),
    };
    tokio::spawn(reloader.run());
    let server = &plan.config.server;
    cal_relay_server::serve(listener, relay, server, plan.tls, shutdown_signal()).await;
    if let Some(traces) = traces {
        // Sends what is queued; blocking, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    Ok(())
}

/// The publish series both modes count in (one set, registered by the front end's metrics).
fn publish_metrics(metrics: &Metrics) -> cal_relay_telemetry::PublishMetrics {
    cal_relay_telemetry::PublishMetrics {
        published: metrics.published.clone(),
        errors: metrics.publish_errors.clone(),
        duration: metrics.publish_duration.clone(),
    }
}

/// Start exporting traces when `[tracing] otlp_endpoint` is set.
fn start_tracing(
    config: &Config,
    registry: &prometheus::Registry,
) -> Result<Option<cal_relay_telemetry::Exporting>, AppError> {
    let t = &config.tracing;
    let Some(endpoint) = &t.otlp_endpoint else {
        return Ok(None);
    };
    let exporting = cal_relay_telemetry::install(
        &cal_relay_telemetry::Settings {
            endpoint: endpoint.clone(),
            service_name: t.service_name.clone(),
            sample_ratio: t.sample_ratio,
            queue_size: t.queue_size,
            export_interval: t.export_interval_ms.max(Duration::from_millis(1)),
            timeout: t.export_timeout_ms.max(Duration::from_millis(1)),
        },
        cal_relay_telemetry::TraceMetrics::register(registry)?,
    )?;
    tracing::info!(endpoint = %cal_relay_sink::redact_url(endpoint), sample_ratio = t.sample_ratio, "exporting traces over OTLP/HTTP");
    Ok(Some(exporting))
}

/// The spool of `[delivery]` in spool mode, forwarding to `sinks`.
fn open_spool(
    config: &Config,
    sinks: &std::collections::BTreeMap<String, Arc<dyn Sink>>,
    metrics: &Metrics,
) -> Result<Option<Arc<cal_relay_spool::Spool>>, AppError> {
    let d = &config.delivery;
    if d.mode != DeliveryMode::Spool {
        return Ok(None);
    }
    let spool_metrics =
        cal_relay_spool::SpoolMetrics::register(metrics.registry(), publish_metrics(metrics))?;
    let spool = cal_relay_spool::Spool::open(
        &cal_relay_spool::SpoolConfig {
            dir: d.dir.clone(),
            max_bytes: d.max_bytes,
            fsync: d.fsync,
            retry: cal_relay_spool::RetryPolicy {
                initial: d.retry_initial_ms,
                max: d.retry_max_ms,
                max_attempts: d.max_attempts,
                max_age: (!d.max_age_secs.is_zero()).then_some(d.max_age_secs),
            },
            lanes: d.lanes,
        },
        sinks,
        spool_metrics,
    )
    .map_err(|e| AppError::setting(format!("delivery.dir {}", d.dir.display()), e))?;
    Ok(Some(spool))
}

/// The de-duplication window of `[delivery]`, kept in its file when it can be.
fn open_dedup(config: &Config) -> Option<cal_relay_accept::Dedup> {
    let d = &config.delivery;
    if d.dedup_window_secs.is_zero() {
        return None;
    }
    let window = d.dedup_window_secs;
    Some(match d.dedup_path() {
        Some(path) => {
            match cal_relay_accept::Dedup::with_file(window, d.dedup_max_entries, &path) {
                Ok(dedup) => dedup,
                // Serving matters more: keep the window in memory, and say what is lost.
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot keep de-duplication ids in this file: they live in memory only, so a replay after a restart is published again (set delivery.dedup_file to a writable path)");
                    cal_relay_accept::Dedup::new(window, d.dedup_max_entries)
                }
            }
        }
        None => cal_relay_accept::Dedup::new(window, d.dedup_max_entries),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
