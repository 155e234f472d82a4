/*
 * identity.h — the Guardian's identity objects, for the module's own use
 * (identity.c; the audit export signs with it too).
 */
#ifndef GUARDIAN_MECHS_IDENTITY_H
#define GUARDIAN_MECHS_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "p11.h"

/* The identity object of class `cls` with CKA_ID `id` (GUARDIAN_IDENTITY_ID:
 * the agreement key and its certificate A; GUARDIAN_SIGNING_ID: the signing
 * key and its certificate S), or CK_INVALID_HANDLE when there is none; an
 * error when there are several. */
CK_RV guardian_identity_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *id, CK_OBJECT_CLASS cls,
                             CK_OBJECT_HANDLE *out);
/* The certificate object `id`, parsed (NULL when there is none; X509_free
 * it), and its handle if `handle` is not NULL. */
CK_RV guardian_identity_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *id, X509 **x,
                             CK_OBJECT_HANDLE *handle);
/* The SHA-256 of the Guardian certificate A (GUARDIAN_IDENTITY_ID) in the
 * token: what packages name as their target and the records name as their
 * Guardian.  *found false (CKR_OK) when the token has none yet. */
CK_RV guardian_identity_fingerprint(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, uint8_t out[32], int *found);
/* 1 when `agreement`'s issuer is `signing`'s subject and `signing`'s key
 * verifies its signature. */
int guardian_identity_issued_by(X509 *agreement, X509 *signing);
/* SHA-256 of `data`, signed with an identity key in the backend: CKM_ECDSA
 * (a DER ECDSA-Sig-Value in *der) or, an RSA key, CKM_RSA_PKCS over the
 * DigestInfo (the PKCS#1 v1.5 signature in *der); OPENSSL_free it.  Either
 * verifies with EVP_DigestVerify(SHA-256) and the key's certificate. */
CK_RV guardian_identity_sign(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const uint8_t *data,
                             size_t len, uint8_t **der, int *der_len);
/* The PKCS#1 v1.5 DigestInfo prefix of a SHA-256 hash (RFC 8017, 9.2): what
 * CKM_RSA_PKCS signs, followed by the hash, for sha256WithRSAEncryption. */
extern const unsigned char guardian_sha256_digest_info[19];
/* Sets `alg` to the signature algorithm guardian_identity_sign makes with
 * `signer`'s key: ecdsa-with-SHA256 or sha256WithRSAEncryption; 0 on failure. */
int guardian_identity_sig_alg(X509_ALGOR *alg, const EVP_PKEY *signer);
/* A request's output: a CKO_DATA object held by the module (module/cert_objects.c),
 * labelled "guardian-output:<name>", holding `value`, which the caller reads and destroys. */
CK_RV guardian_output_create(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, const char *name, const uint8_t *value,
                             size_t len, CK_OBJECT_HANDLE *out);

/* C_GenerateKeyPair with the module's templates, and the fallbacks a token's
 * answer calls for, each keyed on that answer: without CKA_COPYABLE (the
 * private template's last: CKR_ATTRIBUTE_TYPE_INVALID on a 2.20 token,
 * CKR_GENERAL_ERROR on NSS softoken 3.87); on a
 * template refused, the public key's usages left to the token and, for an EC
 * key that neither signs nor decrypts, CKA_DECRYPT (tpm2-pkcs11 on a TPM:
 * docs/backends/tpm2.md).  Every usage the private template sets FALSE is
 * then read back FALSE, else the pair is destroyed (CKR_TEMPLATE_INCONSISTENT).
 * `what` names the key in the log. */
CK_RV guardian_generate_key_pair(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_MECHANISM *gen, CK_ATTRIBUTE *pub_t,
                                 CK_ULONG n_pub, CK_ATTRIBUTE *priv_t, CK_ULONG n_priv, CK_OBJECT_HANDLE *pub,
                                 CK_OBJECT_HANDLE *priv, const char *what);

#endif /* GUARDIAN_MECHS_IDENTITY_H */
