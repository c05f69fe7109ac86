//! Arbitrary body, signature and content-type bytes through `Source::prepare` with a route
//! table that matches everything; beyond "no panic", the message contract: JSON bodies are
//! strict JSON, envelopes are byte-identical, wrapped bodies hold exactly the root fields, the
//! file sink's line is JSON (losslessly, whatever the body), destination, headers and key are
//! valid for every broker.
//!
//! Input: `flags, sig_len, sig[sig_len], ct_len, ct[ct_len], body...` (flags bit 0: sign the
//! body correctly instead of sending `sig`; bit 1: no content type; bit 2: no signature;
//! bit 3: a one-hour replay window, six hours more for scheduled triggers).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cal_relay_core::{sign, Freshness, Inbound, Route, RouteTable, Shape, Source, Verifier};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &str = "fuzz-secret";

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&n, rest)) = data.split_first() else {
        return &[];
    };
    let n = (n as usize).min(rest.len());
    let (head, tail) = rest.split_at(n);
    *data = tail;
    head
}

fn valid_for_brokers(s: &str) -> bool {
    !s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, mut rest)) = input.split_first() else {
        return;
    };
    let sig = take(&mut rest).to_vec();
    let ct = take(&mut rest);
    let body = rest;
    let content_type = if flags & 2 != 0 {
        None
    } else {
        std::str::from_utf8(ct).ok()
    };
    let signature = if flags & 1 != 0 {
        sign(SECRET.as_bytes(), body).into_bytes()
    } else {
        sig
    };
    let source = Source {
        name: "cal".into(),
        verifier: Verifier::new(&[SECRET], false),
        template_destination: Some("cal.custom".into()),
        // Both ways: off, and a window the fixtures' createdAt is outside of.
        freshness: (flags & 8 != 0).then_some(Freshness {
            window: Duration::from_secs(3600),
            scheduled_allowance: Duration::from_secs(6 * 3600),
        }),
        event_source: "https://cal.com".into(),
        template_event_type: "com.cal.template".into(),
        cloudevents: flags & 16 != 0,
    };
    let routes =
        RouteTable::new(vec![Route::new(0, &["*".into()], vec!["s".into()], None)
            .expect("a route matching everything")]);
    let received_at = UNIX_EPOCH + Duration::from_millis(1_768_210_200_538);
    let inbound = Inbound {
        body: Bytes::copy_from_slice(body),
        signature: (flags & 4 == 0).then_some(signature.as_slice()),
        content_type,
        webhook_version: content_type,
        received_at,
    };
    // The served path: verify, then prepare what verified.
    let prepared = source
        .verify(inbound)
        .and_then(|verified| source.prepare_verified(&routes, verified));
    let Ok(prepared) = prepared else {
        return;
    };
    let m = &prepared.message;

    // JSON means strict JSON.
    let treated_as_json = m.json_checked || prepared.shape != Shape::Template;
    let parsed = serde_json::from_slice::<Value>(&m.body);
    if treated_as_json {
        assert!(parsed.is_ok(), "a body treated as JSON is not JSON");
    }
    match prepared.shape {
        Shape::Envelope => assert_eq!(m.body.as_ref(), body, "envelope not byte-identical"),
        Shape::Flat => {
            let wrapped = parsed.expect("checked above");
            let original: Value = serde_json::from_slice(body).expect("a wrapped body was JSON");
            let mut fields = original
                .as_object()
                .expect("flat body is an object")
                .clone();
            let trigger = fields.remove("triggerEvent");
            assert_eq!(wrapped.get("triggerEvent"), trigger.as_ref());
            assert_eq!(
                wrapped.get("payload").and_then(Value::as_object),
                Some(&fields),
                "payload is not the root fields but triggerEvent"
            );
            assert_eq!(
                m.header("cal-trigger"),
                trigger.as_ref().and_then(Value::as_str)
            );
        }
        Shape::Template => assert_eq!(m.body.as_ref(), body, "template not as-is"),
    }

    // Every line the file sink writes is JSON and gives the body back exactly.
    let line = cal_relay_sink_file::encode_line(m);
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    let line: Value = serde_json::from_slice(&line).expect("file sink line is JSON");
    match line.get("bodyEncoding").and_then(Value::as_str) {
        Some("base64") => {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(line["body"].as_str().expect("base64 text"))
                .expect("valid base64");
            assert_eq!(b, m.body.as_ref());
        }
        Some(other) => panic!("unknown bodyEncoding {other}"),
        None => match &line["body"] {
            Value::String(s) if !m.json_checked && !cal_relay_sink::json::is_json(&m.body) => {
                assert_eq!(s.as_bytes(), m.body.as_ref())
            }
            v => assert_eq!(
                Some(v),
                serde_json::from_slice::<Value>(&m.body).ok().as_ref()
            ),
        },
    }

    // Destination, headers and key are valid for every broker.
    assert!(!m.destination.is_empty() && valid_for_brokers(&m.destination));
    assert!(
        !m.destination.contains(['*', '>', ' ']),
        "NATS wildcard or space in {:?}",
        m.destination
    );
    for (name, value) in &m.headers {
        assert!(
            valid_for_brokers(name) && valid_for_brokers(value),
            "header {name}: {value:?}"
        );
    }
    if let Some(k) = &m.key {
        assert!(!k.chars().any(char::is_control), "key {k:?}");
    }
    assert!(valid_for_brokers(&m.content_type));
});
