/*
 * store.c — the Guardian's durable state in SQLite: package registry, production
 * counters, the hash-chained audit trail and the Guardian credentials
 * (store.h says what and why).
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
 *    gets CKR_GUARDIAN_STORE_FAILED until it opens its own;
 *  - the state directory is checked once (not a symlink, ours, not writable
 *    by others) and then used through a descriptor: every file in it is
 *    opened relative to that descriptor, without following symlinks, 0600.
 */
#include "store.h"
#include "journal.h"
#include "store_internal.h"

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

#include <openssl/crypto.h>
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
#define STORE_DIR_MODE 0700
#define STORE_FILE_MODE 0600
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

/* 2 -> 3: what makes a lost issue journal and a clock set back visible.
 * audit_head.max_time: the newest time of any record (the trail's times are
 * not monotone in seq: a journal folded late carries its ISSUEs' own times),
 * moved in the transaction of each append; NULL while the trail is empty.
 * holders: each process that reserved (its issue journal's file name), from
 * its first reservation until its journal is folded for the last time (at its
 * close, or by the opener that recovers it).  AUTOINCREMENT: an ID is never
 * reused, so a reservation's holder names one process forever.
 * issuance.holder: the process whose journal may hold the ISSUE; lost_seq:
 * the JOURNAL_LOST record that declared the serial lost. */
static const char schema_v3[] =
    "ALTER TABLE audit_head ADD COLUMN max_time INTEGER;"
    "UPDATE audit_head SET max_time = (SELECT max(time) FROM audit);"
    "CREATE TABLE holders ("
    "  id        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  journal   TEXT    NOT NULL UNIQUE CHECK (length(CAST(journal AS BLOB)) BETWEEN 1 AND 128),"
    "  opened_at INTEGER NOT NULL"
    ");"
    "ALTER TABLE issuance ADD COLUMN holder INTEGER;"
    "ALTER TABLE issuance ADD COLUMN lost_seq INTEGER;"
    "CREATE INDEX issuance_by_holder ON issuance (holder) WHERE holder IS NOT NULL;";

static CK_RV migrate_to_3(struct guardian_store *st, sqlite3 *db)
{
    int rc = sqlite3_exec(db, schema_v3, NULL, NULL, NULL);
    return map_sqlite(st, rc, "migrate the schema to version 3");
}

/* 3 -> 4: Guardian credentials, and the operator of every record.
 * credentials: one row per role and name (the SO: role 0, name ''; an
 * operator: role 1 and its name), the scrypt salt, hash and parameters, the
 * consecutive failures (counted durably before a PIN is compared) and when
 * it was last set.  audit.operator: who was logged in when the record was
 * written; audit.encoding: the canonical encoding its hash covers (store.h,
 * enum guardian_audit_encoding) - 1 for every record written before this
 * migration, whose hashes must still verify as they were computed, 2 for
 * every record since. */
static const char schema_v4[] =
    "CREATE TABLE credentials ("
    "  role       INTEGER NOT NULL CHECK (role IN (0, 1)),"
    "  name       TEXT    NOT NULL CHECK (length(CAST(name AS BLOB)) <= 32),"
    "  salt       BLOB    NOT NULL CHECK (length(salt) = 16),"
    "  hash       BLOB    NOT NULL CHECK (length(hash) = 32),"
    "  kdf_n      INTEGER NOT NULL CHECK (kdf_n BETWEEN 1 AND 4294967295),"
    "  kdf_r      INTEGER NOT NULL CHECK (kdf_r BETWEEN 1 AND 4294967295),"
    "  kdf_p      INTEGER NOT NULL CHECK (kdf_p BETWEEN 1 AND 4294967295),"
    "  failures   INTEGER NOT NULL DEFAULT 0 CHECK (failures BETWEEN 0 AND 4294967295),"
    "  changed_at INTEGER NOT NULL,"
    "  PRIMARY KEY (role, name),"
    "  CHECK ((role = 0 AND name = '') OR (role = 1 AND name <> ''))"
    ") WITHOUT ROWID;"
    "ALTER TABLE audit ADD COLUMN operator TEXT NOT NULL DEFAULT '' "
    "  CHECK (length(CAST(operator AS BLOB)) <= 32);"
    "ALTER TABLE audit ADD COLUMN encoding INTEGER NOT NULL DEFAULT 1 "
    "  CHECK (encoding IN (1, 2) AND (encoding = 2 OR operator = ''));";

static CK_RV migrate_to_4(struct guardian_store *st, sqlite3 *db)
{
    int rc = sqlite3_exec(db, schema_v4, NULL, NULL, NULL);
    return map_sqlite(st, rc, "migrate the schema to version 4");
}

/* 4 -> 5: nothing to change in the tables; from now on the trail may hold
 * EXPORT records (type 7, store.h), which a module of schema 4 would read as
 * a corrupt trail.  The version says so first: that module refuses the
 * database ("state schema version 5 is not supported") instead of going on
 * producing on a trail it could no longer export (it would call it corrupt). */
static CK_RV migrate_to_5(struct guardian_store *st, sqlite3 *db)
{
    (void)st;
    (void)db;
    return CKR_OK;
}

/* 5 -> 6: the device index (store.h, "the device index"; docs/audit-format.md,
 * "The device index"): which certificate each device ID of a product holds -
 * its serial, the ISSUE record's seq (its certificate is in `certificates`),
 * the SHA-256 of the certificate's SubjectPublicKeyInfo (NULL when no
 * certificate was recorded, before schema 2) - and the part's outcome.  The
 * primary key makes a device ID's certificate unique per product.  Built
 * here from every ISSUE recorded so far, in trail order: where two ISSUEs
 * name one device (two processes racing before this index existed), the
 * first keeps the index. */
static const char schema_v6[] =
    "CREATE TABLE devices ("
    "  oem_id     TEXT    NOT NULL,"
    "  product_id TEXT    NOT NULL,"
    "  device_id  BLOB    NOT NULL CHECK (length(device_id) BETWEEN 1 AND 128),"
    "  serial     INTEGER NOT NULL CHECK (serial >= 1),"
    "  issue_seq  INTEGER NOT NULL,"
    "  spki_hash  BLOB    CHECK (spki_hash IS NULL OR length(spki_hash) = 32),"
    "  outcome    INTEGER NOT NULL DEFAULT 0 CHECK (outcome IN (0, 1, 2)),"
    "  PRIMARY KEY (oem_id, product_id, device_id)"
    ") WITHOUT ROWID;";

static bool cert_spki_hash(const uint8_t *cert, size_t cert_len, uint8_t out[GUARDIAN_HASH_LEN]);

static CK_RV migrate_to_6(struct guardian_store *st, sqlite3 *db)
{
    sqlite3_stmt *rd = NULL, *wr = NULL;
    size_t n = 0, no_key = 0;
    CK_RV rv;
    int rc = sqlite3_exec(db, schema_v6, NULL, NULL, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "SELECT i.oem_id, i.product_id, i.device_id, i.serial, i.issue_seq, c.certificate "
                                "FROM issuance i LEFT JOIN certificates c ON c.issue_seq = i.issue_seq "
                                "WHERE i.issue_seq IS NOT NULL ORDER BY i.issue_seq",
                                -1, &rd, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "INSERT INTO devices (oem_id, product_id, device_id, serial, issue_seq, spki_hash) "
                                "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                                -1, &wr, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(rd)) == SQLITE_ROW) {
        uint8_t h[GUARDIAN_HASH_LEN];
        const void *cert = sqlite3_column_blob(rd, 5);
        int cert_len = sqlite3_column_bytes(rd, 5);
        bool has = cert != NULL && cert_len > 0 && cert_spki_hash(cert, (size_t)cert_len, h);

        no_key += !has;
        rc = SQLITE_OK;
        for (int c = 0; c < 5; c++)
            rc = rc == SQLITE_OK ? sqlite3_bind_value(wr, c + 1, sqlite3_column_value(rd, c)) : rc;
        if (rc == SQLITE_OK)
            rc = has ? sqlite3_bind_blob(wr, 6, h, sizeof(h), SQLITE_TRANSIENT) : sqlite3_bind_null(wr, 6);
        if (rc == SQLITE_OK && (rc = sqlite3_step(wr)) == SQLITE_DONE)
            rc = SQLITE_OK;
        n += sqlite3_changes(db) == 1;
        sqlite3_reset(wr);
    }
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    rv = map_sqlite(st, rc, "migrate the schema to version 6 (the device index)");
    sqlite3_finalize(rd);
    sqlite3_finalize(wr);
    if (rv == CKR_OK)
        guardian_info(STORE_LOG, "device index built from the trail: %zu devices (%zu issued without a recorded "
                                 "certificate: no key to compare a re-ask with)",
                      n, no_key);
    return rv;
}

/* Schema 7: the ledger of enrolled OEM roots (store/roots.c, store.h). */
static const char schema_v7[] =
    "CREATE TABLE roots ("
    "  sha256      BLOB    PRIMARY KEY CHECK (length(sha256) = 32),"
    "  der         BLOB    NOT NULL CHECK (length(der) BETWEEN 1 AND 65536),"
    "  oem_ids     TEXT    NOT NULL CHECK (length(oem_ids) BETWEEN 1 AND 1100),"
    "  enrolled_at INTEGER NOT NULL,"
    "  operator    TEXT    NOT NULL,"
    "  enrol_seq   INTEGER NOT NULL CHECK (enrol_seq >= 1)"
    ") WITHOUT ROWID;";

static CK_RV migrate_to_7(struct guardian_store *st, sqlite3 *db)
{
    return map_sqlite(st, sqlite3_exec(db, schema_v7, NULL, NULL, NULL),
                      "migrate the schema to version 7 (the OEM root ledger)");
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
    {3, migrate_to_3},
    {4, migrate_to_4},
    {5, migrate_to_5},
    {6, migrate_to_6},
    {7, migrate_to_7},
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
    S_HOLDER_INSERT,
    S_HOLDER_BY_JOURNAL,
    S_HOLDER_GET,
    S_HOLDER_DELETE,
    S_HOLDERS_ALL,
    S_ISSUANCE_OPEN_BY_HOLDER,
    S_ISSUANCE_SET_LOST,
    S_CREDENTIAL_GET,
    S_CREDENTIAL_PUT,
    S_CREDENTIAL_DELETE,
    S_CREDENTIAL_FAILED,
    S_CREDENTIAL_SUCCEEDED,
    S_CREDENTIAL_SUMMARY,
    S_DEVICE_GET,
    S_DEVICE_INSERT,
    S_DEVICE_MOVE,
    S_DEVICE_SET_OUTCOME,
    S_COUNT
};

/* A device's certificate (the index row and the certificate recorded with its
 * ISSUE): serial, spki_hash, outcome, certificate, the serial's package. */
#define DEVICE_GET_SQL                                                                                     \
    "SELECT d.serial, d.spki_hash, d.outcome, c.certificate, i.package_id FROM devices d "                 \
    "LEFT JOIN certificates c ON c.issue_seq = d.issue_seq LEFT JOIN issuance i ON i.oem_id = d.oem_id " \
    "AND i.product_id = d.product_id AND i.serial = d.serial "                                            \
    "WHERE d.oem_id = ?1 AND d.product_id = ?2 AND d.device_id = ?3"

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
                          "reserve_seq, holder) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
    [S_HEAD_GET] = "SELECT seq, hash, max_time FROM audit_head WHERE id = 1",
    [S_HEAD_SET] = "UPDATE audit_head SET seq = ?1, hash = ?2, "
                   "max_time = CASE WHEN max_time IS NULL OR max_time < ?4 THEN ?4 ELSE max_time END "
                   "WHERE id = 1 AND seq = ?3",
    [S_AUDIT_INSERT] = "INSERT INTO audit (seq, type, time, oem_id, product_id, serial, device_id, digest, "
                       "package_id, release_version, authorised_units, prev_hash, hash, operator, encoding) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    [S_AUDIT_PAGE] = "SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, "
                     "release_version, authorised_units, prev_hash, hash, operator, encoding FROM audit "
                     "WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    [S_HOLDER_INSERT] = "INSERT INTO holders (journal, opened_at) VALUES (?1, ?2)",
    [S_HOLDER_BY_JOURNAL] = "SELECT id FROM holders WHERE journal = ?1",
    [S_HOLDER_GET] = "SELECT journal FROM holders WHERE id = ?1",
    [S_HOLDER_DELETE] = "DELETE FROM holders WHERE id = ?1",
    [S_HOLDERS_ALL] = "SELECT id, journal FROM holders ORDER BY id",
    [S_ISSUANCE_OPEN_BY_HOLDER] = "SELECT oem_id, product_id, serial, package_id FROM issuance "
                                  "WHERE holder = ?1 AND issue_seq IS NULL AND release_seq IS NULL "
                                  "AND lost_seq IS NULL ORDER BY oem_id, product_id, serial",
    [S_ISSUANCE_SET_LOST] = "UPDATE issuance SET lost_seq = ?6 WHERE oem_id = ?1 AND product_id = ?2 "
                            "AND serial BETWEEN ?3 AND ?4 AND holder = ?5 AND issue_seq IS NULL "
                            "AND release_seq IS NULL AND lost_seq IS NULL",
    [S_CREDENTIAL_GET] = "SELECT salt, hash, kdf_n, kdf_r, kdf_p, failures, changed_at FROM credentials "
                         "WHERE role = ?1 AND name = ?2",
    [S_CREDENTIAL_PUT] = "INSERT INTO credentials (role, name, salt, hash, kdf_n, kdf_r, kdf_p, failures, changed_at) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8) ON CONFLICT (role, name) DO UPDATE SET "
                         "salt = excluded.salt, hash = excluded.hash, kdf_n = excluded.kdf_n, "
                         "kdf_r = excluded.kdf_r, kdf_p = excluded.kdf_p, failures = 0, "
                         "changed_at = excluded.changed_at",
    [S_CREDENTIAL_DELETE] = "DELETE FROM credentials WHERE role = ?1 AND name = ?2",
    [S_CREDENTIAL_FAILED] = "UPDATE credentials SET failures = min(failures + 1, 4294967295) "
                            "WHERE role = ?1 AND name = ?2",
    [S_CREDENTIAL_SUCCEEDED] = "UPDATE credentials SET failures = 0 WHERE role = ?1 AND name = ?2 AND failures <> 0",
    [S_CREDENTIAL_SUMMARY] = "SELECT role, count(*), max(failures), sum(failures >= ?1) FROM credentials "
                             "GROUP BY role ORDER BY role",
    [S_DEVICE_GET] = DEVICE_GET_SQL,
    [S_DEVICE_INSERT] = "INSERT INTO devices (oem_id, product_id, device_id, serial, issue_seq, spki_hash) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, nullif(?6, x'')) ON CONFLICT DO NOTHING",
    [S_DEVICE_MOVE] = "UPDATE devices SET serial = ?4, issue_seq = ?5, spki_hash = nullif(?6, x''), outcome = 0 "
                      "WHERE oem_id = ?1 AND product_id = ?2 AND device_id = ?3 AND serial = ?7",
    [S_DEVICE_SET_OUTCOME] = "UPDATE devices SET outcome = ?4 WHERE oem_id = ?1 AND product_id = ?2 "
                             "AND device_id = ?3",
};

#define DEVICE_BUCKETS 1024
struct device_entry {
    struct device_entry *next;
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint8_t device_id[GUARDIAN_DEVICE_ID_MAX];
    size_t device_id_len;
    bool claimed;   /* a thread is deciding whether to issue for it */
    bool journaled; /* a certificate in this process's journal, not yet folded: */
    uint64_t serial;
    bool has_spki;
    uint8_t spki_hash[GUARDIAN_HASH_LEN];
    uint8_t *cert;
    size_t cert_len;
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
    char journal_name[NAME_MAX + 1]; /* in the state directory */
    uint8_t *journal_buf;            /* one encoded record */
    /* Guards journal_fd's bytes, journal_size and journal_buf: an append
     * takes only this lock, never `lock`, so a certificate is not kept
     * waiting by a write transaction of another thread (a reservation folds
     * a whole block's records and commits FULL: ~20 ms).  The operator
     * fields below are written holding both, as an append reads them.
     * Order: `lock`, then journal_lock. */
    pthread_mutex_t journal_lock;
    /* The state directory, checked once at open (file-backed stores; -1 for
     * an in-memory one): every file in it is opened relative to this. */
    int dir_fd;
    /* anchor.lock in the state directory, opened on the first
     * guardian_store_anchor_lock: serialises the token anchor's updates
     * across processes. -1 until then. */
    int anchor_lock_fd;
    char dir[PATH_MAX];
    /* This process's row in `holders`: 0 until its first reservation commits
     * it (holder_uncommitted while the transaction that adds it is open). */
    sqlite3_int64 holder_id;
    bool holder_uncommitted;
    /* Who every record this handle writes names (guardian_store_set_operator);
     * operator_invalid: the last name set was refused, and so is every write
     * that would record it until a valid one is set. */
    char operator_name[GUARDIAN_OPERATOR_MAX + 1];
    bool operator_invalid;
    /* The device index's part in this process (store.h, "the device
     * index"), guarded by journal_lock: every device with a claim (a thread
     * about to issue for it) or a certificate in this journal not yet folded
     * (`journaled`, forgotten when the journal is emptied: its records are
     * committed then).  device_cond: a claim was released. */
    struct device_entry *devices[DEVICE_BUCKETS];
    size_t devices_journaled;
    pthread_cond_t device_cond;
    /* A second, read-only connection (file-backed stores) for the device
     * lookup of every certificate: in WAL mode it reads the last commit
     * without waiting for `lock`, which a write transaction (a reservation
     * folding a block: ~20 ms) holds.  Guarded by read_lock; NULL for an
     * in-memory store (its lookups use db under `lock`). */
    sqlite3 *rdb;
    sqlite3_stmt *rdb_device_get;
    pthread_mutex_t read_lock;
    struct guardian_store *next_abandoned;
};

/* Stores closed in a process that did not open them (after fork()): kept, not
 * freed, so that their memory stays reachable rather than leaked. */
static struct guardian_store *abandoned;
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- errors: the one place SQLite result codes become CKR codes ---------------- */

static CK_RV map_sqlite(struct guardian_store *st, int rc, const char *what)
{
    if (rc == SQLITE_CANTOPEN_SYMLINK) {
        /* SQLITE_OPEN_NOFOLLOW: the database was swapped for a link after
         * the store's own check. */
        guardian_error(STORE_LOG, "%s: the state database is a symbolic link: refused (remove the link, and find "
                                  "out who made it)",
                       what);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
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

/* A store is bound to the process that opened it (logged when it is not). */
static bool same_process(const struct guardian_store *st)
{
    if (st->pid == getpid())
        return true;
    guardian_error(STORE_LOG, "store opened by process %ld used in process %ld: reopen it after fork()", (long)st->pid,
                   (long)getpid());
    return false;
}

static CK_RV store_enter(struct guardian_store *st)
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
 *   'N'  sqlite3_int64         integer, or NULL when it is 0
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
        case 'N': {
            sqlite3_int64 v = va_arg(ap, sqlite3_int64);
            rc = v != 0 ? sqlite3_bind_int64(s, i, v) : sqlite3_bind_null(s, i);
            break;
        }
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

/* What folding one issue journal found. */
struct fold_result {
    size_t folded;                     /* ISSUE records folded (or found folded before) */
    size_t size;                       /* bytes read from the file */
    bool damaged;                      /* a cut or invalid record, or not the bytes its writer wrote */
    uint8_t digest[GUARDIAN_HASH_LEN]; /* SHA-256 of the bytes read: set when damaged (it names them) */
};

static CK_RV journal_fold_locked(struct guardian_store *st, int fd, const char *name, off_t expect,
                                 struct fold_result *res);
static CK_RV journal_read(int fd, const char *name, off_t expect, uint8_t **buf, struct fold_result *res);
static CK_RV journal_fold_buf(struct guardian_store *st, const char *name, const uint8_t *buf, size_t from,
                              struct fold_result *res);
static CK_RV journal_lost_locked(struct guardian_store *st, sqlite3_int64 holder, const char *journal, int reason,
                                 const uint8_t digest[GUARDIAN_HASH_LEN]);
static CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                            const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len);
static void devices_forget_journaled_jlocked(struct guardian_store *st);

/* This process's own journal, read whole with journal_lock held by the
 * caller: its bytes, and `to`, the size its appends reached.  Only this
 * process writes it (it holds the flock), so anything but the bytes it wrote
 * means someone else changed it (fold_result.damaged). */
struct own_journal {
    uint8_t *buf;
    off_t to;
    bool nonempty; /* the file had bytes: empty it once they are committed */
    struct fold_result fr;
};

static CK_RV own_journal_read_jlocked(struct guardian_store *st, struct own_journal *j)
{
    struct stat sb;

    memset(j, 0, sizeof(*j));
    j->to = st->journal_size;
    if (st->journal_size == 0 && fstat(st->journal_fd, &sb) == 0 && sb.st_size == 0)
        return CKR_OK; /* the common case of a write with nothing issued since the last */
    j->nonempty = true;
    return journal_read(st->journal_fd, st->journal_name, st->journal_size, &j->buf, &j->fr);
}

/* Fold the records read into `j` from byte `from` (a record boundary: where
 * an earlier fold of the same write stopped), inside the caller's write
 * transaction; a damaged journal gets a JOURNAL_LOST record naming the
 * serials this process still holds open. */
static CK_RV own_journal_fold_locked(struct guardian_store *st, struct own_journal *j, off_t from)
{
    CK_RV rv = CKR_OK;

    if (j->buf != NULL)
        rv = journal_fold_buf(st, st->journal_name, j->buf, (size_t)from, &j->fr);
    free(j->buf);
    j->buf = NULL;
    if (rv == CKR_OK && j->fr.damaged && st->holder_id != 0)
        rv = journal_lost_locked(st, st->holder_id, st->journal_name, GUARDIAN_JOURNAL_DAMAGED, j->fr.digest);
    return rv;
}

/* Records appended while a write transaction ran (up to `folded`, the journal
 * was folded in it and is committed) are folded too, in transactions of the
 * durability they had in the journal (NORMAL), and the journal is emptied
 * once every record in it is committed.  The last pass holds journal_lock
 * from its read to the truncation, so it is kept short: it is the third, or
 * the first whose tail is at most CATCH_UP_LOCKED bytes.  A pass that fails
 * leaves the journal as it is: the next write folds its records (after a
 * crash, the next opener), those folded before again, harmlessly. */
#define CATCH_UP_PASSES 3
#define CATCH_UP_LOCKED ((off_t)32 * 1024)
static void journal_catch_up_locked(struct guardian_store *st, off_t folded, bool nonempty)
{
    for (int pass = 0;; pass++) {
        struct own_journal j;
        bool last;
        CK_RV rv;

        pthread_mutex_lock(&st->journal_lock);
        if (st->journal_size == folded) {
            if (nonempty || folded > 0) {
                /* Committed: the journal's records are in the trail now.  A
                 * crash before this truncation folds them again, harmlessly. */
                devices_forget_journaled_jlocked(st);
                if (ftruncate(st->journal_fd, 0) == 0)
                    st->journal_size = 0;
                else
                    guardian_warn(STORE_LOG, "cannot empty the issue journal: %s", strerror(errno));
            }
            pthread_mutex_unlock(&st->journal_lock);
            return;
        }
        last = pass + 1 >= CATCH_UP_PASSES || st->journal_size - folded <= CATCH_UP_LOCKED;
        rv = own_journal_read_jlocked(st, &j);
        if (!last)
            pthread_mutex_unlock(&st->journal_lock);
        if (rv == CKR_OK)
            rv = tx_begin(st, false);
        if (rv == CKR_OK)
            rv = tx_end(st, own_journal_fold_locked(st, &j, folded));
        free(j.buf);
        if (last) {
            if (rv == CKR_OK)
                devices_forget_journaled_jlocked(st);
            if (rv == CKR_OK && ftruncate(st->journal_fd, 0) == 0)
                st->journal_size = 0;
            else if (rv == CKR_OK)
                guardian_warn(STORE_LOG, "cannot empty the issue journal: %s", strerror(errno));
            pthread_mutex_unlock(&st->journal_lock);
            return;
        }
        if (rv != CKR_OK)
            return;
        folded = j.to;
        nonempty = true;
    }
}

/* The one shape of every mutation: lock the store, BEGIN IMMEDIATE, fold this
 * process's issue journal into the trail, run `fn`, COMMIT if it returned
 * CKR_OK and roll back otherwise, fold what was appended meanwhile and empty
 * the journal once its records are committed, unlock. */
static CK_RV store_write(struct guardian_store *st, bool durable, CK_RV (*fn)(struct guardian_store *st, void *ctx),
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

/* An operator's name (TEXT, guardian_operator_name_ok, "" allowed). */
static bool column_operator(sqlite3_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1])
{
    const unsigned char *text = sqlite3_column_text(s, col);
    int n = sqlite3_column_bytes(s, col);

    if (sqlite3_column_type(s, col) != SQLITE_TEXT || text == NULL || n < 0 || n > GUARDIAN_OPERATOR_MAX ||
        memchr(text, '\0', (size_t)n) != NULL)
        return false;
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    return guardian_operator_name_ok(out);
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
    uint64_t type = 0, release = 0, encoding = 0;

    memset(r, 0, sizeof(*r));
    if (!column_uint(s, 0, INT64_MAX, &r->seq) || !column_uint(s, 1, GUARDIAN_AUDIT_TYPE_MAX, &type) ||
        type < GUARDIAN_AUDIT_IMPORT || sqlite3_column_type(s, 2) != SQLITE_INTEGER || !column_id(s, 3, r->oem_id) ||
        !column_id(s, 4, r->product_id) || !column_uint(s, 5, INT64_MAX, &r->serial) ||
        !column_blob(s, 6, r->device_id, sizeof(r->device_id), &r->device_id_len) ||
        !column_blob_exact(s, 7, r->digest, sizeof(r->digest)) ||
        !column_blob_exact(s, 8, r->package_id, sizeof(r->package_id)) || !column_uint(s, 9, UINT32_MAX, &release) ||
        !column_uint(s, 10, INT64_MAX, &r->authorised_units) ||
        !column_blob_exact(s, 11, r->prev_hash, sizeof(r->prev_hash)) ||
        !column_blob_exact(s, 12, r->hash, sizeof(r->hash)) || !column_operator(s, 13, r->operator_name) ||
        !column_uint(s, 14, GUARDIAN_AUDIT_ENCODING_2, &encoding) || encoding < GUARDIAN_AUDIT_ENCODING_1)
        return false;
    r->type = (int)type;
    r->time = sqlite3_column_int64(s, 2);
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
    if (!column_uint(s, 0, INT64_MAX - 1, seq) || !column_blob_exact(s, 1, hash, GUARDIAN_HASH_LEN) ||
        (sqlite3_column_type(s, 2) != SQLITE_NULL && sqlite3_column_type(s, 2) != SQLITE_INTEGER) ||
        (*seq > 0 && sqlite3_column_type(s, 2) == SQLITE_NULL)) {
        guardian_error(STORE_LOG, "the audit head is malformed");
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    if (max_time != NULL) {
        *has_time = sqlite3_column_type(s, 2) == SQLITE_INTEGER;
        *max_time = *has_time ? sqlite3_column_int64(s, 2) : 0;
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    return rv;
}

static CK_RV audit_head_get(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN])
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
static CK_RV clock_check_locked(struct guardian_store *st, int64_t now, const char *what)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    uint64_t seq = 0;
    int64_t newest = 0;
    bool has = false;
    char now_text[32], newest_text[32];
    CK_RV rv = audit_head_read(st, &seq, hash, &newest, &has);

    if (rv != CKR_OK || !has || newest <= now || (uint64_t)newest - (uint64_t)now <= GUARDIAN_STORE_CLOCK_SLACK_S)
        return rv;
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
 * encoding 2, naming `operator_name` - an ISSUE folded from a journal names
 * who issued it - or, when that is NULL, the current operator
 * (guardian_store_set_operator); every other field zero.  The caller holds
 * the lock.  Naming the current operator is refused while the one last set
 * was invalid: no record may name the wrong one. */
static CK_RV record_init(struct guardian_store *st, struct guardian_audit_record *r, int type, int64_t t,
                         const char *operator_name)
{
    memset(r, 0, sizeof(*r));
    if (operator_name == NULL && st->operator_invalid) {
        guardian_error(STORE_LOG, "nothing is recorded while the operator name last set is invalid: set a valid "
                                  "one (guardian_store_set_operator)");
        return CKR_ARGUMENTS_BAD;
    }
    r->type = type;
    r->time = t;
    r->encoding = GUARDIAN_AUDIT_ENCODING_2;
    snprintf(r->operator_name, sizeof(r->operator_name), "%s",
             operator_name != NULL ? operator_name : st->operator_name);
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

    rv = stmt_step(st, S_AUDIT_INSERT, &s, NULL, "append an audit record", "iiittibbbiibbti", (sqlite3_int64)r->seq,
                   (sqlite3_int64)r->type, (sqlite3_int64)r->time, r->oem_id, r->product_id,
                   (sqlite3_int64)r->serial, r->device_id, (int)r->device_id_len, r->digest, GUARDIAN_HASH_LEN,
                   r->package_id, GUARDIAN_PACKAGE_ID_LEN, (sqlite3_int64)r->release_version,
                   (sqlite3_int64)r->authorised_units, r->prev_hash, GUARDIAN_HASH_LEN, r->hash, GUARDIAN_HASH_LEN,
                   r->operator_name, (sqlite3_int64)r->encoding);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    rv = stmt_step(st, S_HEAD_SET, &s, NULL, "move the audit head", "ibii", (sqlite3_int64)r->seq, r->hash,
                   GUARDIAN_HASH_LEN, (sqlite3_int64)head_seq, (sqlite3_int64)r->time);
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

/* ---- what store/roots.c borrows (store_internal.h) ------------------------------- */

struct internal_call {
    CK_RV (*fn)(struct guardian_store *st, sqlite3 *db, void *ctx);
    void *ctx;
};

static CK_RV internal_tx(struct guardian_store *st, void *ctx)
{
    const struct internal_call *c = ctx;
    return c->fn(st, st->db, c->ctx);
}

CK_RV guardian_store_internal_write(struct guardian_store *st,
                                    CK_RV (*fn)(struct guardian_store *st, sqlite3 *db, void *ctx), void *ctx)
{
    struct internal_call c = {fn, ctx};
    if (st == NULL || fn == NULL)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, true, internal_tx, &c);
}

CK_RV guardian_store_internal_read(struct guardian_store *st,
                                   CK_RV (*fn)(struct guardian_store *st, sqlite3 *db, void *ctx), void *ctx)
{
    CK_RV rv;
    if (st == NULL || fn == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = fn(st, st->db, ctx);
    store_leave(st);
    return rv;
}

CK_RV guardian_store_internal_append(struct guardian_store *st, struct guardian_audit_record *r)
{
    struct guardian_audit_record rec = *r;
    CK_RV rv = record_init(st, &rec, r->type, r->time, NULL);
    if (rv != CKR_OK)
        return rv;
    memcpy(rec.oem_id, r->oem_id, sizeof(rec.oem_id));
    memcpy(rec.product_id, r->product_id, sizeof(rec.product_id));
    rec.serial = r->serial;
    memcpy(rec.device_id, r->device_id, sizeof(rec.device_id));
    rec.device_id_len = r->device_id_len;
    memcpy(rec.digest, r->digest, sizeof(rec.digest));
    memcpy(rec.package_id, r->package_id, sizeof(rec.package_id));
    rec.release_version = r->release_version;
    rec.authorised_units = r->authorised_units;
    rv = audit_append(st, &rec);
    if (rv == CKR_OK)
        *r = rec;
    return rv;
}

CK_RV guardian_store_internal_sqlite(struct guardian_store *st, int rc, const char *what)
{
    return map_sqlite(st, rc, what);
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
    sqlite3_finalize(st->rdb_device_get);
    if (st->rdb != NULL)
        sqlite3_close(st->rdb);
    for (size_t b = 0; b < DEVICE_BUCKETS; b++)
        while (st->devices[b] != NULL) {
            struct device_entry *e = st->devices[b];
            st->devices[b] = e->next;
            free(e->cert);
            free(e);
        }
    if (st->db != NULL && sqlite3_close(st->db) != SQLITE_OK)
        (void)map_sqlite(st, sqlite3_errcode(st->db), "close");
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

/* ---- the state directory and its files ------------------------------------------- */

/* The state directory: created 0700 if missing (its parent must exist), else
 * refused unless it is a real directory of this effective uid that no one
 * else may write (CKR_GUARDIAN_STATE_UNSAFE, with what to do).  *out: a
 * descriptor of it, for openat() and friends. */
static CK_RV state_dir_open(const char *dir, int *out)
{
    struct stat sb;
    bool created = false;
    int fd;

    *out = -1;
    if (lstat(dir, &sb) != 0) {
        if (errno != ENOENT) {
            guardian_error(STORE_LOG, "cannot use the state directory %s: %s", dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        if (mkdir(dir, STORE_DIR_MODE) == 0)
            created = true;
        else if (errno != EEXIST) {
            guardian_error(STORE_LOG, "cannot create the state directory %s: %s (its parent directory must exist)",
                           dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        if (lstat(dir, &sb) != 0) {
            guardian_error(STORE_LOG, "cannot use the state directory %s: %s", dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
    }
    if (S_ISLNK(sb.st_mode)) {
        guardian_error(STORE_LOG, "the state directory %s is a symbolic link: refused; set state_dir (or "
                                  "GUARDIAN_STATE_DIR) to the directory itself",
                       dir);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (fd < 0 && e != ELOOP && e != ENOTDIR) {
            guardian_error(STORE_LOG, "cannot open the state directory %s: %s", dir, strerror(e));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        guardian_error(STORE_LOG, "the state directory %s is not a directory (or was just replaced by a link): "
                                  "refused; set state_dir to a directory",
                       dir);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    /* mkdir() applied the umask: make the mode what the store asked for. */
    if (created && (sb.st_mode & 07777) != STORE_DIR_MODE && fchmod(fd, STORE_DIR_MODE) == 0)
        sb.st_mode = (sb.st_mode & ~(mode_t)07777) | STORE_DIR_MODE;
    if (sb.st_uid != geteuid()) {
        guardian_error(STORE_LOG, "the state directory %s belongs to uid %lu, not to this process's uid %lu: "
                                  "refused; chown %lu %s (or run as its owner)",
                       dir, (unsigned long)sb.st_uid, (unsigned long)geteuid(), (unsigned long)geteuid(), dir);
        close(fd);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if ((sb.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        guardian_error(STORE_LOG, "the state directory %s is writable by %s (mode %04o): refused; chmod 700 %s",
                       dir, (sb.st_mode & S_IWOTH) != 0 ? "others" : "its group", (unsigned)(sb.st_mode & 07777),
                       dir);
        close(fd);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if (created)
        guardian_info(STORE_LOG, "created the state directory %s (mode 0700)", dir);
    *out = fd;
    return CKR_OK;
}

/* A file of the store in the state directory (guardian.db, -wal, -shm, an
 * issue journal) opened by `fd`: a regular file of this effective uid, or
 * CKR_GUARDIAN_STATE_UNSAFE; set to 0600 whatever the umask made it. */
static CK_RV state_file_vet(const struct guardian_store *st, int fd, const char *name)
{
    struct stat sb;

    if (fstat(fd, &sb) != 0) {
        guardian_error(STORE_LOG, "cannot stat %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    if (!S_ISREG(sb.st_mode)) {
        guardian_error(STORE_LOG, "%s/%s is not a regular file: refused; remove it", st->dir, name);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if (sb.st_uid != geteuid()) {
        guardian_error(STORE_LOG, "%s/%s belongs to uid %lu, not to this process's uid %lu: refused; chown %lu %s/%s",
                       st->dir, name, (unsigned long)sb.st_uid, (unsigned long)geteuid(), (unsigned long)geteuid(),
                       st->dir, name);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if ((sb.st_mode & 07777) != STORE_FILE_MODE && fchmod(fd, STORE_FILE_MODE) != 0) {
        guardian_error(STORE_LOG, "cannot chmod 600 %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    return CKR_OK;
}

/* Opens `name` in the state directory without following a symbolic link
 * (CKR_GUARDIAN_STATE_UNSAFE if it is one) and vets it; *fd -1 and CKR_OK if
 * it does not exist and `flags` has no O_CREAT. */
static CK_RV state_file_open(const struct guardian_store *st, const char *name, int flags, int *fd)
{
    CK_RV rv;

    *fd = openat(st->dir_fd, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, STORE_FILE_MODE);
    if (*fd < 0) {
        if (errno == ENOENT && (flags & O_CREAT) == 0)
            return CKR_OK;
        if (errno == ELOOP) {
            guardian_error(STORE_LOG, "%s/%s is a symbolic link: refused; remove it (the store makes its own files) "
                                      "and find out who made it",
                           st->dir, name);
            return CKR_GUARDIAN_STATE_UNSAFE;
        }
        if (errno == EISDIR) {
            guardian_error(STORE_LOG, "%s/%s is not a regular file: refused; remove it", st->dir, name);
            return CKR_GUARDIAN_STATE_UNSAFE;
        }
        guardian_error(STORE_LOG, "cannot open %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    rv = state_file_vet(st, *fd, name);
    if (rv != CKR_OK) {
        close(*fd);
        *fd = -1;
    }
    return rv;
}

/* guardian.db (created empty here, 0600, so that SQLite finds it and gives
 * its -wal and -shm the same mode: it creates them with the database's mode,
 * whatever the umask), then the -wal and -shm that exist. */
static CK_RV state_files_prepare(const struct guardian_store *st)
{
    static const char *const names[] = {STORE_FILE_NAME, STORE_FILE_NAME "-wal", STORE_FILE_NAME "-shm"};
    CK_RV rv = CKR_OK;

    for (size_t i = 0; rv == CKR_OK && i < sizeof(names) / sizeof(names[0]); i++) {
        int fd = -1;
        rv = state_file_open(st, names[i], O_RDWR | (i == 0 ? O_CREAT : 0), &fd);
        if (fd >= 0)
            close(fd);
    }
    return rv;
}

static CK_RV journal_recover(struct guardian_store *st);
static CK_RV journal_orphans(struct guardian_store *st);

/* The device lookups' read-only connection (struct guardian_store, rdb). */
static CK_RV read_connection_open(struct guardian_store *st, const char *path)
{
    int rc = sqlite3_open_v2(path, &st->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
                             NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(st->rdb, GUARDIAN_STORE_BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(st->rdb, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(st->rdb, DEVICE_GET_SQL, -1, SQLITE_PREPARE_PERSISTENT, &st->rdb_device_get, NULL);
    if (rc != SQLITE_OK) {
        guardian_error(STORE_LOG, "open the state database for reading: %s (SQLite %d)", sqlite3_errstr(rc), rc);
        return CKR_GUARDIAN_STORE_FAILED;
    }
    return CKR_OK;
}
static CK_RV journal_open(struct guardian_store *st);

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
        if (rv == CKR_OK)
            rv = state_files_prepare(st);
        if (rv != CKR_OK)
            goto out;
    }
    rc = sqlite3_open_v2(path, &st->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                             (memory ? SQLITE_OPEN_MEMORY : SQLITE_OPEN_NOFOLLOW),
                         NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, st->db != NULL ? sqlite3_extended_errcode(st->db) : rc, "open the state database");
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
        /* Before this process has a journal or a holder row: every journal
         * and holder found belongs to another process. */
        rv = journal_recover(st);
        if (rv == CKR_OK)
            rv = journal_orphans(st);
        if (rv == CKR_OK)
            rv = journal_open(st);
        if (rv == CKR_OK)
            rv = read_connection_open(st, path);
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
    char path[PATH_MAX], clean[PATH_MAX];
    size_t len;
    int n;

    if (dir == NULL || *dir == '\0' || out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
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
    return store_open_path(path, clean, out);
}

CK_RV guardian_store_open_memory(struct guardian_store **out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    return store_open_path(":memory:", NULL, out);
}

/* The last fold of this process's journal: its holder row goes with it, so
 * that no opener takes the journal's absence for a loss. */
static CK_RV close_tx(struct guardian_store *st, void *ctx)
{
    sqlite3_stmt *s = NULL;
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

/* ---- package registry -------------------------------------------------------------- */

/* The clock, expiry, replay and rollback checks; the caller holds the lock. */
static CK_RV package_check_locked(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    bool row = false;

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

CK_RV guardian_store_package_check(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now)
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
    rv = package_check_locked(st, pkg, now);
out:
    if (locked)
        store_leave(st);
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

static CK_RV package_install_locked(struct guardian_store *st, const struct guardian_package_info *pkg,
                                    int64_t now)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct guardian_audit_record rec;
    sqlite3_stmt *s = NULL;

    rv = package_check_locked(st, pkg, now);
    if (rv != CKR_OK)
        goto out;

    rv = record_init(st, &rec, GUARDIAN_AUDIT_IMPORT, now, NULL);
    if (rv != CKR_OK)
        goto out;
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
                   (sqlite3_int64)pkg->not_after, (sqlite3_int64)now, (sqlite3_int64)rec.seq, pkg->cert_template,
                   (int)pkg->cert_template_len, pkg->ca_cert, (int)pkg->ca_cert_len);
    if (rv != CKR_OK)
        goto out;
    stmt_done(s);

    /* Install or supersede: the product now counts against this package's
     * allowance; next_serial is left as it was (never reused). */
    rv = stmt_step(st, S_PRODUCT_UPSERT, &s, NULL, "install a product release", "ttbi", pkg->oem_id,
                   pkg->product_id, pkg->package_id, GUARDIAN_PACKAGE_ID_LEN, (sqlite3_int64)now);
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

/* Every installed product, ordered by OEM ID then product ID, into a
 * malloc'd list (*list NULL when there is none); the caller holds the lock. */
static CK_RV products_read_locked(struct guardian_store *st, struct guardian_product **list, size_t *count)
{
    struct guardian_product *grown;
    size_t cap = 0;
    sqlite3_stmt *s = NULL;
    CK_RV rv;
    int rc;

    *list = NULL;
    *count = 0;
    rv = stmt_get(st, S_PRODUCTS_ALL, &s);
    if (rv != CKR_OK)
        goto out;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
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
    }
    rv = map_sqlite(st, rc, "list products");
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
static CK_RV products_call(const struct guardian_product *list, size_t count,
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

/* This process's row in `holders`, added by its first reservation (file-backed
 * stores: an in-memory store commits every ISSUE at once, so its
 * reservations have no holder).  *id 0: none. */
static CK_RV holder_register_locked(struct guardian_store *st, sqlite3_int64 *id)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = CKR_OK;

    *id = 0;
    if (st->journal_fd < 0)
        return CKR_OK;
    if (st->holder_id == 0) {
        rv = stmt_step(st, S_HOLDER_INSERT, &s, NULL, "record this process as a holder", "ti", st->journal_name,
                       (sqlite3_int64)time(NULL));
        stmt_done(s);
        if (rv != CKR_OK)
            return rv;
        st->holder_id = sqlite3_last_insert_rowid(st->db);
        st->holder_uncommitted = true; /* store_write forgets it if the transaction rolls back */
    }
    *id = st->holder_id;
    return CKR_OK;
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
    sqlite3_int64 holder = 0;
    bool row = false;
    uint64_t n;

    rv = clock_check_locked(st, a->now, "reservation");
    if (rv != CKR_OK)
        goto out;
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

    rv = holder_register_locked(st, &holder);
    if (rv != CKR_OK)
        goto out;
    for (uint64_t i = 0; i < n; i++) {
        rv = record_init(st, &rec, GUARDIAN_AUDIT_RESERVE, a->now, NULL);
        if (rv != CKR_OK)
            goto out;
        memcpy(rec.oem_id, a->oem_id, strlen(a->oem_id) + 1);
        memcpy(rec.product_id, a->product_id, strlen(a->product_id) + 1);
        rec.serial = prod.next_serial + i;
        if (a->device_id != NULL)
            memcpy(rec.device_id, a->device_id, a->device_id_len);
        rec.device_id_len = a->device_id != NULL ? a->device_id_len : 0;
        rv = audit_append(st, &rec);
        if (rv != CKR_OK)
            goto out;
        rv = stmt_step(st, S_ISSUANCE_INSERT, &s, NULL, "record a reservation", "ttibbiN", a->oem_id, a->product_id,
                       (sqlite3_int64)rec.serial, prod.package_id, GUARDIAN_PACKAGE_ID_LEN, rec.device_id,
                       (int)rec.device_id_len, (sqlite3_int64)rec.seq, holder);
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
    const char *operator_name; /* from a journal: its record's operator; NULL: the current one */
    uint64_t reissue_of; /* a re-issue (reissue_tx moves the device index): the device's serial until now */
    uint64_t issue_seq;  /* out: the ISSUE record's seq */
};

/* SHA-256 of the SubjectPublicKeyInfo inside a certificate; false if the
 * certificate's outline cannot be read (journal.c). */
static bool cert_spki_hash(const uint8_t *cert, size_t cert_len, uint8_t out[GUARDIAN_HASH_LEN])
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
static CK_RV device_index_issue(struct guardian_store *st, const struct issue_args *a, uint64_t seq)
{
    uint8_t h[GUARDIAN_HASH_LEN];
    bool has = a->cert != NULL && cert_spki_hash(a->cert, a->cert_len, h), row = false;
    sqlite3_stmt *s = NULL;
    uint64_t other = 0;
    CK_RV rv;

    rv = stmt_step(st, S_DEVICE_INSERT, &s, NULL, "index a device's certificate", "ttbiib", a->oem_id, a->product_id,
                   a->device_id, (int)a->device_id_len, (sqlite3_int64)a->serial, (sqlite3_int64)seq,
                   has ? (const void *)h : NULL, has ? GUARDIAN_HASH_LEN : 0);
    if (rv != CKR_OK || sqlite3_changes(st->db) == 1)
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

    /* From a journal: who issued it, then (not whoever folds it now). */
    rv = record_init(st, &rec, a->type, a->time != 0 ? a->time : (int64_t)time(NULL), a->operator_name);
    if (rv != CKR_OK)
        goto out;
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
        stmt_done(s);
    }
    if (a->type == GUARDIAN_AUDIT_ISSUE && a->reissue_of == 0) {
        rv = device_index_issue(st, a, rec.seq);
        if (rv != CKR_OK)
            goto out;
    }
    if (a->type == GUARDIAN_AUDIT_ISSUE)
        a->issue_seq = rec.seq;
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
                           cert_digest, NULL, 0, false, NULL, 0, 0};

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
                           digest, cert, cert_len, false, NULL, 0, 0};

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
    struct issue_args a = {oem_id, product_id, serial, 0, GUARDIAN_AUDIT_RELEASE, NULL, 0, NULL, NULL, 0, false,
                           NULL, 0, 0};

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
    sqlite3_stmt *s = NULL;
    uint64_t f = 0;
    CK_RV rv = stmt_step(st, S_CREDENTIAL_GET, &s, found, "read a credential", "it", (sqlite3_int64)role, key);

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
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_PUT, &s, NULL, "write a credential", "itbbiiii", (sqlite3_int64)a->role, a->key,
                   c->salt, (int)sizeof(c->salt), c->hash, (int)sizeof(c->hash), (sqlite3_int64)c->kdf_n,
                   (sqlite3_int64)c->kdf_r, (sqlite3_int64)c->kdf_p, (sqlite3_int64)now);
    stmt_done(s);
    if (rv == CKR_OK)
        rv = credential_record_locked(st, a->action, a->subject, now);
    return rv;
}

static CK_RV credential_remove_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_DELETE, &s, NULL, "remove a credential", "it", (sqlite3_int64)a->role, a->key);
    if (rv == CKR_OK && sqlite3_changes(st->db) != 1)
        rv = CKR_USER_PIN_NOT_INITIALIZED;
    stmt_done(s);
    if (rv == CKR_OK)
        rv = credential_record_locked(st, a->action, credential_subject(a->role, a->key), (int64_t)time(NULL));
    return rv;
}

static CK_RV credential_failed_tx(struct guardian_store *st, void *ctx)
{
    struct credential_args *a = ctx;
    sqlite3_stmt *s = NULL;
    bool found = false;
    CK_RV rv;

    rv = stmt_step(st, S_CREDENTIAL_FAILED, &s, NULL, "count a failed login", "it", (sqlite3_int64)a->role, a->key);
    stmt_done(s);
    if (rv != CKR_OK)
        return rv;
    if (sqlite3_changes(st->db) != 1)
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
    sqlite3_stmt *s = NULL;
    bool found = false;
    uint32_t failures = 0;
    CK_RV rv = credential_failures_locked(st, a->role, a->key, &found, &failures);

    if (rv != CKR_OK)
        return rv;
    if (!found)
        return CKR_USER_PIN_NOT_INITIALIZED;
    if (failures == 0)
        return CKR_OK; /* nothing to write: the COMMIT of an unchanged database syncs nothing */
    rv = stmt_step(st, S_CREDENTIAL_SUCCEEDED, &s, NULL, "reset the failed logins", "it", (sqlite3_int64)a->role,
                   a->key);
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_credential_get(struct guardian_store *st, int role, const char *name,
                                    struct guardian_credential *out)
{
    uint64_t n = 0, r = 0, p = 0, failures = 0;
    sqlite3_stmt *s = NULL;
    const char *key = NULL;
    bool row = false;
    CK_RV rv;

    if (st == NULL || out == NULL || !credential_key_ok(role, name, &key))
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, sizeof(*out));
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_CREDENTIAL_GET, &s, &row, "read a credential", "it", (sqlite3_int64)role, key);
    if (rv != CKR_OK)
        goto out;
    if (!row) {
        rv = CKR_USER_PIN_NOT_INITIALIZED;
        goto out;
    }
    if (!column_blob_exact(s, 0, out->salt, sizeof(out->salt)) ||
        !column_blob_exact(s, 1, out->hash, sizeof(out->hash)) || !column_uint(s, 2, UINT32_MAX, &n) ||
        !column_uint(s, 3, UINT32_MAX, &r) || !column_uint(s, 4, UINT32_MAX, &p) ||
        !column_uint(s, 5, UINT32_MAX, &failures) || sqlite3_column_type(s, 6) != SQLITE_INTEGER) {
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
    out->changed_at = sqlite3_column_int64(s, 6);
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
    sqlite3_stmt *s = NULL;
    CK_RV rv;
    int rc;

    if (st == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_get(st, S_CREDENTIAL_SUMMARY, &s);
    if (rv != CKR_OK)
        goto out;
    rc = bind_all(s, "i", (sqlite3_int64)GUARDIAN_CREDENTIAL_MAX_FAILURES);
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        uint64_t role = 0, count = 0, max = 0, n_locked = 0;
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
            break;
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
    }
    rv = map_sqlite(st, rc, "summarise the credentials");
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

/* ---- the issue journal --------------------------------------------------------------- */

/* The record format and its parser are journal.c's.  A record is appended
 * with one write() on an O_APPEND descriptor: a process killed at any moment
 * leaves whole records (Linux completes a regular file's write), so only a
 * power loss - or someone who edits the file - leaves a cut or invalid
 * record, which folding detects and reports as a JOURNAL_LOST record. */
#define JOURNAL_PREFIX "issued-"
#define JOURNAL_SUFFIX ".journal"
#define JOURNAL_FILE_MAX ((off_t)GUARDIAN_RESERVE_MAX * 4 * GUARDIAN_JOURNAL_RECORD_MAX)

/* A journal's file name as this store makes it: issued-<pid>-<digits>.journal. */
static bool journal_name_ok(const char *name)
{
    size_t n = strnlen(name, NAME_MAX + 1), pl = strlen(JOURNAL_PREFIX), sl = strlen(JOURNAL_SUFFIX);

    if (n <= pl + sl || n > GUARDIAN_DEVICE_ID_MAX || strncmp(name, JOURNAL_PREFIX, pl) != 0 ||
        strcmp(name + n - sl, JOURNAL_SUFFIX) != 0)
        return false;
    for (size_t i = pl; i < n - sl; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || name[i] == '-'))
            return false;
    return true;
}

/* Read the whole journal `fd` into *buf (malloc'd, res->size bytes).  `expect`: the bytes its writer appended (this
 * process's own journal), or -1 (another process's); anything else, or more
 * than any journal the store writes, makes it damaged. */
static CK_RV journal_read(int fd, const char *name, off_t expect, uint8_t **buf_out, struct fold_result *res)
{
    CK_RV rv = CKR_OK;
    struct stat sb;
    uint8_t *buf = NULL;
    size_t size, got = 0;

    *buf_out = NULL;
    memset(res, 0, sizeof(*res));
    if (fstat(fd, &sb) != 0 || sb.st_size < 0) {
        guardian_error(STORE_LOG, "issue journal %s: cannot stat it: %s", name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    size = (size_t)(sb.st_size > JOURNAL_FILE_MAX ? JOURNAL_FILE_MAX : sb.st_size);
    if (sb.st_size > JOURNAL_FILE_MAX) {
        guardian_error(STORE_LOG, "issue journal %s: %lld bytes, more than any journal the store writes: only the "
                                  "first %zu are read",
                       name, (long long)sb.st_size, size);
        res->damaged = true;
    }
    if (expect >= 0 && sb.st_size != expect) {
        guardian_error(STORE_LOG, "issue journal %s holds %lld bytes but this process wrote %lld: someone else "
                                  "changed it",
                       name, (long long)sb.st_size, (long long)expect);
        res->damaged = true;
    }
    buf = malloc(size > 0 ? size : 1);
    if (buf == NULL)
        return CKR_HOST_MEMORY;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            guardian_error(STORE_LOG, "issue journal %s: read failed: %s", name, strerror(errno));
            rv = CKR_GUARDIAN_STORE_FAILED;
            goto out;
        }
        if (n == 0)
            break; /* shorter than fstat said: cut meanwhile */
        got += (size_t)n;
    }
    res->size = got;
    *buf_out = buf;
    return CKR_OK;
out:
    free(buf);
    return rv;
}

/* Fold every whole, valid record of `buf` (res->size bytes, read by
 * journal_read) from byte `from` on into the trail as ISSUE records, and
 * when the journal is damaged its SHA-256 into res->digest; the caller holds
 * the lock and a write transaction.  A record that does not
 * parse, or that the store refuses (a serial never reserved, already settled,
 * or issued with another certificate), makes the journal damaged: the caller
 * declares the holder's open serials lost.  A valid record after a refused
 * one is still folded; nothing after a cut or unparsable one can be found
 * again. */
static CK_RV journal_fold_buf(struct guardian_store *st, const char *name, const uint8_t *buf, size_t from,
                              struct fold_result *res)
{
    size_t size = res->size, off = from;
    unsigned int hl = 0;
    CK_RV rv = CKR_OK;

    while (off < size) {
        struct guardian_journal_record jr;
        uint8_t digest[GUARDIAN_HASH_LEN];
        enum guardian_journal_parse pr;
        struct issue_args a;
        size_t used = 0;

        pr = guardian_journal_parse(buf + off, size - off, &jr, &used);
        if (pr != GUARDIAN_JOURNAL_OK) {
            guardian_error(STORE_LOG, "issue journal %s: %s at byte %zu, after %zu whole records: %zu bytes cannot "
                                      "be read",
                           name, pr == GUARDIAN_JOURNAL_SHORT ? "a cut record" : "an invalid record", off,
                           res->folded, size - off);
            res->damaged = true;
            break;
        }
        if (EVP_Digest(jr.cert, jr.cert_len, digest, &hl, EVP_sha256(), NULL) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        memset(&a, 0, sizeof(a));
        a.oem_id = jr.oem_id;
        a.product_id = jr.product_id;
        a.serial = jr.serial;
        a.time = jr.time;
        a.type = GUARDIAN_AUDIT_ISSUE;
        a.device_id = jr.device_id;
        a.device_id_len = jr.device_id_len;
        a.digest = digest;
        a.cert = jr.cert;
        a.cert_len = jr.cert_len;
        a.replay = true;
        a.operator_name = jr.operator_name;
        rv = settle_tx(st, &a);
        if (rv == CKR_ARGUMENTS_BAD || rv == CKR_GUARDIAN_AUDIT_CORRUPT) {
            /* Refused before it wrote anything (settle_tx logged why). */
            guardian_error(STORE_LOG, "issue journal %s: the record at byte %zu (serial %llu of %s/%s) is refused",
                           name, off, (unsigned long long)jr.serial, jr.oem_id, jr.product_id);
            res->damaged = true;
            rv = CKR_OK;
        } else if (rv != CKR_OK) {
            goto out;
        } else {
            res->folded++;
        }
        off += used;
    }
    /* Only a damaged journal's bytes are named (in its JOURNAL_LOST record):
     * hashing every fold's whole journal cost ~1 ms per block of 1,024. */
    if (res->damaged && (EVP_Digest(buf, size, res->digest, &hl, EVP_sha256(), NULL) != 1 || hl != GUARDIAN_HASH_LEN))
        rv = CKR_GENERAL_ERROR;
out:
    return rv;
}

/* journal_read, then journal_fold_buf from the start: another process's
 * journal (recovery), with the lock and a write transaction held. */
static CK_RV journal_fold_locked(struct guardian_store *st, int fd, const char *name, off_t expect,
                                 struct fold_result *res)
{
    uint8_t *buf = NULL;
    CK_RV rv = journal_read(fd, name, expect, &buf, res);

    if (rv == CKR_OK)
        rv = journal_fold_buf(st, name, buf, 0, res);
    free(buf);
    return rv;
}

/* The pid in a journal's name, or -1. */
static long journal_pid(const char *journal)
{
    const char *p = journal + strlen(JOURNAL_PREFIX);
    char *end = NULL;
    long pid;

    if (strncmp(journal, JOURNAL_PREFIX, strlen(JOURNAL_PREFIX)) != 0)
        return -1;
    pid = strtol(p, &end, 10);
    return end != p && *end == '-' && pid > 0 ? pid : -1;
}

struct open_serial {
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
    uint64_t serial;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
};

/* The serials `holder` reserved that are neither issued, released nor already
 * declared lost, in (OEM, product, serial) order; *list malloc'd. */
static CK_RV holder_open_serials(struct guardian_store *st, sqlite3_int64 holder, struct open_serial **list,
                                 size_t *count)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct open_serial *grown, *o;
    sqlite3_stmt *s = NULL;
    size_t cap = 0;
    int rc;

    *list = NULL;
    *count = 0;
    rv = stmt_get(st, S_ISSUANCE_OPEN_BY_HOLDER, &s);
    if (rv != CKR_OK)
        goto out;
    rc = bind_all(s, "i", holder);
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
            break;
        if (*count == cap) {
            cap = cap != 0 ? 2 * cap : 64;
            grown = realloc(*list, cap * sizeof(**list));
            if (grown == NULL) {
                rv = CKR_HOST_MEMORY;
                goto out;
            }
            *list = grown;
        }
        o = &(*list)[*count];
        if (!column_id(s, 0, o->oem_id) || !column_id(s, 1, o->product_id) ||
            !column_uint(s, 2, INT64_MAX, &o->serial) ||
            !column_blob_exact(s, 3, o->package_id, sizeof(o->package_id))) {
            guardian_error(STORE_LOG, "a reservation row is malformed");
            rv = CKR_GUARDIAN_STORE_FAILED;
            goto out;
        }
        (*count)++;
    }
    rv = map_sqlite(st, rc, "list a holder's open reservations");
out:
    stmt_done(s);
    if (rv != CKR_OK) {
        free(*list);
        *list = NULL;
        *count = 0;
    }
    return rv;
}

/* Declare lost every serial `holder` still holds open: one JOURNAL_LOST record
 * per run of consecutive serials of one product and package (format:
 * docs/audit-format.md), in the caller's write transaction.  The units stay
 * counted; the serials are marked so that no later opener declares them
 * again, and may still be issued by their holder if it is alive after all
 * (its journal deleted under it). */
static CK_RV journal_lost_locked(struct guardian_store *st, sqlite3_int64 holder, const char *journal, int reason,
                                 const uint8_t digest[GUARDIAN_HASH_LEN])
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct open_serial *list = NULL;
    struct guardian_audit_record rec;
    sqlite3_stmt *s = NULL;
    size_t count = 0, name_len = strnlen(journal, GUARDIAN_DEVICE_ID_MAX);
    long pid = journal_pid(journal);
    char process[32];

    rv = holder_open_serials(st, holder, &list, &count);
    if (rv != CKR_OK)
        goto out;
    if (pid > 0)
        snprintf(process, sizeof(process), "process %ld", pid);
    else
        snprintf(process, sizeof(process), "an unknown process");
    for (size_t i = 0, j; i < count; i = j) {
        const struct open_serial *a = &list[i];
        for (j = i + 1; j < count && strcmp(list[j].oem_id, a->oem_id) == 0 &&
                        strcmp(list[j].product_id, a->product_id) == 0 &&
                        memcmp(list[j].package_id, a->package_id, GUARDIAN_PACKAGE_ID_LEN) == 0 &&
                        list[j].serial == a->serial + (j - i);
             j++)
            ;
        rv = record_init(st, &rec, GUARDIAN_AUDIT_JOURNAL_LOST, (int64_t)time(NULL), NULL);
        if (rv != CKR_OK)
            goto out;
        memcpy(rec.oem_id, a->oem_id, sizeof(rec.oem_id));
        memcpy(rec.product_id, a->product_id, sizeof(rec.product_id));
        rec.serial = a->serial;
        memcpy(rec.device_id, journal, name_len);
        rec.device_id_len = name_len;
        if (reason == GUARDIAN_JOURNAL_DAMAGED && digest != NULL)
            memcpy(rec.digest, digest, GUARDIAN_HASH_LEN);
        memcpy(rec.package_id, a->package_id, GUARDIAN_PACKAGE_ID_LEN);
        rec.release_version = (uint32_t)reason;
        rec.authorised_units = (uint64_t)(j - i);
        rv = audit_append(st, &rec);
        if (rv != CKR_OK)
            goto out;
        rv = stmt_step(st, S_ISSUANCE_SET_LOST, &s, NULL, "mark serials lost", "ttiiii", a->oem_id, a->product_id,
                       (sqlite3_int64)a->serial, (sqlite3_int64)(a->serial + (j - i) - 1), holder,
                       (sqlite3_int64)rec.seq);
        if (rv != CKR_OK)
            goto out;
        if ((size_t)sqlite3_changes(st->db) != j - i) {
            guardian_error(STORE_LOG, "reservations changed under a write transaction");
            rv = CKR_GUARDIAN_STORE_FAILED;
            goto out;
        }
        stmt_done(s);
        guardian_error(STORE_LOG, "issue journal of %s lost (%s %s): serials %llu..%llu of %s/%s may have been "
                                  "issued without a record; audit record %llu (JOURNAL_LOST) tells the OEM",
                       process, journal_name_ok(journal) ? journal : "(a malformed journal name)",
                       reason == GUARDIAN_JOURNAL_MISSING ? "is missing" : "is damaged",
                       (unsigned long long)a->serial, (unsigned long long)(a->serial + (j - i) - 1), a->oem_id,
                       a->product_id, (unsigned long long)rec.seq);
    }
    rv = CKR_OK;
out:
    stmt_done(s);
    free(list);
    return rv;
}

static CK_RV holder_forget_locked(struct guardian_store *st, sqlite3_int64 holder)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = stmt_step(st, S_HOLDER_DELETE, &s, NULL, "forget a holder", "i", holder);
    stmt_done(s);
    return rv;
}

CK_RV guardian_store_flush(struct guardian_store *st)
{
    if (st == NULL)
        return CKR_ARGUMENTS_BAD;
    return store_write(st, true, NULL, NULL);
}

struct recover_args {
    int fd;
    const char *name;
    struct fold_result fr;
};

/* A dead process's journal: fold it; if it is damaged, declare its holder's
 * open serials lost; forget the holder (its journal is folded for good). */
static CK_RV recover_tx(struct guardian_store *st, void *ctx)
{
    struct recover_args *a = ctx;
    sqlite3_stmt *s = NULL;
    sqlite3_int64 holder = 0;
    bool row = false;
    CK_RV rv = journal_fold_locked(st, a->fd, a->name, -1, &a->fr);

    if (rv != CKR_OK)
        goto out;
    rv = stmt_step(st, S_HOLDER_BY_JOURNAL, &s, &row, "look up a holder", "t", a->name);
    if (rv != CKR_OK || !row) {
        /* No holder (it never reserved, or a copy under another name): its
         * records are folded, and a damage has no serials to name. */
        goto out;
    }
    holder = sqlite3_column_int64(s, 0);
    stmt_done(s);
    s = NULL;
    if (a->fr.damaged)
        rv = journal_lost_locked(st, holder, a->name, GUARDIAN_JOURNAL_DAMAGED, a->fr.digest);
    if (rv == CKR_OK)
        rv = holder_forget_locked(st, holder);
out:
    stmt_done(s);
    return rv;
}

/* Journals left by processes that ended without closing the store (killed,
 * crashed): their owner's lock is gone, so fold and remove them.  A journal
 * whose lock is held belongs to a live process.  A journal that is a symbolic
 * link or not a regular file of ours refuses the open. */
static CK_RV journal_recover(struct guardian_store *st)
{
    CK_RV rv = CKR_OK;
    struct dirent *e;
    DIR *d;
    int dfd = dup(st->dir_fd);

    if (dfd < 0 || (d = fdopendir(dfd)) == NULL) {
        if (dfd >= 0)
            close(dfd);
        guardian_error(STORE_LOG, "cannot list the state directory %s: %s", st->dir, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    while (rv == CKR_OK && (e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        struct recover_args ra;
        CK_RV frv;
        int fd = -1;

        if (strncmp(e->d_name, JOURNAL_PREFIX, strlen(JOURNAL_PREFIX)) != 0 || nl <= strlen(JOURNAL_SUFFIX) ||
            strcmp(e->d_name + nl - strlen(JOURNAL_SUFFIX), JOURNAL_SUFFIX) != 0)
            continue;
        rv = state_file_open(st, e->d_name, O_RDWR, &fd);
        if (rv != CKR_OK || fd < 0)
            continue; /* refused (rv says so), or gone meanwhile */
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd); /* a live process's */
            continue;
        }
        memset(&ra, 0, sizeof(ra));
        ra.fd = fd;
        ra.name = e->d_name;
        frv = store_write(st, true, recover_tx, &ra);
        if (frv == CKR_OK) {
            if (ftruncate(fd, 0) != 0 || unlinkat(st->dir_fd, e->d_name, 0) != 0)
                guardian_warn(STORE_LOG, "issue journal %s: folded but not removed: %s", e->d_name, strerror(errno));
            if (ra.fr.folded > 0)
                guardian_info(STORE_LOG, "recovered %zu ISSUE records from %s (its process ended without closing "
                                         "the store)",
                              ra.fr.folded, e->d_name);
        } else {
            guardian_error(STORE_LOG, "issue journal %s: not recovered; it stays for the next opener", e->d_name);
        }
        close(fd);
    }
    closedir(d);
    return rv;
}

struct orphan_args {
    sqlite3_int64 id;
    char journal[NAME_MAX + 1];
};

/* journal_orphans' transaction: the holder is still recorded and its journal
 * still missing (checked again under the write lock: the process that folds
 * a journal forgets its holder before it removes the file). */
static CK_RV orphan_tx(struct guardian_store *st, void *ctx)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];
    struct orphan_args *a = ctx;
    sqlite3_stmt *s = NULL;
    struct stat sb;
    bool row = false;
    CK_RV rv = stmt_step(st, S_HOLDER_GET, &s, &row, "look up a holder", "i", a->id);

    stmt_done(s);
    if (rv != CKR_OK || !row)
        return rv;
    if (journal_name_ok(a->journal) && fstatat(st->dir_fd, a->journal, &sb, AT_SYMLINK_NOFOLLOW) == 0)
        return CKR_OK;
    rv = journal_lost_locked(st, a->id, a->journal, GUARDIAN_JOURNAL_MISSING, zeros);
    if (rv == CKR_OK)
        rv = holder_forget_locked(st, a->id);
    return rv;
}

/* Holders whose journal is gone although no process folded it for the last
 * time: someone deleted it (or renamed it away).  Their open serials may have
 * been issued, so each gets a JOURNAL_LOST record. */
static CK_RV journal_orphans(struct guardian_store *st)
{
    struct orphan_args *list = NULL, *grown;
    size_t count = 0, cap = 0;
    sqlite3_stmt *s = NULL;
    CK_RV rv;
    int rc = SQLITE_OK;

    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_get(st, S_HOLDERS_ALL, &s);
    while (rv == CKR_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const unsigned char *name = sqlite3_column_text(s, 1);
        if (count == cap) {
            cap = cap != 0 ? 2 * cap : 16;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                rv = CKR_HOST_MEMORY;
                break;
            }
            list = grown;
        }
        list[count].id = sqlite3_column_int64(s, 0);
        snprintf(list[count].journal, sizeof(list[count].journal), "%s", name != NULL ? (const char *)name : "");
        count++;
    }
    if (rv == CKR_OK)
        rv = map_sqlite(st, rc, "list the holders");
    stmt_done(s);
    store_leave(st);

    for (size_t i = 0; rv == CKR_OK && i < count; i++) {
        struct stat sb;
        if (list[i].id == st->holder_id ||
            (journal_name_ok(list[i].journal) &&
             fstatat(st->dir_fd, list[i].journal, &sb, AT_SYMLINK_NOFOLLOW) == 0))
            continue; /* a live process's, or a dead one's the next opener folds */
        if (store_write(st, true, orphan_tx, &list[i]) != CKR_OK)
            guardian_error(STORE_LOG, "the missing issue journal %s is not recorded yet; the next opener retries",
                           list[i].journal);
    }
    free(list);
    return rv;
}

static CK_RV journal_open(struct guardian_store *st)
{
    struct timespec ts;
    char tmp[NAME_MAX + 1];
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    n = snprintf(st->journal_name, sizeof(st->journal_name), JOURNAL_PREFIX "%ld-%lld%09ld" JOURNAL_SUFFIX,
                 (long)st->pid, (long long)ts.tv_sec, (long)ts.tv_nsec);
    if (n < 0 || (size_t)n >= sizeof(st->journal_name) || !journal_name_ok(st->journal_name))
        return CKR_GENERAL_ERROR;
    st->journal_buf = malloc(GUARDIAN_JOURNAL_RECORD_MAX);
    if (st->journal_buf == NULL)
        return CKR_HOST_MEMORY;
    /* Locked under a name recovery does not look at, then renamed: no other
     * process can ever see this journal unlocked and take it for a dead one. */
    n = snprintf(tmp, sizeof(tmp), "%s.new", st->journal_name);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return CKR_GENERAL_ERROR;
    st->journal_fd = openat(st->dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
                            STORE_FILE_MODE);
    if (st->journal_fd < 0 || fchmod(st->journal_fd, STORE_FILE_MODE) != 0 ||
        flock(st->journal_fd, LOCK_EX | LOCK_NB) != 0 || renameat(st->dir_fd, tmp, st->dir_fd, st->journal_name) != 0) {
        guardian_error(STORE_LOG, "cannot create the issue journal in %s: %s", st->dir, strerror(errno));
        if (st->journal_fd >= 0) {
            close(st->journal_fd);
            unlinkat(st->dir_fd, tmp, 0);
        }
        st->journal_fd = -1;
        return CKR_GUARDIAN_STORE_FAILED;
    }
    /* The journal's name made durable before any reservation can name it as
     * its holder: a power loss must not make it look deleted. */
    if (fsync(st->dir_fd) != 0)
        guardian_warn(STORE_LOG, "cannot sync the state directory %s: %s", st->dir, strerror(errno));
    st->journal_size = 0;
    return CKR_OK;
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
static CK_RV device_journaled_jlocked(struct guardian_store *st, const char *oem_id, const char *product_id,
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
static void device_unjournal_jlocked(struct guardian_store *st, struct device_entry *e)
{
    if (e->journaled)
        st->devices_journaled--;
    e->journaled = false;
    free(e->cert);
    e->cert = NULL;
    device_drop_jlocked(st, e);
}

/* The journal's records are committed: the index in the database has them. */
static void devices_forget_journaled_jlocked(struct guardian_store *st)
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

/* Append one ISSUE to the journal, under journal_lock alone (not the
 * store's lock: a write transaction of another thread does not hold it up). */
static CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                            const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len)
{
    struct device_entry *entry = NULL;
    size_t len, done = 0;
    CK_RV rv;

    if (GUARDIAN_UNLIKELY(!same_process(st)))
        return CKR_GUARDIAN_STORE_FAILED;
    pthread_mutex_lock(&st->journal_lock);
    if (st->operator_invalid) {
        guardian_error(STORE_LOG, "nothing is recorded while the operator name last set is invalid: set a valid "
                                  "one (guardian_store_set_operator)");
        pthread_mutex_unlock(&st->journal_lock);
        return CKR_ARGUMENTS_BAD;
    }
    len = guardian_journal_encode(st->journal_buf, GUARDIAN_JOURNAL_RECORD_MAX, oem_id, product_id, serial,
                                  (int64_t)time(NULL), device_id, device_id_len, cert, cert_len, st->operator_name);
    rv = len > 0 ? CKR_OK : CKR_GENERAL_ERROR;
    /* Its place in the device index first: a certificate in the journal that
     * a re-ask could not find would be issued again. */
    if (rv == CKR_OK)
        rv = device_journaled_jlocked(st, oem_id, product_id, device_id, device_id_len, serial, cert, cert_len, &entry);
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
    else if (entry != NULL)
        device_unjournal_jlocked(st, entry);
    pthread_mutex_unlock(&st->journal_lock);
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
    sqlite3_stmt *s = NULL;
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
    rv = audit_head_get(st, &seq, b + 16);
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

/* ---- the audit trail: retired production CA keys ----------------------------------------- */

struct retire_args {
    const char *oem_id, *product_id;
    uint32_t release;
    int64_t now;
    struct guardian_audit_record rec;
    bool already;
};

static const char retire_package_sql[] =
    "SELECT k.package_id, COALESCE(p.package_id = k.package_id, 0) FROM packages k "
    "LEFT JOIN products p ON p.oem_id = k.oem_id AND p.product_id = k.product_id "
    "WHERE k.oem_id = ?1 AND k.product_id = ?2 AND k.release_version = ?3";
static const char retire_record_sql[] = "SELECT seq, time, operator, hash FROM audit WHERE type = ?1 AND package_id = ?2 "
                                        "ORDER BY seq LIMIT 1";

static CK_RV retire_tx(struct guardian_store *st, void *ctx)
{
    struct retire_args *a = ctx;
    sqlite3_stmt *s = NULL;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    uint64_t current = 0, seq = 0, t = 0;
    CK_RV rv = CKR_GUARDIAN_AUDIT_CORRUPT;
    int rc = sqlite3_prepare_v2(st->db, retire_package_sql, -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 1, a->oem_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 2, a->product_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 3, (sqlite3_int64)a->release);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        guardian_error(STORE_LOG, "no release %u of %s/%s was imported", (unsigned)a->release, a->oem_id,
                       a->product_id);
        rv = CKR_GUARDIAN_PRODUCT_UNKNOWN;
        goto out;
    }
    if (rc != SQLITE_ROW) {
        rv = map_sqlite(st, rc, "read the package to retire");
        goto out;
    }
    if (!column_blob_exact(s, 0, package_id, sizeof(package_id)) || !column_uint(s, 1, 1, &current))
        goto out;
    if (current) {
        guardian_error(STORE_LOG, "release %u of %s/%s is the installed one: its production CA key is not retired",
                       (unsigned)a->release, a->oem_id, a->product_id);
        rv = CKR_GUARDIAN_RELEASE_CURRENT;
        goto out;
    }
    sqlite3_finalize(s);
    s = NULL;
    rc = sqlite3_prepare_v2(st->db, retire_record_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 1, GUARDIAN_AUDIT_RETIRE);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 2, package_id, sizeof(package_id), SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rv = map_sqlite(st, rc, "look for the release's RETIRE record");
        goto out;
    }
    memset(&a->rec, 0, sizeof(a->rec));
    if (rc == SQLITE_ROW) {
        const unsigned char *op = sqlite3_column_text(s, 2);
        if (!column_uint(s, 0, INT64_MAX, &seq) || !column_uint(s, 1, INT64_MAX, &t) ||
            !column_blob_exact(s, 3, a->rec.hash, sizeof(a->rec.hash)))
            goto out;
        a->already = true;
        a->rec.type = GUARDIAN_AUDIT_RETIRE;
        a->rec.seq = seq;
        a->rec.time = (int64_t)t;
        snprintf(a->rec.operator_name, sizeof(a->rec.operator_name), "%s", op != NULL ? (const char *)op : "");
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
    sqlite3_finalize(s);
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
static CK_RV device_from_row(sqlite3_stmt *s, struct guardian_device_cert *d,
                             uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN])
{
    uint64_t outcome = 0;
    size_t n = 0;

    memset(d, 0, sizeof(*d));
    if (!column_uint(s, 0, INT64_MAX, &d->serial) || !column_uint(s, 2, GUARDIAN_OUTCOME_SCRAPPED, &outcome) ||
        (sqlite3_column_type(s, 1) != SQLITE_NULL &&
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
    sqlite3_stmt *s = NULL;
    CK_RV rv;
    int rc;

    if (st->rdb == NULL) {
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
    pthread_mutex_lock(&st->read_lock);
    s = st->rdb_device_get;
    rc = bind_all(s, "ttb", oem_id, product_id, device_id, (int)device_id_len);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    *found = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW)
        rv = device_from_row(s, d, NULL);
    else if (rc == SQLITE_DONE)
        rv = CKR_OK;
    else {
        guardian_error(STORE_LOG, "look up a device: %s (SQLite %d): %s", sqlite3_errstr(rc), rc,
                       sqlite3_errmsg(st->rdb));
        rv = CKR_GUARDIAN_STORE_FAILED;
    }
    stmt_done(s);
    pthread_mutex_unlock(&st->read_lock);
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

/* The release of a package (for the records that name it). */
static CK_RV package_release_locked(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                    uint32_t *release)
{
    sqlite3_stmt *s = NULL;
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
    sqlite3_stmt *s = NULL;
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
    sqlite3_stmt *s = NULL;
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
                   (sqlite3_int64)a->serial);
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
                   a->product_id, a->device_id, (int)a->device_id_len, (sqlite3_int64)a->serial,
                   (sqlite3_int64)a->issue_seq, has ? (const void *)h : NULL, has ? GUARDIAN_HASH_LEN : 0,
                   (sqlite3_int64)ra->old_serial);
    if (rv == CKR_OK && sqlite3_changes(st->db) != 1)
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
    sqlite3_stmt *s = NULL;
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
                   a->device_id, (int)a->device_id_len, (sqlite3_int64)a->outcome);
    if (rv == CKR_OK && sqlite3_changes(st->db) != 1)
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
