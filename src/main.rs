//! The `cal-relay` command: runs the relay (`serve`), checks a configuration (`check-config`),
//! sends a test delivery as Cal.com would (`send`), checks a signature (`verify`) and probes a
//! running relay's health endpoint (`probe`, for container health checks). It parses the
//! command line and dispatches: turning a configuration into a running relay is
//! `cal_relay_app`'s, and the relay's logic lives in the crates below it.

mod calcom;
mod cli;
mod samples;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::Signal;

use anyhow::Context;
use cal_relay_app::{load, Plan};
use clap::Parser;

use cli::{Cli, Command};

/// mimalloc instead of the system allocator: each delivery allocates and frees a few
/// kilobytes across threads, where glibc malloc spent about a tenth of the relay's CPU
/// (measured with `perf` under the bench load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SIGHUP's default action ends the process: until the reload handler is installed (after
    // the sinks, spool and listener are up, which can take seconds with a backlog) a SIGHUP is
    // ignored, then the handler registered below catches every later one.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread is started.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hangup = {
        let _runtime = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    };
    match runtime.block_on(run(cli, hangup)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, hangup: Option<Signal>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { watch_config } => {
            serve(cli.config, watch_config, hangup).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let plan = Plan::resolve(load(cli.config.as_deref())?)?;
            if let Some(warning) = plan.env_warning() {
                eprintln!("warning: {warning}");
            }
            print_out(&cal_relay_app::render::render(&plan)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { trigger } => match cal_relay_contract::schema_text(trigger.as_deref()) {
            Ok(text) => {
                println!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(known) => {
                eprintln!("{known}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Asyncapi => {
            let plan = Plan::resolve(load(cli.config.as_deref())?)?;
            let doc = cal_relay_app::asyncapi::document(&plan);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            url,
            secret,
            trigger,
            meeting_shape,
            content_type,
            webhook_version,
            file,
        } => {
            let body = match (&trigger, &file) {
                (Some(t), _) => samples::body(t, meeting_shape),
                (None, Some(f)) => read(f)?,
                (None, None) => anyhow::bail!("give a FILE or --trigger"),
            };
            let delivery = send::Delivery {
                url,
                secret,
                body,
                content_type,
                webhook_version: Some(webhook_version).filter(|v| !v.is_empty()),
            };
            let (status, answer) = send::send(delivery).await?;
            println!("{status} {answer}");
            Ok(exit_if((200..300).contains(&status)))
        }
        Command::Spool { dir, command } => spool(cli.config, dir, command),
        command @ (Command::Subscribe { .. }
        | Command::Subscriptions { .. }
        | Command::RotateSecret { .. }
        | Command::Unsubscribe { .. }) => calcom::run(cli.config.as_deref(), command).await,
        Command::Probe { url, timeout } => {
            let (status, answer) = send::probe(&url, timeout).await?;
            println!("{status} {}", answer.trim_end());
            Ok(exit_if((200..300).contains(&status)))
        }
        Command::Verify {
            secret,
            signature,
            file,
        } => {
            let body = read(&file)?;
            let verdict = send::verify(secret, &signature, &body);
            println!("{verdict}");
            Ok(exit_if(verdict == "valid"))
        }
    }
}

/// `serve`: load, log, resolve, and run until a signal ends it.
async fn serve(path: Option<PathBuf>, watch: bool, hangup: Option<Signal>) -> anyhow::Result<()> {
    let loaded = load(path.as_deref())?;
    cal_relay_app::init_logging(&loaded.config);
    let plan = Plan::resolve(loaded)?;
    if let Some(warning) = plan.env_warning() {
        tracing::warn!("{warning}");
    }
    let how = cal_relay_app::serve::Serving {
        path,
        watch,
        hangup,
    };
    Ok(cal_relay_app::serve::serve(plan, how).await?)
}

/// `spool`: inspect or change the spool of `dir`, else of the configuration's `delivery.dir`.
fn spool(
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
    command: cli::SpoolCommand,
) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => load(config.as_deref())?.config.delivery.dir,
    };
    let out = cal_relay_app::spool_cli::run(&dir, command.into())?;
    print_out(&out.stdout)?;
    if let Some(why) = &out.failure {
        eprintln!("{why}");
    }
    Ok(exit_if(out.failure.is_none()))
}

/// A file given on the command line.
fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Exit 0 when `ok`.
fn exit_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
