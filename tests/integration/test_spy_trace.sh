#!/usr/bin/env bash
# test_spy_trace.sh MODULE GUARDIANCTL GUARDIAN_WRAP — no plaintext secret passes
# through the module during an import.  OpenSC's pkcs11-spy sits between the
# Guardian module and SoftHSM and logs every call with its byte buffers; the
# test made the package, so it knows the production CA private key (its
# scalar) and a confidential data item, and searches the spy's trace for them.
# A positive control (the CA certificate, which does cross the interface) proves
# the search would find bytes that are there.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
SPY=${PKCS11SPY_MODULE:-/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so}
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-spy-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
[ -r "$SPY" ] || { echo "FAIL pkcs11-spy not found at $SPY (package opensc)"; echo "0 passed, 1 failed"; exit 1; }

mkdir state
softhsm_token "$work" spy
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=spy
export GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678 GUARDIAN_DEBUG=
unset GUARDIAN_CONF
# The module's backend is the spy, and the spy's is SoftHSM.
export GUARDIAN_BACKEND=$SPY PKCS11SPY=$SOFTHSM PKCS11SPY_OUTPUT=$work/spy.log

oem_pki
head -c 48 /dev/urandom >secret.bin

"$CTL" init --out guardian.pem >/dev/null 2>&1 && ok "guardianctl init through the spy" || ko "guardianctl init through the spy"
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 && ok "enroll-oem through the spy" || ko "enroll-oem through the spy"
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id SPY --release 1 --units 10 \
    --not-after +10 --secret-data boot=secret.bin --out p.gpk >/dev/null || ko "guardian-wrap create"
: >spy.log # only the import is searched
if "$CTL" import p.gpk >import.out 2>&1; then ok "import through the spy"; else ko "import through the spy"; cat import.out; fi
grep -q "C_UnwrapKey" spy.log && ok "the spy saw the import (C_UnwrapKey in its trace)" || ko "the spy saw no C_UnwrapKey"

# All bytes the spy dumped, as one lowercase hex stream.
x='[0-9a-fA-F]'
awk "/^    $x$x$x$x$x$x$x$x  /"' { for (i = 2; i <= 17 && $i ~ /^[0-9A-Fa-f][0-9A-Fa-f]$/; i++) printf "%s", tolower($i) }' \
    spy.log >dump.hex
hex() { od -An -tx1 -v "$1" | tr -d ' \n'; }
# found NEEDLE_HEX: any 12-byte window of it in the dump?
found() {
    local h=$1 i
    for ((i = 0; i + 24 <= ${#h}; i += 8)); do
        grep -q "${h:i:24}" dump.hex && return 0
    done
    return 1
}
[ -s dump.hex ] && ok "the spy dumped $(($(wc -c <dump.hex) / 2)) bytes of buffers" || ko "the spy dumped no bytes"

openssl x509 -in ca.pem -outform DER -out ca.der
found "$(hex ca.der)" && ok "positive control: the CA certificate is found in the trace" \
                      || ko "positive control: the CA certificate is not found (the search is broken)"
scalar=$(openssl ec -in ca.key -text -noout 2>/dev/null | awk '/priv:/{f=1;next} /pub:/{f=0} f' | tr -d ' :\n')
[ ${#scalar} -ge 62 ] || ko "could not read the CA private scalar"
found "$scalar" && ko "the CA private key (scalar) appears in the trace" || ok "the CA private key (scalar) is not in the trace"
# (Not the whole PKCS#8 encoding: its header and embedded public point are
# public and do cross the interface; the secret in it is the scalar.)
found "$(hex secret.bin)" && ko "the confidential data item appears in the trace" || ok "the confidential data item is not in the trace"

# The package's ephemeral point (public) goes to the backend's ECDH: the
# control that the trace shows the key agreement, for the X9.63 check below.
ephemeral() { # PACKAGE: the hex of its KeyTransport.ephemeralKey
    openssl cms -verify -noverify -inform DER -in "$1" -binary -out "$1.content" >/dev/null 2>&1
    python3 - "$1.content" <<'PY'
import sys
c = open(sys.argv[1], "rb").read()
def arc(v):  # base-128 of one arc
    out = [v & 0x7f]
    while v > 0x7f:
        v >>= 7
        out.insert(0, 0x80 | (v & 0x7f))
    return bytes(out)
# KeyTransport ::= SEQUENCE { id-guardian-kt-* (2.25.<uuid>.2.N), OCTET STRING point }
kt = arc(105) + arc(62758544141009244537205961397770264239) + arc(2)
i = c.find(kt)
j = c.find(b"\x04\x41\x04", i) if i > 0 else -1
print(c[j + 2:j + 67].hex() if j == i + len(kt) + 1 else "")
PY
}
point=$(ephemeral p.gpk)
[ ${#point} = 130 ] && found "$point" && ok "positive control: the aes-cbc package's ephemeral point is in the trace (its ECDH)" ||
    ko "the aes-cbc package's ephemeral point is not in the trace (the X9.63 check below proves nothing)"

# An X9.63 package (id-guardian-kt-ecdh-x963sha256-v1), which this Guardian's
# certificate does not list (SoftHSM has no CKD_SHA256_KDF): refused before
# any key operation, so its point never reaches the backend and its secrets
# never cross, in any form.
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id SPY --release 2 --units 10 \
    --not-after +10 --secret-data boot=secret.bin --kdf x963-sha256 --kdf-unlisted --out x963.gpk >/dev/null 2>&1 ||
    ko "guardian-wrap create --kdf x963-sha256 --kdf-unlisted"
: >spy.log
"$CTL" import x963.gpk >import3.out 2>&1 && ko "the X9.63 package imported on SoftHSM" ||
    { grep -q CKR_GUARDIAN_TRANSPORT_UNSUPPORTED import3.out && ok "the X9.63 package refused: CKR_GUARDIAN_TRANSPORT_UNSUPPORTED" ||
        { ko "the X9.63 package refused otherwise"; cat import3.out; }; }
awk "/^    $x$x$x$x$x$x$x$x  /"' { for (i = 2; i <= 17 && $i ~ /^[0-9A-Fa-f][0-9A-Fa-f]$/; i++) printf "%s", tolower($i) }' \
    spy.log >dump.hex
point=$(ephemeral x963.gpk)
[ ${#point} = 130 ] || ko "could not read the X9.63 package's ephemeral point"
found "$point" && ko "the X9.63 package's ephemeral point reached the backend" ||
    ok "the X9.63 package's ephemeral point never reached the backend (no ECDH with it)"
found "$scalar" && ko "the CA private key (scalar) appears in the X9.63 trace" || ok "the CA private key is not in the X9.63 trace"
found "$(hex secret.bin)" && ko "the confidential item appears in the X9.63 trace" || ok "the confidential item is not in the X9.63 trace"

# A package for a production CA key made inside the Guardian (format version
# 2, no secret: docs/package-format.md) imports with no key agreement and no
# unwrap at all, which is what lets it import on a backend that has neither
# (a TPM): the spy sees no C_DeriveKey and no C_UnwrapKey during its import.
"$CTL" ca-request --product ACME/SPY2 --subject "/O=ACME/CN=ACME SPY2 CA" --out spy2.csr >/dev/null 2>&1 ||
    ko "ca-request through the spy"
"$W" certify-ca --guardian-cert guardian.pem --oem-id ACME --product-id SPY2 --ca-key root.key --ca-cert root.pem \
    --csr spy2.csr --days 365 --out spy2-ca.pem >/dev/null 2>&1 || ko "certify-ca"
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-cert spy2-ca.pem \
    --ca-chain root.pem --oem-id ACME --product-id SPY2 --release 1 --units 3 --not-after +10 \
    --ca-request spy2.csr --out p2.gpk >/dev/null 2>&1 || ko "guardian-wrap create --ca-request"
: >spy.log
if "$CTL" import p2.gpk >import2.out 2>&1; then ok "import of a version 2 package through the spy"; else
    ko "import of a version 2 package through the spy"
    cat import2.out
fi
grep -q "C_FindObjects" spy.log && ok "the spy saw that import (C_FindObjects in its trace)" ||
    ko "the spy saw nothing of the version 2 import"
grep -Eq "C_DeriveKey|C_UnwrapKey" spy.log && ko "a version 2 import called $(grep -Eo 'C_DeriveKey|C_UnwrapKey' spy.log | sort -u | tr '\n' ' ')" ||
    ok "a version 2 import calls neither C_DeriveKey nor C_UnwrapKey (no key transport)"
"$CTL" provision --product ACME/SPY2 --count 1 --out spy2-certs >/dev/null 2>&1 &&
    openssl verify -CAfile root.pem -untrusted spy2-ca.pem spy2-certs/SN-000001.pem >/dev/null 2>&1 &&
    ok "a device certificate under the Guardian-made CA key verifies to the OEM root" ||
    ko "no verifiable device certificate under the Guardian-made CA key"

finish
