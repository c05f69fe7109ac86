//! cal-relay's HTTP front end on hyper 1.x: receives `POST` deliveries on each source's path,
//! hands them to the core pipeline (verify, normalize, route), publishes the resulting message to
//! every target sink through the `Sink` trait, and answers only once every sink confirmed. Also
//! serves `/metrics`, `/healthz` and `/readyz`, and shuts down gracefully. It knows sinks only
//! through the trait: nothing here names Kafka, AMQP or NATS.

mod metrics;
mod relay;
mod respond;
mod serve;

pub use metrics::Metrics;
pub use relay::{BuildError, Endpoint, Relay};
pub use serve::{serve, ServerConfig};
