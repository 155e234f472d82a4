/*
 * audit.c — the canonical byte encoding of an audit record and its hash.
 *
 * Self-contained on purpose: no SQLite, no logging, only libcrypto (SHA-256),
 * so that the OEM-side verifier can compile this file unchanged and recompute
 * every hash of an exported trail.  The encoding is specified byte by byte in
 * docs/audit-format.md; change it only together with that page, and then with
 * a new magic, never silently.  There are two, and a record keeps the one it
 * was written with (its `encoding`): "GDAUDIT1" for every record written
 * before schema 4, unchanged so that those trails still verify, "GDAUDIT2",
 * the same fields and the operator, for schema 4 .. 8, and "GDAUDIT3", the
 * operator and the Guardian that wrote it, for every record since.
 */
#include <string.h>

#include <openssl/evp.h>

#include "store.h"

#include "guardian/guardian-pkcs11.h"

static const uint8_t audit_magic_1[8] = {'G', 'D', 'A', 'U', 'D', 'I', 'T', '1'};
static const uint8_t audit_magic_2[8] = {'G', 'D', 'A', 'U', 'D', 'I', 'T', '2'};
static const uint8_t audit_magic_3[8] = {'G', 'D', 'A', 'U', 'D', 'I', 'T', '3'};

/* Largest encoding 1: magic, seq, type, time, 2 x (length + 64), serial,
 * length + 128, digest, package ID, release, units, prev_hash = 396 bytes;
 * encoding 2 adds length + 32 for the operator: 432 bytes; encoding 3 adds
 * length + 32 for the Guardian: 468 bytes. */
#define AUDIT_ENCODING_1_MAX                                                                        \
    (8 + 8 + 4 + 8 + 2 * (4 + GUARDIAN_ID_MAX) + 8 + (4 + GUARDIAN_DEVICE_ID_MAX) + GUARDIAN_HASH_LEN + \
     GUARDIAN_PACKAGE_ID_LEN + 4 + 8 + GUARDIAN_HASH_LEN)
_Static_assert(AUDIT_ENCODING_1_MAX + 4 + GUARDIAN_OPERATOR_MAX + 4 + GUARDIAN_HASH_LEN == GUARDIAN_AUDIT_ENCODING_MAX,
               "GUARDIAN_AUDIT_ENCODING_MAX is the largest encoding 3");

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_bytes(uint8_t *p, const void *src, size_t len)
{
    if (len > 0)
        memcpy(p, src, len);
    return p + len;
}

/* A length-prefixed byte string: u32 length, then the bytes. */
static uint8_t *put_string(uint8_t *p, const void *src, size_t len)
{
    return put_bytes(put_u32(p, (uint32_t)len), src, len);
}

size_t guardian_audit_encode(const struct guardian_audit_record *r, uint8_t *buf, size_t cap)
{
    size_t oem_len, product_len, operator_len, need;
    uint8_t *p;

    if (r == NULL || buf == NULL || r->type < 0)
        return 0;
    if (r->encoding < GUARDIAN_AUDIT_ENCODING_1 || r->encoding > GUARDIAN_AUDIT_ENCODING_3)
        return 0;
    /* A Guardian is named in encoding 3 only, and is one digest or none. */
    if ((r->guardian_len != 0 && r->guardian_len != GUARDIAN_HASH_LEN) ||
        (r->encoding != GUARDIAN_AUDIT_ENCODING_3 && r->guardian_len != 0))
        return 0;
    /* The ID fields are C strings inside fixed arrays: a missing terminator
     * or an over-long ID makes the record unencodable, never truncated. */
    oem_len = strnlen(r->oem_id, sizeof(r->oem_id));
    product_len = strnlen(r->product_id, sizeof(r->product_id));
    if (oem_len > GUARDIAN_ID_MAX || product_len > GUARDIAN_ID_MAX || r->device_id_len > GUARDIAN_DEVICE_ID_MAX)
        return 0;
    if (!guardian_operator_name_ok(r->operator_name))
        return 0;
    operator_len = strlen(r->operator_name);
    /* Encoding 1 has no operator field: a record that names one, or one of a
     * type that did not exist before encoding 2 (CREDENTIAL, EXPORT: each
     * names who did it), would carry a field its hash does not cover. */
    if (r->encoding == GUARDIAN_AUDIT_ENCODING_1 && (operator_len != 0 || r->type > GUARDIAN_AUDIT_JOURNAL_LOST))
        return 0;

    need = sizeof(audit_magic_1) + 8 + 4 + 8 + (4 + oem_len) + (4 + product_len) + 8 + (4 + r->device_id_len) +
           GUARDIAN_HASH_LEN + GUARDIAN_PACKAGE_ID_LEN + 4 + 8 + GUARDIAN_HASH_LEN;
    if (r->encoding >= GUARDIAN_AUDIT_ENCODING_2)
        need += 4 + operator_len;
    if (r->encoding == GUARDIAN_AUDIT_ENCODING_3)
        need += 4 + r->guardian_len;
    if (cap < need)
        return 0;

    p = buf;
    p = put_bytes(p,
                  r->encoding == GUARDIAN_AUDIT_ENCODING_1   ? audit_magic_1
                  : r->encoding == GUARDIAN_AUDIT_ENCODING_2 ? audit_magic_2
                                                             : audit_magic_3,
                  sizeof(audit_magic_1));
    p = put_u64(p, r->seq);
    p = put_u32(p, (uint32_t)r->type);
    p = put_u64(p, (uint64_t)r->time); /* two's complement */
    p = put_string(p, r->oem_id, oem_len);
    p = put_string(p, r->product_id, product_len);
    p = put_u64(p, r->serial);
    p = put_string(p, r->device_id, r->device_id_len);
    p = put_bytes(p, r->digest, GUARDIAN_HASH_LEN);
    p = put_bytes(p, r->package_id, GUARDIAN_PACKAGE_ID_LEN);
    p = put_u32(p, r->release_version);
    p = put_u64(p, r->authorised_units);
    if (r->encoding >= GUARDIAN_AUDIT_ENCODING_2)
        p = put_string(p, r->operator_name, operator_len);
    if (r->encoding == GUARDIAN_AUDIT_ENCODING_3)
        p = put_string(p, r->guardian, r->guardian_len);
    p = put_bytes(p, r->prev_hash, GUARDIAN_HASH_LEN);
    return (size_t)(p - buf);
}

CK_RV guardian_audit_hash(const struct guardian_audit_record *r, uint8_t out[GUARDIAN_HASH_LEN])
{
    CK_RV rv = CKR_GENERAL_ERROR;
    uint8_t buf[GUARDIAN_AUDIT_ENCODING_MAX];
    unsigned int out_len = 0;
    size_t len;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, GUARDIAN_HASH_LEN);
    len = guardian_audit_encode(r, buf, sizeof(buf));
    if (len == 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if (EVP_Digest(buf, len, out, &out_len, EVP_sha256(), NULL) != 1 || out_len != GUARDIAN_HASH_LEN) {
        memset(out, 0, GUARDIAN_HASH_LEN);
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    rv = CKR_OK;
out:
    return rv;
}
