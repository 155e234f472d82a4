#!/bin/bash
#
# examples.sh <guardian-pkcs11.so> <guardianctl> <guardian-wrap> <C example> [<Go example>]
# — the examples of docs/examples/ (C, PyKCS11, Go: issue_cert) against the
# Guardian run as a service: `p11-kit server` loads the module, the examples
# load only p11-kit-client.so (P11_KIT_SERVER_ADDRESS), so every operation
# crosses p11-kit's RPC.  For each language, on a product of its own:
#   - import a package (CKG_GUARDIAN_REQ_IMPORT); importing it again is
#     refused with CKR_GUARDIAN_PACKAGE_REPLAYED, printed by name;
#   - issue 3 device certificates (CKG_GUARDIAN_REQ_DEVICE_CERT; by
#     OEM/PRODUCT and by package ID), each verified with `openssl verify`
#     against the OEM chain and holding the device's key and ID;
#   - the product's remaining units (CKO_GUARDIAN_PACKAGE) went down by
#     exactly 3; an unknown product is CKR_GUARDIAN_PRODUCT_UNKNOWN by name;
#   - the audit report (CKG_GUARDIAN_REQ_AUDIT_EXPORT) for the product
#     verifies with `guardian-wrap verify-report` and records the very
#     certificates the example wrote out.
# The Go example is built here when no binary is given; without `go` its
# checks are SKIPped (apt-get install golang-go golang-github-miekg-pkcs11-dev).

# The OEM PKI helpers (oem_pki) come from tests/lib/testlib.sh; lib.sh is
# sourced after it, so lib.sh's results and finish are the ones in force.
# shellcheck source-path=SCRIPTDIR source=../lib/testlib.sh
. "$(dirname "$0")/../lib/testlib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# Before interop_init, which moves into the test's own directory.
for i in 2 3 4; do
    if [ ! -x "${!i:-}" ]; then
        printf 'usage: %s MODULE GUARDIANCTL GUARDIAN_WRAP C_EXAMPLE [GO_EXAMPLE]\n' "$0" >&2
        exit 2
    fi
done
CTL=$(readlink -f "$2")
WRAP=$(readlink -f "$3")
EX_C=$(readlink -f "$4")
EX_GO=${5:+$(readlink -f "$5")}
interop_init examples "$1"
EX_PY=$INTEROP_DIR/../../docs/examples/python/issue_cert.py
GO_SRC=$INTEROP_DIR/../../docs/examples/go/issue_cert
PY=/usr/bin/python3
CLIENT=${P11_KIT_CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
LABEL=examples
UNITS=20
ISSUE=3
LANGS=(c python go)

[ -f "$CLIENT" ] || {
    fail "p11-kit-client.so" "$CLIENT is missing (apt-get install p11-kit-modules)"
    finish
}
if ! "$PY" -c 'import PyKCS11' >"$WORK/log/imports.log" 2>&1; then
    fail "PyKCS11" "$PY cannot import PyKCS11 (apt-get install python3-pykcs11)" "$WORK/log/imports.log"
    finish
fi

# ---- the Go example: built by CMake, else here; skipped only without go --------

if [ -z "$EX_GO" ] || [ ! -x "$EX_GO" ]; then
    if command -v go >/dev/null 2>&1; then
        # The documented offline build: Debian's miekg/pkcs11 through the
        # replace directive in go.mod, no module proxy.
        EX_GO=$WORK/issue_cert-go
        must "go build the Go example" env -C "$GO_SRC" GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath" \
            GOPROXY=off GOFLAGS=-mod=readonly GOTOOLCHAIN=local CGO_ENABLED=1 go build -o "$EX_GO" .
    else
        EX_GO=
        LANGS=(c python)
        skip "Go example" "go is not installed (apt-get install golang-go golang-github-miekg-pkcs11-dev)"
    fi
fi

# ---- a Guardian on a fresh token: identity, the OEM enrolled, packages ----------

make_token "$LABEL"
export GUARDIAN_TOKEN=$LABEL GUARDIAN_MODULE=$GUARDIAN_MODULE GUARDIAN_PIN=$USER_PIN GUARDIAN_SO_PIN=$SO_PIN
must "OEM PKI (root, package signer, production CA)" oem_pki
must "guardianctl init" "$CTL" init --out guardian.pem
must "guardianctl enroll-oem" "$CTL" enroll-oem root.pem --oem-id ACME --yes
for lang in "${LANGS[@]}"; do
    must "guardian-wrap create EX-$lang" "$WRAP" create --guardian-cert guardian.pem --signer-key signer.key \
        --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME \
        --product-id "EX-$lang" --release 1 --units "$UNITS" --not-after +10 --out "$lang.gpk"
done

# ---- the service: p11-kit server with the module, as this user ------------------

SOCK=$WORK/guardian.sock
GUARDIAN_DEBUG=trace p11-kit server -f -n "$SOCK" --provider "$GUARDIAN_MODULE" "pkcs11:token=$LABEL" \
    >server.out 2>server.err &
SERVER_PID=$!
on_exit kill "$SERVER_PID"
for _ in $(seq 50); do
    [ -S "$SOCK" ] && break
    sleep 0.1
done
[ -S "$SOCK" ] || {
    fail "p11-kit server" "no socket $SOCK after 5 s" server.err
    finish
}
export P11_KIT_SERVER_ADDRESS=unix:path=$SOCK

# example LANG ARGS...: the LANG example through p11-kit-client.so.
example() {
    local lang=$1
    shift
    case $lang in
    c) "$EX_C" "$CLIENT" "$LABEL" "$@" ;;
    python) "$PY" "$EX_PY" "$CLIENT" "$LABEL" "$@" ;;
    go) "$EX_GO" "$CLIENT" "$LABEL" "$@" ;;
    esac
}

# refused NAME CKR LANG ARGS...: the example exits 1 and prints CKR by name.
refused() {
    local name=$1 ckr=$2 log rc=0
    shift 2
    log=$(logfile "$name")
    example "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 1 ] && grep -q "$ckr (0x" "$log"; then
        pass "$name"
    else
        fail "$name" "expected exit 1 and $ckr, got exit $rc" "$log"
    fi
}

# remaining LANG: the product's remaining units, as the example prints them.
remaining() {
    { example "$1" remaining "ACME/EX-$1" 2>&1 || true; } | sed -n 's/^product .*, \([0-9]*\) remaining$/\1/p'
}

for lang in "${LANGS[@]}"; do
    # (a) import, and the replay refused by name
    log=$(logfile "$lang: import $lang.gpk")
    check "$lang: import $lang.gpk" example "$lang" import "$lang.gpk"
    check_grep "$lang: the import prints the package object's counters" \
        "^imported ACME/EX-$lang release 1 package [0-9a-f]{32}: $UNITS authorised, 0 issued, $UNITS remaining\$" \
        "$log"
    package_id=$(sed -n 's/^imported .* package \([0-9a-f]*\):.*/\1/p' "$log")
    refused "$lang: a replayed import is CKR_GUARDIAN_PACKAGE_REPLAYED" CKR_GUARDIAN_PACKAGE_REPLAYED \
        "$lang" import "$lang.gpk"

    # (b) certificates: the 2nd asked for by package ID, the others by product
    before=$(remaining "$lang")
    check_eq "$lang: remaining units before issuing" "$UNITS" "$before"
    for n in $(seq "$ISSUE"); do
        dev=$lang-dev-$n
        product=ACME/EX-$lang
        [ "$n" -ne 2 ] || product=$package_id
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dev.key" 2>/dev/null
        openssl pkey -in "$dev.key" -pubout -outform DER -out "$dev.spki"
        check "$lang: issue a certificate for $dev (${product})" \
            example "$lang" issue "$product" "$dev" "$dev.spki" "$dev.der"
        if openssl x509 -inform DER -in "$dev.der" -out "$dev.pem" 2>/dev/null; then
            check "$lang: $dev's certificate verifies against the OEM chain (openssl verify)" \
                openssl verify -CAfile root.pem -untrusted ca.pem "$dev.pem"
            openssl x509 -in "$dev.pem" -noout -subject >"$dev.subject"
            check_grep "$lang: $dev's certificate names the device" "CN ?= ?$dev(,|\$)" "$dev.subject"
            openssl x509 -in "$dev.pem" -noout -pubkey | openssl pkey -pubin -outform DER -out "$dev.certkey"
            check "$lang: $dev's certificate holds the device's key" cmp "$dev.spki" "$dev.certkey"
        else
            fail "$lang: $dev's certificate" "$dev.der is not a DER certificate"
        fi
    done
    after=$(remaining "$lang")
    check_eq "$lang: remaining units went down by exactly $ISSUE" "$((before - ISSUE))" "$after"
    refused "$lang: an unknown product is CKR_GUARDIAN_PRODUCT_UNKNOWN" CKR_GUARDIAN_PRODUCT_UNKNOWN \
        "$lang" remaining ACME/NO-SUCH-PRODUCT

    # (c) the audit report for the product
    check "$lang: audit export for ACME/EX-$lang" example "$lang" audit "$lang.report" "ACME/EX-$lang"
    check "$lang: the report verifies (guardian-wrap verify-report)" "$WRAP" verify-report "$lang.report" \
        --guardian guardian.pem --ca-chain ca.pem --root root.pem --package "$lang.gpk"
    issues=$(grep -c "^record [0-9]* ISSUE [0-9]* ACME EX-$lang " "$lang.report" || true)
    check_eq "$lang: the report has $ISSUE ISSUE records for EX-$lang" "$ISSUE" "$issues"
    missing=0
    for n in $(seq "$ISSUE"); do
        grep -q "^certificate [0-9]* $(base64 -w0 "$lang-dev-$n.der")\$" "$lang.report" || missing=$((missing + 1))
    done
    check_eq "$lang: the report holds each certificate the example wrote out" 0 "$missing"
done

# docs/vendor-interface.md: a vendor CK_ULONG of another size than the
# module's (a 32-bit client's 4 bytes) crosses the RPC unchanged and is
# refused, never misread.
cat >ulong4.py <<'PY'
import sys
import PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(True) if lib.getTokenInfo(s).label.strip() == sys.argv[2]][0]
session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
session.login(sys.argv[3])
try:
    session.createObject([(PyKCS11.CKA_CLASS, 0xC7440002), (0xC7440010, (2).to_bytes(4, "little"))])
    print("accepted")
except PyKCS11.PyKCS11Error as e:
    print(hex(e.value))
PY
check_eq "a 4-byte CK_ULONG request type through the RPC is CKR_GUARDIAN_REQUEST_INVALID" 0xc7440040 \
    "$("$PY" ulong4.py "$CLIENT" "$LABEL" "$USER_PIN" 2>&1)"

# The store itself (guardianctl products reads it directly, not through the
# module): each product issued exactly what its example asked for, so no unit
# stayed reserved in a p11-kit-remote process after its client left.
must "guardianctl products" "$CTL" products
for lang in "${LANGS[@]}"; do
    counts=$(awk -v p="EX-$lang" '$2 == p {print $5, $6}' "$(logfile "guardianctl products")")
    check_eq "$lang: the store counts $ISSUE issued, $((UNITS - ISSUE)) remaining" "$ISSUE $((UNITS - ISSUE))" "$counts"
done

# The requests went through the module in the server, not around it.
if trace_has server.err C_CreateObject; then
    pass "the examples reached the Guardian module in p11-kit server (C_CreateObject = CKR_OK in its trace)"
else
    fail "the examples reached the Guardian module in p11-kit server" "no C_CreateObject = CKR_OK" server.err
fi
if grep -q 'CKR_GUARDIAN_PACKAGE_REPLAYED' server.err; then
    pass "the server's trace shows the replayed imports refused"
else
    fail "the server's trace shows the replayed imports refused" "no CKR_GUARDIAN_PACKAGE_REPLAYED" server.err
fi

finish
