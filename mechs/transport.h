/*
 * transport.h — which key transports a Guardian states it can import with,
 * and which one an OEM's package uses (docs/package-format.md "Which
 * transports a Guardian states").  Shared by the module (which writes the
 * statement into its agreement certificate A: mechs/selftest.c measures the
 * token, mechs/identity.c makes A) and guardian-wrap (which reads it and
 * chooses).  OpenSSL only: no PKCS#11, no secret.
 *
 * The statement is the extension id-guardian-transports (GUARDIAN_OID_TRANSPORTS,
 * non-critical): SEQUENCE SIZE(1..8) OF OBJECT IDENTIFIER, the scheme OIDs
 * (id-guardian-kt-*) strongest first, each once.  A certificate without it
 * (made before it existed) states id-guardian-kt-ecdh-aescbc-v1 only: what
 * every Guardian could import with then.
 */
#ifndef GUARDIAN_MECHS_TRANSPORT_H
#define GUARDIAN_MECHS_TRANSPORT_H

#include <stddef.h>

#include <openssl/x509.h>

#define GUARDIAN_TRANSPORTS_MAX 8
#define GUARDIAN_TRANSPORT_OID_MAX 96

/* What a certificate states, in its order. */
struct guardian_transports {
    int present;                    /* 0: no extension: the list is the default (aes-cbc only; rsa-oaep-sha256 for an RSA key) */
    int rsa;                        /* the certificate's key is RSA: only rsa-oaep-sha256 can be used with it */
    size_t n;
    int kt[GUARDIAN_TRANSPORTS_MAX]; /* GUARDIAN_KT_*; 0 = a scheme this build does not know */
    char oid[GUARDIAN_TRANSPORTS_MAX][GUARDIAN_TRANSPORT_OID_MAX]; /* dotted text */
};

/* The DER extension value of the schemes `kt` (GUARDIAN_KT_*), in that
 * order: its length and *der (OPENSSL_free it), or -1 (an unknown or
 * repeated scheme, n outside 1..GUARDIAN_TRANSPORTS_MAX, no memory). */
int guardian_transports_encode(const int *kt, size_t n, unsigned char **der);
/* Decode an extension value: 1, or 0 with one line in err (not DER, not
 * canonical, empty, more than GUARDIAN_TRANSPORTS_MAX, an OID repeated). */
int guardian_transports_decode(const unsigned char *der, size_t len, struct guardian_transports *out, char *err,
                               size_t errlen);
/* What certificate `a` states (the default when it has no extension): 1, or
 * 0 with one line in err (the extension twice, or its value invalid). */
int guardian_transports_read(X509 *a, struct guardian_transports *out, char *err, size_t errlen);
/* Put the statement into `x` (non-critical, replacing one already there): 1 or 0. */
int guardian_transports_add(X509 *x, const int *kt, size_t n);
/* One line "x963-sha256 (…2.2), aes-cbc (…2.1)" of what `t` states. */
void guardian_transports_describe(const struct guardian_transports *t, char *out, size_t len);

/* The scheme a package for a Guardian stating `t` uses.  requested: 0 for
 * --kdf auto (the first scheme of the list this tool can make, which is the
 * strongest the Guardian states), else a GUARDIAN_KT_* the OEM asked for,
 * which must be listed unless allow_unlisted.  The scheme, or 0 with one line
 * in err naming what the Guardian offers. */
int guardian_transport_choose(const struct guardian_transports *t, int requested, int allow_unlisted, char *err,
                              size_t errlen);

/* guardian-wrap's name of a scheme ("aes-cbc", "x963-sha256", "none"), and
 * its OID; NULL for an unknown one.  guardian_transport_by_name: the scheme,
 * 0 for an unknown name. */
const char *guardian_transport_name(int kt);
const char *guardian_transport_oid(int kt);
int guardian_transport_by_name(const char *name);

#endif /* GUARDIAN_MECHS_TRANSPORT_H */
