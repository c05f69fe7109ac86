//! The consumer contract, checked with validators nobody here wrote: every fixture, as the
//! relay publishes it (MEETING_* after wrapping), validates against the schema `cal-relay
//! schema` prints for its trigger (Python `jsonschema`, draft 2020-12, formats checked); and
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

#[tokio::test]
async fn every_fixture_as_published_validates_against_its_trigger_schema() {
    let relay = RelayProcess::start(&one_sink_config(
        "local",
        "type = \"file\"\npath = \"{dir}/events.jsonl\"",
    ))
    .await;
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
