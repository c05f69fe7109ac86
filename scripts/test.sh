#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs what is missing (apt packages,
# tansu), starts real brokers on loopback, runs every test, stops the brokers.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== toolchain: $(cargo --version)"
# A cold run writes about 5 GB (target/ and fuzz/target/); a full disk shows up as linker bus
# errors and "No space left on device", so say how much there is before starting.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
echo "== disk: $((free_kb / 1024 / 1024)) GiB free here"
[ "$free_kb" -ge $((6 * 1024 * 1024)) ] || echo "warning: under 6 GiB free; a cold run may fill the disk" >&2

# Machine-level prerequisites, installed only when missing.
apt_missing=()
command -v nats-server >/dev/null 2>&1 || apt_missing+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_missing+=(rabbitmq-server)
# Build prerequisites of librdkafka (bundled, built by rdkafka-sys) and of the TLS stacks.
# iproute2 and util-linux: the run-what-we-ship tests (tests/ship.rs) start the image's root file
# system in its own network and mount namespaces; debootstrap is installed by image-rootfs.sh.
# faketime (libfaketime): tests/scheduled.rs starts the relay hours ahead of the real clock to
# replay a delivery "later" without waiting.
for pkg in build-essential pkg-config libssl-dev zlib1g-dev iproute2 util-linux faketime; do
  dpkg -s "$pkg" >/dev/null 2>&1 || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "== installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
# Operations checks: promtool and a real Prometheus; docker-compose validates the compose file
# without an engine. Without recommends: no exporters or docker engine pulled in.
ops_missing=()
command -v promtool >/dev/null 2>&1 || ops_missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || ops_missing+=(docker-compose)
if [ ${#ops_missing[@]} -gt 0 ]; then
  echo "== installing ${ops_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${ops_missing[@]}" >/dev/null
fi

# Manifest checks (tests/deploy.rs): Kubernetes' schemas and checkov, from PyPI; kubectl for
# `kubectl kustomize` is on these machines.
py_missing=()
command -v kubernetes-validate >/dev/null 2>&1 || py_missing+=(kubernetes-validate)
command -v checkov >/dev/null 2>&1 || py_missing+=(checkov)
# The official CloudEvents SDK decodes what the relay publishes (tests/cloudevents.rs).
python3 -c 'import cloudevents.core.bindings.kafka' >/dev/null 2>&1 || py_missing+=("cloudevents==2.2.*")
# The reference JSON Schema validator checks the schemas against the fixtures (tests/contract.rs).
python3 -c 'import jsonschema' >/dev/null 2>&1 || py_missing+=(jsonschema)
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "== installing ${py_missing[*]} (pip)"
  pip install -q "${py_missing[@]}"
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is needed for the manifest checks" >&2; exit 2; }

# The official AsyncAPI parser validates `cal-relay asyncapi` (tests/contract.rs), from npm at
# the version tests/interop/package-lock.json pins.
if ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs, npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d tests/interop/node_modules/@asyncapi/parser ]; then
  echo "== installing @asyncapi/parser (npm)"
  npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
fi

# tansu, the Kafka-compatible broker the Kafka tests start (10 to 15 minutes the first time;
# cached in ~/.cargo/bin afterwards).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "== installing tansu (first time only)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi

echo "== brokers"
scripts/brokers.sh start
trap 'scripts/brokers.sh stop' EXIT
export $(scripts/brokers.sh print-env)

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
mkdir -p target
rm -f target/failover-results.txt
# --no-fail-fast: every test binary runs even when an earlier one fails, so the summary below
# counts the whole suite; the exit status is still non-zero when anything failed.
set +e
cargo test --workspace --all-targets --locked --no-fail-fast "$@" 2>&1 | tee target/test-output.log
rc=${PIPESTATUS[0]}
set -e
# What the cluster failover tests counted (acknowledged, present, lost, duplicates, 5xx).
if [ -s target/failover-results.txt ]; then echo "== failover counts"; cat target/failover-results.txt; fi

# Fuzz smoke runs: every target of fuzz/ for FUZZ_SMOKE_SECS (default 20) each; a crash,
# timeout or out-of-memory fails the suite. The long campaign is `scripts/fuzz.sh 600`.
echo "== fuzz smoke runs"
set +e
scripts/fuzz.sh "${FUZZ_SMOKE_SECS:-20}" 2>&1 | tee target/fuzz-output.log
fuzz_rc=${PIPESTATUS[0]}
set -e
if [ "$fuzz_rc" = 0 ]; then echo "fuzz smoke: every target 0 crashes"; else echo "fuzz smoke: FAILED"; fi
# One closing summary for the whole run: the sum of every test binary's `test result:` line,
# the number of binaries that ended without one (a crash or a build failure), and the fuzzers.
awk '/^     Running / { bins++ }
     /^test result:/ { results++; split($0, a, /[ .;]+/); for (i in a) { if (a[i]=="passed") p+=a[i-1]; if (a[i]=="failed") f+=a[i-1]; if (a[i]=="ignored") s+=a[i-1] } }
     END { printf "%d passed, %d failed, %d skipped (%d test binaries, %d of them without a result line)\n", p, f, s, bins, bins - results }' target/test-output.log
[ "$rc" = 0 ] || exit "$rc"
exit "$fuzz_rc"
