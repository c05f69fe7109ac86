#!/usr/bin/env bash
# Fuzz every parser that outside bytes reach (fuzz/fuzz_targets): builds with cargo-fuzz on the
# nightly toolchain, runs each target for SECONDS (default 60), prints executions, corpus size,
# coverage and crashes per target, and exits non-zero if any target crashed, timed out or ran
# out of memory. Crash inputs are left in fuzz/artifacts/TARGET/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (FUZZ_JOBS=2 runs two targets at once;
#        FUZZ_RUNS=N stops each target after N executions instead, SECONDS then bounding it)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
shift || true
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(prepare verify spool_records spool_reopen config)
# No sanitizer: the code under test is safe Rust, and the C libraries linked in (zstd and
# librdkafka, through the configuration crate) do not build with ASan's flags. Overflow checks
# and debug assertions are on in fuzz/Cargo.toml's profile.
cargo +nightly fuzz build -s none
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  # Timeouts (-timeout, seconds per input) and out-of-memory (-rss_limit_mb, -malloc_limit_mb)
  # count as failures like crashes.
  local runs=()
  [ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
  cargo +nightly fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
    -dict=dict/cal.dict -max_total_time="$SECS" "${runs[@]}" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
    > "$out/$t.log" 2>&1
  echo $? > "$out/$t.rc"
}
jobs=${FUZZ_JOBS:-1}
for t in "${targets[@]}"; do
  run_one "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
done
wait
printf '%-14s %12s %8s %8s %8s %s\n' target executions seconds corpus coverage result
fail=0
for t in "${targets[@]}"; do
  log="$out/$t.log"
  # A target that failed at once has no stats: the summary still goes on to say why.
  execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1 || true)
  secs=$(awk '/^Done [0-9]+ runs in/ {print $5}' "$log" | tail -1 || true)
  cov=$( (grep -oE 'cov: [0-9]+' "$log" || true) | tail -1 | awk '{print $2}')
  corpus=$(find "corpus/$t" -type f | wc -l)
  rc=$(cat "$out/$t.rc")
  if [ "$rc" = 0 ]; then result="0 crashes"; else
    result="FAILED (exit $rc): $(grep -m1 -oE 'SUMMARY: .*|panicked at .*|ERROR: libFuzzer: [a-z-]+' "$log" || true)"
    fail=1
    tail -40 "$log" >&2
  fi
  printf '%-14s %12s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${secs:-?}" "$corpus" "${cov:-?}" "$result"
done
exit $fail
