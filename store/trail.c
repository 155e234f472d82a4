/*
 * trail.c — the hash-chained audit trail in the database: the head (the last
 * record's seq and hash, and the newest time of any record: the clock
 * check), appending a record inside a write transaction, the operator every
 * record names, reading the trail back page by page while verifying the
 * chain (guardian_store_audit_each), and the EXPORT record with the products
 * as they stand at it.  The records' encoding and hash are audit.c's.
 */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AUDIT_PAGE_RECORDS 64

/* A row of S_AUDIT_PAGE; false if any field is out of its domain. */
static bool audit_from_row(struct store_stmt *s, struct guardian_audit_record *r)
{
    uint64_t type = 0, release = 0, encoding = 0;

    memset(r, 0, sizeof(*r));
    if (!column_uint(s, 0, INT64_MAX, &r->seq) || !column_uint(s, 1, GUARDIAN_AUDIT_TYPE_MAX, &type) ||
        type < GUARDIAN_AUDIT_IMPORT || !col_is_int(s, 2) || !column_id(s, 3, r->oem_id) ||
        !column_id(s, 4, r->product_id) || !column_uint(s, 5, INT64_MAX, &r->serial) ||
        !column_blob(s, 6, r->device_id, sizeof(r->device_id), &r->device_id_len) ||
        !column_blob_exact(s, 7, r->digest, sizeof(r->digest)) ||
        !column_blob_exact(s, 8, r->package_id, sizeof(r->package_id)) || !column_uint(s, 9, UINT32_MAX, &release) ||
        !column_uint(s, 10, INT64_MAX, &r->authorised_units) ||
        !column_blob_exact(s, 11, r->prev_hash, sizeof(r->prev_hash)) ||
        !column_blob_exact(s, 12, r->hash, sizeof(r->hash)) || !column_operator(s, 13, r->operator_name) ||
        !column_uint(s, 14, GUARDIAN_AUDIT_ENCODING_3, &encoding) || encoding < GUARDIAN_AUDIT_ENCODING_1 ||
        !column_blob(s, 15, r->guardian, sizeof(r->guardian), &r->guardian_len) ||
        (r->guardian_len != 0 && r->guardian_len != GUARDIAN_HASH_LEN))
        return false;
    r->type = (int)type;
    r->time = col_int(s, 2);
    r->release_version = (uint32_t)release;
    r->encoding = (int)encoding;
    return true;
}

/* ---- the audit trail: append (inside a write transaction) ------------------------ */

/* The head: the last record's seq and hash, and the newest time of any record
 * (*has_time false while the trail is empty); max_time may be NULL. */
static CK_RV audit_head_read(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN],
                             int64_t *max_time, bool *has_time)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    bool row = false;

    rv = stmt_step(st, S_HEAD_GET, &s, &row, "read the audit head", "");
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        guardian_error(STORE_LOG, "the audit head is missing");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    if (!column_uint(s, 0, INT64_MAX - 1, seq) || !column_blob_exact(s, 1, hash, GUARDIAN_HASH_LEN) ||
        (!col_is_null(s, 2) && !col_is_int(s, 2)) ||
        (*seq > 0 && col_is_null(s, 2))) {
        guardian_error(STORE_LOG, "the audit head is malformed");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    if (max_time != NULL) {
        *has_time = col_is_int(s, 2);
        *max_time = *has_time ? col_int(s, 2) : 0;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV audit_head_get(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN])
{
    return audit_head_read(st, seq, hash, NULL, NULL);
}

/* "2025-06-01T12:00:00Z" */
static void iso8601(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%lld s", (long long)t);
}

/* Time never runs backwards (store.h, GUARDIAN_STORE_CLOCK_SLACK_S): `now`
 * against the newest time of any record; the caller holds the lock. */
CK_RV clock_check_locked(struct guardian_store *st, int64_t now, const char *what)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    uint64_t seq = 0;
    int64_t newest = 0;
    bool has = false;
    char now_text[32], newest_text[32];
    struct timespec mono;
    CK_RV rv = audit_head_read(st, &seq, hash, &newest, &has);

    if (rv != CKR_OK || !has || newest <= now || (uint64_t)newest - (uint64_t)now <= GUARDIAN_STORE_CLOCK_SLACK_S)
        return rv;
    /* Said once per cause: the line names the clock's reading, which differs
     * from one thread's refusal to the next when they straddle a second, so
     * the log's repeat filter (same text) would print it once per second.
     * `newest` is past the slack here, never 0: the zeroed store matches no
     * refusal. */
    clock_gettime(CLOCK_MONOTONIC, &mono);
    if (st->clock_reported_newest == newest &&
        (int64_t)mono.tv_sec - st->clock_reported_at < GUARDIAN_LOG_REPEAT_SECONDS)
        return CKR_GUARDIAN_CLOCK_BEHIND;
    st->clock_reported_newest = newest;
    st->clock_reported_at = (int64_t)mono.tv_sec;
    iso8601(now, now_text);
    iso8601(newest, newest_text);
    guardian_error(STORE_LOG, "%s refused: the clock says %s but the audit trail already has a record dated %s: "
                              "the clock is behind the trail by %llu s (more than %d s); set the system clock "
                              "right, then retry",
                   what, now_text, newest_text, (unsigned long long)((uint64_t)newest - (uint64_t)now),
                   GUARDIAN_STORE_CLOCK_SLACK_S);
    return CKR_GUARDIAN_CLOCK_BEHIND;
}

/* A new record of `type` dated `t`, as this store writes every record now:
 * encoding 3, naming `author` - an ISSUE folded from a journal names who
 * issued it, on which Guardian - or, when that is NULL, the current operator
 * (guardian_store_set_operator) and Guardian (guardian_store_set_guardian);
 * every other field zero.  The caller holds the lock.  Naming the current
 * operator is refused while the one last set was invalid: no record may name
 * the wrong one. */
CK_RV record_init(struct guardian_store *st, struct guardian_audit_record *r, int type, int64_t t,
                  const struct record_author *author)
{
    const char *operator_name = author != NULL ? author->operator_name : st->operator_name;
    const uint8_t *guardian = author != NULL ? author->guardian : st->has_guardian ? st->guardian : NULL;

    memset(r, 0, sizeof(*r));
    if (author == NULL && st->operator_invalid) {
        guardian_error(STORE_LOG, "nothing is recorded while the operator name last set is invalid: set a valid "
                                  "one (guardian_store_set_operator)");
        return CKR_ARGUMENTS_BAD;
    }
    r->type = type;
    r->time = t;
    r->encoding = GUARDIAN_AUDIT_ENCODING_3;
    snprintf(r->operator_name, sizeof(r->operator_name), "%s", operator_name != NULL ? operator_name : "");
    if (guardian != NULL) {
        memcpy(r->guardian, guardian, GUARDIAN_HASH_LEN);
        r->guardian_len = GUARDIAN_HASH_LEN;
    }
    return CKR_OK;
}

void guardian_store_set_operator(struct guardian_store *st, const char *name)
{
    if (st == NULL || store_enter(st) != CKR_OK)
        return;
    if (name == NULL)
        name = "";
    /* Both locks: journal_append reads the name holding journal_lock alone. */
    pthread_mutex_lock(&st->journal_lock);
    if (guardian_operator_name_ok(name)) {
        snprintf(st->operator_name, sizeof(st->operator_name), "%s", name);
        st->operator_invalid = false;
    } else {
        /* Never logged: it may be what a client typed. */
        guardian_error(STORE_LOG, "an operator name that is not one ([a-z0-9][a-z0-9._-]{0,31}) was set: nothing is "
                                  "recorded until a valid one is set");
        st->operator_name[0] = '\0';
        st->operator_invalid = true;
    }
    pthread_mutex_unlock(&st->journal_lock);
    store_leave(st);
}

void guardian_store_set_guardian(struct guardian_store *st, const uint8_t guardian[GUARDIAN_HASH_LEN])
{
    if (st == NULL || store_enter(st) != CKR_OK)
        return;
    /* Both locks: journal_append reads it holding journal_lock alone. */
    pthread_mutex_lock(&st->journal_lock);
    st->has_guardian = guardian != NULL;
    if (guardian != NULL)
        memcpy(st->guardian, guardian, GUARDIAN_HASH_LEN);
    else
        memset(st->guardian, 0, GUARDIAN_HASH_LEN);
    pthread_mutex_unlock(&st->journal_lock);
    store_leave(st);
}

bool guardian_store_guardian(struct guardian_store *st, uint8_t out[GUARDIAN_HASH_LEN])
{
    bool has = false;

    /* journal_lock alone (a setter holds it too): never waits for a write
     * transaction of another thread. */
    if (st == NULL)
        return false;
    pthread_mutex_lock(&st->journal_lock);
    has = st->has_guardian;
    memcpy(out, st->guardian, GUARDIAN_HASH_LEN);
    pthread_mutex_unlock(&st->journal_lock);
    return has;
}

/* Fills r->seq, r->prev_hash and r->hash, inserts the record and moves the head. */
CK_RV audit_append(struct guardian_store *st, struct guardian_audit_record *r)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    uint64_t head_seq = 0;

    rv = audit_head_get(st, &head_seq, r->prev_hash);
    if (rv != CKR_OK)
        goto out;
    r->seq = head_seq + 1;
    rv = guardian_audit_hash(r, r->hash);
    if (rv != CKR_OK) {
        guardian_error(STORE_LOG, "cannot hash audit record %llu", (unsigned long long)r->seq);
        goto out;
    }

    rv = stmt_step(st, S_AUDIT_INSERT, &s, NULL, "append an audit record", "iiittibbbiibbtib", (store_int)r->seq,
                   (store_int)r->type, (store_int)r->time, r->oem_id, r->product_id,
                   (store_int)r->serial, r->device_id, (int)r->device_id_len, r->digest, GUARDIAN_HASH_LEN,
                   r->package_id, GUARDIAN_PACKAGE_ID_LEN, (store_int)r->release_version,
                   (store_int)r->authorised_units, r->prev_hash, GUARDIAN_HASH_LEN, r->hash, GUARDIAN_HASH_LEN,
                   r->operator_name, (store_int)r->encoding, r->guardian, (int)r->guardian_len);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    rv = stmt_step(st, S_HEAD_SET, &s, NULL, "move the audit head", "ibii", (store_int)r->seq, r->hash,
                   GUARDIAN_HASH_LEN, (store_int)head_seq, (store_int)r->time);
    if (rv != CKR_OK)
        goto out;
    if (store_changes(st) != 1) {
        guardian_error(STORE_LOG, "the audit head moved under a write transaction");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_check_clock(struct guardian_store *st, int64_t now)
{
    CK_RV rv;

    if (st == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = clock_check_locked(st, now, "operation");
    store_leave(st);
    return rv;
}

/* ---- the audit trail: verify while iterating ----------------------------------------- */

/* Reads records with from <= seq <= to (at most `cap`) into page[]; *count =
 * records read and decoded.  A row that cannot be decoded ends the page early
 * with *bad set: the records before it are still delivered and verified. */
static CK_RV audit_page_read(struct guardian_store *st, uint64_t from, uint64_t to,
                             struct guardian_audit_record *page, size_t cap, size_t *count, bool *bad)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    bool row = false;

    *count = 0;
    *bad = false;
    if (cap == 0)
        return CKR_OK;
    rv = stmt_step(st, S_AUDIT_PAGE, &s, &row, "read the audit trail", "iii", (store_int)from, (store_int)to,
                   (store_int)cap);
    while (rv == CKR_OK && row) {
        if (!audit_from_row(s, &page[*count])) {
            *bad = true;
            break;
        }
        if (++*count == cap)
            break;
        rv = stmt_next(st, s, &row, "read the audit trail");
    }
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_audit_each(struct guardian_store *st,
                                CK_RV (*fn)(const struct guardian_audit_record *r, void *ctx), void *ctx)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record *page = NULL;
    uint8_t head_hash[GUARDIAN_HASH_LEN], prev[GUARDIAN_HASH_LEN], hash[GUARDIAN_HASH_LEN];
    uint64_t head_seq = 0, expect = 1;
    size_t count = 0;
    bool locked = false, bad = false;

    if (st == NULL || fn == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    page = calloc(AUDIT_PAGE_RECORDS, sizeof(*page));
    if (page == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }

    /* The head fixes the end: records up to it are committed and immutable,
     * so reading them page by page, without the lock between pages, sees one
     * consistent trail while other threads and processes keep appending. */
    rv = store_enter(st);
    if (rv != CKR_OK)
        goto out;
    locked = true;
    rv = audit_head_get(st, &head_seq, head_hash);
    store_leave(st);
    locked = false;
    if (rv != CKR_OK)
        goto out;

    memset(prev, 0, sizeof(prev));
    while (expect <= head_seq) {
        rv = store_enter(st);
        if (rv != CKR_OK)
            goto out;
        locked = true;
        rv = audit_page_read(st, expect, head_seq, page, AUDIT_PAGE_RECORDS, &count, &bad);
        store_leave(st);
        locked = false;
        if (rv != CKR_OK)
            goto out;
        if (count == 0 && !bad) {
            guardian_error(STORE_LOG, "audit records %llu..%llu are missing", (unsigned long long)expect,
                           (unsigned long long)head_seq);
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
            goto out;
        }
        for (size_t i = 0; i < count; i++) {
            const struct guardian_audit_record *r = &page[i];
            if (r->seq != expect) {
                guardian_error(STORE_LOG, "audit record %llu is missing (next is %llu)",
                               (unsigned long long)expect, (unsigned long long)r->seq);
                rv = CKR_GUARDIAN_AUDIT_CORRUPT;
                goto out;
            }
            if (memcmp(r->prev_hash, prev, sizeof(prev)) != 0) {
                guardian_error(STORE_LOG, "audit record %llu does not follow record %llu (prev_hash)",
                               (unsigned long long)r->seq, (unsigned long long)(r->seq - 1));
                rv = CKR_GUARDIAN_AUDIT_CORRUPT;
                goto out;
            }
            if (guardian_audit_hash(r, hash) != CKR_OK || memcmp(hash, r->hash, sizeof(hash)) != 0) {
                guardian_error(STORE_LOG, "audit record %llu was altered (hash)", (unsigned long long)r->seq);
                rv = CKR_GUARDIAN_AUDIT_CORRUPT;
                goto out;
            }
            rv = fn(r, ctx);
            if (rv != CKR_OK)
                goto out;
            memcpy(prev, r->hash, sizeof(prev));
            expect++;
        }
        if (bad) {
            guardian_error(STORE_LOG, "the audit record after %llu is malformed", (unsigned long long)(expect - 1));
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
            goto out;
        }
    }
    if (memcmp(prev, head_hash, sizeof(prev)) != 0) {
        guardian_error(STORE_LOG, "the audit trail does not end at its head (record %llu)",
                       (unsigned long long)head_seq);
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    rv = CKR_OK;
out:
    if (locked)
        store_leave(st);
    free(page);
    return rv;
}

/* ---- the audit trail: exports ----------------------------------------------------------- */

struct export_args {
    const char *oem_id, *product_id; /* NULL: the whole trail */
    int64_t now;
    struct guardian_audit_record rec;
    struct guardian_product *products;
    size_t n_products;
};

/* The EXPORT record and the products as they stand at it (store.h). */
static CK_RV export_tx(struct guardian_store *st, void *ctx)
{
    struct export_args *a = ctx;
    struct store_stmt *s = NULL;
    uint8_t head_hash[GUARDIAN_HASH_LEN];
    uint64_t head_seq = 0;
    bool row = false;
    CK_RV rv;

    if (a->oem_id != NULL) {
        rv = stmt_step(st, S_PRODUCT_GET, &s, &row, "read a product", "tt", a->oem_id, a->product_id);
        stmt_done(s);
        if (rv != CKR_OK)
            return rv;
        if (!row)
            return CKR_GUARDIAN_PRODUCT_UNKNOWN;
    }
    rv = audit_head_get(st, &head_seq, head_hash);
    if (rv == CKR_OK)
        rv = record_init(st, &a->rec, GUARDIAN_AUDIT_EXPORT, a->now, NULL);
    if (rv != CKR_OK)
        return rv;
    if (a->oem_id != NULL) {
        snprintf(a->rec.oem_id, sizeof(a->rec.oem_id), "%s", a->oem_id);
        snprintf(a->rec.product_id, sizeof(a->rec.product_id), "%s", a->product_id);
    }
    /* The last record the report covers before this one: audit_append
     * numbers this one head_seq + 1, in the same transaction. */
    a->rec.serial = head_seq;
    rv = audit_append(st, &a->rec);
    if (rv == CKR_OK)
        rv = products_read_locked(st, &a->products, &a->n_products);
    return rv;
}

CK_RV guardian_store_record_export(struct guardian_store *st, const char *oem_id, const char *product_id, int64_t now,
                                   CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx,
                                   struct guardian_audit_record *record)
{
    struct export_args a;
    CK_RV rv;

    if (st == NULL || (oem_id == NULL) != (product_id == NULL) ||
        (oem_id != NULL && (!id_ok(oem_id) || !id_ok(product_id))))
        return CKR_ARGUMENTS_BAD;
    memset(&a, 0, sizeof(a));
    a.oem_id = oem_id;
    a.product_id = product_id;
    a.now = now;
    rv = store_write(st, true, export_tx, &a);
    if (rv == CKR_OK) {
        if (record != NULL)
            *record = a.rec;
        rv = products_call(a.products, a.n_products, fn, ctx);
    }
    free(a.products);
    return rv;
}
