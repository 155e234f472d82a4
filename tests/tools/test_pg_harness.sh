#!/usr/bin/env bash
# test_pg_harness.sh — the private PostgreSQL server the shared-allowance tests
# run against (tests/lib/pg.sh, issue 12) is what those tests assume: run by an
# unprivileged account, no TCP listener at all, the Guardian's role admitted by
# its password only, its data kept across a stop and a crash (kill -9 of the
# postmaster) and the server back on the same socket afterwards.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pg-harness-XXXXXX")
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/pg.sh
. "$HERE/../lib/pg.sh"
trap 'pg_down; rm -rf "$work"' EXIT

pg_up "$work"
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { ko "pg_up"; finish; exit; }
ok "pg_up: PostgreSQL $(pg_psql -c 'SHOW server_version')"

owner=$(ps -o user= -p "$(head -1 "$work/pg/data/postmaster.pid")")
if [ "$(id -u)" = 0 ]; then
    [ "$owner" = nobody ] && ok "the server runs as nobody, not root" || ko "the server runs as '$owner'"
else
    [ "$owner" = "$(id -un)" ] && ok "the server runs as $owner" || ko "the server runs as '$owner'"
fi
[ -z "$(pg_psql -c 'SHOW listen_addresses')" ] && ok "listen_addresses is empty" || ko "a TCP listener is configured"
pid=$(head -1 "$work/pg/data/postmaster.pid")
if command -v ss >/dev/null; then
    ss -Hltnp 2>/dev/null | grep -q "pid=$pid," && ko "the postmaster listens on TCP" || ok "no TCP socket of the postmaster (ss)"
fi
[ -S "$PG_HOST/.s.PGSQL.$PG_PORT" ] && ok "the Unix socket is in the test's directory" || ko "no socket in $PG_HOST"
[ "$(stat -c %a "$PG_PASSFILE")" = 600 ] && ok "the password file is 0600" || ko "password file mode $(stat -c %a "$PG_PASSFILE")"

expect "no password: refused" 1 "password authentication failed|no password supplied" -- \
    env PGPASSFILE=/dev/null PGPASSWORD= psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -w -c 'select 1'
expect "a wrong password: refused" 1 "password authentication failed" -- \
    env PGPASSFILE=/dev/null PGPASSWORD=wrong psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -w -c 'select 1'
expect "the password from the file: admitted" 0 "^1$" -- pg_psql -c 'select 1'

pg_psql -c 'CREATE TABLE t (n int); INSERT INTO t VALUES (7)' && ok "a committed row" || ko "create"
pg_stop && ok "pg_stop" || ko "pg_stop"
expect "stopped: a client is refused" 1 "No such file|could not connect|Connection refused" -- pg_psql -c 'select 1'
pg_start && ok "pg_start" || ko "pg_start"
expect "after a stop the row is there" 0 "^7$" -- pg_psql -c 'select n from t'
pg_kill
expect "crashed: a client is refused" 1 "No such file|could not connect|Connection refused|terminat" -- pg_psql -c 'select 1'
pg_start && ok "pg_start after kill -9 (crash recovery)" || ko "pg_start after kill -9"
expect "after a crash the committed row is there" 0 "^7$" -- pg_psql -c 'select n from t'
pg_down
pgrep -u "$owner" -f "$work/pg" >/dev/null && ko "a server process is left" || ok "nothing left running"
finish
