//! What "JSON" means for a message body: exactly what a strict parser accepts
//! (`serde_json::from_slice::<serde_json::Value>`): UTF-8 everywhere, keys included; no raw
//! control characters in strings; no lone surrogate escapes; numbers in range; nesting within
//! serde_json's depth limit. [`Strict`] checks a value to that standard without building it,
//! for scans that skip the parts they do not need (where `serde::de::IgnoredAny` would accept
//! invalid UTF-8, lone surrogates and any depth).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Any JSON value, checked strictly and dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    // A `str` (not bytes): the parser validated its UTF-8 and escapes.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<StrictKey, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// An object key, checked as a `str`.
struct StrictKey;

impl<'de> Deserialize<'de> for StrictKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrictKey, E> {
                Ok(StrictKey)
            }
        }
        d.deserialize_str(V)
    }
}

/// Whether `bytes` is one JSON text by the strict standard above.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Strict>(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_json;

    fn strict(bytes: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(bytes).is_ok()
    }

    #[test]
    fn agrees_with_a_strict_parser() {
        let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let deep_bad = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let cases: Vec<&[u8]> = vec![
            br#"{"a":[1,2,{"b":null}],"c":"\u00e9"}"#,
            b"{\"a\":\"\xff\"}",
            b"{\"\xff\":1}",
            b"{\"a\":\"\x01\"}",
            b"{\"\x01\":1}",
            br#"{"a":"\ud800"}"#,
            br#"{"\ud800":1}"#,
            br#"{"a":"\ud83d\ude00"}"#,
            br#"{"a":1e400}"#,
            br#"{"a":-0.0e-5}"#,
            br#"{"a":1,}"#,
            b"false",
            b" 1 ",
            deep_ok.as_bytes(),
            deep_bad.as_bytes(),
        ];
        for c in cases {
            assert_eq!(is_json(c), strict(c), "{}", String::from_utf8_lossy(c));
        }
    }

    mod properties {
        use proptest::prelude::*;

        proptest! {
            /// Byte strings made of JSON's own tokens, control bytes and invalid UTF-8: the
            /// strict check agrees with a strict parser on every one.
            #[test]
            fn agrees_on_json_like_bytes(parts in proptest::collection::vec(prop_oneof![
                Just(&b"{"[..]), Just(&b"}"[..]), Just(&b"["[..]), Just(&b"]"[..]),
                Just(&b":"[..]), Just(&b","[..]), Just(&b"\""[..]), Just(&b"\\u"[..]),
                Just(&b"d800"[..]), Just(&b"dc00"[..]), Just(&b"00e9"[..]), Just(&b"1"[..]),
                Just(&b"-0.5e9"[..]), Just(&b"1e999"[..]), Just(&b"true"[..]), Just(&b"null"[..]),
                Just(&b"\x01"[..]), Just(&b"\xff"[..]), Just(&b"\xc3\xa9"[..]), Just(&b" "[..]),
                Just(&b"a"[..]),
            ], 0..40)) {
                let bytes: Vec<u8> = parts.concat();
                let strict = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
                prop_assert_eq!(super::super::is_json(&bytes), strict);
            }
        }
    }
}
