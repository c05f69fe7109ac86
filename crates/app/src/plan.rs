//! A configuration resolved once into what the relay runs: sources with their secrets read,
//! routes parsed, request limits, the TLS pair loaded, every sink's settings checked. Both
//! `check-config` (which renders it) and `serve` (which starts it) go through [`Plan::resolve`],
//! so what is checked is what runs.

use std::sync::Arc;
use std::time::Duration;

use cal_relay_config::Config;
use cal_relay_core::RouteTable;
use cal_relay_server::{Endpoint, Limits, Relay, Tls};

use crate::AppError;

/// A configuration and everything read or parsed from it.
pub struct Plan {
    pub config: Config,
    /// The sources on their paths, each with its secrets (read from files and the environment
    /// here, once).
    pub endpoints: Vec<Endpoint>,
    pub routes: RouteTable,
    pub limits: Limits,
    /// The certificate and key, when `[server.tls]` is set.
    pub tls: Option<Arc<Tls>>,
}

impl Plan {
    /// Resolve `config`: every file it names is read and every setting the types could not
    /// check is checked, short of connecting to a broker.
    pub fn resolve(config: Config) -> Result<Plan, AppError> {
        let plan = Plan::resolve_front(config)?;
        if let Some(t) = &plan.config.server.tls {
            let tls = Tls::load(t).map_err(|e| AppError::setting("server.tls", e))?;
            return Ok(Plan {
                tls: Some(Arc::new(tls)),
                ..plan
            });
        }
        Ok(plan)
    }

    /// What a reload resolves: sources, routes, limits and sinks; not the TLS pair (a reload
    /// reads the running one again in place) nor the tracing settings (they need a restart).
    pub fn resolve_front(config: Config) -> Result<Plan, AppError> {
        let endpoints = config.endpoints()?;
        let routes = config.route_table()?;
        let limits = limits(&config)?;
        let sinks: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        Relay::check(endpoints.clone(), routes.clone(), &sinks, &limits)?;
        for (name, sink) in &config.sinks {
            crate::sinks::check(sink).map_err(|e| AppError::setting(format!("sinks.{name}"), e))?;
        }
        check_tracing(&config)?;
        Ok(Plan {
            config,
            endpoints,
            routes,
            limits,
            tls: None,
        })
    }
}

/// What a request may cost, from `config.server`.
fn limits(config: &Config) -> Result<Limits, AppError> {
    Ok(Limits {
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
        max_in_flight: config.server.max_in_flight,
        trusted_proxies: config
            .server
            .trusted_proxy_nets()
            .map_err(|e| AppError::setting("server.trusted_proxies", e))?,
    })
}

fn check_tracing(config: &Config) -> Result<(), AppError> {
    let t = &config.tracing;
    if let Some(endpoint) = &t.otlp_endpoint {
        cal_relay_telemetry::traces_url(endpoint)?;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(AppError::setting(
                "tracing.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        if t.queue_size == 0 {
            return Err(AppError::setting(
                "tracing.queue_size",
                "must be greater than 0",
            ));
        }
    }
    Ok(())
}
