//! The router: a request goes by its path to `/metrics`, `/healthz`, `/readyz` or a source;
//! a source's request goes through ingress (`allow_from`, an in-flight permit) to delivery.
//! The handler is generic over the body type, so it runs as well on a connection as in a
//! test. Holds the one configuration snapshot ([`Table`]), swapped whole by a reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use cal_relay_accept::{Acceptor, Retired, SinkSet, Sinks};
use cal_relay_core::RouteTable;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::answer::{Answers, Refusal, NO_SOURCE};
use crate::ingress::GaugeGuard;
use crate::metrics::Metrics;
use crate::respond::{self, Body};
use crate::table::{BuildError, Endpoint, Limits, Table};

/// Everything a request needs: the configuration snapshot (sources, routes, the sinks they
/// name, limits), the delivery policy, metrics.
pub struct Relay {
    table: ArcSwap<Table>,
    pub(crate) acceptor: Acceptor,
    pub(crate) metrics: Metrics,
    in_flight: Arc<Semaphore>,
    pub(crate) schema_check: Option<cal_relay_contract::Checker>,
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
            &metrics,
        )?;
        Ok(Relay {
            table: ArcSwap::from_pointee(table),
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
            Arc::new(SinkSet::new(Sinks::new())),
            &|s| sink_names.contains(&s),
            limits,
            &Metrics::new()?,
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
    ) -> Result<Option<Retired>, BuildError> {
        let replaced = sinks.is_some();
        let next = match sinks {
            Some(sinks) => Arc::new(SinkSet::new(sinks)),
            None => self.acceptor.sinks(),
        };
        let table = Arc::new(Table::build(
            endpoints,
            routes,
            next.clone(),
            &|s| next.contains_key(s),
            limits,
            &self.metrics,
        )?);
        let switch = || self.table.store(table);
        if !replaced {
            switch();
            return Ok(None);
        }
        let retired = self
            .acceptor
            .replace_sinks(next, switch)
            .map_err(|e| BuildError::Sinks(e.to_string()))?;
        for (name, _) in &retired.sinks {
            let _ = self
                .metrics
                .sink_ready
                .remove_label_values(&[name.as_str()]);
        }
        Ok(Some(retired))
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
    pub fn sinks(&self) -> Arc<SinkSet> {
        self.acceptor.sinks()
    }

    pub(crate) fn answers(&self) -> Answers<'_> {
        Answers {
            metrics: &self.metrics,
        }
    }

    /// Answer one request from `peer`.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let response = match req.uri().path() {
            "/metrics" => self.get_only(req.method(), || self.metrics_answer()),
            "/healthz" => self.get_only(req.method(), || {
                respond::json(StatusCode::OK, r#"{"status":"ok"}"#)
            }),
            "/readyz" => self.get_only(req.method(), || self.readiness()),
            _ => self.to_source(req, peer).await,
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// A request to a source's path: ingress, then delivery.
    async fn to_source<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let table = self.table.load_full();
        let answers = self.answers();
        let path = req.uri().path();
        let Some(mounted) = table.sources.get(path) else {
            return answers.refuse(NO_SOURCE, Refusal::NotFound { path });
        };
        let source = &mounted.source;
        if req.method() != Method::POST {
            let method = req.method();
            return answers.refuse(&source.name, Refusal::NotPost { method });
        }
        let client = crate::ingress::client_ip(&table, req.headers(), peer);
        if !crate::ingress::allowed(&mounted.allow_from, client) {
            return answers.refuse(&source.name, Refusal::Forbidden { client });
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return answers.refuse(&source.name, Refusal::Overloaded);
        };
        // Counted down however the delivery ends (answered, failed, or its task dropped).
        let _in_flight = GaugeGuard::new(&self.metrics.in_flight);
        let (parts, body) = req.into_parts();
        self.deliver(&table, mounted, parts, body).await
    }

    fn get_only(&self, method: &Method, answer: impl FnOnce() -> Response<Body>) -> Response<Body> {
        if method == Method::GET || method == Method::HEAD {
            answer()
        } else {
            self.answers().refuse(NO_SOURCE, Refusal::NotGet)
        }
    }

    fn metrics_answer(&self) -> Response<Body> {
        for (name, sink) in self.acceptor.sinks().iter() {
            self.metrics
                .sink_ready
                .with_label_values(&[name.as_str()])
                .set(i64::from(sink.ready()));
        }
        let table = self.table.load();
        self.metrics.secret_info.reset();
        for source in table.sources.values().map(|m| &m.source) {
            for fingerprint in source.verifier.fingerprints() {
                self.metrics
                    .secret_info
                    .with_label_values(&[source.name.as_str(), fingerprint.as_str()])
                    .set(1);
            }
        }
        let mut r = respond::json(StatusCode::OK, self.metrics.encode());
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
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

    /// Stop forwarding from the spool (what is not confirmed stays for the next start), then
    /// flush and close every sink.
    pub async fn shutdown_outputs(&self) {
        self.acceptor.shutdown().await;
    }
}
