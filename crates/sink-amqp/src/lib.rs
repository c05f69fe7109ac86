//! The AMQP 0-9-1 sink (RabbitMQ) on lapin: publishes each message to one exchange with the
//! destination as routing key, persistent and `mandatory`, on a channel in confirm mode. A
//! publish resolves only on the broker's ack; a nack, a returned (unroutable) message or a
//! timeout is an error. Many publishes are in flight on the channel at once. A supervisor task
//! reconnects with backoff and redeclares the exchange. It must not know about HTTP or Cal.com
//! beyond the message it is handed.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cal_relay_sink::{cloudevents, first_host, Message, OneOrMany, Sink, SinkError};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;

/// `[sinks.NAME] type = "amqp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// `amqp://user:pass@host:port/vhost` (`amqps://` for TLS).
    /// One broker URL, or every node of a cluster: connections go to the first that answers,
    /// and move to the next when one is lost.
    pub url: OneOrMany,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// `topic` (default), `direct`, `fanout` or `headers`.
    #[serde(default)]
    pub exchange_type: ExchangeType,
    /// Declare the exchange (durable) on every (re)connection (default true).
    #[serde(default = "yes")]
    pub declare_exchange: bool,
    /// Delivery mode 2: the broker writes the message to disk (default true).
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Unroutable messages come back and the publish fails (default true).
    #[serde(default = "yes")]
    pub mandatory: bool,
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Header that carries the message key.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// CloudEvents: `off` (default), `binary` (a header per attribute, the data content type
    /// in `content_type`, `type` and `message_id` properties, the body unchanged) or
    /// `structured` (the event as JSON).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
    /// Prefix of binary-mode headers: `ce-` (default: the CloudEvents SDKs' RabbitMQ binding,
    /// Knative) or `cloudEvents_` (the AMQP 1.0 binding's form).
    #[serde(default = "default_cloudevents_prefix")]
    pub cloudevents_prefix: String,
}

fn default_cloudevents_prefix() -> String {
    "ce-".into()
}

fn default_exchange() -> String {
    "cal".into()
}
/// `exchange_type`: how the exchange routes by the routing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    #[default]
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl ExchangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}
fn yes() -> bool {
    true
}
fn default_confirm_timeout_ms() -> u64 {
    5000
}
fn default_key_header() -> String {
    "cal-key".into()
}

/// Errors building the sink.
#[derive(Debug, thiserror::Error)]
pub enum AmqpSinkError {
    #[error("url must start with amqp:// or amqps://")]
    Url,
    #[error("url {0}: {1}")]
    Uri(String, String),
}

impl AmqpSinkConfig {
    /// URL without credentials and the exchange, for display.
    pub fn describe(&self) -> String {
        let url = self
            .url
            .to_vec()
            .iter()
            .map(|u| cal_relay_sink::redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "url={url} exchange={} ({})",
            self.exchange,
            self.exchange_type.as_str()
        )
    }

    fn kind(&self) -> ExchangeKind {
        match self.exchange_type {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Headers => ExchangeKind::Headers,
        }
    }

    /// What [`AmqpSinkConfig::build`] checks, without connecting: every URL parses as an AMQP
    /// URI, and the exchange type is known.
    pub fn check(&self) -> Result<(), AmqpSinkError> {
        let urls = self.url.to_vec();
        if urls.is_empty() {
            return Err(AmqpSinkError::Url);
        }
        for url in &urls {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(AmqpSinkError::Url);
            }
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|e| AmqpSinkError::Uri(cal_relay_sink::redact_url(url), e))?;
        }
        Ok(())
    }

    /// Start the sink: a supervisor task connects (and keeps reconnecting) in the background, so
    /// the relay starts while the broker is down and `ready()` says so.
    pub fn build(&self) -> Result<AmqpSink, AmqpSinkError> {
        let urls = self.url.to_vec();
        if urls.is_empty()
            || !urls
                .iter()
                .all(|u| u.starts_with("amqp://") || u.starts_with("amqps://"))
        {
            return Err(AmqpSinkError::Url);
        }
        let kind = self.kind();
        let channel = Arc::new(ArcSwapOption::empty());
        let supervisor = tokio::spawn(supervise(self.clone(), kind, channel.clone()));
        Ok(AmqpSink {
            channel,
            supervisor,
            exchange: ShortString::from(self.exchange.as_str()),
            persistent: self.persistent,
            mandatory: self.mandatory,
            confirm_timeout: Duration::from_millis(self.confirm_timeout_ms.max(1)),
            key_header: ShortString::from(self.key_header.as_str()),
            cloudevents: self.cloudevents,
            cloudevents_prefix: self.cloudevents_prefix.clone(),
        })
    }
}

/// Connect, declare, enable confirms; publish through that channel until the connection fails;
/// then start over with exponential backoff (100 ms to 5 s).
async fn supervise(config: AmqpSinkConfig, kind: ExchangeKind, slot: Arc<ArcSwapOption<Channel>>) {
    let mut backoff = Duration::from_millis(100);
    let urls = config.url.to_vec();
    let mut next = 0usize;
    loop {
        // Every node in turn, starting after the last one used: a lost node is not retried
        // first.
        let url = urls[next % urls.len()].clone();
        next = next.wrapping_add(1);
        match connect(&config, &url, kind.clone()).await {
            Ok((connection, channel)) => {
                tracing::info!(sink = "amqp", exchange = %config.exchange, node = %cal_relay_sink::redact_url(&url), "amqp connected");
                backoff = Duration::from_millis(100);
                let mut events = connection.events_listener();
                slot.store(Some(Arc::new(channel.clone())));
                loop {
                    tokio::select! {
                        event = events.next() => match event {
                            Some(lapin::Event::Error(e)) => {
                                tracing::warn!(sink = "amqp", error = %e, "amqp connection error");
                                break;
                            }
                            None => break,
                            Some(_) => {}
                        },
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    if !connection.status().connected() || !channel.status().connected() {
                        break;
                    }
                }
                slot.store(None);
                let _ = connection.close(200, "reconnecting".into()).await;
                tracing::warn!(sink = "amqp", "amqp connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(sink = "amqp", node = %cal_relay_sink::redact_url(&url), error = %e, retry_in_ms = backoff.as_millis() as u64, "amqp connect failed")
            }
        }
        // Back off only after every node was tried once.
        if next.is_multiple_of(urls.len()) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn connect(
    config: &AmqpSinkConfig,
    url: &str,
    kind: ExchangeKind,
) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default();
    let connect = Connection::connect(url, properties);
    let connection = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
            )
        }
    };
    let channel = connection.create_channel().await?;
    if config.declare_exchange {
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// A running AMQP sink.
pub struct AmqpSink {
    channel: Arc<ArcSwapOption<Channel>>,
    supervisor: tokio::task::JoinHandle<()>,
    exchange: ShortString,
    persistent: bool,
    mandatory: bool,
    confirm_timeout: Duration,
    key_header: ShortString,
    cloudevents: cloudevents::Mode,
    cloudevents_prefix: String,
}

impl AmqpSink {
    fn current(&self) -> Option<Channel> {
        self.channel
            .load()
            .as_deref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    fn properties(&self, message: &Message) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in &message.headers {
            headers.insert(
                name.as_ref().into(),
                AMQPValue::LongString(value.as_str().into()),
            );
        }
        if let Some(key) = &message.key {
            headers.insert(
                self.key_header.clone(),
                AMQPValue::LongString(key.as_str().into()),
            );
        }
        let mut content_type = message.content_type.as_str();
        match self.cloudevents {
            cloudevents::Mode::Off => {}
            cloudevents::Mode::Binary => {
                for (name, value) in cloudevents::attributes(message) {
                    headers.insert(
                        format!("{}{name}", self.cloudevents_prefix).into(),
                        AMQPValue::LongString(value.into()),
                    );
                }
            }
            cloudevents::Mode::Structured => content_type = cloudevents::STRUCTURED_CONTENT_TYPE,
        }
        let timestamp = message
            .received_at
            .duration_since(UNIX_EPOCH)
            .or_else(|_| SystemTime::now().duration_since(UNIX_EPOCH))
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let properties = BasicProperties::default()
            .with_content_type(content_type.into())
            .with_message_id(message.id.as_str().into())
            .with_timestamp(timestamp)
            .with_app_id("cal-relay".into())
            .with_delivery_mode(if self.persistent { 2 } else { 1 })
            .with_headers(headers);
        match cloudevents::attribute(message, "type") {
            Some(kind) if self.cloudevents == cloudevents::Mode::Binary => {
                properties.with_type(kind.into())
            }
            _ => properties,
        }
    }
}

#[async_trait::async_trait]
impl Sink for AmqpSink {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    fn messaging_attributes(&self, message: &Message) -> Vec<(&'static str, String)> {
        vec![(
            "messaging.rabbitmq.destination.routing_key",
            message.destination.clone(),
        )]
    }

    fn ready(&self) -> bool {
        self.current().is_some()
    }

    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        if message.destination.len() > 255 {
            return Err(SinkError::permanent(
                "invalid_routing_key",
                "routing key longer than 255 bytes",
            ));
        }
        // While the supervisor moves to another node, wait for it within the confirm timeout
        // rather than failing at once.
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let channel = loop {
            if let Some(channel) = self.current() {
                break channel;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SinkError::transient(
                    "disconnected",
                    "not connected to the AMQP broker",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let routing_key = message.destination.as_str();
        let structured;
        let body: &[u8] = if self.cloudevents == cloudevents::Mode::Structured {
            structured = cloudevents::structured(message);
            &structured
        } else {
            &message.body
        };
        let confirmed = async {
            channel
                .basic_publish(
                    self.exchange.clone(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: self.mandatory,
                        ..Default::default()
                    },
                    body,
                    self.properties(message),
                )
                .await?
                .await
        };
        match tokio::time::timeout_at(deadline, confirmed).await {
            Err(_) => Err(SinkError::transient(
                "timeout",
                format!("no confirm for {routing_key} in time"),
            )),
            Ok(Err(e)) => Err(SinkError::transient("disconnected", e)),
            // RabbitMQ acks a returned mandatory message: the return is what says it was lost.
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(SinkError::permanent(
                "unroutable",
                format!(
                    "no queue is bound for routing key {routing_key} on exchange {} ({})",
                    self.exchange, returned.reply_text
                ),
            )),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(SinkError::transient(
                "nack",
                format!("the broker refused {routing_key}"),
            )),
            Ok(Ok(Confirmation::NotRequested)) => Err(SinkError::transient(
                "no_confirm",
                "publisher confirms are off",
            )),
        }
    }

    async fn shutdown(&self) {
        self.supervisor.abort();
        if let Some(channel) = self.current() {
            let _ = channel.close(200, "shutdown".into()).await;
        }
    }
}

#[async_trait::async_trait]
impl cal_relay_sink::SinkSettings for AmqpSinkConfig {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn check(&self) -> Result<(), cal_relay_sink::BoxError> {
        Ok(AmqpSinkConfig::check(self)?)
    }

    async fn build(&self) -> Result<std::sync::Arc<dyn Sink>, cal_relay_sink::BoxError> {
        Ok(std::sync::Arc::new(AmqpSinkConfig::build(self)?))
    }

    fn cloudevents(&self) -> cloudevents::Mode {
        self.cloudevents
    }

    fn summary(&self) -> String {
        self.describe()
    }

    fn described(&self) -> cal_relay_sink::Described {
        cal_relay_sink::Described {
            protocol: cal_relay_sink::Protocol::Amqp {
                exchange: self.exchange.clone(),
                exchange_type: self.exchange_type.as_str().to_owned(),
                persistent: self.persistent,
            },
            host: first_host(&self.url),
            key_header: Some(self.key_header.clone()),
            cloudevents_prefix: Some(self.cloudevents_prefix.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hides_credentials() {
        let c = AmqpSinkConfig {
            url: OneOrMany::One("amqp://user:secret@rabbit:5672/%2f".into()),
            exchange: default_exchange(),
            exchange_type: ExchangeType::Topic,
            declare_exchange: true,
            persistent: true,
            mandatory: true,
            confirm_timeout_ms: 1,
            key_header: default_key_header(),
            cloudevents: Default::default(),
            cloudevents_prefix: default_cloudevents_prefix(),
        };
        assert_eq!(
            c.describe(),
            "url=amqp://rabbit:5672/%2f exchange=cal (topic)"
        );
    }
}
