//! CloudEvents on every broker, checked with code nobody here wrote: a delivery relayed with
//! `cloudevents = "binary"` is read back with each broker's real client and decoded by the
//! official CloudEvents Python SDK (PyPI `cloudevents` 2.2: its Kafka and RabbitMQ bindings,
//! and for NATS its HTTP binding over the same `ce-` headers); structured mode likewise on NATS
//! and Kafka. The decoded event must carry the delivery's id, type, source, time and subject,
//! and data identical to the delivery.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Decode one message with the SDK (`tests/interop/cloudevent.py`).
fn decode(
    binding: &str,
    headers: &[(String, String)],
    content_type: Option<&str>,
    key: Option<&str>,
    body: &[u8],
) -> Value {
    use base64::Engine;
    let input = json!({
        "binding": binding,
        "headers": headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<serde_json::Map<_, _>>(),
        "content_type": content_type,
        "key": key,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let (ok, out, err) = run_interop(
        "python3",
        &["tests/interop/cloudevent.py"],
        input.to_string().as_bytes(),
    );
    assert!(ok, "the SDK refused the message: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A BOOKING_CREATED delivery for booking `uid`, and what its event must say.
fn delivery(uid: &str) -> (Vec<u8>, Value) {
    let body = booking(uid, 1);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let created = v["createdAt"].as_str().unwrap();
    let created = humantime::parse_rfc3339_weak(created.trim_end_matches('Z')).unwrap();
    let ms = created
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expected = json!({
        "specversion": "1.0",
        "id": sha256_hex(&body),
        "type": "com.cal.booking_created",
        "source": "https://cal.com",
        "time_ms": ms,
        "subject": uid,
        "partitionkey": uid,
        "calwebhookversion": "2021-10-20",
        "datacontenttype": "application/json",
        "data": v,
    });
    (body, expected)
}

/// Every field of `expected` is in `event` with the same value.
fn assert_event(event: &Value, expected: &Value) {
    for (name, want) in expected.as_object().unwrap() {
        assert_eq!(&event[name], want, "{name} of {event}");
    }
    assert!(event["recordedtime"].is_string(), "{event}");
}

async fn send(relay: &RelayProcess, body: &[u8]) {
    let (status, text) = post(relay.addr, signed_booking(body)).await.unwrap();
    assert!((200..300).contains(&status), "{status} {text}");
}

fn nats_config(url: &str, mode: &str) -> String {
    one_sink_config(
        "bus",
        &format!(
            "type = \"nats\"\nurl = \"{url}\"\ncloudevents = \"{mode}\"\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}"
        ),
    )
}

/// NATS headers as the HTTP binding reads them (the NATS binding uses the same names).
fn nats_headers(m: &async_nats::jetstream::Message) -> Vec<(String, String)> {
    m.headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(name, values)| {
            (
                name.to_string(),
                values.first().map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn nats_binary_mode_decodes_with_the_sdk() {
    let nats = support::nats::NatsServer::start();
    let relay = RelayProcess::start(&nats_config(&nats.url(), "binary")).await;
    let (body, expected) = delivery("ce-nats-uid");
    send(&relay, &body).await;
    let messages = support::nats::stream_messages(&nats.url(), "CAL").await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.payload.as_ref(), body.as_slice(), "the body is unchanged");
    let event = decode("http", &nats_headers(m), None, None, &m.payload);
    assert_event(&event, &expected);
}

#[tokio::test]
async fn nats_structured_mode_decodes_with_the_sdk() {
    let nats = support::nats::NatsServer::start();
    let relay = RelayProcess::start(&nats_config(&nats.url(), "structured")).await;
    let (body, expected) = delivery("ce-structured-uid");
    send(&relay, &body).await;
    let messages = support::nats::stream_messages(&nats.url(), "CAL").await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    let headers = nats_headers(m);
    assert!(
        headers.contains(&(
            "content-type".into(),
            "application/cloudevents+json; charset=UTF-8".into()
        )),
        "{headers:?}"
    );
    let event = decode("http", &headers, None, None, &m.payload);
    assert_event(&event, &expected);
}

#[tokio::test]
async fn kafka_binary_and_structured_modes_decode_with_the_sdk() {
    use rdkafka::Message as _;
    let tansu = support::kafka::Tansu::start();
    for (mode, uid) in [
        ("binary", "ce-kafka-uid"),
        ("structured", "ce-kafka-structured"),
    ] {
        let topic = format!("cal.ce.{mode}");
        let config = one_sink_config(
            "kafka",
            &format!(
                "type = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = true\ncloudevents = \"{mode}\"",
                tansu.bootstrap()
            ),
        )
        .replace(
            "triggers = [\"*\"]",
            &format!("triggers = [\"*\"]\ndestination = \"{topic}\""),
        );
        let relay = RelayProcess::start(&config).await;
        relay.wait_readyz(200, 20).await;
        let (body, expected) = delivery(uid);
        send(&relay, &body).await;
        let bootstrap = tansu.bootstrap();
        let topic2 = topic.clone();
        let records = tokio::task::spawn_blocking(move || {
            support::kafka::Tansu::reader(&bootstrap).read(&topic2, 1, Duration::from_secs(10))
        })
        .await
        .unwrap();
        assert_eq!(records.len(), 1, "{mode}");
        let r = &records[0];
        let headers: Vec<(String, String)> = {
            use rdkafka::message::Headers;
            r.headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let key = r.key().map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key.as_deref(), Some(uid), "the record key is unchanged");
        let payload = r.payload().unwrap_or_default();
        if mode == "binary" {
            assert_eq!(payload, body.as_slice(), "the body is unchanged");
        }
        let event = decode("kafka", &headers, None, key.as_deref(), payload);
        assert_event(&event, &expected);
    }
}

#[tokio::test]
async fn rabbitmq_binary_mode_decodes_with_the_sdk() {
    use support::amqp::*;
    let exchange = unique("cal-ce");
    let (_conn, ch) = channel().await;
    let queue = bound_queue(&ch, &exchange, "cal.#").await;
    let relay = RelayProcess::start(&one_sink_config(
        "rabbit",
        &format!(
            "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"\ncloudevents = \"binary\"",
            amqp_url()
        ),
    ))
    .await;
    let (body, expected) = delivery("ce-rabbit-uid");
    send(&relay, &body).await;
    let got = drain(&ch, &queue, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.data, body, "the body is unchanged");
    let headers: Vec<(String, String)> = d
        .properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .keys()
                .filter_map(|k| Some((k.to_string(), header(d, k.as_str())?)))
                .collect()
        })
        .unwrap_or_default();
    let content_type = d.properties.content_type().as_ref().map(|c| c.to_string());
    let event = decode("rabbitmq", &headers, content_type.as_deref(), None, &d.data);
    assert_event(&event, &expected);
    // What AMQP consumers read without the SDK: message_id and type carry id and type.
    assert_eq!(
        d.properties.message_id().as_ref().map(|m| m.to_string()),
        Some(sha256_hex(&body))
    );
    assert_eq!(
        d.properties.kind().as_ref().map(|t| t.to_string()),
        Some("com.cal.booking_created".to_owned())
    );
}
