/*
 * test_derive.c — CKM_GUARDIAN_DERIVE_DEVICE_CERT (mechs/derive_device_cert.c)
 * through the module's function list, over the fake backend, with a
 * file-backed store in a temporary state directory.
 *
 * The fake backend plays a token holding each package's production CA key:
 * C_GetAttributeValue answers for the base-key handles, C_SignInit/C_Sign sign
 * with the CA's private key in OpenSSL (raw r || s, as CKM_ECDSA does).  The
 * store is reached through link-time seams (-Wl,--wrap, tests/unit/
 * CMakeLists.txt): guardian_store_issue, to fail it or to look at the module's
 * objects from another thread while the ISSUE record is being written;
 * guardian_store_package_material and guardian_store_products_each, to stop a
 * thread while it holds the derive cache's or the package objects' lock and
 * fork() under it.
 *
 * Packages (installed straight into the store, as an import would leave them):
 * SENSOR-1, whose CA certificate carries an uncompressed P-256 point,
 * COMPRESSED, whose CA certificate carries the point in compressed form, and
 * RSA-1, with an RSA-2048 CA (CKM_RSA_PKCS over a DigestInfo), and PRINT-1,
 * whose subject puts the device ID in a PrintableString (serialNumber).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "fake_backend.h"
#include "module.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define OEM "ACME"
#define SESSION 101          /* a R/W session in slot 1 */
#define RO_SESSION 501       /* a read-only session in slot 5 */
#define FIRST_CERT (GUARDIAN_COBJ_BASE | 1) /* the first certificate object after C_Initialize */
#define CHILD_TIMEOUT 10     /* seconds before a child that hangs is killed by alarm() */

static CK_FUNCTION_LIST *mod;
static char state_dir[64];

/* ---- the packages and their CA keys ------------------------------------------------- */

struct package {
    const char *product;
    uint8_t id[GUARDIAN_PACKAGE_ID_LEN];
    CK_OBJECT_HANDLE key;    /* the CA key's handle in the fake token */
    char label[128];         /* the CA key's CKA_LABEL */
    EVP_PKEY *ca;            /* the CA's key pair */
    uint8_t *ca_cert;
    size_t ca_cert_len;
    int compressed;          /* the CA certificate's point is compressed */
    int rsa;                 /* an RSA-2048 CA instead of P-256 */
    const char *subject;     /* the subject pattern; NULL: subject_pattern */
};

static struct package packages[] = {
    {.product = "SENSOR-1", .key = 0x100},
    {.product = "COMPRESSED", .key = 0x200, .compressed = 1},
    {.product = "RSA-1", .key = 0x400, .rsa = 1},
    {.product = "PRINT-1", .key = 0x500, .subject = "serialNumber=${device_id},CN=${device_id}"},
};
#define N_PACKAGES (sizeof(packages) / sizeof(packages[0]))

/* DeviceCertTemplate: subject pattern, 365 days, keyUsage digitalSignature. */
static const char subject_pattern[] = "CN=${device_id},OU=${product_id},O=${oem_id}";

static size_t cert_template(uint8_t *out, const char *pattern)
{
    size_t n = 0, sl = strlen(pattern);
    out[n++] = 0x30;
    out[n++] = (uint8_t)(2 + sl + 4 + 4);
    out[n++] = 0x0c;
    out[n++] = (uint8_t)sl;
    memcpy(out + n, pattern, sl);
    n += sl;
    memcpy(out + n, "\x02\x02\x01\x6d", 4); /* INTEGER 365 */
    n += 4;
    memcpy(out + n, "\x03\x02\x07\x80", 4); /* BIT STRING digitalSignature */
    n += 4;
    return n;
}

/* A self-signed production CA certificate for p->ca; its point compressed
 * when p->compressed. */
static void make_ca(struct package *p)
{
    X509 *x = X509_new();
    unsigned char *der = NULL;
    int len;

    p->ca = p->rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    assert_non_null(p->ca);
    if (p->compressed)
        assert_int_equal(EVP_PKEY_set_utf8_string_param(p->ca, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                                        "compressed"),
                         1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_set_version(x, X509_VERSION_3);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)p->product, -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    assert_int_equal(X509_set_pubkey(x, p->ca), 1);
    assert_true(X509_sign(x, p->ca, EVP_sha256()) > 0);
    len = i2d_X509(x, &der);
    assert_true(len > 0);
    /* The compressed CA's certificate really holds a 33-byte point. */
    {
        const unsigned char *pk = NULL;
        int pk_len = 0;
        X509_PUBKEY_get0_param(NULL, &pk, &pk_len, NULL, X509_get_X509_PUBKEY(x));
        if (!p->rsa)
            assert_int_equal(pk_len, p->compressed ? 33 : 65);
    }
    p->ca_cert = der;
    p->ca_cert_len = (size_t)len;
    X509_free(x);
}

static void install_packages(void)
{
    struct guardian_store *st = NULL;
    assert_int_equal(guardian_store_open(state_dir, &st), CKR_OK);
    for (size_t i = 0; i < N_PACKAGES; i++) {
        struct package *p = &packages[i];
        uint8_t tmpl[128];
        size_t tmpl_len = cert_template(tmpl, p->subject != NULL ? p->subject : subject_pattern);
        struct guardian_package_info info;
        memset(&info, 0, sizeof(info));
        memset(p->id, (int)(0x11 * (i + 1)), sizeof(p->id));
        memcpy(info.package_id, p->id, sizeof(p->id));
        memset(info.package_digest, (int)i + 1, sizeof(info.package_digest));
        snprintf(info.oem_id, sizeof(info.oem_id), "%s", OEM);
        snprintf(info.product_id, sizeof(info.product_id), "%s", p->product);
        info.release_version = 1;
        info.authorised_units = 100000;
        info.not_after = (int64_t)time(NULL) + 86400 * 30;
        info.cert_template = tmpl;
        info.cert_template_len = tmpl_len;
        info.ca_cert = p->ca_cert;
        info.ca_cert_len = p->ca_cert_len;
        assert_int_equal(guardian_store_package_install(st, &info, (int64_t)time(NULL), NULL, NULL), CKR_OK);
        snprintf(p->label, sizeof(p->label), "guardian:%s/%s/r1:production-ca", OEM, p->product);
    }
    guardian_store_close(st);
}

static struct package *package_of(CK_OBJECT_HANDLE key)
{
    for (size_t i = 0; i < N_PACKAGES; i++)
        if (packages[i].key == key)
            return &packages[i];
    return NULL;
}

/* The SubjectPublicKeyInfo of `k` (an EC point uncompressed). */
static size_t spki_of(EVP_PKEY *k, unsigned char *out)
{
    EVP_PKEY *copy = EVP_PKEY_dup(k);
    unsigned char *p = out;
    int n;
    assert_non_null(copy);
    if (EVP_PKEY_is_a(copy, "EC"))
        assert_int_equal(
            EVP_PKEY_set_utf8_string_param(copy, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "uncompressed"), 1);
    n = i2d_PUBKEY(copy, &p);
    EVP_PKEY_free(copy);
    assert_true(n > 0 && n <= 1024);
    return (size_t)n;
}

/* ---- the fake token ------------------------------------------------------------------ */

/* Called from the fake's C_GetAttributeValue on a base key: after the module
 * checked the parameters, before it built the certificate. */
static void (*on_key_lookup)(void);
static _Thread_local CK_OBJECT_HANDLE signing_key;
static atomic_int creates, destroys;
static atomic_ulong destroyed_handle;

static CK_RV token_session_info(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR si)
{
    if (s == 0 || s >= 1000)
        return CKR_SESSION_HANDLE_INVALID;
    memset(si, 0, sizeof(*si));
    si->slotID = s / 100;
    si->state = s >= 500 ? CKS_RO_USER_FUNCTIONS : CKS_RW_USER_FUNCTIONS;
    si->flags = CKF_SERIAL_SESSION | (s >= 500 ? 0 : CKF_RW_SESSION);
    return CKR_OK;
}

static CK_RV put(CK_ATTRIBUTE *a, const void *v, CK_ULONG len)
{
    if (a->pValue == NULL) {
        a->ulValueLen = len;
        return CKR_OK;
    }
    if (a->ulValueLen < len) {
        a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(a->pValue, v, len);
    a->ulValueLen = len;
    return CKR_OK;
}

/* The token's state anchor (mechs/anchor.c): one data object, handles from
 * ANCHOR_HANDLE up (an update makes a new one, then destroys the old). */
#define ANCHOR_HANDLE 0x10000
static unsigned char anchor_value[65536];
static CK_ULONG anchor_len;
static CK_OBJECT_HANDLE anchor_handle;

static int is_anchor(CK_OBJECT_HANDLE h)
{
    return h >= ANCHOR_HANDLE && h < ANCHOR_HANDLE + 0x10000;
}

static CK_RV token_get_attribute(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    struct package *p = package_of(h);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_RV rv = CKR_OK;
    (void)s;
    if (is_anchor(h)) {
        if (h != anchor_handle)
            return CKR_OBJECT_HANDLE_INVALID;
        CK_OBJECT_CLASS data = CKO_DATA;
        if (n == 1 && t[0].type == CKA_CLASS) /* the anchor's form (mechs/anchor.c: a data object here) */
            return put(&t[0], &data, sizeof(data));
        if (n != 1 || t[0].type != CKA_VALUE)
            return CKR_ATTRIBUTE_TYPE_INVALID;
        return put(&t[0], anchor_value, anchor_len);
    }
    if (p == NULL)
        return CKR_OBJECT_HANDLE_INVALID;
    if (on_key_lookup != NULL)
        on_key_lookup();
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV r;
        switch (t[i].type) {
        case CKA_CLASS: r = put(&t[i], &cls, sizeof(cls)); break;
        case CKA_ID: r = put(&t[i], p->id, sizeof(p->id)); break;
        case CKA_LABEL: r = put(&t[i], p->label, strlen(p->label)); break;
        default: t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION; r = CKR_ATTRIBUTE_TYPE_INVALID; break;
        }
        if (r != CKR_OK && rv == CKR_OK)
            rv = r;
    }
    return rv;
}

/* The session key of the mechanism's self-test (mechs/selftest.c), which runs
 * before a slot's first derive: this token can sign with it. */
#define SELFTEST_KEY 0x7e57

static CK_RV token_sign_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    struct package *p = package_of(k);
    (void)s;
    if (k == SELFTEST_KEY && m != NULL && m->mechanism == CKM_ECDSA) {
        signing_key = k;
        return CKR_OK;
    }
    if (p == NULL)
        return CKR_KEY_HANDLE_INVALID;
    if (m == NULL || m->mechanism != (p->rsa ? CKM_RSA_PKCS : CKM_ECDSA))
        return CKR_MECHANISM_INVALID;
    signing_key = k;
    return CKR_OK;
}

/* CKM_RSA_PKCS: PKCS#1 v1.5 padding of the data given (a DigestInfo). */
static CK_RV rsa_sign(EVP_PKEY *key, const CK_BYTE *data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    size_t n = *sig_len;
    CK_RV rv = CKR_FUNCTION_FAILED;
    if (ctx != NULL && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
        EVP_PKEY_sign(ctx, sig, &n, data, len) == 1) {
        *sig_len = n;
        rv = CKR_OK;
    }
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

/* Raw ECDSA over the hash given: r || s, 32 bytes each; or CKM_RSA_PKCS. */
static CK_RV token_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    struct package *p = package_of(signing_key);
    EVP_PKEY_CTX *ctx;
    unsigned char der[128];
    const unsigned char *q = der;
    size_t der_len = sizeof(der);
    ECDSA_SIG *es;
    CK_RV rv = CKR_FUNCTION_FAILED;
    (void)s;

    if (signing_key == SELFTEST_KEY) {
        signing_key = CK_INVALID_HANDLE;
        if (*sig_len < 64)
            return CKR_BUFFER_TOO_SMALL;
        memset(sig, 0x5e, 64);
        *sig_len = 64;
        return CKR_OK;
    }
    signing_key = CK_INVALID_HANDLE;
    if (p == NULL)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (p->rsa)
        return *sig_len < 256 ? CKR_BUFFER_TOO_SMALL : rsa_sign(p->ca, data, len, sig, sig_len);
    if (*sig_len < 64) {
        *sig_len = 64;
        return CKR_BUFFER_TOO_SMALL;
    }
    ctx = EVP_PKEY_CTX_new(p->ca, NULL);
    if (ctx != NULL && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, der, &der_len, data, len) == 1 &&
        (es = d2i_ECDSA_SIG(NULL, &q, (long)der_len)) != NULL) {
        const BIGNUM *r = NULL, *ss = NULL;
        ECDSA_SIG_get0(es, &r, &ss);
        if (BN_bn2binpad(r, sig, 32) == 32 && BN_bn2binpad(ss, sig + 32, 32) == 32) {
            *sig_len = 64;
            rv = CKR_OK;
        }
        ECDSA_SIG_free(es);
    }
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

/* The module's own session, to ask which releases the token holds
 * (package_objects.c): one in the slot asked. */
static CK_RV token_open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                                CK_SESSION_HANDLE_PTR out)
{
    (void)flags, (void)app, (void)notify;
    *out = slot * 100 + 50;
    return CKR_OK;
}

static CK_RV token_close_session(CK_SESSION_HANDLE s)
{
    (void)s;
    return CKR_OK;
}

/* A search for a release's production CA certificate (by its label) finds
 * it: the token holds every imported release; else nothing is found. */
static _Thread_local int finding_ca_cert;

static CK_RV token_find_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    static const char mark[] = ":production-ca-cert0";
    finding_ca_cert = 0;
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == CKA_LABEL && t[i].ulValueLen >= sizeof(mark) - 1 &&
            memcmp((const char *)t[i].pValue + t[i].ulValueLen - (sizeof(mark) - 1), mark, sizeof(mark) - 1) == 0)
            finding_ca_cert = 1;
    return s == 0 || s >= 1000 ? CKR_SESSION_HANDLE_INVALID : CKR_OK;
}

static CK_RV token_find(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count)
{
    (void)s;
    *count = 0; /* the token holds no other certificate */
    if (finding_ca_cert && max > 0) {
        out[0] = 0x310;
        *count = 1;
        finding_ca_cert = 0;
    }
    return CKR_OK;
}

static CK_RV token_find_final(CK_SESSION_HANDLE s)
{
    (void)s;
    return CKR_OK;
}

static CK_RV token_create(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out)
{
    (void)s;
    /* The state anchor (a data object, mechs/anchor.c) is not a certificate. */
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == CKA_CLASS && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS) &&
            *(CK_OBJECT_CLASS *)t[i].pValue == CKO_DATA) {
            for (CK_ULONG j = 0; j < n; j++)
                if (t[j].type == CKA_VALUE && t[j].ulValueLen <= sizeof(anchor_value)) {
                    memcpy(anchor_value, t[j].pValue, t[j].ulValueLen);
                    anchor_len = t[j].ulValueLen;
                }
            *out = anchor_handle = anchor_handle ? anchor_handle + 1 : ANCHOR_HANDLE;
            return CKR_OK;
        } else if (t[i].type == CKA_CLASS && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS) &&
                   *(CK_OBJECT_CLASS *)t[i].pValue == CKO_PRIVATE_KEY) {
            *out = SELFTEST_KEY;
            return CKR_OK;
        }
    atomic_fetch_add(&creates, 1);
    *out = 0x300;
    return CKR_OK;
}

static CK_RV token_destroy(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
    (void)s;
    /* The anchor's previous copy; the self-tests' objects (their key, and the
     * fake's C_DeriveKey and C_UnwrapKey results, 78 and 77). */
    if (is_anchor(h) || h == SELFTEST_KEY || h == 77 || h == 78)
        return CKR_OK;
    atomic_fetch_add(&destroys, 1);
    atomic_store(&destroyed_handle, h);
    return CKR_OK;
}

static void script_token(void)
{
    CK_FUNCTION_LIST *f = fake_backend_list();
    fake_backend_reset();
    f->C_GetSessionInfo = token_session_info;
    f->C_GetAttributeValue = token_get_attribute;
    f->C_SignInit = token_sign_init;
    f->C_Sign = token_sign;
    f->C_OpenSession = token_open_session;
    f->C_CloseSession = token_close_session;
    f->C_FindObjectsInit = token_find_init;
    f->C_FindObjects = token_find;
    f->C_FindObjectsFinal = token_find_final;
    f->C_CreateObject = token_create;
    f->C_DestroyObject = token_destroy;
}

/* ---- the store's seams --------------------------------------------------------------------- */

CK_RV __real_guardian_store_issue(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  uint64_t serial, const uint8_t *device_id, size_t device_id_len,
                                  const uint8_t *cert, size_t cert_len);
CK_RV __wrap_guardian_store_issue(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  uint64_t serial, const uint8_t *device_id, size_t device_id_len,
                                  const uint8_t *cert, size_t cert_len);
CK_RV __real_guardian_store_package_material(struct guardian_store *st,
                                             const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                             struct guardian_package_material *out);
CK_RV __wrap_guardian_store_package_material(struct guardian_store *st,
                                             const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                             struct guardian_package_material *out);
CK_RV __real_guardian_store_reserve_block(struct guardian_store *st, const char *oem_id, const char *product_id,
                                          const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], int64_t now,
                                          uint64_t want, uint64_t *first_serial, uint64_t *count);
CK_RV __wrap_guardian_store_reserve_block(struct guardian_store *st, const char *oem_id, const char *product_id,
                                          const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], int64_t now,
                                          uint64_t want, uint64_t *first_serial, uint64_t *count);
CK_RV __real_guardian_store_products_each(struct guardian_store *st,
                                          CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx);
CK_RV __wrap_guardian_store_products_each(struct guardian_store *st,
                                          CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx);

static atomic_int reservations;      /* guardian_store_reserve_block calls */
static CK_RV reserve_refusal;        /* non-zero: guardian_store_reserve_block returns it */

CK_RV __wrap_guardian_store_reserve_block(struct guardian_store *st, const char *oem_id, const char *product_id,
                                          const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], int64_t now,
                                          uint64_t want, uint64_t *first_serial, uint64_t *count)
{
    atomic_fetch_add(&reservations, 1);
    if (reserve_refusal != CKR_OK)
        return reserve_refusal;
    return __real_guardian_store_reserve_block(st, oem_id, product_id, package_id, now, want, first_serial, count);
}

static CK_RV issue_fails;            /* non-zero: guardian_store_issue returns it */
static void (*on_issue)(void);       /* called as the ISSUE record is written */
static atomic_int issues;

CK_RV __wrap_guardian_store_issue(struct guardian_store *st, const char *oem_id, const char *product_id,
                                  uint64_t serial, const uint8_t *device_id, size_t device_id_len,
                                  const uint8_t *cert, size_t cert_len)
{
    atomic_fetch_add(&issues, 1);
    if (on_issue != NULL)
        on_issue();
    if (issue_fails != CKR_OK)
        return issue_fails;
    return __real_guardian_store_issue(st, oem_id, product_id, serial, device_id, device_id_len, cert, cert_len);
}

/* A gate: the thread that reaches a gated store call (in the process that
 * closed the gate) waits there, with the lock its caller holds, until the
 * gate opens. */
struct gate {
    pthread_mutex_t m;
    pthread_cond_t c;
    pid_t owner;   /* the process whose threads stop; 0: open */
    int waiting;
};
static struct gate gate_material = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
static struct gate gate_products = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void gate_close(struct gate *g)
{
    pthread_mutex_lock(&g->m);
    g->owner = getpid();
    g->waiting = 0;
    pthread_mutex_unlock(&g->m);
}

static void gate_pass(struct gate *g)
{
    pid_t me = getpid();
    pthread_mutex_lock(&g->m);
    if (g->owner == me) {
        g->waiting = 1;
        pthread_cond_broadcast(&g->c);
        while (g->owner == me)
            pthread_cond_wait(&g->c, &g->m);
    }
    pthread_mutex_unlock(&g->m);
}

static void gate_wait_for_thread(struct gate *g)
{
    pthread_mutex_lock(&g->m);
    while (!g->waiting)
        pthread_cond_wait(&g->c, &g->m);
    pthread_mutex_unlock(&g->m);
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->m);
    g->owner = 0;
    pthread_cond_broadcast(&g->c);
    pthread_mutex_unlock(&g->m);
}

CK_RV __wrap_guardian_store_package_material(struct guardian_store *st,
                                             const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                                             struct guardian_package_material *out)
{
    gate_pass(&gate_material);
    return __real_guardian_store_package_material(st, package_id, out);
}

CK_RV __wrap_guardian_store_products_each(struct guardian_store *st,
                                          CK_RV (*fn)(const struct guardian_product *p, void *ctx), void *ctx)
{
    gate_pass(&gate_products);
    return __real_guardian_store_products_each(st, fn, ctx);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int group_setup(void **st)
{
    (void)st;
    snprintf(state_dir, sizeof(state_dir), "/tmp/guardian-unit-derive-XXXXXX");
    assert_non_null(mkdtemp(state_dir));
    setenv("GUARDIAN_STATE_DIR", state_dir, 1);
    for (size_t i = 0; i < N_PACKAGES; i++)
        make_ca(&packages[i]);
    install_packages();
    assert_int_equal(C_GetFunctionList(&mod), CKR_OK);
    return 0;
}

static int group_teardown(void **st)
{
    char cmd[128];
    (void)st;
    for (size_t i = 0; i < N_PACKAGES; i++) {
        EVP_PKEY_free(packages[i].ca);
        OPENSSL_free(packages[i].ca_cert);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup(void **st)
{
    (void)st;
    fake_backend_reset();
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    script_token();
    on_key_lookup = NULL;
    on_issue = NULL;
    issue_fails = CKR_OK;
    atomic_store(&creates, 0);
    atomic_store(&destroys, 0);
    atomic_store(&destroyed_handle, 0);
    atomic_store(&issues, 0);
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    on_key_lookup = NULL;
    on_issue = NULL;
    issue_fails = CKR_OK;
    if (guardian_backend_list() != NULL)
        assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);
    return 0;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static CK_RV derive_raw(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE base, CK_GUARDIAN_DEVICE_CERT_PARAMS *p,
                        CK_ATTRIBUTE *t, CK_ULONG nt, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, p, sizeof(*p)};
    return mod->C_DeriveKey(s, &mech, base, t, nt, out);
}

static CK_RV derive(CK_OBJECT_HANDLE base, const char *device_id, const unsigned char *spki, size_t spki_len,
                    CK_ATTRIBUTE *t, CK_ULONG nt, CK_OBJECT_HANDLE *out)
{
    CK_GUARDIAN_DEVICE_CERT_PARAMS p = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT,
                                        (CK_BYTE_PTR)device_id, strlen(device_id), (CK_BYTE_PTR)spki, spki_len};
    return derive_raw(SESSION, base, &p, t, nt, out);
}

static EVP_PKEY *device_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    return k;
}

/* How many certificate objects a search from session `s` finds. */
static CK_ULONG certificates_found(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
    CK_OBJECT_HANDLE h[8];
    CK_ULONG n = 0;
    if (mod->C_FindObjectsInit(s, &t, 1) != CKR_OK)
        return (CK_ULONG)-1;
    if (mod->C_FindObjects(s, h, 8, &n) != CKR_OK)
        n = (CK_ULONG)-1;
    mod->C_FindObjectsFinal(s);
    return n;
}

static CK_RV read_value(CK_OBJECT_HANDLE h, unsigned char *buf, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {CKA_VALUE, buf, *len};
    CK_RV rv = mod->C_GetAttributeValue(SESSION, h, &a, 1);
    *len = a.ulValueLen;
    return rv;
}

/* The certificate object `h`, parsed. */
static X509 *cert_of(CK_OBJECT_HANDLE h)
{
    unsigned char der[4096];
    CK_ULONG len = sizeof(der);
    const unsigned char *p = der;
    X509 *x;
    assert_int_equal(read_value(h, der, &len), CKR_OK);
    x = d2i_X509(NULL, &p, (long)len);
    assert_non_null(x);
    return x;
}

/* ---- the device certificate, and the object it is returned as ------------------------------------ */

static void test_issue(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    X509 *x;
    (void)st;

    assert_int_equal(derive(packages[0].key, "SN-1", spki, n, NULL, 0, &h), CKR_OK);
    assert_true(guardian_is_cert_object(h));
    assert_int_equal(certificates_found(SESSION), 1);
    x = cert_of(h);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), dk), 1);
    assert_int_equal(X509_verify(x, packages[0].ca), 1);
    X509_free(x);
    assert_int_equal(atomic_load(&issues), 1);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    EVP_PKEY_free(dk);
}


/* ---- template values: copied, never memcpy'd from NULL ----------------------------------------- */

/* {CKA_LABEL, NULL, 0} and {CKA_ID, NULL, 0}: an empty label and ID (under
 * UBSan, the old code's memcpy(label, NULL, 0) aborted the test). */
static void test_template_empty_values(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    CK_ATTRIBUTE t[] = {{CKA_LABEL, NULL, 0}, {CKA_ID, NULL, 0}};
    CK_BYTE label[64], id[64];
    CK_ATTRIBUTE q[] = {{CKA_LABEL, label, sizeof(label)}, {CKA_ID, id, sizeof(id)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;

    assert_int_equal(derive(packages[0].key, "SN-empty", spki, n, t, 2, &h), CKR_OK);
    assert_int_equal(mod->C_GetAttributeValue(SESSION, h, q, 2), CKR_OK);
    assert_int_equal(q[0].ulValueLen, 0);
    assert_int_equal(q[1].ulValueLen, 0);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);

    /* A label and an ID given are the object's. */
    {
        CK_ATTRIBUTE t2[] = {{CKA_LABEL, "line-7", 6}, {CKA_ID, "\x01\x02", 2}};
        q[0].ulValueLen = sizeof(label), q[1].ulValueLen = sizeof(id);
        assert_int_equal(derive(packages[0].key, "SN-label", spki, n, t2, 2, &h), CKR_OK);
        assert_int_equal(mod->C_GetAttributeValue(SESSION, h, q, 2), CKR_OK);
        assert_int_equal(q[0].ulValueLen, 6);
        assert_memory_equal(label, "line-7", 6);
        assert_int_equal(q[1].ulValueLen, 2);
        assert_memory_equal(id, "\x01\x02", 2);
        assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    }
    /* The empty label on a token object too. */
    {
        CK_BBOOL yes = CK_TRUE;
        CK_ATTRIBUTE t3[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, NULL, 0}};
        assert_int_equal(derive(packages[0].key, "SN-token", spki, n, t3, 2, &h), CKR_OK);
        assert_int_equal(h, 0x300);
    }
    EVP_PKEY_free(dk);
}

/* ---- the caller's memory is read once ----------------------------------------------------------- */

static unsigned char race_spki[1024];
static size_t race_spki_len;
static char race_id[16];
static CK_GUARDIAN_DEVICE_CERT_PARAMS race_params;

/* Another thread of the caller rewrites the parameters after the module
 * checked them: the device key's point moves off the curve, the device ID
 * gets a character the check refuses, the key's length changes. */
static void rewrite_parameters(void)
{
    race_spki[race_spki_len - 1] ^= 0x01;
    race_id[2] = ' ';
    race_params.ulPublicKeyInfoLen = race_spki_len - 1;
}

static void test_parameters_copied_before_checking(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char original[1024], *der = NULL;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    X509 *x;
    char cn[64];
    int len;
    (void)st;

    race_spki_len = spki_of(dk, race_spki);
    memcpy(original, race_spki, race_spki_len);
    snprintf(race_id, sizeof(race_id), "SN-race");
    race_params = (CK_GUARDIAN_DEVICE_CERT_PARAMS){CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION,
                                                   CKG_GUARDIAN_DEVICE_ID_TEXT, (CK_BYTE_PTR)race_id,
                                                   strlen(race_id), race_spki, race_spki_len};
    on_key_lookup = rewrite_parameters;
    assert_int_equal(derive_raw(SESSION, packages[0].key, &race_params, NULL, 0, &h), CKR_OK);
    on_key_lookup = NULL;
    assert_int_not_equal(memcmp(race_spki, original, race_spki_len), 0); /* it did change */

    /* The certificate holds the key and the ID that were checked. */
    x = cert_of(h);
    len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
    assert_int_equal((size_t)len, race_spki_len);
    assert_memory_equal(der, original, race_spki_len);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, "SN-race");
    OPENSSL_free(der);
    X509_free(x);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    EVP_PKEY_free(dk);
}

/* ---- the production CA's own key is refused, in any encoding --------------------------------------- */

static void test_ca_key_refused(void **st)
{
    unsigned char spki[1024];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;

    for (size_t i = 0; i < N_PACKAGES; i++) {
        /* The device sends the CA's key uncompressed (compressed device keys
         * are refused as unsupported); the COMPRESSED package's CA
         * certificate holds the same point compressed; RSA-1's CA key is
         * re-encoded from its certificate. */
        size_t n = spki_of(packages[i].ca, spki);
        CK_RV rv = derive(packages[i].key, "SN-ca", spki, n, NULL, 0, &h);
        if (rv != CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY)
            fail_msg("%s: the CA's own key gave 0x%lx, not CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY", packages[i].product,
                     (unsigned long)rv);
    }
    assert_int_equal(certificates_found(SESSION), 0);
    assert_int_equal(atomic_load(&issues), 0);

    /* A device key of its own is still accepted under the compressed CA. */
    {
        EVP_PKEY *dk = device_key();
        size_t n = spki_of(dk, spki);
        X509 *x;
        assert_int_equal(derive(packages[1].key, "SN-dev", spki, n, NULL, 0, &h), CKR_OK);
        x = cert_of(h);
        assert_int_equal(X509_verify(x, packages[1].ca), 1);
        X509_free(x);
        assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
        EVP_PKEY_free(dk);
    }
}

/* ---- a PrintableString value is written as it is, or refused ------------------------------------------ */

static uint64_t next_serial_of(const char *product)
{
    struct guardian_store *st = NULL;
    struct guardian_product prod;
    assert_int_equal(guardian_store_open(state_dir, &st), CKR_OK);
    assert_int_equal(guardian_store_product_get(st, OEM, product, &prod), CKR_OK);
    guardian_store_close(st);
    return prod.next_serial;
}

/* PRINT-1 puts the device ID in serialNumber, a PrintableString: "A_1" has a
 * character it cannot hold, and was once written as "A-1" (the same subject
 * as device A-1's).  Now it is refused before a unit is spent; A-1 works and
 * its serialNumber is exactly "A-1". */
static void test_printable_string_refused(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    struct package *p = &packages[3];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint64_t before = next_serial_of(p->product);
    int issued = atomic_load(&issues);
    X509 *x;
    char sn[16];
    (void)st;

    assert_int_equal(derive(p->key, "A_1", spki, n, NULL, 0, &h), CKR_GUARDIAN_DEVICE_ID_INVALID);
    assert_int_equal(certificates_found(SESSION), 0);
    assert_int_equal(atomic_load(&issues), issued);
    assert_int_equal(next_serial_of(p->product), before); /* nothing reserved, nothing spent */
    /* The same device ID is a UTF8String in CN under another package: fine. */
    assert_int_equal(derive(packages[0].key, "A_1", spki, n, NULL, 0, &h), CKR_OK);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);

    assert_int_equal(derive(p->key, "A-1", spki, n, NULL, 0, &h), CKR_OK);
    x = cert_of(h);
    assert_int_equal(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_serialNumber, sn, sizeof(sn)), 3);
    assert_string_equal(sn, "A-1");
    assert_int_equal(X509_verify(x, p->ca), 1);
    X509_free(x);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    assert_true(next_serial_of(p->product) > before);
    EVP_PKEY_free(dk);
}

/* ---- no certificate object before its ISSUE record --------------------------------------------------- */

static atomic_long seen_found, seen_get_rv, seen_live, seen_creates;

static void *look(void *arg)
{
    CK_BYTE buf[16];
    CK_ATTRIBUTE a = {CKA_LABEL, buf, sizeof(buf)};
    (void)arg;
    /* Another session of the application: session objects are everyone's. */
    atomic_store(&seen_found, (long)certificates_found(202));
    atomic_store(&seen_get_rv, (long)mod->C_GetAttributeValue(202, FIRST_CERT, &a, 1));
    atomic_store(&seen_live, (long)atomic_load(&guardian_cert_objects_live));
    atomic_store(&seen_creates, (long)atomic_load(&creates));
    return NULL;
}

/* While the ISSUE record is written, another thread looks for the object. */
static void look_from_another_thread(void)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, look, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

static void test_invisible_until_recorded(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024], value[4096];
    size_t n = spki_of(dk, spki);
    CK_ULONG len = sizeof(value);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;

    atomic_store(&seen_found, -1);
    on_issue = look_from_another_thread;
    assert_int_equal(derive(packages[0].key, "SN-vis", spki, n, NULL, 0, &h), CKR_OK);
    on_issue = NULL;
    assert_int_equal(atomic_load(&issues), 1);
    if (atomic_load(&seen_found) != 0 || atomic_load(&seen_get_rv) != CKR_OBJECT_HANDLE_INVALID ||
        atomic_load(&seen_live) != 0)
        fail_msg("while its ISSUE record was written, another thread found %ld certificate object(s), read "
                 "0x%lx with C_GetAttributeValue (%ld live)",
                 atomic_load(&seen_found), (unsigned long)atomic_load(&seen_get_rv), atomic_load(&seen_live));
    /* Once C_DeriveKey returned, everyone sees it. */
    assert_int_equal(h, FIRST_CERT);
    assert_int_equal(certificates_found(202), 1);
    assert_int_equal(read_value(h, value, &len), CKR_OK);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    EVP_PKEY_free(dk);
}

static void test_issue_failure_leaves_no_object(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024], value[4096];
    size_t n = spki_of(dk, spki);
    CK_ULONG len = sizeof(value), size = 0;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;

    issue_fails = CKR_GUARDIAN_STORE_FAILED;
    assert_int_equal(derive(packages[0].key, "SN-fail", spki, n, NULL, 0, &h), CKR_GUARDIAN_STORE_FAILED);
    issue_fails = CKR_OK;
    assert_int_equal(h, CK_INVALID_HANDLE);
    /* No object: not findable, not readable by the handle it would have had. */
    assert_int_equal(certificates_found(SESSION), 0);
    assert_int_equal(read_value(FIRST_CERT, value, &len), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_GetObjectSize(SESSION, FIRST_CERT, &size), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);
    /* ... and the backend was not asked to destroy a handle of ours. */
    if (atomic_load(&destroys) != 0)
        fail_msg("the backend was asked to destroy handle 0x%lx", (unsigned long)atomic_load(&destroyed_handle));

    /* The next certificate is issued as usual. */
    assert_int_equal(derive(packages[0].key, "SN-next", spki, n, NULL, 0, &h), CKR_OK);
    assert_int_equal(certificates_found(SESSION), 1);
    assert_int_equal(mod->C_DestroyObject(SESSION, h), CKR_OK);
    EVP_PKEY_free(dk);
}

/* A token object (the backend's) is created only after its ISSUE record:
 * the backend has no hidden objects. */
static void test_token_object_after_record(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;

    atomic_store(&seen_creates, -1);
    on_issue = look_from_another_thread;
    assert_int_equal(derive(packages[0].key, "SN-tok", spki, n, t, 1, &h), CKR_OK);
    on_issue = NULL;
    assert_int_equal(h, 0x300);
    assert_int_equal(atomic_load(&seen_creates), 0);
    assert_int_equal(atomic_load(&creates), 1);

    /* The record fails: nothing is created in the token. */
    issue_fails = CKR_GUARDIAN_STORE_FAILED;
    assert_int_equal(derive(packages[0].key, "SN-tok2", spki, n, t, 1, &h), CKR_GUARDIAN_STORE_FAILED);
    issue_fails = CKR_OK;
    assert_int_equal(atomic_load(&creates), 1);
    assert_int_equal(atomic_load(&destroys), 0);

    /* A read-only session cannot hold a token object: refused before a unit
     * is spent or anything is signed. */
    {
        CK_GUARDIAN_DEVICE_CERT_PARAMS p = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT,
                                            (CK_BYTE_PTR) "SN-ro", 5, spki, n};
        int before = atomic_load(&issues);
        assert_int_equal(derive_raw(RO_SESSION, packages[0].key, &p, t, 1, &h), CKR_SESSION_READ_ONLY);
        assert_int_equal(atomic_load(&issues), before);
        assert_int_equal(atomic_load(&creates), 1);
        /* A session object from the same session is fine. */
        assert_int_equal(derive_raw(RO_SESSION, packages[0].key, &p, NULL, 0, &h), CKR_OK);
        assert_int_equal(mod->C_DestroyObject(RO_SESSION, h), CKR_OK);
    }
    EVP_PKEY_free(dk);
}

/* ---- reservation blocks: the spare, reserved early --------------------------------------------------- */

#define SERIAL_HEX 48 /* a certificate serial number (up to 20 bytes) in hex */

/* One certificate of packages[0]'s CA, destroyed; its serial number in hex
 * in serial[SERIAL_HEX] (no cmocka assertion: threads call this). */
static CK_RV derive_serial(const unsigned char *spki, size_t n, const char *device_id, char *serial)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = derive(packages[0].key, device_id, spki, n, NULL, 0, &h);
    if (rv != CKR_OK)
        return rv;
    if (serial != NULL) {
        unsigned char der[4096];
        CK_ULONG len = sizeof(der);
        const unsigned char *p = der;
        X509 *x = read_value(h, der, &len) == CKR_OK ? d2i_X509(NULL, &p, (long)len) : NULL;
        const ASN1_INTEGER *sn = x != NULL ? X509_get0_serialNumber(x) : NULL;
        int sl = sn != NULL ? ASN1_STRING_length(sn) : 0;
        serial[0] = '\0';
        for (int i = 0; i < sl && 2 * i + 2 < SERIAL_HEX; i++)
            snprintf(serial + 2 * i, 3, "%02x", ASN1_STRING_get0_data(sn)[i]);
        X509_free(x);
        if (sl == 0)
            rv = CKR_GENERAL_ERROR;
    }
    if (mod->C_DestroyObject(SESSION, h) != CKR_OK)
        rv = CKR_GENERAL_ERROR;
    return rv;
}

/* Blocks of 1, 2, ... 64 are reserved when used up; from the block of 64
 * on, the next block is reserved as soon as the one in hand is started.  A refused early
 * reservation does not fail the call that made it: the units in hand are
 * issued, and the refusal is the answer once they are used up. */
static void test_spare_block(void **st)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    char id[32];
    int issued = 0;
    CK_RV rv = CKR_OK;
    (void)st;

    atomic_store(&reservations, 0);
    for (int i = 0; i < 127; i++) {
        snprintf(id, sizeof(id), "SN-ramp-%d", i);
        assert_int_equal(derive_serial(spki, n, id, NULL), CKR_OK);
    }
    /* 1 + 2 + ... + 32 when used up, 64 when used up (the 64th
     * certificate), and the 65th reserved the spare of 128. */
    assert_int_equal(atomic_load(&reservations), 8);
    /* The 128th takes the spare and reserves the next one (256) early; the
     * 129th reserves nothing. */
    assert_int_equal(derive_serial(spki, n, "SN-128", NULL), CKR_OK);
    assert_int_equal(atomic_load(&reservations), 9);
    assert_int_equal(derive_serial(spki, n, "SN-129", NULL), CKR_OK);
    assert_int_equal(atomic_load(&reservations), 9);

    /* Every later reservation refused: the 126 units left in hand and the
     * spare's 256 are issued, one early attempt is made, then the refusal. */
    reserve_refusal = CKR_GUARDIAN_QUOTA_EXHAUSTED;
    while (rv == CKR_OK && issued < 1000) {
        snprintf(id, sizeof(id), "SN-left-%d", issued);
        rv = derive_serial(spki, n, id, NULL);
        if (rv == CKR_OK)
            issued++;
    }
    reserve_refusal = CKR_OK;
    assert_int_equal(rv, CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(issued, 126 + 256);
    assert_int_equal(atomic_load(&reservations), 9 + 2);
    /* And the next reservation that is granted clears the refusal. */
    assert_int_equal(derive_serial(spki, n, "SN-again", NULL), CKR_OK);
    EVP_PKEY_free(dk);
}

#define THREAD_CERTS 300
static char thread_serials[2][THREAD_CERTS][SERIAL_HEX];

static void *derive_many(void *arg)
{
    int t = (int)(intptr_t)arg;
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    char id[32];
    CK_RV rv = CKR_OK;

    for (int i = 0; i < THREAD_CERTS && rv == CKR_OK; i++) {
        snprintf(id, sizeof(id), "SN-t%d-%d", t, i);
        rv = derive_serial(spki, n, id, thread_serials[t][i]);
    }
    EVP_PKEY_free(dk);
    return (void *)(uintptr_t)rv;
}

static int cmp_serial(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Two threads issuing while blocks and spares are reserved under them: every
 * call succeeds and no serial is issued twice. */
static void test_two_threads_distinct_serials(void **st)
{
    pthread_t t[2];
    void *ret[2] = {NULL, NULL};
    static char all[2 * THREAD_CERTS][SERIAL_HEX];
    (void)st;

    for (intptr_t i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, derive_many, (void *)i), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], &ret[i]), 0);
        assert_int_equal((CK_RV)(uintptr_t)ret[i], CKR_OK);
    }
    memcpy(all, thread_serials, sizeof(all));
    qsort(all, 2 * THREAD_CERTS, sizeof(all[0]), cmp_serial);
    for (int i = 1; i < 2 * THREAD_CERTS; i++)
        if (strcmp(all[i], all[i - 1]) == 0)
            fail_msg("serial %s issued twice", all[i]);
}

/* ---- fork() while another thread holds a lock ---------------------------------------------------------- */

static void *derive_in_thread(void *arg)
{
    EVP_PKEY *dk = device_key();
    unsigned char spki[1024];
    size_t n = spki_of(dk, spki);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = derive(packages[0].key, "SN-thread", spki, n, NULL, 0, &h);
    (void)arg;
    if (rv == CKR_OK)
        rv = mod->C_DestroyObject(SESSION, h);
    EVP_PKEY_free(dk);
    return (void *)(uintptr_t)rv;
}

static void *read_package_object(void *arg)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {CKA_GUARDIAN_RELEASE, &v, sizeof(v)};
    (void)arg;
    mod->C_GetAttributeValue(SESSION, GUARDIAN_VOBJ_BASE + 1, &a, 1);
    return (void *)(uintptr_t)CKR_OK;
}

/* What the child does: initialize again and take the locks' paths. */
static int child_work(void)
{
    EVP_PKEY *dk;
    unsigned char spki[1024];
    size_t n;
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {CKA_GUARDIAN_RELEASE, &v, sizeof(v)};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    char id[32];

    alarm(CHILD_TIMEOUT); /* a deadlock kills the child: the test fails, not hangs */
    /* A device ID per child: another child's, asked again with this new key,
     * would be refused (CKR_GUARDIAN_DEVICE_ALREADY_ISSUED). */
    snprintf(id, sizeof(id), "SN-child-%ld", (long)getpid());
    if (mod->C_Initialize(NULL) != CKR_OK)
        return 2;
    h = guardian_package_object_handle(OEM, "SENSOR-1");
    if (h == CK_INVALID_HANDLE || mod->C_GetAttributeValue(SESSION, h, &a, 1) != CKR_OK || v != 1)
        return 3;
    dk = EVP_EC_gen("P-256");
    n = spki_of(dk, spki);
    if (derive(packages[0].key, id, spki, n, NULL, 0, &h) != CKR_OK)
        return 4;
    if (mod->C_DestroyObject(SESSION, h) != CKR_OK)
        return 5;
    EVP_PKEY_free(dk);
    return mod->C_Finalize(NULL) == CKR_OK ? 0 : 6;
}

/* A thread stops at `g` (inside the lock the test is about), the process
 * forks, the child runs child_work() and reports its result through a pipe
 * (not its exit status, which valgrind sets when it finds the parent's
 * threads' memory unreachable in the child). */
static void fork_with_lock_held(struct gate *g, void *(*thread_fn)(void *), const char *lock_name)
{
    pthread_t t;
    pid_t pid;
    int status = 0, fds[2];
    unsigned char step = 0xff;
    void *ret = NULL;

    assert_int_equal(pipe(fds), 0);
    gate_close(g);
    assert_int_equal(pthread_create(&t, NULL, thread_fn, NULL), 0);
    gate_wait_for_thread(g);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        step = (unsigned char)child_work();
        alarm(0);
        _exit(write(fds[1], &step, 1) == 1 ? 0 : 1);
    }
    close(fds[1]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (read(fds[0], &step, 1) != 1)
        step = 0xff;
    close(fds[0]);
    gate_open(g);
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_int_equal((CK_RV)(uintptr_t)ret, CKR_OK);
    if (WIFSIGNALED(status))
        fail_msg("the child %s (signal %d) with the %s held by a parent thread at fork()",
                 WTERMSIG(status) == SIGALRM ? "deadlocked" : "died", WTERMSIG(status), lock_name);
    if (step != 0)
        fail_msg("the child failed at step %d", step);
}

static void test_fork_with_package_lock_held(void **st)
{
    (void)st;
    fork_with_lock_held(&gate_products, read_package_object, "package objects' lock");
}

static void test_fork_with_derive_cache_lock_held(void **st)
{
    (void)st;
    fork_with_lock_held(&gate_material, derive_in_thread, "derive cache's lock");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_issue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_template_empty_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parameters_copied_before_checking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_printable_string_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invisible_until_recorded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_issue_failure_leaves_no_object, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_object_after_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spare_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_threads_distinct_serials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_with_package_lock_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_with_derive_cache_lock_held, setup, teardown),
    };
    return cmocka_run_group_tests_name("derive device certificate", tests, group_setup, group_teardown);
}
