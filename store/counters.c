/*
 * counters.c — the production counters: reservations (one unit, or a block
 * of up to GUARDIAN_RESERVE_MAX, counted against the installed release and
 * taking as many serials, one RESERVE record each, committed durably before
 * any is used) and their settling: ISSUE (into this process's issue journal
 * first, for a file-backed store) or RELEASE.  The CHECK constraints of the
 * schema are the last line of defence: not even a bug can issue more than
 * authorised.
 */
#include "store_internal.h"

#include <string.h>
#include <time.h>

#include <openssl/evp.h>

/* This process's row in `holders`, added by its first reservation (file-backed
 * stores: an in-memory store commits every ISSUE at once, so its
 * reservations have no holder).  *id 0: none. */
static CK_RV holder_register_locked(struct guardian_store *st, store_int *id)
{
    struct store_stmt *s = NULL;
    CK_RV rv = CKR_OK;

    *id = 0;
    if (st->journal_fd < 0)
        return CKR_OK;
    if (st->holder_id == 0) {
        rv = stmt_step(st, S_HOLDER_INSERT, &s, NULL, "record this process as a holder", "ti", st->journal_name,
                       (store_int)time(NULL));
        stmt_done(s);
        if (rv != CKR_OK)
            return rv;
        st->holder_id = store_last_insert_id(st);
        st->holder_uncommitted = true; /* store_write forgets it if the transaction rolls back */
    }
    *id = st->holder_id;
    return CKR_OK;
}

struct reserve_args {
    const char *oem_id, *product_id;
    const uint8_t *package_id; /* NULL: whichever release is installed */
    const uint8_t *device_id;  /* NULL for a block reservation */
    size_t device_id_len;
    int64_t now;
    uint64_t want;
    uint64_t first, got; /* out */
};

/* Count up to `want` units (at least one) against the installed release and
 * take as many serials, one RESERVE record each. */
static CK_RV reserve_tx(struct guardian_store *st, void *ctx)
{
    struct reserve_args *a = ctx;
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_product prod;
    struct guardian_audit_record rec;
    struct store_stmt *s = NULL;
    store_int holder = 0;
    bool row = false;
    uint64_t n;

    rv = clock_check_locked(st, a->now, "reservation");
    if (rv != CKR_OK)
        goto out;
    rv = stmt_step(st, S_PRODUCT_GET, &s, &row, "read a product", "tt", a->oem_id, a->product_id);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_GUARDIAN_PRODUCT_UNKNOWN;
        goto out;
    }
    rv = product_from_row(s, &prod);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    if (a->package_id != NULL && memcmp(a->package_id, prod.package_id, GUARDIAN_PACKAGE_ID_LEN) != 0) {
        rv = CKR_GUARDIAN_PACKAGE_SUPERSEDED;
        goto out;
    }
    if (prod.remaining_units == 0) {
        rv = CKR_GUARDIAN_QUOTA_EXHAUSTED;
        goto out;
    }
    if (prod.not_after < a->now) {
        rv = CKR_GUARDIAN_PACKAGE_EXPIRED;
        goto out;
    }
    n = a->want < prod.remaining_units ? a->want : prod.remaining_units;
    if (prod.next_serial > (uint64_t)INT64_MAX - n) {
        guardian_error(STORE_LOG, "the serial counter of a product is exhausted");
        rv = CKR_GUARDIAN_QUOTA_EXHAUSTED;
        goto out;
    }

    /* Count the units; the WHERE clause re-checks the quota in SQL. */
    rv = stmt_step(st, S_PACKAGE_COUNT, &s, NULL, "count units", "bi", prod.package_id, GUARDIAN_PACKAGE_ID_LEN,
                   (store_int)n);
    if (rv != CKR_OK)
        goto out;
    if (store_changes(st) != 1) {
        rv = CKR_GUARDIAN_QUOTA_EXHAUSTED;
        goto out;
    }
    stmt_done(s);

    rv = stmt_step(st, S_SERIAL_ADVANCE, &s, NULL, "advance the serial counter", "ttii", a->oem_id, a->product_id,
                   (store_int)prod.next_serial, (store_int)n);
    if (rv != CKR_OK)
        goto out;
    if (store_changes(st) != 1) {
        guardian_error(STORE_LOG, "the serial counter moved under a write transaction");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    stmt_done(s);

    rv = holder_register_locked(st, &holder);
    if (rv != CKR_OK)
        goto out;
    for (uint64_t i = 0; i < n; i++) {
        rv = record_init(st, &rec, GUARDIAN_AUDIT_RESERVE, a->now, NULL);
        if (rv != CKR_OK)
            goto out;
        memcpy(rec.oem_id, a->oem_id, strlen(a->oem_id) + 1);
        memcpy(rec.product_id, a->product_id, strlen(a->product_id) + 1);
        rec.serial = prod.next_serial + i;
        if (a->device_id != NULL)
            memcpy(rec.device_id, a->device_id, a->device_id_len);
        rec.device_id_len = a->device_id != NULL ? a->device_id_len : 0;
        rv = audit_append(st, &rec);
        if (rv != CKR_OK)
            goto out;
        rv = stmt_step(st, S_ISSUANCE_INSERT, &s, NULL, "record a reservation", "ttibbiN", a->oem_id, a->product_id,
                       (store_int)rec.serial, prod.package_id, GUARDIAN_PACKAGE_ID_LEN, rec.device_id,
                       (int)rec.device_id_len, (store_int)rec.seq, holder);
        if (rv != CKR_OK)
            goto out;
        stmt_done(s);
    }
    a->first = prod.next_serial;
    a->got = n;
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_reserve(struct guardian_store *st, const char *oem_id, const char *product_id,
                             const uint8_t *device_id, size_t device_id_len, int64_t now, uint64_t *serial_out)
{
    struct reserve_args a = {oem_id, product_id, NULL, device_id, device_id_len, now, 1, 0, 0};
    CK_RV rv;

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || !device_id_ok(device_id, device_id_len) ||
        serial_out == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_write(st, true, reserve_tx, &a);
    if (rv == CKR_OK)
        *serial_out = a.first; /* only once it is durable */
    return rv;
}

CK_RV guardian_store_reserve_block(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], int64_t now, uint64_t want,
                                   uint64_t *first_serial, uint64_t *count)
{
    struct reserve_args a = {oem_id, product_id, package_id, NULL, 0, now, want, 0, 0};
    CK_RV rv;

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || want == 0 || want > GUARDIAN_RESERVE_MAX ||
        first_serial == NULL || count == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_write(st, true, reserve_tx, &a);
    if (rv == CKR_OK) {
        *first_serial = a.first;
        *count = a.got;
    }
    return rv;
}

/* Settle a reservation: ISSUE (the certificate left, or is about to leave, the
 * Guardian) or RELEASE (it never will; the unit is counted back). */
CK_RV settle_tx(struct guardian_store *st, void *ctx)
{
    struct issue_args *a = ctx;
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record rec;
    uint8_t reserved_device[GUARDIAN_DEVICE_ID_MAX], package_id[GUARDIAN_PACKAGE_ID_LEN];
    size_t reserved_len = 0;
    struct store_stmt *s = NULL;
    bool row = false;

    rv = stmt_step(st, S_ISSUANCE_GET, &s, &row, "look up a reservation", "tti", a->oem_id, a->product_id,
                   (store_int)a->serial);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        guardian_error(STORE_LOG, "serial %llu of %s/%s was never reserved", (unsigned long long)a->serial,
                       a->oem_id, a->product_id);
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if (!column_blob(s, 0, reserved_device, sizeof(reserved_device), &reserved_len) ||
        !column_blob_exact(s, 3, package_id, sizeof(package_id))) {
        guardian_error(STORE_LOG, "a reservation row is malformed");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    /* A block reservation (no device yet) may be issued to any device; one
     * made for a device only to that device. */
    if (a->type == GUARDIAN_AUDIT_ISSUE && reserved_len != 0 &&
        (reserved_len != a->device_id_len || memcmp(reserved_device, a->device_id, a->device_id_len) != 0)) {
        guardian_error(STORE_LOG, "serial %llu of %s/%s was reserved for another device",
                       (unsigned long long)a->serial, a->oem_id, a->product_id);
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if (a->replay && !col_is_null(s, 1)) {
        /* Folded before, and the journal not yet emptied (a crash between
         * the fold's COMMIT and its truncation): nothing to do. */
        uint8_t recorded[GUARDIAN_HASH_LEN];
        if (column_blob_exact(s, 4, recorded, sizeof(recorded)) &&
            memcmp(recorded, a->digest, GUARDIAN_HASH_LEN) == 0)
            goto out;
        guardian_error(STORE_LOG, "serial %llu of %s/%s: the journal's certificate differs from the recorded one",
                       (unsigned long long)a->serial, a->oem_id, a->product_id);
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    if (!col_is_null(s, 1) || !col_is_null(s, 2)) {
        guardian_error(STORE_LOG, "serial %llu of %s/%s is already %s", (unsigned long long)a->serial, a->oem_id,
                       a->product_id, !col_is_null(s, 1) ? "issued" : "released");
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    stmt_done(s);

    /* From a journal: who issued it, then (not whoever folds it now). */
    rv = record_init(st, &rec, a->type, a->time != 0 ? a->time : (int64_t)time(NULL), a->author);
    if (rv != CKR_OK)
        goto out;
    memcpy(rec.oem_id, a->oem_id, strlen(a->oem_id) + 1);
    memcpy(rec.product_id, a->product_id, strlen(a->product_id) + 1);
    rec.serial = a->serial;
    if (a->type == GUARDIAN_AUDIT_ISSUE) {
        memcpy(rec.device_id, a->device_id, a->device_id_len);
        rec.device_id_len = a->device_id_len;
        memcpy(rec.digest, a->digest, GUARDIAN_HASH_LEN);
    }
    rv = audit_append(st, &rec);
    if (rv != CKR_OK)
        goto out;

    if (a->type == GUARDIAN_AUDIT_ISSUE)
        rv = stmt_step(st, S_ISSUANCE_SET_ISSUED, &s, NULL, "record an issue", "ttiibb", a->oem_id, a->product_id,
                       (store_int)a->serial, (store_int)rec.seq, a->digest, GUARDIAN_HASH_LEN, a->device_id,
                       (int)a->device_id_len);
    else
        rv = stmt_step(st, S_ISSUANCE_SET_RELEASED, &s, NULL, "record a release", "ttii", a->oem_id, a->product_id,
                       (store_int)a->serial, (store_int)rec.seq);
    if (rv != CKR_OK)
        goto out;
    if (store_changes(st) != 1) {
        guardian_error(STORE_LOG, "a reservation changed under a write transaction");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    stmt_done(s);
    if (a->type == GUARDIAN_AUDIT_ISSUE && a->cert != NULL) {
        rv = stmt_step(st, S_CERTIFICATE_INSERT, &s, NULL, "record a certificate", "ib", (store_int)rec.seq,
                       a->cert, (int)a->cert_len);
        if (rv != CKR_OK)
            goto out;
        stmt_done(s);
    }
    if (a->type == GUARDIAN_AUDIT_ISSUE && a->reissue_of == 0) {
        rv = device_index_issue(st, a, rec.seq);
        if (rv != CKR_OK)
            goto out;
    }
    if (a->type == GUARDIAN_AUDIT_ISSUE)
        a->issue_seq = rec.seq;
    if (a->type == GUARDIAN_AUDIT_RELEASE) {
        /* Counted back against the package it was counted against. */
        rv = stmt_step(st, S_PACKAGE_COUNT, &s, NULL, "count a unit back", "bi", package_id,
                       GUARDIAN_PACKAGE_ID_LEN, (store_int)-1);
        if (rv == CKR_OK && store_changes(st) != 1) {
            guardian_error(STORE_LOG, "serial %llu of %s/%s: nothing to count back", (unsigned long long)a->serial,
                           a->oem_id, a->product_id);
            rv = CKR_GUARDIAN_STORE_FAILED;
        }
    }
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_commit_issue(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  uint64_t serial, const uint8_t *device_id, size_t device_id_len,
                                  const uint8_t cert_digest[GUARDIAN_HASH_LEN])
{
    struct issue_args a = {oem_id, product_id, serial, 0, GUARDIAN_AUDIT_ISSUE, device_id, device_id_len,
                           cert_digest, NULL, 0, false, NULL, 0, 0};

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || !device_id_ok(device_id, device_id_len) ||
        cert_digest == NULL || serial == 0 || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, false, settle_tx, &a);
}

CK_RV guardian_store_issue(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                           const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len)
{
    uint8_t digest[GUARDIAN_HASH_LEN];
    unsigned int dl = 0;
    struct issue_args a = {oem_id, product_id, serial, 0, GUARDIAN_AUDIT_ISSUE, device_id, device_id_len,
                           digest, cert, cert_len, false, NULL, 0, 0};

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || !device_id_ok(device_id, device_id_len) ||
        cert == NULL || cert_len == 0 || cert_len > GUARDIAN_CERT_MAX || serial == 0 || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    if (st->journal_fd >= 0)
        return journal_append(st, oem_id, product_id, serial, device_id, device_id_len, cert, cert_len);
    if (EVP_Digest(cert, cert_len, digest, &dl, EVP_sha256(), NULL) != 1 || dl != GUARDIAN_HASH_LEN)
        return CKR_GENERAL_ERROR;
    return store_write(st, false, settle_tx, &a);
}

CK_RV guardian_store_release(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial)
{
    struct issue_args a = {oem_id, product_id, serial, 0, GUARDIAN_AUDIT_RELEASE, NULL, 0, NULL, NULL, 0, false,
                           NULL, 0, 0};

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || serial == 0 || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, false, settle_tx, &a);
}

CK_RV guardian_store_certificate_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                     uint64_t serial, uint8_t **der, size_t *len)
{
    CK_RV rv;
    struct store_stmt *s = NULL;
    bool row = false;

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || der == NULL || len == NULL || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    *der = NULL;
    *len = 0;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_CERTIFICATE_GET, &s, &row, "read a certificate", "tti", oem_id, product_id,
                   (store_int)serial);
    if (rv == CKR_OK && row)
        rv = column_blob_dup(s, 0, der, len);
    stmt_done(s);
    store_leave(st);
    return rv;
}
