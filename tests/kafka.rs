//! End-to-end through the Kafka sink against a real Kafka-protocol broker (tansu), read back
//! with a real rdkafka consumer: every fixture on its topic with key and headers, per-booking
//! ordering on one partition, a missing topic, and a broker outage.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use serde_json::Value;
use support::kafka::{header, Tansu};
use support::*;

const PATH: &str = SOURCE_PATH;

fn config(bootstrap: &str, extra: &str) -> String {
    let sink =
        format!("type = \"kafka\"\nbrokers = \"{bootstrap}\"\nmessage_timeout_ms = 3000\n{extra}");
    one_sink_config("kafka", &sink)
}

async fn send_body(relay: &RelayProcess, body: &[u8], ct: &str) -> (u16, String) {
    post(relay.addr, Post::signed(PATH, &fixture_secret(), body, ct))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_fixture_lands_on_its_topic_with_key_and_headers() {
    let tansu = Tansu::start();
    let relay = RelayProcess::start(&config(
        &tansu.bootstrap(),
        "create_topics = true\npartitions = 3",
    ))
    .await;
    relay.wait_readyz(200, 20).await;
    let fixtures = fixtures();
    for f in &fixtures {
        let (status, body) = send_body(&relay, &f.body, f.content_type()).await;
        assert_eq!(status, 200, "{}: {body}", f.file());
    }
    let topics: BTreeSet<String> = fixtures
        .iter()
        .map(|f| f.expected_destination("cal.custom"))
        .collect();
    let mut records = HashMap::new();
    for topic in &topics {
        let want = fixtures
            .iter()
            .filter(|f| &f.expected_destination("cal.custom") == topic)
            .count();
        let b = tansu.bootstrap();
        let t = topic.clone();
        let got = tokio::task::spawn_blocking(move || {
            let reader = Tansu::reader(&b);
            reader.read(&t, want, Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert_eq!(got.len(), want, "records on {topic}");
        for m in got {
            records.insert(header(&m, "cal-delivery-id").unwrap(), m);
        }
    }
    for f in &fixtures {
        let name = f.file();
        let m = records
            .get(f.delivery_id())
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(m.topic(), f.expected_destination("cal.custom"), "{name}");
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key, f.expected_key(), "{name}");
        assert_eq!(header(m, "cal-trigger").as_deref(), f.trigger(), "{name}");
        assert_eq!(
            header(m, "cal-webhook-version").as_deref(),
            Some("2021-10-20")
        );
        assert!(header(m, "content-type").is_some());
        let value = m.payload().unwrap();
        if f.is_flat() {
            let v: Value = serde_json::from_slice(value).unwrap();
            let original: Value = serde_json::from_slice(&f.body).unwrap();
            assert_eq!(v["triggerEvent"], original["triggerEvent"]);
            assert_eq!(v["payload"]["uid"], original["uid"]);
            assert!(v["createdAt"].is_string());
        } else {
            assert_eq!(value, f.body.as_slice(), "{name} not byte-identical");
        }
    }
}

#[tokio::test]
async fn one_bookings_events_stay_on_one_partition_in_batch_order() {
    let tansu = Tansu::start();
    let relay = RelayProcess::start(&config(
        &tansu.bootstrap(),
        "create_topics = true\npartitions = 4",
    ))
    .await;
    relay.wait_readyz(200, 20).await;
    let relay = std::sync::Arc::new(relay);
    for batch in 0..10 {
        let sends: Vec<_> = (0..100)
            .map(|n| {
                let relay = relay.clone();
                tokio::spawn(async move {
                    let body = format!(
                        r#"{{"triggerEvent":"BOOKING_RESCHEDULED","createdAt":"2026-01-01T00:00:00.000Z","payload":{{"uid":"one-booking","batch":{batch},"n":{n}}}}}"#
                    );
                    send_body(&relay, body.as_bytes(), "application/json").await
                })
            })
            .collect();
        for s in sends {
            let (status, body) = s.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    let b = tansu.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        Tansu::reader(&b).read("cal.booking.rescheduled", 1000, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 1000);
    let partitions: BTreeSet<i32> = records.iter().map(|m| m.partition()).collect();
    assert_eq!(
        partitions.len(),
        1,
        "one key, one partition: {partitions:?}"
    );
    let mut sorted = records.iter().collect::<Vec<_>>();
    sorted.sort_by_key(|m| m.offset());
    let batches: Vec<u64> = sorted
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["payload"]["batch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        batches.windows(2).all(|w| w[0] <= w[1]),
        "batches out of order"
    );
}

#[tokio::test]
async fn a_missing_topic_is_a_fast_distinct_error() {
    let tansu = Tansu::start();
    let relay = RelayProcess::start(&config(&tansu.bootstrap(), "")).await;
    relay.wait_readyz(200, 20).await;
    let f = fixtures()
        .into_iter()
        .find(|f| f.trigger() == Some("PING"))
        .unwrap();
    let started = Instant::now();
    let (status, body) = send_body(&relay, &f.body, "application/json").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "not a timeout: {body}"
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["sinks"][0]["reason"], "unknown_topic");
    assert!(body.contains("cal.ping"), "{body}");
    assert_eq!(
        relay
            .metric(r#"cal_relay_publish_errors_total{reason="unknown_topic",sink="kafka",trigger="PING"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_broker_outage_is_503_within_the_timeout_and_heals_by_itself() {
    let mut tansu = Tansu::start_durable();
    let relay = RelayProcess::start(&config(
        &tansu.bootstrap(),
        "create_topics = true\npartitions = 1",
    ))
    .await;
    relay.wait_readyz(200, 20).await;
    let all = fixtures();
    let booking = all
        .iter()
        .find(|f| f.trigger() == Some("BOOKING_CREATED"))
        .unwrap();
    let paid = all
        .iter()
        .find(|f| f.trigger() == Some("BOOKING_PAID"))
        .unwrap();
    assert_eq!(
        send_body(&relay, &booking.body, "application/json").await.0,
        200
    );

    tansu.down();
    let started = Instant::now();
    let (status, body) = send_body(&relay, &paid.body, "application/json").await;
    assert_eq!(status, 503, "{body}");
    // message_timeout_ms = 3000, plus a small margin.
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "took {:?}",
        started.elapsed()
    );
    relay.wait_readyz(503, 20).await;

    tansu.up();
    relay.wait_readyz(200, 30).await;
    let (status, body) = send_body(&relay, &paid.body, "application/json").await;
    assert_eq!(status, 200, "{body}");
}
