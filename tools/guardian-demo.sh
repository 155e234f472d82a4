#!/usr/bin/env bash
# guardian-demo.sh — the main job, end to end, on a SoftHSM token made on the fly.
#
# Builds what it needs, creates a throwaway SoftHSMv2 token and a Guardian
# configuration in a temporary directory, then runs the whole story, everything
# through the Guardian module: Guardian identity (guardianctl init: agreement and signing keys) -> OEM PKI
# (OpenSSL) -> OEM root enrolment (Security Officer) -> wrapping
# (guardian-wrap create/inspect, openssl cms -verify) -> import (C_UnwrapKey with
# CKM_GUARDIAN_UNWRAP_PACKAGE) -> provisioning run (C_DeriveKey with
# CKM_GUARDIAN_DERIVE_DEVICE_CERT per part) -> signed audit export -> the OEM
# verifies the report offline -> openssl verify of every certificate.
#
# Usage: tools/guardian-demo.sh [--keep] [--parts N]
#        (--keep leaves the temporary directory; --parts defaults to 1000)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${GUARDIAN_BUILD_DIR:-$here/build}"
module="$build/guardian-pkcs11.so"
softhsm="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
keep=0 parts=1000
while [ $# -gt 0 ]; do
    case $1 in
    --keep) keep=1 ;;
    --parts) parts=$2; shift ;;
    *) echo "usage: $0 [--keep] [--parts N]" >&2; exit 2 ;;
    esac
    shift
done

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'guardian-demo: %s\n' "$*" >&2; exit 1; }

for tool in cmake cc softhsm2-util pkcs11-tool openssl; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; install the prerequisites: sudo apt-get install -y \$(cat $here/tools/debian-packages)"
done
[ -r "$softhsm" ] || die "SoftHSMv2 module not found at $softhsm (apt-get install softhsm2)"

if [ ! -f "$module" ] || [ ! -x "$build/tools/guardianctl" ] || [ ! -x "$build/tools/guardian-wrap" ]; then
    step "Building the module and tools ($build)"
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target guardian-pkcs11 guardianctl guardian-wrap >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-demo-XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

step "A fresh SoftHSMv2 token in $work"
mkdir -p "$work/tokens" "$work/state"
cat >"$work/softhsm2.conf" <<EOF
directories.tokendir = $work/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label guardian-demo --pin 1234 --so-pin 12345678 | sed 's/^/  /'

step "A Guardian configuration naming SoftHSM as backend"
cat >"$work/guardian.conf" <<EOF
backend = $softhsm
state_dir = $work/state
log_level = error
EOF
sed 's/^/  /' "$work/guardian.conf"
export GUARDIAN_CONF="$work/guardian.conf"
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR

p11() { pkcs11-tool --module "$module" "$@"; }
ctl() { "$build/tools/guardianctl" --module "$module" --token guardian-demo "$@"; }
wrap() { "$build/tools/guardian-wrap" "$@"; }
export GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678 # demo only: an operator types them

step "The module (C_GetInfo) and the token, through the Guardian"
p11 --show-info | sed 's/^/  /'
p11 --list-slots | grep -E 'Slot|token label' | sed 's/^/  /'

step "1. Guardian identity: two key pairs inside the token (agreement: derive only; signing: sign only)"
ctl init --subject /CN=guardian-demo --out "$work/guardian.pem" 2>&1 | sed 's/^/  /'
awk '/BEGIN CERT/ { n++ } n == 1' "$work/guardian.pem" >"$work/guardian-agreement.pem"
awk '/BEGIN CERT/ { n++ } n == 2' "$work/guardian.pem" >"$work/guardian-signing.pem"
echo "  guardian.pem: the Guardian certificate (what OEMs wrap for), then its signing certificate"
for c in agreement signing; do
    openssl x509 -in "$work/guardian-$c.pem" -noout -subject -issuer -fingerprint -sha256 | sed 's/^/    /'
done
openssl verify -CAfile "$work/guardian-signing.pem" "$work/guardian-agreement.pem" | sed 's/^/  /'

step "2. OEM side (OpenSSL only): root, package signer, production CA"
oem="$work/oem"
mkdir -p "$oem"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$oem/root.key"
openssl req -new -x509 -key "$oem/root.key" -subj "/O=ACME/CN=ACME Root CA" -days 3650 -out "$oem/root.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
issue() { # NAME SUBJECT EXTENSIONS
    key "$oem/$1.key"
    openssl req -new -key "$oem/$1.key" -subj "$2" -out "$oem/$1.csr"
    openssl x509 -req -in "$oem/$1.csr" -CA "$oem/root.pem" -CAkey "$oem/root.key" -days 730 \
        -out "$oem/$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
}
issue signer "/O=ACME/CN=ACME Package Signer" "keyUsage=critical,digitalSignature"
issue production-ca "/O=ACME/CN=ACME Production CA 1" "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
echo "telemetry_interval=60" >"$oem/config.txt"
echo "  made $oem/{root,signer,production-ca}.pem"

step "3. Security Officer enrols the OEM root (fingerprint checked out of band)"
ctl enroll-oem "$oem/root.pem" --oem-id ACME --yes 2>&1 | sed 's/^/  /'

step "4. OEM wraps its secrets for this one Guardian"
wrap create --guardian-cert "$work/guardian.pem" --signer-key "$oem/signer.key" --signer-cert "$oem/signer.pem" \
    --ca-key "$oem/production-ca.key" --ca-cert "$oem/production-ca.pem" --ca-chain "$oem/root.pem" \
    --oem-id ACME --product-id SENSOR-1 --release 1 --units 1000 --not-after +90 \
    --data config="$oem/config.txt" --out "$work/acme-sensor-1-r1.gpk" | sed 's/^/  /'
wrap inspect "$work/acme-sensor-1-r1.gpk" --oem-root "$oem/root.pem" --guardian-cert "$work/guardian.pem" |
    sed 's/^/  /'
openssl cms -verify -inform DER -in "$work/acme-sensor-1-r1.gpk" -CAfile "$oem/root.pem" -binary \
    -out /dev/null 2>&1 | sed 's/^/  openssl cms: /'

step "5. Import into the Guardian: C_UnwrapKey, unwrapped inside the HSM"
ctl import "$work/acme-sensor-1-r1.gpk" | tee "$work/import.txt" | sed 's/^/  /'
echo "  a replay is refused:"
ctl import "$work/acme-sensor-1-r1.gpk" 2>&1 | grep guardianctl | sed 's/^/    /' || true
ctl products | sed 's/^/  /'
p11 --token-label guardian-demo --login --pin 1234 --list-objects --type privkey 2>/dev/null |
    grep -E 'Private Key|label|Access' | sed 's/^/  /'

cp -a "$work/state" "$work/state-backup" # a copy an operator might restore later

step "6. Production: $parts parts, one certificate each (C_DeriveKey through the module)"
ctl provision --product ACME/SENSOR-1 --count "$parts" --threads 2 --out "$work/certs" 2>&1 | sed 's/^/  /'
ctl products | sed 's/^/  /'
echo "  one of them:"
openssl x509 -in "$work/certs/SN-000001.pem" -noout -subject -issuer -serial -dates | sed 's/^/    /'

step "6b. The boundary: what an operator holding the user PIN cannot do through the module"
pkgid=$(wrap inspect "$work/acme-sensor-1-r1.gpk" 2>/dev/null | awk '/^package id/ {print $3}')
openssl rand 32 >"$work/h.bin"
if p11 --token-label guardian-demo --login --pin 1234 --sign -m ECDSA --id "$pkgid" -i "$work/h.bin" \
    -o "$work/forged.sig" >"$work/sign.out" 2>&1; then
    die "a standard C_Sign with the production CA key was allowed"
fi
echo "  pkcs11-tool --sign with the production CA key: $(grep -o 'CKR_[A-Z_]*' "$work/sign.out" | head -1)"
if p11 --token-label guardian-demo --login --pin 1234 --sign -m ECDSA --id "$(printf guardian-signing |
    od -An -tx1 | tr -d ' \n')" -i "$work/h.bin" -o "$work/forged.sig" >"$work/sign.out" 2>&1; then
    die "a standard C_Sign with the Guardian signing key was allowed"
fi
echo "  pkcs11-tool --sign with the Guardian signing key (a forged report): $(grep -o 'CKR_[A-Z_]*' "$work/sign.out" | head -1)"
sed "s|^state_dir = .*|state_dir = $work/state-backup|" "$GUARDIAN_CONF" >"$work/backup.conf"
if GUARDIAN_CONF=$work/backup.conf ctl provision --product ACME/SENSOR-1 --count 1 --out "$work/again" \
    >"$work/restore.out" 2>&1; then
    die "production from a restored copy of the state was allowed"
fi
echo "  production from the state copied before the run (a restored backup):"
grep -m1 -E 'older than|STATE_ROLLBACK' "$work/restore.out" | sed 's/^/    /'

step "7. Audit export, signed by the Guardian's signing key"
ctl audit export --out "$work/audit-report.txt" 2>&1 | sed 's/^/  /'
echo "  $(wc -l <"$work/audit-report.txt") lines, $(wc -c <"$work/audit-report.txt") bytes"

step "8. OEM side, offline: verify the report against the Guardian certificate and the production CA"
wrap verify-report "$work/audit-report.txt" --guardian "$work/guardian.pem" \
    --ca-chain "$oem/production-ca.pem" --root "$oem/root.pem" 2>&1 | sed 's/^/  /'
echo "  a copy whose import record claims 9000 authorised units instead of 1000 is rejected:"
sed '0,/^record 1 IMPORT/s/ 1000 0000000000000000/ 9000 0000000000000000/' "$work/audit-report.txt" \
    >"$work/audit-altered.txt"
if wrap verify-report "$work/audit-altered.txt" --guardian "$work/guardian.pem" \
    --ca-chain "$oem/production-ca.pem" --root "$oem/root.pem" >"$work/altered.out" 2>&1; then
    die "an altered report was accepted"
fi
grep -E '^(problem|FAILED)' "$work/altered.out" | sed 's/^/    /'

step "9. openssl verify of every certificate against the OEM root"
verified=$(cd "$work/certs" && find . -name '*.pem' -print0 | xargs -0 openssl verify -CAfile "$oem/root.pem" \
    -untrusted "$oem/production-ca.pem" | grep -c ': OK$' || true)
echo "  $verified of $parts certificates: OK"
[ "$verified" = "$parts" ] || die "only $verified of $parts certificates verify"

step "Summary"
echo "  module:    $module (backend $softhsm)"
echo "  Guardian:  $(openssl x509 -in "$work/guardian.pem" -noout -fingerprint -sha256 | cut -d= -f2) (signing: $(openssl x509 -in "$work/guardian-signing.pem" -noout -fingerprint -sha256 | cut -d= -f2))"
echo "  package:   ACME/SENSOR-1 release 1, 1000 units: imported, replay refused"
echo "  produced:  $parts device certificates, all verify up to the OEM root"
echo "  audit:     signed report verified by the OEM; an altered copy rejected"
echo "  boundary:  the CA key and the Guardian key refused to standard calls; a restored state refused"
