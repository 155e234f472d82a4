#!/usr/bin/env bash
# test_install.sh BUILD_DIR — `cmake --install` of a built tree
# (docs/installation.md), as any account, into temporary directories only:
#
#  1. --prefix DIR: every file of the install manifest is under DIR; the
#     files that name paths name DIR's (guardian.module's `module:` is the
#     installed .so, the .pc file's module and includedir, guardian.conf's
#     state_dir, the unit's and guardian-service-setup's paths), never the
#     configured prefix's (but for the module's compiled-in default
#     configuration path, which guardian.conf's comment states); the state
#     directory is made 0700 and the installer's; the installed module runs
#     on it (guardianctl init, GUARDIAN_CONF = the installed guardian.conf);
#     pkg-config finds the .pc (Requires: p11-kit-1) and docs/examples' C
#     example compiles against the installed header with its flags alone;
#     installing again keeps an existing state directory's mode;
#  2. DESTDIR: nothing lands outside DESTDIR + the configured prefix (and
#     /etc, /var for the prefix /usr), and `module:` names the path the .so
#     has once DESTDIR is taken away;
#  3. --prefix /usr under a DESTDIR, from the same build: GNUInstallDirs'
#     special case (guardian.conf in /etc, the state in /var/lib), and the
#     warning that the compiled-in paths are the configured prefix's.
set -uo pipefail
umask 022
B=$(realpath "${1:?build directory}")
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-install-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
section() { printf '\n# %s\n' "$*"; }
configured=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$B/CMakeCache.txt")
me=$(id -u)

# value FILE KEY: "KEY = value" or "KEY: value" of FILE (not in a comment).
value() { sed -n -E "s/^$2 *[:=] *//p" "$1" | head -1; }
# under DIR PATH: is PATH in DIR?
under() { case $2 in "$1"/*) return 0 ;; *) return 1 ;; esac; }
# mode_owner PATH: "0700 1000"
mode_owner() { stat -c '%04a %u' "$1"; }

# ---- 1. --prefix -------------------------------------------------------------------------

section "1. cmake --install --prefix $work/x (configured for $configured)"
X=$work/x
expect "cmake --install --prefix" 0 "Installing: $X/" -- cmake --install "$B" --prefix "$X"
bad=$(grep -v "^$X/" "$B/install_manifest.txt" || true)
if [ -s "$B/install_manifest.txt" ] && [ -z "$bad" ]; then
    ok "every file of the install manifest is under $X ($(wc -l <"$B/install_manifest.txt") files)"
else
    shown_ko "files of the install manifest outside $X" "$bad"
fi
for f in guardian.module guardian-pkcs11.pc guardian.conf guardian-pkcs11.service guardian-service-setup \
    guardian-pkcs11.so guardianctl guardian-wrap guardian-pkcs11.h; do
    n=$(grep -c "/$f\$" "$B/install_manifest.txt")
    [ "$n" = 1 ] && ok "installed: $(grep "/$f\$" "$B/install_manifest.txt")" || ko "$f installed once (manifest: $n)"
done
modfile=$(grep '/guardian.module$' "$B/install_manifest.txt")
pc=$(grep '/guardian-pkcs11.pc$' "$B/install_manifest.txt")
conf=$(grep '/guardian.conf$' "$B/install_manifest.txt")
so=$(grep '/guardian-pkcs11.so$' "$B/install_manifest.txt")
ctl=$(grep '/guardianctl$' "$B/install_manifest.txt")
unit=$(grep '/guardian-pkcs11.service$' "$B/install_manifest.txt")
setup=$(grep '/guardian-service-setup$' "$B/install_manifest.txt")
[ "$modfile" = "$X/share/p11-kit/modules/guardian.module" ] &&
    ok "guardian.module in \${prefix}/share/p11-kit/modules" || ko "guardian.module at $modfile"
[ "$(value "$modfile" module)" = "$so" ] && ok "guardian.module's module: is the installed $so" ||
    ko "guardian.module's module: is '$(value "$modfile" module)', not $so"
state=$(value "$conf" state_dir)
if under "$X" "$state" && [ -d "$state" ] && [ "$(mode_owner "$state")" = "0700 $me" ]; then
    ok "guardian.conf's state_dir $state: made 0700, uid $me"
else
    ko "guardian.conf's state_dir '$state' under $X, a directory 0700 of uid $me ($(mode_owner "$state" 2>&1))"
fi
[ "$(value "$unit" ExecStart | grep -o -- "--provider [^ ]*")" = "--provider $so" ] &&
    ok "the unit's ExecStart runs the installed module" || ko "the unit's ExecStart: $(value "$unit" ExecStart)"
grep -qx "Environment=GUARDIAN_CONF=$conf" "$unit" && ok "the unit's GUARDIAN_CONF is the installed guardian.conf" ||
    ko "the unit's GUARDIAN_CONF: $(grep GUARDIAN_CONF "$unit")"
grep -q "^module=$so " "$setup" && grep -q " guardianctl=$ctl\$" "$setup" &&
    ok "guardian-service-setup's defaults: the installed module and guardianctl" ||
    ko "guardian-service-setup's defaults: $(grep '^module=' "$setup")"
if [ "$configured" != "$X" ]; then
    # Outside comments, no installed text file names the configured prefix.
    leaks=$(grep -n -v '^ *#' "$modfile" "$pc" "$conf" "$unit" | grep -F "$configured/" || true)
    [ -z "$leaks" ] && ok "no installed file names the configured prefix $configured" ||
        shown_ko "installed files name the configured prefix $configured" "$leaks"
fi

# pkg-config and a program built against the installed header.
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
expect "pkg-config --print-requires: p11-kit-1" 0 '^p11-kit-1$' -- pkg-config --print-requires guardian-pkcs11
expect "pkg-config --variable=module: the installed module" 0 "^$so\$" -- \
    pkg-config --variable=module guardian-pkcs11
flags=$(pkg-config --cflags --libs guardian-pkcs11)
case " $flags " in
*" -I$X/include "*) case " $flags " in
    *" -I/usr/include/p11-kit-1 "*) ok "pkg-config --cflags --libs: the installed include directory and p11-kit's ($flags)" ;;
    *) ko "pkg-config --cflags --libs guardian-pkcs11 lacks p11-kit's include directory: $flags" ;;
    esac ;;
*) ko "pkg-config --cflags --libs guardian-pkcs11 lacks $X/include: $flags" ;;
esac
# shellcheck disable=SC2086 # the flags are words
expect "docs/examples/c/issue_cert.c compiles with pkg-config's flags alone" 0 "" -- \
    cc -std=c11 -Wall -Werror -o issue_cert "$SRC/docs/examples/c/issue_cert.c" $flags
unset PKG_CONFIG_PATH

# The installed module on the installed configuration and state directory.
softhsm_token "$work" inst
export GUARDIAN_CONF=$conf
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR
expect "installed guardianctl init with the installed module and guardian.conf" 0 "" -- \
    env GUARDIAN_PIN=1234 "$ctl" --module "$so" --token inst init --out guardian.pem
[ -f "$state/guardian.db" ] && [ "$(mode_owner "$state")" = "0700 $me" ] &&
    ok "the module opened its store in the installed state directory (guardian.db, still 0700)" ||
    ko "no guardian.db in $state ($(ls -la "$state" 2>&1 | tr '\n' ' '))"
unset GUARDIAN_CONF
chmod 0750 "$state"
expect "installing again keeps an existing state directory" 0 "Kept: $state" -- \
    cmake --install "$B" --prefix "$X"
[ "$(mode_owner "$state")" = "0750 $me" ] && [ -f "$state/guardian.db" ] &&
    ok "... with its mode (0750) and its store" || ko "the state directory became $(mode_owner "$state")"

# ---- 2. DESTDIR --------------------------------------------------------------------------

section "2. DESTDIR=$work/d cmake --install (prefix $configured)"
D=$work/d
expect "DESTDIR install" 0 "Installing: $D$configured/" -- env DESTDIR="$D" cmake --install "$B"
roots=("$D$configured")
case $configured in /usr | /usr/ | /) roots+=("$D/etc" "$D/var") ;; /opt/*) roots+=("$D/etc/opt" "$D/var/opt") ;; esac
outside=$(find "$D" -mindepth 1 \( -type f -o -type l -o -type d -empty \) | while read -r p; do
    in=0
    for r in "${roots[@]}"; do under "$r" "$p" && in=1; done
    [ "$in" = 1 ] || echo "$p"
done)
[ -z "$outside" ] && ok "nothing outside ${roots[*]} ($(find "$D" -type f | wc -l) files)" ||
    shown_ko "files outside ${roots[*]}" "$outside"
dmod=$(find "$D" -name guardian.module)
dso=$(value "$dmod" module)
[ "${dso#"$configured"/}" != "$dso" ] && [ -f "$D$dso" ] &&
    ok "guardian.module's module: $dso is where the .so lands once DESTDIR is removed" ||
    ko "guardian.module's module: '$dso' (DESTDIR $D)"

# ---- 3. --prefix /usr under DESTDIR ------------------------------------------------------

section "3. DESTDIR=$work/u cmake --install --prefix /usr (GNUInstallDirs' /usr -> /etc, /var)"
U=$work/u
want_warning=""
[ "$configured" = /usr ] || want_warning="configured for $configured"
expect "DESTDIR install with --prefix /usr" 0 "$want_warning" -- env DESTDIR="$U" cmake --install "$B" --prefix /usr
[ -f "$U/etc/guardian/guardian.conf" ] && [ ! -e "$U/usr/etc" ] && ok "guardian.conf in /etc, not /usr/etc" ||
    ko "guardian.conf: $(find "$U" -name guardian.conf)"
[ "$(value "$U/etc/guardian/guardian.conf" state_dir)" = /var/lib/guardian ] &&
    [ "$(mode_owner "$U/var/lib/guardian")" = "0700 $me" ] && ok "state_dir /var/lib/guardian, made 0700" ||
    ko "state_dir $(value "$U/etc/guardian/guardian.conf" state_dir), $(mode_owner "$U/var/lib/guardian" 2>&1)"
umod=$U/usr/share/p11-kit/modules/guardian.module
[ -f "$umod" ] && [ -f "$U$(value "$umod" module)" ] && under /usr "$(value "$umod" module)" &&
    ok "guardian.module in /usr/share/p11-kit/modules (p11-kit's on Debian), module: $(value "$umod" module)" ||
    ko "guardian.module for /usr: $(cat "$umod" 2>&1)"

finish
