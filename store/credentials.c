/*
 * credentials.c — the store's side of the Guardian credentials of service
 * mode (module/credentials.c does the scrypt): the SO's and each operator's
 * salt, hash and parameters and their consecutive failures, never a PIN.
 * Every change and the lock at the 5th consecutive failure is a CREDENTIAL
 * record in the same transaction; failures commit durably before the module
 * compares a PIN, so a killed process cannot save an attempt.
 */
#include "store_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

/* ---- Guardian credentials ------------------------------------------------------------- */

/* (role, name) as the API takes it: CKU_SO with "" (NULL is ""), or CKU_USER
 * with a non-empty name of guardian_operator_name_ok.  *key: the name as the
 * credentials table keys it. */
static bool credential_key_ok(int role, const char *name, const char **key)
{
    if (name == NULL)
        name = "";
    *key = name;
    if (role == (int)CKU_SO)
        return name[0] == '\0';
    return role == (int)CKU_USER && name[0] != '\0' && guardian_operator_name_ok(name);
}

/* The subject a CREDENTIAL record names: the operator's name, "so" for the SO. */
static const char *credential_subject(int role, const char *key)
{
    return role == (int)CKU_SO ? "so" : key;
}

/* Appends the CREDENTIAL record of `action` on `subject`, in the caller's
 * write transaction. */
static CK_RV credential_record_locked(struct guardian_store *st, int action, const char *subject, int64_t now)
{
    struct guardian_audit_record rec;
    size_t n = strlen(subject);
    CK_RV rv = record_init(st, &rec, GUARDIAN_AUDIT_CREDENTIAL, now, NULL);

    if (rv != CKR_OK)
        return rv;
    rec.serial = (uint64_t)action;
    memcpy(rec.device_id, subject, n);
    rec.device_id_len = n;
    return audit_append(st, &rec);
}

struct credential_args {
    int role;
    const char *key;
    const struct guardian_credential *cred; /* put */
    int action;
    const char *subject;
    uint32_t failures; /* out: failed */
};

/* Reads the failures of (role, key); *found false if there is no such row. */
static CK_RV credential_failures_locked(struct guardian_store *st, int role, const char *key, bool *found,
                                        uint32_t *failures)
{
    struct store_stmt *s = NULL;
    uint64_t f = 0;
    CK_RV rv = stmt_step(st, S_CREDENTIAL_GET, &s, found, "read a credential", "it", (store_int)role, key);

    if (rv == CKR_OK && *found) {
        if (!column_uint(s, 5, UINT32_MAX, &f)) {
            guardian_error(STORE_LOG, "a credential row is malformed");
            rv = CKR_GUARDIAN_STORE_FAILED;
        }
        *failures = (uint32_t)f;
    }
    stmt_done(s);
    return rv;
}

static CK_RV credential_put_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    const struct guardian_credential *c = a->cred;
    int64_t now = (int64_t)time(NULL);
    struct store_stmt *s = NULL;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_PUT, &s, NULL, "write a credential", "itbbiiii", (store_int)a->role, a->key,
                   c->salt, (int)sizeof(c->salt), c->hash, (int)sizeof(c->hash), (store_int)c->kdf_n,
                   (store_int)c->kdf_r, (store_int)c->kdf_p, (store_int)now);
    stmt_done(s);
    if (rv == CKR_OK)
        rv = credential_record_locked(st, a->action, a->subject, now);
    return rv;
}

static CK_RV credential_remove_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    struct store_stmt *s = NULL;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_DELETE, &s, NULL, "remove a credential", "it", (store_int)a->role, a->key);
    if (rv == CKR_OK && store_changes(st) != 1)
        rv = CKR_USER_PIN_NOT_INITIALIZED;
    stmt_done(s);
    if (rv == CKR_OK)
        rv = credential_record_locked(st, a->action, credential_subject(a->role, a->key), (int64_t)time(NULL));
    return rv;
}

static CK_RV credential_failed_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    struct store_stmt *s = NULL;
    bool found = false;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_FAILED, &s, NULL, "count a failed login", "it", (store_int)a->role, a->key);
    stmt_done(s);
    if (rv != CKR_OK)
        return rv;
    if (store_changes(st) != 1)
        return CKR_USER_PIN_NOT_INITIALIZED;
    rv = credential_failures_locked(st, a->role, a->key, &found, &a->failures);
    if (rv == CKR_OK && !found) {
        guardian_error(STORE_LOG, "a credential changed under a write transaction");
        rv = CKR_GUARDIAN_STORE_FAILED;
    }
    if (rv == CKR_OK && a->failures == GUARDIAN_CREDENTIAL_MAX_FAILURES) {
        guardian_warn(STORE_LOG, "%s locked after %d consecutive failed logins",
                      a->role == (int)CKU_SO ? "the SO" : a->key, GUARDIAN_CREDENTIAL_MAX_FAILURES);
        rv = credential_record_locked(st, GUARDIAN_CREDENTIAL_LOCKED, credential_subject(a->role, a->key),
                                      (int64_t)time(NULL));
    }
    return rv;
}

static CK_RV credential_succeeded_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    struct store_stmt *s = NULL;
    bool found = false;
    uint32_t failures = 0;
    CK_RV rv = credential_failures_locked(st, a->role, a->key, &found, &failures);

    if (rv != CKR_OK)
        return rv;
    if (!found)
        return CKR_USER_PIN_NOT_INITIALIZED;
    if (failures == 0)
        return CKR_OK; /* nothing to write: the COMMIT of an unchanged database syncs nothing */
    rv = stmt_step(st, S_CREDENTIAL_SUCCEEDED, &s, NULL, "reset the failed logins", "it", (store_int)a->role,
                   a->key);
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_credential_get(struct guardian_store *st, int role, const char *name,
                                    struct guardian_credential *out)
{
    uint64_t n = 0, r = 0, p = 0, failures = 0;
    struct store_stmt *s = NULL;
    const char *key = NULL;
    bool row = false;
    CK_RV rv;

    if (st == NULL || out == NULL || !credential_key_ok(role, name, &key))
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, sizeof(*out));
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_CREDENTIAL_GET, &s, &row, "read a credential", "it", (store_int)role, key);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_USER_PIN_NOT_INITIALIZED;
        goto out;
    }
    if (!column_blob_exact(s, 0, out->salt, sizeof(out->salt)) ||
        !column_blob_exact(s, 1, out->hash, sizeof(out->hash)) || !column_uint(s, 2, UINT32_MAX, &n) ||
        !column_uint(s, 3, UINT32_MAX, &r) || !column_uint(s, 4, UINT32_MAX, &p) ||
        !column_uint(s, 5, UINT32_MAX, &failures) || !col_is_int(s, 6)) {
        guardian_error(STORE_LOG, "a credential row is malformed");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    snprintf(out->name, sizeof(out->name), "%s", key);
    out->role = role;
    out->kdf_n = (uint32_t)n;
    out->kdf_r = (uint32_t)r;
    out->kdf_p = (uint32_t)p;
    out->failures = (uint32_t)failures;
    out->changed_at = col_int(s, 6);
    rv = CKR_OK;
out:
    stmt_done(s);
    store_leave(st);
    if (rv != CKR_OK)
        OPENSSL_cleanse(out, sizeof(*out));
    return rv;
}

CK_RV guardian_store_credential_put(struct guardian_store *st, const struct guardian_credential *cred, int action,
                                    const char *subject)
{
    struct credential_args a;

    memset(&a, 0, sizeof(a));
    if (st == NULL || cred == NULL || !credential_key_ok(cred->role, cred->name, &a.key) || cred->kdf_n == 0 ||
        cred->kdf_r == 0 || cred->kdf_p == 0)
        return CKR_ARGUMENTS_BAD;
    /* "so" names the SO in every record: no operator may be called so. */
    if (cred->role == (int)CKU_USER && strcmp(a.key, "so") == 0)
        return CKR_ARGUMENTS_BAD;
    if (!(action == GUARDIAN_CREDENTIAL_CHANGED ||
          (action == GUARDIAN_CREDENTIAL_SO_SET && cred->role == (int)CKU_SO) ||
          (action == GUARDIAN_CREDENTIAL_USER_SET && cred->role == (int)CKU_USER)))
        return CKR_ARGUMENTS_BAD;
    /* The record names whose credential it is, and nothing else: a caller
     * cannot make it name another. */
    if (subject != NULL && strcmp(subject, credential_subject(cred->role, a.key)) != 0)
        return CKR_ARGUMENTS_BAD;
    subject = credential_subject(cred->role, a.key);
    a.role = cred->role;
    a.cred = cred;
    a.action = action;
    a.subject = subject;
    return store_write(st, true, credential_put_tx, &a);
}

CK_RV guardian_store_credential_remove(struct guardian_store *st, int role, const char *name, int action)
{
    struct credential_args a;

    memset(&a, 0, sizeof(a));
    if (st == NULL || !credential_key_ok(role, name, &a.key) ||
        !((action == GUARDIAN_CREDENTIAL_SO_CLEARED && role == (int)CKU_SO) ||
          (action == GUARDIAN_CREDENTIAL_REMOVED && role == (int)CKU_USER)))
        return CKR_ARGUMENTS_BAD;
    a.role = role;
    a.action = action;
    return store_write(st, true, credential_remove_tx, &a);
}

CK_RV guardian_store_credential_failed(struct guardian_store *st, int role, const char *name, uint32_t *failures_now)
{
    struct credential_args a;
    CK_RV rv;

    memset(&a, 0, sizeof(a));
    if (st == NULL || !credential_key_ok(role, name, &a.key))
        return CKR_ARGUMENTS_BAD;
    a.role = role;
    rv = store_write(st, true, credential_failed_tx, &a);
    if (rv == CKR_OK && failures_now != NULL)
        *failures_now = a.failures; /* only once it is durable */
    return rv;
}

CK_RV guardian_store_credential_succeeded(struct guardian_store *st, int role, const char *name)
{
    struct credential_args a;

    memset(&a, 0, sizeof(a));
    if (st == NULL || !credential_key_ok(role, name, &a.key))
        return CKR_ARGUMENTS_BAD;
    a.role = role;
    return store_write(st, true, credential_succeeded_tx, &a);
}

CK_RV guardian_store_credential_summary(struct guardian_store *st, bool *so_set, size_t *n_users,
                                        uint32_t *max_user_failures, size_t *n_users_locked, uint32_t *so_failures)
{
    bool so = false;
    size_t users = 0, locked = 0;
    uint32_t user_max = 0, so_fail = 0;
    struct store_stmt *s = NULL;
    bool row = false;
    CK_RV rv;

    if (st == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_CREDENTIAL_SUMMARY, &s, &row, "summarise the credentials", "i",
                   (store_int)GUARDIAN_CREDENTIAL_MAX_FAILURES);
    while (rv == CKR_OK && row) {
        uint64_t role = 0, count = 0, max = 0, n_locked = 0;
        if (!column_uint(s, 0, CKU_USER, &role) || !column_uint(s, 1, INT64_MAX, &count) ||
            !column_uint(s, 2, UINT32_MAX, &max) || !column_uint(s, 3, INT64_MAX, &n_locked)) {
            guardian_error(STORE_LOG, "the credentials are malformed");
            rv = CKR_GUARDIAN_STORE_FAILED;
            goto out;
        }
        if (role == CKU_SO) {
            so = count > 0;
            so_fail = (uint32_t)max;
        } else {
            users = (size_t)count;
            user_max = (uint32_t)max;
            locked = (size_t)n_locked;
        }
        rv = stmt_next(st, s, &row, "summarise the credentials");
    }
out:
    stmt_done(s);
    store_leave(st);
    if (rv == CKR_OK) {
        if (so_set != NULL)
            *so_set = so;
        if (n_users != NULL)
            *n_users = users;
        if (max_user_failures != NULL)
            *max_user_failures = user_max;
        if (n_users_locked != NULL)
            *n_users_locked = locked;
        if (so_failures != NULL)
            *so_failures = so_fail;
    }
    return rv;
}
