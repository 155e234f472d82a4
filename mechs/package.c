/*
 * package.c — ASN.1 templates and the checked decoder of the Guardian package
 * content.  See package.h and docs/package-format.md.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/objects.h>

#include "package.h"

/* CKK_* values used in WrappedKey.keyType (PKCS#11 2.40). */
#define PKG_CKK_RSA 0x00
#define PKG_CKK_EC 0x03
#define PKG_CKK_GENERIC_SECRET 0x10
#define PKG_CKK_AES 0x1f

ASN1_SEQUENCE(GUARDIAN_WRAPPED_KEY) = {
    ASN1_SIMPLE(GUARDIAN_WRAPPED_KEY, label, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_WRAPPED_KEY, key_type, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_WRAPPED_KEY, wrapped, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_WRAPPED_KEY)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_WRAPPED_KEY)

ASN1_SEQUENCE(GUARDIAN_DATA_ITEM) = {
    ASN1_SIMPLE(GUARDIAN_DATA_ITEM, name, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_DATA_ITEM, protection, ASN1_ENUMERATED),
    ASN1_SIMPLE(GUARDIAN_DATA_ITEM, value, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_DATA_ITEM)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_DATA_ITEM)

ASN1_SEQUENCE(GUARDIAN_CERT_TEMPLATE) = {
    ASN1_SIMPLE(GUARDIAN_CERT_TEMPLATE, subject, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_CERT_TEMPLATE, validity_days, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_CERT_TEMPLATE, key_usage, ASN1_BIT_STRING),
    ASN1_SEQUENCE_OF_OPT(GUARDIAN_CERT_TEMPLATE, ext_key_usage, ASN1_OBJECT),
    ASN1_IMP_OPT(GUARDIAN_CERT_TEMPLATE, device_ext_oid, ASN1_OBJECT, 0),
    ASN1_IMP_OPT(GUARDIAN_CERT_TEMPLATE, no_device_ext, ASN1_NULL, 1),
} ASN1_SEQUENCE_END(GUARDIAN_CERT_TEMPLATE)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_CERT_TEMPLATE)

ASN1_SEQUENCE(GUARDIAN_KEY_TRANSPORT) = {
    ASN1_SIMPLE(GUARDIAN_KEY_TRANSPORT, scheme, ASN1_OBJECT),
    ASN1_SIMPLE(GUARDIAN_KEY_TRANSPORT, ephemeral_key, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_KEY_TRANSPORT)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_KEY_TRANSPORT)

ASN1_SEQUENCE(GUARDIAN_PRODUCTION_CA) = {
    ASN1_SIMPLE(GUARDIAN_PRODUCTION_CA, key, GUARDIAN_WRAPPED_KEY),
    ASN1_SEQUENCE_OF(GUARDIAN_PRODUCTION_CA, chain, X509),
} ASN1_SEQUENCE_END(GUARDIAN_PRODUCTION_CA)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_PRODUCTION_CA)

ASN1_SEQUENCE(GUARDIAN_GROUP_MEMBER) = {
    ASN1_SIMPLE(GUARDIAN_GROUP_MEMBER, guardian, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_GROUP_MEMBER, ephemeral_key, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_GROUP_MEMBER, wrapped_kek, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GUARDIAN_GROUP_MEMBER)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_GROUP_MEMBER)

ASN1_SEQUENCE(GUARDIAN_PACKAGE) = {
    ASN1_SIMPLE(GUARDIAN_PACKAGE, version, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, package_id, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, target_guardian, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, oem_id, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, product_id, ASN1_UTF8STRING),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, release_version, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, authorised_units, ASN1_INTEGER),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, not_after, ASN1_GENERALIZEDTIME),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, cert_template, GUARDIAN_CERT_TEMPLATE),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, transport, GUARDIAN_KEY_TRANSPORT),
    ASN1_SIMPLE(GUARDIAN_PACKAGE, production_ca, GUARDIAN_PRODUCTION_CA),
    ASN1_IMP_SEQUENCE_OF_OPT(GUARDIAN_PACKAGE, extra_keys, GUARDIAN_WRAPPED_KEY, 0),
    ASN1_IMP_SEQUENCE_OF_OPT(GUARDIAN_PACKAGE, data_items, GUARDIAN_DATA_ITEM, 1),
    ASN1_IMP_SEQUENCE_OF_OPT(GUARDIAN_PACKAGE, group, GUARDIAN_GROUP_MEMBER, 2),
} ASN1_SEQUENCE_END(GUARDIAN_PACKAGE)
IMPLEMENT_ASN1_FUNCTIONS(GUARDIAN_PACKAGE)

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return 0;
}

int guardian_device_ext_oid_ok(const ASN1_OBJECT *oid)
{
    static const unsigned char id_ce[] = {0x55, 0x1d}, id_pkix[] = {0x2b, 0x06, 0x01, 0x05, 0x05, 0x07};
    const unsigned char *d = OBJ_get0_data(oid);
    size_t n = OBJ_length(oid);
    if (d == NULL || n < 3 || n > GUARDIAN_DEVICE_EXT_OID_MAX)
        return 0;
    return memcmp(d, id_ce, sizeof(id_ce)) != 0 && (n < sizeof(id_pkix) || memcmp(d, id_pkix, sizeof(id_pkix)) != 0);
}

/* GUARDIAN_OID_DEVICE's DER contents: 2.25 = 0x69, then the UUID's 128-bit
 * arc in base 128, then .3. */
static const uint8_t oid_legacy_device[] = {0x69, 0xde, 0xb6, 0xed, 0xc7, 0xe2, 0x81, 0xc2, 0x83, 0x81,
                                            0x94, 0xef, 0x85, 0xad, 0x99, 0x8e, 0xb8, 0xbd, 0x2f, 0x03};

int guardian_template_device_ext(const GUARDIAN_CERT_TEMPLATE *t, uint8_t oid[GUARDIAN_DEVICE_EXT_OID_MAX])
{
    size_t n;
    if (t->device_ext_oid != NULL && t->no_device_ext != NULL)
        return -1;
    if (t->no_device_ext != NULL)
        return 0;
    if (t->device_ext_oid == NULL) {
        memcpy(oid, oid_legacy_device, sizeof(oid_legacy_device));
        return (int)sizeof(oid_legacy_device);
    }
    if (!guardian_device_ext_oid_ok(t->device_ext_oid))
        return -1;
    n = (size_t)OBJ_length(t->device_ext_oid);
    memcpy(oid, OBJ_get0_data(t->device_ext_oid), n);
    return (int)n;
}

int guardian_id_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-' || c == ':';
}

int guardian_pkg_id_copy(const ASN1_UTF8STRING *s, char out[GUARDIAN_PKG_NAME_MAX + 1])
{
    int n = ASN1_STRING_length(s);
    const unsigned char *d = ASN1_STRING_get0_data(s);
    if (n < 1 || n > GUARDIAN_PKG_NAME_MAX)
        return 0;
    for (int i = 0; i < n; i++)
        if (!guardian_id_char(d[i]))
            return 0;
    memcpy(out, d, (size_t)n);
    out[n] = '\0';
    return 1;
}

/* Labels and names: printable ASCII, no control characters. */
static int label_ok(const ASN1_UTF8STRING *s)
{
    int n = ASN1_STRING_length(s);
    const unsigned char *d = ASN1_STRING_get0_data(s);
    if (n < 1 || n > GUARDIAN_PKG_NAME_MAX)
        return 0;
    for (int i = 0; i < n; i++)
        if (d[i] < 0x20 || d[i] > 0x7e)
            return 0;
    return 1;
}

static int get_u64(const ASN1_INTEGER *a, uint64_t *out)
{
    return a != NULL && ASN1_INTEGER_get_uint64(out, a) == 1;
}

static int wrapped_key_ok(const GUARDIAN_WRAPPED_KEY *k, int private_only, const char *what, char *err,
                          size_t errlen)
{
    uint64_t type = 0;
    int n = ASN1_STRING_length(k->wrapped);

    if (!label_ok(k->label))
        return fail(err, errlen, "%s: label must be 1-%d printable ASCII characters", what, GUARDIAN_PKG_NAME_MAX);
    if (!get_u64(k->key_type, &type))
        return fail(err, errlen, "%s: key type is not a valid integer", what);
    if (type != PKG_CKK_EC && type != PKG_CKK_RSA && (private_only || (type != PKG_CKK_AES && type != PKG_CKK_GENERIC_SECRET)))
        return fail(err, errlen, "%s: unsupported key type 0x%llx", what, (unsigned long long)type);
    /* RFC 5649 output: a multiple of 8 bytes, at least 16. */
    if (n < 16 || n > 16384 || n % 8 != 0)
        return fail(err, errlen, "%s: wrapped key has an invalid length (%d bytes)", what, n);
    return 1;
}

static int point_ok(const ASN1_OCTET_STRING *p)
{
    int n = ASN1_STRING_length(p);
    return (n == 65 || n == 97) && ASN1_STRING_get0_data(p)[0] == 0x04;
}

int guardian_group_id(const uint8_t *members, size_t n, uint8_t out[GUARDIAN_PKG_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = 0;
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, GUARDIAN_GROUP_ID_LABEL, strlen(GUARDIAN_GROUP_ID_LABEL)) == 1 &&
             EVP_DigestUpdate(md, members, n * GUARDIAN_PKG_HASH_LEN) == 1 && EVP_DigestFinal_ex(md, out, &len) == 1 &&
             len == GUARDIAN_PKG_HASH_LEN;
    EVP_MD_CTX_free(md);
    return ok;
}

int guardian_group_member(const struct guardian_package *pkg, const uint8_t self[GUARDIAN_PKG_HASH_LEN])
{
    if (pkg->group_members == 0 || pkg->asn1 == NULL || pkg->asn1->group == NULL)
        return -1;
    for (int i = 0; i < sk_GUARDIAN_GROUP_MEMBER_num(pkg->asn1->group); i++)
        if (memcmp(ASN1_STRING_get0_data(sk_GUARDIAN_GROUP_MEMBER_value(pkg->asn1->group, i)->guardian), self,
                   GUARDIAN_PKG_HASH_LEN) == 0)
            return i;
    return -1;
}

int guardian_group_kek_context(const struct guardian_package *pkg, int i, uint8_t out[32])
{
    const GUARDIAN_GROUP_MEMBER *m;
    if (i < 0 || pkg->asn1 == NULL || pkg->asn1->group == NULL || i >= sk_GUARDIAN_GROUP_MEMBER_num(pkg->asn1->group))
        return 0;
    m = sk_GUARDIAN_GROUP_MEMBER_value(pkg->asn1->group, i);
    return guardian_kek_context(pkg->package_id, ASN1_STRING_get0_data(m->guardian),
                                ASN1_STRING_get0_data(m->ephemeral_key), (size_t)ASN1_STRING_length(m->ephemeral_key),
                                out);
}

/* A group package's own rules (docs/package-format.md, "A package for a group
 * of Guardians"): version 1, an ECDH scheme, no package-level ephemeral key,
 * 2..GUARDIAN_GROUP_MAX members in ascending order, each with a point and a
 * 40-byte wrapped KEK, and targetGuardian = the group ID of the members. */
static int group_ok(const GUARDIAN_PACKAGE *a, struct guardian_package *out, char *err, size_t errlen)
{
    int n = sk_GUARDIAN_GROUP_MEMBER_num(a->group);
    uint8_t digests[GUARDIAN_GROUP_MAX * GUARDIAN_PKG_HASH_LEN], id[GUARDIAN_PKG_HASH_LEN];

    if (n < 2 || n > GUARDIAN_GROUP_MAX)
        return fail(err, errlen, "a group package names 2-%d Guardians (this one %d)", GUARDIAN_GROUP_MAX, n);
    if (out->ca_in_guardian)
        return fail(err, errlen, "a group package carries its production CA key (version 1): a key made in one "
                                 "Guardian cannot be shared");
    if (out->scheme != GUARDIAN_KT_ECDH_AESCBC && out->scheme != GUARDIAN_KT_ECDH_SHA256KDF)
        return fail(err, errlen, "a group package uses an ECDH key transport (aes-cbc or x963-sha256)");
    if (ASN1_STRING_length(a->transport->ephemeral_key) != 0)
        return fail(err, errlen, "a group package has no package-level ephemeral key (each member has its own)");
    for (int i = 0; i < n; i++) {
        const GUARDIAN_GROUP_MEMBER *m = sk_GUARDIAN_GROUP_MEMBER_value(a->group, i);
        if (ASN1_STRING_length(m->guardian) != GUARDIAN_PKG_HASH_LEN)
            return fail(err, errlen, "group member %d: the Guardian must be a %d-byte SHA-256 digest", i,
                        GUARDIAN_PKG_HASH_LEN);
        memcpy(digests + (size_t)i * GUARDIAN_PKG_HASH_LEN, ASN1_STRING_get0_data(m->guardian), GUARDIAN_PKG_HASH_LEN);
        if (i > 0 && memcmp(digests + (size_t)(i - 1) * GUARDIAN_PKG_HASH_LEN,
                            digests + (size_t)i * GUARDIAN_PKG_HASH_LEN, GUARDIAN_PKG_HASH_LEN) >= 0)
            return fail(err, errlen, "group member %d: members must be in ascending order of their digests, each "
                                     "once", i);
        if (!point_ok(m->ephemeral_key))
            return fail(err, errlen, "group member %d: ephemeral key must be an uncompressed P-256 or P-384 point", i);
        if (ASN1_STRING_length(m->wrapped_kek) != GUARDIAN_GROUP_WRAPPED_KEK_LEN)
            return fail(err, errlen, "group member %d: the wrapped KEK must be %d bytes", i,
                        GUARDIAN_GROUP_WRAPPED_KEK_LEN);
    }
    if (!guardian_group_id(digests, (size_t)n, id))
        return fail(err, errlen, "SHA-256 failed");
    if (memcmp(id, out->target_guardian, sizeof(id)) != 0)
        return fail(err, errlen, "the target of a group package is not the group ID of its members");
    out->group_members = n;
    return 1;
}

int guardian_package_scheme(const ASN1_OBJECT *oid)
{
    char text[128];
    if (oid == NULL || OBJ_obj2txt(text, sizeof(text), oid, 1) <= 0)
        return 0;
    if (strcmp(text, GUARDIAN_OID_KT_ECDH_AESCBC) == 0)
        return GUARDIAN_KT_ECDH_AESCBC;
    if (strcmp(text, GUARDIAN_OID_KT_ECDH_SHA256KDF) == 0)
        return GUARDIAN_KT_ECDH_SHA256KDF;
    if (strcmp(text, GUARDIAN_OID_KT_NONE) == 0)
        return GUARDIAN_KT_NONE;
    if (strcmp(text, GUARDIAN_OID_KT_RSAOAEP_SHA256) == 0)
        return GUARDIAN_KT_RSAOAEP_SHA256;
    return 0;
}

void guardian_package_free(struct guardian_package *pkg)
{
    if (pkg == NULL)
        return;
    GUARDIAN_PACKAGE_free(pkg->asn1);
    memset(pkg, 0, sizeof(*pkg));
}

int guardian_package_decode(const uint8_t *der, size_t len, struct guardian_package *out, char *err,
                            size_t errlen)
{
    const unsigned char *p = der;
    unsigned char *again = NULL;
    GUARDIAN_PACKAGE *a = NULL;
    struct tm tm;
    uint64_t u = 0;
    int n, ok = 0;

    memset(out, 0, sizeof(*out));
    if (der == NULL || len == 0 || len > GUARDIAN_PACKAGE_MAX_BYTES)
        return fail(err, errlen, "package content is empty or larger than %d bytes", GUARDIAN_PACKAGE_MAX_BYTES);
    a = d2i_GUARDIAN_PACKAGE(NULL, &p, (long)len);
    if (a == NULL)
        return fail(err, errlen, "package content is not a valid GuardianPackage structure");
    if ((size_t)(p - der) != len) {
        fail(err, errlen, "package content has %zu trailing bytes", len - (size_t)(p - der));
        goto out;
    }
    /* DER only: one encoding per package, so that its digest identifies it. */
    n = i2d_GUARDIAN_PACKAGE(a, &again);
    if (n < 0 || (size_t)n != len || memcmp(again, der, len) != 0) {
        fail(err, errlen, "package content is not in canonical DER");
        goto out;
    }

    if (!get_u64(a->version, &u) || (u != GUARDIAN_PACKAGE_VERSION && u != GUARDIAN_PACKAGE_VERSION_CA_IN_GUARDIAN)) {
        fail(err, errlen, "unsupported package format version (this Guardian reads versions %d and %d)",
             GUARDIAN_PACKAGE_VERSION, GUARDIAN_PACKAGE_VERSION_CA_IN_GUARDIAN);
        goto out;
    }
    out->ca_in_guardian = u == GUARDIAN_PACKAGE_VERSION_CA_IN_GUARDIAN;
    if (ASN1_STRING_length(a->package_id) != GUARDIAN_PKG_ID_LEN) {
        fail(err, errlen, "package ID must be %d bytes", GUARDIAN_PKG_ID_LEN);
        goto out;
    }
    memcpy(out->package_id, ASN1_STRING_get0_data(a->package_id), GUARDIAN_PKG_ID_LEN);
    if (ASN1_STRING_length(a->target_guardian) != GUARDIAN_PKG_HASH_LEN) {
        fail(err, errlen, "target Guardian must be a %d-byte SHA-256 digest", GUARDIAN_PKG_HASH_LEN);
        goto out;
    }
    memcpy(out->target_guardian, ASN1_STRING_get0_data(a->target_guardian), GUARDIAN_PKG_HASH_LEN);
    if (!guardian_pkg_id_copy(a->oem_id, out->oem_id) || !guardian_pkg_id_copy(a->product_id, out->product_id)) {
        fail(err, errlen, "OEM ID and product ID must be 1-%d characters of A-Z a-z 0-9 . _ - :",
             GUARDIAN_PKG_NAME_MAX);
        goto out;
    }
    if (!get_u64(a->release_version, &u) || u > UINT32_MAX) {
        fail(err, errlen, "release version must be 0..%u", UINT32_MAX);
        goto out;
    }
    out->release_version = (uint32_t)u;
    if (!get_u64(a->authorised_units, &u) || u < 1 || u > (UINT64_C(1) << 40)) {
        fail(err, errlen, "authorised unit count must be 1..2^40");
        goto out;
    }
    out->authorised_units = u;
    if (ASN1_STRING_length(a->not_after) != 15 || !ASN1_TIME_to_tm(a->not_after, &tm)) {
        fail(err, errlen, "not-after must be a GeneralizedTime YYYYMMDDHHMMSSZ");
        goto out;
    }
    out->not_after = (int64_t)timegm(&tm);

    {
        const GUARDIAN_CERT_TEMPLATE *t = a->cert_template;
        int sl = ASN1_STRING_length(t->subject);
        if (sl < 1 || sl > 512 || !get_u64(t->validity_days, &u) || u < 1 || u > 36500 ||
            ASN1_STRING_length(t->key_usage) > 2 ||
            (t->ext_key_usage != NULL && sk_ASN1_OBJECT_num(t->ext_key_usage) > GUARDIAN_PKG_MAX_ITEMS)) {
            fail(err, errlen, "device certificate template is invalid (subject 1-512 bytes, validity 1-36500 days)");
            goto out;
        }
        if (t->device_ext_oid != NULL && t->no_device_ext != NULL) {
            fail(err, errlen, "device certificate template both names a device-identity extension OID and says "
                              "there is none");
            goto out;
        }
        if (t->device_ext_oid != NULL && !guardian_device_ext_oid_ok(t->device_ext_oid)) {
            fail(err, errlen, "device-identity extension OID is invalid (3-32 bytes, not under 2.5.29 or "
                              "1.3.6.1.5.5.7)");
            goto out;
        }
    }

    out->scheme = guardian_package_scheme(a->transport->scheme);
    if (out->scheme == 0) {
        fail(err, errlen, "unknown key transport scheme");
        goto out;
    }
    n = ASN1_STRING_length(a->transport->ephemeral_key);
    if (a->group != NULL) {
        /* First: a group package's transport is its members' (group_ok
         * refuses every other scheme). */
        if (!group_ok(a, out, err, errlen))
            goto out;
    } else if (out->scheme == GUARDIAN_KT_NONE) {
        /* No transport: only where nothing is wrapped (checked below). */
        if (!out->ca_in_guardian || n != 0) {
            fail(err, errlen, "no key transport is for version-2 packages only, with an empty ephemeral key");
            goto out;
        }
    } else if (out->scheme == GUARDIAN_KT_RSAOAEP_SHA256) {
        /* The OAEP ciphertext: as long as the modulus, RSA 2048..4096. */
        if (n < 256 || n > 512) {
            fail(err, errlen, "the RSA-OAEP encrypted key must be 256..512 bytes (RSA 2048..4096)");
            goto out;
        }
    } else if (!point_ok(a->transport->ephemeral_key)) {
        fail(err, errlen, "ephemeral key must be an uncompressed P-256 or P-384 point");
        goto out;
    }

    if (out->ca_in_guardian) {
        /* The key is the Guardian's: only its type and label travel. */
        uint64_t kt = 0;
        if (!label_ok(a->production_ca->key->label) || !get_u64(a->production_ca->key->key_type, &kt) ||
            (kt != PKG_CKK_EC && kt != PKG_CKK_RSA) || ASN1_STRING_length(a->production_ca->key->wrapped) != 0) {
            fail(err, errlen, "version 2: the production CA key must be an EC or RSA key in the Guardian, with no "
                              "wrapped bytes");
            goto out;
        }
    } else if (!wrapped_key_ok(a->production_ca->key, 1, "production CA key", err, errlen))
        goto out;
    n = sk_X509_num(a->production_ca->chain);
    if (n < 1 || n > GUARDIAN_PKG_MAX_ITEMS) {
        fail(err, errlen, "production CA chain must hold 1-%d certificates", GUARDIAN_PKG_MAX_ITEMS);
        goto out;
    }
    if (a->extra_keys != NULL) {
        if (sk_GUARDIAN_WRAPPED_KEY_num(a->extra_keys) > GUARDIAN_PKG_MAX_ITEMS) {
            fail(err, errlen, "more than %d extra keys", GUARDIAN_PKG_MAX_ITEMS);
            goto out;
        }
        for (int i = 0; i < sk_GUARDIAN_WRAPPED_KEY_num(a->extra_keys); i++)
            if (!wrapped_key_ok(sk_GUARDIAN_WRAPPED_KEY_value(a->extra_keys, i), 0, "extra key", err, errlen))
                goto out;
    }
    if (a->data_items != NULL) {
        int count = sk_GUARDIAN_DATA_ITEM_num(a->data_items);
        if (count > GUARDIAN_PKG_MAX_ITEMS) {
            fail(err, errlen, "more than %d data items", GUARDIAN_PKG_MAX_ITEMS);
            goto out;
        }
        for (int i = 0; i < count; i++) {
            const GUARDIAN_DATA_ITEM *d = sk_GUARDIAN_DATA_ITEM_value(a->data_items, i);
            long prot = ASN1_ENUMERATED_get(d->protection);
            int vl = ASN1_STRING_length(d->value);
            if (!label_ok(d->name)) {
                fail(err, errlen, "data item %d: name must be 1-%d printable ASCII characters", i,
                     GUARDIAN_PKG_NAME_MAX);
                goto out;
            }
            for (int j = 0; j < i; j++)
                if (ASN1_STRING_cmp(d->name, sk_GUARDIAN_DATA_ITEM_value(a->data_items, j)->name) == 0) {
                    fail(err, errlen, "data item %d: name repeated", i);
                    goto out;
                }
            if ((prot != GUARDIAN_DATA_INTEGRITY && prot != GUARDIAN_DATA_CONFIDENTIAL) || vl > GUARDIAN_PKG_MAX_DATA_BYTES ||
                (prot == GUARDIAN_DATA_CONFIDENTIAL && (vl < 16 || vl % 8 != 0))) {
                fail(err, errlen, "data item %d: invalid protection or value length", i);
                goto out;
            }
        }
    }
    if (out->scheme == GUARDIAN_KT_NONE) {
        int secrets = a->extra_keys != NULL && sk_GUARDIAN_WRAPPED_KEY_num(a->extra_keys) > 0;
        for (int i = 0; a->data_items != NULL && i < sk_GUARDIAN_DATA_ITEM_num(a->data_items); i++)
            secrets |= ASN1_ENUMERATED_get(sk_GUARDIAN_DATA_ITEM_value(a->data_items, i)->protection) ==
                       GUARDIAN_DATA_CONFIDENTIAL;
        if (secrets) {
            fail(err, errlen, "a package without key transport carries a wrapped key or a confidential item");
            goto out;
        }
    }
    out->asn1 = a;
    a = NULL;
    ok = 1;
out:
    OPENSSL_free(again);
    GUARDIAN_PACKAGE_free(a);
    if (!ok)
        memset(out, 0, sizeof(*out));
    return ok;
}

int guardian_kek_context(const uint8_t package_id[GUARDIAN_PKG_ID_LEN], const uint8_t target[GUARDIAN_PKG_HASH_LEN],
                         const uint8_t *ephemeral_point, size_t point_len, uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, GUARDIAN_KEK_CONTEXT_LABEL, strlen(GUARDIAN_KEK_CONTEXT_LABEL)) == 1 &&
             EVP_DigestUpdate(md, package_id, GUARDIAN_PKG_ID_LEN) == 1 &&
             EVP_DigestUpdate(md, target, GUARDIAN_PKG_HASH_LEN) == 1 &&
             EVP_DigestUpdate(md, ephemeral_point, point_len) == 1 && EVP_DigestFinal_ex(md, out, &n) == 1 &&
             n == 32;
    EVP_MD_CTX_free(md);
    return ok;
}

int guardian_package_kek_context(const struct guardian_package *pkg, uint8_t out[32])
{
    const ASN1_OCTET_STRING *eph = pkg->asn1->transport->ephemeral_key;
    if (pkg->scheme == GUARDIAN_KT_RSAOAEP_SHA256)
        return guardian_kek_context(pkg->package_id, pkg->target_guardian, NULL, 0, out);
    return guardian_kek_context(pkg->package_id, pkg->target_guardian, ASN1_STRING_get0_data(eph),
                                (size_t)ASN1_STRING_length(eph), out);
}
