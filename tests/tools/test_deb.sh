#!/usr/bin/env bash
# test_deb.sh — the Debian package (docs/installation.md), on this machine:
#
#  1. a build of this source tree configured for /usr (module and tools
#     only, in a temporary directory) and `cpack -G DEB`: the package's name,
#     version (the project's), Depends (dpkg-shlibdeps), Recommends, its
#     conffile, and its files (nothing under /usr/local; the state directory
#     0700 root);
#  2. dpkg -i: the installed files; the state directory as the module wants
#     it; `p11-kit list-modules` lists the Guardian module from the installed
#     guardian.module and loads it; pkg-config finds the installed .pc and
#     docs/examples' C example compiles against the installed header;
#  3. tools/guardian-demo.sh on the installed module and tools
#     (GUARDIAN_DEMO_INSTALLED=1), end to end;
#  4. dpkg -r leaves only the conffile, dpkg --purge nothing at all, and
#     p11-kit no longer lists the module.
# It installs a package, so it needs root (otherwise skipped, exit 77); it
# refuses to run where guardian-pkcs11 is installed already or a Guardian's
# /etc/guardian or /var/lib/guardian exists (not its to replace or remove).
# Whatever fails, the EXIT trap purges the package it installed.
set -uo pipefail
umask 022
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
PKG=guardian-pkcs11
section() { printf '\n# %s\n' "$*"; }
skip() {
    echo "SKIP test_deb.sh: $*"
    exit 77
}

[ "$(id -u)" = 0 ] || skip "installs a Debian package: run as root (CI does, on a throwaway machine)"
[ "${GUARDIAN_TEST_SANITIZED:-OFF}" = OFF ] ||
    skip "this is the sanitizer build; the package is built from a build of its own, which the main build's run tests"
for tool in cmake cpack dpkg dpkg-deb dpkg-shlibdeps p11-kit pkg-config cc; do
    command -v "$tool" >/dev/null || {
        echo "FAIL test_deb.sh: $tool is missing (tools/debian-packages: dpkg-dev, p11-kit, pkg-config)"
        exit 1
    }
done
if dpkg-query -W -f '${Status}' "$PKG" 2>/dev/null | grep -q 'installed'; then
    echo "FAIL test_deb.sh: $PKG is installed on this machine already: this test installs and purges it; dpkg --purge $PKG first"
    exit 1
fi
for p in /etc/guardian /var/lib/guardian; do
    if [ -e "$p" ]; then
        echo "FAIL test_deb.sh: $p exists (a Guardian's configuration or state?): the package would take it over and purge it; move it away first"
        exit 1
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-deb-test.XXXXXX")
installed=0
cleanup() {
    if [ "$installed" = 1 ] && dpkg-query -W "$PKG" >/dev/null 2>&1; then
        dpkg --purge "$PKG" >/dev/null 2>&1 || echo "test_deb.sh: dpkg --purge $PKG failed: remove it by hand" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work" || exit 1
version=$(sed -n -E 's/^project\(guardian-pkcs11 VERSION ([0-9.]+).*/\1/p' "$SRC/CMakeLists.txt")

# ---- 1. the package ------------------------------------------------------------------------

section "1. cmake -DCMAKE_INSTALL_PREFIX=/usr, build, cpack -G DEB (version $version)"
if ! cmake -S "$SRC" -B build -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF \
    -DGUARDIAN_EXAMPLES=OFF >configure.log 2>&1 || ! cmake --build build -j2 >build.log 2>&1; then
    shown_ko "configure and build for /usr" "$(tail -20 configure.log build.log)"
    finish
    exit 1
fi
expect "cpack -G DEB" 0 "package: .*/${PKG}_${version}_[a-z0-9]+\.deb generated" -- \
    sh -c 'cd build && cpack -G DEB'
deb=$(ls build/"${PKG}_${version}"_*.deb 2>/dev/null | head -1)
[ -f "$deb" ] || {
    ko "no ${PKG}_${version}_*.deb"
    finish
    exit 1
}
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = "$PKG" ] && ok "Package: $PKG" || ko "Package: $(field Package)"
[ "$(field Version)" = "$version" ] && ok "Version: $version (the project's)" || ko "Version: $(field Version)"
depends=$(field Depends)
for lib in libc6 libssl3 libsqlite3-0; do
    case ", $depends," in *", $lib "*) ok "Depends (dpkg-shlibdeps) has $lib: $depends" ;; *) ko "Depends lacks $lib: $depends" ;; esac
done
[ "$(field Recommends)" = "softhsm2, p11-kit" ] && ok "Recommends: softhsm2, p11-kit" || ko "Recommends: $(field Recommends)"
mkdir control
dpkg-deb -e "$deb" control
[ "$(cat control/conffiles)" = /etc/guardian/guardian.conf ] && ok "conffiles: /etc/guardian/guardian.conf" ||
    ko "conffiles: $(cat control/conffiles 2>&1)"
ls control/preinst control/postinst control/prerm control/postrm >/dev/null 2>&1 && ko "maintainer scripts in the package" ||
    ok "no maintainer scripts (nothing to do at install beyond unpacking)"
dpkg-deb -c "$deb" >contents.txt
grep -q '/usr/local' contents.txt && ko "files under /usr/local" || ok "nothing under /usr/local"
grep -Eq '^drwx------ root/root .* \./var/lib/guardian/$' contents.txt && ok "./var/lib/guardian/ drwx------ root/root" ||
    ko "the state directory in the package: $(grep var/lib contents.txt)"
for f in ./usr/share/p11-kit/modules/guardian.module ./etc/guardian/guardian.conf ./usr/bin/guardianctl \
    ./usr/bin/guardian-wrap ./usr/sbin/guardian-service-setup ./usr/lib/systemd/system/guardian-pkcs11.service \
    ./usr/include/guardian/guardian-pkcs11.h; do
    grep -q " $f\$" contents.txt && ok "in the package: $f" || ko "not in the package: $f"
done

# ---- 2. dpkg -i ----------------------------------------------------------------------------

section "2. dpkg -i"
installed=1
expect "dpkg -i" 0 "Setting up $PKG \($version\)" -- dpkg -i "$deb"
dpkg -L "$PKG" | sort >files.txt
so=$(grep '/pkcs11/guardian-pkcs11.so$' files.txt)
[ -n "$so" ] && [ -f "$so" ] && ok "the module: $so" || ko "no installed module in dpkg -L"
[ "$(sed -n 's/^module: *//p' /usr/share/p11-kit/modules/guardian.module)" = "$so" ] &&
    ok "guardian.module's module: is the installed $so" || ko "guardian.module: $(cat /usr/share/p11-kit/modules/guardian.module)"
[ "$(stat -c '%a %U %G' /var/lib/guardian)" = "700 root root" ] &&
    ok "/var/lib/guardian 0700 root:root (what the module asks of a root-run state)" ||
    ko "/var/lib/guardian: $(stat -c '%a %U %G' /var/lib/guardian 2>&1)"
# A client as a distribution's: no Guardian variables, the installed
# /etc/guardian/guardian.conf (SoftHSM with its system configuration).
clean_env=(env -u GUARDIAN_CONF -u GUARDIAN_BACKEND -u GUARDIAN_STATE_DIR -u GUARDIAN_DEBUG -u SOFTHSM2_CONF)
"${clean_env[@]}" p11-kit list-modules >list.txt 2>list.err
if grep -qx "guardian: $so" list.txt; then
    ok "p11-kit list-modules lists guardian: $so (from the installed guardian.module)"
else
    shown_ko "p11-kit list-modules does not list guardian: $so" "$(cat list.txt list.err)"
fi
awk '/^guardian: / { on = 1; next } /^[^ ]/ { on = 0 } on' list.txt >guardian-entry.txt
grep -q 'library-manufacturer: Guardian PKCS#11' guardian-entry.txt &&
    ok "... and loads it (library-manufacturer: Guardian PKCS#11)" ||
    shown_ko "p11-kit did not load the Guardian module" "$(cat guardian-entry.txt list.err)"
expect "pkg-config --variable=module guardian-pkcs11 (the installed .pc)" 0 "^$so\$" -- \
    pkg-config --variable=module guardian-pkcs11
flags=$(pkg-config --cflags --libs guardian-pkcs11)
# shellcheck disable=SC2086 # the flags are words
expect "docs/examples' C example compiles against the installed header (pkg-config: $flags)" 0 "" -- \
    cc -std=c11 -Wall -Werror -o issue_cert "$SRC/docs/examples/c/issue_cert.c" $flags

# ---- 3. the demo on the installed files ---------------------------------------------------

section "3. tools/guardian-demo.sh with GUARDIAN_DEMO_INSTALLED=1"
expect "the demo on the installed module and tools" 0 \
    "Installed files: $so, /usr/bin/guardianctl, /usr/bin/guardian-wrap, /usr/sbin/guardian-service-setup" -- \
    "${clean_env[@]}" GUARDIAN_DEMO_INSTALLED=1 GUARDIAN_BUILD_DIR="$work/no-build" "$SRC/tools/guardian-demo.sh" --parts 20
[ ! -e "$work/no-build" ] && ok "... without building anything" || ko "the demo built $work/no-build"
[ -z "$(ls -A /var/lib/guardian)" ] && ok "the demo left the installed state directory empty (its state is its own)" ||
    ko "/var/lib/guardian: $(ls -A /var/lib/guardian | tr '\n' ' ')"

# ---- 4. dpkg -r, dpkg --purge ----------------------------------------------------------------

section "4. dpkg -r, then dpkg --purge"
# What the package owns, but the directories other packages share.
owned=()
while read -r p; do
    [ -d "$p" ] && [ ! -L "$p" ] && case $p in /etc/guardian | /var/lib/guardian | /usr/include/guardian) ;; *) continue ;; esac
    owned+=("$p")
done <files.txt
expect "dpkg -r" 0 "Removing $PKG" -- dpkg -r "$PKG"
left=$(for p in "${owned[@]}"; do [ -e "$p" ] && echo "$p"; done)
[ "$left" = "$(printf '%s\n' /etc/guardian /etc/guardian/guardian.conf)" ] &&
    ok "dpkg -r: only the conffile is left (/etc/guardian/guardian.conf)" || shown_ko "dpkg -r left" "$left"
expect "dpkg --purge" 0 "Purging configuration files for $PKG" -- dpkg --purge "$PKG"
installed=0
left=$(for p in "${owned[@]}"; do [ -e "$p" ] && echo "$p"; done)
[ -z "$left" ] && ok "dpkg --purge: nothing of the package is left (${#owned[@]} paths)" || shown_ko "dpkg --purge left" "$left"
dpkg-query -W -f '${Status}' "$PKG" 2>/dev/null | grep -q installed && ko "dpkg still knows $PKG" ||
    ok "dpkg no longer knows $PKG"
"${clean_env[@]}" p11-kit list-modules >list2.txt 2>&1
grep -q '^guardian: ' list2.txt && ko "p11-kit still lists guardian" || ok "p11-kit no longer lists guardian"

finish
