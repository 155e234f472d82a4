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
 *     ECDH1 with CKD_SHA256_KDF straight into the KEK), then RFC 5649 unwraps
 *     of each key into token objects, under the number the slot's self-test
 *     found RFC 5649 under (0x210A SoftHSM, 0x210B NSS) and with CKA_NSS_DB
 *     where the token wants it; or, an RSA Guardian, C_UnwrapKey of the KEK
 *     with CKM_RSA_PKCS_OAEP (SHA-256, label C) and CKM_AES_CBC_PAD unwraps of
 *     each key — no secret passes through here; a scheme the self-test
 *     measured not to work there is refused before any of it;
 *  3. the objects are created inside the store's install transaction: if any
 *     creation fails, every object made so far is destroyed and nothing is
 *     recorded; if the commit fails, the objects are destroyed too.
 *
 * The production CA key and its certificate carry CKA_ID = the package ID;
 * the package's other keys (extra keys, confidential items) the package ID
 * followed by their own label; the other certificates of the chain
 * (intermediates, the OEM root) the SHA-1 of their own public key, the usual
 * CKA_ID; data objects CKA_APPLICATION = "guardian:<package id hex>".  So
 * clients that pair a key with its certificate by CKA_ID (NSS, Java's PKCS11
 * keystore) pair the production CA key with its own certificate only.
 * Every object has a label "guardian:<oem>/<product>/r<release>:<name>", so
 * C_FindObjects finds them.  The handle returned is the package object, a CKO_GUARDIAN_PACKAGE
 * object served by the module (module/package_objects.c) with CKA_ID = the
 * package ID and live counters (docs/unwrap-mechanism.md).
 *
 * CKG_GUARDIAN_REQ_IMPORT (a C_CreateObject request, for callers behind a
 * remoting layer that drops vendor mechanisms) runs the same import with the
 * Guardian's agreement key, which the module finds itself.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "module.h"
#include "package.h"
#include "anchor.h"
#include "ca_binding.h"
#include "identity.h"
#include "package_container.h"
#include "registry.h"
#include "request.h"
#include "unwrap_package.h"
#include "store.h"
#include "transport.h"
/* after the headers above: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define MAX_OBJECTS (8 + 3 * GUARDIAN_PKG_MAX_ITEMS)
#define MAX_ROOTS 64

struct import {
    CK_FUNCTION_LIST *be;
    struct guardian_store *st;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE guardian_key;
    CK_KEY_TYPE guardian_key_type; /* CKK_EC (ECDH schemes) or CKK_RSA (RSA-OAEP) */
    struct guardian_package pkg;
    CK_OBJECT_HANDLE kek;
    int member; /* a group package: this Guardian's index among its members; -1 otherwise */
    CK_OBJECT_HANDLE created[MAX_OBJECTS];
    size_t n_created;
    char prefix[GUARDIAN_PKG_NAME_MAX * 2 + 32]; /* "guardian:OEM/PRODUCT/rN" */
    char application[9 + 2 * GUARDIAN_PKG_ID_LEN + 1];
    struct guardian_unwrap_usage usage; /* narrowed by the caller's template */
    /* The enrolled roots and their labels ("guardian-root:<oem ids>"). */
    X509 *roots[MAX_ROOTS];
    char *root_labels[MAX_ROOTS];
    CK_ULONG root_label_lens[MAX_ROOTS];
    size_t n_roots;
    /* What this slot's self-test measured (selftest.c): RFC 5649's number,
     * whether an EC private-key unwrap needs CKA_NSS_DB, the schemes. */
    struct guardian_transport_facts transport;
    /* The production CA key's public point (X9.62), CKA_NSS_DB's value for it. */
    unsigned char ca_point[133];
    size_t ca_point_len;
    /* The token keeps no private token CKO_DATA (NSS): integrity items are
     * kept as generic secrets instead (create_data). */
    bool data_as_secret;
    /* The backend dropped CKA_SENSITIVE / CKA_EXTRACTABLE of an unwrap
     * template in this import (sealed(): opencryptoki 3.8). */
    bool unwrap_unsealed;
};

static void roots_free(struct import *im);

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
    return guardian_backend_find(im->be, im->session, templ, n, found, max, count);
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
    if (cls != CKO_PRIVATE_KEY || (kt != CKK_EC && kt != CKK_RSA)) {
        guardian_error("unwrap", "the unwrapping key is not the Guardian's EC or RSA private key");
        return CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
    }
    im->guardian_key_type = kt;
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

/* A root of the ledger (store/roots.c) into `im` and the X509_STORE, with the
 * label it would have as a certificate ("guardian-root:<oem ids>"). */
struct ledger_ctx {
    struct import *im;
    X509_STORE *store;
    int added;
};

static CK_RV ledger_root(const struct guardian_root_row *r, void *ctx)
{
    struct ledger_ctx *c = ctx;
    struct import *im = c->im;
    const unsigned char *p = r->der;
    size_t plen = strlen(GUARDIAN_ROOT_PREFIX), ilen = strlen(r->oem_ids);
    X509 *x;
    char *label;

    if (im->n_roots == MAX_ROOTS)
        return CKR_OK;
    x = d2i_X509(NULL, &p, (long)r->der_len);
    label = OPENSSL_malloc(plen + ilen + 1);
    if (x == NULL || label == NULL || X509_STORE_add_cert(c->store, x) != 1) {
        X509_free(x);
        OPENSSL_free(label);
        return CKR_OK;
    }
    memcpy(label, GUARDIAN_ROOT_PREFIX, plen);
    memcpy(label + plen, r->oem_ids, ilen + 1);
    im->roots[im->n_roots] = x;
    im->root_labels[im->n_roots] = label;
    im->root_label_lens[im->n_roots++] = plen + ilen;
    c->added++;
    return CKR_OK;
}

/* Where the token cannot be trusted to hold roots: the roots of the ledger
 * that the Guardian SO enrolled in service mode, counted only while the
 * store agrees with the token's anchor, and only those whose ENROL record is
 * in the verified chain up to the anchored head with the row's content
 * (guardian_store_roots_verified). */
static CK_RV ledger_roots(struct import *im, X509_STORE *store, const char *token_why)
{
    enum guardian_anchor_state state = GUARDIAN_ANCHOR_ABSENT;
    struct ledger_ctx c = {im, store, 0};
    uint64_t anchored = 0;
    size_t skipped = 0;
    CK_RV rv;

    if (!guardian_service_mode()) {
        guardian_error("unwrap", "refused: no OEM root counts on this token: %s; enrolment then holds only in "
                                 "service mode (backend_pin_file, without backend_so_pin_file: the Guardian's "
                                 "Security Officer enrols the root in the anchored store; docs/service-mode.md, "
                                 "docs/threat-model.md section 2)",
                       token_why);
        return CKR_GUARDIAN_OEM_NOT_ENROLLED;
    }
    rv = guardian_anchor_check(im->be, im->session, im->st);
    if (rv == CKR_OK)
        rv = guardian_anchor_compare(im->be, im->session, im->st, &state, &anchored);
    if (rv != CKR_OK)
        return rv;
    if (state != GUARDIAN_ANCHOR_AGREES && state != GUARDIAN_ANCHOR_STORE_AHEAD) {
        guardian_error("unwrap", "refused: the OEM roots of the ledger count only while the state store agrees with "
                                 "the token's anchor, and it does not (%s)",
                       state == GUARDIAN_ANCHOR_ABSENT ? "the token has no anchor" : "the store is not the anchored one");
        return state == GUARDIAN_ANCHOR_ABSENT ? CKR_GUARDIAN_OEM_NOT_ENROLLED : CKR_GUARDIAN_STATE_ROLLBACK;
    }
    roots_free(im);
    rv = guardian_store_roots_verified(im->st, anchored, "so", ledger_root, &c, &skipped);
    if (rv != CKR_OK)
        return rv;
    if (c.added == 0) {
        guardian_error("unwrap", "no OEM root is enrolled in this Guardian's ledger (guardianctl enroll-oem --oem-id, "
                                 "as the Guardian's Security Officer in service mode without backend_so_pin_file)%s",
                       skipped ? "; rows of the ledger without their anchored ENROL record do not count" : "");
        return CKR_GUARDIAN_UNTRUSTED_SIGNER;
    }
    return CKR_OK;
}

static CK_RV count_root_row(const struct guardian_root_row *r, void *ctx)
{
    (void)r;
    ++*(size_t *)ctx;
    return CKR_OK;
}

/* The enrolled OEM roots: trusted certificate objects that the module made at
 * enrolment (label "guardian-root:<oem ids>", enrol_root.c).  A trusted
 * certificate without that label was not enrolled through the Guardian (or
 * by a version before OEM IDs were bound to roots) and is not a root here.
 * Their certificates and labels stay in `im` for the OEM ID check.  Only on
 * a token that keeps CKA_TRUSTED for its SO: where a plain user can make a
 * trusted certificate (tpm2-pkcs11, NSS softoken), one that the module made
 * cannot be told from one a user planted with the backend's PIN, and the
 * roots are the ledger's instead (ledger_roots; docs/threat-model.md). */
static CK_RV enrolled_roots(struct import *im, X509_STORE **out)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TRUSTED, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE found[MAX_ROOTS];
    CK_ULONG n = 0;
    X509_STORE *store = X509_STORE_new();
    int added = 0, unbound = 0;
    CK_RV rv = store ? CKR_OK : CKR_HOST_MEMORY;
    char why[200];

    if (rv != CKR_OK)
        goto out;
    /* The ledger's roots where the token's trusted certificates prove no
     * enrolment, and wherever the Guardian SO enrols as the backend's user
     * (no backend_so_pin_file: enrol_root.c records there, whatever the token;
     * opencryptoki lets nobody make a trusted certificate). */
    if (guardian_so_as_backend_user() || !guardian_trusted_so_only(im->be, im->session, why, sizeof(why))) {
        if (guardian_so_as_backend_user())
            snprintf(why, sizeof(why), "the Guardian SO enrols as the backend's user (no backend_so_pin_file)");
        rv = ledger_roots(im, store, why);
        if (rv != CKR_OK)
            goto out;
        goto done;
    }
    rv = find(im, t, 2, found, MAX_ROOTS, &n);
    if (rv != CKR_OK)
        goto out;
    roots_free(im);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_BYTE *der = NULL, *label = NULL;
        CK_ULONG len = 0, label_len = 0;
        const unsigned char *p;
        X509 *x;
        if (get_attr(im, found[i], CKA_LABEL, &label, &label_len) != CKR_OK ||
            label_len <= strlen(GUARDIAN_ROOT_PREFIX) ||
            memcmp(label, GUARDIAN_ROOT_PREFIX, strlen(GUARDIAN_ROOT_PREFIX)) != 0) {
            OPENSSL_free(label);
            unbound++;
            continue;
        }
        if (get_attr(im, found[i], CKA_VALUE, &der, &len) != CKR_OK) {
            OPENSSL_free(label);
            continue;
        }
        p = der;
        x = d2i_X509(NULL, &p, (long)len);
        OPENSSL_free(der);
        if (x != NULL && X509_STORE_add_cert(store, x) == 1) {
            im->roots[im->n_roots] = x;
            im->root_labels[im->n_roots] = (char *)label;
            im->root_label_lens[im->n_roots++] = label_len;
            added++;
        } else {
            X509_free(x);
            OPENSSL_free(label);
        }
    }
    if (added == 0) {
        size_t in_ledger = 0;
        /* Roots the Guardian SO enrolled in the ledger in service mode (on
         * opencryptoki the only enrolment there is: nobody makes a trusted
         * certificate) count only there: say so rather than "none". */
        if (guardian_store_roots_each(im->st, count_root_row, &in_ledger) == CKR_OK && in_ledger > 0) {
            guardian_error("unwrap", "refused: no OEM root is enrolled in this token, and the ledger's %zu, "
                                     "enrolled by the Guardian's Security Officer, do not count here: that "
                                     "enrolment holds only in service mode (backend_pin_file, without backend_so_pin_file; docs/service-mode.md, "
                                     "docs/threat-model.md section 2)",
                           in_ledger);
            rv = CKR_GUARDIAN_OEM_NOT_ENROLLED;
            goto out;
        }
        guardian_error("unwrap", "no OEM root is enrolled in this Guardian (guardianctl enroll-oem --oem-id)%s",
                       unbound ? "; trusted certificates without OEM IDs (enrolled by an older version) do not "
                                 "count: remove and enrol them again"
                               : "");
        rv = CKR_GUARDIAN_UNTRUSTED_SIGNER;
        goto out;
    }
done:
    *out = store;
    store = NULL;
    rv = CKR_OK;
out:
    X509_STORE_free(store);
    return rv;
}

static void roots_free(struct import *im)
{
    for (size_t i = 0; i < im->n_roots; i++) {
        X509_free(im->roots[i]);
        OPENSSL_free(im->root_labels[i]);
    }
    im->n_roots = 0;
}

/* The package's OEM ID must be one its signer's root was enrolled for, so
 * that one OEM's root cannot sign for another OEM's products.  The chain is
 * built again from the package's certificates to the enrolled roots (the
 * signature and chain were verified already). */
static CK_RV root_allows_oem(struct import *im, const CK_BYTE *data, CK_ULONG len)
{
    const unsigned char *p = data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    STACK_OF(X509) *certs = cms ? CMS_get1_certs(cms) : NULL;
    STACK_OF(CMS_SignerInfo) *sis = cms ? CMS_get0_SignerInfos(cms) : NULL;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *signer = NULL, *root;
    CK_RV rv = CKR_GUARDIAN_UNTRUSTED_SIGNER;

    if (store == NULL || ctx == NULL || sis == NULL || sk_CMS_SignerInfo_num(sis) != 1)
        goto out;
    for (size_t i = 0; i < im->n_roots; i++)
        X509_STORE_add_cert(store, im->roots[i]);
    for (int i = 0; certs != NULL && i < sk_X509_num(certs) && signer == NULL; i++)
        if (CMS_SignerInfo_cert_cmp(sk_CMS_SignerInfo_value(sis, 0), sk_X509_value(certs, i)) == 0)
            signer = sk_X509_value(certs, i);
    if (signer == NULL || X509_STORE_CTX_init(ctx, store, signer, certs) != 1 || X509_verify_cert(ctx) != 1)
        goto out;
    root = sk_X509_value(X509_STORE_CTX_get0_chain(ctx), sk_X509_num(X509_STORE_CTX_get0_chain(ctx)) - 1);
    for (size_t i = 0; i < im->n_roots; i++) {
        if (X509_cmp(root, im->roots[i]) != 0)
            continue;
        if (guardian_root_allows(im->root_labels[i], im->root_label_lens[i], im->pkg.oem_id)) {
            rv = CKR_OK;
            goto out;
        }
        guardian_error("unwrap", "refused: package %s/%s r%u is signed under an OEM root that is not enrolled for "
                                 "OEM ID '%s' (it is enrolled for %.*s)",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, im->pkg.oem_id,
                       (int)(im->root_label_lens[i] - strlen(GUARDIAN_ROOT_PREFIX)),
                       im->root_labels[i] + strlen(GUARDIAN_ROOT_PREFIX));
        rv = CKR_GUARDIAN_OEM_NOT_ENROLLED;
        goto out;
    }
out:
    if (rv == CKR_GUARDIAN_UNTRUSTED_SIGNER)
        guardian_error("unwrap", "refused: the package signer's root could not be found among the enrolled roots");
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);
    return rv;
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
        /* The IMPORT record binds SHA-256 of this file: it must be the file
         * the OEM signed, in the one encoding (package_container.h). */
        const char *why = guardian_container_profile(cms, data, len, roots);
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

/* The package's ephemeral public key goes to the backend's ECDH as it is: it
 * must be an uncompressed point on the Guardian key's curve (the key's
 * CKA_EC_PARAMS, a named curve), not the point at infinity, and in the
 * prime-order subgroup, so that the backend never multiplies the Guardian's
 * key by a point of another curve or of small order (invalid-curve and
 * small-subgroup attacks on the key).  The OEM's signature does not make the
 * point safe: whoever holds an OEM signing key could otherwise probe the key. */
/* The ephemeral point this Guardian's ECDH uses: the package's, or in a group
 * package its member entry's. */
static const ASN1_OCTET_STRING *ephemeral_point(const struct import *im)
{
    if (im->member >= 0)
        return sk_GUARDIAN_GROUP_MEMBER_value(im->pkg.asn1->group, im->member)->ephemeral_key;
    return im->pkg.asn1->transport->ephemeral_key;
}

static CK_RV check_ephemeral_point(struct import *im)
{
    const ASN1_OCTET_STRING *eph = ephemeral_point(im);
    const unsigned char *e = ASN1_STRING_get0_data(eph), *p;
    size_t e_len = (size_t)ASN1_STRING_length(eph), field;
    CK_BYTE *params = NULL;
    CK_ULONG params_len = 0;
    ASN1_OBJECT *curve = NULL;
    EC_GROUP *group = NULL;
    EC_POINT *point = NULL, *times_order = NULL;
    BN_CTX *bn = BN_CTX_new();
    const char *why = NULL;
    CK_RV rv = bn ? get_attr(im, im->guardian_key, CKA_EC_PARAMS, &params, &params_len) : CKR_HOST_MEMORY;

    if (rv != CKR_OK) {
        guardian_error("unwrap", "cannot read the Guardian key's curve (CKA_EC_PARAMS): %s", ckr(rv));
        goto out;
    }
    p = params;
    curve = d2i_ASN1_OBJECT(NULL, &p, (long)params_len);
    if (curve == NULL || p != params + params_len ||
        (group = EC_GROUP_new_by_curve_name(OBJ_obj2nid(curve))) == NULL) {
        guardian_error("unwrap", "the Guardian key's CKA_EC_PARAMS is not a named curve this module knows");
        rv = CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
        goto out;
    }
    point = EC_POINT_new(group);
    times_order = EC_POINT_new(group);
    if (point == NULL || times_order == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    field = ((size_t)EC_GROUP_get_degree(group) + 7) / 8;
    if (e_len != 1 + 2 * field || e[0] != POINT_CONVERSION_UNCOMPRESSED)
        why = "not an uncompressed point of the Guardian's curve";
    else if (EC_POINT_oct2point(group, point, e, e_len, bn) != 1 || EC_POINT_is_on_curve(group, point, bn) != 1)
        why = "not on the Guardian's curve";
    else if (EC_POINT_is_at_infinity(group, point))
        why = "the point at infinity";
    else if (EC_POINT_mul(group, times_order, NULL, point, EC_GROUP_get0_order(group), bn) != 1 ||
             !EC_POINT_is_at_infinity(group, times_order))
        why = "not in the curve's prime-order subgroup";
    if (why != NULL) {
        guardian_error("unwrap", "refused: package %s/%s r%u: its ephemeral key is %s (%s)", im->pkg.oem_id,
                       im->pkg.product_id, im->pkg.release_version, why, OBJ_nid2sn(OBJ_obj2nid(curve)));
        rv = CKR_WRAPPED_KEY_INVALID;
        goto out;
    }
    rv = CKR_OK;
out:
    ERR_clear_error();
    EC_POINT_free(point);
    EC_POINT_free(times_order);
    EC_GROUP_free(group);
    ASN1_OBJECT_free(curve);
    BN_CTX_free(bn);
    OPENSSL_free(params);
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
    /* A backend may give a destroyed object's number to this new one: let
     * the policy classify it afresh (its label makes it the Guardian's). */
    guardian_policy_forget(h);
    return CKR_OK;
}

/* An unwrapped secret as the template asked: CKA_SENSITIVE true and
 * CKA_EXTRACTABLE false, read back from the backend.  opencryptoki 3.8
 * ignores both in C_UnwrapKey's template (measured: the CA key, the items
 * and the KEK come out not sensitive and extractable, so whoever holds the
 * backend's PIN could read them straight off the token); there the module
 * sets them at once (both changes are the one-way ones PKCS#11 allows even
 * on a key that is not modifiable, and opencryptoki makes them), and a
 * backend that will not is refused: CKR_GUARDIAN_KEY_NOT_SEALED, the key
 * destroyed with everything else of the import. */
static CK_RV sealed(struct import *im, CK_OBJECT_HANDLE h, const char *what)
{
    CK_BBOOL sens = CK_FALSE, extr = CK_TRUE, yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sens, sizeof(sens)}, {CKA_EXTRACTABLE, &extr, sizeof(extr)}};
    CK_ATTRIBUTE set[] = {{CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)}};
    CK_RV rv = im->be->C_GetAttributeValue(im->session, h, a, 2);

    if (rv == CKR_OK && sens == CK_TRUE && extr == CK_FALSE)
        return CKR_OK;
    rv = im->be->C_SetAttributeValue(im->session, h, set, 2);
    sens = CK_FALSE, extr = CK_TRUE;
    if (rv == CKR_OK)
        rv = im->be->C_GetAttributeValue(im->session, h, a, 2);
    if (rv == CKR_OK && sens == CK_TRUE && extr == CK_FALSE) {
        im->unwrap_unsealed = true;
        guardian_info("unwrap", "the backend did not keep CKA_SENSITIVE/CKA_EXTRACTABLE of the unwrap template for "
                                "%s: set after the unwrap (sensitive, not extractable)", what);
        return CKR_OK;
    }
    guardian_error("unwrap", "refused: the backend unwrapped %s readable (not sensitive or extractable, despite the "
                             "template) and would not make it sensitive and not extractable (%s): nothing is kept",
                   what, rv == CKR_OK ? "it answered OK but did not" : ckr(rv));
    return CKR_GUARDIAN_KEY_NOT_SEALED;
}

/* Whether the import's slot lists EC key generation (for the message of an
 * EC key that does not unwrap). */
static bool slot_has_ec(struct import *im)
{
    CK_SESSION_INFO si;
    CK_MECHANISM_INFO mi;
    return im->be->C_GetSessionInfo(im->session, &si) != CKR_OK ||
           im->be->C_GetMechanismInfo(si.slotID, CKM_EC_KEY_PAIR_GEN, &mi) == CKR_OK;
}

/* C_UnwrapKey, then sealed().  Where the backend dropped CKA_SENSITIVE /
 * CKA_EXTRACTABLE and then refuses to set them because the key is not
 * modifiable (opencryptoki 3.8 honours CKA_MODIFIABLE false on the unwrap,
 * and checks it before any C_SetAttributeValue), the key is destroyed and
 * unwrapped again without CKA_MODIFIABLE false, so that the two one-way
 * changes can be made; it then stays modifiable on the backend (the
 * module's policy refuses every change of it in any case: policy.c).  The
 * key is tracked (destroyed if the import fails) unless `kek`. */
/* One C_UnwrapKey with template t, the result tracked (unless it is the KEK,
 * which the caller destroys) and forgotten by the policy cache, then made
 * sensitive and not extractable where the backend left it otherwise
 * (sealed: CKR_GUARDIAN_KEY_NOT_SEALED where it cannot be). */
static CK_RV unwrap_and_seal(struct import *im, CK_MECHANISM *m, CK_OBJECT_HANDLE with, CK_BYTE_PTR wrapped,
                             CK_ULONG wrapped_len, const CK_ATTRIBUTE *t, CK_ULONG n, bool kek, const char *what,
                             CK_OBJECT_HANDLE *out)
{
    CK_RV rv = im->be->C_UnwrapKey(im->session, m, with, wrapped, wrapped_len, (CK_ATTRIBUTE_PTR)t, n, out);

    if (rv != CKR_OK)
        return rv;
    if (!kek && (rv = track(im, *out)) != CKR_OK)
        return rv;
    guardian_policy_forget(*out);
    return sealed(im, *out, what);
}

static CK_RV unwrap_sealed(struct import *im, CK_MECHANISM *m, CK_OBJECT_HANDLE with, CK_BYTE_PTR wrapped,
                           CK_ULONG wrapped_len, const CK_ATTRIBUTE *t, CK_ULONG n, bool kek, const char *what,
                           CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE again[16];
    CK_ULONG k = 0;
    CK_RV rv;

    if (n > 16)
        return CKR_GENERAL_ERROR;
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type != CKA_MODIFIABLE)
            again[k++] = t[i];
    /* Once this import has seen the backend drop them, a token key is
     * unwrapped as a session key and copied into the token sealed
     * (C_CopyObject with CKA_SENSITIVE true, CKA_EXTRACTABLE false,
     * CKA_MODIFIABLE false): the readable form never reaches the token's
     * store, and the token key is never modified afterwards (opencryptoki
     * 3.8 crashed in C_Sign from two threads with a key that had been
     * modified: docs/backends/opencryptoki.md).  Where the copy does not
     * come out sealed, the second way below. */
    if (im->unwrap_unsealed && !kek) {
        CK_ATTRIBUTE st[16];
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ATTRIBUTE ct[] = {{CKA_TOKEN, &yes, sizeof(yes)},
                             {CKA_SENSITIVE, &yes, sizeof(yes)},
                             {CKA_EXTRACTABLE, &no, sizeof(no)},
                             {CKA_MODIFIABLE, &no, sizeof(no)}};
        CK_OBJECT_HANDLE sh = CK_INVALID_HANDLE;
        for (CK_ULONG i = 0; i < k; i++) {
            st[i] = again[i];
            if (st[i].type == CKA_TOKEN)
                st[i].pValue = &no;
        }
        rv = im->be->C_UnwrapKey(im->session, m, with, wrapped, wrapped_len, st, k, &sh);
        if (rv != CKR_OK)
            return rv;
        guardian_policy_forget(sh);
        rv = im->be->C_CopyObject(im->session, sh, ct, sizeof(ct) / sizeof(ct[0]), out);
        if (rv == CKR_OK && (rv = track(im, *out)) == CKR_OK) {
            CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
            CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sens, sizeof(sens)}, {CKA_EXTRACTABLE, &extr, sizeof(extr)}};
            if (im->be->C_GetAttributeValue(im->session, *out, a, 2) == CKR_OK && sens == CK_TRUE &&
                extr == CK_FALSE) {
                im->be->C_DestroyObject(im->session, sh);
                guardian_policy_forget(sh);
                guardian_info("unwrap", "%s was unwrapped as a session key and copied into the token sensitive, not "
                                        "extractable, not modifiable (the backend drops both from an unwrap template)",
                              what);
                return CKR_OK;
            }
            im->be->C_DestroyObject(im->session, *out);
            im->n_created--; /* the last tracked: this one */
        }
        im->be->C_DestroyObject(im->session, sh);
        guardian_policy_forget(sh);
        *out = CK_INVALID_HANDLE;
        if (k < n)
            goto again;
    }
    rv = unwrap_and_seal(im, m, with, wrapped, wrapped_len, t, n, kek, what, out);
    if (rv != CKR_GUARDIAN_KEY_NOT_SEALED || k == n)
        return rv;
    im->be->C_DestroyObject(im->session, *out);
    if (!kek)
        im->n_created--; /* the last tracked: this one */
    *out = CK_INVALID_HANDLE;
again:
    rv = unwrap_and_seal(im, m, with, wrapped, wrapped_len, again, k, kek, what, out);
    if (rv == CKR_OK)
        guardian_info("unwrap", "%s was unwrapped modifiable so that the backend would let it be made sensitive "
                                "and not extractable (the module refuses every change of it)", what);
    return rv;
}

/* The slot's measured facts (selftest.c), and the package's scheme among
 * the schemes that work there: a scheme the token was measured not to run is
 * refused before any key operation (nothing recorded: the OEM makes the
 * package again for what the Guardian certificate lists).  Where nothing
 * could be measured, the backend decides, as before. */
static CK_RV transport_runs_here(struct import *im, CK_SLOT_ID slot)
{
    EVP_PKEY *ca_pub = X509_get0_pubkey(sk_X509_value(im->pkg.asn1->production_ca->chain, 0));
    guardian_transport_facts(im->be, slot, &im->transport);
    if (ca_pub != NULL && EVP_PKEY_get_base_id(ca_pub) == EVP_PKEY_EC &&
        EVP_PKEY_get_octet_string_param(ca_pub, OSSL_PKEY_PARAM_PUB_KEY, im->ca_point, sizeof(im->ca_point),
                                        &im->ca_point_len) != 1)
        im->ca_point_len = 0;
    if ((im->transport.state == GUARDIAN_SELFTEST_PASS || im->transport.state == GUARDIAN_SELFTEST_FAIL) &&
        !(im->transport.schemes & (1u << im->pkg.scheme))) {
        guardian_error("unwrap", "refused: package %s/%s r%u uses the key transport %s, which this Guardian's token "
                                 "was measured not to run (its certificate lists what it imports with: "
                                 "guardian-wrap create --kdf auto chooses one of them)",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version,
                       guardian_transport_name(im->pkg.scheme));
        return CKR_GUARDIAN_TRANSPORT_UNSUPPORTED;
    }
    return CKR_OK;
}

/* id-guardian-kt-rsaoaep-sha256-v1: the KEK, RSA-OAEP encrypted to the
 * Guardian's agreement key with label C, unwrapped inside the token into a
 * session AES key (`kek_t`): it is never in the clear here.  A token that
 * ignored the label would lose the binding to this package and Guardian: the
 * self-test refuses to advertise the unwrap on such a token (selftest.c). */
static CK_RV unwrap_kek_oaep(struct import *im, CK_ATTRIBUTE *kek_t, CK_ULONG n)
{
    const ASN1_OCTET_STRING *enc = im->pkg.asn1->transport->ephemeral_key;
    uint8_t context[32];
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, context, sizeof(context)};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_BYTE *mod = NULL;
    CK_ULONG mod_len = 0;
    CK_RV rv;

    if (!guardian_package_kek_context(&im->pkg, context))
        return CKR_GENERAL_ERROR;
    /* The ciphertext is exactly as long as the modulus (RFC 8017, 7.1.2). */
    if (get_attr(im, im->guardian_key, CKA_MODULUS, &mod, &mod_len) == CKR_OK && mod_len > 0 &&
        mod_len != (CK_ULONG)ASN1_STRING_length(enc)) {
        OPENSSL_free(mod);
        guardian_error("unwrap", "refused: package %s/%s r%u: its RSA-OAEP encrypted key is %d bytes, the "
                                 "Guardian's modulus %lu",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, ASN1_STRING_length(enc),
                       (unsigned long)mod_len);
        return CKR_WRAPPED_KEY_INVALID;
    }
    OPENSSL_free(mod);
    /* The KEK template without CKA_VALUE_LEN (index 2): an unwrap takes the
     * length from the plaintext, which must then be 32 bytes.  And without
     * CKA_MODIFIABLE false: a session key of this import alone, which
     * sealed() may have to make sensitive (opencryptoki). */
    {
        CK_ATTRIBUTE t[9];
        CK_ULONG k = 0, len = 0;
        CK_ATTRIBUTE la = {CKA_VALUE_LEN, &len, sizeof(len)};
        for (CK_ULONG i = 0; i < n && k < 9; i++)
            if (kek_t[i].type != CKA_VALUE_LEN && kek_t[i].type != CKA_MODIFIABLE)
                t[k++] = kek_t[i];
        rv = unwrap_sealed(im, &m, im->guardian_key, (CK_BYTE_PTR)ASN1_STRING_get0_data(enc),
                           (CK_ULONG)ASN1_STRING_length(enc), t, k, true, "the key-encryption key", &im->kek);
        if (rv == CKR_GUARDIAN_KEY_NOT_SEALED)
            return rv; /* import_package destroys im->kek */
        if (rv == CKR_OK) {
            if (im->be->C_GetAttributeValue(im->session, im->kek, &la, 1) != CKR_OK || len != 32) {
                guardian_error("unwrap", "refused: package %s/%s r%u: its key-encryption key is not 32 bytes",
                               im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version);
                return CKR_WRAPPED_KEY_INVALID; /* import_package destroys im->kek */
            }
            return CKR_OK;
        }
    }
    if (rv != CKR_OK) {
        guardian_error("unwrap", "refused: package %s/%s r%u: the RSA-OAEP (SHA-256) key-encryption key does not "
                                 "unwrap in the backend (%s): made for another Guardian or altered",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, ckr(rv));
        im->kek = CK_INVALID_HANDLE;
        return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_FUNCTION_FAILED
                   ? CKR_WRAPPED_KEY_INVALID
                   : rv;
    }
    return CKR_OK;
}

static CK_RV derive_kek_here(struct import *im)
{
    const ASN1_OCTET_STRING *eph = ephemeral_point(im);
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG len32 = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    uint8_t context[32];
    CK_OBJECT_HANDLE z = CK_INVALID_HANDLE;
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    /* Session objects, never extractable, each with one use, and labelled as
     * the Guardian's so that no standard call may use them meanwhile
     * (policy.c) — another thread of the caller could find them. */
    static const char z_label[] = GUARDIAN_IMPORT_PREFIX "shared-secret", kek_label[] = GUARDIAN_IMPORT_PREFIX "kek";
    CK_ATTRIBUTE z_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                          {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, sizeof(no)},
                          {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                          {CKA_DERIVE, &yes, sizeof(yes)}, {CKA_LABEL, (void *)z_label, sizeof(z_label) - 1},
                          {CKA_MODIFIABLE, &no, sizeof(no)}};
    CK_ATTRIBUTE kek_t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                            {CKA_UNWRAP, &yes, sizeof(yes)}, {CKA_LABEL, (void *)kek_label, sizeof(kek_label) - 1},
                            {CKA_MODIFIABLE, &no, sizeof(no)}};
    CK_RV rv;

    if (im->pkg.scheme == GUARDIAN_KT_RSAOAEP_SHA256)
        return unwrap_kek_oaep(im, kek_t, 9);
    if ((rv = check_ephemeral_point(im)) != CKR_OK)
        return rv;
    if (!(im->member >= 0 ? guardian_group_kek_context(&im->pkg, im->member, context)
                          : guardian_package_kek_context(&im->pkg, context)))
        return CKR_GENERAL_ERROR;
    memset(&ecdh, 0, sizeof(ecdh));
    ecdh.pPublicData = (CK_BYTE_PTR)ASN1_STRING_get0_data(eph);
    ecdh.ulPublicDataLen = (CK_ULONG)ASN1_STRING_length(eph);

    if (im->pkg.scheme == GUARDIAN_KT_ECDH_SHA256KDF) {
        ecdh.kdf = CKD_SHA256_KDF;
        ecdh.pSharedData = context;
        ecdh.ulSharedDataLen = sizeof(context);
        rv = im->be->C_DeriveKey(im->session, &m, im->guardian_key, kek_t, 9, &im->kek);
        if (rv != CKR_OK)
            guardian_error("unwrap", "ECDH with CKD_SHA256_KDF failed in the backend: %s (a backend without "
                                     "it needs packages made with --kdf aes-cbc)", ckr(rv));
        return rv;
    }
    ecdh.kdf = CKD_NULL;
    rv = im->be->C_DeriveKey(im->session, &m, im->guardian_key, z_t, 9, &z);
    if (rv != CKR_OK) {
        guardian_error("unwrap", "ECDH in the backend failed: %s", ckr(rv));
        return rv;
    }
    guardian_policy_forget(z);
    {
        CK_AES_CBC_ENCRYPT_DATA_PARAMS cbc;
        CK_MECHANISM m2 = {CKM_AES_CBC_ENCRYPT_DATA, &cbc, sizeof(cbc)};
        memset(&cbc, 0, sizeof(cbc));
        cbc.pData = context;
        cbc.length = sizeof(context);
        rv = im->be->C_DeriveKey(im->session, &m2, z, kek_t, 9, &im->kek);
        if (rv != CKR_OK)
            guardian_error("unwrap", "AES_CBC_ENCRYPT_DATA in the backend failed: %s", ckr(rv));
    }
    im->be->C_DestroyObject(im->session, z);
    return rv;
}

/* The package's KEK.  A one-Guardian package: the KEK derived here.  A group
 * package: the KEK derived here for this member unwraps (RFC 5649, the
 * slot's number) the member's copy of the package KEK, which the items are
 * wrapped under; the member KEK is destroyed at once.  Both are session
 * objects, sensitive and never extractable, labelled as the Guardian's. */
static CK_RV derive_kek(struct import *im)
{
    const ASN1_OCTET_STRING *w;
    CK_OBJECT_HANDLE member_kek, pkg_kek = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    static const char kek_label[] = GUARDIAN_IMPORT_PREFIX "kek";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                        {CKA_TOKEN, &no, sizeof(no)},         {CKA_SENSITIVE, &yes, sizeof(yes)},
                        {CKA_EXTRACTABLE, &no, sizeof(no)},   {CKA_UNWRAP, &yes, sizeof(yes)},
                        {CKA_LABEL, (void *)kek_label, sizeof(kek_label) - 1},
                        {CKA_MODIFIABLE, &no, sizeof(no)}};
    CK_MECHANISM kwp = {im->transport.kwp != 0 ? im->transport.kwp : CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_RV rv = derive_kek_here(im);

    if (rv != CKR_OK || im->member < 0)
        return rv;
    member_kek = im->kek;
    guardian_policy_forget(member_kek);
    w = sk_GUARDIAN_GROUP_MEMBER_value(im->pkg.asn1->group, im->member)->wrapped_kek;
    rv = im->be->C_UnwrapKey(im->session, &kwp, member_kek, (CK_BYTE_PTR)ASN1_STRING_get0_data(w),
                             (CK_ULONG)ASN1_STRING_length(w), t, sizeof(t) / sizeof(t[0]), &pkg_kek);
    im->be->C_DestroyObject(im->session, member_kek);
    im->kek = CK_INVALID_HANDLE;
    if (rv != CKR_OK) {
        guardian_error("unwrap", "refused: package %s/%s r%u: this member's copy of the package KEK does not "
                                 "unwrap (%s): made for another Guardian or altered",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, ckr(rv));
        return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_FUNCTION_FAILED ||
                       rv == CKR_GENERAL_ERROR
                   ? CKR_WRAPPED_KEY_INVALID
                   : rv;
    }
    im->kek = pkg_kek;
    return CKR_OK;
}

/* 1 when the public key object `pub` holds the public key `want`. */
static int same_public_key(struct import *im, CK_OBJECT_HANDLE pub, EVP_PKEY *want)
{
    CK_BYTE *v = NULL;
    CK_ULONG len = 0;
    int ok = 0;

    if (EVP_PKEY_get_base_id(want) == EVP_PKEY_EC) {
        unsigned char point[160];
        size_t pl = 0;
        /* CKA_EC_POINT: a DER OCTET STRING around the X9.62 point. */
        if (EVP_PKEY_get_octet_string_param(want, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof(point), &pl) == 1 &&
            get_attr(im, pub, CKA_EC_POINT, &v, &len) == CKR_OK && pl < 128 && len == pl + 2 && v[0] == 0x04 &&
            v[1] == pl)
            ok = memcmp(v + 2, point, pl) == 0;
    } else if (EVP_PKEY_get_base_id(want) == EVP_PKEY_RSA) {
        BIGNUM *n = NULL, *have = NULL;
        if (EVP_PKEY_get_bn_param(want, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
            get_attr(im, pub, CKA_MODULUS, &v, &len) == CKR_OK && (have = BN_bin2bn(v, (int)len, NULL)) != NULL)
            ok = BN_cmp(n, have) == 0;
        BN_free(n);
        BN_free(have);
    }
    ERR_clear_error();
    OPENSSL_free(v);
    return ok;
}

/* Does the token hold a certificate with exactly this DER (CKA_VALUE)? */
static bool token_has_certificate(struct import *im, const unsigned char *der, CK_ULONG len)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_VALUE, (void *)der, len}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;

    if (im->be->C_FindObjectsInit(im->session, t, sizeof(t) / sizeof(t[0])) != CKR_OK)
        return false;
    if (im->be->C_FindObjects(im->session, &h, 1, &n) != CKR_OK)
        n = 0;
    im->be->C_FindObjectsFinal(im->session);
    return n == 1;
}

/* Version 2: the production CA key is the Guardian's own, made by
 * CKG_GUARDIAN_REQ_CA_KEY for this OEM and product: the key pair with CKA_ID
 * the package ID and label "guardian:OEM/PRODUCT:ca-key" whose public key is
 * the production CA certificate's.  Found before anything is created; it is
 * not the import's to destroy if the import fails. */
static CK_RV find_guardian_ca_key(struct import *im)
{
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, pub = CKO_PUBLIC_KEY;
    char label[2 * GUARDIAN_PKG_NAME_MAX + 32], hex[2 * GUARDIAN_PKG_ID_LEN + 1];
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)},
                        {CKA_ID, im->pkg.package_id, GUARDIAN_PKG_ID_LEN},
                        {CKA_LABEL, label, 0}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0, n_any = 0;
    EVP_PKEY *ca_pub = X509_get0_pubkey(sk_X509_value(im->pkg.asn1->production_ca->chain, 0));
    CK_RV rv;

    for (int i = 0; i < GUARDIAN_PKG_ID_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", im->pkg.package_id[i]);
    snprintf(label, sizeof(label), GUARDIAN_CA_KEY_LABEL_FMT, im->pkg.oem_id, im->pkg.product_id);
    t[2].ulValueLen = (CK_ULONG)strlen(label);
    if ((rv = find(im, t, 3, found, 2, &n)) != CKR_OK)
        return rv;
    if (n != 1) {
        /* Made for another product?  Say so: the same key ID, another label. */
        if (n == 0 && find(im, t, 2, found, 2, &n_any) == CKR_OK && n_any > 0)
            guardian_error("unwrap", "refused: package %s/%s r%u: the Guardian's CA key %s was made for another "
                                     "OEM or product, not for %s/%s",
                           im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, hex, im->pkg.oem_id,
                           im->pkg.product_id);
        else
            guardian_error("unwrap", "refused: package %s/%s r%u: the token holds %s Guardian-made CA key %s for "
                                     "this product (its CA key stays in the Guardian: 'guardianctl ca-request' "
                                     "makes it, and the package must carry that key's certificate)",
                           im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, n == 0 ? "no" : "more than one",
                           hex);
        return CKR_GUARDIAN_CA_KEY_NOT_FOUND;
    }
    t[0].pValue = &pub;
    if ((rv = find(im, t, 3, found, 2, &n)) != CKR_OK)
        return rv;
    if (n != 1 || ca_pub == NULL || !same_public_key(im, found[0], ca_pub)) {
        guardian_error("unwrap", "refused: package %s/%s r%u: its production CA certificate is not for the "
                                 "Guardian-made CA key %s (another key's certificate)",
                       im->pkg.oem_id, im->pkg.product_id, im->pkg.release_version, hex);
        return CKR_GUARDIAN_CA_KEY_NOT_FOUND;
    }
    return CKR_OK;
}

static CK_RV unwrap_one(struct import *im, const GUARDIAN_WRAPPED_KEY *wk, const char *role, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM kwp = {im->transport.kwp != 0 ? im->transport.kwp : CKM_AES_KEY_WRAP_PAD, NULL, 0};
    const CK_BYTE *wrapped = ASN1_STRING_get0_data(wk->wrapped);
    CK_ULONG wrapped_len = (CK_ULONG)ASN1_STRING_length(wk->wrapped);
    CK_KEY_TYPE kt = (CK_KEY_TYPE)ASN1_INTEGER_get(wk->key_type);
    CK_OBJECT_CLASS cls = (kt == CKK_EC || kt == CKK_RSA) ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = cls == CKO_PRIVATE_KEY ? im->usage.sign : CK_FALSE;
    CK_BBOOL decrypt = im->usage.decrypt, derive = im->usage.derive, unwrap = im->usage.unwrap;
    char label[sizeof(im->prefix) + GUARDIAN_PKG_NAME_MAX + 2], what[GUARDIAN_PKG_NAME_MAX + 40];
    /* CKA_ID: the package ID for the production CA key (its certificate's);
     * for every other key the package ID followed by the key's own label, so
     * that no other key shares the CA certificate's CKA_ID (NSS and Java
     * pair a certificate with the private key of its CKA_ID). */
    int ca = strcmp(role, "production-ca") == 0;
    CK_BYTE id[GUARDIAN_PKG_ID_LEN + GUARDIAN_PKG_NAME_MAX];
    CK_ULONG id_len = GUARDIAN_PKG_ID_LEN;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},          {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &yes, sizeof(yes)},          {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},      {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ID, id, 0},
        {CKA_LABEL, label, 0},                   {CKA_SIGN, &sign, sizeof(sign)},
        {CKA_DECRYPT, &decrypt, sizeof(decrypt)}, {CKA_DERIVE, &derive, sizeof(derive)},
        {CKA_UNWRAP, &unwrap, sizeof(unwrap)},   {CKA_MODIFIABLE, &no, sizeof(no)},
        {GUARDIAN_CKA_NSS_DB, NULL, 0},
    };
    /* CKA_COPYABLE is read-only in SoftHSM's C_UnwrapKey, and a generic
     * secret cannot encrypt or wrap there; copies and every standard use are
     * refused by the policy (policy.c) in any case. */
    CK_ULONG n_attrs = sizeof(t) / sizeof(t[0]) - 1;
    CK_RV rv;

    /* The production CA key signs, nothing else; extra keys keep what the
     * package's key type allows, narrowed by the caller. */
    if (ca)
        decrypt = derive = unwrap = CK_FALSE;
    memcpy(id, im->pkg.package_id, GUARDIAN_PKG_ID_LEN);
    if (!ca) {
        int n = ASN1_STRING_length(wk->label);
        if (n < 1 || n > GUARDIAN_PKG_NAME_MAX)
            return CKR_GENERAL_ERROR; /* package.c checked the label already */
        memcpy(id + GUARDIAN_PKG_ID_LEN, ASN1_STRING_get0_data(wk->label), (size_t)n);
        id_len += (CK_ULONG)n;
    }
    t[6].ulValueLen = id_len;
    snprintf(label, sizeof(label), "%s:%.*s", im->prefix, ASN1_STRING_length(wk->label),
             ASN1_STRING_get0_data(wk->label));
    t[7].ulValueLen = strlen(label);
    /* NSS unwraps an EC private key only with CKA_NSS_DB, its public value
     * (measured: selftest.c): the certificate's point for the production CA
     * key; for an extra key, whose public key the package does not carry,
     * its CKA_ID (NSS's SQL store keeps the value and looks nothing up by it). */
    if (im->transport.nss_db && kt == CKK_EC) {
        t[n_attrs].pValue = ca && im->ca_point_len > 0 ? (void *)im->ca_point : (void *)id;
        t[n_attrs].ulValueLen = ca && im->ca_point_len > 0 ? (CK_ULONG)im->ca_point_len : id_len;
        n_attrs++;
    }
    /* RSA-OAEP transport: IV || AES-256-CBC-PAD ciphertext (package.h). */
    if (im->pkg.scheme == GUARDIAN_KT_RSAOAEP_SHA256) {
        if (wrapped_len < 2 * GUARDIAN_KT_RSAOAEP_IV_LEN || wrapped_len % 16 != 0) {
            guardian_error("unwrap", "refused: %s key '%.*s': not an IV and AES-CBC blocks", role,
                           ASN1_STRING_length(wk->label), ASN1_STRING_get0_data(wk->label));
            return CKR_WRAPPED_KEY_INVALID;
        }
        kwp = (CK_MECHANISM){CKM_AES_CBC_PAD, (CK_BYTE_PTR)wrapped, GUARDIAN_KT_RSAOAEP_IV_LEN};
        wrapped += GUARDIAN_KT_RSAOAEP_IV_LEN;
        wrapped_len -= GUARDIAN_KT_RSAOAEP_IV_LEN;
    }
    snprintf(what, sizeof(what), "%s key '%.*s'", role, ASN1_STRING_length(wk->label),
             ASN1_STRING_get0_data(wk->label));
    rv = unwrap_sealed(im, &kwp, im->kek, (CK_BYTE_PTR)wrapped, wrapped_len, t, n_attrs, false, what, out);
    if (rv == CKR_GUARDIAN_KEY_NOT_SEALED)
        return rv;
    if (rv != CKR_OK && kt == CKK_EC && !slot_has_ec(im)) {
        /* Not the ciphertext: an EC key cannot enter a token without EC
         * (opencryptoki 3.8 answers CKR_TEMPLATE_INCOMPLETE). */
        guardian_error("unwrap", "refused: %s key '%.*s' is an EC key, and this token has no EC (its slot lists no "
                                 "CKM_EC_KEY_PAIR_GEN): the OEM wraps an RSA key for this Guardian, or uses the CA "
                                 "request (guardianctl ca-request) (%s)",
                       role, ASN1_STRING_length(wk->label), ASN1_STRING_get0_data(wk->label), ckr(rv));
        return rv;
    }
    if (rv != CKR_OK) {
        guardian_error("unwrap", "refused: %s key '%.*s' does not unwrap (%s): wrong Guardian key or altered "
                                 "ciphertext", role, ASN1_STRING_length(wk->label), ASN1_STRING_get0_data(wk->label),
                       ckr(rv));
        return rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_ENCRYPTED_DATA_INVALID ? CKR_WRAPPED_KEY_INVALID : rv;
    }
    return CKR_OK;
}

static CK_RV create_certificate(struct import *im, X509 *x, int index)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG category = 2; /* authority */
    unsigned char *der = NULL, *subj = NULL, *iss = NULL, *serial = NULL;
    int der_len = i2d_X509(x, &der), subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    int iss_len = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    int ser_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &serial);
    char label[sizeof(im->prefix) + 32];
    /* The production CA certificate (index 0) has its key's CKA_ID, the
     * package ID; every other certificate the SHA-1 of its public key (20
     * bytes: never a package ID, 16). */
    unsigned char key_sha1[SHA_DIGEST_LENGTH];
    unsigned int key_sha1_len = 0;
    int keyed = index > 0 && X509_pubkey_digest(x, EVP_sha1(), key_sha1, &key_sha1_len) == 1 &&
                key_sha1_len == SHA_DIGEST_LENGTH;
    CK_OBJECT_HANDLE h;
    CK_RV rv = CKR_HOST_MEMORY;

    if (der_len > 0 && subj_len > 0 && iss_len > 0 && ser_len > 0 && (index == 0 || keyed)) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},      {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
            {CKA_TOKEN, &yes, sizeof(yes)},      {CKA_MODIFIABLE, &no, sizeof(no)},
            {CKA_ID, index == 0 ? im->pkg.package_id : key_sha1,
             index == 0 ? GUARDIAN_PKG_ID_LEN : SHA_DIGEST_LENGTH},
            {CKA_LABEL, label, 0},               {CKA_VALUE, der, (CK_ULONG)der_len},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len}, {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len}, {CKA_CERTIFICATE_CATEGORY, &category, sizeof(category)},
        };
        snprintf(label, sizeof(label), "%s:%s%d", im->prefix, index == 0 ? "production-ca-cert" : "chain-", index);
        t[5].ulValueLen = strlen(label);
        rv = im->be->C_CreateObject(im->session, t, sizeof(t) / sizeof(t[0]), &h);
        /* A 2.20 token (opencryptoki 3.8) knows no CKA_CERTIFICATE_CATEGORY
         * (the last): the certificate without it. */
        if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
            rv = im->be->C_CreateObject(im->session, t, sizeof(t) / sizeof(t[0]) - 1, &h);
        if (rv == CKR_OK)
            rv = track(im, h);
        else if (index > 0 && token_has_certificate(im, der, (CK_ULONG)der_len)) {
            /* NSS softoken keeps one copy of a certificate (CKR_GENERAL_ERROR
             * for the same one again): the enrolled root's listing
             * certificate, or an earlier release's chain.  A chain
             * certificate in the token is the package's record only (the
             * chain was verified from the package's bytes against the
             * enrolled roots), so the one there serves; it is not this
             * import's, so a failed import leaves it. */
            guardian_info("unwrap", "certificate %d of the chain is in the token already (%s for another copy): "
                                    "not stored twice",
                          index, ckr(rv));
            rv = CKR_OK;
        } else
            guardian_error("unwrap", "cannot create certificate object %d: %s", index, ckr(rv));
    }
    OPENSSL_free(der);
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(serial);
    return rv;
}

/* An integrity item, under its own name: a private token CKO_DATA where the
 * token keeps one, else (NSS softoken refuses any private or token data
 * object) a private token generic secret, sensitive and not extractable,
 * CKA_ID the package ID followed by the name like a confidential item's: the
 * bytes stay in the token, bound to the package, and serve only the
 * Guardian (policy.c: a confidential item's role); they are the OEM's signed
 * bytes, so the package file is their readable copy (docs/unwrap-mechanism.md).
 * Which one is found by trying, per import, never by the backend's name. */
static CK_RV create_data(struct import *im, const char *label, const ASN1_UTF8STRING *name, const void *value,
                         CK_ULONG len)
{
    CK_OBJECT_CLASS cls = CKO_DATA, secret = CKO_SECRET_KEY;
    CK_KEY_TYPE gs = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BYTE id[GUARDIAN_PKG_ID_LEN + GUARDIAN_PKG_NAME_MAX];
    CK_ULONG id_len = GUARDIAN_PKG_ID_LEN + (CK_ULONG)ASN1_STRING_length(name);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)}, {CKA_MODIFIABLE, &no, sizeof(no)},
        {CKA_APPLICATION, im->application, strlen(im->application)},
        {CKA_LABEL, (void *)label, strlen(label)}, {CKA_VALUE, (void *)value, len},
    };
    CK_ATTRIBUTE k[] = {
        {CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &gs, sizeof(gs)},
        {CKA_TOKEN, &yes, sizeof(yes)},       {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},   {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_MODIFIABLE, &no, sizeof(no)},    {CKA_ID, id, id_len},
        {CKA_LABEL, (void *)label, strlen(label)}, {CKA_VALUE, (void *)value, len},
        {CKA_SIGN, &no, sizeof(no)},          {CKA_VERIFY, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_DECRYPT, &no, sizeof(no)},       {CKA_WRAP, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},        /* NSS sets these four when not told */
    };
    CK_OBJECT_HANDLE h;
    CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;

    if (id_len > sizeof(id))
        return CKR_GENERAL_ERROR; /* package.c checked the name already */
    memcpy(id, im->pkg.package_id, GUARDIAN_PKG_ID_LEN);
    memcpy(id + GUARDIAN_PKG_ID_LEN, ASN1_STRING_get0_data(name), (size_t)ASN1_STRING_length(name));
    if (!im->data_as_secret) {
        rv = im->be->C_CreateObject(im->session, t, sizeof(t) / sizeof(t[0]), &h);
        /* NSS: CKR_ATTRIBUTE_VALUE_INVALID for a private or token CKO_DATA. */
        if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT) {
            guardian_info("unwrap", "the token keeps no private token data object (%s): integrity items are kept "
                                    "as sensitive generic secrets", ckr(rv));
            im->data_as_secret = true;
        }
    }
    /* A secret key of no bytes is no key: an empty item stays unrepresentable there. */
    if (im->data_as_secret) {
        if (len == 0) {
            guardian_error("unwrap", "cannot keep the empty data item '%s': this token keeps no data object, and "
                                     "a secret key of no bytes is none", label);
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
        rv = im->be->C_CreateObject(im->session, k, sizeof(k) / sizeof(k[0]), &h);
    }
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

    /* Version 2: the Guardian's own key, found already (find_guardian_ca_key). */
    rv = im->pkg.ca_in_guardian ? CKR_OK : unwrap_one(im, a->production_ca->key, "production-ca", &h);
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
            rv = create_data(im, label, d->name, ASN1_STRING_get0_data(d->value),
                             (CK_ULONG)ASN1_STRING_length(d->value));
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

/* The import, once the caller's arguments are checked: the one code path of
 * CKM_GUARDIAN_UNWRAP_PACKAGE and CKG_GUARDIAN_REQ_IMPORT, from the session
 * check to the package object's handle. */
static CK_RV import_package(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                            CK_OBJECT_HANDLE unwrapping_key, const CK_BYTE *wrapped, CK_ULONG wrapped_len,
                            const struct guardian_unwrap_usage *usage, CK_OBJECT_HANDLE *out)
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
    im.st = st;
    im.session = session;
    im.guardian_key = unwrapping_key;
    im.kek = CK_INVALID_HANDLE;
    im.member = -1;

    im.usage = *usage;

    if (content == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
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
    /* The scheme must be the Guardian key's: RSA-OAEP for an RSA key, ECDH
     * for an EC key (or no transport). */
    if (im.pkg.scheme != GUARDIAN_KT_NONE &&
        (im.pkg.scheme == GUARDIAN_KT_RSAOAEP_SHA256) != (im.guardian_key_type == CKK_RSA)) {
        guardian_error("unwrap", "refused: package %s/%s r%u uses a key transport for an %s Guardian key, this "
                                 "Guardian's is %s",
                       im.pkg.oem_id, im.pkg.product_id, im.pkg.release_version,
                       im.pkg.scheme == GUARDIAN_KT_RSAOAEP_SHA256 ? "RSA" : "EC",
                       im.guardian_key_type == CKK_RSA ? "RSA" : "EC");
        rv = CKR_WRAPPED_KEY_INVALID;
        goto out;
    }
    /* A group package names its members (package.c checked that its target
     * is their group ID); a one-Guardian package, its target. */
    if (im.pkg.group_members > 0 ? (im.member = guardian_group_member(&im.pkg, self)) < 0
                                 : memcmp(im.pkg.target_guardian, self, sizeof(self)) != 0) {
        guardian_error("unwrap", "refused: package %s/%s r%u was made for %s", im.pkg.oem_id, im.pkg.product_id,
                       im.pkg.release_version,
                       im.pkg.group_members > 0 ? "a group of Guardians this one is not a member of"
                                                : "another Guardian");
        rv = CKR_GUARDIAN_WRONG_GUARDIAN;
        goto out;
    }
    rv = root_allows_oem(&im, wrapped, wrapped_len);
    if (rv != CKR_OK)
        goto out;
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
    /* A group member: the store records this member's import (the first one
     * the package and its allowance, every other one a JOIN). */
    info.group_member = im.member >= 0 ? self : NULL;
    /* The store must not be behind the token's anchor (a restored backup
     * would accept this package again). */
    rv = guardian_anchor_check(be, session, st);
    if (rv != CKR_OK)
        goto out;
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

    if (im.pkg.ca_in_guardian && (rv = find_guardian_ca_key(&im)) != CKR_OK)
        goto out;
    if (im.pkg.scheme != GUARDIAN_KT_NONE && (rv = transport_runs_here(&im, si.slotID)) != CKR_OK)
        goto out;
    /* No transport, no secret: nothing to derive (a backend without ECDH
     * or an unwrap imports such a package). */
    if (im.pkg.scheme != GUARDIAN_KT_NONE) {
        rv = derive_kek(&im);
        if (rv != CKR_OK)
            goto out;
        guardian_policy_forget(im.kek);
    }
    rv = guardian_store_package_install(st, &info, now, create_objects, &im);
    if (rv != CKR_OK) {
        destroy_all(&im);
        goto out;
    }
    if (guardian_anchor_update(be, session, st) != CKR_OK)
        guardian_error("unwrap", "package %s/%s r%u is imported, but the token's state anchor could not be moved "
                                 "up: a restored backup of the state could import it again",
                       im.pkg.oem_id, im.pkg.product_id, im.pkg.release_version);
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
    roots_free(&im);
    BIO_free(content);
    OPENSSL_free(tmpl_der);
    OPENSSL_free(ca_der);
    return rv;
}

static CK_RV unwrap_package(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                            CK_MECHANISM *mech, CK_OBJECT_HANDLE unwrapping_key, CK_BYTE *wrapped,
                            CK_ULONG wrapped_len, CK_ATTRIBUTE *templ, CK_ULONG count, CK_OBJECT_HANDLE *out)
{
    struct guardian_unwrap_usage usage;
    CK_RV rv;

    if (out == NULL || (wrapped == NULL && wrapped_len != 0))
        return CKR_ARGUMENTS_BAD;
    rv = guardian_unwrap_check_arguments(mech, templ, count, &usage);
    if (rv != CKR_OK)
        return rv;
    return import_package(be, st, session, unwrapping_key, wrapped, wrapped_len, &usage, out);
}

/* CKG_GUARDIAN_REQ_IMPORT: the package in CKA_VALUE, the unwrapping key the
 * Guardian's agreement key, found here rather than named by the caller (a
 * remoting layer carries the request, not the vendor mechanism).  No template
 * narrows the usages: the package's own. */
static CK_RV import_request(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                            const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const struct guardian_unwrap_usage usage = {CK_TRUE, CK_TRUE, CK_TRUE, CK_TRUE};
    const CK_ATTRIBUTE *value;
    CK_OBJECT_HANDLE key;
    CK_RV rv = guardian_request_bytes(rq, CKA_VALUE, true, &value);

    if (rv != CKR_OK)
        return rv;
    rv = guardian_identity_find(be, session, GUARDIAN_IDENTITY_ID, CKO_PRIVATE_KEY, &key);
    if (rv != CKR_OK)
        return rv;
    if (key == CK_INVALID_HANDLE) {
        guardian_error("unwrap", "refused: the token has no Guardian agreement key (CKA_ID \"" GUARDIAN_IDENTITY_ID
                                 "\"); run guardianctl init");
        return CKR_UNWRAPPING_KEY_HANDLE_INVALID;
    }
    return import_package(be, st, session, key, value->pValue, value->ulValueLen, &usage, out);
}

static const CK_ATTRIBUTE_TYPE import_attributes[] = {CKA_VALUE};

const struct guardian_request_type guardian_request_import = {
    .type = CKG_GUARDIAN_REQ_IMPORT,
    .name = "CKG_GUARDIAN_REQ_IMPORT",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = import_attributes,
    .n_attributes = sizeof(import_attributes) / sizeof(import_attributes[0]),
    .run = import_request,
};

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
    .selftest = guardian_selftest_unwrap_package,
    .unwrap = unwrap_package,
};
