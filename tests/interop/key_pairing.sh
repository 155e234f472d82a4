#!/bin/bash
#
# key_pairing.sh <guardian-pkcs11.so> — clients that pair a private key with
# its certificate by CKA_ID pair the production CA key an import made with
# the production CA certificate, and with nothing else (issue 11, item 7):
#   - NSS (certutil, the module added with modutil to a fresh database):
#     `certutil -L` marks the production CA certificate as a user
#     certificate ("u": NSS found its private key) and the OEM root as not
#     one (before, the root carried the key's CKA_ID and was marked "u");
#   - Java's PKCS11 keystore (keytool -list -storetype PKCS11, SunPKCS11
#     configured with the module): the key's PrivateKeyEntry has the
#     production CA certificate first, then the root; no entry pairs the key
#     with the root (before: an entry "…:chain-1" whose certificate was the
#     root); the package has an extra key, whose CKA_ID is not the CA
#     certificate's (before it was: two keys for one certificate);
# and pairing opens nothing: a certificate request signed with the paired
# key (keytool -certreq) fails, with the module's refusal of C_SignInit
# logged (module/policy.c).  Without keytool (default-jdk-headless, in
# tools/debian-packages) the Java checks FAIL, naming the package.
#
# guardianctl and guardian-wrap: $GUARDIANCTL and $GUARDIAN_WRAP (ctest sets
# them), else build/tools/ next to the module.

# The OEM PKI helpers (oem_pki) come from tests/lib/testlib.sh; lib.sh is
# sourced after it, so lib.sh's results and finish are the ones in force.
# shellcheck source-path=SCRIPTDIR source=../lib/testlib.sh
. "$(dirname "$0")/../lib/testlib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# Before interop_init, which moves into $WORK: relative paths as given.
CTL=$(readlink -f "${GUARDIANCTL:-$(dirname "${1:-.}")/tools/guardianctl}" || true)
W=$(readlink -f "${GUARDIAN_WRAP:-$(dirname "${1:-.}")/tools/guardian-wrap}" || true)
interop_init key_pairing "$@"

M=$GUARDIAN_MODULE
LABEL=pairing
PREFIX="guardian:ACME/PAIR-1/r1"
CA_NICK="$LABEL:$PREFIX:production-ca-cert0"
ROOT_NICK="$LABEL:guardian-root:ACME"
ROOT_CHAIN_NICK="$LABEL:$PREFIX:chain-1"

for f in "$CTL" "$W"; do
    if [ ! -x "$f" ]; then
        fail "prerequisites" "${f:-guardianctl or guardian-wrap} is missing"
        finish
    fi
done

# ---- a Guardian with one imported product -----------------------------------------

make_token "$LABEL"
export GUARDIAN_TOKEN=$LABEL GUARDIAN_MODULE=$M GUARDIAN_PIN=$USER_PIN GUARDIAN_SO_PIN=$SO_PIN
must "OEM PKI (root, package signer, production CA)" oem_pki
must "guardianctl init" "$CTL" init --out guardian.pem
must "guardianctl enroll-oem" "$CTL" enroll-oem root.pem --oem-id ACME --yes
must "an extra key" ec_key extra.key
must "guardian-wrap create (with an extra key)" "$W" create --guardian-cert guardian.pem --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME \
    --product-id PAIR-1 --release 1 --units 5 --not-after +10 --extra-key attest=extra.key --out pair.gpk
must "guardianctl import" "$CTL" import pair.gpk
printf '%s\n' "$USER_PIN" >pin.txt

# ---- NSS -------------------------------------------------------------------------

mkdir db
must "certutil -N" certutil -N -d sql:db --empty-password
must "modutil -add guardian" modutil -add guardian -libfile "$M" -dbdir sql:db -force
must "certutil -L -h $LABEL" sh -c "certutil -L -h '$LABEL' -d sql:db -f pin.txt >nss-L.txt"
# trust_of NICK: the trust column certutil -L prints for NICK.
trust_of() { awk -v n="$1" 'index($0, n) == 1 { print $NF }' nss-L.txt; }
check_eq "NSS: the production CA certificate has its private key (trust u,u,u)" "u,u,u" "$(trust_of "$CA_NICK")"
# The root is two objects with the same DER (the enrolled root and the
# package's chain-1): NSS lists it once, under either label.
root_trust=$(trust_of "$ROOT_NICK")$(trust_of "$ROOT_CHAIN_NICK")
if [ -n "$root_trust" ] && [ "${root_trust#*u}" = "$root_trust" ]; then
    pass "NSS: the OEM root has no private key (trust '$root_trust')"
else
    fail "NSS: the OEM root has no private key" "trust '${root_trust:-<not listed>}' of the root" nss-L.txt
fi
# Only the production CA certificate and the Guardian's own two have a key.
awk -v l="$LABEL:" 'index($0, l) == 1 && $NF ~ /u/ { print $1 }' nss-L.txt | sort >nss-keyed.txt
printf '%s\n' "$CA_NICK" "$LABEL:guardian-identity" "$LABEL:guardian-signing" | sort >nss-keyed.expected
check_same "NSS: the certificates with a private key are the production CA's and the Guardian's" \
    nss-keyed.expected nss-keyed.txt
must "certutil -K -h $LABEL" sh -c "certutil -K -h '$LABEL' -d sql:db -f pin.txt >nss-K.txt"
check_grep "NSS: certutil -K lists the production CA key" " $PREFIX:production-ca\$" nss-K.txt
# The production CA certificate's CKA_ID (pkcs11-tool, a public object) is
# the CKA_ID of one private key only, the CA key's: not the extra key's too.
must "pkcs11-tool --list-objects --type cert" sh -c \
    "pkcs11-tool --module '$M' --token-label '$LABEL' --list-objects --type cert >certs.txt"
ca_id=$(awk -v l="$PREFIX:production-ca-cert0" '$1 == "label:" { on = ($2 == l) } on && $1 == "ID:" { print $2; exit }' certs.txt)
awk -v id="$ca_id" '{ for (i = 1; i < NF; i++) if ($i == id) print $NF }' nss-K.txt >nss-ca-id-keys.txt
printf '%s\n' "$PREFIX:production-ca" >nss-ca-id-keys.expected
if [ -n "$ca_id" ]; then
    check_same "NSS: the one private key with the CA certificate's CKA_ID ($ca_id) is the CA key" \
        nss-ca-id-keys.expected nss-ca-id-keys.txt
else
    fail "NSS: the CA certificate's CKA_ID" "pkcs11-tool does not show $PREFIX:production-ca-cert0" certs.txt
fi

# ---- Java's PKCS11 keystore ------------------------------------------------------

if ! command -v keytool >/dev/null 2>&1; then
    fail "Java PKCS11 keystore" "keytool is not installed (apt-get install default-jdk-headless)"
    finish
fi
slot=$(pkcs11-tool --module "$M" --list-slots 2>/dev/null |
    awk -v l="$LABEL" '/^Slot / { s = $3; gsub(/[():]/, "", s) } $1 == "token" && $2 == "label" && $4 == l { print s; exit }')
if [ -z "$slot" ]; then
    fail "Java: the slot of token $LABEL" "pkcs11-tool --list-slots does not show it"
    finish
fi
printf 'name = Guardian\nlibrary = %s\nslot = %d\n' "$M" "$slot" >java.cfg
KEYTOOL=(keytool -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 -providerArg java.cfg
    -storepass "$USER_PIN")
must "keytool -list -v" sh -c '"$@" >java-list.txt 2>&1' sh "${KEYTOOL[@]}" -list -v
# The entry of the CA key: its type, then its chain's owners in order.
awk -v a="$PREFIX:production-ca-cert0" '
    /^Alias name: / { on = (substr($0, 13) == a) }
    on && /^Entry type: / { print }
    on && /^Owner: / { print }' java-list.txt >java-ca.txt
printf 'Entry type: PrivateKeyEntry\nOwner: CN=ACME Production CA\nOwner: CN=ACME Root\n' >java-ca.expected
check_same "Java: the CA key's entry is a PrivateKeyEntry with the production CA certificate, then the root" \
    java-ca.expected java-ca.txt
# No PrivateKeyEntry whose first certificate is the root.
awk '/^Alias name: / { alias = substr($0, 13); pk = 0; first = 1 }
     /^Entry type: PrivateKeyEntry/ { pk = 1 }
     pk && first && /^Owner: / { first = 0; if ($0 == "Owner: CN=ACME Root") print alias }' java-list.txt >java-root-keys.txt
if [ ! -s java-root-keys.txt ] && grep -q '^Alias name: ' java-list.txt; then
    pass "Java: no private key is paired with the OEM root"
else
    fail "Java: no private key is paired with the OEM root" "paired: $(tr '\n' ' ' <java-root-keys.txt)" java-list.txt
fi

# Pairing opens nothing: Java cannot sign a request with the CA key.
name="Java: keytool -certreq with the paired CA key is refused by the module"
log=$(logfile "$name")
rc=0
"${KEYTOOL[@]}" -certreq -alias "$PREFIX:production-ca-cert0" -file ca.csr >"$log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] && [ ! -s ca.csr ] &&
    grep -q 'policy: C_SignInit refused: .* is a production CA key of an imported package' "$log"; then
    pass "$name"
else
    fail "$name" "exit status $rc, or no refusal of C_SignInit logged" "$log"
fi

finish
