# shellcheck shell=bash
# testlib.sh — helpers shared by the shell tests of tools/ and integration/:
# results, an expect-style check, a throwaway SoftHSM token and an OEM PKI.
# Source it after `set -uo pipefail`; the caller owns $work (mktemp -d).

pass=0
fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1"; fail=$((fail + 1)); }

# expect NAME 0|1 PATTERN -- CMD...: CMD must succeed (0) or fail (1), and its
# output (stdout+stderr, no stdin) must match the extended regex PATTERN.
expect() {
    local name=$1 want=$2 pattern=$3 out rc
    shift 4
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    if { [ "$want" = 0 ] && [ $rc -ne 0 ]; } || { [ "$want" != 0 ] && [ $rc -eq 0 ]; }; then
        shown_ko "$name: exit $rc" "$out"
        return
    fi
    output_matches "$name" "$pattern" "$out"
}

# expect_rc NAME CODE PATTERN -- CMD...: as expect, but CMD must exit with exactly
# CODE (the tools' convention: 0 done, 1 refused/failed, 2 usage error).
expect_rc() {
    local name=$1 want=$2 pattern=$3 out rc
    shift 4
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        shown_ko "$name: exit $rc, not $want" "$out"
        return
    fi
    output_matches "$name" "$pattern" "$out"
}

# output_matches NAME PATTERN OUTPUT: ok when PATTERN (empty: anything) matches.
output_matches() {
    if [ -n "$2" ] && ! grep -qE -- "$2" <<<"$3"; then
        shown_ko "$1: output lacks /$2/" "$3"
        return
    fi
    ok "$1"
}

# shown_ko WHAT OUTPUT: a failure, with the command's output indented below it.
shown_ko() {
    ko "$1"
    echo "$2" | sed 's/^/    /'
}

# finish: the closing line every runner understands, and the exit status.
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}

# softhsm_token DIR LABEL: a fresh token under DIR/tokens; exports SOFTHSM2_CONF.
softhsm_token() {
    mkdir -p "$1/tokens"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$1" >"$1/softhsm2.conf"
    export SOFTHSM2_CONF=$1/softhsm2.conf
    softhsm2-util --init-token --free --label "$2" --pin 1234 --so-pin 12345678 >/dev/null
}

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# oem_root NAME SUBJECT: a self-signed CA, NAME.key and NAME.pem in the cwd.
oem_root() {
    ec_key "$1.key"
    openssl req -new -x509 -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# oem_issue NAME SUBJECT ROOT EXTENSIONS: a certificate NAME.pem issued by ROOT.
oem_issue() {
    ec_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -days 365 -out "$1.pem" \
        -extfile <(printf '%s\n' "$4") 2>/dev/null
}

# oem_pki: root.pem, signer.pem (package signing) and ca.pem (production CA).
oem_pki() {
    oem_root root "ACME Root"
    oem_issue signer "/CN=ACME Package Signer" root "keyUsage=critical,digitalSignature"
    oem_issue ca "/CN=ACME Production CA" root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
}

# shellcheck source=reach.sh
. "$(dirname "${BASH_SOURCE[0]}")/reach.sh"
