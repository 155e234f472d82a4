#!/usr/bin/env bash
# test_audit_report.sh MODULE GUARDIANCTL GUARDIAN_WRAP AUDIT_FIXTURE — the signed
# audit report end to end: a Guardian on a fresh SoftHSM token, an OEM PKI,
# enrolment, guardian-wrap create, guardianctl import, certificates issued,
# `guardianctl audit export`, `guardian-wrap verify-report` OK; then every kind
# of tampering, each detected with its own message, and malformed input.
#
# The main fixture's certificates are issued by audit_fixture through the store
# API (reserve_block, issue, release: exact control over released and
# never-issued units), signed by the package's production CA key following the
# profile; when guardianctl has `provision`, certificates from the module's
# derive mechanism are exported and verified as well.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
FIX=$(realpath "${4:?audit_fixture}")
work=$(mktemp -d "${TMPDIR:-/tmp}/audit-report-test-XXXXXX")
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" audit
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=audit
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki 2>/dev/null
"$CTL" init --out guardian.pem 2>/dev/null || ko "guardianctl init"
# guardian.pem: the Guardian certificate A (what packages target), then the
# signing certificate S (issued A, signs reports).
awk '/BEGIN CERT/ { n++ } n == 1' guardian.pem >agreement.pem
# The Guardian every record names: the SHA-256 of A.  The fixture writes its
# records on the same store as this Guardian's module would.
gd=$(openssl x509 -in guardian.pem -outform DER | sha256sum | cut -c1-64)
export AUDIT_FIXTURE_GUARDIAN=$gd
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"

# wrap PRODUCT RELEASE UNITS OUT [CREATE-OPTION...]
wrap() {
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "$1" --release "$2" --units "$3" \
        --not-after +30 --out "$4" "${@:5}" >/dev/null || ko "guardian-wrap create $4"
}
wrap SENSOR-1 1 10 s1r1.gpk
wrap SENSOR-1 2 3 s1r2.gpk
wrap OTHER-2 1 5 o2r1.gpk
"$CTL" import s1r1.gpk >/dev/null || ko "import s1r1"
"$CTL" import o2r1.gpk >/dev/null || ko "import o2r1"
# SENSOR-1 release 1: 6 issued, 1 released, 1 reserved and never issued.
"$FIX" issue state ca.key ca.pem ACME SENSOR-1 6 1 1 >/dev/null || ko "issue under release 1"
"$FIX" issue state ca.key ca.pem ACME OTHER-2 2 0 0 >/dev/null || ko "issue OTHER-2"
# Release 2 supersedes release 1: its 3 units count afresh, serials continue.
"$CTL" import s1r2.gpk >/dev/null || ko "import s1r2"
"$FIX" issue state ca.key ca.pem ACME SENSOR-1 2 0 0 >/dev/null || ko "issue under release 2"

verify() { "$W" verify-report "$@"; }
V=(--guardian guardian.pem --ca-chain ca.pem --root root.pem)

# ---- export and verify ---------------------------------------------------------------
# Each export first writes its own EXPORT record (record 27 here), the
# report's last.
expect "audit export" 0 "exported 27 records \(head 27, 0 of them redacted\), 10 certificates" -- \
    "$CTL" audit export --out report.txt
expect "verify-report OK" 0 "^OK$" -- verify report.txt "${V[@]}" --package s1r1.gpk --package s1r2.gpk
expect "summary release 1" 0 "ACME/SENSOR-1 release 1 .*authorised 10, reserved 8, released 1, issued 6, reserved-not-issued 1, remaining 3, certificates verified 6/6" -- \
    verify report.txt "${V[@]}"
expect "summary release 2" 0 "ACME/SENSOR-1 release 2 .*authorised 3, reserved 2, released 0, issued 2, reserved-not-issued 0, remaining 1, certificates verified 2/2" -- \
    verify report.txt "${V[@]}"
expect "without --root (production CA only)" 0 "^OK$" -- verify report.txt --guardian guardian.pem --ca-chain ca.pem
expect "the OEM's own total, met" 0 "^OK$" -- verify report.txt "${V[@]}" --authorised 10 --product ACME/SENSOR-1
expect "the OEM's own total, exceeded" 1 "ACME/SENSOR-1: used 9 units \(reserved, not released\) but you authorised 8" -- \
    verify report.txt "${V[@]}" --authorised 8 --product ACME/SENSOR-1
expect "a package the trail does not have" 1 "package s1r3.gpk .* was not imported" -- \
    bash -c "cp s1r1.gpk s1r3.gpk && echo >>s1r3.gpk; $W verify-report report.txt ${V[*]} --package s1r3.gpk"
expect "export to stdout is the same format" 0 "^GUARDIAN AUDIT REPORT 3$" -- "$CTL" audit export # record 28
expect "the report's own EXPORT record, last: the whole trail, by nobody (in-process), on this Guardian" 0 \
    "^record 27 EXPORT [0-9]+ - - 26 - 0{64} 0{32} 0 0 - $gd [0-9a-f]{64} [0-9a-f]{64}$" -- cat report.txt
[ "$(grep '^record \|^redacted ' report.txt | tail -n 1 | cut -d' ' -f2,3)" = "27 EXPORT" ] &&
    ok "the EXPORT record is the report's last" || ko "the EXPORT record is not the report's last"
[ "$(awk '$1 == "exported" { t = $2 } $1 == "record" && $3 == "EXPORT" { r = $4 } END { print (t == r) }' report.txt)" = 1 ] &&
    ok "the EXPORT record is dated the report's export time" || ko "the EXPORT record's time differs from the report's"
expect "the summary names the exporter" 0 "^exported by \(none\) at [-0-9T:]+Z \(record 27, the report's own\)$" -- \
    verify report.txt "${V[@]}"
expect "every record names its operator (none here: no login in-process) and its Guardian" 0 \
    "^record [0-9]+ ISSUE [0-9]+ ACME SENSOR-1 1 [0-9a-f]+ [0-9a-f]{64} 0{32} 0 0 - $gd [0-9a-f]{64} [0-9a-f]{64}$" -- cat report.txt
[ "$(awk '$1 == "record" && $14 != "'"$gd"'"' report.txt | wc -l)" = 0 ] &&
    ok "every record of the trail names this Guardian (the SHA-256 of guardian.pem)" ||
    ko "records naming another Guardian: $(awk '$1 == "record" && $14 != "'"$gd"'" { print $2 }' report.txt | tr '\n' ' ')"
expect "the summary counts units per Guardian" 0 "^Guardians  units issued: sha256:$gd 10$" -- verify report.txt "${V[@]}"
grep -q '^certificate ' report.txt && {
    grep -m1 '^certificate ' report.txt | cut -d' ' -f3 | base64 -d | openssl x509 -inform DER -out dev.pem
    expect "a device certificate verifies with stock openssl" 0 "dev.pem: OK" -- \
        openssl verify -CAfile root.pem -untrusted ca.pem dev.pem
}

# Restricted to one product: the whole chain; every record of the product's
# OEM in clear (OTHER-2 is ACME's too: an export for ACME cannot hide it),
# other OEMs' records redacted (below, once BETA has some).
expect "export --product" 0 "exported 29 records \(head 29, 0 of them redacted\), 10 certificates" -- \
    "$CTL" audit export --product ACME/SENSOR-1 --out sensor.txt
expect "verify the restricted report" 0 "^OK$" -- verify sensor.txt "${V[@]}" --package s1r1.gpk
expect "a restricted report's own EXPORT record names its scope" 0 \
    "^record 29 EXPORT [0-9]+ ACME SENSOR-1 28 - 0{64} 0{32} 0 0 - " -- cat sensor.txt
expect "... and shows the earlier exports of the whole trail" 0 "^export record 28 [-0-9T:]+Z by \(none\): scope all$" -- \
    verify sensor.txt "${V[@]}"
grep -q '^scope ACME/SENSOR-1$' sensor.txt && grep -q '^product ACME OTHER-2 ' sensor.txt &&
    ok "restricted report shows the OEM's other product" || ko "restricted report hides ACME/OTHER-2"
expect "export --product unknown" 1 "no product ACME/NOPE" -- "$CTL" audit export --product ACME/NOPE

# ---- tampering -------------------------------------------------------------------------
# edit FILE AWK-PROGRAM: rewrite the report with awk.
edit() { awk "$2" report.txt >"$1"; }
# resign FILE KEY: replace the signature line with one made with KEY over the rest.
resign() {
    head -n -1 "$1" >"$1.body"
    { cat "$1.body"; printf 'signature %s\n' "$(openssl dgst -sha256 -sign "$2" "$1.body" | base64 -w0)"; } >"$1"
}

edit altered.txt '$1 == "record" && $2 == 3 { $4 = $4 + 1 } { print }'
expect "record altered, hash kept" 1 "record 3 was altered: its hash does not match its content" -- verify altered.txt "${V[@]}"
"$FIX" rehash altered.txt rehashed.txt one 3
expect "record altered and re-hashed: chain break" 1 "record 4 does not follow record 3" -- verify rehashed.txt "${V[@]}"
edit removed.txt '!($1 == "record" && $2 == 4) { print }'
expect "record removed" 1 "record 4 is missing: record 5 follows 3" -- verify removed.txt "${V[@]}"
edit swapped.txt '$1 == "record" && $2 == 5 { held = $0; next } { print } $1 == "record" && $2 == 6 { print held }'
expect "records swapped" 1 "records 5 and 6 are out of order" -- verify swapped.txt "${V[@]}"
edit certalt.txt '$1 == "certificate" && !done { $3 = substr($3, 1, 99) (substr($3, 100, 1) == "A" ? "B" : "A") substr($3, 101); done = 1 } { print }'
expect "certificate altered" 1 "does not match record [0-9]+: its SHA-256 differs" -- verify certalt.txt "${V[@]}"
edit certgone.txt '$1 == "certificate" && !done { done = 1; next } { print }'
expect "certificate removed" 1 "record [0-9]+ \(ISSUE of serial 1 of ACME/SENSOR-1\): its certificate is missing" -- \
    verify certgone.txt "${V[@]}"
expect "every tampered report fails its signature too" 1 "signature does not verify" -- verify removed.txt "${V[@]}"

# The signature itself: one bit of s changed.
tail -n 1 report.txt | cut -d' ' -f2 | base64 -d >sig.der
last=$(tail -c 1 sig.der | od -An -tu1 | tr -d ' ')
{ head -c -1 sig.der; printf "\\$(printf %o $((last ^ 1)))"; } >sig2.der
{ head -n -1 report.txt; printf 'signature %s\n' "$(base64 -w0 sig2.der)"; } >sigalt.txt
expect "signature altered" 1 "the report's signature does not verify against the Guardian's signing certificate" -- \
    verify sigalt.txt "${V[@]}"

# Another key: a fake Guardian, made as the module makes one: a signing
# certificate (fake-s, key fake.key, a CA) that issued the Guardian
# certificate (fake-a, key agreement); fake.pem holds both, A first.
ec_key fake.key
ec_key fake-a.key
openssl req -new -x509 -key fake.key -subj "/CN=Fake Guardian signing" -days 30 -out fake-s.pem \
    -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,digitalSignature,keyCertSign 2>/dev/null
openssl req -new -key fake-a.key -subj "/CN=Fake Guardian" -out fake-a.csr
openssl x509 -req -in fake-a.csr -CA fake-s.pem -CAkey fake.key -days 30 -out fake-a.pem \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyAgreement\n') 2>/dev/null
cat fake-a.pem fake-s.pem >fake.pem
# embed PEM IN OUT: the report IN with the Guardian certificate block(s) replaced by PEM's.
embed() { awk -v pem="$(cat "$1")" '
    /^-----BEGIN CERTIFICATE-----$/ { if (!done) print pem; done = 1; skip = 1; next }
    skip && /^-----END CERTIFICATE-----$/ { skip = 0; next }
    !skip { print }' "$2" >"$3"; }
cp report.txt otherkey.txt && resign otherkey.txt fake.key
expect "signed by another key" 1 "signature does not verify against the Guardian's signing certificate given" -- \
    verify otherkey.txt "${V[@]}"
expect "signed by another key, the OEM holding A alone" 1 "signature does not verify against the Guardian's signing certificate in the report" -- \
    verify otherkey.txt --guardian agreement.pem --ca-chain ca.pem
expect "the OEM holding A alone: S comes from the report" 0 "^OK$" -- \
    verify report.txt --guardian agreement.pem --ca-chain ca.pem --root root.pem
# The real A with another signing certificate, signed by its key: S did not issue A.
awk -v pem="$(cat fake-s.pem)" '
    /^-----BEGIN CERTIFICATE-----$/ { n++ } n == 2 && /^-----BEGIN/ { print pem; skip = 1; next }
    skip && /^-----END CERTIFICATE-----$/ { skip = 0; n++; next }
    !skip { print }' report.txt >othersigner.txt
resign othersigner.txt fake.key
expect "a signing certificate that did not issue the Guardian certificate" 1 "did not issue the Guardian certificate" -- \
    verify othersigner.txt --guardian agreement.pem --ca-chain ca.pem
expect "... nor is the one the OEM holds" 1 "signature does not verify against the Guardian's signing certificate given" -- \
    verify othersigner.txt "${V[@]}"
# A one-key report (the format before the signing key was split off): the
# Guardian certificate alone, its key signing.  Verifiable when that
# certificate may sign; the Guardian certificate of today (key agreement
# only) cannot stand for one.
openssl req -new -x509 -key fake-a.key -subj "/CN=Old Guardian" -days 30 -out old.pem \
    -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature,keyAgreement 2>/dev/null
embed old.pem report.txt onekey.txt && resign onekey.txt fake-a.key
expect "a one-key report verifies against its certificate" 0 "signature +valid \(Guardian identity key, one-key report\)" -- \
    verify onekey.txt --guardian old.pem --ca-chain ca.pem --root root.pem
embed agreement.pem report.txt onekeynew.txt && resign onekeynew.txt fake-a.key
expect "a one-key report naming a key-agreement-only certificate" 1 "the Guardian certificate may not sign" -- \
    verify onekeynew.txt --guardian agreement.pem --ca-chain ca.pem
# Across the upgrade: the earlier one-key report names the earlier
# certificate of the same agreement key; --previous accepts it.
embed fake.pem report.txt upgraded.txt && resign upgraded.txt fake.key
expect "--previous across the upgrade (same agreement key, certificate issued again)" 0 \
    "names the Guardian's earlier certificate for the same key" -- \
    verify upgraded.txt --guardian fake.pem --ca-chain ca.pem --root root.pem --previous onekey.txt
expect "--previous across the upgrade: extends it" 0 "head record 27 found unchanged: this report extends it" -- \
    verify upgraded.txt --guardian fake.pem --ca-chain ca.pem --root root.pem --previous onekey.txt
expect "checked against another Guardian certificate" 1 "the report names another Guardian" -- \
    verify report.txt --guardian fake.pem --ca-chain ca.pem --root root.pem

# Over quota: two more RESERVE+ISSUE under release 2 (3 units, 2 used), the chain
# re-hashed, the fake Guardian's certificate embedded and its signature: the
# signature then verifies against fake.pem, and the quota check still fails.
z64=$(printf '0%.0s' $(seq 64)) z32=$(printf '0%.0s' $(seq 32))
awk -v z64="$z64" -v z32="$z32" '
    $1 == "record" { last = $2; serial = ($3 == "RESERVE" && $7 > serial) ? $7 : serial }
    ($1 == "template" || $1 == "certificate") && !added {
        for (i = 1; i <= 2; i++) {
            print "record " last + 1 " RESERVE 1700000000 ACME SENSOR-1 " serial + i " - " z64 " " z32 " 0 0 - " z64 " " z64
            print "record " last + 2 " ISSUE 1700000000 ACME SENSOR-1 " serial + i " 4445562d58 " z64 " " z32 " 0 0 - " z64 " " z64
            last += 2
        }
        added = 1
    }
    { print }' report.txt >forged.txt
"$FIX" rehash forged.txt forged2.txt chain 28
embed fake.pem forged2.txt forged.txt
resign forged.txt fake.key
expect "over quota, forged and re-signed: quota" 1 "ACME/SENSOR-1 release 2: used 4 units \(reserved, not released\) at record 30 but the package authorised 3" -- \
    verify forged.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
expect "over quota, forged: the fake key's signature is valid" 1 "signature +valid" -- \
    verify forged.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
expect "over quota, forged: the Guardian counters disagree" 1 "the Guardian counts 2 units used of ACME/SENSOR-1 .* but the trail adds up to 4" -- \
    verify forged.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
expect "over quota, forged: against the real Guardian" 1 "signature does not verify" -- verify forged.txt "${V[@]}"
# The forged reservations are dated 2023: before the records they follow.
expect "forged with an old date: the clock ran backwards" 1 \
    "record 28 \(RESERVE of ACME/SENSOR-1\) is dated 2023-11-14T22:13:20Z, [0-9]+ s before record [0-9]+ \(.*\): the Guardian's clock was set back" -- \
    verify forged.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
# Appended after the report's own EXPORT record: not what the Guardian writes.
expect "records forged after the report's own EXPORT record" 1 \
    "the report does not end with its own EXPORT record: its last record is 31, after EXPORT record 27" -- \
    verify forged.txt --guardian fake.pem --ca-chain ca.pem --root root.pem

# --previous: a later report must extend an earlier one (same record at the
# earlier head).  A centre that rewrites its trail can re-sign it with the
# Guardian key it holds, but cannot keep the earlier head's hash.
expect "--previous: a report extends itself" 0 "head record 27 found unchanged: this report extends it" -- \
    verify report.txt "${V[@]}" --previous report.txt
embed_fake() { embed fake.pem "$1" "$2"; resign "$2" fake.key; }
embed_fake report.txt prevfake.txt
"$FIX" rehash altered.txt rewritten0.txt chain 3
embed_fake rewritten0.txt rewritten.txt
expect "--previous: the rewritten trail verifies on its own" 0 "^OK$" -- \
    verify rewritten.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
expect "--previous: a rewritten, re-signed trail does not extend the earlier report" 1 \
    "does not extend the previous one: record 27 differs" -- \
    verify rewritten.txt --guardian fake.pem --ca-chain ca.pem --root root.pem --previous prevfake.txt
expect "--previous: an earlier report from another Guardian is refused" 1 "is not signed by this Guardian" -- \
    verify report.txt "${V[@]}" --previous prevfake.txt

# ---- another OEM: its records are the only ones a restricted report redacts ---------------
mkdir beta && (cd beta && oem_pki 2>/dev/null)
"$CTL" enroll-oem beta/root.pem --oem-id BETA --yes >/dev/null 2>&1 || ko "enroll-oem BETA"
"$W" create --guardian-cert guardian.pem --signer-key beta/signer.key --signer-cert beta/signer.pem \
    --ca-key beta/ca.key --ca-cert beta/ca.pem --ca-chain beta/root.pem --oem-id BETA --product-id GADGET \
    --release 1 --units 4 --not-after +30 --out beta.gpk >/dev/null || ko "guardian-wrap create beta.gpk"
"$CTL" import beta.gpk >/dev/null || ko "import beta.gpk"
"$FIX" issue state beta/ca.key beta/ca.pem BETA GADGET 2 0 0 >/dev/null || ko "issue BETA/GADGET"
expect "export --product: another OEM's records redacted" 0 \
    "exported 35 records \(head 35, 5 of them redacted\), 10 certificates" -- \
    "$CTL" audit export --product ACME/SENSOR-1 --out acme.txt
expect "verify the ACME report" 0 "^OK$" -- verify acme.txt "${V[@]}" --package s1r1.gpk --package s1r2.gpk
grep -q 'BETA\|GADGET' acme.txt && ko "ACME's report names BETA" || ok "ACME's report hides BETA"
# ACME's 26 records and its two restricted exports (29, 35) redacted; the
# whole-trail exports (27, 28) are no OEM's and stay in clear.
expect "export --product for BETA" 0 "exported 36 records \(head 36, 28 of them redacted\), 2 certificates" -- \
    "$CTL" audit export --product BETA/GADGET --out beta.txt
expect "verify the BETA report" 0 "BETA/GADGET release 1 .*issued 2, .*certificates verified 2/2" -- \
    verify beta.txt --guardian guardian.pem --ca-chain beta/ca.pem --root beta/root.pem --package beta.gpk
grep -q 'ACME\|SENSOR-1' beta.txt && ko "BETA's report names ACME" || ok "BETA's report hides ACME"
grep -q '^record 27 EXPORT [0-9]* - - ' beta.txt && grep -q '^redacted 29 ' beta.txt &&
    ok "BETA's report shows the whole-trail exports, not ACME's" || ko "BETA's report mis-scopes the exports"
# A restricted report that shows another OEM's record in clear is refused.
awk 'FNR == NR { if ($1 == "record" && $5 == "BETA") clear[$2] = $0; next }
     $1 == "redacted" && ($2 in clear) && !done { print clear[$2]; done = 1; next } { print }' \
    beta.txt acme.txt >acme-leak.txt
expect "a restricted report with another OEM's record in clear" 1 "record [0-9]+ is of BETA/GADGET, outside the report's scope" -- \
    verify acme-leak.txt "${V[@]}"
# The centre's whole trail: two OEMs, two production CAs, two roots. Each
# certificate is checked against the chain whose CA issued it (--ca-chain and
# --root repeat); with ACME's chain alone BETA's certificates are named.
"$CTL" audit export --out centre.txt >/dev/null 2>&1 || ko "export the whole trail"
expect "a centre-wide report over two production CAs: OK" 0 "^OK$" -- verify centre.txt --guardian guardian.pem \
    --ca-chain ca.pem --ca-chain beta/ca.pem --root root.pem --root beta/root.pem
expect "... every certificate of both verified" 0 "BETA/GADGET release 1 .*issued 2, .*certificates verified 2/2" -- \
    verify centre.txt --guardian guardian.pem --ca-chain beta/ca.pem --ca-chain ca.pem --root beta/root.pem --root root.pem
expect "... with ACME's chain only, BETA's certificates do not verify" 1 \
    "certificate for serial [0-9]+ \(record [0-9]+\) does not verify against the production CA" -- \
    verify centre.txt "${V[@]}"
expect "... and with BETA's CA but not its root, its chain is named" 1 \
    "the production CA .* does not chain to the OEM root" -- \
    verify centre.txt --guardian guardian.pem --ca-chain ca.pem --ca-chain beta/ca.pem --root root.pem

# ---- operators and credentials --------------------------------------------------------------
# Every record names the operator logged in when it was written (set here by
# audit_fixture, as the module does at login); CREDENTIAL records say which
# credential changed, how, and who changed it - never a PIN or a hash.
cred() { AUDIT_FIXTURE_OPERATOR=$1 "$FIX" credential state "$2" "$3" || ko "credential $2 $3 by '$1'"; }
cred "" so-set so
cred so user-set alice
cred so user-set bob
for i in 1 2 3 4 5; do cred "" fail bob; done
cred alice changed alice
wrap OPS-5 1 6 o5r1.gpk
"$CTL" import o5r1.gpk >/dev/null || ko "import o5r1"
AUDIT_FIXTURE_OPERATOR=alice "$FIX" issue state ca.key ca.pem ACME OPS-5 3 1 0 >/dev/null || ko "issue OPS-5 as alice"
AUDIT_FIXTURE_OPERATOR=so "$FIX" issue state ca.key ca.pem ACME OPS-5 1 0 0 >/dev/null || ko "issue OPS-5 as so"
# An export by carol (its record: the report carol got is not this one).
AUDIT_FIXTURE_OPERATOR=carol "$FIX" export state || ko "an export record by carol"
# ACME's report (BETA's records redacted: its certificates need BETA's CA).
"$CTL" audit export --product ACME/OPS-5 --out ops.txt >/dev/null 2>&1 || ko "export with operators"
expect "a report with operators and credentials verifies" 0 "^OK$" -- verify ops.txt "${V[@]}" --package o5r1.gpk
expect "units issued per operator, per package" 0 "^    issued by operator: alice 3, so 1$" -- verify ops.txt "${V[@]}"
expect "units issued per operator, in all (an export is no unit)" 0 "^operators  units issued: alice 3, so 1, \(none\) 10$" -- \
    verify ops.txt "${V[@]}"
expect "an earlier export, by its operator" 0 "^export record [0-9]+ [-0-9T:]+Z by carol: scope all$" -- \
    verify ops.txt "${V[@]}"
expect "the report's own export" 0 "^exported by \(none\) at [-0-9T:]+Z \(record [0-9]+, the report's own\)$" -- \
    verify ops.txt "${V[@]}"
expect "credential event: the SO set" 0 "^credential record [0-9]+ [-0-9T:]+Z by \(none\): the SO PIN set$" -- \
    verify ops.txt "${V[@]}"
expect "credential event: an operator set by the SO" 0 "^credential record [0-9]+ .* by so: operator alice set or reset by the SO$" -- \
    verify ops.txt "${V[@]}"
expect "credential event: locked" 0 "^credential record [0-9]+ .* by \(none\): bob locked after 5 consecutive failed logins$" -- \
    verify ops.txt "${V[@]}"
expect "credential event: own PIN changed" 0 "^credential record [0-9]+ .* by alice: alice changed its own PIN$" -- \
    verify ops.txt "${V[@]}"
grep -q 'a5a5a5a5\|5a5a5a5a' ops.txt && ko "a credential's salt or hash is in the report" || ok "no credential secret in the report"
grep -q '^record [0-9]* CREDENTIAL [0-9]* - - 2 616c696365 0\{64\} 0\{32\} 0 0 so ' ops.txt &&
    ok "a CREDENTIAL line: no OEM, no product, action, subject, operator" || ko "no CREDENTIAL line for alice set by so"
# A report for another OEM shows the credential records too (they are no OEM's).
"$CTL" audit export --product BETA/GADGET --out beta-ops.txt >/dev/null 2>&1 || ko "export BETA with credentials"
expect "a restricted report shows the credential records" 0 "bob locked after 5 consecutive failed logins" -- \
    verify beta-ops.txt --guardian guardian.pem --ca-chain beta/ca.pem --root beta/root.pem
expect "... and verifies" 0 "^OK$" -- verify beta-ops.txt --guardian guardian.pem --ca-chain beta/ca.pem
# The operator is under the hash.
awk '$1 == "record" && $3 == "ISSUE" && $13 == "alice" && !done { $13 = "so"; done = 1 } { print }' ops.txt >opalt.txt
expect "an ISSUE's operator changed" 1 "record [0-9]+ was altered: its hash does not match its content" -- \
    verify opalt.txt "${V[@]}"
# Its operator dropped (the old encoding), the chain re-hashed and re-signed:
# a record without an operator after records that have one is no Guardian's.
seq=$(awk '$1 == "record" && $3 == "ISSUE" && $13 == "alice" { print $2; exit }' ops.txt)
awk -v seq="$seq" '$1 == "record" && $2 == seq { line = $1; for (i = 2; i <= NF; i++) if (i != 13 && i != 14) line = line " " $i; $0 = line } { print }' \
    ops.txt >opdrop0.txt
"$FIX" rehash opdrop0.txt opdrop1.txt chain "$seq"
embed_fake opdrop1.txt opdrop.txt
expect "an operator dropped, the trail re-hashed and re-signed" 1 \
    "record $seq has no operator \(the encoding of before operators were recorded\) but record [0-9]+ before it has one" -- \
    verify opdrop.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
# Its Guardian dropped (encoding 2), re-hashed and re-signed: a record that
# names no Guardian after records that do is no Guardian's either.
awk -v seq="$seq" '$1 == "record" && $2 == seq { line = $1; for (i = 2; i <= NF; i++) if (i != 14) line = line " " $i; $0 = line } { print }' \
    ops.txt >gddrop0.txt
"$FIX" rehash gddrop0.txt gddrop1.txt chain "$seq"
embed_fake gddrop1.txt gddrop.txt
expect "a Guardian dropped, the trail re-hashed and re-signed" 1 \
    "record $seq does not name its Guardian \(an encoding of before Guardians were recorded\) but record [0-9]+ before it does" -- \
    verify gddrop.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
# An ISSUE credited to another Guardian, re-hashed and re-signed: that
# Guardian never imported the package, so it cannot have spent its units.
other=$(printf other | sha256sum | cut -c1-64)
awk -v seq="$seq" -v g="$other" '$1 == "record" && $2 == seq { $14 = g } { print }' ops.txt >gdalt0.txt
"$FIX" rehash gdalt0.txt gdalt1.txt chain "$seq"
embed_fake gdalt1.txt gdalt.txt
expect "an ISSUE credited to a Guardian that did not import the package" 1 \
    "record $seq \(ISSUE of serial [0-9]+ of ACME/OPS-5 release [0-9]+\) was written by Guardian sha256:$other, which did not import that package" -- \
    verify gdalt.txt --guardian fake.pem --ca-chain ca.pem --root root.pem
awk -v g="$other" '$1 == "record" && $3 == "IMPORT" && !done { $14 = g; done = 1 } { print }' ops.txt >gdimp.txt
expect "... and its Guardian changed without re-hashing is an altered record" 1 "record [0-9]+ was altered: its hash does not match its content" -- \
    verify gdimp.txt "${V[@]}"
awk '$1 == "record" && $3 == "CREDENTIAL" && !done { line = $1; for (i = 2; i <= NF; i++) if (i != 13 && i != 14) line = line " " $i; $0 = line; done = 1 } { print }' \
    ops.txt >credold.txt
expect "a CREDENTIAL line without its operator" 1 "malformed report: line [0-9]+: a CREDENTIAL record names its operator" -- \
    verify credold.txt "${V[@]}"
# A CREDENTIAL record the store cannot have written: its subject is not whose
# credential the action changes (re-hashed and re-signed, so only the check
# of the record itself can tell).
awk '$1 == "record" && $3 == "CREDENTIAL" && $7 == 1 && !done { $8 = "616c696365"; done = 1 } { print }' ops.txt >credso0.txt
"$FIX" rehash credso0.txt credso1.txt chain "$(awk '$1 == "record" && $3 == "CREDENTIAL" && $7 == 1 { print $2; exit }' ops.txt)"
embed_fake credso1.txt credso.txt
expect "the SO's action naming an operator, re-hashed and re-signed" 1 "\(CREDENTIAL\) names alice for an action that is the SO's" -- \
    verify credso.txt --guardian fake.pem --ca-chain ca.pem
awk '$1 == "record" && $3 == "CREDENTIAL" && $7 == 2 && !done { $8 = "736f"; done = 1 } { print }' ops.txt >credso2.txt
"$FIX" rehash credso2.txt credso3.txt chain "$(awk '$1 == "record" && $3 == "CREDENTIAL" && $7 == 2 { print $2; exit }' ops.txt)"
embed_fake credso3.txt credso4.txt
expect "an operator's action naming so, re-hashed and re-signed" 1 "\(CREDENTIAL\) names so for an action that is an operator's" -- \
    verify credso4.txt --guardian fake.pem --ca-chain ca.pem

# EXPORT records: who exported is under the hash; a record the store cannot
# have written, or a report that does not end with its own, is caught even
# re-hashed and re-signed.
cseq=$(awk '$1 == "record" && $3 == "EXPORT" && $13 == "carol" { print $2; exit }' ops.txt)
own=$(awk '$1 == "head" { print $2 }' ops.txt)
awk -v s="$cseq" '$1 == "record" && $2 == s { $13 = "alice" } { print }' ops.txt >expop.txt
expect "an EXPORT record's operator changed" 1 "record $cseq was altered: its hash does not match its content" -- \
    verify expop.txt "${V[@]}"
awk -v s="$cseq" '$1 == "record" && $2 == s { line = $1; for (i = 2; i <= NF; i++) if (i != 13 && i != 14) line = line " " $i; $0 = line } { print }' \
    ops.txt >expold.txt
expect "an EXPORT line without its operator" 1 "malformed report: line [0-9]+: an EXPORT record names its operator" -- \
    verify expold.txt "${V[@]}"
awk -v s="$cseq" '$1 == "record" && $2 == s { $7 = 1 } { print }' ops.txt >expser0.txt
"$FIX" rehash expser0.txt expser1.txt chain "$cseq"
embed_fake expser1.txt expser.txt
expect "an EXPORT record's serial forged, re-hashed and re-signed" 1 \
    "record $cseq \(EXPORT\) is malformed: it needs serial $((cseq - 1)) \(the record before it\)" -- \
    verify expser.txt --guardian fake.pem --ca-chain ca.pem
awk -v s="$cseq" '$1 == "record" && $2 == s { $5 = "ACME"; $6 = "NEVER" } { print }' ops.txt >expnever0.txt
"$FIX" rehash expnever0.txt expnever1.txt chain "$cseq"
embed_fake expnever1.txt expnever.txt
expect "an export of a product never imported, re-hashed and re-signed" 1 \
    "record $cseq \(EXPORT\) is an export of ACME/NEVER, which no record before it imported" -- \
    verify expnever.txt --guardian fake.pem --ca-chain ca.pem
# The report's own EXPORT record cut off, the head moved back to the record
# before it (ACME's report, where that is a redacted BETA record) and the
# report re-signed: it no longer says who exported it, yet earlier exports
# show the Guardian records them.
awk 'FNR == NR { if ($1 == "head") h = $2; if ($2 == h - 1) prev = $NF; next }
     $1 == "head" { $0 = "head " h - 1 " " prev } !(($1 == "record" || $1 == "redacted") && $2 == h) { print }' \
    acme.txt acme.txt >expcut0.txt
embed_fake expcut0.txt expcut.txt
expect "the report's own EXPORT record removed, the head moved back, re-signed" 1 \
    "the report does not end with its own EXPORT record: its last record is 34, after EXPORT record 29" -- \
    verify expcut.txt --guardian fake.pem --ca-chain ca.pem
# ... or with an earlier EXPORT record then last: it is not this report's.
awk -v s="$own" '!($1 == "record" && $2 == s) { print }' ops.txt >expcut2.txt
"$FIX" rehash expcut2.txt expcut3.txt chain "$own"
embed_fake expcut3.txt expcut4.txt
expect "the report's own EXPORT record removed, carol's then last" 1 \
    "record $cseq, the report's own EXPORT record, is an export of all but the report's scope is ACME/OPS-5" -- \
    verify expcut4.txt --guardian fake.pem --ca-chain ca.pem
# Its scope or its time changed: not the report it is the record of.
awk -v s="$own" '$1 == "record" && $2 == s { $5 = "ACME"; $6 = "SENSOR-1" } { print }' ops.txt >expscope0.txt
"$FIX" rehash expscope0.txt expscope1.txt chain "$own"
embed_fake expscope1.txt expscope.txt
expect "the report's own EXPORT record naming another scope" 1 \
    "record $own, the report's own EXPORT record, is an export of ACME/SENSOR-1 but the report's scope is ACME/OPS-5" -- \
    verify expscope.txt --guardian fake.pem --ca-chain ca.pem
awk -v s="$own" '$1 == "record" && $2 == s { $4 = $4 - 3600 } { print }' ops.txt >exptime0.txt
"$FIX" rehash exptime0.txt exptime1.txt chain "$own"
embed_fake exptime1.txt exptime.txt
expect "the report's own EXPORT record dated otherwise than the report" 1 \
    "record $own, the report's own EXPORT record, is dated .* but the report says it was exported" -- \
    verify exptime.txt --guardian fake.pem --ca-chain ca.pem
# The ID "-" as an export's scope is written %2D: "- -" is the whole trail only.
awk -v s="$own" '$1 == "record" && $2 == s { $6 = "-" } { print }' ops.txt >expdash.txt
expect "an EXPORT record's scope half '-'" 1 "malformed report: line [0-9]+: an EXPORT record's scope is an OEM and a product ID" -- \
    verify expdash.txt "${V[@]}"

# A report made before operators were recorded (version 1: every record of
# the old encoding, 14 fields, no template lines) still verifies: report.txt
# as such a Guardian wrote it - magic 1, no operator field, hashed in the old
# encoding - signed by the fake Guardian.  Its releases' templates come from
# the OEM's package files (--package), as for any report without template
# lines.
V1P=(--package s1r1.gpk --package s1r2.gpk --package o2r1.gpk)
awk 'NR == 1 { $0 = "GUARDIAN AUDIT REPORT 1" }
     $1 == "template" { next }
     $1 == "record" && $3 == "EXPORT" { next }
     $1 == "record" { line = $1; for (i = 2; i <= NF; i++) if (i != 13 && i != 14) line = line " " $i; $0 = line } { print }' \
    report.txt >v1body.txt
"$FIX" rehash v1body.txt v1rehashed.txt chain 1
embed_fake v1rehashed.txt v1.txt
expect "a version 1 report still verifies" 0 "^OK$" -- verify v1.txt --guardian fake.pem --ca-chain ca.pem --root root.pem \
    "${V1P[@]}"
expect "... with its summary" 0 "ACME/SENSOR-1 release 1 .*authorised 10, reserved 8, released 1, issued 6, reserved-not-issued 1, remaining 3, certificates verified 6/6" -- \
    verify v1.txt --guardian fake.pem --ca-chain ca.pem "${V1P[@]}"
verify v1.txt --guardian fake.pem --ca-chain ca.pem "${V1P[@]}" | grep -q 'operator' && ko "a version 1 report shows operators" ||
    ok "a version 1 report shows no operator lines"
expect "... and says its exporter is not recorded" 0 "^exported by \(not recorded" -- \
    verify v1.txt --guardian fake.pem --ca-chain ca.pem "${V1P[@]}"
awk 'NR == 1 { $0 = "GUARDIAN AUDIT REPORT 1" } { print }' ops.txt >v1ops.txt
expect "a version 1 report with an operator line" 1 "malformed report: line [0-9]+: a record line of 16 fields \(with an operator and a Guardian\) in a version 1 report" -- \
    verify v1ops.txt "${V[@]}"

# ---- the real pipeline, when guardianctl has provision -----------------------------------
# Certificates made by the module's derive mechanism (CKM_GUARDIAN_DERIVE_DEVICE_CERT)
# must pass the same checks as the fixture's, profile included.
if "$CTL" --help | grep -q '^  provision'; then
    wrap REAL-3 1 5 r3r1.gpk
    "$CTL" import r3r1.gpk >/dev/null || ko "import r3r1"
    expect "provision 3 parts" 0 "provisioned 3 parts" -- "$CTL" provision --product ACME/REAL-3 --count 3 --out parts
    "$CTL" audit export --product ACME/REAL-3 --out real.txt 2>/dev/null || ko "export after provision"
    expect "provisioned certificates verify" 0 "ACME/REAL-3 release 1 .*issued 3, .*certificates verified 3/3" -- \
        verify real.txt "${V[@]}" --package r3r1.gpk --authorised 5 --product ACME/REAL-3
    "$CTL" provision --product ACME/REAL-3 --count 4 --out parts >/dev/null 2>&1 || ko "provision a fourth part"
    "$CTL" audit export --product ACME/REAL-3 --out real2.txt 2>/dev/null || ko "second export"
    expect "--previous: the next export extends the first" 0 "this report extends it" -- \
        verify real2.txt "${V[@]}" --previous real.txt
    expect "--previous: an older report cannot stand for a newer one" 1 "before the previous report's head" -- \
        verify real.txt "${V[@]}" --previous real2.txt

    # Releases with different device-extension settings in one report: REAL-3
    # has none (the default), EXT-5 the OEM's own OID, SENSOR-1 and OTHER-2
    # none.  Each release's template line carries its setting, so the report
    # verifies with no --device-ext-oid at all (before: one flag for the whole
    # report).
    wrap EXT-5 1 5 e5r1.gpk --device-ext-oid 1.3.6.1.4.1.55555.1
    "$CTL" import e5r1.gpk >/dev/null || ko "import e5r1"
    # SUBJ-6: another subject pattern (checked against each certificate too).
    wrap SUBJ-6 1 5 s6r1.gpk --subject 'CN=${device_id},O=${oem_id}'
    "$CTL" import s6r1.gpk >/dev/null || ko "import s6r1"
    expect "provision EXT-5" 0 "provisioned 2 parts" -- "$CTL" provision --product ACME/EXT-5 --count 2 --out parts-e5
    expect "provision SUBJ-6" 0 "provisioned 1 parts" -- "$CTL" provision --product ACME/SUBJ-6 --count 1 --out parts-s6
    # ACME's report: all of ACME's products in clear (BETA's, under another
    # production CA, redacted: one --ca-chain per report).
    "$CTL" audit export --product ACME/EXT-5 --out mixed.txt 2>/dev/null || ko "export ACME's products"
    expect "two extension settings in one report: OK" 0 "^OK$" -- \
        verify mixed.txt "${V[@]}" --package r3r1.gpk --package e5r1.gpk
    expect "... the OEM OID's release verified" 0 "ACME/EXT-5 release 1 .*issued 2, .*certificates verified 2/2" -- \
        verify mixed.txt "${V[@]}"
    expect "... the release without the extension verified" 0 "ACME/REAL-3 release 1 .*issued 4, .*certificates verified 4/4" -- \
        verify mixed.txt "${V[@]}"
    r3=$(awk '$1 == "record" && $3 == "IMPORT" && $6 == "REAL-3" { print $2 }' mixed.txt)
    e5=$(awk '$1 == "record" && $3 == "IMPORT" && $6 == "EXT-5" { print $2 }' mixed.txt)
    e5cert=$(awk -v s="$e5" '$1 == "record" && $3 == "ISSUE" && $6 == "EXT-5" { print $2; exit }' mixed.txt)
    awk -v s="$e5cert" '$1 == "certificate" && $2 == s { print $3 }' mixed.txt | base64 -d >e5.der
    openssl x509 -inform DER -in e5.der -noout -text | grep -q '1\.3\.6\.1\.4\.1\.55555\.1' &&
        ok "EXT-5's certificate carries the OEM's extension" || ko "EXT-5's certificate lacks the OEM's extension"
    r3cert=$(awk '$1 == "record" && $3 == "ISSUE" && $6 == "REAL-3" { print $2; exit }' mixed.txt)
    awk -v s="$r3cert" '$1 == "certificate" && $2 == s { print $3 }' mixed.txt | base64 -d >r3.der
    openssl x509 -inform DER -in r3.der -noout -text | grep -q '2\.25\.' &&
        ko "REAL-3's certificate carries the 2.25 extension" || ok "REAL-3's certificate has no device extension"
    # Tampered: EXT-5's template line replaced by REAL-3's, re-signed (by the
    # fake Guardian, so the signature verifies): EXT-5's certificates carry an
    # extension that template does not give.
    awk -v r="$r3" -v e="$e5" '$1 == "template" && $2 == r { t = $3 } { line[NR] = $0; f2[NR] = $2; f1[NR] = $1 }
        END { for (i = 1; i <= NR; i++) print (f1[i] == "template" && f2[i] == e ? "template " e " " t : line[i]) }' \
        mixed.txt >mixswap0.txt
    embed_fake mixswap0.txt mixswap.txt
    expect "a release's template swapped: its certificates do not match" 1 \
        "record $e5cert\) does not match the certificate profile: it has an extension its release's template does not give" -- \
        verify mixswap.txt --guardian fake.pem --ca-chain ca.pem
    expect "... and the OEM's package says otherwise" 1 "record $e5 imports package e5r1.gpk but the report's template of it differs from the package's" -- \
        verify mixswap.txt --guardian fake.pem --ca-chain ca.pem --package e5r1.gpk
    expect "... and the genuine signature no longer verifies" 1 "signature does not verify" -- verify mixswap0.txt "${V[@]}"
    # REAL-3's template line replaced by SUBJ-6's (same extension setting,
    # another subject pattern): REAL-3's certificates do not have that subject.
    s6=$(awk '$1 == "record" && $3 == "IMPORT" && $6 == "SUBJ-6" { print $2 }' mixed.txt)
    awk -v r="$r3" -v e="$s6" '$1 == "template" && $2 == e { t = $3 } { line[NR] = $0; f2[NR] = $2; f1[NR] = $1 }
        END { for (i = 1; i <= NR; i++) print (f1[i] == "template" && f2[i] == r ? "template " r " " t : line[i]) }' \
        mixed.txt >mixsubj0.txt
    embed_fake mixsubj0.txt mixsubj.txt
    expect "a release's subject pattern swapped: its certificates do not match" 1 \
        "record $r3cert\) does not match the certificate profile: its subject is not the release's subject pattern filled with the record's IDs" -- \
        verify mixsubj.txt --guardian fake.pem --ca-chain ca.pem
    # A template line dropped from a version 3 report: EXT-5 then falls back to
    # the legacy default, and its certificates do not match that either.
    grep -v "^template $e5 " mixed.txt >mixdrop0.txt
    embed_fake mixdrop0.txt mixdrop.txt
    expect "a release's template removed: checked against the legacy default, fails" 1 \
        "record $e5cert\) does not match the certificate profile: it has no Guardian device extension" -- \
        verify mixdrop.txt --guardian fake.pem --ca-chain ca.pem
else
    ok "guardianctl provision not built yet: certificates from audit_fixture only"
fi

# ---- a lost issue journal ----------------------------------------------------------------
# A line killed mid-production leaves its issue journal for the next opener to
# fold.  Deleted, or cut inside a record, the certificates it recorded are
# gone: the next opener (here the export) writes a JOURNAL-LOST record naming
# the serials the line held open, and the OEM's verifier fails the report.
wrap LOST-4 1 10 l4r1.gpk
"$CTL" import l4r1.gpk >/dev/null || ko "import l4r1"
# die OEM PRODUCT ISSUE RELEASE KEEP: audit_fixture issue ... die, without the shell's "Killed" line.
die() { bash -c '"$@" >/dev/null 2>&1; exit 0' die "$FIX" issue state ca.key ca.pem "$@" die 2>/dev/null; }
die ACME LOST-4 1 0 1 # serials 1..2, killed
set -- state/issued-*.journal
[ $# -eq 1 ] && [ -f "$1" ] || ko "the killed line left one journal ($*)"
pid=${1#state/issued-}; pid=${pid%%-*}
rm -f "$1"
"$CTL" audit export --out lost.txt 2>/dev/null || ko "export after a deleted journal"
grep -q '^record [0-9]* JOURNAL-LOST .* ACME LOST-4 1 ' lost.txt && ok "the export carries the JOURNAL-LOST record" ||
    ko "no JOURNAL-LOST record in the export"
expect "a deleted journal fails the report" 1 \
    "issue journal of process $pid lost: serials 1\.\.2 of ACME/LOST-4 may have been issued without a record \(record [0-9]+: journal issued-$pid-[0-9]+\.journal missing\)" -- \
    verify lost.txt "${V[@]}"
expect "its units stay counted" 1 "ACME/LOST-4 release 1 .*reserved 2, released 0, issued 0, reserved-not-issued 2 \(2 of them in a lost issue journal\), remaining 8" -- \
    verify lost.txt "${V[@]}"
die ACME LOST-4 3 0 1 # serials 3..6, killed
set -- state/issued-*.journal
[ $# -eq 1 ] && [ -f "$1" ] || ko "the killed line left one journal ($*)"
pid=${1#state/issued-}; pid=${pid%%-*}
truncate -s -5 "$1"
"$CTL" audit export --product ACME/LOST-4 --out lost2.txt 2>/dev/null || ko "export after a cut journal"
expect "a journal cut inside a record fails the report" 1 \
    "issue journal of process $pid lost: serials 5\.\.6 of ACME/LOST-4 may have been issued without a record \(record [0-9]+: journal issued-$pid-[0-9]+\.journal damaged\)" -- \
    verify lost2.txt "${V[@]}" --package l4r1.gpk
expect "what the cut journal still held is issued" 1 "ACME/LOST-4 release 1 .*reserved 6, released 0, issued 2, .*certificates verified 2/2" -- \
    verify lost2.txt "${V[@]}"

# ---- malformed input and usage -----------------------------------------------------------
head -n -1 report.txt >truncated.txt
expect "truncated" 1 "ends without its signature line" -- verify truncated.txt "${V[@]}"
expect "garbage" 1 "malformed report: line 1: not a Guardian audit report" -- verify root.pem "${V[@]}"
edit badline.txt '$1 == "record" && $2 == 2 { $0 = $0 " extra" } { print }'
expect "an extra field" 1 "malformed report: line [0-9]+: a record line has 14 fields" -- verify badline.txt "${V[@]}"
edit upper.txt '$1 == "record" && $2 == 2 { $15 = toupper($15) } { print }'
expect "upper-case hex" 1 "malformed report: line [0-9]+: bad prev_hash or hash" -- verify upper.txt "${V[@]}"
edit upperg.txt '$1 == "record" && $2 == 2 { $14 = toupper($14) } { print }'
expect "upper-case hex in the Guardian" 1 "malformed report: line [0-9]+: bad Guardian \(the SHA-256 of its certificate" -- \
    verify upperg.txt "${V[@]}"
printf '\r' >>truncated.txt
expect "a carriage return" 1 "malformed report: line [0-9]+" -- verify truncated.txt "${V[@]}"

verify missing.txt "${V[@]}" >/dev/null 2>&1; rc=$?
# One exit convention for both tools: a file that cannot be read is 1 (failed), 2 only a usage error.
[ $rc -eq 1 ] && ok "missing report: exit 1" || ko "missing report: exit $rc"
verify report.txt --ca-chain ca.pem >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "missing --guardian: exit 2" || ko "missing --guardian: exit $rc"
verify altered.txt "${V[@]}" >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && ok "a failed verification: exit 1" || ko "a failed verification: exit $rc"

finish
