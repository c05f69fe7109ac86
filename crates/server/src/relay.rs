//! Handling one request: dispatch by path, read the body within limits, run the core pipeline,
//! publish to the route's sinks, answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cal_relay_accept::{Acceptor, Delivery, Outcome, Retired, Sinks};
use cal_relay_core::{Inbound, Prepared, Rejection, RouteTable, Source};
use cal_relay_spool::SpoolError;
use cal_relay_telemetry::{attr, Kind, Trace};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use ipnet::IpNet;
use prometheus::IntGauge;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::respond::{self, Body};

/// Label of requests that match no source.
const NO_SOURCE: &str = "none";

/// A source mounted on a path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub path: String,
    pub source: Source,
    /// Client addresses allowed to deliver here; empty: any. Others get 403.
    pub allow_from: Vec<IpNet>,
}

/// What a request may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Deliveries handled at once; beyond it `503 overloaded`.
    pub max_in_flight: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// Seconds a sender is told to wait when the relay is at `max_in_flight`.
const OVERLOADED_RETRY_AFTER: &str = "1";

/// Why the relay cannot be assembled from its parts.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes[{route}] names sink {sink:?}, which is not configured")]
    UnknownSink { route: usize, sink: String },
    #[error("two sources share the path {0:?}")]
    DuplicatePath(String),
    #[error("source path {0:?} must start with '/' and not be /metrics, /healthz or /readyz")]
    BadPath(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("sinks: {0}")]
    Sinks(String),
}

/// What a configuration reload replaces: sources by path, routes, the sinks they name,
/// per-request limits. A request takes the table current when it starts and keeps it to its
/// end, so its routes always find their sinks (a sink a reload removed is closed only once no
/// table that names it is in use).
struct Table {
    sources: HashMap<String, (Source, Vec<IpNet>)>,
    routes: RouteTable,
    sinks: Arc<Sinks>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    trusted_proxies: Vec<IpNet>,
}

impl Table {
    fn build(
        endpoints: Vec<Endpoint>,
        routes: RouteTable,
        sinks: Arc<Sinks>,
        sink_exists: &dyn Fn(&str) -> bool,
        limits: &Limits,
    ) -> Result<Table, BuildError> {
        for (i, route) in routes.routes().iter().enumerate() {
            if let Some(missing) = route.sinks.iter().find(|s| !sink_exists(s)) {
                return Err(BuildError::UnknownSink {
                    route: i,
                    sink: missing.clone(),
                });
            }
        }
        let mut sources = HashMap::new();
        for Endpoint {
            path,
            source,
            allow_from,
        } in endpoints
        {
            if !path.starts_with('/')
                || matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz")
            {
                return Err(BuildError::BadPath(path));
            }
            if sources.insert(path.clone(), (source, allow_from)).is_some() {
                return Err(BuildError::DuplicatePath(path));
            }
        }
        Ok(Table {
            sources,
            routes,
            sinks,
            max_body_bytes: limits.max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            trusted_proxies: limits.trusted_proxies.clone(),
        })
    }
}

/// Everything a request needs: sources by path, routes and limits (reloadable), the delivery
/// policy, metrics.
pub struct Relay {
    table: std::sync::RwLock<Arc<Table>>,
    acceptor: Acceptor,
    metrics: Metrics,
    in_flight: Arc<Semaphore>,
    schema_check: Option<cal_relay_contract::Checker>,
}

impl Relay {
    /// Assemble the relay from parts built before it: the sources and routes, the delivery
    /// policy (with the sinks, spool and de-duplication it holds), limits and the metrics.
    pub fn new(
        endpoints: Vec<Endpoint>,
        routes: RouteTable,
        acceptor: Acceptor,
        limits: Limits,
        metrics: Metrics,
    ) -> Result<Relay, BuildError> {
        let sinks = acceptor.sinks();
        let table = Table::build(
            endpoints,
            routes,
            sinks.clone(),
            &|s| sinks.contains_key(s),
            &limits,
        )?;
        Ok(Relay {
            table: std::sync::RwLock::new(Arc::new(table)),
            acceptor,
            metrics,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            schema_check: None,
        })
    }

    /// Check that these parts would make a relay (what [`Relay::new`] checks), without
    /// building one: sinks by name only.
    pub fn check(
        endpoints: Vec<Endpoint>,
        routes: RouteTable,
        sink_names: &[&str],
        limits: &Limits,
    ) -> Result<(), BuildError> {
        Table::build(
            endpoints,
            routes,
            Arc::default(),
            &|s| sink_names.contains(&s),
            limits,
        )
        .map(|_| ())
    }

    /// Replace sources, routes and per-request limits (`max_in_flight` is kept), and with
    /// `sinks` the running sinks too (confirm mode; new ones connected already): requests that
    /// started keep what they started with, the next ones get the new table. Refused as a
    /// whole, changing nothing, when the new parts do not fit together (a route naming a sink
    /// that is not running, two sources on one path, sinks in spool mode). Returns the sinks
    /// taken out, to close once their deliveries finish ([`Acceptor::retire`]).
    pub fn reload(
        &self,
        endpoints: Vec<Endpoint>,
        routes: RouteTable,
        limits: &Limits,
        sinks: Option<Sinks>,
    ) -> Result<Retired, BuildError> {
        let replaced = sinks.is_some();
        let next = sinks.map(Arc::new).unwrap_or_else(|| self.acceptor.sinks());
        let table = Arc::new(Table::build(
            endpoints,
            routes,
            next.clone(),
            &|s| next.contains_key(s),
            limits,
        )?);
        let switch = || match self.table.write() {
            Ok(mut current) => *current = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        };
        if !replaced {
            switch();
            return Ok(Vec::new());
        }
        let retired = self
            .acceptor
            .replace_sinks(next, switch)
            .map_err(|e| BuildError::Sinks(e.to_string()))?;
        for (name, _) in &retired {
            let _ = self
                .metrics
                .sink_ready
                .remove_label_values(&[name.as_str()]);
        }
        Ok(retired)
    }

    fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Check every known trigger's body against its schema, counting and logging violations
    /// (never refusing a delivery for one).
    pub fn with_schema_check(mut self, checker: cal_relay_contract::Checker) -> Relay {
        self.schema_check = Some(checker);
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The sinks running now.
    pub fn sinks(&self) -> Arc<Sinks> {
        self.acceptor.sinks()
    }

    /// Answer one request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let table = self.table();
        let response = match req.uri().path() {
            "/metrics" => self.get_only(&req, || {
                for (name, sink) in self.acceptor.sinks().iter() {
                    self.metrics
                        .sink_ready
                        .with_label_values(&[name.as_str()])
                        .set(i64::from(sink.ready()));
                }
                let mut r = respond::json(StatusCode::OK, self.metrics.encode());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }),
            "/healthz" => {
                self.get_only(&req, || respond::json(StatusCode::OK, r#"{"status":"ok"}"#))
            }
            "/readyz" => self.get_only(&req, || self.readiness()),
            path => match table.sources.get(path) {
                Some((source, allow_from)) if req.method() == Method::POST => {
                    let client = Self::client_ip(&table, &req, peer);
                    if !allow_from.is_empty() && !allow_from.iter().any(|n| n.contains(&client)) {
                        self.reject(&source.name, "forbidden");
                        tracing::info!(source = %source.name, %client, status = 403, "rejected");
                        respond::error(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            "this address may not deliver to this source",
                        )
                    } else {
                        match self.in_flight.clone().try_acquire_owned() {
                            Ok(_permit) => {
                                // Counted down however the delivery ends (answered, failed,
                                // or its task dropped).
                                let _in_flight = GaugeGuard::new(&self.metrics.in_flight);
                                self.deliver(&table, source, req).await
                            }
                            Err(_) => {
                                self.reject(&source.name, "overloaded");
                                tracing::info!(source = %source.name, status = 503, "rejected: server.max_in_flight reached");
                                let mut r = respond::error(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "overloaded",
                                    "too many deliveries in flight; retry later",
                                );
                                r.headers_mut().insert(
                                    RETRY_AFTER,
                                    HeaderValue::from_static(OVERLOADED_RETRY_AFTER),
                                );
                                r
                            }
                        }
                    }
                }
                Some((source, _)) => {
                    self.reject(&source.name, "method_not_allowed");
                    tracing::info!(source = %source.name, method = %req.method(), status = 405, "rejected");
                    with_allow(
                        respond::error(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "method_not_allowed",
                            "deliveries are POSTed",
                        ),
                        "POST",
                    )
                }
                None => {
                    self.reject(NO_SOURCE, "not_found");
                    tracing::info!(path = %truncate(path, 128), status = 404, "rejected");
                    respond::error(StatusCode::NOT_FOUND, "not_found", "no source at this path")
                }
            },
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    fn client_ip(table: &Table, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        let peer = peer.ip().to_canonical();
        let trusted = |ip: &IpAddr| table.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        for value in req.headers().get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for item in text.rsplit(',') {
                match item.trim().parse::<IpAddr>() {
                    Ok(ip) => {
                        client = ip.to_canonical();
                        if !trusted(&client) {
                            return client;
                        }
                    }
                    Err(_) => return client,
                }
            }
        }
        client
    }

    fn get_only(
        &self,
        req: &Request<Incoming>,
        answer: impl FnOnce() -> Response<Body>,
    ) -> Response<Body> {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            answer()
        } else {
            self.reject(NO_SOURCE, "method_not_allowed");
            with_allow(
                respond::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET",
                ),
                "GET, HEAD",
            )
        }
    }

    /// Ready when every sink is; with a spool, when the spool has room (sinks may be down).
    fn readiness(&self) -> Response<Body> {
        let sinks = self.acceptor.sinks();
        let not_ready: Vec<&str> = sinks
            .iter()
            .filter(|(_, s)| !s.ready())
            .map(|(n, _)| n.as_str())
            .collect();
        if let Some(spool) = self.acceptor.spool() {
            let full = spool.is_full();
            let status = if full { "spool_full" } else { "ready" };
            let body =
                serde_json::json!({ "status": status, "spool": true, "sinksNotReady": not_ready });
            let code = if full {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            return respond::json(code, body.to_string());
        }
        if not_ready.is_empty() {
            respond::json(StatusCode::OK, r#"{"status":"ready"}"#)
        } else {
            let body = serde_json::json!({ "status": "not_ready", "sinks": not_ready });
            respond::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
        }
    }

    fn reject(&self, source: &str, reason: &str) {
        self.metrics
            .rejected
            .with_label_values(&[source, reason])
            .inc();
    }

    /// Deliver in a server span (when tracing is on) whose parent is the request's W3C trace
    /// context, and which ends with the answer's status.
    async fn deliver(
        &self,
        table: &Table,
        source: &Source,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if !cal_relay_telemetry::enabled() {
            return self.deliver_in(table, source, req, &Trace::off()).await;
        }
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let path = req.uri().path().to_owned();
        let trace = Trace::incoming(
            format!("POST {path}"),
            header("traceparent"),
            header("tracestate"),
            vec![
                attr("http.request.method", "POST"),
                attr("http.route", path),
                attr("cal.source", source.name.clone()),
            ],
        );
        let response = self.deliver_in(table, source, req, &trace).await;
        let status = response.status();
        trace.set(attr(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            trace.fail(status.to_string());
        }
        trace.end();
        response
    }

    async fn deliver_in(
        &self,
        table: &Table,
        source: &Source,
        req: Request<Incoming>,
        trace: &Trace,
    ) -> Response<Body> {
        let started = Instant::now();
        self.metrics
            .received
            .with_label_values(&[source.name.as_str()])
            .inc();
        let (parts, body) = req.into_parts();
        let body = match Self::read_body(table, &parts.headers, body).await {
            Ok(body) => body,
            Err((status, reason, message)) => {
                self.reject(&source.name, reason);
                tracing::info!(source = %source.name, status = status.as_u16(), reason, "rejected");
                return respond::error(status, reason, message);
            }
        };
        if parts
            .headers
            .get_all("x-cal-signature-256")
            .iter()
            .nth(1)
            .is_some()
        {
            // Two signatures: which one counts would be a guess.
            return self.refuse(
                source,
                &Rejection::Signature(cal_relay_core::VerifyError::Malformed),
            );
        }
        let header = |name: &str| parts.headers.get(name).map(HeaderValue::as_bytes);
        let text = |name: &str| header(name).and_then(|v| std::str::from_utf8(v).ok());
        let inbound = Inbound {
            body,
            signature: header("x-cal-signature-256"),
            content_type: text("content-type"),
            webhook_version: text("x-cal-webhook-version"),
            received_at: SystemTime::now(),
        };
        let span = trace.child("verify signature", Kind::Internal, Vec::new());
        let verified = source.verify(inbound);
        if let Err(rejection) = &verified {
            span.fail(rejection.to_string());
        }
        span.end();
        let verified = match verified {
            Ok(v) => v,
            Err(rejection) => return self.refuse(source, &rejection),
        };
        let mut prepared = match source.prepare_verified(&table.routes, verified) {
            Ok(p) => p,
            Err(rejection) => return self.refuse(source, &rejection),
        };
        if trace.is_on() {
            // Consumers continue the trace from the message (the creation context).
            prepared.message.headers.extend(trace.context_headers());
            trace.set(attr("cal.trigger", prepared.trigger_label));
            trace.set(attr("cal.delivery_id", prepared.message.id.clone()));
            trace.set(attr(
                "messaging.destination.name",
                prepared.message.destination.clone(),
            ));
            trace.set(attr("cal.route.sinks", prepared.route.sinks.join(",")));
        }
        let message = &prepared.message;
        if let (Some(checker), Some(trigger)) = (
            &self.schema_check,
            message.header(cal_relay_core::pipeline::headers::TRIGGER),
        ) {
            if let Some(violation) = checker.check(trigger, &message.body) {
                self.metrics
                    .schema_violations
                    .with_label_values(&[prepared.trigger_label])
                    .inc();
                tracing::warn!(source = %source.name, trigger, delivery_id = %message.id, path = %violation.path, violation = %violation.message, "body departs from its trigger's schema; relayed anyway");
            }
        }
        // A template body carries no time of its own: two byte-identical ones may be two
        // events (Cal.com renders a template without a uid identically for different
        // bookings), so it is published every time, with the same cal-delivery-id.
        let outcome = self
            .acceptor
            .accept(Delivery {
                message,
                targets: &prepared.route.sinks,
                sinks: &table.sinks,
                label: prepared.trigger_label,
                dedupable: prepared.shape != cal_relay_core::Shape::Template,
                trace,
            })
            .await;
        trace.set(attr("cal.status", outcome.status()));
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.answer(source, &prepared, outcome, latency_ms)
    }

    /// Turn what became of a delivery into the answer (and its log line).
    fn answer(
        &self,
        source: &Source,
        prepared: &Prepared<'_>,
        outcome: Outcome,
        latency_ms: f64,
    ) -> Response<Body> {
        let message = &prepared.message;
        match outcome {
            Outcome::Duplicate => {
                tracing::info!(source = %source.name, trigger = prepared.trigger_label, delivery_id = %message.id, status = 200, "duplicate, not published again");
                respond::json(
                    StatusCode::OK,
                    serde_json::json!({ "status": "duplicate", "deliveryId": message.id })
                        .to_string(),
                )
            }
            Outcome::Spooled { seq } => {
                tracing::info!(
                    source = %source.name,
                    trigger = prepared.trigger_label,
                    delivery_id = %message.id,
                    destination = %message.destination,
                    sinks = ?prepared.route.sinks,
                    seq,
                    status = 202,
                    latency_ms,
                    "spooled"
                );
                respond::json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "status": "spooled", "deliveryId": message.id })
                        .to_string(),
                )
            }
            Outcome::KeyWaiting { error } => {
                self.reject(&source.name, error.reason());
                tracing::warn!(source = %source.name, delivery_id = %message.id, reason = error.reason(), status = 503, latency_ms, "refused: the spool cannot take it and its key has deliveries waiting");
                let body = serde_json::json!({
                    "error": error.reason(),
                    "message": format!("{error}; deliveries with this key are still waiting, retry later"),
                    "deliveryId": message.id,
                });
                respond::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
            Outcome::CopyFailed => {
                self.reject(&source.name, "copy_failed");
                tracing::warn!(source = %source.name, delivery_id = %message.id, status = 503, latency_ms, "refused: a copy of this delivery arrived first and failed");
                let body = serde_json::json!({
                    "error": "copy_failed",
                    "message": "a copy of this delivery arrived first and could not be made safe; retry later",
                    "deliveryId": message.id,
                });
                respond::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
            Outcome::Published { .. } => {
                tracing::info!(
                    source = %source.name,
                    trigger = prepared.trigger_label,
                    delivery_id = %message.id,
                    destination = %message.destination,
                    sinks = ?prepared.route.sinks,
                    status = 200,
                    latency_ms,
                    "delivered"
                );
                respond::accepted(&message.id)
            }
            Outcome::Failed {
                failures,
                spool_error,
            } => {
                tracing::warn!(
                    source = %source.name,
                    trigger = prepared.trigger_label,
                    delivery_id = %message.id,
                    destination = %message.destination,
                    status = 503,
                    latency_ms,
                    failures = ?failures.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>(),
                    "publish failed"
                );
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
                let body = serde_json::json!({
                    "error": error,
                    "message": text,
                    "deliveryId": message.id,
                    "sinks": sinks,
                });
                respond::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
        }
    }

    /// Read the whole body, refusing past `max_body_bytes` or `body_read_timeout`.
    async fn read_body(
        table: &Table,
        headers: &hyper::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, (StatusCode, &'static str, &'static str)> {
        const TOO_LARGE: (StatusCode, &str, &str) = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body exceeds server.max_body_bytes",
        );
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > table.max_body_bytes as u64) {
            return Err(TOO_LARGE);
        }
        let limited = Limited::new(body, table.max_body_bytes);
        match tokio::time::timeout(table.body_read_timeout, limited.collect()).await {
            Err(_) => Err((
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body was not received in time",
            )),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(TOO_LARGE),
            Ok(Err(_)) => Err((
                StatusCode::BAD_REQUEST,
                "body_read",
                "the body could not be read",
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    fn refuse(&self, source: &Source, rejection: &Rejection) -> Response<Body> {
        let status = match rejection {
            Rejection::Signature(_) | Rejection::Stale(_) => StatusCode::UNAUTHORIZED,
            Rejection::Malformed(_) | Rejection::NoTemplateDestination => StatusCode::BAD_REQUEST,
            Rejection::NoRoute(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let reason = rejection.reason();
        self.reject(&source.name, reason);
        tracing::info!(source = %source.name, status = status.as_u16(), reason, "rejected");
        respond::error(status, reason, &rejection.to_string())
    }

    /// Stop forwarding from the spool (what is not confirmed stays for the next start), then
    /// flush and close every sink.
    pub async fn shutdown_outputs(&self) {
        self.acceptor.shutdown().await;
    }
}

/// Increments a gauge now and decrements it when dropped, on every path out.
struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn with_allow(mut response: Response<Body>, allow: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
