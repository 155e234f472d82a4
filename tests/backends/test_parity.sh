#!/bin/bash
#
# test_parity.sh KIND <guardian-pkcs11.so> [<init_args_shim.so>] — OpenSC
# pkcs11-tool straight on a backend and through the Guardian module must give
# the same result: -I, -L, -T, -M, -O and --test, stdout, stderr and exit
# status each, after the normalisation below.  KIND = softhsm | tpm2 | nss |
# opencryptoki; the backend is brought up in a temporary directory by lib.sh
# and taken down again whatever happens.
#
# The module is configured the way an operator would: a guardian.conf with
# `backend`, a private `state_dir` and, for NSS, `backend_init_args`.
# NSS's "direct" path is init_args_shim.so (the third argument): pkcs11-tool
# cannot pass pReserved, the shim sets it and changes nothing else.
#
# Lines that legitimately differ, and are normalised:
# - -I: the library's manufacturer, description and version (the module
#   names itself), and the Cryptoki version: the module's C_GetInfo gives
#   the version of its own interface, 2.40 (3.0 when the caller took the 3.0
#   interface of a 3.0 backend), where opencryptoki 3.8 says 2.20;
# - -M: the Guardian's vendor mechanisms (0xC744…), listed only through the
#   module (reported as INFO lines, per backend).
# Everything else must be byte for byte the same; docs/backends.md has the
# results per backend.
#
# Exit status: 0 all passed, 1 a failure (a missing package is named), 77 the
# backend cannot run here (opencryptoki when not root or unshare is refused).

# shellcheck source-path=SCRIPTDIR source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

KIND=${1:-}
if [ $# -lt 2 ] || [ $# -gt 3 ] || [ -z "$KIND" ]; then
    printf 'usage: %s softhsm|tpm2|nss|opencryptoki <guardian-pkcs11.so> [<init_args_shim.so>]\n' "$0" >&2
    exit 2
fi
INTEROP_NAME=parity_$KIND
if [ ! -f "$2" ]; then
    printf 'FAIL %s: module %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$2"
    exit 1
fi
G=$(readlink -f "$2")
SHIM=${3:+$(readlink -f "$3")}
if [ "$KIND" = nss ] && { [ -z "$SHIM" ] || [ ! -f "$SHIM" ]; }; then
    printf 'FAIL %s: NSS needs init_args_shim.so as third argument (built in tests/backends)\n0 passed, 1 failed\n' \
        "$INTEROP_NAME"
    exit 1
fi
if ! command -v pkcs11-tool >/dev/null; then
    printf 'FAIL %s: pkcs11-tool is missing: apt-get install opensc\n0 passed, 1 failed\n' "$INTEROP_NAME"
    exit 1
fi

backend_test_start backends parity
PIN=$BACKEND_USER_PIN
L=$BACKEND_LABEL

# The Guardian, configured by file.
{
    printf 'backend = %s\n' "$BACKEND_MODULE"
    printf 'state_dir = %s\n' "$WORK/state"
    printf 'log_level = warn\n'
    if [ -n "$BACKEND_INIT_ARGS" ]; then
        printf 'backend_init_args = %s\n' "$BACKEND_INIT_ARGS"
    fi
} >"$WORK/guardian.conf"

DIRECT=$BACKEND_MODULE
DIRECT_ENV=()
if [ -n "$BACKEND_INIT_ARGS" ]; then
    DIRECT=$SHIM
    DIRECT_ENV=("INIT_ARGS_SHIM_MODULE=$BACKEND_MODULE" "INIT_ARGS_SHIM_ARGS=$BACKEND_INIT_ARGS")
fi

# p11 direct|module ARGS...
p11() {
    local which=$1
    shift
    case $which in
    direct) backend_exec env "${DIRECT_ENV[@]}" pkcs11-tool --module "$DIRECT" "$@" ;;
    module) backend_exec env "GUARDIAN_CONF=$WORK/guardian.conf" pkcs11-tool --module "$G" "$@" ;;
    esac
}

# capture NAME direct|module ARGS...: out/NAME.which (stdout), .err, .rc.
capture() {
    local name=$1 which=$2 rc=0
    shift 2
    p11 "$which" "$@" >"out/$name.$which" 2>"out/$name.$which.err" || rc=$?
    printf '%s\n' "$rc" >"out/$name.$which.rc"
}

# same NAME FILTER: compare stdout (after FILTER, a command reading a file),
# stderr and exit status of direct and module.
same() {
    local name=$1 filter=${2:-cat} w
    for w in direct module; do
        $filter "out/$name.$w" >"out/$name.$w.n"
    done
    check_same "pkcs11-tool $name: stdout direct = module" "out/$name.direct.n" "out/$name.module.n"
    if [ -s "out/$name.direct.err" ] || [ -s "out/$name.module.err" ]; then
        check_same "pkcs11-tool $name: stderr direct = module" "out/$name.direct.err" "out/$name.module.err"
    fi
    check_eq "pkcs11-tool $name: exit status direct = module" "$(cat "out/$name.direct.rc")" \
        "$(cat "out/$name.module.rc")"
}

# compare NAME ARGS...: run both ways, then `same`.
compare() {
    local name=$1
    shift
    capture "$name" direct "$@"
    capture "$name" module "$@"
    same "$name"
}

# shellcheck disable=SC2317 # called through `same`
normalise_info_version() {
    normalise_info "$1" | sed -E 's/^Cryptoki version .*/Cryptoki version <interface>/'
}

# shellcheck disable=SC2317 # called through `same`
no_vendor_mechs() {
    grep -v 'mechtype-0xC744' "$1" || true
}

# ---- library, slots, token, mechanisms -----------------------------------------

capture -I direct -I
capture -I module -I
same -I normalise_info_version
check_grep "pkcs11-tool -I: the module speaks Cryptoki 2.40 or 3.0" '^Cryptoki version (2\.40|3\.0)$' out/-I.module
info "$KIND: Cryptoki version straight: $(sed -n 's/^Cryptoki version //p' out/-I.direct), through the module: $(sed -n 's/^Cryptoki version //p' out/-I.module)"
check_grep "pkcs11-tool -I: the module path is the Guardian" '^Manufacturer +Guardian PKCS#11 *$' out/-I.module
compare -L -L
check_grep "pkcs11-tool -L: token $L listed through the module" "token label +: $L\$" out/-L.module
compare -T -T
capture -M direct -M --token-label "$L"
capture -M module -M --token-label "$L"
same -M no_vendor_mechs
vendor=$(grep -o 'mechtype-0xC744[0-9A-F]*' out/-M.module | tr '\n' ' ' || true)
info "$KIND: vendor mechanisms the module adds on $L: ${vendor:-none}"

# backend_init_args is what makes NSS work through the module: without it the
# backend's C_Initialize answers CKR_ARGUMENTS_BAD (passed through); the
# environment override GUARDIAN_BACKEND_INIT_ARGS does the same as the key.
if [ -n "$BACKEND_INIT_ARGS" ]; then
    grep -v '^backend_init_args' "$WORK/guardian.conf" >"$WORK/guardian-noargs.conf"
    rc=0
    backend_exec env "GUARDIAN_CONF=$WORK/guardian-noargs.conf" pkcs11-tool --module "$G" -L \
        >out/noargs.out 2>out/noargs.err || rc=$?
    check_eq "without backend_init_args, pkcs11-tool -L through the module fails" 1 "$rc"
    check_grep "without backend_init_args: the backend's CKR_ARGUMENTS_BAD" 'C_Initialize.*CKR_ARGUMENTS_BAD' \
        out/noargs.err
    rc=0
    backend_exec env "GUARDIAN_CONF=$WORK/guardian-noargs.conf" "GUARDIAN_BACKEND_INIT_ARGS=$BACKEND_INIT_ARGS" \
        pkcs11-tool --module "$G" -L >out/envargs.out 2>out/envargs.err || rc=$?
    check_eq "GUARDIAN_BACKEND_INIT_ARGS instead of the key: pkcs11-tool -L works" 0 "$rc"
    check_same "GUARDIAN_BACKEND_INIT_ARGS instead of the key: the same -L" out/-L.module out/envargs.out
fi

# ---- keys, objects, --test --------------------------------------------------------

# An RSA key made straight on the backend, an EC key made through the module
# (both ways must agree on whether the backend can: opencryptoki has no EC).
capture keygen-rsa direct --login --pin "$PIN" --token-label "$L" --keypairgen --key-type rsa:2048 \
    --usage-sign --label rsa --id 02
check_eq "RSA-2048 key pair generated straight on $KIND" 0 "$(cat out/keygen-rsa.direct.rc)"
capture keygen-ec direct --login --pin "$PIN" --token-label "$L" --keypairgen --key-type EC:prime256v1 \
    --label ec-direct --id 01
capture keygen-ec module --login --pin "$PIN" --token-label "$L" --keypairgen --key-type EC:prime256v1 \
    --label ec-module --id 03
check_eq "EC P-256 key generation: exit status direct = module" "$(cat out/keygen-ec.direct.rc)" \
    "$(cat out/keygen-ec.module.rc)"
if [ "$(cat out/keygen-ec.direct.rc)" -ne 0 ]; then
    check_same "EC P-256 key generation: the same refusal direct and module" out/keygen-ec.direct.err \
        out/keygen-ec.module.err
    info "$KIND: EC P-256 key generation refused: $(head -n 1 out/keygen-ec.direct.err)"
fi

compare -O --login --pin "$PIN" --token-label "$L" -O
# RSA PKCS#1 v1.5 signatures are deterministic: the same key must give the
# same bytes both ways.  SHA256-RSA-PKCS where the backend lists it
# (opencryptoki 3.8's soft token has SHA1-RSA-PKCS and MD5-RSA-PKCS only).
SIGMECH=SHA256-RSA-PKCS
if ! grep -q '^  SHA256-RSA-PKCS,' out/-M.direct; then
    SIGMECH=SHA1-RSA-PKCS
fi
head -c 1000 /dev/urandom >data.bin
for w in direct module; do
    capture sign "$w" --login --pin "$PIN" --token-label "$L" --sign -m "$SIGMECH" --id 02 \
        -i "$WORK/data.bin" -o "$WORK/out/sig.$w"
done
check_eq "$SIGMECH C_Sign straight on $KIND" 0 "$(cat out/sign.direct.rc)"
check_eq "$SIGMECH C_Sign through the module" 0 "$(cat out/sign.module.rc)"
check_same "$SIGMECH signature: the same bytes direct and module" out/sig.direct out/sig.module
# --allow-sw: software tokens set no CKF_HW, and --test skips their mechanisms.
compare --test --login --pin "$PIN" --token-label "$L" --test --allow-sw
info "$KIND: --test says '$(tail -n 1 out/--test.direct)' (exit status $(cat out/--test.direct.rc))"
if grep -q . out/--test.direct.err; then
    info "$KIND: --test stderr: $(grep -v '^Using slot' out/--test.direct.err | head -n 3 | tr '\n' ' ')"
fi
# Nothing --test left behind differs either.
compare -O-after --login --pin "$PIN" --token-label "$L" -O

finish
