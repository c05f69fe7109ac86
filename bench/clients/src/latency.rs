//! `latency`: delivery latency through the relay into NATS JetStream. Signed deliveries are
//! POSTed to the relay at a steady `--rate` over `--connections` keep-alive connections while an
//! ordered JetStream consumer reads the stream; each message is matched to its request by its
//! `cal-delivery-id` header, and the time from sending the request to the consumer holding the
//! message is what is reported (p50, p99): what durable acceptance costs downstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// The relay, host:port.
    #[arg(long)]
    pub relay: String,
    #[arg(long, default_value = "/webhooks/cal")]
    pub path: String,
    /// NATS server whose stream `CAL` the relay publishes to.
    #[arg(long)]
    pub nats: String,
    /// Bodies file written by `gen`.
    #[arg(long)]
    pub bodies: std::path::PathBuf,
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Deliveries per second, in all.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

/// One delivery to send: its id, and the whole HTTP request.
struct Request {
    id: String,
    bytes: Vec<u8>,
}

fn requests(args: &Args) -> anyhow::Result<Vec<Request>> {
    let text = std::fs::read_to_string(&args.bodies).context("bodies")?;
    let out: Vec<Request> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sig, body)| Request {
            id: hex::encode(sha2::Sha256::digest(body.as_bytes())),
            bytes: format!(
                "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 x-cal-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n{body}",
                args.path,
                args.relay,
                body.len()
            )
            .into_bytes(),
        })
        .collect();
    if out.is_empty() {
        bail!("no bodies");
    }
    Ok(out)
}

/// Read one HTTP/1.1 answer (head and a content-length body); its status.
async fn answer(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse())
                .transpose()?
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(head.get(9..12).unwrap_or("0").parse()?);
            }
        }
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&more[..n]);
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer};
    let requests = Arc::new(requests(&args)?);
    let js = jetstream::new(async_nats::connect(&args.nats).await?);
    let stream = js.get_stream("CAL").await.context("stream CAL")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let every = Duration::from_secs_f64(args.connections as f64 / args.rate.max(1) as f64);
    let mut senders = Vec::new();
    for c in 0..args.connections {
        let (requests, sent, relay) = (requests.clone(), sent.clone(), args.relay.clone());
        let offset = every.mul_f64(c as f64 / args.connections as f64);
        let step = args.connections;
        senders.push(tokio::spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(&relay).await?;
            conn.set_nodelay(true)?;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut n, mut refused, mut buf) = (c, 0u64, Vec::new());
            while Instant::now() < deadline {
                tick.tick().await;
                let r = &requests[n % requests.len()];
                n += step;
                sent.lock().unwrap().insert(r.id.clone(), Instant::now());
                conn.write_all(&r.bytes).await?;
                if !(200..300).contains(&answer(&mut conn, &mut buf).await?) {
                    refused += 1;
                }
            }
            anyhow::Ok(refused)
        }));
    }

    let mut latencies = Vec::new();
    let read_until = deadline + Duration::from_secs(5);
    loop {
        // Done when every request was sent and every message it made was read (or given up on).
        let now = Instant::now();
        let all_sent = now >= deadline && senders.iter().all(|s| s.is_finished());
        if now >= read_until || (all_sent && sent.lock().unwrap().is_empty()) {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), messages.next()).await;
        let Ok(Some(Ok(message))) = next else {
            continue;
        };
        let got = Instant::now();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("cal-delivery-id"))
            .map(|v| v.as_str().to_owned());
        if let Some(at) = id.and_then(|id| sent.lock().unwrap().remove(&id)) {
            latencies.push(got.duration_since(at).as_secs_f64() * 1e3);
        }
    }
    let mut refused = 0;
    for s in senders {
        refused += s.await??;
    }
    let delivered = latencies.len();
    let (p50, p99) = crate::p50_p99(latencies);
    println!(
        "delivered={delivered} lost={} refused={refused} p50_ms={p50:.2} p99_ms={p99:.2}",
        sent.lock().unwrap().len(),
    );
    Ok(())
}
