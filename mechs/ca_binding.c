/*
 * ca_binding.c — the Guardian CA key binding's codec and checks (ca_binding.h,
 * docs/vendor-interface.md "The CA key binding").  Public data only.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include "ca_binding.h"

ASN1_SEQUENCE(GUARDIAN_CA_BINDING_TBS) = {
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, purpose, ASN1_OBJECT),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, version, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, csr_digest, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, key_id, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, oem_id, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, product_id, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING_TBS, guardian, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_CA_BINDING_TBS)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_CA_BINDING_TBS)

ASN1_SEQUENCE(GUARDIAN_CA_BINDING) = {
    ASN1_SIMPLE(GUARDIAN_CA_BINDING, tbs, GUARDIAN_CA_BINDING_TBS),
    ASN1_SIMPLE(GUARDIAN_CA_BINDING, signature, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_CA_BINDING)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_CA_BINDING)

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    ERR_clear_error();
    return 0;
}

GUARDIAN_CA_BINDING_TBS *guardian_ca_binding_tbs(const uint8_t csr_digest[32], const uint8_t key_id[16],
                                                 const char *oem_id, const char *product_id,
                                                 const uint8_t guardian[32])
{
    GUARDIAN_CA_BINDING_TBS *t = GUARDIAN_CA_BINDING_TBS_new();
    if (t == NULL)
        return NULL;
    ASN1_OBJECT_free(t->purpose);
    t->purpose = OBJ_txt2obj(GUARDIAN_OID_CA_KEY_BINDING, 1);
    if (t->purpose == NULL || ASN1_INTEGER_set(t->version, GUARDIAN_CA_BINDING_VERSION) != 1 ||
        ASN1_OCTET_STRING_set(t->csr_digest, csr_digest, 32) != 1 ||
        ASN1_OCTET_STRING_set(t->key_id, key_id, GUARDIAN_CA_KEY_ID_LEN) != 1 ||
        ASN1_STRING_set(t->oem_id, oem_id, (int)strlen(oem_id)) != 1 ||
        ASN1_STRING_set(t->product_id, product_id, (int)strlen(product_id)) != 1 ||
        ASN1_OCTET_STRING_set(t->guardian, guardian, 32) != 1) {
        GUARDIAN_CA_BINDING_TBS_free(t);
        return NULL;
    }
    return t;
}

int guardian_ca_binding_check(const uint8_t *der, size_t len, EVP_PKEY *signer, const uint8_t *csr_der,
                              size_t csr_len, struct guardian_ca_binding *out, char *err, size_t errlen)
{
    const unsigned char *p = der;
    GUARDIAN_CA_BINDING *b = NULL;
    unsigned char *again = NULL, *tbs = NULL;
    char oid[128];
    int n, tbs_len, ok = 0;
    long version;

    memset(out, 0, sizeof(*out));
    if (der == NULL || len == 0 || len > 4096)
        return fail(err, errlen, "the CA key binding is empty or larger than 4096 bytes");
    b = d2i_GUARDIAN_CA_BINDING(NULL, &p, (long)len);
    if (b == NULL || (size_t)(p - der) != len) {
        fail(err, errlen, "the CA key binding is not a GuardianCaKeyBinding structure");
        goto out;
    }
    n = i2d_GUARDIAN_CA_BINDING(b, &again);
    if (n < 0 || (size_t)n != len || memcmp(again, der, len) != 0) {
        fail(err, errlen, "the CA key binding is not in canonical DER");
        goto out;
    }
    version = ASN1_INTEGER_get(b->tbs->version);
    if (OBJ_obj2txt(oid, sizeof(oid), b->tbs->purpose, 1) <= 0 || strcmp(oid, GUARDIAN_OID_CA_KEY_BINDING) != 0 ||
        version != GUARDIAN_CA_BINDING_VERSION) {
        fail(err, errlen, "the CA key binding has another purpose or an unknown version");
        goto out;
    }
    if (ASN1_STRING_length(b->tbs->csr_digest) != 32 || ASN1_STRING_length(b->tbs->key_id) != GUARDIAN_CA_KEY_ID_LEN ||
        ASN1_STRING_length(b->tbs->guardian) != 32 || !guardian_pkg_id_copy(b->tbs->oem_id, out->oem_id) ||
        !guardian_pkg_id_copy(b->tbs->product_id, out->product_id)) {
        fail(err, errlen, "the CA key binding has a field of the wrong size or an invalid OEM or product ID");
        goto out;
    }
    memcpy(out->csr_digest, ASN1_STRING_get0_data(b->tbs->csr_digest), 32);
    memcpy(out->key_id, ASN1_STRING_get0_data(b->tbs->key_id), GUARDIAN_CA_KEY_ID_LEN);
    memcpy(out->guardian, ASN1_STRING_get0_data(b->tbs->guardian), 32);
    if (csr_der != NULL) {
        uint8_t h[32];
        if (EVP_Digest(csr_der, csr_len, h, NULL, EVP_sha256(), NULL) != 1 ||
            CRYPTO_memcmp(h, out->csr_digest, 32) != 0) {
            fail(err, errlen, "the CA key binding was made for another CSR");
            goto out;
        }
    }
    if (signer != NULL) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int v = 0;
        tbs_len = i2d_GUARDIAN_CA_BINDING_TBS(b->tbs, &tbs);
        if (md != NULL && tbs_len > 0 && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, signer) == 1)
            v = EVP_DigestVerify(md, ASN1_STRING_get0_data(b->signature), (size_t)ASN1_STRING_length(b->signature),
                                 tbs, (size_t)tbs_len);
        EVP_MD_CTX_free(md);
        if (v != 1) {
            fail(err, errlen, "the CA key binding's signature does not verify with the Guardian signing "
                              "certificate's key (altered, or made by another Guardian)");
            goto out;
        }
    }
    ok = 1;
out:
    ERR_clear_error();
    OPENSSL_free(again);
    OPENSSL_free(tbs);
    GUARDIAN_CA_BINDING_free(b);
    if (!ok)
        memset(out, 0, sizeof(*out));
    return ok;
}

int guardian_ca_request_parse(const char *text, size_t len, X509_REQ **csr, uint8_t **binding, size_t *binding_len,
                              char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(text, (int)len);
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    int ok = 0;

    *csr = NULL;
    *binding = NULL;
    *binding_len = 0;
    if (b == NULL)
        return fail(err, errlen, "out of memory");
    *csr = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    if (*csr == NULL) {
        fail(err, errlen, "no CERTIFICATE REQUEST PEM block first");
        goto out;
    }
    while (PEM_read_bio(b, &name, &header, &data, &dlen) == 1) {
        if (strcmp(name, GUARDIAN_CA_BINDING_PEM) == 0 && *binding == NULL) {
            *binding = data;
            *binding_len = (size_t)dlen;
            data = NULL;
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        name = header = NULL;
        data = NULL;
    }
    if (*binding == NULL) {
        fail(err, errlen, "no " GUARDIAN_CA_BINDING_PEM " PEM block after the CSR (not a 'guardianctl ca-request' file)");
        goto out;
    }
    ok = 1;
out:
    ERR_clear_error();
    BIO_free(b);
    if (!ok) {
        X509_REQ_free(*csr);
        *csr = NULL;
        OPENSSL_free(*binding);
        *binding = NULL;
    }
    return ok;
}
