/*
 * store.c — the store handle: open and close, the lock, fork detection,
 * and store_write(), the one shape of every mutation.  The Guardian's durable
 * state (store.h says what and why) is kept by the files of store/, one per
 * concern, on the database engine of engine_sqlite.c (store_internal.h: the
 * seam; README.md: which file does what).
 *
 * Rules store/ keeps:
 *  - every mutation runs in one BEGIN IMMEDIATE transaction that commits when
 *    rv is CKR_OK and rolls back otherwise (tx_begin / tx_end);
 *  - every SQLite result code becomes a CKR code in map_sqlite()
 *    (engine_sqlite.c) and nowhere else; the log line names the SQLite
 *    error, never the data;
 *  - one error-checking mutex per store guards its connection and cached
 *    statements; it is never held while a caller's callback runs, except the
 *    install commit_hook, which must run inside the transaction by contract;
 *  - a store is bound to the process that opened it: after fork() the child
 *    gets CKR_GUARDIAN_STORE_FAILED until it opens its own;
 *  - the state directory is checked once (not a symlink, ours, not writable
 *    by others) and then used through a descriptor: every file in it is
 *    opened relative to that descriptor, without following symlinks, 0600.
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* Stores closed in a process that did not open them (after fork()): kept, not
 * freed, so that their memory stays reachable rather than leaked. */
static struct guardian_store *abandoned;
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- locking -------------------------------------------------------------------- */

/* A store is bound to the process that opened it (logged when it is not). */
bool same_process(const struct guardian_store *st)
{
    if (st->pid == getpid())
        return true;
    guardian_error(STORE_LOG, "store opened by process %ld used in process %ld: reopen it after fork()", (long)st->pid,
                   (long)getpid());
    return false;
}

CK_RV store_enter(struct guardian_store *st)
{
    int err;

    if (GUARDIAN_UNLIKELY(!same_process(st)))
        return CKR_GUARDIAN_STORE_FAILED;
    err = pthread_mutex_lock(&st->lock);
    if (GUARDIAN_UNLIKELY(err == EDEADLK)) {
        guardian_error(STORE_LOG, "store re-entered by the thread holding it (from a commit_hook?)");
        return CKR_GENERAL_ERROR;
    }
    if (GUARDIAN_UNLIKELY(err != 0)) {
        guardian_error(STORE_LOG, "cannot lock the store: %s", strerror(err));
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

void store_leave(struct guardian_store *st)
{
    pthread_mutex_unlock(&st->lock);
}

/* The one shape of every mutation: lock the store, BEGIN IMMEDIATE, fold this
 * process's issue journal into the trail, run `fn`, COMMIT if it returned
 * CKR_OK and roll back otherwise, fold what was appended meanwhile and empty
 * the journal once its records are committed, unlock. */
CK_RV store_write(struct guardian_store *st, bool durable, CK_RV (*fn)(struct guardian_store *st, void *ctx),
                  void *ctx)
{
    struct own_journal j;
    CK_RV rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    memset(&j, 0, sizeof(j));
    rv = tx_begin(st, durable);
    if (rv == CKR_OK) {
        if (st->journal_fd >= 0) {
            pthread_mutex_lock(&st->journal_lock);
            rv = own_journal_read_jlocked(st, &j);
            pthread_mutex_unlock(&st->journal_lock);
            if (rv == CKR_OK)
                rv = own_journal_fold_locked(st, &j, 0);
            free(j.buf);
        }
        if (rv == CKR_OK && fn != NULL)
            rv = fn(st, ctx);
        rv = tx_end(st, rv);
        if (st->holder_uncommitted) {
            /* This process's holder row was added in this transaction. */
            if (rv != CKR_OK)
                st->holder_id = 0;
            st->holder_uncommitted = false;
        }
        if (rv == CKR_OK && st->journal_fd >= 0)
            journal_catch_up_locked(st, j.to, j.nonempty);
    }
    store_leave(st);
    return rv;
}

/* ---- input checks ---------------------------------------------------------------- */

/* An OEM or product ID: 1..GUARDIAN_ID_MAX bytes and a terminator, looked at
 * no further than GUARDIAN_ID_MAX + 1 bytes (the size of the struct fields). */
bool id_ok(const char *id)
{
    size_t n;

    if (id == NULL)
        return false;
    n = strnlen(id, GUARDIAN_ID_MAX + 1);
    return n >= 1 && n <= GUARDIAN_ID_MAX;
}

bool device_id_ok(const uint8_t *device_id, size_t len)
{
    return device_id != NULL && len >= 1 && len <= GUARDIAN_DEVICE_ID_MAX;
}

/* ---- open and close -------------------------------------------------------------- */

static void store_free(struct guardian_store *st)
{
    if (st == NULL)
        return;
    if (st->pid != getpid()) {
        /* Inherited across fork(): the parent still owns the connection and
         * its locks; closing it here could checkpoint or unlink the parent's
         * WAL.  Abandon it (SQLite's advice), mutex and all. */
        guardian_warn(STORE_LOG, "store inherited across fork() abandoned, not closed");
        pthread_mutex_lock(&abandoned_lock);
        st->next_abandoned = abandoned;
        abandoned = st;
        pthread_mutex_unlock(&abandoned_lock);
        return;
    }
    for (size_t b = 0; b < DEVICE_BUCKETS; b++)
        while (st->devices[b] != NULL) {
            struct device_entry *e = st->devices[b];
            st->devices[b] = e->next;
            free(e->cert);
            free(e);
        }
    engine_close(st);
    if (st->lock_ready) {
        pthread_mutex_destroy(&st->lock);
        pthread_mutex_destroy(&st->journal_lock);
        pthread_mutex_destroy(&st->read_lock);
        pthread_cond_destroy(&st->device_cond);
    }
    if (st->journal_fd >= 0)
        close(st->journal_fd); /* an open that failed after creating it: the next opener folds it */
    if (st->dir_fd >= 0)
        close(st->dir_fd);
    if (st->anchor_lock_fd >= 0)
        close(st->anchor_lock_fd);
    free(st->journal_buf);
    free(st->conninfo);
    if (st->password != NULL) {
        OPENSSL_cleanse(st->password, strlen(st->password));
        free(st->password);
    }
    free(st);
}

/* The engine `opt` names; NULL when this build lacks it (logged). */
static const struct engine_ops *engine_of(const struct guardian_store_options *opt)
{
    if (opt == NULL || opt->engine == GUARDIAN_STORE_ENGINE_SQLITE)
        return &engine_sqlite_ops;
#ifdef GUARDIAN_WITH_POSTGRESQL
    if (opt->engine == GUARDIAN_STORE_ENGINE_POSTGRESQL)
        return &engine_pg_ops;
#endif
    guardian_error(STORE_LOG, "store engine %d is not in this build (PostgreSQL needs libpq-dev at build time)",
                   (int)opt->engine);
    return NULL;
}

bool guardian_store_engine_available(enum guardian_store_engine engine)
{
#ifdef GUARDIAN_WITH_POSTGRESQL
    if (engine == GUARDIAN_STORE_ENGINE_POSTGRESQL)
        return true;
#endif
    return engine == GUARDIAN_STORE_ENGINE_SQLITE;
}

const char *guardian_store_engine_name(const struct guardian_store *st)
{
    return st->ops->name;
}

void guardian_store_location(const struct guardian_store *st, char *out, size_t cap)
{
    if (cap == 0)
        return;
    st->ops->location(st, out, cap);
}

/* `memory`: no state directory (SQLite: an in-memory database; PostgreSQL:
 * the server's, without issue journals). */
static CK_RV store_open_path(const char *path, const char *dir, const struct guardian_store_options *opt,
                             struct guardian_store **out)
{
    const bool memory = dir == NULL;
    const struct engine_ops *ops = engine_of(opt);
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_store *st = NULL;
    pthread_mutexattr_t attr;
    int rc;

    if (ops == NULL || !ops->usable()) {
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    st->ops = ops;
    if (ops != &engine_sqlite_ops) {
        st->conninfo = strdup(opt->conninfo != NULL ? opt->conninfo : "");
        st->password = opt->password != NULL ? strdup(opt->password) : NULL;
        if (st->conninfo == NULL || (opt->password != NULL && st->password == NULL)) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
    }
    st->pid = getpid();
    st->journal_fd = -1;
    st->dir_fd = -1;
    st->anchor_lock_fd = -1;
    if (pthread_mutexattr_init(&attr) != 0) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    /* Error-checking: a commit_hook that calls back into the store gets an
     * error instead of deadlocking the production line. */
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    rc = pthread_mutex_init(&st->lock, &attr);
    if (rc == 0 && (rc = pthread_mutex_init(&st->journal_lock, &attr)) != 0)
        pthread_mutex_destroy(&st->lock);
    if (rc == 0 && (rc = pthread_mutex_init(&st->read_lock, &attr)) != 0) {
        pthread_mutex_destroy(&st->journal_lock);
        pthread_mutex_destroy(&st->lock);
    }
    if (rc == 0 && (rc = pthread_cond_init(&st->device_cond, NULL)) != 0) {
        pthread_mutex_destroy(&st->read_lock);
        pthread_mutex_destroy(&st->journal_lock);
        pthread_mutex_destroy(&st->lock);
    }
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    st->lock_ready = true;

    if (!memory) {
        snprintf(st->dir, sizeof(st->dir), "%s", dir);
        rv = state_dir_open(dir, &st->dir_fd);
        /* SQLite's files; a server engine keeps only the journals and
         * anchor.lock here. */
        if (rv == CKR_OK && ops == &engine_sqlite_ops)
            rv = state_files_prepare(st);
        if (rv != CKR_OK)
            goto out;
    }
    rv = engine_open(st, path, memory);
    if (rv != CKR_OK)
        goto out;
    if (!memory) {
        /* Before this process has a journal or a holder row: every journal
         * and holder found belongs to another process. */
        rv = journal_recover(st);
        if (rv == CKR_OK)
            rv = journal_orphans(st);
        if (rv == CKR_OK)
            rv = journal_open(st);
        if (rv == CKR_OK)
            rv = engine_reader_open(st, path);
        if (rv != CKR_OK)
            goto out;
    }

    *out = st;
    st = NULL;
    rv = CKR_OK;
out:
    store_free(st);
    return rv;
}

CK_RV guardian_store_open(const char *dir, struct guardian_store **out)
{
    return guardian_store_open_options(dir, NULL, out);
}

CK_RV guardian_store_open_options(const char *dir, const struct guardian_store_options *opt,
                                  struct guardian_store **out)
{
    char path[PATH_MAX], clean[PATH_MAX];
    size_t len;
    int n;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    if (dir == NULL && opt != NULL && opt->engine != GUARDIAN_STORE_ENGINE_SQLITE)
        return store_open_path(":server:", NULL, opt, out);
    if (dir == NULL || *dir == '\0')
        return CKR_ARGUMENTS_BAD;
    /* Without trailing slashes: "link/" would make lstat() and O_NOFOLLOW
     * look through a symbolic link. */
    len = strnlen(dir, sizeof(clean));
    if (len >= sizeof(clean)) {
        guardian_error(STORE_LOG, "state directory path too long");
        return CKR_ARGUMENTS_BAD;
    }
    while (len > 1 && dir[len - 1] == '/')
        len--;
    memcpy(clean, dir, len);
    clean[len] = '\0';
    n = snprintf(path, sizeof(path), "%s/%s", clean, STORE_FILE_NAME);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        guardian_error(STORE_LOG, "state directory path too long");
        return CKR_ARGUMENTS_BAD;
    }
    return store_open_path(path, clean, opt, out);
}

CK_RV guardian_store_open_memory(struct guardian_store **out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    return store_open_path(":memory:", NULL, NULL, out);
}

/* The last fold of this process's journal: its holder row goes with it, so
 * that no opener takes the journal's absence for a loss. */
static CK_RV close_tx(struct guardian_store *st, void *ctx)
{
    struct store_stmt *s = NULL;
    CK_RV rv = CKR_OK;

    (void)ctx;
    if (st->holder_id != 0)
        rv = stmt_step(st, S_HOLDER_DELETE, &s, NULL, "forget this process's holder row", "i", st->holder_id);
    stmt_done(s);
    return rv;
}

void guardian_store_close(struct guardian_store *st)
{
    if (st != NULL && st->pid == getpid() && st->journal_fd >= 0) {
        /* Fold what is left; if that fails the journal and the holder row
         * stay for the next opener, which folds it once our lock is gone. */
        if (store_write(st, true, close_tx, NULL) == CKR_OK) {
            st->holder_id = 0;
            if (st->journal_size == 0 && unlinkat(st->dir_fd, st->journal_name, 0) != 0)
                guardian_warn(STORE_LOG, "cannot remove the issue journal %s: %s", st->journal_name, strerror(errno));
        }
        close(st->journal_fd);
        st->journal_fd = -1;
    }
    store_free(st);
}
