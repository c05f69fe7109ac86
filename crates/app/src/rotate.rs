//! `rotate-secret`: a new webhook secret with no delivery lost. Cal.com signs with one secret
//! only, and deliveries queued before a change keep the old signature (scheduled meetings until
//! the meeting), so the order is: the new secret is added to the source (its secrets file, or
//! a printed Secret manifest to apply); every relay serving the source is waited for until it
//! reports the new secret in use (`cal_relay_source_secret_info` on its `/metrics`); only then
//! is Cal.com patched, and only then are the old secrets marked as being retired (the file
//! written again, or a second manifest). They are accepted until the overlap ends, then refused
//! by the relays themselves (or sooner with `--finish`).

use std::time::{Duration, Instant, SystemTime};

use cal_relay_calcom::{Changes, Client};
use cal_relay_config::{Config, SourceConfig};

use crate::secrets::{file_secrets, file_text, SourceSecret};
use crate::subscribe::{Report, SecretOut, Target};
use crate::AppError;

/// How a rotation runs.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// How long the old secret is still accepted once Cal.com signs with the new one.
    pub overlap: Duration,
    /// The relays serving the source (base URLs); empty: the configuration's own listener.
    pub relays: Vec<String>,
    /// How long to wait for them to report the new secret.
    pub wait: Duration,
}

/// Start a rotation: see the module's description. `manifest` is called with the Secret
/// manifest to apply when the secrets go out that way, before the relays are waited for.
pub async fn rotate(
    config: &Config,
    client: &Client,
    target: &Target,
    rotation: &Rotation,
    secret_out: &SecretOut,
    manifest: &mut dyn FnMut(&str),
) -> Result<Report, AppError> {
    let source = crate::subscribe::source(config, target)?;
    let hooks = client
        .list(&target.scope)
        .await
        .map_err(crate::subscribe::api)?;
    let hook = hooks
        .iter()
        .find(|h| h.subscriber_url == target.url)
        .ok_or_else(|| {
            AppError::setting(
                "--url",
                format!("no webhook delivers to {}: run subscribe first", target.url),
            )
        })?;
    let new = crate::subscribe::new_secret()?;
    // Expired secrets go; the rest stay as they are, and the new one is added.
    let now = SystemTime::now();
    let mut kept: Vec<SourceSecret> = file_held(source)?
        .into_iter()
        .filter(|s| s.retire_at.is_none_or(|at| at > now))
        .collect();
    kept.push(SourceSecret::current(new.0.clone()));
    let mut out = Report::default();
    hand_out(source, &kept, secret_out, manifest, &mut out)?;
    let fingerprint = cal_relay_core::fingerprint(new.0.as_bytes());
    let relays = relays(config, &rotation.relays);
    // Until Cal.com is patched the old secret stays a current one: a rotation cut short here
    // (a relay that never reports, Ctrl-C) leaves both accepted, never the old one expiring.
    wait_for(&relays, &source.name, &fingerprint, rotation.wait).await?;
    out.text.push_str(&format!(
        "every relay ({}) accepts the new secret (fingerprint {fingerprint})\n",
        relays.join(", ")
    ));
    let changes = Changes {
        secret: Some(new.clone()),
        ..Changes::default()
    };
    client
        .update(&target.scope, &hook.id, &changes)
        .await
        .map_err(crate::subscribe::api)?;
    // Now the old secrets are being retired: accepted until the overlap ends.
    let retire_at = SystemTime::now() + rotation.overlap;
    let retiring: Vec<SourceSecret> = kept
        .into_iter()
        .map(|s| SourceSecret {
            retire_at: s.retire_at.or((s.value != new.0).then_some(retire_at)),
            ..s
        })
        .collect();
    hand_out(source, &retiring, secret_out, manifest, &mut out)?;
    out.text.push_str(&format!(
        "Cal.com's webhook {} signs with it from now on; the old secret is accepted until {} (then refused by the relays; `rotate-secret --finish` retires it sooner)\n",
        hook.id,
        humantime::format_rfc3339_seconds(retire_at)
    ));
    Ok(out)
}

/// `rotate-secret --finish`: drop every secret being retired from the source.
pub fn finish(
    config: &Config,
    target: &Target,
    secret_out: &SecretOut,
    manifest: &mut dyn FnMut(&str),
) -> Result<Report, AppError> {
    let source = crate::subscribe::source(config, target)?;
    let held = file_held(source)?;
    let retired = held.iter().filter(|s| s.retire_at.is_some()).count();
    let kept: Vec<SourceSecret> = held.into_iter().filter(|s| s.retire_at.is_none()).collect();
    if kept.is_empty() {
        return Err(AppError::setting(
            format!("source {}", source.name),
            "no secret in use would be left: finish only after a rotation",
        ));
    }
    let mut out = Report::default();
    hand_out(source, &kept, secret_out, manifest, &mut out)?;
    out.text.push_str(&format!(
        "retired {retired} secret(s) of source {}\n",
        source.name
    ));
    Ok(out)
}

/// The secrets of the source's file (the ones a rotation can change).
fn file_held(source: &SourceConfig) -> Result<Vec<SourceSecret>, AppError> {
    let Some(file) = &source.secrets_file else {
        return Err(AppError::setting(
            format!("source {}", source.name),
            "a rotation needs the source's secrets in a secrets_file (inline secrets and secrets_env cannot be rotated by the relay)",
        ));
    };
    let text = crate::secrets::read_file(file)
        .map_err(|e| AppError::io(format!("cannot read {}", file.display()), e))?;
    Ok(file_secrets(&text))
}

/// Give the relay `secrets`: its secrets file rewritten, or a manifest to apply.
fn hand_out(
    source: &SourceConfig,
    secrets: &[SourceSecret],
    secret_out: &SecretOut,
    manifest: &mut dyn FnMut(&str),
    out: &mut Report,
) -> Result<(), AppError> {
    if secret_out.print(secrets, manifest) {
        out.text.push_str("printed the Secret manifest to apply\n");
        return Ok(());
    }
    let file = source
        .secrets_file
        .as_deref()
        .ok_or_else(|| AppError::setting(format!("source {}", source.name), "no secrets_file"))?;
    crate::subscribe::write_secrets(file, &file_text(secrets))?;
    out.text.push_str(&format!("updated {}\n", file.display()));
    Ok(())
}

/// The relays to wait for: those given, else the configuration's listener on loopback.
fn relays(config: &Config, given: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|r| r.trim_end_matches('/').to_owned())
            .collect();
    }
    let listen = config.server.listen.to_string();
    let local = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    vec![format!("{scheme}://{local}")]
}

/// Wait until every relay's `/metrics` shows `fingerprint` in use for `source`.
async fn wait_for(
    relays: &[String],
    source: &str,
    fingerprint: &str,
    wait: Duration,
) -> Result<(), AppError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| AppError::setting("--relay", e))?;
    let deadline = Instant::now() + wait;
    let mut pending: Vec<&String> = relays.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for relay in pending {
            if !reports(&http, relay, source, fingerprint).await {
                still.push(relay);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(AppError::setting(
                "--relay",
                format!(
                    "{} did not report the new secret within {}; Cal.com was not changed (the new secret stays added: run rotate-secret again once they do)",
                    pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    humantime::format_duration(wait)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn reports(http: &reqwest::Client, relay: &str, source: &str, fingerprint: &str) -> bool {
    let Ok(response) = http.get(format!("{relay}/metrics")).send().await else {
        return false;
    };
    let Ok(text) = response.text().await else {
        return false;
    };
    let (f, s) = (
        format!("fingerprint=\"{fingerprint}\""),
        format!("source=\"{source}\""),
    );
    text.lines().any(|l| {
        l.starts_with("cal_relay_source_secret_info{")
            && l.contains(&f)
            && l.contains(&s)
            && l.ends_with(" 1")
    })
}
