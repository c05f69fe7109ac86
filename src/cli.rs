//! The command line: every subcommand and flag `cal-relay` takes (clap derive), and nothing
//! that runs them.

use std::path::PathBuf;
use std::time::Duration;

use cal_relay_app::spool_cli::SpoolAction;
use clap::{Parser, Subcommand};

use crate::samples;

#[derive(Parser)]
#[command(
    name = "cal-relay",
    version,
    about = "Relay Cal.com webhooks into Kafka, AMQP and NATS"
)]
pub struct Cli {
    /// Configuration file [default: config/cal-relay.toml, else the built-in default]
    #[arg(long, short, global = true, env = "CAL_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum SpoolCommand {
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
