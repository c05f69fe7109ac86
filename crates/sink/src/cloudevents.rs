//! CloudEvents 1.0 renderings of a [`Message`], shared by the broker sinks. The producer of
//! the message puts the event's context attributes in [`Message::event`] (all but
//! `specversion`, `id` and `datacontenttype`, which come from the message itself); a sink
//! configured for it renders them in binary content mode (one header per attribute, with the
//! binding's prefix) or structured content mode (the whole event as one JSON document). This
//! module knows no broker and no Cal.com field.

use std::borrow::Cow;

use crate::Message;

/// How a sink carries CloudEvents: not at all (the default: messages as before), as headers
/// beside the unchanged body, or as a JSON event that wraps the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Off,
    Binary,
    Structured,
}

pub const SPECVERSION: &str = "1.0";
/// Content type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// The attribute a binding carries in its own content-type field.
pub const DATACONTENTTYPE: &str = "datacontenttype";

/// `specversion`, `id`, then the message's own attributes, in order (not `datacontenttype`).
pub fn attributes(message: &Message) -> impl Iterator<Item = (&str, &str)> {
    [("specversion", SPECVERSION), ("id", message.id.as_str())]
        .into_iter()
        .chain(message.event.iter().map(|(k, v)| (k.as_ref(), v.as_str())))
}

/// The value of attribute `name` (`type`, `source`...), if the message has it.
pub fn attribute<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    attributes(message)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A header value as the HTTP and NATS bindings write it: printable ASCII other than space,
/// `"` and `%` as is, every other byte of the UTF-8 percent-encoded.
pub fn percent_encode(value: &str) -> Cow<'_, str> {
    let safe = |b: u8| (0x21..0x7f).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(safe) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// The message as a structured-mode event: its attributes, `datacontenttype`, and the body as
/// `data` (its bytes embedded as they are when it is JSON) or `data_base64`.
pub fn structured(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.body.len() + 512);
    out.push(b'{');
    let attrs = attributes(message).chain([(DATACONTENTTYPE, message.content_type.as_str())]);
    for (i, (name, value)) in attrs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
    }
    let json = message.json_checked || crate::json::is_json(&message.body);
    if json && message.content_type.contains("json") {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&message.body);
    } else {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&message.body);
        out.extend_from_slice(b",\"data_base64\":\"");
        out.extend_from_slice(encoded.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn message(body: &str, content_type: &str) -> Message {
        Message {
            id: "abc".into(),
            destination: "cal.booking.created".into(),
            key: Some("uid-1".into()),
            headers: vec![],
            content_type: content_type.into(),
            body: body.to_owned().into(),
            json_checked: false,
            received_at: SystemTime::UNIX_EPOCH,
            event: vec![
                (Cow::Borrowed("source"), "https://cal.com".into()),
                (Cow::Borrowed("type"), "com.cal.booking_created".into()),
                (Cow::Borrowed("subject"), "uid \"1\" é".into()),
            ],
        }
    }

    #[test]
    fn attributes_start_with_specversion_and_id() {
        let m = message("{}", "application/json");
        let names: Vec<_> = attributes(&m).map(|(k, _)| k).collect();
        assert_eq!(names, ["specversion", "id", "source", "type", "subject"]);
        assert_eq!(attribute(&m, "type"), Some("com.cal.booking_created"));
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_bindings_say() {
        assert_eq!(percent_encode("com.cal.x"), "com.cal.x");
        assert_eq!(percent_encode("uid \"1\" é%"), "uid%20%221%22%20%C3%A9%25");
    }

    #[test]
    fn structured_embeds_json_and_base64s_the_rest() {
        let v: serde_json::Value =
            serde_json::from_slice(&structured(&message(r#"{"a":[1,2]}"#, "application/json")))
                .unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["subject"], "uid \"1\" é");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"], serde_json::json!({"a": [1, 2]}));
        let v: serde_json::Value = serde_json::from_slice(&structured(&message(
            "a=1&b=2",
            "application/x-www-form-urlencoded",
        )))
        .unwrap();
        assert_eq!(v["data_base64"], "YT0xJmI9Mg==");
        assert!(v.get("data").is_none());
    }
}
