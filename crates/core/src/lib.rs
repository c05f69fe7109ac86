//! What cal-relay knows about Cal.com, as pure functions: which triggers exist and how they are
//! named downstream ([`trigger`]), how `X-Cal-Signature-256` is checked ([`verify`]), how a body
//! is brought into the standard envelope ([`normalize`]), how a trigger picks its sinks
//! ([`route`]), and how all of that becomes the [`Message`](cal_relay_sink::Message) handed to
//! sinks ([`pipeline`]). No I/O, no clock reads, no async runtime: callers pass the time in.

pub mod normalize;
pub mod pipeline;
pub mod route;
pub mod trigger;
pub mod verify;

pub use normalize::{normalize, NormalizeError, Normalized, Shape};
pub use pipeline::{
    event_time, event_type, webhook_version, Freshness, Inbound, Prepared, Rejection, Source,
    Verified, DEFAULT_EVENT_SOURCE, DEFAULT_TEMPLATE_EVENT_TYPE, EVENT_TYPE_PREFIX,
};
pub use route::{Route, RouteError, RouteTable};
pub use verify::{fingerprint, sign, Signed, Verifier, VerifyError};
