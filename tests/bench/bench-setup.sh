# bench-setup.sh — sourced by cert-bench.sh and service-bench.sh: the token
# and Guardian state a certificate benchmark runs on.
#
#   bench_setup WORK LABEL UNITS
#
# In WORK (the current directory): a SoftHSM token LABEL (user PIN 1234),
# a Guardian state directory WORK/state, guardianctl init, an OEM PKI made
# with OpenSSL, enroll-oem, guardian-wrap create (ACME/BENCH release 1, UNITS
# units) and guardianctl import.  Needs SRC (the source tree), CTL, W
# (guardianctl, guardian-wrap), M (the module) and BACKEND; exports
# SOFTHSM2_CONF and the GUARDIAN_* variables the tools and the module read.
# shellcheck shell=bash

bench_setup() {
    local work=$1 label=$2 units=$3
    # shellcheck source=../lib/testlib.sh
    . "$SRC/tests/lib/testlib.sh"
    mkdir "$work/state"
    softhsm_token "$work" "$label"
    export GUARDIAN_STATE_DIR=$work/state GUARDIAN_MODULE=$M GUARDIAN_TOKEN=$label
    export GUARDIAN_BACKEND=$BACKEND GUARDIAN_PIN=1234 GUARDIAN_SO_PIN=12345678
    unset GUARDIAN_CONF GUARDIAN_DEBUG
    oem_pki >/dev/null 2>&1
    "$CTL" init --out guardian.pem >/dev/null
    "$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null
    "$W" create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem --ca-key ca.key \
        --ca-cert ca.pem --ca-chain root.pem --oem-id ACME --product-id BENCH --release 1 --units "$units" \
        --not-after +30 --out bench.gpk >/dev/null
    "$CTL" import bench.gpk >/dev/null
}
