/*
 * fake_backend.h — a scriptable fake PKCS#11 backend for the unit tests.
 *
 * Built twice as a shared library: libfake240.so exports C_GetFunctionList only
 * and, like SoftHSMv2 2.6.1, puts 3.1 in its 2.40 list's version field;
 * libfake30.so also exports C_GetInterface with a real 3.0 list.  The module
 * under test dlopens it through GUARDIAN_BACKEND; the test links the same
 * library and reads/scripts it through fake_backend().
 */
#ifndef GUARDIAN_FAKE_BACKEND_H
#define GUARDIAN_FAKE_BACKEND_H

#include <stdatomic.h>

#include "p11.h"

#define FAKE_MAX_MECHS 16

struct fake_backend {
    /* scripted */
    CK_RV rv;                  /* what forwarded functions return */
    CK_RV init_rv;             /* what C_Initialize returns when not initialized */
    unsigned init_delay_us;    /* widen the window of a C_Initialize race */
    CK_MECHANISM_TYPE mechs[FAKE_MAX_MECHS];
    CK_ULONG n_mechs;
    CK_FLAGS mech_info_flags;  /* ORed into the caller's struct, as SoftHSM does */
    /* The class every object has when the module's policy (module/policy.c)
     * classifies it: one-attribute reads of CKA_CLASS answer it, of CKA_LABEL,
     * CKA_ID, CKA_APPLICATION and CKA_TRUSTED without a buffer "no such
     * attribute", and none of
     * them is recorded as a forwarded call.  CKO_SECRET_KEY after
     * fake_backend_reset(): every object is the operator's. */
    CK_OBJECT_CLASS object_class;

    /* recorded */
    atomic_int initialized;
    atomic_int init_calls;
    atomic_int finalize_calls;
    CK_VOID_PTR last_init_args;        /* the pointer received */
    CK_C_INITIALIZE_ARGS last_init_copy; /* what it pointed to (zeros for NULL) */
    char last_init_reserved[1100];     /* the string pReserved pointed to ("" for NULL) */
    const char *last_name;     /* last forwarded function reached */
    CK_ULONG last_a;           /* its first argument */
    CK_ULONG calls;
    CK_MECHANISM_TYPE last_mechanism;
};

struct fake_backend *fake_backend(void);
/* The fake's own lists, to script NULL entries. */
CK_FUNCTION_LIST *fake_backend_list(void);
CK_FUNCTION_LIST_3_0 *fake_backend_list3(void);
void fake_backend_reset(void);

#endif
