#!/usr/bin/env bash
# test_part_outcome.sh MODULE GUARDIANCTL GUARDIAN_WRAP AUDIT_FIXTURE — part
# outcomes and re-issues end to end: `guardianctl provision` issues, `guardianctl
# part` reports parts programmed or scrapped (one device, or a file of them; the
# same outcome again writes nothing; a device never issued is refused), a part
# that made a new key is refused without `provision --reissue` and re-issued
# with it (a unit, a REISSUE record), provisioning again with the same keys is
# not possible here (each run makes new keys) so asking again is the module's
# test (integration.request).  Then the export and the OEM's verify-report: the
# per-product counts, the re-issue, and a device issued twice without a re-issue
# (two processes racing one new device ID, made with the store API) listed.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
FIX=$(realpath "${4:?audit_fixture}")
work=$(mktemp -d "${TMPDIR:-/tmp}/part-outcome-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" part
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=part
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki
"$CTL" init --out guardian.pem >/dev/null 2>&1 || { ko "guardianctl init"; finish; exit; }
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"
for product in LINE RACE; do
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id $product --release 1 --units 20 \
        --not-after +10 --out $product.gpk >/dev/null && "$CTL" import $product.gpk >/dev/null || ko "package $product"
done
issued() { "$CTL" products | awk -v p="$1" '$2 == p {print $5}'; }

expect "provision 6 parts" 0 "provisioned 6 parts" -- "$CTL" provision --product ACME/LINE --count 6 --out run

# ---- outcomes ---------------------------------------------------------------------------
printf 'SN-000001\n# a comment\n\nSN-000002\nSN-000003\n' >programmed.txt
expect "three programmed from a file" 0 "3 devices reported programmed, 0 refused" -- \
    "$CTL" part --product ACME/LINE --from programmed.txt programmed
expect "one scrapped" 0 "device SN-000004: serial [0-9]+ scrapped \(recorded\)" -- \
    "$CTL" part --product ACME/LINE --device SN-000004 scrapped
expect "the same again writes nothing" 0 "device SN-000001: serial [0-9]+ programmed \(already reported\)" -- \
    "$CTL" part --product ACME/LINE --device SN-000001 programmed
expect "programmed, then scrapped: recorded" 0 "device SN-000003: serial [0-9]+ scrapped \(recorded\)" -- \
    "$CTL" part --product ACME/LINE --device SN-000003 scrapped
expect "scrapped, then programmed: refused" 1 "SN-000004: refused: it was reported scrapped" -- \
    "$CTL" part --product ACME/LINE --device SN-000004 programmed
expect "a device never issued" 1 "SN-000099: refused: no certificate of this product" -- \
    "$CTL" part --product ACME/LINE --device SN-000099 programmed
expect "another product's device" 1 "refused: no certificate of this product" -- \
    "$CTL" part --product ACME/RACE --device SN-000001 programmed
expect_rc "no outcome" 2 "programmed or scrapped" -- "$CTL" part --product ACME/LINE --device SN-000001 gone
expect_rc "no device" 2 "--device ID or the parts with --from FILE" -- "$CTL" part --product ACME/LINE programmed
expect "part --help without a token" 0 "usage: .*part --product" -- env GUARDIAN_MODULE=/nonexistent "$CTL" part --help
before=$(issued LINE)
[ "$before" = 6 ] && ok "outcomes spend nothing (6 issued)" || ko "issued after outcomes: $before"

# ---- a part that kept its key (a run killed before its file was written) ----------------
# What a killed run leaves: the part's key file, no certificate file.
openssl x509 -in run/SN-000006.pem -pubkey -noout | openssl pkey -pubin -outform DER -out run/SN-000006.spki
mv run/SN-000006.pem was-6.pem
expect "resumed with the kept key" 0 "provisioned 1 parts" -- "$CTL" provision --product ACME/LINE --count 6 --out run
cmp -s run/SN-000006.pem was-6.pem && ok "the same certificate returned" || ko "another certificate on resume"
[ "$(issued LINE)" = 6 ] && ok "asking again spent nothing" || ko "issued after asking again: $(issued LINE)"
[ ! -e run/SN-000006.spki ] && ok "the key file removed with the certificate written" || ko "key file left"

# ---- a part that made a new key: refused, then re-issued ------------------------------
rm run/SN-000005.pem
expect "another key refused without --reissue" 1 "another key .*--reissue" -- \
    "$CTL" provision --product ACME/LINE --count 6 --out run
[ "$(issued LINE)" = 6 ] && ok "the refusal spent nothing" || ko "issued after the refusal: $(issued LINE)"
expect "--reissue issues a new certificate" 0 "provisioned 1 parts" -- \
    "$CTL" provision --product ACME/LINE --count 6 --out run --reissue
[ "$(issued LINE)" = 7 ] && ok "the re-issue spent a unit" || ko "issued after the re-issue: $(issued LINE)"
openssl x509 -in run/SN-000005.pem -noout -serial >/dev/null 2>&1 && ok "the new certificate written" ||
    ko "no new certificate file"

# ---- two processes racing one new device ID (below the module: the store API) ----------
AUDIT_FIXTURE_DEVICE=SAME-1 "$FIX" issue state ca.key ca.pem ACME RACE 2 0 0 >/dev/null || ko "fixture issue"

# ---- the export and the OEM's check ----------------------------------------------------
"$CTL" audit export --out report.txt >/dev/null 2>&1 || ko "audit export"
V=(--guardian guardian.pem --ca-chain ca.pem --root root.pem)
expect "verify-report OK" 0 "^OK$" -- "$W" verify-report report.txt "${V[@]}"
expect "per-product outcome counts" 0 \
    "ACME/LINE devices 6: programmed 2, scrapped 2, no outcome reported 2; re-issued 1, issued twice without a re-issue 0" -- \
    "$W" verify-report report.txt "${V[@]}"
expect "the re-issue shown" 0 "reissue record [0-9]+: device 534e2d303030303035 of ACME/LINE: serial [0-9]+ replaces serial [0-9]+, by " -- \
    "$W" verify-report report.txt "${V[@]}"
expect "a device issued twice listed" 0 "device 53414d452d31 of ACME/RACE: serial 2 .* without a re-issue" -- \
    "$W" verify-report report.txt "${V[@]}"
expect "its count" 0 "ACME/RACE devices 1: programmed 0, scrapped 0, no outcome reported 1; re-issued 0, issued twice without a re-issue 1" -- \
    "$W" verify-report report.txt "${V[@]}"
n=$(grep -c ' OUTCOME ' report.txt)
[ "$n" = 5 ] && ok "five OUTCOME records in the report" || ko "$n OUTCOME records in the report"

# An OUTCOME whose device has no ISSUE: the record re-hashed by a forger (the
# signature then fails too, but the device check must name it).
seq=$(awk '$1 == "record" && $3 == "OUTCOME" {print $2; exit}' report.txt)
sed "s/^record $seq OUTCOME \([^ ]* [^ ]* [^ ]* [^ ]*\) 534e2d303030303031 /record $seq OUTCOME \1 534e2d303030303939 /" \
    report.txt >forged.txt
"$FIX" rehash forged.txt forged2.txt chain "$seq" >/dev/null || ko "rehash"
expect "an outcome for a device without an ISSUE" 1 \
    "record $seq reports an outcome for device 534e2d303030303939 of ACME/LINE .* has no ISSUE record" -- \
    "$W" verify-report forged2.txt "${V[@]}"
finish
