/*
 * entry.c — the exported entry points and the functions that carry Guardian
 * behaviour.  Everything else in our function lists is a forwarder (forward.c).
 *
 * Exported (module/guardian.map): C_GetFunctionList, C_GetInterfaceList,
 * C_GetInterface.  Everything else is reached through the lists.
 */
#include <stdlib.h>
#include <string.h>

#include "anchor.h"
#include "module.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"
#include "registry.h"
#include "request.h"

#define GUARDIAN_MANUFACTURER "Guardian PKCS#11"
#define GUARDIAN_DESCRIPTION "Guardian provisioning module"

/* ---- life cycle ----------------------------------------------------------- */

static CK_RV entry_C_Initialize(CK_VOID_PTR init_args)
{
    CK_RV rv;
    guardian_trace_in("C_Initialize");
    rv = guardian_state_initialize(init_args);
    /* A new backend session of the library: its slots are tested afresh. */
    if (rv == CKR_OK)
        guardian_mechs_selftest_reset();
    return guardian_trace_out("C_Initialize", rv);
}

static CK_RV entry_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;
    guardian_trace_in("C_Finalize");
    rv = guardian_state_finalize(reserved);
    if (rv == CKR_OK)
        guardian_mechs_selftest_reset();
    return guardian_trace_out("C_Finalize", rv);
}

static void pad_copy(CK_UTF8CHAR *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    memset(dst, ' ', size);
    memcpy(dst, src, n < size ? n : size);
}

static CK_RV get_info(CK_INFO_PTR info, CK_VERSION cryptoki)
{
    if (guardian_backend_list() == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof(*info));
    info->cryptokiVersion = cryptoki;
    pad_copy(info->manufacturerID, sizeof(info->manufacturerID), GUARDIAN_MANUFACTURER);
    pad_copy(info->libraryDescription, sizeof(info->libraryDescription), GUARDIAN_DESCRIPTION);
    info->flags = 0;
    info->libraryVersion.major = GUARDIAN_VERSION_MAJOR;
    info->libraryVersion.minor = GUARDIAN_VERSION_MINOR;
    return CKR_OK;
}

static CK_RV entry_C_GetInfo(CK_INFO_PTR info)
{
    guardian_trace_in("C_GetInfo");
    return guardian_trace_out("C_GetInfo", get_info(info, (CK_VERSION){2, 40}));
}

static CK_RV entry_C_GetInfo_3_0(CK_INFO_PTR info)
{
    guardian_trace_in("C_GetInfo");
    return guardian_trace_out("C_GetInfo", get_info(info, (CK_VERSION){3, 0}));
}

/* ---- mechanisms ----------------------------------------------------------- */

/* The backend's mechanism list for `slot`, in a fresh array (free it). */
static CK_RV backend_mechanisms(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, CK_MECHANISM_TYPE **out, CK_ULONG *n_out,
                                size_t spare)
{
    CK_MECHANISM_TYPE *list = NULL;
    CK_ULONG n = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    /* The list can grow between the two calls (a token inserted): retry. */
    for (int attempt = 0; attempt < 4; attempt++) {
        rv = be->C_GetMechanismList(slot, NULL, &n);
        if (rv != CKR_OK)
            goto out;
        free(list);
        list = calloc((size_t)n + spare + 1, sizeof(*list));
        if (list == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        rv = be->C_GetMechanismList(slot, list, &n);
        if (rv != CKR_BUFFER_TOO_SMALL)
            break;
    }
    if (rv != CKR_OK)
        goto out;
    *out = list;
    *n_out = n;
    list = NULL;
out:
    free(list);
    return rv;
}

static CK_RV get_mechanism_list(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR out, CK_ULONG_PTR count)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_MECHANISM_TYPE *list = NULL;
    CK_ULONG n = 0, total = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (be == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = backend_mechanisms(be, slot, &list, &n, guardian_mech_count());
    if (rv != CKR_OK)
        goto out;

    /* Drop any backend mechanism that collides with one of ours (ours win:
     * the numbers are in our vendor range), then append ours that the slot can
     * run. */
    for (CK_ULONG i = 0; i < n; i++)
        if (guardian_mech_find(list[i]) == NULL)
            list[total++] = list[i];
    n = total;
    /* In service mode they are not callable (the operations are requests).
     * Ours are listed where their self-test passes on the slot's token
     * (mechs/selftest.c; the first call per slot runs it). */
    for (size_t m = 0; m < guardian_mech_count() && !atomic_load(&guardian_service_on); m++)
        if (guardian_mech_advertised(be, slot, guardian_mech_at(m), list, n))
            list[total++] = guardian_mech_at(m)->type;

    if (out == NULL) {
        rv = CKR_OK;
    } else if (*count < total) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        memcpy(out, list, total * sizeof(*out));
        rv = CKR_OK;
    }
    *count = total;
out:
    free(list);
    return rv;
}

static CK_RV entry_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR out, CK_ULONG_PTR count)
{
    guardian_trace_in("C_GetMechanismList");
    return guardian_trace_out("C_GetMechanismList", get_mechanism_list(slot, out, count));
}

/* The CK_MECHANISM_INFO flags that PKCS#11 3.0 added (message-based
 * operations, CKF_FIND_OBJECTS, CKF_EC_CURVENAME): a caller of the 2.40 list
 * does not know them, and a 3.0 backend (NSS softoken) sets them. */
#define GUARDIAN_CKF_3_0_ONLY                                                                              \
    (GUARDIAN_CKF_MESSAGE_ENCRYPT | GUARDIAN_CKF_MESSAGE_DECRYPT | GUARDIAN_CKF_MESSAGE_SIGN |                \
     GUARDIAN_CKF_MESSAGE_VERIFY | GUARDIAN_CKF_MULTI_MESSAGE | GUARDIAN_CKF_FIND_OBJECTS |                  \
     GUARDIAN_CKF_EC_CURVENAME)

static CK_RV get_mechanism_info(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info, bool v3)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    const struct guardian_mech *m = guardian_mech_find(type);
    CK_MECHANISM_TYPE *list = NULL;
    CK_ULONG n = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (be == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    if (m == NULL) {
        /* SoftHSMv2 ORs flags into the caller's struct without clearing it. */
        memset(info, 0, sizeof(*info));
        rv = be->C_GetMechanismInfo(slot, type, info);
        if (rv == CKR_OK && !v3)
            info->flags &= ~(CK_FLAGS)GUARDIAN_CKF_3_0_ONLY;
        return rv;
    }
    if (atomic_load(&guardian_service_on))
        return CKR_MECHANISM_INVALID; /* not callable in service mode */
    rv = backend_mechanisms(be, slot, &list, &n, 0);
    if (rv != CKR_OK)
        goto out;
    if (!guardian_mech_advertised(be, slot, m, list, n)) {
        rv = CKR_MECHANISM_INVALID;
        goto out;
    }
    *info = m->info;
    rv = CKR_OK;
out:
    free(list);
    return rv;
}

static CK_RV entry_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    guardian_trace_in("C_GetMechanismInfo");
    return guardian_trace_out("C_GetMechanismInfo", get_mechanism_info(slot, type, info, false));
}

static CK_RV entry_C_GetMechanismInfo_3_0(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    guardian_trace_in("C_GetMechanismInfo");
    return guardian_trace_out("C_GetMechanismInfo", get_mechanism_info(slot, type, info, true));
}

/* A vendor mechanism is callable in `session` only where it is advertised:
 * CKR_MECHANISM_INVALID elsewhere, as for any mechanism a slot lacks. */
static CK_RV mech_callable(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, const struct guardian_mech *m,
                           const char *function, CK_SLOT_ID *slot)
{
    CK_SESSION_INFO si;
    CK_RV rv;
    memset(&si, 0, sizeof(si));
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK)
        return rv;
    if (!guardian_mech_advertised(be, si.slotID, m, NULL, 0)) {
        guardian_info("mech", "%s: %s is not advertised on slot %lu (its self-test did not pass there)", function,
                      m->name, (unsigned long)si.slotID);
        return CKR_MECHANISM_INVALID;
    }
    *slot = si.slotID;
    return CKR_OK;
}

/* ---- the calls that carry vendor mechanisms ---------------------------- */

static CK_RV unwrap_key(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE unwrapping_key,
                        CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR templ, CK_ULONG count,
                        CK_OBJECT_HANDLE_PTR out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    const struct guardian_mech *m;

    if (be == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    m = mech != NULL ? guardian_mech_find(mech->mechanism) : NULL;
    if (m != NULL && guardian_service_mechanism_check(mech, "C_UnwrapKey") != CKR_OK)
        return CKR_MECHANISM_INVALID; /* service mode: requests, not mechanisms */
    if (m == NULL) {
        CK_RV rv = guardian_policy_check(be, session, unwrapping_key, GUARDIAN_OP_UNWRAP_WITH, "C_UnwrapKey");
        if (rv == CKR_OK)
            rv = guardian_service_mechanism_check(mech, "C_UnwrapKey");
        if (rv == CKR_OK)
            rv = guardian_policy_template(templ, count, "C_UnwrapKey");
        return rv != CKR_OK ? rv : be->C_UnwrapKey(session, mech, unwrapping_key, wrapped, wrapped_len, templ, count, out);
    }
    if (m->unwrap == NULL) {
        guardian_info("mech", "%s is not available for C_UnwrapKey in this build", m->name);
        return CKR_MECHANISM_INVALID;
    }
    {
        struct guardian_store *st = NULL;
        CK_SLOT_ID slot = 0;
        CK_RV rv = mech_callable(be, session, m, "C_UnwrapKey", &slot);
        if (rv == CKR_OK)
            rv = guardian_state_store(&st);
        if (rv == CKR_OK)
            rv = guardian_anchor_bind(be, session, slot, st);
        if (rv != CKR_OK)
            return rv;
        return m->unwrap(be, st, session, mech, unwrapping_key, wrapped, wrapped_len, templ, count, out);
    }
}

static CK_RV entry_C_UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE unwrapping_key,
                               CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR templ, CK_ULONG count,
                               CK_OBJECT_HANDLE_PTR out)
{
    guardian_trace_in("C_UnwrapKey");
    return guardian_trace_out("C_UnwrapKey",
                        unwrap_key(session, mech, unwrapping_key, wrapped, wrapped_len, templ, count, out));
}

static CK_RV derive_key(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE base_key,
                        CK_ATTRIBUTE_PTR templ, CK_ULONG count, CK_OBJECT_HANDLE_PTR out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    const struct guardian_mech *m;

    if (be == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    m = mech != NULL ? guardian_mech_find(mech->mechanism) : NULL;
    if (m != NULL && guardian_service_mechanism_check(mech, "C_DeriveKey") != CKR_OK)
        return CKR_MECHANISM_INVALID; /* service mode: requests, not mechanisms */
    if (m == NULL) {
        CK_RV rv = guardian_policy_check(be, session, base_key, GUARDIAN_OP_DERIVE, "C_DeriveKey");
        if (rv == CKR_OK)
            rv = guardian_service_mechanism_check(mech, "C_DeriveKey");
        if (rv == CKR_OK)
            rv = guardian_policy_template(templ, count, "C_DeriveKey");
        return rv != CKR_OK ? rv : be->C_DeriveKey(session, mech, base_key, templ, count, out);
    }
    if (m->derive == NULL) {
        guardian_info("mech", "%s is not available for C_DeriveKey in this build", m->name);
        return CKR_MECHANISM_INVALID;
    }
    {
        struct guardian_store *st = NULL;
        CK_SLOT_ID slot = 0;
        CK_RV rv = mech_callable(be, session, m, "C_DeriveKey", &slot);
        if (rv == CKR_OK)
            rv = guardian_state_store(&st);
        if (rv == CKR_OK)
            rv = guardian_anchor_bind(be, session, slot, st);
        if (rv != CKR_OK)
            return rv;
        return m->derive(be, st, session, mech, base_key, templ, count, out);
    }
}

static CK_RV entry_C_DeriveKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE base_key,
                               CK_ATTRIBUTE_PTR templ, CK_ULONG count, CK_OBJECT_HANDLE_PTR out)
{
    guardian_trace_in("C_DeriveKey");
    return guardian_trace_out("C_DeriveKey", derive_key(session, mech, base_key, templ, count, out));
}

/* ---- objects: the backend's, and the module's own (package and certificate objects) ---- */

static CK_RV module_object_get(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t,
                               CK_ULONG n)
{
    if (guardian_is_cert_object(h))
        return guardian_cert_objects_get(be, s, h, t, n);
    return guardian_package_objects_get(be, s, h, t, n);
}

static CK_RV entry_C_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    /* Hot path, as in the forwarders: a tail call.  One mask compare covers
     * both kinds of module object. */
    if (GUARDIAN_LIKELY(be != NULL && !guardian_is_module_object(h) &&
                        !atomic_load_explicit(&guardian_trace_on, memory_order_relaxed)))
        return be->C_GetAttributeValue(s, h, t, n);
    guardian_trace_in("C_GetAttributeValue");
    if (GUARDIAN_UNLIKELY(be == NULL))
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (GUARDIAN_UNLIKELY(guardian_is_module_object(h)))
        rv = module_object_get(be, s, h, t, n);
    else
        rv = be->C_GetAttributeValue(s, h, t, n);
    return guardian_trace_out("C_GetAttributeValue", rv);
}

/* CKR_OK and its size when the module holds `h`, CKR_OBJECT_HANDLE_INVALID otherwise. */
static CK_RV module_object_size(CK_OBJECT_HANDLE h, CK_ULONG_PTR size)
{
    if (guardian_is_cert_object(h))
        return guardian_cert_objects_size(h, size);
    return guardian_package_objects_size(h, size);
}

/* The module's objects are read-only and cannot be copied; package objects
 * cannot be destroyed either.  The session must be valid, the object live. */
static CK_RV module_object_refusal(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_RV refusal)
{
    CK_SESSION_INFO si;
    CK_ULONG size;
    CK_RV rv = be->C_GetSessionInfo(s, &si);
    if (rv != CKR_OK)
        return rv;
    return module_object_size(h, &size) == CKR_OK ? refusal : CKR_OBJECT_HANDLE_INVALID;
}

static CK_RV entry_C_SetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_SetAttributeValue");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (guardian_is_module_object(h))
        rv = module_object_refusal(be, s, h, CKR_ACTION_PROHIBITED);
    else if ((rv = guardian_policy_check(be, s, h, GUARDIAN_OP_SET_ATTRIBUTE, "C_SetAttributeValue")) == CKR_OK &&
             (rv = guardian_policy_template(t, n, "C_SetAttributeValue")) == CKR_OK)
        rv = be->C_SetAttributeValue(s, h, t, n);
    return guardian_trace_out("C_SetAttributeValue", rv);
}

static CK_RV entry_C_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_DestroyObject");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (guardian_is_cert_object(h))
        rv = guardian_cert_objects_destroy(be, s, h);
    else if (guardian_is_package_object(h))
        rv = module_object_refusal(be, s, h, CKR_ACTION_PROHIBITED);
    else if ((rv = guardian_policy_check(be, s, h, GUARDIAN_OP_DESTROY, "C_DestroyObject")) == CKR_OK &&
             (rv = guardian_root_destroying(be, s, h)) == CKR_OK && (rv = be->C_DestroyObject(s, h)) == CKR_OK) {
        /* The backend may hand the number out again. */
        guardian_mechs_forget(h);
        guardian_policy_forget(h);
    }
    return guardian_trace_out("C_DestroyObject", rv);
}

static CK_RV entry_C_CopyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                                CK_OBJECT_HANDLE_PTR out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_CopyObject");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (guardian_is_module_object(h))
        rv = module_object_refusal(be, s, h, CKR_ACTION_PROHIBITED);
    else if ((rv = guardian_policy_check(be, s, h, GUARDIAN_OP_COPY, "C_CopyObject")) == CKR_OK &&
             (rv = guardian_policy_template(t, n, "C_CopyObject")) == CKR_OK)
        rv = be->C_CopyObject(s, h, t, n, out);
    return guardian_trace_out("C_CopyObject", rv);
}

static CK_RV entry_C_GetObjectSize(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ULONG_PTR size)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_GetObjectSize");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (guardian_is_module_object(h))
        rv = module_object_refusal(be, s, h, module_object_size(h, size));
    else
        rv = be->C_GetObjectSize(s, h, size);
    return guardian_trace_out("C_GetObjectSize", rv);
}

static CK_RV entry_C_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    if (GUARDIAN_LIKELY(be != NULL && !atomic_load_explicit(&guardian_trace_on, memory_order_relaxed) &&
                        guardian_package_objects_idle(t, n) && guardian_cert_objects_idle(t, n)))
        return be->C_FindObjectsInit(s, t, n);
    guardian_trace_in("C_FindObjectsInit");
    rv = be == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : guardian_package_objects_find_init(be, s, t, n);
    return guardian_trace_out("C_FindObjectsInit", rv);
}

static CK_RV entry_C_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    int handled = 0;
    CK_RV rv;
    if (GUARDIAN_LIKELY(be != NULL && !guardian_package_objects_searching() &&
                        !atomic_load_explicit(&guardian_trace_on, memory_order_relaxed)))
        return be->C_FindObjects(s, out, max, count);
    guardian_trace_in("C_FindObjects");
    if (GUARDIAN_UNLIKELY(be == NULL))
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else {
        rv = guardian_package_objects_find(be, s, out, max, count, &handled);
        if (GUARDIAN_LIKELY(!handled))
            rv = be->C_FindObjects(s, out, max, count);
    }
    return guardian_trace_out("C_FindObjects", rv);
}

static CK_RV entry_C_FindObjectsFinal(CK_SESSION_HANDLE s)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    int handled = 0;
    CK_RV rv;
    if (GUARDIAN_LIKELY(be != NULL && !guardian_package_objects_searching() &&
                        !atomic_load_explicit(&guardian_trace_on, memory_order_relaxed)))
        return be->C_FindObjectsFinal(s);
    guardian_trace_in("C_FindObjectsFinal");
    if (GUARDIAN_UNLIKELY(be == NULL))
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else {
        rv = guardian_package_objects_find_final(be, s, &handled);
        if (GUARDIAN_LIKELY(!handled))
            rv = be->C_FindObjectsFinal(s);
    }
    return guardian_trace_out("C_FindObjectsFinal", rv);
}

/* ---- calls the policy checks by key or template (policy.c) ------------------ */

static CK_RV entry_C_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_CreateObject");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (guardian_request_is(t, n)) {
        struct guardian_store *st = NULL;
        rv = guardian_state_store(&st);
        if (rv == CKR_OK)
            rv = guardian_request_run(be, st, s, t, n, out);
    }
    else if ((rv = guardian_policy_template(t, n, "C_CreateObject")) == CKR_OK)
        rv = be->C_CreateObject(s, t, n, out);
    return guardian_trace_out("C_CreateObject", rv);
}

static CK_RV entry_C_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                                 CK_OBJECT_HANDLE_PTR out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_GenerateKey");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if ((rv = guardian_policy_template(t, n, "C_GenerateKey")) == CKR_OK &&
             (rv = guardian_service_mechanism_check(m, "C_GenerateKey")) == CKR_OK)
        rv = be->C_GenerateKey(s, m, t, n, out);
    return guardian_trace_out("C_GenerateKey", rv);
}

static CK_RV entry_C_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub, CK_ULONG n_pub,
                                     CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv, CK_OBJECT_HANDLE_PTR out_pub,
                                     CK_OBJECT_HANDLE_PTR out_priv)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_GenerateKeyPair");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if ((rv = guardian_policy_template(pub, n_pub, "C_GenerateKeyPair")) == CKR_OK &&
             (rv = guardian_policy_template(priv, n_priv, "C_GenerateKeyPair")) == CKR_OK &&
             (rv = guardian_service_mechanism_check(m, "C_GenerateKeyPair")) == CKR_OK)
        rv = be->C_GenerateKeyPair(s, m, pub, n_pub, priv, n_priv, out_pub, out_priv);
    return guardian_trace_out("C_GenerateKeyPair", rv);
}

static CK_RV entry_C_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
                             CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_WrapKey");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if ((rv = guardian_policy_check(be, s, wrapping, GUARDIAN_OP_WRAP_WITH, "C_WrapKey")) == CKR_OK &&
             (rv = guardian_policy_check(be, s, key, GUARDIAN_OP_WRAPPED, "C_WrapKey")) == CKR_OK &&
             (rv = guardian_service_mechanism_check(m, "C_WrapKey")) == CKR_OK)
        rv = be->C_WrapKey(s, m, wrapping, key, out, out_len);
    return guardian_trace_out("C_WrapKey", rv);
}

/* A saved operation state names the keys it ran with: restoring one is using them. */
static CK_RV entry_C_SetOperationState(CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG len, CK_OBJECT_HANDLE enc,
                                       CK_OBJECT_HANDLE auth)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv = CKR_OK;
    guardian_trace_in("C_SetOperationState");
    if (be == NULL)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else {
        if (enc != CK_INVALID_HANDLE)
            rv = guardian_policy_check(be, s, enc, GUARDIAN_OP_DECRYPT, "C_SetOperationState");
        if (rv == CKR_OK && auth != CK_INVALID_HANDLE)
            rv = guardian_policy_check(be, s, auth, GUARDIAN_OP_SIGN, "C_SetOperationState");
        if (rv == CKR_OK)
            rv = be->C_SetOperationState(s, state, len, enc, auth);
    }
    return guardian_trace_out("C_SetOperationState", rv);
}

static CK_RV entry_C_CloseSession(CK_SESSION_HANDLE s)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_CloseSession");
    rv = be == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : be->C_CloseSession(s);
    /* A session the backend no longer knows has no objects either. */
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
        guardian_package_objects_session_closed(s);
        guardian_cert_objects_session_closed(s);
        /* The last session's close logs out: private handles may be gone. */
        guardian_mechs_forget(CK_INVALID_HANDLE);
        guardian_mechs_selftest_login_changed();
    }
    return guardian_trace_out("C_CloseSession", rv);
}

static CK_RV entry_C_Logout(CK_SESSION_HANDLE s)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    CK_SESSION_INFO si;
    bool have_slot = false;
    guardian_trace_in("C_Logout");
    if (be != NULL && guardian_service_mode())
        have_slot = be->C_GetSessionInfo(s, &si) == CKR_OK;
    rv = be == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : be->C_Logout(s);
    if (rv == CKR_OK) {
        if (have_slot)
            guardian_credentials_logged_out(si.slotID);
        guardian_mechs_forget(CK_INVALID_HANDLE);
        guardian_mechs_selftest_login_changed();
        guardian_policy_reset();
    }
    return guardian_trace_out("C_Logout", rv);
}

/* A login makes objects possible that were not (tpm2-pkcs11 makes none before
 * it): the self-tests that could not decide run again. */
static CK_RV entry_C_Login(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_RV rv = guardian_cred_C_Login(s, who, pin, len);
    if (rv == CKR_OK)
        guardian_mechs_selftest_login_changed();
    return rv;
}

static CK_RV entry_C_LoginUser(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len,
                               CK_UTF8CHAR_PTR user, CK_ULONG user_len)
{
    CK_RV rv = guardian_cred_C_LoginUser(s, who, pin, len, user, user_len);
    if (rv == CKR_OK)
        guardian_mechs_selftest_login_changed();
    return rv;
}

static CK_RV entry_C_CloseAllSessions(CK_SLOT_ID slot)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;
    guardian_trace_in("C_CloseAllSessions");
    rv = be == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : be->C_CloseAllSessions(slot);
    if (rv == CKR_OK) {
        guardian_package_objects_session_closed(CK_INVALID_HANDLE);
        guardian_cert_objects_slot_closed(slot);
        guardian_credentials_logged_out(slot);
        guardian_mechs_forget(CK_INVALID_HANDLE);
        guardian_mechs_selftest_login_changed();
        guardian_policy_reset();
    }
    return guardian_trace_out("C_CloseAllSessions", rv);
}

/* ---- the function lists and interfaces ---------------------------------- */

static CK_RV entry_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);
static CK_RV entry_C_GetInterfaceList(CK_INTERFACE_PTR interfaces, CK_ULONG_PTR count);
static CK_RV entry_C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                                  CK_FLAGS flags);

#define SET_FORWARDER(name, params, args) .name = guardian_fwd_##name,

#define GUARDIAN_OWN_FUNCTIONS                                                                                   \
    .C_Initialize = entry_C_Initialize, .C_Finalize = entry_C_Finalize,                                       \
    .C_GetFunctionList = entry_C_GetFunctionList, .C_GetMechanismList = entry_C_GetMechanismList,             \
    .C_UnwrapKey = entry_C_UnwrapKey,                                                                         \
    .C_DeriveKey = entry_C_DeriveKey, .C_GetAttributeValue = entry_C_GetAttributeValue,                       \
    .C_SetAttributeValue = entry_C_SetAttributeValue, .C_DestroyObject = entry_C_DestroyObject,               \
    .C_CopyObject = entry_C_CopyObject, .C_GetObjectSize = entry_C_GetObjectSize,                             \
    .C_FindObjectsInit = entry_C_FindObjectsInit, .C_FindObjects = entry_C_FindObjects,                       \
    .C_FindObjectsFinal = entry_C_FindObjectsFinal, .C_CloseSession = entry_C_CloseSession,                   \
    .C_CloseAllSessions = entry_C_CloseAllSessions, .C_Logout = entry_C_Logout,                               \
    .C_CreateObject = entry_C_CreateObject, .C_GenerateKey = entry_C_GenerateKey,                             \
    .C_GenerateKeyPair = entry_C_GenerateKeyPair, .C_WrapKey = entry_C_WrapKey,                               \
    .C_SetOperationState = entry_C_SetOperationState, .C_GetTokenInfo = guardian_cred_C_GetTokenInfo,       \
    .C_InitToken = guardian_cred_C_InitToken, .C_InitPIN = guardian_cred_C_InitPIN,                           \
    .C_SetPIN = guardian_cred_C_SetPIN, .C_Login = entry_C_Login

static CK_FUNCTION_LIST list_2_40 = {
    .version = {2, 40},
    GUARDIAN_FORWARD_2_40_PLAIN(SET_FORWARDER) GUARDIAN_FORWARD_2_40_KEYED(SET_FORWARDER) GUARDIAN_OWN_FUNCTIONS,
    .C_GetInfo = entry_C_GetInfo,
    .C_GetMechanismInfo = entry_C_GetMechanismInfo,
};

static CK_FUNCTION_LIST_3_0 list_3_0 = {
    .version = {3, 0},
    GUARDIAN_FORWARD_2_40_PLAIN(SET_FORWARDER) GUARDIAN_FORWARD_2_40_KEYED(SET_FORWARDER)
    GUARDIAN_FORWARD_3_0_PLAIN(SET_FORWARDER) GUARDIAN_FORWARD_3_0_KEYED(SET_FORWARDER) GUARDIAN_OWN_FUNCTIONS,
    .C_LoginUser = entry_C_LoginUser,
    .C_GetInfo = entry_C_GetInfo_3_0,
    .C_GetMechanismInfo = entry_C_GetMechanismInfo_3_0,
    .C_GetInterfaceList = entry_C_GetInterfaceList,
    .C_GetInterface = entry_C_GetInterface,
};

static CK_UTF8CHAR interface_name[] = "PKCS 11";
static CK_INTERFACE interface_3_0 = {interface_name, &list_3_0, 0};
static CK_INTERFACE interface_2_40 = {interface_name, &list_2_40, 0};

/* The interfaces we offer, preferred first: 3.0 only over a 3.x backend. */
static size_t offered_interfaces(CK_INTERFACE *out[2])
{
    size_t n = 0;
    /* Loading may fail (no configuration yet): then only 2.40 is offered and
     * C_Initialize reports the problem. */
    if (guardian_state_load() == CKR_OK && guardian_state_backend_has_3_0())
        out[n++] = &interface_3_0;
    out[n++] = &interface_2_40;
    return n;
}

static CK_RV entry_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    *list = &list_2_40;
    return CKR_OK;
}

static CK_RV entry_C_GetInterfaceList(CK_INTERFACE_PTR interfaces, CK_ULONG_PTR count)
{
    CK_INTERFACE *offered[2];
    size_t n;

    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    n = offered_interfaces(offered);
    if (interfaces == NULL) {
        *count = n;
        return CKR_OK;
    }
    if (*count < n) {
        *count = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    for (size_t i = 0; i < n; i++)
        interfaces[i] = *offered[i];
    *count = n;
    return CKR_OK;
}

static CK_RV entry_C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                                  CK_FLAGS flags)
{
    CK_INTERFACE *offered[2];
    size_t n;

    if (iface == NULL)
        return CKR_ARGUMENTS_BAD;
    n = offered_interfaces(offered);
    for (size_t i = 0; i < n; i++) {
        const CK_VERSION *v = &((CK_FUNCTION_LIST *)offered[i]->pFunctionList)->version;
        if (name != NULL && strcmp((const char *)name, (const char *)offered[i]->pInterfaceName) != 0)
            continue;
        if (version != NULL && (version->major != v->major || version->minor != v->minor))
            continue;
        if ((flags & offered[i]->flags) != flags)
            continue;
        *iface = offered[i];
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD;
}

/* ---- exported symbols ------------------------------------------------------- */

GUARDIAN_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    return entry_C_GetFunctionList(list);
}

GUARDIAN_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR interfaces, CK_ULONG_PTR count)
{
    return entry_C_GetInterfaceList(interfaces, count);
}

GUARDIAN_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                                     CK_FLAGS flags)
{
    return entry_C_GetInterface(name, version, iface, flags);
}
