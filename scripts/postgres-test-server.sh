#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, on loopback, with trust authentication.
#
#   scripts/postgres-test-server.sh start DIR [PORT]   # initdb + start; prints the URL
#   scripts/postgres-test-server.sh stop DIR           # stop and remove DIR
#
# Uses Debian's binaries (apt-get install postgresql); PG_BINDIR overrides where they
# are.  As root, the cluster runs as the `postgres` user (initdb refuses root), so DIR
# must be reachable by it: give a directory outside root's private temp dirs.
# fsync is off: the data is thrown away.  Nothing listens beyond 127.0.0.1.
set -euo pipefail

usage() { echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2; }

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ] || [ ! -x "$found/initdb" ]; then
    echo "postgres-test-server: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin" \
         "(apt-get install -y postgresql, or set PG_BINDIR)" >&2
    exit 3
  fi
  echo "$found"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || usage

case "$cmd" in
  start)
    port=${3:-54329}
    bin=$(bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || { echo "postgres-test-server: no postgres user (install Debian's postgresql)" >&2; exit 3; }
      chown postgres: "$dir"
      chmod 0700 "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir'"
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
    opts="$opts -c shared_buffers=64MB -c log_min_messages=warning"
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w -t 60 start >/dev/null; then
      cat "$dir/server.log" >&2 || true
      exit 1
    fi
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      bin=$(bindir)
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
        || as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *) usage ;;
esac
