/*
 * journal.c — the issue journal's record codec (journal.h says what and why).
 *
 * The parser reads a file that the centre's operator may have written: it
 * checks every length against the bytes that are left before it reads a
 * field, so a record shorter than its fixed part, or one whose fields claim
 * more than its body holds, is refused without reading past it.  The hash
 * proves only that a record was not cut or garbled by accident: anyone can
 * compute SHA-256, so a valid record still goes through the store's own
 * checks (a reserved serial, not yet issued) when it is folded.
 */
#include "journal.h"

#include <stdbool.h>
#include <string.h>

#include <openssl/evp.h>

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint64_t get_be(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

static bool id_in_range(const char *id)
{
    size_t n = id != NULL ? strnlen(id, GUARDIAN_ID_MAX + 1) : 0;
    return n >= 1 && n <= GUARDIAN_ID_MAX;
}

size_t guardian_journal_encode(uint8_t *buf, size_t cap, const char *oem_id, const char *product_id,
                               uint64_t serial, int64_t t, const uint8_t *device_id, size_t device_id_len,
                               const uint8_t *cert, size_t cert_len, const char *operator_name,
                               const uint8_t *guardian)
{
    uint8_t *p;
    size_t ol, pl, opl, body;
    unsigned int hl = 0;

    if (operator_name == NULL)
        operator_name = "";
    if (buf == NULL || !id_in_range(oem_id) || !id_in_range(product_id) || serial == 0 || serial > INT64_MAX ||
        device_id == NULL || device_id_len == 0 || device_id_len > GUARDIAN_DEVICE_ID_MAX || cert == NULL ||
        cert_len == 0 || cert_len > GUARDIAN_CERT_MAX || !guardian_operator_name_ok(operator_name))
        return 0;
    ol = strlen(oem_id);
    pl = strlen(product_id);
    opl = strlen(operator_name);
    body = GUARDIAN_JOURNAL_BODY_FIXED + ol + pl + device_id_len + cert_len +
           (guardian != NULL ? 1 + opl + GUARDIAN_HASH_LEN : opl > 0 ? 1 + opl : 0);
    if (cap < GUARDIAN_JOURNAL_HEADER + body + GUARDIAN_HASH_LEN)
        return 0;

    memcpy(buf, guardian != NULL ? GUARDIAN_JOURNAL_MAGIC_3 : opl > 0 ? GUARDIAN_JOURNAL_MAGIC_2 : GUARDIAN_JOURNAL_MAGIC,
           4);
    p = put_be(buf + 4, body, 4);
    p = put_be(p, serial, 8);
    p = put_be(p, (uint64_t)t, 8);
    *p++ = (uint8_t)ol;
    memcpy(p, oem_id, ol), p += ol;
    *p++ = (uint8_t)pl;
    memcpy(p, product_id, pl), p += pl;
    *p++ = (uint8_t)device_id_len;
    memcpy(p, device_id, device_id_len), p += device_id_len;
    p = put_be(p, cert_len, 2);
    memcpy(p, cert, cert_len), p += cert_len;
    if (opl > 0 || guardian != NULL) {
        *p++ = (uint8_t)opl;
        if (opl > 0)
            memcpy(p, operator_name, opl), p += opl;
    }
    if (guardian != NULL)
        memcpy(p, guardian, GUARDIAN_HASH_LEN), p += GUARDIAN_HASH_LEN;
    if (EVP_Digest(buf + GUARDIAN_JOURNAL_HEADER, body, p, &hl, EVP_sha256(), NULL) != 1 || hl != GUARDIAN_HASH_LEN)
        return 0;
    return GUARDIAN_JOURNAL_HEADER + body + GUARDIAN_HASH_LEN;
}

/* One length-prefixed field: a `len_bytes`-byte length (1..max), then that
 * many bytes, all before `end`.  Advances *p; false if anything overruns. */
static bool take_field(const uint8_t **p, const uint8_t *end, int len_bytes, size_t max, const uint8_t **v,
                       size_t *len)
{
    if (*p > end || (size_t)(end - *p) < (size_t)len_bytes)
        return false;
    *len = (size_t)get_be(*p, len_bytes);
    *p += len_bytes;
    if (*len == 0 || *len > max || (size_t)(end - *p) < *len)
        return false;
    *v = *p;
    *p += *len;
    return true;
}

/* A u8-length text field of 1..max bytes, no NUL inside, into out[max + 1]. */
static bool take_text(const uint8_t **p, const uint8_t *end, size_t max, char *out)
{
    const uint8_t *v = NULL;
    size_t n = 0;

    if (!take_field(p, end, 1, max, &v, &n) || memchr(v, '\0', n) != NULL)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

static bool take_id(const uint8_t **p, const uint8_t *end, char out[GUARDIAN_ID_MAX + 1])
{
    return take_text(p, end, GUARDIAN_ID_MAX, out);
}

/* GDJ3's tail: a u8-length operator of 0..32 bytes (guardian_operator_name_ok),
 * then the 32-byte Guardian. */
static bool take_operator_and_guardian(const uint8_t **p, const uint8_t *end, struct guardian_journal_record *r)
{
    size_t n;

    if (*p >= end)
        return false;
    n = **p;
    if (n == 0)
        *p += 1; /* no operator: r->operator_name stays "" */
    else if (!take_text(p, end, GUARDIAN_OPERATOR_MAX, r->operator_name))
        return false;
    if (!guardian_operator_name_ok(r->operator_name) || (size_t)(end - *p) < GUARDIAN_HASH_LEN)
        return false;
    memcpy(r->guardian, *p, GUARDIAN_HASH_LEN);
    r->has_guardian = true;
    *p += GUARDIAN_HASH_LEN;
    return true;
}

enum guardian_journal_parse guardian_journal_parse(const uint8_t *buf, size_t len, struct guardian_journal_record *r,
                                                   size_t *used)
{
    uint8_t hash[GUARDIAN_HASH_LEN];
    const uint8_t *p, *end;
    unsigned int hl = 0;
    int version;
    size_t body, min, max;

    memset(r, 0, sizeof(*r));
    *used = 0;
    if (len < GUARDIAN_JOURNAL_HEADER)
        return len == 0 || memcmp(buf, GUARDIAN_JOURNAL_MAGIC, len < 4 ? len : 4) == 0 ||
                       memcmp(buf, GUARDIAN_JOURNAL_MAGIC_2, len < 4 ? len : 4) == 0 ||
                       memcmp(buf, GUARDIAN_JOURNAL_MAGIC_3, len < 4 ? len : 4) == 0
                   ? GUARDIAN_JOURNAL_SHORT
                   : GUARDIAN_JOURNAL_BAD;
    if (memcmp(buf, GUARDIAN_JOURNAL_MAGIC, 4) == 0)
        version = 1, min = GUARDIAN_JOURNAL_BODY_MIN, max = GUARDIAN_JOURNAL_BODY_1_MAX;
    else if (memcmp(buf, GUARDIAN_JOURNAL_MAGIC_2, 4) == 0)
        version = 2, min = GUARDIAN_JOURNAL_BODY_2_MIN, max = GUARDIAN_JOURNAL_BODY_2_MAX;
    else if (memcmp(buf, GUARDIAN_JOURNAL_MAGIC_3, 4) == 0)
        version = 3, min = GUARDIAN_JOURNAL_BODY_3_MIN, max = GUARDIAN_JOURNAL_BODY_MAX;
    else
        return GUARDIAN_JOURNAL_BAD;
    body = (size_t)get_be(buf + 4, 4);
    /* Before anything else is read: the body must hold its fixed part. */
    if (body < min || body > max)
        return GUARDIAN_JOURNAL_BAD;
    if (len - GUARDIAN_JOURNAL_HEADER < body + GUARDIAN_HASH_LEN)
        return GUARDIAN_JOURNAL_SHORT;
    if (EVP_Digest(buf + GUARDIAN_JOURNAL_HEADER, body, hash, &hl, EVP_sha256(), NULL) != 1 ||
        hl != GUARDIAN_HASH_LEN || memcmp(hash, buf + GUARDIAN_JOURNAL_HEADER + body, GUARDIAN_HASH_LEN) != 0)
        return GUARDIAN_JOURNAL_BAD;

    p = buf + GUARDIAN_JOURNAL_HEADER;
    end = p + body;
    r->serial = get_be(p, 8);
    r->time = (int64_t)get_be(p + 8, 8);
    p += 16;
    if (r->serial == 0 || r->serial > INT64_MAX || !take_id(&p, end, r->oem_id) || !take_id(&p, end, r->product_id) ||
        !take_field(&p, end, 1, GUARDIAN_DEVICE_ID_MAX, &r->device_id, &r->device_id_len) ||
        !take_field(&p, end, 2, GUARDIAN_CERT_MAX, &r->cert, &r->cert_len) ||
        (version == 2 && (!take_text(&p, end, GUARDIAN_OPERATOR_MAX, r->operator_name) ||
                          !guardian_operator_name_ok(r->operator_name))) ||
        (version == 3 && !take_operator_and_guardian(&p, end, r)) || p != end) {
        memset(r, 0, sizeof(*r));
        return GUARDIAN_JOURNAL_BAD;
    }
    *used = GUARDIAN_JOURNAL_HEADER + body + GUARDIAN_HASH_LEN;
    return GUARDIAN_JOURNAL_OK;
}

/* One DER TLV at *p (before end): a one-byte tag, a definite length of at
 * most 4 bytes, all within end.  *tag, the value (*v, *len), the whole TLV
 * (*tlv, *tlv_len); advances *p past it. */
static bool der_take(const uint8_t **p, const uint8_t *end, uint8_t *tag, const uint8_t **v, size_t *len,
                     const uint8_t **tlv, size_t *tlv_len)
{
    const uint8_t *q = *p;
    size_t n;

    if (q >= end || end - q < 2)
        return false;
    *tlv = q;
    *tag = *q++;
    if ((*tag & 0x1f) == 0x1f)
        return false; /* multi-byte tags: none in a certificate's outline */
    n = *q++;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 4 || (size_t)(end - q) < k)
            return false;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = n << 8 | *q++;
    }
    if ((size_t)(end - q) < n)
        return false;
    *v = q;
    *len = n;
    *p = q + n;
    *tlv_len = (size_t)(*p - *tlv);
    return true;
}

int guardian_journal_cert_spki(const uint8_t *cert, size_t cert_len, const uint8_t **spki, size_t *spki_len)
{
    const uint8_t *p = cert, *end, *v, *tlv;
    size_t len, tlv_len;
    uint8_t tag;

    *spki = NULL;
    *spki_len = 0;
    if (cert == NULL || !der_take(&p, cert + cert_len, &tag, &v, &len, &tlv, &tlv_len) || tag != 0x30)
        return 0;
    end = v + len;
    p = v;
    if (!der_take(&p, end, &tag, &v, &len, &tlv, &tlv_len) || tag != 0x30)
        return 0; /* the TBSCertificate */
    end = v + len;
    p = v;
    if (!der_take(&p, end, &tag, &v, &len, &tlv, &tlv_len))
        return 0;
    if (tag == 0xa0 && !der_take(&p, end, &tag, &v, &len, &tlv, &tlv_len))
        return 0; /* after the version: the serial */
    if (tag != 0x02)
        return 0;
    /* signature algorithm, issuer, validity, subject, then the key */
    for (int i = 0; i < 5; i++)
        if (!der_take(&p, end, &tag, &v, &len, &tlv, &tlv_len) || tag != 0x30)
            return 0;
    *spki = tlv;
    *spki_len = tlv_len;
    return 1;
}
