/*
 * transport.c — the id-guardian-transports extension and the choice of a
 * package's key transport.  See transport.h and docs/package-format.md.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>

#include "package.h"
#include "transport.h"

typedef STACK_OF(ASN1_OBJECT) GUARDIAN_TRANSPORTS;
DECLARE_ASN1_ITEM(GUARDIAN_TRANSPORTS)

ASN1_ITEM_TEMPLATE(GUARDIAN_TRANSPORTS) =
    ASN1_EX_TEMPLATE_TYPE(ASN1_TFLG_SEQUENCE_OF, 0, GUARDIAN_TRANSPORTS, ASN1_OBJECT)
ASN1_ITEM_TEMPLATE_END(GUARDIAN_TRANSPORTS)

static const struct {
    int kt;
    const char *name;
    const char *oid;
} schemes[] = {
    {GUARDIAN_KT_ECDH_SHA256KDF, "x963-sha256", GUARDIAN_OID_KT_ECDH_SHA256KDF},
    {GUARDIAN_KT_ECDH_AESCBC, "aes-cbc", GUARDIAN_OID_KT_ECDH_AESCBC},
    {GUARDIAN_KT_RSAOAEP_SHA256, "rsa-oaep-sha256", GUARDIAN_OID_KT_RSAOAEP_SHA256},
    {GUARDIAN_KT_NONE, "none", GUARDIAN_OID_KT_NONE},
};
#define N_SCHEMES (sizeof(schemes) / sizeof(schemes[0]))

static void fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *guardian_transport_name(int kt)
{
    for (size_t i = 0; i < N_SCHEMES; i++)
        if (schemes[i].kt == kt)
            return schemes[i].name;
    return NULL;
}

const char *guardian_transport_oid(int kt)
{
    for (size_t i = 0; i < N_SCHEMES; i++)
        if (schemes[i].kt == kt)
            return schemes[i].oid;
    return NULL;
}

int guardian_transport_by_name(const char *name)
{
    for (size_t i = 0; name != NULL && i < N_SCHEMES; i++)
        if (strcmp(schemes[i].name, name) == 0)
            return schemes[i].kt;
    return 0;
}

int guardian_transports_encode(const int *kt, size_t n, unsigned char **der)
{
    GUARDIAN_TRANSPORTS *list = sk_ASN1_OBJECT_new_null();
    int len = -1;

    *der = NULL;
    if (list == NULL || n < 1 || n > GUARDIAN_TRANSPORTS_MAX)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const char *oid = guardian_transport_oid(kt[i]);
        ASN1_OBJECT *o;
        for (size_t j = 0; j < i; j++)
            if (kt[j] == kt[i])
                goto out;
        if (oid == NULL || (o = OBJ_txt2obj(oid, 1)) == NULL)
            goto out;
        if (!sk_ASN1_OBJECT_push(list, o)) {
            ASN1_OBJECT_free(o);
            goto out;
        }
    }
    len = ASN1_item_i2d((ASN1_VALUE *)list, der, ASN1_ITEM_rptr(GUARDIAN_TRANSPORTS));
    if (len <= 0) {
        OPENSSL_free(*der);
        *der = NULL;
        len = -1;
    }
out:
    sk_ASN1_OBJECT_pop_free(list, ASN1_OBJECT_free);
    return len;
}

int guardian_transports_decode(const unsigned char *der, size_t len, struct guardian_transports *out, char *err,
                               size_t errlen)
{
    const unsigned char *p = der;
    GUARDIAN_TRANSPORTS *list = NULL;
    unsigned char *again = NULL;
    int again_len, n, ok = 0;

    memset(out, 0, sizeof(*out));
    if (len == 0 || len > 4096 ||
        (list = (GUARDIAN_TRANSPORTS *)ASN1_item_d2i(NULL, &p, (long)len, ASN1_ITEM_rptr(GUARDIAN_TRANSPORTS))) ==
            NULL ||
        p != der + len) {
        fail(err, errlen, "the id-guardian-transports extension is not a SEQUENCE OF OBJECT IDENTIFIER");
        goto out;
    }
    again_len = ASN1_item_i2d((ASN1_VALUE *)list, &again, ASN1_ITEM_rptr(GUARDIAN_TRANSPORTS));
    if (again_len != (int)len || memcmp(again, der, len) != 0) {
        fail(err, errlen, "the id-guardian-transports extension is not DER");
        goto out;
    }
    n = sk_ASN1_OBJECT_num(list);
    if (n < 1 || n > GUARDIAN_TRANSPORTS_MAX) {
        fail(err, errlen, "the id-guardian-transports extension lists %d schemes (1..%d allowed)", n,
             GUARDIAN_TRANSPORTS_MAX);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const ASN1_OBJECT *o = sk_ASN1_OBJECT_value(list, i);
        if (OBJ_obj2txt(out->oid[i], sizeof(out->oid[i]), o, 1) <= 0 ||
            strlen(out->oid[i]) >= sizeof(out->oid[i]) - 1) {
            fail(err, errlen, "the id-guardian-transports extension: scheme %d is not a readable OID", i + 1);
            goto out;
        }
        for (int j = 0; j < i; j++)
            if (OBJ_cmp(sk_ASN1_OBJECT_value(list, j), o) == 0) {
                fail(err, errlen, "the id-guardian-transports extension lists %s twice", out->oid[i]);
                goto out;
            }
        out->kt[i] = guardian_package_scheme(o); /* 0: one this build does not know */
    }
    out->n = (size_t)n;
    out->present = 1;
    ok = 1;
out:
    if (!ok)
        memset(out, 0, sizeof(*out));
    OPENSSL_free(again);
    sk_ASN1_OBJECT_pop_free(list, ASN1_OBJECT_free);
    ERR_clear_error();
    return ok;
}

static ASN1_OBJECT *transports_oid(void)
{
    return OBJ_txt2obj(GUARDIAN_OID_TRANSPORTS, 1);
}

int guardian_transports_read(X509 *a, struct guardian_transports *out, char *err, size_t errlen)
{
    ASN1_OBJECT *oid = transports_oid();
    int at, ok = 0;

    memset(out, 0, sizeof(*out));
    if (oid == NULL) {
        fail(err, errlen, "out of memory");
        return 0;
    }
    out->rsa = X509_get0_pubkey(a) != NULL && EVP_PKEY_get_base_id(X509_get0_pubkey(a)) == EVP_PKEY_RSA;
    at = X509_get_ext_by_OBJ(a, oid, -1);
    if (at < 0) {
        /* Made before the statement existed: what every Guardian could do
         * then (an RSA one, made where the token has no EC, only RSA-OAEP). */
        int kt = out->rsa ? GUARDIAN_KT_RSAOAEP_SHA256 : GUARDIAN_KT_ECDH_AESCBC;
        out->n = 1;
        out->kt[0] = kt;
        snprintf(out->oid[0], sizeof(out->oid[0]), "%s",
                 out->rsa ? GUARDIAN_OID_KT_RSAOAEP_SHA256 : GUARDIAN_OID_KT_ECDH_AESCBC);
        ok = 1;
    } else if (X509_get_ext_by_OBJ(a, oid, at) >= 0) {
        fail(err, errlen, "the Guardian certificate carries the id-guardian-transports extension twice");
    } else {
        const ASN1_OCTET_STRING *v = X509_EXTENSION_get_data(X509_get_ext(a, at));
        int rsa = out->rsa;
        ok = guardian_transports_decode(ASN1_STRING_get0_data(v), (size_t)ASN1_STRING_length(v), out, err, errlen);
        out->rsa = rsa;
    }
    ASN1_OBJECT_free(oid);
    return ok;
}

int guardian_transports_add(X509 *x, const int *kt, size_t n)
{
    unsigned char *der = NULL;
    int len = guardian_transports_encode(kt, n, &der), at, ok = 0;
    ASN1_OBJECT *oid = transports_oid();
    ASN1_OCTET_STRING *v = ASN1_OCTET_STRING_new();
    X509_EXTENSION *e = NULL;

    if (len > 0 && oid != NULL && v != NULL && ASN1_OCTET_STRING_set(v, der, len) == 1 &&
        (e = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, v)) != NULL) {
        while ((at = X509_get_ext_by_OBJ(x, oid, -1)) >= 0)
            X509_EXTENSION_free(X509_delete_ext(x, at));
        ok = X509_add_ext(x, e, -1) == 1;
    }
    X509_EXTENSION_free(e);
    ASN1_OCTET_STRING_free(v);
    ASN1_OBJECT_free(oid);
    OPENSSL_free(der);
    return ok;
}

void guardian_transports_describe(const struct guardian_transports *t, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < t->n && used < len; i++) {
        const char *name = guardian_transport_name(t->kt[i]);
        int w = snprintf(out + used, len - used, "%s%s (%s)", i ? ", " : "", name ? name : "unknown", t->oid[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (used < len && !t->present)
        snprintf(out + used, len - used, " [no id-guardian-transports extension: a Guardian certificate made "
                                         "before it existed]");
}

/* A scheme guardian-wrap makes for a package that carries a secret, to a
 * Guardian certificate of this key type (RSA: RSA-OAEP; EC: the ECDH ones). */
static int makes(int kt, int rsa)
{
    if (rsa)
        return kt == GUARDIAN_KT_RSAOAEP_SHA256;
    return kt == GUARDIAN_KT_ECDH_AESCBC || kt == GUARDIAN_KT_ECDH_SHA256KDF;
}

int guardian_transport_choose(const struct guardian_transports *t, int requested, int allow_unlisted, char *err,
                              size_t errlen)
{
    char offers[GUARDIAN_TRANSPORTS_MAX * (GUARDIAN_TRANSPORT_OID_MAX + 24) + 160];

    guardian_transports_describe(t, offers, sizeof(offers));
    if (requested == 0) {
        for (size_t i = 0; i < t->n; i++)
            if (makes(t->kt[i], t->rsa))
                return t->kt[i];
        for (size_t i = 0; i < t->n; i++)
            if (t->kt[i] != GUARDIAN_KT_NONE)
                goto other;
        /* none only (a TPM: no ECDH, no C_UnwrapKey): what can travel. */
        fail(err, errlen, "the Guardian certificate offers no key transport this guardian-wrap makes (it offers: %s): "
                          "its token imports no secret at all (no --ca-key, --extra-key or --secret-data); make the "
                          "production CA key in the Guardian (guardianctl ca-request, guardian-wrap certify-ca, create "
                          "--ca-request) and send data items with --data",
             offers);
        return 0;
    other:
        fail(err, errlen, "the Guardian certificate offers no key transport this guardian-wrap makes (it offers: %s)",
             offers);
        return 0;
    }
    if (!makes(requested, t->rsa)) {
        fail(err, errlen, "--kdf %s is not a key transport for a package that carries a secret to a Guardian "
                          "with an %s key (it offers: %s)",
             guardian_transport_name(requested) ? guardian_transport_name(requested) : "?", t->rsa ? "RSA" : "EC",
             offers);
        return 0;
    }
    for (size_t i = 0; i < t->n; i++)
        if (t->kt[i] == requested)
            return requested;
    if (allow_unlisted)
        return requested;
    fail(err, errlen,
         "--kdf %s: the Guardian certificate does not list it, so its Guardian measured that it cannot import such a "
         "package (it offers: %s); use --kdf auto, or --kdf-unlisted to make it all the same",
         guardian_transport_name(requested), offers);
    return 0;
}
