//! Turns a configuration into a running relay, and changes it while it runs. A configuration
//! is resolved once into a [`Plan`] (secrets and TLS read, routes parsed, sinks checked);
//! `check-config` renders the plan, `serve` starts it, a [`reload::Reloader`] swaps in what a
//! new plan may change. It also holds the AsyncAPI mapping and the spool commands' output.
//! It must not hold relay logic: requests, the delivery policy, the spool and the sinks live
//! in their own crates, and the binary above it only parses the command line.

pub mod asyncapi;
mod error;
pub mod plan;
pub mod reload;
pub mod render;
pub mod rotate;
pub mod secrets;
pub mod serve;
pub mod sinks;
pub mod spool_cli;
pub mod subscribe;

use std::path::{Path, PathBuf};

pub use error::AppError;
pub use plan::Plan;

use cal_relay_config::{Config, Loaded};

/// Default configuration path, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/cal-relay.toml";

/// The file a configuration is read from: `path`, else `config/cal-relay.toml` when it exists
/// (`None`: the built-in default).
pub fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    let default = Path::new(DEFAULT_CONFIG);
    path.map(Path::to_path_buf)
        .or_else(|| default.is_file().then(|| default.to_path_buf()))
}

/// The configuration from `path`, else `config/cal-relay.toml`, else the built-in default.
pub fn load(path: Option<&Path>) -> Result<Loaded, AppError> {
    Config::load(config_path(path).as_deref()).map_err(AppError::Load)
}

/// Logs to standard error as `[log]` says (`RUST_LOG` wins when set).
pub fn init_logging(config: &Config) {
    cal_relay_telemetry::lines::set_per_sec(config.log.request_lines_per_sec);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal (not in a file or a container log), and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if config.log.format == cal_relay_config::LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
