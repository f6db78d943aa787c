#!/usr/bin/env bash
# The distributed stack on this machine: a private PostgreSQL cluster, the
# nisshi Kafka-API broker (durable: SQLite by default, see BROKER_STORAGE), and one history, one
# router and one gateway process, each serving /metrics on a free port
# (listed for Prometheus in .stack/prometheus/targets.json); with
# CONFAB_STACK_PROMETHEUS=1 (`make stack PROMETHEUS=1`) also Prometheus,
# scraping them.
#
#   up              start it all (`make stack`)
#   down            stop exactly what `up` started (`make stack-down`)
#   restart NAME    stop NAME (gateway, router, history or broker) if it still
#                   runs, start it again as `up` did (`make stack-restart`)
#   status          each process: pid, alive or dead, address, readiness
#                   (`make stack-status`; exit 1 if any is dead or not ready)
#   logs [NAME]     the last LINES (default 50) lines of each log, or of
#                   NAME's (`make stack-logs`)
#
# Every process it starts is recorded in .stack/pids (`name pid`), so `down`
# stops exactly those. How each was started (command line, its CONFAB_*
# variables with the service token and the JWT secret, its addresses) is
# recorded in .stack/settings, readable by its owner only, which `restart`
# and `status` read and `down` deletes. Nothing here prints the service token.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK=${CONFAB_STACK_DIR:-$ROOT/.stack}
SETTINGS=$STACK/settings
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/confab-target}
# The services' build: release (what `make stack` builds), or debug
# (`make stack STACK_PROFILE=debug`).
PROFILE=${CONFAB_STACK_PROFILE:-release}
case $PROFILE in release | debug) ;; *) echo "stack: CONFAB_STACK_PROFILE must be release or debug, not '$PROFILE'" >&2; exit 2 ;; esac
BIN=$TARGET/$PROFILE
NISSHI=${NISSHI_BIN:-$HOME/.cache/confab/tools/bin/nisshi}
GATEWAY_ADDR=${CONFAB_STACK_GATEWAY:-127.0.0.1:50051}
# Where the broker keeps its log: sqlite (a file under the stack directory,
# durable across kill -9), postgres (in the stack's PostgreSQL) or memory
# (lost when it stops). Chosen on measurements (docs/operations.md, "The
# broker under make stack"): on sqlite the idle stack costs a fraction of
# what it does on postgres, and it takes more load.
BROKER_STORAGE=${CONFAB_STACK_BROKER_STORAGE:-sqlite}
# Partitions of each topic, and the consumers' fetch wait, unless the
# caller sets them: nisshi re-reads every partition in a loop while a fetch
# waits, so both set what the idle stack costs (same section).
PARTITIONS=${CONFAB_KAFKA_PARTITIONS:-2}
FETCH_WAIT_MS=${CONFAB_KAFKA_FETCH_WAIT_MS:-150}
case $BROKER_STORAGE in postgres | sqlite | memory) ;; *) echo "stack: CONFAB_STACK_BROKER_STORAGE must be postgres, sqlite or memory, not '$BROKER_STORAGE'" >&2; exit 2 ;; esac
PROMETHEUS=${CONFAB_STACK_PROMETHEUS:-}
[ "$PROMETHEUS" = 0 ] && PROMETHEUS=
PROMETHEUS_URL=
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
# The processes `restart` starts again, in start order.
SERVICES="broker history router gateway"

# $1 distinct free ports on 127.0.0.1, one a line (all bound at once, so no
# two are the same).
free_ports() { python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
for s in socks: print(s.getsockname()[1])' "$1"; }
# The port if it can be bound on 127.0.0.1 now, else a free one.
port_or_free() { python3 -c 'import socket,sys
s=socket.socket()
try: s.bind(("127.0.0.1",int(sys.argv[1])))
except OSError: s.bind(("127.0.0.1",0))
print(s.getsockname()[1])' "$1"; }

# Runs a PostgreSQL tool as the cluster's owner (initdb refuses root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Whether host:port accepts connections now.
accepts() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

wait_port() { # host:port name logfile
  local deadline=$((SECONDS + 60))
  until accepts "$1"; do
    if [ $SECONDS -ge $deadline ]; then
      echo "stack: $2 did not listen on $1 within 60 s; last lines of $3:" >&2
      tail -n 20 "$3" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

# Whether process $1 runs (a zombie does not: it has exited).
alive() {
  local state
  state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Stops the process group that $1 leads (or the process alone): SIGTERM,
# up to 10 s for it to exit, then SIGKILL to whatever is left of the group.
stop_group() {
  local pid=$1
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# The pid $STACK/pids records for $1 (fails if none).
recorded_pid() { awk -v n="$1" '$1 == n { print $2; found = 1 } END { exit !found }' "$STACK/pids"; }

# Records $2 as the pid of $1 in $STACK/pids: its line is replaced where it
# stands (so `down` keeps its order), or appended.
record_pid() {
  if recorded_pid "$1" >/dev/null; then
    sed -i "s/^$1 .*/$1 $2/" "$STACK/pids"
  else
    echo "$1 $2" >> "$STACK/pids"
  fi
}

# The table of how each process is started, read once by `up` (which
# records the result in $SETTINGS): for process $1, sets `cmd` (its command
# line), `vars` (every CONFAB_* and RUST_* variable it gets, NAME=value),
# `addr` (where it listens; `up` and `restart` wait for it) and `ready` (the
# URL answering 200 once it is ready; empty: accepting connections on
# `addr` is ready) from the stack's settings (the capitals).
spec() {
  # The caller's RUST_LOG and RUST_BACKTRACE (if set) go to every process;
  # the caller's CONFAB_* variables (not the script's own CONFAB_STACK_*) to
  # the services, then what the stack sets.
  local name rust=() confab=()
  for name in RUST_LOG RUST_BACKTRACE; do
    [ -z "${!name+set}" ] || rust+=("$name=${!name}")
  done
  for name in "${!CONFAB_@}"; do
    case $name in
      # The script's own, and those the stack sets below.
      CONFAB_STACK_* | CONFAB_KAFKA_BROKERS | CONFAB_HISTORY_ADDRS | CONFAB_ROUTER_ADDRS | \
        CONFAB_KAFKA_PARTITIONS | CONFAB_KAFKA_FETCH_WAIT_MS | \
        CONFAB_JWT_SECRET | CONFAB_SERVICE_TOKEN | CONFAB_LISTEN | CONFAB_METRICS_LISTEN | \
        CONFAB_DATABASE_URL | CONFAB_GATEWAY_ID | CONFAB_HTTP_LISTEN | CONFAB_WEB_DIR) ;;
      *) [ -z "${!name+set}" ] || confab+=("$name=${!name}") ;;
    esac
  done
  confab+=(
    "CONFAB_KAFKA_PARTITIONS=$PARTITIONS" "CONFAB_KAFKA_FETCH_WAIT_MS=$FETCH_WAIT_MS"
    "CONFAB_KAFKA_BROKERS=$KAFKA_BROKERS"
    "CONFAB_HISTORY_ADDRS=$HISTORY_ADDR" "CONFAB_ROUTER_ADDRS=$ROUTER_ADDR"
    "CONFAB_JWT_SECRET=$JWT_SECRET" "CONFAB_SERVICE_TOKEN=$SERVICE_TOKEN"
  )
  case $1 in
    broker)
      local storage
      case $BROKER_STORAGE in
        postgres) storage="postgres://postgres:postgres@127.0.0.1:$PG_PORT/nisshi?sslmode=disable" ;;
        # nisshi opens sqlite://PATH below its working directory.
        sqlite) storage="sqlite://nisshi.db" ;;
        memory) storage="memory://nisshi/" ;;
      esac
      cmd=(env -C "$STACK/broker" "$NISSHI" broker
        --listener-url "tcp://$KAFKA_BROKERS" --advertised-listener-url "tcp://$KAFKA_BROKERS"
        --storage-engine "$storage")
      vars=("${rust[@]}") addr=$KAFKA_BROKERS ready= ;;
    history)
      cmd=("$BIN/confab-history")
      vars=("${rust[@]}" "${confab[@]}" "CONFAB_LISTEN=$HISTORY_ADDR"
        "CONFAB_METRICS_LISTEN=$HISTORY_METRICS" "CONFAB_DATABASE_URL=$DATABASE_URL")
      addr=$HISTORY_ADDR ready=http://$HISTORY_METRICS/readyz ;;
    router)
      cmd=("$BIN/confab-router")
      vars=("${rust[@]}" "${confab[@]}" "CONFAB_LISTEN=$ROUTER_ADDR" "CONFAB_METRICS_LISTEN=$ROUTER_METRICS")
      addr=$ROUTER_ADDR ready=http://$ROUTER_METRICS/readyz ;;
    gateway)
      cmd=("$BIN/confab-gateway")
      vars=("${rust[@]}" "${confab[@]}" "CONFAB_LISTEN=$GATEWAY_ADDR"
        "CONFAB_METRICS_LISTEN=$GATEWAY_METRICS" CONFAB_GATEWAY_ID=gateway-1
        "CONFAB_HTTP_LISTEN=$GATEWAY_HTTP" "CONFAB_WEB_DIR=$ROOT/web/dist")
      addr=$GATEWAY_ADDR ready=http://$GATEWAY_METRICS/readyz ;;
    prometheus)
      cmd=(prometheus --config.file="$STACK/prometheus/prometheus.yml"
        --storage.tsdb.path="$STACK/prometheus/data" --web.listen-address="$PROMETHEUS_ADDR")
      vars=("${rust[@]}") addr=$PROMETHEUS_ADDR ready=http://$PROMETHEUS_ADDR/-/ready ;;
  esac
}

# Its arguments shell-quoted for `source`, separated by spaces (nothing for
# none: printf alone would print '').
quoted() { [ $# -eq 0 ] || printf '%q ' "$@"; }

# Writes $SETTINGS: the stack's settings and, per process, what `spec`
# says. Created with umask 077 by mktemp (mode 600 from its first byte),
# then renamed over any older one.
write_settings() { # process names...
  local tmp var name cmd vars addr ready
  tmp=$(umask 077 && mktemp "$STACK/.settings.XXXXXX")
  {
    echo "# Written by deploy/local/stack.sh up, read by its restart and status, deleted by"
    echo "# its down. Readable by its owner only: it holds the service token and the JWT secret."
    for var in BIN NISSHI PG_PORT PG_DATA KAFKA_BROKERS HISTORY_ADDR ROUTER_ADDR GATEWAY_ADDR \
      HISTORY_METRICS ROUTER_METRICS GATEWAY_METRICS GATEWAY_HTTP PROMETHEUS_ADDR DATABASE_URL \
      JWT_SECRET SERVICE_TOKEN; do
      printf '%s=%q\n' "$var" "${!var}"
    done
    for name in "$@"; do
      spec "$name"
      echo "cmd_$name=($(quoted "${cmd[@]}"))"
      echo "vars_$name=($(quoted "${vars[@]}"))"
      printf 'addr_%s=%q\nready_%s=%q\n' "$name" "$addr" "$name" "$ready"
    done
  } > "$tmp"
  mv -f "$tmp" "$SETTINGS"
}

# Reads $SETTINGS (its variables become the script's).
load_settings() {
  if [ ! -f "$SETTINGS" ]; then
    echo "stack: $SETTINGS is missing (this stack was started by an older deploy/local/stack.sh): run 'make stack-down', then 'make stack'" >&2
    exit 1
  fi
  # shellcheck source=/dev/null
  . "$SETTINGS"
}

# Starts process $1 as $SETTINGS records it: its command line, with exactly
# its recorded CONFAB_*, RUST_LOG and RUST_BACKTRACE variables (none of the
# caller's), in a process group of its own, appending to its log; records
# its pid in $STACK/pids and waits until it listens. `up` and `restart`
# start every process through here.
launch() {
  local name=$1 log=$STACK/logs/$1.log
  local -n cmd_ref=cmd_$name vars_ref=vars_$name addr_ref=addr_$name
  (
    unset "${!CONFAB_@}" RUST_LOG RUST_BACKTRACE
    [ ${#vars_ref[@]} -eq 0 ] || export "${vars_ref[@]}"
    exec setsid "${cmd_ref[@]}"
  ) >>"$log" 2>&1 < /dev/null &
  record_pid "$name" $!
  wait_port "$addr_ref" "$name" "$log"
}

up() {
  if [ -f "$STACK/pids" ]; then
    echo "stack: already running (see $STACK/pids); run 'make stack-down' first" >&2
    exit 1
  fi
  [ -n "$PGBIN" ] || { echo "stack: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  [ -x "$NISSHI" ] || { echo "stack: nisshi is not installed at $NISSHI (make deps-broker)" >&2; exit 1; }
  for b in confab-history confab-router confab-gateway; do
    [ -x "$BIN/$b" ] || { echo "stack: $BIN/$b is missing (make build-services STACK_PROFILE=$PROFILE)" >&2; exit 1; }
  done
  if [ -n "$PROMETHEUS" ] && ! command -v prometheus >/dev/null; then
    echo "stack: prometheus is not installed (make deps-prometheus)" >&2
    exit 1
  fi
  # A stack's data is kept from one `up` to the next: history's database
  # and the broker's log go together (consumer positions, the topics'
  # partitions, which Sync cursors count changes by). A stack directory
  # made with another broker storage or partition count is not mixed with
  # this one.
  local layout="broker=$BROKER_STORAGE partitions=$PARTITIONS" had
  if [ -d "$STACK/pg/data" ]; then
    # (A stack from before the layout was recorded: what it always was.)
    had=$(cat "$STACK/layout" 2>/dev/null || echo "broker=postgres partitions=8")
    if [ "$had" != "$layout" ]; then
      echo "stack: the data in $STACK was made with $had, not $layout: start afresh (rm -rf $STACK) or set CONFAB_STACK_BROKER_STORAGE and CONFAB_KAFKA_PARTITIONS to match it" >&2
      exit 1
    fi
  fi
  mkdir -p "$STACK/logs" "$STACK/broker"
  echo "$layout" > "$STACK/layout"
  : > "$STACK/pids"

  # Every address, chosen now: PostgreSQL, the broker, then gRPC and
  # metrics (/metrics, /livez, /readyz) of history, router and gateway.
  local ports
  mapfile -t ports < <(free_ports 7)
  PG_PORT=${CONFAB_STACK_PG_PORT:-${ports[0]}}
  PG_DATA=$STACK/pg/data
  KAFKA_BROKERS=127.0.0.1:${CONFAB_STACK_KAFKA_PORT:-${ports[1]}}
  HISTORY_ADDR=127.0.0.1:${ports[2]} ROUTER_ADDR=127.0.0.1:${ports[3]}
  HISTORY_METRICS=127.0.0.1:${ports[4]} ROUTER_METRICS=127.0.0.1:${ports[5]}
  GATEWAY_METRICS=127.0.0.1:${ports[6]}
  # The web app, WebSocket and gRPC-Web (docs/browser.md): 8080 if free.
  GATEWAY_HTTP=127.0.0.1:${CONFAB_STACK_HTTP_PORT:-$(port_or_free 8080)}
  PROMETHEUS_ADDR=
  [ -z "$PROMETHEUS" ] || PROMETHEUS_ADDR=127.0.0.1:${CONFAB_STACK_PROMETHEUS_PORT:-$(port_or_free 9090)}
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/confab"
  # Unless one is configured, the same public development secret that
  # `confab token` (and `make token`) signs with: a local stack only.
  JWT_SECRET=${CONFAB_JWT_SECRET:-confab-development-secret-do-not-use-in-production}
  # History and the router refuse callers without the service token: a fresh
  # random one per stack, kept only in $SETTINGS (owner-only), never printed.
  SERVICE_TOKEN=$(head -c 24 /dev/urandom | base64)
  local processes=$SERVICES
  [ -z "$PROMETHEUS" ] || processes="$processes prometheus"
  # shellcheck disable=SC2086 # the names are words
  write_settings $processes
  # From here on, up uses only what restart will use.
  load_settings

  if [ ! -d "$PG_DATA" ]; then
    mkdir -p "$STACK/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$STACK/pg"
    as_pg "$PGBIN/initdb" -D "$PG_DATA" -A trust -U postgres >"$STACK/logs/initdb.log"
  fi
  [ "$(id -u)" = 0 ] && chown postgres "$STACK/pg"
  as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$STACK/pg/postgres.log" -w \
    -o "-p $PG_PORT -k $STACK/pg -c listen_addresses=127.0.0.1" start >/dev/null
  echo "postgres-cluster $PG_DATA" >> "$STACK/pids"
  for db in confab nisshi; do
    as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db" >/dev/null
  done

  # For `make migrate` and for people poking at the stack (no secret here).
  printf 'CONFAB_DATABASE_URL=%s\nCONFAB_KAFKA_BROKERS=%s\n' "$DATABASE_URL" "$KAFKA_BROKERS" > "$STACK/env"
  local name
  for name in $SERVICES; do
    : > "$STACK/logs/$name.log"
    launch "$name"
  done

  # Prometheus file_sd targets: one group per service, its job label the
  # one deploy/prometheus/alerts.yml and the Grafana dashboard expect.
  mkdir -p "$STACK/prometheus"
  cat > "$STACK/prometheus/targets.json" <<JSON
[
  {"targets": ["$HISTORY_METRICS"], "labels": {"job": "confab-history"}},
  {"targets": ["$ROUTER_METRICS"], "labels": {"job": "confab-router"}},
  {"targets": ["$GATEWAY_METRICS"], "labels": {"job": "confab-gateway"}}
]
JSON
  local metrics_line="metrics: gateway http://$GATEWAY_METRICS/metrics, router http://$ROUTER_METRICS/metrics, history http://$HISTORY_METRICS/metrics"
  [ -z "$PROMETHEUS" ] || start_prometheus

  cat <<MSG
stack: up. web app on http://$GATEWAY_HTTP (a token from make -s token NAME=alice)
       gateway on $GATEWAY_ADDR (history $HISTORY_ADDR, router $ROUTER_ADDR,
       kafka $KAFKA_BROKERS, postgres 127.0.0.1:$PG_PORT); logs in $STACK/logs
       $metrics_line${PROMETHEUS_URL:+
       prometheus: $PROMETHEUS_URL (alerts: $PROMETHEUS_URL/alerts; data in $STACK/prometheus/data)}
       check it: make stack-status; restart a service: make stack-restart SERVICE=...
       stop everything with: make stack-down
MSG
}

# Prometheus (Debian's package, or any prometheus on PATH) on
# $PROMETHEUS_ADDR, scraping the targets above every
# CONFAB_STACK_SCRAPE_INTERVAL with the alert rules of
# deploy/prometheus/alerts.yml; its configuration and data under
# $STACK/prometheus.
start_prometheus() {
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
      - targets: ["$PROMETHEUS_ADDR"]
  # The job label comes from each target group in targets.json.
  - job_name: confab
    file_sd_configs:
      - files: ["$STACK/prometheus/targets.json"]
YAML
  mkdir -p "$STACK/prometheus/data"
  : > "$STACK/logs/prometheus.log"
  launch prometheus
  PROMETHEUS_URL=http://$PROMETHEUS_ADDR
  echo "PROMETHEUS_URL=$PROMETHEUS_URL" >> "$STACK/env"
}

# Stops process $1 of the running stack if it still runs, and starts it
# again as recorded, on the same addresses.
restart() {
  local name=${1:-}
  if [ -z "$name" ] || [[ " $SERVICES " != *" $name "* ]]; then
    echo "stack: cannot restart '$name': name one of ${SERVICES// /, } (make stack-restart SERVICE=gateway)" >&2
    exit 2
  fi
  [ -f "$STACK/pids" ] || { echo "stack: not running ($STACK/pids is missing): start it with 'make stack'" >&2; exit 1; }
  load_settings
  local pid
  pid=$(recorded_pid "$name") || {
    echo "stack: $STACK/pids records no $name: run 'make stack-down', then 'make stack'" >&2
    exit 1
  }
  if alive "$pid"; then
    echo "stack: stopping $name (process group $pid)"
  fi
  stop_group "$pid"
  echo "--- stack.sh: $name restarted at $(date -u +%FT%TZ) ---" >> "$STACK/logs/$name.log"
  launch "$name"
  local addr=addr_$name
  echo "stack: $name restarted (pid $(recorded_pid "$name")) on ${!addr}"
}

# One line per recorded process; exit 1 if any is dead or not ready.
status() {
  [ -f "$STACK/pids" ] || { echo "stack: not running ($STACK/pids is missing): start it with 'make stack'" >&2; exit 1; }
  load_settings
  local bad=0 name what pid state addr ready answer
  printf '%-10s %-8s %-6s %-21s %s\n' NAME PID STATE ADDRESS READY
  while read -r name what <&3; do
    if [ "$name" = postgres-cluster ]; then
      name=postgres addr=127.0.0.1:$PG_PORT
      pid=$(as_pg "$PGBIN/pg_ctl" -D "$what" status 2>/dev/null | sed -n 's/.*(PID: \([0-9]*\)).*/\1/p' || true)
      if [ -n "$pid" ] && alive "$pid"; then state=alive; else state=dead pid=${pid:--}; fi
      if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t 2; then answer=ready; else answer="not ready (pg_isready)"; fi
    else
      addr=addr_$name ready=ready_$name
      pid=$what addr=${!addr:-?} ready=${!ready:-}
      if alive "$pid"; then state=alive; else state=dead; fi
      if [ -n "$ready" ]; then
        answer=$(ready_answer "$ready")
      elif accepts "$addr"; then
        answer="ready (accepts connections)"
      else
        answer="no answer (connection refused)"
      fi
    fi
    case $state/$answer in alive/ready*) ;; *) bad=1 ;; esac
    printf '%-10s %-8s %-6s %-21s %s\n' "$name" "$pid" "$state" "$addr" "$answer"
  done 3< "$STACK/pids"
  return $bad
}

# What the URL $1 answers: "ready (...)", "not ready: <why>" or
# "no answer (...)". No proxy: the address is local.
ready_answer() {
  python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
url = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=2):
        print(f"ready ({url})")
except urllib.error.HTTPError as e:
    why = e.read().decode(errors="replace").strip().splitlines()
    print(f"not ready: {why[0] if why else e.code} ({url})")
except Exception as e:
    print(f"no answer ({url}: {getattr(e, 'reason', e)})")
PY
}

# The last $LINES lines (default 50) of each log, or of $1's.
logs() {
  local lines=${LINES:-50} want=${1:-} name log shown=0
  case $lines in '' | *[!0-9]*) echo "stack: LINES must be a number of lines, not '$lines'" >&2; exit 2 ;; esac
  local names="$SERVICES prometheus postgres"
  if [ -n "$want" ] && [[ " $names " != *" $want "* ]]; then
    echo "stack: no log named '$want': name one of ${names// /, } (make stack-logs SERVICE=gateway)" >&2
    exit 2
  fi
  for name in $names; do
    [ -z "$want" ] || [ "$want" = "$name" ] || continue
    log=$STACK/logs/$name.log
    [ "$name" != postgres ] || log=$STACK/pg/postgres.log
    if [ ! -f "$log" ]; then
      [ -z "$want" ] || { echo "stack: $log does not exist (has make stack run here?)" >&2; exit 1; }
      continue
    fi
    echo "==> $name: last $lines lines of $log <=="
    tail -n "$lines" "$log"
    shown=1
  done
  [ "$shown" = 1 ] || { echo "stack: no logs in $STACK/logs (has make stack run here?)" >&2; exit 1; }
}

down() {
  [ -f "$STACK/pids" ] || { echo "stack: not running"; rm -f "$SETTINGS"; return 0; }
  # Stop in reverse start order: Prometheus, gateway, router, history,
  # broker, database.
  tac "$STACK/pids" | while read -r name what; do
    if [ "$name" = postgres-cluster ]; then
      as_pg "$PGBIN/pg_ctl" -D "$what" -m fast -w stop >/dev/null 2>&1 || true
    else
      stop_group "$what"
    fi
  done
  rm -f "$STACK/pids" "$STACK/env" "$SETTINGS"
  echo "stack: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  restart) restart "${2:-}" ;;
  status) status ;;
  logs) logs "${2:-}" ;;
  *) echo "usage: $0 up|down|restart NAME|status|logs [NAME]" >&2; exit 2 ;;
esac
