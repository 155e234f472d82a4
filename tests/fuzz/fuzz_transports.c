/*
 * fuzz_transports.c — libFuzzer target for the id-guardian-transports
 * extension value (guardian_transports_decode): the bytes guardian-wrap reads
 * from a Guardian certificate that came from the programming centre, which
 * the OEM does not trust; and the choice made from what was accepted.
 */
#include <stdint.h>
#include <string.h>

#include "package.h"
#include "transport.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct guardian_transports t;
    char err[600] = "";
    unsigned char *again = NULL;

    if (guardian_transports_decode(data, size, &t, err, sizeof(err))) {
        int kt[GUARDIAN_TRANSPORTS_MAX];
        size_t n = 0;
        int chosen;
        /* Accepted: 1..8 entries, each a readable OID, none twice; the known
         * ones re-encode to the same bytes when they are all known. */
        if (!t.present || t.n < 1 || t.n > GUARDIAN_TRANSPORTS_MAX)
            __builtin_trap();
        for (size_t i = 0; i < t.n; i++) {
            if (t.oid[i][0] == '\0')
                __builtin_trap();
            if (t.kt[i] != 0)
                kt[n++] = t.kt[i];
        }
        if (n == t.n) {
            int len = guardian_transports_encode(kt, n, &again);
            if (len != (int)size || memcmp(again, data, size) != 0)
                __builtin_trap();
        }
        /* The choice is one of the listed schemes, or a refusal that says why. */
        chosen = guardian_transport_choose(&t, 0, 0, err, sizeof(err));
        if (chosen == 0 ? err[0] == '\0' : guardian_transport_name(chosen) == NULL)
            __builtin_trap();
    } else if (err[0] == '\0' || t.n != 0) {
        __builtin_trap(); /* every refusal says why and leaves nothing behind */
    }
    OPENSSL_free(again);
    return 0;
}
