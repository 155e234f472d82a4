# shellcheck shell=bash
#
# lib.sh — shared helpers for the interop tier (tests/interop/*.sh).
#
# Each script runs one real PKCS#11 client twice: straight against SoftHSMv2 (the
# backend) and through guardian-pkcs11.so, and compares what the client shows.
# Usage in a script:
#
#   . "$(dirname "$0")/lib.sh"
#   interop_init my-client "$@"      # $1 = path to guardian-pkcs11.so
#   make_token L                     # fresh SoftHSM token in this test's temp dir
#   check "name" cmd args...         # PASS when cmd exits 0
#   ...
#   finish                           # prints "N passed, N failed", exits non-zero on failure
#
# Every test prints exactly one line: "PASS name", "FAIL name: why" or
# "SKIP name: why".  Notes that are not assertions start with "INFO".
# Everything a test writes lives in $WORK (mktemp -d), removed on exit; set
# INTEROP_KEEP=1 to keep it for a post-mortem (its path is printed).

set -euo pipefail

# Globals the scripts use (shellcheck cannot see that from here).
# shellcheck disable=SC2034
INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
# shellcheck disable=SC2034
USER_PIN=1234
SO_PIN=12345678

PASSED=0
FAILED=0
SKIPPED=0
WORK=
GUARDIAN_MODULE=
INTEROP_NAME=
_FINISHED=0
_CLEANUPS=()

# ---- results ----------------------------------------------------------------

pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS %s\n' "$1"
}

# fail NAME WHY [FILE]: FILE (a log) is shown indented, at most 15 lines.
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL %s: %s\n' "$1" "$2"
    if [ -n "${3:-}" ] && [ -s "$3" ]; then
        head -n 15 "$3" | sed 's/^/    | /'
    fi
}

skip() {
    SKIPPED=$((SKIPPED + 1))
    printf 'SKIP %s: %s\n' "$1" "$2"
}

info() {
    printf 'INFO %s\n' "$*"
}

# A file name for a test's log: "pkcs11-tool -L" -> $WORK/log/pkcs11-tool_-L.log
logfile() {
    local n
    n=$(printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_')
    printf '%s/log/%s.log' "$WORK" "$n"
}

# check NAME CMD...: PASS when CMD exits 0 (its stdout+stderr go to the log).
check() {
    local name=$1 log rc=0
    shift
    log=$(logfile "$name")
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "exit status $rc from: $*" "$log"
    fi
    return 0
}

# check_fails NAME CMD...: PASS when CMD exits non-zero (negative controls).
check_fails() {
    local name=$1 log rc=0
    shift
    log=$(logfile "$name")
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        pass "$name"
    else
        fail "$name" "expected failure, got exit status 0 from: $*" "$log"
    fi
    return 0
}

# check_same NAME EXPECTED ACTUAL: the two files must be identical.
check_same() {
    local name=$1 a=$2 b=$3 d
    d=$(logfile "$name").diff
    if [ ! -e "$a" ] || [ ! -e "$b" ]; then
        fail "$name" "missing output file ($a or $b)"
    elif [ ! -s "$a" ] && [ ! -s "$b" ]; then
        fail "$name" "both outputs are empty (nothing was compared)"
    elif diff -u "$a" "$b" >"$d" 2>&1; then
        pass "$name"
    else
        fail "$name" "direct and module outputs differ (diff -u direct module)" "$d"
    fi
    return 0
}

# check_grep NAME REGEX FILE: an extended regex must match a line of FILE.
check_grep() {
    local name=$1 re=$2 f=$3
    if grep -Eq -- "$re" "$f" 2>/dev/null; then
        pass "$name"
    else
        fail "$name" "no line matches /$re/ in $(basename "$f")" "$f"
    fi
    return 0
}

# check_eq NAME EXPECTED ACTUAL: two strings.
check_eq() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1" "expected '$2', got '$3'"
    fi
    return 0
}

# must NAME CMD...: a set-up step.  On failure it is reported as a FAIL and the
# script ends (later tests would only repeat the same failure).
must() {
    local name=$1 log rc=0
    shift
    log=$(logfile "$name")
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "$name" "set-up step failed (exit status $rc): $*" "$log"
        finish
    fi
    return 0
}

# Count the PASS/FAIL/SKIP lines another program printed (e.g. a Python
# helper) into our counters; the lines themselves are echoed unchanged.
absorb_results() {
    local line
    while IFS= read -r line; do
        printf '%s\n' "$line"
        case $line in
        "PASS "*) PASSED=$((PASSED + 1)) ;;
        "FAIL "*) FAILED=$((FAILED + 1)) ;;
        "SKIP "*) SKIPPED=$((SKIPPED + 1)) ;;
        esac
    done <"$1"
}

# Does the Guardian trace in FILE show FUNCTION returning CKR (default CKR_OK)?
# Proves a client really went through our module, not around it.
trace_has() {
    grep -Eq "^guardian\[[0-9]+\]: trace: call: $2 = ${3:-CKR_OK}\$" "$1"
}

finish() {
    _FINISHED=1
    if [ "$PASSED" -eq 0 ] && [ "$FAILED" -eq 0 ]; then
        fail "$INTEROP_NAME" "no test ran"
    fi
    if [ "$SKIPPED" -gt 0 ]; then
        printf '%d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
    else
        printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    fi
    if [ "$FAILED" -gt 0 ]; then
        exit 1
    fi
    exit 0
}

# ---- set-up and clean-up ----------------------------------------------------

# on_exit CMD...: run CMD (a function name and its words) when the script ends.
on_exit() {
    _CLEANUPS+=("$*")
}

_interop_exit() {
    local rc=$? c i
    set +e
    if [ "$_FINISHED" -eq 0 ]; then
        # set -e stopped the script outside a check: that is a failure too.
        printf 'FAIL %s: script aborted (exit status %d) before finishing\n' "$INTEROP_NAME" "$rc"
        FAILED=$((FAILED + 1))
        printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
        rc=1
    fi
    for ((i = ${#_CLEANUPS[@]} - 1; i >= 0; i--)); do
        c=${_CLEANUPS[$i]}
        eval "$c" >/dev/null 2>&1
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${INTEROP_KEEP:-0}" = 1 ]; then
            printf 'INFO kept %s\n' "$WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# interop_init NAME MODULE: check the argument, make $WORK, export what the
# module and SoftHSM need.  Leaves the shell in $WORK.
interop_init() {
    INTEROP_NAME=$1
    shift
    if [ $# -ne 1 ] || [ -z "$1" ]; then
        printf 'usage: %s <path-to-guardian-pkcs11.so>\n' "$INTEROP_NAME" >&2
        exit 2
    fi
    if [ ! -f "$1" ]; then
        printf 'FAIL %s: module %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$1"
        exit 1
    fi
    # shellcheck disable=SC2034 # used by the scripts
    GUARDIAN_MODULE=$(readlink -f "$1")
    if [ ! -f "$SOFTHSM_MODULE" ]; then
        printf 'FAIL %s: SoftHSM module %s is missing (apt-get install softhsm2)\n0 passed, 1 failed\n' \
            "$INTEROP_NAME" "$SOFTHSM_MODULE"
        exit 1
    fi

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/guardian-interop-$INTEROP_NAME.XXXXXX")
    trap _interop_exit EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$WORK/log" "$WORK/tokens" "$WORK/state"
    cd "$WORK"
    # A client crashing on purpose (SoftHSM's C_Initialize race) must not leave cores.
    ulimit -c 0

    # The module: no configuration file, the backend from the environment; the
    # log level pinned so a stray config file cannot add output to compare.
    unset GUARDIAN_CONF
    export GUARDIAN_BACKEND=$SOFTHSM_MODULE
    export GUARDIAN_STATE_DIR=$WORK/state
    export GUARDIAN_DEBUG=warn

    # SoftHSM: a private token directory.
    export SOFTHSM2_CONF=$WORK/softhsm2.conf
    write_softhsm_conf "$SOFTHSM2_CONF" false
    # Clients must not pick up a user's or system's settings.
    export HOME=$WORK/home
    mkdir -p "$HOME"
    unset OPENSSL_CONF PKCS11_MODULE_PATH GNUTLS_PIN
}

# write_softhsm_conf FILE RESET_ON_FORK(true|false)
write_softhsm_conf() {
    cat >"$1" <<EOF
directories.tokendir = $WORK/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
library.reset_on_fork = $2
EOF
}

# make_token LABEL: initialise a fresh token (user PIN 1234, SO PIN 12345678).
make_token() {
    must "init token $1" softhsm2-util --init-token --free --label "$1" --pin "$USER_PIN" --so-pin "$SO_PIN"
}

# Library-level lines legitimately differ (C_GetInfo manufacturer, description,
# library version); everything else must not.
normalise_info() {
    sed -E \
        -e 's/^(Manufacturer +).*/\1<library manufacturer>/' \
        -e 's/^(Library +).*/\1<library description and version>/' \
        -e 's/^( *library-(manufacturer|description|version): ).*/\1<library>/' \
        "$1"
}
