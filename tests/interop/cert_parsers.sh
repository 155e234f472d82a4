#!/bin/bash
#
# cert_parsers.sh <guardian-pkcs11.so> — device certificates every stack
# reads (issue 11).  Device certificates are made through the module
# (guardianctl provision: CKM_GUARDIAN_DERIVE_DEVICE_CERT behind the
# Guardian's request) for P-256, P-384 and RSA-2048 device keys, under an EC
# (P-256) and an RSA-2048 production CA, each with the default profile (no
# device-identity extension) and with an OEM's --device-ext-oid
# (1.3.6.1.4.1.55555.1, a small arc).  Each of them is parsed and its chain
# device -> production CA -> OEM root verified by every stack devices and
# their back-ends run, as Debian 12 packages them:
#
#   OpenSSL 3.0      openssl verify
#   GnuTLS 3.7       certtool --verify (gnutls-bin)
#   Go 1.19          crypto/x509: parsers/go_verify.go (golang-go, built offline)
#   cryptography 38  parsers/py_verify.py with /usr/bin/python3 (python3-cryptography)
#   Java 17          CertificateFactory + CertPathValidator PKIX: parsers/CertVerify.java (default-jdk-headless)
#   mbedTLS 2.28     mbedtls_x509_crt_parse + mbedtls_x509_crt_verify: parsers/mbedtls_verify.c (libmbedtls-dev)
#   wolfSSL 5.5      wolfSSL_CertManagerLoadCA + VerifyBuffer: parsers/wolfssl_verify.c (libwolfssl-dev)
#
# The programs are built here, at test time; a stack that is not installed is
# a FAIL naming its Debian package (tools/debian-packages lists them all), never
# a skip.  Negative controls: a device certificate with one bit of its
# signature flipped is refused by every stack, and so is a device
# certificate under a production CA of another root.
#
# Measured, not asserted (INFO lines; docs/certificate-profile.md): what each
# stack does with a certificate carrying the legacy extension OID
# 2.25.<uuid>.3 (a package made with that OID named explicitly).
#
# guardianctl and guardian-wrap: $GUARDIANCTL and $GUARDIAN_WRAP (ctest sets
# them), else build/tools/ next to the module.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
PARSERS=$(cd "$(dirname "$0")/parsers" && pwd)
CTL=$(readlink -f "${GUARDIANCTL:-$(dirname "${1:-.}")/tools/guardianctl}" || true)
W=$(readlink -f "${GUARDIAN_WRAP:-$(dirname "${1:-.}")/tools/guardian-wrap}" || true)
interop_init cert_parsers "$@"
[ -x "$CTL" ] && [ -x "$W" ] || {
    fail "tools" "guardianctl ($CTL) or guardian-wrap ($W) not found: set GUARDIANCTL and GUARDIAN_WRAP"
    finish
}
OEM_OID=1.3.6.1.4.1.55555.1
LEGACY_OID=2.25.62758544141009244537205961397770264239.3
STACKS=(openssl gnutls go python java mbedtls wolfssl)

# ---- the parsers, built now -------------------------------------------------------
# built[STACK]=1 once its program (or tool) is there; otherwise every check of
# that stack fails, saying which package to install.
declare -A built need
need=([openssl]=openssl [gnutls]=gnutls-bin [go]=golang-go [python]=python3-cryptography
      [java]=default-jdk-headless [mbedtls]=libmbedtls-dev [wolfssl]=libwolfssl-dev)
mkdir -p bin
build() { # STACK CMD...
    local stack=$1 log
    shift
    log=$(logfile "build $stack")
    if "$@" >"$log" 2>&1; then
        built[$stack]=1
        pass "build $stack"
    else
        fail "build $stack" "cannot build or find the $stack parser: install ${need[$stack]} (tools/debian-packages)" "$log"
    fi
}
build openssl openssl version
build gnutls certtool --version
build go env GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS= CGO_ENABLED=0 \
    go build -o bin/go_verify "$PARSERS/go_verify.go"
build python /usr/bin/python3 -c 'import cryptography.x509'
build java javac -d bin "$PARSERS/CertVerify.java"
build mbedtls cc -std=c11 -Wall -Werror -o bin/mbedtls_verify "$PARSERS/mbedtls_verify.c" -lmbedx509 -lmbedcrypto
build wolfssl cc -std=c11 -Wall -Werror -o bin/wolfssl_verify "$PARSERS/wolfssl_verify.c" -lwolfssl
python_version=$(/usr/bin/python3 -c 'import cryptography; print(cryptography.__version__)' 2>/dev/null || echo none)
info "Go: $(go version 2>/dev/null | cut -d' ' -f3), cryptography: $python_version, $(java -version 2>&1 | head -n 1)"

# verify STACK ROOT CA DEVICE: the stack parses the three and verifies the chain.
verify() {
    local stack=$1 root=$2 ca=$3 dev=$4
    [ "${built[$stack]:-0}" = 1 ] || { echo "the $stack parser was not built (install ${need[$stack]})"; return 1; }
    case $stack in
    openssl) openssl x509 -in "$dev" -noout -text >/dev/null && openssl verify -CAfile "$root" -untrusted "$ca" "$dev" ;;
    gnutls)
        # certtool -i parses (its import error is what a refusal looks like);
        # --verify checks the chain device, CA against the root.
        cat "$dev" "$ca" >"$dev.chain"
        certtool -i --infile "$dev" >"$dev.gnutls" 2>&1 || { tail -n 1 "$dev.gnutls"; return 1; }
        certtool --verify --load-ca-certificate "$root" --infile "$dev.chain" >"$dev.gnutls" 2>&1 || {
            tail -n 2 "$dev.gnutls"
            return 1
        }
        grep -q 'Chain verification output: Verified' "$dev.gnutls" ;;
    go) bin/go_verify "$root" "$ca" "$dev" ;;
    python) /usr/bin/python3 "$PARSERS/py_verify.py" "$root" "$ca" "$dev" ;;
    java) java -cp bin CertVerify "$root" "$ca" "$dev" ;;
    mbedtls) bin/mbedtls_verify "$root" "$ca" "$dev" ;;
    wolfssl) bin/wolfssl_verify "$root" "$ca" "$dev" ;;
    esac
}

# ---- the OEM's PKI: a root, the package signer, an EC and an RSA production CA ---------
ca_ext='basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always'
pki() { # PREFIX: PREFIX-root, PREFIX-signer, PREFIX-ca-ec, PREFIX-ca-rsa (.key, .pem)
    local p=$1
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p-root.key" &&
        openssl req -new -x509 -key "$p-root.key" -subj "/O=ACME/CN=ACME $p Root" -days 3650 -out "$p-root.pem" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p-signer.key" &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p-ca-ec.key" &&
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$p-ca-rsa.key" || return 1
    for n in signer ca-ec ca-rsa; do
        local ext=$ca_ext
        [ $n = signer ] && ext='keyUsage=critical,digitalSignature'
        openssl req -new -key "$p-$n.key" -subj "/O=ACME/CN=ACME $p $n" -out "$p-$n.csr" &&
            openssl x509 -req -in "$p-$n.csr" -CA "$p-root.pem" -CAkey "$p-root.key" -days 3650 -out "$p-$n.pem" \
                -extfile <(printf '%s\n' "$ext") || return 1
    done
}
must "the OEM's PKI" pki acme
must "another OEM's PKI (negative control)" pki other

# ---- a Guardian, the OEM enrolled, one package per CA and extension setting -------------
make_token guardian
export GUARDIAN_MODULE GUARDIAN_TOKEN=guardian GUARDIAN_PIN=$USER_PIN GUARDIAN_SO_PIN=$SO_PIN
must "guardianctl init" "$CTL" init --out guardian.pem
must "enroll the OEM root" "$CTL" enroll-oem acme-root.pem --oem-id ACME --yes
package() { # PRODUCT CA [create options]: make, import
    local product=$1 ca=$2
    shift 2
    "$W" create --guardian-cert guardian.pem --signer-key acme-signer.key --signer-cert acme-signer.pem \
        --ca-key "$ca.key" --ca-cert "$ca.pem" --ca-chain acme-root.pem --oem-id ACME --product-id "$product" \
        --release 1 --units 10 --not-after +30 --out "$product.gpk" "$@" && "$CTL" import "$product.gpk"
}
must "package EC-DEFAULT" package EC-DEFAULT acme-ca-ec
must "package EC-OEMOID" package EC-OEMOID acme-ca-ec --device-ext-oid "$OEM_OID"
must "package RSA-DEFAULT" package RSA-DEFAULT acme-ca-rsa
must "package RSA-OEMOID" package RSA-OEMOID acme-ca-rsa --device-ext-oid "$OEM_OID"
must "package EC-LEGACY (measurement)" package EC-LEGACY acme-ca-ec --device-ext-oid "$LEGACY_OID"

# issue PRODUCT KEYTYPE: one device certificate through the module, its path on stdout.
issue() {
    local out=certs/$1-$2 f
    "$CTL" provision --product "ACME/$1" --count 1 --key-type "$2" --prefix "$1-$2-" --out "$out" >"$out.log" 2>&1 ||
        return 1
    f=$(find "$out" -name '*.pem' | head -n 1)
    [ -n "$f" ] || return 1
    # The certificate alone (provision may write the device key next to it).
    openssl x509 -in "$f" -out "$out.pem" && echo "$out.pem"
}
mkdir -p certs
declare -A cert
for product in EC-DEFAULT EC-OEMOID RSA-DEFAULT RSA-OEMOID EC-LEGACY; do
    for kt in p256 p384 rsa2048; do
        [ $product = EC-LEGACY ] && [ $kt != p256 ] && continue
        if f=$(issue $product $kt); then
            cert[$product/$kt]=$f
            pass "issue $product $kt through the module"
        else
            fail "issue $product $kt through the module" "guardianctl provision failed" "certs/$product-$kt.log"
        fi
    done
done

# ---- the profile as issued -----------------------------------------------------------------
for k in "${!cert[@]}"; do
    openssl x509 -in "${cert[$k]}" -noout -text >"${cert[$k]}.txt"
done
for kt in p256 p384 rsa2048; do
    for ca in EC RSA; do
        t=certs/$ca-DEFAULT-$kt.pem.txt
        if [ -f "$t" ] && ! grep -q '2\.25\.\|1\.3\.6\.1\.4\.1\.' "$t"; then
            pass "$ca-DEFAULT $kt: no device-identity extension"
        else
            fail "$ca-DEFAULT $kt: no device-identity extension" "an OID-named extension is there" "$t"
        fi
        t=certs/$ca-OEMOID-$kt.pem.txt
        check_grep "$ca-OEMOID $kt: the extension under $OEM_OID" "^ *${OEM_OID//./\\.}: *$" "$t"
    done
done

# ---- every stack, every certificate ---------------------------------------------------------
for product in EC-DEFAULT EC-OEMOID RSA-DEFAULT RSA-OEMOID; do
    case $product in EC-*) ca=acme-ca-ec.pem ;; *) ca=acme-ca-rsa.pem ;; esac
    for kt in p256 p384 rsa2048; do
        f=${cert[$product/$kt]:-certs/missing.pem}
        for stack in "${STACKS[@]}"; do
            check "$stack: $product $kt parses and verifies to the OEM root" verify "$stack" acme-root.pem "$ca" "$f"
        done
    done
done

# ---- negative controls: each stack can say no ----------------------------------------------
# One bit of the device certificate's signature flipped (its last byte: the
# ECDSA s or the RSA signature), and the right chain under another OEM's root.
f=${cert[EC-DEFAULT/p256]:-certs/missing.pem}
openssl x509 -in "$f" -outform DER -out good.der 2>/dev/null &&
    /usr/bin/python3 -c 'import sys; d = bytearray(open(sys.argv[1], "rb").read()); d[-1] ^= 1; open(sys.argv[2], "wb").write(d)' \
        good.der flipped.der &&
    openssl x509 -inform DER -in flipped.der -out flipped.pem 2>/dev/null
for stack in "${STACKS[@]}"; do
    if [ "${built[$stack]:-0}" != 1 ]; then
        # A refusal by a parser that is not there proves nothing.
        fail "$stack: negative controls" "the $stack parser was not built (install ${need[$stack]})"
        continue
    fi
    check_fails "$stack: refuses a device certificate with a flipped signature bit" \
        verify "$stack" acme-root.pem acme-ca-ec.pem flipped.pem
    check_fails "$stack: refuses the chain under another OEM's root" \
        verify "$stack" other-root.pem acme-ca-ec.pem "$f"
done

# ---- measured: the legacy 2.25.<uuid> extension ------------------------------------------
f=${cert[EC-LEGACY/p256]:-}
if [ -n "$f" ]; then
    for stack in "${STACKS[@]}"; do
        if out=$(verify "$stack" acme-root.pem acme-ca-ec.pem "$f" 2>&1); then
            info "legacy extension $LEGACY_OID: $stack accepts it"
        else
            info "legacy extension $LEGACY_OID: $stack REFUSES the certificate: $(printf '%s' "$out" | tail -n 1)"
        fi
    done
fi

finish
