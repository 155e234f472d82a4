#!/usr/bin/env bash
# test_store_pg.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the Guardian with its
# state on PostgreSQL (store = postgresql, issue 12) on a fresh SoftHSM token
# and a private PostgreSQL 15 server (tests/lib/pg.sh): the configuration's
# refusals (a password in the connection string, a password file open to
# others, no conninfo), then init, enrol, import (a replay refused),
# provision, audit export and the OEM's verify-report; the server stopped in
# the middle of production (a clear CKR naming the server, no record lost, no
# unit spent twice, production resumes after pg_start); two processes racing a
# small allowance on one database stop exactly at it; a station pointed at
# another database is refused by its token's anchor; three stations (three
# Guardians, a group package) x two threads stop at exactly its allowance,
# and each station's export of the shared trail verifies.  77 without
# PostgreSQL.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/store-pg-test-XXXXXX")
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/pg.sh
. "$HERE/../lib/pg.sh"
# shellcheck source=../lib/stations.sh
. "$HERE/../lib/stations.sh"
trap 'pg_down; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
cd "$work" || exit 1

pg_up "$work"
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { ko "pg_up"; finish; exit; }

mkdir -m 0700 state
softhsm_token "$work" pgstore
backend=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
conf() { # the configuration, with extra lines
    { printf 'backend = %s\nstate_dir = %s\nlog_level = error\n' "$backend" "$work/state"; printf '%s\n' "$@"; } \
        >"$work/guardian.conf"
}
export GUARDIAN_CONF=$work/guardian.conf GUARDIAN_MODULE=$M GUARDIAN_TOKEN=pgstore GUARDIAN_PIN=1234 \
    GUARDIAN_SO_PIN=12345678
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG
pw=$(cat "$PG_PASSFILE")
PGOK=("store = postgresql" "store_conninfo = $PG_CONNINFO" "store_password_file = $PG_PASSFILE")

# ---- the configuration's refusals, each with its positive control below ------------------
conf "store = postgresql" "store_conninfo = $PG_CONNINFO password=$pw" "store_password_file = $PG_PASSFILE"
out=$("$CTL" products 2>&1)
{ [ $? -ne 0 ] && grep -q "store_conninfo' holds a password: refused" <<<"$out" && ! grep -qF "$pw" <<<"$out"; } &&
    ok "a password in store_conninfo is refused, and not repeated" || shown_ko "password in conninfo" "$out"
conf "store = postgresql" "store_conninfo = postgresql://guardian:$pw@localhost/guardian"
out=$("$CTL" products 2>&1)
{ [ $? -ne 0 ] && grep -q "holds a password: refused" <<<"$out" && ! grep -qF "$pw" <<<"$out"; } &&
    ok "a URI with user:password@ is refused" || shown_ko "password in URI" "$out"
conf "store = postgresql"
expect "store = postgresql without store_conninfo is refused" 1 "needs store_conninfo" -- "$CTL" products
conf "store = mysql"
expect "an unknown store is refused" 1 "invalid store 'mysql' \(use sqlite or postgresql\)" -- "$CTL" products
cp "$PG_PASSFILE" "$work/pass-open" && chmod 0644 "$work/pass-open"
conf "store = postgresql" "store_conninfo = $PG_CONNINFO" "store_password_file = $work/pass-open"
expect "a password file readable by others is refused" 1 "store_password_file .*pass-open is readable or writable by group or others" -- \
    "$CTL" products
printf 'wrong\n' >"$work/pass-wrong" && chmod 0600 "$work/pass-wrong"
conf "store = postgresql" "store_conninfo = $PG_CONNINFO" "store_password_file = $work/pass-wrong"
out=$("$CTL" init --out guardian.pem 2>&1)
{ [ $? -ne 0 ] && grep -q "the state server host=$PG_HOST port=$PG_PORT dbname=$PG_DB user=$PG_USER cannot be reached or refused" <<<"$out" &&
    ! grep -q wrong <<<"${out//wrong password/}"; } && ok "a wrong password: refused, the server named" ||
    shown_ko "wrong password" "$out"
# Where the allowance lives is the configuration's: libpq's environment
# variables do not fill what the connection string leaves out (refused, the
# variable named, its value not shown), and change nothing it names (the
# init below runs with PGHOST and PGDATABASE pointing elsewhere, and a wrong
# PGPASSWORD, which store_password_file overrides).
conf "store = postgresql" "store_conninfo = host=$PG_HOST dbname=$PG_DB user=$PG_USER" "store_password_file = $PG_PASSFILE"
out=$(env PGPORT="$PG_PORT" "$CTL" init --out refused.pem 2>&1)
{ [ $? -ne 0 ] && grep -q "the connection string leaves out port and the environment sets PGPORT: refused" <<<"$out" &&
    [ ! -e refused.pem ] && ! grep -q "=$PG_PORT" <<<"$out"; } && ok "a port left to PGPORT is refused, PGPORT named" ||
    shown_ko "PGPORT filled the connection string" "$out"
conf "store = postgresql" "store_conninfo = $PG_CONNINFO" "store_password_file = $PG_PASSFILE"
expect "a schema left to PGOPTIONS (-c search_path) is refused" 1 \
    "the connection string leaves out options and the environment sets PGOPTIONS: refused" -- \
    env PGOPTIONS="-c search_path=elsewhere" "$CTL" init --out refused.pem
conf "store = postgresql" "store_conninfo = $PG_CONNINFO service=guardian" "store_password_file = $PG_PASSFILE"
expect "a service file moved by PGSERVICEFILE is refused" 1 "names a service and the environment sets PGSERVICEFILE, which says where its file is: refused" -- \
    env PGSERVICEFILE="$work/pg_service.conf" "$CTL" init --out refused.pem
conf "${PGOK[@]}"

# ---- the story on PostgreSQL ------------------------------------------------------------------
oem_pki
expect "guardianctl init (store = postgresql; PGHOST, PGDATABASE elsewhere, PGPASSWORD wrong: unused)" 0 "" -- \
    env PGHOST=/nonexistent PGDATABASE=elsewhere PGPASSWORD=wrong "$CTL" init --out guardian.pem
[ "$(pg_psql -c 'SELECT version FROM guardian_schema')" = 9 ] && ok "schema version 9 on the server" ||
    ko "schema version $(pg_psql -c 'SELECT version FROM guardian_schema')"
[ ! -e state/guardian.db ] && ok "no SQLite file in the state directory" || ko "state/guardian.db exists"
expect "enroll-oem" 0 "" -- "$CTL" enroll-oem root.pem --oem-id ACME --yes
pkg() { # PRODUCT UNITS
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "$1" --release 1 --units "$2" \
        --not-after +10 --out "$1.gpk" >/dev/null
}
pkg SENSOR-1 400 && pkg RACE 7 || ko "guardian-wrap create"
expect "import" 0 "" -- "$CTL" import SENSOR-1.gpk
expect "a replay is refused" 1 "already imported|REPLAY" -- "$CTL" import SENSOR-1.gpk
expect "import RACE" 0 "" -- "$CTL" import RACE.gpk
issued() { pg_psql -c "SELECT k.issued_units FROM packages k JOIN products p ON p.package_id = k.package_id WHERE p.product_id = '$1'"; }
records() { pg_psql -c "SELECT count(*) FROM audit WHERE type = 3 AND product_id = '$1'"; }
expect "provision 20 parts" 0 "provisioned 20 parts" -- "$CTL" provision --product ACME/SENSOR-1 --count 20 --out run
bad=$(find run -name '*.pem' -print0 | xargs -0 openssl verify -CAfile root.pem -untrusted ca.pem 2>&1 | grep -vc ': OK$')
[ "$bad" = 0 ] && ok "openssl verify: the 20 chain to the OEM root" || ko "openssl verify: $bad failures"
[ "$(issued SENSOR-1)" = 20 ] && [ "$(records SENSOR-1)" = 20 ] && ok "the server holds 20 issued, 20 ISSUE records" ||
    ko "server: issued $(issued SENSOR-1), records $(records SENSOR-1)"


# ---- the server stopped in the middle of production -----------------------------------------
"$CTL" provision --product ACME/SENSOR-1 --count 300 --prefix ST- --out stop >stop.out 2>&1 &
pid=$!
for _ in $(seq 100); do [ "$(find stop -name '*.pem' 2>/dev/null | wc -l)" -ge 5 ] && break; sleep 0.1; done
pg_stop || ko "pg_stop"
wait "$pid"
rc=$?
made=$(find stop -name '*.pem' | wc -l)
[ "$rc" != 0 ] && [ "$made" -lt 300 ] && ok "server stopped: provisioning stopped ($made of 300 made)" ||
    ko "server stopped: rc $rc, $made made"
grep -q "CKR_GUARDIAN_STORE_UNREACHABLE" stop.out && ok "the stop is reported as CKR_GUARDIAN_STORE_UNREACHABLE" ||
    shown_ko "no STORE_UNREACHABLE" "$(cat stop.out)"
grep -q "the state server host=$PG_HOST port=$PG_PORT dbname=$PG_DB user=$PG_USER cannot be reached" stop.out &&
    ! grep -qF "$pw" stop.out && ok "the log line names the server, never the password" ||
    shown_ko "server not named" "$(cat stop.out)"
expect "with the server down, the next call fails clearly" 1 "STORE_UNREACHABLE|cannot be reached" -- \
    "$CTL" provision --product ACME/SENSOR-1 --count 1 --prefix DOWN- --out down
pg_start || ko "pg_start"
expect "after pg_start the same command resumes" 0 "provisioned|already done" -- \
    "$CTL" provision --product ACME/SENSOR-1 --count 300 --prefix ST- --out stop
made=$(find stop -name '*.pem' | wc -l)
[ "$made" = 300 ] && ok "resumed: 300 certificates" || ko "resumed: $made certificates"
[ "$(check_recorded run stop)" = 0 ] && ok "every certificate written out has its ISSUE record (none lost)" ||
    ko "$(check_recorded run stop) certificates without an ISSUE record"
dup=$(pg_psql -c "SELECT count(*) - count(DISTINCT serial) FROM audit WHERE type = 3 AND product_id = 'SENSOR-1'")
[ "$dup" = 0 ] && ok "no serial issued twice" || ko "$dup serials issued twice"
iss=$(issued SENSOR-1)
[ "$iss" -ge 320 ] && [ "$iss" -le 400 ] && [ "$(records SENSOR-1)" = 320 ] &&
    ok "issued $iss <= authorised 400, 320 ISSUE records (units reserved before the stop stay counted)" ||
    ko "issued $iss, records $(records SENSOR-1)"

# ---- the adversary: the operator points the station at another database --------------------
# (a fresh one: its own allowance, no records) - the token's anchor refuses it.
pg_psql -c "CREATE DATABASE other" >/dev/null || ko "CREATE DATABASE other"
conf "store = postgresql" "store_conninfo = ${PG_CONNINFO/dbname=$PG_DB/dbname=other}" "store_password_file = $PG_PASSFILE"
expect "another (fresh) database: production refused by the token's anchor" 1 "STATE_ROLLBACK|older than" -- \
    "$CTL" provision --product ACME/SENSOR-1 --count 1 --prefix OTHER- --out other
conf "${PGOK[@]}"
[ "$(issued SENSOR-1)" = "$iss" ] && ok "... and nothing was spent on the real one" || ko "issued moved to $(issued SENSOR-1)"

# ---- two processes racing a small allowance on one database ---------------------------------
"$CTL" provision --product ACME/RACE --count 7 --threads 2 --prefix A- --out race-a >race-a.out 2>&1 &
a=$!
"$CTL" provision --product ACME/RACE --count 7 --threads 2 --prefix B- --out race-b >race-b.out 2>&1 &
b=$!
wait $a
wait $b
files=$(find race-a race-b -name '*.pem' | wc -l)
[ "$files" = 7 ] && ok "race: exactly 7 certificates from 2 processes x 2 threads" || ko "race: $files certificates"
[ "$(issued RACE)" = 7 ] && [ "$(records RACE)" = 7 ] && ok "race: issued 7 of 7 on the server" ||
    ko "race: issued $(issued RACE), records $(records RACE)"
grep -Eq "QUOTA_EXHAUSTED|units remaining" race-a.out race-b.out && ok "race: the exhaustion is reported by name" ||
    ko "race: no QUOTA_EXHAUSTED"

# ---- the export and the OEM's check -------------------------------------------------------------
expect "audit export" 0 "exported [0-9]+ records" -- "$CTL" audit export --out report.txt
expect "guardian-wrap verify-report" 0 "" -- "$W" verify-report report.txt --guardian guardian.pem --ca-chain ca.pem \
    --root root.pem
sed "0,/^record [0-9]* IMPORT /{/^record [0-9]* IMPORT /s/ 400 / 4000 /}" report.txt >altered.txt
expect "an altered report is rejected" 1 "" -- "$W" verify-report altered.txt --guardian guardian.pem \
    --ca-chain ca.pem --root root.pem
# ---- three stations (three Guardians, each its token and state directory) on one allowance ----
# One group package for the three (guardian-wrap create --guardian-cert x3):
# the first import records it, the others join it; 3 stations x 2 threads
# race its 11 units and stop at exactly 11.
stations_make 3
stations_package LINES 11 3
for n in 1 2 3; do
    station $n
    expect "station $n imports the group package" 0 "" -- "$CTL" import LINES.gpk
done
station 2
expect "station 2 imports it once only" 1 "" -- "$CTL" import LINES.gpk
[ "$(pg_psql -c "SELECT count(*) FROM package_members")" -ge 2 ] && ok "the members are on the server" ||
    ko "package_members: $(pg_psql -c 'SELECT count(*) FROM package_members')"
pids=()
for n in 1 2 3; do
    (station $n && exec "$CTL" provision --product ACME/LINES --count 11 --threads 2 --prefix "L$n-" \
        --out "lines-$n" >"lines-$n.out" 2>&1) &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
files=$(find lines-1 lines-2 lines-3 -name '*.pem' 2>/dev/null | wc -l)
[ "$files" = 11 ] && ok "3 stations x 2 threads: exactly 11 certificates" || ko "3 stations: $files certificates"
echo "    per station: $(for n in 1 2 3; do printf '%s ' "$(find "lines-$n" -name '*.pem' 2>/dev/null | wc -l)"; done)"
[ "$(issued LINES)" = 11 ] && [ "$(records LINES)" = 11 ] && ok "3 stations: issued 11 of 11 on the server" ||
    ko "3 stations: issued $(issued LINES), records $(records LINES)"
bad=$(find lines-1 lines-2 lines-3 -name '*.pem' -print0 | xargs -0 openssl verify -CAfile root.pem -untrusted ca.pem 2>&1 |
    grep -vc ': OK$')
[ "$bad" = 0 ] && ok "3 stations: every certificate verifies" || ko "3 stations: $bad do not verify"
[ "$(check_recorded lines-1 lines-2 lines-3)" = 0 ] && ok "3 stations: every certificate has its ISSUE record" ||
    ko "3 stations: certificates without a record"
for n in 1 3; do
    station $n
    expect "station $n: audit export of the shared trail" 0 "exported [0-9]+ records" -- \
        "$CTL" audit export --out "report-$n.txt"
    expect "station $n: verify-report" 0 "" -- "$W" verify-report "report-$n.txt" --guardian "st$n.pem" \
        --ca-chain ca.pem --root root.pem
done
finish
