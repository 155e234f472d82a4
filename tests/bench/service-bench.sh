#!/usr/bin/env bash
# service-bench.sh — device certificates through the service model (p11-kit
# server + p11-kit-client.so) against in-process, in one run: certificates/s,
# the ratio, 1 and 2 clients, and the latency of one certificate (p50/p99).
# A benchmark, not a test: run by hand (docs/performance.md, "Issue #9").
#
#   tests/bench/service-bench.sh [BUILD_DIR]
#   tests/bench/service-bench.sh --summary RUNS   (the tables again, from a kept runs.txt)
#
# Makes a fresh token and Guardian state in a temp dir (bench-setup.sh), starts
# `p11-kit server` on it (as the current user: the service user's separation
# does not change the cost), then runs tests/bench/service-bench once per
# variant and round, the variants interleaved: the order rotates every round
# and is reversed every other round, so that a slow spell of this shared
# machine falls on every variant alike.  Reports the median over rounds.
#
# Variants (name: library, path, workers):
#   sign-t1 sign-t2   the backend, C_Sign with the CA key, 1 and 2 threads
#   mech-t1 mech-t2   the module in-process, CKM_GUARDIAN_DERIVE_DEVICE_CERT, threads
#   mech-p2           the same, 2 processes
#   req-t1 req-t2 req-p2  the module in-process, the CKG_GUARDIAN_REQ_DEVICE_CERT request
#   svc-p1 svc-p2     p11-kit-client.so -> p11-kit server -> the module, the request,
#                     1 and 2 client processes (each its own connection and server process)
#   reqk-t1 svck-p1 svck-p2  the same without a C_DestroyObject per certificate: a
#                     new session every 1,000 certificates (service-bench --keep)
#   batch-t1 batch-p2 svcb-p1 svcb-p2  the CKG_GUARDIAN_REQ_DEVICE_CERTS batch of
#                     SERVICE_BENCH_BATCH (default 16) devices per request, in-process
#                     and through the service (rates and latencies per certificate)
#   rtt-t1 rttsvc-p1  C_GetSessionInfo in-process and through the service: one RPC
#   base-mech-t1 base-mech-t2  SERVICE_BENCH_BASE_MODULE in-process (an earlier build), threads
#
# Environment: SERVICE_BENCH_ROUNDS (default 5), SERVICE_BENCH_SECONDS (timed
# seconds per run, default 3), SERVICE_BENCH_VARIANTS (default: all those the
# build supports), SERVICE_BENCH_BASE_MODULE, SERVICE_BENCH_KEEP=1 keeps the
# temp dir (each run's output is in runs.txt there).
set -euo pipefail

# summarize RUNS: the median per variant over the rounds, and paired ratios
# (per round, then the median over rounds).  Also: service-bench.sh --summary RUNS.
summarize() {
    awk "$(cat "$(dirname "${BASH_SOURCE[0]}")/bench-stats.awk")"'
function minmax(arr, n, want,   i, m) {
    m = arr[1]
    for (i = 2; i <= n; i++) if ((want == "min" && arr[i] < m) || (want == "max" && arr[i] > m)) m = arr[i]
    return m
}
{
    r = field($0, "round"); v = $2
    rate[v, r] = field($0, "rate") + 0; p50[v, r] = field($0, "p50_us") + 0; p99[v, r] = field($0, "p99_us") + 0
    errs[v] += field($0, "errors")
    if (r + 0 > rounds) rounds = r + 0
    if (!(v in known)) { known[v] = 1; order[++nv] = v }
}
function ratio2(a, b, c, d, label,   r, k, x) {
    k = 0
    for (r = 1; r <= rounds; r++)
        if ((a, r) in rate && (b, r) in rate && (c, r) in rate && (d, r) in rate && rate[b, r] > 0 && rate[c, r] > 0)
            x[++k] = (rate[a, r] / rate[b, r]) / (rate[c, r] / rate[d, r])
    if (k > 0) printf "  %-34s %6.3f  (rounds: %.3f .. %.3f)\n", label, median(x, k), minmax(x, k, "min"), minmax(x, k, "max")
}
function ratio(a, b, label,   r, k, x) {
    k = 0
    for (r = 1; r <= rounds; r++) if ((a, r) in rate && (b, r) in rate && rate[b, r] > 0) x[++k] = rate[a, r] / rate[b, r]
    if (k > 0) printf "  %-34s %6.3f  (rounds: %.3f .. %.3f)\n", label, median(x, k), minmax(x, k, "min"), minmax(x, k, "max")
}
END {
    printf "\n%-13s %10s %21s %9s %9s %9s %6s\n", "variant", "median/s", "range/s", "p50 us", "p99 us", "worst p99", "errors"
    for (i = 1; i <= nv; i++) {
        v = order[i]; k = 0
        for (r = 1; r <= rounds; r++) if ((v, r) in rate) { k++; a[k] = rate[v, r]; b[k] = p50[v, r]; c[k] = p99[v, r] }
        if (k == 0) continue
        printf "%-13s %10.0f %10.0f..%-10.0f %9.1f %9.1f %9.1f %6d\n", v, median(a, k), minmax(a, k, "min"),
            minmax(a, k, "max"), median(b, k), median(c, k), minmax(c, k, "max"), errs[v]
    }
    print "\npaired ratios (per round, median over rounds):"
    ratio("svc-p1", "req-t1", "service / in-process, 1 client")
    ratio("svc-p1", "mech-t1", "service / in-process mech, 1 client")
    ratio("svc-p2", "req-p2", "service / in-process, 2 clients")
    ratio("svc-p2", "mech-p2", "service / in-process mech, 2 procs")
    ratio("svc-p2", "svc-p1", "service: 2 clients / 1")
    ratio("req-t1", "mech-t1", "request / mech, in-process")
    ratio("svck-p1", "reqk-t1", "service / in-process, --keep, 1 client")
    ratio("svck-p1", "req-t1", "service --keep / in-process, 1 client")
    ratio("svck-p2", "req-p2", "service --keep / in-process, 2 clients")
    ratio("svcb-p1", "req-t1", "service batch / in-process single, 1 client")
    ratio("svcb-p2", "req-p2", "service batch / in-process single, 2 clients")
    ratio("svcb-p1", "batch-t1", "service batch / in-process batch, 1 client")
    ratio("svcb-p2", "batch-p2", "service batch / in-process batch, 2 clients")
    ratio("batch-t1", "req-t1", "in-process: batch / single")
    ratio("sign-t2", "sign-t1", "scaling: C_Sign, 2 threads / 1")
    ratio("mech-t2", "mech-t1", "scaling: certificates, 2 threads / 1")
    ratio("mech-p2", "mech-t1", "scaling: certificates, 2 procs / 1")
    ratio("req-t2", "req-t1", "scaling: request, 2 threads / 1")
    ratio("base-mech-t2", "base-mech-t1", "scaling: base build, 2 threads / 1")
    ratio2("mech-t2", "mech-t1", "sign-t2", "sign-t1", "scaling of certificates / of C_Sign")
    ratio2("base-mech-t2", "base-mech-t1", "sign-t2", "sign-t1", "the same, base build")
    ratio("mech-t1", "base-mech-t1", "this build / base build, 1 thread")
    ratio("mech-t2", "base-mech-t2", "this build / base build, 2 threads")
    ratio("mech-t1", "sign-t1", "certificate / C_Sign, 1 thread")
    ratio("mech-t2", "sign-t2", "certificate / C_Sign, 2 threads")
}' "$1"
}

if [ "${1:-}" = --summary ]; then
    summarize "$2"
    exit 0
fi
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
M=$BUILD/guardian-pkcs11.so CTL=$BUILD/tools/guardianctl W=$BUILD/tools/guardian-wrap
SB=$BUILD/tests/bench/service-bench
BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
CLIENT=${P11_KIT_CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
ROUNDS=${SERVICE_BENCH_ROUNDS:-5}
SECS=${SERVICE_BENCH_SECONDS:-3}
BASE=${SERVICE_BENCH_BASE_MODULE:-}
LABEL=svcbench
for f in "$M" "$CTL" "$W" "$SB" "$CLIENT" "$BACKEND"; do
    [ -e "$f" ] || {
        echo "service-bench: $f is missing; build with: cmake --build $BUILD --target guardian-pkcs11 guardianctl" \
            "guardian-wrap service-bench" >&2
        exit 2
    }
done
command -v p11-kit >/dev/null || { echo "service-bench: p11-kit is not installed" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/service-bench-XXXXXX")
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
    if [ "${SERVICE_BENCH_KEEP:-0}" = 1 ]; then echo "service-bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cd "$work"
# shellcheck source=tests/bench/bench-setup.sh
. "$HERE/bench-setup.sh"
echo "== setup: token, Guardian identity, OEM PKI, package, import" >&2
bench_setup "$work" "$LABEL" 100000000

# The service: one p11-kit server; each client connection gets its own
# p11-kit-remote process, which loads the module (it inherits this
# environment: GUARDIAN_STATE_DIR, GUARDIAN_BACKEND, SOFTHSM2_CONF).
sock=$work/pkcs11.sock
p11-kit server -f -n "$sock" --provider "$M" "pkcs11:token=$LABEL" >server.out 2>server.err &
server=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "service-bench: p11-kit server did not start:" >&2; cat server.err >&2; exit 1; }

# variant NAME -> "LIBRARY PATH WORKERS MODE KEEP"
variant() {
    case $1 in
    sign-t1) echo "$BACKEND sign 1 threads 0" ;;
    sign-t2) echo "$BACKEND sign 2 threads 0" ;;
    mech-t1) echo "$M mech 1 threads 0" ;;
    mech-t2) echo "$M mech 2 threads 0" ;;
    mech-p2) echo "$M mech 2 procs 0" ;;
    req-t1) echo "$M request 1 threads 0" ;;
    req-t2) echo "$M request 2 threads 0" ;;
    req-p2) echo "$M request 2 procs 0" ;;
    svc-p1) echo "$CLIENT request 1 procs 0" ;;
    svc-p2) echo "$CLIENT request 2 procs 0" ;;
    reqk-t1) echo "$M request 1 threads 1000" ;;
    svck-p1) echo "$CLIENT request 1 procs 1000" ;;
    svck-p2) echo "$CLIENT request 2 procs 1000" ;;
    batch-t1) echo "$M batch 1 threads 0" ;;
    batch-p2) echo "$M batch 2 procs 0" ;;
    svcb-p1) echo "$CLIENT batch 1 procs 0" ;;
    svcb-p2) echo "$CLIENT batch 2 procs 0" ;;
    rtt-t1) echo "$M rtt 1 threads 0" ;;
    rttsvc-p1) echo "$CLIENT rtt 1 procs 0" ;;
    base-mech-t1) echo "$BASE mech 1 threads 0" ;;
    base-mech-t2) echo "$BASE mech 2 threads 0" ;;
    *) return 1 ;;
    esac
}

# One run: the result line's fields, prefixed with the variant's name.
run() {
    local name=$1 lib path workers mode keep procs=
    read -r lib path workers mode keep <<<"$(variant "$name")"
    [ "$mode" = procs ] && procs=--procs
    # shellcheck disable=SC2086 # $procs: no word or one
    P11_KIT_SERVER_ADDRESS=unix:path=$sock GUARDIAN_BENCH_PIN=1234 \
        "$SB" --module "$lib" --token-label "$LABEL" --path "$path" --workers "$workers" $procs --keep "$keep" \
        --batch "${SERVICE_BENCH_BATCH:-16}" --seconds "$SECS" --warmup 0.5 --tag "$name-$round" 2>>"$work/runs.err" | sed "s/^result /$name /"
}

# Which variants this build supports: the request needs CKG_GUARDIAN_REQ_DEVICE_CERT.
round=probe
if [ -n "${SERVICE_BENCH_VARIANTS:-}" ]; then
    read -r -a variants <<<"$SERVICE_BENCH_VARIANTS"
else
    variants=(sign-t1 sign-t2 mech-t1 mech-t2 mech-p2)
    if SECS=0.2 run req-t1 | grep -q rate= && SECS=0.2 run svc-p1 | grep -q rate=; then
        variants+=(req-t1 req-t2 req-p2 svc-p1 svc-p2 reqk-t1 svck-p1 svck-p2 rtt-t1 rttsvc-p1)
        if SECS=0.2 run batch-t1 | grep -q rate=; then
            variants+=(batch-t1 batch-p2 svcb-p1 svcb-p2)
        fi
    else
        echo "service-bench: the module answers no CKG_GUARDIAN_REQ_DEVICE_CERT request (or the service" \
            "failed; see $work/runs.err): request and service variants left out" >&2
    fi
    [ -n "$BASE" ] && variants+=(base-mech-t1 base-mech-t2)
fi
for v in "${variants[@]}"; do variant "$v" >/dev/null || { echo "service-bench: unknown variant $v" >&2; exit 2; }; done

echo "== machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)" >&2
echo "== $ROUNDS rounds x ${#variants[@]} variants x $SECS s (interleaved); load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
n=${#variants[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${variants[$(((i + round - 1) % n))]}"); done
    if ((round % 2 == 0)); then
        rev=()
        for ((i = n - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done
        order=("${rev[@]}")
    fi
    for v in "${order[@]}"; do
        # One more try: a run that fails in its set-up (SoftHSM's file store
        # read while another process writes it) says nothing about the rate.
        line=$(run "$v") || line=$(run "$v") || line=$(run "$v") || {
            echo "service-bench: $v failed three times (round $round); see $work/runs.err" >&2
            tail -5 "$work/runs.err" >&2
            exit 1
        }
        echo "round=$round $line" >>runs.txt
        echo "  round $round: $line" >&2
    done
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
summarize runs.txt
