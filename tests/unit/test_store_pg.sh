#!/usr/bin/env bash
# test_store_pg.sh — unit.store_pg: tests/unit/test_store.c built against the
# store's PostgreSQL engine (test_store_pg, STORE_TEST_PG) and run against a
# private PostgreSQL 15 server (tests/lib/pg.sh); every state directory and
# every "in-memory" store gets its own schema.  77 (skip) without PostgreSQL.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 TEST_STORE_PG [ARGS...] (or a valgrind command line ending in it)"; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/store-pg-XXXXXX")
# shellcheck source=../lib/pg.sh
. "$HERE/../lib/pg.sh"
trap 'pg_down; rm -rf "$work"' EXIT
pg_up "$work"
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { echo "pg_up failed"; exit 1; }
"$@"
