#!/usr/bin/env bash
# test_ca_request.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the production CA key
# made inside the Guardian, with the CLIs only: `guardianctl ca-request` (the
# key pair in the token, its CSR, the Guardian's binding), `guardian-wrap
# certify-ca` (checks, then the OEM issues the CA certificate; a tampered
# binding, another Guardian, another product refused), `guardian-wrap create
# --ca-request` (format version 2: no key, no transport), import, provision
# and `openssl verify` of the device certificates up to the OEM root; a
# certificate for another key refused at create and at import; a second
# package for the same key refused (replay); the P-384 and RSA variants.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/ca-request-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" cakey
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=cakey
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki
expect_rc "ca-request --help, no module" 0 "^usage: guardianctl .* ca-request --product" -- \
    env GUARDIAN_MODULE=/nonexistent "$CTL" ca-request --help
expect_rc "ca-request: bad key type" 2 "--key-type must be p256, p384 or rsa2048" -- \
    "$CTL" ca-request --product ACME/S --subject /CN=x --key-type ed25519 --out x.csr
expect_rc "ca-request: bad subject" 2 "--subject must look like /O=ACME/CN=NAME" -- \
    "$CTL" ca-request --product ACME/S --subject CN=x --out x.csr
expect "ca-request before init" 1 "no identity yet: run 'guardianctl init' first" -- \
    "$CTL" ca-request --product ACME/SENSOR-1 --subject "/O=ACME/CN=ACME SENSOR-1 CA" --out early.csr
"$CTL" init --out guardian.pem >/dev/null 2>&1 || { ko "guardianctl init"; finish; exit; }
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"

expect "ca-request" 0 "wrote sensor.csr: its CSR and the Guardian's binding" -- \
    "$CTL" ca-request --product ACME/SENSOR-1 --subject "/O=ACME/CN=ACME SENSOR-1 CA" --out sensor.csr
expect "the CSR verifies with openssl (signed in the token)" 0 "verify OK|self-signature verify OK" -- \
    openssl req -in sensor.csr -verify -noout
expect "the CSR's subject" 0 "O ?= ?ACME, CN ?= ?ACME SENSOR-1 CA" -- openssl req -in sensor.csr -noout -subject
grep -q "BEGIN GUARDIAN CA KEY BINDING" sensor.csr && ok "the binding block follows the CSR" || ko "no binding block"
expect "ca-request: existing file kept" 1 "sensor.csr exists" -- \
    "$CTL" ca-request --product ACME/SENSOR-1 --subject /CN=x --out sensor.csr

cw=(certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id SENSOR-1 --ca-key root.key --ca-cert root.pem)
expect "certify-ca" 0 "wrote pca.pem: production CA certificate for ACME/SENSOR-1" -- \
    "$W" "${cw[@]}" --csr sensor.csr --days 365 --out pca.pem
expect "pca.pem chains to the OEM root" 0 "pca.pem: OK" -- openssl verify -CAfile root.pem pca.pem
expect "pca.pem: CA, pathlen 0" 0 "CA:TRUE, pathlen:0" -- openssl x509 -in pca.pem -noout -ext basicConstraints
expect "pca.pem: keyCertSign, cRLSign, critical" 0 "critical.*Certificate Sign, CRL Sign" -- \
    sh -c "openssl x509 -in pca.pem -noout -ext keyUsage | tr '\n' ' '"
expect "pca.pem: SKI and AKI" 0 "Authority Key Identifier.*Subject Key Identifier|Subject Key Identifier.*Authority Key Identifier" -- \
    sh -c "openssl x509 -in pca.pem -noout -text | tr '\n' ' '"

# Refusals of certify-ca: a tampered binding, the binding with another CSR,
# another Guardian, another product; nothing written.
python3 - sensor.csr tampered.csr <<'PY'
import base64, re, sys
t = open(sys.argv[1]).read()
m = re.search(r"-----BEGIN GUARDIAN CA KEY BINDING-----\n(.*?)-----END", t, re.S)
der = bytearray(base64.b64decode(m.group(1)))
i = der.find(b"SENSOR-1")
der[i + 7] ^= 0x01          # SENSOR-0: the product ID under the Guardian's signature
b = base64.encodebytes(bytes(der)).decode()
open(sys.argv[2], "w").write(t[:m.start(1)] + b + t[m.end(1):])
PY
expect "certify-ca: tampered binding refused" 1 "refused: .*signature does not verify" -- \
    "$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id SENSOR-0 --ca-key root.key \
    --ca-cert root.pem --csr tampered.csr --out t.pem
"$CTL" ca-request --product ACME/OTHER --subject "/O=ACME/CN=OTHER CA" --out other.csr >/dev/null 2>&1 ||
    ko "ca-request OTHER"
{ sed -n '/BEGIN CERTIFICATE REQUEST/,/END CERTIFICATE REQUEST/p' other.csr
  sed -n '/BEGIN GUARDIAN CA KEY BINDING/,/END GUARDIAN CA KEY BINDING/p' sensor.csr; } >swapped.csr
expect "certify-ca: a binding for another CSR refused" 1 "refused: the CA key binding was made for another CSR" -- \
    "$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id OTHER --ca-key root.key \
    --ca-cert root.pem --csr swapped.csr --out s.pem
expect "certify-ca: another product refused" 1 "refused: the key was made for ACME/OTHER, not ACME/SENSOR-1" -- \
    "$W" "${cw[@]}" --csr other.csr --out o.pem
ec_key g2.key && openssl req -new -x509 -key g2.key -subj /CN=g2 -days 30 -out g2.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,digitalSignature
ec_key a2.key && openssl req -new -key a2.key -subj /CN=a2 -out a2.csr &&
    openssl x509 -req -in a2.csr -CA g2.pem -CAkey g2.key -days 30 -extfile <(echo keyUsage=critical,keyAgreement) -out a2.pem 2>/dev/null && cat a2.pem g2.pem >other-guardian.pem
expect "certify-ca: another Guardian's certificates refused" 1 "refused: .*signature does not verify" -- \
    "$W" certify-ca --guardian-cert other-guardian.pem --oem-id ACME --product-id SENSOR-1 --ca-key root.key \
    --ca-cert root.pem --csr sensor.csr --out g.pem
[ ! -e t.pem ] && [ ! -e s.pem ] && [ ! -e o.pem ] && [ ! -e g.pem ] && ok "nothing written when refused" ||
    ko "a refused certify-ca wrote a file"
expect_rc "certify-ca: missing options" 2 "needs --csr" -- "$W" certify-ca --csr sensor.csr

# The package: no CA key; format version 2; no transport without secrets.
pw=(create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-cert pca.pem
    --ca-chain root.pem --oem-id ACME --product-id SENSOR-1 --release 1 --units 5 --not-after +30)
expect_rc "create: --ca-key and --ca-request both" 2 "give --ca-key .* or --ca-request .*not both" -- \
    "$W" "${pw[@]}" --ca-key ca.key --ca-request sensor.csr --out both.gpk
expect "create: a certificate for another key refused" 1 "ca.pem is not a certificate for the key of sensor.csr" -- \
    "$W" "${pw[@]/pca.pem/ca.pem}" --ca-request sensor.csr --out wrongkey.gpk
expect "create --ca-request" 0 "wrote p.gpk" -- "$W" "${pw[@]}" --ca-request sensor.csr --data config=/etc/hostname --out p.gpk
expect "inspect: no key travels" 0 "CA key +EC.*made in the Guardian" -- "$W" inspect p.gpk --oem-root root.pem
expect "inspect: no transport" 0 "transport +none \(no secret travels\)" -- "$W" inspect p.gpk

expect "import" 0 "imported|SENSOR-1" -- "$CTL" import p.gpk
expect "provision 3 parts" 0 "provisioned 3 parts" -- "$CTL" provision --product ACME/SENSOR-1 --count 3 --out run
cat pca.pem root.pem >chain.pem
n=0
for f in run/*.pem; do
    openssl verify -CAfile root.pem -untrusted pca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
[ "$n" = 3 ] && ok "openssl verify: 3 device certificates up to the OEM root" || ko "verified $n of 3"
expect "a device certificate's issuer is the Guardian-made CA" 0 "CN ?= ?ACME SENSOR-1 CA" -- \
    sh -c "openssl x509 -in \$(ls run/*.pem | head -1) -noout -issuer"
# A later release with the same key: its package ID is the key's, a replay.
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-cert pca.pem \
    --ca-chain root.pem --oem-id ACME --product-id SENSOR-1 --release 2 --units 5 --not-after +30 \
    --ca-request sensor.csr --out p2.gpk >/dev/null || ko "create release 2"
expect "release 2 with the same key refused (replay)" 1 "CKR_GUARDIAN_PACKAGE_REPLAYED|already imported" -- \
    "$CTL" import p2.gpk

# A package whose production CA certificate is for another key of the
# Guardian's (made with --ca-request of OTHER but carrying SENSOR-1's key ID):
# create refuses it (above); a hand-made one is refused by the module — the
# integration test (integration.ca_key) builds it.  Here: a key made for
# another product.
"$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id OTHER --ca-key root.key --ca-cert root.pem \
    --csr other.csr --out other-ca.pem >/dev/null || ko "certify OTHER"
# Version 2 with a secret: the key stays, the confidential item travels by ECDH.
head -c 32 /dev/urandom >secret.bin
expect "create --ca-request with a secret item" 0 "wrote sec.gpk" -- \
    "$W" "${pw[@]/SENSOR-1/OTHER}" --ca-cert other-ca.pem --ca-request other.csr --secret-data k=secret.bin --out sec.gpk
expect "inspect: a transport for the secret" 0 "transport +ECDH" -- "$W" inspect sec.gpk
expect "import with a secret (ECDH) and a Guardian-made key" 0 "" -- "$CTL" import sec.gpk
expect "OTHER provisions" 0 "provisioned 1 part" -- "$CTL" provision --product ACME/OTHER --count 1 --out runother
expect "P-384 ca-request" 0 "wrote ca384.csr" -- \
    "$CTL" ca-request --product ACME/BIG --subject "/O=ACME/CN=BIG CA" --key-type p384 --out ca384.csr
expect "P-384 CSR verifies" 0 "verify OK|self-signature verify OK" -- openssl req -in ca384.csr -verify -noout
expect "RSA ca-request" 0 "wrote carsa.csr" -- \
    "$CTL" ca-request --product ACME/RSA --subject "/O=ACME/CN=RSA CA" --key-type rsa2048 --out carsa.csr
expect "RSA CSR verifies" 0 "verify OK|self-signature verify OK" -- openssl req -in carsa.csr -verify -noout
"$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id RSA --ca-key root.key --ca-cert root.pem \
    --csr carsa.csr --out rsa-ca.pem >/dev/null || ko "certify RSA"
"$W" "${pw[@]/SENSOR-1/RSA}" --ca-cert rsa-ca.pem --ca-request carsa.csr --out rsa.gpk >/dev/null 2>&1 || ko "create RSA"
expect "RSA: import" 0 "" -- "$CTL" import rsa.gpk
expect "RSA: provision" 0 "provisioned 2 parts" -- "$CTL" provision --product ACME/RSA --count 2 --out runrsa
n=0
for f in runrsa/*.pem; do
    openssl verify -CAfile root.pem -untrusted rsa-ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
[ "$n" = 2 ] && ok "openssl verify: RSA CA's device certificates" || ko "RSA: verified $n of 2"

# The OEM's own tooling: check the binding with certify-ca, or as here, sign
# with openssl x509 -req (the binding block after the CSR is ignored by it).
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n' >ca.ext
expect "openssl x509 -req takes the ca-request file" 0 "" -- \
    openssl x509 -req -in ca384.csr -CA root.pem -CAkey root.key -days 30 -extfile ca.ext -out big-ca.pem
expect "P-384 via openssl: create" 0 "wrote big.gpk" -- \
    "$W" "${pw[@]/SENSOR-1/BIG}" --ca-cert big-ca.pem --ca-request ca384.csr --out big.gpk
expect "P-384 via openssl: import and provision" 0 "provisioned 1 parts|provisioned 1 part" -- \
    sh -c "'$CTL' import big.gpk >/dev/null && '$CTL' provision --product ACME/BIG --count 1 --out runbig"
finish
