/*
 * unsealing_shim.c — SoftHSM as the import sees opencryptoki 3.8's
 * C_UnwrapKey: a test module that loads the backend named by
 * UNSEALING_SHIM_MODULE and hands out its 2.x function list, copied, with
 * C_UnwrapKey replaced: the template's CKA_SENSITIVE is passed on as false
 * and its CKA_EXTRACTABLE as true, so the unwrapped key comes out readable,
 * as opencryptoki 3.8 makes it (it drops both; docs/backends/opencryptoki.md).
 * With UNSEALING_SHIM_REFUSE_SET=1, C_SetAttributeValue of CKA_SENSITIVE or
 * CKA_EXTRACTABLE also answers CKR_ATTRIBUTE_READ_ONLY: a backend that keeps
 * the secret readable, which the import must refuse
 * (CKR_GUARDIAN_KEY_NOT_SEALED; tests/backends/test_unsealed.sh).  Every
 * other pointer is SoftHSM's own.  A test tool only: never installed.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_p11.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_ATTRS 32

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *dl;
static CK_FUNCTION_LIST list2;
static CK_C_UnwrapKey backend_unwrap;
static CK_C_SetAttributeValue backend_set;

static CK_RV shim_unwrap(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE with, CK_BYTE_PTR wrapped,
                         CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    CK_ATTRIBUTE copy[MAX_ATTRS];
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

    if (t == NULL || n > MAX_ATTRS)
        return backend_unwrap(s, m, with, wrapped, wrapped_len, t, n, out);
    memcpy(copy, t, n * sizeof(*t));
    for (CK_ULONG i = 0; i < n; i++) {
        if (copy[i].type == CKA_SENSITIVE)
            copy[i].pValue = &no;
        else if (copy[i].type == CKA_EXTRACTABLE)
            copy[i].pValue = &yes;
    }
    return backend_unwrap(s, m, with, wrapped, wrapped_len, copy, n, out);
}

static CK_RV shim_set(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    const char *refuse = getenv("UNSEALING_SHIM_REFUSE_SET");
    for (CK_ULONG i = 0; refuse != NULL && strcmp(refuse, "1") == 0 && t != NULL && i < n; i++)
        if (t[i].type == CKA_SENSITIVE || t[i].type == CKA_EXTRACTABLE)
            return CKR_ATTRIBUTE_READ_ONLY;
    return backend_set(s, h, t, n);
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = test_shim_load("unsealing_shim", "UNSEALING_SHIM_MODULE", &dl, &list2);
    if (rv == CKR_OK) {
        backend_unwrap = list2.C_UnwrapKey;
        backend_set = list2.C_SetAttributeValue;
        list2.C_UnwrapKey = shim_unwrap;
        list2.C_SetAttributeValue = shim_set;
        *out = &list2;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}
