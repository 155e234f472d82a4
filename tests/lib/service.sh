# shellcheck shell=bash
# service.sh — the Guardian service in a sandbox, for the shell tests that run
# it as docs/service-mode.md sets it up: system accounts for the service and
# for an operator, `guardian-service-setup install` under a --root in the
# test's directory, the service started and stopped with `guardian-service-setup
# run`, and clients run as the operator's account through p11-kit-client.so.
# Used by test_service.sh, test_service_faults.sh and test_service_boundary.sh.
#
# Source it after testlib.sh, with M (guardian-pkcs11.so), CTL (guardianctl)
# and SETUP (guardian-service-setup) set, then:
#   service_require NAME TOOL...      skip (exit 77) unless this can run here
#   service_work DIR PREFIX           $work, the account names, the EXIT trap
#   service_accounts ACCOUNT...       the accounts; the first is the operator's
#   service_sandbox TOKEN             the paths, $opts, the Guardian's secrets
#   service_install SUBJECT [WRAP...] guardian-service-setup install
#   service_start [WRAP...]           guardian-service-setup run, until ready
#   service_stop
# and, as the accounts: as, opclient, opctl.

CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
runner="" server="" opts=() pids=()

# service_require NAME TOOL...: exit 77 (CTest's skip) unless root, the TOOLs
# (and p11-kit, setpriv, useradd, Debian's python3) are there, and $M is not
# built with ASan. An ASan-built module (tests/run-all.sh's second build)
# inside p11-kit's processes needs ASan's runtime preloaded into them, and then
# they hang: p11-kit-remote at exit (libp11-kit's destructor waits in
# freelocale for glibc's locale lock) and p11-kit server at its first refused
# connection (measured, p11-kit 0.24.1). The module's own code runs under ASan
# in the integration tests; the service is tested in the normal build.
service_require() {
    local name=$1 tool
    shift
    if [ "$(id -u)" != 0 ]; then
        echo "SKIP: $name makes system accounts and switches to them: it needs root"
        exit 77
    fi
    for tool in p11-kit setpriv useradd /usr/bin/python3 "$@"; do
        command -v "$tool" >/dev/null || { echo "SKIP: $tool is missing"; exit 77; }
    done
    local blocked
    if blocked=$(blocked_for_others "$M" "$CTL" "$HERE/x"); then
        echo "SKIP: $blocked (mode $(stat -c %a "$blocked")) lets no other account through, and the service's" \
            "and the operator's accounts must load $M and run $CTL and the test's scripts; build in a" \
            "directory others can traverse (chmod o+x on it) to run $name"
        exit 77
    fi
    if ldd "$M" 2>/dev/null | grep -q libasan; then
        echo "SKIP: $M is built with ASan, which hangs p11-kit server and p11-kit-remote" \
            "(tests/lib/service.sh says why); the normal build runs this test"
        exit 77
    fi
}

# service_work DIR PREFIX: a fresh $work (0755: the accounts must pass
# through it) and cd into it; the account and group names $svc (the
# service), $ops (who may connect), $op (the operator's account) and $other
# (someone else), each PREFIX-…; service_cleanup on EXIT.
service_work() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1-XXXXXX")
    chmod 0755 "$work"
    cd "$work" || exit 1
    svc=$2-svc ops=$2-ops op=$2-op other=$2-other
    trap service_cleanup EXIT
}

# service_accounts ACCOUNT...: system accounts, each with a group of its own,
# no home, no login shell; the first is the operator's, a member of $ops by a
# supplementary group (as usermod -a -G makes it).
service_accounts() {
    local a
    groupadd --system "$ops"
    for a in "$@"; do
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$a"
    done
    usermod -a -G "$ops" "$1"
}

# service_sandbox TOKEN: the installation's paths under $work/root ($root,
# $conf, $state, $tokens, $sock), guardian-service-setup's options for them
# ($opts), the Guardian SO's secret $SO_SECRET and operator alice's $ALICE, and
# pins.txt (0600: root's) holding both for install.
service_sandbox() {
    svc_token=$1
    root=$work/root
    conf=$root/etc/guardian state=$root/var/lib/guardian tokens=$root/var/lib/guardian-softhsm
    sock=$root/run/guardian/pkcs11.sock
    opts=(--root "$root" --user "$svc" --group "$svc" --operators-group "$ops" --conf-dir "$conf" --state-dir "$state"
        --token-dir "$tokens" --socket "$sock" --token "$svc_token" --module "$M" --guardianctl "$CTL" --backend "$SOFTHSM")
    SO_SECRET=so-$(openssl rand -hex 8) ALICE=alice-$(openssl rand -hex 8)
    (umask 077 && printf '%s\n%s\n' "$SO_SECRET" "$ALICE" >pins.txt)
}

# service_install SUBJECT [WRAP...]: guardian-service-setup install (under
# WRAP, e.g. strace), the first operator alice, the secrets on standard input;
# its output in install.out.
service_install() {
    local subject=$1
    shift
    "$@" "$SETUP" install "${opts[@]}" --operator alice --so-pin-file - --operator-pin-file - --subject "$subject" \
        <pins.txt >install.out 2>&1
}

# service_start [WRAP...]: guardian-service-setup run in the background (its
# pid, or WRAP's, in $runner; output in service.log) until it says ready (at
# most 10 s); p11-kit server's pid in $server. Fails when it is not ready.
service_start() {
    : >service.log
    "$@" "$SETUP" run "${opts[@]}" >>service.log 2>&1 &
    runner=$!
    for _ in $(seq 100); do grep -q '^ready:' service.log && break; sleep 0.1; done
    server=$(sed -n 's/^ready: .*p11-kit server pid \([0-9]*\).*/\1/p' service.log | tail -n 1)
    [ -n "$server" ]
}

# stop PID: SIGTERM, up to 5 s to end, then SIGKILL; returns its exit status.
stop() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null && echo "(pid $1 did not end on SIGTERM: killed)"
    wait "$1" 2>/dev/null
}

# service_stop: the service started by service_start, and whatever of the
# service's account still runs.
service_stop() {
    [ -n "$runner" ] || return 0
    kill -TERM "$runner" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$runner" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$runner" 2>/dev/null
    wait "$runner" 2>/dev/null
    pkill -KILL -u "$svc" 2>/dev/null
    runner=""
}

# service_cleanup: every process the test started ($pids, the service, the
# operator's), the installation (only the sandbox's: never the default
# paths), the accounts and groups, $work (KEEP=1 keeps it).
service_cleanup() {
    local p
    for p in "${pids[@]}"; do stop "$p"; done
    service_stop
    [ -n "${op:-}" ] && pkill -KILL -u "$op" 2>/dev/null
    [ ${#opts[@]} -gt 0 ] && "$SETUP" uninstall "${opts[@]}" --purge >/dev/null 2>&1
    for p in "$op" "$other" "$svc"; do userdel "$p" 2>/dev/null; done
    for p in "$ops" "$svc" "$op" "$other"; do groupdel "$p" 2>/dev/null; done
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}

# as ACCOUNT CMD...: CMD as ACCOUNT with its groups, in an environment of
# PATH and HOME=/nonexistent only (CMD may start with VAR=VALUE words, env's).
as() {
    local a=$1
    shift
    setpriv --reuid="$a" --regid="$a" --init-groups -- env -i PATH="$PATH" HOME=/nonexistent "$@"
}
# opclient CMD...: CMD as the operator's account, with the service's address.
opclient() { as "$op" P11_KIT_SERVER_ADDRESS="unix:path=$sock" "$@"; }
# opctl ARGS...: guardianctl as the operator's account through the service,
# logged in as alice (and as the SO with SO=SECRET set).
opctl() {
    opclient GUARDIAN_PIN="alice:$ALICE" ${SO:+GUARDIAN_SO_PIN="$SO"} "$CTL" --module "$CLIENT" --token "$svc_token" "$@"
}
