//! Every byte-exact delivery in `tests/fixtures/deliveries` (or `$CAL_FIXTURES`): its
//! signature verifies with the manifest's secret and fails with one byte changed, and it
//! normalizes as the manifest says (flat ones wrapped, envelopes byte-identical, templates as-is).

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cal_relay_core::{normalize, Shape, Verifier, VerifyError};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    std::env::var_os("CAL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deliveries")
        })
}

fn manifest() -> Value {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixtures needed at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn deliveries() -> Vec<(Value, Vec<u8>)> {
    let m = manifest();
    let list = m["deliveries"].as_array().unwrap().clone();
    assert!(list.len() >= 26, "expected the full fixture set");
    list.into_iter()
        .map(|d| {
            let body = std::fs::read(fixtures_dir().join(d["file"].as_str().unwrap())).unwrap();
            (d, body)
        })
        .collect()
}

#[test]
fn every_fixture_signature_verifies_and_one_byte_breaks_it() {
    let m = manifest();
    let verifier = Verifier::new(&[m["secret"].as_str().unwrap()], false);
    for (d, body) in deliveries() {
        let sig = d["x_cal_signature_256"].as_str().unwrap();
        assert_eq!(verifier.verify(Some(sig.as_bytes()), &body), Ok(()), "{d}");
        let mut changed = body.clone();
        changed[body.len() / 2] ^= 0x01;
        assert_eq!(
            verifier.verify(Some(sig.as_bytes()), &changed),
            Err(VerifyError::Mismatch),
            "{d}"
        );
    }
}

#[test]
fn every_fixture_normalizes_as_the_manifest_says() {
    let received = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
    for (d, body) in deliveries() {
        let ct = d["content_type"].as_str();
        let n = normalize(Bytes::from(body.clone()), ct, received).unwrap();
        let name = d["file"].as_str().unwrap();
        // The rule; the manifest names a key for most fixtures and must agree, but it
        // leaves ROUTING_FORM_FALLBACK_HIT without one although its payload has a formId.
        assert_eq!(n.key, expected_key(&body), "key of {name}");
        if let Some(k) = d["key"].as_str() {
            assert_eq!(n.key.as_deref(), Some(k), "manifest key of {name}");
        }
        if d["template"].as_bool().unwrap_or(false) || d["trigger"].is_null() {
            assert_eq!(n.shape, Shape::Template, "{name}");
            assert_eq!(n.body, body, "{name}");
            assert_eq!(Some(n.content_type.as_str()), ct, "{name}");
            continue;
        }
        assert_eq!(n.trigger.as_deref(), d["trigger"].as_str(), "{name}");
        if d["flat"].as_bool().unwrap_or(false) {
            assert_eq!(n.shape, Shape::Flat, "{name}");
            let original: Value = serde_json::from_slice(&body).unwrap();
            let wrapped: Value = serde_json::from_slice(&n.body).unwrap();
            assert_eq!(wrapped["triggerEvent"], original["triggerEvent"]);
            assert_eq!(wrapped["createdAt"], "2026-09-21T14:13:20.123Z");
            let mut payload = original.as_object().unwrap().clone();
            payload.remove("triggerEvent");
            assert_eq!(wrapped["payload"], Value::Object(payload), "{name}");
        } else {
            assert_eq!(n.shape, Shape::Envelope, "{name}");
            assert_eq!(n.body, body, "{name} must be byte-identical");
        }
    }
}

/// payload `uid`, else `bookingUid`, `booking.uid`, `evt.uid`, `oooEntry.uuid`, `formId` (root
/// for flat bodies).
fn expected_key(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("triggerEvent")?;
    let p = if v["payload"].is_object() {
        &v["payload"]
    } else {
        &v
    };
    let key = [
        &p["uid"],
        &p["bookingUid"],
        &p["booking"]["uid"],
        &p["evt"]["uid"],
        &p["oooEntry"]["uuid"],
        &p["formId"],
    ]
    .into_iter()
    .find_map(|k| k.as_str().map(str::to_owned));
    key
}
