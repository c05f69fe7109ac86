//! Reloading while serving: on SIGHUP (or, with `--watch-config`, when the file changes, and
//! whenever a source's `secrets_file` changes content: a mounted Kubernetes Secret updated in
//! place, a secret added by `subscribe`) the configuration is read and resolved again, and what can change in place is swapped in:
//! sources (paths, secrets, replay windows), routes, per-request limits and, in confirm mode,
//! the sinks whose settings changed. The whole file is refused when any of it is invalid.
//! Which settings are which is declared by the configuration crate (`cal_relay_config::CLASSES`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cal_relay_config::{Config, DeliveryMode, SinkConfig};
use cal_relay_server::{Relay, Tls};
use cal_relay_sink::Sink;
use tokio::signal::unix::Signal;

use crate::plan::Plan;
use crate::AppError;

/// The reload metrics: `cal_relay_config_reloads_total{result}` and
/// `cal_relay_config_info{hash}` (1 for the configuration in effect).
pub struct Reloads {
    total: prometheus::IntCounterVec,
    info: prometheus::IntGaugeVec,
}

impl Reloads {
    pub fn register(registry: &prometheus::Registry, plan: &Plan) -> Result<Reloads, AppError> {
        let total = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cal_relay_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, error).",
            ),
            &["result"],
        )?;
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "cal_relay_config_info",
                "1 for the configuration in effect, labelled with a hash of it (secrets left out).",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(info.clone()))?;
        for result in ["ok", "error"] {
            total.with_label_values(&[result]);
        }
        info.with_label_values(&[&crate::render::hash(plan)]).set(1);
        Ok(Reloads { total, info })
    }
}

/// Read the configuration again and apply what can change while serving.
async fn reload(
    relay: &Relay,
    path: Option<&Path>,
    started: &Config,
    running_sinks: &mut BTreeMap<String, SinkConfig>,
) -> Result<Plan, AppError> {
    let loaded = crate::load(path)?;
    // `[delivery]` keeps its running value: the windows must fit the running de-duplication.
    loaded
        .config
        .check_replay_windows(started.delivery.dedup_window_secs)?;
    let plan = Plan::resolve_front(loaded)?;
    let new = &plan.config;
    // In confirm mode, sinks are rebuilt where their configuration changed; the spool's lanes
    // are per sink, so in spool mode they need a restart (their class is `Sinks`).
    let sinks = if started.delivery.mode != DeliveryMode::Spool && *running_sinks != new.sinks {
        Some(crate::sinks::for_reload(running_sinks, &relay.sinks(), &plan).await?)
    } else {
        None
    };
    // The sinks built for this reload: closed again if it is refused.
    let running = relay.sinks();
    let fresh: Vec<Arc<dyn Sink>> = sinks
        .iter()
        .flat_map(|s| s.values())
        .filter(|s| !running.values().any(|r| Arc::ptr_eq(r, s)))
        .cloned()
        .collect();
    let applied = sinks.is_some();
    match relay.reload(
        plan.endpoints.clone(),
        plan.routes.clone(),
        &plan.limits,
        sinks,
    ) {
        Ok(retired) => {
            if applied {
                *running_sinks = new.sinks.clone();
            }
            if let Some(retired) = retired {
                // `shutdown_timeout_ms` needs a restart: the running value.
                let within = started.server.shutdown_timeout_ms;
                tokio::spawn(cal_relay_accept::Acceptor::retire(retired, within));
            }
        }
        Err(e) => {
            for sink in fresh {
                sink.shutdown().await;
            }
            return Err(e.into());
        }
    }
    let restart = started.needs_restart(new);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these settings need a restart; their running values stay");
    }
    Ok(plan)
}

/// What a reloader watches and holds: the file, the signal, the running configuration.
pub struct Reloader {
    pub hangup: Option<Signal>,
    pub tls: Option<Arc<Tls>>,
    pub relay: Arc<Relay>,
    /// The `--config` path given, if any.
    pub path: Option<PathBuf>,
    /// Also reload when the file changes (`--watch-config`).
    pub watch: bool,
    pub started: Config,
    pub reloads: Reloads,
}

fn stamp(p: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// What the sources' secrets files hold now (their content, read as a plan reads it: a
/// mounted Secret is replaced through a symlink swap, which a modification time can miss).
fn secrets_files(config: &Config) -> Vec<Option<String>> {
    config
        .sources
        .iter()
        .filter_map(|s| s.secrets_file.as_deref())
        .map(|f| crate::secrets::read_file(f).ok())
        .collect()
}

impl Reloader {
    /// On SIGHUP: read the configuration again (see [`reload`]) and the TLS certificate and
    /// key (connections already open keep theirs). The handler is installed whatever the
    /// configuration, so a stray SIGHUP never kills the relay.
    pub async fn run(self) {
        let Some(mut hup) = self.hangup else {
            return;
        };
        // With --watch-config: the file the configuration came from, and how it looked.
        let watched = crate::config_path(self.path.as_deref()).filter(|_| self.watch);
        let mut last = watched.as_deref().map(stamp);
        let mut running_sinks = self.started.sinks.clone();
        let mut secrets = secrets_files(&self.started);
        let mut running = self.started.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let trigger = tokio::select! {
                signal = hup.recv() => match signal {
                    Some(()) => "SIGHUP",
                    None => break,
                },
                _ = tick.tick() => {
                    let now = watched.as_deref().map(stamp);
                    if now != last {
                        last = now;
                        "the configuration file changed"
                    } else {
                        let held = secrets_files(&running);
                        if held == secrets {
                            continue;
                        }
                        secrets = held;
                        "a secrets file changed"
                    }
                }
            };
            tracing::info!(trigger, "reloading the configuration");
            let path = self.path.as_deref();
            match reload(&self.relay, path, &self.started, &mut running_sinks).await {
                Ok(plan) => {
                    secrets = secrets_files(&plan.config);
                    running = plan.config.clone();
                    let hash = crate::render::hash(&plan);
                    self.reloads.total.with_label_values(&["ok"]).inc();
                    self.reloads.info.reset();
                    self.reloads.info.with_label_values(&[&hash]).set(1);
                    tracing::info!(trigger, %hash, "configuration reloaded");
                }
                Err(e) => {
                    self.reloads.total.with_label_values(&["error"]).inc();
                    tracing::error!(trigger, error = %e, "configuration refused; the running one stays");
                }
            }
            if let Some(t) = &self.tls {
                match t.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                    }
                }
            }
        }
    }
}
