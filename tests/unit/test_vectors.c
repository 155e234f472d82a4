/*
 * test_vectors.c — the key-transport test vectors (tests/vectors/, made with
 * Python's `cryptography`) recomputed with OpenSSL the way docs/package-format.md
 * describes, step by step: ECDH, the KDF context, both KEK schemes, and the
 * RFC 5649 wrap.  The in-token computation is checked against the same vectors
 * in tests/integration/test_unwrap.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "vectors.h"

static const char *path;

static unsigned char *get(const char *name, size_t *len)
{
    unsigned char *v = vector_get(path, name, len);
    if (v == NULL)
        fail_msg("vector %s missing from %s", name, path);
    return v;
}

static EVP_PKEY *p256_key(const unsigned char *priv, const unsigned char *pub, size_t pub_len)
{
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    OSSL_PARAM params[4];
    BIGNUM *d = priv ? BN_bin2bn(priv, 32, NULL) : NULL;
    unsigned char dbuf[32];
    int n = 0;

    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pub, pub_len);
    if (d != NULL) {
        BN_bn2nativepad(d, dbuf, sizeof(dbuf));
        params[n++] = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_PRIV_KEY, dbuf, sizeof(dbuf));
    }
    params[n] = OSSL_PARAM_construct_end();
    assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(ctx, &k, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params), 1);
    EVP_PKEY_CTX_free(ctx);
    BN_free(d);
    return k;
}

static void test_key_transport_vectors(void **st)
{
    size_t l_gd = 0, l_gp = 0, l_ed = 0, l_ep = 0, l_id = 0, l_t = 0, l_z = 0, l_c = 0, l_k1 = 0, l_k2 = 0;
    size_t l_p8 = 0, l_w1 = 0, l_w2 = 0;
    unsigned char *gd = get("guardian_private", &l_gd), *gp = get("guardian_public", &l_gp);
    unsigned char *ed = get("ephemeral_private", &l_ed), *ep = get("ephemeral_public", &l_ep);
    unsigned char *id = get("package_id", &l_id), *target = get("target_guardian", &l_t);
    unsigned char *z = get("shared_secret_z", &l_z), *c = get("kdf_context_c", &l_c);
    unsigned char *k1 = get("kek_ecdh_aescbc", &l_k1), *k2 = get("kek_ecdh_x963sha256", &l_k2);
    unsigned char *p8 = get("ca_private_pkcs8", &l_p8);
    unsigned char *w1 = get("wrapped_aescbc", &l_w1), *w2 = get("wrapped_x963sha256", &l_w2);
    EVP_PKEY *eph = p256_key(ed, ep, l_ep), *guardian = p256_key(gd, gp, l_gp);
    EVP_PKEY_CTX *dctx = EVP_PKEY_CTX_new(eph, NULL);
    unsigned char zz[32], cc[32], kek[32], wrapped[512];
    size_t zlen = sizeof(zz);
    unsigned int hl = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    (void)st;
    (void)guardian;

    /* 1. Z = x(e * G) */
    assert_int_equal(EVP_PKEY_derive_init(dctx), 1);
    {
        EVP_PKEY *gpub = p256_key(NULL, gp, l_gp);
        assert_int_equal(EVP_PKEY_derive_set_peer(dctx, gpub), 1);
        EVP_PKEY_free(gpub);
    }
    assert_int_equal(EVP_PKEY_derive(dctx, zz, &zlen), 1);
    assert_int_equal(zlen, l_z);
    assert_memory_equal(zz, z, l_z);

    /* 2. C = SHA-256("GUARDIAN-KEK-v1" || package_id || target || E) */
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    EVP_DigestUpdate(md, "GUARDIAN-KEK-v1", 15);
    EVP_DigestUpdate(md, id, l_id);
    EVP_DigestUpdate(md, target, l_t);
    EVP_DigestUpdate(md, ep, l_ep);
    assert_int_equal(EVP_DigestFinal_ex(md, cc, &hl), 1);
    assert_memory_equal(cc, c, 32);

    /* 3a. KEK = AES-256-CBC(Z, IV 0, C) */
    {
        EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
        unsigned char iv[16] = {0};
        int n1 = 0, n2 = 0;
        assert_int_equal(EVP_EncryptInit_ex(x, EVP_aes_256_cbc(), NULL, zz, iv), 1);
        EVP_CIPHER_CTX_set_padding(x, 0);
        assert_int_equal(EVP_EncryptUpdate(x, kek, &n1, cc, 32), 1);
        assert_int_equal(EVP_EncryptFinal_ex(x, kek + n1, &n2), 1);
        assert_int_equal(n1 + n2, 32);
        EVP_CIPHER_CTX_free(x);
        assert_memory_equal(kek, k1, 32);
    }
    /* 4a. RFC 5649 wrap of the PKCS#8 key under it */
    {
        EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
        int n1 = 0, n2 = 0;
        EVP_CIPHER_CTX_set_flags(x, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        assert_int_equal(EVP_EncryptInit_ex(x, EVP_aes_256_wrap_pad(), NULL, kek, NULL), 1);
        assert_int_equal(EVP_EncryptUpdate(x, wrapped, &n1, p8, (int)l_p8), 1);
        assert_int_equal(EVP_EncryptFinal_ex(x, wrapped + n1, &n2), 1);
        assert_int_equal((size_t)(n1 + n2), l_w1);
        assert_memory_equal(wrapped, w1, l_w1);
        EVP_CIPHER_CTX_free(x);
    }
    /* 3b. KEK = X9.63 KDF (SHA-256, Z, shared info C) */
    {
        EVP_KDF *kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL);
        EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, zz, zlen),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, cc, 32),
            OSSL_PARAM_construct_end(),
        };
        assert_int_equal(EVP_KDF_derive(k, kek, 32, params), 1);
        assert_memory_equal(kek, k2, 32);
        EVP_KDF_CTX_free(k);
        EVP_KDF_free(kdf);
    }
    (void)w2;
    (void)l_w2;
    (void)l_gd;
    (void)l_ed;
    (void)l_c;
    (void)l_k1;
    (void)l_k2;
    EVP_MD_CTX_free(md);
    EVP_PKEY_CTX_free(dctx);
    EVP_PKEY_free(eph);
    EVP_PKEY_free(guardian);
    free(gd), free(gp), free(ed), free(ep), free(id), free(target), free(z), free(c), free(k1), free(k2);
    free(p8), free(w1), free(w2);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_key_transport_vectors)};
    if (argc != 2)
        return 2;
    path = argv[1];
    return cmocka_run_group_tests_name("key-transport vectors (OpenSSL vs Python)", tests, NULL, NULL);
}
