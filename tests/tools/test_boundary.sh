#!/usr/bin/env bash
# test_boundary.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the Guardian's boundary
# against a dishonest operator who holds the user PIN.  Every attack goes
# THROUGH THE GUARDIAN MODULE with stock tools: pkcs11-tool (OpenSC), openssl
# with the libp11 engine, PyKCS11 (tests/tools/boundary_attacks.py for the calls
# pkcs11-tool lacks), guardianctl itself, cp/rm on the state directory, faketime
# and kill -9.  Each check says what it tried; a refusal is asserted with its
# exact CKR code where the module decides it (SoftHSM alone would allow the
# call), otherwise as "refused and nothing changed".  Objects the operator made
# keep working exactly as before (the controls).
#
# Several Guardians, each a fresh SoftHSM token with its own state directory,
# so that no section depends on what another did (on code that lets an attack
# through, it would otherwise break the sections after it): main (use of the
# Guardian's keys, OEM enrolment, the audit report), tamper (changing and
# copying the Guardian's objects), wreck (destroying them), rewind (state
# restored, deleted, redirected), timeshift (faketime), crash (kill -9 and a
# lost issue journal).  The section numbers (1)..(10) are those of the issue.
set -uo pipefail
umask 077
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/boundary-test-XXXXXX")
bg=""
cleanup() {
    [ -n "$bg" ] && kill -9 "$bg" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

export GUARDIAN_MODULE=$M GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
unset GUARDIAN_CONF GUARDIAN_DEBUG
PY=/usr/bin/python3

# The messages the module's refusals are expected to carry (CKR name or sentence).
ROLLBACK_RE='older than the token|anchor|restored|STATE_ROLLBACK'
CLOCK_RE='\b[Cc]lock\b|CLOCK_BEHIND'
NOT_ENROLLED_RE='not enrolled for|OEM_NOT_ENROLLED'
NOT_CA_RE='not a CA certificate|ROOT_NOT_CA'

# ---- helpers ------------------------------------------------------------------------------

section() { printf '\n# %s\n' "$*"; }
# use NAME: the Guardian the following commands talk to.
use() {
    G=$1 GD=$work/$1
    export GUARDIAN_TOKEN=$1 GUARDIAN_STATE_DIR=$work/$1/state
}
ctl() { "$CTL" "$@"; }
# An ASan-built module (tests/run-all.sh's second build) needs its runtime
# preloaded into the stock tools; PyKCS11's SWIG extension trips an ASan CHECK
# even then (measured, test_provision.sh), so its checks run in the normal build.
asan_rt=$(ldd "$M" 2>/dev/null | awk '/libasan/ {print $3; exit}')
stock() {
    if [ -n "$asan_rt" ]; then
        LD_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 "$@"
    else
        "$@"
    fi
}
p11() { stock pkcs11-tool --module "$M" --token-label "$G" --login --pin 1234 "$@"; }
atk() {
    if [ -n "$asan_rt" ]; then echo "SKIP"; return; fi
    "$PY" "$HERE/boundary_attacks.py" "$M" "$G" 1234 "$@" 2>&1
}
hex() { printf %s "$1" | od -An -tx1 | tr -d ' \n'; }
GKID=$(hex guardian-identity)
GSKID=$(hex guardian-signing)
# The Guardian's objects (docs/unwrap-mechanism.md, guardianctl.h), as boundary_attacks.py selectors.
CA_LABEL="guardian:ACME/SENSOR-1/r1:production-ca"
CA="private:label=$CA_LABEL"
GK="private:id=guardian-identity"
GSK="private:id=guardian-signing"
FW="secret:label=guardian:ACME/SENSOR-1/r1:fw-key"
CFG="data:label=guardian:ACME/SENSOR-1/r1:config"
CACERT="cert:label=guardian:ACME/SENSOR-1/r1:production-ca-cert0"
ROOT="cert:label=guardian-root:ACME"
GCERT="cert:id=guardian-identity"

# attack NAME WANT ATTACK ARGS...: one PyKCS11 attack (boundary_attacks.py) on
# the current Guardian.  WANT: a CKR name (exactly that refusal, nothing
# changed), "refused" (any refusal, nothing changed) or "allowed" (a control).
attack() {
    local name=$1 want=$2 out verdict
    shift 2
    out=$(atk "$@")
    # The module's own log lines (guardian[pid]: ...) may come first on stderr.
    verdict=$(grep -v '^guardian\[' <<<"$out" | head -n 1)
    case $want:$verdict in
    *:SKIP) echo "SKIP $name (PyKCS11 with an ASan-built module: runs in the normal build)" ;;
    allowed:ALLOWED*) ok "$name: allowed" ;;
    refused:"REFUSED "*) ok "$name: refused (${verdict#REFUSED })" ;;
    CKR_*:"REFUSED $want") ok "$name: refused ($want)" ;;
    *)
        ko "$name: wanted ${want/allowed/success}, got: $verdict"
        tail -n +2 <<<"$out" | sed 's/^/    /'
        ;;
    esac
}

# refused NAME PATTERN OUTFILE -- CMD...: a stock tool's attempt must fail,
# say PATTERN (extended regex; empty: anything) and leave OUTFILE (a file in
# the work directory, or - for none) absent or empty.
refused() {
    local name=$1 pattern=$2 outfile=$work/$3 out rc
    shift 4
    [ "$outfile" = "$work/-" ] && outfile=$work/.no-output-file
    rm -f "$outfile"
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    last_out=$out
    if [ $rc -eq 0 ] || [ -s "$outfile" ]; then
        ko "$name: it worked (exit $rc$([ -s "$outfile" ] && echo ", wrote $(wc -c <"$outfile") bytes to $(basename "$outfile")"))"
        echo "$out" | sed 's/^/    /'
    elif [ -n "$pattern" ] && ! grep -qE -- "$pattern" <<<"$out"; then
        ko "$name: refused, but the output lacks /$pattern/"
        echo "$out" | sed 's/^/    /'
    else
        ok "$name: refused$(grep -oE 'CKR_[A-Z_]+' <<<"$out" | head -n 1 | sed 's/^/ (/; s/$/)/')"
    fi
}

# same NAME BEFORE AFTER: nothing changed.  same_n: the same, for counts.
# A value from a skipped PyKCS11 look-up (SKIP) skips the check.
same() {
    if [[ "$2 $3" == *SKIP* ]]; then echo "SKIP $1 (PyKCS11 with an ASan-built module)"; return; fi
    if [ "$2" = "$3" ]; then ok "$1"; else ko "$1: was '$2', now '$3'"; fi
}
same_n() {
    if [[ "$2 $3" == *SKIP* ]]; then echo "SKIP $1 (PyKCS11 with an ASan-built module)"; return; fi
    if [[ $2 =~ ^[0-9]+$ ]] && [ "$2" = "$3" ]; then ok "$1"; else ko "$1: was '$2', now '$3'"; fi
}

objects() { atk count | awk '$1 == "COUNT" || $1 == "SKIP" {print $NF}'; }
found() { atk exists "$1" | awk '$1 == "FOUND" || $1 == "SKIP" {print $NF}'; }
product_line() { ctl products 2>/dev/null | awk -v o="$1" -v p="$2" '$1 == o && $2 == p'; }
issued() { product_line ACME "$1" | awk '{print $5}'; }

# enrol ROOT OEM-ID: enroll-oem for one OEM ID.  A guardianctl without
# --oem-id (before issue 8) is told once and then used without it, so that
# the attacks below still run against it.
enrol_noted=""
enrol() {
    local out
    out=$(ctl enroll-oem "$1" --oem-id "$2" --yes 2>&1) && return 0
    if grep -q "usage" <<<"$out"; then
        if [ -z "$enrol_noted" ]; then
            ko "enroll-oem ROOT --oem-id ID --yes: not accepted ($(head -n 1 <<<"$out")); enrolling without --oem-id"
            enrol_noted=1
        fi
        ctl enroll-oem "$1" --yes >/dev/null 2>&1 && return 0
    fi
    echo "$out" | sed 's/^/    /'
    return 1
}

# wrap OUT PRODUCT RELEASE UNITS NOT-AFTER: an ACME package for the current
# Guardian, with the production CA key, an integrity data item (config) and a
# confidential one (fw-key).  WRAP_AT=OFFSET: made under faketime, OFFSET from now.
wrap() {
    local at=()
    [ -n "${WRAP_AT:-}" ] && at=(faketime -f "$WRAP_AT")
    "${at[@]}" "$W" create --guardian-cert "$GD/guardian.pem" --signer-key signer.key --signer-cert signer.pem \
        --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "$2" --release "$3" \
        --units "$4" --not-after "$5" --data config=config.txt --secret-data fw-key=secret.bin --out "$1" >/dev/null
}

# guardian NAME: a fresh token NAME and state directory, the Guardian
# initialised, ACME's root enrolled for ACME, ACME/SENSOR-1 release 1 (100
# units) imported and 3 parts provisioned.
guardian() {
    use "$1"
    mkdir -p "$GD/state"
    softhsm2-util --init-token --free --label "$1" --pin 1234 --so-pin 12345678 >/dev/null &&
        ctl init --subject "/CN=Guardian $1" --out "$GD/guardian.pem" >"$GD/setup.log" 2>&1 &&
        enrol root.pem ACME &&
        wrap "$GD/s1r1.gpk" SENSOR-1 1 100 +30 &&
        ctl import "$GD/s1r1.gpk" >>"$GD/setup.log" 2>&1 &&
        ctl provision --product ACME/SENSOR-1 --count 3 --out "$GD/certs" >>"$GD/setup.log" 2>&1 && return 0
    ko "setup of Guardian '$1'"
    sed 's/^/    /' "$GD/setup.log"
    return 1
}

# verify_report REPORT [options]: the OEM's offline check of a report from the current Guardian.
verify_report() { "$W" verify-report "$1" --guardian "$GD/guardian.pem" --ca-chain ca.pem --root root.pem "${@:2}"; }

# ---- the OEMs: ACME (testlib's PKI) and OTHER ------------------------------------------------

# One SoftHSM token directory; each Guardian below makes its own token in it.
mkdir -p tokens
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$work" >softhsm2.conf
export SOFTHSM2_CONF=$work/softhsm2.conf
# ACME's PKI (testlib) and OTHER's (its CN is not its OEM ID, so that
# list-oems' OEM IDs can be told apart), valid from 30 days ago: the clock
# section winds the clock back without leaving their validity.
pki() {
    oem_pki
    oem_root other-root "Other Corp Root"
    oem_issue other-signer "/CN=Other Corp Package Signer" other-root "keyUsage=critical,digitalSignature"
    oem_issue other-ca "/CN=Other Corp Production CA" other-root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
    oem_root nooem-root "No OEM ID Root"
}
if command -v faketime >/dev/null; then
    export -f pki oem_pki oem_root oem_issue ec_key
    faketime -f -30d bash -c pki 2>/dev/null
else
    pki 2>/dev/null
fi
[ -s other-ca.pem ] && [ -s ca.pem ] || ko "OEM PKIs with openssl"
echo "telemetry_interval=60" >config.txt
head -c 32 /dev/urandom >secret.bin
# A device's key and CSR, for a certificate minted outside the Guardian.
ec_key dev.key
openssl req -new -key dev.key -subj /CN=SN-FORGED -out dev.csr 2>/dev/null
# The libp11 engine through the Guardian module (docs: INTEROP-NOTES).
cat >engine.cnf <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = $M
init = 0
[req]
distinguished_name = req_dn
[req_dn]
EOF
ossl() { OPENSSL_CONF=$work/engine.cnf stock openssl "$@"; }
uri() { printf 'pkcs11:token=%s;object=%s;type=private;pin-value=1234' "$G" "$(sed 's|/|%2F|g' <<<"$1")"; }

# ==== main: the Guardian's keys in use =========================================================

section "main Guardian: setup, and operator objects for the controls"
if guardian main; then
    ok "main: Guardian initialised, ACME root enrolled, ACME/SENSOR-1 imported, 3 parts provisioned"
fi
pkgid=$("$W" inspect "$GD/s1r1.gpk" 2>/dev/null | awk '/^package id/ {print $3}')
# The package's confidential item fw-key: CKA_ID = the package ID followed by
# its name (mechs/unwrap_package.c). Found first, so that the attacks on it
# below fail for the policy's reason, not for not finding it.
secret_id=$pkgid$(printf fw-key | od -An -tx1 | tr -d ' \n')
p11 --list-objects --type secrkey --id "$secret_id" 2>/dev/null | grep -q 'fw-key' &&
    ok "the package's confidential item fw-key is found by its CKA_ID (package ID + name)" ||
    ko "the package's confidential item fw-key not found by CKA_ID $secret_id"
p11 --keypairgen --key-type EC:prime256v1 --label op-ec --id 0a01 --usage-sign --usage-derive >/dev/null 2>&1 &&
    p11 --keygen --key-type AES:32 --label op-aes --id 0a02 --extractable >/dev/null 2>&1 &&
    p11 --keygen --key-type GENERIC:32 --label op-secret --id 0a03 --extractable >/dev/null 2>&1 &&
    ok "operator objects made with pkcs11-tool (EC key pair op-ec, AES key op-aes, generic secret op-secret)" ||
    ko "operator objects with pkcs11-tool --keypairgen/--keygen"

section "(10) audit export and verify-report on an untouched Guardian"
expect "guardianctl audit export" 0 "exported" -- ctl audit export --out "$GD/report-1.txt"
expect "guardian-wrap verify-report of that export: OK" 0 "^OK$" -- verify_report "$GD/report-1.txt" --package "$GD/s1r1.gpk"

section "(1) ECDH1-DERIVE with the Guardian key and the package's ephemeral point (pkcs11-tool --derive)"
# The package's ephemeral point E, as a SubjectPublicKeyInfo for pkcs11-tool.
openssl cms -verify -inform DER -in "$GD/s1r1.gpk" -noverify -binary -out content.der >/dev/null 2>&1
octets() { openssl asn1parse -inform DER -in content.der | awk -v n="$1" '/OCTET STRING/ && ++i == n {sub(/.*HEX DUMP\]:/, ""); print; exit}'; }
eph=$(octets 3)
printf '%s%s' 3059301306072a8648ce3d020106082a8648ce3d030107034200 "$eph" | xxd -r -p >eph.der
openssl pkey -pubin -inform DER -in eph.der -noout 2>/dev/null && ok "the package's ephemeral point read with openssl" ||
    ko "could not read the package's ephemeral point"
n0=$(objects)
refused "pkcs11-tool --derive -m ECDH1-DERIVE --id guardian-identity -i <package's ephemeral point>" \
    CKR_KEY_FUNCTION_NOT_PERMITTED z.bin -- p11 --derive -m ECDH1-DERIVE --id "$GKID" -i eph.der -o z.bin
same_n "no new object after the ECDH attempt ($n0 objects)" "$n0" "$(objects)"
# What the operator gets when it works: Z, hence the KEK, hence the production CA key, offline.
if [ -s z.bin ]; then
    C=$({ printf GUARDIAN-KEK-v1; printf '%s%s%s' "$(octets 1)" "$(octets 2)" "$eph" | xxd -r -p; } |
        openssl dgst -sha256 -binary | xxd -p -c 64)
    KEK=$(printf %s "$C" | xxd -r -p | openssl enc -aes-256-cbc -K "$(xxd -p -c 64 z.bin)" -iv "$(printf '0%.0s' $(seq 32))" -nopad | xxd -p -c 64)
    printf %s "$(octets 4)" | xxd -r -p | openssl enc -d -id-aes256-wrap-pad -K "$KEK" -iv A65959A6 >stolen-ca.der 2>/dev/null
fi
if [ -s stolen-ca.der ] && cmp -s <(openssl pkey -inform DER -in stolen-ca.der -pubout 2>/dev/null) <(openssl pkey -in ca.key -pubout); then
    ko "the production CA private key was recovered offline from the ECDH output (Z -> KEK -> AES key unwrap)"
else
    ok "the production CA private key cannot be recovered offline (no shared secret came out)"
fi
p11 --derive -m ECDH1-DERIVE --id 0a01 -i eph.der -o z-op.bin >/dev/null 2>&1 && [ "$(wc -c <z-op.bin)" = 32 ] &&
    ok "control: ECDH1-DERIVE with the operator's own key op-ec works (32-byte secret)" ||
    ko "control: ECDH1-DERIVE with the operator's key op-ec failed"
attack "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GK"
attack "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the Guardian signing key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GSK"
attack "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the production CA key" refused ecdh "$CA"
attack "control: PyKCS11 C_DeriveKey(ECDH1_DERIVE) with op-ec" allowed ecdh private:label=op-ec

section "(2) openssl x509 -req -engine pkcs11 -CAkey <production CA key>: a device certificate minted outside the quota"
# libp11 pairs an EC private key with the public key or certificate of the
# same CKA_ID; the package's root certificate has that ID too, so the operator
# first writes the CA's public key (public: it is in ca.pem) beside the key.
openssl x509 -in ca.pem -pubkey -noout | openssl pkey -pubin -outform DER -out ca-pub.der
# (If the module refuses that object, openssl cannot use the key at all: that is a refusal too.)
paired=0
if p11 --write-object ca-pub.der --type pubkey --id "$pkgid" --label op-ca-pub >/dev/null 2>&1; then
    paired=1
    echo "    (the operator wrote the production CA's public key with the package's CKA_ID)"
else
    echo "    (the module refused a public key object with the package's CKA_ID)"
fi
before=$(product_line ACME SENSOR-1)
refused "openssl x509 -req -CA ca.pem -CAkeyform engine -CAkey '$(uri "$CA_LABEL")'" "" forged.pem -- \
    ossl x509 -req -in dev.csr -CA ca.pem -engine pkcs11 -CAkeyform engine -CAkey "$(uri "$CA_LABEL")" \
    -days 30 -set_serial 4242 -out forged.pem
if [ $paired = 1 ] && grep -q "do not match" <<<"$last_out"; then
    ko "that refusal came from openssl's own key check (the key was paired with the wrong public key), not from the Guardian"
fi
[ -s forged.pem ] && openssl verify -CAfile root.pem -untrusted ca.pem forged.pem 2>&1 | sed 's/^/    (the minted certificate) /'
same "issued/remaining of ACME/SENSOR-1 unchanged (guardianctl products)" "$before" "$(product_line ACME SENSOR-1)"
refused "openssl dgst -sha256 -sign '$(uri guardian-identity)': a report signature by the Guardian key" "" forged.sig -- \
    ossl dgst -sha256 -engine pkcs11 -keyform engine -sign "$(uri guardian-identity)" -out forged.sig config.txt
refused "openssl dgst -sha256 -sign '$(uri guardian-signing)': a report signature by the Guardian's signing key" "" forged.sig -- \
    ossl dgst -sha256 -engine pkcs11 -keyform engine -sign "$(uri guardian-signing)" -out forged.sig config.txt
ossl req -new -x509 -engine pkcs11 -keyform engine -key "$(uri op-ec)" -subj /CN=op -days 1 -sha256 -out op.pem \
    >/dev/null 2>&1 && ok "control: openssl req -x509 with the operator's key op-ec through the engine works" ||
    ko "control: openssl with the engine and op-ec failed (the attacks above prove nothing)"

section "(3) signing, decrypting, digesting and wrapping with the Guardian's keys"
openssl dgst -sha256 -binary config.txt >h.bin
refused "pkcs11-tool --sign -m ECDSA --id guardian-identity" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin -- \
    p11 --sign -m ECDSA --id "$GKID" -i h.bin -o sig.bin
refused "pkcs11-tool --sign -m ECDSA --id guardian-signing" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin -- \
    p11 --sign -m ECDSA --id "$GSKID" -i h.bin -o sig.bin
# At the backend directly (bench: the operator holds its PIN) the split holds
# by the keys' own usage flags: the agreement key cannot sign, the signing key
# cannot derive.
direct() { stock pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label "$G" --login --pin 1234 "$@"; }
refused "at the backend directly: pkcs11-tool --sign with the agreement key (CKA_SIGN false)" "CKR_" sig.bin -- \
    direct --sign -m ECDSA --id "$GKID" -i h.bin -o sig.bin
refused "at the backend directly: pkcs11-tool --derive with the signing key (CKA_DERIVE false)" "CKR_" z.bin -- \
    direct --derive -m ECDH1-DERIVE --id "$GSKID" -i eph.der -o z.bin
# pkcs11-tool 0.23 picks the signing key by --id alone (--label is ignored for
# --sign: it then takes the first private key it finds, which may be op-ec).
refused "pkcs11-tool --sign -m ECDSA --id <package ID> (the production CA key)" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin -- \
    p11 --sign -m ECDSA --id "$pkgid" -i h.bin -o sig.bin
p11 --sign -m ECDSA --id 0a01 -i h.bin -o sig-op.bin >/dev/null 2>&1 && [ -s sig-op.bin ] &&
    ok "control: pkcs11-tool --sign with op-ec works" || ko "control: pkcs11-tool --sign with op-ec failed"
attack "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the confidential item" refused reveal "$FW" CKA_VALUE
attack "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the production CA key" refused reveal "$CA" CKA_VALUE
attack "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the Guardian key" refused reveal "$GK" CKA_VALUE
attack "control: PyKCS11 C_GetAttributeValue(CKA_VALUE) of op-secret" allowed reveal secret:label=op-secret CKA_VALUE
attack "PyKCS11 C_SignInit/C_Sign with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$GK"
attack "PyKCS11 C_SignInit/C_Sign with the Guardian signing key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$GSK"
attack "PyKCS11 C_SignInit/C_Sign with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$CA"
attack "PyKCS11 C_SignInit/C_Sign (HMAC) with the confidential item" refused sign "$FW"
attack "PyKCS11 C_VerifyInit/C_Verify (HMAC) with the confidential item (a MAC oracle)" refused verify "$FW"
attack "C_SignRecoverInit with the Guardian key" refused signrecover "$GK"
attack "C_SignRecoverInit with the production CA key" refused signrecover "$CA"
attack "PyKCS11 C_DecryptInit with the Guardian key" refused decrypt "$GK"
attack "PyKCS11 C_DecryptInit with the production CA key" refused decrypt "$CA"
attack "PyKCS11 C_DecryptInit with the confidential item" refused decrypt "$FW"
attack "PyKCS11 C_EncryptInit with the confidential item" refused encrypt "$FW"
attack "PyKCS11 C_DigestKey of the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$CA"
attack "PyKCS11 C_DigestKey of the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$GK"
attack "PyKCS11 C_DigestKey of the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$FW"
attack "control: PyKCS11 C_DigestKey of the operator's op-secret" allowed digestkey secret:label=op-secret
attack "PyKCS11 C_UnwrapKey (standard mechanism) with the Guardian key as unwrapping key" refused unwrapwith "$GK"
attack "PyKCS11 C_UnwrapKey (AES-KEY-WRAP-PAD) with the confidential item as unwrapping key" refused unwrapwith "$FW"
attack "PyKCS11 C_WrapKey of op-secret with the confidential item as wrapping key" refused wrapwith "$FW" secret:label=op-secret
attack "control: PyKCS11 C_SignInit/C_Sign with op-ec" allowed sign private:label=op-ec

section "(5) the confidential item and the keys wrapped out under an operator's AES key"
refused "pkcs11-tool --wrap -m AES-KEY-WRAP --id 0a02 (op-aes) --application-id <package ID> (the package's secret)" "" \
    wrapped.bin -- p11 --wrap -m AES-KEY-WRAP --id 0a02 --application-id "$secret_id" -o wrapped.bin
p11 --wrap -m AES-KEY-WRAP --id 0a02 --application-id 0a03 -o wrapped-op.bin >/dev/null 2>&1 && [ -s wrapped-op.bin ] &&
    ok "control: pkcs11-tool --wrap of op-secret under op-aes works" || ko "control: pkcs11-tool --wrap of op-secret failed"
attack "PyKCS11 C_WrapKey of the confidential item under op-aes" refused wrapped "$FW" secret:label=op-aes
attack "PyKCS11 C_WrapKey of the production CA key under op-aes" refused wrapped "$CA" secret:label=op-aes
attack "PyKCS11 C_WrapKey of the Guardian key under op-aes" refused wrapped "$GK" secret:label=op-aes
attack "control: PyKCS11 C_WrapKey of op-secret under op-aes" allowed wrapped secret:label=op-secret secret:label=op-aes

# ==== main: OEM roots and their OEM IDs ==========================================================

section "(6) one OEM takes over another's product"
expect "enroll-oem without --oem-id is refused (an OEM ID is required)" 1 "oem-id" -- ctl enroll-oem nooem-root.pem --yes
expect "enroll-oem other-root.pem --oem-id OTHER" 0 "" -- ctl enroll-oem other-root.pem --oem-id OTHER --yes
[ -n "$(ctl list-oems 2>/dev/null | grep 'Other Corp Root')" ] || enrol other-root.pem OTHER
if ctl list-oems 2>/dev/null | grep 'Other Corp Root' | grep -qw OTHER; then
    ok "list-oems shows the OEM ID OTHER on Other Corp's root"
else
    ko "list-oems does not show OTHER on Other Corp's root"
    ctl list-oems 2>&1 | sed 's/^/    /'
fi
other_pkg() { # OUT OEM-ID PRODUCT RELEASE: a package signed under OTHER's root
    "$W" create --guardian-cert "$GD/guardian.pem" --signer-key other-signer.key --signer-cert other-signer.pem \
        --ca-key other-ca.key --ca-cert other-ca.pem --ca-chain other-root.pem --oem-id "$2" --product-id "$3" \
        --release "$4" --units 1000000 --not-after +30 --out "$1" >/dev/null
}
other_pkg takeover.gpk ACME SENSOR-1 5 && other_pkg squat.gpk ACME NEW-9 1 && other_pkg own.gpk OTHER GADGET 1 ||
    ko "guardian-wrap create with OTHER's signer"
before=$(product_line ACME SENSOR-1)
expect "import of a package signed under OTHER's root claiming ACME/SENSOR-1 release 5 (takeover)" 1 "$NOT_ENROLLED_RE" -- \
    ctl import takeover.gpk
same "ACME/SENSOR-1 unchanged after the takeover attempt" "$before" "$(product_line ACME SENSOR-1)"
expect "import of a package signed under OTHER's root claiming a new ACME product" 1 "$NOT_ENROLLED_RE" -- ctl import squat.gpk
same "no ACME/NEW-9 installed" "" "$(product_line ACME NEW-9)"
expect "control: OTHER's root imports OTHER's own package" 0 "oem_id=OTHER" -- ctl import own.gpk
expect "enroll-oem of a non-CA certificate (ACME's package signer) is refused" 1 "$NOT_CA_RE" -- \
    ctl enroll-oem signer.pem --oem-id ACME --yes
if ctl list-oems 2>/dev/null | grep -q 'ACME Package Signer'; then ko "the package signer is listed as an OEM root"; else ok "list-oems: the non-CA certificate is not enrolled"; fi

# ==== tamper / wreck: changing, copying and destroying the Guardian's objects ====================

section "(4) changing and copying the Guardian's objects (Guardian 'tamper')"
if guardian tamper; then
    ok "tamper: Guardian set up"
fi
tpkgid=$("$W" inspect "$GD/s1r1.gpk" 2>/dev/null | awk '/^package id/ {print $3}')
# Selectors that survive the label/ID changes attempted last (if they succeed).
TCA=private:idhex=$tpkgid
TGK=private:label=guardian-identity
p11 --keypairgen --key-type EC:prime256v1 --label op-ec --id 0b01 --usage-sign --usage-derive >/dev/null 2>&1 &&
    p11 --keygen --key-type AES:32 --label op-aes --id 0b02 --extractable >/dev/null 2>&1 ||
    ko "operator objects on tamper"
before_objects=$(objects)
attack "PyKCS11 C_SetAttributeValue(CKA_DERIVE=TRUE) on the production CA key" CKR_ACTION_PROHIBITED setattr "$TCA" CKA_DERIVE true
attack "PyKCS11 C_SetAttributeValue(CKA_DECRYPT=TRUE) on the production CA key" CKR_ACTION_PROHIBITED setattr "$TCA" CKA_DECRYPT true
attack "PyKCS11 C_SetAttributeValue(CKA_UNWRAP=TRUE) on the production CA key" CKR_ACTION_PROHIBITED setattr "$TCA" CKA_UNWRAP true
attack "PyKCS11 C_SetAttributeValue(CKA_EXTRACTABLE=TRUE) on the production CA key" refused setattr "$TCA" CKA_EXTRACTABLE true
attack "PyKCS11 C_SetAttributeValue(CKA_SENSITIVE=FALSE) on the production CA key" refused setattr "$TCA" CKA_SENSITIVE false
attack "PyKCS11 C_SetAttributeValue(CKA_SIGN=TRUE) on the confidential item" CKR_ACTION_PROHIBITED setattr "$FW" CKA_SIGN true
attack "PyKCS11 C_SetAttributeValue(CKA_VALUE) on the integrity data item" refused setattr "$CFG" CKA_VALUE forged
attack "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the enrolled root" refused setattr "$ROOT" CKA_LABEL forged
attack "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the Guardian certificate" CKR_ACTION_PROHIBITED setattr "$GCERT" CKA_LABEL forged
attack "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the production CA key after those attempts" refused ecdh "$TCA"
refused "pkcs11-tool --set-id 0bad --id <package ID> --type privkey (re-identify the production CA key)" \
    "CKR_ACTION_PROHIBITED|0x1b" - -- \
    p11 --set-id 0bad --id "$tpkgid" --type privkey
same "the production CA key keeps its CKA_ID" "VALUE $tpkgid" "$(atk show "$CA" CKA_ID | head -n 1)"
# Each copy gets its own label, so that the next attempt still names one object.
attack "PyKCS11 C_CopyObject of the production CA key (CKA_LABEL=copy-1)" CKR_ACTION_PROHIBITED copy "$CA" CKA_LABEL=copy-1
attack "PyKCS11 C_CopyObject of the production CA key with CKA_EXTRACTABLE=TRUE" refused \
    copy "$CA" CKA_LABEL=copy-2 CKA_EXTRACTABLE=true
attack "PyKCS11 C_CopyObject of the production CA key with CKA_DERIVE=TRUE" CKR_ACTION_PROHIBITED \
    copy "$CA" CKA_LABEL=copy-3 CKA_DERIVE=true
attack "PyKCS11 C_CopyObject of the confidential item with CKA_SIGN=TRUE" CKR_ACTION_PROHIBITED \
    copy "$FW" CKA_LABEL=copy-4 CKA_SIGN=true
attack "PyKCS11 C_CopyObject of the Guardian key (a session copy)" CKR_ACTION_PROHIBITED \
    copy "$TGK" CKA_LABEL=copy-5 CKA_TOKEN=false
attack "PyKCS11 C_CopyObject of the enrolled root" refused copy "$ROOT" CKA_LABEL=copy-6
attack "PyKCS11 C_CopyObject of the production CA certificate (a session copy)" CKR_ACTION_PROHIBITED \
    copy "$CACERT" CKA_TOKEN=false
# A data object is not modifiable, so only a plain copy (same label) is possible: the last one on it.
attack "PyKCS11 C_CopyObject of the integrity data item" CKR_ACTION_PROHIBITED copy "$CFG"
# Renaming and re-identifying (the Guardian finds its objects by them): last.
attack "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the production CA key" CKR_ACTION_PROHIBITED setattr "$CA" CKA_LABEL stolen
attack "PyKCS11 C_SetAttributeValue(CKA_ID) on the Guardian key" CKR_ACTION_PROHIBITED setattr "$TGK" CKA_ID stolen
same_n "object count after the attempts ($before_objects before)" "$before_objects" "$(objects)"
expect "the Guardian still provisions after the attempts" 0 "provisioned 1 parts" -- \
    ctl provision --product ACME/SENSOR-1 --count 1 --first 100 --out "$GD/certs-after"
# Controls: the operator's own key pair keeps working exactly as before.
attack "control: C_SignInit/C_Sign with op-ec" allowed sign private:label=op-ec
attack "control: C_SetAttributeValue(CKA_LABEL) on op-ec" allowed setattr private:label=op-ec CKA_LABEL op-ec-renamed
attack "control: C_SetAttributeValue(CKA_DERIVE=FALSE) on op-ec" allowed setattr private:label=op-ec-renamed CKA_DERIVE false
attack "control: C_CopyObject of op-ec" allowed copy private:label=op-ec-renamed CKA_LABEL=op-ec-copy
attack "control: C_DestroyObject of the copy" allowed destroy private:label=op-ec-copy
attack "control: C_DestroyObject of op-ec" allowed destroy private:label=op-ec-renamed
if p11 --delete-object --type secrkey --label op-aes >/dev/null 2>&1 && [[ $(found secret:label=op-aes) =~ ^(0|SKIP)$ ]]; then
    ok "control: pkcs11-tool --delete-object of op-aes works"
else
    ko "control: pkcs11-tool --delete-object of op-aes failed"
fi

section "(4) destroying the Guardian's objects (Guardian 'wreck')"
if guardian wreck; then
    ok "wreck: Guardian set up"
fi
before_objects=$(objects)
refused "pkcs11-tool --delete-object --type cert --label guardian:ACME/SENSOR-1/r1:chain-1 (a package certificate)" \
    "CKR_ACTION_PROHIBITED|0x1b" - -- \
    p11 --delete-object --type cert --label guardian:ACME/SENSOR-1/r1:chain-1
same "the package certificate is still there" 1 "$(found cert:label=guardian:ACME/SENSOR-1/r1:chain-1)"
attack "PyKCS11 C_DestroyObject of the production CA key" CKR_ACTION_PROHIBITED destroy "$CA"
attack "PyKCS11 C_DestroyObject of the enrolled root" CKR_ACTION_PROHIBITED destroy "$ROOT"
attack "PyKCS11 C_DestroyObject of the Guardian certificate" CKR_ACTION_PROHIBITED destroy "$GCERT"
attack "PyKCS11 C_DestroyObject of the Guardian key" CKR_ACTION_PROHIBITED destroy "$GK"
attack "PyKCS11 C_DestroyObject of the Guardian signing key" CKR_ACTION_PROHIBITED destroy "$GSK"
attack "PyKCS11 C_DestroyObject of the Guardian's public key" CKR_ACTION_PROHIBITED destroy public:id=guardian-identity
attack "PyKCS11 C_DestroyObject of the confidential item" CKR_ACTION_PROHIBITED destroy "$FW"
attack "PyKCS11 C_DestroyObject of the integrity data item" CKR_ACTION_PROHIBITED destroy "$CFG"
attack "PyKCS11 C_DestroyObject of the production CA certificate" CKR_ACTION_PROHIBITED destroy "$CACERT"
attack "PyKCS11 C_DestroyObject of the package object (served by the module)" CKR_ACTION_PROHIBITED \
    destroy any:label=guardian-package:ACME/SENSOR-1/r1
same_n "object count after the attempts ($before_objects before)" "$before_objects" "$(objects)"
expect "the Guardian still provisions after the attempts" 0 "provisioned 1 parts" -- \
    ctl provision --product ACME/SENSOR-1 --count 1 --first 100 --out "$GD/certs-after"
expect "and still exports a report that verifies" 0 "^OK$" -- \
    bash -c '"$0" audit export --out "$1/wreck.txt" >/dev/null && "$2" verify-report "$1/wreck.txt" --guardian "$1/guardian.pem" --ca-chain ca.pem --root root.pem' \
    "$CTL" "$GD" "$W"

# ==== rewind: the state restored, deleted, redirected =============================================

section "(7) the state rewound: a restored copy, a deleted database, another state directory (Guardian 'rewind')"
# snap/restore NAME: a copy of the whole state directory, and putting it back.
snap() { rm -rf "${GD:?}/${1:?}" && cp -a "$GD/state" "$GD/$1"; }
restore() { rm -rf "${GD:?}/state" && cp -a "$GD/${1:?}" "$GD/state"; }
provision_more() { # NAME FIRST: 4 more parts, from part FIRST on, into their own directory certs-NAME
    ctl provision --product ACME/SENSOR-1 --count 4 --first "$2" --out "$GD/certs-$1" 2>&1
}
S2_CA=private:label=guardian:ACME/SENSOR-2/r1:production-ca
if guardian rewind; then
    ok "rewind: Guardian set up"
fi
wrap "$GD/s2r1.gpk" SENSOR-2 1 50 +30 || ko "wrap SENSOR-2"
snap older # before SENSOR-2 and before more parts
ctl import "$GD/s2r1.gpk" >/dev/null 2>&1 || ko "import SENSOR-2"
provision_more a 1000 >/dev/null || ko "provision after the copy"
snap genuine

restore older
expect "provision after 'cp -a' of an older copy of the state over it" 1 "$ROLLBACK_RE" -- provision_more x1 2000
expect "import of SENSOR-2 (imported after that copy was taken) with the older state" 1 "$ROLLBACK_RE" -- \
    ctl import "$GD/s2r1.gpk"
restore genuine
expect "the genuine state, put back, is accepted again" 0 "provisioned 4 parts" -- provision_more b 3000
snap genuine

rm -f "$GD/state/guardian.db" "$GD/state/guardian.db-wal" "$GD/state/guardian.db-shm"
expect "provision after guardian.db was deleted" 1 "$ROLLBACK_RE" -- provision_more x2 4000
expect "import of SENSOR-1 again after guardian.db was deleted" 1 "$ROLLBACK_RE" -- ctl import "$GD/s1r1.gpk"
expect "import of SENSOR-2 again after guardian.db was deleted" 1 "$ROLLBACK_RE" -- ctl import "$GD/s2r1.gpk"
restore genuine

mkdir -p "$work/empty-state"
expect "provision with GUARDIAN_STATE_DIR pointing at a new empty directory" 1 "$ROLLBACK_RE" -- \
    env GUARDIAN_STATE_DIR="$work/empty-state" "$CTL" provision --product ACME/SENSOR-1 --count 4 --first 9000 \
    --out "$GD/certs-x3"
expect "import of SENSOR-1 again with GUARDIAN_STATE_DIR pointing at a new empty directory" 1 "$ROLLBACK_RE" -- \
    env GUARDIAN_STATE_DIR="$work/empty-state" "$CTL" import "$GD/s1r1.gpk"
restore genuine

# Nothing granted twice: every SENSOR-1 certificate has its own serial, the
# issued count covers every certificate, each package was imported once.
serials=$(find "$GD" -path "$GD/certs*" -name '*.pem' -exec openssl x509 -noout -serial -in {} \; | sort)
dups=$(uniq -d <<<"$serials" | wc -l)
ncert=$(grep -c . <<<"$serials")
[ "$dups" = 0 ] && ok "all $ncert SENSOR-1 certificate serials are unique" ||
    ko "$dups serial(s) issued twice among $ncert certificates: $(uniq -d <<<"$serials" | tr '\n' ' ')"
iss=$(issued SENSOR-1)
[ "$iss" = "$ncert" ] && ok "issued units of SENSOR-1 ($iss) = certificates issued ($ncert)" ||
    ko "issued units of SENSOR-1 say ${iss:-?}, but $ncert certificates were issued: units granted twice"
same "SENSOR-2's production CA key is in the token once" 1 "$(found "$S2_CA")"
same "SENSOR-1's production CA key is in the token once" 1 "$(found "$CA")"

# ==== clock: time set back ======================================================================

section "(8) the clock set back with faketime (Guardian 'timeshift')"
if ! command -v faketime >/dev/null; then
    ko "faketime is not installed (Debian package faketime, tools/debian-packages)"
else
    export FAKETIME_DONT_FAKE_MONOTONIC=1 # threads and progress timers keep a sane monotonic clock
    [ -n "$asan_rt" ] && export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
    at() { local offset=$1; shift; timeout 120 faketime -f "$offset" "$@"; }
    if guardian timeshift; then
        ok "timeshift: Guardian set up"
    fi
    # Made two days ago (its CMS signing time too), so that one day back it is valid in every other way.
    WRAP_AT=-2d wrap "$GD/s2r1.gpk" SENSOR-2 1 50 +30 || ko "wrap SENSOR-2"
    wrap "$GD/s3r1.gpk" SENSOR-3 1 50 +1 || ko "wrap SENSOR-3 (valid one day)"
    expect "provision with the clock one day back (after records exist)" 1 "$CLOCK_RE" -- \
        at -1d "$CTL" provision --product ACME/SENSOR-1 --count 2 --first 100 --out "$GD/certs-back"
    expect "import of a valid package with the clock one day back" 1 "$CLOCK_RE" -- at -1d "$CTL" import "$GD/s2r1.gpk"
    # The newest record two days ahead; SENSOR-3 has expired by then.
    expect "provision two days ahead (time moving forward is fine)" 0 "provisioned 2 parts" -- \
        at +2d "$CTL" provision --product ACME/SENSOR-1 --count 2 --first 200 --out "$GD/certs-ahead"
    expect "import of SENSOR-3 two days ahead: it has expired" 1 "EXPIRED|expired|not-after" -- \
        at +2d "$CTL" import "$GD/s3r1.gpk"
    expect "the expired SENSOR-3 with the clock wound back two days, below the newest record" 1 "$CLOCK_RE" -- \
        "$CTL" import "$GD/s3r1.gpk"
    same "SENSOR-3 is not installed" "" "$(product_line ACME SENSOR-3)"
    expect "provision with the clock wound back below the newest record" 1 "$CLOCK_RE" -- \
        "$CTL" provision --product ACME/SENSOR-1 --count 2 --first 300 --out "$GD/certs-back2"
    unset FAKETIME_DONT_FAKE_MONOTONIC
fi

# ==== crash: kill -9 and a lost issue journal ======================================================

section "(9) kill -9 of a provisioning run, its issue journal deleted (Guardian 'crash')"
if guardian crash; then
    ok "crash: Guardian set up"
fi
wrap "$GD/big.gpk" BIG 1 100000 +30 && ctl import "$GD/big.gpk" >/dev/null 2>&1 || ko "import ACME/BIG"
journal_bytes=0
for try in $(seq 12); do
    # 50000: within what remains after the earlier tries (a --count beyond it is refused before the start).
    "$CTL" provision --product ACME/BIG --count 50000 --threads 2 --prefix "K$try-" --out "$GD/crash" >/dev/null 2>&1 &
    bg=$!
    for _ in $(seq 300); do # until 40 more certificates are written (at most 30 s)
        [ "$(find "$GD/crash" -name "K$try-*.pem" 2>/dev/null | wc -l)" -ge 40 ] && break
        sleep 0.1
    done
    # A journal is empty just after each reservation block folds it (and
    # while the block is anchored in the token): a kill then leaves none, so
    # the loop tries again.
    kill -9 "$bg" 2>/dev/null
    wait "$bg" 2>/dev/null
    bg=""
    # Nothing may open the store before the journal is gone: the next opener folds it.
    journal_bytes=$(cat "$GD"/state/issued-*.journal 2>/dev/null | wc -c)
    [ "$journal_bytes" -gt 0 ] && break
done
echo "    killed after $(find "$GD/crash" -name '*.pem' | wc -l) certificates; journals: $(cd "$GD/state" && ls -l issued-*.journal 2>/dev/null | awk '{print $NF " " $5 " bytes"}' | tr '\n' ' ')"
if [ "$journal_bytes" -gt 0 ]; then
    ok "a killed run left an issue journal with records ($journal_bytes bytes)"
    rm -f "$GD"/state/issued-*.journal
    if expect "audit export after the journal was deleted" 0 "exported" -- ctl audit export --out "$GD/lost.txt" &&
        [ -s "$GD/lost.txt" ]; then
        expect "verify-report of that export fails, naming the lost journal" 1 "\b[Jj]ournal" -- verify_report "$GD/lost.txt"
    fi
else
    ko "no kill -9 in 12 tries left a non-empty issue journal in $GD/state"
    ls -la "$GD/state" | sed 's/^/    /'
fi

# ==== main again: the trail after every attack ====================================================

section "(10) audit export and verify-report on the main Guardian after the attacks"
use main
expect "guardianctl audit export" 0 "exported" -- ctl audit export --out "$GD/report-2.txt"
expect "guardian-wrap verify-report: OK" 0 "^OK$" -- verify_report "$GD/report-2.txt" --package "$GD/s1r1.gpk"
expect "the later report extends the first (--previous)" 0 "this report extends it" -- \
    verify_report "$GD/report-2.txt" --previous "$GD/report-1.txt"

finish
