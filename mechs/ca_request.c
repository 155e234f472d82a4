/*
 * ca_request.c — CKG_GUARDIAN_REQ_CA_KEY: a production CA key pair made
 * inside the Guardian for one OEM product, its CSR signed by that key in the
 * token, and the Guardian CA key binding signed by the Guardian's signing key
 * (ca_binding.h).  The OEM certifies the key (guardian-wrap certify-ca, or its
 * own CA tooling) and sends a package of format version 2, which carries the
 * certificate and no key: the import binds this key to the release
 * (unwrap_package.c).  No private key ever travels.
 *
 * The key pair's attributes are the module's alone: token, private,
 * sensitive, never extractable, sign only, not modifiable, not copyable;
 * CKA_ID 16 random bytes (the key ID the binding carries, which becomes the
 * package ID), CKA_LABEL "guardian:OEM/PRODUCT:ca-key" — a Guardian label,
 * so the policy (module/policy.c) refuses the key to every standard call.
 * If anything fails after the key pair exists, it is destroyed again.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ca_binding.h"
#include "identity.h"
#include "module.h"
#include "registry.h"
#include "request.h"
#include "store.h" /* GUARDIAN_ID_MAX */
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "ca-request"
#define SUBJECT_MAX 1024

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor CKR";
}

struct ca_key {
    CK_ULONG type; /* CKG_GUARDIAN_CA_KEY_* */
    CK_OBJECT_HANDLE pub, priv;
    EVP_PKEY *key; /* the public key */
};

/* The public key of the new pair, read from its public key object. */
static CK_RV read_public(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, struct ca_key *k)
{
    EVP_PKEY_CTX *ctx = NULL;
    OSSL_PARAM params[4];
    CK_BYTE buf[600], exp[16];
    CK_RV rv;
    int rsa = k->type == CKG_GUARDIAN_CA_KEY_RSA2048;

    if (rsa) {
        CK_ATTRIBUTE a[] = {{CKA_MODULUS, buf, sizeof(buf)}, {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)}};
        BIGNUM *n, *e;
        unsigned char nle[600], ele[16];
        if ((rv = be->C_GetAttributeValue(s, k->pub, a, 2)) != CKR_OK)
            return rv;
        /* OSSL_PARAM BIGNUMs are native-endian: go through BIGNUM. */
        n = BN_bin2bn(buf, (int)a[0].ulValueLen, NULL);
        e = BN_bin2bn(exp, (int)a[1].ulValueLen, NULL);
        rv = CKR_GENERAL_ERROR;
        if (n != NULL && e != NULL && BN_bn2nativepad(n, nle, (int)a[0].ulValueLen) > 0 &&
            BN_bn2nativepad(e, ele, (int)a[1].ulValueLen) > 0) {
            params[0] = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_N, nle, a[0].ulValueLen);
            params[1] = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_E, ele, a[1].ulValueLen);
            params[2] = OSSL_PARAM_construct_end();
            ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
            if (ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
                EVP_PKEY_fromdata(ctx, &k->key, EVP_PKEY_PUBLIC_KEY, params) == 1)
                rv = CKR_OK;
        }
        BN_free(n);
        BN_free(e);
    } else {
        CK_ATTRIBUTE a = {CKA_EC_POINT, buf, sizeof(buf)};
        size_t pl = k->type == CKG_GUARDIAN_CA_KEY_P384 ? 97 : 65;
        if ((rv = be->C_GetAttributeValue(s, k->pub, &a, 1)) != CKR_OK)
            return rv;
        /* CKA_EC_POINT: a DER OCTET STRING around the X9.62 point. */
        if (a.ulValueLen != pl + 2 || buf[0] != 0x04 || buf[1] != pl || buf[2] != 0x04) {
            guardian_error(LOG, "the new CA public key is not an uncompressed point");
            return CKR_GENERAL_ERROR;
        }
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                                     pl == 97 ? "secp384r1" : "prime256v1", 0);
        params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, buf + 2, pl);
        params[2] = OSSL_PARAM_construct_end();
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
        rv = ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
                     EVP_PKEY_fromdata(ctx, &k->key, EVP_PKEY_PUBLIC_KEY, params) == 1
                 ? CKR_OK
                 : CKR_GENERAL_ERROR;
    }
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return rv;
}

static CK_RV generate(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const uint8_t id[GUARDIAN_CA_KEY_ID_LEN],
                      const char *label, struct ca_key *k)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static CK_BYTE p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
    CK_BYTE e65537[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = 2048;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    int rsa = k->type == CKG_GUARDIAN_CA_KEY_RSA2048;
    CK_MECHANISM gen = {rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG ll = (CK_ULONG)strlen(label);
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1},        {CKA_VERIFY, &yes, 1},
                            {CKA_ENCRYPT, &no, 1},       {CKA_WRAP, &no, 1},
                            {CKA_DERIVE, &no, 1},        {CKA_MODIFIABLE, &no, 1},
                            {CKA_ID, (void *)id, GUARDIAN_CA_KEY_ID_LEN}, {CKA_LABEL, (void *)label, ll},
                            {CKA_EC_PARAMS, NULL, 0},    {CKA_PUBLIC_EXPONENT, NULL, 0}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1},      {CKA_PRIVATE, &yes, 1},   {CKA_SENSITIVE, &yes, 1},
                             {CKA_EXTRACTABLE, &no, 1}, {CKA_SIGN, &yes, 1},      {CKA_DERIVE, &no, 1},
                             {CKA_DECRYPT, &no, 1},     {CKA_UNWRAP, &no, 1},     {CKA_SIGN_RECOVER, &no, 1},
                             {CKA_MODIFIABLE, &no, 1},
                             {CKA_ID, (void *)id, GUARDIAN_CA_KEY_ID_LEN}, {CKA_LABEL, (void *)label, ll},
                             {CKA_COPYABLE, &no, 1}};
    CK_ULONG n_priv = sizeof(priv_t) / sizeof(priv_t[0]);
    CK_ULONG n_pub = 8;
    CK_RV rv;

    if (rsa) {
        pub_t[n_pub++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        pub_t[n_pub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537)};
    } else if (k->type == CKG_GUARDIAN_CA_KEY_P384) {
        pub_t[n_pub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, p384, sizeof(p384)};
    } else {
        pub_t[n_pub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, p256, sizeof(p256)};
    }
    /* (without CKA_COPYABLE on a 2.20 token, the public usages left to a
     * TPM: guardian_generate_key_pair) */
    rv = guardian_generate_key_pair(be, s, &gen, pub_t, n_pub, priv_t, n_priv, &k->pub, &k->priv,
                                    "production CA");
    if (rv != CKR_OK) {
        guardian_error(LOG, "cannot generate the production CA key pair in the backend: %s", ckr(rv));
        k->pub = k->priv = CK_INVALID_HANDLE;
        return rv;
    }
    guardian_policy_forget(k->pub);
    guardian_policy_forget(k->priv);
    return read_public(be, s, k);
}

/* `tbs` signed by the new CA key in the token: a DER ECDSA-Sig-Value or the
 * RSA PKCS#1 v1.5 signature, into *sig (OPENSSL_free it).  RSA signs with
 * CKM_RSA_PKCS over the SHA-256 DigestInfo, which every RSA token has
 * (opencryptoki 3.8 has no CKM_SHA256_RSA_PKCS); derive_device_cert.c signs
 * the same way. */
static CK_RV ca_sign(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const struct ca_key *k, const uint8_t *tbs,
                     size_t len, uint8_t **sig, int *sig_len)
{
    CK_MECHANISM m = {k->type == CKG_GUARDIAN_CA_KEY_RSA2048 ? CKM_RSA_PKCS : CKM_ECDSA, NULL, 0};
    unsigned char hash[48], di[sizeof(guardian_sha256_digest_info) + 32], raw[512];
    unsigned int hl = 0;
    CK_ULONG raw_len = sizeof(raw);
    const uint8_t *in = tbs;
    size_t in_len = len;
    CK_RV rv;

    *sig = NULL;
    if (m.mechanism == CKM_ECDSA) {
        if (EVP_Digest(tbs, len, hash, &hl, k->type == CKG_GUARDIAN_CA_KEY_P384 ? EVP_sha384() : EVP_sha256(),
                       NULL) != 1)
            return CKR_GENERAL_ERROR;
        in = hash;
        in_len = hl;
    } else {
        memcpy(di, guardian_sha256_digest_info, sizeof(guardian_sha256_digest_info));
        if (EVP_Digest(tbs, len, di + sizeof(guardian_sha256_digest_info), &hl, EVP_sha256(), NULL) != 1 || hl != 32)
            return CKR_GENERAL_ERROR;
        in = di;
        in_len = sizeof(di);
    }
    rv = be->C_SignInit(s, &m, k->priv);
    if (rv == CKR_OK)
        rv = be->C_Sign(s, (CK_BYTE_PTR)in, (CK_ULONG)in_len, raw, &raw_len);
    if (rv != CKR_OK) {
        guardian_error(LOG, "the new production CA key cannot sign in the backend: %s", ckr(rv));
        return rv;
    }
    if (m.mechanism == CKM_RSA_PKCS) {
        if ((*sig = OPENSSL_memdup(raw, raw_len)) == NULL)
            return CKR_HOST_MEMORY;
        *sig_len = (int)raw_len;
        return CKR_OK;
    }
    {
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(raw, (int)raw_len / 2, NULL), *sv = BN_bin2bn(raw + raw_len / 2, (int)raw_len / 2, NULL);
        rv = CKR_GENERAL_ERROR;
        if (es != NULL && r != NULL && sv != NULL && raw_len % 2 == 0 && ECDSA_SIG_set0(es, r, sv) == 1) {
            r = sv = NULL;
            *sig_len = i2d_ECDSA_SIG(es, sig);
            if (*sig_len > 0)
                rv = CKR_OK;
        }
        BN_free(r);
        BN_free(sv);
        ECDSA_SIG_free(es);
    }
    return rv;
}

/* The CSR for the new key, signed by it in the token; its DER in *der. */
static CK_RV make_csr(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const struct ca_key *k, const X509_NAME *subject,
                      unsigned char **der, int *der_len)
{
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *dummy = NULL; /* fills the algorithm fields; its signature is replaced */
    const EVP_MD *md = k->type == CKG_GUARDIAN_CA_KEY_P384 ? EVP_sha384() : EVP_sha256();
    unsigned char *tbs = NULL;
    uint8_t *sig = NULL;
    int tbs_len, sig_len = 0;
    const ASN1_BIT_STRING *psig;
    CK_RV rv = CKR_GENERAL_ERROR;

    *der = NULL;
    dummy = k->type == CKG_GUARDIAN_CA_KEY_RSA2048 ? EVP_RSA_gen(2048)
            : k->type == CKG_GUARDIAN_CA_KEY_P384  ? EVP_EC_gen("P-384")
                                                   : EVP_EC_gen("P-256");
    if (req == NULL || dummy == NULL || X509_REQ_set_version(req, 0) != 1 ||
        X509_REQ_set_subject_name(req, subject) != 1 || X509_REQ_set_pubkey(req, k->key) != 1 ||
        X509_REQ_sign(req, dummy, md) <= 0 || (tbs_len = i2d_re_X509_REQ_tbs(req, &tbs)) <= 0)
        goto out;
    if ((rv = ca_sign(be, s, k, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    X509_REQ_get0_signature(req, &psig, NULL);
    if (ASN1_BIT_STRING_set((ASN1_BIT_STRING *)psig, sig, sig_len) != 1)
        goto out;
    ((ASN1_BIT_STRING *)psig)->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    ((ASN1_BIT_STRING *)psig)->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    if (X509_REQ_verify(req, k->key) != 1) {
        guardian_error(LOG, "the CSR the backend signed does not verify");
        goto out;
    }
    if ((*der_len = i2d_X509_REQ(req, der)) > 0)
        rv = CKR_OK;
out:
    ERR_clear_error();
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    X509_REQ_free(req);
    EVP_PKEY_free(dummy);
    return rv;
}

/* The binding of `csr` to this Guardian, signed by its signing key. */
static CK_RV make_binding(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE signing, X509 *a,
                          const unsigned char *csr, int csr_len, const uint8_t id[GUARDIAN_CA_KEY_ID_LEN],
                          const char *oem, const char *product, unsigned char **der, int *der_len)
{
    uint8_t csr_digest[32], guardian[32];
    unsigned char *a_der = NULL, *tbs = NULL;
    int a_len = i2d_X509(a, &a_der), tbs_len;
    uint8_t *sig = NULL;
    int sig_len = 0;
    GUARDIAN_CA_BINDING *b = GUARDIAN_CA_BINDING_new();
    CK_RV rv = CKR_GENERAL_ERROR;

    *der = NULL;
    if (b == NULL || a_len <= 0 || EVP_Digest(csr, (size_t)csr_len, csr_digest, NULL, EVP_sha256(), NULL) != 1 ||
        EVP_Digest(a_der, (size_t)a_len, guardian, NULL, EVP_sha256(), NULL) != 1)
        goto out;
    GUARDIAN_CA_BINDING_TBS_free(b->tbs);
    b->tbs = guardian_ca_binding_tbs(csr_digest, id, oem, product, guardian);
    if (b->tbs == NULL || (tbs_len = i2d_GUARDIAN_CA_BINDING_TBS(b->tbs, &tbs)) <= 0)
        goto out;
    if ((rv = guardian_identity_sign(be, s, signing, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    if (ASN1_OCTET_STRING_set(b->signature, sig, sig_len) == 1 && (*der_len = i2d_GUARDIAN_CA_BINDING(b, der)) > 0)
        rv = CKR_OK;
out:
    ERR_clear_error();
    OPENSSL_free(a_der);
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    GUARDIAN_CA_BINDING_free(b);
    return rv;
}

/* The CA key type when the request names none: P-256 where the slot lists
 * EC key generation and ECDSA, else RSA 2048 (a token without EC:
 * opencryptoki's soft token), as the identity's type is chosen
 * (identity.c). */
static CK_RV default_ca_key_type(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_ULONG *type)
{
    CK_SESSION_INFO si;
    CK_MECHANISM_INFO mi;
    CK_RV rv = be->C_GetSessionInfo(s, &si);

    if (rv != CKR_OK)
        return rv;
    *type = CKG_GUARDIAN_CA_KEY_RSA2048;
    if (be->C_GetMechanismInfo(si.slotID, CKM_EC_KEY_PAIR_GEN, &mi) == CKR_OK &&
        be->C_GetMechanismInfo(si.slotID, CKM_ECDSA, &mi) == CKR_OK)
        *type = CKG_GUARDIAN_CA_KEY_P256;
    return CKR_OK;
}

static CK_RV ca_request(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                        const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    char oem[GUARDIAN_ID_MAX + 1], product[GUARDIAN_ID_MAX + 1], label[2 * GUARDIAN_ID_MAX + 32], hex[33];
    struct ca_key k = {.type = CKG_GUARDIAN_CA_KEY_P256, .pub = CK_INVALID_HANDLE, .priv = CK_INVALID_HANDLE};
    const CK_ATTRIBUTE *subj;
    X509_NAME *name = NULL;
    X509 *a = NULL;
    CK_OBJECT_HANDLE signing;
    uint8_t id[GUARDIAN_CA_KEY_ID_LEN];
    unsigned char *csr = NULL, *binding = NULL;
    int csr_len = 0, binding_len = 0;
    BIO *pem = NULL;
    char *text;
    long text_len;
    CK_RV rv;
    (void)st;

    if ((rv = guardian_request_id(rq, CKA_GUARDIAN_OEM_ID, "CKA_GUARDIAN_OEM_ID", oem)) != CKR_OK ||
        (rv = guardian_request_id(rq, CKA_GUARDIAN_PRODUCT_ID, "CKA_GUARDIAN_PRODUCT_ID", product)) != CKR_OK ||
        (rv = guardian_request_ulong(rq, CKA_GUARDIAN_CA_KEY_TYPE, false, &k.type)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_SUBJECT, true, &subj)) != CKR_OK)
        return rv;
    if (guardian_request_attr(rq, CKA_GUARDIAN_CA_KEY_TYPE) == NULL &&
        (rv = default_ca_key_type(be, s, &k.type)) != CKR_OK)
        return rv;
    if (k.type != CKG_GUARDIAN_CA_KEY_P256 && k.type != CKG_GUARDIAN_CA_KEY_P384 &&
        k.type != CKG_GUARDIAN_CA_KEY_RSA2048) {
        guardian_error(LOG, "refused: CKA_GUARDIAN_CA_KEY_TYPE %lu is none of P-256 (1), P-384 (2), RSA 2048 (3)",
                       (unsigned long)k.type);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    {
        const unsigned char *p = subj->pValue;
        if (subj->ulValueLen == 0 || subj->ulValueLen > SUBJECT_MAX ||
            (name = d2i_X509_NAME(NULL, &p, (long)subj->ulValueLen)) == NULL ||
            p != (const unsigned char *)subj->pValue + subj->ulValueLen || X509_NAME_entry_count(name) == 0) {
            ERR_clear_error();
            X509_NAME_free(name);
            guardian_error(LOG, "refused: CKA_SUBJECT is not a non-empty DER Name of at most %d bytes", SUBJECT_MAX);
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
    }
    if ((rv = guardian_identity_find(be, s, GUARDIAN_SIGNING_ID, CKO_PRIVATE_KEY, &signing)) != CKR_OK ||
        (rv = guardian_identity_cert(be, s, GUARDIAN_IDENTITY_ID, &a, NULL)) != CKR_OK)
        goto out;
    if (signing == CK_INVALID_HANDLE || a == NULL) {
        guardian_error(LOG, "refused: the Guardian has no identity yet (signing key and certificate); run "
                            "guardianctl init first");
        rv = CKR_KEY_HANDLE_INVALID;
        goto out;
    }
    if (RAND_bytes(id, sizeof(id)) != 1) {
        rv = CKR_FUNCTION_FAILED;
        goto out;
    }
    for (size_t i = 0; i < sizeof(id); i++)
        snprintf(hex + 2 * i, 3, "%02x", id[i]);
    snprintf(label, sizeof(label), GUARDIAN_CA_KEY_LABEL_FMT, oem, product);
    if ((rv = generate(be, s, id, label, &k)) != CKR_OK ||
        (rv = make_csr(be, s, &k, name, &csr, &csr_len)) != CKR_OK ||
        (rv = make_binding(be, s, signing, a, csr, csr_len, id, oem, product, &binding, &binding_len)) != CKR_OK)
        goto out;
    rv = CKR_HOST_MEMORY;
    if ((pem = BIO_new(BIO_s_mem())) == NULL ||
        PEM_write_bio(pem, "CERTIFICATE REQUEST", "", csr, csr_len) <= 0 ||
        PEM_write_bio(pem, GUARDIAN_CA_BINDING_PEM, "", binding, binding_len) <= 0)
        goto out;
    text_len = BIO_get_mem_data(pem, &text);
    rv = guardian_output_create(be, s, "ca-request", (const uint8_t *)text, (size_t)text_len, out);
    if (rv == CKR_OK)
        guardian_info(LOG, "made a production CA key pair for %s/%s in the token (%s, key ID %s, sensitive, never "
                           "extractable, sign only) and its CSR, bound to this Guardian",
                      oem, product,
                      k.type == CKG_GUARDIAN_CA_KEY_RSA2048 ? "RSA 2048"
                      : k.type == CKG_GUARDIAN_CA_KEY_P384  ? "EC P-384"
                                                            : "EC P-256",
                      hex);
out:
    if (rv != CKR_OK) {
        /* Nothing left behind: the pair made for a request that failed. */
        if (k.priv != CK_INVALID_HANDLE)
            be->C_DestroyObject(s, k.priv);
        if (k.pub != CK_INVALID_HANDLE)
            be->C_DestroyObject(s, k.pub);
    }
    ERR_clear_error();
    BIO_free(pem);
    EVP_PKEY_free(k.key);
    OPENSSL_free(csr);
    OPENSSL_free(binding);
    X509_NAME_free(name);
    X509_free(a);
    return rv;
}

static const CK_ATTRIBUTE_TYPE ca_request_attributes[] = {CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID,
                                                          CKA_GUARDIAN_CA_KEY_TYPE, CKA_SUBJECT};

const struct guardian_request_type guardian_request_ca_key = {
    .type = CKG_GUARDIAN_REQ_CA_KEY,
    .name = "CKG_GUARDIAN_REQ_CA_KEY",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = ca_request_attributes,
    .n_attributes = sizeof(ca_request_attributes) / sizeof(ca_request_attributes[0]),
    .run = ca_request,
};
