/*
 * retire.c — the RETIRE record of a superseded release whose production CA
 * key is destroyed (guardian_store_record_retire): refused for the installed
 * release, idempotent (a second retire returns the first record).
 */
#include "store_internal.h"

#include <stdio.h>
#include <string.h>

/* ---- the audit trail: retired production CA keys ----------------------------------------- */

struct retire_args {
    const char *oem_id, *product_id;
    uint32_t release;
    int64_t now;
    struct guardian_audit_record rec;
    bool already;
};


static CK_RV retire_tx(struct guardian_store *st, void *ctx)
{
    struct retire_args *a = ctx;
    struct store_stmt *s = NULL;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    uint64_t current = 0, seq = 0, t = 0;
    bool row = false;
    CK_RV rv = stmt_step(st, S_RETIRE_PACKAGE, &s, &row, "read the package to retire", "tti", a->oem_id,
                         a->product_id, (store_int)a->release);

    if (rv != CKR_OK)
        goto out;
    if (!row) {
        guardian_error(STORE_LOG, "no release %u of %s/%s was imported", (unsigned)a->release, a->oem_id,
                       a->product_id);
        rv = CKR_GUARDIAN_PRODUCT_UNKNOWN;
        goto out;
    }
    rv = CKR_GUARDIAN_AUDIT_CORRUPT;
    if (!column_blob_exact(s, 0, package_id, sizeof(package_id)) || !column_uint(s, 1, 1, &current))
        goto out;
    if (current) {
        guardian_error(STORE_LOG, "release %u of %s/%s is the installed one: its production CA key is not retired",
                       (unsigned)a->release, a->oem_id, a->product_id);
        rv = CKR_GUARDIAN_RELEASE_CURRENT;
        goto out;
    }
    stmt_done(s);
    rv = stmt_step(st, S_RETIRE_RECORD, &s, &row, "look for the release's RETIRE record", "ib",
                   (store_int)GUARDIAN_AUDIT_RETIRE, package_id, (int)sizeof(package_id));
    if (rv != CKR_OK)
        goto out;
    memset(&a->rec, 0, sizeof(a->rec));
    if (row) {
        const char *op = col_text(s, 2);
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        if (!column_uint(s, 0, INT64_MAX, &seq) || !column_uint(s, 1, INT64_MAX, &t) ||
            !column_blob_exact(s, 3, a->rec.hash, sizeof(a->rec.hash)))
            goto out;
        a->already = true;
        a->rec.type = GUARDIAN_AUDIT_RETIRE;
        a->rec.seq = seq;
        a->rec.time = (int64_t)t;
        snprintf(a->rec.operator_name, sizeof(a->rec.operator_name), "%s", op != NULL ? op : "");
    } else {
        rv = record_init(st, &a->rec, GUARDIAN_AUDIT_RETIRE, a->now, NULL);
        if (rv != CKR_OK)
            goto out;
        snprintf(a->rec.oem_id, sizeof(a->rec.oem_id), "%s", a->oem_id);
        snprintf(a->rec.product_id, sizeof(a->rec.product_id), "%s", a->product_id);
        a->rec.release_version = a->release;
        memcpy(a->rec.package_id, package_id, sizeof(package_id));
        if ((rv = audit_append(st, &a->rec)) != CKR_OK)
            goto out;
    }
    snprintf(a->rec.oem_id, sizeof(a->rec.oem_id), "%s", a->oem_id);
    snprintf(a->rec.product_id, sizeof(a->rec.product_id), "%s", a->product_id);
    memcpy(a->rec.package_id, package_id, sizeof(package_id));
    a->rec.release_version = a->release;
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_record_retire(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   uint32_t release, int64_t now, struct guardian_audit_record *record, bool *already)
{
    struct retire_args a;
    CK_RV rv;

    if (st == NULL || record == NULL || already == NULL || !id_ok(oem_id) || !id_ok(product_id))
        return CKR_ARGUMENTS_BAD;
    memset(&a, 0, sizeof(a));
    a.oem_id = oem_id;
    a.product_id = product_id;
    a.release = release;
    a.now = now;
    rv = store_write(st, true, retire_tx, &a);
    if (rv == CKR_OK) {
        *record = a.rec;
        *already = a.already;
    }
    return rv;
}
