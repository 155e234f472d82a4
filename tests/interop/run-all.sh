#!/bin/bash
#
# run-all.sh <guardian-pkcs11.so> — every interop script in turn, then one
# combined "N passed, N failed" line; exits non-zero when anything failed.
# A script that ends without its summary line counts as one failure.

set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 <path-to-guardian-pkcs11.so>" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
module=$1
SCRIPTS="pkcs11_tool openssl_engine p11tool p11kit p11kit_remote pykcs11 nss cert_parsers examples"
# examples.sh also needs the tools and the example programs: those of the
# build directory the module is in (build/guardian-pkcs11.so), when there.
build=$(dirname "$(readlink -f "$module")")
examples_args=("$build/tools/guardianctl" "$build/tools/guardian-wrap" "$build/docs/examples/c/issue_cert")
[ ! -x "$build/docs/examples/go/issue_cert" ] || examples_args+=("$build/docs/examples/go/issue_cert")

passed=0
failed=0
skipped=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/guardian-interop-run-all.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

for s in $SCRIPTS; do
    echo "=== $s"
    start=$(date +%s)
    rc=0
    args=("$module")
    if [ "$s" = examples ]; then
        if [ ! -x "${examples_args[2]}" ]; then
            echo "SKIP examples: no ${examples_args[2]} beside the module (build the tree's examples)"
            skipped=$((skipped + 1))
            continue
        fi
        args+=("${examples_args[@]}")
    fi
    "$here/$s.sh" "${args[@]}" 2>&1 | tee "$tmp/$s.out" || rc=$?
    echo "=== $s: exit status $rc, $(($(date +%s) - start)) s"
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$tmp/$s.out" | tail -n 1 || true)
    if [ -z "$summary" ]; then
        echo "FAIL $s: ended without a summary line (exit status $rc)"
        failed=$((failed + 1))
        continue
    fi
    read -r p _ f _ k _ <<<"${summary//,/}"
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + ${k:-0}))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $s: exit status $rc although it reported no failure"
        failed=$((failed + 1))
    fi
done

echo "==="
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
