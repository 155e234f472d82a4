/*
 * status.c — CKG_GUARDIAN_REQ_STATUS: what only the module's store knows, for
 * a caller that cannot read the state directory.  Behind `p11-kit server` the
 * store belongs to the service's account and the configuration is not the
 * operator's to read; `guardianctl status` asks for this instead.
 *
 * The answer is checked now, not cached: the audit trail's hash chain is
 * walked from its first record (guardian_store_audit_each verifies every
 * link), the store is compared with the token's anchor without writing either
 * (anchor.h: guardian_anchor_compare), the installed products are counted
 * from the store, and so are the Guardian's credentials (service mode: whether
 * the SO is set, how many operators, how many locked), and, in the same walk
 * of the trail, each product's ISSUE records of the last RATE_WINDOW_S
 * seconds (the running lines' rate, which guardianctl status turns into an
 * ETA: the trail is where every process's certificates meet).  It holds no secret:
 * paths, counts, the chain head's hash (which every audit report carries) and
 * words; no credential's name, salt or hash; the store's server by host, port
 * and database only (guardian_store_location), never its password.
 *
 * The output: a session CKO_DATA object "guardian-output:status" whose
 * CKA_VALUE is text, one "key=value" per line, in the order and with the
 * meaning docs/vendor-interface.md ("The status") gives; a reader ignores keys
 * it does not know (later versions add keys, never change one).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anchor.h"
#include "identity.h"
#include "module.h"
#include "request.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "status"
/* 2 adds records_export (EXPORT records: version 1 counted them as records_other).
 * 3 adds now, rate_window and issued_recent.OEM/PRODUCT (the running lines' rate),
 * records_retire (RETIRE records: retired production CA keys), and
 * records_outcome and records_reissue (schema 6).
 * 4 adds store and store_location (which store: SQLite's file, or the
 * PostgreSQL server by host, port and database, never its password). */
#define STATUS_VERSION 4
/* The window of the running lines' rate: ISSUE records dated in the last
 * RATE_WINDOW_S seconds of the module's clock, per product. */
#define RATE_WINDOW_S 60
/* Products whose recent ISSUE records are counted (the first this many, in
 * the store's order): more than a centre's lines, bounded to keep the text
 * within its buffer. */
#define RATE_PRODUCTS_MAX 64

struct recent {
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
    uint64_t issued;
};

struct counts {
    uint64_t records;          /* records whose links verified */
    uint64_t by_type[GUARDIAN_AUDIT_TYPE_MAX + 1]; /* [enum guardian_audit_type], [0] any other type */
    uint64_t head_seq;
    uint8_t head_hash[GUARDIAN_HASH_LEN];
    int64_t head_time, newest_time;
    uint64_t products, authorised, issued, remaining;
    int64_t now;
    struct recent recent[RATE_PRODUCTS_MAX];
    size_t n_recent;
};

static CK_RV count_record(const struct guardian_audit_record *r, void *ctx)
{
    struct counts *c = ctx;
    size_t t = r->type >= GUARDIAN_AUDIT_IMPORT && r->type <= GUARDIAN_AUDIT_TYPE_MAX ? (size_t)r->type : 0;
    c->records++;
    c->by_type[t]++;
    c->head_seq = r->seq;
    memcpy(c->head_hash, r->hash, sizeof(c->head_hash));
    c->head_time = r->time;
    if (r->time > c->newest_time)
        c->newest_time = r->time;
    if (r->type == GUARDIAN_AUDIT_ISSUE && r->time > c->now - RATE_WINDOW_S && r->time <= c->now)
        for (size_t i = 0; i < c->n_recent; i++)
            if (strcmp(c->recent[i].oem_id, r->oem_id) == 0 && strcmp(c->recent[i].product_id, r->product_id) == 0) {
                c->recent[i].issued++;
                break;
            }
    return CKR_OK;
}

static CK_RV count_product(const struct guardian_product *p, void *ctx)
{
    struct counts *c = ctx;
    c->products++;
    c->authorised += p->authorised_units;
    c->issued += p->issued_units;
    c->remaining += p->remaining_units;
    if (c->n_recent < RATE_PRODUCTS_MAX) {
        struct recent *r = &c->recent[c->n_recent++];
        snprintf(r->oem_id, sizeof(r->oem_id), "%s", p->oem_id);
        snprintf(r->product_id, sizeof(r->product_id), "%s", p->product_id);
        r->issued = 0;
    }
    return CKR_OK;
}

struct text {
    char buf[16384];
    size_t len;
    CK_RV rv;
};

static void add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (t->rv != CKR_OK)
        return;
    va_start(ap, fmt);
    n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(t->buf) - t->len)
        t->rv = CKR_HOST_MEMORY;
    else
        t->len += (size_t)n;
}

/* A path as a value: it runs to the end of the line, so a control character
 * (a newline in a configured path) is written as '?'. */
static void add_path(struct text *t, const char *key, const char *value)
{
    char clean[PATH_MAX];
    size_t i;
    for (i = 0; value[i] != '\0' && i < sizeof(clean) - 1; i++)
        clean[i] = (unsigned char)value[i] < 0x20 || value[i] == 0x7f ? '?' : value[i];
    clean[i] = '\0';
    add(t, "%s=%s\n", key, clean);
}

static const char *anchor_word(enum guardian_anchor_state a)
{
    switch (a) {
    case GUARDIAN_ANCHOR_ABSENT: return "absent";
    case GUARDIAN_ANCHOR_AGREES: return "agrees";
    case GUARDIAN_ANCHOR_STORE_AHEAD: return "store-ahead";
    case GUARDIAN_ANCHOR_BEHIND: return "behind";
    case GUARDIAN_ANCHOR_INVALID: return "invalid";
    }
    return "invalid";
}

static CK_RV status(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                    const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const struct guardian_config *cfg = guardian_state_config();
    char location[PATH_MAX + 32];
    struct counts c;
    struct text *t = NULL; /* 16 KiB: not on a PKCS#11 caller's stack */
    enum guardian_anchor_state anchor = GUARDIAN_ANCHOR_ABSENT;
    uint64_t anchor_seq = 0;
    bool so_set = false;
    size_t n_users = 0, n_locked = 0;
    uint32_t max_user_failures = 0, so_failures = 0;
    CK_RV chain, rv;
    (void)rq;

    memset(&c, 0, sizeof(c));
    return_val_if_fail(cfg != NULL, CKR_CRYPTOKI_NOT_INITIALIZED);
    c.now = (int64_t)time(NULL);
    /* This process's issue journal first, so that its issued units are in
     * the trail the chain check walks (as the audit export does). */
    if ((rv = guardian_store_flush(st)) != CKR_OK)
        return rv;
    /* The products first: the chain walk counts their recent ISSUE records. */
    if ((rv = guardian_store_products_each(st, count_product, &c)) != CKR_OK)
        return rv;
    chain = guardian_store_audit_each(st, count_record, &c);
    if (chain != CKR_OK && chain != CKR_GUARDIAN_AUDIT_CORRUPT)
        return chain;
    if ((rv = guardian_anchor_compare(be, session, st, &anchor, &anchor_seq)) != CKR_OK)
        return rv;
    if ((rv = guardian_store_credential_summary(st, &so_set, &n_users, &max_user_failures, &n_locked,
                                                &so_failures)) != CKR_OK)
        return rv;

    if ((t = calloc(1, sizeof(*t))) == NULL)
        return CKR_HOST_MEMORY;
    add(t, "version=%d\n", STATUS_VERSION);
    add_path(t, "backend", cfg->backend);
    add_path(t, "configuration", cfg->source);
    add_path(t, "state_dir", cfg->state_dir);
    add(t, "store=%s\n", guardian_store_engine_name(st));
    guardian_store_location(st, location, sizeof(location));
    add_path(t, "store_location", location);
    add(t, "audit_chain=%s\n", chain == CKR_OK ? "ok" : "corrupt");
    add(t, "audit_records=%llu\n", (unsigned long long)c.records);
    add(t, "audit_head_seq=%llu\n", (unsigned long long)c.head_seq);
    add(t, "audit_head_hash=");
    for (size_t i = 0; i < sizeof(c.head_hash); i++)
        add(t, "%02x", c.head_hash[i]);
    add(t, "\naudit_head_time=%lld\n", (long long)c.head_time);
    add(t, "audit_newest_time=%lld\n", (long long)c.newest_time);
    add(t, "records_import=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_IMPORT]);
    add(t, "records_reserve=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_RESERVE]);
    add(t, "records_issue=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_ISSUE]);
    add(t, "records_release=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_RELEASE]);
    add(t, "records_journal_lost=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_JOURNAL_LOST]);
    add(t, "records_credential=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_CREDENTIAL]);
    add(t, "records_export=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_EXPORT]);
    add(t, "records_outcome=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_OUTCOME]);
    add(t, "records_reissue=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_REISSUE]);
    add(t, "records_retire=%llu\n", (unsigned long long)c.by_type[GUARDIAN_AUDIT_RETIRE]);
    add(t, "records_other=%llu\n", (unsigned long long)c.by_type[0]);
    add(t, "anchor=%s\n", anchor_word(anchor));
    add(t, "anchor_seq=%llu\n", (unsigned long long)anchor_seq);
    add(t, "products=%llu\n", (unsigned long long)c.products);
    add(t, "units_authorised=%llu\n", (unsigned long long)c.authorised);
    add(t, "units_issued=%llu\n", (unsigned long long)c.issued);
    add(t, "units_remaining=%llu\n", (unsigned long long)c.remaining);
    add(t, "service_mode=%s\n", guardian_service_mode() ? "yes" : "no");
    add(t, "so=%s\n", so_set ? "set" : "unset");
    add(t, "so_failures=%lu\n", (unsigned long)so_failures);
    add(t, "so_locked=%s\n", so_set && so_failures >= GUARDIAN_CREDENTIAL_MAX_FAILURES ? "yes" : "no");
    add(t, "operators=%zu\n", n_users);
    add(t, "operators_locked=%zu\n", n_locked);
    add(t, "operators_max_failures=%lu\n", (unsigned long)max_user_failures);
    add(t, "now=%lld\n", (long long)c.now);
    add(t, "rate_window=%d\n", RATE_WINDOW_S);
    for (size_t i = 0; i < c.n_recent; i++)
        add(t, "issued_recent.%s/%s=%llu\n", c.recent[i].oem_id, c.recent[i].product_id,
            (unsigned long long)c.recent[i].issued);
    rv = t->rv;
    if (rv == CKR_OK)
        rv = guardian_output_create(be, session, "status", (const uint8_t *)t->buf, t->len, out);
    free(t);
    if (rv == CKR_OK)
        guardian_info(LOG, "status: audit chain %s (%llu records), anchor %s, %llu products",
                      chain == CKR_OK ? "ok" : "CORRUPT", (unsigned long long)c.records, anchor_word(anchor),
                      (unsigned long long)c.products);
    return rv;
}

const struct guardian_request_type guardian_request_status = {
    .type = CKG_GUARDIAN_REQ_STATUS,
    .name = "CKG_GUARDIAN_REQ_STATUS",
    .session = GUARDIAN_REQUEST_USER,
    .attributes = NULL,
    .n_attributes = 0,
    .run = status,
};
