//! The contract cal-relay offers the consumers of what it publishes: the JSON Schema of every
//! known trigger's message (the envelope with that trigger's payload, from `schemas/` at the
//! repository's root, embedded here), and the AsyncAPI document of what a configuration
//! publishes ([`asyncapi`]). It must not know about HTTP, brokers' clients or the delivery
//! policy: it describes messages, it does not move them.

pub mod asyncapi;

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

/// The URI of `trigger`'s schema, when there is one (CloudEvents `dataschema`).
pub fn schema_uri(trigger: &str) -> Option<String> {
    schema(trigger).map(|_| format!("{SCHEMA_BASE}{trigger}.json"))
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
