//! The one place an answer is made: each refusal and each outcome is counted, logged and
//! turned into its JSON answer here, and nowhere else.

use cal_relay_accept::Outcome;
use cal_relay_core::{Prepared, Rejection};
use cal_relay_spool::SpoolError;
use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};

use crate::metrics::Metrics;
use crate::respond::{self, Body};

/// Label of requests that match no source.
pub(crate) const NO_SOURCE: &str = "none";

/// Seconds a sender is told to wait when the relay is at `max_in_flight`.
const OVERLOADED_RETRY_AFTER: &str = "1";

/// Why a request is refused before (or instead of) reaching the delivery policy.
#[derive(Debug)]
pub(crate) enum Refusal<'a> {
    /// The client is not in the source's `allow_from`.
    Forbidden { client: std::net::IpAddr },
    /// `server.max_in_flight` deliveries are being handled.
    Overloaded,
    /// A source's path with a method other than POST.
    NotPost { method: &'a Method },
    /// `/metrics`, `/healthz` or `/readyz` with a method other than GET or HEAD.
    NotGet,
    /// No source at this path.
    NotFound { path: &'a str },
    /// The body could not be read within the limits.
    Body {
        status: StatusCode,
        reason: &'static str,
        message: &'static str,
    },
    /// The core pipeline refused it (signature, replay, shape, route).
    Rejected(&'a Rejection),
}

impl Refusal<'_> {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NotPost { .. } | Refusal::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NotFound { .. } => StatusCode::NOT_FOUND,
            Refusal::Body { status, .. } => *status,
            Refusal::Rejected(r) => match r {
                Rejection::Signature(_) | Rejection::Stale(_) => StatusCode::UNAUTHORIZED,
                Rejection::Malformed(_) | Rejection::NoTemplateDestination => {
                    StatusCode::BAD_REQUEST
                }
                Rejection::NoRoute(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::Overloaded => "overloaded",
            Refusal::NotPost { .. } | Refusal::NotGet => "method_not_allowed",
            Refusal::NotFound { .. } => "not_found",
            Refusal::Body { reason, .. } => reason,
            Refusal::Rejected(r) => r.reason(),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Forbidden { .. } => "this address may not deliver to this source".into(),
            Refusal::Overloaded => "too many deliveries in flight; retry later".into(),
            Refusal::NotPost { .. } => "deliveries are POSTed".into(),
            Refusal::NotGet => "use GET".into(),
            Refusal::NotFound { .. } => "no source at this path".into(),
            Refusal::Body { message, .. } => (*message).into(),
            Refusal::Rejected(r) => r.to_string(),
        }
    }
}

/// Counts, logs and answers.
pub(crate) struct Answers<'m> {
    pub metrics: &'m Metrics,
}

impl Answers<'_> {
    fn count(&self, source: &str, reason: &str) {
        self.metrics
            .rejected
            .with_label_values(&[source, reason])
            .inc();
    }

    /// Refuse a request to `source` (`NO_SOURCE` when it matched none).
    pub fn refuse(&self, source: &str, refusal: Refusal<'_>) -> Response<Body> {
        let (status, reason) = (refusal.status(), refusal.reason());
        self.count(source, reason);
        match &refusal {
            Refusal::Forbidden { client } => {
                cal_relay_telemetry::request_line!(source, %client, status = 403, "rejected")
            }
            Refusal::Overloaded => {
                cal_relay_telemetry::request_line!(
                    source,
                    status = 503,
                    "rejected: server.max_in_flight reached"
                )
            }
            Refusal::NotPost { method } => {
                cal_relay_telemetry::request_line!(source, method = %method, status = 405, "rejected")
            }
            Refusal::NotFound { path } => {
                cal_relay_telemetry::request_line!(path = %truncate(path, 128), status = 404, "rejected")
            }
            Refusal::NotGet => {}
            Refusal::Body { .. } | Refusal::Rejected(_) => {
                cal_relay_telemetry::request_line!(
                    source,
                    status = status.as_u16(),
                    reason,
                    "rejected"
                )
            }
        }
        let mut response = respond::error(status, reason, &refusal.message());
        let headers = response.headers_mut();
        match refusal {
            Refusal::Overloaded => {
                headers.insert(
                    RETRY_AFTER,
                    HeaderValue::from_static(OVERLOADED_RETRY_AFTER),
                );
            }
            Refusal::NotPost { .. } => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            Refusal::NotGet => {
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        response
    }

    /// Turn what became of a delivery into the answer (and its log line).
    pub fn outcome(
        &self,
        source: &str,
        prepared: &Prepared<'_>,
        outcome: Outcome,
        latency_ms: f64,
    ) -> Response<Body> {
        let message = &prepared.message;
        let trigger = prepared.trigger_label;
        let id = &message.id;
        match outcome {
            Outcome::Duplicate => {
                cal_relay_telemetry::request_line!(source, trigger, delivery_id = %id, status = 200, "duplicate, not published again");
                status_answer(StatusCode::OK, "duplicate", id)
            }
            Outcome::Spooled { seq } => {
                cal_relay_telemetry::request_line!(source, trigger, delivery_id = %id, destination = %message.destination, sinks = ?prepared.route.sinks, seq, status = 202, latency_ms, "spooled");
                status_answer(StatusCode::ACCEPTED, "spooled", id)
            }
            Outcome::KeyWaiting { error } => {
                self.count(source, error.reason());
                tracing::warn!(source, delivery_id = %id, reason = error.reason(), status = 503, latency_ms, "refused: the spool cannot take it and its key has deliveries waiting");
                let text =
                    format!("{error}; deliveries with this key are still waiting, retry later");
                unavailable(error.reason(), &text, id, None)
            }
            Outcome::CopyFailed => {
                self.count(source, "copy_failed");
                tracing::warn!(source, delivery_id = %id, status = 503, latency_ms, "refused: a copy of this delivery arrived first and failed");
                let text =
                    "a copy of this delivery arrived first and could not be made safe; retry later";
                unavailable("copy_failed", text, id, None)
            }
            Outcome::Published { .. } => {
                cal_relay_telemetry::request_line!(source, trigger, delivery_id = %id, destination = %message.destination, sinks = ?prepared.route.sinks, status = 200, latency_ms, "delivered");
                respond::accepted(id)
            }
            Outcome::Failed {
                failures,
                spool_error,
            } => {
                tracing::warn!(source, trigger, delivery_id = %id, destination = %message.destination, status = 503, latency_ms, failures = ?failures.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>(), "publish failed");
                let sinks: Vec<_> = failures
                    .iter()
                    .map(|(sink, e)| serde_json::json!({ "sink": sink, "reason": e.reason, "message": e.detail }))
                    .collect();
                let (error, text) = match &spool_error {
                    Some(e @ SpoolError::Full { .. }) => (
                        e.reason(),
                        format!("{e}, and a sink did not confirm the message; retry later"),
                    ),
                    Some(e) => (
                        e.reason(),
                        format!("the spool refused the delivery ({e}), and a sink did not confirm it; retry later"),
                    ),
                    None => (
                        "publish_failed",
                        "a sink did not confirm the message; retry later".to_owned(),
                    ),
                };
                unavailable(error, &text, id, Some(sinks))
            }
        }
    }
}

/// `{"status": status, "deliveryId": id}`.
fn status_answer(code: StatusCode, status: &str, id: &str) -> Response<Body> {
    let body = serde_json::json!({ "status": status, "deliveryId": id });
    respond::json(code, body.to_string())
}

/// A 503 naming the delivery (and each sink's failure, when there were some).
fn unavailable(
    error: &str,
    message: &str,
    id: &str,
    sinks: Option<Vec<serde_json::Value>>,
) -> Response<Body> {
    let mut body = serde_json::json!({ "error": error, "message": message, "deliveryId": id });
    if let Some(sinks) = sinks {
        body["sinks"] = serde_json::Value::Array(sinks);
    }
    respond::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
