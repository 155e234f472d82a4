#!/bin/bash
#
# p11kit_remote.sh <guardian-pkcs11.so> — the service mode's transport: the
# module inside `p11-kit server` (as the current user, on a temporary SoftHSM
# token), and guardianctl on the other side of the socket through
# p11-kit-client.so: init, enroll-oem, import (a replay refused), provision
# --count 5, and every certificate checked with openssl verify up to the OEM
# root.  The vendor mechanism itself does not cross (CKR_MECHANISM_INVALID):
# what crosses is the Guardian requests, which guardianctl uses.
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
# The server is killed on exit whatever happens (lib.sh's EXIT trap).

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# Before interop_init, which moves into $WORK: relative paths as given.
CTL=$(readlink -f "${GUARDIANCTL:-$(dirname "${1:-.}")/tools/guardianctl}" || true)
W=$(readlink -f "${GUARDIAN_WRAP:-$(dirname "${1:-.}")/tools/guardian-wrap}" || true)
interop_init p11kit_remote "$@"

M=$GUARDIAN_MODULE
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
LABEL=remote
SOCK=$WORK/p11.sock

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

make_token "$LABEL"

# ---- the server ----------------------------------------------------------------

SERVER_PID=
# alive PID: the process runs (a zombie does not: it has ended, unreaped).
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case $st in Z*) return 1 ;; esac
    return 0
}
# stop_server: SIGTERM to the server and its children (each by its pid), then
# up to 5 s for the server to end.
stop_server() {
    local k i
    [ -n "$SERVER_PID" ] || return 0
    for k in $(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null || true); do kill "$k" 2>/dev/null || true; done
    kill "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$SERVER_PID" || break
        sleep 0.1
    done
    return 0
}
# kill_server (on exit, whatever happened): stop it, SIGKILL what is left.
# shellcheck disable=SC2317 # called through on_exit
kill_server() {
    local k
    [ -n "$SERVER_PID" ] || return 0
    stop_server
    for k in $(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null || true); do kill -9 "$k" 2>/dev/null || true; done
    if alive "$SERVER_PID"; then kill -9 "$SERVER_PID" 2>/dev/null || true; fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    return 0
}
on_exit kill_server

# The module's trace goes to the server's stderr (the children keep it): it
# shows which process served each call.
GUARDIAN_DEBUG=trace p11-kit server -f --provider "$M" -n "$SOCK" "pkcs11:token=$LABEL" \
    >server.out 2>server.err &
SERVER_PID=$!
for ((i = 0; i < 100; i++)); do
    [ -S "$SOCK" ] && break
    alive "$SERVER_PID" || break
    sleep 0.05
done
if [ ! -S "$SOCK" ]; then
    fail "p11-kit server starts and listens on $SOCK" "no socket" server.err
    finish
fi
pass "p11-kit server starts and listens on $SOCK"
check_grep "p11-kit server -f prints the client's address" "^P11_KIT_SERVER_ADDRESS=unix:path=$SOCK;" server.out
if [ -n "$(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null)" ]; then
    fail "no module process before a client connects" "the server has children already"
else
    pass "no module process before a client connects"
fi

export P11_KIT_SERVER_ADDRESS=unix:path=$SOCK GUARDIAN_TOKEN=$LABEL GUARDIAN_PIN=$USER_PIN GUARDIAN_SO_PIN=$SO_PIN
ctl() { "$CTL" --module "$CLIENT" "$@"; }

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

# ---- guardianctl through p11-kit-client.so ----------------------------------------

check "guardianctl init through p11-kit-client.so" ctl init --subject /CN=remote-line --out guardian.pem
check_grep "guardian.pem holds the Guardian certificate" "BEGIN CERTIFICATE" guardian.pem
check "guardianctl enroll-oem through p11-kit-client.so (SO login over the socket)" \
    ctl enroll-oem root.pem --oem-id ACME --yes
must "guardian-wrap create" "$W" create --guardian-cert guardian.pem --signer-key signer.key \
    --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME \
    --product-id REMOTE-1 --release 1 --units 20 --not-after +10 --out remote-1.gpk

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
n=$(find certs -name 'SN-*.pem' 2>/dev/null | wc -l)
check_eq "provision wrote 5 certificates" 5 "$n"
for f in certs/SN-*.pem; do
    [ -e "$f" ] || continue
    check "openssl verify $(basename "$f") up to the OEM root" \
        openssl verify -CAfile root.pem -untrusted ca.pem "$f"
done
rc=0
ctl provision --product ACME/REMOTE-1 --count 5 --out certs >resume.out 2>&1 || rc=$?
check_eq "provision again resumes (exit 0)" 0 "$rc"
check_grep "provision again: nothing issued twice" "^provisioned 0 parts .* 5 already done" resume.out
# Units are counted by the store the server's processes share (products reads
# it directly, as the same user): 5 issued, the rest of the connection's block
# given back when it closed.
rc=0
ctl products >products.out 2>&1 || rc=$?
check_grep "products: 5 of 20 units issued" "ACME +REMOTE-1 +1 +20 +5 +15" products.out

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
# init, enroll-oem, import, import, provision, provision: one process each
# (products reads the store, without the module).
if [ "$n" -ge 6 ]; then
    pass "each connection is served by a process of its own ($n module processes)"
else
    fail "each connection is served by a process of its own" "only $n distinct module pids in the trace"
fi
if printf '%s\n' "$pids" | grep -qx "$SERVER_PID"; then
    fail "the server itself never loads the module" "its pid $SERVER_PID is in the module's trace"
else
    pass "the server itself never loads the module (fork + exec of p11-kit-remote per connection)"
fi

# The vendor mechanism over the socket, for contrast (PyKCS11, if installed).
if /usr/bin/python3 -c 'import PyKCS11' 2>/dev/null; then
    rc=0
    /usr/bin/python3 - "$CLIENT" "$USER_PIN" remote-1.gpk >mech.out 2>&1 <<'PY' || rc=$?
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
else
    skip "CKM_GUARDIAN_UNWRAP_PACKAGE through p11-kit-client.so" "PyKCS11 is not installed"
fi

stop_server
if alive "$SERVER_PID"; then
    fail "the server stops on SIGTERM" "pid $SERVER_PID still runs"
else
    pass "the server stops on SIGTERM"
fi
kill_server
finish
