//! Shared helpers of the end-to-end tests: start the real `cal-relay` binary on a free port with
//! a given configuration (or the relay in process, `in_process`), send deliveries over HTTP,
//! read fixtures and metrics.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Digest;
use tokio::net::TcpStream;

pub mod amqp;
pub mod calcom;
pub mod in_process;
pub mod kafka;
pub mod nats;
pub mod rabbit_cluster;

/// Secret the fixtures are signed with.
pub fn fixture_secret() -> String {
    manifest()["secret"].as_str().unwrap().to_owned()
}

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("CAL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deliveries")
        })
}

pub fn manifest() -> Value {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixtures needed at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One fixture delivery: manifest entry and exact body bytes.
pub struct Fixture {
    pub meta: Value,
    pub body: Vec<u8>,
}

impl Fixture {
    pub fn file(&self) -> &str {
        self.meta["file"].as_str().unwrap()
    }
    pub fn trigger(&self) -> Option<&str> {
        self.meta["trigger"].as_str()
    }
    pub fn content_type(&self) -> &str {
        self.meta["content_type"].as_str().unwrap()
    }
    pub fn signature(&self) -> &str {
        self.meta["x_cal_signature_256"].as_str().unwrap()
    }
    pub fn delivery_id(&self) -> &str {
        self.meta["sha256"].as_str().unwrap()
    }
    /// The `X-Cal-Webhook-Version` Cal.com sent with it (the queued paths send `undefined`).
    pub fn webhook_version(&self) -> String {
        self.meta["webhook_version_header"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| manifest()["webhook_version"].as_str().unwrap().to_owned())
    }
    /// The `cal-webhook-version` header the relay passes on: none for `undefined`.
    pub fn expected_webhook_version(&self) -> Option<String> {
        Some(self.webhook_version()).filter(|v| v != "undefined")
    }
    /// The request Cal.com sent: body, content type, signature with `secret`, webhook version.
    pub fn as_sent<'a>(&self, path: &'a str, secret: &str) -> Post<'a> {
        let mut p = Post::signed(path, secret, &self.body, self.content_type());
        p.headers.retain(|(n, _)| *n != "x-cal-webhook-version");
        p.headers
            .push(("x-cal-webhook-version", self.webhook_version()));
        p
    }
    /// Whether `id` is this fixture's message id (broker de-duplication id, the answer's
    /// `deliveryId`): the body's SHA-256, or for a template (whose bytes repeat across bookings)
    /// that hash followed by `-` and a part unique to the delivery.
    pub fn is_message_id(&self, id: &str) -> bool {
        if self.is_template() {
            id.strip_prefix(self.delivery_id())
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'))
        } else {
            id == self.delivery_id()
        }
    }
    pub fn is_flat(&self) -> bool {
        self.meta["flat"].as_bool().unwrap_or(false)
    }
    pub fn is_template(&self) -> bool {
        self.trigger().is_none()
    }
    /// The partition key by the relay's rule: payload (root when flat) `uid`, `bookingUid`,
    /// `booking.uid`, `evt.uid`, `oooEntry.uuid`, `formId`.
    pub fn expected_key(&self) -> Option<String> {
        if self.is_template() {
            return None;
        }
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        let p = if v["payload"].is_object() {
            &v["payload"]
        } else {
            &v
        };
        let key = [
            &p["uid"],
            &p["bookingUid"],
            &p["booking"]["uid"],
            &p["evt"]["uid"],
            &p["oooEntry"]["uuid"],
            &p["formId"],
        ]
        .into_iter()
        .find_map(|k| k.as_str().map(str::to_owned));
        key
    }
    /// Default destination by the naming rule.
    pub fn expected_destination(&self, template_destination: &str) -> String {
        match self.trigger() {
            None => template_destination.to_owned(),
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                match lower.split_once('_') {
                    Some((a, b)) => format!("cal.{a}.{b}"),
                    None => format!("cal.{lower}"),
                }
            }
        }
    }
}

pub fn fixtures() -> Vec<Fixture> {
    let m = manifest();
    m["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|meta| Fixture {
            body: std::fs::read(fixtures_dir().join(meta["file"].as_str().unwrap())).unwrap(),
            meta: meta.clone(),
        })
        .collect()
}

/// A distinct BOOKING_CREATED delivery (from the fixture) for booking `uid`, carrying `n` in
/// `payload.relayTestSeq` so tests can check order.
pub fn booking(uid: &str, n: u64) -> Vec<u8> {
    static TEMPLATE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let mut v = TEMPLATE
        .get_or_init(|| {
            let f = fixtures()
                .into_iter()
                .find(|f| f.trigger() == Some("BOOKING_CREATED") && !f.is_flat())
                .expect("a BOOKING_CREATED fixture");
            serde_json::from_slice(&f.body).unwrap()
        })
        .clone();
    v["payload"]["uid"] = Value::from(uid);
    v["payload"]["relayTestSeq"] = Value::from(n);
    serde_json::to_vec(&v).unwrap()
}

/// `relayTestSeq` of a body made by [`booking`].
pub fn booking_seq(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["payload"]["relayTestSeq"].as_u64().unwrap()
}

/// A signed POST of a [`booking`] body.
pub fn signed_booking(body: &[u8]) -> Post<'static> {
    Post::signed(SOURCE_PATH, &fixture_secret(), body, "application/json")
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(body))
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run one of the third-party checkers in `tests/interop` (`program` with `args`, from the
/// repository's root) with `input` on stdin: whether it succeeded, and its stdout (then its
/// stderr).
pub fn run_interop(program: &str, args: &[&str], input: &[u8]) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs it)"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POST fixture `f` to the fixture source of `addr`, signed as Cal.com signs it.
pub async fn post_fixture(addr: SocketAddr, f: &Fixture) -> (u16, String) {
    post(addr, f.as_sent(SOURCE_PATH, &fixture_secret()))
        .await
        .unwrap()
}

/// `n` distinct free loopback ports: all bound at once, then released (one at a time, two
/// calls of [`free_port`] may return the same port).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `[delivery]` in spool mode with the log under the relay's directory; `extra` adds keys.
pub fn spool_section(extra: &str) -> String {
    format!("\n[delivery]\nmode = \"spool\"\ndir = \"{{dir}}/spool\"\n{extra}\n")
}

/// Path of the fixture source in [`one_sink_config`].
pub const SOURCE_PATH: &str = "/webhooks/cal";

/// `config` (from [`one_sink_config`]) with the source's secrets read from the file `path`.
pub fn with_secrets_file(config: &str, path: &str) -> String {
    let inline = format!("secrets = [\"{}\"]", fixture_secret());
    assert!(config.contains(&inline), "{config}");
    config.replace(&inline, &format!("secrets_file = {path:?}"))
}

/// A relay configuration with the fixture source (templates to `cal.custom`) and every trigger
/// routed to one sink `name`, whose TOML body is `sink`.
pub fn one_sink_config(name: &str, sink: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"

[[sources]]
name = "cal"
path = "{SOURCE_PATH}"
secrets = ["{secret}"]
template_destination = "cal.custom"
# The fixtures were captured months ago: their createdAt is outside any replay window.
replay_window_secs = 0

[sinks.{name}]
{sink}

[[routes]]
triggers = ["*"]
sinks = ["{name}"]
"#,
        secret = fixture_secret()
    )
}

/// Block until something accepts TCP connections on loopback `port`.
pub fn wait_port(port: u16, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running relay process; killed on drop.
pub struct RelayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    /// Extra arguments of `serve` (e.g. `--watch-config`).
    args: Vec<String>,
}

impl RelayProcess {
    /// Write `config` (with `{listen}` and `{dir}` replaced) and start `cal-relay serve` on it.
    pub async fn start(config: &str) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> RelayProcess {
        Self::start_full(dir, config, &[]).await
    }

    /// Like [`RelayProcess::start`], with extra environment variables.
    pub async fn start_with_env(config: &str, env: &[(String, String)]) -> RelayProcess {
        Self::start_full(tempfile::tempdir().unwrap(), config, env).await
    }

    /// Like [`RelayProcess::start`], with extra arguments of `serve`.
    pub async fn start_with_args(config: &str, args: &[&str]) -> RelayProcess {
        let mut relay = Self::launch_with(tempfile::tempdir().unwrap(), config, &[], args).await;
        relay.wait_healthy().await;
        relay
    }

    /// Start without the plain-HTTP health check (a TLS listener): wait for the port only.
    pub async fn start_listening(config: &str) -> RelayProcess {
        Self::launch(tempfile::tempdir().unwrap(), config, &[]).await
    }

    async fn start_full(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(String, String)],
    ) -> RelayProcess {
        let mut relay = Self::launch(dir, config, env).await;
        relay.wait_healthy().await;
        relay
    }

    async fn launch(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(String, String)],
    ) -> RelayProcess {
        Self::launch_with(dir, config, env, &[]).await
    }

    async fn launch_with(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(String, String)],
        args: &[&str],
    ) -> RelayProcess {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = config
            .replace("{listen}", &addr.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("cal-relay.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("relay.log");
        let mut relay = RelayProcess {
            child: spawn(&config_path, &log_path, env, &args),
            addr,
            dir,
            config_path,
            log_path,
            env: env.to_vec(),
            args,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("relay exited with {status}: {}", relay.log());
            }
            assert!(
                Instant::now() < deadline,
                "relay did not listen: {}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay
    }

    /// Start the same configuration again after the process ended (e.g. after a kill).
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.config_path, &self.log_path, &self.env, &self.args);
        self.wait_healthy().await;
    }

    /// Stop the process and start it again with `env` in place of its extra environment.
    pub async fn restart_with_env(&mut self, env: &[(String, String)]) {
        self.env = env.to_vec();
        self.restart().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("relay exited with {status}: {}", self.log());
            }
            if let Ok((200, _)) = get(self.addr, "/healthz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Send SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `/readyz` answers `want`.
    pub async fn wait_readyz(&self, want: u16, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while get(self.addr, "/readyz").await.map(|r| r.0).unwrap_or(0) != want {
            assert!(
                Instant::now() < deadline,
                "/readyz never {want}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `cal-relay spool list --json` on this relay's spool (`{dir}/spool`): one JSON object
    /// per pending entry or dead letter. Read from the files, so an entry stays listed until
    /// its DONE is written (unlike a gauge, which may not have caught up with a new entry).
    pub fn spool_list(&self) -> String {
        let out = Command::new(relay_binary())
            .args(["spool", "--dir"])
            .arg(self.path("spool"))
            .args(["list", "--json"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Scrape `/metrics` and return the value of the series `name{labels}` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = get(self.addr, "/metrics").await.unwrap();
        parse_metric(&text, series)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay binary the tests start: this build's, or `CAL_RELAY_BIN` (e.g.
/// `target/release/cal-relay`, to take figures from the binary that ships).
pub fn relay_binary() -> PathBuf {
    std::env::var_os("CAL_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cal-relay")))
}

fn spawn(config: &Path, log: &Path, env: &[(String, String)], args: &[String]) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    // In the relay's own directory: relative paths (the default data/ directory of the spool
    // and the de-duplication file) belong to this relay alone.
    Command::new(relay_binary())
        .current_dir(config.parent().unwrap_or(Path::new(".")))
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start cal-relay")
}

/// Value of `series` (e.g. `cal_relay_deliveries_rejected_total{reason="x",source="cal"}`)
/// in a text exposition; label order as the exposition writes it (sorted by name).
pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A request to send.
pub struct Post<'a> {
    pub path: &'a str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'a str, String)>,
}

impl<'a> Post<'a> {
    /// A delivery as Cal.com sends it: content type, signature, webhook version.
    pub fn signed(path: &'a str, secret: &str, body: &[u8], content_type: &str) -> Post<'a> {
        Post {
            path,
            body: body.to_vec(),
            headers: vec![
                ("content-type", content_type.to_owned()),
                (
                    "x-cal-signature-256",
                    cal_relay_core::sign(secret.as_bytes(), body),
                ),
                ("x-cal-webhook-version", "2021-10-20".to_owned()),
            ],
        }
    }
}

/// Send one request on a fresh connection; status and body text.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    post: Post<'_>,
) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(post.path)
        .header("host", addr.to_string());
    for (k, v) in &post.headers {
        req = req.header(*k, v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(post.body)))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub async fn post(addr: SocketAddr, post: Post<'_>) -> anyhow::Result<(u16, String)> {
    request(addr, "POST", post).await
}

pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    request(
        addr,
        "GET",
        Post {
            path,
            body: Vec::new(),
            headers: Vec::new(),
        },
    )
    .await
}

/// The JSON lines a file sink wrote (empty when the file does not exist).
pub fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}
