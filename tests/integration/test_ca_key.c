/*
 * test_ca_key.c — production CA keys made inside the Guardian
 * (CKG_GUARDIAN_REQ_CA_KEY, package format version 2) through
 * guardian-pkcs11.so over a real SoftHSMv2 token of its own:
 *
 *   - the whole flow: the request makes the key pair and the CSR, guardian-wrap
 *     certify-ca issues the production CA certificate, create --ca-request
 *     writes a package with no key and no transport, the import binds the key
 *     to the release, and device certificates verify (X509_verify_cert) up to
 *     the OEM root;
 *   - the key: sensitive, never extractable, sign only, and every standard
 *     call through the module that would use, read, wrap, change, copy or
 *     destroy it is refused;
 *   - certify-ca refuses a tampered binding;
 *   - the import refuses, with CKR_GUARDIAN_CA_KEY_NOT_FOUND and nothing left
 *     behind or recorded, a package whose CA certificate is for another
 *     Guardian-made key, one whose key was made for another product, one
 *     naming no key; and a second package for a bound key (replay);
 *   - retire-ca of such a release destroys its key pair.
 * The refused packages are made here (guardian-wrap refuses to make them):
 * a valid package's content changed and signed again as guardian-wrap signs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "guardian_fixture.h"
#include "package.h"
#include "package_container.h"
#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;

static const char *path(const char *name) { return test_path(token.dir, name); }

static void run(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (system(cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

/* 0 when the shell command succeeds. */
static int try_run(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

static CK_RV request(CK_ULONG type, const CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ATTRIBUTE t[12] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    assert_true(n_extra <= 10);
    memcpy(t + 2, extra, n_extra * sizeof(*extra));
    return m->C_CreateObject(s, t, 2 + n_extra, out);
}

/* CKA_VALUE of `h`, malloc'd. */
static unsigned char *value_of(CK_OBJECT_HANDLE h, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    a.pValue = malloc(a.ulValueLen + 1);
    assert_non_null(a.pValue);
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    *len = a.ulValueLen;
    return a.pValue;
}

static CK_ULONG count_objects(void) { return test_count_objects(m, s); }

/* The one object of class `cls` labelled `label`, or CK_INVALID_HANDLE. */
static CK_OBJECT_HANDLE find_labelled(CK_OBJECT_CLASS cls, const char *label, CK_ULONG *n_out)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
    CK_OBJECT_HANDLE h[8];
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 8, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    if (n_out != NULL)
        *n_out = n;
    return n >= 1 ? h[0] : CK_INVALID_HANDLE;
}

/* CKG_GUARDIAN_REQ_CA_KEY for ACME/`product`, its answer written to `file`. */
static CK_RV ca_request(const char *product, CK_ULONG key_type, const char *file)
{
    X509_NAME *name = X509_NAME_new();
    unsigned char *der = NULL, *text;
    int der_len;
    CK_ULONG len;
    CK_OBJECT_HANDLE h;
    CK_RV rv;
    FILE *f;

    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"ACME", -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)product, -1, -1, 0);
    der_len = i2d_X509_NAME(name, &der);
    assert_true(der_len > 0);
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                            {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)},
                            {CKA_GUARDIAN_CA_KEY_TYPE, &key_type, sizeof(key_type)},
                            {CKA_SUBJECT, der, (CK_ULONG)der_len}};
        rv = request(CKG_GUARDIAN_REQ_CA_KEY, t, 4, &h);
    }
    OPENSSL_free(der);
    X509_NAME_free(name);
    if (rv != CKR_OK)
        return rv;
    text = value_of(h, &len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    f = fopen(path(file), "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    free(text);
    return CKR_OK;
}

static CK_RV import(const char *file)
{
    size_t len;
    unsigned char *data = test_slurp(path(file), &len);
    CK_ATTRIBUTE t[] = {{CKA_VALUE, data, (CK_ULONG)len}};
    CK_OBJECT_HANDLE h;
    CK_RV rv = request(CKG_GUARDIAN_REQ_IMPORT, t, 1, &h);
    free(data);
    return rv;
}

static void certify(const char *csr, const char *product, const char *out)
{
    run("cd %s && %s certify-ca --csr %s --guardian-cert guardian.pem --oem-id ACME --product-id %s "
        "--ca-key oem-root.key --ca-cert oem-root.pem --days 30 --out %s >/dev/null",
        token.dir, getenv("GUARDIAN_TEST_WRAP"), csr, product, out);
}

static void create(const char *csr, const char *ca, const char *product, int release, const char *out)
{
    run("cd %s && %s create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem "
        "--ca-cert %s --ca-chain oem-root.pem --ca-request %s --oem-id ACME --product-id %s --release %d "
        "--units 10 --not-after +30 --out %s >/dev/null",
        token.dir, getenv("GUARDIAN_TEST_WRAP"), ca, csr, product, release, out);
}

static X509 *read_pem(const char *file)
{
    FILE *f = fopen(path(file), "r");
    X509 *x;
    assert_non_null(f);
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

/* ---- a package guardian-wrap would not make ----------------------------------------------- */

/* `in` with its production CA certificate replaced by `ca` (when not NULL),
 * its package ID by `id` (when not NULL), signed again by signer.key as
 * guardian-wrap signs (low-s, signingCertificateV2), as `out`. */
static void remade(const char *in, const char *ca, const uint8_t *id, const char *out)
{
    size_t len;
    unsigned char *data = test_slurp(path(in), &len), *content = NULL, *der = NULL, *attr = NULL;
    const unsigned char *p = data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len), *signed_cms;
    ASN1_OCTET_STRING **oct;
    GUARDIAN_PACKAGE *pkg;
    X509 *signer = read_pem("signer.pem");
    EVP_PKEY *key;
    STACK_OF(X509) *none = sk_X509_new_null(), *signer_path;
    CMS_SignerInfo *si;
    ASN1_STRING *seq = ASN1_STRING_new();
    BIO *bio;
    int n, attr_len;
    FILE *f;

    assert_non_null(cms);
    oct = CMS_get0_content(cms);
    assert_non_null(oct);
    p = ASN1_STRING_get0_data(*oct);
    pkg = d2i_GUARDIAN_PACKAGE(NULL, &p, ASN1_STRING_length(*oct));
    assert_non_null(pkg);
    if (ca != NULL) {
        X509_free(sk_X509_shift(pkg->production_ca->chain));
        assert_true(sk_X509_unshift(pkg->production_ca->chain, read_pem(ca)) > 0);
    }
    if (id != NULL)
        ASN1_OCTET_STRING_set(pkg->package_id, id, GUARDIAN_PKG_ID_LEN);
    n = i2d_GUARDIAN_PACKAGE(pkg, &content);
    assert_true(n > 0);
    f = fopen(path("signer.key"), "r");
    assert_non_null(f);
    key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(key);
    signer_path = guardian_signer_path(signer, none);
    assert_non_null(signer_path);
    bio = BIO_new_mem_buf(content, n);
    signed_cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP);
    assert_non_null(signed_cms);
    {
        ASN1_OBJECT *type = OBJ_txt2obj(GUARDIAN_OID_PACKAGE, 1);
        assert_int_equal(CMS_set1_eContentType(signed_cms, type), 1); /* a copy */
        ASN1_OBJECT_free(type);
    }
    si = CMS_add1_signer(signed_cms, signer, key, EVP_sha256(), CMS_BINARY | CMS_NOSMIMECAP);
    assert_non_null(si);
    attr_len = guardian_signing_cert_attr(signer_path, &attr);
    assert_true(attr_len > 0);
    assert_int_equal(ASN1_STRING_set(seq, attr, attr_len), 1);
    assert_int_equal(CMS_signed_add1_attr_by_NID(si, NID_id_smime_aa_signingCertificateV2, V_ASN1_SEQUENCE, seq, -1),
                     1);
    assert_int_equal(CMS_final(signed_cms, bio, NULL, CMS_BINARY), 1);
    assert_int_equal(guardian_ecdsa_sig_make_low_s(X509_get0_pubkey(signer), CMS_SignerInfo_get0_signature(si)), 1);
    n = i2d_CMS_ContentInfo(signed_cms, &der);
    assert_true(n > 0);
    f = fopen(path(out), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(der, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    OPENSSL_free(der);
    OPENSSL_free(attr);
    OPENSSL_free(content);
    ASN1_STRING_free(seq);
    BIO_free(bio);
    CMS_ContentInfo_free(signed_cms);
    CMS_ContentInfo_free(cms);
    sk_X509_pop_free(signer_path, X509_free);
    sk_X509_free(none);
    EVP_PKEY_free(key);
    X509_free(signer);
    GUARDIAN_PACKAGE_free(pkg);
    free(data);
}

/* ---- set-up ------------------------------------------------------------------------------- */

static int setup(void **st)
{
    CK_ULONG days = 30;
    CK_BYTE cn[] = "ca-key-test";
    CK_ATTRIBUTE t[] = {{CKA_LABEL, cn, sizeof(cn) - 1}, {CKA_GUARDIAN_VALIDITY_DAYS, &days, sizeof(days)}};
    CK_OBJECT_HANDLE h;
    FILE *f;
    (void)st;

    assert_int_equal(test_token_create(&token, "cakey"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    setenv("GUARDIAN_STATE_DIR", path("state"), 1);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    run("cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out oem-root.key 2>/dev/null"
        " && openssl req -new -x509 -key oem-root.key -subj '/CN=ACME Root' -days 3650 -out oem-root.pem"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signer.key 2>/dev/null"
        " && openssl req -new -key signer.key -subj '/CN=ACME Package Signer' -out signer.csr"
        " && echo keyUsage=critical,digitalSignature >signer.ext"
        " && openssl x509 -req -in signer.csr -CA oem-root.pem -CAkey oem-root.key -days 30 -out signer.pem"
        " -extfile signer.ext 2>/dev/null",
        token.dir);
    assert_int_equal(test_enrol_root(m, slot, path("oem-root.pem"), "ACME", &h), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    /* Before the identity exists: refused, nothing made. */
    {
        CK_ULONG before = count_objects();
        assert_int_equal(ca_request("EARLY", CKG_GUARDIAN_CA_KEY_P256, "early.csr"), CKR_KEY_HANDLE_INVALID);
        assert_int_equal(count_objects(), before);
    }
    assert_int_equal(request(CKG_GUARDIAN_REQ_IDENTITY, t, 2, &h), CKR_OK);
    /* guardian.pem as guardianctl cert writes it: A, then S. */
    f = fopen(path("guardian.pem"), "w");
    assert_non_null(f);
    {
        CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
        const char *ids[] = {"guardian-identity", "guardian-signing"};
        for (int i = 0; i < 2; i++) {
            CK_ATTRIBUTE ft[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_ID, (void *)ids[i], (CK_ULONG)strlen(ids[i])}};
            CK_OBJECT_HANDLE c;
            CK_ULONG n = 0, len;
            unsigned char *der;
            const unsigned char *p;
            X509 *x;
            assert_int_equal(m->C_FindObjectsInit(s, ft, 2), CKR_OK);
            assert_int_equal(m->C_FindObjects(s, &c, 1, &n), CKR_OK);
            assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
            assert_int_equal(n, 1);
            der = value_of(c, &len);
            p = der;
            x = d2i_X509(NULL, &p, (long)len);
            assert_non_null(x);
            PEM_write_X509(f, x);
            X509_free(x);
            free(der);
        }
    }
    fclose(f);
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

/* ---- the tests ---------------------------------------------------------------------------- */

/* A device certificate for a fresh P-256 key, verified up to the OEM root
 * through the production CA certificate `ca`. */
static void issue_and_verify(const char *product, const char *device, const char *ca)
{
    EVP_PKEY *dev = EVP_EC_gen("P-256");
    unsigned char *spki = NULL, *der;
    int spki_len = i2d_PUBKEY(dev, &spki);
    CK_ULONG len;
    CK_OBJECT_HANDLE h;
    const unsigned char *p;
    X509 *x, *root = read_pem("oem-root.pem"), *pca = read_pem(ca);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                        {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)},
                        {CKA_GUARDIAN_DEVICE_ID, (void *)device, (CK_ULONG)strlen(device)},
                        {CKA_GUARDIAN_DEVICE_SPKI, spki, (CK_ULONG)spki_len}};

    assert_int_equal(request(CKG_GUARDIAN_REQ_DEVICE_CERT, t, 4, &h), CKR_OK);
    der = value_of(h, &len);
    p = der;
    x = d2i_X509(NULL, &p, (long)len);
    assert_non_null(x);
    assert_int_equal(X509_STORE_add_cert(store, root), 1);
    sk_X509_push(untrusted, pca);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, x, untrusted), 1);
    if (X509_verify_cert(ctx) != 1)
        fail_msg("the device certificate does not verify: %s",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(root);
    X509_free(x);
    free(der);
    OPENSSL_free(spki);
    EVP_PKEY_free(dev);
}

static void test_flow(void **st)
{
    (void)st;
    assert_int_equal(ca_request("SENSOR-1", CKG_GUARDIAN_CA_KEY_P256, "sensor.csr"), CKR_OK);
    certify("sensor.csr", "SENSOR-1", "pca.pem");
    create("sensor.csr", "pca.pem", "SENSOR-1", 1, "p.gpk");
    assert_int_equal(import("p.gpk"), CKR_OK);
    issue_and_verify("SENSOR-1", "DEV-1", "pca.pem");
    issue_and_verify("SENSOR-1", "DEV-2", "pca.pem");
    /* A second package for the same key (a later release): its package ID
     * is the key's, so it is a replay. */
    create("sensor.csr", "pca.pem", "SENSOR-1", 2, "p2.gpk");
    assert_int_equal(import("p2.gpk"), CKR_GUARDIAN_PACKAGE_REPLAYED);
    /* P-384 and RSA 2048 keys. */
    assert_int_equal(ca_request("BIG", CKG_GUARDIAN_CA_KEY_P384, "big.csr"), CKR_OK);
    certify("big.csr", "BIG", "big-ca.pem");
    create("big.csr", "big-ca.pem", "BIG", 1, "big.gpk");
    assert_int_equal(import("big.gpk"), CKR_OK);
    issue_and_verify("BIG", "DEV-1", "big-ca.pem");
    assert_int_equal(ca_request("RSA", CKG_GUARDIAN_CA_KEY_RSA2048, "rsa.csr"), CKR_OK);
    certify("rsa.csr", "RSA", "rsa-ca.pem");
    create("rsa.csr", "rsa-ca.pem", "RSA", 1, "rsa.gpk");
    assert_int_equal(import("rsa.gpk"), CKR_OK);
    issue_and_verify("RSA", "DEV-1", "rsa-ca.pem");
    /* A bad key type and a bad subject are refused. */
    assert_int_equal(ca_request("X", 9, "x.csr"), CKR_ATTRIBUTE_VALUE_INVALID);
}

static void test_key_refused_to_standard_calls(void **st)
{
    CK_ULONG n = 0, len;
    CK_OBJECT_HANDLE priv, pub, copy, wrapped_h, aes;
    CK_BBOOL sensitive = 0, extractable = 1, never = 0, sign = 0, decrypt = 1, modifiable = 1, token_b = 0;
    CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sensitive, 1}, {CKA_EXTRACTABLE, &extractable, 1},
                        {CKA_NEVER_EXTRACTABLE, &never, 1}, {CKA_SIGN, &sign, 1},
                        {CKA_DECRYPT, &decrypt, 1}, {CKA_MODIFIABLE, &modifiable, 1}, {CKA_TOKEN, &token_b, 1}};
    CK_BYTE value[512], hash[32] = {1}, sig[128], wrapped[1024], label[] = "mine";
    CK_ULONG sig_len = sizeof(sig), wrapped_len = sizeof(wrapped), aes_len = 32;
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0}, wrap = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)}, relabel = {CKA_LABEL, label, sizeof(label) - 1};
    CK_ATTRIBUTE aes_t[] = {{CKA_VALUE_LEN, &aes_len, sizeof(aes_len)}, {CKA_WRAP, &yes, 1}};
    (void)st;

    assert_int_equal(ca_request("LOCKED", CKG_GUARDIAN_CA_KEY_P256, "locked.csr"), CKR_OK);
    priv = find_labelled(CKO_PRIVATE_KEY, "guardian:ACME/LOCKED:ca-key", &n);
    assert_int_equal(n, 1);
    pub = find_labelled(CKO_PUBLIC_KEY, "guardian:ACME/LOCKED:ca-key", &n);
    assert_int_equal(n, 1);
    assert_int_equal(m->C_GetAttributeValue(s, priv, a, 7), CKR_OK);
    assert_true(sensitive && !extractable && never && sign && !decrypt && !modifiable && token_b);
    /* Every standard use through the module is refused. */
    assert_int_not_equal(m->C_SignInit(s, &ecdsa, priv), CKR_OK);
    assert_int_not_equal(m->C_Sign(s, hash, sizeof(hash), sig, &sig_len), CKR_OK);
    assert_int_not_equal(m->C_GetAttributeValue(s, priv, &v, 1), CKR_OK);
    assert_int_equal(m->C_GenerateKey(s, &gen, aes_t, 2, &aes), CKR_OK);
    assert_int_not_equal(m->C_WrapKey(s, &wrap, aes, priv, wrapped, &wrapped_len), CKR_OK);
    assert_int_not_equal(m->C_SetAttributeValue(s, priv, &relabel, 1), CKR_OK);
    assert_int_not_equal(m->C_SetAttributeValue(s, pub, &relabel, 1), CKR_OK);
    assert_int_not_equal(m->C_CopyObject(s, priv, &relabel, 1, &copy), CKR_OK);
    assert_int_not_equal(m->C_DestroyObject(s, priv), CKR_OK);
    assert_int_not_equal(m->C_DestroyObject(s, pub), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, aes), CKR_OK);
    (void)wrapped_h;
    /* Still there, still usable by the module: it certifies and imports. */
    assert_int_equal(find_labelled(CKO_PRIVATE_KEY, "guardian:ACME/LOCKED:ca-key", &n), priv);
    certify("locked.csr", "LOCKED", "locked-ca.pem");
    create("locked.csr", "locked-ca.pem", "LOCKED", 1, "locked.gpk");
    assert_int_equal(import("locked.gpk"), CKR_OK);
    issue_and_verify("LOCKED", "DEV-1", "locked-ca.pem");
    (void)len;
}

static void test_tampered_binding(void **st)
{
    char *text, *b, *e;
    size_t len;
    FILE *f;
    (void)st;
    assert_int_equal(ca_request("TAMPER", CKG_GUARDIAN_CA_KEY_P256, "tamper.csr"), CKR_OK);
    text = (char *)test_slurp(path("tamper.csr"), &len);
    text[len] = '\0';
    /* One base64 character of the binding's signature changed. */
    b = strstr(text, "-----BEGIN GUARDIAN CA KEY BINDING-----");
    assert_non_null(b);
    e = strstr(b, "-----END");
    assert_non_null(e);
    e -= 6;
    *e = *e == 'A' ? 'B' : 'A';
    f = fopen(path("tampered.csr"), "w");
    assert_non_null(f);
    fwrite(text, 1, len, f);
    fclose(f);
    free(text);
    assert_int_not_equal(try_run("cd %s && %s certify-ca --csr tampered.csr --guardian-cert guardian.pem --oem-id ACME "
                                 "--product-id TAMPER --ca-key oem-root.key --ca-cert oem-root.pem --out t.pem "
                                 "2>/dev/null >/dev/null",
                                 token.dir, getenv("GUARDIAN_TEST_WRAP")),
                         0);
    assert_int_equal(access(path("t.pem"), F_OK), -1);
    /* The untouched file certifies. */
    certify("tamper.csr", "TAMPER", "tamper-ca.pem");
}

/* A refused import leaves nothing: the object count and the products. */
static void refused_import(const char *file, CK_RV want)
{
    CK_ULONG before = count_objects();
    assert_int_equal(import(file), want);
    assert_int_equal(count_objects(), before);
}

static void test_import_other_key_refused(void **st)
{
    uint8_t nobody[GUARDIAN_PKG_ID_LEN] = {0x5a, 0x5a};
    (void)st;
    /* Two keys of the same product and one of another. */
    assert_int_equal(ca_request("LINE", CKG_GUARDIAN_CA_KEY_P256, "k1.csr"), CKR_OK);
    assert_int_equal(ca_request("LINE", CKG_GUARDIAN_CA_KEY_P256, "k2.csr"), CKR_OK);
    assert_int_equal(ca_request("OTHER", CKG_GUARDIAN_CA_KEY_P256, "k3.csr"), CKR_OK);
    certify("k1.csr", "LINE", "k1.pem");
    certify("k2.csr", "LINE", "k2.pem");
    certify("k3.csr", "OTHER", "k3.pem");
    create("k2.csr", "k2.pem", "LINE", 1, "k2.gpk");
    create("k3.csr", "k3.pem", "OTHER", 1, "k3.gpk");
    /* guardian-wrap itself refuses a certificate for another key. */
    assert_int_not_equal(try_run("cd %s && %s create --guardian-cert guardian.pem --signer-key signer.key "
                                 "--signer-cert signer.pem --ca-cert k1.pem --ca-request k2.csr --oem-id ACME "
                                 "--product-id LINE --release 1 --units 10 --not-after +30 --out bad.gpk 2>/dev/null",
                                 token.dir, getenv("GUARDIAN_TEST_WRAP")),
                         0);
    /* K2's package ID with K1's certificate: the key is found, its public
     * key is not the certificate's. */
    remade("k2.gpk", "k1.pem", NULL, "k2-with-k1-cert.gpk");
    refused_import("k2-with-k1-cert.gpk", CKR_GUARDIAN_CA_KEY_NOT_FOUND);
    /* OTHER's key (and its own certificate) in a LINE package. */
    {
        size_t len;
        unsigned char *data = test_slurp(path("k3.gpk"), &len);
        const unsigned char *p = data;
        CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
        ASN1_OCTET_STRING **oct = CMS_get0_content(cms);
        const unsigned char *q = ASN1_STRING_get0_data(*oct);
        GUARDIAN_PACKAGE *pkg = d2i_GUARDIAN_PACKAGE(NULL, &q, ASN1_STRING_length(*oct));
        uint8_t k3_id[GUARDIAN_PKG_ID_LEN];
        assert_non_null(pkg);
        memcpy(k3_id, ASN1_STRING_get0_data(pkg->package_id), sizeof(k3_id));
        GUARDIAN_PACKAGE_free(pkg);
        CMS_ContentInfo_free(cms);
        free(data);
        remade("k2.gpk", "k3.pem", k3_id, "line-with-other-key.gpk");
    }
    refused_import("line-with-other-key.gpk", CKR_GUARDIAN_CA_KEY_NOT_FOUND);
    /* A package ID that names no key of the Guardian's. */
    remade("k2.gpk", NULL, nobody, "no-key.gpk");
    refused_import("no-key.gpk", CKR_GUARDIAN_CA_KEY_NOT_FOUND);
    /* Nothing was recorded: the right packages import after all that. */
    assert_int_equal(import("k2.gpk"), CKR_OK);
    issue_and_verify("LINE", "DEV-1", "k2.pem");
    assert_int_equal(import("k3.gpk"), CKR_OK);
    issue_and_verify("OTHER", "DEV-1", "k3.pem");
    /* The next release with the product's other key; retiring release 1
     * destroys its Guardian-made key pair, the line goes on with release 2. */
    create("k1.csr", "k1.pem", "LINE", 2, "k1.gpk");
    assert_int_equal(import("k1.gpk"), CKR_OK);
    {
        CK_ULONG n = 0, release = 1;
        CK_OBJECT_HANDLE h;
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                            {CKA_GUARDIAN_PRODUCT_ID, "LINE", 4},
                            {CKA_GUARDIAN_RELEASE, &release, sizeof(release)}};
        char *text;
        CK_ULONG len;
        find_labelled(CKO_PRIVATE_KEY, "guardian:ACME/LINE:ca-key", &n);
        assert_int_equal(n, 2);
        assert_int_equal(request(CKG_GUARDIAN_REQ_RETIRE_CA, t, 3, &h), CKR_OK);
        text = (char *)value_of(h, &len);
        text[len] = '\0';
        assert_non_null(strstr(text, "keys_destroyed=1\n"));
        assert_non_null(strstr(text, "certificates_destroyed=1\n"));
        free(text);
        find_labelled(CKO_PRIVATE_KEY, "guardian:ACME/LINE:ca-key", &n);
        assert_int_equal(n, 1);
        find_labelled(CKO_PUBLIC_KEY, "guardian:ACME/LINE:ca-key", &n);
        assert_int_equal(n, 1);
    }
    issue_and_verify("LINE", "DEV-2", "k1.pem");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_refused_to_standard_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_binding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_other_key_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
