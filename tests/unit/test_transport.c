/*
 * test_transport.c — the id-guardian-transports extension of the Guardian's
 * agreement certificate and guardian-wrap's choice of a key transport
 * (mechs/transport.c, docs/package-format.md "Which transports a Guardian
 * states").  What the module measures and writes is test_module.c's
 * test_transport_facts; guardian-wrap's use of the choice is
 * tests/tools/test_guardian_wrap.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "package.h"
#include "transport.h"

/* 2.2, 2.1, 2.0 under the arc, DER: what a SoftHSM/NSS Guardian writes. */
static int encode(const int *kt, size_t n, unsigned char **der)
{
    return guardian_transports_encode(kt, n, der);
}

static void test_round_trip(void **st)
{
    const int kt[] = {GUARDIAN_KT_ECDH_SHA256KDF, GUARDIAN_KT_ECDH_AESCBC, GUARDIAN_KT_NONE};
    struct guardian_transports t;
    unsigned char *der = NULL;
    char err[200];
    int len;
    (void)st;
    len = encode(kt, 3, &der);
    assert_true(len > 2);
    assert_int_equal(der[0], 0x30); /* SEQUENCE */
    assert_int_equal(der[1], len - 2);
    assert_int_equal(der[2], 0x06); /* OF OBJECT IDENTIFIER */
    assert_int_equal(guardian_transports_decode(der, (size_t)len, &t, err, sizeof(err)), 1);
    assert_int_equal(t.present, 1);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_SHA256KDF);
    assert_string_equal(t.oid[0], GUARDIAN_OID_KT_ECDH_SHA256KDF);
    assert_int_equal(t.kt[1], GUARDIAN_KT_ECDH_AESCBC);
    assert_int_equal(t.kt[2], GUARDIAN_KT_NONE);
    OPENSSL_free(der);
}

static void test_encode_refuses(void **st)
{
    const int dup[] = {GUARDIAN_KT_ECDH_AESCBC, GUARDIAN_KT_ECDH_AESCBC};
    const int unknown[] = {GUARDIAN_KT_ECDH_AESCBC, 99};
    const int many[GUARDIAN_TRANSPORTS_MAX + 1] = {0};
    unsigned char *der = NULL;
    (void)st;
    assert_int_equal(encode(dup, 2, &der), -1);
    assert_null(der);
    assert_int_equal(encode(unknown, 2, &der), -1);
    assert_int_equal(encode(dup, 0, &der), -1);
    assert_int_equal(encode(many, GUARDIAN_TRANSPORTS_MAX + 1, &der), -1);
}

/* Bad values are refused with a line that says what is wrong. */
static void test_decode_refuses(void **st)
{
    struct guardian_transports t;
    char err[200];
    /* 30 0B 06 09 <2.25.1...> would be fine; these are not. */
    static const unsigned char empty[] = {0x30, 0x00};
    static const unsigned char not_seq[] = {0x31, 0x03, 0x06, 0x01, 0x2a};
    static const unsigned char long_len[] = {0x30, 0x81, 0x03, 0x06, 0x01, 0x2a}; /* BER, not DER */
    static const unsigned char trailing[] = {0x30, 0x03, 0x06, 0x01, 0x2a, 0x00};
    static const unsigned char twice[] = {0x30, 0x06, 0x06, 0x01, 0x2a, 0x06, 0x01, 0x2a};
    static const unsigned char integer[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    (void)st;
    assert_int_equal(guardian_transports_decode(empty, sizeof(empty), &t, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "lists 0 schemes"));
    assert_int_equal(guardian_transports_decode(not_seq, sizeof(not_seq), &t, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "not a SEQUENCE OF OBJECT IDENTIFIER"));
    assert_int_equal(guardian_transports_decode(long_len, sizeof(long_len), &t, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "not DER"));
    assert_int_equal(guardian_transports_decode(trailing, sizeof(trailing), &t, err, sizeof(err)), 0);
    assert_int_equal(guardian_transports_decode(twice, sizeof(twice), &t, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "twice"));
    assert_int_equal(guardian_transports_decode(integer, sizeof(integer), &t, err, sizeof(err)), 0);
    assert_int_equal(t.n, 0);
    /* The positive control: one OID this build does not know is kept, as 0. */
    {
        static const unsigned char other[] = {0x30, 0x03, 0x06, 0x01, 0x2a};
        assert_int_equal(guardian_transports_decode(other, sizeof(other), &t, err, sizeof(err)), 1);
        assert_int_equal(t.n, 1);
        assert_int_equal(t.kt[0], 0);
        assert_string_equal(t.oid[0], "1.2");
    }
}

/* In a certificate: non-critical, read back; absent = aes-cbc only; twice refused. */
static void test_in_certificate(void **st)
{
    const int both[] = {GUARDIAN_KT_ECDH_SHA256KDF, GUARDIAN_KT_ECDH_AESCBC};
    const int one[] = {GUARDIAN_KT_ECDH_AESCBC};
    struct guardian_transports t;
    X509 *x = X509_new();
    ASN1_OBJECT *oid = OBJ_txt2obj(GUARDIAN_OID_TRANSPORTS, 1);
    char err[200];
    (void)st;
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.present, 0);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_AESCBC);
    assert_int_equal(guardian_transports_add(x, both, 2), 1);
    assert_int_equal(X509_EXTENSION_get_critical(X509_get_ext(x, X509_get_ext_by_OBJ(x, oid, -1))), 0);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.present, 1);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_SHA256KDF);
    /* Put again: replaced. */
    assert_int_equal(guardian_transports_add(x, one, 1), 1);
    assert_int_equal(X509_get_ext_count(x), 1);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.n, 1);
    /* Two of them (not something the module writes): refused. */
    {
        X509_EXTENSION *e = X509_EXTENSION_dup(X509_get_ext(x, 0));
        assert_int_equal(X509_add_ext(x, e, -1), 1);
        X509_EXTENSION_free(e);
    }
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "twice"));
    ASN1_OBJECT_free(oid);
    X509_free(x);
}

static struct guardian_transports listing(const int *kt, size_t n)
{
    struct guardian_transports t;
    memset(&t, 0, sizeof(t));
    t.present = 1;
    t.n = n;
    for (size_t i = 0; i < n; i++) {
        t.kt[i] = kt[i];
        strcpy(t.oid[i], kt[i] ? guardian_transport_oid(kt[i]) : "1.2.3");
    }
    return t;
}

static void test_choice(void **st)
{
    const int nss[] = {GUARDIAN_KT_ECDH_SHA256KDF, GUARDIAN_KT_ECDH_AESCBC, GUARDIAN_KT_NONE};
    const int softhsm[] = {GUARDIAN_KT_ECDH_AESCBC, GUARDIAN_KT_NONE};
    const int unknown_first[] = {0, GUARDIAN_KT_ECDH_AESCBC};
    const int none_only[] = {GUARDIAN_KT_NONE};
    struct guardian_transports t = listing(nss, 3);
    char err[600];
    (void)st;
    /* auto: the first the tool makes, i.e. the strongest stated. */
    assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), GUARDIAN_KT_ECDH_SHA256KDF);
    assert_int_equal(guardian_transport_choose(&t, GUARDIAN_KT_ECDH_AESCBC, 0, err, sizeof(err)),
                     GUARDIAN_KT_ECDH_AESCBC);
    t = listing(softhsm, 2);
    assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), GUARDIAN_KT_ECDH_AESCBC);
    /* An explicit scheme not listed: refused, naming what is offered ... */
    assert_int_equal(guardian_transport_choose(&t, GUARDIAN_KT_ECDH_SHA256KDF, 0, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "--kdf x963-sha256"));
    assert_non_null(strstr(err, "aes-cbc (" GUARDIAN_OID_KT_ECDH_AESCBC ")"));
    assert_non_null(strstr(err, "--kdf-unlisted"));
    /* ... unless overridden. */
    assert_int_equal(guardian_transport_choose(&t, GUARDIAN_KT_ECDH_SHA256KDF, 1, err, sizeof(err)),
                     GUARDIAN_KT_ECDH_SHA256KDF);
    /* A scheme this build does not know is skipped, not chosen. */
    t = listing(unknown_first, 2);
    assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), GUARDIAN_KT_ECDH_AESCBC);
    /* Nothing to carry a secret with: auto refuses, and says what there is. */
    t = listing(none_only, 1);
    assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "offers no key transport"));
    assert_non_null(strstr(err, "none (" GUARDIAN_OID_KT_NONE ")"));
    assert_non_null(strstr(err, "imports no secret at all"));
    assert_non_null(strstr(err, "guardianctl ca-request"));
    /* ... which a list with another scheme (unknown here) does not say. */
    t = listing(unknown_first, 1);
    assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), 0);
    assert_null(strstr(err, "imports no secret at all"));
    t = listing(none_only, 1);
    /* "none" is never a --kdf for a package with a secret, listed or not. */
    assert_int_equal(guardian_transport_choose(&t, GUARDIAN_KT_NONE, 1, err, sizeof(err)), 0);
    /* No extension: aes-cbc, as before the statement existed. */
    {
        X509 *x = X509_new();
        assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
        assert_int_equal(guardian_transport_choose(&t, 0, 0, err, sizeof(err)), GUARDIAN_KT_ECDH_AESCBC);
        assert_int_equal(guardian_transport_choose(&t, GUARDIAN_KT_ECDH_SHA256KDF, 0, err, sizeof(err)), 0);
        X509_free(x);
    }
    assert_int_equal(guardian_transport_by_name("x963-sha256"), GUARDIAN_KT_ECDH_SHA256KDF);
    assert_int_equal(guardian_transport_by_name("aes-cbc"), GUARDIAN_KT_ECDH_AESCBC);
    assert_int_equal(guardian_transport_by_name("sha1"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_decode_refuses), cmocka_unit_test(test_in_certificate),
        cmocka_unit_test(test_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
