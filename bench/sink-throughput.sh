#!/usr/bin/env bash
# Deliveries/s through one sink, with the sink's full guarantee (file: flushed; kafka: acks=all;
# amqp: publisher confirms; nats: JetStream PubAck), 64 keep-alive connections, wrk.
# Usage: bench/sink-throughput.sh file|kafka|amqp|nats [seconds]
# One signed BOOKING_CREATED body is sent over and over (the relay has no de-duplication yet).
set -euo pipefail
cd "$(dirname "$0")/.."
SINK=${1:?file|kafka|amqp|nats}
SECS=${2:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q
W=$(mktemp -d)
PORT=18080
SECRET=bench-secret
BODY=../shared/fixtures/deliveries/BOOKING_CREATED.body
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ "$SINK" = amqp ] && scripts/brokers.sh stop >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

case "$SINK" in
  file) SINKCONF=$'type = "file"\npath = "/dev/null"' ;;
  nats)
    nats-server -js -sd "$W/js" -a 127.0.0.1 -p 14333 >/dev/null 2>&1 & pids+=($!)
    SINKCONF=$'type = "nats"\nurl = "nats://127.0.0.1:14333"\nstream = { name = "CAL", subjects = ["cal.>"] }' ;;
  kafka)
    tansu broker --listener-url tcp://127.0.0.1:19393 --advertised-listener-url tcp://127.0.0.1:19393 \
      --storage-engine memory://tansu/ >"$W/tansu.log" 2>&1 & pids+=($!)
    SINKCONF=$'type = "kafka"\nbrokers = "127.0.0.1:19393"\ncreate_topics = true' ;;
  amqp)
    scripts/brokers.sh start >/dev/null
    SINKCONF=$'type = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:25682/%2f"\nmandatory = false' ;;
  *) echo "unknown sink $SINK" >&2; exit 2 ;;
esac
cat > "$W/relay.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
[log]
level = "warn"
[[sources]]
name = "cal"
path = "/webhooks/cal"
secrets = ["$SECRET"]
[sinks.out]
$SINKCONF
[[routes]]
triggers = ["*"]
sinks = ["out"]
CONF
target/release/cal-relay serve --config "$W/relay.toml" 2>"$W/relay.log" & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
SIG=$(python3 -c "import hmac,hashlib,sys;print(hmac.new(b'$SECRET',open('$BODY','rb').read(),hashlib.sha256).hexdigest())")
export BODY_FILE=$BODY SIGNATURE=$SIG
# Warm-up (creates the topic/stream), then the measured run.
wrk -t2 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$PORT/webhooks/cal" >/dev/null
echo "== $SINK sink: wrk -t2 -c64 -d${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -s bench/post.lua "http://127.0.0.1:$PORT/webhooks/cal"
