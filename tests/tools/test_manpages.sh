#!/usr/bin/env bash
# test_manpages.sh BUILD_DIR — `cmake --install` puts the four manual pages
# (guardianctl(1), guardian-wrap(1), guardian.conf(5), guardian-pkcs11(7))
# into DESTDIR/<prefix>/<mandir>/manN, and each renders with groff -man -ww
# and man -l without a single warning; each documents the exit statuses.
set -uo pipefail
BUILD=$(realpath "${1:?build dir}")
HERE=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/manpages-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
for tool in groff man; do
    command -v "$tool" >/dev/null || { echo "FAIL $tool is not installed (apt-get install groff-base man-db)"; exit 1; }
done

if DESTDIR=$work/root cmake --install "$BUILD" --prefix /opt/guardian-test >"$work/install.log" 2>&1; then
    ok "cmake --install into a DESTDIR"
else
    shown_ko "cmake --install into a DESTDIR" "$(cat "$work/install.log")"
fi
mandir=$(sed -n 's/^CMAKE_INSTALL_MANDIR:PATH=//p' "$BUILD/CMakeCache.txt")
mandir=${mandir:-share/man}
case $mandir in /*) ;; *) mandir=/opt/guardian-test/$mandir ;; esac
for page in man1/guardianctl.1 man1/guardian-wrap.1 man5/guardian.conf.5 man7/guardian-pkcs11.7; do
    f=$work/root$mandir/$page
    if [ ! -f "$f" ]; then
        ko "$page installed in $mandir"
        continue
    fi
    ok "$page installed in $mandir"
    warnings=$(groff -man -Tutf8 -ww -z "$f" 2>&1)
    [ -z "$warnings" ] && ok "$page: groff -man -ww, no warning" || shown_ko "$page: groff warnings" "$warnings"
    out=$(MANWIDTH=80 man -l "$f" 2>"$work/man.err")
    [ ! -s "$work/man.err" ] && [ -n "$out" ] && ok "$page: man -l renders, nothing on stderr" ||
        shown_ko "$page: man -l" "$(cat "$work/man.err")"
    name=$(basename "$page" | sed 's/\.[0-9]$//')
    output_matches "$page: its NAME section" "^ +$name +[^ ]+ +[a-z]" "$out"
    case $page in man1/*) output_matches "$page: EXIT STATUS 0/1/2" "EXIT STATUS" "$out" ;; esac
done
finish
