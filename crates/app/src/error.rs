//! The one error type of the app crate: what went wrong, naming the setting or file at fault.

/// Why a configuration could not be planned, started or reloaded, or a spool command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The file or the environment does not load (shape, unknown keys, pure checks).
    #[error("invalid configuration: {0}")]
    Load(cal_relay_config::ConfigError),
    /// A setting that loaded but cannot be used: `key: why`.
    #[error("{key}: {error}")]
    Setting { key: String, error: String },
    /// A file or directory the relay needs.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// Routes, sources or limits the front end refuses.
    #[error(transparent)]
    Front(#[from] cal_relay_server::BuildError),
    #[error(transparent)]
    Config(#[from] cal_relay_config::ConfigError),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Telemetry(#[from] cal_relay_telemetry::TelemetryError),
    #[error(transparent)]
    Schema(#[from] cal_relay_contract::SchemaError),
    #[error(transparent)]
    Spool(#[from] cal_relay_spool::SpoolError),
}

impl AppError {
    /// `key: error`, for a setting whose value cannot be used.
    pub fn setting(key: impl Into<String>, error: impl std::fmt::Display) -> AppError {
        AppError::Setting {
            key: key.into(),
            error: error.to_string(),
        }
    }

    pub fn io(what: impl Into<String>, error: std::io::Error) -> AppError {
        AppError::Io {
            what: what.into(),
            error,
        }
    }
}

impl From<std::fmt::Error> for AppError {
    fn from(e: std::fmt::Error) -> AppError {
        AppError::setting("output", e)
    }
}
