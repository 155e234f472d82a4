/*
 * test_p11.h — the two pieces the backend test tools share (header-only,
 * static: each tool is one file and links nothing of the others).
 *
 *   test_find_slot   the slot whose token has `label` (blank-padded as
 *                    PKCS#11 stores it): mechlist.c, enrol_request.c;
 *   test_shim_load   for a shim module (tpm_like_shim.c, unsealing_shim.c):
 *                    the backend named by an environment variable, opened
 *                    once, and a copy of its function list, sized as a 2.x
 *                    list whatever its version says, for the shim to
 *                    replace entries in.  The caller holds its lock.
 */
#ifndef GUARDIAN_TESTS_BACKENDS_TEST_P11_H
#define GUARDIAN_TESTS_BACKENDS_TEST_P11_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11.h"

static inline CK_RV test_find_slot(CK_FUNCTION_LIST *f, const char *label, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK)
        return rv;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        size_t len = strlen(label);
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || len > sizeof(ti.label))
            continue;
        if (memcmp(ti.label, label, len) == 0 &&
            (len == sizeof(ti.label) || strspn((char *)ti.label + len, " ") == sizeof(ti.label) - len)) {
            *out = slots[i];
            return CKR_OK;
        }
    }
    return CKR_TOKEN_NOT_PRESENT;
}

/* `who`: the shim's name for its error line; `env`: the variable naming the
 * backend's path; *dl: the handle, opened on the first call and kept. */
static inline CK_RV test_shim_load(const char *who, const char *env, void **dl, CK_FUNCTION_LIST *copy)
{
    const char *path = getenv(env);
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_RV rv;

    if (*dl == NULL && (path == NULL || (*dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL)) {
        fprintf(stderr, "%s: %s: %s\n", who, env, path ? dlerror() : "not set");
        return CKR_GENERAL_ERROR;
    }
    get = (CK_C_GetFunctionList)dlsym(*dl, "C_GetFunctionList");
    rv = get == NULL ? CKR_GENERAL_ERROR : get(&fl);
    if (rv == CKR_OK)
        *copy = *fl;
    return rv;
}
#endif /* GUARDIAN_TESTS_BACKENDS_TEST_P11_H */
