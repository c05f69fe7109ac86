//! Loading: the TOML file (or the built-in default), then the `CAL_RELAY_*` environment, into
//! a checked [`Config`]; a sink's table read into its kind's type on demand; the error text
//! that names each key as the user wrote it.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;

use crate::{invalid, untyped, Config, ConfigError, EMBEDDED_DEFAULT};

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
    /// The file (or built-in default) the configuration came from, before the environment.
    file: Figment,
    /// Keys (lower case, `.`-separated) only the environment sets and no key has.
    skip: BTreeSet<String>,
}

/// The one warning line about ignored variables, if any were ignored (names only).
pub fn env_warning(ignored: &[String]) -> Option<String> {
    (!ignored.is_empty()).then(|| {
        format!(
            "ignored environment variable(s) {} (no such configuration key)",
            ignored.join(", ")
        )
    })
}

impl Loaded {
    /// The one warning line about ignored variables, if any were ignored (names only).
    pub fn env_warning(&self) -> Option<String> {
        env_warning(&self.ignored_env)
    }

    /// `[sinks.NAME]` read into its kind's settings type `T` (its `type` key left out), with
    /// the errors and the environment handling of the whole configuration: an unknown key in
    /// the file is an error, one only the environment sets is ignored and returned by name.
    pub fn sink_settings<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<(T, Vec<String>), ConfigError> {
        let key = format!("sinks.{name}");
        let mut skip = self.skip.clone();
        let settings = extract_skipping(&self.file, &mut skip, |figment| {
            figment
                .extract_inner::<untyped::WithoutType<T>>(&key)
                .map(|w| w.0)
                .map_err(|e| Box::new(untyped::rooted(e, &key)))
        })?;
        let ignored = skip.difference(&self.skip).map(|k| env_name(k)).collect();
        Ok((settings, ignored))
    }
}

/// Extract with `extract`, dropping one by one the unknown keys only the environment sets
/// (recorded in `skip`); any other error (the file's own unknown keys included) stands.
fn extract_skipping<T>(
    file: &Figment,
    skip: &mut BTreeSet<String>,
    extract: impl Fn(&Figment) -> Result<T, Box<figment::Error>>,
) -> Result<T, ConfigError> {
    let env_keys: BTreeSet<String> = env_provider(&BTreeSet::new())
        .iter()
        .map(|(k, _)| k.as_str().to_ascii_lowercase())
        .collect();
    loop {
        match extract(&file.clone().merge(env_provider(skip))) {
            Ok(value) => return Ok(value),
            Err(e) => {
                let e = *e;
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
pub(crate) fn describe(error: figment::Error) -> String {
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
        let mut skip = BTreeSet::new();
        let config = extract_skipping(&file, &mut skip, |f| {
            f.extract::<Config>().map_err(Box::new)
        })?;
        config.validate()?;
        Ok(Loaded {
            config,
            ignored_env: skip.iter().map(|k| env_name(k)).collect(),
            file,
            skip,
        })
    }
}
