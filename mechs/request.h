/*
 * request.h — Guardian requests: a Guardian operation asked for with
 * C_CreateObject of a CKO_GUARDIAN_REQUEST object, so that every binding and
 * every remoting layer (p11-kit's RPC carries vendor attributes as bytes, not
 * vendor mechanisms) can reach it.  The request object is never stored: the
 * call runs the operation and returns the handle of its result.
 *
 * One table (request.c) lists the request types, like the mechanism registry:
 * each names the session it needs, the attributes it takes, and its handler
 * in a file of its own.
 */
#ifndef GUARDIAN_MECHS_REQUEST_H
#define GUARDIAN_MECHS_REQUEST_H

#include <stdbool.h>

#include "p11.h"

struct guardian_store;

struct guardian_request {
    const CK_ATTRIBUTE *templ;
    CK_ULONG count;
    CK_ULONG type; /* CKG_GUARDIAN_REQ_* */
};

/* The attribute `type` of the request, or NULL. */
const CK_ATTRIBUTE *guardian_request_attr(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type);
/* A CK_ULONG attribute: CKR_OK, or CKR_GUARDIAN_REQUEST_INVALID (logged) when
 * it is absent and required, or of the wrong size. */
CK_RV guardian_request_ulong(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, bool required,
                             CK_ULONG *out);

/* A byte-string attribute: CKR_OK and *out (NULL when it is absent and not
 * required), or CKR_GUARDIAN_REQUEST_INVALID (logged) when it is absent and
 * required, or has no value but a length. */
CK_RV guardian_request_bytes(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, bool required,
                             const CK_ATTRIBUTE **out);

/* A required OEM or product ID attribute (`name` for the log): 1..64 bytes
 * without NUL, copied NUL-terminated into out (GUARDIAN_ID_MAX + 1 bytes);
 * CKR_GUARDIAN_REQUEST_INVALID (logged) otherwise. */
CK_RV guardian_request_id(const struct guardian_request *rq, CK_ATTRIBUTE_TYPE type, const char *name, char *out);

typedef CK_RV (*guardian_request_fn)(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                     const struct guardian_request *rq, CK_OBJECT_HANDLE *out);

enum guardian_request_session {
    GUARDIAN_REQUEST_USER,    /* a session with the user logged in */
    GUARDIAN_REQUEST_USER_RW, /* a read-write session with the user logged in */
    GUARDIAN_REQUEST_SO,   /* a read-write Security Officer session */
};

struct guardian_request_type {
    CK_ULONG type;
    const char *name;
    enum guardian_request_session session;
    /* The attributes it takes besides CKA_CLASS and CKA_GUARDIAN_REQUEST;
     * any other is refused. */
    const CK_ATTRIBUTE_TYPE *attributes;
    size_t n_attributes;
    guardian_request_fn run;
};

extern const struct guardian_request_type guardian_request_enrol_root;
extern const struct guardian_request_type guardian_request_identity;
extern const struct guardian_request_type guardian_request_identity_csr;
extern const struct guardian_request_type guardian_request_identity_cert;
extern const struct guardian_request_type guardian_request_audit_export; /* audit_export.c */
extern const struct guardian_request_type guardian_request_probe;        /* probe.c */
extern const struct guardian_request_type guardian_request_import;       /* unwrap_package.c */
extern const struct guardian_request_type guardian_request_device_cert;  /* derive_device_cert.c */
extern const struct guardian_request_type guardian_request_device_certs; /* derive_device_cert.c */
extern const struct guardian_request_type guardian_request_status;       /* status.c */
extern const struct guardian_request_type guardian_request_retire_ca;    /* retire.c */
extern const struct guardian_request_type guardian_request_part_outcome; /* outcome.c */
extern const struct guardian_request_type guardian_request_ca_key;       /* ca_request.c */

/* A device ID as the derive mechanism checks it (derive_device_cert.c): its
 * format CKG_GUARDIAN_DEVICE_ID_TEXT (1..64 of A-Z a-z 0-9 - . _ :) or
 * _BINARY (1..32 bytes), copied into out[64] (*out_len bytes) and written
 * for a log line into text[65] (binary: lower-case hex).  CKR_OK, or
 * CKR_GUARDIAN_DEVICE_ID_INVALID with a log line. */
CK_RV guardian_device_id_check(CK_ULONG format, const CK_BYTE *id, CK_ULONG id_len, uint8_t out[64], size_t *out_len,
                               char text[65]);

/* Non-zero when the template is a request (CKA_CLASS = CKO_GUARDIAN_REQUEST). */
int guardian_request_is(const CK_ATTRIBUTE *templ, CK_ULONG count);
/* Check the session and the attributes, then run the request. */
CK_RV guardian_request_run(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                           const CK_ATTRIBUTE *templ, CK_ULONG count, CK_OBJECT_HANDLE *out);

/* Enrolment (enrol_root.c), shared with the import. */
/* Non-zero when `ids` (`len` bytes, no NUL) is a valid comma-separated list
 * of OEM IDs; otherwise `why` says what is wrong. */
int guardian_root_oem_ids_valid(const char *ids, size_t len, char *why, size_t why_len);
/* Non-zero when an enrolled root's CKA_LABEL ("guardian-root:A,B") names `oem_id`. */
int guardian_root_allows(const char *label, size_t label_len, const char *oem_id);

#endif /* GUARDIAN_MECHS_REQUEST_H */
