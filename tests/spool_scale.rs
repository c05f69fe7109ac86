//! A long outage at scale: 100,000 deliveries (265 MB of log) spooled while NATS is down, a
//! kill -9 and restart on that backlog, then the broker back. Memory must not follow the
//! backlog's bytes: the relay's heap (anonymous RSS, sampled) stays under 64 MB while
//! accepting, after the restart and while draining; and every delivery reaches the stream once,
//! per booking in the order it was accepted. Its own test binary: it loads the machine.
//!
//! The figures (accept rate, peak RSS with the binary's own pages, time to be healthy again,
//! drain rate) are printed and written to `target/spool-scale.txt`; only memory and the
//! messages are asserted. `CAL_RELAY_BIN=target/release/cal-relay` takes them from the
//! binary that ships (the debug build's code pages alone are 24 MB of its RSS).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use support::nats::{stream_messages, NatsServer};
use support::*;

const KEYS: u64 = 1_000;
const PER_KEY: u64 = 100;
const WORKERS: u64 = 8;
const HEAP_LIMIT_KB: u64 = 64 * 1024;

/// Memory of process `pid` in KiB: `RssAnon` (its heap and stacks) and `VmHWM` (peak RSS,
/// code pages included).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("VmHWM:"))
}

/// Peaks seen in one phase.
#[derive(Default)]
struct Peak {
    heap: u64,
    rss: u64,
}

impl Peak {
    fn sample(&mut self, pid: u32) {
        let (heap, rss) = memory_kb(pid);
        self.heap = self.heap.max(heap);
        self.rss = self.rss.max(rss);
    }
}

/// One keep-alive connection sending the deliveries of keys `worker, worker + WORKERS, ...`,
/// each key's in sequence order: what the stream must keep per key.
async fn send_share(addr: SocketAddr, worker: u64) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut sent = 0;
    for n in 0..PER_KEY {
        for key in (worker..KEYS).step_by(WORKERS as usize) {
            let post = signed_booking(&booking(&format!("scale-{key}"), n));
            let mut req = Request::post(post.path).header("host", addr.to_string());
            for (k, v) in &post.headers {
                req = req.header(*k, v);
            }
            sender.ready().await.unwrap();
            let response = sender
                .send_request(req.body(Full::new(Bytes::from(post.body))).unwrap())
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
            sent += 1;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pending_deliveries_in_bounded_memory() {
    let total = KEYS * PER_KEY;
    let mut nats = NatsServer::start();
    nats.down();
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 2000\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}",
        nats.url()
    );
    let config = one_sink_config("bus", &sink)
        + &spool_section("max_bytes = 1073741824\nretry_initial_ms = 200\nretry_max_ms = 1000");
    let mut relay = RelayProcess::start(&config).await;

    // Accept the backlog with the broker down.
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(send_share(relay.addr, w)))
        .collect();
    let mut accepting = Peak::default();
    let mut done = 0;
    for w in workers {
        while !w.is_finished() {
            accepting.sample(relay.child.id());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done += w.await.unwrap();
    }
    assert_eq!(done, total);
    let accept_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.metric("cal_relay_spool_entries").await < total as f64 {
        assert!(
            Instant::now() < deadline,
            "the gauge never showed the backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spool_bytes = relay.metric("cal_relay_spool_bytes").await;
    accepting.sample(relay.child.id());

    // kill -9 and start again on the backlog: time until it listens and is healthy.
    let restart_started = Instant::now();
    relay.restart().await;
    let restart_secs = restart_started.elapsed().as_secs_f64();
    assert_eq!(
        relay.metric("cal_relay_spool_entries").await,
        total as f64,
        "the backlog survived the restart"
    );
    let mut restarted = Peak::default();
    restarted.sample(relay.child.id());

    // The broker back: everything drains.
    nats.up();
    let drain_started = Instant::now();
    let mut draining = Peak::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while relay.metric("cal_relay_spool_entries").await > 0.0 {
        assert!(Instant::now() < deadline, "the backlog never drained");
        draining.sample(relay.child.id());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let (heap_after, _) = memory_kb(relay.child.id());
    let compacted = relay.metric("cal_relay_spool_compacted_total").await;

    let figures = format!(
        "spool scale: {total} deliveries accepted with the broker down at {:.0}/s ({:.0} MB of log); \
         peak RSS (heap) {} ({}) MB accepting, {} ({}) MB after the restart, {} ({}) MB draining, \
         heap {} MB drained; healthy {:.2} s after a kill -9 on the backlog; drained at {:.0}/s \
         ({compacted} entries compacted; {})\n",
        total as f64 / accept_secs,
        spool_bytes / 1e6,
        accepting.rss / 1024,
        accepting.heap / 1024,
        restarted.rss / 1024,
        restarted.heap / 1024,
        draining.rss / 1024,
        draining.heap / 1024,
        heap_after / 1024,
        restart_secs,
        total as f64 / drain_secs,
        relay_binary().display(),
    );
    print!("{figures}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spool-scale.txt"),
        &figures,
    );
    for (what, peak) in [
        ("accepting", &accepting),
        ("after the restart", &restarted),
        ("draining", &draining),
    ] {
        assert!(
            peak.heap < HEAP_LIMIT_KB,
            "heap {what}: {} MB, over 64 MB",
            peak.heap / 1024
        );
    }

    // Every delivery once, per booking in the order accepted.
    let messages = stream_messages(&nats.url(), "CAL").await;
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &messages {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let uid = v["payload"]["uid"].as_str().unwrap().to_owned();
        by_key.entry(uid).or_default().push(booking_seq(&m.payload));
    }
    assert_eq!(messages.len() as u64, total, "each delivery once");
    assert_eq!(by_key.len() as u64, KEYS);
    let in_order: Vec<u64> = (0..PER_KEY).collect();
    for (key, seqs) in &by_key {
        assert_eq!(seqs, &in_order, "order of {key}");
    }
}
