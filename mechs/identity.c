/*
 * identity.c — the Guardian's identity, made and used by the module only.
 *
 *   CKG_GUARDIAN_REQ_IDENTITY       both key pairs (if none), the signing
 *                                   certificate S (self-signed, if none) and
 *                                   the agreement certificate A issued by S
 *   CKG_GUARDIAN_REQ_IDENTITY_CSR   both key pairs (if none) and a CSR for the
 *                                   signing key, as an output object
 *   CKG_GUARDIAN_REQ_IDENTITY_CERT  install a certificate issued elsewhere: for
 *                                   the signing key (the centre CA's answer to
 *                                   the CSR, or a renewal) as S, then A again
 *                                   under it; for the agreement key, as A
 *
 * Two key pairs, each generated here with fixed attributes (sensitive, never
 * extractable, not modifiable, not copyable), so no caller chooses them:
 *   - the agreement key (CKA_ID "guardian-identity"): derive only — ECDH of a
 *     package import — or, an RSA key, unwrap only (RSA-OAEP-SHA256 of the
 *     package's key-encryption key).  Its certificate A is what OEMs wrap for
 *     (a package's target is A's SHA-256);
 *   - the signing key (CKA_ID "guardian-signing"): sign only — its own
 *     certificate S or CSR, A, the CA key bindings (ca_request.c) and the
 *     audit reports (audit_export.c).
 * Both are EC P-256, or both RSA (2048 or 3072 bits) on a token without EC
 * (opencryptoki's soft token): the request's CKA_GUARDIAN_IDENTITY_KEY_TYPE,
 * else what the slot's mechanism list offers.  The signing key signs with
 * CKM_ECDSA or CKM_RSA_PKCS over a DigestInfo (sha256WithRSAEncryption),
 * which every token with RSA has (opencryptoki 3.8 has no
 * CKM_SHA256_RSA_PKCS).
 * Where a token refuses these templates (tpm2-pkcs11 1.9: a TPM key needs
 * its sign or decrypt bit, and the public usages must match its mapping),
 * guardian_generate_key_pair tries once more with the public usages left to
 * the token and CKA_DECRYPT on the EC agreement key, and reads every usage
 * set FALSE back FALSE (docs/backends/tpm2.md).
 * So whoever reaches the backend directly can no longer sign a report with
 * the key that must derive, nor derive with the key that signs.  The policy
 * (policy.c) refuses every standard call that would use either, and the
 * module signs only what it built itself.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity.h"
#include "module.h"
#include "registry.h"
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

CK_RV guardian_identity_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *id, CK_OBJECT_CLASS cls,
                            CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, (CK_ULONG)strlen(id)}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    CK_RV rv = guardian_backend_find(be, s, t, 2, found, 2, &n);
    *out = CK_INVALID_HANDLE;
    if (rv != CKR_OK)
        return rv;
    if (n > 1) {
        guardian_error("identity", "more than one Guardian object %s of class %lu in the token", id,
                       (unsigned long)cls);
        return CKR_GENERAL_ERROR;
    }
    if (n == 1)
        *out = found[0];
    return CKR_OK;
}

CK_RV guardian_identity_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *id, X509 **x,
                             CK_OBJECT_HANDLE *handle)
{
    CK_OBJECT_HANDLE h;
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    const unsigned char *p;
    CK_RV rv = guardian_identity_find(be, s, id, CKO_CERTIFICATE, &h);

    *x = NULL;
    if (handle != NULL)
        *handle = h;
    if (rv != CKR_OK || h == CK_INVALID_HANDLE)
        return rv;
    if ((rv = be->C_GetAttributeValue(s, h, &a, 1)) != CKR_OK)
        return rv;
    if (a.ulValueLen == 0 || a.ulValueLen > 65536) {
        guardian_error("identity", "the Guardian certificate %s in the token is empty or too large", id);
        return CKR_GENERAL_ERROR;
    }
    if ((a.pValue = malloc(a.ulValueLen)) == NULL)
        return CKR_HOST_MEMORY;
    if ((rv = be->C_GetAttributeValue(s, h, &a, 1)) != CKR_OK)
        goto out;
    p = a.pValue;
    *x = d2i_X509(NULL, &p, (long)a.ulValueLen);
    rv = CKR_OK;
    if (*x == NULL) {
        guardian_error("identity", "the Guardian certificate %s in the token does not parse", id);
        rv = CKR_GENERAL_ERROR;
    }
out:
    ERR_clear_error();
    free(a.pValue);
    return rv;
}

CK_RV guardian_identity_fingerprint(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, uint8_t out[32], int *found)
{
    CK_OBJECT_HANDLE h;
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    unsigned int hl = 0;
    CK_RV rv = guardian_identity_find(be, s, GUARDIAN_IDENTITY_ID, CKO_CERTIFICATE, &h);

    *found = 0;
    if (rv != CKR_OK || h == CK_INVALID_HANDLE)
        return rv;
    if ((rv = be->C_GetAttributeValue(s, h, &a, 1)) != CKR_OK)
        return rv;
    if (a.ulValueLen == 0 || a.ulValueLen > 65536) {
        guardian_error("identity", "the Guardian certificate %s in the token is empty or too large",
                       GUARDIAN_IDENTITY_ID);
        return CKR_GENERAL_ERROR;
    }
    if ((a.pValue = malloc(a.ulValueLen)) == NULL)
        return CKR_HOST_MEMORY;
    rv = be->C_GetAttributeValue(s, h, &a, 1);
    if (rv == CKR_OK && (EVP_Digest(a.pValue, a.ulValueLen, out, &hl, EVP_sha256(), NULL) != 1 || hl != 32))
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK)
        *found = 1;
    free(a.pValue);
    return rv;
}

int guardian_identity_issued_by(X509 *agreement, X509 *signing)
{
    EVP_PKEY *k = X509_get0_pubkey(signing);
    int ok = k != NULL && X509_NAME_cmp(X509_get_issuer_name(agreement), X509_get_subject_name(signing)) == 0 &&
             X509_verify(agreement, k) == 1;
    ERR_clear_error();
    return ok;
}

/* The key type (CKK_EC or CKK_RSA) of an identity key object. */
static CK_RV key_type(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_KEY_TYPE *kt)
{
    CK_ATTRIBUTE a = {CKA_KEY_TYPE, kt, sizeof(*kt)};
    CK_RV rv = be->C_GetAttributeValue(s, key, &a, 1);
    if (rv == CKR_OK && *kt != CKK_EC && *kt != CKK_RSA) {
        guardian_error("identity", "the Guardian key is neither EC nor RSA (CKA_KEY_TYPE 0x%lx)", (unsigned long)*kt);
        rv = CKR_GENERAL_ERROR;
    }
    return rv;
}

const unsigned char guardian_sha256_digest_info[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                                       0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                                       0x01, 0x05, 0x00, 0x04, 0x20};

CK_RV guardian_identity_sign(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const uint8_t *data,
                             size_t len, uint8_t **der, int *der_len)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    unsigned char in[sizeof(guardian_sha256_digest_info) + 32], raw[512];
    unsigned int hl = 0;
    CK_ULONG raw_len = sizeof(raw), in_len = 32;
    CK_KEY_TYPE kt = CKK_EC;
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *sv = NULL;
    CK_RV rv;

    *der = NULL;
    if ((rv = key_type(be, s, key, &kt)) != CKR_OK)
        return rv;
    /* RSA: CKM_RSA_PKCS over DigestInfo || hash, the one RSA signing
     * mechanism every token has; EC: CKM_ECDSA over the hash. */
    memcpy(in, guardian_sha256_digest_info, sizeof(guardian_sha256_digest_info));
    if (EVP_Digest(data, len, in + sizeof(guardian_sha256_digest_info), &hl, EVP_sha256(), NULL) != 1 || hl != 32)
        return CKR_GENERAL_ERROR;
    if (kt == CKK_RSA) {
        m.mechanism = CKM_RSA_PKCS;
        in_len = sizeof(in);
    }
    rv = be->C_SignInit(s, &m, key);
    if (rv == CKR_OK)
        rv = be->C_Sign(s, kt == CKK_RSA ? in : in + sizeof(guardian_sha256_digest_info), in_len, raw, &raw_len);
    if (rv != CKR_OK) {
        guardian_error("identity", "the Guardian key cannot sign in the backend: %s", ckr(rv));
        return rv;
    }
    rv = CKR_GENERAL_ERROR;
    if (kt == CKK_RSA) {
        /* The signature as it is: the BIT STRING of sha256WithRSAEncryption. */
        if (raw_len == 0 || (*der = OPENSSL_memdup(raw, raw_len)) == NULL)
            return CKR_GENERAL_ERROR;
        *der_len = (int)raw_len;
        return CKR_OK;
    }
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

int guardian_identity_sig_alg(X509_ALGOR *alg, const EVP_PKEY *signer)
{
    int rsa = EVP_PKEY_get_base_id(signer) == EVP_PKEY_RSA;
    return X509_ALGOR_set0(alg, OBJ_nid2obj(rsa ? NID_sha256WithRSAEncryption : NID_ecdsa_with_SHA256),
                           rsa ? V_ASN1_NULL : V_ASN1_UNDEF, NULL) == 1;
}

/* The identity's public key as an EVP_PKEY: P-256 from CKA_EC_POINT, or RSA
 * from CKA_MODULUS and CKA_PUBLIC_EXPONENT. */
static CK_RV public_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, EVP_PKEY **out)
{
    CK_BYTE pt[80];
    CK_ATTRIBUTE a = {CKA_EC_POINT, pt, sizeof(pt)};
    EVP_PKEY_CTX *ctx = NULL;
    CK_KEY_TYPE kt = CKK_EC;
    CK_RV rv = key_type(be, s, pub, &kt);

    *out = NULL;
    if (rv != CKR_OK)
        return rv;
    if (kt == CKK_RSA) {
        CK_BYTE n[512], e[8];
        CK_ATTRIBUTE ra[] = {{CKA_MODULUS, n, sizeof(n)}, {CKA_PUBLIC_EXPONENT, e, sizeof(e)}};
        OSSL_PARAM_BLD *b = NULL;
        OSSL_PARAM *params = NULL;
        BIGNUM *bn = NULL, *be_ = NULL;
        if ((rv = be->C_GetAttributeValue(s, pub, ra, 2)) != CKR_OK)
            return rv;
        rv = CKR_GENERAL_ERROR;
        if (ra[0].ulValueLen < 256 || ra[0].ulValueLen > sizeof(n) || ra[1].ulValueLen == 0) {
            guardian_error("identity", "the Guardian public key is not an RSA key of 2048..4096 bits");
            return rv;
        }
        if ((bn = BN_bin2bn(n, (int)ra[0].ulValueLen, NULL)) != NULL &&
            (be_ = BN_bin2bn(e, (int)ra[1].ulValueLen, NULL)) != NULL && (b = OSSL_PARAM_BLD_new()) != NULL &&
            OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn) == 1 &&
            OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be_) == 1 &&
            (params = OSSL_PARAM_BLD_to_param(b)) != NULL &&
            (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
            EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1)
            rv = CKR_OK;
        OSSL_PARAM_free(params);
        OSSL_PARAM_BLD_free(b);
        BN_free(bn);
        BN_free(be_);
        EVP_PKEY_CTX_free(ctx);
        ERR_clear_error();
        return rv;
    }
    rv = be->C_GetAttributeValue(s, pub, &a, 1);
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
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
        rv = ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
                     EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1
                 ? CKR_OK
                 : CKR_GENERAL_ERROR;
    }
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

/* The identity key type for new key pairs: the request's
 * CKA_GUARDIAN_IDENTITY_KEY_TYPE, else P-256 where the slot lists EC key
 * generation and ECDSA, else RSA 3072 (a token without EC). */
static CK_RV choose_key_type(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const struct guardian_request *rq,
                             CK_ULONG *type)
{
    CK_SESSION_INFO si;
    CK_MECHANISM_INFO mi;
    CK_RV rv = guardian_request_ulong(rq, CKA_GUARDIAN_IDENTITY_KEY_TYPE, false, type);

    if (rv != CKR_OK)
        return rv;
    if (guardian_request_attr(rq, CKA_GUARDIAN_IDENTITY_KEY_TYPE) != NULL) {
        if (*type != CKG_GUARDIAN_IDENTITY_P256 && *type != CKG_GUARDIAN_IDENTITY_RSA2048 &&
            *type != CKG_GUARDIAN_IDENTITY_RSA3072) {
            guardian_error("identity", "refused: CKA_GUARDIAN_IDENTITY_KEY_TYPE %lu is none of P-256 (1), RSA 2048 "
                                       "(2), RSA 3072 (3)",
                           (unsigned long)*type);
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
        return CKR_OK;
    }
    /* A Guardian keeps its type: a missing signing key gets the agreement
     * key's. */
    {
        CK_OBJECT_HANDLE agree;
        CK_KEY_TYPE kt;
        if ((rv = guardian_identity_find(be, s, GUARDIAN_IDENTITY_ID, CKO_PRIVATE_KEY, &agree)) != CKR_OK)
            return rv;
        if (agree != CK_INVALID_HANDLE) {
            if ((rv = key_type(be, s, agree, &kt)) != CKR_OK)
                return rv;
            *type = kt == CKK_RSA ? CKG_GUARDIAN_IDENTITY_RSA3072 : CKG_GUARDIAN_IDENTITY_P256;
            return CKR_OK;
        }
    }
    *type = CKG_GUARDIAN_IDENTITY_RSA3072;
    if ((rv = be->C_GetSessionInfo(s, &si)) != CKR_OK)
        return rv;
    if (be->C_GetMechanismInfo(si.slotID, CKM_EC_KEY_PAIR_GEN, &mi) == CKR_OK &&
        be->C_GetMechanismInfo(si.slotID, CKM_ECDSA, &mi) == CKR_OK)
        *type = CKG_GUARDIAN_IDENTITY_P256;
    return CKR_OK;
}

static const char *type_name(CK_ULONG type)
{
    return type == CKG_GUARDIAN_IDENTITY_RSA2048   ? "RSA 2048"
           : type == CKG_GUARDIAN_IDENTITY_RSA3072 ? "RSA 3072"
                                                   : "EC P-256";
}

/* Codes of C_GenerateKeyPair that say "not now" (a login, a session, the
 * device), not "not this template": no other template is tried for them. */
static bool not_now(CK_RV rv)
{
    return rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_SESSION_READ_ONLY || rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_MEMORY ||
           rv == CKR_DEVICE_REMOVED || rv == CKR_HOST_MEMORY || rv == CKR_TOKEN_NOT_PRESENT ||
           rv == CKR_PIN_EXPIRED || rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_FUNCTION_CANCELED;
}

static CK_ATTRIBUTE *find_attr(CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

/* Every usage the private template sets FALSE is FALSE on the key made
 * (CKA_DECRYPT aside where `decrypt_added`): a token that added one would
 * undo the separation of the two keys (an agreement key that signs). */
static CK_RV usages_kept(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_ATTRIBUTE *t,
                         CK_ULONG n, bool decrypt_added)
{
    static const CK_ATTRIBUTE_TYPE usages[] = {CKA_SIGN, CKA_SIGN_RECOVER, CKA_DERIVE, CKA_DECRYPT, CKA_UNWRAP};
    for (size_t i = 0; i < sizeof(usages) / sizeof(usages[0]); i++) {
        CK_ATTRIBUTE *want = find_attr(t, n, usages[i]);
        CK_BBOOL have = CK_FALSE;
        CK_ATTRIBUTE a = {usages[i], &have, sizeof(have)};
        if (want == NULL || *(CK_BBOOL *)want->pValue != CK_FALSE || (decrypt_added && usages[i] == CKA_DECRYPT))
            continue;
        if (be->C_GetAttributeValue(s, priv, &a, 1) == CKR_OK && have != CK_FALSE) {
            guardian_error("identity", "refused: the backend made the key with usage 0x%lx TRUE although the "
                                       "module's template sets it FALSE (the key pair is destroyed)",
                           (unsigned long)usages[i]);
            return CKR_TEMPLATE_INCONSISTENT;
        }
    }
    return CKR_OK;
}

CK_RV guardian_generate_key_pair(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_MECHANISM *gen, CK_ATTRIBUTE *pub_t,
                                 CK_ULONG n_pub, CK_ATTRIBUTE *priv_t, CK_ULONG n_priv, CK_OBJECT_HANDLE *pub,
                                 CK_OBJECT_HANDLE *priv, const char *what)
{
    CK_ATTRIBUTE pub_min[24], *dec = find_attr(priv_t, n_priv, CKA_DECRYPT);
    CK_ATTRIBUTE *sig = find_attr(priv_t, n_priv, CKA_SIGN);
    CK_ULONG n_min = 0;
    CK_BBOOL yes = CK_TRUE, *dec_was = dec ? dec->pValue : NULL;
    bool decrypt_added = false;
    CK_RV rv = be->C_GenerateKeyPair(s, gen, pub_t, n_pub, priv_t, n_priv, pub, priv);

    /* Without CKA_COPYABLE (the last of the private template), which a 2.20
     * token (opencryptoki 3.8) does not know (CKR_ATTRIBUTE_TYPE_INVALID) and
     * NSS softoken 3.87 fails on when FALSE (CKR_GENERAL_ERROR; the same
     * template without it works): copies are refused by the policy (policy.c)
     * in any case. */
    if ((rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_GENERAL_ERROR) && n_priv > 0 &&
        priv_t[n_priv - 1].type == CKA_COPYABLE)
        rv = be->C_GenerateKeyPair(s, gen, pub_t, n_pub, priv_t, --n_priv, pub, priv);
    if (rv != CKR_OK && !not_now(rv) && n_pub <= sizeof(pub_min) / sizeof(pub_min[0])) {
        /* Refused as a template: tpm2-pkcs11 1.9 ties each public usage to a
         * TPM bit of its own mapping (CKA_VERIFY to decrypt, CKA_ENCRYPT to
         * sign) and refuses a template that says otherwise, and a TPM key
         * needs its sign or its decrypt bit ("inconsistent attributes" for a
         * derive-only EC key).  So once more with the public key's usages
         * left to the token (a public key grants nothing a copy of it in
         * OpenSSL does not), and an EC key that neither signs nor decrypts
         * (the agreement key) with CKA_DECRYPT: the TPM's decrypt bit of an
         * ECC key is ECDH itself, and no PKCS#11 mechanism decrypts with an
         * EC key.  It still cannot sign (checked below). */
        for (CK_ULONG i = 0; i < n_pub; i++)
            if (pub_t[i].type != CKA_VERIFY && pub_t[i].type != CKA_ENCRYPT && pub_t[i].type != CKA_WRAP &&
                pub_t[i].type != CKA_DERIVE && pub_t[i].type != CKA_VERIFY_RECOVER)
                pub_min[n_min++] = pub_t[i];
        if (gen->mechanism == CKM_EC_KEY_PAIR_GEN && dec != NULL && *(CK_BBOOL *)dec->pValue == CK_FALSE &&
            (sig == NULL || *(CK_BBOOL *)sig->pValue == CK_FALSE)) {
            dec->pValue = &yes;
            decrypt_added = true;
        }
        guardian_info("identity", "the backend refused the %s key pair's template (%s): trying again with the "
                                  "public key's usages left to the token%s",
                      what, ckr(rv),
                      decrypt_added ? " and CKA_DECRYPT on the EC private key (it still cannot sign)" : "");
        rv = be->C_GenerateKeyPair(s, gen, pub_min, n_min, priv_t, n_priv, pub, priv);
        if (dec != NULL)
            dec->pValue = dec_was;
    }
    if (rv != CKR_OK)
        return rv;
    rv = usages_kept(be, s, *priv, priv_t, n_priv, decrypt_added);
    if (rv != CKR_OK) {
        be->C_DestroyObject(s, *priv);
        be->C_DestroyObject(s, *pub);
        guardian_policy_forget(*priv);
        guardian_policy_forget(*pub);
        *pub = *priv = CK_INVALID_HANDLE;
    }
    return rv;
}

/* Which of the two key pairs. */
enum key_role { AGREEMENT, SIGNING };

static const char *key_id(enum key_role role)
{
    return role == AGREEMENT ? GUARDIAN_IDENTITY_ID : GUARDIAN_SIGNING_ID;
}

struct keys {
    CK_OBJECT_HANDLE priv, pub;
    EVP_PKEY *key; /* the public key */
};

static void keys_free(struct keys *k)
{
    EVP_PKEY_free(k->key);
    k->key = NULL;
}

/* One of the identity's key pairs, generated when the token has none, of
 * `type` (CKG_GUARDIAN_IDENTITY_*).  The agreement key derives only (ECDH) or
 * unwraps only (RSA-OAEP of a package's key-encryption key), the signing key
 * signs only (its certificate or CSR, the agreement certificate, bindings,
 * reports): the module chooses every attribute, no caller does.  A key pair
 * that exists keeps its type; `explicit_type` asks for one, and a Guardian
 * whose keys are of another type refuses it. */
static CK_RV ensure_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, enum key_role role, CK_ULONG type,
                        bool explicit_type, struct keys *k)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BYTE f4[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = type == CKG_GUARDIAN_IDENTITY_RSA2048 ? 2048 : 3072;
    int rsa = type != CKG_GUARDIAN_IDENTITY_P256;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = role == SIGNING ? CK_TRUE : CK_FALSE;
    /* EC: the agreement key derives; RSA: it unwraps (OAEP), never decrypts. */
    CK_BBOOL derive = role == AGREEMENT && !rsa ? CK_TRUE : CK_FALSE;
    CK_BBOOL unwrap = role == AGREEMENT && rsa ? CK_TRUE : CK_FALSE;
    const char *id = key_id(role);
    CK_ULONG id_len = (CK_ULONG)strlen(id);
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1},
                            {CKA_VERIFY, &sign, 1},               {CKA_ENCRYPT, &no, 1},
                            {CKA_WRAP, &no, 1},                   {CKA_DERIVE, &no, 1},
                            {CKA_MODIFIABLE, &no, 1},             {CKA_ID, (void *)id, id_len},
                            {CKA_LABEL, (void *)id, id_len},      {CKA_PUBLIC_EXPONENT, f4, sizeof(f4)}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1},       {CKA_PRIVATE, &yes, 1},   {CKA_SENSITIVE, &yes, 1},
                             {CKA_EXTRACTABLE, &no, 1},  {CKA_DERIVE, &derive, 1}, {CKA_SIGN, &sign, 1},
                             {CKA_DECRYPT, &no, 1},      {CKA_UNWRAP, &unwrap, 1}, {CKA_SIGN_RECOVER, &no, 1},
                             {CKA_MODIFIABLE, &no, 1},   {CKA_ID, (void *)id, id_len},
                             {CKA_LABEL, (void *)id, id_len}, {CKA_COPYABLE, &no, 1}};
    CK_ULONG n_pub = sizeof(pub_t) / sizeof(pub_t[0]) - 1, n_priv = sizeof(priv_t) / sizeof(priv_t[0]);
    CK_KEY_TYPE have = CKK_EC;
    CK_RV rv = guardian_identity_find(be, s, id, CKO_PRIVATE_KEY, &k->priv);
    k->key = NULL;
    if (rv == CKR_OK)
        rv = guardian_identity_find(be, s, id, CKO_PUBLIC_KEY, &k->pub);
    if (rv != CKR_OK)
        return rv;
    if (rsa) {
        gen.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        pub_t[0] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        n_pub++;
    }
    if (k->priv == CK_INVALID_HANDLE && k->pub == CK_INVALID_HANDLE) {
        rv = guardian_generate_key_pair(be, s, &gen, pub_t, n_pub, priv_t, n_priv, &k->pub, &k->priv,
                                        role == AGREEMENT ? "Guardian agreement" : "Guardian signing");
        if (rv != CKR_OK) {
            guardian_error("identity", "cannot generate the Guardian %s key pair (%s) in the backend: %s",
                           role == AGREEMENT ? "agreement" : "signing", type_name(type), ckr(rv));
            return rv;
        }
        guardian_policy_forget(k->pub);
        guardian_policy_forget(k->priv);
        guardian_info("identity", "generated the Guardian %s key pair %s (%s, sensitive, never extractable, "
                                  "%s only)",
                      role == AGREEMENT ? "agreement" : "signing", id, type_name(type),
                      role == SIGNING ? "sign" : rsa ? "unwrap" : "derive");
    } else if (k->priv == CK_INVALID_HANDLE || k->pub == CK_INVALID_HANDLE) {
        guardian_error("identity", "the token holds half of the Guardian key pair %s", id);
        return CKR_GENERAL_ERROR;
    } else if (explicit_type && (rv = key_type(be, s, k->priv, &have)) == CKR_OK && (have == CKK_RSA) != rsa) {
        guardian_error("identity", "refused: the Guardian's %s key pair exists and is %s, not %s: a Guardian keeps "
                                   "its key type",
                       role == AGREEMENT ? "agreement" : "signing", have == CKK_RSA ? "RSA" : "EC", type_name(type));
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (rv != CKR_OK)
        return rv;
    return public_key(be, s, k->pub, &k->key);
}

/* Both key pairs, of one type. */
static CK_RV ensure_both(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const struct guardian_request *rq,
                         CK_ULONG type, struct keys *agree, struct keys *sign)
{
    bool explicit_type = guardian_request_attr(rq, CKA_GUARDIAN_IDENTITY_KEY_TYPE) != NULL;
    CK_RV rv = ensure_key(be, s, AGREEMENT, type, explicit_type, agree);
    if (rv == CKR_OK)
        rv = ensure_key(be, s, SIGNING, type, explicit_type, sign);
    return rv;
}

/* The existing key pair `role`, or CKR_KEY_HANDLE_INVALID (logged). */
static CK_RV existing_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, enum key_role role, struct keys *k)
{
    const char *id = key_id(role);
    CK_RV rv = guardian_identity_find(be, s, id, CKO_PRIVATE_KEY, &k->priv);
    k->key = NULL;
    if (rv == CKR_OK)
        rv = guardian_identity_find(be, s, id, CKO_PUBLIC_KEY, &k->pub);
    if (rv != CKR_OK)
        return rv;
    if (k->priv == CK_INVALID_HANDLE || k->pub == CK_INVALID_HANDLE)
        return CKR_KEY_HANDLE_INVALID;
    return public_key(be, s, k->pub, &k->key);
}

/* The common name from CKA_LABEL into cn (1..GUARDIAN_CN_MAX printable
 * characters; the signing certificate adds " signing"), or "" without one. */
#define SIGNING_SUFFIX " signing"
#define GUARDIAN_CN_MAX (64 - (int)sizeof(SIGNING_SUFFIX) + 1)
static CK_RV label_cn(const struct guardian_request *rq, char cn[65])
{
    const CK_ATTRIBUTE *a = guardian_request_attr(rq, CKA_LABEL);
    cn[0] = '\0';
    if (a == NULL)
        return CKR_OK;
    if (a->pValue == NULL || a->ulValueLen == 0 || a->ulValueLen > GUARDIAN_CN_MAX) {
        guardian_error("identity", "CKA_LABEL (the subject's CN) must be 1..%d bytes", GUARDIAN_CN_MAX);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    memcpy(cn, a->pValue, a->ulValueLen);
    cn[a->ulValueLen] = '\0';
    for (size_t i = 0; i < a->ulValueLen; i++)
        if ((unsigned char)cn[i] < 0x20 || cn[i] == 0x7f) {
            guardian_error("identity", "CKA_LABEL (the subject's CN) holds a control character");
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
    return CKR_OK;
}

/* The CN of a certificate's subject, UTF-8, into cn (empty when it has none
 * or it is longer than 64 bytes). */
static void cert_cn(X509 *x, char cn[65])
{
    const X509_NAME *n = X509_get_subject_name(x);
    int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
    unsigned char *u = NULL;
    int len = i >= 0 ? ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i))) : -1;
    cn[0] = '\0';
    if (len > 0 && len <= 64 && memchr(u, 0, (size_t)len) == NULL) {
        memcpy(cn, u, (size_t)len);
        cn[len] = '\0';
    }
    OPENSSL_free(u);
}

static X509_NAME *cn_name(const char *cn, const char *suffix)
{
    char buf[160];
    X509_NAME *n = X509_NAME_new();
    snprintf(buf, sizeof(buf), "%s%s", cn, suffix);
    if (n == NULL || X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (unsigned char *)buf, -1, -1, 0) != 1) {
        X509_NAME_free(n);
        n = NULL;
    }
    return n;
}

/* The signing certificate's subject: "CN=<cn> signing", <cn> the label given,
 * else the agreement certificate's CN (an upgraded Guardian keeps its name),
 * else "Guardian". */
static X509_NAME *signing_name(const char *cn, X509 *agreement)
{
    char old[65] = "";
    if (cn[0] == '\0' && agreement != NULL)
        cert_cn(agreement, old);
    if (cn[0] == '\0')
        cn = old[0] != '\0' && strlen(old) <= (size_t)GUARDIAN_CN_MAX ? old : "Guardian";
    return cn_name(cn, SIGNING_SUFFIX);
}

/* The agreement certificate's subject: "CN=<cn>" for a label given; else the
 * current agreement certificate's subject (a re-issue keeps it); else the
 * signing certificate's CN without " signing" (or with " agreement"). */
static X509_NAME *agreement_name(const char *cn, X509 *agreement, X509 *signing)
{
    char scn[65] = "";
    size_t n, k = strlen(SIGNING_SUFFIX);
    if (cn[0] != '\0')
        return cn_name(cn, "");
    if (agreement != NULL &&
        X509_NAME_cmp(X509_get_subject_name(agreement), X509_get_subject_name(signing)) != 0)
        return X509_NAME_dup(X509_get_subject_name(agreement));
    cert_cn(signing, scn);
    n = strlen(scn);
    if (n > k && strcmp(scn + n - k, SIGNING_SUFFIX) == 0) {
        scn[n - k] = '\0';
        return cn_name(scn, "");
    }
    return n > 0 && n + strlen(" agreement") <= 64 ? cn_name(scn, " agreement") : cn_name("Guardian", "");
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;
    int ok;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
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

/* A certificate for `subject_key`, signed in the backend by the signing key:
 * the signing certificate S (issuer NULL: self-signed, a CA for A only) or the
 * agreement certificate A (issuer S: key agreement only, within S's
 * validity).  Checked against the signing key before it is returned. */
static CK_RV make_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const X509_NAME *subject, EVP_PKEY *subject_key,
                       X509 *issuer, const struct keys *signer, CK_ULONG days, X509 **out)
{
    X509 *x = X509_new();
    unsigned char *tbs = NULL, serial[16];
    uint8_t *sig = NULL;
    int tbs_len, sig_len = 0, ok;
    BIGNUM *bn = NULL;
    const ASN1_BIT_STRING *psig;
    const X509_ALGOR *palg;
    CK_RV rv = CKR_GENERAL_ERROR;

    *out = NULL;
    if (x == NULL || RAND_bytes(serial, sizeof(serial)) != 1)
        goto out;
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    ok = bn != NULL && X509_set_version(x, 2) == 1 && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
         X509_set_subject_name(x, subject) == 1 &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : subject) == 1 &&
         X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
         X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400L) != NULL && X509_set_pubkey(x, subject_key) == 1;
    /* A within S: openssl verify checks both validities. */
    if (ok && issuer != NULL && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(issuer)) > 0)
        ok = X509_set1_notAfter(x, X509_get0_notAfter(issuer)) == 1;
    if (ok && issuer == NULL)
        ok = add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
             add_ext(x, x, NID_key_usage, "critical,digitalSignature,keyCertSign") &&
             add_ext(x, x, NID_subject_key_identifier, "hash");
    else if (ok)
        ok = add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, issuer, NID_key_usage,
                     EVP_PKEY_get_base_id(subject_key) == EVP_PKEY_RSA ? "critical,keyEncipherment"
                                                                        : "critical,keyAgreement") &&
             add_ext(x, issuer, NID_subject_key_identifier, "hash") &&
             (X509_get0_subject_key_id(issuer) == NULL ||
              add_ext(x, issuer, NID_authority_key_identifier, "keyid:always")) &&
             /* the key transports this token imports with (selftest.c) */
             guardian_transport_state_in_cert(be, s, x);
    /* Both algorithm fields (the TBS's and the outer one) name the signing
     * key's algorithm; the signature itself comes from the token. */
    X509_get0_signature(&psig, &palg, x);
    if (!ok || !guardian_identity_sig_alg((X509_ALGOR *)palg, signer->key) ||
        !guardian_identity_sig_alg((X509_ALGOR *)X509_get0_tbs_sigalg(x), signer->key) ||
        (tbs_len = i2d_re_X509_tbs(x, &tbs)) <= 0)
        goto out;
    if ((rv = guardian_identity_sign(be, s, signer->priv, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    if (!set_signature(psig, sig, sig_len) || X509_verify(x, signer->key) != 1) {
        guardian_error("identity", "the certificate the backend signed does not verify");
        goto out;
    }
    *out = x;
    x = NULL;
    rv = CKR_OK;
out:
    ERR_clear_error();
    BN_free(bn);
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    X509_free(x);
    return rv;
}

/* The certificate object `id` (GUARDIAN_IDENTITY_ID: A, GUARDIAN_SIGNING_ID:
 * S); the previous one, if any, is destroyed once the new one exists. */
static CK_RV install_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *id, X509 *x, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    unsigned char *der = NULL, *subj = NULL, *iss = NULL, *serial = NULL;
    int der_len = i2d_X509(x, &der), subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    int iss_len = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    int ser_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &serial);
    CK_ULONG id_len = (CK_ULONG)strlen(id);
    CK_OBJECT_HANDLE old = CK_INVALID_HANDLE;
    CK_RV rv = CKR_HOST_MEMORY;

    if (der_len <= 0 || subj_len <= 0 || iss_len <= 0 || ser_len <= 0)
        goto out;
    rv = guardian_identity_find(be, s, id, CKO_CERTIFICATE, &old);
    if (rv != CKR_OK)
        goto out;
    {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_MODIFIABLE, &no, sizeof(no)},
            {CKA_ID, (void *)id, id_len},
            {CKA_LABEL, (void *)id, id_len},
            {CKA_VALUE, der, (CK_ULONG)der_len},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
            {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len},
        };
        rv = be->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), out);
    }
    if (rv != CKR_OK) {
        guardian_error("identity", "cannot create the Guardian certificate object %s: %s", id, ckr(rv));
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

/* A new agreement certificate under `signing`, installed in place of `old`
 * (if any): its SHA-256, the packages' target, changes. */
static CK_RV issue_agreement(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *cn, const struct keys *agree,
                             const struct keys *sign, X509 *signing, X509 *old, CK_ULONG days, CK_OBJECT_HANDLE *out)
{
    X509_NAME *name = agreement_name(cn, old, signing);
    X509 *a = NULL;
    CK_RV rv = CKR_HOST_MEMORY;

    if (name == NULL)
        goto out;
    if ((rv = make_cert(be, s, name, agree->key, signing, sign, days, &a)) != CKR_OK ||
        (rv = install_cert(be, s, GUARDIAN_IDENTITY_ID, a, out)) != CKR_OK)
        goto out;
    if (old != NULL)
        guardian_warn("identity", "re-issued the Guardian certificate under the signing certificate: its SHA-256 "
                                  "changed, so give the OEMs the new one (guardianctl cert); packages made for the "
                                  "old one are refused as CKR_GUARDIAN_WRONG_GUARDIAN");
    else
        guardian_info("identity", "made the Guardian certificate (key agreement, issued by the signing certificate)");
out:
    X509_NAME_free(name);
    X509_free(a);
    return rv;
}

/* A session output object (guardian-output:<name>) holding `value`: held by
 * the module (module/cert_objects.c), not the backend, whose private CKO_DATA
 * NSS softoken refuses (CKR_ATTRIBUTE_VALUE_INVALID); `be` is unused. */
CK_RV guardian_output_create(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *name, const uint8_t *value,
                             size_t len, CK_OBJECT_HANDLE *out)
{
    char label[96];
    CK_RV rv;
    (void)be;
    snprintf(label, sizeof(label), "%s%s", GUARDIAN_OUTPUT_PREFIX, name);
    rv = guardian_output_object_create(s, label, value, len, out);
    if (rv != CKR_OK)
        guardian_error("request", "cannot create the %s output object: %s", name, ckr(rv));
    return rv;
}

/* Both key pairs; the signing certificate S (self-signed, when there is none);
 * the agreement certificate A, issued by S (again, when the current one is
 * not: a Guardian made before the split had one self-signed certificate for
 * one key that both derived and signed).  Returns A. */
static CK_RV identity(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                      const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    struct keys agree = {0}, sign = {0};
    CK_OBJECT_HANDLE a_handle, s_handle;
    CK_ULONG days = DEFAULT_DAYS;
    X509_NAME *name = NULL;
    X509 *a = NULL, *sc = NULL;
    CK_ULONG type;
    char cn[65];
    CK_RV rv;
    (void)st;

    if ((rv = guardian_request_ulong(rq, CKA_GUARDIAN_VALIDITY_DAYS, false, &days)) != CKR_OK)
        return rv;
    if (days < 1 || days > MAX_DAYS) {
        guardian_error("identity", "CKA_GUARDIAN_VALIDITY_DAYS must be 1..%d", MAX_DAYS);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if ((rv = label_cn(rq, cn)) != CKR_OK || (rv = choose_key_type(be, s, rq, &type)) != CKR_OK)
        return rv;
    if ((rv = ensure_both(be, s, rq, type, &agree, &sign)) != CKR_OK ||
        (rv = guardian_identity_cert(be, s, GUARDIAN_IDENTITY_ID, &a, &a_handle)) != CKR_OK ||
        (rv = guardian_identity_cert(be, s, GUARDIAN_SIGNING_ID, &sc, &s_handle)) != CKR_OK)
        goto out;
    if (sc == NULL) {
        rv = CKR_HOST_MEMORY;
        if ((name = signing_name(cn, a)) == NULL)
            goto out;
        if ((rv = make_cert(be, s, name, sign.key, NULL, &sign, days, &sc)) != CKR_OK ||
            (rv = install_cert(be, s, GUARDIAN_SIGNING_ID, sc, &s_handle)) != CKR_OK)
            goto out;
        guardian_info("identity", "made the Guardian's self-signed signing certificate (%lu days)",
                      (unsigned long)days);
    }
    if (a != NULL && guardian_identity_issued_by(a, sc)) {
        *out = a_handle; /* idempotent: the Guardian has its certificates */
        goto out;
    }
    rv = issue_agreement(be, s, cn, &agree, &sign, sc, a, days, out);
out:
    keys_free(&agree);
    keys_free(&sign);
    X509_NAME_free(name);
    X509_free(a);
    X509_free(sc);
    return rv;
}

/* Both key pairs, and a PKCS#10 CSR for the signing key, signed by it (the
 * proof of possession): the centre's CA answers with S, and the module then
 * issues A under it (identity_cert). */
static CK_RV identity_csr(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                          const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    struct keys agree = {0}, sign = {0};
    X509_NAME *name = NULL;
    X509_REQ *req = NULL;
    X509 *a = NULL;
    unsigned char *tbs = NULL, *der = NULL;
    uint8_t *sig = NULL;
    int tbs_len, sig_len = 0, der_len;
    const ASN1_BIT_STRING *psig;
    const X509_ALGOR *palg;
    CK_ULONG type;
    char cn[65];
    CK_RV rv;
    (void)st;

    if ((rv = label_cn(rq, cn)) != CKR_OK || (rv = choose_key_type(be, s, rq, &type)) != CKR_OK)
        return rv;
    if ((rv = ensure_both(be, s, rq, type, &agree, &sign)) != CKR_OK ||
        (rv = guardian_identity_cert(be, s, GUARDIAN_IDENTITY_ID, &a, NULL)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    name = signing_name(cn, a);
    req = X509_REQ_new();
    if (name == NULL || req == NULL || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, sign.key) != 1)
        goto out;
    X509_REQ_get0_signature(req, &psig, &palg);
    if (!guardian_identity_sig_alg((X509_ALGOR *)palg, sign.key))
        goto out;
    tbs_len = i2d_re_X509_REQ_tbs(req, &tbs);
    if (tbs_len <= 0)
        goto out;
    if ((rv = guardian_identity_sign(be, s, sign.priv, tbs, (size_t)tbs_len, &sig, &sig_len)) != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    if (!set_signature(psig, sig, sig_len) || X509_REQ_verify(req, sign.key) != 1) {
        guardian_error("identity", "the CSR the backend signed does not verify");
        goto out;
    }
    der_len = i2d_X509_REQ(req, &der);
    if (der_len <= 0)
        goto out;
    rv = guardian_output_create(be, s, "csr", der, (size_t)der_len, out);
out:
    ERR_clear_error();
    keys_free(&agree);
    keys_free(&sign);
    OPENSSL_free(tbs);
    OPENSSL_free(sig);
    OPENSSL_free(der);
    X509_NAME_free(name);
    X509_REQ_free(req);
    X509_free(a);
    return rv;
}

/* S must be able to issue A and sign reports, as `openssl verify` sees it. */
static int can_issue(X509 *x)
{
    uint32_t flags = X509_get_extension_flags(x);
    uint32_t ku = X509_get_key_usage(x);
    return (flags & EXFLAG_CA) != 0 && (ku & KU_KEY_CERT_SIGN) != 0 && (ku & KU_DIGITAL_SIGNATURE) != 0;
}

/* A certificate issued elsewhere: for the signing key, it becomes S and the
 * module issues A under it (the centre CA's answer to the CSR, or a renewal);
 * for the agreement key, it becomes A if S issued it.  Returns A. */
static CK_RV identity_cert(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s,
                           const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const CK_ATTRIBUTE *value = guardian_request_attr(rq, CKA_VALUE);
    struct keys agree = {0}, sign = {0};
    CK_OBJECT_HANDLE h;
    CK_ULONG days = DEFAULT_DAYS;
    const unsigned char *p;
    X509 *x = NULL, *a = NULL, *sc = NULL;
    CK_RV rv;
    (void)st;

    if (value == NULL || value->pValue == NULL || value->ulValueLen == 0 || value->ulValueLen > 65536) {
        guardian_error("identity", "the request needs CKA_VALUE: the certificate, DER");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    if ((rv = guardian_request_ulong(rq, CKA_GUARDIAN_VALIDITY_DAYS, false, &days)) != CKR_OK)
        return rv;
    if (days < 1 || days > MAX_DAYS) {
        guardian_error("identity", "CKA_GUARDIAN_VALIDITY_DAYS must be 1..%d", MAX_DAYS);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    rv = existing_key(be, s, AGREEMENT, &agree);
    if (rv == CKR_OK)
        rv = existing_key(be, s, SIGNING, &sign);
    if (rv == CKR_KEY_HANDLE_INVALID)
        guardian_error("identity", "no Guardian key pairs in the token to install a certificate for (make them "
                                   "with CKG_GUARDIAN_REQ_IDENTITY_CSR, or CKG_GUARDIAN_REQ_IDENTITY)");
    if (rv != CKR_OK)
        goto out;
    if ((rv = guardian_identity_cert(be, s, GUARDIAN_IDENTITY_ID, &a, &h)) != CKR_OK ||
        (rv = guardian_identity_cert(be, s, GUARDIAN_SIGNING_ID, &sc, NULL)) != CKR_OK)
        goto out;
    p = value->pValue;
    x = d2i_X509(NULL, &p, (long)value->ulValueLen);
    rv = CKR_ATTRIBUTE_VALUE_INVALID;
    if (x == NULL || p != (const unsigned char *)value->pValue + value->ulValueLen) {
        guardian_error("identity", "refused: CKA_VALUE is not one DER X.509 certificate");
    } else if (EVP_PKEY_eq(sign.key, X509_get0_pubkey(x)) == 1) {
        if (!can_issue(x)) {
            guardian_error("identity", "refused: a certificate for the signing key must be a CA certificate "
                                       "(basicConstraints CA:TRUE, pathlen:0) with keyUsage digitalSignature and "
                                       "keyCertSign: it issues the Guardian's agreement certificate and signs its "
                                       "reports");
            goto out;
        }
        if ((rv = install_cert(be, s, GUARDIAN_SIGNING_ID, x, &h)) != CKR_OK)
            goto out;
        guardian_info("identity", "installed a new Guardian signing certificate");
        rv = issue_agreement(be, s, "", &agree, &sign, x, a, days, out);
    } else if (EVP_PKEY_eq(agree.key, X509_get0_pubkey(x)) == 1) {
        if (sc == NULL || !guardian_identity_issued_by(x, sc)) {
            guardian_error("identity", "refused: a certificate for the agreement key must be issued by the "
                                       "Guardian's signing certificate (which signs the reports), else no report "
                                       "can be tied to it");
            goto out;
        }
        rv = install_cert(be, s, GUARDIAN_IDENTITY_ID, x, out);
        if (rv == CKR_OK)
            guardian_info("identity", "installed a new Guardian agreement certificate");
    } else {
        guardian_error("identity", "refused: the certificate is for neither of this Guardian's keys");
    }
out:
    ERR_clear_error();
    keys_free(&agree);
    keys_free(&sign);
    X509_free(x);
    X509_free(a);
    X509_free(sc);
    return rv;
}

static const CK_ATTRIBUTE_TYPE identity_attributes[] = {CKA_LABEL, CKA_GUARDIAN_VALIDITY_DAYS, CKA_TOKEN,
                                                        CKA_GUARDIAN_IDENTITY_KEY_TYPE};
static const CK_ATTRIBUTE_TYPE csr_attributes[] = {CKA_LABEL, CKA_TOKEN, CKA_GUARDIAN_IDENTITY_KEY_TYPE};
static const CK_ATTRIBUTE_TYPE cert_attributes[] = {CKA_VALUE, CKA_GUARDIAN_VALIDITY_DAYS, CKA_TOKEN};

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
