/*
 * store.c — the Guardian's durable state in SQLite: package registry, production
 * counters and the hash-chained audit trail (store.h says what and why).
 *
 * Rules this file keeps:
 *  - every mutation runs in one BEGIN IMMEDIATE transaction that commits when
 *    rv is CKR_OK and rolls back otherwise (tx_begin / tx_end);
 *  - every SQLite result code becomes a CKR code in map_sqlite() and nowhere
 *    else; the log line names the SQLite error, never the data;
 *  - one error-checking mutex per store guards its connection and cached
 *    statements; it is never held while a caller's callback runs, except the
 *    install commit_hook, which must run inside the transaction by contract;
 *  - a store is bound to the process that opened it: after fork() the child
 *    gets CKR_GUARDIAN_STORE_FAILED until it opens its own.
 */
#include "store.h"

#include "guardian/guardian-pkcs11.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "module.h"

#include <openssl/evp.h>

/* Two durabilities, chosen per transaction (docs/audit-format.md, "Durability"):
 *  - FULL for everything that makes units spendable or records what the OEM
 *    authorised: package installs and reservations.  In WAL mode NORMAL
 *    survives a process crash but a power loss may roll back the last commits,
 *    i.e. forget reservations whose certificates already left the Guardian,
 *    which would let the authorised count be exceeded.  FULL syncs the WAL on
 *    COMMIT, and with it every earlier NORMAL commit.
 *  - NORMAL for ISSUE and RELEASE records: they only ever spend or return
 *    units already reserved durably.  A process crash loses none of them; a
 *    power loss may lose the last few, which then read "reserved, not issued"
 *    - counted against the quota, never free again.  NORMAL costs ~8 us a
 *    commit here, FULL ~160 us. */
#ifndef GUARDIAN_STORE_SYNCHRONOUS
#define GUARDIAN_STORE_SYNCHRONOUS "FULL"
#endif
/* How long a process waits for another one's write transaction. */
#ifndef GUARDIAN_STORE_BUSY_TIMEOUT_MS
#define GUARDIAN_STORE_BUSY_TIMEOUT_MS 10000
#endif
/* WAL pages between automatic checkpoints (SQLite's default: 1000).  Each
 * checkpoint costs two fsyncs (~3 ms each on this VM's disk); at ~4 pages a
 * certificate the default made one every ~250 certificates, about 25 us a
 * certificate.  8192 pages (32 MiB of WAL at most) makes it ~3 us. */
#ifndef GUARDIAN_STORE_WAL_CHECKPOINT_PAGES
#define GUARDIAN_STORE_WAL_CHECKPOINT_PAGES 8192
#endif
/* Bytes per database page.  A WAL commit writes every page it dirtied, whole:
 * an ISSUE dirties ~4 pages (the audit tail, the audit head, the reservation,
 * the certificates tail) for ~1 KiB of data, so with SQLite's default 4096 a
 * certificate cost ~20 KiB of WAL and as much again at the checkpoint.  1024
 * cuts that fourfold; every row of the schema fits a 1 KiB page. */
#ifndef GUARDIAN_STORE_PAGE_SIZE
#define GUARDIAN_STORE_PAGE_SIZE "2048"
#endif
#define STORE_FILE_NAME "guardian.db"
#define STORE_LOG "store"
#define AUDIT_PAGE_RECORDS 64
#define WAL_RETRY_MS 10

/* ---- schema and migrations ---------------------------------------------------- */

/* Version 1.  Integers are SQLite's signed 64-bit; the API's uint64_t values
 * are kept <= INT64_MAX.  The CHECK constraints are the last line of defence
 * of the counters: not even a bug can issue more than authorised. */
static const char schema_v1[] =
    "CREATE TABLE packages ("
    "  package_id       BLOB    PRIMARY KEY CHECK (length(package_id) = 16),"
    "  package_digest   BLOB    NOT NULL CHECK (length(package_digest) = 32),"
    "  oem_id           TEXT    NOT NULL CHECK (length(CAST(oem_id AS BLOB)) BETWEEN 1 AND 64),"
    "  product_id       TEXT    NOT NULL CHECK (length(CAST(product_id AS BLOB)) BETWEEN 1 AND 64),"
    "  release_version  INTEGER NOT NULL CHECK (release_version BETWEEN 0 AND 4294967295),"
    "  authorised_units INTEGER NOT NULL CHECK (authorised_units >= 0),"
    "  issued_units     INTEGER NOT NULL DEFAULT 0"
    "                   CHECK (issued_units >= 0 AND issued_units <= authorised_units),"
    "  not_after        INTEGER NOT NULL,"
    "  imported_at      INTEGER NOT NULL,"
    "  import_seq       INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE INDEX packages_by_product ON packages (oem_id, product_id, release_version);"
    "CREATE TABLE products ("
    "  oem_id       TEXT    NOT NULL,"
    "  product_id   TEXT    NOT NULL,"
    "  package_id   BLOB    NOT NULL UNIQUE REFERENCES packages (package_id),"
    "  next_serial  INTEGER NOT NULL CHECK (next_serial >= 1),"
    "  installed_at INTEGER NOT NULL,"
    "  PRIMARY KEY (oem_id, product_id)"
    ") WITHOUT ROWID;"
    "CREATE TABLE issuance ("
    "  oem_id      TEXT    NOT NULL,"
    "  product_id  TEXT    NOT NULL,"
    "  serial      INTEGER NOT NULL CHECK (serial >= 1),"
    "  package_id  BLOB    NOT NULL REFERENCES packages (package_id),"
    "  device_id   BLOB    NOT NULL,"
    "  reserve_seq INTEGER NOT NULL,"
    "  issue_seq   INTEGER,"
    "  cert_digest BLOB,"
    "  PRIMARY KEY (oem_id, product_id, serial),"
    "  FOREIGN KEY (oem_id, product_id) REFERENCES products (oem_id, product_id)"
    ") WITHOUT ROWID;"
    "CREATE TABLE audit ("
    "  seq              INTEGER PRIMARY KEY CHECK (seq >= 1),"
    "  type             INTEGER NOT NULL,"
    "  time             INTEGER NOT NULL,"
    "  oem_id           TEXT    NOT NULL,"
    "  product_id       TEXT    NOT NULL,"
    "  serial           INTEGER NOT NULL,"
    "  device_id        BLOB    NOT NULL,"
    "  digest           BLOB    NOT NULL,"
    "  package_id       BLOB    NOT NULL,"
    "  release_version  INTEGER NOT NULL,"
    "  authorised_units INTEGER NOT NULL,"
    "  prev_hash        BLOB    NOT NULL,"
    "  hash             BLOB    NOT NULL"
    ");"
    /* The head of the chain, written in the same transaction as each record:
     * it makes a truncated tail detectable. */
    "CREATE TABLE audit_head ("
    "  id   INTEGER PRIMARY KEY CHECK (id = 1),"
    "  seq  INTEGER NOT NULL CHECK (seq >= 0),"
    "  hash BLOB    NOT NULL CHECK (length(hash) = 32)"
    ");"
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));";

struct guardian_store;
static CK_RV map_sqlite(struct guardian_store *st, int rc, const char *what);

/* 0 -> 1: the whole schema. */
static CK_RV migrate_to_1(struct guardian_store *st, sqlite3 *db)
{
    int rc = sqlite3_exec(db, schema_v1, NULL, NULL, NULL);
    return map_sqlite(st, rc, "create the schema (version 1)");
}

/* 1 -> 2: what issuing certificates needs.  packages: the certificate template
 * and the production CA certificate (DER), so that the module builds
 * certificates from the store alone; issuance: the RELEASE record of a
 * reservation given back; certificates: each issued certificate (for the
 * audit export), keyed by its ISSUE record's seq so that every insert is an
 * append at the end of the table (growing the reservation rows in place by
 * ~520 bytes split their pages: ~5 WAL pages per certificate, measured). */
static const char schema_v2[] =
    "ALTER TABLE packages ADD COLUMN cert_template BLOB;"
    "ALTER TABLE packages ADD COLUMN ca_cert BLOB;"
    "ALTER TABLE issuance ADD COLUMN release_seq INTEGER;"
    "CREATE TABLE certificates ("
    "  issue_seq   INTEGER PRIMARY KEY,"
    "  certificate BLOB NOT NULL CHECK (length(certificate) BETWEEN 1 AND 16384)"
    ");";

static CK_RV migrate_to_2(struct guardian_store *st, sqlite3 *db)
{
    int rc = sqlite3_exec(db, schema_v2, NULL, NULL, NULL);
    return map_sqlite(st, rc, "migrate the schema to version 2");
}

struct migration {
    int to_version;
    /* Runs inside the migration's write transaction; may read and rewrite
     * data as well as the schema. */
    CK_RV (*apply)(struct guardian_store *st, sqlite3 *db);
};

/* Append only: entry N turns a version N-1 database into version N. */
static const struct migration migrations[] = {
    {1, migrate_to_1},
    {2, migrate_to_2},
};
#define STORE_SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---- cached statements --------------------------------------------------------- */

enum stmt_id {
    S_BEGIN,
    S_SYNC_FULL,
    S_SYNC_NORMAL,
    S_COMMIT,
    S_ROLLBACK,
    S_USER_VERSION,
    S_PACKAGE_SEEN,
    S_INSTALLED_RELEASE,
    S_PACKAGE_INSERT,
    S_PRODUCT_UPSERT,
    S_PRODUCT_GET,
    S_PRODUCTS_ALL,
    S_PACKAGE_COUNT,
    S_SERIAL_ADVANCE,
    S_ISSUANCE_INSERT,
    S_ISSUANCE_GET,
    S_ISSUANCE_SET_ISSUED,
    S_ISSUANCE_SET_RELEASED,
    S_CERTIFICATE_INSERT,
    S_CERTIFICATE_GET,
    S_PACKAGE_GET,
    S_HEAD_GET,
    S_HEAD_SET,
    S_AUDIT_INSERT,
    S_AUDIT_PAGE,
    S_COUNT
};

#define PRODUCT_COLUMNS                                                                    \
    "SELECT p.oem_id, p.product_id, p.package_id, k.release_version, k.authorised_units, " \
    "k.issued_units, p.next_serial, k.not_after, p.installed_at "                          \
    "FROM products p JOIN packages k ON k.package_id = p.package_id "

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_SYNC_FULL] = "PRAGMA synchronous = " GUARDIAN_STORE_SYNCHRONOUS,
    [S_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_USER_VERSION] = "PRAGMA user_version",
    [S_PACKAGE_SEEN] = "SELECT 1 FROM packages WHERE package_id = ?1",
    [S_INSTALLED_RELEASE] = "SELECT k.release_version FROM products p JOIN packages k "
                            "ON k.package_id = p.package_id WHERE p.oem_id = ?1 AND p.product_id = ?2",
    [S_PACKAGE_INSERT] = "INSERT INTO packages (package_id, package_digest, oem_id, product_id, "
                         "release_version, authorised_units, issued_units, not_after, imported_at, "
                         "import_seq, cert_template, ca_cert) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11)",
    [S_PRODUCT_UPSERT] = "INSERT INTO products (oem_id, product_id, package_id, next_serial, installed_at) "
                         "VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (oem_id, product_id) DO UPDATE SET "
                         "package_id = excluded.package_id, installed_at = excluded.installed_at",
    [S_PRODUCT_GET] = PRODUCT_COLUMNS "WHERE p.oem_id = ?1 AND p.product_id = ?2",
    [S_PRODUCTS_ALL] = PRODUCT_COLUMNS "ORDER BY p.oem_id, p.product_id",
    [S_PACKAGE_COUNT] = "UPDATE packages SET issued_units = issued_units + ?2 "
                        "WHERE package_id = ?1 AND issued_units + ?2 BETWEEN 0 AND authorised_units",
    [S_SERIAL_ADVANCE] = "UPDATE products SET next_serial = next_serial + ?4 "
                         "WHERE oem_id = ?1 AND product_id = ?2 AND next_serial = ?3",
    [S_ISSUANCE_INSERT] = "INSERT INTO issuance (oem_id, product_id, serial, package_id, device_id, "
                          "reserve_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_ISSUANCE_GET] = "SELECT device_id, issue_seq, release_seq, package_id, cert_digest FROM issuance "
                       "WHERE oem_id = ?1 AND product_id = ?2 AND serial = ?3",
    [S_ISSUANCE_SET_ISSUED] = "UPDATE issuance SET issue_seq = ?4, cert_digest = ?5, device_id = ?6 "
                              "WHERE oem_id = ?1 AND product_id = ?2 AND serial = ?3 "
                              "AND issue_seq IS NULL AND release_seq IS NULL",
    [S_ISSUANCE_SET_RELEASED] = "UPDATE issuance SET release_seq = ?4 WHERE oem_id = ?1 AND product_id = ?2 "
                                "AND serial = ?3 AND issue_seq IS NULL AND release_seq IS NULL",
    [S_CERTIFICATE_INSERT] = "INSERT INTO certificates (issue_seq, certificate) VALUES (?1, ?2)",
    [S_CERTIFICATE_GET] = "SELECT c.certificate FROM issuance i JOIN certificates c ON c.issue_seq = i.issue_seq "
                          "WHERE i.oem_id = ?1 AND i.product_id = ?2 AND i.serial = ?3",
    [S_PACKAGE_GET] = "SELECT k.oem_id, k.product_id, k.release_version, k.not_after, k.cert_template, "
                      "k.ca_cert, p.package_id IS NOT NULL FROM packages k LEFT JOIN products p "
                      "ON p.package_id = k.package_id WHERE k.package_id = ?1",
    [S_HEAD_GET] = "SELECT seq, hash FROM audit_head WHERE id = 1",
    [S_HEAD_SET] = "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1 AND seq = ?3",
    [S_AUDIT_INSERT] = "INSERT INTO audit (seq, type, time, oem_id, product_id, serial, device_id, digest, "
                       "package_id, release_version, authorised_units, prev_hash, hash) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    [S_AUDIT_PAGE] = "SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, "
                     "release_version, authorised_units, prev_hash, hash FROM audit "
                     "WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
};

struct guardian_store {
    pthread_mutex_t lock; /* guards db and stmt[] */
    bool lock_ready;
    pid_t pid;            /* the process that opened the store */
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    bool sync_full;       /* the connection's synchronous setting is FULL */
    /* The issue journal (file-backed stores): ISSUE records appended with one
     * write() each, folded into the trail by the next write transaction that
     * reserves or releases, by guardian_store_flush and at close; a dead
     * process's journal by the next opener.  -1: none (in-memory store). */
    int journal_fd;
    off_t journal_size;
    char journal_path[PATH_MAX];
    uint8_t *journal_buf; /* one encoded record */
    struct guardian_store *next_abandoned;
};

/* Stores closed in a process that did not open them (after fork()): kept, not
 * freed, so that their memory stays reachable rather than leaked. */
static struct guardian_store *abandoned;
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- errors: the one place SQLite result codes become CKR codes ---------------- */

static CK_RV map_sqlite(struct guardian_store *st, int rc, const char *what)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return CKR_OK;
    case SQLITE_NOMEM:
        guardian_error(STORE_LOG, "%s: out of memory", what);
        return CKR_HOST_MEMORY;
    default:
        /* BUSY (after the timeout), LOCKED, IOERR, FULL, CORRUPT, NOTADB,
         * CANTOPEN, READONLY, CONSTRAINT, ...: the state cannot be used.
         * sqlite3_errmsg names the failing table/column at most, never a
         * bound value. */
        guardian_error(STORE_LOG, "%s: %s (SQLite %d): %s", what, sqlite3_errstr(rc), rc,
                       st != NULL && st->db != NULL ? sqlite3_errmsg(st->db) : "no connection");
        return CKR_GUARDIAN_STORE_FAILED;
    }
}

/* ---- locking -------------------------------------------------------------------- */

static CK_RV store_enter(struct guardian_store *st)
{
    int err;

    if (GUARDIAN_UNLIKELY(st->pid != getpid())) {
        guardian_error(STORE_LOG, "store opened by process %ld used in process %ld: reopen it after fork()",
                       (long)st->pid, (long)getpid());
        return CKR_GUARDIAN_STORE_FAILED;
    }
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

static void store_leave(struct guardian_store *st)
{
    pthread_mutex_unlock(&st->lock);
}

/* ---- statements ---------------------------------------------------------------- */

static CK_RV stmt_get(struct guardian_store *st, enum stmt_id id, sqlite3_stmt **out)
{
    int rc;

    if (st->stmt[id] == NULL) {
        rc = sqlite3_prepare_v3(st->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[id], NULL);
        if (rc != SQLITE_OK)
            return map_sqlite(st, rc, "prepare");
    }
    *out = st->stmt[id];
    return CKR_OK;
}

/* Every statement is reset as soon as its rows are read, so that no read is
 * left pending across COMMIT/ROLLBACK and bound pointers are not kept. */
static void stmt_done(sqlite3_stmt *s)
{
    if (s != NULL) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
}

/* Runs a statement without bindings that returns no rows we need. */
static CK_RV stmt_run(struct guardian_store *st, enum stmt_id id, const char *what)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    int rc;

    rv = stmt_get(st, id, &s);
    if (rv != CKR_OK)
        goto out;
    do
        rc = sqlite3_step(s);
    while (rc == SQLITE_ROW);
    rv = map_sqlite(st, rc, what);
out:
    stmt_done(s);
    return rv;
}

/* bind_all: binds parameters 1, 2, ... of s, one per character of `types`, to
 * the arguments that follow it (bind_va: to those in ap).  Varargs are not
 * converted, so each argument must have exactly the type listed (cast at the
 * call):
 *   't'  const char *          text up to its NUL, not copied
 *   'i'  sqlite3_int64         integer
 *   'b'  const void *, int     blob of that many bytes, not copied; 0 bytes
 *                              bind an empty blob, never NULL
 * `types` must name every parameter of the statement.  Returns the first
 * failing SQLite code, or SQLITE_OK. */
static int bind_va(sqlite3_stmt *s, const char *types, va_list ap)
{
    int rc = SQLITE_OK;

    if (strlen(types) != (size_t)sqlite3_bind_parameter_count(s))
        return SQLITE_RANGE;
    for (int i = 1; rc == SQLITE_OK && types[i - 1] != '\0'; i++) {
        switch (types[i - 1]) {
        case 't':
            rc = sqlite3_bind_text(s, i, va_arg(ap, const char *), -1, SQLITE_STATIC);
            break;
        case 'i':
            rc = sqlite3_bind_int64(s, i, va_arg(ap, sqlite3_int64));
            break;
        case 'b': {
            const void *blob = va_arg(ap, const void *);
            int len = va_arg(ap, int);
            rc = len > 0 ? sqlite3_bind_blob(s, i, blob, len, SQLITE_STATIC) : sqlite3_bind_zeroblob(s, i, 0);
            break;
        }
        default:
            rc = SQLITE_MISUSE;
            break;
        }
    }
    return rc;
}

/* See bind_va. */
static int bind_all(sqlite3_stmt *s, const char *types, ...)
{
    va_list ap;
    int rc;

    va_start(ap, types);
    rc = bind_va(s, types, ap);
    va_end(ap);
    return rc;
}

/* Gets statement `id` into *s, binds it (types and arguments as for bind_all)
 * and steps it once.  With row NULL it must finish (INSERT, UPDATE: then
 * sqlite3_changes() tells how many rows it changed); otherwise it may also
 * stop at a row, and *row tells whether it did.  Any other result is mapped
 * as `what`.  *s is left to the caller's stmt_done, on failure too. */
static CK_RV stmt_step(struct guardian_store *st, enum stmt_id id, sqlite3_stmt **s, bool *row, const char *what,
                       const char *types, ...)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    va_list ap;
    int rc;

    rv = stmt_get(st, id, s);
    if (rv != CKR_OK)
        goto out;
    va_start(ap, types);
    rc = bind_va(*s, types, ap);
    va_end(ap);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(*s);
    if (rc != SQLITE_DONE && (row == NULL || rc != SQLITE_ROW)) {
        rv = map_sqlite(st, rc, what);
        goto out;
    }
    if (row != NULL)
        *row = rc == SQLITE_ROW;
    rv = CKR_OK;
out:
    return rv;
}

/* ---- transactions ---------------------------------------------------------------- */

/* BEGIN IMMEDIATE, with the durability the transaction's COMMIT needs (see
 * GUARDIAN_STORE_SYNCHRONOUS above); the pragma runs only when it changes. */
static CK_RV tx_begin(struct guardian_store *st, bool durable)
{
    if (st->sync_full != durable) {
        CK_RV rv = stmt_run(st, durable ? S_SYNC_FULL : S_SYNC_NORMAL, "set synchronous");
        if (rv != CKR_OK)
            return rv;
        st->sync_full = durable;
    }
    return stmt_run(st, S_BEGIN, "begin transaction");
}

/* Commit when rv is CKR_OK, roll back otherwise; returns the outcome. */
static CK_RV tx_end(struct guardian_store *st, CK_RV rv)
{
    if (rv == CKR_OK) {
        rv = stmt_run(st, S_COMMIT, "commit");
        if (rv == CKR_OK)
            return CKR_OK;
    }
    /* SQLite may already have rolled back on its own (IOERR, FULL, ...). */
    if (!sqlite3_get_autocommit(st->db))
        (void)stmt_run(st, S_ROLLBACK, "rollback");
    return rv;
}

static CK_RV journal_fold_locked(struct guardian_store *st, int fd, const char *name, size_t *folded);
static CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                            const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len);

/* The one shape of every mutation: lock the store, BEGIN IMMEDIATE, fold this
 * process's issue journal into the trail, run `fn`, COMMIT if it returned
 * CKR_OK and roll back otherwise, empty the journal once its records are
 * committed, unlock. */
static CK_RV store_write(struct guardian_store *st, bool durable, CK_RV (*fn)(struct guardian_store *st, void *ctx),
                         void *ctx)
{
    size_t folded = 0;
    CK_RV rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = tx_begin(st, durable);
    if (rv == CKR_OK) {
        if (st->journal_fd >= 0 && st->journal_size > 0)
            rv = journal_fold_locked(st, st->journal_fd, st->journal_path, &folded);
        if (rv == CKR_OK && fn != NULL)
            rv = fn(st, ctx);
        rv = tx_end(st, rv);
        if (rv == CKR_OK && st->journal_fd >= 0 && st->journal_size > 0) {
            /* Committed: the journal's records are in the trail now.  A crash
             * before this truncation folds them again, harmlessly. */
            if (ftruncate(st->journal_fd, 0) == 0)
                st->journal_size = 0;
            else
                guardian_warn(STORE_LOG, "cannot empty the issue journal: %s", strerror(errno));
        }
    }
    store_leave(st);
    return rv;
}

/* ---- input checks ---------------------------------------------------------------- */

/* An OEM or product ID: 1..GUARDIAN_ID_MAX bytes and a terminator, looked at
 * no further than GUARDIAN_ID_MAX + 1 bytes (the size of the struct fields). */
static bool id_ok(const char *id)
{
    size_t n;

    if (id == NULL)
        return false;
    n = strnlen(id, GUARDIAN_ID_MAX + 1);
    return n >= 1 && n <= GUARDIAN_ID_MAX;
}

static bool device_id_ok(const uint8_t *device_id, size_t len)
{
    return device_id != NULL && len >= 1 && len <= GUARDIAN_DEVICE_ID_MAX;
}

static bool package_ok(const struct guardian_package_info *pkg)
{
    return pkg != NULL && id_ok(pkg->oem_id) && id_ok(pkg->product_id) && pkg->authorised_units <= INT64_MAX;
}

/* ---- reading columns ------------------------------------------------------------- */

static bool column_id(sqlite3_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1])
{
    const unsigned char *text = sqlite3_column_text(s, col);
    int n = sqlite3_column_bytes(s, col);

    if (text == NULL || n < 0 || n > GUARDIAN_ID_MAX || memchr(text, '\0', (size_t)n) != NULL)
        return false;
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    return true;
}

/* A BLOB of 0..max bytes; the length goes to *len. */
static bool column_blob(sqlite3_stmt *s, int col, void *out, size_t max, size_t *len)
{
    const void *blob;
    int n;

    if (sqlite3_column_type(s, col) != SQLITE_BLOB)
        return false;
    blob = sqlite3_column_blob(s, col);
    n = sqlite3_column_bytes(s, col);
    if (n < 0 || (size_t)n > max || (n > 0 && blob == NULL))
        return false;
    if (n > 0)
        memcpy(out, blob, (size_t)n);
    *len = (size_t)n;
    return true;
}

static bool column_blob_exact(sqlite3_stmt *s, int col, void *out, size_t len)
{
    size_t got = 0;
    return column_blob(s, col, out, len, &got) && got == len;
}

/* A copy of a BLOB column in a fresh malloc'd buffer; *out NULL and *len 0
 * when the column is NULL or empty.  CKR_HOST_MEMORY if the copy fails. */
static CK_RV column_blob_dup(sqlite3_stmt *s, int col, uint8_t **out, size_t *len)
{
    const void *blob = sqlite3_column_blob(s, col);
    int n = sqlite3_column_bytes(s, col);

    *out = NULL;
    *len = 0;
    if (blob == NULL || n <= 0)
        return CKR_OK;
    *out = malloc((size_t)n);
    if (*out == NULL)
        return CKR_HOST_MEMORY;
    memcpy(*out, blob, (size_t)n);
    *len = (size_t)n;
    return CKR_OK;
}

static bool column_uint(sqlite3_stmt *s, int col, uint64_t max, uint64_t *out)
{
    sqlite3_int64 v;

    if (sqlite3_column_type(s, col) != SQLITE_INTEGER)
        return false;
    v = sqlite3_column_int64(s, col);
    if (v < 0 || (uint64_t)v > max)
        return false;
    *out = (uint64_t)v;
    return true;
}

/* A row of PRODUCT_COLUMNS. */
static CK_RV product_from_row(sqlite3_stmt *s, struct guardian_product *p)
{
    uint64_t release = 0, issued = 0;

    memset(p, 0, sizeof(*p));
    if (!column_id(s, 0, p->oem_id) || !column_id(s, 1, p->product_id) ||
        !column_blob_exact(s, 2, p->package_id, sizeof(p->package_id)) || !column_uint(s, 3, UINT32_MAX, &release) ||
        !column_uint(s, 4, INT64_MAX, &p->authorised_units) || !column_uint(s, 5, p->authorised_units, &issued) ||
        !column_uint(s, 6, INT64_MAX, &p->next_serial) || sqlite3_column_type(s, 7) != SQLITE_INTEGER ||
        sqlite3_column_type(s, 8) != SQLITE_INTEGER) {
        guardian_error(STORE_LOG, "a product row is malformed");
        return CKR_GUARDIAN_STORE_FAILED;
    }
    p->release_version = (uint32_t)release;
    p->issued_units = issued;
    p->remaining_units = p->authorised_units - issued;
    p->not_after = sqlite3_column_int64(s, 7);
    p->installed_at = sqlite3_column_int64(s, 8);
    return CKR_OK;
}

/* A row of S_AUDIT_PAGE; false if any field is out of its domain. */
static bool audit_from_row(sqlite3_stmt *s, struct guardian_audit_record *r)
{
    uint64_t type = 0, release = 0;

    memset(r, 0, sizeof(*r));
    if (!column_uint(s, 0, INT64_MAX, &r->seq) || !column_uint(s, 1, GUARDIAN_AUDIT_RELEASE, &type) ||
        type < GUARDIAN_AUDIT_IMPORT || sqlite3_column_type(s, 2) != SQLITE_INTEGER || !column_id(s, 3, r->oem_id) ||
        !column_id(s, 4, r->product_id) || !column_uint(s, 5, INT64_MAX, &r->serial) ||
        !column_blob(s, 6, r->device_id, sizeof(r->device_id), &r->device_id_len) ||
        !column_blob_exact(s, 7, r->digest, sizeof(r->digest)) ||
        !column_blob_exact(s, 8, r->package_id, sizeof(r->package_id)) || !column_uint(s, 9, UINT32_MAX, &release) ||
        !column_uint(s, 10, INT64_MAX, &r->authorised_units) ||
        !column_blob_exact(s, 11, r->prev_hash, sizeof(r->prev_hash)) ||
        !column_blob_exact(s, 12, r->hash, sizeof(r->hash)))
        return false;
    r->type = (int)type;
    r->time = sqlite3_column_int64(s, 2);
    r->release_version = (uint32_t)release;
    return true;
}

/* ---- the audit trail: append (inside a write transaction) ------------------------ */

static CK_RV audit_head_get(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN])
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    int rc;

    rv = stmt_get(st, S_HEAD_GET, &s);
    if (rv != CKR_OK)
        goto out;
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        rv = map_sqlite(st, rc, "read the audit head");
        if (rv == CKR_OK) {
            guardian_error(STORE_LOG, "the audit head is missing");
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        }
        goto out;
    }
    if (!column_uint(s, 0, INT64_MAX - 1, seq) || !column_blob_exact(s, 1, hash, GUARDIAN_HASH_LEN)) {
        guardian_error(STORE_LOG, "the audit head is malformed");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

/* Fills r->seq, r->prev_hash and r->hash, inserts the record and moves the head. */
static CK_RV audit_append(struct guardian_store *st, struct guardian_audit_record *r)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
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

    rv = stmt_step(st, S_AUDIT_INSERT, &s, NULL, "append an audit record", "iiittibbbiibb", (sqlite3_int64)r->seq,
                   (sqlite3_int64)r->type, (sqlite3_int64)r->time, r->oem_id, r->product_id,
                   (sqlite3_int64)r->serial, r->device_id, (int)r->device_id_len, r->digest, GUARDIAN_HASH_LEN,
                   r->package_id, GUARDIAN_PACKAGE_ID_LEN, (sqlite3_int64)r->release_version,
                   (sqlite3_int64)r->authorised_units, r->prev_hash, GUARDIAN_HASH_LEN, r->hash, GUARDIAN_HASH_LEN);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    rv = stmt_step(st, S_HEAD_SET, &s, NULL, "move the audit head", "ibi", (sqlite3_int64)r->seq, r->hash,
                   GUARDIAN_HASH_LEN, (sqlite3_int64)head_seq);
    if (rv != CKR_OK)
        goto out;
    if (sqlite3_changes(st->db) != 1) {
        guardian_error(STORE_LOG, "the audit head moved under a write transaction");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
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
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    if (st->db != NULL && sqlite3_close(st->db) != SQLITE_OK)
        (void)map_sqlite(st, sqlite3_errcode(st->db), "close");
    if (st->lock_ready)
        pthread_mutex_destroy(&st->lock);
    if (st->journal_fd >= 0)
        close(st->journal_fd); /* an open that failed after creating it: the next opener folds it */
    free(st->journal_buf);
    free(st);
}

static CK_RV read_user_version(struct guardian_store *st, int *version)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    int rc;

    rv = stmt_get(st, S_USER_VERSION, &s);
    if (rv != CKR_OK)
        goto out;
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        rv = map_sqlite(st, rc, "read the schema version");
        if (rv == CKR_OK)
            rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    *version = sqlite3_column_int(s, 0);
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

/* Bring the schema to STORE_SCHEMA_VERSION, in one write transaction so that
 * two processes opening a fresh state directory migrate it once. */
static CK_RV migrate(struct guardian_store *st)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    bool in_tx = false;
    int version = -1;
    char sql[64];
    int rc;

    rv = read_user_version(st, &version);
    if (rv != CKR_OK || version == STORE_SCHEMA_VERSION)
        goto out;

    rv = tx_begin(st, true);
    if (rv != CKR_OK)
        goto out;
    in_tx = true;
    rv = read_user_version(st, &version); /* another process may have migrated */
    if (rv != CKR_OK)
        goto out;
    if (version < 0 || version > STORE_SCHEMA_VERSION) {
        guardian_error(STORE_LOG, "state schema version %d is not supported (this module knows 0..%d)", version,
                       STORE_SCHEMA_VERSION);
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
        if (migrations[i].to_version <= version)
            continue;
        rv = migrations[i].apply(st, st->db);
        if (rv != CKR_OK)
            goto out;
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", migrations[i].to_version);
        rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            rv = map_sqlite(st, rc, "set the schema version");
            goto out;
        }
        guardian_info(STORE_LOG, "state schema migrated from version %d to %d", version,
                      migrations[i].to_version);
        version = migrations[i].to_version;
    }
    rv = CKR_OK;
out:
    if (in_tx)
        rv = tx_end(st, rv);
    return rv;
}

static CK_RV set_journal_wal(struct guardian_store *st)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    const unsigned char *mode;
    int rc;

    rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, rc, "set WAL mode");
        goto out;
    }
    /* Switching a fresh file to WAL needs an exclusive lock, and SQLite
     * does not call the busy handler for it: when several processes open a
     * new state directory at once, retry for up to the busy timeout. */
    for (int waited_ms = 0;; waited_ms += WAL_RETRY_MS) {
        rc = sqlite3_step(s);
        if ((rc & 0xff) != SQLITE_BUSY || waited_ms >= GUARDIAN_STORE_BUSY_TIMEOUT_MS)
            break;
        sqlite3_reset(s);
        sqlite3_sleep(WAL_RETRY_MS);
    }
    if (rc != SQLITE_ROW) {
        rv = map_sqlite(st, rc, "set WAL mode");
        if (rv == CKR_OK)
            rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    mode = sqlite3_column_text(s, 0);
    if (mode == NULL || strcmp((const char *)mode, "wal") != 0) {
        /* The durability argument assumes WAL (docs/audit-format.md). */
        guardian_error(STORE_LOG, "the state database cannot use WAL mode here (got '%s')",
                       mode != NULL ? (const char *)mode : "?");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    rv = CKR_OK;
out:
    sqlite3_finalize(s);
    return rv;
}

static void journal_recover(struct guardian_store *st, const char *dir);
static CK_RV journal_open(struct guardian_store *st, const char *dir);

static CK_RV store_open_path(const char *path, const char *dir, struct guardian_store **out)
{
    const bool memory = dir == NULL;
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_store *st = NULL;
    pthread_mutexattr_t attr;
    int fk = 0, rc;

    if (!sqlite3_threadsafe()) {
        guardian_error(STORE_LOG, "the SQLite library was built without thread support");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    st->pid = getpid();
    st->journal_fd = -1;
    if (pthread_mutexattr_init(&attr) != 0) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    /* Error-checking: a commit_hook that calls back into the store gets an
     * error instead of deadlocking the production line. */
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    rc = pthread_mutex_init(&st->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    st->lock_ready = true;

    rc = sqlite3_open_v2(path, &st->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                             (memory ? SQLITE_OPEN_MEMORY : 0),
                         NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, rc, "open the state database");
        goto out;
    }
    sqlite3_extended_result_codes(st->db, 1);
    if ((rc = sqlite3_busy_timeout(st->db, GUARDIAN_STORE_BUSY_TIMEOUT_MS)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db, SQLITE_DBCONFIG_ENABLE_FKEY, 1, &fk)) != SQLITE_OK) {
        rv = map_sqlite(st, rc, "configure the state database");
        goto out;
    }
    if (fk != 1) {
        guardian_error(STORE_LOG, "SQLite refused to enforce foreign keys");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    if (!memory) {
        /* Before WAL mode and the schema: only a new database takes it. */
        rc = sqlite3_exec(st->db, "PRAGMA page_size = " GUARDIAN_STORE_PAGE_SIZE, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            rv = map_sqlite(st, rc, "set the page size");
            goto out;
        }
        rv = set_journal_wal(st);
        if (rv != CKR_OK)
            goto out;
        rc = sqlite3_wal_autocheckpoint(st->db, GUARDIAN_STORE_WAL_CHECKPOINT_PAGES);
        if (rc != SQLITE_OK) {
            rv = map_sqlite(st, rc, "set the checkpoint interval");
            goto out;
        }
    }
    rc = sqlite3_exec(st->db, "PRAGMA synchronous = " GUARDIAN_STORE_SYNCHRONOUS, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, rc, "set synchronous");
        goto out;
    }
    st->sync_full = true;
    rv = migrate(st);
    if (rv != CKR_OK)
        goto out;
    if (!memory) {
        journal_recover(st, dir);
        rv = journal_open(st, dir);
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
    char path[PATH_MAX];
    int n;

    if (dir == NULL || *dir == '\0' || out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    n = snprintf(path, sizeof(path), "%s/%s", dir, STORE_FILE_NAME);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        guardian_error(STORE_LOG, "state directory path too long");
        return CKR_ARGUMENTS_BAD;
    }
    return store_open_path(path, dir, out);
}

CK_RV guardian_store_open_memory(struct guardian_store **out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    return store_open_path(":memory:", NULL, out);
}

void guardian_store_close(struct guardian_store *st)
{
    if (st != NULL && st->pid == getpid() && st->journal_fd >= 0) {
        /* Fold what is left; if that fails the journal stays for the next
         * opener, which folds it once our lock is gone. */
        if (guardian_store_flush(st) == CKR_OK && st->journal_size == 0 && unlink(st->journal_path) != 0)
            guardian_warn(STORE_LOG, "cannot remove the issue journal: %s", strerror(errno));
        close(st->journal_fd);
        st->journal_fd = -1;
    }
    store_free(st);
}

/* ---- package registry -------------------------------------------------------------- */

/* The replay and rollback checks; the caller holds the lock. */
static CK_RV package_check_locked(struct guardian_store *st, const struct guardian_package_info *pkg)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    bool row = false;

    rv = stmt_step(st, S_PACKAGE_SEEN, &s, &row, "look up a package", "b", pkg->package_id, GUARDIAN_PACKAGE_ID_LEN);
    if (rv != CKR_OK)
        goto out;
    if (row) {
        rv = CKR_GUARDIAN_PACKAGE_REPLAYED;
        goto out;
    }
    stmt_done(s);

    rv = stmt_step(st, S_INSTALLED_RELEASE, &s, &row, "look up the installed release", "tt", pkg->oem_id,
                   pkg->product_id);
    if (rv != CKR_OK)
        goto out;
    if (row && sqlite3_column_int64(s, 0) >= (sqlite3_int64)pkg->release_version) {
        rv = CKR_GUARDIAN_PACKAGE_ROLLBACK;
        goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_package_check(struct guardian_store *st, const struct guardian_package_info *pkg)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    bool locked = false;

    if (st == NULL || !package_ok(pkg)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = store_enter(st);
    if (rv != CKR_OK)
        goto out;
    locked = true;
    /* Advisory: install repeats the checks inside its write transaction. */
    rv = package_check_locked(st, pkg);
out:
    if (locked)
        store_leave(st);
    return rv;
}

static CK_RV package_install_locked(struct guardian_store *st, const struct guardian_package_info *pkg)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record rec;
    sqlite3_stmt *s = NULL;
    sqlite3_int64 now = (sqlite3_int64)time(NULL);

    rv = package_check_locked(st, pkg);
    if (rv != CKR_OK)
        goto out;

    memset(&rec, 0, sizeof(rec));
    rec.type = GUARDIAN_AUDIT_IMPORT;
    rec.time = now;
    memcpy(rec.oem_id, pkg->oem_id, strlen(pkg->oem_id) + 1);
    memcpy(rec.product_id, pkg->product_id, strlen(pkg->product_id) + 1);
    memcpy(rec.digest, pkg->package_digest, GUARDIAN_HASH_LEN);
    memcpy(rec.package_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN);
    rec.release_version = pkg->release_version;
    rec.authorised_units = pkg->authorised_units;
    rv = audit_append(st, &rec);
    if (rv != CKR_OK)
        goto out;

    rv = stmt_step(st, S_PACKAGE_INSERT, &s, NULL, "record a package", "bbttiiiiibb", pkg->package_id,
                   GUARDIAN_PACKAGE_ID_LEN, pkg->package_digest, GUARDIAN_HASH_LEN, pkg->oem_id, pkg->product_id,
                   (sqlite3_int64)pkg->release_version, (sqlite3_int64)pkg->authorised_units,
                   (sqlite3_int64)pkg->not_after, now, (sqlite3_int64)rec.seq, pkg->cert_template,
                   (int)pkg->cert_template_len, pkg->ca_cert, (int)pkg->ca_cert_len);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    /* Install or supersede: the product now counts against this package's
     * allowance; next_serial is left as it was (never reused). */
    rv = stmt_step(st, S_PRODUCT_UPSERT, &s, NULL, "install a product release", "ttbi", pkg->oem_id,
                   pkg->product_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN, now);
out:
    stmt_done(s);
    return rv;
}

struct install_args {
    const struct guardian_package_info *pkg;
    CK_RV (*commit_hook)(void *ctx);
    void *ctx;
};

static CK_RV install_tx(struct guardian_store *st, void *ctx)
{
    struct install_args *a = ctx;
    CK_RV rv = package_install_locked(st, a->pkg);
    /* Inside the transaction, with the store locked: the hook must not call
     * the store (it would get CKR_GENERAL_ERROR, not a deadlock). */
    if (rv == CKR_OK && a->commit_hook != NULL)
        rv = a->commit_hook(a->ctx);
    return rv;
}

CK_RV guardian_store_package_install(struct guardian_store *st, const struct guardian_package_info *pkg,
                                     CK_RV (*commit_hook)(void *ctx), void *ctx)
{
    struct install_args a = {pkg, commit_hook, ctx};

    if (st == NULL || !package_ok(pkg) || pkg->cert_template_len > INT_MAX || pkg->ca_cert_len > INT_MAX)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, true, install_tx, &a);
}

CK_RV guardian_store_package_material(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                      struct guardian_package_material *out)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
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
        !column_uint(s, 2, UINT32_MAX, &release) || sqlite3_column_type(s, 3) != SQLITE_INTEGER) {
        guardian_error(STORE_LOG, "a package row is malformed");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    memcpy(out->package_id, package_id, GUARDIAN_PACKAGE_ID_LEN);
    out->release_version = (uint32_t)release;
    out->not_after = sqlite3_column_int64(s, 3);
    out->installed = sqlite3_column_int(s, 6) != 0;
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
    sqlite3_stmt *s = NULL;
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

CK_RV guardian_store_products_each(struct guardian_store *st,
                                   CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_product *list = NULL, *grown;
    size_t count = 0, cap = 0;
    sqlite3_stmt *s = NULL;
    bool locked = false;
    int rc;

    if (st == NULL || fn == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = store_enter(st);
    if (rv != CKR_OK)
        goto out;
    locked = true;

    /* Products are few (one per installed release): read them all, then call
     * fn without the lock so that it may use the store. */
    rv = stmt_get(st, S_PRODUCTS_ALL, &s);
    if (rv != CKR_OK)
        goto out;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap != 0 ? 2 * cap : 16;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                rv = CKR_HOST_MEMORY;
                goto out;
            }
            list = grown;
        }
        rv = product_from_row(s, &list[count]);
        if (rv != CKR_OK)
            goto out;
        count++;
    }
    rv = map_sqlite(st, rc, "list products");
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);
    s = NULL;
    store_leave(st);
    locked = false;

    for (size_t i = 0; i < count; i++) {
        rv = fn(&list[i], ctx);
        if (rv != CKR_OK)
            goto out;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    if (locked)
        store_leave(st);
    free(list);
    return rv;
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
    sqlite3_stmt *s = NULL;
    bool row = false;
    uint64_t n;

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
                   (sqlite3_int64)n);
    if (rv != CKR_OK)
        goto out;
    if (sqlite3_changes(st->db) != 1) {
        rv = CKR_GUARDIAN_QUOTA_EXHAUSTED;
        goto out;
    }
    stmt_done(s);

    rv = stmt_step(st, S_SERIAL_ADVANCE, &s, NULL, "advance the serial counter", "ttii", a->oem_id, a->product_id,
                   (sqlite3_int64)prod.next_serial, (sqlite3_int64)n);
    if (rv != CKR_OK)
        goto out;
    if (sqlite3_changes(st->db) != 1) {
        guardian_error(STORE_LOG, "the serial counter moved under a write transaction");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    stmt_done(s);

    for (uint64_t i = 0; i < n; i++) {
        memset(&rec, 0, sizeof(rec));
        rec.type = GUARDIAN_AUDIT_RESERVE;
        rec.time = a->now;
        memcpy(rec.oem_id, a->oem_id, strlen(a->oem_id) + 1);
        memcpy(rec.product_id, a->product_id, strlen(a->product_id) + 1);
        rec.serial = prod.next_serial + i;
        if (a->device_id != NULL)
            memcpy(rec.device_id, a->device_id, a->device_id_len);
        rec.device_id_len = a->device_id != NULL ? a->device_id_len : 0;
        rv = audit_append(st, &rec);
        if (rv != CKR_OK)
            goto out;
        rv = stmt_step(st, S_ISSUANCE_INSERT, &s, NULL, "record a reservation", "ttibbi", a->oem_id, a->product_id,
                       (sqlite3_int64)rec.serial, prod.package_id, GUARDIAN_PACKAGE_ID_LEN, rec.device_id,
                       (int)rec.device_id_len, (sqlite3_int64)rec.seq);
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

struct issue_args {
    const char *oem_id, *product_id;
    uint64_t serial;
    int64_t time; /* of the ISSUE record; 0: now */
    int type; /* GUARDIAN_AUDIT_ISSUE or GUARDIAN_AUDIT_RELEASE */
    const uint8_t *device_id;
    size_t device_id_len;
    const uint8_t *digest;
    const uint8_t *cert;
    size_t cert_len;
    bool replay; /* from a journal: an ISSUE already recorded with this digest is fine */
};

/* Settle a reservation: ISSUE (the certificate left, or is about to leave, the
 * Guardian) or RELEASE (it never will; the unit is counted back). */
static CK_RV settle_tx(struct guardian_store *st, void *ctx)
{
    struct issue_args *a = ctx;
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record rec;
    uint8_t reserved_device[GUARDIAN_DEVICE_ID_MAX], package_id[GUARDIAN_PACKAGE_ID_LEN];
    size_t reserved_len = 0;
    sqlite3_stmt *s = NULL;
    bool row = false;

    rv = stmt_step(st, S_ISSUANCE_GET, &s, &row, "look up a reservation", "tti", a->oem_id, a->product_id,
                   (sqlite3_int64)a->serial);
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
    if (a->replay && sqlite3_column_type(s, 1) != SQLITE_NULL) {
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
    if (sqlite3_column_type(s, 1) != SQLITE_NULL || sqlite3_column_type(s, 2) != SQLITE_NULL) {
        guardian_error(STORE_LOG, "serial %llu of %s/%s is already %s", (unsigned long long)a->serial, a->oem_id,
                       a->product_id, sqlite3_column_type(s, 1) != SQLITE_NULL ? "issued" : "released");
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    stmt_done(s);

    memset(&rec, 0, sizeof(rec));
    rec.type = a->type;
    rec.time = a->time != 0 ? a->time : (int64_t)time(NULL);
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
                       (sqlite3_int64)a->serial, (sqlite3_int64)rec.seq, a->digest, GUARDIAN_HASH_LEN, a->device_id,
                       (int)a->device_id_len);
    else
        rv = stmt_step(st, S_ISSUANCE_SET_RELEASED, &s, NULL, "record a release", "ttii", a->oem_id, a->product_id,
                       (sqlite3_int64)a->serial, (sqlite3_int64)rec.seq);
    if (rv != CKR_OK)
        goto out;
    if (sqlite3_changes(st->db) != 1) {
        guardian_error(STORE_LOG, "a reservation changed under a write transaction");
        rv = CKR_GUARDIAN_STORE_FAILED;
        goto out;
    }
    stmt_done(s);
    if (a->type == GUARDIAN_AUDIT_ISSUE && a->cert != NULL) {
        rv = stmt_step(st, S_CERTIFICATE_INSERT, &s, NULL, "record a certificate", "ib", (sqlite3_int64)rec.seq,
                       a->cert, (int)a->cert_len);
        if (rv != CKR_OK)
            goto out;
    }
    if (a->type == GUARDIAN_AUDIT_RELEASE) {
        /* Counted back against the package it was counted against. */
        rv = stmt_step(st, S_PACKAGE_COUNT, &s, NULL, "count a unit back", "bi", package_id,
                       GUARDIAN_PACKAGE_ID_LEN, (sqlite3_int64)-1);
        if (rv == CKR_OK && sqlite3_changes(st->db) != 1) {
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
                           cert_digest, NULL, 0, false};

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
                           digest, cert, cert_len, false};

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
    struct issue_args a = {oem_id, product_id, serial, 0, GUARDIAN_AUDIT_RELEASE, NULL, 0, NULL, NULL, 0, false};

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || serial == 0 || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, false, settle_tx, &a);
}

CK_RV guardian_store_certificate_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                     uint64_t serial, uint8_t **der, size_t *len)
{
    CK_RV rv;
    sqlite3_stmt *s = NULL;
    bool row = false;

    if (st == NULL || !id_ok(oem_id) || !id_ok(product_id) || der == NULL || len == NULL || serial > INT64_MAX)
        return CKR_ARGUMENTS_BAD;
    *der = NULL;
    *len = 0;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_CERTIFICATE_GET, &s, &row, "read a certificate", "tti", oem_id, product_id,
                   (sqlite3_int64)serial);
    if (rv == CKR_OK && row)
        rv = column_blob_dup(s, 0, der, len);
    stmt_done(s);
    store_leave(st);
    return rv;
}

/* ---- the issue journal --------------------------------------------------------------- */

/* One record: "GDJ1", u32 body length, body, SHA-256(body).  Body: serial u64,
 * time i64, then oem ID, product ID and device ID each as u8 length + bytes,
 * then the certificate as u16 length + bytes.  A record is appended with one
 * write() on an O_APPEND descriptor: a process killed at any moment leaves
 * whole records (Linux completes a regular file's write), so only a power
 * loss can leave a torn tail, which folding detects and ignores. */
#define JOURNAL_MAGIC "GDJ1"
#define JOURNAL_PREFIX "issued-"
#define JOURNAL_SUFFIX ".journal"
#define JOURNAL_HEADER 8
#define JOURNAL_BODY_MAX (8 + 8 + 3 * 1 + 2 * GUARDIAN_ID_MAX + GUARDIAN_DEVICE_ID_MAX + 2 + GUARDIAN_CERT_MAX)
#define JOURNAL_RECORD_MAX (JOURNAL_HEADER + JOURNAL_BODY_MAX + GUARDIAN_HASH_LEN)
#define JOURNAL_FILE_MAX ((off_t)GUARDIAN_RESERVE_MAX * 4 * JOURNAL_RECORD_MAX)

static uint8_t *jput(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint64_t jget(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

static size_t journal_encode(uint8_t *b, const char *oem, const char *product, uint64_t serial, int64_t t,
                             const uint8_t *dev, size_t dev_len, const uint8_t *cert, size_t cert_len)
{
    uint8_t *p = b + JOURNAL_HEADER;
    size_t ol = strlen(oem), pl = strlen(product), body;
    unsigned int hl = 0;

    p = jput(p, serial, 8);
    p = jput(p, (uint64_t)t, 8);
    *p++ = (uint8_t)ol;
    memcpy(p, oem, ol), p += ol;
    *p++ = (uint8_t)pl;
    memcpy(p, product, pl), p += pl;
    *p++ = (uint8_t)dev_len;
    memcpy(p, dev, dev_len), p += dev_len;
    p = jput(p, cert_len, 2);
    memcpy(p, cert, cert_len), p += cert_len;
    body = (size_t)(p - b) - JOURNAL_HEADER;
    memcpy(b, JOURNAL_MAGIC, 4);
    jput(b + 4, body, 4);
    if (EVP_Digest(b + JOURNAL_HEADER, body, p, &hl, EVP_sha256(), NULL) != 1 || hl != GUARDIAN_HASH_LEN)
        return 0;
    return JOURNAL_HEADER + body + GUARDIAN_HASH_LEN;
}

/* One length-prefixed field of the body; false if it overruns. */
static bool jfield(const uint8_t **p, const uint8_t *end, size_t len_bytes, size_t max, const uint8_t **v,
                   size_t *len)
{
    if ((size_t)(end - *p) < len_bytes)
        return false;
    *len = (size_t)jget(*p, (int)len_bytes);
    *p += len_bytes;
    if (*len > max || (size_t)(end - *p) < *len)
        return false;
    *v = *p;
    *p += *len;
    return true;
}

/* Fold every whole record of the journal `fd` into the trail, as ISSUE
 * records; the caller holds the lock and a write transaction. */
static CK_RV journal_fold_locked(struct guardian_store *st, int fd, const char *name, size_t *folded)
{
    CK_RV rv = CKR_OK;
    struct stat sb;
    uint8_t *buf = NULL;
    size_t size, off = 0, got = 0;

    *folded = 0;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0 || sb.st_size > JOURNAL_FILE_MAX) {
        guardian_error(STORE_LOG, "issue journal %s: unreadable or too large", name);
        return CKR_GUARDIAN_STORE_FAILED;
    }
    size = (size_t)sb.st_size;
    if (size == 0)
        return CKR_OK;
    buf = malloc(size);
    if (buf == NULL)
        return CKR_HOST_MEMORY;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            guardian_error(STORE_LOG, "issue journal %s: read failed", name);
            rv = CKR_GUARDIAN_STORE_FAILED;
            goto out;
        }
        got += (size_t)n;
    }
    while (size - off >= JOURNAL_HEADER) {
        const uint8_t *rec = buf + off, *p, *end, *oem, *product, *dev, *cert;
        size_t body = (size_t)jget(rec + 4, 4), ol, pl, dl, cl;
        uint8_t hash[GUARDIAN_HASH_LEN], digest[GUARDIAN_HASH_LEN];
        char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
        unsigned int hl = 0;
        struct issue_args a;

        if (memcmp(rec, JOURNAL_MAGIC, 4) != 0 || body > JOURNAL_BODY_MAX ||
            size - off < JOURNAL_HEADER + body + GUARDIAN_HASH_LEN)
            break;
        if (EVP_Digest(rec + JOURNAL_HEADER, body, hash, &hl, EVP_sha256(), NULL) != 1 ||
            memcmp(hash, rec + JOURNAL_HEADER + body, GUARDIAN_HASH_LEN) != 0)
            break;
        p = rec + JOURNAL_HEADER + 16;
        end = rec + JOURNAL_HEADER + body;
        if (!jfield(&p, end, 1, GUARDIAN_ID_MAX, &oem, &ol) || ol == 0 ||
            !jfield(&p, end, 1, GUARDIAN_ID_MAX, &product, &pl) || pl == 0 ||
            !jfield(&p, end, 1, GUARDIAN_DEVICE_ID_MAX, &dev, &dl) || dl == 0 ||
            !jfield(&p, end, 2, GUARDIAN_CERT_MAX, &cert, &cl) || cl == 0 || p != end)
            break;
        memcpy(oem_id, oem, ol);
        oem_id[ol] = '\0';
        memcpy(product_id, product, pl);
        product_id[pl] = '\0';
        if (EVP_Digest(cert, cl, digest, &hl, EVP_sha256(), NULL) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        memset(&a, 0, sizeof(a));
        a.oem_id = oem_id;
        a.product_id = product_id;
        a.serial = jget(rec + JOURNAL_HEADER, 8);
        a.time = (int64_t)jget(rec + JOURNAL_HEADER + 8, 8);
        a.type = GUARDIAN_AUDIT_ISSUE;
        a.device_id = dev;
        a.device_id_len = dl;
        a.digest = digest;
        a.cert = cert;
        a.cert_len = cl;
        a.replay = true;
        rv = settle_tx(st, &a);
        if (rv != CKR_OK)
            goto out;
        (*folded)++;
        off += JOURNAL_HEADER + body + GUARDIAN_HASH_LEN;
    }
    if (off < size)
        guardian_warn(STORE_LOG, "issue journal %s: %zu bytes after record %zu are not a whole record (a write "
                                 "cut by a power loss?); ignored",
                      name, size - off, *folded);
out:
    free(buf);
    return rv;
}

CK_RV guardian_store_flush(struct guardian_store *st)
{
    if (st == NULL)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, true, NULL, NULL);
}

struct fold_args {
    int fd;
    const char *name;
    size_t folded;
};

static CK_RV fold_tx(struct guardian_store *st, void *ctx)
{
    struct fold_args *a = ctx;
    return journal_fold_locked(st, a->fd, a->name, &a->folded);
}

/* Journals left by processes that ended without closing the store (killed,
 * crashed): their owner's lock is gone, so fold and remove them.  A journal
 * whose lock is held belongs to a live process. */
static void journal_recover(struct guardian_store *st, const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    struct fold_args fa;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        size_t nl = strlen(e->d_name), folded = 0;
        int fd, n;
        CK_RV rv;

        if (strncmp(e->d_name, JOURNAL_PREFIX, strlen(JOURNAL_PREFIX)) != 0 || nl <= strlen(JOURNAL_SUFFIX) ||
            strcmp(e->d_name + nl - strlen(JOURNAL_SUFFIX), JOURNAL_SUFFIX) != 0)
            continue;
        n = snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (n < 0 || (size_t)n >= sizeof(path))
            continue;
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd); /* a live process's */
            continue;
        }
        fa.fd = fd;
        fa.name = e->d_name;
        fa.folded = 0;
        rv = store_write(st, true, fold_tx, &fa);
        folded = fa.folded;
        if (rv == CKR_OK) {
            if (ftruncate(fd, 0) != 0 || unlink(path) != 0)
                guardian_warn(STORE_LOG, "issue journal %s: folded but not removed: %s", e->d_name, strerror(errno));
            if (folded > 0)
                guardian_info(STORE_LOG, "recovered %zu ISSUE records from %s (its process ended without closing "
                                         "the store)",
                              folded, e->d_name);
        }
        close(fd);
    }
    closedir(d);
}

static CK_RV journal_open(struct guardian_store *st, const char *dir)
{
    struct timespec ts;
    char tmp[PATH_MAX + 8];
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    n = snprintf(st->journal_path, sizeof(st->journal_path), "%s/" JOURNAL_PREFIX "%ld-%lld%09ld" JOURNAL_SUFFIX,
                 dir, (long)st->pid, (long long)ts.tv_sec, (long)ts.tv_nsec);
    if (n < 0 || (size_t)n >= sizeof(st->journal_path))
        return CKR_ARGUMENTS_BAD;
    st->journal_buf = malloc(JOURNAL_RECORD_MAX);
    if (st->journal_buf == NULL)
        return CKR_HOST_MEMORY;
    /* Locked under a name recovery does not look at, then renamed: no other
     * process can ever see this journal unlocked and take it for a dead one. */
    n = snprintf(tmp, sizeof(tmp), "%s.new", st->journal_path);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return CKR_ARGUMENTS_BAD;
    st->journal_fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (st->journal_fd < 0 || flock(st->journal_fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, st->journal_path) != 0) {
        guardian_error(STORE_LOG, "cannot create the issue journal in %s: %s", dir, strerror(errno));
        if (st->journal_fd >= 0) {
            close(st->journal_fd);
            unlink(tmp);
        }
        st->journal_fd = -1;
        return CKR_GUARDIAN_STORE_FAILED;
    }
    st->journal_size = 0;
    return CKR_OK;
}

/* Append one ISSUE to the journal, under the lock. */
static CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                            const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len)
{
    size_t len, done = 0;
    CK_RV rv = store_enter(st);

    if (rv != CKR_OK)
        return rv;
    len = journal_encode(st->journal_buf, oem_id, product_id, serial, (int64_t)time(NULL), device_id, device_id_len,
                         cert, cert_len);
    rv = len > 0 ? CKR_OK : CKR_GENERAL_ERROR;
    while (rv == CKR_OK && done < len) {
        ssize_t n = write(st->journal_fd, st->journal_buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            guardian_error(STORE_LOG, "cannot write the issue journal: %s", strerror(errno));
            rv = CKR_GUARDIAN_STORE_FAILED;
            /* No partial record may stay: the next append would follow it. */
            if (ftruncate(st->journal_fd, st->journal_size) != 0)
                guardian_error(STORE_LOG, "cannot cut the issue journal back: %s", strerror(errno));
            break;
        }
        done += (size_t)n;
    }
    if (rv == CKR_OK)
        st->journal_size += (off_t)len;
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
    sqlite3_stmt *s = NULL;
    int rc;

    *count = 0;
    *bad = false;
    rv = stmt_get(st, S_AUDIT_PAGE, &s);
    if (rv != CKR_OK)
        goto out;
    rc = bind_all(s, "iii", (sqlite3_int64)from, (sqlite3_int64)to, (sqlite3_int64)cap);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, rc, "read the audit trail");
        goto out;
    }
    while (*count < cap && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (!audit_from_row(s, &page[*count])) {
            *bad = true;
            rc = SQLITE_DONE;
            break;
        }
        (*count)++;
    }
    rv = map_sqlite(st, rc, "read the audit trail");
out:
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

static const char anchor_entries_sql[] =
    "SELECT k.package_id, COALESCE(p.next_serial, 0) FROM packages k "
    "LEFT JOIN products p ON p.package_id = k.package_id ORDER BY k.import_seq";

static CK_RV head_locked(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN])
{
    sqlite3_stmt *s = NULL;
    bool row = false;
    CK_RV rv = stmt_step(st, S_HEAD_GET, &s, &row, "read the chain head", "");
    if (rv == CKR_OK && (!row || !column_uint(s, 0, INT64_MAX, seq) ||
                         !column_blob_exact(s, 1, hash, GUARDIAN_HASH_LEN)))
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_head_seq(struct guardian_store *st, uint64_t *seq)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    CK_RV rv = st != NULL && seq != NULL ? store_enter(st) : CKR_ARGUMENTS_BAD;
    if (rv != CKR_OK)
        return rv;
    rv = head_locked(st, seq, hash);
    store_leave(st);
    return rv;
}

CK_RV guardian_store_anchor_get(struct guardian_store *st, uint8_t **buf, size_t *len)
{
    sqlite3_stmt *s = NULL;
    uint8_t *b = NULL;
    size_t cap = ANCHOR_HEADER + 16 * ANCHOR_ENTRY, n = 0;
    uint64_t seq = 0;
    CK_RV rv = st != NULL && buf != NULL && len != NULL ? store_enter(st) : CKR_ARGUMENTS_BAD;
    int rc;

    if (rv != CKR_OK)
        return rv;
    b = malloc(cap);
    if (b == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    memcpy(b, ANCHOR_MAGIC, 4);
    put_be(b + 4, 1, 4);
    rv = head_locked(st, &seq, b + 16);
    if (rv != CKR_OK)
        goto out;
    put_be(b + 8, seq, 8);
    rc = sqlite3_prepare_v2(st->db, anchor_entries_sql, -1, &s, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW && n < ANCHOR_MAX_ENTRIES) {
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
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        rv = map_sqlite(st, rc, "read the packages for the anchor");
        goto out;
    }
    put_be(b + 16 + GUARDIAN_HASH_LEN, n, 4);
    *buf = b;
    *len = ANCHOR_HEADER + n * ANCHOR_ENTRY;
    b = NULL;
    rv = CKR_OK;
out:
    sqlite3_finalize(s);
    free(b);
    store_leave(st);
    return rv;
}

static const char anchor_package_sql[] =
    "SELECT 0, COALESCE(p.next_serial, 0), k.oem_id, k.product_id, k.release_version, "
    "(SELECT next_serial FROM products q WHERE q.oem_id = k.oem_id AND q.product_id = k.product_id) "
    "FROM packages k LEFT JOIN products p ON p.package_id = k.package_id WHERE k.package_id = ?1";

CK_RV guardian_store_anchor_check(struct guardian_store *st, const uint8_t *buf, size_t len, int *newer)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    uint64_t seq = 0, a_seq, n;
    sqlite3_stmt *s = NULL, *rec = NULL;
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
    rv = head_locked(st, &seq, hash);
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
        int rc = sqlite3_prepare_v2(st->db, "SELECT hash FROM audit WHERE seq = ?1", -1, &rec, NULL);
        if (rc == SQLITE_OK && sqlite3_bind_int64(rec, 1, (sqlite3_int64)a_seq) == SQLITE_OK)
            rc = sqlite3_step(rec);
        row = rc == SQLITE_ROW;
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            rv = map_sqlite(st, rc, "read the anchored record");
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
        int rc;
        sqlite3_finalize(s);
        s = NULL;
        rc = sqlite3_prepare_v2(st->db, anchor_package_sql, -1, &s, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_blob(s, 1, e, GUARDIAN_PACKAGE_ID_LEN, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(s);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            rv = map_sqlite(st, rc, "read a package for the anchor");
            goto out;
        }
        if (rc == SQLITE_DONE) {
            guardian_error(STORE_LOG, "the state store lacks package %llu of the token's anchor (a restored backup, or "
                                      "a database edited or swapped): it could be imported again",
                           (unsigned long long)i + 1);
            goto out;
        }
        if (!column_uint(s, 1, INT64_MAX, &next)) {
            rv = CKR_GUARDIAN_AUDIT_CORRUPT;
            goto out;
        }
        if (sqlite3_column_type(s, 5) == SQLITE_INTEGER)
            product_next = (uint64_t)sqlite3_column_int64(s, 5);
        if (want_next > 0 && product_next < want_next) {
            guardian_error(STORE_LOG, "the state store is behind the token's anchor for %s/%s r%lld: next serial %llu, "
                                      "the token has seen %llu (a restored backup or an edited database): units and "
                                      "serials would be granted twice",
                           (const char *)sqlite3_column_text(s, 2), (const char *)sqlite3_column_text(s, 3),
                           (long long)sqlite3_column_int64(s, 4), (unsigned long long)product_next,
                           (unsigned long long)want_next);
            goto out;
        }
        ahead = ahead || (want_next > 0 && next > want_next);
    }
    *newer = ahead;
    rv = CKR_OK;
out:
    sqlite3_finalize(s);
    sqlite3_finalize(rec);
    store_leave(st);
    return rv;
}
