//! cal-relay's HTTP front end on hyper 1.x: receives `POST` deliveries on each source's path,
//! hands them to the core pipeline (verify, normalize, route), drops repeats of a delivery id
//! seen within the de-duplication window, and either appends the resulting message to the spool
//! (answer once durable) or publishes it to every target sink through the `Sink` trait (answer
//! once every sink confirmed). Also serves `/metrics`, `/healthz` and `/readyz`, and shuts down
//! gracefully. It knows sinks only through the trait: nothing here names Kafka, AMQP or NATS.

mod dedup;
mod metrics;
mod relay;
mod respond;
mod serve;
mod tls;

pub use dedup::Dedup;
pub use metrics::Metrics;
pub use relay::{BuildError, Endpoint, Limits, Relay};
pub use serve::{bind, parse_nets, serve, IpNet, ServerConfig, MIN_HEADER_BYTES};
pub use tls::{Tls, TlsConfig, TlsError};
