//! The spool under faults, against the real binary and a real nats-server: a delivery of
//! exactly `max_body_bytes` across a restart, a full disk (a 1 MiB tmpfs) and recovery, and a
//! full spool that never lets a delivery overtake its key's waiting ones.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::nats::{stream_messages, NatsServer};
use support::*;

fn nats_config(url: &str, delivery_extra: &str, server_extra: &str) -> String {
    let sink = format!(
        "type = \"nats\"\nurl = \"{url}\"\nack_timeout_ms = 2000\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}"
    );
    one_sink_config("bus", &sink).replace("[server]\n", &format!("[server]\n{server_extra}\n"))
        + &spool_section(&format!(
            "retry_initial_ms = 100\nretry_max_ms = 500\n{delivery_extra}"
        ))
}

/// A signed envelope of exactly `size` bytes.
fn envelope_of(size: usize, uid: &str) -> Vec<u8> {
    let head = format!(
        r#"{{"triggerEvent":"BOOKING_CREATED","createdAt":"2026-01-12T09:30:00.538Z","payload":{{"uid":"{uid}","pad":""#
    );
    let tail = "\"}}";
    let pad = size - head.len() - tail.len();
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), size);
    body
}

async fn wait_drained(relay: &RelayProcess) {
    wait_pending_at_most(relay, 0.0).await;
}

/// Wait until at most `left` entries are pending.
async fn wait_pending_at_most(relay: &RelayProcess, left: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while relay.metric("cal_relay_spool_entries").await > left {
        assert!(
            Instant::now() < deadline,
            "never drained to {left}: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A spooling relay (with `spool_extra`) on `nats` whose stream PINGS keeps one message per
/// subject and discards new ones: of the two PINGs sent here, the second is refused for as
/// long as the test runs. Bookings go to the stream CAL.
async fn with_a_stuck_ping(nats: &NatsServer, spool_extra: &str) -> RelayProcess {
    use async_nats::jetstream::{self, stream};
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: "PINGS".into(),
        subjects: vec!["cal.ping".into()],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..Default::default()
    })
    .await
    .unwrap();
    js.create_stream(stream::Config {
        name: "CAL".into(),
        subjects: vec!["cal.booking.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 1000",
        nats.url()
    );
    let relay =
        RelayProcess::start(&(one_sink_config("bus", &sink) + &spool_section(spool_extra))).await;
    let ping = |n: u32| {
        format!(r#"{{"triggerEvent":"PING","createdAt":"2026-12-01T00:00:00.000Z","payload":{{"n":{n}}}}}"#)
            .into_bytes()
    };
    for n in 0..2 {
        let (status, text) = post(relay.addr, signed_booking(&ping(n))).await.unwrap();
        assert_eq!(status, 202, "{text}");
    }
    relay
}

#[tokio::test]
async fn a_delivery_of_exactly_max_body_bytes_survives_a_restart() {
    let mut nats = NatsServer::start();
    nats.down();
    // Under the spool's 64 MiB frame, far over the default.
    const SIZE: usize = 8 * 1024 * 1024;
    let mut relay = RelayProcess::start(&nats_config(
        &nats.url(),
        "",
        &format!("max_body_bytes = {SIZE}"),
    ))
    .await;
    let body = envelope_of(SIZE, "big");
    let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
    assert_eq!(status, 202, "{text}");
    // kill -9, then the same configuration again. The delivery must still be pending, whole
    // (not cut off as a corrupt tail); NATS refuses payloads over its 1 MiB max_payload, so the
    // bytes are checked in the spool itself.
    relay.restart().await;
    let listed = relay.spool_list();
    let entries: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["state"], "pending");
    assert_eq!(entries[0]["bodyBytes"], SIZE);
    assert_eq!(entries[0]["deliveryId"], sha256_hex(&body));
    drop(nats);

    // A limit whose record would not fit a spool frame is refused by check-config.
    let path = relay.path("too-big.toml");
    std::fs::write(
        &path,
        nats_config("nats://127.0.0.1:1", "", "max_body_bytes = 73400320")
            .replace("{listen}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.max_body_bytes"));
}

/// A tmpfs of `size` mounted on a new directory; unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount (the tests run as root)");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the tests run as root)"
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A 1 MiB tmpfs for the spool and a NATS server that is down.
fn full_disk_setup() -> (SmallDisk, NatsServer) {
    let disk = SmallDisk::mount("1m");
    let mut nats = NatsServer::start();
    nats.down();
    (disk, nats)
}

/// The relay's configuration with its spool on `disk` (the de-duplication ids beside it).
fn full_disk_config(nats: &NatsServer, disk: &SmallDisk) -> String {
    let spool_dir = disk.0.path().join("spool");
    nats_config(
        &nats.url(),
        "max_bytes = 104857600\ndedup_file = \"{dir}/dedup.ids\"",
        "",
    )
    .replace(
        "dir = \"{dir}/spool\"",
        &format!("dir = \"{}\"", spool_dir.display()),
    )
}

#[tokio::test]
async fn a_full_disk_is_503_loses_nothing_and_recovers_by_itself() {
    let (disk, mut nats) = full_disk_setup();
    let relay = RelayProcess::start(&full_disk_config(&nats, &disk)).await;
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..2000u64 {
        let body = booking(&format!("disk-{}", n % 10), n);
        let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
        match status {
            202 => acknowledged.push(sha256_hex(&body)),
            503 => {
                refused = Some(text);
                break;
            }
            other => panic!("{other}: {text}"),
        }
    }
    let refused = refused.expect("the 1 MiB disk never filled");
    assert!(refused.contains("spool_io"), "{refused}");
    assert!(acknowledged.len() > 50, "{}", acknowledged.len());
    // Still serving while the disk is full, and not ready (review finding 11a: ENOSPC marks
    // the spool full as a full log does).
    assert_eq!(get(relay.addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(relay.addr, "/readyz").await.unwrap().0, 503);
    assert_eq!(relay.metric("cal_relay_spool_full").await, 1.0);

    // The broker comes back: the spool drains, frees its segments, and takes deliveries again.
    nats.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 10_000u64;
    loop {
        let body = booking(&format!("after-{n}"), n);
        let (status, _) = post(relay.addr, signed_booking(&body)).await.unwrap();
        if status == 202 {
            acknowledged.push(sha256_hex(&body));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        n += 1;
    }
    wait_drained(&relay).await;
    relay.wait_readyz(200, 30).await;
    let ids: std::collections::HashSet<String> = stream_messages(&nats.url(), "CAL")
        .await
        .iter()
        .filter_map(|m| {
            m.headers
                .as_ref()?
                .get("cal-delivery-id")
                .map(|v| v.to_string())
        })
        .collect();
    let lost = acknowledged.iter().filter(|id| !ids.contains(*id)).count();
    assert_eq!(lost, 0, "acknowledged deliveries lost after ENOSPC");
}

#[tokio::test]
async fn a_full_spool_never_lets_a_delivery_overtake_its_key() {
    let mut nats = NatsServer::start();
    nats.down();
    let relay = RelayProcess::start(&nats_config(&nats.url(), "max_bytes = 262144", "")).await;
    // Fill the spool with one booking's events.
    let mut accepted = 0u64;
    let mut last = None;
    for n in 0..400u64 {
        let (status, text) = post(relay.addr, signed_booking(&booking("one-booking", n)))
            .await
            .unwrap();
        if status != 202 {
            last = Some((status, text));
            break;
        }
        accepted += 1;
    }
    let (status, text) = last.expect("the spool never filled");
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("spool_full") && text.contains("waiting"),
        "{text}"
    );
    // Refused, not published ahead: no publish was even attempted for it.
    assert_eq!(
        relay
            .metric("cal_relay_publish_errors_total{reason=\"disconnected\",sink=\"bus\",trigger=\"BOOKING_CREATED\"}")
            .await,
        0.0
    );
    nats.up();
    wait_drained(&relay).await;
    let seqs: Vec<u64> = stream_messages(&nats.url(), "CAL")
        .await
        .iter()
        .map(|m| booking_seq(&m.payload))
        .collect();
    let expected: Vec<u64> = (0..accepted).collect();
    assert_eq!(seqs, expected, "the key's events in order, none overtaken");
}

#[tokio::test]
async fn an_entry_failing_past_max_age_becomes_a_dead_letter() {
    let mut nats = NatsServer::start();
    nats.down();
    let relay = RelayProcess::start(&nats_config(&nats.url(), "max_age_secs = 2", "")).await;
    let (status, text) = post(relay.addr, signed_booking(&booking("stuck", 1)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay
        .metric("cal_relay_dead_letters_total{reason=\"expired\",sink=\"bus\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "never expired: {}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = relay.spool_list();
    assert!(listed.contains("\"expired\""), "{listed}");
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 0.0);
}

/// SIGTERM while the spool is forwarding: publishes in flight finish and their DONE is written
/// before the relay exits, so the next start sends nothing twice. (RabbitMQ keeps every copy,
/// so a duplicate would show.)
#[tokio::test]
async fn sigterm_during_forwarding_leaves_no_duplicate() {
    use support::amqp;
    let exchange = amqp::unique("x");
    let (conn, ch) = amqp::channel().await;
    let queue = amqp::durable_queue(&ch, &exchange, "cal.#").await;
    drop((conn, ch));
    let sink = format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"",
        amqp::amqp_url()
    );
    let mut relay = RelayProcess::start(
        &(one_sink_config("rabbit", &sink)
            + &spool_section("retry_initial_ms = 50\nretry_max_ms = 200")),
    )
    .await;
    relay.wait_readyz(200, 30).await;
    // A backlog builds while the broker is away; it is forwarded at full speed once it is back,
    // and SIGTERM arrives in the middle of that.
    amqp::broker("rabbit-stop-app");
    let mut sent = std::collections::HashSet::new();
    for n in 0..400u64 {
        let body = booking(&format!("term-{}", n % 64), n);
        sent.insert(sha256_hex(&body));
        assert_eq!(
            post(relay.addr, signed_booking(&body)).await.unwrap().0,
            202
        );
    }
    amqp::broker("rabbit-start-app");
    let (_conn, ch) = amqp::channel().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metric("cal_relay_spool_entries").await >= 400.0 {
        assert!(Instant::now() < deadline, "forwarding never resumed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = relay.terminate();
    assert!(status.success(), "{status}");
    relay.restart().await;
    wait_drained(&relay).await;
    let got = amqp::drain(&ch, &queue, Duration::from_secs(2)).await;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for d in &got {
        *counts
            .entry(amqp::header(d, "cal-delivery-id").unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        counts
            .keys()
            .cloned()
            .collect::<std::collections::HashSet<_>>(),
        sent
    );
    let twice = counts.values().filter(|&&c| c > 1).count();
    assert_eq!(
        twice, 0,
        "{twice} deliveries published twice across SIGTERM and restart"
    );
}

/// One entry a broker refuses transiently for good (here: a stream that takes one message per
/// subject and discards new ones) holds up only its own key: with a single lane, every other
/// delivery is forwarded meanwhile, and the stuck one becomes a dead letter after max_age_secs.
#[tokio::test]
async fn a_stuck_entry_holds_up_only_its_own_key() {
    let nats = NatsServer::start();
    let relay = with_a_stuck_ping(
        &nats,
        "lanes = 1\nmax_age_secs = 8\nretry_initial_ms = 100\nretry_max_ms = 300",
    )
    .await;
    // The second ping is refused by its stream from now on; the bookings behind it in the one
    // lane must not wait for it.
    for n in 0..20u64 {
        let (status, text) = post(relay.addr, signed_booking(&booking(&format!("b-{n}"), n)))
            .await
            .unwrap();
        assert_eq!(status, 202, "{text}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stream_messages(&nats.url(), "CAL").await.len();
        if got == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of 20 bookings forwarded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...while the ping was still stuck: it has not expired yet, so the bookings went past it.
    assert_eq!(
        relay
            .metric("cal_relay_dead_letters_total{reason=\"expired\",sink=\"bus\"}")
            .await,
        0.0,
        "the bookings waited for the stuck entry to expire"
    );
    // The stuck ping expires into a dead letter; nothing is left pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay
        .metric("cal_relay_dead_letters_total{reason=\"expired\",sink=\"bus\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "the stuck entry never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_drained(&relay).await;
    assert_eq!(stream_messages(&nats.url(), "PINGS").await.len(), 1);
}

/// An entry a broker keeps refusing (with a long `max_age_secs`) does not pin the log: the
/// segments behind it are reclaimed by copying it forward (once the head has made no progress
/// for a second), so a 4 MiB spool takes 6 MB of deliveries that flow past it, and a restart
/// finds only the stuck entry still to send.
#[tokio::test]
async fn compaction_reclaims_the_segments_behind_a_stuck_entry() {
    let nats = NatsServer::start();
    let mut relay = with_a_stuck_ping(
        &nats,
        "max_bytes = 4194304\nmax_age_secs = 3600\nretry_initial_ms = 100\nretry_max_ms = 300",
    )
    .await;
    // About 3 KB each in the log: 6 MB in all, more than the spool's max_bytes, at a pace
    // (about 1 MB/s at most) that gives compaction its second.
    let bookings = 2000u64;
    for n in 0..bookings {
        let body = booking(&format!("b-{n}"), n);
        let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
        assert_eq!(status, 202, "booking {n}: {text}");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    wait_pending_at_most(&relay, 1.0).await;
    assert_eq!(
        stream_messages(&nats.url(), "CAL").await.len() as u64,
        bookings
    );
    assert!(relay.metric("cal_relay_spool_compacted_total").await >= 1.0);
    let bytes = relay.metric("cal_relay_spool_bytes").await;
    assert!(
        bytes < 2.0 * 1024.0 * 1024.0,
        "the log still holds {bytes} bytes"
    );
    // A kill and a restart: the stuck entry is still to send, and nothing else is.
    relay.restart().await;
    assert_eq!(
        relay.metric("cal_relay_spool_entries").await,
        1.0,
        "{}",
        relay.log()
    );
    let listed = relay.spool_list();
    assert!(listed.contains("cal.ping"), "{listed}");
    assert_eq!(
        stream_messages(&nats.url(), "CAL").await.len() as u64,
        bookings
    );
}

/// Review finding 1: a spool that filled up behind a stuck entry drains back to ready by
/// itself once the broker returns (compaction and garbage collection also run while the writer
/// is idle, when the full spool refuses every put), and again after a kill -9; at the smallest
/// `max_bytes` check-config accepts.
#[tokio::test]
async fn a_spool_full_behind_a_stuck_entry_comes_back_to_ready() {
    let mut nats = NatsServer::start();
    let mut relay = with_a_stuck_ping(
        &nats,
        "max_bytes = 262144\nmax_age_secs = 3600\nretry_initial_ms = 100\nretry_max_ms = 300",
    )
    .await;
    for round in 0..2 {
        nats.down();
        let mut n = 0u64;
        loop {
            let body = booking(&format!("fill-{round}-{n}"), n);
            let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
            if status == 503 {
                assert!(text.contains("spool_full"), "{text}");
                break;
            }
            assert_eq!(status, 202, "{text}");
            n += 1;
            assert!(n < 2000, "the spool never filled");
        }
        relay.wait_readyz(503, 5).await;
        nats.up();
        wait_pending_at_most(&relay, 1.0).await;
        if round == 1 {
            relay.restart().await;
        }
        relay.wait_readyz(200, 30).await;
        let (status, text) = post(
            relay.addr,
            signed_booking(&booking(&format!("after-{round}"), 0)),
        )
        .await
        .unwrap();
        assert_eq!(status, 202, "spooled again, not published directly: {text}");
    }
}

/// Review finding 4: dead letters handed back with `spool replay --all` are taken one at a
/// time, so 200 of about 900 KB make progress (all published) with the relay, and the CLI,
/// under a 128 MiB memory limit (a cgroup-v1 memory group made by the test, as root); before,
/// the whole inbox was loaded at once and every start was OOM-killed.
#[tokio::test]
async fn replaying_200_large_dead_letters_fits_128_mib() {
    const N: usize = 200;
    let cgroup = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(format!("cal-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).expect("a cgroup-v1 memory group (run as root)");
    std::fs::write(cgroup.join("memory.limit_in_bytes"), "134217728").unwrap();
    let nats = NatsServer::start();
    // No stream yet: every publish is refused permanently (no_stream), one attempt each.
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 2000",
        nats.url()
    );
    let config = one_sink_config("bus", &sink)
        .replace("[server]\n", "[server]\nmax_body_bytes = 1048576\n")
        + &spool_section("max_attempts = 1\nmax_bytes = 1073741824");
    let mut relay = RelayProcess::start(&config).await;
    for n in 0..N {
        let body = envelope_of(900 * 1024, &format!("dead-{n}"));
        let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
        assert_eq!(status, 202, "{text}");
    }
    let series = "cal_relay_dead_letters_total{reason=\"no_stream\",sink=\"bus\"}";
    let deadline = Instant::now() + Duration::from_secs(120);
    while relay.metric(series).await < N as f64 {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.terminate();
    let spool = relay.path("spool");
    // The CLI and the relay in the memory group.
    let in_group = |args: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} {args}",
                cgroup.display(),
                relay_binary().display()
            ))
            .output()
            .unwrap()
    };
    let out = in_group(&format!("spool --dir {} replay --all", spool.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_group(&format!("spool --dir {} stats", spool.display()));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("inbox (replays not yet taken): {N}")));

    use async_nats::jetstream::{self, stream};
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: "CAL".into(),
        subjects: vec!["cal.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} serve --config {}",
            cgroup.display(),
            relay_binary().display(),
            relay.config_path.display()
        ))
        .current_dir(relay.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the relay ended ({status}): OOM-killed under 128 MiB?");
        }
        if stream_messages(&nats.url(), "CAL").await.len() >= N {
            break;
        }
        assert!(Instant::now() < deadline, "the replay made no progress");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cgroup);
}

/// Review finding 10: one flipped byte in an acknowledged entry of a cleanly closed segment
/// loses that entry only (counted in cal_relay_spool_corrupt_records_total), not the 297 after
/// it.
#[tokio::test]
async fn a_flipped_byte_in_a_closed_segment_loses_only_that_entry() {
    let mut nats = NatsServer::start();
    nats.down();
    let mut relay = RelayProcess::start(&nats_config(&nats.url(), "", "")).await;
    let marker = "flip-me-here";
    for n in 0..300u64 {
        let uid = if n == 2 {
            marker.to_owned()
        } else {
            format!("closed-{n}")
        };
        let (status, text) = post(relay.addr, signed_booking(&booking(&uid, n)))
            .await
            .unwrap();
        assert_eq!(status, 202, "{text}");
    }
    // A restart closes the segment the entries are in (a new one is started), then the relay
    // is killed.
    relay.restart().await;
    let _ = relay.child.kill();
    let _ = relay.child.wait();
    // The segment holding the entries; one byte of the third entry's body flipped.
    let segment = std::fs::read_dir(relay.path("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the marked entry in the segment");
    bytes[at] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    relay.restart().await;
    assert_eq!(
        relay.metric("cal_relay_spool_corrupt_records_total").await,
        1.0
    );
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 299.0);
    nats.up();
    wait_drained(&relay).await;
    assert_eq!(stream_messages(&nats.url(), "CAL").await.len(), 299);
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Review finding 2: 10,000 pending deliveries of 20 KB on distinct keys, the sink refusing
/// every publish (a file sink on /dev/full), stay under 64 MB of RSS, and again within 5 s of
/// a restart on that backlog: a parked key's head is read back at its turn, not held (252 MB
/// before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_distinct_keys_does_not_follow_its_bytes_into_memory() {
    const N: usize = 10_000;
    let config = one_sink_config("refusing", "type = \"file\"\npath = \"/dev/full\"")
        .replace("[server]\n", "[server]\nmax_in_flight = 64\n")
        + &spool_section("max_bytes = 536870912\nretry_initial_ms = 5000\nretry_max_ms = 10000");
    let mut relay = RelayProcess::start(&config).await;
    let limit = 64 * 1024 * 1024;
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|n| envelope_of(20 * 1024, &format!("distinct-{n}")))
        .collect();
    for chunk in bodies.chunks(32) {
        let sends = chunk
            .iter()
            .map(|body| async move { post(relay.addr, signed_booking(body)).await });
        for answer in futures_util::future::join_all(sends).await {
            let (status, text) = answer.unwrap();
            assert_eq!(status, 202, "{text}");
        }
    }
    assert_eq!(relay.metric("cal_relay_spool_entries").await, N as f64);
    // Every key has failed at least once by now, and is parked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss(relay.child.id());
    assert!(before < limit, "{} MB with the backlog", before >> 20);
    relay.restart().await;
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(5) {
        peak = peak.max(rss(relay.child.id()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak < limit, "{} MB after the restart", peak >> 20);
    eprintln!(
        "RSS with {N} parked keys: {} MB; peak within 5 s of a restart: {} MB",
        before >> 20,
        peak >> 20
    );
    assert_eq!(relay.metric("cal_relay_spool_entries").await, N as f64);
}

/// A relay on `nats` without a stream for its subjects: every publish is refused permanently
/// (`no_stream`) while the server is up.
async fn relay_without_a_stream(nats: &NatsServer, delivery_extra: &str) -> RelayProcess {
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 1000",
        nats.url()
    );
    RelayProcess::start(
        &(one_sink_config("bus", &sink)
            + &spool_section(&format!(
                "retry_initial_ms = 100\nretry_max_ms = 200\n{delivery_extra}"
            ))),
    )
    .await
}

async fn wait_metric(relay: &RelayProcess, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.metric(series).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Review finding 9: a dead letter that cannot be stored (its directory read-only) leaves the
/// entry pending and tried again, so once the directory is writable it becomes a dead letter
/// without a restart.
#[tokio::test]
async fn a_dead_letter_that_cannot_be_stored_is_stored_later() {
    let nats = NatsServer::start();
    let relay = relay_without_a_stream(&nats, "max_attempts = 1").await;
    let dead = relay.path("spool").join("dead");
    std::fs::create_dir_all(&dead).unwrap();
    let mount = |opts: &str| {
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&dead)
            .status()
            .unwrap()
            .success());
    };
    mount("ro,size=1m");
    let (status, text) = post(relay.addr, signed_booking(&booking("unburied", 1)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    wait_metric(
        &relay,
        "cal_relay_spool_retries_total{reason=\"dead_letter_store\",sink=\"bus\"}",
        2.0,
    )
    .await;
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 1.0);
    assert!(Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(&dead)
        .status()
        .unwrap()
        .success());
    wait_metric(
        &relay,
        "cal_relay_dead_letters_total{reason=\"no_stream\",sink=\"bus\"}",
        1.0,
    )
    .await;
    wait_pending_at_most(&relay, 0.0).await;
    let _ = Command::new("umount").arg("-l").arg(&dead).status();
}

/// Review finding 17: `max_attempts` counts permanent refusals only: after an outage (many
/// transient failures), the entry is still refused `max_attempts` times before it becomes a
/// dead letter.
#[tokio::test]
async fn max_attempts_counts_refusals_not_transient_failures() {
    let mut nats = NatsServer::start();
    let relay = relay_without_a_stream(&nats, "max_attempts = 3").await;
    nats.down();
    let (status, text) = post(relay.addr, signed_booking(&booking("after-outage", 1)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    // Six transient failures (the server is down).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = get(relay.addr, "/metrics").await.unwrap();
        let failures: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("cal_relay_spool_retries_total{") && l.contains("sink=\"bus\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if failures >= 6.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no transient failures: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.up();
    let dead = "cal_relay_dead_letters_total{reason=\"no_stream\",sink=\"bus\"}";
    wait_metric(&relay, dead, 1.0).await;
    let refused = relay
        .metric("cal_relay_publish_errors_total{reason=\"no_stream\",sink=\"bus\",trigger=\"BOOKING_CREATED\"}")
        .await;
    assert_eq!(refused, 3.0, "dead-lettered after {refused} refusal(s)");
}

/// Review finding 16: a dead letter replayed after its sink was removed from the configuration
/// goes back to the dead letters (unknown_sink) instead of staying pending until a restart.
#[tokio::test]
async fn a_replayed_dead_letter_for_a_removed_sink_is_a_dead_letter_again() {
    let nats = NatsServer::start();
    let sink = format!(
        "type = \"nats\"\nurl = \"{}\"\nack_timeout_ms = 1000",
        nats.url()
    );
    let mut relay =
        RelayProcess::start(&(one_sink_config("gone", &sink) + &spool_section("max_attempts = 1")))
            .await;
    let (status, text) = post(relay.addr, signed_booking(&booking("orphan", 1)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    wait_metric(
        &relay,
        "cal_relay_dead_letters_total{reason=\"no_stream\",sink=\"gone\"}",
        1.0,
    )
    .await;
    // The sink is removed, the relay restarted on the new configuration, the dead letter
    // replayed.
    let config = one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
        + &spool_section("");
    std::fs::write(
        &relay.config_path,
        config
            .replace("{listen}", &relay.addr.to_string())
            .replace("{dir}", &relay.dir.path().display().to_string()),
    )
    .unwrap();
    relay.restart().await;
    let out = Command::new(relay_binary())
        .args(["spool", "--dir"])
        .arg(relay.path("spool"))
        .args(["replay", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_metric(
        &relay,
        "cal_relay_dead_letters_total{reason=\"unknown_sink\",sink=\"gone\"}",
        1.0,
    )
    .await;
    assert_eq!(relay.metric("cal_relay_spool_entries").await, 0.0);
    let listed = relay.spool_list();
    assert!(
        listed.contains("\"dead\"") && listed.contains("unknown_sink"),
        "{listed}"
    );
}

/// Review finding 3: with a backlog on a full disk the relay still starts (it writes on in its
/// last segment when it cannot start a new one, and forwards nothing before it can record
/// that), drains once the broker is back, and publishes each acknowledged delivery once.
#[tokio::test]
async fn the_relay_starts_and_drains_on_a_full_disk() {
    let (disk, mut nats) = full_disk_setup();
    let mut relay = RelayProcess::start(&full_disk_config(&nats, &disk)).await;
    let mut acknowledged = Vec::new();
    for n in 0..2000u64 {
        let body = booking(&format!("full-start-{}", n % 10), n);
        let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
        match status {
            202 => acknowledged.push(sha256_hex(&body)),
            503 => break,
            other => panic!("{other}: {text}"),
        }
    }
    assert!(acknowledged.len() > 50, "{}", acknowledged.len());
    // kill -9 and start again on the full disk, twice (each start used to fail, and publish).
    relay.restart().await;
    relay.restart().await;
    nats.up();
    wait_drained(&relay).await;
    let ids: Vec<String> = stream_messages(&nats.url(), "CAL")
        .await
        .iter()
        .filter_map(|m| Some(m.headers.as_ref()?.get("cal-delivery-id")?.to_string()))
        .collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "published twice");
    let lost = acknowledged
        .iter()
        .filter(|id| !distinct.contains(id))
        .count();
    assert_eq!(lost, 0);
    assert_eq!(ids.len(), acknowledged.len());
}
