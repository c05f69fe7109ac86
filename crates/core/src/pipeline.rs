//! From one received delivery to the [`Message`] its sinks publish: verify, normalize, route,
//! and attach the relay's headers. Pure: the caller passes the receive time.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cal_relay_sink::Message;
use sha2::{Digest, Sha256};

use crate::normalize::{self, NormalizeError, Shape};
use crate::route::{Route, RouteTable};
use crate::trigger;
use crate::verify::{Verifier, VerifyError};

/// Header names the relay sets on every message.
pub mod headers {
    pub const TRIGGER: &str = "cal-trigger";
    pub const WEBHOOK_VERSION: &str = "cal-webhook-version";
    pub const DELIVERY_ID: &str = "cal-delivery-id";
    pub const RECEIVED_AT: &str = "cal-received-at";
    pub const CONTENT_TYPE: &str = "content-type";
}

/// One webhook endpoint: its name, signature check and destination for template bodies.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub verifier: Verifier,
    pub template_destination: Option<String>,
    /// Refuse envelopes whose `createdAt` is older than this (replay protection); `None`: off.
    pub replay_window: Option<Duration>,
    /// CloudEvents `source` of this endpoint's messages (a URI).
    pub event_source: String,
    /// CloudEvents `type` of its template bodies (which carry no trigger).
    pub template_event_type: String,
    /// Whether messages carry their CloudEvents attributes ([`Message::event`]): only when a
    /// sink renders them, or a spool keeps them for later; building them costs allocations.
    pub cloudevents: bool,
}

/// The CloudEvents `source` when a source configures none.
pub const DEFAULT_EVENT_SOURCE: &str = "https://cal.com";
/// The CloudEvents `type` of template bodies when a source configures none.
pub const DEFAULT_TEMPLATE_EVENT_TYPE: &str = "com.cal.template";
/// Prefix of every trigger's CloudEvents `type`: `com.cal.` + the trigger lower-cased
/// (`BOOKING_CREATED` -> `com.cal.booking_created`); upper-casing the rest gives it back.
pub const EVENT_TYPE_PREFIX: &str = "com.cal.";

/// The CloudEvents `type` of `trigger`.
pub fn event_type(trigger: &str) -> String {
    let mut t = String::with_capacity(EVENT_TYPE_PREFIX.len() + trigger.len());
    t.push_str(EVENT_TYPE_PREFIX);
    t.extend(trigger.chars().map(|c| c.to_ascii_lowercase()));
    t
}

/// The CloudEvents `time`: the envelope's `createdAt` when it is an RFC 3339 time (written
/// back in UTC with milliseconds), else when the relay received the delivery.
pub fn event_time(created_at: Option<&str>, received_at: SystemTime) -> String {
    let created =
        created_at.and_then(|c| humantime::parse_rfc3339_weak(c.trim_end_matches('Z')).ok());
    humantime::format_rfc3339_millis(created.unwrap_or(received_at)).to_string()
}

/// How far in the future an envelope's `createdAt` may be (the sender's clock running ahead).
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(300);

/// A delivery as received, before any check.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    pub body: Bytes,
    /// Raw `X-Cal-Signature-256` value.
    pub signature: Option<&'a [u8]>,
    pub content_type: Option<&'a str>,
    /// `X-Cal-Webhook-Version` value.
    pub webhook_version: Option<&'a str>,
    pub received_at: SystemTime,
}

/// A delivery ready to publish: the message and the route that picked its sinks.
#[derive(Debug)]
pub struct Prepared<'r> {
    pub message: Message,
    pub route: &'r Route,
    /// Bounded metric label of the trigger.
    pub trigger_label: &'static str,
    pub shape: Shape,
}

/// Why a delivery is refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Signature(#[from] VerifyError),
    #[error(transparent)]
    Malformed(#[from] NormalizeError),
    #[error("the body has no triggerEvent and this source has no template_destination")]
    NoTemplateDestination,
    #[error("no route matches trigger {0}")]
    NoRoute(String),
    /// The envelope's `createdAt` is outside the replay window.
    #[error("{0}")]
    Stale(String),
}

impl Rejection {
    /// Stable snake_case reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Signature(e) => e.reason(),
            Rejection::Malformed(NormalizeError::Empty) => "empty_body",
            Rejection::Malformed(NormalizeError::InvalidTrigger) => "invalid_trigger",
            Rejection::Malformed(NormalizeError::Wrap(_)) => "malformed",
            Rejection::NoTemplateDestination => "no_trigger",
            Rejection::NoRoute(_) => "no_route",
            Rejection::Stale(_) => "stale_delivery",
        }
    }
}

/// SHA-256 hex of the raw body: identical retries get the same id.
pub fn delivery_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = [0u8; 64];
    // 32 bytes always fill exactly 64 hex digits, which are ASCII.
    match hex::encode_to_slice(digest, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => hex::encode(digest),
    }
}

/// Whether an envelope made at `created_at` (RFC 3339) and received at `now` is within the
/// replay window. A `createdAt` that is not a time cannot be checked and passes (the signature
/// still covers the body; de-duplication still applies).
fn check_fresh(created_at: &str, now: SystemTime, window: Duration) -> Result<(), Rejection> {
    let Ok(created) = humantime::parse_rfc3339_weak(created_at.trim_end_matches('Z')) else {
        return Ok(());
    };
    match now.duration_since(created) {
        Ok(age) if age > window => Err(Rejection::Stale(format!(
            "createdAt {created_at} is more than replay_window_secs ({} s) in the past",
            window.as_secs()
        ))),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > MAX_CLOCK_AHEAD => Err(Rejection::Stale(format!(
            "createdAt {created_at} is more than {} s in the future",
            MAX_CLOCK_AHEAD.as_secs()
        ))),
        Err(_) => Ok(()),
    }
}

impl Source {
    /// Verify, normalize and route `inbound`.
    pub fn prepare<'r>(
        &self,
        routes: &'r RouteTable,
        inbound: Inbound<'_>,
    ) -> Result<Prepared<'r>, Rejection> {
        self.verify(&inbound)?;
        self.prepare_verified(routes, inbound)
    }

    /// The CloudEvents context attributes of a delivery (other than `specversion`, `id` and
    /// `datacontenttype`): source, type, time, subject and partitionkey (the key), recordedtime
    /// (`received`, the receive time), calwebhookversion.
    fn event_attributes(
        &self,
        normalized: &normalize::Normalized,
        received_at: SystemTime,
        webhook_version: Option<&str>,
        received: String,
    ) -> Vec<cal_relay_sink::Header> {
        let mut event = Vec::with_capacity(8);
        event.push((Cow::Borrowed("source"), self.event_source.clone()));
        event.push((
            Cow::Borrowed("type"),
            match &normalized.trigger {
                Some(t) => event_type(t),
                None => self.template_event_type.clone(),
            },
        ));
        event.push((
            Cow::Borrowed("time"),
            event_time(normalized.created_at.as_deref(), received_at),
        ));
        if let Some(key) = &normalized.key {
            event.push((Cow::Borrowed("subject"), key.clone()));
            event.push((Cow::Borrowed("partitionkey"), key.clone()));
        }
        event.push((Cow::Borrowed("recordedtime"), received));
        if let Some(v) = webhook_version.filter(|v| normalize::usable_header_value(v)) {
            event.push((Cow::Borrowed("calwebhookversion"), v.to_owned()));
        }
        event
    }

    /// Check `inbound`'s signature against this source's secrets.
    pub fn verify(&self, inbound: &Inbound<'_>) -> Result<(), Rejection> {
        Ok(self.verifier.verify(inbound.signature, &inbound.body)?)
    }

    /// Normalize and route `inbound`, whose signature [`Source::verify`] accepted.
    pub fn prepare_verified<'r>(
        &self,
        routes: &'r RouteTable,
        inbound: Inbound<'_>,
    ) -> Result<Prepared<'r>, Rejection> {
        let id = delivery_id(&inbound.body);
        let normalized =
            normalize::normalize(inbound.body, inbound.content_type, inbound.received_at)?;
        if let (Some(window), Some(created)) = (self.replay_window, &normalized.created_at) {
            check_fresh(created, inbound.received_at, window)?;
        }

        let (route, trigger_label, destination) = match &normalized.trigger {
            Some(t) => {
                let route = routes
                    .find(t)
                    .ok_or_else(|| Rejection::NoRoute(t.clone()))?;
                let destination = route
                    .destination
                    .clone()
                    .unwrap_or_else(|| trigger::default_destination(t));
                (route, trigger::label(t), destination)
            }
            None => {
                let destination = self
                    .template_destination
                    .clone()
                    .ok_or(Rejection::NoTemplateDestination)?;
                let route = routes
                    .find(trigger::TEMPLATE)
                    .ok_or_else(|| Rejection::NoRoute(trigger::TEMPLATE.to_owned()))?;
                (route, trigger::TEMPLATE_LABEL, destination)
            }
        };

        let mut hdrs = Vec::with_capacity(5);
        if let Some(t) = &normalized.trigger {
            hdrs.push((Cow::Borrowed(headers::TRIGGER), t.clone()));
        }
        if let Some(v) = inbound
            .webhook_version
            .filter(|v| normalize::usable_header_value(v))
        {
            hdrs.push((Cow::Borrowed(headers::WEBHOOK_VERSION), v.to_owned()));
        }
        hdrs.push((Cow::Borrowed(headers::DELIVERY_ID), id.clone()));
        let received = humantime::format_rfc3339_millis(inbound.received_at).to_string();
        hdrs.push((Cow::Borrowed(headers::RECEIVED_AT), received.clone()));
        hdrs.push((
            Cow::Borrowed(headers::CONTENT_TYPE),
            normalized.content_type.clone(),
        ));

        // CloudEvents attributes (rendered only by sinks configured for them).
        let event = if self.cloudevents {
            self.event_attributes(
                &normalized,
                inbound.received_at,
                inbound.webhook_version,
                received,
            )
        } else {
            Vec::new()
        };

        Ok(Prepared {
            message: Message {
                id,
                destination,
                key: normalized.key,
                headers: hdrs,
                content_type: normalized.content_type,
                body: normalized.body,
                json_checked: normalized.json,
                received_at: inbound.received_at,
                event,
            },
            route,
            trigger_label,
            shape: normalized.shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_bounds_created_at() {
        use std::time::UNIX_EPOCH;
        let now = UNIX_EPOCH + Duration::from_secs(1_768_210_200);
        let w = Duration::from_secs(3600);
        let at = |secs: i64| {
            humantime::format_rfc3339_millis(if secs >= 0 {
                now + Duration::from_secs(secs as u64)
            } else {
                now - Duration::from_secs((-secs) as u64)
            })
            .to_string()
        };
        assert!(check_fresh(&at(-3599), now, w).is_ok());
        assert!(check_fresh(&at(299), now, w).is_ok());
        let past = check_fresh(&at(-3601), now, w).unwrap_err().to_string();
        assert!(past.contains("in the past"), "{past}");
        let future = check_fresh(&at(301), now, w).unwrap_err().to_string();
        assert!(future.contains("in the future"), "{future}");
        assert!(check_fresh("not a time", now, w).is_ok());
    }

    #[test]
    fn event_type_and_time_follow_one_rule() {
        use std::time::UNIX_EPOCH;
        assert_eq!(event_type("BOOKING_CREATED"), "com.cal.booking_created");
        assert_eq!(
            event_type("AFTER_HOSTS_CAL_VIDEO_NO_SHOW")
                .strip_prefix(EVENT_TYPE_PREFIX)
                .map(str::to_ascii_uppercase)
                .as_deref(),
            Some("AFTER_HOSTS_CAL_VIDEO_NO_SHOW"),
            "reversible"
        );
        let received = UNIX_EPOCH + Duration::from_millis(1_768_210_200_538);
        assert_eq!(
            event_time(Some("2026-01-12T09:30:00.000Z"), received),
            "2026-01-12T09:30:00.000Z"
        );
        assert_eq!(
            event_time(Some("2026-01-12T09:30:00Z"), received),
            "2026-01-12T09:30:00.000Z"
        );
        for not_a_time in [None, Some("yesterday"), Some("")] {
            assert_eq!(event_time(not_a_time, received), "2026-01-12T09:30:00.538Z");
        }
    }

    #[test]
    fn delivery_id_is_sha256_hex() {
        assert_eq!(
            delivery_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
