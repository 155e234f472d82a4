#!/usr/bin/env bash
# test_scripts.sh BUILD_DIR — README's two commands as a newcomer meets them
# (issue 11, item 1): --help and argument checks of tools/guardian-demo.sh and
# tests/run-all.sh, tools/ensure-packages.sh (silent when nothing is missing;
# one line naming the apt-get command, exit 1, for anyone but root), and the
# in-process demo itself for a few part counts, the package as large as the run.
set -uo pipefail

build=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
demo=$here/tools/guardian-demo.sh runall=$here/tests/run-all.sh ensure=$here/tools/ensure-packages.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   $*"
}
bad() {
    failed=$((failed + 1))
    echo "FAIL $*"
}
# expect RC NAME WORDS COMMAND...: exit status RC and WORDS (a regex) in its output
expect() {
    local want=$1 name=$2 words=$3 rc
    shift 3
    "$@" >"$work/out" 2>&1
    rc=$?
    if [ "$rc" != "$want" ]; then
        bad "$name: exit $rc, wanted $want: $(head -3 "$work/out")"
    elif [ -n "$words" ] && ! grep -Eq -- "$words" "$work/out"; then
        bad "$name: no /$words/ in: $(head -3 "$work/out")"
    else
        ok "$name"
    fi
}

expect 0 "demo --help" "Usage: .*--parts N.*Exit status" bash -c "'$demo' --help | tr '\n' ' '"
expect 0 "run-all --help" "Usage: .*--quick.*Exit status" bash -c "'$runall' --help | tr '\n' ' '"
expect 2 "demo unknown option named" "unknown option '--prats'" "$demo" --prats 3
expect 2 "demo --parts without a number" "--parts needs a number" "$demo" --parts
for v in 0 -5 abc 1e3 2000001 99999999999999999999; do
    expect 2 "demo --parts $v refused" "from 1 to 1000000, not '$v'" "$demo" --parts "$v"
done
expect 2 "run-all unknown option named" "unknown option '--quik'" "$runall" --quik

expect 0 "ensure-packages: nothing missing, nothing said" "" "$ensure"
[ ! -s "$work/out" ] && ok "ensure-packages prints nothing when all is installed" ||
    bad "ensure-packages printed: $(head -2 "$work/out")"
expect 1 "ensure-packages --check names the command" \
    "^missing Debian packages: as root run: apt-get update && apt-get install -y no-such-package-guardian$" \
    "$ensure" --check softhsm2 no-such-package-guardian
[ "$(wc -l <"$work/out")" = 1 ] && ok "ensure-packages says it in one line" || bad "$(wc -l <"$work/out") lines"
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && setpriv --reuid nobody --regid nogroup --clear-groups \
    test -x "$ensure" 2>/dev/null; then
    expect 1 "ensure-packages as a non-root account installs nothing" "as root run: apt-get" \
        setpriv --reuid nobody --regid nogroup --clear-groups "$ensure" no-such-package-guardian
fi

# The demo, in-process, at the edges of --parts: 1, and more than the 1000 a
# package used to hold (the package is made as large as the run).
# (Not in the ASan build: the demo's pkcs11-tool and openssl would load an
# ASan module into programs without the ASan runtime.)
parts_runs="1 1200"
if grep -q '^GUARDIAN_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    echo "skip the demo runs: $build is a sanitizer build"
    parts_runs=""
fi
for n in $parts_runs; do
    if GUARDIAN_BUILD_DIR=$build "$demo" --parts "$n" >"$work/demo-$n.log" 2>&1; then
        if grep -q "^  $n of $n certificates: OK$" "$work/demo-$n.log" &&
            grep -q "units        $((n > 1000 ? n : 1000))$" "$work/demo-$n.log" &&
            grep -q "issued $n, reserved-not-issued 0, remaining $((n > 1000 ? 0 : 1000 - n))" "$work/demo-$n.log"; then
            ok "demo --parts $n: $n certificates verify, the package authorised $((n > 1000 ? n : 1000))"
        else
            bad "demo --parts $n passed but its summary is not what was asked: $(tail -5 "$work/demo-$n.log")"
        fi
    else
        bad "demo --parts $n failed: $(tail -15 "$work/demo-$n.log")"
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
