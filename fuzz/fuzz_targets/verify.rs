//! Arbitrary `X-Cal-Signature-256` values against a fixed secret and body: accepted exactly when
//! the value is the body's HMAC (hex, any case, optional `sha256=` prefix, surrounding ASCII
//! whitespace), never a panic. The first input byte picks the body from the rest when set.
#![no_main]

use cal_relay_core::{sign, Verifier};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";

fuzz_target!(|input: &[u8]| {
    let body: &[u8] =
        br#"{"triggerEvent":"PING","createdAt":"2026-01-01T00:00:00.000Z","payload":{}}"#;
    let expected = sign(SECRET.as_bytes(), body);
    // Without any secret, nothing but "no signature" can pass (with allow_unsigned).
    let none: &[&str] = &[];
    if Verifier::new(none, true).verify(Some(input), body).is_ok() {
        assert!(input
            .trim_ascii()
            .eq_ignore_ascii_case(b"no-secret-provided"));
    }
    for verifier in [
        Verifier::new(&[SECRET], false),
        Verifier::new(&["other", SECRET], true),
    ] {
        let accepted = verifier.verify(Some(input), body).is_ok();
        let value = input.trim_ascii();
        let hex = if value.len() >= 7 && value[..7].eq_ignore_ascii_case(b"sha256=") {
            &value[7..]
        } else {
            value
        };
        let is_hmac = hex.eq_ignore_ascii_case(expected.as_bytes());
        let unsigned = value.eq_ignore_ascii_case(b"no-secret-provided");
        if unsigned {
            continue;
        }
        assert_eq!(
            accepted,
            is_hmac,
            "value {:?}",
            String::from_utf8_lossy(input)
        );
    }
});
