/*
 * guardian_fixture.h — Guardian steps the integration tests share (needs
 * OpenSSL; softhsm_token.h is the token itself).
 */
#ifndef GUARDIAN_TEST_FIXTURE_H
#define GUARDIAN_TEST_FIXTURE_H

#include <stddef.h>

#include "p11.h"

/* The Security Officer enrols the OEM root in the PEM file `pem_path` for
 * `oem_ids` ("ACME,BETA") with CKG_GUARDIAN_REQ_ENROL_ROOT, in a session of
 * its own on `slot` (no user may be logged in meanwhile).  Returns the
 * request's CKR code; *out the trusted certificate object on success. */
CK_RV test_enrol_root(CK_FUNCTION_LIST *m, CK_SLOT_ID slot, const char *pem_path, const char *oem_ids,
                      CK_OBJECT_HANDLE *out);

/* `dir`/`name`, in one of 8 buffers used in turn (so that a few can be held
 * at once). */
const char *test_path(const char *dir, const char *name);
/* The whole file at `path`, malloc'd with one spare byte (cmocka-asserted). */
unsigned char *test_slurp(const char *path, size_t *len);
/* How many objects session `s` sees. */
CK_ULONG test_count_objects(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s);

#endif
