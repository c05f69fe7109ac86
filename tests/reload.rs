//! Configuration reload on SIGHUP, against the real binary and a real nats-server, in confirm
//! mode under a steady load of signed deliveries: a secret rotated (old and new accepted
//! during the overlap, then only the new) and a route moved to another subject, with no
//! failed request; deliveries after the reload go to the new subject; an invalid file changes
//! nothing and counts `result="error"`; a sink added by reload (a file sink removed) takes the
//! deliveries once it is ready.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::nats::{stream_messages, NatsServer};
use support::*;

const OLD: &str = "old-secret-0123456789";
const NEW: &str = "new-secret-9876543210";

fn config(nats: &str, secrets: &[&str], destination: Option<&str>) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    let destination = destination
        .map(|d| format!("destination = {d:?}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = "{{listen}}"

[[sources]]
name = "cal"
path = "{SOURCE_PATH}"
secrets = [{}]
replay_window_secs = 0

[sinks.bus]
type = "nats"
url = "{nats}"
stream = {{ name = "CAL", subjects = ["cal.>", "moved.>"] }}

[[routes]]
triggers = ["BOOKING_CREATED"]
sinks = ["bus"]
{destination}

[[routes]]
triggers = ["*"]
sinks = ["bus"]
"#,
        secrets.join(", ")
    )
}

fn hangup(relay: &RelayProcess) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_reloads(relay: &RelayProcess, result: &str, n: f64) {
    let series = format!("cal_relay_config_reloads_total{{result=\"{result}\"}}");
    // A sink that never becomes ready is given 10 s before its reload is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.metric(&series).await < n {
        assert!(
            Instant::now() < deadline,
            "no reload ({result}): {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `hash` label of the one `cal_relay_config_info` series at 1.
async fn config_hash(relay: &RelayProcess) -> String {
    let (_, text) = get(relay.addr, "/metrics").await.unwrap();
    let hashes: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" 1"))
        .filter_map(|l| l.strip_prefix("cal_relay_config_info{hash=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert_eq!(hashes.len(), 1, "{text}");
    hashes[0].to_owned()
}

fn write_config(relay: &RelayProcess, text: &str) {
    let text = text
        .replace("{listen}", &relay.addr.to_string())
        .replace("{dir}", &relay.dir.path().display().to_string());
    std::fs::write(&relay.config_path, text).unwrap();
}

async fn send(relay: &RelayProcess, secret: &str, uid: &str) -> u16 {
    let body = booking(uid, 1);
    post(
        relay.addr,
        Post::signed(SOURCE_PATH, secret, &body, "application/json"),
    )
    .await
    .map(|(s, _)| s)
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_secret_and_moves_a_route_without_a_failed_request() {
    let nats = NatsServer::start();
    let relay = Arc::new(RelayProcess::start(&config(&nats.url(), &[OLD], None)).await);
    let hash_before = config_hash(&relay).await;

    // Steady load: one delivery after another, signed with the secret of the phase; the phase
    // is in the uid, so where each message landed can be checked.
    let phase = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (relay, phase, stop) = (relay.clone(), phase.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let p = phase.load(Ordering::Relaxed);
                let secret = if p <= 2 { OLD } else { NEW };
                let status = send(&relay, secret, &format!("load-{p}-{i}")).await;
                if status != 200 {
                    failed.push((p, i, status));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (i, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reload 1: both secrets, BOOKING_CREATED moved to moved.booking.created.
    phase.store(2, Ordering::Relaxed); // in flight across the reload: either subject
    write_config(
        &relay,
        &config(&nats.url(), &[OLD, NEW], Some("moved.booking.created")),
    );
    hangup(&relay);
    wait_reloads(&relay, "ok", 1.0).await;
    phase.store(3, Ordering::Relaxed); // signed with NEW, after the reload
    assert_ne!(
        config_hash(&relay).await,
        hash_before,
        "cal_relay_config_info follows"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        send(&relay, OLD, "overlap-old").await,
        200,
        "old accepted during the overlap"
    );

    // Reload 2: only the new secret.
    write_config(
        &relay,
        &config(&nats.url(), &[NEW], Some("moved.booking.created")),
    );
    hangup(&relay);
    wait_reloads(&relay, "ok", 2.0).await;
    assert_eq!(
        send(&relay, OLD, "after-old").await,
        401,
        "old refused after the overlap"
    );

    // An invalid file: refused as a whole, the running configuration stays.
    std::fs::write(&relay.config_path, "[server]\nlisten = 5\n").unwrap();
    hangup(&relay);
    wait_reloads(&relay, "error", 1.0).await;
    assert_eq!(
        relay
            .metric("cal_relay_config_reloads_total{result=\"ok\"}")
            .await,
        2.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(sent > 50, "a steady load: {sent}");
    assert!(
        failed.is_empty(),
        "failed requests across the reloads: {failed:?}"
    );
    assert_eq!(send(&relay, NEW, "after-invalid").await, 200);

    let messages = stream_messages(&nats.url(), "CAL").await;
    let mut by_phase = std::collections::HashMap::<String, Vec<String>>::new();
    for m in &messages {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let uid = v["payload"]["uid"].as_str().unwrap().to_owned();
        let tag = uid.split('-').take(2).collect::<Vec<_>>().join("-");
        by_phase.entry(tag).or_default().push(m.subject.to_string());
    }
    let subjects = |tag: &str| by_phase.get(tag).cloned().unwrap_or_default();
    assert!(!subjects("load-1").is_empty());
    assert!(subjects("load-1")
        .iter()
        .all(|s| s == "cal.booking.created"));
    assert!(!subjects("load-3").is_empty());
    assert!(
        subjects("load-3")
            .iter()
            .all(|s| s == "moved.booking.created"),
        "after the reload: {:?}",
        subjects("load-3")
    );
    assert_eq!(subjects("overlap-old"), ["moved.booking.created"]);
    assert_eq!(subjects("after-invalid"), ["moved.booking.created"]);
    assert!(subjects("after-old").is_empty());
    assert_eq!(messages.len(), sent + 2, "every accepted delivery once");
}

#[tokio::test]
async fn watch_config_reloads_when_the_file_changes() {
    let nats = NatsServer::start();
    let relay =
        RelayProcess::start_with_args(&config(&nats.url(), &[OLD], None), &["--watch-config"])
            .await;
    assert_eq!(send(&relay, NEW, "before").await, 401);
    // What a ConfigMap update does to the mounted file: it changes, no signal is sent.
    write_config(&relay, &config(&nats.url(), &[NEW], None));
    wait_reloads(&relay, "ok", 1.0).await;
    assert_eq!(send(&relay, NEW, "after").await, 200);
    assert_eq!(send(&relay, OLD, "old").await, 401);
    // An unchanged file is not reloaded again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        relay
            .metric("cal_relay_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
}

/// In confirm mode a reload may change the sinks: a NATS sink added (connected and ready before
/// any route uses it) takes over from a file sink that is removed (closed once its deliveries
/// finish), under a steady load, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_by_reload_takes_messages_once_ready() {
    let nats = NatsServer::start();
    let file = one_sink_config("log", "type = \"file\"\npath = \"{dir}/events.jsonl\"");
    let bus = one_sink_config(
        "bus",
        &format!(
            "type = \"nats\"\nurl = \"{}\"\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}",
            nats.url()
        ),
    );
    let secret = fixture_secret();
    let relay = Arc::new(RelayProcess::start(&file).await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (relay, stop, secret) = (relay.clone(), stop.clone(), secret.clone());
        tokio::spawn(async move {
            let (mut i, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let status = send(&relay, &secret, &format!("load-{i}")).await;
                if status != 200 {
                    failed.push((i, status));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (i, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The bus sink replaces the file sink, and every route moves to it.
    write_config(&relay, &bus);
    hangup(&relay);
    wait_reloads(&relay, "ok", 1.0).await;
    assert_eq!(
        relay.metric("cal_relay_sink_ready{sink=\"bus\"}").await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "failed requests across the reload: {failed:?}"
    );
    assert_eq!(send(&relay, &secret, "after").await, 200);
    let in_file = read_lines(&relay.path("events.jsonl")).len();
    let on_bus = stream_messages(&nats.url(), "CAL").await;
    assert!(in_file > 0, "deliveries before the reload went to the file");
    assert!(
        on_bus
            .iter()
            .any(|m| m.payload.windows(5).any(|w| w == b"after")),
        "the delivery after the reload is on the bus"
    );
    assert_eq!(
        in_file + on_bus.len(),
        sent + 1,
        "every delivery exactly once"
    );
    // A sink that does not become ready refuses the whole reload; the bus stays.
    let dead = bus.replace(&nats.url(), "nats://127.0.0.1:9");
    write_config(&relay, &dead);
    hangup(&relay);
    wait_reloads(&relay, "error", 1.0).await;
    assert_eq!(send(&relay, &secret, "still").await, 200);
}

/// What a mounted Kubernetes Secret does when the Secret is updated (its file changes, no signal
/// is sent), and what `subscribe` does when it adds a secret: the source's secrets file is read
/// again, without `--watch-config`.
#[tokio::test]
async fn a_secrets_file_that_changes_is_read_again_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{OLD}\n")).unwrap();
    let config = with_secrets_file(
        &one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\""),
        "{dir}/secrets",
    );
    let relay = RelayProcess::start_in(dir, &config).await;
    assert_eq!(send(&relay, NEW, "before").await, 401);
    std::fs::write(&secrets, format!("{OLD}\n{NEW}\n")).unwrap();
    wait_reloads(&relay, "ok", 1.0).await;
    assert_eq!(send(&relay, NEW, "new").await, 200);
    assert_eq!(send(&relay, OLD, "old").await, 200);
    std::fs::write(&secrets, format!("{NEW}\n")).unwrap();
    wait_reloads(&relay, "ok", 2.0).await;
    assert_eq!(send(&relay, OLD, "retired").await, 401);
    assert_eq!(send(&relay, NEW, "still").await, 200);
}
