//! The plug-in point: what a sink crate offers about its kind of sink, beside the sink itself.
//! Each sink crate implements [`SinkSettings`] on its settings type (`[sinks.NAME]` of its
//! `type`); the app registers each kind with one line. Nothing here does I/O.

use std::fmt;
use std::sync::Arc;

use crate::cloudevents::Mode;
use crate::Sink;

/// Why a sink's settings cannot be used, or it cannot be built.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a sink publishes, as far as consumers can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Kafka,
    /// Exchange name, type, and whether messages are persistent.
    Amqp {
        exchange: String,
        exchange_type: String,
        persistent: bool,
    },
    Nats {
        jetstream: bool,
    },
    /// A local file of JSON lines.
    File,
}

/// A sink described for its consumers (the AsyncAPI document): never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub protocol: Protocol,
    /// `host:port` (the first, without credentials), or the file's path.
    pub host: String,
    /// The header carrying the key (AMQP, NATS).
    pub key_header: Option<String>,
    /// The prefix of binary-mode CloudEvents headers (AMQP).
    pub cloudevents_prefix: Option<String>,
}

/// One kind of sink, as its settings: checked, described and built.
#[async_trait::async_trait]
pub trait SinkSettings: fmt::Debug + Send + Sync + 'static {
    /// The `type` that names the kind in the configuration (`kafka`).
    fn kind(&self) -> &'static str;

    /// What building the sink checks, short of connecting.
    fn check(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The running sink; it connects in the background ([`Sink::ready`] says when it can
    /// publish).
    async fn build(&self) -> Result<Arc<dyn Sink>, BoxError>;

    /// How it renders messages as CloudEvents, if at all.
    fn cloudevents(&self) -> Mode {
        Mode::Off
    }

    /// One line of settings for `check-config` (never credentials).
    fn summary(&self) -> String;

    /// How it publishes, for consumers.
    fn described(&self) -> Described;
}

/// `host:port` of a broker URL: no scheme, credentials or path.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// `host:port` of the first of `urls`.
pub fn first_host(urls: &crate::OneOrMany) -> String {
    urls.to_vec()
        .first()
        .map(|u| host_of(u))
        .unwrap_or_default()
}
