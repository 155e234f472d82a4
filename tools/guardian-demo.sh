#!/usr/bin/env bash
# guardian-demo.sh — the main job, end to end, on a SoftHSM token made on the fly.
#
# Today (foundation): builds the module if needed, creates a throwaway SoftHSMv2
# token and a Guardian configuration in a temporary directory, then through the
# Guardian module: shows the module, its slots and mechanisms, generates an EC
# P-256 key pair in the token, signs with it, and has OpenSSL verify the
# signature with the public key read back through the module.
#
# Usage: tools/guardian-demo.sh [--keep]   (--keep leaves the temporary directory)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${GUARDIAN_BUILD_DIR:-$here/build}"
module="$build/guardian-pkcs11.so"
softhsm="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'guardian-demo: %s\n' "$*" >&2; exit 1; }

for tool in cmake cc softhsm2-util pkcs11-tool openssl; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; install the prerequisites: sudo apt-get install -y \$(cat $here/tools/debian-packages)"
done
[ -r "$softhsm" ] || die "SoftHSMv2 module not found at $softhsm (apt-get install softhsm2)"

if [ ! -f "$module" ]; then
    step "Building the module ($build)"
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target guardian-pkcs11 >/dev/null
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
log_level = warn
EOF
sed 's/^/  /' "$work/guardian.conf"
export GUARDIAN_CONF="$work/guardian.conf"
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR

p11() { pkcs11-tool --module "$module" "$@"; }

step "The module (C_GetInfo)"
p11 --show-info | sed 's/^/  /'

step "Slots and tokens, through the Guardian"
p11 --list-slots | sed 's/^/  /'

step "Mechanisms the Guardian offers on the demo token"
p11 --token-label guardian-demo --list-mechanisms | grep '^  ' >"$work/mechs.txt"
sed 's/^/  /' "$work/mechs.txt" | head -n 12
n_mechs=$(wc -l <"$work/mechs.txt")
echo "    ... $n_mechs mechanisms in all"

step "An EC P-256 key pair generated inside the token"
p11 --token-label guardian-demo --login --pin 1234 --keypairgen --key-type EC:prime256v1 \
    --label demo-key --id 01 | sed 's/^/  /'

step "Signing a SHA-256 digest inside the token (CKM_ECDSA), verified by OpenSSL"
echo "Guardian demo: $(date -u +%FT%TZ)" >"$work/message.txt"
openssl dgst -sha256 -binary "$work/message.txt" >"$work/message.sha256"
p11 --token-label guardian-demo --login --pin 1234 --sign --mechanism ECDSA --id 01 \
    --signature-format openssl --input-file "$work/message.sha256" --output-file "$work/message.sig" 2>&1 |
    sed 's/^/  /'
p11 --token-label guardian-demo --read-object --type pubkey --id 01 --output-file "$work/pub.der" >/dev/null
openssl pkey -pubin -inform DER -in "$work/pub.der" -out "$work/pub.pem"
openssl dgst -sha256 -verify "$work/pub.pem" -signature "$work/message.sig" "$work/message.txt" | sed 's/^/  /'

step "Summary"
echo "  module:    $module"
echo "  backend:   $softhsm"
echo "  token:     guardian-demo ($n_mechs mechanisms)"
echo "  signature: $(stat -c %s "$work/message.sig") bytes DER, verified by OpenSSL"
