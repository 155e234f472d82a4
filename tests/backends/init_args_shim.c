/*
 * init_args_shim.c — the "direct" path for a backend that needs pReserved.
 *
 * pkcs11-tool (OpenSC 0.23) has no option for the pReserved of
 * CK_C_INITIALIZE_ARGS, and NSS softoken answers CKR_ARGUMENTS_BAD without its
 * "configdir=…" string there.  So that tests/backends/test_parity.sh can run
 * pkcs11-tool straight on NSS, this module loads the backend named by
 * INIT_ARGS_SHIM_MODULE and hands out the backend's own function lists
 * (C_GetFunctionList, C_GetInterfaceList, C_GetInterface), copied, with one
 * entry replaced: C_Initialize puts INIT_ARGS_SHIM_ARGS into pReserved (a
 * caller's own non-NULL pReserved is passed on unchanged) and calls the
 * backend's.  Every other function pointer is the backend's own, so every
 * other call reaches the backend with nothing in between.  A test tool only:
 * never installed.
 *
 * With INIT_ARGS_SHIM_NO_PACKAGE_DATA=1 it also replaces C_CreateObject: a
 * CKO_DATA whose CKA_APPLICATION starts "guardian:" (an imported package's
 * integrity item) that is private or a token object is refused with
 * CKR_ATTRIBUTE_VALUE_INVALID, what NSS softoken answers for any private or
 * token data object; everything else passes.  So the import's other form of
 * an integrity item (mechs/unwrap_package.c, create_data) runs on SoftHSM
 * (tests/backends/test_transport.sh softhsm-nodata), with the state anchor, a
 * data object of its own application, still working.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11.h"

#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *dl;
static CK_C_Initialize backend_initialize;
static CK_C_CreateObject backend_create;
static CK_FUNCTION_LIST list2;      /* the backend's 2.x list, C_Initialize replaced */
static CK_FUNCTION_LIST_3_0 list3;  /* its 3.x list, likewise */
static CK_INTERFACE ifaces[8];      /* what C_GetInterface* hand out */

static CK_RV shim_initialize(CK_VOID_PTR init_args)
{
    CK_C_INITIALIZE_ARGS args;
    const char *reserved = getenv("INIT_ARGS_SHIM_ARGS");

    if (init_args != NULL)
        args = *(CK_C_INITIALIZE_ARGS *)init_args;
    else
        memset(&args, 0, sizeof(args));
    if (args.pReserved == NULL && reserved != NULL && *reserved != '\0')
        args.pReserved = (CK_VOID_PTR)reserved;
    return backend_initialize(&args);
}

static CK_BBOOL true_in(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == type && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_BBOOL))
            return *(CK_BBOOL *)t[i].pValue;
    return CK_FALSE;
}

static CK_RV shim_create(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    CK_BBOOL data = CK_FALSE, package = CK_FALSE;
    for (CK_ULONG i = 0; t != NULL && i < n; i++) {
        if (t[i].type == CKA_CLASS && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS))
            data = *(CK_OBJECT_CLASS *)t[i].pValue == CKO_DATA;
        if (t[i].type == CKA_APPLICATION && t[i].pValue != NULL && t[i].ulValueLen >= 9)
            package = memcmp(t[i].pValue, "guardian:", 9) == 0;
    }
    if (data && package && (true_in(t, n, CKA_PRIVATE) || true_in(t, n, CKA_TOKEN)))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return backend_create(s, t, n, out);
}

static int no_package_data(void)
{
    const char *v = getenv("INIT_ARGS_SHIM_NO_PACKAGE_DATA");
    return v != NULL && strcmp(v, "1") == 0;
}

/* dlopen the backend once.  Returns CKR_OK or CKR_GENERAL_ERROR (with a line
 * on stderr: this is a test tool). */
static CK_RV load(void)
{
    const char *path = getenv("INIT_ARGS_SHIM_MODULE");
    if (dl != NULL)
        return CKR_OK;
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "init_args_shim: INIT_ARGS_SHIM_MODULE is not set\n");
        return CKR_GENERAL_ERROR;
    }
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        fprintf(stderr, "init_args_shim: %s\n", dlerror());
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

/* The copy of a backend list `fl` that we hand out instead. */
static CK_VOID_PTR substitute(CK_VOID_PTR fl)
{
    const CK_VERSION *v = fl;
    if (fl == NULL)
        return NULL;
    if (v->major >= 3) {
        list3 = *(CK_FUNCTION_LIST_3_0 *)fl;
        backend_initialize = list3.C_Initialize;
        list3.C_Initialize = shim_initialize;
        if (no_package_data()) {
            backend_create = list3.C_CreateObject;
            list3.C_CreateObject = shim_create;
        }
        return &list3;
    }
    list2 = *(CK_FUNCTION_LIST *)fl;
    backend_initialize = list2.C_Initialize;
    list2.C_Initialize = shim_initialize;
    if (no_package_data()) {
        backend_create = list2.C_CreateObject;
        list2.C_CreateObject = shim_create;
    }
    return &list2;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = load();
    if (rv == CKR_OK) {
        get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
        rv = get == NULL ? CKR_GENERAL_ERROR : get(&fl);
    }
    if (rv == CKR_OK) {
        /* Sized as a 2.x list whatever its version says (SoftHSM's lies). */
        list2 = *fl;
        backend_initialize = list2.C_Initialize;
        list2.C_Initialize = shim_initialize;
        if (no_package_data()) {
            backend_create = list2.C_CreateObject;
            list2.C_CreateObject = shim_create;
        }
        *out = &list2;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR list, CK_ULONG_PTR count)
{
    CK_C_GetInterfaceList get;
    CK_RV rv;

    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = load();
    if (rv == CKR_OK) {
        get = (CK_C_GetInterfaceList)dlsym(dl, "C_GetInterfaceList");
        rv = get == NULL ? CKR_FUNCTION_NOT_SUPPORTED : get(list, count);
    }
    if (rv == CKR_OK && list != NULL)
        for (CK_ULONG i = 0; i < *count; i++)
            if (strcmp((const char *)list[i].pInterfaceName, "PKCS 11") == 0)
                list[i].pFunctionList = substitute(list[i].pFunctionList);
    pthread_mutex_unlock(&lock);
    return rv;
}

EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR out, CK_FLAGS flags)
{
    static size_t next;
    CK_C_GetInterface get;
    CK_INTERFACE_PTR got = NULL;
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = load();
    if (rv == CKR_OK) {
        get = (CK_C_GetInterface)dlsym(dl, "C_GetInterface");
        rv = get == NULL ? CKR_FUNCTION_NOT_SUPPORTED : get(name, version, &got, flags);
    }
    if (rv == CKR_OK && got != NULL && strcmp((const char *)got->pInterfaceName, "PKCS 11") == 0) {
        CK_INTERFACE_PTR mine = &ifaces[next++ % (sizeof(ifaces) / sizeof(ifaces[0]))];
        *mine = *got;
        mine->pFunctionList = substitute(got->pFunctionList);
        got = mine;
    }
    if (rv == CKR_OK)
        *out = got;
    pthread_mutex_unlock(&lock);
    return rv;
}
