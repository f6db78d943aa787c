#!/usr/bin/env bash
# Starts (`up`) or stops (`down`) the distributed stack on this machine: a
# private PostgreSQL cluster, the nisshi Kafka-API broker (durable, on that
# PostgreSQL), and one history, one router and one gateway process, each
# serving /metrics on a free port (listed for Prometheus in
# .stack/prometheus/targets.json); with CONFAB_STACK_PROMETHEUS=1 (`make stack
# PROMETHEUS=1`) also Prometheus, scraping them. Every process it starts is
# recorded in .stack/pids, so `down` stops exactly those.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK=${CONFAB_STACK_DIR:-$ROOT/.stack}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/confab-target}
BIN=$TARGET/debug
NISSHI=${NISSHI_BIN:-$HOME/.cache/confab/tools/bin/nisshi}
GATEWAY_ADDR=${CONFAB_STACK_GATEWAY:-127.0.0.1:50051}
PROMETHEUS=${CONFAB_STACK_PROMETHEUS:-}
[ "$PROMETHEUS" = 0 ] && PROMETHEUS=
PROMETHEUS_URL=
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The port if it can be bound on 127.0.0.1 now, else a free one.
port_or_free() { python3 -c 'import socket,sys
s=socket.socket()
try: s.bind(("127.0.0.1",int(sys.argv[1])))
except OSError: s.bind(("127.0.0.1",0))
print(s.getsockname()[1])' "$1"; }

# Runs a PostgreSQL tool as the cluster's owner (initdb refuses root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

wait_port() { # host:port name logfile
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "stack: $2 did not listen on $1 within 60 s; last lines of $3:" >&2
      tail -n 20 "$3" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

start() { # name logfile command...
  local name=$1 log=$2; shift 2
  setsid "$@" >"$log" 2>&1 < /dev/null &
  echo "$name $!" >> "$STACK/pids"
}

up() {
  if [ -f "$STACK/pids" ]; then
    echo "stack: already running (see $STACK/pids); run 'make stack-down' first" >&2
    exit 1
  fi
  [ -n "$PGBIN" ] || { echo "stack: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  [ -x "$NISSHI" ] || { echo "stack: nisshi is not installed at $NISSHI (make deps-broker)" >&2; exit 1; }
  if [ -n "$PROMETHEUS" ] && ! command -v prometheus >/dev/null; then
    echo "stack: prometheus is not installed (make deps-prometheus)" >&2
    exit 1
  fi
  mkdir -p "$STACK/logs"
  : > "$STACK/pids"

  local pg_port=${CONFAB_STACK_PG_PORT:-$(free_port)}
  if [ ! -d "$STACK/pg/data" ]; then
    mkdir -p "$STACK/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$STACK/pg"
    as_pg "$PGBIN/initdb" -D "$STACK/pg/data" -A trust -U postgres >"$STACK/logs/initdb.log"
  fi
  [ "$(id -u)" = 0 ] && chown postgres "$STACK/pg"
  as_pg "$PGBIN/pg_ctl" -D "$STACK/pg/data" -l "$STACK/pg/postgres.log" -w \
    -o "-p $pg_port -k $STACK/pg -c listen_addresses=127.0.0.1" start >/dev/null
  echo "postgres-cluster $STACK/pg/data" >> "$STACK/pids"
  for db in confab nisshi; do
    as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE $db" >/dev/null
  done

  local kafka_port=${CONFAB_STACK_KAFKA_PORT:-$(free_port)}
  start nisshi "$STACK/logs/nisshi.log" "$NISSHI" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "postgres://postgres:postgres@127.0.0.1:$pg_port/nisshi?sslmode=disable"
  wait_port "127.0.0.1:$kafka_port" nisshi "$STACK/logs/nisshi.log"

  local history_addr=127.0.0.1:$(free_port) router_addr=127.0.0.1:$(free_port)
  # Metrics and health (/metrics, /livez, /readyz) of each service.
  local history_metrics=127.0.0.1:$(free_port) router_metrics=127.0.0.1:$(free_port)
  local gateway_metrics=127.0.0.1:$(free_port)
  export CONFAB_KAFKA_BROKERS=127.0.0.1:$kafka_port
  export CONFAB_HISTORY_ADDRS=$history_addr CONFAB_ROUTER_ADDRS=$router_addr
  # Unless one is configured, the same public development secret that
  # `confab token` (and `make token`) signs with: a local stack only.
  export CONFAB_JWT_SECRET=${CONFAB_JWT_SECRET:-confab-development-secret-do-not-use-in-production}
  # History and the router refuse callers without the service token: a fresh
  # random one per stack (never written to $STACK/env or printed).
  CONFAB_SERVICE_TOKEN=$(head -c 24 /dev/urandom | base64)
  export CONFAB_SERVICE_TOKEN

  local database_url="postgres://postgres@127.0.0.1:$pg_port/confab"
  # For `make migrate` and for people poking at the stack.
  printf 'CONFAB_DATABASE_URL=%s\nCONFAB_KAFKA_BROKERS=%s\n' "$database_url" "$CONFAB_KAFKA_BROKERS" > "$STACK/env"
  CONFAB_LISTEN=$history_addr CONFAB_METRICS_LISTEN=$history_metrics CONFAB_DATABASE_URL="$database_url" \
    start history "$STACK/logs/history.log" "$BIN/confab-history"
  wait_port "$history_addr" history "$STACK/logs/history.log"

  CONFAB_LISTEN=$router_addr CONFAB_METRICS_LISTEN=$router_metrics \
    start router "$STACK/logs/router.log" "$BIN/confab-router"
  wait_port "$router_addr" router "$STACK/logs/router.log"

  CONFAB_LISTEN=$GATEWAY_ADDR CONFAB_METRICS_LISTEN=$gateway_metrics CONFAB_GATEWAY_ID=gateway-1 \
    start gateway "$STACK/logs/gateway.log" "$BIN/confab-gateway"
  wait_port "$GATEWAY_ADDR" gateway "$STACK/logs/gateway.log"

  # Prometheus file_sd targets: one group per service, its job label the
  # one deploy/prometheus/alerts.yml and the Grafana dashboard expect.
  mkdir -p "$STACK/prometheus"
  cat > "$STACK/prometheus/targets.json" <<JSON
[
  {"targets": ["$history_metrics"], "labels": {"job": "confab-history"}},
  {"targets": ["$router_metrics"], "labels": {"job": "confab-router"}},
  {"targets": ["$gateway_metrics"], "labels": {"job": "confab-gateway"}}
]
JSON
  local metrics_line="metrics: gateway http://$gateway_metrics/metrics, router http://$router_metrics/metrics, history http://$history_metrics/metrics"
  [ -z "$PROMETHEUS" ] || start_prometheus

  cat <<MSG
stack: up. gateway on $GATEWAY_ADDR (history $history_addr, router $router_addr,
       kafka 127.0.0.1:$kafka_port, postgres 127.0.0.1:$pg_port); logs in $STACK/logs
       $metrics_line${PROMETHEUS_URL:+
       prometheus: $PROMETHEUS_URL (alerts: $PROMETHEUS_URL/alerts; data in $STACK/prometheus/data)}
       stop everything with: make stack-down
MSG
}

# Prometheus (Debian's package, or any prometheus on PATH) on 127.0.0.1,
# scraping the targets above every CONFAB_STACK_SCRAPE_INTERVAL with the
# alert rules of deploy/prometheus/alerts.yml; its configuration and data
# under $STACK/prometheus.
start_prometheus() {
  local port=${CONFAB_STACK_PROMETHEUS_PORT:-$(port_or_free 9090)}
  local every=${CONFAB_STACK_SCRAPE_INTERVAL:-5s}
  cat > "$STACK/prometheus/prometheus.yml" <<YAML
# Written by deploy/local/stack.sh at every start; edits are overwritten.
global:
  scrape_interval: $every
  evaluation_interval: $every
rule_files:
  - "$ROOT/deploy/prometheus/alerts.yml"
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$port"]
  # The job label comes from each target group in targets.json.
  - job_name: confab
    file_sd_configs:
      - files: ["$STACK/prometheus/targets.json"]
YAML
  mkdir -p "$STACK/prometheus/data"
  start prometheus "$STACK/logs/prometheus.log" prometheus \
    --config.file="$STACK/prometheus/prometheus.yml" \
    --storage.tsdb.path="$STACK/prometheus/data" \
    --web.listen-address="127.0.0.1:$port"
  wait_port "127.0.0.1:$port" prometheus "$STACK/logs/prometheus.log"
  PROMETHEUS_URL=http://127.0.0.1:$port
  echo "PROMETHEUS_URL=$PROMETHEUS_URL" >> "$STACK/env"
}

down() {
  [ -f "$STACK/pids" ] || { echo "stack: not running"; return 0; }
  # Stop in reverse start order: Prometheus, gateway, router, history,
  # broker, database.
  tac "$STACK/pids" | while read -r name what; do
    if [ "$name" = postgres-cluster ]; then
      as_pg "$PGBIN/pg_ctl" -D "$what" -m fast -w stop >/dev/null 2>&1 || true
      continue
    fi
    kill -TERM -- "-$what" 2>/dev/null || kill -TERM "$what" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$what" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$what" 2>/dev/null || true
  done
  rm -f "$STACK/pids" "$STACK/env"
  echo "stack: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
