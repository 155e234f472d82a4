#!/bin/bash
#
# p11kit_remote.sh <guardian-pkcs11.so> — the service mode (issue 9): the
# module inside `p11-kit server`, run as an account of its own that holds the
# SoftHSM token, the Guardian's state directory, its configuration and the
# backend's PIN files (all its own, 0700/0600/0400), with backend_pin_file set:
# C_Login takes the Guardian's own credentials (an SO and operator "line7",
# made by the service's account as guardian-service-setup does).  Every
# guardianctl command runs on the other side of the socket through
# p11-kit-client.so, as another account that can read none of it, logged in
# as line7: init,
# enroll-oem, import (a replay refused), products, status, provision --count 5
# (resumed), audit export (the report verified on the OEM's side); every
# certificate checked with openssl verify up to the OEM root.  The vendor
# mechanism itself does not cross (CKR_MECHANISM_INVALID): what crosses is the
# Guardian requests, which guardianctl uses.
#
# Then C_GetAttributeValue of every attribute PyKCS11 names, and the
# Guardian's, for every object (the module's package and certificate objects
# included) through the RPC against the module in-process, and against
# SoftHSM behind the same RPC (rpc_attributes.py): every answer crosses
# unchanged, except that p11-kit 0.24.1's client refuses any answer that names
# an array attribute (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE,
# CKA_DERIVE_TEMPLATE) with CKR_DEVICE_ERROR, for SoftHSM's objects as for
# ours — which is why PyKCS11's getAttributeValue of "all" attributes, and its
# printout of an object, fail through p11-kit-client.so (docs/vendor-interface.md).
#
# The accounts: run as root, the script makes two system accounts (useradd
# -r), the service's and the operator's, runs the server and the module as the
# first (setpriv) and every client as the second, and removes both at the end.
# Not root (or without useradd/setpriv): everything runs as the current user,
# said by a SKIP line; the checks that the operator cannot read the state are
# skipped then.  The comparison with SoftHSM behind the same RPC logs in with
# the backend's own PIN (1234): the test's, not something an operator holds.
#
# guardianctl and guardian-wrap: $GUARDIANCTL and $GUARDIAN_WRAP (ctest sets
# them), else build/tools/ next to the module.
#
# What p11-kit server does (p11-kit 0.24.1, p11-kit/server.c, and checked
# below): it never loads the module itself.  For each connection it forks,
# and the child execs /usr/libexec/p11-kit/p11-kit-remote --provider <module>
# <token URI>, which loads and initializes the module, serves that one
# connection (one call at a time, single-threaded: a client's threads share
# the connection and are served in turn) and finalizes it when the client goes
# away.  So each connection is a fresh process with its own C_Initialize,
# login, store handle and reserved units (given back at its C_Finalize), and
# nothing is inherited across fork().
#
# The servers are killed on exit whatever happens (lib.sh's EXIT trap), then
# the accounts removed.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=../lib/reach.sh
. "$(dirname "$0")/../lib/reach.sh"
# Before interop_init, which moves into $WORK: relative paths as given.
CTL=$(readlink -f "${GUARDIANCTL:-$(dirname "${1:-.}")/tools/guardianctl}" || true)
W=$(readlink -f "${GUARDIAN_WRAP:-$(dirname "${1:-.}")/tools/guardian-wrap}" || true)
interop_init p11kit_remote "$@"
# A reader that goes away (| head) must not kill the script before its EXIT
# trap has stopped the servers and removed the accounts it made.
trap 'exec >/dev/null; exit 141' PIPE

M=$GUARDIAN_MODULE
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
LABEL=remote
PY=/usr/bin/python3

for f in "$CLIENT" "$CTL" "$W"; do
    if [ ! -f "$f" ]; then
        fail "prerequisites" "${f:-guardianctl or guardian-wrap} is missing"
        finish
    fi
done
if ! p11-kit server --help >/dev/null 2>&1; then
    skip "p11-kit server" "this p11-kit has no server command"
    finish
fi

# ---- the accounts ------------------------------------------------------------------

SVC="" OP=""
# shellcheck disable=SC2317 # called through on_exit
remove_accounts() {
    local u
    for u in $OP $SVC; do userdel "$u" 2>/dev/null || true; done
    return 0
}
# The other accounts must be able to reach the module, guardianctl and this
# directory (not so in a clone made in a 0700 `mktemp -d` directory).
blocked=$(blocked_for_others "$M" "$CTL" "$0") || blocked=""
if [ -z "$blocked" ] && [ "$(id -u)" = 0 ] && command -v useradd >/dev/null && command -v setpriv >/dev/null; then
    suffix=$(printf '%04x' $((RANDOM % 65536)))
    # Registered before the servers' clean-up: it runs after it.
    on_exit remove_accounts
    for role in svc op; do
        u=gd-rpc-$role-$suffix
        if ! useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "Guardian p11kit_remote.sh $role (temporary)" "$u" >"$(logfile "useradd $u")" 2>&1; then
            fail "useradd $u" "cannot make the test's account" "$(logfile "useradd $u")"
            finish
        fi
        if [ "$role" = svc ]; then SVC=$u; else OP=$u; fi
    done
    pass "two temporary accounts: the service's $SVC, the operator's $OP"
else
    skip "the server and the clients as two other accounts" \
        "${blocked:+$blocked lets no other account through, }not root, or no useradd/setpriv: all as $(id -un)"
fi
# as ACCOUNT CMD...: CMD as ACCOUNT (its own group only), or as this user
# when there are no accounts.
as() {
    local u=$1
    shift
    if [ -n "$u" ]; then
        setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"
    else
        "$@"
    fi
}
# The same as a command prefix, for a process started in the background:
# setpriv execs CMD, so $! is CMD's pid.
as_svc=()
[ -z "$SVC" ] || as_svc=(setpriv --reuid="$SVC" --regid="$SVC" --init-groups --)

# The service's side: the token, the state, the configuration and the
# backend's PINs, its account's alone.
SVCDIR=$WORK/service RUNDIR=$WORK/run OPDIR=$WORK/operator
mkdir -p "$SVCDIR/tokens" "$SVCDIR/state" "$RUNDIR" "$OPDIR"
cat >"$SVCDIR/softhsm2.conf" <<EOF
directories.tokendir = $SVCDIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
printf '%s\n' "$USER_PIN" >"$SVCDIR/backend.pin"
printf '%s\n' "$SO_PIN" >"$SVCDIR/backend-so.pin"
chmod 0400 "$SVCDIR/backend.pin" "$SVCDIR/backend-so.pin"
# pin_kdf_cost at its minimum keeps the test fast (docs/configuration.md).
cat >"$SVCDIR/guardian.conf" <<EOF
backend = $SOFTHSM_MODULE
state_dir = $SVCDIR/state
backend_pin_file = $SVCDIR/backend.pin
backend_so_pin_file = $SVCDIR/backend-so.pin
pin_kdf_cost = 1024
EOF
chmod 0600 "$SVCDIR/guardian.conf"
# The Guardian's own credentials (service mode: NAME:SECRET for an operator).
GUARDIAN_SO=remote-so-secret OPERATOR_PIN=line7:line7-secret-1
chmod 0700 "$SVCDIR" "$SVCDIR/tokens" "$SVCDIR/state" "$OPDIR"
chmod 0755 "$RUNDIR"
chmod 0711 "$WORK" # each account reaches its own directory, not the other's
if [ -n "$SVC" ]; then
    chown -R "$SVC:$SVC" "$SVCDIR" "$RUNDIR"
    chown -R "$OP:$OP" "$OPDIR"
fi
# The module's environment in the service: its configuration file.
svc_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$SVCDIR" SOFTHSM2_CONF="$SVCDIR/softhsm2.conf"
    GUARDIAN_CONF="$SVCDIR/guardian.conf")
must "init token $LABEL (as the service's account)" as "$SVC" "${svc_env[@]}" softhsm2-util --init-token --free \
    --label "$LABEL" --pin "$USER_PIN" --so-pin "$SO_PIN"
# The Guardian SO and operator line7, through the module in-process as the
# service's account (as guardian-service-setup makes them); C_InitToken in
# service mode sets the Guardian SO and never reaches the backend.
must "the Guardian SO (C_InitToken in service mode, as the service's account)" as "$SVC" "${svc_env[@]}" \
    GSO="$GUARDIAN_SO" pkcs11-tool --module "$M" --token-label "$LABEL" --init-token --label "$LABEL" --so-pin env:GSO
must "operator line7 (C_InitPIN by the Guardian SO, as the service's account)" as "$SVC" "${svc_env[@]}" \
    GSO="$GUARDIAN_SO" GOP="$OPERATOR_PIN" pkcs11-tool --module "$M" --token-label "$LABEL" --init-pin --login \
    --login-type so --so-pin env:GSO --new-pin env:GOP

# ---- the servers --------------------------------------------------------------------

SERVER_PID="" SOFTHSM_SERVER_PID=""
# alive PID: the process runs (a zombie does not: it has ended, unreaped).
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case $st in Z*) return 1 ;; esac
    return 0
}
# stop PID: SIGTERM to a server and its children (each by its pid), then up
# to 5 s for the server to end.
stop() {
    local k i
    [ -n "$1" ] || return 0
    for k in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do kill "$k" 2>/dev/null || true; done
    kill "$1" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$1" || break
        sleep 0.1
    done
    return 0
}
# kill_servers (on exit, whatever happened): stop them, SIGKILL what is left.
# shellcheck disable=SC2317 # called through on_exit
kill_servers() {
    local k p
    for p in $SERVER_PID $SOFTHSM_SERVER_PID; do
        stop "$p"
        for k in $(ps -o pid= --ppid "$p" 2>/dev/null || true); do kill -9 "$k" 2>/dev/null || true; done
        if alive "$p"; then kill -9 "$p" 2>/dev/null || true; fi
        wait "$p" 2>/dev/null || true
    done
    SERVER_PID="" SOFTHSM_SERVER_PID=""
    return 0
}
on_exit kill_servers

# start_server PROVIDER SOCKET OUT ERR: p11-kit server as the service's
# account, connections from the operator's alone (-u: its uid is checked);
# the socket opened to it once it exists.  Sets STARTED_PID.
start_server() {
    local provider=$1 sock=$2 i
    local only=()
    [ -z "$OP" ] || only=(-u "$OP")
    "${as_svc[@]}" "${svc_env[@]}" GUARDIAN_DEBUG=trace p11-kit server -f --provider "$provider" \
        -n "$sock" "${only[@]}" "pkcs11:token=$LABEL" >"$3" 2>"$4" &
    STARTED_PID=$!
    for ((i = 0; i < 100; i++)); do
        [ -S "$sock" ] && break
        alive "$STARTED_PID" || break
        sleep 0.05
    done
    [ -S "$sock" ] || return 1
    # p11-kit makes it srwx--x--x, the server's account's: connecting needs write.
    chmod 0666 "$sock"
}

SOCK=$RUNDIR/guardian.sock
# The module's trace goes to the server's stderr (the children keep it): it
# shows which process served each call.
if ! start_server "$M" "$SOCK" server.out server.err; then
    SERVER_PID=$STARTED_PID
    fail "p11-kit server starts and listens on $SOCK" "no socket" server.err
    finish
fi
SERVER_PID=$STARTED_PID
pass "p11-kit server starts and listens on $SOCK"
check_grep "p11-kit server -f prints the client's address" "^P11_KIT_SERVER_ADDRESS=unix:path=$SOCK;" server.out
if [ -n "$(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null)" ]; then
    fail "no module process before a client connects" "the server has children already"
else
    pass "no module process before a client connects"
fi
if [ -n "$SVC" ]; then
    check_eq "the server runs as the service's account" "$SVC" "$(ps -o user= -p "$SERVER_PID" | tr -d ' ')"
    check_fails "the operator's account cannot read the state directory" as "$OP" ls "$SVCDIR/state"
    check_fails "the operator's account cannot read the token directory" as "$OP" ls "$SVCDIR/tokens"
    check_fails "the operator's account cannot open the backend's token itself" \
        as "$OP" env SOFTHSM2_CONF="$SVCDIR/softhsm2.conf" softhsm2-util --show-slots
    check_fails "the operator's account cannot read the backend's PIN file" as "$OP" cat "$SVCDIR/backend.pin"
    check_fails "the operator's account cannot read the module's configuration" as "$OP" cat "$SVCDIR/guardian.conf"
fi

ADDRESS=unix:path=$SOCK
# The operator's environment: the client's address and the PINs, nothing of
# the service (no GUARDIAN_STATE_DIR, GUARDIAN_BACKEND, SOFTHSM2_CONF).
op_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$OPDIR" P11_KIT_SERVER_ADDRESS="$ADDRESS"
    GUARDIAN_TOKEN="$LABEL" GUARDIAN_PIN="$OPERATOR_PIN" GUARDIAN_SO_PIN="$GUARDIAN_SO")
# ctl ARGS...: guardianctl through p11-kit-client.so, as the operator, in its directory.
ctl() { (cd "$OPDIR" && as "$OP" "${op_env[@]}" "$CTL" --module "$CLIENT" "$@"); }
# give FILE...: hand the OEM's files to the operator.
give() {
    cp "$@" "$OPDIR/"
    if [ -n "$OP" ]; then
        local f
        for f in "$@"; do chown "$OP:$OP" "$OPDIR/$(basename "$f")"; done
    fi
}

# ---- the OEM's side --------------------------------------------------------------

# shellcheck disable=SC2317 # called through must
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# shellcheck disable=SC2317 # called through must
oem_pki() {
    ec_key root.key
    openssl req -new -x509 -key root.key -subj "/CN=ACME Root" -days 30 -out root.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    ec_key signer.key
    openssl req -new -key signer.key -subj "/CN=ACME Package Signer" -out signer.csr
    openssl x509 -req -in signer.csr -CA root.pem -CAkey root.key -days 30 -out signer.pem \
        -extfile <(printf 'keyUsage=critical,digitalSignature\n')
    ec_key ca.key
    openssl req -new -key ca.key -subj "/CN=ACME Production CA" -out ca.csr
    openssl x509 -req -in ca.csr -CA root.pem -CAkey root.key -days 30 -out ca.pem \
        -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n')
}
must "OEM PKI (openssl)" oem_pki
give root.pem

# ---- guardianctl through p11-kit-client.so ----------------------------------------

rc=0
(cd "$OPDIR" && as "$OP" "${op_env[@]}" GUARDIAN_PIN="$USER_PIN" "$CTL" --module "$CLIENT" init \
    --out none.pem) >backend-pin.out 2>&1 || rc=$?
check_eq "the backend's own PIN is no login through the service (service mode)" 1 "$rc"
check "guardianctl init through p11-kit-client.so (operator line7)" ctl init --subject /CN=remote-line \
    --out guardian.pem
check_grep "guardian.pem holds the Guardian certificate" "BEGIN CERTIFICATE" "$OPDIR/guardian.pem"
check "guardianctl enroll-oem through p11-kit-client.so (SO login over the socket)" \
    ctl enroll-oem root.pem --oem-id ACME --yes
rc=0
ctl products >products0.out 2>&1 || rc=$?
check_eq "guardianctl products through p11-kit-client.so exits 0 (none installed yet)" 0 "$rc"
check_grep "products: the table's header, no product" "^OEM +PRODUCT +RELEASE +AUTHORISED +ISSUED +REMAINING" \
    products0.out
must "guardian-wrap create" "$W" create --guardian-cert "$OPDIR/guardian.pem" --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME \
    --product-id REMOTE-1 --release 1 --units 20 --not-after +10 --out remote-1.gpk
give remote-1.gpk

rc=0
ctl import remote-1.gpk >import.out 2>&1 || rc=$?
check_eq "guardianctl import through p11-kit-client.so exits 0" 0 "$rc"
check_grep "import: the package object read back over the socket" "^remaining_units=20$" import.out
rc=0
ctl import remote-1.gpk >replay.out 2>&1 || rc=$?
check_eq "guardianctl import again exits 1" 1 "$rc"
check_grep "import again: the module's CKR code crosses the socket" \
    "CKR_GUARDIAN_PACKAGE_REPLAYED: this package was already imported" replay.out

rc=0
ctl provision --product ACME/REMOTE-1 --count 5 --out certs >provision.out 2>&1 || rc=$?
check_eq "guardianctl provision --count 5 through p11-kit-client.so exits 0" 0 "$rc"
check_grep "provision: 5 parts" "^provisioned 5 parts" provision.out
n=$(find "$OPDIR/certs" -name 'SN-*.pem' 2>/dev/null | wc -l)
check_eq "provision wrote 5 certificates" 5 "$n"
for f in "$OPDIR"/certs/SN-*.pem; do
    [ -e "$f" ] || continue
    check "openssl verify $(basename "$f") up to the OEM root" \
        openssl verify -CAfile root.pem -untrusted ca.pem "$f"
done
rc=0
ctl provision --product ACME/REMOTE-1 --count 5 --out certs >resume.out 2>&1 || rc=$?
check_eq "provision again resumes (exit 0)" 0 "$rc"
check_grep "provision again: nothing issued twice" "^provisioned 0 parts .* 5 already done" resume.out
rc=0
ctl provision --product ACME/NOPE --count 1 --out certs >unknown.out 2>&1 || rc=$?
check_eq "provision of an unknown product exits 1" 1 "$rc"
check_grep "provision of an unknown product: named, the state checked by the module" \
    "product ACME/NOPE is not installed" unknown.out

# Units are counted by the store the server's processes share, read by the
# module (the package objects): 5 issued, the rest of the connection's block
# given back when it closed.
rc=0
ctl products >products.out 2>&1 || rc=$?
check_eq "guardianctl products through p11-kit-client.so exits 0" 0 "$rc"
check_grep "products: 5 of 20 units issued" "^ACME +REMOTE-1 +1 +20 +5 +15 " products.out

rc=0
ctl status >status.out 2>&1 || rc=$?
check_eq "guardianctl status through p11-kit-client.so exits 0" 0 "$rc"
check_grep "status: the backend the service's module uses" "^  library +$SOFTHSM_MODULE$" status.out
check_grep "status: the service's state directory, named by its module" "^  state +$SVCDIR/state$" status.out
check_grep "status: the products" "^  ACME +REMOTE-1 +1 +20 +5 +15 " status.out
check_grep "status: the audit chain, checked by the service's module" \
    "^  audit trail +[0-9]+ records, hash chain intact; head [0-9]+" status.out
check_grep "status: records by type" "^ +1 import, [0-9]+ reserve, 5 issue, [0-9]+ release, 0 journal lost, [0-9]+ credential, [0-9]+ export$" status.out
check_grep "status: the store against the token's anchor" \
    "^  anchor +the store (agrees with|is ahead of) the token's anchor" status.out
check_grep "status: the probe of the backend" "^  sensitive +ENFORCED" status.out
check_grep "status: the service mode, from the module" "^  service mode +yes: C_Login takes the Guardian's own" status.out
check_grep "status: the Guardian's credentials, counted" \
    "^  credentials +Security Officer set \(0 failed logins in a row\); 1 operator, 0 locked" status.out
check_grep "status: the configuration the service's module read" "^  configuration +$SVCDIR/guardian.conf$" status.out

rc=0
ctl audit export --out remote.report >audit.out 2>&1 || rc=$?
check_eq "guardianctl audit export through p11-kit-client.so exits 0" 0 "$rc"
check "the report verifies on the OEM's side (guardian-wrap verify-report)" "$W" verify-report \
    "$OPDIR/remote.report" --guardian "$OPDIR/guardian.pem" --ca-chain ca.pem --root root.pem --package remote-1.gpk
issues=$(grep -c "^record [0-9]* ISSUE [0-9]* ACME REMOTE-1 " "$OPDIR/remote.report" || true)
check_eq "the report has the 5 ISSUE records" 5 "$issues"
rc=0
ctl audit export --product ACME/REMOTE-1 --out remote-1.report >audit1.out 2>&1 || rc=$?
check_eq "guardianctl audit export --product through p11-kit-client.so exits 0" 0 "$rc"

# ---- what crossed, and who served it -------------------------------------------------

if trace_has server.err C_CreateObject; then
    pass "the module in the server ran the requests (C_CreateObject = CKR_OK in its trace)"
else
    fail "the module in the server ran the requests" "no C_CreateObject = CKR_OK in the trace" server.err
fi
if grep -Eq 'trace: call: C_(Unwrap|Derive)Key' server.err; then
    # The module's own import calls the backend's C_UnwrapKey, but its trace
    # shows only the calls it received: none of these came from a client.
    fail "no client C_UnwrapKey/C_DeriveKey reached the module" "see the trace" server.err
else
    pass "no client C_UnwrapKey/C_DeriveKey reached the module (requests only)"
fi
pids=$(grep -Eo '^guardian\[[0-9]+\]' server.err | sort -u | grep -Eo '[0-9]+' || true)
n=$(printf '%s\n' "$pids" | grep -c . || true)
# init, enroll-oem, products, import, import, provision x3, products, status,
# audit export x2: one process each.
if [ "$n" -ge 12 ]; then
    pass "each connection is served by a process of its own ($n module processes)"
else
    fail "each connection is served by a process of its own" "only $n distinct module pids in the trace"
fi
if printf '%s\n' "$pids" | grep -qx "$SERVER_PID"; then
    fail "the server itself never loads the module" "its pid $SERVER_PID is in the module's trace"
else
    pass "the server itself never loads the module (fork + exec of p11-kit-remote per connection)"
fi

# ---- PyKCS11 through the socket ----------------------------------------------------------

if ! "$PY" -c 'import PyKCS11' 2>/dev/null; then
    skip "PyKCS11 through p11-kit-client.so" "PyKCS11 is not installed (apt-get install python3-pykcs11)"
else
    # The vendor mechanism, for contrast.
    rc=0
    as "$OP" "${op_env[@]}" "$PY" - "$CLIENT" "$OPERATOR_PIN" "$OPDIR/remote-1.gpk" >mech.out 2>&1 <<'PY' || rc=$?
import sys
import PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login(sys.argv[2])
key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, b"guardian-identity")])[0]
mech = PyKCS11.Mechanism(PyKCS11.CKM_VENDOR_DEFINED | 0x47440000 | 1, None)
try:
    s.unwrapKey(key, open(sys.argv[3], "rb").read(), [], mech)
    print("accepted")
except PyKCS11.PyKCS11Error as e:
    print(e)
s.logout()
PY
    check_grep "CKM_GUARDIAN_UNWRAP_PACKAGE through p11-kit-client.so: CKR_MECHANISM_INVALID (why requests)" \
        "CKR_MECHANISM_INVALID" mech.out

    # Every attribute of every object: in-process (as the service's account,
    # which can), through the RPC (as the operator), and SoftHSM itself behind
    # the same RPC.  Each Guardian run makes a device certificate (a module
    # object) and a status output first.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null |
        openssl pkey -pubout -outform DER -out device.spki
    chmod 0644 device.spki
    RA=$INTEROP_DIR/rpc_attributes.py
    must "attributes in-process (rpc_attributes.py dump, the service's account)" as "$SVC" "${svc_env[@]}" \
        "$PY" "$RA" dump "$M" "$OPERATOR_PIN" "$SVCDIR/inprocess.json" --request ACME/REMOTE-1 RPC-IN \
        "$WORK/device.spki"
    must "attributes through p11-kit-client.so (rpc_attributes.py dump, the operator's account)" as "$OP" \
        "${op_env[@]}" "$PY" "$RA" dump "$CLIENT" "$OPERATOR_PIN" "$OPDIR/rpc.json" --request ACME/REMOTE-1 RPC-RPC \
        "$WORK/device.spki"
    if ! start_server "$SOFTHSM_MODULE" "$RUNDIR/softhsm.sock" softhsm-server.out softhsm-server.err; then
        SOFTHSM_SERVER_PID=$STARTED_PID
        fail "p11-kit server with SoftHSM as its provider" "no socket" softhsm-server.err
        finish
    fi
    SOFTHSM_SERVER_PID=$STARTED_PID
    must "SoftHSM's attributes through p11-kit-client.so (rpc_attributes.py dump)" as "$OP" "${op_env[@]}" \
        P11_KIT_SERVER_ADDRESS="unix:path=$RUNDIR/softhsm.sock" "$PY" "$RA" dump "$CLIENT" "$USER_PIN" \
        "$OPDIR/softhsm-rpc.json"
    stop "$SOFTHSM_SERVER_PID"
    SOFTHSM_SERVER_PID=
    "$PY" "$RA" compare "every attribute but the templates crosses the RPC as the module answers it in-process" \
        "$SVCDIR/inprocess.json" "$OPDIR/rpc.json" rpc >compare.out 2>&1 || true
    "$PY" "$RA" compare "through the RPC the Guardian answers for the backend's objects exactly as SoftHSM does" \
        "$OPDIR/softhsm-rpc.json" "$OPDIR/rpc.json" same >>compare.out 2>&1 || true
    "$PY" "$RA" compare "the template attributes through the RPC: the same answers as SoftHSM's (p11-kit 0.24.1's client)" \
        "$OPDIR/softhsm-rpc.json" "$OPDIR/rpc.json" arrays >>compare.out 2>&1 || true
    absorb_results compare.out
    if ! grep -Eq '^(PASS|FAIL) ' compare.out; then
        fail "rpc_attributes.py compare" "no result" compare.out
    fi
    # The symptom as reported: all attributes of the package object through
    # the RPC.  The non-array ones answer; asking for an array attribute too
    # is refused by p11-kit's client, not by the module.
    "$PY" - "$OPDIR/rpc.json" >package.out <<'PY' || true
import json, sys
objs = json.load(open(sys.argv[1]))["objects"]
pkg = [o for k, o in objs.items() if k.startswith("class=0xc7440001 ")]
print("package objects %d whole %s with-arrays %s" % (len(pkg), pkg[0]["whole"] if pkg else "-",
                                                       pkg[0]["whole_with_arrays"] if pkg else "-"))
PY
    check_grep "the package object through the RPC: all non-array attributes in one getAttributeValue" \
        "^package objects 1 whole CKR_OK with-arrays CKR_DEVICE_ERROR$" package.out
fi

stop "$SERVER_PID"
if alive "$SERVER_PID"; then
    fail "the server stops on SIGTERM" "pid $SERVER_PID still runs"
else
    pass "the server stops on SIGTERM"
fi
kill_servers
finish
