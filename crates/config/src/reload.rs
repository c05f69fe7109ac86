//! Which settings a reload applies in place and which need a restart, declared once, by key,
//! next to the types; and the changes between two configurations, key by key.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Config, DeliveryMode};

/// How a change to a setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadClass {
    /// Applied by a reload, to the next request.
    Reload,
    /// Kept at its running value until a restart.
    Restart,
    /// The sinks: rebuilt by a reload in confirm mode; in spool mode the lanes forward per
    /// sink, so a restart is needed.
    Sinks,
}

use ReloadClass::{Reload, Restart, Sinks};

/// Every key there is, by the longest prefix that names it. `tests::every_key_is_classified`
/// fails on a key of the configuration types that is not listed here.
pub const CLASSES: &[(&str, ReloadClass)] = &[
    ("server.listen", Restart),
    ("server.max_body_bytes", Reload),
    ("server.header_read_timeout_ms", Restart),
    ("server.body_read_timeout_ms", Reload),
    // The grace of a shutdown, and of a sink a reload retires: the running value.
    ("server.shutdown_timeout_ms", Restart),
    ("server.max_connections", Restart),
    ("server.max_in_flight", Restart),
    ("server.max_header_bytes", Restart),
    ("server.max_headers", Restart),
    ("server.listen_backlog", Restart),
    ("server.trusted_proxies", Reload),
    // The paths; the files themselves are read again on every reload.
    ("server.tls", Restart),
    ("log", Restart),
    ("sources", Reload),
    ("sinks", Sinks),
    ("routes", Reload),
    ("delivery", Restart),
    ("schema", Restart),
    ("tracing", Restart),
];

/// The class of `key` (`server.listen`, `sources.0.secrets`), by its longest listed prefix.
pub fn class_of(key: &str) -> Option<ReloadClass> {
    let prefix = listed_prefix(key)?;
    CLASSES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, class)| *class)
}

/// A setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The listed key it falls under (`server.listen`, `sources`).
    pub key: &'static str,
    pub class: ReloadClass,
}

/// Every leaf of `value` by its dotted key (array items by index).
pub(crate) fn leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(v, &join(k), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &join(&i.to_string()), out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn flat(config: &Config) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(value) = serde_json::to_value(config) {
        leaves(&value, "", &mut out);
    }
    out
}

impl Config {
    /// What differs from `self` in `new`, by listed key (each once, in the table's order).
    pub fn changes(&self, new: &Config) -> Vec<Change> {
        let (a, b) = (flat(self), flat(new));
        let differs = |prefix: &str| {
            let under = |k: &&String| listed_prefix(k) == Some(prefix);
            let left: Vec<_> = a.iter().filter(|(k, _)| under(k)).collect();
            let right: Vec<_> = b.iter().filter(|(k, _)| under(k)).collect();
            left != right
        };
        CLASSES
            .iter()
            .filter(|(prefix, _)| differs(prefix))
            .map(|(key, class)| Change { key, class: *class })
            .collect()
    }

    /// The changes in `new` a reload cannot apply: they keep their running values.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let spool = self.delivery.mode == DeliveryMode::Spool;
        self.changes(new)
            .into_iter()
            .filter(|c| c.class == Restart || (c.class == Sinks && spool))
            .map(|c| c.key)
            .collect()
    }
}

/// The longest listed prefix of `key`.
fn listed_prefix(key: &str) -> Option<&'static str> {
    CLASSES
        .iter()
        .map(|(prefix, _)| *prefix)
        .filter(|prefix| {
            key == *prefix
                || key
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .max_by_key(|prefix| prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration that sets every key of every section (sink tables are data here:
    /// they are classified as a whole).
    const EVERY_KEY: &str = include_str!("../testdata/every-key.toml");

    #[test]
    fn every_key_is_classified() {
        let config = Config::from_toml(EVERY_KEY).unwrap().config;
        let keys = flat(&config);
        let written: toml_keys::Keys = toml_keys::of(EVERY_KEY);
        for key in keys.keys() {
            assert!(class_of(key).is_some(), "{key} has no reload class");
            assert!(
                written.contains(key),
                "{key}: set it in testdata/every-key.toml, so the test covers it"
            );
        }
    }

    #[test]
    fn changes_by_class() {
        let a = Config::from_toml(EVERY_KEY).unwrap().config;
        let mut b = a.clone();
        b.server.shutdown_timeout_ms += std::time::Duration::from_millis(1);
        b.server.max_body_bytes += 1;
        b.routes[0].destination = Some("elsewhere".into());
        assert_eq!(
            a.changes(&b).iter().map(|c| c.key).collect::<Vec<_>>(),
            [
                "server.max_body_bytes",
                "server.shutdown_timeout_ms",
                "routes"
            ]
        );
        assert_eq!(a.needs_restart(&b), ["server.shutdown_timeout_ms"]);
        assert!(a.changes(&a.clone()).is_empty());
    }

    /// The dotted keys a TOML text writes (arrays of tables by index).
    mod toml_keys {
        use std::collections::BTreeSet;

        pub type Keys = BTreeSet<String>;

        pub fn of(text: &str) -> Keys {
            use figment::providers::{Format, Toml};
            let value: serde_json::Value = figment::Figment::new()
                .merge(Toml::string(text))
                .extract()
                .unwrap();
            let mut out = std::collections::BTreeMap::new();
            super::leaves(&value, "", &mut out);
            out.into_keys().collect()
        }
    }
}
