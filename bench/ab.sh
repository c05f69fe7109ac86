#!/usr/bin/env bash
# A/B of two relay binaries: alternating rounds of confirm and spool mode with the file sink
# (/dev/null), at the logging settings of config/cal-relay.toml, under bench/run.sh's load (wrk,
# 2 threads, 64 connections, distinct signed deliveries); medians per binary and mode, and the
# spread (lowest and highest) of deliveries/s, so a change is judged against the noise.
# Usage: bench/ab.sh BIN_A BIN_B [rounds, default 3] [seconds per run, default 10]
#   BENCH_LOG_A / BENCH_LOG_B: another [log] table for one side (a release that predates a key).
#   e.g. git worktree add /tmp/before HEAD~1 && (cd /tmp/before && cargo build --release)
#        bench/ab.sh /tmp/before/target/release/cal-relay target/release/cal-relay
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
ROUNDS=${3:-3}
SECS=${4:-10}
NBODIES=${BENCH_BODIES:-20000}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p bench-clients
# shellcheck source=bench/lib.sh
source bench/lib.sh
cleanup() {
  kill_started
  rm -rf "$W"
}
trap cleanup EXIT
gen_bodies "$NBODIES"

for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    for mode in confirm spool; do
      name="$side-$mode-$round"
      echo "== round $round: $side ($mode)"
      log_var="BENCH_LOG_$side"
      LOG_TOML=${!log_var:-$SHIPPED_LOG}
      RELAY_BIN=${!side} start_relay "$name" "$mode" $'type = "file"\npath = "/dev/null"'
      run_wrk "$name" "$RELAY" "$SECS"; stop "$RELAY"
    done
  done
done

echo
echo "A = $A"
echo "B = $B"
printf "%-12s %10s %16s %8s %14s %8s\n" row "req/s" "(low-high)" "p99 ms" "CPU us/deliv" "RSS MB"
awk 'NR == FNR {cpu[$1] = $2 + $3; next}
  { split($1, k, "-"); row = k[1] "-" k[2]; n[row]++
    rps[row, n[row]] = $2; p99[row, n[row]] = $4; c[row, n[row]] = cpu[$1]; hwm[row, n[row]] = $7 }
  function median(a, row, m,   v, i, j, t) {
    for (i = 1; i <= m; i++) v[i] = a[row, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
  function low(a, row, m,   i, x) { x = a[row, 1]; for (i = 2; i <= m; i++) if (a[row, i] + 0 < x + 0) x = a[row, i]; return x }
  function high(a, row, m,   i, x) { x = a[row, 1]; for (i = 2; i <= m; i++) if (a[row, i] + 0 > x + 0) x = a[row, i]; return x }
  END { for (row in n) { m = n[row]
      printf "%-12s %10.0f %16s %8.2f %14.2f %8d\n", row, median(rps, row, m),
        sprintf("(%d-%d)", low(rps, row, m), high(rps, row, m)), median(p99, row, m), median(c, row, m), high(hwm, row, m) } }' \
  "$W/cpu" "$W/results" | sort
