#!/usr/bin/env bash
# test_rsa.sh <guardian-pkcs11.so> <guardianctl> <guardian-wrap> <mechlist> —
# a Guardian on opencryptoki's soft token, which has no EC at all
# (docs/backends.md, docs/backends/opencryptoki.md), in credentials mode
# (backend_pin_file, no backend_so_pin_file: nobody can make a trusted
# certificate there, so the roots are the ledger's, enrolled by the Guardian
# SO; docs/service-mode.md): `guardianctl init` chooses RSA by the slot's
# mechanism list (no CKM_EC_KEY_PAIR_GEN), S and A verify with openssl
# (signed with CKM_RSA_PKCS over a DigestInfo: no CKM_SHA256_RSA_PKCS there),
# the CSR verifies, the audit report (signed by the RSA key) passes
# verify-report and a changed signature character fails it, the unwrap
# mechanism is advertised because its RSA-OAEP-SHA256 self-test passes
# (in-process; credentials mode lists no vendor mechanism), a production CA
# key made there without --key-type is RSA 2048 (the slot's default) and gets
# a CSR and binding certify-ca accepts, guardian-wrap picks the RSA-OAEP
# transport for this Guardian; then the OEM root enrolled in the ledger, a
# tamper sweep (no flip imported, nothing made), a package with an EC CA key
# refused as such (no EC here) with nothing made, the import of an RSA CA key
# and a confidential item, what the backend itself says of them (read
# straight on opencryptoki with the backend's PIN: sensitive, never
# extractable, the private exponent and the item's value refused), the CA
# key's CKA_ID not changed by the operator through the module (a key of the
# operator's own changes), provision
# and openssl verify of 3 device certificates, and a second import traced
# with pkcs11-spy between the module and opencryptoki: one CKM_RSA_PKCS_OAEP
# unwrap, CKM_AES_CBC_PAD unwraps, no C_Decrypt, and no byte of the CA key's
# private values or of the item in the trace (control: the CA certificate's
# bytes are found).
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
SO_PIN=guardian-so-secret
ALICE=alice:alice-secret-1
SPY=${PKCS11SPY_MODULE:-/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so}
umask 077
printf '%s\n' "$BACKEND_USER_PIN" >"$WORK/backend.pin"
umask 022
conf() { # FILE BACKEND [STATE]: a configuration in credentials mode
    {
        printf 'backend = %s\n' "$2"
        printf 'state_dir = %s\n' "${3:-$WORK/state}"
        printf 'pin_kdf_cost = 1024\n'
        printf 'backend_pin_file = %s\n' "$WORK/backend.pin"
    } >"$1"
}
conf "$WORK/guardian.conf" "$BACKEND_MODULE"
# The same module through pkcs11-spy (its backend opencryptoki), same state.
conf "$WORK/spy.conf" "$SPY"
# In-process, a state of its own: the mechanism list (the self-test needs no login).
mkdir -m 700 "$WORK/probe-state"
printf 'backend = %s\nstate_dir = %s\n' "$BACKEND_MODULE" "$WORK/probe-state" >"$WORK/inprocess.conf"
# Every client runs in $WORK (backend_exec enters opencryptoki's namespace,
# which does not keep the working directory).
bx() { backend_exec env -C "$WORK" "$@"; }
ctl() {
    bx GUARDIAN_CONF="$WORK/guardian.conf" GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" \
        GUARDIAN_PIN="$ALICE" GUARDIAN_SO_PIN="$SO_PIN" "$CTL" "$@"
}
must "Guardian SO set through the module (C_InitToken)" bx GUARDIAN_CONF="$WORK/guardian.conf" \
    pkcs11-tool --module "$G" --token-label "$L" --init-token --label "$L" --so-pin "$SO_PIN"
must "operator alice set by the SO (C_InitPIN)" bx GUARDIAN_CONF="$WORK/guardian.conf" \
    pkcs11-tool --module "$G" --token-label "$L" --init-pin --login --login-type so --so-pin "$SO_PIN" \
    --new-pin "$ALICE"

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
bx "GUARDIAN_CONF=$WORK/inprocess.conf" GUARDIAN_DEBUG=1 "$ML" "$G" "$L" --iface 2.40 \
    >out/mechs 2>out/mechs.err || true
check_grep "CKM_GUARDIAN_UNWRAP_PACKAGE advertised" "^0xc7440001" out/mechs
{ grep -h "selftest: .*UNWRAP" out/mechs.err || true; } | sed 's/^guardian\[[0-9]*\]: debug: /opencryptoki: /' |
    while read -r line; do info "$line"; done

# The audit report, signed in opencryptoki by the RSA-3072 signing key.
check "audit export" ctl audit export --out "$WORK/out/report.txt"
check_grep "the report's signature line" "^signature " out/report.txt
# An OEM PKI; guardian-wrap picks RSA-OAEP for this Guardian.
openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/root.key -subj "/CN=ACME Root" \
    -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out out/root.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/signer.key -subj "/CN=ACME Signer" \
    -out out/signer.csr 2>/dev/null
openssl x509 -req -in out/signer.csr -CA out/root.pem -CAkey out/root.key -days 30 -out out/signer.pem \
    -extfile <(echo keyUsage=critical,digitalSignature) 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout out/ca.key -subj "/CN=ACME RSA CA" -out out/ca.csr 2>/dev/null
openssl x509 -req -in out/ca.csr -CA out/root.pem -CAkey out/root.key -days 30 -out out/ca.pem \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n') 2>/dev/null
# The production CA key made in opencryptoki without --key-type: the slot has
# no EC, so RSA 2048; its CSR and the binding signed by the RSA signing key;
# certify-ca checks both.
ctl ca-request --product ACME/SENSOR-1 --subject "/O=ACME/CN=ACME SENSOR-1 CA" --out "$WORK/out/sensor.csr" \
    >out/ca-request.log 2>&1
check_grep "ca-request without --key-type: RSA 2048 on a slot without EC" "^made a production CA key pair .*\(RSA 2048;" \
    out/ca-request.log
openssl req -in out/sensor.csr -noout -text >out/sensor.txt 2>&1
check_grep "the CA key's CSR holds an RSA 2048 key" "Public-Key: \(2048 bit\)" out/sensor.txt
check "the CA key's CSR verifies" openssl req -in out/sensor.csr -verify -noout
check_fails "ca-request --key-type p256 refused on a slot without EC" ctl ca-request --product ACME/SENSOR-2 \
    --subject "/O=ACME/CN=ACME SENSOR-2 CA" --key-type p256 --out "$WORK/out/sensor2.csr"
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
head -c 48 /dev/urandom >out/boot.secret
wrap_create() { # PRODUCT OUT
    "$W" create --guardian-cert out/guardian.pem --signer-key out/signer.key --signer-cert out/signer.pem \
        --ca-key out/ca.key --ca-cert out/ca.pem --ca-chain out/root.pem --oem-id ACME --product-id "$1" \
        --release 1 --units 3 --not-after +30 --secret-data bootkey=out/boot.secret --out "$2"
}
check "guardian-wrap create for the RSA Guardian (an RSA CA key, a confidential item)" wrap_create RSA-1 out/p.gpk
"$W" inspect out/p.gpk >out/inspect.txt 2>&1
check_grep "the package's transport is RSA-OAEP-SHA256" "transport +RSA-OAEP-SHA256" out/inspect.txt
count_objects() {
    bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O \
        2>/dev/null | grep -c 'Object;' || true
}

# The OEM root, in the ledger (the Guardian SO; nobody makes a trusted
# certificate on opencryptoki).
check "enroll-oem by the Guardian SO (the ledger)" ctl enroll-oem "$WORK/out/root.pem" --oem-id ACME --yes
before=$(count_objects)
python3 - out/p.gpk out/t <<'PY'
import os, sys
d = open(sys.argv[1], "rb").read()
os.makedirs(sys.argv[2], exist_ok=True)
for i in range(0, len(d), 7):   # every 7th byte: a flip anywhere is refused
    b = bytearray(d); b[i] ^= 0x01
    open(os.path.join(sys.argv[2], "%05d.gpk" % i), "wb").write(b)
PY
accepted=0 tried=0
for f in out/t/*.gpk; do
    tried=$((tried + 1))
    if ctl import "$WORK/$f" >/dev/null 2>&1; then accepted=$((accepted + 1)); fi
done
info "opencryptoki: tamper sweep of $tried flipped packages"
check_eq "tamper sweep: no flipped package is imported" 0 "$accepted"
check_eq "tamper sweep: nothing created" "$before" "$(count_objects)"
# An EC CA key cannot enter this token: refused as that, nothing made, and
# not recorded (the RSA package of the same product imports below).
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout out/ecca.key -subj "/CN=ACME EC CA" \
    -out out/ecca.csr 2>/dev/null
openssl x509 -req -in out/ecca.csr -CA out/root.pem -CAkey out/root.key -days 30 -out out/ecca.pem \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n') 2>/dev/null
"$W" create --guardian-cert out/guardian.pem --signer-key out/signer.key --signer-cert out/signer.pem \
    --ca-key out/ecca.key --ca-cert out/ecca.pem --ca-chain out/root.pem --oem-id ACME --product-id RSA-1 \
    --release 1 --units 3 --not-after +30 --out out/ec.gpk >/dev/null 2>&1 || fail "guardian-wrap create (EC CA key)" "failed"
bx GUARDIAN_CONF="$WORK/guardian.conf" GUARDIAN_DEBUG=info GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" \
    GUARDIAN_PIN="$ALICE" "$CTL" import "$WORK/out/ec.gpk" >out/ec-import.log 2>&1 &&
    fail "an EC CA key package" "imported on a token without EC" out/ec-import.log
check_grep "an EC CA key refused as such (this token has no EC)" "is an EC key, and this token has no EC" \
    out/ec-import.log
check_eq "... nothing created" "$before" "$(count_objects)"
t0=$(date +%s%N)
check "import: the RSA-OAEP package" ctl import "$WORK/out/p.gpk"
info "opencryptoki: guardianctl import (RSA-OAEP) took $((($(date +%s%N) - t0) / 1000000)) ms"

# What opencryptoki itself says of the imported secrets, read straight on the
# backend with its PIN (the bench's tester, or whoever took backend.pin).
bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" -O \
    >out/objects.txt 2>&1 || true
awk '/^[A-Z][a-z]+ (Key )?Object/ { o = $0 } /label:/ { l = $2 } /Access:/ { print l " | " o " | " $0 }' out/objects.txt \
    >out/access.txt
# pkcs11-tool's Access line: "sensitive" for CKA_SENSITIVE, "extractable"
# for CKA_EXTRACTABLE ("never extractable" is CKA_NEVER_EXTRACTABLE, false
# for any unwrapped key).
sealed_line() { # LINE: sensitive and not extractable?
    grep -q 'Access: *sensitive' <<<"$1" && ! sed 's/never extractable//' <<<"$1" | grep -q -w extractable
}
for k in production-ca bootkey; do
    line=$(grep -m1 ":$k |" out/access.txt || true)
    check_eq "the imported $k on the backend itself: sensitive, not extractable" yes \
        "$(sealed_line "$line" && echo yes || echo "no: $line")"
done
# ... and their secret values refused to the backend's own user (control:
# the CA certificate, which is no secret, reads).
bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" --read-object \
    --type cert --label "guardian:ACME/RSA-1/r1:production-ca-cert0" -o "$WORK/out/read-cert" >out/read.log 2>&1 || true
check "control: the imported CA certificate reads straight off opencryptoki" cmp -s out/read-cert <(openssl x509 \
    -in out/ca.pem -outform DER)
for a in "privkey production-ca" "secrkey bootkey"; do
    bx pkcs11-tool --module "$BACKEND_MODULE" --token-label "$L" --login --pin "$BACKEND_USER_PIN" --read-object \
        --type "${a% *}" --label "guardian:ACME/RSA-1/r1:${a#* }" -o "$WORK/out/read-${a#* }" >out/read.log 2>&1 || true
    check_eq "reading ${a#* }'s value straight off opencryptoki gets nothing" 0 \
        "$(stat -c %s "$WORK/out/read-${a#* }" 2>/dev/null || echo 0)"
done
# Through the module the operator changes none of the imported keys (the
# policy, whatever the backend allows), while a key of the operator's own
# changes (control).
pkg_id=$(awk '$1 == "package" && $2 == "id" { print $3; exit }' out/inspect.txt)
mod() { bx GUARDIAN_CONF="$WORK/guardian.conf" pkcs11-tool --module "$G" --token-label "$L" --login --pin "$ALICE" "$@"; }
check "control: alice makes a key pair of her own through the module" mod --keypairgen --key-type rsa:1024 \
    --id 99 --label alice-own
check "control: alice changes her own key's CKA_ID through the module" mod --type privkey --id 99 --set-id 98
check_eq "the package ID (the CA key's CKA_ID) read from inspect" 1 "$(grep -c -E "^[0-9a-f]{32}$" <<<"$pkg_id")"
mod --type privkey --id "$pkg_id" --set-id 01 >out/set-ca.log 2>&1 && fail "the imported CA key's CKA_ID" \
    "changed through the module" out/set-ca.log
check_grep "alice cannot change the imported CA key's CKA_ID through the module (the policy)" \
    "policy: C_SetAttributeValue refused: .* production CA key" out/set-ca.log
check_grep "... with CKR_ACTION_PROHIBITED (0x1b)" "C_SetAttributeValue failed: .*\(0x1b\)" out/set-ca.log
t0=$(date +%s%N)
# Two threads (the default): opencryptoki 3.8 crashed in C_Sign from two
# threads with a CA key the import had modified (docs/backends/opencryptoki.md).
check "provision 3 parts" ctl provision --product ACME/RSA-1 --count 3 --threads 2 --out "$WORK/out/run"
info "opencryptoki: guardianctl provision --count 3 took $((($(date +%s%N) - t0) / 1000000)) ms"
n=0
for f in out/run/*.pem; do
    openssl verify -CAfile out/root.pem -untrusted out/ca.pem "$f" >/dev/null 2>&1 && n=$((n + 1))
done
check_eq "openssl verify: 3 device certificates up to the OEM root" 3 "$n"

# A second import through pkcs11-spy between the module and opencryptoki:
# only the import is searched.
if [ ! -r "$SPY" ]; then
    fail "pkcs11-spy" "not found at $SPY (package opensc)"
else
    check "guardian-wrap create: a second package (the spy's)" wrap_create RSA-SPY out/spy.gpk
    : >"$WORK/out/spy.log"
    check "import through pkcs11-spy" bx GUARDIAN_CONF="$WORK/spy.conf" PKCS11SPY="$BACKEND_MODULE" \
        PKCS11SPY_OUTPUT="$WORK/out/spy.log" GUARDIAN_MODULE="$G" GUARDIAN_TOKEN="$L" GUARDIAN_PIN="$ALICE" \
        "$CTL" import "$WORK/out/spy.gpk"
    # The import's C_UnwrapKey calls by mechanism: those in the session of
    # the trace's last C_UnwrapKey, since that session was opened (the
    # unwrap self-test runs first, in a session of its own).
    awk '/^[0-9]+: C_/ { call = $2 }
        call == "C_OpenSession" && $1 == "[out]" && $2 == "*phSession" { epoch[$4]++ }
        call == "C_UnwrapKey" && $2 == "hSession" { n++; tag[n] = $4 "/" epoch[$4] }
        call == "C_UnwrapKey" && $2 == "pMechanism->type" { mech[n] = $4 }
        END { for (i = 1; i <= n; i++) if (tag[i] == tag[n]) print mech[i] }' out/spy.log |
        sort | uniq -c | sed 's/^ *//' >out/spy-unwraps.txt
    info "opencryptoki, spy: C_UnwrapKey calls in the trace: $(grep -c -E '^[0-9]+: C_UnwrapKey' out/spy.log)"
    info "opencryptoki, spy: the import's C_UnwrapKey by mechanism: $(tr '\n' ';' <out/spy-unwraps.txt)"
    check_eq "spy: one CKM_RSA_PKCS_OAEP unwrap (the KEK)" 1 \
        "$(awk '$2 == "CKM_RSA_PKCS_OAEP" { print $1 }' out/spy-unwraps.txt)"
    check_eq "spy: CKM_AES_CBC_PAD unwraps (the CA key, the item)" 2 \
        "$(awk '$2 == "CKM_AES_CBC_PAD" { print $1 }' out/spy-unwraps.txt)"
    check_eq "spy: no C_Decrypt" 0 "$(grep -c -E '^[0-9]+: C_Decrypt' out/spy.log || true)"
    x='[0-9a-fA-F]'
    awk "/^    $x$x$x$x$x$x$x$x  /"' { for (i = 2; i <= 17 && $i ~ /^[0-9A-Fa-f][0-9A-Fa-f]$/; i++) printf "%s", tolower($i) }' \
        out/spy.log >out/dump.hex
    hex() { od -An -tx1 -v "$1" | tr -d ' \n'; }
    found() { # NEEDLE_HEX: any 12-byte window of it in the dump?
        local h=$1 i
        for ((i = 0; i + 24 <= ${#h}; i += 8)); do
            grep -q "${h:i:24}" out/dump.hex && return 0
        done
        return 1
    }
    info "opencryptoki, spy: $(($(wc -c <out/dump.hex) / 2)) bytes of buffers in the trace"
    openssl x509 -in out/ca.pem -outform DER -out out/ca.der
    check_eq "spy, control: the CA certificate's bytes are found" yes "$(found "$(hex out/ca.der)" && echo yes || echo no)"
    for part in privateExponent prime1 prime2 exponent1 exponent2 coefficient; do
        v=$(openssl rsa -in out/ca.key -text -noout 2>/dev/null | awk -v p="$part:" '$1 == p { f = 1; next }
            /^[a-zA-Z]/ { f = 0 } f' | tr -d ' :\n' | sed 's/^00//')
        if [ ${#v} -lt 200 ]; then
            fail "spy: the CA key's $part" "could not be read from ca.key"
            continue
        fi
        check_eq "spy: no byte run of the CA key's $part in the trace" no "$(found "$v" && echo yes || echo no)"
    done
    check_eq "spy: the confidential item is not in the trace" no "$(found "$(hex out/boot.secret)" && echo yes || echo no)"
fi
finish
