/*
 * report.c — the signed audit report: the strict reader and verifier
 * (guardian-wrap verify-report) of the lines that mechs/report_write.c writes
 * (inside the module, mechs/audit_export.c).  The format, every check and the
 * reasons are in docs/audit-report.md; the audit record and its hash in
 * docs/audit-format.md.
 *
 * The reader treats the report as hostile: every line is bounded, printable
 * ASCII, ends with '\n' and must re-format to exactly itself; counts are
 * bounded before anything is allocated; nothing is trusted until the
 * signature, the hash chain and the certificates have been checked.  One pass
 * parses the lines, then the checks run over the parsed records in order.
 */
#include "report.h"

#include "cert_builder.h" /* the subject a template gives: mechs/cert_builder.c */
#include "package.h"      /* DeviceCertTemplate and its device-extension setting */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* The device certificate extension of a release whose template the report
 * does not carry (versions 1 and 2) and no --device-ext-oid names: the
 * legacy default (mechs/package.h). */
#define REPORT_DEVICE_EXT_OID GUARDIAN_OID_DEVICE
#define REPORT_PROBLEMS_SHOWN 100
#define REPORT_PEM_BEGIN "-----BEGIN CERTIFICATE-----"
#define REPORT_PEM_END "-----END CERTIFICATE-----"

/* The writer's names (mechs/report_write.c): one table of record types, one ID
 * alphabet, one base64 alphabet for both directions. */
#define type_names report_type_names
#define TYPE_REDACTED 0
#define TYPE_MAX REPORT_TYPE_MAX
/* The product index of a CREDENTIAL record, or of the EXPORT record of the
 * whole trail: they have none. */
#define NO_PRODUCT UINT16_MAX
/* An operator index: records of encoding 1 (before operators were recorded). */
#define OP_NOT_RECORDED 0
/* Guardian indices: records of encodings 1 and 2 (before Guardians were
 * recorded), and records of encoding 3 that name none ("-"). */
#define GD_NOT_RECORDED 0
#define GD_NONE 1
#define put_hex report_hex
#define id_safe report_id_char
#define b64_alphabet report_base64_alphabet

/* ---- strict decoders (canonical form is checked by re-formatting) ---------------- */

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is not canonical */
}

static int get_hex(const char *s, size_t len, uint8_t *out, size_t n)
{
    if (len != 2 * n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(s[2 * i]), lo = hex_val(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

static int get_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9')
            return 0;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    if (v > max)
        return 0;
    *out = v;
    return 1;
}

static int get_i64(const char *s, size_t len, int64_t *out)
{
    uint64_t v;
    if (len > 1 && s[0] == '-') {
        if (!get_u64(s + 1, len - 1, (uint64_t)INT64_MAX + 1, &v) || v == 0)
            return 0;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
        return 1;
    }
    if (!get_u64(s, len, INT64_MAX, &v))
        return 0;
    *out = (int64_t)v;
    return 1;
}

/* A percent-encoded ID into `out` (GUARDIAN_ID_MAX + 1 bytes). */
static int get_id(const char *s, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (n == GUARDIAN_ID_MAX)
            return 0;
        if (c == '%') {
            static const char up[] = "0123456789ABCDEF";
            const char *hi, *lo;
            if (i + 2 >= len)
                return 0;
            hi = memchr(up, s[i + 1], 16);
            lo = memchr(up, s[i + 2], 16);
            if (hi == NULL || lo == NULL)
                return 0;
            c = (unsigned char)((hi - up) << 4 | (lo - up));
            if (c == 0)
                return 0;
            i += 2;
        } else if (!id_safe(c)) {
            return 0;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return n > 0;
}

static int b64_val(char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;
    return p ? (int)(p - b64_alphabet) : -1;
}

/* Strict base64: length a multiple of 4, '=' only as padding; the caller
 * checks the canonical form (unused bits zero) by re-encoding. */
static uint8_t *get_base64(const char *s, size_t len, size_t *out_len)
{
    size_t pad = 0, n;
    uint8_t *out;
    if (len == 0 || len % 4 != 0)
        return NULL;
    if (s[len - 1] == '=')
        pad = s[len - 2] == '=' ? 2 : 1;
    n = len / 4 * 3 - pad;
    out = malloc(n + 3);
    if (out == NULL)
        return NULL;
    for (size_t i = 0, o = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = (i + (size_t)k >= len - pad) ? 0 : b64_val(s[i + (size_t)k]);
            if (v[k] < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(w >> 16);
        out[o++] = (uint8_t)(w >> 8);
        out[o++] = (uint8_t)w;
    }
    *out_len = n;
    return out;
}

/* ---- the verifier's state ---------------------------------------------------------- */

struct rrec {
    uint64_t seq, serial, units;
    int64_t time;
    const char *dev_hex;    /* into the report; NULL when empty */
    const char *cert;       /* base64 of the certificate line, NULL when none */
    size_t cert_len;
    unsigned long line, cert_line;
    uint32_t release;
    uint16_t product;
    uint8_t type;           /* TYPE_REDACTED or enum guardian_audit_type */
    uint8_t encoding;       /* enum guardian_audit_encoding; 0 for a redacted line */
    uint16_t op;            /* index into vctx.ops; OP_NOT_RECORDED for encoding 1 */
    uint16_t gd;            /* index into vctx.gds; GD_NOT_RECORDED before encoding 3, GD_NONE for "-" */
    uint8_t dev_len;
    uint8_t altered;        /* the recomputed hash differs */
    uint8_t digest[GUARDIAN_HASH_LEN], package_id[GUARDIAN_PACKAGE_ID_LEN];
    uint8_t prev[GUARDIAN_HASH_LEN], hash[GUARDIAN_HASH_LEN];
};

struct rproduct {
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
    char name[2 * GUARDIAN_ID_MAX + 2]; /* for messages */
    long pkg;                           /* last IMPORT's package, -1 before any */
    uint64_t max_serial, net, peak;
    int listed;                         /* has a product line */
    unsigned long line;
    uint32_t p_release;                 /* from its product line */
    uint8_t p_package_id[GUARDIAN_PACKAGE_ID_LEN];
    uint64_t p_authorised, p_issued, p_next_serial;
};

struct rpkg {
    size_t product;
    uint64_t seq;
    uint8_t id[GUARDIAN_PACKAGE_ID_LEN], digest[GUARDIAN_HASH_LEN];
    uint32_t release;
    uint64_t authorised, reserved, released, issued, certs_ok, net, peak;
    uint64_t lost; /* reserved, not issued, and named by a JOURNAL-LOST record */
    int over;
    /* Its template (the report's template line, or the --package file's),
     * decoded: its certificates' profile (attach_template). */
    GUARDIAN_CERT_TEMPLATE *tmpl;      /* NULL: none known */
    int tmpl_bad;                      /* a template line that does not decode (reported) */
    struct guardian_subject_pattern *subject;
    uint8_t ext_oid[GUARDIAN_DEVICE_EXT_OID_MAX];
    int ext_oid_len;                   /* 0: no device-identity extension */
    /* A group package: the members the trail says imported it, in trail
     * order (the IMPORT's first, then each JOIN's), and their records. */
    uint8_t members[REPORT_MAX_MEMBERS][GUARDIAN_HASH_LEN];
    uint64_t member_seq[REPORT_MAX_MEMBERS];
    size_t n_members;
    /* The Guardian that wrote its IMPORT (vctx.gds), GD_NOT_RECORDED before
     * encoding 3; and the units each member issued (summary). */
    uint16_t importer;
    uint64_t member_issued[REPORT_MAX_MEMBERS];
};

enum { S_RESERVED = 1, S_ISSUED, S_RELEASED };

struct rserial {
    uint64_t serial;
    size_t rec;             /* index of its RESERVE record */
    size_t settled;         /* index of its ISSUE or RELEASE record */
    uint32_t product, pkg;
    uint8_t state;          /* 0: empty slot */
    uint8_t lost;           /* named by a JOURNAL-LOST record while still reserved */
};

struct rcert {
    uint64_t seq;
    const char *b64;
    size_t len;
    unsigned long line;
};

/* An operator named by the records (encoding 2): "" for none. */
struct rop {
    char name[GUARDIAN_OPERATOR_MAX + 1];
};

struct vctx {
    const struct report_inputs *in;
    unsigned long problems, line;
    int parse_failed;
    int version; /* of the report: 1 (REPORT_MAGIC_1), 2 (REPORT_MAGIC_2) or 3 */
    /* header */
    int64_t exported;
    int scoped;
    char scope_oem[GUARDIAN_ID_MAX + 1], scope_product[GUARDIAN_ID_MAX + 1];
    uint64_t head_seq;
    uint8_t head_hash[GUARDIAN_HASH_LEN];
    X509 *guardian; /* A: the Guardian certificate, what packages target */
    X509 *signing;  /* S: the signing certificate that issued A; NULL in a one-key report */
    /* body */
    struct rrec *recs;
    size_t n_recs, cap_recs, n_redacted, n_reserve;
    struct rproduct *products;
    size_t n_products, last_product;
    struct rpkg *pkgs;
    size_t n_pkgs;
    struct rserial *serials;
    size_t serial_cap;
    struct rcert *certs;
    size_t n_certs;
    struct rcert *tmpls; /* template lines (version 3), in record order */
    size_t n_tmpls;
    struct rop *ops; /* [OP_NOT_RECORDED] is a placeholder */
    size_t n_ops, last_op;
    uint8_t (*gds)[GUARDIAN_HASH_LEN]; /* [GD_NOT_RECORDED], [GD_NONE] are placeholders */
    size_t n_gds, last_gd;
    const char *sig;
    size_t sig_len, signed_len;
    X509_STORE *root_store;
};

static void say(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct vctx *v, const char *fmt, ...)
{
    va_list ap;
    if (v->in->out == NULL)
        return;
    va_start(ap, fmt);
    vfprintf(v->in->out, fmt, ap);
    va_end(ap);
}

static void problem(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct vctx *v, const char *fmt, ...)
{
    va_list ap;
    v->problems++;
    if (v->in->out == NULL || v->problems > REPORT_PROBLEMS_SHOWN)
        return;
    fputs("problem: ", v->in->out);
    va_start(ap, fmt);
    vfprintf(v->in->out, fmt, ap);
    va_end(ap);
    fputc('\n', v->in->out);
}

/* A malformed report: one problem naming the line; parsing stops. */
static int malformed(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int malformed(struct vctx *v, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    problem(v, "malformed report: line %lu: %s", v->line, msg);
    v->parse_failed = 1;
    return 0;
}

/* Split a line into at most `max` space-separated fields (no empty field). */
static size_t split(const char *s, size_t len, const char **f, size_t *fl, size_t max)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == ' ') {
            if (i == start || n == max)
                return 0;
            f[n] = s + start;
            fl[n++] = i - start;
            start = i + 1;
        }
    }
    return n;
}

static int field_is(const char *f, size_t fl, const char *word)
{
    return fl == strlen(word) && memcmp(f, word, fl) == 0;
}

static long find_product(struct vctx *v, const char *oem, const char *product, int create)
{
    struct rproduct *p;
    if (v->n_products > 0) {
        p = &v->products[v->last_product];
        if (strcmp(p->oem_id, oem) == 0 && strcmp(p->product_id, product) == 0)
            return (long)v->last_product;
    }
    for (size_t i = 0; i < v->n_products; i++)
        if (strcmp(v->products[i].oem_id, oem) == 0 && strcmp(v->products[i].product_id, product) == 0)
            return (long)(v->last_product = i);
    if (!create)
        return -1;
    if (v->n_products == REPORT_MAX_PRODUCTS)
        return -2;
    p = &v->products[v->n_products];
    memset(p, 0, sizeof(*p));
    strcpy(p->oem_id, oem);
    strcpy(p->product_id, product);
    snprintf(p->name, sizeof(p->name), "%s/%s", oem, product);
    p->pkg = -1;
    v->last_product = v->n_products;
    return (long)v->n_products++;
}

/* The index of operator `name` in v->ops, added if new; -1 beyond
 * REPORT_MAX_OPERATORS. */
static long find_operator(struct vctx *v, const char *name)
{
    if (v->n_ops > OP_NOT_RECORDED + 1 && strcmp(v->ops[v->last_op].name, name) == 0)
        return (long)v->last_op;
    for (size_t i = OP_NOT_RECORDED + 1; i < v->n_ops; i++)
        if (strcmp(v->ops[i].name, name) == 0)
            return (long)(v->last_op = i);
    if (v->n_ops == REPORT_MAX_OPERATORS)
        return -1;
    snprintf(v->ops[v->n_ops].name, sizeof(v->ops[v->n_ops].name), "%s", name);
    v->last_op = v->n_ops;
    return (long)v->n_ops++;
}

/* The index of Guardian `g` (GUARDIAN_HASH_LEN bytes) in v->gds, added if
 * new; -1 beyond REPORT_MAX_GUARDIANS. */
static long find_guardian(struct vctx *v, const uint8_t *g)
{
    if (v->n_gds > GD_NONE + 1 && memcmp(v->gds[v->last_gd], g, GUARDIAN_HASH_LEN) == 0)
        return (long)v->last_gd;
    for (size_t i = GD_NONE + 1; i < v->n_gds; i++)
        if (memcmp(v->gds[i], g, GUARDIAN_HASH_LEN) == 0)
            return (long)(v->last_gd = i);
    if (v->n_gds == REPORT_MAX_GUARDIANS)
        return -1;
    memcpy(v->gds[v->n_gds], g, GUARDIAN_HASH_LEN);
    v->last_gd = v->n_gds;
    return (long)v->n_gds++;
}

/* A Guardian as the summary and the problems name it: "sha256:<64 hex>". */
static const char *guardian_label(const struct vctx *v, size_t gd, char out[80])
{
    if (gd == GD_NOT_RECORDED)
        return strcpy(out, "(not recorded)");
    if (gd == GD_NONE)
        return strcpy(out, "(none)");
    strcpy(out, "sha256:");
    put_hex(out + 7, v->gds[gd], GUARDIAN_HASH_LEN);
    return out;
}

/* An operator as the summary names it. */
static const char *operator_label(const struct vctx *v, size_t op)
{
    if (op == OP_NOT_RECORDED)
        return "(not recorded)";
    return v->ops[op].name[0] != '\0' ? v->ops[op].name : "(none)";
}

/* ---- parsing ------------------------------------------------------------------------ */

const char *report_parse_record(const char *s, size_t len, struct guardian_audit_record *r, const char **dev_hex)
{
    const char *f[16];
    size_t fl[16], n = split(s, len, f, fl, 16), last;
    char again[REPORT_MAX_LINE];
    uint64_t u;
    int type = 0;

    memset(r, 0, sizeof(*r));
    /* 14 fields: a record of encoding 1; 15: of encoding 2, with its
     * operator; 16: of encoding 3, with its operator and its Guardian. */
    if ((n != 14 && n != 15 && n != 16) || !field_is(f[0], fl[0], "record"))
        return "a record line has 14 fields, 15 with its operator or 16 with its operator and Guardian, separated "
               "by single spaces";
    r->encoding = n == 16   ? GUARDIAN_AUDIT_ENCODING_3
                  : n == 15 ? GUARDIAN_AUDIT_ENCODING_2
                            : GUARDIAN_AUDIT_ENCODING_1;
    last = n - 1;
    for (int t = GUARDIAN_AUDIT_IMPORT; t <= TYPE_MAX; t++)
        if (type_names[t] != NULL && field_is(f[2], fl[2], type_names[t]))
            type = t;
    if (!get_u64(f[1], fl[1], INT64_MAX, &r->seq) || r->seq == 0)
        return "bad record number";
    if (type == 0)
        return "unknown record type";
    r->type = type;
    if (!get_i64(f[3], fl[3], &r->time))
        return "bad time";
    if (type == GUARDIAN_AUDIT_CREDENTIAL || type == GUARDIAN_AUDIT_ENROL) {
        if (!field_is(f[4], fl[4], "-") || !field_is(f[5], fl[5], "-"))
            return type == GUARDIAN_AUDIT_ENROL ? "an ENROL record has no OEM or product ID ('-')"
                                                : "a CREDENTIAL record has no OEM or product ID ('-')";
    } else if (type == GUARDIAN_AUDIT_EXPORT && (field_is(f[4], fl[4], "-") || field_is(f[5], fl[5], "-"))) {
        /* The whole trail: no scope ("-" is no ID here: the ID "-" is %2D). */
        if (!field_is(f[4], fl[4], "-") || !field_is(f[5], fl[5], "-"))
            return "an EXPORT record's scope is an OEM and a product ID, or '- -' for the whole trail";
    } else if (!get_id(f[4], fl[4], r->oem_id) || !get_id(f[5], fl[5], r->product_id)) {
        return "bad OEM or product ID";
    }
    if (!get_u64(f[6], fl[6], INT64_MAX, &r->serial))
        return "bad serial";
    if (!field_is(f[7], fl[7], "-")) {
        if (fl[7] % 2 != 0 || fl[7] / 2 > GUARDIAN_DEVICE_ID_MAX || !get_hex(f[7], fl[7], r->device_id, fl[7] / 2))
            return "bad device ID (lower-case hex of 1..128 bytes, or -)";
        r->device_id_len = fl[7] / 2;
    }
    if (!get_hex(f[8], fl[8], r->digest, sizeof(r->digest)) ||
        !get_hex(f[9], fl[9], r->package_id, sizeof(r->package_id)))
        return "bad digest or package ID";
    if (!get_u64(f[10], fl[10], UINT32_MAX, &u))
        return "bad release";
    r->release_version = (uint32_t)u;
    if (!get_u64(f[11], fl[11], INT64_MAX, &r->authorised_units))
        return "bad authorised units";
    if (n >= 15 && !field_is(f[12], fl[12], "-")) {
        if (fl[12] > GUARDIAN_OPERATOR_MAX)
            return "bad operator (a name of [a-z0-9][a-z0-9._-]{0,31}, or -)";
        memcpy(r->operator_name, f[12], fl[12]);
        r->operator_name[fl[12]] = '\0';
        if (!guardian_operator_name_ok(r->operator_name))
            return "bad operator (a name of [a-z0-9][a-z0-9._-]{0,31}, or -)";
    }
    if (n == 16 && !field_is(f[13], fl[13], "-")) {
        if (!get_hex(f[13], fl[13], r->guardian, sizeof(r->guardian)))
            return "bad Guardian (the SHA-256 of its certificate in lower-case hex, or -)";
        r->guardian_len = GUARDIAN_HASH_LEN;
    }
    if (!get_hex(f[last - 1], fl[last - 1], r->prev_hash, sizeof(r->prev_hash)) ||
        !get_hex(f[last], fl[last], r->hash, sizeof(r->hash)))
        return "bad prev_hash or hash";
    if (report_format_record(r, again, sizeof(again)) != len + 1 || memcmp(again, s, len) != 0)
        return type == GUARDIAN_AUDIT_CREDENTIAL && n == 14 ? "a CREDENTIAL record names its operator (15 fields)"
               : type == GUARDIAN_AUDIT_EXPORT && n == 14   ? "an EXPORT record names its operator (15 fields)"
                                                            : "not in canonical form";
    if (dev_hex != NULL)
        *dev_hex = r->device_id_len ? f[7] : NULL;
    return NULL;
}

/* The next parsed record: what every line type has (the caller checked the capacity). */
static struct rrec *append_rec(struct vctx *v, const struct guardian_audit_record *r, int type)
{
    struct rrec *x = &v->recs[v->n_recs++];
    memset(x, 0, sizeof(*x));
    x->seq = r->seq;
    x->type = (uint8_t)type;
    memcpy(x->prev, r->prev_hash, sizeof(x->prev));
    memcpy(x->hash, r->hash, sizeof(x->hash));
    x->line = v->line;
    return x;
}

static int parse_record(struct vctx *v, const char *s, size_t len)
{
    struct guardian_audit_record r;
    struct rrec *x;
    const char *dev_hex = NULL, *why = report_parse_record(s, len, &r, &dev_hex);
    long prod = NO_PRODUCT, op = OP_NOT_RECORDED, gd = GD_NOT_RECORDED;

    if (why != NULL)
        return malformed(v, "%s", why);
    if (v->version == 1 && r.encoding != GUARDIAN_AUDIT_ENCODING_1)
        return malformed(v, "a record line of %s in a version 1 report",
                         r.encoding == GUARDIAN_AUDIT_ENCODING_2 ? "15 fields (with an operator)"
                                                                 : "16 fields (with an operator and a Guardian)");
    if (r.type != GUARDIAN_AUDIT_CREDENTIAL && r.type != GUARDIAN_AUDIT_ENROL && r.oem_id[0] != '\0') {
        prod = find_product(v, r.oem_id, r.product_id, 1);
        if (prod == -2)
            return malformed(v, "more than %d products", REPORT_MAX_PRODUCTS);
    }
    if (r.encoding >= GUARDIAN_AUDIT_ENCODING_2) {
        op = find_operator(v, r.operator_name);
        if (op < 0)
            return malformed(v, "more than %d operators", REPORT_MAX_OPERATORS);
    }
    if (r.encoding == GUARDIAN_AUDIT_ENCODING_3) {
        gd = r.guardian_len == 0 ? GD_NONE : find_guardian(v, r.guardian);
        if (gd < 0)
            return malformed(v, "more than %d Guardians", REPORT_MAX_GUARDIANS);
    }
    x = append_rec(v, &r, r.type);
    x->time = r.time;
    x->product = (uint16_t)prod;
    x->encoding = (uint8_t)r.encoding;
    x->op = (uint16_t)op;
    x->gd = (uint16_t)gd;
    x->serial = r.serial;
    x->dev_hex = dev_hex;
    x->dev_len = (uint8_t)r.device_id_len;
    memcpy(x->digest, r.digest, sizeof(x->digest));
    memcpy(x->package_id, r.package_id, sizeof(x->package_id));
    x->release = r.release_version;
    x->units = r.authorised_units;
    {
        uint8_t h[GUARDIAN_HASH_LEN];
        x->altered = guardian_audit_hash(&r, h) != CKR_OK || memcmp(h, r.hash, sizeof(h)) != 0;
    }
    if (r.type == GUARDIAN_AUDIT_RESERVE)
        v->n_reserve++;
    return 1;
}

static int parse_redacted(struct vctx *v, const char *s, size_t len)
{
    const char *f[4];
    size_t fl[4];
    struct guardian_audit_record r;
    char again[256];

    memset(&r, 0, sizeof(r));
    if (split(s, len, f, fl, 4) != 4 || !get_u64(f[1], fl[1], INT64_MAX, &r.seq) || r.seq == 0 ||
        !get_hex(f[2], fl[2], r.prev_hash, sizeof(r.prev_hash)) || !get_hex(f[3], fl[3], r.hash, sizeof(r.hash)))
        return malformed(v, "a redacted line is 'redacted SEQ PREV_HASH HASH'");
    if (report_format_redacted(&r, again, sizeof(again)) != len + 1 || memcmp(again, s, len) != 0)
        return malformed(v, "not in canonical form");
    append_rec(v, &r, TYPE_REDACTED);
    v->n_redacted++;
    return 1;
}

static int parse_product(struct vctx *v, const char *s, size_t len)
{
    const char *f[8];
    size_t fl[8];
    struct guardian_product p;
    struct rproduct *x;
    char again[1024];
    uint64_t u;
    long i;

    memset(&p, 0, sizeof(p));
    if (split(s, len, f, fl, 8) != 8 || !get_id(f[1], fl[1], p.oem_id) || !get_id(f[2], fl[2], p.product_id) ||
        !get_u64(f[3], fl[3], UINT32_MAX, &u) || !get_hex(f[4], fl[4], p.package_id, sizeof(p.package_id)) ||
        !get_u64(f[5], fl[5], INT64_MAX, &p.authorised_units) || !get_u64(f[6], fl[6], INT64_MAX, &p.issued_units) ||
        !get_u64(f[7], fl[7], INT64_MAX, &p.next_serial))
        return malformed(v, "a product line is 'product OEM PRODUCT RELEASE PACKAGE-ID AUTHORISED ISSUED "
                            "NEXT-SERIAL'");
    p.release_version = (uint32_t)u;
    if (report_format_product(&p, again, sizeof(again)) != len + 1 || memcmp(again, s, len) != 0)
        return malformed(v, "not in canonical form");
    if (v->n_products > 0) {
        const struct rproduct *last = &v->products[v->n_products - 1];
        int c = strcmp(last->oem_id, p.oem_id);
        if (c > 0 || (c == 0 && strcmp(last->product_id, p.product_id) >= 0))
            return malformed(v, "product lines must be in (OEM, product) order, each once");
    }
    i = find_product(v, p.oem_id, p.product_id, 1);
    if (i == -2)
        return malformed(v, "more than %d products", REPORT_MAX_PRODUCTS);
    x = &v->products[i];
    x->listed = 1;
    x->line = v->line;
    x->p_release = p.release_version;
    memcpy(x->p_package_id, p.package_id, sizeof(p.package_id));
    x->p_authorised = p.authorised_units;
    x->p_issued = p.issued_units;
    x->p_next_serial = p.next_serial;
    return 1;
}

static const struct rrec *find_rec(const struct vctx *v, uint64_t seq)
{
    size_t lo = 0, hi = v->n_recs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->recs[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < v->n_recs && v->recs[lo].seq == seq ? &v->recs[lo] : NULL;
}

/* A Guardian certificate block (A, then S): PEM exactly as
 * PEM_write_bio_X509 writes it. */
static int parse_pem(struct vctx *v, const char *start, const char *end, unsigned long first_line, X509 **into,
                     const char *what)
{
    BIO *in = BIO_new_mem_buf(start, (int)(end - start)), *out = BIO_new(BIO_s_mem());
    char *again = NULL;
    long again_len;
    int ok = 0;

    if (in != NULL && out != NULL)
        *into = PEM_read_bio_X509(in, NULL, NULL, NULL);
    ERR_clear_error();
    if (*into == NULL) {
        v->line = first_line;
        malformed(v, "the %s does not parse", what);
    } else if (!PEM_write_bio_X509(out, *into) || (again_len = BIO_get_mem_data(out, &again)) < 0 ||
               (size_t)again_len != (size_t)(end - start) || memcmp(again, start, (size_t)again_len) != 0) {
        v->line = first_line;
        malformed(v, "the %s is not in canonical PEM form", what);
    } else {
        ok = 1;
    }
    BIO_free(in);
    BIO_free(out);
    return ok;
}

/* SEC_PEM_NEXT: after A, either S's block or (a one-key report) the body. */
enum section { SEC_MAGIC, SEC_EXPORTED, SEC_SCOPE, SEC_HEAD, SEC_PEM, SEC_IN_PEM, SEC_PEM_NEXT, SEC_PRODUCTS,
               SEC_RECORDS, SEC_TEMPLATES, SEC_CERTS, SEC_SIGNATURE, SEC_END };

/* "WORD SEQ BASE64" (a certificate or template line) into `into`, in record
 * order, one per record. */
static int parse_seq_b64(struct vctx *v, const char *s, size_t l, const char *what, uint64_t *last,
                         struct rcert *into, size_t *n)
{
    const char *f[3];
    size_t fl[3];
    uint64_t seq;
    char again[32];
    if (split(s, l, f, fl, 3) != 3 || !get_u64(f[1], fl[1], INT64_MAX, &seq))
        return malformed(v, "a %s line is '%s SEQ BASE64-DER'", what, what);
    snprintf(again, sizeof(again), "%llu", (unsigned long long)seq);
    if (strlen(again) != fl[1])
        return malformed(v, "not in canonical form");
    if (seq <= *last)
        return malformed(v, "%s lines must be in record order, one per record", what);
    *last = seq;
    if (*n == v->cap_recs)
        return malformed(v, "more %s lines than records", what);
    into[*n].seq = seq;
    into[*n].b64 = f[2];
    into[*n].len = fl[2];
    into[(*n)++].line = v->line;
    return 1;
}

static int parse(struct vctx *v, const uint8_t *data, size_t len)
{
    size_t pos = 0;
    enum section sec = SEC_MAGIC;
    const char *pem_start = NULL;
    unsigned long pem_line = 0, pem_lines = 0;
    uint64_t last_cert_seq = 0, last_tmpl_seq = 0;

    if (len > REPORT_MAX_BYTES) {
        v->line = 0;
        return malformed(v, "larger than %zu bytes", REPORT_MAX_BYTES);
    }
    /* Size the arrays by the number of lines (bounded) before allocating. */
    {
        size_t lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += data[i] == '\n';
        v->cap_recs = lines < REPORT_MAX_RECORDS ? lines : REPORT_MAX_RECORDS;
        v->recs = calloc(v->cap_recs + 1, sizeof(*v->recs));
        v->certs = calloc(v->cap_recs + 1, sizeof(*v->certs));
        v->tmpls = calloc(v->cap_recs + 1, sizeof(*v->tmpls));
        v->products = calloc(REPORT_MAX_PRODUCTS, sizeof(*v->products));
        v->ops = calloc(REPORT_MAX_OPERATORS, sizeof(*v->ops));
        v->gds = calloc(REPORT_MAX_GUARDIANS, sizeof(*v->gds));
        v->n_ops = OP_NOT_RECORDED + 1;
        v->n_gds = GD_NONE + 1;
        if (v->recs == NULL || v->certs == NULL || v->tmpls == NULL || v->products == NULL || v->ops == NULL ||
            v->gds == NULL) {
            v->line = 0;
            return malformed(v, "out of memory");
        }
    }
    while (pos < len) {
        const char *s = (const char *)data + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t l;
        v->line++;
        if (nl == NULL)
            return malformed(v, "the last line does not end with a newline (truncated?)");
        l = (size_t)(nl - s);
        if (l > REPORT_MAX_LINE)
            return malformed(v, "longer than %d characters", REPORT_MAX_LINE);
        for (size_t i = 0; i < l; i++)
            if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
                return malformed(v, "a character that is not printable ASCII (column %zu)", i + 1);
        pos += l + 1;
        if (sec == SEC_END)
            return malformed(v, "text after the signature line");
        if (sec == SEC_IN_PEM) {
            if (++pem_lines > REPORT_MAX_PEM_LINES)
                return malformed(v, "the Guardian %scertificate is too long", v->guardian ? "signing " : "");
            if (l == strlen(REPORT_PEM_END) && memcmp(s, REPORT_PEM_END, l) == 0) {
                int first = v->guardian == NULL;
                if (!parse_pem(v, pem_start, s + l + 1, pem_line, first ? &v->guardian : &v->signing,
                               first ? "Guardian certificate" : "Guardian signing certificate"))
                    return 0;
                pem_lines = 0;
                sec = first ? SEC_PEM_NEXT : SEC_PRODUCTS;
            }
            continue;
        }
        switch (sec) {
        case SEC_MAGIC:
            if (l == strlen(REPORT_MAGIC) && memcmp(s, REPORT_MAGIC, l) == 0)
                v->version = 3;
            else if (l == strlen(REPORT_MAGIC_2) && memcmp(s, REPORT_MAGIC_2, l) == 0)
                v->version = 2; /* made before reports carried the templates */
            else if (l == strlen(REPORT_MAGIC_1) && memcmp(s, REPORT_MAGIC_1, l) == 0)
                v->version = 1; /* made before operators were recorded */
            else
                return malformed(v, "not a Guardian audit report (the first line must be '" REPORT_MAGIC
                                    "', or '" REPORT_MAGIC_2 "' or '" REPORT_MAGIC_1 "' for an earlier one)");
            sec = SEC_EXPORTED;
            continue;
        case SEC_EXPORTED:
            if (l < 10 || memcmp(s, "exported ", 9) != 0 || !get_i64(s + 9, l - 9, &v->exported))
                return malformed(v, "expected 'exported SECONDS-SINCE-1970'");
            sec = SEC_SCOPE;
            continue;
        case SEC_SCOPE: {
            const char *slash;
            char again[512];
            if (l < 7 || memcmp(s, "scope ", 6) != 0)
                return malformed(v, "expected 'scope all' or 'scope OEM/PRODUCT'");
            if (l == 9 && memcmp(s + 6, "all", 3) == 0) {
                sec = SEC_HEAD;
                continue;
            }
            slash = memchr(s + 6, '/', l - 6);
            if (slash == NULL || !get_id(s + 6, (size_t)(slash - s - 6), v->scope_oem) ||
                !get_id(slash + 1, (size_t)(s + l - slash - 1), v->scope_product) ||
                report_format_scope(v->scope_oem, v->scope_product, again, sizeof(again)) != l - 6 ||
                memcmp(again, s + 6, l - 6) != 0)
                return malformed(v, "expected 'scope all' or 'scope OEM/PRODUCT' in canonical form");
            v->scoped = 1;
            sec = SEC_HEAD;
            continue;
        }
        case SEC_HEAD: {
            const char *f[3];
            size_t fl[3];
            char again[128];
            if (split(s, l, f, fl, 3) != 3 || !field_is(f[0], fl[0], "head") ||
                !get_u64(f[1], fl[1], INT64_MAX, &v->head_seq) ||
                !get_hex(f[2], fl[2], v->head_hash, sizeof(v->head_hash)))
                return malformed(v, "expected 'head SEQ HASH'");
            snprintf(again, sizeof(again), "head %llu", (unsigned long long)v->head_seq);
            if (strlen(again) != fl[0] + 1 + fl[1])
                return malformed(v, "not in canonical form");
            sec = SEC_PEM;
            continue;
        }
        case SEC_PEM:
            if (l != strlen(REPORT_PEM_BEGIN) || memcmp(s, REPORT_PEM_BEGIN, l) != 0)
                return malformed(v, "expected the Guardian certificate ('" REPORT_PEM_BEGIN "')");
            pem_start = s;
            pem_line = v->line;
            sec = SEC_IN_PEM;
            continue;
        case SEC_PEM_NEXT:
            sec = SEC_PRODUCTS;
            if (l == strlen(REPORT_PEM_BEGIN) && memcmp(s, REPORT_PEM_BEGIN, l) == 0) {
                pem_start = s;
                pem_line = v->line;
                sec = SEC_IN_PEM;
                continue;
            }
            break;
        default:
            break;
        }
        /* Body lines: the first word says which; sections come in order. */
        if (l > 8 && memcmp(s, "product ", 8) == 0) {
            if (sec != SEC_PRODUCTS)
                return malformed(v, "a product line after the records");
            if (!parse_product(v, s, l))
                return 0;
        } else if ((l > 7 && memcmp(s, "record ", 7) == 0) || (l > 9 && memcmp(s, "redacted ", 9) == 0)) {
            if (sec > SEC_RECORDS)
                return malformed(v, "a record line after the templates or certificates");
            sec = SEC_RECORDS;
            if (v->n_recs == v->cap_recs)
                return malformed(v, "more than %zu records", REPORT_MAX_RECORDS);
            if (!(s[2] == 'c' ? parse_record(v, s, l) : parse_redacted(v, s, l)))
                return 0;
        } else if (l > 9 && memcmp(s, "template ", 9) == 0) {
            if (v->version < 3)
                return malformed(v, "a template line in a version %d report", v->version);
            if (sec > SEC_TEMPLATES)
                return malformed(v, "a template line after the certificates");
            sec = SEC_TEMPLATES;
            if (!parse_seq_b64(v, s, l, "template", &last_tmpl_seq, v->tmpls, &v->n_tmpls))
                return 0;
        } else if (l > 12 && memcmp(s, "certificate ", 12) == 0) {
            sec = SEC_CERTS;
            if (!parse_seq_b64(v, s, l, "certificate", &last_cert_seq, v->certs, &v->n_certs))
                return 0;
        } else if (l > 10 && memcmp(s, "signature ", 10) == 0) {
            if (sec < SEC_PRODUCTS)
                return malformed(v, "the signature line comes last");
            v->signed_len = (size_t)(s - (const char *)data);
            v->sig = s + 10;
            v->sig_len = l - 10;
            sec = SEC_END;
        } else {
            return malformed(v, "unknown line (a line starts with product, record, redacted, template, "
                                "certificate or signature)");
        }
    }
    if (sec == SEC_MAGIC) {
        v->line = 0;
        return malformed(v, "the report is empty");
    }
    if (sec != SEC_END) {
        v->line++;
        return malformed(v, "the report ends without its signature line (truncated?)");
    }
    return 1;
}

/* ---- the signature ---------------------------------------------------------------- */

static void fingerprint_hex(X509 *x, char out[65])
{
    uint8_t md[32];
    unsigned int n = 0;
    memset(md, 0, sizeof(md));
    X509_digest(x, EVP_sha256(), md, &n);
    put_hex(out, md, sizeof(md));
}

/* Who signed: the signing certificate S, which must have issued the Guardian
 * certificate A (its issuer is S's subject and S's key verifies it), so that
 * the A the OEM wrapped for vouches for nothing but its own S.  A one-key
 * report (made before the Guardian's signing key was split off) carries A
 * alone, signed by A's key; only a certificate allowed to sign
 * (digitalSignature) can be such a signer, which a new Guardian's A (key
 * agreement only) is not. */
static void check_signature(struct vctx *v, const uint8_t *data)
{
    X509 *given = v->in->guardian, *given_s = v->in->guardian_signing;
    /* The OEM's own S if it gave one, else the report's (which must have
     * issued A, checked below); a one-key report: the OEM's A. */
    X509 *signer = v->signing ? (given_s ? given_s : v->signing) : given ? given : v->guardian;
    EVP_PKEY *key = X509_get0_pubkey(signer);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t sig_len = 0;
    uint8_t *sig = get_base64(v->sig, v->sig_len, &sig_len);
    char again[700], fpr[65], mine[65]; /* base64 of up to an RSA 4096 signature */
    int ok = 0;

    if (given != NULL && X509_cmp(given, v->guardian) != 0) {
        fingerprint_hex(v->guardian, fpr);
        fingerprint_hex(given, mine);
        problem(v, "the report names another Guardian (certificate sha256:%s), not the one given (sha256:%s)", fpr,
                mine);
    }
    if (v->signing != NULL) {
        EVP_PKEY *sk = X509_get0_pubkey(v->signing);
        if (sk == NULL || X509_NAME_cmp(X509_get_issuer_name(v->guardian), X509_get_subject_name(v->signing)) != 0 ||
            X509_verify(v->guardian, sk) != 1) {
            fingerprint_hex(v->signing, fpr);
            problem(v, "the report's signing certificate (sha256:%s) did not issue the Guardian certificate: it is "
                       "not this Guardian's signing key",
                    fpr);
        }
        if (given_s != NULL && (sk == NULL || EVP_PKEY_eq(X509_get0_pubkey(given_s), sk) != 1)) {
            fingerprint_hex(v->signing, fpr);
            fingerprint_hex(given_s, mine);
            problem(v, "the report's signing certificate (sha256:%s) is not the one given (sha256:%s)", fpr, mine);
        }
    } else if ((X509_get_key_usage(signer) & KU_DIGITAL_SIGNATURE) == 0) {
        problem(v, "the report carries no signing certificate, and the Guardian certificate may not sign (key "
                   "agreement only): only a Guardian made before its signing key was split off signs with its "
                   "Guardian certificate's key");
    }
    if (sig == NULL || sig_len > 512 || report_base64(sig, sig_len, again, sizeof(again)) != v->sig_len ||
        memcmp(again, v->sig, v->sig_len) != 0) {
        problem(v, "the report's signature line is not a canonical base64 signature");
    } else if (key != NULL && md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
               EVP_DigestVerify(md, sig, sig_len, data, v->signed_len) == 1) {
        ok = 1;
    }
    ERR_clear_error();
    if (!ok && sig != NULL)
        problem(v, "the report's signature does not verify against the Guardian%s certificate%s: the report was "
                   "altered, or signed by another key",
                v->signing ? "'s signing" : "", (v->signing ? given_s : given) ? " given" : " in the report");
    say(v, "signature  %s\n",
        !ok ? "INVALID" : v->signing ? "valid (Guardian signing key)" : "valid (Guardian identity key, one-key report)");
    EVP_MD_CTX_free(md);
    free(sig);
}

/* ---- the chain ------------------------------------------------------------------------ */

static int rec_cmp(const void *a, const void *b)
{
    const struct rrec *x = a, *y = b;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

/* A report restricted to one product shows every record of that product's
 * OEM in clear (all its products: it cannot hide one of them from the OEM)
 * and redacts only the records of other OEMs. */
static int outside_scope(const struct vctx *v, const struct rproduct *p)
{
    return v->scoped && strcmp(p->oem_id, v->scope_oem) != 0;
}

static void check_chain(struct vctx *v)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];
    const struct rrec *first_2 = NULL; /* the first in-clear record of encoding 2 or 3 */
    const struct rrec *first_3 = NULL; /* the first of encoding 3 */
    int downgraded = 0, downgraded_3 = 0;
    size_t sorted = 1;

    /* In the file's order: any decrease is a disorder. */
    for (size_t i = 1; i < v->n_recs; i++) {
        if (v->recs[i].seq < v->recs[i - 1].seq) {
            sorted = 0;
            problem(v, "records %llu and %llu are out of order (lines %lu and %lu)",
                    (unsigned long long)v->recs[i].seq, (unsigned long long)v->recs[i - 1].seq, v->recs[i - 1].line,
                    v->recs[i].line);
        }
    }
    if (!sorted)
        qsort(v->recs, v->n_recs, sizeof(*v->recs), rec_cmp);

    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i], *p = i ? &v->recs[i - 1] : NULL;
        uint64_t want = p ? p->seq + 1 : 1;
        if (p != NULL && r->seq == p->seq) {
            problem(v, "record %llu appears twice (lines %lu and %lu)", (unsigned long long)r->seq, p->line, r->line);
            continue;
        }
        if (r->seq != want) {
            if (p == NULL)
                problem(v, "record%s 1%s missing: the report starts at record %llu", r->seq > 2 ? "s" : "",
                        r->seq > 2 ? "..N are" : " is", (unsigned long long)r->seq);
            else if (r->seq == want + 1)
                problem(v, "record %llu is missing: record %llu follows %llu", (unsigned long long)want,
                        (unsigned long long)r->seq, (unsigned long long)p->seq);
            else
                problem(v, "records %llu to %llu are missing: record %llu follows %llu", (unsigned long long)want,
                        (unsigned long long)(r->seq - 1), (unsigned long long)r->seq, (unsigned long long)p->seq);
        } else if (memcmp(r->prev, p ? p->hash : zeros, GUARDIAN_HASH_LEN) != 0) {
            if (p == NULL)
                problem(v, "record 1 does not start the trail: its prev_hash is not zeros");
            else
                problem(v, "record %llu does not follow record %llu: its prev_hash is not record %llu's hash "
                           "(record %llu was altered and re-hashed, or a record was replaced)",
                        (unsigned long long)r->seq, (unsigned long long)p->seq, (unsigned long long)p->seq,
                        (unsigned long long)p->seq);
        }
        if (r->altered)
            problem(v, "record %llu was altered: its hash does not match its content (line %lu)",
                    (unsigned long long)r->seq, r->line);
        if (r->type == TYPE_REDACTED && !v->scoped)
            problem(v, "record %llu is redacted in a report of the whole trail", (unsigned long long)r->seq);
        if (r->type != TYPE_REDACTED && r->product != NO_PRODUCT && outside_scope(v, &v->products[r->product]))
            problem(v, "record %llu is of %s, outside the report's scope", (unsigned long long)r->seq,
                    v->products[r->product].name);
        /* Once a store has migrated, every record it writes names its
         * operator (docs/audit-format.md): an operator-less record after one
         * that names its operator is not the Guardian's doing. */
        /* Likewise, once records name their Guardian (encoding 3). */
        if (r->encoding == GUARDIAN_AUDIT_ENCODING_3 && first_3 == NULL)
            first_3 = r;
        else if (r->type != TYPE_REDACTED && r->encoding < GUARDIAN_AUDIT_ENCODING_3 && first_3 != NULL &&
                 !downgraded_3) {
            downgraded_3 = 1;
            problem(v, "record %llu does not name its Guardian (an encoding of before Guardians were recorded) but "
                       "record %llu before it does: no Guardian writes that (the trail was edited, or written on by "
                       "an older module)",
                    (unsigned long long)r->seq, (unsigned long long)first_3->seq);
        }
        if (r->encoding >= GUARDIAN_AUDIT_ENCODING_2 && first_2 == NULL)
            first_2 = r;
        else if (r->encoding == GUARDIAN_AUDIT_ENCODING_1 && first_2 != NULL && !downgraded) {
            downgraded = 1;
            problem(v, "record %llu has no operator (the encoding of before operators were recorded) but record %llu "
                       "before it has one: no Guardian writes that (the trail was edited, or written on by an older "
                       "module)",
                    (unsigned long long)r->seq, (unsigned long long)first_2->seq);
        }
    }
    /* Certificates to their ISSUE records (now in order). */
    for (size_t i = 0; i < v->n_certs; i++) {
        struct rrec *r = (struct rrec *)find_rec(v, v->certs[i].seq);
        if (r == NULL || r->type != GUARDIAN_AUDIT_ISSUE || r->cert != NULL) {
            problem(v, "line %lu: a certificate for record %llu, which is not an ISSUE record in this report",
                    v->certs[i].line, (unsigned long long)v->certs[i].seq);
            continue;
        }
        r->cert = v->certs[i].b64;
        r->cert_len = v->certs[i].len;
        r->cert_line = v->certs[i].line;
    }
    /* Templates to their IMPORT records (attached to the package by check_accounting). */
    for (size_t i = 0; i < v->n_tmpls; i++) {
        const struct rrec *r = find_rec(v, v->tmpls[i].seq);
        if (r == NULL || r->type != GUARDIAN_AUDIT_IMPORT)
            problem(v, "line %lu: a template for record %llu, which is not an IMPORT record in this report",
                    v->tmpls[i].line, (unsigned long long)v->tmpls[i].seq);
    }
    if (v->n_recs == 0) {
        if (v->head_seq != 0 || memcmp(v->head_hash, zeros, GUARDIAN_HASH_LEN) != 0)
            problem(v, "the report has no records but its head is record %llu", (unsigned long long)v->head_seq);
    } else {
        const struct rrec *last = &v->recs[v->n_recs - 1];
        if (last->seq != v->head_seq || memcmp(last->hash, v->head_hash, GUARDIAN_HASH_LEN) != 0)
            problem(v, "the trail does not end at the signed head: the head is record %llu, the last record is %llu%s",
                    (unsigned long long)v->head_seq, (unsigned long long)last->seq,
                    last->seq == v->head_seq ? " with another hash" : "");
    }
}

/* ---- the clock ---------------------------------------------------------------------------- */

static void iso8601(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%lld", (long long)t);
}

/* Time never runs backwards (docs/audit-format.md): the Guardian refuses an
 * import or a reservation dated more than GUARDIAN_STORE_CLOCK_SLACK_S
 * seconds before the newest record it holds.  An IMPORT or RESERVE dated so
 * in the report means the clock was set back and the store's own check was
 * bypassed (its state edited, or a trail rewritten).  A run of such
 * reservations is one problem. */
static void check_clock(struct vctx *v)
{
    const struct rrec *newest = NULL;
    uint64_t run_end = 0; /* seq after the last record of the run being reported */

    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        if (r->type == TYPE_REDACTED || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        if (newest != NULL && (r->type == GUARDIAN_AUDIT_IMPORT || r->type == GUARDIAN_AUDIT_RESERVE) &&
            newest->time > r->time && (uint64_t)newest->time - (uint64_t)r->time > GUARDIAN_STORE_CLOCK_SLACK_S) {
            if (r->type == GUARDIAN_AUDIT_IMPORT || r->seq != run_end) {
                char t[32], n[32];
                iso8601(r->time, t);
                iso8601(newest->time, n);
                problem(v, "record %llu (%s of %s) is dated %s, %llu s before record %llu (%s): the Guardian's clock "
                           "was set back",
                        (unsigned long long)r->seq, type_names[r->type], v->products[r->product].name, t,
                        (unsigned long long)((uint64_t)newest->time - (uint64_t)r->time),
                        (unsigned long long)newest->seq, n);
            }
            run_end = r->seq + 1;
        }
        if (newest == NULL || r->time > newest->time)
            newest = r;
    }
}

/* ---- certificates ------------------------------------------------------------------------ */

/* The template of the package IMPORT record `seq` imported, decoded into
 * `pkg`: strict DER, a device-extension setting the Guardian accepts, a
 * subject pattern it can fill.  From the report's template line (version 3);
 * for a report without one (versions 1 and 2), from the OEM's package file of
 * that digest if --package gave it.  Without either, the package's
 * certificates are checked against --device-ext-oid or the legacy default,
 * as before. */
static void attach_template(struct vctx *v, struct rpkg *pkg)
{
    size_t lo = 0, hi = v->n_tmpls, der_len = 0;
    const struct rcert *t = NULL;
    const struct report_package *f = NULL;
    uint8_t *der = NULL, *again_der = NULL;
    const uint8_t *src;
    const unsigned char *p;
    char again[REPORT_MAX_LINE], err[200], from[300];
    const char *why = NULL;
    int n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->tmpls[mid].seq < pkg->seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < v->n_tmpls && v->tmpls[lo].seq == pkg->seq) {
        t = &v->tmpls[lo];
        snprintf(from, sizeof(from), "line %lu: the template", t->line);
    } else {
        for (size_t j = 0; j < v->in->n_packages && f == NULL; j++)
            if (v->in->packages[j].cert_template != NULL &&
                memcmp(v->in->packages[j].digest, pkg->digest, GUARDIAN_HASH_LEN) == 0)
                f = &v->in->packages[j];
        if (f == NULL)
            return;
        snprintf(from, sizeof(from), "the template in package %s", f->name);
    }
    pkg->tmpl_bad = 1;
    if (t != NULL) {
        der = get_base64(t->b64, t->len, &der_len);
        if (der == NULL || report_base64(der, der_len, again, sizeof(again)) != t->len ||
            memcmp(again, t->b64, t->len) != 0) {
            why = "it is not canonical base64";
            goto out;
        }
        src = der;
    } else {
        src = f->cert_template;
        der_len = f->cert_template_len;
    }
    p = src;
    pkg->tmpl = d2i_GUARDIAN_CERT_TEMPLATE(NULL, &p, (long)der_len);
    n = pkg->tmpl ? i2d_GUARDIAN_CERT_TEMPLATE(pkg->tmpl, &again_der) : -1;
    if (pkg->tmpl == NULL || p != src + der_len || n < 0 || (size_t)n != der_len ||
        memcmp(again_der, src, der_len) != 0) {
        why = "it is not a DER DeviceCertTemplate";
        goto out;
    }
    pkg->ext_oid_len = guardian_template_device_ext(pkg->tmpl, pkg->ext_oid);
    if (pkg->ext_oid_len < 0) {
        why = "its device-identity extension setting is invalid";
        goto out;
    }
    pkg->subject = calloc(1, sizeof(*pkg->subject));
    if (pkg->subject == NULL ||
        !guardian_subject_pattern_parse((const char *)ASN1_STRING_get0_data(pkg->tmpl->subject),
                                        (size_t)ASN1_STRING_length(pkg->tmpl->subject), pkg->subject, err,
                                        sizeof(err))) {
        why = pkg->subject == NULL ? "out of memory" : err;
        goto out;
    }
    pkg->tmpl_bad = 0;
out:
    if (why != NULL) {
        problem(v, "%s of record %llu (%s release %u) does not decode: %s", from, (unsigned long long)pkg->seq,
                v->products[pkg->product].name, pkg->release, why);
        GUARDIAN_CERT_TEMPLATE_free(pkg->tmpl);
        pkg->tmpl = NULL;
        free(pkg->subject);
        pkg->subject = NULL;
    }
    OPENSSL_free(again_der);
    free(der);
}

/* The certificate's subject is the template's pattern filled with the
 * record's IDs: the device ID as text (if its bytes are a text ID's) or in
 * lowercase hex (a binary ID), as the module fills it.  What ties a
 * certificate without the device-identity extension to its record, with its
 * serialNumber and SHA-256. */
static int check_subject(const X509 *x, const struct rproduct *prod, const uint8_t *dev, size_t dev_len,
                         const struct rpkg *pkg)
{
    uint8_t want[GUARDIAN_CERT_BUF];
    char text[2 * GUARDIAN_DEVICE_ID_MAX + 1];
    unsigned char *have = NULL;
    int have_len = i2d_X509_NAME(X509_get_subject_name(x), &have), ok = 0, is_text = dev_len > 0;
    size_t n;

    for (size_t i = 0; i < dev_len; i++)
        is_text = is_text && guardian_id_char(dev[i]);
    for (int form = 0; form < 2 && !ok && have_len > 0; form++) {
        if (form == 0 && !is_text)
            continue;
        if (form == 0) {
            memcpy(text, dev, dev_len);
            text[dev_len] = '\0';
        } else {
            put_hex(text, dev, dev_len);
        }
        n = guardian_subject_der(pkg->subject, text, prod->oem_id, prod->product_id, want, sizeof(want), NULL, 0);
        ok = n > 0 && n == (size_t)have_len && memcmp(want, have, n) == 0;
    }
    OPENSSL_free(have);
    return ok;
}

/* A certificate of a template without the device-identity extension has the
 * profile's standard extensions only. */
static int only_standard_extensions(const X509 *x)
{
    static const int allowed[] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage,
                                  NID_authority_key_identifier, NID_subject_key_identifier};
    for (int i = 0; i < X509_get_ext_count(x); i++) {
        int nid = OBJ_obj2nid(X509_EXTENSION_get_object(X509_get_ext(x, i))), found = 0;
        for (size_t k = 0; k < sizeof(allowed) / sizeof(allowed[0]); k++)
            found = found || nid == allowed[k];
        if (!found)
            return 0;
    }
    return 1;
}

static int check_ext(const struct vctx *v, const X509 *x, const struct rproduct *prod, const uint8_t *dev,
                     size_t dev_len, const struct rpkg *pkg, const char **why)
{
    /* The release's own setting when the report carries its template; else
     * what the OEM says (--device-ext-oid), else the legacy default. */
    const char *flag = v->in->device_ext_oid != NULL ? v->in->device_ext_oid : REPORT_DEVICE_EXT_OID;
    ASN1_OBJECT *oid = pkg->tmpl != NULL
                           ? ASN1_OBJECT_create(NID_undef, (unsigned char *)pkg->ext_oid, pkg->ext_oid_len, NULL, NULL)
                           : OBJ_txt2obj(flag, 1);
    int idx = oid ? X509_get_ext_by_OBJ(x, oid, -1) : -1, ok = 0;
    X509_EXTENSION *e;
    const ASN1_OCTET_STRING *val;
    const unsigned char *p, *end;
    long slen;
    int tag, cls;
    ASN1_UTF8STRING *oem = NULL, *product = NULL;
    ASN1_OCTET_STRING *devid = NULL, *pkgid = NULL;
    ASN1_INTEGER *release = NULL;
    uint64_t rel = 0;

    *why = "it has no Guardian device extension";
    if (idx < 0)
        goto out;
    *why = "it has the Guardian device extension twice";
    if (X509_get_ext_by_OBJ(x, oid, idx) >= 0)
        goto out;
    e = X509_get_ext(x, idx);
    *why = "its Guardian device extension is critical";
    if (X509_EXTENSION_get_critical(e))
        goto out;
    val = X509_EXTENSION_get_data(e);
    p = ASN1_STRING_get0_data(val);
    end = p + ASN1_STRING_length(val);
    *why = "its Guardian device extension does not decode";
    if (ASN1_get_object(&p, &slen, &tag, &cls, end - p) != V_ASN1_CONSTRUCTED || tag != V_ASN1_SEQUENCE ||
        cls != V_ASN1_UNIVERSAL || p + slen != end)
        goto out;
    if ((oem = d2i_ASN1_UTF8STRING(NULL, &p, end - p)) == NULL ||
        (product = d2i_ASN1_UTF8STRING(NULL, &p, end - p)) == NULL ||
        (devid = d2i_ASN1_OCTET_STRING(NULL, &p, end - p)) == NULL ||
        (pkgid = d2i_ASN1_OCTET_STRING(NULL, &p, end - p)) == NULL ||
        (release = d2i_ASN1_INTEGER(NULL, &p, end - p)) == NULL || p != end ||
        ASN1_INTEGER_get_uint64(&rel, release) != 1)
        goto out;
    *why = "its OEM or product ID differs from the record's";
    if ((size_t)ASN1_STRING_length(oem) != strlen(prod->oem_id) ||
        memcmp(ASN1_STRING_get0_data(oem), prod->oem_id, strlen(prod->oem_id)) != 0 ||
        (size_t)ASN1_STRING_length(product) != strlen(prod->product_id) ||
        memcmp(ASN1_STRING_get0_data(product), prod->product_id, strlen(prod->product_id)) != 0)
        goto out;
    *why = "its device ID differs from the record's";
    if ((size_t)ASN1_STRING_length(devid) != dev_len || memcmp(ASN1_STRING_get0_data(devid), dev, dev_len) != 0)
        goto out;
    *why = "its package ID or release differs from the package the unit counted against";
    if (ASN1_STRING_length(pkgid) != GUARDIAN_PACKAGE_ID_LEN ||
        memcmp(ASN1_STRING_get0_data(pkgid), pkg->id, GUARDIAN_PACKAGE_ID_LEN) != 0 || rel != pkg->release)
        goto out;
    ok = 1;
    *why = NULL;
out:
    ASN1_OBJECT_free(oid);
    ASN1_UTF8STRING_free(oem);
    ASN1_UTF8STRING_free(product);
    ASN1_OCTET_STRING_free(devid);
    ASN1_OCTET_STRING_free(pkgid);
    ASN1_INTEGER_free(release);
    return ok;
}

/* The i-th production chain given (0: ca_chain, then more_chains), or NULL. */
static STACK_OF(X509) *input_chain(const struct report_inputs *in, size_t i)
{
    STACK_OF(X509) *c = i == 0 ? in->ca_chain : i <= in->n_more_chains ? in->more_chains[i - 1] : NULL;
    return c != NULL && sk_X509_num(c) > 0 ? c : NULL;
}

/* The chain whose production CA issued x: the first given whose CA's
 * subject is x's issuer name and whose key verifies x's signature (two OEMs'
 * CAs may well share a name); else the first given, so that the caller names
 * the certificate as not verifying against the production CA. */
static STACK_OF(X509) *chain_for(const struct report_inputs *in, X509 *x)
{
    for (size_t i = 0; i <= in->n_more_chains; i++) {
        STACK_OF(X509) *c = input_chain(in, i);
        X509 *ca = c != NULL ? sk_X509_value(c, 0) : NULL;
        if (ca != NULL && X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca)) == 0 &&
            X509_verify(x, X509_get0_pubkey(ca)) == 1)
            return c;
    }
    return input_chain(in, 0);
}

static void check_certificate(struct vctx *v, const struct rrec *r, struct rpkg *pkg)
{
    const struct rproduct *prod = &v->products[r->product];
    STACK_OF(X509) *chain = NULL;
    X509 *ca = NULL;
    size_t der_len = 0;
    uint8_t *der, md[32], dev[GUARDIAN_DEVICE_ID_MAX], serial[16], want[16];
    unsigned int mdl = 0;
    const unsigned char *p;
    X509 *x = NULL;
    BIGNUM *bn = NULL;
    char again[REPORT_MAX_LINE];
    const char *why = NULL;
    int nid;

    if (r->cert == NULL) {
        problem(v, "record %llu (ISSUE of serial %llu of %s): its certificate is missing from the report",
                (unsigned long long)r->seq, (unsigned long long)r->serial, prod->name);
        return;
    }
    der = get_base64(r->cert, r->cert_len, &der_len);
    if (der == NULL || der_len > GUARDIAN_CERT_MAX ||
        report_base64(der, der_len, again, sizeof(again)) != r->cert_len || memcmp(again, r->cert, r->cert_len) != 0) {
        problem(v, "line %lu: the certificate of record %llu is not canonical base64", r->cert_line,
                (unsigned long long)r->seq);
        free(der);
        return;
    }
    if (EVP_Digest(der, der_len, md, &mdl, EVP_sha256(), NULL) != 1 || memcmp(md, r->digest, 32) != 0) {
        problem(v, "the certificate for serial %llu (line %lu) does not match record %llu: its SHA-256 differs "
                   "from the record's digest (altered or replaced)",
                (unsigned long long)r->serial, r->cert_line, (unsigned long long)r->seq);
        free(der);
        return;
    }
    p = der;
    x = d2i_X509(NULL, &p, (long)der_len);
    if (x == NULL || p != der + der_len) {
        why = "it is not a DER X.509 certificate";
        goto out;
    }
    if (r->dev_len)
        get_hex(r->dev_hex, 2u * r->dev_len, dev, r->dev_len);
    nid = X509_get_signature_nid(x);
    chain = chain_for(v->in, x);
    ca = chain != NULL ? sk_X509_value(chain, 0) : NULL;
    if (ca != NULL) {
        if (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca)) != 0 ||
            X509_verify(x, X509_get0_pubkey(ca)) != 1) {
            problem(v, "certificate for serial %llu (record %llu) does not verify against the production CA",
                    (unsigned long long)r->serial, (unsigned long long)r->seq);
            goto done;
        }
        if (v->root_store != NULL) {
            X509_STORE_CTX *sc = X509_STORE_CTX_new();
            int ok = sc && X509_STORE_CTX_init(sc, v->root_store, x, chain) == 1 &&
                     X509_verify_cert(sc) == 1;
            if (!ok)
                problem(v, "certificate for serial %llu (record %llu) does not chain to the OEM root: %s",
                        (unsigned long long)r->serial, (unsigned long long)r->seq,
                        sc ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc)) : "out of memory");
            X509_STORE_CTX_free(sc);
            if (!ok)
                goto done;
        }
    }
    if (nid != NID_ecdsa_with_SHA256 && nid != NID_ecdsa_with_SHA384 && nid != NID_sha256WithRSAEncryption) {
        why = "its signature algorithm is not ecdsa-with-SHA256/384 or sha256WithRSAEncryption";
        goto out;
    }
    /* serialNumber: 0x40 | (package_id[0] & 0x3f), package_id[1..7], serial (u64 big-endian). */
    want[0] = (uint8_t)(0x40 | (pkg->id[0] & 0x3f));
    memcpy(want + 1, pkg->id + 1, 7);
    for (int i = 0; i < 8; i++)
        want[8 + i] = (uint8_t)(r->serial >> (56 - 8 * i));
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    if (bn == NULL || BN_is_negative(bn) || BN_num_bytes(bn) != 16 || BN_bn2binpad(bn, serial, 16) != 16 ||
        memcmp(serial, want, 16) != 0) {
        why = "its serialNumber does not carry the record's serial and package";
        goto out;
    }
    if (pkg->tmpl_bad) {
        why = "its release's template in the report does not decode";
        goto out;
    }
    if (pkg->tmpl != NULL && !check_subject(x, prod, dev, r->dev_len, pkg)) {
        why = "its subject is not the release's subject pattern filled with the record's IDs";
        goto out;
    }
    if (pkg->tmpl != NULL && pkg->ext_oid_len == 0) {
        if (!only_standard_extensions(x)) {
            why = "it has an extension its release's template does not give (the template says no device-identity "
                  "extension)";
            goto out;
        }
    } else if (!check_ext(v, x, prod, dev, r->dev_len, pkg, &why)) {
        goto out;
    }
    pkg->certs_ok++;
out:
    if (why != NULL)
        problem(v, "certificate for serial %llu (record %llu) does not match the certificate profile: %s",
                (unsigned long long)r->serial, (unsigned long long)r->seq, why);
done:
    ERR_clear_error();
    BN_free(bn);
    X509_free(x);
    free(der);
}

/* ---- accounting -------------------------------------------------------------------------- */

static struct rserial *serial_slot(struct vctx *v, uint32_t product, uint64_t serial)
{
    size_t mask = v->serial_cap - 1;
    size_t h = (size_t)((serial * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)product * 0xff51afd7ed558ccdULL)) & mask;
    while (v->serials[h].state != 0 && (v->serials[h].serial != serial || v->serials[h].product != product))
        h = (h + 1) & mask;
    return &v->serials[h];
}

/* A JOURNAL-LOST record's journal name (its device ID field), printable. */
static void lost_journal_name(const struct rrec *r, char *out, size_t cap, long *pid)
{
    size_t n = 0;
    char *end = NULL;

    *pid = -1;
    for (size_t i = 0; i < r->dev_len && n + 1 < cap; i++) {
        int hi = hex_val(r->dev_hex[2 * i]), lo = hex_val(r->dev_hex[2 * i + 1]);
        int c = hi << 4 | lo;
        out[n++] = c > 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n] = '\0';
    if (strncmp(out, "issued-", 7) == 0) {
        long p = strtol(out + 7, &end, 10);
        if (end != out + 7 && *end == '-' && p > 0)
            *pid = p;
    }
}

/* JOURNAL-LOST: the Guardian found the issue journal of a process that held
 * serials open missing or damaged.  Those serials stay counted, but
 * certificates may have left under them without an ISSUE record: the report
 * fails, naming them.  A serial named must be reserved and still open. */
static void check_lost(struct vctx *v, const struct rrec *r, struct rproduct *prod)
{
    unsigned long long seq = (unsigned long long)r->seq, first = (unsigned long long)r->serial;
    char name[GUARDIAN_DEVICE_ID_MAX + 1], who[48];
    int unreserved = 0, settled = 0, other_pkg = 0;
    long pid;

    if (r->serial == 0 || r->units == 0 || r->units > v->n_reserve || r->serial > INT64_MAX - (r->units - 1) ||
        r->dev_len == 0 || (r->release != GUARDIAN_JOURNAL_MISSING && r->release != GUARDIAN_JOURNAL_DAMAGED)) {
        problem(v, "record %llu (JOURNAL-LOST) is malformed: it needs serials 1.. that were reserved, a journal name "
                   "and a reason 1 (missing) or 2 (damaged)",
                seq);
        return;
    }
    lost_journal_name(r, name, sizeof(name), &pid);
    if (pid > 0)
        snprintf(who, sizeof(who), "process %ld", pid);
    else
        snprintf(who, sizeof(who), "an unknown process");
    problem(v, "issue journal of %s lost: serials %llu..%llu of %s may have been issued without a record "
               "(record %llu: journal %s %s)",
            who, first, (unsigned long long)(r->serial + r->units - 1), prod->name, seq, name,
            r->release == GUARDIAN_JOURNAL_MISSING ? "missing" : "damaged");
    for (uint64_t k = 0; k < r->units; k++) {
        struct rserial *s = serial_slot(v, r->product, r->serial + k);
        if (s->state == 0)
            unreserved++;
        else if (s->state != S_RESERVED)
            settled++;
        else {
            if (memcmp(v->pkgs[s->pkg].id, r->package_id, GUARDIAN_PACKAGE_ID_LEN) != 0)
                other_pkg++;
            if (!s->lost) {
                s->lost = 1;
                v->pkgs[s->pkg].lost++;
            }
        }
    }
    if (unreserved > 0)
        problem(v, "record %llu declares %d serials of %s lost that were never reserved", seq, unreserved, prod->name);
    if (settled > 0)
        problem(v, "record %llu declares %d serials of %s lost that were already issued or released", seq, settled,
                prod->name);
    if (other_pkg > 0)
        problem(v, "record %llu names another package than the one %d of its serials counted against", seq,
                other_pkg);
}

/* What each action of a CREDENTIAL record is, for the summary. */
static const char *const credential_actions[] = {
    NULL,
    "the SO PIN set",
    "operator %s set or reset by the SO",
    "%s changed its own PIN",
    "%s locked after 5 consecutive failed logins",
    "the SO cleared with the backend SO PIN (recovery)",
    "operator %s removed",
};
#define CREDENTIAL_ACTION_MAX 6

/* A CREDENTIAL record's subject, decoded; false if it is no name. */
static int credential_subject(const struct rrec *r, char out[GUARDIAN_OPERATOR_MAX + 1])
{
    if (r->dev_len == 0 || r->dev_len > GUARDIAN_OPERATOR_MAX)
        return 0;
    for (size_t i = 0; i < r->dev_len; i++)
        out[i] = (char)(hex_val(r->dev_hex[2 * i]) << 4 | hex_val(r->dev_hex[2 * i + 1]));
    out[r->dev_len] = '\0';
    return guardian_operator_name_ok(out);
}

/* CREDENTIAL: a change to the Guardian's credentials.  No secret is in it,
 * nothing is counted; the fields must be those the store writes: an action
 * 1..6, a subject that is a name ("so" for the SO's own actions, never for an
 * operator's), every other field zero (docs/audit-format.md). */
static void check_credential(struct vctx *v, const struct rrec *r)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];
    char subject[GUARDIAN_OPERATOR_MAX + 1];
    int so;

    if (r->serial < 1 || r->serial > CREDENTIAL_ACTION_MAX || !credential_subject(r, subject) ||
        memcmp(r->digest, zeros, sizeof(r->digest)) != 0 || memcmp(r->package_id, zeros, sizeof(r->package_id)) != 0 ||
        r->release != 0 || r->units != 0) {
        problem(v, "record %llu (CREDENTIAL) is malformed: it needs an action 1..6, a subject that is an operator's "
                   "name or so, and no digest, package, release or units",
                (unsigned long long)r->seq);
        return;
    }
    so = strcmp(subject, "so") == 0;
    if ((r->serial == GUARDIAN_CREDENTIAL_SO_SET || r->serial == GUARDIAN_CREDENTIAL_SO_CLEARED) != so &&
        (r->serial != GUARDIAN_CREDENTIAL_CHANGED && r->serial != GUARDIAN_CREDENTIAL_LOCKED))
        problem(v, "record %llu (CREDENTIAL) names %s for an action that is %s", (unsigned long long)r->seq, subject,
                so ? "an operator's" : "the SO's");
}

/* EXPORT: an audit report exported.  Nothing is counted; the fields must be
 * those the store writes: serial = the record before it (the last the
 * export covered before its own), the scope an installed product or none,
 * every other field zero (docs/audit-format.md). */
static void check_export(struct vctx *v, const struct rrec *r)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];

    if (r->serial != r->seq - 1 || r->dev_len != 0 || memcmp(r->digest, zeros, sizeof(r->digest)) != 0 ||
        memcmp(r->package_id, zeros, sizeof(r->package_id)) != 0 || r->release != 0 || r->units != 0) {
        problem(v, "record %llu (EXPORT) is malformed: it needs serial %llu (the record before it), and no device, "
                   "digest, package, release or units",
                (unsigned long long)r->seq, (unsigned long long)(r->seq - 1));
        return;
    }
    /* The Guardian exports an installed product only: one imported before. */
    if (r->product != NO_PRODUCT && v->products[r->product].pkg < 0)
        problem(v, "record %llu (EXPORT) is an export of %s, which no record before it imported",
                (unsigned long long)r->seq, v->products[r->product].name);
}

/* RETIRE: a superseded release's production CA key destroyed.  Nothing is
 * counted; the fields must be those the store writes (the IDs, the package
 * and its release, the operator; serial, device, digest and units zero), the
 * package one that a record before it imported for that product and
 * release, not the product's installed one at that point, and retired once. */
/* A JOIN record (type 12, docs/audit-format.md "Group packages"): another
 * member of a group package imported it.  It must repeat an earlier IMPORT of
 * a group package (ID, file digest, release, units), name a member
 * (32 bytes) that has not imported it yet, and have serial 0; it adds no
 * allowance.  Whether the member is one the package names is checked against
 * the OEM's file (check_oem_inputs). */
/* A group package's IMPORT or JOIN of encoding 3: the Guardian that wrote
 * it is the member it names (it imported the package itself). */
static void check_member_is_writer(struct vctx *v, const struct rrec *r, const uint8_t member[GUARDIAN_HASH_LEN])
{
    char who[80], hex[2 * GUARDIAN_HASH_LEN + 1];

    if (r->gd > GD_NONE && memcmp(v->gds[r->gd], member, GUARDIAN_HASH_LEN) != 0) {
        put_hex(hex, member, GUARDIAN_HASH_LEN);
        problem(v, "record %llu (%s) names member sha256:%s but was written by Guardian %s",
                (unsigned long long)r->seq, type_names[r->type], hex, guardian_label(v, r->gd, who));
    }
}

/* A record that spends a package's units (RESERVE, ISSUE, RELEASE) names a
 * Guardian that imported the package: its IMPORT's, or a JOIN's.  A
 * Guardian that never imported it has no business with its serials. */
static void check_spender(struct vctx *v, const struct rrec *r, const struct rpkg *k)
{
    char who[80];
    int imported_by_it = 0, known = 0;

    if (r->gd <= GD_NONE)
        return; /* names none (or before Guardians were recorded): counted as such */
    if (k->n_members > 0) {
        /* A group package: the members the trail has import it so far. */
        known = 1;
        for (size_t i = 0; i < k->n_members; i++)
            imported_by_it |= memcmp(k->members[i], v->gds[r->gd], GUARDIAN_HASH_LEN) == 0;
    } else {
        known = k->importer > GD_NONE;
        imported_by_it = k->importer == r->gd;
    }
    if (known && !imported_by_it)
        problem(v, "record %llu (%s of serial %llu of %s release %u) was written by Guardian %s, which did not "
                   "import that package (it is no member of it)",
                (unsigned long long)r->seq, type_names[r->type], (unsigned long long)r->serial,
                v->products[k->product].name, k->release, guardian_label(v, r->gd, who));
}

static void check_join(struct vctx *v, const struct rrec *r)
{
    unsigned long long seq = (unsigned long long)r->seq;
    struct rpkg *k = NULL;
    uint8_t member[GUARDIAN_HASH_LEN];

    for (size_t i = 0; i < v->n_pkgs; i++)
        if (memcmp(v->pkgs[i].id, r->package_id, GUARDIAN_PACKAGE_ID_LEN) == 0)
            k = &v->pkgs[i];
    if (k == NULL || k->n_members == 0) {
        problem(v, "record %llu (JOIN) joins a package that no earlier IMPORT record imported as a group package",
                seq);
        return;
    }
    if (r->serial != 0 || r->dev_len != GUARDIAN_HASH_LEN ||
        !get_hex(r->dev_hex, 2u * r->dev_len, member, GUARDIAN_HASH_LEN)) {
        problem(v, "record %llu (JOIN) is malformed: it needs serial 0 and the member's %d-byte digest", seq,
                GUARDIAN_HASH_LEN);
        return;
    }
    if (memcmp(k->digest, r->digest, GUARDIAN_HASH_LEN) != 0 || k->release != r->release ||
        k->authorised != r->units || r->product != k->product) {
        problem(v, "record %llu (JOIN) describes package record %llu imported otherwise (product, file digest, "
                   "release or units differ)",
                seq, (unsigned long long)k->seq);
        return;
    }
    for (size_t i = 0; i < k->n_members; i++)
        if (memcmp(k->members[i], member, GUARDIAN_HASH_LEN) == 0) {
            problem(v, "record %llu (JOIN): this member imported the package already (record %llu): a replay", seq,
                    (unsigned long long)k->member_seq[i]);
            return;
        }
    if (v->products[k->product].pkg < 0 || &v->pkgs[v->products[k->product].pkg] != k) {
        problem(v, "record %llu (JOIN) joins a release of %s that another release superseded", seq,
                v->products[k->product].name);
        return;
    }
    if (k->n_members == REPORT_MAX_MEMBERS) {
        problem(v, "record %llu (JOIN): more than %d members", seq, REPORT_MAX_MEMBERS);
        return;
    }
    check_member_is_writer(v, r, member);
    memcpy(k->members[k->n_members], member, GUARDIAN_HASH_LEN);
    k->member_seq[k->n_members++] = r->seq;
}

static void check_retire(struct vctx *v, size_t at, const struct rproduct *prod)
{
    static const uint8_t zeros[GUARDIAN_HASH_LEN];
    const struct rrec *r = &v->recs[at];
    long found = -1;

    if (r->serial != 0 || r->dev_len != 0 || memcmp(r->digest, zeros, sizeof(r->digest)) != 0 || r->units != 0) {
        problem(v, "record %llu (RETIRE) is malformed: it has no serial, device, digest or units",
                (unsigned long long)r->seq);
        return;
    }
    for (size_t k = 0; k < v->n_pkgs; k++)
        if (memcmp(v->pkgs[k].id, r->package_id, GUARDIAN_PACKAGE_ID_LEN) == 0 && v->pkgs[k].product == r->product &&
            v->pkgs[k].release == r->release)
            found = (long)k;
    if (found < 0) {
        problem(v, "record %llu (RETIRE) retires release %u of %s, which no record before it imported",
                (unsigned long long)r->seq, r->release, prod->name);
        return;
    }
    if (prod->pkg == found)
        problem(v, "record %llu (RETIRE) retires release %u of %s while it is the installed release",
                (unsigned long long)r->seq, r->release, prod->name);
    for (size_t i = 0; i < at; i++)
        if (v->recs[i].type == GUARDIAN_AUDIT_RETIRE && v->recs[i].seq != r->seq &&
            memcmp(v->recs[i].package_id, r->package_id, GUARDIAN_PACKAGE_ID_LEN) == 0)
            problem(v, "record %llu (RETIRE) retires release %u of %s again (record %llu did)",
                    (unsigned long long)r->seq, r->release, prod->name, (unsigned long long)v->recs[i].seq);
}

/* The scope an EXPORT record names, as the scope line writes it. */
static void export_scope(const struct vctx *v, const struct rrec *r, char *out, size_t cap)
{
    if (r->product == NO_PRODUCT)
        snprintf(out, cap, "all");
    else
        snprintf(out, cap, "%s", v->products[r->product].name);
}

/* The report's own EXPORT record.  A Guardian that records its exports
 * writes the record of each export before it builds the report, which covers
 * the trail up to it: its last record.  So once a report shows an EXPORT
 * record, its last record is its own, naming the report's scope and export
 * time.  A report without any (made before exports were recorded) still
 * verifies; the summary says the exporter is not recorded. */
static void check_own_export(struct vctx *v)
{
    const struct rrec *seen = NULL, *last = v->n_recs > 0 ? &v->recs[v->n_recs - 1] : NULL;
    char scope[2 * GUARDIAN_ID_MAX + 2], want[2 * GUARDIAN_ID_MAX + 2];

    for (size_t i = 0; i < v->n_recs; i++)
        if (v->recs[i].type == GUARDIAN_AUDIT_EXPORT)
            seen = &v->recs[i];
    if (seen == NULL)
        return;
    if (seen != last) {
        problem(v, "the report does not end with its own EXPORT record: its last record is %llu, after EXPORT "
                   "record %llu (the Guardian records each export as the last record of its report)",
                (unsigned long long)last->seq, (unsigned long long)seen->seq);
        return;
    }
    export_scope(v, last, scope, sizeof(scope));
    if (v->scoped)
        snprintf(want, sizeof(want), "%s/%s", v->scope_oem, v->scope_product);
    else
        snprintf(want, sizeof(want), "all");
    /* The IDs one by one: an ID may hold a '/'. */
    if (last->product == NO_PRODUCT ? v->scoped
                                    : !v->scoped || strcmp(v->products[last->product].oem_id, v->scope_oem) != 0 ||
                                          strcmp(v->products[last->product].product_id, v->scope_product) != 0)
        problem(v, "record %llu, the report's own EXPORT record, is an export of %s but the report's scope is %s",
                (unsigned long long)last->seq, scope, want);
    if (last->time != v->exported) {
        char t[32], e[32];
        iso8601(last->time, t);
        iso8601(v->exported, e);
        problem(v, "record %llu, the report's own EXPORT record, is dated %s but the report says it was exported %s",
                (unsigned long long)last->seq, t, e);
    }
}

static void check_accounting(struct vctx *v)
{
    v->serial_cap = 16;
    while (v->serial_cap < 2 * v->n_reserve + 2)
        v->serial_cap *= 2;
    v->serials = calloc(v->serial_cap, sizeof(*v->serials));
    v->pkgs = calloc(REPORT_MAX_PACKAGES, sizeof(*v->pkgs));
    if (v->serials == NULL || v->pkgs == NULL) {
        problem(v, "out of memory");
        return;
    }
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        struct rproduct *prod;
        struct rserial *s;
        struct rpkg *pkg;
        unsigned long long seq = (unsigned long long)r->seq, serial = (unsigned long long)r->serial;

        if (r->type == TYPE_REDACTED || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        if (r->type == GUARDIAN_AUDIT_CREDENTIAL) {
            check_credential(v, r);
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_EXPORT) {
            check_export(v, r);
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_ENROL) {
            /* An OEM root enrolled in the Guardian's ledger, or removed from it:
             * no product's, no count. */
            if ((r->serial != GUARDIAN_ENROL_ENROLLED && r->serial != GUARDIAN_ENROL_REMOVED) ||
                r->dev_len != GUARDIAN_HASH_LEN)
                problem(v, "record %llu (ENROL) is malformed: it needs an action 1 or 2 and the SHA-256 of its "
                           "OEM IDs",
                        seq);
            continue;
        }
        prod = &v->products[r->product];
        if (r->type == GUARDIAN_AUDIT_RETIRE) {
            check_retire(v, i, prod);
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_JOIN) {
            check_join(v, r);
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_IMPORT) {
            if (r->dev_len != 0 && r->dev_len != GUARDIAN_HASH_LEN)
                problem(v, "record %llu (IMPORT) is malformed: its member field holds %zu bytes, not 0 or %d", seq,
                        (size_t)r->dev_len, GUARDIAN_HASH_LEN);
            for (size_t k = 0; k < v->n_pkgs; k++)
                if (memcmp(v->pkgs[k].id, r->package_id, GUARDIAN_PACKAGE_ID_LEN) == 0)
                    problem(v, "record %llu imports package %s again (replay; first imported by record %llu)", seq,
                            prod->name, (unsigned long long)v->pkgs[k].seq);
            if (prod->pkg >= 0 && v->pkgs[prod->pkg].release >= r->release)
                problem(v, "record %llu imports release %u of %s after release %u (rollback)", seq, r->release,
                        prod->name, v->pkgs[prod->pkg].release);
            if (v->n_pkgs == REPORT_MAX_PACKAGES) {
                problem(v, "record %llu: more than %d package imports", seq, REPORT_MAX_PACKAGES);
                return;
            }
            pkg = &v->pkgs[v->n_pkgs];
            pkg->product = r->product;
            pkg->seq = r->seq;
            memcpy(pkg->id, r->package_id, sizeof(pkg->id));
            memcpy(pkg->digest, r->digest, sizeof(pkg->digest));
            pkg->release = r->release;
            pkg->authorised = r->units;
            pkg->n_members = 0;
            if (r->dev_len == GUARDIAN_HASH_LEN && /* a group package: its first member */
                get_hex(r->dev_hex, 2u * r->dev_len, pkg->members[0], GUARDIAN_HASH_LEN)) {
                pkg->member_seq[0] = r->seq;
                pkg->n_members = 1;
                check_member_is_writer(v, r, pkg->members[0]);
            }
            pkg->importer = r->gd;
            attach_template(v, pkg);
            prod->pkg = (long)v->n_pkgs++;
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_JOURNAL_LOST) {
            check_lost(v, r, prod);
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_OUTCOME || r->type == GUARDIAN_AUDIT_REISSUE)
            continue; /* a device's records: check_devices */
        if (r->serial == 0) {
            problem(v, "record %llu (%s) has serial 0", seq, type_names[r->type]);
            continue;
        }
        s = serial_slot(v, r->product, r->serial);
        if (r->type == GUARDIAN_AUDIT_RESERVE) {
            if (prod->pkg < 0) {
                problem(v, "record %llu reserves serial %llu of %s, but no package of that product was imported "
                           "before it",
                        seq, serial, prod->name);
                continue;
            }
            if (s->state != 0) {
                problem(v, "serial %llu of %s was reserved twice (records %llu and %llu)", serial, prod->name,
                        (unsigned long long)v->recs[s->rec].seq, seq);
                continue;
            }
            s->state = S_RESERVED;
            s->serial = r->serial;
            s->product = r->product;
            s->pkg = (uint32_t)prod->pkg;
            s->rec = i;
            pkg = &v->pkgs[prod->pkg];
            check_spender(v, r, pkg);
            pkg->reserved++;
            if (++pkg->net > pkg->peak)
                pkg->peak = pkg->net;
            if (++prod->net > prod->peak)
                prod->peak = prod->net;
            if (r->serial > prod->max_serial)
                prod->max_serial = r->serial;
            if (pkg->net > pkg->authorised && !pkg->over) {
                pkg->over = 1;
                problem(v, "%s release %u: used %llu units (reserved, not released) at record %llu but the package "
                           "authorised %llu",
                        prod->name, pkg->release, (unsigned long long)pkg->net, seq,
                        (unsigned long long)pkg->authorised);
            }
            continue;
        }
        /* ISSUE or RELEASE settles a reservation. */
        if (s->state == 0) {
            problem(v, "record %llu %s serial %llu of %s, which was never reserved", seq,
                    r->type == GUARDIAN_AUDIT_ISSUE ? "issues" : "releases", serial, prod->name);
            continue;
        }
        if (s->state != S_RESERVED) {
            problem(v, "serial %llu of %s was %s by record %llu and %s again by record %llu", serial, prod->name,
                    s->state == S_ISSUED ? "issued" : "released", (unsigned long long)v->recs[s->settled].seq,
                    r->type == GUARDIAN_AUDIT_ISSUE ? "issued" : "released", seq);
            continue;
        }
        pkg = &v->pkgs[s->pkg];
        check_spender(v, r, pkg);
        s->settled = i;
        if (s->lost) {
            /* Its holder was alive after all (its journal deleted under it). */
            s->lost = 0;
            pkg->lost--;
        }
        if (r->type == GUARDIAN_AUDIT_RELEASE) {
            s->state = S_RELEASED;
            pkg->released++;
            pkg->net--;
            prod->net--;
            continue;
        }
        {
            const struct rrec *res = &v->recs[s->rec];
            if (res->dev_len != 0 &&
                (res->dev_len != r->dev_len || memcmp(res->dev_hex, r->dev_hex, 2u * r->dev_len) != 0))
                problem(v, "record %llu issues serial %llu to another device than record %llu reserved it for", seq,
                        serial, (unsigned long long)res->seq);
        }
        s->state = S_ISSUED;
        pkg->issued++;
        check_certificate(v, r, pkg);
    }
}

/* The Guardian's own counters (product lines) against what the trail adds up to. */
static void check_products(struct vctx *v)
{
    for (size_t i = 0; i < v->n_products; i++) {
        struct rproduct *p = &v->products[i];
        const struct rpkg *k = p->pkg >= 0 ? &v->pkgs[p->pkg] : NULL;
        int in_scope = !outside_scope(v, p);
        if (!p->listed) {
            if (k != NULL && in_scope)
                problem(v, "%s has records but no product line", p->name);
            continue;
        }
        if (!in_scope) {
            problem(v, "line %lu: a product line for %s, outside the report's scope", p->line, p->name);
            continue;
        }
        if (k == NULL) {
            problem(v, "line %lu: %s has a product line but no IMPORT record", p->line, p->name);
            continue;
        }
        if (memcmp(k->id, p->p_package_id, GUARDIAN_PACKAGE_ID_LEN) != 0 || k->release != p->p_release ||
            k->authorised != p->p_authorised)
            problem(v, "the Guardian's installed package of %s (line %lu) is not the last one the trail imported "
                       "(record %llu)",
                    p->name, p->line, (unsigned long long)k->seq);
        else if (k->net != p->p_issued)
            problem(v, "the Guardian counts %llu units used of %s (line %lu) but the trail adds up to %llu",
                    (unsigned long long)p->p_issued, p->name, p->line, (unsigned long long)k->net);
        if (p->p_next_serial != p->max_serial + 1)
            problem(v, "the Guardian's next serial of %s is %llu (line %lu) but the trail's last serial is %llu",
                    p->name, (unsigned long long)p->p_next_serial, p->line, (unsigned long long)p->max_serial);
    }
}

/* What the OEM knows: its own package files and its authorised total. */
static void check_oem_inputs(struct vctx *v)
{
    for (size_t j = 0; j < v->in->n_packages; j++) {
        const struct report_package *f = &v->in->packages[j];
        const struct rpkg *k = NULL;
        for (size_t i = 0; i < v->n_pkgs && k == NULL; i++)
            if (memcmp(v->pkgs[i].digest, f->digest, GUARDIAN_HASH_LEN) == 0)
                k = &v->pkgs[i];
        if (k == NULL) {
            problem(v, "package %s (%s/%s release %u) was not imported in this trail%s", f->name, f->oem_id,
                    f->product_id, f->release_version, v->scoped ? " (or is outside the report's scope)" : "");
            continue;
        }
        if (strcmp(v->products[k->product].oem_id, f->oem_id) != 0 ||
            strcmp(v->products[k->product].product_id, f->product_id) != 0 ||
            memcmp(k->id, f->package_id, GUARDIAN_PACKAGE_ID_LEN) != 0 || k->release != f->release_version ||
            k->authorised != f->authorised_units) {
            problem(v, "record %llu imports package %s but describes it otherwise (it claims %s release %u, %llu "
                       "units; the package says %s/%s release %u, %llu units)",
                    (unsigned long long)k->seq, f->name, v->products[k->product].name, k->release,
                    (unsigned long long)k->authorised, f->oem_id, f->product_id, f->release_version,
                    (unsigned long long)f->authorised_units);
        }
        /* Which Guardians imported it: the package's members only. */
        if (f->n_members == 0 && k->n_members > 0)
            problem(v, "record %llu imports package %s as a group package, but the package names one Guardian",
                    (unsigned long long)k->seq, f->name);
        for (size_t m = 0; f->n_members > 0 && m < k->n_members; m++) {
            int named = 0;
            for (size_t j2 = 0; j2 < f->n_members; j2++)
                named |= memcmp(f->members[j2], k->members[m], GUARDIAN_HASH_LEN) == 0;
            if (!named) {
                char hex[2 * GUARDIAN_HASH_LEN + 1];
                put_hex(hex, k->members[m], GUARDIAN_HASH_LEN);
                problem(v, "record %llu: Guardian sha256:%s imported package %s, which does not name it as a member",
                        (unsigned long long)k->member_seq[m], hex, f->name);
            }
        }
        if (f->n_members > 0 && k->n_members == 0)
            problem(v, "record %llu imports group package %s without naming the member that imported it",
                    (unsigned long long)k->seq, f->name);
        /* Not a failure (a member may import later), but what the OEM must
         * look for: a member that imported it into another store spends the
         * allowance there too, and its own export shows that IMPORT. */
        for (size_t j2 = 0; j2 < f->n_members; j2++) {
            int in = 0;
            for (size_t m = 0; m < k->n_members; m++)
                in |= memcmp(f->members[j2], k->members[m], GUARDIAN_HASH_LEN) == 0;
            if (!in) {
                char hex[2 * GUARDIAN_HASH_LEN + 1];
                put_hex(hex, f->members[j2], GUARDIAN_HASH_LEN);
                say(v, "    member sha256:%s of %s has not imported it in this trail (an import in another store "
                       "would spend the allowance again: see its export)\n", hex, f->name);
            }
        }
        if (f->cert_template != NULL && k->tmpl != NULL) {
            unsigned char *der = NULL;
            int n = i2d_GUARDIAN_CERT_TEMPLATE(k->tmpl, &der);
            if (n < 0 || (size_t)n != f->cert_template_len || memcmp(der, f->cert_template, (size_t)n) != 0)
                problem(v, "record %llu imports package %s but the report's template of it differs from the "
                           "package's (its certificates were checked against the report's)",
                        (unsigned long long)k->seq, f->name);
            OPENSSL_free(der);
        }
        if (k->peak > f->authorised_units && k->authorised == f->authorised_units && k->over)
            continue; /* already reported against the same number */
        if (k->peak > f->authorised_units)
            problem(v, "%s release %u: used %llu units (reserved, not released) but the package %s authorised %llu",
                    v->products[k->product].name, k->release, (unsigned long long)k->peak, f->name,
                    (unsigned long long)f->authorised_units);
    }
    if (v->in->product != NULL) {
        long i = -1;
        for (size_t k = 0; k < v->n_products && i < 0; k++)
            if (strcmp(v->products[k].name, v->in->product) == 0)
                i = (long)k;
        if (i < 0 || v->products[i].pkg < 0)
            problem(v, "%s does not appear in the report", v->in->product);
        else if (v->products[i].peak > v->in->authorised)
            problem(v, "%s: used %llu units (reserved, not released) but you authorised %llu", v->in->product,
                    (unsigned long long)v->products[i].peak, (unsigned long long)v->in->authorised);
    }
}

/* ---- devices: re-issues and part outcomes (schema 6) -------------------------------------- */

/* A device of a product, as its records leave it: its certificate now (the
 * serial of its last ISSUE, or of a REISSUE), and the outcome reported for
 * it. */
struct rdevice {
    const struct rrec *issue; /* its certificate's ISSUE record; NULL: empty slot */
    uint64_t serial;
    uint64_t outcome;         /* 0 none, 1 programmed, 2 scrapped */
};

struct rdevcount {
    uint64_t devices, programmed, scrapped, reissued, twice;
};

static struct rdevice *device_slot(struct rdevice *t, size_t cap, const struct rrec *r)
{
    size_t mask = cap - 1, h = (size_t)r->product * 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < 2u * r->dev_len; i++)
        h = (h ^ (unsigned char)r->dev_hex[i]) * 0x100000001b3ULL;
    for (h &= mask; t[h].issue != NULL; h = (h + 1) & mask)
        if (t[h].issue->product == r->product && t[h].issue->dev_len == r->dev_len &&
            memcmp(t[h].issue->dev_hex, r->dev_hex, 2u * r->dev_len) == 0)
            break;
    return &t[h];
}

/* Each device's certificates and outcomes, in trail order (docs/audit-report.md,
 * "Devices"): a REISSUE must follow the ISSUE of its new serial, for the same
 * device, and name the serial that device held; an OUTCOME must name a
 * device with an ISSUE record and its certificate's serial, and an outcome
 * 1 (programmed) or 2 (scrapped).  A device issued twice without a REISSUE
 * (two processes asked for it at once, or a trail from before schema 6,
 * when asking again issued again) is listed, not a problem: every unit is
 * still accounted for.  Then per product: devices, programmed, scrapped, no
 * outcome reported, re-issued. */
static void check_devices(struct vctx *v)
{
    struct rdevice *t = NULL;
    struct rdevcount *c = NULL;
    size_t cap = 16, n_issue = 0, twice_shown = 0;

    if (v->serials == NULL || v->pkgs == NULL)
        return;
    for (size_t i = 0; i < v->n_recs; i++)
        n_issue += v->recs[i].type == GUARDIAN_AUDIT_ISSUE;
    while (cap < 2 * n_issue + 2)
        cap *= 2;
    t = calloc(cap, sizeof(*t));
    c = calloc(v->n_products + 1, sizeof(*c));
    if (t == NULL || c == NULL) {
        problem(v, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i], *next = i + 1 < v->n_recs ? &v->recs[i + 1] : NULL;
        unsigned long long seq = (unsigned long long)r->seq;
        const struct rserial *sl;
        struct rdevice *d;
        const char *name;

        if ((r->type != GUARDIAN_AUDIT_ISSUE && r->type != GUARDIAN_AUDIT_OUTCOME &&
             r->type != GUARDIAN_AUDIT_REISSUE) ||
            (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        name = v->products[r->product].name;
        if (r->dev_len == 0) {
            if (r->type != GUARDIAN_AUDIT_ISSUE)
                problem(v, "record %llu (%s) names no device", seq, type_names[r->type]);
            continue;
        }
        d = device_slot(t, cap, r);
        if (r->type == GUARDIAN_AUDIT_ISSUE) {
            sl = serial_slot(v, r->product, r->serial);
            if (sl->state != S_ISSUED || sl->settled != i)
                continue; /* not a certificate (check_accounting said why) */
            if (d->issue == NULL) {
                c[r->product].devices++;
                d->issue = r;
                d->serial = r->serial;
                d->outcome = 0;
            } else if (next == NULL || next->type != GUARDIAN_AUDIT_REISSUE || next->serial != r->serial) {
                /* The device keeps its first certificate, as the Guardian's
                 * device index does (its outcomes name that serial). */
                c[r->product].twice++;
                if (++twice_shown <= REPORT_PROBLEMS_SHOWN)
                    say(v, "device %.*s of %s: serial %llu (record %llu) issued after serial %llu (record %llu) "
                           "without a re-issue: it holds two certificates\n",
                        2 * r->dev_len, r->dev_hex, name, (unsigned long long)r->serial, seq,
                        (unsigned long long)d->serial, (unsigned long long)d->issue->seq);
            } /* else: a re-issue, checked with its REISSUE record, next */
            continue;
        }
        if (r->type == GUARDIAN_AUDIT_REISSUE) {
            const struct rrec *prev = i > 0 ? &v->recs[i - 1] : NULL;
            if (prev == NULL || prev->type != GUARDIAN_AUDIT_ISSUE || prev->serial != r->serial ||
                prev->product != r->product || prev->dev_len != r->dev_len ||
                memcmp(prev->dev_hex, r->dev_hex, 2u * r->dev_len) != 0 ||
                memcmp(prev->digest, r->digest, GUARDIAN_HASH_LEN) != 0) {
                problem(v, "record %llu (REISSUE of serial %llu of %s) does not follow the ISSUE record of that "
                           "serial for that device and certificate",
                        seq, (unsigned long long)r->serial, name);
                continue;
            }
            if (d->issue == NULL || d->serial != r->units || r->units == r->serial) {
                problem(v, "record %llu re-issues device %.*s of %s replacing serial %llu, but the device's "
                           "certificate was %s",
                        seq, 2 * r->dev_len, r->dev_hex, name, (unsigned long long)r->units,
                        d->issue == NULL ? "none" : "another serial");
                continue;
            }
            c[r->product].reissued++;
            if (d->outcome != 0)
                c[r->product].programmed -= d->outcome == 1, c[r->product].scrapped -= d->outcome == 2;
            say(v, "reissue record %llu: device %.*s of %s: serial %llu replaces serial %llu, by %s\n", seq,
                2 * r->dev_len, r->dev_hex, name, (unsigned long long)r->serial, (unsigned long long)r->units,
                operator_label(v, r->op));
            d->issue = prev;
            d->serial = r->serial;
            d->outcome = 0;
            continue;
        }
        /* OUTCOME */
        if (d->issue == NULL || d->serial != r->serial) {
            problem(v, "record %llu reports an outcome for device %.*s of %s (serial %llu), which %s", seq,
                    2 * r->dev_len, r->dev_hex, name, (unsigned long long)r->serial,
                    d->issue == NULL ? "has no ISSUE record before it" : "is not that device's certificate");
            continue;
        }
        if (r->units != 1 && r->units != 2) {
            problem(v, "record %llu (OUTCOME) has outcome %llu: 1 (programmed) or 2 (scrapped)", seq,
                    (unsigned long long)r->units);
            continue;
        }
        if (d->outcome == 2 && r->units == 1)
            problem(v, "record %llu reports device %.*s of %s programmed after it was scrapped", seq,
                    2 * r->dev_len, r->dev_hex, name);
        if (d->outcome != 0)
            c[r->product].programmed -= d->outcome == 1, c[r->product].scrapped -= d->outcome == 2;
        d->outcome = r->units;
        c[r->product].programmed += r->units == 1;
        c[r->product].scrapped += r->units == 2;
    }
    if (twice_shown > REPORT_PROBLEMS_SHOWN)
        say(v, "(%zu more devices issued twice not shown)\n", twice_shown - REPORT_PROBLEMS_SHOWN);
    for (size_t p = 0; p < v->n_products; p++) {
        const struct rdevcount *k = &c[p];
        if (k->devices == 0)
            continue;
        say(v, "%s devices %llu: programmed %llu, scrapped %llu, no outcome reported %llu; re-issued %llu, issued "
               "twice without a re-issue %llu\n",
            v->products[p].name, (unsigned long long)k->devices, (unsigned long long)k->programmed,
            (unsigned long long)k->scrapped, (unsigned long long)(k->devices - k->programmed - k->scrapped),
            (unsigned long long)k->reissued, (unsigned long long)k->twice);
    }
out:
    free(t);
    free(c);
}

/* The summary's order of operators: names alphabetically, then none, then
 * not recorded. */
static const struct vctx *op_order_ctx;
static int op_order_cmp(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    const char *nx = op_order_ctx->ops[x].name, *ny = op_order_ctx->ops[y].name;
    int rx = x == OP_NOT_RECORDED ? 2 : nx[0] == '\0', ry = y == OP_NOT_RECORDED ? 2 : ny[0] == '\0';
    if (rx != ry)
        return rx - ry;
    return rx == 0 ? strcmp(nx, ny) : 0;
}

/* "alice 4, bob 2, (none) 1": units issued per operator, from counts[op],
 * in `order`. */
static void say_operators(struct vctx *v, const size_t *order, const uint64_t *counts)
{
    const char *sep = "";
    for (size_t k = 0; k < v->n_ops; k++) {
        size_t op = order[k];
        if (counts[op] == 0)
            continue;
        say(v, "%s%s %llu", sep, operator_label(v, op), (unsigned long long)counts[op]);
        sep = ", ";
    }
    say(v, "\n");
}

#define CREDENTIAL_LINES_SHOWN 1000

/* "sha256:<hex> 4, (none) 1": units issued per Guardian, from counts[gd],
 * in the order the trail first names them; the ones that issued none are
 * left out. */
static void say_guardians(struct vctx *v, const uint64_t *counts)
{
    const char *sep = "";
    char who[80];
    for (size_t k = GD_NONE + 1; k <= v->n_gds; k++) {
        size_t gd = k < v->n_gds ? k : GD_NONE; /* the named ones, then none, then not recorded */
        if (counts[gd] == 0)
            continue;
        say(v, "%s%s %llu", sep, guardian_label(v, gd, who), (unsigned long long)counts[gd]);
        sep = ", ";
    }
    if (counts[GD_NOT_RECORDED] > 0)
        say(v, "%s%s %llu", sep, guardian_label(v, GD_NOT_RECORDED, who), (unsigned long long)counts[GD_NOT_RECORDED]);
    say(v, "\n");
}

static void summary(struct vctx *v)
{
    uint64_t *by_gd = NULL, *total_gd = NULL, any_gd = 0;
    uint64_t *by_op = NULL, *total = NULL;
    size_t n_credentials = 0, n_exports = 0, *order = NULL;
    const struct rrec *own_export = NULL;

    /* Units issued per operator and per Guardian, and per package: each
     * ISSUE that settled its reservation (check_accounting) counts for the
     * operator and the Guardian it names.  Only records of encoding 2 or 3
     * name an operator (a report without one has no operator lines), only
     * those of encoding 3 a Guardian. */
    if (v->serials != NULL && v->pkgs != NULL && v->n_pkgs > 0) {
        if (v->n_ops > OP_NOT_RECORDED + 1) {
            by_op = calloc(v->n_pkgs * v->n_ops, sizeof(*by_op));
            total = calloc(v->n_ops, sizeof(*total));
            order = calloc(v->n_ops, sizeof(*order));
        }
        if (v->gds != NULL) {
            by_gd = calloc(v->n_pkgs * v->n_gds, sizeof(*by_gd));
            total_gd = calloc(v->n_gds, sizeof(*total_gd));
        }
    }
    if (by_op == NULL || total == NULL || order == NULL) {
        free(by_op), free(total), free(order);
        by_op = total = NULL;
        order = NULL;
    }
    if (by_gd == NULL || total_gd == NULL) {
        free(by_gd), free(total_gd);
        by_gd = total_gd = NULL;
    }
    if (order != NULL) {
        for (size_t op = 0; op < v->n_ops; op++)
            order[op] = op;
        op_order_ctx = v;
        qsort(order, v->n_ops, sizeof(*order), op_order_cmp);
    }
    for (size_t i = 0; (by_op != NULL || by_gd != NULL) && i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        const struct rserial *sl;
        if (r->type != GUARDIAN_AUDIT_ISSUE || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        sl = serial_slot(v, r->product, r->serial);
        if (sl->state != S_ISSUED || sl->settled != i)
            continue;
        if (by_op != NULL) {
            by_op[sl->pkg * v->n_ops + r->op]++;
            total[r->op]++;
        }
        if (by_gd != NULL) {
            by_gd[sl->pkg * v->n_gds + r->gd]++;
            total_gd[r->gd]++;
            any_gd += r->gd != GD_NOT_RECORDED;
        }
    }
    for (size_t i = 0; i < v->n_pkgs; i++) {
        const struct rpkg *k = &v->pkgs[i];
        const uint64_t *k_gd = by_gd != NULL ? by_gd + i * v->n_gds : NULL;
        char id[33], lost[64] = "";
        put_hex(id, k->id, sizeof(k->id));
        if (k->lost > 0)
            snprintf(lost, sizeof(lost), " (%llu of them in a lost issue journal)", (unsigned long long)k->lost);
        say(v,
            "%s release %u (package %s, record %llu): authorised %llu, reserved %llu, released %llu, issued %llu, "
            "reserved-not-issued %llu%s, remaining %llu, certificates verified %llu/%llu\n",
            v->products[k->product].name, k->release, id, (unsigned long long)k->seq,
            (unsigned long long)k->authorised, (unsigned long long)k->reserved, (unsigned long long)k->released,
            (unsigned long long)k->issued, (unsigned long long)(k->reserved - k->released - k->issued), lost,
            (unsigned long long)(k->authorised > k->net ? k->authorised - k->net : 0),
            (unsigned long long)k->certs_ok, (unsigned long long)k->issued);
        for (size_t m = 0; m < k->n_members; m++) {
            char hex[2 * GUARDIAN_HASH_LEN + 1];
            put_hex(hex, k->members[m], GUARDIAN_HASH_LEN);
            say(v, "    member sha256:%s %s (record %llu)", hex, m == 0 ? "imported" : "joined",
                (unsigned long long)k->member_seq[m]);
            if (any_gd > 0 && k_gd != NULL) {
                uint64_t n = 0;
                for (size_t gd = GD_NONE + 1; gd < v->n_gds; gd++)
                    if (memcmp(v->gds[gd], k->members[m], GUARDIAN_HASH_LEN) == 0)
                        n = k_gd[gd];
                say(v, ", issued %llu", (unsigned long long)n);
            }
            say(v, "\n");
        }
        if (any_gd > 0 && k_gd != NULL && k->issued > 0) {
            say(v, "    issued by Guardian: ");
            say_guardians(v, k_gd);
        }
        if (order != NULL && k->issued > 0) {
            say(v, "    issued by operator: ");
            say_operators(v, order, by_op + i * v->n_ops);
        }
    }
    if (order != NULL) {
        uint64_t any = 0;
        for (size_t op = 0; op < v->n_ops; op++)
            any += total[op];
        if (any > 0) {
            say(v, "operators  units issued: ");
            say_operators(v, order, total);
        }
    }
    if (any_gd > 0) {
        say(v, "Guardians  units issued: ");
        say_guardians(v, total_gd);
    }
    /* Credential events, in trail order: what happened, to whom, by whom. */
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        char subject[GUARDIAN_OPERATOR_MAX + 1], when[32], what[96];
        if (r->type != GUARDIAN_AUDIT_CREDENTIAL || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        if (++n_credentials > CREDENTIAL_LINES_SHOWN)
            continue;
        iso8601(r->time, when);
        if (r->serial >= 1 && r->serial <= CREDENTIAL_ACTION_MAX && credential_subject(r, subject))
            snprintf(what, sizeof(what), credential_actions[r->serial], subject);
        else
            snprintf(what, sizeof(what), "(malformed)");
        say(v, "credential record %llu %s by %s: %s\n", (unsigned long long)r->seq, when, operator_label(v, r->op),
            what);
    }
    if (n_credentials > CREDENTIAL_LINES_SHOWN)
        say(v, "(%zu more credential records not shown)\n", n_credentials - CREDENTIAL_LINES_SHOWN);
    /* Exports, in trail order: who exported what, when; the report's own
     * (its last record) as "exported by". */
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        char when[32], scope[2 * GUARDIAN_ID_MAX + 2];
        if (r->type != GUARDIAN_AUDIT_EXPORT || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        iso8601(r->time, when);
        export_scope(v, r, scope, sizeof(scope));
        if (i == v->n_recs - 1) {
            own_export = r;
            continue;
        }
        if (++n_exports <= CREDENTIAL_LINES_SHOWN)
            say(v, "export record %llu %s by %s: scope %s\n", (unsigned long long)r->seq, when,
                operator_label(v, r->op), scope);
    }
    if (n_exports > CREDENTIAL_LINES_SHOWN)
        say(v, "(%zu more export records not shown)\n", n_exports - CREDENTIAL_LINES_SHOWN);
    /* OEM roots enrolled in (or removed from) the Guardian's ledger, in trail
     * order: which root (SHA-256), when, by whom. */
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        char when[32], root[65];
        if (r->type != GUARDIAN_AUDIT_ENROL || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        iso8601(r->time, when);
        report_hex(root, r->digest, sizeof(r->digest));
        say(v, "enrol      record %llu %s by %s: OEM root sha256:%s %s\n", (unsigned long long)r->seq, when,
            operator_label(v, r->op), root, r->serial == GUARDIAN_ENROL_REMOVED ? "removed" : "enrolled");
    }
    /* Retired production CA keys, in trail order: which release, when, by whom. */
    for (size_t i = 0; i < v->n_recs; i++) {
        const struct rrec *r = &v->recs[i];
        char when[32], pkg[2 * GUARDIAN_PACKAGE_ID_LEN + 1];
        if (r->type != GUARDIAN_AUDIT_RETIRE || (i > 0 && r->seq == v->recs[i - 1].seq))
            continue;
        iso8601(r->time, when);
        report_hex(pkg, r->package_id, sizeof(r->package_id));
        say(v, "retired    record %llu %s by %s: the production CA key of %s release %u (package %s)\n",
            (unsigned long long)r->seq, when, operator_label(v, r->op), v->products[r->product].name, r->release,
            pkg);
    }
    if (own_export != NULL) {
        char when[32];
        iso8601(own_export->time, when);
        say(v, "exported by %s at %s (record %llu, the report's own)\n", operator_label(v, own_export->op), when,
            (unsigned long long)own_export->seq);
    } else {
        say(v, "exported by (not recorded: the Guardian did not record its exports when it made this report)\n");
    }
    free(by_op);
    free(total);
    free(order);
    free(by_gd);
    free(total_gd);
}

/* What parse() and the checks allocated. */
static void vctx_free(struct vctx *v)
{
    X509_STORE_free(v->root_store);
    X509_free(v->guardian);
    X509_free(v->signing);
    free(v->recs);
    free(v->certs);
    free(v->tmpls);
    free(v->products);
    for (size_t i = 0; v->pkgs != NULL && i < v->n_pkgs; i++) {
        GUARDIAN_CERT_TEMPLATE_free(v->pkgs[i].tmpl);
        free(v->pkgs[i].subject);
    }
    free(v->pkgs);
    free(v->serials);
    free(v->ops);
    free(v->gds);
}

/* The trail is append-only and each hash covers every record before it, so
 * this report extends an earlier one iff it holds the earlier head's record
 * with the same hash.  A Guardian whose database was rewritten (records
 * recomputed from an altered one, or a tail cut and the head moved back)
 * cannot produce that, even though it can sign the rewritten trail. */
static void check_previous(struct vctx *v)
{
    struct report_inputs quiet = *v->in;
    struct vctx old;
    const struct rrec *same = NULL;

    quiet.out = NULL;
    quiet.previous = NULL;
    memset(&old, 0, sizeof(old));
    old.in = &quiet;
    if (!parse(&old, v->in->previous, v->in->previous_len)) {
        problem(v, "the previous report %s does not parse (line %lu)", v->in->previous_name ? v->in->previous_name : "",
                old.line);
        goto out;
    }
    /* Across the upgrade that split off the signing key the Guardian
     * certificate was issued again for the same agreement key: an earlier
     * report naming the earlier certificate of that key is this Guardian's. */
    if (quiet.guardian != NULL && X509_cmp(old.guardian, quiet.guardian) != 0 &&
        EVP_PKEY_eq(X509_get0_pubkey(old.guardian), X509_get0_pubkey(quiet.guardian)) == 1) {
        quiet.guardian = old.guardian;
        quiet.guardian_signing = NULL;
        say(v, "previous   %s names the Guardian's earlier certificate for the same key (issued again when its "
               "signing key was split off)\n",
            v->in->previous_name ? v->in->previous_name : "-");
    }
    check_signature(&old, v->in->previous);
    if (old.problems != 0) {
        problem(v, "the previous report %s is not signed by this Guardian", v->in->previous_name ? v->in->previous_name : "");
        goto out;
    }
    for (size_t i = 0; i < v->n_recs; i++)
        if (v->recs[i].seq == old.head_seq)
            same = &v->recs[i];
    if (old.head_seq > v->head_seq)
        problem(v, "this report ends at record %llu, before the previous report's head (record %llu): records were "
                   "removed from the trail",
                (unsigned long long)v->head_seq, (unsigned long long)old.head_seq);
    else if (old.head_seq != 0 && (same == NULL || memcmp(same->hash, old.head_hash, GUARDIAN_HASH_LEN) != 0))
        problem(v, "this report does not extend the previous one: record %llu differs from the one the previous "
                   "report signed (the trail was rewritten)",
                (unsigned long long)old.head_seq);
    else
        say(v, "previous   %s: head record %llu found unchanged: this report extends it\n",
            v->in->previous_name ? v->in->previous_name : "-", (unsigned long long)old.head_seq);
out:
    vctx_free(&old);
}

unsigned long report_verify(const uint8_t *data, size_t len, const struct report_inputs *in)
{
    struct vctx v;
    char fpr[65], when[32];

    memset(&v, 0, sizeof(v));
    v.in = in;
    if (parse(&v, data, len)) {
        char *subject = X509_NAME_oneline(X509_get_subject_name(v.guardian), NULL, 0);
        iso8601(v.exported, when);
        fingerprint_hex(v.guardian, fpr);
        say(&v, "report     %s: %zu records (head %llu), %zu redacted, %zu certificates, exported %s, scope %s%s%s\n",
            in->name ? in->name : "-", v.n_recs, (unsigned long long)v.head_seq, v.n_redacted, v.n_certs, when,
            v.scoped ? v.scope_oem : "all", v.scoped ? "/" : "", v.scoped ? v.scope_product : "");
        say(&v, "guardian   %s sha256:%s\n", subject ? subject : "?", fpr);
        OPENSSL_free(subject);
        check_signature(&v, data);
        if (in->root != NULL && input_chain(in, 0) != NULL) {
            v.root_store = X509_STORE_new();
            if (v.root_store != NULL) {
                X509_STORE_add_cert(v.root_store, in->root);
                for (size_t i = 0; i < in->n_more_roots; i++)
                    X509_STORE_add_cert(v.root_store, in->more_roots[i]);
                /* Device certificates outlive nothing here: the question is
                 * whether they were issued under the chain, not today. */
                X509_STORE_set_flags(v.root_store, X509_V_FLAG_NO_CHECK_TIME);
                for (size_t i = 0; i <= in->n_more_chains; i++) {
                    STACK_OF(X509) *c = input_chain(in, i);
                    X509_STORE_CTX *sc = c != NULL ? X509_STORE_CTX_new() : NULL;
                    char *name = NULL;
                    if (c == NULL)
                        continue;
                    if (sc == NULL || X509_STORE_CTX_init(sc, v.root_store, sk_X509_value(c, 0), c) != 1 ||
                        X509_verify_cert(sc) != 1) {
                        name = X509_NAME_oneline(X509_get_subject_name(sk_X509_value(c, 0)), NULL, 0);
                        problem(&v, "the production CA %s does not chain to %s: %s", name ? name : "?",
                                in->n_more_roots ? "any OEM root given" : "the OEM root",
                                sc ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc)) : "out of memory");
                        OPENSSL_free(name);
                    }
                    X509_STORE_CTX_free(sc);
                }
            }
        }
        check_chain(&v);
        check_own_export(&v);
        check_clock(&v);
        if (in->previous != NULL)
            check_previous(&v);
        check_accounting(&v);
        check_products(&v);
        check_oem_inputs(&v);
        summary(&v);
        check_devices(&v);
    }
    if (v.problems > REPORT_PROBLEMS_SHOWN)
        say(&v, "(%lu more problems not shown)\n", v.problems - REPORT_PROBLEMS_SHOWN);
    if (v.problems == 0)
        say(&v, "OK\n");
    else
        say(&v, "FAILED: %lu problem%s\n", v.problems, v.problems == 1 ? "" : "s");
    vctx_free(&v);
    ERR_clear_error();
    return v.problems;
}
