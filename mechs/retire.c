/*
 * retire.c — CKG_GUARDIAN_REQ_RETIRE_CA: a superseded release's production
 * CA key taken off the token, as a recorded operation.
 *
 * Why: a release that a newer one replaced can issue nothing through the
 * Guardian (the store refuses its package: CKR_GUARDIAN_PACKAGE_SUPERSEDED),
 * yet its CA private key stays in the backend, where someone who holds the
 * backend's own PIN could still sign with it (docs/threat-model.md).
 * Destroying it removes that capability; nothing is lost that the Guardian
 * could still use.
 *
 * Who: the user (the operator), in a read-write session.  The operation only
 * ever reduces what the token can do, and the one key whose loss would stop a
 * line, the installed release's, is refused by the store
 * (CKR_GUARDIAN_RELEASE_CURRENT), whoever asks; the record names the
 * operator, so a retirement is as accountable as a certificate.
 *
 * Order: the store is checked against the token's anchor; the RETIRE record
 * is committed (power-safe), the anchor moved up to it, and only then is the
 * key destroyed: a key never goes without its record.  A crash between the
 * two leaves a recorded retirement with its key: the same request again
 * destroys that key and writes no second record.  Once the key is gone a
 * further request is refused (CKR_GUARDIAN_CA_RETIRED).
 *
 * What is destroyed: the release's production CA private key
 * ("guardian:OEM/PRODUCT/rN:production-ca", CKA_ID the package ID) and the
 * certificate object the import made for it ("…:production-ca-cert0"); the
 * chain certificates and the package's other keys are left (they are not the
 * CA's).  The output: a session CKO_DATA object "guardian-output:retire-ca",
 * "key=value" lines (docs/vendor-interface.md, "Retiring a release's CA key").
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "anchor.h"
#include "ca_binding.h"
#include "identity.h"
#include "module.h"
#include "registry.h"
#include "request.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "retire"

/* Destroys the objects of class `cls` labelled `label` whose CKA_ID is the
 * package ID; *n counts them. */
static CK_RV destroy_labelled(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_CLASS cls,
                              const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], const char *label, unsigned *n)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_ID, (void *)package_id, GUARDIAN_PACKAGE_ID_LEN},
                        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
    CK_OBJECT_HANDLE found[8];
    CK_ULONG count = 0;
    CK_RV rv = guardian_backend_find(be, session, t, 3, found, sizeof(found) / sizeof(found[0]), &count);
    for (CK_ULONG i = 0; rv == CKR_OK && i < count; i++) {
        rv = be->C_DestroyObject(session, found[i]);
        if (rv == CKR_OK) {
            /* The backend may hand the number out again (as C_DestroyObject does). */
            guardian_mechs_forget(found[i]);
            guardian_policy_forget(found[i]);
            (*n)++;
        } else
            guardian_error(LOG, "the backend refused to destroy %s: %s", label, guardian_ckr_name(rv));
    }
    return rv;
}

static CK_RV retire(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                    const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
    char label[2 * GUARDIAN_ID_MAX + 48], text[512], pkg_hex[2 * GUARDIAN_PACKAGE_ID_LEN + 1];
    struct guardian_audit_record rec;
    CK_ULONG release = 0;
    bool already = false;
    unsigned keys = 0, certs = 0;
    int n;
    CK_RV rv;

    if ((rv = guardian_request_id(rq, CKA_GUARDIAN_OEM_ID, "CKA_GUARDIAN_OEM_ID", oem_id)) != CKR_OK ||
        (rv = guardian_request_id(rq, CKA_GUARDIAN_PRODUCT_ID, "CKA_GUARDIAN_PRODUCT_ID", product_id)) != CKR_OK ||
        (rv = guardian_request_ulong(rq, CKA_GUARDIAN_RELEASE, true, &release)) != CKR_OK)
        return rv;
    if (release > UINT32_MAX) {
        guardian_error(LOG, "refused: release %lu is no release number (0..%lu)", (unsigned long)release,
                       (unsigned long)UINT32_MAX);
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    /* A store behind the token's anchor is not the Guardian's state. */
    if ((rv = guardian_anchor_check(be, session, st)) != CKR_OK)
        return rv;
    rv = guardian_store_record_retire(st, oem_id, product_id, (uint32_t)release, (int64_t)time(NULL), &rec,
                                      &already);
    if (rv != CKR_OK)
        return rv;
    if (!already && (rv = guardian_anchor_update(be, session, st)) != CKR_OK) {
        guardian_error(LOG, "the retirement is recorded (record %llu) but the token's state anchor could not be "
                            "moved up to it: the key is kept; ask again",
                       (unsigned long long)rec.seq);
        return rv;
    }
    snprintf(label, sizeof(label), "guardian:%s/%s/r%lu:production-ca", oem_id, product_id, (unsigned long)release);
    if ((rv = destroy_labelled(be, session, CKO_PRIVATE_KEY, rec.package_id, label, &keys)) != CKR_OK)
        return rv;
    {
        /* A release of format version 2: its key pair was made in the
         * Guardian (ca_request.c), the same CKA_ID, its own label. */
        unsigned pubs = 0;
        snprintf(label, sizeof(label), GUARDIAN_CA_KEY_LABEL_FMT, oem_id, product_id);
        if ((rv = destroy_labelled(be, session, CKO_PRIVATE_KEY, rec.package_id, label, &keys)) != CKR_OK ||
            (rv = destroy_labelled(be, session, CKO_PUBLIC_KEY, rec.package_id, label, &pubs)) != CKR_OK)
            return rv;
    }
    /* unwrap_package.c: certificate 0 of the package is the CA's, "…:production-ca-cert0". */
    snprintf(label, sizeof(label), "guardian:%s/%s/r%lu:production-ca-cert0", oem_id, product_id,
             (unsigned long)release);
    if ((rv = destroy_labelled(be, session, CKO_CERTIFICATE, rec.package_id, label, &certs)) != CKR_OK)
        return rv;
    if (already && keys == 0) {
        guardian_error(LOG, "refused: the production CA key of %s/%s release %lu was retired already (record %llu)",
                       oem_id, product_id, (unsigned long)release, (unsigned long long)rec.seq);
        return CKR_GUARDIAN_CA_RETIRED;
    }
    for (size_t i = 0; i < GUARDIAN_PACKAGE_ID_LEN; i++)
        snprintf(pkg_hex + 2 * i, 3, "%02x", rec.package_id[i]);
    n = snprintf(text, sizeof(text),
                 "version=1\noem_id=%s\nproduct_id=%s\nrelease=%lu\npackage_id=%s\nrecord=%llu\nrecorded_now=%s\n"
                 "keys_destroyed=%u\ncertificates_destroyed=%u\n",
                 oem_id, product_id, (unsigned long)release, pkg_hex, (unsigned long long)rec.seq,
                 already ? "no" : "yes", keys, certs);
    if (n < 0 || (size_t)n >= sizeof(text))
        return CKR_HOST_MEMORY;
    rv = guardian_output_create(be, session, "retire-ca", (const uint8_t *)text, (size_t)n, out);
    if (rv == CKR_OK)
        guardian_info(LOG, "retired the production CA key of %s/%s release %lu (record %llu%s): %u key, %u "
                           "certificate destroyed",
                      oem_id, product_id, (unsigned long)release, (unsigned long long)rec.seq,
                      already ? ", recorded before" : "", keys, certs);
    return rv;
}

static const CK_ATTRIBUTE_TYPE retire_attributes[] = {CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID,
                                                      CKA_GUARDIAN_RELEASE};

const struct guardian_request_type guardian_request_retire_ca = {
    .type = CKG_GUARDIAN_REQ_RETIRE_CA,
    .name = "CKG_GUARDIAN_REQ_RETIRE_CA",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = retire_attributes,
    .n_attributes = sizeof(retire_attributes) / sizeof(retire_attributes[0]),
    .run = retire,
};
