/*
 * report_write.c — the audit report's lines, written (report_write.h).  The
 * format and why it has this shape: docs/audit-report.md.
 */
#include "report_write.h"

#include <stdio.h>
#include <string.h>

const char *const report_type_names[REPORT_TYPE_MAX + 1] = {
    NULL,      "IMPORT",  "RESERVE", "ISSUE",  "RELEASE", "JOURNAL-LOST", "CREDENTIAL", "EXPORT",
    "OUTCOME", "REISSUE", "RETIRE",  "ENROL",        "JOIN"};
const char report_base64_alphabet[65] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *report_hex(char *p, const uint8_t *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        *p++ = digits[b[i] >> 4];
        *p++ = digits[b[i] & 15];
    }
    *p = '\0';
    return p;
}

int report_id_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-' || c == ':';
}

/* An ID, percent-encoded: bytes outside [A-Za-z0-9._:-] as %XX (upper case).
 * `out` holds 3 * 64 + 1 bytes.  0 if the ID is empty or longer than 64. */
static size_t put_id(char *out, const char *id)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t n = strnlen(id, GUARDIAN_ID_MAX + 1);
    char *p = out;
    if (n == 0 || n > GUARDIAN_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (report_id_char(c)) {
            *p++ = (char)c;
        } else {
            *p++ = '%';
            *p++ = digits[c >> 4];
            *p++ = digits[c & 15];
        }
    }
    *p = '\0';
    return (size_t)(p - out);
}

/* snprintf's result as a line length: 0 when it did not fit. */
static size_t fitted(int n, size_t cap)
{
    return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

size_t report_base64(const uint8_t *in, size_t len, char *out, size_t cap)
{
    const char *a = report_base64_alphabet;
    size_t need = (len + 2) / 3 * 4, o = 0;
    if (cap < need + 1)
        return 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = i + 1 < len ? a[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? a[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

size_t report_format_scope(const char *oem_id, const char *product_id, char *out, size_t cap)
{
    char oem[3 * GUARDIAN_ID_MAX + 1], product[3 * GUARDIAN_ID_MAX + 1];
    if (put_id(oem, oem_id) == 0 || put_id(product, product_id) == 0)
        return 0;
    return fitted(snprintf(out, cap, "%s/%s", oem, product), cap);
}

size_t report_format_header(int64_t exported, const char *oem_id, const char *product_id, uint64_t head_seq,
                            const uint8_t head_hash[GUARDIAN_HASH_LEN], char *out, size_t cap)
{
    char scope[2 * 3 * GUARDIAN_ID_MAX + 2], head[2 * GUARDIAN_HASH_LEN + 1];
    if (oem_id == NULL)
        strcpy(scope, "all");
    else if (report_format_scope(oem_id, product_id, scope, sizeof(scope)) == 0)
        return 0;
    report_hex(head, head_hash, GUARDIAN_HASH_LEN);
    return fitted(snprintf(out, cap, REPORT_MAGIC "\nexported %lld\nscope %s\nhead %llu %s\n", (long long)exported,
                           scope, (unsigned long long)head_seq, head),
                  cap);
}

/* An EXPORT record's scope ID: put_id, except that the ID "-" is written
 * "%2D", since "-" there is no ID (the whole trail). */
static size_t put_scope_id(char *out, const char *id)
{
    if (strcmp(id, "-") == 0) {
        strcpy(out, "%2D");
        return 3;
    }
    return put_id(out, id);
}

size_t report_format_record(const struct guardian_audit_record *r, char *out, size_t cap)
{
    char oem[3 * GUARDIAN_ID_MAX + 1], product[3 * GUARDIAN_ID_MAX + 1], op[GUARDIAN_OPERATOR_MAX + 2];
    char dev[2 * GUARDIAN_DEVICE_ID_MAX + 1], digest[65], pkg[33], prev[65], hash[65], guardian[2 * GUARDIAN_HASH_LEN + 2];
    const int credential = r->type == GUARDIAN_AUDIT_CREDENTIAL || r->type == GUARDIAN_AUDIT_ENROL, export = r->type == GUARDIAN_AUDIT_EXPORT;

    if (r->type < GUARDIAN_AUDIT_IMPORT || r->type > REPORT_TYPE_MAX || r->device_id_len > GUARDIAN_DEVICE_ID_MAX ||
        r->encoding < GUARDIAN_AUDIT_ENCODING_1 || r->encoding > GUARDIAN_AUDIT_ENCODING_3 ||
        !guardian_operator_name_ok(r->operator_name) ||
        (r->guardian_len != 0 && (r->guardian_len != GUARDIAN_HASH_LEN || r->encoding != GUARDIAN_AUDIT_ENCODING_3)))
        return 0;
    /* Encoding 1 has no operator and knows no CREDENTIAL or EXPORT record
     * (the encoding refuses both: the line would show what no hash covers). */
    if (r->encoding == GUARDIAN_AUDIT_ENCODING_1 &&
        (credential || export || r->type > GUARDIAN_AUDIT_JOURNAL_LOST || r->operator_name[0] != '\0'))
        return 0;
    /* A CREDENTIAL record is no product's, nor is the EXPORT record of the
     * whole trail: "-" is not an ID there (an ID "-" of another record type
     * is written "-" too, but is never empty; in an EXPORT record, "%2D"). */
    if ((credential || export) && r->oem_id[0] == '\0' && r->product_id[0] == '\0') {
        strcpy(oem, "-");
        strcpy(product, "-");
    } else if (credential) {
        return 0;
    } else if (export ? put_scope_id(oem, r->oem_id) == 0 || put_scope_id(product, r->product_id) == 0
                      : put_id(oem, r->oem_id) == 0 || put_id(product, r->product_id) == 0) {
        return 0;
    }
    /* Names are [a-z0-9][a-z0-9._-]*: "-" is none of them. */
    snprintf(op, sizeof(op), "%s ", r->operator_name[0] != '\0' ? r->operator_name : "-");
    /* Encoding 3: the Guardian, 64 hex digits, or "-" for none. */
    if (r->guardian_len == 0) {
        strcpy(guardian, "- ");
    } else {
        report_hex(guardian, r->guardian, GUARDIAN_HASH_LEN);
        strcat(guardian, " ");
    }
    if (r->device_id_len == 0)
        strcpy(dev, "-");
    else
        report_hex(dev, r->device_id, r->device_id_len);
    report_hex(digest, r->digest, sizeof(r->digest));
    report_hex(pkg, r->package_id, sizeof(r->package_id));
    report_hex(prev, r->prev_hash, sizeof(r->prev_hash));
    report_hex(hash, r->hash, sizeof(r->hash));
    return fitted(snprintf(out, cap, "record %llu %s %lld %s %s %llu %s %s %s %u %llu %s%s%s %s\n",
                           (unsigned long long)r->seq, report_type_names[r->type], (long long)r->time, oem, product,
                           (unsigned long long)r->serial, dev, digest, pkg, r->release_version,
                           (unsigned long long)r->authorised_units,
                           r->encoding >= GUARDIAN_AUDIT_ENCODING_2 ? op : "",
                           r->encoding == GUARDIAN_AUDIT_ENCODING_3 ? guardian : "", prev, hash),
                  cap);
}

size_t report_format_redacted(const struct guardian_audit_record *r, char *out, size_t cap)
{
    char prev[65], hash[65];
    report_hex(prev, r->prev_hash, sizeof(r->prev_hash));
    report_hex(hash, r->hash, sizeof(r->hash));
    return fitted(snprintf(out, cap, "redacted %llu %s %s\n", (unsigned long long)r->seq, prev, hash), cap);
}

size_t report_format_product(const struct guardian_product *p, char *out, size_t cap)
{
    char oem[3 * GUARDIAN_ID_MAX + 1], product[3 * GUARDIAN_ID_MAX + 1], pkg[33];
    if (put_id(oem, p->oem_id) == 0 || put_id(product, p->product_id) == 0)
        return 0;
    report_hex(pkg, p->package_id, sizeof(p->package_id));
    return fitted(snprintf(out, cap, "product %s %s %u %s %llu %llu %llu\n", oem, product, p->release_version, pkg,
                           (unsigned long long)p->authorised_units, (unsigned long long)p->issued_units,
                           (unsigned long long)p->next_serial),
                  cap);
}

/* "WORD [SEQ ]BASE64\n": the two base64 lines. */
static size_t base64_line(const char *word, const uint64_t *seq, const uint8_t *b, size_t len, char *out, size_t cap)
{
    int n = seq ? snprintf(out, cap, "%s %llu ", word, (unsigned long long)*seq) : snprintf(out, cap, "%s ", word);
    size_t o = fitted(n, cap), t;
    if (o == 0 || len == 0 || (t = report_base64(b, len, out + o, cap - o)) == 0 || o + t + 2 > cap)
        return 0;
    out[o + t] = '\n';
    out[o + t + 1] = '\0';
    return o + t + 1;
}

size_t report_format_certificate(uint64_t seq, const uint8_t *der, size_t der_len, char *out, size_t cap)
{
    return base64_line("certificate", &seq, der, der_len, out, cap);
}

size_t report_format_template(uint64_t seq, const uint8_t *der, size_t der_len, char *out, size_t cap)
{
    return base64_line("template", &seq, der, der_len, out, cap);
}

size_t report_format_signature(const uint8_t *sig, size_t sig_len, char *out, size_t cap)
{
    return base64_line("signature", NULL, sig, sig_len, out, cap);
}
