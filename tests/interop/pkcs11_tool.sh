#!/bin/bash
#
# pkcs11_tool.sh <guardian-pkcs11.so> — OpenSC pkcs11-tool straight on SoftHSMv2
# and through the Guardian module: -I/-L/-T/-M/-O, EC key generation, ECDSA
# signatures checked with OpenSSL and across the two paths, --test, --test-fork,
# and threads racing C_Initialize (--test-threads), which SoftHSM alone does not
# survive and the module must.
#
# Known facts this relies on (docs: ../shared/INTEROP-NOTES.md (beside the repository)):
# - SoftHSM has no CKM_ECDSA_SHA256: we hash with openssl and sign with -m ECDSA.
# - pkcs11-tool --verify exits 0 even for a bad signature: we read its message.
# - --test needs an EC-only token (no RSA key with CKA_DECRYPT); --allow-sw
#   because SoftHSM sets no CKF_HW.
# - pkcs11-tool --test-threads: after its own work the main thread sleeps 30 s
#   when a test thread is still running, so the runs go in parallel.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init pkcs11_tool "$@"

M=$GUARDIAN_MODULE
D=$SOFTHSM_MODULE
LABEL=interop
THREAD_RUNS=${THREAD_RUNS:-10}

make_token "$LABEL"

# p11 direct|module ARGS...
p11() {
    local which=$1
    shift
    case $which in
    direct) pkcs11-tool --module "$D" "$@" ;;
    module) pkcs11-tool --module "$M" "$@" ;;
    esac
}

# capture NAME direct|module ARGS...: run into out/NAME.<which>; a failure is
# a FAIL (with its output) but the comparison still shows what differs.
mkdir -p out
capture() {
    local name=$1 which=$2 rc=0
    shift 2
    p11 "$which" "$@" >"out/$name.$which" 2>"out/$name.$which.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "pkcs11-tool $name ($which)" "exit status $rc" "out/$name.$which.err"
    fi
}

# compare NAME ARGS...: run through both, compare stdout exactly.
compare() {
    local name=$1
    shift
    capture "$name" direct "$@"
    capture "$name" module "$@"
    check_same "pkcs11-tool $name: direct = module" "out/$name.direct" "out/$name.module"
}

# ---- library, slots, mechanisms ---------------------------------------------

capture info direct -I
capture info module -I
normalise_info out/info.direct >out/info.direct.n
normalise_info out/info.module >out/info.module.n
check_same "pkcs11-tool -I: direct = module (library lines normalised)" out/info.direct.n out/info.module.n
check_grep "pkcs11-tool -I: module manufacturer is Guardian PKCS#11" '^Manufacturer +Guardian PKCS#11 *$' out/info.module
check_grep "pkcs11-tool -I: module reports Cryptoki 2.40" '^Cryptoki version 2\.40$' out/info.module
check_grep "pkcs11-tool -I: direct manufacturer is SoftHSM" '^Manufacturer +SoftHSM *$' out/info.direct

compare "-L" -L
check_grep "pkcs11-tool -L: token $LABEL listed through the module" "token label +: $LABEL\$" out/-L.module
compare "-T" -T
# The module lists the backend's mechanisms unchanged, plus the Guardian's
# vendor mechanisms that the slot can run (unwrap-into-token, 0xC7440001;
# derive-device-certificate, 0xC7440002).
capture "-M" direct -M --token-label "$LABEL"
capture "-M" module -M --token-label "$LABEL"
grep -vi 'mechtype-0xC744' out/-M.module >out/-M.module.standard || true
check_same "pkcs11-tool -M: direct = module, vendor mechanisms aside" out/-M.direct out/-M.module.standard
check_grep "pkcs11-tool -M: module lists ECDSA" '^  ECDSA, keySize=' out/-M.module
check_grep "pkcs11-tool -M: module lists unwrap-into-token (0xC7440001, unwrap)" \
    '^  mechtype-0xC7440001, keySize=\{256,384\}, unwrap$' out/-M.module
check_grep "pkcs11-tool -M: module lists derive-device-certificate (0xC7440002, derive)" \
    '^  mechtype-0xC7440002, keySize=\{256,4096\}, derive$' out/-M.module

# ---- keys ---------------------------------------------------------------------

# One key pair made through the module, one made directly.
check "pkcs11-tool --keypairgen EC prime256v1 (module)" \
    p11 module --token-label "$LABEL" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
    --id 01 --label via-module
check "pkcs11-tool --keypairgen EC prime256v1 (direct)" \
    p11 direct --token-label "$LABEL" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
    --id 02 --label via-direct

compare "-O (public)" -O --token-label "$LABEL"
compare "-O (logged in)" -O --token-label "$LABEL" --login --pin "$USER_PIN"
check_grep "pkcs11-tool -O: module shows the key made through it" 'label: +via-module' "out/-O (logged in).module"
check_grep "pkcs11-tool -O: module shows the key made directly" 'label: +via-direct' "out/-O (logged in).module"
check_grep "pkcs11-tool -O: module shows the private key" '^Private Key Object; EC' "out/-O (logged in).module"

# Public keys read back through both paths must be byte-identical.
for id in 01 02; do
    for which in direct module; do
        check "pkcs11-tool --read-object pubkey id $id ($which)" \
            p11 "$which" --token-label "$LABEL" --read-object --type pubkey --id "$id" -o "pub$id.$which.der"
    done
    check "public key id $id: direct = module" cmp "pub$id.direct.der" "pub$id.module.der"
    check "openssl reads public key id $id" \
        openssl ec -pubin -inform DER -in "pub$id.module.der" -out "pub$id.pem"
done

# ---- ECDSA signatures ---------------------------------------------------------

printf 'interop message %s\n' "$(date +%s%N)" >msg
openssl dgst -sha256 -binary msg >msg.sha256
printf 'tampered\n' >>msg.bad

for id in 01 02; do
    for which in direct module; do
        sig=sig$id.$which.der
        check "pkcs11-tool --sign -m ECDSA key $id ($which)" \
            p11 "$which" --token-label "$LABEL" --login --pin "$USER_PIN" --sign -m ECDSA --id "$id" \
            -i msg.sha256 -o "$sig" --signature-format openssl
        check "openssl verifies key $id signature made $which" \
            openssl dgst -sha256 -verify "pub$id.pem" -signature "$sig" msg
    done
done
check_fails "openssl rejects the module's signature over other data" \
    openssl dgst -sha256 -verify pub01.pem -signature sig01.module.der msg.bad

# Each path verifies the other's signature (pkcs11-tool --verify exits 0 either
# way: judge by its message).
for pair in "module direct" "direct module"; do
    read -r signer verifier <<<"$pair"
    p11 "$verifier" --token-label "$LABEL" --verify -m ECDSA --id 01 -i msg.sha256 \
        --signature-file "sig01.$signer.der" --signature-format openssl >"out/verify.$signer.by.$verifier" 2>&1 || true
    check_grep "pkcs11-tool --verify ($verifier) accepts the signature made $signer" \
        '^Signature is valid$' "out/verify.$signer.by.$verifier"
done
openssl dgst -sha256 -binary msg.bad >msg.bad.sha256
p11 module --token-label "$LABEL" --verify -m ECDSA --id 01 -i msg.bad.sha256 \
    --signature-file sig01.module.der --signature-format openssl >out/verify.bad 2>&1 || true
check_grep "pkcs11-tool --verify (module) rejects a signature over other data" '^Invalid signature$' out/verify.bad

# ---- pkcs11-tool's own tests ---------------------------------------------------

# The token holds only EC keys, as --test needs.
compare "--test" --test --token-label "$LABEL" --login --pin "$USER_PIN" --allow-sw
check_grep "pkcs11-tool --test (module): no errors" '^No errors$' out/--test.module

# --test-fork: the child calls C_Initialize.  SoftHSM alone answers
# CKR_CRYPTOKI_ALREADY_INITIALIZED unless library.reset_on_fork is set; the
# module must work either way.
check "pkcs11-tool --test-fork (module)" p11 module --test-fork
rc=0
p11 direct --test-fork >out/fork.direct 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then
    info "pkcs11-tool --test-fork direct: passed"
else
    info "pkcs11-tool --test-fork direct: exit status $rc ($(grep -o 'CKR_[A-Z_]*' out/fork.direct | head -n 1)) — SoftHSM without reset_on_fork, expected"
fi
write_softhsm_conf "$WORK/softhsm2-reset.conf" true
check "pkcs11-tool --test-fork with reset_on_fork (direct)" \
    env SOFTHSM2_CONF="$WORK/softhsm2-reset.conf" pkcs11-tool --module "$D" --test-fork
check "pkcs11-tool --test-fork with reset_on_fork (module)" \
    env SOFTHSM2_CONF="$WORK/softhsm2-reset.conf" pkcs11-tool --module "$M" --test-fork

# ---- threads racing C_Initialize -------------------------------------------------

# Two threads and the main thread race C_Initialize, then call C_GetInfo,
# C_GetSlotList and C_GetTokenInfo(slot index 0).  IN: C_Initialize(NULL);
# IL: C_Initialize with CKF_OS_LOCKING_OK; ILIN: both, in that order.
# Every run of every variant (module and direct) goes at once: each may sleep
# 30 s.  A run lasts about 30 s; direct SoftHSM runs also hang now and then
# (after the test threads are done), so they are stopped after 40 s.  A module
# run has 90 s: one that needs them is a hang, and a failure.
VARIANTS="IN:GI:SL:T0 IL:GI:SL:T0 ILIN:GI:SL:T0"
mkdir -p threads
pids=()
for v in $VARIANTS; do
    for which in module direct; do
        for i in $(seq 1 "$THREAD_RUNS"); do
            (
                rc=0
                if [ "$which" = module ]; then
                    mod=$M limit=90
                else
                    mod=$D limit=40
                fi
                timeout "$limit" pkcs11-tool --module "$mod" \
                    --test-threads "$v" --test-threads "$v" >"threads/$v.$which.$i" 2>&1 || rc=$?
                echo "$rc" >"threads/$v.$which.$i.rc"
            ) 2>/dev/null & # (the shell's own "Segmentation fault" notices)
            pids+=("$!")
        done
    done
done
wait "${pids[@]}" || true

# thread_run_ok FILE: the run exited 0 and both test threads returned CKR_OK.
thread_run_ok() {
    [ "$(cat "$1.rc" 2>/dev/null)" = 0 ] &&
        grep -q '^test_threads all threads have ended with CKR_OK' "$1" &&
        [ "$(grep -c '^Test thread [01] returning rv = 0$' "$1")" = 2 ]
}

for v in $VARIANTS; do
    ok=0
    bad=
    for i in $(seq 1 "$THREAD_RUNS"); do
        if thread_run_ok "threads/$v.module.$i"; then
            ok=$((ok + 1))
        elif [ -z "$bad" ]; then
            bad=threads/$v.module.$i
        fi
    done
    # How often a test thread's C_Initialize won against the main thread's
    # (CKR_OK) or lost (ALREADY_INITIALIZED): evidence that the race happened.
    won=$(cat threads/"$v".module.* | grep -Ec '^Test thread [01] C_Initialize +returned CKR_OK' || true)
    lost=$(cat threads/"$v".module.* | grep -Ec '^Test thread [01] C_Initialize +returned CKR_CRYPTOKI_ALREADY_INITIALIZED' || true)
    info "pkcs11-tool --test-threads $v (module): test threads' C_Initialize: $won CKR_OK, $lost CKR_CRYPTOKI_ALREADY_INITIALIZED"
    if [ "$ok" -eq "$THREAD_RUNS" ]; then
        pass "pkcs11-tool --test-threads $v x2 (module): $ok/$THREAD_RUNS runs"
    else
        {
            echo "exit status $(cat "$bad.rc" 2>/dev/null || echo unknown)"
            tail -n 12 "$bad"
        } >"$bad.summary"
        fail "pkcs11-tool --test-threads $v x2 (module)" "only $ok/$THREAD_RUNS runs passed; first bad run:" "$bad.summary"
    fi

    # Direct SoftHSM is recorded, not asserted: it crashes when raced.
    ok=0
    crashes=
    for i in $(seq 1 "$THREAD_RUNS"); do
        rc=$(cat "threads/$v.direct.$i.rc" 2>/dev/null || echo unknown)
        if thread_run_ok "threads/$v.direct.$i"; then
            ok=$((ok + 1))
        else
            crashes="$crashes $rc"
        fi
    done
    info "pkcs11-tool --test-threads $v x2 (direct SoftHSM, not asserted): $ok/$THREAD_RUNS runs passed;" \
        "failed runs' exit statuses:${crashes:- none} (134 = SIGABRT, 139 = SIGSEGV, 124 = hung, stopped)"
done

finish
