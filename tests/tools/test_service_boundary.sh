#!/usr/bin/env bash
# test_service_boundary.sh MODULE GUARDIANCTL GUARDIAN-WRAP GUARDIAN-SERVICE-SETUP
# — the boundary of test_boundary.sh, through the Guardian service (issue 9:
# "the attacks of the boundary issue fail through the service as they do
# in-process"). The service runs in a sandbox as docs/service-mode.md sets it
# up (tests/lib/service.sh); the dishonest operator is an account in the
# operators' group, logged in as alice through p11-kit-client.so, with stock
# tools: pkcs11-tool, openssl with the libp11 engine, PyKCS11
# (boundary_attacks.py), guardianctl, and a p11-kit RPC client of its own
# (rpc_raw.py) for what p11-kit-client.so does not send.
#
# Every attack runs twice on the same Guardian: through the service, and
# in-process (the module loaded by the service's account with the service's
# guardian.conf, service mode, what test_boundary.sh does on the bench). Both
# must give the same CKR code, the one test_boundary.sh (or test_boundary.c)
# asserts where it asserts one. Where p11-kit-client.so refuses to send a
# mechanism (ECDH1-DERIVE, AES-KEY-WRAP(-PAD): CKR_MECHANISM_INVALID at the
# client, never at the service), the raw RPC client sends it and the module's
# answer must again be the in-process one. The operator's own objects work
# (the controls). Then what only the service adds: no access to its state,
# PIN files and token; the backend's PINs are no Guardian login; the
# operator's GUARDIAN_CONF, GUARDIAN_STATE_DIR, GUARDIAN_BACKEND and clock
# change nothing on the service's side; C_InitToken and C_InitPIN refused;
# and certificates read back through the client (pkcs11-tool, the engine) and
# verified against the OEM's chain. The codes seen are listed at the end.
# It makes system accounts: as a non-root user it is skipped (exit 77).
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
SETUP=$(realpath "${4:?guardian-service-setup}")
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
service_require test_service_boundary.sh pkcs11-tool openssl xxd
PY=/usr/bin/python3
TOKEN=sbound
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -f "$ENGINE" ] || { echo "SKIP: the libp11 engine $ENGINE is missing (libengine-pkcs11-openssl)"; exit 77; }

service_work service-boundary gtb$$
section() { printf '\n# %s\n' "$*"; }
service_accounts "$op"
service_sandbox "$TOKEN"
service_install /CN=service-boundary || { cat install.out; echo "FAIL install"; exit 1; }
# What each side writes: op/ is the operator's, in/ the service account's.
mkdir -p op in
chown "$op:$op" op
chown "$svc:$svc" in
chmod 0700 op in

# ---- the two sides ---------------------------------------------------------------------

# insvc CMD...: CMD as the service's account with the service's configuration:
# the module in-process, in service mode, on the same Guardian.
insvc() { as "$svc" GUARDIAN_CONF="$conf/guardian.conf" SOFTHSM2_CONF="$tokens/softhsm2.conf" "$@"; }
opatk() { opclient "$PY" "$HERE/boundary_attacks.py" "$CLIENT" "$TOKEN" "alice:$ALICE" "$@" 2>&1; }
inatk() { insvc "$PY" "$HERE/boundary_attacks.py" "$M" "$TOKEN" "alice:$ALICE" "$@" 2>&1; }
rawatk() { opclient "$PY" "$HERE/rpc_raw.py" "$sock" "$TOKEN" "alice:$ALICE" "$@" 2>&1; }
opp11() { opclient OPPIN="alice:$ALICE" pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --login --pin env:OPPIN "$@"; }
inp11() { insvc OPPIN="alice:$ALICE" pkcs11-tool --module "$M" --token-label "$TOKEN" --login --pin env:OPPIN "$@"; }
inctl() { insvc GUARDIAN_PIN="alice:$ALICE" "$CTL" --module "$M" --token "$TOKEN" "$@"; }
# verdict OUTPUT: its first line that is not a log line (the module's, in-process; p11-kit's).
verdict() { grep -v -e '^guardian\[' -e '^(p11-kit:' <<<"$1" | head -n 1; }
# rv OUTPUT: the CKR of pkcs11-tool's "failed: rv = … (0x…)" line, by name.
rv() {
    local hex
    hex=$(sed -n 's/.*failed: rv = .*(\(0x[0-9a-fA-F]*\)).*/\1/p' <<<"$1" | head -n 1)
    case $hex in
    0x68) echo CKR_KEY_FUNCTION_NOT_PERMITTED ;; 0x1b) echo CKR_ACTION_PROHIBITED ;;
    0x70) echo CKR_MECHANISM_INVALID ;; 0xa0) echo CKR_PIN_INCORRECT ;; 0x101) echo CKR_USER_NOT_LOGGED_IN ;;
    "") echo "(no CKR)" ;; *) echo "rv $hex" ;;
    esac
}
# record NAME IN-PROCESS SERVICE: a row of the table printed at the end.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>codes.tsv; }
codeof() { sed 's/^REFUSED //; s/^ALLOWED.*/allowed/' <<<"$1"; }

# both NAME WANT ATTACK ARGS...: a boundary_attacks.py attack on both sides;
# the same verdict, and WANT (a CKR name: that refusal; allowed: a control).
both() {
    local name=$1 want=$2 so io sv iv
    shift 2
    so=$(opatk "$@")
    io=$(inatk "$@")
    sv=$(verdict "$so") iv=$(verdict "$io")
    record "$name" "$(codeof "$iv")" "$(codeof "$sv")"
    if [ "$want:${sv%% *}" = "allowed:ALLOWED" ] && [ "${iv%% *}" = ALLOWED ]; then
        ok "$name: allowed, in-process and through the service"
    elif [ "$sv" = "REFUSED $want" ] && [ "$iv" = "REFUSED $want" ]; then
        ok "$name: $want, in-process and through the service"
    else
        ko "$name: wanted $want on both sides; in-process: $iv; through the service: $sv"
        sed 's/^/    service: /' <<<"$so"
        grep -v '^guardian\[' <<<"$io" | sed 's/^/    in-process: /'
    fi
}
# svconly NAME WANT ATTACK ARGS...: a control through the service only (it changes what it uses).
svconly() {
    local name=$1 want=$2 so sv
    shift 2
    so=$(opatk "$@")
    sv=$(verdict "$so")
    if [ "$want:${sv%% *}" = "allowed:ALLOWED" ] || [ "$sv" = "REFUSED $want" ]; then
        ok "$name: ${sv%% *} ${sv#* }"
    else
        ko "$name: wanted $want, got: $sv"
        sed 's/^/    /' <<<"$so"
    fi
}
# notsent NAME WANT ATTACK ARGS...: a mechanism p11-kit-client.so does not
# send: in-process WANT, through p11-kit-client.so CKR_MECHANISM_INVALID
# (refused by the client library: the service never sees the call).
notsent() {
    local name=$1 want=$2 so io sv iv
    shift 2
    so=$(opatk "$@")
    io=$(inatk "$@")
    sv=$(verdict "$so") iv=$(verdict "$io")
    record "$name (p11-kit-client.so)" "$(codeof "$iv")" "$(codeof "$sv") (not sent)"
    if [ "$iv" = "REFUSED $want" ] && [ "$sv" = "REFUSED CKR_MECHANISM_INVALID" ]; then
        ok "$name: in-process $want; p11-kit-client.so does not send the mechanism (CKR_MECHANISM_INVALID)"
    else
        ko "$name: in-process (want $want): $iv; through p11-kit-client.so (want CKR_MECHANISM_INVALID): $sv"
        sed 's/^/    service: /' <<<"$so"
    fi
}
# raw NAME WANT ATTACK ARGS...: rpc_raw.py through the service's socket: WANT
# (the in-process code, from the notsent check before it, or a control's).
raw() {
    local name=$1 want=$2 so sv
    shift 2
    so=$(rawatk "$@")
    sv=$(verdict "$so")
    record "$name (raw RPC client)" "-" "$(codeof "$sv")"
    if [ "$want:${sv%% *}" = "allowed:ALLOWED" ] || [ "$sv" = "REFUSED $want" ]; then
        ok "$name, by a raw RPC client: ${sv%% *} ${sv#* }"
    else
        ko "$name, by a raw RPC client: wanted $want, got: $sv"
        sed 's/^/    /' <<<"$so"
    fi
}
# p11both NAME WANT OUT ARGS...: pkcs11-tool on both sides (ARGS, then -o
# op/OUT or in/OUT unless OUT is -): refused with WANT on each side (or, with
# WANT notsent:CODE, CODE in-process and CKR_MECHANISM_INVALID through
# p11-kit-client.so), nothing written.
p11both() {
    local name=$1 want=$2 out=$3 so io sr ir swant=$2 iwant=$2 o_op=() o_in=()
    shift 3
    if [ "$out" != - ]; then
        rm -f "op/$out" "in/$out"
        o_op=(-o "$work/op/$out") o_in=(-o "$work/in/$out")
    fi
    case $want in notsent:*) iwant=${want#notsent:} swant=CKR_MECHANISM_INVALID ;; esac
    so=$(opp11 "$@" "${o_op[@]}" 2>&1 </dev/null)
    io=$(inp11 "$@" "${o_in[@]}" 2>&1 </dev/null)
    sr=$(rv "$so") ir=$(rv "$io")
    record "$name" "$ir" "$sr$([ "$swant" != "$iwant" ] && echo " (not sent)")"
    local why=""
    [ "$swant" != "$iwant" ] && why=" (p11-kit-client.so does not send it)"
    if [ "$sr" = "$swant" ] && [ "$ir" = "$iwant" ] && [ ! -s "op/$out" ] && [ ! -s "in/$out" ]; then
        ok "$name: in-process $ir, through the service $sr$why; nothing written"
    else
        ko "$name: in-process $ir (want $iwant), through the service $sr (want $swant)"
        sed 's/^/    service: /' <<<"$so"
        grep -v '^guardian\[' <<<"$io" | sed 's/^/    in-process: /'
    fi
}
objects() { verdict "$(opatk count)" | awk '$1 == "COUNT" {print $2}'; }
found() { verdict "$(opatk exists "$1")" | awk '$1 == "FOUND" {print $2}'; }
same() { if [ "$2" = "$3" ]; then ok "$1"; else ko "$1: was '$2', now '$3'"; fi; }
product_line() { opctl products 2>/dev/null | awk -v p="$1" '$1 == "ACME" && $2 == p'; }
issued() { product_line "$1" | awk '{print $5}'; }
hex() { printf %s "$1" | od -An -tx1 | tr -d ' \n'; }

# The Guardian's objects, as boundary_attacks.py selectors (test_boundary.sh's).
GKID=$(hex guardian-identity) GSKID=$(hex guardian-signing)
CA_LABEL="guardian:ACME/SENSOR-1/r1:production-ca"
CA="private:label=$CA_LABEL"
GK="private:id=guardian-identity"
GSK="private:id=guardian-signing"
FW="secret:label=guardian:ACME/SENSOR-1/r1:fw-key"
CFG="data:label=guardian:ACME/SENSOR-1/r1:config"
CACERT="cert:label=guardian:ACME/SENSOR-1/r1:production-ca-cert0"
ROOT="cert:label=guardian-root:ACME"
GCERT="cert:id=guardian-identity"

# ---- setup ------------------------------------------------------------------------------

section "setup: the service, ACME enrolled by the SO, a package imported, certificates issued"
service_start && ok "the service runs as $svc (p11-kit server pid $server); operator account $op, logged in as alice" ||
    { cat service.log; ko "service start"; finish; }
oem_pki 2>/dev/null
oem_root other-root "Other Corp Root" 2>/dev/null
oem_issue other-signer "/CN=Other Corp Package Signer" other-root "keyUsage=critical,digitalSignature" 2>/dev/null
oem_issue other-ca "/CN=Other Corp Production CA" other-root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign" 2>/dev/null
echo "telemetry_interval=60" >config.txt
head -c 32 /dev/urandom >secret.bin
SO=$SO_SECRET expect "the SO enrols ACME's root for ACME through the service" 0 "" -- opctl enroll-oem root.pem --oem-id ACME --yes
SO=$SO_SECRET expect "the SO enrols Other Corp's root for OTHER through the service" 0 "" -- \
    opctl enroll-oem other-root.pem --oem-id OTHER --yes
"$W" create --guardian-cert "$conf/guardian.pem" --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id SENSOR-1 --release 1 --units 100 --not-after +30 \
    --data config=config.txt --secret-data fw-key=secret.bin --out s1r1.gpk >/dev/null || ko "guardian-wrap create"
"$W" create --guardian-cert "$conf/guardian.pem" --signer-key other-signer.key --signer-cert other-signer.pem \
    --ca-key other-ca.key --ca-cert other-ca.pem --ca-chain other-root.pem --oem-id ACME --product-id SENSOR-1 \
    --release 5 --units 1000000 --not-after +30 --out takeover.gpk >/dev/null || ko "guardian-wrap create (OTHER)"
pkgid=$("$W" inspect s1r1.gpk 2>/dev/null | awk '/^package id/ {print $3}')
secret_id=$pkgid$(printf fw-key | od -An -tx1 | tr -d ' \n') # its confidential item: package ID + name
openssl x509 -in root.pem -outform DER -out root.der
chmod 0644 ./*.gpk ./*.pem root.der
expect "import ACME/SENSOR-1 (100 units) through the service" 0 "package_id=$pkgid" -- opctl import s1r1.gpk
expect "provision 3 parts through the service" 0 "provisioned 3 parts" -- opctl provision --product ACME/SENSOR-1 \
    --count 3 --out "$work/op/certs"
# A device certificate made a token object (CKA_TOKEN TRUE) by the request.
ec_key dev1.key
openssl pkey -in dev1.key -pubout -outform DER -out dev1.spki
chmod 0644 dev1.spki
svconly "the DEVICE_CERT request with CKA_TOKEN TRUE through the service" allowed \
    issue ACME/SENSOR-1 SN-TOKEN-1 "$work/dev1.spki" "$work/op/token-cert.der" CKA_TOKEN=true CKA_LABEL=dev-token-1 \
    CKA_ID=hex:d1d1
same "it is a token object, found by its label in a new session" 1 "$(found cert:label=dev-token-1)"
svconly "a second one (dev-token-2)" allowed \
    issue ACME/SENSOR-1 SN-TOKEN-2 "$work/dev1.spki" "$work/op/token-cert-2.der" CKA_TOKEN=true CKA_LABEL=dev-token-2
# The operator's own objects, made through the service.
opp11 --keypairgen --key-type EC:prime256v1 --label op-ec --id 0a01 --usage-sign --usage-derive >/dev/null 2>&1 &&
    opp11 --keygen --key-type AES:32 --label op-aes --id 0a02 --extractable >/dev/null 2>&1 &&
    opp11 --keygen --key-type GENERIC:32 --label op-secret --id 0a03 --extractable >/dev/null 2>&1 &&
    opp11 --keypairgen --key-type RSA:2048 --label op-rsa --id 0a04 --usage-wrap >/dev/null 2>&1 &&
    printf 'mine\n' >op-data.txt && opp11 --write-object op-data.txt --type data --label op-data >/dev/null 2>&1 &&
    ok "the operator's objects, made through the service with pkcs11-tool (op-ec, op-aes, op-secret, op-rsa, op-data)" ||
    ko "the operator's objects with pkcs11-tool --keypairgen/--keygen/--write-object through the service"
expect "(10) the operator exports an audit report through the service" 0 "exported" -- \
    opctl audit export --out "$work/op/report-1.txt"
expect "(10) the OEM's verify-report accepts it" 0 "^OK$" -- "$W" verify-report op/report-1.txt \
    --guardian "$conf/guardian.pem" --ca-chain ca.pem --root root.pem --package s1r1.gpk

section "controls: the operator's own key made through the service signs"
openssl dgst -sha256 -binary config.txt >h.bin
chmod 0644 h.bin
if opp11 --sign -m ECDSA --id 0a01 --signature-format openssl -i h.bin -o "$work/op/sig.der" >/dev/null 2>&1 &&
    opp11 --read-object --type pubkey --id 0a01 -o "$work/op/op-ec.pub" >/dev/null 2>&1 &&
    openssl pkeyutl -verify -pubin -keyform DER -inkey op/op-ec.pub -in h.bin -sigfile op/sig.der >/dev/null 2>&1; then
    ok "pkcs11-tool --keypairgen, then --sign with op-ec through the service: openssl verifies the signature"
else
    ko "control: pkcs11-tool --sign with op-ec through the service (the refusals below prove nothing)"
fi
svconly "control: PyKCS11 C_Sign with op-ec through the service" allowed sign private:label=op-ec
raw "control: C_Sign with op-ec" allowed sign private:label=op-ec

# ---- (1) ECDH with the Guardian's agreement key -------------------------------------------

section "(1) ECDH1-DERIVE with the Guardian key (pkcs11-tool --derive, PyKCS11, a raw RPC client)"
openssl cms -verify -inform DER -in s1r1.gpk -noverify -binary -out content.der >/dev/null 2>&1
eph=$(openssl asn1parse -inform DER -in content.der | awk '/OCTET STRING/ && ++i == 3 {sub(/.*HEX DUMP\]:/, ""); print; exit}')
printf '%s%s' 3059301306072a8648ce3d020106082a8648ce3d030107034200 "$eph" | xxd -r -p >eph.der
chmod 0644 eph.der
openssl pkey -pubin -inform DER -in eph.der -noout 2>/dev/null && ok "the package's ephemeral point, read with openssl" ||
    ko "could not read the package's ephemeral point"
n0=$(objects)
p11both "pkcs11-tool --derive -m ECDH1-DERIVE --id guardian-identity -i <the package's ephemeral point>" \
    notsent:CKR_KEY_FUNCTION_NOT_PERMITTED z.bin --derive -m ECDH1-DERIVE --id "$GKID" -i eph.der
notsent "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GK"
notsent "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the Guardian signing key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GSK"
notsent "PyKCS11 C_DeriveKey(ECDH1_DERIVE) with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$CA"
raw "C_DeriveKey(ECDH1_DERIVE) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GK"
raw "C_DeriveKey(ECDH1_DERIVE) with the Guardian signing key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$GSK"
raw "C_DeriveKey(ECDH1_DERIVE) with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED ecdh "$CA"
# The Guardian keys above were refused by the module before their parameter
# was looked at.  With the operator's own key the policy lets the call on, and
# service mode refuses the mechanism itself: p11-kit-remote hands its
# parameter over as the client's bytes, so its pointers are addresses the
# client chose (before that check, ADDR 0x1000 killed the connection's
# process with SIGSEGV, in SoftHSM's memcpy).
raw "service mode: C_DeriveKey(ECDH1_DERIVE) with op-ec is refused (a parameter with pointers)" CKR_MECHANISM_INVALID \
    ecdh private:label=op-ec
raw "... with the pointer 0x1000 too, and the connection's process lives" CKR_MECHANISM_INVALID \
    ecdh private:label=op-ec 0x1000
raw "service mode: C_DeriveKey(CKM_GUARDIAN_DERIVE_DEVICE_CERT) by a raw client, pointers 0x1000: refused, nothing read" \
    CKR_MECHANISM_INVALID devcert "$CA" 0x1000
same "no new object after the ECDH attempts ($n0 objects)" "$n0" "$(objects)"

# ---- (2) the production CA key through the libp11 engine ------------------------------------

section "(2) openssl x509 -req -engine pkcs11 -CAkey <production CA key>, and report signatures, through p11-kit-client.so"
# engine_conf MODULE FILE OWNER: the engine (../shared/INTEROP-NOTES.md), the PIN in the file, not on a command line.
engine_conf() {
    cat >"$2" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $1
PIN = alice:$ALICE
init = 0
[req]
distinguished_name = req_dn
[req_dn]
EOF
    chown "$3:$3" "$2"
    chmod 0600 "$2"
}
engine_conf "$CLIENT" op/engine.cnf "$op"
engine_conf "$M" in/engine.cnf "$svc"
ec_key dev.key
openssl req -new -key dev.key -subj /CN=SN-FORGED -out dev.csr 2>/dev/null
chmod 0644 dev.csr
uri() { printf 'pkcs11:token=%s;object=%s;type=%s' "$TOKEN" "$(sed 's|/|%2F|g' <<<"$1")" "${2:-private}"; }
opssl() { opclient OPENSSL_CONF="$work/op/engine.cnf" openssl "$@"; }
inssl() { insvc OPENSSL_CONF="$work/in/engine.cnf" openssl "$@"; }
# sslboth NAME OUT COMMAND ARGS...: openssl COMMAND -out op/OUT or in/OUT ARGS
# with the engine on both sides: refused on each, saying the token's CKR
# (libp11 prints it as text: "Key function not permitted" for
# CKR_KEY_FUNCTION_NOT_PERMITTED), nothing written.
sslboth() {
    local name=$1 out=$2 cmd=$3 so io sw iw
    shift 3
    rm -f "op/$out" "in/$out"
    so=$(opssl "$cmd" -out "$work/op/$out" "$@" 2>&1 </dev/null)
    io=$(inssl "$cmd" -out "$work/in/$out" "$@" 2>&1 </dev/null)
    sw=$(grep -o 'ERR_CKR_error:[^:]*' <<<"$so" | head -n 1) iw=$(grep -o 'ERR_CKR_error:[^:]*' <<<"$io" | head -n 1)
    record "$name" "${iw#ERR_CKR_error:}" "${sw#ERR_CKR_error:}"
    if [ -n "$sw" ] && [ "$sw" = "$iw" ] && [ "$sw" = "ERR_CKR_error:Key function not permitted" ] &&
        [ ! -s "op/$out" ] && [ ! -s "in/$out" ]; then
        ok "$name: refused on both sides ($sw: CKR_KEY_FUNCTION_NOT_PERMITTED); nothing written"
    else
        ko "$name: in-process '${iw:-no CKR}', through the service '${sw:-no CKR}'"
        sed 's/^/    service: /' <<<"$so"
        grep -v '^guardian\[' <<<"$io" | sed 's/^/    in-process: /'
    fi
}
# libp11 pairs an EC private key with a public key or certificate of the same
# CKA_ID, and the package's root certificate has the CA key's: in-process
# (measured) openssl then stops at its own check ("CA certificate and CA
# private key do not match") before any C_Sign. So the operator first writes
# the production CA's public key (it is in ca.pem) beside the key, as
# test_boundary.sh (2) does, and both sides reach the module.
openssl x509 -in ca.pem -pubkey -noout | openssl pkey -pubin -outform DER -out ca-pub.der
chmod 0644 ca-pub.der
opp11 --write-object "$work/ca-pub.der" --type pubkey --id "$pkgid" --label op-ca-pub >/dev/null 2>&1 &&
    ok "the operator writes the production CA's public key with the package's CKA_ID through the service (for libp11)" ||
    ko "pkcs11-tool --write-object of the CA's public key through the service"
before=$(product_line SENSOR-1)
sslboth "openssl x509 -req -CA ca.pem -engine pkcs11 -CAkeyform engine -CAkey '$(uri "$CA_LABEL")'" forged.pem \
    x509 -req -in "$work/dev.csr" -CA "$work/ca.pem" -engine pkcs11 -CAkeyform engine -CAkey "$(uri "$CA_LABEL")" \
    -days 30 -set_serial 4242
same "issued/remaining of ACME/SENSOR-1 unchanged (guardianctl products through the service)" "$before" \
    "$(product_line SENSOR-1)"
sslboth "openssl dgst -sha256 -sign '$(uri guardian-identity)': a report signature by the Guardian key" forged.sig \
    dgst -sha256 -engine pkcs11 -keyform engine -sign "$(uri guardian-identity)" "$work/config.txt"
sslboth "openssl dgst -sha256 -sign '$(uri guardian-signing)': by the Guardian's signing key" forged.sig \
    dgst -sha256 -engine pkcs11 -keyform engine -sign "$(uri guardian-signing)" "$work/config.txt"
opssl req -new -x509 -engine pkcs11 -keyform engine -key "$(uri op-ec)" -subj /CN=op -days 1 -sha256 \
    -out "$work/op/op.pem" >/dev/null 2>&1 && openssl x509 -in op/op.pem -noout 2>/dev/null &&
    ok "control: openssl req -x509 with op-ec through the engine and the service" ||
    ko "control: openssl with the engine and op-ec through the service failed (the attacks above prove nothing)"

# ---- (3) signing, decrypting, digesting, wrapping with the Guardian's keys -------------------

section "(3) signing, decrypting, digesting and unwrapping with the Guardian's keys"
p11both "pkcs11-tool --sign -m ECDSA --id guardian-identity" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin \
    --sign -m ECDSA --id "$GKID" -i "$work/h.bin"
p11both "pkcs11-tool --sign -m ECDSA --id guardian-signing" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin \
    --sign -m ECDSA --id "$GSKID" -i "$work/h.bin"
p11both "pkcs11-tool --sign -m ECDSA --id <package ID> (the production CA key)" CKR_KEY_FUNCTION_NOT_PERMITTED sig.bin \
    --sign -m ECDSA --id "$pkgid" -i "$work/h.bin"
both "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the confidential item" CKR_ATTRIBUTE_SENSITIVE reveal "$FW" CKA_VALUE
both "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the production CA key" CKR_ATTRIBUTE_SENSITIVE reveal "$CA" CKA_VALUE
both "PyKCS11 C_GetAttributeValue(CKA_VALUE) of the Guardian key" CKR_ATTRIBUTE_SENSITIVE reveal "$GK" CKA_VALUE
both "control: PyKCS11 C_GetAttributeValue(CKA_VALUE) of op-secret" allowed reveal secret:label=op-secret CKA_VALUE
both "PyKCS11 C_SignInit/C_Sign with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$GK"
both "PyKCS11 C_SignInit/C_Sign with the Guardian signing key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$GSK"
both "PyKCS11 C_SignInit/C_Sign with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$CA"
both "PyKCS11 C_SignInit/C_Sign (HMAC) with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED sign "$FW"
both "PyKCS11 C_VerifyInit (HMAC) with the confidential item (a MAC oracle)" CKR_KEY_FUNCTION_NOT_PERMITTED verify "$FW"
both "C_SignRecoverInit with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED signrecover "$GK"
both "C_SignRecoverInit with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED signrecover "$CA"
both "PyKCS11 C_DecryptInit with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED decrypt "$GK"
both "PyKCS11 C_DecryptInit with the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED decrypt "$CA"
both "PyKCS11 C_DecryptInit with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED decrypt "$FW"
both "PyKCS11 C_EncryptInit with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED encrypt "$FW"
both "PyKCS11 C_DigestKey of the production CA key" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$CA"
both "PyKCS11 C_DigestKey of the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$GK"
both "PyKCS11 C_DigestKey of the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED digestkey "$FW"
both "control: PyKCS11 C_DigestKey of op-secret" allowed digestkey secret:label=op-secret
notsent "PyKCS11 C_UnwrapKey (AES-KEY-WRAP-PAD) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED unwrapwith "$GK"
notsent "PyKCS11 C_UnwrapKey (AES-KEY-WRAP-PAD) with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED \
    unwrapwith "$FW"
raw "C_UnwrapKey (AES-KEY-WRAP-PAD) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED unwrapwith "$GK"
raw "C_UnwrapKey (AES-KEY-WRAP-PAD) with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED unwrapwith "$FW"
# The same attempts with mechanisms p11-kit-client.so does send.
both "PyKCS11 C_UnwrapKey (RSA-PKCS) with the Guardian key" CKR_KEY_FUNCTION_NOT_PERMITTED unwrapwith "$GK" rsa-pkcs
both "PyKCS11 C_UnwrapKey (AES-ECB) with the confidential item" CKR_KEY_FUNCTION_NOT_PERMITTED unwrapwith "$FW" aes-ecb
notsent "PyKCS11 C_WrapKey of op-secret with the confidential item as wrapping key (AES-KEY-WRAP-PAD)" \
    CKR_KEY_FUNCTION_NOT_PERMITTED wrapwith "$FW" secret:label=op-secret
raw "C_WrapKey of op-secret with the confidential item as wrapping key (AES-KEY-WRAP-PAD)" \
    CKR_KEY_FUNCTION_NOT_PERMITTED wrapped secret:label=op-secret "$FW"
both "PyKCS11 C_WrapKey of op-secret with the confidential item as wrapping key (AES-ECB)" \
    CKR_KEY_FUNCTION_NOT_PERMITTED wrapwith "$FW" secret:label=op-secret aes-ecb

# ---- (5) the Guardian's secrets wrapped out under the operator's keys ------------------------

section "(5) the confidential item and the keys wrapped out under an operator's key"
p11both "pkcs11-tool --wrap -m AES-KEY-WRAP --id 0a02 (op-aes) --application-id <package ID>" \
    notsent:CKR_ACTION_PROHIBITED wrapped.bin --wrap -m AES-KEY-WRAP --id 0a02 --application-id "$secret_id"
notsent "PyKCS11 C_WrapKey of the confidential item under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED \
    wrapped "$FW" secret:label=op-aes
notsent "PyKCS11 C_WrapKey of the production CA key under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED \
    wrapped "$CA" secret:label=op-aes
notsent "PyKCS11 C_WrapKey of the Guardian key under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED \
    wrapped "$GK" secret:label=op-aes
raw "C_WrapKey of the confidential item under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED wrapped "$FW" \
    secret:label=op-aes
raw "C_WrapKey of the production CA key under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED wrapped "$CA" \
    secret:label=op-aes
raw "C_WrapKey of the Guardian key under op-aes (AES-KEY-WRAP-PAD)" CKR_ACTION_PROHIBITED wrapped "$GK" \
    secret:label=op-aes
raw "control: C_WrapKey of op-secret under op-aes (AES-KEY-WRAP-PAD)" allowed wrapped secret:label=op-secret \
    secret:label=op-aes
both "PyKCS11 C_WrapKey of the confidential item under op-rsa (RSA-PKCS)" CKR_ACTION_PROHIBITED \
    wrapped "$FW" public:label=op-rsa rsa-pkcs
both "PyKCS11 C_WrapKey of the production CA key under op-rsa (RSA-PKCS)" CKR_ACTION_PROHIBITED \
    wrapped "$CA" public:label=op-rsa rsa-pkcs
both "PyKCS11 C_WrapKey of the confidential item under op-aes (AES-ECB)" CKR_ACTION_PROHIBITED \
    wrapped "$FW" secret:label=op-aes aes-ecb
both "control: PyKCS11 C_WrapKey of op-secret under op-rsa (RSA-PKCS)" allowed \
    wrapped secret:label=op-secret public:label=op-rsa rsa-pkcs

# ---- (6) another OEM's root signs for ACME ------------------------------------------------

section "(6) a package signed under Other Corp's root for ACME/SENSOR-1 (a takeover)"
before=$(product_line SENSOR-1)
so=$(opctl import takeover.gpk 2>&1)
io=$(inctl import "$work/takeover.gpk" 2>&1)
sv=$(grep -o 'CKR_[A-Z_]*' <<<"$so" | head -n 1) iv=$(grep -o 'CKR_[A-Z_]*' <<<"$io" | head -n 1)
record "guardianctl import of Other Corp's package for ACME/SENSOR-1" "$iv" "$sv"
[ "$sv" = CKR_GUARDIAN_OEM_NOT_ENROLLED ] && [ "$iv" = "$sv" ] &&
    ok "guardianctl import takeover.gpk: CKR_GUARDIAN_OEM_NOT_ENROLLED, in-process and through the service" ||
    ko "takeover import: in-process '$iv', through the service '$sv': $so"
same "ACME/SENSOR-1 unchanged after the takeover attempts" "$before" "$(product_line SENSOR-1)"

# ---- (4) changing and copying the Guardian's objects -------------------------------------

section "(4) changing and copying the Guardian's objects"
before_objects=$(objects)
both "PyKCS11 C_SetAttributeValue(CKA_DERIVE=TRUE) on the production CA key" CKR_ACTION_PROHIBITED \
    setattr "$CA" CKA_DERIVE true
both "PyKCS11 C_SetAttributeValue(CKA_DECRYPT=TRUE) on the production CA key" CKR_ACTION_PROHIBITED \
    setattr "$CA" CKA_DECRYPT true
both "PyKCS11 C_SetAttributeValue(CKA_UNWRAP=TRUE) on the production CA key" CKR_ACTION_PROHIBITED \
    setattr "$CA" CKA_UNWRAP true
both "PyKCS11 C_SetAttributeValue(CKA_EXTRACTABLE=TRUE) on the production CA key" CKR_ACTION_PROHIBITED \
    setattr "$CA" CKA_EXTRACTABLE true
both "PyKCS11 C_SetAttributeValue(CKA_SENSITIVE=FALSE) on the production CA key" CKR_ACTION_PROHIBITED \
    setattr "$CA" CKA_SENSITIVE false
both "PyKCS11 C_SetAttributeValue(CKA_SIGN=TRUE) on the confidential item" CKR_ACTION_PROHIBITED \
    setattr "$FW" CKA_SIGN true
both "PyKCS11 C_SetAttributeValue(CKA_VALUE) on the integrity data item" CKR_ACTION_PROHIBITED \
    setattr "$CFG" CKA_VALUE forged
both "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the enrolled root" CKR_ACTION_PROHIBITED setattr "$ROOT" CKA_LABEL forged
both "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the Guardian certificate" CKR_ACTION_PROHIBITED \
    setattr "$GCERT" CKA_LABEL forged
both "PyKCS11 C_SetAttributeValue(CKA_LABEL) on the production CA key" CKR_ACTION_PROHIBITED setattr "$CA" CKA_LABEL stolen
both "PyKCS11 C_SetAttributeValue(CKA_ID) on the Guardian key" CKR_ACTION_PROHIBITED setattr "$GK" CKA_ID stolen
p11both "pkcs11-tool --set-id 0bad --id <package ID> --type privkey (re-identify the production CA key)" \
    CKR_ACTION_PROHIBITED - --set-id 0bad --id "$pkgid" --type privkey
same "the production CA key keeps its CKA_ID" "VALUE $pkgid" "$(verdict "$(opatk show "$CA" CKA_ID)")"
both "PyKCS11 C_CopyObject of the production CA key" CKR_ACTION_PROHIBITED copy "$CA" CKA_LABEL=copy-1
both "PyKCS11 C_CopyObject of the production CA key with CKA_EXTRACTABLE=TRUE" CKR_ACTION_PROHIBITED \
    copy "$CA" CKA_LABEL=copy-2 CKA_EXTRACTABLE=true
both "PyKCS11 C_CopyObject of the production CA key with CKA_DERIVE=TRUE" CKR_ACTION_PROHIBITED \
    copy "$CA" CKA_LABEL=copy-3 CKA_DERIVE=true
both "PyKCS11 C_CopyObject of the confidential item with CKA_SIGN=TRUE" CKR_ACTION_PROHIBITED \
    copy "$FW" CKA_LABEL=copy-4 CKA_SIGN=true
both "PyKCS11 C_CopyObject of the Guardian key (a session copy)" CKR_ACTION_PROHIBITED \
    copy "$GK" CKA_LABEL=copy-5 CKA_TOKEN=false
both "PyKCS11 C_CopyObject of the enrolled root" CKR_ACTION_PROHIBITED copy "$ROOT" CKA_LABEL=copy-6
both "PyKCS11 C_CopyObject of the production CA certificate (a session copy)" CKR_ACTION_PROHIBITED \
    copy "$CACERT" CKA_TOKEN=false
both "PyKCS11 C_CopyObject of the integrity data item" CKR_ACTION_PROHIBITED copy "$CFG"
same "object count after the attempts ($before_objects before)" "$before_objects" "$(objects)"
# Controls: the operator's own objects change, copy and go as on any token.
svconly "control: C_SetAttributeValue(CKA_LABEL) on op-ec" allowed setattr private:label=op-ec CKA_LABEL op-ec-2
svconly "control: C_CopyObject of op-ec" allowed copy private:label=op-ec-2 CKA_LABEL=op-ec-copy
svconly "control: C_DestroyObject of the copy" allowed destroy private:label=op-ec-copy
svconly "control: C_SetAttributeValue(CKA_LABEL) back on op-ec" allowed setattr private:label=op-ec-2 CKA_LABEL op-ec

section "(4) marks of the Guardian on objects the operator makes, and enrolment by a user session"
both "C_CreateObject of a CKA_TRUSTED certificate (a forged enrolment)" CKR_ACTION_PROHIBITED \
    create cert CKA_CERTIFICATE_TYPE=0 CKA_TRUSTED=true CKA_VALUE=hex:3000 CKA_SUBJECT=hex:3000
both "C_CreateObject of a certificate labelled guardian-root:ACME (ACME's root)" CKR_ACTION_PROHIBITED \
    create cert CKA_CERTIFICATE_TYPE=0 CKA_LABEL=guardian-root:ACME CKA_VALUE="file:$work/root.der" CKA_SUBJECT=hex:3000
both "C_CreateObject of a token data object labelled guardian-anchor (the state anchor)" CKR_ACTION_PROHIBITED \
    create data CKA_TOKEN=true CKA_LABEL=guardian-anchor CKA_VALUE=hex:3000
both "C_CreateObject of a data object with CKA_ID guardian-identity" CKR_ACTION_PROHIBITED \
    create data CKA_ID=guardian-identity CKA_VALUE=hex:3000
both "C_CreateObject of a data object with CKA_ID guardian-signing" CKR_ACTION_PROHIBITED \
    create data CKA_ID=guardian-signing CKA_VALUE=hex:3000
both "C_CreateObject of a data object labelled as the package's config" CKR_ACTION_PROHIBITED \
    create data CKA_LABEL=guardian:ACME/SENSOR-1/r1:config CKA_VALUE=hex:3000
both "C_SetAttributeValue(CKA_LABEL=guardian-root:ACME) on op-data" CKR_ACTION_PROHIBITED \
    setattr data:label=op-data CKA_LABEL guardian-root:ACME
both "C_SetAttributeValue(CKA_ID=guardian-identity) on op-data" CKR_ACTION_PROHIBITED \
    setattr data:label=op-data CKA_ID guardian-identity
both "control: C_CreateObject of a plain data object" allowed create data CKA_VALUE=hex:3000
both "control: C_CreateObject of a data object labelled guardian-test (only the Guardian's own labels are marks)" \
    allowed create data CKA_LABEL=guardian-test CKA_VALUE=hex:3000
both "CKG_GUARDIAN_REQ_ENROL_ROOT (the SO's) in alice's user session" CKR_USER_NOT_LOGGED_IN \
    enrol "$work/root.der" OTHER

# ---- (4) destroying the Guardian's objects --------------------------------------------------

section "(4) destroying the Guardian's objects"
before_objects=$(objects)
p11both "pkcs11-tool --delete-object --type cert --label guardian:ACME/SENSOR-1/r1:chain-1 (a package certificate)" \
    CKR_ACTION_PROHIBITED - --delete-object --type cert --label guardian:ACME/SENSOR-1/r1:chain-1
both "PyKCS11 C_DestroyObject of the production CA key" CKR_ACTION_PROHIBITED destroy "$CA"
both "PyKCS11 C_DestroyObject of the enrolled root" CKR_ACTION_PROHIBITED destroy "$ROOT"
both "PyKCS11 C_DestroyObject of the Guardian certificate" CKR_ACTION_PROHIBITED destroy "$GCERT"
both "PyKCS11 C_DestroyObject of the Guardian key" CKR_ACTION_PROHIBITED destroy "$GK"
both "PyKCS11 C_DestroyObject of the Guardian signing key" CKR_ACTION_PROHIBITED destroy "$GSK"
both "PyKCS11 C_DestroyObject of the Guardian's public key" CKR_ACTION_PROHIBITED destroy public:id=guardian-identity
both "PyKCS11 C_DestroyObject of the confidential item" CKR_ACTION_PROHIBITED destroy "$FW"
both "PyKCS11 C_DestroyObject of the integrity data item" CKR_ACTION_PROHIBITED destroy "$CFG"
both "PyKCS11 C_DestroyObject of the production CA certificate" CKR_ACTION_PROHIBITED destroy "$CACERT"
both "PyKCS11 C_DestroyObject of the package object (served by the module)" CKR_ACTION_PROHIBITED \
    destroy any:label=guardian-package:ACME/SENSOR-1/r1
same "object count after the attempts ($before_objects before)" "$before_objects" "$(objects)"
svconly "control: C_DestroyObject of op-data" allowed destroy data:label=op-data
# A device certificate made a token object is the operator's output, not a
# Guardian object (the same in-process): its ISSUE record and the stored
# certificate are the Guardian's, and stay.
svconly "a token device certificate is the operator's: relabelled" allowed setattr cert:label=dev-token-2 CKA_LABEL mine
svconly "... and deleted" allowed destroy cert:label=mine
# ---- what only the service adds ---------------------------------------------------------------

section "the service's own files: the operator reaches none of them"
for f in "$conf/backend.pin" "$conf/backend-so.pin" "$tokens/softhsm2.conf" "$state/guardian.db"; do
    expect "the operator cannot read $f" 1 "Permission denied" -- as "$op" cat "$f"
done
for d in "$state" "$tokens/tokens"; do
    expect "the operator cannot list $d" 1 "Permission denied" -- as "$op" ls "$d"
    expect "the operator cannot write into $d (to restore a copy, or delete a journal)" 1 "Permission denied" -- \
        as "$op" touch "$d/x"
done
expect "the operator cannot copy the state directory (to restore it later)" 1 "Permission denied" -- \
    as "$op" cp -a "$state" "$work/op/state-copy"
# The process that serves the operator holds the backend's PIN while it logs in: its memory is not the operator's either.
opclient "$PY" "$HERE/p11kit_client.py" hold "alice:$ALICE" 4 >hold.out 2>&1 &
holder=$!
pids+=("$holder")
for _ in $(seq 50); do grep -q STATE hold.out && break; sleep 0.1; done
remote=$(pgrep -u "$svc" -n -f p11-kit-remote)
if [ -n "$remote" ]; then
    expect "the operator cannot read the memory of its connection's p11-kit-remote (pid $remote, $svc's)" 1 \
        "Permission denied" -- as "$op" dd if="/proc/$remote/mem" bs=1 count=1 skip=4096
    expect "... nor its environment" 1 "Permission denied" -- as "$op" cat "/proc/$remote/environ"
else
    ko "no p11-kit-remote serving the held connection"
fi
wait "$holder"

section "the backend's PINs are no Guardian login (read as root from the sandbox)"
BPIN=$(head -n 1 "$conf/backend.pin") BSO=$(head -n 1 "$conf/backend-so.pin")
# login_both NAME TYPE PIN: a C_Login with PIN (user or so), through the service and in-process: CKR_PIN_INCORRECT.
login_both() {
    local so io sr ir flags=(--login --pin env:X)
    [ "$2" = so ] && flags=(--login --login-type so --so-pin env:X)
    so=$(opclient X="$3" pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" "${flags[@]}" -O 2>&1 </dev/null)
    io=$(insvc X="$3" pkcs11-tool --module "$M" --token-label "$TOKEN" "${flags[@]}" -O 2>&1 </dev/null)
    sr=$(rv "$so") ir=$(rv "$io")
    record "$1" "$ir" "$sr"
    [ "$sr" = CKR_PIN_INCORRECT ] && [ "$ir" = CKR_PIN_INCORRECT ] &&
        ok "$1: CKR_PIN_INCORRECT, in-process and through the service" || ko "$1: in-process $ir, through the service $sr"
}
login_both "C_Login(CKU_USER) with the backend's user PIN" user "$BPIN"
login_both "C_Login(CKU_USER) with alice:<the backend's user PIN>" user "alice:$BPIN"
login_both "C_Login(CKU_SO) with the backend's SO PIN" so "$BSO"
# Each failure above counts (up to 5 lock the credential): good logins reset the counts.
expect "alice's own PIN still logs in (her failures reset)" 0 "^COUNT" -- opatk count
expect "the SO's PIN still logs in (its failures reset)" 0 "^STATE 4" -- \
    opclient "$PY" "$HERE/p11kit_client.py" so-login "$SO_SECRET"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$tokens" >op/softhsm2.conf
chown "$op:$op" op/softhsm2.conf
expect "the backend's PIN does not open the backend either: the operator cannot reach its token" 1 "" -- \
    as "$op" SOFTHSM2_CONF="$work/op/softhsm2.conf" X="$BPIN" pkcs11-tool --module "$SOFTHSM" --token-label "$TOKEN" \
    --login --pin env:X -O

section "GUARDIAN_CONF, GUARDIAN_STATE_DIR, GUARDIAN_BACKEND and the clock of the operator change nothing in the service"
mkdir -p op/empty-state op/other-tokens
printf 'backend = %s\nstate_dir = %s\n' "$SOFTHSM" "$work/op/empty-state" >op/guardian.conf
printf 'directories.tokendir = %s/op/other-tokens\nobjectstore.backend = file\n' "$work" >op/other-softhsm2.conf
chown -R "$op:$op" op/empty-state op/other-tokens op/guardian.conf op/other-softhsm2.conf
chmod 0700 op/empty-state
# redirected CMD...: CMD as the operator with every variable that points an in-process module elsewhere.
redirected() {
    opclient GUARDIAN_CONF="$work/op/guardian.conf" GUARDIAN_STATE_DIR="$work/op/empty-state" \
        GUARDIAN_BACKEND="$SOFTHSM" SOFTHSM2_CONF="$work/op/other-softhsm2.conf" GUARDIAN_PIN="alice:$ALICE" "$@"
}
iss=$(issued SENSOR-1)
expect "with them set, guardianctl products still lists the service's ACME/SENSOR-1 ($iss issued)" 0 \
    "ACME +SENSOR-1 +1 +100 +$iss " -- redirected "$CTL" --module "$CLIENT" --token "$TOKEN" products
expect "... status names the service's configuration and state, not the operator's" 0 \
    "state +$state" -- redirected "$CTL" --module "$CLIENT" --token "$TOKEN" status
expect "... and a part provisioned with them set is counted in the service's state" 0 "provisioned 1 parts" -- \
    redirected "$CTL" --module "$CLIENT" --token "$TOKEN" provision --product ACME/SENSOR-1 --count 1 --first 500 \
    --out "$work/op/certs-redirected"
same "the service counts it: issued $iss -> $((iss + 1))" "$((iss + 1))" "$(issued SENSOR-1)"
same "the operator's empty state directory is still empty" "" "$(ls -A op/empty-state)"
if command -v faketime >/dev/null; then
    # In-process (bench) a clock a day back is CKR_GUARDIAN_CLOCK_BEHIND (test_boundary.sh (8));
    # the service keeps its own clock: the operator's is not the one the records use.
    expect "faketime -1d on the operator's side: provision through the service works (the service's clock)" 0 \
        "provisioned 1 parts" -- opclient GUARDIAN_PIN="alice:$ALICE" FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f -1d \
        "$CTL" --module "$CLIENT" --token "$TOKEN" provision --product ACME/SENSOR-1 --count 1 --first 600 \
        --out "$work/op/certs-faketime"
    # Read as the service's account: root's sqlite could leave root's -shm file in the state.
    t=$(insvc "$PY" -c 'import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT max(time) FROM audit").fetchone()[0])' "$state/guardian.db" 2>/dev/null)
    now=$(date +%s)
    [ -n "$t" ] && [ $((now - t)) -lt 3600 ] && [ $((t - now)) -lt 3600 ] &&
        ok "... and the newest record has the service's time ($(date -u -d "@$t" +%FT%TZ)), not a day back" ||
        ko "the newest record's time: '${t:-?}' (now $now)"
else
    echo "SKIP the operator's clock: faketime is missing"
fi

section "C_InitToken and C_InitPIN through the service"
before_objects=$(objects)
before=$(product_line SENSOR-1)
so=$(opclient OPSO="$SO_SECRET" pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --init-token --label "$TOKEN" \
    --so-pin env:OPSO 2>&1 </dev/null)
io=$(insvc OPSO="$SO_SECRET" pkcs11-tool --module "$M" --token-label "$TOKEN" --init-token --label "$TOKEN" \
    --so-pin env:OPSO 2>&1 </dev/null)
record "pkcs11-tool --init-token with the Guardian SO's PIN" "$(rv "$io")" "$(rv "$so")"
[ "$(rv "$so")" = CKR_ACTION_PROHIBITED ] && [ "$(rv "$io")" = CKR_ACTION_PROHIBITED ] &&
    ok "pkcs11-tool --init-token with the Guardian SO's PIN: CKR_ACTION_PROHIBITED, in-process and through the service" ||
    ko "C_InitToken: in-process $(rv "$io"), through the service $(rv "$so"): $so"
same "... it erased nothing: the token's objects ($before_objects)" "$before_objects" "$(objects)"
same "... nor the products" "$before" "$(product_line SENSOR-1)"
same "... the token device certificate is there" 1 "$(found cert:label=dev-token-1)"
expect "... and the SO's PIN is unchanged" 0 "^STATE 4" -- opclient "$PY" "$HERE/p11kit_client.py" so-login "$SO_SECRET"
so=$(opclient X=bob:secret-1234 pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --init-pin --new-pin env:X 2>&1 </dev/null)
io=$(insvc X=bob:secret-1234 pkcs11-tool --module "$M" --token-label "$TOKEN" --init-pin --new-pin env:X 2>&1 </dev/null)
record "pkcs11-tool --init-pin (bob:…) without an SO login" "$(rv "$io")" "$(rv "$so")"
[ "$(rv "$so")" = CKR_USER_NOT_LOGGED_IN ] && [ "$(rv "$io")" = CKR_USER_NOT_LOGGED_IN ] &&
    ok "pkcs11-tool --init-pin (C_InitPIN) without an SO login: CKR_USER_NOT_LOGGED_IN, in-process and through the service" ||
    ko "C_InitPIN without a login: in-process $(rv "$io"), through the service $(rv "$so"): $so"
both "C_InitPIN (bob:…) in alice's user session" CKR_USER_NOT_LOGGED_IN initpin bob:secret-1234
login_bob=$(opclient X=bob:secret-1234 pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --login --pin env:X -O 2>&1)
[ "$(rv "$login_bob")" = CKR_PIN_INCORRECT ] && ok "... no operator bob was made (his login: CKR_PIN_INCORRECT)" ||
    ko "bob's login: $(rv "$login_bob")"

# ---- certificates read through the client ----------------------------------------------

section "certificates read through p11-kit-client.so: pkcs11-tool, the libp11 engine, openssl verify"
openssl x509 -inform DER -in op/token-cert.der -out token-cert.pem 2>/dev/null
if opclient pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --read-object --type cert --label dev-token-1 \
    -o "$work/op/token-read.der" >/dev/null 2>&1 && cmp -s op/token-read.der op/token-cert.der; then
    ok "pkcs11-tool --read-object --type cert --label dev-token-1 (no login): the certificate the request returned"
else
    ko "pkcs11-tool --read-object of the token device certificate"
fi
expect "openssl verify of the token device certificate against the OEM chain (ACME root, production CA)" 0 ": OK$" -- \
    openssl verify -CAfile root.pem -untrusted ca.pem token-cert.pem
expect "... it is SN-TOKEN-1's" 0 "SN-TOKEN-1" -- openssl x509 -in token-cert.pem -noout -subject
openssl x509 -in "$conf/guardian.pem" -outform DER -out guardian-cert.der 2>/dev/null
if opclient pkcs11-tool --module "$CLIENT" --token-label "$TOKEN" --read-object --type cert --id "$GKID" \
    -o "$work/op/guardian-read.der" >/dev/null 2>&1 && cmp -s op/guardian-read.der guardian-cert.der; then
    ok "pkcs11-tool --read-object --type cert --id guardian-identity: the Guardian certificate of guardian.pem"
else
    ko "pkcs11-tool --read-object of the Guardian certificate"
fi
# Why no openssl command loads a certificate through the engine (engine_cert.py says more):
expect "openssl storeutl -engine pkcs11 <pkcs11: URI>: the engine registers no pkcs11: store loader" 1 \
    "unregistered scheme.*scheme=pkcs11" -- opssl storeutl -engine pkcs11 -certs "$(uri dev-token-1 cert)"
expect "the libp11 engine loads the token device certificate from '$(uri dev-token-1 cert)' (LOAD_CERT_CTRL)" 0 \
    "^loaded" -- opclient OPENSSL_CONF="$work/op/engine.cnf" "$PY" "$HERE/engine_cert.py" "$(uri dev-token-1 cert)" \
    "$work/op/engine-token.der"
cmp -s op/engine-token.der op/token-cert.der && ok "... the same certificate" || ko "the engine's certificate differs"
expect "... and the Guardian certificate from '$(uri guardian-identity cert)'" 0 "^loaded" -- \
    opclient OPENSSL_CONF="$work/op/engine.cnf" "$PY" "$HERE/engine_cert.py" "$(uri guardian-identity cert)" \
    "$work/op/engine-guardian.der"
cmp -s op/engine-guardian.der guardian-cert.der && ok "... the same certificate" || ko "the engine's Guardian certificate differs"
n=0
for f in op/certs/*.pem; do openssl verify -CAfile root.pem -untrusted ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1)); done
[ "$n" = 3 ] && ok "the 3 certificates guardianctl provision wrote through the service verify against the OEM chain" ||
    ko "$n of 3 provisioned certificates verify"

# ---- after the attacks -------------------------------------------------------------------

section "(10) after the attacks: production, the report"
expect "the Guardian still provisions through the service" 0 "provisioned 1 parts" -- \
    opctl provision --product ACME/SENSOR-1 --count 1 --first 900 --out "$work/op/certs-after"
expect "the operator exports a report through the service" 0 "exported" -- opctl audit export --out "$work/op/report-2.txt"
expect "the OEM's verify-report accepts it" 0 "^OK$" -- "$W" verify-report op/report-2.txt --guardian "$conf/guardian.pem" \
    --ca-chain ca.pem --root root.pem --package s1r1.gpk
expect "... and it extends the first (--previous)" 0 "this report extends it" -- "$W" verify-report op/report-2.txt \
    --guardian "$conf/guardian.pem" --ca-chain ca.pem --root root.pem --previous op/report-1.txt

printf '\n# the codes: in-process | through the service\n'
awk -F'\t' '{printf "    %-100s %-32s %s\n", $1, $2, $3}' codes.tsv
awk -F'\t' '$1 ~ /^control/ {c++; next} $1 ~ /raw RPC client/ {r++; next} $3 ~ /not sent/ {n++; next} {s++}
    END {printf "    %d calls with the same code in-process and through p11-kit-client.so; %d that p11-kit-client.so does not send (CKR_MECHANISM_INVALID), %d sent by the raw RPC client instead; %d controls\n", s, n, r, c}' codes.tsv
finish
