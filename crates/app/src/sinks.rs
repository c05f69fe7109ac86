//! The sink kinds the relay knows, and the sink set it runs: built at start-up, and on a
//! reload in confirm mode rebuilt only where a sink's settings changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cal_relay_config::{Config, SinkConfig};
use cal_relay_sink::Sink;

use crate::AppError;

/// What building a sink checks, short of connecting.
pub fn check(sink: &SinkConfig) -> Result<(), String> {
    match sink {
        SinkConfig::File(_) => Ok(()),
        SinkConfig::Amqp(c) => c.check().map_err(|e| e.to_string()),
        SinkConfig::Kafka(c) => c.check().map_err(|e| e.to_string()),
        SinkConfig::Nats(c) => c.check().map_err(|e| e.to_string()),
    }
}

/// Build one sink (it connects in the background; [`Sink::ready`] says when it can publish).
pub async fn build(name: &str, sink: &SinkConfig) -> Result<Arc<dyn Sink>, AppError> {
    let key = || format!("sinks.{name}");
    Ok(match sink {
        SinkConfig::File(c) => Arc::new(c.build().map_err(|e| AppError::setting(key(), e))?),
        SinkConfig::Amqp(c) => Arc::new(c.build().map_err(|e| AppError::setting(key(), e))?),
        SinkConfig::Kafka(c) => Arc::new(c.build().map_err(|e| AppError::setting(key(), e))?),
        SinkConfig::Nats(c) => Arc::new(c.build().await.map_err(|e| AppError::setting(key(), e))?),
    })
}

/// Every sink of `config`, by name.
pub async fn build_all(config: &Config) -> Result<BTreeMap<String, Arc<dyn Sink>>, AppError> {
    let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
    for (name, sink) in &config.sinks {
        sinks.insert(name.clone(), build(name, sink).await?);
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
    new: &Config,
) -> Result<cal_relay_accept::Sinks, AppError> {
    let mut sinks = cal_relay_accept::Sinks::new();
    let mut built: Vec<Arc<dyn Sink>> = Vec::new();
    let result = async {
        for (name, config) in &new.sinks {
            let unchanged = running_config
                .get(name)
                .is_some_and(|c| !crate::reload::differs(c, config));
            if let (true, Some(sink)) = (unchanged, running.get(name)) {
                sinks.insert(name.clone(), sink.clone());
                continue;
            }
            let sink = build(name, config).await?;
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
