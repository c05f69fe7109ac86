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
    /// Create or update the Cal.com webhook that delivers to this relay (idempotent: matched on
    /// the subscriber URL, never a second one), with the triggers the routes name.
    Subscribe {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        wanted: WantedArgs,
        /// Print the difference and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Compare Cal.com's webhooks with the configuration.
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// Rotate the source's webhook secret with no delivery lost: the new secret is added (the
    /// old one kept for --overlap), every relay serving the source is waited for until it
    /// reports the new secret, then Cal.com is patched.
    RotateSecret {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// How long the old secret is still accepted after Cal.com switches (queued retries,
        /// and scheduled meetings booked before the rotation, arrive signed with it).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        overlap: Duration,
        /// A relay serving the source (base URL, e.g. http://10.0.0.5:8080); repeat for each
        /// replica [default: the configuration's listener].
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// How long to wait for the relays to report the new secret.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Retire the old secrets now (after a rotation), instead of starting one.
        #[arg(long)]
        finish: bool,
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Delete the Cal.com webhook that delivers to this relay (explicit only).
    Unsubscribe {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    /// Exit non-zero with one line per difference (inactive, other triggers, a template, another
    /// payload version, a deprecated scope, no secret).
    Check {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        wanted: WantedArgs,
    },
}

/// How to reach Cal.com API v2. The API key comes from --api-key-file or the CAL_API_KEY
/// environment variable, never from an argument (which would land in shell history).
#[derive(clap::Args)]
pub struct ApiArgs {
    /// Base URL of Cal.com API v2 (a self-hosted instance's own host).
    #[arg(long, env = "CAL_API_URL", default_value = cal_relay_calcom::DEFAULT_API_URL)]
    pub api_url: String,
    /// A file holding the API key (`cal_...`); else CAL_API_KEY.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// How long one API request may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,
}

/// Where the source's secrets go when they change.
#[derive(clap::Args)]
pub struct ManifestArgs {
    /// Print the source's secrets as a Kubernetes Secret manifest on standard output (to
    /// apply, for a read-only mounted secrets file) instead of writing its secrets_file.
    #[arg(long)]
    pub print_secret_manifest: bool,
    /// The manifest's Secret name, namespace and key.
    #[arg(long, default_value = "cal-relay")]
    pub secret_name: String,
    #[arg(long, default_value = "cal-relay")]
    pub secret_namespace: String,
    #[arg(long, default_value = "webhook-secrets")]
    pub secret_key: String,
}

/// Which webhook.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// The relay's public URL, e.g. https://relay.example.com/webhooks/cal
    #[arg(long)]
    pub url: String,
    /// The configuration's source (may be left out when there is one).
    #[arg(long)]
    pub source: Option<String>,
    /// Whose webhook: `user` (the API key's), `event-type ID` or `org ID`.
    #[arg(long, num_args = 1..=2, value_names = ["KIND", "ID"], default_values_t = ["user".to_string()])]
    pub scope: Vec<String>,
}

/// What the webhook should carry beyond the routes' triggers.
#[derive(clap::Args)]
pub struct WantedArgs {
    /// Subscribe every trigger Cal.com knows, whatever the routes name.
    #[arg(long)]
    pub all_known: bool,
    /// Delay of the AFTER_*_CAL_VIDEO_NO_SHOW triggers after the meeting's start.
    #[arg(long, default_value_t = 15)]
    pub no_show_time: u32,
    #[arg(long, value_enum, default_value_t = TimeUnit::Minute)]
    pub no_show_unit: TimeUnit,
    /// The payload version to pin (2026-07-27 only adds two optional ICS strings).
    #[arg(long, default_value = "2021-10-20", value_parser = clap::builder::PossibleValuesParser::new(cal_relay_calcom::PAYLOAD_VERSIONS))]
    pub payload_version: String,
    /// Leave an existing payloadTemplate (else it is removed: the relay wants envelopes).
    #[arg(long)]
    pub keep_template: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TimeUnit {
    Day,
    Hour,
    Minute,
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
