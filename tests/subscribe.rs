//! `subscribe`, `subscriptions check` and `unsubscribe`, run as a user runs them (the binary,
//! the API key in CAL_API_KEY) against a loopback server that behaves as Cal.com API v2 does.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::calcom::{FakeCal, API_KEY};
use support::relay_binary;

const URL: &str = "https://relay.example.com/webhooks/cal";

/// The triggers the configuration's routes name: BOOKING_* and one no-show trigger.
const ROUTED: &[&str] = &[
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
    "BOOKING_CANCELLED",
    "BOOKING_CREATED",
    "BOOKING_LOCATION_UPDATED",
    "BOOKING_NO_SHOW_UPDATED",
    "BOOKING_PAID",
    "BOOKING_PAYMENT_INITIATED",
    "BOOKING_REASSIGNED",
    "BOOKING_REJECTED",
    "BOOKING_REQUESTED",
    "BOOKING_RESCHEDULED",
];

/// A configuration whose source reads its secrets from `secrets` (not there yet).
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("cal-relay.toml");
    let text = format!(
        r#"
[[sources]]
name = "cal"
path = "/webhooks/cal"
secrets_file = "{dir}/secrets"

[sinks.local]
type = "file"
path = "{dir}/events.jsonl"

[[routes]]
triggers = ["BOOKING_*", "AFTER_HOSTS_CAL_VIDEO_NO_SHOW"]
sinks = ["local"]

[[routes]]
triggers = ["PING"]
sinks = ["local"]
"#,
        dir = dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(cal: &FakeCal, config: &Path, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(relay_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CAL_API_KEY", API_KEY)
        .env("CAL_API_URL", cal.url())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains(API_KEY), "the API key was printed: {text}");
    output
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn secret_in(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("secrets"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn subscribe_twice_among_300_webhooks_leaves_exactly_one() {
    let cal = FakeCal::start().await;
    for n in 0..300 {
        cal.add(
            &format!("https://elsewhere.example.com/{n}"),
            &["BOOKING_CREATED"],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let first = run(&cal, &config, &["subscribe", "--url", URL]).await;
    assert!(first.status.success(), "{}", text(&first));
    let hooks = cal.at(URL);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let hook = &hooks[0];
    let secret = secret_in(dir.path());
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    assert_eq!(
        hook["secret"],
        secret.as_str(),
        "Cal.com signs with the relay's secret"
    );
    assert!(!text(&first).contains(&secret), "the secret was printed");
    let mut triggers: Vec<&str> = hook["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    triggers.sort();
    assert_eq!(triggers, ROUTED, "PING is never subscribed");
    assert_eq!(hook["version"], "2021-10-20");
    assert_eq!(
        (hook["time"].as_u64(), hook["timeUnit"].as_str()),
        (Some(15), Some("MINUTE"))
    );
    assert_eq!(hook["active"], true);
    assert!(
        cal.state.lock().unwrap().throttled > 0,
        "no 429 was answered"
    );
    // Again: nothing to write, the same secret.
    let before = cal.request_count();
    let second = run(&cal, &config, &["subscribe", "--url", URL]).await;
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("up to date"), "{}", text(&second));
    assert_eq!(cal.writes_since(before), vec![]);
    assert_eq!(cal.at(URL).len(), 1);
    assert_eq!(secret_in(dir.path()), secret, "a re-run never rotates");
    assert_eq!(cal.state.lock().unwrap().hooks.len(), 301);
}

#[tokio::test]
async fn a_dry_run_sends_no_write_and_writes_no_secret() {
    let cal = FakeCal::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let out = run(&cal, &config, &["subscribe", "--url", URL, "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would create"), "{}", text(&out));
    assert_eq!(cal.writes_since(0), vec![]);
    assert!(cal.request_count() > 0);
    assert!(!dir.path().join("secrets").exists());
}

#[tokio::test]
async fn a_url_cal_com_refuses_fails_before_any_request() {
    let cal = FakeCal::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for url in [
        "https://10.0.0.7/webhooks/cal",
        "http://relay.example.com/webhooks/cal",
        "https://localhost/webhooks/cal",
    ] {
        let out = run(&cal, &config, &["subscribe", "--url", url]).await;
        assert!(!out.status.success(), "{url}");
        assert!(
            text(&out).contains("Webhook URL is not allowed"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(cal.request_count(), 0);
}

#[tokio::test]
async fn check_names_each_difference_and_fails() {
    let cal = FakeCal::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let check = ["subscriptions", "check", "--url", URL];
    let missing = run(&cal, &config, &check).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no webhook delivers to"),
        "{}",
        text(&missing)
    );
    assert!(run(&cal, &config, &["subscribe", "--url", URL])
        .await
        .status
        .success());
    let clean = run(&cal, &config, &check).await;
    assert!(clean.status.success(), "{}", text(&clean));
    cal.edit(URL, "active", false.into());
    let inactive = run(&cal, &config, &check).await;
    assert!(!inactive.status.success());
    assert!(text(&inactive).contains("inactive"), "{}", text(&inactive));
    cal.edit(URL, "active", true.into());
    let fewer: Vec<&str> = ROUTED
        .iter()
        .copied()
        .filter(|t| *t != "BOOKING_CREATED")
        .collect();
    cal.edit(URL, "triggers", fewer.into());
    let dropped = run(&cal, &config, &check).await;
    assert!(!dropped.status.success());
    assert!(
        text(&dropped).contains("missing: BOOKING_CREATED"),
        "{}",
        text(&dropped)
    );
    // subscribe puts it right.
    assert!(run(&cal, &config, &["subscribe", "--url", URL])
        .await
        .status
        .success());
    assert!(run(&cal, &config, &check).await.status.success());
}

#[tokio::test]
async fn unsubscribe_deletes_the_webhook_and_a_wrong_key_gets_cal_coms_message() {
    let cal = FakeCal::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    assert!(run(&cal, &config, &["subscribe", "--url", URL])
        .await
        .status
        .success());
    let out = run(&cal, &config, &["unsubscribe", "--url", URL]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(cal.at(URL).is_empty());
    let wrong = tokio::process::Command::new(relay_binary())
        .arg("--config")
        .arg(&config)
        .args(["subscriptions", "check", "--url", URL])
        .env("CAL_API_KEY", "cal_wrong_key")
        .env("CAL_API_URL", cal.url())
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("Invalid API key"), "{}", text(&wrong));
    assert!(!text(&wrong).contains("cal_wrong_key"));
}

#[tokio::test]
async fn a_secret_manifest_is_printed_only_when_asked() {
    let cal = FakeCal::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let out = run(
        &cal,
        &config,
        &["subscribe", "--url", URL, "--print-secret-manifest"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let manifest = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&manifest).unwrap()[0];
    assert_eq!(doc["kind"].as_str(), Some("Secret"));
    let secret = doc["stringData"]["webhook-secrets"]
        .as_str()
        .unwrap()
        .trim();
    assert_eq!(cal.at(URL)[0]["secret"], secret);
    assert!(!dir.path().join("secrets").exists());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    assert!(String::from_utf8_lossy(&out.stderr).contains("created"));
}

/// The shipped Job (`deploy/kubernetes/subscribe-job.yaml`), its containers run in order with
/// their args and env as the kubelet would expand them, against the shipped ConfigMap and the
/// example Secret mounted where the Job mounts them (under a directory of the test's, the
/// one liberty: no pod here), Cal.com's API on loopback.
#[tokio::test]
async fn the_subscribe_job_runs_as_shipped() {
    use yaml_rust2::{Yaml, YamlLoader};
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let load = |file: &str| {
        YamlLoader::load_from_str(&std::fs::read_to_string(k8s.join(file)).unwrap()).unwrap()
    };
    let job = load("subscribe-job.yaml").remove(0);
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let config_map = load("configmap.yaml").remove(0);
    let secret = load("secret.example.yaml").remove(0);
    let root = tempfile::tempdir().unwrap();
    let at = |path: &str| format!("{}{path}", root.path().display());
    // The volumes, as the Job mounts them.
    let spec = &job["spec"]["template"]["spec"];
    let write_items = |dir: &str, items: &Yaml| {
        std::fs::create_dir_all(at(dir)).unwrap();
        for (k, v) in items.as_hash().unwrap() {
            let text = v.as_str().unwrap().replace("/run/", &at("/run/"));
            std::fs::write(format!("{}/{}", at(dir), k.as_str().unwrap()), text).unwrap();
        }
    };
    write_items("/etc/cal-relay", &config_map["data"]);
    write_items("/run/secrets/cal-relay", &secret["stringData"]);
    std::fs::create_dir_all(at("/run/secrets/cal-api")).unwrap();
    std::fs::write(at("/run/secrets/cal-api/api-key"), format!("{API_KEY}\n")).unwrap();
    let cal = FakeCal::start().await;
    let containers: Vec<&Yaml> = spec["initContainers"]
        .as_vec()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_vec().unwrap())
        .collect();
    let mut relay_url = String::new();
    for container in containers {
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_vec().unwrap() {
            let (name, value) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
            let value = match name {
                "CAL_API_URL" => cal.url(),
                "CAL_RELAY_CONFIG" => at(value),
                _ => value.to_owned(),
            };
            env.push((name.to_owned(), value));
        }
        relay_url = env
            .iter()
            .find(|(k, _)| k == "RELAY_URL")
            .unwrap()
            .1
            .clone();
        let args: Vec<String> = container["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| {
                let mut a = a.as_str().unwrap().to_owned();
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                if a.starts_with("/run/") {
                    a = at(&a);
                }
                a
            })
            .collect();
        let out = tokio::process::Command::new(relay_binary())
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            container["name"].as_str().unwrap(),
            text(&out)
        );
    }
    let hooks = cal.at(&relay_url);
    assert_eq!(hooks.len(), 1);
    let shipped = secret["stringData"]["webhook-secrets"]
        .as_str()
        .unwrap()
        .trim();
    assert_eq!(
        hooks[0]["secret"], shipped,
        "Cal.com signs with the Secret's secret"
    );
    assert_eq!(
        hooks[0]["triggers"].as_array().unwrap().len(),
        28,
        "a `*` route: every trigger"
    );
}

/// A relay (the binary, file sink, the default delivery mode) whose source reads `secrets`.
fn relay_config(secrets: &Path) -> String {
    let sink = "type = \"file\"\npath = \"{dir}/events.jsonl\"";
    support::with_secrets_file(
        &support::one_sink_config("local", sink),
        &secrets.display().to_string(),
    )
}

/// Two relays serve the source; the second one's secrets file is brought up to date two
/// seconds after the first's (a replica whose mounted Secret syncs later). Under a steady
/// stream signed with whatever secret Cal.com holds now, plus delayed re-sends signed with the
/// secret captured before the rotation, `rotate-secret` changes Cal.com only once both relays
/// accept the new secret: no answer is a refusal, each delivery is published once, and after
/// the overlap the old secret is refused and was counted while it was retiring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_load_loses_nothing_and_waits_for_every_relay() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use support::{booking, post, read_lines, Post, RelayProcess, SOURCE_PATH};
    const OLD: &str = "old-secret-before-the-rotation";
    let cal = FakeCal::start().await;
    cal.add(URL, &["BOOKING_CREATED"]);
    cal.edit(URL, "secret", OLD.into());
    let shared = tempfile::tempdir().unwrap();
    let (file_a, file_b) = (shared.path().join("a"), shared.path().join("b"));
    std::fs::write(&file_a, format!("{OLD}\n")).unwrap();
    std::fs::write(&file_b, format!("{OLD}\n")).unwrap();
    let a = RelayProcess::start(&relay_config(&file_a)).await;
    let b = RelayProcess::start(&relay_config(&file_b)).await;
    let command_config = shared.path().join("cal-relay.toml");
    std::fs::write(
        &command_config,
        relay_config(&file_a).replace("{listen}", "127.0.0.1:0"),
    )
    .unwrap();
    // Queued before the rotation, sent during it: signed with the old secret.
    let delayed: Vec<Vec<u8>> = (0..40)
        .map(|n| booking(&format!("delayed-{n}"), n))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, cal_state) = (stop.clone(), cal.state.clone());
        let addrs = [a.addr, b.addr];
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let secret = cal_state.lock().unwrap().hooks[0]["secret"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let uid = format!("stream-{n}");
                let mut posts = vec![(uid.clone(), booking(&uid, n), secret)];
                if let Some(body) = delayed.get(n as usize / 3).filter(|_| n.is_multiple_of(3)) {
                    posts.push((format!("delayed-{}", n / 3), body.clone(), OLD.to_owned()));
                }
                for (uid, body, secret) in posts {
                    let to = addrs[n as usize % 2];
                    let p = Post::signed(SOURCE_PATH, &secret, &body, "application/json");
                    let status = post(to, p).await.map(|(s, _)| s).unwrap_or(0);
                    sent.push((uid, status));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotate = tokio::process::Command::new(relay_binary())
        .arg("--config")
        .arg(&command_config)
        .args([
            "rotate-secret",
            "--url",
            URL,
            "--overlap",
            "8s",
            "--wait",
            "60s",
        ])
        .args(["--relay", &format!("http://{}", a.addr)])
        .args(["--relay", &format!("http://{}", b.addr)])
        .env("CAL_API_KEY", API_KEY)
        .env("CAL_API_URL", cal.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::copy(&file_a, &file_b).unwrap();
    let copied = Instant::now();
    let out = rotate.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let patched = cal.last_patch().expect("Cal.com was patched");
    assert!(
        patched > copied,
        "Cal.com was patched before the second relay had the secret"
    );
    let new = cal.secret_of(URL).unwrap();
    assert_ne!(new, OLD);
    assert!(std::fs::read_to_string(&file_a).unwrap().contains(&new));
    // The second relay's copy is brought up to date again (the old secret now retiring).
    std::fs::copy(&file_a, &file_b).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    let refused: Vec<_> = sent
        .iter()
        .filter(|(_, s)| !(200..300).contains(s))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert!(sent.iter().any(|(u, _)| u.starts_with("delayed")));
    // Each published once, over both relays.
    let mut published = std::collections::BTreeMap::new();
    for relay in [&a, &b] {
        for line in read_lines(&relay.path("events.jsonl")) {
            *published
                .entry(line["key"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    for (uid, _) in &sent {
        assert_eq!(published.get(uid), Some(&1), "{uid}");
    }
    for relay in [&a, &b] {
        let (_, metrics) = support::get(relay.addr, "/metrics").await.unwrap();
        assert!(
            !metrics.contains(&new) && !metrics.contains(OLD),
            "a secret in /metrics"
        );
        let fingerprint = format!(
            "fingerprint=\"{}\"",
            cal_relay_core::fingerprint(new.as_bytes())
        );
        assert!(metrics.contains(&fingerprint), "{metrics}");
        assert!(!relay.log().contains(&new), "a secret in the log");
    }
    // Queued deliveries still arriving signed with the old secret during the overlap: accepted,
    // and counted as the retiring secret's.
    let retiring = "cal_relay_retiring_secret_deliveries_total{source=\"cal\"}";
    for (i, relay) in [&a, &b].into_iter().enumerate() {
        let late = booking(&format!("queued-{i}"), 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while relay.metric(retiring).await < 1.0 {
            assert!(Instant::now() < deadline, "{}", relay.log());
            let p = Post::signed(SOURCE_PATH, OLD, &late, "application/json");
            assert!((200..300).contains(&post(relay.addr, p).await.unwrap().0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Past the overlap, the relays refuse the old secret by themselves.
    while patched.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for relay in [&a, &b] {
        let late = booking("after-the-overlap", 1);
        let p = Post::signed(SOURCE_PATH, OLD, &late, "application/json");
        assert_eq!(post(relay.addr, p).await.unwrap().0, 401);
        let p = Post::signed(SOURCE_PATH, &new, &late, "application/json");
        assert_eq!(post(relay.addr, p).await.unwrap().0, 200);
    }
    // --finish drops the retired secret from the file.
    let finish = run(
        &cal,
        &command_config,
        &["rotate-secret", "--url", URL, "--finish"],
    )
    .await;
    assert!(finish.status.success(), "{}", text(&finish));
    assert_eq!(
        std::fs::read_to_string(&file_a).unwrap(),
        format!("{new}\n")
    );
}
