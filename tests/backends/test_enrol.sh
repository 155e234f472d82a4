#!/bin/bash
#
# test_enrol.sh KIND <guardian-pkcs11.so> <guardianctl> <guardian-wrap> <mechlist> <enrol_request>
#               [<init_args_shim.so> [<tpm_like_shim.so>]]
#
# KIND = tpm2 | nss | opencryptoki, or softhsm-ledger: SoftHSM behind
# tpm_like_shim.so, where the module's trusted-certificate check fails as on
# tpm2-pkcs11 (so the roots are the ledger's) and key templates are refused as
# tpm2-pkcs11 1.9 refuses them (TPM_LIKE_SHIM_KEYGEN=tpm: the module's
# fallback makes the keys, the agreement key still unable to sign), after a
# first init against a backend that adds CKA_SIGN (addsign: refused, nothing
# kept); there the adversary holds the backend's SO PIN and plants the
# trusted certificate as SoftHSM's SO (a plain user cannot there).
#
# OEM-root enrolment where the token cannot be trusted to hold roots
# (docs/threat-model.md section 2): on tpm2-pkcs11 and NSS softoken a plain
# user makes CKA_TRUSTED certificates, on opencryptoki nobody can.  There the
# Guardian's own Security Officer, in service mode (backend_pin_file; no
# backend_so_pin_file: the SO logs into the backend as its user), enrols the
# root in the anchored store (store/roots.c, ENROL record type 11).
#
# On KIND's backend, brought up by lib.sh in a temporary directory:
#  1. a guardian.conf in service mode; the Guardian SO and operator alice set
#     through the module (pkcs11-tool --init-token / --init-pin);
#  2. guardianctl init, enroll-oem, list-oems; the CA-request import (package
#     v2: guardianctl ca-request, guardian-wrap certify-ca, create
#     --ca-request), provision 3, openssl verify; timings printed (INFO);
#  3. refusals: an operator's (CKU_USER) enrolment request; an in-process
#     Guardian (no credentials) enrolling and importing, with the message
#     naming service mode; a root planted straight on the backend with the
#     backend's user PIN (CKA_TRUSTED, label guardian-root:EVIL) and a ledger
#     row inserted with sqlite3 for it: a package signed under it refused;
#  3b. on tpm2, that the production CA key never left the TPM: straight on
#     the backend (mechlist --key-attrs, the backend's user PIN) it is
#     local, never extractable, not extractable, sensitive, its CKA_VALUE
#     unreadable; tpm2-pkcs11's store keeps it as a TPM2B_PRIVATE with no
#     CKA_VALUE; a pkcs11-spy trace of ca-request + import shows
#     C_GenerateKeyPair and no key unwrapped or created; the agreement key
#     cannot sign there (the TPM refuses), the signing key signs only;
#  4. remove-oem: recorded (ENROL record, action 2), the root no longer
#     counts; enrolled again, it counts; export + verify-report list the
#     enrolments.
# Exit status: 0 all passed, 1 a failure, 77 the backend cannot run here.

# shellcheck source-path=SCRIPTDIR source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

KIND=${1:-}
if [ $# -lt 6 ] || [ $# -gt 8 ] || [ -z "$KIND" ]; then
    printf 'usage: %s tpm2|nss|opencryptoki|softhsm-ledger <guardian-pkcs11.so> <guardianctl> <guardian-wrap> ' "$0" >&2
    printf '<mechlist> <enrol_request> [<init_args_shim.so> [<tpm_like_shim.so>]]\n' >&2
    exit 2
fi
INTEROP_NAME=enrol_$KIND
LEDGER_SHIM=
if [ "$KIND" = softhsm-ledger ]; then
    KIND=softhsm
    LEDGER_SHIM=${8:+$(readlink -f "$8")}
    if [ -z "$LEDGER_SHIM" ] || [ ! -f "$LEDGER_SHIM" ]; then
        printf 'FAIL %s: softhsm-ledger needs tpm_like_shim.so (built in tests/backends)\n0 passed, 1 failed\n' \
            "$INTEROP_NAME"
        exit 1
    fi
fi
for f in "$2" "$3" "$4" "$5" "$6"; do
    if [ ! -f "$f" ]; then
        printf 'FAIL %s: %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$f"
        exit 1
    fi
done
G=$(readlink -f "$2") CTL=$(readlink -f "$3") W=$(readlink -f "$4") ML=$(readlink -f "$5") ER=$(readlink -f "$6")
SHIM=${7:+$(readlink -f "$7")}
for c in pkcs11-tool sqlite3 openssl; do
    if ! command -v "$c" >/dev/null; then
        printf 'FAIL %s: %s is missing (tools/debian-packages)\n0 passed, 1 failed\n' "$INTEROP_NAME" "$c"
        exit 1
    fi
done

backend_test_start backends enrol
L=$BACKEND_LABEL
SO_PIN=guardian-so-secret
ALICE=alice:alice-secret-1

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# ---- 1. service mode ------------------------------------------------------------
umask 077
printf '%s\n' "$BACKEND_USER_PIN" >"$WORK/backend.pin"
GBACKEND=$BACKEND_MODULE
if [ -n "$LEDGER_SHIM" ]; then
    GBACKEND=$LEDGER_SHIM
    export TPM_LIKE_SHIM_MODULE=$BACKEND_MODULE
    # ... and key generation as tpm2-pkcs11 1.9 answers it (the module's
    # fallback templates: mechs/identity.c guardian_generate_key_pair).
    export TPM_LIKE_SHIM_KEYGEN=tpm
fi
{
    printf 'backend = %s\n' "$GBACKEND"
    printf 'state_dir = %s\n' "$WORK/state"
    printf 'log_level = info\n'
    printf 'pin_kdf_cost = 1024\n'
    printf 'backend_pin_file = %s\n' "$WORK/backend.pin"
    if [ -n "$BACKEND_INIT_ARGS" ]; then
        printf 'backend_init_args = %s\n' "$BACKEND_INIT_ARGS"
    fi
} >"$WORK/guardian.conf"
# The same Guardian in-process: no credentials, the backend's PINs.
grep -v '^backend_pin_file\|^backend_so_pin_file\|^pin_kdf_cost' "$WORK/guardian.conf" >"$WORK/inprocess.conf"
umask 022

# Every client runs in $WORK (backend_exec may enter opencryptoki's namespace,
# which does not keep the working directory).
bx() { backend_exec env -C "$WORK" "$@"; }
gm() { bx "GUARDIAN_CONF=$WORK/guardian.conf" "$@"; }
ctl() {
    bx "GUARDIAN_CONF=$WORK/guardian.conf" GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" \
        GUARDIAN_PIN="$ALICE" GUARDIAN_SO_PIN="$SO_PIN" "$CTL" "$@"
}
ctl_inprocess() {
    bx "GUARDIAN_CONF=$WORK/inprocess.conf" GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" \
        GUARDIAN_PIN="$BACKEND_USER_PIN" GUARDIAN_SO_PIN="${BACKEND_SO_PIN:-no-so-pin}" "$CTL" "$@"
}
# run NAME WANT REGEX CMD...: CMD exits 0 (WANT 0) or not (WANT 1), and its
# output (stdout+stderr) matches REGEX.
run() {
    local name=$1 want=$2 re=$3 log rc=0
    shift 3
    log=$(logfile "$name")
    "$@" >"$log" 2>&1 </dev/null || rc=$?
    if { [ "$want" = 0 ] && [ "$rc" -ne 0 ]; } || { [ "$want" != 0 ] && [ "$rc" -eq 0 ]; }; then
        fail "$name" "exit status $rc (wanted $([ "$want" = 0 ] && echo 0 || echo non-zero))" "$log"
    elif [ -n "$re" ] && ! grep -Eq -- "$re" "$log"; then
        fail "$name" "no line matches /$re/" "$log"
    else
        pass "$name"
    fi
    return 0
}

must "Guardian SO set through the module (C_InitToken)" \
    gm pkcs11-tool --module "$G" --token-label "$L" --init-token --label "$L" --so-pin "$SO_PIN"
must "operator alice set by the SO (C_InitPIN)" \
    gm pkcs11-tool --module "$G" --token-label "$L" --init-pin --login --login-type so --so-pin "$SO_PIN" \
    --new-pin "$ALICE"

# ---- the OEMs ---------------------------------------------------------------------
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
oem_root() {
    ec_key "$1.key"
    openssl req -new -x509 -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl x509 -in "$1.pem" -outform DER -out "$1.der"
}
oem_signer() {
    ec_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -days 365 -out "$1.pem" \
        -extfile <(printf 'keyUsage=critical,digitalSignature\n') 2>/dev/null
}
oem_root root "ACME Root"
oem_signer signer "/CN=ACME Package Signer" root
oem_root evil "EVIL Root"
oem_root third "THIRD Root"
oem_signer evilsigner "/CN=EVIL Package Signer" evil

# package NAME OEM PRODUCT ROOT SIGNER: ca-request in the Guardian, certify-ca
# by ROOT, create --ca-request signed by SIGNER: NAME.gpk.
package() {
    local n=$1 oem=$2 product=$3 root=$4 signer=$5
    ctl ca-request --product "$oem/$product" --subject "/O=$oem/CN=$oem $product CA" --out "$n.csr" &&
        "$W" certify-ca --guardian-cert guardian.pem --oem-id "$oem" --product-id "$product" --ca-key "$root.key" \
            --ca-cert "$root.pem" --csr "$n.csr" --days 365 --out "$n-ca.pem" &&
        "$W" create --guardian-cert guardian.pem --signer-key "$signer.key" --signer-cert "$signer.pem" \
            --ca-cert "$n-ca.pem" --ca-chain "$root.pem" --oem-id "$oem" --product-id "$product" --release 1 \
            --units 5 --not-after +30 --ca-request "$n.csr" --out "$n.gpk"
}

# ---- 2. enrolment --------------------------------------------------------------------
t0=$(date +%s%N)
run "enroll-oem by the Guardian SO" 0 "enrolled: packages signed under this root for ACME" \
    ctl enroll-oem root.pem --oem-id ACME --yes
info "$KIND: guardianctl enroll-oem took $(ms_since "$t0") ms"
run "list-oems shows it" 0 "ACME Root +for ACME" ctl list-oems
check_eq "the ledger holds the root" 1 \
    "$(sqlite3 "$WORK/state/guardian.db" "SELECT count(*) FROM roots WHERE oem_ids = 'ACME'")"
check_eq "its ENROL record (type 11, action 1) is the SO's" "1|so" \
    "$(sqlite3 "$WORK/state/guardian.db" "SELECT serial, operator FROM audit WHERE type = 11")"
run "enroll-oem again: a repeat" 0 "already enrolled" ctl enroll-oem root.pem --oem-id ACME --yes

# ---- 3. refusals ----------------------------------------------------------------------
# An operator's enrolment request: the SO's only.
gm "$ER" "$G" "$L" user "$ALICE" evil.der EVIL >out/user-enrol 2>&1 || true
check_eq "an operator (CKU_USER) enrolment request refused (CKR_USER_NOT_LOGGED_IN)" "login 0x0 enrol 0x101" \
    "$(grep -E '^(login|enrol) ' out/user-enrol | tr '\n' ' ' | sed 's/ $//')"
# The operator's credential is no SO's.
gm "$ER" "$G" "$L" so "$ALICE" evil.der EVIL >out/op-as-so 2>&1 || true
check_grep "the operator's PIN does not log in as the SO" '^login 0xa0$' out/op-as-so

# The adversary: the backend's PIN straight on the backend (the user's; on
# SoftHSM, where a user cannot, its SO's).
DIRECT=$BACKEND_MODULE
[ -n "$BACKEND_INIT_ARGS" ] && DIRECT=$SHIM
if [ "$KIND" = softhsm ]; then
    bx "$ER" "$BACKEND_MODULE" "$L" so "$BACKEND_SO_PIN" evil.der EVIL --plant >out/plant 2>out/plant.err || true
else
    bx "INIT_ARGS_SHIM_MODULE=$BACKEND_MODULE" "INIT_ARGS_SHIM_ARGS=$BACKEND_INIT_ARGS" \
        "$ML" "$DIRECT" "$L" --login "$BACKEND_USER_PIN" --plant "$WORK/evil.der" guardian-root:EVIL \
        >out/plant 2>out/plant.err || true
fi
info "$KIND: a trusted guardian-root:EVIL certificate planted straight on the backend: $(grep '^plant' out/plant)"
if [ "$KIND" != opencryptoki ]; then
    check_grep "the trusted guardian-root:EVIL certificate is made on the backend" '^plant 0x0$' out/plant
    run "list-oems shows the planted one too (it lists token certificates)" 0 "EVIL Root +for EVIL" ctl list-oems
else
    # Nobody makes a trusted certificate there (CKR_TEMPLATE_INCONSISTENT).
    check_grep "opencryptoki refuses the trusted certificate to the backend's user too" '^plant 0xd1$' out/plant
fi

# In-process (no credentials): enrolment and import fail closed, naming
# service mode.  On SoftHSM behind the shim the SO makes the trusted
# certificate (SoftHSM lets its SO), which counts for nothing there.
if [ "$KIND" = softhsm ]; then
    run "in-process: enroll-oem makes the token certificate only" 0 "enrolled" \
        ctl_inprocess enroll-oem third.pem --oem-id THIRD --yes
    check_eq "... and writes no ledger row" 0 \
        "$(sqlite3 "$WORK/state/guardian.db" "SELECT count(*) FROM roots WHERE oem_ids = 'THIRD'")"
elif [ "$KIND" = nss ]; then
    # No SO at all: in-process nobody can enrol.
    run "in-process: enroll-oem refused (NSS has no SO)" 1 "CKR_USER_TYPE_INVALID" \
        ctl_inprocess enroll-oem third.pem --oem-id THIRD --yes
else
    run "in-process: enroll-oem refused, naming service mode" 1 "run the Guardian in service mode" \
        ctl_inprocess enroll-oem third.pem --oem-id THIRD --yes
fi

# ---- 4. the identity, then packages ---------------------------------------------------
# Enrolment needs no identity; everything below does (tpm2-pkcs11 1.9 and NSS
# 3.87 make no derive-only EC key today: init stops there, named).
if [ -n "$LEDGER_SHIM" ]; then
    # A backend that adds CKA_SIGN to every private key it makes: the
    # agreement key would sign, so init is refused and nothing kept.
    export TPM_LIKE_SHIM_KEYGEN=addsign
    run "a backend that adds CKA_SIGN to the agreement key: init refused (the two keys' separation)" 1 \
        "usage 0x108 TRUE although the module's template sets it FALSE" ctl init --out refused.pem
    check_eq "... and no Guardian private key left on the token" 0 \
        "$(bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O --type privkey 2>/dev/null |
            grep -c 'label: *guardian-\(identity\|signing\)' || true)"
    export TPM_LIKE_SHIM_KEYGEN=tpm
fi
t0=$(date +%s%N)
must "guardianctl init (service mode, operator alice)" ctl init --out guardian.pem
info "$KIND: guardianctl init took $(ms_since "$t0") ms"
if [ -n "$LEDGER_SHIM" ]; then
    # The templates tpm2-pkcs11 refuses, refused by the shim: made by the
    # fallback, and the agreement key still cannot sign (straight on SoftHSM).
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs guardian-identity >out/agree-attrs 2>&1 || true
    check_grep "templates refused as tpm2-pkcs11 does: the agreement key made with CKA_DECRYPT, CKA_SIGN still FALSE" \
        '^key-attrs .*SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=0 DERIVE=1 DECRYPT=1 UNWRAP=0 VALUE=0x11$' out/agree-attrs
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs guardian-signing >out/sign-attrs 2>&1 || true
    check_grep "... the signing key signs only" \
        '^key-attrs .*SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=1 DERIVE=0 DECRYPT=0 UNWRAP=0 VALUE=0x11$' out/sign-attrs
    check_eq "... two Guardian private keys now (the count above is the control's)" 2 \
        "$(bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O --type privkey 2>/dev/null |
            grep -c 'label: *guardian-\(identity\|signing\)' || true)"
fi
must "package ACME/SENSOR-1 (CA request, v2)" package p1 ACME SENSOR-1 root signer
t0=$(date +%s%N)
run "import under the enrolled root" 0 "" ctl import p1.gpk
info "$KIND: guardianctl import took $(ms_since "$t0") ms"
t0=$(date +%s%N)
run "provision 3" 0 "provisioned 3 parts" ctl provision --product ACME/SENSOR-1 --count 3 --out run
info "$KIND: guardianctl provision --count 3 took $(ms_since "$t0") ms"
n=0
for f in run/*.pem; do
    [ -e "$f" ] && openssl verify -CAfile root.pem -untrusted p1-ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
check_eq "openssl verify: 3 device certificates up to the OEM root" 3 "$n"

# ---- 4b. TPM: the CA key never left the TPM (issue 10) --------------------------------
# Straight on the backend with its user PIN (what an operator holding it
# sees beside the module), the store's own records, and a pkcs11-spy trace
# of a CA request and its import through the module.
if [ "$KIND" = tpm2 ]; then
    CA_LABEL=guardian:ACME/SENSOR-1:ca-key
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs "$CA_LABEL" >out/ca-attrs 2>&1 || true
    check_grep "the CA key straight on the TPM: local, never extractable, not extractable, sensitive, sign only, CKA_VALUE unreadable (0x11 sensitive, 0x12: no such attribute)" \
        '^key-attrs LOCAL=1 NEVER_EXTRACTABLE=1 EXTRACTABLE=0 SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=1 DERIVE=0 DECRYPT=0 UNWRAP=0 VALUE=0x1[12]$' \
        out/ca-attrs
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs guardian-identity >out/agree-attrs 2>&1 || true
    check_grep "the agreement key straight on the TPM cannot sign (CKA_SIGN FALSE; CKA_DECRYPT the TPM's ECC bit)" \
        '^key-attrs LOCAL=1 NEVER_EXTRACTABLE=1 EXTRACTABLE=0 SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=0 DERIVE=1 DECRYPT=1 UNWRAP=0 VALUE=0x1[12]$' \
        out/agree-attrs
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs guardian-signing >out/sign-attrs 2>&1 || true
    check_grep "the signing key straight on the TPM signs only" \
        '^key-attrs LOCAL=1 NEVER_EXTRACTABLE=1 EXTRACTABLE=0 SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=1 DERIVE=0 DECRYPT=0 UNWRAP=0 VALUE=0x1[12]$' \
        out/sign-attrs
    openssl rand 32 >out/h.bin
    run "the agreement key cannot sign straight on the TPM either (the TPM: key fields are not compatible with the selected use)" 1 "CKR_KEY_FUNCTION_NOT_PERMITTED|key fields are not compatible with the selected use" \
        bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" --sign -m ECDSA \
        --label guardian-identity -i out/h.bin -o out/forged.sig
    # The control: a key made straight with pkcs11-tool's defaults reads otherwise.
    bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" --keypairgen \
        --key-type EC:prime256v1 --label control-key >out/control-gen 2>&1 || true
    bx "$ML" "$BACKEND_MODULE" "$L" --login "$BACKEND_USER_PIN" --key-attrs control-key >out/control-attrs 2>&1 || true
    if grep -q '^key-attrs ' out/control-attrs && ! grep -q 'SENSITIVE=1 ALWAYS_SENSITIVE=1 SIGN=1 DERIVE=0' out/control-attrs; then
        pass "control: a key pkcs11-tool made with the token's defaults reads otherwise ($(sed -n "s/^key-attrs //p" out/control-attrs))"
    else
        fail "control" "pkcs11-tool's key reads like the Guardian's" out/control-attrs
    fi
    # tpm2-pkcs11's store: the CA key is a TPM-wrapped blob (CKA_TPM2_PRIV_BLOB,
    # 0x8F000003: a TPM2B_PRIVATE sealed under the TPM's storage key), with no
    # clear private value (no CKA_VALUE, 17); its public point (CKA_EC_POINT,
    # 385) is there: the control that the row is the one read.
    hexlabel=$(printf '%s' "$CA_LABEL" | od -An -tx1 | tr -d ' \n')
    sqlite3 "$TPM2_PKCS11_STORE/tpm2_pkcs11.sqlite3" "SELECT attrs FROM tobjects WHERE attrs LIKE '%$hexlabel%' AND attrs LIKE '%\"2399141891\"%'" \
        >out/ca-store 2>&1 || true
    blob=$(awk '/"2399141891"/ { getline; gsub(/.*!!str "|".*/, ""); print; exit }' out/ca-store)
    if [ -n "$blob" ] && grep -q '"385"' out/ca-store && ! grep -q '? !!int "17"$' out/ca-store &&
        [ "$((16#${blob:0:4}))" = "$((${#blob} / 2 - 2))" ]; then
        pass "the store keeps the CA key as a TPM2B_PRIVATE of $((${#blob} / 2)) bytes (TPM-wrapped), no CKA_VALUE"
    else
        fail "the CA key in tpm2-pkcs11's store" "no TPM blob, or a CKA_VALUE" out/ca-store
    fi
    bx tpm2_ptool listobjects --path "$TPM2_PKCS11_STORE" --label "$L" >out/listobjects 2>&1 || true
    check_grep "tpm2_ptool listobjects lists the CA key" "$CA_LABEL" out/listobjects

    # S (self-signed, in the TPM) and A under it, as openssl sees them.
    awk '/BEGIN CERT/ { n++ } n == 1' guardian.pem >out/a.pem
    awk '/BEGIN CERT/ { n++ } n == 2' guardian.pem >out/s.pem
    run "openssl verify: S self-signed in the TPM, A issued by it" 0 "out/a.pem: OK" \
        openssl verify -check_ss_sig -CAfile out/s.pem out/a.pem
    # A states the key transport none only: no secret can travel to it.
    check_eq "A's id-guardian-transports: none only (.2.0; the TPM has no C_UnwrapKey)" \
        "2.25.62758544141009244537205961397770264239.2.0" \
        "$(openssl asn1parse -in guardian.pem -strparse "$(openssl asn1parse -in guardian.pem |
            awk '$NF == ":2.25.62758544141009244537205961397770264239.3.1" { getline; sub(/:.*/, ""); print $1; exit }')" |
            awk '/OBJECT/ { sub(/^.*OBJECT *:/, ""); print }' | tr '\n' ' ' | sed 's/ $//')"
    ec_key oemca.key
    openssl req -new -x509 -key oemca.key -subj "/CN=ACME CA K" -days 30 -out oemca.pem 2>/dev/null
    printf 'secret' >secret.bin
    run "guardian-wrap refuses the OEM's CA key for a Guardian stating none only" 1 "imports no secret at all" \
        "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key oemca.key \
        --ca-cert oemca.pem --ca-chain root.pem --oem-id ACME --product-id K --release 1 --units 5 --not-after +30 \
        --out k.gpk
    [ ! -e k.gpk ] && pass "... and writes no package" || fail "guardian-wrap" "k.gpk written"
    must "ca-request for ACME/SECRET" ctl ca-request --product ACME/SECRET --subject "/O=ACME/CN=ACME SECRET CA" --out sec.csr
    must "certify-ca for ACME/SECRET" "$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id SECRET \
        --ca-key root.key --ca-cert root.pem --csr sec.csr --days 365 --out sec-ca.pem
    sec_create() {
        "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-cert sec-ca.pem \
            --ca-chain root.pem --oem-id ACME --product-id SECRET --release 1 --units 5 --not-after +30 \
            --ca-request sec.csr --secret-data key=secret.bin "$@" --out sec.gpk
    }
    run "guardian-wrap refuses a --secret-data item for it (CA request)" 1 "imports no secret at all" sec_create
    run "--kdf aes-cbc --kdf-unlisted makes it all the same (the OEM overrides)" 0 "" sec_create --kdf aes-cbc --kdf-unlisted
    n_before=$(bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O 2>/dev/null | grep -c 'Object;' || true)
    run "the import refuses it before any key operation (CKR_GUARDIAN_TRANSPORT_UNSUPPORTED)" 1 \
        "CKR_GUARDIAN_TRANSPORT_UNSUPPORTED" ctl import sec.gpk
    [ "${n_before:-0}" -gt 0 ] || fail "objects on the token" "pkcs11-tool -O counted none (the count below would prove nothing)"
    check_eq "... with nothing made on the token ($n_before objects before and after)" "$n_before" \
        "$(bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O 2>/dev/null | grep -c 'Object;' || true)"
    run "... while the same package without the secret imports (control)" 0 "" \
        bash -c "cd '$WORK' && '$W' create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem \
        --ca-cert sec-ca.pem --ca-chain root.pem --oem-id ACME --product-id SECRET --release 1 --units 5 \
        --not-after +30 --ca-request sec.csr --data key=secret.bin --out sec2.gpk" 
    run "... imported" 0 "" ctl import sec2.gpk

    # The trace: the module's backend is pkcs11-spy, the spy's tpm2-pkcs11.
    SPY=/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so
    sed "s|^backend = .*|backend = $SPY|" "$WORK/guardian.conf" >"$WORK/spy.conf"
    sp() {
        bx "GUARDIAN_CONF=$WORK/spy.conf" PKCS11SPY="$BACKEND_MODULE" PKCS11SPY_OUTPUT="$WORK/out/spy.log" \
            GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" GUARDIAN_PIN="$ALICE" "$CTL" "$@"
    }
    : >out/spy.log
    run "ca-request through pkcs11-spy" 0 "" sp ca-request --product ACME/SPY --subject "/O=ACME/CN=ACME SPY CA" --out spy.csr
    must "certify-ca and create --ca-request for ACME/SPY" bash -c "cd '$WORK' && '$W' certify-ca --guardian-cert guardian.pem \
        --oem-id ACME --product-id SPY --ca-key root.key --ca-cert root.pem --csr spy.csr --days 365 --out spy-ca.pem &&
        '$W' create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-cert spy-ca.pem \
        --ca-chain root.pem --oem-id ACME --product-id SPY --release 1 --units 5 --not-after +30 --ca-request spy.csr \
        --out spy.gpk"
    run "import through pkcs11-spy" 0 "" sp import spy.gpk
    check_grep "the spy saw the CA key made in the TPM (C_GenerateKeyPair, CKM_EC_KEY_PAIR_GEN)" 'CKM_EC_KEY_PAIR_GEN' out/spy.log
    # Every C_UnwrapKey (the module's probe whether the library has one at
    # all) returned CKR_FUNCTION_NOT_SUPPORTED; no private key was created.
    awk '/^[0-9]+: C_/ { fn = $2 } fn == "C_UnwrapKey" && /^Returned:/ { print }' out/spy.log >out/spy-unwrap
    uw_ok=$(grep -c -v 'CKR_FUNCTION_NOT_SUPPORTED' out/spy-unwrap || true)
    awk '/^[0-9]+: C_/ { fn = $2 } fn == "C_CreateObject" && /CKO_PRIVATE_KEY|CKO_SECRET_KEY/ { print }' out/spy.log \
        >out/spy-create
    if grep -q 'C_GenerateKeyPair' out/spy.log && [ "$uw_ok" = 0 ] && [ ! -s out/spy-create ]; then
        pass "the trace of ca-request + import: C_GenerateKeyPair, no key unwrapped ($(wc -l <out/spy-unwrap) C_UnwrapKey, each CKR_FUNCTION_NOT_SUPPORTED), no private or secret key created"
    else
        fail "the trace" "C_UnwrapKey not refused $uw_ok times, or a key created" out/spy-create
    fi
fi

# A copy of the state as it is now, ledger row included, to restore later.
must "a copy of the state" sqlite3 "$WORK/state/guardian.db" ".backup '$WORK/old.db'"

must "package EVIL/X signed under the planted root" package pe EVIL X evil evilsigner
run "a package under a root planted on the backend refused" 1 "CKR_GUARDIAN_UNTRUSTED_SIGNER" ctl import pe.gpk
# ... and with a ledger row for it inserted with sqlite3 (the ENROL record's
# seq of the real root, the anchor untouched).
seq=$(sqlite3 "$WORK/state/guardian.db" "SELECT enrol_seq FROM roots WHERE oem_ids = 'ACME'")
sqlite3 "$WORK/state/guardian.db" "INSERT INTO roots VALUES (X'$(openssl dgst -sha256 -r evil.der | cut -c1-64)', \
    readfile('$WORK/evil.der'), 'EVIL', 0, 'so', ${seq:-1})" 2>out/sqlite.err || true
check_eq "a ledger row inserted with sqlite3" 1 \
    "$(sqlite3 "$WORK/state/guardian.db" "SELECT count(*) FROM roots WHERE oem_ids = 'EVIL'")"
run "a package under a root inserted into the ledger refused" 1 "CKR_GUARDIAN_UNTRUSTED_SIGNER" ctl import pe.gpk
run "... the module says the row does not count" 1 "does not count: its certificate is not the one its ENROL" \
    bx "GUARDIAN_CONF=$WORK/guardian.conf" GUARDIAN_DEBUG=info GUARDIAN_MODULE="$G" \
    GUARDIAN_TOKEN="$L" GUARDIAN_PIN="$ALICE" "$CTL" import pe.gpk
sqlite3 "$WORK/state/guardian.db" "DELETE FROM roots WHERE oem_ids = 'EVIL'" || true

# In-process (no credentials): the import fails closed, naming service mode.
must "package ACME/INPROC" package pi ACME INPROC root signer
run "in-process: import refused" 1 "CKR_GUARDIAN_OEM_NOT_ENROLLED" ctl_inprocess import pi.gpk
run "... the module's message names service mode" 1 "holds only in service mode" \
    bx "GUARDIAN_CONF=$WORK/inprocess.conf" GUARDIAN_DEBUG=info GUARDIAN_MODULE="$G" \
    GUARDIAN_TOKEN="$L" GUARDIAN_PIN="$BACKEND_USER_PIN" "$CTL" import pi.gpk
run "... the same package imports in service mode (control)" 0 "" ctl import pi.gpk

# ---- 5. removal -------------------------------------------------------------------------
fpr=$(openssl x509 -in root.pem -outform DER | openssl dgst -sha256 -r | cut -c1-16)
must "package ACME/SENSOR-2" package p2 ACME SENSOR-2 root signer
run "remove-oem by the Guardian SO" 0 "removed" ctl remove-oem "$fpr" --yes
check_eq "the removal is recorded (ENROL record, action 2)" "2|so" \
    "$(sqlite3 "$WORK/state/guardian.db" "SELECT serial, operator FROM audit WHERE type = 11 ORDER BY seq DESC LIMIT 1")"
check_eq "the ledger row is gone" 0 \
    "$(sqlite3 "$WORK/state/guardian.db" "SELECT count(*) FROM roots")"
run "after remove-oem the root no longer counts" 1 "CKR_GUARDIAN_UNTRUSTED_SIGNER" ctl import p2.gpk
run "enrolled again" 0 "enrolled" ctl enroll-oem root.pem --oem-id ACME --yes
run "... and it counts again" 0 "" ctl import p2.gpk

must "audit export" ctl audit export --out audit.txt
VR=(verify-report audit.txt --guardian guardian.pem --root root.pem)
for p in p1 pi p2; do
    [ -e "$p-ca.pem" ] && VR+=(--ca-chain "$p-ca.pem")
done
run "verify-report accepts the trail" 0 "^OK$" "$W" "${VR[@]}"
run "verify-report lists the enrolments" 0 "enrol +record [0-9]+ .* by so: OEM root sha256:[0-9a-f]{64} removed" \
    "$W" "${VR[@]}"

# The older copy restored (its ledger row and ENROL record genuine, the
# anchor further on): refused as before.
must "package ACME/SENSOR-3" package p3 ACME SENSOR-3 root signer
cp "$WORK/old.db" "$WORK/state/guardian.db"
rm -f "$WORK/state/guardian.db-wal" "$WORK/state/guardian.db-shm"
run "a restored older store is refused" 1 "CKR_GUARDIAN_STATE_ROLLBACK" ctl import p3.gpk
finish
