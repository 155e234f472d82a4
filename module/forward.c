/*
 * forward.c — the pass-through forwarders, generated from functions.h.
 *
 * Each one costs two loads, three predictable branches and a tail call (a few
 * nanoseconds against the tens of microseconds of a backend operation; see
 * docs/performance.md).  We do not point our function list straight at the
 * backend's functions: the list is handed out before the backend is even loaded,
 * and a forwarder is what lets a forked child see CKR_CRYPTOKI_NOT_INITIALIZED,
 * and a function the backend leaves NULL answer CKR_FUNCTION_NOT_SUPPORTED
 * instead of crashing.  docs/design.md has the full argument.
 */
#include "module.h"

/* The hot path is a sibling (tail) call: no frame of our own, nothing after
 * the backend returns.  Everything else — not initialized, a NULL entry, the
 * call trace — lives in a separate cold function. */
#define GUARDIAN_FORWARDER_2_40(name, params, args)                                  \
    static __attribute__((noinline, cold)) CK_RV slow_##name params                  \
    {                                                                                \
        CK_FUNCTION_LIST *be = guardian_backend_list();                              \
        CK_RV rv;                                                                    \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_enter(#name);                                             \
        if (be == NULL)                                                              \
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;                                       \
        else if (be->name == NULL)                                                   \
            rv = CKR_FUNCTION_NOT_SUPPORTED;                                         \
        else                                                                         \
            rv = be->name args;                                                      \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_return(#name, rv);                                        \
        return rv;                                                                   \
    }                                                                                \
    CK_RV guardian_fwd_##name params                                                 \
    {                                                                                \
        CK_FUNCTION_LIST *be = guardian_backend_list();                              \
        if (GUARDIAN_LIKELY(be != NULL && be->name != NULL &&                        \
                            !atomic_load_explicit(&guardian_trace_on,                \
                                                  memory_order_relaxed)))           \
            return be->name args;                                                    \
        return slow_##name args;                                                     \
    }

#define GUARDIAN_FORWARDER_3_0(name, params, args)                                   \
    static __attribute__((noinline, cold)) CK_RV slow_##name params                  \
    {                                                                                \
        CK_FUNCTION_LIST_3_0 *be3 = guardian_backend_list3();                        \
        CK_RV rv;                                                                    \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_enter(#name);                                             \
        if (guardian_backend_list() == NULL)                                         \
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;                                       \
        else if (be3 == NULL || be3->name == NULL)                                   \
            rv = CKR_FUNCTION_NOT_SUPPORTED;                                         \
        else                                                                         \
            rv = be3->name args;                                                     \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_return(#name, rv);                                        \
        return rv;                                                                   \
    }                                                                                \
    CK_RV guardian_fwd_##name params                                                 \
    {                                                                                \
        CK_FUNCTION_LIST_3_0 *be3 = guardian_backend_list3();                        \
        if (GUARDIAN_LIKELY(be3 != NULL && be3->name != NULL &&                      \
                            guardian_backend_list() != NULL &&                       \
                            !atomic_load_explicit(&guardian_trace_on,                \
                                                  memory_order_relaxed)))           \
            return be3->name args;                                                   \
        return slow_##name args;                                                     \
    }

/* The same, for a call that names a key: the hot path also asks the policy's
 * cache (policy.c) whether the key is one the call may use; anything else —
 * an uncached handle, a Guardian object — takes the cold path, which
 * classifies the object and refuses what the policy refuses. */
#define GUARDIAN_FORWARDER_KEYED_2_40(name, params, args)                            \
    static __attribute__((noinline, cold)) CK_RV slow_##name params                  \
    {                                                                                \
        CK_FUNCTION_LIST *be = guardian_backend_list();                              \
        CK_RV rv;                                                                    \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_enter(#name);                                             \
        if (be == NULL)                                                              \
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;                                       \
        else if (be->name == NULL)                                                   \
            rv = CKR_FUNCTION_NOT_SUPPORTED;                                         \
        else if ((rv = guardian_policy_check(be, a, GUARDIAN_KEY_##name,             \
                                             GUARDIAN_OPOF_##name, #name)) == CKR_OK && \
                 (rv = guardian_service_mechanism_check(GUARDIAN_MECH_##name, #name)) == CKR_OK) \
            rv = be->name args;                                                      \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_return(#name, rv);                                        \
        return rv;                                                                   \
    }                                                                                \
    CK_RV guardian_fwd_##name params                                                 \
    {                                                                                \
        CK_FUNCTION_LIST *be = guardian_backend_list();                              \
        if (GUARDIAN_LIKELY(be != NULL && be->name != NULL &&                        \
                            !atomic_load_explicit(&guardian_trace_on,                \
                                                  memory_order_relaxed) &&          \
                            guardian_policy_fast(GUARDIAN_KEY_##name) &&             \
                            guardian_mech_fast(GUARDIAN_MECH_##name)))               \
            return be->name args;                                                    \
        return slow_##name args;                                                     \
    }

#define GUARDIAN_FORWARDER_KEYED_3_0(name, params, args)                             \
    static __attribute__((noinline, cold)) CK_RV slow_##name params                  \
    {                                                                                \
        CK_FUNCTION_LIST_3_0 *be3 = guardian_backend_list3();                        \
        CK_FUNCTION_LIST *be = guardian_backend_list();                              \
        CK_RV rv;                                                                    \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_enter(#name);                                             \
        if (be == NULL)                                                              \
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;                                       \
        else if (be3 == NULL || be3->name == NULL)                                   \
            rv = CKR_FUNCTION_NOT_SUPPORTED;                                         \
        else if ((rv = guardian_policy_check(be, a, GUARDIAN_KEY_##name,             \
                                             GUARDIAN_OPOF_##name, #name)) == CKR_OK && \
                 (rv = guardian_service_mechanism_check(GUARDIAN_MECH_##name, #name)) == CKR_OK) \
            rv = be3->name args;                                                     \
        if (atomic_load_explicit(&guardian_trace_on, memory_order_relaxed))          \
            guardian_trace_return(#name, rv);                                        \
        return rv;                                                                   \
    }                                                                                \
    CK_RV guardian_fwd_##name params                                                 \
    {                                                                                \
        CK_FUNCTION_LIST_3_0 *be3 = guardian_backend_list3();                        \
        if (GUARDIAN_LIKELY(be3 != NULL && be3->name != NULL &&                      \
                            guardian_backend_list() != NULL &&                       \
                            !atomic_load_explicit(&guardian_trace_on,                \
                                                  memory_order_relaxed) &&          \
                            guardian_policy_fast(GUARDIAN_KEY_##name) &&             \
                            guardian_mech_fast(GUARDIAN_MECH_##name)))               \
            return be3->name args;                                                   \
        return slow_##name args;                                                     \
    }

GUARDIAN_FORWARD_2_40_PLAIN(GUARDIAN_FORWARDER_2_40)
GUARDIAN_FORWARD_2_40_CREDENTIALS(GUARDIAN_FORWARDER_2_40)
GUARDIAN_FORWARD_2_40_KEYED(GUARDIAN_FORWARDER_KEYED_2_40)
GUARDIAN_FORWARD_3_0_PLAIN(GUARDIAN_FORWARDER_3_0)
GUARDIAN_FORWARD_3_0_CREDENTIALS(GUARDIAN_FORWARDER_3_0)
GUARDIAN_FORWARD_3_0_KEYED(GUARDIAN_FORWARDER_KEYED_3_0)
