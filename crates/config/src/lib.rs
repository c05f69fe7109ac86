//! cal-relay's configuration: built-in defaults < TOML file < `CAL_RELAY_*` environment (`__`
//! for nesting), then validation into the parts the relay is built from. Errors name the
//! offending key as the user wrote it. `CAL_RELAY_CONFIG` is the file's path, never a key; other
//! variables with the prefix that name no key (Kubernetes service links, typos) are ignored with
//! a warning, while an unknown key in the file stays an error. This crate only reads and checks
//! (the file, the environment, secrets files): it must not connect to brokers, listen or log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cal_relay_core::{Freshness, Route, RouteTable, Source, Verifier};
use cal_relay_server::{Endpoint, ServerConfig};
use cal_relay_sink_amqp::AmqpSinkConfig;
use cal_relay_sink_file::FileSinkConfig;
use cal_relay_sink_kafka::KafkaSinkConfig;
use cal_relay_sink_nats::NatsSinkConfig;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The shipped example, used when no `--config` is given and `config/cal-relay.toml` is absent.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/cal-relay.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub schema: SchemaConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf). Off unless
/// `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `http://collector:4318` (`/v1/traces` is added to a URL without a path) or a full URL.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces recorded, 0 to 1; a delivery whose sender sampled it is recorded.
    pub sample_ratio: f64,
    /// Finished spans waiting for export at most; beyond, spans are dropped and counted.
    pub queue_size: usize,
    pub export_interval_ms: u64,
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "cal-relay".into(),
            sample_ratio: 1.0,
            queue_size: 4096,
            export_interval_ms: 1000,
            export_timeout_ms: 5000,
        }
    }
}

/// `[schema]`: drift detection against the published JSON Schemas.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaConfig {
    /// `off` (default) or `warn`: check each known trigger's body against its schema, count
    /// violations in `cal_relay_schema_violations_total{trigger}` and log the first failing
    /// path. Never rejects a delivery.
    pub check: SchemaCheck,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaCheck {
    #[default]
    Off,
    Warn,
}

/// When a delivery counts as accepted (`delivery.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// 2xx once every target sink confirmed, 503 otherwise.
    Confirm,
    /// 2xx once fsync'd to the local log, forwarded later.
    Spool,
}

impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryMode::Confirm => "confirm",
            DeliveryMode::Spool => "spool",
        })
    }
}

/// `[delivery]`: when a delivery counts as accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `spool`: 2xx once fsync'd to the local log, forwarded later. `confirm`: 2xx once every
    /// target sink confirmed, 503 otherwise. Without a `[delivery]` section: `confirm`.
    pub mode: DeliveryMode,
    /// Directory of the spool's log, dead letters and inbox.
    pub dir: PathBuf,
    /// Bound of the log on disk; when reached, new deliveries are published directly (503 if
    /// the sinks are down).
    pub max_bytes: u64,
    /// fsync before answering (turn off only for throwaway benchmarks).
    pub fsync: bool,
    /// Attempts before a message a broker refuses permanently becomes a dead letter.
    pub max_attempts: u32,
    /// A delivery still failing this long after it was received becomes a dead letter
    /// (reason `expired`), transient failures included; 0: retried without limit.
    pub max_age_secs: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Deliveries in flight per sink (different keys); one key is always one at a time.
    pub lanes: usize,
    /// Repeats of a delivery id within this window get 2xx and are not published again.
    pub dedup_window_secs: u64,
    /// Ids remembered at most (about 60 bytes each); the oldest are forgotten first.
    pub dedup_max_entries: usize,
    /// File that keeps the de-duplication window across restarts (so a replay after a restart
    /// is still answered as a duplicate). Default: `dedup.ids` in `dir`, in both modes.
    pub dedup_file: Option<PathBuf>,
}

impl DeliveryConfig {
    /// Where the de-duplication ids are kept, if anywhere.
    pub fn dedup_path(&self) -> Option<PathBuf> {
        if self.dedup_window_secs == 0 {
            return None;
        }
        Some(
            self.dedup_file
                .clone()
                .unwrap_or_else(|| self.dir.join("dedup.ids")),
        )
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Confirm,
            dir: PathBuf::from("data/spool"),
            max_bytes: 256 * 1024 * 1024,
            fsync: true,
            max_attempts: 5,
            max_age_secs: 3 * 24 * 3600,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            lanes: 64,
            dedup_window_secs: 24 * 3600,
            dedup_max_entries: 200_000,
            dedup_file: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `cal_relay=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// `[[sources]]`: one webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// File with one secret per line (blank lines and `#` comments skipped).
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Name of an environment variable holding comma-separated secrets, read verbatim.
    #[serde(default)]
    pub secrets_env: Option<String>,
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(default)]
    pub template_destination: Option<String>,
    /// Client addresses (CIDRs) allowed to deliver to this source; empty: any (403 otherwise).
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Replay protection: a delivery sent more than this many seconds ago is refused with 401
    /// `stale_delivery` (an envelope's send time is its `createdAt`, more than 5 minutes in the
    /// future is refused too; a scheduled meeting's is its `startTime` / `endTime`); 0 turns
    /// every freshness check off.
    #[serde(default = "default_replay_window")]
    pub replay_window_secs: u64,
    /// How much later still a scheduled delivery may come, on top of `replay_window_secs`:
    /// MEETING_STARTED / MEETING_ENDED past their start / end, FORM_SUBMITTED_NO_EVENT past its
    /// `createdAt` (sent about 15 minutes after the submission by a cron that can run late).
    #[serde(default = "default_scheduled_allowance")]
    pub scheduled_allowance_secs: u64,
    /// CloudEvents `source` of this endpoint's messages (for sinks with `cloudevents` on).
    #[serde(default = "default_event_source")]
    pub event_source: String,
    /// CloudEvents `type` of its template bodies.
    #[serde(default = "default_template_event_type")]
    pub template_event_type: String,
}

fn default_event_source() -> String {
    cal_relay_core::DEFAULT_EVENT_SOURCE.to_owned()
}

fn default_template_event_type() -> String {
    cal_relay_core::DEFAULT_TEMPLATE_EVENT_TYPE.to_owned()
}

/// One hour: Cal.com retries a queued delivery within minutes, keeping its `createdAt`, and
/// clocks drift by seconds; a captured delivery is useless to a replayer after an hour, and the
/// default de-duplication window (24 h) covers the hour many times over.
pub const DEFAULT_REPLAY_WINDOW_SECS: u64 = 3600;

fn default_replay_window() -> u64 {
    DEFAULT_REPLAY_WINDOW_SECS
}

/// Six hours: Cal.com's task cron runs every minute; this covers a cron (or a Cal.com) that was
/// down for hours, and, with the hour of the replay window, stays well inside the default
/// de-duplication window (24 h), which must cover it.
pub const DEFAULT_SCHEDULED_ALLOWANCE_SECS: u64 = 6 * 3600;

fn default_scheduled_allowance() -> u64 {
    DEFAULT_SCHEDULED_ALLOWANCE_SECS
}

impl SourceConfig {
    /// The replay rule of this source; `None` when `replay_window_secs` is 0.
    pub fn freshness(&self) -> Option<Freshness> {
        (self.replay_window_secs > 0).then(|| Freshness {
            window: std::time::Duration::from_secs(self.replay_window_secs),
            scheduled_allowance: std::time::Duration::from_secs(self.scheduled_allowance_secs),
        })
    }
}

/// Smallest `delivery.max_bytes`: four of the spool's smallest segments.
pub const MIN_SPOOL_BYTES: u64 = 4 * 64 * 1024;

/// Upper bound of `server.max_connections` and `server.max_in_flight`.
pub const MAX_CONCURRENCY: usize = 1 << 20;

/// `[sinks.NAME]`, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Nats(Box<NatsSinkConfig>),
    Amqp(Box<AmqpSinkConfig>),
    Kafka(Box<KafkaSinkConfig>),
}

impl SinkConfig {
    /// Whether this sink publishes CloudEvents (so messages need their attributes).
    pub fn renders_cloudevents(&self) -> bool {
        use cal_relay_sink::cloudevents::Mode;
        match self {
            SinkConfig::File(_) => false,
            SinkConfig::Nats(c) => c.cloudevents != Mode::Off,
            SinkConfig::Amqp(c) => c.cloudevents != Mode::Off,
            SinkConfig::Kafka(c) => c.cloudevents != Mode::Off,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Amqp(_) => "amqp",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// What `check-config` prints about the sink (never credentials).
    pub fn describe(&self) -> String {
        match self {
            SinkConfig::File(c) => format!("path={}", c.path),
            SinkConfig::Nats(c) => c.describe(),
            SinkConfig::Amqp(c) => c.describe(),
            SinkConfig::Kafka(c) => c.describe(),
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub triggers: Vec<String>,
    pub sinks: Vec<String>,
    #[serde(default)]
    pub destination: Option<String>,
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment does not fit the configuration's shape: one line per error,
    /// each naming the key as the user wrote it and where it came from.
    #[error("{0}")]
    Load(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Prefix of the environment variables that override configuration keys (`__` for nesting).
pub const ENV_PREFIX: &str = "CAL_RELAY_";

/// `CAL_RELAY_*` variables that are not configuration keys and are read elsewhere: the file's
/// path, and the secret of `cal-relay send`. Never merged, never warned about.
const ENV_NOT_KEYS: [&str; 2] = ["config", "send_secret"];

/// A loaded configuration and the environment variables that were ignored because they name
/// no configuration key (Kubernetes service links such as `CAL_RELAY_SERVICE_HOST`, typos).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Variable names, as set in the environment; their values are never kept.
    pub ignored_env: Vec<String>,
}

impl Loaded {
    /// The one warning line about ignored variables, if any were ignored (names only).
    pub fn env_warning(&self) -> Option<String> {
        (!self.ignored_env.is_empty()).then(|| {
            format!(
                "ignored environment variable(s) {} (no such configuration key)",
                self.ignored_env.join(", ")
            )
        })
    }
}

/// The environment provider: `CAL_RELAY_A__B` sets `a.b`, except the variables in `skip`
/// (keys with `.` separators, lower case) and those that are not configuration keys.
fn env_provider(skip: &BTreeSet<String>) -> Env {
    let skip = skip.clone();
    Env::prefixed(ENV_PREFIX).split("__").filter(move |k| {
        let k = k.as_str().to_ascii_lowercase();
        !skip.contains(&k) && !ENV_NOT_KEYS.contains(&k.as_str())
    })
}

/// The variable that sets `key` (`server.max_body_bytes` -> `CAL_RELAY_SERVER__MAX_BODY_BYTES`),
/// spelled as it is in the environment.
fn env_name(key: &str) -> String {
    let wanted = format!("{ENV_PREFIX}{}", key.replace('.', "__"));
    std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .find(|k| k.trim().eq_ignore_ascii_case(&wanted))
        .unwrap_or_else(|| wanted.to_ascii_uppercase())
}

/// The key an unknown-field error is about, as the user would write it (`server.listen_on`).
fn unknown_key(e: &figment::Error) -> Option<String> {
    let figment::error::Kind::UnknownField(field, _) = &e.kind else {
        return None;
    };
    let mut path = e.path.clone();
    if path.last() != Some(field) {
        path.push(field.clone());
    }
    Some(path.join("."))
}

/// One line per error: the key as written (no profile prefix), what is wrong, and where.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let mut line = String::new();
            let key = unknown_key(&e).unwrap_or_else(|| e.path.join("."));
            if !key.is_empty() {
                line.push_str(&key);
                line.push_str(": ");
            }
            match &e.kind {
                figment::error::Kind::UnknownField(_, allowed) => {
                    line.push_str("unknown key");
                    if !allowed.is_empty() {
                        line.push_str(&format!(" (allowed: {})", allowed.join(", ")));
                    }
                }
                kind => line.push_str(&kind.to_string()),
            }
            if let Some(md) = &e.metadata {
                match &md.source {
                    Some(figment::Source::File(path)) => {
                        line.push_str(&format!(" in {}", path.display()))
                    }
                    _ if md.name.contains("environment") => {
                        line.push_str(&format!(" in the environment ({})", env_name(&key)))
                    }
                    _ if md.name.contains("TOML") => {
                        line.push_str(" in the built-in default configuration")
                    }
                    _ => line.push_str(&format!(" in {}", md.name)),
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Load from `path` (or the embedded default when `path` is `None`), then the environment.
    /// An unknown key in the file is an error (a typo); an environment variable that names no
    /// key is ignored and reported in [`Loaded::ignored_env`].
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let file = match path {
            Some(p) => {
                if !p.is_file() {
                    return Err(invalid(
                        "--config",
                        format!("{} is not a file", p.display()),
                    ));
                }
                Figment::new().merge(Toml::file_exact(p))
            }
            None => Figment::new().merge(Toml::string(EMBEDDED_DEFAULT)),
        };
        Self::load_figment(file)
    }

    /// Load from TOML text, then the environment, exactly as [`Config::load`] loads a file.
    pub fn from_toml(text: &str) -> Result<Loaded, ConfigError> {
        Self::load_figment(Figment::new().merge(Toml::string(text)))
    }

    fn load_figment(file: Figment) -> Result<Loaded, ConfigError> {
        let env_keys: BTreeSet<String> = env_provider(&BTreeSet::new())
            .iter()
            .map(|(k, _)| k.as_str().to_ascii_lowercase())
            .collect();
        let mut skip = BTreeSet::new();
        let config: Config = loop {
            match file.clone().merge(env_provider(&skip)).extract::<Config>() {
                Ok(c) => break c,
                Err(e) => {
                    // Unknown keys that only the environment sets are dropped one by one; any
                    // other error (the file's own unknown keys included) stands.
                    let culprit = e
                        .clone()
                        .into_iter()
                        .filter_map(|e| unknown_key(&e))
                        .map(|k| k.to_ascii_lowercase())
                        .find(|k| env_keys.contains(k) && !skip.contains(k));
                    match culprit {
                        Some(k) => {
                            skip.insert(k);
                        }
                        None => return Err(ConfigError::Load(describe(e))),
                    }
                }
            }
        };
        config.validate()?;
        Ok(Loaded {
            config,
            ignored_env: skip.iter().map(|k| env_name(k)).collect(),
        })
    }

    /// Checks beyond the types: names, references, secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        let srv = &self.server;
        if srv.max_header_bytes < cal_relay_server::MIN_HEADER_BYTES {
            return Err(invalid(
                "server.max_header_bytes",
                format!("must be at least {}", cal_relay_server::MIN_HEADER_BYTES),
            ));
        }
        for (key, value) in [
            ("server.max_connections", srv.max_connections),
            ("server.max_in_flight", srv.max_in_flight),
            ("server.max_headers", srv.max_headers),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        // Each is a semaphore's permit count (tokio takes at most 2^61 - 1); a million is far
        // beyond what a process's file descriptors or memory allow anyway.
        for (key, value) in [
            ("server.max_connections", srv.max_connections),
            ("server.max_in_flight", srv.max_in_flight),
        ] {
            if value > MAX_CONCURRENCY {
                return Err(invalid(key, format!("must be at most {MAX_CONCURRENCY}")));
            }
        }
        if srv.listen_backlog == 0 {
            return Err(invalid("server.listen_backlog", "must be at least 1"));
        }
        srv.trusted_proxy_nets()
            .map_err(|e| invalid("server.trusted_proxies", e))?;
        if let Some(tls) = &srv.tls {
            cal_relay_server::Tls::load(tls).map_err(|e| invalid("server.tls", e.to_string()))?;
        }
        let d = &self.delivery;
        if d.mode == DeliveryMode::Spool
            && self.server.max_body_bytes > cal_relay_spool::record::MAX_BODY_BYTES
        {
            return Err(invalid(
                "server.max_body_bytes",
                format!(
                    "at most {} in spool mode (a spool record holds one delivery)",
                    cal_relay_spool::record::MAX_BODY_BYTES
                ),
            ));
        }
        if d.max_bytes < MIN_SPOOL_BYTES {
            return Err(invalid(
                "delivery.max_bytes",
                format!("must be at least {MIN_SPOOL_BYTES}: segments are at least 64 KiB, and compaction behind a stuck entry needs room for three of them and one more to write to"),
            ));
        }
        if d.max_attempts == 0 || d.lanes == 0 || d.lanes > 4096 {
            return Err(invalid(
                "delivery",
                "max_attempts must be at least 1 and lanes between 1 and 4096",
            ));
        }
        if d.retry_initial_ms == 0 || d.retry_max_ms < d.retry_initial_ms {
            return Err(invalid(
                "delivery.retry_max_ms",
                "retry_initial_ms must be > 0 and retry_max_ms >= retry_initial_ms",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        if self.sources.is_empty() {
            return Err(invalid("sources", "at least one [[sources]] is needed"));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(invalid(format!("sources[{i}].name"), "must not be empty"));
            }
            if s.template_destination
                .as_deref()
                .is_some_and(|d| d.trim().is_empty())
            {
                return Err(invalid(
                    format!("sources[{i}].template_destination"),
                    "must not be empty",
                ));
            }
            cal_relay_server::parse_nets(&s.allow_from)
                .map_err(|e| invalid(format!("sources[{i}].allow_from"), e))?;
            let secrets = self.secrets_of(i)?;
            if secrets.is_empty() && !s.allow_unsigned {
                return Err(invalid(
                    format!("sources[{i}].secrets"),
                    "no secret configured: set secrets, secrets_file or secrets_env, or allow_unsigned = true",
                ));
            }
        }
        self.check_replay_windows(d.dedup_window_secs)?;
        if self.sinks.is_empty() {
            return Err(invalid("sinks", "at least one [sinks.NAME] is needed"));
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one [[routes]] is needed"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            for s in &r.sinks {
                if !self.sinks.contains_key(s) {
                    return Err(invalid(
                        format!("routes[{i}].sinks"),
                        format!(
                            "no sink named {s:?} (configured: {:?})",
                            self.sinks.keys().collect::<Vec<_>>()
                        ),
                    ));
                }
            }
        }
        self.route_table()?;
        Ok(())
    }

    /// Every source's longest replay window fits in a de-duplication window of
    /// `dedup_window_secs` (this file's own, or on a reload the running one, which a reload
    /// does not change), so a replay inside a window is still remembered.
    pub fn check_replay_windows(&self, dedup_window_secs: u64) -> Result<(), ConfigError> {
        for (i, s) in self.sources.iter().enumerate() {
            let Some(f) = s.freshness() else {
                continue;
            };
            let longest = f.longest().as_secs();
            if longest > dedup_window_secs {
                return Err(invalid(
                    format!("sources[{i}].replay_window_secs"),
                    format!(
                        "replay_window_secs + scheduled_allowance_secs ({} + {} = {longest} s) is longer than the de-duplication window (delivery.dedup_window_secs, {dedup_window_secs} s running): a replay inside the window would be published again",
                        s.replay_window_secs, s.scheduled_allowance_secs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every secret of source `i`: inline, from its file, from its environment variable.
    pub fn secrets_of(&self, i: usize) -> Result<Vec<String>, ConfigError> {
        let s = &self.sources[i];
        let mut secrets: Vec<String> = s
            .secrets
            .iter()
            .filter(|x| !x.is_empty())
            .cloned()
            .collect();
        if let Some(file) = &s.secrets_file {
            let text = read_secrets_file(file).map_err(|e| {
                invalid(
                    format!("sources[{i}].secrets_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            secrets.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if let Some(var) = &s.secrets_env {
            let value = std::env::var(var).map_err(|_| {
                invalid(
                    format!("sources[{i}].secrets_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            secrets.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned),
            );
        }
        Ok(secrets)
    }

    /// The sources, mounted on their paths.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, ConfigError> {
        (0..self.sources.len())
            .map(|i| {
                let s = &self.sources[i];
                let secrets = self.secrets_of(i)?;
                Ok(Endpoint {
                    allow_from: cal_relay_server::parse_nets(&s.allow_from)
                        .map_err(|e| invalid(format!("sources[{i}].allow_from"), e))?,
                    path: s.path.clone(),
                    source: Source {
                        freshness: s.freshness(),
                        name: s.name.clone(),
                        verifier: Verifier::new(&secrets, s.allow_unsigned),
                        template_destination: s.template_destination.clone(),
                        event_source: s.event_source.clone(),
                        template_event_type: s.template_event_type.clone(),
                        cloudevents: self.delivery.mode == DeliveryMode::Spool
                            || self.sinks.values().any(SinkConfig::renders_cloudevents),
                    },
                })
            })
            .collect()
    }

    pub fn route_table(&self) -> Result<RouteTable, ConfigError> {
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Route::new(i, &r.triggers, r.sinks.clone(), r.destination.clone())
                    .map_err(|e| invalid(format!("routes[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteTable::new(routes))
    }
}

/// Largest secrets file read (a few secrets fit in far less; a path to a device or a huge file
/// is refused instead of read without end).
pub const MAX_SECRETS_FILE_BYTES: u64 = 64 * 1024;

fn read_secrets_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SECRETS_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRETS_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRETS_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Load(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    const MINIMAL: &str = r#"
        [[sources]]
        name = "cal"
        path = "/webhooks/cal"
        secrets = ["s"]
        [sinks.local]
        type = "file"
        path = "-"
        [[routes]]
        triggers = ["*"]
        sinks = ["local"]
    "#;

    #[test]
    fn embedded_default_is_valid() {
        parse(EMBEDDED_DEFAULT).unwrap();
    }

    #[test]
    fn minimal_uses_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 1 << 20);
    }

    #[test]
    fn errors_name_the_key() {
        let no_secret = MINIMAL.replace("secrets = [\"s\"]", "");
        let e = parse(&no_secret).unwrap_err().to_string();
        assert!(e.starts_with("sources[0].secrets"), "{e}");

        let bad_sink = MINIMAL.replace("sinks = [\"local\"]", "sinks = [\"kafka\"]");
        let e = parse(&bad_sink).unwrap_err().to_string();
        assert!(e.starts_with("routes[0].sinks"), "{e}");

        let bad_type = format!("{MINIMAL}\n[server]\nmax_body_bytes = \"big\"");
        let e = parse(&bad_type).unwrap_err().to_string();
        assert!(e.contains("max_body_bytes"), "{e}");

        let unknown = format!("{MINIMAL}\n[server]\nlisten_on = \"x\"");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
    }

    #[test]
    fn secrets_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "# rotated 2026\n0123\n\nold\n").unwrap();
        let toml = MINIMAL.replace(
            "secrets = [\"s\"]",
            &format!("secrets_file = {:?}", file.display().to_string()),
        );
        let c = parse(&toml).unwrap();
        assert_eq!(c.secrets_of(0).unwrap(), ["0123", "old"]);
    }
}
