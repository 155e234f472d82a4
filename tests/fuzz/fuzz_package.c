/*
 * fuzz_package.c — libFuzzer target for the package content decoder
 * (guardian_package_decode): the bytes a Guardian parses from an untrusted
 * package once its CMS signature checked out, and the OEM's inspect path.
 */
#include <stdint.h>
#include <string.h>

#include "package.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct guardian_package pkg;
    char err[256] = "";
    uint8_t ctx[32];

    if (guardian_package_decode(data, size, &pkg, err, sizeof(err))) {
        /* Accepted: the plain view is consistent and usable. */
        if (pkg.asn1 == NULL || pkg.oem_id[0] == '\0' || pkg.product_id[0] == '\0' || pkg.scheme == 0 ||
            pkg.authorised_units == 0 || !guardian_package_kek_context(&pkg, ctx))
            __builtin_trap();
        guardian_package_free(&pkg);
    } else if (err[0] == '\0' || pkg.asn1 != NULL) {
        __builtin_trap(); /* every refusal says why and leaves nothing behind */
    }
    return 0;
}
