/*
 * registry.h — what mechs/ owns: the Guardian vendor mechanisms, one file each,
 * listed in one table (registry.c).
 *
 * Adding a mechanism = one mechs/<name>.c holding a const struct guardian_mech,
 * one line in registry.c, its number in include/guardian/guardian-pkcs11.h, and
 * tests.  module/entry.c consults the registry for C_GetMechanismList,
 * C_GetMechanismInfo, C_UnwrapKey and C_DeriveKey; mechs/ may call the backend
 * through the list it is given, the store it is given, and module/'s logging —
 * no other module/ internals.
 */
#ifndef GUARDIAN_MECHS_REGISTRY_H
#define GUARDIAN_MECHS_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

#include "p11.h"

struct guardian_store;

typedef CK_RV (*guardian_unwrap_fn)(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                    CK_MECHANISM *mech,
                                    CK_OBJECT_HANDLE unwrapping_key, CK_BYTE *wrapped, CK_ULONG wrapped_len,
                                    CK_ATTRIBUTE *templ, CK_ULONG count, CK_OBJECT_HANDLE *out);
typedef CK_RV (*guardian_derive_fn)(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                    CK_MECHANISM *mech,
                                    CK_OBJECT_HANDLE base_key, CK_ATTRIBUTE *templ, CK_ULONG count,
                                    CK_OBJECT_HANDLE *out);

struct guardian_mech {
    CK_MECHANISM_TYPE type;
    const char *name;
    CK_MECHANISM_INFO info;
    /* Backend mechanisms the slot must list, all of them, for this one to be
     * advertised there when its self-test cannot decide (below). */
    const CK_MECHANISM_TYPE *requires;
    size_t n_requires;
    /* ... and at least one of these, when there are any (derive: CKM_ECDSA
     * or CKM_RSA_PKCS, the production CA's signature). */
    const CK_MECHANISM_TYPE *requires_one_of;
    size_t n_requires_one_of;
    /* The self-test of the primitives it needs, on session objects of
     * session `s` (selftest.c): GUARDIAN_SELFTEST_PASS, _FAIL (a primitive
     * does not work: `why` says which), or _UNKNOWN (it could not be tried:
     * no session, a login needed; `why` says why).  NULL: none, the list
     * rule alone. */
    int (*selftest)(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len);
    /* Exactly one is set once the mechanism is implemented; while neither is,
     * the mechanism is reserved but never advertised, and calling it gives
     * CKR_MECHANISM_INVALID. */
    guardian_unwrap_fn unwrap;
    guardian_derive_fn derive;
    /* Optional: C_Finalize is closing the store; give back what the
     * mechanism holds (the derive mechanism's reserved, unused units). */
    void (*finalize)(struct guardian_store *st);
    /* Optional: object `h` was destroyed, or (CK_INVALID_HANDLE) a logout or
     * a closed session may have invalidated every handle: forget what was
     * cached about them.  Called on those calls' paths: must be cheap. */
    void (*forget)(CK_OBJECT_HANDLE h);
    /* Optional: in a fork() child (the pthread_atfork child handler, before
     * anything else runs there): re-initialise the mechanism's locks, which
     * another parent thread may have held at fork time. */
    void (*atfork_child)(void);
};

extern const struct guardian_mech guardian_mech_unwrap_package;
extern const struct guardian_mech guardian_mech_derive_device_cert;

/* The registered mechanism with this number, or NULL. */
const struct guardian_mech *guardian_mech_find(CK_MECHANISM_TYPE type);
size_t guardian_mech_count(void);
const struct guardian_mech *guardian_mech_at(size_t i);

/* Every mechanism's finalize hook, before C_Finalize closes the store. */
void guardian_mechs_finalize(struct guardian_store *st);
/* Every mechanism's forget hook. */
void guardian_mechs_forget(CK_OBJECT_HANDLE h);
/* Every mechanism's atfork_child hook. */
void guardian_mechs_atfork_child(void);

/* True when `m` is implemented, every primitive it requires is among the `n`
 * backend mechanisms `available` and, when it names any, one of its
 * `requires_one_of` too (the list rule). */
bool guardian_mech_available(const struct guardian_mech *m, const CK_MECHANISM_TYPE *available, size_t n);

/* ---- advertising by self-test (selftest.c) -------------------------------- */

enum { GUARDIAN_SELFTEST_PASS = 1, GUARDIAN_SELFTEST_FAIL = 2, GUARDIAN_SELFTEST_UNKNOWN = 3 };

/* Whether `m` is advertised (and callable) on `slot`: the result of its
 * self-test there, run once per slot for every mechanism in one session of
 * the slot and kept until guardian_mechs_selftest_reset(); while the test
 * cannot decide (it is then run again next time), the list rule over the
 * slot's `n` mechanisms `list` (read from the backend when `list` is NULL).
 * Never true for a mechanism that is not implemented. */
bool guardian_mech_advertised(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, const struct guardian_mech *m,
                              const CK_MECHANISM_TYPE *list, size_t n);
/* Forget every result (C_Initialize, C_Finalize: the next look tests again). */
void guardian_mechs_selftest_reset(void);
/* A C_Login, C_Logout or closed session changed the login state: test the
 * undecided mechanisms again at their next look. */
void guardian_mechs_selftest_login_changed(void);
/* In a fork child: the results' lock may have been held by another parent thread. */
void guardian_selftest_atfork_child(void);
/* Whether the token of `session` (a plain user's) keeps CKA_TRUSTED TRUE for
 * its Security Officer: a session certificate with it is refused there while
 * the same certificate without it is made (in a read-only session of the
 * module's own on the same slot, closed at once).  Tried
 * once per slot until C_Finalize/C_Initialize; false, with the reason in
 * `why`, where a plain user can set it (tpm2-pkcs11, NSS softoken) or where
 * it cannot be seen.  The import counts enrolled roots only where it is true
 * (docs/threat-model.md). */
bool guardian_trusted_so_only(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, char *why, size_t why_len);
/* What the key transports of an import need on a slot, measured by the
 * unwrap self-test (each scheme on its own, known answers): which schemes
 * work (1u << GUARDIAN_KT_*), the number RFC 5649 has there (0x210A on
 * SoftHSM, 0x210B on NSS; 0 none found), and whether an EC private-key
 * unwrap needs CKA_NSS_DB.  state 0 / GUARDIAN_SELFTEST_*: like the self-test. */
struct guardian_transport_facts {
    int state;
    unsigned schemes;
    CK_MECHANISM_TYPE kwp;
    bool nss_db;
    bool partial; /* one scheme passed, another could not be tried now */
};
void guardian_transport_facts(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, struct guardian_transport_facts *out);
/* The agreement certificate `x` (being made in session `s`) states what the
 * session's slot measured: id-guardian-transports (transport.h), strongest
 * first; nothing when it could not be measured now.  1, or 0 (no memory). */
typedef struct x509_st X509;
int guardian_transport_state_in_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, X509 *x);
/* C_DestroyObject of `h` is allowed by the policy: when it is an enrolled
 * root's certificate and the Guardian keeps roots in its ledger (service
 * mode, the SO as the backend's user), remove the root from the ledger and
 * record that first (mechs/enrol_root.c).  CKR_OK when there is nothing to
 * do; otherwise the object must not be destroyed. */
CK_RV guardian_root_destroying(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h);
/* The self-tests themselves, for the mechanisms' tables. */
int guardian_selftest_unwrap_package(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len);
int guardian_selftest_derive_device_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len);
/* The RSA-OAEP transport's primitives alone (id-guardian-kt-rsaoaep-sha256-v1:
 * OAEP-SHA256 with a label honoured, CBC-PAD unwrap under the KEK), in
 * session `s`: GUARDIAN_SELFTEST_PASS, _FAIL or _UNKNOWN, the reason in
 * `why`.  What an RSA Guardian's certificate may list as a transport where
 * it passes (SoftHSM 2.6: it fails, OAEP there is SHA-1 only). */
int guardian_selftest_rsa_oaep(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len);

/* Up to `max` handles of the objects matching `templ`, found through the
 * backend list (the mechanisms' own searches, never the caller's). */
CK_RV guardian_backend_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE *templ, CK_ULONG n,
                            CK_OBJECT_HANDLE *found, CK_ULONG max, CK_ULONG *count);

#endif /* GUARDIAN_MECHS_REGISTRY_H */
