#!/bin/bash
#
# pykcs11.sh <guardian-pkcs11.so> — PyKCS11 (Debian's python3-pykcs11, run by
# /usr/bin/python3) straight on SoftHSMv2 and through the Guardian module; the
# checks themselves are in pykcs11_compare.py.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
interop_init pykcs11 "$@"

PY=/usr/bin/python3
LABEL=interop

if ! "$PY" -c 'import PyKCS11, cryptography' >"$WORK/log/imports.log" 2>&1; then
    fail "PyKCS11" "$PY cannot import PyKCS11 and cryptography (apt-get install python3-pykcs11 python3-cryptography)" \
        "$WORK/log/imports.log"
    finish
fi

make_token "$LABEL"

rc=0
"$PY" "$INTEROP_DIR/pykcs11_compare.py" "$SOFTHSM_MODULE" "$GUARDIAN_MODULE" "$LABEL" "$USER_PIN" \
    >pykcs11.out 2>pykcs11.err || rc=$?
absorb_results pykcs11.out
if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' pykcs11.out; then
    fail "pykcs11_compare.py" "exit status $rc without a FAIL line" pykcs11.err
fi
if [ "$rc" -eq 0 ] && grep -q '^FAIL ' pykcs11.out; then
    fail "pykcs11_compare.py" "exit status 0 despite FAIL lines"
fi

# Through the module for real: one traced worker run.
GUARDIAN_DEBUG=trace "$PY" "$INTEROP_DIR/pykcs11_compare.py" --worker "$GUARDIAN_MODULE" "$LABEL" "$USER_PIN" \
    sign '{"key_label": "py-module", "hash": "'"$(printf x | sha256sum | cut -c1-64)"'"}' >trace.out 2>trace.err || true
if trace_has trace.err C_Sign && grep -q '"signature"' trace.out; then
    pass "PyKCS11 reached the Guardian module (C_Sign = CKR_OK in its trace)"
else
    fail "PyKCS11 reached the Guardian module" "no C_Sign = CKR_OK in the trace" trace.err
fi

finish
