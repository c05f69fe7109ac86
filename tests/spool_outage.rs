//! A 20-second RabbitMQ outage under steady load in spool mode: no request gets a 5xx, and once
//! the broker is back every delivery arrives, per booking in the order it was sent. Its own test
//! binary, as it stops the shared broker.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::amqp::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_costs_no_delivery_and_keeps_per_key_order() {
    const KEYS: u64 = 8;
    let exchange = unique("cal");
    let sink = format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 2000",
        amqp_url()
    );
    let config = one_sink_config("rabbit", &sink) + &spool_section("retry_max_ms = 2000");
    let (conn, ch) = channel().await;
    let queue = durable_queue(&ch, &exchange, "cal.#").await;
    drop(ch);
    let _ = conn.close(0, "setup done".into()).await;
    let relay = RelayProcess::start(&config).await;
    relay.wait_readyz(200, 20).await;

    // 40 deliveries/s: 5 s before the outage, 20 s of outage, 5 s after.
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut outage = None;
    let mut n = 0u64;
    let mut done = false;
    while started.elapsed() < Duration::from_secs(30) {
        let at = started.elapsed();
        if outage.is_none() && !done && at >= Duration::from_secs(5) {
            tokio::task::spawn_blocking(|| broker("rabbit-stop-app"))
                .await
                .unwrap();
            outage = Some(Instant::now());
        }
        if let Some(since) = outage {
            if since.elapsed() >= Duration::from_secs(20) {
                tokio::task::spawn_blocking(|| broker("rabbit-start-app"))
                    .await
                    .unwrap();
                outage = None;
                done = true;
            }
        }
        let body = booking(&format!("outage-{}", n % KEYS), n);
        let (status, answer) = post(relay.addr, signed_booking(&body)).await.unwrap();
        assert!(
            (200..300).contains(&status),
            "{status} {answer} at {:?}",
            started.elapsed()
        );
        sent.push(body);
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(done, "the broker was stopped and started again");

    let (_conn, ch) = channel().await;
    let got = drain(&ch, &queue, Duration::from_secs(15)).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;

    // Every delivery arrived; per key, first copies come in sending order.
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for (i, d) in got.iter().enumerate() {
        let id = sha256_hex(&d.data);
        if first_seen.insert(id, i).is_none() {
            let key = header(d, "cal-key").unwrap_or_default();
            order.entry(key).or_default().push(booking_seq(&d.data));
        }
    }
    let missing = sent
        .iter()
        .filter(|b| !first_seen.contains_key(&sha256_hex(b)))
        .count();
    println!(
        "outage: {} sent, {} received, {} distinct, {missing} missing",
        sent.len(),
        got.len(),
        first_seen.len()
    );
    assert_eq!(missing, 0, "{}", relay.log());
    for (key, seqs) in &order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order for {key}: {seqs:?}"
        );
    }
    assert_eq!(order.len(), KEYS as usize);
}
