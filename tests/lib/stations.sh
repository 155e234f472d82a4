# shellcheck shell=bash
# stations.sh — several stations on one PostgreSQL store (issue 12): each
# station is a Guardian of its own (its SoftHSM token, state directory and
# guardian.conf with store = postgresql), and one group package is wrapped for
# all of them.  Shared by integration.store_pg and integration.stations_kill.
#
#   . tests/lib/stations.sh     (after testlib.sh and pg.sh, once pg_up ran)
#   stations_make N             stations 1..N under $work/stN: token stN, state
#                               directory, $work/stN.conf, init (stN.pem in the
#                               cwd) and enroll-oem root.pem for ACME (oem_pki
#                               first); a failure is a ko naming the station
#   station N                   this shell's environment for station N
#   stations_package PRODUCT UNITS N
#                               PRODUCT.gpk: one group package for st1..stN
#   check_recorded DIR...       how many certificate files (*.pem) under the
#                               DIRs have no ISSUE record (by the SHA-256 of
#                               their DER) on the server
#
# The caller sets work, backend (the SoftHSM module), CTL, W and PGOK (the
# three store lines of the configuration).

station() { # N: this shell's environment for station N
    export SOFTHSM2_CONF=$work/st$1/softhsm2.conf GUARDIAN_TOKEN=st$1 GUARDIAN_CONF=$work/st$1.conf
}

stations_make() {
    local n
    for n in $(seq 1 "$1"); do
        mkdir -p "$work/st$n" && mkdir -m 0700 "$work/st$n/state"
        softhsm_token "$work/st$n" "st$n"
        printf 'backend = %s\nstate_dir = %s\nlog_level = error\n%s\n%s\n%s\n' "$backend" "$work/st$n/state" \
            "${PGOK[@]}" >"$work/st$n.conf"
        station "$n"
        "$CTL" init --out "st$n.pem" >/dev/null 2>&1 || ko "station $n: init"
        "$CTL" enroll-oem root.pem --oem-id ACME --yes >/dev/null 2>&1 || ko "station $n: enroll-oem"
    done
}

stations_package() { # PRODUCT UNITS N
    local n certs=()
    for n in $(seq 1 "$3"); do certs+=(--guardian-cert "st$n.pem"); done
    "$W" create "${certs[@]}" --signer-key signer.key --signer-cert signer.pem --ca-key ca.key --ca-cert ca.pem \
        --ca-chain root.pem --oem-id ACME --product-id "$1" --release 1 --units "$2" --not-after +10 \
        --out "$1.gpk" >/dev/null || ko "guardian-wrap create (a group of $3)"
}

check_recorded() {
    local f d missing=0
    pg_psql -c "SELECT encode(digest, 'hex') FROM audit WHERE type = 3" | sort >digests.txt
    for f in $(find "$@" -name '*.pem'); do
        d=$(openssl x509 -in "$f" -outform DER | sha256sum | cut -d' ' -f1)
        grep -qx "$d" digests.txt || missing=$((missing + 1))
    done
    echo "$missing"
}
