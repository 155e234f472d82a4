#!/bin/bash
#
# p11tool.sh <guardian-pkcs11.so> — GnuTLS p11tool with --provider SoftHSM and
# --provider the Guardian module: tokens, token URLs, objects (logged in),
# mechanisms, public key export and a signing test, compared.
#
# p11tool prints no library-level (C_GetInfo) lines in these listings, so
# outputs are compared unchanged.  Mechanism flags are the one exception,
# and it is SoftHSM's: C_GetMechanismInfo ORs flags into the caller's struct
# without clearing it, and GnuTLS reuses one struct for the whole list, so the
# direct listing shows flags left over from earlier mechanisms (e.g. AES-ECB
# "sign verify"); the module zeroes the struct first.  So the mechanism check
# requires the same mechanisms and key sizes in the same order, and the
# module's flags to be a subset of the direct ones.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init p11tool "$@"

M=$GUARDIAN_MODULE
D=$SOFTHSM_MODULE
LABEL=interop

make_token "$LABEL"
must "create EC key" pkcs11-tool --module "$D" --token-label "$LABEL" --login --pin "$USER_PIN" \
    --keypairgen --key-type EC:prime256v1 --id 07 --label gnutls-key
# A certificate too, so --list-all has all three kinds of object.
must "make a certificate" openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout /dev/null -subj /CN=p11tool -days 30 -outform DER -out cert.der \
    -config /dev/null
must "store the certificate" pkcs11-tool --module "$D" --token-label "$LABEL" --login --pin "$USER_PIN" \
    --write-object cert.der --type cert --id 08 --label gnutls-cert

TOKEN_URL="pkcs11:token=$LABEL"
export GNUTLS_PIN=$USER_PIN

# pt NAME ARGS...: p11tool through both providers into out/NAME.{direct,module}.
mkdir -p out
pt() {
    local name=$1 which mod rc
    shift
    for which in direct module; do
        if [ "$which" = module ]; then mod=$M; else mod=$D; fi
        rc=0
        p11tool --provider "$mod" "$@" >"out/$name.$which" 2>"out/$name.$which.err" || rc=$?
        if [ "$rc" -ne 0 ]; then
            fail "p11tool $name ($which)" "exit status $rc" "out/$name.$which.err"
        fi
    done
}

pt list-tokens --list-tokens
check_same "p11tool --list-tokens: direct = module" out/list-tokens.direct out/list-tokens.module
check_grep "p11tool --list-tokens: module shows token $LABEL" "^[[:space:]]+Label: $LABEL\$" out/list-tokens.module

pt list-token-urls --list-token-urls
check_same "p11tool --list-token-urls: direct = module" out/list-token-urls.direct out/list-token-urls.module

pt list-all --login --list-all "$TOKEN_URL"
check_same "p11tool --login --list-all: direct = module" out/list-all.direct out/list-all.module
check_grep "p11tool --list-all (module): private key listed" 'Type: Private key \(EC/ECDSA-SECP256R1\)' \
    out/list-all.module
check_grep "p11tool --list-all (module): certificate listed" 'Type: X\.509 Certificate' out/list-all.module

pt list-all-public --list-all "$TOKEN_URL"
check_same "p11tool --list-all (not logged in): direct = module" out/list-all-public.direct out/list-all-public.module

pt list-privkeys --login --list-privkeys "$TOKEN_URL"
check_same "p11tool --login --list-privkeys: direct = module" out/list-privkeys.direct out/list-privkeys.module

pt export-pubkey --export "$TOKEN_URL;object=gnutls-key;type=public"
check_same "p11tool --export public key: direct = module" out/export-pubkey.direct out/export-pubkey.module

pt export-cert --export "$TOKEN_URL;object=gnutls-cert;type=cert" --outder
check "p11tool --export certificate (module) = the stored certificate" cmp cert.der out/export-cert.module

pt test-sign --login --test-sign "$TOKEN_URL;object=gnutls-key"
for which in direct module; do
    check_grep "p11tool --test-sign ($which): verified against the token's public key" \
        'Verifying against public key in the token\.\.\. ok' "out/test-sign.$which.err"
done

# Mechanisms: see the comment at the top.
pt list-mechanisms --list-mechanisms "$TOKEN_URL"
# mech_check DIRECT MODULE: prints one line per problem, nothing when fine.
mech_check() {
    awk '
        # "[0x1081] CKM_AES_ECB keysize range (16, 32) encrypt decrypt": the
        # part up to the key sizes is the identity, the rest the flags.
        function split_line(line, parts,   id, i, n, w) {
            n = split(line, w, " ")
            id = w[1] " " w[2]
            i = 3
            if (w[3] == "keysize") { id = id " " w[3] " " w[4] " " w[5] " " w[6]; i = 7 }
            parts["id"] = id
            parts["flags"] = ""
            for (; i <= n; i++) parts["flags"] = parts["flags"] " " w[i]
        }
        FNR == NR { direct[FNR] = $0; nd = FNR; next }
        # The Guardian vendor mechanisms (0xC744xxxx) come on top of the
        # backend list; mech_vendor checks them.
        /^\[0xc744/ { next }
        {
            nm = FNR
            if (!(FNR in direct)) { print "module has an extra line: " $0; next }
            split_line(direct[FNR], d); split_line($0, m)
            if (d["id"] != m["id"]) { print "line " FNR ": direct \"" direct[FNR] "\", module \"" $0 "\""; next }
            nf = split(m["flags"], mf, " ")
            for (k = 1; k <= nf; k++)
                if (index(d["flags"] " ", " " mf[k] " ") == 0)
                    print "line " FNR ": module flag \"" mf[k] "\" not in direct: " $0
            if (d["flags"] != m["flags"]) leak++
        }
        END {
            if (nm != nd) print "direct lists " nd " mechanisms, module " nm
            if (nd == 0) print "no mechanisms listed"
            if (leak) print "INFO " leak " mechanism(s) show extra flags direct (SoftHSM C_GetMechanismInfo OR-ing)" > "/dev/stderr"
        }' "$1" "$2"
}
mech_check out/list-mechanisms.direct out/list-mechanisms.module >out/mech-problems 2>out/mech-info
if [ -s out/mech-problems ]; then
    fail "p11tool --list-mechanisms: same mechanisms, module flags within direct flags" \
        "$(wc -l <out/mech-problems) problem(s)" out/mech-problems
else
    pass "p11tool --list-mechanisms: same mechanisms, module flags within direct flags"
fi
check_grep "p11tool --list-mechanisms (module): unwrap-into-token 0xC7440001 advertised" \
    '^\[0xc7440001\] .*unwrap' out/list-mechanisms.module
check_grep "p11tool --list-mechanisms (module): derive-device-certificate 0xC7440002 advertised" \
    '^\[0xc7440002\] .*derive' out/list-mechanisms.module
if [ -s out/mech-info ]; then
    sed 's/^INFO /INFO p11tool --list-mechanisms: /' out/mech-info
fi
# The module's list is stable: a second listing is identical.
p11tool --provider "$M" --list-mechanisms "$TOKEN_URL" >out/list-mechanisms.module2 2>&1 || true
check_same "p11tool --list-mechanisms (module) is the same twice" out/list-mechanisms.module out/list-mechanisms.module2
check_grep "p11tool --list-mechanisms (module): CKM_AES_ECB is encrypt/decrypt only" \
    '^\[0x1081\] CKM_AES_ECB keysize range \(16, 32\) encrypt decrypt$' out/list-mechanisms.module

# Through the module for real: the trace shows the calls.
GUARDIAN_DEBUG=trace p11tool --provider "$M" --login --list-all "$TOKEN_URL" >out/trace.out 2>out/trace.err || true
if trace_has out/trace.err C_Login && trace_has out/trace.err C_FindObjects; then
    pass "p11tool reached the Guardian module (C_Login, C_FindObjects = CKR_OK in its trace)"
else
    fail "p11tool reached the Guardian module" "no C_Login/C_FindObjects = CKR_OK in the trace" out/trace.err
fi

finish
