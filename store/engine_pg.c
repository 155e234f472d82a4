/*
 * engine_pg.c — the store's second database engine: PostgreSQL (15) through
 * libpq, selected by the configuration (`store = postgresql`,
 * docs/configuration.md).  The only file of store/ that includes <libpq-fe.h>;
 * it implements the engine part of store_internal.h with the same named
 * statements (enum stmt_id) as engine_sqlite.c, in PostgreSQL's dialect.
 *
 * How it keeps store/README.md's five guarantees on a server shared by
 * several stations (processes, hosts):
 *  - the write lock at BEGIN: every write transaction starts with
 *    pg_advisory_xact_lock(GUARDIAN_PG_LOCK_KEY), one lock for the whole
 *    database, taken before the transaction's first read and held until its
 *    COMMIT or ROLLBACK: writers are serialised exactly like SQLite's BEGIN
 *    IMMEDIATE, across connections, processes and hosts.  The transaction is
 *    READ COMMITTED, so every statement after the lock sees every commit of
 *    the writers before it (PostgreSQL ends a transaction's visibility before
 *    it releases its locks).  No serialisation failures, no retries;
 *  - durability: synchronous_commit = on for durable transactions (COMMIT
 *    returns once the commit is flushed to the server's WAL, and to a
 *    synchronous standby if one is configured), `local` for the others (the
 *    server's own WAL flush, not waiting for a standby): both survive a crash
 *    of the server; `off` is never used, since a server crash could then
 *    lose an ISSUE folded from a journal already emptied;
 *  - the schema's keys and CHECK constraints are those of SQLite's schema 7;
 *  - reads outside a transaction (the anchor, the exports' pages) run one
 *    statement each in autocommit, as on SQLite.
 *
 * Errors: a server that is gone (stopped, crashed, unreachable) or refuses
 * the connection (authentication, "starting up", too many clients) gives
 * CKR_GUARDIAN_STORE_UNREACHABLE and one log line naming the server (host,
 * port, database, user: never the password); connect_timeout bounds the
 * connection, statement_timeout and lock_timeout every statement.  The
 * connection is re-established at the next call (outside a transaction: a
 * transaction that lost its connection is over).  A COMMIT whose connection
 * broke may or may not have committed: the caller sees the error; a
 * reservation so lost stays counted (never granted twice), a fold is
 * replayed from the journal, which is only emptied after a COMMIT that
 * returned.
 */
#include "store_internal.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

/* PostgreSQL's type OIDs (catalog/pg_type_d.h, stable since 7.x). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25

/* The advisory lock every write transaction takes: one key for the Guardian's
 * database ('G' 'D' 'S' 'T'). */
#define GUARDIAN_PG_LOCK_KEY "1195660116"
#ifndef GUARDIAN_PG_CONNECT_TIMEOUT_S
#define GUARDIAN_PG_CONNECT_TIMEOUT_S "5"
#endif
#ifndef GUARDIAN_PG_STATEMENT_TIMEOUT_MS
#define GUARDIAN_PG_STATEMENT_TIMEOUT_MS 30000
#endif
#define PG_SCHEMA_VERSION 9

struct store_stmt {
    const struct engine_ops *ops; /* first: engine.c dispatches on it */
    struct guardian_store *st;
    enum stmt_id id;
    PGresult *res;
    int row, rows;
};

struct store_db {
    PGconn *conn;
    char *conninfo;
    char *password;     /* cleansed at close */
    char server[512];   /* host, port, database, user: for the log lines */
    char station[40];   /* this station's ID (station_id), "" without a state directory */
    bool prepared[S_COUNT];
    bool in_tx;
    int changes;
    store_int last_id;
    struct store_stmt stmt[S_COUNT];
};

extern const struct engine_ops engine_pg_ops;

/* ---- schema (version 7 of engine_sqlite.c, in PostgreSQL's types) ---------------- */

static const char schema_v7[] =
    "CREATE TABLE packages ("
    "  package_id       bytea   PRIMARY KEY CHECK (octet_length(package_id) = 16),"
    "  package_digest   bytea   NOT NULL CHECK (octet_length(package_digest) = 32),"
    "  oem_id           text    NOT NULL CHECK (octet_length(oem_id) BETWEEN 1 AND 64),"
    "  product_id       text    NOT NULL CHECK (octet_length(product_id) BETWEEN 1 AND 64),"
    "  release_version  bigint  NOT NULL CHECK (release_version BETWEEN 0 AND 4294967295),"
    "  authorised_units bigint  NOT NULL CHECK (authorised_units >= 0),"
    "  issued_units     bigint  NOT NULL DEFAULT 0"
    "                   CHECK (issued_units >= 0 AND issued_units <= authorised_units),"
    "  not_after        bigint  NOT NULL,"
    "  imported_at      bigint  NOT NULL,"
    "  import_seq       bigint  NOT NULL,"
    "  cert_template    bytea,"
    "  ca_cert          bytea"
    ");"
    "CREATE INDEX packages_by_product ON packages (oem_id, product_id, release_version);"
    "CREATE TABLE products ("
    "  oem_id       text    NOT NULL,"
    "  product_id   text    NOT NULL,"
    "  package_id   bytea   NOT NULL UNIQUE REFERENCES packages (package_id),"
    "  next_serial  bigint  NOT NULL CHECK (next_serial >= 1),"
    "  installed_at bigint  NOT NULL,"
    "  PRIMARY KEY (oem_id, product_id)"
    ");"
    /* station: which station's state directory holds the journal (its
     * station.id; see station_id): an opener recovers only its own
     * station's holders, never declares another station's journal lost. */
    "CREATE TABLE holders ("
    "  id        bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  station   text    NOT NULL DEFAULT current_setting('guardian.station'),"
    "  journal   text    NOT NULL CHECK (octet_length(journal) BETWEEN 1 AND 128),"
    "  opened_at bigint  NOT NULL,"
    "  UNIQUE (station, journal)"
    ");"
    "CREATE TABLE issuance ("
    "  oem_id      text    NOT NULL,"
    "  product_id  text    NOT NULL,"
    "  serial      bigint  NOT NULL CHECK (serial >= 1),"
    "  package_id  bytea   NOT NULL REFERENCES packages (package_id),"
    "  device_id   bytea   NOT NULL,"
    "  reserve_seq bigint  NOT NULL,"
    "  issue_seq   bigint,"
    "  cert_digest bytea,"
    "  release_seq bigint,"
    "  holder      bigint,"
    "  lost_seq    bigint,"
    "  PRIMARY KEY (oem_id, product_id, serial),"
    "  FOREIGN KEY (oem_id, product_id) REFERENCES products (oem_id, product_id)"
    ");"
    "CREATE INDEX issuance_by_holder ON issuance (holder) WHERE holder IS NOT NULL;"
    "CREATE TABLE audit ("
    "  seq              bigint  PRIMARY KEY CHECK (seq >= 1),"
    "  type             bigint  NOT NULL,"
    "  time             bigint  NOT NULL,"
    "  oem_id           text    NOT NULL,"
    "  product_id       text    NOT NULL,"
    "  serial           bigint  NOT NULL,"
    "  device_id        bytea   NOT NULL,"
    "  digest           bytea   NOT NULL,"
    "  package_id       bytea   NOT NULL,"
    "  release_version  bigint  NOT NULL,"
    "  authorised_units bigint  NOT NULL,"
    "  prev_hash        bytea   NOT NULL,"
    "  hash             bytea   NOT NULL,"
    "  operator         text    NOT NULL DEFAULT '' CHECK (octet_length(operator) <= 32),"
    "  encoding         bigint  NOT NULL DEFAULT 1"
    "                   CHECK (encoding IN (1, 2) AND (encoding = 2 OR operator = ''))"
    ");"
    "CREATE TABLE audit_head ("
    "  id       bigint  PRIMARY KEY CHECK (id = 1),"
    "  seq      bigint  NOT NULL CHECK (seq >= 0),"
    "  hash     bytea   NOT NULL CHECK (octet_length(hash) = 32),"
    "  max_time bigint"
    ");"
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));"
    "CREATE TABLE certificates ("
    "  issue_seq   bigint  PRIMARY KEY,"
    "  certificate bytea   NOT NULL CHECK (octet_length(certificate) BETWEEN 1 AND 16384)"
    ");"
    "CREATE TABLE credentials ("
    "  role       bigint  NOT NULL CHECK (role IN (0, 1)),"
    "  name       text    NOT NULL CHECK (octet_length(name) <= 32),"
    "  salt       bytea   NOT NULL CHECK (octet_length(salt) = 16),"
    "  hash       bytea   NOT NULL CHECK (octet_length(hash) = 32),"
    "  kdf_n      bigint  NOT NULL CHECK (kdf_n BETWEEN 1 AND 4294967295),"
    "  kdf_r      bigint  NOT NULL CHECK (kdf_r BETWEEN 1 AND 4294967295),"
    "  kdf_p      bigint  NOT NULL CHECK (kdf_p BETWEEN 1 AND 4294967295),"
    "  failures   bigint  NOT NULL DEFAULT 0 CHECK (failures BETWEEN 0 AND 4294967295),"
    "  changed_at bigint  NOT NULL,"
    "  PRIMARY KEY (role, name),"
    "  CHECK ((role = 0 AND name = '') OR (role = 1 AND name <> ''))"
    ");"
    "CREATE TABLE devices ("
    "  oem_id     text    NOT NULL,"
    "  product_id text    NOT NULL,"
    "  device_id  bytea   NOT NULL CHECK (octet_length(device_id) BETWEEN 1 AND 128),"
    "  serial     bigint  NOT NULL CHECK (serial >= 1),"
    "  issue_seq  bigint  NOT NULL,"
    "  spki_hash  bytea   CHECK (spki_hash IS NULL OR octet_length(spki_hash) = 32),"
    "  outcome    bigint  NOT NULL DEFAULT 0 CHECK (outcome IN (0, 1, 2)),"
    "  PRIMARY KEY (oem_id, product_id, device_id)"
    ");"
    "CREATE TABLE roots ("
    "  sha256      bytea   PRIMARY KEY CHECK (octet_length(sha256) = 32),"
    "  der         bytea   NOT NULL CHECK (octet_length(der) BETWEEN 1 AND 65536),"
    "  oem_ids     text    NOT NULL CHECK (length(oem_ids) BETWEEN 1 AND 1100),"
    "  enrolled_at bigint  NOT NULL,"
    "  operator    text    NOT NULL,"
    "  enrol_seq   bigint  NOT NULL CHECK (enrol_seq >= 1)"
    ");";

/* 7 -> 8: the members of group packages (engine_sqlite.c, schema_v8). */
static const char schema_v8[] =
    "CREATE TABLE package_members ("
    "  package_id bytea   NOT NULL REFERENCES packages (package_id),"
    "  guardian   bytea   NOT NULL CHECK (octet_length(guardian) = 32),"
    "  import_seq bigint  NOT NULL CHECK (import_seq >= 1),"
    "  PRIMARY KEY (package_id, guardian)"
    ");";

/* 8 -> 9: the Guardian of every record (engine_sqlite.c, schema_v9): the CHECK
 * on the encoding is replaced (PostgreSQL names a column constraint
 * audit_encoding_check; found by its text rather than its name, so this
 * one is replaced too when the step runs again) and the column added; the
 * rows stay as they are. */
static const char schema_v9[] =
    "DO $$ DECLARE c text; BEGIN"
    "  FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = 'audit'::regclass AND contype = 'c'"
    "           AND pg_get_constraintdef(oid) LIKE '%encoding%' LOOP"
    "    EXECUTE 'ALTER TABLE audit DROP CONSTRAINT ' || quote_ident(c);"
    "  END LOOP;"
    "END $$;"
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS guardian bytea NOT NULL DEFAULT ''::bytea;"
    "ALTER TABLE audit ADD CONSTRAINT audit_encoding_guardian CHECK ("
    "  encoding IN (1, 2, 3) AND (encoding >= 2 OR operator = '') AND"
    "  octet_length(guardian) IN (0, 32) AND (encoding = 3 OR octet_length(guardian) = 0));";

/* ---- the named statements ------------------------------------------------------- */

#define PRODUCT_COLUMNS                                                                    \
    "SELECT p.oem_id, p.product_id, p.package_id, k.release_version, k.authorised_units, " \
    "k.issued_units, p.next_serial, k.not_after, p.installed_at "                          \
    "FROM products p JOIN packages k ON k.package_id = p.package_id "

/* S_BEGIN takes the write lock (see the head of this file); S_SYNC_* set the
 * durability of the transaction just begun (SET LOCAL). */
static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "SELECT pg_advisory_xact_lock(" GUARDIAN_PG_LOCK_KEY ")",
    [S_SYNC_FULL] = "SET LOCAL synchronous_commit = on",
    [S_SYNC_NORMAL] = "SET LOCAL synchronous_commit = local",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_USER_VERSION] = "SELECT version FROM guardian_schema WHERE id = 1",
    [S_PACKAGE_SEEN] = "SELECT 1 FROM packages WHERE package_id = $1",
    [S_INSTALLED_RELEASE] = "SELECT k.release_version FROM products p JOIN packages k "
                            "ON k.package_id = p.package_id WHERE p.oem_id = $1 AND p.product_id = $2",
    [S_PACKAGE_INSERT] = "INSERT INTO packages (package_id, package_digest, oem_id, product_id, "
                         "release_version, authorised_units, issued_units, not_after, imported_at, "
                         "import_seq, cert_template, ca_cert) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11)",
    [S_PRODUCT_UPSERT] = "INSERT INTO products (oem_id, product_id, package_id, next_serial, installed_at) "
                         "VALUES ($1, $2, $3, 1, $4) ON CONFLICT (oem_id, product_id) DO UPDATE SET "
                         "package_id = excluded.package_id, installed_at = excluded.installed_at",
    [S_MEMBER_SEEN] = "SELECT 1 FROM package_members WHERE package_id = $1 AND guardian = $2",
    [S_MEMBER_INSERT] = "INSERT INTO package_members (package_id, guardian, import_seq) VALUES ($1, $2, $3)",
    [S_PRODUCT_IS_PACKAGE] = "SELECT 1 FROM products WHERE oem_id = $1 AND product_id = $2 AND package_id = $3",
    [S_PRODUCT_GET] = PRODUCT_COLUMNS "WHERE p.oem_id = $1 AND p.product_id = $2",
    [S_PRODUCTS_ALL] = PRODUCT_COLUMNS "ORDER BY p.oem_id COLLATE \"C\", p.product_id COLLATE \"C\"",
    [S_PACKAGE_COUNT] = "UPDATE packages SET issued_units = issued_units + $2 "
                        "WHERE package_id = $1 AND issued_units + $2 BETWEEN 0 AND authorised_units",
    [S_SERIAL_ADVANCE] = "UPDATE products SET next_serial = next_serial + $4 "
                         "WHERE oem_id = $1 AND product_id = $2 AND next_serial = $3",
    [S_ISSUANCE_INSERT] = "INSERT INTO issuance (oem_id, product_id, serial, package_id, device_id, "
                          "reserve_seq, holder) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    [S_ISSUANCE_GET] = "SELECT device_id, issue_seq, release_seq, package_id, cert_digest FROM issuance "
                       "WHERE oem_id = $1 AND product_id = $2 AND serial = $3",
    [S_ISSUANCE_SET_ISSUED] = "UPDATE issuance SET issue_seq = $4, cert_digest = $5, device_id = $6 "
                              "WHERE oem_id = $1 AND product_id = $2 AND serial = $3 "
                              "AND issue_seq IS NULL AND release_seq IS NULL",
    [S_ISSUANCE_SET_RELEASED] = "UPDATE issuance SET release_seq = $4 WHERE oem_id = $1 AND product_id = $2 "
                                "AND serial = $3 AND issue_seq IS NULL AND release_seq IS NULL",
    [S_CERTIFICATE_INSERT] = "INSERT INTO certificates (issue_seq, certificate) VALUES ($1, $2)",
    [S_CERTIFICATE_GET] = "SELECT c.certificate FROM issuance i JOIN certificates c ON c.issue_seq = i.issue_seq "
                          "WHERE i.oem_id = $1 AND i.product_id = $2 AND i.serial = $3",
    [S_PACKAGE_GET] = "SELECT k.oem_id, k.product_id, k.release_version, k.not_after, k.cert_template, "
                      "k.ca_cert, (CASE WHEN p.package_id IS NOT NULL THEN 1 ELSE 0 END)::int8 FROM packages k LEFT JOIN products p "
                      "ON p.package_id = k.package_id WHERE k.package_id = $1",
    [S_HEAD_GET] = "SELECT seq, hash, max_time FROM audit_head WHERE id = 1",
    [S_HEAD_SET] = "UPDATE audit_head SET seq = $1, hash = $2, "
                   "max_time = CASE WHEN max_time IS NULL OR max_time < $4 THEN $4 ELSE max_time END "
                   "WHERE id = 1 AND seq = $3",
    [S_AUDIT_INSERT] = "INSERT INTO audit (seq, type, time, oem_id, product_id, serial, device_id, digest, "
                       "package_id, release_version, authorised_units, prev_hash, hash, operator, encoding, "
                       "guardian) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    [S_AUDIT_PAGE] = "SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, "
                     "release_version, authorised_units, prev_hash, hash, operator, encoding, guardian "
                     "FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    /* RETURNING: store_last_insert_id (the holder's ID). */
    [S_HOLDER_INSERT] = "INSERT INTO holders (journal, opened_at) VALUES ($1, $2) RETURNING id",
    [S_HOLDER_BY_JOURNAL] = "SELECT id FROM holders WHERE journal = $1 AND station = current_setting('guardian.station')",
    [S_HOLDER_GET] = "SELECT journal FROM holders WHERE id = $1 AND station = current_setting('guardian.station')",
    [S_HOLDER_DELETE] = "DELETE FROM holders WHERE id = $1",
    [S_HOLDERS_ALL] = "SELECT id, journal FROM holders WHERE station = current_setting('guardian.station') ORDER BY id",
    [S_ISSUANCE_OPEN_BY_HOLDER] = "SELECT oem_id, product_id, serial, package_id FROM issuance "
                                  "WHERE holder = $1 AND issue_seq IS NULL AND release_seq IS NULL "
                                  "AND lost_seq IS NULL ORDER BY oem_id COLLATE \"C\", product_id COLLATE \"C\", "
                                  "serial",
    [S_ISSUANCE_SET_LOST] = "UPDATE issuance SET lost_seq = $6 WHERE oem_id = $1 AND product_id = $2 "
                            "AND serial BETWEEN $3 AND $4 AND holder = $5 AND issue_seq IS NULL "
                            "AND release_seq IS NULL AND lost_seq IS NULL",
    [S_CREDENTIAL_GET] = "SELECT salt, hash, kdf_n, kdf_r, kdf_p, failures, changed_at FROM credentials "
                         "WHERE role = $1 AND name = $2",
    [S_CREDENTIAL_PUT] = "INSERT INTO credentials (role, name, salt, hash, kdf_n, kdf_r, kdf_p, failures, changed_at) "
                         "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) ON CONFLICT (role, name) DO UPDATE SET "
                         "salt = excluded.salt, hash = excluded.hash, kdf_n = excluded.kdf_n, "
                         "kdf_r = excluded.kdf_r, kdf_p = excluded.kdf_p, failures = 0, "
                         "changed_at = excluded.changed_at",
    [S_CREDENTIAL_DELETE] = "DELETE FROM credentials WHERE role = $1 AND name = $2",
    [S_CREDENTIAL_FAILED] = "UPDATE credentials SET failures = least(failures + 1, 4294967295) "
                            "WHERE role = $1 AND name = $2",
    [S_CREDENTIAL_SUCCEEDED] = "UPDATE credentials SET failures = 0 WHERE role = $1 AND name = $2 AND failures <> 0",
    [S_CREDENTIAL_SUMMARY] = "SELECT role, count(*), max(failures), "
                             "sum(CASE WHEN failures >= $1 THEN 1 ELSE 0 END)::int8 FROM credentials "
                             "GROUP BY role ORDER BY role",
    [S_DEVICE_GET] = "SELECT d.serial, d.spki_hash, d.outcome, c.certificate, i.package_id FROM devices d "
                     "LEFT JOIN certificates c ON c.issue_seq = d.issue_seq LEFT JOIN issuance i ON i.oem_id = d.oem_id "
                     "AND i.product_id = d.product_id AND i.serial = d.serial "
                     "WHERE d.oem_id = $1 AND d.product_id = $2 AND d.device_id = $3",
    [S_DEVICE_INSERT] = "INSERT INTO devices (oem_id, product_id, device_id, serial, issue_seq, spki_hash) "
                        "VALUES ($1, $2, $3, $4, $5, nullif($6, ''::bytea)) ON CONFLICT DO NOTHING",
    [S_DEVICE_MOVE] = "UPDATE devices SET serial = $4, issue_seq = $5, spki_hash = nullif($6, ''::bytea), outcome = 0 "
                      "WHERE oem_id = $1 AND product_id = $2 AND device_id = $3 AND serial = $7",
    [S_DEVICE_SET_OUTCOME] = "UPDATE devices SET outcome = $4 WHERE oem_id = $1 AND product_id = $2 "
                             "AND device_id = $3",
    [S_ANCHOR_ENTRIES] = "SELECT k.package_id, COALESCE(p.next_serial, 0) FROM packages k "
                         "LEFT JOIN products p ON p.package_id = k.package_id ORDER BY k.import_seq",
    [S_ANCHOR_PACKAGE] = "SELECT 0::int8, COALESCE(p.next_serial, 0), k.oem_id, k.product_id, k.release_version, "
                         "(SELECT next_serial FROM products q WHERE q.oem_id = k.oem_id AND q.product_id = k.product_id) "
                         "FROM packages k LEFT JOIN products p ON p.package_id = k.package_id WHERE k.package_id = $1",
    [S_AUDIT_HASH_AT] = "SELECT hash FROM audit WHERE seq = $1",
    [S_RETIRE_PACKAGE] = "SELECT k.package_id, (CASE WHEN p.package_id = k.package_id THEN 1 ELSE 0 END)::int8 FROM packages k "
                         "LEFT JOIN products p ON p.oem_id = k.oem_id AND p.product_id = k.product_id "
                         "WHERE k.oem_id = $1 AND k.product_id = $2 AND k.release_version = $3",
    [S_RETIRE_RECORD] = "SELECT seq, time, operator, hash FROM audit WHERE type = $1 AND package_id = $2 "
                        "ORDER BY seq LIMIT 1",
    [S_ROOT_IDS_GET] = "SELECT oem_ids FROM roots WHERE sha256 = $1",
    [S_ROOT_INSERT] = "INSERT INTO roots (sha256, der, oem_ids, enrolled_at, operator, enrol_seq) "
                      "VALUES ($1, $2, $3, $4, $5, $6)",
    [S_ROOT_DELETE] = "DELETE FROM roots WHERE sha256 = $1",
    [S_ROOTS_ALL] = "SELECT sha256, der, oem_ids, enrolled_at, operator, enrol_seq FROM roots "
                    "ORDER BY enrol_seq, sha256",
};

/* ---- errors: the one place libpq's failures become CKR codes ---------------------- */

/* Whether a failed result means the server is gone or refuses us (rather
 * than a statement the server rejected). */
static bool pg_unreachable(const struct store_db *d, const PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    if (d->conn == NULL || PQstatus(d->conn) != CONNECTION_OK)
        return true;
    if (state == NULL)
        return res == NULL;
    /* 08: connection exception; 57P01..57P05: shutdown, crash, "starting up";
     * 57014 (statement_timeout): the server did not answer in time. */
    return strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 || strcmp(state, "57014") == 0 ||
           strncmp(state, "53300", 5) == 0;
}

/* One line: what failed, on which server, libpq's message (first line: it
 * names the SQLSTATE, a table or a constraint, never a bound value). */
static CK_RV map_pg(struct guardian_store *st, const PGresult *res, const char *what)
{
    struct store_db *d = st->db;
    const char *msg = res != NULL ? PQresultErrorMessage(res) : "";
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char line[256];
    size_t n;

    if ((msg == NULL || *msg == '\0') && d->conn != NULL)
        msg = PQerrorMessage(d->conn);
    snprintf(line, sizeof(line), "%s", msg != NULL ? msg : "");
    n = strcspn(line, "\n");
    line[n] = '\0';
    if (state != NULL && strcmp(state, "53200") == 0) {
        guardian_error(STORE_LOG, "%s: out of memory on the server %s: %s", what, d->server, line);
        return CKR_HOST_MEMORY;
    }
    if (pg_unreachable(d, res)) {
        guardian_error(STORE_LOG, "%s: the state server %s cannot be reached or refused the connection: %s", what,
                       d->server, line[0] != '\0' ? line : "connection lost");
        return CKR_GUARDIAN_STORE_UNREACHABLE;
    }
    guardian_error(STORE_LOG, "%s: PostgreSQL %s (%s): %s", what, state != NULL ? state : "?", d->server, line);
    return CKR_GUARDIAN_STORE_FAILED;
}

/* ---- the connection ------------------------------------------------------------------ */

/* The server a connection string names: host (or hostaddr), port and
 * database, and with `with_user` the user; never another keyword (no
 * password can be in it: engine_open refuses one, and none is shown). */
static void server_of(const char *conninfo, bool with_user, char *out, size_t cap)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    const char *host = NULL, *port = NULL, *db = NULL, *user = NULL;

    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "host") == 0 || (host == NULL && strcmp(o->keyword, "hostaddr") == 0))
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
    }
    snprintf(out, cap, "host=%s port=%s dbname=%s%s%s", host != NULL ? host : "(default)",
             port != NULL ? port : "(default)", db != NULL ? db : "(default)", with_user ? " user=" : "",
             !with_user ? "" : user != NULL ? user : "(default)");
    PQconninfoFree(opts);
}

/* The server as the log names it. */
static void describe_server(struct store_db *d)
{
    server_of(d->conninfo, true, d->server, sizeof(d->server));
}

/* guardianctl status: the server without the user. */
static void pg_location(const struct guardian_store *st, char *out, size_t cap)
{
    server_of(st->conninfo, false, out, cap);
}

/* libpq's notices (e.g. "there is no transaction in progress") go to the log
 * at debug level, not to stderr. */
static void pg_notice(void *arg, const char *message)
{
    (void)arg;
    guardian_debug(STORE_LOG, "PostgreSQL notice: %.*s", (int)strcspn(message, "\n"), message);
}

/* (Re)connects and sets the session: timeouts, UTC, READ COMMITTED. */
static CK_RV pg_connect(struct guardian_store *st)
{
    struct store_db *d = st->db;
    /* Defaults first (the connection string may override them), the
     * password last.  Over TCP a server that vanishes without closing the
     * connection (a partition, a host powered off) would leave a call
     * waiting for its reply: the keepalives (10 s idle, then 3 probes 5 s
     * apart) and tcp_user_timeout (30 s for unacknowledged data) end it;
     * libpq ignores them on a Unix socket. */
    const char *keys[] = {"connect_timeout", "application_name", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout", "dbname", "password", NULL};
    const char *vals[] = {GUARDIAN_PG_CONNECT_TIMEOUT_S, "guardian", "1", "10", "5", "3", "30000", d->conninfo,
                          d->password, NULL};
    char session[384];
    PGresult *res;
    CK_RV rv;

    if (d->conn != NULL) {
        PQfinish(d->conn);
        d->conn = NULL;
    }
    memset(d->prepared, 0, sizeof(d->prepared));
    d->in_tx = false;
    if (d->password == NULL)
        keys[8] = NULL;
    d->conn = PQconnectdbParams(keys, vals, 1);
    if (d->conn == NULL) {
        guardian_error(STORE_LOG, "connect to the state server %s: out of memory", d->server);
        return CKR_HOST_MEMORY;
    }
    if (PQstatus(d->conn) != CONNECTION_OK)
        return map_pg(st, NULL, "connect");
    PQsetNoticeProcessor(d->conn, pg_notice, NULL);
    snprintf(session, sizeof(session),
             "SET statement_timeout = %d; SET lock_timeout = %d; SET idle_in_transaction_session_timeout = %d; "
             "SET default_transaction_isolation = 'read committed'; SET synchronous_commit = on; "
             "SET client_min_messages = warning; SET guardian.station = '%s'",
             GUARDIAN_PG_STATEMENT_TIMEOUT_MS, GUARDIAN_STORE_BUSY_TIMEOUT_MS, GUARDIAN_PG_STATEMENT_TIMEOUT_MS,
             d->station);
    res = PQexec(d->conn, session);
    rv = PQresultStatus(res) == PGRES_COMMAND_OK ? CKR_OK : map_pg(st, res, "configure the state connection");
    PQclear(res);
    if (rv == CKR_OK && PQserverVersion(d->conn) < 150000) {
        guardian_error(STORE_LOG, "the state server %s runs PostgreSQL %d; the Guardian needs 15 or later", d->server,
                       PQserverVersion(d->conn));
        rv = CKR_GUARDIAN_STORE_FAILED;
    }
    return rv;
}

/* Outside a transaction: reconnect when the connection is gone (the server
 * restarted, or the last call found it down). */
static CK_RV pg_ready(struct guardian_store *st)
{
    struct store_db *d = st->db;

    if (d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK)
        return CKR_OK;
    if (d->in_tx) {
        guardian_error(STORE_LOG, "the state server %s: the connection was lost inside a transaction", d->server);
        return CKR_GUARDIAN_STORE_UNREACHABLE;
    }
    if (d->conn != NULL)
        guardian_info(STORE_LOG, "reconnecting to the state server %s", d->server);
    return pg_connect(st);
}

/* Runs SQL without parameters (several statements allowed). */
static CK_RV pg_exec(struct guardian_store *st, const char *sql, const char *what)
{
    PGresult *res = PQexec(st->db->conn, sql);
    ExecStatusType es = PQresultStatus(res);
    CK_RV rv = es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK ? CKR_OK : map_pg(st, res, what);

    PQclear(res);
    return rv;
}

/* ---- statements ------------------------------------------------------------------------ */

static void pg_stmt_done(struct store_stmt *s)
{
    if (s != NULL && s->res != NULL) {
        PQclear(s->res);
        s->res = NULL;
        s->row = s->rows = 0;
    }
}

#define MAX_PARAMS 16

static CK_RV pg_stmt_step(struct guardian_store *st, enum stmt_id id, struct store_stmt **out, bool *row,
                          const char *what, const char *types, va_list ap)
{
    struct store_db *d = st->db;
    struct store_stmt *s = &d->stmt[id];
    const char *values[MAX_PARAMS];
    int lengths[MAX_PARAMS], formats[MAX_PARAMS];
    char ints[MAX_PARAMS][24];
    size_t n = strlen(types);
    char name[16];
    ExecStatusType es;
    CK_RV rv;

    *out = s;
    pg_stmt_done(s);
    if (n > MAX_PARAMS) {
        guardian_error(STORE_LOG, "%s: too many parameters", what);
        return CKR_GENERAL_ERROR;
    }
    rv = pg_ready(st);
    if (rv != CKR_OK)
        return rv;
    snprintf(name, sizeof(name), "g%d", (int)id);
    if (!d->prepared[id]) {
        Oid oids[MAX_PARAMS];
        PGresult *res;
        for (size_t i = 0; i < n; i++)
            oids[i] = types[i] == 't' ? OID_TEXT : types[i] == 'b' ? OID_BYTEA : OID_INT8;
        res = PQprepare(d->conn, name, stmt_sql[id], (int)n, oids);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rv = map_pg(st, res, what);
            PQclear(res);
            return rv;
        }
        PQclear(res);
        d->prepared[id] = true;
    }
    for (size_t i = 0; i < n; i++) {
        formats[i] = 0;
        lengths[i] = 0;
        switch (types[i]) {
        case 't':
            values[i] = va_arg(ap, const char *);
            break;
        case 'i':
            snprintf(ints[i], sizeof(ints[i]), "%lld", va_arg(ap, store_int));
            values[i] = ints[i];
            break;
        case 'N': {
            store_int v = va_arg(ap, store_int);
            snprintf(ints[i], sizeof(ints[i]), "%lld", v);
            values[i] = v != 0 ? ints[i] : NULL;
            break;
        }
        case 'b': {
            const void *blob = va_arg(ap, const void *);
            int len = va_arg(ap, int);
            /* 0 bytes: an empty bytea, never NULL */
            values[i] = len > 0 ? blob : "";
            lengths[i] = len > 0 ? len : 0;
            formats[i] = 1;
            break;
        }
        default:
            guardian_error(STORE_LOG, "%s: bad parameter type", what);
            return CKR_GENERAL_ERROR;
        }
    }
    s->res = PQexecPrepared(d->conn, name, (int)n, values, lengths, formats, 1);
    es = PQresultStatus(s->res);
    if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK) {
        rv = map_pg(st, s->res, what);
        pg_stmt_done(s);
        if (rv == CKR_GUARDIAN_STORE_UNREACHABLE && PQstatus(d->conn) != CONNECTION_OK && !d->in_tx)
            memset(d->prepared, 0, sizeof(d->prepared));
        return rv;
    }
    {
        const char *tag = PQcmdStatus(s->res), *count = PQcmdTuples(s->res);
        if (count != NULL && *count != '\0' &&
            (strncmp(tag, "INSERT", 6) == 0 || strncmp(tag, "UPDATE", 6) == 0 || strncmp(tag, "DELETE", 6) == 0))
            d->changes = atoi(count);
        if (strncmp(tag, "INSERT", 6) == 0 && es == PGRES_TUPLES_OK && PQntuples(s->res) == 1 &&
            PQnfields(s->res) == 1 && PQftype(s->res, 0) == OID_INT8 && PQgetlength(s->res, 0, 0) == 8) {
            const uint8_t *v = (const uint8_t *)PQgetvalue(s->res, 0, 0);
            uint64_t x = 0;
            for (int i = 0; i < 8; i++)
                x = x << 8 | v[i];
            d->last_id = (store_int)x;
        }
    }
    s->rows = es == PGRES_TUPLES_OK ? PQntuples(s->res) : 0;
    s->row = 0;
    if (row != NULL)
        *row = s->rows > 0;
    else if (strncmp(PQcmdStatus(s->res), "SELECT", 6) == 0 && s->rows > 0)
        pg_stmt_done(s); /* a statement run for its effect (the lock) */
    return CKR_OK;
}

static CK_RV pg_stmt_next(struct guardian_store *st, struct store_stmt *s, bool *row, const char *what)
{
    (void)st;
    (void)what;
    if (s->res != NULL && s->row + 1 < s->rows) {
        s->row++;
        *row = true;
    } else {
        s->row = s->rows;
        *row = false;
    }
    return CKR_OK;
}

static int pg_changes(struct guardian_store *st)
{
    return st->db->changes;
}

static store_int pg_last_insert_id(struct guardian_store *st)
{
    return st->db->last_id;
}

/* ---- transactions ------------------------------------------------------------------------ */

/* BEGIN, the durability of its COMMIT and the write lock, in one round trip
 * (see the head of this file: S_BEGIN, S_SYNC_FULL, S_SYNC_NORMAL are the
 * parts; SET cannot be a prepared statement). */
static CK_RV pg_tx_begin(struct guardian_store *st, bool durable)
{
    struct store_db *d = st->db;
    char sql[256];
    bool was_up = d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK;
    CK_RV rv = pg_ready(st);

    if (rv != CKR_OK)
        return rv;
    snprintf(sql, sizeof(sql), "BEGIN; %s; %s", stmt_sql[durable ? S_SYNC_FULL : S_SYNC_NORMAL], stmt_sql[S_BEGIN]);
    d->in_tx = true;
    if (was_up) {
        /* A session the server ended since the last call (a restart, a
         * failover, pg_terminate_backend) shows only now: nothing of this
         * transaction ran, so reconnect and begin once more, quietly. */
        PGresult *res = PQexec(d->conn, sql);
        bool lost = PQresultStatus(res) != PGRES_TUPLES_OK && PQstatus(d->conn) != CONNECTION_OK;
        if (!lost) {
            rv = PQresultStatus(res) == PGRES_TUPLES_OK ? CKR_OK : map_pg(st, res, "begin a write transaction (the state's lock)");
            PQclear(res);
            goto done;
        }
        PQclear(res);
        guardian_info(STORE_LOG, "the state server %s ended this session: reconnecting", d->server);
        d->in_tx = false;
        rv = pg_connect(st);
        if (rv != CKR_OK)
            return rv;
        d->in_tx = true;
    }
    rv = pg_exec(st, sql, "begin a write transaction (the state's lock)");
done:
    if (rv != CKR_OK) {
        if (d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK) {
            if (PQtransactionStatus(d->conn) != PQTRANS_IDLE)
                (void)pg_exec(st, stmt_sql[S_ROLLBACK], "rollback");
        } else {
            memset(d->prepared, 0, sizeof(d->prepared));
        }
        d->in_tx = false;
    }
    return rv;
}

/* COMMIT when rv is CKR_OK (a transaction in which a statement failed answers
 * ROLLBACK to it: refused), ROLLBACK otherwise. */
static CK_RV pg_tx_end(struct guardian_store *st, CK_RV rv)
{
    struct store_db *d = st->db;
    bool alive = d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK;

    if (rv == CKR_OK) {
        if (!alive) {
            rv = map_pg(st, NULL, "commit");
        } else {
            PGresult *res = PQexec(d->conn, stmt_sql[S_COMMIT]);
            if (PQresultStatus(res) != PGRES_COMMAND_OK)
                rv = map_pg(st, res, "commit");
            else if (strcmp(PQcmdStatus(res), "COMMIT") != 0) {
                guardian_error(STORE_LOG, "commit: the state server %s rolled the transaction back", d->server);
                rv = CKR_GUARDIAN_STORE_FAILED;
            }
            PQclear(res);
        }
        if (rv == CKR_OK) {
            d->in_tx = false;
            return CKR_OK;
        }
    }
    alive = d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK;
    if (alive && PQtransactionStatus(d->conn) != PQTRANS_IDLE)
        (void)pg_exec(st, stmt_sql[S_ROLLBACK], "rollback");
    if (!alive)
        memset(d->prepared, 0, sizeof(d->prepared));
    d->in_tx = false;
    return rv;
}

/* ---- reading columns (binary results) ------------------------------------------------------ */

static bool has(const struct store_stmt *s, int col)
{
    return s != NULL && s->res != NULL && s->row < s->rows && col >= 0 && col < PQnfields(s->res);
}

static bool pg_col_is_null(struct store_stmt *s, int col)
{
    return !has(s, col) || PQgetisnull(s->res, s->row, col);
}

static bool pg_col_is_int(struct store_stmt *s, int col)
{
    Oid t;
    if (pg_col_is_null(s, col))
        return false;
    t = PQftype(s->res, col);
    return t == OID_INT8 || t == OID_INT4 || t == OID_INT2 || t == OID_BOOL;
}

static store_int pg_col_int(struct store_stmt *s, int col)
{
    const uint8_t *v;
    int len;
    uint64_t x = 0;

    if (!pg_col_is_int(s, col))
        return 0;
    v = (const uint8_t *)PQgetvalue(s->res, s->row, col);
    len = PQgetlength(s->res, s->row, col);
    if (len != 1 && len != 2 && len != 4 && len != 8)
        return 0;
    for (int i = 0; i < len; i++)
        x = x << 8 | v[i];
    /* sign-extend the narrower types */
    if (len < 8 && PQftype(s->res, col) != OID_BOOL && (v[0] & 0x80) != 0)
        x |= ~(uint64_t)0 << (8 * len);
    return (store_int)x;
}

static const char *pg_col_text(struct store_stmt *s, int col)
{
    if (pg_col_is_null(s, col) || PQftype(s->res, col) != OID_TEXT)
        return NULL;
    return PQgetvalue(s->res, s->row, col);
}

/* A text of 0..max bytes without a NUL into out[max + 1]; false if NULL or
 * longer. */
static bool pg_column_text_into(struct store_stmt *s, int col, size_t max, char *out)
{
    const char *text = pg_col_text(s, col);
    int n;

    if (text == NULL)
        return false;
    n = PQgetlength(s->res, s->row, col);
    if (n < 0 || (size_t)n > max || memchr(text, '\0', (size_t)n) != NULL)
        return false;
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    return true;
}

static bool pg_column_id(struct store_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1])
{
    return pg_column_text_into(s, col, GUARDIAN_ID_MAX, out);
}

static bool pg_column_operator(struct store_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1])
{
    return pg_column_text_into(s, col, GUARDIAN_OPERATOR_MAX, out) && guardian_operator_name_ok(out);
}

static bool pg_column_blob(struct store_stmt *s, int col, void *out, size_t max, size_t *len)
{
    int n;

    if (pg_col_is_null(s, col) || PQftype(s->res, col) != OID_BYTEA)
        return false;
    n = PQgetlength(s->res, s->row, col);
    if (n < 0 || (size_t)n > max)
        return false;
    if (n > 0)
        memcpy(out, PQgetvalue(s->res, s->row, col), (size_t)n);
    *len = (size_t)n;
    return true;
}

static CK_RV pg_column_blob_dup(struct store_stmt *s, int col, uint8_t **out, size_t *len)
{
    int n;

    *out = NULL;
    *len = 0;
    if (pg_col_is_null(s, col))
        return CKR_OK;
    n = PQgetlength(s->res, s->row, col);
    if (n <= 0)
        return CKR_OK;
    *out = malloc((size_t)n);
    if (*out == NULL)
        return CKR_HOST_MEMORY;
    memcpy(*out, PQgetvalue(s->res, s->row, col), (size_t)n);
    *len = (size_t)n;
    return CKR_OK;
}

static bool pg_column_uint(struct store_stmt *s, int col, uint64_t max, uint64_t *out)
{
    store_int v;

    if (!pg_col_is_int(s, col) || PQftype(s->res, col) == OID_BOOL)
        return false;
    v = pg_col_int(s, col);
    if (v < 0 || (uint64_t)v > max)
        return false;
    *out = (uint64_t)v;
    return true;
}

/* ---- open and close ------------------------------------------------------------------------ */

static bool pg_usable(void)
{
    if (PQisthreadsafe())
        return true;
    guardian_error(STORE_LOG, "the libpq library was built without thread support");
    return false;
}

/* stmt_step's varargs form, for this file. */
static CK_RV pg_step(struct guardian_store *st, enum stmt_id id, struct store_stmt **s, bool *row, const char *what,
                     const char *types, ...)
{
    va_list ap;
    CK_RV rv;

    va_start(ap, types);
    rv = pg_stmt_step(st, id, s, row, what, types, ap);
    va_end(ap);
    return rv;
}

/* The schema, created whole (version 7) in one transaction under the write
 * lock, so that two stations starting on an empty database create it once;
 * guardian_schema (one row) is SQLite's user_version. */
static CK_RV pg_schema(struct guardian_store *st)
{
    struct store_stmt *s = NULL;
    store_int version = -1;
    bool row = false;
    CK_RV rv = pg_tx_begin(st, true);

    if (rv != CKR_OK)
        return rv;
    rv = pg_exec(st,
                 "CREATE TABLE IF NOT EXISTS guardian_schema (id bigint PRIMARY KEY CHECK (id = 1), "
                 "version bigint NOT NULL); "
                 "INSERT INTO guardian_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING",
                 "create the schema version");
    if (rv == CKR_OK)
        rv = pg_step(st, S_USER_VERSION, &s, &row, "read the schema version", "");
    if (rv == CKR_OK && (!row || !pg_col_is_int(s, 0)))
        rv = CKR_GUARDIAN_STORE_FAILED;
    if (rv == CKR_OK)
        version = pg_col_int(s, 0);
    pg_stmt_done(s);
    /* 0: a fresh database (the whole schema as of version 7, then the steps
     * after it); 7 and later: the steps from there.  1..6 never existed on
     * PostgreSQL. */
    if (rv == CKR_OK && ((version != 0 && version < 7) || version > PG_SCHEMA_VERSION)) {
        guardian_error(STORE_LOG, "state schema version %lld on %s is not supported (this module knows 7..%d)",
                       (long long)version, st->db->server, PG_SCHEMA_VERSION);
        rv = CKR_GUARDIAN_STORE_FAILED;
    }
    if (rv == CKR_OK && version == 0)
        rv = pg_exec(st, schema_v7, "create the schema (version 7)");
    if (rv == CKR_OK && version < 8)
        rv = pg_exec(st, schema_v8, "migrate the schema to version 8 (the members of group packages)");
    if (rv == CKR_OK && version < 9)
        rv = pg_exec(st, schema_v9, "migrate the schema to version 9 (the Guardian of every record)");
    if (rv == CKR_OK && version != PG_SCHEMA_VERSION) {
        char sql[80];
        snprintf(sql, sizeof(sql), "UPDATE guardian_schema SET version = %d WHERE id = 1", PG_SCHEMA_VERSION);
        rv = pg_exec(st, sql, "set the schema version");
        if (rv == CKR_OK)
            guardian_info(STORE_LOG, "state schema version %d on %s (was %lld)", PG_SCHEMA_VERSION, st->db->server,
                          (long long)version);
    }
    return pg_tx_end(st, rv);
}

/* libpq fills a parameter the connection string leaves out from its
 * environment variable (PGHOST, PGPORT, PGDATABASE, PGUSER, PGOPTIONS, ...):
 * whoever starts the process could then point the station at another server,
 * database or role, or another schema (options: -c search_path=...), while
 * the configuration says otherwise.  Where the allowance lives is the
 * configuration's (docs/configuration.md, "No environment override"): such a
 * variable is refused, named, its value never shown.  The keywords that say
 * where: not password/passfile, which choose no server (store_password_file,
 * when set, is passed explicitly and wins; without it libpq's usual
 * PGPASSWORD or ~/.pgpass may log in to the server the string names). */
static const char *const where_keywords[] = {"host", "hostaddr", "port", "dbname", "user", "service", "options"};
static const char *const service_env[] = {"PGSERVICEFILE", "PGSYSCONFDIR"};

/* Whether the environment variable `name` is set to something (libpq reads
 * it with getenv and ignores an empty one). */
static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0';
}

/* Whether option `o` of the connection string is left to the environment
 * (refused, logged): a where_keywords option without a value whose variable
 * is set; a service= string whose file a variable moves. */
static bool env_supplies(const PQconninfoOption *o)
{
    bool supplied = false;

    if (o->val == NULL && o->envvar != NULL && env_set(o->envvar))
        for (size_t i = 0; i < sizeof(where_keywords) / sizeof(where_keywords[0]); i++)
            if (strcmp(o->keyword, where_keywords[i]) == 0) {
                guardian_error(STORE_LOG, "the connection string leaves out %s and the environment sets %s: "
                                          "refused (where the allowance lives is the configuration's, never the "
                                          "environment's: name %s in store_conninfo, or unset %s)",
                               o->keyword, o->envvar, o->keyword, o->envvar);
                supplied = true;
            }
    if (o->val != NULL && strcmp(o->keyword, "service") == 0)
        for (size_t i = 0; i < sizeof(service_env) / sizeof(service_env[0]); i++)
            if (env_set(service_env[i])) {
                guardian_error(STORE_LOG, "the state server's connection string names a service and the "
                                          "environment sets %s, which says where its file is: refused (where the "
                                          "allowance lives is the configuration's, never the environment's: unset "
                                          "%s)",
                               service_env[i], service_env[i]);
                supplied = true;
            }
    return supplied;
}

/* Whether the connection string holds a password (refused: it goes in a
 * file, store_password_file), cannot be parsed, or leaves to the
 * environment which server it names (env_supplies). */
static bool conninfo_ok(const char *conninfo)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    bool ok = opts != NULL;

    if (opts == NULL)
        guardian_error(STORE_LOG, "the state server's connection string cannot be read: %.*s",
                       err != NULL ? (int)strcspn(err, "\n") : 2, err != NULL ? err : "?");
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (o->val != NULL && (strcmp(o->keyword, "password") == 0 || strcmp(o->keyword, "passfile") == 0)) {
            guardian_error(STORE_LOG, "the state server's connection string holds a %s: refused (the password goes "
                                      "in store_password_file)",
                           o->keyword);
            ok = false;
        }
        if (env_supplies(o))
            ok = false;
    }
    PQfreemem(err);
    PQconninfoFree(opts);
    return ok;
}

static void pg_close(struct guardian_store *st)
{
    struct store_db *d = st->db;

    if (d == NULL)
        return;
    for (int i = 0; i < S_COUNT; i++)
        pg_stmt_done(&d->stmt[i]);
    if (d->conn != NULL)
        PQfinish(d->conn);
    if (d->password != NULL) {
        OPENSSL_cleanse(d->password, strlen(d->password));
        free(d->password);
    }
    free(d->conninfo);
    free(d);
    st->db = NULL;
}

/* This station's ID: 32 hex digits in <state_dir>/station.id (0600, made
 * at the first open, under flock so that two processes of the station agree).
 * Every station sharing the database has its own state directory and so its
 * own ID; the holders of the issue journals are scoped by it.  A copied
 * state directory would share it: give each station its own. */
#define STATION_FILE "station.id"
static CK_RV station_id(struct guardian_store *st, char out[40])
{
    unsigned char rnd[16];
    char buf[40];
    ssize_t n;
    int fd = -1;
    CK_RV rv;

    out[0] = '\0';
    if (st->dir_fd < 0)
        return CKR_OK; /* no state directory: no journals, no holders */
    rv = state_file_open(st, STATION_FILE, O_RDWR | O_CREAT, &fd);
    if (rv != CKR_OK)
        return rv;
    rv = CKR_GUARDIAN_STORE_FAILED;
    if (flock(fd, LOCK_EX) != 0)
        goto out;
    n = pread(fd, buf, 32, 0);
    if (n == 32) {
        for (int i = 0; i < 32; i++)
            if (!((buf[i] >= '0' && buf[i] <= '9') || (buf[i] >= 'a' && buf[i] <= 'f')))
                goto bad;
        memcpy(out, buf, 32);
        out[32] = '\0';
        rv = CKR_OK;
        goto out;
    }
    if (n != 0)
        goto bad;
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    for (int i = 0; i < 16; i++)
        snprintf(buf + 2 * i, 3, "%02x", rnd[i]);
    if (pwrite(fd, buf, 32, 0) != 32 || fsync(fd) != 0) {
        guardian_error(STORE_LOG, "cannot write %s in %s: %s", STATION_FILE, st->dir, strerror(errno));
        goto out;
    }
    memcpy(out, buf, 33);
    rv = CKR_OK;
    goto out;
bad:
    guardian_error(STORE_LOG, "%s in %s is not a station ID (32 hex digits): refused; it names this station's issue "
                              "journals on the shared server, find out who changed it",
                   STATION_FILE, st->dir);
    rv = CKR_GUARDIAN_STATE_UNSAFE;
out:
    close(fd);
    return rv;
}

/* store_internal.h: `path` and `memory` are SQLite's; the server is
 * st->conninfo, its password st->password. */
static CK_RV pg_open(struct guardian_store *st, const char *path, bool memory)
{
    struct store_db *d;
    CK_RV rv;

    (void)path;
    (void)memory;
    if (st->conninfo == NULL || !conninfo_ok(st->conninfo))
        return CKR_GUARDIAN_STORE_FAILED;
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return CKR_HOST_MEMORY;
    st->db = d;
    for (int i = 0; i < S_COUNT; i++) {
        d->stmt[i].ops = &engine_pg_ops;
        d->stmt[i].st = st;
        d->stmt[i].id = (enum stmt_id)i;
    }
    d->conninfo = strdup(st->conninfo);
    d->password = st->password != NULL ? strdup(st->password) : NULL;
    if (d->conninfo == NULL || (st->password != NULL && d->password == NULL))
        return CKR_HOST_MEMORY;
    describe_server(d);
    rv = station_id(st, d->station);
    if (rv == CKR_OK)
        rv = pg_connect(st);
    if (rv == CKR_OK)
        rv = pg_schema(st);
    return rv;
}

/* No second connection: the device lookups run on the main one under the
 * store's lock (engine_has_reader false). */
static CK_RV pg_reader_open(struct guardian_store *st, const char *path)
{
    (void)st;
    (void)path;
    return CKR_OK;
}

static bool pg_has_reader(const struct guardian_store *st)
{
    (void)st;
    return false;
}

static CK_RV pg_reader_device_get(struct guardian_store *st, struct store_stmt **s, bool *found, const char *oem_id,
                                  const char *product_id, const uint8_t *device_id, size_t device_id_len)
{
    (void)st;
    (void)s;
    (void)found;
    (void)oem_id;
    (void)product_id;
    (void)device_id;
    (void)device_id_len;
    return CKR_GENERAL_ERROR; /* never called: pg_has_reader is false */
}

static void pg_reader_done(struct guardian_store *st, struct store_stmt *s)
{
    (void)st;
    pg_stmt_done(s);
}

const struct engine_ops engine_pg_ops = {
    .location = pg_location,
    .name = "postgresql",
    .usable = pg_usable,
    .open = pg_open,
    .reader_open = pg_reader_open,
    .close = pg_close,
    .tx_begin = pg_tx_begin,
    .tx_end = pg_tx_end,
    .stmt_step = pg_stmt_step,
    .stmt_next = pg_stmt_next,
    .stmt_done = pg_stmt_done,
    .changes = pg_changes,
    .last_insert_id = pg_last_insert_id,
    .column_id = pg_column_id,
    .column_operator = pg_column_operator,
    .column_blob = pg_column_blob,
    .column_blob_dup = pg_column_blob_dup,
    .column_uint = pg_column_uint,
    .col_is_null = pg_col_is_null,
    .col_is_int = pg_col_is_int,
    .col_int = pg_col_int,
    .col_text = pg_col_text,
    .has_reader = pg_has_reader,
    .reader_device_get = pg_reader_device_get,
    .reader_done = pg_reader_done,
};
