/*
 * selftest.c — a vendor mechanism is advertised on a slot when the primitives
 * it needs work there, tried once per slot, not when their names appear in the
 * slot's mechanism list: NSS softoken does CKM_AES_CBC_ENCRYPT_DATA without
 * listing it, and a name in a list says nothing of what the backend means by
 * it (NSS's 0x210A is RFC 3394 with PKCS#7 padding, SoftHSM's is RFC 5649).
 *
 * The tests use session objects only, made public (CKA_PRIVATE FALSE) so that
 * no login is needed, destroyed before the session closes: nothing is left in
 * the token.  Each is a known-answer test (selftest_vectors.h, made by
 * make_selftest_vectors.py):
 *
 *  - CKM_GUARDIAN_UNWRAP_PACKAGE: a fixed EC P-256 key, ECDH with a fixed
 *    point, the key-encryption key derived as an import derives it (CKD_NULL
 *    then CKM_AES_CBC_ENCRYPT_DATA, and CKD_SHA256_KDF, each measured), and
 *    C_UnwrapKey of a fixed RFC 5649 blob holding the PKCS#8 of an EC key,
 *    into a session private key, under 0x210A and else 0x210B (NSS's 0x210A
 *    is RFC 3394 + PKCS#7), again with CKA_NSS_DB where the EC template is
 *    refused after the wrap checked out.  The unwrap succeeds only when every
 *    step computed the right bytes (RFC 5649's integrity check).  Either KDF
 *    passing is enough to advertise: the package's scheme picks one.  What
 *    worked is kept per slot (guardian_transport_facts): the import unwraps
 *    under that number with that template, and the agreement certificate
 *    states those schemes (guardian_transport_state_in_cert, transport.h).
 *  - CKM_GUARDIAN_DERIVE_DEVICE_CERT: a signature with CKM_ECDSA by a fixed
 *    P-256 key, else with CKM_RSA_PKCS by a fixed RSA-2048 key (an RSA-only
 *    production CA: derive_device_cert.c signs with either); where the backend
 *    refuses both keys from their values (tpm2-pkcs11), a generated P-256
 *    session key.
 *  - CKM_GUARDIAN_UNWRAP_PACKAGE on a token without EC (the test's EC key
 *    cannot be loaded: opencryptoki), the RSA-OAEP transport: the fixed
 *    RSA-2048 key (unwrap), a fresh KEK that OpenSSL encrypts to it with OAEP
 *    (SHA-256, MGF1-SHA-256, label = the test context), C_UnwrapKey with
 *    CKM_RSA_PKCS_OAEP into a session AES key; the same ciphertext under
 *    another label must NOT unwrap (a token that ignored labels would lose
 *    the package binding); then CKM_AES_CBC_PAD unwraps a fresh AES key under
 *    it, and one block that key encrypts in the token must equal OpenSSL's.
 *
 * A step can fail three ways: a code that says the primitive is not there or
 * not right (CKR_MECHANISM_INVALID, CKR_WRAPPED_KEY_INVALID, …) fails the test;
 * a code that says it could not be tried now (CKR_USER_NOT_LOGGED_IN, no
 * token, out of sessions or memory, …) leaves it undecided: the list rule
 * answers meanwhile and the test runs again at the first look after a login
 * or logout through the module (tpm2-pkcs11 makes no object, not even a
 * session one, before the user logs in); and loading the
 * fixed key of the unwrap test being refused also leaves it undecided (an
 * import never loads a key in clear: the refusal says nothing of its
 * primitives).
 *
 * Results are kept per slot until C_Finalize/C_Initialize, and logged at debug
 * level (category "selftest") with the step that failed and the time taken.
 *
 * Beside them, per slot too: whether the token keeps CKA_TRUSTED for its SO
 * (guardian_trusted_so_only), which the import reads before it counts any
 * enrolled OEM root (unwrap_package.c, docs/threat-model.md).
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "module.h"
#include "package.h"
#include "registry.h"
#include "selftest_vectors.h"
#include "transport.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "selftest"
#define MAX_SLOTS 32
#define MAX_MECHS 8
#define MAX_OBJECTS 8

/* ---- the steps ------------------------------------------------------------ */

struct run {
    CK_FUNCTION_LIST *be;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE made[MAX_OBJECTS];
    size_t n_made;
    char *why;
    size_t why_len;
};

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor CKR";
}

/* Codes that say "not now" rather than "not this primitive". */
static bool undecided(CK_RV rv)
{
    switch (rv) {
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_SESSION_COUNT:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_READ_ONLY:
    case CKR_SESSION_READ_WRITE_SO_EXISTS:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_HOST_MEMORY:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_OPERATION_ACTIVE:
    case CKR_FUNCTION_CANCELED:
    case CKR_PIN_EXPIRED:
    case CKR_SLOT_ID_INVALID:
        return true;
    default:
        return false;
    }
}

/* The outcome of step `what` that returned `rv` (CKR_OK: none yet). */
static int step(struct run *r, CK_RV rv, const char *what)
{
    if (rv == CKR_OK)
        return 0;
    snprintf(r->why, r->why_len, "%s: %s", what, ckr(rv));
    return undecided(rv) ? GUARDIAN_SELFTEST_UNKNOWN : GUARDIAN_SELFTEST_FAIL;
}

static void keep(struct run *r, CK_OBJECT_HANDLE h)
{
    if (r->n_made < MAX_OBJECTS)
        r->made[r->n_made++] = h;
    else
        r->be->C_DestroyObject(r->s, h);
}

static void clean(struct run *r)
{
    for (size_t i = 0; i < r->n_made; i++) {
        r->be->C_DestroyObject(r->s, r->made[i]);
        /* The backend may give the number to a caller's object later. */
        guardian_policy_forget(r->made[i]);
    }
    r->n_made = 0;
}

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

/* The fixed P-256 key (sign and derive), a public session object. */
static CK_RV load_ec_key(struct run *r, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_EC;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},           {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},             {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},       {CKA_DERIVE, &yes, sizeof(yes)},
        {CKA_SIGN, &yes, sizeof(yes)},            {CKA_EC_PARAMS, (void *)st_ec_params, sizeof(st_ec_params)},
        {CKA_VALUE, (void *)st_ec_d, sizeof(st_ec_d)},
    };
    CK_RV rv = r->be->C_CreateObject(r->s, t, sizeof(t) / sizeof(t[0]), out);
    if (rv == CKR_OK)
        keep(r, *out);
    return rv;
}

static CK_RV load_rsa(struct run *r, CK_ATTRIBUTE_TYPE use, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {use, &yes, sizeof(yes)},
        {CKA_MODULUS, (void *)st_rsa_n, sizeof(st_rsa_n)},
        {CKA_PUBLIC_EXPONENT, (void *)st_rsa_e, sizeof(st_rsa_e)},
        {CKA_PRIVATE_EXPONENT, (void *)st_rsa_d, sizeof(st_rsa_d)},
        {CKA_PRIME_1, (void *)st_rsa_p, sizeof(st_rsa_p)},
        {CKA_PRIME_2, (void *)st_rsa_q, sizeof(st_rsa_q)},
        {CKA_EXPONENT_1, (void *)st_rsa_dp, sizeof(st_rsa_dp)},
        {CKA_EXPONENT_2, (void *)st_rsa_dq, sizeof(st_rsa_dq)},
        {CKA_COEFFICIENT, (void *)st_rsa_qinv, sizeof(st_rsa_qinv)},
    };
    CK_RV rv = r->be->C_CreateObject(r->s, t, sizeof(t) / sizeof(t[0]), out);
    if (rv == CKR_OK)
        keep(r, *out);
    return rv;
}

static CK_RV load_rsa_key(struct run *r, CK_OBJECT_HANDLE *out)
{
    return load_rsa(r, CKA_SIGN, out);
}

/* ---- CKM_GUARDIAN_UNWRAP_PACKAGE ------------------------------------------- */

/* The session AES-256 key an ECDH (or the CBC derivation) makes. */
static CK_RV derive_aes(struct run *r, CK_MECHANISM *m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_TYPE use,
                        CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &no, sizeof(no)},     {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)}, {use, &yes, sizeof(yes)},
    };
    CK_RV rv = r->be->C_DeriveKey(r->s, m, base, t, sizeof(t) / sizeof(t[0]), out);
    if (rv == CKR_OK)
        keep(r, *out);
    return rv;
}

/* The RFC 5649 numbers a backend may implement it under, in the order tried. */
static const CK_MECHANISM_TYPE kwp_numbers[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP};

/* Written by the unwrap self-test, read by run_tests (the lock is held). */
static struct guardian_transport_facts last_facts;

/* Codes by which an EC private-key unwrap says its template lacks what the
 * token wants (NSS: CKA_NSS_DB), after the wrap itself checked out. */
static bool wants_more(CK_RV rv)
{
    return rv == CKR_TEMPLATE_INCOMPLETE || rv == CKR_KEY_TYPE_INCONSISTENT;
}

static CK_RV unwrap_known(struct run *r, CK_OBJECT_HANDLE kek, const CK_BYTE *blob, CK_ULONG len,
                          CK_MECHANISM_TYPE number, bool nss_db)
{
    CK_MECHANISM kwp = {number, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_EC;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},     {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},    {GUARDIAN_CKA_NSS_DB, (void *)st_ec_point, sizeof(st_ec_point)},
    };
    CK_ULONG n = sizeof(t) / sizeof(t[0]) - (nss_db ? 0 : 1);
    CK_RV rv = r->be->C_UnwrapKey(r->s, &kwp, kek, (CK_BYTE_PTR)blob, len, t, n, &h);
    if (rv == CKR_OK)
        keep(r, h);
    return rv;
}

/* The RFC 5649 unwrap of the known blob under `kek`: under the number found
 * already on this slot, else each number in turn; where the token refuses
 * the EC template after the wrap checked out, again with CKA_NSS_DB.  Records
 * what worked in last_facts. */
static CK_RV unwrap_any(struct run *r, CK_OBJECT_HANDLE kek, const CK_BYTE *blob, CK_ULONG len)
{
    CK_RV rv = CKR_MECHANISM_INVALID, first = CKR_OK;
    for (size_t i = 0; i < sizeof(kwp_numbers) / sizeof(kwp_numbers[0]); i++) {
        CK_MECHANISM_TYPE number = kwp_numbers[i];
        if (last_facts.kwp != 0 && last_facts.kwp != number)
            continue;
        rv = unwrap_known(r, kek, blob, len, number, last_facts.nss_db);
        if (wants_more(rv) && !last_facts.nss_db && unwrap_known(r, kek, blob, len, number, true) == CKR_OK) {
            last_facts.nss_db = true;
            rv = CKR_OK;
        }
        if (rv == CKR_OK) {
            last_facts.kwp = number;
            return CKR_OK;
        }
        /* "Not now" decides nothing: say so rather than a later number's "no". */
        if (undecided(rv))
            return rv;
        if (first == CKR_OK)
            first = rv;
    }
    return first != CKR_OK ? first : rv;
}

/* One way of making the key-encryption key, then the unwrap under it. */
static int unwrap_path(struct run *r, CK_OBJECT_HANDLE key, bool sha256_kdf)
{
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    CK_OBJECT_HANDLE z = CK_INVALID_HANDLE, kek = CK_INVALID_HANDLE;
    int res;

    memset(&ecdh, 0, sizeof(ecdh));
    ecdh.pPublicData = (CK_BYTE_PTR)st_peer_point;
    ecdh.ulPublicDataLen = sizeof(st_peer_point);
    if (sha256_kdf) {
        ecdh.kdf = CKD_SHA256_KDF;
        ecdh.pSharedData = (CK_BYTE_PTR)st_context;
        ecdh.ulSharedDataLen = sizeof(st_context);
        if ((res = step(r, derive_aes(r, &m, key, CKA_UNWRAP, &kek), "ECDH1_DERIVE with CKD_SHA256_KDF")))
            return res;
        return step(r, unwrap_any(r, kek, st_wrapped_kdf, sizeof(st_wrapped_kdf)),
                    "RFC 5649 unwrap (0x210A, 0x210B) under the SHA256_KDF key");
    }
    ecdh.kdf = CKD_NULL;
    if ((res = step(r, derive_aes(r, &m, key, CKA_DERIVE, &z), "ECDH1_DERIVE with CKD_NULL")))
        return res;
    {
        CK_AES_CBC_ENCRYPT_DATA_PARAMS cbc;
        CK_MECHANISM m2 = {CKM_AES_CBC_ENCRYPT_DATA, &cbc, sizeof(cbc)};
        memset(&cbc, 0, sizeof(cbc));
        cbc.pData = (CK_BYTE_PTR)st_context;
        cbc.length = sizeof(st_context);
        if ((res = step(r, derive_aes(r, &m2, z, CKA_UNWRAP, &kek), "AES_CBC_ENCRYPT_DATA")))
            return res;
    }
    return step(r, unwrap_any(r, kek, st_wrapped_cbc, sizeof(st_wrapped_cbc)),
                "RFC 5649 unwrap (0x210A, 0x210B) under the AES_CBC_ENCRYPT_DATA key");
}

/* OAEP (SHA-256, MGF1-SHA-256, `label`) of `in` to the fixed RSA key, by OpenSSL. */
static int oaep_encrypt(const uint8_t *label, size_t label_len, const uint8_t *in, size_t len, uint8_t *out,
                        size_t *out_len)
{
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *p = NULL;
    BIGNUM *n = BN_bin2bn(st_rsa_n, sizeof(st_rsa_n), NULL), *e = BN_bin2bn(st_rsa_e, sizeof(st_rsa_e), NULL);
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL), *ec = NULL;
    EVP_PKEY *k = NULL;
    unsigned char *l = OPENSSL_memdup(label, label_len);
    int ok = b != NULL && n != NULL && e != NULL && c != NULL && l != NULL &&
             OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
             OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, e) == 1 && (p = OSSL_PARAM_BLD_to_param(b)) != NULL &&
             EVP_PKEY_fromdata_init(c) == 1 && EVP_PKEY_fromdata(c, &k, EVP_PKEY_PUBLIC_KEY, p) == 1 &&
             (ec = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL)) != NULL && EVP_PKEY_encrypt_init(ec) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ec, RSA_PKCS1_OAEP_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(ec, EVP_sha256()) == 1 && EVP_PKEY_CTX_set_rsa_mgf1_md(ec, EVP_sha256()) == 1 &&
             EVP_PKEY_CTX_set0_rsa_oaep_label(ec, l, (int)label_len) == 1;
    if (ok)
        l = NULL; /* the context owns it */
    ok = ok && EVP_PKEY_encrypt(ec, out, out_len, in, len) == 1;
    OPENSSL_free(l);
    EVP_PKEY_CTX_free(ec);
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(k);
    OSSL_PARAM_free(p);
    OSSL_PARAM_BLD_free(b);
    BN_free(n);
    BN_free(e);
    ERR_clear_error();
    return ok;
}

/* AES-256 by OpenSSL: CBC with PKCS#7 padding under `iv`, or (iv NULL) ECB. */
static int aes_host(const uint8_t key[32], const uint8_t *iv, const uint8_t *in, size_t len, uint8_t *out,
                    int *out_len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    int ok = c != NULL && EVP_EncryptInit_ex(c, iv ? EVP_aes_256_cbc() : EVP_aes_256_ecb(), NULL, key, iv) == 1 &&
             EVP_CIPHER_CTX_set_padding(c, iv != NULL) == 1 && EVP_EncryptUpdate(c, out, &n1, in, (int)len) == 1 &&
             EVP_EncryptFinal_ex(c, out + n1, &n2) == 1;
    *out_len = n1 + n2;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* The RSA-OAEP transport: OAEP-with-label unwrap of a KEK, the label
 * honoured, CBC-PAD unwrap of a key under it, the right value. */
static int oaep_path(struct run *r)
{
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE, kek = CK_INVALID_HANDLE, k2 = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    uint8_t kek_v[32], v[32], iv[16], enc[256], wrong[32], wrapped[64], zero[16] = {0}, want[16];
    CK_BYTE got[16];
    CK_ULONG got_len = sizeof(got);
    size_t enc_len = sizeof(enc);
    int wrapped_len = 0, want_len = 0, res;
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, wrong, sizeof(wrong)};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)}, cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    CK_ATTRIBUTE kek_t[] = {{CKA_CLASS, &sk, sizeof(sk)},       {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_TOKEN, &no, sizeof(no)},       {CKA_PRIVATE, &no, sizeof(no)},
                            {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                            {CKA_UNWRAP, &yes, sizeof(yes)}};
    CK_ATTRIBUTE k2_t[] = {{CKA_CLASS, &sk, sizeof(sk)},       {CKA_KEY_TYPE, &aes, sizeof(aes)},
                           {CKA_TOKEN, &no, sizeof(no)},       {CKA_PRIVATE, &no, sizeof(no)},
                           {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                           {CKA_ENCRYPT, &yes, sizeof(yes)}};
    CK_RV rv = load_rsa(r, CKA_UNWRAP, &key);

    if (rv != CKR_OK) {
        snprintf(r->why, r->why_len, "the test's RSA key cannot be loaded (C_CreateObject: %s)", ckr(rv));
        return GUARDIAN_SELFTEST_UNKNOWN;
    }
    memcpy(wrong, st_context, sizeof(wrong));
    wrong[0] ^= 0x01;
    if (RAND_bytes(kek_v, sizeof(kek_v)) != 1 || RAND_bytes(v, sizeof(v)) != 1 || RAND_bytes(iv, sizeof(iv)) != 1 ||
        !oaep_encrypt(st_context, sizeof(st_context), kek_v, sizeof(kek_v), enc, &enc_len) ||
        !aes_host(kek_v, iv, v, sizeof(v), wrapped, &wrapped_len) || !aes_host(v, NULL, zero, 16, want, &want_len)) {
        snprintf(r->why, r->why_len, "OpenSSL could not make the RSA-OAEP test vectors");
        return GUARDIAN_SELFTEST_UNKNOWN;
    }
    /* Another label first: it must be refused. */
    rv = r->be->C_UnwrapKey(r->s, &m, key, enc, (CK_ULONG)enc_len, kek_t, 7, &kek);
    if (rv == CKR_OK) {
        keep(r, kek);
        snprintf(r->why, r->why_len, "CKM_RSA_PKCS_OAEP unwrapped under another label: the token ignores OAEP "
                                     "labels (the package binding)");
        return GUARDIAN_SELFTEST_FAIL;
    }
    oaep.pSourceData = (CK_BYTE_PTR)st_context;
    rv = r->be->C_UnwrapKey(r->s, &m, key, enc, (CK_ULONG)enc_len, kek_t, 7, &kek);
    if (rv == CKR_OK)
        keep(r, kek);
    if ((res = step(r, rv, "CKM_RSA_PKCS_OAEP (SHA-256, MGF1-SHA-256, label) unwrap")))
        return res;
    rv = r->be->C_UnwrapKey(r->s, &cbc, kek, wrapped, (CK_ULONG)wrapped_len, k2_t, 7, &k2);
    if (rv == CKR_OK)
        keep(r, k2);
    if ((res = step(r, rv, "CKM_AES_CBC_PAD unwrap under the OAEP key")))
        return res;
    rv = r->be->C_EncryptInit(r->s, &ecb, k2);
    if (rv == CKR_OK)
        rv = r->be->C_Encrypt(r->s, zero, 16, got, &got_len);
    if ((res = step(r, rv, "CKM_AES_ECB with the key CKM_AES_CBC_PAD unwrapped")))
        return res;
    if (got_len != 16 || memcmp(got, want, 16) != 0) {
        snprintf(r->why, r->why_len, "the key CKM_AES_CBC_PAD unwrapped under the OAEP key has another value");
        return GUARDIAN_SELFTEST_FAIL;
    }
    return 0;
}

int guardian_selftest_rsa_oaep(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len)
{
    struct run r = {.be = be, .s = s, .why = why, .why_len = why_len};
    int c = oaep_path(&r);
    clean(&r);
    if (c == 0) {
        snprintf(why, why_len, "RSA-OAEP-SHA256 (label) + AES-CBC-PAD unwrap");
        return GUARDIAN_SELFTEST_PASS;
    }
    return c;
}

/* Whether the token implements C_UnwrapKey at all, asked with no key (so
 * nothing can be unwrapped, whatever it implements): every key transport
 * ends in an unwrap into the token, so a library that answers
 * CKR_FUNCTION_NOT_SUPPORTED (tpm2-pkcs11 1.9) imports with none.  Asked only
 * where the test keys cannot be loaded, so everywhere else the trace is as
 * it was. */
static bool unwrap_not_implemented(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BYTE blob[24] = {0};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_TOKEN, &no, sizeof(no)}};
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = be->C_UnwrapKey(s, &m, CK_INVALID_HANDLE, blob, sizeof(blob), t, 3, &h);
    if (rv == CKR_OK && h != CK_INVALID_HANDLE) { /* cannot be: no key */
        be->C_DestroyObject(s, h);
        guardian_policy_forget(h);
    }
    return rv == CKR_FUNCTION_NOT_SUPPORTED;
}

/* Both schemes are measured, each on its own (the agreement certificate
 * states every one that works, transport.h); the mechanism needs one. */
int guardian_selftest_unwrap_package(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len)
{
    struct run r = {.be = be, .s = s, .why = why, .why_len = why_len};
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    char kdf_why[200] = "", cbc_why[200] = "", oaep_why[200] = "";
    int kdf, cbc, oaep;
    CK_RV rv;

    memset(&last_facts, 0, sizeof(last_facts));
    rv = load_ec_key(&r, &key);
    if (rv != CKR_OK) {
        /* undecided here (tpm2-pkcs11 makes no session key; opencryptoki
         * has no EC at all, which its ECDH answer below shows where it loads) */
        snprintf(kdf_why, sizeof(kdf_why), "the test's EC key cannot be loaded (C_CreateObject: %s)", ckr(rv));
        snprintf(cbc_why, sizeof(cbc_why), "%s", kdf_why);
        kdf = cbc = GUARDIAN_SELFTEST_UNKNOWN;
    } else {
        kdf = unwrap_path(&r, key, true);
        snprintf(kdf_why, sizeof(kdf_why), "%s", kdf == 0 ? "ECDH CKD_SHA256_KDF + RFC 5649 unwrap" : why);
        cbc = unwrap_path(&r, key, false);
        snprintf(cbc_why, sizeof(cbc_why), "%s",
                 cbc == 0 ? "ECDH CKD_NULL + AES_CBC_ENCRYPT_DATA + RFC 5649 unwrap" : why);
        clean(&r);
    }
    /* The RSA-OAEP transport, which an RSA Guardian imports with (a token
     * without EC); which of these A states depends on its key's type
     * (guardian_transport_state_in_cert). */
    oaep = guardian_selftest_rsa_oaep(be, s, oaep_why, sizeof(oaep_why));
    if (oaep == GUARDIAN_SELFTEST_PASS)
        oaep = 0;
    /* Neither test key loads (tpm2-pkcs11 makes no session key): where the
     * library has no C_UnwrapKey at all, no scheme can run, decided. */
    if (kdf == GUARDIAN_SELFTEST_UNKNOWN && cbc == GUARDIAN_SELFTEST_UNKNOWN && oaep == GUARDIAN_SELFTEST_UNKNOWN &&
        unwrap_not_implemented(be, s)) {
        kdf = cbc = oaep = GUARDIAN_SELFTEST_FAIL;
        snprintf(kdf_why, sizeof(kdf_why), "C_UnwrapKey: CKR_FUNCTION_NOT_SUPPORTED (no key enters this token)");
        snprintf(cbc_why, sizeof(cbc_why), "%s", kdf_why);
        snprintf(oaep_why, sizeof(oaep_why), "%s", kdf_why);
    }
    if (kdf == 0)
        last_facts.schemes |= 1u << GUARDIAN_KT_ECDH_SHA256KDF;
    if (cbc == 0)
        last_facts.schemes |= 1u << GUARDIAN_KT_ECDH_AESCBC;
    if (oaep == 0)
        last_facts.schemes |= 1u << GUARDIAN_KT_RSAOAEP_SHA256;
    snprintf(why, why_len, "x963-sha256: %s; aes-cbc: %s; rsa-oaep: %s; RFC 5649 as 0x%lx%s", kdf_why, cbc_why,
             oaep == 0 ? "RSA-OAEP-SHA256 (label) + AES-CBC-PAD unwrap" : oaep_why, (unsigned long)last_facts.kwp,
             last_facts.nss_db ? ", EC unwrap with CKA_NSS_DB" : "");
    if (kdf == 0 || cbc == 0 || oaep == 0)
        last_facts.state = GUARDIAN_SELFTEST_PASS;
    else if (kdf == GUARDIAN_SELFTEST_UNKNOWN || cbc == GUARDIAN_SELFTEST_UNKNOWN || oaep == GUARDIAN_SELFTEST_UNKNOWN)
        last_facts.state = GUARDIAN_SELFTEST_UNKNOWN;
    else
        last_facts.state = GUARDIAN_SELFTEST_FAIL;
    /* A scheme undecided while another passed is measured again after a
     * login change: the statement in A must not miss it for a "not now". */
    if (last_facts.state == GUARDIAN_SELFTEST_PASS &&
        (kdf == GUARDIAN_SELFTEST_UNKNOWN || cbc == GUARDIAN_SELFTEST_UNKNOWN || oaep == GUARDIAN_SELFTEST_UNKNOWN))
        last_facts.partial = true;
    return last_facts.state;
}

/* ---- CKM_GUARDIAN_DERIVE_DEVICE_CERT -------------------------------------- */

/* A signature of a SHA-256 hash as derive_device_cert.c makes one. */
static CK_RV sign_with(struct run *r, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE type)
{
    /* DigestInfo(SHA-256) for CKM_RSA_PKCS, the bare hash for CKM_ECDSA. */
    static const CK_BYTE digest_info[19 + 32] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                                 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    CK_MECHANISM m = {type, NULL, 0};
    CK_BYTE sig[512];
    CK_ULONG sig_len = sizeof(sig);
    const CK_BYTE *in = type == CKM_RSA_PKCS ? digest_info : digest_info + 19;
    CK_ULONG in_len = type == CKM_RSA_PKCS ? sizeof(digest_info) : 32;
    CK_RV rv = r->be->C_SignInit(r->s, &m, key);
    if (rv != CKR_OK)
        return rv;
    rv = r->be->C_Sign(r->s, (CK_BYTE_PTR)in, in_len, sig, &sig_len);
    if (rv == CKR_OK && (sig_len == 0 || sig_len > sizeof(sig)))
        rv = CKR_FUNCTION_FAILED;
    return rv;
}

static CK_RV generate_ec_key(struct run *r, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &no, sizeof(no)},
                            {CKA_EC_PARAMS, (void *)st_ec_params, sizeof(st_ec_params)}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, sizeof(no)},
                             {CKA_SENSITIVE, &yes, sizeof(yes)},
                             {CKA_SIGN, &yes, sizeof(yes)},
                             {CKA_PRIVATE, &no, sizeof(no)}};
    CK_RV rv = r->be->C_GenerateKeyPair(r->s, &gen, pub_t, 2, priv_t, 4, &pub, out);
    /* A token that wants its private keys private (logged in by now). */
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT)
        rv = r->be->C_GenerateKeyPair(r->s, &gen, pub_t, 2, priv_t, 3, &pub, out);
    if (rv == CKR_OK) {
        keep(r, pub);
        keep(r, *out);
    }
    return rv;
}

/* One way of signing: `load` makes the key; `type` signs. 0 when it works. */
static int sign_attempt(struct run *r, CK_RV (*load)(struct run *, CK_OBJECT_HANDLE *), CK_MECHANISM_TYPE type,
                        const char *what, bool *loaded)
{
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    char step_name[80];
    CK_RV rv = load(r, &key);
    if (rv != CKR_OK) {
        /* No key to test with says nothing of the signature: undecided. */
        snprintf(step_name, sizeof(step_name), "%s key", what);
        step(r, rv, step_name);
        return GUARDIAN_SELFTEST_UNKNOWN;
    }
    *loaded = true;
    snprintf(step_name, sizeof(step_name), "%s signature", what);
    rv = sign_with(r, key, type);
    if (rv == CKR_OK)
        snprintf(r->why, r->why_len, "%s signature", what);
    return step(r, rv, step_name);
}

int guardian_selftest_derive_device_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, char *why, size_t why_len)
{
    struct run r = {.be = be, .s = s, .why = why, .why_len = why_len};
    char tried[3][140] = {"", "", ""};
    bool ec_loaded = false, rsa_loaded = false, unknown = false;
    int res;

    res = sign_attempt(&r, load_ec_key, CKM_ECDSA, "CKM_ECDSA (fixed P-256)", &ec_loaded);
    if (res == 0)
        goto pass;
    unknown |= res == GUARDIAN_SELFTEST_UNKNOWN;
    snprintf(tried[0], sizeof(tried[0]), "%s", why);
    /* An RSA-only production CA signs with CKM_RSA_PKCS (opencryptoki: no EC). */
    res = sign_attempt(&r, load_rsa_key, CKM_RSA_PKCS, "CKM_RSA_PKCS (fixed RSA-2048)", &rsa_loaded);
    if (res == 0)
        goto pass;
    unknown |= res == GUARDIAN_SELFTEST_UNKNOWN;
    snprintf(tried[1], sizeof(tried[1]), "%s", why);
    if (!ec_loaded) {
        /* No key from its value (tpm2-pkcs11): one the token makes. */
        bool made = false;
        res = sign_attempt(&r, generate_ec_key, CKM_ECDSA, "CKM_ECDSA (generated P-256)", &made);
        if (res == 0)
            goto pass;
        unknown |= res == GUARDIAN_SELFTEST_UNKNOWN;
        snprintf(tried[2], sizeof(tried[2]), "%s", why);
    }
    clean(&r);
    snprintf(why, why_len, "%s; %s%s%s", tried[0], tried[1], tried[2][0] ? "; " : "", tried[2]);
    return unknown ? GUARDIAN_SELFTEST_UNKNOWN : GUARDIAN_SELFTEST_FAIL;
pass:
    clean(&r);
    return GUARDIAN_SELFTEST_PASS;
}

/* ---- the per-slot results ------------------------------------------------- */

struct slot_result {
    CK_SLOT_ID slot;
    bool used;
    unsigned char res[MAX_MECHS]; /* GUARDIAN_SELFTEST_*, 0 not run */
    bool retry;                   /* the login state changed: test the undecided again */
    unsigned char trusted;        /* CKA_TRUSTED: 0 not tried, 1 the SO's only, 2 not (or not known) */
    struct guardian_transport_facts transport; /* what the unwrap self-test measured */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct slot_result results[MAX_SLOTS];
static size_t next_victim;

void guardian_mechs_selftest_reset(void)
{
    pthread_mutex_lock(&lock);
    memset(results, 0, sizeof(results));
    next_victim = 0;
    pthread_mutex_unlock(&lock);
}

void guardian_mechs_selftest_login_changed(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < MAX_SLOTS; i++)
        results[i].retry = true;
    pthread_mutex_unlock(&lock);
}

void guardian_selftest_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    lock = fresh;
}

static struct slot_result *slot_entry(CK_SLOT_ID slot)
{
    struct slot_result *e;
    for (size_t i = 0; i < MAX_SLOTS; i++)
        if (results[i].used && results[i].slot == slot)
            return &results[i];
    for (size_t i = 0; i < MAX_SLOTS; i++)
        if (!results[i].used) {
            e = &results[i];
            goto fresh;
        }
    e = &results[next_victim++ % MAX_SLOTS];
fresh:
    memset(e, 0, sizeof(*e));
    e->used = true;
    e->slot = slot;
    return e;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Every undecided mechanism's test on `slot`, in one session (lock held). */
static void run_tests(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, struct slot_result *e)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    struct timespec t0;
    char why[400];
    CK_RV rv;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* Read-only: PKCS#11 lets it make session objects, and a backend that
     * wants a read-write session for them (tpm2-pkcs11) then answers
     * CKR_SESSION_READ_ONLY, which decides nothing, without logging the
     * refusals it prints on stderr for the keys themselves.  Read-write only
     * where no read-only session opens (the SO is logged in). */
    rv = be->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        rv = be->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        guardian_debug(LOG, "slot %lu: no session for the self-test (%s): the mechanism list decides meanwhile",
                       (unsigned long)slot, ckr(rv));
        return;
    }
    for (size_t i = 0; i < guardian_mech_count() && i < MAX_MECHS; i++) {
        const struct guardian_mech *m = guardian_mech_at(i);
        struct timespec t1;
        int res;
        if ((e->res[i] != 0 && e->res[i] != GUARDIAN_SELFTEST_UNKNOWN) || m->selftest == NULL)
            continue;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        why[0] = '\0';
        res = m->selftest(be, s, why, sizeof(why));
        if (m->selftest == guardian_selftest_unwrap_package)
            e->transport = last_facts;
        guardian_debug(LOG, "slot %lu: %s %s (%s) in %.2f ms", (unsigned long)slot, m->name,
                       res == GUARDIAN_SELFTEST_PASS   ? "works: advertised"
                       : res == GUARDIAN_SELFTEST_FAIL ? "does not work: not advertised"
                                                       : "could not be tested now: the mechanism list decides",
                       why, ms_since(&t1));
        e->res[i] = (unsigned char)res;
    }
    be->C_CloseSession(s);
    guardian_debug(LOG, "slot %lu: self-test took %.2f ms", (unsigned long)slot, ms_since(&t0));
}

static int result_of(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, size_t index)
{
    int res;
    pthread_mutex_lock(&lock);
    {
        struct slot_result *e = slot_entry(slot);
        if (e->res[index] == 0 || (e->res[index] == GUARDIAN_SELFTEST_UNKNOWN && e->retry))
            run_tests(be, slot, e);
        e->retry = false;
        res = e->res[index];
    }
    pthread_mutex_unlock(&lock);
    return res;
}

/* ---- is CKA_TRUSTED the Security Officer's? ------------------------------- */

static CK_RV make_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, bool trusted)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    static const CK_BYTE serial[] = {0x02, 0x01, 0x01}; /* the certificate's, DER */
    /* NSS wants the issuer and serial number (CKR_TEMPLATE_INCOMPLETE without). */
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                        {CKA_TOKEN, &no, sizeof(no)},
                        {CKA_SUBJECT, (void *)st_cert_subject, sizeof(st_cert_subject)},
                        {CKA_VALUE, (void *)st_cert, sizeof(st_cert)},
                        {CKA_ISSUER, (void *)st_cert_subject, sizeof(st_cert_subject)},
                        {CKA_SERIAL_NUMBER, (void *)serial, sizeof(serial)},
                        {CKA_TRUSTED, &yes, sizeof(yes)}};
    CK_RV rv = be->C_CreateObject(s, t, trusted ? 8 : 7, &h);
    if (rv == CKR_OK) {
        be->C_DestroyObject(s, h);
        guardian_policy_forget(h);
    }
    return rv;
}

/* The two certificates, in a read-only session of our own (a plain user's:
 * the login is the application's): nothing touches the caller's session, and
 * closing ours ends whatever the backend kept of them. */
static CK_RV trusted_trial(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, CK_RV *control, CK_RV *trusted)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = be->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        return rv;
    *control = make_cert(be, s, false);
    if (*control == CKR_OK)
        *trusted = make_cert(be, s, true);
    be->C_CloseSession(s);
    return CKR_OK;
}

bool guardian_trusted_so_only(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, char *why, size_t why_len)
{
    CK_SESSION_INFO si;
    CK_RV rv, control = CKR_GENERAL_ERROR, trusted = CKR_GENERAL_ERROR;
    int res;

    memset(&si, 0, sizeof(si));
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK) {
        snprintf(why, why_len, "C_GetSessionInfo: %s", ckr(rv));
        return false;
    }
    if (si.state != CKS_RO_USER_FUNCTIONS && si.state != CKS_RW_USER_FUNCTIONS) {
        snprintf(why, why_len, "the session is not a plain user's (state %lu)", (unsigned long)si.state);
        return false;
    }
    pthread_mutex_lock(&lock);
    {
        struct slot_result *e = slot_entry(si.slotID);
        if (e->trusted == 0) {
            /* The control first: a certificate this token makes at all. */
            rv = trusted_trial(be, si.slotID, &control, &trusted);
            if (rv == CKR_OK)
                rv = control;
            if (rv != CKR_OK) {
                snprintf(why, why_len, "this token makes no session certificate here (%s): whether a plain user "
                                       "can make a trusted one cannot be seen", ckr(rv));
                if (undecided(rv)) {
                    pthread_mutex_unlock(&lock);
                    return false; /* tried again next time */
                }
                e->trusted = 2;
            } else {
                rv = trusted;
                e->trusted = rv == CKR_OK ? 2 : 1;
                snprintf(why, why_len, "%s", rv == CKR_OK ? "a plain user can make a CKA_TRUSTED certificate on "
                                                            "this token, so a trusted certificate proves no enrolment"
                                                          : "CKA_TRUSTED is the SO's");
            }
            guardian_debug(LOG, "slot %lu: %s", (unsigned long)si.slotID, why);
        } else {
            snprintf(why, why_len, "%s", e->trusted == 1 ? "CKA_TRUSTED is the SO's"
                                                          : "a plain user can make a CKA_TRUSTED certificate on "
                                                            "this token (or it could not be seen that one cannot), "
                                                            "so a trusted certificate proves no enrolment");
        }
        res = e->trusted;
    }
    pthread_mutex_unlock(&lock);
    return res == 1;
}

/* ---- what the key transports need, per slot (transport.h) ---------------- */

void guardian_transport_facts(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, struct guardian_transport_facts *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < guardian_mech_count() && i < MAX_MECHS; i++) {
        if (guardian_mech_at(i)->selftest != guardian_selftest_unwrap_package)
            continue;
        (void)result_of(be, slot, i);
        pthread_mutex_lock(&lock);
        *out = slot_entry(slot)->transport;
        pthread_mutex_unlock(&lock);
    }
}

int guardian_transport_state_in_cert(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, X509 *x)
{
    struct guardian_transport_facts f;
    CK_SESSION_INFO si;
    int kt[GUARDIAN_TRANSPORTS_MAX];
    size_t n = 0;
    char list[200] = "";

    if (be->C_GetSessionInfo(s, &si) != CKR_OK)
        return 0;
    guardian_transport_facts(be, si.slotID, &f);
    if (f.state != GUARDIAN_SELFTEST_PASS && f.state != GUARDIAN_SELFTEST_FAIL) {
        /* Not measured: A says nothing, which readers take as aes-cbc only,
         * what every Guardian certificate meant before the statement. */
        guardian_warn(LOG, "slot %lu: the key transports could not be measured now: the Guardian certificate "
                           "states none (read as aes-cbc only)", (unsigned long)si.slotID);
        return 1;
    }
    /* Only the schemes of A's key type: RSA-OAEP for an RSA key (a token
     * without EC), else strongest first: the X9.63 KDF is the standard one;
     * the AES-CBC construction exists for backends without it (SoftHSM). */
    if (X509_get0_pubkey(x) != NULL && EVP_PKEY_get_base_id(X509_get0_pubkey(x)) == EVP_PKEY_RSA) {
        if (f.schemes & (1u << GUARDIAN_KT_RSAOAEP_SHA256))
            kt[n++] = GUARDIAN_KT_RSAOAEP_SHA256;
    } else {
        if (f.schemes & (1u << GUARDIAN_KT_ECDH_SHA256KDF))
            kt[n++] = GUARDIAN_KT_ECDH_SHA256KDF;
        if (f.schemes & (1u << GUARDIAN_KT_ECDH_AESCBC))
            kt[n++] = GUARDIAN_KT_ECDH_AESCBC;
    }
    /* No key transport needs no primitive: every Guardian imports with it. */
    kt[n++] = GUARDIAN_KT_NONE;
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                 guardian_transport_name(kt[i]));
    if (f.partial)
        guardian_warn(LOG, "slot %lu: one key transport could not be measured now: the Guardian certificate states "
                           "only those that were", (unsigned long)si.slotID);
    guardian_info(LOG, "slot %lu: the Guardian certificate states the key transports %s", (unsigned long)si.slotID,
                  list);
    return guardian_transports_add(x, kt, n);
}

bool guardian_mech_advertised(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, const struct guardian_mech *m,
                              const CK_MECHANISM_TYPE *list, size_t n)
{
    size_t index = guardian_mech_count();
    int res = 0;
    bool ok = false;

    if (m == NULL || (m->unwrap == NULL && m->derive == NULL))
        return false;
    for (size_t i = 0; i < guardian_mech_count(); i++)
        if (guardian_mech_at(i) == m)
            index = i;
    if (m->selftest != NULL && index < MAX_MECHS)
        res = result_of(be, slot, index);
    if (res == GUARDIAN_SELFTEST_PASS || res == GUARDIAN_SELFTEST_FAIL)
        return res == GUARDIAN_SELFTEST_PASS;
    /* Undecided: the names in the slot's list. */
    if (list != NULL)
        return guardian_mech_available(m, list, n);
    {
        CK_ULONG count = 0;
        CK_MECHANISM_TYPE *mine;
        if (be->C_GetMechanismList(slot, NULL, &count) != CKR_OK)
            return false;
        mine = calloc((size_t)count + 1, sizeof(*mine));
        if (mine != NULL && be->C_GetMechanismList(slot, mine, &count) == CKR_OK)
            ok = guardian_mech_available(m, mine, count);
        free(mine);
    }
    return ok;
}
