/*
 * tpm_like_shim.c — SoftHSM as the Guardian's trusted-certificate check sees
 * tpm2-pkcs11: a test module that loads the backend named by
 * TPM_LIKE_SHIM_MODULE and hands out its 2.x function list, copied, with one
 * entry replaced: C_CreateObject of a session (CKA_TOKEN false or absent)
 * certificate in a read-only session answers CKR_SESSION_READ_ONLY, as
 * tpm2-pkcs11 1.9 does (it makes no session object in a read-only session;
 * docs/backends.md).  Then the module cannot see that CKA_TRUSTED is the
 * SO's (mechs/selftest.c guardian_trusted_so_only is false) and keeps the
 * enrolled roots in its ledger, while SoftHSM still makes the EC identity
 * that tpm2-pkcs11 does not (tests/backends/test_enrol.sh softhsm-ledger).
 * With TPM_LIKE_SHIM_KEYGEN set, C_GenerateKeyPair is replaced too:
 *   tpm      refused (CKR_GENERAL_ERROR) as tpm2-pkcs11 1.9 refuses it: a
 *            public template with CKA_VERIFY or CKA_ENCRYPT (its own mapping
 *            of the TPM's bits), or a private key with neither CKA_SIGN nor
 *            CKA_DECRYPT TRUE (a TPM key needs one); else SoftHSM's;
 *   addsign  the private key made with CKA_SIGN TRUE whatever the template
 *            says (a token that adds a usage quietly).
 * Every other pointer is SoftHSM's own.  A test tool only: never installed.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "test_p11.h"

#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *dl;
static CK_FUNCTION_LIST list2;
static CK_C_CreateObject backend_create;

static CK_RV shim_create(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    CK_SESSION_INFO si;
    bool cert = false, token = false;
    for (CK_ULONG i = 0; t != NULL && i < n; i++) {
        if (t[i].type == CKA_CLASS && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS))
            cert = *(CK_OBJECT_CLASS *)t[i].pValue == CKO_CERTIFICATE;
        if (t[i].type == CKA_TOKEN && t[i].pValue != NULL && t[i].ulValueLen == 1)
            token = *(CK_BBOOL *)t[i].pValue == CK_TRUE;
    }
    if (cert && !token && list2.C_GetSessionInfo(s, &si) == CKR_OK && !(si.flags & CKF_RW_SESSION))
        return CKR_SESSION_READ_ONLY;
    return backend_create(s, t, n, out);
}

static CK_C_GenerateKeyPair backend_generate;

static const CK_ATTRIBUTE *attr(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; t != NULL && i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

static bool is_true(const CK_ATTRIBUTE *a)
{
    return a != NULL && a->pValue != NULL && a->ulValueLen == 1 && *(CK_BBOOL *)a->pValue == CK_TRUE;
}

static CK_RV shim_generate(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub, CK_ULONG n_pub,
                           CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv, CK_OBJECT_HANDLE_PTR h_pub,
                           CK_OBJECT_HANDLE_PTR h_priv)
{
    const char *mode = getenv("TPM_LIKE_SHIM_KEYGEN");
    if (mode != NULL && strcmp(mode, "tpm") == 0) {
        if (attr(pub, n_pub, CKA_VERIFY) != NULL || attr(pub, n_pub, CKA_ENCRYPT) != NULL ||
            (!is_true(attr(priv, n_priv, CKA_SIGN)) && !is_true(attr(priv, n_priv, CKA_DECRYPT))))
            return CKR_GENERAL_ERROR;
    } else if (mode != NULL && strcmp(mode, "addsign") == 0 && n_priv < 32) {
        CK_ATTRIBUTE t[33];
        CK_BBOOL yes = CK_TRUE;
        CK_ULONG n = 0;
        for (CK_ULONG i = 0; i < n_priv; i++)
            if (priv[i].type != CKA_SIGN)
                t[n++] = priv[i];
        t[n++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, 1};
        return backend_generate(s, m, pub, n_pub, t, n, h_pub, h_priv);
    }
    return backend_generate(s, m, pub, n_pub, priv, n_priv, h_pub, h_priv);
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = test_shim_load("tpm_like_shim", "TPM_LIKE_SHIM_MODULE", &dl, &list2);
    if (rv == CKR_OK) {
        backend_create = list2.C_CreateObject;
        list2.C_CreateObject = shim_create;
        backend_generate = list2.C_GenerateKeyPair;
        list2.C_GenerateKeyPair = shim_generate;
        *out = &list2;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}
