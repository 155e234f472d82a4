#!/usr/bin/env bash
# cert-bench.sh — certificate issuance: throughput against SoftHSM's own C_Sign,
# where a certificate's time goes, resident memory of a long provisioning run,
# and the audit store's growth per certificate.  A benchmark, not a test: run by
# hand (docs/performance.md, "Certificate issuance").
#
#   tests/bench/cert-bench.sh [BUILD_DIR] [-- extra guardian-bench options]
#
# Builds a fresh SoftHSM token and Guardian state in a temp dir: guardianctl
# init, an OEM PKI (OpenSSL), enroll-oem, guardian-wrap create (units
# $CERT_BENCH_UNITS, default 10,000,000), guardianctl import.  Then:
#   1. guardian-bench --calls cert          (the ratio, 1 and 2 threads)
#   2. cert-parts                           (µs per step of one certificate)
#   3. guardianctl provision --count N      (VmRSS/VmHWM at ~1k and at N)
#   4. guardian.db bytes per certificate, per table (sqlite3 dbstat)
# Environment: CERT_BENCH_STEPS (default "ratio parts memory"), CERT_BENCH_SECONDS
# (per arm, default 6), CERT_BENCH_COUNT (provisioning run, default 100000),
# CERT_BENCH_KEEP=1 keeps the temp dir.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
M=$BUILD/guardian-pkcs11.so CTL=$BUILD/tools/guardianctl W=$BUILD/tools/guardian-wrap
BENCH=$BUILD/tests/bench/guardian-bench PARTS=$BUILD/tests/bench/cert-parts
BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
STEPS=${CERT_BENCH_STEPS:-ratio parts memory}
SECONDS_PER_ARM=${CERT_BENCH_SECONDS:-6}
COUNT=${CERT_BENCH_COUNT:-100000}
UNITS=${CERT_BENCH_UNITS:-10000000}
for f in "$M" "$CTL" "$W" "$BENCH" "$PARTS"; do
    [ -x "$f" ] || [ -f "$f" ] || {
        echo "cert-bench: $f is missing; build with: cmake --build $BUILD --target guardian-pkcs11 guardianctl" \
            "guardian-wrap guardian-bench cert-parts" >&2
        exit 2
    }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/cert-bench-XXXXXX")
sampler=
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    if [ "${CERT_BENCH_KEEP:-0}" = 1 ]; then echo "cert-bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cd "$work"
# shellcheck source=tests/bench/bench-setup.sh
. "$HERE/bench-setup.sh"

echo "== setup: token, Guardian identity, OEM PKI, package ($UNITS units), import"
bench_setup "$work" certbench "$UNITS"
"$CTL" products

db=$work/state/guardian.db
issued() { "$CTL" products | awk '$2 == "BENCH" {print $5}'; }
checkpoint() { sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null; }
db_bytes() { # guardian.db + its WAL, after a checkpoint
    checkpoint
    echo $(($(stat -c %s "$db") + $( [ -f "$db-wal" ] && stat -c %s "$db-wal" || echo 0)))
}
# bytes per table and index (dbstat: pages in use and payload)
db_tables() {
    checkpoint
    sqlite3 -separator ' ' "$db" "SELECT name, count(*), sum(pgsize), sum(payload) FROM dbstat GROUP BY name
        ORDER BY sum(pgsize) DESC;"
}

for step in $STEPS; do
    case $step in
    ratio)
        echo
        echo "== 1. certificates/s through the module vs SoftHSM C_Sign with the same CA key"
        "$BENCH" --module "$M" --backend "$BACKEND" --token-label certbench --pin 1234 --calls cert \
            --memory-calls 0 --seconds "$SECONDS_PER_ARM" "$@"
        echo "issued after the ratio runs: $(issued)"
        ;;
    parts)
        echo
        echo "== 2. where one certificate's time goes (cert-parts)"
        "$PARTS" --backend "$BACKEND" --token-label certbench --pin 1234 --state-dir "$work/state" \
            --oem ACME --product BENCH
        ;;
    memory)
        echo
        echo "== 3. resident memory of guardianctl provision --count $COUNT --threads 2, and store growth"
        before_issued=$(issued)
        before_bytes=$(db_bytes)
        # Sample VmRSS/VmHWM every 0.1 s, with the units counted so far (the
        # store's issued_units: certificates issued plus the block in hand).
        "$CTL" provision --product ACME/BENCH --count "$COUNT" --threads 2 --quiet --out certs >provision.out 2>&1 &
        pid=$!
        (
            while [ -r "/proc/$pid/status" ]; do
                rss=$(awk '/^VmRSS|^VmHWM|^RssAnon/ {printf "%s=%s ", $1, $2}' "/proc/$pid/status" 2>/dev/null)
                n=$(sqlite3 "$db" "SELECT sum(issued_units) FROM packages" 2>/dev/null || echo -1)
                n=$((n - before_issued))
                echo "$(date +%s.%N) $n $rss"
                sleep 0.1
            done
        ) >samples.txt &
        sampler=$!
        wait "$pid"
        wait "$sampler" || true
        sampler=
        cat provision.out
        # the first sample at or past 1k, 10k, 25k, 50k, 75k certificates, and the last
        awk 'BEGIN { split("1000 10000 25000 50000 75000", mark, " "); m = 1 }
            { n = $2 }
            m <= 5 && n >= mark[m] { print "  at " n " certificates: " $3, $4, $5; while (m <= 5 && n >= mark[m]) m++ }
            { ln = n; l3 = $3; l4 = $4; l5 = $5 }
            END { print "  at " ln " certificates (last sample): " l3, l4, l5 }' samples.txt
        after_issued=$(issued)
        after_bytes=$(db_bytes)
        n=$((after_issued - before_issued))
        echo "store: $before_bytes -> $after_bytes bytes over $n certificates:" \
            "$(( (after_bytes - before_bytes) / (n > 0 ? n : 1) )) bytes per certificate"
        echo "store by table (name, pages, bytes in pages, payload bytes), $after_issued certificates in all:"
        db_tables | awk -v n="$after_issued" '{ printf "  %-28s %8d pages %12d B %12d B payload  %7.1f B/cert\n",
            $1, $2, $3, $4, $3 / n }'
        ;;
    setup) # nothing more: with CERT_BENCH_KEEP=1, a token and state to study by hand
        echo "SOFTHSM2_CONF=$SOFTHSM2_CONF GUARDIAN_STATE_DIR=$GUARDIAN_STATE_DIR GUARDIAN_BACKEND=$BACKEND"
        ;;
    *)
        echo "cert-bench: unknown step $step (setup ratio parts memory)" >&2
        exit 2
        ;;
    esac
done
