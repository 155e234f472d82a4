#!/usr/bin/env bash
# test_guardianctl.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the operator's tool on a
# fresh SoftHSM token, through the Guardian module: init (idempotent), the CSR
# path (the signing key's CSR, the centre CA's answer installed as the signing
# certificate, the Guardian certificate issued under it), the self-signed path
# and the upgrade of a one-key Guardian on a second token, enrolment (SO only, confirmation), listing and removal of OEM roots,
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

# Command-line conventions: --version, --help everywhere, usage errors named,
# exit 2; none of these loads the module (GUARDIAN_MODULE points nowhere).
for c in init import-cert cert enroll-oem list-oems remove-oem import products status provision audit; do
    expect_rc "$c --help: its usage, exit 0, no module" 0 "^usage: guardianctl .* $c" -- \
        env GUARDIAN_MODULE=/nonexistent "$CTL" "$c" --help
done
expect_rc "provision -h" 0 "usage: .*provision --product" -- env GUARDIAN_MODULE=/nonexistent "$CTL" provision -h
expect_rc "--help" 0 "^usage: guardianctl" -- "$CTL" --help
expect_rc "--version" 0 "^guardianctl [0-9]+\.[0-9]+\.[0-9]+$" -- env GUARDIAN_MODULE=/nonexistent "$CTL" --version
expect_rc "version" 0 "^guardianctl [0-9]+\.[0-9]+\.[0-9]+$" -- env GUARDIAN_MODULE=/nonexistent "$CTL" version
expect_rc "unknown option named, exit 2" 2 \
    "guardianctl: provision: unknown option '--cuont' \(guardianctl provision --help\)" -- \
    env GUARDIAN_MODULE=/nonexistent "$CTL" provision --cuont 5
expect_rc "unknown command named, exit 2" 2 "unknown command 'frobnicate'" -- "$CTL" frobnicate
expect_rc "unknown global option, exit 2" 2 "unknown option '--modul'" -- "$CTL" --modul x status
expect_rc "option without its value, exit 2" 2 "init: option '--days' needs a value" -- "$CTL" init --days
expect_rc "bad value before the module loads, exit 2" 2 "provision: --threads must be 1" -- \
    env GUARDIAN_MODULE=/nonexistent "$CTL" provision --product A/B --count 5 --threads=0
expect_rc "unknown audit subcommand, exit 2" 2 "audit: unknown subcommand 'expotr'" -- "$CTL" audit expotr
expect_rc "stray argument, exit 2" 2 "status: unexpected argument 'now'" -- "$CTL" status now
expect_rc "a refusal is exit 1" 1 "no token labelled 'nope'" -- "$CTL" --token nope list-oems

expect "wrong token label" 1 "no token labelled 'nope'" -- "$CTL" --token nope list-oems
expect "wrong PIN" 1 "wrong user PIN" -- env GUARDIAN_PIN=9999 "$CTL" init
expect "no PIN, no terminal" 1 "no GUARDIAN_PIN in the environment" -- env -u GUARDIAN_PIN "$CTL" init
expect "init --csr" 0 "wrote guardian.csr, the signing key's CSR" -- "$CTL" init --csr guardian.csr --subject /CN=line-7
expect "CSR verifies (signed in the token)" 0 "verify OK|Certificate request self-signature verify OK" -- \
    openssl req -in guardian.csr -verify -noout
expect "CSR names the signing certificate" 0 "CN ?= ?line-7 signing" -- openssl req -in guardian.csr -noout -subject
expect "status before the CA answered" 0 "no signing certificate yet" -- "$CTL" status
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,keyCertSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' >centre.ext
openssl x509 -req -in guardian.csr -CA root.pem -CAkey root.key -days 30 -extfile centre.ext \
    -out centre-signed.pem 2>/dev/null
openssl x509 -req -in guardian.csr -CA root.pem -CAkey root.key -days 30 -out not-ca.pem 2>/dev/null
expect "import-cert of another key refused" 1 "refused: .*neither" -- "$CTL" import-cert ca.pem
expect "import-cert of a signing certificate that is not a CA refused" 1 "must be a CA certificate" -- \
    "$CTL" import-cert not-ca.pem
expect "import-cert" 0 "installed the signing certificate sha256:[0-9a-f]{64} and issued the Guardian certificate" -- \
    "$CTL" import-cert centre-signed.pem
expect "init is idempotent" 0 "already initialized" -- "$CTL" init --out guardian.pem
expect "guardian.pem: the Guardian certificate, then the signing certificate" 0 "^2$" -- \
    grep -c "BEGIN CERTIFICATE" guardian.pem
awk '/BEGIN CERT/ { n++ } n == 1' guardian.pem >agreement.pem
awk '/BEGIN CERT/ { n++ } n == 2' guardian.pem >signing.pem
cmp -s signing.pem centre-signed.pem && ok "the signing certificate = the CA's answer" || ko "signing certificate differs"
expect "the Guardian certificate chains to the centre CA (openssl verify)" 0 "agreement.pem: OK" -- \
    openssl verify -CAfile root.pem -untrusted signing.pem agreement.pem
expect "the Guardian certificate agrees keys only" 0 "Key Agreement" -- openssl x509 -in agreement.pem -noout -ext keyUsage
expect "its subject" 0 "CN ?= ?line-7$" -- openssl x509 -in agreement.pem -noout -subject
expect "import-cert of the Guardian certificate itself (issued by the signing certificate)" 0 \
    "installed the Guardian certificate sha256" -- "$CTL" import-cert agreement.pem
expect "import-cert of an agreement certificate the signing certificate did not issue refused" 1 "refused" -- \
    "$CTL" import-cert not-ca.pem
expect "cert: the same two certificates" 0 "^$" -- bash -c "\"$CTL\" cert | cmp - guardian.pem"
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
sfpr=$(openssl x509 -in signing.pem -noout -fingerprint -sha256 | sed 's/.*=//')
expect "status" 0 "sensitive +ENFORCED" -- "$CTL" status
expect "status: identity fingerprint" 0 "SHA256 Fingerprint=$gfpr" -- "$CTL" status
expect "status: signing certificate fingerprint" 0 "SHA256 Fingerprint=$sfpr" -- "$CTL" status
expect "status: roots with their OEM IDs, products" 0 "for ACME" -- "$CTL" status
expect "status: products" 0 "ACME +CTL-1 +2 +25 +0 +25" -- "$CTL" status
expect "status: the honest remainder" 0 "loads .*libsofthsm2.so directly could still" -- "$CTL" status
expect "status needs the user PIN" 1 "wrong user PIN" -- env GUARDIAN_PIN=9999 "$CTL" status
# What only the store knows comes from the module (CKG_GUARDIAN_REQ_STATUS),
# checked now: guardianctl reads neither the state directory nor the module's
# configuration (behind p11-kit server they are the service account's), and
# links nothing of store/.
expect "status: the audit chain, checked by the module" 0 \
    "audit trail +1 record, hash chain intact; head 1, 20[0-9-]+T[0-9:]+Z" -- "$CTL" status
expect "status: records by type" 0 "^ +1 import, 0 reserve, 0 issue, 0 release, 0 journal lost, 0 credential, 0 export$" -- \
    "$CTL" status
expect "status: not the service mode" 0 "service mode +no: C_Login takes the backend's own PINs" -- "$CTL" status
expect "status: the anchor agrees" 0 "anchor +the store agrees with the token's anchor \(record 1\)" -- "$CTL" status
expect "status: the state's products and units" 0 \
    "products +1 installed: 25 units authorised, 0 issued, 25 remaining" -- "$CTL" status
expect "status: the backend and state from the module" 0 "state +$work/state$" -- "$CTL" status
expect "status: the store, from the module: SQLite and its file" 0 "^  store +sqlite \($work/state/guardian.db\)$" -- \
    "$CTL" status
if nm "$CTL" 2>/dev/null | grep -Eq ' [TtUu] (guardian_store_|guardian_config_|sqlite3_)'; then
    ko "guardianctl links no store, configuration or SQLite code"
else
    ok "guardianctl links no store, configuration or SQLite code"
fi
# A restored copy of the state (taken before one part was provisioned):
# status shows it all, then refuses by name; so does provision for a product
# the copy does not know.
cp -a state state-copy
expect "provision 1 part (after the copy)" 0 "provisioned 1 parts" -- "$CTL" provision --product ACME/CTL-1 --count 1 --out prov
mv state state-now && cp -a state-copy state
expect_rc "status of a restored copy: exit 1, the rollback named" 1 \
    "older than the token's anchor \(CKR_GUARDIAN_STATE_ROLLBACK\)" -- "$CTL" status
expect_rc "status of a restored copy: its state section says so" 1 \
    "anchor +the store is BEHIND the token's anchor \(record [0-9]+\): CKR_GUARDIAN_STATE_ROLLBACK" -- "$CTL" status
expect_rc "provision of a product unknown to the restored copy: the rollback named" 1 \
    "older than the token's anchor" -- "$CTL" provision --product ACME/NOPE --count 1 --out prov
rm -rf state && mv state-now state
expect "status of the current state again" 0 "anchor +the store (agrees with|is ahead of) the token's anchor" -- \
    "$CTL" status
# An altered audit record: the chain check the module runs for status names it.
tamper() { python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute("UPDATE audit SET serial = serial + (?) WHERE seq = 1", (int(sys.argv[2]),)); db.commit()' "$work/state/guardian.db" "$1"; }
tamper 1
expect_rc "status of an altered trail: exit 1, named" 1 \
    "audit trail in .* is corrupt after record 0 \(CKR_GUARDIAN_AUDIT_CORRUPT\)" -- "$CTL" status
expect_rc "status of an altered trail: its state section says so" 1 "hash chain BROKEN after record 0" -- "$CTL" status
tamper -1
expect "status once the record is put back" 0 "hash chain intact" -- "$CTL" status

fpr=$("$CTL" list-oems | awk '{print substr($1, 8, 16)}')
expect "remove-oem needs a known fingerprint" 1 "no OEM root matches" -- "$CTL" remove-oem 0000000000000000 --yes
expect "remove-oem" 0 "removed" -- "$CTL" remove-oem "$fpr" --yes
expect "list-oems after removal" 0 "no OEM root enrolled" -- "$CTL" list-oems
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --oem-id ACME --product-id CTL-1 --release 3 --units 25 --not-after +10 --out r3.gpk >/dev/null
expect "import after the root was removed" 1 "enroll-oem" -- "$CTL" import r3.gpk
expect "unknown command" 1 "unknown command" -- "$CTL" frobnicate

# ---- the self-signed path, on a token of its own ------------------------------------------
softhsm2-util --init-token --free --label self --pin 1234 --so-pin 12345678 >/dev/null
expect "init (self-signed)" 0 "signing certificate \(issued it, signs reports\) sha256" -- \
    "$CTL" --token self init --subject /CN=line-8 --out self.pem
awk '/BEGIN CERT/ { n++ } n == 1' self.pem >self-a.pem
awk '/BEGIN CERT/ { n++ } n == 2' self.pem >self-s.pem
expect "self-signed: openssl verify -CAfile S A" 0 "self-a.pem: OK" -- openssl verify -CAfile self-s.pem self-a.pem
expect "S: a CA for A only" 0 "CA:TRUE, pathlen:0" -- openssl x509 -in self-s.pem -noout -ext basicConstraints
expect "S: signs and issues" 0 "Digital Signature, Certificate Sign" -- openssl x509 -in self-s.pem -noout -ext keyUsage
expect "S's subject" 0 "CN ?= ?line-8 signing" -- openssl x509 -in self-s.pem -noout -subject
expect "A: key agreement only" 0 "^ +Key Agreement$" -- openssl x509 -in self-a.pem -noout -ext keyUsage
expect "A: not a CA" 0 "CA:FALSE" -- openssl x509 -in self-a.pem -noout -ext basicConstraints
expect "A: issued by S (authority key identifier)" 0 "Authority Key Identifier" -- openssl x509 -in self-a.pem -noout -text
expect "init again: idempotent" 0 "already initialized" -- "$CTL" --token self init --out self2.pem
cmp -s self.pem self2.pem && ok "init again writes the same two certificates" || ko "init again changed them"

# ---- a Guardian made before the split: one key that derives and signs, one -------------
# self-signed certificate (made here at the backend directly, as the old module did)
softhsm2-util --init-token --free --label old --pin 1234 --so-pin 12345678 >/dev/null
OLD_ID=$(printf guardian-identity | od -An -tx1 | tr -d ' \n')
pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label old -l --pin 1234 --keypairgen --key-type EC:prime256v1 \
    --id "$OLD_ID" --label guardian-identity --usage-derive --usage-sign >/dev/null 2>&1 || ko "old key pair"
pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label old --read-object --type pubkey --id "$OLD_ID" \
    -o old-pub.der >/dev/null 2>&1 || ko "old public key"
openssl pkey -pubin -inform DER -in old-pub.der -out old-pub.pem
ec_key throwaway.key
openssl req -new -key throwaway.key -subj "/CN=Old Guardian" -out old.csr
openssl x509 -req -in old.csr -signkey throwaway.key -force_pubkey old-pub.pem -days 30 -out old.pem 2>/dev/null
openssl x509 -in old.pem -outform DER -out old.der
pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label old -l --pin 1234 --write-object old.der --type cert \
    --id "$OLD_ID" --label guardian-identity >/dev/null 2>&1 || ko "old certificate"
"$W" create --guardian-cert old.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id OLD-1 --release 1 --units 5 \
    --not-after +10 --out old.gpk >/dev/null
expect "status of a one-key Guardian" 0 "no signing key: this Guardian was made before" -- "$CTL" --token old status
expect "upgrade: init makes the signing key and issues the certificate again" 0 \
    "the Guardian certificate CHANGED .*give your OEM customers the new upgraded.pem" -- \
    "$CTL" --token old init --out upgraded.pem
awk '/BEGIN CERT/ { n++ } n == 1' upgraded.pem >up-a.pem
awk '/BEGIN CERT/ { n++ } n == 2' upgraded.pem >up-s.pem
expect "upgrade: the same agreement key" 0 "^$" -- bash -c "openssl x509 -in up-a.pem -noout -pubkey | cmp - old-pub.pem"
expect "upgrade: the name kept" 0 "CN ?= ?Old Guardian$" -- openssl x509 -in up-a.pem -noout -subject
expect "upgrade: S named after it" 0 "CN ?= ?Old Guardian signing" -- openssl x509 -in up-s.pem -noout -subject
expect "upgrade: openssl verify -CAfile S A" 0 "up-a.pem: OK" -- openssl verify -CAfile up-s.pem up-a.pem
"$CTL" --token old enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1
expect "upgrade: a package made for the old certificate is refused" 1 "another Guardian|WRONG_GUARDIAN" -- \
    "$CTL" --token old import old.gpk
"$W" create --guardian-cert upgraded.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id OLD-1 --release 1 --units 5 \
    --not-after +10 --out new.gpk >/dev/null
expect "upgrade: a package made for the new certificate imports" 0 "remaining_units=5" -- "$CTL" --token old import new.gpk
expect "upgrade: init again is idempotent" 0 "already initialized" -- "$CTL" --token old init
expect "upgrade: the audit export verifies" 0 "exported" -- "$CTL" --token old audit export --out old.report
expect "upgrade: verify-report with the new certificates" 0 "^OK$" -- \
    "$W" verify-report old.report --guardian upgraded.pem --ca-chain ca.pem

finish
