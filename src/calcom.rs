//! `subscribe`, `subscriptions check` and `unsubscribe`: the command line's arguments turned
//! into `cal_relay_app::subscribe`'s, and its report printed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use cal_relay_app::rotate::{self, Rotation};
use cal_relay_app::subscribe::{self, Report, SecretOut, Target, Wanted};
use cal_relay_calcom::{Client, NoShow, Scope, Secret};

use crate::cli::{
    ApiArgs, Command, ManifestArgs, SubscriptionsCommand, TargetArgs, TimeUnit, WantedArgs,
};

/// Run one of the Cal.com commands.
pub async fn run(config: Option<&Path>, command: Command) -> anyhow::Result<ExitCode> {
    let report = match command {
        Command::Subscribe {
            api,
            target,
            wanted,
            dry_run,
            manifest,
        } => {
            let target = target_of(target)?;
            // Cal.com's URL rule, before the API key is even read.
            cal_relay_calcom::check_subscriber_url(&target.url)
                .map_err(|m| anyhow::anyhow!("--url {}: {m}", target.url))?;
            let config = cal_relay_app::load(config)?.config;
            let out = secret_out(manifest);
            let client = client_of(&api)?;
            let wanted = wanted_of(wanted);
            let report = subscribe::subscribe(
                &config,
                &client,
                &target,
                &wanted,
                &out,
                &mut print_manifest,
                dry_run,
            )
            .await?;
            said(report, &out)
        }
        Command::Subscriptions {
            command:
                SubscriptionsCommand::Check {
                    api,
                    target,
                    wanted,
                },
        } => {
            let target = target_of(target)?;
            let config = cal_relay_app::load(config)?.config;
            let client = client_of(&api)?;
            subscribe::check(&config, &client, &target, &wanted_of(wanted)).await?
        }
        Command::RotateSecret {
            api,
            target,
            overlap,
            relays,
            wait,
            finish,
            manifest,
        } => {
            let out = secret_out(manifest);
            let rotation = Rotation {
                overlap,
                relays,
                wait,
            };
            let finish = finish.then_some(());
            rotate_secret(config, &api, target_of(target)?, &rotation, &out, finish).await?
        }
        Command::Unsubscribe {
            api,
            target,
            dry_run,
        } => {
            let target = target_of(target)?;
            let client = client_of(&api)?;
            subscribe::unsubscribe(&client, &target, dry_run).await?
        }
        _ => anyhow::bail!("not a Cal.com command"),
    };
    Ok(finish(report))
}

/// `rotate-secret` (`finish`: `--finish`). A manifest is printed as soon as it is made (the
/// relays are waited for after it), and what is said then goes to standard error.
async fn rotate_secret(
    config: Option<&Path>,
    api: &ApiArgs,
    target: Target,
    rotation: &Rotation,
    out: &SecretOut,
    finish: Option<()>,
) -> anyhow::Result<Report> {
    let config = cal_relay_app::load(config)?.config;
    let mut print = print_manifest;
    let report = match finish {
        Some(()) => rotate::finish(&config, &target, out, &mut print)?,
        None => {
            let client = client_of(api)?;
            rotate::rotate(&config, &client, &target, rotation, out, &mut print).await?
        }
    };
    Ok(said(report, out))
}

/// A Secret manifest, on standard output at once (what is waited for after it may take long).
fn print_manifest(manifest: &str) {
    use std::io::Write as _;
    print!("{manifest}");
    let _ = std::io::stdout().flush();
}

/// When a manifest took standard output, what the command said goes to standard error.
fn said(mut report: Report, out: &SecretOut) -> Report {
    if matches!(out, SecretOut::Manifest { .. }) {
        eprint!("{}", std::mem::take(&mut report.text));
    }
    report
}

fn secret_out(m: ManifestArgs) -> SecretOut {
    if m.print_secret_manifest {
        SecretOut::Manifest {
            name: m.secret_name,
            namespace: m.secret_namespace,
            key: m.secret_key,
        }
    } else {
        SecretOut::File
    }
}

fn finish(report: Report) -> ExitCode {
    print!("{}", report.text);
    match report.failure {
        Some(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

/// The API key from its file, else CAL_API_KEY; never echoed.
fn client_of(api: &ApiArgs) -> anyhow::Result<Client> {
    let key = match &api.api_key_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the API key file {}", file.display()))?,
        None => std::env::var("CAL_API_KEY")
            .context("no API key: set CAL_API_KEY or pass --api-key-file")?,
    };
    let key = key.trim().to_owned();
    anyhow::ensure!(!key.is_empty(), "the API key is empty");
    Ok(Client::new(&api.api_url, Secret(key), api.api_timeout)?)
}

fn target_of(t: TargetArgs) -> anyhow::Result<Target> {
    let id = |kind: &str| -> anyhow::Result<u64> {
        t.scope
            .get(1)
            .with_context(|| format!("--scope {kind} needs an ID"))?
            .parse()
            .with_context(|| format!("--scope {kind}: the ID is a number"))
    };
    let scope = match t.scope.first().map(String::as_str) {
        None | Some("user") if t.scope.len() <= 1 => Scope::User,
        Some("event-type") => Scope::EventType(id("event-type")?),
        Some("org") => Scope::Organization(id("org")?),
        _ => anyhow::bail!("--scope is `user`, `event-type ID` or `org ID`"),
    };
    Ok(Target {
        url: t.url,
        source: t.source,
        scope,
    })
}

fn wanted_of(w: WantedArgs) -> Wanted {
    let unit = match w.no_show_unit {
        TimeUnit::Day => "DAY",
        TimeUnit::Hour => "HOUR",
        TimeUnit::Minute => "MINUTE",
    };
    Wanted {
        all_known: w.all_known,
        no_show: NoShow {
            time: w.no_show_time.max(1),
            unit: unit.into(),
        },
        version: w.payload_version,
        keep_template: w.keep_template,
    }
}
