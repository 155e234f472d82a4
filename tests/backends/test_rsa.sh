#!/usr/bin/env bash
# test_rsa.sh <guardian-pkcs11.so> <guardianctl> <guardian-wrap> <mechlist> —
# a Guardian on opencryptoki's soft token, which has no EC at all
# (docs/backends.md): `guardianctl init` chooses RSA by the slot's mechanism
# list (no CKM_EC_KEY_PAIR_GEN), S and A verify with openssl (signed with
# CKM_RSA_PKCS over a DigestInfo: no CKM_SHA256_RSA_PKCS there), the CSR
# verifies, the audit report (signed by the RSA key) passes verify-report and
# a changed signature character fails it, the unwrap mechanism is advertised
# because its RSA-OAEP-SHA256 self-test passes (OAEP with a label, another
# label refused, CBC-PAD unwrap of a key whose value is checked), a production
# CA key (RSA) made there gets a CSR and binding certify-ca accepts,
# guardian-wrap picks the RSA-OAEP transport for this Guardian, and the import
# stops where opencryptoki stops it today: no OEM root can be enrolled there
# (enroll-oem: CKR_ATTRIBUTE_TYPE_INVALID; CKA_TRUSTED:
# CKR_TEMPLATE_INCONSISTENT), so the package is refused with nothing made.
# Where enroll-oem succeeds (the store-recorded enrolment), the test goes on:
# a tamper sweep (no flip imported, nothing made), the import, provision and
# openssl verify of 3 device certificates.
. "$(dirname "$0")/../interop/lib.sh"
. "$(dirname "$0")/lib.sh"

KIND=opencryptoki
INTEROP_NAME=rsa_$KIND
for f in "$1" "$2" "$3" "$4"; do
    if [ ! -f "$f" ]; then
        printf 'FAIL %s: %s does not exist\n0 passed, 1 failed\n' "$INTEROP_NAME" "$f"
        exit 1
    fi
done
G=$(readlink -f "$1") CTL=$(readlink -f "$2") W=$(readlink -f "$3") ML=$(readlink -f "$4")

backend_test_start rsa rsa
L=$BACKEND_LABEL
{
    printf 'backend = %s\n' "$BACKEND_MODULE"
    printf 'state_dir = %s\n' "$WORK/state"
} >"$WORK/guardian.conf"
ctl() {
    backend_exec env GUARDIAN_CONF="$WORK/guardian.conf" GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" \
        GUARDIAN_PIN="$BACKEND_USER_PIN" GUARDIAN_SO_PIN="$BACKEND_SO_PIN" "$CTL" "$@"
}

t0=$(date +%s%N)
check "init on a token without EC: RSA keys" ctl init --out "$WORK/out/guardian.pem"
t1=$(date +%s%N)
info "opencryptoki: guardianctl init (two RSA-3072 key pairs, S and A) took $(((t1 - t0) / 1000000)) ms"
ctl init >out/init2.log 2>&1
check_grep "init again: idempotent" "already initialized" out/init2.log
csplit -s -z -f out/cert out/guardian.pem '/BEGIN CERTIFICATE/' '{*}'
openssl x509 -in out/cert00 -noout -text >out/a.txt 2>&1
openssl x509 -in out/cert01 -noout -text >out/s.txt 2>&1
check_grep "A: an RSA 3072 key" "Public-Key: \(3072 bit\)" out/a.txt
check_grep "A: keyEncipherment" "Key Encipherment" out/a.txt
check_grep "S: sha256WithRSAEncryption" "Signature Algorithm: sha256WithRSAEncryption" out/s.txt
check "openssl verify: S issued A" openssl verify -CAfile out/cert01 out/cert00
check "openssl verify: S is self-signed" openssl verify -CAfile out/cert01 out/cert01
check_fails "init --key-type p256 refused (no type change)" ctl init --key-type p256
check "init --csr" ctl init --csr "$WORK/out/s.csr"
check "the CSR verifies (RSA, signed in opencryptoki)" openssl req -in out/s.csr -verify -noout

# The unwrap is advertised by its RSA-OAEP self-test.
backend_exec env "GUARDIAN_CONF=$WORK/guardian.conf" GUARDIAN_DEBUG=1 "$ML" "$G" "$L" --iface 2.40 \
    >out/mechs 2>out/mechs.err || true
check_grep "CKM_GUARDIAN_UNWRAP_PACKAGE advertised" "^0xc7440001" out/mechs
{ grep -h "selftest: .*UNWRAP" out/mechs.err || true; } | sed 's/^guardian\[[0-9]*\]: debug: /opencryptoki: /' |
    while read -r line; do info "$line"; done

# The audit report, signed in opencryptoki by the RSA-3072 signing key.
check "audit export" ctl audit export --out "$WORK/out/report.txt"
check_grep "the report's signature line" "^signature " out/report.txt
# An OEM PKI; guardian-wrap picks RSA-OAEP for this Guardian; the import stops at the roots.
openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/root.key -subj "/CN=ACME Root" \
    -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out out/root.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/signer.key -subj "/CN=ACME Signer" \
    -out out/signer.csr 2>/dev/null
openssl x509 -req -in out/signer.csr -CA out/root.pem -CAkey out/root.key -days 30 -out out/signer.pem \
    -extfile <(echo keyUsage=critical,digitalSignature) 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout out/ca.key -subj "/CN=ACME RSA CA" -out out/ca.csr 2>/dev/null
openssl x509 -req -in out/ca.csr -CA out/root.pem -CAkey out/root.key -days 30 -out out/ca.pem \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n') 2>/dev/null
# The production CA key made in opencryptoki (RSA 2048), its CSR and the
# binding signed by the RSA signing key; certify-ca checks both.
check "ca-request: an RSA CA key made in opencryptoki" ctl ca-request --product ACME/SENSOR-1 \
    --subject "/O=ACME/CN=ACME SENSOR-1 CA" --key-type rsa2048 --out "$WORK/out/sensor.csr"
check "the CA key's CSR verifies" openssl req -in out/sensor.csr -verify -noout
check "certify-ca: the RSA Guardian's binding verifies" "$W" certify-ca --guardian-cert out/guardian.pem \
    --oem-id ACME --product-id SENSOR-1 --ca-key out/root.key --ca-cert out/root.pem --csr out/sensor.csr \
    --out out/pca.pem
check "openssl verify: the production CA up to the OEM root" openssl verify -CAfile out/root.pem out/pca.pem
check "verify-report: the RSA Guardian's report OK" "$W" verify-report out/report.txt --guardian out/guardian.pem \
    --ca-chain out/pca.pem --root out/root.pem
awk '/^signature / { c = substr($0, 31, 1); $0 = substr($0, 1, 30) (c == "A" ? "B" : "A") substr($0, 32) } 1' \
    out/report.txt >out/bad.txt
if cmp -s out/report.txt out/bad.txt; then
    fail "a changed report signature" "the edit changed nothing"
else
    check_fails "verify-report: a changed signature character refused" "$W" verify-report out/bad.txt \
        --guardian out/guardian.pem --ca-chain out/pca.pem --root out/root.pem
fi
check "guardian-wrap create for the RSA Guardian" "$W" create --guardian-cert out/guardian.pem \
    --signer-key out/signer.key --signer-cert out/signer.pem --ca-key out/ca.key --ca-cert out/ca.pem \
    --ca-chain out/root.pem --oem-id ACME --product-id RSA-1 --release 1 --units 3 --not-after +30 --out out/p.gpk
"$W" inspect out/p.gpk >out/inspect.txt 2>&1
check_grep "the package's transport is RSA-OAEP-SHA256" "transport +RSA-OAEP-SHA256" out/inspect.txt
count_objects() {
    backend_exec pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O \
        2>/dev/null | grep -c 'Object;' || true
}
before=$(count_objects)
if ctl enroll-oem "$WORK/out/root.pem" --oem-id ACME --yes >out/enrol.log 2>&1; then
    # Enrolment works on this token (the store-recorded enrolment): the
    # whole RSA-OAEP import, its tamper sweep, provision and openssl verify.
    pass "enroll-oem"
    before=$(count_objects)
    python3 - out/p.gpk out/t <<'PY'
import os, sys
d = open(sys.argv[1], "rb").read()
os.makedirs(sys.argv[2], exist_ok=True)
for i in range(0, len(d), 7):   # every 7th byte: a flip anywhere is refused
    b = bytearray(d); b[i] ^= 0x01
    open(os.path.join(sys.argv[2], "%05d.gpk" % i), "wb").write(b)
PY
    accepted=0
    for f in out/t/*.gpk; do
        if ctl import "$WORK/$f" >/dev/null 2>&1; then accepted=$((accepted + 1)); fi
    done
    check_eq "tamper sweep: no flipped package is imported" 0 "$accepted"
    check_eq "tamper sweep: nothing created" "$before" "$(count_objects)"
    check "import: the RSA-OAEP package" ctl import "$WORK/out/p.gpk"
    check "provision 3 parts" ctl provision --product ACME/RSA-1 --count 3 --out "$WORK/out/run"
    n=0
    for f in out/run/*.pem; do
        openssl verify -CAfile out/root.pem -untrusted out/ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
    done
    check_eq "openssl verify: 3 device certificates up to the OEM root" 3 "$n"
else
    # Today: opencryptoki refuses CKA_TRUSTED (CKR_TEMPLATE_INCONSISTENT),
    # so no root can be enrolled and the import stops at the roots.
    while read -r line; do info "enroll-oem: $line"; done <out/enrol.log
    ctl import "$WORK/out/p.gpk" >out/import.log 2>&1 || true
    while read -r line; do info "import: $line"; done <out/import.log
    check_grep "import refused: no OEM root can be enrolled on opencryptoki" \
        "CKR_GUARDIAN_(UNTRUSTED_SIGNER|OEM_NOT_ENROLLED)|not enrolled|no OEM root" out/import.log
    check_eq "nothing created by the refused import" "$before" "$(count_objects)"
fi
finish
