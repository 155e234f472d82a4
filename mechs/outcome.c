/*
 * outcome.c — CKG_GUARDIAN_REQ_PART_OUTCOME: the line reports what became of
 * a part after its certificate was issued, programmed or scrapped
 * (docs/vendor-interface.md, "Part outcomes").
 *
 * The store does the work in one write transaction
 * (guardian_store_record_outcome): the device must hold a certificate of this
 * Guardian for the product (its device index, store.h), and an OUTCOME audit
 * record names the operator, the product, the serial's package and release,
 * the device, the serial and the outcome.  Units stay spent: a certificate
 * that left the Guardian cannot be taken back, whatever became of the part.
 * The same outcome reported again writes nothing (a line controller that
 * retries after a lost answer must not double the count); programmed then
 * scrapped is a second, real event and is recorded; scrapped then
 * programmed is refused (CKR_GUARDIAN_PART_SCRAPPED): that certificate's
 * part is gone, and a part that lives on gets a re-issue, not a new outcome.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "identity.h"
#include "module.h"
#include "request.h"
#include "store.h"
/* after the headers above: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "outcome"

static CK_RV part_outcome(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                          const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1], text[65], result[128];
    CK_ULONG format = CKG_GUARDIAN_DEVICE_ID_TEXT, outcome = 0;
    const CK_ATTRIBUTE *id = NULL;
    struct guardian_product p;
    uint8_t dev[64];
    size_t dev_len = 0;
    uint64_t serial = 0;
    bool recorded = false;
    CK_RV rv;
    int n;

    if ((rv = guardian_request_id(rq, CKA_GUARDIAN_OEM_ID, "CKA_GUARDIAN_OEM_ID", oem_id)) != CKR_OK ||
        (rv = guardian_request_id(rq, CKA_GUARDIAN_PRODUCT_ID, "CKA_GUARDIAN_PRODUCT_ID", product_id)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_DEVICE_ID, true, &id)) != CKR_OK ||
        (rv = guardian_request_ulong(rq, CKA_GUARDIAN_DEVICE_ID_FORMAT, false, &format)) != CKR_OK ||
        (rv = guardian_request_ulong(rq, CKA_GUARDIAN_PART_OUTCOME, true, &outcome)) != CKR_OK)
        return rv;
    if (outcome != CKG_GUARDIAN_OUTCOME_PROGRAMMED && outcome != CKG_GUARDIAN_OUTCOME_SCRAPPED) {
        guardian_error(LOG, "refused: CKA_GUARDIAN_PART_OUTCOME is %lu: 1 (programmed) or 2 (scrapped)",
                       (unsigned long)outcome);
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    rv = guardian_device_id_check(format, id->pValue, id->ulValueLen, dev, &dev_len, text);
    if (rv != CKR_OK)
        return rv;
    rv = guardian_store_product_get(st, oem_id, product_id, &p);
    if (rv == CKR_GUARDIAN_PRODUCT_UNKNOWN)
        guardian_error(LOG, "refused: no release of %s/%s is installed", oem_id, product_id);
    if (rv != CKR_OK)
        return rv;
    rv = guardian_store_record_outcome(st, oem_id, product_id, dev, dev_len, (int)outcome, (int64_t)time(NULL),
                                       &serial, &recorded);
    if (rv == CKR_GUARDIAN_DEVICE_NOT_ISSUED)
        guardian_error(LOG, "refused: device %s holds no certificate of %s/%s from this Guardian (if a process that "
                            "is still running issued it, report the outcome once that process has ended or "
                            "exported)",
                       text, oem_id, product_id);
    else if (rv == CKR_GUARDIAN_PART_SCRAPPED)
        guardian_error(LOG, "refused: device %s of %s/%s (serial %llu) was reported scrapped: it cannot be "
                            "programmed with that certificate (issue it again with a re-issue)",
                       text, oem_id, product_id, (unsigned long long)serial);
    if (rv != CKR_OK)
        return rv;
    if (recorded)
        guardian_info(LOG, "%s/%s device %s (serial %llu): %s, recorded", oem_id, product_id, text,
                      (unsigned long long)serial, outcome == CKG_GUARDIAN_OUTCOME_PROGRAMMED ? "programmed" : "scrapped");
    n = snprintf(result, sizeof(result), "serial=%llu outcome=%s recorded=%s\n", (unsigned long long)serial,
                 outcome == CKG_GUARDIAN_OUTCOME_PROGRAMMED ? "programmed" : "scrapped", recorded ? "yes" : "no");
    if (n < 0 || (size_t)n >= sizeof(result))
        return CKR_GENERAL_ERROR;
    return guardian_output_create(be, session, "part-outcome", (const uint8_t *)result, (size_t)n, out);
}

static const CK_ATTRIBUTE_TYPE attributes[] = {
    CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_DEVICE_ID, CKA_GUARDIAN_DEVICE_ID_FORMAT,
    CKA_GUARDIAN_PART_OUTCOME,
};

const struct guardian_request_type guardian_request_part_outcome = {
    .type = CKG_GUARDIAN_REQ_PART_OUTCOME,
    .name = "CKG_GUARDIAN_REQ_PART_OUTCOME",
    .session = GUARDIAN_REQUEST_USER,
    .attributes = attributes,
    .n_attributes = sizeof(attributes) / sizeof(attributes[0]),
    .run = part_outcome,
};
