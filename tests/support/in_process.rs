//! The relay in the test's own process: the configuration resolved and started by
//! `cal_relay_app` exactly as `serve` does, with no listener; requests go straight to the
//! handler. For HTTP behaviour that needs neither the binary nor a broker (its sinks here are
//! the file sink's files, read back as a user would).

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use super::{parse_metric, Post};

/// A relay handled in process, in a directory of its own.
pub struct InProcess {
    pub dir: tempfile::TempDir,
    started: cal_relay_app::serve::Started,
}

/// The peer every in-process request comes from.
const PEER: &str = "127.0.0.1:40000";

impl InProcess {
    /// Resolve `config` (with `{listen}` and `{dir}` replaced) and start its parts.
    pub async fn start(config: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let text = config
            .replace("{listen}", "127.0.0.1:0")
            .replace("{dir}", &dir.path().display().to_string());
        let mut loaded = cal_relay_config::Config::from_toml(&text).unwrap();
        // As the binary started in `dir`: relative state paths (the spool, the de-duplication
        // ids) are the directory's own, never the test runner's working directory.
        let d = &mut loaded.config.delivery;
        d.dir = dir.path().join(&d.dir);
        d.dedup_file = d.dedup_file.as_ref().map(|f| dir.path().join(f));
        let plan = cal_relay_app::Plan::resolve(loaded).unwrap();
        let started = cal_relay_app::serve::start(&plan).await.unwrap();
        InProcess { dir, started }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One request with `method`; status and body text.
    pub async fn request(&self, method: &str, post: Post<'_>) -> anyhow::Result<(u16, String)> {
        let (status, _, body) = self.exchange(method, post).await?;
        Ok((status, body))
    }

    /// One request with `method`; status, headers and body text.
    pub async fn exchange(
        &self,
        method: &str,
        post: Post<'_>,
    ) -> anyhow::Result<(u16, hyper::HeaderMap, String)> {
        let mut req = Request::builder()
            .method(method)
            .uri(post.path)
            .header("host", "relay");
        let length = post.body.len();
        for (k, v) in &post.headers {
            req = req.header(*k, v);
        }
        // As a client sends it: the length declared.
        if !post
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            req = req.header("content-length", length);
        }
        let req = req.body(Full::new(Bytes::from(post.body)))?;
        let peer: SocketAddr = PEER.parse()?;
        let response = self.started.relay.handle(req, peer).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn post(&self, post: Post<'_>) -> anyhow::Result<(u16, String)> {
        self.request("POST", post).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let empty = Post {
            path,
            body: Vec::new(),
            headers: Vec::new(),
        };
        self.request("GET", empty).await
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await.unwrap();
        parse_metric(&text, series)
    }
}
