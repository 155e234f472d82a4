#!/usr/bin/env bash
# test_stations_kill.sh MODULE GUARDIANCTL GUARDIAN_WRAP — kill -9 of a
# station at random moments in a multi-station run (issue 12, item 3):
# three stations (three Guardians, each its SoftHSM token and state
# directory, store = postgresql on a private server) share one group
# package of a small allowance; each runs `guardianctl provision --threads 2`
# in a loop while a killer sends SIGKILL to a random station's process at
# random moments (some right after its start, some in the middle of its run)
# and the station restarts (the same command again: a resume); then every
# station runs until the allowance is spent.  The operator's abuse this
# answers: kill a station to get its units back, or a serial twice, or a
# certificate without its record.  Checked: issued <= authorised on the
# server after every kill and at the end, the allowance spent exactly (issued
# + reserved-not-issued = authorised), no serial twice, every certificate
# file on disk has its ISSUE record and verifies, one station's export passes
# the OEM's verify-report, `guardianctl status` names the store and its
# server and never the password; and, as the positive control, that kills
# did hit running provisions.  Prints the figures (kills, issued, lost
# units).  77 without PostgreSQL.
#
# KILL_UNITS (default 150), KILL_SECONDS (default 15: the killer's time),
# KILL_RUN (default 10: parts a run asks for) and KILL_KEY (default rsa2048:
# the parts' key type) change the shape.  RSA keys because a part's key is
# made in guardianctl: at ~15 parts/s a station a run of 10 lasts long enough
# for a random kill to land in it, and 150 units last the killer's 15 s.
#
# SoftHSM 2.6.1's file object store rewrites token.object (label, flags,
# PINs) in place at every login (strace: ftruncate to 0, then one write): a
# kill -9 between the two leaves it empty and the token without a label, for good
# (measured: at the 32nd kill 0-0.3 s after a start on one token).
# That is the bench backend's, not the Guardian's (an HSM's token survives a
# client's death), so after each kill an emptied token.object is put back
# from the copy taken before the killer started (it holds no object of the
# Guardian's: the anchor and the keys are files of their own), and counted.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
UNITS=${KILL_UNITS:-150} SECONDS_KILLING=${KILL_SECONDS:-15} RUN=${KILL_RUN:-10} KEY=${KILL_KEY:-rsa2048}
work=$(mktemp -d "${TMPDIR:-/tmp}/stations-kill-XXXXXX")
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/pg.sh
. "$HERE/../lib/pg.sh"
# shellcheck source=../lib/stations.sh
. "$HERE/../lib/stations.sh"
declare -A pid=() run=() count=() files0=() killed=() kills=()
stop_stations() { # the provisions this script started, by their PIDs
    local n
    for n in "${!pid[@]}"; do
        [ -n "${pid[$n]}" ] && kill -KILL "${pid[$n]}" 2>/dev/null && wait "${pid[$n]}" 2>/dev/null
    done
}
trap 'stop_stations; pg_down; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
cd "$work" || exit 1
t_start=$(date +%s.%N)

pg_up "$work"
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { ko "pg_up"; finish; exit; }
backend=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
export GUARDIAN_MODULE=$M GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_BACKEND GUARDIAN_STATE_DIR GUARDIAN_DEBUG
pw=$(cat "$PG_PASSFILE")
PGOK=("store = postgresql" "store_conninfo = $PG_CONNINFO" "store_password_file = $PG_PASSFILE")

oem_pki >/dev/null 2>&1
stations_make 3
stations_package KILL "$UNITS" 3
for n in 1 2 3; do
    station $n
    expect "station $n imports the group package of $UNITS units" 0 "" -- "$CTL" import KILL.gpk
done

issued() { pg_psql -c "SELECT k.issued_units FROM packages k JOIN products p ON p.package_id = k.package_id WHERE p.product_id = 'KILL'"; }
records() { pg_psql -c "SELECT count(*) FROM audit WHERE type = $1 AND product_id = 'KILL'"; }
pems() { find "kill-$1" -name '*.pem' 2>/dev/null | wc -l; }
remaining() { echo $((UNITS - $(issued))); }

# start N: station N's next provision.  After a kill, the same command again
# (its prefix and count: a resume, which skips the certificates written and
# asks again, with the same key, for a part that was in flight); else a new
# run of RUN parts, or fewer when fewer units remain.  Nothing when none do.
start() {
    local n=$1 r c
    if [ "${killed[$n]:-0}" = 1 ]; then
        c=${count[$n]}
    else
        r=$(remaining)
        [ "$r" -gt 0 ] || return 0
        run[$n]=$((${run[$n]:-0} + 1))
        c=$((r < RUN ? r : RUN))
        count[$n]=$c
    fi
    killed[$n]=0
    files0[$n]=$(pems "$n")
    (station "$n" && exec "$CTL" provision --product ACME/KILL --count "$c" --threads 2 --key-type "$KEY" \
        --prefix "S$n-R${run[$n]}-" \
        --out "kill-$n" --quiet) >>"st$n.log" 2>&1 &
    pid[$n]=$!
}

# reap N: station N's provision, if it ended.  A run refused before its
# first unit because another station took the units (--count above the
# remaining) is not resumed: the next is a new, smaller one.
reap() {
    local n=$1
    [ -n "${pid[$n]:-}" ] || return 0
    kill -0 "${pid[$n]}" 2>/dev/null && return 0
    wait "${pid[$n]}" 2>/dev/null
    pid[$n]=""
}

# the bench backend's damage (above): an emptied token.object put back
repaired=0
for n in 1 2 3; do cp "$(find "st$n/tokens" -name token.object)" "st$n/token.object.saved"; done
repair() {
    local t
    t=$(find "st$1/tokens" -name token.object)
    [ -s "$t" ] && return 0
    cp "st$1/token.object.saved" "$t" && repaired=$((repaired + 1))
}

over=0 early=0 mid=0 late=0 inflight=0
# ---- the killer ---------------------------------------------------------------------------------
t_kill=$(date +%s)
for n in 1 2 3; do start $n; done
while [ $(($(date +%s) - t_kill)) -lt "$SECONDS_KILLING" ]; do
    sleep "0.$((RANDOM % 6))$((RANDOM % 10))"
    n=$((RANDOM % 3 + 1))
    if [ -n "${pid[$n]:-}" ] && kill -KILL "${pid[$n]}" 2>/dev/null; then
        wait "${pid[$n]}" 2>/dev/null
        pid[$n]=""
        killed[$n]=1
        kills[$n]=$((${kills[$n]:-0} + 1))
        made=$(($(pems "$n") - files0[$n]))
        # mid-run: the killed process had written certificates of its run
        # and had parts left; right after start: none written yet; at its
        # end: all written, not yet gone
        if [ "$made" = 0 ]; then
            early=$((early + 1))
        elif [ "$made" -lt "${count[$n]}" ]; then
            mid=$((mid + 1))
        else
            late=$((late + 1))
        fi
        # a part of this run whose request was in flight: its key file, no certificate
        spki=$(find "kill-$n" -name "S$n-R${run[$n]}-*.spki" 2>/dev/null | wc -l)
        [ "$spki" -gt 0 ] && inflight=$((inflight + 1))
        repair "$n"
        iss=$(issued)
        { [ -n "$iss" ] && [ "$iss" -le "$UNITS" ]; } || { over=$((over + 1)); echo "    kill at station $n: issued '$iss'"; }
    fi
    for k in 1 2 3; do
        reap $k
        [ -n "${pid[$k]:-}" ] || start $k
    done
done
total_kills=$((early + mid + late))
for n in 1 2 3; do
    while [ -n "${pid[$n]:-}" ]; do reap $n; sleep 0.1; done
done
t_end_kill=$(date +%s)

# ---- then every station until the allowance is spent -------------------------------------------
# A station can find the rest held by another's unused block (QUOTA_EXHAUSTED)
# until that process ends and gives it back: rounds until none remains.
rounds=0
while [ "$(remaining)" -gt 0 ] && [ $rounds -lt 30 ]; do
    rounds=$((rounds + 1))
    for n in 1 2 3; do start $n; done
    for n in 1 2 3; do
        [ -z "${pid[$n]:-}" ] || wait "${pid[$n]}" 2>/dev/null
        pid[$n]=""
    done
done
# every station opens its store once more: the journal of its last killed
# process is folded now if no later run did (guardianctl status), and says
# which store it talks to
for n in 1 2 3; do
    station $n
    "$CTL" status >"status-$n.txt" 2>&1 || ko "station $n: guardianctl status"
done

# ---- the checks -----------------------------------------------------------------------------------
# what stopped the runs: the allowance (QUOTA_EXHAUSTED, --count above the
# remaining units) is expected; a refusal of the state (the anchor, a
# rollback, the store, the chain) would be a station the kills broke
ours=$(grep -h -E "STATE_ROLLBACK|STORE_FAILED|STORE_UNREACHABLE|AUDIT_CORRUPT|JOURNAL|anchor" st1.log st2.log st3.log | head -3)
[ -z "$ours" ] && ok "no run stopped on the state (anchor, rollback, store, chain)" ||
    shown_ko "runs stopped on the state" "$ours"
echo "    runs stopped by the allowance: $(cat st1.log st2.log st3.log | grep -c -E "QUOTA_EXHAUSTED|units remaining")"
iss=$(issued) recs=$(records 3) lost_recs=$(records 5)
files=$(($(pems 1) + $(pems 2) + $(pems 3)))
echo "    kills: $total_kills (station 1: ${kills[1]:-0}, 2: ${kills[2]:-0}, 3: ${kills[3]:-0}; $early right after" \
    "start, $mid mid-run, $late at a run's end; $inflight with a part in flight) in $((t_end_kill - t_kill)) s; final rounds: $rounds;" \
    "SoftHSM token.object emptied by a kill and put back: $repaired"
echo "    units: $UNITS authorised, $iss used: $recs issued (ISSUE records), $((iss - recs)) reserved, not issued" \
    "(lost to the kills); $lost_recs JOURNAL_LOST; $files certificate files"
[ "$over" = 0 ] && ok "after each of the $total_kills kills: issued <= $UNITS authorised on the server" ||
    ko "$over kills saw issued above the allowance"
[ "$mid" -gt 0 ] && ok "positive control: $mid kills hit a provision mid-run (certificates of its run written)" ||
    ko "no kill hit a running provision ($total_kills kills)"
[ "$early" -gt 0 ] && ok "... and $early right after its start (none written yet)" || ko "no kill right after a start"
[ "${kills[1]:-0}" -ge 2 ] && [ "${kills[2]:-0}" -ge 2 ] && [ "${kills[3]:-0}" -ge 2 ] &&
    ok "several kills per station" || ko "kills per station: ${kills[1]:-0} ${kills[2]:-0} ${kills[3]:-0}"
[ "$(remaining)" = 0 ] && [ "$iss" = "$UNITS" ] && ok "the allowance is spent: $iss of $UNITS used, none free" ||
    ko "after the final rounds: issued $iss of $UNITS"
[ "$recs" -le "$UNITS" ] && [ "$recs" -ge "$files" ] &&
    ok "ISSUE records $recs <= $UNITS authorised, >= $files certificate files" ||
    ko "ISSUE records $recs, files $files, authorised $UNITS"
dup=$(pg_psql -c "SELECT count(*) - count(DISTINCT serial) FROM audit WHERE type = 3 AND product_id = 'KILL'")
fdup=$(find kill-1 kill-2 kill-3 -name '*.pem' -exec openssl x509 -noout -serial -in {} \; | sort | uniq -d | wc -l)
[ "$dup" = 0 ] && [ "$fdup" = 0 ] && ok "no serial issued twice (records and files)" ||
    ko "serials twice: $dup in the records, $fdup in the files"
missing=$(check_recorded kill-1 kill-2 kill-3)
[ "$missing" = 0 ] && ok "every certificate file on disk has its ISSUE record" ||
    ko "$missing certificate files without an ISSUE record"
bad=$(find kill-1 kill-2 kill-3 -name '*.pem' -print0 | xargs -0 -r openssl verify -CAfile root.pem -untrusted ca.pem 2>&1 |
    grep -vc ': OK$')
[ "$bad" = 0 ] && ok "every certificate verifies up to the OEM root" || ko "$bad certificates do not verify"
station 2
expect "station 2: audit export of the shared trail" 0 "exported [0-9]+ records" -- "$CTL" audit export --out report.txt
out=$("$W" verify-report report.txt --guardian st2.pem --ca-chain ca.pem --root root.pem 2>&1)
rc=$?
[ $rc = 0 ] && ok "the OEM's verify-report accepts the export after the kills" || shown_ko "verify-report: exit $rc" "$out"
rep_issue=$(grep -c '^record [0-9]* ISSUE ' report.txt)
[ "$rep_issue" = "$recs" ] && ok "the export holds the $recs ISSUE records" || ko "the export holds $rep_issue ISSUE records"
# the OEM's figures for the product: issued <= authorised there too, and the
# units the kills cost are the server's (used - issued)
line=$(grep -E "^ACME/KILL release 1 .*: authorised " <<<"$out")
echo "    verify-report: ${line#*: }"
r_auth=$(sed -n 's/.*: authorised \([0-9]*\),.*/\1/p' <<<"$line")
r_issued=$(sed -n 's/.*, issued \([0-9]*\),.*/\1/p' <<<"$line")
r_lost=$(sed -n 's/.*, reserved-not-issued \([0-9]*\),.*/\1/p' <<<"$line")
r_rem=$(sed -n 's/.*, remaining \([0-9]*\),.*/\1/p' <<<"$line")
[ "$r_auth" = "$UNITS" ] && [ "$r_issued" = "$recs" ] && [ "$r_issued" -le "$r_auth" ] &&
    [ "$r_lost" = $((iss - recs)) ] && [ "$r_rem" = 0 ] &&
    ok "verify-report: issued $r_issued <= authorised $r_auth, reserved-not-issued $r_lost, remaining 0 (the server's figures)" ||
    ko "verify-report's figures: '$line'"
# Which station issued what: every record names its Guardian, so the report's
# per-member counts are each station's ISSUE records, and they add up.
sum=0 per=""
for n in 1 2 3; do
    gd=$(openssl x509 -in "st$n.pem" -outform DER | sha256sum | cut -c1-64)
    m=$(grep -o "member sha256:$gd [a-z]* (record [0-9]*), issued [0-9]*" <<<"$out" | awk '{print $NF}')
    r=$(grep -c "^record [0-9]* ISSUE .* $gd [0-9a-f]\{64\} [0-9a-f]\{64\}$" report.txt)
    [ -n "$m" ] && [ "$m" = "$r" ] && ok "station $n: verify-report credits its Guardian with its $r ISSUE records" ||
        ko "station $n: verify-report says '$m', $r ISSUE records name its Guardian"
    sum=$((sum + ${m:-0})) per="$per $n:${m:-?}"
done
[ "$sum" = "$recs" ] && ok "the members' units add up to the $recs issued (stations$per)" ||
    ko "the members' units add up to $sum, $recs issued"

# ---- guardianctl status names the store, never its password -------------------------------------
for n in 1 2 3; do
    grep -qF "store         postgresql (host=$PG_HOST port=$PG_PORT dbname=$PG_DB)" "status-$n.txt" &&
        ! grep -qF "$pw" "status-$n.txt" && ok "station $n: status names the store and its server, not the password" ||
        shown_ko "station $n: status" "$(grep -i store "status-$n.txt")"
done
station 3
out=$("$CTL" status --json 2>status-json.err)
python3 -c 'import json, sys; b = json.loads(sys.argv[1])["backend"]; sys.exit(b["store"] != "postgresql" or b["store_location"] != sys.argv[2])' \
    "$out" "host=$PG_HOST port=$PG_PORT dbname=$PG_DB" && ! grep -qF "$pw" <<<"$out" &&
    ok "status --json: backend.store postgresql, store_location host/port/dbname, no password" ||
    shown_ko "status --json" "$(grep -o '"store[^,]*,[^,]*' <<<"$out")"
echo "    elapsed: $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }') s"
finish
