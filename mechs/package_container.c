/*
 * package_container.c — the CMS container of a package, exactly as signed.
 * See package_container.h and docs/package-format.md.
 */
#include <limits.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ess.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "package_container.h"

/* ---- ECDSA signatures: low-s --------------------------------------------------- */

/* The DER ECDSA-Sig-Value `sig`, with r and s in 1..n-1, and the order n of
 * `key`'s curve; NULL (and *order NULL) if it is anything else. */
static ECDSA_SIG *ecdsa_sig_parse(EVP_PKEY *key, const unsigned char *sig, size_t len, BIGNUM **order)
{
    const unsigned char *p = sig;
    unsigned char *again = NULL;
    ECDSA_SIG *es = NULL;
    const BIGNUM *r = NULL, *s = NULL;
    int again_len;

    *order = NULL;
    if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC || sig == NULL || len == 0 || len > LONG_MAX)
        return NULL;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_ORDER, order) != 1)
        goto fail;
    es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (es == NULL || p != sig + len)
        goto fail;
    /* DER only: one encoding per (r, s). */
    again_len = i2d_ECDSA_SIG(es, &again);
    if (again_len < 0 || (size_t)again_len != len || memcmp(again, sig, len) != 0)
        goto fail;
    ECDSA_SIG_get0(es, &r, &s);
    if (BN_is_zero(r) || BN_is_negative(r) || BN_cmp(r, *order) >= 0 || BN_is_zero(s) || BN_is_negative(s) ||
        BN_cmp(s, *order) >= 0)
        goto fail;
    OPENSSL_free(again);
    return es;
fail:
    OPENSSL_free(again);
    ECDSA_SIG_free(es);
    BN_free(*order);
    *order = NULL;
    return NULL;
}

/* s > n/2, n odd: s > floor(n/2). */
static int high_s(const ECDSA_SIG *es, const BIGNUM *order)
{
    BIGNUM *half = BN_new();
    int high = -1;
    if (half != NULL && BN_rshift1(half, order) == 1)
        high = BN_cmp(ECDSA_SIG_get0_s(es), half) > 0;
    BN_free(half);
    return high;
}

int guardian_ecdsa_sig_low_s(EVP_PKEY *key, const unsigned char *sig, size_t len)
{
    BIGNUM *order = NULL;
    ECDSA_SIG *es = ecdsa_sig_parse(key, sig, len, &order);
    int high = es != NULL ? high_s(es, order) : -1;
    ECDSA_SIG_free(es);
    BN_free(order);
    return high < 0 ? -1 : !high;
}

int guardian_ecdsa_sig_make_low_s(EVP_PKEY *key, ASN1_OCTET_STRING *sig)
{
    BIGNUM *order = NULL, *r = NULL, *s = NULL;
    ECDSA_SIG *es = sig ? ecdsa_sig_parse(key, ASN1_STRING_get0_data(sig), (size_t)ASN1_STRING_length(sig), &order)
                        : NULL;
    unsigned char *der = NULL;
    int high = es != NULL ? high_s(es, order) : -1, der_len, ok = 0;

    if (high < 0)
        goto out;
    if (!high) {
        ok = 1;
        goto out;
    }
    r = BN_dup(ECDSA_SIG_get0_r(es));
    s = BN_new();
    if (r == NULL || s == NULL || BN_sub(s, order, ECDSA_SIG_get0_s(es)) != 1 || ECDSA_SIG_set0(es, r, s) != 1)
        goto out;
    r = s = NULL; /* owned by es now */
    der_len = i2d_ECDSA_SIG(es, &der);
    ok = der_len > 0 && ASN1_OCTET_STRING_set(sig, der, der_len) == 1;
out:
    BN_free(r);
    BN_free(s);
    BN_free(order);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    return ok;
}

/* ---- the certificate set --------------------------------------------------------- */

static int in_stack(const STACK_OF(X509) *sk, X509 *x)
{
    for (int i = 0; i < sk_X509_num(sk); i++)
        if (X509_cmp(sk_X509_value(sk, i), x) == 0)
            return 1;
    return 0;
}

static int push_ref(STACK_OF(X509) *sk, X509 *x)
{
    if (X509_up_ref(x) != 1)
        return 0;
    if (sk_X509_push(sk, x) <= 0) {
        X509_free(x);
        return 0;
    }
    return 1;
}

STACK_OF(X509) *guardian_signer_path(X509 *signer, const STACK_OF(X509) *candidates)
{
    STACK_OF(X509) *path = sk_X509_new_null();
    X509 *cur = signer;

    if (path == NULL || !push_ref(path, signer)) {
        sk_X509_free(path);
        return NULL;
    }
    /* Each round adds one candidate, so the path ends. */
    while (X509_self_signed(cur, 0) != 1) {
        X509 *next = NULL;
        for (int i = 0; i < sk_X509_num(candidates) && next == NULL; i++) {
            X509 *c = sk_X509_value(candidates, i);
            if (X509_check_issued(c, cur) == X509_V_OK && !in_stack(path, c))
                next = c;
        }
        if (next == NULL || X509_self_signed(next, 0) == 1)
            break;
        if (!push_ref(path, next)) {
            sk_X509_pop_free(path, X509_free);
            return NULL;
        }
        cur = next;
    }
    return path;
}

/* The signer's path as X509_verify_cert builds it to `roots` from the carried
 * certificates, without its trust anchor (a lone self-signed signer is its own
 * anchor and stays).  NULL if it does not verify. */
static STACK_OF(X509) *verified_path(X509 *signer, STACK_OF(X509) *carried, X509_STORE *roots)
{
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *chain = NULL, *path = NULL;
    int keep;

    if (ctx == NULL || X509_STORE_CTX_init(ctx, roots, signer, carried) != 1 || X509_verify_cert(ctx) != 1)
        goto out;
    chain = X509_STORE_CTX_get0_chain(ctx);
    keep = sk_X509_num(chain) > 1 ? sk_X509_num(chain) - 1 : 1;
    path = sk_X509_new_null();
    for (int i = 0; path != NULL && i < keep; i++) {
        if (!push_ref(path, sk_X509_value(chain, i))) {
            sk_X509_pop_free(path, X509_free);
            path = NULL;
        }
    }
out:
    X509_STORE_CTX_free(ctx);
    return path;
}

int guardian_signing_cert_attr(const STACK_OF(X509) *path, unsigned char **der)
{
    STACK_OF(X509) *rest = sk_X509_new_null();
    ESS_SIGNING_CERT_V2 *sc = NULL;
    int n = -1;

    *der = NULL;
    if (rest == NULL || sk_X509_num(path) < 1)
        goto out;
    for (int i = 1; i < sk_X509_num(path); i++)
        if (sk_X509_push(rest, sk_X509_value(path, i)) <= 0)
            goto out;
    sc = OSSL_ESS_signing_cert_v2_new_init(EVP_sha256(), sk_X509_value(path, 0), rest, 1);
    if (sc != NULL)
        n = i2d_ESS_SIGNING_CERT_V2(sc, der);
out:
    ESS_SIGNING_CERT_V2_free(sc);
    sk_X509_free(rest);
    if (n <= 0) {
        OPENSSL_free(*der);
        *der = NULL;
        n = -1;
    }
    return n;
}

/* The SignerInfo names its signer by issuer and serial, which CMS matches
 * loosely (X509_NAME_cmp ignores case and string types): the bytes must be the
 * signer certificate's own. */
static int sid_is_signers(CMS_SignerInfo *si, X509 *signer)
{
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *serial = NULL;
    unsigned char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    int al, bl, cl, dl, same;

    if (CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &serial) != 1 || keyid != NULL || issuer == NULL ||
        serial == NULL)
        return 0;
    al = i2d_X509_NAME(issuer, &a);
    bl = i2d_X509_NAME(X509_get_issuer_name(signer), &b);
    cl = i2d_ASN1_INTEGER(serial, &c);
    dl = i2d_ASN1_INTEGER(X509_get0_serialNumber(signer), &d);
    same = al > 0 && al == bl && memcmp(a, b, (size_t)al) == 0 && cl > 0 && cl == dl && memcmp(c, d, (size_t)cl) == 0;
    OPENSSL_free(a);
    OPENSSL_free(b);
    OPENSSL_free(c);
    OPENSSL_free(d);
    return same;
}

/* ---- the profile ----------------------------------------------------------------- */

const char *guardian_container_profile(CMS_ContentInfo *cms, const uint8_t *data, size_t len, X509_STORE *roots)
{
    static const unsigned char sha256_set[] = {0x31, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                               0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
    const unsigned char *p = data, *set_der = NULL;
    unsigned char *again = NULL, *expected = NULL;
    long l, set_len = 0;
    int tag, cls, again_len, n_choices = 0;
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    CMS_SignerInfo *si = NULL;
    STACK_OF(X509) *certs = NULL, *path = NULL;
    EVP_PKEY *pk = NULL;
    X509 *signer = NULL;
    const char *why = NULL;

    if (len > LONG_MAX)
        goto malformed;
    again_len = i2d_CMS_ContentInfo(cms, &again);
    if (again_len < 0 || (size_t)again_len != len || memcmp(again, data, len) != 0) {
        why = "the container is not canonical DER";
        goto out;
    }
    /* ContentInfo SEQUENCE, contentType OID, [0], SignedData SEQUENCE, version. */
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_SEQUENCE)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_OBJECT)
        goto malformed;
    p += l;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || cls != V_ASN1_CONTEXT_SPECIFIC ||
        tag != 0)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_SEQUENCE)
        goto malformed;
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_INTEGER || l != 1 ||
        p[0] != 3) {
        why = "SignedData version is not 3";
        goto out;
    }
    p += l;
    if ((size_t)(data + len - p) < sizeof(sha256_set) || memcmp(p, sha256_set, sizeof(sha256_set)) != 0) {
        why = "digestAlgorithms is not exactly {SHA-256}";
        goto out;
    }
    /* digestAlgorithms, encapContentInfo, [0] certificates (kept to count its
     * elements: CMS_get1_certs sees X.509 certificates only), [1] CRLs (none,
     * not even an empty set); then SignerInfos SET, SignerInfo SEQUENCE, its
     * version: 1 (issuerAndSerialNumber, as guardian-wrap makes). */
    for (int field = 0; field < 4; field++) {
        const unsigned char *q = p;
        if (ASN1_get_object(&q, &l, &tag, &cls, (long)(data + len - p)) & 0x80)
            goto malformed;
        if (field >= 2 && !(cls == V_ASN1_CONTEXT_SPECIFIC && tag == field - 2))
            continue; /* optional [0]/[1] absent */
        if (field == 2) {
            set_der = q;
            set_len = l;
        } else if (field == 3) {
            why = "revocation information (CRLs) is present";
            goto out;
        }
        p = q + l;
    }
    for (const unsigned char *q = set_der; q != NULL && q < set_der + set_len; n_choices++) {
        if ((ASN1_get_object(&q, &l, &tag, &cls, (long)(set_der + set_len - q)) & 0x80) ||
            cls != V_ASN1_UNIVERSAL || tag != V_ASN1_SEQUENCE) {
            why = "the certificate set holds something other than X.509 certificates";
            goto out;
        }
        q += l;
    }
    if ((ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_SET ||
        (ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_SEQUENCE ||
        (ASN1_get_object(&p, &l, &tag, &cls, (long)(data + len - p)) & 0x80) || tag != V_ASN1_INTEGER) {
        why = "the SignerInfos are malformed";
        goto out;
    }
    if (l != 1 || p[0] != 1) {
        why = "SignerInfo version is not 1";
        goto out;
    }
    if (sk_CMS_SignerInfo_num(sis) != 1) {
        why = "not exactly one SignerInfo";
        goto out;
    }
    si = sk_CMS_SignerInfo_value(sis, 0);
    {
        X509_ALGOR *dig = NULL, *sig = NULL;
        const ASN1_OBJECT *oid;
        int ptype, base;
        CMS_SignerInfo_get0_algs(si, &pk, &signer, &dig, &sig);
        if (signer == NULL || pk == NULL) {
            why = "the signer's certificate is not in the package";
            goto out;
        }
        if (!sid_is_signers(si, signer)) {
            why = "the SignerInfo does not name its signer by the certificate's own issuer and serial";
            goto out;
        }
        X509_ALGOR_get0(&oid, &ptype, NULL, dig);
        if (OBJ_obj2nid(oid) != NID_sha256 || ptype != V_ASN1_UNDEF) {
            why = "the signer's digest algorithm is not SHA-256 without parameters";
            goto out;
        }
        /* One encoding per key type, the one OpenSSL (and so guardian-wrap)
         * writes: ecdsa-with-SHA256 without parameters; rsaEncryption with
         * NULL (PKCS#1 v1.5, which is deterministic). */
        X509_ALGOR_get0(&oid, &ptype, NULL, sig);
        base = EVP_PKEY_get_base_id(pk);
        if (base == EVP_PKEY_EC ? OBJ_obj2nid(oid) != NID_ecdsa_with_SHA256 || ptype != V_ASN1_UNDEF
            : base == EVP_PKEY_RSA ? OBJ_obj2nid(oid) != NID_rsaEncryption || ptype != V_ASN1_NULL
                                   : 1) {
            why = "the signature algorithm is not the one for the signer's key (ecdsa-with-SHA256 or rsaEncryption)";
            goto out;
        }
        /* Absent, not an empty set: X509at_get_attr_count(NULL) is -1. */
        if (CMS_unsigned_get_attr_count(si) >= 0) {
            why = "unsigned attributes are present";
            goto out;
        }
        if (base == EVP_PKEY_EC) {
            const ASN1_OCTET_STRING *s = CMS_SignerInfo_get0_signature(si);
            int low = guardian_ecdsa_sig_low_s(pk, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
            if (low != 1) {
                why = low == 0 ? "the ECDSA signature is high-s (s > n/2; (r, n - s) is the low-s form guardian-wrap "
                                 "writes)"
                               : "the ECDSA signature is not DER";
                goto out;
            }
        }
    }
    /* Exactly the signer's certificate and the certificates on its path to
     * the root, each once, no others, not the root. */
    certs = CMS_get1_certs(cms);
    path = roots != NULL ? verified_path(signer, certs, roots) : guardian_signer_path(signer, certs);
    if (path == NULL) {
        why = "the signer does not chain to the roots";
        goto out;
    }
    if (n_choices != sk_X509_num(certs) || n_choices != sk_X509_num(path)) {
        why = "the certificate set is not exactly the signer's certificate and its path to the root (a certificate "
              "was added, removed or repeated)";
        goto out;
    }
    for (int i = 0; i < sk_X509_num(path); i++) {
        if (!in_stack(certs, sk_X509_value(path, i))) {
            why = "the certificate set is not exactly the signer's certificate and its path to the root";
            goto out;
        }
    }
    /* And those certificates byte for byte: the signed attribute lists them. */
    {
        const ASN1_STRING *attr = CMS_signed_get0_data_by_OBJ(
            si, OBJ_nid2obj(NID_id_smime_aa_signingCertificateV2), -3, V_ASN1_SEQUENCE);
        int n = guardian_signing_cert_attr(path, &expected);
        if (n < 0) {
            why = "cannot encode the expected signingCertificateV2 attribute";
            goto out;
        }
        if (attr == NULL) {
            why = "no signed signingCertificateV2 attribute binds the certificate set (made by an older "
                  "guardian-wrap? make the package again)";
            goto out;
        }
        if (ASN1_STRING_length(attr) != n || memcmp(ASN1_STRING_get0_data(attr), expected, (size_t)n) != 0) {
            why = "the certificates are not the ones the signed signingCertificateV2 attribute lists";
            goto out;
        }
    }
    goto out;
malformed:
    why = "the container is malformed";
out:
    OPENSSL_free(again);
    OPENSSL_free(expected);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(path, X509_free);
    return why;
}
