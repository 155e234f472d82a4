/*
 * derive_device_cert.c — CKM_GUARDIAN_DERIVE_DEVICE_CERT (C_DeriveKey).
 *
 * Issues an X.509 device certificate signed inside the backend by an imported
 * production CA key.  SoftHSMv2 has no ECDSA-with-hash mechanism, so the
 * certificate is hashed by the module and signed with raw CKM_ECDSA: that is the
 * primitive a slot must offer.  Not implemented yet (issue #4): until then the
 * mechanism is reserved, never advertised, and CKR_MECHANISM_INVALID.
 */
#include "registry.h"
/* after registry.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static const CK_MECHANISM_TYPE requires[] = {
    CKM_ECDSA,
};

const struct guardian_mech guardian_mech_derive_device_cert = {
    .type = CKM_GUARDIAN_DERIVE_DEVICE_CERT,
    .name = "CKM_GUARDIAN_DERIVE_DEVICE_CERT",
    .info = {.ulMinKeySize = 256, .ulMaxKeySize = 4096, .flags = CKF_DERIVE},
    .requires = requires,
    .n_requires = sizeof(requires) / sizeof(requires[0]),
    .derive = NULL,
};
