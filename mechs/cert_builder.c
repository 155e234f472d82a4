/*
 * cert_builder.c — the device certificate profile as DER template filling
 * (cert_builder.h says why; docs/certificate-profile.md says what).
 *
 * Two small DER tools: a strict reader (definite, minimal lengths; used on the
 * untrusted device key) and a writer that appends into a caller's buffer and
 * wraps what it wrote in a header afterwards (one memmove of at most a few
 * hundred bytes).  Every write is bounds-checked; an overflow sets `err` and
 * the result is discarded.
 */
#include "cert_builder.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* ---- DER reader ------------------------------------------------------------------ */

struct din {
    const uint8_t *p;
    size_t len;
};

/* The next TLV, which must have tag `tag`; its contents go to *c. */
static bool din_get(struct din *in, uint8_t tag, struct din *c)
{
    size_t n, hdr = 2;

    if (in->len < 2 || in->p[0] != tag)
        return false;
    n = in->p[1];
    if (n == 0x81) {
        if (in->len < 3 || in->p[2] < 0x80)
            return false;
        n = in->p[2];
        hdr = 3;
    } else if (n == 0x82) {
        if (in->len < 4 || in->p[2] == 0)
            return false;
        n = (size_t)in->p[2] << 8 | in->p[3];
        hdr = 4;
    } else if (n >= 0x80) {
        return false; /* indefinite, or longer than this profile allows */
    }
    if (n > in->len - hdr)
        return false;
    c->p = in->p + hdr;
    c->len = n;
    in->p += hdr + n;
    in->len -= hdr + n;
    return true;
}

/* The same, keeping the whole TLV. */
static bool din_get_tlv(struct din *in, uint8_t tag, const uint8_t **tlv, size_t *tlv_len)
{
    const uint8_t *start = in->p;
    struct din c;
    if (!din_get(in, tag, &c))
        return false;
    *tlv = start;
    *tlv_len = (size_t)(in->p - start);
    return true;
}

static bool din_is(const struct din *c, const uint8_t *v, size_t n)
{
    return c->len == n && memcmp(c->p, v, n) == 0;
}

/* A positive INTEGER in minimal form. */
static bool positive_integer(const struct din *c)
{
    if (c->len == 0 || (c->p[0] & 0x80) != 0)
        return false;
    return !(c->len > 1 && c->p[0] == 0 && (c->p[1] & 0x80) == 0);
}

/* ---- DER writer ------------------------------------------------------------------ */

struct dout {
    uint8_t *p;
    size_t len, cap;
    bool err;
};

static void dput(struct dout *d, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (d->err || n > d->cap - d->len) {
        d->err = true;
        return;
    }
    memcpy(d->p + d->len, b, n);
    d->len += n;
}

static size_t header_len(size_t n)
{
    return n < 0x80 ? 2 : n < 0x100 ? 3 : 4;
}

static void dheader(uint8_t *h, uint8_t tag, size_t n)
{
    h[0] = tag;
    if (n < 0x80) {
        h[1] = (uint8_t)n;
    } else if (n < 0x100) {
        h[1] = 0x81;
        h[2] = (uint8_t)n;
    } else {
        h[1] = 0x82;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
    }
}

static void dtlv(struct dout *d, uint8_t tag, const void *b, size_t n)
{
    uint8_t h[4];
    if (n > 0xFFFF) {
        d->err = true;
        return;
    }
    dheader(h, tag, n);
    dput(d, h, header_len(n));
    dput(d, b, n);
}

/* Wrap d->p[start..len) in a header with `tag`. */
static void dwrap(struct dout *d, size_t start, uint8_t tag)
{
    size_t n = d->len - start, h = header_len(n);
    if (d->err || n > 0xFFFF || h > d->cap - d->len) {
        d->err = true;
        return;
    }
    memmove(d->p + start + h, d->p + start, n);
    dheader(d->p + start, tag, n);
    d->len += h;
}

/* An unsigned big-endian magnitude as a DER INTEGER. */
static void dinteger(struct dout *d, const uint8_t *mag, size_t n)
{
    size_t start;
    while (n > 1 && mag[0] == 0) {
        mag++;
        n--;
    }
    start = d->len;
    if (n == 0 || (mag[0] & 0x80) != 0)
        dput(d, "\0", 1);
    dput(d, mag, n);
    dwrap(d, start, 0x02);
}

/* ---- OIDs (DER contents) ------------------------------------------------------------ */

static const uint8_t oid_ec_public_key[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const uint8_t oid_p256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_p384[] = {0x2b, 0x81, 0x04, 0x00, 0x22};
static const uint8_t oid_rsa[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};
static const uint8_t alg_ecdsa_sha256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const uint8_t alg_ecdsa_sha384[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03};
static const uint8_t alg_sha256_rsa[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                         0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00};
static const uint8_t oid_basic_constraints[] = {0x55, 0x1d, 0x13};
static const uint8_t oid_key_usage[] = {0x55, 0x1d, 0x0f};
static const uint8_t oid_ext_key_usage[] = {0x55, 0x1d, 0x25};
static const uint8_t oid_ski[] = {0x55, 0x1d, 0x0e};
static const uint8_t oid_aki[] = {0x55, 0x1d, 0x23};

/* ---- the device key --------------------------------------------------------------- */

static pthread_once_t groups_once = PTHREAD_ONCE_INIT;
static EC_GROUP *group_p256, *group_p384;

static void groups_init(void)
{
    group_p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    group_p384 = EC_GROUP_new_by_curve_name(NID_secp384r1);
}

static int fail_key(const char **why, const char *reason, int code)
{
    if (why != NULL)
        *why = reason;
    return code;
}

static int check_ec(struct guardian_device_key *k, const struct din *params, const char **why)
{
    struct din p = *params, curve;
    const EC_GROUP *g;
    EC_POINT *pt;
    size_t field;
    int ok;

    if (p.len > 0 && p.p[0] == 0x30)
        return fail_key(why, "EC key with explicit curve parameters (named curves only)", GUARDIAN_DEVKEY_UNSUPPORTED);
    if (!din_get(&p, 0x06, &curve) || p.len != 0)
        return fail_key(why, "EC key without a named curve", GUARDIAN_DEVKEY_MALFORMED);
    if (din_is(&curve, oid_p256, sizeof(oid_p256))) {
        k->kind = GUARDIAN_DEVKEY_EC_P256;
        k->bits = 256;
    } else if (din_is(&curve, oid_p384, sizeof(oid_p384))) {
        k->kind = GUARDIAN_DEVKEY_EC_P384;
        k->bits = 384;
    } else {
        return fail_key(why, "EC key on a curve other than P-256 or P-384", GUARDIAN_DEVKEY_UNSUPPORTED);
    }
    field = k->bits / 8;
    if (k->key_len == 1 + field && (k->key[0] == 0x02 || k->key[0] == 0x03))
        return fail_key(why, "compressed EC point (send the uncompressed form)", GUARDIAN_DEVKEY_UNSUPPORTED);
    if (k->key_len != 1 + 2 * field || k->key[0] != 0x04)
        return fail_key(why, "EC point of the wrong length or form", GUARDIAN_DEVKEY_MALFORMED);

    pthread_once(&groups_once, groups_init);
    g = k->kind == GUARDIAN_DEVKEY_EC_P256 ? group_p256 : group_p384;
    if (g == NULL)
        return fail_key(why, "EC groups unavailable", GUARDIAN_DEVKEY_UNSUPPORTED);
    pt = EC_POINT_new(g);
    /* oct2point refuses coordinates >= p and points not on the curve; the
     * curves have cofactor 1, so on the curve is in the group. */
    ok = pt != NULL && EC_POINT_oct2point(g, pt, k->key, k->key_len, NULL) == 1 && !EC_POINT_is_at_infinity(g, pt);
    EC_POINT_free(pt);
    if (!ok) {
        ERR_clear_error();
        return fail_key(why, "EC point is not on the curve", GUARDIAN_DEVKEY_MALFORMED);
    }
    return GUARDIAN_DEVKEY_OK;
}

static int check_rsa(struct guardian_device_key *k, const struct din *params, const char **why)
{
    struct din p = *params, null, seq, body, n, e;
    size_t bits;

    if (!din_get(&p, 0x05, &null) || null.len != 0 || p.len != 0)
        return fail_key(why, "RSA key without NULL parameters", GUARDIAN_DEVKEY_MALFORMED);
    body.p = k->key;
    body.len = k->key_len;
    if (!din_get(&body, 0x30, &seq) || body.len != 0 || !din_get(&seq, 0x02, &n) || !din_get(&seq, 0x02, &e) ||
        seq.len != 0 || !positive_integer(&n) || !positive_integer(&e))
        return fail_key(why, "RSA public key is not a well-formed RSAPublicKey", GUARDIAN_DEVKEY_MALFORMED);
    if (n.p[0] == 0) {
        n.p++;
        n.len--;
    }
    bits = n.len * 8;
    for (uint8_t top = n.p[0]; (top & 0x80) == 0; top = (uint8_t)(top << 1))
        bits--;
    k->kind = GUARDIAN_DEVKEY_RSA;
    k->bits = (unsigned)bits;
    if (bits < 2048 || bits > 4096)
        return fail_key(why, "RSA modulus outside 2048..4096 bits", GUARDIAN_DEVKEY_UNSUPPORTED);
    if ((n.p[n.len - 1] & 1) == 0)
        return fail_key(why, "RSA modulus is even", GUARDIAN_DEVKEY_MALFORMED);
    if ((e.p[e.len - 1] & 1) == 0 || (e.len == 1 && e.p[0] < 3) || e.len > 32)
        return fail_key(why, "RSA exponent is not an odd number from 3 to 2^256", GUARDIAN_DEVKEY_MALFORMED);
    return GUARDIAN_DEVKEY_OK;
}

int guardian_device_key_check(const uint8_t *der, size_t len, struct guardian_device_key *out, const char **why)
{
    struct din in = {der, len}, spki, alg, oid, bits;

    memset(out, 0, sizeof(*out));
    if (der == NULL || len == 0 || len > GUARDIAN_DEVKEY_MAX_DER)
        return fail_key(why, "empty or over 1024 bytes", GUARDIAN_DEVKEY_MALFORMED);
    if (!din_get(&in, 0x30, &spki) || in.len != 0)
        return fail_key(why, "not one DER SEQUENCE", GUARDIAN_DEVKEY_MALFORMED);
    if (!din_get(&spki, 0x30, &alg) || !din_get(&alg, 0x06, &oid) || !din_get(&spki, 0x03, &bits) || spki.len != 0)
        return fail_key(why, "not a SubjectPublicKeyInfo", GUARDIAN_DEVKEY_MALFORMED);
    if (bits.len < 2 || bits.p[0] != 0)
        return fail_key(why, "public key BIT STRING with unused bits", GUARDIAN_DEVKEY_MALFORMED);
    out->spki = der;
    out->spki_len = len;
    out->key = bits.p + 1;
    out->key_len = bits.len - 1;
    if (din_is(&oid, oid_ec_public_key, sizeof(oid_ec_public_key)))
        return check_ec(out, &alg, why);
    if (din_is(&oid, oid_rsa, sizeof(oid_rsa)))
        return check_rsa(out, &alg, why);
    return fail_key(why, "algorithm other than EC or RSA (e.g. Ed25519, RSA-PSS)", GUARDIAN_DEVKEY_UNSUPPORTED);
}

/* ---- the subject pattern --------------------------------------------------------------- */

static const struct {
    const char *name;
    uint8_t oid[3];
    uint8_t tag;
} attribute_types[] = {
    {"CN", {0x55, 0x04, 0x03}, 0x0c}, {"O", {0x55, 0x04, 0x0a}, 0x0c},  {"OU", {0x55, 0x04, 0x0b}, 0x0c},
    {"C", {0x55, 0x04, 0x06}, 0x13},  {"L", {0x55, 0x04, 0x07}, 0x0c},  {"ST", {0x55, 0x04, 0x08}, 0x0c},
    {"serialNumber", {0x55, 0x04, 0x05}, 0x13},
};

static bool isalnum_ascii(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static const char *const variables[] = {"${device_id}", "${oem_id}", "${product_id}"};

/* PrintableString (X.680 41.4): A-Z a-z 0-9 space ' ( ) + , - . / : = ? */
static bool printable_char(uint8_t c)
{
    return isalnum_ascii(c) || (c != '\0' && strchr(" '()+,-./:=?", c) != NULL);
}

/* Writes `msg` to err (when given) and returns 0: the parsers' refusal. */
static int ierr(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return 0;
}

int guardian_subject_pattern_parse(const char *s, size_t len, struct guardian_subject_pattern *out, char *err,
                                   size_t errlen)
{
    struct guardian_subject_pattern p;
    size_t i = 0;

    memset(&p, 0, sizeof(p));
    while (i < len) {
        size_t type_start = i, type_len, value_start, value_len, t;
        while (i < len && s[i] != '=' && s[i] != ',')
            i++;
        if (i == len || s[i] != '=')
            return ierr(err, errlen, "subject pattern: an attribute lacks TYPE=");
        type_len = i - type_start;
        for (t = 0; t < sizeof(attribute_types) / sizeof(attribute_types[0]); t++)
            if (strlen(attribute_types[t].name) == type_len &&
                memcmp(attribute_types[t].name, s + type_start, type_len) == 0)
                break;
        if (t == sizeof(attribute_types) / sizeof(attribute_types[0]))
            return ierr(err, errlen, "subject pattern: unknown attribute type (allowed: CN O OU C L ST serialNumber)");
        value_start = ++i;
        while (i < len && s[i] != ',')
            i++;
        value_len = i - value_start;
        if (i < len)
            i++; /* the comma */
        if (value_len == 0 || value_len > GUARDIAN_SUBJECT_MAX_VALUE)
            return ierr(err, errlen, "subject pattern: a value is empty or longer than 128 bytes");
        for (size_t v = value_start; v < value_start + value_len; v++) {
            unsigned char c = (unsigned char)s[v];
            if (c < 0x20 || c == 0x7f || c == '=' || c == '+' || c == '\\' || c == '"')
                return ierr(err, errlen, "subject pattern: a value holds a character that needs escaping");
            if (c != '$' && attribute_types[t].tag == 0x13 && !printable_char(c)) {
                if (err != NULL && errlen > 0)
                    snprintf(err, errlen,
                             "subject pattern: %s is a PrintableString, which cannot hold '%c' (allowed: A-Z a-z "
                             "0-9 space ' ( ) + , - . / : = ?)",
                             attribute_types[t].name, c);
                return 0;
            }
            if (c == '$') {
                size_t k, rest = value_start + value_len - v;
                for (k = 0; k < sizeof(variables) / sizeof(variables[0]); k++)
                    if (strlen(variables[k]) <= rest && memcmp(s + v, variables[k], strlen(variables[k])) == 0)
                        break;
                if (k == sizeof(variables) / sizeof(variables[0]))
                    return ierr(err, errlen,
                                "subject pattern: unknown variable (allowed: ${device_id} ${oem_id} ${product_id})");
                v += strlen(variables[k]) - 1;
            }
        }
        if (p.n == GUARDIAN_SUBJECT_MAX_RDNS)
            return ierr(err, errlen, "subject pattern: more than 16 attributes");
        memcpy(p.rdn[p.n].oid, attribute_types[t].oid, 3);
        p.rdn[p.n].oid_len = 3;
        p.rdn[p.n].string_tag = attribute_types[t].tag;
        memcpy(p.rdn[p.n].value, s + value_start, value_len);
        p.rdn[p.n].value[value_len] = '\0';
        p.n++;
    }
    if (p.n == 0)
        return ierr(err, errlen, "subject pattern is empty");
    *out = p;
    return 1;
}

static const char *attribute_name(const uint8_t *oid)
{
    for (size_t t = 0; t < sizeof(attribute_types) / sizeof(attribute_types[0]); t++)
        if (memcmp(attribute_types[t].oid, oid, 3) == 0)
            return attribute_types[t].name;
    return "?";
}

size_t guardian_subject_der(const struct guardian_subject_pattern *p, const char *device_text, const char *oem_id,
                            const char *product_id, uint8_t *out, size_t cap, char *err, size_t errlen)
{
    const char *vals[3] = {device_text, oem_id, product_id};
    struct dout d = {out, 0, cap, false};

    for (size_t r = p->n; r-- > 0;) {
        const char *v = p->rdn[r].value;
        size_t set = d.len, seq = d.len, str;
        dtlv(&d, 0x06, p->rdn[r].oid, p->rdn[r].oid_len);
        str = d.len;
        while (*v != '\0') {
            size_t k = 0;
            if (*v == '$')
                for (; k < 3; k++)
                    if (strncmp(v, variables[k], strlen(variables[k])) == 0)
                        break;
            if (*v == '$' && k < 3) {
                dput(&d, vals[k], strlen(vals[k]));
                v += strlen(variables[k]);
            } else {
                dput(&d, v, 1);
                v++;
            }
        }
        /* A PrintableString value (C, serialNumber) is written as it is or
         * not at all: a character it cannot hold is never replaced (A_1 and
         * A-1 would be one subject). */
        if (p->rdn[r].string_tag == 0x13)
            for (size_t c = str; !d.err && c < d.len; c++)
                if (!printable_char(d.p[c])) {
                    if (err != NULL && errlen > 0)
                        snprintf(err, errlen,
                                 "the subject's %s would hold '%c', which a PrintableString cannot (allowed: A-Z "
                                 "a-z 0-9 space ' ( ) + , - . / : = ?)",
                                 attribute_name(p->rdn[r].oid), d.p[c] >= 0x20 && d.p[c] < 0x7f ? d.p[c] : '?');
                    return 0;
                }
        dwrap(&d, str, p->rdn[r].string_tag);
        dwrap(&d, seq, 0x30);
        dwrap(&d, set, 0x31);
    }
    dwrap(&d, 0, 0x30);
    if (d.err) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "the subject does not fit");
        return 0;
    }
    return d.len;
}

int guardian_subject_check(const struct guardian_cert_issuer *is, const char *device_text, char *err, size_t errlen)
{
    uint8_t name[GUARDIAN_CERT_BUF];
    return guardian_subject_der(&is->subject, device_text, is->oem_id, is->product_id, name, sizeof(name), err,
                                errlen) != 0;
}

/* The subject Name: RDNs in DER order (the pattern's reversed). */
static void put_subject(struct dout *d, const struct guardian_cert_issuer *is, const struct guardian_device *dev)
{
    size_t n = 0;
    if (!d->err && d->len <= d->cap)
        n = guardian_subject_der(&is->subject, dev->id_text, is->oem_id, is->product_id, d->p + d->len,
                                 d->cap - d->len, NULL, 0);
    if (n == 0)
        d->err = true;
    else
        d->len += n;
}

/* ---- time ---------------------------------------------------------------------------- */

/* UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5). */
static void put_time(struct dout *d, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char buf[20];
    int n;

    if (gmtime_r(&tt, &tm) == NULL || tm.tm_year + 1900 > 9999) {
        d->err = true;
        return;
    }
    if (tm.tm_year + 1900 < 2050) {
        n = snprintf(buf, sizeof(buf), "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
        dtlv(d, 0x17, buf, (size_t)n);
    } else {
        n = snprintf(buf, sizeof(buf), "%04d%02d%02d%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
        dtlv(d, 0x18, buf, (size_t)n);
    }
}

/* ---- the issuer ------------------------------------------------------------------------- */

/* Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
static void put_extension(struct dout *d, const uint8_t *oid, size_t oid_len, bool critical, const uint8_t *value,
                          size_t value_len)
{
    static const uint8_t yes[] = {0x01, 0x01, 0xff};
    size_t start = d->len;
    dtlv(d, 0x06, oid, oid_len);
    if (critical)
        dput(d, yes, sizeof(yes));
    dtlv(d, 0x04, value, value_len);
    dwrap(d, start, 0x30);
}

int guardian_cert_issuer_init(struct guardian_cert_issuer *is, const uint8_t package_id[GUARDIAN_PKG_ID_LEN],
                              const char *oem_id, const char *product_id, uint32_t release,
                              const uint8_t *tmpl_der, size_t tmpl_len, const uint8_t *ca_der, size_t ca_len,
                              char *err, size_t errlen)
{
    const unsigned char *q;
    GUARDIAN_CERT_TEMPLATE *t = NULL;
    X509 *ca = NULL;
    EVP_PKEY *pub;
    uint8_t ext[1024], tmp[512];
    struct dout d = {ext, 0, sizeof(ext), false};
    unsigned char *ku = NULL, *name = NULL;
    int ku_len = 0, name_len;
    const ASN1_OCTET_STRING *ca_ski;
    uint8_t keyid[SHA_DIGEST_LENGTH];
    const uint8_t *keyid_p;
    size_t keyid_len;
    uint64_t days = 0;
    int ok = 0;

    memset(is, 0, sizeof(*is));
    if (tmpl_der == NULL || ca_der == NULL)
        return ierr(err, errlen, "the package's certificate template or CA certificate was not recorded at import");
    q = tmpl_der;
    t = d2i_GUARDIAN_CERT_TEMPLATE(NULL, &q, (long)tmpl_len);
    if (t == NULL || q != tmpl_der + tmpl_len) {
        ierr(err, errlen, "the recorded certificate template does not parse");
        goto out;
    }
    q = ca_der;
    ca = d2i_X509(NULL, &q, (long)ca_len);
    if (ca == NULL || q != ca_der + ca_len) {
        ierr(err, errlen, "the recorded production CA certificate does not parse");
        goto out;
    }
    memcpy(is->package_id, package_id, GUARDIAN_PKG_ID_LEN);
    snprintf(is->oem_id, sizeof(is->oem_id), "%s", oem_id);
    snprintf(is->product_id, sizeof(is->product_id), "%s", product_id);
    is->release = release;
    if (!guardian_subject_pattern_parse((const char *)ASN1_STRING_get0_data(t->subject),
                                        (size_t)ASN1_STRING_length(t->subject), &is->subject, err, errlen))
        goto out;
    if (!ASN1_INTEGER_get_uint64(&days, t->validity_days) || days < 1 || days > 36500) {
        ierr(err, errlen, "the template's validity is not 1..36500 days");
        goto out;
    }
    is->validity_days = (uint32_t)days;
    {
        /* No extension (0), the OEM's OID, or the legacy default: package.h. */
        int n = guardian_template_device_ext(t, is->device_ext_oid);
        if (n < 0) {
            ierr(err, errlen, "the template's device-identity extension OID is not acceptable");
            goto out;
        }
        is->device_ext_oid_len = (size_t)n;
    }

    /* The CA: signature algorithm from its key, issuer name, key identifier. */
    pub = X509_get0_pubkey(ca);
    if (pub == NULL) {
        ierr(err, errlen, "the production CA certificate's key is not usable");
        goto out;
    }
    if (EVP_PKEY_is_a(pub, "EC")) {
        char curve[32];
        size_t cl = 0;
        if (!EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), &cl)) {
            ierr(err, errlen, "the production CA's EC key names no curve");
            goto out;
        }
        if (strcmp(curve, "prime256v1") == 0) {
            is->ca_kind = GUARDIAN_DEVKEY_EC_P256;
            memcpy(is->sigalg, alg_ecdsa_sha256, sizeof(alg_ecdsa_sha256));
            is->sigalg_len = sizeof(alg_ecdsa_sha256);
            is->md = EVP_sha256();
            is->ca_sig_len = 64;
        } else if (strcmp(curve, "secp384r1") == 0) {
            is->ca_kind = GUARDIAN_DEVKEY_EC_P384;
            memcpy(is->sigalg, alg_ecdsa_sha384, sizeof(alg_ecdsa_sha384));
            is->sigalg_len = sizeof(alg_ecdsa_sha384);
            is->md = EVP_sha384();
            is->ca_sig_len = 96;
        } else {
            ierr(err, errlen, "the production CA's curve is not P-256 or P-384");
            goto out;
        }
        {
            /* The point as a device key carries it: uncompressed, 04 || X ||
             * Y, built from the coordinates.  The certificate may hold it
             * compressed (or hybrid), and what form an encoding call returns
             * is not documented (it follows the key's conversion format in
             * some OpenSSL versions): the is-CA-key test compares points,
             * not encodings. */
            BIGNUM *x = NULL, *y = NULL;
            size_t fl = is->ca_sig_len / 2; /* the field size */
            int got = EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
                      EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 &&
                      1 + 2 * fl <= sizeof(is->ca_key) && BN_bn2binpad(x, is->ca_key + 1, (int)fl) == (int)fl &&
                      BN_bn2binpad(y, is->ca_key + 1 + fl, (int)fl) == (int)fl;
            BN_free(x);
            BN_free(y);
            if (!got) {
                ierr(err, errlen, "the production CA's EC point cannot be read");
                goto out;
            }
            is->ca_key[0] = 0x04;
            is->ca_key_len = 1 + 2 * fl;
        }
    } else if (EVP_PKEY_is_a(pub, "RSA")) {
        /* RSAPublicKey encoded again here, as DER: the same bytes as a
         * (strictly read) device key with the same modulus and exponent,
         * whatever the certificate's encoder did. */
        unsigned char *pk = NULL;
        int bits = EVP_PKEY_get_bits(pub);
        int pk_len = bits >= 2048 && bits <= 8192 ? i2d_PublicKey(pub, &pk) : 0;
        if (pk_len <= 0 || (size_t)pk_len > sizeof(is->ca_key)) {
            OPENSSL_free(pk);
            ierr(err, errlen, "the production CA's RSA key is not 2048..8192 bits");
            goto out;
        }
        is->ca_kind = GUARDIAN_DEVKEY_RSA;
        memcpy(is->sigalg, alg_sha256_rsa, sizeof(alg_sha256_rsa));
        is->sigalg_len = sizeof(alg_sha256_rsa);
        is->md = EVP_sha256();
        is->ca_sig_len = (size_t)(bits + 7) / 8;
        memcpy(is->ca_key, pk, (size_t)pk_len);
        is->ca_key_len = (size_t)pk_len;
        OPENSSL_free(pk);
    } else {
        ierr(err, errlen, "the production CA's key is neither EC nor RSA");
        goto out;
    }
    if (!EVP_PKEY_up_ref(pub))
        goto out;
    is->ca_pub = pub;

    name_len = i2d_X509_NAME(X509_get_subject_name(ca), &name);
    if (name_len <= 0)
        goto out;
    is->issuer_name = (uint8_t *)name;
    is->issuer_name_len = (size_t)name_len;
    name = NULL;

    /* Fixed extensions: basicConstraints (critical, CA:FALSE), keyUsage
     * (critical), extKeyUsage, authorityKeyIdentifier. */
    {
        static const uint8_t empty_seq[] = {0x30, 0x00};
        put_extension(&d, oid_basic_constraints, sizeof(oid_basic_constraints), true, empty_seq, sizeof(empty_seq));
    }
    if (ASN1_STRING_length(t->key_usage) > 0) {
        ku_len = i2d_ASN1_BIT_STRING(t->key_usage, &ku);
        if (ku_len <= 0)
            goto out;
        put_extension(&d, oid_key_usage, sizeof(oid_key_usage), true, ku, (size_t)ku_len);
    }
    if (t->ext_key_usage != NULL && sk_ASN1_OBJECT_num(t->ext_key_usage) > 0) {
        struct dout e = {tmp, 0, sizeof(tmp), false};
        for (int i = 0; i < sk_ASN1_OBJECT_num(t->ext_key_usage); i++) {
            const ASN1_OBJECT *o = sk_ASN1_OBJECT_value(t->ext_key_usage, i);
            dtlv(&e, 0x06, OBJ_get0_data(o), OBJ_length(o));
        }
        dwrap(&e, 0, 0x30);
        if (e.err)
            goto out;
        put_extension(&d, oid_ext_key_usage, sizeof(oid_ext_key_usage), false, tmp, e.len);
    }
    ca_ski = X509_get0_subject_key_id(ca);
    if (ca_ski != NULL && ASN1_STRING_length(ca_ski) > 0) {
        keyid_p = ASN1_STRING_get0_data(ca_ski);
        keyid_len = (size_t)ASN1_STRING_length(ca_ski);
    } else {
        const unsigned char *pk = NULL;
        int pk_len = 0;
        X509_PUBKEY_get0_param(NULL, &pk, &pk_len, NULL, X509_get_X509_PUBKEY(ca));
        SHA1(pk, (size_t)pk_len, keyid);
        keyid_p = keyid;
        keyid_len = sizeof(keyid);
    }
    {
        struct dout e = {tmp, 0, sizeof(tmp), false};
        dtlv(&e, 0x80, keyid_p, keyid_len); /* [0] keyIdentifier */
        dwrap(&e, 0, 0x30);
        if (e.err)
            goto out;
        put_extension(&d, oid_aki, sizeof(oid_aki), false, tmp, e.len);
    }
    if (d.err) {
        ierr(err, errlen, "the template's extensions do not fit");
        goto out;
    }
    is->fixed_ext = OPENSSL_memdup(ext, d.len);
    if (is->fixed_ext == NULL)
        goto out;
    is->fixed_ext_len = d.len;
    ok = 1;
out:
    if (!ok && err != NULL && errlen > 0 && err[0] == '\0')
        ierr(err, errlen, "cannot prepare the certificate profile (out of memory?)");
    if (!ok)
        guardian_cert_issuer_free(is);
    OPENSSL_free(ku);
    OPENSSL_free(name);
    GUARDIAN_CERT_TEMPLATE_free(t);
    X509_free(ca);
    return ok;
}

void guardian_cert_issuer_free(struct guardian_cert_issuer *is)
{
    if (is == NULL)
        return;
    OPENSSL_free(is->issuer_name);
    OPENSSL_free(is->fixed_ext);
    EVP_PKEY_free(is->ca_pub);
    memset(is, 0, sizeof(*is));
}

/* ---- one certificate ------------------------------------------------------------------- */

void guardian_cert_serial(const uint8_t package_id[GUARDIAN_PKG_ID_LEN], uint64_t serial,
                          uint8_t out[GUARDIAN_CERT_SERIAL_LEN])
{
    out[0] = (uint8_t)(0x40 | (package_id[0] & 0x3f));
    memcpy(out + 1, package_id + 1, 7);
    for (int i = 0; i < 8; i++)
        out[8 + i] = (uint8_t)(serial >> (56 - 8 * i));
}

size_t guardian_tbs_build(const struct guardian_cert_issuer *is, uint64_t serial, int64_t now,
                          const struct guardian_device *dev, uint8_t *buf, size_t cap, uint8_t ski_out[20])
{
    static const uint8_t version3[] = {0xa0, 0x03, 0x02, 0x01, 0x02};
    struct dout d = {buf, 0, cap, false};
    uint8_t sn[GUARDIAN_CERT_SERIAL_LEN], ski[2 + SHA_DIGEST_LENGTH], gext[512];
    struct dout g = {gext, 0, sizeof(gext), false};
    size_t start, exts;
    uint8_t rel[4];

    dput(&d, version3, sizeof(version3));
    guardian_cert_serial(is->package_id, serial, sn);
    dtlv(&d, 0x02, sn, sizeof(sn));
    dput(&d, is->sigalg, is->sigalg_len);
    dput(&d, is->issuer_name, is->issuer_name_len);
    start = d.len;
    put_time(&d, now);
    put_time(&d, now + (int64_t)is->validity_days * 86400);
    dwrap(&d, start, 0x30);
    put_subject(&d, is, dev);
    dput(&d, dev->key->spki, dev->key->spki_len);

    /* [3] EXPLICIT Extensions */
    exts = d.len;
    dput(&d, is->fixed_ext, is->fixed_ext_len);
    ski[0] = 0x04;
    ski[1] = SHA_DIGEST_LENGTH;
    SHA1(dev->key->key, dev->key->key_len, ski + 2);
    memcpy(ski_out, ski + 2, SHA_DIGEST_LENGTH);
    put_extension(&d, oid_ski, sizeof(oid_ski), false, ski, sizeof(ski));
    /* GuardianDeviceIdentity ::= SEQUENCE { oemId UTF8String, productId
     * UTF8String, deviceId OCTET STRING, packageId OCTET STRING, release INTEGER },
     * unless the template says there is none (device_ext_oid_len 0). */
    dtlv(&g, 0x0c, is->oem_id, strlen(is->oem_id));
    dtlv(&g, 0x0c, is->product_id, strlen(is->product_id));
    dtlv(&g, 0x04, dev->id, dev->id_len);
    dtlv(&g, 0x04, is->package_id, GUARDIAN_PKG_ID_LEN);
    for (int i = 0; i < 4; i++)
        rel[i] = (uint8_t)(is->release >> (24 - 8 * i));
    dinteger(&g, rel, sizeof(rel));
    dwrap(&g, 0, 0x30);
    if (g.err)
        return 0;
    if (is->device_ext_oid_len > 0)
        put_extension(&d, is->device_ext_oid, is->device_ext_oid_len, false, gext, g.len);
    dwrap(&d, exts, 0x30);
    dwrap(&d, exts, 0xa3);

    dwrap(&d, 0, 0x30);
    return d.err ? 0 : d.len;
}

size_t guardian_cert_finish(const struct guardian_cert_issuer *is, uint8_t *buf, size_t cap, size_t tbs_len,
                            const uint8_t *sig, size_t sig_len)
{
    struct dout d = {buf, tbs_len, cap, false};
    size_t bits;

    if (tbs_len > cap)
        return 0;
    dput(&d, is->sigalg, is->sigalg_len);
    bits = d.len;
    dput(&d, "\0", 1); /* no unused bits */
    if (is->ca_kind == GUARDIAN_DEVKEY_RSA) {
        dput(&d, sig, sig_len);
    } else {
        size_t seq = d.len;
        if (sig_len % 2 != 0 || sig_len == 0)
            return 0;
        dinteger(&d, sig, sig_len / 2);
        dinteger(&d, sig + sig_len / 2, sig_len / 2);
        dwrap(&d, seq, 0x30);
    }
    dwrap(&d, bits, 0x03);
    dwrap(&d, 0, 0x30);
    return d.err ? 0 : d.len;
}

int guardian_cert_slices(const uint8_t *cert, size_t len, struct guardian_cert_slices *out)
{
    struct din in = {cert, len}, c, tbs, skip;

    memset(out, 0, sizeof(*out));
    if (!din_get(&in, 0x30, &c) || !din_get(&c, 0x30, &tbs) || !din_get(&tbs, 0xa0, &skip) ||
        !din_get_tlv(&tbs, 0x02, &out->serial, &out->serial_len) || !din_get(&tbs, 0x30, &skip) ||
        !din_get_tlv(&tbs, 0x30, &out->issuer, &out->issuer_len) || !din_get(&tbs, 0x30, &skip) ||
        !din_get_tlv(&tbs, 0x30, &out->subject, &out->subject_len))
        return 0;
    return 1;
}
