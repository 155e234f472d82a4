#!/usr/bin/env bash
# test_rsa_identity.sh MODULE GUARDIANCTL GUARDIAN_WRAP — a Guardian with RSA
# identity keys (what a token without EC gets: opencryptoki), forced on
# SoftHSM with `init --key-type rsa2048` so that it runs everywhere: the
# certificates S and A (sha256WithRSAEncryption, A for keyEncipherment), the
# CSR, a refused change of key type; the CA request flow (format version 2:
# the binding signed by the RSA signing key, certify-ca, import, provision,
# openssl verify); a version-1 package for the RSA Guardian takes the
# RSA-OAEP-SHA256 transport (.2.3), and SoftHSM 2.6 (OAEP with SHA-1 only)
# refuses it with nothing created; the audit report signed by the RSA key and
# verify-report OK, a flipped signature byte refused.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/rsa-identity-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" rsaid
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=rsaid
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

expect_rc "init: bad --key-type" 2 "--key-type is p256, rsa2048 or rsa3072, not 'rsa1024'" -- \
    "$CTL" init --key-type rsa1024 --out x.pem
expect "init --key-type rsa2048" 0 "generated the Guardian key pairs \(RSA 2048, sensitive, never extractable\).*agreement \(unwrap only\)" -- \
    "$CTL" init --key-type rsa2048 --out guardian.pem
csplit -s -z -f cert guardian.pem '/BEGIN CERTIFICATE/' '{*}'
expect "A is issued by S (openssl verify)" 0 "cert00: OK" -- openssl verify -CAfile cert01 cert00
expect "S: sha256WithRSAEncryption, RSA 2048" 0 "sha256WithRSAEncryption.*Public-Key: \(2048 bit\)" -- \
    sh -c "openssl x509 -in cert01 -noout -text | tr '\n' ' '"
expect "A: RSA, keyEncipherment (critical), signed sha256WithRSAEncryption" 0 "sha256WithRSAEncryption.*rsaEncryption.*Key Usage: critical +Key Encipherment" -- \
    sh -c "openssl x509 -in cert00 -noout -text | tr '\n' ' '"
expect "init again: idempotent" 0 "already initialized" -- "$CTL" init
expect "status: A is for RSA key transport" 0 "certificate \(RSA key transport: the target of OEM packages\)" -- "$CTL" status
expect "init --key-type p256 on an RSA Guardian refused" 1 "type of the Guardian's existing keys" -- \
    "$CTL" init --key-type p256
expect "init --csr: the signing key's CSR" 0 "wrote s.csr" -- "$CTL" init --csr s.csr
expect "the CSR verifies (signed in the token with RSA)" 0 "verify OK|self-signature verify OK" -- \
    openssl req -in s.csr -verify -noout
expect "the CSR's signature algorithm" 0 "sha256WithRSAEncryption" -- openssl req -in s.csr -noout -text

# ---- the keys' attributes, and the policy: no standard call may use them ------
# The dishonest operator holds the user PIN: the RSA agreement key would be a
# decryption or unwrap oracle for any OAEP ciphertext (a package's KEK), the
# signing key would sign a forged report.  Both are refused through the module.
pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label rsaid --login --pin 1234 -O --type privkey >keys.txt 2>&1
[ "$(grep -A2 'label: *guardian-identity' keys.txt | grep -c 'Usage: *unwrap$')" = 1 ] &&
    ok "the agreement key's only usage is unwrap" || ko "the agreement key's usage: $(cat keys.txt)"
[ "$(grep -A2 'label: *guardian-signing' keys.txt | grep -c 'Usage: *sign$')" = 1 ] &&
    ok "the signing key's only usage is sign" || ko "the signing key's usage: $(cat keys.txt)"
[ "$(grep -c 'sensitive, always sensitive, never extractable' keys.txt)" = 2 ] &&
    ok "both private keys sensitive and never extractable" || ko "$(cat keys.txt)"
# pkcs11-tool is not built with ASan: with the ASan-built module (run-all.sh's
# second build) the runtime is preloaded into it, as test_boundary.sh does.
asan_rt=$(ldd "$M" 2>/dev/null | awk '/libasan/ {print $3; exit}')
P=(pkcs11-tool --module "$M" --token-label rsaid --login --pin 1234)
[ -z "$asan_rt" ] || P=(env LD_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 "${P[@]}")
echo hello >in.txt
expect "policy: C_SignInit with the RSA signing key refused" 1 "policy: C_SignInit refused: .* Guardian identity key" -- \
    "${P[@]}" --sign --id 677561726469616e2d7369676e696e67 -m RSA-PKCS --input-file in.txt --output-file s.bin
openssl x509 -in cert00 -pubkey -noout >a.pub
head -c 32 /dev/urandom >k.bin
openssl pkeyutl -encrypt -pubin -inkey a.pub -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 \
    -pkeyopt rsa_mgf1_md:sha256 -in k.bin -out enc.bin
expect "policy: C_DecryptInit with the RSA agreement key refused" 1 "policy: C_DecryptInit refused: .* Guardian identity key" -- \
    "${P[@]}" --decrypt --id 677561726469616e2d6964656e74697479 -m RSA-PKCS-OAEP --hash-algorithm SHA256 \
    --mgf MGF1-SHA256 --input-file enc.bin
expect "policy: C_UnwrapKey with the RSA agreement key refused" 1 "policy: C_UnwrapKey refused: .* Guardian identity key" -- \
    "${P[@]}" --unwrap --id 677561726469616e2d6964656e74697479 -m RSA-PKCS-OAEP --hash-algorithm SHA256 \
    --mgf MGF1-SHA256 --input-file enc.bin --key-type AES:32 --extractable
"${P[@]}" --keypairgen --key-type rsa:2048 --id 01 --label control >/dev/null 2>&1 || ko "keypairgen control"
expect "control: an RSA key of the caller's signs through the module" 0 "Using signature algorithm RSA-PKCS" -- \
    "${P[@]}" --sign --id 01 -m RSA-PKCS --input-file in.txt --output-file s2.bin

# ---- the CA request flow (version 2) -----------------------------------------
oem_pki
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"
expect "ca-request (RSA CA key, binding signed by the RSA signing key)" 0 "wrote sensor.csr" -- \
    "$CTL" ca-request --product ACME/SENSOR-1 --subject "/O=ACME/CN=ACME SENSOR-1 CA" --key-type rsa2048 \
    --out sensor.csr
cw=(certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id SENSOR-1 --ca-key root.key --ca-cert root.pem)
expect "certify-ca accepts the RSA Guardian's binding" 0 "wrote pca.pem" -- "$W" "${cw[@]}" --csr sensor.csr --out pca.pem
python3 - sensor.csr tampered.csr <<'PY'
import base64, re, sys
t = open(sys.argv[1]).read()
m = re.search(r"-----BEGIN GUARDIAN CA KEY BINDING-----\n(.*?)-----END", t, re.S)
der = bytearray(base64.b64decode(m.group(1)))
der[-5] ^= 0x01             # inside the RSA signature
b = base64.encodebytes(bytes(der)).decode()
open(sys.argv[2], "w").write(t[:m.start(1)] + b + t[m.end(1):])
PY
expect "certify-ca: a flipped byte of the RSA binding signature refused" 1 "refused: .*signature does not verify" -- \
    "$W" "${cw[@]}" --csr tampered.csr --out t.pem
pw=(create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-chain root.pem
    --oem-id ACME --not-after +30)
expect "create --ca-request" 0 "wrote p.gpk" -- \
    "$W" "${pw[@]}" --ca-cert pca.pem --product-id SENSOR-1 --release 1 --units 5 --ca-request sensor.csr --out p.gpk
expect "inspect: no transport" 0 "transport +none" -- "$W" inspect p.gpk
expect "import (an RSA Guardian)" 0 "imported|SENSOR-1" -- "$CTL" import p.gpk
expect "provision 3 parts" 0 "provisioned 3 parts" -- "$CTL" provision --product ACME/SENSOR-1 --count 3 --out run
n=0
for f in run/*.pem; do
    openssl verify -CAfile root.pem -untrusted pca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
[ "$n" = 3 ] && ok "openssl verify: 3 device certificates up to the OEM root" || ko "verified $n of 3"

# ---- version 1 for an RSA Guardian: RSA-OAEP-SHA256 ---------------------------
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rca.key 2>/dev/null
openssl req -new -key rca.key -subj "/CN=ACME RSA CA" -out rca.csr
openssl x509 -req -in rca.csr -CA root.pem -CAkey root.key -days 365 -out rca.pem \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n') 2>/dev/null
head -c 100 /dev/urandom >secret.bin
# SoftHSM 2.6 does RSA-OAEP with SHA-1 only, so this Guardian measured that it
# cannot import by RSA-OAEP-SHA256 and its certificate states only "none":
# guardian-wrap refuses to make a package with a secret for it, unless told.
expect_rc "create --ca-key for the RSA Guardian: A offers no transport for a secret" 1 \
    "offers no key transport this guardian-wrap makes \(it offers: none" -- \
    "$W" "${pw[@]}" --ca-cert rca.pem --ca-key rca.key --product-id RSA-1 --release 1 --units 5 \
    --secret-data fw-key=secret.bin --out v1.gpk
expect "create --ca-key for the RSA Guardian, --kdf rsa-oaep-sha256 --kdf-unlisted" 0 "wrote v1.gpk" -- \
    "$W" "${pw[@]}" --ca-cert rca.pem --ca-key rca.key --product-id RSA-1 --release 1 --units 5 \
    --secret-data fw-key=secret.bin --kdf rsa-oaep-sha256 --kdf-unlisted --out v1.gpk
expect "inspect: the RSA-OAEP transport" 0 "transport +RSA-OAEP-SHA256" -- "$W" inspect v1.gpk
expect_rc "create: an ECDH --kdf for an RSA Guardian refused" 1 "to a Guardian with an RSA key" -- \
    "$W" "${pw[@]}" --ca-cert rca.pem --ca-key rca.key --product-id RSA-1 --release 1 --units 5 --kdf x963-sha256 \
    --out k.gpk
# The Guardian refuses the scheme its token was measured not to run, before any
# key operation, nothing made.
count_objects() {
    pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label rsaid --login --pin 1234 --list-objects 2>/dev/null |
        grep -c '^[A-Za-z].*Object;'
}
before=$(count_objects)
expect "import: SoftHSM cannot unwrap OAEP-SHA256, refused" 1 "CKR_GUARDIAN_TRANSPORT_UNSUPPORTED|measured not to run" -- \
    "$CTL" import v1.gpk
after=$(count_objects)
[ "$before" = "$after" ] && [ "$before" -gt 0 ] && ok "nothing left in the token ($after objects before and after)" ||
    ko "objects before $before, after $after"
if "$CTL" status 2>&1 | grep -q 'RSA-1'; then ko "ACME/RSA-1 is installed"; else ok "nothing installed for ACME/RSA-1"; fi
# An ECDH package whose target is this RSA Guardian (made for an EC key, the
# target rewritten, signed again by the OEM signer): refused before any key
# operation, since the scheme is not for the Guardian's key type.
ec_key eg.key && openssl req -new -x509 -key eg.key -subj /CN=ec-guardian -days 2 -out eg.pem 2>/dev/null
"$W" "${pw[@]/guardian.pem/eg.pem}" --ca-cert rca.pem --ca-key rca.key --product-id RSA-2 --release 1 --units 5 \
    --out ec.gpk >/dev/null || ko "create for an EC Guardian"
openssl cms -verify -inform DER -in ec.gpk -CAfile root.pem -binary -out content.der 2>/dev/null || ko "cms -verify"
python3 - eg.pem cert00 content.der <<'PY'
import hashlib, subprocess, sys
der = lambda f: subprocess.run(["openssl", "x509", "-in", f, "-outform", "DER"], capture_output=True).stdout
old, new = hashlib.sha256(der(sys.argv[1])).digest(), hashlib.sha256(der(sys.argv[2])).digest()
d = open(sys.argv[3], "rb").read()
assert d.count(old) == 1
open("content-rsa-target.der", "wb").write(d.replace(old, new))
PY
for _ in $(seq 64); do
    openssl cms -sign -binary -nodetach -nosmimecap -cades -md sha256 -outform DER \
        -econtent_type 2.25.62758544141009244537205961397770264239.1 -in content-rsa-target.der \
        -signer signer.pem -inkey signer.key -out ecdh-for-rsa.gpk 2>/dev/null
    "$W" inspect ecdh-for-rsa.gpk --oem-root root.pem 2>/dev/null | grep -q '^container *exactly as signed' && break
done
before=$(count_objects)
expect "import: an ECDH package for the RSA Guardian refused" 1 "uses a key transport for an EC Guardian key, this Guardian's is RSA" -- \
    "$CTL" import ecdh-for-rsa.gpk
[ "$(count_objects)" = "$before" ] && ok "nothing made by the refused ECDH package" || ko "objects changed"

# ---- the audit report, signed by the RSA signing key -------------------------
expect "audit export" 0 "exported" -- "$CTL" audit export --out report.txt
V=(--guardian guardian.pem --ca-chain pca.pem --root root.pem)
expect "verify-report OK (RSA Guardian)" 0 "^OK$" -- "$W" verify-report report.txt "${V[@]}" --package p.gpk
python3 - report.txt bad.txt <<'PY'
import sys
t = open(sys.argv[1]).read().split("\n")
for i, l in enumerate(t):
    if l.startswith("signature "):
        v = l.split(" ", 1)[1]
        c = "A" if v[10] != "A" else "B"
        t[i] = "signature " + v[:10] + c + v[11:]
open(sys.argv[2], "w").write("\n".join(t))
PY
expect "verify-report: a flipped signature character refused" 1 "signature" -- \
    "$W" verify-report bad.txt "${V[@]}" --package p.gpk
finish
