/*
 * fuzz_device_key.c — libFuzzer target for what CKM_GUARDIAN_DERIVE_DEVICE_CERT
 * parses from untrusted input (mechs/cert_builder.c): the device's
 * SubjectPublicKeyInfo, sent by whoever drives the programming line, and the
 * subject pattern, from the (signed, but OEM-written) package template.
 *
 * First byte odd: subject pattern.  Even: device key; an accepted key must
 * also be accepted by OpenSSL's d2i_PUBKEY, and a certificate built around it
 * (with a dummy signature) must parse with d2i_X509 and slice back.
 */
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "cert_builder.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void build_certificate(const struct guardian_device_key *k)
{
    static const uint8_t alg[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
    static uint8_t name[] = {0x30, 0x00};
    static const char pattern[] = "CN=${device_id},OU=${product_id},O=${oem_id}";
    struct guardian_cert_issuer is;
    struct guardian_device dev = {(const uint8_t *)"dev-1", 5, "dev-1", k};
    struct guardian_cert_slices sl;
    uint8_t buf[GUARDIAN_CERT_BUF], ski[20], sig[64];
    const unsigned char *p = buf;
    size_t tbs, len;
    X509 *x;

    memset(&is, 0, sizeof(is));
    memcpy(is.oem_id, "ACME", 5);
    memcpy(is.product_id, "SENSOR-1", 9);
    is.validity_days = 3650;
    memcpy(is.sigalg, alg, sizeof(alg));
    is.sigalg_len = sizeof(alg);
    is.md = EVP_sha256();
    is.ca_kind = GUARDIAN_DEVKEY_EC_P256;
    is.ca_sig_len = 64;
    is.issuer_name = name;
    is.issuer_name_len = sizeof(name);
    is.device_ext_oid[0] = 0x2a;
    is.device_ext_oid[1] = 0x03;
    is.device_ext_oid[2] = 0x04;
    is.device_ext_oid_len = 3;
    if (!guardian_subject_pattern_parse(pattern, strlen(pattern), &is.subject, NULL, 0))
        __builtin_trap();
    memset(sig, 0x5a, sizeof(sig));
    tbs = guardian_tbs_build(&is, 42, 1700000000, &dev, buf, sizeof(buf), ski);
    if (tbs == 0)
        __builtin_trap(); /* every accepted key fits the buffer */
    len = guardian_cert_finish(&is, buf, sizeof(buf), tbs, sig, sizeof(sig));
    if (len == 0)
        __builtin_trap();
    x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || p != buf + len || !guardian_cert_slices(buf, len, &sl))
        __builtin_trap();
    X509_free(x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        struct guardian_subject_pattern pat;
        char err[256] = "";
        if (guardian_subject_pattern_parse((const char *)data + 1, size - 1, &pat, err, sizeof(err))) {
            if (pat.n == 0 || pat.n > GUARDIAN_SUBJECT_MAX_RDNS)
                __builtin_trap();
        } else if (err[0] == '\0') {
            __builtin_trap(); /* every refusal says why */
        }
        return 0;
    }
    {
        struct guardian_device_key k;
        const char *why = NULL;
        const unsigned char *p = data + 1;
        EVP_PKEY *pk;
        if (guardian_device_key_check(data + 1, size - 1, &k, &why) != GUARDIAN_DEVKEY_OK) {
            if (why == NULL)
                __builtin_trap();
            return 0;
        }
        pk = d2i_PUBKEY(NULL, &p, (long)(size - 1));
        if (pk == NULL || p != data + size)
            __builtin_trap(); /* we accepted what OpenSSL refuses */
        EVP_PKEY_free(pk);
        build_certificate(&k);
    }
    return 0;
}
