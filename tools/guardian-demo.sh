#!/usr/bin/env bash
# guardian-demo.sh — the main job, end to end, on a SoftHSM token made on the fly.
#
# Builds what it needs, creates a throwaway SoftHSMv2 token and a Guardian
# configuration in a temporary directory, then runs the whole story, everything
# through the Guardian module: Guardian identity (guardianctl init: agreement and signing keys) -> OEM PKI
# (OpenSSL) -> OEM root enrolment (Security Officer) -> wrapping
# (guardian-wrap create/inspect, openssl cms -verify) -> import (C_UnwrapKey with
# CKM_GUARDIAN_UNWRAP_PACKAGE) -> provisioning run (C_DeriveKey with
# CKM_GUARDIAN_DERIVE_DEVICE_CERT per part) -> signed audit export -> the OEM
# verifies the report offline -> openssl verify of every certificate.
#
# --service: the same story through the Guardian service (docs/service-mode.md).
# guardian-service-setup makes the service in a sandbox under the temporary
# directory (its own accounts, a SoftHSM token whose PINs only the service's
# account can read, the Guardian SO, operator alice, the identity); the service
# (p11-kit server) runs as that account; every step of the centre (guardianctl,
# pkcs11-tool, openssl) runs as another, unprivileged account in the operators'
# group, through p11-kit-client.so. Needs root (it makes the accounts and removes
# them at the end); GUARDIAN_DEMO_ACCOUNTS (default gdemo) prefixes their names.
#
# --backend KIND: the same story on another PKCS#11 backend (docs/backends/):
# softhsm, tpm2 (tpm2-pkcs11 on swtpm), nss (NSS softoken) or opencryptoki,
# brought up in the temporary directory by tests/backends/lib.sh (of this
# source tree, or GUARDIAN_BACKEND_LIB) and taken down at the end, whatever
# happened. On tpm2, nss and opencryptoki the Guardian runs in credentials
# mode (backend_pin_file: the Guardian's own Security Officer and operator
# alice, the backend's PINs in files only the demo's user reads): there a root
# enrolled as a token object cannot be trusted (docs/threat-model.md, 2).
# The flow chooses itself from what the Guardian states (the transports its
# certificate lists, id-guardian-transports) or, for a certificate without
# them, advertises on the slot: the classic wrap (the OEM's CA key travels,
# unwrapped inside the token) where it can import a key
# (CKM_GUARDIAN_UNWRAP_PACKAGE listed), the CA request (the CA key made in
# the Guardian: nothing secret travels) elsewhere; the CA key is EC P-256
# where CKM_ECDSA is listed, RSA-2048 otherwise. Each step's time is printed
# at the end; a failed step is named with the CKR code it ended on.
#
# --stations N --store postgresql: N Guardians (stations) on one allowance
# (issue 12). An embedded PostgreSQL 15 server in the temporary directory
# (tests/lib/pg.sh of this source tree, or GUARDIAN_PG_LIB: unprivileged,
# Unix socket only, password login), N SoftHSM tokens each with its own
# Guardian identity, state directory and guardian.conf (store = postgresql);
# the OEM wraps ONE group package for the N Guardians, each imports it (the
# first an IMPORT, the others JOIN it), the N stations provision in
# parallel, each asking for the whole allowance, until it is spent (the
# first to find it exhausted stops with CKR_GUARDIAN_QUOTA_EXHAUSTED); then
# ONE audit export of the shared trail, the OEM's verify-report and openssl
# verify of every certificate. Units per station are read from the OEM's
# verify-report (every record names the Guardian that wrote it) and checked
# against each station's certificate files. The
# server is stopped at the end, whatever happened. --stations above 1 needs
# --store postgresql: SQLite's state is one file in one station's state
# directory, and each station here is a Guardian with its own.
#
# Usage: tools/guardian-demo.sh [--keep] [--parts N] [--service]
#                               [--backend KIND [--credentials] [--flow F]]
#                               [--stations N] [--store sqlite|postgresql] [--help]
#   --keep         leave the temporary directory (and say where it is)
#   --parts N      produce N parts (1..1000000, default 1000): the package
#                  authorises exactly max(N, 1000) units
#   --service      the production way, through the Guardian service (root;
#                  SoftHSM only, not with --backend)
#   --backend KIND softhsm | tpm2 | nss | opencryptoki (opencryptoki: root)
#   --credentials  credentials mode on --backend softhsm too (the others
#                  always run in it)
#   --flow F       auto (default), wrap or ca-request: overrides the choice
#   --stations N   N stations (1..8, default 1) on one allowance of --parts
#                  units (default 1000); above 1 needs --store postgresql
#   --store S      sqlite (default: the story above) or postgresql (the
#                  stations' story on an embedded server; SoftHSM only)
# GUARDIAN_DEMO_INSTALLED=1: run the installed module and tools (a .deb,
# `cmake --install`) instead of a build tree: guardianctl, guardian-wrap and
# guardian-service-setup from PATH, the module named by guardian-pkcs11.pc.
# Missing Debian packages (tools/debian-packages) are installed first when run
# as root; otherwise the command to install them is printed and nothing runs.
# Exit status: 0 the whole story passed; 1 a step failed; 2 usage error;
# 77 the --backend cannot run on this machine (opencryptoki without root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${GUARDIAN_BUILD_DIR:-$here/build}"
module="$build/guardian-pkcs11.so"
ctl_bin="$build/tools/guardianctl" wrap_bin="$build/tools/guardian-wrap" setup_bin="$build/tools/guardian-service-setup"
softhsm="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
keep=0 parts=1000 service=0 kind="" credentials=0 flow=auto stations="" store=sqlite
usage() { echo "usage: $0 [--keep] [--parts N] [--service] [--backend KIND [--credentials] [--flow F]] [--stations N] [--store sqlite|postgresql] [--help]  (--help for details)"; }
usage_die() {
    printf 'guardian-demo: %s
' "$*" >&2
    usage >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    --keep) keep=1 ;;
    --parts | --parts=*)
        if [ "$1" = --parts ]; then
            [ $# -ge 2 ] || usage_die "--parts needs a number"
            parts=$2
            shift
        else
            parts=${1#--parts=}
        fi
        [[ $parts =~ ^[1-9][0-9]{0,6}$ ]] && [ "$parts" -le 1000000 ] ||
            usage_die "--parts must be a whole number from 1 to 1000000, not '$parts'"
        ;;
    --service) service=1 ;;
    --backend | --backend=* | --flow | --flow=* | --stations | --stations=* | --store | --store=*)
        opt=${1%%=*} val=${1#*=}
        if [ "$opt" = "$1" ]; then
            [ $# -ge 2 ] || usage_die "$opt needs a value"
            val=$2
            shift
        fi
        case $opt in
        --backend)
            case $val in softhsm | tpm2 | nss | opencryptoki) kind=$val ;;
            *) usage_die "--backend must be softhsm, tpm2, nss or opencryptoki, not '$val'" ;;
            esac
            ;;
        --flow)
            case $val in auto | wrap | ca-request) flow=$val ;;
            *) usage_die "--flow must be auto, wrap or ca-request, not '$val'" ;;
            esac
            ;;
        --stations)
            [[ $val =~ ^[1-8]$ ]] || usage_die "--stations must be a whole number from 1 to 8, not '$val'"
            stations=$val
            ;;
        *)
            case $val in sqlite | postgresql) store=$val ;;
            *) usage_die "--store must be sqlite or postgresql, not '$val'" ;;
            esac
            ;;
        esac
        ;;
    --credentials) credentials=1 ;;
    *) usage_die "unknown option '$1'" ;;
    esac
    shift
done
if [ -n "$kind" ]; then
    [ "$service" = 0 ] || usage_die "--service runs on SoftHSM only: give --service or --backend, not both"
    [ "$kind" = softhsm ] || credentials=1 # a token root cannot be trusted there (docs/threat-model.md, 2)
else
    [ "$credentials" = 0 ] || usage_die "--credentials needs --backend"
    [ "$flow" = auto ] || usage_die "--flow needs --backend"
fi
# --stations/--store: the stations' story runs on PostgreSQL only; one
# station on SQLite is the story above.
if [ "${stations:-1}" -gt 1 ] && [ "$store" != postgresql ]; then
    usage_die "--stations $stations needs --store postgresql: on SQLite the allowance is one station's state directory"
fi
multi=0
if [ "$store" = postgresql ]; then
    if [ "$service" = 1 ] || [ -n "$kind" ]; then
        usage_die "--store postgresql runs on SoftHSM in-process: not with --service or --backend"
    fi
    multi=1 stations=${stations:-1}
fi
# The package is as large as the run: the OEM authorises at least what is made
# (on several stations: exactly --parts, what they race for).
units=$((parts > 1000 ? parts : 1000))
[ "$multi" = 0 ] || units=$parts
# What the demo itself needs of tools/debian-packages (the tests need more).
"$here/tools/ensure-packages.sh" build-essential cmake pkg-config libp11-kit-dev p11-kit p11-kit-modules \
    libssl-dev openssl libcmocka-dev libsqlite3-dev softhsm2 opensc procps || exit 1
# and what --backend KIND needs (tests/backends/lib.sh names a missing one too).
case $kind in
tpm2) "$here/tools/ensure-packages.sh" swtpm tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 \
    libtpm2-pkcs11-1 libtpm2-pkcs11-tools dbus || exit 1 ;;
nss) "$here/tools/ensure-packages.sh" libnss3 libnss3-tools || exit 1 ;;
opencryptoki) "$here/tools/ensure-packages.sh" opencryptoki || exit 1 ;;
esac
[ "$multi" = 0 ] || "$here/tools/ensure-packages.sh" postgresql-15 postgresql-client-15 libpq-dev || exit 1

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() {
    printf '\n%s== %s%s\n' "$bold" "$*" "$plain"
    [ -n "$kind" ] || return 0
    step_done
    step_name=$* step_t0=$(date +%s%N)
    [ -z "${work:-}" ] || : >"$work/step.err"
}
die() { printf 'guardian-demo: %s\n' "$*" >&2; exit 1; }

# --backend: each step's time, and which step failed with which CKR code.
step_name="" step_t0=0 timings=()
step_done() {
    [ -n "$step_name" ] || return 0
    timings+=("$(printf '%7.2f s  %s' "$((($(date +%s%N) - step_t0) / 1000000))e-3" "$step_name")")
    step_name=""
}
# step_ckr: the last CKR code the step's commands printed (pkcs11-tool prints
# a vendor code as a number: named from the vendor header).
step_ckr() {
    local c name
    c=$(grep -o -E 'CKR_[A-Z0-9_]+|0x[cC]744[0-9a-fA-F]{4}' "$work/step.err" 2>/dev/null | tail -n 1) || true
    if [[ $c == 0x* ]]; then
        name=$(grep -o -E "define CKR_GUARDIAN_[A-Z0-9_]+ \(CKR_GUARDIAN_BASE \| 0x0*${c:6}UL\)" \
            "$here/include/guardian/guardian-pkcs11.h" 2>/dev/null | awk '{print $2}') || true
        c="${name:-vendor code} ($c)"
    fi
    printf '%s' "${c:-no CKR code: see the messages above}"
}
# capture CMD...: CMD, its stderr also kept in step.err for step_ckr.
capture() { { "$@" 2>&1 1>&3 3>&- | tee -a "$work/step.err" >&2; } 3>&1; }

for tool in cmake cc softhsm2-util pkcs11-tool openssl; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing although its package is installed: is PATH complete? ($PATH)"
done
[ -r "$softhsm" ] || die "SoftHSMv2 module not found at $softhsm (apt-get install softhsm2)"
client_module=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
if [ "$service" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "--service needs root: it makes the service's accounts (and removes them at the end)"
    for tool in p11-kit setpriv useradd; do command -v "$tool" >/dev/null || die "$tool is missing (--service)"; done
    [ -r "$client_module" ] || die "$client_module not found (apt-get install p11-kit-modules)"
fi

# The installed module and tools (GUARDIAN_DEMO_INSTALLED=1), not the build's.
use_installed() {
    module=$(pkg-config --variable=module guardian-pkcs11 2>/dev/null) ||
        die "GUARDIAN_DEMO_INSTALLED: no guardian-pkcs11.pc (pkg-config guardian-pkcs11): is the module installed?"
    [ -f "$module" ] || die "GUARDIAN_DEMO_INSTALLED: guardian-pkcs11.pc names $module, which does not exist"
    ctl_bin=$(command -v guardianctl) || die "GUARDIAN_DEMO_INSTALLED: guardianctl is not on PATH"
    wrap_bin=$(command -v guardian-wrap) || die "GUARDIAN_DEMO_INSTALLED: guardian-wrap is not on PATH"
    setup_bin=$(PATH=$PATH:/usr/sbin:/sbin command -v guardian-service-setup) ||
        die "GUARDIAN_DEMO_INSTALLED: guardian-service-setup is not on PATH"
    echo "Installed files: $module, $ctl_bin, $wrap_bin, $setup_bin"
}
if [ "${GUARDIAN_DEMO_INSTALLED:-0}" = 1 ]; then
    use_installed
elif [ ! -f "$module" ] || [ ! -x "$ctl_bin" ] || [ ! -x "$wrap_bin" ]; then
    step "Building the module and tools ($build)"
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target guardian-pkcs11 guardianctl guardian-wrap >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-demo-XXXXXX")
cleanup() {
    local rc=$?
    if [ -n "$kind" ] && [ "$rc" != 0 ] && [ -n "$step_name" ]; then
        printf 'guardian-demo: FAILED at step "%s": %s\n' "$step_name" "$(step_ckr)" >&2
        step_done
        echo "Timings up to the failure:"
        printf '  %s\n' "${timings[@]}"
    fi
    [ -z "$kind" ] || backend_stop
    [ "$service" = 0 ] || service_down
    [ "$multi" = 0 ] || stations_server_stop
    if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
wrap() { "$wrap_bin" "$@"; }
# The operator's own directory (what guardianctl and pkcs11-tool write), and
# the Guardian certificates the OEM gets from it.
opdir=$work
gpem=$opdir/guardian.pem

# ---- the Guardian service (--service) ------------------------------------------------------

prefix=${GUARDIAN_DEMO_ACCOUNTS:-gdemo}
svc_user=$prefix-svc ops_group=$prefix-ops op_user=$prefix-op
sandbox=$work/root
svc_conf=$sandbox/etc/guardian svc_state=$sandbox/var/lib/guardian svc_tokens=$sandbox/var/lib/guardian-softhsm
svc_socket=$sandbox/run/guardian/pkcs11.sock
setup=("$setup_bin")
svc_opts=(--root "$sandbox" --user "$svc_user" --group "$svc_user" --operators-group "$ops_group"
    --conf-dir "$svc_conf" --state-dir "$svc_state" --token-dir "$svc_tokens" --socket "$svc_socket"
    --token guardian-demo --module "$module" --guardianctl "$ctl_bin")
service_pid="" made_accounts=0 made_op=0

# as_operator CMD...: CMD as the operator's account (its groups: its own and
# the operators'), in its directory, with the client's environment. PINs stay
# in the environment (GUARDIAN_PIN, GUARDIAN_SO_PIN; pkcs11-tool --pin env:…).
as_operator() {
    (cd "$opdir" && setpriv --reuid="$op_user" --regid="$op_user" --init-groups -- \
        env -u GUARDIAN_CONF -u SOFTHSM2_CONF -u GUARDIAN_BACKEND -u GUARDIAN_STATE_DIR HOME="$opdir" \
        P11_KIT_SERVER_ADDRESS="$address" GUARDIAN_MODULE="$client_module" "$@")
}

service_up() {
    step "The Guardian service in a sandbox ($sandbox), made by guardian-service-setup"
    chmod 0755 "$work"
    made_accounts=1 # from here on, service_down removes what the demo made
    if ! getent passwd "$op_user" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "Guardian demo operator" "$op_user"
        made_op=1
    fi
    echo "  the operator's account: $op_user (no PIN of the backend, nothing of the service)"
    mkdir -p "$opdir"
    chown "$op_user:$op_user" "$opdir"
    chmod 0700 "$opdir"
    # The Guardian SO's PIN and alice's secret (the demo makes them up; a
    # person would type them), on the setup's standard input.
    so_secret=$(openssl rand -hex 12) alice_secret=$(openssl rand -hex 12)
    printf '%s\n%s\n' "$so_secret" "$alice_secret" |
        "${setup[@]}" install "${svc_opts[@]}" --operator alice --so-pin-file - --operator-pin-file - \
            --subject /CN=guardian-demo --member "$op_user" 2>&1 | sed 's/^/  /'
    [ "${PIPESTATUS[1]}" = 0 ] || die "guardian-service-setup install failed"
    address=unix:path=$svc_socket
    "${setup[@]}" run "${svc_opts[@]}" >"$work/service.log" 2>&1 &
    service_pid=$!
    for _ in $(seq 100); do
        grep -q '^ready:' "$work/service.log" && break
        kill -0 "$service_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready:' "$work/service.log" || { cat "$work/service.log" >&2; die "the service did not start"; }
    step "The service runs as $svc_user; alice works as $op_user through $client_module"
    ps -o user:16=,pid=,args= --ppid "$service_pid" -p "$service_pid" | sed 's/^/  /'
    ls -l "$svc_socket" | sed 's/^/  /'
    echo "  P11_KIT_SERVER_ADDRESS=$address"
    export GUARDIAN_PIN="alice:$alice_secret" GUARDIAN_SO_PIN="$so_secret" # demo only: they would type them
}

service_down() {
    if [ -n "$service_pid" ]; then
        kill -TERM "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
        service_pid=""
    fi
    [ "$made_accounts" = 1 ] || return 0
    made_accounts=0
    if [ "$keep" = 1 ]; then
        echo "kept the service's accounts and files; remove them with:"
        echo "  ${setup[*]} uninstall ${svc_opts[*]} --purge; userdel $op_user"
    else
        "${setup[@]}" uninstall "${svc_opts[@]}" --purge >/dev/null || echo "guardian-demo: uninstall failed" >&2
        [ "$made_op" = 0 ] || userdel "$op_user" 2>/dev/null || true
    fi
}

# refused_to_operator WHAT CMD...: CMD as the operator must fail; prints its complaint.
refused_to_operator() {
    local what=$1
    shift
    if as_operator "$@" >"$work/op.out" 2>&1; then
        die "the operator could: $what"
    fi
    printf '  %s: %s\n' "$what" "$(grep -v '^guardian\[' "$work/op.out" | grep -m1 -o -E 'Permission denied|CKR_[A-Z_]+|No slots|[Nn]o token[^.]*|[Cc]ould not[^.]*' || head -n 1 "$work/op.out")"
}

# What holds only in service mode: the operator reaches nothing of the service but its socket.
service_boundary() {
    echo "  alice's account $op_user, on the host itself:"
    refused_to_operator "    cat the backend's user PIN ($svc_conf/backend.pin)" cat "$svc_conf/backend.pin"
    refused_to_operator "    cat the backend's SO PIN" cat "$svc_conf/backend-so.pin"
    refused_to_operator "    list the token directory" ls "$svc_tokens/tokens"
    refused_to_operator "    read the state (guardian.db)" cat "$svc_state/guardian.db"
    refused_to_operator "    copy the state, to restore it later" cp -a "$svc_state" "$opdir/state-copy"
    refused_to_operator "    the backend directly with the service's SoftHSM configuration (unreadable)" \
        env SOFTHSM2_CONF="$svc_tokens/softhsm2.conf" pkcs11-tool --module "$softhsm" -L
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$svc_tokens" >"$opdir/softhsm2.conf"
    chown "$op_user" "$opdir/softhsm2.conf"
    refused_to_operator "    the backend directly with a configuration of its own naming the token directory (unreadable)" \
        env SOFTHSM2_CONF="$opdir/softhsm2.conf" pkcs11-tool --module "$softhsm" --token-label guardian-demo -O
}

# ---- another backend (--backend KIND) ------------------------------------------------------

backend_lib=${GUARDIAN_BACKEND_LIB:-$here/tests/backends/lib.sh}
backend_up_done=0
# The backend's PINs: the bench's fixed ones in-process (as softhsm2-util's
# token above), random ones in credentials mode, where only the module reads
# them (from files), nobody types them and no operator process holds them.
backend_start() {
    [ -r "$backend_lib" ] || die "tests/backends/lib.sh not found at $backend_lib (set GUARDIAN_BACKEND_LIB)"
    # shellcheck source=tests/backends/lib.sh
    . "$backend_lib"
    step "The $kind backend, brought up by ${backend_lib#"$here"/} in $work/backend"
    export BACKEND_LABEL=guardian-demo BACKEND_USER_PIN=1234 BACKEND_SO_PIN=12345678
    if [ "$credentials" = 1 ]; then
        BACKEND_USER_PIN=$(openssl rand -hex 4) BACKEND_SO_PIN=$(openssl rand -hex 4) # opencryptoki: 4-8 characters
    fi
    local rc=0
    backend_up "$kind" "$work/backend" >"$work/backend-up.out" 2>&1 || rc=$?
    sed 's/^/  /' "$work/backend-up.out"
    if [ "$rc" = 77 ]; then
        echo "guardian-demo: the $kind backend cannot run on this machine (above)" >&2
        step_name=""
        exit 77
    fi
    [ "$rc" = 0 ] || die "the $kind backend did not come up (its logs: $work/backend/log)"
    backend_up_done=1
    local pids
    pids=$(backend_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # a list of PIDs
        echo "  daemons: $(ps -o comm=,pid= -p "${pids// /,}" | awk '{printf "%s%s %s", n++ ? ", " : "", $1, $2}') (stopped by PID at the end)"
    else
        echo "  daemons: none (the backend runs inside each process that loads it)"
    fi
    mkdir -p "$work/state" "$work/conf"
    chmod 0700 "$work/state" "$work/conf"
    {
        printf 'backend = %s\nstate_dir = %s\nlog_level = error\n' "$BACKEND_MODULE" "$work/state"
        [ -z "$BACKEND_INIT_ARGS" ] || printf 'backend_init_args = %s\n' "$BACKEND_INIT_ARGS"
    } >"$work/guardian.conf"
    if [ "$credentials" = 1 ]; then
        (umask 077 && printf '%s\n' "$BACKEND_USER_PIN" >"$work/conf/backend.pin")
        chmod 0400 "$work/conf/backend.pin"
        printf 'backend_pin_file = %s\n' "$work/conf/backend.pin" >>"$work/guardian.conf"
        # NSS has no SO: no file, and the module says what that costs.  Where
        # a token root cannot be trusted (credentials mode is forced there)
        # the enrolment is the ledger's, by the Guardian SO logged into the
        # backend as its user: no SO file either (mechs/enrol_root.c).
        if [ -n "$BACKEND_SO_PIN" ] && [ "$kind" = softhsm ]; then
            (umask 077 && printf '%s\n' "$BACKEND_SO_PIN" >"$work/conf/backend-so.pin")
            chmod 0400 "$work/conf/backend-so.pin"
            printf 'backend_so_pin_file = %s\n' "$work/conf/backend-so.pin" >>"$work/guardian.conf"
        fi
        # From here on only the module knows them: not in any process's environment.
        unset BACKEND_USER_PIN BACKEND_SO_PIN
    else
        export GUARDIAN_PIN=$BACKEND_USER_PIN GUARDIAN_SO_PIN=$BACKEND_SO_PIN # demo only: an operator types them
        [ -n "$GUARDIAN_SO_PIN" ] || unset GUARDIAN_SO_PIN
    fi
    step "A Guardian configuration naming the $kind backend ($([ "$credentials" = 1 ] && echo "credentials mode" || echo "in-process, the backend's PINs"))"
    sed 's/^/  /' "$work/guardian.conf"
    [ "$credentials" = 0 ] || stat -c '  %A %U %n' "$work/conf" "$work/conf"/*.pin
    export GUARDIAN_CONF="$work/guardian.conf"
    unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR
}

backend_stop() {
    [ "$backend_up_done" = 1 ] || return 0
    backend_up_done=0
    local pids left=""
    pids=$(backend_pids)
    backend_down
    for p in $pids; do
        if kill -0 "$p" 2>/dev/null; then left="$left $p"; fi
    done
    if [ -n "$left" ]; then
        echo "guardian-demo: backend daemons still running:$left" >&2
    elif [ -n "$pids" ]; then
        echo "  the $kind backend is down (PIDs $pids stopped)"
    fi
}

# ---- several stations on one allowance (--stations N --store postgresql) --------------------

pg_lib=${GUARDIAN_PG_LIB:-$here/tests/lib/pg.sh}
pg_up_done=0
# st N CMD...: CMD in station N's environment (its token, its configuration).
st() {
    local n=$1
    shift
    SOFTHSM2_CONF=$work/st$n/softhsm2.conf GUARDIAN_CONF=$work/st$n/guardian.conf "$@"
}
st_ctl() {
    local n=$1
    shift
    st "$n" "$ctl_bin" --module "$module" --token "station-$n" "$@"
}

stations_server_up() {
    [ -r "$pg_lib" ] || die "tests/lib/pg.sh not found at $pg_lib (set GUARDIAN_PG_LIB)"
    # shellcheck source=tests/lib/pg.sh
    . "$pg_lib"
    step "An embedded PostgreSQL 15 server in $work/pg (${pg_lib#"$here"/}): Unix socket only, password login"
    local rc=0
    pg_up "$work" >"$work/pg-up.out" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat "$work/pg-up.out" >&2; die "the PostgreSQL server did not start"; }
    pg_up_done=1
    pg_pid=$(head -1 "$work/pg/data/postmaster.pid")
    echo "  postmaster PID $pg_pid, socket $PG_HOST, port $PG_PORT (no TCP listener), database $PG_DB, role $PG_USER"
    echo "  the role's password: $PG_PASSFILE ($(stat -c %a "$PG_PASSFILE"), never in a configuration file or a log)"
}

stations_server_stop() {
    [ "$pg_up_done" = 1 ] || return 0
    pg_up_done=0
    pg_down || true
    if kill -0 "$pg_pid" 2>/dev/null; then
        echo "guardian-demo: the PostgreSQL server (PID $pg_pid) is still running" >&2
    else
        echo "  the PostgreSQL server is stopped (PID $pg_pid gone)"
    fi
}

# N tokens, N Guardian identities, N configurations on the one server.
stations_up() {
    stations_server_up
    step "$stations SoftHSMv2 tokens, one Guardian each: its own state directory, store = postgresql"
    local n
    for n in $(seq "$stations"); do
        mkdir -p "$work/st$n/tokens" "$work/st$n/state"
        chmod 0700 "$work/st$n/state"
        printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/st$n" \
            >"$work/st$n/softhsm2.conf"
        st "$n" softhsm2-util --init-token --free --label "station-$n" --pin 1234 --so-pin 12345678 >/dev/null
        printf 'backend = %s\nstate_dir = %s\nlog_level = error\nstore = postgresql\nstore_conninfo = %s\nstore_password_file = %s\n' \
            "$softhsm" "$work/st$n/state" "$PG_CONNINFO" "$PG_PASSFILE" >"$work/st$n/guardian.conf"
    done
    echo "  station 1's $work/st1/guardian.conf (the others differ in state_dir only):"
    sed 's/^/    /' "$work/st1/guardian.conf"
    unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_CONF SOFTHSM2_CONF
    export GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678 # demo only: an operator types them

    step "1. $stations Guardian identities (guardianctl init on each station's token)"
    for n in $(seq "$stations"); do
        st_ctl "$n" init --subject "/CN=guardian-station-$n" --out "$work/st$n/guardian.pem" >/dev/null 2>&1 ||
            die "station $n: guardianctl init failed"
        echo "  station $n: $(openssl x509 -in "$work/st$n/guardian.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
    done
    echo "  the schema on the server: version $(pg_psql -c 'SELECT version FROM guardian_schema')"
    gpem=$work/st1/guardian.pem
}

# The rest of the story, after the OEM PKI (step 2).
stations_story() {
    local n gcerts=() pids=() short=() rc out total=0 verified bad=0
    made=() share=() reported=()
    step "3. Each station's Security Officer enrols the OEM root"
    for n in $(seq "$stations"); do
        st_ctl "$n" enroll-oem "$work/acme-root.pem" --oem-id ACME --yes >"$work/st$n/enrol.out" 2>&1 ||
            { cat "$work/st$n/enrol.out" >&2; die "station $n: enroll-oem failed"; }
        echo "  station $n: enrolled"
        gcerts+=(--guardian-cert "$work/st$n/guardian.pem")
    done

    step "4. OEM wraps ONE package for the $stations Guardians (a group package), $units units in all"
    wrap create "${gcerts[@]}" --signer-key "$oem/signer.key" --signer-cert "$oem/signer.pem" \
        --ca-key "$oem/production-ca.key" --ca-cert "$oem/production-ca.pem" --ca-chain "$oem/root.pem" \
        --oem-id ACME --product-id SENSOR-1 --release 1 --units "$units" --not-after +90 \
        --data config="$oem/config.txt" --out "$work/acme-sensor-1-r1.gpk" | sed 's/^/  /'

    step "5. Each station imports it (the first an IMPORT, the others JOIN it; one allowance on the server)"
    for n in $(seq "$stations"); do
        st_ctl "$n" import "$work/acme-sensor-1-r1.gpk" >"$work/st$n/import.out" 2>&1 ||
            { cat "$work/st$n/import.out" >&2; die "station $n: import failed"; }
        echo "  station $n: $(head -1 "$work/st$n/import.out")"
    done
    echo "  a second import by station 1 is refused:"
    st_ctl 1 import "$work/acme-sensor-1-r1.gpk" 2>&1 | grep guardianctl | sed 's/^/    /' || true
    echo "  on the server: $(pg_psql -c "SELECT count(*) FROM package_members") member rows," \
        "$(pg_psql -c "SELECT authorised_units FROM packages") units authorised"

    step "6. Production: $stations stations in parallel, each its share of the $units units, until the allowance is spent"
    mkdir -p "$work/certs"
    for n in $(seq "$stations"); do
        # shares: units / stations each, the first (units % stations) one more
        share[n]=$((units / stations + (n <= units % stations ? 1 : 0)))
        [ "${share[n]}" -gt 0 ] || continue
        st_ctl "$n" provision --product ACME/SENSOR-1 --count "${share[n]}" --threads 2 --prefix "S$n-" --quiet \
            --out "$work/certs/st$n" >"$work/st$n/provision.out" 2>&1 &
        pids[n]=$!
    done
    # A station can find the allowance spent while another still holds a
    # reserved block it will not use (released when that station's run
    # ends): it stops with CKR_GUARDIAN_QUOTA_EXHAUSTED and resumes below.
    short=()
    for n in $(seq "$stations"); do
        [ -n "${pids[n]:-}" ] || { echo "  station $n: no share (fewer units than stations)"; continue; }
        rc=0
        wait "${pids[n]}" || rc=$?
        out=$work/st$n/provision.out
        if [ "$rc" != 0 ] && ! grep -q -E 'QUOTA_EXHAUSTED|units remaining' "$out"; then
            cat "$out" >&2
            die "station $n: provisioning failed (exit $rc) other than by the allowance running out"
        fi
        made[n]=$(find "$work/certs/st$n" -name '*.pem' 2>/dev/null | wc -l)
        if [ "$rc" = 0 ]; then
            echo "  station $n: ${made[n]} of its ${share[n]} certificates"
        else
            echo "  station $n: ${made[n]} of its ${share[n]}, then: $(grep -m1 -o -E 'CKR_GUARDIAN_QUOTA_EXHAUSTED|only [0-9]+ units remaining' "$out")"
            short+=("$n")
        fi
    done
    for n in "${short[@]}"; do
        st_ctl "$n" provision --product ACME/SENSOR-1 --count "${share[n]}" --threads 2 --prefix "S$n-" --quiet \
            --out "$work/certs/st$n" >"$work/st$n/provision.out" 2>&1 ||
            { cat "$work/st$n/provision.out" >&2; die "station $n: the resumed run failed"; }
        made[n]=$(find "$work/certs/st$n" -name '*.pem' | wc -l)
        echo "  station $n resumed (the others' unused reservations released): ${made[n]} of ${share[n]}"
    done
    for n in $(seq "$stations"); do total=$((total + ${made[n]:-0})); done
    echo "  all stations: $total certificates of $units authorised"
    [ "$total" = "$units" ] || die "$total certificates issued, $units authorised"
    st_ctl 1 products | sed 's/^/  /'

    step "7. ONE audit export of the shared trail (station 1), signed by its Guardian"
    st_ctl 1 audit export --out "$work/audit-report.txt" 2>&1 | sed 's/^/  /'
    echo "  $(wc -l <"$work/audit-report.txt") lines; ISSUE records: $(grep -c '^record [0-9]* ISSUE ' "$work/audit-report.txt" || true)," \
        "JOIN records: $(grep -c '^record [0-9]* JOIN ' "$work/audit-report.txt" || true)"

    step "8. OEM side, offline: verify the report"
    rc=0
    wrap verify-report "$work/audit-report.txt" --guardian "$gpem" --ca-chain "$oem/production-ca.pem" \
        --root "$oem/root.pem" >"$work/verify-report.out" 2>&1 || rc=$?
    sed 's/^/  /' "$work/verify-report.out"
    [ "$rc" = 0 ] || die "verify-report failed"
    # Units per Guardian, as the report says them: a member line of the group
    # package (", issued K"), or for one station its "issued by Guardian" line.
    for n in $(seq "$stations"); do
        gd=$(openssl x509 -in "$work/st$n/guardian.pem" -outform DER | sha256sum | cut -c1-64)
        if [ "$stations" = 1 ]; then
            reported[n]=$(grep -o "issued by Guardian: sha256:$gd [0-9]*" "$work/verify-report.out" | awk '{print $NF}')
        else
            reported[n]=$(grep -o "member sha256:$gd [a-z]* (record [0-9]*), issued [0-9]*" "$work/verify-report.out" |
                awk '{print $NF}')
        fi
        [ "${reported[n]:-0}" = "${made[n]:-0}" ] ||
            die "station $n: the report says ${reported[n]:-nothing} units for its Guardian, its files ${made[n]:-0}"
    done

    step "9. openssl verify of every certificate against the OEM root"
    for n in $(seq "$stations"); do
        made[n]=${made[n]:-0} verified=0
        [ "${made[n]}" = 0 ] || verified=$(find "$work/certs/st$n" -name '*.pem' -print0 |
            xargs -0 openssl verify -CAfile "$oem/root.pem" -untrusted "$oem/production-ca.pem" | grep -c ': OK$' || true)
        echo "  station $n: $verified of ${made[n]} certificates: OK"
        [ "$verified" = "${made[n]}" ] || bad=1
    done
    [ "$bad" = 0 ] || die "not every certificate verifies"

    step "Summary"
    echo "  module:    $module (backend $softhsm), state on PostgreSQL 15 (embedded, $work/pg)"
    if [ "$stations" = 1 ]; then
        echo "  stations:  1 Guardian, its token and state directory, its package and allowance on the server"
    else
        echo "  stations:  $stations Guardians, one token and state directory each, one group package, one allowance"
    fi
    echo "  package:   ACME/SENSOR-1 release 1, $units units: imported by each station once"
    for n in $(seq "$stations"); do
        echo "  station $n: ${made[n]} units in the OEM's report (its Guardian's records), = its certificate files"
    done
    echo "  produced:  $total device certificates = $units authorised, all verify up to the OEM root"
    echo "  audit:     one signed report of the shared trail, verified by the OEM; every record names its Guardian"
}

# The Guardian's own credentials (docs/service-mode.md): the Security Officer
# set with C_InitToken through the module (never forwarded: the backend token
# stays), operator alice with C_InitPIN in the SO's session. Secrets in the
# environment only (pkcs11-tool env:VAR), never on a command line.
guardian_credentials() {
    step "The Guardian's own credentials: Security Officer (C_InitToken through the module), operator alice (C_InitPIN)"
    local so_secret alice_secret
    so_secret=$(openssl rand -hex 12) alice_secret=$(openssl rand -hex 12)
    GDEMO_SO=$so_secret p11 --token-label guardian-demo --init-token --label guardian-demo --so-pin env:GDEMO_SO |
        sed 's/^/  /'
    GDEMO_SO=$so_secret GDEMO_OP=alice:$alice_secret p11 --token-label guardian-demo --init-pin --login \
        --login-type so --so-pin env:GDEMO_SO --new-pin env:GDEMO_OP | sed 's/^/  /'
    export GUARDIAN_PIN="alice:$alice_secret" GUARDIAN_SO_PIN="$so_secret" # demo only: they would type them
    echo "  in-process here: the backend's PINs are in $work/conf, readable by $(id -un) only; production"
    echo "  runs the module behind p11-kit server under an account of its own, and the operators hold only"
    echo "  their own credential (docs/service-mode.md; tools/guardian-demo.sh --service)"
}

# What the backend enforces beside the module (docs/backend-protections.md),
# for the backend's page: shown, never a reason to stop (on a backend whose
# status request fails the story may still run).
backend_protections() {
    step "What the $kind backend itself enforces (guardianctl status: the module's probe)"
    local rc=0
    ctl status >"$work/status.txt" 2>&1 || rc=$?
    if grep -q '^What the backend itself enforces' "$work/status.txt"; then
        sed -n '/^What the backend itself enforces/,/^$/{/^What/d;/^$/d;p}' "$work/status.txt"
    else
        echo "  not shown: guardianctl status failed (exit $rc, $(grep -o -E 'CKR_[A-Z0-9_]+' "$work/status.txt" | tail -n 1 || true)); the demo goes on"
    fi
}

# The flow, from what the Guardian states and advertises:
#  1. the id-guardian-transports extension of its certificate A (arc .3.1:
#     the key transports it can import with, measured on its token when A was
#     made; docs/package-format.md): one or more listed → wrap, none → CA
#     request;
#  2. an A without it (made by a module before the extension): the slot's
#     mechanism list, where CKM_GUARDIAN_UNWRAP_PACKAGE is listed only when
#     its self-test passed on the token (mechs/selftest.c). In credentials
#     mode the module lists no vendor mechanism (requests only), so the list
#     is read through the same module in-process, from a configuration
#     without the PIN files (the self-test needs no login; a state directory
#     of its own, which it does not write).
# The CA key is EC P-256 where CKM_ECDSA is listed, RSA-2048 otherwise.
oid_arc=2.25.62758544141009244537205961397770264239
transport_name() {
    case $1 in
    "$oid_arc.2.0") echo "none (no secret travels)" ;;
    "$oid_arc.2.1") echo "ECDH + AES-CBC KDF in the token + AES key wrap (id-guardian-kt-ecdh-aescbc)" ;;
    "$oid_arc.2.2") echo "ECDH + X9.63 KDF + RFC 5649 key wrap" ;;
    "$oid_arc.2.3") echo "RSA-OAEP SHA-256 (id-guardian-kt-rsaoaep-sha256-v1)" ;;
    *) echo "unknown scheme $1" ;;
    esac
}
# cert_transports PEM: the OIDs of A's id-guardian-transports, one a line;
# status 1 when A has no such extension.
cert_transports() {
    local off
    off=$(openssl asn1parse -in "$1" | awk -v oid=":$oid_arc.3.1" '$NF == oid {
        getline; if ($0 ~ /BOOLEAN/) getline; sub(/:.*/, ""); print $1; exit }')
    [ -n "$off" ] || return 1
    openssl asn1parse -in "$1" -strparse "$off" | awk '/OBJECT/ { sub(/^.*OBJECT *:/, ""); print }'
}
choose_flow() {
    step "The flow: what the Guardian states and advertises"
    local unwrap=no ecdsa=no why kinds t mechs_from="the slot's mechanism list through the module"
    if [ "$credentials" = 1 ]; then
        mechs_from="the slot's mechanism list, in-process (credentials mode lists no vendor mechanism)"
        mkdir -p "$work/probe-state"
        chmod 0700 "$work/probe-state"
        grep -v -E '^(backend_pin_file|backend_so_pin_file|state_dir) ' "$GUARDIAN_CONF" >"$work/probe.conf"
        printf 'state_dir = %s\n' "$work/probe-state" >>"$work/probe.conf"
        GUARDIAN_CONF=$work/probe.conf p11 --token-label guardian-demo -M >"$work/mechanisms.txt"
    else
        p11 --token-label guardian-demo -M >"$work/mechanisms.txt"
    fi
    grep -q -E '^ +ECDSA,' "$work/mechanisms.txt" && ecdsa=yes
    ca_key_type=p256
    [ "$ecdsa" = yes ] || ca_key_type=rsa2048
    if kinds=$(cert_transports "$work/guardian-agreement.pem"); then
        echo "  the Guardian certificate's id-guardian-transports:"
        for t in $kinds; do echo "    $(transport_name "$t")"; done
        [ -n "$kinds" ] || echo "    (none)"
        # (any transport but none: a key can be imported)
        [ -z "$kinds" ] || ! grep -q -v -x -F "$oid_arc.2.0" <<<"$kinds" || unwrap=yes
        why="its certificate states"
    else
        echo "  the Guardian certificate has no id-guardian-transports extension: $mechs_from"
        grep -q -i 'mechtype-0xC7440001' "$work/mechanisms.txt" && unwrap=yes
        echo "  unwrap-into-token (CKM_GUARDIAN_UNWRAP_PACKAGE, 0xC7440001) listed: $unwrap"
        echo "  derive-device-cert (CKM_GUARDIAN_DERIVE_DEVICE_CERT, 0xC7440002) listed: $(grep -q -i 'mechtype-0xC7440002' "$work/mechanisms.txt" && echo yes || echo no)"
        why="the slot lists"
    fi
    echo "  CKM_ECDSA listed: $ecdsa"
    if [ "$flow" != auto ]; then
        why="chosen with --flow"
    elif [ "$unwrap" = yes ]; then
        flow=wrap why="$why that the Guardian can unwrap a package's keys inside this token"
    else
        flow=ca-request why="$why that the Guardian cannot unwrap a key into this token: the CA key is made inside it"
    fi
    if [ "$flow" = wrap ]; then
        echo "  => classic wrap: the OEM's production CA key travels, wrapped for this Guardian ($why)"
    else
        echo "  => CA request: the production CA key ($ca_key_type) is made inside the Guardian, no private key travels ($why)"
    fi
}

if [ "$service" = 1 ]; then
    opdir=$work/client
    gpem=$opdir/guardian.pem
    service_up
    p11() { as_operator pkcs11-tool --module "$client_module" "$@"; }
    ctl() { as_operator "$ctl_bin" --token guardian-demo "$@"; }

    step "The token through the service (p11-kit's proxy answers C_GetInfo)"
    p11 --show-info | sed 's/^/  /'
    p11 --list-slots | grep -E 'Slot|token label' | sed 's/^/  /'

    step "1. Guardian identity: made by guardian-service-setup (guardianctl init as alice); the certificates through the service"
    ctl cert --out "$gpem" 2>&1 | sed 's/^/  /'
elif [ -n "$kind" ]; then
    backend_start
    p11() { capture backend_exec pkcs11-tool --module "$module" "$@"; }
    ctl() { capture backend_exec "$ctl_bin" --module "$module" --token guardian-demo "$@"; }
    wrap() { capture "$wrap_bin" "$@"; }
    [ "$credentials" = 0 ] || guardian_credentials

    step "The module (C_GetInfo) and the token, through the Guardian"
    p11 --show-info | sed 's/^/  /'
    p11 --list-slots | grep -E 'Slot|token label' | sed 's/^/  /'
    backend_protections

    step "1. Guardian identity: two key pairs inside the token (agreement: derive only; signing: sign only)"
    ctl init --subject /CN=guardian-demo --out "$gpem" 2>&1 | sed 's/^/  /'
elif [ "$multi" = 1 ]; then
    stations_up
else

step "A fresh SoftHSMv2 token in $work"
mkdir -p "$work/tokens" "$work/state"
cat >"$work/softhsm2.conf" <<EOF
directories.tokendir = $work/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label guardian-demo --pin 1234 --so-pin 12345678 | sed 's/^/  /'

step "A Guardian configuration naming SoftHSM as backend"
cat >"$work/guardian.conf" <<EOF
backend = $softhsm
state_dir = $work/state
log_level = error
EOF
sed 's/^/  /' "$work/guardian.conf"
export GUARDIAN_CONF="$work/guardian.conf"
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR

p11() { pkcs11-tool --module "$module" "$@"; }
ctl() { "$ctl_bin" --module "$module" --token guardian-demo "$@"; }
export GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678 # demo only: an operator types them

step "The module (C_GetInfo) and the token, through the Guardian"
p11 --show-info | sed 's/^/  /'
p11 --list-slots | grep -E 'Slot|token label' | sed 's/^/  /'

step "1. Guardian identity: two key pairs inside the token (agreement: derive only; signing: sign only)"
ctl init --subject /CN=guardian-demo --out "$gpem" 2>&1 | sed 's/^/  /'
fi
awk '/BEGIN CERT/ { n++ } n == 1' "$gpem" >"$work/guardian-agreement.pem"
awk '/BEGIN CERT/ { n++ } n == 2' "$gpem" >"$work/guardian-signing.pem"
echo "  guardian.pem: the Guardian certificate (what OEMs wrap for), then its signing certificate"
for c in agreement signing; do
    openssl x509 -in "$work/guardian-$c.pem" -noout -subject -issuer -fingerprint -sha256 | sed 's/^/    /'
done
openssl verify -CAfile "$work/guardian-signing.pem" "$work/guardian-agreement.pem" | sed 's/^/  /'
[ -z "$kind" ] || choose_flow

if [ "$flow" = ca-request ]; then
    step "2. OEM side (OpenSSL only): root, package signer (the production CA key is the Guardian's: step 4)"
else
    step "2. OEM side (OpenSSL only): root, package signer, production CA"
fi
oem="$work/oem"
mkdir -p "$oem"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$oem/root.key"
openssl req -new -x509 -key "$oem/root.key" -subj "/O=ACME/CN=ACME Root CA" -days 3650 -out "$oem/root.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
issue() { # NAME SUBJECT EXTENSIONS [rsa2048]
    if [ "${4:-}" = rsa2048 ]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$oem/$1.key" 2>/dev/null
    else
        key "$oem/$1.key"
    fi
    openssl req -new -key "$oem/$1.key" -subj "$2" -out "$oem/$1.csr"
    openssl x509 -req -in "$oem/$1.csr" -CA "$oem/root.pem" -CAkey "$oem/root.key" -days 730 \
        -out "$oem/$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
}
issue signer "/O=ACME/CN=ACME Package Signer" "keyUsage=critical,digitalSignature"
echo "telemetry_interval=60" >"$oem/config.txt"
if [ "$flow" = ca-request ]; then
    echo "  made $oem/{root,signer}.pem"
else
    # The OEM's CA key of the type the token can sign with (an EC key
    # cannot enter a token without EC: opencryptoki).
    issue production-ca "/O=ACME/CN=ACME Production CA 1" "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign" "${ca_key_type:-p256}"
    echo "  made $oem/{root,signer,production-ca}.pem (production CA key: ${ca_key_type:-p256})"
fi
chmod 0700 "$oem" # the OEM's keys stay the OEM's
cp "$oem/root.pem" "$work/acme-root.pem" # what the OEM gives the centre, with the package
if [ "$multi" = 1 ]; then
    stations_story
    exit 0
fi

step "3. Security Officer enrols the OEM root (fingerprint checked out of band)"
ctl enroll-oem "$work/acme-root.pem" --oem-id ACME --yes 2>&1 | sed 's/^/  /'

if [ "$flow" = ca-request ]; then
    step "4. The production CA key made inside the Guardian (guardianctl ca-request), certified by the OEM (guardian-wrap certify-ca), and the package (no key travels)"
    ctl ca-request --product ACME/SENSOR-1 --subject "/O=ACME/CN=ACME Production CA 1" --key-type "$ca_key_type" \
        --out "$work/acme-sensor-1-ca.csr" 2>&1 | sed 's/^/  /'
    cp "$work/acme-sensor-1-ca.csr" "$oem/" # what the centre sends the OEM
    wrap certify-ca --guardian-cert "$gpem" --oem-id ACME --product-id SENSOR-1 --ca-key "$oem/root.key" \
        --ca-cert "$oem/root.pem" --csr "$oem/acme-sensor-1-ca.csr" --days 730 --out "$oem/production-ca.pem" |
        sed 's/^/  /'
    wrap create --guardian-cert "$gpem" --signer-key "$oem/signer.key" --signer-cert "$oem/signer.pem" \
        --ca-request "$oem/acme-sensor-1-ca.csr" --ca-cert "$oem/production-ca.pem" --ca-chain "$oem/root.pem" \
        --oem-id ACME --product-id SENSOR-1 --release 1 --units "$units" --not-after +90 \
        --data config="$oem/config.txt" --out "$work/acme-sensor-1-r1.gpk" | sed 's/^/  /'
else
    step "4. OEM wraps its secrets for this one Guardian"
    wrap create --guardian-cert "$gpem" --signer-key "$oem/signer.key" --signer-cert "$oem/signer.pem" \
        --ca-key "$oem/production-ca.key" --ca-cert "$oem/production-ca.pem" --ca-chain "$oem/root.pem" \
        --oem-id ACME --product-id SENSOR-1 --release 1 --units "$units" --not-after +90 \
        --data config="$oem/config.txt" --out "$work/acme-sensor-1-r1.gpk" | sed 's/^/  /'
fi
wrap inspect "$work/acme-sensor-1-r1.gpk" --oem-root "$oem/root.pem" --guardian-cert "$gpem" |
    sed 's/^/  /'
openssl cms -verify -inform DER -in "$work/acme-sensor-1-r1.gpk" -CAfile "$oem/root.pem" -binary \
    -out /dev/null 2>&1 | sed 's/^/  openssl cms: /'

if [ "$service" = 1 ]; then
    step "5. Import into the Guardian: the import request through the service, unwrapped inside the HSM"
elif [ "$flow" = ca-request ]; then
    step "5. Import into the Guardian: the package names the CA key made in step 4 (nothing to unwrap)"
elif [ "$credentials" = 1 ]; then
    step "5. Import into the Guardian: the import request (credentials mode: no vendor mechanism), unwrapped inside the HSM"
else
    step "5. Import into the Guardian: C_UnwrapKey, unwrapped inside the HSM"
fi
ctl import "$work/acme-sensor-1-r1.gpk" | tee "$work/import.txt" | sed 's/^/  /'
echo "  a replay is refused:"
ctl import "$work/acme-sensor-1-r1.gpk" 2>&1 | grep guardianctl | sed 's/^/    /' || true
ctl products | sed 's/^/  /'
p11 --token-label guardian-demo --login --pin env:GUARDIAN_PIN --list-objects --type privkey 2>/dev/null |
    grep -E 'Private Key|label|Access' | sed 's/^/  /'

[ "$service" = 1 ] || cp -a "$work/state" "$work/state-backup" # a copy an operator might restore later

if [ "$service" = 1 ]; then
    step "6. Production: $parts parts, one certificate each (a device-certificate request each, through the service)"
else
    step "6. Production: $parts parts, one certificate each (C_DeriveKey through the module)"
fi
ctl provision --product ACME/SENSOR-1 --count "$parts" --threads 2 --out "$opdir/certs" 2>&1 | sed 's/^/  /'
ctl products | sed 's/^/  /'
echo "  one of them:"
openssl x509 -in "$opdir/certs/SN-000001.pem" -noout -subject -issuer -serial -dates | sed 's/^/    /'

if [ "$service" = 1 ]; then
    step "6b. The boundary: what alice, an operator of the service, cannot do"
else
    step "6b. The boundary: what an operator holding the user PIN cannot do through the module"
fi
pkgid=$(wrap inspect "$work/acme-sensor-1-r1.gpk" 2>/dev/null | awk '/^package id/ {print $3}')
openssl rand 32 >"$work/h.bin"
chmod 0644 "$work/h.bin"
# (the mechanism for the key's type: EC everywhere but on a token without EC)
sig_mech() { if openssl x509 -in "$1" -noout -text | grep -q 'rsaEncryption'; then echo RSA-PKCS; else echo ECDSA; fi; }
if p11 --token-label guardian-demo --login --pin env:GUARDIAN_PIN --sign -m "$(sig_mech "$oem/production-ca.pem")" --id "$pkgid" -i "$work/h.bin" \
    -o "$opdir/forged.sig" >"$work/sign.out" 2>&1; then
    die "a standard C_Sign with the production CA key was allowed"
fi
echo "  pkcs11-tool --sign with the production CA key: $(grep -o 'CKR_[A-Z_]*' "$work/sign.out" | head -1)"
if p11 --token-label guardian-demo --login --pin env:GUARDIAN_PIN --sign -m "$(sig_mech "$work/guardian-signing.pem")" --id "$(printf guardian-signing |
    od -An -tx1 | tr -d ' \n')" -i "$work/h.bin" -o "$opdir/forged.sig" >"$work/sign.out" 2>&1; then
    die "a standard C_Sign with the Guardian signing key was allowed"
fi
echo "  pkcs11-tool --sign with the Guardian signing key (a forged report): $(grep -o 'CKR_[A-Z_]*' "$work/sign.out" | head -1)"
if [ "$service" = 1 ]; then
    service_boundary
else
    sed "s|^state_dir = .*|state_dir = $work/state-backup|" "$GUARDIAN_CONF" >"$work/backup.conf"
    if GUARDIAN_CONF=$work/backup.conf ctl provision --product ACME/SENSOR-1 --count 1 --out "$work/again" \
        >"$work/restore.out" 2>&1; then
        die "production from a restored copy of the state was allowed"
    fi
    echo "  production from the state copied before the run (a restored backup):"
    grep -m1 -E 'older than|STATE_ROLLBACK' "$work/restore.out" | sed 's/^/    /'
fi

step "7. Audit export, signed by the Guardian's signing key"
ctl audit export --out "$opdir/audit-report.txt" 2>&1 | sed 's/^/  /'
[ "$opdir" = "$work" ] || cp "$opdir/audit-report.txt" "$work/audit-report.txt" # sent to the OEM
echo "  $(wc -l <"$work/audit-report.txt") lines, $(wc -c <"$work/audit-report.txt") bytes"

step "8. OEM side, offline: verify the report against the Guardian certificate and the production CA"
wrap verify-report "$work/audit-report.txt" --guardian "$gpem" \
    --ca-chain "$oem/production-ca.pem" --root "$oem/root.pem" 2>&1 | sed 's/^/  /'
echo "  a copy whose import record claims $((units * 9)) authorised units instead of $units is rejected:"
# (the first IMPORT record, whatever its number: credential records may come first)
sed "0,/^record [0-9]* IMPORT /{/^record [0-9]* IMPORT /s/ $units / $((units * 9)) /}" "$work/audit-report.txt" \
    >"$work/audit-altered.txt"
if wrap verify-report "$work/audit-altered.txt" --guardian "$gpem" \
    --ca-chain "$oem/production-ca.pem" --root "$oem/root.pem" >"$work/altered.out" 2>&1; then
    die "an altered report was accepted"
fi
grep -E '^(problem|FAILED)' "$work/altered.out" | sed 's/^/    /'

step "9. openssl verify of every certificate against the OEM root"
verified=$(cd "$opdir/certs" && find . -name '*.pem' -print0 | xargs -0 openssl verify -CAfile "$oem/root.pem" \
    -untrusted "$oem/production-ca.pem" | grep -c ': OK$' || true)
echo "  $verified of $parts certificates: OK"
[ "$verified" = "$parts" ] || die "only $verified of $parts certificates verify"

step "Summary"
if [ "$service" = 1 ]; then
    echo "  service:   $module inside p11-kit server as $svc_user (backend $softhsm); clients as $op_user through $client_module"
elif [ -n "$kind" ]; then
    echo "  module:    $module (backend $kind: $BACKEND_MODULE)"
    if [ "$credentials" = 1 ]; then
        echo "  login:     credentials mode: the Guardian's SO and operator alice; the backend's PINs read by the module only"
    else
        echo "  login:     in-process: the backend's own PINs"
    fi
    echo "  flow:      $flow"
else
    echo "  module:    $module (backend $softhsm)"
fi
echo "  Guardian:  $(openssl x509 -in "$gpem" -noout -fingerprint -sha256 | cut -d= -f2) (signing: $(openssl x509 -in "$work/guardian-signing.pem" -noout -fingerprint -sha256 | cut -d= -f2))"
if [ "$flow" = ca-request ]; then
    echo "  package:   ACME/SENSOR-1 release 1, $units units, its CA key made in the Guardian: imported, replay refused"
else
    echo "  package:   ACME/SENSOR-1 release 1, $units units: imported, replay refused"
fi
echo "  produced:  $parts device certificates, all verify up to the OEM root"
echo "  audit:     signed report verified by the OEM; an altered copy rejected"
if [ "$service" = 1 ]; then
    echo "  boundary:  the CA key and the Guardian key refused through the service; the operator reads no backend PIN,"
    echo "             no token file, no state, and cannot open the backend token"
else
    echo "  boundary:  the CA key and the Guardian key refused to standard calls; a restored state refused"
fi
if [ -n "$kind" ]; then
    step_done
    step "Timings (wall clock, this machine)"
    printf '  %s\n' "${timings[@]}"
    step_name=""
fi
