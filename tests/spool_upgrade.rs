//! An upgrade with a backlog loses nothing: a spool directory written by the release before the
//! spool was split (`tests/fixtures/spool-upgrade`, made with that release's binary as its
//! README says: 20 deliveries pending, 5 dead letters for a sink that was removed, the
//! de-duplication file) is opened by this build, which delivers every pending entry once,
//! still answers a repeat as a duplicate, and replays the dead letters once the sink is back.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-upgrade");

const CONFIG: &str = r#"
[server]
listen = "{listen}"

[delivery]
mode = "spool"
dir = "{dir}/spool"
# The fixture's ids were remembered when it was made: a window that still covers them.
dedup_window_secs = 3153600000

[[sources]]
name = "cal"
path = "/webhooks/cal"
secrets = ["upgrade-secret"]
replay_window_secs = 0

[sinks.main]
type = "file"
path = "{dir}/main.jsonl"

[sinks.gone]
type = "file"
path = "{dir}/gone.jsonl"

[[routes]]
triggers = ["BOOKING_CREATED"]
sinks = ["main"]

[[routes]]
triggers = ["BOOKING_CANCELLED"]
sinks = ["gone"]
"#;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The delivery ids written to `path`, with how often each was.
async fn ids_when(path: &Path, want: usize) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_lines(path).len() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more: a duplicate would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = HashMap::new();
    for line in read_lines(path) {
        let id = line["headers"]["cal-delivery-id"]
            .as_str()
            .unwrap()
            .to_owned();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

fn sent(trigger: &str) -> Vec<String> {
    let sent: Vec<Value> =
        serde_json::from_slice(&std::fs::read(Path::new(FIXTURE).join("sent.json")).unwrap())
            .unwrap();
    sent.iter()
        .filter(|s| s["trigger"] == trigger)
        .map(|s| s["deliveryId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_spool_from_the_previous_release_drains_with_every_entry_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(FIXTURE).join("spool"), &dir.path().join("spool"));
    let relay = RelayProcess::start_in(dir, CONFIG).await;

    let main = ids_when(&relay.path("main.jsonl"), 20).await;
    let created = sent("BOOKING_CREATED");
    assert_eq!(created.len(), 20);
    for id in &created {
        assert_eq!(main.get(id), Some(&1), "{id}: {main:?}");
    }
    assert_eq!(main.len(), 20, "{main:?}");

    // The de-duplication file came along: the first delivery again is a duplicate.
    let body = std::fs::read(Path::new(FIXTURE).join("resend.body")).unwrap();
    let (status, answer) = post(
        relay.addr,
        Post::signed("/webhooks/cal", "upgrade-secret", &body, "application/json"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("duplicate"), "{answer}");

    // The dead letters (their sink was removed when they were written) replay once it is back.
    let out = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["spool", "--dir"])
        .arg(relay.path("spool"))
        .args(["replay", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let gone = ids_when(&relay.path("gone.jsonl"), 5).await;
    let cancelled = sent("BOOKING_CANCELLED");
    for id in &cancelled {
        assert_eq!(gone.get(id), Some(&1), "{id}: {gone:?}");
    }
    assert_eq!(gone.len(), 5, "{gone:?}");
    assert_eq!(read_lines(&relay.path("main.jsonl")).len(), 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.metric("cal_relay_spool_entries").await > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 0.0);
}
