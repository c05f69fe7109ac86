# What bench/run.sh and bench/ab.sh share: the work directory, port and secret, the signed
# bodies, wrk runs with CPU, RSS and latency per row, and a relay started on $PORT with every
# trigger routed to one sink. Expects LOG_TOML when a relay starts; RELAY_BIN picks the binary.
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
W=$(mktemp -d)
SECRET=bench-secret
PORT=18080
pids=()
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# The [log] table of the shipped configuration.
SHIPPED_LOG=$(awk '/^\[/ {on = ($0 == "[log]")} on' config/cal-relay.toml)

# kill_started: end every process the bench started (for the scripts' cleanup).
kill_started() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}

# gen_bodies N: N distinct signed BOOKING_CREATED deliveries, exported as BODIES.
gen_bodies() {
  target/release/bench-clients gen --fixture tests/fixtures/deliveries/BOOKING_CREATED.body \
    --secret "$SECRET" --count "$1" --out "$W/bodies.tsv"
  export BODIES="$W/bodies.tsv"
}

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.2f", v}'; }
kb() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# cpu PID: user and system CPU of the process so far, in clock ticks ("utime stime").
cpu() { awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo "0 0"; }
# run_wrk NAME PID SECS: load the server on $PORT; appends a row to results.
run_wrk() {
  local name=$1 pid=$2 secs=$3
  : > "$W/$name.rss"
  ( while kill -0 "$pid" 2>/dev/null; do kb "$pid" VmRSS >> "$W/$name.rss"; sleep 1; done ) & local sampler=$!
  local cpu0 cpu1
  cpu0=$(cpu "$pid")
  wrk -t2 -c64 -d"${secs}s" --latency -s bench/deliveries.lua "http://127.0.0.1:$PORT/webhooks/cal" > "$W/$name.wrk"
  cpu1=$(cpu "$pid")
  kill "$sampler" 2>/dev/null || true
  # CPU per delivery: the server's user and system time over the run, divided by requests.
  local reqs; reqs=$(awk '/requests in/ {print $1}' "$W/$name.wrk")
  read -r u0 s0 <<< "$cpu0"; read -r u1 s1 <<< "$cpu1"
  awk -v n="$name" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v r="${reqs:-1}" -v t="$TICK_US" \
    'BEGIN {printf "%s %.2f %.2f\n", n, du * t / r, ds * t / r}' >> "$W/cpu"
  local rps p50 p99 non2xx errs hwm early late
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$W/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$W/$name.wrk" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' "$W/$name.wrk" | to_ms)
  non2xx=$(awk '/Non-2xx/ {print $5}' "$W/$name.wrk"); non2xx=${non2xx:-0}
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$W/$name.wrk"); errs=${errs:-0}
  hwm=$(kb "$pid" VmHWM)
  early=$(awk 'NR==3' "$W/$name.rss"); late=$(tail -n1 "$W/$name.rss")
  printf "%s %s %s %s %s %s %s %s %s\n" "$name" "$rps" "$p50" "$p99" "$non2xx" "$errs" "$((hwm/1024))" "$((${early:-0}/1024))" "$((${late:-0}/1024))" >> "$W/results"
}


# start_relay NAME MODE SINK-TOML: the relay on $PORT with every trigger routed to one sink,
# logging as $LOG_TOML says (stderr to a file, as a container runtime collects it).
start_relay() {
  local name=$1 mode=$2 sink=$3
  cat > "$W/$name.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
$LOG_TOML
[delivery]
mode = "$mode"
dir = "$W/spool-$name"
dedup_window_secs = 0
[[sources]]
name = "cal"
path = "/webhooks/cal"
secrets = ["$SECRET"]
replay_window_secs = 0   # the bench bodies keep the fixture's createdAt
[sinks.out]
$sink
[[routes]]
triggers = ["*"]
sinks = ["out"]
CONF
  "${RELAY_BIN:-target/release/cal-relay}" serve --config "$W/$name.toml" 2>"$W/$name.log" & RELAY=$!
  pids+=($RELAY)
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return; sleep 0.1; done
  echo "relay $name not ready:" >&2; cat "$W/$name.log" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

