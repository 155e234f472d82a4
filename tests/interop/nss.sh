#!/bin/bash
#
# nss.sh <guardian-pkcs11.so> — NSS (modutil, certutil from libnss3-tools): two
# NSS databases, one with SoftHSM added as a module, one with the Guardian
# module (both under the same module name), must list the same modules' slots
# and tokens, the same certificates and the same keys.  A certificate written
# into the token with pkcs11-tool must come back byte for byte; a key pair and
# self-signed certificate made by NSS through the module (certutil -S: key
# generation, signing, object creation) must be visible directly too.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init nss "$@"

M=$GUARDIAN_MODULE
D=$SOFTHSM_MODULE
LABEL=interop
MODNAME=interop-p11

make_token "$LABEL"

# Something to list: a certificate object made by openssl, written with pkcs11-tool.
must "make a certificate" openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout /dev/null -subj /CN=nss-imported -days 30 -outform DER -out imported.der -config /dev/null
must "write the certificate into the token" pkcs11-tool --module "$D" --token-label "$LABEL" --login \
    --pin "$USER_PIN" --write-object imported.der --type cert --id 0a --label imported

printf '%s\n' "$USER_PIN" >pin.txt
head -c 64 /dev/urandom >noise.bin

for which in direct module; do
    if [ "$which" = module ]; then mod=$M; else mod=$D; fi
    mkdir "db.$which"
    must "certutil -N ($which)" certutil -N -d "sql:db.$which" --empty-password
    check "modutil -add $MODNAME ($which)" modutil -add "$MODNAME" -libfile "$mod" -dbdir "sql:db.$which" -force
done

mkdir -p out
# nss NAME CMD...: run CMD (with @DB@ replaced by each database) into out/NAME.{direct,module}.
nss() {
    local name=$1 which rc a args
    shift
    for which in direct module; do
        args=()
        for a in "$@"; do args+=("${a//@DB@/sql:db.$which}"); done
        rc=0
        "${args[@]}" >"out/$name.$which" 2>"out/$name.$which.err" </dev/null || rc=$?
        if [ "$rc" -ne 0 ]; then
            fail "$name ($which)" "exit status $rc" "out/$name.$which.err"
        fi
    done
}

# modutil -list: the library path and the library URI (C_GetInfo) differ.
nss modutil-list modutil -list -dbdir @DB@
for which in direct module; do
    sed -E -e 's/^(\tlibrary name: ).*/\1<library>/' \
        -e 's/^(\t   uri: pkcs11:library-manufacturer=).*/\1<library>/' \
        "out/modutil-list.$which" >"out/modutil-list.$which.n"
done
check_same "modutil -list: direct = module (library lines normalised)" out/modutil-list.direct.n out/modutil-list.module.n
TAB=$'\t'
check_grep "modutil -list: module $MODNAME is the Guardian library" \
    "^${TAB}library name: $M\$" out/modutil-list.module
check_grep "modutil -list: Guardian library URI" "^${TAB}   uri: pkcs11:library-manufacturer=Guardian%20PKCS%2311;" \
    out/modutil-list.module
check_grep "modutil -list: token $LABEL through the module" "^${TAB}token: $LABEL\$" out/modutil-list.module

nss certutil-L certutil -L -h all -d @DB@ -f pin.txt
check_same "certutil -L -h all: direct = module" out/certutil-L.direct out/certutil-L.module
check_grep "certutil -L (module) lists $LABEL:imported" "^$LABEL:imported " out/certutil-L.module

nss certutil-L-imported certutil -L -h "$LABEL" -n "$LABEL:imported" -r -d @DB@ -f pin.txt
for which in direct module; do
    check "certutil -L -r $LABEL:imported ($which) = the certificate written" cmp imported.der "out/certutil-L-imported.$which"
done

# NSS makes a key pair and a self-signed certificate in the token, through the module.
name="certutil -S: key pair and self-signed certificate in the token (module)"
check "$name" env GUARDIAN_DEBUG=trace certutil -S -d sql:db.module -h "$LABEL" -f pin.txt -n nss-self \
    -s CN=nss-self -x -t u,u,u -k ec -q nistp256 -Z SHA256 -z noise.bin -v 12
if trace_has "$(logfile "$name")" C_GenerateKeyPair && trace_has "$(logfile "$name")" C_Sign &&
    trace_has "$(logfile "$name")" C_CreateObject; then
    pass "certutil -S went through the Guardian module (C_GenerateKeyPair, C_Sign, C_CreateObject = CKR_OK)"
else
    fail "certutil -S went through the Guardian module" "missing calls in the trace" "$(logfile "$name")"
fi

nss certutil-L2 certutil -L -h all -d @DB@ -f pin.txt
check_same "certutil -L -h all after certutil -S: direct = module" out/certutil-L2.direct out/certutil-L2.module
check_grep "certutil -L (direct) lists $LABEL:nss-self made through the module" "^$LABEL:nss-self " \
    out/certutil-L2.direct

nss certutil-K certutil -K -h "$LABEL" -d @DB@ -f pin.txt
check_same "certutil -K (keys): direct = module" out/certutil-K.direct out/certutil-K.module
check_grep "certutil -K (module) shows the key of $LABEL:nss-self" "^< ?[0-9]+> ec +[0-9a-f]+ +$LABEL:nss-self\$" \
    out/certutil-K.module

nss certutil-L-self certutil -L -h "$LABEL" -n "$LABEL:nss-self" -a -d @DB@ -f pin.txt
check_same "certutil -L -a $LABEL:nss-self: direct = module" out/certutil-L-self.direct out/certutil-L-self.module
check "openssl verify: the self-signed certificate NSS made through the module" \
    openssl verify -CAfile out/certutil-L-self.module out/certutil-L-self.module

finish
