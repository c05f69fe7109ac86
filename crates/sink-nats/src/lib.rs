//! The NATS sink: publishes each message on its subject, with the message's headers plus
//! `Nats-Msg-Id` (the message id, so JetStream drops retried duplicates) and the key. With
//! JetStream (the default) a publish resolves only on the stream's PubAck; with `jetstream =
//! false` it is core NATS, at-most-once, and resolves after a flush. It must not know about HTTP
//! or Cal.com beyond the message it is handed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, HeaderMap, ServerAddr};
use cal_relay_sink::{cloudevents, first_host, Message, OneOrMany, Sink, SinkError};
use serde::Deserialize;
use tokio::sync::OnceCell;

/// `[sinks.NAME] type = "nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// One server URL or several (`nats://host:4222`, `tls://…`).
    pub url: OneOrMany,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (JWT and nkey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// An nkey seed (`SU…`).
    #[serde(default)]
    pub nkey: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Publish through JetStream and wait for the PubAck (default true).
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// Create (or update) this stream on start so a fresh server works.
    #[serde(default)]
    pub stream: Option<StreamConfig>,
    /// How long to wait for a PubAck (or a flush in core mode).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Header that carries the message key.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// CloudEvents: `off` (default), `binary` (`ce-<attr>` headers, `ce-datacontenttype`
    /// included, values percent-encoded; the body unchanged) or `structured` (the event as
    /// JSON, for consumers of the NATS binding 1.0.2, which has no binary mode).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
}

/// `stream = { name = "CAL", subjects = ["cal.>"] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    /// JetStream's de-duplication window by `Nats-Msg-Id` (default 2 minutes).
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// Keep messages this long (0: forever).
    #[serde(default)]
    pub max_age_secs: u64,
    /// Copies of the stream in a JetStream cluster (3 for a three-node cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

/// A single value or a list.
fn yes() -> bool {
    true
}
fn default_ack_timeout_ms() -> u64 {
    5000
}
fn default_key_header() -> String {
    "cal-key".into()
}
fn default_duplicate_window_secs() -> u64 {
    120
}

/// Errors building the sink.
#[derive(Debug, thiserror::Error)]
pub enum NatsSinkError {
    #[error("url: {0}")]
    Url(String),
    #[error("credentials_file: {0}")]
    Credentials(std::io::Error),
    #[error("ca_file {0}: {1}")]
    CaFile(String, std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

impl NatsSinkConfig {
    /// Server URLs with any user:password removed, for display.
    pub fn describe(&self) -> String {
        let urls: Vec<String> = self
            .url
            .to_vec()
            .iter()
            .map(|u| cal_relay_sink::redact_url(u))
            .collect();
        let mode = if self.jetstream {
            "jetstream"
        } else {
            "core (at-most-once)"
        };
        let stream = self
            .stream
            .as_ref()
            .map(|s| format!(" stream={}:{}", s.name, s.subjects.join(",")))
            .unwrap_or_default();
        format!("url={} mode={mode}{stream}", urls.join(","))
    }

    /// What [`NatsSinkConfig::build`] checks, without connecting: the server URLs parse, and
    /// the credentials and CA files can be read.
    pub fn check(&self) -> Result<(), NatsSinkError> {
        for u in self.url.to_vec() {
            u.parse::<ServerAddr>().map_err(|e| {
                NatsSinkError::Url(format!("{}: {e}", cal_relay_sink::redact_url(&u)))
            })?;
        }
        if let Some(file) = &self.credentials_file {
            std::fs::metadata(file).map_err(NatsSinkError::Credentials)?;
        }
        if let Some(ca) = &self.ca_file {
            std::fs::metadata(ca)
                .map_err(|e| NatsSinkError::CaFile(ca.display().to_string(), e))?;
        }
        Ok(())
    }

    /// Connect (in the background: the relay starts while NATS is down and `ready()` says so)
    /// and, with `stream`, create or update the stream once connected.
    pub async fn build(&self) -> Result<NatsSink, NatsSinkError> {
        let servers = self
            .url
            .to_vec()
            .iter()
            .map(|u| {
                u.parse::<ServerAddr>()
                    .map_err(|e| NatsSinkError::Url(format!("{u}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = ConnectOptions::new()
            .name("cal-relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .require_tls(self.tls_required)
            .event_callback(|event| async move {
                tracing::info!(sink = "nats", %event, "nats connection event");
            });
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(file) = &self.credentials_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(NatsSinkError::Credentials)?;
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        let client = options.connect(servers).await?;
        let ack_timeout = Duration::from_millis(self.ack_timeout_ms.max(1));
        let mut context = jetstream::new(client.clone());
        context.set_timeout(ack_timeout);
        Ok(NatsSink {
            client,
            jetstream: self.jetstream.then_some(context),
            stream: self.stream.clone(),
            stream_ready: Arc::new(OnceCell::new()),
            ack_timeout,
            key_header: self.key_header.clone(),
            cloudevents: self.cloudevents,
        })
    }
}

/// A running NATS sink.
pub struct NatsSink {
    client: Client,
    jetstream: Option<jetstream::Context>,
    stream: Option<StreamConfig>,
    stream_ready: Arc<OnceCell<()>>,
    ack_timeout: Duration,
    key_header: String,
    cloudevents: cloudevents::Mode,
}

/// Whether `subject` is a publishable NATS subject: dot-separated non-empty tokens without
/// whitespace or wildcards.
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
        })
}

impl NatsSink {
    /// Create or update the configured stream, once per process (retried on later publishes
    /// until it succeeds).
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), SinkError> {
        let Some(cfg) = &self.stream else {
            return Ok(());
        };
        self.stream_ready
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: cfg.name.clone(),
                    subjects: cfg.subjects.clone(),
                    duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
                    max_age: Duration::from_secs(cfg.max_age_secs),
                    num_replicas: cfg.replicas.max(1),
                    ..Default::default()
                };
                js.create_or_update_stream(config)
                    .await
                    .map(|_| tracing::info!(stream = %cfg.name, "nats stream ready"))
                    .map_err(|e| {
                        SinkError::transient("stream_setup", format!("stream {}: {e}", cfg.name))
                    })
            })
            .await
            .map(|_| ())
    }

    fn headers(&self, message: &Message) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_ref(), value.as_str());
        }
        if let Some(key) = &message.key {
            headers.insert(self.key_header.as_str(), key.as_str());
        }
        headers.insert("Nats-Msg-Id", message.id.as_str());
        match self.cloudevents {
            cloudevents::Mode::Off => {}
            cloudevents::Mode::Binary => {
                for (name, value) in cloudevents::attributes(message) {
                    headers.insert(
                        format!("ce-{name}").as_str(),
                        cloudevents::percent_encode(value).as_ref(),
                    );
                }
                headers.insert(
                    format!("ce-{}", cloudevents::DATACONTENTTYPE).as_str(),
                    cloudevents::percent_encode(&message.content_type).as_ref(),
                );
            }
            cloudevents::Mode::Structured => {
                headers.insert("content-type", cloudevents::STRUCTURED_CONTENT_TYPE);
            }
        }
        headers
    }

    /// What the message's payload is: its body, or the structured event.
    fn payload(&self, message: &Message) -> bytes::Bytes {
        match self.cloudevents {
            cloudevents::Mode::Structured => cloudevents::structured(message).into(),
            _ => message.body.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn ready(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let subject = &message.destination;
        if !valid_subject(subject) {
            return Err(SinkError::permanent(
                "invalid_subject",
                format!("{subject:?} is not a valid NATS subject"),
            ));
        }
        let headers = self.headers(message);
        let payload = self.payload(message);
        let Some(js) = &self.jetstream else {
            if !self.ready() {
                return Err(SinkError::transient(
                    "disconnected",
                    "not connected to NATS",
                ));
            }
            // Core NATS: at-most-once; flush so the bytes at least left for the server.
            self.client
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| SinkError::transient("disconnected", e))?;
            return match tokio::time::timeout(self.ack_timeout, self.client.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::transient("disconnected", e)),
                Err(_) => Err(SinkError::transient("timeout", "flush timed out")),
            };
        };
        self.ensure_stream(js).await?;
        // Within the ack timeout, a publish waits out what a cluster does while it fails over
        // (no stream leader yet, the connected node gone): Nats-Msg-Id makes a retried
        // publish safe, the stream keeps one copy.
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let error = match self.publish_once(js, subject, &headers, &payload).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if error.permanent || tokio::time::Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(sink = "nats", %subject, reason = error.reason, "publish failed; retrying within the ack timeout");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn shutdown(&self) {
        let _ = tokio::time::timeout(self.ack_timeout, self.client.flush()).await;
    }
}

impl NatsSink {
    async fn publish_once(
        &self,
        js: &jetstream::Context,
        subject: &str,
        headers: &HeaderMap,
        payload: &bytes::Bytes,
    ) -> Result<(), SinkError> {
        if !self.ready() {
            return Err(SinkError::transient(
                "disconnected",
                "not connected to NATS",
            ));
        }
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone());
        // The context's timeout bounds both the hand-over to the connection and the PubAck
        // wait, so no timer of our own is needed.
        let result = async { js.send_publish(subject.to_owned(), publish).await?.await }.await;
        match result {
            // A duplicate ack means the stream already has it: success.
            Ok(_ack) => Ok(()),
            Err(e) => Err(match e.kind() {
                // "No responders": no stream covers the subject, or the stream has no leader
                // right now (an election in a cluster). Only a stream that is not there at all
                // is permanent.
                PublishErrorKind::StreamNotFound => self.missing_or_electing(js, subject).await,
                PublishErrorKind::TimedOut => {
                    SinkError::transient("timeout", format!("no PubAck for {subject} in time"))
                }
                PublishErrorKind::BrokenPipe => SinkError::transient("disconnected", e),
                PublishErrorKind::MaxPayloadExceeded => SinkError::permanent("too_large", e),
                _ => SinkError::transient("publish_failed", e),
            }),
        }
    }

    /// Tell a subject no stream covers (permanent) from a stream without a leader (transient):
    /// the configured stream exists by construction; otherwise ask JetStream, and count any
    /// answer but a definite "none" as transient.
    async fn missing_or_electing(&self, js: &jetstream::Context, subject: &str) -> SinkError {
        if let Some(cfg) = &self.stream {
            return SinkError::transient(
                "no_leader",
                format!("stream {} has no leader for {subject} right now", cfg.name),
            );
        }
        match js.stream_by_subject(subject).await {
            Ok(name) => SinkError::transient(
                "no_leader",
                format!("stream {name} has no leader for {subject} right now"),
            ),
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => SinkError::permanent(
                "no_stream",
                format!("no JetStream stream covers subject {subject}"),
            ),
            Err(e) => SinkError::transient(
                "no_leader",
                format!("JetStream did not answer for {subject}: {e}"),
            ),
        }
    }
}

#[async_trait::async_trait]
impl cal_relay_sink::SinkSettings for NatsSinkConfig {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn check(&self) -> Result<(), cal_relay_sink::BoxError> {
        Ok(NatsSinkConfig::check(self)?)
    }

    async fn build(&self) -> Result<std::sync::Arc<dyn Sink>, cal_relay_sink::BoxError> {
        Ok(std::sync::Arc::new(NatsSinkConfig::build(self).await?))
    }

    fn cloudevents(&self) -> cloudevents::Mode {
        self.cloudevents
    }

    fn summary(&self) -> String {
        self.describe()
    }

    fn described(&self) -> cal_relay_sink::Described {
        cal_relay_sink::Described {
            protocol: cal_relay_sink::Protocol::Nats {
                jetstream: self.jetstream,
            },
            host: first_host(&self.url),
            key_header: Some(self.key_header.clone()),
            cloudevents_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(valid_subject("cal.booking.created"));
        assert!(!valid_subject("cal.>"));
        assert!(!valid_subject("cal.*.x"));
        assert!(!valid_subject("cal..x"));
        assert!(!valid_subject("cal x"));
        assert!(!valid_subject(""));
    }

    #[test]
    fn describe_hides_credentials() {
        let c: NatsSinkConfig = serde_json_like(r#"nats://u:secret@127.0.0.1:4222"#);
        assert_eq!(c.describe(), "url=nats://127.0.0.1:4222 mode=jetstream");
    }

    fn serde_json_like(url: &str) -> NatsSinkConfig {
        NatsSinkConfig {
            url: OneOrMany::One(url.into()),
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            nkey: None,
            tls_required: false,
            ca_file: None,
            jetstream: true,
            stream: None,
            ack_timeout_ms: 5000,
            key_header: default_key_header(),
            cloudevents: Default::default(),
        }
    }
}
