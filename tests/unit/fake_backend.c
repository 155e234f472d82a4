/*
 * fake_backend.c — see fake_backend.h.  FAKE_WITH_3_0 selects libfake30.so.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fake_backend.h"
#include "functions.h"

#define FAKE_EXPORT __attribute__((visibility("default")))

static struct fake_backend state;

FAKE_EXPORT struct fake_backend *fake_backend(void)
{
    return &state;
}

/* Every plain function records its name and first argument and returns the
 * scripted value: enough to prove that a call and its result cross the module
 * unchanged. */
#define FAKE_FUNCTION(name, params, args)                                                  \
    static CK_RV fake_##name params                                                        \
    {                                                                                      \
        state.last_name = #name;                                                           \
        state.last_a = (CK_ULONG)(a);                                                      \
        state.calls++;                                                                     \
        return state.rv;                                                                   \
    }
GUARDIAN_FORWARD_2_40(FAKE_FUNCTION)
GUARDIAN_FORWARD_3_0(FAKE_FUNCTION)

/* The policy's classification reads (see fake_backend.h), else a plain fake. */
static CK_RV fake_C_GetAttributeValue_classified(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,
                                                 CK_ULONG d)
{
    if (state.object_class != 0 && d == 1 && c != NULL) {
        switch (c[0].type) {
        case CKA_CLASS:
            if (c[0].pValue != NULL && c[0].ulValueLen >= sizeof(CK_OBJECT_CLASS))
                memcpy(c[0].pValue, &state.object_class, sizeof(CK_OBJECT_CLASS));
            c[0].ulValueLen = sizeof(CK_OBJECT_CLASS);
            return CKR_OK;
        case CKA_LABEL:
        case CKA_ID:
        case CKA_APPLICATION:
        case CKA_TRUSTED:
            if (c[0].pValue != NULL) /* the policy asks for the length first */
                break;
            c[0].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            return CKR_ATTRIBUTE_TYPE_INVALID;
        default:
            break;
        }
    }
    return fake_C_GetAttributeValue(a, b, c, d);
}

static CK_RV fake_C_Initialize(CK_VOID_PTR args)
{
    atomic_fetch_add(&state.init_calls, 1);
    state.last_init_args = args;
    if (args != NULL)
        state.last_init_copy = *(CK_C_INITIALIZE_ARGS *)args;
    else
        memset(&state.last_init_copy, 0, sizeof(state.last_init_copy));
    state.last_init_reserved[0] = '\0';
    if (state.last_init_copy.pReserved != NULL)
        snprintf(state.last_init_reserved, sizeof(state.last_init_reserved), "%s",
                 (const char *)state.last_init_copy.pReserved);
    if (state.init_delay_us)
        usleep(state.init_delay_us);
    if (atomic_load(&state.initialized))
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    if (state.init_rv != CKR_OK)
        return state.init_rv;
    atomic_store(&state.initialized, 1);
    return CKR_OK;
}

static CK_RV fake_C_Finalize(CK_VOID_PTR reserved)
{
    atomic_fetch_add(&state.finalize_calls, 1);
    if (reserved != NULL)
        return CKR_ARGUMENTS_BAD;
    if (!atomic_load(&state.initialized))
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    atomic_store(&state.initialized, 0);
    return CKR_OK;
}

static CK_RV fake_C_GetInfo(CK_INFO_PTR info)
{
    memset(info, 0, sizeof(*info));
    memcpy(info->manufacturerID, "Fake backend", 12);
    return CKR_OK;
}

static CK_RV fake_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    state.last_name = "C_GetMechanismList";
    state.last_a = slot;
    if (slot != 1)
        return CKR_SLOT_ID_INVALID;
    if (list == NULL) {
        *count = state.n_mechs;
        return CKR_OK;
    }
    if (*count < state.n_mechs) {
        *count = state.n_mechs;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(list, state.mechs, state.n_mechs * sizeof(*list));
    *count = state.n_mechs;
    return CKR_OK;
}

static CK_RV fake_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    state.last_name = "C_GetMechanismInfo";
    state.last_a = slot;
    state.last_mechanism = type;
    info->flags |= state.mech_info_flags;
    info->ulMinKeySize = 128;
    info->ulMaxKeySize = 256;
    return state.rv;
}

static CK_RV fake_C_UnwrapKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_BYTE_PTR w,
                              CK_ULONG wl, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    (void)k, (void)w, (void)wl, (void)t, (void)n;
    state.last_name = "C_UnwrapKey";
    state.last_a = a;
    state.last_mechanism = m ? m->mechanism : (CK_MECHANISM_TYPE)-1;
    *out = 77;
    return state.rv;
}

static CK_RV fake_C_DeriveKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_ATTRIBUTE_PTR t,
                              CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    (void)k, (void)t, (void)n;
    state.last_name = "C_DeriveKey";
    state.last_a = a;
    state.last_mechanism = m ? m->mechanism : (CK_MECHANISM_TYPE)-1;
    *out = 78;
    return state.rv;
}

static CK_RV fake_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out);

#define FAKE_ENTRY(name, params, args) .name = fake_##name,
#define FAKE_OWN                                                                                   \
    .C_Initialize = fake_C_Initialize, .C_Finalize = fake_C_Finalize, .C_GetInfo = fake_C_GetInfo, \
    .C_GetFunctionList = fake_C_GetFunctionList, .C_GetMechanismList = fake_C_GetMechanismList,    \
    .C_GetMechanismInfo = fake_C_GetMechanismInfo, .C_UnwrapKey = fake_C_UnwrapKey,                \
    .C_DeriveKey = fake_C_DeriveKey, .C_GetAttributeValue = fake_C_GetAttributeValue_classified

/* FAKE_OWN replaces some generated entries (C_GetAttributeValue): on purpose. */
#pragma GCC diagnostic ignored "-Woverride-init"

/* Like SoftHSMv2 2.6.1: a 2.40 list whose version field claims 3.1. */
static CK_FUNCTION_LIST list_2_40 = {
    .version = {3, 1},
    GUARDIAN_FORWARD_2_40(FAKE_ENTRY) FAKE_OWN,
};

static CK_FUNCTION_LIST_3_0 list_3_0 = {
    .version = {3, 0},
    GUARDIAN_FORWARD_2_40(FAKE_ENTRY) GUARDIAN_FORWARD_3_0(FAKE_ENTRY) FAKE_OWN,
};

FAKE_EXPORT CK_FUNCTION_LIST *fake_backend_list(void)
{
    return &list_2_40;
}

FAKE_EXPORT CK_FUNCTION_LIST_3_0 *fake_backend_list3(void)
{
    return &list_3_0;
}

static const CK_FUNCTION_LIST pristine_2_40 = {
    .version = {3, 1},
    GUARDIAN_FORWARD_2_40(FAKE_ENTRY) FAKE_OWN,
};

static const CK_FUNCTION_LIST_3_0 pristine_3_0 = {
    .version = {3, 0},
    GUARDIAN_FORWARD_2_40(FAKE_ENTRY) GUARDIAN_FORWARD_3_0(FAKE_ENTRY) FAKE_OWN,
};

FAKE_EXPORT void fake_backend_reset(void)
{
    int initialized = atomic_load(&state.initialized);
    memset(&state, 0, sizeof(state));
    atomic_store(&state.initialized, initialized);
    state.object_class = CKO_SECRET_KEY;
    list_2_40 = pristine_2_40;
    list_3_0 = pristine_3_0;
}

static CK_RV fake_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
#ifdef FAKE_WITH_3_0
    *out = (CK_FUNCTION_LIST *)&list_3_0;
#else
    *out = &list_2_40;
#endif
    return CKR_OK;
}

FAKE_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    return fake_C_GetFunctionList(out);
}

#ifdef FAKE_WITH_3_0
static CK_UTF8CHAR iface_name[] = "PKCS 11";
static CK_INTERFACE iface_3_0 = {iface_name, &list_3_0, 0};

FAKE_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                                 CK_FLAGS flags)
{
    if (iface == NULL)
        return CKR_ARGUMENTS_BAD;
    if (name != NULL && strcmp((const char *)name, "PKCS 11") != 0)
        return CKR_ARGUMENTS_BAD;
    if (version != NULL && (version->major != 3 || version->minor != 0))
        return CKR_ARGUMENTS_BAD;
    if (flags != 0)
        return CKR_ARGUMENTS_BAD;
    *iface = &iface_3_0;
    return CKR_OK;
}
#endif
