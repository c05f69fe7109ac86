//! The benchmark floor: a bare hyper 1.x server that does only the work no correct relay can
//! skip, written as plainly as possible: read the body, check the hex HMAC-SHA256 signature in
//! constant time, compute the SHA-256 delivery id, find `triggerEvent` in one validating JSON
//! scan, write one JSON line with one `write(2)`, answer 200 with the id. No metrics, no logs,
//! no limits, no spool. The relay is measured against it. Not part of the product.
//!
//! Usage: bench-floor 127.0.0.1:18080 SECRET [OUTPUT, default /dev/null]

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "triggerEvent", borrow)]
    trigger: Option<&'a str>,
}

struct Floor {
    key: Hmac<Sha256>,
    out: Mutex<std::fs::File>,
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    floor: Arc<Floor>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signature = req
        .headers()
        .get("x-cal-signature-256")
        .and_then(|v| hex::decode(v.as_bytes()).ok());
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(answer(StatusCode::BAD_REQUEST, "{}".into()));
    };
    let mut mac = floor.key.clone();
    mac.update(&body);
    if signature.is_none_or(|s| mac.verify_slice(&s).is_err()) {
        return Ok(answer(StatusCode::UNAUTHORIZED, "{}".into()));
    }
    let id = hex::encode(Sha256::digest(&body));
    let Ok(Envelope {
        trigger: Some(trigger),
    }) = serde_json::from_slice::<Envelope>(&body)
    else {
        return Ok(answer(StatusCode::BAD_REQUEST, "{}".into()));
    };
    let mut line = Vec::with_capacity(body.len() + 128);
    line.extend_from_slice(b"{\"id\":\"");
    line.extend_from_slice(id.as_bytes());
    line.extend_from_slice(b"\",\"trigger\":\"");
    line.extend_from_slice(trigger.as_bytes());
    line.extend_from_slice(b"\",\"body\":");
    line.extend_from_slice(&body);
    line.extend_from_slice(b"}\n");
    let written = floor
        .out
        .lock()
        .map(|mut f| f.write_all(&line).is_ok())
        .unwrap_or(false);
    if !written {
        return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "{}".into()));
    }
    Ok(answer(
        StatusCode::OK,
        format!(r#"{{"status":"accepted","deliveryId":"{id}"}}"#),
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let secret = args.next().unwrap_or_else(|| "bench-secret".into());
    let output = args.next().unwrap_or_else(|| "/dev/null".into());
    let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(output)?;
    let floor = Arc::new(Floor {
        key,
        out: Mutex::new(out),
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("floor listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(floor.clone(), req));
            let _ = http1::Builder::new()
                .writev(false) // as the relay does
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
