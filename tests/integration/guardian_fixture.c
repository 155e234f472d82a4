/*
 * guardian_fixture.c — see guardian_fixture.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

CK_RV test_enrol_root(CK_FUNCTION_LIST *m, CK_SLOT_ID slot, const char *pem_path, const char *oem_ids,
                      CK_OBJECT_HANDLE *out)
{
    CK_SESSION_HANDLE so;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_ENROL_ROOT;
    FILE *f = fopen(pem_path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    unsigned char *der = NULL;
    int der_len = x ? i2d_X509(x, &der) : -1;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                        {CKA_VALUE, der, (CK_ULONG)der_len},
                        {CKA_GUARDIAN_OEM_IDS, (void *)oem_ids, (CK_ULONG)strlen(oem_ids)}};
    CK_RV rv;

    assert_true(der_len > 0);
    fclose(f);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &so), CKR_OK);
    assert_int_equal(m->C_Login(so, CKU_SO, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN)), CKR_OK);
    rv = m->C_CreateObject(so, t, 4, out);
    assert_int_equal(m->C_Logout(so), CKR_OK);
    assert_int_equal(m->C_CloseSession(so), CKR_OK);
    OPENSSL_free(der);
    X509_free(x);
    return rv;
}
