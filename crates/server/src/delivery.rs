//! One delivery, past ingress: its signature checked (only a [`cal_relay_core::Verified`]
//! delivery is prepared), normalized and routed by the core, checked against its schema, and
//! handed to the delivery policy; then answered. In a server span when tracing is on.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use cal_relay_accept::Delivery;
use cal_relay_core::{Inbound, Rejection, Source};
use cal_relay_telemetry::{attr, Kind, Trace};
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::Response;

use crate::answer::Refusal;
use crate::relay::Relay;
use crate::respond::Body;
use crate::table::{Mounted, Table};

impl Relay {
    /// Deliver in a server span (when tracing is on) whose parent is the request's W3C trace
    /// context, and which ends with the answer's status.
    pub(crate) async fn deliver<B>(
        &self,
        table: &Table,
        mounted: &Mounted,
        parts: Parts,
        body: B,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !cal_relay_telemetry::enabled() {
            return self
                .deliver_in(table, mounted, parts, body, &Trace::off())
                .await;
        }
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let path = parts.uri.path().to_owned();
        let trace = Trace::incoming(
            format!("POST {path}"),
            header("traceparent"),
            header("tracestate"),
            vec![
                attr("http.request.method", "POST"),
                attr("http.route", path),
                attr("cal.source", mounted.source.name.clone()),
            ],
        );
        let response = self.deliver_in(table, mounted, parts, body, &trace).await;
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

    async fn deliver_in<B>(
        &self,
        table: &Table,
        mounted: &Mounted,
        parts: Parts,
        body: B,
        trace: &Trace,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let answers = self.answers();
        let source = &mounted.source;
        mounted.received.inc();
        let body = match crate::ingress::read_body(table, &parts.headers, body).await {
            Ok(body) => body,
            Err(refusal) => return answers.refuse(&source.name, refusal),
        };
        let signatures = parts.headers.get_all("x-cal-signature-256").iter().count();
        if signatures > 1 {
            // Two signatures: which one counts would be a guess.
            let rejection = Rejection::Signature(cal_relay_core::VerifyError::Malformed);
            return answers.refuse(&source.name, Refusal::Rejected(&rejection));
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
        match &verified {
            Err(rejection) => span.fail(rejection.to_string()),
            Ok(v) if v.by_retiring_secret() => mounted.retiring_secret.inc(),
            Ok(_) => {}
        }
        span.end();
        let prepared = verified.and_then(|v| source.prepare_verified(&table.routes, v));
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(rejection) => return answers.refuse(&source.name, Refusal::Rejected(&rejection)),
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
        self.check_schema(source, &prepared);
        // A template body carries no time of its own: two byte-identical ones may be two
        // events (Cal.com renders a template without a uid identically for different
        // bookings), so it is published every time, with the same cal-delivery-id.
        let outcome = self
            .acceptor
            .accept(Delivery {
                message: &prepared.message,
                targets: &prepared.route.sinks,
                sinks: &table.sinks,
                label: prepared.trigger_label,
                dedupable: prepared.shape != cal_relay_core::Shape::Template,
                trace,
            })
            .await;
        trace.set(attr("cal.status", outcome.status()));
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        answers.outcome(&source.name, &prepared, outcome, latency_ms)
    }

    /// Count and log a body that departs from its trigger's schema (never refusing it).
    fn check_schema(&self, source: &Source, prepared: &cal_relay_core::Prepared<'_>) {
        let message = &prepared.message;
        let (Some(checker), Some(trigger)) = (
            &self.schema_check,
            message.header(cal_relay_core::pipeline::headers::TRIGGER),
        ) else {
            return;
        };
        if let Some(violation) = checker.check(trigger, &message.body) {
            self.metrics
                .schema_violations
                .with_label_values(&[prepared.trigger_label])
                .inc();
            tracing::warn!(source = %source.name, trigger, delivery_id = %message.id, path = %violation.path, violation = %violation.message, "body departs from its trigger's schema; relayed anyway");
        }
    }
}
