#!/bin/bash
#
# p11kit.sh <guardian-pkcs11.so> — the module registered with p11-kit, beside
# Debian's softhsm2.module: `p11-kit list-modules` must show our module with
# the SoftHSM token, and our section's token lines must equal the softhsm2
# section's; the p11-kit proxy must list our slots too.
#
# As root p11-kit reads only /etc/pkcs11/modules/*.module and
# /usr/share/p11-kit/modules/*.module, so the registration is a temporary
# /etc/pkcs11/modules/guardian-interop-test.module, removed on exit (with the
# directories, when this script created them).  As another user it goes into
# the test's own $HOME/.config/pkcs11/modules.  Two runs of this script must
# not overlap (ctest: RESOURCE_LOCK).
#
# Registered beside softhsm2.module, SoftHSM is loaded once and shared by both
# entries (the same library): p11-kit initialises the modules in turn and
# SoftHSM answers the second C_Initialize with CKR_CRYPTOKI_ALREADY_INITIALIZED.
# The "late registration" probe at the end records how the module fares when
# it is the second one (not asserted).

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init p11kit "$@"

M=$GUARDIAN_MODULE
D=$SOFTHSM_MODULE
LABEL=interop
NAME=guardian-interop-test
PROXY=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null || true)
[ -n "$PROXY" ] || PROXY=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so

make_token "$LABEL"

if [ "$(id -u)" -eq 0 ]; then
    MODDIR=/etc/pkcs11/modules
else
    MODDIR=$HOME/.config/pkcs11/modules
fi

# Make MODDIR, remembering (for clean-up) each directory we created.
# shellcheck disable=SC2317 # called through on_exit
remove_created_dirs() {
    local d
    for d in "$@"; do rmdir "$d"; done
}
created=()
d=$MODDIR
while [ ! -d "$d" ]; do
    created+=("$d")
    d=$(dirname "$d")
done
must "create $MODDIR" mkdir -p "$MODDIR"
# Deepest first: created[] is already in that order.
[ ${#created[@]} -eq 0 ] || on_exit remove_created_dirs "${created[@]}"

MODFILE=$MODDIR/$NAME.module
MARKER="# Temporary: written by tests/interop/p11kit.sh, pid"
if [ -e "$MODFILE" ]; then
    # Left behind by a run that was killed (its pid is gone): take it over.
    owner=
    first=$(head -n 1 "$MODFILE")
    case $first in
    "$MARKER "[0-9]*) owner=${first#"$MARKER "} ;;
    esac
    if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
        info "p11-kit: replacing $MODFILE left behind by pid $owner"
    else
        fail "register $NAME" "$MODFILE already exists (another run in progress, or not ours)"
        finish
    fi
fi
on_exit rm -f "$MODFILE"
printf '%s %d\nmodule: %s\ncritical: no\n' "$MARKER" "$$" "$M" >"$MODFILE"

# Which entry is the raw SoftHSM one: Debian's softhsm2.module normally.
SOFTHSM_ENTRY=
if [ -f /usr/share/p11-kit/modules/softhsm2.module ] || [ -f /etc/pkcs11/modules/softhsm2.module ]; then
    SOFTHSM_ENTRY=softhsm2
else
    SOFTHSM_ENTRY=guardian-interop-softhsm
    on_exit rm -f "$MODDIR/$SOFTHSM_ENTRY.module"
    printf 'module: %s\n' "$D" >"$MODDIR/$SOFTHSM_ENTRY.module"
fi

# section NAME FILE: the lines of p11-kit list-modules under "NAME: path".
section() {
    awk -v name="$1" '
        /^[^ \t]/ { inside = (index($0, name ": ") == 1); next }
        inside { print }' "$2"
}

# ---- p11-kit list-modules ------------------------------------------------------

rc=0
GUARDIAN_DEBUG=trace p11-kit list-modules >list.out 2>list.err || rc=$?
check_eq "p11-kit list-modules exits 0" 0 "$rc"
check_grep "p11-kit list-modules shows $NAME: $M" "^$NAME: $M\$" list.out
section "$NAME" list.out >ours.section
section "$SOFTHSM_ENTRY" list.out >softhsm.section
check_grep "p11-kit list-modules: our library-manufacturer is Guardian PKCS#11" \
    '^    library-manufacturer: Guardian PKCS#11$' ours.section
check_grep "p11-kit list-modules: token $LABEL under $NAME" "^    token: $LABEL\$" ours.section
grep -E '^    token: |^        ' ours.section >ours.tokens || true
grep -E '^    token: |^        ' softhsm.section >softhsm.tokens || true
check_same "p11-kit list-modules: token lines $SOFTHSM_ENTRY = $NAME" softhsm.tokens ours.tokens
normalise_info softhsm.section >softhsm.section.n
normalise_info ours.section >ours.section.n
check_same "p11-kit list-modules: whole sections equal but library lines" softhsm.section.n ours.section.n
if trace_has list.err C_Initialize && trace_has list.err C_GetTokenInfo; then
    pass "p11-kit loaded the Guardian module (C_Initialize, C_GetTokenInfo = CKR_OK in its trace)"
else
    fail "p11-kit loaded the Guardian module" "no C_Initialize/C_GetTokenInfo = CKR_OK in the trace" list.err
fi
if grep -Eq '^guardian\[[0-9]+\]: (error|warn):' list.err; then
    fail "p11-kit list-modules: no Guardian errors or warnings" "see below" list.err
else
    pass "p11-kit list-modules: no Guardian errors or warnings"
fi

# ---- through the p11-kit proxy ---------------------------------------------------

if [ -f "$PROXY" ]; then
    rc=0
    GUARDIAN_DEBUG=trace pkcs11-tool --module "$PROXY" -L >proxy.out 2>proxy.err || rc=$?
    check_eq "pkcs11-tool -L through p11-kit-proxy exits 0" 0 "$rc"
    # Token $LABEL once from the softhsm2 entry and once from ours.
    n=$(grep -Ec "^  token label +: $LABEL\$" proxy.out || true)
    check_eq "p11-kit-proxy lists token $LABEL twice (softhsm2 and Guardian)" 2 "$n"
    if trace_has proxy.err C_GetTokenInfo; then
        pass "p11-kit-proxy reached the Guardian module (C_GetTokenInfo = CKR_OK in its trace)"
    else
        fail "p11-kit-proxy reached the Guardian module" "no C_GetTokenInfo = CKR_OK in the trace" proxy.err
    fi
else
    skip "p11-kit-proxy" "$PROXY not found"
fi

# ---- registered after the raw SoftHSM entry: the backend is shared -----------

# p11-kit initialises modules in name order (after priority); "zz-" sorts after
# softhsm2, so SoftHSM is already initialised in this process when our
# C_Initialize reaches it.  The module must share it (module/state.c), not
# report success while staying uninitialised.
LATE=$MODDIR/zz-$NAME.module
rm -f "$MODFILE"
on_exit rm -f "$LATE"
printf 'module: %s\ncritical: no\n' "$M" >"$LATE"
GUARDIAN_DEBUG=debug p11-kit list-modules >late.out 2>late.err || true
rm -f "$LATE"
if section "zz-$NAME" late.out | grep -q "^    token: $LABEL\$"; then
    pass "registered after softhsm2 (backend already initialized): the module lists token $LABEL"
else
    fail "registered after softhsm2 (backend already initialized): the module lists token $LABEL" \
        "no token line" late.err
fi

finish
