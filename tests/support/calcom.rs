//! A loopback stand-in for Cal.com API v2's webhook endpoints, behaving as
//! `reference/calcom-api.md` says Cal.com does: it refuses a missing or wrong API key, a
//! request without `cal-api-version`, an http or private-address subscriber URL, an unknown
//! trigger, no-show triggers without `time` / `timeUnit` (and `time` without them); it pages at
//! 250, answers 429 (with `Retry-After`) to every third request, and records every request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

/// The API key the server accepts.
pub const API_KEY: &str = "cal_live_0123456789abcdef0123456789abcdef";

#[derive(Default)]
pub struct State {
    /// Every webhook, in creation order.
    pub hooks: Vec<Value>,
    /// Every request: method and path with its query.
    pub requests: Vec<(String, String)>,
    /// When each request came.
    pub times: Vec<std::time::Instant>,
    pub throttled: usize,
    next_id: u64,
}

pub struct FakeCal {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeCal {
    pub async fn start() -> FakeCal {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeCal { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A webhook of the key's user, as if made in Cal.com's settings.
    pub fn add(&self, url: &str, triggers: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.hooks.push(json!({
            "id": id.to_string(), "subscriberUrl": url, "triggers": triggers, "active": true,
            "payloadTemplate": null, "version": "2021-10-20", "time": null, "timeUnit": null,
            "secret": null, "userId": 1
        }));
    }

    /// The webhooks at `url`.
    pub fn at(&self, url: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.hooks
            .iter()
            .filter(|h| h["subscriberUrl"] == url)
            .cloned()
            .collect()
    }

    /// Change a field of the webhook at `url`, as a user in Cal.com's settings would.
    pub fn edit(&self, url: &str, field: &str, value: Value) {
        let mut s = self.state.lock().unwrap();
        for h in s.hooks.iter_mut().filter(|h| h["subscriberUrl"] == url) {
            h[field] = value.clone();
        }
    }

    /// Requests other than GET since the `from`th.
    pub fn writes_since(&self, from: usize) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap();
        s.requests[from.min(s.requests.len())..]
            .iter()
            .filter(|(m, _)| m != "GET")
            .cloned()
            .collect()
    }

    /// When the last PATCH that was not throttled came.
    pub fn last_patch(&self) -> Option<std::time::Instant> {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .zip(&s.times)
            .enumerate()
            .filter(|(i, ((m, _), _))| m == "PATCH" && !(i + 1).is_multiple_of(3))
            .map(|(_, (_, t))| *t)
            .next_back()
    }

    /// The secret the webhook at `url` signs with now.
    pub fn secret_of(&self, url: &str) -> Option<String> {
        self.at(url)
            .first()
            .and_then(|h| h["secret"].as_str().map(str::to_owned))
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        json!({"status": "error", "error": {"code": "Error", "message": message}}),
    )
}

fn ok(data: Value) -> Response<Full<Bytes>> {
    answer(StatusCode::OK, json!({"status": "success", "data": data}))
}

async fn handle(
    state: &Mutex<State>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {API_KEY}").as_bytes());
    let versioned = req.headers().contains_key("cal-api-version");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut s = state.lock().unwrap();
    s.requests.push((method.clone(), format!("{path}?{query}")));
    s.times.push(std::time::Instant::now());
    if s.requests.len().is_multiple_of(3) {
        s.throttled += 1;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlerException: Too Many Requests",
        );
        r.headers_mut().insert("retry-after", "0".parse().unwrap());
        return r;
    }
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    if !versioned {
        return error(
            StatusCode::BAD_REQUEST,
            "the cal-api-version header is required",
        );
    }
    let Some(rest) = path.strip_prefix("/v2/webhooks") else {
        return error(StatusCode::NOT_FOUND, "Cannot find this route");
    };
    let id = rest.strip_prefix('/').filter(|i| !i.is_empty());
    match (method.as_str(), id) {
        ("GET", None) => list(&s, &query),
        ("POST", None) => {
            let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if input["active"].as_bool().is_none() || !input["triggers"].is_array() {
                return error(StatusCode::BAD_REQUEST, "active and triggers are required");
            }
            let mut hook = json!({
                "payloadTemplate": null, "version": "2021-10-20", "time": null,
                "timeUnit": null, "secret": null, "userId": 1
            });
            merge(&mut hook, &input);
            if let Err(m) = valid(&hook, true) {
                return error(StatusCode::BAD_REQUEST, &m);
            }
            s.next_id += 1;
            hook["id"] = s.next_id.to_string().into();
            s.hooks.push(hook.clone());
            ok(hook)
        }
        ("GET" | "PATCH" | "DELETE", Some(id)) => {
            let Some(at) = s.hooks.iter().position(|h| h["id"] == id) else {
                return error(StatusCode::NOT_FOUND, "Webhook not found");
            };
            match method.as_str() {
                "GET" => ok(s.hooks[at].clone()),
                "DELETE" => ok(s.hooks.remove(at)),
                _ => {
                    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut hook = s.hooks[at].clone();
                    let url_changes = input.get("subscriberUrl").is_some();
                    merge(&mut hook, &input);
                    if let Err(m) = valid(&hook, url_changes) {
                        return error(StatusCode::BAD_REQUEST, &m);
                    }
                    s.hooks[at] = hook.clone();
                    ok(hook)
                }
            }
        }
        _ => error(StatusCode::NOT_FOUND, "Cannot find this route"),
    }
}

fn list(s: &State, query: &str) -> Response<Full<Bytes>> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let (skip, take) = (param("skip").unwrap_or(0), param("take").unwrap_or(250));
    if take > 250 {
        return error(StatusCode::BAD_REQUEST, "take must not be greater than 250");
    }
    ok(Value::Array(
        s.hooks.iter().skip(skip).take(take).cloned().collect(),
    ))
}

fn merge(hook: &mut Value, input: &Value) {
    if let Some(fields) = input.as_object() {
        for (k, v) in fields {
            hook[k] = v.clone();
        }
    }
}

/// Cal.com's checks of a webhook about to be stored.
fn valid(hook: &Value, check_url: bool) -> Result<(), String> {
    if check_url {
        let url = hook["subscriberUrl"].as_str().unwrap_or("");
        let Some(rest) = url.strip_prefix("https://") else {
            return Err("Webhook URL is not allowed: Only HTTPS URLs are allowed".into());
        };
        let host = rest.split(['/', ':']).next().unwrap_or("");
        let private = host == "localhost"
            || host.starts_with("127.")
            || host.starts_with("10.")
            || host.starts_with("192.168.")
            || host.starts_with('[');
        if private {
            return Err(format!("Webhook URL is not allowed: {host} is blocked"));
        }
    }
    let known: Vec<&str> = cal_relay_core::trigger::subscribable().collect();
    let triggers: Vec<&str> = hook["triggers"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(bad) = triggers.iter().find(|t| !known.contains(t)) {
        return Err(format!("triggers: {bad} is not a valid trigger"));
    }
    let no_show = triggers.iter().any(|t| t.contains("CAL_VIDEO_NO_SHOW"));
    let timed = hook["time"].as_u64().is_some_and(|t| t >= 1)
        && ["DAY", "HOUR", "MINUTE"].contains(&hook["timeUnit"].as_str().unwrap_or(""));
    let any_time = !hook["time"].is_null() || !hook["timeUnit"].is_null();
    if no_show && !timed {
        return Err("time and timeUnit are required for no-show triggers".into());
    }
    if !no_show && any_time {
        return Err("time and timeUnit are only for no-show triggers".into());
    }
    Ok(())
}
