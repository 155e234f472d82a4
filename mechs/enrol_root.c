/*
 * enrol_root.c — CKG_GUARDIAN_REQ_ENROL_ROOT: the Security Officer enrols an
 * OEM root CA certificate for the OEM IDs it may sign packages for.
 *
 * The module makes the trusted certificate object itself (CKA_TRUSTED TRUE,
 * CKA_MODIFIABLE FALSE, label "guardian-root:<oem id>,<oem id>..."), and callers
 * cannot make or change one that carries CKA_TRUSTED or a "guardian" label
 * through the module (policy.c), so enrolment does not rest on the backend
 * keeping CKA_TRUSTED for the SO alone (tpm2-pkcs11 and NSS softoken let a
 * plain user set it).  The import (unwrap_package.c) accepts a package only
 * when its signer chains to such a root AND the package's OEM ID is among the
 * root's.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "module.h"
#include "package.h"
#include "registry.h"
#include "request.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define MAX_OEM_IDS 16

int guardian_root_oem_ids_valid(const char *ids, size_t len, char *why, size_t why_len)
{
    size_t start = 0, n_ids = 0;
    if (len == 0) {
        snprintf(why, why_len, "no OEM ID given");
        return 0;
    }
    for (size_t i = 0; i <= len; i++) {
        if (i < len && ids[i] != ',') {
            if (!guardian_id_char((unsigned char)ids[i])) {
                snprintf(why, why_len, "OEM ID character 0x%02x is not one of A-Z a-z 0-9 - . _ :",
                         (unsigned char)ids[i]);
                return 0;
            }
            continue;
        }
        if (i == start || i - start > GUARDIAN_PKG_NAME_MAX) {
            snprintf(why, why_len, "an OEM ID is empty or longer than %d characters", GUARDIAN_PKG_NAME_MAX);
            return 0;
        }
        /* no duplicates: compare with every earlier ID */
        for (size_t j = 0, s = 0; j < start; j++) {
            if (ids[j] != ',')
                continue;
            if (j - s == i - start && memcmp(ids + s, ids + start, i - start) == 0) {
                snprintf(why, why_len, "OEM ID '%.*s' is given twice", (int)(i - start), ids + start);
                return 0;
            }
            s = j + 1;
        }
        if (++n_ids > MAX_OEM_IDS) {
            snprintf(why, why_len, "more than %d OEM IDs", MAX_OEM_IDS);
            return 0;
        }
        start = i + 1;
    }
    return 1;
}

int guardian_root_allows(const char *label, size_t label_len, const char *oem_id)
{
    size_t plen = strlen(GUARDIAN_ROOT_PREFIX), olen = strlen(oem_id);
    const char *p, *end = label + label_len;
    if (label_len < plen || memcmp(label, GUARDIAN_ROOT_PREFIX, plen) != 0)
        return 0;
    for (p = label + plen; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (n == olen && memcmp(p, oem_id, n) == 0)
            return 1;
        p += n + 1;
    }
    return 0;
}

static CK_RV enrol_root(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                        const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const CK_ATTRIBUTE *value = guardian_request_attr(rq, CKA_VALUE);
    const CK_ATTRIBUTE *ids = guardian_request_attr(rq, CKA_GUARDIAN_OEM_IDS);
    const unsigned char *p;
    unsigned char *subj = NULL, *iss = NULL, *serial = NULL, md[32];
    unsigned int md_len = 0;
    char why[160], fpr[65], label[sizeof(GUARDIAN_ROOT_PREFIX) + MAX_OEM_IDS * (GUARDIAN_PKG_NAME_MAX + 1)];
    X509 *x = NULL;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG category = 2, n = 0;
    CK_OBJECT_HANDLE found[2];
    int subj_len, iss_len, ser_len;
    CK_RV rv = CKR_GENERAL_ERROR;
    (void)st;

    if (value == NULL || value->pValue == NULL || value->ulValueLen == 0 || value->ulValueLen > 65536 || ids == NULL ||
        ids->pValue == NULL) {
        guardian_error("enrol", "the request needs CKA_VALUE (the root certificate, DER) and CKA_GUARDIAN_OEM_IDS");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    if (!guardian_root_oem_ids_valid(ids->pValue, ids->ulValueLen, why, sizeof(why))) {
        guardian_error("enrol", "refused: CKA_GUARDIAN_OEM_IDS: %s", why);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    p = value->pValue;
    x = d2i_X509(NULL, &p, (long)value->ulValueLen);
    if (x == NULL || p != (const unsigned char *)value->pValue + value->ulValueLen) {
        guardian_error("enrol", "refused: CKA_VALUE is not one DER X.509 certificate");
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out;
    }
    if (X509_check_ca(x) != 1) {
        guardian_error("enrol", "refused: the certificate is not a CA certificate (basicConstraints CA:TRUE and, "
                                "if present, keyUsage keyCertSign are required of an OEM root)");
        rv = CKR_GUARDIAN_ROOT_NOT_CA;
        goto out;
    }
    if (X509_digest(x, EVP_sha256(), md, &md_len) != 1 || md_len != 32)
        goto out;
    for (int i = 0; i < 32; i++)
        snprintf(fpr + 2 * i, 3, "%02x", md[i]);
    snprintf(label, sizeof(label), "%s%.*s", GUARDIAN_ROOT_PREFIX, (int)ids->ulValueLen, (const char *)ids->pValue);

    /* Enrolled already: the same OEM IDs is a repeat (that object), others a
     * change the SO must make by removing it first. */
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, fpr, 40}};
        rv = guardian_backend_find(be, session, t, 2, found, 2, &n);
        if (rv != CKR_OK)
            goto out;
    }
    if (n > 0) {
        char old[sizeof(label)];
        CK_ATTRIBUTE a = {CKA_LABEL, old, sizeof(old) - 1};
        rv = be->C_GetAttributeValue(session, found[0], &a, 1);
        if (rv == CKR_OK && a.ulValueLen == strlen(label) && memcmp(old, label, a.ulValueLen) == 0) {
            *out = found[0];
            goto out;
        }
        guardian_error("enrol", "refused: this root (sha256 %s) is already enrolled as '%.*s'; remove it first to "
                                "change its OEM IDs",
                       fpr, rv == CKR_OK ? (int)a.ulValueLen : 0, old);
        rv = CKR_GUARDIAN_REQUEST_INVALID;
        goto out;
    }

    subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    iss_len = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    ser_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &serial);
    if (subj_len <= 0 || iss_len <= 0 || ser_len <= 0) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_TRUSTED, &yes, sizeof(yes)},
            {CKA_MODIFIABLE, &no, sizeof(no)},
            {CKA_CERTIFICATE_CATEGORY, &category, sizeof(category)},
            {CKA_ID, fpr, 40},
            {CKA_LABEL, label, (CK_ULONG)strlen(label)},
            {CKA_VALUE, value->pValue, value->ulValueLen},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
            {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len},
        };
        rv = be->C_CreateObject(session, t, sizeof(t) / sizeof(t[0]), out);
    }
    if (rv != CKR_OK) {
        guardian_error("enrol", "the backend refused to create the trusted certificate: %s",
                       guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "vendor CKR");
        goto out;
    }
    guardian_policy_forget(*out);
    guardian_info("enrol", "enrolled OEM root sha256 %s for %s", fpr, label + strlen(GUARDIAN_ROOT_PREFIX));
out:
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(serial);
    X509_free(x);
    return rv;
}

static const CK_ATTRIBUTE_TYPE attributes[] = {CKA_VALUE, CKA_GUARDIAN_OEM_IDS, CKA_TOKEN};

const struct guardian_request_type guardian_request_enrol_root = {
    .type = CKG_GUARDIAN_REQ_ENROL_ROOT,
    .name = "CKG_GUARDIAN_REQ_ENROL_ROOT",
    .session = GUARDIAN_REQUEST_SO,
    .attributes = attributes,
    .n_attributes = sizeof(attributes) / sizeof(attributes[0]),
    .run = enrol_root,
};
