# shellcheck shell=bash
#
# lib.sh — bring a PKCS#11 backend up inside one directory, and down again.
#
#   . tests/backends/lib.sh
#   backend_up KIND DIR      # KIND = softhsm | tpm2 | nss | opencryptoki
#   backend_exec CMD...      # run CMD where the backend is reachable
#   backend_down             # stop every daemon backend_up started
#   backend_pids             # their PIDs (to check afterwards that they are gone)
#
# Everything lives in DIR (created if missing; it should be empty): nothing
# system-wide is read or written (docs/backends.md; facts in
# ../shared/BACKENDS.md beside the repository).  Token label and PINs come from
# BACKEND_LABEL (default "guardian"), BACKEND_USER_PIN (1234) and
# BACKEND_SO_PIN (12345678; opencryptoki takes 4-8 characters; NSS has no SO).
#
# After backend_up these are exported:
#   BACKEND_KIND BACKEND_DIR BACKEND_LABEL BACKEND_USER_PIN BACKEND_SO_PIN
#   BACKEND_MODULE      the backend's PKCS#11 module
#   BACKEND_INIT_ARGS   what its C_Initialize needs in pReserved ("" = NULL; NSS)
#   BACKEND_UP_MS       the bring-up time in milliseconds (also printed)
#   BACKEND_SLOT        the token's slot ID (decimal; prefer the label: SoftHSM's
#                       slot IDs change whenever a token is initialised)
# and the variables the backend's clients need (SOFTHSM2_CONF; TPM2_PKCS11_TCTI,
# TPM2_PKCS11_STORE, TPM2TOOLS_TCTI, DBUS_SESSION_BUS_ADDRESS).  opencryptoki
# runs in a private mount + IPC namespace: its clients must be started with
# backend_exec (nsenter); for the other kinds backend_exec just runs CMD.
#
# backend_up returns 0, 1 (a message on stderr; a missing Debian package is
# named) or 77 when the kind cannot run here at all (opencryptoki when not
# root, or when unshare is refused: no namespace).  On failure it has already taken down what it started.
# It sets an EXIT trap calling backend_down when the shell has none; a script
# with its own EXIT trap must call backend_down from it.
#
# Daemons are stopped by the PIDs recorded here (never by name): TERM, then
# KILL after 3 s.

BACKEND_KIND=
BACKEND_DIR=
BACKEND_MODULE=
BACKEND_INIT_ARGS=
BACKEND_UP_MS=
_BACKEND_PIDS=()
_BACKEND_NS_PID=

_backend_msg() {
    printf 'backend: %s\n' "$*" >&2
}

_backend_now_ms() {
    local t
    t=$(date +%s%N)
    printf '%s' $((t / 1000000))
}

# _backend_need PACKAGE PATH...: every PATH (a file, or a command on PATH)
# must exist, else name the Debian package.
_backend_need() {
    local pkg=$1 p
    shift
    for p in "$@"; do
        if [ "${p#/}" != "$p" ]; then
            [ -e "$p" ] && continue
        else
            command -v "$p" >/dev/null 2>&1 && continue
        fi
        _backend_msg "$p is missing: apt-get install $pkg"
        return 1
    done
}

# _backend_run NAME CMD...: a set-up step; its output goes to DIR/log/NAME.log
# and is shown (15 lines) when it fails.
_backend_run() {
    local name=$1 rc=0
    shift
    "$@" >"$BACKEND_DIR/log/$name.log" 2>&1 </dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        _backend_msg "$name failed (exit status $rc): $*"
        head -n 15 "$BACKEND_DIR/log/$name.log" | sed 's/^/    | /' >&2
    fi
    return "$rc"
}

# _backend_wait SECONDS CMD...: until CMD succeeds (quietly), at most SECONDS.
_backend_wait() {
    local end=$(($(_backend_now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1 </dev/null; do
        if [ "$(_backend_now_ms)" -gt "$end" ]; then
            return 1
        fi
        sleep 0.05
    done
}

_backend_alive() {
    kill -0 "$1" 2>/dev/null
}

backend_exec() {
    if [ -n "$_BACKEND_NS_PID" ]; then
        nsenter -t "$_BACKEND_NS_PID" -m -i -- "$@"
    else
        "$@"
    fi
}

backend_down() {
    local pid i
    # Last started first: pkcsslotd before its namespace's holder, abrmd before
    # its bus and its TPM.
    for ((i = ${#_BACKEND_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${_BACKEND_PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = ${#_BACKEND_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${_BACKEND_PIDS[$i]}
        if ! _backend_wait 3 eval "! kill -0 $pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    _BACKEND_PIDS=()
    _BACKEND_NS_PID=
}

# ---- SoftHSMv2 ---------------------------------------------------------------

_backend_up_softhsm() {
    _backend_need softhsm2 /usr/lib/softhsm/libsofthsm2.so softhsm2-util || return 1
    BACKEND_MODULE=/usr/lib/softhsm/libsofthsm2.so
    mkdir -p "$BACKEND_DIR/tokens"
    cat >"$BACKEND_DIR/softhsm2.conf" <<EOF
directories.tokendir = $BACKEND_DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
    export SOFTHSM2_CONF=$BACKEND_DIR/softhsm2.conf
    _backend_run softhsm2-util softhsm2-util --init-token --free --label "$BACKEND_LABEL" \
        --pin "$BACKEND_USER_PIN" --so-pin "$BACKEND_SO_PIN"
}

# ---- TPM 2.0: swtpm + tpm2-abrmd on a private session bus + tpm2-pkcs11 -------

_backend_up_tpm2() {
    local d=$BACKEND_DIR port pid
    _backend_need swtpm swtpm || return 1
    _backend_need tpm2-abrmd tpm2-abrmd || return 1
    _backend_need dbus dbus-daemon || return 1
    _backend_need tpm2-tools tpm2_getrandom || return 1
    _backend_need libtss2-tcti-tabrmd0 /usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0 || return 1
    _backend_need libtss2-tcti-swtpm0 /usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0 || return 1
    _backend_need libtpm2-pkcs11-1 /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so || return 1
    _backend_need libtpm2-pkcs11-tools tpm2_ptool || return 1
    BACKEND_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
    mkdir -p "$d/tpm" "$d/store"

    # swtpm: the TCTI expects the control port at port + 1.  A random pair,
    # retried when taken.
    for _ in 1 2 3 4 5 6 7 8; do
        port=$((20000 + (RANDOM % 20000) * 2))
        rm -f "$d/swtpm.pid"
        if swtpm socket --tpm2 --tpmstate dir="$d/tpm" \
            --server type=tcp,port=$port,bindaddr=127.0.0.1 \
            --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
            --flags not-need-init,startup-clear --pid file="$d/swtpm.pid" \
            --log file="$d/log/swtpm.log" --daemon </dev/null >>"$d/log/swtpm.out" 2>&1 &&
            _backend_wait 2 test -s "$d/swtpm.pid"; then
            break
        fi
        port=
    done
    if [ -z "$port" ]; then
        _backend_msg "swtpm did not start (log: $d/log/swtpm.out)"
        return 1
    fi
    pid=$(cat "$d/swtpm.pid")
    _BACKEND_PIDS+=("$pid")

    # A private bus for tpm2-abrmd, with a configuration of its own (no system
    # bus, no system policy files): the session bus's rules, on DIR/bus.
    cat >"$d/bus.conf" <<BUSCONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$d/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
BUSCONF
    dbus-daemon --config-file="$d/bus.conf" --nofork --nopidfile </dev/null >"$d/log/dbus.log" 2>&1 &
    _BACKEND_PIDS+=("$!")
    if ! _backend_wait 5 test -S "$d/bus"; then
        _backend_msg "dbus-daemon did not create $d/bus (log: $d/log/dbus.log)"
        return 1
    fi
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$d/bus"

    # The resource manager: without one swtpm's three object slots fill after
    # the first tpm2_ptool command.
    tpm2-abrmd --session --allow-root --flush-all --tcti="swtpm:host=127.0.0.1,port=$port" \
        </dev/null >"$d/log/tpm2-abrmd.log" 2>&1 &
    _BACKEND_PIDS+=("$!")
    export TPM2TOOLS_TCTI=tabrmd:bus_type=session
    export TPM2_PKCS11_TCTI=tabrmd:bus_type=session
    export TPM2_PKCS11_STORE=$d/store
    if ! _backend_wait 10 tpm2_getrandom 4; then
        _backend_msg "tpm2-abrmd does not answer on $d/bus (log: $d/log/tpm2-abrmd.log)"
        return 1
    fi
    _backend_run tpm2_ptool-init tpm2_ptool init --path "$d/store" || return 1
    _backend_run tpm2_ptool-addtoken tpm2_ptool addtoken --path "$d/store" --pid=1 \
        --sopin "$BACKEND_SO_PIN" --userpin "$BACKEND_USER_PIN" --label "$BACKEND_LABEL"
}

# ---- NSS softoken: a database, and its init string --------------------------

_backend_up_nss() {
    local d=$BACKEND_DIR rc=0
    _backend_need libnss3 /usr/lib/x86_64-linux-gnu/libsoftokn3.so || return 1
    _backend_need libnss3-tools certutil || return 1
    BACKEND_MODULE=/usr/lib/x86_64-linux-gnu/libsoftokn3.so
    if [ "${#BACKEND_LABEL}" -gt 32 ]; then
        _backend_msg "NSS token labels have at most 32 bytes: '$BACKEND_LABEL'"
        return 1
    fi
    # NSS has no SO: the database password is the token's user PIN.
    mkdir -p "$d/nssdb"
    (umask 077 && printf '%s\n' "$BACKEND_USER_PIN" >"$d/nssdb.pin")
    _backend_run certutil certutil -N -d "sql:$d/nssdb" -f "$d/nssdb.pin" || rc=$?
    rm -f "$d/nssdb.pin"
    [ "$rc" -eq 0 ] || return 1
    BACKEND_SO_PIN=
    BACKEND_INIT_ARGS="configdir='sql:$d/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags= dbTokenDescription='$BACKEND_LABEL'"
}

# ---- opencryptoki: pkcsslotd and the soft token in a private namespace ------

_backend_up_opencryptoki() {
    local d=$BACKEND_DIR/ock slotd=
    if [ "$(id -u)" -ne 0 ]; then
        _backend_msg "opencryptoki needs root here: its paths are compiled in, so it runs in a private mount namespace (unshare)"
        return 77
    fi
    _backend_need opencryptoki pkcsslotd /usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so \
        /usr/lib/x86_64-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so || return 1
    _backend_need util-linux unshare nsenter || return 1
    _backend_need opensc pkcs11-tool || return 1
    if ! getent group pkcs11 >/dev/null; then
        _backend_msg "group pkcs11 is missing: apt-get install opencryptoki (its postinst creates it)"
        return 1
    fi
    # Root without CAP_SYS_ADMIN (an unprivileged container) cannot make the
    # namespace either: that is "cannot run here", not a failure.
    if ! unshare --mount --ipc --propagation private -- true 2>"$BACKEND_DIR/log/unshare-probe.log"; then
        _backend_msg "opencryptoki needs a private mount namespace and unshare is refused here: $(head -n 1 "$BACKEND_DIR/log/unshare-probe.log")"
        return 77
    fi
    BACKEND_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
    # 3.8.1 compiles in /etc/opencryptoki, /var/lib/opencryptoki,
    # /run/pkcsslotd.socket and /var/lock (-> /run/lock)/opencryptoki: each
    # is a directory of ours, bind-mounted over the real one in a private
    # mount + IPC (its shared memory) namespace.  The soft token keeps its
    # object index in POSIX shared memory, /dev/shm/var.lib.opencryptoki.swtok,
    # which the IPC namespace does not separate: without a /dev/shm of its own,
    # two backends up at once (parallel tests) share one index and lose each
    # other's objects (seen: a Guardian's keys gone mid-test).
    mkdir -p "$d/etc" "$d/lib/swtok/TOK_OBJ" "$d/run/lock/opencryptoki/swtok" "$d/log" "$d/shm"
    printf 'version opencryptoki-3.1\n\nslot 3\n{\nstdll = libpkcs11_sw.so\n}\n' >"$d/etc/opencryptoki.conf"
    chgrp -R pkcs11 "$d/etc" "$d/lib" "$d/run/lock/opencryptoki"
    chmod 770 "$d/lib" "$d/lib/swtok" "$d/lib/swtok/TOK_OBJ" "$d/run/lock/opencryptoki" \
        "$d/run/lock/opencryptoki/swtok"
    chmod 755 "$d/run"
    chmod 1777 "$d/run/lock" "$d/shm"
    # The namespace lives as long as its holder (sleep) does.
    # shellcheck disable=SC2016 # $1 is the inner shell's
    unshare --mount --ipc --propagation private -- sh -c '
        mount --bind "$1/etc" /etc/opencryptoki &&
        mount --bind "$1/lib" /var/lib/opencryptoki &&
        mount --bind "$1/run" /run &&
        mount --bind "$1/log" /var/log &&
        mount --bind "$1/shm" /dev/shm &&
        : >/run/namespace-ready && exec sleep infinity' sh "$d" \
        </dev/null >"$BACKEND_DIR/log/unshare.log" 2>&1 &
    _BACKEND_PIDS+=("$!")
    _BACKEND_NS_PID=$!
    if ! _backend_wait 5 test -e "$d/run/namespace-ready"; then
        _backend_msg "the private namespace did not come up (log: $BACKEND_DIR/log/unshare.log)"
        head -n 5 "$BACKEND_DIR/log/unshare.log" | sed 's/^/    | /' >&2
        return 1
    fi
    _backend_run pkcsslotd backend_exec pkcsslotd || return 1
    if _backend_wait 5 test -s "$d/run/pkcsslotd.pid"; then
        slotd=$(cat "$d/run/pkcsslotd.pid")
    fi
    if [ -z "$slotd" ] || ! _backend_alive "$slotd"; then
        _backend_msg "pkcsslotd did not stay up (syslog is not captured; see $d/log)"
        return 1
    fi
    _BACKEND_PIDS+=("$slotd")
    # The factory SO PIN is 87654321; PINs have 4-8 characters.
    _backend_run init-token backend_exec pkcs11-tool --module "$BACKEND_MODULE" --init-token \
        --so-pin 87654321 --label "$BACKEND_LABEL" || return 1
    if [ "$BACKEND_SO_PIN" != 87654321 ]; then
        _backend_run change-so-pin backend_exec pkcs11-tool --module "$BACKEND_MODULE" \
            --token-label "$BACKEND_LABEL" --login --login-type so --so-pin 87654321 \
            --change-pin --new-pin "$BACKEND_SO_PIN" || return 1
    fi
    _backend_run init-pin backend_exec pkcs11-tool --module "$BACKEND_MODULE" --token-label "$BACKEND_LABEL" \
        --login --login-type so --so-pin "$BACKEND_SO_PIN" --init-pin --pin "$BACKEND_USER_PIN"
}

# ---- the entry point -----------------------------------------------------------

backend_up() {
    local kind=${1:-} dir=${2:-} t0 rc=0
    if [ $# -ne 2 ] || [ -z "$dir" ]; then
        _backend_msg "usage: backend_up softhsm|tpm2|nss|opencryptoki DIR"
        return 2
    fi
    case $kind in
    softhsm | tpm2 | nss | opencryptoki) ;;
    *)
        _backend_msg "unknown backend '$kind' (softhsm, tpm2, nss or opencryptoki)"
        return 2
        ;;
    esac
    if [ ${#_BACKEND_PIDS[@]} -gt 0 ]; then
        _backend_msg "a backend is already up ($BACKEND_KIND): backend_down first"
        return 2
    fi
    mkdir -p "$dir/log"
    BACKEND_KIND=$kind
    BACKEND_DIR=$(cd "$dir" && pwd)
    BACKEND_LABEL=${BACKEND_LABEL:-guardian}
    BACKEND_USER_PIN=${BACKEND_USER_PIN:-1234}
    BACKEND_SO_PIN=${BACKEND_SO_PIN:-12345678}
    BACKEND_MODULE=
    BACKEND_INIT_ARGS=
    if [ -z "$(trap -p EXIT)" ]; then
        trap backend_down EXIT
    fi
    t0=$(_backend_now_ms)
    "_backend_up_$kind" || rc=$?
    if [ "$rc" -ne 0 ]; then
        backend_down
        return "$rc"
    fi
    BACKEND_UP_MS=$(($(_backend_now_ms) - t0))
    # The token's slot ID (SoftHSM's change at every initialisation; NSS's
    # database token is always the second slot, and pkcs11-tool cannot pass
    # NSS its init string to ask).
    BACKEND_SLOT=
    if [ "$kind" = nss ]; then
        BACKEND_SLOT=2
    elif command -v pkcs11-tool >/dev/null; then
        BACKEND_SLOT=$(backend_exec pkcs11-tool --module "$BACKEND_MODULE" -L 2>/dev/null </dev/null |
            awk -v l="$BACKEND_LABEL" '/^Slot [0-9]+ \(0x[0-9a-f]+\)/ { s = $3; gsub(/[():]/, "", s) }
                $1 == "token" && $2 == "label" { sub(/^ *token label *: /, ""); if ($0 == l) { print s; exit } }')
        [ -n "$BACKEND_SLOT" ] && BACKEND_SLOT=$((BACKEND_SLOT))
    fi
    export BACKEND_KIND BACKEND_DIR BACKEND_LABEL BACKEND_USER_PIN BACKEND_SO_PIN BACKEND_MODULE \
        BACKEND_INIT_ARGS BACKEND_UP_MS BACKEND_SLOT
    printf 'INFO backend %s up in %d ms (token %s in slot %s, module %s)\n' "$kind" "$BACKEND_UP_MS" \
        "$BACKEND_LABEL" "${BACKEND_SLOT:-?}" "$BACKEND_MODULE"
}

# backend_test_start NAME LABEL: the start both backend tests share, after
# KIND and INTEROP_NAME are set: a work directory guardian-NAME-KIND.* in
# WORK (log, out, state, home; the backend taken down and the summary printed
# on exit), a clean environment, and the backend up with token LABEL-KIND;
# exits 77 (SKIP) when the backend cannot be brought up here, fails when it
# does not come up.
backend_test_start() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/guardian-$1-$KIND.XXXXXX")
    trap _interop_exit EXIT
    trap 'exit 130' INT TERM
    on_exit backend_down
    mkdir -p "$WORK/log" "$WORK/out" "$WORK/state" "$WORK/home"
    chmod 700 "$WORK/state"
    cd "$WORK" || exit 1
    ulimit -c 0
    export HOME=$WORK/home
    unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG GUARDIAN_BACKEND_INIT_ARGS OPENSSL_CONF PKCS11_MODULE_PATH

    export BACKEND_LABEL=$2-$KIND
    rc=0
    backend_up "$KIND" "$WORK/backend" 2>"$WORK/log/backend_up.log" || rc=$?
    if [ "$rc" -eq 77 ]; then
        _FINISHED=1
        printf 'SKIP %s: %s\n' "$INTEROP_NAME" "$(tr '\n' ' ' <"$WORK/log/backend_up.log")"
        exit 77
    elif [ "$rc" -ne 0 ]; then
        fail "backend_up $KIND" "the backend did not come up" "$WORK/log/backend_up.log"
        finish
    fi
}

# backend_pids: the PIDs of the daemons backend_up started (space-separated;
# empty for SoftHSM and NSS, which run inside each process that loads them),
# so that a caller can check they are gone after backend_down.
backend_pids() {
    printf '%s' "${_BACKEND_PIDS[*]}"
}
