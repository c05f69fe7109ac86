//! End-to-end through the NATS sink against a real nats-server with JetStream: every fixture on
//! its subject with headers (read back with a real consumer), de-duplication of retried
//! deliveries, a missing stream, core mode, and a server restart.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::Value;
use support::nats::NatsServer;
use support::*;

const PATH: &str = SOURCE_PATH;

fn config(nats_url: &str, sink_extra: &str) -> String {
    let sink =
        format!("type = \"nats\"\nurl = \"{nats_url}\"\nack_timeout_ms = 2000\n{sink_extra}");
    one_sink_config("bus", &sink)
}

const WITH_STREAM: &str = r#"stream = { name = "CAL", subjects = ["cal.>"] }"#;

async fn send(relay: &RelayProcess, f: &Fixture) -> (u16, String) {
    post(relay.addr, f.as_sent(PATH, &fixture_secret()))
        .await
        .unwrap()
}

/// Every message in stream `name`, read with an ephemeral pull consumer.
async fn read_stream(
    nats_url: &str,
    name: &str,
    expected: usize,
) -> Vec<async_nats::jetstream::Message> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream(name).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(expected + 10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m.unwrap());
    }
    out
}

#[tokio::test]
async fn jetstream_receives_every_fixture_with_headers() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&config(&nats.url(), WITH_STREAM)).await;
    let fixtures = fixtures();
    for f in &fixtures {
        let (status, body) = send(&relay, f).await;
        assert_eq!(status, 200, "{}: {body}", f.file());
    }
    let messages = read_stream(&nats.url(), "CAL", fixtures.len()).await;
    assert_eq!(messages.len(), fixtures.len());
    let by_id: HashMap<String, &async_nats::jetstream::Message> = messages
        .iter()
        .map(|m| {
            let h = m.headers.as_ref().unwrap();
            (h.get("cal-delivery-id").unwrap().as_str().to_owned(), m)
        })
        .collect();
    for f in &fixtures {
        let name = f.file();
        let m = by_id
            .get(f.delivery_id())
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            m.subject.as_str(),
            f.expected_destination("cal.custom"),
            "{name}"
        );
        let h = m.headers.as_ref().unwrap();
        assert!(
            f.is_message_id(h.get("Nats-Msg-Id").unwrap().as_str()),
            "{name}"
        );
        assert_eq!(
            h.get("cal-trigger").map(|v| v.as_str()),
            f.trigger(),
            "{name}"
        );
        assert_eq!(
            h.get("cal-key").map(|v| v.as_str().to_owned()),
            f.expected_key(),
            "{name}"
        );
        assert_eq!(
            h.get("cal-webhook-version").map(|v| v.as_str().to_owned()),
            f.expected_webhook_version()
        );
        if f.is_flat() {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            let original: Value = serde_json::from_slice(&f.body).unwrap();
            assert_eq!(v["triggerEvent"], original["triggerEvent"], "{name}");
            assert_eq!(v["payload"]["uid"], original["uid"], "{name}");
        } else {
            assert_eq!(
                m.payload.as_ref(),
                f.body.as_slice(),
                "{name} not byte-identical"
            );
        }
    }
}

#[tokio::test]
async fn a_retried_delivery_is_stored_once() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&config(&nats.url(), WITH_STREAM)).await;
    let f = &fixtures()[0];
    assert_eq!(send(&relay, f).await.0, 200);
    assert_eq!(
        send(&relay, f).await.0,
        200,
        "a duplicate still answers 2xx"
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = jetstream::new(client).get_stream("CAL").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn no_stream_for_the_subject_is_503_naming_it() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&config(&nats.url(), "")).await;
    let f = fixtures()
        .into_iter()
        .find(|f| f.trigger() == Some("BOOKING_CREATED"))
        .unwrap();
    let (status, body) = send(&relay, &f).await;
    assert_eq!(status, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["sinks"][0]["reason"], "no_stream");
    assert!(
        answer["sinks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cal.booking.created"),
        "{body}"
    );
    assert_eq!(
        relay
            .metric(r#"cal_relay_publish_errors_total{reason="no_stream",sink="bus",trigger="BOOKING_CREATED"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn core_mode_publishes_to_subscribers() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("cal.>").await.unwrap();
    client.flush().await.unwrap();
    let relay = RelayProcess::start(&config(&nats.url(), "jetstream = false")).await;
    let fixtures = fixtures();
    for f in &fixtures {
        assert_eq!(send(&relay, f).await.0, 200, "{}", f.file());
    }
    for f in &fixtures {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        // One connection, published in order: they arrive in order.
        assert_eq!(m.subject.as_str(), f.expected_destination("cal.custom"));
        let id = m
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_owned();
        assert!(f.is_message_id(&id), "{}", f.file());
        if !f.is_flat() {
            assert_eq!(m.payload.as_ref(), f.body.as_slice());
        }
    }
}

#[tokio::test]
async fn the_relay_survives_a_server_restart() {
    let mut nats = NatsServer::start();
    let relay = RelayProcess::start(&config(&nats.url(), WITH_STREAM)).await;
    let all = fixtures();
    assert_eq!(send(&relay, &all[0]).await.0, 200);
    assert_eq!(get(relay.addr, "/readyz").await.unwrap().0, 200);

    nats.down();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(relay.addr, "/readyz").await.unwrap().0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = send(&relay, &all[1]).await;
    assert_eq!(status, 503, "{body}");

    nats.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(relay.addr, "/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "the relay did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&relay, &all[1]).await.0, 200);
    assert_eq!(send(&relay, &all[2]).await.0, 200);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = jetstream::new(client).get_stream("CAL").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
}
