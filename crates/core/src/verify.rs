//! `X-Cal-Signature-256`: lowercase hex HMAC-SHA256 of the exact body bytes, keyed with the
//! webhook secret. Either hex case and an optional `sha256=` prefix are accepted; comparison is
//! constant-time; several secrets may be configured so a secret can be rotated without downtime.
//! A secret being retired carries the time it stops being accepted: checked at each delivery,
//! so it ends on time without a reload, and a delivery it accepted is told apart ([`Signed`]).

use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The header value Cal.com sends when the webhook has no secret.
pub const NO_SECRET_PROVIDED: &str = "no-secret-provided";

/// Why a delivery's signature was not accepted. Each variant has a stable `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the X-Cal-Signature-256 header is missing")]
    Missing,
    #[error("the delivery is unsigned (X-Cal-Signature-256: no-secret-provided); set the webhook's secret in Cal.com, the Test button signs with the secret typed in the form")]
    NoSecretProvided,
    #[error("the X-Cal-Signature-256 header is not a hex SHA-256 HMAC")]
    Malformed,
    #[error("the signature does not match any configured secret")]
    Mismatch,
}

impl VerifyError {
    /// Stable snake_case reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing => "missing_signature",
            VerifyError::NoSecretProvided => "unsigned",
            VerifyError::Malformed => "malformed_signature",
            VerifyError::Mismatch => "bad_signature",
        }
    }
}

/// A secret's fingerprint: 16 hex digits of a SHA-256 of it (domain-separated), which tells
/// which secrets a relay holds without telling the secret.
pub fn fingerprint(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"cal-relay secret fingerprint\n");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

/// What accepted a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// No signature, and the source allows that.
    Unsigned,
    /// A secret in use.
    Current,
    /// A secret being retired (still inside its overlap).
    Retiring,
}

#[derive(Clone)]
struct Key {
    mac: HmacSha256,
    /// When a secret being retired stops being accepted.
    retire_at: Option<SystemTime>,
}

/// Checks signatures for one source. Keys are prepared once; `verify` only clones them.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    fingerprints: Vec<String>,
    allow_unsigned: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("allow_unsigned", &self.allow_unsigned)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting a signature made with any of `secrets`. With `allow_unsigned`,
    /// deliveries without a signature (missing header or `no-secret-provided`) pass too; a
    /// present but wrong signature never does.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], allow_unsigned: bool) -> Self {
        let mut v = Verifier {
            keys: Vec::new(),
            fingerprints: Vec::new(),
            allow_unsigned,
        };
        for s in secrets {
            v.add(s.as_ref(), None);
        }
        v
    }

    /// Also accept `secret` until `retire_at` (a secret being retired).
    pub fn retiring(mut self, secret: &[u8], retire_at: SystemTime) -> Self {
        self.add(secret, Some(retire_at));
        self
    }

    fn add(&mut self, secret: &[u8], retire_at: Option<SystemTime>) {
        // HMAC takes keys of any length: `new_from_slice` never fails for it.
        if let Ok(mac) = HmacSha256::new_from_slice(secret) {
            self.keys.push(Key { mac, retire_at });
            if retire_at.is_none() {
                self.fingerprints.push(fingerprint(secret));
            }
        }
    }

    /// Number of configured secrets (those being retired included).
    pub fn secret_count(&self) -> usize {
        self.keys.len()
    }

    /// The fingerprints of the secrets in use (not of those being retired).
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Check `header` (the raw `X-Cal-Signature-256` value, if any) against `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
        self.check(header, body, SystemTime::now()).map(|_| ())
    }

    /// [`Verifier::verify`] at `now`, saying what accepted the delivery.
    pub fn check(
        &self,
        header: Option<&[u8]>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Signed, VerifyError> {
        let Some(raw) = header else {
            return if self.allow_unsigned {
                Ok(Signed::Unsigned)
            } else {
                Err(VerifyError::Missing)
            };
        };
        let value = raw.trim_ascii();
        if value.eq_ignore_ascii_case(NO_SECRET_PROVIDED.as_bytes()) {
            return if self.allow_unsigned {
                Ok(Signed::Unsigned)
            } else {
                Err(VerifyError::NoSecretProvided)
            };
        }
        let hex_part = strip_prefix_ignore_case(value, b"sha256=").unwrap_or(value);
        let mut signature = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut signature).map_err(|_| VerifyError::Malformed)?;
        if self.keys.is_empty() {
            // A signature is present but there is no secret it could be right for: a present,
            // unverifiable signature is refused in every configuration, `allow_unsigned`
            // included (it admits only deliveries that carry none).
            return Err(VerifyError::Mismatch);
        }
        // Check every key (no early exit) so timing does not tell which one matched; a
        // retired key is checked too, and its match ignored.
        let (mut current, mut retiring) = (false, false);
        for key in &self.keys {
            let mut mac = key.mac.clone();
            mac.update(body);
            let ok = mac.verify_slice(&signature).is_ok();
            match key.retire_at {
                None => current |= ok,
                Some(at) => retiring |= ok && now < at,
            }
        }
        match (current, retiring) {
            (true, _) => Ok(Signed::Current),
            (false, true) => Ok(Signed::Retiring),
            _ => Err(VerifyError::Mismatch),
        }
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&value[prefix.len()..])
    } else {
        None
    }
}

/// The `X-Cal-Signature-256` value Cal.com would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` never fails for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retiring_secret_is_accepted_until_its_time_and_told_apart() {
        let body = b"{}";
        let now = SystemTime::now();
        let end = now + std::time::Duration::from_secs(60);
        let v = Verifier::new(&["new"], false).retiring(b"old", end);
        let signed = |secret: &str| sign(secret.as_bytes(), body);
        let check = |secret: &str, at| v.check(Some(signed(secret).as_bytes()), body, at);
        assert_eq!(check("new", now), Ok(Signed::Current));
        assert_eq!(check("old", now), Ok(Signed::Retiring));
        assert_eq!(check("old", end), Err(VerifyError::Mismatch));
        assert_eq!(check("other", now), Err(VerifyError::Mismatch));
        assert_eq!(v.fingerprints(), [fingerprint(b"new")]);
        assert_ne!(fingerprint(b"new"), fingerprint(b"old"));
        assert_eq!(fingerprint(b"new").len(), 16);
    }

    const SECRET: &str = "fixture-secret-2021-10-20";

    #[test]
    fn accepts_either_case_and_prefix() {
        let body = br#"{"triggerEvent":"PING"}"#;
        let sig = sign(SECRET.as_bytes(), body);
        let v = Verifier::new(&[SECRET], false);
        assert_eq!(v.verify(Some(sig.as_bytes()), body), Ok(()));
        assert_eq!(v.verify(Some(sig.to_uppercase().as_bytes()), body), Ok(()));
        let prefixed = format!("sha256={sig}");
        assert_eq!(v.verify(Some(prefixed.as_bytes()), body), Ok(()));
    }

    #[test]
    fn any_secret_may_match() {
        let body = b"{}";
        let v = Verifier::new(&["new", "old"], false);
        assert_eq!(v.verify(Some(sign(b"old", body).as_bytes()), body), Ok(()));
        assert_eq!(v.verify(Some(sign(b"new", body).as_bytes()), body), Ok(()));
        assert_eq!(
            v.verify(Some(sign(b"other", body).as_bytes()), body),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn unsigned_needs_opt_in() {
        let strict = Verifier::new(&["s"], false);
        assert_eq!(strict.verify(None, b"{}"), Err(VerifyError::Missing));
        assert_eq!(
            strict.verify(Some(b"no-secret-provided"), b"{}"),
            Err(VerifyError::NoSecretProvided)
        );
        let lax = Verifier::new(&["s"], true);
        assert_eq!(lax.verify(None, b"{}"), Ok(()));
        assert_eq!(lax.verify(Some(b"no-secret-provided"), b"{}"), Ok(()));
        // A signature that is present but wrong is never accepted.
        assert_eq!(
            lax.verify(Some(sign(b"x", b"{}").as_bytes()), b"{}"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers() {
        let v = Verifier::new(&["s"], false);
        assert_eq!(v.verify(Some(b"zz"), b"{}"), Err(VerifyError::Malformed));
        assert_eq!(v.verify(Some(b"abcd"), b"{}"), Err(VerifyError::Malformed));
        assert_eq!(v.verify(Some(b""), b"{}"), Err(VerifyError::Malformed));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The body's HMAC verifies in either case and with the prefix; any other value of
            /// any shape does not.
            #[test]
            fn only_the_hmac_verifies(
                body in proptest::collection::vec(any::<u8>(), 0..256),
                other in "(sha256=)?[0-9a-fA-F]{62,66}|\\PC{0,80}",
                upper in any::<bool>(),
            ) {
                let v = Verifier::new(&[SECRET], false);
                let sig = sign(SECRET.as_bytes(), &body);
                let sent = if upper { format!("sha256={}", sig.to_uppercase()) } else { sig.clone() };
                prop_assert_eq!(v.verify(Some(sent.as_bytes()), &body), Ok(()));
                let trimmed = other.trim_ascii();
                let hex = trimmed.strip_prefix("sha256=").unwrap_or(trimmed);
                if !hex.eq_ignore_ascii_case(&sig) {
                    prop_assert!(v.verify(Some(other.as_bytes()), &body).is_err());
                }
            }
        }
    }
}
