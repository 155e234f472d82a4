#!/bin/sh
# check_hardening.sh FORTIFY PROGRAM... — the command-line tools are built
# hardened (tools/CMakeLists.txt): full RELRO (-z relro -z now: a GNU_RELRO
# segment and BIND_NOW), the stack protector (-fstack-protector-strong: they
# call __stack_chk_fail) and, when FORTIFY is 1 (optimised builds without
# sanitizers), _FORTIFY_SOURCE=2 (they call checked __*_chk functions).
# Read with readelf, so that a change to the flags cannot drop one unnoticed.
set -u
fortify=$1
shift
status=0
fail() {
    echo "FAIL: $1: $2" >&2
    status=1
    bad=1
}
for prog in "$@"; do
    name=$(basename "$prog")
    bad=0
    dynamic=$(readelf -dW "$prog") || { fail "$name" "readelf -d failed"; continue; }
    echo "$dynamic" | grep -Eq '\(FLAGS\).*BIND_NOW|\(FLAGS_1\).*NOW|\(BIND_NOW\)' ||
        fail "$name" "not linked with -z now (no BIND_NOW in readelf -d)"
    readelf -lW "$prog" | grep -q GNU_RELRO || fail "$name" "no GNU_RELRO segment (-z relro)"
    symbols=$(readelf --dyn-syms -W "$prog")
    echo "$symbols" | grep -q ' __stack_chk_fail' ||
        fail "$name" "does not call __stack_chk_fail (no -fstack-protector-strong)"
    if [ "$fortify" = 1 ]; then
        echo "$symbols" | grep -Eq ' __[a-z0-9_]+_chk(@|$| )' ||
            fail "$name" "calls no __*_chk function (no -D_FORTIFY_SOURCE=2)"
    fi
    [ $bad = 0 ] && echo "ok: $name: BIND_NOW, GNU_RELRO, __stack_chk_fail$([ "$fortify" = 1 ] && printf ', %s' "$(echo "$symbols" | grep -oE '__[a-z0-9_]+_chk' | grep -v '^__stack_chk$' | sort -u | tr '\n' ' ')")"
done
exit $status
