/*
 * fuzz_unwrap_args.c — libFuzzer target for the arguments a caller gives
 * CKM_GUARDIAN_UNWRAP_PACKAGE besides the package: the mechanism parameter and
 * the template (guardian_unwrap_check_arguments).  The input is read as:
 * one byte (bit 0: parameter present; the next byte its length), then
 * attributes of [4-byte type][1-byte length][value], up to 16.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "module.h"
#include "unwrap_package.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_ATTRIBUTE templ[16];
    CK_ULONG count = 0;
    struct guardian_unwrap_usage usage;
    size_t pos = 0;
    CK_RV rv;

    static int quiet;
    if (!quiet) {
        /* Refusals log a line each: keep the fuzzer's output readable. */
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, STDERR_FILENO);
        quiet = 1;
    }
    if (size < 1)
        return 0;
    if (data[pos++] & 1) {
        if (pos >= size)
            return 0;
        mech.ulParameterLen = data[pos++];
        mech.pParameter = (void *)(data + pos);
        if (mech.ulParameterLen > size - pos)
            mech.ulParameterLen = size - pos;
        pos += mech.ulParameterLen;
    }
    while (count < 16 && size - pos >= 5) {
        uint32_t type;
        uint8_t len;
        memcpy(&type, data + pos, 4);
        len = data[pos + 4];
        pos += 5;
        if (len > size - pos)
            len = (uint8_t)(size - pos);
        templ[count].type = type;
        templ[count].pValue = len ? (void *)(data + pos) : NULL;
        templ[count].ulValueLen = len;
        pos += len;
        count++;
    }
    rv = guardian_unwrap_check_arguments(&mech, templ, count, &usage);
    if (rv == CKR_OK) {
        /* Accepted: no parameter, and a template that only narrows. */
        if (mech.pParameter != NULL || mech.ulParameterLen != 0)
            __builtin_trap();
        for (CK_ULONG i = 0; i < count; i++)
            if (templ[i].ulValueLen != sizeof(CK_BBOOL) ||
                (templ[i].type == CKA_EXTRACTABLE && *(const CK_BBOOL *)templ[i].pValue))
                __builtin_trap();
    } else if (rv != CKR_MECHANISM_PARAM_INVALID && rv != CKR_TEMPLATE_INCONSISTENT && rv != CKR_ARGUMENTS_BAD) {
        __builtin_trap();
    }
    return 0;
}
