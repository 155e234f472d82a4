#!/usr/bin/env bash
# test_unsealed.sh MODULE GUARDIANCTL GUARDIAN_WRAP UNSEALING_SHIM — the
# import on a backend whose C_UnwrapKey drops CKA_SENSITIVE and
# CKA_EXTRACTABLE from the template, as opencryptoki 3.8 does (measured:
# docs/backends/opencryptoki.md): SoftHSM behind unsealing_shim.so.
#  1. set allowed (opencryptoki's case): the import seals the first key by
#     C_SetAttributeValue (unwrapped again without CKA_MODIFIABLE false), and
#     the next one by a session unwrap and C_CopyObject into the token;
#     read straight on SoftHSM, the CA key and the confidential item are
#     sensitive and not extractable;
#  2. set refused (a backend that keeps the secret readable): the import is
#     refused with CKR_GUARDIAN_KEY_NOT_SEALED, nothing kept, the product not
#     installed; the same package then imports once the backend lets it be
#     sealed (the refusal recorded nothing);
#  3. control: SoftHSM without the shim keeps the template, and the module
#     seals nothing.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
SHIM=$(realpath "${4:?unsealing_shim.so}")
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-unsealed-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir -m 700 state
softhsm_token "$work" unsealed
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=unsealed
export GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678 GUARDIAN_DEBUG=info
unset GUARDIAN_CONF
export GUARDIAN_BACKEND=$SHIM UNSEALING_SHIM_MODULE=$SOFTHSM

oem_pki
head -c 48 /dev/urandom >secret.bin
pkg() { # PRODUCT OUT
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "$1" --release 1 --units 10 \
        --not-after +10 --secret-data boot=secret.bin --out "$2" >/dev/null 2>&1
}
# access LABEL: pkcs11-tool's Access line of the object LABEL, read straight on SoftHSM.
access() {
    pkcs11-tool --module "$SOFTHSM" --token-label unsealed --login --pin 1234 -O 2>/dev/null |
        awk -v l="$1" '$1 == "label:" { cur = $2 } /Access:/ && cur == l { sub(/^ *Access: */, ""); print; exit }'
}
# sealed LINE: "sensitive" and not "extractable" (pkcs11-tool's words; "never
# extractable" is CKA_NEVER_EXTRACTABLE, false for any unwrapped key).
sealed() { grep -q -w sensitive <<<"$1" && ! sed 's/never extractable//' <<<"$1" | grep -q -w extractable; }
count() { pkcs11-tool --module "$SOFTHSM" --token-label unsealed --login --pin 1234 -O 2>/dev/null | grep -c 'Object;'; }

expect "guardianctl init (behind the shim)" 0 "" -- "$CTL" init --out guardian.pem
expect "enroll-oem" 0 "" -- "$CTL" enroll-oem root.pem --oem-id ACME --yes
pkg ONE one.gpk || ko "guardian-wrap create ONE"
pkg TWO two.gpk || ko "guardian-wrap create TWO"
pkg THREE three.gpk || ko "guardian-wrap create THREE"

# 1. The backend drops them, lets them be set: sealed by the module.
out=$("$CTL" import one.gpk 2>&1)
[ $? -eq 0 ] && ok "import behind the shim" || shown_ko "import behind the shim" "$out"
output_matches "... the first key set sealed after the unwrap (unwrapped again modifiable)" \
    "did not keep CKA_SENSITIVE/CKA_EXTRACTABLE .* set after the unwrap" "$out"
output_matches "... the next one unwrapped as a session key and copied into the token sealed" \
    "'boot' was unwrapped as a session key and copied into the token sensitive, not extractable, not modifiable" "$out"
for k in production-ca boot; do
    a=$(access "guardian:ACME/ONE/r1:$k")
    if [ -n "$a" ] && sealed "$a"; then ok "on SoftHSM itself, $k is sensitive and not extractable ($a)"
    else ko "on SoftHSM itself, $k is not sealed: '$a'"; fi
done

# 2. The backend will not let them be sealed: refused, nothing kept.
before=$(count)
expect "import refused where the backend keeps a secret readable" 1 "CKR_GUARDIAN_KEY_NOT_SEALED" \
    -- env UNSEALING_SHIM_REFUSE_SET=1 "$CTL" import two.gpk
expect "... the module says why" 1 "would not make it sensitive and not extractable" \
    -- env UNSEALING_SHIM_REFUSE_SET=1 "$CTL" import two.gpk
after=$(count)
[ "$before" = "$after" ] && ok "nothing kept by the refused import ($after objects)" ||
    ko "the refused import left objects: $before before, $after after"
expect "the refused product is not installed" 0 "" -- sh -c "! '$CTL' products 2>&1 | grep -q TWO"
expect "the same package imports once the backend lets it be sealed" 0 "" -- "$CTL" import two.gpk

# 3. Control: SoftHSM keeps the template; nothing to seal.
out=$(GUARDIAN_BACKEND=$SOFTHSM "$CTL" import three.gpk 2>&1)
rc=$?
[ $rc -eq 0 ] && ok "control: import straight on SoftHSM" || shown_ko "control: import straight on SoftHSM: exit $rc" "$out"
grep -q "set after the unwrap" <<<"$out" && shown_ko "control: the module sealed keys SoftHSM kept sealed" "$out" ||
    ok "control: on SoftHSM itself nothing had to be sealed"
a=$(access "guardian:ACME/THREE/r1:production-ca")
sealed "$a" && ok "control: THREE's CA key sensitive and not extractable ($a)" || ko "control: THREE's CA key: '$a'"
finish
