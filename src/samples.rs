//! Built-in sample deliveries, shaped as Cal.com sends each trigger, for `cal-relay send`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// A fresh sample body for `trigger` (each call gets its own booking uid).
pub fn body(trigger: &str) -> Vec<u8> {
    let now = SystemTime::now();
    let created = humantime::format_rfc3339_millis(now).to_string();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let uid = format!("smpl{:x}", nanos);
    let trigger = trigger.to_ascii_uppercase();
    let booking = || {
        json!({
            "type": "30min",
            "title": "30min between Ada Example and Grace Sample",
            "description": "",
            "startTime": "2026-12-01T09:00:00Z",
            "endTime": "2026-12-01T09:30:00Z",
            "organizer": {"id": 5, "name": "Ada Example", "email": "ada@example.com",
                          "timeZone": "Europe/London", "language": {"locale": "en"}},
            "attendees": [{"name": "Grace Sample", "email": "grace@example.org",
                           "timeZone": "America/New_York", "language": {"locale": "en"}}],
            "responses": {"name": {"label": "your_name", "value": "Grace Sample"},
                          "email": {"label": "email_address", "value": "grace@example.org"}},
            "location": "integrations:daily",
            "uid": uid,
            "bookingId": 4242,
            "status": "ACCEPTED",
            "metadata": {"videoCallUrl": "https://app.cal.com/video/sample"}
        })
    };
    let payload: Value = match trigger.as_str() {
        "MEETING_STARTED" | "MEETING_ENDED" => {
            // Flat: every booking column at the root, no envelope.
            let mut flat = json!({
                "triggerEvent": trigger, "id": 4242, "uid": uid, "title": "30min meeting",
                "startTime": "2026-12-01T09:00:00.000Z", "endTime": "2026-12-01T09:30:00.000Z",
                "createdAt": created, "status": "ACCEPTED", "attendees": [],
            });
            if let Some(map) = flat.as_object_mut() {
                map.insert(
                    "user".into(),
                    json!({"email": "ada@example.com", "name": "Ada Example"}),
                );
            }
            return flat.to_string().into_bytes();
        }
        "BOOKING_NO_SHOW_UPDATED" => json!({
            "message": "grace@example.org marked as no-show",
            "bookingUid": uid, "bookingId": 4242,
            "attendees": [{"email": "grace@example.org", "noShow": true}]
        }),
        "OOO_CREATED" => json!({
            "oooEntry": {"id": 7, "uuid": uid, "start": "2026-12-24T00:00:00.000Z",
                         "end": "2026-12-31T23:59:59.999Z", "notes": "Holidays"}
        }),
        "FORM_SUBMITTED" | "FORM_SUBMITTED_NO_EVENT" | "ROUTING_FORM_FALLBACK_HIT" => json!({
            "formId": uid, "formName": "Sales inquiry",
            "responses": {"Email": {"value": "grace@example.org", "response": "grace@example.org"}}
        }),
        "PING" => json!({
            "type": "Test", "title": "Test trigger event",
            "startTime": created, "endTime": created, "attendees": [],
            "organizer": {"name": "Cal", "email": "no-reply@cal.com", "timeZone": "Europe/London"}
        }),
        t if t.starts_with("BOOKING_")
            || t.starts_with("RECORDING_")
            || t.starts_with("AFTER_")
            || t.starts_with("INSTANT_MEETING") =>
        {
            booking()
        }
        _ => json!({ "uid": uid, "note": "sample payload" }),
    };
    let trigger = Value::String(trigger);
    format!(r#"{{"triggerEvent":{trigger},"createdAt":"{created}","payload":{payload}}}"#)
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_cal_shaped() {
        for t in cal_relay_core::trigger::KNOWN {
            let v: Value = serde_json::from_slice(&body(t)).unwrap();
            assert_eq!(v["triggerEvent"], *t);
            let flat = t.starts_with("MEETING_");
            assert_eq!(v["payload"].is_object(), !flat, "{t}");
        }
    }
}
