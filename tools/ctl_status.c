/*
 * ctl_status.c — `guardianctl status [--json] [--watch [SECONDS]]`.
 *
 * The human report is guardianctl.c's status_report; this file adds what a
 * line controller needs: the same content as one JSON object (the schema is
 * docs/guardianctl.md, "status --json"), the running lines' rate and ETA, and
 * --watch, which asks the module again every SECONDS until Ctrl-C (the
 * screen is cleared only when stdout is a terminal; with --json each refresh
 * is one line, JSON lines).
 *
 * Everything comes from the module, checked when asked: the audit chain is
 * walked from its first record on every refresh (CKG_GUARDIAN_REQ_STATUS), so
 * a record altered between two refreshes is reported at the next one; a
 * state that grants nothing (chain broken, store behind the token's anchor)
 * ends the command with exit 1, after the report that shows it.
 *
 * The rate of a line: the module counts, per product, the ISSUE records dated
 * within the last `rate_window` seconds of its clock (status keys
 * issued_recent.OEM/PRODUCT); rate = that count / window, ETA = remaining /
 * rate.  A line running in another process folds its certificates into the
 * trail at each block reservation (mechs/derive_device_cert.c), so the count
 * lags by at most one block.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "guardianctl.h"

struct line_rate {
    int known;                  /* the module reports rates (status version >= 3) */
    unsigned long long recent;  /* ISSUE records in the window */
    unsigned long long window;  /* seconds */
    double rate;                /* certificates per second */
    long long eta_s;            /* seconds until the product runs out at that rate; -1: not running */
};

static void product_rate(const struct guardian_status *gs, const struct product *p, struct line_rate *r)
{
    char key[2 * GUARDIAN_ID_MAX + 32], v[32];
    memset(r, 0, sizeof(*r));
    r->eta_s = -1;
    if (status_value(gs, "rate_window", v, sizeof(v)) == NULL)
        return;
    r->window = status_number(gs, "rate_window");
    r->known = r->window > 0;
    snprintf(key, sizeof(key), "issued_recent.%s/%s", p->oem, p->product);
    if (status_value(gs, key, v, sizeof(v)) != NULL)
        r->recent = status_number(gs, key);
    if (r->known)
        r->rate = (double)r->recent / (double)r->window;
    if (r->rate > 0)
        r->eta_s = (long long)((double)p->remaining / r->rate + 0.5);
}

/* The module's clock, else ours. */
static int64_t status_now(const struct guardian_status *gs)
{
    char v[32];
    return status_value(gs, "now", v, sizeof(v)) != NULL ? (int64_t)status_number(gs, "now") : (int64_t)time(NULL);
}

/* The store (status keys store, store_location): a module before version 4
 * does not name it. */
void print_status_store(const struct guardian_status *gs)
{
    char engine[32], where[PATH_MAX];
    if (status_value(gs, "store", engine, sizeof(engine)) == NULL ||
        status_value(gs, "store_location", where, sizeof(where)) == NULL)
        printf("  store         (not reported: a module older than this guardianctl)\n");
    else
        printf("  store         %s (%s)\n", engine, where);
}

void print_status_products(const struct guardian_status *gs, const char *indent)
{
    struct product *p;
    size_t n = list_products(&p);
    int64_t now = status_now(gs);
    printf("%s%-16s %-20s %8s %10s %10s %10s  %-20s  %s\n", indent, "OEM", "PRODUCT", "RELEASE", "AUTHORISED",
           "ISSUED", "REMAINING", "NOT AFTER", "RATE, ETA");
    for (size_t i = 0; i < n; i++) {
        struct line_rate r;
        char when[32], eta[96];
        product_rate(gs, &p[i], &r);
        ctl_iso8601((int64_t)p[i].not_after, when);
        if (!r.known)
            snprintf(eta, sizeof(eta), "(the module reports no rate)");
        else if (r.recent == 0)
            snprintf(eta, sizeof(eta), "idle (no certificate in the last %llu s)", r.window);
        else {
            char end[32];
            ctl_iso8601(now + r.eta_s, end);
            snprintf(eta, sizeof(eta), "%.1f/s, ETA %lld:%02lld:%02lld (%s)", r.rate, r.eta_s / 3600,
                     r.eta_s / 60 % 60, r.eta_s % 60, end);
        }
        printf("%s%-16s %-20s %8lu %10lu %10lu %10lu  %-20s  %s%s\n", indent, p[i].oem, p[i].product, p[i].release,
               p[i].authorised, p[i].issued, p[i].remaining, when,
               (time_t)p[i].not_after < time(NULL) ? "(expired) " : "", eta);
    }
    if (n == 0)
        printf("%snone ('" PROG " import PACKAGE')\n", indent);
    free(p);
}

static void json_cert(struct ctl_json *j, const char *key, CK_OBJECT_HANDLE h)
{
    X509 *x = cert_or_null(h);
    char fpr[65], *subject, *issuer;
    if (x == NULL) {
        ctl_json_null(j, key);
        return;
    }
    subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    issuer = X509_NAME_oneline(X509_get_issuer_name(x), NULL, 0);
    fingerprint(x, fpr);
    ctl_json_object(j, key);
    ctl_json_string(j, "subject", subject);
    ctl_json_string(j, "issuer", issuer);
    ctl_json_string(j, "sha256", fpr);
    ctl_json_close(j);
    OPENSSL_free(subject);
    OPENSSL_free(issuer);
    X509_free(x);
}

/* The backend's protections: the module's probe (CKG_GUARDIAN_REQ_PROBE). */
static void json_probe(struct ctl_json *j)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG len = 0;
    char *text, *line, *save = NULL;
    CK_RV rv = request_in(session, CKG_GUARDIAN_REQ_PROBE, NULL, 0, &h);
    if (rv != CKR_OK)
        die("the module could not probe the backend: %s (0x%lx); its log line says why", ckr(rv), (unsigned long)rv);
    text = (char *)get_attr(h, CKA_VALUE, &len);
    P11(p11->C_DestroyObject(session, h));
    ctl_json_array(j, "protections");
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        struct probe_line pl;
        if (!parse_probe_line(line, &pl))
            die("the module's probe answer does not parse: '%s'", line);
        ctl_json_object(j, NULL);
        ctl_json_string(j, "name", pl.name);
        ctl_json_string(j, "verdict", pl.verdict);
        ctl_json_string(j, "ckr", pl.rv);
        ctl_json_string(j, "what", pl.sentence);
        ctl_json_close(j);
    }
    ctl_json_close(j);
    free(text);
}

/* A "yes"/"no" key of the status as a JSON boolean. */
static void json_yes(struct ctl_json *j, const char *name, const struct guardian_status *gs, const char *key)
{
    char v[16];
    ctl_json_bool(j, name, status_value(gs, key, v, sizeof(v)) != NULL && strcmp(v, "yes") == 0);
}

static void status_json(const struct guardian_status *gs)
{
    static const char *const types[] = {"import",     "reserve", "issue",  "release", "journal_lost",
                                        "credential", "export",  "retire", "other"};
    struct ctl_json j;
    CK_TOKEN_INFO ti;
    CK_OBJECT_HANDLE roots[64];
    CK_ULONG n_roots;
    struct product *p;
    size_t n;
    char field[65], v[32], where[PATH_MAX];
    const char *code, *unsound = state_unsound(gs, &code);
    int64_t now = status_now(gs);
    unsigned long long window = 0;

    P11(p11->C_GetTokenInfo(slot, &ti));
    ctl_json_begin(&j, stdout);
    ctl_json_object(&j, NULL);
    ctl_json_time(&j, "time", now);
    ctl_json_object(&j, "token");
    trimmed(field, ti.label, sizeof(ti.label));
    ctl_json_string(&j, "label", field);
    trimmed(field, ti.model, sizeof(ti.model));
    ctl_json_string(&j, "model", field);
    trimmed(field, ti.manufacturerID, sizeof(ti.manufacturerID));
    ctl_json_string(&j, "manufacturer", field);
    trimmed(field, ti.serialNumber, sizeof(ti.serialNumber));
    ctl_json_string(&j, "serial", field);
    ctl_json_uint(&j, "flags", (unsigned long long)ti.flags);
    ctl_json_bool(&j, "user_pin_locked", (ti.flags & CKF_USER_PIN_LOCKED) != 0);
    ctl_json_bool(&j, "so_pin_locked", (ti.flags & CKF_SO_PIN_LOCKED) != 0);
    ctl_json_close(&j);

    ctl_json_object(&j, "backend");
    ctl_json_string(&j, "library", gs->backend);
    ctl_json_string(&j, "configuration", gs->configuration);
    ctl_json_string(&j, "state_dir", gs->state_dir);
    if (status_value(gs, "store", field, sizeof(field)) != NULL)
        ctl_json_string(&j, "store", field);
    else
        ctl_json_null(&j, "store");
    if (status_value(gs, "store_location", where, sizeof(where)) != NULL)
        ctl_json_string(&j, "store_location", where);
    else
        ctl_json_null(&j, "store_location");
    json_probe(&j);
    ctl_json_close(&j);

    ctl_json_object(&j, "identity");
    json_cert(&j, "certificate", find_identity(CKO_CERTIFICATE));
    json_cert(&j, "signing_certificate", find_signing(CKO_CERTIFICATE));
    ctl_json_bool(&j, "signing_key", find_signing(CKO_PRIVATE_KEY) != CK_INVALID_HANDLE);
    ctl_json_close(&j);

    ctl_json_array(&j, "oem_roots");
    n_roots = list_roots(roots, 64);
    for (CK_ULONG i = 0; i < n_roots; i++)
        json_root(&j, roots[i]);
    ctl_json_close(&j);

    ctl_json_object(&j, "state");
    ctl_json_string(&j, "audit_chain", gs->chain_ok ? "ok" : "corrupt");
    ctl_json_uint(&j, "audit_records", gs->audit_records);
    ctl_json_uint(&j, "audit_head_seq", gs->audit_head_seq);
    if (gs->audit_head_seq > 0)
        ctl_json_time(&j, "audit_head_time", (int64_t)gs->audit_head_time);
    else
        ctl_json_null(&j, "audit_head_time");
    ctl_json_object(&j, "records");
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char key[40];
        snprintf(key, sizeof(key), "records_%s", types[i]);
        ctl_json_uint(&j, types[i], status_value(gs, key, v, sizeof(v)) ? status_number(gs, key) : 0);
    }
    ctl_json_close(&j);
    ctl_json_string(&j, "anchor", gs->anchor);
    ctl_json_uint(&j, "anchor_seq", gs->anchor_seq);
    ctl_json_uint(&j, "products", gs->products);
    ctl_json_uint(&j, "units_authorised", status_number(gs, "units_authorised"));
    ctl_json_uint(&j, "units_issued", status_number(gs, "units_issued"));
    ctl_json_uint(&j, "units_remaining", status_number(gs, "units_remaining"));
    json_yes(&j, "service_mode", gs, "service_mode");
    ctl_json_bool(&j, "so_set", status_value(gs, "so", v, sizeof(v)) != NULL && strcmp(v, "set") == 0);
    json_yes(&j, "so_locked", gs, "so_locked");
    ctl_json_uint(&j, "so_failures", status_number(gs, "so_failures"));
    ctl_json_uint(&j, "operators", status_number(gs, "operators"));
    ctl_json_uint(&j, "operators_locked", status_number(gs, "operators_locked"));
    ctl_json_close(&j);

    if (status_value(gs, "rate_window", v, sizeof(v)) != NULL)
        window = status_number(gs, "rate_window");
    ctl_json_uint(&j, "rate_window_s", window);
    ctl_json_array(&j, "products");
    n = list_products(&p);
    for (size_t i = 0; i < n; i++) {
        struct line_rate r;
        product_rate(gs, &p[i], &r);
        ctl_json_object(&j, NULL);
        json_product(&j, &p[i]);
        ctl_json_uint(&j, "issued_recent", r.recent);
        ctl_json_real(&j, "rate_per_s", r.rate);
        if (r.eta_s >= 0) {
            ctl_json_int(&j, "eta_s", r.eta_s);
            ctl_json_time(&j, "eta", now + r.eta_s);
        } else {
            ctl_json_null(&j, "eta_s");
            ctl_json_null(&j, "eta");
        }
        ctl_json_close(&j);
    }
    free(p);
    ctl_json_close(&j);
    if (unsound != NULL) {
        ctl_json_object(&j, "error");
        ctl_json_string(&j, "code", code);
        ctl_json_string(&j, "message", unsound);
        ctl_json_close(&j);
    }
    ctl_json_end(&j);
}

static volatile sig_atomic_t stop_watching;

static void on_interrupt(int sig)
{
    (void)sig;
    stop_watching = 1;
}

int run_status(int argc, char **argv)
{
    long every = 0; /* seconds between refreshes; 0: once */
    int clear = isatty(STDOUT_FILENO) && !json_out;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--watch") == 0) {
            every = 2;
            if (i + 1 < argc && argv[i + 1][0] != '-') {
                char *end;
                every = strtol(argv[++i], &end, 10);
                if (*end != '\0' || end == argv[i] || every < 1 || every > 86400)
                    usage_die("status", "--watch takes a number of seconds 1..86400, not '%s'", argv[i]);
            }
        } else {
            usage_die("status", "unexpected argument '%s'", argv[i]);
        }
    }
    need_token();
    login(CKU_USER);
    if (every > 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_interrupt;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    }
    for (;;) {
        struct guardian_status gs;
        const char *code, *unsound;
        /* What only the store knows, from the module (its configuration and
         * its state may be another account's: the Guardian service). */
        read_status(&gs);
        if (clear)
            fputs("\033[H\033[2J", stdout);
        if (json_out)
            status_json(&gs);
        else
            status_report(&gs);
        fflush(stdout);
        unsound = state_unsound(&gs, &code);
        if (unsound != NULL) {
            /* Everything is shown (with --json the object carries the error):
             * a state that grants nothing ends in a refusal, on stderr only. */
            json_out = 0;
            die("%s", unsound);
        }
        free(gs.text);
        if (every == 0)
            break;
        for (long s = 0; s < every * 10 && !stop_watching; s++)
            usleep(100 * 1000);
        if (stop_watching)
            break;
    }
    return 0;
}
