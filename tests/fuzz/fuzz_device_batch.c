/*
 * fuzz_device_batch.c — libFuzzer target for CKA_GUARDIAN_DEVICE_BATCH, the
 * devices of a CKG_GUARDIAN_REQ_DEVICE_CERTS request (guardian_device_batch_parse):
 * the input is the attribute's value.  Besides not crashing, an accepted
 * input must be 1..64 entries that lie inside the buffer, one after the
 * other, and fill it exactly; and the result records written for them must
 * read back as written.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "device_batch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct guardian_batch_entry e[GUARDIAN_DEVICE_BATCH_MAX];
    const char *why = NULL;
    size_t n = 99, pos = 0, used = 0, cap;
    uint8_t *out;

    if (guardian_device_batch_parse(data, size, e, &n, &why) != 0) {
        if (why == NULL || n != 0)
            abort();
        return 0;
    }
    if (n < 1 || n > GUARDIAN_DEVICE_BATCH_MAX)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (e[i].id != data + pos + 6 || e[i].spki != e[i].id + e[i].id_len + 2 || e[i].id_len > 0xFFFF ||
            e[i].spki_len > 0xFFFF)
            abort();
        if (((uint32_t)data[pos] << 24 | (uint32_t)data[pos + 1] << 16 | (uint32_t)data[pos + 2] << 8 |
             data[pos + 3]) != e[i].format)
            abort();
        pos += 8 + e[i].id_len + e[i].spki_len;
        if (pos > size)
            abort();
    }
    if (pos != size)
        abort();

    /* The result: each entry's key bytes as its "certificate". */
    cap = n * GUARDIAN_DEVICE_BATCH_RESULT_HEADER + size;
    out = malloc(cap);
    if (out == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (guardian_device_batch_put_result(out, cap, &used, e[i].format, e[i].spki, e[i].spki_len) != 0)
            abort();
    if (guardian_device_batch_put_result(out, used, &used, 0, NULL, 0) == 0) /* no room left for a header */
        abort();
    pos = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = (uint32_t)out[pos + 4] << 24 | (uint32_t)out[pos + 5] << 16 | (uint32_t)out[pos + 6] << 8 |
                       out[pos + 7];
        if (len != e[i].spki_len || (len > 0 && memcmp(out + pos + 8, e[i].spki, len) != 0))
            abort();
        pos += 8 + len;
    }
    if (pos != used)
        abort();
    free(out);
    return 0;
}
