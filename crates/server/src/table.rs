//! The configuration snapshot a request runs with: sources by path, routes, the sinks they
//! name, per-request limits. A reload builds a new one and swaps it in whole; a request takes
//! the one current when it starts and keeps it to its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cal_relay_accept::SinkSet;
use cal_relay_core::{RouteTable, Source};
use ipnet::IpNet;

use crate::metrics::Metrics;

/// A source mounted on a path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub path: String,
    pub source: Source,
    /// Client addresses allowed to deliver here; empty: any. Others get 403.
    pub allow_from: Vec<IpNet>,
}

/// What a request may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Deliveries handled at once; beyond it `503 overloaded`.
    pub max_in_flight: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// Why the relay cannot be assembled from its parts.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes[{route}] names sink {sink:?}, which is not configured")]
    UnknownSink { route: usize, sink: String },
    #[error("two sources share the path {0:?}")]
    DuplicatePath(String),
    #[error("source path {0:?} must start with '/' and not be /metrics, /healthz or /readyz")]
    BadPath(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("sinks: {0}")]
    Sinks(String),
}

/// What a configuration reload replaces: sources by path, routes, the sinks they name,
/// per-request limits. A request takes the table current when it starts and keeps it to its
/// end, so its routes always find their sinks (a sink a reload removed is closed only once no
/// table that names it is in use).
pub(crate) struct Table {
    pub(crate) sources: HashMap<String, Mounted>,
    pub(crate) routes: RouteTable,
    pub(crate) sinks: Arc<SinkSet>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_read_timeout: Duration,
    pub(crate) trusted_proxies: Vec<IpNet>,
}

/// A source on its path: who may deliver to it, and its series, resolved once per source.
pub(crate) struct Mounted {
    pub(crate) source: Source,
    pub(crate) allow_from: Vec<IpNet>,
    pub(crate) received: prometheus::IntCounter,
    pub(crate) retiring_secret: prometheus::IntCounter,
}

impl Table {
    pub(crate) fn build(
        endpoints: Vec<Endpoint>,
        routes: RouteTable,
        sinks: Arc<SinkSet>,
        sink_exists: &dyn Fn(&str) -> bool,
        limits: &Limits,
        metrics: &Metrics,
    ) -> Result<Table, BuildError> {
        for (i, route) in routes.routes().iter().enumerate() {
            if let Some(missing) = route.sinks.iter().find(|s| !sink_exists(s)) {
                return Err(BuildError::UnknownSink {
                    route: i,
                    sink: missing.clone(),
                });
            }
        }
        let mut sources = HashMap::new();
        for Endpoint {
            path,
            source,
            allow_from,
        } in endpoints
        {
            if !path.starts_with('/')
                || matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz")
            {
                return Err(BuildError::BadPath(path));
            }
            let name = [source.name.as_str()];
            let mounted = Mounted {
                received: metrics.received.with_label_values(&name),
                retiring_secret: metrics.retiring_secret.with_label_values(&name),
                source,
                allow_from,
            };
            if sources.insert(path.clone(), mounted).is_some() {
                return Err(BuildError::DuplicatePath(path));
            }
        }
        Ok(Table {
            sources,
            routes,
            sinks,
            max_body_bytes: limits.max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            trusted_proxies: limits.trusted_proxies.clone(),
        })
    }
}
