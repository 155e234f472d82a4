/*
 * unwrap_package.c — CKM_GUARDIAN_UNWRAP_PACKAGE (C_UnwrapKey).
 *
 * Imports a signed, encrypted Guardian package into the token.  The key
 * transport runs inside the backend: ECDH1 key agreement with the Guardian's
 * key, an AES *_ENCRYPT_DATA derivation as KDF, then AES key unwrap with padding
 * (RFC 5649) of each PKCS#8 key.  Those are the primitives a slot must offer.
 * The import itself is not implemented yet (issue #3): until then the
 * mechanism is reserved, never advertised, and CKR_MECHANISM_INVALID.
 */
#include "registry.h"
/* after registry.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

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
    .unwrap = NULL,
};
