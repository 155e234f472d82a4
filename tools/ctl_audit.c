/*
 * ctl_audit.c — `guardianctl audit export`: the audit trail, the Guardian's
 * counters and every issued certificate, as one text report signed inside the
 * token by the Guardian's identity key (docs/audit-report.md).  The OEM
 * checks it offline with `guardian-wrap verify-report`.
 *
 *   guardianctl audit export [--product OEM/PRODUCT] [--out REPORT]
 *
 * The lines come from tools/report.c, the same code that reads them back, so
 * there is one way to write a report.  The store verifies the hash chain as it
 * is read; a corrupt trail is not exported.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "guardianctl.h"
#include "report.h"

#define EXPORT_ATTEMPTS 5

struct issued {
    uint64_t seq, serial;
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
};

struct export {
    const char *oem_id, *product_id; /* scope, or NULL for the whole trail */
    FILE *body;                      /* product and record lines */
    char *products;                  /* the product lines, to compare two reads */
    size_t products_len;
    struct guardian_audit_record last;
    uint64_t n_records, n_redacted;
    struct issued *issued;
    size_t n_issued, cap_issued;
    int scope_seen;
};

static int in_scope(const struct export *e, const char *oem_id, const char *product_id)
{
    return e->oem_id == NULL || (strcmp(oem_id, e->oem_id) == 0 && strcmp(product_id, e->product_id) == 0);
}

static void put(FILE *f, const char *line, size_t len)
{
    if (len == 0 || fwrite(line, 1, len, f) != len)
        die("cannot write the report (a record or product the format cannot carry?)");
}

static CK_RV product_line(const struct guardian_product *p, void *ctx)
{
    struct export *e = ctx;
    char line[1024];
    FILE *f = e->body;
    if (!in_scope(e, p->oem_id, p->product_id))
        return CKR_OK;
    e->scope_seen = 1;
    put(f, line, report_format_product(p, line, sizeof(line)));
    return CKR_OK;
}

/* The product lines, in one string: read before and after the trail. */
static char *read_products(struct guardian_store *st, struct export *e, size_t *len)
{
    char *buf = NULL;
    FILE *saved = e->body, *f = open_memstream(&buf, len);
    CK_RV rv;
    if (f == NULL)
        die("out of memory");
    e->body = f;
    rv = guardian_store_products_each(st, product_line, e);
    e->body = saved;
    if (fclose(f) != 0)
        die("out of memory");
    if (rv != CKR_OK)
        die("cannot read the products: %s", ckr(rv));
    return buf;
}

static CK_RV record_line(const struct guardian_audit_record *r, void *ctx)
{
    struct export *e = ctx;
    char line[2048];
    e->last = *r;
    e->n_records++;
    if (!in_scope(e, r->oem_id, r->product_id)) {
        e->n_redacted++;
        put(e->body, line, report_format_redacted(r, line, sizeof(line)));
        return CKR_OK;
    }
    e->scope_seen = 1;
    put(e->body, line, report_format_record(r, line, sizeof(line)));
    if (r->type == GUARDIAN_AUDIT_ISSUE) {
        struct issued *i;
        if (e->n_issued == e->cap_issued) {
            e->cap_issued = e->cap_issued ? 2 * e->cap_issued : 1024;
            e->issued = realloc(e->issued, e->cap_issued * sizeof(*e->issued));
            if (e->issued == NULL)
                die("out of memory");
        }
        i = &e->issued[e->n_issued++];
        i->seq = r->seq;
        i->serial = r->serial;
        memcpy(i->oem_id, r->oem_id, sizeof(i->oem_id));
        memcpy(i->product_id, r->product_id, sizeof(i->product_id));
    }
    return CKR_OK;
}

/* Products, then the trail, then the products again: the counters and the
 * trail agree only if no unit was reserved or released in between, so a read
 * that overlapped production is done again. */
static char *read_consistent(struct guardian_store *st, struct export *e, size_t *len)
{
    for (int attempt = 0; attempt < EXPORT_ATTEMPTS; attempt++) {
        size_t before_len, after_len;
        char *before = read_products(st, e, &before_len), *after, *body = NULL;
        CK_RV rv;

        e->body = open_memstream(&body, len);
        if (e->body == NULL)
            die("out of memory");
        if (before_len > 0 && fwrite(before, 1, before_len, e->body) != before_len)
            die("out of memory");
        memset(&e->last, 0, sizeof(e->last));
        e->n_records = e->n_redacted = 0;
        e->n_issued = 0;
        rv = guardian_store_audit_each(st, record_line, e);
        if (fclose(e->body) != 0)
            die("out of memory");
        e->body = NULL;
        if (rv == CKR_GUARDIAN_AUDIT_CORRUPT)
            die("the audit trail is corrupt (the log line above names the record): not exported; keep guardian.db "
                "as it is and tell the OEM");
        if (rv != CKR_OK)
            die("cannot read the audit trail: %s", ckr(rv));
        after = read_products(st, e, &after_len);
        if (after_len == before_len && memcmp(after, before, before_len) == 0) {
            free(before);
            free(after);
            return body;
        }
        free(before);
        free(after);
        free(body);
        fprintf(stderr, PROG ": production changed the counters during the export; reading again\n");
        sleep(1);
    }
    die("production kept changing the counters during %d attempts: export when the line pauses", EXPORT_ATTEMPTS);
}

static int export_report(const char *scope, const char *out)
{
    struct export e;
    char oem[GUARDIAN_ID_MAX + 1], product[GUARDIAN_ID_MAX + 1], scope_line[512], head[65], fpr[65];
    char *report = NULL, *body, *b64 = NULL;
    size_t report_len = 0, body_len = 0, certs = 0, missing = 0;
    FILE *f;
    CK_OBJECT_HANDLE key, cert;
    X509 *gcert;
    struct guardian_store *st;
    unsigned char *sig;
    int sig_len;

    memset(&e, 0, sizeof(e));
    if (scope != NULL) {
        const char *slash = strchr(scope, '/');
        if (slash == NULL || slash == scope || slash[1] == '\0' || (size_t)(slash - scope) > GUARDIAN_ID_MAX ||
            strlen(slash + 1) > GUARDIAN_ID_MAX)
            die("--product must be OEM/PRODUCT");
        memcpy(oem, scope, (size_t)(slash - scope));
        oem[slash - scope] = '\0';
        strcpy(product, slash + 1);
        e.oem_id = oem;
        e.product_id = product;
        if (report_format_scope(oem, product, scope_line, sizeof(scope_line)) == 0)
            die("--product must be OEM/PRODUCT");
    } else {
        strcpy(scope_line, "all");
    }

    login(CKU_USER);
    key = find_identity(CKO_PRIVATE_KEY);
    cert = find_identity(CKO_CERTIFICATE);
    if (key == CK_INVALID_HANDLE || cert == CK_INVALID_HANDLE)
        die("no Guardian %s in token '%s': run '" PROG " init' first", key ? "certificate" : "key", token_label);
    gcert = cert_from_object(cert);

    st = open_store();
    body = read_consistent(st, &e, &body_len);
    if (scope != NULL && !e.scope_seen)
        die("no product %s in this Guardian (see '" PROG " products')", scope);

    f = open_memstream(&report, &report_len);
    if (f == NULL)
        die("out of memory");
    {
        uint8_t zeros[GUARDIAN_HASH_LEN] = {0};
        const uint8_t *h = e.n_records ? e.last.hash : zeros;
        for (int i = 0; i < GUARDIAN_HASH_LEN; i++)
            snprintf(head + 2 * i, 3, "%02x", h[i]);
    }
    fprintf(f, REPORT_MAGIC "\nexported %lld\nscope %s\nhead %llu %s\n", (long long)time(NULL), scope_line,
            (unsigned long long)e.last.seq, head);
    if (!PEM_write_X509(f, gcert))
        die("cannot write the Guardian certificate");
    if (body_len > 0 && fwrite(body, 1, body_len, f) != body_len)
        die("out of memory");
    free(body);

    /* The certificates, in record order. */
    b64 = malloc(GUARDIAN_CERT_MAX * 4 / 3 + 8);
    if (b64 == NULL)
        die("out of memory");
    for (size_t i = 0; i < e.n_issued; i++) {
        uint8_t *der = NULL;
        size_t der_len = 0;
        CK_RV rv = guardian_store_certificate_get(st, e.issued[i].oem_id, e.issued[i].product_id,
                                                  e.issued[i].serial, &der, &der_len);
        if (rv != CKR_OK)
            die("cannot read the certificate of serial %llu: %s", (unsigned long long)e.issued[i].serial, ckr(rv));
        if (der == NULL || der_len > GUARDIAN_CERT_MAX) {
            missing++;
            free(der);
            continue;
        }
        if (report_base64(der, der_len, b64, GUARDIAN_CERT_MAX * 4 / 3 + 8) == 0)
            die("cannot encode a certificate");
        fprintf(f, "certificate %llu %s\n", (unsigned long long)e.issued[i].seq, b64);
        certs++;
        free(der);
    }
    free(b64);
    guardian_store_close(st);
    if (fflush(f) != 0)
        die("out of memory");

    sig = token_sign(key, (const unsigned char *)report, report_len, &sig_len);
    {
        char sig64[256];
        if (sig == NULL || report_base64(sig, (size_t)sig_len, sig64, sizeof(sig64)) == 0)
            die("cannot encode the signature");
        fprintf(f, "signature %s\n", sig64);
        OPENSSL_free(sig);
    }
    if (fclose(f) != 0)
        die("out of memory");

    if (out != NULL) {
        char tmp[4096];
        FILE *o;
        snprintf(tmp, sizeof(tmp), "%s.tmp", out);
        o = fopen(tmp, "w");
        if (o == NULL)
            die("cannot create %s: %s", tmp, strerror(errno));
        if (fwrite(report, 1, report_len, o) != report_len || fflush(o) != 0 || fsync(fileno(o)) != 0 ||
            fclose(o) != 0)
            die("cannot write %s: %s", tmp, strerror(errno));
        if (rename(tmp, out) != 0)
            die("cannot rename %s to %s: %s", tmp, out, strerror(errno));
    } else if (fwrite(report, 1, report_len, stdout) != report_len || fflush(stdout) != 0) {
        die("cannot write the report to standard output");
    }
    fingerprint(gcert, fpr);
    fprintf(stderr, "exported %llu records (head %llu, %llu of them redacted), %zu certificates; signed by the "
                    "Guardian sha256:%s%s%s\n",
            (unsigned long long)e.n_records, (unsigned long long)e.last.seq, (unsigned long long)e.n_redacted, certs,
            fpr, out ? "; wrote " : "", out ? out : "");
    if (missing > 0)
        fprintf(stderr, PROG ": warning: %zu issued certificates were not recorded in the store; the report lacks "
                        "them and will not verify\n",
                missing);
    X509_free(gcert);
    free(e.issued);
    free(report);
    return 0;
}

int cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {{"product", required_argument, NULL, 'p'},
                                         {"out", required_argument, NULL, 'o'},
                                         {NULL, 0, NULL, 0}};
    const char *scope = NULL, *out = NULL;
    int c;

    if (argc < 2 || strcmp(argv[1], "export") != 0)
        die("usage: " PROG " audit export [--product OEM/PRODUCT] [--out REPORT]");
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': scope = optarg; break;
        case 'o': out = optarg; break;
        default: die("usage: " PROG " audit export [--product OEM/PRODUCT] [--out REPORT]");
        }
    }
    if (optind != argc - 1)
        die("usage: " PROG " audit export [--product OEM/PRODUCT] [--out REPORT]");
    return export_report(scope, out);
}
