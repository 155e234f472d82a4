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
# Usage: tools/guardian-demo.sh [--keep] [--parts N] [--service] [--help]
#   --keep       leave the temporary directory (and say where it is)
#   --parts N    produce N parts (1..1000000, default 1000): the package
#                authorises exactly max(N, 1000) units
#   --service    the production way, through the Guardian service (root)
# GUARDIAN_DEMO_INSTALLED=1: run the installed module and tools (a .deb,
# `cmake --install`) instead of a build tree: guardianctl, guardian-wrap and
# guardian-service-setup from PATH, the module named by guardian-pkcs11.pc.
# Missing Debian packages (tools/debian-packages) are installed first when run
# as root; otherwise the command to install them is printed and nothing runs.
# Exit status: 0 the whole story passed; 1 a step failed; 2 usage error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${GUARDIAN_BUILD_DIR:-$here/build}"
module="$build/guardian-pkcs11.so"
ctl_bin="$build/tools/guardianctl" wrap_bin="$build/tools/guardian-wrap" setup_bin="$build/tools/guardian-service-setup"
softhsm="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
keep=0 parts=1000 service=0
usage() { echo "usage: $0 [--keep] [--parts N] [--service] [--help]  (--help for details)"; }
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
    *) usage_die "unknown option '$1'" ;;
    esac
    shift
done
# The package is as large as the run: the OEM authorises at least what is made.
units=$((parts > 1000 ? parts : 1000))
# What the demo itself needs of tools/debian-packages (the tests need more).
"$here/tools/ensure-packages.sh" build-essential cmake pkg-config libp11-kit-dev p11-kit p11-kit-modules \
    libssl-dev openssl libcmocka-dev libsqlite3-dev softhsm2 opensc procps || exit 1

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'guardian-demo: %s\n' "$*" >&2; exit 1; }

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
    [ "$service" = 0 ] || service_down
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

step "2. OEM side (OpenSSL only): root, package signer, production CA"
oem="$work/oem"
mkdir -p "$oem"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$oem/root.key"
openssl req -new -x509 -key "$oem/root.key" -subj "/O=ACME/CN=ACME Root CA" -days 3650 -out "$oem/root.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
issue() { # NAME SUBJECT EXTENSIONS
    key "$oem/$1.key"
    openssl req -new -key "$oem/$1.key" -subj "$2" -out "$oem/$1.csr"
    openssl x509 -req -in "$oem/$1.csr" -CA "$oem/root.pem" -CAkey "$oem/root.key" -days 730 \
        -out "$oem/$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
}
issue signer "/O=ACME/CN=ACME Package Signer" "keyUsage=critical,digitalSignature"
issue production-ca "/O=ACME/CN=ACME Production CA 1" "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign"
echo "telemetry_interval=60" >"$oem/config.txt"
echo "  made $oem/{root,signer,production-ca}.pem"
chmod 0700 "$oem" # the OEM's keys stay the OEM's
cp "$oem/root.pem" "$work/acme-root.pem" # what the OEM gives the centre, with the package

step "3. Security Officer enrols the OEM root (fingerprint checked out of band)"
ctl enroll-oem "$work/acme-root.pem" --oem-id ACME --yes 2>&1 | sed 's/^/  /'

step "4. OEM wraps its secrets for this one Guardian"
wrap create --guardian-cert "$gpem" --signer-key "$oem/signer.key" --signer-cert "$oem/signer.pem" \
    --ca-key "$oem/production-ca.key" --ca-cert "$oem/production-ca.pem" --ca-chain "$oem/root.pem" \
    --oem-id ACME --product-id SENSOR-1 --release 1 --units "$units" --not-after +90 \
    --data config="$oem/config.txt" --out "$work/acme-sensor-1-r1.gpk" | sed 's/^/  /'
wrap inspect "$work/acme-sensor-1-r1.gpk" --oem-root "$oem/root.pem" --guardian-cert "$gpem" |
    sed 's/^/  /'
openssl cms -verify -inform DER -in "$work/acme-sensor-1-r1.gpk" -CAfile "$oem/root.pem" -binary \
    -out /dev/null 2>&1 | sed 's/^/  openssl cms: /'

if [ "$service" = 1 ]; then
    step "5. Import into the Guardian: the import request through the service, unwrapped inside the HSM"
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
if p11 --token-label guardian-demo --login --pin env:GUARDIAN_PIN --sign -m ECDSA --id "$pkgid" -i "$work/h.bin" \
    -o "$opdir/forged.sig" >"$work/sign.out" 2>&1; then
    die "a standard C_Sign with the production CA key was allowed"
fi
echo "  pkcs11-tool --sign with the production CA key: $(grep -o 'CKR_[A-Z_]*' "$work/sign.out" | head -1)"
if p11 --token-label guardian-demo --login --pin env:GUARDIAN_PIN --sign -m ECDSA --id "$(printf guardian-signing |
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
else
    echo "  module:    $module (backend $softhsm)"
fi
echo "  Guardian:  $(openssl x509 -in "$gpem" -noout -fingerprint -sha256 | cut -d= -f2) (signing: $(openssl x509 -in "$work/guardian-signing.pem" -noout -fingerprint -sha256 | cut -d= -f2))"
echo "  package:   ACME/SENSOR-1 release 1, $units units: imported, replay refused"
echo "  produced:  $parts device certificates, all verify up to the OEM root"
echo "  audit:     signed report verified by the OEM; an altered copy rejected"
if [ "$service" = 1 ]; then
    echo "  boundary:  the CA key and the Guardian key refused through the service; the operator reads no backend PIN,"
    echo "             no token file, no state, and cannot open the backend token"
else
    echo "  boundary:  the CA key and the Guardian key refused to standard calls; a restored state refused"
fi
