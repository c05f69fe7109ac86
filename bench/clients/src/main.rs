//! Benchmark helpers, not part of the product.
//! - `gen`: N distinct signed BOOKING_CREATED bodies (from a fixture, one `uid` each) as
//!   `signature<TAB>body` lines for `bench/deliveries.lua`.
//! - `kafka`, `amqp`, `nats`: each broker's own Rust client publishing those messages with the
//!   guarantee the relay's sink uses (acks=all idempotent / publisher confirms, persistent /
//!   JetStream PubAck), `--inflight` at once, for `--secs`; prints the rate: the ceiling the
//!   relay's sink is compared with. Each message carries the headers the relay attaches
//!   (trigger, webhook version, delivery id, receive time, content type, key), so the broker
//!   does the same work per message in both runs.
//! - `latency`: the time from a delivery's request to a JetStream consumer reading it, through
//!   the relay (see `latency.rs`).
//! - `amqp --setup-only`, `nats --setup-only`: declare and empty the bench queue or stream, then
//!   exit (before the relay's run, so both runs start from an empty queue or stream).

mod latency;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::Digest;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Bodies file written by `gen`.
    #[arg(long)]
    bodies: PathBuf,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 64)]
    inflight: usize,
}

#[derive(Subcommand)]
enum Cmd {
    Gen {
        #[arg(long)]
        fixture: PathBuf,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
    },
    Kafka {
        #[arg(long)]
        brokers: String,
        #[command(flatten)]
        load: Load,
    },
    Amqp {
        #[arg(long)]
        url: String,
        #[arg(long)]
        exchange: String,
        /// Declare and purge the bench queue, publish nothing.
        #[arg(long)]
        setup_only: bool,
        #[command(flatten)]
        load: Load,
    },
    Latency(latency::Args),
    Nats {
        #[arg(long)]
        url: String,
        /// Create and purge the bench stream, publish nothing.
        #[arg(long)]
        setup_only: bool,
        #[command(flatten)]
        load: Load,
    },
}

/// One message as the relay would publish it.
struct Msg {
    id: String,
    key: String,
    body: Bytes,
    /// The relay's headers, key header included, in its order.
    headers: Vec<(&'static str, String)>,
}

const TOPIC: &str = "cal.booking.created";

fn read_bodies(path: &PathBuf) -> anyhow::Result<Vec<Msg>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Some((_, body)) = line.split_once('\t') else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(body)?;
        let id = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        let key = v["payload"]["uid"].as_str().unwrap_or_default().to_owned();
        let headers = vec![
            ("cal-trigger", "BOOKING_CREATED".to_owned()),
            ("cal-webhook-version", "2021-10-20".to_owned()),
            ("cal-delivery-id", id.clone()),
            ("cal-received-at", "2026-11-24T12:00:00.000Z".to_owned()),
            ("content-type", "application/json".to_owned()),
            ("cal-key", key.clone()),
        ];
        out.push(Msg {
            id,
            key,
            body: Bytes::from(body.to_owned()),
            headers,
        });
    }
    if out.is_empty() {
        bail!("no bodies in {}", path.display());
    }
    Ok(out)
}

/// Keep `inflight` publishes going for `secs`; print rate and latency percentiles.
async fn drive<'a, F, Fut>(
    name: &str,
    load: &Load,
    msgs: &'a [Msg],
    publish: F,
) -> anyhow::Result<()>
where
    F: Fn(usize, &'a Msg) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(load.secs);
    let mut pending = FuturesUnordered::new();
    let mut next = 0usize;
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut latencies = Vec::new();
    loop {
        while pending.len() < load.inflight && Instant::now() < deadline {
            let i = next;
            next += 1;
            let fut = publish(i, &msgs[i % msgs.len()]);
            pending.push(async move {
                let t = Instant::now();
                (fut.await, t.elapsed())
            });
        }
        match pending.next().await {
            Some((Ok(()), took)) => {
                ok += 1;
                latencies.push(took.as_secs_f64() * 1e3);
            }
            Some((Err(e), _)) => {
                if errors == 0 {
                    eprintln!("{name}: {e:#}");
                }
                errors += 1;
            }
            None => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99) = p50_p99(latencies);
    println!(
        "client={name} rate={:.0} ok={ok} errors={errors} p50_ms={p50:.2} p99_ms={p99:.2}",
        ok as f64 / secs,
    );
    Ok(())
}

/// The median and 99th percentile of `latencies` (0 when there are none).
fn p50_p99(mut latencies: Vec<f64>) -> (f64, f64) {
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (pct(0.50), pct(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Gen {
            fixture,
            secret,
            count,
            out,
        } => {
            let template: serde_json::Value = serde_json::from_slice(&std::fs::read(&fixture)?)?;
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            for i in 0..count {
                let mut v = template.clone();
                v["payload"]["uid"] = format!("bench-{i:06}").into();
                let body = serde_json::to_vec(&v)?;
                let sig = cal_relay_core::sign(secret.as_bytes(), &body);
                w.write_all(sig.as_bytes())?;
                w.write_all(b"\t")?;
                w.write_all(&body)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
        Cmd::Kafka { brokers, load } => {
            use rdkafka::message::{Header, OwnedHeaders};
            use rdkafka::producer::{FutureProducer, FutureRecord};
            let msgs = read_bodies(&load.bodies)?;
            let producer: FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "5000")
                .create()?;
            drive("kafka", &load, &msgs, |_, m| {
                let producer = producer.clone();
                async move {
                    let headers = m.headers.iter().fold(
                        OwnedHeaders::new_with_capacity(m.headers.len()),
                        |h, (key, value)| {
                            h.insert(Header {
                                key,
                                value: Some(value.as_str()),
                            })
                        },
                    );
                    let record = FutureRecord::to(TOPIC)
                        .key(m.key.as_str())
                        .payload(m.body.as_ref())
                        .headers(headers);
                    producer
                        .send(record, Duration::from_secs(5))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| anyhow::anyhow!(e))
                }
            })
            .await?;
        }
        Cmd::Amqp {
            url,
            exchange,
            setup_only,
            load,
        } => {
            use lapin::options::{
                BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
                QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
            };
            use lapin::types::{AMQPValue, FieldTable};
            let msgs = read_bodies(&load.bodies)?;
            let conn =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            ch.exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            // A durable, bounded queue so published messages are routed and persisted.
            let mut args = FieldTable::default();
            args.insert("x-max-length".into(), AMQPValue::LongInt(100_000));
            ch.queue_declare(
                "cal-relay-bench".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
            ch.queue_bind(
                "cal-relay-bench".into(),
                exchange.as_str().into(),
                "cal.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.queue_purge("cal-relay-bench".into(), QueuePurgeOptions::default())
                .await?;
            if setup_only {
                return Ok(());
            }
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            drive("amqp", &load, &msgs, |_, m| {
                let ch = ch.clone();
                let exchange = exchange.clone();
                async move {
                    let mut headers = FieldTable::default();
                    for (name, value) in &m.headers {
                        headers
                            .insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
                    }
                    let props = lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(m.id.as_str().into())
                        .with_timestamp(1_795_000_000)
                        .with_app_id("cal-relay".into())
                        .with_headers(headers);
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            TOPIC.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &m.body,
                            props,
                        )
                        .await?
                        .await?;
                    match confirm {
                        lapin::Confirmation::Ack(None) => Ok(()),
                        other => bail!("not confirmed: {other:?}"),
                    }
                }
            })
            .await?;
        }
        Cmd::Latency(args) => latency::run(args).await?,
        Cmd::Nats {
            url,
            setup_only,
            load,
        } => {
            use async_nats::jetstream::{self, message::PublishMessage, stream};
            let msgs = read_bodies(&load.bodies)?;
            let client = async_nats::connect(&url).await?;
            let js = jetstream::new(client);
            let cal = js
                .get_or_create_stream(stream::Config {
                    name: "CAL".into(),
                    subjects: vec!["cal.>".into()],
                    duplicate_window: Duration::from_secs(1),
                    ..Default::default()
                })
                .await?;
            cal.purge().await?;
            if setup_only {
                return Ok(());
            }
            drive("nats", &load, &msgs, |i, m| {
                let js = js.clone();
                async move {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        "Nats-Msg-Id",
                        format!("client-{}-{i}", &m.id[..16]).as_str(),
                    );
                    for (name, value) in &m.headers {
                        headers.insert(*name, value.as_str());
                    }
                    let publish = PublishMessage::build()
                        .payload(m.body.clone())
                        .headers(headers);
                    js.send_publish(TOPIC, publish).await?.await?;
                    Ok(())
                }
            })
            .await?;
        }
    }
    Ok(())
}
