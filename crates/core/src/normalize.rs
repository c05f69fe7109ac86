//! Bringing a delivery body into the standard envelope `{triggerEvent, createdAt, payload}`.
//!
//! - An envelope (a JSON object with a string `triggerEvent` and an object `payload`) is kept
//!   byte-identical: it is scanned once, without building a `serde_json::Value`.
//! - A flat object with `triggerEvent` but no `payload` object (MEETING_STARTED/ENDED) is
//!   wrapped: `payload` holds every root field but `triggerEvent`, each field's bytes copied as
//!   they came, and `createdAt` is the receive time.
//! - Anything else (no `triggerEvent`, not an object, not JSON) is a custom-template body,
//!   passed on as-is with its content type.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
            while seq.next_element::<IgnoredAny>()?.is_some() {}
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
    /// Partition key: `uid`, else `bookingUid`, else `oooEntry.uuid`, else `formId` of the payload.
    pub key: Option<String>,
    pub body: Bytes,
    pub content_type: String,
    /// The body was scanned and is well-formed JSON (always so for envelopes and wrapped bodies).
    pub json: bool,
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
    let Ok(root) = serde_json::from_slice::<Root>(&body) else {
        return Ok(template(body, content_type, false));
    };
    let trigger = match root.trigger {
        TriggerField::Absent => return Ok(template(body, content_type, true)),
        TriggerField::Invalid => return Err(NormalizeError::InvalidTrigger),
        TriggerField::Str(t) if trigger::is_valid(&t) => t,
        TriggerField::Str(_) => return Err(NormalizeError::InvalidTrigger),
    };
    match root.payload {
        Some(keys) => Ok(Normalized {
            shape: Shape::Envelope,
            trigger: Some(trigger),
            key: keys.pick(),
            body,
            content_type: JSON.to_owned(),
            json: true,
        }),
        None => {
            let wrapped = wrap(&body, received_at).map_err(NormalizeError::Wrap)?;
            Ok(Normalized {
                shape: Shape::Flat,
                trigger: Some(trigger),
                key: root.keys.pick(),
                body: Bytes::from(wrapped),
                content_type: JSON.to_owned(),
                json: true,
            })
        }
    }
}

fn template(body: Bytes, content_type: Option<&str>, json: bool) -> Normalized {
    Normalized {
        json,
        shape: Shape::Template,
        trigger: None,
        key: None,
        body,
        content_type: content_type
            .unwrap_or("application/octet-stream")
            .to_owned(),
    }
}

/// Wrap a flat object: `{"triggerEvent":T,"createdAt":NOW,"payload":{every other root field}}`.
fn wrap(body: &[u8], received_at: SystemTime) -> Result<Vec<u8>, serde_json::Error> {
    let Fields(fields) = serde_json::from_slice(body)?;
    let mut out = Vec::with_capacity(body.len() + 64);
    let created_at = humantime::format_rfc3339_millis(received_at).to_string();
    let trigger = fields
        .iter()
        .find(|(k, _)| k == "triggerEvent")
        .map(|(_, v)| v.get())
        .unwrap_or("null");
    out.extend_from_slice(b"{\"triggerEvent\":");
    out.extend_from_slice(trigger.as_bytes());
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

/// An object key as bytes (escapes resolved, no UTF-8 check): enough to compare with the few
/// names the scan looks for, and cheaper than a `str` for every key of a large payload.
struct Key<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_vec())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        d.deserialize_bytes(V)
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
                        other => root.keys.visit(other, &mut map)?,
                    }
                }
                Ok(root)
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields a partition key can come from.
#[derive(Default)]
struct KeyFields {
    uid: Option<String>,
    booking_uid: Option<String>,
    ooo_uuid: Option<String>,
    form_id: Option<String>,
}

impl KeyFields {
    fn pick(self) -> Option<String> {
        self.uid
            .or(self.booking_uid)
            .or(self.ooo_uuid)
            .or(self.form_id)
    }

    /// Read the value of field `name` from `map`, keeping it if it is a key field.
    fn visit<'de, A: MapAccess<'de>>(&mut self, name: &[u8], map: &mut A) -> Result<(), A::Error> {
        match name {
            b"uid" => self.uid = map.next_value::<Loose>()?.0,
            b"bookingUid" => self.booking_uid = map.next_value::<Loose>()?.0,
            b"formId" => self.form_id = map.next_value::<Loose>()?.0,
            b"oooEntry" => self.ooo_uuid = map.next_value::<OooEntry>()?.0,
            _ => {
                map.next_value::<IgnoredAny>()?;
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

/// `oooEntry.uuid` when `oooEntry` is an object with a string `uuid`.
struct OooEntry(Option<String>);

impl<'de> Deserialize<'de> for OooEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OooEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OooEntry, A::Error> {
                let mut uuid = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.0.as_ref() == b"uuid" {
                        uuid = map.next_value::<Loose>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OooEntry(uuid))
            }
            any_other_value!(OooEntry(None));
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
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose(None))
            }
            scalar_values!(Loose(None));
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
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
}
