#!/usr/bin/env bash
# stations-bench.sh — certificates per second and the latency of one, with
# the state in SQLite and on PostgreSQL (store = postgresql, a private server
# on a Unix socket: tests/lib/pg.sh), for 1, 2 and 3 stations, in one run
# (issue 12, item 4).  A benchmark, not a test: run by hand
# (docs/performance.md, "Issue #12: stations").
#
#   tests/bench/stations-bench.sh [BUILD_DIR]
#
# A station is a process with its own SoftHSM token, Guardian identity, state
# directory and guardian.conf, driving tests/bench/service-bench --path mech
# (C_DeriveKey with CKM_GUARDIAN_DERIVE_DEVICE_CERT, one certificate a call,
# --workers STATIONS_BENCH_THREADS threads, each call timed).  Three stations
# are made per engine:
#   sqlite      each station its own package and allowance in its own
#               guardian.db: nothing shared, nothing serialises them but the
#               machine's cores (the baseline: what N independent lines do)
#   postgresql  ONE group package for the three Guardians, one allowance on
#               the server (every station's writes take its one lock)
# Each variant (engine × 1, 2, 3 stations) runs once per round, the order
# rotated every round and reversed every other, so that a slow spell of this
# shared machine falls on every variant alike; the N processes of a variant
# start together (their warm-up, STATIONS_BENCH_WARMUP s, absorbs the
# start-up skew) and each runs STATIONS_BENCH_SECONDS timed seconds.
# Reported per variant, the median over rounds of: the sum of the stations'
# rates, the median station's p50 and the worst station's p99 (per
# certificate, microseconds, from service-bench's CLOCK_MONOTONIC timing of
# each call), the worst call (max) and the mean (calls in flight over the
# rate: where it is far above p99, fewer than 1 % of the calls, the
# reservations of blocks, carry most of the time).
#
# Then, untimed, the round trips a certificate costs with 3 stations (the
# server's statement log over one more run; STATIONS_BENCH_COUNT=0 skips it).
#
# Environment: STATIONS_BENCH_ROUNDS (default 3), STATIONS_BENCH_SECONDS
# (default 5), STATIONS_BENCH_WARMUP (default 1), STATIONS_BENCH_THREADS
# (default 1), STATIONS_BENCH_KEEP=1 keeps the temp dir (runs.txt: each
# station's result line).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
M=$BUILD/guardian-pkcs11.so CTL=$BUILD/tools/guardianctl W=$BUILD/tools/guardian-wrap
SB=$BUILD/tests/bench/service-bench
BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
ROUNDS=${STATIONS_BENCH_ROUNDS:-3} SECS=${STATIONS_BENCH_SECONDS:-5} WARMUP=${STATIONS_BENCH_WARMUP:-1}
THREADS=${STATIONS_BENCH_THREADS:-1}
for f in "$M" "$CTL" "$W" "$SB"; do
    [ -f "$f" ] || {
        echo "stations-bench: $f is missing; build with: cmake --build $BUILD --target guardian-pkcs11 guardianctl" \
            "guardian-wrap service-bench" >&2
        exit 2
    }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/stations-bench-XXXXXX")
# shellcheck source=../lib/testlib.sh
. "$SRC/tests/lib/testlib.sh"
# shellcheck source=../lib/pg.sh
. "$SRC/tests/lib/pg.sh"
cleanup() {
    pg_down
    if [ "${STATIONS_BENCH_KEEP:-0}" = 1 ]; then echo "stations-bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cd "$work"
pg_up "$work" >/dev/null
export GUARDIAN_MODULE=$M GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG
oem_pki >/dev/null 2>&1

# station ENGINE N: this shell's environment for that station
station() {
    export SOFTHSM2_CONF=$work/$1-$2/softhsm2.conf GUARDIAN_CONF=$work/$1-$2/guardian.conf GUARDIAN_TOKEN=$1-$2
}
pkg() { # OUT CERT-OPTIONS...
    local out=$1
    shift
    "$W" create "$@" --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem \
        --ca-chain root.pem --oem-id ACME --product-id BENCH --release 1 --units 100000000 --not-after +10 \
        --out "$out" >/dev/null
}
echo "== setup: 3 stations on SQLite (a package each), 3 on PostgreSQL (one group package)"
for engine in sqlite postgresql; do
    members=()
    for n in 1 2 3; do
        mkdir -p "$work/$engine-$n" && mkdir -m 0700 "$work/$engine-$n/state"
        softhsm_token "$work/$engine-$n" "$engine-$n"
        {
            printf 'backend = %s\nstate_dir = %s\nlog_level = error\n' "$BACKEND" "$work/$engine-$n/state"
            [ "$engine" = sqlite ] ||
                printf 'store = postgresql\nstore_conninfo = %s\nstore_password_file = %s\n' "$PG_CONNINFO" "$PG_PASSFILE"
        } >"$work/$engine-$n/guardian.conf"
        station "$engine" "$n"
        "$CTL" init --out "$work/$engine-$n/guardian.pem" >/dev/null 2>&1
        "$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1
        members+=(--guardian-cert "$work/$engine-$n/guardian.pem")
        if [ "$engine" = sqlite ]; then
            pkg "$work/$engine-$n/bench.gpk" --guardian-cert "$work/$engine-$n/guardian.pem"
            "$CTL" import "$work/$engine-$n/bench.gpk" >/dev/null
        fi
    done
    if [ "$engine" = postgresql ]; then
        pkg group.gpk "${members[@]}"
        for n in 1 2 3; do
            station "$engine" "$n"
            "$CTL" import group.gpk >/dev/null
        done
    fi
done

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
# run ENGINE N ROUND: N stations at once; one summary line in runs.txt
run() {
    local engine=$1 n=$2 round=$3 i pids=() rates=() p50s=() p99s=() maxs=() line errs=0
    for i in $(seq "$n"); do
        (station "$engine" "$i" && exec "$SB" --module "$M" --token-label "$engine-$i" --pin 1234 --path mech \
            --workers "$THREADS" --seconds "$SECS" --warmup "$WARMUP" --tag "$engine-s$n") \
            >"$work/out-$i" 2>"$work/err-$i" &
        pids+=($!)
    done
    for i in $(seq "$n"); do
        wait "${pids[$((i - 1))]}" || { cat "$work/err-$i" >&2; echo "stations-bench: $engine, $n stations: station $i failed" >&2; exit 1; }
        line=$(grep '^result' "$work/out-$i")
        echo "station round=$round engine=$engine stations=$n station=$i $line" >>"$work/runs.txt"
        rates+=("$(field rate <<<"$line")") p50s+=("$(field p50_us <<<"$line")") p99s+=("$(field p99_us <<<"$line")")
        maxs+=("$(field max_us <<<"$line")")
        errs=$((errs + $(field errors <<<"$line")))
    done
    printf 'variant %s-s%d round=%d rate=%s p50_us=%s p99_us=%s max_us=%s errors=%d\n' "$engine" "$n" "$round" \
        "$(printf '%s\n' "${rates[@]}" | awk '{s += $1} END {printf "%.1f", s}')" \
        "$(printf '%s\n' "${p50s[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')" \
        "$(printf '%s\n' "${p99s[@]}" | sort -n | tail -1)" "$(printf '%s\n' "${maxs[@]}" | sort -n | tail -1)" "$errs" |
        tee -a "$work/runs.txt"
}

variants=(sqlite:1 postgresql:1 sqlite:2 postgresql:2 sqlite:3 postgresql:3)
nv=${#variants[@]}
echo "== $ROUNDS rounds x $nv variants, ${SECS} s each (+${WARMUP} s warm-up), $THREADS thread(s) per station"
for r in $(seq "$ROUNDS"); do
    order=()
    for k in $(seq 0 $((nv - 1))); do order+=("${variants[$(((k + r - 1) % nv))]}"); done
    if [ $((r % 2)) = 0 ]; then
        rev=()
        for ((k = nv - 1; k >= 0; k--)); do rev+=("${order[$k]}"); done
        order=("${rev[@]}")
    fi
    for v in "${order[@]}"; do run "${v%%:*}" "${v##*:}" "$r"; done
done

echo
echo "== medians over $ROUNDS rounds (rate: all stations together; p50: the median station's; p99: the worst station's)"
awk "$(cat "$HERE/bench-stats.awk")"'
$1 == "variant" {
    v = $2; k = ++cnt[v]
    if (!(v in seen)) { seen[v] = 1; order[++nv] = v }
    rate[v, k] = field($0, "rate") + 0; p50[v, k] = field($0, "p50_us") + 0; p99[v, k] = field($0, "p99_us") + 0
    mx[v, k] = field($0, "max_us") + 0; split(v, vs, "-s"); calls[v] = substr(vs[2], 1) * threads
    errs[v] += field($0, "errors")
}
END {
    printf "%-14s %10s %9s %9s %9s %10s %7s\n", "variant", "cert/s", "mean us", "p50 us", "p99 us", "max us", "errors"
    for (i = 1; i <= nv; i++) {
        v = order[i]
        for (k = 1; k <= cnt[v]; k++) { a[k] = rate[v, k]; b[k] = p50[v, k]; c[k] = p99[v, k]; d[k] = mx[v, k] }
        # mean: the calls in flight (stations x threads) over the rate
        printf "%-14s %10.1f %9.0f %9.0f %9.0f %10.0f %7d\n", v, median(a, cnt[v]), calls[v] * 1e6 / median(a, cnt[v]),
            median(b, cnt[v]), median(c, cnt[v]), median(d, cnt[v]), errs[v]
    }
}' threads="$THREADS" "$work/runs.txt" | sort -t- -k1,1r -k2
echo
echo "PostgreSQL: $(pg_psql -c "SELECT issued_units FROM packages") certificates issued on the shared allowance," \
    "$(pg_psql -c "SELECT count(*) FROM audit") audit records"

# Round trips, untimed: the server's statement log (one line a round trip,
# as store-bench.sh counts them) over one more run of 3 stations, against
# the certificates and reservation blocks that run added.  The give-backs of
# unused units at each station's C_Finalize are in the count.
if [ "${STATIONS_BENCH_COUNT:-1}" = 1 ]; then
    count_state() { # statements logged, then RESERVE, ISSUE and RELEASE records
        echo "$(grep -cE 'LOG:  (statement|execute)' "$work/pg/server.log" || true)" \
            "$(pg_psql -c "SELECT count(*) FILTER (WHERE type = 2), count(*) FILTER (WHERE type = 3),
                count(*) FILTER (WHERE type = 4) FROM audit" | tr '|' ' ')"
    }
    pg_psql -c "ALTER SYSTEM SET log_statement = 'all'" >/dev/null && pg_psql -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
    read -r s0 r0 i0 l0 < <(count_state)
    SECS=2 run postgresql 3 0 >/dev/null # (round 0: after the summary)
    read -r s1 r1 i1 l1 < <(count_state)
    pg_psql -c "ALTER SYSTEM RESET log_statement" >/dev/null && pg_psql -c "SELECT pg_reload_conf()" >/dev/null
    st=$((s1 - s0)) is=$((i1 - i0)) rs=$((r1 - r0)) rl=$((l1 - l0))
    echo "round trips, 3 stations on PostgreSQL, $THREADS thread(s) each, 2 s (logged, untimed): $st for" \
        "$is certificates issued, $rs units reserved, $rl given back at the end:" \
        "$(echo "scale=1; $st / $is" | bc) a certificate;" \
        "$(echo "scale=1; ($st - 8 * $rl) / $is" | bc) without the give-backs (8 each)"
fi
