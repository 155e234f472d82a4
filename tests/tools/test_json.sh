#!/usr/bin/env bash
# test_json.sh MODULE GUARDIANCTL GUARDIAN_WRAP — guardianctl's line-controller
# interface on a fresh SoftHSM token: every --json output (products, import,
# list-oems, status, status --watch, provision, audit export, and the error
# object of a refusal and of a usage error) parses as JSON and carries the
# members docs/guardianctl.md lists, with the types it gives; times are ISO
# 8601 UTC; provision's manifest lists every certificate file with its serial
# (as openssl x509 -serial prints it) and SHA-256 (as sha256sum of the DER),
# survives a resume (a file without its line gets it, a cut last line is
# dropped); status reports the running line's rate and ETA, and a corrupted
# audit row now (exit 1, CKR_GUARDIAN_AUDIT_CORRUPT).
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/json-test-XXXXXX")
trap 'rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" json
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=json
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG

oem_pki
"$CTL" init --out guardian.pem >/dev/null 2>&1 || { ko "guardianctl init"; finish; exit; }
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id LINE --release 1 --units 500 \
    --not-after +10 --out line.gpk >/dev/null || ko "guardian-wrap create"

# schema FILE CHECK: FILE holds one JSON object (or JSON lines with --lines)
# and the python expression CHECK, over `o` (the object), holds.
schema() {
    local name=$1 file=$2 check=$3
    if python3 - "$file" "$check" <<'PY'; then ok "$name"; else shown_ko "$name" "$(cat "$file")"; fi
import json, re, sys
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
HEX = re.compile(r"^[0-9a-f]+$")
def iso(v): return isinstance(v, str) and ISO.match(v) is not None
def hexs(v, n=None): return isinstance(v, str) and HEX.match(v) is not None and (n is None or len(v) == n)
def uint(v): return isinstance(v, int) and not isinstance(v, bool) and v >= 0
def time_pair(o, k):
    import calendar, time
    return iso(o[k]) and uint(o[k + "_unix"]) and calendar.timegm(time.strptime(o[k], "%Y-%m-%dT%H:%M:%SZ")) == o[k + "_unix"]
text = open(sys.argv[1]).read()
assert text.endswith("\n") and text.count("\n") == 1, "not exactly one line"
o = json.loads(text)
if not eval("(" + sys.argv[2] + ")"):
    sys.exit("schema check failed: " + sys.argv[2])
PY
}

# ---- import, products, list-oems --------------------------------------------------------------
"$CTL" import line.gpk --json >import.json 2>import.err
rc=$?
[ $rc = 0 ] && [ ! -s import.err ] && ok "import --json: exit 0, nothing on stderr" || shown_ko "import --json: exit $rc" "$(cat import.err)"
schema "import --json: the documented members" import.json \
    'o["imported"] == "line.gpk" and hexs(o["package_id"], 32) and o["oem_id"] == "ACME" and o["product_id"] == "LINE"
     and o["release"] == 1 and o["authorised_units"] == 500 and o["remaining_units"] == 500 and time_pair(o, "not_after")'
"$CTL" products --json >products.json 2>&1
schema "products --json" products.json \
    'len(o["products"]) == 1 and all(set(p) >= {"oem_id", "product_id", "release", "package_id", "authorised_units",
     "issued_units", "remaining_units", "not_after", "not_after_unix", "expired"} for p in o["products"])
     and o["products"][0]["remaining_units"] == 500 and o["products"][0]["expired"] is False
     and time_pair(o["products"][0], "not_after")'
expect "products: NOT AFTER in ISO 8601" 0 "ACME +LINE .* 20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z" -- "$CTL" products
"$CTL" list-oems --json >oems.json 2>&1
rootfpr=$(openssl x509 -in root.pem -outform DER | sha256sum | cut -c1-64)
schema "list-oems --json" oems.json \
    "o['oem_roots'][0]['sha256'] == '$rootfpr' and o['oem_roots'][0]['oem_ids'] == ['ACME'] and 'ACME Root' in o['oem_roots'][0]['subject']"

# ---- errors: one JSON object on stdout, the message on stderr, the same exit codes -----------
"$CTL" import line.gpk --json >err.json 2>err.txt
rc=$?
[ $rc = 1 ] && grep -q "CKR_GUARDIAN_PACKAGE_REPLAYED" err.txt && ok "a refusal: exit 1, stderr names it" ||
    shown_ko "a refusal: exit $rc" "$(cat err.txt)"
schema "a refusal: {error: {code, message}} on stdout" err.json \
    'set(o) == {"error"} and o["error"]["code"] == "CKR_GUARDIAN_PACKAGE_REPLAYED" and "already imported" in o["error"]["message"]'
# String escaping: a file name with a quote, a backslash, a tab, a newline, U+0001, DEL, UTF-8 (é,
# U+1F600) and a byte that is no UTF-8 (0xff) comes back as the same text (0xff as U+FFFD).
weird=$(printf 'a"b\\c\td\ne\001f\177g\303\251h\360\237\230\200i\377j.gpk')
cp line.gpk "$weird"
"$CTL" import "$weird" --json >err.json 2>/dev/null
if python3 -c '
import json, os, sys
o = json.load(open("err.json", encoding="utf-8"))
name = [n for n in os.listdir(".") if n.startswith("a\"")][0]
want = os.fsencode(name).decode("utf-8", "replace")
raw = open("err.json", "rb").read()
assert want in o["error"]["message"], (want, o["error"]["message"])
assert all(b >= 0x20 for b in raw[:-1]) and raw.endswith(b"\n") and b"\xff" not in raw, raw
'; then ok "JSON strings: control characters escaped, UTF-8 kept, invalid bytes as U+FFFD"; else ko "JSON string escaping"; fi
"$CTL" products --json --bogus >err.json 2>err.txt
rc=$?
[ $rc = 2 ] && grep -q "unknown option '--bogus'" err.txt && ok "a usage error: exit 2" || shown_ko "a usage error: exit $rc" "$(cat err.txt)"
schema "a usage error as JSON" err.json 'o["error"]["code"] == "CKR_ARGUMENTS_BAD" and "--bogus" in o["error"]["message"]'

# ---- provision --json and the manifest ---------------------------------------------------------
"$CTL" provision --product ACME/LINE --count 30 --out run --json >prov.json 2>prov.err
rc=$?
[ $rc = 0 ] && [ ! -s prov.err ] && ok "provision --json: exit 0, no progress text" || shown_ko "provision --json: exit $rc" "$(cat prov.err)"
schema "provision --json: the summary" prov.json \
    'o["oem_id"] == "ACME" and o["product_id"] == "LINE" and o["issued"] == 30 and o["skipped"] == 0 and o["failed"] == 0
     and o["count"] == 30 and o["first"] == 1 and o["manifest"] == "run/manifest.jsonl" and o["interrupted"] is False
     and isinstance(o["rate_per_s"], float) and isinstance(o["elapsed_s"], float) and "error" not in o'

# check_manifest DIR N: DIR/manifest.jsonl has exactly one line per certificate file (N), each
# naming its file, the file's SHA-256 (DER) and serial as openssl prints them.
check_manifest() {
    local dir=$1 n=$2 bad=0 lines f id
    lines=$(wc -l <"$dir/manifest.jsonl")
    [ "$lines" = "$n" ] && [ "$(find "$dir" -name '*.pem' | wc -l)" = "$n" ] || {
        ko "$dir: $lines manifest lines, $(find "$dir" -name '*.pem' | wc -l) files, expected $n"
        return
    }
    python3 -c '
import json, sys
for l in open(sys.argv[1]):
    o = json.loads(l)
    print(o["device_id"], o["file"], o["serial"], o["sha256"], o["issued"], o["issued_unix"])
' "$dir/manifest.jsonl" >"$dir.fields" || { ko "$dir: a manifest line is not JSON"; return; }
    [ "$(cut -d' ' -f1 "$dir.fields" | sort -u | wc -l)" = "$n" ] || { ko "$dir: a device listed twice"; return; }
    while read -r id f serial sha iso unix; do
        [ "$f" = "$id.pem" ] &&
            [ "$(openssl x509 -in "$dir/$f" -noout -serial)" = "serial=$serial" ] &&
            [ "$(openssl x509 -in "$dir/$f" -outform DER | sha256sum | cut -c1-64)" = "$sha" ] &&
            [ "$(date -u -d "@$unix" +%Y-%m-%dT%H:%M:%SZ)" = "$iso" ] || { bad=$((bad + 1)); echo "    bad: $id $f $serial"; }
    done <"$dir.fields"
    [ $bad = 0 ] && ok "$dir: $n manifest lines match their files (openssl serial, sha256sum, ISO time)" ||
        ko "$dir: $bad manifest lines do not match their files"
}
check_manifest run 30

# Resume: a file whose line a crash lost gets it back; a cut last line is dropped; the rest appends.
grep -v '"SN-000007"' run/manifest.jsonl >m && mv m run/manifest.jsonl
printf '{"device_id":"SN-000031","ser' >>run/manifest.jsonl
"$CTL" provision --product ACME/LINE --count 40 --out run --json >prov2.json 2>prov2.err
schema "resume: 10 issued, 30 skipped" prov2.json 'o["issued"] == 10 and o["skipped"] == 30'
grep -q "incomplete line" prov2.err && ok "resume: the cut line is said to be dropped" || shown_ko "resume: cut line" "$(cat prov2.err)"
check_manifest run 40
expect "--manifest elsewhere" 0 "provisioned 5 parts" -- \
    "$CTL" provision --product ACME/LINE --count 5 --first 100 --out run2 --manifest other.jsonl
[ "$(wc -l <other.jsonl)" = 5 ] && [ ! -e run2/manifest.jsonl ] && ok "--manifest FILE: 5 lines there" || ko "--manifest FILE"

# ---- status: JSON, rate and ETA, --watch ------------------------------------------------------
"$CTL" status --json >status.json 2>status.err
rc=$?
[ $rc = 0 ] && ok "status --json: exit 0" || shown_ko "status --json: exit $rc" "$(cat status.err)"
schema "status --json: token, backend with its protections, identity, roots, state, products with rate" status.json \
    'time_pair(o, "time") and o["token"]["label"] == "json" and uint(o["token"]["flags"])
     and o["backend"]["library"].endswith(".so") and len(o["backend"]["protections"]) > 0
     and o["backend"]["store"] == "sqlite" and o["backend"]["store_location"] == o["backend"]["state_dir"] + "/guardian.db"
     and all(set(p) == {"name", "verdict", "ckr", "what"} for p in o["backend"]["protections"])
     and len(o["identity"]["certificate"]["sha256"]) == 64 and o["identity"]["signing_key"] is True
     and o["oem_roots"][0]["oem_ids"] == ["ACME"]
     and o["state"]["audit_chain"] == "ok" and uint(o["state"]["audit_records"]) and time_pair(o["state"], "audit_head_time")
     and o["state"]["records"]["issue"] == 45 and o["state"]["anchor"] in ("agrees", "store-ahead")
     and o["state"]["service_mode"] is False and o["rate_window_s"] == 60
     and o["products"][0]["issued_units"] == 45 and 0 < o["products"][0]["issued_recent"] <= 45
     and abs(o["products"][0]["rate_per_s"] - o["products"][0]["issued_recent"] / 60) < 0.001
     and o["products"][0]["eta_s"] == round(455 / o["products"][0]["rate_per_s"])
     and time_pair(o["products"][0], "eta") and o["products"][0]["eta_unix"] == o["time_unix"] + o["products"][0]["eta_s"]
     and "error" not in o'
expect "status: the running line's rate and ETA" 0 "ACME +LINE .* [0-9.]+/s, ETA [0-9]+:[0-9]{2}:[0-9]{2} \(20[0-9-]+T[0-9:]+Z\)" -- "$CTL" status
expect "status: audit head time in ISO 8601" 0 "hash chain intact; head [0-9]+, 20[0-9-]+T[0-9:]+Z" -- "$CTL" status
timeout --preserve-status -s INT 3.5 "$CTL" status --json --watch 1 >watch.json 2>watch.err
rc=$?
n=$(wc -l <watch.json)
if [ $rc = 0 ] && [ "$n" -ge 2 ] && python3 -c '
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1])]
assert all(o["state"]["audit_chain"] == "ok" for o in objs)' watch.json; then
    ok "status --json --watch 1: $n JSON lines in 3.5 s, exit 0 on SIGINT"
else
    shown_ko "status --watch: exit $rc, $n lines" "$(cat watch.err)"
fi
timeout --preserve-status -s INT 2.5 "$CTL" status --watch 1 >watch.txt 2>&1
rc=$?
n=$(grep -c "^Guardian state" watch.txt)
[ $rc = 0 ] && [ "$n" -ge 2 ] && ! grep -q $'\033' watch.txt && ok "status --watch 1 into a pipe: $n reports, no screen clearing" ||
    shown_ko "status --watch (text): exit $rc, $n reports" "$(head -5 watch.txt)"
expect_rc "status --watch 0 is a usage error" 2 "--watch takes a number of seconds" -- "$CTL" status --watch 0

# ---- audit export --json -----------------------------------------------------------------------
"$CTL" audit export --out report.txt --json >audit.json 2>audit.err
schema "audit export --json" audit.json \
    'o["out"] == "report.txt" and uint(o["records"]) and o["certificates"] == 45 and o["redacted"] == 0
     and hexs(o["guardian_sha256"], 64) and time_pair(o, "exported") and o["head_seq"] == o["records"]'

# ---- corruption: reported by status now, exit 1, JSON carries the error ------------------------
cp state/guardian.db pristine.db
python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute("UPDATE audit SET time = time + 1 WHERE seq = 3"); db.commit()' state/guardian.db
"$CTL" status --json >bad.json 2>bad.err
rc=$?
[ $rc = 1 ] && grep -q CKR_GUARDIAN_AUDIT_CORRUPT bad.err && ok "status on a corrupted trail: exit 1, stderr says CKR_GUARDIAN_AUDIT_CORRUPT" ||
    shown_ko "status on a corrupted trail: exit $rc" "$(cat bad.err)"
schema "status --json on a corrupted trail: the report with the error" bad.json \
    'o["state"]["audit_chain"] == "corrupt" and o["error"]["code"] == "CKR_GUARDIAN_AUDIT_CORRUPT" and o["state"]["audit_records"] == 2'
expect_rc "status (text) on a corrupted trail" 1 "hash chain BROKEN after record 2 \(CKR_GUARDIAN_AUDIT_CORRUPT\)" -- "$CTL" status
cp pristine.db state/guardian.db
expect "status once the row is put back" 0 "hash chain intact" -- "$CTL" status

# ---- retire-ca: a superseded release's CA key destroyed, recorded, shown by verify-report --------
"$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id LINE --release 2 --units 2000 \
    --not-after +10 --out line2.gpk >/dev/null && "$CTL" import line2.gpk >/dev/null 2>&1 || ko "release 2 imported"
# the CA key objects of each release, as the backend itself lists them
ca_keys() { pkcs11-tool --module "$GUARDIAN_BACKEND" --token-label json --login --pin 1234 -O 2>/dev/null |
    grep -c "label: *guardian:ACME/LINE/r$1:production-ca"; }
[ "$(ca_keys 1)" = 2 ] && ok "before: release 1's CA key and certificate are in the token" || ko "before: $(ca_keys 1) objects of r1"
expect_rc "retire-ca of the installed release: refused" 1 "release 2 of ACME/LINE is the installed one \(CKR_GUARDIAN_RELEASE_CURRENT\)" -- \
    "$CTL" retire-ca --product ACME/LINE --release 2 --yes
expect_rc "retire-ca without --yes and no terminal: refused" 1 "no terminal to confirm: pass --yes" -- \
    "$CTL" retire-ca --product ACME/LINE --release 1
expect_rc "retire-ca of a release never imported" 1 "no release 7 of ACME/LINE was imported .*CKR_GUARDIAN_PRODUCT_UNKNOWN" -- \
    "$CTL" retire-ca --product ACME/LINE --release 7 --yes
expect_rc "retire-ca --help: its usage, no module" 0 "^usage: guardianctl .* retire-ca --product OEM/PRODUCT --release N" -- \
    env GUARDIAN_MODULE=/nonexistent "$CTL" retire-ca --help
expect_rc "retire-ca --release x: usage" 2 "--release must be a release number" -- "$CTL" retire-ca --product ACME/LINE --release x
"$CTL" retire-ca --product ACME/LINE --release 1 --yes --json >retire.json 2>retire.err
schema "retire-ca --json: release 1 retired, recorded now, 1 key and 1 certificate destroyed" retire.json \
    'o["oem_id"] == "ACME" and o["release"] == 1 and hexs(o["package_id"], 32) and uint(o["record"])
     and o["recorded_now"] is True and o["keys_destroyed"] == 1 and o["certificates_destroyed"] == 1'
[ "$(ca_keys 1)" = 0 ] && [ "$(ca_keys 2)" = 2 ] && ok "after: release 1's CA key and certificate are gone, release 2's stay" ||
    ko "after: r1 $(ca_keys 1), r2 $(ca_keys 2) objects"
expect_rc "retire-ca twice: refused" 1 "retired already \(CKR_GUARDIAN_CA_RETIRED\)" -- \
    "$CTL" retire-ca --product ACME/LINE --release 1 --yes
python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT oem_id, product_id, release_version, serial, authorised_units, hex(package_id) FROM audit WHERE type = 10").fetchall()
pkg = db.execute("SELECT hex(package_id) FROM packages WHERE release_version = 1").fetchone()[0]
assert rows == [("ACME", "LINE", 1, 0, 0, pkg)], rows' state/guardian.db &&
    ok "one RETIRE record (type 10): ACME/LINE release 1, its package" || ko "the RETIRE record"
expect "provision goes on with release 2" 0 "provisioned 3 parts" -- "$CTL" provision --product ACME/LINE --count 3 --first 500 --out run3
"$CTL" audit export --out retired.report >/dev/null 2>&1
expect "verify-report shows the retirement and verifies" 0 \
    "retired +record [0-9]+ 20[0-9-]+T[0-9:]+Z by .*: the production CA key of ACME/LINE release 1 \(package [0-9a-f]{32}\)" -- \
    "$W" verify-report retired.report --guardian guardian.pem --ca-chain ca.pem --root root.pem
"$CTL" status --json >status2.json 2>&1
schema "status --json counts the RETIRE record" status2.json 'o["state"]["records"]["retire"] == 1'

# kill -9 in the middle of a run: every line names a file that exists (a line is written only once its
# file is on disk); the resumed run lists every file, the ones the kill left without a line included.
"$CTL" provision --product ACME/LINE --count 400 --first 2000 --out killed --quiet >/dev/null 2>&1 &
pid=$!
for _ in $(seq 200); do [ -s killed/manifest.jsonl ] && break; sleep 0.05; done
kill -9 $pid
wait $pid 2>/dev/null
missing=0
while read -r f; do [ -e "killed/$f" ] || missing=$((missing + 1)); done < <(python3 -c '
import json, sys
for l in open(sys.argv[1]):
    print(json.loads(l)["file"])' killed/manifest.jsonl)
files=$(find killed -name '*.pem' | wc -l)
[ $missing = 0 ] && ok "kill -9: $(wc -l <killed/manifest.jsonl) manifest lines, $files files, every line's file exists" ||
    ko "kill -9: $missing manifest lines name no file"
"$CTL" provision --product ACME/LINE --count 400 --first 2000 --out killed --quiet >/dev/null 2>&1 || ko "resume after kill -9"
check_manifest killed 400

finish
