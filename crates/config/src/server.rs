//! `[server]`: where and how the front end listens, and what a request may cost.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Larger bodies are answered 413 without being read.
    pub max_body_bytes: usize,
    /// Time a client has to send the request head; also how long an idle keep-alive
    /// connection stays open (hyper starts this timer as soon as it waits for a request).
    #[serde(with = "crate::duration::millis")]
    pub header_read_timeout_ms: Duration,
    /// Time a client has to send the whole body.
    #[serde(with = "crate::duration::millis")]
    pub body_read_timeout_ms: Duration,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    #[serde(with = "crate::duration::millis")]
    pub shutdown_timeout_ms: Duration,
    /// Open connections at most; beyond it new connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Delivery requests handled at once; beyond it `503 overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Largest request head (request line and headers) in bytes; beyond it 431. At least 8192.
    pub max_header_bytes: usize,
    /// Most headers in a request; beyond it 431.
    pub max_headers: usize,
    /// Length of the kernel's queue of connections not yet accepted.
    pub listen_backlog: u32,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs, e.g. an ingress controller's range).
    pub trusted_proxies: Vec<String>,
    /// TLS on the listener (HTTP/2 and HTTP/1.1 by ALPN); plain HTTP/1.1 without it.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: Duration::from_millis(10_000),
            body_read_timeout_ms: Duration::from_millis(30_000),
            shutdown_timeout_ms: Duration::from_millis(25_000),
            max_connections: 1024,
            max_in_flight: 128,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            listen_backlog: 1024,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

/// hyper's smallest read buffer: a smaller `max_header_bytes` is refused by validation.
pub const MIN_HEADER_BYTES: usize = 8192;

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}
