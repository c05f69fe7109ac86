//! HTTP behaviour with the embedded file sink: signed fixture deliveries and the lines it
//! wrote; every rejection with its status, JSON answer, metric and nothing written. Those run
//! in process (the relay as `serve` assembles it, requests straight to its handler); what
//! needs the real binary (chunked framing on a socket, SIGTERM, the commands) starts it.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};

use serde_json::Value;
use support::in_process::InProcess;
use support::*;

const PATH: &str = "/webhooks/cal";

fn file_config(extra_source: &str, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
max_body_bytes = 8192

[[sources]]
name = "cal"
path = "{PATH}"
secrets = ["rotated-out", "{secret}"]
replay_window_secs = 0   # the fixtures' createdAt is months old
{extra_source}

[sinks.local]
type = "file"
path = "{{dir}}/events.jsonl"

{routes}
"#,
        secret = fixture_secret()
    )
}

const ALL_TO_LOCAL: &str = "[[routes]]\ntriggers = [\"*\"]\nsinks = [\"local\"]\n";

#[tokio::test]
async fn every_fixture_is_relayed_with_destination_key_headers_and_body() {
    let relay = InProcess::start(&file_config(
        "template_destination = \"cal.custom\"",
        ALL_TO_LOCAL,
    ))
    .await;
    let fixtures = fixtures();
    for f in &fixtures {
        let mut req = f.as_sent(PATH, "unused");
        // The exact header value Cal.com sent, from the manifest.
        req.headers[1].1 = f.signature().to_owned();
        let (status, answer) = relay.post(req).await.unwrap();
        assert_eq!(status, 200, "{}: {answer}", f.file());
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["status"], "accepted");
        assert!(
            f.is_message_id(answer["deliveryId"].as_str().unwrap()),
            "{answer}"
        );
    }

    let lines = read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), fixtures.len());
    let raw = std::fs::read_to_string(relay.path("events.jsonl")).unwrap();
    let by_id: HashMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["headers"]["cal-delivery-id"].as_str().unwrap(), l))
        .collect();
    for f in &fixtures {
        let line = by_id
            .get(f.delivery_id())
            .unwrap_or_else(|| panic!("{} not written", f.file()));
        let name = f.file();
        assert_eq!(
            line["destination"],
            f.expected_destination("cal.custom"),
            "{name}"
        );
        assert_eq!(
            line["key"].as_str().map(str::to_owned),
            f.expected_key(),
            "{name}"
        );
        let h = &line["headers"];
        assert_eq!(
            h["cal-webhook-version"].as_str().map(str::to_owned),
            f.expected_webhook_version(),
            "{name}"
        );
        assert!(
            h["cal-received-at"].as_str().unwrap().ends_with('Z'),
            "{name}"
        );
        match f.trigger() {
            Some(t) => {
                assert_eq!(h["cal-trigger"], t, "{name}");
                assert_eq!(h["content-type"], "application/json", "{name}");
            }
            None => {
                assert!(h.get("cal-trigger").is_none(), "{name}");
                assert_eq!(h["content-type"], f.content_type(), "{name}");
            }
        }
        let original: Option<Value> = serde_json::from_slice(&f.body).ok();
        if f.is_flat() {
            let original = original.unwrap();
            assert_eq!(
                line["body"]["triggerEvent"], original["triggerEvent"],
                "{name}"
            );
            let mut payload = original.as_object().unwrap().clone();
            payload.remove("triggerEvent");
            assert_eq!(line["body"]["payload"], Value::Object(payload), "{name}");
            let created = line["body"]["createdAt"].as_str().unwrap();
            assert_eq!(created, h["cal-received-at"].as_str().unwrap(), "{name}");
        } else {
            match original {
                Some(v) => assert_eq!(line["body"], v, "{name}"),
                None => assert_eq!(line["body"], String::from_utf8_lossy(&f.body).as_ref()),
            }
            // Byte-identical: the exact bytes stand in the written line.
            let text = std::str::from_utf8(&f.body).unwrap();
            assert!(raw.contains(text), "{name} body not byte-identical");
        }
    }
    let published = relay
        .metric(r#"cal_relay_messages_published_total{sink="local",trigger="BOOKING_CREATED"}"#)
        .await;
    assert_eq!(published, 1.0);
    let received = relay
        .metric(r#"cal_relay_deliveries_received_total{source="cal"}"#)
        .await;
    assert_eq!(received, fixtures.len() as f64);
}

/// Expect `status` with a JSON `error` of `reason`, the rejection counted, nothing written.
async fn expect_rejected(
    relay: &InProcess,
    result: (u16, String),
    status: u16,
    reason: &str,
    source: &str,
) {
    let (got, body) = result;
    assert_eq!(got, status, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(answer["error"], reason, "{body}");
    assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    let series =
        format!(r#"cal_relay_deliveries_rejected_total{{reason="{reason}",source="{source}"}}"#);
    assert_eq!(relay.metric(&series).await, 1.0, "{series}");
    assert!(
        read_lines(&relay.path("events.jsonl")).is_empty(),
        "something was written"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_answers_and_nothing_is_written() {
    let relay = InProcess::start(&file_config(
        "",
        "[[routes]]\ntriggers = [\"BOOKING_*\", \"MEETING_*\"]\nsinks = [\"local\"]\n",
    ))
    .await;
    let booking = fixtures()
        .into_iter()
        .find(|f| f.trigger() == Some("BOOKING_CREATED"))
        .unwrap();
    let secret = fixture_secret();

    // 401: wrong secret, missing header, no-secret-provided, malformed.
    let r = relay
        .post(Post::signed(
            PATH,
            "wrong",
            &booking.body,
            "application/json",
        ))
        .await;
    expect_rejected(&relay, r.unwrap(), 401, "bad_signature", "cal").await;
    let mut unsigned = Post::signed(PATH, &secret, &booking.body, "application/json");
    unsigned.headers.remove(1);
    expect_rejected(
        &relay,
        relay.post(unsigned).await.unwrap(),
        401,
        "missing_signature",
        "cal",
    )
    .await;
    let mut no_secret = Post::signed(PATH, &secret, &booking.body, "application/json");
    no_secret.headers[1].1 = "no-secret-provided".into();
    let r = relay.post(no_secret).await.unwrap();
    assert!(
        r.1.contains("no-secret-provided"),
        "the 401 says why: {}",
        r.1
    );
    expect_rejected(&relay, r, 401, "unsigned", "cal").await;
    let mut garbled = Post::signed(PATH, &secret, &booking.body, "application/json");
    garbled.headers[1].1 = "sha256=not-hex".into();
    expect_rejected(
        &relay,
        relay.post(garbled).await.unwrap(),
        401,
        "malformed_signature",
        "cal",
    )
    .await;

    // 400: template body without template_destination, a trigger that is not a name, empty.
    let r = relay
        .post(Post::signed(
            PATH,
            &secret,
            b"event=X&uid=1",
            "application/x-www-form-urlencoded",
        ))
        .await;
    expect_rejected(&relay, r.unwrap(), 400, "no_trigger", "cal").await;
    let r = relay
        .post(Post::signed(
            PATH,
            &secret,
            br#"{"triggerEvent":"cal.>","payload":{}}"#,
            "application/json",
        ))
        .await;
    expect_rejected(&relay, r.unwrap(), 400, "invalid_trigger", "cal").await;
    let r = relay
        .post(Post::signed(PATH, &secret, b"", "application/json"))
        .await;
    expect_rejected(&relay, r.unwrap(), 400, "empty_body", "cal").await;

    // 422: a trigger no route matches.
    let ping = br#"{"triggerEvent":"PING","createdAt":"2026-01-01T00:00:00.000Z","payload":{}}"#;
    let r = relay
        .post(Post::signed(PATH, &secret, ping, "application/json"))
        .await;
    expect_rejected(&relay, r.unwrap(), 422, "no_route", "cal").await;

    // 413: declared too large, answered without reading the body.
    let big = vec![b' '; 9000];
    let r = relay
        .post(Post::signed(PATH, &secret, &big, "application/json"))
        .await;
    expect_rejected(&relay, r.unwrap(), 413, "too_large", "cal").await;

    // 404 and 405.
    let r = relay
        .post(Post::signed(
            "/elsewhere",
            &secret,
            ping,
            "application/json",
        ))
        .await;
    expect_rejected(&relay, r.unwrap(), 404, "not_found", "none").await;
    let r = relay
        .request("PUT", Post::signed(PATH, &secret, ping, "application/json"))
        .await;
    expect_rejected(&relay, r.unwrap(), 405, "method_not_allowed", "cal").await;

    // The relay is still healthy after all of it.
    assert_eq!(relay.get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let relay = RelayProcess::start(&file_config("", ALL_TO_LOCAL)).await;
    let addr = relay.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             x-cal-signature-256: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            "0".repeat(64)
        );
        s.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 4096];
        for _ in 0..3 {
            let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = s.write_all(&chunk);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"too_large""#), "{answer}");
    assert_eq!(
        relay
            .metric(r#"cal_relay_deliveries_rejected_total{reason="too_large",source="cal"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn fan_out_overrides_and_sink_failure() {
    let config = format!(
        r#"
[server]
listen = "{{listen}}"

[[sources]]
name = "cal"
path = "{PATH}"
secrets = ["{secret}"]
replay_window_secs = 0   # the fixtures' createdAt is months old

[sinks.a]
type = "file"
path = "{{dir}}/a.jsonl"

[sinks.b]
type = "file"
path = "{{dir}}/b.jsonl"

[sinks.broken]
type = "file"
path = "/dev/full"

[[routes]]
triggers = ["BOOKING_CREATED"]
sinks = ["a", "b"]
destination = "bookings.new"

[[routes]]
triggers = ["MEETING_*"]
sinks = ["a", "broken"]

[[routes]]
triggers = ["*"]
sinks = ["b"]
"#,
        secret = fixture_secret()
    );
    let relay = InProcess::start(&config).await;
    let by = |t: &str| {
        fixtures()
            .into_iter()
            .find(|f| f.trigger() == Some(t))
            .unwrap()
    };
    let secret = fixture_secret();
    let relay = &relay;
    let send = |f: Fixture| {
        let secret = secret.clone();
        async move {
            relay
                .post(Post::signed(PATH, &secret, &f.body, "application/json"))
                .await
                .unwrap()
        }
    };

    assert_eq!(send(by("BOOKING_CREATED")).await.0, 200);
    assert_eq!(send(by("PING")).await.0, 200);
    let (status, body) = send(by("MEETING_ENDED")).await;
    assert_eq!(status, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"], "publish_failed");
    assert_eq!(answer["sinks"][0]["sink"], "broken");
    assert_eq!(answer["sinks"][0]["reason"], "io");

    let a = read_lines(&relay.path("a.jsonl"));
    let b = read_lines(&relay.path("b.jsonl"));
    let dests = |lines: &[Value]| {
        lines
            .iter()
            .map(|l| l["destination"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // The meeting reached `a` even though `broken` failed: the 503 makes Cal.com retry.
    assert_eq!(dests(&a), ["bookings.new", "cal.meeting.ended"]);
    assert_eq!(dests(&b), ["bookings.new", "cal.ping"]);
    assert_eq!(
        relay
            .metric(r#"cal_relay_publish_errors_total{reason="io",sink="broken",trigger="MEETING_ENDED"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_unsigned_can_be_allowed() {
    let config = file_config("allow_unsigned = true", ALL_TO_LOCAL);
    let mut relay = RelayProcess::start(&config).await;
    let ping = br#"{"triggerEvent":"PING","createdAt":"2026-01-01T00:00:00.000Z","payload":{}}"#;
    let mut unsigned = Post::signed(PATH, "x", ping, "application/json");
    unsigned.headers[1].1 = "no-secret-provided".into();
    assert_eq!(post(relay.addr, unsigned).await.unwrap().0, 200);
    // A present but wrong signature is still refused.
    let (status, _) = post(
        relay.addr,
        Post::signed(PATH, "wrong", ping, "application/json"),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    let status = relay.terminate();
    assert!(status.success(), "exit status {status}: {}", relay.log());
    assert!(relay.log().contains("stopped"), "{}", relay.log());
    assert_eq!(read_lines(&relay.path("events.jsonl")).len(), 1);
}

/// `cal-relay check-config --config PATH`, run.
fn check_config(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cal-relay"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_config_redacts_secrets_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        file_config("", ALL_TO_LOCAL)
            .replace("{listen}", "127.0.0.1:0")
            .replace("{dir}", "/tmp"),
    )
    .unwrap();
    let out = check_config(&good);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cal.booking.created"), "{text}");
    assert!(!text.contains(&fixture_secret()), "secret leaked: {text}");
    assert!(!text.contains("rotated-out"), "secret leaked: {text}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nmax_body_bytes = \"lots\"\n").unwrap();
    let out = check_config(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_body_bytes"), "{err}");
}

/// check-config checks what building each sink checks, without a broker anywhere: a
/// librdkafka property it does not know, an AMQP URL that does not parse, a missing NATS
/// credentials file. Each answer names the sink and the setting.
#[test]
fn check_config_refuses_sink_settings_a_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "type = \"kafka\"\nbrokers = \"127.0.0.1:9\"\noptions = { \"no.such.property\" = \"1\" }",
            "no.such.property",
        ),
        ("type = \"amqp\"\nurl = \"amqp://h:notaport/\"", "url"),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:9\"\ncredentials_file = \"/nonexistent/x.creds\"",
            "credentials_file",
        ),
    ];
    for (sink, key) in cases {
        let path = dir.path().join("sink.toml");
        std::fs::write(
            &path,
            one_sink_config("out", sink).replace("{listen}", "127.0.0.1:0"),
        )
        .unwrap();
        let out = check_config(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sink}: accepted");
        assert!(
            err.contains("sinks.out") && err.contains(key),
            "{sink}: {err}"
        );
    }
}

#[test]
fn verify_command_checks_fixture_signatures() {
    let f = &fixtures()[0];
    let path = fixtures_dir().join(f.file());
    let run = |sig: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cal-relay"))
            .args(["verify", "--secret", &fixture_secret(), "--signature", sig])
            .arg(&path)
            .output()
            .unwrap()
    };
    assert!(run(f.signature()).status.success());
    assert!(!run(&"0".repeat(64)).status.success());
}

#[tokio::test]
async fn send_command_posts_like_cal_com() {
    let relay = RelayProcess::start(&file_config("", ALL_TO_LOCAL)).await;
    let url = relay.url(PATH);
    let secret = fixture_secret();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cal-relay"))
            .args([
                "send",
                "--url",
                &url,
                "--secret",
                &secret,
                "--trigger",
                "MEETING_STARTED",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines = read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["destination"], "cal.meeting.started");
    assert!(lines[0]["body"]["payload"]["uid"].is_string());
}

#[tokio::test]
async fn per_request_lines_past_the_budget_are_counted_not_written() {
    // Five lines a second: of 40 deliveries sent at once, at most 10 (two seconds) are logged.
    let config = file_config("", ALL_TO_LOCAL).replace(
        "[[sources]]",
        "[log]\nlevel = \"info\"\nrequest_lines_per_sec = 5\n\n[[sources]]",
    );
    let relay = RelayProcess::start(&config).await;
    for n in 0..40 {
        let (status, answer) = post(relay.addr, signed_booking(&booking("budget", n)))
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(read_lines(&relay.path("events.jsonl")).len(), 40);
    let left_out = relay.metric("cal_relay_log_lines_suppressed_total").await;
    assert!(
        (20.0..=35.0).contains(&left_out),
        "{left_out} lines left out"
    );
}
