/*
 * audit_export.c — CKG_GUARDIAN_REQ_AUDIT_EXPORT: the signed audit report
 * (docs/audit-report.md), built inside the module from the store and signed
 * in the backend by the Guardian's signing key; it carries the agreement
 * certificate A (what OEMs wrap for) and the signing certificate S, which
 * issued A and verifies the signature.
 *
 * Why here.  The signing key signs only what the Guardian itself wrote: a
 * caller cannot have it sign chosen bytes (an old report re-dated, a trail
 * rewritten) because the policy (module/policy.c) refuses every standard call
 * with the key, and this request takes no bytes from the caller — only, for a
 * restricted report, the product to restrict it to.
 *
 * Scope.  A report restricted to one product shows every record of that
 * product's OEM in clear (all its products, with their certificates and
 * product lines), and the records that are no OEM's - CREDENTIAL, and the
 * EXPORT records of whole-trail exports -, and redacts only the records of
 * other OEMs: an export made for an OEM cannot hide any of that OEM's records
 * from it.
 *
 * Its own record.  Before the report is built, the export writes an EXPORT
 * record (store.h, guardian_store_record_export: who, when, what scope) in
 * a transaction of its own that also reads the products' counters as they
 * stand at that record; the report covers the trail up to and including it,
 * so the signed report names its exporter as its last record, and its
 * counters agree with its records however production goes on meanwhile.
 *
 * The report is a session CKO_DATA object of the caller's session (private,
 * not modifiable, label "guardian-output:audit-report", CKA_VALUE = the
 * report): the caller reads it and destroys it, nothing else (policy.c).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "anchor.h"
#include "identity.h"
#include "module.h"
#include "report_write.h"
#include "request.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "audit"

/* A growing text; `rv` is sticky: the first failure ends the build. */
struct text {
    char *p;
    size_t len, cap;
    CK_RV rv;
};

static void text_add(struct text *t, const void *s, size_t n)
{
    if (t->rv != CKR_OK || n == 0)
        return;
    if (n > t->cap - t->len) {
        size_t cap = t->cap ? t->cap : 65536;
        char *p;
        while (cap - t->len < n) {
            if (cap > SIZE_MAX / 2) {
                t->rv = CKR_HOST_MEMORY;
                return;
            }
            cap *= 2;
        }
        p = realloc(t->p, cap);
        if (p == NULL) {
            t->rv = CKR_HOST_MEMORY;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
}

/* One formatted line; `len` 0 means the writer could not write it. */
static void text_line(struct text *t, const char *line, size_t len, const char *what)
{
    if (t->rv == CKR_OK && len == 0) {
        guardian_error(LOG, "cannot write %s into the report (a field the format cannot carry)", what);
        t->rv = CKR_GENERAL_ERROR;
    }
    text_add(t, line, len);
}

struct issued {
    uint64_t seq, serial;
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
};

/* An in-clear IMPORT record: its package's template goes in a template line. */
struct imported {
    uint64_t seq;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
};

struct export {
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
    int scoped;
    struct text *into; /* where the callbacks write */
    uint64_t end;      /* the export's own record: the last the report covers */
    struct guardian_audit_record last;
    struct issued *issued; /* the in-clear ISSUE records, in order */
    size_t n_issued, cap_issued;
    struct imported *imported; /* the in-clear IMPORT records, in order */
    size_t n_imported, cap_imported;
};

static int in_scope(const struct export *e, const char *oem_id)
{
    return !e->scoped || strcmp(oem_id, e->oem_id) == 0;
}

static CK_RV product_line(const struct guardian_product *p, void *ctx)
{
    struct export *e = ctx;
    char line[1024];
    if (in_scope(e, p->oem_id))
        text_line(e->into, line, report_format_product(p, line, sizeof(line)), "a product line");
    return e->into->rv;
}

static CK_RV record_line(const struct guardian_audit_record *r, void *ctx)
{
    struct export *e = ctx;
    char line[2048];
    struct issued *i;

    /* Records appended after the export's own (production goes on) are the
     * next report's. */
    if (r->seq > e->end)
        return CKR_OK;
    e->last = *r;
    /* A CREDENTIAL record is no OEM's: every report shows it (who could
     * operate the Guardian, a lockout, an SO recovery), and it discloses no
     * other customer's production; nor is the EXPORT record of the whole
     * trail (who exported it, when).  An export restricted to a product is
     * that product's OEM's. */
    if (r->type != GUARDIAN_AUDIT_CREDENTIAL && !(r->type == GUARDIAN_AUDIT_EXPORT && r->oem_id[0] == '\0') &&
        !in_scope(e, r->oem_id)) {
        text_line(e->into, line, report_format_redacted(r, line, sizeof(line)), "a redacted record");
        return e->into->rv;
    }
    text_line(e->into, line, report_format_record(r, line, sizeof(line)), "a record");
    if (e->into->rv == CKR_OK && r->type == GUARDIAN_AUDIT_IMPORT) {
        if (e->n_imported == e->cap_imported) {
            size_t cap = e->cap_imported ? 2 * e->cap_imported : 64;
            struct imported *p = realloc(e->imported, cap * sizeof(*p));
            if (p == NULL)
                return CKR_HOST_MEMORY;
            e->imported = p;
            e->cap_imported = cap;
        }
        e->imported[e->n_imported].seq = r->seq;
        memcpy(e->imported[e->n_imported++].package_id, r->package_id, GUARDIAN_PACKAGE_ID_LEN);
    }
    if (e->into->rv != CKR_OK || r->type != GUARDIAN_AUDIT_ISSUE)
        return e->into->rv;
    if (e->n_issued == e->cap_issued) {
        size_t cap = e->cap_issued ? 2 * e->cap_issued : 1024;
        struct issued *p = realloc(e->issued, cap * sizeof(*p));
        if (p == NULL)
            return CKR_HOST_MEMORY;
        e->issued = p;
        e->cap_issued = cap;
    }
    i = &e->issued[e->n_issued++];
    i->seq = r->seq;
    i->serial = r->serial;
    memcpy(i->oem_id, r->oem_id, sizeof(i->oem_id));
    memcpy(i->product_id, r->product_id, sizeof(i->product_id));
    return CKR_OK;
}

/* The trail up to the export's own record, verified by the store as it
 * reads, into `body`. */
static CK_RV read_trail(struct guardian_store *st, struct export *e, struct text *body)
{
    CK_RV rv;

    e->into = body;
    rv = guardian_store_audit_each(st, record_line, e);
    if (rv == CKR_OK)
        rv = body->rv;
    if (rv == CKR_GUARDIAN_AUDIT_CORRUPT)
        guardian_error(LOG, "the audit trail is corrupt (the line above names the record): not exported; keep "
                            "guardian.db as it is and tell the OEM");
    return rv;
}

/* The template of each in-clear IMPORT record's package, in record order: the
 * verifier takes each release's certificate profile from it (its
 * device-identity extension setting and subject pattern), so that one report
 * can hold releases made with different settings.  A package recorded
 * without a template (a store-only test) has no line. */
static CK_RV template_lines(struct guardian_store *st, const struct export *e, struct text *t)
{
    char *line = NULL;
    size_t cap = 0;
    CK_RV rv = CKR_OK;

    for (size_t i = 0; i < e->n_imported && t->rv == CKR_OK; i++) {
        struct guardian_package_material m;
        size_t need;
        rv = guardian_store_package_material(st, e->imported[i].package_id, &m);
        if (rv != CKR_OK) {
            guardian_error(LOG, "cannot read the template of the package imported by record %llu",
                           (unsigned long long)e->imported[i].seq);
            break;
        }
        need = m.cert_template_len / 3 * 4 + 64;
        if (m.cert_template != NULL && need > cap) {
            char *p = realloc(line, need);
            if (p == NULL) {
                guardian_store_package_material_free(&m);
                rv = CKR_HOST_MEMORY;
                break;
            }
            line = p;
            cap = need;
        }
        if (m.cert_template != NULL)
            text_line(t, line, report_format_template(e->imported[i].seq, m.cert_template, m.cert_template_len,
                                                      line, cap),
                      "a template");
        guardian_store_package_material_free(&m);
    }
    free(line);
    return rv != CKR_OK ? rv : t->rv;
}

/* The certificates of the in-clear ISSUE records, in record order. */
static CK_RV certificate_lines(struct guardian_store *st, const struct export *e, struct text *t)
{
    char *line = malloc(GUARDIAN_CERT_MAX / 3 * 4 + 64);
    size_t missing = 0;
    CK_RV rv = CKR_HOST_MEMORY;

    if (line == NULL)
        return rv;
    for (size_t i = 0; i < e->n_issued && t->rv == CKR_OK; i++) {
        uint8_t *der = NULL;
        size_t der_len = 0;
        rv = guardian_store_certificate_get(st, e->issued[i].oem_id, e->issued[i].product_id, e->issued[i].serial,
                                            &der, &der_len);
        if (rv != CKR_OK) {
            guardian_error(LOG, "cannot read the certificate of serial %llu of %s/%s",
                           (unsigned long long)e->issued[i].serial, e->issued[i].oem_id, e->issued[i].product_id);
            goto out;
        }
        if (der == NULL || der_len > GUARDIAN_CERT_MAX)
            missing++;
        else
            text_line(t, line, report_format_certificate(e->issued[i].seq, der, der_len, line,
                                                         GUARDIAN_CERT_MAX / 3 * 4 + 64),
                      "a certificate");
        free(der);
    }
    if (missing > 0)
        guardian_warn(LOG, "%zu issued certificates were not recorded in the store; the report lacks them and will "
                           "not verify",
                      missing);
    rv = t->rv;
out:
    free(line);
    return rv;
}

/* The Guardian's two certificates from the token — A (agreement, the one
 * OEMs wrap for) and S (signing, the report's signer), A issued by S — and
 * their PEM, A then S, as OpenSSL writes it. */
static CK_RV identity_certs(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, X509 **a, X509 **sc, struct text *pem)
{
    BIO *bio = NULL;
    char *data;
    long data_len;
    CK_RV rv = guardian_identity_cert(be, s, GUARDIAN_IDENTITY_ID, a, NULL);

    if (rv == CKR_OK)
        rv = guardian_identity_cert(be, s, GUARDIAN_SIGNING_ID, sc, NULL);
    if (rv != CKR_OK)
        return rv;
    if (*a == NULL || *sc == NULL) {
        guardian_error(LOG, "refused: the token has no Guardian %s certificate (CKA_ID \"%s\"); initialise the "
                            "Guardian first (a Guardian made before the signing key was split off: run "
                            "guardianctl init once)",
                       *a == NULL ? "agreement" : "signing", *a == NULL ? GUARDIAN_IDENTITY_ID : GUARDIAN_SIGNING_ID);
        return CKR_KEY_HANDLE_INVALID;
    }
    if (!guardian_identity_issued_by(*a, *sc)) {
        guardian_error(LOG, "refused: the Guardian certificate is not issued by its signing certificate (no "
                            "report could be tied to it); run guardianctl init to issue it again");
        return CKR_KEY_HANDLE_INVALID;
    }
    bio = BIO_new(BIO_s_mem());
    rv = CKR_GENERAL_ERROR;
    if (bio == NULL || !PEM_write_bio_X509(bio, *a) || !PEM_write_bio_X509(bio, *sc) ||
        (data_len = BIO_get_mem_data(bio, &data)) <= 0)
        goto out;
    text_add(pem, data, (size_t)data_len);
    rv = pem->rv;
out:
    BIO_free(bio);
    return rv;
}

/* The signing key (CKA_ID "guardian-signing"), looked up before anything is
 * recorded: a Guardian that cannot sign writes no EXPORT record. */
static CK_RV signing_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *key)
{
    CK_RV rv = guardian_identity_find(be, s, GUARDIAN_SIGNING_ID, CKO_PRIVATE_KEY, key);

    if (rv == CKR_OK && *key == CK_INVALID_HANDLE) {
        guardian_error(LOG, "refused: the token has no Guardian signing key (CKA_ID \"" GUARDIAN_SIGNING_ID "\"); "
                            "run guardianctl init");
        rv = CKR_KEY_HANDLE_INVALID;
    }
    return rv;
}

/* SHA-256 of the report so far, signed with CKM_ECDSA by the signing key in
 * the backend, appended as its "signature" line once S's key verifies it: a
 * key and a certificate that do not belong together never make a report. */
static CK_RV sign_report(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, X509 *cert,
                         struct text *t)
{
    uint8_t *der = NULL;
    int der_len = 0;
    EVP_MD_CTX *md = NULL;
    char line[800]; /* "signature " and the base64 of up to an RSA 4096 signature */
    CK_RV rv = guardian_identity_sign(be, s, key, (const uint8_t *)t->p, t->len, &der, &der_len);

    if (rv != CKR_OK)
        goto out;
    rv = CKR_GENERAL_ERROR;
    md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(cert)) != 1 ||
        EVP_DigestVerify(md, der, (size_t)der_len, (const uint8_t *)t->p, t->len) != 1) {
        guardian_error(LOG, "refused: the signing key's signature does not verify with the signing certificate "
                            "(they do not belong together)");
        goto out;
    }
    text_line(t, line, report_format_signature(der, (size_t)der_len, line, sizeof(line)), "the signature");
    rv = t->rv;
out:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return rv;
}

/* An optional ID attribute into `out`: 1..64 bytes, no NUL. */
static CK_RV scope_id(const CK_ATTRIBUTE *a, const char *name, char out[GUARDIAN_ID_MAX + 1])
{
    if (a->pValue == NULL || a->ulValueLen == 0 || a->ulValueLen > GUARDIAN_ID_MAX ||
        memchr(a->pValue, 0, a->ulValueLen) != NULL) {
        guardian_error(LOG, "refused: %s must be 1..%d bytes without NUL", name, GUARDIAN_ID_MAX);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    memcpy(out, a->pValue, a->ulValueLen);
    out[a->ulValueLen] = '\0';
    return CKR_OK;
}

static CK_RV audit_export(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                          const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    const CK_ATTRIBUTE *oem = guardian_request_attr(rq, CKA_GUARDIAN_OEM_ID);
    const CK_ATTRIBUTE *product = guardian_request_attr(rq, CKA_GUARDIAN_PRODUCT_ID);
    const int64_t now = (int64_t)time(NULL);
    struct export e;
    struct guardian_audit_record own;
    struct text report = {0}, products = {0}, body = {0}, pem = {0};
    CK_SESSION_HANDLE work = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    CK_SESSION_INFO si;
    X509 *cert = NULL, *signing = NULL;
    char header[1024];
    CK_RV rv = CKR_GENERAL_ERROR;

    memset(&e, 0, sizeof(e));
    memset(&own, 0, sizeof(own));
    if ((oem == NULL) != (product == NULL)) {
        guardian_error(LOG, "refused: a restricted export needs both CKA_GUARDIAN_OEM_ID and "
                            "CKA_GUARDIAN_PRODUCT_ID (neither: the whole trail)");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    if (oem != NULL) {
        if ((rv = scope_id(oem, "CKA_GUARDIAN_OEM_ID", e.oem_id)) != CKR_OK ||
            (rv = scope_id(product, "CKA_GUARDIAN_PRODUCT_ID", e.product_id)) != CKR_OK)
            return rv;
        e.scoped = 1;
    }

    /* The identity is looked up, and the report signed, in a session of our
     * own on the caller's slot (logged in as the caller's is): the caller's
     * searches and operations in progress are left alone.  Both certificates
     * and the key first: a Guardian that cannot sign a report records no
     * export. */
    if ((rv = be->C_GetSessionInfo(session, &si)) != CKR_OK ||
        (rv = be->C_OpenSession(si.slotID, CKF_SERIAL_SESSION, NULL, NULL, &work)) != CKR_OK)
        goto out;
    if ((rv = identity_certs(be, work, &cert, &signing, &pem)) != CKR_OK ||
        (rv = signing_key(be, work, &key)) != CKR_OK)
        goto out;

    /* A store behind the token's anchor (a restored backup) is not the
     * Guardian's state: it is not reported as such, nor written to. */
    if ((rv = guardian_anchor_check(be, work, st)) != CKR_OK)
        goto out;
    /* The export's own record, in its own transaction (this process's issue
     * journal folded first), and the product lines as the counters stand at
     * it. */
    e.into = &products;
    rv = guardian_store_record_export(st, e.scoped ? e.oem_id : NULL, e.scoped ? e.product_id : NULL, now,
                                      product_line, &e, &own);
    if (rv == CKR_OK)
        rv = products.rv;
    if (rv == CKR_GUARDIAN_PRODUCT_UNKNOWN)
        guardian_error(LOG, "refused: no product %s/%s in this Guardian", e.oem_id, e.product_id);
    if (rv != CKR_OK)
        goto out;
    e.end = own.seq;
    /* The anchor moves up to the EXPORT record, as after an import: the
     * token then names a trail that holds the export, and a store restored
     * from before it is refused. */
    if ((rv = guardian_anchor_update(be, work, st)) != CKR_OK) {
        guardian_error(LOG, "the export is recorded (record %llu) but the token's state anchor could not be moved "
                            "up to it: no report",
                       (unsigned long long)own.seq);
        goto out;
    }
    if ((rv = read_trail(st, &e, &body)) != CKR_OK)
        goto out;
    if (e.last.seq != own.seq || memcmp(e.last.hash, own.hash, GUARDIAN_HASH_LEN) != 0) {
        guardian_error(LOG, "the trail read back does not end at the export's own record %llu: not exported",
                       (unsigned long long)own.seq);
        rv = CKR_GUARDIAN_AUDIT_CORRUPT;
        goto out;
    }
    text_line(&report, header,
              report_format_header(now, e.scoped ? e.oem_id : NULL, e.product_id, own.seq, own.hash, header,
                                   sizeof(header)),
              "the header");
    text_add(&report, pem.p, pem.len);
    text_add(&report, products.p, products.len);
    text_add(&report, body.p, body.len);
    if ((rv = template_lines(st, &e, &report)) != CKR_OK)
        goto out;
    if ((rv = certificate_lines(st, &e, &report)) != CKR_OK)
        goto out;
    if ((rv = sign_report(be, work, key, signing, &report)) != CKR_OK)
        goto out;
    if ((rv = guardian_output_create(be, session, "audit-report", (const uint8_t *)report.p, report.len, out)) !=
        CKR_OK)
        goto out;
    guardian_info(LOG, "exported the audit report (record %llu by %s, scope %s%s%s, %zu bytes)",
                  (unsigned long long)own.seq, own.operator_name[0] != '\0' ? own.operator_name : "(none)",
                  e.scoped ? e.oem_id : "all", e.scoped ? "/" : "", e.scoped ? e.product_id : "", report.len);
out:
    if (rv != CKR_OK && own.seq != 0)
        guardian_warn(LOG, "export record %llu stays in the trail without a report (the next report shows it)",
                      (unsigned long long)own.seq);
    if (work != CK_INVALID_HANDLE)
        be->C_CloseSession(work);
    X509_free(cert);
    X509_free(signing);
    free(report.p);
    free(products.p);
    free(body.p);
    free(pem.p);
    free(e.issued);
    free(e.imported);
    return rv;
}

static const CK_ATTRIBUTE_TYPE attributes[] = {CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID};

const struct guardian_request_type guardian_request_audit_export = {
    .type = CKG_GUARDIAN_REQ_AUDIT_EXPORT,
    .name = "CKG_GUARDIAN_REQ_AUDIT_EXPORT",
    .session = GUARDIAN_REQUEST_USER,
    .attributes = attributes,
    .n_attributes = sizeof(attributes) / sizeof(attributes[0]),
    .run = audit_export,
};
