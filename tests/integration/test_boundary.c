/*
 * test_boundary.c — the Guardian boundary against a dishonest operator who
 * holds the user PIN (issue 8): through guardian-pkcs11.so over a real
 * SoftHSMv2 token, every standard call that would use, change, copy, destroy,
 * wrap, derive from or digest what the Guardian owns is refused, and leaves the
 * token unchanged; what the operator owns keeps working; OEM roots sign only
 * for their OEM IDs; the state cannot be rewound, deleted or redirected.
 *
 * Each test gets its own token and state directory; the Guardian identity is
 * made by the module (CKG_GUARDIAN_REQ_IDENTITY), the root enrolled by the SO
 * (CKG_GUARDIAN_REQ_ENROL_ROOT) and a package imported, as guardianctl does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static CK_OBJECT_HANDLE identity, ca_key, secret, root_cert, identity_cert;
static CK_OBJECT_HANDLE signing; /* the Guardian's signing key: sign only, and only by the module */
static void refind(void);

static const char *path(const char *name) { return test_path(token.dir, name); }

static unsigned char *slurp(const char *name, size_t *len) { return test_slurp(path(name), len); }

static CK_ULONG count_objects(void) { return test_count_objects(m, s); }

static CK_OBJECT_HANDLE find_one(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {type, (void *)value, len}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 2, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
    return h[0];
}

static CK_RV request(CK_SESSION_HANDLE session, CK_ULONG type, CK_ATTRIBUTE *extra, CK_ULONG n_extra,
                     CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ATTRIBUTE t[8] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    memcpy(t + 2, extra, n_extra * sizeof(*extra));
    return m->C_CreateObject(session, t, 2 + n_extra, out);
}

/* SoftHSM renumbers private objects across a logout: find them again. */
static void refind(void)
{
    CK_BYTE ca_label[] = "guardian:ACME/SENSOR-1/r3:production-ca", s_label[] = "guardian:ACME/SENSOR-1/r3:bootkey";
    identity = find_one(CKO_PRIVATE_KEY, CKA_ID, "guardian-identity", 17);
    signing = find_one(CKO_PRIVATE_KEY, CKA_ID, "guardian-signing", 16);
    ca_key = find_one(CKO_PRIVATE_KEY, CKA_LABEL, ca_label, sizeof(ca_label) - 1);
    secret = find_one(CKO_SECRET_KEY, CKA_LABEL, s_label, sizeof(s_label) - 1);
}

/* The SO enrols a root (the user's session logs out meanwhile, and back in). */
static CK_RV enrol(const char *pem, const char *ids, CK_OBJECT_HANDLE *out)
{
    CK_RV rv;
    m->C_Logout(s);
    rv = test_enrol_root(m, slot, path(pem), ids, out);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    if (ca_key != CK_INVALID_HANDLE)
        refind();
    return rv;
}

static CK_RV import(const char *name)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_OBJECT_HANDLE h;
    size_t len;
    unsigned char *pkg = slurp(name, &len);
    CK_RV rv;
    identity = find_one(CKO_PRIVATE_KEY, CKA_ID, "guardian-identity", 17);
    rv = m->C_UnwrapKey(s, &mech, identity, pkg, (CK_ULONG)len, NULL, 0, &h);
    free(pkg);
    return rv;
}

/* A certificate for a fresh P-256 device key, issued with the production CA key. */
static CK_RV derive(const char *device_id)
{
    EVP_PKEY *dev = EVP_EC_gen("P-256");
    unsigned char *spki = NULL;
    int n = i2d_PUBKEY(dev, &spki);
    CK_GUARDIAN_DEVICE_CERT_PARAMS p = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT,
                                        (CK_BYTE_PTR)device_id, strlen(device_id), spki, (CK_ULONG)n};
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &p, sizeof(p)};
    CK_OBJECT_HANDLE cert;
    CK_RV rv = m->C_DeriveKey(s, &mech, ca_key, NULL, 0, &cert);
    if (rv == CKR_OK)
        assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
    OPENSSL_free(spki);
    EVP_PKEY_free(dev);
    return rv;
}

static void open_module(void)
{
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
}

/* Finalize and initialize again: the module reopens the state store. */
static void restart(void)
{
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    open_module();
    refind();
}

static int setup(void **st)
{
    ca_key = CK_INVALID_HANDLE;
    CK_ULONG days = 30;
    CK_BYTE cn[] = "boundary-test";
    CK_ATTRIBUTE t[] = {{CKA_LABEL, cn, sizeof(cn) - 1}, {CKA_GUARDIAN_VALIDITY_DAYS, &days, sizeof(days)}};
    CK_BYTE value[4096];
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    char cmd[PATH_MAX * 3];
    FILE *f;
    (void)st;

    assert_int_equal(test_token_create(&token, "boundary"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    setenv("GUARDIAN_STATE_DIR", path("state"), 1);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    open_module();
    /* The identity, made by the module; its certificate is what OEMs wrap for. */
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_IDENTITY, t, 2, &identity_cert), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, identity_cert, &v, 1), CKR_OK);
    {
        const unsigned char *p = value;
        X509 *x = d2i_X509(NULL, &p, (long)v.ulValueLen);
        assert_non_null(x);
        f = fopen(path("guardian.pem"), "w");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
        X509_free(x);
    }
    snprintf(cmd, sizeof(cmd), "%s %s %s", getenv("GUARDIAN_TEST_MAKE_PACKAGES"), token.dir,
             getenv("GUARDIAN_TEST_WRAP"));
    assert_int_equal(system(cmd), 0);
    /* A second OEM, "OTHER", whose root signs a package claiming ACME's product. */
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other-root.key 2>/dev/null"
             " && openssl req -new -x509 -key other-root.key -subj /CN=OTHER-Root -days 30 -out other-root.pem"
             " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
             " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other-signer.key 2>/dev/null"
             " && openssl req -new -key other-signer.key -subj /CN=OTHER-Signer -out other-signer.csr"
             " && openssl x509 -req -in other-signer.csr -CA other-root.pem -CAkey other-root.key -days 30"
             " -out other-signer.pem 2>/dev/null"
             " && %s create --guardian-cert guardian.pem --signer-key other-signer.key --signer-cert other-signer.pem"
             " --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id SENSOR-1 --release 99 --units 1000"
             " --not-after +30 --out takeover.gpk >/dev/null",
             token.dir, getenv("GUARDIAN_TEST_WRAP"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(enrol("oem-root.pem", "ACME", &root_cert), CKR_OK);
    assert_int_equal(import("good.gpk"), CKR_OK);
    refind();
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    m->C_CloseAllSessions(slot);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    test_token_destroy(&token);
    return 0;
}

/* ---- what the Guardian owns serves only its mechanisms --------------------------------- */

static void test_keys_cannot_be_used(void **st)
{
    CK_BYTE point[65] = {0x04}, data[32] = {0}, out[512];
    CK_ULONG out_len = sizeof(out), before = count_objects();
    CK_ECDH1_DERIVE_PARAMS ecdh = {CKD_NULL, 0, NULL, sizeof(point), point};
    CK_MECHANISM m_ecdh = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)}, m_ecdsa = {CKM_ECDSA, NULL, 0};
    CK_MECHANISM m_hmac = {CKM_SHA256_HMAC, NULL, 0}, m_sha = {CKM_SHA256, NULL, 0};
    CK_MECHANISM m_aes = {CKM_AES_ECB, NULL, 0};
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_ULONG len = 32;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE z_t[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &gen, sizeof(gen)},
                          {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE z;
    (void)st;
    {
        /* A point on P-256 (the generator's x is enough to be refused before use). */
        EVP_PKEY *k = EVP_EC_gen("P-256");
        size_t pl = sizeof(point);
        EVP_PKEY_get_octet_string_param(k, "encoded-pub-key", point, sizeof(point), &pl);
        EVP_PKEY_free(k);
    }
    /* ECDH with the agreement key into an extractable secret: Z, then the
     * KEK; or with the signing key. */
    assert_int_equal(m->C_DeriveKey(s, &m_ecdh, identity, z_t, 4, &z), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_DeriveKey(s, &m_ecdh, signing, z_t, 4, &z), CKR_KEY_FUNCTION_NOT_PERMITTED);
    /* Signing any bytes with the signing key (forged reports, certificates
     * for another key), the agreement key, or the CA key (certificates
     * outside the quota). */
    assert_int_equal(m->C_SignInit(s, &m_ecdsa, signing), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_SignRecoverInit(s, &m_ecdsa, signing), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_SignInit(s, &m_ecdsa, identity), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_SignInit(s, &m_ecdsa, ca_key), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_SignRecoverInit(s, &m_ecdsa, ca_key), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_Sign(s, data, sizeof(data), out, &out_len), CKR_OPERATION_NOT_INITIALIZED);
    /* The confidential item as an HMAC oracle, or a cipher key. */
    assert_int_equal(m->C_SignInit(s, &m_hmac, secret), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_VerifyInit(s, &m_hmac, secret), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_EncryptInit(s, &m_aes, secret), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_DecryptInit(s, &m_aes, secret), CKR_KEY_FUNCTION_NOT_PERMITTED);
    /* Digests of the secrets. */
    assert_int_equal(m->C_DigestInit(s, &m_sha), CKR_OK);
    assert_int_equal(m->C_DigestKey(s, ca_key), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_DigestKey(s, identity), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_DigestKey(s, signing), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_DigestKey(s, secret), CKR_KEY_FUNCTION_NOT_PERMITTED);
    out_len = sizeof(out);
    m->C_DigestFinal(s, out, &out_len);
    /* Standard derive or unwrap with them as base or unwrapping key. */
    assert_int_equal(m->C_DeriveKey(s, &m_ecdh, ca_key, z_t, 4, &z), CKR_KEY_FUNCTION_NOT_PERMITTED);
    {
        CK_KEY_DERIVATION_STRING_DATA d = {data, 16};
        CK_MECHANISM m_ecb = {CKM_AES_ECB_ENCRYPT_DATA, &d, sizeof(d)};
        assert_int_equal(m->C_DeriveKey(s, &m_ecb, secret, z_t, 4, &z), CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    {
        CK_MECHANISM m_kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
        assert_int_equal(m->C_UnwrapKey(s, &m_kwp, secret, data, 24, z_t, 4, &z), CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    assert_int_equal(count_objects(), before);
}

/* Two key pairs: the agreement key derives only, the signing key signs only;
 * both sensitive, never extractable, not modifiable (read through the module,
 * which lets attributes be read). */
static void test_identity_keys_split(void **st)
{
    CK_BBOOL derive, sign, sensitive, extractable, modifiable;
    CK_ATTRIBUTE a[] = {{CKA_DERIVE, &derive, 1},           {CKA_SIGN, &sign, 1},
                        {CKA_SENSITIVE, &sensitive, 1},     {CKA_EXTRACTABLE, &extractable, 1},
                        {CKA_MODIFIABLE, &modifiable, 1}};
    (void)st;
    assert_int_not_equal(signing, CK_INVALID_HANDLE);
    assert_int_not_equal(signing, identity);
    assert_int_equal(m->C_GetAttributeValue(s, identity, a, 5), CKR_OK);
    assert_true(derive == CK_TRUE && sign == CK_FALSE && sensitive == CK_TRUE && extractable == CK_FALSE &&
                modifiable == CK_FALSE);
    assert_int_equal(m->C_GetAttributeValue(s, signing, a, 5), CKR_OK);
    assert_true(derive == CK_FALSE && sign == CK_TRUE && sensitive == CK_TRUE && extractable == CK_FALSE &&
                modifiable == CK_FALSE);
}

static void test_objects_cannot_be_changed(void **st)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE, v = CK_FALSE;
    CK_ATTRIBUTE widen[] = {{CKA_DERIVE, &yes, 1}}, sign[] = {{CKA_SIGN, &yes, 1}};
    CK_ATTRIBUTE extractable[] = {{CKA_EXTRACTABLE, &yes, 1}}, token_false[] = {{CKA_TOKEN, &no, 1}};
    CK_ATTRIBUTE get = {CKA_DERIVE, &v, 1};
    CK_ULONG before = count_objects();
    CK_OBJECT_HANDLE copy;
    (void)st;
    assert_int_equal(m->C_SetAttributeValue(s, ca_key, widen, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, identity, widen, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, signing, widen, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, secret, sign, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, root_cert, token_false, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_GetAttributeValue(s, ca_key, &get, 1), CKR_OK);
    assert_int_equal(v, CK_FALSE);
    assert_int_equal(m->C_CopyObject(s, ca_key, extractable, 1, &copy), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CopyObject(s, secret, NULL, 0, &copy), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, ca_key), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, identity), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, signing), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, identity_cert), CKR_ACTION_PROHIBITED);
    {
        CK_BYTE sid[] = "guardian-signing";
        CK_OBJECT_HANDLE signing_cert = find_one(CKO_CERTIFICATE, CKA_ID, sid, sizeof(sid) - 1);
        assert_int_equal(m->C_DestroyObject(s, signing_cert), CKR_ACTION_PROHIBITED);
        assert_int_equal(m->C_SetAttributeValue(s, signing_cert, token_false, 1), CKR_ACTION_PROHIBITED);
    }
    assert_int_equal(m->C_DestroyObject(s, root_cert), CKR_ACTION_PROHIBITED);
    {
        /* The state anchor: neither changed nor destroyed. */
        CK_BYTE label[] = "guardian-anchor";
        CK_OBJECT_HANDLE anchor = find_one(CKO_DATA, CKA_LABEL, label, sizeof(label) - 1);
        CK_ATTRIBUTE value = {CKA_VALUE, "x", 1};
        assert_int_equal(m->C_SetAttributeValue(s, anchor, &value, 1), CKR_ACTION_PROHIBITED);
        assert_int_equal(m->C_DestroyObject(s, anchor), CKR_ACTION_PROHIBITED);
    }
    assert_int_equal(count_objects(), before);
}

static void test_wrap_refused(void **st)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ULONG len = 32, out_len = 512;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_WRAP, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE kek;
    CK_BYTE out[512];
    (void)st;
    assert_int_equal(m->C_GenerateKey(s, &gen, t, 3, &kek), CKR_OK);
    assert_int_equal(m->C_WrapKey(s, &kwp, kek, secret, out, &out_len), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_WrapKey(s, &kwp, kek, ca_key, out, &out_len), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_WrapKey(s, &kwp, secret, kek, out, &out_len), CKR_KEY_FUNCTION_NOT_PERMITTED);
    /* The operator's own keys wrap as before. */
    {
        CK_OBJECT_HANDLE other;
        assert_int_equal(m->C_GenerateKey(s, &gen, t, 3, &other), CKR_OK);
        out_len = sizeof(out);
        assert_int_equal(m->C_WrapKey(s, &kwp, kek, other, out, &out_len), CKR_OK);
        assert_int_equal(out_len, 40);
        assert_int_equal(m->C_DestroyObject(s, other), CKR_OK);
    }
    assert_int_equal(m->C_DestroyObject(s, kek), CKR_OK);
}

/* No caller can make an object that carries the Guardian's marks. */
static void test_marks_cannot_be_forged(void **st)
{
    CK_OBJECT_CLASS cert = CKO_CERTIFICATE, data = CKO_DATA;
    CK_CERTIFICATE_TYPE x509 = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_BYTE der[] = {0x30, 0x00}, subj[] = {0x30, 0x00};
    CK_BYTE root_label[] = "guardian-root:ACME", anchor[] = "guardian-anchor", id[] = "guardian-identity";
    CK_ATTRIBUTE trusted[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
                              {CKA_TRUSTED, &yes, 1}, {CKA_VALUE, der, 2}, {CKA_SUBJECT, subj, 2}};
    CK_ATTRIBUTE labelled[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1},
                               {CKA_LABEL, anchor, sizeof(anchor) - 1}, {CKA_VALUE, der, 2}};
    CK_ATTRIBUTE plain[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_VALUE, der, 2}};
    CK_ATTRIBUTE relabel[] = {{CKA_LABEL, root_label, sizeof(root_label) - 1}};
    CK_ATTRIBUTE reid[] = {{CKA_ID, id, sizeof(id) - 1}};
    CK_BYTE sid[] = "guardian-signing";
    CK_ATTRIBUTE resid[] = {{CKA_ID, sid, sizeof(sid) - 1}}, reslabel[] = {{CKA_LABEL, sid, sizeof(sid) - 1}};
    CK_ATTRIBUTE signing_id[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_ID, sid, sizeof(sid) - 1},
                                 {CKA_VALUE, der, 2}};
    CK_OBJECT_HANDLE h, mine;
    (void)st;
    assert_int_equal(m->C_CreateObject(s, trusted, 5, &h), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CreateObject(s, labelled, 4, &h), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CreateObject(s, plain, 2, &mine), CKR_OK);
    assert_int_equal(m->C_SetAttributeValue(s, mine, relabel, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, mine, reid, 1), CKR_ACTION_PROHIBITED);
    /* The signing key's marks, likewise. */
    assert_int_equal(m->C_CreateObject(s, signing_id, 3, &h), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, mine, resid, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, mine, reslabel, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CopyObject(s, mine, relabel, 1, &h), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, mine), CKR_OK);
}

/* What the operator owns works exactly as it does without the Guardian, a
 * label that merely begins with "guardian" included. */
static void test_operator_objects_unaffected(void **st)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0};
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, label[] = "guardian-test-key";
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)}};
    CK_ATTRIBUTE priv_t[] = {{CKA_SIGN, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    CK_ATTRIBUTE relabel[] = {{CKA_LABEL, label, sizeof(label) - 1}};
    CK_OBJECT_HANDLE pub, priv, copy;
    CK_BYTE hash[32] = {1}, sig[128];
    CK_ULONG sig_len = sizeof(sig);
    (void)st;
    assert_int_equal(m->C_GenerateKeyPair(s, &gen, pub_t, 1, priv_t, 2, &pub, &priv), CKR_OK);
    for (int i = 0; i < 3; i++) { /* first call classifies, the next ones hit the cache */
        sig_len = sizeof(sig);
        assert_int_equal(m->C_SignInit(s, &ecdsa, priv), CKR_OK);
        assert_int_equal(m->C_Sign(s, hash, sizeof(hash), sig, &sig_len), CKR_OK);
    }
    assert_int_equal(m->C_SetAttributeValue(s, priv, relabel, 1), CKR_OK);
    assert_int_equal(m->C_CopyObject(s, priv, relabel, 1, &copy), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, copy), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, priv), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, pub), CKR_OK);
    /* The Guardian's own mechanism still uses the CA key. */
    assert_int_equal(derive("op-1"), CKR_OK);
}

/* A package label longer than the policy's read buffer (~100 bytes with a
 * 64-character product ID) is classified by its prefix all the same. */
static void test_long_labels_are_owned(void **st)
{
    char cmd[PATH_MAX * 3], label[160];
    const char *product = "P123456789012345678901234567890123456789012345678901234567890123";
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    CK_OBJECT_HANDLE key, copy;
    (void)st;
    snprintf(cmd, sizeof(cmd),
             "cd %s && %s create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem"
             " --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id %s --release 1"
             " --units 5 --not-after +30 --out long.gpk >/dev/null",
             token.dir, getenv("GUARDIAN_TEST_WRAP"), product);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(import("long.gpk"), CKR_OK);
    snprintf(label, sizeof(label), "guardian:ACME/%s/r1:production-ca", product);
    assert_true(strlen(label) > 64);
    key = find_one(CKO_PRIVATE_KEY, CKA_LABEL, label, strlen(label));
    assert_int_equal(m->C_SignInit(s, &ecdsa, key), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(m->C_CopyObject(s, key, NULL, 0, &copy), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_DestroyObject(s, key), CKR_ACTION_PROHIBITED);
}

/* ---- OEM roots sign only for their OEM IDs ---------------------------------------------- */

static void test_roots_bound_to_oem_ids(void **st)
{
    CK_OBJECT_HANDLE other, h;
    CK_ULONG before;
    (void)st;
    /* A CA certificate is required of a root. */
    assert_int_equal(enrol("signer.pem", "ACME", &h), CKR_GUARDIAN_ROOT_NOT_CA);
    assert_int_equal(enrol("other-root.pem", "", &h), CKR_ATTRIBUTE_VALUE_INVALID);
    assert_int_equal(enrol("other-root.pem", "A,A", &h), CKR_ATTRIBUTE_VALUE_INVALID);
    assert_int_equal(enrol("other-root.pem", "OTHER", &other), CKR_OK);
    assert_int_equal(enrol("other-root.pem", "OTHER", &h), CKR_OK); /* a repeat */
    assert_int_equal(enrol("other-root.pem", "ACME", &h), CKR_GUARDIAN_REQUEST_INVALID);
    /* OTHER's root signs a package for ACME's product: refused, nothing changes. */
    before = count_objects();
    assert_int_equal(import("takeover.gpk"), CKR_GUARDIAN_OEM_NOT_ENROLLED);
    assert_int_equal(count_objects(), before);
    assert_int_equal(derive("still-acme"), CKR_OK);
    /* Enrolment is the SO's: a user session cannot. */
    {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, "x", 1}, {CKA_GUARDIAN_OEM_IDS, "X", 1}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_ENROL_ROOT, t, 2, &h), CKR_USER_NOT_LOGGED_IN);
    }
}

/* ---- the state cannot be rewound, deleted or redirected ---------------------------------- */

static void run(const char *fmt, const char *a)
{
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof(cmd), fmt, a, a, a);
    assert_int_equal(system(cmd), 0);
}

static void test_state_restored_backup(void **st)
{
    (void)st;
    assert_int_equal(derive("dev-1"), CKR_OK);
    restart(); /* gives back the unused units of the block: the store is at rest */
    run("cp -a %s/state %s/state-backup", token.dir);
    assert_int_equal(derive("dev-2"), CKR_OK);
    assert_int_equal(import("newer.gpk"), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    run("rm -rf %s/state && mv %s/state-backup %s/state", token.dir);
    open_module();
    refind();
    /* The restored store would re-import newer.gpk and re-issue dev-2's serial. */
    assert_int_equal(import("newer.gpk"), CKR_GUARDIAN_STATE_ROLLBACK);
    assert_int_equal(derive("dev-3"), CKR_GUARDIAN_STATE_ROLLBACK);
}

static void test_state_deleted(void **st)
{
    (void)st;
    assert_int_equal(derive("dev-1"), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    run("rm -f %s/state/guardian.db %s/state/guardian.db-wal %s/state/guardian.db-shm", token.dir);
    open_module();
    refind();
    assert_int_equal(import("good.gpk"), CKR_GUARDIAN_STATE_ROLLBACK);
    assert_int_equal(derive("dev-2"), CKR_GUARDIAN_STATE_ROLLBACK);
}

static void test_state_redirected(void **st)
{
    (void)st;
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    assert_int_equal(mkdir(path("empty"), 0700), 0);
    setenv("GUARDIAN_STATE_DIR", path("empty"), 1);
    open_module();
    refind();
    assert_int_equal(import("good.gpk"), CKR_GUARDIAN_STATE_ROLLBACK);
    assert_int_equal(derive("dev-1"), CKR_GUARDIAN_STATE_ROLLBACK);
    /* Back on the real state, everything works. */
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    setenv("GUARDIAN_STATE_DIR", path("state"), 1);
    open_module();
    refind();
    assert_int_equal(derive("dev-2"), CKR_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keys_cannot_be_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_keys_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_objects_cannot_be_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrap_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_marks_cannot_be_forged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_operator_objects_unaffected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_labels_are_owned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roots_bound_to_oem_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_restored_backup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_redirected, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
