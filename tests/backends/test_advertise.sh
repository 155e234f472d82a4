#!/bin/bash
#
# test_advertise.sh KIND <guardian-pkcs11.so> <mechlist> [<init_args_shim.so>] —
# which Guardian mechanisms the module advertises on each backend, now that a
# mechanism is advertised where its self-test passes (mechs/selftest.c), and
# that the others cannot be called there; and that a 2.40 caller sees the
# backend's mechanism flags as the backend's own 2.40 list gives them, without
# the bits PKCS#11 3.0 added (NSS softoken is a 3.0 module), while a 3.0 caller
# sees them (docs/backends.md "What each backend advertises").
#
# And the fact the import's OEM-root check reads: whether a plain user can make
# a CKA_TRUSTED certificate (docs/threat-model.md, section 2), as a session
# object (the check) and as the attack itself, a token certificate labelled
# "guardian-root:ACME" planted beside the module.
#
# Expected, measured on Debian 12 (the reason is in docs/backends.md):
#   softhsm       unwrap-package and derive-device-cert
#   nss           unwrap-package and derive (its 0x210A is RFC 3394 + PKCS#7; the import
#                 unwraps under 0x210B, its RFC 5649, and adds CKA_NSS_DB to EC keys)
#   tpm2          derive (the list decides: no session key for its self-test); unwrap decided not to work (C_UnwrapKey is CKR_FUNCTION_NOT_SUPPORTED)
#   opencryptoki  derive (no EC: the RSA-2048 signature passes)
#
# Exit status: 0 all passed, 1 a failure, 77 the backend cannot run here.

# shellcheck source-path=SCRIPTDIR source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

KIND=${1:-}
if [ $# -lt 3 ] || [ $# -gt 4 ] || [ -z "$KIND" ]; then
    printf 'usage: %s softhsm|tpm2|nss|opencryptoki <guardian-pkcs11.so> <mechlist> [<init_args_shim.so>]\n' \
        "$0" >&2
    exit 2
fi
INTEROP_NAME=advertise_$KIND
case $KIND in
softhsm | nss) EXPECTED="0xc7440001 0xc7440002" ;;
tpm2) EXPECTED="0xc7440002" ;;
# opencryptoki (no EC): the unwrap by its RSA-OAEP-SHA256 self-test
# (mechs/selftest.c), for an RSA Guardian.
opencryptoki) EXPECTED="0xc7440001 0xc7440002" ;;
*)
    printf 'FAIL %s: unknown backend kind %s\n0 passed, 1 failed\n' "$INTEROP_NAME" "$KIND"
    exit 1
    ;;
esac
for f in "$2" "$3"; do
    if [ ! -f "$f" ]; then
        printf 'FAIL %s: %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$f"
        exit 1
    fi
done
G=$(readlink -f "$2")
ML=$(readlink -f "$3")
SHIM=${4:+$(readlink -f "$4")}

backend_test_start advertise adv
L=$BACKEND_LABEL

# debug: the self-test's lines (what passed, what failed, how long it took).
{
    printf 'backend = %s\n' "$BACKEND_MODULE"
    printf 'state_dir = %s\n' "$WORK/state"
    printf 'log_level = debug\n'
    if [ -n "$BACKEND_INIT_ARGS" ]; then
        printf 'backend_init_args = %s\n' "$BACKEND_INIT_ARGS"
    fi
} >"$WORK/guardian.conf"
DIRECT=$BACKEND_MODULE
if [ -n "$BACKEND_INIT_ARGS" ]; then
    if [ -z "$SHIM" ] || [ ! -f "$SHIM" ]; then
        fail "init_args_shim" "NSS needs init_args_shim.so as fourth argument (built in tests/backends)"
        finish
    fi
    DIRECT=$SHIM
fi

# list NAME direct|module IFACE [ARGS...]: out/NAME (stdout), out/NAME.err.
list() {
    local name=$1 which=$2 iface=$3 rc=0
    shift 3
    case $which in
    direct)
        backend_exec env "INIT_ARGS_SHIM_MODULE=$BACKEND_MODULE" "INIT_ARGS_SHIM_ARGS=$BACKEND_INIT_ARGS" \
            "$ML" "$DIRECT" "$L" --iface "$iface" "$@" >"out/$name" 2>"out/$name.err" || rc=$?
        ;;
    module)
        backend_exec env "GUARDIAN_CONF=$WORK/guardian.conf" "$ML" "$G" "$L" --iface "$iface" "$@" \
            >"out/$name" 2>"out/$name.err" || rc=$?
        ;;
    esac
    if [ "$rc" -eq 0 ]; then
        pass "mechlist $name"
    else
        fail "mechlist $name" "exit status $rc" "out/$name.err"
    fi
}

vendor_listed() {
    grep -Eo '^0xc744[0-9a-f]{4}' "$1" | tr '\n' ' ' | sed 's/ $//'
}

# The backend's own lines (every mechanism and its flags), the Guardian's removed.
backend_lines() {
    grep -Ev '^(0xc744|call |info )' "$1" || true
}

# ---- what is advertised, and what can be called -----------------------------------

list module-2.40 module 2.40 --call
check_eq "$KIND: the Guardian mechanisms listed through the module" "$EXPECTED" "$(vendor_listed out/module-2.40)"
for m in 0xc7440001 0xc7440002; do
    if printf '%s\n' "$EXPECTED" | grep -qw "$m"; then
        check_grep "$KIND: $m advertised: C_GetMechanismInfo answers CKR_OK" "^info $m 0x0\$" out/module-2.40
        check_grep "$KIND: $m advertised: the call reaches the mechanism (not CKR_MECHANISM_INVALID)" \
            "^call $m 0x([0-689a-f][0-9a-f]*|7[1-9a-f][0-9a-f]*|7)\$" out/module-2.40
    else
        check_grep "$KIND: $m not advertised: C_GetMechanismInfo = CKR_MECHANISM_INVALID" "^info $m 0x70\$" \
            out/module-2.40
        check_grep "$KIND: $m not advertised: calling it = CKR_MECHANISM_INVALID" "^call $m 0x70\$" out/module-2.40
    fi
done
grep -h 'selftest: ' out/module-2.40.err | sed "s/^guardian\[[0-9]*\]: debug: /$KIND: /" |
    while read -r line; do info "$line"; done
# What the import will use (mechs/selftest.c measures it by known answers):
# the schemes, the number RFC 5649 has here, whether EC unwraps need CKA_NSS_DB.
# (SoftHSM 2.6's RSA-OAEP is SHA-1 only: its rsa-oaep answer is a refusal,
# whose wording is the backend's; NSS runs it.)
case $KIND in
softhsm) want='x963-sha256: ECDH1_DERIVE with CKD_SHA256_KDF: CKR_MECHANISM_PARAM_INVALID; aes-cbc: ECDH CKD_NULL + AES_CBC_ENCRYPT_DATA + RFC 5649 unwrap; rsa-oaep: ' want_end='; RFC 5649 as 0x210a)' ;;
nss) want='x963-sha256: ECDH CKD_SHA256_KDF + RFC 5649 unwrap; aes-cbc: ECDH CKD_NULL + AES_CBC_ENCRYPT_DATA + RFC 5649 unwrap; rsa-oaep: RSA-OAEP-SHA256 (label) + AES-CBC-PAD unwrap' want_end='; RFC 5649 as 0x210b, EC unwrap with CKA_NSS_DB)' ;;
*) want= want_end= ;;
esac
if [ -n "$want" ]; then
    if grep -F -- "CKM_GUARDIAN_UNWRAP_PACKAGE works: advertised ($want" out/module-2.40.err | grep -qF -- "$want_end"; then
        pass "$KIND: the key transports measured: $want…$want_end"
    else
        fail "$KIND: the key transports measured: $want…$want_end" "not in the self-test's log line" out/module-2.40.err
    fi
fi
# The package format's own vectors (tests/vectors), in the token through the
# module, each scheme as an import runs it (kt_vectors.c): the KEK, the
# unwrap under the number measured, the signature; and the KDF context and
# the wrap each bind: one bit changed, nothing unwraps.
if [ -n "${GUARDIAN_TEST_KT_VECTORS:-}" ] && { [ "$KIND" = softhsm ] || [ "$KIND" = nss ]; }; then
    backend_exec env "GUARDIAN_CONF=$WORK/guardian.conf" "$GUARDIAN_TEST_KT_VECTORS" "$G" "$L" "$BACKEND_USER_PIN" \
        "$GUARDIAN_TEST_VECTORS" >out/kt-vectors 2>out/kt-vectors.err || true
    bound='other-context 0x110 altered 0x110'
    case $KIND in
    softhsm)
        # SoftHSM answers a failed RFC 5649 check with CKR_GENERAL_ERROR.
        bound='other-context 0x5 altered 0x5'
        want_cbc="aes-cbc derive 0x0 kek-matches 1 kwp 0x210a nss_db 0 verifies 1 $bound"
        # no CKD_SHA256_KDF: CKR_MECHANISM_PARAM_INVALID, nothing further tried
        want_x963='x963-sha256 derive 0x71 kek-matches 0 kwp 0x0 nss_db 0 verifies 0 other-context 0x5 altered 0x5'
        ;;
    nss)
        bound='other-context 0x110 altered 0x110' # CKR_WRAPPED_KEY_INVALID
        want_cbc="aes-cbc derive 0x0 kek-matches 1 kwp 0x210b nss_db 1 verifies 1 $bound"
        want_x963="x963-sha256 derive 0x0 kek-matches 1 kwp 0x210b nss_db 1 verifies 1 $bound"
        ;;
    esac
    check_eq "$KIND: the aes-cbc vectors in the token" "$want_cbc" "$(grep '^aes-cbc ' out/kt-vectors)"
    check_eq "$KIND: the x963-sha256 vectors in the token" "$want_x963" "$(grep '^x963-sha256 ' out/kt-vectors)"
fi
list direct-2.40 direct 2.40
info "$KIND: C_GetMechanismList µs, first and second, straight: $(sed -n 's/^first-list-us \([0-9]*\) second-list-us \([0-9]*\)$/\1, \2/p' out/direct-2.40.err); through the module: $(sed -n 's/^first-list-us \([0-9]*\) second-list-us \([0-9]*\)$/\1, \2/p' out/module-2.40.err)"
# Logged in: the same answer (tpm2-pkcs11 makes no session object even then).
list module-login module 2.40 --call --login "$BACKEND_USER_PIN"
check_eq "$KIND: the same Guardian mechanisms listed when logged in" "$EXPECTED" \
    "$(vendor_listed out/module-login)"
grep -h 'selftest: .*took' out/module-login.err | sed "s/^guardian\[[0-9]*\]: debug: /$KIND logged in: /" |
    while read -r line; do info "$line"; done

# ---- CKA_TRUSTED: the fact the import's root check reads (mechs/selftest.c) ------------

# A plain user's read-only session, a session certificate without CKA_TRUSTED
# (the control) and with it, straight on the backend. The import counts roots
# only where the control is made and the trusted one refused.
list trusted direct 2.40 --login "$BACKEND_USER_PIN" --trusted
case $KIND in
softhsm) want='trusted 0x0 0x10' ;;      # CKR_ATTRIBUTE_READ_ONLY: roots count
opencryptoki) want='trusted 0x0 0xd1' ;; # CKR_TEMPLATE_INCONSISTENT (for the SO too): roots count, none can be made
nss) want='trusted 0x0 0x0' ;;           # a plain user makes it: no root counts
tpm2) want='trusted 0xb5 0x5' ;;         # CKR_SESSION_READ_ONLY: cannot be seen, no root counts
esac
check_eq "$KIND: a plain user's trusted session certificate" "$want" "$(grep '^trusted ' out/trusted)"
# The attack itself, beside the module: a plain user plants a token
# certificate labelled as an enrolment would label it.
openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/root.key -subj "/CN=Planted" \
    -days 30 -addext basicConstraints=critical,CA:TRUE -outform der -out out/root.der 2>out/root.err
list plant direct 2.40 --login "$BACKEND_USER_PIN" --plant "$WORK/out/root.der" guardian-root:ACME
case $KIND in
softhsm) want='plant 0x10' ;;      # CKR_ATTRIBUTE_READ_ONLY
opencryptoki) want='plant 0xd1' ;; # CKR_TEMPLATE_INCONSISTENT
nss | tpm2) want='plant 0x0' ;;    # planted: why the import counts no root there
esac
check_eq "$KIND: a plain user plants a trusted 'guardian-root:ACME' token certificate" "$want" \
    "$(grep '^plant ' out/plant)"

# ---- flags: a 2.40 caller sees the 2.40 list's, a 3.0 caller the 3.0 list's --------

backend_lines out/direct-2.40 >out/direct-2.40.n
backend_lines out/module-2.40 >out/module-2.40.n
check_same "$KIND: every mechanism and its flags, 2.40 caller: straight = through the module" \
    out/direct-2.40.n out/module-2.40.n
# CKF_MESSAGE_* (0x02..0x10), CKF_MULTI_MESSAGE 0x20, CKF_FIND_OBJECTS 0x40, CKF_EC_CURVENAME 0x04000000.
v3_flags() {
    local n=0 t f
    while read -r t f; do
        case $f in 0x*) if (((f & 0x0400007e) != 0)); then n=$((n + 1)); fi ;; esac
    done <"$1"
    printf '%s' "$n"
}
check_eq "$KIND: no 3.0-only mechanism flag reaches a 2.40 caller through the module" 0 "$(v3_flags out/module-2.40.n)"
if [ "$KIND" = nss ]; then
    list direct-3.0 direct 3.0
    list module-3.0 module 3.0
    backend_lines out/direct-3.0 >out/direct-3.0.n
    backend_lines out/module-3.0 >out/module-3.0.n
    n3=$(v3_flags out/direct-3.0.n)
    # The control: NSS's 3.0 list does set them (AES-GCM, ChaCha20-Poly1305).
    if [ "$n3" -gt 0 ]; then
        pass "nss: its 3.0 list sets 3.0-only flags on $n3 mechanisms"
    else
        fail "nss: its 3.0 list sets 3.0-only flags" "none found: the 2.40 check above proves nothing"
    fi
    check_same "nss: every mechanism and its flags, 3.0 caller: straight = through the module" \
        out/direct-3.0.n out/module-3.0.n
fi

finish
