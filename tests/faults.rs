//! The reliability review's findings that concern configuration and the process, each against
//! the binary (the numbers are the review's): a route naming a sink twice (7), a reload that
//! would widen a replay window past the running de-duplication window (8), a SIGHUP during
//! start-up (13), limits above what the runtime takes (14), concurrent copies of one delivery
//! (6).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::*;

fn file_sink() -> String {
    one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
}

fn lines(relay: &RelayProcess) -> Vec<serde_json::Value> {
    read_lines(&relay.path("events.jsonl"))
}

async fn wait_lines(relay: &RelayProcess, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(relay).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finding 7: `sinks = ["local", "local"]` is one target, in both modes.
#[tokio::test]
async fn a_route_naming_a_sink_twice_publishes_once() {
    for spool in [false, true] {
        let mut config =
            file_sink().replace("sinks = [\"local\"]", "sinks = [\"local\", \"local\"]");
        if spool {
            config += &spool_section("");
        }
        let relay = RelayProcess::start(&config).await;
        for n in 0..10 {
            let (status, body) = post(
                relay.addr,
                signed_booking(&booking(&format!("twice-{n}"), n)),
            )
            .await
            .unwrap();
            assert!(status == 200 || status == 202, "{body}");
        }
        wait_lines(&relay, 10).await;
        // Anything more would have been forwarded by now as well.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lines(&relay).len(), 10, "spool mode: {spool}");
    }
}

/// Finding 6: de-duplication claims the id before appending or publishing, so 20 deliveries
/// each sent 8 times at once are published 20 times, in both modes, and every copy is answered
/// 2xx (the first's outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_delivery_are_published_once() {
    for spool in [false, true] {
        let mut config = file_sink();
        if spool {
            config += &spool_section("");
        }
        let relay = RelayProcess::start(&config).await;
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|n| booking(&format!("copies-{n}"), n))
            .collect();
        let sends = bodies.iter().flat_map(|body| {
            (0..8).map(move |_| async move { post(relay.addr, signed_booking(body)).await })
        });
        let answers = futures_util::future::join_all(sends).await;
        for answer in answers {
            let (status, text) = answer.unwrap();
            assert!(status == 200 || status == 202, "{text}");
        }
        wait_lines(&relay, 20).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lines(&relay).len(), 20, "spool mode: {spool}");
    }
}

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cal-relay.toml");
    std::fs::write(
        &path,
        text.replace("{listen}", "127.0.0.1:0")
            .replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = Command::new(relay_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Finding 14: limits a semaphore cannot hold are refused by check-config (serve panicked).
#[test]
fn limits_above_what_the_runtime_takes_are_refused() {
    for key in ["max_connections", "max_in_flight"] {
        let text = file_sink().replace(
            "[server]\n",
            &format!("[server]\n{key} = 9223372036854775807\n"),
        );
        let (ok, err) = check_config(&text);
        assert!(!ok, "{key} accepted");
        assert!(err.contains(key), "{err}");
    }
}

/// Finding 8: a reload may not widen a replay window past the running de-duplication window
/// (`[delivery]` needs a restart): the file is refused whole, and a replay stays refused.
#[tokio::test]
async fn a_reload_cannot_widen_the_replay_window_past_the_running_dedup_window() {
    let with_windows = |secs: u64| {
        file_sink().replace(
            "replay_window_secs = 0",
            &format!("replay_window_secs = {secs}\nscheduled_allowance_secs = 0"),
        ) + &format!("\n[delivery]\ndedup_window_secs = {secs}\n")
    };
    let relay = RelayProcess::start(&with_windows(2)).await;
    std::fs::write(
        &relay.config_path,
        with_windows(30)
            .replace("{listen}", &relay.addr.to_string())
            .replace("{dir}", &relay.dir.path().display().to_string()),
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let series = "cal_relay_config_reloads_total{result=\"error\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.metric(series).await < 1.0 {
        assert!(Instant::now() < deadline, "not refused: {}", relay.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A delivery, then the same bytes once the running 2 s windows have passed.
    let mut v: serde_json::Value = serde_json::from_slice(&booking("widened", 1)).unwrap();
    v["createdAt"] = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .into();
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        post(relay.addr, signed_booking(&body)).await.unwrap().0,
        200
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, answer) = post(relay.addr, signed_booking(&body)).await.unwrap();
    assert_eq!(status, 401, "{answer}");
    assert_eq!(lines(&relay).len(), 1, "published once");
}

/// Finding 13: a SIGHUP at any moment of start-up (from the first instruction of `main`: a
/// signal that arrives while the loader still runs is before the program exists) does not kill
/// the relay.
#[tokio::test]
async fn a_sighup_during_start_up_does_not_kill_the_relay() {
    for delay_ms in [10u64, 30, 100, 300] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config_path = dir.path().join("cal-relay.toml");
        std::fs::write(
            &config_path,
            (file_sink() + &spool_section(""))
                .replace("{listen}", &format!("127.0.0.1:{port}"))
                .replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let mut child = Command::new(relay_binary())
            .current_dir(dir.path())
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // Not before the program exists: on a loaded machine the loader alone can take longer
        // than the delay, and a SIGHUP then is the loader's, not the relay's. `main` ignores
        // SIGHUP first thing, so the signal goes once /proc says it is ignored.
        let ignored = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                    u64::from_str_radix(mask.trim(), 16).ok()
                })
                .is_some_and(|mask| mask & 1 != 0)
        };
        let loaded = Instant::now() + Duration::from_secs(10);
        while !ignored(child.id()) && Instant::now() < loaded {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("SIGHUP {delay_ms} ms after exec ended the relay: {status}");
            }
            if let Ok((200, _)) = get(addr, "/healthz").await {
                break;
            }
            assert!(Instant::now() < deadline, "never healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
