#!/usr/bin/env bash
# test_provision.sh MODULE GUARDIANCTL GUARDIAN_WRAP — production through the
# module on a fresh SoftHSM token: `guardianctl provision` issues certificates
# that verify up to the OEM root; the quota is never exceeded with 2 processes x
# 2 threads racing a small one; Ctrl-C stops cleanly and the same command
# resumes; and a loop that kill -9s a provisioning process at random moments
# leaves issued <= authorised and an ISSUE record (with the same certificate)
# for every certificate a killed process wrote out.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
KILLS=${GUARDIAN_TEST_KILLS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/provision-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" prov
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=prov
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki
"$CTL" init --out guardian.pem >/dev/null 2>&1 || { ko "guardianctl init"; finish; exit; }
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"
pkg() { # PRODUCT UNITS [guardian-wrap options]
    local product=$1 units=$2
    shift 2
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "$product" --release 1 --units "$units" \
        --not-after +10 --out "$product.gpk" "$@" >/dev/null && "$CTL" import "$product.gpk" >/dev/null
}
# PY: the device extension under an OEM-chosen OID (2.999 is X.660's example
# arc): Python's cryptography >= 38 cannot parse 128-bit arcs such as 2.25.<uuid>.
pkg RACE 50 && pkg CRASH 50000 && pkg RUN 300 && pkg PY 10 --device-ext-oid 2.999.1 && pkg RAMP 100000 ||
    ko "packages"

# The Guardian certificate states what its token imports with, measured when
# it was made (id-guardian-transports, docs/package-format.md): SoftHSM 2.6.1
# has no CKD_SHA256_KDF, so aes-cbc and no transport; the packages above were
# made with --kdf auto, hence aes-cbc, and imported.
ARC=2.25.62758544141009244537205961397770264239
expect "A carries id-guardian-transports, not critical" 0 "^ +$ARC\.3\.1: *$" -- \
    openssl x509 -in guardian.pem -noout -text
expect "A states aes-cbc and no transport (SoftHSM: no CKD_SHA256_KDF)" 0 \
    "the Guardian offers aes-cbc \($ARC\.2\.1\), none \($ARC\.2\.0\)$" -- \
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id KDF --release 1 --units 1 --not-after +10 \
    --out kdf-auto.gpk
expect "an X9.63 package for this Guardian is refused by guardian-wrap" 1 \
    "--kdf x963-sha256: the Guardian certificate does not list it.*offers: aes-cbc" -- \
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id KDF --release 2 --units 1 --not-after +10 \
    --kdf x963-sha256 --out kdf-x963.gpk
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id KDF --release 2 --units 1 --not-after +10 \
    --kdf x963-sha256 --kdf-unlisted --out kdf-x963.gpk >/dev/null 2>&1
expect "... and made all the same, by the Guardian (nothing recorded)" 1 "CKR_GUARDIAN_TRANSPORT_UNSUPPORTED" -- \
    "$CTL" import kdf-x963.gpk
expect "the aes-cbc one imports" 0 "" -- "$CTL" import kdf-auto.gpk

# issued/remaining of a product, from `guardianctl products`
issued() { "$CTL" products | awk -v p="$1" '$2 == p {print $5}'; }
remaining() { "$CTL" products | awk -v p="$1" '$2 == p {print $6}'; }

# Every certificate file in DIR... has an ISSUE record whose digest is the
# certificate's SHA-256, and the store holds that very certificate.
check_recorded() { python3 "$HERE/../lib/audit_check.py" "$work/state/guardian.db" recorded "$@"; }

# ---- a run, its certificates, progress output, resume ---------------------------------
expect "provision 120 parts" 0 "provisioned 120 parts" -- "$CTL" provision --product ACME/RUN --count 120 --out run
n=$(find run -name '*.pem' | wc -l)
[ "$n" = 120 ] && ok "120 certificate files" || ko "$n certificate files, expected 120"
bad=$(find run -name '*.pem' -print0 | xargs -0 openssl verify -CAfile root.pem -untrusted ca.pem 2>&1 | grep -vc ': OK$')
[ "$bad" = 0 ] && ok "openssl verify: all 120 chain to the OEM root" || ko "openssl verify: $bad failures"
expect "plain progress lines when not a terminal" 0 "provision: [0-9]+/150 parts" -- \
    "$CTL" provision --product ACME/RUN --count 150 --out run
expect "resume skips what is done" 0 "provisioned 0 parts .* 150 already done" -- \
    "$CTL" provision --product ACME/RUN --count 150 --out run
[ "$(issued RUN)" = 150 ] && ok "issued = 150 = certificate files" || ko "issued $(issued RUN), expected 150"

# Ctrl-C: stops with 130, gives back what it reserved, and the same command resumes.
"$CTL" provision --product ACME/RUN --count 40 --first 1001 --out run-int --key-type rsa2048 >int.out 2>&1 &
pid=$!
sleep 0.5
kill -INT "$pid"
wait "$pid"
rc=$?
done_files=$(find run-int -name '*.pem' | wc -l)
if [ $rc = 130 ] && grep -q "run the same command again to resume" int.out; then
    ok "SIGINT: exit 130 after $done_files parts, resume hint"
elif [ $rc = 0 ]; then
    ok "SIGINT arrived after the run finished (fast machine): $done_files parts"
else
    ko "SIGINT: exit $rc"
    sed 's/^/    /' int.out
fi
[ "$(issued RUN)" = $((150 + done_files)) ] && ok "after SIGINT issued = files (unused units given back)" ||
    ko "after SIGINT issued $(issued RUN), files $((150 + done_files))"
expect "resume after SIGINT" 0 "already done" -- \
    "$CTL" provision --product ACME/RUN --count 40 --first 1001 --out run-int --key-type rsa2048
[ "$(find run-int -name "*.pem" | wc -l)" = 40 ] && ok "resumed run completed: 40 RSA parts" || ko "resumed run incomplete"

# Any PKCS#11 consumer: PyKCS11 makes the same C_DeriveKey (docs/derive-mechanism.md).
if ldd "$M" | grep -q libasan; then
    # PyKCS11's SWIG extension trips an ASan CHECK inside python3 even with the
    # runtime preloaded (measured): this check runs in the normal build.
    echo "SKIP PyKCS11 with an ASan-built module (runs in the normal build)"
else
    /usr/bin/python3 "$HERE/pykcs11_derive.py" "$M" prov 1234 ACME PY ca.pem >py.out 2>&1 ||
        echo "FAIL exit status $?" >>py.out
    while read -r verdict rest; do
        case $verdict in PASS) ok "PyKCS11: $rest" ;; FAIL) ko "PyKCS11: $rest" ;; esac
    done <py.out
    grep -q "^FAIL" py.out && sed "s/^/    /" py.out
fi

# Refusals explained.
expect "unknown product" 1 "not installed" -- "$CTL" provision --product ACME/NOPE --count 1
expect "bad count" 1 "--count must be" -- "$CTL" provision --product ACME/RUN --count 0

# ---- 2 processes x 2 threads racing a quota of 50 -------------------------------------------
# Each asks for all 50 (a --count beyond the remaining units is refused before
# the start: test_errors.sh), together twice the quota.
"$CTL" provision --product ACME/RACE --count 50 --threads 2 --prefix A- --out race-a >race-a.out 2>&1 &
a=$!
"$CTL" provision --product ACME/RACE --count 50 --threads 2 --prefix B- --out race-b >race-b.out 2>&1 &
b=$!
wait $a
wait $b
files=$(find race-a race-b -name '*.pem' | wc -l)
[ "$files" = 50 ] && ok "race: exactly 50 certificates from 2 processes x 2 threads" || ko "race: $files certificates"
[ "$(issued RACE)" = 50 ] && [ "$(remaining RACE)" = 0 ] && ok "race: issued 50, remaining 0" ||
    ko "race: issued $(issued RACE), remaining $(remaining RACE)"
# The quota runs out under one of them (QUOTA_EXHAUSTED), or one is refused
# at its start because the other has spent some already.
grep -Eq "QUOTA_EXHAUSTED|units remaining, fewer than" race-a.out race-b.out && ok "race: quota exhaustion reported by name" ||
    ko "race: no QUOTA_EXHAUSTED message"
check_recorded race-a race-b >check.out && ok "race: every certificate has its ISSUE record" ||
    { ko "race: records"; sed 's/^/    /' check.out; }

# ---- 4 processes starting together, 6 rounds --------------------------------------------------
# Each ramps its reservation blocks (1, 2, 4 ... units) at the same moments as
# the others, so the token's anchor is moved by several processes at once
# (every connection of the Guardian service is such a process).  Before the
# anchor's updates took the store's cross-process lock, 17-21 of these 24
# runs failed: "the token holds 3 state anchors" (measured).
ramp_fail=0 ramp_backend=0
for round in 1 2 3 4 5 6; do
    pids=()
    for c in 1 2 3 4; do
        "$CTL" provision --product ACME/RAMP --count 300 --prefix "R$round-$c-" --out ramp --quiet >"ramp-$round-$c.out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || ramp_fail=$((ramp_fail + 1)); done
done
# SoftHSM's own file store still fails a call now and then under 4 writers
# (CKR_GENERAL_ERROR, CKR_USER_PIN_NOT_INITIALIZED: its token files read
# while another process rewrites them, after the retries the module and
# guardianctl make); that is the bench backend's, counted apart.  Anything
# else — the anchor's "state anchors", a rollback, a store failure — is ours.
ramp_backend=$(grep -l -E "CKR_GENERAL_ERROR|CKR_USER_PIN_NOT_INITIALIZED" ramp-*.out 2>/dev/null | wc -l)
ours=$(grep -h -E "state anchors|STATE_ROLLBACK|STORE_FAILED|OBJECT_HANDLE_INVALID" ramp-*.out 2>/dev/null | head -3)
[ "$ramp_fail" -le "$ramp_backend" ] && [ -z "$ours" ] && [ "$ramp_backend" -le 3 ] &&
    ok "4 processes x 6 rounds ramping together: no anchor or store failure ($ramp_fail of 24 runs stopped by SoftHSM's file store)" ||
    { ko "4 processes x 6 rounds: $ramp_fail runs failed"; grep -h "CKR_\|anchor" ramp-*.out | sort | uniq -c | head -5; }

# ---- kill -9 at random moments ----------------------------------------------------------------
for i in $(seq 1 "$KILLS"); do
    "$CTL" provision --product ACME/CRASH --count 50000 --threads 2 --prefix "K$i-" --out crash \
        >/dev/null 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 9 + 1))"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -f crash/*.tmp # a file being written when the process died
    iss=$(issued CRASH)
    if [ -z "$iss" ] || [ "$iss" -gt 50000 ]; then
        ko "kill $i: issued '$iss' > authorised 50000"
    fi
done
files=$(find crash -name '*.pem' | wc -l)
iss=$(issued CRASH)
[ "$iss" -le 50000 ] && [ "$iss" -ge "$files" ] &&
    ok "after $KILLS kill -9: issued $iss <= 50000 authorised, >= $files certificates written" ||
    ko "after $KILLS kill -9: issued $iss, files $files"
check_recorded crash >check.out && ok "every certificate a killed process wrote has its ISSUE record" ||
    { ko "kill -9: records"; sed 's/^/    /' check.out; }
# The trail still verifies end to end after the kills.
python3 "$HERE/../lib/audit_check.py" "$work/state/guardian.db" chain >chain.out &&
    ok "audit chain intact after the kills" || { ko "audit chain"; cat chain.out; }

finish
