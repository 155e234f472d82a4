/*
 * ctl_audit.c — `guardianctl audit export`: asks the Guardian for its signed
 * audit report (docs/audit-report.md) and writes it.  The OEM checks it
 * offline with `guardian-wrap verify-report`.
 *
 *   guardianctl audit export [--product OEM/PRODUCT] [--out REPORT]
 *
 * The report is built and signed inside the module by the request
 * CKG_GUARDIAN_REQ_AUDIT_EXPORT (mechs/audit_export.c): guardianctl neither
 * reads the store nor signs anything for it, so the Guardian key never signs
 * bytes that a caller chose.  C_CreateObject of the request, C_GetAttributeValue
 * of the output's CKA_VALUE, C_DestroyObject of the output.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "guardianctl.h"

/* What the summary line says, counted from the report's own lines. */
struct counts {
    unsigned long long records, redacted, certificates, issued, head;
    long long exported; /* the report's "exported" line: seconds since 1970 */
};

static void count_lines(const char *r, size_t len, struct counts *c)
{
    memset(c, 0, sizeof(*c));
    for (const char *p = r, *end = r + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (l > 7 && memcmp(p, "record ", 7) == 0) {
            const char *type = memchr(p + 7, ' ', l - 7);
            c->records++;
            if (type != NULL && (size_t)(p + l - type) > 6 && memcmp(type, " ISSUE ", 7) == 0)
                c->issued++;
        } else if (l > 9 && memcmp(p, "redacted ", 9) == 0) {
            c->records++;
            c->redacted++;
        } else if (l > 12 && memcmp(p, "certificate ", 12) == 0) {
            c->certificates++;
        } else if (l > 5 && memcmp(p, "head ", 5) == 0) {
            c->head = strtoull(p + 5, NULL, 10);
        } else if (l > 9 && memcmp(p, "exported ", 9) == 0) {
            c->exported = strtoll(p + 9, NULL, 10);
        }
        p += l + 1;
    }
}

/* The request's answer, in words an operator can act on. */
static void refused(CK_RV rv, const char *scope)
{
    switch (rv) {
    case CKR_GUARDIAN_AUDIT_CORRUPT:
        die("the audit trail is corrupt (the module's log line names the record): not exported; keep guardian.db "
            "as it is and tell the OEM");
    case CKR_USER_NOT_LOGGED_IN:
        die("the export needs the user logged in (GUARDIAN_PIN)");
    case CKR_GUARDIAN_PRODUCT_UNKNOWN:
        die("no product %s in this Guardian (see '" PROG " products')", scope ? scope : "?");
    case CKR_ATTRIBUTE_VALUE_INVALID:
        die("--product must be OEM/PRODUCT, each 1..%d bytes", GUARDIAN_ID_MAX);
    case CKR_KEY_HANDLE_INVALID:
        die("no Guardian identity (key and certificate) in token '%s': run '" PROG " init' first", token_label);
    case CKR_FUNCTION_FAILED:
        die("the Guardian could not build the report: production kept changing the counters during the export "
            "(export when the line pauses), or see the module's log");
    case CKR_GUARDIAN_REQUEST_INVALID:
        die("the Guardian module refused the export request (a module without the audit export request?)");
    default:
        die("the Guardian refused the export: %s (0x%lx)", ckr(rv), (unsigned long)rv);
    }
}

static int export_report(const char *scope, const char *out, int force)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_AUDIT_EXPORT, n = 2;
    CK_ATTRIBUTE t[4] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    unsigned char *report;
    CK_ULONG len;
    struct counts c;
    char fpr[65] = "?";
    CK_RV rv;

    if (scope != NULL) {
        const char *slash = strchr(scope, '/');
        if (slash == NULL || slash == scope || slash[1] == '\0')
            die("--product must be OEM/PRODUCT");
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, (void *)scope, (CK_ULONG)(slash - scope)};
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, (void *)(slash + 1), (CK_ULONG)strlen(slash + 1)};
    }
    login(CKU_USER);
    rv = p11->C_CreateObject(session, t, n, &h);
    if (rv != CKR_OK)
        refused(rv, scope);
    report = get_attr(h, CKA_VALUE, &len);
    P11(p11->C_DestroyObject(session, h));

    if (out != NULL)
        write_output(out, report, len, force);
    else if (fwrite(report, 1, len, stdout) != len || fflush(stdout) != 0)
        die("cannot write the report to standard output");

    count_lines((const char *)report, len, &c);
    {
        BIO *b = BIO_new_mem_buf(report, (int)(len > 0x7fffffff ? 0x7fffffff : len));
        X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        if (x != NULL)
            fingerprint(x, fpr);
        X509_free(x);
        BIO_free(b);
    }
    if (json_out) {
        struct ctl_json j;
        ctl_json_begin(&j, stdout);
        ctl_json_object(&j, NULL);
        ctl_json_string(&j, "out", out);
        ctl_json_string(&j, "scope", scope);
        ctl_json_time(&j, "exported", (int64_t)c.exported);
        ctl_json_uint(&j, "records", c.records);
        ctl_json_uint(&j, "head_seq", c.head);
        ctl_json_uint(&j, "redacted", c.redacted);
        ctl_json_uint(&j, "certificates", c.certificates);
        ctl_json_uint(&j, "issued", c.issued);
        ctl_json_string(&j, "guardian_sha256", fpr);
        ctl_json_end(&j);
    } else {
        fprintf(stderr, "exported %llu records (head %llu, %llu of them redacted), %llu certificates; signed by the "
                        "Guardian sha256:%s%s%s\n",
                c.records, c.head, c.redacted, c.certificates, fpr, out ? "; wrote " : "", out ? out : "");
    }
    if (c.issued > c.certificates)
        fprintf(stderr, PROG ": warning: %llu issued certificates were not recorded in the store; the report lacks "
                        "them and will not verify\n",
                c.issued - c.certificates);
    free(report);
    return 0;
}

int cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {{"product", required_argument, NULL, 'p'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"force", no_argument, NULL, 'F'},
                                         {NULL, 0, NULL, 0}};
    const char *scope = NULL, *out = NULL;
    int c, force = 0;

    if (argc < 2)
        usage_die("audit", "needs a subcommand: export");
    if (strcmp(argv[1], "export") != 0)
        usage_die("audit", "unknown subcommand '%s' (export)", argv[1]);
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': scope = optarg; break;
        case 'o': out = optarg; break;
        case 'F': force = 1; break;
        default: usage_die("audit", "unknown option '%s'", argv[optind]);
        }
    }
    if (optind != argc - 1)
        usage_die("audit", "unexpected argument '%s'", argv[optind + 1]);
    if (json_out && out == NULL)
        usage_die("audit", "--json needs --out FILE (standard output carries the JSON summary, not the report)");
    /* Before the export, which is itself recorded: a report that could not
     * be written must not leave an EXPORT record behind. */
    check_output("audit export", out, force);
    need_token();
    return export_report(scope, out, force);
}
