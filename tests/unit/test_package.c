/*
 * test_package.c — the package content decoder (mechs/package.c) against
 * hand-built GuardianPackage structures: a valid one decodes, and each field out
 * of its limits (docs/package-format.md) is refused with a message naming it.
 * And the container's building blocks (mechs/package_container.c): low-s
 * ECDSA, the signer's path, the signingCertificateV2 attribute.  And the
 * template's device-identity extension setting and the subject's
 * PrintableString values (mechs/cert_builder.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "cert_builder.h"
#include "package.h"
#include "package_container.h"

static X509 *some_cert(void)
{
    static X509 *x;
    if (x == NULL) {
        EVP_PKEY *k = EVP_EC_gen("P-256");
        x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (unsigned char *)"ca", -1, -1, 0);
        X509_set_issuer_name(x, X509_get_subject_name(x));
        X509_gmtime_adj(X509_getm_notBefore(x), 0);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, k);
        X509_sign(x, k, EVP_sha256());
        EVP_PKEY_free(k);
    }
    return x;
}

static void set_str(ASN1_STRING *s, const char *v)
{
    ASN1_STRING_set(s, v, (int)strlen(v));
}

static GUARDIAN_WRAPPED_KEY *wrapped_key(const char *label, long type, int len)
{
    GUARDIAN_WRAPPED_KEY *k = GUARDIAN_WRAPPED_KEY_new();
    unsigned char buf[20000];
    memset(buf, 0xab, sizeof(buf));
    set_str(k->label, label);
    ASN1_INTEGER_set(k->key_type, type);
    ASN1_OCTET_STRING_set(k->wrapped, buf, len);
    return k;
}

/* A valid package; `mutate` changes one thing before encoding. */
static GUARDIAN_PACKAGE *valid(void)
{
    GUARDIAN_PACKAGE *p = GUARDIAN_PACKAGE_new();
    unsigned char id[16] = {1}, target[32] = {2}, point[65] = {0x04};
    ASN1_INTEGER_set(p->version, 1);
    ASN1_OCTET_STRING_set(p->package_id, id, sizeof(id));
    ASN1_OCTET_STRING_set(p->target_guardian, target, sizeof(target));
    set_str(p->oem_id, "ACME");
    set_str(p->product_id, "SENSOR-1");
    ASN1_INTEGER_set(p->release_version, 3);
    ASN1_INTEGER_set(p->authorised_units, 1000);
    ASN1_GENERALIZEDTIME_set_string(p->not_after, "20301231235959Z");
    set_str(p->cert_template->subject, "CN=${device_id}");
    ASN1_INTEGER_set(p->cert_template->validity_days, 3650);
    ASN1_BIT_STRING_set_bit(p->cert_template->key_usage, 0, 1);
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_ECDH_AESCBC, 1);
    ASN1_OCTET_STRING_set(p->transport->ephemeral_key, point, sizeof(point));
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("production-ca", 3, 152);
    X509_up_ref(some_cert());
    sk_X509_push(p->production_ca->chain, some_cert());
    return p;
}

static int decode(GUARDIAN_PACKAGE *p, char *err, size_t errlen)
{
    unsigned char *der = NULL;
    int n = i2d_GUARDIAN_PACKAGE(p, &der), ok;
    struct guardian_package out;
    assert_true(n > 0);
    ok = guardian_package_decode(der, (size_t)n, &out, err, errlen);
    if (ok) {
        assert_non_null(out.asn1);
        guardian_package_free(&out);
    } else {
        assert_null(out.asn1);
    }
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);
    return ok;
}

static void refused(GUARDIAN_PACKAGE *p, const char *why)
{
    char err[256] = "";
    if (decode(p, err, sizeof(err)))
        fail_msg("accepted, expected a refusal mentioning '%s'", why);
    if (strstr(err, why) == NULL)
        fail_msg("refused with '%s', expected it to mention '%s'", err, why);
}

static void test_valid(void **st)
{
    char err[256] = "";
    GUARDIAN_PACKAGE *p = valid();
    struct guardian_package out;
    unsigned char *der = NULL;
    int n = i2d_GUARDIAN_PACKAGE(p, &der);
    uint8_t ctx[32];
    (void)st;
    assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
    assert_string_equal(out.oem_id, "ACME");
    assert_string_equal(out.product_id, "SENSOR-1");
    assert_int_equal(out.release_version, 3);
    assert_int_equal(out.authorised_units, 1000);
    assert_int_equal(out.not_after, 1924991999); /* 2030-12-31 23:59:59 UTC */
    assert_int_equal(out.scheme, GUARDIAN_KT_ECDH_AESCBC);
    assert_true(guardian_package_kek_context(&out, ctx));
    guardian_package_free(&out);
    /* Trailing bytes and truncation. */
    der = OPENSSL_realloc(der, (size_t)n + 1);
    der[n] = 0;
    assert_false(guardian_package_decode(der, (size_t)n + 1, &out, err, sizeof(err)));
    assert_non_null(strstr(err, "trailing"));
    assert_false(guardian_package_decode(der, (size_t)n - 1, &out, err, sizeof(err)));
    assert_false(guardian_package_decode(der, 0, &out, err, sizeof(err)));
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);
}

/* Format version 2 (the production CA key in the Guardian): no wrapped
 * bytes; no transport only there and only without a secret. */
static GUARDIAN_PACKAGE *valid_v2(void)
{
    GUARDIAN_PACKAGE *p = valid();
    ASN1_INTEGER_set(p->version, 2);
    ASN1_OCTET_STRING_set(p->production_ca->key->wrapped, (const unsigned char *)"", 0);
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_NONE, 1);
    ASN1_OCTET_STRING_set(p->transport->ephemeral_key, (const unsigned char *)"", 0);
    return p;
}

static void test_version_2(void **st)
{
    char err[256] = "";
    GUARDIAN_PACKAGE *p = valid_v2();
    struct guardian_package out;
    unsigned char *der = NULL;
    int n = i2d_GUARDIAN_PACKAGE(p, &der);
    (void)st;
    assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
    assert_true(out.ca_in_guardian);
    assert_int_equal(out.scheme, GUARDIAN_KT_NONE);
    guardian_package_free(&out);
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);
    /* Version 1 keeps its meaning: a wrapped key, a transport. */
    p = valid();
    der = NULL;
    n = i2d_GUARDIAN_PACKAGE(p, &der);
    assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
    assert_false(out.ca_in_guardian);
    guardian_package_free(&out);
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);

    p = valid_v2();
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("production-ca", 3, 152);
    refused(p, "no wrapped bytes");
    p = valid_v2(), ASN1_INTEGER_set(p->production_ca->key->key_type, 0x1f), refused(p, "EC or RSA key");
    p = valid(), ASN1_OCTET_STRING_set(p->production_ca->key->wrapped, (const unsigned char *)"", 0),
    refused(p, "wrapped key has an invalid length");
    p = valid();
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_NONE, 1);
    refused(p, "no key transport is for version-2 packages only");
    p = valid_v2(), ASN1_OCTET_STRING_set(p->transport->ephemeral_key, (const unsigned char *)"\x04", 1),
    refused(p, "empty ephemeral key");
    p = valid_v2();
    p->extra_keys = sk_GUARDIAN_WRAPPED_KEY_new_null();
    sk_GUARDIAN_WRAPPED_KEY_push(p->extra_keys, wrapped_key("attest", 3, 152));
    refused(p, "without key transport carries a wrapped key");
    {
        GUARDIAN_DATA_ITEM *d = GUARDIAN_DATA_ITEM_new();
        unsigned char v[32] = {0};
        p = valid_v2();
        set_str(d->name, "boot");
        ASN1_ENUMERATED_set(d->protection, GUARDIAN_DATA_CONFIDENTIAL);
        ASN1_OCTET_STRING_set(d->value, v, sizeof(v));
        p->data_items = sk_GUARDIAN_DATA_ITEM_new_null();
        sk_GUARDIAN_DATA_ITEM_push(p->data_items, d);
        refused(p, "confidential item");
    }
    /* Version 2 with a real transport (a confidential item travels): fine. */
    {
        unsigned char point[65] = {0x04};
        p = valid_v2();
        ASN1_OBJECT_free(p->transport->scheme);
        p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_ECDH_AESCBC, 1);
        ASN1_OCTET_STRING_set(p->transport->ephemeral_key, point, sizeof(point));
        assert_true(decode(p, err, sizeof(err)));
    }
}

/* id-guardian-kt-rsaoaep-sha256-v1: ephemeralKey is the OAEP ciphertext,
 * 256..512 bytes (RSA 2048..4096); C is the context with no point, the same
 * for any ciphertext. */
static void test_rsa_oaep(void **st)
{
    static const size_t ok_lens[] = {256, 384, 512}, bad_lens[] = {0, 65, 255, 513};
    unsigned char enc[520];
    char err[256] = "";
    uint8_t c1[32], c2[32], want[32];
    struct guardian_package out;
    (void)st;
    memset(enc, 0x5a, sizeof(enc));
    for (size_t i = 0; i < sizeof(ok_lens) / sizeof(ok_lens[0]); i++) {
        GUARDIAN_PACKAGE *p = valid();
        unsigned char *der = NULL;
        int n;
        ASN1_OBJECT_free(p->transport->scheme);
        p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_RSAOAEP_SHA256, 1);
        ASN1_OCTET_STRING_set(p->transport->ephemeral_key, enc, (int)ok_lens[i]);
        n = i2d_GUARDIAN_PACKAGE(p, &der);
        assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
        assert_int_equal(out.scheme, GUARDIAN_KT_RSAOAEP_SHA256);
        assert_true(guardian_package_kek_context(&out, i == 0 ? c1 : c2));
        assert_true(guardian_kek_context(out.package_id, out.target_guardian, NULL, 0, want));
        assert_memory_equal(i == 0 ? c1 : c2, want, 32);
        guardian_package_free(&out);
        OPENSSL_free(der);
        GUARDIAN_PACKAGE_free(p);
    }
    assert_memory_equal(c1, c2, 32); /* the ciphertext is not in C */
    for (size_t i = 0; i < sizeof(bad_lens) / sizeof(bad_lens[0]); i++) {
        GUARDIAN_PACKAGE *p = valid();
        ASN1_OBJECT_free(p->transport->scheme);
        p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_RSAOAEP_SHA256, 1);
        ASN1_OCTET_STRING_set(p->transport->ephemeral_key, enc, (int)bad_lens[i]);
        refused(p, "RSA-OAEP encrypted key must be 256..512 bytes");
    }
}

static void test_fields_out_of_limits(void **st)
{
    GUARDIAN_PACKAGE *p;
    char long_id[70], long_subject[600];
    unsigned char b15[15] = {0}, b31[31] = {0}, b64[64] = {0x04};
    (void)st;
    memset(long_id, 'A', sizeof(long_id) - 1);
    long_id[GUARDIAN_PKG_NAME_MAX + 1] = '\0';
    memset(long_subject, 'x', sizeof(long_subject) - 1);
    long_subject[sizeof(long_subject) - 1] = '\0';

    p = valid(), ASN1_INTEGER_set(p->version, 3), refused(p, "format version");
    p = valid(), ASN1_OCTET_STRING_set(p->package_id, b15, 15), refused(p, "package ID must be 16 bytes");
    p = valid(), ASN1_OCTET_STRING_set(p->target_guardian, b31, 31), refused(p, "target Guardian");
    p = valid(), set_str(p->oem_id, long_id), refused(p, "OEM ID and product ID");
    p = valid(), set_str(p->oem_id, "AC ME"), refused(p, "OEM ID and product ID");
    p = valid(), set_str(p->product_id, ""), refused(p, "OEM ID and product ID");
    p = valid(), ASN1_INTEGER_set_uint64(p->release_version, UINT64_C(1) << 32), refused(p, "release version");
    p = valid(), ASN1_INTEGER_set(p->release_version, -1), refused(p, "release version");
    p = valid(), ASN1_INTEGER_set(p->authorised_units, 0), refused(p, "authorised unit count");
    p = valid(), ASN1_INTEGER_set_uint64(p->authorised_units, (UINT64_C(1) << 40) + 1),
    refused(p, "authorised unit count");
    p = valid(), ASN1_GENERALIZEDTIME_set_string(p->not_after, "203012312359Z"), refused(p, "not-after");
    p = valid(), set_str(p->cert_template->subject, long_subject), refused(p, "template");
    p = valid(), ASN1_INTEGER_set(p->cert_template->validity_days, 0), refused(p, "template");
    p = valid(), ASN1_INTEGER_set(p->cert_template->validity_days, 36501), refused(p, "template");
    p = valid();
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj("1.2.3.4", 1);
    refused(p, "unknown key transport scheme");
    p = valid(), ASN1_OCTET_STRING_set(p->transport->ephemeral_key, b64, 64), refused(p, "ephemeral key");
    p = valid();
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("production-ca", 3, 15);
    refused(p, "invalid length");
    p = valid();
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("production-ca", 3, 16392);
    refused(p, "invalid length");
    p = valid();
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("production-ca", 0x1f, 40); /* an AES key cannot be the CA */
    refused(p, "unsupported key type");
    p = valid();
    GUARDIAN_WRAPPED_KEY_free(p->production_ca->key);
    p->production_ca->key = wrapped_key("bad\nlabel", 3, 40);
    refused(p, "label");
    p = valid();
    X509_free(sk_X509_pop(p->production_ca->chain));
    refused(p, "chain must hold");
    p = valid();
    p->extra_keys = sk_GUARDIAN_WRAPPED_KEY_new_null();
    for (int i = 0; i < GUARDIAN_PKG_MAX_ITEMS + 1; i++)
        sk_GUARDIAN_WRAPPED_KEY_push(p->extra_keys, wrapped_key("k", 0x1f, 40));
    refused(p, "extra keys");
    p = valid();
    p->data_items = sk_GUARDIAN_DATA_ITEM_new_null();
    for (int i = 0; i < 2; i++) {
        GUARDIAN_DATA_ITEM *d = GUARDIAN_DATA_ITEM_new();
        set_str(d->name, "config");
        ASN1_ENUMERATED_set(d->protection, GUARDIAN_DATA_INTEGRITY);
        sk_GUARDIAN_DATA_ITEM_push(p->data_items, d);
    }
    refused(p, "name repeated");
    p = valid();
    p->data_items = sk_GUARDIAN_DATA_ITEM_new_null();
    {
        GUARDIAN_DATA_ITEM *d = GUARDIAN_DATA_ITEM_new();
        unsigned char ten[10] = {0};
        set_str(d->name, "secret");
        ASN1_ENUMERATED_set(d->protection, GUARDIAN_DATA_CONFIDENTIAL);
        ASN1_OCTET_STRING_set(d->value, ten, sizeof(ten)); /* not an RFC 5649 output */
        sk_GUARDIAN_DATA_ITEM_push(p->data_items, d);
    }
    refused(p, "invalid protection or value length");
    p = valid();
    p->data_items = sk_GUARDIAN_DATA_ITEM_new_null();
    {
        GUARDIAN_DATA_ITEM *d = GUARDIAN_DATA_ITEM_new();
        static unsigned char big[GUARDIAN_PKG_MAX_DATA_BYTES + 1];
        set_str(d->name, "image");
        ASN1_ENUMERATED_set(d->protection, GUARDIAN_DATA_INTEGRITY);
        ASN1_OCTET_STRING_set(d->value, big, sizeof(big));
        sk_GUARDIAN_DATA_ITEM_push(p->data_items, d);
    }
    refused(p, "invalid protection or value length");
}

/* The template's three device-extension settings, as signed bytes. */
static int template_ext(GUARDIAN_PACKAGE *p, uint8_t oid[GUARDIAN_DEVICE_EXT_OID_MAX], unsigned char last2[2])
{
    unsigned char *der = NULL;
    int n = i2d_GUARDIAN_CERT_TEMPLATE(p->cert_template, &der), r;
    char err[256] = "";
    struct guardian_package out;
    unsigned char *pkg = NULL;
    int pn = i2d_GUARDIAN_PACKAGE(p, &pkg);
    assert_true(n > 2 && pn > 0);
    memcpy(last2, der + n - 2, 2);
    if (!guardian_package_decode(pkg, (size_t)pn, &out, err, sizeof(err)))
        fail_msg("refused: %s", err);
    r = guardian_template_device_ext(out.asn1->cert_template, oid);
    guardian_package_free(&out);
    OPENSSL_free(der);
    OPENSSL_free(pkg);
    GUARDIAN_PACKAGE_free(p);
    return r;
}

static void test_device_ext_setting(void **st)
{
    uint8_t oid[GUARDIAN_DEVICE_EXT_OID_MAX];
    unsigned char last2[2];
    ASN1_OBJECT *legacy = OBJ_txt2obj(GUARDIAN_OID_DEVICE, 1), *oem = OBJ_txt2obj("1.3.6.1.4.1.55555.1", 1);
    GUARDIAN_PACKAGE *p;
    /* A template as packages signed before [1] existed carry it:
     * SEQUENCE { "CN=${device_id}", 3650, digitalSignature }. */
    static const unsigned char old_template[] = {0x30, 0x19, 0x0c, 0x0f, 'C', 'N', '=', '$', '{', 'd', 'e',
                                                 'v', 'i', 'c', 'e', '_', 'i', 'd', '}', 0x02, 0x02, 0x0e,
                                                 0x42, 0x03, 0x02, 0x07, 0x80};
    const unsigned char *q = old_template;
    GUARDIAN_CERT_TEMPLATE *t = d2i_GUARDIAN_CERT_TEMPLATE(NULL, &q, sizeof(old_template));
    (void)st;

    /* Neither field: the legacy default, 2.25.<uuid>.3, byte for byte. */
    assert_non_null(t);
    assert_ptr_equal(q, old_template + sizeof(old_template));
    assert_int_equal(guardian_template_device_ext(t, oid), OBJ_length(legacy));
    assert_memory_equal(oid, OBJ_get0_data(legacy), OBJ_length(legacy));
    GUARDIAN_CERT_TEMPLATE_free(t);
    assert_int_equal(template_ext(valid(), oid, last2), OBJ_length(legacy));

    /* [1] noDeviceExt: no extension; encoded as 81 00 at the template's end. */
    p = valid();
    p->cert_template->no_device_ext = ASN1_NULL_new();
    assert_int_equal(template_ext(p, oid, last2), 0);
    assert_int_equal(last2[0], 0x81);
    assert_int_equal(last2[1], 0x00);

    /* [0] deviceExtOid: the OEM's OID. */
    p = valid();
    p->cert_template->device_ext_oid = OBJ_dup(oem);
    assert_int_equal(template_ext(p, oid, last2), OBJ_length(oem));
    assert_memory_equal(oid, OBJ_get0_data(oem), OBJ_length(oem));

    /* Both: refused, it says two things. */
    p = valid();
    p->cert_template->device_ext_oid = OBJ_dup(oem);
    p->cert_template->no_device_ext = ASN1_NULL_new();
    refused(p, "both names a device-identity extension OID and says there is none");
    /* A standard extension's OID: refused. */
    p = valid();
    p->cert_template->device_ext_oid = OBJ_txt2obj("2.5.29.99", 1);
    refused(p, "device-identity extension OID is invalid");
    ASN1_OBJECT_free(legacy);
    ASN1_OBJECT_free(oem);
}

/* A PrintableString value (C, serialNumber) is written as it is or refused:
 * A_1 is not silently A-1. */
static void test_subject_printable_string(void **st)
{
    struct guardian_subject_pattern pat;
    char err[256] = "";
    uint8_t name[1024];
    size_t n;
    static const uint8_t a_1[] = {0x13, 0x03, 'A', '-', '1'};
    (void)st;

    assert_false(guardian_subject_pattern_parse("C=U_S,CN=x", 10, &pat, err, sizeof(err)));
    assert_non_null(strstr(err, "C is a PrintableString, which cannot hold '_'"));
    assert_true(guardian_subject_pattern_parse("C=US,CN=x", 9, &pat, err, sizeof(err)));

    assert_true(guardian_subject_pattern_parse("serialNumber=${device_id},CN=${device_id}", 41, &pat, err,
                                               sizeof(err)));
    assert_int_equal(guardian_subject_der(&pat, "A_1", "ACME", "S1", name, sizeof(name), err, sizeof(err)), 0);
    assert_non_null(strstr(err, "serialNumber would hold '_'"));
    assert_non_null(strstr(err, "allowed: A-Z a-z 0-9 space ' ( ) + , - . / : = ?"));
    n = guardian_subject_der(&pat, "A-1", "ACME", "S1", name, sizeof(name), err, sizeof(err));
    assert_true(n > 0);
    assert_non_null(memmem(name, n, a_1, sizeof(a_1)));
    /* In a UTF8String (CN) the underscore is kept. */
    assert_true(guardian_subject_pattern_parse("CN=${device_id}", 15, &pat, err, sizeof(err)));
    n = guardian_subject_der(&pat, "A_1", "ACME", "S1", name, sizeof(name), err, sizeof(err));
    assert_true(n > 0);
    assert_non_null(memmem(name, n, "\x0c\x03" "A_1", 5));
    /* An OEM ID with '_' in a PrintableString: what guardian-wrap create refuses. */
    assert_true(guardian_subject_pattern_parse("C=${oem_id}", 11, &pat, err, sizeof(err)));
    assert_int_equal(guardian_subject_der(&pat, "A", "AC_ME", "S1", name, sizeof(name), err, sizeof(err)), 0);
    assert_non_null(strstr(err, "the subject's C would hold '_'"));
}

static void test_not_canonical_der(void **st)
{
    GUARDIAN_PACKAGE *p = valid();
    unsigned char *der = NULL, *ber;
    int n = i2d_GUARDIAN_PACKAGE(p, &der);
    struct guardian_package out;
    char err[256] = "";
    (void)st;
    /* Re-encode the version INTEGER (02 01 01 right after the outer header)
     * with a long-form length: valid BER, not DER. */
    ber = OPENSSL_malloc((size_t)n + 1);
    assert_int_equal(der[0], 0x30);
    {
        int hdr = (der[1] & 0x80) ? 2 + (der[1] & 0x7f) : 2;
        assert_int_equal(der[hdr], 0x02);
        memcpy(ber, der, (size_t)hdr);
        ber[hdr] = 0x02;
        ber[hdr + 1] = 0x81;
        ber[hdr + 2] = 0x01;
        memcpy(ber + hdr + 3, der + hdr + 2, (size_t)(n - hdr - 2));
        /* fix the outer length (+1) */
        if (hdr == 4)
            ber[3] = (unsigned char)(der[3] + 1);
        else if (hdr == 3)
            ber[2] = (unsigned char)(der[2] + 1);
        else
            ber[1] = (unsigned char)(der[1] + 1);
    }
    assert_false(guardian_package_decode(ber, (size_t)n + 1, &out, err, sizeof(err)));
    OPENSSL_free(der);
    OPENSSL_free(ber);
    GUARDIAN_PACKAGE_free(p);
}

/* ---- the container's building blocks ---------------------------------------- */

/* A DER ECDSA signature over `hash` by `k`, as the octet string a SignerInfo
 * holds. */
static ASN1_OCTET_STRING *ecdsa_sign(EVP_PKEY *k, const unsigned char hash[32])
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
    unsigned char sig[160];
    size_t n = sizeof(sig);
    ASN1_OCTET_STRING *o = ASN1_OCTET_STRING_new();
    assert_int_equal(EVP_PKEY_sign_init(c), 1);
    assert_int_equal(EVP_PKEY_sign(c, sig, &n, hash, 32), 1);
    assert_int_equal(ASN1_OCTET_STRING_set(o, sig, (int)n), 1);
    EVP_PKEY_CTX_free(c);
    return o;
}

static int ecdsa_verifies(EVP_PKEY *k, const unsigned char hash[32], const ASN1_OCTET_STRING *sig)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
    int ok = EVP_PKEY_verify_init(c) == 1 &&
             EVP_PKEY_verify(c, ASN1_STRING_get0_data(sig), (size_t)ASN1_STRING_length(sig), hash, 32) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

/* (r, s) -> (r, n - s), by hand. */
static void flip_s(EVP_PKEY *k, ASN1_OCTET_STRING *sig)
{
    const unsigned char *p = ASN1_STRING_get0_data(sig);
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, ASN1_STRING_length(sig));
    BIGNUM *order = NULL, *flipped = BN_new();
    unsigned char *der = NULL;
    int n;
    assert_non_null(es);
    assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_ORDER, &order), 1);
    assert_int_equal(BN_sub(flipped, order, ECDSA_SIG_get0_s(es)), 1);
    assert_int_equal(ECDSA_SIG_set0(es, BN_dup(ECDSA_SIG_get0_r(es)), flipped), 1);
    n = i2d_ECDSA_SIG(es, &der);
    assert_int_equal(ASN1_OCTET_STRING_set(sig, der, n), 1);
    OPENSSL_free(der);
    BN_free(order);
    ECDSA_SIG_free(es);
}

static int low_s(EVP_PKEY *k, const ASN1_OCTET_STRING *sig)
{
    return guardian_ecdsa_sig_low_s(k, ASN1_STRING_get0_data(sig), (size_t)ASN1_STRING_length(sig));
}

static void test_ecdsa_low_s(void **st)
{
    static const char *const curves[] = {"P-256", "P-384"};
    unsigned char hash[32];
    (void)st;
    memset(hash, 0x5a, sizeof(hash));
    for (size_t c = 0; c < 2; c++) {
        EVP_PKEY *k = EVP_EC_gen(curves[c]), *rsa = EVP_RSA_gen(2048);
        int seen[2] = {0, 0};
        /* Signatures as OpenSSL makes them: either form; both verify; the
         * rewrite always gives the low one, which still verifies. */
        for (int i = 0; i < 64 && !(seen[0] && seen[1]); i++) {
            ASN1_OCTET_STRING *sig = ecdsa_sign(k, hash), *twin = ASN1_STRING_dup(sig);
            int was_low = low_s(k, sig);
            assert_true(was_low == 0 || was_low == 1);
            seen[was_low] = 1;
            flip_s(k, twin);
            assert_int_equal(low_s(k, twin), !was_low);
            assert_true(ecdsa_verifies(k, hash, sig));
            assert_true(ecdsa_verifies(k, hash, twin));
            assert_int_equal(guardian_ecdsa_sig_make_low_s(k, sig), 1);
            assert_int_equal(guardian_ecdsa_sig_make_low_s(k, twin), 1);
            assert_int_equal(low_s(k, sig), 1);
            assert_int_equal(ASN1_STRING_cmp(sig, twin), 0);
            assert_true(ecdsa_verifies(k, hash, sig));
            if (i == 0) {
                /* Not DER (a trailing byte), and not an EC key: neither. */
                unsigned char longer[160];
                int n = ASN1_STRING_length(sig);
                memcpy(longer, ASN1_STRING_get0_data(sig), (size_t)n);
                longer[n] = 0;
                assert_int_equal(guardian_ecdsa_sig_low_s(k, longer, (size_t)n + 1), -1);
                assert_int_equal(low_s(rsa, sig), -1);
                assert_int_equal(guardian_ecdsa_sig_make_low_s(rsa, sig), 0);
            }
            ASN1_OCTET_STRING_free(sig);
            ASN1_OCTET_STRING_free(twin);
        }
        assert_true(seen[0] && seen[1]);
        EVP_PKEY_free(k);
        EVP_PKEY_free(rsa);
    }
}

static X509 *cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    static long serial = 100;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void test_signer_path_and_attribute(void **st)
{
    EVP_PKEY *rk = EVP_EC_gen("P-256"), *ik = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256");
    X509 *root = cert("root", rk, NULL, NULL), *inter = cert("inter", ik, root, rk);
    X509 *signer = cert("signer", sk, inter, ik), *other = cert("other", sk, root, rk);
    STACK_OF(X509) *cands = sk_X509_new_null(), *path, *empty = sk_X509_new_null();
    unsigned char *a = NULL, *b = NULL;
    int al, bl;
    (void)st;

    /* The root and a certificate off the path are not on it; order of the
     * candidates does not matter. */
    sk_X509_push(cands, other);
    sk_X509_push(cands, root);
    sk_X509_push(cands, inter);
    path = guardian_signer_path(signer, cands);
    assert_int_equal(sk_X509_num(path), 2);
    assert_ptr_equal(sk_X509_value(path, 0), signer);
    assert_ptr_equal(sk_X509_value(path, 1), inter);
    al = guardian_signing_cert_attr(path, &a);
    assert_true(al > 0);
    bl = guardian_signing_cert_attr(path, &b);
    assert_int_equal(al, bl);
    assert_memory_equal(a, b, (size_t)al);
    OPENSSL_free(b);
    sk_X509_pop_free(path, X509_free);
    /* Without the intermediate: the signer alone, and another attribute. */
    path = guardian_signer_path(signer, empty);
    assert_int_equal(sk_X509_num(path), 1);
    bl = guardian_signing_cert_attr(path, &b);
    assert_true(bl > 0 && bl < al);
    OPENSSL_free(b);
    sk_X509_pop_free(path, X509_free);
    /* A self-signed signer is its own path. */
    path = guardian_signer_path(root, cands);
    assert_int_equal(sk_X509_num(path), 1);
    sk_X509_pop_free(path, X509_free);
    assert_int_equal(guardian_signing_cert_attr(empty, &b), -1);

    OPENSSL_free(a);
    sk_X509_free(cands);
    sk_X509_free(empty);
    X509_free(root);
    X509_free(inter);
    X509_free(signer);
    X509_free(other);
    EVP_PKEY_free(rk);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(sk);
}

/* A group package of `n` members (digests 0x10+i...), ascending, target the
 * group ID, no package-level point. */
static GUARDIAN_PACKAGE *valid_group(int n)
{
    GUARDIAN_PACKAGE *p = valid();
    uint8_t digests[(GUARDIAN_GROUP_MAX + 1) * 32], id[32], point[65] = {0x04}, w[GUARDIAN_GROUP_WRAPPED_KEK_LEN] = {7};
    ASN1_OCTET_STRING_set(p->transport->ephemeral_key, (const unsigned char *)"", 0);
    p->group = sk_GUARDIAN_GROUP_MEMBER_new_null();
    for (int i = 0; i < n; i++) {
        GUARDIAN_GROUP_MEMBER *m = GUARDIAN_GROUP_MEMBER_new();
        memset(digests + 32 * i, 0x10 + i, 32);
        ASN1_OCTET_STRING_set(m->guardian, digests + 32 * i, 32);
        ASN1_OCTET_STRING_set(m->ephemeral_key, point, sizeof(point));
        ASN1_OCTET_STRING_set(m->wrapped_kek, w, sizeof(w));
        sk_GUARDIAN_GROUP_MEMBER_push(p->group, m);
    }
    assert_true(guardian_group_id(digests, (size_t)n, id));
    ASN1_OCTET_STRING_set(p->target_guardian, id, sizeof(id));
    return p;
}

static GUARDIAN_GROUP_MEMBER *member(GUARDIAN_PACKAGE *p, int i)
{
    return sk_GUARDIAN_GROUP_MEMBER_value(p->group, i);
}

/* The group ID of the members as they stand now (after a change to one). */
static void retarget(GUARDIAN_PACKAGE *p)
{
    uint8_t digests[(GUARDIAN_GROUP_MAX + 1) * 32], id[32];
    int n = sk_GUARDIAN_GROUP_MEMBER_num(p->group);
    for (int i = 0; i < n; i++)
        memcpy(digests + 32 * i, ASN1_STRING_get0_data(member(p, i)->guardian), 32);
    assert_true(guardian_group_id(digests, (size_t)n, id));
    ASN1_OCTET_STRING_set(p->target_guardian, id, sizeof(id));
}

static void test_group(void **st)
{
    char err[256] = "";
    GUARDIAN_PACKAGE *p = valid_group(3);
    struct guardian_package out;
    unsigned char *der = NULL, same[32];
    int n = i2d_GUARDIAN_PACKAGE(p, &der);
    uint8_t self[32], c0[32], c1[32];
    (void)st;

    /* Decoded: three members, each found by its digest, each its own C. */
    assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
    assert_int_equal(out.group_members, 3);
    for (int i = 0; i < 3; i++) {
        memset(self, 0x10 + i, sizeof(self));
        assert_int_equal(guardian_group_member(&out, self), i);
    }
    memset(self, 0x42, sizeof(self));
    assert_int_equal(guardian_group_member(&out, self), -1); /* not a member */
    assert_true(guardian_group_kek_context(&out, 0, c0));
    assert_true(guardian_group_kek_context(&out, 1, c1));
    assert_memory_not_equal(c0, c1, 32);
    assert_false(guardian_group_kek_context(&out, 3, c1));
    guardian_package_free(&out);
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);
    /* A one-Guardian package is no group: nobody is a "member". */
    p = valid();
    der = NULL;
    n = i2d_GUARDIAN_PACKAGE(p, &der);
    assert_true(guardian_package_decode(der, (size_t)n, &out, err, sizeof(err)));
    assert_int_equal(out.group_members, 0);
    memcpy(self, ASN1_STRING_get0_data(out.asn1->target_guardian), 32);
    assert_int_equal(guardian_group_member(&out, self), -1);
    guardian_package_free(&out);
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(p);

    /* The limits: 2..16 members. */
    p = valid_group(GUARDIAN_GROUP_MAX);
    assert_true(decode(p, err, sizeof(err)));
    refused(valid_group(GUARDIAN_GROUP_MAX + 1), "names 2-16 Guardians (this one 17)");
    refused(valid_group(1), "names 2-16 Guardians (this one 1)");
    p = valid_group(2);
    sk_GUARDIAN_GROUP_MEMBER_pop_free(p->group, GUARDIAN_GROUP_MEMBER_free);
    p->group = sk_GUARDIAN_GROUP_MEMBER_new_null();
    refused(p, "names 2-16 Guardians (this one 0)");

    /* The target must be the members' group ID: another member set's, or a
     * member's own digest, is refused. */
    p = valid_group(3);
    memset(same, 0x10, sizeof(same));
    ASN1_OCTET_STRING_set(p->target_guardian, same, sizeof(same));
    refused(p, "not the group ID of its members");
    p = valid_group(3);
    memset(same, 0x99, sizeof(same));
    ASN1_OCTET_STRING_set(member(p, 2)->guardian, same, sizeof(same)); /* a member swapped, target not */
    refused(p, "not the group ID of its members");

    /* One encoding: ascending, each once. */
    p = valid_group(3);
    memset(same, 0x11, sizeof(same));
    ASN1_OCTET_STRING_set(member(p, 0)->guardian, same, sizeof(same)); /* == member 1 */
    retarget(p);
    refused(p, "group member 1: members must be in ascending order");
    p = valid_group(3);
    {
        GUARDIAN_GROUP_MEMBER *m0 = member(p, 0), *m1 = member(p, 1); /* sk_set returns the new value */
        (void)sk_GUARDIAN_GROUP_MEMBER_set(p->group, 0, m1);
        (void)sk_GUARDIAN_GROUP_MEMBER_set(p->group, 1, m0);
    }
    retarget(p);
    refused(p, "group member 1: members must be in ascending order");

    /* Each member's fields. */
    p = valid_group(2);
    ASN1_OCTET_STRING_set(member(p, 1)->guardian, same, 31);
    refused(p, "group member 1: the Guardian must be a 32-byte SHA-256 digest");
    p = valid_group(2);
    ASN1_OCTET_STRING_set(member(p, 1)->ephemeral_key, (const unsigned char *)"\x02\x01", 2);
    refused(p, "group member 1: ephemeral key must be an uncompressed P-256 or P-384 point");
    p = valid_group(2);
    ASN1_OCTET_STRING_set(member(p, 0)->wrapped_kek, same, 32);
    refused(p, "group member 0: the wrapped KEK must be 40 bytes");

    /* The package as a whole. */
    p = valid_group(2);
    {
        uint8_t point[65] = {0x04};
        ASN1_OCTET_STRING_set(p->transport->ephemeral_key, point, sizeof(point));
    }
    refused(p, "no package-level ephemeral key");
    p = valid_group(2);
    ASN1_INTEGER_set(p->version, 2);
    ASN1_OCTET_STRING_set(p->production_ca->key->wrapped, (const unsigned char *)"", 0);
    refused(p, "carries its production CA key (version 1)");
    p = valid_group(2);
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_NONE, 1);
    refused(p, "uses an ECDH key transport");
    p = valid_group(2);
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_RSAOAEP_SHA256, 1);
    refused(p, "uses an ECDH key transport");
    p = valid_group(2);
    ASN1_OBJECT_free(p->transport->scheme);
    p->transport->scheme = OBJ_txt2obj(GUARDIAN_OID_KT_ECDH_SHA256KDF, 1);
    assert_true(decode(p, err, sizeof(err)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_fields_out_of_limits),
        cmocka_unit_test(test_version_2),
        cmocka_unit_test(test_rsa_oaep),
        cmocka_unit_test(test_device_ext_setting),
        cmocka_unit_test(test_subject_printable_string),
        cmocka_unit_test(test_not_canonical_der),
        cmocka_unit_test(test_ecdsa_low_s),
        cmocka_unit_test(test_signer_path_and_attribute),
        cmocka_unit_test(test_group),
    };
    int failed = cmocka_run_group_tests_name("package decoder", tests, NULL, NULL);
    X509_free(some_cert());
    return failed;
}
