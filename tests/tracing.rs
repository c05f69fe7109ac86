//! OpenTelemetry traces, against the real binary: an OTLP/HTTP receiver inside the test decodes
//! what the relay exports (with `opentelemetry-proto`), and a real nats-server carries the
//! messages, whose `traceparent` header is read back with the NATS client. Also: export over
//! HTTPS verified against trust roots named by `SSL_CERT_FILE`, and a collector that is down.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message as _;
use support::nats::{stream_messages, NatsServer};
use support::*;

/// Spans received, as exported.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP (protobuf) traces receiver on loopback.
async fn receiver() -> (SocketAddr, Received) {
    receiver_with(None).await
}

/// The same receiver, over TLS with this certificate and key when given.
async fn receiver_with(tls: Option<tokio_rustls::rustls::ServerConfig>) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Received = Arc::default();
    let store = spans.clone();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_export(TokioIo::new(stream), store).await;
                        }
                    }
                    None => serve_export(TokioIo::new(stream), store).await,
                }
            });
        }
    });
    (addr, spans)
}

/// Answer OTLP trace exports on one connection, keeping the spans.
async fn serve_export<I>(io: I, store: Received)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let store = store.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            let body = req.into_body().collect().await?.to_bytes();
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            for resource in export.resource_spans {
                for scope in resource.scope_spans {
                    store.lock().unwrap().extend(scope.spans);
                }
            }
            Ok::<_, hyper::Error>(
                Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// Wait until the spans received satisfy `done`; the spans.
async fn spans_until(received: &Received, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = received.lock().unwrap().clone();
        if done(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans never arrived: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .clone()?;
    match value.value? {
        Value::StringValue(s) => Some(s),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn config(nats: &str, otlp: SocketAddr, delivery: &str) -> String {
    config_to(nats, &format!("http://{otlp}"), delivery)
}

fn config_to(nats: &str, otlp: &str, delivery: &str) -> String {
    let sink = format!(
        "type = \"nats\"\nurl = \"{nats}\"\nack_timeout_ms = 2000\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}"
    );
    one_sink_config("bus", &sink)
        + &format!(
            "\n[tracing]\notlp_endpoint = \"{otlp}\"\nservice_name = \"cal-relay-test\"\nexport_interval_ms = 200\n"
        )
        + delivery
}

/// The `traceparent` header of the one message in stream CAL.
async fn published_traceparent(nats: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let messages = stream_messages(nats, "CAL").await;
        if let Some(m) = messages.first() {
            let headers = m.headers.as_ref().expect("message headers");
            return headers
                .get("traceparent")
                .expect("a traceparent header")
                .to_string();
        }
        assert!(Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_delivery_is_one_trace_from_the_sender_into_the_broker() {
    let nats = NatsServer::start();
    let (otlp, received) = receiver().await;
    let relay = RelayProcess::start(&config(&nats.url(), otlp, "")).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = signed_booking(&booking("traced", 1));
    request
        .headers
        .push(("traceparent", format!("00-{trace_id}-{parent_id}-01")));
    let (status, text) = post(relay.addr, request).await.unwrap();
    assert_eq!(status, 200, "{text}");
    let delivery_id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["deliveryId"]
        .as_str()
        .unwrap()
        .to_owned();

    let spans = spans_until(&received, |s| {
        named(s, "POST /webhooks/cal").is_some()
            && named(s, "publish cal.booking.created").is_some()
    })
    .await;
    let server = named(&spans, "POST /webhooks/cal").unwrap();
    assert_eq!(
        hex::encode(&server.trace_id),
        trace_id,
        "the sender's trace"
    );
    assert_eq!(
        hex::encode(&server.parent_span_id),
        parent_id,
        "the sender's span is the parent"
    );
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(attribute(server, "cal.source").as_deref(), Some("cal"));
    assert_eq!(
        attribute(server, "cal.trigger").as_deref(),
        Some("BOOKING_CREATED")
    );
    assert_eq!(
        attribute(server, "cal.delivery_id"),
        Some(delivery_id.clone())
    );
    assert_eq!(
        attribute(server, "cal.status").as_deref(),
        Some("published")
    );
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );

    let verify = named(&spans, "verify signature").expect("a verification span");
    assert_eq!(verify.parent_span_id, server.span_id);
    let publish = named(&spans, "publish cal.booking.created").unwrap();
    assert_eq!(publish.trace_id, server.trace_id);
    assert_eq!(publish.parent_span_id, server.span_id);
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(
        attribute(publish, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        attribute(publish, "messaging.destination.name").as_deref(),
        Some("cal.booking.created")
    );
    assert_eq!(
        attribute(publish, "messaging.message.id"),
        Some(delivery_id)
    );

    // The message carries the delivery's span as its trace context.
    let traceparent = published_traceparent(&nats.url()).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        parts[1], trace_id,
        "the consumer continues the sender's trace"
    );
    assert_eq!(parts[2], hex::encode(&server.span_id));
    assert!(relay.metric("cal_relay_trace_spans_exported_total").await >= 3.0);
    assert_eq!(
        relay.metric("cal_relay_trace_spans_dropped_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_spooled_delivery_is_forwarded_in_a_trace_linked_to_its_acceptance() {
    let nats = NatsServer::start();
    let (otlp, received) = receiver().await;
    let relay = RelayProcess::start(&config(&nats.url(), otlp, &spool_section(""))).await;
    let (status, text) = post(relay.addr, signed_booking(&booking("spooled", 1)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    let spans = spans_until(&received, |s| {
        named(s, "POST /webhooks/cal").is_some()
            && named(s, "spool append").is_some()
            && named(s, "publish cal.booking.created").is_some()
    })
    .await;
    let server = named(&spans, "POST /webhooks/cal").unwrap();
    assert!(
        server.parent_span_id.is_empty(),
        "no sender trace: a root span"
    );
    assert_eq!(attribute(server, "cal.status").as_deref(), Some("spooled"));
    let append = named(&spans, "spool append").unwrap();
    assert_eq!(append.parent_span_id, server.span_id);
    assert!(attribute(append, "cal.spool.seq").is_some());
    let forward = named(&spans, "publish cal.booking.created").unwrap();
    assert_ne!(
        forward.trace_id, server.trace_id,
        "forwarding is a trace of its own"
    );
    assert_eq!(forward.kind, SpanKind::Producer as i32);
    assert_eq!(forward.links.len(), 1, "linked to the acceptance");
    assert_eq!(forward.links[0].trace_id, server.trace_id);
    assert_eq!(forward.links[0].span_id, server.span_id);
    // The message still carries the accepting span's context.
    let traceparent = published_traceparent(&nats.url()).await;
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(hex::encode(&server.trace_id).as_str())
    );
}

/// An OTLP endpoint that refuses connections holds up no delivery: each is answered as usual,
/// and the spans that could not be sent are counted as dropped.
#[tokio::test]
async fn a_collector_that_is_down_costs_no_delivery() {
    let nats = NatsServer::start();
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay = RelayProcess::start(&config(&nats.url(), closed, "")).await;
    for n in 0..20 {
        let (status, text) = post(relay.addr, signed_booking(&booking(&format!("d-{n}"), n)))
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.metric("cal_relay_trace_spans_dropped_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no span counted as dropped: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relay.metric("cal_relay_trace_export_errors_total").await >= 1.0);
    assert_eq!(
        relay.metric("cal_relay_trace_spans_exported_total").await,
        0.0
    );
    assert_eq!(stream_messages(&nats.url(), "CAL").await.len(), 20);
}

/// An HTTPS endpoint: the export is verified against the system's trust roots, here a
/// certificate made in the test and named by `SSL_CERT_FILE`, as an operator would add a
/// private CA.
#[tokio::test]
async fn spans_go_to_an_https_endpoint_verified_against_the_trust_roots() {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let nats = NatsServer::start();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(made.cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der())),
    )
    .unwrap();
    let (otlp, received) = receiver_with(Some(server)).await;
    let endpoint = format!("https://localhost:{}", otlp.port());
    let relay = RelayProcess::start_with_env(
        &config_to(&nats.url(), &endpoint, ""),
        &[("SSL_CERT_FILE".to_owned(), ca.display().to_string())],
    )
    .await;
    let (status, text) = post(relay.addr, signed_booking(&booking("https", 1)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    spans_until(&received, |s| named(s, "POST /webhooks/cal").is_some()).await;
    assert_eq!(
        relay.metric("cal_relay_trace_export_errors_total").await,
        0.0
    );
}
