//! End-to-end through the AMQP sink against a real RabbitMQ: queues bound with topic patterns
//! receive exactly the matching fixtures with their properties and headers; an unroutable
//! delivery answers 503.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::amqp::*;
use support::*;

const PATH: &str = SOURCE_PATH;

fn config(exchange: &str) -> String {
    let sink = format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 3000",
        amqp_url()
    );
    one_sink_config("rabbit", &sink)
}

#[tokio::test]
async fn bound_queues_receive_exactly_the_matching_fixtures() {
    let exchange = unique("cal");
    let (_conn, ch) = channel().await;
    let bookings = bound_queue(&ch, &exchange, "cal.booking.#").await;
    let meetings = bound_queue(&ch, &exchange, "cal.meeting.*").await;
    let everything = bound_queue(&ch, &exchange, "#").await;
    let relay = RelayProcess::start(&config(&exchange)).await;
    relay.wait_readyz(200, 10).await;

    let fixtures = fixtures();
    for f in &fixtures {
        let (status, body) = post(
            relay.addr,
            Post::signed(PATH, &fixture_secret(), &f.body, f.content_type()),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{}: {body}", f.file());
    }

    let idle = Duration::from_millis(500);
    let got_bookings = drain(&ch, &bookings, idle).await;
    let got_meetings = drain(&ch, &meetings, idle).await;
    let got_all = drain(&ch, &everything, idle).await;
    let expected = |prefix: &str| {
        fixtures
            .iter()
            .filter(|f| f.trigger().is_some_and(|t| t.starts_with(prefix)))
            .map(|f| f.delivery_id().to_owned())
            .collect::<Vec<_>>()
    };
    let ids = |ds: &[lapin::message::Delivery]| {
        ds.iter()
            .map(|d| {
                d.properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .as_str()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    // One channel, in order: arrival order is send order.
    assert_eq!(ids(&got_bookings), expected("BOOKING_"));
    assert_eq!(ids(&got_meetings), expected("MEETING_"));
    assert_eq!(got_all.len(), fixtures.len());

    for (f, d) in fixtures.iter().zip(&got_all) {
        let name = f.file();
        assert_eq!(
            d.routing_key.as_str(),
            f.expected_destination("cal.custom"),
            "{name}"
        );
        let p = &d.properties;
        assert!(
            f.is_message_id(p.message_id().as_ref().unwrap().as_str()),
            "{name}"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "{name} persistent");
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "cal-relay");
        assert!(p.timestamp().is_some());
        let ct = p.content_type().as_ref().unwrap().as_str().to_owned();
        assert_eq!(
            ct,
            if f.is_template() {
                f.content_type()
            } else {
                "application/json"
            }
        );
        assert_eq!(
            header(d, "cal-delivery-id").as_deref(),
            Some(f.delivery_id())
        );
        assert_eq!(header(d, "cal-trigger").as_deref(), f.trigger(), "{name}");
        assert_eq!(header(d, "cal-key"), f.expected_key(), "{name}");
        if f.is_flat() {
            let v: Value = serde_json::from_slice(&d.data).unwrap();
            assert_eq!(
                v["payload"]["uid"],
                serde_json::from_slice::<Value>(&f.body).unwrap()["uid"]
            );
        } else {
            assert_eq!(d.data, f.body, "{name} not byte-identical");
        }
    }
}

#[tokio::test]
async fn an_unroutable_delivery_is_503_not_200() {
    let exchange = unique("cal");
    let (_conn, ch) = channel().await;
    let _only_meetings = bound_queue(&ch, &exchange, "cal.meeting.*").await;
    let relay = RelayProcess::start(&config(&exchange)).await;
    relay.wait_readyz(200, 10).await;
    let f = fixtures()
        .into_iter()
        .find(|f| f.trigger() == Some("BOOKING_CREATED"))
        .unwrap();
    let (status, body) = post(
        relay.addr,
        Post::signed(PATH, &fixture_secret(), &f.body, "application/json"),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["sinks"][0]["reason"], "unroutable");
    assert_eq!(
        relay
            .metric(r#"cal_relay_publish_errors_total{reason="unroutable",sink="rabbit",trigger="BOOKING_CREATED"}"#)
            .await,
        1.0
    );
}
