//! Built-in sample deliveries for `cal-relay send --trigger`: each trigger's body in the shape
//! Cal.com's builders write it (the field sets of `tests/fixtures` and the reference on what
//! Cal.com sends), with times relative to now, so a consumer can be tested against them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// How a MEETING_STARTED / MEETING_ENDED sample is shaped: Cal.com has three sending paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MeetingShape {
    /// Every booking column at the root, no envelope (older Cal.com).
    #[default]
    Flat,
    /// The envelope built when the booking was made, sent at the meeting's start or end:
    /// `createdAt` is the booking time (newer Cal.com).
    Scheduled,
    /// The queued task `{bookingId, eventTypeId, userId, teamId, responses, evt}`, its
    /// `createdAt` the booking time too.
    Queued,
}

/// Times and ids one sample is built from.
struct Sample {
    now: SystemTime,
    uid: String,
}

impl Sample {
    fn at(&self, offset_secs: i64) -> String {
        let t = if offset_secs >= 0 {
            self.now + Duration::from_secs(offset_secs as u64)
        } else {
            self.now - Duration::from_secs(offset_secs.unsigned_abs())
        };
        humantime::format_rfc3339_millis(t).to_string()
    }

    fn person(name: &str, email: &str, tz: &str, utc_offset: i64) -> Value {
        json!({"name": name, "email": email, "timeZone": tz,
               "language": {"locale": "en"}, "utcOffset": utc_offset})
    }

    /// The booking payload the BOOKING_* triggers share (a direct send), for a 30-minute
    /// meeting starting `start` seconds from now.
    fn booking(&self, start: i64) -> Map<String, Value> {
        let mut organizer = Self::person("Ada Example", "ada@example.com", "Europe/London", 0);
        organizer["id"] = json!(5);
        organizer["username"] = json!("ada");
        organizer["timeFormat"] = json!("h:mma");
        let attendee = Self::person(
            "Grace Sample",
            "grace@example.org",
            "America/New_York",
            -300,
        );
        let v = json!({
            "type": "30min",
            "title": "30min between Ada Example and Grace Sample",
            "description": "",
            "additionalNotes": "",
            "customInputs": {},
            "startTime": self.at(start),
            "endTime": self.at(start + 1800),
            "organizer": organizer,
            "responses": {
                "name": {"label": "your_name", "value": "Grace Sample"},
                "email": {"label": "email_address", "value": "grace@example.org"},
                "location": {"label": "location",
                             "value": {"optionValue": "", "value": "integrations:daily"}},
                "notes": {"label": "additional_notes"},
                "guests": {"label": "additional_guests", "value": []}
            },
            "userFieldsResponses": {},
            "attendees": [attendee],
            "location": "integrations:daily",
            "destinationCalendar": null,
            "hideCalendarNotes": false,
            "requiresConfirmation": null,
            "eventTypeId": 8,
            "seatsShowAttendees": true,
            "seatsPerTimeSlot": null,
            "seatsShowAvailabilityCount": true,
            "schedulingType": null,
            "iCalUID": format!("{}@Cal.com", self.uid),
            "iCalSequence": 0,
            "uid": self.uid,
            "bookerUrl": "https://cal.com",
            "videoCallData": {"type": "daily_video", "id": "sample-room", "password": "",
                              "url": "https://app.cal.com/video/sample-room"},
            "appsStatus": [],
            "eventTitle": "30min",
            "eventDescription": "",
            "price": 0,
            "currency": "usd",
            "length": 30,
            "bookingId": 4242,
            "metadata": {"videoCallUrl": "https://app.cal.com/video/sample-room"},
            "status": "ACCEPTED"
        });
        object(v)
    }

    /// The booking row a MEETING_* body carries (flat at the root, or as the scheduled
    /// envelope's payload): the meeting runs from 30 minutes ago (ENDED: ends now) or starts
    /// now (STARTED); the booking was made three days ago.
    fn meeting_row(&self, trigger: &str) -> Map<String, Value> {
        let start = if trigger == "MEETING_ENDED" { -1800 } else { 0 };
        let booked = self.at(-3 * 24 * 3600);
        object(json!({
            "id": 4242, "uid": self.uid, "idempotencyKey": null, "userId": 5,
            "userPrimaryEmail": "ada@example.com", "eventTypeId": 8,
            "title": "30min between Ada Example and Grace Sample", "description": "",
            "customInputs": {},
            "responses": {"name": {"label": "your_name", "value": "Grace Sample", "isHidden": false},
                          "email": {"label": "email_address", "value": "grace@example.org",
                                    "isHidden": false}},
            "startTime": self.at(start), "endTime": self.at(start + 1800),
            "location": "integrations:daily", "createdAt": booked, "updatedAt": booked,
            "status": "ACCEPTED", "paid": false, "metadata":
                {"videoCallUrl": "https://app.cal.com/video/sample-room"},
            "iCalUID": format!("{}@Cal.com", self.uid), "iCalSequence": 0,
            "user": {"email": "ada@example.com", "name": "Ada Example",
                     "timeZone": "Europe/London", "username": "ada"},
            "attendees": [{"id": 1, "email": "grace@example.org", "name": "Grace Sample",
                           "timeZone": "America/New_York", "locale": "en", "bookingId": 4242,
                           "noShow": false}],
            "payment": [], "references": []
        }))
    }

    fn meeting(&self, trigger: &str, shape: MeetingShape) -> Vec<u8> {
        let booked = self.at(-3 * 24 * 3600);
        let row = self.meeting_row(trigger);
        match shape {
            MeetingShape::Flat => {
                let mut flat = Map::new();
                flat.insert("triggerEvent".into(), json!(trigger));
                flat.extend(row);
                Value::Object(flat).to_string().into_bytes()
            }
            MeetingShape::Scheduled => envelope(trigger, &booked, &Value::Object(row)),
            MeetingShape::Queued => {
                let queued = json!({
                    "bookingId": 4242, "eventTypeId": 8, "userId": 5, "teamId": null,
                    "responses": row["responses"],
                    "evt": {"title": row["title"], "uid": self.uid,
                            "startTime": row["startTime"], "endTime": row["endTime"]}
                });
                envelope(trigger, &booked, &queued)
            }
        }
    }

    /// The payload of `trigger` (every trigger but MEETING_*, FORM_SUBMITTED*).
    fn payload(&self, trigger: &str) -> Value {
        let booking = |extra: Value| {
            let mut b = self.booking(2 * 24 * 3600);
            b.extend(object(extra));
            Value::Object(b)
        };
        let past_booking = |extra: Value| {
            let mut b = self.booking(-3600);
            b.extend(object(extra));
            Value::Object(b)
        };
        match trigger {
            "BOOKING_REQUESTED" => booking(json!({"status": "PENDING"})),
            "BOOKING_RESCHEDULED" => booking(json!({
                "rescheduleId": 4241, "rescheduleUid": format!("{}-previous", self.uid),
                "rescheduleStartTime": self.at(24 * 3600),
                "rescheduleEndTime": self.at(24 * 3600 + 1800),
                "rescheduledBy": "ada@example.com"})),
            "BOOKING_CANCELLED" => booking(json!({
                "status": "CANCELLED", "cancellationReason": "Schedule conflict",
                "cancelledBy": "ada@example.com"})),
            "BOOKING_REJECTED" => booking(json!({
                "status": "REJECTED", "rejectionReason": "Fully booked"})),
            "BOOKING_PAYMENT_INITIATED" | "BOOKING_PAID" => booking(json!({
                "paymentId": 302,
                "paymentData": {"id": 302, "uid": format!("pay-{}", self.uid), "amount": 5000,
                                "success": trigger == "BOOKING_PAID", "refunded": false,
                                "currency": "usd", "appId": "stripe"}})),
            "BOOKING_REASSIGNED" => booking(json!({"reassignedBy": "ada@example.com"})),
            "RECORDING_READY" => past_booking(json!({
                "downloadLink": format!("https://api.daily.co/v1/recordings/{}/download", self.uid)})),
            "RECORDING_TRANSCRIPTION_GENERATED" => past_booking(json!({
                "downloadLinks": {
                    "transcription": [{"format": "json",
                        "link": format!("https://api.daily.co/v1/transcript/{}", self.uid)}],
                    "recording": format!("https://api.daily.co/v1/recordings/{}", self.uid)}})),
            "BOOKING_NO_SHOW_UPDATED" => json!({
                "message": "grace@example.org marked as no-show",
                "bookingUid": self.uid, "bookingId": 4242,
                "attendees": [{"email": "grace@example.org", "noShow": true}]}),
            "OOO_CREATED" => json!({"oooEntry": {
                "id": 7, "uuid": self.uid, "start": self.at(7 * 24 * 3600),
                "end": self.at(14 * 24 * 3600), "createdAt": self.at(0),
                "updatedAt": self.at(0), "notes": "Holidays",
                "reason": {"emoji": "🏝️", "reason": "Vacation"}, "reasonId": 1,
                "user": {"id": 5, "name": "Ada Example", "username": "ada",
                         "timeZone": "Europe/London", "email": "ada@example.com"},
                "toUser": null}}),
            "INSTANT_MEETING" => json!({
                "triggerEvent": trigger, "title": "Instant meeting request",
                "body": "Grace Sample wants to meet now",
                "icon": "https://app.cal.com/cal-com-icon.svg",
                "url": "https://app.cal.com/video/sample-room",
                "actions": [{"action": "connect-action", "title": "Join", "type": "button",
                             "image": null}],
                "connectAndJoinUrl": "https://app.cal.com/connect-and-join?token=sample",
                "eventTypeId": 8, "eventTypeTitle": "Instant meeting", "customInputs": {}}),
            "AFTER_HOSTS_CAL_VIDEO_NO_SHOW" | "AFTER_GUESTS_CAL_VIDEO_NO_SHOW" => {
                let hosts = trigger == "AFTER_HOSTS_CAL_VIDEO_NO_SHOW";
                let mut p = json!({
                    "title": "30min between Ada Example and Grace Sample",
                    "bookingId": 4242, "bookingUid": self.uid,
                    "startTime": self.at(-600), "endTime": self.at(1200),
                    "attendees": [Self::person("Grace Sample", "grace@example.org",
                                               "America/New_York", -300)],
                    "participants": [{"user_id": null, "participant_id": "sample-participant",
                                      "user_name": if hosts { "Grace Sample" } else { "Ada Example" },
                                      "join_time": self.now.duration_since(UNIX_EPOCH)
                                          .map(|d| d.as_secs()).unwrap_or(0),
                                      "duration": 300}],
                    "eventType": {"id": 8, "teamId": null, "parentId": null,
                                  "calVideoSettings": null},
                    "webhook": {"id": "sample-webhook", "subscriberUrl": "https://relay.example.com/webhooks/cal",
                                "time": 5, "timeUnit": "MINUTE"},
                    "message": if hosts { "Host didn't join the call" } else { "Guest didn't join the call" }
                });
                if hosts {
                    p["hostEmail"] = json!("ada@example.com");
                    p["noShowHost"] = json!(true);
                } else {
                    p["guests"] = json!([{"email": "grace@example.org", "noShow": true}]);
                }
                p
            }
            "DELEGATION_CREDENTIAL_ERROR" => json!({
                "error": {"type": "CalendarAppDelegationCredentialInvalidGrantError",
                          "message": "Invalid grant"},
                "credential": {"id": -1, "type": "google_calendar", "appId": "google-calendar"},
                "user": {"id": 5, "email": "ada@example.com"}}),
            "DELEGATION_CREDENTIAL_SECRET_ROTATED"
            | "DELEGATION_CREDENTIAL_ROTATION_REQUIRED"
            | "DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED" => {
                let mut p = json!({"delegationCredential": {
                    "id": "sample-delegation", "workspacePlatform": "google",
                    "domain": "example.com", "organizationId": 57, "enabled": true}});
                if trigger == "DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED" {
                    p["error"] = json!({"type": "DelegationCredentialRotationError",
                                        "message": "The new key was refused"});
                }
                p
            }
            "WRONG_ASSIGNMENT_REPORT" => json!({
                "booking": {"uid": self.uid, "id": 4242,
                            "title": "Sales Call between Ada Example and Lead",
                            "startTime": self.at(-24 * 3600),
                            "endTime": self.at(-24 * 3600 + 1800), "status": "ACCEPTED",
                            "eventType": {"id": 8, "title": "Sales Call", "slug": "sales-call",
                                          "teamId": 57}},
                "report": {"reportedBy": {"id": 6, "email": "priya@example.com",
                                          "name": "Priya Raman"},
                           "firstAssignmentReason": "Routed based on company size: 201-1000",
                           "guest": "lead@example.net",
                           "host": {"email": "ada@example.com", "name": "Ada Example"},
                           "correctAssignee": "marco@example.com",
                           "additionalNotes": "Should have gone to the EMEA team"}}),
            "PING" => {
                let now = self.at(0);
                json!({"type": "Test", "title": "Test trigger event",
                       "startTime": now, "endTime": now,
                       "attendees": [Self::person("John Doe", "jdoe@example.com", "Europe/London", 0)],
                       "organizer": Self::person("Cal", "no-reply@cal.com", "Europe/London", 0)})
            }
            // Every other booking trigger (BOOKING_CREATED, BOOKING_LOCATION_UPDATED,
            // INSTANT_MEETING_ACCEPTED, CALENDAR_ENTRY_REJECTED) and any trigger the relay does
            // not know: the booking payload the BOOKING_* triggers share.
            _ => booking(json!({})),
        }
    }

    /// FORM_SUBMITTED, FORM_SUBMITTED_NO_EVENT and ROUTING_FORM_FALLBACK_HIT: the answers by
    /// field label at the root as well (not for the fallback), then the envelope's own keys.
    fn form(&self, trigger: &str) -> Vec<u8> {
        // NO_EVENT is stored at submission and sent about 15 minutes later.
        let created = if trigger == "FORM_SUBMITTED_NO_EVENT" {
            self.at(-15 * 60)
        } else {
            self.at(0)
        };
        let answers = [("Company", "Acme GmbH"), ("Email", "grace@example.org")];
        let mut payload = object(json!({
            "formId": self.uid, "formName": "Sales inquiry", "teamId": null,
            "responses": answers.iter()
                .map(|(k, v)| (k.to_string(), json!({"value": v, "response": v})))
                .collect::<Map<_, _>>()
        }));
        let mut root = Map::new();
        match trigger {
            "ROUTING_FORM_FALLBACK_HIT" => {
                payload.insert("responseId".into(), json!(311));
                payload.insert(
                    "fallbackAction".into(),
                    json!({"type": "customPageMessage", "value": "Thanks!"}),
                );
            }
            _ => {
                payload.insert(
                    "redirect".into(),
                    json!({"type": "eventTypeRedirectUrl", "value": "team/sales/intro"}),
                );
                for (k, v) in answers {
                    payload.insert(k.into(), json!(v));
                    root.insert(k.into(), json!(v));
                }
                payload.insert("createdAt".into(), json!(created));
                if trigger == "FORM_SUBMITTED_NO_EVENT" {
                    payload.insert("responseId".into(), json!(311));
                }
            }
        }
        root.insert("triggerEvent".into(), json!(trigger));
        root.insert("createdAt".into(), json!(created));
        root.insert("payload".into(), Value::Object(payload));
        Value::Object(root).to_string().into_bytes()
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `{"triggerEvent":T,"createdAt":C,"payload":P}`, compact, in Cal.com's key order.
fn envelope(trigger: &str, created_at: &str, payload: &Value) -> Vec<u8> {
    let trigger = Value::String(trigger.to_owned());
    let created_at = Value::String(created_at.to_owned());
    format!(r#"{{"triggerEvent":{trigger},"createdAt":{created_at},"payload":{payload}}}"#)
        .into_bytes()
}

/// A fresh sample body for `trigger` (each call gets its own booking uid); `meeting` picks the
/// shape of MEETING_STARTED / MEETING_ENDED.
pub fn body(trigger: &str, meeting: MeetingShape) -> Vec<u8> {
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sample = Sample {
        now,
        uid: format!("smpl{nanos:x}"),
    };
    let trigger = trigger.to_ascii_uppercase();
    match trigger.as_str() {
        "MEETING_STARTED" | "MEETING_ENDED" => sample.meeting(&trigger, meeting),
        "FORM_SUBMITTED" | "FORM_SUBMITTED_NO_EVENT" | "ROUTING_FORM_FALLBACK_HIT" => {
            sample.form(&trigger)
        }
        t => envelope(t, &sample.at(0), &sample.payload(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_cal_shaped() {
        for t in cal_relay_core::trigger::KNOWN {
            let v: Value = serde_json::from_slice(&body(t, MeetingShape::Flat)).unwrap();
            assert_eq!(v["triggerEvent"], *t);
            let flat = t.starts_with("MEETING_");
            assert_eq!(v["payload"].is_object(), !flat, "{t}");
            assert!(v["createdAt"].is_string(), "{t}");
        }
        for shape in [MeetingShape::Scheduled, MeetingShape::Queued] {
            let v: Value = serde_json::from_slice(&body("MEETING_ENDED", shape)).unwrap();
            assert!(v["payload"].is_object() && v["createdAt"].is_string());
        }
    }

    /// Each sample normalizes with the key its shape carries, and a scheduled meeting is due now.
    #[test]
    fn samples_have_their_keys_and_times() {
        let now = SystemTime::now();
        for (t, shape) in [
            ("WRONG_ASSIGNMENT_REPORT", MeetingShape::Flat),
            ("MEETING_STARTED", MeetingShape::Queued),
            ("MEETING_ENDED", MeetingShape::Scheduled),
            ("MEETING_ENDED", MeetingShape::Flat),
            ("BOOKING_NO_SHOW_UPDATED", MeetingShape::Flat),
            ("OOO_CREATED", MeetingShape::Flat),
            ("FORM_SUBMITTED", MeetingShape::Flat),
        ] {
            let n = cal_relay_core::normalize(body(t, shape).into(), None, now).unwrap();
            assert!(
                n.key.as_deref().is_some_and(|k| k.starts_with("smpl")),
                "{t}"
            );
        }
        let n = cal_relay_core::normalize(
            body("MEETING_STARTED", MeetingShape::Scheduled).into(),
            None,
            now,
        )
        .unwrap();
        let due = humantime::parse_rfc3339(n.scheduled_for.as_deref().unwrap()).unwrap();
        let gap = now.duration_since(due).unwrap_or_default();
        assert!(gap < Duration::from_secs(5), "{gap:?}");
    }
}
