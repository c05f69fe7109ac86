//! The shared RabbitMQ (started by `scripts/brokers.sh`, address in `AMQP_URL`) seen through a
//! real lapin client: declare an exchange and bound queues, read what arrived.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .expect("AMQP_URL is not set: run the tests through scripts/test.sh, which starts RabbitMQ")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), super::free_port())
}

pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// Declare `exchange` as the relay does (durable topic) and a queue bound with `pattern`.
pub async fn bound_queue(channel: &Channel, exchange: &str, pattern: &str) -> String {
    declare_bound(channel, exchange, pattern, false).await
}

/// A durable queue (survives a broker restart) bound to `exchange` with `pattern`.
pub async fn durable_queue(channel: &Channel, exchange: &str, pattern: &str) -> String {
    declare_bound(channel, exchange, pattern, true).await
}

async fn declare_bound(channel: &Channel, exchange: &str, pattern: &str, durable: bool) -> String {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = unique(if durable { "dq" } else { "q" });
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable,
                auto_delete: !durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

/// Every message in `queue`, waiting up to `idle` for each next one.
pub async fn drain(channel: &Channel, queue: &str, idle: Duration) -> Vec<Delivery> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            super::amqp::unique("c").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer.next()).await {
        out.push(delivery.unwrap());
    }
    out
}

/// A header of a delivery as text.
pub fn header(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Run `scripts/brokers.sh ACTION` (e.g. `rabbit-stop-app`, `rabbit-start-app`).
pub fn broker(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/brokers.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "brokers.sh {action} failed");
}
