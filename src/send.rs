//! `cal-relay send` and `cal-relay probe`: a minimal HTTP/1 client. `send` POSTs a delivery
//! exactly as Cal.com would (same headers, hex signature); `probe` GETs a health endpoint, for
//! container health checks in images without curl.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to send and where.
pub struct Delivery {
    pub url: String,
    pub secret: Option<String>,
    pub body: Vec<u8>,
    pub content_type: String,
    pub webhook_version: Option<String>,
}

/// Send `delivery`; the answer's status and body.
pub async fn send(delivery: Delivery) -> anyhow::Result<(u16, String)> {
    let signature = match &delivery.secret {
        Some(secret) => cal_relay_core::sign(secret.as_bytes(), &delivery.body),
        None => cal_relay_core::verify::NO_SECRET_PROVIDED.to_owned(),
    };
    let mut headers = vec![
        ("content-type", delivery.content_type),
        ("x-cal-signature-256", signature),
    ];
    if let Some(v) = delivery.webhook_version {
        headers.push(("x-cal-webhook-version", v));
    }
    request("POST", &delivery.url, headers, delivery.body).await
}

/// GET `url` within `timeout`; the answer's status and body.
pub async fn probe(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(timeout, request("GET", url, Vec::new(), Vec::new()))
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
}

async fn request(
    method: &str,
    url: &str,
    headers: Vec<(&str, String)>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let uri: Uri = url.parse().context("--url is not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be an http:// URL (put TLS in front of the relay, not in it)");
    }
    let host = uri.host().context("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let mut request = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `valid`, or `invalid: why`, for `signature` of `body` under `secret`.
pub fn verify(secret: String, signature: &str, body: &[u8]) -> String {
    let verifier = cal_relay_core::Verifier::new(&[secret], false);
    match verifier.verify(Some(signature.as_bytes()), body) {
        Ok(()) => "valid".to_owned(),
        Err(e) => format!("invalid: {e}"),
    }
}
