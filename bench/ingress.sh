#!/usr/bin/env bash
# What hostile ingress costs the relay (release build, file sink to /dev/null, confirm mode,
# default [server] limits unless said):
#   1. peak RSS while 5,000 idle connections are opened (the default max_connections holds
#      1,024 of them; the rest wait in the kernel's backlog), and with max_connections = 5000;
#   2. peak RSS with max_in_flight (128) deliveries of max_body_bytes (1 MiB) each in flight;
#   3. valid deliveries/s (wrk -c16) alone, then beside 200 connections sending wrong
#      signatures as fast as they can (wrk -c200), in the same run.
# Usage: bench/ingress.sh [seconds per load run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q -p cal-relay -p bench-clients
W=$(mktemp -d)
PORT=18090
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
kb() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }

start() { # start EXTRA-SERVER-TOML
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  cat > "$W/relay.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
$1
[log]
level = "error"
[delivery]
dedup_window_secs = 0
[[sources]]
name = "cal"
path = "/webhooks/cal"
secrets = ["bench-secret"]
replay_window_secs = 0
[sinks.out]
type = "file"
path = "/dev/null"
[[routes]]
triggers = ["*"]
sinks = ["out"]
CONF
  target/release/cal-relay serve --config "$W/relay.toml" 2>"$W/relay.log" &
  pid=$!
  until target/release/cal-relay probe --url "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do sleep 0.1; done
}

idle() { # idle N: open N connections, hold them 3 s; peak RSS in MB
  python3 - "$PORT" "$1" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    held.append(s)
time.sleep(3)
PY
}

echo "== idle connections"
start ""
base=$(kb "$pid" VmRSS)
idle 5000
printf "RSS at rest %d MB; 5000 idle connections opened, default max_connections (1024): peak %d MB\n" \
  $((base/1024)) $(( $(kb "$pid" VmHWM) / 1024 ))
start "max_connections = 5000"
idle 5000
printf "5000 idle connections, max_connections = 5000: peak %d MB\n" $(( $(kb "$pid" VmHWM) / 1024 ))

echo "== max_in_flight deliveries of max_body_bytes"
start ""
python3 - "$PORT" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
body = b"x" * (1 << 20)
head = ("POST /webhooks/cal HTTP/1.1\r\nHost: x\r\nX-Cal-Signature-256: %s\r\nContent-Length: %d\r\n\r\n" % ("0" * 64, len(body))).encode()
held = []
for _ in range(128):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head + body[:-1])  # all but the last byte: buffered, in flight, not yet checked
    held.append(s)
time.sleep(2)
PY
printf "128 in flight x 1 MiB bodies: peak %d MB (bound: max_in_flight x max_body_bytes = 128 MiB)\n" $(( $(kb "$pid" VmHWM) / 1024 ))

echo "== valid deliveries beside 200 wrong-signature clients"
target/release/bench-clients gen --fixture tests/fixtures/deliveries/BOOKING_CREATED.body \
  --secret bench-secret --count 5000 --out "$W/valid.tsv"
target/release/bench-clients gen --fixture tests/fixtures/deliveries/BOOKING_CREATED.body \
  --secret not-the-secret --count 5000 --out "$W/forged.tsv"
start ""
rate() { awk '/Requests\/sec/ {printf "%.0f", $2}' "$1"; }
BODIES="$W/valid.tsv" wrk -t1 -c16 -d"${SECS}s" -s bench/deliveries.lua "http://127.0.0.1:$PORT/webhooks/cal" > "$W/alone.wrk"
BODIES="$W/forged.tsv" wrk -t1 -c200 -d"$((SECS + 2))s" -s bench/deliveries.lua "http://127.0.0.1:$PORT/webhooks/cal" > "$W/attack.wrk" &
attack=$!
sleep 1
BODIES="$W/valid.tsv" wrk -t1 -c16 -d"${SECS}s" -s bench/deliveries.lua "http://127.0.0.1:$PORT/webhooks/cal" > "$W/beside.wrk"
wait "$attack"
alone=$(rate "$W/alone.wrk"); beside=$(rate "$W/beside.wrk"); forged=$(rate "$W/attack.wrk")
non2xx=$(awk '/Non-2xx/ {print $5}' "$W/beside.wrk"); non2xx=${non2xx:-0}
printf "valid alone: %s/s; valid beside 200 forging clients: %s/s (%.0f %%), %s non-2xx; forged answered 401: %s/s\n" \
  "$alone" "$beside" "$(echo "100 * $beside / $alone" | bc -l)" "$non2xx" "$forged"
