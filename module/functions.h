/*
 * functions.h — the PKCS#11 functions the module forwards unchanged, as X-macros.
 *
 * X(name, (parameter list), (argument list))
 *
 * Everything not listed here carries Guardian behaviour and is written by hand in
 * entry.c (C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList,
 * C_GetMechanismList, C_GetMechanismInfo, C_UnwrapKey, C_DeriveKey,
 * C_GetInterfaceList, C_GetInterface).  forward.c expands the PLAIN list into
 * one pass-through each; the OBJECTS list is written by hand in entry.c because
 * package objects (package_objects.c) live in the module.  The whole 2.40 list
 * is what the unit tests' fake backend implements.
 */
#ifndef GUARDIAN_FUNCTIONS_H
#define GUARDIAN_FUNCTIONS_H

/* Passed through unchanged. */
#define GUARDIAN_FORWARD_2_40_PLAIN(X) \
    X(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_GetSlotInfo, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b)) \
    X(C_OpenSession, (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), \
      (a, b, c, d, e)) \
    X(C_GetSessionInfo, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b)) \
    X(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_DecryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_DecryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b), (a, b)) \
    X(C_Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_Sign, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_SignUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_SignFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), \
      (a, b, c, d, e)) \
    X(C_VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (a, b, c, d, e)) \
    X(C_DigestEncryptUpdate, \
      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e)) \
    X(C_DecryptDigestUpdate, \
      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e)) \
    X(C_SignEncryptUpdate, \
      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e)) \
    X(C_DecryptVerifyUpdate, \
      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e)) \
    X(C_SeedRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_GetFunctionStatus, (CK_SESSION_HANDLE a), (a)) \
    X(C_CancelFunction, (CK_SESSION_HANDLE a), (a)) \
    X(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

/* Written by hand in credentials.c: in service mode (docs/service-mode.md) the
 * Guardian's own credentials, never forwarded; passed through otherwise. */
#define GUARDIAN_FORWARD_2_40_CREDENTIALS(X) \
    X(C_GetTokenInfo, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b)) \
    X(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d)) \
    X(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e), \
      (a, b, c, d, e)) \
    X(C_Login, (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d), (a, b, c, d))

#define GUARDIAN_FORWARD_3_0_CREDENTIALS(X)                                                                  \
    X(C_LoginUser,                                                                                     \
      (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d, CK_UTF8CHAR_PTR e, CK_ULONG f), \
      (a, b, c, d, e, f))

/* Passed through once the policy (policy.c) allows the key the call names:
 * GUARDIAN_KEY_<name> is that argument, GUARDIAN_OP_<name> what the call does
 * with it.  The session is always `a`. */
#define GUARDIAN_FORWARD_2_40_KEYED(X) \
    X(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_DecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b)) \
    X(C_SignInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_VerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))

#define GUARDIAN_FORWARD_3_0_KEYED(X) \
    X(C_MessageEncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_MessageDecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_MessageSignInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c)) \
    X(C_MessageVerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))

/* GUARDIAN_MECH_<name>: the mechanism the call names (NULL: none). */
#define GUARDIAN_MECH_C_EncryptInit b
#define GUARDIAN_MECH_C_DecryptInit b
#define GUARDIAN_MECH_C_DigestKey NULL
#define GUARDIAN_MECH_C_SignInit b
#define GUARDIAN_MECH_C_SignRecoverInit b
#define GUARDIAN_MECH_C_VerifyInit b
#define GUARDIAN_MECH_C_VerifyRecoverInit b
#define GUARDIAN_MECH_C_MessageEncryptInit b
#define GUARDIAN_MECH_C_MessageDecryptInit b
#define GUARDIAN_MECH_C_MessageSignInit b
#define GUARDIAN_MECH_C_MessageVerifyInit b
#define GUARDIAN_KEY_C_EncryptInit c
#define GUARDIAN_OPOF_C_EncryptInit GUARDIAN_OP_ENCRYPT
#define GUARDIAN_KEY_C_DecryptInit c
#define GUARDIAN_OPOF_C_DecryptInit GUARDIAN_OP_DECRYPT
#define GUARDIAN_KEY_C_DigestKey b
#define GUARDIAN_OPOF_C_DigestKey GUARDIAN_OP_DIGEST_KEY
#define GUARDIAN_KEY_C_SignInit c
#define GUARDIAN_OPOF_C_SignInit GUARDIAN_OP_SIGN
#define GUARDIAN_KEY_C_SignRecoverInit c
#define GUARDIAN_OPOF_C_SignRecoverInit GUARDIAN_OP_SIGN_RECOVER
#define GUARDIAN_KEY_C_VerifyInit c
#define GUARDIAN_OPOF_C_VerifyInit GUARDIAN_OP_VERIFY
#define GUARDIAN_KEY_C_VerifyRecoverInit c
#define GUARDIAN_OPOF_C_VerifyRecoverInit GUARDIAN_OP_VERIFY_RECOVER
#define GUARDIAN_KEY_C_MessageEncryptInit c
#define GUARDIAN_OPOF_C_MessageEncryptInit GUARDIAN_OP_ENCRYPT
#define GUARDIAN_KEY_C_MessageDecryptInit c
#define GUARDIAN_OPOF_C_MessageDecryptInit GUARDIAN_OP_DECRYPT
#define GUARDIAN_KEY_C_MessageSignInit c
#define GUARDIAN_OPOF_C_MessageSignInit GUARDIAN_OP_SIGN
#define GUARDIAN_KEY_C_MessageVerifyInit c
#define GUARDIAN_OPOF_C_MessageVerifyInit GUARDIAN_OP_VERIFY

/* Written by hand in entry.c (the policy checks more than one key, or a
 * template; C_CreateObject also takes Guardian requests); passed through as
 * they are otherwise. */
#define GUARDIAN_FORWARD_2_40_GUARDED(X) \
    X(C_CreateObject, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), \
      (a, b, c, d)) \
    X(C_SetOperationState, \
      (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e), \
      (a, b, c, d, e)) \
    X(C_GenerateKey, \
      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), \
      (a, b, c, d, e)) \
    X(C_GenerateKeyPair, \
      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, \
       CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h), \
      (a, b, c, d, e, f, g, h)) \
    X(C_WrapKey, \
      (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, \
       CK_ULONG_PTR f), \
      (a, b, c, d, e, f))


/* Passed through unless the object is one of the module's own (package_objects.c,
 * cert_objects.c); C_Logout and the session closers also tell the vendor
 * mechanisms that handles they cached may no longer name the same object. */
#define GUARDIAN_FORWARD_2_40_OBJECTS(X) \
    X(C_Logout, (CK_SESSION_HANDLE a), (a)) \
    X(C_CloseSession, (CK_SESSION_HANDLE a), (a)) \
    X(C_CloseAllSessions, (CK_SLOT_ID a), (a)) \
    X(C_CopyObject, \
      (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), \
      (a, b, c, d, e)) \
    X(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b)) \
    X(C_GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c)) \
    X(C_GetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), \
      (a, b, c, d)) \
    X(C_SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), \
      (a, b, c, d)) \
    X(C_FindObjectsInit, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c)) \
    X(C_FindObjects, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), \
      (a, b, c, d)) \
    X(C_FindObjectsFinal, (CK_SESSION_HANDLE a), (a))

#define GUARDIAN_FORWARD_2_40(X) \
    GUARDIAN_FORWARD_2_40_PLAIN(X) GUARDIAN_FORWARD_2_40_CREDENTIALS(X) GUARDIAN_FORWARD_2_40_KEYED(X) \
    GUARDIAN_FORWARD_2_40_GUARDED(X) GUARDIAN_FORWARD_2_40_OBJECTS(X)

/* The functions PKCS#11 3.0 added, other than the interface queries. */
#define GUARDIAN_FORWARD_3_0(X) \
    GUARDIAN_FORWARD_3_0_PLAIN(X) GUARDIAN_FORWARD_3_0_CREDENTIALS(X) GUARDIAN_FORWARD_3_0_KEYED(X)
#define GUARDIAN_FORWARD_3_0_PLAIN(X)                                                                        \
    X(C_SessionCancel, (CK_SESSION_HANDLE a, CK_FLAGS b), (a, b))                                        \
    X(C_EncryptMessage,                                                                                \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG g, CK_BYTE_PTR h, CK_ULONG_PTR i),                                                     \
      (a, b, c, d, e, f, g, h, i))                                                                     \
    X(C_EncryptMessageBegin, (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), \
      (a, b, c, d, e))                                                                                 \
    X(C_EncryptMessageNext,                                                                            \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG_PTR g, CK_FLAGS h),                                                                    \
      (a, b, c, d, e, f, g, h))                                                                        \
    X(C_MessageEncryptFinal, (CK_SESSION_HANDLE a), (a))                                               \
    X(C_DecryptMessage,                                                                                \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG g, CK_BYTE_PTR h, CK_ULONG_PTR i),                                                     \
      (a, b, c, d, e, f, g, h, i))                                                                     \
    X(C_DecryptMessageBegin, (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), \
      (a, b, c, d, e))                                                                                 \
    X(C_DecryptMessageNext,                                                                            \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG_PTR g, CK_FLAGS h),                                                                    \
      (a, b, c, d, e, f, g, h))                                                                        \
    X(C_MessageDecryptFinal, (CK_SESSION_HANDLE a), (a))                                               \
    X(C_SignMessage,                                                                                   \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG_PTR g),                                                                                \
      (a, b, c, d, e, f, g))                                                                           \
    X(C_SignMessageBegin, (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c), (a, b, c))                   \
    X(C_SignMessageNext,                                                                               \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG_PTR g),                                                                                \
      (a, b, c, d, e, f, g))                                                                           \
    X(C_MessageSignFinal, (CK_SESSION_HANDLE a), (a))                                                  \
    X(C_VerifyMessage,                                                                                 \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG g),                                                                                    \
      (a, b, c, d, e, f, g))                                                                           \
    X(C_VerifyMessageBegin, (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c), (a, b, c))                 \
    X(C_VerifyMessageNext,                                                                             \
      (CK_SESSION_HANDLE a, CK_VOID_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e, CK_BYTE_PTR f,         \
       CK_ULONG g),                                                                                    \
      (a, b, c, d, e, f, g))                                                                           \
    X(C_MessageVerifyFinal, (CK_SESSION_HANDLE a), (a))

#endif /* GUARDIAN_FUNCTIONS_H */
