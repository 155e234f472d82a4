/*
 * test_store.c — the durable state store (store/): schema and migrations, the
 * package registry (replay, rollback, supersede), counters and quotas, the
 * commit hook, the audit trail's encoding and chain (and its detection of
 * tampering), and the threat model's "never exceeded": several processes and
 * threads racing one state directory, and processes SIGKILLed mid-production.
 *
 * Most tests use a private in-memory store; the file-backed ones make a fresh
 * temporary directory.  Child processes never return into cmocka: they report
 * through pipes and _exit().
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include <openssl/evp.h>

#include "journal.h"
#include "store.h"

#include "guardian/guardian-pkcs11.h"

#define OEM "acme"
#define PRODUCT "sensor-1"
/* The wall clock: the store refuses a reservation or an import dated before
 * its newest audit record (GUARDIAN_STORE_CLOCK_SLACK_S). */
#define NOW ((int64_t)time(NULL))
#define FAR_FUTURE ((int64_t)4102444800) /* 2100-01-01 */

/* ---- helpers ------------------------------------------------------------------------ */

static struct guardian_package_info make_pkg(uint8_t id, const char *oem, const char *product, uint32_t release,
                                             uint64_t units)
{
    struct guardian_package_info p;

    memset(&p, 0, sizeof(p));
    memset(p.package_id, id, sizeof(p.package_id));
    memset(p.package_digest, (int)(0x80u | id), sizeof(p.package_digest));
    snprintf(p.oem_id, sizeof(p.oem_id), "%s", oem);
    snprintf(p.product_id, sizeof(p.product_id), "%s", product);
    p.release_version = release;
    p.authorised_units = units;
    p.not_after = FAR_FUTURE;
    return p;
}

static CK_RV install(struct guardian_store *st, uint8_t id, const char *oem, const char *product, uint32_t release,
                     uint64_t units)
{
    struct guardian_package_info p = make_pkg(id, oem, product, release, units);
    return guardian_store_package_install(st, &p, NOW, NULL, NULL);
}

static CK_RV reserve(struct guardian_store *st, const char *dev, int64_t now, uint64_t *serial)
{
    return guardian_store_reserve(st, OEM, PRODUCT, (const uint8_t *)dev, strlen(dev), now, serial);
}

static struct guardian_store *open_memory(void)
{
    struct guardian_store *st = NULL;
    assert_int_equal(guardian_store_open_memory(&st), CKR_OK);
    assert_non_null(st);
    return st;
}

struct tmpdir {
    char path[64];
};

static void tmpdir_make(struct tmpdir *d)
{
    snprintf(d->path, sizeof(d->path), "/tmp/guardian-store-XXXXXX");
    assert_non_null(mkdtemp(d->path));
}

static void tmpdir_remove(struct tmpdir *d)
{
    static const char *const files[] = {"guardian.db", "guardian.db-wal", "guardian.db-shm"};
    char path[512];

    DIR *dir = opendir(d->path);
    struct dirent *e;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", d->path, files[i]);
        unlink(path);
    }
    while (dir != NULL && (e = readdir(dir)) != NULL)
        if (strncmp(e->d_name, "issued-", 7) == 0) {
            snprintf(path, sizeof(path), "%s/%s", d->path, e->d_name);
            unlink(path);
        }
    if (dir != NULL)
        closedir(dir);
    rmdir(d->path);
}

static struct guardian_store *open_dir(const struct tmpdir *d)
{
    struct guardian_store *st = NULL;
    assert_int_equal(guardian_store_open(d->path, &st), CKR_OK);
    assert_non_null(st);
    return st;
}

/* Runs SQL on the state database behind the store's back (the tamperer). */
static void tamper(const struct tmpdir *d, const char *sql)
{
    char path[128];
    sqlite3 *db = NULL;

    snprintf(path, sizeof(path), "%s/guardian.db", d->path);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        fail_msg("tamper SQL failed: %s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

static int64_t query_int(const struct tmpdir *d, const char *sql)
{
    char path[128];
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    int64_t v;

    snprintf(path, sizeof(path), "%s/guardian.db", d->path);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

/* Collects the trail (verified by audit_each) for inspection. */
#define MAX_RECORDS 4096
struct trail {
    size_t count;
    struct guardian_audit_record rec[MAX_RECORDS];
};

static CK_RV collect(const struct guardian_audit_record *r, void *ctx)
{
    struct trail *t = ctx;
    if (t->count >= MAX_RECORDS)
        return CKR_BUFFER_TOO_SMALL;
    t->rec[t->count++] = *r;
    return CKR_OK;
}

static CK_RV read_trail(struct guardian_store *st, struct trail *t)
{
    t->count = 0;
    return guardian_store_audit_each(st, collect, t);
}

static struct trail *trail_new(void)
{
    struct trail *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    return t;
}

static size_t count_type(const struct trail *t, int type)
{
    size_t n = 0;
    for (size_t i = 0; i < t->count; i++)
        n += t->rec[i].type == type;
    return n;
}

static void hex_to_bytes(const char *hex, uint8_t *out, size_t len)
{
    assert_int_equal(strlen(hex), 2 * len);
    for (size_t i = 0; i < len; i++) {
        unsigned int b;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &b), 1);
        out[i] = (uint8_t)b;
    }
}

/* ---- open, reopen, schema --------------------------------------------------------------- */

static void test_open_arguments(void **state)
{
    struct guardian_store *st = NULL;
    char longdir[5000];
    (void)state;

    assert_int_equal(guardian_store_open_memory(NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_open(NULL, &st), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_open("/tmp", NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_open("", &st), CKR_ARGUMENTS_BAD);
    memset(longdir, 'a', sizeof(longdir) - 1);
    longdir[0] = '/';
    longdir[sizeof(longdir) - 1] = '\0';
    assert_int_equal(guardian_store_open(longdir, &st), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_open("/nonexistent/guardian/state", &st), CKR_GUARDIAN_STORE_FAILED);
    assert_null(st);
    guardian_store_close(NULL); /* harmless */
}

static void test_open_reopen_file(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_product p;
    struct trail *t = trail_new();
    uint64_t serial = 0;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    assert_int_equal(reserve(st, "dev-1", NOW, &serial), CKR_OK);
    guardian_store_close(st);

    assert_int_equal(query_int(&d, "PRAGMA user_version"), 3);

    /* Reopen twice: the migration is not applied again, the data is there. */
    for (int round = 0; round < 2; round++) {
        st = open_dir(&d);
        assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
        assert_int_equal(p.issued_units, 1);
        assert_int_equal(p.remaining_units, 9);
        assert_int_equal(p.next_serial, 2);
        assert_int_equal(read_trail(st, t), CKR_OK);
        assert_int_equal(t->count, 2);
        guardian_store_close(st);
        assert_int_equal(query_int(&d, "PRAGMA user_version"), 3);
        assert_int_equal(query_int(&d, "SELECT count(*) FROM sqlite_schema WHERE name = 'audit'"), 1);
    }

    /* WAL is persistent in the file. */
    {
        char path[128];
        sqlite3 *db = NULL;
        sqlite3_stmt *s = NULL;
        snprintf(path, sizeof(path), "%s/guardian.db", d.path);
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
        sqlite3_finalize(s);
        sqlite3_close(db);
    }

    /* A database from a newer module is refused, not "migrated". */
    tamper(&d, "PRAGMA user_version = 99");
    st = NULL;
    assert_int_equal(guardian_store_open(d.path, &st), CKR_GUARDIAN_STORE_FAILED);
    assert_null(st);

    /* Not a database at all. */
    tmpdir_remove(&d);
    tmpdir_make(&d);
    {
        char path[128];
        FILE *f;
        snprintf(path, sizeof(path), "%s/guardian.db", d.path);
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("this is not an SQLite database, not even close; it is just text.\n", f);
        fclose(f);
    }
    assert_int_equal(guardian_store_open(d.path, &st), CKR_GUARDIAN_STORE_FAILED);
    assert_null(st);
    tmpdir_remove(&d);
    free(t);
}

/* A migration that fails leaves the database as it was: version 0, no
 * half-made schema. */
static void test_migration_failure_rolls_back(void **state)
{
    struct tmpdir d;
    struct guardian_store *st = NULL;
    (void)state;

    tmpdir_make(&d);
    {
        char path[128];
        sqlite3 *db = NULL;
        snprintf(path, sizeof(path), "%s/guardian.db", d.path);
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        /* A table in the way of the version 1 schema ("audit" is created
         * after "packages", so "packages" must be rolled back). */
        assert_int_equal(sqlite3_exec(db, "CREATE TABLE audit (x)", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
    }
    assert_int_equal(guardian_store_open(d.path, &st), CKR_GUARDIAN_STORE_FAILED);
    assert_null(st);
    assert_int_equal(query_int(&d, "PRAGMA user_version"), 0);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM sqlite_schema WHERE name = 'packages'"), 0);

    /* Once the obstacle is gone, the same directory migrates. */
    tamper(&d, "DROP TABLE audit");
    st = open_dir(&d);
    guardian_store_close(st);
    assert_int_equal(query_int(&d, "PRAGMA user_version"), 3);
    tmpdir_remove(&d);
}

/* ---- package registry ------------------------------------------------------------------- */

static void test_install_replay_rollback_supersede(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 10);
    struct guardian_package_info b = make_pkg(0xB2, OEM, PRODUCT, 2, 5);
    struct guardian_package_info c = make_pkg(0xC3, OEM, PRODUCT, 2, 99);
    struct guardian_package_info old = make_pkg(0xD4, OEM, PRODUCT, 1, 99);
    struct guardian_product p;
    struct trail *t = trail_new();
    uint64_t serial = 0;
    (void)state;

    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(guardian_store_package_check(st, &a, NOW), CKR_OK);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_package_check(st, &a, NOW), CKR_GUARDIAN_PACKAGE_REPLAYED);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_REPLAYED);

    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_string_equal(p.oem_id, OEM);
    assert_string_equal(p.product_id, PRODUCT);
    assert_memory_equal(p.package_id, a.package_id, GUARDIAN_PACKAGE_ID_LEN);
    assert_int_equal(p.release_version, 1);
    assert_int_equal(p.authorised_units, 10);
    assert_int_equal(p.issued_units, 0);
    assert_int_equal(p.remaining_units, 10);
    assert_int_equal(p.next_serial, 1);
    assert_int_equal(p.not_after, FAR_FUTURE);
    assert_true(p.installed_at > 0);

    for (uint64_t i = 1; i <= 3; i++) {
        assert_int_equal(reserve(st, "dev", NOW, &serial), CKR_OK);
        assert_int_equal(serial, i);
    }

    /* Same release, new ID: rollback.  Older release: rollback. */
    assert_int_equal(guardian_store_package_check(st, &old, NOW), CKR_GUARDIAN_PACKAGE_ROLLBACK);
    assert_int_equal(guardian_store_package_install(st, &old, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_ROLLBACK);
    old.release_version = 0;
    assert_int_equal(guardian_store_package_install(st, &old, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_ROLLBACK);

    /* Newer release supersedes: its allowance, issued back to 0, serials continue. */
    assert_int_equal(guardian_store_package_install(st, &b, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_memory_equal(p.package_id, b.package_id, GUARDIAN_PACKAGE_ID_LEN);
    assert_int_equal(p.release_version, 2);
    assert_int_equal(p.authorised_units, 5);
    assert_int_equal(p.issued_units, 0);
    assert_int_equal(p.remaining_units, 5);
    assert_int_equal(p.next_serial, 4);
    assert_int_equal(reserve(st, "dev", NOW, &serial), CKR_OK);
    assert_int_equal(serial, 4);

    /* The superseded package is still a replay, not a rollback. */
    assert_int_equal(guardian_store_package_check(st, &a, NOW), CKR_GUARDIAN_PACKAGE_REPLAYED);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_REPLAYED);
    assert_int_equal(guardian_store_package_install(st, &b, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_REPLAYED);
    /* Same release as installed, new ID: rollback. */
    assert_int_equal(guardian_store_package_check(st, &c, NOW), CKR_GUARDIAN_PACKAGE_ROLLBACK);
    assert_int_equal(guardian_store_package_install(st, &c, NOW, NULL, NULL), CKR_GUARDIAN_PACKAGE_ROLLBACK);

    /* Another product of the same OEM is independent. */
    assert_int_equal(install(st, 0xE5, OEM, "sensor-2", 1, 1), CKR_OK);

    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_IMPORT), 3);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_RESERVE), 4);
    assert_int_equal(t->count, 7);
    /* The IMPORT record carries the package. */
    assert_int_equal(t->rec[0].type, GUARDIAN_AUDIT_IMPORT);
    assert_memory_equal(t->rec[0].package_id, a.package_id, GUARDIAN_PACKAGE_ID_LEN);
    assert_memory_equal(t->rec[0].digest, a.package_digest, GUARDIAN_HASH_LEN);
    assert_int_equal(t->rec[0].release_version, 1);
    assert_int_equal(t->rec[0].authorised_units, 10);
    assert_int_equal(t->rec[0].serial, 0);
    assert_int_equal(t->rec[0].device_id_len, 0);
    free(t);
    guardian_store_close(st);
}

struct order_ctx {
    int n;
    char seen[8][2 * (GUARDIAN_ID_MAX + 1)];
    int stop_after;
};

static CK_RV record_order(const struct guardian_product *p, void *ctx)
{
    struct order_ctx *o = ctx;
    if (o->n >= 8)
        return CKR_BUFFER_TOO_SMALL;
    snprintf(o->seen[o->n], sizeof(o->seen[o->n]), "%s/%s", p->oem_id, p->product_id);
    o->n++;
    if (o->stop_after != 0 && o->n == o->stop_after)
        return CKR_CANCEL;
    return CKR_OK;
}

static void test_products_each_order(void **state)
{
    struct guardian_store *st = open_memory();
    struct order_ctx o;
    (void)state;

    memset(&o, 0, sizeof(o));
    assert_int_equal(guardian_store_products_each(st, record_order, &o), CKR_OK);
    assert_int_equal(o.n, 0);

    assert_int_equal(install(st, 1, "b", "x", 1, 1), CKR_OK);
    assert_int_equal(install(st, 2, "a", "z", 1, 1), CKR_OK);
    assert_int_equal(install(st, 3, "a", "y", 1, 1), CKR_OK);
    assert_int_equal(install(st, 4, "B", "w", 1, 1), CKR_OK); /* bytewise: "B" < "a" */
    assert_int_equal(install(st, 5, "a", "y", 2, 1), CKR_OK); /* supersede: still one entry */

    assert_int_equal(guardian_store_products_each(st, record_order, &o), CKR_OK);
    assert_int_equal(o.n, 4);
    assert_string_equal(o.seen[0], "B/w");
    assert_string_equal(o.seen[1], "a/y");
    assert_string_equal(o.seen[2], "a/z");
    assert_string_equal(o.seen[3], "b/x");

    memset(&o, 0, sizeof(o));
    o.stop_after = 2;
    assert_int_equal(guardian_store_products_each(st, record_order, &o), CKR_CANCEL);
    assert_int_equal(o.n, 2);

    assert_int_equal(guardian_store_products_each(st, NULL, &o), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_products_each(NULL, record_order, &o), CKR_ARGUMENTS_BAD);
    guardian_store_close(st);
}

/* ---- counters ---------------------------------------------------------------------- */

static void test_reserve_until_exhausted(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_product p;
    struct trail *t = trail_new();
    uint64_t serial = 0;
    const int64_t now = NOW;
    (void)state;

    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 7), CKR_OK);
    for (uint64_t i = 1; i <= 7; i++) {
        char dev[16];
        snprintf(dev, sizeof(dev), "dev-%llu", (unsigned long long)i);
        assert_int_equal(reserve(st, dev, now, &serial), CKR_OK);
        assert_int_equal(serial, i);
        assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
        assert_int_equal(p.issued_units, i);
        assert_int_equal(p.remaining_units, 7 - i);
    }
    serial = 12345;
    for (int i = 0; i < 3; i++)
        assert_int_equal(reserve(st, "dev-x", NOW, &serial), CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(serial, 12345); /* untouched on failure */
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.issued_units, 7);
    assert_int_equal(p.remaining_units, 0);
    assert_int_equal(p.next_serial, 8);

    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 8);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_RESERVE), 7);
    assert_int_equal(t->rec[7].serial, 7);
    assert_int_equal(t->rec[7].time, now);
    assert_int_equal(t->rec[7].device_id_len, 5);
    assert_memory_equal(t->rec[7].device_id, "dev-7", 5);

    /* A zero-unit package is installable and immediately exhausted. */
    assert_int_equal(install(st, 2, OEM, PRODUCT, 2, 0), CKR_OK);
    assert_int_equal(reserve(st, "dev-y", NOW, &serial), CKR_GUARDIAN_QUOTA_EXHAUSTED);
    free(t);
    guardian_store_close(st);
}

static void test_expiry_and_unknown(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info pkg = make_pkg(1, OEM, PRODUCT, 1, 10);
    struct guardian_product p;
    uint64_t serial = 0;
    const int64_t now = NOW;
    (void)state;

    assert_int_equal(reserve(st, "dev", now, &serial), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    pkg.not_after = now;
    /* An expired package is not installed; one that expires at `now` is. */
    assert_int_equal(guardian_store_package_check(st, &pkg, now + 1), CKR_GUARDIAN_PACKAGE_EXPIRED);
    assert_int_equal(guardian_store_package_install(st, &pkg, now + 1, NULL, NULL), CKR_GUARDIAN_PACKAGE_EXPIRED);
    assert_int_equal(guardian_store_package_install(st, &pkg, now, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_reserve(st, OEM, "sensor-9", (const uint8_t *)"d", 1, now, &serial),
                     CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(guardian_store_reserve(st, "acm", PRODUCT, (const uint8_t *)"d", 1, now, &serial),
                     CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(reserve(st, "dev", now, &serial), CKR_OK); /* not_after itself is still valid */
    assert_int_equal(reserve(st, "dev", now + 1, &serial), CKR_GUARDIAN_PACKAGE_EXPIRED);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.issued_units, 1);
    assert_int_equal(p.remaining_units, 9);
    assert_int_equal(p.next_serial, 2);
    guardian_store_close(st);
}

static void test_commit_issue(void **state)
{
    struct guardian_store *st = open_memory();
    struct trail *t = trail_new();
    uint8_t digest[GUARDIAN_HASH_LEN];
    uint64_t s1 = 0, s2 = 0;
    (void)state;

    memset(digest, 0x5A, sizeof(digest));
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    assert_int_equal(install(st, 2, OEM, "other", 1, 10), CKR_OK);
    assert_int_equal(reserve(st, "dev-1", NOW, &s1), CKR_OK);
    assert_int_equal(reserve(st, "dev-2", NOW, &s2), CKR_OK);

    /* Never reserved, other product, other device: refused. */
    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, 99, (const uint8_t *)"dev-1", 5, digest),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, OEM, "other", s1, (const uint8_t *)"dev-1", 5, digest),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, s1, (const uint8_t *)"dev-2", 5, digest),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, s1, (const uint8_t *)"dev-1x", 6, digest),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, 0, (const uint8_t *)"dev-1", 5, digest),
                     CKR_ARGUMENTS_BAD);

    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, s2, (const uint8_t *)"dev-2", 5, digest),
                     CKR_OK);
    /* Twice: refused, one ISSUE record only. */
    assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, s2, (const uint8_t *)"dev-2", 5, digest),
                     CKR_ARGUMENTS_BAD);

    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 5);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), 1);
    assert_int_equal(t->rec[4].type, GUARDIAN_AUDIT_ISSUE);
    assert_int_equal(t->rec[4].serial, s2);
    assert_int_equal(t->rec[4].device_id_len, 5);
    assert_memory_equal(t->rec[4].device_id, "dev-2", 5);
    assert_memory_equal(t->rec[4].digest, digest, GUARDIAN_HASH_LEN);
    assert_true(t->rec[4].time > 0);
    free(t);
    guardian_store_close(st);
}

/* ---- the commit hook ------------------------------------------------------------------ */

struct hook_ctx {
    int calls;
    CK_RV result;
    struct guardian_store *reenter; /* call the store from inside the hook */
    CK_RV reenter_rv;
};

static CK_RV hook(void *ctx)
{
    struct hook_ctx *h = ctx;
    struct guardian_product p;

    h->calls++;
    if (h->reenter != NULL)
        h->reenter_rv = guardian_store_product_get(h->reenter, OEM, PRODUCT, &p);
    return h->result;
}

static void test_commit_hook(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info v1 = make_pkg(1, OEM, PRODUCT, 1, 10);
    struct guardian_package_info v2 = make_pkg(2, OEM, PRODUCT, 2, 20);
    struct hook_ctx h = {0, CKR_FUNCTION_FAILED, NULL, CKR_OK};
    struct guardian_product p;
    struct trail *t = trail_new();
    uint64_t serial = 0;
    (void)state;

    /* A failing hook on a fresh product: nothing at all is left behind. */
    assert_int_equal(guardian_store_package_install(st, &v1, NOW, hook, &h), CKR_FUNCTION_FAILED);
    assert_int_equal(h.calls, 1);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(guardian_store_package_check(st, &v1, NOW), CKR_OK); /* not recorded: no replay */
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 0);
    assert_int_equal(reserve(st, "dev", NOW, &serial), CKR_GUARDIAN_PRODUCT_UNKNOWN);

    /* A succeeding hook: installed, called once. */
    h.result = CKR_OK;
    h.calls = 0;
    assert_int_equal(guardian_store_package_install(st, &v1, NOW, hook, &h), CKR_OK);
    assert_int_equal(h.calls, 1);
    assert_int_equal(reserve(st, "dev", NOW, &serial), CKR_OK);

    /* A failing hook on a supersede: the old release stays installed, untouched. */
    h.result = CKR_DEVICE_ERROR;
    assert_int_equal(guardian_store_package_install(st, &v2, NOW, hook, &h), CKR_DEVICE_ERROR);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_memory_equal(p.package_id, v1.package_id, GUARDIAN_PACKAGE_ID_LEN);
    assert_int_equal(p.issued_units, 1);
    assert_int_equal(p.remaining_units, 9);
    assert_int_equal(p.next_serial, 2);
    assert_int_equal(guardian_store_package_check(st, &v2, NOW), CKR_OK);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 2); /* IMPORT v1, RESERVE */

    /* A hook that calls back into the store gets an error, not a deadlock;
     * returning it rolls the install back. */
    h.result = CKR_OK;
    h.reenter = st;
    h.reenter_rv = CKR_OK;
    assert_int_equal(guardian_store_package_install(st, &v2, NOW, hook, &h), CKR_OK);
    assert_int_equal(h.reenter_rv, CKR_GENERAL_ERROR);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.release_version, 2);
    assert_int_equal(p.next_serial, 2);

    /* The rollbacks left no hole in the chain. */
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 3);
    for (size_t i = 0; i < t->count; i++)
        assert_int_equal(t->rec[i].seq, i + 1);
    free(t);
    guardian_store_close(st);
}

/* ---- argument checks --------------------------------------------------------------------- */

static CK_RV product_ignore(const struct guardian_product *p, void *ctx)
{
    (void)p;
    (void)ctx;
    return CKR_OK;
}

static CK_RV audit_ignore(const struct guardian_audit_record *r, void *ctx)
{
    (void)r;
    (void)ctx;
    return CKR_OK;
}

static void test_arguments(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info pkg = make_pkg(1, OEM, PRODUCT, 1, 10);
    struct guardian_product p;
    char id64[GUARDIAN_ID_MAX + 1], id65[GUARDIAN_ID_MAX + 2];
    uint8_t dev[GUARDIAN_DEVICE_ID_MAX + 1], digest[GUARDIAN_HASH_LEN] = {0};
    uint64_t serial = 0;
    (void)state;

    memset(id64, 'o', sizeof(id64) - 1);
    id64[sizeof(id64) - 1] = '\0';
    memset(id65, 'o', sizeof(id65) - 1);
    id65[sizeof(id65) - 1] = '\0';
    memset(dev, 'd', sizeof(dev));

    /* NULLs */
    assert_int_equal(guardian_store_package_check(NULL, &pkg, NOW), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_package_check(st, NULL, NOW), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_package_install(NULL, &pkg, NOW, NULL, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_package_install(st, NULL, NOW, NULL, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(NULL, OEM, PRODUCT, &p), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, NULL, PRODUCT, &p), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, OEM, NULL, &p), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_products_each(st, product_ignore, NULL), CKR_OK);
    assert_int_equal(guardian_store_audit_each(NULL, audit_ignore, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_audit_each(st, NULL, NULL), CKR_ARGUMENTS_BAD);

    /* ID lengths: 64 bytes is the limit; 65, empty, or no terminator is refused. */
    pkg = make_pkg(1, id64, id64, 1, 10);
    assert_int_equal(guardian_store_package_install(st, &pkg, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_product_get(st, id64, id64, &p), CKR_OK);
    assert_string_equal(p.oem_id, id64);
    assert_int_equal(guardian_store_product_get(st, id65, id64, &p), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, id64, id65, &p), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, "", PRODUCT, &p), CKR_ARGUMENTS_BAD);
    pkg = make_pkg(2, OEM, PRODUCT, 1, 10);
    memset(pkg.oem_id, 'x', sizeof(pkg.oem_id)); /* no terminator anywhere */
    assert_int_equal(guardian_store_package_check(st, &pkg, NOW), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_package_install(st, &pkg, NOW, NULL, NULL), CKR_ARGUMENTS_BAD);
    pkg = make_pkg(2, OEM, "", 1, 10);
    assert_int_equal(guardian_store_package_install(st, &pkg, NOW, NULL, NULL), CKR_ARGUMENTS_BAD);
    pkg = make_pkg(2, OEM, PRODUCT, 1, (uint64_t)INT64_MAX + 1);
    assert_int_equal(guardian_store_package_install(st, &pkg, NOW, NULL, NULL), CKR_ARGUMENTS_BAD);

    /* Device IDs: 1..128 bytes. */
    assert_int_equal(guardian_store_reserve(st, id64, id64, dev, GUARDIAN_DEVICE_ID_MAX, NOW, &serial), CKR_OK);
    assert_int_equal(guardian_store_commit_issue(st, id64, id64, serial, dev, GUARDIAN_DEVICE_ID_MAX, digest),
                     CKR_OK);
    assert_int_equal(guardian_store_reserve(st, id64, id64, dev, GUARDIAN_DEVICE_ID_MAX + 1, NOW, &serial),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_reserve(st, id64, id64, dev, 0, NOW, &serial), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_reserve(st, id64, id64, NULL, 4, NOW, &serial), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_reserve(st, id64, id64, dev, 4, NOW, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_reserve(st, id65, id64, dev, 4, NOW, &serial), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_reserve(NULL, id64, id64, dev, 4, NOW, &serial), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, id64, id64, 1, dev, GUARDIAN_DEVICE_ID_MAX + 1, digest),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, id64, id64, 1, dev, 4, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(st, id64, NULL, 1, dev, 4, digest), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_commit_issue(NULL, id64, id64, 1, dev, 4, digest), CKR_ARGUMENTS_BAD);

    /* The trail still verifies after all those refusals. */
    assert_int_equal(guardian_store_audit_each(st, audit_ignore, NULL), CKR_OK);
    guardian_store_close(st);
}

/* ---- the audit encoding ------------------------------------------------------------------- */

/* The vectors of docs/audit-format.md, computed there independently (Python). */
static const char vec1_enc[] =
    "4744415544495431000000000000000100000001000000006553f1000000000461636d650000000873656e736f722d31000000"
    "0000000000000000001111111111111111111111111111111111111111111111111111111111111111222222222222222222222222"
    "222222220000000300000000000003e8000000000000000000000000000000000000000000000000000000000000000"
    "0";
static const char vec1_hash[] = "46923757bc7fcc2f5432a91fbf61f2cb7ddcd424293392157d35b55578fff54a";
static const char vec2_hash[] = "d961da1506bea430383e604a917c47f3f92427e1472347bfc3831d483bcd8ce5";
static const char vec3_hash[] = "eb6e789c5a20f27dc768a419af7501b62b08f332fad04aeaea4491a4da9ed046";

static void vector_record(int which, struct guardian_audit_record *r, const uint8_t prev[GUARDIAN_HASH_LEN])
{
    memset(r, 0, sizeof(*r));
    snprintf(r->oem_id, sizeof(r->oem_id), "acme");
    snprintf(r->product_id, sizeof(r->product_id), "sensor-1");
    memcpy(r->prev_hash, prev, GUARDIAN_HASH_LEN);
    switch (which) {
    case 1:
        r->seq = 1;
        r->type = GUARDIAN_AUDIT_IMPORT;
        r->time = 1700000000;
        memset(r->digest, 0x11, GUARDIAN_HASH_LEN);
        memset(r->package_id, 0x22, GUARDIAN_PACKAGE_ID_LEN);
        r->release_version = 3;
        r->authorised_units = 1000;
        break;
    case 2:
    case 3:
        r->seq = (uint64_t)which;
        r->type = which == 2 ? GUARDIAN_AUDIT_RESERVE : GUARDIAN_AUDIT_ISSUE;
        r->time = which == 2 ? 1700000100 : 1700000101;
        r->serial = 1;
        memcpy(r->device_id, "DEV-0001", 8);
        r->device_id_len = 8;
        if (which == 3)
            memset(r->digest, 0x33, GUARDIAN_HASH_LEN);
        break;
    }
}

static const char vec4_enc[] =
    "4744415544495431000000000000000400000005000000006553f1c80000000461636d650000000873656e736f722d3100000000000000"
    "02000000276973737565642d343234322d313730303030303030303030303030303030302e6a6f75726e616c000000000000000000000000"
    "000000000000000000000000000000000000000022222222222222222222222222222222000000010000000000000003eb6e789c5a20f27d"
    "c768a419af7501b62b08f332fad04aeaea4491a4da9ed046";
static const char vec4_hash[] = "1ab382f4242c248f9f4db691c362bbd504413e914a911fcfc6c1b6da89ef1cff";

static void test_audit_encoding_vectors(void **state)
{
    struct guardian_audit_record r;
    uint8_t buf[512], expect[152], zero[GUARDIAN_HASH_LEN] = {0}, h[GUARDIAN_HASH_LEN], want[GUARDIAN_HASH_LEN];
    (void)state;

    vector_record(1, &r, zero);
    hex_to_bytes(vec1_enc, expect, sizeof(expect));
    assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), 152);
    assert_memory_equal(buf, expect, sizeof(expect));
    assert_int_equal(guardian_audit_encode(&r, buf, 152), 152); /* exact fit */
    assert_int_equal(guardian_audit_encode(&r, buf, 151), 0);   /* one short */
    assert_int_equal(guardian_audit_encode(NULL, buf, sizeof(buf)), 0);
    assert_int_equal(guardian_audit_encode(&r, NULL, sizeof(buf)), 0);
    assert_int_equal(guardian_audit_hash(&r, h), CKR_OK);
    hex_to_bytes(vec1_hash, want, sizeof(want));
    assert_memory_equal(h, want, GUARDIAN_HASH_LEN);

    vector_record(2, &r, want);
    assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), 160);
    assert_int_equal(guardian_audit_hash(&r, h), CKR_OK);
    hex_to_bytes(vec2_hash, want, sizeof(want));
    assert_memory_equal(h, want, GUARDIAN_HASH_LEN);

    vector_record(3, &r, want);
    assert_int_equal(guardian_audit_hash(&r, h), CKR_OK);
    hex_to_bytes(vec3_hash, want, sizeof(want));
    assert_memory_equal(h, want, GUARDIAN_HASH_LEN);

    /* Record 4: JOURNAL_LOST of serials 2..4 (docs/audit-format.md). */
    {
        static const char journal[] = "issued-4242-1700000000000000000.journal";
        uint8_t enc4[191];
        memset(&r, 0, sizeof(r));
        r.seq = 4;
        r.type = GUARDIAN_AUDIT_JOURNAL_LOST;
        r.time = 1700000200;
        strcpy(r.oem_id, "acme");
        strcpy(r.product_id, "sensor-1");
        r.serial = 2;
        memcpy(r.device_id, journal, strlen(journal));
        r.device_id_len = strlen(journal);
        memset(r.package_id, 0x22, sizeof(r.package_id));
        r.release_version = GUARDIAN_JOURNAL_MISSING;
        r.authorised_units = 3;
        memcpy(r.prev_hash, want, GUARDIAN_HASH_LEN);
        hex_to_bytes(vec4_enc, enc4, sizeof(enc4));
        assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), sizeof(enc4));
        assert_memory_equal(buf, enc4, sizeof(enc4));
        assert_int_equal(guardian_audit_hash(&r, h), CKR_OK);
        hex_to_bytes(vec4_hash, want, sizeof(want));
        assert_memory_equal(h, want, GUARDIAN_HASH_LEN);
    }

    /* Largest record: 396 bytes.  Negative time is two's complement. */
    memset(&r, 0, sizeof(r));
    memset(r.oem_id, 'o', GUARDIAN_ID_MAX);
    memset(r.product_id, 'p', GUARDIAN_ID_MAX);
    r.device_id_len = GUARDIAN_DEVICE_ID_MAX;
    r.time = -1;
    assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), 396);
    assert_memory_equal(buf + 20, "\xff\xff\xff\xff\xff\xff\xff\xff", 8);

    /* Unencodable records: no hash (all zeros, CKR_ARGUMENTS_BAD). */
    memset(r.oem_id, 'o', sizeof(r.oem_id)); /* no terminator */
    assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), 0);
    memset(h, 0xEE, sizeof(h));
    assert_int_equal(guardian_audit_hash(&r, h), CKR_ARGUMENTS_BAD);
    assert_memory_equal(h, zero, sizeof(h));
    r.oem_id[0] = '\0';
    r.device_id_len = GUARDIAN_DEVICE_ID_MAX + 1;
    assert_int_equal(guardian_audit_encode(&r, buf, sizeof(buf)), 0);
    assert_int_equal(guardian_audit_hash(&r, h), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_audit_hash(NULL, h), CKR_ARGUMENTS_BAD);
}

/* ---- the audit chain ------------------------------------------------------------------------- */

static CK_RV stop_after(const struct guardian_audit_record *r, void *ctx)
{
    int *left = ctx;
    (void)r;
    return --*left == 0 ? CKR_CANCEL : CKR_OK;
}

static void test_audit_chain_clean(void **state)
{
    struct guardian_store *st = open_memory();
    struct trail *t = trail_new();
    uint8_t zero[GUARDIAN_HASH_LEN] = {0}, h[GUARDIAN_HASH_LEN], digest[GUARDIAN_HASH_LEN];
    uint64_t serial = 0;
    (void)state;

    assert_int_equal(read_trail(st, t), CKR_OK); /* empty trail verifies */
    assert_int_equal(t->count, 0);

    memset(digest, 0x42, sizeof(digest));
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 200), CKR_OK);
    for (int i = 0; i < 100; i++) { /* > one page of audit_each */
        assert_int_equal(reserve(st, "device", NOW + i, &serial), CKR_OK);
        assert_int_equal(guardian_store_commit_issue(st, OEM, PRODUCT, serial, (const uint8_t *)"device", 6,
                                                     digest),
                         CKR_OK);
    }
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, 201);
    for (size_t i = 0; i < t->count; i++) {
        const struct guardian_audit_record *r = &t->rec[i];
        assert_int_equal(r->seq, i + 1);
        assert_memory_equal(r->prev_hash, i == 0 ? zero : t->rec[i - 1].hash, GUARDIAN_HASH_LEN);
        assert_int_equal(guardian_audit_hash(r, h), CKR_OK);
        assert_memory_equal(h, r->hash, GUARDIAN_HASH_LEN);
        if (i > 0) {
            assert_int_equal(r->type, i % 2 == 1 ? GUARDIAN_AUDIT_RESERVE : GUARDIAN_AUDIT_ISSUE);
            assert_int_equal(r->serial, (i + 1) / 2);
        }
    }
    /* fn's value stops the walk. */
    {
        int left = 70;
        assert_int_equal(guardian_store_audit_each(st, stop_after, &left), CKR_CANCEL);
        assert_int_equal(left, 0);
    }
    free(t);
    guardian_store_close(st);
}

/* A file-backed trail of 1 IMPORT, then 3 x (RESERVE, ISSUE): seq 1..7. */
static void make_trail(struct tmpdir *d)
{
    struct guardian_store *st;
    uint8_t digest[GUARDIAN_HASH_LEN];
    uint64_t serial = 0;

    tmpdir_make(d);
    st = open_dir(d);
    memset(digest, 0x77, sizeof(digest));
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(reserve(st, "dev-a", NOW, &serial), CKR_OK);
        assert_int_equal(
            guardian_store_commit_issue(st, OEM, PRODUCT, serial, (const uint8_t *)"dev-a", 5, digest), CKR_OK);
    }
    guardian_store_close(st);
}

static CK_RV verify_dir(const struct tmpdir *d, size_t *delivered)
{
    struct guardian_store *st = open_dir(d);
    struct trail *t = trail_new();
    CK_RV rv = read_trail(st, t);
    if (delivered != NULL)
        *delivered = t->count;
    free(t);
    guardian_store_close(st);
    return rv;
}

static void test_audit_tamper(void **state)
{
    static const struct {
        const char *what;
        const char *sql;
    } cases[] = {
        {"serial altered", "UPDATE audit SET serial = 99 WHERE seq = 4"},
        {"device altered", "UPDATE audit SET device_id = x'6465762d62' WHERE seq = 2"},
        {"time altered", "UPDATE audit SET time = time + 1 WHERE seq = 1"},
        {"units altered", "UPDATE audit SET authorised_units = 1000000 WHERE seq = 1"},
        {"cert digest altered", "UPDATE audit SET digest = zeroblob(32) WHERE seq = 3"},
        {"type altered", "UPDATE audit SET type = 2 WHERE seq = 3"},
        {"middle deleted", "DELETE FROM audit WHERE seq = 3"},
        {"first deleted", "DELETE FROM audit WHERE seq = 1"},
        {"last deleted", "DELETE FROM audit WHERE seq = 7"},
        {"two records swapped",
         "BEGIN; UPDATE audit SET seq = 100 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5;"
         "UPDATE audit SET seq = 5 WHERE seq = 100; COMMIT"},
        {"record renumbered into a gap", "UPDATE audit SET seq = 8 WHERE seq = 7"},
        {"hash replaced", "UPDATE audit SET hash = zeroblob(32) WHERE seq = 5"},
        {"hash truncated", "UPDATE audit SET hash = x'00' WHERE seq = 5"},
        {"device id made text", "UPDATE audit SET device_id = 'dev-a' WHERE seq = 2"},
        {"head missing", "DELETE FROM audit_head"},
        {"everything deleted", "DELETE FROM audit"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tmpdir d;
        size_t delivered = 99;
        make_trail(&d);
        assert_int_equal(verify_dir(&d, &delivered), CKR_OK);
        assert_int_equal(delivered, 7);
        tamper(&d, cases[i].sql);
        if (verify_dir(&d, NULL) != CKR_GUARDIAN_AUDIT_CORRUPT)
            fail_msg("tampering not detected: %s", cases[i].what);
        tmpdir_remove(&d);
    }
    /* Not detectable here, by design: someone who can rewrite the database
     * can also cut the tail AND move the head back (or rehash everything).
     * The signed export anchors the trail against that (audit-format.md). */
}

/* An attacker who alters a record and recomputes its own hash breaks the link
 * to the next record. */
static void test_audit_tamper_rehash(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct trail *t = trail_new();
    struct guardian_audit_record r;
    char sql[512], hex[2 * GUARDIAN_HASH_LEN + 1];
    (void)state;

    make_trail(&d);
    st = open_dir(&d);
    assert_int_equal(read_trail(st, t), CKR_OK);
    guardian_store_close(st);
    r = t->rec[3]; /* seq 4, ISSUE */
    r.serial = 42;
    assert_int_equal(guardian_audit_hash(&r, r.hash), CKR_OK);
    for (size_t i = 0; i < GUARDIAN_HASH_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", r.hash[i]);
    snprintf(sql, sizeof(sql), "UPDATE audit SET serial = 42, hash = x'%s' WHERE seq = 4", hex);
    tamper(&d, sql);
    {
        size_t delivered = 0;
        assert_int_equal(verify_dir(&d, &delivered), CKR_GUARDIAN_AUDIT_CORRUPT);
        assert_int_equal(delivered, 4); /* records 1..4 verify; 5 no longer follows 4 */
    }
    free(t);
    tmpdir_remove(&d);
}

/* ---- processes: fork, concurrency, crashes ------------------------------------------------------ */

static void write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(90);
        p += n;
        len -= (size_t)n;
    }
}

/* Reads 8-byte messages until EOF into out[] (at most cap); returns the count. */
static size_t read_u64s(int fd, uint64_t *out, size_t cap)
{
    uint8_t buf[8];
    size_t have = 0, count = 0;

    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        have += (size_t)n;
        if (have == sizeof(buf)) {
            assert_true(count < cap);
            memcpy(&out[count++], buf, sizeof(buf));
            have = 0;
        }
    }
    assert_int_equal(have, 0); /* writes of 8 bytes to a pipe are atomic */
    return count;
}

static int wait_child(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        assert_int_equal(errno, EINTR);
    return status;
}

/* After fork(), the child cannot use the parent's store: it must open its own. */
static void test_fork_child_refused(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_product p;
    int result[2], status;
    char verdict = 0;
    pid_t pid;
    (void)state;

    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    assert_int_equal(pipe(result), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint64_t serial;
        struct guardian_store *mine = NULL;
        char ok = guardian_store_product_get(st, OEM, PRODUCT, &p) == CKR_GUARDIAN_STORE_FAILED &&
                          reserve(st, "dev", NOW, &serial) == CKR_GUARDIAN_STORE_FAILED &&
                          guardian_store_open_memory(&mine) == CKR_OK &&
                          guardian_store_product_get(mine, OEM, PRODUCT, &p) == CKR_GUARDIAN_PRODUCT_UNKNOWN
                      ? 'Y'
                      : 'N';
        guardian_store_close(mine);
        guardian_store_close(st); /* the inherited connection: abandoned, not closed */
        write_all(result[1], &ok, 1);
        /* The verdict goes through the pipe, not the exit status: under
         * valgrind the abandoned connection (by design) is reported as
         * "possibly lost" in this child and would turn its status into 1. */
        _exit(0);
    }
    close(result[1]);
    assert_int_equal(read(result[0], &verdict, 1), 1);
    close(result[0]);
    assert_int_equal(verdict, 'Y');
    status = wait_child(pid);
    assert_true(WIFEXITED(status));
    /* The parent's store is unaffected. */
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.remaining_units, 10);
    guardian_store_close(st);
}

#define RACE_QUOTA 50
#define RACE_PROCS 2
#define RACE_THREADS 2

struct racer {
    struct guardian_store *st;
    int index;
    size_t ok;
    uint64_t serials[RACE_QUOTA + 1];
    CK_RV failure;
};

static void *race_thread(void *arg)
{
    struct racer *r = arg;
    uint8_t digest[GUARDIAN_HASH_LEN];
    char dev[32];

    memset(digest, 0xC5, sizeof(digest));
    for (;;) {
        uint64_t serial = 0;
        int len = snprintf(dev, sizeof(dev), "race-%d-%zu", r->index, r->ok);
        CK_RV rv = guardian_store_reserve(r->st, OEM, PRODUCT, (const uint8_t *)dev, (size_t)len, NOW, &serial);
        if (rv == CKR_GUARDIAN_QUOTA_EXHAUSTED)
            break;
        if (rv != CKR_OK || r->ok >= RACE_QUOTA) {
            r->failure = rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
            break;
        }
        r->serials[r->ok++] = serial;
        rv = guardian_store_commit_issue(r->st, OEM, PRODUCT, serial, (const uint8_t *)dev, (size_t)len, digest);
        if (rv != CKR_OK) {
            r->failure = rv;
            break;
        }
    }
    return NULL;
}

/* A child: waits for the start signal, races with RACE_THREADS threads on its
 * own store, writes every serial it got to `out`, exits 0 if no call failed. */
static void race_child(const char *dir, int go, int out, int index)
{
    struct guardian_store *st = NULL;
    struct racer *racers = calloc(RACE_THREADS, sizeof(*racers));
    pthread_t tid[RACE_THREADS];
    char c;
    int code = 0;

    if (racers == NULL || guardian_store_open(dir, &st) != CKR_OK)
        _exit(10);
    while (read(go, &c, 1) < 0 && errno == EINTR)
        ;
    for (int i = 0; i < RACE_THREADS; i++) {
        racers[i].st = st;
        racers[i].index = index * RACE_THREADS + i;
        if (pthread_create(&tid[i], NULL, race_thread, &racers[i]) != 0)
            _exit(11);
    }
    for (int i = 0; i < RACE_THREADS; i++) {
        pthread_join(tid[i], NULL);
        if (racers[i].failure != CKR_OK)
            code = 12;
        write_all(out, racers[i].serials, racers[i].ok * sizeof(uint64_t));
    }
    guardian_store_close(st);
    free(racers);
    _exit(code);
}

static void test_concurrent_processes_and_threads(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_product p;
    struct trail *t = NULL;
    uint64_t serials[RACE_QUOTA * 2];
    size_t total = 0;
    pid_t pids[RACE_PROCS];
    int outs[RACE_PROCS], go[2];
    uint8_t seen[RACE_QUOTA + 1] = {0};
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, RACE_QUOTA), CKR_OK);
    guardian_store_close(st);

    assert_int_equal(pipe(go), 0);
    for (int i = 0; i < RACE_PROCS; i++) {
        int out[2];
        assert_int_equal(pipe(out), 0);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(go[1]);
            close(out[0]);
            race_child(d.path, go[0], out[1], i);
        }
        close(out[1]);
        outs[i] = out[0];
    }
    close(go[0]);
    close(go[1]); /* EOF on `go`: every child starts at once */

    for (int i = 0; i < RACE_PROCS; i++) {
        int status;
        total += read_u64s(outs[i], serials + total, sizeof(serials) / sizeof(serials[0]) - total);
        close(outs[i]);
        status = wait_child(pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }

    /* Exactly the quota, each serial once. */
    assert_int_equal(total, RACE_QUOTA);
    for (size_t i = 0; i < total; i++) {
        assert_true(serials[i] >= 1 && serials[i] <= RACE_QUOTA);
        assert_int_equal(seen[serials[i]], 0);
        seen[serials[i]] = 1;
    }

    t = trail_new(); /* only now: the children must not inherit it (leak check) */
    st = open_dir(&d);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.issued_units, RACE_QUOTA);
    assert_int_equal(p.remaining_units, 0);
    assert_int_equal(p.next_serial, RACE_QUOTA + 1);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_RESERVE), RACE_QUOTA);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), RACE_QUOTA);
    for (size_t i = 0; i < t->count; i++)
        if (t->rec[i].type == GUARDIAN_AUDIT_RESERVE)
            seen[t->rec[i].serial] |= 2;
    for (int s = 1; s <= RACE_QUOTA; s++)
        assert_int_equal(seen[s], 3);
    guardian_store_close(st);
    free(t);
    tmpdir_remove(&d);
}

/* Several processes opening one fresh state directory at once: one creates
 * the schema, none fails, all can write. */
#define FRESH_PROCS 4

static void test_concurrent_fresh_open(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_product p;
    pid_t pids[FRESH_PROCS];
    int go[2];
    (void)state;

    tmpdir_make(&d);
    assert_int_equal(pipe(go), 0);
    for (int i = 0; i < FRESH_PROCS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            struct guardian_store *mine = NULL;
            char c, product[16];
            int code;
            close(go[1]);
            while (read(go[0], &c, 1) < 0 && errno == EINTR)
                ;
            snprintf(product, sizeof(product), "p%d", i);
            if (guardian_store_open(d.path, &mine) != CKR_OK)
                _exit(30);
            code = install(mine, (uint8_t)(i + 1), OEM, product, 1, 5) == CKR_OK ? 0 : 31;
            guardian_store_close(mine);
            _exit(code);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int i = 0; i < FRESH_PROCS; i++) {
        int status = wait_child(pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    assert_int_equal(query_int(&d, "PRAGMA user_version"), 3);
    st = open_dir(&d);
    for (int i = 0; i < FRESH_PROCS; i++) {
        char product[16];
        snprintf(product, sizeof(product), "p%d", i);
        assert_int_equal(guardian_store_product_get(st, OEM, product, &p), CKR_OK);
    }
    assert_int_equal(guardian_store_audit_each(st, audit_ignore, NULL), CKR_OK);
    guardian_store_close(st);
    tmpdir_remove(&d);
}

/* Another process (here: another connection) holding the write lock makes a
 * writer wait (busy_timeout), not fail. */
struct holder {
    const struct tmpdir *d;
    int locked[2]; /* the holder writes one byte once it holds the lock */
};

static void *hold_write_lock(void *arg)
{
    struct holder *h = arg;
    struct timespec hold = {0, 300 * 1000000L};
    char path[128];
    sqlite3 *db = NULL;

    snprintf(path, sizeof(path), "%s/guardian.db", h->d->path);
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        abort();
    if (write(h->locked[1], "L", 1) != 1)
        abort();
    nanosleep(&hold, NULL);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return NULL;
}

static void test_writer_waits_for_lock(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct holder h;
    struct timespec t0, t1;
    pthread_t tid;
    uint64_t serial = 0;
    char c;
    double waited;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 5), CKR_OK);
    h.d = &d;
    assert_int_equal(pipe(h.locked), 0);
    assert_int_equal(pthread_create(&tid, NULL, hold_write_lock, &h), 0);
    assert_int_equal(read(h.locked[0], &c, 1), 1);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(reserve(st, "dev", NOW, &serial), CKR_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(tid, NULL);
    waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(waited > 0.1);
    assert_int_equal(serial, 1);
    close(h.locked[0]);
    close(h.locked[1]);
    guardian_store_close(st);
    tmpdir_remove(&d);
}

#define CRASH_ROUNDS 10
#define CRASH_QUOTA 1000000
#define CRASH_MAX_SERIALS 200000
#define ISSUED_FLAG (UINT64_C(1) << 63)

/* Reserves (and issues) forever, reporting each serial only once the call that
 * made it durable has returned; the parent SIGKILLs it at a random moment. */
static void crash_child(const char *dir, int out)
{
    struct guardian_store *st = NULL;
    uint8_t digest[GUARDIAN_HASH_LEN];

    memset(digest, 0xD1, sizeof(digest));
    if (guardian_store_open(dir, &st) != CKR_OK)
        _exit(20);
    for (;;) {
        uint64_t serial = 0, msg;
        CK_RV rv = reserve(st, "crash-dev", NOW, &serial);
        if (rv != CKR_OK)
            _exit(21);
        write_all(out, &serial, sizeof(serial));
        if (serial % 2 == 0)
            continue; /* leave some reservations without an ISSUE */
        rv = guardian_store_commit_issue(st, OEM, PRODUCT, serial, (const uint8_t *)"crash-dev", 9, digest);
        if (rv != CKR_OK)
            _exit(22);
        msg = serial | ISSUED_FLAG;
        write_all(out, &msg, sizeof(msg));
    }
}

struct crash_scan {
    uint8_t *has; /* per serial, bit 1: RESERVE, bit 2: ISSUE */
    uint64_t reserves;
};

static CK_RV crash_scan(const struct guardian_audit_record *r, void *ctx)
{
    struct crash_scan *c = ctx;
    if (r->type == GUARDIAN_AUDIT_IMPORT)
        return CKR_OK;
    if (r->serial < 1 || r->serial > CRASH_MAX_SERIALS)
        return CKR_BUFFER_TOO_SMALL;
    c->has[r->serial] |= r->type == GUARDIAN_AUDIT_RESERVE ? 1 : 2;
    c->reserves += r->type == GUARDIAN_AUDIT_RESERVE;
    return CKR_OK;
}

static void test_crash_durability(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_product p;
    struct crash_scan scan;
    uint64_t *reported = calloc(CRASH_MAX_SERIALS, sizeof(uint64_t));
    uint8_t *has = calloc(CRASH_MAX_SERIALS + 1, 1); /* bit 1: RESERVE, bit 2: ISSUE */
    size_t nreported = 0;
    unsigned int seed = (unsigned int)time(NULL) ^ (unsigned int)getpid();
    (void)state;

    assert_non_null(reported);
    assert_non_null(has);
    print_message("crash test seed %u\n", seed);
    srand(seed);

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, CRASH_QUOTA), CKR_OK);
    guardian_store_close(st);

    for (int round = 0; round < CRASH_ROUNDS; round++) {
        int out[2], status;
        uint64_t first;
        size_t n;
        pid_t pid;
        struct timespec delay;

        assert_int_equal(pipe(out), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(out[0]);
            crash_child(d.path, out[1]);
        }
        close(out[1]);
        /* Wait for the first durable serial so the kill lands mid-production,
         * then let it run 0..80 ms more. */
        assert_int_equal(read(out[0], &first, sizeof(first)), (ssize_t)sizeof(first));
        reported[nreported++] = first;
        delay.tv_sec = 0;
        delay.tv_nsec = (long)(rand() % 80) * 1000000L;
        nanosleep(&delay, NULL);
        assert_int_equal(kill(pid, SIGKILL), 0);
        n = read_u64s(out[0], reported + nreported, CRASH_MAX_SERIALS - nreported);
        nreported += n;
        close(out[0]);
        status = wait_child(pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);

        /* After each crash: counts within the quota and equal to the trail,
         * the trail verifies, every reported serial has its record. */
        st = open_dir(&d);
        assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
        assert_true(p.issued_units <= p.authorised_units);
        assert_int_equal(p.issued_units + p.remaining_units, CRASH_QUOTA);
        assert_int_equal(p.next_serial, p.issued_units + 1);
        memset(has, 0, CRASH_MAX_SERIALS + 1);
        scan.has = has;
        scan.reserves = 0;
        assert_int_equal(guardian_store_audit_each(st, crash_scan, &scan), CKR_OK);
        assert_int_equal(scan.reserves, p.issued_units);
        for (size_t i = 0; i < nreported; i++) {
            uint64_t s = reported[i] & ~ISSUED_FLAG;
            assert_true(s >= 1 && s <= CRASH_MAX_SERIALS);
            assert_true(has[s] & 1);
            if (reported[i] & ISSUED_FLAG)
                assert_true(has[s] & 2);
        }
        guardian_store_close(st);
    }
    print_message("crash test: %zu messages reported over %d kills\n", nreported, CRASH_ROUNDS);
    free(reported);
    free(has);
    tmpdir_remove(&d);
}

/* The module's path: block reservations (power-safe), ISSUE with the
 * certificate, RELEASE of what was not used, and the package's material. */
static void test_block_issue_release(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 7), b = make_pkg(0xB2, OEM, PRODUCT, 2, 3);
    struct guardian_package_material m;
    struct guardian_product p;
    struct trail *t = trail_new();
    static const uint8_t tmpl[] = {0x30, 0x03, 0x02, 0x01, 0x07}, ca[] = {0x30, 0x00};
    static const uint8_t cert[] = {0x30, 0x03, 0x01, 0x01, 0xff};
    uint64_t first = 0, got = 0;
    uint8_t *der = NULL;
    size_t len = 0;
    (void)state;

    a.cert_template = tmpl;
    a.cert_template_len = sizeof(tmpl);
    a.ca_cert = ca;
    a.ca_cert_len = sizeof(ca);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_package_material(st, a.package_id, &m), CKR_OK);
    assert_string_equal(m.oem_id, OEM);
    assert_string_equal(m.product_id, PRODUCT);
    assert_true(m.installed);
    assert_int_equal(m.cert_template_len, sizeof(tmpl));
    assert_memory_equal(m.cert_template, tmpl, sizeof(tmpl));
    assert_int_equal(m.ca_cert_len, sizeof(ca));
    guardian_store_package_material_free(&m);
    assert_int_equal(guardian_store_package_material(st, b.package_id, &m), CKR_GUARDIAN_PRODUCT_UNKNOWN);

    /* 5 of 7, then the 2 left, then none. */
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 5, &first, &got), CKR_OK);
    assert_int_equal(first, 1);
    assert_int_equal(got, 5);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 5, &first, &got), CKR_OK);
    assert_int_equal(first, 6);
    assert_int_equal(got, 2);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 1, &first, &got),
                     CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, FAR_FUTURE + 1, 1, &first, &got),
                     CKR_GUARDIAN_QUOTA_EXHAUSTED);

    /* Issue serial 1 to any device; its certificate is kept. */
    assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, 1, (const uint8_t *)"dev-1", 5, cert, sizeof(cert)),
                     CKR_OK);
    assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, 1, (const uint8_t *)"dev-2", 5, cert, sizeof(cert)),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_certificate_get(st, OEM, PRODUCT, 1, &der, &len), CKR_OK);
    assert_int_equal(len, sizeof(cert));
    assert_memory_equal(der, cert, sizeof(cert));
    free(der);
    assert_int_equal(guardian_store_certificate_get(st, OEM, PRODUCT, 2, &der, &len), CKR_OK);
    assert_null(der);
    assert_int_equal(len, 0);

    /* Release 2..7: the units come back, the serials are gone for good. */
    for (uint64_t s = 2; s <= 7; s++)
        assert_int_equal(guardian_store_release(st, OEM, PRODUCT, s), CKR_OK);
    assert_int_equal(guardian_store_release(st, OEM, PRODUCT, 2), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_release(st, OEM, PRODUCT, 1), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_release(st, OEM, PRODUCT, 8), CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, 3, (const uint8_t *)"dev-3", 5, cert, sizeof(cert)),
                     CKR_ARGUMENTS_BAD);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.issued_units, 1);
    assert_int_equal(p.remaining_units, 6);
    assert_int_equal(p.next_serial, 8);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 2, &first, &got), CKR_OK);
    assert_int_equal(first, 8);

    /* A newer release supersedes: the old package can no longer reserve, and
     * a serial counted against the old one is counted back against it. */
    assert_int_equal(guardian_store_package_install(st, &b, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 1, &first, &got),
                     CKR_GUARDIAN_PACKAGE_SUPERSEDED);
    assert_int_equal(guardian_store_package_material(st, a.package_id, &m), CKR_OK);
    assert_false(m.installed);
    assert_non_null(m.cert_template);
    guardian_store_package_material_free(&m);
    assert_int_equal(guardian_store_release(st, OEM, PRODUCT, 8), CKR_OK);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.remaining_units, 3);

    /* The trail: IMPORT, 7 RESERVE, ISSUE, 6 RELEASE, 2 RESERVE, IMPORT, RELEASE. */
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_IMPORT), 2);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_RESERVE), 9);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), 1);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_RELEASE), 7);
    free(t);
    guardian_store_close(st);
}

/* The issue journal of a file-backed store: an ISSUE is one append, folded
 * into the trail by the next write, a flush or close; a journal left by a
 * process that died is folded by the next opener up to a torn tail, and
 * folding the same records twice changes nothing.  (What a missing or
 * damaged journal costs - a JOURNAL_LOST record - is test_journal_deleted's
 * and test_journal_damaged's.) */
static size_t journal_files(const struct tmpdir *d, char *name, size_t cap)
{
    DIR *dir = opendir(d->path);
    struct dirent *e;
    size_t n = 0;
    assert_non_null(dir);
    while ((e = readdir(dir)) != NULL)
        if (strncmp(e->d_name, "issued-", 7) == 0) {
            if (name != NULL && strlen(d->path) + strlen(e->d_name) + 2 <= cap)
                snprintf(name, cap, "%.63s/%.180s", d->path, e->d_name);
            n++;
        }
    closedir(dir);
    return n;
}

static void copy_file(const char *from, const char *to, size_t extra_garbage)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[4096];
    size_t n;
    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    for (size_t i = 0; i < extra_garbage; i++)
        fputc('G', out);
    fclose(in);
    fclose(out);
}

static void test_issue_journal(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 100);
    static const uint8_t cert[] = {0x30, 0x03, 0x01, 0x01, 0xff};
    uint64_t first = 0, got = 0;
    char journal[256], saved[300];
    uint8_t *der = NULL;
    size_t len = 0;
    pid_t pid;
    int status;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(journal_files(&d, NULL, 0), 1);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 8, &first, &got), CKR_OK);
    for (uint64_t s = 1; s <= 3; s++)
        assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, s, (const uint8_t *)"dev", 3, cert, sizeof(cert)),
                         CKR_OK);
    /* Appended, not yet in the trail. */
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 0);
    assert_int_equal(journal_files(&d, journal, sizeof(journal)), 1);
    snprintf(saved, sizeof(saved), "%s/issued-1-0.journal", d.path);
    copy_file(journal, saved, 0); /* a copy, to fold again below */
    unlink(saved);
    copy_file(journal, saved, 0);
    assert_int_equal(guardian_store_flush(st), CKR_OK);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 3);
    assert_int_equal(guardian_store_certificate_get(st, OEM, PRODUCT, 2, &der, &len), CKR_OK);
    assert_int_equal(len, sizeof(cert));
    free(der);
    /* Issued twice through the journal: the second fold refuses it. */
    assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, 4, (const uint8_t *)"dev", 3, cert, sizeof(cert)),
                     CKR_OK);
    guardian_store_close(st);
    /* close folded serial 4 and removed its journal; the copy of the first
     * journal (serials 1-3, already folded) is "dead": the next opener folds
     * it again, harmlessly. */
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 4);
    st = open_dir(&d);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 4);
    assert_int_equal(journal_files(&d, NULL, 0), 1); /* only the new opener's own */

    /* A process that dies without closing: its journal is folded by the next
     * opener, up to a torn tail.  Here it is also renamed: under its own name
     * it is missing, so its holder's two serials left open are declared
     * lost. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct guardian_store *child = NULL;
        int ok = guardian_store_open(d.path, &child) == CKR_OK &&
                 guardian_store_reserve_block(child, OEM, PRODUCT, a.package_id, NOW, 4, &first, &got) == CKR_OK;
        for (uint64_t s = first; ok && s < first + 2; s++)
            ok = guardian_store_issue(child, OEM, PRODUCT, s, (const uint8_t *)"kid", 3, cert, sizeof(cert)) ==
                 CKR_OK;
        if (!ok)
            _exit(1);
        raise(SIGKILL); /* no close: killed (and no leak check under valgrind) */
        _exit(2);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(journal_files(&d, NULL, 0), 2);
    {
        char dead[512] = "";
        DIR *dir = opendir(d.path);
        struct dirent *e;
        char own[64];
        snprintf(own, sizeof(own), "issued-%ld-", (long)getpid());
        while ((e = readdir(dir)) != NULL)
            if (strncmp(e->d_name, "issued-", 7) == 0 && strncmp(e->d_name, own, strlen(own)) != 0)
                snprintf(dead, sizeof(dead), "%.63s/%.255s", d.path, e->d_name);
        closedir(dir);
        assert_true(dead[0] != '\0');
        copy_file(dead, saved, 5); /* a torn write at its end */
        unlink(dead);
    }
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 4);
    guardian_store_close(st);
    st = open_dir(&d); /* recovers the dead journal */
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 6);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3 AND device_id = CAST('kid' AS BLOB)"), 2);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 1);
    assert_int_equal(query_int(&d, "SELECT authorised_units FROM audit WHERE type = 5"), 2);
    assert_int_equal(journal_files(&d, NULL, 0), 1);
    {
        struct trail *t = trail_new();
        assert_int_equal(read_trail(st, t), CKR_OK);
        free(t);
    }
    guardian_store_close(st);
    tmpdir_remove(&d);
}

/* ---- the state directory and its files -------------------------------------------------- */

static mode_t mode_of(const char *dir, const char *name)
{
    char path[512];
    struct stat sb;
    snprintf(path, sizeof(path), "%s%s%s", dir, name != NULL ? "/" : "", name != NULL ? name : "");
    assert_int_equal(lstat(path, &sb), 0);
    return sb.st_mode & 07777;
}

static void path_join(char *out, size_t cap, const char *dir, const char *name)
{
    assert_true((size_t)snprintf(out, cap, "%s/%s", dir, name) < cap);
}

/* An ISSUE appended while another write transaction is open (here from the
 * commit hook of an import, inside that transaction) does not wait for it:
 * the append takes only the journal's own lock.  The write folds what was
 * appended meanwhile once it committed, and empties the journal. */
struct issue_hook_ctx {
    struct guardian_store *st;
    CK_RV rv[3];
};

static CK_RV issue_hook(void *ctx)
{
    struct issue_hook_ctx *h = ctx;
    static const uint8_t cert[] = {0x30, 0x03, 0x01, 0x01, 0xff};
    for (int i = 0; i < 3; i++)
        h->rv[i] = guardian_store_issue(h->st, OEM, PRODUCT, (uint64_t)i + 1, (const uint8_t *)"dev-h", 5, cert,
                                        sizeof(cert));
    return CKR_OK;
}

static void test_issue_during_write(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 100), b = make_pkg(0xB2, OEM, "OTHER", 1, 5);
    struct issue_hook_ctx h;
    struct trail *t = trail_new();
    char journal[256];
    struct stat sb;
    uint8_t *der = NULL;
    size_t len = 0;
    uint64_t first = 0, got = 0;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 10, &first, &got), CKR_OK);
    memset(&h, 0, sizeof(h));
    h.st = st;
    assert_int_equal(guardian_store_package_install(st, &b, NOW, issue_hook, &h), CKR_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(h.rv[i], CKR_OK);
    /* Folded and committed by that write, the journal empty again. */
    assert_int_equal(journal_files(&d, journal, sizeof(journal)), 1);
    assert_int_equal(stat(journal, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), 3);
    assert_int_equal(guardian_store_certificate_get(st, OEM, PRODUCT, 3, &der, &len), CKR_OK);
    assert_non_null(der);
    free(der);
    guardian_store_close(st);
    free(t);
    tmpdir_remove(&d);
}

/* With umask 0 (the most permissive): a missing state directory is created
 * 0700, guardian.db, its -wal and -shm and the journal are 0600; an existing
 * database that the umask made group-readable is set to 0600. */
static void test_state_created_private(void **state)
{
    struct tmpdir d;
    struct guardian_store *st = NULL;
    char sub[sizeof(((struct tmpdir *)0)->path)], journal[256];
    mode_t old = umask(0);
    uint64_t serial = 0;
    (void)state;

    tmpdir_make(&d);
    path_join(sub, sizeof(sub), d.path, "state");
    assert_int_equal(guardian_store_open(sub, &st), CKR_OK); /* created if missing */
    assert_int_equal(mode_of(sub, NULL), 0700);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    assert_int_equal(reserve(st, "dev-1", NOW, &serial), CKR_OK);
    assert_int_equal(mode_of(sub, "guardian.db"), 0600);
    assert_int_equal(mode_of(sub, "guardian.db-wal"), 0600);
    assert_int_equal(mode_of(sub, "guardian.db-shm"), 0600);
    {
        struct tmpdir s2;
        snprintf(s2.path, sizeof(s2.path), "%s", sub);
        assert_int_equal(journal_files(&s2, journal, sizeof(journal)), 1);
    }
    assert_int_equal(mode_of(journal, NULL), 0600);
    guardian_store_close(st);

    /* An existing database left 0644 by an earlier version: made 0600. */
    path_join(journal, sizeof(journal), sub, "guardian.db");
    assert_int_equal(chmod(journal, 0644), 0);
    st = NULL;
    assert_int_equal(guardian_store_open(sub, &st), CKR_OK);
    assert_int_equal(mode_of(sub, "guardian.db"), 0600);
    guardian_store_close(st);
    umask(old);

    /* A parent that does not exist is not created. */
    path_join(journal, sizeof(journal), d.path, "no/such");
    st = NULL;
    assert_int_equal(guardian_store_open(journal, &st), CKR_GUARDIAN_STORE_FAILED);
    assert_null(st);
    {
        struct tmpdir s2;
        snprintf(s2.path, sizeof(s2.path), "%s", sub);
        tmpdir_remove(&s2);
    }
    tmpdir_remove(&d);
}

static void expect_unsafe(const char *dir)
{
    struct guardian_store *st = NULL;
    assert_int_equal(guardian_store_open(dir, &st), CKR_GUARDIAN_STATE_UNSAFE);
    assert_null(st);
}

/* A state directory that is a symlink, not ours, writable by others, or not
 * a directory; a guardian.db, -wal or journal that is a symlink or not a
 * regular file: CKR_GUARDIAN_STATE_UNSAFE, and the link's target untouched. */
static void test_state_unsafe_refused(void **state)
{
    struct tmpdir d, real;
    struct guardian_store *st = NULL;
    char link[128], path[256], target[256], slash[160];
    struct stat sb;
    (void)state;

    tmpdir_make(&d);
    tmpdir_make(&real);

    /* The directory itself. */
    path_join(link, sizeof(link), d.path, "link");
    assert_int_equal(symlink(real.path, link), 0);
    expect_unsafe(link);
    snprintf(slash, sizeof(slash), "%s/", link);
    expect_unsafe(slash); /* "link/" would resolve through the link */
    path_join(path, sizeof(path), real.path, "guardian.db");
    assert_int_equal(lstat(path, &sb), -1); /* nothing made behind the link */
    unlink(link);

    assert_int_equal(chmod(real.path, 0770), 0);
    expect_unsafe(real.path);
    assert_int_equal(chmod(real.path, 0702), 0);
    expect_unsafe(real.path);
    assert_int_equal(chmod(real.path, 0755), 0); /* readable by others is fine */
    st = open_dir(&real);
    guardian_store_close(st);
    assert_int_equal(chmod(real.path, 0700), 0);
    if (geteuid() == 0) {
        assert_int_equal(chown(real.path, 65534, 65534), 0);
        expect_unsafe(real.path);
        assert_int_equal(chown(real.path, 0, 0), 0);
    }
    path_join(path, sizeof(path), d.path, "file");
    {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fclose(f);
    }
    expect_unsafe(path);
    unlink(path);

    /* Its files. */
    path_join(target, sizeof(target), d.path, "elsewhere.db");
    {
        FILE *f = fopen(target, "w");
        assert_non_null(f);
        fclose(f);
    }
    path_join(path, sizeof(path), real.path, "guardian.db");
    unlink(path);
    assert_int_equal(symlink(target, path), 0);
    expect_unsafe(real.path);
    assert_int_equal(stat(target, &sb), 0);
    assert_int_equal(sb.st_size, 0); /* not written through the link */
    unlink(path);

    st = open_dir(&real); /* a fresh database */
    guardian_store_close(st);
    path_join(path, sizeof(path), real.path, "guardian.db-wal");
    unlink(path);
    assert_int_equal(symlink(target, path), 0);
    expect_unsafe(real.path);
    unlink(path);

    path_join(path, sizeof(path), real.path, "issued-1-1.journal");
    assert_int_equal(symlink(target, path), 0);
    expect_unsafe(real.path);
    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    expect_unsafe(real.path);
    unlink(path);
    st = open_dir(&real); /* and nothing else was wrong */
    guardian_store_close(st);

    unlink(target);
    tmpdir_remove(&real);
    tmpdir_remove(&d);
}

/* ---- time never runs backwards -------------------------------------------------------------- */

static void test_clock_behind(void **state)
{
    struct guardian_store *st = open_memory();
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 10), b = make_pkg(0xB2, OEM, PRODUCT, 2, 10);
    const int64_t now = NOW, behind = now - GUARDIAN_STORE_CLOCK_SLACK_S - 1;
    struct guardian_product p;
    struct trail *t = trail_new();
    uint64_t serial = 0, first = 0, got = 0;
    size_t records;
    (void)state;

    /* An empty trail: any clock is fine. */
    assert_int_equal(guardian_store_check_clock(st, 0), CKR_OK);
    assert_int_equal(guardian_store_package_install(st, &a, now, NULL, NULL), CKR_OK);
    assert_int_equal(read_trail(st, t), CKR_OK);
    records = t->count;

    /* Behind the trail by more than the slack: refused, nothing written. */
    assert_int_equal(guardian_store_check_clock(st, behind), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(guardian_store_package_check(st, &b, behind), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(guardian_store_package_install(st, &b, behind, NULL, NULL), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(reserve(st, "dev-1", behind, &serial), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, behind, 4, &first, &got),
                     CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(t->count, records);
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.release_version, 1); /* b was not installed */
    assert_int_equal(p.issued_units, 0);
    assert_int_equal(p.next_serial, 1);
    assert_int_equal(guardian_store_package_check(st, &b, now), CKR_OK); /* b is not taken as replayed */

    /* Within the slack: a caller that read the clock, then waited for the lock. */
    assert_int_equal(reserve(st, "dev-1", now - GUARDIAN_STORE_CLOCK_SLACK_S, &serial), CKR_OK);

    /* The newest time of ANY record counts, not the last record's: a record
     * dated ahead (a clock that was fast) moves the floor for good. */
    assert_int_equal(reserve(st, "dev-2", now + 1000, &serial), CKR_OK);
    assert_int_equal(reserve(st, "dev-3", now + 1000 - GUARDIAN_STORE_CLOCK_SLACK_S, &serial), CKR_OK);
    assert_int_equal(reserve(st, "dev-4", now, &serial), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(guardian_store_package_install(st, &b, now, NULL, NULL), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(guardian_store_package_install(st, &b, now + 1000, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_check_clock(NULL, now), CKR_ARGUMENTS_BAD);
    guardian_store_close(st);
    free(t);
}

/* The floor is durable: a reopened store (another process) refuses the same. */
static void test_clock_behind_durable(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    const int64_t now = NOW;
    uint64_t serial = 0;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(install(st, 1, OEM, PRODUCT, 1, 10), CKR_OK);
    assert_int_equal(reserve(st, "dev-1", now + 3600, &serial), CKR_OK);
    guardian_store_close(st);
    st = open_dir(&d);
    assert_int_equal(reserve(st, "dev-2", now, &serial), CKR_GUARDIAN_CLOCK_BEHIND);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit"), 2);
    assert_int_equal(query_int(&d, "SELECT max_time FROM audit_head"), now + 3600);
    guardian_store_close(st);
    tmpdir_remove(&d);
}

/* ---- lost or damaged issue journals ----------------------------------------------------------- */

static const uint8_t small_cert[] = {0x30, 0x03, 0x01, 0x01, 0xff};

/* A child process that opens the store, reserves `want` units in one block,
 * issues the first `issue` and is SIGKILLed; returns its pid once it is dead.
 * Its journal is then <dir>/issued-<pid>-*.journal. */
static pid_t child_issue_and_die(const struct tmpdir *d, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                 uint64_t want, uint64_t issue)
{
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct guardian_store *child = NULL;
        uint64_t first = 0, got = 0;
        int ok = guardian_store_open(d->path, &child) == CKR_OK &&
                 guardian_store_reserve_block(child, OEM, PRODUCT, package_id, NOW, want, &first, &got) == CKR_OK &&
                 got == want;
        for (uint64_t s = first; ok && s < first + issue; s++)
            ok = guardian_store_issue(child, OEM, PRODUCT, s, (const uint8_t *)"kid", 3, small_cert,
                                      sizeof(small_cert)) == CKR_OK;
        if (!ok)
            _exit(1);
        raise(SIGKILL); /* no close: killed */
        _exit(2);
    }
    status = wait_child(pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    return pid;
}

static void journal_of(const struct tmpdir *d, pid_t pid, char *out, size_t cap)
{
    char prefix[64];
    DIR *dir = opendir(d->path);
    struct dirent *e;

    out[0] = '\0';
    snprintf(prefix, sizeof(prefix), "issued-%ld-", (long)pid);
    assert_non_null(dir);
    while ((e = readdir(dir)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            snprintf(out, cap, "%.63s/%.180s", d->path, e->d_name);
    closedir(dir);
    assert_true(out[0] != '\0');
}

static const struct guardian_audit_record *last_of_type(const struct trail *t, int type)
{
    for (size_t i = t->count; i > 0; i--)
        if (t->rec[i - 1].type == type)
            return &t->rec[i - 1];
    return NULL;
}

/* A killed line whose issue journal was deleted: the next opener appends a
 * JOURNAL_LOST record naming the journal and the serials the process held
 * open, in the transaction that finds it; the units stay spent; nobody
 * declares them twice.  A journal left intact, and a process that closed,
 * give no such record. */
static void test_journal_deleted(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 100);
    struct trail *t = trail_new();
    const struct guardian_audit_record *lost;
    struct guardian_product p;
    char journal[256];
    uint64_t first = 0, got = 0;
    pid_t pid;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    /* This process's own block stays open across everything below. */
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 2, &first, &got), CKR_OK);
    guardian_store_close(st);

    /* Killed, journal intact: folded, no JOURNAL_LOST. */
    child_issue_and_die(&d, a.package_id, 4, 1);
    st = open_dir(&d);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 0);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 1);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM holders"), 0);
    guardian_store_close(st);

    /* Killed, journal deleted: serials 7..14 (3 issued, all 8 open in the
     * trail) are declared lost. */
    pid = child_issue_and_die(&d, a.package_id, 8, 3);
    journal_of(&d, pid, journal, sizeof(journal));
    assert_int_equal(unlink(journal), 0);
    st = open_dir(&d);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_JOURNAL_LOST), 1);
    lost = last_of_type(t, GUARDIAN_AUDIT_JOURNAL_LOST);
    assert_non_null(lost);
    assert_int_equal(lost->serial, 7);
    assert_int_equal(lost->authorised_units, 8);
    assert_int_equal(lost->release_version, GUARDIAN_JOURNAL_MISSING);
    assert_string_equal(lost->oem_id, OEM);
    assert_string_equal(lost->product_id, PRODUCT);
    assert_memory_equal(lost->package_id, a.package_id, GUARDIAN_PACKAGE_ID_LEN);
    {
        const char *base = strrchr(journal, '/') + 1;
        static const uint8_t zeros[GUARDIAN_HASH_LEN];
        assert_int_equal(lost->device_id_len, strlen(base));
        assert_memory_equal(lost->device_id, base, strlen(base));
        assert_memory_equal(lost->digest, zeros, GUARDIAN_HASH_LEN);
    }
    assert_int_equal(lost->seq, t->rec[t->count - 1].seq); /* the last record: written at this open */
    /* Units stay spent: 2 (ours) + 4 + 8. */
    assert_int_equal(guardian_store_product_get(st, OEM, PRODUCT, &p), CKR_OK);
    assert_int_equal(p.issued_units, 14);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM issuance WHERE lost_seq IS NOT NULL"), 8);
    guardian_store_close(st);

    /* Declared once. */
    st = open_dir(&d);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 1);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM holders"), 0);
    /* A lost serial may still be released or issued by a holder that turns
     * out to be alive; it counts back like any other. */
    assert_int_equal(guardian_store_release(st, OEM, PRODUCT, 14), CKR_OK);
    assert_int_equal(read_trail(st, t), CKR_OK);
    guardian_store_close(st);
    free(t);
    tmpdir_remove(&d);
}

/* A killed line whose journal was cut inside a record, or altered: what
 * verifies is folded, and the serials still open get a JOURNAL_LOST record
 * (reason: damaged, with the SHA-256 of the journal as found).  A journal cut
 * exactly between two records looks like a process killed a moment earlier:
 * the honest limit, bounded by the open block. */
static void test_journal_damaged(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 100);
    struct trail *t = trail_new();
    const struct guardian_audit_record *lost;
    char journal[256];
    uint8_t bytes[4096], digest[GUARDIAN_HASH_LEN];
    size_t len, record;
    FILE *f;
    pid_t pid;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    guardian_store_close(st);

    /* Cut 7 bytes into the third record. */
    pid = child_issue_and_die(&d, a.package_id, 8, 3); /* serials 1..8 */
    journal_of(&d, pid, journal, sizeof(journal));
    f = fopen(journal, "rb");
    assert_non_null(f);
    len = fread(bytes, 1, sizeof(bytes), f);
    fclose(f);
    record = len / 3;
    assert_int_equal(len % 3, 0); /* three records of one size */
    assert_int_equal(truncate(journal, (off_t)(len - 7)), 0);
    assert_int_equal(EVP_Digest(bytes, len - 7, digest, NULL, EVP_sha256(), NULL), 1);
    st = open_dir(&d);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), 2);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_JOURNAL_LOST), 1);
    lost = last_of_type(t, GUARDIAN_AUDIT_JOURNAL_LOST);
    assert_int_equal(lost->serial, 3);
    assert_int_equal(lost->authorised_units, 6);
    assert_int_equal(lost->release_version, GUARDIAN_JOURNAL_DAMAGED);
    assert_memory_equal(lost->digest, digest, GUARDIAN_HASH_LEN);
    assert_int_equal(journal_files(&d, NULL, 0), 1); /* the damaged one is removed; ours stays */
    guardian_store_close(st);

    /* One byte of the second record altered: the first folds; nothing after
     * an invalid record is read (its length may be what was altered), so
     * serials 10..16 are lost. */
    pid = child_issue_and_die(&d, a.package_id, 8, 3); /* serials 9..16 */
    journal_of(&d, pid, journal, sizeof(journal));
    f = fopen(journal, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, (long)(record + 20), SEEK_SET), 0);
    fputc('X', f);
    fclose(f);
    st = open_dir(&d);
    assert_int_equal(read_trail(st, t), CKR_OK);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_ISSUE), 3);
    assert_int_equal(count_type(t, GUARDIAN_AUDIT_JOURNAL_LOST), 2);
    lost = last_of_type(t, GUARDIAN_AUDIT_JOURNAL_LOST);
    assert_int_equal(lost->serial, 10);
    assert_int_equal(lost->authorised_units, 7);
    assert_int_equal(lost->release_version, GUARDIAN_JOURNAL_DAMAGED);
    guardian_store_close(st);

    /* Cut exactly after the first record: indistinguishable from a kill. */
    pid = child_issue_and_die(&d, a.package_id, 8, 3); /* serials 17..24 */
    journal_of(&d, pid, journal, sizeof(journal));
    assert_int_equal(truncate(journal, (off_t)record), 0);
    st = open_dir(&d);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 2);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 4);
    assert_int_equal(read_trail(st, t), CKR_OK);
    guardian_store_close(st);
    free(t);
    tmpdir_remove(&d);
}

/* A live process's own journal cut under it: its next write transaction
 * declares the serials it holds open lost; it can go on issuing them. */
static void test_own_journal_tampered(void **state)
{
    struct tmpdir d;
    struct guardian_store *st;
    struct guardian_package_info a = make_pkg(0xA1, OEM, PRODUCT, 1, 100);
    char journal[256];
    uint64_t first = 0, got = 0;
    (void)state;

    tmpdir_make(&d);
    st = open_dir(&d);
    assert_int_equal(guardian_store_package_install(st, &a, NOW, NULL, NULL), CKR_OK);
    assert_int_equal(guardian_store_reserve_block(st, OEM, PRODUCT, a.package_id, NOW, 4, &first, &got), CKR_OK);
    for (uint64_t s = 1; s <= 2; s++)
        assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, s, (const uint8_t *)"dev", 3, small_cert,
                                              sizeof(small_cert)),
                         CKR_OK);
    assert_int_equal(journal_files(&d, journal, sizeof(journal)), 1);
    assert_int_equal(truncate(journal, 0), 0); /* both ISSUEs gone */
    assert_int_equal(guardian_store_flush(st), CKR_OK);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 0);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 1);
    assert_int_equal(query_int(&d, "SELECT serial FROM audit WHERE type = 5"), 1);
    assert_int_equal(query_int(&d, "SELECT authorised_units FROM audit WHERE type = 5"), 4);
    assert_int_equal(guardian_store_issue(st, OEM, PRODUCT, 3, (const uint8_t *)"dev", 3, small_cert,
                                          sizeof(small_cert)),
                     CKR_OK);
    guardian_store_close(st);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 3"), 1);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 1);
    st = open_dir(&d);
    assert_int_equal(query_int(&d, "SELECT count(*) FROM audit WHERE type = 5"), 1);
    guardian_store_close(st);
    tmpdir_remove(&d);
}

/* The journal record parser (store/journal.c) on its own: round trip, and a
 * record shorter than its fixed part refused without reading past it (the
 * fuzz corpus replays the same under every build; ASan builds check reads). */
static void test_journal_parser(void **state)
{
    uint8_t buf[GUARDIAN_JOURNAL_RECORD_MAX];
    struct guardian_journal_record r;
    size_t len, used = 0;
    (void)state;

    len = guardian_journal_encode(buf, sizeof(buf), OEM, PRODUCT, 7, -1, (const uint8_t *)"dev", 3, small_cert,
                                  sizeof(small_cert));
    assert_int_equal(len, 8 + 21 + 4 + 8 + 3 + sizeof(small_cert) + 32);
    assert_int_equal(guardian_journal_parse(buf, len, &r, &used), GUARDIAN_JOURNAL_OK);
    assert_int_equal(used, len);
    assert_int_equal(r.serial, 7);
    assert_int_equal(r.time, -1);
    assert_string_equal(r.oem_id, OEM);
    assert_string_equal(r.product_id, PRODUCT);
    assert_int_equal(r.device_id_len, 3);
    assert_int_equal(r.cert_len, sizeof(small_cert));
    for (size_t cut = 0; cut < len; cut++)
        assert_int_equal(guardian_journal_parse(buf, cut, &r, &used), GUARDIAN_JOURNAL_SHORT);
    /* Bodies of 0..24 bytes with a matching SHA-256: refused as invalid. */
    for (size_t body = 0; body < GUARDIAN_JOURNAL_BODY_MIN; body++) {
        uint8_t *rec = malloc(8 + body + 32);
        assert_non_null(rec);
        memcpy(rec, "GDJ1", 4);
        rec[4] = rec[5] = rec[6] = 0;
        rec[7] = (uint8_t)body;
        memset(rec + 8, 0x01, body);
        assert_int_equal(EVP_Digest(rec + 8, body, rec + 8 + body, NULL, EVP_sha256(), NULL), 1);
        assert_int_equal(guardian_journal_parse(rec, 8 + body + 32, &r, &used), GUARDIAN_JOURNAL_BAD);
        assert_int_equal(used, 0);
        free(rec);
    }
    /* Out of range on the way in. */
    assert_int_equal(guardian_journal_encode(buf, sizeof(buf), OEM, PRODUCT, 0, 0, (const uint8_t *)"d", 1,
                                             small_cert, sizeof(small_cert)),
                     0);
    assert_int_equal(guardian_journal_encode(buf, sizeof(buf), "", PRODUCT, 1, 0, (const uint8_t *)"d", 1, small_cert,
                                             sizeof(small_cert)),
                     0);
    assert_int_equal(guardian_journal_encode(buf, 10, OEM, PRODUCT, 1, 0, (const uint8_t *)"d", 1, small_cert,
                                             sizeof(small_cert)),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_arguments),
        cmocka_unit_test(test_open_reopen_file),
        cmocka_unit_test(test_migration_failure_rolls_back),
        cmocka_unit_test(test_install_replay_rollback_supersede),
        cmocka_unit_test(test_products_each_order),
        cmocka_unit_test(test_reserve_until_exhausted),
        cmocka_unit_test(test_expiry_and_unknown),
        cmocka_unit_test(test_commit_issue),
        cmocka_unit_test(test_block_issue_release),
        cmocka_unit_test(test_issue_journal),
        cmocka_unit_test(test_issue_during_write),
        cmocka_unit_test(test_commit_hook),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_audit_encoding_vectors),
        cmocka_unit_test(test_audit_chain_clean),
        cmocka_unit_test(test_audit_tamper),
        cmocka_unit_test(test_audit_tamper_rehash),
        cmocka_unit_test(test_fork_child_refused),
        cmocka_unit_test(test_concurrent_processes_and_threads),
        cmocka_unit_test(test_concurrent_fresh_open),
        cmocka_unit_test(test_writer_waits_for_lock),
        cmocka_unit_test(test_crash_durability),
        cmocka_unit_test(test_state_created_private),
        cmocka_unit_test(test_state_unsafe_refused),
        cmocka_unit_test(test_clock_behind),
        cmocka_unit_test(test_clock_behind_durable),
        cmocka_unit_test(test_journal_deleted),
        cmocka_unit_test(test_journal_damaged),
        cmocka_unit_test(test_own_journal_tampered),
        cmocka_unit_test(test_journal_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
