//! The endpoint on the open internet: hostile clients. Each case checks the status or what
//! happened to the connection, that nothing reached the sink, and that a valid delivery still
//! gets its 2xx right after. What only a socket can show (slow and malformed heads and bodies,
//! connection floods, bytes no HTTP library would send, restarts) runs against the real
//! binary; the rest runs in process, against the handler `serve` assembles.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::in_process::InProcess;
use support::*;

/// Limits small enough to reach in a test.
fn config() -> String {
    one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"").replace(
        "[server]\n",
        "[server]\nmax_body_bytes = 65536\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 1500\nmax_connections = 200\nmax_in_flight = 4\nmax_header_bytes = 16384\nmax_headers = 64\n",
    )
}

/// A distinct valid delivery.
fn valid(n: u64) -> Vec<u8> {
    booking(&format!("hostile-{n}"), n)
}

/// A whole HTTP/1.1 request for `body` signed with `signature` (the right one when `None`).
fn request(body: &[u8], signature: Option<&str>, extra: &str) -> Vec<u8> {
    let sig = signature
        .map(str::to_owned)
        .unwrap_or_else(|| cal_relay_core::sign(fixture_secret().as_bytes(), body));
    let mut r = format!(
        "POST {SOURCE_PATH} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nX-Cal-Signature-256: {sig}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Everything the server sends until it closes the connection (or 20 s pass).
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of the first response in `text` (0 if none).
fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One request on its own connection, `Connection: close`; status and whole answer.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let text = read_to_close(&mut s);
    (status_of(&text), text)
}

/// Lines the sink wrote.
fn sink_lines(relay: &RelayProcess) -> usize {
    read_lines(&relay.path("events.jsonl")).len()
}

/// A valid delivery is accepted now; the sink then holds `before + 1` lines.
async fn still_serves(relay: &RelayProcess, n: u64, before: usize) {
    let (status, body) = post(relay.addr, signed_booking(&valid(n))).await.unwrap();
    assert_eq!(status, 200, "a valid delivery after the attack: {body}");
    assert_eq!(
        sink_lines(relay),
        before + 1,
        "only the valid delivery reached the sink"
    );
}

/// Wait until `series` reads `want` on /metrics.
async fn wait_metric(relay: &RelayProcess, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = relay.metric(series).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_heads_and_trickled_bodies_are_cut_off() {
    let relay = RelayProcess::start(&config()).await;
    // Slowloris: a head that never ends is closed without an answer.
    let mut s = connect(relay.addr);
    s.write_all(b"POST /webhooks/cal HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(b"X-A: b\r\n");
    }
    let text = read_to_close(&mut s);
    assert!(status_of(&text) == 0 || status_of(&text) == 408, "{text}");
    // A body trickled slower than body_read_timeout: 408.
    let body = valid(1);
    let full = request(&body, None, "");
    let head_len = full.len() - body.len();
    let mut s = connect(relay.addr);
    s.write_all(&full[..head_len + 10]).unwrap();
    let started = Instant::now();
    let mut text = String::new();
    for chunk in full[head_len + 10..].chunks(10) {
        if s.write_all(chunk).is_err() || started.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    text.push_str(&read_to_close(&mut s));
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    wait_metric(&relay, "cal_relay_requests_in_flight", 0.0).await;
    still_serves(&relay, 2, 0).await;
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_lock_out_a_sender() {
    let relay = RelayProcess::start(&config()).await;
    let idle: Vec<TcpStream> = (0..2000).map(|_| connect(relay.addr)).collect();
    // The relay holds at most max_connections of them; the rest wait in the backlog, and idle
    // ones are closed after header_read_timeout, so a sender gets through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.metric("cal_relay_connections").await <= 201.0);
    still_serves(&relay, 3, 0).await;
    drop(idle);
    // Only the scrape's own connection is left.
    wait_metric(&relay, "cal_relay_connections", 1.0).await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_framing_attacks_400() {
    let relay = RelayProcess::start(&config()).await;
    let body = valid(4);
    // A header beyond max_header_bytes.
    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let (status, text) = send_raw(relay.addr, &request(&body, None, &big));
    assert_eq!(status, 431, "{text}");
    // More headers than max_headers.
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, text) = send_raw(relay.addr, &request(&body, None, &many));
    assert_eq!(status, 431, "{text}");
    // A request line beyond the limit.
    let line = format!(
        "POST /webhooks/cal?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "q".repeat(20_000)
    );
    let (status, text) = send_raw(relay.addr, line.as_bytes());
    assert!(matches!(status, 414 | 431), "{text}");

    let sig = cal_relay_core::sign(fixture_secret().as_bytes(), &body);
    let framed = |headers: &str, payload: &[u8]| {
        let mut r = format!(
            "POST /webhooks/cal HTTP/1.1\r\nHost: x\r\nX-Cal-Signature-256: {sig}\r\n{headers}\r\n"
        )
        .into_bytes();
        r.extend_from_slice(payload);
        r
    };
    // Content-Length together with Transfer-Encoding: hyper frames by Transfer-Encoding alone
    // and closes the connection after answering (RFC 9112 6.3), so a request smuggled behind
    // the body is never read. The chunked body here is not the signed one: 401.
    let mut other = body.clone();
    other[10] ^= 1;
    let mut chunked = format!("{:x}\r\n", other.len()).into_bytes();
    chunked.extend_from_slice(&other);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    chunked.extend_from_slice(&request(&valid(44), None, ""));
    let cl = format!("Content-Length: {}\r\n", body.len());
    let (status, text) = send_raw(
        relay.addr,
        &framed(&format!("{cl}Transfer-Encoding: chunked\r\n"), &chunked),
    );
    assert!(matches!(status, 400 | 401), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "smuggled request answered: {text}"
    );
    // Two different Content-Lengths, broken chunk sizes: 400 or the connection closed.
    for (headers, payload) in [
        (
            format!("{cl}Content-Length: {}\r\n", body.len() + 1),
            &body[..],
        ),
        (
            "Transfer-Encoding: chunked\r\n".into(),
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
        ),
        (
            "Transfer-Encoding: chunked\r\n".into(),
            &b"ffffffffffffffffff\r\nabc"[..],
        ),
    ] {
        let (status, text) = send_raw(relay.addr, &framed(&headers, payload));
        assert!(
            status == 400 || status == 0,
            "{headers:?} answered {status}: {text}"
        );
    }
    wait_metric(&relay, "cal_relay_requests_in_flight", 0.0).await;
    still_serves(&relay, 5, 0).await;
}

#[tokio::test]
async fn absurd_lengths_and_expect_continue_are_413_without_the_body() {
    let relay = RelayProcess::start(&config()).await;
    let head = "POST /webhooks/cal HTTP/1.1\r\nHost: x\r\nX-Cal-Signature-256: 00\r\nContent-Length: 1000000000000000\r\n\r\n";
    let (status, text) = send_raw(relay.addr, head.as_bytes());
    assert_eq!(status, 413, "{text}");
    // Above the limit with Expect: 100-continue: 413 straight away, never "100 Continue".
    let mut s = connect(relay.addr);
    s.write_all(b"POST /webhooks/cal HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(status_of(&text), 413, "{text}");
    still_serves(&relay, 6, 0).await;
}

#[tokio::test]
async fn a_long_pipeline_of_valid_deliveries_is_answered_in_order() {
    let relay = RelayProcess::start(&config()).await;
    let mut all = Vec::new();
    for n in 0..50 {
        all.extend_from_slice(&request(&valid(100 + n), None, ""));
    }
    all.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = connect(relay.addr);
    s.write_all(&all).unwrap();
    let text = read_to_close(&mut s);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses.len(), 51, "{text}");
    assert!(statuses.iter().all(|s| *s == "200"), "{statuses:?}");
    assert_eq!(sink_lines(&relay), 50);
}

#[tokio::test]
async fn bad_signature_headers_are_401() {
    let relay = RelayProcess::start(&config()).await;
    let body = valid(7);
    let good = cal_relay_core::sign(fixture_secret().as_bytes(), &body);
    let mut cases: Vec<Vec<u8>> = vec![
        request(&body, Some(&good[..62]), ""),
        request(&body, Some(&format!("{good}00")), ""),
        request(&body, Some(&"0".repeat(64)), ""),
        request(&body, None, &format!("X-Cal-Signature-256: {good}\r\n")),
    ];
    // Control bytes and non-UTF-8 in the value.
    for bad in [&b"ab\x01cd"[..], b"\xff\xfe\xfd", b"sha256=\x7f"] {
        let mut r = request(&body, Some("PLACEHOLDER"), "");
        let at = r.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
        r.splice(at..at + 11, bad.iter().copied());
        cases.push(r);
    }
    for r in cases {
        let (status, text) = send_raw(relay.addr, &r);
        assert!(
            matches!(status, 401 | 400),
            "{}: {text}",
            String::from_utf8_lossy(&r[..120])
        );
    }
    assert!(
        relay
            .metric("cal_relay_deliveries_rejected_total{reason=\"bad_signature\",source=\"cal\"}")
            .await
            >= 1.0
    );
    still_serves(&relay, 8, 0).await;
}

#[tokio::test]
async fn path_and_method_variants() {
    let relay = InProcess::start(&config()).await;
    let body = valid(9);
    let signed = |path| Post::signed(path, &fixture_secret(), &body, "application/json");
    let (status, text) = relay.post(signed("/webhooks/cal?source=x")).await.unwrap();
    assert_eq!(
        status, 200,
        "a query string does not change the path: {text}"
    );
    assert_eq!(relay.post(signed("/webhooks/cal/")).await.unwrap().0, 404);
    for method in ["HEAD", "OPTIONS", "PUT", "DELETE"] {
        let empty = Post {
            path: SOURCE_PATH,
            body: Vec::new(),
            headers: Vec::new(),
        };
        let (status, headers, text) = relay.exchange(method, empty).await.unwrap();
        assert_eq!(status, 405, "{method}: {text}");
        if method != "HEAD" {
            assert_eq!(headers["allow"], "POST", "{method}");
        }
    }
    let (status, body) = relay.post(signed_booking(&valid(10))).await.unwrap();
    assert_eq!(status, 200, "a valid delivery after the variants: {body}");
    assert_eq!(read_lines(&relay.path("events.jsonl")).len(), 2);
}

#[tokio::test]
async fn wrong_signature_floods_do_not_stop_a_valid_sender() {
    let relay = RelayProcess::start(&config()).await;
    let addr = relay.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..50)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = valid(10_000 + i * 1000 + n);
                    let p = Post::signed(SOURCE_PATH, "not-the-secret", &body, "application/json");
                    // A connection refused while the relay is at its limit is fine too.
                    if let Ok((status, _)) = post(addr, p).await {
                        assert!(matches!(status, 401 | 503), "{status}");
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut accepted = 0;
    for n in 0..30 {
        // A valid sender retries a 503 (overloaded) as Cal.com would.
        loop {
            let (status, body) = post(addr, signed_booking(&valid(500 + n))).await.unwrap();
            if status == 503 {
                assert!(body.contains("overloaded"), "{body}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            assert_eq!(status, 200, "{body}");
            accepted += 1;
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for a in attackers {
        sent += a.await.unwrap();
    }
    assert!(sent > 0);
    assert_eq!(accepted, 30);
    assert_eq!(
        sink_lines(&relay),
        30,
        "only the valid deliveries reached the sink"
    );
}

#[tokio::test]
async fn clients_that_go_away_mid_request() {
    let relay = RelayProcess::start(&config()).await;
    // Gone mid-body: nothing published, the in-flight gauge returns to 0.
    for n in 0..20 {
        let body = valid(700 + n);
        let full = request(&body, None, "");
        let mut s = connect(relay.addr);
        s.write_all(&full[..full.len() - 100]).unwrap();
        drop(s);
    }
    wait_metric(&relay, "cal_relay_requests_in_flight", 0.0).await;
    assert_eq!(sink_lines(&relay), 0);
    // Gone right after the whole body: the delivery is still handled to the end, once, and
    // remembered, so the sender's retry is answered as a duplicate, not published again.
    for n in 0..20 {
        let body = valid(800 + n);
        let mut s = connect(relay.addr);
        s.write_all(&request(&body, None, "")).unwrap();
        drop(s);
    }
    wait_metric(&relay, "cal_relay_requests_in_flight", 0.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink_lines(&relay) < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 published",
            sink_lines(&relay)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..20 {
        let (status, body) = post(relay.addr, signed_booking(&valid(800 + n)))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("duplicate"),
            "the retry of {n} was published again: {body}"
        );
    }
    assert_eq!(sink_lines(&relay), 20);
}

#[tokio::test]
async fn beyond_max_in_flight_is_503_overloaded_with_retry_after() {
    let relay = RelayProcess::start(&config()).await;
    // Four slow bodies hold every in-flight slot.
    let body = valid(900);
    let full = request(&body, None, "");
    let holders: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(relay.addr);
            s.write_all(&full[..full.len() - 10]).unwrap();
            s
        })
        .collect();
    wait_metric(&relay, "cal_relay_requests_in_flight", 4.0).await;
    let (status, text) = send_raw(
        relay.addr,
        &request(&valid(901), None, "Connection: close\r\n"),
    );
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("overloaded"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert_eq!(
        relay
            .metric("cal_relay_deliveries_rejected_total{reason=\"overloaded\",source=\"cal\"}")
            .await,
        1.0
    );
    drop(holders);
    wait_metric(&relay, "cal_relay_requests_in_flight", 0.0).await;
    still_serves(&relay, 902, 0).await;
}

/// A fresh BOOKING_CREATED envelope made `offset_secs` from now (as Cal.com stamps createdAt).
fn fresh(uid: &str, offset_secs: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    let mut v: serde_json::Value = serde_json::from_slice(&booking(uid, 1)).unwrap();
    v["createdAt"] = humantime::format_rfc3339_millis(at).to_string().into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn a_captured_delivery_replayed_later_is_never_published_twice() {
    let config =
        one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"").replace(
            "replay_window_secs = 0",
            "replay_window_secs = 5\nscheduled_allowance_secs = 0",
        ) + &spool_section("dedup_window_secs = 5");
    let mut relay = RelayProcess::start(&config).await;
    let captured = fresh("replayed", 0);
    let sent_at = Instant::now();
    let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Forwarded and marked done in the spool's files: a kill -9 before the mark is written
    // would forward it again after the restart (at least once), not what this test is about.
    while sink_lines(&relay) < 1 || !relay.spool_list().trim().is_empty() {
        assert!(Instant::now() < deadline, "never forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Inside the window: a duplicate, before and after a restart (kill -9).
    let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");
    relay.restart().await;
    let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
    if sent_at.elapsed() < Duration::from_secs(5) {
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("duplicate"), "after a restart: {body}");
    }
    // Past the window: refused as stale, before and after a restart.
    while sent_at.elapsed() < Duration::from_millis(5500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for restart in [false, true] {
        if restart {
            relay.restart().await;
        }
        let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(
            body.contains("stale_delivery") && body.contains("in the past"),
            "{body}"
        );
    }
    // From the future (beyond five minutes of clock skew): refused too.
    let (status, body) = post(relay.addr, signed_booking(&fresh("ahead", 600)))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("in the future"), "{body}");
    assert_eq!(
        relay
            .metric("cal_relay_deliveries_rejected_total{reason=\"stale_delivery\",source=\"cal\"}")
            .await,
        2.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink_lines(&relay),
        1,
        "the captured delivery reached the sink once"
    );
}

#[tokio::test]
async fn identical_template_bodies_are_each_published() {
    let relay = InProcess::start(
        &(one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
            + &spool_section("")),
    )
    .await;
    let events = relay.path("events.jsonl");
    // What Cal.com sends for a custom template that rendered invalid JSON, for two bookings.
    for _ in 0..2 {
        let (status, body) = relay
            .post(Post::signed(
                SOURCE_PATH,
                &fixture_secret(),
                b"false",
                "application/json",
            ))
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_lines(&events).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{} of 2 published",
            read_lines(&events).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = read_lines(&events);
    assert_eq!(
        lines[0]["headers"]["cal-delivery-id"],
        lines[1]["headers"]["cal-delivery-id"]
    );
}

/// In process, every request comes from 127.0.0.1.
#[tokio::test]
async fn allow_from_refuses_other_addresses_with_403() {
    let config = config().replace(
        "replay_window_secs = 0",
        "replay_window_secs = 0\nallow_from = [\"10.0.0.0/8\"]",
    );
    let relay = InProcess::start(&config).await;
    let (status, body) = relay.post(signed_booking(&valid(950))).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    // Behind a trusted proxy, X-Forwarded-For names the client.
    let config = config.replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let relay2 = InProcess::start(&config).await;
    let mut p = signed_booking(&valid(951));
    p.headers.push(("x-forwarded-for", "10.1.2.3".into()));
    let (status, body) = relay2.post(p).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut p = signed_booking(&valid(952));
    p.headers.push(("x-forwarded-for", "192.0.2.1".into()));
    assert_eq!(relay2.post(p).await.unwrap().0, 403);
    assert_eq!(read_lines(&relay.path("events.jsonl")).len(), 0);
}

#[tokio::test]
async fn in_confirm_mode_a_replay_after_a_restart_is_a_duplicate_too() {
    let config = one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
        .replace("replay_window_secs = 0", "replay_window_secs = 3600");
    let mut relay = RelayProcess::start(&config).await;
    let captured = fresh("confirm-replay", 0);
    let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    relay.restart().await;
    let (status, body) = post(relay.addr, signed_booking(&captured)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");
    assert_eq!(sink_lines(&relay), 1);
}
