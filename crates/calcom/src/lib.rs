//! cal-relay's client of Cal.com API v2 for webhook subscriptions: the endpoints of each scope
//! (the API key's user, one event type, an organization), paged listings, retries of 429 and
//! 5xx answers with a bound, the subscriber URL rule Cal.com applies, and the comparison of a
//! webhook with the one the relay wants ([`Desired`]): the changes a `PATCH` must make, and the
//! differences `subscriptions check` reports.
//!
//! This crate knows Cal.com's API, not the relay: it must not read the relay's configuration,
//! touch its secrets files or print anything. It never logs the API key or a webhook's secret
//! (both are kept in [`Secret`], whose `Debug` is redacted).

mod client;
mod url_rule;
mod webhook;

pub use client::{ApiError, Client, Scope, API_VERSION, DEFAULT_API_URL};
pub use url_rule::check_subscriber_url;
pub use webhook::{Changes, Desired, Difference, NoShow, Secret, Webhook, PAYLOAD_VERSIONS};

/// The triggers that need `time` and `timeUnit` (the delay after the meeting's start).
pub const NO_SHOW_TRIGGERS: &[&str] = &[
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW",
];
