#!/usr/bin/env bash
# test_guardianctl.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the operator's tool on a
# fresh SoftHSM token, through the Guardian module: init (idempotent), the CSR
# path, enrolment (SO only, confirmation), listing and removal of OEM roots,
# import with its refusals explained, products, status (with the backend
# probe), and error messages.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/guardianctl-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" ctl
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=ctl
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki

expect "wrong token label" 1 "no token labelled 'nope'" -- "$CTL" --token nope list-oems
expect "wrong PIN" 1 "wrong user PIN" -- env GUARDIAN_PIN=9999 "$CTL" init
expect "no PIN, no terminal" 1 "no GUARDIAN_PIN in the environment" -- env -u GUARDIAN_PIN "$CTL" init
expect "init --csr" 0 "wrote guardian.csr" -- "$CTL" init --csr guardian.csr --subject /CN=line-7
expect "CSR verifies (signed in the token)" 0 "verify OK|Certificate request self-signature verify OK" -- \
    openssl req -in guardian.csr -verify -noout
openssl x509 -req -in guardian.csr -CA root.pem -CAkey root.key -days 30 -out centre-signed.pem 2>/dev/null
expect "import-cert of another key refused" 1 "not a certificate for this Guardian" -- "$CTL" import-cert ca.pem
expect "import-cert" 0 "installed the Guardian certificate" -- "$CTL" import-cert centre-signed.pem
expect "init is idempotent" 0 "already initialized" -- "$CTL" init --out guardian.pem
cmp -s guardian.pem centre-signed.pem && ok "cert exported = the installed certificate" || ko "cert exported differs"
expect "cert" 0 "BEGIN CERTIFICATE" -- "$CTL" cert

expect "enroll-oem without --yes and no terminal" 1 "pass --yes" -- "$CTL" enroll-oem root.pem --oem-id ACME
expect "enroll-oem wrong SO PIN" 1 "wrong Security Officer PIN" -- env GUARDIAN_SO_PIN=00000000 "$CTL" enroll-oem root.pem --oem-id ACME --yes
expect "enroll-oem shows the fingerprint" 0 "sha256 +[0-9a-f]{64}" -- "$CTL" enroll-oem root.pem --oem-id ACME --yes
expect "enroll-oem again" 0 "already enrolled" -- "$CTL" enroll-oem root.pem --oem-id ACME --yes
expect "list-oems" 0 "sha256:[0-9a-f]{64}  /CN=ACME Root" -- "$CTL" list-oems

"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id CTL-1 --release 2 --units 25 \
    --not-after +10 --out r2.gpk >/dev/null
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id CTL-1 --release 1 --units 25 \
    --not-after +10 --out r1.gpk >/dev/null
expect "import" 0 "remaining_units=25" -- "$CTL" import r2.gpk
expect "import again: replay explained" 1 "already imported" -- "$CTL" import r2.gpk
expect "import older: rollback explained" 1 "newer or equal release" -- "$CTL" import r1.gpk
expect "import garbage" 1 "not a valid Guardian package" -- "$CTL" import root.pem
expect "products" 0 "ACME +CTL-1 +2 +25 +0 +25" -- "$CTL" products

# status: the token, the identity (fingerprint as openssl prints it), the
# roots, the products, and the probe of what the backend itself enforces.
gfpr=$(openssl x509 -in guardian.pem -noout -fingerprint -sha256 | sed 's/.*=//')
expect "status" 0 "sensitive +ENFORCED" -- "$CTL" status
expect "status: identity fingerprint" 0 "SHA256 Fingerprint=$gfpr" -- "$CTL" status
expect "status: roots with their OEM IDs, products" 0 "for ACME" -- "$CTL" status
expect "status: products" 0 "ACME +CTL-1 +2 +25 +0 +25" -- "$CTL" status
expect "status: the honest remainder" 0 "loads .*libsofthsm2.so directly could still" -- "$CTL" status
expect "status needs the user PIN" 1 "wrong user PIN" -- env GUARDIAN_PIN=9999 "$CTL" status

fpr=$("$CTL" list-oems | awk '{print substr($1, 8, 16)}')
expect "remove-oem needs a known fingerprint" 1 "no OEM root matches" -- "$CTL" remove-oem 0000000000000000 --yes
expect "remove-oem" 0 "removed" -- "$CTL" remove-oem "$fpr" --yes
expect "list-oems after removal" 0 "no OEM root enrolled" -- "$CTL" list-oems
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --oem-id ACME --product-id CTL-1 --release 3 --units 25 --not-after +10 --out r3.gpk >/dev/null
expect "import after the root was removed" 1 "enroll-oem" -- "$CTL" import r3.gpk
expect "unknown command" 1 "unknown command" -- "$CTL" frobnicate

finish
