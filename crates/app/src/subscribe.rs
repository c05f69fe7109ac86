//! The Cal.com side of a source, kept consistent with the relay's routes and secrets through
//! Cal.com API v2: `subscribe` (an idempotent upsert matched on the subscriber URL),
//! `subscriptions check` (one line per difference) and `unsubscribe`.
//!
//! Secrets: a re-run keeps the secret Cal.com and the relay already share (never an implicit
//! rotation); a new one (32 random bytes, hex) is made only when neither side has one, and is
//! written where the source reads it (its `secrets_file`) before Cal.com is told, or printed as
//! a Kubernetes Secret manifest when asked. No secret reaches any other output.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use cal_relay_calcom::{
    check_subscriber_url, Changes, Client, Desired, Difference, NoShow, Scope, Secret, Webhook,
};
use cal_relay_config::{Config, SourceConfig};

use crate::secrets::SourceSecret;
use crate::AppError;

/// Which webhook: the subscriber URL in a scope, for one of the configuration's sources.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// The source's name; may be left out when the configuration has one source.
    pub source: Option<String>,
    pub scope: Scope,
}

/// What the webhook should be, beyond the triggers the routes give.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Every subscribable trigger, whatever the routes name.
    pub all_known: bool,
    pub no_show: NoShow,
    pub version: String,
    pub keep_template: bool,
}

/// Where a new secret goes when the relay does not hold one yet.
#[derive(Debug, Clone)]
pub enum SecretOut {
    /// Appended to the source's `secrets_file`.
    File,
    /// Printed (standard output only) as a Kubernetes Secret manifest.
    Manifest {
        name: String,
        namespace: String,
        key: String,
    },
}

impl SecretOut {
    /// Hand `secrets` (every secret of the source) to `print` as a Secret manifest when that
    /// is where they go; false when they go to the secrets file instead.
    pub(crate) fn print(&self, secrets: &[SourceSecret], print: &mut dyn FnMut(&str)) -> bool {
        let SecretOut::Manifest {
            name,
            namespace,
            key,
        } = self
        else {
            return false;
        };
        let mut text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: Opaque\nstringData:\n  {key}: |\n"
        );
        for line in crate::secrets::file_text(secrets).lines() {
            writeln!(text, "    {line}").ok();
        }
        print(&text);
        true
    }
}

/// What a command has to say, and why it failed when it did (the exit status). A Secret
/// manifest is not in it: it goes to the caller's `print` as soon as it is made, alone on
/// standard output (for `| kubectl apply -f -`), and `text` then goes to standard error.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub failure: Option<String>,
}

/// The source `target` names (or the only one).
pub(crate) fn source<'c>(
    config: &'c Config,
    target: &Target,
) -> Result<&'c SourceConfig, AppError> {
    let sources = &config.sources;
    match &target.source {
        Some(name) => sources.iter().find(|s| &s.name == name).ok_or_else(|| {
            AppError::setting(
                "--source",
                format!(
                    "no source is named {name:?} (the configuration has {})",
                    names(sources)
                ),
            )
        }),
        None if sources.len() == 1 => Ok(&sources[0]),
        None => Err(AppError::setting(
            "--source",
            format!(
                "the configuration has several sources ({}): name one",
                names(sources)
            ),
        )),
    }
}

fn names(sources: &[SourceConfig]) -> String {
    sources
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The webhook the relay wants: every subscribable trigger a route matches (all of them for a
/// `*` route or `--all-known`; PING never).
pub fn desired(config: &Config, target: &Target, wanted: &Wanted) -> Result<Desired, AppError> {
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| cal_relay_core::Route::new(i, &r.triggers, r.sinks.clone(), None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AppError::setting("routes", e.to_string()))?;
    let triggers: BTreeSet<String> = cal_relay_core::trigger::subscribable()
        .filter(|t| wanted.all_known || routes.iter().any(|r| r.matches(t)))
        .map(str::to_owned)
        .collect();
    if triggers.is_empty() {
        return Err(AppError::setting(
            "routes",
            "no route names a trigger Cal.com can subscribe to (use --all-known for every one)",
        ));
    }
    Ok(Desired {
        url: target.url.clone(),
        triggers,
        version: wanted.version.clone(),
        no_show: wanted.no_show.clone(),
        keep_template: wanted.keep_template,
    })
}

/// The secrets the relay holds for `source` now (none yet is fine: this may run first).
fn held(source: &SourceConfig) -> Vec<Secret> {
    crate::secrets::held(source)
        .into_iter()
        .map(|s| Secret(s.value))
        .collect()
}

/// 32 random bytes from the operating system, hex.
pub(crate) fn new_secret() -> Result<Secret, AppError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| AppError::setting("secret", format!("no randomness: {e}")))?;
    Ok(Secret(hex::encode(bytes)))
}

/// The webhook of `hooks` at `url`.
fn find<'h>(hooks: &'h [Webhook], url: &str) -> Option<&'h Webhook> {
    hooks.iter().find(|h| h.subscriber_url == url)
}

/// `subscribe`: create the webhook, or patch it into what the relay wants.
pub async fn subscribe(
    config: &Config,
    client: &Client,
    target: &Target,
    wanted: &Wanted,
    secret_out: &SecretOut,
    print: &mut dyn FnMut(&str),
    dry_run: bool,
) -> Result<Report, AppError> {
    check_subscriber_url(&target.url).map_err(|m| AppError::setting("--url", m))?;
    let source = source(config, target)?;
    let desired = desired(config, target, wanted)?;
    let hooks = client.list(&target.scope).await.map_err(api)?;
    let found = find(&hooks, &target.url);
    let (secret_for_cal, secret_for_relay) = secrets_for(found, &held(source))?;
    let changes = match found {
        Some(hook) => Changes::update(hook, &desired, secret_for_cal),
        None => Changes::create(
            &desired,
            secret_for_cal.unwrap_or_else(|| Secret(String::new())),
        ),
    };
    let mut out = Report::default();
    let what = match found {
        Some(hook) if changes.is_empty() => {
            writeln!(
                out.text,
                "webhook {} for {} is up to date",
                hook.id, target.url
            )
            .ok();
            None
        }
        Some(hook) => Some(format!("update webhook {} for {}", hook.id, target.url)),
        None => Some(format!(
            "create a webhook for {} ({})",
            target.url, target.scope
        )),
    };
    if dry_run {
        if let Some(what) = &what {
            writeln!(out.text, "would {what}:").ok();
            for line in changes.describe() {
                writeln!(out.text, "  {line}").ok();
            }
        }
        if secret_for_relay.is_some() {
            writeln!(
                out.text,
                "would give source {} the webhook's secret",
                source.name
            )
            .ok();
        }
        writeln!(out.text, "dry run: nothing changed").ok();
        return Ok(out);
    }
    // The relay learns the secret before Cal.com signs with it.
    if let Some(secret) = &secret_for_relay {
        give_secret(source, secret, secret_out, print, &mut out)?;
    }
    let Some(what) = what else {
        return Ok(out);
    };
    let hook = match found {
        Some(hook) => client.update(&target.scope, &hook.id, &changes).await,
        None => client.create(&target.scope, &changes).await,
    }
    .map_err(api)?;
    let done = what
        .replacen("create", "created", 1)
        .replacen("update", "updated", 1);
    writeln!(out.text, "{done}: webhook {}", hook.id).ok();
    for line in changes.describe() {
        writeln!(out.text, "  {line}").ok();
    }
    Ok(out)
}

/// Which secret Cal.com is to sign with from now on (`None`: it keeps its own), and which the
/// relay must learn (`None`: it holds it). Never a rotation: a secret both hold is kept, one
/// only Cal.com holds is given to the relay, and one is made only when neither has any.
fn secrets_for(
    found: Option<&Webhook>,
    held: &[Secret],
) -> Result<(Option<Secret>, Option<Secret>), AppError> {
    Ok(match found.and_then(|h| h.secret.clone()) {
        Some(s) if !s.0.is_empty() && held.contains(&s) => (None, None),
        Some(s) if !s.0.is_empty() => (None, Some(s)),
        _ => match held.first() {
            Some(s) => (Some(s.clone()), None),
            None => {
                let s = new_secret()?;
                (Some(s.clone()), Some(s))
            }
        },
    })
}

/// Hand `secret` to the relay: appended to the source's secrets file, or printed as a
/// Kubernetes Secret manifest holding every secret of the source.
fn give_secret(
    source: &SourceConfig,
    secret: &Secret,
    secret_out: &SecretOut,
    print: &mut dyn FnMut(&str),
    out: &mut Report,
) -> Result<(), AppError> {
    let mut secrets = crate::secrets::held(source);
    secrets.push(SourceSecret::current(secret.0.clone()));
    if secret_out.print(&secrets, print) {
        return Ok(());
    }
    let Some(file) = &source.secrets_file else {
        return Err(AppError::setting(
            format!("source {}", source.name),
            "it has no secrets_file to write the webhook's secret to: set one, or pass --print-secret-manifest",
        ));
    };
    append_secret(file, secret)?;
    writeln!(
        out.text,
        "the webhook's secret was written to {} (source {})",
        file.display(),
        source.name
    )
    .ok();
    Ok(())
}

/// Add `secret` as a line of `file` (created when absent).
fn append_secret(file: &Path, secret: &Secret) -> Result<(), AppError> {
    let mut text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AppError::io(format!("cannot read {}", file.display()), e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&secret.0);
    text.push('\n');
    write_secrets(file, &text)
}

/// Replace `file` with `text` atomically (mode 0600, synced): a relay reading it meanwhile
/// sees the old file or the new one, never half of it.
pub(crate) fn write_secrets(file: &Path, text: &str) -> Result<(), AppError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |e| AppError::io(format!("cannot write {}", file.display()), e);
    let tmp = file.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)?;
    Ok(())
}

/// `subscriptions check`: every difference between Cal.com's webhook and the configuration.
pub async fn check(
    config: &Config,
    client: &Client,
    target: &Target,
    wanted: &Wanted,
) -> Result<Report, AppError> {
    let source = source(config, target)?;
    let desired = desired(config, target, wanted)?;
    let hooks = client.list(&target.scope).await.map_err(api)?;
    let differences = match find(&hooks, &target.url) {
        Some(hook) => Difference::between(hook, &desired, &held(source)),
        None => vec![Difference::Missing {
            url: target.url.clone(),
        }],
    };
    let mut out = Report::default();
    for d in &differences {
        writeln!(out.text, "{}: {d}", target.url).ok();
    }
    if differences.is_empty() {
        writeln!(out.text, "{}: matches source {}", target.url, source.name).ok();
    } else {
        out.failure = Some(format!(
            "{} difference(s) between Cal.com and the configuration",
            differences.len()
        ));
    }
    Ok(out)
}

/// `unsubscribe`: delete the webhook at the target's URL (explicit only: never on shutdown).
pub async fn unsubscribe(
    client: &Client,
    target: &Target,
    dry_run: bool,
) -> Result<Report, AppError> {
    let hooks = client.list(&target.scope).await.map_err(api)?;
    let mut out = Report::default();
    match find(&hooks, &target.url) {
        None => {
            writeln!(
                out.text,
                "no webhook delivers to {}; nothing to delete",
                target.url
            )
            .ok();
        }
        Some(hook) if dry_run => {
            writeln!(
                out.text,
                "would delete webhook {} for {}",
                hook.id, target.url
            )
            .ok();
        }
        Some(hook) => {
            client.delete(&target.scope, &hook.id).await.map_err(api)?;
            writeln!(out.text, "deleted webhook {} for {}", hook.id, target.url).ok();
        }
    }
    Ok(out)
}

pub(crate) fn api(e: cal_relay_calcom::ApiError) -> AppError {
    AppError::setting("Cal.com API", e.to_string())
}
