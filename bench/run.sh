#!/usr/bin/env bash
# cal-relay benchmarks: everything measured in one run, under the same load.
#   1. baseline: a bare hyper 1.x server that reads the body and answers 200 (bench/baseline),
#      and floor: the least work a correct relay does (bench/floor: HMAC check, SHA-256 id, one
#      JSON scan, one write(2) per delivery), each run before and after the relay's run
#   2. the relay (verify, normalize, route) with the file sink writing to /dev/null, confirm mode
#      (also the RSS run: BENCH_RSS_SECS long, RSS sampled every second), then the baseline
#      again; the relay is compared with the mean of both baseline runs
#   3. the same in spool mode (fsync'd log before the answer): the cost of durable acceptance
#   4. per broker (Kafka on tansu, RabbitMQ, NATS JetStream): its own client publishing the same
#      messages with the same guarantee (bench/clients), then the relay with that sink.
# Load: wrk, 2 threads, 64 keep-alive connections, BENCH_BODIES distinct signed ~2 KB
# BOOKING_CREATED deliveries in rotation; broker clients keep 64 publishes in flight. The relay
# runs with de-duplication off, so repeated bodies are published every time, and with the logging
# settings of config/cal-relay.toml (what users run), except the `relay-file-warn` rows:
# confirm mode at `warn`, three rounds alternating with `relay-file-info` ones, to show what the
# per-request log lines cost (medians).
# Usage: bench/run.sh [seconds per run, default 10]   (after scripts/test.sh installed the brokers)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-${BENCH_SECS:-10}}
RSS_SECS=${BENCH_RSS_SECS:-60}
NBODIES=${BENCH_BODIES:-50000}
export PATH="$HOME/.cargo/bin:$PATH"
for tool in nats-server tansu; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/test.sh once" >&2; exit 2; }
done
# One release profile (the workspace's [profile.release]) for baseline, floor and relay.
cargo build --release --locked -q -p cal-relay -p bench-baseline -p bench-floor -p bench-clients
# shellcheck source=bench/lib.sh
source bench/lib.sh
cleanup() {
  kill_started
  scripts/brokers.sh stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

gen_bodies "$NBODIES"
echo "== $NBODIES distinct bodies, $(awk -F'\t' '{n+=length($2)} END {printf "%.0f", n/NR}' "$W/bodies.tsv") bytes on average; $SECS s per run"

echo "== brokers"
nats-server -js -sd "$W/js" -a 127.0.0.1 -p 14333 >/dev/null 2>&1 & pids+=($!)
tansu broker --listener-url tcp://127.0.0.1:19393 --advertised-listener-url tcp://127.0.0.1:19393 \
  --storage-engine memory://tansu/ >"$W/tansu.log" 2>&1 & pids+=($!)
scripts/brokers.sh start >/dev/null
AMQP="amqp://guest:guest@127.0.0.1:25682/%2f"

LOG_TOML=$SHIPPED_LOG

# client NAME ARGS...: a broker's own client; appends a row.
client() {
  local name=$1; shift
  local TIMEFORMAT='%U %S' times
  times=$( { time target/release/bench-clients "$@" --bodies "$BODIES" --secs "$SECS" --inflight 64 > "$W/$name.out"; } 2>&1 )
  awk -v n="$name" -v t="$times" '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]}}
    END {split(t, c, " "); r=v["rate"] * '"$SECS"'; if (r < 1) r = 1; printf "%s %.2f %.2f\n", n, c[1] * 1e6 / r, c[2] * 1e6 / r}' "$W/$name.out" >> "$W/cpu"
  awk -v n="$name" '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]}} END {printf "%s %s %s %s %s 0 - - -\n", n, v["rate"], v["p50_ms"], v["p99_ms"], v["errors"]}' "$W/$name.out" >> "$W/results"
}

# baseline NAME: the bare server for SECS. It runs before and after the relay's file-sink run,
# and the relay is compared with the mean of the two, so drift of the machine during the run
# shows and does not tilt the ratio.
baseline() {
  target/release/bench-baseline "127.0.0.1:$PORT" 2>/dev/null & B=$!; pids+=($B)
  sleep 0.5
  run_wrk "$1" "$B" "$SECS"; stop "$B"
}

# floor NAME: the minimal correct relay for SECS, likewise before and after.
floor() {
  target/release/bench-floor "127.0.0.1:$PORT" "$SECRET" /dev/null 2>/dev/null & B=$!; pids+=($B)
  sleep 0.5
  run_wrk "$1" "$B" "$SECS"; stop "$B"
}

echo "== baseline"
baseline baseline
echo "== floor"
floor floor

echo "== relay, file sink (/dev/null), confirm, ${RSS_SECS} s"
start_relay file confirm $'type = "file"\npath = "/dev/null"'
run_wrk relay-file "$RELAY" "$RSS_SECS"; stop "$RELAY"

echo "== baseline and floor again"
baseline baseline-after
floor floor-after

echo "== relay, file sink (/dev/null), spool (fsync)"
start_relay spool spool $'type = "file"\npath = "/dev/null"'
run_wrk relay-file-spool "$RELAY" "$SECS"; stop "$RELAY"

echo "== relay, file sink, confirm: shipped logging against warn, three alternating rounds"
for round in 1 2 3; do
  LOG_TOML=$SHIPPED_LOG
  start_relay "info-$round" confirm $'type = "file"\npath = "/dev/null"'
  run_wrk "relay-file-info-$round" "$RELAY" "$SECS"; stop "$RELAY"
  LOG_TOML=$'[log]\nlevel = "warn"'
  start_relay "warn-$round" confirm $'type = "file"\npath = "/dev/null"'
  run_wrk "relay-file-warn-$round" "$RELAY" "$SECS"; stop "$RELAY"
done
LOG_TOML=$SHIPPED_LOG

echo "== kafka"
# The relay first: it creates the topic (3 partitions) that the client then writes to too.
start_relay kafka confirm $'type = "kafka"\nbrokers = "127.0.0.1:19393"\ncreate_topics = true'
run_wrk relay-kafka "$RELAY" "$SECS"; stop "$RELAY"
client kafka-client kafka --brokers 127.0.0.1:19393

echo "== amqp"
client amqp-client amqp --url "$AMQP" --exchange cal
# The relay's runs start from an empty queue and stream too.
target/release/bench-clients amqp --url "$AMQP" --exchange cal --setup-only --bodies "$BODIES" >/dev/null
start_relay amqp confirm "type = \"amqp\""$'\n'"url = \"$AMQP\""$'\nexchange = "cal"'
run_wrk relay-amqp "$RELAY" "$SECS"; stop "$RELAY"

echo "== nats"
client nats-client nats --url nats://127.0.0.1:14333
target/release/bench-clients nats --url nats://127.0.0.1:14333 --setup-only --bodies "$BODIES" >/dev/null
start_relay nats confirm $'type = "nats"\nurl = "nats://127.0.0.1:14333"\nstream = { name = "CAL", subjects = ["cal.>"], duplicate_window_secs = 1 }'
run_wrk relay-nats "$RELAY" "$SECS"; stop "$RELAY"

LAT_RATE=${BENCH_LATENCY_RATE:-1000}
echo "== delivery latency into NATS JetStream, ${LAT_RATE} deliveries/s"
for mode in confirm spool; do
  target/release/bench-clients nats --url nats://127.0.0.1:14333 --setup-only --bodies "$BODIES" >/dev/null
  start_relay "latency-$mode" "$mode" $'type = "nats"\nurl = "nats://127.0.0.1:14333"\nstream = { name = "CAL", subjects = ["cal.>"], duplicate_window_secs = 1 }'
  target/release/bench-clients latency --relay "127.0.0.1:$PORT" --nats nats://127.0.0.1:14333 \
    --bodies "$BODIES" --secs "$SECS" --rate "$LAT_RATE" > "$W/latency-$mode.out"
  stop "$RELAY"
done

echo
echo "== results ($(nproc) cores; load generator, relay and brokers on this machine)"
awk '
  FNR==NR { cu[$1]=$2; cs[$1]=$3; next }
  { name[NR]=$1; rps[$1]=$2; p50[$1]=$3; p99[$1]=$4; bad[$1]=$5; err[$1]=$6; rss[$1]=$7; early[$1]=$8; late[$1]=$9; order[++n]=$1 }
  END {
    brps=(rps["baseline"]+rps["baseline-after"])/2; bp99=(p99["baseline"]+p99["baseline-after"])/2
    frps=(rps["floor"]+rps["floor-after"])/2; fu=(cu["floor"]+cu["floor-after"])/2
    printf "| %-17s | %9s | %8s | %8s | %8s | %9s | %9s | %13s | %-52s |\n", "run", "req/s", "p50 ms", "p99 ms", "non-2xx", "user us", "sys us", "peak RSS MB", "ratio"
    printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "-------------------", "-----------", "----------", "----------", "----------", "-----------", "-----------", "---------------", "------------------------------------------------------"
    for (i=1; i<=n; i++) {
      k=order[i]; r=""
      if (k=="relay-file") r=sprintf("%.1f%% of floor, %.1f%% of baseline; user CPU %+.2f us vs floor", 100*rps[k]/frps, 100*rps[k]/brps, cu[k]-fu)
      if (k=="floor") r=sprintf("%.1f%% of baseline", 100*frps/brps)
      if (k=="relay-file-spool") r=sprintf("%.1f%% of confirm mode (fsync cost)", 100*rps[k]/rps["relay-file"])
      if (k ~ /^relay-file-(info|warn)-[0-9]$/) continue
      if (k ~ /^relay-(kafka|amqp|nats)$/) { c=k; sub(/relay-/,"",c); c=c "-client"; r=sprintf("%.1f%% of %s, p99 %.1fx", 100*rps[k]/rps[c], c, (p99[c] > 0 ? p99[k]/p99[c] : 0)) }
      if (rss[k]=="-") m="-"; else m=sprintf("%s (%s -> %s)", rss[k], early[k], late[k])
      printf "| %-17s | %9s | %8s | %8s | %8s | %9s | %9s | %13s | %-52s |\n", k, rps[k], p50[k], p99[k], bad[k]+err[k], cu[k], cs[k], m, r
    }
    # The log rounds: medians of three, info against warn.
    for (lvl = 1; lvl <= 2; lvl++) {
      l = (lvl == 1 ? "info" : "warn")
      for (j = 1; j <= 3; j++) { a[j] = rps["relay-file-" l "-" j] + 0; u[j] = cu["relay-file-" l "-" j] + 0; sy[j] = cs["relay-file-" l "-" j] + 0 }
      med[l] = median3(a[1], a[2], a[3]); mu[l] = median3(u[1], u[2], u[3]); ms[l] = median3(sy[1], sy[2], sy[3])
      rounds[l] = sprintf("%d/%d/%d", a[1], a[2], a[3])
    }
    for (lvl = 1; lvl <= 2; lvl++) {
      l = (lvl == 1 ? "info" : "warn")
      r = (l == "info") ? sprintf("%.1f%% of warn (rounds %s)", (med["warn"] > 0 ? 100*med["info"]/med["warn"] : 0), rounds["info"]) : sprintf("rounds %s", rounds["warn"])
      printf "| %-17s | %9s | %8s | %8s | %8s | %9.2f | %9.2f | %13s | %-52s |\n", "relay-file-" l, med[l], "-", "-", "-", mu[l], ms[l], "-", r
    }
  }
  function median3(x, y, z) { return (x > y) ? ((y > z) ? y : ((x > z) ? z : x)) : ((x > z) ? x : ((y > z) ? z : y)) }
  ' "$W/cpu" "$W/results"
echo "(user/sys us: CPU per delivery of the server process, or of the broker client for client rows;"
echo " ratios against the mean of the runs before and after. Peak RSS: VmHWM; in brackets RSS 3 s"
echo " into the run -> at its end. Client rows: errors in non-2xx. relay-file-info / -warn: medians"
echo " of three alternating confirm-mode rounds, the shipped [log] settings against level = warn.)"
echo
echo "| delivery latency (NATS) | deliveries/s | delivered | lost | refused | p50 ms | p99 ms |"
echo "|-------------------------|--------------|-----------|------|---------|--------|--------|"
for mode in confirm spool; do
  awk -v m="$mode" -v r="$LAT_RATE" '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]}}
    END {printf "| relay-nats-%-12s | %12s | %9s | %4s | %7s | %6s | %6s |\n", m, r, v["delivered"], v["lost"], v["refused"], v["p50_ms"], v["p99_ms"]}' "$W/latency-$mode.out"
done
echo "(from sending the request to an ordered JetStream consumer holding the message; the relay"
echo " publishes with the stream's PubAck in both modes, after the answer in spool mode)"
