#!/usr/bin/env bash
# test_guardian_wrap.sh — the OEM's wrapping tool, end to end with OpenSSL only:
# create a package, inspect it, have `openssl cms -verify` accept it, and check
# that tampering, a wrong root, a wrong Guardian and bad inputs are refused with
# a clear message; also a signing key in a SoftHSM token by pkcs11: URI.
# Usage: test_guardian_wrap.sh PATH/TO/guardian-wrap
set -uo pipefail
W=$(realpath "${1:?usage: $0 guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-wrap-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

ec_key guardian.key && openssl req -new -x509 -key guardian.key -subj /CN=guardian-1 -days 30 -out guardian.pem
ec_key other.key && openssl req -new -x509 -key other.key -subj /CN=guardian-2 -days 30 -out other-guardian.pem
oem_pki
ec_key evil.key && openssl req -new -x509 -key evil.key -subj "/CN=ACME Root" -days 3650 -out evil-root.pem
echo "config v1" >config.txt
head -c 32 /dev/urandom >boot.key
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out extra-rsa.key 2>/dev/null

base=(create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem
      --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id SENSOR-1
      --release 3 --units 1000 --not-after +365)

expect "create" 0 "wrote p.gpk" -- "$W" "${base[@]}" --data config=config.txt --secret-data bootkey=boot.key \
    --extra-key attest=extra-rsa.key --ext-key-usage clientAuth --out p.gpk
expect "inspect with root and Guardian" 0 "signer chains to the given OEM root" -- \
    "$W" inspect p.gpk --oem-root root.pem --guardian-cert guardian.pem
expect "inspect shows product" 0 "product +ACME / SENSOR-1" -- "$W" inspect p.gpk
expect "inspect lists data and keys" 0 'data item +"bootkey" confidential' -- "$W" inspect p.gpk
expect "inspect lists extra key" 0 'extra key +"attest" \(RSA private key' -- "$W" inspect p.gpk
expect "openssl cms -verify accepts" 0 "" -- openssl cms -verify -inform DER -in p.gpk -CAfile root.pem \
    -binary -out content.der
# The key transport: the strongest one the Guardian certificate states
# (id-guardian-transports, docs/package-format.md); a certificate without the
# statement (guardian.pem, made before it) means aes-cbc only.
expect "auto: aes-cbc for a certificate without id-guardian-transports" 0 \
    "transport +aes-cbc \(.*2\.1\), chosen by --kdf auto" -- "$W" "${base[@]}" --out auto-old.gpk
expect "an unlisted --kdf is refused, naming what the Guardian offers" 1 \
    "--kdf x963-sha256: the Guardian certificate does not list it.*offers: aes-cbc \(.*\.2\.1\) \[no id-guardian-transports" \
    -- "$W" "${base[@]}" --kdf x963-sha256 --out q.gpk
[ ! -e q.gpk ] && ok "nothing written for a refused --kdf" || ko "a refused --kdf wrote a package"
expect "x963 kdf variant with --kdf-unlisted (and a warning)" 0 "warning: --kdf-unlisted: the Guardian certificate does not list x963-sha256" -- \
    "$W" "${base[@]}" --kdf x963-sha256 --kdf-unlisted --out q.gpk
expect "x963 inspect" 0 "X9.63 SHA-256" -- "$W" inspect q.gpk --oem-root root.pem
expect "inspect: the transport is not among what the Guardian offers" 1 \
    "guardian +offers aes-cbc .*NOT among them" -- "$W" inspect q.gpk --guardian-cert guardian.pem
# A Guardian whose token runs both (NSS softoken, measured): the X9.63 one.
oid_der() { # the DER of a SEQUENCE OF the OIDs given, in hex
    python3 - "$@" <<'PY'
import sys
def oid(t):
    a = [int(x) for x in t.split(".")]
    body = bytearray()
    for v in [a[0] * 40 + a[1]] + a[2:]:
        part = [v & 0x7f]
        v >>= 7
        while v:
            part.insert(0, 0x80 | (v & 0x7f))
            v >>= 7
        body += bytes(part)
    return bytes([6, len(body)]) + body
inner = b"".join(oid(x) for x in sys.argv[1:])
print((bytes([0x30, len(inner)]) + inner).hex())
PY
}
ARC=2.25.62758544141009244537205961397770264239
states() { # NAME HEXDER: a Guardian certificate stating HEXDER
    ec_key "$1.key" && openssl req -new -x509 -key "$1.key" -subj "/CN=$1" -days 30 -out "$1.pem" \
        -addext "$ARC.3.1=DER:$2" 2>/dev/null
}
states nss-guardian "$(oid_der $ARC.2.2 $ARC.2.1 $ARC.2.0)"
states none-guardian "$(oid_der $ARC.2.0)"
states bad-guardian 3000
states future-guardian "$(oid_der 1.3.6.1.4.1.55555.7 $ARC.2.1)"
states x963-guardian "$(oid_der $ARC.2.2 $ARC.2.0)"
expect "an unlisted --kdf: the whole message, what is offered and what to do" 1 \
    "offers: x963-sha256 \($ARC\.2\.2\), none \($ARC\.2\.0\)\); use --kdf auto, or --kdf-unlisted to make it all the same$" \
    -- "$W" "${base[@]/guardian.pem/x963-guardian.pem}" --kdf aes-cbc --out x963-only.gpk
nssbase=("${base[@]/guardian.pem/nss-guardian.pem}")
expect "auto: x963-sha256 where the Guardian lists it first" 0 \
    "transport +x963-sha256 \(.*\.2\.2\), chosen by --kdf auto" -- "$W" "${nssbase[@]}" --out nss.gpk
expect "the chosen package is the X9.63 scheme" 0 "X9.63 SHA-256" -- "$W" inspect nss.gpk --oem-root root.pem
expect "inspect lists what the Guardian offers" 0 \
    "guardian +offers x963-sha256 \(.*\.2\.2\), aes-cbc \(.*\.2\.1\), none \(.*\.2\.0\)$" -- \
    "$W" inspect nss.gpk --guardian-cert nss-guardian.pem
expect "a listed --kdf aes-cbc is made" 0 "transport +aes-cbc" -- "$W" "${nssbase[@]}" --kdf aes-cbc --out nss-cbc.gpk
expect "a scheme this tool does not know is skipped" 0 "transport +aes-cbc \(.*\), chosen by --kdf auto" -- \
    "$W" "${base[@]/guardian.pem/future-guardian.pem}" --out future.gpk
expect "a Guardian that states no ECDH scheme gets no package with a secret" 1 "offers no key transport" -- \
    "$W" "${base[@]/guardian.pem/none-guardian.pem}" --out none.gpk
expect "a malformed statement is refused" 1 "bad-guardian.pem: the id-guardian-transports extension lists 0 schemes" -- \
    "$W" "${base[@]/guardian.pem/bad-guardian.pem}" --out bad.gpk
[ ! -e none.gpk ] && [ ! -e bad.gpk ] && ok "nothing written for those" || ko "a refused Guardian certificate wrote a package"
expect "inspect: the container is as signed" 0 "container +exactly as signed" -- "$W" inspect p.gpk --oem-root root.pem

# The device-identity extension: none unless the OEM names its own OID (no
# 2.25.<uuid> default); inspect says which.
expect "inspect: by default no device extension" 0 "template .*, no device extension$" -- "$W" inspect p.gpk
expect "create --device-ext-oid" 0 "wrote oid.gpk" -- "$W" "${base[@]}" --device-ext-oid 1.3.6.1.4.1.55555.1 --out oid.gpk
expect "inspect: the OEM's OID" 0 "template .*, device extension 1\.3\.6\.1\.4\.1\.55555\.1$" -- "$W" inspect oid.gpk
expect "create: a standard extension's OID refused" 2 "--device-ext-oid: '2.5.29.99' is not a usable OID" -- \
    "$W" "${base[@]}" --device-ext-oid 2.5.29.99 --out bad-oid.gpk
# PrintableString values (C, serialNumber) are never changed: '_' is refused,
# in the pattern's text or from an ID, before anything is written.
expect "create: '_' in a serialNumber's literal text refused" 1 \
    "serialNumber is a PrintableString, which cannot hold '_' \(allowed: A-Z a-z 0-9 space ' \( \) \+ , - \. / : = \?\)" -- \
    "$W" "${base[@]}" --subject 'CN=${device_id},serialNumber=A_${device_id}' --out ps1.gpk
expect "create: an OEM ID with '_' in C refused" 1 "the subject's C would hold '_', which a PrintableString cannot" -- \
    "$W" "${base[@]/ACME/AC_ME}" --subject 'CN=${device_id},C=${oem_id}' --out ps2.gpk
[ ! -e ps1.gpk ] && [ ! -e ps2.gpk ] && ok "nothing written for a refused subject" || ko "a refused subject wrote a package"
expect "create: '-' in serialNumber is fine" 0 "wrote ps3.gpk" -- \
    "$W" "${base[@]}" --subject 'CN=${device_id},serialNumber=A-${device_id}' --out ps3.gpk

# The one container a Guardian takes (docs/package-format.md, "The container
# exactly as signed").  OpenSSL's ECDSA s is random and (r, n-s) verifies too:
# guardian-wrap writes the low-s form, every time, as a DER parser of our own
# (not OpenSSL's) reads it.
SIG=$HERE/../lib/package_sig.py
for i in $(seq 40); do "$W" "${base[@]}" --out "low-$i.gpk" >/dev/null || ko "create low-$i.gpk"; done
expect "40 packages, every signature low-s" 0 "" -- python3 "$SIG" check low-*.gpk
python3 "$SIG" flip p.gpk high-s.gpk
expect "(r, n-s) still verifies with openssl" 0 "" -- openssl cms -verify -inform DER -in high-s.gpk \
    -CAfile root.pem -binary -out /dev/null
expect "inspect: a high-s package is altered" 1 "ALTERED outside its signature: the ECDSA signature is high-s" -- \
    "$W" inspect high-s.gpk --oem-root root.pem
expect "inspect: high-s, without a root too" 1 "ALTERED .*high-s" -- "$W" inspect high-s.gpk
# Stock OpenSSL signing the same content makes the profile with -cades (the
# signed signingCertificateV2 attribute) once its s is low; with one more
# certificate in the set, or without the attribute, it does not.
oem_cms() { # OUT [openssl cms -sign args]
    local out=$1
    shift
    openssl cms -sign -binary -nodetach -nosmimecap -cades -md sha256 -outform DER -in content.der \
        -econtent_type 2.25.62758544141009244537205961397770264239.1 -signer signer.pem -inkey signer.key \
        -out "$out" "$@"
    python3 "$SIG" check "$out" >/dev/null || python3 "$SIG" flip "$out" "$out"
}
oem_cms stock.gpk
expect "inspect: openssl cms -sign, low-s" 0 "container +exactly as signed" -- "$W" inspect stock.gpk --oem-root root.pem
openssl cms -sign -binary -nodetach -nosmimecap -md sha256 -outform DER -in content.der \
    -econtent_type 2.25.62758544141009244537205961397770264239.1 -signer signer.pem -inkey signer.key \
    -out no-ess.gpk
python3 "$SIG" check no-ess.gpk >/dev/null || python3 "$SIG" flip no-ess.gpk no-ess.gpk
expect "inspect: no signingCertificateV2" 1 "ALTERED .*no signed signingCertificateV2" -- \
    "$W" inspect no-ess.gpk --oem-root root.pem
oem_cms extra-cert.gpk -certfile ca.pem
expect "inspect: one more certificate in the set" 1 "ALTERED .*certificate set" -- \
    "$W" inspect extra-cert.gpk --oem-root root.pem
expect "inspect: one more certificate, without a root" 1 "ALTERED .*certificate set" -- "$W" inspect extra-cert.gpk
oem_cms with-root.gpk -certfile root.pem
expect "inspect: the root in the set" 1 "ALTERED .*certificate set" -- "$W" inspect with-root.gpk --oem-root root.pem
# A signer under an intermediate CA: the intermediate travels, the root not.
oem_issue sub "/CN=ACME Signing CA" root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
oem_issue sub-signer "/CN=ACME Sub Signer" sub "keyUsage=critical,digitalSignature"
cat sub.pem root.pem >sub-chain.pem
expect "create: --signer-chain with the intermediate and the root" 0 "wrote s.gpk" -- "$W" "${base[@]}" \
    --signer-key sub-signer.key --signer-cert sub-signer.pem --signer-chain sub-chain.pem --out s.gpk
expect "inspect: signer and intermediate, as signed" 0 "container +exactly as signed" -- \
    "$W" inspect s.gpk --oem-root root.pem
expect "the set: the signer and the intermediate only" 0 "^2$" -- bash -c \
    "openssl cms -cmsout -print -inform DER -in s.gpk | grep -c 'subject: CN'"
expect "create: a --signer-chain certificate off the signer's path" 1 "ACME Production CA is not on the signer's path" -- \
    "$W" "${base[@]}" --signer-chain ca.pem --out x.gpk

# Secrets never appear in clear in the package.
if grep -qF "$(head -c 32 boot.key | od -An -tx1 | tr -d ' \n')" <(od -An -tx1 p.gpk | tr -d ' \n'); then
    ko "secret data in clear"
else ok "secret data not in clear"; fi

# The OEM signing key in a token, by pkcs11: URI (through OpenSSL's pkcs11 engine).
softhsm_token "$work" oem-hsm
pkcs11-tool --module "${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" --token-label oem-hsm -l -p 1234 \
    --keypairgen --key-type EC:prime256v1 --label pkg-signer --id 5a >/dev/null 2>&1
pkcs11-tool --module "${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" --token-label oem-hsm \
    --read-object --type pubkey --id 5a -o hsm-pub.der >/dev/null 2>&1
openssl pkey -pubin -inform DER -in hsm-pub.der -out hsm-pub.pem
openssl x509 -new -force_pubkey hsm-pub.pem -subj "/CN=ACME HSM Signer" -CA root.pem -CAkey root.key \
    -days 30 -out hsm-signer.pem 2>/dev/null
expect "create with a pkcs11: signing key" 0 "wrote hsm.gpk" -- env \
    PKCS11_MODULE_PATH="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" "$W" "${base[@]}" \
    --signer-key "pkcs11:token=oem-hsm;object=pkg-signer;type=private;pin-value=1234" \
    --signer-cert hsm-signer.pem --out hsm.gpk
expect "the token-signed package verifies" 0 "" -- openssl cms -verify -inform DER -in hsm.gpk -CAfile root.pem \
    -binary -out /dev/null
# The token signs with whatever s comes out too: guardian-wrap turns it low-s.
for i in $(seq 12); do
    env PKCS11_MODULE_PATH="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" "$W" "${base[@]}" \
        --signer-key "pkcs11:token=oem-hsm;object=pkg-signer;type=private;pin-value=1234" \
        --signer-cert hsm-signer.pem --out "hsm-$i.gpk" >/dev/null || ko "create hsm-$i.gpk"
done
expect "12 token-signed packages, every signature low-s" 0 "" -- python3 "$SIG" check hsm-*.gpk
expect "inspect: the token-signed container is as signed" 0 "container +exactly as signed" -- \
    "$W" inspect hsm-1.gpk --oem-root root.pem
expect "a pkcs11: key that is not there" 1 "no private key at pkcs11:" -- env \
    PKCS11_MODULE_PATH="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" "$W" "${base[@]}" \
    --signer-key "pkcs11:token=oem-hsm;object=nope;type=private;pin-value=1234" \
    --signer-cert hsm-signer.pem --out x.gpk

expect "wrong root refused" 1 "INVALID" -- "$W" inspect p.gpk --oem-root evil-root.pem
expect "wrong Guardian reported" 1 "NOT other-guardian.pem" -- "$W" inspect p.gpk --guardian-cert other-guardian.pem
size=$(stat -c %s p.gpk)
for off in 20 200 $((size / 2)) $((size - 40)); do
    cp p.gpk t.gpk
    printf '\x5a' | dd of=t.gpk bs=1 seek="$off" conv=notrunc 2>/dev/null
    cmp -s p.gpk t.gpk && printf '\xa5' | dd of=t.gpk bs=1 seek="$off" conv=notrunc 2>/dev/null
    expect "byte $off tampered: openssl refuses" 1 "" -- openssl cms -verify -inform DER -in t.gpk -CAfile root.pem -binary -out /dev/null
    expect "byte $off tampered: inspect refuses" 1 "INVALID|ALTERED|not a Guardian package|not a valid" -- "$W" inspect t.gpk --oem-root root.pem
done
head -c $((size - 10)) p.gpk >trunc.gpk
expect "truncated refused" 1 "not a Guardian package" -- "$W" inspect trunc.gpk

expect "missing option" 1 "missing --units" -- "$W" create --guardian-cert guardian.pem --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id A --product-id B --release 1 \
    --not-after +1 --out x.gpk
expect "key/cert mismatch" 1 "does not match the public key" -- "$W" create --guardian-cert guardian.pem \
    --signer-key ca.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id A --product-id B \
    --release 1 --units 1 --not-after +1 --out x.gpk
expect "past not-after" 1 "is in the past" -- "$W" "${base[@]/+365/2001-01-01}" --out x.gpk
expect "bad OEM ID" 1 "OEM ID and product ID" -- "$W" create --guardian-cert guardian.pem --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id "AC ME" --product-id B --release 1 \
    --units 1 --not-after +1 --out x.gpk
openssl req -new -x509 -key extra-rsa.key -subj /CN=rsa-guardian -days 1 -out rsa-guardian.pem
# An RSA Guardian (a token without EC) gets the RSA-OAEP transport; an RSA key
# under 2048 bits, or a key neither EC nor RSA, is refused.
expect "RSA Guardian: the RSA-OAEP transport" 0 "wrote rsa.gpk" -- "$W" create --guardian-cert rsa-guardian.pem \
    --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id A --product-id B \
    --release 1 --units 1 --not-after +1 --out rsa.gpk
expect "inspect: RSA-OAEP-SHA256" 0 "transport +RSA-OAEP-SHA256" -- "$W" inspect rsa.gpk
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa1024.key 2>/dev/null
openssl req -new -x509 -key rsa1024.key -subj /CN=rsa1024 -days 1 -out rsa1024.pem 2>/dev/null
expect "RSA-1024 Guardian refused" 1 "RSA key must have 2048..4096 bits" -- "$W" create --guardian-cert rsa1024.pem \
    --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id A --product-id B \
    --release 1 --units 1 --not-after +1 --out x.gpk
openssl genpkey -algorithm ED25519 -out ed.key 2>/dev/null
openssl req -new -x509 -key ed.key -subj /CN=ed -days 1 -out ed.pem 2>/dev/null
expect "Ed25519 Guardian refused" 1 "must carry an EC key \(P-256 or P-384\) or an RSA key" -- "$W" create \
    --guardian-cert ed.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem \
    --oem-id A --product-id B --release 1 --units 1 --not-after +1 --out x.gpk
expect "not a certificate" 1 "holds no certificate" -- "$W" create --guardian-cert config.txt --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --oem-id A --product-id B --release 1 \
    --units 1 --not-after +1 --out x.gpk
expect "not a package" 1 "not a Guardian package" -- "$W" inspect config.txt
expect "unknown command" 1 "unknown command" -- "$W" frobnicate

# Command-line conventions (docs/guardian-wrap.md): --version, --help on every
# command (before any file is read), usage errors named with exit 2.
expect_rc "--version" 0 "^guardian-wrap [0-9]+\.[0-9]+\.[0-9]+$" -- "$W" --version
expect_rc "version" 0 "^guardian-wrap [0-9]+\.[0-9]+\.[0-9]+$" -- "$W" version
expect_rc "--help" 0 "^usage: guardian-wrap create" -- "$W" --help
for c in create inspect verify-report; do
    expect_rc "$c --help: its usage, exit 0" 0 "^usage: guardian-wrap $c" -- "$W" "$c" --help
    expect_rc "$c -h after other options, no file read" 0 "^usage: guardian-wrap $c" -- \
        "$W" "$c" --guardian-cert /nonexistent -h
    expect_rc "$c: unknown option named, exit 2" 2 \
        "guardian-wrap: $c: unknown option '--cuont' \(guardian-wrap $c --help\)" -- "$W" "$c" --cuont 5
done
expect_rc "unknown command: exit 2" 2 "unknown command 'frobnicate'" -- "$W" frobnicate
expect_rc "missing value: exit 2" 2 "create: option '--out' needs a value" -- "$W" "${base[@]}" --out
expect_rc "missing option: exit 2" 2 "create: missing --out" -- "$W" "${base[@]}"
expect_rc "a refusal: exit 1" 1 "does not match the public key" -- "$W" "${base[@]/signer.key/ca.key}" --out mm.gpk

# Dates: a real calendar date, or +DAYS a whole number 1..36500.
for d in 2027-02-30 2027-13-01 2027-02-29 2027-12-31x 2027-1-01 27-12-31 +0 +-5 "+ 5" +1x +36501 tomorrow; do
    expect_rc "--not-after '$d' refused, named" 2 "--not-after .*'${d//+/[+]}'" -- \
        "$W" "${base[@]/+365/$d}" --out date.gpk
done
expect_rc "--not-after 2096-02-29 (a leap year) taken" 0 "wrote leap.gpk" -- "$W" "${base[@]/+365/2096-02-29}" --out leap.gpk
expect_rc "--not-after 2028-02-29 (a leap year) taken" 0 "wrote leap28.gpk" -- "$W" "${base[@]/+365/2028-02-29}" --out leap28.gpk
[ -e date.gpk ] && ko "a refused date left date.gpk" || ok "a refused date writes nothing"

# An existing output is kept unless --force; the write goes through a rename.
echo keep >exists.gpk
expect_rc "create: an existing --out refused" 1 "exists.gpk exists: not overwritten \(give --force" -- \
    "$W" "${base[@]}" --out exists.gpk
[ "$(cat exists.gpk)" = keep ] && ok "the existing file is untouched" || ko "the existing file was changed"
expect_rc "create --force replaces it" 0 "wrote exists.gpk" -- "$W" "${base[@]}" --out exists.gpk --force
expect_rc "the replaced package inspects" 0 "container +exactly as signed" -- "$W" inspect exists.gpk
ls ./*.tmp-* >/dev/null 2>&1 && ko "temporary files left" || ok "no temporary file left"

# Encrypted PEM keys without a terminal: --passin as openssl takes it.
openssl pkey -in signer.key -aes256 -passout pass:s3cret -out signer-enc.key
openssl pkey -in ca.key -aes256 -passout pass:ca-pass -out ca-enc.key
enc=("${base[@]/signer.key/signer-enc.key}")
expect_rc "encrypted key, no --passin, no terminal: refused" 1 "signer-enc.key is encrypted: give its passphrase with --passin" -- \
    "$W" "${enc[@]}" --out enc0.gpk
expect_rc "--passin pass:" 0 "wrote enc1.gpk" -- "$W" "${enc[@]}" --passin pass:s3cret --out enc1.gpk
expect_rc "--passin env:" 0 "wrote enc2.gpk" -- env PW=s3cret "$W" "${enc[@]}" --passin env:PW --out enc2.gpk
printf 's3cret\n' >pw.txt
expect_rc "--passin file:" 0 "wrote enc3.gpk" -- "$W" "${enc[@]}" --passin file:pw.txt --out enc3.gpk
expect_rc "--passin fd:" 0 "wrote enc4.gpk" -- bash -c '"$0" "${@}" --passin fd:3 --out enc4.gpk 3<pw.txt' "$W" "${enc[@]}"
expect_rc "--passin fd: of a closed descriptor" 1 "--passin fd:9: cannot read descriptor 9" -- \
    bash -c '"$0" "$@" 9<&-' "$W" "${enc[@]}" --passin fd:9 --out enc9.gpk
expect_rc "--passin with the wrong passphrase: refused" 1 "cannot decrypt signer-enc.key .*wrong passphrase" -- \
    "$W" "${enc[@]}" --passin pass:nope --out enc5.gpk
expect_rc "--passin env: of an unset variable" 1 "no variable NOPE_PW" -- "$W" "${enc[@]}" --passin env:NOPE_PW --out enc6.gpk
expect_rc "--passin with an unknown source: exit 2" 2 "--passin 'stdn': use pass:" -- "$W" "${enc[@]}" --passin stdn --out enc7.gpk
expect_rc "--passin stdin" 0 "wrote enc10.gpk" -- bash -c '"$0" "$@" <pw.txt' "$W" "${enc[@]}" --passin stdin --out enc10.gpk
expect_rc "--ca-passin for a CA key with its own passphrase" 0 "wrote enc8.gpk" -- \
    "$W" "${enc[@]/ca.key/ca-enc.key}" --passin pass:s3cret --ca-passin pass:ca-pass --out enc8.gpk
expect_rc "the passphrase-made package inspects" 0 "container +exactly as signed" -- "$W" inspect enc8.gpk --oem-root root.pem

finish
