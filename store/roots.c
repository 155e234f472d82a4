/*
 * roots.c — the ledger of enrolled OEM roots (schema 7; store.h).
 *
 * On a token that cannot be trusted to hold OEM roots (a plain user can make
 * a CKA_TRUSTED certificate there, or nobody can), the roots the Guardian's
 * own Security Officer enrolled are kept here, each with an ENROL audit
 * record in the hash chain, which the token's anchor fixes
 * (mechs/anchor.c).  A row counts only when its record is in the verified
 * chain at or before the anchored head, with the row's content: a row
 * inserted or altered with sqlite3 has no such record, and a record appended
 * after the anchored head (the chain recomputed) is not anchored.
 * (docs/threat-model.md section 2, docs/audit-format.md record type 11.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "module.h"
#include "store_internal.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "store"

static bool sha256(const void *p, size_t n, uint8_t out[GUARDIAN_HASH_LEN])
{
    unsigned int len = 0;
    return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == GUARDIAN_HASH_LEN;
}

static CK_RV record_fill(struct guardian_audit_record *r, int action, const uint8_t digest[GUARDIAN_HASH_LEN],
                         const char *ids, int64_t now)
{
    memset(r, 0, sizeof(*r));
    r->type = GUARDIAN_AUDIT_ENROL;
    r->time = now;
    r->serial = (uint64_t)action;
    memcpy(r->digest, digest, GUARDIAN_HASH_LEN);
    r->device_id_len = GUARDIAN_HASH_LEN;
    return sha256(ids, strlen(ids), r->device_id) ? CKR_OK : CKR_GENERAL_ERROR;
}

/* ---- enrol ------------------------------------------------------------------ */

struct enrol_args {
    const uint8_t *der;
    size_t der_len;
    const char *ids;
    int64_t now;
    uint8_t digest[GUARDIAN_HASH_LEN];
    struct guardian_audit_record rec;
    bool already;
};

static CK_RV enrol_tx(struct guardian_store *st, sqlite3 *db, void *ctx)
{
    struct enrol_args *a = ctx;
    sqlite3_stmt *s = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;
    int rc = sqlite3_prepare_v2(db, "SELECT oem_ids FROM roots WHERE sha256 = ?1", -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 1, a->digest, GUARDIAN_HASH_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const unsigned char *old = sqlite3_column_text(s, 0);
        if (old != NULL && strcmp((const char *)old, a->ids) == 0) {
            a->already = true;
            rv = CKR_OK;
        } else {
            guardian_error(LOG, "this root is in the ledger for other OEM IDs ('%s'): remove it first",
                           old ? (const char *)old : "");
            rv = CKR_GUARDIAN_REQUEST_INVALID;
        }
        goto out;
    }
    if (rc != SQLITE_DONE) {
        rv = guardian_store_internal_sqlite(st, rc, "read the root ledger");
        goto out;
    }
    sqlite3_finalize(s);
    s = NULL;
    rv = record_fill(&a->rec, GUARDIAN_ENROL_ENROLLED, a->digest, a->ids, a->now);
    if (rv == CKR_OK)
        rv = guardian_store_internal_append(st, &a->rec);
    if (rv != CKR_OK)
        goto out;
    rc = sqlite3_prepare_v2(db,
                            "INSERT INTO roots (sha256, der, oem_ids, enrolled_at, operator, enrol_seq) "
                            "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 1, a->digest, GUARDIAN_HASH_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 2, a->der, (int)a->der_len, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 3, a->ids, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 4, a->now);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 5, a->rec.operator_name, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 6, (sqlite3_int64)a->rec.seq);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_DONE)
        rc = SQLITE_OK;
    rv = guardian_store_internal_sqlite(st, rc, "write the root ledger");
out:
    sqlite3_finalize(s);
    return rv;
}

CK_RV guardian_store_root_enrol(struct guardian_store *st, const uint8_t *der, size_t der_len, const char *oem_ids,
                                int64_t now, struct guardian_audit_record *record, bool *already)
{
    struct enrol_args a;
    CK_RV rv;

    if (st == NULL || der == NULL || der_len == 0 || der_len > GUARDIAN_ROOT_DER_MAX || oem_ids == NULL ||
        oem_ids[0] == '\0' || strlen(oem_ids) > GUARDIAN_ROOT_IDS_MAX || already == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(&a, 0, sizeof(a));
    a.der = der;
    a.der_len = der_len;
    a.ids = oem_ids;
    a.now = now;
    if (!sha256(der, der_len, a.digest))
        return CKR_GENERAL_ERROR;
    rv = guardian_store_internal_write(st, enrol_tx, &a);
    *already = a.already;
    if (rv == CKR_OK && record != NULL)
        *record = a.rec;
    return rv;
}

/* ---- remove ----------------------------------------------------------------- */

struct remove_args {
    const uint8_t *digest;
    int64_t now;
    bool found;
};

static CK_RV remove_tx(struct guardian_store *st, sqlite3 *db, void *ctx)
{
    struct remove_args *a = ctx;
    struct guardian_audit_record rec;
    char ids[GUARDIAN_ROOT_IDS_MAX + 1] = "";
    sqlite3_stmt *s = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;
    int rc = sqlite3_prepare_v2(db, "SELECT oem_ids FROM roots WHERE sha256 = ?1", -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 1, a->digest, GUARDIAN_HASH_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_text(s, 0) != NULL)
        snprintf(ids, sizeof(ids), "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    s = NULL;
    if (rc == SQLITE_DONE)
        return CKR_OK; /* no row: nothing to record */
    if (rc != SQLITE_ROW)
        return guardian_store_internal_sqlite(st, rc, "read the root ledger");
    a->found = true;
    rc = sqlite3_prepare_v2(db, "DELETE FROM roots WHERE sha256 = ?1", -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 1, a->digest, GUARDIAN_HASH_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_finalize(s);
    rv = guardian_store_internal_sqlite(st, rc, "delete from the root ledger");
    if (rv == CKR_OK)
        rv = record_fill(&rec, GUARDIAN_ENROL_REMOVED, a->digest, ids, a->now);
    if (rv == CKR_OK)
        rv = guardian_store_internal_append(st, &rec);
    return rv;
}

CK_RV guardian_store_root_remove(struct guardian_store *st, const uint8_t sha256_[GUARDIAN_HASH_LEN], int64_t now,
                                 bool *found)
{
    struct remove_args a = {sha256_, now, false};
    CK_RV rv;
    if (st == NULL || sha256_ == NULL || found == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = guardian_store_internal_write(st, remove_tx, &a);
    *found = a.found;
    return rv;
}

/* ---- read ------------------------------------------------------------------- */

struct rows {
    struct guardian_root_row *row;
    uint8_t **der;
    size_t n, cap;
};

static void rows_free(struct rows *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->der[i]);
    free(r->row);
    free(r->der);
    memset(r, 0, sizeof(*r));
}

/* Every row into memory (the callbacks then run without the store's lock). */
static CK_RV rows_read_tx(struct guardian_store *st, sqlite3 *db, void *ctx)
{
    struct rows *r = ctx;
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT sha256, der, oem_ids, enrolled_at, operator, enrol_seq FROM roots "
                                "ORDER BY enrol_seq, sha256",
                                -1, &s, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct guardian_root_row *x;
        const void *sha = sqlite3_column_blob(s, 0), *der = sqlite3_column_blob(s, 1);
        int sha_len = sqlite3_column_bytes(s, 0), der_len = sqlite3_column_bytes(s, 1);
        const unsigned char *ids = sqlite3_column_text(s, 2), *op = sqlite3_column_text(s, 4);
        rc = SQLITE_OK;
        if (sha == NULL || sha_len != GUARDIAN_HASH_LEN || der == NULL || der_len <= 0 ||
            der_len > GUARDIAN_ROOT_DER_MAX || ids == NULL || strlen((const char *)ids) > GUARDIAN_ROOT_IDS_MAX ||
            op == NULL || strlen((const char *)op) > GUARDIAN_OPERATOR_MAX || sqlite3_column_int64(s, 5) < 1) {
            guardian_error(LOG, "a row of the root ledger is malformed: skipped (the state was edited outside the "
                                "Guardian)");
            continue;
        }
        if (r->n == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 8;
            struct guardian_root_row *nr = realloc(r->row, cap * sizeof(*nr));
            uint8_t **nd = nr ? realloc(r->der, cap * sizeof(*nd)) : NULL;
            if (nr != NULL)
                r->row = nr;
            if (nd == NULL) {
                sqlite3_finalize(s);
                return CKR_HOST_MEMORY;
            }
            r->der = nd;
            r->cap = cap;
        }
        x = &r->row[r->n];
        memset(x, 0, sizeof(*x));
        if ((r->der[r->n] = malloc((size_t)der_len)) == NULL) {
            sqlite3_finalize(s);
            return CKR_HOST_MEMORY;
        }
        memcpy(r->der[r->n], der, (size_t)der_len);
        memcpy(x->sha256, sha, GUARDIAN_HASH_LEN);
        x->der = r->der[r->n];
        x->der_len = (size_t)der_len;
        snprintf(x->oem_ids, sizeof(x->oem_ids), "%s", (const char *)ids);
        x->enrolled_at = sqlite3_column_int64(s, 3);
        snprintf(x->operator_name, sizeof(x->operator_name), "%s", (const char *)op);
        x->seq = (uint64_t)sqlite3_column_int64(s, 5);
        r->n++;
    }
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_finalize(s);
    return guardian_store_internal_sqlite(st, rc, "read the root ledger");
}

CK_RV guardian_store_roots_each(struct guardian_store *st, CK_RV (*fn)(const struct guardian_root_row *r, void *ctx),
                                void *ctx)
{
    struct rows r;
    CK_RV rv;
    if (st == NULL || fn == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(&r, 0, sizeof(r));
    rv = guardian_store_internal_read(st, rows_read_tx, &r);
    for (size_t i = 0; rv == CKR_OK && i < r.n; i++)
        rv = fn(&r.row[i], ctx);
    rows_free(&r);
    return rv;
}

/* What the verified chain says of each row: its ENROL record (by seq) and
 * whether a removal of that root follows it. */
struct witness {
    struct rows *rows;
    struct guardian_audit_record *rec; /* [i]: the record at rows->row[i].seq, if seen */
    bool *seen, *removed;
    uint64_t anchored;
};

#define WITNESS_STOP CKR_CANCEL /* past the anchored head: stop the walk (nothing in store/ returns it) */

static CK_RV witness_record(const struct guardian_audit_record *r, void *ctx)
{
    struct witness *w = ctx;
    if (r->seq > w->anchored)
        return WITNESS_STOP;
    for (size_t i = 0; i < w->rows->n; i++) {
        if (r->seq == w->rows->row[i].seq) {
            w->rec[i] = *r;
            w->seen[i] = true;
        } else if (w->seen[i] && r->type == GUARDIAN_AUDIT_ENROL && r->serial == GUARDIAN_ENROL_REMOVED &&
                   memcmp(r->digest, w->rows->row[i].sha256, GUARDIAN_HASH_LEN) == 0) {
            w->removed[i] = true;
        }
    }
    return CKR_OK;
}

static const char *row_problem(const struct witness *w, size_t i, const char *operator_name)
{
    const struct guardian_root_row *x = &w->rows->row[i];
    const struct guardian_audit_record *r = &w->rec[i];
    uint8_t der_hash[GUARDIAN_HASH_LEN], ids_hash[GUARDIAN_HASH_LEN];

    if (x->seq > w->anchored)
        return "its ENROL record is after the head the token's anchor fixes";
    if (!w->seen[i])
        return "its ENROL record is not in the verified chain";
    if (r->type != GUARDIAN_AUDIT_ENROL || r->serial != GUARDIAN_ENROL_ENROLLED)
        return "the record it names is not an enrolment";
    if (!sha256(x->der, x->der_len, der_hash) || memcmp(der_hash, x->sha256, GUARDIAN_HASH_LEN) != 0 ||
        memcmp(r->digest, der_hash, GUARDIAN_HASH_LEN) != 0)
        return "its certificate is not the one its ENROL record names";
    if (!sha256(x->oem_ids, strlen(x->oem_ids), ids_hash) || r->device_id_len != GUARDIAN_HASH_LEN ||
        memcmp(r->device_id, ids_hash, GUARDIAN_HASH_LEN) != 0)
        return "its OEM IDs are not the ones its ENROL record names";
    if (strcmp(r->operator_name, operator_name) != 0)
        return "its ENROL record was not written by the Guardian's Security Officer";
    if (w->removed[i])
        return "the chain records its removal";
    return NULL;
}

CK_RV guardian_store_roots_verified(struct guardian_store *st, uint64_t anchored_seq, const char *operator_name,
                                    CK_RV (*fn)(const struct guardian_root_row *r, void *ctx), void *ctx,
                                    size_t *skipped)
{
    struct rows r;
    struct witness w;
    size_t bad = 0;
    CK_RV rv;

    if (st == NULL || fn == NULL || operator_name == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(&r, 0, sizeof(r));
    memset(&w, 0, sizeof(w));
    rv = guardian_store_internal_read(st, rows_read_tx, &r);
    if (rv != CKR_OK || r.n == 0)
        goto out;
    w.rows = &r;
    w.anchored = anchored_seq;
    w.rec = calloc(r.n, sizeof(*w.rec));
    w.seen = calloc(r.n, sizeof(*w.seen));
    w.removed = calloc(r.n, sizeof(*w.removed));
    if (w.rec == NULL || w.seen == NULL || w.removed == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    /* The chain from record 1, each hash checked, up to the anchored head. */
    rv = guardian_store_audit_each(st, witness_record, &w);
    if (rv == WITNESS_STOP)
        rv = CKR_OK;
    if (rv != CKR_OK)
        goto out;
    for (size_t i = 0; rv == CKR_OK && i < r.n; i++) {
        const char *why = row_problem(&w, i, operator_name);
        if (why != NULL) {
            char hex[17];
            for (int k = 0; k < 8; k++)
                snprintf(hex + 2 * k, 3, "%02x", r.row[i].sha256[k]);
            guardian_error(LOG, "OEM root sha256 %s... in the ledger does not count: %s (the state was edited "
                                "outside the Guardian, or the root was removed)",
                           hex, why);
            bad++;
            continue;
        }
        rv = fn(&r.row[i], ctx);
    }
out:
    if (skipped != NULL)
        *skipped = bad;
    free(w.rec);
    free(w.seen);
    free(w.removed);
    rows_free(&r);
    return rv;
}
