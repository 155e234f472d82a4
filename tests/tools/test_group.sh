#!/usr/bin/env bash
# test_group.sh MODULE GUARDIANCTL GUARDIAN_WRAP — a package for a group of
# Guardians sharing one allowance (docs/package-format.md, "A package for a
# group of Guardians"), on three SoftHSM tokens, each its own Guardian, and one
# state directory (the SQLite engine's shared store): guardian-wrap create
# with two --guardian-cert, inspect listing the members; each member imports
# once (the second joins: JOIN record, the same allowance), a non-member is
# refused with CKR_GUARDIAN_WRONG_GUARDIAN and nothing recorded; both members
# provisioning at once spend the one allowance and stop exactly at it; one
# export verifies with verify-report, and an altered member field is refused.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/group-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
for t in g1 g2 g3; do softhsm_token "$work" "$t"; done
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG GUARDIAN_TOKEN
oem_pki
as() { local t=$1; shift; GUARDIAN_TOKEN=$t "$@"; }
for t in g1 g2 g3; do
    as $t "$CTL" init --out $t.pem >/dev/null 2>&1 || ko "init $t"
    as $t "$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem $t"
done
digest() { openssl x509 -in "$1" -outform DER | sha256sum | cut -c1-64; }
d1=$(digest g1.pem) d2=$(digest g2.pem) d3=$(digest g3.pem)

cw=(create --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem
    --oem-id ACME --product-id GRP --release 1 --not-after +30)
expect "create for a group of two" 0 "for a group of 2 Guardians" -- \
    "$W" "${cw[@]}" --guardian-cert g2.pem --guardian-cert g1.pem --units 12 --out grp.gpk
expect "inspect lists member 1" 0 "member +sha256:$d1" -- "$W" inspect grp.gpk --oem-root root.pem
expect "inspect lists member 2" 0 "member +sha256:$d2" -- "$W" inspect grp.gpk --oem-root root.pem
expect "inspect: g1 is a member" 0 "g1.pem is a member" -- "$W" inspect grp.gpk --oem-root root.pem --guardian-cert g1.pem
expect "inspect: g3 is not a member" 1 "g3.pem is NOT a member" -- \
    "$W" inspect grp.gpk --oem-root root.pem --guardian-cert g3.pem
expect "create: a member named twice refused" 1 "are the same Guardian certificate" -- \
    "$W" "${cw[@]}" --guardian-cert g1.pem --guardian-cert g1.pem --units 5 --out twice.gpk
many=(); for i in $(seq 17); do many+=(--guardian-cert g1.pem); done
expect_rc "create: 17 members refused" 2 "at most 16 --guardian-cert" -- \
    "$W" "${cw[@]}" "${many[@]}" --units 5 --out many.gpk
[ ! -e twice.gpk ] && [ ! -e many.gpk ] && ok "nothing written when refused" || ko "a refused create wrote a file"

# A non-member first: refused, nothing recorded (the members import after).
expect "a non-member is refused" 1 "CKR_GUARDIAN_WRONG_GUARDIAN" -- as g3 "$CTL" import grp.gpk
expect "the store has no record of it" 0 "^$" -- sh -c "sqlite3 state/guardian.db 'SELECT * FROM packages'"
expect "member g1 imports" 0 "remaining_units=12" -- as g1 "$CTL" import grp.gpk
expect "member g2 joins: the same allowance" 0 "remaining_units=12" -- as g2 "$CTL" import grp.gpk
expect "g2 again: replay" 1 "CKR_GUARDIAN_PACKAGE_REPLAYED" -- as g2 "$CTL" import grp.gpk
expect "g1 again: replay" 1 "CKR_GUARDIAN_PACKAGE_REPLAYED" -- as g1 "$CTL" import grp.gpk
expect "one package row, one product" 0 "^1\|1$" -- \
    sqlite3 state/guardian.db "SELECT (SELECT count(*) FROM packages), (SELECT count(*) FROM products)"
expect "two members recorded" 0 "^2$" -- sqlite3 state/guardian.db "SELECT count(*) FROM package_members"
expect "IMPORT names g1, JOIN names g2" 0 "^1\|$d1 12\|$d2$" -- sh -c \
    "sqlite3 state/guardian.db \"SELECT type || '|' || lower(hex(device_id)) FROM audit WHERE type IN (1, 12) ORDER BY seq\" | tr '\n' ' ' | sed 's/ \$//'"

# Both members at once, each asking for the whole allowance: 12 in all.
as g1 "$CTL" provision --product ACME/GRP --count 12 --prefix A- --out run1 >p1.out 2>&1 &
as g2 "$CTL" provision --product ACME/GRP --count 12 --prefix B- --out run2 >p2.out 2>&1 &
wait
n1=$(ls run1/*.pem 2>/dev/null | wc -l) n2=$(ls run2/*.pem 2>/dev/null | wc -l)
[ $((n1 + n2)) = 12 ] && ok "both members together issued exactly the allowance ($n1 + $n2 = 12)" ||
    ko "issued $n1 + $n2, allowance 12 ($(cat p1.out p2.out | tr '\n' ' '))"
expect "the allowance is spent" 0 "^12\|12$" -- \
    sqlite3 state/guardian.db "SELECT authorised_units || '|' || issued_units FROM packages"
expect "a member past the allowance is refused" 1 "has only 0 units remaining.*nothing was issued" -- \
    as g2 "$CTL" provision --product ACME/GRP --count 1 --out run3
n=0
for f in run1/*.pem run2/*.pem; do
    [ -e "$f" ] && openssl verify -CAfile root.pem -untrusted ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
[ "$n" = 12 ] && ok "openssl verify: all 12 device certificates" || ko "verified $n of 12"

# One export covers the group's allowance, both members' records.
expect "g1 exports" 0 "exported" -- as g1 "$CTL" audit export --out report.txt
V=(--guardian g1.pem --ca-chain ca.pem --root root.pem --package grp.gpk)
expect "verify-report OK" 0 "^OK$" -- "$W" verify-report report.txt "${V[@]}"
expect "verify-report: the members' imports" 0 "ACME/GRP release 1 .*issued 12" -- "$W" verify-report report.txt "${V[@]}"
expect "verify-report: per member" 0 "member sha256:$d1 imported .*member sha256:$d2 joined" -- \
    sh -c "'$W' verify-report report.txt ${V[*]} | tr '\n' ' '"
# The JOIN record's member changed (to g3): its hash no longer matches.
sed "s/$d2/$d3/" report.txt >tampered.txt
cmp -s report.txt tampered.txt && ko "the report names g2" || ok "the report names g2's digest"
expect "a tampered member field is refused" 1 "hash|signature" -- "$W" verify-report tampered.txt "${V[@]}"
finish
