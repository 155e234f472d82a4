#!/usr/bin/env bash
# test_service_faults.sh MODULE GUARDIANCTL GUARDIAN-WRAP GUARDIAN-SERVICE-SETUP —
# faults of the Guardian service in the middle of production (issue 9, item 4),
# with the service under its own account and the operators under another, as
# docs/service-mode.md sets it up (guardian-service-setup install + run):
#
#   race  two operator clients (guardianctl provision, 2 threads each, one
#         connection each) racing a quota of 60 through the service: exactly
#         60 certificates, every one recorded, no serial twice;
#   child kill -9 of the p11-kit-remote serving a client, mid-production: the
#         client stops with a clear error, the next run resumes;
#   all   kill -9 of the whole service (p11-kit server and every child),
#         mid-production, then the service started again: clients resume.
#
# After the faults: issued <= authorised, every certificate file written has
# its ISSUE record and its stored certificate, no serial is used twice, the
# audit chain verifies, and the OEM's verify-report accepts the export and
# shows the operator. The test reads the state as root (an observer): the
# operators cannot.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
SETUP=$(realpath "${4:?guardian-service-setup}")
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"
# shellcheck source=../lib/service.sh
. "$HERE/../lib/service.sh"
service_require test_service_faults.sh
KILLS=${GUARDIAN_TEST_KILLS:-5}

service_work service-faults gtf$$
section() { printf '\n# %s\n' "$*"; }

service_accounts "$op"
service_sandbox faults
service_install /CN=faults || { cat install.out; echo "FAIL install"; exit 1; }

# remotes: the p11-kit-remote processes of the service's connections.
remotes() { pgrep -u "$svc" -f p11-kit-remote -d ' ' || true; }
issued() { opctl products | awk -v p="$1" '$2 == p {print $5}'; }

section "setup: the service, an OEM root, two products"
service_start && ok "the service runs as $svc (p11-kit server pid $server)" || { cat service.log; ko "service start"; finish; }
oem_pki
SO=$SO_SECRET expect "the SO enrols the OEM root through the service" 0 "" -- opctl enroll-oem root.pem --oem-id ACME --yes
for p in RACE:60 KILL:20000; do
    "$W" create --guardian-cert "$conf/guardian.pem" --signer-key signer.key --signer-cert signer.pem \
        --ca-key ca.key --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id "${p%%:*}" --release 1 \
        --units "${p##*:}" --not-after +10 --out "${p%%:*}.gpk" >/dev/null 2>&1
    chmod 0644 "${p%%:*}.gpk"
    expect "import ${p%%:*} (${p##*:} units) through the service" 0 "" -- opctl import "${p%%:*}.gpk"
done
mkdir -p out && chown "$op:$op" out

# ---- race -------------------------------------------------------------------------------

section "race: two clients x two threads on a quota of 60"
for c in a b; do
    mkdir -p "out/race-$c" && chown "$op:$op" "out/race-$c"
    # Each asks for all 60 (a --count beyond the remaining units is refused
    # before the start), together twice the quota.
    opctl provision --product ACME/RACE --count 60 --threads 2 --prefix "R$c-" --out "out/race-$c" --quiet \
        >"race-$c.out" 2>&1 &
    eval "pid_$c=\$!"
done
wait "$pid_a"
rc_a=$?
wait "$pid_b"
rc_b=$?
n=$(find out/race-a out/race-b -name '*.pem' | wc -l)
[ "$n" = 60 ] && ok "race: exactly 60 certificates between the two clients ($(find out/race-a -name '*.pem' | wc -l) + $(find out/race-b -name '*.pem' | wc -l))" ||
    ko "race: $n certificates for a quota of 60"
# A client stops with the quota used up (1), is refused at its start when the
# other has already spent some (1, "units remaining", nothing issued), or got
# all 60 (0); not both 0, and every stop names its reason.
stopped_right() { [ "$1" = 0 ] || { [ "$1" = 1 ] && grep -Eq "QUOTA_EXHAUSTED|units remaining, fewer than" "$2"; }; }
stopped_right "$rc_a" race-a.out && stopped_right "$rc_b" race-b.out && [ "$rc_a$rc_b" != 00 ] &&
    ok "race: the clients stop with CKR_GUARDIAN_QUOTA_EXHAUSTED or are refused at the start (exits $rc_a/$rc_b)" ||
    ko "race: exits $rc_a/$rc_b: $(tail -n 2 race-a.out race-b.out | tr '\n' ' ')"
[ "$(issued RACE)" = 60 ] && ok "race: products says 60 issued" || ko "race: products says $(issued RACE) issued"

# ---- kill -9 of a client's p11-kit-remote -----------------------------------------------

section "child: kill -9 of the p11-kit-remote serving a client, $KILLS times"
mkdir -p out/kill && chown "$op:$op" out/kill
for i in $(seq 1 "$KILLS"); do
    opctl provision --product ACME/KILL --count 3000 --threads 2 --prefix K- --out out/kill --quiet >"kill-$i.out" 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 6 + 3))"
    victims=$(remotes)
    [ -n "$victims" ] && kill -KILL $victims 2>/dev/null
    wait "$pid"
    rc=$?
    if [ "$rc" = 1 ] && grep -q "connection was lost" "kill-$i.out"; then
        ok "kill $i: the client stops with a clear error: $(grep -m1 'connection was lost' "kill-$i.out")"
    elif [ "$rc" = 0 ]; then
        ok "kill $i: the run had finished before the kill"
    else
        ko "kill $i: exit $rc: $(tail -n 2 "kill-$i.out" | tr '\n' ' ')"
    fi
    rm -f out/kill/*.tmp
done
iss=$(issued KILL)
files=$(find out/kill -name '*.pem' | wc -l)
[ -n "$iss" ] && [ "$iss" -le 20000 ] && [ "$iss" -ge "$files" ] &&
    ok "after the kills: issued $iss <= 20000 authorised, >= $files certificates written ($((iss - files)) counted, not issued)" ||
    ko "after the kills: issued '$iss', files $files"

# ---- kill -9 of the whole service -------------------------------------------------------

section "all: kill -9 of the whole service mid-production, then started again"
mkdir -p out/all && chown "$op:$op" out/all
opctl provision --product ACME/KILL --count 3000 --threads 2 --prefix A- --out out/all --quiet >all.out 2>&1 &
pid=$!
sleep 0.5
kill -KILL "$server" $(remotes) 2>/dev/null
wait "$pid"
rc=$?
[ "$rc" = 1 ] && grep -q "connection was lost" all.out &&
    ok "the client sees the service die: exit $rc, $(grep -m1 'connection was lost' all.out)" ||
    ko "the client did not say so: exit $rc, $(tail -n 2 all.out | tr '\n' ' ')"
kill -KILL "$runner" 2>/dev/null
wait "$runner" 2>/dev/null
runner=""
rm -f out/all/*.tmp
before=$(find out/all -name '*.pem' | wc -l)
service_start && ok "the service starts again (pid $server)" || ko "the service does not start again: $(tail -3 service.log)"
opctl provision --product ACME/KILL --count 3000 --threads 2 --prefix A- --out out/all --quiet >resume.out 2>&1
rc=$?
after=$(find out/all -name '*.pem' | wc -l)
iss=$(issued KILL)
# The run resumes where it stopped and makes the rest of the 3000 parts.
if [ "$rc" = 0 ] && [ "$after" = 3000 ]; then
    ok "the client resumes after the restart: $before -> $after certificates ($(tail -n 1 resume.out))"
else
    ko "resume: exit $rc, $before -> $after: $(tail -n 2 resume.out | tr '\n' ' ')"
fi
# What each kill strands is counted and never issued: at most a connection's
# block and its spare (2 x 1024 units, docs/operator-guide.md).
files=$(find out/kill out/all -name '*.pem' | wc -l)
stranded=$((iss - files))
[ "$iss" -le 20000 ] && [ "$stranded" -ge 0 ] && [ "$stranded" -le $(((KILLS + 1) * 2048)) ] &&
    ok "issued $iss <= 20000 for $files certificates: $stranded units counted, not issued, after $((KILLS + 1)) kills" ||
    ko "issued $iss, files $files"

# ---- what the records say ---------------------------------------------------------------

section "the records"
check() { python3 "$HERE/../lib/audit_check.py" "$state/guardian.db" "$@"; }
{ check recorded out/race-a out/race-b out/kill out/all && check operators alice && check chain; } >records.out 2>&1 &&
    ok "$(tr "\n" ";" <records.out)" || { ko "records"; sed 's/^/    /' records.out; }
expect "the operator exports the audit report through the service" 0 "" -- opctl audit export --out out/report.txt
expect "the OEM's verify-report accepts it and counts alice's units" 0 "alice" -- \
    "$W" verify-report out/report.txt --guardian "$conf/guardian.pem" --ca-chain ca.pem --root root.pem --package RACE.gpk --package KILL.gpk
finish
