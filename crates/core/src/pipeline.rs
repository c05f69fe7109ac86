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
    /// Replay protection (refusing deliveries sent too long ago); `None`: off.
    pub freshness: Option<Freshness>,
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

/// The `X-Cal-Webhook-Version` value worth passing on: Cal.com's queued paths send the literal
/// `undefined` (their task schema drops the version), which, like an empty value, says nothing;
/// a value unfit for broker headers is not passed on either.
pub fn webhook_version(raw: &str) -> Option<&str> {
    let v = raw.trim();
    let meaningless = v.is_empty() || v == "undefined" || v == "null";
    (!meaningless && normalize::usable_header_value(v)).then_some(v)
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

/// Replay protection: how long after Cal.com sent a delivery the relay still takes it. What says
/// when a delivery was sent depends on its kind (see [`Freshness::check`]); a delivery no time
/// speaks for is protected by de-duplication alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How far in the past the send time may be (`replay_window_secs`).
    pub window: Duration,
    /// How much later than that a scheduled delivery may still come, its sender being a cron
    /// that can run late (`scheduled_allowance_secs`).
    pub scheduled_allowance: Duration,
}

/// The triggers whose envelope `createdAt` is when the delivery was scheduled, not sent, with
/// no better time in the payload: FORM_SUBMITTED_NO_EVENT is stored at submission and sent
/// about 15 minutes later by a cron.
pub const SENT_AFTER_CREATED_AT: &[&str] = &["FORM_SUBMITTED_NO_EVENT"];

impl Freshness {
    /// The longest a delivery of any kind stays acceptable after it was sent: the
    /// de-duplication window must cover it, so a replay inside it is a duplicate.
    pub fn longest(&self) -> Duration {
        self.window + self.scheduled_allowance
    }

    /// Whether `n`, received at `now`, was sent recently enough:
    /// - an enveloped MEETING_STARTED / MEETING_ENDED (its `createdAt` is the booking time) is
    ///   judged by the meeting's `startTime` / `endTime`, when Cal.com sends it, within the
    ///   window plus the scheduled allowance; a time ahead of now is never a replay and passes;
    /// - FORM_SUBMITTED_NO_EVENT by its `createdAt`, within the window plus the allowance;
    /// - every other envelope by its `createdAt`, within the window, and at most
    ///   [`MAX_CLOCK_AHEAD`] in the future;
    /// - flat and template bodies, and a time that does not parse, are not judged here (the
    ///   signature still covers the body; de-duplication still applies to envelopes and flat
    ///   bodies).
    pub fn check(&self, n: &normalize::Normalized, now: SystemTime) -> Result<(), Rejection> {
        if n.shape != Shape::Envelope {
            return Ok(());
        }
        let trigger = n.trigger.as_deref().unwrap_or_default();
        if trigger::FLAT.contains(&trigger) {
            let field = if trigger == "MEETING_STARTED" {
                "startTime"
            } else {
                "endTime"
            };
            return match &n.scheduled_for {
                Some(due) => check_age(field, due, now, self.longest(), None),
                None => Ok(()),
            };
        }
        let Some(created) = &n.created_at else {
            return Ok(());
        };
        let window = if SENT_AFTER_CREATED_AT.contains(&trigger) {
            self.longest()
        } else {
            self.window
        };
        check_age("createdAt", created, now, window, Some(MAX_CLOCK_AHEAD))
    }
}

/// Whether the time `value` of `field` (RFC 3339), seen at `now`, is at most `window` in the
/// past and, with `ahead`, at most that far in the future. A value that is not a time passes.
fn check_age(
    field: &str,
    value: &str,
    now: SystemTime,
    window: Duration,
    ahead: Option<Duration>,
) -> Result<(), Rejection> {
    let Ok(at) = humantime::parse_rfc3339_weak(value.trim_end_matches('Z')) else {
        return Ok(());
    };
    match now.duration_since(at) {
        Ok(age) if age > window => Err(Rejection::Stale(format!(
            "{field} {value} is more than {} s in the past (the replay window for this trigger)",
            window.as_secs()
        ))),
        Ok(_) => Ok(()),
        Err(early) => match ahead {
            Some(limit) if early.duration() > limit => Err(Rejection::Stale(format!(
                "{field} {value} is more than {} s in the future",
                limit.as_secs()
            ))),
            _ => Ok(()),
        },
    }
}

/// A delivery whose signature its source accepted: made only by [`Source::verify`], and the
/// only thing [`Source::prepare_verified`] takes, so unverified bytes cannot be normalized,
/// routed or published.
#[derive(Debug)]
pub struct Verified<'a>(Inbound<'a>, crate::Signed);

impl Verified<'_> {
    /// Whether a secret being retired signed it (counted, so operators see when the old
    /// secret stops being used).
    pub fn by_retiring_secret(&self) -> bool {
        self.1 == crate::Signed::Retiring
    }
}

impl Source {
    /// The CloudEvents context attributes of a delivery (other than `specversion`, `id` and
    /// `datacontenttype`): source, type, time, subject and partitionkey (the key), recordedtime
    /// (`received`, the receive time), calwebhookversion.
    fn event_attributes(
        &self,
        normalized: &normalize::Normalized,
        trigger: Option<&str>,
        received_at: SystemTime,
        webhook_version: Option<&str>,
        received: String,
    ) -> Vec<cal_relay_sink::Header> {
        let mut event = Vec::with_capacity(8);
        event.push((Cow::Borrowed("source"), self.event_source.clone()));
        event.push((
            Cow::Borrowed("type"),
            match trigger {
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
        if let Some(v) = webhook_version {
            event.push((Cow::Borrowed("calwebhookversion"), v.to_owned()));
        }
        event
    }

    /// Check `inbound`'s signature against this source's secrets.
    pub fn verify<'a>(&self, inbound: Inbound<'a>) -> Result<Verified<'a>, Rejection> {
        let signed = self.verifier.check(
            inbound.signature,
            &inbound.body,
            std::time::SystemTime::now(),
        )?;
        Ok(Verified(inbound, signed))
    }

    /// Normalize and route a delivery whose signature [`Source::verify`] accepted.
    pub fn prepare_verified<'r>(
        &self,
        routes: &'r RouteTable,
        verified: Verified<'_>,
    ) -> Result<Prepared<'r>, Rejection> {
        let inbound = verified.0;
        let id = delivery_id(&inbound.body);
        let normalized =
            normalize::normalize(inbound.body, inbound.content_type, inbound.received_at)?;
        if let Some(freshness) = &self.freshness {
            freshness.check(&normalized, inbound.received_at)?;
        }
        // The trigger a delivery is routed by: an envelope's or flat body's own; a template
        // imitating the envelope goes to the template destination, or, where the source has
        // none, by the trigger it renders (as before it was told apart; still a template, so
        // never de-duplicated).
        let routed_by = normalized.trigger.clone().or_else(|| {
            self.template_destination
                .is_none()
                .then(|| normalized.rendered_trigger.clone())
                .flatten()
        });
        let (route, trigger_label, destination) = self.route(routes, routed_by.as_deref())?;
        let webhook_version = inbound.webhook_version.and_then(webhook_version);
        let received = humantime::format_rfc3339_millis(inbound.received_at).to_string();
        let hdrs = relay_headers(
            routed_by.as_deref(),
            webhook_version,
            &id,
            &received,
            &normalized.content_type,
        );
        // CloudEvents attributes (rendered only by sinks configured for them).
        let event = if self.cloudevents {
            self.event_attributes(
                &normalized,
                routed_by.as_deref(),
                inbound.received_at,
                webhook_version,
                received,
            )
        } else {
            Vec::new()
        };
        Ok(Prepared {
            message: Message {
                id: message_id(id, normalized.shape, inbound.received_at),
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

    /// The route, trigger label and destination of a delivery routed by `routed_by` (`None`:
    /// a template, to this source's template destination).
    fn route<'r>(
        &self,
        routes: &'r RouteTable,
        routed_by: Option<&str>,
    ) -> Result<(&'r Route, &'static str, String), Rejection> {
        match routed_by {
            Some(t) => {
                let route = routes
                    .find(t)
                    .ok_or_else(|| Rejection::NoRoute(t.to_owned()))?;
                let destination = route
                    .destination
                    .clone()
                    .unwrap_or_else(|| trigger::default_destination(t));
                Ok((route, trigger::label(t), destination))
            }
            None => {
                let destination = self
                    .template_destination
                    .clone()
                    .ok_or(Rejection::NoTemplateDestination)?;
                let route = routes
                    .find(trigger::TEMPLATE)
                    .ok_or_else(|| Rejection::NoRoute(trigger::TEMPLATE.to_owned()))?;
                Ok((route, trigger::TEMPLATE_LABEL, destination))
            }
        }
    }
}

/// The relay's headers on every message: trigger, webhook version, delivery id, receive time
/// and content type.
fn relay_headers(
    trigger: Option<&str>,
    webhook_version: Option<&str>,
    id: &str,
    received: &str,
    content_type: &str,
) -> Vec<cal_relay_sink::Header> {
    let mut hdrs = Vec::with_capacity(5);
    if let Some(t) = trigger {
        hdrs.push((Cow::Borrowed(headers::TRIGGER), t.to_owned()));
    }
    if let Some(v) = webhook_version {
        hdrs.push((Cow::Borrowed(headers::WEBHOOK_VERSION), v.to_owned()));
    }
    hdrs.push((Cow::Borrowed(headers::DELIVERY_ID), id.to_owned()));
    hdrs.push((Cow::Borrowed(headers::RECEIVED_AT), received.to_owned()));
    hdrs.push((
        Cow::Borrowed(headers::CONTENT_TYPE),
        content_type.to_owned(),
    ));
    hdrs
}

/// The message id: the body's hash, and for a template the hash and the receive time. A
/// template's bytes repeat across bookings: its message id (broker de-duplication by
/// `Nats-Msg-Id` or `message_id`, the CloudEvents id) is made unique with the receive time, so
/// a broker never drops the second of two identical templates. The `cal-delivery-id` header
/// stays the body's hash.
fn message_id(id: String, shape: Shape, received_at: SystemTime) -> String {
    if shape != Shape::Template {
        return id;
    }
    let nanos = received_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{id}-{nanos:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_768_210_200)
    }

    /// `now` shifted by `secs`, as RFC 3339.
    fn at(secs: i64) -> String {
        let t = if secs >= 0 {
            now() + Duration::from_secs(secs as u64)
        } else {
            now() - Duration::from_secs((-secs) as u64)
        };
        humantime::format_rfc3339_millis(t).to_string()
    }

    const RULE: Freshness = Freshness {
        window: Duration::from_secs(3600),
        scheduled_allowance: Duration::from_secs(6 * 3600),
    };

    fn judge(body: String) -> Result<(), Rejection> {
        let n = normalize::normalize(Bytes::from(body), None, now()).unwrap();
        RULE.check(&n, now())
    }

    fn envelope(trigger: &str, created: i64, payload: &str) -> String {
        format!(
            r#"{{"triggerEvent":"{trigger}","createdAt":"{}","payload":{payload}}}"#,
            at(created)
        )
    }

    #[test]
    fn an_envelope_is_judged_by_its_created_at() {
        assert!(judge(envelope("BOOKING_CREATED", -3599, "{}")).is_ok());
        assert!(judge(envelope("BOOKING_CREATED", 299, "{}")).is_ok());
        let past = judge(envelope("BOOKING_CREATED", -3601, "{}"))
            .unwrap_err()
            .to_string();
        assert!(
            past.contains("createdAt") && past.contains("in the past"),
            "{past}"
        );
        let future = judge(envelope("BOOKING_CREATED", 301, "{}"))
            .unwrap_err()
            .to_string();
        assert!(future.contains("in the future"), "{future}");
        let not_a_time = r#"{"triggerEvent":"PING","createdAt":"x","payload":{}}"#;
        assert!(judge(not_a_time.to_owned()).is_ok());
    }

    #[test]
    fn a_scheduled_meeting_is_judged_by_when_it_was_due() {
        let three_weeks = 21 * 24 * 3600;
        let started = |due: i64| {
            let p = format!(r#"{{"uid":"bk","startTime":"{}","endTime":"x"}}"#, at(due));
            judge(envelope("MEETING_STARTED", -three_weeks, &p))
        };
        assert!(
            started(0).is_ok(),
            "booked three weeks ahead, sent at its start"
        );
        assert!(started(-7 * 3600 + 1).is_ok(), "a late cron");
        assert!(
            started(3 * 24 * 3600).is_ok(),
            "ahead of now is never a replay"
        );
        let late = started(-7 * 3600 - 1).unwrap_err().to_string();
        assert!(late.contains("startTime"), "{late}");
        // MEETING_ENDED by its endTime; the queued shape by its evt's times.
        let ended = format!(
            r#"{{"uid":"bk","startTime":"{}","endTime":"{}"}}"#,
            at(-8 * 3600),
            at(-60)
        );
        assert!(judge(envelope("MEETING_ENDED", -three_weeks, &ended)).is_ok());
        let queued = |due: i64| {
            let p = format!(
                r#"{{"bookingId":1,"evt":{{"uid":"bk","startTime":"{}"}}}}"#,
                at(due)
            );
            judge(envelope("MEETING_STARTED", -three_weeks, &p))
        };
        assert!(queued(-30).is_ok());
        assert!(queued(-8 * 3600).is_err());
        // No time to judge by: left to de-duplication.
        assert!(judge(envelope("MEETING_ENDED", -three_weeks, r#"{"uid":"bk"}"#)).is_ok());
    }

    #[test]
    fn a_form_without_event_has_its_allowance() {
        assert!(judge(envelope("FORM_SUBMITTED_NO_EVENT", -2 * 3600, "{}")).is_ok());
        assert!(judge(envelope("FORM_SUBMITTED_NO_EVENT", -7 * 3600 + 1, "{}")).is_ok());
        assert!(judge(envelope("FORM_SUBMITTED_NO_EVENT", -7 * 3600 - 1, "{}")).is_err());
        assert!(judge(envelope("FORM_SUBMITTED", -2 * 3600, "{}")).is_err());
    }

    #[test]
    fn flat_and_template_bodies_are_not_judged() {
        let flat = format!(
            r#"{{"triggerEvent":"MEETING_ENDED","uid":"u","createdAt":"{}","endTime":"{}"}}"#,
            at(-30 * 24 * 3600),
            at(-30 * 24 * 3600)
        );
        assert!(judge(flat).is_ok());
        assert!(judge(r#"{"triggerEvent":"BOOKING_CREATED","payload":{}}"#.to_owned()).is_ok());
    }

    #[test]
    fn a_meaningless_webhook_version_is_absent() {
        assert_eq!(webhook_version("2021-10-20"), Some("2021-10-20"));
        for v in ["undefined", "", " ", "null", "a\u{1}"] {
            assert_eq!(webhook_version(v), None, "{v:?}");
        }
    }

    #[test]
    fn event_type_and_time_follow_one_rule() {
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
