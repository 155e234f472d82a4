/*
 * device_batch.h — the encoding of CKA_GUARDIAN_DEVICE_BATCH, the devices of
 * one CKG_GUARDIAN_REQ_DEVICE_CERTS request (docs/vendor-interface.md,
 * "The batch encoding"), and of its result.  Only the framing is read here;
 * each entry's device ID and key are checked by the single request's own
 * checks (derive_device_cert.c).
 *
 * No module, no OpenSSL: the fuzz target links this file alone.
 */
#ifndef GUARDIAN_MECHS_DEVICE_BATCH_H
#define GUARDIAN_MECHS_DEVICE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#define GUARDIAN_DEVICE_BATCH_MAX 64 /* entries in one request */
/* A result record's header: status (4), certificate length (4). */
#define GUARDIAN_DEVICE_BATCH_RESULT_HEADER 8

/* One entry as encoded: pointers into the buffer that was parsed. */
struct guardian_batch_entry {
    uint32_t format; /* CKG_GUARDIAN_DEVICE_ID_* (checked later) */
    const uint8_t *id;
    size_t id_len;
    const uint8_t *spki;
    size_t spki_len;
};

/* Split `buf` (`len` bytes) into its entries: 0 and *n (1..64) entries in
 * out[], or -1 and *why (a static string) when the encoding is not 1..64
 * whole entries filling the buffer exactly (empty, truncated, trailing
 * bytes, more than 64). */
int guardian_device_batch_parse(const uint8_t *buf, size_t len, struct guardian_batch_entry out[GUARDIAN_DEVICE_BATCH_MAX],
                                size_t *n, const char **why);

/* Append one result record (status, certificate length, certificate) at
 * out + *used, `cap` bytes in all: 0, or -1 when it does not fit or
 * der_len needs more than 32 bits. */
int guardian_device_batch_put_result(uint8_t *out, size_t cap, size_t *used, uint32_t status, const uint8_t *der,
                                     size_t der_len);

#endif /* GUARDIAN_MECHS_DEVICE_BATCH_H */
