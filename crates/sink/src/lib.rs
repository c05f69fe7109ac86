//! The contract between the relay and its outputs: the [`Message`] a sink is handed and the
//! [`Sink`] trait it implements. A sink crate (file, Kafka, AMQP, NATS) depends on this crate
//! only; it must not know about HTTP, Cal.com payload fields or other sinks. This crate does no
//! I/O and starts no runtime.

pub mod cloudevents;
pub mod json;
pub mod plugin;

pub use plugin::{first_host, host_of, BoxError, Described, Protocol, SinkSettings};

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

/// One header of a message: a name (mostly static) and a text value.
pub type Header = (Cow<'static, str>, String);

/// What a sink publishes: one record, already routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable identity of the delivery: identical retries carry the same id. Sinks use it for
    /// broker-side de-duplication (`Nats-Msg-Id`, AMQP `message_id`).
    pub id: String,
    /// Topic, subject or routing key.
    pub destination: String,
    /// Partition/ordering key, when the delivery has one.
    pub key: Option<String>,
    /// Headers to attach, in order.
    pub headers: Vec<Header>,
    /// MIME type of `body`.
    pub content_type: String,
    /// The bytes to publish, untouched by the sink.
    pub body: Bytes,
    /// The producer of the message checked that `body` is JSON by [`json::is_json`]'s strict
    /// standard, so a sink that embeds it as JSON need not scan it again. `false` means not
    /// known, not "not JSON".
    pub json_checked: bool,
    /// When the relay received the delivery.
    pub received_at: SystemTime,
    /// The message's CloudEvents context attributes other than `specversion`, `id` and
    /// `datacontenttype` (`source`, `type`, `time`, `subject`, extensions), in order; rendered
    /// only by a sink configured for CloudEvents (see [`cloudevents`]).
    pub event: Vec<Header>,
}

impl Message {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A setting that takes one value or a list (`url = "a"` or `url = ["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `url` with any `user:password@` removed, for display (`check-config`, logs).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        None => url.rsplit('@').next().unwrap_or(url).to_owned(),
    }
}

/// Why a publish failed. `reason` is a short, stable, snake_case word used as a metric label and
/// in logs and error answers; `permanent` says whether retrying the same message can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct SinkError {
    pub reason: &'static str,
    pub detail: String,
    pub permanent: bool,
}

impl SinkError {
    /// A failure that may go away (broker down, timeout).
    pub fn transient(reason: &'static str, detail: impl fmt::Display) -> Self {
        SinkError {
            reason,
            detail: detail.to_string(),
            permanent: false,
        }
    }

    /// A failure that retrying the same message cannot fix (missing topic, too large).
    pub fn permanent(reason: &'static str, detail: impl fmt::Display) -> Self {
        SinkError {
            reason,
            detail: detail.to_string(),
            permanent: true,
        }
    }
}

/// An output of the relay. `publish` resolves only once the message is safe by this sink's
/// guarantee (written and flushed, acknowledged by the broker); the relay answers the sender
/// after every target sink's `publish` resolved.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Short name of the sink family, e.g. `file`, `kafka`.
    fn kind(&self) -> &'static str;

    /// The OpenTelemetry `messaging.system` of this sink's broker (`kafka`, `rabbitmq`, ...).
    fn messaging_system(&self) -> &'static str {
        self.kind()
    }

    /// The broker-specific messaging attributes of publishing `message` (semantic conventions,
    /// such as `messaging.kafka.message.key`), for the publish span.
    fn messaging_attributes(&self, _message: &Message) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Publish one message; resolve once it is safe.
    async fn publish(&self, message: &Message) -> Result<(), SinkError>;

    /// Whether the sink can publish right now (connected). Cheap; called by `/readyz`.
    fn ready(&self) -> bool {
        true
    }

    /// Flush and release resources; called once at shutdown.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_url_drops_credentials() {
        assert_eq!(
            super::redact_url("amqp://u:p@h:5672/%2f"),
            "amqp://h:5672/%2f"
        );
        assert_eq!(super::redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(super::redact_url("u:p@h:4222"), "h:4222");
    }
}
