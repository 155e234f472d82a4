/*
 * package_container.h — the CMS container of a Guardian package, exactly as
 * signed (docs/package-format.md, "The container exactly as signed").  Shared
 * by the module (mechs/unwrap_package.c refuses any other container) and the
 * OEM's guardian-wrap (create makes it, inspect checks it).
 *
 * The OEM signature covers the content and the signed attributes only; CMS
 * leaves the rest of the container malleable.  The Guardian's IMPORT record
 * binds SHA-256 of the imported file, which the OEM compares with its own
 * file (guardian-wrap verify-report --package), so a package must have one
 * encoding only: every part the signature does not cover is pinned here.
 * OpenSSL (libcrypto) only.
 */
#ifndef GUARDIAN_MECHS_PACKAGE_CONTAINER_H
#define GUARDIAN_MECHS_PACKAGE_CONTAINER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* 1 if `sig` (a DER ECDSA-Sig-Value) by the EC key `key` has s <= n/2 (low-s),
 * 0 if s > n/2 (high-s: (r, n - s) is the same signature), -1 if it is not a
 * DER ECDSA signature with r and s in 1..n-1 for the key's curve. */
int guardian_ecdsa_sig_low_s(EVP_PKEY *key, const unsigned char *sig, size_t len);

/* Rewrite a high-s `sig` in place as (r, n - s); a low-s one is left alone.
 * Returns 1 when `sig` is now low-s, 0 on failure. */
int guardian_ecdsa_sig_make_low_s(EVP_PKEY *key, ASN1_OCTET_STRING *sig);

/* The certificates a package carries for `signer`, in path order: the signer,
 * then each issuer found among `candidates`, up to and excluding the first
 * self-signed certificate (the OEM root, which the Guardian has enrolled, is
 * never carried).  The stack holds references: sk_X509_pop_free(path,
 * X509_free).  NULL on allocation failure. */
STACK_OF(X509) *guardian_signer_path(X509 *signer, const STACK_OF(X509) *candidates);

/* The DER SigningCertificateV2 (RFC 5035) of `path` (signer first): one
 * ESSCertIDv2 per certificate, SHA-256, with issuerSerial, in path order.
 * guardian-wrap signs it as an attribute, so that the certificate set is
 * covered by the signature too: an ECDSA signature on a certificate is as
 * malleable as the package's own, and a certificate rewritten so still
 * verifies.  For the signer alone it is what `openssl cms -sign -cades` adds.
 * Returns the length (OPENSSL_free *der) or -1. */
int guardian_signing_cert_attr(const STACK_OF(X509) *path, unsigned char **der);

/* NULL when the container (`cms`, parsed from exactly `data`/`len`, whose
 * signature CMS_verify has checked) is exactly the profile, else a static
 * reason for a log line.  `roots`: the enrolled OEM roots (the module) or the
 * OEM's root (inspect --oem-root): the signer's path is then the one
 * X509_verify_cert builds to them; NULL: the path is found by issuer among the
 * carried certificates (guardian_signer_path). */
const char *guardian_container_profile(CMS_ContentInfo *cms, const uint8_t *data, size_t len, X509_STORE *roots);

#endif /* GUARDIAN_MECHS_PACKAGE_CONTAINER_H */
