/*
 * device_batch.c — CKA_GUARDIAN_DEVICE_BATCH's framing (device_batch.h).
 *
 * Every number is big-endian and of a fixed width, the format included,
 * although CKA_GUARDIAN_DEVICE_ID_FORMAT is a CK_ULONG: a CK_ULONG attribute
 * crosses p11-kit's RPC converted to the receiver's own size and byte order,
 * but a byte string crosses as it is, so a CK_ULONG inside one would arrive
 * in the sender's layout (8 bytes little-endian from an x86-64 client, 4 from
 * a 32-bit one).  A fixed layout reads the same on every side.
 */
#include <string.h>

#include "device_batch.h"

static uint32_t be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int guardian_device_batch_parse(const uint8_t *buf, size_t len, struct guardian_batch_entry out[GUARDIAN_DEVICE_BATCH_MAX],
                                size_t *n, const char **why)
{
    size_t pos = 0, count = 0;

    *n = 0;
    if (buf == NULL || len == 0) {
        *why = "it holds no entry (a batch has 1..64)";
        return -1;
    }
    while (pos < len) {
        struct guardian_batch_entry e;
        if (count == GUARDIAN_DEVICE_BATCH_MAX) {
            *why = "it holds more than 64 entries";
            return -1;
        }
        if (len - pos < 6) {
            *why = "an entry's header (format, ID length) is cut short";
            return -1;
        }
        e.format = be32(buf + pos);
        e.id_len = be16(buf + pos + 4);
        pos += 6;
        if (len - pos < e.id_len) {
            *why = "an entry's device ID is cut short";
            return -1;
        }
        e.id = buf + pos;
        pos += e.id_len;
        if (len - pos < 2) {
            *why = "an entry's key length is cut short";
            return -1;
        }
        e.spki_len = be16(buf + pos);
        pos += 2;
        if (len - pos < e.spki_len) {
            *why = "an entry's public key is cut short";
            return -1;
        }
        e.spki = buf + pos;
        pos += e.spki_len;
        out[count++] = e;
    }
    *n = count;
    return 0;
}

int guardian_device_batch_put_result(uint8_t *out, size_t cap, size_t *used, uint32_t status, const uint8_t *der,
                                     size_t der_len)
{
    uint8_t *p;

    if (*used > cap || cap - *used < GUARDIAN_DEVICE_BATCH_RESULT_HEADER || der_len > UINT32_MAX ||
        cap - *used - GUARDIAN_DEVICE_BATCH_RESULT_HEADER < der_len || (der_len > 0 && der == NULL))
        return -1;
    p = out + *used;
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(status >> (24 - 8 * i));
        p[4 + i] = (uint8_t)((uint32_t)der_len >> (24 - 8 * i));
    }
    if (der_len > 0)
        memcpy(p + GUARDIAN_DEVICE_BATCH_RESULT_HEADER, der, der_len);
    *used += GUARDIAN_DEVICE_BATCH_RESULT_HEADER + der_len;
    return 0;
}
