#!/usr/bin/env bash
# `make run`: NATS (JetStream) and PostgreSQL from .tools/, data under .data/, and the three
# services built from this checkout, all on loopback. Ctrl-C stops everything; data is kept, so a
# second run picks up where the first stopped. No Docker, no root needed (when run as root,
# PostgreSQL runs as `nobody`, because it refuses to run as root).
set -euo pipefail

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
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/runcast"
export RUST_LOG="${RUST_LOG:-info}"
export RUNCAST_LOG_FORMAT="${RUNCAST_LOG_FORMAT:-text}"

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

cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  for name in ws-gateway execution-api event-persister; do
    [[ -f "$run/$name.pid" ]] && kill -TERM "$(cat "$run/$name.pid")" 2>/dev/null || true
  done
  for name in simulate ws-gateway execution-api event-persister postgres nats; do stop_pidfile "$run/$name.pid"; done
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

# --- NATS with JetStream
"$tools/bin/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$data/nats" >>"$data/logs/nats.log" 2>&1 &
echo $! >"$run/nats.pid"
wait_for "nats-server on port $NATS_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"

# --- PostgreSQL (as nobody when we are root)
pg="$tools/pg"
as_pg_user=()
if [[ "$(id -u)" == 0 ]]; then
  as_pg_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  if ! "${as_pg_user[@]}" test -x "$pg/bin/postgres"; then
    # The project sits where nobody cannot enter (e.g. /root): use a world-readable copy.
    copy="${TMPDIR:-/tmp}/runcast-pginstall"
    [[ -x "$copy/bin/postgres" ]] || { cp -a "$(readlink -f "$pg")" "$copy.tmp.$$" && mv "$copy.tmp.$$" "$copy"; }
    pg="$copy"
  fi
  mkdir -p "$data/pg" && chown nobody:nogroup "$data/pg" && chmod 700 "$data/pg"
fi
if [[ ! -f "$data/pg/PG_VERSION" ]]; then
  log "initialising PostgreSQL in .data/pg"
  "${as_pg_user[@]}" "$pg/bin/initdb" -D "$data/pg" -U postgres -A trust -E UTF8 --locale=C >>"$data/logs/postgres.log" 2>&1
fi
"${as_pg_user[@]}" "$pg/bin/postgres" -D "$data/pg" -p "$PG_PORT" -k "$data/pg" \
  -c listen_addresses=127.0.0.1 >>"$data/logs/postgres.log" 2>&1 &
echo $! >"$run/postgres.pid"
wait_for "PostgreSQL on port $PG_PORT" "$pg/bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q
if ! "$pg/bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'runcast'" | grep -q 1; then
  "$pg/bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres runcast
fi

# --- the services, output prefixed with their names
start_service() { # name, env...
  local name="$1"; shift
  env "$@" "target/debug/$name" > >(sed -u "s/^/[$name] /") 2>&1 &
  echo $! >"$run/$name.pid"
}
start_service event-persister RUNCAST_HTTP_ADDR="$PERSISTER_ADDR"
# The dashboard (served by the gateway) calls the REST API from the gateway's origin.
start_service execution-api RUNCAST_HTTP_ADDR="$API_HTTP_ADDR" RUNCAST_GRPC_ADDR="$API_GRPC_ADDR" \
  RUNCAST_CORS_ORIGINS="${RUNCAST_CORS_ORIGINS:-http://$GATEWAY_ADDR,http://localhost:${GATEWAY_ADDR##*:}}"
start_service ws-gateway RUNCAST_HTTP_ADDR="$GATEWAY_ADDR" RUNCAST_DASHBOARD_API_URL="http://$API_HTTP_ADDR/api/v1"
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
    http://$GATEWAY_ADDR/?token=$token
  Watch it live:
    RUNCAST_JWT_SECRET=$RUNCAST_JWT_SECRET RUNCAST_GATEWAY_URL=$RUNCAST_GATEWAY_URL target/debug/runcast watch

  Ctrl-C stops everything. Logs of NATS and PostgreSQL: .data/logs/
TXT

# Exit (and clean up) when any service dies, or on Ctrl-C.
while sleep 1; do
  for name in event-persister execution-api ws-gateway; do
    if ! kill -0 "$(cat "$run/$name.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
      log "$name exited; stopping everything"
      exit 1
    fi
  done
done
