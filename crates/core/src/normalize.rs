//! Bringing a delivery body into the standard envelope `{triggerEvent, createdAt, payload}`.
//!
//! - An envelope (a JSON object with a string `triggerEvent`, a string `createdAt` and an object
//!   `payload`) is kept byte-identical: it is scanned once, without building a
//!   `serde_json::Value`. Every envelope Cal.com sends carries a string `createdAt`.
//! - An object with a `triggerEvent` and a `payload` object but no string `createdAt` is a custom
//!   template imitating the envelope (it renders the same bytes for different bookings): a
//!   template body, which remembers the trigger it renders ([`Normalized::rendered_trigger`]).
//! - A flat MEETING_STARTED/MEETING_ENDED object (a `triggerEvent` but no `payload` object) is
//!   wrapped: `payload` holds every root field but `triggerEvent`, each field's bytes copied as
//!   they came, and `createdAt` is the receive time.
//! - Anything else (no `triggerEvent`, not an object, not JSON, or another trigger without a
//!   `payload` object, which only a custom template produces) is a custom-template body, passed
//!   on as-is with its content type.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use cal_relay_sink::json::Strict;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::trigger;

/// Visitor methods answering `$none` for every scalar value kind (null, bool, number).
macro_rules! scalar_values {
    ($none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// Visitor methods answering `$none` for every value kind but an object.
macro_rules! any_other_value {
    ($none:expr) => {
        scalar_values!($none);
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Strict>()?.is_some() {}
            Ok($none)
        }
    };
}

/// Content type of envelope and wrapped bodies.
pub const JSON: &str = "application/json";

/// The shape a body arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Already the standard envelope: published byte-identical.
    Envelope,
    /// Flat MEETING_* body: wrapped into the envelope.
    Flat,
    /// Custom-template body: no trigger, passed on as-is.
    Template,
}

/// A body ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub shape: Shape,
    /// The root `triggerEvent`, absent for templates.
    pub trigger: Option<String>,
    /// Partition key: `uid`, else `bookingUid`, else `booking.uid`, else `evt.uid`, else
    /// `oooEntry.uuid`, else `formId` of the payload.
    pub key: Option<String>,
    pub body: Bytes,
    pub content_type: String,
    /// The body was scanned and is well-formed JSON (always so for envelopes and wrapped bodies).
    pub json: bool,
    /// An envelope's root `createdAt` string (when Cal.com made, or scheduled, the delivery).
    pub created_at: Option<String>,
    /// When Cal.com meant to send the delivery, where the payload says so: the `startTime`
    /// (MEETING_STARTED) or `endTime` (MEETING_ENDED) of an enveloped meeting, read from the
    /// payload or its `evt` (the queued shape). `None` for every other body.
    pub scheduled_for: Option<String>,
    /// A template imitating the envelope (`triggerEvent` and a `payload` object, no string
    /// `createdAt`): the trigger it renders, to route it by when the source has no
    /// `template_destination`. `None` for every other body.
    pub rendered_trigger: Option<String>,
}

/// Why a body cannot be relayed.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    #[error("the body is empty")]
    Empty,
    #[error("triggerEvent must be a string of letters, digits and underscores")]
    InvalidTrigger,
    #[error("the body could not be wrapped into an envelope: {0}")]
    Wrap(serde_json::Error),
}

/// Normalize `body` received at `received_at` with the request's `content_type`.
pub fn normalize(
    body: Bytes,
    content_type: Option<&str>,
    received_at: SystemTime,
) -> Result<Normalized, NormalizeError> {
    if body.trim_ascii().is_empty() {
        return Err(NormalizeError::Empty);
    }
    // UTF-8 checked once for the whole body (JSON must be UTF-8 throughout), so the parser
    // reading a `str` need not check each string again.
    let Some(root) = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| serde_json::from_str::<Root>(text).ok())
    else {
        return Ok(template(body, content_type, false));
    };
    let trigger = match root.trigger {
        TriggerField::Absent => return Ok(template(body, content_type, true)),
        TriggerField::Invalid => return Err(NormalizeError::InvalidTrigger),
        TriggerField::Str(t) if trigger::is_valid(&t) => t,
        TriggerField::Str(_) => return Err(NormalizeError::InvalidTrigger),
    };
    match (root.payload, root.created_at) {
        (Some(keys), Some(created_at)) => Ok(Normalized {
            shape: Shape::Envelope,
            scheduled_for: keys.scheduled_time(&trigger),
            key: keys.pick(),
            trigger: Some(trigger),
            body,
            content_type: JSON.to_owned(),
            json: true,
            created_at: Some(created_at),
            rendered_trigger: None,
        }),
        // No string createdAt: a template rendering the envelope's field names, whose bytes
        // repeat across bookings. Never an envelope, so never de-duplicated.
        // Its payload's key is kept: a template that renders a uid still orders by booking.
        (Some(keys), None) => Ok(Normalized {
            rendered_trigger: Some(trigger),
            key: keys.pick(),
            ..template(body, content_type, true)
        }),
        // A custom JSON template can render `"triggerEvent":"{{triggerEvent}}"` and a few
        // fields without a payload: only the triggers Cal.com really sends flat are wrapped,
        // so a trigger's destination carries that trigger's envelope and nothing else.
        (None, _) if !trigger::FLAT.contains(&trigger.as_str()) => {
            Ok(template(body, content_type, true))
        }
        (None, _) => {
            let wrapped = wrap(&body, &trigger, received_at).map_err(NormalizeError::Wrap)?;
            Ok(Normalized {
                shape: Shape::Flat,
                trigger: Some(trigger),
                key: root.keys.pick(),
                body: Bytes::from(wrapped),
                content_type: JSON.to_owned(),
                json: true,
                // A flat body's root createdAt is the booking's, not the delivery's.
                created_at: None,
                scheduled_for: None,
                rendered_trigger: None,
            })
        }
    }
}

/// Longest partition key used (Cal.com's uids are about 22 characters).
pub const MAX_KEY_BYTES: usize = 256;

fn usable_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_BYTES && !k.chars().any(char::is_control)
}

/// Whether a header value from the request can be passed to every broker as it is: visible
/// ASCII and spaces only, at most 256 bytes.
pub fn usable_header_value(v: &str) -> bool {
    v.len() <= 256 && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn template(body: Bytes, content_type: Option<&str>, json: bool) -> Normalized {
    Normalized {
        json,
        created_at: None,
        scheduled_for: None,
        rendered_trigger: None,
        shape: Shape::Template,
        trigger: None,
        key: None,
        body,
        content_type: content_type
            .filter(|c| !c.is_empty() && usable_header_value(c))
            .unwrap_or("application/octet-stream")
            .to_owned(),
    }
}

/// Wrap a flat object: `{"triggerEvent":T,"createdAt":NOW,"payload":{every other root field}}`,
/// `T` being the trigger the scan found (the last `triggerEvent` when a body repeats it, as a
/// JSON parser reads it), so the body always says what the message's trigger header says. The
/// result is checked again: `payload` nests one level deeper than the root did.
fn wrap(body: &[u8], trigger: &str, received_at: SystemTime) -> Result<Vec<u8>, serde_json::Error> {
    let text = std::str::from_utf8(body).map_err(<serde_json::Error as de::Error>::custom)?;
    let Fields(fields) = serde_json::from_str(text)?;
    let mut out = Vec::with_capacity(body.len() + 64);
    let created_at = humantime::format_rfc3339_millis(received_at).to_string();
    out.extend_from_slice(b"{\"triggerEvent\":");
    serde_json::to_writer(&mut out, trigger)?;
    out.extend_from_slice(b",\"createdAt\":\"");
    out.extend_from_slice(created_at.as_bytes());
    out.extend_from_slice(b"\",\"payload\":{");
    let mut first = true;
    for (name, value) in fields.iter().filter(|(k, _)| k != "triggerEvent") {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, name)?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.extend_from_slice(b"}}");
    serde_json::from_slice::<Strict>(&out)?;
    Ok(out)
}

/// Root fields in order, each value's bytes borrowed from the body.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    // Keys are written back out, so here they must be text.
                    let name = match key {
                        Cow::Borrowed(b) => {
                            Cow::Borrowed(std::str::from_utf8(b).map_err(de::Error::custom)?)
                        }
                        Cow::Owned(v) => {
                            Cow::Owned(String::from_utf8(v).map_err(de::Error::custom)?)
                        }
                    };
                    fields.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key (escapes resolved), read as a `str` so the parser checks its UTF-8, control
/// characters and escapes as strictly as a JSON parser would; kept as bytes to compare with the
/// few names the scan looks for.
struct Key<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        d.deserialize_str(V)
    }
}

enum TriggerField {
    Absent,
    Invalid,
    Str(String),
}

/// What one scan of the root object tells: the trigger, whether `payload` is an object (and its
/// key fields), and the root's own key fields (for flat bodies).
struct Root {
    trigger: TriggerField,
    created_at: Option<String>,
    payload: Option<KeyFields>,
    keys: KeyFields,
}

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Root;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Root, A::Error> {
                let mut root = Root {
                    trigger: TriggerField::Absent,
                    created_at: None,
                    payload: None,
                    keys: KeyFields::default(),
                };
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.0.as_ref() {
                        b"triggerEvent" => {
                            root.trigger = match map.next_value::<Loose>()?.0 {
                                Some(t) => TriggerField::Str(t),
                                None => TriggerField::Invalid,
                            }
                        }
                        b"payload" => root.payload = map.next_value::<Payload>()?.0,
                        b"createdAt" => root.created_at = map.next_value::<Loose>()?.0,
                        other => root.keys.visit(other, &mut map)?,
                    }
                }
                Ok(root)
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields a partition key (and a meeting's scheduled time) can come from.
#[derive(Default)]
struct KeyFields {
    uid: Option<String>,
    booking_uid: Option<String>,
    /// `booking.uid` (WRONG_ASSIGNMENT_REPORT).
    booking: Option<String>,
    /// `evt.uid`, `evt.startTime`, `evt.endTime` (the queued MEETING_* shape).
    evt: Times,
    ooo_uuid: Option<String>,
    form_id: Option<String>,
    times: Times,
}

/// The string fields of a nested object the scan keeps: `uid`, `uuid`, `startTime`, `endTime`.
#[derive(Default)]
struct Times {
    uid: Option<String>,
    uuid: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

impl KeyFields {
    /// The first usable candidate: a key goes into broker headers and record keys, so one with
    /// control characters or over [`MAX_KEY_BYTES`] is not used (the message has no key).
    fn pick(self) -> Option<String> {
        [
            self.uid,
            self.booking_uid,
            self.booking,
            self.evt.uid,
            self.ooo_uuid,
            self.form_id,
        ]
        .into_iter()
        .flatten()
        .find(|k| usable_key(k))
    }

    /// When a scheduled meeting trigger was due: MEETING_STARTED at the booking's start,
    /// MEETING_ENDED at its end (the payload's own times first, then those of its `evt`).
    fn scheduled_time(&self, trigger: &str) -> Option<String> {
        let pick = |t: &Times| match trigger {
            "MEETING_STARTED" => t.start.clone(),
            "MEETING_ENDED" => t.end.clone(),
            _ => None,
        };
        pick(&self.times).or_else(|| pick(&self.evt))
    }

    /// Read the value of field `name` from `map`, keeping it if it is a key field.
    fn visit<'de, A: MapAccess<'de>>(&mut self, name: &[u8], map: &mut A) -> Result<(), A::Error> {
        match name {
            b"uid" => self.uid = map.next_value::<Loose>()?.0,
            b"bookingUid" => self.booking_uid = map.next_value::<Loose>()?.0,
            b"formId" => self.form_id = map.next_value::<Loose>()?.0,
            b"startTime" => self.times.start = map.next_value::<Loose>()?.0,
            b"endTime" => self.times.end = map.next_value::<Loose>()?.0,
            b"oooEntry" => self.ooo_uuid = map.next_value::<Nested>()?.0.uuid,
            b"booking" => self.booking = map.next_value::<Nested>()?.0.uid,
            b"evt" => self.evt = map.next_value::<Nested>()?.0,
            _ => {
                map.next_value::<Strict>()?;
            }
        }
        Ok(())
    }
}

/// `payload`: `Some(keys)` when it is an object, `None` for any other value.
struct Payload(Option<KeyFields>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
                let mut keys = KeyFields::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    keys.visit(key.0.as_ref(), &mut map)?;
                }
                Ok(Payload(Some(keys)))
            }
            any_other_value!(Payload(None));
        }
        d.deserialize_any(V)
    }
}

/// An object's string `uid`, `uuid`, `startTime` and `endTime`; nothing for any other value.
struct Nested(Times);

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Nested;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nested, A::Error> {
                let mut t = Times::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.0.as_ref() {
                        b"uid" => t.uid = map.next_value::<Loose>()?.0,
                        b"uuid" => t.uuid = map.next_value::<Loose>()?.0,
                        b"startTime" => t.start = map.next_value::<Loose>()?.0,
                        b"endTime" => t.end = map.next_value::<Loose>()?.0,
                        _ => {
                            map.next_value::<Strict>()?;
                        }
                    }
                }
                Ok(Nested(t))
            }
            any_other_value!(Nested(Times::default()));
        }
        d.deserialize_any(V)
    }
}

/// A string value, or `None` for any other JSON value.
struct Loose(Option<String>);

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Loose, E> {
                Ok(Loose(Some(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<Key<'de>, Strict>()?.is_some() {}
                Ok(Loose(None))
            }
            scalar_values!(Loose(None));
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<Strict>()?.is_some() {}
                Ok(Loose(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_768_210_200_538)
    }

    #[test]
    fn envelope_is_byte_identical() {
        let body = Bytes::from_static(
            br#"{"triggerEvent":"BOOKING_CREATED","createdAt":"x","payload":{"bookingId":1,"uid":"abc"}}"#,
        );
        let n = normalize(body.clone(), Some(JSON), at()).unwrap();
        assert_eq!(n.shape, Shape::Envelope);
        assert!(n.json);
        assert_eq!(n.body, body);
        assert_eq!(n.trigger.as_deref(), Some("BOOKING_CREATED"));
        assert_eq!(n.key.as_deref(), Some("abc"));
    }

    #[test]
    fn key_precedence() {
        let n = |p: &str| {
            let body = format!(r#"{{"triggerEvent":"X","payload":{p}}}"#);
            normalize(Bytes::from(body), None, at()).unwrap().key
        };
        assert_eq!(
            n(r#"{"formId":"f","bookingUid":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            n(r#"{"oooEntry":{"id":1,"uuid":"o"},"formId":"f"}"#).as_deref(),
            Some("o")
        );
        assert_eq!(n(r#"{"formId":"f","uid":"u"}"#).as_deref(), Some("u"));
        assert_eq!(n(r#"{"uid":5,"title":"t"}"#), None);
        // Keys are compared after their escapes are resolved.
        assert_eq!(n(r#"{"u\u0069d":"e"}"#).as_deref(), Some("e"));
    }

    #[test]
    fn an_envelope_without_a_string_created_at_is_a_template() {
        for body in [
            &br#"{"triggerEvent":"BOOKING_CREATED","payload":{"eventType":"30 Min","uid":"u"}}"#[..],
            br#"{"triggerEvent":"BOOKING_CREATED","createdAt":5,"payload":{"uid":"u"}}"#,
        ] {
            let n = normalize(Bytes::copy_from_slice(body), Some(JSON), at()).unwrap();
            assert_eq!(n.shape, Shape::Template);
            assert_eq!(n.trigger, None);
            assert_eq!(n.rendered_trigger.as_deref(), Some("BOOKING_CREATED"));
            assert_eq!(n.key.as_deref(), Some("u"));
            assert_eq!(n.created_at, None);
            assert_eq!(n.body.as_ref(), body);
        }
    }

    #[test]
    fn real_shapes_have_keys_and_meetings_their_due_time() {
        let n = |b: &'static str| normalize(Bytes::from_static(b.as_bytes()), None, at()).unwrap();
        let report = n(
            r#"{"triggerEvent":"WRONG_ASSIGNMENT_REPORT","createdAt":"c","payload":{"booking":{"uid":"b1","id":1},"report":{"guest":"g"}}}"#,
        );
        assert_eq!(report.key.as_deref(), Some("b1"));
        assert_eq!(report.scheduled_for, None);
        let queued = n(
            r#"{"triggerEvent":"MEETING_STARTED","createdAt":"c","payload":{"bookingId":1,"evt":{"uid":"e1","startTime":"s","endTime":"e"}}}"#,
        );
        assert_eq!(queued.key.as_deref(), Some("e1"));
        assert_eq!(queued.scheduled_for.as_deref(), Some("s"));
        let ended = n(
            r#"{"triggerEvent":"MEETING_ENDED","createdAt":"c","payload":{"uid":"u","startTime":"s","endTime":"e","evt":{"endTime":"x"}}}"#,
        );
        assert_eq!(ended.key.as_deref(), Some("u"));
        assert_eq!(ended.scheduled_for.as_deref(), Some("e"));
        let booking = n(
            r#"{"triggerEvent":"BOOKING_CREATED","createdAt":"c","payload":{"uid":"u","startTime":"s"}}"#,
        );
        assert_eq!(booking.scheduled_for, None);
    }

    #[test]
    fn flat_is_wrapped_preserving_field_bytes() {
        let body = Bytes::from_static(
            br#"{"triggerEvent":"MEETING_ENDED","id":7,"uid":"u1","title":"Zo\u00eb","createdAt":"2026-03-02T08:00:00.000Z"}"#,
        );
        let n = normalize(body, Some(JSON), at()).unwrap();
        assert_eq!(n.shape, Shape::Flat);
        assert_eq!(n.key.as_deref(), Some("u1"));
        assert_eq!(
            std::str::from_utf8(&n.body).unwrap(),
            r#"{"triggerEvent":"MEETING_ENDED","createdAt":"2026-01-12T09:30:00.538Z","payload":{"id":7,"uid":"u1","title":"Zo\u00eb","createdAt":"2026-03-02T08:00:00.000Z"}}"#
        );
    }

    #[test]
    fn non_object_payload_is_flat() {
        let body = Bytes::from_static(br#"{"triggerEvent":"MEETING_STARTED","payload":null}"#);
        let n = normalize(body, None, at()).unwrap();
        assert_eq!(n.shape, Shape::Flat);
        let v: serde_json::Value = serde_json::from_slice(&n.body).unwrap();
        assert_eq!(v["payload"]["payload"], serde_json::Value::Null);
    }

    #[test]
    fn a_template_that_renders_a_trigger_without_payload_stays_a_template() {
        let body = Bytes::from_static(
            br#"{"triggerEvent":"BOOKING_CREATED","createdAt":"2026-01-01T00:00:00Z","title":"x"}"#,
        );
        let n = normalize(body.clone(), Some(JSON), at()).unwrap();
        assert_eq!(n.shape, Shape::Template);
        assert_eq!(n.trigger, None);
        assert_eq!(n.body, body);
        assert!(n.json);
        let unknown = Bytes::from_static(br#"{"triggerEvent":"SOMETHING_NEW","id":1}"#);
        assert_eq!(
            normalize(unknown, Some(JSON), at()).unwrap().shape,
            Shape::Template
        );
    }

    #[test]
    fn templates() {
        for (body, ct, json) in [
            (
                &b"event=X&uid=1"[..],
                "application/x-www-form-urlencoded",
                false,
            ),
            (&b"false"[..], JSON, false),
            (&br#"{"content":"hi"}"#[..], JSON, true),
            (&b"{not json"[..], JSON, false),
        ] {
            let n = normalize(Bytes::copy_from_slice(body), Some(ct), at()).unwrap();
            assert_eq!(n.shape, Shape::Template);
            assert_eq!(n.json, json);
            assert_eq!(n.body.as_ref(), body);
            assert_eq!(n.content_type, ct);
            assert_eq!(n.trigger, None);
        }
    }

    #[test]
    fn bad_inputs() {
        assert!(matches!(
            normalize(Bytes::from_static(b"  "), None, at()),
            Err(NormalizeError::Empty)
        ));
        assert!(matches!(
            normalize(Bytes::from_static(br#"{"triggerEvent":5}"#), None, at()),
            Err(NormalizeError::InvalidTrigger)
        ));
        assert!(matches!(
            normalize(Bytes::from_static(br#"{"triggerEvent":"a.>"}"#), None, at()),
            Err(NormalizeError::InvalidTrigger)
        ));
    }

    /// Bodies a lenient scan took for JSON although a strict parser refuses them; found by
    /// reading serde_json's skip paths for the fuzz contract (fuzz/fuzz_targets/prepare.rs).
    #[test]
    fn hostile_json_is_not_taken_for_json() {
        let deep = format!(
            r#"{{"triggerEvent":"PING","payload":{{}},"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            &b"{\"triggerEvent\":\"PING\",\"payload\":{},\"x\":\"\xff\"}"[..],
            b"{\"triggerEvent\":\"PING\",\"payload\":{\"\x01\":1}}",
            br#"{"triggerEvent":"PING","payload":{"a":"\ud800"}}"#,
            br#"{"triggerEvent":"PING","payload":{"\udc00":1}}"#,
            deep.as_bytes(),
        ] {
            assert!(serde_json::from_slice::<serde_json::Value>(body).is_err());
            let n = normalize(Bytes::copy_from_slice(body), Some(JSON), at()).unwrap();
            assert_eq!(
                n.shape,
                Shape::Template,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(!n.json);
            assert_eq!(n.body.as_ref(), body);
        }
        // A flat body nested to the limit cannot be wrapped one level deeper.
        let flat = format!(
            r#"{{"triggerEvent":"MEETING_ENDED","x":{}{}}}"#,
            "[".repeat(126),
            "]".repeat(126)
        );
        assert!(serde_json::from_slice::<serde_json::Value>(flat.as_bytes()).is_ok());
        assert!(matches!(
            normalize(Bytes::from(flat), Some(JSON), at()),
            Err(NormalizeError::Wrap(_))
        ));
    }

    #[test]
    fn a_repeated_trigger_is_read_as_a_json_parser_reads_it() {
        let body = Bytes::from_static(
            br#"{"triggerEvent":"MEETING_STARTED","id":1,"triggerEvent":"MEETING_ENDED"}"#,
        );
        let n = normalize(body, Some(JSON), at()).unwrap();
        assert_eq!(n.trigger.as_deref(), Some("MEETING_ENDED"));
        let v: serde_json::Value = serde_json::from_slice(&n.body).unwrap();
        assert_eq!(v["triggerEvent"], "MEETING_ENDED");
    }

    #[test]
    fn keys_and_content_types_unfit_for_brokers_are_not_used() {
        let body = Bytes::from_static(
            br#"{"triggerEvent":"X","payload":{"uid":"a\r\nNats-Msg-Id: x","bookingUid":"b"}}"#,
        );
        assert_eq!(
            normalize(body, None, at()).unwrap().key.as_deref(),
            Some("b")
        );
        let n = normalize(Bytes::from_static(b"x=1"), Some("text/plain\x01"), at()).unwrap();
        assert_eq!(n.content_type, "application/octet-stream");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// A flat body is wrapped into JSON whose `payload` holds exactly the root fields
            /// but `triggerEvent`, and whose `triggerEvent` is the trigger.
            #[test]
            fn flat_bodies_wrap_to_their_fields(
                fields in proptest::collection::btree_map("[a-zA-Z]{1,6}", arb_json(), 0..8),
            ) {
                let mut root: Map<String, Value> = fields.into_iter().collect();
                root.remove("payload");
                root.insert("triggerEvent".into(), Value::from("MEETING_ENDED"));
                let body = serde_json::to_vec(&Value::Object(root.clone())).unwrap();
                let n = normalize(Bytes::from(body), Some(JSON), at()).unwrap();
                prop_assert_eq!(n.shape, Shape::Flat);
                let v: Value = serde_json::from_slice(&n.body).unwrap();
                root.remove("triggerEvent");
                prop_assert_eq!(&v["payload"], &Value::Object(root));
                prop_assert_eq!(&v["triggerEvent"], "MEETING_ENDED");
            }

            /// Whatever the bytes, a body marked JSON parses strictly; envelopes are the
            /// bytes that came in.
            #[test]
            fn json_means_strict_json(
                value in arb_json(),
                noise in proptest::collection::vec(any::<u8>(), 0..4),
                at_byte in any::<prop::sample::Index>(),
            ) {
                let mut v = serde_json::json!({
                    "triggerEvent": "BOOKING_CREATED",
                    "createdAt": "2026-01-12T09:30:00.538Z",
                    "payload": {}
                });
                v["payload"]["x"] = value;
                let mut body = serde_json::to_vec(&v).unwrap();
                let pos = at_byte.index(body.len());
                for (k, b) in noise.iter().enumerate() {
                    body.insert((pos + k).min(body.len()), *b);
                }
                if let Ok(n) = normalize(Bytes::from(body.clone()), Some(JSON), at()) {
                    if n.json {
                        prop_assert!(serde_json::from_slice::<Value>(&n.body).is_ok());
                    }
                    if n.shape == Shape::Envelope {
                        prop_assert_eq!(n.body.as_ref(), &body[..]);
                    }
                }
            }
        }
    }
}
