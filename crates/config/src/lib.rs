//! cal-relay's configuration: built-in defaults < TOML file < `CAL_RELAY_*` environment (`__`
//! for nesting), checked as far as plain data can be. Errors name the offending key as the
//! user wrote it. `CAL_RELAY_CONFIG` is the file's path, never a key; other variables with the
//! prefix that name no key (Kubernetes service links, typos) are ignored with a warning, while
//! an unknown key in the file stays an error. A sink's table is kept as data and read into its
//! kind's own settings type on demand ([`Loaded::sink_settings`]), so this crate knows no sink
//! kind. It is plain data and validation: it depends on no runtime crate (no server, spool,
//! sink or broker client), reads no file beyond the configuration itself, and must not
//! connect, listen or log.

mod duration;
mod load;
mod reload;
mod server;
mod untyped;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{env_warning, Loaded, ENV_PREFIX};
pub use reload::{class_of, CLASSES};
pub use reload::{Change, ReloadClass};
pub use server::{ServerConfig, TlsConfig, MIN_HEADER_BYTES};
pub use validate::{no_secret, MAX_CONCURRENCY, MIN_SPOOL_BYTES, SPOOL_MAX_BODY_BYTES};

/// The shipped example, used when no `--config` is given and `config/cal-relay.toml` is absent.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/cal-relay.toml");

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `http://collector:4318` (`/v1/traces` is added to a URL without a path) or a full URL.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces recorded, 0 to 1; a delivery whose sender sampled it is recorded.
    pub sample_ratio: f64,
    /// Finished spans waiting for export at most; beyond, spans are dropped and counted.
    pub queue_size: usize,
    #[serde(with = "crate::duration::millis")]
    pub export_interval_ms: Duration,
    #[serde(with = "crate::duration::millis")]
    pub export_timeout_ms: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "cal-relay".into(),
            sample_ratio: 1.0,
            queue_size: 4096,
            export_interval_ms: Duration::from_millis(1000),
            export_timeout_ms: Duration::from_millis(5000),
        }
    }
}

/// `[schema]`: drift detection against the published JSON Schemas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaConfig {
    /// `off` (default) or `warn`: check each known trigger's body against its schema, count
    /// violations in `cal_relay_schema_violations_total{trigger}` and log the first failing
    /// path. Never rejects a delivery.
    pub check: SchemaCheck,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaCheck {
    #[default]
    Off,
    Warn,
}

/// When a delivery counts as accepted (`delivery.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "crate::duration::secs")]
    pub max_age_secs: Duration,
    #[serde(with = "crate::duration::millis")]
    pub retry_initial_ms: Duration,
    #[serde(with = "crate::duration::millis")]
    pub retry_max_ms: Duration,
    /// Deliveries in flight per sink (different keys); one key is always one at a time.
    pub lanes: usize,
    /// Repeats of a delivery id within this window get 2xx and are not published again.
    #[serde(with = "crate::duration::secs")]
    pub dedup_window_secs: Duration,
    /// Ids remembered at most (about 60 bytes each); the oldest are forgotten first.
    pub dedup_max_entries: usize,
    /// File that keeps the de-duplication window across restarts (so a replay after a restart
    /// is still answered as a duplicate). Default: `dedup.ids` in `dir`, in both modes.
    pub dedup_file: Option<PathBuf>,
}

impl DeliveryConfig {
    /// Where the de-duplication ids are kept, if anywhere.
    pub fn dedup_path(&self) -> Option<PathBuf> {
        if self.dedup_window_secs.is_zero() {
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
            max_age_secs: Duration::from_secs(3 * 24 * 3600),
            retry_initial_ms: Duration::from_millis(100),
            retry_max_ms: Duration::from_millis(30_000),
            lanes: 64,
            dedup_window_secs: Duration::from_secs(24 * 3600),
            dedup_max_entries: 200_000,
            dedup_file: None,
        }
    }
}

/// `log.format`: how each log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `cal_relay=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// Per-request lines (`delivered`, `spooled`, `rejected`, ...) written at most per second;
    /// the rest are counted. 0: every line.
    pub request_lines_per_sec: u32,
}

/// The default of `log.request_lines_per_sec`.
pub const DEFAULT_REQUEST_LINES_PER_SEC: u32 = 20;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            request_lines_per_sec: DEFAULT_REQUEST_LINES_PER_SEC,
        }
    }
}

/// `[[sources]]`: one webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default = "default_replay_window", with = "crate::duration::secs")]
    pub replay_window_secs: Duration,
    /// How much later still a scheduled delivery may come, on top of `replay_window_secs`:
    /// MEETING_STARTED / MEETING_ENDED past their start / end, FORM_SUBMITTED_NO_EVENT past its
    /// `createdAt` (sent about 15 minutes after the submission by a cron that can run late).
    #[serde(
        default = "default_scheduled_allowance",
        with = "crate::duration::secs"
    )]
    pub scheduled_allowance_secs: Duration,
    /// CloudEvents `source` of this endpoint's messages (for sinks with `cloudevents` on).
    #[serde(default = "default_event_source")]
    pub event_source: String,
    /// CloudEvents `type` of its template bodies.
    #[serde(default = "default_template_event_type")]
    pub template_event_type: String,
}

/// CloudEvents `source` of a source's messages unless it sets `event_source`.
pub const DEFAULT_EVENT_SOURCE: &str = "https://cal.com";

/// CloudEvents `type` of template bodies unless a source sets `template_event_type`.
pub const DEFAULT_TEMPLATE_EVENT_TYPE: &str = "com.cal.template";

fn default_event_source() -> String {
    DEFAULT_EVENT_SOURCE.to_owned()
}

fn default_template_event_type() -> String {
    DEFAULT_TEMPLATE_EVENT_TYPE.to_owned()
}

/// One hour: Cal.com retries a queued delivery within minutes, keeping its `createdAt`, and
/// clocks drift by seconds; a captured delivery is useless to a replayer after an hour, and the
/// default de-duplication window (24 h) covers the hour many times over.
pub const DEFAULT_REPLAY_WINDOW_SECS: u64 = 3600;

fn default_replay_window() -> Duration {
    Duration::from_secs(DEFAULT_REPLAY_WINDOW_SECS)
}

/// Six hours: Cal.com's task cron runs every minute; this covers a cron (or a Cal.com) that was
/// down for hours, and, with the hour of the replay window, stays well inside the default
/// de-duplication window (24 h), which must cover it.
pub const DEFAULT_SCHEDULED_ALLOWANCE_SECS: u64 = 6 * 3600;

fn default_scheduled_allowance() -> Duration {
    Duration::from_secs(DEFAULT_SCHEDULED_ALLOWANCE_SECS)
}

/// `[sinks.NAME]`: its `type`, and the rest of its table as data; the kind's own settings
/// type reads it ([`Loaded::sink_settings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub settings: figment::value::Dict,
}

/// `[[routes]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Several of the above, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// `Ok` when `errors` is empty, the one error, or all of them.
    pub fn from_all(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }
}

pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Figment;

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Load(load::describe(e)))?;
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
}
