/*
 * cert_builder.h — the device certificate profile (docs/certificate-profile.md)
 * as DER template filling: no X509 object, no EVP_PKEY for the device key.
 *
 * Building a certificate with OpenSSL's X509 API costs ~300 us here, six
 * times the signature; converting the device key to an EVP_PKEY another
 * ~250 us.  Filling DER costs a few microseconds, so this file writes the
 * TBSCertificate itself and checks the device key with a strict DER reader and
 * one on-curve test.  Pure: no PKCS#11, no store; the signature is made by the
 * caller (inside the backend) and appended with guardian_cert_finish.
 */
#ifndef GUARDIAN_MECHS_CERT_BUILDER_H
#define GUARDIAN_MECHS_CERT_BUILDER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "package.h"

/* ---- the device key --------------------------------------------------------- */

#define GUARDIAN_DEVKEY_EC_P256 1
#define GUARDIAN_DEVKEY_EC_P384 2
#define GUARDIAN_DEVKEY_RSA 3
#define GUARDIAN_DEVKEY_MAX_DER 1024 /* an RSA-4096 SPKI is 550 bytes */

/* Result of the device key check; GUARDIAN_DEVKEY_OK or one of the reasons. */
#define GUARDIAN_DEVKEY_OK 0
#define GUARDIAN_DEVKEY_MALFORMED 1   /* not strict DER SubjectPublicKeyInfo, bad point/modulus */
#define GUARDIAN_DEVKEY_UNSUPPORTED 2 /* other algorithm, curve, size or point form */

struct guardian_device_key {
    int kind;               /* GUARDIAN_DEVKEY_EC_* or _RSA */
    unsigned bits;          /* curve size or modulus length */
    const uint8_t *spki;    /* the whole SubjectPublicKeyInfo (the input) */
    size_t spki_len;
    const uint8_t *key;     /* subjectPublicKey's bits: the point, or RSAPublicKey DER */
    size_t key_len;
};

/* Check `der` as a device public key: strict DER, EC P-256/P-384 named curve
 * with an uncompressed point on the curve, or RSA 2048..4096 with an odd
 * modulus and an odd exponent >= 3.  On failure `why` names the problem (a
 * static string, no key bytes). */
int guardian_device_key_check(const uint8_t *der, size_t len, struct guardian_device_key *out, const char **why);

/* ---- the subject pattern ------------------------------------------------------ */

#define GUARDIAN_SUBJECT_MAX_RDNS 16
#define GUARDIAN_SUBJECT_MAX_VALUE 128

/* "CN=${device_id},OU=${product_id},O=${oem_id}": RFC 4514 order (most
 * specific first, as `openssl x509 -nameopt RFC2253` prints), attribute types
 * CN, O, OU, C, L, ST, serialNumber; values are literal text and the variables
 * ${device_id}, ${oem_id}, ${product_id}; no escapes, so no ',' '+' '=' '\' in
 * a value. */
struct guardian_subject_pattern {
    size_t n;
    struct {
        uint8_t oid[8]; /* the OID's DER contents */
        size_t oid_len;
        uint8_t string_tag; /* UTF8String, or PrintableString for C and serialNumber */
        char value[GUARDIAN_SUBJECT_MAX_VALUE + 1];
    } rdn[GUARDIAN_SUBJECT_MAX_RDNS];
};
int guardian_subject_pattern_parse(const char *s, size_t len, struct guardian_subject_pattern *out, char *err,
                                   size_t errlen);

/* The DER Name the pattern gives for a device (its text ID, or its binary ID
 * in lowercase hex) into out[0..cap): its length, or 0 with a reason in `err`
 * if it does not fit or a PrintableString value (C, serialNumber) would hold a
 * character PrintableString lacks — such a value is refused, never altered. */
size_t guardian_subject_der(const struct guardian_subject_pattern *p, const char *device_text, const char *oem_id,
                            const char *product_id, uint8_t *out, size_t cap, char *err, size_t errlen);

/* ---- the issuer: everything fixed per package ---------------------------------- */

struct guardian_cert_issuer {
    uint8_t package_id[GUARDIAN_PKG_ID_LEN];
    char oem_id[GUARDIAN_PKG_NAME_MAX + 1];
    char product_id[GUARDIAN_PKG_NAME_MAX + 1];
    uint32_t release;
    uint32_t validity_days;
    struct guardian_subject_pattern subject;
    uint8_t sigalg[24];         /* AlgorithmIdentifier DER */
    size_t sigalg_len;
    const EVP_MD *md;           /* SHA-256 or SHA-384 */
    int ca_kind;                /* GUARDIAN_DEVKEY_* of the CA key */
    size_t ca_sig_len;          /* raw signature length: 2 x field size, or the modulus bytes */
    uint8_t *issuer_name;       /* the CA certificate's subject, DER */
    size_t issuer_name_len;
    uint8_t device_ext_oid[GUARDIAN_DEVICE_EXT_OID_MAX]; /* DER contents; length 0: no such extension */
    size_t device_ext_oid_len;
    uint8_t *fixed_ext;         /* BC, KU, EKU, AKI: Extension DERs back to back */
    size_t fixed_ext_len;
    /* The CA's public key as a device key would carry it, to refuse a device
     * key that is the CA's own: EC the uncompressed point (whatever form the
     * CA certificate uses), RSA the RSAPublicKey DER (one encoding: DER). */
    uint8_t ca_key[GUARDIAN_DEVKEY_MAX_DER];
    size_t ca_key_len;
    EVP_PKEY *ca_pub;
};

/* Fill `is` from the package's CertTemplate DER and production CA certificate
 * DER (as the store keeps them).  0 and a reason in `err` on failure. */
int guardian_cert_issuer_init(struct guardian_cert_issuer *is, const uint8_t package_id[GUARDIAN_PKG_ID_LEN],
                              const char *oem_id, const char *product_id, uint32_t release,
                              const uint8_t *tmpl_der, size_t tmpl_len, const uint8_t *ca_der, size_t ca_len,
                              char *err, size_t errlen);
void guardian_cert_issuer_free(struct guardian_cert_issuer *is);
/* 1 if this issuer can write the subject of the device whose subject text is
 * `device_text`; 0 and the reason (which attribute, which characters are
 * allowed) in `err` otherwise.  The module asks before spending a unit. */
int guardian_subject_check(const struct guardian_cert_issuer *is, const char *device_text, char *err, size_t errlen);

/* ---- one certificate ------------------------------------------------------------- */

#define GUARDIAN_CERT_BUF 4096 /* enough for any certificate of this profile */
#define GUARDIAN_CERT_SERIAL_LEN 16

/* The 16-byte serialNumber: 0x40 | (package_id[0] & 0x3f), package_id[1..7],
 * then the product's serial counter (u64, big-endian).  Positive, minimal DER,
 * unique across packages (and Guardians) that share a CA. */
void guardian_cert_serial(const uint8_t package_id[GUARDIAN_PKG_ID_LEN], uint64_t serial,
                          uint8_t out[GUARDIAN_CERT_SERIAL_LEN]);

struct guardian_device {
    const uint8_t *id;  /* raw device ID bytes (text IDs: their characters) */
    size_t id_len;
    const char *id_text; /* what the subject shows: the text, or lowercase hex */
    const struct guardian_device_key *key;
};

/* Write the DER TBSCertificate into buf (cap >= GUARDIAN_CERT_BUF); its length,
 * or 0 if a value does not fit.  ski_out gets the subject key identifier (SHA-1
 * of the device key bits). */
size_t guardian_tbs_build(const struct guardian_cert_issuer *is, uint64_t serial, int64_t now,
                          const struct guardian_device *dev, uint8_t *buf, size_t cap, uint8_t ski_out[20]);

/* Append the signatureAlgorithm and signature to the TBS at buf[0..tbs_len)
 * and wrap the Certificate.  `sig` is the raw signature from the token (EC:
 * r || s, encoded here as ECDSA-Sig-Value; RSA: as is).  Returns the
 * certificate's length, or 0. */
size_t guardian_cert_finish(const struct guardian_cert_issuer *is, uint8_t *buf, size_t cap, size_t tbs_len,
                            const uint8_t *sig, size_t sig_len);

/* Slices of a certificate this file built (for CKA_SUBJECT, CKA_ISSUER,
 * CKA_SERIAL_NUMBER): pointers into `cert`.  0 if it does not parse. */
struct guardian_cert_slices {
    const uint8_t *serial, *issuer, *subject; /* complete TLVs */
    size_t serial_len, issuer_len, subject_len;
};
int guardian_cert_slices(const uint8_t *cert, size_t len, struct guardian_cert_slices *out);

#endif /* GUARDIAN_MECHS_CERT_BUILDER_H */
