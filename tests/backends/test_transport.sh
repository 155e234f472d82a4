#!/bin/bash
#
# test_transport.sh KIND <guardian-pkcs11.so> <guardianctl> <guardian-wrap> [<init_args_shim.so>] —
# the key transport end to end on one backend, through the tools an operator
# and an OEM use (docs/package-format.md "Which transports a Guardian states"):
#
#  1. `guardianctl init` makes the agreement certificate A, which states the
#     schemes this token imports with, as its self-test measured them;
#  2. `guardian-wrap create --kdf auto` picks the strongest one A lists, and
#     refuses a --kdf A does not list;
#  3. the package imports, its integrity data item is kept where the token
#     allows (a private token CKO_DATA, else a sensitive generic secret), and
#     three device certificates verify up to the OEM root.
#
# Expected, measured on Debian 12:
#   softhsm  A: aes-cbc, none (no CKD_SHA256_KDF); auto = aes-cbc; the item a CKO_DATA
#   softhsm-nodata  SoftHSM behind init_args_shim.so refusing an integrity item's
#            private token CKO_DATA as NSS does (INIT_ARGS_SHIM_NO_PACKAGE_DATA): the
#            item a generic secret with no usage; an empty item refused, nothing made
#   nss      A: x963-sha256, aes-cbc, none; auto = x963-sha256; the item a generic secret
#            (NSS keeps no private or token CKO_DATA).  In service mode (the
#            Guardian SO and operator alice set through the module first): a plain
#            user makes CKA_TRUSTED certificates there, so only the SO's enrolment
#            in the anchored store counts.  CMake sets GUARDIAN_EXPECT_NSS_IMPORT=1:
#            a refused import is a failure; without it the test says so and stops
#            there, passing what it checked.
#
# Exit status: 0 all passed, 1 a failure, 77 the backend cannot run here.

# shellcheck source-path=SCRIPTDIR source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

KIND=${1:-}
if [ $# -lt 4 ] || [ $# -gt 5 ] || [ -z "$KIND" ]; then
    printf 'usage: %s softhsm|softhsm-nodata|nss <guardian-pkcs11.so> <guardianctl> <guardian-wrap> [<init_args_shim.so>]\n' \
        "$0" >&2
    exit 2
fi
INTEROP_NAME=transport_$KIND
ARC=2.25.62758544141009244537205961397770264239
case $KIND in
softhsm)
    STATES="aes-cbc ($ARC.2.1), none ($ARC.2.0)"
    AUTO=aes-cbc UNLISTED=x963-sha256 ITEM_CLASS="Data object"
    ;;
softhsm-nodata)
    STATES="aes-cbc ($ARC.2.1), none ($ARC.2.0)"
    AUTO=aes-cbc UNLISTED=x963-sha256 ITEM_CLASS="Secret Key Object"
    ;;
nss)
    STATES="x963-sha256 ($ARC.2.2), aes-cbc ($ARC.2.1), none ($ARC.2.0)"
    AUTO=x963-sha256 UNLISTED= ITEM_CLASS="Secret Key Object"
    ;;
*)
    printf 'FAIL %s: backend kind %s (softhsm, softhsm-nodata or nss)\n0 passed, 1 failed\n' "$INTEROP_NAME" "$KIND"
    exit 1
    ;;
esac
for f in "$2" "$3" "$4"; do
    if [ ! -f "$f" ]; then
        printf 'FAIL %s: %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$f"
        exit 1
    fi
done
G=$(readlink -f "$2")
CTL=$(readlink -f "$3")
W=$(readlink -f "$4")
SHIM=${5:+$(readlink -f "$5")}

BACKEND_KIND_ASKED=$KIND
if [ "$KIND" = softhsm-nodata ]; then
    if [ -z "$SHIM" ] || [ ! -f "$SHIM" ]; then
        printf 'FAIL %s: needs init_args_shim.so as fifth argument\n0 passed, 1 failed\n' "$INTEROP_NAME"
        exit 1
    fi
    KIND=softhsm
fi
backend_test_start transport tp
KIND=$BACKEND_KIND_ASKED
export GUARDIAN_MODULE=$G GUARDIAN_BACKEND=$BACKEND_MODULE GUARDIAN_STATE_DIR=$WORK/state
if [ "$KIND" = softhsm-nodata ]; then
    export GUARDIAN_BACKEND=$SHIM INIT_ARGS_SHIM_MODULE=$BACKEND_MODULE INIT_ARGS_SHIM_NO_PACKAGE_DATA=1
fi
export GUARDIAN_TOKEN=$BACKEND_LABEL GUARDIAN_PIN=$BACKEND_USER_PIN GUARDIAN_SO_PIN=$BACKEND_SO_PIN
if [ -n "$BACKEND_INIT_ARGS" ]; then
    export GUARDIAN_BACKEND_INIT_ARGS=$BACKEND_INIT_ARGS
fi
# The PIN the object listings below log in with.
P11_PIN=$BACKEND_USER_PIN
if [ "$KIND" = nss ]; then
    # NSS: a plain user makes CKA_TRUSTED certificates, so only the Guardian
    # SO's enrolment in the anchored store counts, in service mode (the
    # Guardian's own credentials; docs/backends/nss.md).  NSS has no SO: the
    # Guardian SO logs into the backend as its user.
    umask 077
    printf '%s\n' "$BACKEND_USER_PIN" >"$WORK/backend.pin"
    printf 'backend = %s\nstate_dir = %s\npin_kdf_cost = 1024\nbackend_pin_file = %s\nbackend_init_args = %s\n' \
        "$BACKEND_MODULE" "$WORK/state" "$WORK/backend.pin" "$BACKEND_INIT_ARGS" >"$WORK/guardian.conf"
    umask 022
    export GUARDIAN_CONF=$WORK/guardian.conf GUARDIAN_SO_PIN=guardian-so-secret GUARDIAN_PIN=alice:alice-secret-1
    P11_PIN=$GUARDIAN_PIN
    if ! backend_exec pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --init-token \
        --label "$BACKEND_LABEL" --so-pin "$GUARDIAN_SO_PIN" >out/init-token 2>&1 ||
        ! backend_exec pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --init-pin --login \
            --login-type so --so-pin "$GUARDIAN_SO_PIN" --new-pin "$GUARDIAN_PIN" >out/init-pin 2>&1; then
        fail "$KIND: the Guardian SO and operator alice (service mode)" "pkcs11-tool failed" out/init-pin
        finish
    fi
    pass "$KIND: the Guardian SO and operator alice (service mode)"
fi

# run NAME CMD...: out/NAME (stdout and stderr), its exit status in $RC.
run() {
    local name=$1
    shift
    RC=0
    backend_exec "$@" >"out/$name" 2>&1 </dev/null || RC=$?
}

# ---- the OEM's PKI (OpenSSL only) -------------------------------------------------
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key out/root.key && openssl req -new -x509 -key out/root.key -subj "/CN=ACME Root" -days 30 -out out/root.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
issue() { # NAME SUBJECT EXT
    key "out/$1.key"
    openssl req -new -key "out/$1.key" -subj "$2" -out "out/$1.csr" 2>/dev/null
    openssl x509 -req -in "out/$1.csr" -CA out/root.pem -CAkey out/root.key -days 30 -out "out/$1.pem" \
        -extfile <(printf '%s\n' "$3") 2>/dev/null
}
issue signer "/CN=ACME Package Signer" "keyUsage=critical,digitalSignature"
issue ca "/CN=ACME Production CA" "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
printf 'line-config v1\n' >out/config.txt
head -c 32 /dev/urandom >out/boot.secret

# ---- 1. the Guardian states what its token imports with -----------------------------
run init "$CTL" init --out out/guardian.pem
if [ "$RC" -ne 0 ]; then
    fail "$KIND: guardianctl init" "exit status $RC" out/init
    finish
fi
pass "$KIND: guardianctl init"
check_grep "$KIND: A carries id-guardian-transports (not critical)" "^ +$ARC\\.3\\.1: *\$" \
    <(openssl x509 -in out/guardian.pem -noout -text)

# ---- 2. guardian-wrap chooses -------------------------------------------------------
wrap() { # NAME [options]
    local name=$1
    shift
    run "$name" "$W" create --guardian-cert out/guardian.pem --signer-key out/signer.key \
        --signer-cert out/signer.pem --ca-key out/ca.key --ca-cert out/ca.pem --ca-chain out/root.pem \
        --oem-id ACME --product-id TP --release 1 --units 10 --not-after +10 --data config=out/config.txt \
        --secret-data bootkey=out/boot.secret --out "out/$name.gpk" "${EXTRA[@]}" "$@"
}
# NSS: an extra EC key travels too (NSS unwraps an EC PKCS#8 only with CKA_NSS_DB).
EXTRA=()
if [ "$KIND" = nss ]; then
    key out/extra.key
    EXTRA=(--extra-key attest=out/extra.key)
fi
wrap auto
if [ "$RC" -eq 0 ] && grep -qF "the Guardian offers $STATES" out/auto; then
    pass "$KIND: A states $STATES"
else
    fail "$KIND: A states $STATES" "exit status $RC, or another list" out/auto
fi
check_grep "$KIND: --kdf auto picks $AUTO" "transport +$AUTO \\(.*\\), chosen by --kdf auto" out/auto
if [ -n "$UNLISTED" ]; then
    wrap unlisted --kdf "$UNLISTED"
    if [ "$RC" -eq 1 ] && grep -q "does not list it" out/unlisted && [ ! -e out/unlisted.gpk ]; then
        pass "$KIND: --kdf $UNLISTED (not listed) refused, nothing written"
    else
        fail "$KIND: --kdf $UNLISTED (not listed) refused, nothing written" "exit status $RC" out/unlisted
    fi
fi

# ---- 3. the import, the data item, the certificates ---------------------------------
run enrol "$CTL" enroll-oem out/root.pem --oem-id ACME --yes
run import "$CTL" import out/auto.gpk
if [ "$KIND" = nss ] && [ "$RC" -ne 0 ] && [ "${GUARDIAN_EXPECT_NSS_IMPORT:-0}" != 1 ] &&
    grep -q "CKR_GUARDIAN_OEM_NOT_ENROLLED\|enrol" out/enrol out/import; then
    info "$KIND: the import needs the enrolment of issue 10 (helper \"enrol\"), not merged: refused as expected" \
        "($(grep -ho 'CKR_[A-Z_]*' out/import | head -n 1)); set GUARDIAN_EXPECT_NSS_IMPORT=1 once it is"
    finish
fi
if [ "$RC" -ne 0 ]; then
    fail "$KIND: the $AUTO package imports" "exit status $RC (enroll-oem: $(head -c 200 out/enrol))" out/import
    finish
fi
pass "$KIND: the $AUTO package imports"
run objects pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --login --pin "$P11_PIN" -O
# The header line of the object whose label is the item's.
item_class=$(awk '/^[^ ]/ { head = $0 } /label: .*guardian:ACME\/TP\/r1:config/ { print head; exit }' out/objects)
if [ "${item_class#"$ITEM_CLASS"}" != "$item_class" ]; then
    pass "$KIND: the integrity item is a $ITEM_CLASS"
else
    fail "$KIND: the integrity item is a $ITEM_CLASS" "its object: '$item_class'" out/objects
fi
if [ "$KIND" = nss ]; then
    # The extra key and the confidential item, each in the token under the package's prefix.
    for want in "Private Key Object; EC:guardian:ACME/TP/r1:attest" "Secret Key Object:guardian:ACME/TP/r1:bootkey"; do
        got=$(awk -v l="${want#*:}" '/^[^ ]/ { head = $0 } $0 ~ "label: +" l "$" { print head; exit }' out/objects)
        if [ "${got#"${want%%:*}"}" != "$got" ]; then
            pass "$KIND: ${want#*:} is a ${want%%:*}"
        else
            fail "$KIND: ${want#*:} is a ${want%%:*}" "its object: '$got'" out/objects
        fi
    done
fi
if [ "$KIND" = softhsm-nodata ]; then
    usage=$(awk '/label: .*guardian:ACME\/TP\/r1:config/ { f = 1 } f && /Usage:/ { print; exit }' out/objects)
    if printf '%s' "$usage" | grep -q "Usage: *none"; then
        pass "$KIND: the item as a secret has no usage"
    else
        fail "$KIND: the item as a secret has no usage" "'$usage'" out/objects
    fi
    # The operator holding the user PIN, through the module: the item serves
    # only the Guardian (a confidential item's role in the policy), so it can
    # be neither read nor destroyed.
    run delete pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --login --pin "$P11_PIN" \
        --delete-object --type secrkey --label "guardian:ACME/TP/r1:config"
    rc_del=$RC
    run read pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --login --pin "$P11_PIN" \
        --read-object --type secrkey --label "guardian:ACME/TP/r1:config"
    rc_read=$RC
    run objects3 pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --login --pin "$P11_PIN" -O
    if [ "$rc_del" -ne 0 ] && grep -q "policy: C_DestroyObject refused" out/delete && [ "$rc_read" -ne 0 ] &&
        grep -q "CKR_ATTRIBUTE_SENSITIVE" out/read && grep -q "guardian:ACME/TP/r1:config" out/objects3; then
        pass "$KIND: the item cannot be read or destroyed through the module (it is still there)"
    else
        fail "$KIND: the item cannot be read or destroyed through the module" "delete $rc_del, read $rc_read" \
            out/delete
    fi
    # An empty integrity item cannot be a secret key: refused, nothing made,
    # the same again (not recorded as imported).
    : >out/empty.txt
    wrap empty --data empty=out/empty.txt --product-id TP-EMPTY
    n_before=$(grep -c "label:" out/objects)
    run import-empty "$CTL" import out/empty.gpk
    rc1=$RC
    run import-empty2 "$CTL" import out/empty.gpk
    rc2=$RC
    run objects2 pkcs11-tool --module "$G" --token-label "$BACKEND_LABEL" --login --pin "$P11_PIN" -O
    if [ "$rc1" -ne 0 ] && [ "$rc2" -ne 0 ] && grep -q "cannot keep the empty data item" out/import-empty &&
        ! grep -q "REPLAYED" out/import-empty2 && [ "$(grep -c "label:" out/objects2)" = "$n_before" ]; then
        pass "$KIND: an empty integrity item refused twice, nothing made"
    else
        fail "$KIND: an empty integrity item refused twice, nothing made" "exit $rc1/$rc2" out/import-empty2
    fi
fi
run provision "$CTL" provision --product ACME/TP --count 3 --out out/parts
if [ "$RC" -eq 0 ] && [ "$(find out/parts -name '*.pem' | wc -l)" = 3 ] &&
    find out/parts -name '*.pem' -print0 | xargs -0 openssl verify -CAfile out/root.pem -untrusted out/ca.pem \
        >out/verify 2>&1; then
    pass "$KIND: 3 device certificates, each verifies up to the OEM root"
else
    fail "$KIND: 3 device certificates, each verifies up to the OEM root" "exit status $RC" out/provision
fi
finish
