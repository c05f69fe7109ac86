//! The `cal-relay` command: runs the relay (`serve`), checks a configuration (`check-config`),
//! sends a test delivery as Cal.com would (`send`), checks a signature (`verify`) and probes a
//! running relay's health endpoint (`probe`, for container health checks). It parses the
//! command line and dispatches: turning a configuration into a running relay is
//! `cal_relay_app`'s, and the relay's logic lives in the crates below it.

mod samples;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::Signal;

use anyhow::Context;
use cal_relay_app::spool_cli::SpoolAction;
use cal_relay_app::{load, Plan};
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: each delivery allocates and frees a few
/// kilobytes across threads, where glibc malloc spent about a tenth of the relay's CPU
/// (measured with `perf` under the bench load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cal-relay",
    version,
    about = "Relay Cal.com webhooks into Kafka, AMQP and NATS"
)]
struct Cli {
    /// Configuration file [default: config/cal-relay.toml, else the built-in default]
    #[arg(long, short, global = true, env = "CAL_RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Also reload when the configuration file changes (checked every second), as on
        /// SIGHUP: for a mounted ConfigMap.
        #[arg(long)]
        watch_config: bool,
    },
    /// Validate the configuration and print the effective routes (secrets redacted).
    CheckConfig,
    /// Print the JSON Schema of a trigger's messages, or of every known trigger (an object by
    /// trigger).
    Schema {
        /// A known trigger, e.g. BOOKING_CREATED; `envelope` for the schema of any envelope.
        trigger: Option<String>,
    },
    /// Print the AsyncAPI 3.0 document (JSON) of what the configuration publishes.
    Asyncapi,
    /// POST a delivery as Cal.com would: a file, or a built-in sample for --trigger.
    Send {
        /// Where to send, e.g. http://127.0.0.1:8080/webhooks/cal
        #[arg(long)]
        url: String,
        /// Webhook secret to sign with; without it the header says `no-secret-provided`.
        #[arg(long, env = "CAL_RELAY_SEND_SECRET")]
        secret: Option<String>,
        /// Send the built-in sample of this trigger (shaped as Cal.com's builders write it,
        /// times relative to now).
        #[arg(long, conflicts_with = "file")]
        trigger: Option<String>,
        /// Shape of a MEETING_STARTED / MEETING_ENDED sample: `flat` (older Cal.com),
        /// `scheduled` (the envelope newer Cal.com builds at booking time and sends at the
        /// meeting's start or end) or `queued` (Cal.com's task queue).
        #[arg(long, value_enum, default_value_t, requires = "trigger")]
        meeting_shape: samples::MeetingShape,
        /// Content-Type to send.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// X-Cal-Webhook-Version to send (empty to omit).
        #[arg(long, default_value = "2021-10-20")]
        webhook_version: String,
        /// A body file to send byte for byte.
        #[arg(required_unless_present = "trigger")]
        file: Option<PathBuf>,
    },
    /// Inspect the spool: pending deliveries and dead letters; replay or purge dead letters.
    Spool {
        /// Spool directory [default: delivery.dir of the configuration]
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// GET a health endpoint; exit 0 on 2xx. For HEALTHCHECK in images without curl.
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Check an X-Cal-Signature-256 value against a body file.
    Verify {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        signature: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Totals: pending deliveries, bytes, oldest, dead letters.
    Stats,
    /// One line per pending delivery (id SEQ) and dead letter (id SEQ.SINK).
    List {
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// One entry with headers and body, as JSON.
    Show { id: String },
    /// Hand dead letters back for delivery (a running relay takes them within a second).
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

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
            let loaded = load(cli.config.as_deref())?;
            cal_relay_app::init_logging(&loaded.config);
            let plan = Plan::resolve(loaded)?;
            if let Some(warning) = plan.env_warning() {
                tracing::warn!("{warning}");
            }
            let how = cal_relay_app::serve::Serving {
                path: cli.config.clone(),
                watch: watch_config,
                hangup,
            };
            cal_relay_app::serve::serve(plan, how).await?;
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
                (None, Some(f)) => {
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, None) => anyhow::bail!("give a FILE or --trigger"),
            };
            let (status, answer) = send::send(send::Delivery {
                url,
                secret,
                body,
                content_type,
                webhook_version: Some(webhook_version).filter(|v| !v.is_empty()),
            })
            .await?;
            println!("{status} {answer}");
            Ok(exit_if((200..300).contains(&status)))
        }
        Command::Spool { dir, command } => {
            let dir = match dir {
                Some(d) => d,
                None => load(cli.config.as_deref())?.config.delivery.dir,
            };
            let out = cal_relay_app::spool_cli::run(&dir, command.into())?;
            print_out(&out.stdout)?;
            if let Some(why) = &out.failure {
                eprintln!("{why}");
            }
            Ok(exit_if(out.failure.is_none()))
        }
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
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let verdict = send::verify(secret, &signature, &body);
            println!("{verdict}");
            Ok(exit_if(verdict == "valid"))
        }
    }
}

impl From<SpoolCommand> for SpoolAction {
    fn from(command: SpoolCommand) -> SpoolAction {
        let one = |id: Option<String>, all: bool| if all { None } else { id };
        match command {
            SpoolCommand::Stats => SpoolAction::Stats,
            SpoolCommand::List { json } => SpoolAction::List { json },
            SpoolCommand::Show { id } => SpoolAction::Show { id },
            SpoolCommand::Replay { id, all } => SpoolAction::Replay { id: one(id, all) },
            SpoolCommand::Purge { id, all } => SpoolAction::Purge { id: one(id, all) },
        }
    }
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
