//! The Kafka sink on rdkafka's `FutureProducer`: one record per message, topic = destination,
//! key = message key (one booking's events share a partition, in order), Kafka headers = message
//! headers, value = body bytes. A publish resolves on the broker's delivery report (acks=all and
//! the idempotent producer by default). A topic is checked once through metadata before its
//! first record, so a missing topic is a fast, distinct error (or is created, with
//! `create_topics`). It must not know about HTTP or Cal.com beyond the message it is handed.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cal_relay_sink::{cloudevents, Message, Sink, SinkError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;

/// `[sinks.NAME] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// `all` (default, also written `-1`), `1` or `0`.
    #[serde(default)]
    pub acks: Acks,
    #[serde(default = "yes")]
    pub enable_idempotence: bool,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Upper bound on waiting for a delivery report (1 s to 5 min; default 5 s).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Create a missing topic on first use (opt-in).
    #[serde(default)]
    pub create_topics: bool,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Passed through to librdkafka (`security.protocol`, `sasl.*`, `ssl.*`, …).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// CloudEvents: `off` (default), `binary` (`ce_<attr>` headers, `content-type` as the data
    /// content type, the body unchanged) or `structured` (the event as JSON).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
}

/// `acks`: how many replicas confirm a write before its delivery report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Acks {
    /// Every in-sync replica (the only setting that loses nothing on a broker failover).
    #[default]
    #[serde(rename = "all", alias = "-1")]
    All,
    #[serde(rename = "1")]
    Leader,
    #[serde(rename = "0")]
    None,
}

impl Acks {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// `compression`: librdkafka's `compression.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}
fn yes() -> bool {
    true
}
fn default_linger_ms() -> u64 {
    5
}
fn default_message_timeout_ms() -> u64 {
    5000
}
fn default_client_id() -> String {
    "cal-relay".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}

/// Errors building the sink.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("librdkafka: {0}")]
    Client(#[from] KafkaError),
}

impl KafkaSinkConfig {
    pub fn describe(&self) -> String {
        format!(
            "brokers={} acks={} idempotence={} compression={} create_topics={}",
            self.brokers,
            self.acks.as_str(),
            self.enable_idempotence,
            self.compression.as_str(),
            self.create_topics
        )
    }

    fn client_config(&self) -> Result<ClientConfig, KafkaSinkError> {
        let invalid = |key, message: &str| KafkaSinkError::Invalid {
            key,
            message: message.to_owned(),
        };
        if !(1_000..=300_000).contains(&self.message_timeout_ms) {
            return Err(invalid(
                "message_timeout_ms",
                "must be between 1000 and 300000",
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("acks", self.acks.as_str())
            .set("enable.idempotence", self.enable_idempotence.to_string())
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("allow.auto.create.topics", "false");
        for (k, v) in &self.options {
            config.set(k, v);
        }
        Ok(config)
    }

    /// Create the producer (connections are made in the background) and start the readiness
    /// probe.
    /// What [`KafkaSinkConfig::build`] checks, without creating a client or touching the
    /// network: the settings, then librdkafka's own check of every property it is given.
    pub fn check(&self) -> Result<(), KafkaSinkError> {
        self.client_config()?.create_native_config()?;
        Ok(())
    }

    pub fn build(&self) -> Result<KafkaSink, KafkaSinkError> {
        let config = self.client_config()?;
        let producer: FutureProducer = config.create()?;
        let admin: Option<AdminClient<DefaultClientContext>> = if self.create_topics {
            Some(config.create()?)
        } else {
            None
        };
        let ready = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(probe(producer.clone(), ready.clone()));
        Ok(KafkaSink {
            producer,
            admin,
            known_topics: RwLock::new(HashSet::new()),
            ready,
            probe,
            partitions: self.partitions,
            replication: self.replication_factor,
            timeout: Duration::from_millis(self.message_timeout_ms),
            cloudevents: self.cloudevents,
        })
    }
}

/// Every second, ask the cluster for metadata: ready while it answers.
async fn probe(producer: FutureProducer, ready: Arc<AtomicBool>) {
    loop {
        let p = producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_millis(1500))
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false);
        if ready.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!(sink = "kafka", "kafka cluster reachable");
            } else {
                tracing::warn!(sink = "kafka", "kafka cluster unreachable");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A running Kafka sink.
pub struct KafkaSink {
    producer: FutureProducer,
    admin: Option<AdminClient<DefaultClientContext>>,
    known_topics: RwLock<HashSet<String>>,
    ready: Arc<AtomicBool>,
    probe: tokio::task::JoinHandle<()>,
    partitions: i32,
    replication: i32,
    timeout: Duration,
    cloudevents: cloudevents::Mode,
}

/// What the cluster says about a topic.
enum TopicState {
    Exists,
    Missing,
}

impl KafkaSink {
    fn is_known(&self, topic: &str) -> bool {
        self.known_topics
            .read()
            .map(|set| set.contains(topic))
            .unwrap_or(false)
    }

    fn remember(&self, topic: &str) {
        if let Ok(mut set) = self.known_topics.write() {
            set.insert(topic.to_owned());
        }
    }

    async fn topic_state(&self, topic: &str) -> Result<TopicState, SinkError> {
        let producer = self.producer.clone();
        let name = topic.to_owned();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&name), timeout)
        })
        .await
        .map_err(|e| SinkError::transient("publish_failed", e))?
        .map_err(|e| SinkError::transient("unreachable", format!("metadata for {topic}: {e}")))?;
        let entry = metadata.topics().iter().find(|t| t.name() == topic);
        Ok(
            match entry.and_then(|t| t.error()).map(RDKafkaErrorCode::from) {
                None if entry.is_some_and(|t| !t.partitions().is_empty()) => TopicState::Exists,
                None => TopicState::Missing,
                Some(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                ) => TopicState::Missing,
                Some(code) => {
                    return Err(SinkError::transient(
                        "unreachable",
                        format!("metadata for {topic}: {code}"),
                    ))
                }
            },
        )
    }

    /// Make sure `topic` exists before its first record: fail fast when it does not (or create
    /// it with `create_topics`).
    async fn ensure_topic(&self, topic: &str) -> Result<(), SinkError> {
        if self.is_known(topic) {
            return Ok(());
        }
        if let TopicState::Exists = self.topic_state(topic).await? {
            self.remember(topic);
            return Ok(());
        }
        let Some(admin) = &self.admin else {
            return Err(SinkError::permanent(
                "unknown_topic",
                format!("topic {topic} does not exist (create it, or set create_topics = true)"),
            ));
        };
        let new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| SinkError::transient("create_topic", format!("{topic}: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(SinkError::transient(
                        "create_topic",
                        format!("{topic}: {code}"),
                    ))
                }
            }
        }
        tracing::info!(
            sink = "kafka",
            topic,
            partitions = self.partitions,
            "created topic"
        );
        // The producer learns about the new topic through its next metadata refresh.
        for _ in 0..50 {
            if let TopicState::Exists = self.topic_state(topic).await? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.remember(topic);
        Ok(())
    }
}

fn classify(topic: &str, error: KafkaError) -> SinkError {
    let code = error.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            SinkError::permanent("unknown_topic", format!("topic {topic} does not exist"))
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => SinkError::permanent(
            "too_large",
            format!("record for {topic} is too large: {error}"),
        ),
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            SinkError::transient("timeout", format!("no delivery report for {topic} in time"))
        }
        Some(RDKafkaErrorCode::QueueFull) => SinkError::transient("queue_full", error),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
            SinkError::transient("unreachable", error)
        }
        // A cluster failing over: the partition's leader moved or is being elected, or too
        // few in-sync replicas to satisfy acks=all right now. Retrying is what fixes these.
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::FencedLeaderEpoch
            | RDKafkaErrorCode::UnknownLeaderEpoch
            | RDKafkaErrorCode::PreferredLeaderNotAvailable
            | RDKafkaErrorCode::ElectionNotNeeded,
        ) => SinkError::transient("no_leader", error),
        Some(
            RDKafkaErrorCode::NotEnoughReplicas | RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        ) => SinkError::transient("not_enough_replicas", error),
        // What retrying cannot fix (as in Vector's Kafka sink): authorization, and records the
        // broker refuses as such.
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
        ) => SinkError::permanent("unauthorized", error),
        Some(
            RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRequiredAcks,
        ) => SinkError::permanent("invalid_record", error),
        _ => SinkError::transient("publish_failed", error),
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn messaging_attributes(&self, message: &Message) -> Vec<(&'static str, String)> {
        match &message.key {
            Some(key) => vec![("messaging.kafka.message.key", key.clone())],
            None => Vec::new(),
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let topic = message.destination.as_str();
        self.ensure_topic(topic).await?;
        let mode = self.cloudevents;
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 10);
        for (name, value) in &message.headers {
            let value = if mode == cloudevents::Mode::Structured
                && name.eq_ignore_ascii_case("content-type")
            {
                cloudevents::STRUCTURED_CONTENT_TYPE
            } else {
                value.as_str()
            };
            headers = headers.insert(Header {
                key: name.as_ref(),
                value: Some(value.as_bytes()),
            });
        }
        // The Kafka binding: `ce_` headers, the data content type in `content-type` (one of
        // the message's headers already).
        let mut ce_names = Vec::new();
        if mode == cloudevents::Mode::Binary {
            ce_names = cloudevents::attributes(message)
                .map(|(name, value)| (format!("ce_{name}"), value))
                .collect();
        }
        for (name, value) in &ce_names {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: Some(value.as_bytes()),
            });
        }
        let structured;
        let payload: &[u8] = if mode == cloudevents::Mode::Structured {
            structured = cloudevents::structured(message);
            &structured
        } else {
            message.body.as_ref()
        };
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        // The delivery report arrives within message.timeout.ms; the queue wait is bounded too.
        match self.producer.send(record, self.timeout).await {
            Ok(_delivery) => Ok(()),
            Err((error, _)) => Err(classify(topic, error)),
        }
    }

    async fn shutdown(&self) {
        self.probe.abort();
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

#[async_trait::async_trait]
impl cal_relay_sink::SinkSettings for KafkaSinkConfig {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn check(&self) -> Result<(), cal_relay_sink::BoxError> {
        Ok(KafkaSinkConfig::check(self)?)
    }

    async fn build(&self) -> Result<std::sync::Arc<dyn Sink>, cal_relay_sink::BoxError> {
        Ok(std::sync::Arc::new(KafkaSinkConfig::build(self)?))
    }

    fn cloudevents(&self) -> cloudevents::Mode {
        self.cloudevents
    }

    fn summary(&self) -> String {
        self.describe()
    }

    fn described(&self) -> cal_relay_sink::Described {
        cal_relay_sink::Described {
            protocol: cal_relay_sink::Protocol::Kafka,
            host: self
                .brokers
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
            key_header: None,
            cloudevents_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_errors_are_transient_and_refusals_permanent() {
        let c = |code| classify("t", KafkaError::MessageProduction(code));
        for code in [
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert!(!c(code).permanent, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(c(code).permanent, "{code:?}");
        }
    }
}
