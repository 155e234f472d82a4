#!/usr/bin/env bash
# test_errors.sh MODULE GUARDIANCTL GUARDIAN_WRAP — the command-line conventions
# and the errors that say what to do (issue #11, items 5 and 6), each bad input
# with its exit status, the key words of its message, and that nothing was
# spent (the issued count and the audit trail unchanged):
#   --help of every subcommand of both tools without a module, --version,
#   unknown options named; --out files never overwritten silently and checked
#   before anything is spent; --first near 2^64; --count beyond what remains;
#   --token that names no token; the plain SoftHSM module as --module; a
#   directory as a package; a missing, unmounted (empty) or read-only state
#   directory; an unconfigured module (guardianctl says so, the module is
#   silent in p11-kit's clients); the module's error line once, not once per
#   thread; the progress bar within the terminal's width (COLUMNS=40, 200
#   columns); the echo back after SIGINT / SIGTERM at a PIN prompt; dates.
set -uo pipefail
M=$(realpath "${1:?module}") CTL=$(realpath "${2:?guardianctl}") W=$(realpath "${3:?guardian-wrap}")
work=$(mktemp -d "${TMPDIR:-/tmp}/errors-test-XXXXXX")
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done; rm -rf "$work"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$work" || exit 1
# shellcheck source=../lib/testlib.sh
. "$HERE/../lib/testlib.sh"

mkdir state
softhsm_token "$work" err
export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=err
export GUARDIAN_BACKEND=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
unset GUARDIAN_CONF GUARDIAN_DEBUG
oem_pki >/dev/null 2>&1
"$CTL" init --out guardian.pem >/dev/null 2>&1 || { ko "guardianctl init"; finish; exit; }
"$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "enroll-oem"
base=(create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key
    --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id ERR-1 --release 1 --units 20 --not-after +30)
"$W" "${base[@]}" --out err.gpk >/dev/null 2>&1 || ko "guardian-wrap create"
"$CTL" import err.gpk >/dev/null 2>&1 || ko "import"

# An ASan-built module (tests/run-all.sh's second build) needs its runtime
# preloaded into stock tools (p11-kit) and beside libfaketime (as in
# test_boundary.sh).
asan_rt=$(ldd "$M" 2>/dev/null | awk '/libasan/ {print $3; exit}')

# issued: the product's issued count; records: the audit trail's length.
issued() { "$CTL" products 2>/dev/null | awk '$1 == "ACME" && $2 == "ERR-1" { print $5 }'; }
records() { "$CTL" status 2>/dev/null | sed -n 's/^ *audit trail *\([0-9]*\) record.*/\1/p'; }
# unspent NAME: the issued count and the trail as they were at the last call.
unspent() {
    local i r
    i=$(issued) r=$(records)
    [ "$i" = "$ISSUED" ] && [ "$r" = "$RECORDS" ] && ok "$1: nothing spent (issued $i, $r records)" ||
        ko "$1: issued $ISSUED -> $i, records $RECORDS -> $r"
}
ISSUED=$(issued) RECORDS=$(records)
[ "$ISSUED" = 0 ] && [ -n "$RECORDS" ] && ok "set up: ERR-1 imported, nothing issued" || ko "set up: issued '$ISSUED' records '$RECORDS'"

# ---- item 5: conventions -----------------------------------------------------------------
for c in init import-cert cert enroll-oem list-oems remove-oem import products status provision audit; do
    expect_rc "guardianctl $c --help: exit 0 without a module" 0 "^usage: guardianctl .* $c" -- \
        env GUARDIAN_MODULE=/nonexistent "$CTL" "$c" --help
done
for c in create inspect verify-report; do
    expect_rc "guardian-wrap $c --help: exit 0 without a module" 0 "^usage: guardian-wrap $c" -- \
        env GUARDIAN_MODULE=/nonexistent "$W" "$c" --help
    expect_rc "guardian-wrap $c: an unknown option named, exit 2" 2 "unknown option '--frob'" -- "$W" "$c" --frob
done
expect_rc "guardian-wrap --version" 0 "^guardian-wrap [0-9]+\.[0-9]+\.[0-9]+$" -- "$W" --version
expect_rc "guardianctl --version" 0 "^guardianctl [0-9]+\.[0-9]+\.[0-9]+$" -- env GUARDIAN_MODULE=/nonexistent "$CTL" --version
expect_rc "guardianctl cert: an unknown option named, exit 2" 2 "cert: unknown option '--outt'" -- "$CTL" cert --outt x
for d in 2027-02-30 2027-13-01 2027-02-29; do
    expect_rc "--not-after $d refused, exit 2" 2 "--not-after '$d' is not a date" -- "$W" "${base[@]/+30/$d}" --out d.gpk
done
expect_rc "--not-after 2028-02-29 taken" 0 "wrote d28.gpk" -- "$W" "${base[@]/+30/2028-02-29}" --out d28.gpk
expect_rc "verify-report of a missing file: exit 1, as every failure" 1 "cannot" -- \
    "$W" verify-report missing.txt --guardian guardian.pem --ca-chain ca.pem

# --passin stdin (openssl's forms; pass:, env:, file:, fd: in test_guardian_wrap.sh).
openssl pkey -in signer.key -aes256 -passout pass:s3cret -out signer-enc.key 2>/dev/null
printf 's3cret\n' >pw.txt
expect_rc "--passin stdin" 0 "wrote enc.gpk" -- bash -c '"$0" "$@" <pw.txt' "$W" "${base[@]/signer.key/signer-enc.key}" \
    --passin stdin --out enc.gpk

# Output files: never overwritten without --force, checked before the token.
echo keep >exists.pem
expect_rc "cert --out an existing file: refused, naming --force" 1 "exists.pem exists: not overwritten \(give --force" -- \
    "$CTL" cert --out exists.pem
[ "$(cat exists.pem)" = keep ] && ok "the existing file is untouched" || ko "cert replaced exists.pem"
expect_rc "init --out an existing file: refused" 1 "init: exists.pem exists: not overwritten" -- "$CTL" init --out exists.pem
expect_rc "init --csr an existing file: refused" 1 "init: exists.pem exists" -- "$CTL" init --csr exists.pem
expect_rc "cert --out --force replaces it" 0 "" -- "$CTL" cert --out exists.pem --force
cmp -s exists.pem guardian.pem && ok "cert --force wrote the certificates" || ko "cert --force: exists.pem differs"
echo keep >report.txt
expect_rc "audit export --out an existing file: refused" 1 "report.txt exists: not overwritten \(give --force" -- \
    "$CTL" audit export --out report.txt
unspent "audit export over an existing file"
expect_rc "audit export --out into a missing directory: refused first" 1 \
    "cannot write nodir/r.txt: the directory nodir does not exist" -- "$CTL" audit export --out nodir/r.txt
unspent "audit export into a missing directory"
expect_rc "audit export --out a directory: refused" 1 "is a directory" -- "$CTL" audit export --out state
ls ./*.tmp-* >/dev/null 2>&1 && ko "temporary files left" || ok "no temporary file left"

# The progress bar fits the terminal: COLUMNS on a terminal that gives no size,
# and the size a terminal gives.
expect_rc "progress within COLUMNS=40" 0 "bars, the widest ([0-9]|[1-3][0-9]) columns" -- \
    env COLUMNS=40 python3 "$HERE/pty_checks.py" progress 0 "$CTL" provision --product ACME/ERR-1 --count 2 --out p40
expect_rc "progress within a 200-column terminal" 0 "bars, the widest 199 columns" -- \
    env COLUMNS=40 python3 "$HERE/pty_checks.py" progress 200 "$CTL" provision --product ACME/ERR-1 --count 2 --first 3 --out p200
ISSUED=$(issued) RECORDS=$(records)

# The echo comes back when SIGINT / SIGTERM hits the PIN prompt.
expect_rc "SIGINT at the PIN prompt: echo restored, exit 130" 0 "on again after SIGINT" -- \
    python3 "$HERE/pty_checks.py" echo "$CTL" status
expect_rc "SIGTERM at the PIN prompt: echo restored, exit 130" 0 "on again after SIGTERM" -- \
    env SIGNAL=TERM python3 "$HERE/pty_checks.py" echo "$CTL" status
# guardian-wrap's passphrase prompt (an encrypted key, no --passin, a terminal).
expect_rc "SIGINT at guardian-wrap's passphrase prompt: echo restored, exit 130" 0 "on again after SIGINT" -- \
    python3 "$HERE/pty_checks.py" echo "$W" "${base[@]/signer.key/signer-enc.key}" --out tty.gpk
[ ! -e tty.gpk ] && ok "an interrupted passphrase prompt writes nothing" || ko "tty.gpk written after SIGINT"

# ---- item 6: errors that say what to do ----------------------------------------------------
prov=(provision --product ACME/ERR-1)
expect_rc "--out that cannot take a file (/proc): refused before any unit" 1 "no new file can be made in /proc" -- \
    "$CTL" "${prov[@]}" --count 2 --out /proc
touch plainfile
expect_rc "--out a regular file: refused before any unit" 1 "plainfile is not a directory" -- \
    "$CTL" "${prov[@]}" --count 2 --out plainfile
unspent "--out that cannot be written"
expect_rc "--first near 2^64: refused, the limit named" 2 "beyond the largest part number, 9223372036854775807" -- \
    "$CTL" "${prov[@]}" --count 2 --first 18446744073709551615 --out big
expect_rc "--first beyond 2^64: refused" 2 "--first '18446744073709551616' is larger than" -- \
    "$CTL" "${prov[@]}" --count 2 --first 18446744073709551616 --out big
expect_rc "--first + --count past the limit: refused" 2 "largest part number" -- \
    "$CTL" "${prov[@]}" --count 2 --first 9223372036854775807 --out big
unspent "--first near 2^64"
remaining=$((20 - ISSUED))
expect_rc "--count beyond what remains: refused before starting" 1 \
    "--count 100: ACME/ERR-1 has only $remaining units remaining.*nothing was issued" -- "$CTL" "${prov[@]}" --count 100 --out many
unspent "--count beyond what remains"
expect_rc "--token that names no token: the tokens listed" 1 "no token labelled 'nope'.*the tokens there are: .*'err'" -- \
    "$CTL" --token nope products
expect_rc "the plain SoftHSM module as --module: said, the Guardian module named" 1 \
    "is not the Guardian module .*SoftHSM.*use --module .*guardian-pkcs11.so" -- "$CTL" --module "$GUARDIAN_BACKEND" products
mkdir pkgdir
expect_rc "a directory as a package: said before the module" 1 "pkgdir is a directory, not a package" -- "$CTL" import pkgdir
: >empty.gpk
expect_rc "an empty package file: said before the module" 1 "empty.gpk has 0 bytes" -- "$CTL" import empty.gpk
unspent "bad packages"

# The state directory: missing with its parent (a mount point gone), empty (a
# file system not mounted over it), read-only.
expect_rc "state dir missing, and its parent: which, what, what to do" 1 \
    "state directory $work/gone/state \(GUARDIAN_STATE_DIR\) does not exist, nor its parent.*mount it" -- \
    env GUARDIAN_STATE_DIR="$work/gone/state" "$CTL" "${prov[@]}" --count 1 --out s1
[ ! -e "$work/gone" ] && ok "nothing created for a missing state directory" || ko "$work/gone was created"
expect_rc "state dir missing: products says so" 0 "state directory $work/gone/state .*does not exist: no product is shown" -- \
    env GUARDIAN_STATE_DIR="$work/gone/state" "$CTL" products
mkdir -m 700 emptystate
expect_rc "state dir empty (not mounted): said" 1 "state in $work/emptystate is empty while the token has seen record.*mounted" -- \
    env GUARDIAN_STATE_DIR="$work/emptystate" "$CTL" "${prov[@]}" --count 1 --out s2
if [ "$(id -u)" -eq 0 ] && unshare -m true 2>/dev/null; then
    # As root a mode refuses nothing: a read-only bind mount in a private
    # mount namespace (gone with the command).
    expect_rc "state dir read-only: which, what, what to do" 1 \
        "state directory $work/state \(GUARDIAN_STATE_DIR\) is on a read-only file system.*remount it read-write" -- \
        unshare -m --propagation private sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"' \
        sh "$work/state" "$CTL" "${prov[@]}" --count 1 --out s3
    expect_rc "CKR_GUARDIAN_STATE_UNAVAILABLE named" 1 "CKR_GUARDIAN_STATE_UNAVAILABLE" -- \
        unshare -m --propagation private sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"' \
        sh "$work/state" "$CTL" "${prov[@]}" --count 1 --out s3
    out=$(unshare -m --propagation private sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"' \
        sh "$work/state" "$CTL" products 2>&1)
    output_matches "state dir read-only: products says so" \
        "^guardian\[[0-9]+\]: warn: store: the state directory $work/state .*read-only file system: no product is shown" "$out"
    grep -q "cannot open" <<<"$out" && shown_ko "state dir read-only: SQLite's open error shown" "$out" ||
        ok "state dir read-only: one line, not SQLite's open error"
else
    chmod 500 state
    expect_rc "state dir not writable: which, what, what to do" 1 "state directory $work/state .*is not writable.*chmod 700" -- \
        "$CTL" "${prov[@]}" --count 1 --out s3
    chmod 700 state
fi
unspent "state directory missing, empty or read-only"

# The module's error line once, not once per thread: four workers refused for
# the same reason (a clock behind the trail) print one line.
if command -v faketime >/dev/null; then
    out=$(env FAKETIME_DONT_FAKE_MONOTONIC=1 ${asan_rt:+ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0} \
        timeout 120 faketime -f '-2d' "$CTL" "${prov[@]}" --count 4 --threads 4 --first 100 --out clock 2>&1)
    n=$(grep -c "^guardian\[[0-9]*\]: error: .*clock" <<<"$out")
    [ "$n" = 1 ] && ok "one module error line for 4 threads" || shown_ko "module error lines for 4 threads: $n, not 1" "$out"
    ISSUED=$(issued) RECORDS=$(records)
else
    ko "faketime is not installed (tools/debian-packages)"
fi

# Not configured: guardianctl says what to write; the module says nothing on
# stderr (every p11-kit client loads registered modules).
expect_rc "unconfigured module: guardianctl says so" 1 "is not configured: no configuration file .*GUARDIAN_CONF" -- \
    env -u GUARDIAN_BACKEND -u GUARDIAN_STATE_DIR "$CTL" products
out=$(env -u GUARDIAN_BACKEND -u GUARDIAN_STATE_DIR "$CTL" products 2>&1)
grep -q "^guardian\[" <<<"$out" && shown_ko "unconfigured: the module wrote to stderr" "$out" || ok "unconfigured: no module line on stderr"
if [ -n "$asan_rt" ]; then
    # p11-kit loads every registered module; with the ASan runtime preloaded
    # into it, one of Debian's (tpm2, opensc) never returns (measured): the
    # p11-kit cases run in the normal build.
    echo "SKIP p11-kit list-modules with an ASan-built module (runs in the normal build)"
elif command -v p11-kit >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then MODDIR=/etc/pkcs11/modules; else MODDIR=$HOME/.config/pkcs11/modules; fi
    MODFILE=$MODDIR/guardian-errors-test-$$.module
    if mkdir -p "$MODDIR" && printf 'module: %s\ncritical: no\n' "$M" >"$MODFILE"; then
        cleanup+=("rm -f '$MODFILE'")
        out=$(env -i PATH="$PATH" HOME="${HOME:-/root}" timeout 60 p11-kit list-modules 2>&1 >/dev/null)
        [ $? -eq 124 ] && ko "p11-kit list-modules did not return in 60 s"
        grep -qi "guardian" <<<"$out" && shown_ko "p11-kit list-modules, unconfigured: the module spoke on stderr" "$out" ||
            ok "p11-kit list-modules, unconfigured: nothing from the module on stderr"
        out=$(env -i PATH="$PATH" HOME="${HOME:-/root}" timeout 60 p11-kit list-modules 2>/dev/null)
        grep -q "guardian-errors-test-$$" <<<"$out" && shown_ko "unconfigured: p11-kit lists the module" "$out" ||
            ok "unconfigured: p11-kit skips the module (C_Initialize failed quietly)"
        # The same registration, configured: listed (the test can tell).
        out=$(env -i PATH="$PATH" HOME="${HOME:-/root}" SOFTHSM2_CONF="$SOFTHSM2_CONF" GUARDIAN_BACKEND="$GUARDIAN_BACKEND" \
            GUARDIAN_STATE_DIR="$work/state" timeout 60 p11-kit list-modules 2>/dev/null)
        grep -q "guardian-errors-test-$$" <<<"$out" && ok "configured: p11-kit lists the module" ||
            shown_ko "configured: p11-kit does not list the module" "$out"
    else
        ko "cannot register the module with p11-kit in $MODDIR"
    fi
else
    ko "p11-kit is not installed"
fi
unspent "the error cases"
finish
