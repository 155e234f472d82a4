#!/usr/bin/env bash
# make_packages.sh DIR GUARDIAN_WRAP — the OEM side of the unwrap tests: an OEM
# PKI (root, package signer, production CA), a rogue PKI, another Guardian, and
# packages made with guardian-wrap for DIR/guardian.pem (written by the test).
set -euo pipefail
dir=$1 W=$2
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
root() { key "$1.key"; openssl req -new -x509 -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }
issue() { # NAME SUBJECT ROOT EXT
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -days 365 -out "$1.pem" \
        -extfile <(printf '%s\n' "$4") 2>/dev/null
}
root oem-root "ACME Root"
root evil-root "ACME Root"
issue signer "/CN=ACME Package Signer" oem-root "keyUsage=critical,digitalSignature"
issue evil-signer "/CN=ACME Package Signer" evil-root "keyUsage=critical,digitalSignature"
issue ca "/CN=ACME Production CA" oem-root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
key other-guardian.key
openssl req -new -x509 -key other-guardian.key -subj /CN=other-guardian -days 30 -out other-guardian.pem
echo "line-config v1" >config.txt
head -c 32 /dev/urandom >boot.secret
key extra.key

wrap() { # OUT RELEASE [extra args]
    local out=$1 rel=$2
    shift 2
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem \
        --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id SENSOR-1 \
        --release "$rel" --units 100 --not-after +30 --out "$out" "$@" >/dev/null
}
wrap good.gpk 3 --data config=config.txt --secret-data bootkey=boot.secret --extra-key attest=extra.key

# good.gpk with an empty CRL set ([1] holding nothing) after its certificates:
# the signature does not cover it, OpenSSL parses it, re-encodes it to the same
# bytes and verifies the package (docs/package-format.md).
python3 "$HERE/../lib/package_sig.py" empty-crls good.gpk empty-crls.gpk
wrap older.gpk 2
wrap newer.gpk 4
# The X9.63 scheme, which the SoftHSM Guardian's certificate does not list
# (its token has no CKD_SHA256_KDF): guardian-wrap makes it only when told to.
wrap x963.gpk 5 --kdf x963-sha256 --kdf-unlisted
"$W" create --guardian-cert other-guardian.pem --signer-key signer.key --signer-cert signer.pem \
    --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id OTHER --release 1 --units 1 \
    --not-after +30 --out wrong-guardian.gpk >/dev/null
"$W" create --guardian-cert guardian.pem --signer-key evil-signer.key --signer-cert evil-signer.pem \
    --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id EVIL --release 1 --units 1 \
    --not-after +30 --out evil.gpk >/dev/null

# Package signers: RSA; and one under an intermediate CA, whose chain file also
# holds the root (guardian-wrap carries the intermediate, not the root).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-signer.key 2>/dev/null
openssl req -new -key rsa-signer.key -subj "/CN=ACME RSA Package Signer" -out rsa-signer.csr
openssl x509 -req -in rsa-signer.csr -CA oem-root.pem -CAkey oem-root.key -days 365 -out rsa-signer.pem \
    -extfile <(printf 'keyUsage=critical,digitalSignature\n') 2>/dev/null
"$W" create --guardian-cert guardian.pem --signer-key rsa-signer.key --signer-cert rsa-signer.pem \
    --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id RSA-SIGNED --release 1 \
    --units 1 --not-after +30 --out rsa-signed.gpk >/dev/null
issue oem-sub "/CN=ACME Signing CA" oem-root "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
issue sub-signer "/CN=ACME Sub Signer" oem-sub "keyUsage=critical,digitalSignature"
cat oem-sub.pem oem-root.pem >sub-chain.pem
"$W" create --guardian-cert guardian.pem --signer-key sub-signer.key --signer-cert sub-signer.pem \
    --signer-chain sub-chain.pem --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id CHAINED --release 1 \
    --units 1 --not-after +30 --out chained.gpk >/dev/null
"$W" create --guardian-cert guardian.pem --signer-key sub-signer.key --signer-cert sub-signer.pem \
    --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id CHAINED --release 2 \
    --units 1 --not-after +30 --out no-intermediate.gpk >/dev/null

# Derive tests: a small quota, and an RSA production CA.
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem \
    --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id SMALL --release 1 \
    --units 3 --not-after +30 --out small.gpk >/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-ca.key 2>/dev/null
openssl req -new -key rsa-ca.key -subj "/CN=ACME RSA Production CA" -out rsa-ca.csr
openssl x509 -req -in rsa-ca.csr -CA oem-root.pem -CAkey oem-root.key -days 365 -out rsa-ca.pem \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=hash\n') 2>/dev/null
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem \
    --ca-key rsa-ca.key --ca-cert rsa-ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id RSA-1 --release 1 \
    --units 10 --not-after +30 --out rsa.gpk >/dev/null

# Content signed again as the OEM would, with stock OpenSSL: OpenSSL's ECDSA s
# is random, and a Guardian takes only the low-s form (guardian-wrap writes
# it; docs/package-format.md), so sign until the signature is low-s.
oem_sign() { # CONTENT OUT
    for _ in $(seq 64); do
        openssl cms -sign -binary -nodetach -nosmimecap -cades -md sha256 -outform DER \
            -econtent_type 2.25.62758544141009244537205961397770264239.1 -in "$1" \
            -signer signer.pem -inkey signer.key -out "$2"
        # (inspect exits 1 for an expired package: only its container line counts)
        report=$("$W" inspect "$2" --oem-root oem-root.pem || true)
        grep -q '^container *exactly as signed' <<<"$report" && return 0
    done
    echo "make_packages.sh: no low-s signature in 64 tries" >&2
    return 1
}

# An expired package: guardian-wrap refuses to make one, so take a valid
# package's content, move its not-after (the content's only GeneralizedTime)
# to 2001, and sign it again as the OEM would, with stock OpenSSL.
wrap expired-src.gpk 9
openssl cms -verify -inform DER -in expired-src.gpk -CAfile oem-root.pem -binary -out content.der 2>/dev/null
python3 - <<'PY'
import re
data = open("content.der", "rb").read()
new, n = re.subn(rb"\x18\x0f\d{14}Z", b"\x18\x0f20010101000000Z", data, count=1)
assert n == 1, "no not-after found"
open("content-expired.der", "wb").write(new)
PY
oem_sign content-expired.der expired.gpk

# A package as signed before the template's noDeviceExt existed (neither
# deviceExtOid nor noDeviceExt): take a new package's content, drop the
# template's "81 00" (re-encoding the two lengths around it), sign it again.
# Its certificates must carry the legacy 2.25.<uuid>.3 extension.
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem \
    --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id LEGACY-1 \
    --release 1 --units 10 --not-after +30 --out legacy-src.gpk >/dev/null
openssl cms -verify -inform DER -in legacy-src.gpk -CAfile oem-root.pem -binary -out content.der 2>/dev/null
python3 - <<'PY'
def tlv(d, i):  # (tag, header length, content length) at i
    n, h = d[i + 1], 2
    if n & 0x80:
        k = n & 0x7f
        n, h = int.from_bytes(d[i + 2:i + 2 + k], "big"), 2 + k
    return d[i], h, n
def enc(tag, body):
    n = len(body)
    if n < 128:
        return bytes([tag, n]) + body
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(b)]) + b + body
data = open("content.der", "rb").read()
_, h, n = tlv(data, 0)
i, parts = h, []
while i < h + n:
    _, ch, cn = tlv(data, i)
    parts.append(data[i:i + ch + cn])
    i += ch + cn
t = parts[8]  # certTemplate
_, th, tn = tlv(t, 0)
assert t.endswith(b"\x81\x00"), "the template does not end with noDeviceExt"
parts[8] = enc(0x30, t[th:th + tn - 2])
open("content-legacy.der", "wb").write(enc(0x30, b"".join(parts)))
PY
oem_sign content-legacy.der legacy.gpk

# An ephemeral key off the Guardian's curve, in a package the OEM's key signed
# (whoever holds an OEM signing key can make one): take a valid package's
# content, change the point's last byte, check with P-256's equation that it is
# off the curve, and sign it again.
wrap off-curve-src.gpk 10
openssl cms -verify -inform DER -in off-curve-src.gpk -CAfile oem-root.pem -binary -out content.der 2>/dev/null
python3 - <<'PY'
def oid(text):
    arcs = [int(a) for a in text.split(".")]
    body = bytearray([arcs[0] * 40 + arcs[1]])
    for v in arcs[2:]:
        enc = [v & 0x7f]
        v >>= 7
        while v:
            enc.append(0x80 | (v & 0x7f))
            v >>= 7
        body += bytes(reversed(enc))
    return bytes([6, len(body)]) + body
data = bytearray(open("content.der", "rb").read())
scheme = oid("2.25.62758544141009244537205961397770264239.2.1")
at = data.index(scheme + b"\x04\x41\x04") + len(scheme) + 2
data[at + 64] ^= 0x01
p = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff
b = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b
x = int.from_bytes(data[at + 1:at + 33], "big")
y = int.from_bytes(data[at + 33:at + 65], "big")
assert (y * y - (x * x * x - 3 * x + b)) % p != 0, "still on the curve"
open("content-off-curve.der", "wb").write(data)
PY
oem_sign content-off-curve.der off-curve.gpk
