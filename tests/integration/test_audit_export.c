/*
 * test_audit_export.c — CKG_GUARDIAN_REQ_AUDIT_EXPORT through guardian-pkcs11.so
 * over a real SoftHSMv2 token: the module builds the audit report and signs it
 * with the Guardian identity key; the caller gets a read-only output object.
 *
 * Setup per test: a fresh token; the Guardian identity made by the module
 * (CKG_GUARDIAN_REQ_IDENTITY); the OEM root enrolled by the SO; one package
 * (make_packages.sh, guardian-wrap) imported, so the trail has a record and
 * the store a product.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
/* after softhsm_token.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static X509 *identity; /* the Guardian (agreement) certificate the module made: what OEMs wrap for */
static X509 *signing;  /* the Guardian's signing certificate: it issued `identity` and signs reports */
static char path_buf[PATH_MAX];

static const char *path(const char *name)
{
    snprintf(path_buf, sizeof(path_buf), "%s/%s", token.dir, name);
    return path_buf;
}

/* CKA_VALUE of `h`, length first (malloc'd, NUL-terminated). */
static unsigned char *value_of(CK_OBJECT_HANDLE h, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    a.pValue = malloc(a.ulValueLen + 1);
    assert_non_null(a.pValue);
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    ((unsigned char *)a.pValue)[a.ulValueLen] = '\0';
    *len = a.ulValueLen;
    return a.pValue;
}

static void make_identity(void)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_IDENTITY, len;
    CK_BYTE cn[] = "audit-export-test";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                        {CKA_LABEL, cn, sizeof(cn) - 1}};
    CK_OBJECT_HANDLE cert;
    unsigned char *der;
    const unsigned char *p;
    FILE *f;

    assert_int_equal(m->C_CreateObject(s, t, 3, &cert), CKR_OK);
    der = value_of(cert, &len);
    p = der;
    identity = d2i_X509(NULL, &p, (long)len);
    assert_non_null(identity);
    free(der);
    {
        CK_OBJECT_CLASS cert_cls = CKO_CERTIFICATE;
        CK_ATTRIBUTE find[] = {{CKA_CLASS, &cert_cls, sizeof(cert_cls)}, {CKA_ID, "guardian-signing", 16}};
        CK_OBJECT_HANDLE h;
        CK_ULONG n = 0;
        assert_int_equal(m->C_FindObjectsInit(s, find, 2), CKR_OK);
        assert_int_equal(m->C_FindObjects(s, &h, 1, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        assert_int_equal(n, 1);
        der = value_of(h, &len);
        p = der;
        signing = d2i_X509(NULL, &p, (long)len);
        assert_non_null(signing);
        free(der);
    }
    /* A is issued by S; S is self-signed; A agrees keys only, S signs. */
    assert_int_equal(X509_check_issued(signing, identity), X509_V_OK);
    assert_int_equal(X509_check_issued(signing, signing), X509_V_OK);
    assert_int_equal(X509_get_key_usage(identity), KU_KEY_AGREEMENT);
    assert_int_equal(X509_get_key_usage(signing), KU_DIGITAL_SIGNATURE | KU_KEY_CERT_SIGN);
    assert_int_equal(X509_check_ca(identity), 0);
    f = fopen(path("guardian.pem"), "w");
    assert_non_null(f);
    PEM_write_X509(f, identity);
    PEM_write_X509(f, signing);
    fclose(f);
}

static void import_good(void)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, "guardian-identity", 17}};
    CK_OBJECT_HANDLE key, obj;
    CK_ULONG n = 0;
    unsigned char *pkg = malloc(1 << 20);
    FILE *f = fopen(path("good.gpk"), "rb");
    size_t len;

    assert_non_null(f);
    len = fread(pkg, 1, 1 << 20, f);
    fclose(f);
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, &key, 1, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(m->C_UnwrapKey(s, &mech, key, pkg, (CK_ULONG)len, NULL, 0, &obj), CKR_OK);
    free(pkg);
}

static int setup(void **st)
{
    char cmd[PATH_MAX * 3];
    (void)st;

    assert_int_equal(test_token_create(&token, "audit"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    setenv("GUARDIAN_STATE_DIR", path("state"), 1);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    make_identity();
    snprintf(cmd, sizeof(cmd), "%s %s %s", getenv("GUARDIAN_TEST_MAKE_PACKAGES"), token.dir,
             getenv("GUARDIAN_TEST_WRAP"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    {
        CK_OBJECT_HANDLE root;
        assert_int_equal(test_enrol_root(m, slot, path("oem-root.pem"), "ACME", &root), CKR_OK);
    }
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    import_good();
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    m->C_CloseAllSessions(slot);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    X509_free(identity);
    X509_free(signing);
    identity = signing = NULL;
    test_token_destroy(&token);
    return 0;
}

/* C_CreateObject of the export request, scoped when oem/product are given. */
static CK_RV export(const char *oem, const char *product, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_AUDIT_EXPORT, n = 2;
    CK_ATTRIBUTE t[4] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    if (oem != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, (void *)oem, (CK_ULONG)strlen(oem)};
    if (product != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)};
    *out = CK_INVALID_HANDLE;
    return m->C_CreateObject(s, t, n, out);
}

/* The report's last line is "signature BASE64": a DER ECDSA-Sig-Value over
 * every byte before it, by the key of the signing certificate (not the
 * agreement key, which cannot sign). */
static void assert_signed_by_identity(const unsigned char *r, size_t len)
{
    const char *sig_line, *b64;
    unsigned char der[256];
    size_t tbs_len, b64_len;
    int der_len;
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    assert_true(len > 1 && r[len - 1] == '\n');
    sig_line = strstr((const char *)r, "\nsignature ");
    assert_non_null(sig_line);
    sig_line++;
    tbs_len = (size_t)(sig_line - (const char *)r);
    b64_len = len - 1 - tbs_len - strlen("signature ");
    assert_true(b64_len > 0 && b64_len < 4 * sizeof(der) / 3);
    b64 = sig_line + strlen("signature ");
    der_len = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)b64_len);
    assert_true(der_len > 0);
    der_len -= (b64[b64_len - 1] == '=') + (b64[b64_len - 2] == '='); /* EVP_DecodeBlock keeps the padding */
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(signing)), 1);
    assert_int_equal(EVP_DigestVerify(md, der, (size_t)der_len, r, tbs_len), 1);
    {
        /* Not the agreement key (a context of its own: a re-initialised one
         * may keep the previous key). */
        EVP_MD_CTX *other = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestVerifyInit(other, NULL, EVP_sha256(), NULL, X509_get0_pubkey(identity)), 1);
        assert_int_not_equal(EVP_DigestVerify(other, der, (size_t)der_len, r, tbs_len), 1);
        EVP_MD_CTX_free(other);
        ERR_clear_error();
    }
    /* One byte changed: the signature no longer holds. */
    {
        unsigned char *copy = malloc(tbs_len);
        memcpy(copy, r, tbs_len);
        copy[tbs_len / 2] ^= 1;
        assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(signing)), 1);
        assert_int_not_equal(EVP_DigestVerify(md, der, (size_t)der_len, copy, tbs_len), 1);
        free(copy);
    }
    EVP_MD_CTX_free(md);
}

/* The Guardian certificates, A then S, as PEM_write_X509 writes them, follow
 * the head line. */
static void assert_holds_identity_pem(const unsigned char *r)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *pem, *copy, *at;
    long n;
    assert_int_equal(PEM_write_bio_X509(b, identity), 1);
    assert_int_equal(PEM_write_bio_X509(b, signing), 1);
    n = BIO_get_mem_data(b, &pem);
    assert_true(n > 0);
    copy = strndup(pem, (size_t)n);
    at = strstr((const char *)r, copy);
    assert_non_null(at);
    assert_memory_equal(at + n, "product ", 8);
    free(copy);
    BIO_free(b);
}

static void test_export_signed(void **st)
{
    CK_OBJECT_HANDLE h;
    CK_ULONG len;
    unsigned char *r;
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    r = value_of(h, &len);
    assert_int_equal(strlen((char *)r), len);
    assert_memory_equal(r, "GUARDIAN AUDIT REPORT 2\nexported ", 33);
    assert_non_null(strstr((char *)r, "\nscope all\nhead 1 "));
    assert_non_null(strstr((char *)r, "\nproduct ACME SENSOR-1 3 "));
    assert_non_null(strstr((char *)r, "\nrecord 1 IMPORT "));
    assert_holds_identity_pem(r);
    assert_signed_by_identity(r, len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);

    /* Restricted to the product: the same record in clear, scope named. */
    assert_int_equal(export("ACME", "SENSOR-1", &h), CKR_OK);
    r = value_of(h, &len);
    assert_non_null(strstr((char *)r, "\nscope ACME/SENSOR-1\nhead 1 "));
    assert_non_null(strstr((char *)r, "\nrecord 1 IMPORT "));
    assert_signed_by_identity(r, len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);

    /* Restricted to another OEM's product that this Guardian does not have. */
    assert_int_equal(export("BETA", "SENSOR-1", &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(export("ACME", "NOPE", &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
}

static void test_export_refusals(void **st)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_AUDIT_EXPORT;
    CK_BYTE bytes[] = "bytes to sign";
    CK_ATTRIBUTE with_value[] = {{CKA_CLASS, &cls, sizeof(cls)},
                                 {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                                 {CKA_VALUE, bytes, sizeof(bytes) - 1}};
    CK_OBJECT_HANDLE h;
    (void)st;

    /* Both scope attributes or neither. */
    assert_int_equal(export("ACME", NULL, &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(export(NULL, "SENSOR-1", &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(export("", "SENSOR-1", &h), CKR_ATTRIBUTE_VALUE_INVALID);
    /* The request takes no bytes from the caller. */
    assert_int_equal(m->C_CreateObject(s, with_value, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
    /* A user session is needed. */
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(export(NULL, NULL, &h), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
}

static void test_output_read_and_destroy_only(void **st)
{
    CK_OBJECT_HANDLE h, copy;
    CK_BYTE label[] = "mine", forged[] = "GUARDIAN AUDIT REPORT 2\n";
    CK_BBOOL yes = CK_TRUE, priv = CK_FALSE, token_obj = CK_TRUE;
    CK_OBJECT_CLASS cls = 0;
    char got[64];
    CK_ATTRIBUTE set_label = {CKA_LABEL, label, sizeof(label) - 1};
    CK_ATTRIBUTE set_value = {CKA_VALUE, forged, sizeof(forged) - 1};
    CK_ATTRIBUTE make_token = {CKA_TOKEN, &yes, sizeof(yes)};
    CK_ATTRIBUTE read[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, got, sizeof(got)},
                           {CKA_PRIVATE, &priv, sizeof(priv)}, {CKA_TOKEN, &token_obj, sizeof(token_obj)}};
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, read, 4), CKR_OK);
    assert_int_equal(cls, CKO_DATA);
    assert_int_equal(read[1].ulValueLen, strlen("guardian-output:audit-report"));
    assert_memory_equal(got, "guardian-output:audit-report", read[1].ulValueLen);
    assert_int_equal(priv, CK_TRUE);
    assert_int_equal(token_obj, CK_FALSE);
    /* Neither changed nor copied into something else. */
    assert_int_equal(m->C_SetAttributeValue(s, h, &set_label, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, h, &set_value, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CopyObject(s, h, &make_token, 1, &copy), CKR_ACTION_PROHIBITED);
    /* Destroyed by the caller; gone. */
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, read, 1), CKR_OBJECT_HANDLE_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_export_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_read_and_destroy_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
