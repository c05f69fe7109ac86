//! Cal.com triggers: the known names (bounded metric labels) and the default naming rule.

/// Every trigger Cal.com is known to send, plus `PING` from the Test button.
pub const KNOWN: &[&str] = &[
    "BOOKING_CREATED",
    "BOOKING_PAYMENT_INITIATED",
    "BOOKING_PAID",
    "BOOKING_RESCHEDULED",
    "BOOKING_REQUESTED",
    "BOOKING_CANCELLED",
    "BOOKING_REJECTED",
    "BOOKING_NO_SHOW_UPDATED",
    "BOOKING_LOCATION_UPDATED",
    "BOOKING_REASSIGNED",
    "FORM_SUBMITTED",
    "FORM_SUBMITTED_NO_EVENT",
    "ROUTING_FORM_FALLBACK_HIT",
    "MEETING_STARTED",
    "MEETING_ENDED",
    "RECORDING_READY",
    "RECORDING_TRANSCRIPTION_GENERATED",
    "INSTANT_MEETING",
    "INSTANT_MEETING_ACCEPTED",
    "OOO_CREATED",
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW",
    "DELEGATION_CREDENTIAL_ERROR",
    "DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED",
    "DELEGATION_CREDENTIAL_ROTATION_REQUIRED",
    "DELEGATION_CREDENTIAL_SECRET_ROTATED",
    "CALENDAR_ENTRY_REJECTED",
    "WRONG_ASSIGNMENT_REPORT",
    "PING",
];

/// The triggers a webhook can subscribe to: every known one but `PING`, which only the Test
/// button sends.
pub fn subscribable() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().copied().filter(|t| *t != "PING")
}

/// Label for a trigger the relay does not know (keeps metric cardinality bounded).
pub const OTHER: &str = "other";

/// Pseudo-trigger of a custom-template body (no `triggerEvent`): routes match it by this name.
pub const TEMPLATE: &str = "TEMPLATE";

/// Metric label for template bodies.
pub const TEMPLATE_LABEL: &str = "template";

/// The metric label of a trigger: its own name when known, [`OTHER`] otherwise.
pub fn label(trigger: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(trigger))
        .copied()
        .unwrap_or(OTHER)
}

/// Whether `trigger` is usable as a name: 1 to 64 ASCII letters, digits or `_`. Anything else
/// (spaces, `.`, `*`, `>`) could escape the naming hierarchy of a subject or routing key.
/// The triggers Cal.com sends flat (no `payload` object), which the relay wraps into the
/// envelope. A body without a `payload` object for any other trigger is a custom template.
pub const FLAT: &[&str] = &["MEETING_STARTED", "MEETING_ENDED"];

pub fn is_valid(trigger: &str) -> bool {
    !trigger.is_empty()
        && trigger.len() <= 64
        && trigger
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Default destination: `cal.` + the trigger in lower case with its first `_` turned into `.`.
pub fn default_destination(trigger: &str) -> String {
    let lower = trigger.to_ascii_lowercase();
    match lower.split_once('_') {
        Some((family, rest)) => format!("cal.{family}.{rest}"),
        None => format!("cal.{lower}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rule() {
        assert_eq!(
            default_destination("BOOKING_CREATED"),
            "cal.booking.created"
        );
        assert_eq!(
            default_destination("BOOKING_NO_SHOW_UPDATED"),
            "cal.booking.no_show_updated"
        );
        assert_eq!(default_destination("MEETING_ENDED"), "cal.meeting.ended");
        assert_eq!(
            default_destination("FORM_SUBMITTED_NO_EVENT"),
            "cal.form.submitted_no_event"
        );
        assert_eq!(default_destination("OOO_CREATED"), "cal.ooo.created");
        assert_eq!(default_destination("PING"), "cal.ping");
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label("BOOKING_CREATED"), "BOOKING_CREATED");
        assert_eq!(label("booking_created"), "BOOKING_CREATED");
        assert_eq!(label("SOMETHING_NEW"), OTHER);
    }

    #[test]
    fn validity() {
        assert!(is_valid("SOMETHING_NEW_2"));
        assert!(!is_valid(""));
        assert!(!is_valid("BOOKING.>"));
        assert!(!is_valid("A B"));
        assert!(!is_valid(&"A".repeat(65)));
    }
}
