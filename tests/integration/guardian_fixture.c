/*
 * guardian_fixture.c — see guardian_fixture.h.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
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

const char *test_path(const char *dir, const char *name)
{
    static char buf[8][PATH_MAX];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, PATH_MAX, "%s/%s", dir, name);
    return p;
}

unsigned char *test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

CK_ULONG test_count_objects(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE h[256];
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, NULL, 0), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 256, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    return n;
}
