//! The HTTP client: one call site that authenticates, pins `cal-api-version`, times out,
//! retries 429 (after its `Retry-After`) and 5xx with a bounded backoff, and turns a 4xx into
//! Cal.com's own message.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::webhook::{Changes, Secret, Webhook};

/// Cal.com cloud's API.
pub const DEFAULT_API_URL: &str = "https://api.cal.com";

/// The `cal-api-version` this client is written against, sent on every webhook request (a
/// changed default has silently broken integrations before; Cal.com's documents do not say
/// which webhook endpoints require one).
pub const API_VERSION: &str = "2026-05-01";

/// The version pinned per endpoint family, first match wins: the one place to change it.
const VERSIONS: &[(&str, &str)] = &[
    // Bookings require this one.
    ("/v2/bookings", "2026-05-01"),
    ("/v2/", API_VERSION),
];

fn version_for(path: &str) -> &'static str {
    VERSIONS
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or(API_VERSION, |(_, v)| v)
}

/// Most webhooks Cal.com returns per page.
const PAGE: usize = 250;

/// Attempts of one request before a 429 or 5xx is given up.
const ATTEMPTS: u32 = 5;

/// Longest wait between attempts (a longer `Retry-After` is cut to this).
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Whose webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The user who owns the API key.
    User,
    EventType(u64),
    Organization(u64),
}

impl Scope {
    fn path(&self) -> String {
        match self {
            Scope::User => "/v2/webhooks".into(),
            Scope::EventType(id) => format!("/v2/event-types/{id}/webhooks"),
            Scope::Organization(id) => format!("/v2/organizations/{id}/webhooks"),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::User => f.write_str("the API key's user"),
            Scope::EventType(id) => write!(f, "event type {id}"),
            Scope::Organization(id) => write!(f, "organization {id}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Cal.com refused it (4xx), with its message.
    #[error("Cal.com refused {what} ({status}): {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    /// 429 or 5xx on every attempt.
    #[error("Cal.com answered {status} to {what} {attempts} times; giving up")]
    Exhausted {
        what: String,
        status: u16,
        attempts: u32,
    },
    #[error("cannot reach Cal.com for {what}: {detail}")]
    Transport { what: String, detail: String },
    #[error("Cal.com's answer to {what} is not what its API describes: {detail}")]
    Shape { what: String, detail: String },
}

/// A client of one Cal.com instance, authenticated with one API key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Value,
}

impl Client {
    /// A client of `base` (e.g. [`DEFAULT_API_URL`]) with API key `key`.
    pub fn new(base: &str, key: Secret, timeout: Duration) -> Result<Client, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("cal-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                what: "a client".into(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Every webhook of `scope`, all pages.
    pub async fn list(&self, scope: &Scope) -> Result<Vec<Webhook>, ApiError> {
        let mut out = Vec::new();
        loop {
            let query = [("skip", out.len().to_string()), ("take", PAGE.to_string())];
            let data = self
                .call(Method::GET, &scope.path(), &query, None::<&()>)
                .await?;
            let page: Vec<Webhook> = decode("the webhook list", data)?;
            let full = page.len() >= PAGE;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    pub async fn create(&self, scope: &Scope, changes: &Changes) -> Result<Webhook, ApiError> {
        let data = self
            .call(Method::POST, &scope.path(), &[], Some(changes))
            .await?;
        decode("the webhook created", data)
    }

    pub async fn update(
        &self,
        scope: &Scope,
        id: &str,
        changes: &Changes,
    ) -> Result<Webhook, ApiError> {
        let path = format!("{}/{id}", scope.path());
        let data = self.call(Method::PATCH, &path, &[], Some(changes)).await?;
        decode("the webhook updated", data)
    }

    pub async fn delete(&self, scope: &Scope, id: &str) -> Result<(), ApiError> {
        let path = format!("{}/{id}", scope.path());
        self.call(Method::DELETE, &path, &[], None::<&()>).await?;
        Ok(())
    }

    /// One request, retried on 429 and 5xx; the answer's `data`.
    async fn call<B: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Value, ApiError> {
        let what = format!("{method} {path}");
        let mut last = 0;
        for attempt in 1..=ATTEMPTS {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.key.0)
                .header("cal-api-version", version_for(path))
                .query(query);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS && (e.is_timeout() || e.is_connect()) => {
                    tracing::warn!(%what, attempt, error = %e, "Cal.com did not answer; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(ApiError::Transport {
                        what,
                        detail: e.without_url().to_string(),
                    })
                }
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                last = status.as_u16();
                let wait = retry_after(&response).unwrap_or_else(|| backoff(attempt));
                tracing::warn!(%what, attempt, status = last, "Cal.com asked to retry");
                if attempt < ATTEMPTS {
                    tokio::time::sleep(wait.min(MAX_WAIT)).await;
                }
                continue;
            }
            let text = response.text().await.map_err(|e| ApiError::Transport {
                what: what.clone(),
                detail: e.without_url().to_string(),
            })?;
            if !status.is_success() {
                return Err(ApiError::Refused {
                    what,
                    status: status.as_u16(),
                    message: error_message(&text),
                });
            }
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            let answer: Answer = serde_json::from_str(&text).map_err(|e| ApiError::Shape {
                what: what.clone(),
                detail: e.to_string(),
            })?;
            return Ok(answer.data);
        }
        Err(ApiError::Exhausted {
            what,
            status: last,
            attempts: ATTEMPTS,
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, data: Value) -> Result<T, ApiError> {
    serde_json::from_value(data).map_err(|e| ApiError::Shape {
        what: what.into(),
        detail: e.to_string(),
    })
}

/// Cal.com's `error.message` (a string, or a list of validation messages), else the text.
fn error_message(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let message = &value["error"]["message"];
    match message {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; "),
        _ => text.chars().take(300).collect(),
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// 250 ms doubling per attempt.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5)).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_messages_are_cal_coms_own() {
        let one = r#"{"status":"error","error":{"code":"BadRequestException","message":"Webhook URL is not allowed: Only HTTPS URLs are allowed"}}"#;
        assert_eq!(
            super::error_message(one),
            "Webhook URL is not allowed: Only HTTPS URLs are allowed"
        );
        let many = r#"{"status":"error","error":{"message":["a","b"]}}"#;
        assert_eq!(super::error_message(many), "a; b");
        assert_eq!(super::error_message("Bad Gateway"), "Bad Gateway");
    }
}
