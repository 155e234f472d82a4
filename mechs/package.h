/*
 * package.h — the Guardian package format (docs/package-format.md), shared by
 * the module (unwrap-into-token) and the OEM's guardian-wrap tool.
 *
 * A package is a DER CMS ContentInfo of type SignedData whose encapsulated
 * content (type id-guardian-package) is the DER GuardianPackage below.  This
 * file holds the ASN.1 templates, the decoder with its limits, and the key
 * transport's public computations (the KDF context); it never touches a
 * secret: key material is unwrapped inside the backend.
 */
#ifndef GUARDIAN_MECHS_PACKAGE_H
#define GUARDIAN_MECHS_PACKAGE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/asn1t.h>
#include <openssl/cms.h>
#include <openssl/x509.h>

/* 2.25.<UUID 2f36db1f-1018-40c0-94de-156991ce1eaf>: an arc that needs no
 * registration (ITU-T X.667). */
#define GUARDIAN_OID_ARC "2.25.62758544141009244537205961397770264239"
#define GUARDIAN_OID_PACKAGE GUARDIAN_OID_ARC ".1"
#define GUARDIAN_OID_KT_ECDH_AESCBC GUARDIAN_OID_ARC ".2.1"
#define GUARDIAN_OID_KT_ECDH_SHA256KDF GUARDIAN_OID_ARC ".2.2"
/* No key transport: a version-2 package with no wrapped key and no
 * confidential item; its ephemeralKey is empty. */
#define GUARDIAN_OID_KT_NONE GUARDIAN_OID_ARC ".2.0"
/* id-guardian-transports: a non-critical extension of the Guardian's
 * agreement certificate A, SEQUENCE OF OBJECT IDENTIFIER, the key-transport
 * schemes above that this Guardian can import with, measured on its token
 * when A was made, strongest first (mechs/transport.h,
 * docs/package-format.md "Which transports a Guardian states"). */
#define GUARDIAN_OID_TRANSPORTS GUARDIAN_OID_ARC ".3.1"
/* id-guardian-kt-rsaoaep-sha256-v1: for a Guardian whose agreement key is RSA
 * (a token without EC).  A fresh 32-byte AES KEK, RSAES-OAEP encrypted to A's
 * key (SHA-256, MGF1-SHA-256, label = C of guardian_kek_context with no
 * point), in ephemeralKey (the modulus' length, 256..512 bytes); every key and
 * confidential item AES-256-CBC with PKCS#7 padding under the KEK, wrapped =
 * IV (16 bytes) || ciphertext (docs/package-format.md, "RSA-OAEP"). */
#define GUARDIAN_OID_KT_RSAOAEP_SHA256 GUARDIAN_OID_ARC ".2.3"
#define GUARDIAN_KT_RSAOAEP_IV_LEN 16

#define GUARDIAN_PACKAGE_VERSION 1
/* Version 2: the production CA key is in the Guardian (made there by
 * CKG_GUARDIAN_REQ_CA_KEY); the package carries its certificate and no key:
 * productionCa.key.wrapped is empty, the package ID is the key's CKA_ID, and
 * the transport may be id-guardian-kt-none (no secret at all).  Version-1
 * readers refuse it (docs/package-format.md, "Version 2"). */
#define GUARDIAN_PACKAGE_VERSION_CA_IN_GUARDIAN 2
#define GUARDIAN_PACKAGE_MAX_BYTES (1024 * 1024)
#define GUARDIAN_PKG_ID_LEN 16
#define GUARDIAN_PKG_HASH_LEN 32
#define GUARDIAN_PKG_NAME_MAX 64
#define GUARDIAN_PKG_MAX_ITEMS 32        /* extra keys, data items, chain certs */
#define GUARDIAN_PKG_MAX_DATA_BYTES 65536 /* one data item's value */
#define GUARDIAN_KEK_CONTEXT_LABEL "GUARDIAN-KEK-v1"

/* Data item protection. */
#define GUARDIAN_DATA_INTEGRITY 0
#define GUARDIAN_DATA_CONFIDENTIAL 1

typedef struct {
    ASN1_UTF8STRING *label;
    ASN1_INTEGER *key_type; /* CKK_* */
    ASN1_OCTET_STRING *wrapped;
} GUARDIAN_WRAPPED_KEY;

typedef struct {
    ASN1_UTF8STRING *name;
    ASN1_ENUMERATED *protection;
    ASN1_OCTET_STRING *value;
} GUARDIAN_DATA_ITEM;

typedef struct {
    ASN1_UTF8STRING *subject;       /* pattern, e.g. "CN=${device_id},O=${oem_id}" */
    ASN1_INTEGER *validity_days;
    ASN1_BIT_STRING *key_usage;     /* X.509 KeyUsage bits */
    STACK_OF(ASN1_OBJECT) *ext_key_usage; /* OPTIONAL */
    ASN1_OBJECT *device_ext_oid;    /* [0] OPTIONAL: the device-identity extension's OID */
    ASN1_NULL *no_device_ext;       /* [1] OPTIONAL: present = no device-identity extension */
} GUARDIAN_CERT_TEMPLATE;

typedef struct {
    ASN1_OBJECT *scheme;
    ASN1_OCTET_STRING *ephemeral_key; /* X9.62 uncompressed point */
} GUARDIAN_KEY_TRANSPORT;

/* A group package (docs/package-format.md, "A package for a group of
 * Guardians"): one member, the KEK of the package wrapped for it. */
typedef struct {
    ASN1_OCTET_STRING *guardian;      /* SHA-256 of the member's certificate A */
    ASN1_OCTET_STRING *ephemeral_key; /* its ECDH ephemeral point (X9.62 uncompressed, its curve) */
    ASN1_OCTET_STRING *wrapped_kek;   /* RFC 5649 of the package KEK under the member's KEK: 40 bytes */
} GUARDIAN_GROUP_MEMBER;

DEFINE_STACK_OF(GUARDIAN_WRAPPED_KEY)
DEFINE_STACK_OF(GUARDIAN_DATA_ITEM)
DEFINE_STACK_OF(GUARDIAN_GROUP_MEMBER)

typedef struct {
    GUARDIAN_WRAPPED_KEY *key;
    STACK_OF(X509) *chain; /* production CA certificate first */
} GUARDIAN_PRODUCTION_CA;

typedef struct {
    ASN1_INTEGER *version;
    ASN1_OCTET_STRING *package_id;
    ASN1_OCTET_STRING *target_guardian;
    ASN1_UTF8STRING *oem_id;
    ASN1_UTF8STRING *product_id;
    ASN1_INTEGER *release_version;
    ASN1_INTEGER *authorised_units;
    ASN1_GENERALIZEDTIME *not_after;
    GUARDIAN_CERT_TEMPLATE *cert_template;
    GUARDIAN_KEY_TRANSPORT *transport;
    GUARDIAN_PRODUCTION_CA *production_ca;
    STACK_OF(GUARDIAN_WRAPPED_KEY) *extra_keys; /* [0] OPTIONAL */
    STACK_OF(GUARDIAN_DATA_ITEM) *data_items;   /* [1] OPTIONAL */
    STACK_OF(GUARDIAN_GROUP_MEMBER) *group;     /* [2] OPTIONAL: the members of a group package */
} GUARDIAN_PACKAGE;

DECLARE_ASN1_FUNCTIONS(GUARDIAN_WRAPPED_KEY)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_DATA_ITEM)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_CERT_TEMPLATE)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_KEY_TRANSPORT)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_PRODUCTION_CA)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_PACKAGE)
DECLARE_ASN1_FUNCTIONS(GUARDIAN_GROUP_MEMBER)

/* A group package names 2..GUARDIAN_GROUP_MAX members, in ascending order of
 * their certificate digests (one encoding, no member twice); its
 * targetGuardian is the group ID, SHA-256(GUARDIAN_GROUP_ID_LABEL || each
 * member's digest in that order), and its keyTransport.ephemeralKey is empty:
 * each member has its own ephemeral key and its own wrapped copy of the
 * package KEK.  Why 16: one OEM's site runs a handful of lines; each member
 * adds ~150 bytes and one line of `inspect`; a larger group is two packages. */
#define GUARDIAN_GROUP_MAX 16
#define GUARDIAN_GROUP_ID_LABEL "GUARDIAN-GROUP-v1"
#define GUARDIAN_GROUP_WRAPPED_KEK_LEN 40 /* RFC 5649 of a 32-byte key */

/* The checked, plain view of a decoded package (pointers into `asn1`). */
struct guardian_package {
    GUARDIAN_PACKAGE *asn1;
    uint8_t package_id[GUARDIAN_PKG_ID_LEN];
    uint8_t target_guardian[GUARDIAN_PKG_HASH_LEN];
    char oem_id[GUARDIAN_PKG_NAME_MAX + 1];
    char product_id[GUARDIAN_PKG_NAME_MAX + 1];
    uint32_t release_version;
    uint64_t authorised_units;
    int64_t not_after; /* seconds since the epoch */
    int scheme;        /* GUARDIAN_KT_* */
    int ca_in_guardian; /* version 2: the production CA key is the Guardian's own */
    int group_members;  /* a group package: its member count (2..GUARDIAN_GROUP_MAX); 0 otherwise */
};

#define GUARDIAN_KT_ECDH_AESCBC 1
#define GUARDIAN_KT_ECDH_SHA256KDF 2
#define GUARDIAN_KT_NONE 3
#define GUARDIAN_KT_RSAOAEP_SHA256 4

/* Decode the DER GuardianPackage content (not the CMS wrapper) and check every
 * field against the format's limits.  On failure returns 0 and writes one line
 * to `err`; `out` is then empty.  guardian_package_free releases it. */
int guardian_package_decode(const uint8_t *der, size_t len, struct guardian_package *out, char *err,
                            size_t errlen);
void guardian_package_free(struct guardian_package *pkg);

/* C = SHA-256(label || package_id || target_guardian || ephemeral point): the
 * KDF context that binds the KEK to this package and this Guardian.  One
 * definition for both sides: guardian-wrap (making) and the module (opening). */
int guardian_kek_context(const uint8_t package_id[GUARDIAN_PKG_ID_LEN], const uint8_t target[GUARDIAN_PKG_HASH_LEN],
                         const uint8_t *ephemeral_point, size_t point_len, uint8_t out[32]);
/* The same, from a decoded package (for GUARDIAN_KT_RSAOAEP_SHA256 with no
 * point: the OAEP label; the ciphertext is under the OEM's signature). */
int guardian_package_kek_context(const struct guardian_package *pkg, uint8_t out[32]);

/* The device-identity extension (docs/certificate-profile.md).  A template
 * says one of three things, and the signed package fixes which:
 *   [1] noDeviceExt present: no such extension (what `guardian-wrap create`
 *       writes unless the OEM names an OID: Go 1.19's crypto/x509 and
 *       Python cryptography 38 refuse a whole certificate whose extension OID
 *       has an arc over 64 bits, and we own no enterprise number);
 *   [0] deviceExtOid: the extension under the OEM's own OID;
 *   neither: GUARDIAN_OID_DEVICE (2.25.<uuid>.3), the legacy default, so a
 *       package signed before [1] existed keeps meaning what it meant.
 * Both at once is refused.  Accepted OIDs: 3..32 bytes of DER contents, not
 * under id-ce (2.5.29) or id-pkix (1.3.6.1.5.5.7). */
#define GUARDIAN_OID_DEVICE GUARDIAN_OID_ARC ".3"
#define GUARDIAN_DEVICE_EXT_OID_MAX 32
int guardian_device_ext_oid_ok(const ASN1_OBJECT *oid);
/* The OID a template puts the extension under, as DER contents into `oid`
 * (GUARDIAN_DEVICE_EXT_OID_MAX bytes): its length, 0 for no extension, -1 for
 * a template that is invalid (both fields, or an unacceptable OID).  One
 * reading for the module (mechs/cert_builder.c) and the verifier (tools/report.c). */
int guardian_template_device_ext(const GUARDIAN_CERT_TEMPLATE *t, uint8_t oid[GUARDIAN_DEVICE_EXT_OID_MAX]);

/* The alphabet of OEM IDs, product IDs and text device IDs, which end up in
 * certificate subjects and file names: A-Z a-z 0-9 . _ - : */
int guardian_id_char(unsigned char c);
/* An OEM or product ID of a package (1..GUARDIAN_PKG_NAME_MAX bytes of that
 * alphabet) copied NUL-terminated into out; 0 when it is not one. */
int guardian_pkg_id_copy(const ASN1_UTF8STRING *s, char out[GUARDIAN_PKG_NAME_MAX + 1]);

/* The group ID of `n` member digests (concatenated, 32 bytes each): what a
 * group package's targetGuardian holds. */
int guardian_group_id(const uint8_t *members, size_t n, uint8_t out[GUARDIAN_PKG_HASH_LEN]);
/* The index of the member whose certificate digest is `self` in a decoded
 * group package, -1 when it is not a member (or not a group package). */
int guardian_group_member(const struct guardian_package *pkg, const uint8_t self[GUARDIAN_PKG_HASH_LEN]);
/* C of member `i`: guardian_kek_context over its digest and its point. */
int guardian_group_kek_context(const struct guardian_package *pkg, int i, uint8_t out[32]);

/* Map a scheme OID to GUARDIAN_KT_*, 0 if unknown. */
int guardian_package_scheme(const ASN1_OBJECT *oid);

#endif /* GUARDIAN_MECHS_PACKAGE_H */
