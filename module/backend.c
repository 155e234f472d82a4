/*
 * backend.c — loading the backend PKCS#11 module, defensively.
 *
 * - dlopen(RTLD_NOW | RTLD_LOCAL): missing symbols fail here, not mid-call, and
 *   the backend's symbols do not leak into the application's namespace.
 * - Prefer C_GetInterface("PKCS 11"): take 3.x only if the backend hands out an
 *   interface whose list says 3.x; otherwise the 2.40 list.  A list obtained
 *   through C_GetFunctionList is used as a 2.40 list whatever its version field
 *   says (SoftHSMv2 2.6.1 says 3.x and exports a 2.40 list).
 * - Refuse ourselves: the module the path resolves to must not be the one this
 *   code lives in, or C_Initialize would recurse forever.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "module.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static int self_marker;

static bool is_ourselves(void *dl)
{
    Dl_info ours, theirs;
    void *sym = dlsym(dl, "C_GetFunctionList");

    if (sym == NULL)
        sym = dlsym(dl, "C_GetInterface");
    if (sym == NULL)
        return false;
    if (dladdr(&self_marker, &ours) == 0 || dladdr(sym, &theirs) == 0)
        return false;
    return ours.dli_fbase == theirs.dli_fbase;
}

static void try_interfaces(void *dl, struct guardian_backend *be)
{
    CK_C_GetInterface get_interface = (CK_C_GetInterface)dlsym(dl, "C_GetInterface");
    CK_INTERFACE_PTR iface = NULL;
    CK_VERSION v30 = {3, 0};
    static CK_UTF8CHAR name[] = "PKCS 11";

    if (get_interface == NULL)
        return;
    if (get_interface(name, &v30, &iface, 0) == CKR_OK && iface != NULL && iface->pFunctionList != NULL) {
        CK_FUNCTION_LIST_3_0 *l3 = iface->pFunctionList;
        if (l3->version.major == 3) {
            be->list3 = l3;
            be->list = (CK_FUNCTION_LIST *)l3; /* a 3.0 list starts with the 2.40 one */
            be->list_version = l3->version;
            return;
        }
    }
    iface = NULL;
    if (get_interface(name, NULL, &iface, 0) == CKR_OK && iface != NULL && iface->pFunctionList != NULL) {
        CK_FUNCTION_LIST *l = iface->pFunctionList;
        be->list = l;
        be->list_version = (CK_VERSION){2, 40};
        if (l->version.major >= 3 && l->version.major < 4) {
            be->list3 = iface->pFunctionList;
            be->list_version = l->version;
        }
    }
}

CK_RV guardian_backend_open(const char *path, struct guardian_backend *be, char *err, size_t errlen)
{
    CK_C_GetFunctionList get_function_list;
    void *dl;

    return_val_if_fail(path != NULL && be != NULL, CKR_ARGUMENTS_BAD);
    memset(be, 0, sizeof(*be));

    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        snprintf(err, errlen, "backend %s cannot be loaded: %s", path, why ? why : "unknown dlopen error");
        return CKR_GUARDIAN_BACKEND_LOAD_FAILED;
    }
    if (is_ourselves(dl)) {
        snprintf(err, errlen, "backend %s is the Guardian module itself; name the real backend (e.g. SoftHSM)",
                 path);
        dlclose(dl);
        return CKR_GUARDIAN_BACKEND_IS_SELF;
    }

    try_interfaces(dl, be);
    if (be->list == NULL) {
        CK_FUNCTION_LIST_PTR list = NULL;
        get_function_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
        if (get_function_list == NULL) {
            snprintf(err, errlen, "backend %s is not a PKCS#11 module: no C_GetFunctionList or C_GetInterface",
                     path);
            dlclose(dl);
            return CKR_GUARDIAN_BACKEND_LOAD_FAILED;
        }
        if (get_function_list(&list) != CKR_OK || list == NULL) {
            snprintf(err, errlen, "backend %s: C_GetFunctionList failed", path);
            dlclose(dl);
            return CKR_GUARDIAN_BACKEND_LOAD_FAILED;
        }
        be->list = list;
        be->list_version = (CK_VERSION){2, 40};
    }
    if (be->list->C_Initialize == NULL || be->list->C_Finalize == NULL) {
        snprintf(err, errlen, "backend %s: function list lacks C_Initialize/C_Finalize", path);
        memset(be, 0, sizeof(*be));
        dlclose(dl);
        return CKR_GUARDIAN_BACKEND_LOAD_FAILED;
    }
    be->dl = dl;
    return CKR_OK;
}
