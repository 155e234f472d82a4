/*
 * journal_fold.c — the issue journals (store.h; docs/audit-format.md,
 * "Durability"): each process appends its ISSUE records to its own journal,
 * issued-<pid>-<time>.journal in the state directory, with one write() each;
 * the next write transaction, a flush, the close or - after a crash - the
 * next opener folds them into the hash chain.  A damaged or missing journal
 * gets a JOURNAL_LOST record for the serials its holder still held open.
 * The record codec is journal.c's.
 */
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

static CK_RV journal_fold_locked(struct guardian_store *st, int fd, const char *name, off_t expect,
                                 struct fold_result *res);
static CK_RV journal_read(int fd, const char *name, off_t expect, uint8_t **buf, struct fold_result *res);
static CK_RV journal_fold_buf(struct guardian_store *st, const char *name, const uint8_t *buf, size_t from,
                              struct fold_result *res);
static CK_RV journal_lost_locked(struct guardian_store *st, store_int holder, const char *journal, int reason,
                                 const uint8_t digest[GUARDIAN_HASH_LEN]);

CK_RV own_journal_read_jlocked(struct guardian_store *st, struct own_journal *j)
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
CK_RV own_journal_fold_locked(struct guardian_store *st, struct own_journal *j, off_t from)
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
void journal_catch_up_locked(struct guardian_store *st, off_t folded, bool nonempty)
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
        struct record_author author;
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
        author.operator_name = jr.operator_name;
        author.guardian = jr.has_guardian ? jr.guardian : NULL;
        a.author = &author;
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
static CK_RV holder_open_serials(struct guardian_store *st, store_int holder, struct open_serial **list,
                                 size_t *count)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct open_serial *grown, *o;
    struct store_stmt *s = NULL;
    size_t cap = 0;
    bool row = false;

    *list = NULL;
    *count = 0;
    rv = stmt_step(st, S_ISSUANCE_OPEN_BY_HOLDER, &s, &row, "list a holder's open reservations", "i", holder);
    while (rv == CKR_OK && row) {
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
        rv = stmt_next(st, s, &row, "list a holder's open reservations");
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

/* Declare lost every serial `holder` still holds open: one JOURNAL_LOST record
 * per run of consecutive serials of one product and package (format:
 * docs/audit-format.md), in the caller's write transaction.  The units stay
 * counted; the serials are marked so that no later opener declares them
 * again, and may still be issued by their holder if it is alive after all
 * (its journal deleted under it). */
static CK_RV journal_lost_locked(struct guardian_store *st, store_int holder, const char *journal, int reason,
                                 const uint8_t digest[GUARDIAN_HASH_LEN])
{
    CK_RV rv = CKR_GENERAL_ERROR;
    struct open_serial *list = NULL;
    struct guardian_audit_record rec;
    struct store_stmt *s = NULL;
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
                       (store_int)a->serial, (store_int)(a->serial + (j - i) - 1), holder,
                       (store_int)rec.seq);
        if (rv != CKR_OK)
            goto out;
        if ((size_t)store_changes(st) != j - i) {
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

static CK_RV holder_forget_locked(struct guardian_store *st, store_int holder)
{
    struct store_stmt *s = NULL;
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
    struct store_stmt *s = NULL;
    store_int holder = 0;
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
    holder = col_int(s, 0);
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
CK_RV journal_recover(struct guardian_store *st)
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
    store_int id;
    char journal[NAME_MAX + 1];
};

/* journal_orphans' transaction: the holder is still recorded and its journal
 * still missing (checked again under the write lock: the process that folds
 * a journal forgets its holder before it removes the file). */
static CK_RV orphan_tx(struct guardian_store *st, void *ctx)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];
    struct orphan_args *a = ctx;
    struct store_stmt *s = NULL;
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
CK_RV journal_orphans(struct guardian_store *st)
{
    struct orphan_args *list = NULL, *grown;
    size_t count = 0, cap = 0;
    struct store_stmt *s = NULL;
    bool row = false;
    CK_RV rv;

    rv = store_enter(st);
    if (rv != CKR_OK)
        return rv;
    rv = stmt_step(st, S_HOLDERS_ALL, &s, &row, "list the holders", "");
    while (rv == CKR_OK && row) {
        const char *name = col_text(s, 1);
        if (count == cap) {
            cap = cap != 0 ? 2 * cap : 16;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                rv = CKR_HOST_MEMORY;
                break;
            }
            list = grown;
        }
        list[count].id = col_int(s, 0);
        snprintf(list[count].journal, sizeof(list[count].journal), "%s", name != NULL ? name : "");
        count++;
        rv = stmt_next(st, s, &row, "list the holders");
    }
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

CK_RV journal_open(struct guardian_store *st)
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

/* Append one ISSUE to the journal, under journal_lock alone (not the
 * store's lock: a write transaction of another thread does not hold it up). */
CK_RV journal_append(struct guardian_store *st, const char *oem_id, const char *product_id, uint64_t serial,
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
                                  (int64_t)time(NULL), device_id, device_id_len, cert, cert_len, st->operator_name,
                                  st->has_guardian ? st->guardian : NULL);
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
