//! The contract cal-relay offers the consumers of what it publishes: the JSON Schema of every
//! known trigger's message (the envelope with that trigger's payload, from `schemas/` at the
//! repository's root, embedded here), and the AsyncAPI document of what a configuration
//! publishes ([`asyncapi`]). It must not know about HTTP, brokers' clients or the delivery
//! policy: it describes messages, it does not move them.

pub mod asyncapi;

use std::collections::HashMap;

/// Every known trigger's schema (draft 2020-12), by trigger, sorted.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "AFTER_GUESTS_CAL_VIDEO_NO_SHOW",
        include_str!("../../../schemas/AFTER_GUESTS_CAL_VIDEO_NO_SHOW.json"),
    ),
    (
        "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
        include_str!("../../../schemas/AFTER_HOSTS_CAL_VIDEO_NO_SHOW.json"),
    ),
    (
        "BOOKING_CANCELLED",
        include_str!("../../../schemas/BOOKING_CANCELLED.json"),
    ),
    (
        "BOOKING_CREATED",
        include_str!("../../../schemas/BOOKING_CREATED.json"),
    ),
    (
        "BOOKING_LOCATION_UPDATED",
        include_str!("../../../schemas/BOOKING_LOCATION_UPDATED.json"),
    ),
    (
        "BOOKING_NO_SHOW_UPDATED",
        include_str!("../../../schemas/BOOKING_NO_SHOW_UPDATED.json"),
    ),
    (
        "BOOKING_PAID",
        include_str!("../../../schemas/BOOKING_PAID.json"),
    ),
    (
        "BOOKING_PAYMENT_INITIATED",
        include_str!("../../../schemas/BOOKING_PAYMENT_INITIATED.json"),
    ),
    (
        "BOOKING_REASSIGNED",
        include_str!("../../../schemas/BOOKING_REASSIGNED.json"),
    ),
    (
        "BOOKING_REJECTED",
        include_str!("../../../schemas/BOOKING_REJECTED.json"),
    ),
    (
        "BOOKING_REQUESTED",
        include_str!("../../../schemas/BOOKING_REQUESTED.json"),
    ),
    (
        "BOOKING_RESCHEDULED",
        include_str!("../../../schemas/BOOKING_RESCHEDULED.json"),
    ),
    (
        "CALENDAR_ENTRY_REJECTED",
        include_str!("../../../schemas/CALENDAR_ENTRY_REJECTED.json"),
    ),
    (
        "DELEGATION_CREDENTIAL_ERROR",
        include_str!("../../../schemas/DELEGATION_CREDENTIAL_ERROR.json"),
    ),
    (
        "DELEGATION_CREDENTIAL_ROTATION_REQUIRED",
        include_str!("../../../schemas/DELEGATION_CREDENTIAL_ROTATION_REQUIRED.json"),
    ),
    (
        "DELEGATION_CREDENTIAL_SECRET_ROTATED",
        include_str!("../../../schemas/DELEGATION_CREDENTIAL_SECRET_ROTATED.json"),
    ),
    (
        "DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED",
        include_str!("../../../schemas/DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED.json"),
    ),
    (
        "FORM_SUBMITTED",
        include_str!("../../../schemas/FORM_SUBMITTED.json"),
    ),
    (
        "FORM_SUBMITTED_NO_EVENT",
        include_str!("../../../schemas/FORM_SUBMITTED_NO_EVENT.json"),
    ),
    (
        "INSTANT_MEETING",
        include_str!("../../../schemas/INSTANT_MEETING.json"),
    ),
    (
        "INSTANT_MEETING_ACCEPTED",
        include_str!("../../../schemas/INSTANT_MEETING_ACCEPTED.json"),
    ),
    (
        "MEETING_ENDED",
        include_str!("../../../schemas/MEETING_ENDED.json"),
    ),
    (
        "MEETING_STARTED",
        include_str!("../../../schemas/MEETING_STARTED.json"),
    ),
    (
        "OOO_CREATED",
        include_str!("../../../schemas/OOO_CREATED.json"),
    ),
    ("PING", include_str!("../../../schemas/PING.json")),
    (
        "RECORDING_READY",
        include_str!("../../../schemas/RECORDING_READY.json"),
    ),
    (
        "RECORDING_TRANSCRIPTION_GENERATED",
        include_str!("../../../schemas/RECORDING_TRANSCRIPTION_GENERATED.json"),
    ),
    (
        "ROUTING_FORM_FALLBACK_HIT",
        include_str!("../../../schemas/ROUTING_FORM_FALLBACK_HIT.json"),
    ),
    (
        "WRONG_ASSIGNMENT_REPORT",
        include_str!("../../../schemas/WRONG_ASSIGNMENT_REPORT.json"),
    ),
];

/// The schema every envelope meets, whatever its trigger.
pub const ENVELOPE: &str = include_str!("../../../schemas/envelope.json");

/// Where the schemas are published (`$id` of each: this base, the trigger, `.json`).
pub const SCHEMA_BASE: &str = "https://cal-relay.dev/schemas/";

/// The schema of `trigger`'s messages.
pub fn schema(trigger: &str) -> Option<&'static str> {
    SCHEMAS
        .binary_search_by(|(t, _)| (*t).cmp(trigger))
        .ok()
        .map(|i| SCHEMAS[i].1)
}

/// What `cal-relay schema [NAME]` prints: the schema of one trigger, of any envelope
/// (`envelope`), or of every known trigger as an object by trigger (`None`). `Err` lists the
/// names there are.
pub fn schema_text(name: Option<&str>) -> Result<String, String> {
    match name {
        Some("envelope") => Ok(ENVELOPE.trim_end().to_owned()),
        Some(t) => schema(t).map(|s| s.trim_end().to_owned()).ok_or_else(|| {
            let known: Vec<&str> = SCHEMAS.iter().map(|(t, _)| *t).collect();
            format!("no schema for {t:?}; known: envelope, {}", known.join(", "))
        }),
        None => {
            let all: serde_json::Map<String, serde_json::Value> = SCHEMAS
                .iter()
                .map(|(t, s)| {
                    let value = serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
                    ((*t).to_owned(), value)
                })
                .collect();
            Ok(serde_json::to_string_pretty(&all).unwrap_or_default())
        }
    }
}

/// The URI of `trigger`'s schema, when there is one (CloudEvents `dataschema`).
pub fn schema_uri(trigger: &str) -> Option<String> {
    schema(trigger).map(|_| format!("{SCHEMA_BASE}{trigger}.json"))
}

/// Why the checker could not be built.
#[derive(Debug, thiserror::Error)]
#[error("schema of {trigger} does not compile: {detail}")]
pub struct SchemaError {
    pub trigger: &'static str,
    pub detail: String,
}

/// Where a payload first departs from its trigger's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer of the failing value (`/payload/startTime`).
    pub path: String,
    pub message: String,
}

/// Every known trigger's schema, compiled: checks a published body against its trigger's
/// schema (drift detection; it never decides whether a delivery is relayed).
pub struct Checker {
    validators: HashMap<&'static str, jsonschema::Validator>,
}

impl Checker {
    pub fn new() -> Result<Checker, SchemaError> {
        let mut validators = HashMap::new();
        for (trigger, text) in SCHEMAS {
            let bad = |detail: String| SchemaError { trigger, detail };
            let schema: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| bad(e.to_string()))?;
            validators.insert(*trigger, validator);
        }
        Ok(Checker { validators })
    }

    /// The first violation of `body` against `trigger`'s schema; `None` when it conforms, or
    /// when the trigger has no schema (unknown triggers are not checked).
    pub fn check(&self, trigger: &str, body: &[u8]) -> Option<Violation> {
        let validator = self.validators.get(trigger)?;
        let instance: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Some(Violation {
                    path: String::new(),
                    message: format!("not JSON: {e}"),
                })
            }
        };
        let error = validator.iter_errors(&instance).next()?;
        Some(Violation {
            path: error.instance_path().to_string(),
            message: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_trigger_has_a_schema_and_every_schema_parses() {
        for trigger in cal_relay_core::trigger::KNOWN {
            assert!(schema(trigger).is_some(), "no schema for {trigger}");
        }
        for (trigger, text) in SCHEMAS.iter().chain([&("envelope", ENVELOPE)]) {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                v["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{trigger}"
            );
        }
        let sorted: Vec<_> = SCHEMAS.iter().map(|(t, _)| *t).collect();
        let mut again = sorted.clone();
        again.sort_unstable();
        assert_eq!(sorted, again);
        assert_eq!(
            schema_uri("BOOKING_CREATED").as_deref(),
            Some("https://cal-relay.dev/schemas/BOOKING_CREATED.json")
        );
    }

    #[test]
    fn the_checker_names_the_first_failing_path() {
        let checker = Checker::new().unwrap();
        let ok = br#"{"triggerEvent":"BOOKING_NO_SHOW_UPDATED","createdAt":"2026-01-12T09:30:00.538Z","payload":{"bookingUid":"u","attendees":[{"email":"a@b.c","noShow":true}],"extra":1}}"#;
        assert_eq!(checker.check("BOOKING_NO_SHOW_UPDATED", ok), None);
        let bad = br#"{"triggerEvent":"BOOKING_NO_SHOW_UPDATED","createdAt":"2026-01-12T09:30:00.538Z","payload":{"bookingUid":"u","attendees":[{"email":"a@b.c","noShow":"yes"}]}}"#;
        let v = checker.check("BOOKING_NO_SHOW_UPDATED", bad).unwrap();
        assert_eq!(v.path, "/payload/attendees/0/noShow");
        assert_eq!(
            checker.check("SOMETHING_NEW", bad),
            None,
            "unknown: not checked"
        );
    }

    /// The cost of `[schema] check = "warn"` per delivery (printed, not asserted):
    /// `cargo test --release -p cal-relay-contract -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost_per_check() {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/deliveries/BOOKING_CREATED.body"),
        )
        .unwrap();
        let checker = Checker::new().unwrap();
        let n = 20_000;
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(checker.check("BOOKING_CREATED", &body).is_none());
        }
        let per = started.elapsed() / n;
        println!(
            "check of a {} byte BOOKING_CREATED: {per:?} per delivery",
            body.len()
        );
    }

    #[test]
    fn every_file_in_schemas_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .filter(|n| n != "envelope")
            .collect();
        files.sort();
        let embedded: Vec<&str> = SCHEMAS.iter().map(|(t, _)| *t).collect();
        assert_eq!(files, embedded);
    }
}
