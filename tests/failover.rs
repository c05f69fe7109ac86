//! Past one machine: a three-node NATS JetStream cluster with an R3 stream, its stream leader
//! killed (SIGKILL) under a steady load and restarted, in confirm and spool mode; and two relay
//! replicas, each with its own spool, taking the same deliveries. Nothing acknowledged is lost.
//! Each test appends its counts to `target/failover-results.txt` (printed by scripts/test.sh).

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use support::nats::NatsCluster;
use support::*;

const STREAM: &str = "CAL";

fn relay_config(urls: &[String], spool: bool) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let sink = format!(
        "type = \"nats\"\nurl = [{}]\nack_timeout_ms = 10000\nstream = {{ name = \"{STREAM}\", subjects = [\"cal.>\"], replicas = 3 }}",
        list.join(", ")
    );
    let mut config = one_sink_config("bus", &sink);
    if spool {
        config.push_str(&spool_section(
            "retry_initial_ms = 100\nretry_max_ms = 1000",
        ));
    }
    config
}

async fn js(cluster: &NatsCluster) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls())
        .await
        .unwrap();
    jetstream::new(client)
}

/// The current leader of the stream, once the cluster has one.
async fn stream_leader(js: &jetstream::Context) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = js.get_stream(STREAM).await {
            if let Ok(info) = s.info().await {
                if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    return leader;
                }
            }
        }
        assert!(Instant::now() < deadline, "the stream never had a leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Nats-Msg-Id` of every message in the stream (read from any live node).
async fn stream_ids(js: &jetstream::Context) -> Vec<String> {
    support::nats::messages_of(js, STREAM)
        .await
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// What a load run saw.
#[derive(Default)]
struct Tally {
    /// Delivery ids answered 2xx.
    acknowledged: HashSet<String>,
    failed: usize,
    /// First and last 5xx, as offsets from the kill.
    failing: Option<(Duration, Duration)>,
}

/// `clients` senders post distinct deliveries to `addrs` (round robin) until `stop`.
async fn load(addrs: Vec<SocketAddr>, clients: usize, run: Duration, kill_at: Instant) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + run;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let tally = tally.clone();
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let body = booking(&format!("failover-{c}-{n}"), n);
                    let id = sha256_hex(&body);
                    let addr = addrs[(n as usize) % addrs.len()];
                    let result = post(addr, signed_booking(&body)).await;
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok((status, _)) if (200..300).contains(&status) => {
                            t.acknowledged.insert(id);
                        }
                        _ => {
                            t.failed += 1;
                            let at = kill_at.elapsed();
                            t.failing = Some(match t.failing {
                                None => (at, at),
                                Some((first, _)) => (first, at),
                            });
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap()
}

/// What a failover left behind: acknowledged ids missing from `ids` (what the broker holds),
/// extra copies in it, and how long the 5xx answers lasted.
struct Outcome {
    lost: usize,
    duplicates: usize,
    failover: String,
}

fn outcome(tally: &Tally, ids: &[String]) -> Outcome {
    let present: HashSet<&String> = ids.iter().collect();
    Outcome {
        lost: tally
            .acknowledged
            .iter()
            .filter(|id| !present.contains(id))
            .count(),
        duplicates: ids.len() - present.len(),
        failover: tally
            .failing
            .map(|(a, b)| format!("{:.1}s", (b.saturating_sub(a)).as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
    }
}

fn record(line: &str) {
    println!("{line}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/failover-results.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

async fn wait_drained(relay: &RelayProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while relay.metric("cal_relay_spool_entries").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the spool never drained: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader-kill tests load both cores: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn leader_killed_under_load(spool: bool) {
    let _one_at_a_time = HEAVY.lock().await;
    let mut cluster = NatsCluster::start();
    let relay = RelayProcess::start(&relay_config(&cluster.urls(), spool)).await;
    let js = js(&cluster).await;
    // The first delivery creates the R3 stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = post(relay.addr, signed_booking(&booking("warm-up", 0)))
            .await
            .unwrap();
        if (200..300).contains(&status) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never took a delivery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = stream_leader(&js).await;

    let kill_at = Instant::now() + Duration::from_secs(2);
    let addrs = vec![relay.addr];
    let load = tokio::spawn(load(addrs, 8, Duration::from_secs(12), kill_at));
    tokio::time::sleep_until(kill_at.into()).await;
    cluster.node(&leader).kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.restart(&leader);
    let tally = load.await.unwrap();
    let new_leader = stream_leader(&js).await;

    if spool {
        wait_drained(&relay).await;
    }
    let ids = stream_ids(&js).await;
    let Outcome {
        lost,
        duplicates,
        failover,
    } = outcome(&tally, &ids);
    record(&format!(
        "nats cluster, {} mode, leader {leader} killed then restarted (new leader {new_leader}): acknowledged {}, present {}, lost {lost}, duplicates {duplicates}, 5xx {}, 5xx span {failover}",
        if spool { "spool" } else { "confirm" },
        tally.acknowledged.len(),
        tally.acknowledged.len() - lost,
        tally.failed,
    ));
    assert!(tally.acknowledged.len() > 100, "too little load to tell");
    assert_eq!(lost, 0, "acknowledged deliveries missing from the stream");
    assert_eq!(duplicates, 0, "JetStream de-duplication keeps one copy");
    if spool {
        assert_eq!(
            tally.failed, 0,
            "spool mode answered 5xx during the failover"
        );
        assert_eq!(
            relay
                .metric("cal_relay_dead_letters_total{reason=\"no_stream\",sink=\"bus\"}")
                .await,
            0.0
        );
    }
}

#[tokio::test]
async fn nats_leader_killed_confirm_mode_loses_nothing_acknowledged() {
    leader_killed_under_load(false).await;
}

#[tokio::test]
async fn nats_leader_killed_spool_mode_answers_no_5xx_and_loses_nothing() {
    leader_killed_under_load(true).await;
}

#[tokio::test]
async fn two_replicas_with_their_own_spools_keep_one_copy_per_delivery() {
    let cluster = NatsCluster::start();
    let a = RelayProcess::start(&relay_config(&cluster.urls(), true)).await;
    let b = RelayProcess::start(&relay_config(&cluster.urls(), true)).await;
    let mut sent = HashSet::new();
    let mut both = 0;
    for n in 0..300u64 {
        let body = booking(&format!("replicas-{n}"), n);
        sent.insert(sha256_hex(&body));
        // Alternate replicas; every fifth delivery also lands on the other one, as a Cal.com
        // retry behind a load balancer would.
        let (first, second) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (status, text) = post(first.addr, signed_booking(&body)).await.unwrap();
        assert_eq!(status, 202, "{text}");
        if n % 5 == 0 {
            let (status, text) = post(second.addr, signed_booking(&body)).await.unwrap();
            assert_eq!(status, 202, "{text}");
            both += 1;
        }
    }
    wait_drained(&a).await;
    wait_drained(&b).await;
    let ids = stream_ids(&js(&cluster).await).await;
    let unique: HashSet<&String> = ids.iter().collect();
    record(&format!(
        "nats cluster, two spooling replicas: sent {} (of them {both} to both replicas), in the stream {} messages, {} unique",
        sent.len(),
        ids.len(),
        unique.len()
    ));
    assert_eq!(unique.len(), sent.len(), "every delivery is in the stream");
    assert_eq!(
        ids.len(),
        sent.len(),
        "JetStream kept one copy of each (Nats-Msg-Id)"
    );
}

/// tansu brokers cannot form one cluster with the storage engines these tests run (memory,
/// SQLite: each broker owns its storage), so the Kafka side is the relay's broker list: one
/// address dead, one live. Every delivery is acknowledged and on the topic.
#[tokio::test]
async fn kafka_broker_list_with_a_dead_broker_delivers_through_the_live_one() {
    let tansu = support::kafka::Tansu::start();
    let dead = free_port();
    let sink = format!(
        "type = \"kafka\"\nbrokers = \"127.0.0.1:{dead},{}\"\nmessage_timeout_ms = 10000\ncreate_topics = true",
        tansu.bootstrap()
    );
    let relay = RelayProcess::start(&one_sink_config("kafka", &sink)).await;
    relay.wait_readyz(200, 30).await;
    let mut acknowledged = HashSet::new();
    for n in 0..20u64 {
        let body = booking(&format!("kafka-list-{n}"), n);
        let (status, text) = post(relay.addr, signed_booking(&body)).await.unwrap();
        assert_eq!(status, 200, "{text}");
        acknowledged.insert(sha256_hex(&body));
    }
    let b = tansu.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        support::kafka::Tansu::reader(&b).read("cal.booking.created", 20, Duration::from_secs(10))
    })
    .await
    .unwrap();
    let present: HashSet<String> = records
        .iter()
        .filter_map(|m| support::kafka::header(m, "cal-delivery-id"))
        .collect();
    record(&format!(
        "kafka, broker list with one dead address: acknowledged {}, on the topic {}",
        acknowledged.len(),
        present.intersection(&acknowledged).count()
    ));
    assert_eq!(present, acknowledged);
}

async fn rabbit_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Exchange `cal` as the relay declares it, and a quorum queue bound to every `cal.` key.
async fn quorum_queue(url: &str) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let (_conn, ch) = rabbit_channel(url).await;
    ch.exchange_declare(
        "cal".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "bookings".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        "bookings".into(),
        "cal".into(),
        "cal.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// `message_id` of every message in the quorum queue.
async fn queue_ids(url: &str) -> Vec<String> {
    let (_conn, ch) = rabbit_channel(url).await;
    support::amqp::drain(&ch, "bookings", Duration::from_secs(2))
        .await
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .collect()
}

async fn rabbit_node_killed_under_load(spool: bool) {
    let _one_at_a_time = HEAVY.lock().await;
    let mut cluster = support::rabbit_cluster::RabbitCluster::start();
    quorum_queue(&cluster.url(1)).await;
    let list: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let mut config = one_sink_config(
        "rabbit",
        &format!(
            "type = \"amqp\"\nurl = [{}]\nconfirm_timeout_ms = 10000",
            list.join(", ")
        ),
    );
    if spool {
        config.push_str(&spool_section(
            "retry_initial_ms = 100\nretry_max_ms = 1000",
        ));
    }
    let relay = RelayProcess::start(&config).await;
    relay.wait_readyz(200, 60).await;

    // The relay connects to the first node in its list: that is the one killed.
    let kill_at = Instant::now() + Duration::from_secs(2);
    let load = tokio::spawn(load(vec![relay.addr], 8, Duration::from_secs(12), kill_at));
    tokio::time::sleep_until(kill_at.into()).await;
    cluster.kill(0);
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.up(0);
    let tally = load.await.unwrap();
    if spool {
        wait_drained(&relay).await;
    }
    let ids = queue_ids(&cluster.url(1)).await;
    let Outcome {
        lost,
        duplicates,
        failover,
    } = outcome(&tally, &ids);
    record(&format!(
        "rabbitmq cluster (quorum queue), {} mode, connected node r1 killed then restarted: acknowledged {}, present {}, lost {lost}, duplicates {duplicates} (same cal-delivery-id), 5xx {}, 5xx span {failover}",
        if spool { "spool" } else { "confirm" },
        tally.acknowledged.len(),
        tally.acknowledged.len() - lost,
        tally.failed,
    ));
    assert!(tally.acknowledged.len() > 100, "too little load to tell");
    assert_eq!(lost, 0, "acknowledged deliveries missing from the queue");
    if spool {
        assert_eq!(
            tally.failed, 0,
            "spool mode answered 5xx during the failover"
        );
    }
}

#[tokio::test]
async fn rabbitmq_node_killed_confirm_mode_loses_nothing_acknowledged() {
    rabbit_node_killed_under_load(false).await;
}

#[tokio::test]
async fn rabbitmq_node_killed_spool_mode_answers_no_5xx_and_loses_nothing() {
    rabbit_node_killed_under_load(true).await;
}

/// RabbitMQ has no broker-side de-duplication: a delivery taken by both replicas is queued
/// twice, and both copies carry the same `cal-delivery-id` for the consumer to drop one.
#[tokio::test]
async fn two_replicas_on_rabbitmq_duplicates_carry_the_same_delivery_id() {
    use support::amqp;
    let exchange = amqp::unique("x");
    let (_conn, ch) = amqp::channel().await;
    let queue = amqp::bound_queue(&ch, &exchange, "cal.#").await;
    let sink = format!(
        "type = \"amqp\"\nurl = \"{}\"\nexchange = \"{exchange}\"",
        amqp::amqp_url()
    );
    let config = one_sink_config("rabbit", &sink) + &spool_section("");
    let a = RelayProcess::start(&config).await;
    let b = RelayProcess::start(&config).await;
    let mut sent = HashSet::new();
    for n in 0..50u64 {
        let body = booking(&format!("rabbit-replicas-{n}"), n);
        sent.insert(sha256_hex(&body));
        let (first, second) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            post(first.addr, signed_booking(&body)).await.unwrap().0,
            202
        );
        if n % 5 == 0 {
            assert_eq!(
                post(second.addr, signed_booking(&body)).await.unwrap().0,
                202
            );
        }
    }
    wait_drained(&a).await;
    wait_drained(&b).await;
    let got = amqp::drain(&ch, &queue, Duration::from_secs(2)).await;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for d in &got {
        *by_id
            .entry(amqp::header(d, "cal-delivery-id").unwrap())
            .or_default() += 1;
    }
    record(&format!(
        "rabbitmq, two spooling replicas: sent 50 (10 to both), queued {}, distinct cal-delivery-id {}",
        got.len(),
        by_id.len()
    ));
    assert_eq!(by_id.keys().cloned().collect::<HashSet<_>>(), sent);
    assert_eq!(
        got.len(),
        60,
        "each delivery sent to both replicas is queued twice"
    );
    assert_eq!(by_id.values().filter(|&&c| c == 2).count(), 10);
}
