//! Durable acceptance (`[delivery] mode = "spool"`) against real brokers: a relay killed with
//! SIGKILL mid-load loses nothing it answered 2xx for (Kafka), a full spool with the sink down
//! answers 503 with the reason (NATS), a torn log tail is cut on start and the rest delivered
//! (NATS), a delivery POSTed three times is published once (AMQP), and a message the broker
//! refuses permanently becomes a dead letter that `cal-relay spool replay` delivers later (AMQP).

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::amqp::{amqp_url, bound_queue, channel, drain, unique};
use support::kafka::{header, Tansu};
use support::nats::NatsServer;
use support::*;

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

fn spool_cli(relay: &RelayProcess, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["spool", "--dir"])
        .arg(relay.path("spool"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_accepted_delivery() {
    const TOTAL: u64 = 2000;
    let tansu = Tansu::start();
    let sink = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = true\npartitions = 3",
        tansu.bootstrap()
    );
    let config = one_sink_config("kafka", &sink) + &spool_section("");
    let mut relay = RelayProcess::start(&config).await;
    let addr = relay.addr;
    let pid = relay.child.id();

    let bodies: Vec<Vec<u8>> = (0..TOTAL)
        .map(|n| booking(&format!("kill-{}", n % 50), n))
        .collect();
    let accepted = Arc::new(AtomicUsize::new(0));
    let killer = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while accepted.load(Ordering::Relaxed) < 700 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
    };
    let results: Vec<(usize, bool)> = futures_util::stream::iter(bodies.iter().enumerate())
        .map(|(i, body)| {
            let accepted = accepted.clone();
            async move {
                let ok = matches!(post(addr, signed_booking(body)).await, Ok((s, _)) if is_2xx(s));
                if ok {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                (i, ok)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    killer.await.unwrap();
    let first_round = results.iter().filter(|r| r.1).count();
    assert!(
        first_round >= 700 && first_round < TOTAL as usize,
        "the kill came mid-load: {first_round} accepted"
    );

    // Restart on the same spool; send again what was not accepted, as Cal.com retries.
    relay.restart().await;
    for (i, ok) in &results {
        if !ok {
            let (status, body) = post(relay.addr, signed_booking(&bodies[*i])).await.unwrap();
            assert!(is_2xx(status), "{status} {body}");
        }
    }

    let bootstrap = tansu.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        Tansu::reader(&bootstrap).read(
            "cal.booking.created",
            TOTAL as usize + 200,
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *copies
            .entry(header(r, "cal-delivery-id").unwrap())
            .or_default() += 1;
    }
    let missing: Vec<u64> = bodies
        .iter()
        .enumerate()
        .filter(|(_, b)| !copies.contains_key(&sha256_hex(b)))
        .map(|(i, _)| i as u64)
        .collect();
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    println!(
        "kill -9: {first_round} accepted before the kill, {} records read, {} distinct, {duplicates} duplicates",
        records.len(),
        copies.len()
    );
    assert!(missing.is_empty(), "accepted but not in Kafka: {missing:?}");
    assert_eq!(copies.len(), TOTAL as usize);
}

#[tokio::test]
async fn a_full_spool_with_the_sink_down_answers_503_and_says_why() {
    let mut nats = NatsServer::start();
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 500\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}",
        nats.url()
    );
    let config = one_sink_config("bus", &sink) + &spool_section("max_bytes = 262144");
    let relay = RelayProcess::start(&config).await;
    nats.down();

    let mut spooled = 0;
    let mut refusal = None;
    for n in 0..400 {
        let (status, body) = post(relay.addr, signed_booking(&booking("full", n)))
            .await
            .unwrap();
        match status {
            202 => spooled += 1,
            503 => {
                refusal = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refusal = refusal.expect("the spool never filled up");
    assert!(spooled >= 10, "only {spooled} spooled before full");
    let answer: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(answer["error"], "spool_full", "{refusal}");
    assert!(answer["message"].as_str().unwrap().contains("full"));
    assert_eq!(relay.metric("cal_relay_spool_full").await, 1.0);
    assert!(relay.metric("cal_relay_spool_overflow_total").await >= 1.0);
    assert_eq!(
        relay.metric("cal_relay_spool_entries").await,
        spooled as f64
    );
    let (ready, _) = get(relay.addr, "/readyz").await.unwrap();
    assert_eq!(ready, 503);

    // The broker comes back: the spool drains, and deliveries are taken again.
    nats.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.metric("cal_relay_spool_entries").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "spool never drained: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = post(relay.addr, signed_booking(&booking("full", 1000)))
        .await
        .unwrap();
    assert!(is_2xx(status), "{status} {body}");
    assert_eq!(relay.metric("cal_relay_spool_full").await, 0.0);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_rest_delivered() {
    let nats = NatsServer::start();
    let dead_sink = "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nack_timeout_ms = 500";
    let config = one_sink_config("bus", dead_sink) + &spool_section("");
    let mut relay = RelayProcess::start(&config).await;
    let bodies: Vec<Vec<u8>> = (0..3).map(|n| booking(&format!("torn-{n}"), n)).collect();
    for b in &bodies {
        let (status, body) = post(relay.addr, signed_booking(b)).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let _ = relay.child.kill();
    let _ = relay.child.wait();

    // Tear the last record: cut its final 100 bytes off, as a crash mid-write would.
    let segment = std::fs::read_dir(relay.path("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let (_, stats) = spool_cli(&relay, &["stats"]);
    assert!(stats.contains("pending: 2"), "{stats}");
    assert!(stats.contains("unreadable tail"), "{stats}");

    // Start again on the same spool, now with a reachable broker.
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}",
        nats.url()
    );
    let config = (one_sink_config("bus", &sink) + &spool_section(""))
        .replace("{listen}", &relay.addr.to_string())
        .replace("{dir}", &relay.dir.path().display().to_string());
    std::fs::write(&relay.config_path, config).unwrap();
    relay.restart().await;
    assert!(
        relay.log().contains("cut a torn or corrupt tail"),
        "{}",
        relay.log()
    );

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = js.get_stream("CAL").await {
            if stream.info().await.unwrap().state.messages == 2 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = js.get_stream("CAL").await.unwrap();
    // Different bookings travel in different lanes: compare without order.
    let mut got = Vec::new();
    for seq in 1..=2 {
        got.push(stream.get_raw_message(seq).await.unwrap().payload.to_vec());
    }
    got.sort();
    let mut want = bodies[..2].to_vec();
    want.sort();
    assert!(got == want, "the two whole records, and not the torn one");
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 0.0);
}

fn amqp_sink(exchange: &str) -> String {
    format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 2000",
        amqp_url()
    )
}

#[tokio::test]
async fn the_same_delivery_three_times_is_published_once() {
    let exchange = unique("cal");
    let config = one_sink_config("rabbit", &amqp_sink(&exchange)) + &spool_section("");
    let (_conn, ch) = channel().await;
    let queue = bound_queue(&ch, &exchange, "cal.#").await;
    let relay = RelayProcess::start(&config).await;
    let body = booking("dup", 1);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, answer) = post(relay.addr, signed_booking(&body)).await.unwrap();
        statuses.push((status, answer));
    }
    assert_eq!(statuses[0].0, 202, "{statuses:?}");
    for (status, answer) in &statuses[1..] {
        assert_eq!(*status, 200);
        assert!(answer.contains("\"duplicate\""), "{answer}");
    }
    let got = drain(&ch, &queue, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, body);
    assert_eq!(relay.metric("cal_relay_duplicates_total").await, 2.0);
}

#[tokio::test]
async fn an_unroutable_message_is_dead_lettered_then_replayed() {
    let exchange = unique("cal");
    let config = one_sink_config("rabbit", &amqp_sink(&exchange))
        + &spool_section("max_attempts = 2\nretry_initial_ms = 50");
    let relay = RelayProcess::start(&config).await;
    relay.wait_readyz(200, 20).await;
    // No queue is bound yet: the broker returns the message (mandatory), a permanent refusal.
    let body = booking("dead", 7);
    let (status, answer) = post(relay.addr, signed_booking(&body)).await.unwrap();
    assert_eq!(status, 202, "{answer}");
    let series = "cal_relay_dead_letters_total{reason=\"unroutable\",sink=\"rabbit\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.metric(series).await < 1.0 {
        assert!(Instant::now() < deadline, "{}", relay.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, list) = spool_cli(&relay, &["list"]);
    assert!(
        ok && list.contains("dead (unroutable, 2 attempts)"),
        "{list}"
    );
    let id = list.split_whitespace().next().unwrap().to_owned();
    let (ok, shown) = spool_cli(&relay, &["show", &id]);
    assert!(ok, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["reason"], "unroutable");
    assert_eq!(shown["deliveryId"], sha256_hex(&body));
    assert_eq!(shown["body"].as_str().unwrap().as_bytes(), body.as_slice());

    // Fix the cause (bind a queue), replay: the running relay delivers it.
    let (_conn, ch) = channel().await;
    let queue = bound_queue(&ch, &exchange, "cal.#").await;
    let (ok, out) = spool_cli(&relay, &["replay", "--all"]);
    assert!(ok, "{out}");
    let got = drain(&ch, &queue, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{}", relay.log());
    assert_eq!(got[0].data, body);
    let (_, stats) = spool_cli(&relay, &["stats"]);
    assert!(stats.contains("dead letters: 0"), "{stats}");
    assert!(stats.contains("pending: 0"), "{stats}");

    // Purge removes what is dead for good.
    let (ok, _) = spool_cli(&relay, &["purge", "--all"]);
    assert!(!ok, "nothing left to purge");
}
