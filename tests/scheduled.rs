//! Deliveries Cal.com schedules are relayed although their `createdAt` is old, once, in both
//! delivery modes, against a real nats-server (JetStream) read back with async-nats:
//! MEETING_STARTED / MEETING_ENDED built when the booking was made three weeks earlier and sent
//! at the meeting's start or end (the producer/consumer envelope and the queued task, which
//! sends `X-Cal-Webhook-Version: undefined`), and FORM_SUBMITTED_NO_EVENT two hours after the
//! submission. A captured copy replayed later is never published again: an hour later and
//! after a restart it is a duplicate; eight hours later, past the replay window and the
//! scheduled allowance, it is refused as stale. "Later" is the relay started under libfaketime
//! (installed by scripts/test.sh), hours ahead of the real clock. A BOOKING_CREATED whose
//! `createdAt` is two days old is refused; an envelope-shaped template is a template: two
//! bookings rendering the same bytes are both published on the template destination.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::nats::{stream_messages, NatsServer};
use support::*;

const DAY: i64 = 24 * 3600;

/// Now shifted by `secs`, as Cal.com writes times (RFC 3339, milliseconds, `Z`).
fn at(secs: i64) -> String {
    let now = SystemTime::now();
    let t = if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// A fixture's exact text with each `(old, new)` replaced (every occurrence; `old` must occur).
fn retime(file: &str, pairs: &[(&str, String)]) -> Vec<u8> {
    let mut text = String::from_utf8(fixture(file).body).unwrap();
    for (old, new) in pairs {
        assert!(text.contains(old), "{old} not in {file}");
        text = text.replace(old, new);
    }
    text.into_bytes()
}

fn fixture(file: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|f| f.file() == file)
        .unwrap_or_else(|| panic!("fixture {file}"))
}

/// One delivery of the test: its body, the webhook version header Cal.com sends with it, and
/// where and under which key it must be published.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    version: &'static str,
    subject: &'static str,
    key: &'static str,
}

impl Case {
    fn post(&self) -> Post<'static> {
        let mut p = Post::signed(
            SOURCE_PATH,
            &fixture_secret(),
            &self.body,
            "application/json",
        );
        p.headers
            .retain(|(name, _)| *name != "x-cal-webhook-version");
        p.headers
            .push(("x-cal-webhook-version", self.version.into()));
        p
    }
}

/// The scheduled deliveries, as they arrive now: every meeting booked three weeks ago.
fn cases() -> Vec<Case> {
    let booked = at(-21 * DAY);
    vec![
        Case {
            name: "MEETING_STARTED at its start (producer/consumer envelope)",
            body: retime(
                "MEETING_STARTED_SCHEDULED.body",
                &[
                    ("2026-12-04T19:53:52.185Z", booked.clone()),
                    ("2026-12-06T19:52:52.185Z", at(0)),
                    ("2026-12-06T19:53:22.185Z", at(1800)),
                    ("uid000vX1xhgeln1na", "bk-started".into()),
                ],
            ),
            version: "2021-10-20",
            subject: "cal.meeting.started",
            key: "bk-started",
        },
        Case {
            name: "MEETING_ENDED at its end (producer/consumer envelope)",
            body: retime(
                "MEETING_ENDED_SCHEDULED.body",
                &[
                    ("2026-12-04T19:53:52.209Z", booked.clone()),
                    ("2026-12-06T19:52:52.209Z", at(-1800)),
                    ("2026-12-06T19:53:22.209Z", at(0)),
                    ("uid000zXgmjud2gvns", "bk-ended".into()),
                ],
            ),
            version: "2021-10-20",
            subject: "cal.meeting.ended",
            key: "bk-ended",
        },
        Case {
            name: "MEETING_STARTED at its start (queued task)",
            body: retime(
                "MEETING_STARTED_QUEUED.body",
                &[
                    ("2026-12-05T19:53:52.327Z", booked.clone()),
                    ("2026-12-06T19:52:52.327Z", at(0)),
                    ("uid001jXxyqz002mhq", "bk-queued-started".into()),
                ],
            ),
            version: "undefined",
            subject: "cal.meeting.started",
            key: "bk-queued-started",
        },
        Case {
            name: "MEETING_ENDED at its end (queued task)",
            body: retime(
                "MEETING_STARTED_QUEUED.body",
                &[
                    ("MEETING_STARTED", "MEETING_ENDED".into()),
                    ("2026-12-05T19:53:52.327Z", booked),
                    (
                        "\"startTime\":\"2026-12-06T19:52:52.327Z\"",
                        format!("\"startTime\":\"{}\",\"endTime\":\"{}\"", at(-1800), at(0)),
                    ),
                    ("uid001jXxyqz002mhq", "bk-queued-ended".into()),
                ],
            ),
            version: "undefined",
            subject: "cal.meeting.ended",
            key: "bk-queued-ended",
        },
        Case {
            name: "FORM_SUBMITTED_NO_EVENT two hours after the submission",
            body: retime(
                "FORM_SUBMITTED_NO_EVENT.body",
                &[
                    ("2026-08-17T07:34:00.592Z", at(-2 * 3600)),
                    ("3c5a8e58-9a0f-4d9d-8b6e-2f0d6f1f7c11", "form-late".into()),
                ],
            ),
            version: "2021-10-20",
            subject: "cal.form.submitted_no_event",
            key: "form-late",
        },
    ]
}

/// A BOOKING_CREATED whose createdAt is two days old: a replay, not a scheduled delivery.
fn stale_booking() -> Post<'static> {
    let mut v: Value = serde_json::from_slice(&booking("bk-two-days-old", 1)).unwrap();
    v["createdAt"] = at(-2 * DAY).into();
    signed_booking(&serde_json::to_vec(&v).unwrap())
}

fn config(nats_url: &str, spool: bool) -> String {
    let sink = format!(
        "type = \"nats\"\nurl = \"{nats_url}\"\nack_timeout_ms = 2000\nstream = {{ name = \"CAL\", subjects = [\"cal.>\"] }}"
    );
    // The shipped replay rule: replay_window_secs and scheduled_allowance_secs left to their
    // defaults (one hour, six more hours for scheduled triggers), de-duplication for 24 h.
    let config = one_sink_config("bus", &sink).replace("replay_window_secs = 0", "");
    if spool {
        config + &spool_section("")
    } else {
        config
    }
}

/// libfaketime, which starts the relay `offset` (e.g. `+1h`) ahead of the real clock; the
/// monotonic clock is left alone (timers, timeouts).
fn clock_ahead(offset: &str) -> Vec<(String, String)> {
    let lib = ["x86_64", "aarch64"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"))
        .find(|p| std::path::Path::new(p).exists())
        .expect("libfaketime (Debian package faketime; scripts/test.sh installs it)");
    vec![
        ("LD_PRELOAD".into(), lib),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Every message of the stream once `want` are there (spool mode forwards after answering).
async fn published(url: &str, want: usize) -> Vec<async_nats::jetstream::Message> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stream_messages(url, "CAL").await;
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn header(m: &async_nats::jetstream::Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

async fn scheduled_deliveries_are_relayed_once(spool: bool) {
    let nats = NatsServer::start();
    let mut relay = RelayProcess::start(&config(&nats.url(), spool)).await;
    let accepted = if spool { 202 } else { 200 };
    let cases = cases();
    for c in &cases {
        let (status, body) = post(relay.addr, c.post()).await.unwrap();
        assert_eq!(status, accepted, "{}: {body}", c.name);
    }
    let (status, body) = post(relay.addr, stale_booking()).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("stale_delivery"), "{body}");
    // Two bookings rendering the same envelope-shaped template: both published.
    let template = fixture("TEMPLATE_ENVELOPE_LIKE.body");
    for _ in 0..2 {
        let (status, body) = post_fixture(relay.addr, &template).await;
        assert_eq!(status, accepted, "{body}");
        assert!(!body.contains("duplicate"), "{body}");
    }

    let want = cases.len() + 2;
    let messages = published(&nats.url(), want).await;
    assert_eq!(messages.len(), want, "each once, both templates");
    let by_id: HashMap<String, &async_nats::jetstream::Message> = messages
        .iter()
        .filter_map(|m| Some((header(m, "cal-delivery-id")?, m)))
        .collect();
    for c in &cases {
        let m = by_id
            .get(&sha256_hex(&c.body))
            .unwrap_or_else(|| panic!("{} not published", c.name));
        assert_eq!(m.subject.as_str(), c.subject, "{}", c.name);
        assert_eq!(header(m, "cal-key").as_deref(), Some(c.key), "{}", c.name);
        assert_eq!(m.payload.as_ref(), c.body.as_slice(), "{}", c.name);
        let version = header(m, "cal-webhook-version");
        match c.version {
            "undefined" => assert_eq!(version, None, "{}", c.name),
            v => assert_eq!(version.as_deref(), Some(v), "{}", c.name),
        }
    }
    let templates: Vec<_> = messages
        .iter()
        .filter(|m| m.subject.as_str() == "cal.custom")
        .collect();
    assert_eq!(templates.len(), 2);
    for m in templates {
        assert_eq!(m.payload.as_ref(), template.body.as_slice());
        assert_eq!(header(m, "cal-trigger"), None, "a template, not a trigger");
    }

    // A captured copy replayed at once, then an hour later after a restart: duplicates.
    for offset in [None, Some("+1h")] {
        if let Some(offset) = offset {
            relay.restart_with_env(&clock_ahead(offset)).await;
        }
        for c in &cases {
            let (status, body) = post(relay.addr, c.post()).await.unwrap();
            assert_eq!(status, 200, "{} replayed ({offset:?}): {body}", c.name);
            assert!(
                body.contains("duplicate"),
                "{} ({offset:?}): {body}",
                c.name
            );
        }
    }
    // Eight hours later: past the replay window and the scheduled allowance, refused as stale
    // (its id is still remembered for 24 h besides).
    relay.restart_with_env(&clock_ahead("+8h")).await;
    for c in &cases {
        let (status, body) = post(relay.addr, c.post()).await.unwrap();
        assert_eq!(status, 401, "{} eight hours later: {body}", c.name);
        assert!(body.contains("stale_delivery"), "{body}");
    }
    assert_eq!(
        stream_messages(&nats.url(), "CAL").await.len(),
        want,
        "nothing published twice"
    );
}

#[tokio::test]
async fn in_confirm_mode_scheduled_deliveries_are_relayed_once() {
    scheduled_deliveries_are_relayed_once(false).await;
}

#[tokio::test]
async fn in_spool_mode_scheduled_deliveries_are_relayed_once() {
    scheduled_deliveries_are_relayed_once(true).await;
}

/// `check-config` shows the rule's settings; a rule the de-duplication window does not cover
/// is refused.
#[test]
fn check_config_shows_the_replay_rule_and_refuses_one_dedup_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cal-relay.toml");
    let base = config("nats://127.0.0.1:4222", false)
        .replace("{listen}", "127.0.0.1:0")
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&path, &base).unwrap();
    let out = std::process::Command::new(relay_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("replay_window_secs=3600 scheduled_allowance_secs=21600"),
        "{text}"
    );
    assert!(text.contains("window=86400s"), "{text}");
    assert!(!text.contains(&fixture_secret()), "secrets stay redacted");

    std::fs::write(&path, base + "\n[delivery]\ndedup_window_secs = 20000\n").unwrap();
    let out = std::process::Command::new(relay_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("scheduled_allowance_secs"), "{err}");
}
