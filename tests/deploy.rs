//! The packaging and operations files: every YAML parses, every shipped configuration passes
//! `cal-relay check-config`, promtool accepts the rules and the Prometheus configuration,
//! docker-compose accepts the compose file, the dashboard and alerts name only metrics the relay
//! exports, and a real Prometheus scrapes a running relay.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{fixtures, free_port, get, post, wait_port, Post, RelayProcess, SOURCE_PATH};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with one of `exts`.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if exts
                .iter()
                .any(|e| path.extension().and_then(|x| x.to_str()) == Some(*e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Run a tool that the test script installs; a clear failure when it is missing.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (scripts/test.sh installs it): {e}"))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_yaml_and_json_file_parses() {
    let mut yamls = files(&root().join("deploy"), &["yml", "yaml"]);
    yamls.push(root().join("docker-compose.yml"));
    assert!(yamls.len() >= 10, "{yamls:?}");
    for path in &yamls {
        let docs = yaml(path);
        assert!(!docs.is_empty(), "{} is empty", path.display());
    }
    let k8s = files(&root().join("deploy/kubernetes"), &["yaml"]);
    let kinds: BTreeSet<String> = k8s
        .iter()
        .flat_map(|p| yaml(p))
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
    for path in files(&root().join("deploy"), &["json"]) {
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let panels = dash["panels"].as_array().unwrap();
        let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    }
}

/// The TOML configurations users start from: `config/*.toml` and those embedded in
/// Kubernetes ConfigMaps.
fn shipped_configs() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = files(&root().join("config"), &["toml"])
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    for path in files(&root().join("deploy/kubernetes"), &["yaml"]) {
        for doc in yaml(&path) {
            if doc["kind"].as_str() == Some("ConfigMap") {
                if let Some(toml) = doc["data"]["cal-relay.toml"].as_str() {
                    out.push((format!("{} (ConfigMap)", path.display()), toml.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn every_shipped_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("webhook-secrets");
    std::fs::write(&secrets, "a-secret\n").unwrap();
    let configs = shipped_configs();
    assert!(configs.len() >= 8, "{:?}", configs.iter().map(|c| &c.0));
    for (i, (name, text)) in configs.iter().enumerate() {
        // Secrets files are mounted at deploy time; point them at a local one.
        let text = text.replace(
            "/run/secrets/cal-relay/webhook-secrets",
            &secrets.display().to_string(),
        );
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env("CAL_WEBHOOK_SECRETS", "a-secret")
            .output()
            .unwrap();
        assert_ok(&format!("check-config {name}"), &out);
    }
}

/// A clone has nothing beside it: no tracked file but Markdown may point at the build
/// machines' reference directory (tests, bench and scripts read fixtures from `tests/fixtures`).
#[test]
fn no_tracked_file_refers_outside_the_repository() {
    let out = run("git", &["ls-files", "-z"]);
    assert_ok("git ls-files", &out);
    let needle = concat!("..", "/shared");
    let offenders: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.ends_with(".md"))
        .filter(|p| {
            std::fs::read(root().join(p))
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "files referring to {needle}: {offenders:?}"
    );
}

/// The Kubernetes manifests as a cluster would take them: `kubectl kustomize` renders the
/// kustomization, and the rendered objects plus the alternatives it leaves out (StatefulSet,
/// sidecar example, example Secret) are checked against Kubernetes' published schemas in strict
/// mode (`kubernetes-validate`, PyPI) and by `checkov` (PyPI), whose findings are fixed in the
/// manifests or skipped there with a one-line reason. The ServiceMonitor is a CRD without a
/// published schema: kubernetes-validate warns and passes it.
#[test]
fn kubernetes_manifests_pass_schema_validation_and_checkov() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = run("kubectl", &["kustomize", "deploy/kubernetes"]);
    assert_ok("kubectl kustomize", &rendered);
    let mut all = rendered.stdout.clone();
    for alt in [
        "statefulset.yaml",
        "sidecar-example.yaml",
        "secret.example.yaml",
        "subscribe-job.yaml",
    ] {
        all.extend_from_slice(b"\n---\n");
        all.extend_from_slice(&std::fs::read(root().join("deploy/kubernetes").join(alt)).unwrap());
    }
    let path = dir.path().join("manifests.yaml");
    std::fs::write(&path, &all).unwrap();
    let path = path.display().to_string();

    let validated = run("kubernetes-validate", &["--strict", "--quiet", &path]);
    assert_ok("kubernetes-validate --strict", &validated);
    let text = String::from_utf8_lossy(&validated.stdout).to_lowercase()
        + &String::from_utf8_lossy(&validated.stderr).to_lowercase();
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "{text}"
    );

    let checked = run(
        "checkov",
        &[
            "-f",
            &path,
            "--framework",
            "kubernetes",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
    );
    assert_ok("checkov", &checked);
}

#[test]
fn promtool_accepts_rules_and_config() {
    let rules = run(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    assert_ok("promtool check rules", &rules);
    let config = run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    assert_ok("promtool check config", &config);
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    let out = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--services"],
    );
    assert_ok("docker-compose config", &out);
    let services: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for s in [
        "relay",
        "kafka",
        "rabbitmq",
        "nats",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(s), "no service {s}: {services:?}");
    }
    // Every file the compose file mounts is in the repository.
    let compose = yaml(&root().join("docker-compose.yml"));
    for (_, service) in compose[0]["services"].as_hash().unwrap() {
        for v in service["volumes"].as_vec().into_iter().flatten() {
            let v = v.as_str().unwrap();
            if let Some(local) = v.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(
                    root().join(local).exists(),
                    "compose mounts missing {local}"
                );
            }
        }
    }
}

/// `cal_relay_*` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cal_relay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(name.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported: BTreeSet<String> = files(&root().join("crates"), &["rs"])
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            metric_names(&text)
                .into_iter()
                .filter(|n| text.contains(&format!("\"{n}\"")))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(exported.contains("cal_relay_deliveries_received_total"));
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/dashboards/cal-relay.json",
    ] {
        let used = metric_names(&std::fs::read_to_string(root().join(file)).unwrap());
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics {unknown:?}"
        );
    }
}

/// A Prometheus server on loopback; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: cal-relay
    static_configs:
      - targets: ["{target}"]
"#,
            rules = root().join("deploy/prometheus/alerts.yml").display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus is needed (scripts/test.sh installs it): {e}"));
        wait_port(port, "prometheus", 60);
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// Wait until the server answers queries (it says 503 while its storage opens).
    async fn wait_ready(&self) {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(addr, "/-/ready").await.map(|r| r.0).unwrap_or(0) != 200 {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path_and_query: &str) -> Value {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let (status, body) = get(addr, path_and_query).await.unwrap();
        assert_eq!(status, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The single value of an instant query, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.api(&format!("/api/v1/query?query={q}")).await;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn real_prometheus_scrapes_the_relay() {
    let relay = RelayProcess::start(&support::one_sink_config(
        "local",
        "type = \"file\"\npath = \"{dir}/events.jsonl\"",
    ))
    .await;
    // The image's HEALTHCHECK command.
    let probe = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["probe", "--url", &relay.url("/healthz")])
        .output()
        .unwrap();
    assert_ok("cal-relay probe", &probe);
    let probe = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["probe", "--url", &relay.url("/nowhere")])
        .output()
        .unwrap();
    assert!(!probe.status.success(), "probe of a 404 must fail");

    let prometheus = Prometheus::start(&relay.addr.to_string());
    prometheus.wait_ready().await;
    let secret = support::fixture_secret();
    let sent = fixtures()
        .iter()
        .filter(|f| !f.is_template())
        .take(12)
        .map(|f| Post::signed(SOURCE_PATH, &secret, &f.body, f.content_type()))
        .collect::<Vec<_>>();
    let n = sent.len() as f64;
    for p in sent {
        let (status, body) = post(relay.addr, p).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = prometheus
            .query("sum(cal_relay_deliveries_received_total{job=\"cal-relay\"})")
            .await;
        let ready = prometheus
            .query("min(cal_relay_sink_ready{job=\"cal-relay\",sink=\"local\"})")
            .await;
        if received == Some(n) && ready == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {n} deliveries (got {received:?}, ready {ready:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The shipped alert rules loaded into that Prometheus and evaluate without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = prometheus.api("/api/v1/rules").await;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        let evaluated = all.iter().all(|r| r["health"] == "ok");
        if all.len() >= 10 && evaluated {
            let firing: Vec<&&Value> = all.iter().filter(|r| r["state"] == "firing").collect();
            assert!(
                firing.is_empty(),
                "alerts firing on a healthy relay: {firing:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {rules}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
