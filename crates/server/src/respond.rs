//! Short JSON answers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub type Body = Full<Bytes>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON answer with `status`.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

/// `{"error":reason,"message":message}` with `status`.
pub fn error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": reason, "message": message });
    json(status, body.to_string())
}

/// `{"status":"accepted","deliveryId":id}`.
pub fn accepted(delivery_id: &str) -> Response<Body> {
    // The id is hex: nothing to escape.
    json(
        StatusCode::OK,
        format!(r#"{{"status":"accepted","deliveryId":"{delivery_id}"}}"#),
    )
}
