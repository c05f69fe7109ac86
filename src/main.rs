//! The `cal-relay` command: runs the relay (`serve`), checks a configuration (`check-config`),
//! sends a test delivery as Cal.com would (`send`), checks a signature (`verify`) and probes a
//! running relay's health endpoint (`probe`, for container health checks). It wires
//! the configuration to the sink, server and core crates; the relay's logic lives there.

mod samples;
mod send;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::Signal;

use anyhow::Context;
use cal_relay_config::{Config, DeliveryMode, Loaded, SinkConfig};
use cal_relay_server::Relay;
use cal_relay_sink::Sink;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: each delivery allocates and frees a few
/// kilobytes across threads, where glibc malloc spent about a tenth of the relay's CPU
/// (measured with `perf` under the bench load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default configuration path, relative to the working directory.
const DEFAULT_CONFIG: &str = "config/cal-relay.toml";

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
            init_logging(&loaded.config);
            if let Some(warning) = loaded.env_warning() {
                tracing::warn!("{warning}");
            }
            serve(loaded.config, cli.config.clone(), watch_config, hangup).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let loaded = load(cli.config.as_deref())?;
            if let Some(warning) = loaded.env_warning() {
                eprintln!("warning: {warning}");
            }
            validate(&loaded.config)?;
            print_config(&loaded.config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { trigger } => {
            let text = match trigger.as_deref() {
                Some("envelope") => cal_relay_contract::ENVELOPE.to_owned(),
                Some(t) => match cal_relay_contract::schema(t) {
                    Some(s) => s.to_owned(),
                    None => {
                        let known: Vec<&str> = cal_relay_contract::SCHEMAS
                            .iter()
                            .map(|(t, _)| *t)
                            .collect();
                        eprintln!("no schema for {t:?}; known: envelope, {}", known.join(", "));
                        return Ok(ExitCode::from(2));
                    }
                },
                None => {
                    let mut all = serde_json::Map::new();
                    for (t, s) in cal_relay_contract::SCHEMAS {
                        all.insert((*t).to_owned(), serde_json::from_str(s)?);
                    }
                    serde_json::to_string_pretty(&all)?
                }
            };
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Asyncapi => {
            let loaded = load(cli.config.as_deref())?;
            let doc = cal_relay_contract::asyncapi::document(&describe(&loaded.config)?);
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
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Spool { dir, command } => {
            let dir = match dir {
                Some(d) => d,
                None => load(cli.config.as_deref())?.config.delivery.dir,
            };
            spool_command(&dir, command)
        }
        Command::Probe { url, timeout } => {
            let (status, answer) = send::probe(&url, timeout).await?;
            println!("{status} {}", answer.trim_end());
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify {
            secret,
            signature,
            file,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let verifier = cal_relay_core::Verifier::new(&[secret], false);
            match verifier.verify(Some(signature.as_bytes()), &body) {
                Ok(()) => {
                    println!("valid");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("invalid: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// One line of `spool list`: the item's JSON (without its body), or a table row.
fn list_line(item: &cal_relay_spool::admin::Item, json: bool) -> String {
    use cal_relay_spool::admin::State;
    if json {
        return format!("{}\n", item.to_json(false));
    }
    let m = &item.entry.message;
    let state = match &item.state {
        State::Pending => format!("pending -> {}", item.entry.targets.join(",")),
        State::Dead {
            reason, attempts, ..
        } => format!("dead ({reason}, {attempts} attempts)"),
    };
    format!(
        "{:<16} {:<40} {:<32} key={} received={} {}\n",
        item.id,
        state,
        m.destination,
        m.key.as_deref().unwrap_or("-"),
        humantime::format_rfc3339_millis(m.received_at),
        &m.id[..m.id.len().min(16)]
    )
}

fn spool_command(dir: &Path, command: SpoolCommand) -> anyhow::Result<ExitCode> {
    use cal_relay_spool::admin;
    use std::fmt::Write as _;
    let mut out = String::new();
    match command {
        SpoolCommand::Stats => {
            let s = admin::stats(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            let age = s
                .oldest
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into());
            writeln!(out, "dir: {}", dir.display())?;
            writeln!(out, "pending: {}", s.entries)?;
            writeln!(out, "bytes: {} in {} segment(s)", s.bytes, s.segments)?;
            writeln!(out, "oldest pending age: {age}")?;
            writeln!(out, "dead letters: {}", s.dead_letters)?;
            writeln!(out, "inbox (replays not yet taken): {}", s.inbox)?;
            if s.unreadable_bytes > 0 {
                writeln!(
                    out,
                    "unreadable tail: {} bytes (cut off at the next start)",
                    s.unreadable_bytes
                )?;
            }
        }
        SpoolCommand::List { json } => {
            // One line per item as it is read: no body is kept.
            admin::list(dir, |item| {
                out.push_str(&list_line(&item, json));
                Ok(())
            })?;
        }
        SpoolCommand::Show { id } => match admin::show(dir, &id)? {
            Some(item) => writeln!(out, "{:#}", item.to_json(true))?,
            None => {
                eprintln!("no pending delivery or dead letter {id:?}");
                return Ok(ExitCode::FAILURE);
            }
        },
        SpoolCommand::Replay { id, all } => {
            let done = admin::replay(dir, if all { None } else { id.as_deref() })?;
            if done.is_empty() {
                eprintln!("no dead letter to replay");
                return Ok(ExitCode::FAILURE);
            }
            for id in done {
                writeln!(out, "replaying {id}")?;
            }
        }
        SpoolCommand::Purge { id, all } => {
            let done = admin::purge(dir, if all { None } else { id.as_deref() })?;
            if done.is_empty() {
                eprintln!("no dead letter to purge");
                return Ok(ExitCode::FAILURE);
            }
            for id in done {
                writeln!(out, "purged {id}")?;
            }
        }
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration from `path`, else `config/cal-relay.toml`, else the built-in default.
fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let default = Path::new(DEFAULT_CONFIG);
    let path = path.or_else(|| default.is_file().then_some(default));
    Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal (not in a file or a container log), and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// `host:port` of a broker URL: no scheme, credentials or path.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// What the configuration publishes, for the AsyncAPI document.
fn describe(config: &Config) -> anyhow::Result<cal_relay_contract::asyncapi::Description> {
    use cal_relay_contract::asyncapi::{Description, Protocol, Published, Sink};
    let mode = |m: cal_relay_sink::cloudevents::Mode| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "off".into())
    };
    let first = |urls: &cal_relay_sink::OneOrMany| {
        urls.to_vec()
            .first()
            .map(|u| host_of(u))
            .unwrap_or_default()
    };
    let sinks = config
        .sinks
        .iter()
        .map(|(name, sink)| match sink {
            SinkConfig::Kafka(c) => Sink {
                name: name.clone(),
                protocol: Protocol::Kafka,
                host: c.brokers.split(',').next().unwrap_or("").trim().to_owned(),
                cloudevents: mode(c.cloudevents),
                key_header: None,
                cloudevents_prefix: None,
            },
            SinkConfig::Amqp(c) => Sink {
                name: name.clone(),
                protocol: Protocol::Amqp {
                    exchange: c.exchange.clone(),
                    exchange_type: c.exchange_type.clone(),
                    persistent: c.persistent,
                },
                host: first(&c.url),
                cloudevents: mode(c.cloudevents),
                key_header: Some(c.key_header.clone()),
                cloudevents_prefix: Some(c.cloudevents_prefix.clone()),
            },
            SinkConfig::Nats(c) => Sink {
                name: name.clone(),
                protocol: Protocol::Nats {
                    jetstream: c.jetstream,
                },
                host: first(&c.url),
                cloudevents: mode(c.cloudevents),
                key_header: Some(c.key_header.clone()),
                cloudevents_prefix: None,
            },
            SinkConfig::File(c) => Sink {
                name: name.clone(),
                protocol: Protocol::File,
                host: c.path.clone(),
                cloudevents: "off".into(),
                key_header: None,
                cloudevents_prefix: None,
            },
        })
        .collect();
    let routes = config.route_table()?;
    let mut published = Vec::new();
    for trigger in cal_relay_core::trigger::KNOWN {
        if let Some(route) = routes.find(trigger) {
            published.push(Published {
                trigger: (*trigger).to_owned(),
                destination: route
                    .destination
                    .clone()
                    .unwrap_or_else(|| cal_relay_core::trigger::default_destination(trigger)),
                sinks: route.sinks.clone(),
            });
        }
    }
    if let Some(route) = routes.find(cal_relay_core::trigger::TEMPLATE) {
        for source in &config.sources {
            if let Some(destination) = &source.template_destination {
                published.push(Published {
                    trigger: cal_relay_core::trigger::TEMPLATE.to_owned(),
                    destination: destination.clone(),
                    sinks: route.sinks.clone(),
                });
            }
        }
    }
    Ok(Description {
        title: "cal-relay".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sinks,
        published,
    })
}

async fn build_sinks(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<dyn Sink>>> {
    let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
    for (name, sink) in &config.sinks {
        sinks.insert(name.clone(), build_sink(name, sink).await?);
    }
    Ok(sinks)
}

async fn build_sink(name: &str, sink: &SinkConfig) -> anyhow::Result<Arc<dyn Sink>> {
    let context = || format!("sinks.{name}");
    Ok(match sink {
        SinkConfig::File(c) => Arc::new(c.build().with_context(context)?),
        SinkConfig::Amqp(c) => Arc::new(c.build().with_context(context)?),
        SinkConfig::Kafka(c) => Arc::new(c.build().with_context(context)?),
        SinkConfig::Nats(c) => Arc::new(c.build().await.with_context(context)?),
    })
}

/// How long a sink added or changed by a reload may take to become ready before the reload is
/// refused.
const RELOAD_SINK_READY: Duration = Duration::from_secs(10);

/// The sinks a reload runs (confirm mode): the running ones whose configuration did not
/// change, and new ones built for the rest, each ready before it is returned. On failure the
/// new ones are closed and nothing changes.
async fn sinks_for_reload(
    running_config: &BTreeMap<String, SinkConfig>,
    running: &cal_relay_accept::Sinks,
    new: &Config,
) -> anyhow::Result<cal_relay_accept::Sinks> {
    let mut sinks = cal_relay_accept::Sinks::new();
    let mut built: Vec<Arc<dyn Sink>> = Vec::new();
    let result = async {
        for (name, config) in &new.sinks {
            let unchanged = running_config
                .get(name)
                .is_some_and(|c| !differs(c, config));
            if let (true, Some(sink)) = (unchanged, running.get(name)) {
                sinks.insert(name.clone(), sink.clone());
                continue;
            }
            let sink = build_sink(name, config).await?;
            built.push(sink.clone());
            let deadline = tokio::time::Instant::now() + RELOAD_SINK_READY;
            while !sink.ready() {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "sinks.{name}: not ready within {} s",
                    RELOAD_SINK_READY.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!(sink = %name, kind = sink.kind(), "reload: sink connected and ready");
            sinks.insert(name.clone(), sink);
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(sinks),
        Err(e) => {
            for sink in built {
                sink.shutdown().await;
            }
            Err(e)
        }
    }
}

/// What a request may cost, from `config.server`.
fn limits(config: &Config) -> anyhow::Result<cal_relay_server::Limits> {
    Ok(cal_relay_server::Limits {
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
        max_in_flight: config.server.max_in_flight,
        trusted_proxies: config
            .server
            .trusted_proxy_nets()
            .map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}"))?,
    })
}

/// The spool of `[delivery]` in spool mode, forwarding to `sinks`.
fn open_spool(
    config: &Config,
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
    metrics: &cal_relay_server::Metrics,
) -> anyhow::Result<Option<Arc<cal_relay_spool::Spool>>> {
    let d = &config.delivery;
    if d.mode != DeliveryMode::Spool {
        return Ok(None);
    }
    let spool_metrics = cal_relay_spool::SpoolMetrics::register(
        metrics.registry(),
        metrics.published.clone(),
        metrics.publish_errors.clone(),
        metrics.publish_duration.clone(),
    )?;
    let spool = cal_relay_spool::Spool::open(
        &cal_relay_spool::SpoolConfig {
            dir: d.dir.clone(),
            max_bytes: d.max_bytes,
            fsync: d.fsync,
            retry: cal_relay_spool::RetryPolicy {
                initial: Duration::from_millis(d.retry_initial_ms),
                max: Duration::from_millis(d.retry_max_ms),
                max_attempts: d.max_attempts,
                max_age: (d.max_age_secs > 0).then(|| Duration::from_secs(d.max_age_secs)),
            },
            lanes: d.lanes,
        },
        sinks,
        spool_metrics,
    )
    .with_context(|| format!("delivery.dir {}", d.dir.display()))?;
    Ok(Some(spool))
}

/// The de-duplication window of `[delivery]`, kept in its file when it can be.
fn open_dedup(config: &Config) -> Option<cal_relay_accept::Dedup> {
    let d = &config.delivery;
    if d.dedup_window_secs == 0 {
        return None;
    }
    let window = Duration::from_secs(d.dedup_window_secs);
    Some(match d.dedup_path() {
        Some(path) => {
            match cal_relay_accept::Dedup::with_file(window, d.dedup_max_entries, &path) {
                Ok(dedup) => dedup,
                // Serving matters more: keep the window in memory, and say what is lost.
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot keep de-duplication ids in this file: they live in memory only, so a replay after a restart is published again (set delivery.dedup_file to a writable path)");
                    cal_relay_accept::Dedup::new(window, d.dedup_max_entries)
                }
            }
        }
        None => cal_relay_accept::Dedup::new(window, d.dedup_max_entries),
    })
}

/// What `serve` checks before it starts anything, and `check-config` with it: sources (paths,
/// secrets, networks), routes against the sinks, limits, and the TLS files.
fn validate(config: &Config) -> anyhow::Result<()> {
    let sinks: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
    Relay::check(
        config.endpoints()?,
        config.route_table()?,
        &sinks,
        &limits(config)?,
    )?;
    if let Some(t) = &config.server.tls {
        cal_relay_server::Tls::load(t).context("server.tls")?;
    }
    // What building each sink checks, short of connecting.
    for (name, sink) in &config.sinks {
        let checked: anyhow::Result<()> = match sink {
            SinkConfig::File(_) => Ok(()),
            SinkConfig::Amqp(c) => c.check().map_err(Into::into),
            SinkConfig::Kafka(c) => c.check().map_err(Into::into),
            SinkConfig::Nats(c) => c.check().map_err(Into::into),
        };
        checked.with_context(|| format!("sinks.{name}"))?;
    }
    let t = &config.tracing;
    if let Some(endpoint) = &t.otlp_endpoint {
        cal_relay_telemetry::traces_url(endpoint)?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&t.sample_ratio),
            "tracing.sample_ratio: must be between 0 and 1"
        );
        anyhow::ensure!(
            t.queue_size > 0,
            "tracing.queue_size: must be greater than 0"
        );
    }
    Ok(())
}

/// Start exporting traces when `[tracing] otlp_endpoint` is set.
fn start_tracing(
    config: &Config,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<cal_relay_telemetry::Exporting>> {
    let t = &config.tracing;
    let Some(endpoint) = &t.otlp_endpoint else {
        return Ok(None);
    };
    let exporting = cal_relay_telemetry::install(
        &cal_relay_telemetry::Settings {
            endpoint: endpoint.clone(),
            service_name: t.service_name.clone(),
            sample_ratio: t.sample_ratio,
            queue_size: t.queue_size,
            export_interval: Duration::from_millis(t.export_interval_ms.max(1)),
            timeout: Duration::from_millis(t.export_timeout_ms.max(1)),
        },
        cal_relay_telemetry::TraceMetrics::register(registry)?,
    )?;
    tracing::info!(endpoint = %cal_relay_sink::redact_url(endpoint), sample_ratio = t.sample_ratio, "exporting traces over OTLP/HTTP");
    Ok(Some(exporting))
}

async fn serve(
    config: Config,
    path: Option<PathBuf>,
    watch: bool,
    hangup: Option<Signal>,
) -> anyhow::Result<()> {
    validate(&config)?;
    // In the order the parts depend on each other: metrics, sinks, the spool over them, the
    // delivery policy over both, then the relay in front.
    let metrics = cal_relay_server::Metrics::new()?;
    let traces = start_tracing(&config, metrics.registry())?;
    let sinks = build_sinks(&config).await?;
    let spool = open_spool(&config, &sinks, &metrics)?;
    let acceptor = cal_relay_accept::Acceptor::new(
        sinks,
        spool,
        open_dedup(&config),
        cal_relay_accept::AcceptMetrics {
            published: metrics.published.clone(),
            publish_errors: metrics.publish_errors.clone(),
            publish_duration: metrics.publish_duration.clone(),
            duplicates: metrics.duplicates.clone(),
        },
    );
    let mut relay = Relay::new(
        config.endpoints()?,
        config.route_table()?,
        acceptor,
        limits(&config)?,
        metrics,
    )?;
    if config.schema.check == cal_relay_config::SchemaCheck::Warn {
        relay = relay.with_schema_check(cal_relay_contract::Checker::new()?);
    }
    let listener = cal_relay_server::bind(&config.server)
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        tls = config.server.tls.is_some(),
        sources = config.sources.len(),
        sinks = ?config.sinks.keys().collect::<Vec<_>>(),
        delivery = %config.delivery.mode,
        "cal-relay listening"
    );
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(
            cal_relay_server::Tls::load(t).context("server.tls")?,
        )),
        None => None,
    };
    let relay = Arc::new(relay);
    let reloads = Reloads::register(relay.metrics().registry(), &config)?;
    tokio::spawn(reload_on_hangup(
        hangup,
        tls.clone(),
        relay.clone(),
        path,
        watch,
        config.clone(),
        reloads,
    ));
    cal_relay_server::serve(listener, relay, &config.server, tls, shutdown_signal()).await;
    if let Some(traces) = traces {
        // Sends what is queued; blocking, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    Ok(())
}

/// The reload metrics: `cal_relay_config_reloads_total{result}` and
/// `cal_relay_config_info{hash}` (1 for the configuration in effect).
struct Reloads {
    total: prometheus::IntCounterVec,
    info: prometheus::IntGaugeVec,
}

impl Reloads {
    fn register(registry: &prometheus::Registry, config: &Config) -> anyhow::Result<Reloads> {
        let total = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cal_relay_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, error).",
            ),
            &["result"],
        )?;
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "cal_relay_config_info",
                "1 for the configuration in effect, labelled with a hash of it (secrets left out).",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(info.clone()))?;
        for result in ["ok", "error"] {
            total.with_label_values(&[result]);
        }
        info.with_label_values(&[&config_hash(config)]).set(1);
        Ok(Reloads { total, info })
    }
}

/// A short hash of the effective configuration as `check-config` prints it (no secrets).
fn config_hash(config: &Config) -> String {
    let text = render_config(config).unwrap_or_default();
    cal_relay_core::pipeline::delivery_id(text.as_bytes())[..12].to_owned()
}

/// Settings a reload cannot change: what differs from the running process, by key.
/// Whether two settings differ (compared by their Debug text: the configuration types have no
/// `PartialEq`; secrets are compared, never printed).
fn differs(a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

fn needs_restart(started: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&started.server, &new.server);
    let mut keys = Vec::new();
    for (key, changed) in [
        ("server.listen", differs(&a.listen, &b.listen)),
        ("server.tls", differs(&a.tls, &b.tls)),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        ("server.max_in_flight", a.max_in_flight != b.max_in_flight),
        (
            "server.listen_backlog",
            differs(&a.listen_backlog, &b.listen_backlog),
        ),
        (
            "server.header_read_timeout_ms",
            a.header_read_timeout_ms != b.header_read_timeout_ms,
        ),
        (
            "server.shutdown_timeout_ms",
            a.shutdown_timeout_ms != b.shutdown_timeout_ms,
        ),
        (
            "server.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        ("server.max_headers", a.max_headers != b.max_headers),
        (
            "sinks",
            started.delivery.mode == DeliveryMode::Spool && differs(&started.sinks, &new.sinks),
        ),
        ("tracing", differs(&started.tracing, &new.tracing)),
        ("delivery", differs(&started.delivery, &new.delivery)),
        ("schema", differs(&started.schema, &new.schema)),
        ("log", differs(&started.log, &new.log)),
    ] {
        if changed {
            keys.push(key);
        }
    }
    keys
}

/// Read the configuration again and apply what can change while serving: sources (paths,
/// secrets, replay windows), routes and per-request limits. The whole file is refused when any
/// of it is invalid.
async fn reload(
    relay: &Relay,
    path: Option<&Path>,
    started: &Config,
    running_sinks: &mut BTreeMap<String, SinkConfig>,
) -> anyhow::Result<Config> {
    let new = load(path)?.config;
    // `[delivery]` keeps its running value: the windows must fit the running de-duplication.
    new.check_replay_windows(started.delivery.dedup_window_secs)?;
    let endpoints = new.endpoints()?;
    let routes = new.route_table()?;
    let limits = limits(&new)?;
    // In confirm mode, sinks are rebuilt where their configuration changed; the spool's lanes
    // are per sink, so in spool mode they need a restart (see needs_restart).
    let sinks =
        if started.delivery.mode != DeliveryMode::Spool && differs(running_sinks, &new.sinks) {
            Some(sinks_for_reload(running_sinks, &relay.sinks(), &new).await?)
        } else {
            None
        };
    // The sinks built for this reload: closed again if it is refused.
    let running = relay.sinks();
    let fresh: Vec<Arc<dyn Sink>> = sinks
        .iter()
        .flat_map(|s| s.values())
        .filter(|s| !running.values().any(|r| Arc::ptr_eq(r, s)))
        .cloned()
        .collect();
    let applied = sinks.is_some();
    match relay.reload(endpoints, routes, &limits, sinks) {
        Ok(retired) => {
            if applied {
                *running_sinks = new.sinks.clone();
            }
            if !retired.is_empty() {
                let within = Duration::from_millis(new.server.shutdown_timeout_ms);
                tokio::spawn(cal_relay_accept::Acceptor::retire(retired, within));
            }
        }
        Err(e) => {
            for sink in fresh {
                sink.shutdown().await;
            }
            return Err(e.into());
        }
    }
    let restart = needs_restart(started, &new);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these settings need a restart; their running values stay");
    }
    Ok(new)
}

/// On SIGHUP: read the configuration again (see [`reload`]) and the TLS certificate and key
/// (connections already open keep theirs). The handler is installed whatever the
/// configuration, so a stray SIGHUP never kills the relay.
async fn reload_on_hangup(
    hup: Option<Signal>,
    tls: Option<Arc<cal_relay_server::Tls>>,
    relay: Arc<Relay>,
    path: Option<PathBuf>,
    watch: bool,
    started: Config,
    reloads: Reloads,
) {
    {
        let Some(mut hup) = hup else {
            return;
        };
        // With --watch-config: the file the configuration came from, and how it looked.
        let default = Path::new(DEFAULT_CONFIG);
        let watched = path
            .clone()
            .or_else(|| default.is_file().then(|| default.to_path_buf()))
            .filter(|_| watch);
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = watched.as_deref().map(stamp);
        let mut running_sinks = started.sinks.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let trigger = tokio::select! {
                signal = hup.recv() => match signal {
                    Some(()) => "SIGHUP",
                    None => break,
                },
                _ = tick.tick(), if watched.is_some() => {
                    let now = watched.as_deref().map(stamp);
                    if now == last {
                        continue;
                    }
                    last = now;
                    "the configuration file changed"
                }
            };
            tracing::info!(trigger, "reloading the configuration");
            match reload(&relay, path.as_deref(), &started, &mut running_sinks).await {
                Ok(new) => {
                    let hash = config_hash(&new);
                    reloads.total.with_label_values(&["ok"]).inc();
                    reloads.info.reset();
                    reloads.info.with_label_values(&[&hash]).set(1);
                    tracing::info!(trigger, %hash, "configuration reloaded");
                }
                Err(e) => {
                    reloads.total.with_label_values(&["error"]).inc();
                    tracing::error!(trigger, error = %format!("{e:#}"), "configuration refused; the running one stays");
                }
            }
            if let Some(t) = &tls {
                match t.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                    }
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn print_config(config: &Config) -> anyhow::Result<()> {
    print_out(&render_config(config)?)
}

/// What `check-config` prints: the effective configuration, secrets redacted.
fn render_config(config: &Config) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "configuration is valid")?;
    writeln!(out, "listen: {}", config.server.listen)?;
    let d = &config.delivery;
    if d.mode == DeliveryMode::Spool {
        writeln!(
            out,
            "delivery: spool dir={} max_bytes={} fsync={} max_attempts={} lanes={}",
            d.dir.display(),
            d.max_bytes,
            d.fsync,
            d.max_attempts,
            d.lanes
        )?;
    } else {
        writeln!(out, "delivery: confirm (2xx once every sink confirmed)")?;
    }
    writeln!(
        out,
        "dedup: window={}s max_entries={} file={}",
        d.dedup_window_secs,
        d.dedup_max_entries,
        d.dedup_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(memory only)".into())
    )?;
    let t = &config.tracing;
    match &t.otlp_endpoint {
        Some(endpoint) => writeln!(
            out,
            "tracing: OTLP/HTTP to {} service={} sample_ratio={} queue_size={}",
            cal_relay_sink::redact_url(endpoint),
            t.service_name,
            t.sample_ratio,
            t.queue_size
        )?,
        None => writeln!(out, "tracing: off")?,
    }
    writeln!(out, "sources:")?;
    for (i, s) in config.sources.iter().enumerate() {
        writeln!(out, "  {} at {}", s.name, s.path)?;
        write_source_settings(&mut out, config, i)?;
    }
    writeln!(out, "sinks:")?;
    for (name, sink) in &config.sinks {
        writeln!(out, "  {name}: {} {}", sink.kind(), sink.describe())?;
    }
    writeln!(out, "routes (first match wins):")?;
    for r in &config.routes {
        writeln!(
            out,
            "  {} -> {} destination={}",
            r.triggers.join(","),
            r.sinks.join(","),
            r.destination.as_deref().unwrap_or("(naming rule)")
        )?;
    }
    let table = config.route_table()?;
    writeln!(out, "effective routing of known triggers:")?;
    let templates = std::iter::once(cal_relay_core::trigger::TEMPLATE);
    for t in cal_relay_core::trigger::KNOWN
        .iter()
        .copied()
        .chain(templates)
    {
        match table.find(t) {
            Some(route) => {
                let dest = match (&route.destination, t) {
                    (_, cal_relay_core::trigger::TEMPLATE) => {
                        "(source template_destination)".into()
                    }
                    (Some(d), _) => d.clone(),
                    (None, _) => cal_relay_core::trigger::default_destination(t),
                };
                writeln!(out, "  {t:<46} {dest:<34} -> {}", route.sinks.join(","))?;
            }
            None => writeln!(out, "  {t:<46} (no route: 422)")?,
        }
    }
    Ok(out)
}

/// Every effective setting of source `i`, one per line, secrets redacted (their number and
/// where they come from only).
fn write_source_settings(out: &mut String, config: &Config, i: usize) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let s = &config.sources[i];
    let mut from = vec![format!("{} inline", s.secrets.len())];
    if let Some(file) = &s.secrets_file {
        from.push(format!("file {}", file.display()));
    }
    if let Some(var) = &s.secrets_env {
        from.push(format!("env {var}"));
    }
    writeln!(
        out,
        "    secrets: {} [redacted] ({}), allow_unsigned={}",
        config.secrets_of(i)?.len(),
        from.join(", "),
        s.allow_unsigned
    )?;
    let allow_from = if s.allow_from.is_empty() {
        "(any client)".to_owned()
    } else {
        s.allow_from.join(",")
    };
    writeln!(out, "    allow_from: {allow_from}")?;
    writeln!(
        out,
        "    template_destination: {}",
        s.template_destination
            .as_deref()
            .unwrap_or("(none: templates 400, envelope-like templates by their triggerEvent)")
    )?;
    match s.freshness() {
        Some(f) => writeln!(
            out,
            "    replay: replay_window_secs={} scheduled_allowance_secs={} (envelopes by createdAt within {} s; MEETING_STARTED/ENDED by startTime/endTime and FORM_SUBMITTED_NO_EVENT by createdAt within {} s; the rest by de-duplication, window {} s)",
            s.replay_window_secs,
            s.scheduled_allowance_secs,
            f.window.as_secs(),
            f.longest().as_secs(),
            config.delivery.dedup_window_secs
        )?,
        None => writeln!(
            out,
            "    replay: replay_window_secs=0 (no freshness check: de-duplication only, window {} s)",
            config.delivery.dedup_window_secs
        )?,
    }
    writeln!(
        out,
        "    cloudevents: event_source={} template_event_type={}",
        s.event_source, s.template_event_type
    )?;
    Ok(())
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
