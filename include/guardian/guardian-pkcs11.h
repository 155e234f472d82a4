/*
 * guardian-pkcs11.h — the public vendor interface of the Guardian PKCS#11 module.
 *
 * Include your PKCS#11 header (pkcs11.h, p11-kit/pkcs11.h, OpenSC's, ...) first.
 *
 * Numbering: every vendor value is  <PKCS#11 *_VENDOR_DEFINED> | 0x47440000 | n
 * ("GD" = Guardian), with n in 0x0000..0xFFFF.  The same 16-bit window is used for
 * mechanisms, attributes, object classes and return values, so a value seen in a
 * trace names its kind and its owner at a glance.  Numbers are never reused: a
 * retired value stays reserved here with a comment.
 *
 * Parameter structures (added with the mechanisms that use them) are flat, start
 * with a CK_ULONG version field, and their length is checked exactly by the module
 * (CKR_MECHANISM_PARAM_INVALID otherwise).  See docs/vendor-interface.md.
 */
#ifndef GUARDIAN_PKCS11_H
#define GUARDIAN_PKCS11_H

#ifndef CKM_VENDOR_DEFINED
#error "include a PKCS#11 header (pkcs11.h) before guardian/guardian-pkcs11.h"
#endif

#define GUARDIAN_VENDOR_PREFIX 0x47440000UL /* 'G' 'D' */

/* Ranges: [BASE, BASE + 0xFFFF] of each kind belongs to Guardian. */
#define CKM_GUARDIAN_BASE (CKM_VENDOR_DEFINED | GUARDIAN_VENDOR_PREFIX)
#define CKA_GUARDIAN_BASE (CKA_VENDOR_DEFINED | GUARDIAN_VENDOR_PREFIX)
#define CKO_GUARDIAN_BASE (CKO_VENDOR_DEFINED | GUARDIAN_VENDOR_PREFIX)
#define CKR_GUARDIAN_BASE (CKR_VENDOR_DEFINED | GUARDIAN_VENDOR_PREFIX)

#define GUARDIAN_IS_VENDOR_VALUE(kind_base, v) \
    (((unsigned long)(v) & ~0xFFFFUL) == (unsigned long)(kind_base))

/* ---- Mechanisms -------------------------------------------------------- */

/* C_UnwrapKey: import a wrapped Guardian package into the token.
 * hUnwrappingKey = the Guardian's key-agreement key, pWrappedKey = the package. */
#define CKM_GUARDIAN_UNWRAP_PACKAGE (CKM_GUARDIAN_BASE | 0x0001UL)

/* C_DeriveKey: issue a device certificate signed by an imported production CA key.
 * hBaseKey = the production CA private key; pParameter = a
 * CK_GUARDIAN_DEVICE_CERT_PARAMS; the result is a CKO_CERTIFICATE (CKC_X_509),
 * a session object unless the template sets CKA_TOKEN TRUE.
 * See docs/derive-mechanism.md. */
#define CKM_GUARDIAN_DERIVE_DEVICE_CERT (CKM_GUARDIAN_BASE | 0x0002UL)

/* ---- Mechanism parameters ------------------------------------------------ */

/* Device ID formats (CK_GUARDIAN_DEVICE_CERT_PARAMS.deviceIdFormat). */
/* 1..64 characters of A-Z a-z 0-9 and - . _ : (e.g. a printed serial number). */
#define CKG_GUARDIAN_DEVICE_ID_TEXT 1UL
/* 1..32 raw bytes (e.g. a chip's unique ID); written as lowercase hex in the
 * certificate's subject. */
#define CKG_GUARDIAN_DEVICE_ID_BINARY 2UL

#define CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION 1UL

/* Flat: no pointer to a pointer, nothing written back.  ulParameterLen must be
 * exactly sizeof(CK_GUARDIAN_DEVICE_CERT_PARAMS). */
typedef struct CK_GUARDIAN_DEVICE_CERT_PARAMS {
    CK_ULONG version;            /* CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION */
    CK_ULONG deviceIdFormat;     /* CKG_GUARDIAN_DEVICE_ID_* */
    CK_BYTE_PTR pDeviceId;
    CK_ULONG ulDeviceIdLen;
    CK_BYTE_PTR pPublicKeyInfo;  /* the device's SubjectPublicKeyInfo, DER */
    CK_ULONG ulPublicKeyInfoLen; /* EC P-256/P-384 (named curve, uncompressed point) or RSA 2048..4096 */
} CK_GUARDIAN_DEVICE_CERT_PARAMS;

/* ---- Object class and attributes -------------------------------------------- */

/* The package object: one per installed product release, served by the module
 * (C_UnwrapKey with CKM_GUARDIAN_UNWRAP_PACKAGE returns its handle; C_FindObjects
 * finds it by class, CKA_ID or label).  Read-only, CKA_TOKEN TRUE, CKA_PRIVATE
 * FALSE.  Counters are live from the Guardian's store. */
#define CKO_GUARDIAN_PACKAGE (CKO_GUARDIAN_BASE | 0x0001UL)

#define CKA_GUARDIAN_OEM_ID (CKA_GUARDIAN_BASE | 0x0001UL)           /* UTF-8, no NUL */
#define CKA_GUARDIAN_PRODUCT_ID (CKA_GUARDIAN_BASE | 0x0002UL)       /* UTF-8, no NUL */
#define CKA_GUARDIAN_RELEASE (CKA_GUARDIAN_BASE | 0x0003UL)          /* CK_ULONG */
#define CKA_GUARDIAN_AUTHORISED_UNITS (CKA_GUARDIAN_BASE | 0x0004UL) /* CK_ULONG */
#define CKA_GUARDIAN_ISSUED_UNITS (CKA_GUARDIAN_BASE | 0x0005UL)     /* CK_ULONG */
#define CKA_GUARDIAN_REMAINING_UNITS (CKA_GUARDIAN_BASE | 0x0006UL)  /* CK_ULONG */
#define CKA_GUARDIAN_NOT_AFTER (CKA_GUARDIAN_BASE | 0x0007UL)        /* CK_ULONG, seconds since 1970 UTC */
#define CKA_GUARDIAN_PACKAGE_ID (CKA_GUARDIAN_BASE | 0x0008UL)       /* 16 bytes (also its CKA_ID) */

/* Request objects (C_CreateObject with CKA_CLASS = CKO_GUARDIAN_REQUEST): a
 * Guardian operation asked for with calls any PKCS#11 binding and remoting
 * layer carries.  The request is never stored: the call runs the operation and
 * returns the handle of its result (see docs/vendor-interface.md). */
#define CKO_GUARDIAN_REQUEST (CKO_GUARDIAN_BASE | 0x0002UL)

#define CKA_GUARDIAN_REQUEST (CKA_GUARDIAN_BASE | 0x0010UL)   /* CK_ULONG: CKG_GUARDIAN_REQ_* */
#define CKA_GUARDIAN_OEM_IDS (CKA_GUARDIAN_BASE | 0x0011UL)   /* UTF-8, comma-separated, no NUL */
#define CKA_GUARDIAN_VALIDITY_DAYS (CKA_GUARDIAN_BASE | 0x0012UL) /* CK_ULONG */
/* CKG_GUARDIAN_REQ_DEVICE_CERT: the device, as CK_GUARDIAN_DEVICE_CERT_PARAMS
 * carries it for the derive mechanism. */
#define CKA_GUARDIAN_DEVICE_ID (CKA_GUARDIAN_BASE | 0x0013UL)        /* bytes: pDeviceId */
#define CKA_GUARDIAN_DEVICE_ID_FORMAT (CKA_GUARDIAN_BASE | 0x0014UL) /* CK_ULONG: CKG_GUARDIAN_DEVICE_ID_* */
#define CKA_GUARDIAN_DEVICE_SPKI (CKA_GUARDIAN_BASE | 0x0015UL)      /* SubjectPublicKeyInfo, DER */
/* CKG_GUARDIAN_REQ_DEVICE_CERTS: 1..64 devices, each encoded as
 * format (4 bytes, big-endian), ID length (2, BE), ID, SPKI length (2, BE),
 * SPKI; a byte string, so no CK_ULONG inside it crosses a remoting layer in
 * the sender's byte order (docs/vendor-interface.md, "The batch encoding"). */
#define CKA_GUARDIAN_DEVICE_BATCH (CKA_GUARDIAN_BASE | 0x0016UL)
/* CKG_GUARDIAN_REQ_PART_OUTCOME: CK_ULONG, CKG_GUARDIAN_OUTCOME_*. */
#define CKA_GUARDIAN_PART_OUTCOME (CKA_GUARDIAN_BASE | 0x0017UL)
/* CK_BBOOL, in the derive template, a CKG_GUARDIAN_REQ_DEVICE_CERT or a
 * CKG_GUARDIAN_REQ_DEVICE_CERTS request: TRUE allows a device ID that already
 * has a certificate with another key to get a new one (a unit spent, a
 * REISSUE audit record); without it that is CKR_GUARDIAN_DEVICE_ALREADY_ISSUED.
 * The same key asked for again returns the certificate already issued either
 * way (docs/derive-mechanism.md, "Asking again"). */
#define CKA_GUARDIAN_REISSUE (CKA_GUARDIAN_BASE | 0x0018UL)
/* CKG_GUARDIAN_REQ_CA_KEY: CK_ULONG, CKG_GUARDIAN_CA_KEY_*: the production CA
 * key pair the Guardian makes.  Without it the module chooses by what the
 * slot can do: P-256 where it lists CKM_EC_KEY_PAIR_GEN and CKM_ECDSA, else
 * RSA 2048 (a token without EC). */
#define CKA_GUARDIAN_CA_KEY_TYPE (CKA_GUARDIAN_BASE | 0x0020UL)

/* CKG_GUARDIAN_CA_KEY_* values of CKA_GUARDIAN_CA_KEY_TYPE. */
#define CKG_GUARDIAN_CA_KEY_P256 1UL    /* EC P-256, ecdsa-with-SHA256 */
#define CKG_GUARDIAN_CA_KEY_P384 2UL    /* EC P-384, ecdsa-with-SHA384 */
#define CKG_GUARDIAN_CA_KEY_RSA2048 3UL /* RSA 2048, sha256WithRSAEncryption */

/* CKG_GUARDIAN_REQ_IDENTITY and _IDENTITY_CSR: CK_ULONG, CKG_GUARDIAN_IDENTITY_*:
 * the type of both identity key pairs, when the token has none yet.  Without
 * it the module chooses by what the slot can do: P-256 where it lists
 * CKM_EC_KEY_PAIR_GEN and CKM_ECDSA, else RSA 3072 (opencryptoki's soft
 * token has no EC).  Existing keys keep their type (docs/vendor-interface.md). */
#define CKA_GUARDIAN_IDENTITY_KEY_TYPE (CKA_GUARDIAN_BASE | 0x0024UL)

/* CKG_GUARDIAN_IDENTITY_* values of CKA_GUARDIAN_IDENTITY_KEY_TYPE. */
#define CKG_GUARDIAN_IDENTITY_P256 1UL    /* ECDH agreement, ECDSA signing */
#define CKG_GUARDIAN_IDENTITY_RSA2048 2UL /* RSA-OAEP-SHA256 unwrap, sha256WithRSAEncryption */
#define CKG_GUARDIAN_IDENTITY_RSA3072 3UL /* the same, 3072 bits */

/* CKG_GUARDIAN_OUTCOME_* values of CKA_GUARDIAN_PART_OUTCOME. */
#define CKG_GUARDIAN_OUTCOME_PROGRAMMED 1UL /* the part was programmed with its certificate */
#define CKG_GUARDIAN_OUTCOME_SCRAPPED 2UL   /* the part was scrapped (its unit stays spent) */

/* CKG_GUARDIAN_REQ_* values of CKA_GUARDIAN_REQUEST. */
/* SO session: enrol CKA_VALUE (an OEM root CA certificate, DER) for the OEM IDs
 * in CKA_GUARDIAN_OEM_IDS; returns the trusted certificate object. */
#define CKG_GUARDIAN_REQ_ENROL_ROOT 1UL
/* User session: the audit report (docs/audit-report.md), built from the store
 * and signed by the Guardian; CKA_GUARDIAN_OEM_ID + CKA_GUARDIAN_PRODUCT_ID
 * narrow it to one product.  Each export is recorded first (an EXPORT audit
 * record: who, when, what scope), as the report's last record.  Returns a
 * session CKO_DATA object whose CKA_VALUE is the report. */
#define CKG_GUARDIAN_REQ_AUDIT_EXPORT 2UL
/* User session: make the Guardian's identity (keys made by the module, never
 * by the caller) and its self-signed certificate (CKA_LABEL = subject CN,
 * CKA_GUARDIAN_VALIDITY_DAYS); idempotent.  Returns the certificate object. */
#define CKG_GUARDIAN_REQ_IDENTITY 3UL
/* User session: a CSR for the Guardian's key (CKA_LABEL = subject CN), signed
 * by the Guardian; returns a session CKO_DATA object whose CKA_VALUE is the
 * CSR, DER. */
#define CKG_GUARDIAN_REQ_IDENTITY_CSR 4UL
/* User session: install CKA_VALUE (a certificate for the Guardian's key, DER:
 * a centre CA's answer to the CSR, or a renewal) as the Guardian certificate,
 * replacing the previous one.  Returns the certificate object. */
#define CKG_GUARDIAN_REQ_IDENTITY_CERT 5UL
/* User session, read-write: find out which key protections the backend really
 * enforces (CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_MODIFIABLE, CKA_COPYABLE, usage
 * flags, CKA_ALLOWED_MECHANISMS, derive and unwrap templates, CKA_DESTROYABLE,
 * CKA_TRUSTED for the SO alone) by trying each on throwaway session objects.
 * Returns a session CKO_DATA object whose CKA_VALUE is text, one line per
 * protection: "<name> <ENFORCED|NOT-ENFORCED|UNSUPPORTED> <CKR name> <what the
 * holder of the backend's PIN could do when it is not enforced>"
 * (docs/backend-protections.md). */
#define CKG_GUARDIAN_REQ_PROBE 6UL
/* User session, read-write: import CKA_VALUE (a package file's bytes) with the
 * Guardian's agreement key, found by the module (CKA_ID "guardian-identity"):
 * exactly what C_UnwrapKey with CKM_GUARDIAN_UNWRAP_PACKAGE does (the same
 * checks, CKR codes, atomicity and audit record).  Returns the
 * CKO_GUARDIAN_PACKAGE object. */
#define CKG_GUARDIAN_REQ_IMPORT 7UL
/* User session: issue one device certificate, exactly what C_DeriveKey with
 * CKM_GUARDIAN_DERIVE_DEVICE_CERT does, with the production CA key of the
 * package CKA_GUARDIAN_PACKAGE_ID, or of the installed release of
 * CKA_GUARDIAN_OEM_ID + CKA_GUARDIAN_PRODUCT_ID.  The device:
 * CKA_GUARDIAN_DEVICE_ID, CKA_GUARDIAN_DEVICE_ID_FORMAT (optional, default
 * CKG_GUARDIAN_DEVICE_ID_TEXT), CKA_GUARDIAN_DEVICE_SPKI; optional CKA_TOKEN,
 * CKA_LABEL, CKA_ID of the certificate object and CKA_GUARDIAN_REISSUE, as the
 * derive template takes them.  Returns the certificate object
 * (CKO_CERTIFICATE, CKA_VALUE = DER).  A device ID that already holds a
 * certificate of the product gets that certificate again for the same key
 * (nothing spent) and CKR_GUARDIAN_DEVICE_ALREADY_ISSUED for another key,
 * unless CKA_GUARDIAN_REISSUE TRUE (docs/derive-mechanism.md, "Asking
 * again"). */
#define CKG_GUARDIAN_REQ_DEVICE_CERT 8UL
/* User session (read-only will do): the Guardian's state as only the module
 * can read it, checked now: the configuration's paths, the audit trail's hash
 * chain walked from its first record (its head, the records by type), the
 * store against the token's anchor, the installed products and their units,
 * the service mode and the Guardian's credentials counted (SO set, operators,
 * locked ones).  No secret, no credential's name.  Returns a session CKO_DATA object whose CKA_VALUE is text, one
 * "key=value" per line (docs/vendor-interface.md, "The status"). */
#define CKG_GUARDIAN_REQ_STATUS 9UL
/* User session (read-only will do): issue up to 64 device certificates in one
 * call, for a gang programmer, each exactly as CKG_GUARDIAN_REQ_DEVICE_CERT
 * would.  The package as for CKG_GUARDIAN_REQ_DEVICE_CERT; the devices in
 * CKA_GUARDIAN_DEVICE_BATCH; optional CKA_GUARDIAN_REISSUE for all of them.  Every entry is checked before any is issued (a
 * bad one refuses the whole request, with the single request's code); then
 * they are issued in order until one fails (the quota, say): those before it
 * stay issued.  Returns a session CKO_DATA object "guardian-output:device-certs"
 * whose CKA_VALUE holds one record per entry: status (the entry's CKR, 4
 * bytes BE), certificate length (4, BE), the DER.  The call returns CKR_OK
 * when at least one certificate was issued, else the first entry's CKR. */
#define CKG_GUARDIAN_REQ_DEVICE_CERTS 10UL
/* User session (read-only will do): the line reports what became of a part
 * whose certificate was issued: CKA_GUARDIAN_OEM_ID + CKA_GUARDIAN_PRODUCT_ID,
 * CKA_GUARDIAN_DEVICE_ID (+ CKA_GUARDIAN_DEVICE_ID_FORMAT, default text),
 * CKA_GUARDIAN_PART_OUTCOME.  The device must hold a certificate of this
 * Guardian for that product (else CKR_GUARDIAN_DEVICE_NOT_ISSUED); an OUTCOME
 * audit record is written (the same outcome again writes nothing;
 * programmed then scrapped is recorded; scrapped then programmed is
 * CKR_GUARDIAN_PART_SCRAPPED).  Units stay spent.  Returns a session CKO_DATA
 * object "guardian-output:part-outcome" whose CKA_VALUE is text:
 * "serial=N outcome=programmed|scrapped recorded=yes|no\n". */
#define CKG_GUARDIAN_REQ_PART_OUTCOME 11UL
/* Read-write user session: retire a superseded release's production CA key.
 * CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_RELEASE name an
 * imported release that is not the installed one.  The module records a
 * RETIRE audit record (the operator, the package ID, the release), then
 * destroys that release's production CA private key and its certificate
 * object in the backend.  Refused: the installed release
 * (CKR_GUARDIAN_RELEASE_CURRENT), a release never imported
 * (CKR_GUARDIAN_PRODUCT_UNKNOWN), one retired already whose key is gone
 * (CKR_GUARDIAN_CA_RETIRED; a recorded one whose key a crash left is
 * destroyed, without a second record).  Returns a session CKO_DATA object
 * "guardian-output:retire-ca", "key=value" lines (docs/vendor-interface.md). */
#define CKG_GUARDIAN_REQ_RETIRE_CA 12UL
/* Read-write user session: make a production CA key pair for
 * CKA_GUARDIAN_OEM_ID + CKA_GUARDIAN_PRODUCT_ID inside the token
 * (CKA_GUARDIAN_CA_KEY_TYPE, default by the slot: P-256, or RSA 2048 without
 * EC; private: token, private,
 * sensitive, never extractable, sign only, not modifiable, not copyable;
 * CKA_ID 16 random bytes, CKA_LABEL "guardian:OEM/PRODUCT:ca-key", so the
 * policy refuses it to every standard call), a PKCS#10 CSR for it with the
 * subject CKA_SUBJECT (a DER Name) signed by that key in the token, and a
 * Guardian CA key binding signed by the Guardian's signing key (the CSR's
 * SHA-256, the key ID, the OEM and product IDs, this Guardian's certificate
 * hash: docs/vendor-interface.md, "The CA key binding").  The Guardian
 * identity must exist.  Returns a session CKO_DATA object
 * "guardian-output:ca-request" whose CKA_VALUE is text: the CSR PEM block,
 * then the "GUARDIAN CA KEY BINDING" PEM block.  A package that carries the
 * key's certificate and no key (docs/package-format.md, version 2) binds it
 * to a release at import. */
#define CKG_GUARDIAN_REQ_CA_KEY 13UL

/* ---- Return values ----------------------------------------------------- */

/* C_Initialize: the configuration file is missing, unreadable or malformed. */
#define CKR_GUARDIAN_CONFIG_INVALID (CKR_GUARDIAN_BASE | 0x0001UL)
/* C_Initialize: the backend module could not be loaded or exports no usable
 * function list. */
#define CKR_GUARDIAN_BACKEND_LOAD_FAILED (CKR_GUARDIAN_BASE | 0x0002UL)
/* C_Initialize: the configured backend is the Guardian module itself. */
#define CKR_GUARDIAN_BACKEND_IS_SELF (CKR_GUARDIAN_BASE | 0x0003UL)
/* C_Login in service mode: the Guardian credential was right, but the backend
 * refused the PIN in backend_pin_file (or backend_so_pin_file is not set for
 * the Security Officer); the log line says which. */
#define CKR_GUARDIAN_BACKEND_LOGIN_FAILED (CKR_GUARDIAN_BASE | 0x0004UL)

/* 0x0010..0x001F: package import (C_UnwrapKey with CKM_GUARDIAN_UNWRAP_PACKAGE).
 * A malformed package is the standard CKR_WRAPPED_KEY_INVALID, an oversized one
 * CKR_WRAPPED_KEY_LEN_RANGE. */
/* The OEM's signature over the package does not verify (altered in transit). */
#define CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID (CKR_GUARDIAN_BASE | 0x0011UL)
/* The package was made for another Guardian. */
#define CKR_GUARDIAN_WRONG_GUARDIAN (CKR_GUARDIAN_BASE | 0x0012UL)
/* The signer does not chain to an OEM root enrolled in this Guardian. */
#define CKR_GUARDIAN_UNTRUSTED_SIGNER (CKR_GUARDIAN_BASE | 0x0013UL)
/* The package's not-after date has passed. */
#define CKR_GUARDIAN_PACKAGE_EXPIRED (CKR_GUARDIAN_BASE | 0x0014UL)
/* A package with this package ID was imported before (replay). */
#define CKR_GUARDIAN_PACKAGE_REPLAYED (CKR_GUARDIAN_BASE | 0x0015UL)
/* The installed release of this product is the same or newer (rollback). */
#define CKR_GUARDIAN_PACKAGE_ROLLBACK (CKR_GUARDIAN_BASE | 0x0016UL)
/* The signer's root is enrolled, but not for the package's OEM ID. */
#define CKR_GUARDIAN_OEM_NOT_ENROLLED (CKR_GUARDIAN_BASE | 0x0017UL)

/* 0x0020..0x002F: production (C_DeriveKey with CKM_GUARDIAN_DERIVE_DEVICE_CERT). */
/* The product's authorised unit count is used up. */
#define CKR_GUARDIAN_QUOTA_EXHAUSTED (CKR_GUARDIAN_BASE | 0x0020UL)
/* No release of this product is installed. */
#define CKR_GUARDIAN_PRODUCT_UNKNOWN (CKR_GUARDIAN_BASE | 0x0021UL)
/* The device public key is not a well-formed SubjectPublicKeyInfo, or its EC
 * point is not on its curve, or its RSA modulus is malformed. */
#define CKR_GUARDIAN_DEVICE_KEY_INVALID (CKR_GUARDIAN_BASE | 0x0022UL)
/* The device key is well formed but of an algorithm, curve or size this
 * Guardian does not certify (EC P-256/P-384 and RSA 2048..4096 only). */
#define CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED (CKR_GUARDIAN_BASE | 0x0023UL)
/* The device key is the production CA's own public key. */
#define CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY (CKR_GUARDIAN_BASE | 0x0024UL)
/* Unknown device ID format, or an ID not valid in its format. */
#define CKR_GUARDIAN_DEVICE_ID_INVALID (CKR_GUARDIAN_BASE | 0x0025UL)
/* The base key is not the production CA key of an imported package. */
#define CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY (CKR_GUARDIAN_BASE | 0x0026UL)
/* The base key belongs to a release that a newer one has replaced. */
#define CKR_GUARDIAN_PACKAGE_SUPERSEDED (CKR_GUARDIAN_BASE | 0x0027UL)
/* The device ID already has a certificate of this product for another public
 * key; nothing was spent.  CKA_GUARDIAN_REISSUE TRUE issues a new one. */
#define CKR_GUARDIAN_DEVICE_ALREADY_ISSUED (CKR_GUARDIAN_BASE | 0x0028UL)
/* A part outcome for a device ID that holds no certificate of this product
 * (none issued, or not yet folded from a running process's issue journal). */
#define CKR_GUARDIAN_DEVICE_NOT_ISSUED (CKR_GUARDIAN_BASE | 0x0029UL)
/* "programmed" reported for a part already reported scrapped. */
#define CKR_GUARDIAN_PART_SCRAPPED (CKR_GUARDIAN_BASE | 0x002AUL)
/* CKG_GUARDIAN_REQ_RETIRE_CA: the release named is the installed one; its
 * production CA key is the line's and is never retired. */
#define CKR_GUARDIAN_RELEASE_CURRENT (CKR_GUARDIAN_BASE | 0x002cUL)
/* CKG_GUARDIAN_REQ_RETIRE_CA: that release's production CA key was retired
 * already (its RETIRE record exists and the key is gone). */
#define CKR_GUARDIAN_CA_RETIRED (CKR_GUARDIAN_BASE | 0x002dUL)

/* 0x0030..0x003F: the Guardian's durable state (store). */
/* The state store cannot be opened, read or written (see the log line). */
#define CKR_GUARDIAN_STORE_FAILED (CKR_GUARDIAN_BASE | 0x0030UL)
/* The audit trail's hash chain is broken: a record was altered, removed or
 * reordered. */
#define CKR_GUARDIAN_AUDIT_CORRUPT (CKR_GUARDIAN_BASE | 0x0031UL)
/* The state store is behind the anchor the token holds: a restored backup, a
 * deleted or swapped database, or another state directory. */
#define CKR_GUARDIAN_STATE_ROLLBACK (CKR_GUARDIAN_BASE | 0x0032UL)
/* The host clock is earlier than the newest audit record: time never runs
 * backwards in the trail. */
#define CKR_GUARDIAN_CLOCK_BEHIND (CKR_GUARDIAN_BASE | 0x0033UL)
/* The state directory or a file in it is a symbolic link, not owned by this
 * user, or open to other users. */
#define CKR_GUARDIAN_STATE_UNSAFE (CKR_GUARDIAN_BASE | 0x0034UL)
/* The state directory is missing, on a file system that is not mounted (it
 * is empty while the token's anchor has seen records) or read-only: the log
 * line names the directory, what is wrong and what to do.  Nothing was
 * created in it and nothing granted. */
#define CKR_GUARDIAN_STATE_UNAVAILABLE (CKR_GUARDIAN_BASE | 0x0035UL)
/* C_Initialize: the module is not configured (no configuration file at the
 * default path, no GUARDIAN_CONF, no GUARDIAN_BACKEND).  Returned without a
 * line on stderr: every p11-kit client loads registered modules, and one that
 * nobody set up must not speak in all of them (docs/configuration.md). */
#define CKR_GUARDIAN_NOT_CONFIGURED (CKR_GUARDIAN_BASE | 0x0036UL)
/* Import of a package whose production CA key is in the Guardian (format
 * version 2): the token holds no key made by CKG_GUARDIAN_REQ_CA_KEY for the
 * package's OEM and product with its package ID as CKA_ID, or that key's
 * public key is not the production CA certificate's (the log line says
 * which).  Nothing was created or recorded. */
#define CKR_GUARDIAN_CA_KEY_NOT_FOUND (CKR_GUARDIAN_BASE | 0x0038UL)
/* Import of a package whose key transport (id-guardian-kt-*) this Guardian's
 * token cannot run, as its self-test measured (the scheme is missing from
 * the id-guardian-transports list of its agreement certificate): refused
 * before any key operation, nothing created or recorded; the OEM makes the
 * package again for this Guardian's certificate (guardian-wrap create
 * --kdf auto chooses a scheme it lists). */
#define CKR_GUARDIAN_TRANSPORT_UNSUPPORTED (CKR_GUARDIAN_BASE | 0x003CUL)
/* The backend unwrapped a secret of a package readable (CKA_SENSITIVE false or
 * CKA_EXTRACTABLE true, despite the template: opencryptoki 3.8 ignores both
 * there) and would not make it sensitive and not extractable afterwards:
 * the import is refused and nothing of it is kept (docs/vendor-interface.md). */
#define CKR_GUARDIAN_KEY_NOT_SEALED (CKR_GUARDIAN_BASE | 0x003DUL)
/* An OEM root enrolled in the Guardian's ledger (a token that cannot hold
 * roots: docs/threat-model.md section 2) whose enrolment could not be
 * anchored: the backend refused the token's state anchor object (NSS
 * softoken 3.87 makes no CKO_DATA token object) or it could not be moved.
 * The ledger row and its ENROL record are in the store, but a root counts
 * only at or before the anchored head: not until the anchor moves. */
#define CKR_GUARDIAN_ROOT_NOT_ANCHORED (CKR_GUARDIAN_BASE | 0x0039UL)

/* 0x0040..0x004F: Guardian requests and ownership. */
/* A request object is malformed: unknown CKG_GUARDIAN_REQ_*, a missing or
 * extra attribute (the log line names it). */
#define CKR_GUARDIAN_REQUEST_INVALID (CKR_GUARDIAN_BASE | 0x0040UL)
/* The certificate offered as an OEM root is not a CA certificate. */
#define CKR_GUARDIAN_ROOT_NOT_CA (CKR_GUARDIAN_BASE | 0x0041UL)
/* 0x0042..0x0044: the state server (issue 12). */
/* The state server (store = postgresql, docs/configuration.md) cannot be
 * reached or refuses the connection: stopped, crashed, unreachable, starting
 * up, too many clients, or the login refused (the log line names the server,
 * never the password).  Nothing was granted by the call that failed; a
 * reservation whose COMMIT was cut off stays counted, never granted twice.
 * The next call reconnects: production resumes when the server is back. */
#define CKR_GUARDIAN_STORE_UNREACHABLE (CKR_GUARDIAN_BASE | 0x0042UL)

#endif /* GUARDIAN_PKCS11_H */
