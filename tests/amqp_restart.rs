//! RabbitMQ restarted under a running relay: deliveries during the outage answer 503 and
//! `/readyz` says so; later ones succeed without restarting the relay. Its own test binary, as it
//! stops the shared broker for a while.

mod support;

use support::amqp::*;
use support::*;

const PATH: &str = SOURCE_PATH;

#[tokio::test]
async fn deliveries_fail_during_a_broker_restart_and_succeed_after() {
    let exchange = unique("cal");
    let sink = format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"\nmandatory = false\nconfirm_timeout_ms = 2000",
        amqp_url()
    );
    let config = one_sink_config("rabbit", &sink);
    let relay = RelayProcess::start(&config).await;
    relay.wait_readyz(200, 20).await;
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
    relay.wait_readyz(503, 20).await;
    let (status, body) = send(1).await;
    assert_eq!(status, 503, "{body}");

    broker("rabbit-start-app");
    relay.wait_readyz(200, 60).await;
    let (status, body) = send(2).await;
    assert_eq!(status, 200, "{body}");
}
