//! The sink kinds the relay knows (one registration line each), and the sink set it runs:
//! built at start-up, and on a reload in confirm mode rebuilt only where a sink's settings
//! changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cal_relay_config::{invalid, ConfigError, Loaded, SinkConfig};
use cal_relay_sink::{Sink, SinkSettings};
use serde::de::DeserializeOwned;

use crate::plan::Plan;
use crate::AppError;

/// A sink's settings read as kind `T`, with the environment variables ignored in its table.
type Read = (Arc<dyn SinkSettings>, Vec<String>);

fn typed<T: SinkSettings + DeserializeOwned>(
    loaded: &Loaded,
    name: &str,
) -> Result<Read, ConfigError> {
    let (settings, ignored) = loaded.sink_settings::<T>(name)?;
    Ok((Arc::new(settings), ignored))
}

/// How a kind reads `[sinks.NAME]`.
type Reader = fn(&Loaded, &str) -> Result<Read, ConfigError>;

/// Every sink kind there is, by its `type`: adding a kind adds its crate and a line here.
const KINDS: &[(&str, Reader)] = &[
    ("file", typed::<cal_relay_sink_file::FileSinkConfig>),
    ("nats", typed::<cal_relay_sink_nats::NatsSinkConfig>),
    ("amqp", typed::<cal_relay_sink_amqp::AmqpSinkConfig>),
    ("kafka", typed::<cal_relay_sink_kafka::KafkaSinkConfig>),
];

/// `[sinks.NAME]` read as the kind its `type` names.
pub fn read(loaded: &Loaded, name: &str, kind: &str) -> Result<Read, AppError> {
    let Some((_, read)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<String> = KINDS.iter().map(|(k, _)| format!("`{k}`")).collect();
        return Err(AppError::Load(invalid(
            format!("sinks.{name}.type"),
            format!(
                "unknown variant `{kind}`, expected one of {}",
                known.join(", ")
            ),
        )));
    };
    read(loaded, name).map_err(AppError::Load)
}

/// Build one sink (it connects in the background; [`Sink::ready`] says when it can publish).
pub async fn build(name: &str, settings: &dyn SinkSettings) -> Result<Arc<dyn Sink>, AppError> {
    settings
        .build()
        .await
        .map_err(|e| AppError::setting(format!("sinks.{name}"), e))
}

/// Every sink of the plan, by name.
pub async fn build_all(plan: &Plan) -> Result<BTreeMap<String, Arc<dyn Sink>>, AppError> {
    let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
    for (name, settings) in &plan.sinks {
        sinks.insert(name.clone(), build(name, settings.as_ref()).await?);
    }
    Ok(sinks)
}

/// How long a sink added or changed by a reload may take to become ready before the reload is
/// refused.
const RELOAD_SINK_READY: Duration = Duration::from_secs(10);

/// The sinks a reload runs (confirm mode): the running ones whose configuration did not
/// change, and new ones built for the rest, each ready before it is returned. On failure the
/// new ones are closed and nothing changes.
pub async fn for_reload(
    running_config: &BTreeMap<String, SinkConfig>,
    running: &cal_relay_accept::Sinks,
    new: &Plan,
) -> Result<cal_relay_accept::Sinks, AppError> {
    let mut sinks = cal_relay_accept::Sinks::new();
    let mut built: Vec<Arc<dyn Sink>> = Vec::new();
    let result = async {
        for (name, settings) in &new.sinks {
            let unchanged = running_config.get(name) == new.config.sinks.get(name);
            if let (true, Some(sink)) = (unchanged, running.get(name)) {
                sinks.insert(name.clone(), sink.clone());
                continue;
            }
            let sink = build(name, settings.as_ref()).await?;
            built.push(sink.clone());
            let deadline = tokio::time::Instant::now() + RELOAD_SINK_READY;
            while !sink.ready() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(AppError::setting(
                        format!("sinks.{name}"),
                        format!("not ready within {} s", RELOAD_SINK_READY.as_secs()),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!(sink = %name, kind = sink.kind(), "reload: sink connected and ready");
            sinks.insert(name.clone(), sink);
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(sinks),
        Err(e) => {
            for sink in built {
                sink.shutdown().await;
            }
            Err(e)
        }
    }
}
