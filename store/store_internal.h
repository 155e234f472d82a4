/*
 * store_internal.h — what the files of store/ share, and nothing outside
 * store/ may include (the public API is store.h).  README.md in this folder
 * says which file does what.
 *
 * The seam to the database engine is the middle of this header: the concerns
 * (registry.c, counters.c, trail.c, journal_fold.c, devices.c, credentials.c,
 * anchor.c, retire.c) run only the named statements of enum stmt_id, bind
 * them with stmt_step()'s type string, read their rows with the column_*()
 * and col_*() readers and count rows changed with store_changes(), inside
 * tx_begin()/tx_end() (store_write() in store.c).  engine_sqlite.c implements
 * all of it for SQLite and is the only file that includes <sqlite3.h>.
 */
#ifndef GUARDIAN_STORE_INTERNAL_H
#define GUARDIAN_STORE_INTERNAL_H

#include "store.h"
#include "journal.h"

#include "guardian/guardian-pkcs11.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "module.h"

#define STORE_FILE_NAME "guardian.db"
#define STORE_DIR_MODE 0700
#define STORE_FILE_MODE 0600
#define STORE_LOG "store"
/* How long a process waits for another one's write transaction. */
#ifndef GUARDIAN_STORE_BUSY_TIMEOUT_MS
#define GUARDIAN_STORE_BUSY_TIMEOUT_MS 10000
#endif

/* An integer as the engine stores it (SQLite's sqlite3_int64: signed 64-bit;
 * the API's uint64_t values are kept <= INT64_MAX).  stmt_step()'s 'i' and 'N'
 * arguments must have exactly this type. */
typedef long long store_int;

/* A prepared statement of the engine, opaque to the concerns. */
struct store_stmt;
/* The engine's connection(s) and statement cache (engine_sqlite.c). */
struct store_db;

/* ---- the engine's named statements ------------------------------------------- */

/* Every statement the concerns run, by name; the engine holds each one's SQL
 * text (engine_sqlite.c, stmt_sql) and prepares it once per connection.  A
 * statement's parameters and result columns are part of its name's
 * contract: a second engine implements the same names with the same
 * parameters (in the same order) and the same columns. */
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
    S_MEMBER_SEEN,
    S_MEMBER_INSERT,
    S_PRODUCT_IS_PACKAGE,
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
    S_ANCHOR_ENTRIES,
    S_ANCHOR_PACKAGE,
    S_AUDIT_HASH_AT,
    S_RETIRE_PACKAGE,
    S_RETIRE_RECORD,
    S_ROOT_IDS_GET,
    S_ROOT_INSERT,
    S_ROOT_DELETE,
    S_ROOTS_ALL,
    S_COUNT
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
    pthread_mutex_t lock; /* guards db (its connection and statements) */
    bool lock_ready;
    pid_t pid;            /* the process that opened the store */
    struct store_db *db;  /* the engine's connection(s) and cached statements */
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
    store_int holder_id;
    bool holder_uncommitted;
    /* Who every record this handle writes names (guardian_store_set_operator);
     * operator_invalid: the last name set was refused, and so is every write
     * that would record it until a valid one is set. */
    char operator_name[GUARDIAN_OPERATOR_MAX + 1];
    bool operator_invalid;
    /* Which Guardian every record names (guardian_store_set_guardian), under
     * the same locks as the operator; has_guardian false: none. */
    uint8_t guardian[GUARDIAN_HASH_LEN];
    bool has_guardian;
    /* The device index's part in this process (store.h, "the device
     * index"), guarded by journal_lock: every device with a claim (a thread
     * about to issue for it) or a certificate in this journal not yet folded
     * (`journaled`, forgotten when the journal is emptied: its records are
     * committed then).  device_cond: a claim was released. */
    struct device_entry *devices[DEVICE_BUCKETS];
    size_t devices_journaled;
    pthread_cond_t device_cond;
    /* Guards the engine's second, read-only connection (file-backed stores)
     * for the device lookup of every certificate (reader_device_get): in WAL
     * mode it reads the last commit without waiting for `lock`, which a write
     * transaction (a reservation folding a block: ~20 ms) holds; an in-memory
     * store has none (its lookups use db under `lock`). */
    pthread_mutex_t read_lock;
    struct guardian_store *next_abandoned;
    /* The engine (engine_ops) and, for a server engine, where the server is
     * (a libpq connection string without a password) and the password read
     * from store_password_file (cleansed at close); NULL for SQLite. */
    const struct engine_ops *ops;
    char *conninfo;
    char *password;
    /* The clock-behind refusal last logged (clock_check_locked, under
     * `lock`): the trail's newest date it named and when, on the monotonic
     * clock (the wall clock is the suspect).  The same refusal again within
     * GUARDIAN_LOG_REPEAT_SECONDS is not logged again: one line for the
     * threads of one run, whatever second each read. */
    int64_t clock_reported_newest;
    int64_t clock_reported_at;
};

/* ---- the engine (engine.c dispatches to engine_sqlite.c or engine_pg.c) ---------- */

/* What an engine implements: the functions below, one for one (column_blob_exact
 * is engine.c's, from column_blob; stmt_step takes a va_list).  A store's
 * engine is st->ops, chosen at open (guardian_store_open_options); a
 * statement's is its first member, so that the column readers, which take
 * only the statement, reach it: every engine's struct store_stmt begins with
 * `const struct engine_ops *ops`. */
struct engine_ops {
    const char *name;
    bool (*usable)(void);
    CK_RV (*open)(struct guardian_store *st, const char *path, bool memory);
    CK_RV (*reader_open)(struct guardian_store *st, const char *path);
    void (*close)(struct guardian_store *st);
    CK_RV (*tx_begin)(struct guardian_store *st, bool durable);
    CK_RV (*tx_end)(struct guardian_store *st, CK_RV rv);
    CK_RV (*stmt_step)(struct guardian_store *st, enum stmt_id id, struct store_stmt **s, bool *row,
                       const char *what, const char *types, va_list ap);
    CK_RV (*stmt_next)(struct guardian_store *st, struct store_stmt *s, bool *row, const char *what);
    void (*stmt_done)(struct store_stmt *s);
    int (*changes)(struct guardian_store *st);
    store_int (*last_insert_id)(struct guardian_store *st);
    bool (*column_id)(struct store_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1]);
    bool (*column_operator)(struct store_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1]);
    bool (*column_blob)(struct store_stmt *s, int col, void *out, size_t max, size_t *len);
    CK_RV (*column_blob_dup)(struct store_stmt *s, int col, uint8_t **out, size_t *len);
    bool (*column_uint)(struct store_stmt *s, int col, uint64_t max, uint64_t *out);
    bool (*col_is_null)(struct store_stmt *s, int col);
    bool (*col_is_int)(struct store_stmt *s, int col);
    store_int (*col_int)(struct store_stmt *s, int col);
    const char *(*col_text)(struct store_stmt *s, int col);
    bool (*has_reader)(const struct guardian_store *st);
    CK_RV (*reader_device_get)(struct guardian_store *st, struct store_stmt **s, bool *found, const char *oem_id,
                               const char *product_id, const uint8_t *device_id, size_t device_id_len);
    void (*reader_done)(struct guardian_store *st, struct store_stmt *s);
    /* Where the state is, for guardianctl status (guardian_store_location):
     * never a credential. */
    void (*location)(const struct guardian_store *st, char *out, size_t cap);
};
extern const struct engine_ops engine_sqlite_ops;
extern const struct engine_ops engine_pg_ops; /* GUARDIAN_WITH_POSTGRESQL builds only */

/* Whether st's engine's library can serve several threads (checked first at open). */
bool engine_usable(const struct guardian_store *st);
/* Opens the database at `path` (":memory:" when `memory`), configures it
 * (for SQLite: busy timeout, defensive, foreign keys, 2 KiB pages, WAL,
 * synchronous FULL) and brings its schema to the current version, in one
 * write transaction (migrations).  st->db is set, or left NULL on failure
 * before anything was allocated. */
CK_RV engine_open(struct guardian_store *st, const char *path, bool memory);
/* The read-only connection of a file-backed store (reader_device_get). */
CK_RV engine_reader_open(struct guardian_store *st, const char *path);
/* Finalises every statement and closes the connections; st->db NULL after. */
void engine_close(struct guardian_store *st);

/* BEGIN (IMMEDIATE: the write lock is taken at once), with the durability
 * the transaction's COMMIT needs: durable = synced to disk before COMMIT
 * returns (SQLite: synchronous FULL), else surviving a process crash
 * (NORMAL).  tx_end commits when rv is CKR_OK and rolls back otherwise;
 * returns the outcome. */
CK_RV tx_begin(struct guardian_store *st, bool durable);
CK_RV tx_end(struct guardian_store *st, CK_RV rv);

/* Gets statement `id` into *s, binds it and steps it once.  `types`: one
 * character per parameter, 1, 2, ... in order, each taking the arguments
 * that follow, with exactly these types (varargs are not converted: cast at
 * the call):
 *   't'  const char *          text up to its NUL, not copied
 *   'i'  store_int             integer
 *   'N'  store_int             integer, or NULL when it is 0
 *   'b'  const void *, int     blob of that many bytes, not copied; 0 bytes
 *                              bind an empty blob, never NULL
 * `types` must name every parameter of the statement.  With row NULL it must
 * finish (INSERT, UPDATE: then store_changes() tells how many rows it
 * changed); otherwise it may also stop at a row, and *row tells whether it
 * did.  Any other result is mapped to a CKR code and logged as `what`.  *s
 * is left to the caller's stmt_done, on failure too. */
CK_RV stmt_step(struct guardian_store *st, enum stmt_id id, struct store_stmt **s, bool *row, const char *what,
                const char *types, ...);
/* The next row of *s (after stmt_step stopped at one): *row false at the end. */
CK_RV stmt_next(struct guardian_store *st, struct store_stmt *s, bool *row, const char *what);
/* Every statement is reset as soon as its rows are read, so that no read is
 * left pending across COMMIT/ROLLBACK and bound pointers are not kept.
 * NULL is fine. */
void stmt_done(struct store_stmt *s);
/* Rows changed by the last INSERT, UPDATE or DELETE finished on st's connection. */
int store_changes(struct guardian_store *st);
/* The row ID the last INSERT into a table with an integer key gave (holders). */
store_int store_last_insert_id(struct guardian_store *st);

/* Reading the columns of the current row (col: 0, 1, ...).  The checked
 * readers return false when the value is not of the type and domain asked:
 * column_id an OEM/product ID (TEXT, 1..GUARDIAN_ID_MAX bytes, no NUL);
 * column_operator an operator's name (TEXT, guardian_operator_name_ok, ""
 * allowed); column_blob a BLOB of 0..max bytes (its length to *len);
 * column_blob_exact one of exactly len bytes; column_uint an INTEGER in
 * 0..max.  column_blob_dup: a malloc'd copy, *out NULL and *len 0 when it is
 * NULL or empty, CKR_HOST_MEMORY if the copy fails. */
bool column_id(struct store_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1]);
bool column_operator(struct store_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1]);
bool column_blob(struct store_stmt *s, int col, void *out, size_t max, size_t *len);
bool column_blob_exact(struct store_stmt *s, int col, void *out, size_t len);
CK_RV column_blob_dup(struct store_stmt *s, int col, uint8_t **out, size_t *len);
bool column_uint(struct store_stmt *s, int col, uint64_t max, uint64_t *out);
/* Unchecked: whether it is NULL, whether it is an INTEGER, its integer value
 * (0 for NULL), its text (NULL for NULL; valid until the next step). */
bool col_is_null(struct store_stmt *s, int col);
bool col_is_int(struct store_stmt *s, int col);
store_int col_int(struct store_stmt *s, int col);
const char *col_text(struct store_stmt *s, int col);

/* S_DEVICE_GET on the read-only connection of a file-backed store, under
 * read_lock, which reader_done releases (after the row is read).  Errors are
 * CKR_GUARDIAN_STORE_FAILED.  false from engine_has_reader: there is none (an
 * in-memory store: use stmt_step under `lock`). */
bool engine_has_reader(const struct guardian_store *st);
CK_RV reader_device_get(struct guardian_store *st, struct store_stmt **s, bool *found, const char *oem_id,
                        const char *product_id, const uint8_t *device_id, size_t device_id_len);
void reader_done(struct guardian_store *st, struct store_stmt *s);

/* ---- shared between the concerns --------------------------------------------------- */

/* store.c: the handle.  same_process: false (and logged) in a process that
 * did not open the store (after fork()).  store_enter/store_leave: the
 * store's lock (`lock`; error-checking: re-entering from a commit_hook is
 * CKR_GENERAL_ERROR, not a deadlock).  store_write: the one shape of every
 * mutation - lock, begin (durable: see tx_begin), fold this process's issue
 * journal into the trail, run fn (NULL: only the fold), commit if it returned
 * CKR_OK and roll back otherwise, fold what was appended meanwhile and empty
 * the journal once its records are committed, unlock. */
bool same_process(const struct guardian_store *st);
CK_RV store_enter(struct guardian_store *st);
void store_leave(struct guardian_store *st);
CK_RV store_write(struct guardian_store *st, bool durable, CK_RV (*fn)(struct guardian_store *st, void *ctx),
                  void *ctx);
/* The API's input checks: an OEM or product ID (1..GUARDIAN_ID_MAX bytes and
 * a terminator), a device ID (1..GUARDIAN_DEVICE_ID_MAX bytes). */
bool id_ok(const char *id);
bool device_id_ok(const uint8_t *device_id, size_t len);

/* Who wrote a record that comes from an issue journal: its operator ("" for
 * none) and Guardian (NULL for none), not whoever folds it now. */
struct record_author {
    const char *operator_name;
    const uint8_t *guardian;
};

/* trail.c: the audit trail inside a write transaction.  record_init: a new
 * record of `type` dated `t`, encoding 3, naming `author` or (NULL) the
 * current operator and Guardian, every other field zero; refused while the
 * operator last set is invalid.  audit_append: fills seq, prev_hash and hash, inserts the
 * record and moves the head.  audit_head_get: the last record's seq and hash.
 * clock_check_locked: CKR_GUARDIAN_CLOCK_BEHIND when `now` is more than
 * GUARDIAN_STORE_CLOCK_SLACK_S behind the newest record. */
CK_RV record_init(struct guardian_store *st, struct guardian_audit_record *r, int type, int64_t t,
                  const struct record_author *author);
CK_RV audit_append(struct guardian_store *st, struct guardian_audit_record *r);
CK_RV audit_head_get(struct guardian_store *st, uint64_t *seq, uint8_t hash[GUARDIAN_HASH_LEN]);
CK_RV clock_check_locked(struct guardian_store *st, int64_t now, const char *what);

/* counters.c: settling a reservation - ISSUE (the certificate left, or is
 * about to leave, the Guardian) or RELEASE (it never will; the unit is
 * counted back) - inside a write transaction: what to settle, and the ISSUE
 * record's seq back.  Also how a journal's record is folded (journal_fold.c)
 * and the ISSUE of a re-issue (devices.c). */
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
    const struct record_author *author; /* from a journal: its record's; NULL: the current ones */
    uint64_t reissue_of; /* a re-issue (reissue_tx moves the device index): the device's serial until now */
    uint64_t issue_seq;  /* out: the ISSUE record's seq */
};
/* ctx: a struct issue_args. */
CK_RV settle_tx(struct guardian_store *st, void *ctx);

/* journal_fold.c: the issue journals (the record codec is journal.c's). */
/* What folding one issue journal found. */
struct fold_result {
    size_t folded;                     /* ISSUE records folded (or found folded before) */
    size_t size;                       /* bytes read from the file */
    bool damaged;                      /* a cut or invalid record, or not the bytes its writer wrote */
    uint8_t digest[GUARDIAN_HASH_LEN]; /* SHA-256 of the bytes read: set when damaged (it names them) */
};

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
/* store_write's part: this process's journal read (journal_lock held) and
 * folded inside the write transaction, and the records appended meanwhile
 * folded after it commits (the journal emptied once all are committed). */
CK_RV own_journal_read_jlocked(struct guardian_store *st, struct own_journal *j);
CK_RV own_journal_fold_locked(struct guardian_store *st, struct own_journal *j, off_t from);
void journal_catch_up_locked(struct guardian_store *st, off_t folded, bool nonempty);
/* At open, before this process has a journal or a holder row: fold the
 * journals of processes that ended without closing the store, declare lost
 * the open serials of holders whose journal is gone, then create this
 * process's journal (locked, O_APPEND). */
CK_RV journal_recover(struct guardian_store *st);
CK_RV journal_orphans(struct guardian_store *st);
CK_RV journal_open(struct guardian_store *st);
/* One ISSUE appended to this process's issue journal (one
 * write(), under journal_lock alone: a write transaction of another thread
 * does not hold it up), with its place in the device index first. */
CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                     const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len);

/* devices.c: SHA-256 of the SubjectPublicKeyInfo inside a certificate; false
 * if the certificate's outline cannot be read (journal.c).  Also used by the
 * schema 6 migration. */
bool cert_spki_hash(const uint8_t *cert, size_t cert_len, uint8_t out[GUARDIAN_HASH_LEN]);

/* statedir.c: the state directory and its files */
CK_RV state_dir_open(const char *dir, int *out);
CK_RV state_file_open(const struct guardian_store *st, const char *name, int flags, int *fd);
CK_RV state_files_prepare(const struct guardian_store *st);

/* registry.c: packages and products (product_from_row: a row of S_PRODUCT_GET / S_PRODUCTS_ALL) */
CK_RV product_from_row(struct store_stmt *s, struct guardian_product *p);
CK_RV products_read_locked(struct guardian_store *st, struct guardian_product **list, size_t *count);
CK_RV products_call(const struct guardian_product *list, size_t count,
                    CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx);
CK_RV package_release_locked(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                             uint32_t *release);

/* devices.c: the index in this process (journal_lock held) and its row of an ISSUE */
CK_RV device_index_issue(struct guardian_store *st, const struct issue_args *a, uint64_t seq);
CK_RV device_journaled_jlocked(struct guardian_store *st, const char *oem_id, const char *product_id,
                               const uint8_t *id, size_t len, uint64_t serial, const uint8_t *cert,
                               size_t cert_len, struct device_entry **out);
void device_unjournal_jlocked(struct guardian_store *st, struct device_entry *e);
void devices_forget_journaled_jlocked(struct guardian_store *st);

#endif
