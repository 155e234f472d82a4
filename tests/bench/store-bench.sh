#!/usr/bin/env bash
# store-bench.sh — certificates per second through `guardianctl provision` with
# the state in SQLite and on PostgreSQL (store = postgresql, a private server
# on a Unix socket: tests/lib/pg.sh), one process, and the PostgreSQL round
# trips per reservation block and per certificate counted from the server's
# statement log (log_statement = all).  A benchmark, not a test: run by hand
# (docs/performance.md, "The state on PostgreSQL").
#
#   tests/bench/store-bench.sh [BUILD_DIR]     (STORE_BENCH_COUNT, default 2000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
M=$BUILD/guardian-pkcs11.so CTL=$BUILD/tools/guardianctl W=$BUILD/tools/guardian-wrap
COUNT=${STORE_BENCH_COUNT:-2000}
work=$(mktemp -d "${TMPDIR:-/tmp}/store-bench-XXXXXX")
# shellcheck source=../lib/testlib.sh
. "$SRC/tests/lib/testlib.sh"
# shellcheck source=../lib/pg.sh
. "$SRC/tests/lib/pg.sh"
trap 'pg_down; rm -rf "$work"' EXIT
cd "$work"
pg_up "$work" >/dev/null
echo "log_statement = 'all'" >>"$work/pg/data/postgresql.conf"
pg_stop && pg_start
backend=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
export GUARDIAN_MODULE=$M GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG
oem_pki >/dev/null 2>&1
for engine in sqlite postgresql; do
    mkdir -m 0700 "state-$engine"
    softhsm_token "$work/$engine" "b-$engine"
    export GUARDIAN_TOKEN=b-$engine GUARDIAN_CONF=$work/$engine.conf
    {
        printf 'backend = %s\nstate_dir = %s\nlog_level = error\n' "$backend" "$work/state-$engine"
        [ "$engine" = sqlite ] ||
            printf 'store = postgresql\nstore_conninfo = %s\nstore_password_file = %s\n' "$PG_CONNINFO" "$PG_PASSFILE"
    } >"$GUARDIAN_CONF"
    "$CTL" init --out "g-$engine.pem" >/dev/null 2>&1
    "$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1
    "$W" create --guardian-cert "g-$engine.pem" --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id BENCH --release 1 --units 1000000 \
        --not-after +10 --out "$engine.gpk" >/dev/null
    "$CTL" import "$engine.gpk" >/dev/null
    before=$(grep -cE 'LOG:  (statement|execute)' "$work/pg/server.log" || true)
    t0=$(date +%s.%N)
    "$CTL" provision --product ACME/BENCH --count "$COUNT" --threads 2 --quiet --out "certs-$engine" >/dev/null 2>&1
    t1=$(date +%s.%N)
    after=$(grep -cE 'LOG:  (statement|execute)' "$work/pg/server.log" || true)
    rate=$(echo "$COUNT / ($t1 - $t0)" | bc -l)
    printf '%-10s %d certificates in %.2f s: %.0f certificates/s' "$engine" "$COUNT" "$(echo "$t1 - $t0" | bc -l)" "$rate"
    if [ "$engine" = postgresql ]; then
        # (issuance has a row per serial reserved, each with its own RESERVE
        # record's seq: this counts units reserved, not blocks)
        reserved=$(pg_psql -c "SELECT count(*) FROM issuance WHERE product_id = 'BENCH'")
        printf ', %d round trips to the server (%d units reserved)' "$((after - before))" "$reserved"
    fi
    echo
done
echo "statements by kind on the server during the PostgreSQL run:"
grep -oE 'LOG:  (statement|execute [a-z0-9]+): [A-Za-z]+( [A-Za-z_]+)?( [A-Za-z_]+)?' "$work/pg/server.log" |
    sed 's/LOG:  //' | sort | uniq -c | sort -rn | head -25
