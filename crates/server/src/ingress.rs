//! What a delivery request must get through before its body is looked at: the client's
//! address (through trusted proxies), the source's `allow_from`, an in-flight permit, and the
//! body read within `max_body_bytes` and `body_read_timeout`.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::header::CONTENT_LENGTH;
use hyper::{HeaderMap, StatusCode};
use ipnet::IpNet;
use prometheus::IntGauge;

use crate::answer::Refusal;
use crate::table::Table;

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn client_ip(table: &Table, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let peer = peer.ip().to_canonical();
    let trusted = |ip: &IpAddr| table.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
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

/// Whether `client` may deliver to a source allowing `allow_from` (empty: anyone).
pub(crate) fn allowed(allow_from: &[IpNet], client: IpAddr) -> bool {
    allow_from.is_empty() || allow_from.iter().any(|n| n.contains(&client))
}

const TOO_LARGE: Refusal<'static> = Refusal::Body {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    reason: "too_large",
    message: "the body exceeds server.max_body_bytes",
};

/// Read the whole body, refusing past `max_body_bytes` or `body_read_timeout`.
pub(crate) async fn read_body<B>(
    table: &Table,
    headers: &HeaderMap,
    body: B,
) -> Result<Bytes, Refusal<'static>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > table.max_body_bytes as u64) {
        return Err(TOO_LARGE);
    }
    let limited = Limited::new(body, table.max_body_bytes);
    match tokio::time::timeout(table.body_read_timeout, limited.collect()).await {
        Err(_) => Err(Refusal::Body {
            status: StatusCode::REQUEST_TIMEOUT,
            reason: "body_timeout",
            message: "the body was not received in time",
        }),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(TOO_LARGE),
        Ok(Err(_)) => Err(Refusal::Body {
            status: StatusCode::BAD_REQUEST,
            reason: "body_read",
            message: "the body could not be read",
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Increments a gauge now and decrements it when dropped, on every path out.
pub(crate) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
