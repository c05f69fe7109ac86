//! A configuration resolved once into what the relay runs: sources with their secrets read,
//! routes parsed, request limits, the TLS pair loaded, every sink's settings read into its
//! kind's type and checked. Both `check-config` (which renders it) and `serve` (which starts
//! it) go through [`Plan::resolve`], so what is checked is what runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use cal_relay_config::{Config, DeliveryMode, Loaded, SourceConfig};
use cal_relay_core::{Freshness, Route, RouteTable, Source, Verifier};
use cal_relay_server::{parse_nets, Endpoint, Limits, Relay, Tls};
use cal_relay_sink::cloudevents::Mode;
use cal_relay_sink::SinkSettings;

use crate::AppError;

/// A configuration and everything read or parsed from it.
pub struct Plan {
    pub config: Config,
    /// Each sink's settings, read into its kind's type and checked.
    pub sinks: BTreeMap<String, Arc<dyn SinkSettings>>,
    /// The sources on their paths, each with its secrets (read here, once).
    pub endpoints: Vec<Endpoint>,
    pub routes: RouteTable,
    pub limits: Limits,
    /// The certificate and key, when `[server.tls]` is set (not read by a reload's plan).
    pub tls: Option<Arc<Tls>>,
    /// `CAL_RELAY_*` variables ignored because they name no key (names only).
    pub ignored_env: Vec<String>,
}

impl Plan {
    /// Resolve a loaded configuration: every file it names is read and every setting the
    /// configuration crate could not check is checked, short of connecting to a broker.
    pub fn resolve(loaded: Loaded) -> Result<Plan, AppError> {
        let mut plan = Plan::resolve_front(loaded)?;
        if let Some(t) = &plan.config.server.tls {
            let tls = Tls::load(t).map_err(|e| AppError::setting("server.tls", e))?;
            plan.tls = Some(Arc::new(tls));
        }
        Ok(plan)
    }

    /// What a reload resolves: everything but the TLS pair (a reload reads the running one
    /// again in place).
    pub fn resolve_front(loaded: Loaded) -> Result<Plan, AppError> {
        let mut ignored_env = loaded.ignored_env.clone();
        let mut sinks = BTreeMap::new();
        for (name, sink) in &loaded.config.sinks {
            let (settings, ignored) = crate::sinks::read(&loaded, name, &sink.kind)?;
            settings
                .check()
                .map_err(|e| AppError::setting(format!("sinks.{name}"), e))?;
            ignored_env.extend(ignored);
            sinks.insert(name.clone(), settings);
        }
        let config = loaded.config;
        let cloudevents = config.delivery.mode == DeliveryMode::Spool
            || sinks.values().any(|s| s.cloudevents() != Mode::Off);
        let endpoints = config
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| endpoint(s, i, cloudevents))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = route_table(&config)?;
        let limits = limits(&config)?;
        let names: Vec<&str> = sinks.keys().map(String::as_str).collect();
        Relay::check(endpoints.clone(), routes.clone(), &names, &limits)?;
        check_tracing(&config)?;
        Ok(Plan {
            config,
            sinks,
            endpoints,
            routes,
            limits,
            tls: None,
            ignored_env,
        })
    }

    /// The one warning line about ignored variables, if any were ignored.
    pub fn env_warning(&self) -> Option<String> {
        cal_relay_config::env_warning(&self.ignored_env)
    }
}

/// Source `i`, mounted on its path, with its secrets read.
fn endpoint(s: &SourceConfig, i: usize, cloudevents: bool) -> Result<Endpoint, AppError> {
    let secrets = crate::secrets::of(s, i)?;
    let current: Vec<&str> = secrets
        .iter()
        .filter(|s| s.retire_at.is_none())
        .map(|s| s.value.as_str())
        .collect();
    let verifier = secrets
        .iter()
        .filter_map(|s| Some((s.value.as_bytes(), s.retire_at?)))
        .fold(
            Verifier::new(&current, s.allow_unsigned),
            |v, (secret, at)| v.retiring(secret, at),
        );
    Ok(Endpoint {
        allow_from: parse_nets(&s.allow_from)
            .map_err(|e| AppError::setting(format!("sources[{i}].allow_from"), e))?,
        path: s.path.clone(),
        source: Source {
            freshness: freshness(s),
            name: s.name.clone(),
            verifier,
            template_destination: s.template_destination.clone(),
            event_source: s.event_source.clone(),
            template_event_type: s.template_event_type.clone(),
            cloudevents,
        },
    })
}

/// The replay rule of a source; `None` when `replay_window_secs` is 0.
pub fn freshness(s: &SourceConfig) -> Option<Freshness> {
    (!s.replay_window_secs.is_zero()).then_some(Freshness {
        window: s.replay_window_secs,
        scheduled_allowance: s.scheduled_allowance_secs,
    })
}

fn route_table(config: &Config) -> Result<RouteTable, AppError> {
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Route::new(i, &r.triggers, r.sinks.clone(), r.destination.clone()).map_err(|e| {
                AppError::from(cal_relay_config::invalid(
                    format!("routes[{i}]"),
                    e.to_string(),
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(RouteTable::new(routes))
}

/// What a request may cost, from `config.server`.
fn limits(config: &Config) -> Result<Limits, AppError> {
    Ok(Limits {
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout_ms,
        max_in_flight: config.server.max_in_flight,
        trusted_proxies: parse_nets(&config.server.trusted_proxies)
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

#[cfg(test)]
mod tests {
    const EVERY_KEY: &str = include_str!("../../config/testdata/every-key.toml");

    #[test]
    fn every_sink_kind_reads_its_table() {
        let loaded = cal_relay_config::Config::from_toml(EVERY_KEY).unwrap();
        for (name, sink) in &loaded.config.sinks {
            let (settings, ignored) = crate::sinks::read(&loaded, name, &sink.kind).unwrap();
            assert_eq!(settings.kind(), sink.kind);
            assert!(ignored.is_empty());
        }
        assert_eq!(loaded.config.sinks.len(), 4, "one table per kind");
    }

    #[test]
    fn a_sink_key_in_the_file_that_is_no_key_names_it() {
        let text = EVERY_KEY.replace("linger_ms = 3", "linger = 3");
        let loaded = cal_relay_config::Config::from_toml(&text).unwrap();
        let e = crate::sinks::read(&loaded, "kafka", "kafka").err().unwrap();
        let e = e.to_string();
        assert!(e.contains("sinks.kafka.linger: unknown key"), "{e}");
        let unknown = EVERY_KEY.replace("type = \"kafka\"", "type = \"kafak\"");
        let loaded = cal_relay_config::Config::from_toml(&unknown).unwrap();
        let e = crate::sinks::read(&loaded, "kafka", "kafak").err().unwrap();
        assert!(
            e.to_string()
                .contains("sinks.kafka.type: unknown variant `kafak`"),
            "{e}"
        );
    }

    #[test]
    fn the_configuration_crate_bounds_agree_with_the_crates_they_describe() {
        assert_eq!(
            cal_relay_config::SPOOL_MAX_BODY_BYTES,
            cal_relay_spool::record::MAX_BODY_BYTES
        );
        assert_eq!(
            cal_relay_config::DEFAULT_EVENT_SOURCE,
            cal_relay_core::DEFAULT_EVENT_SOURCE
        );
        assert_eq!(
            cal_relay_config::DEFAULT_TEMPLATE_EVENT_TYPE,
            cal_relay_core::DEFAULT_TEMPLATE_EVENT_TYPE
        );
        assert_eq!(
            cal_relay_config::DEFAULT_REQUEST_LINES_PER_SEC,
            cal_relay_telemetry::lines::DEFAULT_PER_SEC
        );
    }
}
