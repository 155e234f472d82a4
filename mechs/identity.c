/*
 * identity.c — the Guardian's identity, made and used by the module only.
 *
 *   CKG_GUARDIAN_REQ_IDENTITY       keys (if none) and a self-signed certificate
 *   CKG_GUARDIAN_REQ_IDENTITY_CSR   keys (if none) and a CSR, as an output object
 *   CKG_GUARDIAN_REQ_IDENTITY_CERT  install a certificate issued for the key
 *                                   (a centre CA's answer to the CSR, or a renewal)
 *
 * The identity key pair is generated here with fixed attributes (sensitive,
 * never extractable, not modifiable, not copyable, derive and sign only), so no
 * caller chooses them; the policy (policy.c) then refuses every standard call
 * that would use it, and the module signs with it only what it built itself:
 * its certificate or CSR here, the audit report in audit_export.c.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity.h"
#include "module.h"
#include "request.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define DEFAULT_DAYS 3650
#define MAX_DAYS 36500

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor CKR";
}

CK_RV guardian_identity_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_ID, (void *)GUARDIAN_IDENTITY_ID, sizeof(GUARDIAN_IDENTITY_ID) - 1}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    CK_RV rv = be->C_FindObjectsInit(s, t, 2);
    *out = CK_INVALID_HANDLE;
    if (rv != CKR_OK)
        return rv;
    rv = be->C_FindObjects(s, found, 2, &n);
    be->C_FindObjectsFinal(s);
    if (rv != CKR_OK)
        return rv;
    if (n > 1) {
        guardian_error("identity", "more than one Guardian identity object of class %lu in the token",
                       (unsigned long)cls);
        return CKR_GENERAL_ERROR;
    }
    if (n == 1)
        *out = found[0];
    return CKR_OK;
}

CK_RV guardian_identity_sign(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const uint8_t *data,
                             size_t len, uint8_t **der, int *der_len)
{
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    unsigned char hash[32], raw[132];
    unsigned int hl = 0;
    CK_ULONG raw_len = sizeof(raw);
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *sv = NULL;
    CK_RV rv;

    *der = NULL;
    if (EVP_Digest(data, len, hash, &hl, EVP_sha256(), NULL) != 1)
        return CKR_GENERAL_ERROR;
    rv = be->C_SignInit(s, &ecdsa, key);
    if (rv == CKR_OK)
        rv = be->C_Sign(s, hash, hl, raw, &raw_len);
    if (rv != CKR_OK) {
        guardian_error("identity", "the Guardian key cannot sign in the backend: %s", ckr(rv));
        return rv;
    }
    rv = CKR_GENERAL_ERROR;
    if (raw_len == 0 || raw_len % 2 != 0 || (sig = ECDSA_SIG_new()) == NULL ||
        (r = BN_bin2bn(raw, (int)raw_len / 2, NULL)) == NULL ||
        (sv = BN_bin2bn(raw + raw_len / 2, (int)raw_len / 2, NULL)) == NULL || ECDSA_SIG_set0(sig, r, sv) != 1)
        goto out;
    r = sv = NULL;
    *der_len = i2d_ECDSA_SIG(sig, der);
    if (*der_len > 0)
        rv = CKR_OK;
out:
    BN_free(r);
    BN_free(sv);
    ECDSA_SIG_free(sig);
    return rv;
}

/* The identity's public key as an EVP_PKEY (P-256 from CKA_EC_POINT). */
static CK_RV public_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, EVP_PKEY **out)
{
    CK_BYTE pt[80];
    CK_ATTRIBUTE a = {CKA_EC_POINT, pt, sizeof(pt)};
    EVP_PKEY_CTX *ctx = NULL;
    CK_RV rv = be->C_GetAttributeValue(s, pub, &a, 1);
    if (rv != CKR_OK)
        return rv;
    /* CKA_EC_POINT is a DER OCTET STRING around the X9.62 point. */
    if (a.ulValueLen != 67 || pt[0] != 0x04 || pt[1] != 65) {
        guardian_error("identity", "the Guardian public key is not an uncompressed P-256 point");
        return CKR_GENERAL_ERROR;
    }
    {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0),
            OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt + 2, 65),
            OSSL_PARAM_construct_end(),
        };
        *out = NULL;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
        rv = ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
                     EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1
                 ? CKR_OK
                 : CKR_GENERAL_ERROR;
    }
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

/* The identity key pair, generated when the token has none. */
static CK_RV ensure_keys(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *priv, CK_OBJECT_HANDLE *pub)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    void *id = (void *)GUARDIAN_IDENTITY_ID;
    CK_ULONG id_len = sizeof(GUARDIAN_IDENTITY_ID) - 1;
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1},
                            {CKA_VERIFY, &yes, 1},                {CKA_ENCRYPT, &no, 1},
                            {CKA_WRAP, &no, 1},                   {CKA_DERIVE, &no, 1},
                            {CKA_MODIFIABLE, &no, 1},             {CKA_ID, id, id_len},
                            {CKA_LABEL, id, id_len}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1},       {CKA_PRIVATE, &yes, 1},   {CKA_SENSITIVE, &yes, 1},
                             {CKA_EXTRACTABLE, &no, 1},  {CKA_DERIVE, &yes, 1},    {CKA_SIGN, &yes, 1},
                             {CKA_DECRYPT, &no, 1},      {CKA_UNWRAP, &no, 1},     {CKA_SIGN_RECOVER, &no, 1},
                             {CKA_MODIFIABLE, &no, 1},   {CKA_COPYABLE, &no, 1},   {CKA_ID, id, id_len},
                             {CKA_LABEL, id, id_len}};
    CK_RV rv = guardian_identity_find(be, s, CKO_PRIVATE_KEY, priv);
    if (rv == CKR_OK)
        rv = guardian_identity_find(be, s, CKO_PUBLIC_KEY, pub);
    if (rv != CKR_OK)
        return rv;
    if (*priv != CK_INVALID_HANDLE && *pub != CK_INVALID_HANDLE)
        return CKR_OK;
    if (*priv != CK_INVALID_HANDLE || *pub != CK_INVALID_HANDLE) {
        guardian_error("identity", "the token holds half of a Guardian identity key pair");
        return CKR_GENERAL_ERROR;
    }
    rv = be->C_GenerateKeyPair(s, &gen, pub_t, sizeof(pub_t) / sizeof(pub_t[0]), priv_t,
                               sizeof(priv_t) / sizeof(priv_t[0]), pub, priv);
    if (rv != CKR_OK) {
        guardian_error("identity", "cannot generate the Guardian key pair in the backend: %s", ckr(rv));
        return rv;
    }
    guardian_policy_forget(*pub);
    guardian_policy_forget(*priv);
    guardian_info("identity", "generated the Guardian identity key pair (EC P-256, sensitive, never extractable)");
    return CKR_OK;
}

/* The subject CN from CKA_LABEL (1..64 printable characters), or "Guardian". */
static CK_RV subject_name(const struct guardian_request *rq, X509_NAME **out)
{
    const CK_ATTRIBUTE *a = guardian_request_attr(rq, CKA_LABEL);
    char cn[65] = "Guardian";
    if (a != NULL) {
        if (a->pValue == NULL || a->ulValueLen == 0 || a->ulValueLen > 64) {
            guardian_error("identity", "CKA_LABEL (the subject's CN) must be 1..64 bytes");
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
        memcpy(cn, a->pValue, a->ulValueLen);
        cn[a->ulValueLen] = '\0';
        for (size_t i = 0; i < a->ulValueLen; i++)
            if ((unsigned char)cn[i] < 0x20 || cn[i] == 0x7f) {
                guardian_error("identity", "CKA_LABEL (the subject's CN) holds a control character");
                return CKR_ATTRIBUTE_VALUE_INVALID;
            }
    }
    *out = X509_NAME_new();
    if (*out == NULL || X509_NAME_add_entry_by_txt(*out, "CN", MBSTRING_UTF8, (unsigned char *)cn, -1, -1, 0) != 1) {
        X509_NAME_free(*out);
        *out = NULL;
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    return CKR_OK;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;
    int ok;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    ok = e != NULL && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok;
}

static int set_signature(const ASN1_BIT_STRING *psig, const uint8_t *der, int len)
{
    ASN1_BIT_STRING *sig = (ASN1_BIT_STRING *)psig;
    if (!ASN1_BIT_STRING_set(sig, (unsigned char *)der, len))
        return 0;
    sig->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    sig->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    return 1;
}

/* A certificate object for the identity; the previous one, if any, is
 * destroyed once the new one exists. */
static CK_RV install_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, X509 *x, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    unsigned char *der = NULL, *subj = NULL, *iss = NULL, *serial = NULL;
    int der_len = i2d_X509(x, &der), subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    int iss_len = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    int ser_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &serial);
    CK_OBJECT_HANDLE old = CK_INVALID_HANDLE;
    CK_RV rv = CKR_HOST_MEMORY;

    if (der_len <= 0 || subj_len <= 0 || iss_len <= 0 || ser_len <= 0)
        goto out;
    rv = guardian_identity_find(be, s, CKO_CERTIFICATE, &old);
    if (rv != CKR_OK)
        goto out;
    {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_MODIFIABLE, &no, sizeof(no)},
            {CKA_ID, (void *)GUARDIAN_IDENTITY_ID, sizeof(GUARDIAN_IDENTITY_ID) - 1},
            {CKA_LABEL, (void *)GUARDIAN_IDENTITY_ID, sizeof(GUARDIAN_IDENTITY_ID) - 1},
            {CKA_VALUE, der, (CK_ULONG)der_len},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
            {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len},
        };
        rv = be->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), out);
    }
    if (rv != CKR_OK) {
        guardian_error("identity", "cannot create the Guardian certificate object: %s", ckr(rv));
        goto out;
    }
    guardian_policy_forget(*out);
    if (old != CK_INVALID_HANDLE && be->C_DestroyObject(s, old) == CKR_OK)
        guardian_policy_forget(old);
out:
    OPENSSL_free(der);
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(serial);
    return rv;
}

/* A session output object (guardian-output:<name>) holding `value`. */
CK_RV guardian_output_create(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *name, const uint8_t *value,
                             size_t len, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    char label[96];
    CK_RV rv;
    snprintf(label, sizeof(label), "%s%s", GUARDIAN_OUTPUT_PREFIX, name);
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},       {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_PRIVATE, &yes, sizeof(yes)},     {CKA_MODIFIABLE, &no, sizeof(no)},
                            {CKA_LABEL, label, (CK_ULONG)strlen(label)},
                            {CKA_VALUE, (void *)value, (CK_ULONG)len}};
        rv = be->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), out);
    }
    if (rv != CKR_OK)
        guardian_error("request", "cannot create the %s output object: %s", name, ckr(rv));
    else
        guardian_policy_forget(*out);
    return rv;
}

static CK_RV identity(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                      const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_HANDLE priv, pub, cert = CK_INVALID_HANDLE;
    CK_ULONG days = DEFAULT_DAYS;
    X509_NAME *name = NULL;
    X509 *x = NULL;
    EVP_PKEY *gpub = NULL, *dummy = NULL;
    unsigned char *tbs = NULL, serial[16];
    uint8_t *sig = NULL;
    int tbs_len, sig_len = 0;
    BIGNUM *bn = NULL;
    const ASN1_BIT_STRING *psig;
    CK_RV rv;
    (void)st;

    if ((rv = guardian_request_ulong(rq, CKA_GUARDIAN_VALIDITY_DAYS, false, &days)) != CKR_OK)
        return rv;
    if (days < 1 || days > MAX_DAYS) {
        guardian_error("identity", "CKA_GUARDIAN_VALIDITY_DAYS must be 1..%d", MAX_DAYS);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if ((rv = subject_name(rq, &name)) != CKR_OK)
        return rv;
    if ((rv = ensure_keys(be, s, &priv, &pub)) != CKR_OK)
        goto out;
    if ((rv = guardian_identity_find(be, s, CKO_CERTIFICATE, &cert)) != CKR_OK)
        goto out;
    if (cert != CK_INVALID_HANDLE) {
        *out = cert; /* idempotent: the Guardian has its certificate */
        goto out;
    }
    if ((rv = public_key(be, s, pub, &gpub)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    x = X509_new();
    dummy = EVP_EC_gen("P-256"); /* fills the algorithm fields; its signature is replaced */
    if (x == NULL || dummy == NULL || RAND_bytes(serial, sizeof(serial)) != 1)
        goto out;
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (bn == NULL || X509_set_version(x, 2) != 1 || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
        X509_set_subject_name(x, name) != 1 || X509_set_issuer_name(x, name) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400L) == NULL || X509_set_pubkey(x, gpub) != 1 ||
        !add_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, NID_key_usage, "critical,digitalSignature,keyAgreement") ||
        !add_ext(x, NID_subject_key_identifier, "hash") || X509_sign(x, dummy, EVP_sha256()) <= 0)
        goto out;
    tbs_len = i2d_re_X509_tbs(x, &tbs);
    if (tbs_len <= 0)
        goto out;
    if ((rv = guardian_identity_sign(be, s, priv, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    X509_get0_signature(&psig, NULL, x);
    if (!set_signature(psig, sig, sig_len) || X509_verify(x, gpub) != 1) {
        guardian_error("identity", "the certificate the backend signed does not verify");
        goto out;
    }
    rv = install_cert(be, s, x, out);
    if (rv == CKR_OK)
        guardian_info("identity", "made the Guardian's self-signed certificate (%lu days)", (unsigned long)days);
out:
    ERR_clear_error();
    BN_free(bn);
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    X509_NAME_free(name);
    X509_free(x);
    EVP_PKEY_free(gpub);
    EVP_PKEY_free(dummy);
    return rv;
}

static CK_RV identity_csr(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                          const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_HANDLE priv, pub;
    X509_NAME *name = NULL;
    X509_REQ *req = NULL;
    EVP_PKEY *gpub = NULL, *dummy = NULL;
    unsigned char *tbs = NULL, *der = NULL;
    uint8_t *sig = NULL;
    int tbs_len, sig_len = 0, der_len;
    const ASN1_BIT_STRING *psig;
    CK_RV rv;
    (void)st;

    if ((rv = subject_name(rq, &name)) != CKR_OK)
        return rv;
    if ((rv = ensure_keys(be, s, &priv, &pub)) != CKR_OK || (rv = public_key(be, s, pub, &gpub)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    req = X509_REQ_new();
    dummy = EVP_EC_gen("P-256");
    if (req == NULL || dummy == NULL || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, gpub) != 1 || X509_REQ_sign(req, dummy, EVP_sha256()) <= 0)
        goto out;
    tbs_len = i2d_re_X509_REQ_tbs(req, &tbs);
    if (tbs_len <= 0)
        goto out;
    if ((rv = guardian_identity_sign(be, s, priv, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    X509_REQ_get0_signature(req, &psig, NULL);
    if (!set_signature(psig, sig, sig_len) || X509_REQ_verify(req, gpub) != 1) {
        guardian_error("identity", "the CSR the backend signed does not verify");
        goto out;
    }
    der_len = i2d_X509_REQ(req, &der);
    if (der_len <= 0)
        goto out;
    rv = guardian_output_create(be, s, "csr", der, (size_t)der_len, out);
out:
    ERR_clear_error();
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    OPENSSL_free(der);
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(gpub);
    EVP_PKEY_free(dummy);
    return rv;
}

static CK_RV identity_cert(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                           const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const CK_ATTRIBUTE *value = guardian_request_attr(rq, CKA_VALUE);
    CK_OBJECT_HANDLE priv, pub;
    EVP_PKEY *gpub = NULL;
    const unsigned char *p;
    X509 *x = NULL;
    CK_RV rv;
    (void)st;

    if (value == NULL || value->pValue == NULL || value->ulValueLen == 0 || value->ulValueLen > 65536) {
        guardian_error("identity", "the request needs CKA_VALUE: the certificate, DER");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    if ((rv = guardian_identity_find(be, s, CKO_PRIVATE_KEY, &priv)) != CKR_OK ||
        (rv = guardian_identity_find(be, s, CKO_PUBLIC_KEY, &pub)) != CKR_OK)
        return rv;
    if (priv == CK_INVALID_HANDLE || pub == CK_INVALID_HANDLE) {
        guardian_error("identity", "no Guardian key in the token to install a certificate for");
        return CKR_KEY_HANDLE_INVALID;
    }
    if ((rv = public_key(be, s, pub, &gpub)) != CKR_OK)
        return rv;
    p = value->pValue;
    x = d2i_X509(NULL, &p, (long)value->ulValueLen);
    if (x == NULL || p != (const unsigned char *)value->pValue + value->ulValueLen) {
        guardian_error("identity", "refused: CKA_VALUE is not one DER X.509 certificate");
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else if (EVP_PKEY_eq(gpub, X509_get0_pubkey(x)) != 1) {
        guardian_error("identity", "refused: the certificate is not for this Guardian's key");
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else {
        rv = install_cert(be, s, x, out);
        if (rv == CKR_OK)
            guardian_info("identity", "installed a new Guardian certificate");
    }
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(gpub);
    return rv;
}

static const CK_ATTRIBUTE_TYPE identity_attributes[] = {CKA_LABEL, CKA_GUARDIAN_VALIDITY_DAYS, CKA_TOKEN};
static const CK_ATTRIBUTE_TYPE csr_attributes[] = {CKA_LABEL, CKA_TOKEN};
static const CK_ATTRIBUTE_TYPE cert_attributes[] = {CKA_VALUE, CKA_TOKEN};

const struct guardian_request_type guardian_request_identity = {
    .type = CKG_GUARDIAN_REQ_IDENTITY,
    .name = "CKG_GUARDIAN_REQ_IDENTITY",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = identity_attributes,
    .n_attributes = sizeof(identity_attributes) / sizeof(identity_attributes[0]),
    .run = identity,
};

const struct guardian_request_type guardian_request_identity_csr = {
    .type = CKG_GUARDIAN_REQ_IDENTITY_CSR,
    .name = "CKG_GUARDIAN_REQ_IDENTITY_CSR",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = csr_attributes,
    .n_attributes = sizeof(csr_attributes) / sizeof(csr_attributes[0]),
    .run = identity_csr,
};

const struct guardian_request_type guardian_request_identity_cert = {
    .type = CKG_GUARDIAN_REQ_IDENTITY_CERT,
    .name = "CKG_GUARDIAN_REQ_IDENTITY_CERT",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = cert_attributes,
    .n_attributes = sizeof(cert_attributes) / sizeof(cert_attributes[0]),
    .run = identity_cert,
};
