/*
 * store.h — what store/ owns: the Guardian's durable state, behind this API.
 *
 *  - the package registry: every package ever imported (replay protection) and
 *    the installed release per (OEM ID, product ID) (rollback protection);
 *  - the production counters: authorised, issued and remaining units and the
 *    next certificate serial of each installed product;
 *  - the audit trail: an append-only, hash-chained list of records, each
 *    naming the operator logged in when it was written;
 *  - the Guardian credentials of service mode (the SO's and the operators'
 *    scrypt hashes and their consecutive failures).
 *
 * SQLite (WAL) in <state_dir>/guardian.db.  Every mutation that touches a
 * counter, the registry and the audit trail does so in ONE transaction that
 * commits or rolls back as a whole.  Store errors map to CKR codes in exactly
 * one function (store.c: map_sqlite).  store/ may call SQLite and libcrypto
 * (SHA-256); nothing else.  Thread safety: one struct guardian_store may be
 * used from several threads (SQLite serialized mode + an internal mutex);
 * several processes may open the same state_dir (SQLite file locking, with a
 * busy timeout).
 */
#ifndef GUARDIAN_STORE_H
#define GUARDIAN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "p11.h"

#define GUARDIAN_ID_MAX 64           /* OEM ID and product ID, bytes of UTF-8 */
#define GUARDIAN_DEVICE_ID_MAX 128   /* device ID, bytes */
#define GUARDIAN_HASH_LEN 32         /* SHA-256 */
#define GUARDIAN_PACKAGE_ID_LEN 16
#define GUARDIAN_OPERATOR_MAX 32     /* an operator's name, bytes */

/* An operator's name as records carry it: "" (no operator: in-process,
 * without service mode) or [a-z0-9][a-z0-9._-]{0,31} ("so" is the SO).  Looks
 * at no more than GUARDIAN_OPERATOR_MAX + 1 bytes, so a name without its
 * terminator inside a struct's array is refused, never overrun.  Inline and
 * pure: the OEM-side reader uses it without the store. */
static inline bool guardian_operator_name_ok(const char *name)
{
    size_t n = name != NULL ? strnlen(name, GUARDIAN_OPERATOR_MAX + 1) : GUARDIAN_OPERATOR_MAX + 1;

    if (n > GUARDIAN_OPERATOR_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

struct guardian_store;

/* Open (creating if needed) <dir>/guardian.db and apply schema migrations up
 * to the current schema version; then fold the issue journals of processes
 * that ended without closing, and record a JOURNAL_LOST for each process whose
 * journal is missing or damaged (below).
 *
 * The directory is created (mode 0700) if it is missing; its parent must
 * exist.  CKR_GUARDIAN_STATE_UNSAFE, with one log line saying what to fix,
 * when the directory is a symbolic link, is not owned by the effective uid,
 * or is writable by group or others, and when guardian.db, its -wal or -shm,
 * or an issue journal is a symbolic link, not a regular file, or not owned by
 * the effective uid.  guardian.db, -wal, -shm and the journals are created
 * 0600 whatever the umask (existing ones are set to 0600). */
CK_RV guardian_store_open(const char *dir, struct guardian_store **out);
/* A private in-memory store, for unit tests. */
CK_RV guardian_store_open_memory(struct guardian_store **out);

/* The database engine of a store (docs/configuration.md, `store`). */
enum guardian_store_engine {
    GUARDIAN_STORE_ENGINE_SQLITE = 0,     /* <dir>/guardian.db (the default) */
    GUARDIAN_STORE_ENGINE_POSTGRESQL = 1, /* a PostgreSQL 15 server shared by stations */
};
struct guardian_store_options {
    enum guardian_store_engine engine;
    /* PostgreSQL: a libpq connection string without a password ("host=/run/pg
     * port=5432 dbname=guardian user=guardian"; one holding password= or
     * passfile= is refused), and the role's password (NULL: none; copied,
     * and cleansed at close). */
    const char *conninfo;
    const char *password;
};
/* guardian_store_open with the engine `opt` names (NULL: SQLite).  With
 * PostgreSQL the state directory `dir` still holds this station's issue
 * journals and anchor.lock; `dir` NULL opens a PostgreSQL store without one
 * (no issue journal: every ISSUE is its own transaction; for tests).  A
 * server that cannot be reached or refuses the login gives
 * CKR_GUARDIAN_STORE_UNREACHABLE here and at any later call; the next call
 * reconnects. */
CK_RV guardian_store_open_options(const char *dir, const struct guardian_store_options *opt,
                                  struct guardian_store **out);
/* Whether this build has the PostgreSQL engine (GUARDIAN_WITH_POSTGRESQL). */
bool guardian_store_engine_available(enum guardian_store_engine engine);
void guardian_store_close(struct guardian_store *st);
/* Which store this is, for the status (docs/vendor-interface.md, "The
 * status"): the engine's name ("sqlite", "postgresql"), and where the state
 * is: the database file (<dir>/guardian.db, ":memory:" for an in-memory
 * store), or the server as "host=H port=P dbname=D" read from the connection
 * string, "(default)" for a keyword it does not set.  Only those three
 * keywords: the password cannot be in the string (refused at open) and no
 * other keyword is repeated.  Truncated to cap; out is always terminated. */
const char *guardian_store_engine_name(const struct guardian_store *st);
void guardian_store_location(const struct guardian_store *st, char *out, size_t cap);

/* ---- package registry ------------------------------------------------------ */

struct guardian_package_info {
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    uint8_t package_digest[GUARDIAN_HASH_LEN]; /* SHA-256 of the package file */
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint32_t release_version;
    uint64_t authorised_units;
    int64_t not_after; /* seconds since the epoch, UTC */
    /* What the module needs to issue certificates from the store alone (may
     * be NULL/0 for a store-only test): the package's CertTemplate, DER, and
     * its production CA certificate, DER. */
    const uint8_t *cert_template;
    size_t cert_template_len;
    const uint8_t *ca_cert;
    size_t ca_cert_len;
    /* A group package (docs/package-format.md): the importing member, SHA-256
     * of its certificate A.  The first member's import records the package
     * and its allowance (IMPORT); each other member's only joins it (JOIN):
     * one allowance, one import per member.  NULL: a one-Guardian package. */
    const uint8_t *group_member;
};

/* Time never runs backwards.  An import or a reservation whose `now` is more
 * than GUARDIAN_STORE_CLOCK_SLACK_S seconds before the newest time of any
 * audit record is refused with CKR_GUARDIAN_CLOCK_BEHIND and a log line that
 * names both times, and writes nothing: a clock set back cannot revive an
 * expired package or backdate production.  The slack covers a caller that
 * read the clock and then waited for the write lock (busy timeout 10 s)
 * while another process wrote a record; a clock set back by up to the slack
 * is not detected, and since the newest time only grows, repeated small
 * steps back gain no more than the slack in total. */
#define GUARDIAN_STORE_CLOCK_SLACK_S 30
/* The same check on its own, without writing: CKR_OK or CKR_GUARDIAN_CLOCK_BEHIND. */
CK_RV guardian_store_check_clock(struct guardian_store *st, int64_t now);

/* CKR_OK if the package may be installed at `now` (seconds since the epoch,
 * UTC: the caller's clock, the same it checked anything else with);
 * CKR_GUARDIAN_CLOCK_BEHIND if `now` is behind the audit trail (above);
 * CKR_GUARDIAN_PACKAGE_EXPIRED if not_after < now;
 * CKR_GUARDIAN_PACKAGE_REPLAYED if a package with this ID was ever imported;
 * CKR_GUARDIAN_PACKAGE_ROLLBACK if the installed release of (oem_id,
 * product_id) is >= release_version. */
CK_RV guardian_store_package_check(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now);

/* In one transaction: the same checks as guardian_store_package_check at
 * `now`, then record the package, make it the installed release of its
 * product (a newer release supersedes the older: its allowance replaces the
 * old remaining count, the serial counter continues), and append an IMPORT
 * audit record dated `now`.
 * `commit_hook`, if not NULL, is called inside the transaction after the rows
 * are written and before COMMIT; if it returns non-CKR_OK the transaction is
 * rolled back and that value returned (the caller creates its token objects
 * there, so registry and token stay consistent). */
CK_RV guardian_store_package_install(struct guardian_store *st, const struct guardian_package_info *pkg, int64_t now,
                                     CK_RV (*commit_hook)(void *ctx), void *ctx);

/* What an imported package left for issuing certificates. */
struct guardian_package_material {
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint32_t release_version;
    int64_t not_after;
    int installed;            /* non-zero: the installed release of its product */
    uint8_t *cert_template;   /* malloc'd DER, NULL if none was recorded */
    size_t cert_template_len;
    uint8_t *ca_cert;         /* malloc'd DER, NULL if none was recorded */
    size_t ca_cert_len;
};

/* CKR_GUARDIAN_PRODUCT_UNKNOWN if no package with this ID was ever imported. */
CK_RV guardian_store_package_material(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                      struct guardian_package_material *out);
void guardian_store_package_material_free(struct guardian_package_material *m);

/* ---- products and counters ------------------------------------------------- */

struct guardian_product {
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN]; /* installed package */
    uint32_t release_version;
    uint64_t authorised_units; /* of the installed package */
    uint64_t issued_units;     /* under the installed package */
    uint64_t remaining_units;
    uint64_t next_serial;      /* durable, never reused across releases */
    int64_t not_after;
    int64_t installed_at;
};

/* CKR_GUARDIAN_PRODUCT_UNKNOWN if no release of that product is installed. */
CK_RV guardian_store_product_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                 struct guardian_product *out);
/* Calls `fn` for each installed product, ordered by OEM ID then product ID;
 * stops early and returns fn's value when it is not CKR_OK. */
CK_RV guardian_store_products_each(struct guardian_store *st,
                                   CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx);

/* Issuing a certificate is two steps, each one transaction, so that a crash at
 * any moment neither exceeds the quota nor loses a returned certificate's record:
 *
 * 1. reserve: `now` not behind the trail (else CKR_GUARDIAN_CLOCK_BEHIND, see
 *    guardian_store_check_clock), remaining > 0 (else
 *    CKR_GUARDIAN_QUOTA_EXHAUSTED), not expired at `now` (else
 *    CKR_GUARDIAN_PACKAGE_EXPIRED); remaining -= 1, issued += 1,
 *    serial = next_serial++; append a RESERVE audit record (device ID, serial).
 * 2. commit: append an ISSUE audit record (serial, device ID, SHA-256 of the
 *    certificate DER).  Only then does the caller return the certificate.
 *
 * A reservation without its ISSUE record (crash, or signing failed) stays
 * counted: it is reported as "reserved, not issued" in the audit export. */
CK_RV guardian_store_reserve(struct guardian_store *st, const char *oem_id, const char *product_id,
                             const uint8_t *device_id, size_t device_id_len, int64_t now, uint64_t *serial_out);
CK_RV guardian_store_commit_issue(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  uint64_t serial, const uint8_t *device_id, size_t device_id_len,
                                  const uint8_t cert_digest[GUARDIAN_HASH_LEN]);

/* The module's path, which amortises the power-safe commit over many units:
 *
 * reserve_block: like reserve, for up to `want` (1..GUARDIAN_RESERVE_MAX) units
 *   at once and for no device yet, and only while `package_id` is the installed
 *   release (else CKR_GUARDIAN_PACKAGE_SUPERSEDED); *count = units reserved
 *   (>= 1, fewer than `want` when fewer remain), serials *first_serial ..
 *   *first_serial + *count - 1, one RESERVE record each (empty device ID).
 *   Committed with synchronous=FULL: survives a power loss.
 * issue: the ISSUE record of one reserved serial, binding it to the device,
 *   with the certificate itself (kept for the audit export; its SHA-256 is the
 *   record's digest).  A file-backed store appends it to this process's issue
 *   journal (<dir>/issued-<pid>-<time>.journal, one write()) and folds the
 *   journal into the trail at the next reservation, release or
 *   guardian_store_flush, and at close; a journal left by a killed process is
 *   folded by the next opener.  Either way it survives a process crash; a
 *   power loss may lose it, and the serial then reads "reserved, not issued" -
 *   still counted.  (An in-memory store commits it at once, synchronous=NORMAL.)
 *   Each reservation of a file-backed store records its holder (the journal
 *   that may hold its ISSUE).  When a holder's journal is missing although the
 *   holder ended with serials still open, or its journal is damaged (a cut or
 *   invalid record), the store appends a JOURNAL_LOST record naming the
 *   journal and those serials, in the transaction that discovers it: they stay
 *   counted, and the OEM's verifier fails the report.
 * release: a RELEASE record for a reserved serial that will never be issued
 *   (the module gives back what it reserved and did not use, at C_Finalize):
 *   the unit is counted back; the serial is never reused. */
#define GUARDIAN_RESERVE_MAX 1024
#define GUARDIAN_CERT_MAX 16384
CK_RV guardian_store_reserve_block(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], int64_t now, uint64_t want,
                                   uint64_t *first_serial, uint64_t *count);
CK_RV guardian_store_issue(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                           const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len);
CK_RV guardian_store_release(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial);
/* Fold this process's issue journal into the trail now (one power-safe commit). */
CK_RV guardian_store_flush(struct guardian_store *st);
/* The certificate recorded with the ISSUE of `serial` (malloc'd; *der NULL and
 * *len 0 when none was recorded or the serial is not issued). */
CK_RV guardian_store_certificate_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                     uint64_t serial, uint8_t **der, size_t *len);

/* ---- the device index (schema 6) ------------------------------------------------- */

/* Which certificate each device ID of a product holds (docs/audit-format.md,
 * "The device index"): a table keyed by (OEM ID, product ID, device ID bytes
 * as the ISSUE record holds them), written in the transaction that writes the
 * ISSUE record (the fold of an issue journal, for a file-backed store), with
 * the serial, the SHA-256 of the certificate's SubjectPublicKeyInfo and the
 * part's outcome.  A lookup sees every certificate folded into the trail, by
 * any process, and every one this store handle put in its own journal and has
 * not folded yet (an in-memory map, emptied when the journal is).  Another
 * process's unfolded journal is not seen: two processes issuing for the same
 * new device ID at the same time both issue; the second ISSUE folded finds
 * the index taken, keeps the first and logs it, and the OEM's verifier
 * reports the device as issued twice without a re-issue. */
struct guardian_device_cert {
    uint64_t serial;
    bool has_spki;                        /* false: no certificate was recorded (before schema 2) */
    uint8_t spki_hash[GUARDIAN_HASH_LEN]; /* SHA-256 of the certificate's SubjectPublicKeyInfo DER */
    int outcome;                          /* enum guardian_part_outcome */
    uint8_t *cert;                        /* malloc'd DER, NULL when none was recorded */
    size_t cert_len;
};
void guardian_store_device_cert_free(struct guardian_device_cert *d);

/* Before issuing for a device: waits while another thread of this handle
 * holds the device's claim, then takes it, and looks the device up.  CKR_OK:
 * the claim is held (release it with guardian_store_device_unclaim after the
 * certificate is recorded, or not), *found says whether the device has a
 * certificate, and if so *d is it (free with guardian_store_device_cert_free).
 * So two threads of one process never both issue for one new device ID. */
CK_RV guardian_store_device_claim(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                                  bool *found);
void guardian_store_device_unclaim(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   const uint8_t *device_id, size_t device_id_len);
/* The same lookup without a claim. */
CK_RV guardian_store_device_get(struct guardian_store *st, const char *oem_id, const char *product_id,
                                const uint8_t *device_id, size_t device_id_len, struct guardian_device_cert *d,
                                bool *found);

/* A re-issue: the ISSUE record of reserved serial `serial` for the device,
 * with its certificate, and a REISSUE record (serial: the new one;
 * authorised_units: `old_serial`, the device's certificate until now; digest:
 * SHA-256 of the new certificate; package and release of the new serial),
 * and the index moved to the new certificate (outcome: none), in one write
 * transaction (synchronous=NORMAL: a re-issue is rare; it does not go through
 * the journal, so the REISSUE record and its ISSUE are never apart).
 * CKR_ARGUMENTS_BAD if the device's certificate is not `old_serial` now. */
CK_RV guardian_store_reissue(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
                             const uint8_t *device_id, size_t device_id_len, const uint8_t *cert, size_t cert_len,
                             uint64_t old_serial);

/* The line's report on a part: in one write transaction (this handle's
 * journal folded first, synchronous=NORMAL) the device's certificate is looked
 * up - CKR_GUARDIAN_DEVICE_NOT_ISSUED when it has none -, and unless its
 * outcome is already `outcome` (then nothing is written: *recorded false) an
 * OUTCOME record is appended (serial: the certificate's, device ID, package
 * and release of that serial, authorised_units: the outcome, dated `now`,
 * the current operator) and the index updated.  PROGRAMMED then SCRAPPED is
 * allowed and recorded (a part damaged after programming); SCRAPPED then
 * PROGRAMMED is refused, CKR_GUARDIAN_PART_SCRAPPED: a scrapped part's
 * certificate is finished (a re-issue starts a new one).  *serial (may be
 * NULL): the certificate's serial. */
CK_RV guardian_store_record_outcome(struct guardian_store *st, const char *oem_id, const char *product_id,
                                    const uint8_t *device_id, size_t device_id_len, int outcome, int64_t now,
                                    uint64_t *serial, bool *recorded);

/* ---- audit trail ------------------------------------------------------------- */

enum guardian_audit_type {
    GUARDIAN_AUDIT_IMPORT = 1,
    GUARDIAN_AUDIT_RESERVE = 2,
    GUARDIAN_AUDIT_ISSUE = 3,
    GUARDIAN_AUDIT_RELEASE = 4,
    GUARDIAN_AUDIT_JOURNAL_LOST = 5,
    GUARDIAN_AUDIT_CREDENTIAL = 6, /* a Guardian credential set, changed, locked or removed (schema 4 on) */
    GUARDIAN_AUDIT_EXPORT = 7,     /* an audit report exported: who, when, what scope (schema 5 on) */
    GUARDIAN_AUDIT_OUTCOME = 8,    /* the line reported a part programmed or scrapped (schema 6 on) */
    GUARDIAN_AUDIT_REISSUE = 9,    /* a device's certificate issued again for another key (schema 6 on) */
    GUARDIAN_AUDIT_RETIRE = 10,    /* a superseded release's production CA key destroyed: who, when, which (schema 6 on) */
    GUARDIAN_AUDIT_ENROL = 11,     /* an OEM root enrolled in or removed from the store's ledger (schema 7 on) */
    GUARDIAN_AUDIT_JOIN = 12,      /* another member of a group package imported it: one allowance (schema 8 on) */
};
#define GUARDIAN_AUDIT_TYPE_MAX GUARDIAN_AUDIT_JOIN

/* A part's outcome, as an OUTCOME record (its authorised_units field) and the
 * device index hold it (0: none reported). */
enum guardian_part_outcome {
    GUARDIAN_OUTCOME_NONE = 0,
    GUARDIAN_OUTCOME_PROGRAMMED = 1,
    GUARDIAN_OUTCOME_SCRAPPED = 2,
};

/* The canonical encoding a record's hash covers (docs/audit-format.md).  Each
 * record keeps the one it was written with, so that a trail from before
 * schema 4 still verifies: its records were hashed without an operator. */
enum guardian_audit_encoding {
    GUARDIAN_AUDIT_ENCODING_1 = 1, /* "GDAUDIT1": no operator; every record written before schema 4 */
    GUARDIAN_AUDIT_ENCODING_2 = 2, /* "GDAUDIT2": with the operator; schema 4 .. 8 */
    GUARDIAN_AUDIT_ENCODING_3 = 3, /* "GDAUDIT3": the operator and the Guardian; every record since schema 9 */
};

/* Why a JOURNAL_LOST record was written (its release_version field). */
enum guardian_journal_lost_reason {
    GUARDIAN_JOURNAL_MISSING = 1, /* the holder ended with serials open and its journal is gone */
    GUARDIAN_JOURNAL_DAMAGED = 2, /* its journal ends in a cut record, or a record does not verify */
};

/* What a CREDENTIAL record (type 6) records: its `serial` field
 * (guardian_store_credential_put, _remove, _failed). */
enum guardian_credential_action {
    GUARDIAN_CREDENTIAL_SO_SET = 1,     /* the SO PIN set (C_InitToken with no Guardian SO yet) */
    GUARDIAN_CREDENTIAL_USER_SET = 2,   /* an operator set or reset (unlocked) by the SO (C_InitPIN) */
    GUARDIAN_CREDENTIAL_CHANGED = 3,    /* the logged-in one changed its own PIN (C_SetPIN) */
    GUARDIAN_CREDENTIAL_LOCKED = 4,     /* GUARDIAN_CREDENTIAL_MAX_FAILURES consecutive failures */
    GUARDIAN_CREDENTIAL_SO_CLEARED = 5, /* the SO cleared with the backend SO PIN (recovery) */
    GUARDIAN_CREDENTIAL_REMOVED = 6,    /* an operator removed */
};

struct guardian_audit_record {
    uint64_t seq;  /* 1, 2, 3, ... without gaps */
    int type;      /* enum guardian_audit_type */
    int64_t time;  /* seconds since the epoch, UTC */
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint64_t serial;                      /* RESERVE, ISSUE, RELEASE; JOURNAL_LOST: first serial;
                                             CREDENTIAL: enum guardian_credential_action;
                                             EXPORT: the seq of the record before it (0: none); 0 otherwise */
    uint8_t device_id[GUARDIAN_DEVICE_ID_MAX];
    size_t device_id_len;                 /* RESERVE, ISSUE; JOURNAL_LOST: the journal's file name;
                                             CREDENTIAL: the subject's name ("so" for the SO) */
    uint8_t digest[GUARDIAN_HASH_LEN];    /* ISSUE: certificate; IMPORT: package; JOURNAL_LOST: journal or zeros */
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN]; /* IMPORT; JOURNAL_LOST: the package the serials counted against */
    uint32_t release_version;             /* IMPORT; JOURNAL_LOST: enum guardian_journal_lost_reason */
    uint64_t authorised_units;            /* IMPORT; JOURNAL_LOST: number of serials (serial .. serial + n - 1) */
    /* Encoding 2: the operator logged in when the record was written
     * (guardian_store_set_operator; an ISSUE: when the certificate was
     * issued): a name, "so" for the SO, "" for none.  Encoding 1: "". */
    char operator_name[GUARDIAN_OPERATOR_MAX + 1];
    /* Encoding 3: the Guardian that wrote it (guardian_store_set_guardian; a
     * folded ISSUE: the one that issued the certificate), the SHA-256 of its
     * certificate A, what packages name; guardian_len 0: none known (a
     * record written before the Guardian had its certificate).  Encodings 1
     * and 2: guardian_len 0. */
    uint8_t guardian[GUARDIAN_HASH_LEN];
    size_t guardian_len;                  /* 0 or GUARDIAN_HASH_LEN */
    int encoding;                         /* enum guardian_audit_encoding; 0 is no encoding */
    uint8_t prev_hash[GUARDIAN_HASH_LEN]; /* hash of record seq-1; zeros for seq 1 */
    uint8_t hash[GUARDIAN_HASH_LEN];      /* SHA-256 over the canonical encoding */
};

/* The canonical byte encoding of a record that its hash covers (everything but
 * `hash`), as documented in docs/audit-format.md, in the record's `encoding`:
 * 1 is exactly the bytes of before schema 4 (and needs operator_name "" and a
 * type of then, IMPORT .. JOURNAL_LOST), 2 adds operator_name, 3 adds the
 * Guardian after it (1 and 2 need guardian_len 0).  Returns the length
 * written (at most GUARDIAN_AUDIT_ENCODING_MAX), or 0 if `cap` is too small or
 * the record cannot be encoded.  Shared with the OEM-side verifier. */
#define GUARDIAN_AUDIT_ENCODING_MAX 468
size_t guardian_audit_encode(const struct guardian_audit_record *r, uint8_t *buf, size_t cap);
/* hash = SHA-256(guardian_audit_encode(r)).  CKR_OK, or CKR_ARGUMENTS_BAD if
 * the record cannot be encoded (an ID without its terminator, device_id_len >
 * GUARDIAN_DEVICE_ID_MAX, an encoding other than 1, 2 or 3, an operator name in
 * encoding 1 or not of guardian_operator_name_ok, ...), CKR_GENERAL_ERROR if
 * SHA-256 failed; `out` is then all zeros and must not be compared with
 * anything (a verifier that did would accept a forged record whose stored
 * hash is zeros). */
CK_RV guardian_audit_hash(const struct guardian_audit_record *r, uint8_t out[GUARDIAN_HASH_LEN]);

/* Calls `fn` for each record in sequence order, after checking that each
 * record's prev_hash is its predecessor's hash and its hash is right;
 * CKR_GUARDIAN_AUDIT_CORRUPT (and a log line naming the record) otherwise. */
CK_RV guardian_store_audit_each(struct guardian_store *st,
                                CK_RV (*fn)(const struct guardian_audit_record *r, void *ctx), void *ctx);

/* An audit export, recorded before its report is built (mechs/audit_export.c),
 * so that the signed report covers its own EXPORT record as its last.  One
 * write transaction, synchronous=FULL: this process's issue journal folded
 * first (its certificates belong in the report), then, for a restricted
 * export (oem_id and product_id, both or neither), the product must be
 * installed (CKR_GUARDIAN_PRODUCT_UNKNOWN, nothing written); then the EXPORT
 * record is appended - time `now`, the scope (empty: the whole trail), serial
 * = the seq of the record before it (0 for none), device ID, digest, package,
 * release and units zero, the current operator - and the installed products
 * are read as they stand at that record.  After COMMIT, `fn` (may be NULL) is
 * called for each product, ordered by OEM ID then product ID (stops early and
 * returns fn's value when it is not CKR_OK), and *record (may be NULL) is the
 * EXPORT record, hash included.  The report covers records 1 .. record->seq
 * with those products: the counters are exactly what those records add up
 * to, whatever production appends meanwhile (counters and records change
 * only together, in one transaction). */
CK_RV guardian_store_record_export(struct guardian_store *st, const char *oem_id, const char *product_id, int64_t now,
                                   CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx,
                                   struct guardian_audit_record *record);

/* A superseded release's production CA key retired (mechs/retire.c): one
 * write transaction, synchronous=FULL, this process's journal folded first.
 * The release `release` of oem_id/product_id must have been imported
 * (CKR_GUARDIAN_PRODUCT_UNKNOWN otherwise) and must not be the installed one
 * (CKR_GUARDIAN_RELEASE_CURRENT: its key is the line's).  When a RETIRE
 * record of that package exists already, nothing is written, *already is
 * true and *record is that record; otherwise a RETIRE record is appended -
 * time `now`, the IDs, the package ID, the release, the current operator,
 * serial, device, digest and units zero - and *record is it (hash
 * included).  The record comes before the key is destroyed: a crash between
 * the two leaves a recorded retirement whose key the next retire-ca
 * destroys, never a key gone without a record. */
CK_RV guardian_store_record_retire(struct guardian_store *st, const char *oem_id, const char *product_id,
                                   uint32_t release, int64_t now, struct guardian_audit_record *record, bool *already);

/* The operator named in every record this store handle writes from now on
 * (IMPORT, RESERVE, ISSUE - in the issue journal too, so a folded ISSUE
 * names who issued it, not who folded it -, RELEASE, JOURNAL_LOST,
 * CREDENTIAL, EXPORT): the logged-in operator's name, "so" for the SO, "" or NULL for
 * none.  Per handle, thread-safe (taken under the store's lock, so a record
 * names either the old or the new one, whole).  A name that is not "" nor of
 * guardian_operator_name_ok is logged and refused, and so is every write
 * that would record an operator (CKR_ARGUMENTS_BAD) until a valid name is
 * set: no record names the wrong one. */
void guardian_store_set_operator(struct guardian_store *st, const char *name);

/* The Guardian named in every record this handle writes from now on
 * (encoding 3; in the issue journal too, so that a folded ISSUE names the
 * Guardian that issued it): the SHA-256 of its certificate A (what packages
 * name as their target and group members by), or NULL for none (records
 * then name no Guardian).  The module sets it from its token before the
 * store grants anything (mechs/anchor.c).  Per handle, thread-safe as
 * guardian_store_set_operator.  guardian_store_guardian: the one set, false
 * for none. */
void guardian_store_set_guardian(struct guardian_store *st, const uint8_t guardian[GUARDIAN_HASH_LEN]);
bool guardian_store_guardian(struct guardian_store *st, uint8_t out[GUARDIAN_HASH_LEN]);

/* ---- Guardian credentials --------------------------------------------------------- */

/* In service mode (docs/configuration.md, backend_pin_file) C_Login takes the
 * Guardian's own credentials, kept here: the SO's (role CKU_SO, name "") and
 * one per operator (role CKU_USER, name [a-z0-9][a-z0-9._-]{0,31}, never
 * "so", which names the SO in records).  The store keeps what the module
 * derived (scrypt: salt, 32-byte hash, parameters) and the consecutive
 * failures; it never sees a PIN.  Every write is one BEGIN IMMEDIATE
 * transaction committed with synchronous=FULL: a failure counted is counted
 * even if the process is killed or the power fails the moment after, and
 * the CREDENTIAL audit record commits with the change it records.  No PIN,
 * salt or hash ever goes into a record. */
#define GUARDIAN_CREDENTIAL_MAX_FAILURES 5 /* consecutive failures that lock a credential */

struct guardian_credential {
    char name[GUARDIAN_OPERATOR_MAX + 1]; /* "" for the SO */
    int role;                             /* CKU_SO (0) or CKU_USER (1) */
    uint8_t salt[16];
    uint8_t hash[32];
    uint32_t kdf_n, kdf_r, kdf_p;         /* each >= 1 */
    uint32_t failures;                    /* consecutive */
    int64_t changed_at;                   /* seconds since the epoch, UTC: when it was last put */
};

/* Arguments common to all: `role` CKU_SO with `name` "" (or NULL), or CKU_USER
 * with a name of the syntax above; anything else is CKR_ARGUMENTS_BAD (the
 * caller checks the syntax of what a client typed first).  A credential that
 * does not exist is CKR_USER_PIN_NOT_INITIALIZED, and nothing is written. */

/* The credential of (role, name) into *out.  A locked one is returned too:
 * locked means out->failures >= GUARDIAN_CREDENTIAL_MAX_FAILURES, which the
 * caller checks (CKR_PIN_LOCKED) before it compares anything. */
CK_RV guardian_store_credential_get(struct guardian_store *st, int role, const char *name,
                                    struct guardian_credential *out);
/* Inserts cred's (role, name) or replaces it - salt, hash, KDF parameters -
 * with failures 0 (so a reset unlocks) and changed_at now (cred->failures and
 * cred->changed_at are not used), and appends a CREDENTIAL record: serial =
 * `action`, device_id = `subject`, the current operator; one transaction,
 * synchronous=FULL.  `action`: GUARDIAN_CREDENTIAL_SO_SET (role CKU_SO),
 * GUARDIAN_CREDENTIAL_USER_SET (CKU_USER) or GUARDIAN_CREDENTIAL_CHANGED
 * (either); `subject`: whose credential it is - cred's name, "so" for the
 * SO - or NULL for the same (a record names no one else).  CKR_ARGUMENTS_BAD
 * for another action, an action of the other role, another subject, kdf_n,
 * kdf_r or kdf_p 0, or the user name "so". */
CK_RV guardian_store_credential_put(struct guardian_store *st, const struct guardian_credential *cred, int action,
                                    const char *subject);
/* Removes (role, name) and appends a CREDENTIAL record (subject: the name,
 * "so" for the SO); one transaction, synchronous=FULL.  `action`:
 * GUARDIAN_CREDENTIAL_SO_CLEARED (role CKU_SO) or GUARDIAN_CREDENTIAL_REMOVED
 * (CKU_USER). */
CK_RV guardian_store_credential_remove(struct guardian_store *st, int role, const char *name, int action);
/* One more consecutive failure, durable (synchronous=FULL) before this
 * returns: call it BEFORE comparing the PIN, so that killing the process
 * during the comparison cannot save an attempt.  *failures_now (may be NULL)
 * = the count after it (saturating at UINT32_MAX).  When it reaches
 * GUARDIAN_CREDENTIAL_MAX_FAILURES the same transaction appends a
 * CREDENTIAL record GUARDIAN_CREDENTIAL_LOCKED (once: further failures count
 * on without another record). */
CK_RV guardian_store_credential_failed(struct guardian_store *st, int role, const char *name, uint32_t *failures_now);
/* The PIN was right: failures back to 0 (no record; nothing is written when
 * it is 0 already). */
CK_RV guardian_store_credential_succeeded(struct guardian_store *st, int role, const char *name);
/* For the token flags: whether the SO is set and its failures (0 if not);
 * the number of operators, the most failures any has, and how many are
 * locked.  Any output may be NULL. */
CK_RV guardian_store_credential_summary(struct guardian_store *st, bool *so_set, size_t *n_users,
                                        uint32_t *max_user_failures, size_t *n_users_locked, uint32_t *so_failures);

/* ---- the ledger of enrolled OEM roots (schema 7, store/roots.c) ------------------- */
/* Where the token cannot be trusted to hold OEM roots (a plain user can make
 * a CKA_TRUSTED certificate: tpm2-pkcs11, NSS softoken; or nobody can:
 * opencryptoki), the roots the Guardian's own SO enrolled in service mode are
 * kept here (docs/threat-model.md section 2).  A row: the root's DER, its
 * SHA-256, its OEM IDs ("A,B", as enrolled), when, who, and the seq of its
 * ENROL record.  An ENROL record (type 11): serial = enum guardian_enrol_action,
 * digest = SHA-256 of the root's DER, device_id = SHA-256 of the OEM IDs string
 * (32 bytes), no OEM or product ID (they do not fit: up to 16 IDs), the
 * operator.  A
 * removal is an ENROL record too (serial GUARDIAN_ENROL_REMOVED), of the same
 * digest and OEM IDs, written with the row's deletion. */
enum guardian_enrol_action {
    GUARDIAN_ENROL_ENROLLED = 1,
    GUARDIAN_ENROL_REMOVED = 2,
};
#define GUARDIAN_ROOT_DER_MAX 65536
#define GUARDIAN_ROOT_IDS_MAX 1100
struct guardian_root_row {
    uint8_t sha256[GUARDIAN_HASH_LEN];
    const uint8_t *der; /* valid during the callback only */
    size_t der_len;
    char oem_ids[GUARDIAN_ROOT_IDS_MAX + 1];
    int64_t enrolled_at;
    char operator_name[GUARDIAN_OPERATOR_MAX + 1];
    uint64_t seq; /* its ENROL record */
};
/* One write transaction, synchronous=FULL: when no row of this root exists,
 * a row and its ENROL record (GUARDIAN_ENROL_ENROLLED, the current operator,
 * dated `now`); *record (may be NULL) is that record.  A row of the same
 * root with the same OEM IDs: nothing written, *already true.  With other
 * OEM IDs: CKR_GUARDIAN_REQUEST_INVALID (remove it first), nothing written.
 * CKR_ARGUMENTS_BAD for a DER of 0 or more than GUARDIAN_ROOT_DER_MAX bytes
 * or OEM IDs of 0 or more than GUARDIAN_ROOT_IDS_MAX. */
CK_RV guardian_store_root_enrol(struct guardian_store *st, const uint8_t *der, size_t der_len, const char *oem_ids,
                                int64_t now, struct guardian_audit_record *record, bool *already);
/* One write transaction: the row of the root whose DER has SHA-256 `sha256`
 * deleted and an ENROL record GUARDIAN_ENROL_REMOVED appended; *found false
 * (nothing written) when there is no such row. */
CK_RV guardian_store_root_remove(struct guardian_store *st, const uint8_t sha256[GUARDIAN_HASH_LEN], int64_t now,
                                 bool *found);
/* Every row, ordered by enrolment, as the table holds it (nothing checked). */
CK_RV guardian_store_roots_each(struct guardian_store *st, CK_RV (*fn)(const struct guardian_root_row *r, void *ctx),
                                void *ctx);
/* The rows that count: those whose ENROL record is in the verified chain at
 * or before `anchored_seq` (the chain head the token's anchor names, which the
 * caller has checked agrees with this store), is of type ENROL, action
 * ENROLLED, names `operator_name` (the SO, "so"), and has the digest of the
 * row's DER (recomputed) and of its OEM IDs, with no removal of that root
 * after it.  A row that fails any of these is logged once and skipped (a row
 * inserted or altered with sqlite3).  *skipped (may be NULL): how many. */
CK_RV guardian_store_roots_verified(struct guardian_store *st, uint64_t anchored_seq, const char *operator_name,
                                    CK_RV (*fn)(const struct guardian_root_row *r, void *ctx), void *ctx,
                                    size_t *skipped);

/* ---- the token's anchor of the store ------------------------------------------ */

/* The Guardian's token keeps a copy of what the store must never fall behind
 * (mechs/anchor.c writes it there): the audit chain's head (seq and hash),
 * every imported package and, for the installed ones, the product's next
 * serial.  A restored backup, a deleted or swapped
 * database, or another state directory is behind it.  The encoding is this
 * file's business (docs/audit-format.md, "The anchor").
 *
 * anchor_get: the store's current anchor, malloc'd into *buf.
 * anchor_check: CKR_OK when the store has everything the anchor names (the
 *   record at its seq with its hash, each package, each installed product
 *   with at least its next serial), else
 *   CKR_GUARDIAN_STATE_ROLLBACK with a log line saying what is missing;
 *   CKR_GUARDIAN_AUDIT_CORRUPT for bytes that are no anchor.
 *   *newer is set when the store is strictly ahead of the anchor (it should
 *   be written again). */
CK_RV guardian_store_anchor_get(struct guardian_store *st, uint8_t **buf, size_t *len);
CK_RV guardian_store_anchor_check(struct guardian_store *st, const uint8_t *buf, size_t len, int *newer);
/* The token's anchor is one object that every process on this state moves
 * (mechs/anchor.c: a new object written, then the old one destroyed): its
 * readers and writers take this lock around each look at it, so that no
 * process finds another's half-done update (two objects, or a handle
 * destroyed between two reads).  An exclusive flock on anchor.lock in the
 * state directory (0600, never a link), taken after the caller's own mutex
 * (flock does not exclude threads sharing the descriptor); nothing for an
 * in-memory store.  CKR_OK, or the store's error (logged). */
CK_RV guardian_store_anchor_lock(struct guardian_store *st);
void guardian_store_anchor_unlock(struct guardian_store *st);
/* The chain head's seq an anchor names (0 for bytes that are no anchor). */
uint64_t guardian_store_anchor_seq(const uint8_t *buf, size_t len);

#endif /* GUARDIAN_STORE_H */
