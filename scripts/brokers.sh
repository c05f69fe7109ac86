#!/usr/bin/env bash
# Start and stop the shared RabbitMQ the AMQP tests use (NATS and tansu are started per test by
# the tests themselves). No systemd here: the Erlang node runs as root with its own HOME, node
# name, ports (below 32768) and epmd, all under $BROKERS_DIR.
# Usage: scripts/brokers.sh start|stop|rabbit-stop-app|rabbit-start-app|print-env
set -euo pipefail
D=${BROKERS_DIR:-${TMPDIR:-/tmp}/cal-relay-brokers}
AMQP_PORT=${AMQP_PORT:-25682}
AMQP_DIST_PORT=${AMQP_DIST_PORT:-25683}
EPMD_PORT=${EPMD_PORT:-24369}
NODE=calrelay@localhost

wait_tcp() {
  local end=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -lt $end ] || { echo "timeout waiting for $1:$2" >&2; return 1; }
    sleep 0.1
  done
}

rabbit_env() {
  export HOME=$D/rabbit/home RABBITMQ_NODENAME=$NODE \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$AMQP_DIST_PORT \
    ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_MNESIA_BASE=$D/rabbit/mnesia RABBITMQ_LOG_BASE=$D/rabbit/log \
    RABBITMQ_PID_FILE=$D/rabbit/rabbit.pid RABBITMQ_CONFIG_FILE=$D/rabbit/rabbitmq.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$D/rabbit/enabled_plugins RABBITMQ_CONF_ENV_FILE=$D/rabbit/rabbitmq-env.conf \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export PATH=/usr/lib/rabbitmq/bin:$PATH
}

start() {
  stop >/dev/null 2>&1 || true
  rm -rf "$D/rabbit"
  mkdir -p "$D/rabbit/home" "$D/rabbit/mnesia" "$D/rabbit/log"
  (
    rabbit_env
    : > "$D/rabbit/rabbitmq.conf"
    : > "$D/rabbit/rabbitmq-env.conf"
    echo '[].' > "$D/rabbit/enabled_plugins"
    epmd -port "$EPMD_PORT" -address 127.0.0.1 >/dev/null 2>&1 &
    echo $! > "$D/epmd.pid"
    wait_tcp 127.0.0.1 "$EPMD_PORT" 10
    setsid rabbitmq-server > "$D/rabbit/server.out" 2>&1 < /dev/null &
  )
  ( rabbit_env; rabbitmqctl -q wait --timeout 120 "$RABBITMQ_PID_FILE" ) \
    || { tail -50 "$D/rabbit/server.out" >&2; return 1; }
  echo "rabbitmq up: amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
}

stop() {
  if [ -f "$D/rabbit/rabbit.pid" ]; then
    pid=$(cat "$D/rabbit/rabbit.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
      [ -n "$st" ] && [ "$st" != Z ] || break
      sleep 0.1
    done
    rm -f "$D/rabbit/rabbit.pid"
  fi
  if [ -f "$D/epmd.pid" ]; then kill "$(cat "$D/epmd.pid")" 2>/dev/null || true; rm -f "$D/epmd.pid"; fi
}

# Stop / start the RabbitMQ application inside the running node: every client connection drops,
# as in a broker restart, and comes back on the same port.
rabbit-stop-app() { rabbit_env; rabbitmqctl -q -n "$NODE" stop_app; }
rabbit-start-app() { rabbit_env; rabbitmqctl -q -n "$NODE" start_app; }

print-env() { echo "AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"; }

"$@"
