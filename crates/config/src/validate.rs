//! The checks beyond the types that plain data allows: addresses, bounds, names, references.
//! Every error found is reported, each naming its key. What needs a file, the environment or
//! a parser of another crate (secrets, TLS, networks, route patterns, a sink's own settings)
//! is checked where the configuration is resolved into a plan.

use std::time::Duration;

use crate::{invalid, Config, ConfigError, DeliveryMode};

/// Smallest `delivery.max_bytes`: four of the spool's smallest segments.
pub const MIN_SPOOL_BYTES: u64 = 4 * 64 * 1024;

/// Upper bound of `server.max_connections` and `server.max_in_flight`.
pub const MAX_CONCURRENCY: usize = 1 << 20;

/// Largest body a spool record holds (the spool's own bound, which the app checks is this).
pub const SPOOL_MAX_BODY_BYTES: usize = 64 * 1024 * 1024 - 256 * 1024;

impl Config {
    /// Checks beyond the types: every error found, one per line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.check_server(&mut errors);
        self.check_delivery(&mut errors);
        self.check_sources(&mut errors);
        if let Err(e) = self.check_replay_windows(self.delivery.dedup_window_secs) {
            errors.push(e);
        }
        self.check_routes(&mut errors);
        ConfigError::from_all(errors)
    }

    fn check_server(&self, errors: &mut Vec<ConfigError>) {
        let srv = &self.server;
        if srv.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", srv.listen),
            ));
        }
        if srv.max_body_bytes == 0 {
            errors.push(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        if srv.max_header_bytes < crate::MIN_HEADER_BYTES {
            errors.push(invalid(
                "server.max_header_bytes",
                format!("must be at least {}", crate::MIN_HEADER_BYTES),
            ));
        }
        for (key, value) in [
            ("server.max_connections", srv.max_connections),
            ("server.max_in_flight", srv.max_in_flight),
            ("server.max_headers", srv.max_headers),
        ] {
            if value == 0 {
                errors.push(invalid(key, "must be at least 1"));
            }
        }
        // Each is a semaphore's permit count (tokio takes at most 2^61 - 1); a million is far
        // beyond what a process's file descriptors or memory allow anyway.
        for (key, value) in [
            ("server.max_connections", srv.max_connections),
            ("server.max_in_flight", srv.max_in_flight),
        ] {
            if value > MAX_CONCURRENCY {
                errors.push(invalid(key, format!("must be at most {MAX_CONCURRENCY}")));
            }
        }
        if srv.listen_backlog == 0 {
            errors.push(invalid("server.listen_backlog", "must be at least 1"));
        }
    }

    fn check_delivery(&self, errors: &mut Vec<ConfigError>) {
        let d = &self.delivery;
        if d.mode == DeliveryMode::Spool && self.server.max_body_bytes > SPOOL_MAX_BODY_BYTES {
            errors.push(invalid(
                "server.max_body_bytes",
                format!(
                    "at most {SPOOL_MAX_BODY_BYTES} in spool mode (a spool record holds one delivery)"
                ),
            ));
        }
        if d.max_bytes < MIN_SPOOL_BYTES {
            errors.push(invalid(
                "delivery.max_bytes",
                format!("must be at least {MIN_SPOOL_BYTES}: segments are at least 64 KiB, and compaction behind a stuck entry needs room for three of them and one more to write to"),
            ));
        }
        if d.max_attempts == 0 || d.lanes == 0 || d.lanes > 4096 {
            errors.push(invalid(
                "delivery",
                "max_attempts must be at least 1 and lanes between 1 and 4096",
            ));
        }
        if d.retry_initial_ms.is_zero() || d.retry_max_ms < d.retry_initial_ms {
            errors.push(invalid(
                "delivery.retry_max_ms",
                "retry_initial_ms must be > 0 and retry_max_ms >= retry_initial_ms",
            ));
        }
    }

    fn check_sources(&self, errors: &mut Vec<ConfigError>) {
        if self.sources.is_empty() {
            errors.push(invalid("sources", "at least one [[sources]] is needed"));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.trim().is_empty() {
                errors.push(invalid(format!("sources[{i}].name"), "must not be empty"));
            }
            if s.template_destination
                .as_deref()
                .is_some_and(|d| d.trim().is_empty())
            {
                errors.push(invalid(
                    format!("sources[{i}].template_destination"),
                    "must not be empty",
                ));
            }
            let inline = s.secrets.iter().any(|x| !x.is_empty());
            let elsewhere = s.secrets_file.is_some() || s.secrets_env.is_some();
            if !inline && !elsewhere && !s.allow_unsigned {
                errors.push(no_secret(i));
            }
        }
    }

    fn check_routes(&self, errors: &mut Vec<ConfigError>) {
        if self.sinks.is_empty() {
            errors.push(invalid("sinks", "at least one [sinks.NAME] is needed"));
        }
        if self.routes.is_empty() {
            errors.push(invalid("routes", "at least one [[routes]] is needed"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            for s in r.sinks.iter().filter(|s| !self.sinks.contains_key(*s)) {
                errors.push(invalid(
                    format!("routes[{i}].sinks"),
                    format!(
                        "no sink named {s:?} (configured: {:?})",
                        self.sinks.keys().collect::<Vec<_>>()
                    ),
                ));
            }
        }
    }

    /// Every source's longest replay window (`replay_window_secs + scheduled_allowance_secs`,
    /// when replays are checked at all) fits in a de-duplication window of `dedup_window_secs`
    /// (this file's own, or on a reload the running one, which a reload does not change), so a
    /// replay inside a window is still remembered.
    pub fn check_replay_windows(&self, dedup_window: Duration) -> Result<(), ConfigError> {
        let dedup_window_secs = dedup_window.as_secs();
        let mut errors = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.replay_window_secs.is_zero() {
                continue;
            }
            let (replay, allowance) = (
                s.replay_window_secs.as_secs(),
                s.scheduled_allowance_secs.as_secs(),
            );
            let longest = replay.saturating_add(allowance);
            if longest > dedup_window_secs {
                errors.push(invalid(
                    format!("sources[{i}].replay_window_secs"),
                    format!(
                        "replay_window_secs + scheduled_allowance_secs ({} + {} = {longest} s) is longer than the de-duplication window (delivery.dedup_window_secs, {dedup_window_secs} s running): a replay inside the window would be published again",
                        replay, allowance
                    ),
                ));
            }
        }
        ConfigError::from_all(errors)
    }
}

/// The error of a source with no secret and `allow_unsigned` off.
pub fn no_secret(i: usize) -> ConfigError {
    invalid(
        format!("sources[{i}].secrets"),
        "no secret configured: set secrets, secrets_file or secrets_env, or allow_unsigned = true",
    )
}
