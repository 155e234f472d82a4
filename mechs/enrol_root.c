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
 *
 * The ledger.  Where the token cannot be trusted to hold roots (tpm2-pkcs11,
 * NSS softoken: a plain user with the backend's PIN makes a CKA_TRUSTED
 * certificate too; opencryptoki: nobody can make one), a trusted certificate
 * proves no enrolment, so the enrolment is recorded in the anchored store
 * instead (store/roots.c: a row and an ENROL audit record, the token's anchor
 * moved over it), by the Guardian's own Security Officer in service mode,
 * logged into the backend as its user (no backend_so_pin_file:
 * credentials.c; then on any token, opencryptoki's included, where nobody
 * can make a trusted certificate).  The trusted certificate is still made where the token
 * lets the user make it, for list-oems and remove-oem; it counts for nothing
 * there.  Removing it through the module (C_DestroyObject in the SO's
 * session: guardian_root_destroying) removes the ledger row and records that.
 * docs/threat-model.md section 2.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <time.h>

#include "anchor.h"
#include "module.h"
#include "package.h"
#include "store.h"
#include "registry.h"
#include "request.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define MAX_OEM_IDS 16

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor CKR";
}

/* What to do where the SO's token path fails on a token that does not let
 * its SO make a trusted certificate (tpm2-pkcs11, opencryptoki). */
#define LEDGER_HINT                                                                                              \
    "this token does not keep enrolled roots for its SO: run the Guardian in service mode (backend_pin_file; "   \
    "docs/service-mode.md) without backend_so_pin_file, so that the Guardian's Security Officer enrols the root " \
    "in the anchored store (docs/threat-model.md section 2)"

/* The ledger path (above): the caller is the Guardian SO of service mode,
 * logged into the backend as its user. */
static CK_RV enrol_in_ledger(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                             const CK_ATTRIBUTE *value, const char *ids, const char *fpr)
{
    struct guardian_audit_record rec;
    bool already = false;
    char why[200];
    CK_RV rv;

    /* Where the token keeps CKA_TRUSTED for its SO (SoftHSM), or nobody can
     * make a trusted certificate (opencryptoki: the check reads that as the
     * SO's), the Guardian SO without the backend's SO PIN cannot enrol in
     * the token either: the ledger is the roots' place whenever the SO is the
     * backend's user (the import reads it then: unwrap_package.c). */
    if (guardian_trusted_so_only(be, session, why, sizeof(why)))
        snprintf(why, sizeof(why), "the Guardian SO is the backend's user (no backend_so_pin_file)");
    rv = guardian_anchor_check(be, session, st);
    if (rv != CKR_OK)
        return rv;
    rv = guardian_store_root_enrol(st, value->pValue, value->ulValueLen, ids, (int64_t)time(NULL), &rec, &already);
    if (rv != CKR_OK)
        return rv;
    /* Anchored before it is announced: a record after the anchored head
     * does not count (guardian_store_roots_verified). */
    rv = guardian_anchor_update(be, session, st);
    if (rv != CKR_OK) {
        guardian_error("enrol", "OEM root sha256 %s is in the ledger, but the token's state anchor could not be moved "
                                "over it (%s): it counts once the anchor moves (the next import or enrolment)",
                       fpr, ckr(rv));
        return CKR_GUARDIAN_ROOT_NOT_ANCHORED;
    }
    if (already)
        guardian_info("enrol", "OEM root sha256 %s was in the ledger already for %s", fpr, ids);
    else
        guardian_info("enrol", "enrolled OEM root sha256 %s for %s in the ledger (record %llu; %s)", fpr, ids,
                      (unsigned long long)rec.seq, why);
    return CKR_OK;
}

CK_RV guardian_root_destroying(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
    CK_OBJECT_CLASS cls = 0;
    char label[sizeof(GUARDIAN_ROOT_PREFIX)];
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label, sizeof(label) - 1}};
    CK_ATTRIBUTE v = {CKA_VALUE, NULL, 0};
    struct guardian_store *st = NULL;
    uint8_t md[32];
    unsigned int md_len = 0;
    bool found = false;
    CK_RV rv;

    if (!guardian_so_as_backend_user())
        return CKR_OK;
    /* A label longer than the prefix does not fit: CKR_BUFFER_TOO_SMALL with
     * the class read; read it again for the prefix alone. */
    rv = be->C_GetAttributeValue(s, h, a, 2);
    if (rv == CKR_BUFFER_TOO_SMALL) {
        CK_BYTE *full = NULL;
        CK_ATTRIBUTE l = {CKA_LABEL, NULL, 0};
        if (be->C_GetAttributeValue(s, h, &l, 1) == CKR_OK && l.ulValueLen != CK_UNAVAILABLE_INFORMATION &&
            (full = malloc(l.ulValueLen + 1)) != NULL) {
            l.pValue = full;
            if (be->C_GetAttributeValue(s, h, &l, 1) == CKR_OK && l.ulValueLen >= strlen(GUARDIAN_ROOT_PREFIX)) {
                memcpy(label, full, strlen(GUARDIAN_ROOT_PREFIX));
                a[1].ulValueLen = strlen(GUARDIAN_ROOT_PREFIX);
                rv = CKR_OK;
            }
        }
        free(full);
    }
    if (rv != CKR_OK || cls != CKO_CERTIFICATE || a[1].ulValueLen < strlen(GUARDIAN_ROOT_PREFIX) ||
        memcmp(label, GUARDIAN_ROOT_PREFIX, strlen(GUARDIAN_ROOT_PREFIX)) != 0)
        return CKR_OK; /* no enrolled root's certificate */
    rv = be->C_GetAttributeValue(s, h, &v, 1);
    if (rv == CKR_OK && (v.ulValueLen == 0 || v.ulValueLen > GUARDIAN_ROOT_DER_MAX))
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK && (v.pValue = malloc(v.ulValueLen)) == NULL)
        rv = CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = be->C_GetAttributeValue(s, h, &v, 1);
    if (rv == CKR_OK && (EVP_Digest(v.pValue, v.ulValueLen, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32))
        rv = CKR_GENERAL_ERROR;
    free(v.pValue);
    if (rv == CKR_OK)
        rv = guardian_state_store(&st);
    if (rv == CKR_OK)
        rv = guardian_anchor_check(be, s, st);
    if (rv == CKR_OK)
        rv = guardian_store_root_remove(st, md, (int64_t)time(NULL), &found);
    if (rv == CKR_OK && found) {
        char fpr[17];
        for (int i = 0; i < 8; i++)
            snprintf(fpr + 2 * i, 3, "%02x", md[i]);
        if (guardian_anchor_update(be, s, st) != CKR_OK)
            guardian_warn("enrol", "the removal of OEM root sha256 %s... is recorded, but the token's anchor could "
                                   "not be moved over it (it moves with the next import)",
                          fpr);
        guardian_info("enrol", "removed OEM root sha256 %s... from the ledger", fpr);
    }
    if (rv != CKR_OK)
        guardian_error("enrol", "the OEM root could not be removed from the ledger (%s): its certificate is kept",
                       ckr(rv));
    return rv;
}

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
    bool ledger = false;
    CK_RV rv = CKR_GENERAL_ERROR;

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
    ledger = guardian_so_as_backend_user();
    if (ledger) {
        rv = enrol_in_ledger(be, st, session, value, label + strlen(GUARDIAN_ROOT_PREFIX), fpr);
        if (rv != CKR_OK)
            goto out;
    }

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
        if (ledger) {
            /* The ledger holds the enrolment; a certificate of that root with
             * other OEM IDs is not the module's (planted), and counts for
             * nothing here: leave it, say so. */
            guardian_warn("enrol", "a trusted certificate of this root with other OEM IDs is in the token ('%.*s'): "
                                   "not made by the Guardian; it counts for nothing",
                          rv == CKR_OK ? (int)a.ulValueLen : 0, old);
            *out = found[0];
            rv = CKR_OK;
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
            {CKA_ID, fpr, 40},
            {CKA_LABEL, label, (CK_ULONG)strlen(label)},
            {CKA_VALUE, value->pValue, value->ulValueLen},
            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
            {CKA_ISSUER, iss, (CK_ULONG)iss_len},
            {CKA_SERIAL_NUMBER, serial, (CK_ULONG)ser_len},
            {CKA_CERTIFICATE_CATEGORY, &category, sizeof(category)},
        };
        rv = be->C_CreateObject(session, t, sizeof(t) / sizeof(t[0]), out);
        /* A 2.20 token (opencryptoki 3.8) knows no CKA_CERTIFICATE_CATEGORY
         * (the last; a 2.40 attribute) on certificates: without it, as the
         * import's certificates (unwrap_package.c). */
        if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
            rv = be->C_CreateObject(session, t, sizeof(t) / sizeof(t[0]) - 1, out);
    }
    if (rv != CKR_OK && ledger) {
        /* opencryptoki (nobody makes a trusted certificate), SoftHSM (only
         * its SO): the ledger holds the enrolment, the certificate only lists
         * it, so it is made without CKA_TRUSTED (list-oems and policy.c take
         * its "guardian-root:" label for a root's). */
        guardian_warn("enrol", "the backend refused the trusted certificate (%s): the root is enrolled in the "
                               "ledger only",
                      ckr(rv));
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &cls, sizeof(cls)},         {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                {CKA_TOKEN, &yes, sizeof(yes)},         {CKA_MODIFIABLE, &no, sizeof(no)},
                {CKA_ID, fpr, 40},                      {CKA_LABEL, label, (CK_ULONG)strlen(label)},
                {CKA_VALUE, value->pValue, value->ulValueLen}, {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
            };
            rv = be->C_CreateObject(session, t, sizeof(t) / sizeof(t[0]), out);
        }
    }
    if (rv != CKR_OK) {
        if (ledger)
            guardian_error("enrol", "the root is enrolled in the ledger (it counts), but the backend refused a "
                                    "certificate to list it: %s",
                           ckr(rv));
        else
            guardian_error("enrol", "the backend refused to create the trusted certificate: %s; %s", ckr(rv),
                           LEDGER_HINT);
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
