#!/bin/bash
#
# openssl_engine.sh <guardian-pkcs11.so> — OpenSSL 3 through the libp11 engine
# (libengine-pkcs11-openssl), once with MODULE_PATH = SoftHSM, once with
# MODULE_PATH = the Guardian module: a self-signed certificate made with a token
# EC key must verify, and both certificates must carry the token's public key.
# Also a detached signature (openssl dgst -sign) with the engine key, and the
# PKCS11_MODULE_PATH way of naming the module.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init openssl_engine "$@"

M=$GUARDIAN_MODULE
D=$SOFTHSM_MODULE
LABEL=interop
KEY=engine-key
ENGINE_SO=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
URI="pkcs11:token=$LABEL;object=$KEY;type=private;pin-value=$USER_PIN"

if [ ! -f "$ENGINE_SO" ]; then
    fail "openssl engine" "$ENGINE_SO missing (apt-get install libengine-pkcs11-openssl)"
    finish
fi

make_token "$LABEL"
must "create EC key $KEY" pkcs11-tool --module "$D" --token-label "$LABEL" --login --pin "$USER_PIN" \
    --keypairgen --key-type EC:prime256v1 --id 0e --label "$KEY"
must "export the token's public key" pkcs11-tool --module "$D" --token-label "$LABEL" \
    --read-object --type pubkey --id 0e -o token-pub.der
must "convert the token's public key" openssl ec -pubin -inform DER -in token-pub.der -out token-pub.pem

# write_cnf FILE MODULE: the engine configuration measured in INTEROP-NOTES.md.
write_cnf() {
    cat >"$1" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE_SO
MODULE_PATH = $2
init = 0
[req]
distinguished_name = req_dn
[req_dn]
EOF
}
write_cnf direct.cnf "$D"
write_cnf module.cnf "$M"

printf 'engine message\n' >msg

for which in direct module; do
    # Through the module, the Guardian trace shows which calls reached it.
    if [ "$which" = module ]; then dbg=trace; else dbg=warn; fi
    name="openssl req -x509 with the token key ($which)"
    check "$name" env OPENSSL_CONF="$which.cnf" GUARDIAN_DEBUG=$dbg openssl req -new -x509 -engine pkcs11 \
        -keyform engine -key "$URI" -subj /CN=x -days 30 -sha256 -out "cert.$which.pem"
    cp "$(logfile "$name")" "req.$which.log"
    check "openssl verify: self-signed certificate ($which)" \
        openssl verify -CAfile "cert.$which.pem" "cert.$which.pem"
    : >"certpub.$which.pem"
    : >"cert.$which.txt"
    if [ -s "cert.$which.pem" ]; then
        openssl x509 -in "cert.$which.pem" -noout -pubkey >"certpub.$which.pem" 2>/dev/null || true
        openssl x509 -in "cert.$which.pem" -noout -text >"cert.$which.txt" 2>/dev/null || true
    fi
    check_same "certificate ($which) carries the token's public key" token-pub.pem "certpub.$which.pem"
    check_grep "certificate ($which) is signed ecdsa-with-SHA256" 'Signature Algorithm: ecdsa-with-SHA256' \
        "cert.$which.txt"

    check "openssl dgst -sha256 -sign with the engine key ($which)" \
        env OPENSSL_CONF="$which.cnf" openssl dgst -sha256 -engine pkcs11 -keyform engine -sign "$URI" \
        -out "sig.$which.der" msg
    check "openssl verifies the engine signature ($which)" \
        openssl dgst -sha256 -verify token-pub.pem -signature "sig.$which.der" msg
done

check_same "certificates direct and via module carry the same public key" certpub.direct.pem certpub.module.pem

# The engine really went through our module: it logged in and signed there;
# and the direct run never touched it.
if trace_has req.module.log C_Login && trace_has req.module.log C_Sign; then
    pass "openssl engine reached the Guardian module (C_Login, C_Sign = CKR_OK in its trace)"
else
    fail "openssl engine reached the Guardian module" "no C_Login/C_Sign = CKR_OK in the Guardian trace" req.module.log
fi
if grep -Eq '^guardian\[[0-9]+\]: ' req.direct.log; then
    fail "direct engine run bypasses the Guardian module" "Guardian log lines in the direct run" req.direct.log
else
    pass "direct engine run bypasses the Guardian module"
fi

# PKCS11_MODULE_PATH alone (no engine section in any configuration) also works.
# (-config names a file with only [req]: one that also configures the engine
# fails with "dynamic_load:init failed" on OpenSSL 3.0, straight on SoftHSM too.)
printf '[req]\ndistinguished_name = req_dn\n[req_dn]\n' >req-only.cnf
for which in direct module; do
    if [ "$which" = module ]; then mod=$M; else mod=$D; fi
    check "openssl req -x509 with PKCS11_MODULE_PATH ($which)" \
        env PKCS11_MODULE_PATH="$mod" openssl req -new -x509 -engine pkcs11 -keyform engine -key "$URI" \
        -subj /CN=y -days 30 -sha256 -out "cert.env.$which.pem" -config req-only.cnf
    check "openssl verify: certificate made with PKCS11_MODULE_PATH ($which)" \
        openssl verify -CAfile "cert.env.$which.pem" "cert.env.$which.pem"
done

finish
