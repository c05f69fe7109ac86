//! A webhook as Cal.com answers it, the one the relay wants, and the two compared: the
//! [`Changes`] a `PATCH` (or a `POST`) sends, and the [`Difference`]s a check reports.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The payload versions a webhook can be pinned to: `2021-10-20`, which the relay is written
/// against, and `2026-07-27`, which only adds two optional ICS strings.
pub const PAYLOAD_VERSIONS: &[&str] = &["2021-10-20", "2026-07-27"];

/// A secret or an API key: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A webhook as Cal.com answers it (the fields the relay reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    pub subscriber_url: String,
    #[serde(default)]
    pub triggers: Vec<String>,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub payload_template: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub time: Option<u32>,
    #[serde(default)]
    pub time_unit: Option<String>,
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Set for a webhook of a platform OAuth client: a deprecated scope.
    #[serde(default)]
    pub o_auth_client_id: Option<serde_json::Value>,
}

/// Cal.com has answered ids as numbers and as strings.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// When the no-show triggers fire: `time` `unit`s after the meeting's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoShow {
    pub time: u32,
    /// `DAY`, `HOUR` or `MINUTE`.
    pub unit: String,
}

/// The webhook the relay wants at `url`.
#[derive(Debug, Clone)]
pub struct Desired {
    pub url: String,
    pub triggers: BTreeSet<String>,
    pub version: String,
    /// Used when `triggers` holds a no-show trigger.
    pub no_show: NoShow,
    /// Leave an existing `payloadTemplate` alone (else it is cleared: the relay wants
    /// envelopes).
    pub keep_template: bool,
}

impl Desired {
    fn needs_time(&self) -> bool {
        self.triggers
            .iter()
            .any(|t| crate::NO_SHOW_TRIGGERS.contains(&t.as_str()))
    }
}

/// The body of a `POST` or `PATCH`: only the fields set are sent.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// `Some(None)` clears the template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_template: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_unit: Option<String>,
}

impl Changes {
    /// The whole webhook `desired` describes, signed with `secret`: the body of a `POST`.
    pub fn create(desired: &Desired, secret: Secret) -> Changes {
        let timed = desired.needs_time();
        Changes {
            subscriber_url: Some(desired.url.clone()),
            triggers: Some(desired.triggers.iter().cloned().collect()),
            active: Some(true),
            secret: Some(secret),
            payload_template: None,
            version: Some(desired.version.clone()),
            time: timed.then_some(desired.no_show.time),
            time_unit: timed.then(|| desired.no_show.unit.clone()),
        }
    }

    /// What must change in `found` to make it `desired` (`secret`: a secret to set, when the
    /// relay and the webhook do not share one yet).
    pub fn update(found: &Webhook, desired: &Desired, secret: Option<Secret>) -> Changes {
        let triggers: BTreeSet<String> = found.triggers.iter().cloned().collect();
        let timed = desired.needs_time();
        let time_differs = timed
            && (found.time != Some(desired.no_show.time)
                || found.time_unit.as_deref() != Some(desired.no_show.unit.as_str()));
        Changes {
            subscriber_url: None,
            triggers: (triggers != desired.triggers)
                .then(|| desired.triggers.iter().cloned().collect()),
            active: (!found.active).then_some(true),
            secret,
            payload_template: (found.payload_template.is_some() && !desired.keep_template)
                .then_some(None),
            version: (found.version.as_deref() != Some(desired.version.as_str()))
                .then(|| desired.version.clone()),
            time: time_differs.then_some(desired.no_show.time),
            time_unit: time_differs.then(|| desired.no_show.unit.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// One line per field to change, secrets shown as `(new secret)`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(url) = &self.subscriber_url {
            out.push(format!("subscriberUrl: {url}"));
        }
        if let Some(t) = &self.triggers {
            out.push(format!("triggers: {} ({})", t.len(), t.join(", ")));
        }
        if let Some(a) = self.active {
            out.push(format!("active: {a}"));
        }
        if self.secret.is_some() {
            out.push("secret: (new secret)".into());
        }
        if self.payload_template.is_some() {
            out.push("payloadTemplate: cleared (the relay wants envelopes)".into());
        }
        if let Some(v) = &self.version {
            out.push(format!("version: {v}"));
        }
        if let (Some(t), Some(u)) = (self.time, &self.time_unit) {
            out.push(format!("time: {t} {u}"));
        }
        out
    }
}

/// How a webhook departs from the one the relay wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// No webhook of the scope has the relay's URL.
    Missing {
        url: String,
    },
    Inactive,
    MissingTriggers(Vec<String>),
    ExtraTriggers(Vec<String>),
    Template,
    Version {
        found: Option<String>,
        want: String,
    },
    NoShowTime {
        found: String,
        want: String,
    },
    /// A webhook of a platform OAuth client: a scope Cal.com says it will remove.
    DeprecatedScope,
    NoSecret,
    /// The webhook signs with a secret the relay does not hold.
    ForeignSecret,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing { url } => write!(f, "no webhook delivers to {url}"),
            Difference::Inactive => f.write_str("the webhook is inactive"),
            Difference::MissingTriggers(t) => {
                write!(f, "triggers the routes want are missing: {}", t.join(", "))
            }
            Difference::ExtraTriggers(t) => {
                write!(
                    f,
                    "triggers no route wants are subscribed: {}",
                    t.join(", ")
                )
            }
            Difference::Template => {
                f.write_str("a payloadTemplate is set (the relay is written for envelopes)")
            }
            Difference::Version { found, want } => write!(
                f,
                "payload version is {}, not {want}",
                found.as_deref().unwrap_or("unset")
            ),
            Difference::NoShowTime { found, want } => {
                write!(f, "no-show delay is {found}, not {want}")
            }
            Difference::DeprecatedScope => f.write_str(
                "the webhook belongs to a platform OAuth client, a scope Cal.com has deprecated",
            ),
            Difference::NoSecret => {
                f.write_str("the webhook has no secret: its deliveries arrive unsigned")
            }
            Difference::ForeignSecret => {
                f.write_str("the webhook signs with a secret the relay's source does not hold")
            }
        }
    }
}

impl Difference {
    /// Every way `found` departs from `desired`; `secrets`: the source's secrets (`None` when
    /// Cal.com did not show the webhook's).
    pub fn between(found: &Webhook, desired: &Desired, secrets: &[Secret]) -> Vec<Difference> {
        let mut out = Vec::new();
        if !found.active {
            out.push(Difference::Inactive);
        }
        let have: BTreeSet<String> = found.triggers.iter().cloned().collect();
        let missing: Vec<String> = desired.triggers.difference(&have).cloned().collect();
        let extra: Vec<String> = have.difference(&desired.triggers).cloned().collect();
        if !missing.is_empty() {
            out.push(Difference::MissingTriggers(missing));
        }
        if !extra.is_empty() {
            out.push(Difference::ExtraTriggers(extra));
        }
        if found.payload_template.is_some() && !desired.keep_template {
            out.push(Difference::Template);
        }
        if found.version.as_deref() != Some(desired.version.as_str()) {
            out.push(Difference::Version {
                found: found.version.clone(),
                want: desired.version.clone(),
            });
        }
        if desired.needs_time() {
            let found_time = match (found.time, &found.time_unit) {
                (Some(t), Some(u)) => format!("{t} {u}"),
                _ => "unset".into(),
            };
            let want = format!("{} {}", desired.no_show.time, desired.no_show.unit);
            if found_time != want {
                out.push(Difference::NoShowTime {
                    found: found_time,
                    want,
                });
            }
        }
        if found
            .o_auth_client_id
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            out.push(Difference::DeprecatedScope);
        }
        match &found.secret {
            None => out.push(Difference::NoSecret),
            Some(s) if s.0.is_empty() => out.push(Difference::NoSecret),
            Some(s) if !secrets.contains(s) => out.push(Difference::ForeignSecret),
            Some(_) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            url: "https://relay.example.com/webhooks/cal".into(),
            triggers: ["BOOKING_CREATED", "AFTER_HOSTS_CAL_VIDEO_NO_SHOW"]
                .map(String::from)
                .into(),
            version: "2021-10-20".into(),
            no_show: NoShow {
                time: 15,
                unit: "MINUTE".into(),
            },
            keep_template: false,
        }
    }

    fn webhook(json: serde_json::Value) -> Webhook {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_matching_webhook_needs_no_change_and_shows_no_difference() {
        let found = webhook(serde_json::json!({
            "id": 7, "subscriberUrl": "https://relay.example.com/webhooks/cal",
            "triggers": ["AFTER_HOSTS_CAL_VIDEO_NO_SHOW", "BOOKING_CREATED"], "active": true,
            "version": "2021-10-20", "time": 15, "timeUnit": "MINUTE", "secret": "s"
        }));
        assert_eq!(found.id, "7");
        assert!(Changes::update(&found, &desired(), None).is_empty());
        assert!(Difference::between(&found, &desired(), &[Secret("s".into())]).is_empty());
    }

    #[test]
    fn every_departure_is_a_change_and_a_difference() {
        let found = webhook(serde_json::json!({
            "id": "a", "subscriberUrl": "https://relay.example.com/webhooks/cal",
            "triggers": ["BOOKING_CREATED", "PING_ME"], "active": false,
            "payloadTemplate": "{}", "oAuthClientId": "c"
        }));
        let changes = Changes::update(&found, &desired(), None);
        assert_eq!(changes.active, Some(true));
        assert_eq!(changes.payload_template, Some(None));
        assert_eq!(changes.time, Some(15));
        let body = serde_json::to_value(&changes).unwrap();
        assert_eq!(body["payloadTemplate"], serde_json::Value::Null);
        assert!(body.get("secret").is_none());
        let differences = Difference::between(&found, &desired(), &[]);
        assert_eq!(differences.len(), 8, "{differences:?}");
        assert!(!format!("{changes:?}").contains("secret-value"));
    }

    #[test]
    fn secrets_are_never_shown_by_debug() {
        let s = Secret("very-secret".into());
        assert!(!format!("{s:?}").contains("very"));
        let c = Changes::create(&desired(), s);
        assert!(!format!("{c:?}").contains("very"));
        assert!(c.describe().iter().all(|l| !l.contains("very")));
    }
}
