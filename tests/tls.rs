//! TLS on the listener: a certificate made in the test (rcgen), HTTP/1.1 and HTTP/2 clients
//! over rustls, and a certificate swapped by SIGHUP without dropping open connections.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A self-signed certificate for localhost: (DER, PEM certificate, PEM key).
fn certificate() -> (Vec<u8>, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (
        c.cert.der().to_vec(),
        c.cert.pem(),
        c.key_pair.serialize_pem(),
    )
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Written beside and renamed, as a secret mount or cert-manager updates files.
    std::fs::write(dir.join("cert.pem.new"), cert).unwrap();
    std::fs::write(dir.join("key.pem.new"), key).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
}

/// A TLS connection offering `alpn`, trusting every certificate in `trusted`.
async fn connect(
    addr: SocketAddr,
    trusted: &[Vec<u8>],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for der in trusted {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn peer_cert(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn delivery(n: u64) -> Request<Full<Bytes>> {
    let body = booking(&format!("tls-{n}"), n);
    let sig = cal_relay_core::sign(fixture_secret().as_bytes(), &body);
    Request::post(SOURCE_PATH)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("x-cal-signature-256", sig)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn status_of(resp: hyper::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_and_http2_over_tls_and_a_certificate_swapped_by_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (der1, cert1, key1) = certificate();
    let (der2, cert2, key2) = certificate();
    write_pair(dir.path(), &cert1, &key1);
    let config = one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
        .replace(
            "[server]\n",
            &format!(
                "[server]\ntls = {{ cert_file = \"{0}/cert.pem\", key_file = \"{0}/key.pem\" }}\n",
                dir.path().display()
            ),
        );
    let relay = RelayProcess::start_listening(&config).await;
    let trusted = [der1.clone(), der2.clone()];

    // HTTP/1.1, kept open across the reload.
    let tls = connect(relay.addr, &trusted, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&tls), der1);
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, body) = status_of(h1.send_request(delivery(1)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // HTTP/2, also kept open.
    let tls = connect(relay.addr, &trusted, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (status, body) = status_of(h2.send_request(delivery(2)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // Plain HTTP on the TLS port gets no answer.
    assert!(get(relay.addr, "/healthz").await.is_err());

    // Swap the certificate and send SIGHUP: new handshakes get the new one.
    write_pair(dir.path(), &cert2, &key2);
    std::process::Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = connect(relay.addr, &trusted, b"http/1.1").await;
        if peer_cert(&s) == der2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both connections opened before the reload still work.
    let (status, body) = status_of(h1.send_request(delivery(3)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_of(h2.send_request(delivery(4)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(read_lines(&relay.path("events.jsonl")).len(), 4);

    // A broken pair on SIGHUP keeps the working one.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = connect(relay.addr, &trusted, b"http/1.1").await;
    assert_eq!(peer_cert(&s), der2);
}

/// The TLS configuration of these tests with `extra` server settings.
fn tls_config(dir: &Path, extra: &str) -> String {
    one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"").replace(
        "[server]\n",
        &format!(
            "[server]\ntls = {{ cert_file = \"{0}/cert.pem\", key_file = \"{0}/key.pem\" }}\n{extra}\n",
            dir.display()
        ),
    )
}

/// Review finding 5: idle HTTP/2 connections are closed by the header-read timeout as idle
/// HTTP/1.1 ones are, so `max_connections` of them do not block deliveries; and one that stops
/// reading does not hold a graceful shutdown to its full timeout.
#[tokio::test]
async fn idle_http2_connections_are_closed_like_http1_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (der, cert, key) = certificate();
    write_pair(dir.path(), &cert, &key);
    let config = tls_config(
        dir.path(),
        "max_connections = 4\nheader_read_timeout_ms = 1000\nshutdown_timeout_ms = 20000",
    );
    let mut relay = RelayProcess::start_listening(&config).await;
    let trusted = [der];
    let mut ended = Vec::new();
    for _ in 0..4 {
        let tls = connect(relay.addr, &trusted, b"h2").await;
        let (h2, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        ended.push((h2, tokio::spawn(conn)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_h2, conn) in &ended {
        while !conn.is_finished() {
            assert!(
                Instant::now() < deadline,
                "an idle h2 connection stayed open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The slots are free again: a delivery goes through at once.
    let tls = connect(relay.addr, &trusted, b"http/1.1").await;
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let answer = tokio::time::timeout(Duration::from_secs(3), h1.send_request(delivery(9)))
        .await
        .expect("a delivery was held up")
        .unwrap();
    assert_eq!(status_of(answer).await.0, 200);

    // A peer that sent the HTTP/2 preface and reads nothing more; SIGTERM.
    use tokio::io::AsyncWriteExt as _;
    let mut silent = connect(relay.addr, &trusted, b"h2").await;
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    silent.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let status = relay.terminate();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}, held by an idle connection",
        started.elapsed()
    );
    drop(silent);
}
