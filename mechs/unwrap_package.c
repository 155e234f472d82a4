/*
 * unwrap_package.c — CKM_GUARDIAN_UNWRAP_PACKAGE (C_UnwrapKey).
 *
 * Imports a signed, encrypted Guardian package (docs/package-format.md) into
 * the token, all or nothing.  Order of work:
 *
 *  1. public checks, module side, before any key operation: size, CMS
 *     SignedData, the OEM signature, the signer's chain to an enrolled OEM root
 *     (certificate objects with CKA_TRUSTED), the content's DER and limits, the
 *     target (SHA-256 of this Guardian's certificate), not-after, replay and
 *     rollback (store/);
 *  2. key transport inside the backend: ECDH1_DERIVE with the Guardian's key
 *     (CKD_NULL) into a session AES key, AES_CBC_ENCRYPT_DATA into the KEK (or
 *     ECDH1 with CKD_SHA256_KDF straight into the KEK), then AES_KEY_WRAP_PAD
 *     unwraps of each key into token objects — no secret passes through here;
 *  3. the objects are created inside the store's install transaction: if any
 *     creation fails, every object made so far is destroyed and nothing is
 *     recorded; if the commit fails, the objects are destroyed too.
 *
 * Every object of a package carries CKA_ID = the package ID (keys and
 * certificates) or CKA_APPLICATION = "guardian:<package id hex>" (data objects),
 * and a label "guardian:<oem>/<product>/r<release>:<name>", so C_FindObjects
 * finds them.  The handle returned is the package object, a CKO_GUARDIAN_PACKAGE
 * object served by the module (module/package_objects.c) with CKA_ID = the
 * package ID and live counters (docs/unwrap-mechanism.md).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "module.h"
#include "package.h"
#include "registry.h"
#include "unwrap_package.h"
#include "store.h"
/* after the headers above: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define MAX_OBJECTS (8 + 3 * GUARDIAN_PKG_MAX_ITEMS)

struct import {
    CK_FUNCTION_LIST *be;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE guardian_key;
    struct guardian_package pkg;
    CK_OBJECT_HANDLE kek;
    CK_OBJECT_HANDLE created[MAX_OBJECTS];
    size_t n_created;
    char prefix[GUARDIAN_PKG_NAME_MAX * 2 + 32]; /* "guardian:OEM/PRODUCT/rN" */
    char application[9 + 2 * GUARDIAN_PKG_ID_LEN + 1];
    struct guardian_unwrap_usage usage; /* narrowed by the caller's template */
};

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor/unknown CKR";
}

/* ---- step 1: public checks ------------------------------------------------ */

/* Read an attribute into a fresh buffer (caller frees). */
static CK_RV get_attr(struct import *im, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_BYTE **out, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = im->be->C_GetAttributeValue(im->session, h, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == (CK_ULONG)-1 || a.ulValueLen > GUARDIAN_PACKAGE_MAX_BYTES)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    a.pValue = OPENSSL_malloc(a.ulValueLen ? a.ulValueLen : 1);
    if (a.pValue == NULL)
        return CKR_HOST_MEMORY;
    rv = im->be->C_GetAttributeValue(im->session, h, &a, 1);
    if (rv != CKR_OK) {
        OPENSSL_free(a.pValue);
        return rv;
    }
    *out = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

/* Up to `max` handles of objects matching `templ`. */
static CK_RV find(struct import *im, CK_ATTRIBUTE *templ, CK_ULONG n, CK_OBJECT_HANDLE *found, CK_ULONG max,
                  CK_ULONG *count)
{
    CK_RV rv = im->be->C_FindObjectsInit(im->session, templ, n);
    if (rv != CKR_OK)
        return rv;
    rv = im->be->C_FindObjects(im->session, found, max, count);
    im->be->C_FindObjectsFinal(im->session);
    return rv;
}

/* SHA-256 of the Guardian certificate that goes with the unwrapping key (same
 * CKA_ID): what a package names as its target. */
static CK_RV guardian_fingerprint(struct import *im, uint8_t out[32])
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY, cert_cls = CKO_CERTIFICATE;
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE key_attrs[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
    CK_BYTE *id = NULL, *der = NULL;
    CK_ULONG id_len = 0, der_len = 0, n = 0;
    CK_OBJECT_HANDLE cert[2];
    unsigned int hl = 0;
    CK_RV rv = im->be->C_GetAttributeValue(im->session, im->guardian_key, key_attrs, 2);

    if (rv == CKR_OBJECT_HANDLE_INVALID) {
        guardian_error("unwrap", "the unwrapping key handle is not an object of this session");
        return CKR_UNWRAPPING_KEY_HANDLE_INVALID;
    }
    if (rv != CKR_OK)
        return rv;
    if (cls != CKO_PRIVATE_KEY || kt != CKK_EC) {
        guardian_error("unwrap", "the unwrapping key is not the Guardian's EC private key");
        return CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
    }
    rv = get_attr(im, im->guardian_key, CKA_ID, &id, &id_len);
    if (rv != CKR_OK || id_len == 0) {
        guardian_error("unwrap", "the Guardian key has no CKA_ID to find its certificate by");
        rv = CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
        goto out;
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cert_cls, sizeof(cert_cls)}, {CKA_ID, id, id_len}};
        rv = find(im, t, 2, cert, 2, &n);
    }
    if (rv != CKR_OK)
        goto out;
    if (n != 1) {
        guardian_error("unwrap", "%s certificate for the Guardian key (CKA_ID) in the token",
                       n == 0 ? "no" : "more than one");
        rv = CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
        goto out;
    }
    rv = get_attr(im, cert[0], CKA_VALUE, &der, &der_len);
    if (rv != CKR_OK)
        goto out;
    if (EVP_Digest(der, der_len, out, &hl, EVP_sha256(), NULL) != 1 || hl != 32) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    rv = CKR_OK;
out:
    OPENSSL_free(id);
    OPENSSL_free(der);
    return rv;
}

/* The enrolled OEM roots: certificate objects with CKA_TRUSTED = TRUE (only the
 * SO can set it). */
static CK_RV enrolled_roots(struct import *im, X509_STORE **out)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TRUSTED, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE found[64];
    CK_ULONG n = 0;
    X509_STORE *store = X509_STORE_new();
    int added = 0;
    CK_RV rv = store ? find(im, t, 2, found, 64, &n) : CKR_HOST_MEMORY;

    if (rv != CKR_OK)
        goto out;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_BYTE *der = NULL;
        CK_ULONG len = 0;
        const unsigned char *p;
        X509 *x;
        if (get_attr(im, found[i], CKA_VALUE, &der, &len) != CKR_OK)
            continue;
        p = der;
        x = d2i_X509(NULL, &p, (long)len);
        if (x != NULL && X509_STORE_add_cert(store, x) == 1)
            added++;
        X509_free(x);
        OPENSSL_free(der);
    }
    if (added == 0) {
        guardian_error("unwrap", "no OEM root is enrolled in this Guardian (guardianctl enroll-oem)");
        rv = CKR_GUARDIAN_UNTRUSTED_SIGNER;
        goto out;
    }
    *out = store;
    store = NULL;
    rv = CKR_OK;
out:
    X509_STORE_free(store);
    return rv;
}

/* The OEM signature covers the content and the signed attributes only; CMS
 * leaves the rest of the container (versions, algorithm lists, the
 * certificate set, unsigned attributes) malleable.  A package must not be
 * changeable at all, so the container must be exactly what guardian-wrap
 * makes: canonical DER, SignedData version 3, digestAlgorithms = {SHA-256},
 * one SignerInfo with SHA-256 and the matching signature algorithm, no
 * unsigned attributes, no CRLs, and every certificate in the set valid under
 * the enrolled roots.  Returns a static reason, or NULL when it conforms. */
static const char *container_profile(CMS_ContentInfo *cms, const CK_BYTE *data, CK_ULONG len, X509_STORE *roots)
{
    static const unsigned char sha256_set[] = {0x31, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                               0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
    const unsigned char *p = data;
    unsigned char *again = NULL;
    long l;
    int tag, cls, n, again_len;
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    STACK_OF(X509) *certs = NULL;
    STACK_OF(X509_CRL) *crls = NULL;
    const char *why = NULL;

    again_len = i2d_CMS_ContentInfo(cms, &again);
    if (again_len < 0 || (CK_ULONG)again_len != len || memcmp(again, data, len) != 0) {
        why = "the container is not canonical DER";
        goto out;
    }
    /* ContentInfo SEQUENCE, contentType OID, [0], SignedData SEQUENCE, version. */
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_SEQUENCE)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_OBJECT)
        goto malformed;
    p += l;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || cls != V_ASN1_CONTEXT_SPECIFIC || tag != 0)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_SEQUENCE)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_INTEGER || l != 1 || p[0] != 3) {
        why = "SignedData version is not 3";
        goto out;
    }
    p += l;
    if ((size_t)(data + len - p) < sizeof(sha256_set) || memcmp(p, sha256_set, sizeof(sha256_set)) != 0) {
        why = "digestAlgorithms is not exactly {SHA-256}";
        goto out;
    }
    /* Skip digestAlgorithms, encapContentInfo, [0] certificates, [1] CRLs;
     * then SignerInfos SET, SignerInfo SEQUENCE, its version: 1
     * (issuerAndSerialNumber, as guardian-wrap makes). */
    for (int field = 0; field < 4; field++) {
        const unsigned char *q = p;
        if (ASN1_get_object(&q, &l, &tag, &cls, (long)(data + len - p)) & 0x80)
            goto malformed;
        if (field >= 2 && !(cls == V_ASN1_CONTEXT_SPECIFIC && tag == field - 2))
            continue; /* optional [0]/[1] absent */
        p = q + l;
    }
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_SET ||
        (ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_SEQUENCE ||
        (ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_INTEGER) {
        why = "the SignerInfos are malformed";
        goto out;
    }
    if (l != 1 || p[0] != 1) {
        why = "SignerInfo version is not 1";
        goto out;
    }
    if (sk_CMS_SignerInfo_num(sis) != 1) {
        why = "not exactly one SignerInfo";
        goto out;
    }
    {
        CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, 0);
        X509_ALGOR *dig = NULL, *sig = NULL;
        EVP_PKEY *pk = NULL;
        X509 *signer = NULL;
        const ASN1_OBJECT *oid;
        int ptype, want;
        CMS_SignerInfo_get0_algs(si, &pk, &signer, &dig, &sig);
        X509_ALGOR_get0(&oid, &ptype, NULL, dig);
        if (OBJ_obj2nid(oid) != NID_sha256 || ptype != V_ASN1_UNDEF) {
            why = "the signer's digest algorithm is not SHA-256 without parameters";
            goto out;
        }
        X509_ALGOR_get0(&oid, &ptype, NULL, sig);
        want = (pk != NULL && EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC) ? NID_ecdsa_with_SHA256 : NID_sha256WithRSAEncryption;
        if (OBJ_obj2nid(oid) != want ||
            (want == NID_ecdsa_with_SHA256 ? ptype != V_ASN1_UNDEF : (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF))) {
            why = "the signature algorithm does not match the signer's key and SHA-256";
            goto out;
        }
        if (CMS_unsigned_get_attr_count(si) > 0) {
            why = "unsigned attributes are present";
            goto out;
        }
    }
    crls = CMS_get1_crls(cms);
    if (crls != NULL && sk_X509_CRL_num(crls) > 0) {
        why = "CRLs are present";
        goto out;
    }
    certs = CMS_get1_certs(cms);
    for (n = 0; certs != NULL && n < sk_X509_num(certs); n++) {
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        int ok = ctx != NULL && X509_STORE_CTX_init(ctx, roots, sk_X509_value(certs, n), certs) == 1 &&
                 X509_verify_cert(ctx) == 1;
        X509_STORE_CTX_free(ctx);
        if (!ok) {
            why = "a certificate in the package does not verify under the enrolled roots";
            goto out;
        }
    }
    goto out;
malformed:
    why = "the container is malformed";
out:
    OPENSSL_free(again);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    return why;
}

/* CMS checks; on success `content` holds the verified GuardianPackage DER. */
static CK_RV verify_container(struct import *im, const CK_BYTE *data, CK_ULONG len, BIO *content)
{
    const unsigned char *p = data;
    CMS_ContentInfo *cms = NULL;
    X509_STORE *roots = NULL;
    ASN1_OBJECT *pkg_oid = OBJ_txt2obj(GUARDIAN_OID_PACKAGE, 1);
    BIO *scratch = BIO_new(BIO_s_mem());
    CK_RV rv = CKR_GENERAL_ERROR;

    if (pkg_oid == NULL || scratch == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (cms == NULL || p != data + len || OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
        OBJ_cmp(CMS_get0_eContentType(cms), pkg_oid) != 0) {
        guardian_error("unwrap", "refused: not a Guardian package (CMS SignedData of id-guardian-package expected)");
        rv = CKR_WRAPPED_KEY_INVALID;
        goto out;
    }
    /* The signature first, so that "altered" and "unknown signer" differ. */
    if (CMS_verify(cms, NULL, NULL, NULL, scratch, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        guardian_error("unwrap", "refused: the package signature does not verify (altered in transit?)");
        rv = CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID;
        goto out;
    }
    rv = enrolled_roots(im, &roots);
    if (rv != CKR_OK)
        goto out;
    if (CMS_verify(cms, NULL, roots, NULL, content, CMS_BINARY) != 1) {
        guardian_error("unwrap", "refused: the package signer does not chain to an enrolled OEM root");
        rv = CKR_GUARDIAN_UNTRUSTED_SIGNER;
        goto out;
    }
    {
        const char *why = container_profile(cms, data, len, roots);
        if (why != NULL) {
            guardian_error("unwrap", "refused: the package was altered outside its signature: %s", why);
            rv = CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID;
            goto out;
        }
    }
    rv = CKR_OK;
out:
    ERR_clear_error();
    ASN1_OBJECT_free(pkg_oid);
    BIO_free(scratch);
    X509_STORE_free(roots);
    CMS_ContentInfo_free(cms);
    return rv;
}

/* ---- step 2 and 3: inside the backend --------------------------------------- */

static void destroy_all(struct import *im)
{
    for (size_t i = im->n_created; i > 0; i--)
        im->be->C_DestroyObject(im->session, im->created[i - 1]);
    im->n_created = 0;
}

static CK_RV track(struct import *im, CK_OBJECT_HANDLE h)
{
    if (im->n_created == MAX_OBJECTS) {
        im->be->C_DestroyObject(im->session, h);
        return CKR_GENERAL_ERROR;
    }
    im->created[im->n_created++] = h;
    return CKR_OK;
}

static CK_RV derive_kek(struct import *im)
{
    const ASN1_OCTET_STRING *eph = im->pkg.asn1->transport->ephemeral_key;
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG len32 = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    uint8_t context[32];
    CK_OBJECT_HANDLE z = CK_INVALID_HANDLE;
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    CK_ATTRIBUTE z_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                          {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, sizeof(no)},
                          {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                          {CKA_DERIVE, &yes, sizeof(yes)}};
    CK_ATTRIBUTE kek_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                            {CKA_UNWRAP, &yes, sizeof(yes)}};
    CK_RV rv;

    if (!guardian_package_kek_context(&im->pkg, context))
        return CKR_GENERAL_ERROR;
    memset(&ecdh, 0, sizeof(ecdh));
    ecdh.pPublicData = (CK_BYTE_PTR)ASN1_STRING_get0_data(eph);
    ecdh.ulPublicDataLen = (CK_ULONG)ASN1_STRING_length(eph);

    if (im->pkg.scheme == GUARDIAN_KT_ECDH_SHA256KDF) {
        ecdh.kdf = CKD_SHA256_KDF;
        ecdh.pSharedData = context;
        ecdh.ulSharedDataLen = sizeof(context);
        rv = im->be->C_DeriveKey(im->session, &m, im->guardian_key, kek_t, 7, &im->kek);
        if (rv != CKR_OK)
            guardian_error("unwrap", "ECDH with CKD_SHA256_KDF failed in the backend: %s (a backend without "
                                     "it needs packages made with --kdf aes-cbc)", ckr(rv));
        return rv;
    }
    ecdh.kdf = CKD_NULL;
    rv = im->be->C_DeriveKey(im->session, &m, im->guardian_key, z_t, 7, &z);
    if (rv != CKR_OK) {
        guardian_error("unwrap", "ECDH in the backend failed: %s", ckr(rv));
        return rv;
    }
    {
        CK_AES_CBC_ENCRYPT_DATA_PARAMS cbc;
        CK_MECHANISM m2 = {CKM_AES_CBC_ENCRYPT_DATA, &cbc, sizeof(cbc)};
        memset(&cbc, 0, sizeof(cbc));
        cbc.pData = context;
        cbc.length = sizeof(context);
        rv = im->be->C_DeriveKey(im->session, &m2, z, kek_t, 7, &im->kek);
        if (rv != CKR_OK)
            guardian_error("unwrap", "AES_CBC_ENCRYPT_DATA in the backend failed: %s", ckr(rv));
    }
    im->be->C_DestroyObject(im->session, z);
    return rv;
}

static CK_RV unwrap_one(struct import *im, const GUARDIAN_WRAPPED_KEY *wk, const char *role, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_KEY_TYPE kt = (CK_KEY_TYPE)ASN1_INTEGER_get(wk->key_type);
    CK_OBJECT_CLASS cls = (kt == CKK_EC || kt == CKK_RSA) ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = cls == CKO_PRIVATE_KEY ? im->usage.sign : CK_FALSE;
    CK_BBOOL decrypt = im->usage.decrypt, derive = im->usage.derive, unwrap = im->usage.unwrap;
    char label[sizeof(im->prefix) + GUARDIAN_PKG_NAME_MAX + 2];
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},          {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &yes, sizeof(yes)},          {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},      {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ID, im->pkg.package_id, GUARDIAN_PKG_ID_LEN},
        {CKA_LABEL, label, 0},                   {CKA_SIGN, &sign, sizeof(sign)},
        {CKA_DECRYPT, &decrypt, sizeof(decrypt)}, {CKA_DERIVE, &derive, sizeof(derive)},
        {CKA_UNWRAP, &unwrap, sizeof(unwrap)},
    };
    CK_ULONG n_attrs = sizeof(t) / sizeof(t[0]);
    CK_RV rv;

    /* The production CA key signs, nothing else; extra keys keep what the
     * package's key type allows, narrowed by the caller. */
    if (strcmp(role, "production-ca") == 0)
        decrypt = derive = unwrap = CK_FALSE;
    snprintf(label, sizeof(label), "%s:%.*s", im->prefix, ASN1_STRING_length(wk->label),
             ASN1_STRING_get0_data(wk->label));
    t[7].ulValueLen = strlen(label);
    rv = im->be->C_UnwrapKey(im->session, &kwp, im->kek, (CK_BYTE_PTR)ASN1_STRING_get0_data(wk->wrapped),
                             (CK_ULONG)ASN1_STRING_length(wk->wrapped), t, n_attrs, out);
    if (rv != CKR_OK) {
        guardian_error("unwrap", "refused: %s key '%.*s' does not unwrap (%s): wrong Guardian key or altered "
                                 "ciphertext", role, ASN1_STRING_length(wk->label), ASN1_STRING_get0_data(wk->label),
                       ckr(rv));
        return rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_ENCRYPTED_DATA_INVALID ? CKR_WRAPPED_KEY_INVALID : rv;
    }
    return track(im, *out);
}

static CK_RV create_certificate(struct import *im, X509 *x, int index)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG category = 2; /* authority */
    unsigned char *der = NULL, *subj = NULL, *iss = NULL, *serial = NULL;
    int der_len = i2d_X509(x, &der), subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    int iss_len = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    int ser_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &serial);
    char label[sizeof(im->prefix) + 32];
    CK_OBJECT_HANDLE h;
    CK_RV rv = CKR_HOST_MEMORY;

    if (der_len > 0 && subj_len > 0 && iss_len > 0 && ser_len > 0) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},      {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
            {CKA_TOKEN, &yes, sizeof(yes)},      {CKA_CERTIFICATE_CATEGORY, &category, sizeof(category)},
            {CKA_ID, im->pkg.package_id, GUARDIAN_PKG_ID_LEN},
            {CKA_LABEL, label, 0},               {CKA_VALUE, der, (CK_ULONG)der_len},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len}, {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len},
        };
        snprintf(label, sizeof(label), "%s:%s%d", im->prefix, index == 0 ? "production-ca-cert" : "chain-", index);
        t[5].ulValueLen = strlen(label);
        rv = im->be->C_CreateObject(im->session, t, sizeof(t) / sizeof(t[0]), &h);
        if (rv == CKR_OK)
            rv = track(im, h);
        else
            guardian_error("unwrap", "cannot create certificate object %d: %s", index, ckr(rv));
    }
    OPENSSL_free(der);
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(serial);
    return rv;
}

static CK_RV create_data(struct import *im, const char *label, const void *value, CK_ULONG len)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)}, {CKA_MODIFIABLE, &no, sizeof(no)},
        {CKA_APPLICATION, im->application, strlen(im->application)},
        {CKA_LABEL, (void *)label, strlen(label)}, {CKA_VALUE, (void *)value, len},
    };
    CK_OBJECT_HANDLE h;
    CK_RV rv = im->be->C_CreateObject(im->session, t, sizeof(t) / sizeof(t[0]), &h);
    if (rv != CKR_OK) {
        guardian_error("unwrap", "cannot create data object '%s': %s", label, ckr(rv));
        return rv;
    }
    return track(im, h);
}

/* Runs inside the store's install transaction (store.h: commit_hook). */
static CK_RV create_objects(void *ctx)
{
    struct import *im = ctx;
    GUARDIAN_PACKAGE *a = im->pkg.asn1;
    CK_OBJECT_HANDLE h;
    char label[sizeof(im->prefix) + GUARDIAN_PKG_NAME_MAX + 16];
    CK_RV rv;

    rv = unwrap_one(im, a->production_ca->key, "production-ca", &h);
    for (int i = 0; rv == CKR_OK && i < sk_X509_num(a->production_ca->chain); i++)
        rv = create_certificate(im, sk_X509_value(a->production_ca->chain, i), i);
    for (int i = 0; rv == CKR_OK && a->extra_keys && i < sk_GUARDIAN_WRAPPED_KEY_num(a->extra_keys); i++)
        rv = unwrap_one(im, sk_GUARDIAN_WRAPPED_KEY_value(a->extra_keys, i), "extra", &h);
    for (int i = 0; rv == CKR_OK && a->data_items && i < sk_GUARDIAN_DATA_ITEM_num(a->data_items); i++) {
        const GUARDIAN_DATA_ITEM *d = sk_GUARDIAN_DATA_ITEM_value(a->data_items, i);
        if (ASN1_ENUMERATED_get(d->protection) == GUARDIAN_DATA_CONFIDENTIAL) {
            GUARDIAN_WRAPPED_KEY wk = {.label = d->name, .key_type = NULL, .wrapped = d->value};
            ASN1_INTEGER *gs = ASN1_INTEGER_new();
            if (gs == NULL || !ASN1_INTEGER_set(gs, CKK_GENERIC_SECRET)) {
                ASN1_INTEGER_free(gs);
                rv = CKR_HOST_MEMORY;
                break;
            }
            wk.key_type = gs;
            rv = unwrap_one(im, &wk, "confidential data", &h);
            ASN1_INTEGER_free(gs);
        } else {
            snprintf(label, sizeof(label), "%s:%.*s", im->prefix, ASN1_STRING_length(d->name),
                     ASN1_STRING_get0_data(d->name));
            rv = create_data(im, label, ASN1_STRING_get0_data(d->value), (CK_ULONG)ASN1_STRING_length(d->value));
        }
    }
    return rv;
}

CK_RV guardian_unwrap_check_arguments(const CK_MECHANISM *mech, const CK_ATTRIBUTE *templ, CK_ULONG count,
                                      struct guardian_unwrap_usage *usage)
{
    usage->sign = usage->decrypt = usage->derive = usage->unwrap = CK_TRUE;
    if (mech == NULL || (templ == NULL && count != 0))
        return CKR_ARGUMENTS_BAD;
    /* A NULL parameter means the defaults; no parameter version is defined yet. */
    if (mech->pParameter != NULL || mech->ulParameterLen != 0) {
        guardian_error("unwrap", "CKM_GUARDIAN_UNWRAP_PACKAGE takes no parameter in this version (got %lu bytes)",
                       (unsigned long)mech->ulParameterLen);
        return CKR_MECHANISM_PARAM_INVALID;
    }
    /* The caller's template may only narrow what the package decides. */
    for (CK_ULONG i = 0; i < count; i++) {
        const CK_ATTRIBUTE *a = &templ[i];
        CK_BBOOL v;
        if (a->pValue == NULL || a->ulValueLen != sizeof(CK_BBOOL))
            goto inconsistent;
        v = *(const CK_BBOOL *)a->pValue;
        switch (a->type) {
        case CKA_SIGN: if (!v) usage->sign = CK_FALSE; break;
        case CKA_DECRYPT: if (!v) usage->decrypt = CK_FALSE; break;
        case CKA_DERIVE: if (!v) usage->derive = CK_FALSE; break;
        case CKA_UNWRAP: if (!v) usage->unwrap = CK_FALSE; break;
        case CKA_TOKEN: case CKA_PRIVATE: case CKA_SENSITIVE:
            if (!v) goto inconsistent; /* the package's objects are all of these */
            break;
        case CKA_EXTRACTABLE:
            if (v) goto inconsistent;
            break;
        default:
            goto inconsistent;
        }
        continue;
    inconsistent:
        guardian_error("unwrap", "template attribute 0x%lx would widen what the package allows (only CKA_SIGN, "
                                 "CKA_DECRYPT, CKA_DERIVE, CKA_UNWRAP = FALSE may narrow it)", (unsigned long)a->type);
        return CKR_TEMPLATE_INCONSISTENT;
    }
    return CKR_OK;
}

static CK_RV unwrap_package(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                            CK_MECHANISM *mech, CK_OBJECT_HANDLE unwrapping_key, CK_BYTE *wrapped,
                            CK_ULONG wrapped_len, CK_ATTRIBUTE *templ, CK_ULONG count, CK_OBJECT_HANDLE *out)
{
    struct import im;
    CK_SESSION_INFO si;
    BIO *content = BIO_new(BIO_s_mem());
    struct guardian_package_info info;
    uint8_t self[32];
    char err[256];
    const unsigned char *data;
    unsigned char *tmpl_der = NULL, *ca_der = NULL;
    int tmpl_len, ca_len;
    long dlen;
    int64_t now;
    CK_RV rv = CKR_GENERAL_ERROR;

    memset(&im, 0, sizeof(im));
    im.be = be;
    im.session = session;
    im.guardian_key = unwrapping_key;
    im.kek = CK_INVALID_HANDLE;

    if (content == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if (out == NULL || (wrapped == NULL && wrapped_len != 0)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = guardian_unwrap_check_arguments(mech, templ, count, &im.usage);
    if (rv != CKR_OK)
        goto out;
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK)
        goto out;
    if (si.state != CKS_RW_USER_FUNCTIONS) {
        rv = si.state == CKS_RO_USER_FUNCTIONS ? CKR_SESSION_READ_ONLY : CKR_USER_NOT_LOGGED_IN;
        guardian_error("unwrap", "importing a package needs a read-write session with the user logged in");
        goto out;
    }
    if (wrapped_len == 0 || wrapped_len > GUARDIAN_PACKAGE_MAX_BYTES) {
        guardian_error("unwrap", "refused: package of %lu bytes (1..%d allowed)", (unsigned long)wrapped_len,
                       GUARDIAN_PACKAGE_MAX_BYTES);
        rv = CKR_WRAPPED_KEY_LEN_RANGE;
        goto out;
    }
    rv = guardian_fingerprint(&im, self);
    if (rv != CKR_OK)
        goto out;
    rv = verify_container(&im, wrapped, wrapped_len, content);
    if (rv != CKR_OK)
        goto out;
    dlen = BIO_get_mem_data(content, (char **)&data);
    if (!guardian_package_decode(data, (size_t)dlen, &im.pkg, err, sizeof(err))) {
        guardian_error("unwrap", "refused: %s", err);
        rv = CKR_WRAPPED_KEY_INVALID;
        goto out;
    }
    if (memcmp(im.pkg.target_guardian, self, sizeof(self)) != 0) {
        guardian_error("unwrap", "refused: package %s/%s r%u was made for another Guardian", im.pkg.oem_id,
                       im.pkg.product_id, im.pkg.release_version);
        rv = CKR_GUARDIAN_WRONG_GUARDIAN;
        goto out;
    }
    /* One reading of the clock for the expiry check here and the store's
     * (which also refuses a clock behind its audit trail). */
    now = (int64_t)time(NULL);
    if (im.pkg.not_after < now) {
        guardian_error("unwrap", "refused: package %s/%s r%u expired", im.pkg.oem_id, im.pkg.product_id,
                       im.pkg.release_version);
        rv = CKR_GUARDIAN_PACKAGE_EXPIRED;
        goto out;
    }
    memset(&info, 0, sizeof(info));
    memcpy(info.package_id, im.pkg.package_id, sizeof(info.package_id));
    EVP_Digest(wrapped, wrapped_len, info.package_digest, NULL, EVP_sha256(), NULL);
    snprintf(info.oem_id, sizeof(info.oem_id), "%s", im.pkg.oem_id);
    snprintf(info.product_id, sizeof(info.product_id), "%s", im.pkg.product_id);
    info.release_version = im.pkg.release_version;
    info.authorised_units = im.pkg.authorised_units;
    info.not_after = im.pkg.not_after;
    rv = guardian_store_package_check(st, &info, now);
    if (rv != CKR_OK) {
        guardian_error("unwrap", "refused: package %s/%s r%u: %s", im.pkg.oem_id, im.pkg.product_id,
                       im.pkg.release_version,
                       rv == CKR_GUARDIAN_PACKAGE_REPLAYED   ? "already imported (replay)"
                       : rv == CKR_GUARDIAN_PACKAGE_ROLLBACK ? "the installed release is the same or newer (rollback)"
                                                             : ckr(rv));
        goto out;
    }

    snprintf(im.prefix, sizeof(im.prefix), "guardian:%s/%s/r%u", im.pkg.oem_id, im.pkg.product_id,
             im.pkg.release_version);
    memcpy(im.application, "guardian:", 9);
    for (int i = 0; i < GUARDIAN_PKG_ID_LEN; i++)
        snprintf(im.application + 9 + 2 * i, 3, "%02x", im.pkg.package_id[i]);

    /* The store keeps what issuing certificates needs: the template and the
     * production CA certificate (both public). */
    tmpl_len = i2d_GUARDIAN_CERT_TEMPLATE(im.pkg.asn1->cert_template, &tmpl_der);
    ca_len = i2d_X509(sk_X509_value(im.pkg.asn1->production_ca->chain, 0), &ca_der);
    if (tmpl_len <= 0 || ca_len <= 0) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    info.cert_template = tmpl_der;
    info.cert_template_len = (size_t)tmpl_len;
    info.ca_cert = ca_der;
    info.ca_cert_len = (size_t)ca_len;

    rv = derive_kek(&im);
    if (rv != CKR_OK)
        goto out;
    rv = guardian_store_package_install(st, &info, now, create_objects, &im);
    if (rv != CKR_OK) {
        destroy_all(&im);
        goto out;
    }
    guardian_info("unwrap", "imported package %s/%s r%u: %zu objects, %llu units", im.pkg.oem_id,
                  im.pkg.product_id, im.pkg.release_version, im.n_created,
                  (unsigned long long)im.pkg.authorised_units);
    /* The package object is the module's own CKO_GUARDIAN_PACKAGE object. */
    *out = guardian_package_object_handle(im.pkg.oem_id, im.pkg.product_id);
    rv = CKR_OK;
out:
    if (im.kek != CK_INVALID_HANDLE)
        be->C_DestroyObject(session, im.kek);
    guardian_package_free(&im.pkg);
    BIO_free(content);
    OPENSSL_free(tmpl_der);
    OPENSSL_free(ca_der);
    return rv;
}

static const CK_MECHANISM_TYPE requires[] = {
    CKM_ECDH1_DERIVE,
    CKM_AES_CBC_ENCRYPT_DATA,
    CKM_AES_KEY_WRAP_PAD,
};

const struct guardian_mech guardian_mech_unwrap_package = {
    .type = CKM_GUARDIAN_UNWRAP_PACKAGE,
    .name = "CKM_GUARDIAN_UNWRAP_PACKAGE",
    .info = {.ulMinKeySize = 256, .ulMaxKeySize = 384, .flags = CKF_UNWRAP},
    .requires = requires,
    .n_requires = sizeof(requires) / sizeof(requires[0]),
    .unwrap = unwrap_package,
};
