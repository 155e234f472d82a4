#!/usr/bin/env bash
# run-all.sh — every test tier, the way CI runs them (README: "Run every test").
#
#   1. build/        RelWithDebInfo (gcc): unit, integration, integration under
#                    valgrind, interop with the real clients
#   2. build-asan/   ASan + UBSan (gcc): unit and integration
#   3. build-fuzz/   clang + libFuzzer: every fuzz target for a fixed budget
#
# Ends with one line "N passed, N failed" (ctest suites counted test by test)
# and exits non-zero if anything failed.
#
# Usage: tests/run-all.sh [--quick] [--help]
#   --quick   stage 1 only (skips ASan+UBSan and the fuzz targets)
# Missing Debian packages (tools/debian-packages) are installed first when run
# as root; otherwise the command to install them is printed and nothing runs.
# Exit status: 0 everything passed; 1 something failed; 2 usage error.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)
quick=0
for arg in "$@"; do
    case $arg in
    --quick) quick=1 ;;
    -h | --help)
        sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -uo/d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "run-all: unknown option '$arg'" >&2
        echo "usage: $0 [--quick] [--help]" >&2
        exit 2
        ;;
    esac
done
"$here/tools/ensure-packages.sh" || exit 1

# Tests must not inherit a developer's Guardian or SoftHSM settings.
unset GUARDIAN_CONF GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG SOFTHSM2_CONF

passed=0
failed=0
failures=()

stage() { printf '\n==== %s ====\n' "$*"; }

# build DIR [cmake options...]: configure and build, showing the log on failure
build() {
    local dir=$1
    shift
    mkdir -p "$dir"
    if ! cmake -S "$here" -B "$dir" "$@" >"$dir/configure.log" 2>&1; then
        cat "$dir/configure.log"
        return 1
    fi
    if ! cmake --build "$dir" -j"$jobs" >"$dir/build.log" 2>&1; then
        grep -E -B2 -A6 'error|Error' "$dir/build.log" | head -80
        return 1
    fi
}

# run_ctest NAME DIR [ctest options...]: counts the tests ctest ran
run_ctest() {
    local name=$1 dir=$2 log
    shift 2
    log="$dir/ctest-$name.log"
    (cd "$dir" && ctest --output-on-failure "$@") 2>&1 | tee "$log"
    local total fails
    total=$(grep -Eo 'tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -1 | awk '{print $NF}')
    fails=$(grep -Eo 'tests passed, [0-9]+ tests failed' "$log" | tail -1 | awk '{print $3}')
    if [ -z "$total" ]; then
        failed=$((failed + 1))
        failures+=("$name: ctest did not run")
        return
    fi
    passed=$((passed + total - fails))
    failed=$((failed + fails))
    [ "$fails" -eq 0 ] || failures+=("$name: $fails failed (see $log)")
}

stage "1/3 build (RelWithDebInfo) and run unit, integration, valgrind, interop"
if build "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
    run_ctest main "$here/build"
else
    failed=$((failed + 1))
    failures+=("build failed")
fi

if [ "$quick" = 0 ]; then
    stage "2/3 ASan + UBSan build: unit and integration"
    if build "$here/build-asan" -DCMAKE_BUILD_TYPE=Debug -DGUARDIAN_SANITIZE=ON -DGUARDIAN_INTEROP_TESTS=OFF; then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            run_ctest asan "$here/build-asan" -L 'unit|integration' -LE valgrind
    else
        failed=$((failed + 1))
        failures+=("ASan build failed")
    fi

    stage "3/3 clang + libFuzzer: fuzz targets, fixed budget"
    if command -v clang >/dev/null; then
        if CC=clang build "$here/build-fuzz" -DGUARDIAN_FUZZ=ON -DGUARDIAN_INTEROP_TESTS=OFF; then
            run_ctest fuzz "$here/build-fuzz" -L fuzz
        else
            failed=$((failed + 1))
            failures+=("fuzz build failed")
        fi
    else
        failed=$((failed + 1))
        failures+=("clang missing: fuzz targets not run")
    fi
fi

stage "summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
# A fuzz finding is random: repeat what reproduces it here, where a CI log's
# tail shows it (the sanitizer's verdict and the input, which libFuzzer gives
# in base64 when it is short, and the file it wrote).
if [[ " ${failures[*]-} " == *" fuzz: "* ]]; then
    grep -E '^(SUMMARY: |==[0-9]+==ERROR: |Base64: |artifact_prefix|Test unit written to |    #[0-4] )' \
        "$here/build-fuzz/ctest-fuzz.log" | cut -c1-300 | head -40
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
