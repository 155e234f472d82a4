/*
 * ca_binding.h — the Guardian CA key binding (docs/vendor-interface.md, "The
 * CA key binding"): the Guardian's signing key vouches that the production CA
 * key of a CSR was made inside this Guardian, for one OEM and product.  One
 * codec for the module (mechs/ca_request.c makes it) and guardian-wrap
 * (certify-ca and create check it).
 *
 *   GuardianCaKeyBinding ::= SEQUENCE {
 *     tbs        GuardianCaKeyBindingTBS,
 *     signature  OCTET STRING }  -- ECDSA-Sig-Value by the Guardian signing key
 *                                -- over SHA-256(DER(tbs))
 *   GuardianCaKeyBindingTBS ::= SEQUENCE {
 *     purpose    OBJECT IDENTIFIER,  -- id-guardian-ca-key-binding (arc .4)
 *     version    INTEGER (1),
 *     csrDigest  OCTET STRING (32),  -- SHA-256 of the CSR's DER
 *     keyId      OCTET STRING (16),  -- the key's CKA_ID = the package ID of
 *                                    -- the package that carries its certificate
 *     oemId      UTF8String,
 *     productId  UTF8String,
 *     guardian   OCTET STRING (32) } -- SHA-256 of the Guardian certificate A
 */
#ifndef GUARDIAN_MECHS_CA_BINDING_H
#define GUARDIAN_MECHS_CA_BINDING_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/asn1t.h>
#include <openssl/x509.h>

#include "package.h"

#define GUARDIAN_OID_CA_KEY_BINDING GUARDIAN_OID_ARC ".4"
#define GUARDIAN_CA_BINDING_VERSION 1
#define GUARDIAN_CA_BINDING_PEM "GUARDIAN CA KEY BINDING"
#define GUARDIAN_CA_KEY_ID_LEN 16
/* The label of a production CA key pair made in the Guardian (CKA_ID: its
 * key ID), under the Guardian's "guardian:" namespace (module/policy.c):
 * "guardian:OEM/PRODUCT:ca-key".  The derive mechanism accepts it beside an
 * imported key's "guardian:OEM/PRODUCT/rN:production-ca" (same CKA_ID rule:
 * the package ID), and proves either by a test signature. */
#define GUARDIAN_CA_KEY_LABEL_FMT "guardian:%s/%s:ca-key"

typedef struct {
    ASN1_OBJECT *purpose;
    ASN1_INTEGER *version;
    ASN1_OCTET_STRING *csr_digest;
    ASN1_OCTET_STRING *key_id;
    ASN1_UTF8STRING *oem_id;
    ASN1_UTF8STRING *product_id;
    ASN1_OCTET_STRING *guardian;
} GUARDIAN_CA_BINDING_TBS;

typedef struct {
    GUARDIAN_CA_BINDING_TBS *tbs;
    ASN1_OCTET_STRING *signature;
} GUARDIAN_CA_BINDING;

DECLARE_ASN1_FUNCTIONS(GUARDIAN_CA_BINDING_TBS)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_CA_BINDING)

/* The checked, plain view of a binding. */
struct guardian_ca_binding {
    uint8_t csr_digest[32];
    uint8_t key_id[GUARDIAN_CA_KEY_ID_LEN];
    char oem_id[GUARDIAN_PKG_NAME_MAX + 1];
    char product_id[GUARDIAN_PKG_NAME_MAX + 1];
    uint8_t guardian[32];
};

/* A new TBS for these values (NULL on failure). */
GUARDIAN_CA_BINDING_TBS *guardian_ca_binding_tbs(const uint8_t csr_digest[32], const uint8_t key_id[16],
                                                 const char *oem_id, const char *product_id,
                                                 const uint8_t guardian[32]);
/* Decode DER `der`, check its form and, with `signer` (the Guardian signing
 * certificate S's key) its signature, and, with `csr_der`, that it binds that
 * CSR.  1 and *out, or 0 and one line in `err`. */
int guardian_ca_binding_check(const uint8_t *der, size_t len, EVP_PKEY *signer, const uint8_t *csr_der,
                              size_t csr_len, struct guardian_ca_binding *out, char *err, size_t errlen);
/* Split the text of a ca-request file: the CSR (first PEM block) and the
 * binding's DER (the GUARDIAN CA KEY BINDING block; OPENSSL_free it).  1 or
 * 0 with `err`. */
int guardian_ca_request_parse(const char *text, size_t len, X509_REQ **csr, uint8_t **binding, size_t *binding_len,
                              char *err, size_t errlen);

#endif /* GUARDIAN_MECHS_CA_BINDING_H */
