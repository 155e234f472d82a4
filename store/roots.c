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

/* A new ENROL record (action, the root's digest, the digest of its OEM IDs)
 * appended inside the caller's write transaction; `r` gets seq and operator. */
static CK_RV enrol_record(struct guardian_store *st, struct guardian_audit_record *r, int action,
                          const uint8_t digest[GUARDIAN_HASH_LEN], const char *ids, int64_t now)
{
    CK_RV rv = record_init(st, r, GUARDIAN_AUDIT_ENROL, now, NULL);
    if (rv != CKR_OK)
        return rv;
    r->serial = (uint64_t)action;
    memcpy(r->digest, digest, GUARDIAN_HASH_LEN);
    r->device_id_len = GUARDIAN_HASH_LEN;
    if (!sha256(ids, strlen(ids), r->device_id))
        return CKR_GENERAL_ERROR;
    return audit_append(st, r);
}

/* The OEM IDs of the ledger's row for `digest`: *found false when there is none. */
static CK_RV row_ids(struct guardian_store *st, const uint8_t digest[GUARDIAN_HASH_LEN], bool *found,
                     char ids[GUARDIAN_ROOT_IDS_MAX + 1])
{
    struct store_stmt *s = NULL;
    CK_RV rv = stmt_step(st, S_ROOT_IDS_GET, &s, found, "read the root ledger", "b", digest, GUARDIAN_HASH_LEN);
    ids[0] = '\0';
    if (rv == CKR_OK && *found) {
        const char *t = col_text(s, 0);
        snprintf(ids, GUARDIAN_ROOT_IDS_MAX + 1, "%s", t ? t : "");
    }
    stmt_done(s);
    return rv;
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

static CK_RV enrol_tx(struct guardian_store *st, void *ctx)
{
    struct enrol_args *a = ctx;
    struct store_stmt *s = NULL;
    char old[GUARDIAN_ROOT_IDS_MAX + 1];
    bool found = false;
    CK_RV rv = row_ids(st, a->digest, &found, old);

    if (rv != CKR_OK)
        return rv;
    if (found) {
        if (strcmp(old, a->ids) == 0) {
            a->already = true;
            return CKR_OK;
        }
        guardian_error(LOG, "this root is in the ledger for other OEM IDs ('%s'): remove it first", old);
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    rv = enrol_record(st, &a->rec, GUARDIAN_ENROL_ENROLLED, a->digest, a->ids, a->now);
    if (rv == CKR_OK)
        rv = stmt_step(st, S_ROOT_INSERT, &s, NULL, "write the root ledger", "bbtiti", a->digest,
                       GUARDIAN_HASH_LEN, a->der, (int)a->der_len, a->ids, (store_int)a->now, a->rec.operator_name,
                       (store_int)a->rec.seq);
    stmt_done(s);
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
    rv = store_write(st, true, enrol_tx, &a);
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

static CK_RV remove_tx(struct guardian_store *st, void *ctx)
{
    struct remove_args *a = ctx;
    struct guardian_audit_record rec;
    struct store_stmt *s = NULL;
    char ids[GUARDIAN_ROOT_IDS_MAX + 1];
    CK_RV rv = row_ids(st, a->digest, &a->found, ids);

    if (rv != CKR_OK || !a->found)
        return rv; /* no row: nothing to record */
    rv = stmt_step(st, S_ROOT_DELETE, &s, NULL, "delete from the root ledger", "b", a->digest, GUARDIAN_HASH_LEN);
    stmt_done(s);
    if (rv == CKR_OK)
        rv = enrol_record(st, &rec, GUARDIAN_ENROL_REMOVED, a->digest, ids, a->now);
    return rv;
}

CK_RV guardian_store_root_remove(struct guardian_store *st, const uint8_t sha256_[GUARDIAN_HASH_LEN], int64_t now,
                                 bool *found)
{
    struct remove_args a = {sha256_, now, false};
    CK_RV rv;
    if (st == NULL || sha256_ == NULL || found == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_write(st, true, remove_tx, &a);
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

/* One row into memory; *skip when it is malformed (logged). */
static CK_RV row_read(struct store_stmt *s, struct rows *r)
{
    struct guardian_root_row x;
    uint8_t *der = NULL;
    size_t der_len = 0;
    uint64_t seq = 0;
    const char *ids = col_text(s, 2);
    CK_RV rv;

    memset(&x, 0, sizeof(x));
    if (!column_blob_exact(s, 0, x.sha256, GUARDIAN_HASH_LEN) || ids == NULL ||
        strlen(ids) > GUARDIAN_ROOT_IDS_MAX || !col_is_int(s, 3) || !column_operator(s, 4, x.operator_name) ||
        !column_uint(s, 5, INT64_MAX, &seq) || seq < 1) {
        guardian_error(LOG, "a row of the root ledger is malformed: skipped (the state was edited outside the "
                            "Guardian)");
        return CKR_OK;
    }
    rv = column_blob_dup(s, 1, &der, &der_len);
    if (rv != CKR_OK)
        return rv;
    if (der == NULL || der_len > GUARDIAN_ROOT_DER_MAX) {
        free(der);
        guardian_error(LOG, "a row of the root ledger is malformed: skipped (the state was edited outside the "
                            "Guardian)");
        return CKR_OK;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 8;
        struct guardian_root_row *nr = realloc(r->row, cap * sizeof(*nr));
        uint8_t **nd = nr ? realloc(r->der, cap * sizeof(*nd)) : NULL;
        if (nr != NULL)
            r->row = nr;
        if (nd == NULL) {
            free(der);
            return CKR_HOST_MEMORY;
        }
        r->der = nd;
        r->cap = cap;
    }
    snprintf(x.oem_ids, sizeof(x.oem_ids), "%s", ids);
    x.enrolled_at = col_int(s, 3);
    x.seq = seq;
    x.der = der;
    x.der_len = der_len;
    r->der[r->n] = der;
    r->row[r->n++] = x;
    return CKR_OK;
}

/* Every row into memory (the callbacks then run without the store's lock). */
static CK_RV rows_read(struct guardian_store *st, struct rows *r)
{
    struct store_stmt *s = NULL;
    bool row = false;
    CK_RV rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_ROOTS_ALL, &s, &row, "read the root ledger", "");
    while (rv == CKR_OK && row) {
        rv = row_read(s, r);
        if (rv == CKR_OK)
            rv = stmt_next(st, s, &row, "read the root ledger");
    }
    stmt_done(s);
    store_leave(st);
    return rv;
}

CK_RV guardian_store_roots_each(struct guardian_store *st, CK_RV (*fn)(const struct guardian_root_row *r, void *ctx),
                                void *ctx)
{
    struct rows r;
    CK_RV rv;
    if (st == NULL || fn == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(&r, 0, sizeof(r));
    rv = rows_read(st, &r);
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
    rv = rows_read(st, &r);
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
