/*
 * engine_sqlite.c — the store's database engine: SQLite.  The only file of
 * store/ that includes <sqlite3.h>; the concerns reach the database through
 * store_internal.h's engine interface (named statements, stmt_step and the
 * column readers, sq_tx_begin/sq_tx_end), which a second engine would implement.
 *
 * What is here: the connection's configuration (busy timeout, defensive mode,
 * foreign keys, page size, WAL, checkpoint interval, the two durabilities),
 * the schema and its migrations, the SQL text of every named statement and
 * its cache, binding and column reading, transactions, the read-only
 * connection of the device lookups, and map_sqlite(): the one place SQLite
 * result codes become CKR codes (the log line names the SQLite error, never
 * the data).
 */
#include "store_internal.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(store_int) == sizeof(sqlite3_int64), "store_int is SQLite's integer");

/* A statement as the concerns hold it: its engine first (engine.c). */
struct store_stmt {
    const struct engine_ops *ops;
    sqlite3_stmt *q;
};

struct store_db {
    sqlite3 *db;
    struct store_stmt w[S_COUNT]; /* the handles of stmt[] */
    struct store_stmt rw;         /* the handle of rdb_device_get */
    sqlite3_stmt *stmt[S_COUNT];
    bool sync_full; /* the connection's synchronous setting is FULL */
    /* The second, read-only connection (file-backed stores) and its one
     * statement, S_DEVICE_GET (store_internal.h, sq_reader_device_get). */
    sqlite3 *rdb;
    sqlite3_stmt *rdb_device_get;
};

/* The statement behind the opaque handle. */
#define SQ(s) ((s)->q)

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
#define WAL_RETRY_MS 10

/* ---- schema and migrations ---------------------------------------------------- */

/* 0 -> 1, version 1: the whole schema.  Integers are SQLite's signed
 * 64-bit; the API's uint64_t values are kept <= INT64_MAX.  The CHECK constraints are the last line of defence
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

/* 4 -> 5: nothing to change in the tables; from now on the trail may hold
 * EXPORT records (type 7, store.h), which a module of schema 4 would read as
 * a corrupt trail.  The version says so first: that module refuses the
 * database ("state schema version 5 is not supported") instead of going on
 * producing on a trail it could no longer export (it would call it corrupt). */
static const char *const schema_v5 = NULL;

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

/* After schema_v6: the index built from the issued serials in the trail. */
static CK_RV index_devices(struct guardian_store *st, sqlite3 *db)
{
    sqlite3_stmt *rd = NULL, *wr = NULL;
    size_t n = 0, no_key = 0;
    CK_RV rv;
    int rc = sqlite3_prepare_v2(db,
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

/* Schema 8: the members of group packages that imported them (registry.c):
 * one row per member, so that each imports once and all share the package's
 * one row and allowance.  A module of schema 7 refuses the database instead
 * of reading JOIN records (type 12) it does not know. */
static const char schema_v8[] =
    "CREATE TABLE package_members ("
    "  package_id BLOB    NOT NULL REFERENCES packages (package_id),"
    "  guardian   BLOB    NOT NULL CHECK (length(guardian) = 32),"
    "  import_seq INTEGER NOT NULL CHECK (import_seq >= 1),"
    "  PRIMARY KEY (package_id, guardian)"
    ") WITHOUT ROWID;";

/* Schema 9: every record names the Guardian that wrote it (audit encoding 3,
 * audit.guardian: the SHA-256 of its certificate A, or empty for none).  The
 * audit table is rebuilt because its CHECK knew encodings 1 and 2 only; the
 * rows are copied as they are (their encodings and hashes unchanged), so the
 * chain verifies as before.  A module of schema 8 refuses the database
 * instead of writing encoding-2 records after encoding-3 ones (the verifier
 * calls that a downgrade). */
static const char schema_v9[] =
    "CREATE TABLE audit_v9 ("
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
    "  hash             BLOB    NOT NULL,"
    "  operator         TEXT    NOT NULL DEFAULT '' CHECK (length(CAST(operator AS BLOB)) <= 32),"
    "  encoding         INTEGER NOT NULL DEFAULT 1,"
    "  guardian         BLOB    NOT NULL DEFAULT x'',"
    "  CHECK (encoding IN (1, 2, 3) AND (encoding >= 2 OR operator = '') AND"
    "         length(guardian) IN (0, 32) AND (encoding = 3 OR length(guardian) = 0))"
    ");"
    "INSERT INTO audit_v9 (seq, type, time, oem_id, product_id, serial, device_id, digest, package_id,"
    "  release_version, authorised_units, prev_hash, hash, operator, encoding)"
    "  SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, release_version,"
    "  authorised_units, prev_hash, hash, operator, encoding FROM audit;"
    "DROP TABLE audit;"
    "ALTER TABLE audit_v9 RENAME TO audit;";

struct migration {
    int to_version;
    const char *sql;  /* the schema's change (NULL: none, only the version) */
    const char *what; /* for the error message */
    /* After `sql`, inside the same write transaction: data to rewrite (NULL: none). */
    CK_RV (*then)(struct guardian_store *st, sqlite3 *db);
};

/* Append only: entry N turns a version N-1 database into version N. */
static const struct migration migrations[] = {
    {1, schema_v1, "create the schema (version 1)", NULL},
    {2, schema_v2, "migrate the schema to version 2", NULL},
    {3, schema_v3, "migrate the schema to version 3", NULL},
    {4, schema_v4, "migrate the schema to version 4", NULL},
    {5, schema_v5, "migrate the schema to version 5", NULL},
    {6, schema_v6, "migrate the schema to version 6 (the device index)", index_devices},
    {7, schema_v7, "migrate the schema to version 7 (the OEM root ledger)", NULL},
    {8, schema_v8, "migrate the schema to version 8 (the members of group packages)", NULL},
    {9, schema_v9, "migrate the schema to version 9 (the Guardian of every record)", NULL},
};
#define STORE_SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

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
    [S_MEMBER_SEEN] = "SELECT 1 FROM package_members WHERE package_id = ?1 AND guardian = ?2",
    [S_MEMBER_INSERT] = "INSERT INTO package_members (package_id, guardian, import_seq) VALUES (?1, ?2, ?3)",
    [S_PRODUCT_IS_PACKAGE] = "SELECT 1 FROM products WHERE oem_id = ?1 AND product_id = ?2 AND package_id = ?3",
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
                       "package_id, release_version, authorised_units, prev_hash, hash, operator, encoding, "
                       "guardian) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    [S_AUDIT_PAGE] = "SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, "
                     "release_version, authorised_units, prev_hash, hash, operator, encoding, guardian "
                     "FROM audit WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
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
    /* The token's anchor (guardian_store_anchor_get, _check): every package in
     * import order with its product's next serial if installed; one package
     * with its product's; the hash of the anchored record. */
    [S_ANCHOR_ENTRIES] = "SELECT k.package_id, COALESCE(p.next_serial, 0) FROM packages k "
                         "LEFT JOIN products p ON p.package_id = k.package_id ORDER BY k.import_seq",
    [S_ANCHOR_PACKAGE] = "SELECT 0, COALESCE(p.next_serial, 0), k.oem_id, k.product_id, k.release_version, "
                         "(SELECT next_serial FROM products q WHERE q.oem_id = k.oem_id AND q.product_id = k.product_id) "
                         "FROM packages k LEFT JOIN products p ON p.package_id = k.package_id WHERE k.package_id = ?1",
    [S_AUDIT_HASH_AT] = "SELECT hash FROM audit WHERE seq = ?1",
    /* Retiring a release (guardian_store_record_retire): the package and
     * whether it is the installed one; its first RETIRE record. */
    [S_RETIRE_PACKAGE] = "SELECT k.package_id, COALESCE(p.package_id = k.package_id, 0) FROM packages k "
                         "LEFT JOIN products p ON p.oem_id = k.oem_id AND p.product_id = k.product_id "
                         "WHERE k.oem_id = ?1 AND k.product_id = ?2 AND k.release_version = ?3",
    [S_RETIRE_RECORD] = "SELECT seq, time, operator, hash FROM audit WHERE type = ?1 AND package_id = ?2 "
                        "ORDER BY seq LIMIT 1",
    /* The ledger of enrolled OEM roots (roots.c, schema 7). */
    [S_ROOT_IDS_GET] = "SELECT oem_ids FROM roots WHERE sha256 = ?1",
    [S_ROOT_INSERT] = "INSERT INTO roots (sha256, der, oem_ids, enrolled_at, operator, enrol_seq) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_ROOT_DELETE] = "DELETE FROM roots WHERE sha256 = ?1",
    [S_ROOTS_ALL] = "SELECT sha256, der, oem_ids, enrolled_at, operator, enrol_seq FROM roots "
                    "ORDER BY enrol_seq, sha256",
};

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
                       st != NULL && st->db != NULL && st->db->db != NULL ? sqlite3_errmsg(st->db->db) : "no connection");
        return CKR_GUARDIAN_STORE_FAILED;
    }
}

/* ---- statements ---------------------------------------------------------------- */

static CK_RV stmt_get(struct guardian_store *st, enum stmt_id id, sqlite3_stmt **out)
{
    sqlite3_stmt **cached = &st->db->stmt[id];
    int rc;

    if (*cached == NULL) {
        rc = sqlite3_prepare_v3(st->db->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, cached, NULL);
        if (rc != SQLITE_OK)
            return map_sqlite(st, rc, "prepare");
    }
    *out = *cached;
    return CKR_OK;
}

/* store_internal.h */
static void sq_stmt_done(struct store_stmt *s)
{
    if (s != NULL && SQ(s) != NULL) {
        sqlite3_reset(SQ(s));
        sqlite3_clear_bindings(SQ(s));
    }
}

/* The same, on a statement of this file. */
static void sq_reset(sqlite3_stmt *q)
{
    if (q != NULL) {
        sqlite3_reset(q);
        sqlite3_clear_bindings(q);
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
    sq_reset(s);
    return rv;
}

/* bind_all: binds parameters 1, 2, ... of s, one per character of `types`, to
 * the arguments that follow it (bind_va: to those in ap), as stmt_step
 * describes them (store_internal.h).  Returns the first failing SQLite code,
 * or SQLITE_OK. */
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
            rc = sqlite3_bind_int64(s, i, va_arg(ap, store_int));
            break;
        case 'N': {
            sqlite3_int64 v = va_arg(ap, store_int);
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

/* store_internal.h */
static CK_RV sq_stmt_step(struct guardian_store *st, enum stmt_id id, struct store_stmt **s, bool *row,
                          const char *what, const char *types, va_list ap)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *q = NULL;
    int rc;

    rv = stmt_get(st, id, &q);
    st->db->w[id].q = q;
    *s = q != NULL ? &st->db->w[id] : NULL;
    if (rv != CKR_OK)
        goto out;
    rc = bind_va(q, types, ap);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
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

/* store_internal.h */
static CK_RV sq_stmt_next(struct guardian_store *st, struct store_stmt *s, bool *row, const char *what)
{
    int rc = sqlite3_step(SQ(s));

    *row = rc == SQLITE_ROW;
    return *row ? CKR_OK : map_sqlite(st, rc, what);
}

static int sq_changes(struct guardian_store *st)
{
    return sqlite3_changes(st->db->db);
}

static store_int sq_last_insert_id(struct guardian_store *st)
{
    return sqlite3_last_insert_rowid(st->db->db);
}

/* ---- transactions ---------------------------------------------------------------- */

/* BEGIN IMMEDIATE, with the durability the transaction's COMMIT needs (see
 * GUARDIAN_STORE_SYNCHRONOUS above); the pragma runs only when it changes. */
static CK_RV sq_tx_begin(struct guardian_store *st, bool durable)
{
    if (st->db->sync_full != durable) {
        CK_RV rv = stmt_run(st, durable ? S_SYNC_FULL : S_SYNC_NORMAL, "set synchronous");
        if (rv != CKR_OK)
            return rv;
        st->db->sync_full = durable;
    }
    return stmt_run(st, S_BEGIN, "begin transaction");
}

/* Commit when rv is CKR_OK, roll back otherwise; returns the outcome. */
static CK_RV sq_tx_end(struct guardian_store *st, CK_RV rv)
{
    if (rv == CKR_OK) {
        rv = stmt_run(st, S_COMMIT, "commit");
        if (rv == CKR_OK)
            return CKR_OK;
    }
    /* SQLite may already have rolled back on its own (IOERR, FULL, ...). */
    if (!sqlite3_get_autocommit(st->db->db))
        (void)stmt_run(st, S_ROLLBACK, "rollback");
    return rv;
}

/* ---- reading columns ------------------------------------------------------------- */

static bool sq_column_id(struct store_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1])
{
    const unsigned char *text = sqlite3_column_text(SQ(s), col);
    int n = sqlite3_column_bytes(SQ(s), col);

    if (text == NULL || n < 0 || n > GUARDIAN_ID_MAX || memchr(text, '\0', (size_t)n) != NULL)
        return false;
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    return true;
}

/* An operator's name (TEXT, guardian_operator_name_ok, "" allowed). */
static bool sq_column_operator(struct store_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1])
{
    const unsigned char *text = sqlite3_column_text(SQ(s), col);
    int n = sqlite3_column_bytes(SQ(s), col);

    if (sqlite3_column_type(SQ(s), col) != SQLITE_TEXT || text == NULL || n < 0 || n > GUARDIAN_OPERATOR_MAX ||
        memchr(text, '\0', (size_t)n) != NULL)
        return false;
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    return guardian_operator_name_ok(out);
}

/* A BLOB of 0..max bytes; the length goes to *len. */
static bool sq_column_blob(struct store_stmt *s, int col, void *out, size_t max, size_t *len)
{
    const void *blob;
    int n;

    if (sqlite3_column_type(SQ(s), col) != SQLITE_BLOB)
        return false;
    blob = sqlite3_column_blob(SQ(s), col);
    n = sqlite3_column_bytes(SQ(s), col);
    if (n < 0 || (size_t)n > max || (n > 0 && blob == NULL))
        return false;
    if (n > 0)
        memcpy(out, blob, (size_t)n);
    *len = (size_t)n;
    return true;
}

/* A copy of a BLOB column in a fresh malloc'd buffer; *out NULL and *len 0
 * when the column is NULL or empty.  CKR_HOST_MEMORY if the copy fails. */
static CK_RV sq_column_blob_dup(struct store_stmt *s, int col, uint8_t **out, size_t *len)
{
    const void *blob = sqlite3_column_blob(SQ(s), col);
    int n = sqlite3_column_bytes(SQ(s), col);

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

static bool sq_column_uint(struct store_stmt *s, int col, uint64_t max, uint64_t *out)
{
    sqlite3_int64 v;

    if (sqlite3_column_type(SQ(s), col) != SQLITE_INTEGER)
        return false;
    v = sqlite3_column_int64(SQ(s), col);
    if (v < 0 || (uint64_t)v > max)
        return false;
    *out = (uint64_t)v;
    return true;
}

/* store_internal.h */
static bool sq_col_is_null(struct store_stmt *s, int col)
{
    return sqlite3_column_type(SQ(s), col) == SQLITE_NULL;
}

static bool sq_col_is_int(struct store_stmt *s, int col)
{
    return sqlite3_column_type(SQ(s), col) == SQLITE_INTEGER;
}

static store_int sq_col_int(struct store_stmt *s, int col)
{
    return sqlite3_column_int64(SQ(s), col);
}

static const char *sq_col_text(struct store_stmt *s, int col)
{
    return (const char *)sqlite3_column_text(SQ(s), col);
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
    sq_reset(s);
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

    rv = sq_tx_begin(st, true);
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
        rv = migrations[i].sql == NULL
                 ? CKR_OK
                 : map_sqlite(st, sqlite3_exec(st->db->db, migrations[i].sql, NULL, NULL, NULL), migrations[i].what);
        if (rv == CKR_OK && migrations[i].then != NULL)
            rv = migrations[i].then(st, st->db->db);
        if (rv != CKR_OK)
            goto out;
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", migrations[i].to_version);
        rc = sqlite3_exec(st->db->db, sql, NULL, NULL, NULL);
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
        rv = sq_tx_end(st, rv);
    return rv;
}

static CK_RV set_journal_wal(struct guardian_store *st)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    sqlite3_stmt *s = NULL;
    const unsigned char *mode;
    int rc;

    rc = sqlite3_prepare_v2(st->db->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
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


/* ---- open and close ---------------------------------------------------------------- */

static bool sq_usable(void)
{
    if (sqlite3_threadsafe())
        return true;
    guardian_error(STORE_LOG, "the SQLite library was built without thread support");
    return false;
}

/* store_internal.h */
static CK_RV sq_open(struct guardian_store *st, const char *path, bool memory)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    int fk = 0, rc;

    st->db = calloc(1, sizeof(*st->db));
    if (st->db == NULL)
        return CKR_HOST_MEMORY;
    for (int i = 0; i < S_COUNT; i++)
        st->db->w[i].ops = &engine_sqlite_ops;
    st->db->rw.ops = &engine_sqlite_ops;
    rc = sqlite3_open_v2(path, &st->db->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                             (memory ? SQLITE_OPEN_MEMORY : SQLITE_OPEN_NOFOLLOW),
                         NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, st->db->db != NULL ? sqlite3_extended_errcode(st->db->db) : rc, "open the state database");
        goto out;
    }
    sqlite3_extended_result_codes(st->db->db, 1);
    if ((rc = sqlite3_busy_timeout(st->db->db, GUARDIAN_STORE_BUSY_TIMEOUT_MS)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(st->db->db, SQLITE_DBCONFIG_ENABLE_FKEY, 1, &fk)) != SQLITE_OK) {
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
        rc = sqlite3_exec(st->db->db, "PRAGMA page_size = " GUARDIAN_STORE_PAGE_SIZE, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            rv = map_sqlite(st, rc, "set the page size");
            goto out;
        }
        rv = set_journal_wal(st);
        if (rv != CKR_OK)
            goto out;
        rc = sqlite3_wal_autocheckpoint(st->db->db, GUARDIAN_STORE_WAL_CHECKPOINT_PAGES);
        if (rc != SQLITE_OK) {
            rv = map_sqlite(st, rc, "set the checkpoint interval");
            goto out;
        }
    }
    rc = sqlite3_exec(st->db->db, "PRAGMA synchronous = " GUARDIAN_STORE_SYNCHRONOUS, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        rv = map_sqlite(st, rc, "set synchronous");
        goto out;
    }
    st->db->sync_full = true;
    rv = migrate(st);
out:
    return rv;
}

/* store_internal.h: the device lookups' read-only connection. */
static CK_RV sq_reader_open(struct guardian_store *st, const char *path)
{
    int rc = sqlite3_open_v2(path, &st->db->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
                             NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(st->db->rdb, GUARDIAN_STORE_BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(st->db->rdb, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(st->db->rdb, DEVICE_GET_SQL, -1, SQLITE_PREPARE_PERSISTENT, &st->db->rdb_device_get,
                                NULL);
    if (rc != SQLITE_OK) {
        guardian_error(STORE_LOG, "open the state database for reading: %s (SQLite %d)", sqlite3_errstr(rc), rc);
        return CKR_GUARDIAN_STORE_FAILED;
    }
    return CKR_OK;
}

/* store_internal.h */
static void sq_close(struct guardian_store *st)
{
    struct store_db *d = st->db;

    if (d == NULL)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(d->stmt[i]);
    sqlite3_finalize(d->rdb_device_get);
    if (d->rdb != NULL)
        sqlite3_close(d->rdb);
    if (d->db != NULL && sqlite3_close(d->db) != SQLITE_OK)
        (void)map_sqlite(st, sqlite3_errcode(d->db), "close");
    free(d);
    st->db = NULL;
}

/* ---- the read-only connection -------------------------------------------------------- */

static bool sq_has_reader(const struct guardian_store *st)
{
    return st->db->rdb != NULL;
}

/* store_internal.h */
static CK_RV sq_reader_device_get(struct guardian_store *st, struct store_stmt **s, bool *found, const char *oem_id,
                        const char *product_id, const uint8_t *device_id, size_t device_id_len)
{
    sqlite3_stmt *q;
    int rc;

    pthread_mutex_lock(&st->read_lock);
    q = st->db->rdb_device_get;
    st->db->rw.q = q;
    *s = &st->db->rw;
    rc = bind_all(q, "ttb", oem_id, product_id, device_id, (int)device_id_len);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    *found = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return CKR_OK;
    guardian_error(STORE_LOG, "look up a device: %s (SQLite %d): %s", sqlite3_errstr(rc), rc,
                   sqlite3_errmsg(st->db->rdb));
    return CKR_GUARDIAN_STORE_FAILED;
}

static void sq_reader_done(struct guardian_store *st, struct store_stmt *s)
{
    sq_stmt_done(s);
    pthread_mutex_unlock(&st->read_lock);
}

static void sq_location(const struct guardian_store *st, char *out, size_t cap)
{
    if (st->dir[0] == '\0')
        snprintf(out, cap, ":memory:");
    else
        snprintf(out, cap, "%s/guardian.db", st->dir);
}

const struct engine_ops engine_sqlite_ops = {
    .location = sq_location,
    .name = "sqlite",
    .usable = sq_usable,
    .open = sq_open,
    .reader_open = sq_reader_open,
    .close = sq_close,
    .tx_begin = sq_tx_begin,
    .tx_end = sq_tx_end,
    .stmt_step = sq_stmt_step,
    .stmt_next = sq_stmt_next,
    .stmt_done = sq_stmt_done,
    .changes = sq_changes,
    .last_insert_id = sq_last_insert_id,
    .column_id = sq_column_id,
    .column_operator = sq_column_operator,
    .column_blob = sq_column_blob,
    .column_blob_dup = sq_column_blob_dup,
    .column_uint = sq_column_uint,
    .col_is_null = sq_col_is_null,
    .col_is_int = sq_col_is_int,
    .col_int = sq_col_int,
    .col_text = sq_col_text,
    .has_reader = sq_has_reader,
    .reader_device_get = sq_reader_device_get,
    .reader_done = sq_reader_done,
};
