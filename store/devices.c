/*
 * devices.c — the device index (store.h, "the device index";
 * docs/audit-format.md): which certificate each device ID of a product
 * holds.  Two parts: this process's, in memory under journal_lock (every
 * device with a claim - a thread about to issue for it - or a certificate in
 * this process's issue journal not yet folded), and the database's `devices`
 * table, written in the transaction of each ISSUE and read, for the lookup
 * of every certificate, on the engine's read-only connection.  Re-issues
 * (ISSUE + REISSUE) and part outcomes (OUTCOME) are write transactions of
 * their own.
 */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

/* store_internal.h */
bool cert_spki_hash(const uint8_t *cert, size_t cert_len, uint8_t out[GUARDIAN_HASH_LEN])
{
    const uint8_t *spki = NULL;
    size_t spki_len = 0;
    unsigned int hl = 0;

    return guardian_journal_cert_spki(cert, cert_len, &spki, &spki_len) &&
           EVP_Digest(spki, spki_len, out, &hl, EVP_sha256(), NULL) == 1 && hl == GUARDIAN_HASH_LEN;
}

/* The device index row of an ISSUE just appended (record `seq`), in its
 * transaction.  A device that holds another certificate already (two
 * processes issued for it, each before the other's journal was folded)
 * keeps the first: the second ISSUE stays in the trail, logged here, and the
 * OEM's verifier reports the device issued twice without a re-issue. */
CK_RV device_index_issue(struct guardian_store *st, const struct issue_args *a, uint64_t seq)
{
    uint8_t h[GUARDIAN_HASH_LEN];
    bool has = a->cert != NULL && cert_spki_hash(a->cert, a->cert_len, h), row = false;
    struct store_stmt *s = NULL;
    uint64_t other = 0;
    CK_RV rv;

    rv = stmt_step(st, S_DEVICE_INSERT, &s, NULL, "index a device's certificate", "ttbiib", a->oem_id, a->product_id,
                   a->device_id, (int)a->device_id_len, (store_int)a->serial, (store_int)seq,
                   has ? (const void *)h : NULL, has ? GUARDIAN_HASH_LEN : 0);
    if (rv != CKR_OK || store_changes(st) == 1)
        goto out;
    stmt_done(s);
    rv = stmt_step(st, S_DEVICE_GET, &s, &row, "look up a device", "ttb", a->oem_id, a->product_id, a->device_id,
                   (int)a->device_id_len);
    if (rv == CKR_OK && row && column_uint(s, 0, INT64_MAX, &other))
        guardian_warn(STORE_LOG, "%s/%s: serial %llu was issued to a device that already holds serial %llu, "
                                 "without a re-issue (two processes issued for it at once): both are in the audit "
                                 "trail, the device index keeps serial %llu",
                      a->oem_id, a->product_id, (unsigned long long)a->serial, (unsigned long long)other,
                      (unsigned long long)other);
out:
    stmt_done(s);
    return rv;
}

/* ---- the device index: this process's part (journal_lock) ------------------------- */

static size_t device_bucket(const char *oem_id, const char *product_id, const uint8_t *id, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (const char *p = oem_id; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    h = (h ^ 0xff) * 0x100000001b3ULL;
    for (const char *p = product_id; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    h = (h ^ 0xff) * 0x100000001b3ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ id[i]) * 0x100000001b3ULL;
    return (size_t)(h % DEVICE_BUCKETS);
}

static struct device_entry **device_find_jlocked(struct guardian_store *st, const char *oem_id,
                                                 const char *product_id, const uint8_t *id, size_t len)
{
    struct device_entry **p = &st->devices[device_bucket(oem_id, product_id, id, len)];
    for (; *p != NULL; p = &(*p)->next)
        if ((*p)->device_id_len == len && memcmp((*p)->device_id, id, len) == 0 &&
            strcmp((*p)->oem_id, oem_id) == 0 && strcmp((*p)->product_id, product_id) == 0)
            break;
    return p;
}

/* The entry of a device, added if it has none; NULL when out of memory. */
static struct device_entry *device_entry_jlocked(struct guardian_store *st, const char *oem_id,
                                                 const char *product_id, const uint8_t *id, size_t len)
{
    struct device_entry **p = device_find_jlocked(st, oem_id, product_id, id, len), *e;

    if (*p != NULL)
        return *p;
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    snprintf(e->oem_id, sizeof(e->oem_id), "%s", oem_id);
    snprintf(e->product_id, sizeof(e->product_id), "%s", product_id);
    memcpy(e->device_id, id, len);
    e->device_id_len = len;
    *p = e;
    return e;
}

/* Removes `e` when nothing holds it any more (no claim, not journaled). */
static void device_drop_jlocked(struct guardian_store *st, struct device_entry *e)
{
    struct device_entry **p;

    if (e->claimed || e->journaled)
        return;
    p = device_find_jlocked(st, e->oem_id, e->product_id, e->device_id, e->device_id_len);
    if (*p == e)
        *p = e->next;
    free(e->cert);
    free(e);
}

/* A certificate about to be appended to this process's journal: its device's
 * entry holds it (a copy) until the journal is emptied. */
CK_RV device_journaled_jlocked(struct guardian_store *st, const char *oem_id, const char *product_id,
                               const uint8_t *id, size_t len, uint64_t serial, const uint8_t *cert,
                               size_t cert_len, struct device_entry **out)
{
    struct device_entry *e = device_entry_jlocked(st, oem_id, product_id, id, len);
    uint8_t *copy = malloc(cert_len);

    *out = NULL;
    if (e == NULL || copy == NULL) {
        free(copy);
        return CKR_HOST_MEMORY;
    }
    free(e->cert);
    e->cert = copy;
    memcpy(e->cert, cert, cert_len);
    e->cert_len = cert_len;
    e->serial = serial;
    e->has_spki = cert_spki_hash(cert, cert_len, e->spki_hash);
    if (!e->journaled)
        st->devices_journaled++;
    e->journaled = true;
    *out = e;
    return CKR_OK;
}

/* The append failed: the entry no longer stands for a journal record. */
void device_unjournal_jlocked(struct guardian_store *st, struct device_entry *e)
{
    if (e->journaled)
        st->devices_journaled--;
    e->journaled = false;
    free(e->cert);
    e->cert = NULL;
    device_drop_jlocked(st, e);
}

/* The journal's records are committed: the index in the database has them. */
void devices_forget_journaled_jlocked(struct guardian_store *st)
{
    for (size_t b = 0; b < DEVICE_BUCKETS && st->devices_journaled > 0; b++) {
        struct device_entry *e = st->devices[b], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            if (e->journaled)
                device_unjournal_jlocked(st, e);
        }
    }
    st->devices_journaled = 0;
}

/* ---- the device index: lookups, re-issues, part outcomes ------------------------------- */

void guardian_store_device_cert_free(struct guardian_device_cert *d)
{
    if (d == NULL)
        return;
    free(d->cert);
    memset(d, 0, sizeof(*d));
}

static bool device_args_ok(struct guardian_store *st, const char *oem_id, const char *product_id,
                           const uint8_t *device_id, size_t device_id_len)
{
    return st != NULL && id_ok(oem_id) && id_ok(product_id) && device_id_ok(device_id, device_id_len);
}

/* A row of DEVICE_GET_SQL into *d (and the serial's package, may be NULL). */
static CK_RV device_from_row(struct store_stmt *s, struct guardian_device_cert *d,
                             uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN])
{
    uint64_t outcome = 0;
    size_t n = 0;

    memset(d, 0, sizeof(*d));
    if (!column_uint(s, 0, INT64_MAX, &d->serial) || !column_uint(s, 2, GUARDIAN_OUTCOME_SCRAPPED, &outcome) ||
        (!col_is_null(s, 1) &&
         (!column_blob(s, 1, d->spki_hash, sizeof(d->spki_hash), &n) || n != GUARDIAN_HASH_LEN)) ||
        (package_id != NULL && !column_blob_exact(s, 4, package_id, GUARDIAN_PACKAGE_ID_LEN))) {
        guardian_error(STORE_LOG, "a device index row is malformed");
        return CKR_GUARDIAN_STORE_FAILED;
    }
    d->has_spki = n == GUARDIAN_HASH_LEN;
    d->outcome = (int)outcome;
    return column_blob_dup(s, 3, &d->cert, &d->cert_len);
}

/* The index in the database: the read-only connection of a file-backed
 * store (no wait for a write transaction), the store's own otherwise. */
static CK_RV device_lookup_db(struct guardian_store *st, const char *oem_id, const char *product_id,
                              const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                              bool *found)
{
    struct store_stmt *s = NULL;
    CK_RV rv;

    if (!engine_has_reader(st)) {
        rv = store_enter(st);
        if (rv != CKR_OK)
            return rv;
        rv = stmt_step(st, S_DEVICE_GET, &s, found, "look up a device", "ttb", oem_id, product_id, device_id,
                       (int)device_id_len);
        if (rv == CKR_OK && *found)
            rv = device_from_row(s, d, NULL);
        stmt_done(s);
        store_leave(st);
        return rv;
    }
    rv = reader_device_get(st, &s, found, oem_id, product_id, device_id, device_id_len);
    if (rv == CKR_OK && *found)
        rv = device_from_row(s, d, NULL);
    reader_done(st, s);
    if (rv != CKR_OK)
        guardian_store_device_cert_free(d);
    return rv;
}

/* A journaled entry's certificate into *d (not folded: no outcome yet). */
static CK_RV device_from_entry(const struct device_entry *e, struct guardian_device_cert *d)
{
    memset(d, 0, sizeof(*d));
    d->serial = e->serial;
    d->has_spki = e->has_spki;
    memcpy(d->spki_hash, e->spki_hash, sizeof(d->spki_hash));
    d->cert = malloc(e->cert_len);
    if (d->cert == NULL)
        return CKR_HOST_MEMORY;
    memcpy(d->cert, e->cert, e->cert_len);
    d->cert_len = e->cert_len;
    return CKR_OK;
}

/* Both lookups, this process's journal first: a certificate appended to it
 * is there until the journal is emptied, which is after its fold committed,
 * so a miss there and then a read of the database sees it either way. */
static CK_RV device_lookup(struct guardian_store *st, bool claim, const char *oem_id, const char *product_id,
                           const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                           bool *found)
{
    struct device_entry **p, *e = NULL;
    CK_RV rv = CKR_OK;

    if (found == NULL || d == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(d, 0, sizeof(*d));
    *found = false;
    if (!device_args_ok(st, oem_id, product_id, device_id, device_id_len))
        return CKR_ARGUMENTS_BAD;
    if (GUARDIAN_UNLIKELY(!same_process(st)))
        return CKR_GUARDIAN_STORE_FAILED;
    pthread_mutex_lock(&st->journal_lock);
    for (;;) {
        p = device_find_jlocked(st, oem_id, product_id, device_id, device_id_len);
        if (!claim || *p == NULL || !(*p)->claimed)
            break;
        pthread_cond_wait(&st->device_cond, &st->journal_lock);
    }
    e = *p;
    if (claim) {
        e = device_entry_jlocked(st, oem_id, product_id, device_id, device_id_len);
        if (e == NULL)
            rv = CKR_HOST_MEMORY;
        else
            e->claimed = true;
    }
    if (rv == CKR_OK && e != NULL && e->journaled) {
        rv = device_from_entry(e, d);
        *found = rv == CKR_OK;
        pthread_mutex_unlock(&st->journal_lock);
        goto out;
    }
    pthread_mutex_unlock(&st->journal_lock);
    if (rv == CKR_OK)
        rv = device_lookup_db(st, oem_id, product_id, device_id, device_id_len, d, found);
out:
    if (rv != CKR_OK && claim && e != NULL)
        guardian_store_device_unclaim(st, oem_id, product_id, device_id, device_id_len);
    return rv;
}

CK_RV guardian_store_device_claim(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                                  bool *found)
{
    return device_lookup(st, true, oem_id, product_id, device_id, device_id_len, d, found);
}

CK_RV guardian_store_device_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                                bool *found)
{
    return device_lookup(st, false, oem_id, product_id, device_id, device_id_len, d, found);
}

void guardian_store_device_unclaim(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   const uint8_t *device_id, size_t device_id_len)
{
    struct device_entry **p;

    if (!device_args_ok(st, oem_id, product_id, device_id, device_id_len) || st->pid != getpid())
        return;
    pthread_mutex_lock(&st->journal_lock);
    p = device_find_jlocked(st, oem_id, product_id, device_id, device_id_len);
    if (*p != NULL) {
        (*p)->claimed = false;
        device_drop_jlocked(st, *p);
    }
    pthread_cond_broadcast(&st->device_cond);
    pthread_mutex_unlock(&st->journal_lock);
}

/* A device's record (OUTCOME, REISSUE): the product, `serial`, the device,
 * the serial's package and its release, `digest` (NULL: zeros) and `units`,
 * the current operator; inside a write transaction. */
static CK_RV device_record_locked(struct guardian_store *st, int type, int64_t t, const char *oem_id,
                                  const char *product_id, uint64_t serial, const uint8_t *device_id,
                                  size_t device_id_len, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                  const uint8_t *digest, uint64_t units)
{
    struct guardian_audit_record rec;
    uint32_t release = 0;
    CK_RV rv = package_release_locked(st, package_id, &release);

    if (rv == CKR_OK)
        rv = record_init(st, &rec, type, t, NULL);
    if (rv != CKR_OK)
        return rv;
    memcpy(rec.oem_id, oem_id, strlen(oem_id) + 1);
    memcpy(rec.product_id, product_id, strlen(product_id) + 1);
    rec.serial = serial;
    memcpy(rec.device_id, device_id, device_id_len);
    rec.device_id_len = device_id_len;
    if (digest != NULL)
        memcpy(rec.digest, digest, GUARDIAN_HASH_LEN);
    memcpy(rec.package_id, package_id, GUARDIAN_PACKAGE_ID_LEN);
    rec.release_version = release;
    rec.authorised_units = units;
    return audit_append(st, &rec);
}

/* The device's index row, read inside a write transaction. */
static CK_RV device_get_locked(struct guardian_store *st, const char *oem_id, const char *product_id,
                               const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                               uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], bool *found)
{
    struct store_stmt *s = NULL;
    CK_RV rv = stmt_step(st, S_DEVICE_GET, &s, found, "look up a device", "ttb", oem_id, product_id, device_id,
                         (int)device_id_len);

    memset(d, 0, sizeof(*d));
    if (rv == CKR_OK && *found)
        rv = device_from_row(s, d, package_id);
    stmt_done(s);
    return rv;
}

struct reissue_args {
    struct issue_args issue;
    uint64_t old_serial;
};

static CK_RV reissue_tx(struct guardian_store *st, void *ctx)
{
    struct reissue_args *ra = ctx;
    struct issue_args *a = &ra->issue;
    struct guardian_device_cert d;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], h[GUARDIAN_HASH_LEN];
    struct store_stmt *s = NULL;
    bool found = false, has;
    CK_RV rv = device_get_locked(st, a->oem_id, a->product_id, a->device_id, a->device_id_len, &d, package_id,
                                 &found);
    uint64_t current = d.serial;

    guardian_store_device_cert_free(&d); /* only its serial is needed */
    if (rv != CKR_OK)
        return rv;
    if (!found || current != ra->old_serial) {
        guardian_error(STORE_LOG, "%s/%s: a re-issue of serial %llu for a device whose certificate is %s",
                       a->oem_id, a->product_id, (unsigned long long)ra->old_serial,
                       found ? "another one" : "none");
        return CKR_ARGUMENTS_BAD;
    }
    rv = settle_tx(st, a);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_ISSUANCE_GET, &s, &found, "look up a reservation", "tti", a->oem_id, a->product_id,
                   (store_int)a->serial);
    if (rv == CKR_OK && (!found || !column_blob_exact(s, 3, package_id, sizeof(package_id))))
        rv = CKR_GUARDIAN_STORE_FAILED;
    stmt_done(s);
    if (rv == CKR_OK)
        rv = device_record_locked(st, GUARDIAN_AUDIT_REISSUE, (int64_t)time(NULL), a->oem_id, a->product_id, a->serial,
                                  a->device_id, a->device_id_len, package_id, a->digest, ra->old_serial);
    if (rv != CKR_OK)
        return rv;
    has = cert_spki_hash(a->cert, a->cert_len, h);
    rv = stmt_step(st, S_DEVICE_MOVE, &s, NULL, "move a device to its new certificate", "ttbiibi", a->oem_id,
                   a->product_id, a->device_id, (int)a->device_id_len, (store_int)a->serial,
                   (store_int)a->issue_seq, has ? (const void *)h : NULL, has ? GUARDIAN_HASH_LEN : 0,
                   (store_int)ra->old_serial);
    if (rv == CKR_OK && store_changes(st) != 1)
        rv = CKR_GUARDIAN_STORE_FAILED;
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_reissue(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                             const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len,
                             uint64_t old_serial)
{
    uint8_t digest[GUARDIAN_HASH_LEN];
    unsigned int dl = 0;
    struct reissue_args ra = {{oem_id, product_id, serial, 0, GUARDIAN_AUDIT_ISSUE, device_id, device_id_len, digest,
                               cert, cert_len, false, NULL, old_serial, 0},
                              old_serial};
    struct device_entry **p;
    CK_RV rv;

    if (!device_args_ok(st, oem_id, product_id, device_id, device_id_len) || cert == NULL || cert_len == 0 ||
        cert_len > GUARDIAN_CERT_MAX || serial == 0 || serial > INT64_MAX || old_serial == 0 ||
        old_serial > INT64_MAX || old_serial == serial)
        return CKR_ARGUMENTS_BAD;
    if (EVP_Digest(cert, cert_len, digest, &dl, EVP_sha256(), NULL) != 1 || dl != GUARDIAN_HASH_LEN)
        return CKR_GENERAL_ERROR;
    rv = store_write(st, false, reissue_tx, &ra);
    if (rv == CKR_OK) {
        /* The old certificate, if it was in this journal, is folded now
         * (store_write folded the journal first): the index has the new. */
        pthread_mutex_lock(&st->journal_lock);
        p = device_find_jlocked(st, oem_id, product_id, device_id, device_id_len);
        if (*p != NULL && (*p)->journaled)
            device_unjournal_jlocked(st, *p);
        pthread_mutex_unlock(&st->journal_lock);
    }
    return rv;
}

struct outcome_args {
    const char *oem_id, *product_id;
    const uint8_t *device_id;
    size_t device_id_len;
    int outcome;
    int64_t now;
    uint64_t serial; /* out */
    bool recorded;   /* out */
};

static CK_RV outcome_tx(struct guardian_store *st, void *ctx)
{
    struct outcome_args *a = ctx;
    struct guardian_device_cert d = {0};
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    struct store_stmt *s = NULL;
    bool found = false;
    int outcome;
    CK_RV rv = clock_check_locked(st, a->now, "part outcome");

    if (rv == CKR_OK)
        rv = device_get_locked(st, a->oem_id, a->product_id, a->device_id, a->device_id_len, &d, package_id, &found);
    a->serial = d.serial;
    outcome = d.outcome;
    guardian_store_device_cert_free(&d); /* only its serial and outcome are needed */
    if (rv != CKR_OK)
        return rv;
    if (!found)
        return CKR_GUARDIAN_DEVICE_NOT_ISSUED;
    if (outcome == a->outcome)
        return CKR_OK; /* reported before: nothing new to record */
    if (outcome == GUARDIAN_OUTCOME_SCRAPPED)
        return CKR_GUARDIAN_PART_SCRAPPED;
    rv = device_record_locked(st, GUARDIAN_AUDIT_OUTCOME, a->now, a->oem_id, a->product_id, a->serial, a->device_id,
                              a->device_id_len, package_id, NULL, (uint64_t)a->outcome);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_DEVICE_SET_OUTCOME, &s, NULL, "record a part's outcome", "ttbi", a->oem_id, a->product_id,
                   a->device_id, (int)a->device_id_len, (store_int)a->outcome);
    if (rv == CKR_OK && store_changes(st) != 1)
        rv = CKR_GUARDIAN_STORE_FAILED;
    stmt_done(s);
    a->recorded = rv == CKR_OK;
    return rv;
}

CK_RV guardian_store_record_outcome(struct guardian_store *st, const char *oem_id, const char *product_id,
                                    const uint8_t *device_id, size_t device_id_len, int outcome, int64_t now,
                                    uint64_t *serial, bool *recorded)
{
    struct outcome_args a = {oem_id, product_id, device_id, device_id_len, outcome, now, 0, false};
    CK_RV rv;

    if (!device_args_ok(st, oem_id, product_id, device_id, device_id_len) ||
        (outcome != GUARDIAN_OUTCOME_PROGRAMMED && outcome != GUARDIAN_OUTCOME_SCRAPPED) || recorded == NULL)
        return CKR_ARGUMENTS_BAD;
    *recorded = false;
    rv = store_write(st, false, outcome_tx, &a);
    if (rv == CKR_OK) {
        *recorded = a.recorded;
        if (serial != NULL)
            *serial = a.serial;
    }
    return rv;
}
