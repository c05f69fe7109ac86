//! The consumer contract, checked with validators nobody here wrote: every fixture, as the
//! relay publishes it (MEETING_* after wrapping), and every sample `cal-relay send --trigger`
//! sends, validates against the schema `cal-relay schema` prints for its trigger (Python
//! `jsonschema`, draft 2020-12, formats checked), and `[schema] check = "warn"` counts no drift
//! for any of them; and
//! the AsyncAPI document `cal-relay asyncapi` prints for every shipped `config/*.toml` passes
//! the official parser (`@asyncapi/parser`) without an error.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A checker's stdout then stderr, and whether it succeeded.
fn run(program: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    let (ok, out, err) = run_interop(program, args, input);
    (ok, out + &err)
}

fn schema_of(trigger: &str) -> Value {
    let out = Command::new(relay_binary())
        .args(["schema", trigger])
        .output()
        .unwrap();
    assert!(out.status.success(), "cal-relay schema {trigger}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A relay with the file sink and drift detection on.
async fn warn_relay() -> RelayProcess {
    RelayProcess::start(
        &(one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
            + "\n[schema]\ncheck = \"warn\"\n"),
    )
    .await
}

/// Validate every published line against its trigger's schema with Python `jsonschema`.
fn assert_lines_validate(lines: &[Value]) {
    let items: Vec<Value> = lines
        .iter()
        .map(|l| {
            let trigger = l["headers"]["cal-trigger"].as_str().unwrap();
            json!({ "schema": schema_of(trigger), "instance": l["body"] })
        })
        .collect();
    let (ok, out) = run(
        "python3",
        &["tests/interop/validate_schema.py"],
        json!(items).to_string().as_bytes(),
    );
    assert!(ok, "{out}");
    let errors: Vec<Vec<Value>> = serde_json::from_str(&out).unwrap();
    for (line, errors) in lines.iter().zip(&errors) {
        assert!(
            errors.is_empty(),
            "{}: {errors:?}",
            line["headers"]["cal-trigger"]
        );
    }
}

/// The relay's own drift detection counted nothing.
async fn assert_no_drift(relay: &RelayProcess) {
    let (_, text) = get(relay.addr, "/metrics").await.unwrap();
    let drift: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cal_relay_schema_violations_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(drift.is_empty(), "{drift:?}");
}

#[tokio::test]
async fn every_fixture_as_published_validates_against_its_trigger_schema() {
    let relay = warn_relay().await;
    let fixtures: Vec<Fixture> = fixtures()
        .into_iter()
        .filter(|f| f.trigger().is_some())
        .collect();
    for f in &fixtures {
        let (status, body) = post_fixture(relay.addr, f).await;
        assert_eq!(status, 200, "{body}");
    }
    let lines = read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), fixtures.len());
    assert_lines_validate(&lines);
    assert_no_drift(&relay).await;
    // The validator does catch what a schema forbids: a wrong-typed field.
    let mut bad = lines[0]["body"].clone();
    bad["createdAt"] = json!(42);
    let trigger = lines[0]["headers"]["cal-trigger"].as_str().unwrap();
    let (_, out) = run(
        "python3",
        &["tests/interop/validate_schema.py"],
        json!([{ "schema": schema_of(trigger), "instance": bad }])
            .to_string()
            .as_bytes(),
    );
    let errors: Vec<Vec<Value>> = serde_json::from_str(&out).unwrap();
    assert_eq!(errors[0].len(), 1, "{out}");
    assert_eq!(errors[0][0]["path"], "createdAt");
}

/// What users test their consumers with: the sample of every known trigger (and the three
/// shapes of MEETING_*), sent by `cal-relay send --trigger`, is what the schemas describe.
#[tokio::test]
async fn every_sample_of_send_validates_against_its_trigger_schema() {
    let relay = warn_relay().await;
    let url = relay.url(SOURCE_PATH);
    let mut runs: Vec<Vec<String>> = cal_relay_core::trigger::KNOWN
        .iter()
        .map(|t| vec![t.to_string()])
        .collect();
    for t in ["MEETING_STARTED", "MEETING_ENDED"] {
        for shape in ["scheduled", "queued"] {
            runs.push(vec![t.into(), "--meeting-shape".into(), shape.into()]);
        }
    }
    let secret = fixture_secret();
    for args in &runs {
        let out = Command::new(relay_binary())
            .args(["send", "--url", &url, "--secret", &secret, "--trigger"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let lines = read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), runs.len());
    for (line, args) in lines.iter().zip(&runs) {
        let keyed = !matches!(
            args[0].as_str(),
            "PING" | "INSTANT_MEETING" | "DELEGATION_CREDENTIAL_ERROR"
        ) && !args[0].starts_with("DELEGATION_");
        assert_eq!(line["key"].is_string(), keyed, "key of {args:?}");
    }
    assert_lines_validate(&lines);
    assert_no_drift(&relay).await;
}

#[test]
fn the_asyncapi_document_of_every_shipped_config_passes_the_official_parser() {
    let mut configs: Vec<_> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 5);
    for config in configs {
        let out = Command::new(relay_binary())
            .arg("--config")
            .arg(&config)
            .arg("asyncapi")
            // The shipped configs that read secrets from the environment (image, compose).
            .env("CAL_WEBHOOK_SECRETS", "a-secret")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            !text.contains("guest:guest") && !text.contains("password"),
            "{}: credentials in the document",
            config.display()
        );
        let (ok, report) = run(
            "node",
            &["tests/interop/asyncapi-validate.mjs"],
            &out.stdout,
        );
        assert!(ok, "{}: {report}", config.display());
        assert!(report.contains("valid: AsyncAPI 3.0.0"), "{report}");
    }
}

#[tokio::test]
async fn warn_mode_counts_a_wrong_typed_field_and_still_publishes() {
    let relay = RelayProcess::start(
        &(one_sink_config("local", "type = \"file\"\npath = \"{dir}/events.jsonl\"")
            + "\n[schema]\ncheck = \"warn\"\n"),
    )
    .await;
    let series = "cal_relay_schema_violations_total{trigger=\"BOOKING_CREATED\"}";
    let good = booking("schema-good", 1);
    let (status, body) = post(relay.addr, signed_booking(&good)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(relay.metric(series).await, 0.0);
    // A Cal.com release that changed a field's type: counted, logged, relayed all the same.
    let mut v: Value = serde_json::from_slice(&booking("schema-bad", 2)).unwrap();
    v["payload"]["startTime"] = json!(1_768_210_200);
    let bad = serde_json::to_vec(&v).unwrap();
    let (status, body) = post(relay.addr, signed_booking(&bad)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(relay.metric(series).await, 1.0);
    let lines = read_lines(&relay.path("events.jsonl"));
    assert_eq!(lines.len(), 2, "both published");
    assert_eq!(lines[1]["body"]["payload"]["startTime"], 1_768_210_200);
}
