/*
 * request.c — the one table of Guardian request types, and what every
 * request goes through before its handler runs: the session it needs and the
 * attributes it takes (request.h).
 */
#include <string.h>

#include "anchor.h"
#include "module.h"
#include "request.h"
#include "store.h" /* GUARDIAN_ID_MAX */
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static const struct guardian_request_type *const table[] = {
    &guardian_request_enrol_root,
    &guardian_request_identity,
    &guardian_request_identity_csr,
    &guardian_request_identity_cert,
    &guardian_request_audit_export,
    &guardian_request_probe,
    &guardian_request_import,
    &guardian_request_device_cert,
    &guardian_request_status,
    &guardian_request_device_certs,
    &guardian_request_part_outcome,
    &guardian_request_retire_ca,
    &guardian_request_ca_key,
};

int guardian_request_is(const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    for (CK_ULONG i = 0; templ != NULL && i < count; i++)
        if (templ[i].type == CKA_CLASS && templ[i].pValue != NULL && templ[i].ulValueLen == sizeof(CK_OBJECT_CLASS))
            return *(const CK_OBJECT_CLASS *)templ[i].pValue == CKO_GUARDIAN_REQUEST;
    return 0;
}

const CK_ATTRIBUTE *guardian_request_attr(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < rq->count; i++)
        if (rq->templ[i].type == type)
            return &rq->templ[i];
    return NULL;
}

CK_RV guardian_request_ulong(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, bool required,
                             CK_ULONG *out)
{
    const CK_ATTRIBUTE *a = guardian_request_attr(rq, type);
    if (a == NULL && !required)
        return CKR_OK;
    if (a == NULL || a->pValue == NULL || a->ulValueLen != sizeof(CK_ULONG)) {
        guardian_error("request", "attribute 0x%lx of the request is %s", (unsigned long)type,
                       a == NULL ? "missing" : "not a CK_ULONG");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    memcpy(out, a->pValue, sizeof(*out));
    return CKR_OK;
}

CK_RV guardian_request_bytes(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, bool required,
                             const CK_ATTRIBUTE **out)
{
    const CK_ATTRIBUTE *a = guardian_request_attr(rq, type);
    *out = NULL;
    if (a == NULL && !required)
        return CKR_OK;
    if (a == NULL || (a->pValue == NULL && a->ulValueLen != 0)) {
        guardian_error("request", "attribute 0x%lx of the request is %s", (unsigned long)type,
                       a == NULL ? "missing" : "without a value");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    *out = a;
    return CKR_OK;
}

CK_RV guardian_request_run(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                           const CK_ATTRIBUTE *templ, CK_ULONG count, CK_OBJECT_HANDLE *out)
{
    struct guardian_request rq = {templ, count, 0};
    const struct guardian_request_type *t = NULL;
    CK_SESSION_INFO si;
    CK_USER_TYPE who;
    CK_RV rv;

    if (out == NULL || (templ == NULL && count != 0))
        return CKR_ARGUMENTS_BAD;
    rv = guardian_request_ulong(&rq, CKA_GUARDIAN_REQUEST, true, &rq.type);
    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i]->type == rq.type)
            t = table[i];
    if (t == NULL) {
        guardian_error("request", "unknown Guardian request %lu", (unsigned long)rq.type);
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    for (CK_ULONG i = 0; i < count; i++) {
        bool known = templ[i].type == CKA_CLASS || templ[i].type == CKA_GUARDIAN_REQUEST;
        for (size_t k = 0; k < t->n_attributes && !known; k++)
            known = templ[i].type == t->attributes[k];
        for (CK_ULONG j = 0; j < i && known; j++)
            if (templ[j].type == templ[i].type)
                known = false;
        if (!known) {
            guardian_error("request", "%s: attribute 0x%lx is not one it takes, or is given twice", t->name,
                           (unsigned long)templ[i].type);
            return CKR_GUARDIAN_REQUEST_INVALID;
        }
    }
    /* Who is logged in as the Guardian sees it: in service mode the Guardian
     * SO may be logged into the backend as its user (credentials.c), and
     * must then get the SO's requests only. */
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK)
        return rv;
    who = guardian_session_who(be, session, &si);
    if (t->session == GUARDIAN_REQUEST_SO && (who != CKU_SO || !(si.flags & CKF_RW_SESSION))) {
        guardian_error("request", "%s needs a read-write session with the Security Officer logged in", t->name);
        return who == CKU_SO || si.state == CKS_RO_PUBLIC_SESSION ? CKR_SESSION_READ_ONLY : CKR_USER_NOT_LOGGED_IN;
    }
    if (t->session != GUARDIAN_REQUEST_SO && who != CKU_USER) {
        guardian_error("request", "%s needs a session with the user logged in", t->name);
        return CKR_USER_NOT_LOGGED_IN;
    }
    if (t->session == GUARDIAN_REQUEST_USER_RW && !(si.flags & CKF_RW_SESSION)) {
        guardian_error("request", "%s needs a read-write session", t->name);
        return CKR_SESSION_READ_ONLY;
    }
    /* The records it writes name this token's Guardian (anchor.c). */
    rv = guardian_anchor_bind(be, session, si.slotID, st);
    if (rv != CKR_OK)
        return rv;
    rv = t->run(be, st, session, &rq, out);
    /* A request that makes or replaces the Guardian's certificate: looked
     * up again before the next record. */
    if (rq.type == CKG_GUARDIAN_REQ_IDENTITY || rq.type == CKG_GUARDIAN_REQ_IDENTITY_CSR ||
        rq.type == CKG_GUARDIAN_REQ_IDENTITY_CERT)
        guardian_anchor_forget_guardian();
    return rv;
}

CK_RV guardian_request_id(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, const char *name, char *out)
{
    const CK_ATTRIBUTE *a;
    CK_RV rv = guardian_request_bytes(rq, type, true, &a);
    if (rv != CKR_OK)
        return rv;
    if (a->ulValueLen == 0 || a->ulValueLen > GUARDIAN_ID_MAX || memchr(a->pValue, 0, a->ulValueLen) != NULL) {
        guardian_error("request", "refused: %s must be 1..%d bytes without NUL", name, GUARDIAN_ID_MAX);
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    memcpy(out, a->pValue, a->ulValueLen);
    out[a->ulValueLen] = '\0';
    return CKR_OK;
}
