/*
 * registry.c — the package registry and the products: the import checks
 * (clock, expiry, replay: CKR_GUARDIAN_PACKAGE_REPLAYED, rollback:
 * CKR_GUARDIAN_PACKAGE_ROLLBACK), the install of a package with its IMPORT
 * record and the caller's commit_hook in one durable transaction, the
 * material the module builds certificates from, and the products with their
 * counters as they stand.
 */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

static bool package_ok(const struct guardian_package_info *pkg)
{
    return pkg != NULL && id_ok(pkg->oem_id) && id_ok(pkg->product_id) && pkg->authorised_units <= INT64_MAX;
}

/* A row of PRODUCT_COLUMNS. */
CK_RV product_from_row(struct store_stmt *s, struct guardian_product *p)
{
    uint64_t release = 0, issued = 0;

    memset(p, 0, sizeof(*p));
    if (!column_id(s, 0, p->oem_id) || !column_id(s, 1, p->product_id) ||
        !column_blob_exact(s, 2, p->package_id, sizeof(p->package_id)) || !column_uint(s, 3, UINT32_MAX, &release) ||
        !column_uint(s, 4, INT64_MAX, &p->authorised_units) || !column_uint(s, 5, p->authorised_units, &issued) ||
        !column_uint(s, 6, INT64_MAX, &p->next_serial) || !col_is_int(s, 7) ||
        !col_is_int(s, 8)) {
        guardian_error(STORE_LOG, "a product row is malformed");
        return CKR_GUARDIAN_STORE_FAILED;
    }
    p->release_version = (uint32_t)release;
    p->issued_units = issued;
    p->remaining_units = p->authorised_units - issued;
    p->not_after = col_int(s, 7);
    p->installed_at = col_int(s, 8);
    return CKR_OK;
}

/* ---- package registry -------------------------------------------------------------- */

/* The clock, expiry, replay and rollback checks; the caller holds the lock. */
static CK_RV package_row_locked(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now,
                                uint64_t import_seq);

/* A group package seen before: this member may join it once, while it is its
 * product's installed release. */
static CK_RV member_check_locked(struct guardian_store *st, const struct guardian_package_info *pkg, bool *join)
{
    CK_RV rv;
    struct store_stmt *s = NULL;
    bool row = false;

    rv = stmt_step(st, S_MEMBER_SEEN, &s, &row, "look up a group member", "bb", pkg->package_id,
                   GUARDIAN_PACKAGE_ID_LEN, pkg->group_member, GUARDIAN_HASH_LEN);
    if (rv != CKR_OK)
        goto out;
    if (row) {
        rv = CKR_GUARDIAN_PACKAGE_REPLAYED; /* this member imported it already */
        goto out;
    }
    stmt_done(s);
    rv = stmt_step(st, S_PRODUCT_IS_PACKAGE, &s, &row, "look up the installed release", "ttb", pkg->oem_id,
                   pkg->product_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_GUARDIAN_PACKAGE_ROLLBACK; /* superseded since the first member imported it */
        goto out;
    }
    *join = true;
out:
    stmt_done(s);
    return rv;
}

static CK_RV package_check_locked(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now,
                                  bool *join)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    bool row = false;

    *join = false;
    rv = clock_check_locked(st, now, "import");
    if (rv != CKR_OK)
        goto out;
    if (pkg->not_after < now) {
        rv = CKR_GUARDIAN_PACKAGE_EXPIRED;
        goto out;
    }
    rv = stmt_step(st, S_PACKAGE_SEEN, &s, &row, "look up a package", "b", pkg->package_id, GUARDIAN_PACKAGE_ID_LEN);
    if (rv != CKR_OK)
        goto out;
    if (row) {
        stmt_done(s);
        s = NULL;
        rv = pkg->group_member != NULL ? member_check_locked(st, pkg, join) : CKR_GUARDIAN_PACKAGE_REPLAYED;
        goto out;
    }
    stmt_done(s);

    rv = stmt_step(st, S_INSTALLED_RELEASE, &s, &row, "look up the installed release", "tt", pkg->oem_id,
                   pkg->product_id);
    if (rv != CKR_OK)
        goto out;
    if (row && col_int(s, 0) >= (store_int)pkg->release_version) {
        rv = CKR_GUARDIAN_PACKAGE_ROLLBACK;
        goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_package_check(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    bool locked = false, join = false;

    if (st == NULL || !package_ok(pkg)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = store_enter(st);
    if (rv != CKR_OK)
        goto out;
    locked = true;
    /* Advisory: install repeats the checks inside its write transaction. */
    rv = package_check_locked(st, pkg, now, &join);
out:
    if (locked)
        store_leave(st);
    return rv;
}

static CK_RV package_install_locked(struct guardian_store *st, const struct guardian_package_info *pkg,
                                    int64_t now)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record rec;
    struct store_stmt *s = NULL;
    bool join = false;

    rv = package_check_locked(st, pkg, now, &join);
    if (rv != CKR_OK)
        goto out;

    /* A group package names its importing member in the record's device_id
     * (docs/audit-format.md, "Group packages"); JOIN: a later member. */
    rv = record_init(st, &rec, join ? GUARDIAN_AUDIT_JOIN : GUARDIAN_AUDIT_IMPORT, now, NULL);
    if (rv != CKR_OK)
        goto out;
    if (pkg->group_member != NULL) {
        memcpy(rec.device_id, pkg->group_member, GUARDIAN_HASH_LEN);
        rec.device_id_len = GUARDIAN_HASH_LEN;
    }
    memcpy(rec.oem_id, pkg->oem_id, strlen(pkg->oem_id) + 1);
    memcpy(rec.product_id, pkg->product_id, strlen(pkg->product_id) + 1);
    memcpy(rec.digest, pkg->package_digest, GUARDIAN_HASH_LEN);
    memcpy(rec.package_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN);
    rec.release_version = pkg->release_version;
    rec.authorised_units = pkg->authorised_units;
    rv = audit_append(st, &rec);
    if (rv != CKR_OK)
        goto out;
    if (pkg->group_member != NULL) {
        /* Joining spends nothing and installs nothing: the first member's
         * package row and allowance are the group's. */
        rv = join ? CKR_OK : package_row_locked(st, pkg, now, rec.seq);
        if (rv == CKR_OK)
            rv = stmt_step(st, S_MEMBER_INSERT, &s, NULL, "record a group member", "bbi", pkg->package_id,
                           GUARDIAN_PACKAGE_ID_LEN, pkg->group_member, GUARDIAN_HASH_LEN, (store_int)rec.seq);
        goto out;
    }
    rv = package_row_locked(st, pkg, now, rec.seq);
out:
    stmt_done(s);
    return rv;
}

/* The package's row and its product's installed release (an IMPORT). */
static CK_RV package_row_locked(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now,
                                uint64_t import_seq)
{
    CK_RV rv;
    struct store_stmt *s = NULL;

    rv = stmt_step(st, S_PACKAGE_INSERT, &s, NULL, "record a package", "bbttiiiiibb", pkg->package_id,
                   GUARDIAN_PACKAGE_ID_LEN, pkg->package_digest, GUARDIAN_HASH_LEN, pkg->oem_id, pkg->product_id,
                   (store_int)pkg->release_version, (store_int)pkg->authorised_units,
                   (store_int)pkg->not_after, (store_int)now, (store_int)import_seq, pkg->cert_template,
                   (int)pkg->cert_template_len, pkg->ca_cert, (int)pkg->ca_cert_len);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    /* Install or supersede: the product now counts against this package's
     * allowance; next_serial is left as it was (never reused). */
    rv = stmt_step(st, S_PRODUCT_UPSERT, &s, NULL, "install a product release", "ttbi", pkg->oem_id,
                   pkg->product_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN, (store_int)now);
out:
    stmt_done(s);
    return rv;
}

struct install_args {
    const struct guardian_package_info *pkg;
    int64_t now;
    CK_RV (*commit_hook)(void *ctx);
    void *ctx;
};

static CK_RV install_tx(struct guardian_store *st, void *ctx)
{
    struct install_args *a = ctx;
    CK_RV rv = package_install_locked(st, a->pkg, a->now);
    /* Inside the transaction, with the store locked: the hook must not call
     * the store (it would get CKR_GENERAL_ERROR, not a deadlock). */
    if (rv == CKR_OK && a->commit_hook != NULL)
        rv = a->commit_hook(a->ctx);
    return rv;
}

CK_RV guardian_store_package_install(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now,
                                     CK_RV (*commit_hook)(void *ctx), void *ctx)
{
    struct install_args a = {pkg, now, commit_hook, ctx};

    if (st == NULL || !package_ok(pkg) || pkg->cert_template_len > INT_MAX || pkg->ca_cert_len > INT_MAX)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, true, install_tx, &a);
}

CK_RV guardian_store_package_material(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                      struct guardian_package_material *out)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    bool row = false;
    uint64_t release = 0;

    if (st == NULL || package_id == NULL || out == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, sizeof(*out));
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_PACKAGE_GET, &s, &row, "read a package", "b", package_id, GUARDIAN_PACKAGE_ID_LEN);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_GUARDIAN_PRODUCT_UNKNOWN;
        goto out;
    }
    if (!column_id(s, 0, out->oem_id) || !column_id(s, 1, out->product_id) ||
        !column_uint(s, 2, UINT32_MAX, &release) || !col_is_int(s, 3)) {
        guardian_error(STORE_LOG, "a package row is malformed");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    memcpy(out->package_id, package_id, GUARDIAN_PACKAGE_ID_LEN);
    out->release_version = (uint32_t)release;
    out->not_after = col_int(s, 3);
    out->installed = col_int(s, 6) != 0;
    /* NULL for a package imported before schema 2, or a store-only test. */
    rv = column_blob_dup(s, 4, &out->cert_template, &out->cert_template_len);
    if (rv == CKR_OK)
        rv = column_blob_dup(s, 5, &out->ca_cert, &out->ca_cert_len);
    if (rv != CKR_OK)
        goto out;
    rv = CKR_OK;
out:
    stmt_done(s);
    store_leave(st);
    if (rv != CKR_OK)
        guardian_store_package_material_free(out);
    return rv;
}

void guardian_store_package_material_free(struct guardian_package_material *m)
{
    if (m == NULL)
        return;
    free(m->cert_template);
    free(m->ca_cert);
    m->cert_template = m->ca_cert = NULL;
    m->cert_template_len = m->ca_cert_len = 0;
}

/* ---- products and counters -------------------------------------------------------- */

CK_RV guardian_store_product_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                 struct guardian_product *out)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct store_stmt *s = NULL;
    bool locked = false;
    bool row = false;

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || out == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = store_enter(st);
    if (rv != CKR_OK)
        goto out;
    locked = true;

    rv = stmt_step(st, S_PRODUCT_GET, &s, &row, "read a product", "tt", oem_id, product_id);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_GUARDIAN_PRODUCT_UNKNOWN;
        goto out;
    }
    rv = product_from_row(s, out);
out:
    stmt_done(s);
    if (locked)
        store_leave(st);
    return rv;
}

/* Every installed product, ordered by OEM ID then product ID, into a
 * malloc'd list (*list NULL when there is none); the caller holds the lock. */
CK_RV products_read_locked(struct guardian_store *st, struct guardian_product **list, size_t *count)
{
    struct guardian_product *grown;
    size_t cap = 0;
    struct store_stmt *s = NULL;
    bool row = false;
    CK_RV rv;

    *list = NULL;
    *count = 0;
    rv = stmt_step(st, S_PRODUCTS_ALL, &s, &row, "list products", "");
    while (rv == CKR_OK && row) {
        if (*count == cap) {
            cap = cap != 0 ? 2 * cap : 16;
            grown = realloc(*list, cap * sizeof(**list));
            if (grown == NULL) {
                rv = CKR_HOST_MEMORY;
                goto out;
            }
            *list = grown;
        }
        rv = product_from_row(s, &(*list)[*count]);
        if (rv != CKR_OK)
            goto out;
        (*count)++;
        rv = stmt_next(st, s, &row, "list products");
    }
out:
    stmt_done(s);
    if (rv != CKR_OK) {
        free(*list);
        *list = NULL;
        *count = 0;
    }
    return rv;
}

/* fn for each product of `list`, stopping at the first that is not CKR_OK. */
CK_RV products_call(const struct guardian_product *list, size_t count,
                    CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx)
{
    CK_RV rv = CKR_OK;
    for (size_t i = 0; i < count && fn != NULL && rv == CKR_OK; i++)
        rv = fn(&list[i], ctx);
    return rv;
}

CK_RV guardian_store_products_each(struct guardian_store *st,
                                   CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx)
{
    struct guardian_product *list = NULL;
    size_t count = 0;
    CK_RV rv;

    if (st == NULL || fn == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    /* Products are few (one per installed release): read them all, then call
     * fn without the lock so that it may use the store. */
    rv = products_read_locked(st, &list, &count);
    store_leave(st);
    if (rv == CKR_OK)
        rv = products_call(list, count, fn, ctx);
    free(list);
    return rv;
}

/* The release of a package (for the records that name it). */
CK_RV package_release_locked(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                             uint32_t *release)
{
    struct store_stmt *s = NULL;
    uint64_t r = 0;
    bool row = false;
    CK_RV rv = stmt_step(st, S_PACKAGE_GET, &s, &row, "read a package", "b", package_id, GUARDIAN_PACKAGE_ID_LEN);

    if (rv == CKR_OK && (!row || !column_uint(s, 2, UINT32_MAX, &r))) {
        guardian_error(STORE_LOG, "a serial's package is missing or malformed");
        rv = CKR_GUARDIAN_STORE_FAILED;
    }
    *release = (uint32_t)r;
    stmt_done(s);
    return rv;
}
