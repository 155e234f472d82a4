/*
 * test_unwrap.c — the Guardian vendor mechanisms through guardian-pkcs11.so over
 * a real SoftHSMv2 token.  CKM_GUARDIAN_UNWRAP_PACKAGE: a package made by
 * guardian-wrap is imported with a standard C_UnwrapKey, the imported keys are
 * sensitive and unextractable and sign correctly, and every refusal has its CKR
 * code and leaves no object.  CKM_GUARDIAN_DERIVE_DEVICE_CERT: certificates for
 * EC and RSA device keys under EC and RSA production CAs verify with OpenSSL
 * up to the OEM root, carry the profile's fields, count against the quota, and
 * every refusal has its CKR code and spends no unit.
 *
 * Setup per test run: a fresh token; the Guardian's EC key generated in it
 * (CKA_ID "guardian") with a certificate signed by a software "centre CA";
 * the OEM root enrolled by the SO (CKA_TRUSTED); packages made by
 * make_packages.sh with guardian-wrap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
#include "vectors.h"
/* after softhsm_token.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static CK_OBJECT_HANDLE guardian_key;

static const char *path(const char *name) { return test_path(token.dir, name); }

static unsigned char *slurp(const char *name, size_t *len) { return test_slurp(path(name), len); }

/* OpenSSL verifies a raw r||s P-256 signature (CKM_ECDSA output) over `hash`. */
static void assert_ecdsa_verifies(EVP_PKEY *key, const CK_BYTE *hash, size_t hash_len, const CK_BYTE sig[64])
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    unsigned char *der = NULL;
    int der_len;
    EVP_PKEY_CTX *vctx = EVP_PKEY_CTX_new(key, NULL);
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
    der_len = i2d_ECDSA_SIG(es, &der);
    assert_int_equal(EVP_PKEY_verify_init(vctx), 1);
    assert_int_equal(EVP_PKEY_verify(vctx, der, (size_t)der_len, hash, hash_len), 1);
    EVP_PKEY_CTX_free(vctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
}

static CK_ULONG count_objects(void) { return test_count_objects(m, s); }

/* C_FindObjects with `t` in session `in`: up to `max` handles. */
static CK_RV find_objects_in(CK_SESSION_HANDLE in, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max,
                             CK_ULONG *count)
{
    CK_RV rv = m->C_FindObjectsInit(in, t, n);
    *count = 0;
    if (rv != CKR_OK)
        return rv;
    rv = m->C_FindObjects(in, out, max, count);
    if (m->C_FindObjectsFinal(in) != CKR_OK && rv == CKR_OK)
        rv = CKR_GENERAL_ERROR;
    return rv;
}

static CK_RV find_objects(CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max, CK_ULONG *count)
{
    return find_objects_in(s, t, n, out, max, count);
}

/* The Guardian's certificate for its in-token key, signed by a software CA. */
static void make_guardian_cert(CK_OBJECT_HANDLE pub)
{
    CK_BYTE point[80], id[] = "guardian";
    CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
    EVP_PKEY *gpub = NULL, *ca = EVP_EC_gen("P-256");
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    X509 *x = X509_new();
    unsigned char *der = NULL;
    int der_len;
    FILE *f;

    assert_int_equal(m->C_GetAttributeValue(s, pub, &a, 1), CKR_OK);
    {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0),
            OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point + 2, a.ulValueLen - 2),
            OSSL_PARAM_construct_end(),
        };
        assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
        assert_int_equal(EVP_PKEY_fromdata(ctx, &gpub, EVP_PKEY_PUBLIC_KEY, params), 1);
    }
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_set_version(x, 2);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (unsigned char *)"guardian-test", -1,
                               -1, 0);
    X509_NAME_add_entry_by_txt(X509_get_issuer_name(x), "CN", MBSTRING_ASC, (unsigned char *)"centre-ca", -1, -1,
                               0);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, gpub);
    assert_true(X509_sign(x, ca, EVP_sha256()) > 0);
    der_len = i2d_X509(x, &der);
    {
        CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
        CK_CERTIFICATE_TYPE ct = CKC_X_509;
        CK_BBOOL yes = CK_TRUE;
        CK_OBJECT_HANDLE h;
        unsigned char *subj = NULL;
        int subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                            {CKA_TOKEN, &yes, 1}, {CKA_ID, id, sizeof(id) - 1},
                            {CKA_VALUE, der, (CK_ULONG)der_len}, {CKA_SUBJECT, subj, (CK_ULONG)subj_len}};
        assert_int_equal(m->C_CreateObject(s, t, 6, &h), CKR_OK);
        OPENSSL_free(subj);
    }
    f = fopen(path("guardian.pem"), "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(gpub);
    EVP_PKEY_free(ca);
    EVP_PKEY_CTX_free(ctx);
}

/* Handles of private objects do not survive a logout in SoftHSM: find the
 * Guardian key again after each login, as an application would. */
static void find_guardian_key(void)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_BYTE id[] = "guardian";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id, sizeof(id) - 1}};
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, &guardian_key, 1, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
}

static int setup(void **st)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BYTE ec_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, id[] = "guardian";
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, ec_p256, sizeof(ec_p256)}, {CKA_TOKEN, &yes, 1},
                            {CKA_ID, id, sizeof(id) - 1}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_DERIVE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                             {CKA_EXTRACTABLE, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_ID, id, sizeof(id) - 1}};
    CK_OBJECT_HANDLE pub;
    char cmd[PATH_MAX * 3];
    (void)st;

    assert_int_equal(test_token_create(&token, "unwrap"), 0);
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
    assert_int_equal(m->C_GenerateKeyPair(s, &gen, pub_t, 3, priv_t, 6, &pub, &guardian_key), CKR_OK);
    make_guardian_cert(pub);
    snprintf(cmd, sizeof(cmd), "%s %s %s", getenv("GUARDIAN_TEST_MAKE_PACKAGES"), token.dir,
             getenv("GUARDIAN_TEST_WRAP"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    {
        /* The SO enrols the OEM root for OEM ID "ACME" (the module makes the
         * trusted certificate itself). */
        CK_OBJECT_HANDLE root;
        assert_int_equal(test_enrol_root(m, slot, path("oem-root.pem"), "ACME", &root), CKR_OK);
    }
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    find_guardian_key();
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

static CK_RV import(const char *name, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    size_t len;
    unsigned char *pkg = slurp(name, &len);
    CK_RV rv = m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len, NULL, 0, out);
    free(pkg);
    return rv;
}

/* Import `name` expecting `expect`, and that nothing was created. */
static void refused(const char *name, CK_RV expect)
{
    CK_ULONG before = count_objects();
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv = import(name, &h);
    if (rv != expect)
        fail_msg("%s: got 0x%lx, expected 0x%lx", name, (unsigned long)rv, (unsigned long)expect);
    assert_int_equal(count_objects(), before);
}

static void test_import_and_use(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, keys[4], data[4];
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, dcls = CKO_DATA;
    CK_BYTE value[512], id[16];
    CK_ATTRIBUTE a;
    CK_ULONG n = 0;
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0}, wrap = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_BYTE hash[32], sig[64];
    CK_ULONG sig_len = sizeof(sig);
    CK_MECHANISM_TYPE mechs[256];
    CK_ULONG n_mechs = 256;
    int advertised = 0;
    (void)st;

    assert_int_equal(m->C_GetMechanismList(slot, mechs, &n_mechs), CKR_OK);
    for (CK_ULONG i = 0; i < n_mechs; i++)
        advertised |= mechs[i] == CKM_GUARDIAN_UNWRAP_PACKAGE;
    assert_true(advertised);

    assert_int_equal(import("good.gpk", &pkg_obj), CKR_OK);
    /* The package object: the module's CKO_GUARDIAN_PACKAGE, live counters. */
    {
        CK_OBJECT_CLASS cls = 0;
        CK_ULONG release = 0, authorised = 0, remaining = 0;
        CK_BBOOL modifiable = CK_TRUE;
        char oem[16] = "";
        CK_ATTRIBUTE b[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_OEM_ID, oem, sizeof(oem)},
                            {CKA_GUARDIAN_RELEASE, &release, sizeof(release)},
                            {CKA_GUARDIAN_AUTHORISED_UNITS, &authorised, sizeof(authorised)},
                            {CKA_GUARDIAN_REMAINING_UNITS, &remaining, sizeof(remaining)},
                            {CKA_GUARDIAN_PACKAGE_ID, id, sizeof(id)}, {CKA_MODIFIABLE, &modifiable, 1}};
        CK_ATTRIBUTE bad[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_GUARDIAN_RELEASE, &release, 1}};
        CK_ULONG size = 0;
        assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, b, 7), CKR_OK);
        assert_int_equal(cls, CKO_GUARDIAN_PACKAGE);
        assert_int_equal(b[1].ulValueLen, 4);
        assert_memory_equal(oem, "ACME", 4);
        assert_int_equal(release, 3);
        assert_int_equal(authorised, 100);
        assert_int_equal(remaining, 100);
        assert_false(modifiable);
        /* PKCS#11 rules: unknown attribute, short buffer. */
        assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, bad, 2), CKR_ATTRIBUTE_TYPE_INVALID);
        assert_int_equal(bad[0].ulValueLen, (CK_ULONG)-1);
        assert_int_equal(bad[1].ulValueLen, (CK_ULONG)-1);
        assert_int_equal(m->C_DestroyObject(s, pkg_obj), CKR_ACTION_PROHIBITED);
        assert_int_equal(m->C_SetAttributeValue(s, pkg_obj, b, 1), CKR_ACTION_PROHIBITED);
        assert_int_equal(m->C_GetObjectSize(s, pkg_obj, &size), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, pkg_obj + 1000, b, 1), CKR_OBJECT_HANDLE_INVALID);
    }
    /* Found by class, and by CKA_ID together with the package's keys and certificates. */
    {
        CK_OBJECT_CLASS pcls = CKO_GUARDIAN_PACKAGE;
        CK_ATTRIBUTE by_class = {CKA_CLASS, &pcls, sizeof(pcls)}, by_id = {CKA_ID, id, 16};
        CK_OBJECT_HANDLE all[16];
        int seen_pkg = 0;
        assert_int_equal(m->C_FindObjectsInit(s, &by_class, 1), CKR_OK);
        assert_int_equal(m->C_FindObjectsInit(s, &by_class, 1), CKR_OPERATION_ACTIVE);
        assert_int_equal(m->C_FindObjects(s, all, 16, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        assert_int_equal(n, 1);
        assert_int_equal(all[0], pkg_obj);
        assert_int_equal(m->C_FindObjectsInit(s, &by_id, 1), CKR_OK);
        assert_int_equal(m->C_FindObjects(s, all, 16, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        for (CK_ULONG i = 0; i < n; i++)
            seen_pkg += all[i] == pkg_obj;
        assert_int_equal(seen_pkg, 1);
        /* The CA key, the CA certificate and the package object: not the
         * root certificate, nor the extra key and the confidential item. */
        assert_int_equal(n, 3);
    }
    /* Key and certificate pair by CKA_ID as NSS and Java pair them: the
     * production CA key's CKA_ID is its own certificate's, the root's is the
     * SHA-1 of the root's public key. */
    {
        CK_OBJECT_CLASS ccls = CKO_CERTIFICATE;
        CK_BYTE label0[] = "guardian:ACME/SENSOR-1/r3:production-ca-cert0", label1[] = "guardian:ACME/SENSOR-1/r3:chain-1";
        CK_BYTE key_label[] = "guardian:ACME/SENSOR-1/r3:production-ca";
        CK_BYTE got[64], der[4096], sha1[20];
        CK_OBJECT_HANDLE h[2];
        CK_ATTRIBUTE c0[] = {{CKA_CLASS, &ccls, sizeof(ccls)}, {CKA_LABEL, label0, sizeof(label0) - 1}};
        CK_ATTRIBUTE c1[] = {{CKA_CLASS, &ccls, sizeof(ccls)}, {CKA_LABEL, label1, sizeof(label1) - 1}};
        CK_ATTRIBUTE k[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_LABEL, key_label, sizeof(key_label) - 1}};
        CK_ATTRIBUTE ga = {CKA_ID, got, sizeof(got)}, va = {CKA_VALUE, der, sizeof(der)};
        const unsigned char *p = der;
        X509 *x;
        unsigned int sha1_len = 0;

        assert_int_equal(find_objects(k, 2, h, 2, &n), CKR_OK);
        assert_int_equal(n, 1);
        assert_int_equal(m->C_GetAttributeValue(s, h[0], &ga, 1), CKR_OK);
        assert_int_equal(ga.ulValueLen, 16);
        assert_memory_equal(got, id, 16);
        assert_int_equal(find_objects(c0, 2, h, 2, &n), CKR_OK);
        assert_int_equal(n, 1);
        ga.ulValueLen = sizeof(got);
        assert_int_equal(m->C_GetAttributeValue(s, h[0], &ga, 1), CKR_OK);
        assert_int_equal(ga.ulValueLen, 16);
        assert_memory_equal(got, id, 16);
        assert_int_equal(find_objects(c1, 2, h, 2, &n), CKR_OK);
        assert_int_equal(n, 1);
        ga.ulValueLen = sizeof(got);
        assert_int_equal(m->C_GetAttributeValue(s, h[0], &ga, 1), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, h[0], &va, 1), CKR_OK);
        x = d2i_X509(NULL, &p, (long)va.ulValueLen);
        assert_non_null(x);
        assert_int_equal(X509_pubkey_digest(x, EVP_sha1(), sha1, &sha1_len), 1);
        X509_free(x);
        assert_int_equal(ga.ulValueLen, 20);
        assert_memory_equal(got, sha1, 20);
    }
    {
        /* One private key has the package ID (the production CA key); the
         * extra key's CKA_ID is the package ID followed by its label, the
         * confidential item's too. */
        CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
        CK_BYTE extra_id[16 + 6], item_id[16 + 7];
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_ID, id, 16}};
        CK_ATTRIBUTE te[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_ID, extra_id, sizeof(extra_id)}};
        CK_ATTRIBUTE ti[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_ID, item_id, sizeof(item_id)}};
        CK_ULONG n_extra = 0, n_item = 0;
        memcpy(extra_id, id, 16);
        memcpy(extra_id + 16, "attest", 6);
        memcpy(item_id, id, 16);
        memcpy(item_id + 16, "bootkey", 7);
        assert_int_equal(find_objects(t, 2, keys, 4, &n), CKR_OK);
        assert_int_equal(n, 1); /* the production CA key */
        assert_int_equal(find_objects(te, 2, keys + 1, 3, &n_extra), CKR_OK);
        assert_int_equal(n_extra, 1);
        assert_int_equal(find_objects(ti, 2, keys + 2, 2, &n_item), CKR_OK);
        assert_int_equal(n_item, 1);
        n = 3; /* the CA key, the extra key, the confidential item: checked below */
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE;
        CK_ATTRIBUTE b[] = {{CKA_EXTRACTABLE, &extractable, 1}, {CKA_SENSITIVE, &sensitive, 1}};
        CK_ULONG wl = sizeof(value);
        assert_int_equal(m->C_GetAttributeValue(s, keys[i], b, 2), CKR_OK);
        assert_false(extractable);
        assert_true(sensitive);
        a = (CK_ATTRIBUTE){CKA_VALUE, value, sizeof(value)};
        assert_int_equal(m->C_GetAttributeValue(s, keys[i], &a, 1), CKR_ATTRIBUTE_SENSITIVE);
        assert_int_not_equal(m->C_WrapKey(s, &wrap, guardian_key, keys[i], value, &wl), CKR_OK);
    }
    /* The integrity data item is readable, byte for byte. */
    {
        CK_BYTE label[] = "guardian:ACME/SENSOR-1/r3:config";
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &dcls, sizeof(dcls)}, {CKA_LABEL, label, sizeof(label) - 1}};
        assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
        assert_int_equal(m->C_FindObjects(s, data, 4, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        assert_int_equal(n, 1);
        a = (CK_ATTRIBUTE){CKA_VALUE, value, sizeof(value)};
        assert_int_equal(m->C_GetAttributeValue(s, data[0], &a, 1), CKR_OK);
        assert_int_equal(a.ulValueLen, 15);
        assert_memory_equal(value, "line-config v1\n", 15);
    }
    /* The production CA key serves only the derive mechanism: a standard
     * C_SignInit with it is refused by the module's policy (the derive tests
     * show it signs certificates that verify under the CA certificate). */
    {
        CK_BYTE label[] = "guardian:ACME/SENSOR-1/r3:production-ca";
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_LABEL, label, sizeof(label) - 1}};
        FILE *f = fopen(path("ca.pem"), "r");
        X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
        assert_int_equal(m->C_FindObjects(s, keys, 4, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        assert_int_equal(n, 1);
        memset(hash, 0x42, sizeof(hash));
        assert_int_equal(m->C_SignInit(s, &ecdsa, keys[0]), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_int_equal(m->C_Sign(s, hash, sizeof(hash), sig, &sig_len), CKR_OPERATION_NOT_INITIALIZED);
        (void)sig_len;
        X509_free(ca);
    }

    /* Release management and replay. */
    refused("good.gpk", CKR_GUARDIAN_PACKAGE_REPLAYED);
    refused("older.gpk", CKR_GUARDIAN_PACKAGE_ROLLBACK);
    assert_int_equal(import("newer.gpk", &pkg_obj), CKR_OK);
    refused("good.gpk", CKR_GUARDIAN_PACKAGE_REPLAYED);
}

/* Every single byte of the file changed, one at a time: container,
 * signature, certificates, header, wrapped keys, data items.  Each is
 * refused; the signature or the structure gives way first.  The count of
 * those that were not. */
static int sweep(const char *name)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_OBJECT_HANDLE h = 0;
    size_t len;
    unsigned char *pkg = slurp(name, &len), *copy = malloc(len);
    int flipped_ok = 0;
    assert_non_null(copy);
    for (size_t off = 0; off < len; off++) {
        CK_RV rv;
        memcpy(copy, pkg, len);
        copy[off] ^= 0x01;
        rv = m->C_UnwrapKey(s, &mech, guardian_key, copy, (CK_ULONG)len, NULL, 0, &h);
        if (rv != CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID && rv != CKR_WRAPPED_KEY_INVALID &&
            rv != CKR_GUARDIAN_UNTRUSTED_SIGNER) {
            fprintf(stderr, "%s: byte %zu of %zu flipped: got 0x%lx\n", name, off, len, (unsigned long)rv);
            flipped_ok++;
        }
    }
    free(pkg);
    free(copy);
    return flipped_ok;
}

static void test_refusals(void **st)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_BYTE param[8] = {0};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE widen = {CKA_EXTRACTABLE, &yes, 1}, narrow = {CKA_DERIVE, &no, 1};
    CK_OBJECT_HANDLE h = 0;
    size_t len;
    unsigned char *pkg = slurp("good.gpk", &len);
    CK_ULONG before = count_objects();
    (void)st;

    refused("wrong-guardian.gpk", CKR_GUARDIAN_WRONG_GUARDIAN);
    refused("evil.gpk", CKR_GUARDIAN_UNTRUSTED_SIGNER);
    refused("expired.gpk", CKR_GUARDIAN_PACKAGE_EXPIRED);
    refused("config.txt", CKR_WRAPPED_KEY_INVALID);
    assert_int_equal(sweep("good.gpk"), 0);
    /* The same for the X9.63 scheme (id-guardian-kt-ecdh-x963sha256-v1),
     * unflipped refused here as CKR_GUARDIAN_TRANSPORT_UNSUPPORTED (SoftHSM
     * has no CKD_SHA256_KDF; its in-token bindings are checked on NSS,
     * tests/backends/kt_vectors.c). */
    assert_int_equal(sweep("x963.gpk"), 0);
    refused("x963.gpk", CKR_GUARDIAN_TRANSPORT_UNSUPPORTED);
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len - 1, NULL, 0, &h),
                     CKR_WRAPPED_KEY_INVALID);
    /* Extended: a byte appended after the DER. */
    {
        unsigned char *longer = malloc(len + 1);
        memcpy(longer, pkg, len);
        longer[len] = 0;
        assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, longer, (CK_ULONG)len + 1, NULL, 0, &h),
                         CKR_WRAPPED_KEY_INVALID);
        free(longer);
    }
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, 0, NULL, 0, &h), CKR_WRAPPED_KEY_LEN_RANGE);
    mech.pParameter = param;
    mech.ulParameterLen = sizeof(param);
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len, NULL, 0, &h),
                     CKR_MECHANISM_PARAM_INVALID);
    mech.pParameter = NULL;
    mech.ulParameterLen = 0;
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len, &widen, 1, &h),
                     CKR_TEMPLATE_INCONSISTENT);
    assert_int_equal(m->C_UnwrapKey(s, &mech, 0xdead, pkg, (CK_ULONG)len, NULL, 0, &h),
                     CKR_UNWRAPPING_KEY_HANDLE_INVALID);
    assert_int_equal(count_objects(), before);
    /* Not logged in: refused before anything else. */
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len, NULL, 0, &h),
                     CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    find_guardian_key();
    /* Narrowing is allowed, and after all those refusals the package still imports. */
    assert_int_equal(m->C_UnwrapKey(s, &mech, guardian_key, pkg, (CK_ULONG)len, &narrow, 1, &h), CKR_OK);
    free(pkg);
}

/* ---- the container exactly as signed (docs/package-format.md) --------------- */

static X509 *read_pem_cert(const char *name)
{
    FILE *f = fopen(path(name), "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    assert_non_null(x);
    fclose(f);
    return x;
}

static CMS_ContentInfo *read_cms(const char *name)
{
    size_t len;
    unsigned char *der = slurp(name, &len);
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    assert_non_null(cms);
    free(der);
    return cms;
}

/* Stock OpenSSL accepts `name`: its signature verifies and its signer chains
 * to the OEM root.  An alteration that passes this is one only the container
 * profile can catch. */
static int openssl_verifies(const char *name)
{
    CMS_ContentInfo *cms = read_cms(name);
    X509_STORE *store = X509_STORE_new();
    X509 *root = read_pem_cert("oem-root.pem");
    BIO *sink = BIO_new(BIO_s_null());
    int ok;
    X509_STORE_add_cert(store, root);
    ok = CMS_verify(cms, NULL, store, NULL, sink, CMS_BINARY) == 1;
    ERR_clear_error();
    BIO_free(sink);
    X509_free(root);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
    return ok;
}

/* `in` changed by `edit` as a man in the middle would (parsed, changed,
 * re-encoded as DER), written to `out`. */
static void alter(const char *in, const char *out, void (*edit)(CMS_ContentInfo *))
{
    size_t len;
    unsigned char *before = slurp(in, &len), *after = NULL;
    CMS_ContentInfo *cms = read_cms(in);
    int n;
    FILE *f;
    edit(cms);
    n = i2d_CMS_ContentInfo(cms, &after);
    assert_true(n > 0);
    assert_false((size_t)n == len && memcmp(before, after, len) == 0);
    f = fopen(path(out), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(after, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    OPENSSL_free(after);
    free(before);
    CMS_ContentInfo_free(cms);
}

static ASN1_OCTET_STRING *signature_of(CMS_ContentInfo *cms)
{
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    assert_non_null(si);
    return CMS_SignerInfo_get0_signature(si);
}

/* (r, s) -> (r, n - s): the same signature, still valid; the one guardian-wrap
 * wrote must have been the low-s one. */
static void edit_high_s(CMS_ContentInfo *cms)
{
    ASN1_OCTET_STRING *sig = signature_of(cms);
    const unsigned char *p = ASN1_STRING_get0_data(sig);
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, ASN1_STRING_length(sig));
    X509 *signer = read_pem_cert("signer.pem");
    BIGNUM *order = NULL, *half = BN_new(), *flipped = BN_new();
    unsigned char *der = NULL;
    int n;

    assert_non_null(es);
    assert_int_equal(EVP_PKEY_get_bn_param(X509_get0_pubkey(signer), OSSL_PKEY_PARAM_EC_ORDER, &order), 1);
    assert_int_equal(BN_rshift1(half, order), 1);
    assert_true(BN_cmp(ECDSA_SIG_get0_s(es), half) <= 0);
    assert_int_equal(BN_sub(flipped, order, ECDSA_SIG_get0_s(es)), 1);
    assert_int_equal(ECDSA_SIG_set0(es, BN_dup(ECDSA_SIG_get0_r(es)), flipped), 1);
    n = i2d_ECDSA_SIG(es, &der);
    assert_true(n > 0);
    assert_int_equal(ASN1_OCTET_STRING_set(sig, der, n), 1);
    OPENSSL_free(der);
    BN_free(order);
    BN_free(half);
    ECDSA_SIG_free(es);
    X509_free(signer);
}

static void add_cert(CMS_ContentInfo *cms, const char *name)
{
    X509 *x = read_pem_cert(name);
    assert_int_equal(CMS_add1_cert(cms, x), 1);
    X509_free(x);
}

/* The production CA's certificate: issued by the enrolled root, so it
 * verifies, but it is not on the signer's path. */
static void edit_add_ca_cert(CMS_ContentInfo *cms)
{
    add_cert(cms, "ca.pem");
}

static void edit_add_root(CMS_ContentInfo *cms)
{
    add_cert(cms, "oem-root.pem");
}

/* An unsignedAttrs [1] that holds nothing: added and taken away again. */
static void edit_empty_unsigned_attrs(CMS_ContentInfo *cms)
{
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    ASN1_OCTET_STRING *o = ASN1_OCTET_STRING_new();
    assert_int_equal(ASN1_OCTET_STRING_set(o, (const unsigned char *)"x", 1), 1);
    assert_int_equal(CMS_unsigned_add1_attr_by_NID(si, NID_pkcs9_challengePassword, V_ASN1_OCTET_STRING, o, -1), 1);
    X509_ATTRIBUTE_free(CMS_unsigned_delete_attr(si, 0));
    assert_int_equal(CMS_unsigned_get_attr_count(si), 0);
    ASN1_OCTET_STRING_free(o);
}

/* The signer certificate's own ECDSA signature (by the OEM root) rewritten as
 * (r, n - s): the certificate still verifies, and its bytes differ.  CMS_get1_certs
 * hands out the container's own certificate objects. */
static void edit_signer_cert_s(CMS_ContentInfo *cms)
{
    STACK_OF(X509) *certs = CMS_get1_certs(cms);
    X509 *root = read_pem_cert("oem-root.pem"), *signer = NULL;
    const ASN1_BIT_STRING *csig = NULL;
    ASN1_BIT_STRING *sig;
    const unsigned char *p;
    ECDSA_SIG *es;
    BIGNUM *order = NULL, *flipped = BN_new();
    unsigned char *der = NULL;
    int n;

    for (int i = 0; i < sk_X509_num(certs); i++)
        if (X509_check_issued(root, sk_X509_value(certs, i)) == X509_V_OK)
            signer = sk_X509_value(certs, i);
    assert_non_null(signer);
    X509_get0_signature(&csig, NULL, signer);
    sig = (ASN1_BIT_STRING *)csig;
    p = ASN1_STRING_get0_data(sig);
    es = d2i_ECDSA_SIG(NULL, &p, ASN1_STRING_length(sig));
    assert_non_null(es);
    assert_int_equal(EVP_PKEY_get_bn_param(X509_get0_pubkey(root), OSSL_PKEY_PARAM_EC_ORDER, &order), 1);
    assert_int_equal(BN_sub(flipped, order, ECDSA_SIG_get0_s(es)), 1);
    assert_int_equal(ECDSA_SIG_set0(es, BN_dup(ECDSA_SIG_get0_r(es)), flipped), 1);
    n = i2d_ECDSA_SIG(es, &der);
    assert_true(n > 0);
    assert_int_equal(ASN1_BIT_STRING_set(sig, der, n), 1);
    OPENSSL_free(der);
    BN_free(order);
    ECDSA_SIG_free(es);
    X509_free(root);
    sk_X509_pop_free(certs, X509_free);
}

/* An RSA signature with a leading zero byte: the same integer. */
static void edit_rsa_leading_zero(CMS_ContentInfo *cms)
{
    ASN1_OCTET_STRING *sig = signature_of(cms);
    int n = ASN1_STRING_length(sig);
    unsigned char *longer = calloc(1, (size_t)n + 1);
    memcpy(longer + 1, ASN1_STRING_get0_data(sig), (size_t)n);
    assert_int_equal(ASN1_OCTET_STRING_set(sig, longer, n + 1), 1);
    free(longer);
}

/* The SignerInfo's issuer name with one letter in the other case: X509_NAME_cmp
 * ignores case, so CMS still finds the signer.  The SignerInfo follows the
 * certificate set, which holds only the signer's certificate: the first "ACME
 * Root" after that certificate is the SignerInfo's issuer. */
static void write_sid_case_changed(const char *in, const char *out)
{
    size_t len;
    unsigned char *der = slurp(in, &len), *cert = NULL, *at = NULL;
    X509 *signer = read_pem_cert("signer.pem");
    int cert_len = i2d_X509(signer, &cert);
    size_t from = 0;
    FILE *f;
    assert_true(cert_len > 0);
    for (size_t i = 0; from == 0 && i + (size_t)cert_len <= len; i++)
        if (memcmp(der + i, cert, (size_t)cert_len) == 0)
            from = i + (size_t)cert_len;
    assert_true(from > 0);
    for (size_t i = from; at == NULL && i + 9 <= len; i++)
        if (memcmp(der + i, "ACME Root", 9) == 0)
            at = der + i;
    assert_non_null(at);
    at[0] = 'a';
    OPENSSL_free(cert);
    X509_free(signer);
    f = fopen(path(out), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(der, 1, len, f), len);
    fclose(f);
    free(der);
}

/* What anyone can change in transit without the OEM's key still verifies with
 * stock OpenSSL but would import under the same package ID with another
 * SHA-256, breaking the OEM's verify-report --package: each is refused, twice
 * (nothing was recorded), leaves no object, and the genuine package imports
 * afterwards. */
static void test_container_exactly_as_signed(void **st)
{
    static const char *const altered[] = {"high-s.gpk", "extra-cert.gpk", "with-root.gpk", "empty-unsigned.gpk",
                                          "empty-crls.gpk", "sid-case.gpk", "chained-with-root.gpk",
                                          "signer-cert-s.gpk"};
    CK_OBJECT_HANDLE h = 0;
    (void)st;

    alter("good.gpk", "high-s.gpk", edit_high_s);
    alter("good.gpk", "extra-cert.gpk", edit_add_ca_cert);
    alter("good.gpk", "with-root.gpk", edit_add_root);
    alter("good.gpk", "empty-unsigned.gpk", edit_empty_unsigned_attrs);
    write_sid_case_changed("good.gpk", "sid-case.gpk");
    alter("chained.gpk", "chained-with-root.gpk", edit_add_root);
    alter("good.gpk", "signer-cert-s.gpk", edit_signer_cert_s);
    alter("rsa-signed.gpk", "rsa-leading-zero.gpk", edit_rsa_leading_zero);
    for (size_t i = 0; i < sizeof(altered) / sizeof(altered[0]); i++) {
        if (!openssl_verifies(altered[i]))
            fail_msg("%s: stock OpenSSL refuses it: not an alteration only the profile catches", altered[i]);
        refused(altered[i], CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID);
        refused(altered[i], CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID);
    }
    /* PKCS#1 v1.5 has one signature per key and message: no other length. */
    refused("rsa-leading-zero.gpk", CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID);
    /* A signer's intermediate is needed: without it, no chain. */
    refused("no-intermediate.gpk", CKR_GUARDIAN_UNTRUSTED_SIGNER);

    assert_int_equal(import("good.gpk", &h), CKR_OK);
    assert_int_equal(import("rsa-signed.gpk", &h), CKR_OK);
    assert_int_equal(import("chained.gpk", &h), CKR_OK);
    refused("high-s.gpk", CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID);
}

/* A package the OEM's key signed, whose ephemeral key is off the Guardian's
 * curve: refused before the backend's ECDH, and not recorded. */
static void test_ephemeral_point_off_curve(void **st)
{
    (void)st;
    assert_true(openssl_verifies("off-curve.gpk"));
    refused("off-curve.gpk", CKR_WRAPPED_KEY_INVALID);
    refused("off-curve.gpk", CKR_WRAPPED_KEY_INVALID);
    refused("expired.gpk", CKR_GUARDIAN_PACKAGE_EXPIRED);
}

static void test_x963_needs_backend_kdf(void **st)
{
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG before = count_objects();
    CK_RV rv;
    (void)st;
    /* SoftHSMv2 2.6.1 has no CKD_SHA256_KDF, which its self-test measured: the
     * import is refused before any key operation, leaves nothing behind, and
     * is not recorded (a retry fails the same way, not as a replay). */
    rv = import("x963.gpk", &h);
    assert_int_equal(rv, CKR_GUARDIAN_TRANSPORT_UNSUPPORTED);
    assert_int_equal(count_objects(), before);
    assert_int_equal(import("x963.gpk", &h), rv);
}

/* The key-transport vectors (tests/vectors/, made with Python's cryptography)
 * run through the backend exactly as the module runs them: the in-token chain
 * must reproduce the KEK, and unwrap the vector's CA key. */
static void test_vectors_in_token(void **st)
{
    const char *vpath = getenv("GUARDIAN_TEST_VECTORS");
    size_t lg = 0, le = 0, lc = 0, lk = 0, lw = 0, lp = 0;
    unsigned char *gd = vector_get(vpath, "guardian_private", &lg), *ep = vector_get(vpath, "ephemeral_public", &le);
    unsigned char *c = vector_get(vpath, "kdf_context_c", &lc), *kek_v = vector_get(vpath, "kek_ecdh_aescbc", &lk);
    unsigned char *w = vector_get(vpath, "wrapped_aescbc", &lw), *p8 = vector_get(vpath, "ca_private_pkcs8", &lp);
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, secret = CKO_SECRET_KEY;
    CK_KEY_TYPE ec = CKK_EC, aes = CKK_AES;
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, value[64], hash[32], sig[64];
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len32 = 32, sig_len = sizeof(sig);
    CK_OBJECT_HANDLE g, z, kek, ca;
    CK_ECDH1_DERIVE_PARAMS ecdh = {CKD_NULL, 0, NULL, 0, NULL};
    CK_AES_CBC_ENCRYPT_DATA_PARAMS cbc;
    CK_MECHANISM m_ecdh = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)}, m_cbc = {CKM_AES_CBC_ENCRYPT_DATA, &cbc, sizeof(cbc)};
    CK_MECHANISM m_kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0}, m_ecdsa = {CKM_ECDSA, NULL, 0};
    CK_ATTRIBUTE g_t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                          {CKA_EC_PARAMS, p256, sizeof(p256)}, {CKA_VALUE, gd, lg}, {CKA_TOKEN, &no, 1},
                          {CKA_DERIVE, &yes, 1}};
    CK_ATTRIBUTE z_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                          {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, 1}, {CKA_DERIVE, &yes, 1}};
    /* Extractable here only so that the test can compare it with the vector. */
    CK_ATTRIBUTE kek_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, 1}, {CKA_UNWRAP, &yes, 1},
                            {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_ATTRIBUTE ca_t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                           {CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}};
    CK_ATTRIBUTE get = {CKA_VALUE, value, sizeof(value)};
    (void)st;

    assert_non_null(gd);
    assert_non_null(p8);
    ecdh.pPublicData = ep;
    ecdh.ulPublicDataLen = le;
    memset(&cbc, 0, sizeof(cbc));
    cbc.pData = c;
    cbc.length = lc;
    assert_int_equal(m->C_CreateObject(s, g_t, 6, &g), CKR_OK);
    assert_int_equal(m->C_DeriveKey(s, &m_ecdh, g, z_t, 5, &z), CKR_OK);
    assert_int_equal(m->C_DeriveKey(s, &m_cbc, z, kek_t, 7, &kek), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, kek, &get, 1), CKR_OK);
    assert_int_equal(get.ulValueLen, lk);
    assert_memory_equal(value, kek_v, lk);
    assert_int_equal(m->C_UnwrapKey(s, &m_kwp, kek, w, lw, ca_t, 4, &ca), CKR_OK);
    memset(hash, 0x5a, sizeof(hash));
    assert_int_equal(m->C_SignInit(s, &m_ecdsa, ca), CKR_OK);
    assert_int_equal(m->C_Sign(s, hash, sizeof(hash), sig, &sig_len), CKR_OK);
    {
        const unsigned char *q = p8;
        EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &q, (long)lp);
        assert_ecdsa_verifies(k, hash, sizeof(hash), sig);
        EVP_PKEY_free(k);
    }
    free(gd), free(ep), free(c), free(kek_v), free(w), free(p8);
}

/* ---- CKM_GUARDIAN_DERIVE_DEVICE_CERT ------------------------------------------------------ */

static EVP_PKEY *gen_key(const char *alg, const char *curve_or_bits)
{
    EVP_PKEY *k = NULL;
    if (strcmp(alg, "RSA") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)atoi(curve_or_bits));
    else if (strcmp(alg, "EC") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve_or_bits);
    else
        k = EVP_PKEY_Q_keygen(NULL, NULL, alg);
    assert_non_null(k);
    return k;
}

static size_t spki_of(EVP_PKEY *k, unsigned char *out)
{
    unsigned char *p = out;
    int n = i2d_PUBKEY(k, &p);
    assert_true(n > 0 && n <= 1024);
    return (size_t)n;
}

static CK_RV derive_raw(CK_OBJECT_HANDLE base, CK_ULONG fmt, const void *id, size_t id_len, const unsigned char *spki,
                        size_t spki_len, CK_ATTRIBUTE *t, CK_ULONG nt, CK_OBJECT_HANDLE *out)
{
    CK_GUARDIAN_DEVICE_CERT_PARAMS p = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, fmt, (CK_BYTE_PTR)id, id_len,
                                        (CK_BYTE_PTR)spki, spki_len};
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &p, sizeof(p)};
    return m->C_DeriveKey(s, &mech, base, t, nt, out);
}

static CK_RV derive(CK_OBJECT_HANDLE base, const char *device_id, EVP_PKEY *k, CK_OBJECT_HANDLE *out)
{
    unsigned char spki[1024];
    size_t n = spki_of(k, spki);
    return derive_raw(base, CKG_GUARDIAN_DEVICE_ID_TEXT, device_id, strlen(device_id), spki, n, NULL, 0, out);
}

/* The production CA key of the package behind package object `pkg_obj`: the
 * private key with its CKA_ID labelled "...:production-ca". */
static CK_OBJECT_HANDLE ca_key_of(CK_OBJECT_HANDLE pkg_obj)
{
    CK_BYTE id[16];
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_ID, id, sizeof(id)}};
    CK_OBJECT_HANDLE h[8], found = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, &a, 1), CKR_OK);
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 8, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        char label[128];
        CK_ATTRIBUTE l = {CKA_LABEL, label, sizeof(label) - 1};
        assert_int_equal(m->C_GetAttributeValue(s, h[i], &l, 1), CKR_OK);
        label[l.ulValueLen] = '\0';
        if (l.ulValueLen > 14 && strcmp(label + l.ulValueLen - 14, ":production-ca") == 0)
            found = h[i];
    }
    assert_int_not_equal(found, CK_INVALID_HANDLE);
    return found;
}

static CK_ULONG remaining_of(CK_OBJECT_HANDLE pkg_obj)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {CKA_GUARDIAN_REMAINING_UNITS, &v, sizeof(v)};
    assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, &a, 1), CKR_OK);
    return v;
}

/* The certificate object's value, checked against its other attributes. */
static X509 *cert_of(CK_OBJECT_HANDLE h)
{
    CK_BYTE value[4096], subject[512], issuer[512], serial[64];
    CK_OBJECT_CLASS cls = 0;
    CK_CERTIFICATE_TYPE ct = 0;
    CK_BBOOL is_token = CK_TRUE;
    CK_ATTRIBUTE a[] = {{CKA_VALUE, value, sizeof(value)},   {CKA_SUBJECT, subject, sizeof(subject)},
                        {CKA_ISSUER, issuer, sizeof(issuer)}, {CKA_SERIAL_NUMBER, serial, sizeof(serial)},
                        {CKA_CLASS, &cls, sizeof(cls)},       {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                        {CKA_TOKEN, &is_token, sizeof(is_token)}};
    const unsigned char *p = value;
    unsigned char *der = NULL;
    X509 *x;
    int len;
    assert_int_equal(m->C_GetAttributeValue(s, h, a, 7), CKR_OK);
    assert_int_equal(cls, CKO_CERTIFICATE);
    assert_int_equal(ct, CKC_X_509);
    x = d2i_X509(NULL, &p, (long)a[0].ulValueLen);
    assert_non_null(x);
    assert_ptr_equal(p, value + a[0].ulValueLen);
    len = i2d_X509_NAME(X509_get_subject_name(x), &der);
    assert_int_equal((CK_ULONG)len, a[1].ulValueLen);
    assert_memory_equal(der, subject, (size_t)len);
    OPENSSL_free(der);
    der = NULL;
    len = i2d_X509_NAME(X509_get_issuer_name(x), &der);
    assert_int_equal((CK_ULONG)len, a[2].ulValueLen);
    assert_memory_equal(der, issuer, (size_t)len);
    OPENSSL_free(der);
    der = NULL;
    len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &der);
    assert_int_equal((CK_ULONG)len, a[3].ulValueLen);
    assert_memory_equal(der, serial, (size_t)len);
    OPENSSL_free(der);
    return x;
}

/* openssl verify -CAfile oem-root.pem -untrusted <ca> device.pem */
static void assert_chains(X509 *x, const char *ca_name)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    FILE *f;
    X509 *root, *ca;
    int ok;

    f = fopen(path("oem-root.pem"), "r");
    root = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(path(ca_name), "r");
    ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(root);
    assert_non_null(ca);
    X509_STORE_add_cert(store, root);
    sk_X509_push(untrusted, ca);
    X509_STORE_CTX_init(ctx, store, x, untrusted);
    ok = X509_verify_cert(ctx);
    if (ok != 1)
        fail_msg("device certificate does not verify: %s",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(root);
}

/* The device certificate profile.  `legacy`: the package's template has
 * neither deviceExtOid nor noDeviceExt (as packages signed before
 * noDeviceExt), so the extension is under the legacy 2.25.<uuid>.3; else
 * (what guardian-wrap makes by default) there is no device-identity
 * extension at all: the five standard extensions only. */
static void assert_profile_of(X509 *x, const char *device_id, EVP_PKEY *device_key, uint64_t serial, int legacy)
{
    char cn[128];
    const ASN1_INTEGER *sn = X509_get_serialNumber(x);
    unsigned char snb[32];
    BIGNUM *bn = ASN1_INTEGER_to_BN(sn, NULL);
    int n = BN_bn2bin(bn, snb);
    ASN1_OBJECT *oid = OBJ_txt2obj("2.25.62758544141009244537205961397770264239.3", 1);
    uint64_t low = 0;

    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, device_id);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_organizationName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, "ACME");
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), device_key), 1);
    assert_int_equal(n, 16);
    BN_free(bn);
    for (int i = 8; i < 16; i++)
        low = low << 8 | snb[i];
    assert_int_equal(low, serial);
    assert_true(X509_get_extension_flags(x) & EXFLAG_BCONS);
    assert_false(X509_check_ca(x));
    assert_non_null(X509_get0_subject_key_id(x));
    assert_non_null(X509_get0_authority_key_id(x));
    if (legacy) {
        assert_true(X509_get_ext_by_OBJ(x, oid, -1) >= 0);
    } else {
        /* Standard extensions only: BC, KU, EKU if any, AKI, SKI. */
        for (int i = 0; i < X509_get_ext_count(x); i++) {
            int nid = OBJ_obj2nid(X509_EXTENSION_get_object(X509_get_ext(x, i)));
            assert_true(nid == NID_basic_constraints || nid == NID_key_usage || nid == NID_ext_key_usage ||
                        nid == NID_authority_key_identifier || nid == NID_subject_key_identifier);
        }
    }
    ASN1_OBJECT_free(oid);
}

static void assert_profile(X509 *x, const char *device_id, EVP_PKEY *device_key, uint64_t serial)
{
    assert_profile_of(x, device_id, device_key, serial, 0);
}

/* A package signed before noDeviceExt existed keeps meaning what it meant:
 * its certificates carry the device-identity extension under the legacy OID. */
static void test_derive_legacy_template(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, cert;
    EVP_PKEY *dk = gen_key("EC", "P-256");
    X509 *x;
    (void)st;

    assert_int_equal(import("legacy.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(derive(ca_key_of(pkg_obj), "SN-legacy", dk, &cert), CKR_OK);
    x = cert_of(cert);
    assert_profile_of(x, "SN-legacy", dk, 1, 1);
    assert_chains(x, "ca.pem");
    X509_free(x);
    assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
    EVP_PKEY_free(dk);
}

static void test_derive_certificates(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, rsa_obj = 0, ca, rsa_ca, cert;
    static const struct {
        const char *alg, *param;
    } kinds[] = {{"EC", "P-256"}, {"EC", "P-384"}, {"RSA", "2048"}};
    CK_MECHANISM_INFO info;
    char id[32];
    uint64_t serial = 0;
    (void)st;

    assert_int_equal(import("good.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(import("rsa.gpk", &rsa_obj), CKR_OK);
    assert_int_equal(m->C_GetMechanismInfo(slot, CKM_GUARDIAN_DERIVE_DEVICE_CERT, &info), CKR_OK);
    assert_true(info.flags & CKF_DERIVE);
    ca = ca_key_of(pkg_obj);
    rsa_ca = ca_key_of(rsa_obj);

    for (size_t k = 0; k < 3; k++) {
        EVP_PKEY *dk = gen_key(kinds[k].alg, kinds[k].param);
        X509 *x;
        /* EC production CA */
        snprintf(id, sizeof(id), "SN-%zu-ec", k);
        assert_int_equal(derive(ca, id, dk, &cert), CKR_OK);
        x = cert_of(cert);
        assert_profile(x, id, dk, ++serial);
        assert_chains(x, "ca.pem");
        X509_free(x);
        assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
        /* RSA production CA */
        snprintf(id, sizeof(id), "SN-%zu-rsa", k);
        assert_int_equal(derive(rsa_ca, id, dk, &cert), CKR_OK);
        x = cert_of(cert);
        assert_profile(x, id, dk, k + 1);
        assert_chains(x, "rsa-ca.pem");
        X509_free(x);
        assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
        EVP_PKEY_free(dk);
    }
    assert_int_equal(remaining_of(pkg_obj), 97);
    assert_int_equal(remaining_of(rsa_obj), 7);

    /* A binary device ID is shown as hex; a token object when asked. */
    {
        EVP_PKEY *dk = gen_key("EC", "P-256");
        unsigned char spki[1024], raw[4] = {0xde, 0xad, 0xbe, 0xef};
        size_t n = spki_of(dk, spki);
        CK_BBOOL yes = CK_TRUE, is_token = CK_FALSE;
        CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, "line-7", 6}};
        CK_ATTRIBUTE q = {CKA_TOKEN, &is_token, 1};
        X509 *x;
        assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_BINARY, raw, 4, spki, n, t, 2, &cert), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, cert, &q, 1), CKR_OK);
        assert_true(is_token);
        x = cert_of(cert);
        assert_profile(x, "deadbeef", dk, ++serial);
        X509_free(x);
        assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
        EVP_PKEY_free(dk);
    }
}

static void test_derive_refusals(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, small_obj = 0, ca, small_ca, cert = 0;
    EVP_PKEY *good = gen_key("EC", "P-256");
    unsigned char spki[1100], bad[1100];
    size_t n;
    CK_ULONG before;
    (void)st;

    assert_int_equal(import("good.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(import("small.gpk", &small_obj), CKR_OK);
    ca = ca_key_of(pkg_obj);
    small_ca = ca_key_of(small_obj);
    before = remaining_of(pkg_obj);
    n = spki_of(good, spki);

    /* Device keys: unsupported curves and algorithms, not on the curve,
     * malformed, compressed, the CA's own key. */
    {
        static const struct {
            const char *alg, *param;
        } unsupported[] = {{"EC", "P-521"}, {"EC", "secp256k1"}, {"ED25519", NULL}, {"RSA", "1024"}};
        for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
            EVP_PKEY *k = gen_key(unsupported[i].alg, unsupported[i].param);
            if (derive(ca, "dev-x", k, &cert) != CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED)
                fail_msg("%s %s not refused as unsupported", unsupported[i].alg,
                         unsupported[i].param ? unsupported[i].param : "");
            EVP_PKEY_free(k);
        }
    }
    memcpy(bad, spki, n);
    bad[n - 1] ^= 0x01; /* y off the curve */
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, bad, n, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_KEY_INVALID);
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, spki, n - 1, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_KEY_INVALID);
    memcpy(bad, spki, n);
    bad[n] = 0;
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, bad, n + 1, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_KEY_INVALID);
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, (const unsigned char *)"\x30\x00", 2,
                                NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_KEY_INVALID);
    {
        EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
        EVP_PKEY *k = gen_key("EC", "P-256");
        unsigned char *p = bad;
        int len;
        EVP_PKEY_set_utf8_string_param(k, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "compressed");
        len = i2d_PUBKEY(k, &p);
        assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, bad, (size_t)len, NULL, 0, &cert),
                         CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED);
        EVP_PKEY_free(k);
        EC_GROUP_free(g);
    }
    {
        FILE *f = fopen(path("ca.pem"), "r");
        X509 *cax = PEM_read_X509(f, NULL, NULL, NULL);
        size_t cn;
        fclose(f);
        cn = spki_of(X509_get0_pubkey(cax), bad);
        assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, bad, cn, NULL, 0, &cert),
                         CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY);
        X509_free(cax);
    }

    /* Device IDs. */
    assert_int_equal(derive_raw(ca, 99, "dev-x", 5, spki, n, NULL, 0, &cert), CKR_GUARDIAN_DEVICE_ID_INVALID);
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev x", 5, spki, n, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_ID_INVALID);
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "", 0, spki, n, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_ID_INVALID);
    assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_BINARY, bad, 33, spki, n, NULL, 0, &cert),
                     CKR_GUARDIAN_DEVICE_ID_INVALID);

    /* Base keys that are not an imported production CA key. */
    assert_int_equal(derive(guardian_key, "dev-x", good, &cert), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
    assert_int_equal(derive(pkg_obj, "dev-x", good, &cert), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
    assert_int_equal(derive(0x7fff, "dev-x", good, &cert), CKR_KEY_HANDLE_INVALID);
    {
        /* A key that claims to be the CA key (same CKA_ID and label) but is not. */
        CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
        CK_BYTE ec_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, id[16];
        char label[128];
        CK_ATTRIBUTE la = {CKA_LABEL, label, sizeof(label)}, ia = {CKA_ID, id, sizeof(id)};
        CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
        CK_OBJECT_HANDLE pub, priv;
        assert_int_equal(m->C_GetAttributeValue(s, ca, &la, 1), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, ca, &ia, 1), CKR_OK);
        {
            CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, ec_p256, sizeof(ec_p256)}, {CKA_TOKEN, &no, 1}};
            CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, la, ia};
            /* Through the module no caller may make an object carrying the
             * Guardian's label; straight at the backend (sharing the
             * module's SoftHSM and its sessions) one can. */
            CK_FUNCTION_LIST *direct = test_load_module(test_softhsm_path(), NULL);
            assert_int_equal(m->C_GenerateKeyPair(s, &gen, pub_t, 2, priv_t, 4, &pub, &priv), CKR_ACTION_PROHIBITED);
            assert_non_null(direct);
            assert_int_equal(direct->C_GenerateKeyPair(s, &gen, pub_t, 2, priv_t, 4, &pub, &priv), CKR_OK);
        }
        assert_int_equal(derive(priv, "dev-x", good, &cert), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
    }

    /* Parameters and template. */
    {
        CK_GUARDIAN_DEVICE_CERT_PARAMS p = {2, CKG_GUARDIAN_DEVICE_ID_TEXT, (CK_BYTE_PTR) "dev-x", 5, spki, n};
        CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &p, sizeof(p)};
        CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
        CK_ATTRIBUTE t1 = {CKA_CLASS, &sk, sizeof(sk)}, t2 = {CKA_VALUE, "x", 1};
        assert_int_equal(m->C_DeriveKey(s, &mech, ca, NULL, 0, &cert), CKR_MECHANISM_PARAM_INVALID);
        p.version = 1;
        mech.ulParameterLen = sizeof(p) - 1;
        assert_int_equal(m->C_DeriveKey(s, &mech, ca, NULL, 0, &cert), CKR_MECHANISM_PARAM_INVALID);
        mech.pParameter = NULL;
        mech.ulParameterLen = 0;
        assert_int_equal(m->C_DeriveKey(s, &mech, ca, NULL, 0, &cert), CKR_MECHANISM_PARAM_INVALID);
        assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, spki, n, &t1, 1, &cert),
                         CKR_TEMPLATE_INCONSISTENT);
        assert_int_equal(derive_raw(ca, CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, spki, n, &t2, 1, &cert),
                         CKR_ATTRIBUTE_TYPE_INVALID);
    }
    /* None of that spent a unit. */
    assert_int_equal(remaining_of(pkg_obj), before);

    /* Quota: 3 units, then a vendor code that says so. */
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "small-%d", i);
        assert_int_equal(derive(small_ca, id, good, &cert), CKR_OK);
        assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
    }
    assert_int_equal(derive(small_ca, "small-3", good, &cert), CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(remaining_of(small_obj), 0);

    /* A newer release supersedes the old CA key. */
    assert_int_equal(derive(ca, "dev-ok", good, &cert), CKR_OK);
    {
        CK_OBJECT_HANDLE newer = 0;
        assert_int_equal(import("newer.gpk", &newer), CKR_OK);
        /* This process still holds units it reserved under release 3; once
         * they are used (or given back at C_Finalize) the old key stops. */
        for (int i = 0; i < 100; i++) {
            CK_RV rv = derive(ca, "dev-old", good, &cert);
            if (rv == CKR_GUARDIAN_PACKAGE_SUPERSEDED)
                break;
            assert_int_equal(rv, CKR_OK);
            assert_int_equal(m->C_DestroyObject(s, cert), CKR_OK);
            assert_true(i < 64);
        }
        assert_int_equal(derive(ca_key_of(newer), "dev-new", good, &cert), CKR_OK);
    }
    EVP_PKEY_free(good);
}

/* An allowance that expires after the import is refused from then on. */
static void test_derive_expired(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, cert = 0, ca;
    EVP_PKEY *k = gen_key("EC", "P-256");
    char cmd[PATH_MAX * 2];
    (void)st;

    assert_int_equal(import("good.gpk", &pkg_obj), CKR_OK);
    ca = ca_key_of(pkg_obj);
    snprintf(cmd, sizeof(cmd),
             "python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
             "c.execute(\"UPDATE packages SET not_after = 1000\"); c.commit()' %s",
             path("state/guardian.db"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(derive(ca, "late-1", k, &cert), CKR_GUARDIAN_PACKAGE_EXPIRED);
    assert_int_equal(remaining_of(pkg_obj), 100);
    EVP_PKEY_free(k);
}

/* Package objects belong to the token their release was imported into: a
 * second token of the same SoftHSM (initialised here, in the free slot)
 * neither finds nor reads them, logged in or not; the first still does. */
static void test_package_objects_on_own_token(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, found[8];
    CK_OBJECT_CLASS pcls = CKO_GUARDIAN_PACKAGE;
    CK_SLOT_ID slots[16], other = 0;
    CK_ULONG n_slots = 16, n = 0, release = 0;
    CK_SESSION_HANDLE s2;
    CK_BYTE id[16];
    CK_UTF8CHAR label[32];
    CK_ATTRIBUTE by_class = {CKA_CLASS, &pcls, sizeof(pcls)}, by_id = {CKA_ID, id, sizeof(id)};
    CK_ATTRIBUTE rel = {CKA_GUARDIAN_RELEASE, &release, sizeof(release)};
    CK_ATTRIBUTE ida = {CKA_ID, id, sizeof(id)};
    int have_free = 0;
    (void)st;

    assert_int_equal(import("good.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, &ida, 1), CKR_OK);
    /* SoftHSM keeps one uninitialised token: make it a second token. */
    assert_int_equal(m->C_GetSlotList(CK_FALSE, slots, &n_slots), CKR_OK);
    for (CK_ULONG i = 0; i < n_slots && !have_free; i++) {
        CK_TOKEN_INFO ti;
        if (m->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) == 0) {
            other = slots[i];
            have_free = 1;
        }
    }
    assert_true(have_free);
    memset(label, ' ', sizeof(label));
    memcpy(label, "second", 6);
    assert_int_equal(m->C_InitToken(other, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN), label), CKR_OK);
    assert_int_equal(test_find_slot(m, "second", &other), CKR_OK);
    assert_int_not_equal(other, slot);
    assert_int_equal(m->C_OpenSession(other, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s2), CKR_OK);

    /* Not logged in on the second token, then as its SO (so that its private
     * objects would be visible too): never the first token's package. */
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(find_objects_in(s2, &by_class, 1, found, 8, &n), CKR_OK);
        assert_int_equal(n, 0);
        assert_int_equal(find_objects_in(s2, &by_id, 1, found, 8, &n), CKR_OK);
        assert_int_equal(n, 0);
        assert_int_equal(find_objects_in(s2, NULL, 0, found, 8, &n), CKR_OK);
        for (CK_ULONG i = 0; i < n; i++)
            assert_int_not_equal(found[i] & ~(CK_OBJECT_HANDLE)0xFFFF, 0x47440000UL); /* no package object */
        assert_int_equal(m->C_GetAttributeValue(s2, pkg_obj, &rel, 1), CKR_OBJECT_HANDLE_INVALID);
        if (pass == 0)
            assert_int_equal(m->C_Login(s2, CKU_SO, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN)), CKR_OK);
    }
    /* The Guardian's token still has it, by class and by CKA_ID. */
    assert_int_equal(find_objects(&by_class, 1, found, 8, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(found[0], pkg_obj);
    assert_int_equal(m->C_GetAttributeValue(s, pkg_obj, &rel, 1), CKR_OK);
    assert_int_equal(release, 3);
    assert_int_equal(m->C_CloseSession(s2), CKR_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_import_and_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_container_exactly_as_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ephemeral_point_off_curve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_x963_needs_backend_kdf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vectors_in_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_derive_certificates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_derive_legacy_template, setup, teardown),
        cmocka_unit_test_setup_teardown(test_derive_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_derive_expired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_package_objects_on_own_token, setup, teardown),
    };
    return cmocka_run_group_tests_name("integration: vendor mechanisms", tests, NULL, NULL);
}
