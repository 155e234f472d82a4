#!/usr/bin/env bash
# test_service.sh MODULE GUARDIANCTL SETUP UNIT — the Guardian service
# (docs/service-mode.md): guardian-pkcs11.so inside p11-kit server under an
# account of its own, the operators through p11-kit-client.so.
#
#  1. p11-kit server as docs/service-mode.md says it behaves (the facts marked
#     there), so that a p11-kit upgrade that changes them is noticed here;
#  2. the systemd unit: systemd-analyze verify, and its command line is the one
#     guardian-service-setup runs;
#  3. guardian-service-setup install in a sandbox: no PIN on any command line,
#     the owner and mode of every file, status, the refusals (install twice,
#     uninstall without --purge, a PIN file of the wrong mode or owner);
#  4. an operator of the service: what it can and cannot reach;
#  5. tools/guardian-demo.sh --service, end to end;
#  6. uninstall --purge leaves nothing.
# It makes system accounts (named gts<pid>-…, removed at the end), so it needs
# root: otherwise it is skipped (exit 77).
set -uo pipefail
umask 022
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") SETUP=$(realpath "${3:?guardian-service-setup}")
UNIT=$(realpath "${4:?guardian-pkcs11.service}")
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
service_require test_service.sh pkcs11-tool strace
PY=/usr/bin/python3
HOLD=$HERE/p11kit_client.py

prefix=gts$$
service_work service-test "$prefix"
section() { printf '\n# %s\n' "$*"; }

# Accounts: the service's (made by install), an operator (in the operators'
# group by a supplementary group, as usermod -a -G makes it), and someone else.
service_accounts "$op" "$other"
# server_start LOG ARGS...: p11-kit server in the foreground (its pid in $server).
server_start() {
    local log=$1
    shift
    p11-kit server -f --provider "$M" "$@" >"$log" 2>&1 &
    server=$!
    pids+=("$server")
    for _ in $(seq 50); do grep -q P11_KIT_SERVER_ADDRESS "$log" && return 0; sleep 0.1; done
    return 1
}
server_stop() { stop "$server"; }
# remotes: the p11-kit-remote processes serving $server's connections;
# quiet: wait (up to 5 s) until there are none (the last client's has ended).
remotes() { pgrep -P "$server" -d ' ' || true; }
quiet() { for _ in $(seq 50); do [ -z "$(remotes)" ] && return 0; sleep 0.1; done; }

# ---- 1. p11-kit server ---------------------------------------------------------------------

section "1. p11-kit server $(dpkg-query -W -f '${Version}' p11-kit 2>/dev/null) as docs/service-mode.md says"
mkdir -p facts/state
chmod 0700 facts/state
softhsm_token "$work/facts" facts
export GUARDIAN_BACKEND=$SOFTHSM GUARDIAN_STATE_DIR=$work/facts/state
unset GUARDIAN_CONF
export P11_KIT_SERVER_ADDRESS=unix:path=$work/facts/s.sock

server_start facts/server.log -n "$work/facts/s.sock" pkcs11:token=facts || ko "p11-kit server started"
expect "the socket is srwx--x--x (p11-kit sets umask 066)" 0 '^srwx--x--x' -- ls -l "$work/facts/s.sock"
"$PY" "$HOLD" hold 1234 3 >facts/a.out 2>&1 &
a=$!
sleep 1
"$PY" "$HOLD" hold - 1 >facts/b.out 2>&1 &
b=$!
sleep 0.5
n=$(wc -w <<<"$(remotes)")
if [ "$n" = 2 ] && ps -o args= -p "$(remotes | tr ' ' ,)" | grep -q "p11-kit-remote --provider $M pkcs11:token=facts"; then
    ok "a p11-kit-remote process per connection (2 clients: $(remotes))"
else
    ko "2 clients, $n processes serving them: $(ps -o args= --ppid "$server")"
fi
wait "$a" "$b"
if grep -q '^STATE 3' facts/a.out && grep -q '^STATE 2' facts/b.out && [ "$(sort -u facts/a.out)" = "STATE 3" ]; then
    ok "each connection its own login: one logged in (CKS_RW_USER_FUNCTIONS), the other not (CKS_RW_PUBLIC_SESSION)"
else
    ko "login states: $(tr '\n' ' ' <facts/a.out) / $(tr '\n' ' ' <facts/b.out)"
fi
expect "the token is the only slot exported (SoftHSM's spare one is not), renumbered" 0 'Slot 0 \(0x11\).*' -- \
    pkcs11-tool --module "$CLIENT" -L
expect_rc "an account that cannot write the socket connects to nothing: no slots, C_Initialize CKR_OK" 1 \
    '^No slots' -- as "$op" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" pkcs11-tool --module "$CLIENT" -L

# The module's C_Finalize: when the client calls it, and not when the client dies.
server_stop
GUARDIAN_DEBUG=trace server_start facts/trace.log -n "$work/facts/s.sock" pkcs11:token=facts
pkcs11-tool --module "$CLIENT" -L >/dev/null 2>&1
quiet
r=$(grep -o 'guardian\[[0-9]*\]: trace: call: C_Finalize = ' facts/trace.log | sort | uniq -c | awk '{print $1}')
[ "$r" = 2 ] && ok "a client's C_Finalize reaches the module (after p11-kit's own C_Initialize/C_Finalize/C_Initialize)" ||
    ko "C_Finalize lines of a client that finalized: '$r'"
"$PY" "$HOLD" hold 1234 10 >facts/c.out 2>&1 &
c=$!
for _ in $(seq 50); do grep -q STATE facts/c.out && break; sleep 0.1; done
rp=$(remotes)
kill -KILL "$c"
wait "$c" 2>/dev/null
for _ in $(seq 30); do [ -z "$(remotes)" ] && break; sleep 0.1; done
if [ -n "$rp" ] && [ -z "$(remotes)" ] && [ "$(grep -c "guardian\[$rp\]: trace: call: C_Finalize = " facts/trace.log)" = 1 ]; then
    ok "a client killed mid-session: its p11-kit-remote ends without the module's final C_Finalize"
else
    ko "a killed client's p11-kit-remote ($rp): $(grep -c "guardian\[$rp\]: trace: call: C_Finalize = " facts/trace.log) C_Finalize"
fi
unset GUARDIAN_DEBUG

# What a client sees when what serves it dies.
survive() { # OUT ARGS...: p11kit_client.py survive; kills its p11-kit-remote once it is READY
    local out=$1 fifo=$work/facts/fifo
    shift
    rm -f "$fifo"
    mkfifo "$fifo"
    "$PY" "$HOLD" survive 1234 "$@" <"$fifo" >"$out" 2>&1 &
    local p=$!
    exec 9>"$fifo"
    for _ in $(seq 50); do grep -q READY "$out" && break; sleep 0.1; done
    # shellcheck disable=SC2046 # one pid each
    kill -KILL $(remotes) 2>/dev/null
    sleep 0.3
    echo go >&9
    exec 9>&-
    wait "$p"
}
quiet
survive facts/survive.out
if [ "$(sed -n 2,3p facts/survive.out | sort -u)" = "ERROR CKR_DEVICE_ERROR" ] && grep -q '^SLOTS 1' facts/survive.out; then
    ok "its p11-kit-remote killed: every later call CKR_DEVICE_ERROR, no reconnection; a new C_Initialize connects"
else
    ko "after its p11-kit-remote died: $(tr '\n' ' ' <facts/survive.out)"
fi
quiet
survive facts/sigpipe.out --sigpipe-default
rc=$?
[ "$rc" = 141 ] && ok "... and a client that does not ignore SIGPIPE dies of it (exit 141) at its next call" ||
    ko "a client with SIGPIPE's default action: exit $rc ($(tr '\n' ' ' <facts/sigpipe.out))"

server_stop
rc=$?
[ "$rc" = 255 ] && ok "SIGTERM: p11-kit server exits with 255 (hence SuccessExitStatus=255)" || ko "SIGTERM: exit $rc"
[ ! -e "$work/facts/s.sock" ] && ok "... and removes its socket" || ko "the socket is left after SIGTERM"
expect_rc "no server: C_Initialize CKR_OK and no slots" 1 '^No slots' -- pkcs11-tool --module "$CLIENT" -L

# -g: the connecting process's primary gid only.
server_start facts/g.log -n "$work/facts/s.sock" -g "$ops" pkcs11:token=facts
chmod 0666 "$work/facts/s.sock"
expect "-g $ops: a member by a supplementary group is refused (guardianctl: CKR_DEVICE_ERROR)" 1 \
    'did not initialize: CKR_DEVICE_ERROR' -- as "$op" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" \
    "$CTL" --module "$CLIENT" --token facts cert
# The server closes the refused connection at once: a client that writes to
# it first and does not ignore SIGPIPE (pkcs11-tool) is killed by it, mostly.
as "$op" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" pkcs11-tool --module "$CLIENT" -L >facts/g.out 2>&1
rc=$?
if [ $rc = 141 ] || { [ $rc != 0 ] && grep -q CKR_DEVICE_ERROR facts/g.out; }; then
    ok "... pkcs11-tool: refused too ($([ $rc = 141 ] && echo "killed by SIGPIPE" || echo CKR_DEVICE_ERROR))"
else
    ko "-g: pkcs11-tool as a supplementary member: exit $rc: $(head -2 facts/g.out)"
fi
expect "... the server says why" 0 "connecting gid \($(id -g "$op")\) doesn't match expected \($(getent group "$ops" | cut -d: -f3)\)" -- cat facts/g.log
expect "-g $ops: the same account with $ops as its primary group is admitted" 0 'token label *: facts' -- \
    setpriv --reuid="$op" --regid="$ops" --init-groups -- env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" \
    pkcs11-tool --module "$CLIENT" -L
server_stop

# Socket activation: ignored (not built WITH_SYSTEMD).
if command -v systemd-socket-activate >/dev/null; then
    systemd-socket-activate -E GUARDIAN_BACKEND -E GUARDIAN_STATE_DIR -E SOFTHSM2_CONF -l "$work/facts/act.sock" \
        p11-kit server -f --provider "$M" -n "$work/facts/own.sock" pkcs11:token=facts >facts/act.log 2>&1 &
    act=$!
    pids+=("$act")
    sleep 0.5
    P11_KIT_SERVER_ADDRESS=unix:path=$work/facts/act.sock timeout 3 pkcs11-tool --module "$CLIENT" -L >/dev/null 2>&1
    rc=$?
    if [ "$rc" = 124 ] && [ -S "$work/facts/own.sock" ]; then
        ok "LISTEN_FDS ignored: a client of the activated socket hangs, the server made its own socket"
    else
        ko "socket activation: the client exited $rc; own socket: $(ls "$work/facts/own.sock" 2>&1)"
    fi
    stop "$act" # systemd-socket-activate execs the server: the same process
else
    echo "SKIP LISTEN_FDS check: systemd-socket-activate is missing (package systemd)"
fi
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR SOFTHSM2_CONF P11_KIT_SERVER_ADDRESS

# ---- 2. the unit ---------------------------------------------------------------------------

section "2. the systemd unit"
exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT")
run_cmd=$("$SETUP" run --dry-run)
[ "$run_cmd" = "$exec_start" ] && ok "its ExecStart is what 'guardian-service-setup run' runs: $exec_start" ||
    ko "ExecStart '$exec_start' is not what guardian-service-setup runs: '$run_cmd'"
# cmake --install puts the unit and the setup tool under the prefix it is given
# (DESTDIR: nothing of it lands outside $work).
if DESTDIR=$work/dest cmake --install "$(dirname "$UNIT")" --prefix /opt/gtest >install-cmake.out 2>&1; then
    [ -f dest/opt/gtest/lib/systemd/system/guardian-pkcs11.service ] && [ -x dest/opt/gtest/sbin/guardian-service-setup ] &&
        ok "cmake --install --prefix /opt/gtest: lib/systemd/system/guardian-pkcs11.service and sbin/guardian-service-setup" ||
        ko "cmake --install --prefix: $(grep -E 'guardian-(pkcs11.service|service-setup)' install-cmake.out)"
else
    ko "cmake --install: $(tail -3 install-cmake.out)"
fi
if command -v systemd-analyze >/dev/null; then
    # The unit names the installed guardian-service-setup; verify a copy that
    # names the built one (verify checks that every Exec* command exists).
    installed=$(sed -n 's/^ExecStartPost=+\([^ ]*\).*/\1/p' "$UNIT")
    mkdir -p unit
    sed "s|^ExecStartPost=+$installed |ExecStartPost=+$SETUP |" "$UNIT" >unit/guardian-pkcs11.service
    expect "systemd-analyze verify guardian-pkcs11.service" 0 "" -- systemd-analyze verify unit/guardian-pkcs11.service
    expect "systemd-analyze security rates it SAFE" 0 "Overall exposure level .*: 0\.[0-9] SAFE|: 1\.[0-9] OK" -- \
        systemd-analyze security --offline=true unit/guardian-pkcs11.service
else
    echo "SKIP systemd-analyze verify: systemd-analyze is missing (apt-get install systemd)"
fi

# ---- 3. install in a sandbox ---------------------------------------------------------------

section "3. guardian-service-setup install in a sandbox"
service_sandbox gtest
service_install /CN=service-test strace -f -qq -e trace=execve -s 4096 -o install.trace
rc=$?
sed 's/^/    /' install.out
[ $rc = 0 ] && ok "install" || ko "install: exit $rc (its output above)"
leaks=""
for f in "$conf/backend.pin" "$conf/backend-so.pin"; do
    [ -r "$f" ] && leaks+=$(grep -c -F -f <(head -n 1 "$f") install.trace)
done
leaks+=$(grep -c -F -e "$SO_SECRET" -e "$ALICE" install.trace)
[ "$leaks" = 000 ] && grep -q 'execve(' install.trace &&
    ok "no PIN on any command line ($(grep -c 'execve(' install.trace) execve traced: none carries one)" ||
    ko "a PIN on a command line (counts $leaks): $(grep -F -e "$SO_SECRET" -e "$ALICE" install.trace | head -3)"

# mode_is PATH MODE OWNER:GROUP
mode_is() {
    local got
    got=$(stat -c '%04a %U:%G' "$1" 2>&1)
    [ "$got" = "$2 $3" ] && ok "$1 $2 $3" || ko "$1: $got, not $2 $3"
}
mode_is "$conf" 0755 root:root
mode_is "$conf/guardian.conf" 0644 root:root
mode_is "$conf/backend.pin" 0400 "$svc:$svc"
mode_is "$conf/backend-so.pin" 0400 "$svc:$svc"
mode_is "$conf/guardian.pem" 0644 root:root
mode_is "$state" 0700 "$svc:$svc"
mode_is "$tokens" 0700 "$svc:$svc"
mode_is "$tokens/tokens" 0700 "$svc:$svc"
mode_is "$tokens/softhsm2.conf" 0600 "$svc:$svc"
bad=$(find "$state" "$tokens" \( ! -user "$svc" -o -perm /077 \) -printf '%p %m %u\n')
[ -z "$bad" ] && ok "every file under the state and token directories is $svc's, no group or other bits" ||
    ko "files not $svc's alone: $bad"
expect "guardian.conf names the PIN files" 0 "backend_so_pin_file = $conf/backend-so.pin" -- cat "$conf/guardian.conf"
grep -qx '[0-9a-f]\{48\}' "$conf/backend.pin" && ! cmp -s "$conf/backend.pin" "$conf/backend-so.pin" &&
    ok "the backend PINs: 48 random hex digits each, different" || ko "the backend PIN files' content"
expect "guardian.pem: the Guardian certificate and its signing certificate" 0 "subject=CN *= *service-test$" -- \
    openssl x509 -in "$conf/guardian.pem" -noout -subject
expect "the operators' group exists, the service's account has no shell" 0 "/usr/sbin/nologin" -- getent passwd "$svc"
expect_rc "install again: refused, nothing touched" 1 "exists: this Guardian service is installed" -- \
    "$SETUP" install "${opts[@]}" --operator alice --so-pin-file pins.txt --operator-pin-file pins.txt
expect_rc "install with a 7-byte SO PIN: refused" 1 "8\.\.128 bytes, not 7" -- \
    "$SETUP" install "${opts[@]}" --conf-dir "$work/c2" --state-dir "$work/s2" --token-dir "$work/t2" --operator alice \
    --so-pin-file <(echo 1234567) --operator-pin-file pins.txt
expect_rc "install without --operator: a usage error" 2 "needs --operator" -- "$SETUP" install "${opts[@]}"
expect_rc "uninstall without --purge: refused, says what would be lost" 1 "destroys the Guardian for good" -- \
    "$SETUP" uninstall "${opts[@]}"
[ -s "$conf/backend.pin" ] && [ -d "$state" ] && ok "... and nothing was removed" || ko "uninstall without --purge removed something"
expect_rc "status before the service runs: as installed" 0 "^OK$" -- "$SETUP" status "${opts[@]}"

# ---- 4. the service and an operator --------------------------------------------------------

section "4. the service (guardian-service-setup run) and an operator"
# Under strace, to check the unit's system call filter and
# MemoryDenyWriteExecute= against what the service really does.
service_start strace -f -qq -o service.trace
tracer=$runner
service=$(head -n 1 service.trace | awk '{print $1}')
pids+=("$service")
expect "run: the service is ready" 0 "^ready: P11_KIT_SERVER_ADDRESS=unix:path=$sock" -- cat service.log
mode_is "$sock" 0660 "$svc:$ops"
mode_is "$(dirname "$sock")" 0750 "$svc:$ops"
expect "p11-kit server runs as $svc" 0 "^ *$(id -u "$svc") .*--provider $M --name $sock pkcs11:token=gtest" -- \
    ps -o uid=,args= --ppid "$service"
expect_rc "status with the service running: as installed, the token through the socket" 0 "token through the socket +gtest" -- \
    "$SETUP" status "${opts[@]}"
export P11_KIT_SERVER_ADDRESS=unix:path=$sock GUARDIAN_PIN=alice:$ALICE
expect "the operator: guardianctl cert through the service" 0 "BEGIN CERTIFICATE" -- opctl cert
expect "the operator: guardianctl status logged in as alice (service mode, the credentials)" 0 "service mode +yes: C_Login takes the Guardian.s own credentials" -- opctl status
expect "the operator: status names the service's store, which the operator cannot read (below)" 0 \
    "^  store +sqlite \($state/guardian.db\)$" -- opctl status
expect "someone outside $ops: no token through the service" 1 "is the service running, and are you in its operators' group" -- \
    as "$other" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" "$CTL" --module "$CLIENT" --token gtest cert
for f in "$conf/backend.pin" "$conf/backend-so.pin" "$tokens/softhsm2.conf" "$state/guardian.db"; do
    expect "the operator cannot read $(basename "$f")" 1 "Permission denied" -- as "$op" cat "$f"
done
expect "the operator cannot list the token directory" 1 "Permission denied" -- as "$op" ls "$tokens/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$tokens" >op-softhsm2.conf
expect "the operator cannot open the backend token (SoftHSM with the token directory)" 1 "" -- \
    as "$op" env SOFTHSM2_CONF="$work/op-softhsm2.conf" pkcs11-tool --module "$SOFTHSM" --token-label gtest -O
expect "a wrong secret for alice is refused" 1 "CKR_PIN_INCORRECT|wrong user PIN" -- \
    as "$op" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" GUARDIAN_PIN="alice:wrong-secret-1" \
    "$CTL" --module "$CLIENT" --token gtest status

# The module refuses a PIN file it should not trust (the lead's check, docs/configuration.md).
pin_refused() { # NAME: alice's login through the service fails and the module logs a line naming the PIN file
    local before
    before=$(wc -l <service.log)
    if opctl status >pin.out 2>&1; then
        ko "$1: alice logged in anyway"
    elif tail -n +"$((before + 1))" service.log | grep -q -F "$conf/backend.pin"; then
        ok "$1: refused; the service logs: $(tail -n +"$((before + 1))" service.log | grep -m1 -F "$conf/backend.pin")"
    else
        ko "$1: refused, but the service's log names no $conf/backend.pin: $(tail -n +"$((before + 1))" service.log | head -3) / $(head -2 pin.out)"
    fi
}
chmod 0644 "$conf/backend.pin"
pin_refused "backend.pin 0644"
chmod 0400 "$conf/backend.pin"
chown root "$conf/backend.pin"
pin_refused "backend.pin owned by root (0400: the service cannot read it)"
chown "$svc" "$conf/backend.pin"
expect "backend.pin 0400 again: alice works" 0 "service mode +yes" -- opctl status
# The Security Officer's recovery, with the service running.
so_login() { # SECRET: an SO login through the service as the operator's account
    as "$op" env P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" "$PY" "$HOLD" so-login "$1"
}
expect "the SO's PIN logs in through the service" 0 "^STATE 4" -- so_login "$SO_SECRET"
NEW_SO=so-new-$(openssl rand -hex 8)
expect "reset-so: cleared with the backend's SO PIN, a new SO PIN set" 0 "set the new Security Officer PIN" -- \
    "$SETUP" reset-so "${opts[@]}" --so-pin-file <(echo "$NEW_SO")
expect "... the old SO PIN is refused" 1 "CKR_PIN_INCORRECT" -- so_login "$SO_SECRET"
expect "... the new one logs in" 0 "^STATE 4" -- so_login "$NEW_SO"
expect "... both changes are audit records" 0 "[45] credential" -- opctl status
kill -TERM "$service"
# strace ends (and has written everything) once its last tracee has.
for _ in $(seq 100); do kill -0 "$tracer" 2>/dev/null || break; sleep 0.1; done
wait "$tracer"
runner=""
expect "run stops on SIGTERM, exit 0" 0 "^$service +exit_group\(0\)" -- cat service.trace
[ ! -e "$sock" ] && ok "... and its socket is gone" || ko "the socket is left"
unset P11_KIT_SERVER_ADDRESS GUARDIAN_PIN

# The system calls of p11-kit server, its p11-kit-remote processes and the
# module in them (every process from the exec of p11-kit on), against the
# unit's SystemCallFilter=@system-service ~@privileged @resources.
traced=$(awk '
    /execve\("[^"]*p11-kit[^"]*"/ && / = 0$/ { mine[$1] = 1 }
    ($1 in mine) && /(clone|clone3|fork|vfork)[(]/ && / = [0-9]+$/ { mine[$NF] = 1 }
    ($1 in mine) && /resumed>/ && /(clone|clone3|fork|vfork) resumed>/ && / = [0-9]+$/ { mine[$NF] = 1 }
    ($1 in mine) { line = $0; sub(/^[0-9]+ +/, "", line); sub(/^<\.\.\. /, "", line)
                   if (match(line, /^[a-z_0-9]+/)) print substr(line, RSTART, RLENGTH) }' service.trace | sort -u)
if command -v systemd-analyze >/dev/null; then
    group() { # @GROUP: its system calls, nested groups expanded
        systemd-analyze syscall-filter "$1" | sed -e 's/#.*//' -e 's/^ *//' | grep -v -e '^$' -e "^$1\$" |
            while read -r c; do case $c in @*) group "$c" ;; *) echo "$c" ;; esac; done
    }
    allowed=$(comm -23 <(group @system-service | sort -u) <({ group @privileged; group @resources; } | sort -u))
    outside=$(comm -23 <(echo "$traced") <(echo "$allowed") | tr '\n' ' ')
    [ -n "$traced" ] && [ -z "$outside" ] &&
        ok "the service's $(wc -l <<<"$traced") system calls are all in the unit's filter" ||
        ko "system calls outside the unit's filter: ${outside:-(none traced)}"
fi
wx=$(grep -c -E '(mmap|mprotect|pkey_mprotect)\(.*(PROT_WRITE\|PROT_EXEC|PROT_READ\|PROT_WRITE\|PROT_EXEC)|mprotect\(.*PROT_EXEC' service.trace)
[ "$wx" = 0 ] && ok "no mapping made writable and executable (MemoryDenyWriteExecute=yes holds)" ||
    ko "$wx writable+executable mappings: $(grep -m2 -E 'PROT_WRITE\|PROT_EXEC|mprotect\(.*PROT_EXEC' service.trace)"

# ---- 5. the demo ---------------------------------------------------------------------------

section "5. tools/guardian-demo.sh --service"
GUARDIAN_DEMO_ACCOUNTS="${prefix}d" GUARDIAN_BUILD_DIR="$(dirname "$M")" "$SRC/tools/guardian-demo.sh" --service --parts 50 \
    >demo.out 2>&1
rc=$?
if [ $rc = 0 ]; then
    ok "guardian-demo.sh --service --parts 50"
else
    ko "guardian-demo.sh --service: exit $rc"
    sed 's/^/    /' demo.out
fi
for want in "50 of 50 certificates: OK" "^  OK$" "pkcs11-tool --sign with the production CA key: CKR_" \
    "cat the backend's user PIN .*: Permission denied" "copy the state, to restore it later: Permission denied"; do
    expect "the demo says: $want" 0 "$want" -- cat demo.out
done
expect "the demo removed its accounts" 1 "" -- getent passwd "${prefix}d-svc"

# ---- 6. uninstall ---------------------------------------------------------------------------

section "6. guardian-service-setup uninstall --purge"
expect "uninstall --purge" 0 "removed account $svc" -- "$SETUP" uninstall "${opts[@]}" --purge
left=$(find "$root" -mindepth 1 ! -type d 2>/dev/null)
[ -z "$left" ] && ok "no file is left under the sandbox" || ko "left: $left"
expect "the accounts and groups are gone" 1 "" -- getent passwd "$svc"
expect "... the operators' group too" 1 "" -- getent group "$ops"

finish
