/*
 * test_package.c — the package content decoder (mechs/package.c) against
 * hand-built GuardianPackage structures: a valid one decodes, and each field out
 * of its limits (docs/package-format.md) is refused with a message naming it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "package.h"

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

    p = valid(), ASN1_INTEGER_set(p->version, 2), refused(p, "format version");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_fields_out_of_limits),
        cmocka_unit_test(test_not_canonical_der),
    };
    int failed = cmocka_run_group_tests_name("package decoder", tests, NULL, NULL);
    X509_free(some_cert());
    return failed;
}
