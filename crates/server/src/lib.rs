//! cal-relay's HTTP front end on hyper 1.x: receives `POST` deliveries on each source's path,
//! hands them to the core pipeline (verify, normalize, route) and the prepared message to the
//! delivery policy (`cal-relay-accept`: de-duplicate, spool or publish), and turns what became
//! of it into the answer. Also serves `/metrics`, `/healthz` and `/readyz`, reloads its sources
//! and routes, and shuts down gracefully. It decides nothing about delivery and knows sinks
//! only through the trait: nothing here names Kafka, AMQP or NATS.

mod answer;
mod delivery;
mod ingress;
mod metrics;
mod relay;
mod respond;
mod serve;
mod table;
mod tls;

pub use metrics::Metrics;
pub use relay::Relay;
pub use respond::Body;
pub use serve::{bind, parse_nets, serve, IpNet, ServerConfig, MIN_HEADER_BYTES};
pub use table::{BuildError, Endpoint, Limits};
pub use tls::{Tls, TlsConfig, TlsError};
