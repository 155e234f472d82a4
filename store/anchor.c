/*
 * anchor.c — the token's anchor of the store (store.h, "the token's anchor";
 * docs/threat-model.md): the audit head and each package's next serial,
 * serialised for a token object, and the check that refuses a state store
 * older than, or other than, the one the token anchored
 * (CKR_GUARDIAN_STATE_ROLLBACK).  anchor.lock in the state directory
 * serialises the anchor's updates across processes.
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

/* ---- the token's anchor of the store ---------------------------------------------------------
 *
 * "GANC" | u32 version 1 | u64 head seq | 32 head hash | u32 n | n × (16 package id |
 * u64 next serial of its product if installed, else 0); big-endian.  Units are
 * not anchored by count: a RELEASE gives units back legitimately, whereas the
 * next serial only grows (every reservation takes serials, none comes back). */

#define ANCHOR_MAGIC "GANC"
#define ANCHOR_HEADER (4 + 4 + 8 + GUARDIAN_HASH_LEN + 4)
#define ANCHOR_ENTRY (GUARDIAN_PACKAGE_ID_LEN + 8)
#define ANCHOR_MAX_ENTRIES 4096

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

uint64_t guardian_store_anchor_seq(const uint8_t *buf, size_t len)
{
    return buf != NULL && len >= ANCHOR_HEADER && memcmp(buf, ANCHOR_MAGIC, 4) == 0 ? get_be(buf + 8, 8) : 0;
}

#define ANCHOR_LOCK_NAME "anchor.lock"

CK_RV guardian_store_anchor_lock(struct guardian_store *st)
{
    CK_RV rv = CKR_OK;
    int fd;

    return_val_if_fail(st != NULL, CKR_ARGUMENTS_BAD);
    if (st->dir_fd < 0)
        return CKR_OK; /* an in-memory store: one process only */
    pthread_mutex_lock(&st->lock);
    if (st->anchor_lock_fd < 0) {
        rv = state_file_open(st, ANCHOR_LOCK_NAME, O_RDWR | O_CREAT, &fd);
        if (rv == CKR_OK)
            st->anchor_lock_fd = fd;
    }
    fd = st->anchor_lock_fd;
    pthread_mutex_unlock(&st->lock);
    if (rv != CKR_OK)
        return rv;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            guardian_error(STORE_LOG, "cannot lock %s/%s: %s", st->dir, ANCHOR_LOCK_NAME, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
    }
    return CKR_OK;
}

void guardian_store_anchor_unlock(struct guardian_store *st)
{
    if (st != NULL && st->anchor_lock_fd >= 0)
        flock(st->anchor_lock_fd, LOCK_UN);
}

CK_RV guardian_store_anchor_get(struct guardian_store *st, uint8_t **buf, size_t *len)
{
    struct store_stmt *s = NULL;
    uint8_t *b = NULL;
    size_t cap = ANCHOR_HEADER + 16 * ANCHOR_ENTRY, n = 0;
    uint64_t seq = 0;
    CK_RV rv = st != NULL && buf != NULL && len != NULL ? store_enter(st) : CKR_ARGUMENTS_BAD;
    bool row = false;

    if (rv != CKR_OK)
        return rv;
    b = malloc(cap);
    if (b == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    memcpy(b, ANCHOR_MAGIC, 4);
    put_be(b + 4, 1, 4);
    rv = audit_head_get(st, &seq, b + 16);
    if (rv != CKR_OK)
        goto out;
    put_be(b + 8, seq, 8);
    rv = stmt_step(st, S_ANCHOR_ENTRIES, &s, &row, "read the packages for the anchor", "");
    while (rv == CKR_OK && row && n < ANCHOR_MAX_ENTRIES) {
        uint8_t *e;
        uint64_t next = 0;
        if (ANCHOR_HEADER + (n + 1) * ANCHOR_ENTRY > cap) {
            uint8_t *bigger = realloc(b, cap * 2);
            if (bigger == NULL) {
                rv = CKR_HOST_MEMORY;
                goto out;
            }
            b = bigger;
            cap *= 2;
        }
        e = b + ANCHOR_HEADER + n * ANCHOR_ENTRY;
        if (!column_blob_exact(s, 0, e, GUARDIAN_PACKAGE_ID_LEN) || !column_uint(s, 1, INT64_MAX, &next)) {
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
            goto out;
        }
        put_be(e + GUARDIAN_PACKAGE_ID_LEN, next, 8);
        n++;
        rv = stmt_next(st, s, &row, "read the packages for the anchor");
    }
    if (rv != CKR_OK)
        goto out;
    put_be(b + 16 + GUARDIAN_HASH_LEN, n, 4);
    *buf = b;
    *len = ANCHOR_HEADER + n * ANCHOR_ENTRY;
    b = NULL;
    rv = CKR_OK;
out:
    stmt_done(s);
    free(b);
    store_leave(st);
    return rv;
}

CK_RV guardian_store_anchor_check(struct guardian_store *st, const uint8_t *buf, size_t len, int *newer)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    uint64_t seq = 0, a_seq, n;
    struct store_stmt *s = NULL, *rec = NULL;
    bool ahead = false;
    CK_RV rv = st != NULL && buf != NULL && newer != NULL ? store_enter(st) : CKR_ARGUMENTS_BAD;

    if (rv != CKR_OK)
        return rv;
    *newer = 0;
    if (len < ANCHOR_HEADER || memcmp(buf, ANCHOR_MAGIC, 4) != 0 || get_be(buf + 4, 4) != 1 ||
        (n = get_be(buf + 16 + GUARDIAN_HASH_LEN, 4)) > ANCHOR_MAX_ENTRIES || len != ANCHOR_HEADER + n * ANCHOR_ENTRY) {
        guardian_error(STORE_LOG, "the token's state anchor is not one this version reads (%zu bytes)", len);
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    a_seq = get_be(buf + 8, 8);
    rv = audit_head_get(st, &seq, hash);
    if (rv != CKR_OK)
        goto out;
    rv = CKR_GUARDIAN_STATE_ROLLBACK;
    if (seq < a_seq) {
        guardian_error(STORE_LOG, "the state store is older than the token's anchor: its audit trail ends at record "
                                  "%llu, the token has seen record %llu (a restored backup, a deleted or swapped "
                                  "guardian.db, or another state directory); refusing to grant anything from it",
                       (unsigned long long)seq, (unsigned long long)a_seq);
        goto out;
    }
    ahead = seq > a_seq;
    if (a_seq > 0) {
        bool row = false;
        uint8_t at[GUARDIAN_HASH_LEN];
        CK_RV qrv = stmt_step(st, S_AUDIT_HASH_AT, &rec, &row, "read the anchored record", "i", (store_int)a_seq);
        if (qrv != CKR_OK) {
            rv = qrv;
            goto out;
        }
        if (!row || !column_blob_exact(rec, 0, at, GUARDIAN_HASH_LEN) ||
            memcmp(at, buf + 16, GUARDIAN_HASH_LEN) != 0) {
            guardian_error(STORE_LOG, "the state store is not the one the token anchored: its record %llu differs from "
                                      "the token's (a swapped guardian.db or another state directory)",
                           (unsigned long long)a_seq);
            goto out;
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *e = buf + ANCHOR_HEADER + i * ANCHOR_ENTRY;
        uint64_t want_next = get_be(e + GUARDIAN_PACKAGE_ID_LEN, 8);
        uint64_t next = 0, product_next = 0;
        bool row = false;
        CK_RV qrv;
        stmt_done(s);
        qrv = stmt_step(st, S_ANCHOR_PACKAGE, &s, &row, "read a package for the anchor", "b", e,
                        GUARDIAN_PACKAGE_ID_LEN);
        if (qrv != CKR_OK) {
            rv = qrv;
            goto out;
        }
        if (!row) {
            guardian_error(STORE_LOG, "the state store lacks package %llu of the token's anchor (a restored backup, or "
                                      "a database edited or swapped): it could be imported again",
                           (unsigned long long)i + 1);
            goto out;
        }
        if (!column_uint(s, 1, INT64_MAX, &next)) {
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
            goto out;
        }
        if (col_is_int(s, 5))
            product_next = (uint64_t)col_int(s, 5);
        if (want_next > 0 && product_next < want_next) {
            guardian_error(STORE_LOG, "the state store is behind the token's anchor for %s/%s r%lld: next serial %llu, "
                                      "the token has seen %llu (a restored backup or an edited database): units and "
                                      "serials would be granted twice",
                           col_text(s, 2), col_text(s, 3),
                           (long long)col_int(s, 4), (unsigned long long)product_next,
                           (unsigned long long)want_next);
            goto out;
        }
        ahead = ahead || (want_next > 0 && next > want_next);
    }
    *newer = ahead;
    rv = CKR_OK;
out:
    stmt_done(s);
    stmt_done(rec);
    store_leave(st);
    return rv;
}
