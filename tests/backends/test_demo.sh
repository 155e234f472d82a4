#!/bin/bash
#
# test_demo.sh KIND <build dir> — tools/guardian-demo.sh --backend KIND, end
# to end (docs/backends/KIND.md), with few parts, and its results checked
# from the files it kept rather than from what it printed:
#
#   - the demo exits 0 and names the flow it chose, and why;
#   - every device certificate it made verifies with `openssl verify` up to
#     the OEM root, and there are exactly as many as parts asked for;
#   - `guardian-wrap verify-report` of the audit report it exported says OK
#     with the counts of the run (authorised, issued, remaining, verified);
#   - every private key in the token, as pkcs11-tool lists it after the
#     import (the backend's attributes), is sensitive and not extractable;
#   - the backend's daemons it started (tpm2: swtpm, dbus-daemon,
#     tpm2-abrmd; opencryptoki: the namespace's holder and pkcsslotd) are
#     gone when it has ended, checked by the PIDs it printed, whatever the
#     demo's result;
#   - in credentials mode (tpm2, nss, opencryptoki; softhsm with
#     --credentials) the configuration names PIN files of mode 0400, the
#     backend's PINs are in no file but those, and the operator in the
#     report is alice.
# softhsm also runs the demo in credentials mode with the CA request flow
# (the two paths the other backends take), and the refusals: bad options
# (exit 2, nothing run) and a step that fails, which must be named with its
# CKR code (a backend module that does not exist).
#
# Exit status: 0 all passed, 1 a failure, 77 the backend cannot run here.

# shellcheck source-path=SCRIPTDIR source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"

KIND=${1:-}
if [ $# -ne 2 ] || [ -z "$KIND" ]; then
    printf 'usage: %s softhsm|tpm2|nss|opencryptoki <build dir>\n' "$0" >&2
    exit 2
fi
INTEROP_NAME=demo_$KIND
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DEMO=$SRC/tools/guardian-demo.sh
BUILD=$(readlink -f "$2")
for f in "$BUILD/guardian-pkcs11.so" "$BUILD/tools/guardianctl" "$BUILD/tools/guardian-wrap"; do
    if [ ! -f "$f" ]; then
        printf 'FAIL %s: %s does not exist (build first)\n0 passed, 1 failed\n' "$INTEROP_NAME" "$f"
        exit 1
    fi
done
PARTS=5

WORK=$(mktemp -d "${TMPDIR:-/tmp}/guardian-demo-test-$KIND.XXXXXX")
trap _interop_exit EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/tmp" "$WORK/log"
cd "$WORK"
ulimit -c 0
unset GUARDIAN_CONF GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG GUARDIAN_BACKEND_INIT_ARGS SOFTHSM2_CONF \
    GUARDIAN_PIN GUARDIAN_SO_PIN GUARDIAN_DEMO_INSTALLED GUARDIAN_BACKEND_LIB
export GUARDIAN_BUILD_DIR=$BUILD

# demo NAME ARGS...: the demo into log/NAME.log (its exit status in $rc, its
# seconds in $secs), its temporary directory kept inside WORK ($kept).
demo() {
    local name=$1 t0
    shift
    t0=$(date +%s%N)
    rc=0
    TMPDIR=$WORK/tmp "$DEMO" --keep --parts "$PARTS" "$@" >"log/$name.log" 2>&1 </dev/null || rc=$?
    secs=$(printf '%.1f' "$((($(date +%s%N) - t0) / 1000000))e-3")
    kept=$(sed -n 's/^kept //p' "log/$name.log" | tail -n 1)
    printf 'INFO %s: %s ARGS %s: exit %d in %s s\n' "$name" "$(basename "$DEMO")" "$*" "$rc" "$secs"
}

# daemons_gone NAME: every PID on the demo's "daemons:" line has ended.
daemons_gone() {
    local name=$1 line pids p left=""
    line=$(grep -m1 '^  daemons: ' "log/$name.log" || true)
    if [ -z "$line" ]; then
        fail "$name: daemons" "the demo printed no daemons line (did the backend come up?)" "log/$name.log"
        return
    fi
    pids=$(grep -o -E '[a-z0-9_.-]+ [0-9]+' <<<"${line#  daemons: }" | awk '{print $2}' | tr '\n' ' ' || true)
    pids=${pids% }
    case $KIND in
    tpm2)
        for d in swtpm dbus-daemon tpm2-abrmd; do
            grep -q -E "(: |, )$d [0-9]+" <<<"$line" || fail "$name: daemons" "no $d among them: $line"
        done
        ;;
    opencryptoki)
        grep -q -E "pkcsslotd [0-9]+" <<<"$line" || fail "$name: daemons" "no pkcsslotd among them: $line"
        ;;
    *)
        [ -z "$pids" ] || fail "$name: daemons" "$KIND runs in-process, yet: $line"
        ;;
    esac
    for p in $pids; do
        if kill -0 "$p" 2>/dev/null; then
            left="$left $p ($(ps -o comm= -p "$p"))"
        fi
    done
    if [ -n "$left" ]; then
        fail "$name: backend down" "still running after the demo:$left"
        for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done # ours: named by the demo
    else
        pass "$name: backend down ($([ -n "$pids" ] && echo "PIDs $pids gone" || echo "no daemons: in-process"))"
    fi
}

# results NAME CREDENTIALS(0|1): the certificates, the report, the credentials.
results() {
    local name=$1 cred=$2 n=0 total=0 f line
    # The probe's verdict on CKA_TRUSTED (docs/backends/KIND.md).
    local want=ENFORCED # (shown before init, so checked whatever the result)
    case $KIND in tpm2 | nss) want=NOT-ENFORCED ;; esac
    if grep -q -E "^  trusted-so-only +$want " "log/$name.log"; then
        pass "$name: the probe shown: trusted-so-only $want"
    else
        fail "$name: the probe" "no 'trusted-so-only $want' line" "log/$name.log"
    fi
    if [ "$rc" -ne 0 ]; then
        tail -n 15 "log/$name.log" >"log/$name.tail"
        fail "$name: the demo" "exit $rc, $(grep -m1 'FAILED at step' "log/$name.log" || tail -n 1 "log/$name.log")" \
            "log/$name.tail"
        return
    fi
    pass "$name: the demo passed in $secs s"
    line=$(grep -m1 '  => ' "log/$name.log" || true)
    if [[ $line == *"=> classic wrap"*"("*")" || $line == *"=> CA request"*"("*")" ]]; then
        pass "$name: flow ${line#*=> }"
    else
        fail "$name: flow" "the demo did not say which flow and why" "log/$name.log"
    fi
    if [ "$(grep -c -E '^  pkcs11-tool --sign with the (production CA|Guardian signing) key.*: CKR_KEY_FUNCTION_NOT_PERMITTED$' \
        "log/$name.log")" = 2 ]; then
        pass "$name: C_Sign with the CA key and with the signing key refused (CKR_KEY_FUNCTION_NOT_PERMITTED)"
    else
        grep 'pkcs11-tool --sign' "log/$name.log" >"log/$name.sign" || true
        fail "$name: boundary" "the standard C_Sign refusals are not both CKR_KEY_FUNCTION_NOT_PERMITTED" \
            "log/$name.sign"
    fi
    # Step 5 lists the token's private keys with pkcs11-tool (their
    # attributes are the backend's, read through the module): each sensitive
    # and not extractable (opencryptoki drops both from an unwrap template;
    # the import seals the keys afterwards).
    local access
    access=$(sed -n '/^== 5\./,/^== 6/p' "log/$name.log" | grep -E '^ +Access:' || true)
    if [ -n "$access" ] && ! grep -v -w sensitive <<<"$access" | grep -q . &&
        ! sed 's/never extractable//' <<<"$access" | grep -q -w extractable; then
        pass "$name: every private key in the token sensitive and not extractable ($(grep -c . <<<"$access") keys)"
    else
        sed -n '/^== 5\./,/^== 6/p' "log/$name.log" >"log/$name.access"
        fail "$name: private keys" "not all sensitive and not extractable on the backend" "log/$name.access"
    fi
    if [ -z "$kept" ] || [ ! -d "$kept/certs" ]; then
        fail "$name: kept files" "no kept directory with certs/ ($kept)"
        return
    fi
    for f in "$kept"/certs/*.pem; do
        [ -e "$f" ] || continue
        total=$((total + 1))
        openssl verify -CAfile "$kept/oem/root.pem" -untrusted "$kept/oem/production-ca.pem" "$f" >/dev/null 2>&1 &&
            n=$((n + 1))
    done
    if [ "$total" = "$PARTS" ] && [ "$n" = "$PARTS" ]; then
        pass "$name: openssl verify: $n of $PARTS device certificates up to the OEM root"
    else
        fail "$name: openssl verify" "$n of $total certificates verify, $PARTS expected"
    fi
    "$BUILD/tools/guardian-wrap" verify-report "$kept/audit-report.txt" --guardian "$kept/guardian.pem" \
        --ca-chain "$kept/oem/production-ca.pem" --root "$kept/oem/root.pem" >"log/$name.report" 2>&1 || true
    if tail -n 1 "log/$name.report" | grep -q '^  *OK$\|^OK$' &&
        grep -q -E "authorised 1000, .*issued $PARTS, reserved-not-issued 0, remaining $((1000 - PARTS)), certificates verified $PARTS/$PARTS" \
            "log/$name.report"; then
        pass "$name: verify-report OK: authorised 1000, issued $PARTS, remaining $((1000 - PARTS)), verified $PARTS/$PARTS"
    else
        fail "$name: verify-report" "not OK or the counts differ" "log/$name.report"
    fi
    if [ "$cred" = 1 ]; then
        local modes
        modes=$(stat -c '%a %U' "$kept"/conf/*.pin | sort -u)
        if grep -q '^backend_pin_file = ' "$kept/guardian.conf" && [ "$modes" = "400 $(id -un)" ]; then
            pass "$name: credentials mode, the backend's PINs in files of mode 0400 ($(id -un))"
        else
            fail "$name: credentials mode" "guardian.conf / PIN files: $(tr '\n' ' ' <"$kept/guardian.conf") [$modes]"
        fi
        # No other file of the run holds them (the backend's own files aside),
        # nor the demo's output.
        local pin leaked=""
        for f in "$kept"/conf/*.pin; do
            pin=$(cat "$f")
            leaked+=$(grep -r -l -F --exclude-dir=backend --exclude="$(basename "$f")" --exclude='*.pem' \
                --exclude='*.gpk' --exclude='*.bin' --exclude='*.sig' --exclude='*.db' -e "$pin" "$kept" || true)
            grep -q -F -- "$pin" "log/$name.log" && leaked+=" log/$name.log"
        done
        [ -z "$leaked" ] && pass "$name: the backend's PINs in no other file of the run (logs, outputs, configuration)" ||
            fail "$name: PIN leak" "found in $leaked"
        grep -q 'issued by operator: alice '"$PARTS" "log/$name.report" &&
            pass "$name: the report names operator alice for the $PARTS certificates" ||
            fail "$name: operator" "the report does not name alice" "log/$name.report"
    fi
}

if [ "$KIND" = opencryptoki ] && [ "$(id -u)" -ne 0 ]; then
    _FINISHED=1
    printf 'SKIP %s: opencryptoki needs root here (a private mount namespace)\n' "$INTEROP_NAME"
    exit 77
fi

case $KIND in
softhsm)
    # Refusals first: each is a usage error, before anything is built or brought up.
    for bad in "--backend bogus|--backend must be softhsm, tpm2, nss or opencryptoki" \
        "--backend nss --service|give --service or --backend, not both" \
        "--credentials|--credentials needs --backend" \
        "--backend softhsm --flow sideways|--flow must be auto, wrap or ca-request"; do
        args=${bad%%|*} want=${bad#*|}
        rc=0
        # shellcheck disable=SC2086 # the words of the case
        TMPDIR=$WORK/tmp "$DEMO" $args >log/usage.log 2>&1 || rc=$?
        if [ "$rc" = 2 ] && grep -q -F -- "$want" log/usage.log && [ -z "$(ls -A "$WORK/tmp")" ]; then
            pass "usage: $args refused (exit 2, nothing made)"
        else
            fail "usage: $args" "exit $rc, expected 2 and '$want'" log/usage.log
        fi
    done

    # A spy on the environment of every command the demo runs on the token
    # (pkcs11-tool, guardianctl: backend_exec) once the backend is up: in
    # credentials mode none may hold the backend's PINs (an operator's
    # process must not); in-process they do (the control: the spy sees).
    cat >"$WORK/spy-lib.sh" <<EOF
. "$SRC/tests/backends/lib.sh"
eval "_real_\$(declare -f backend_up)"
eval "_real_\$(declare -f backend_exec)"
backend_up() { _real_backend_up "\$@" && _spy_on=1; }
backend_exec() {
    [ -z "\${_spy_on:-}" ] || env | grep -c -E '^BACKEND_(USER|SO)_PIN=' >>"$WORK/spy.\$_spy_run" || true
    _real_backend_exec "\$@"
}
EOF
    spy_seen() { # RUN: how many commands held a backend PIN, of how many
        printf '%s of %s' "$(grep -c -v '^0$' "$WORK/spy.$1" 2>/dev/null || true)" "$(wc -l <"$WORK/spy.$1" 2>/dev/null || echo 0)"
    }

    _spy_run=inproc GUARDIAN_BACKEND_LIB=$WORK/spy-lib.sh demo softhsm --backend softhsm
    results softhsm 0
    grep -q '=> classic wrap' log/softhsm.log && pass "softhsm: auto chose the classic wrap (unwrap listed)" ||
        fail "softhsm: auto" "expected the classic wrap on SoftHSM" log/softhsm.log
    daemons_gone softhsm

    demo softhsm-cred-careq --backend softhsm --credentials --flow ca-request
    results softhsm-cred-careq 1
    grep -q '=> CA request: .*(chosen with --flow)' "log/softhsm-cred-careq.log" &&
        grep -q 'transport *none (no secret travels)' "log/softhsm-cred-careq.log" &&
        pass "softhsm-cred-careq: CA request flow, as chosen" ||
        fail "softhsm-cred-careq: flow" "not the CA request" log/softhsm-cred-careq.log
    daemons_gone softhsm-cred-careq

    _spy_run=cred GUARDIAN_BACKEND_LIB=$WORK/spy-lib.sh demo softhsm-cred --backend softhsm --credentials
    results softhsm-cred 1
    inproc=$(spy_seen inproc) cred=$(spy_seen cred)
    read -r ih _ in <<<"$inproc"
    read -r ch _ cn <<<"$cred"
    if [ "$in" -gt 0 ] && [ "$ih" = "$in" ] && [ "$cn" -gt 0 ] && [ "$ch" = 0 ]; then
        pass "the backend's PINs in no command's environment in credentials mode ($cred), in every one in-process ($inproc: the control)"
    else
        fail "the backend's PINs in the environment" "credentials mode: $cred commands held one (0 expected); in-process: $inproc (all expected)"
    fi
    grep -q "the Guardian certificate's id-guardian-transports:" log/softhsm-cred.log &&
        grep -q '=> classic wrap: .*(its certificate states' log/softhsm-cred.log &&
        pass "softhsm-cred: the flow from what the Guardian certificate states (id-guardian-transports): wrap" ||
        fail "softhsm-cred: flow" "expected the wrap, from the certificate's id-guardian-transports" log/softhsm-cred.log

    # A token without ECDSA in its list (opencryptoki's case), on SoftHSM:
    # the slot's -M seen without the ECDSA lines. The CA key must then be
    # RSA-2048, and the boundary's C_Sign tried with CKM_RSA_PKCS.
    cat >"$WORK/noec-lib.sh" <<EOF
. "$SRC/tests/backends/lib.sh"
eval "_real_\$(declare -f backend_exec)"
backend_exec() {
    case " \$* " in
    *" -M "*) _real_backend_exec "\$@" | grep -v -E '^ +ECDSA' ;;
    *) _real_backend_exec "\$@" ;;
    esac
}
EOF
    GUARDIAN_BACKEND_LIB=$WORK/noec-lib.sh demo softhsm-rsa --backend softhsm --credentials --flow ca-request
    results softhsm-rsa 1
    if grep -q '=> CA request: the production CA key (rsa2048)' log/softhsm-rsa.log && [ -n "$kept" ] &&
        openssl x509 -in "$kept/oem/production-ca.pem" -noout -text | grep -q 'rsaEncryption'; then
        pass "softhsm-rsa: no CKM_ECDSA listed: an RSA-2048 CA key made in the Guardian"
    else
        fail "softhsm-rsa: key type" "not an RSA CA key" log/softhsm-rsa.log
    fi

    # The reading of id-guardian-transports (arc .3.1 in the Guardian
    # certificate A), on certificates made here: the demo's own functions.
    sed -n '/^oid_arc=/,/^choose_flow() {/p' "$DEMO" | sed '$d' >"$WORK/transports.sh"
    # shellcheck source=/dev/null
    . "$WORK/transports.sh"
    oid_der() { # DOTTED: the DER of an OBJECT IDENTIFIER, in hex
        python3 -c 'import sys
p = [int(x) for x in sys.argv[1].split(".")]
b = b""
for v in [p[0] * 40 + p[1]] + p[2:]:
    o = [v & 0x7f]; v >>= 7
    while v: o.append(0x80 | (v & 0x7f)); v >>= 7
    b += bytes(reversed(o))
print((bytes([6, len(b)]) + b).hex())' "$1"
    }
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/a.key" 2>/dev/null
    a_cert() { # NAME [OID...]: a certificate with id-guardian-transports listing OIDs (none: no extension)
        local name=$1 body="" o ext=()
        shift
        for o in "$@"; do body+=$(oid_der "$o"); done
        [ $# -eq 0 ] || ext=(-addext "$oid_arc.3.1=DER:30$(printf '%02x' $((${#body} / 2)))$body")
        openssl req -new -x509 -key "$WORK/a.key" -subj /CN=a -days 1 "${ext[@]}" -out "$WORK/$name.pem" 2>/dev/null
    }
    a_cert two "$oid_arc.2.2" "$oid_arc.2.1"
    a_cert none-only "$oid_arc.2.0"
    a_cert without
    got=$(cert_transports "$WORK/two.pem" | tr '\n' ' ')
    [ "$got" = "$oid_arc.2.2 $oid_arc.2.1 " ] && [ "$(transport_name "$oid_arc.2.2")" = "ECDH + X9.63 KDF + RFC 5649 key wrap" ] &&
        pass "id-guardian-transports read in order: .2.2, .2.1" || fail "id-guardian-transports" "read '$got'"
    got=$(cert_transports "$WORK/none-only.pem" | tr '\n' ' ')
    [ "$got" = "$oid_arc.2.0 " ] && pass "id-guardian-transports with none only: read" || fail "none only" "read '$got'"
    if cert_transports "$WORK/without.pem" >/dev/null; then
        fail "no id-guardian-transports" "a certificate without the extension was read as having it"
    else
        pass "a certificate without id-guardian-transports: status 1 (the slot's list decides)"
    fi

    # A failing step: a backend module that does not exist. The demo must
    # name the step and the CKR code, take the backend down and exit 1.
    cat >"$WORK/broken-lib.sh" <<EOF
. "$SRC/tests/backends/lib.sh"
eval "_real_\$(declare -f backend_up)"
backend_up() { _real_backend_up "\$@" || return; BACKEND_MODULE=$WORK/no-such-backend.so; }
EOF
    GUARDIAN_BACKEND_LIB=$WORK/broken-lib.sh demo broken --backend softhsm
    if [ "$rc" = 1 ] && grep -q -F 'FAILED at step "The module (C_GetInfo) and the token, through the Guardian": CKR_GUARDIAN_BACKEND_LOAD_FAILED' log/broken.log; then
        pass "a failing step is named with its CKR code: $(grep -m1 -o 'FAILED at step.*' log/broken.log)"
    else
        fail "a failing step" "exit $rc, no 'FAILED at step … CKR_GUARDIAN_BACKEND_LOAD_FAILED'" log/broken.log
    fi
    ;;
tpm2 | nss | opencryptoki)
    demo "$KIND" --backend "$KIND"
    if [ "$rc" = 77 ]; then
        _FINISHED=1
        printf 'SKIP %s: %s\n' "$INTEROP_NAME" "$(grep -m1 'cannot run' "log/$KIND.log")"
        exit 77
    fi
    grep -q '^== A Guardian configuration naming the '"$KIND"' backend (credentials mode)' "log/$KIND.log" &&
        pass "$KIND: credentials mode (a token root cannot be trusted here)" ||
        fail "$KIND: credentials mode" "the demo did not run in credentials mode" "log/$KIND.log"
    results "$KIND" 1
    daemons_gone "$KIND"
    ;;
*)
    fail "$INTEROP_NAME" "unknown backend kind $KIND (softhsm, tpm2, nss or opencryptoki)"
    ;;
esac
finish
