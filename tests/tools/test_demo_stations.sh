#!/usr/bin/env bash
# test_demo_stations.sh BUILD_DIR — tools/guardian-demo.sh --stations 3 --store
# postgresql (issue 12): three Guardians on one small allowance on an
# embedded PostgreSQL.  Checked here, from the files the demo kept (--keep),
# not from what it prints: the certificates issued across the three stations
# are exactly the units authorised, each verifies up to the OEM root, the one
# export holds one ISSUE record per certificate and the OEM's verify-report
# accepts it, and no process of the embedded server is left.  And the
# refusals of the new options.  77 without PostgreSQL 15's server.
set -uo pipefail
build=$(realpath "${1:?build dir}")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
demo=$here/tools/guardian-demo.sh
[ -x "${PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] || { echo "SKIP: PostgreSQL 15's server is missing"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/demo-stations-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=../lib/testlib.sh
. "$here/tests/lib/testlib.sh"
units=31 # not a multiple of 3: the shares differ

expect_rc "--stations 2 on SQLite is refused" 2 "needs --store postgresql" -- "$demo" --stations 2
expect_rc "--stations 0 is refused" 2 "from 1 to 8, not '0'" -- "$demo" --stations 0 --store postgresql
expect_rc "--store mysql is refused" 2 "sqlite or postgresql, not 'mysql'" -- "$demo" --store mysql
expect_rc "--store postgresql with --backend is refused" 2 "not with --service or --backend" -- \
    "$demo" --store postgresql --backend nss

mkdir -p "$work/tmp"
GUARDIAN_BUILD_DIR=$build TMPDIR=$work/tmp "$demo" --stations 3 --store postgresql --parts "$units" --keep \
    >"$work/demo.out" 2>&1
rc=$?
[ "$rc" = 0 ] && ok "the demo with 3 stations passes" || shown_ko "the demo exited $rc" "$(tail -30 "$work/demo.out")"
d=$(sed -n 's/^kept //p' "$work/demo.out" | tail -1)
[ -n "$d" ] && [ -d "$d" ] || { ko "no kept directory in the output"; finish; exit; }

files=$(find "$d"/certs/st1 "$d"/certs/st2 "$d"/certs/st3 -name '*.pem' 2>/dev/null | wc -l)
[ "$files" = "$units" ] && ok "issued == authorised: $files certificates for $units units" ||
    ko "$files certificates for $units units"
for n in 1 2 3; do
    c=$(find "$d/certs/st$n" -name '*.pem' 2>/dev/null | wc -l)
    grep -Eq "^  station $n: $c units in the OEM's report \(its Guardian's records\), = its certificate files" \
        "$work/demo.out" && ok "station $n: the report's units for its Guardian ($c) are its files'" ||
        ko "station $n: $c files, the summary says otherwise"
    gd=$(openssl x509 -in "$d/st$n/guardian.pem" -outform DER | sha256sum | cut -c1-64)
    r=$(grep -c "^record [0-9]* ISSUE .* $gd [0-9a-f]\{64\} [0-9a-f]\{64\}$" "$d/audit-report.txt")
    [ "$r" = "$c" ] && ok "station $n: $r ISSUE records name its Guardian" || ko "station $n: $r ISSUE records name it, $c files"
done
bad=$(find "$d/certs" -name '*.pem' -print0 | xargs -0 openssl verify -CAfile "$d/oem/root.pem" \
    -untrusted "$d/oem/production-ca.pem" 2>&1 | grep -vc ': OK$')
[ "$bad" = 0 ] && ok "every certificate verifies up to the OEM root" || ko "$bad certificates do not verify"
dups=$(find "$d/certs" -name '*.pem' -exec openssl x509 -noout -serial -in {} \; | sort | uniq -d | wc -l)
[ "$dups" = 0 ] && ok "no serial twice across the stations" || ko "$dups serials twice"
issues=$(grep -c '^record [0-9]* ISSUE ' "$d/audit-report.txt")
[ "$issues" = "$units" ] && ok "the one export holds $units ISSUE records" || ko "the export holds $issues ISSUE records"
[ "$(grep -c '^record [0-9]* JOIN ' "$d/audit-report.txt")" = 2 ] && ok "... and the two JOIN records" ||
    ko "JOIN records: $(grep -c '^record [0-9]* JOIN ' "$d/audit-report.txt")"
expect "the OEM's verify-report accepts the export" 0 "^OK|  OK$" -- "$build/tools/guardian-wrap" verify-report \
    "$d/audit-report.txt" --guardian "$d/st1/guardian.pem" --ca-chain "$d/oem/production-ca.pem" --root "$d/oem/root.pem"
pid=$(grep -o 'postmaster PID [0-9]*' "$work/demo.out" | awk '{print $3}')
[ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && ok "the server (PID $pid) is gone" || ko "the server (PID '$pid') runs"
[ ! -e "$d/pg/data/postmaster.pid" ] && ok "no postmaster.pid left" || ko "postmaster.pid left"
left=$(pgrep -f -- "$d/pg" | tr '\n' ' ')
[ -z "$left" ] && ok "no process of the embedded server left" || ko "processes left: $left"
finish
