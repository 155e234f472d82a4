/*
 * fuzz_journal.c — libFuzzer target for the issue journal's record parser
 * (guardian_journal_parse, store/journal.c): the bytes of a journal file in a
 * state directory that the centre's operator may be able to write.  The input
 * is read as a journal is folded: record after record until one does not
 * parse.  Every record that parses must encode back to exactly its bytes (a
 * GDJ1 record without an operator, a GDJ2 record with one), and must lie
 * within the input (ASan checks every read).  The certificate outline reader
 * of the device index (guardian_journal_cert_spki) runs on the whole input
 * and on each record's certificate: its key must lie within what it read.
 */
#include <stdint.h>
#include <string.h>

#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The SubjectPublicKeyInfo found, if any, lies within cert[0..len). */
static void check_spki(const uint8_t *cert, size_t len)
{
    const uint8_t *spki = NULL;
    size_t spki_len = 0;

    if (guardian_journal_cert_spki(cert, len, &spki, &spki_len)) {
        if (spki < cert || spki_len < 2 || spki_len > len || spki + spki_len > cert + len || spki[0] != 0x30)
            __builtin_trap();
    } else if (spki != NULL || spki_len != 0) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t again[GUARDIAN_JOURNAL_RECORD_MAX];
    size_t off = 0;

    check_spki(data, size);

    while (off < size) {
        struct guardian_journal_record r;
        size_t used = 0, len;
        enum guardian_journal_parse pr = guardian_journal_parse(data + off, size - off, &r, &used);

        if (pr != GUARDIAN_JOURNAL_OK) {
            if (used != 0 || r.cert != NULL || r.device_id != NULL)
                __builtin_trap(); /* a refused record leaves nothing behind */
            break;
        }
        if (used == 0 || used > size - off || r.device_id < data + off || r.cert + r.cert_len > data + off + used)
            __builtin_trap();
        len = guardian_journal_encode(again, sizeof(again), r.oem_id, r.product_id, r.serial, r.time, r.device_id,
                                      r.device_id_len, r.cert, r.cert_len, r.operator_name,
                                      r.has_guardian ? r.guardian : NULL);
        if (len != used || memcmp(again, data + off, used) != 0)
            __builtin_trap(); /* one record, one encoding */
        check_spki(r.cert, r.cert_len);
        off += used;
    }
    return 0;
}
