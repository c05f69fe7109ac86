//! RabbitMQ restarted under a running relay: deliveries during the outage answer 503 and
//! `/readyz` says so; later ones succeed without restarting the relay. Its own test binary, as it
//! stops the shared broker for a while.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::amqp::*;
use support::*;

const PATH: &str = "/webhooks/cal";

fn broker(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/brokers.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "brokers.sh {action} failed");
}

async fn status_of(relay: &RelayProcess, path: &str) -> u16 {
    get(relay.addr, path).await.map(|r| r.0).unwrap_or(0)
}

async fn wait_for(relay: &RelayProcess, want: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while status_of(relay, "/readyz").await != want {
        assert!(
            Instant::now() < deadline,
            "/readyz never became {want}: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn deliveries_fail_during_a_broker_restart_and_succeed_after() {
    let exchange = unique("cal");
    let config = format!(
        r#"
[server]
listen = "{{listen}}"
[[sources]]
name = "cal"
path = "{PATH}"
secrets = ["{secret}"]
[sinks.rabbit]
type = "amqp"
url = "{url}"
exchange = "{exchange}"
mandatory = false
confirm_timeout_ms = 2000
[[routes]]
triggers = ["*"]
sinks = ["rabbit"]
"#,
        secret = fixture_secret(),
        url = amqp_url()
    );
    let relay = RelayProcess::start(&config).await;
    wait_for(&relay, 200, 20).await;
    let all = fixtures();
    let send = |i: usize| {
        let body = all[i].body.clone();
        async move {
            post(
                relay.addr,
                Post::signed(PATH, &fixture_secret(), &body, "application/json"),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(send(0).await.0, 200);

    broker("rabbit-stop-app");
    wait_for(&relay, 503, 20).await;
    let (status, body) = send(1).await;
    assert_eq!(status, 503, "{body}");

    broker("rabbit-start-app");
    wait_for(&relay, 200, 60).await;
    let (status, body) = send(2).await;
    assert_eq!(status, 200, "{body}");
}
