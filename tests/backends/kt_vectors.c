/*
 * kt_vectors.c — the package format's key-transport vectors
 * (tests/vectors/key-transport-v1.txt, docs/package-format.md "Test vectors")
 * run in a token through the module, each scheme as an import runs it: the
 * vector's Guardian key (a session key here), ECDH with the vector's
 * ephemeral point, the KEK (CKD_NULL + AES_CBC_ENCRYPT_DATA, or
 * CKD_SHA256_KDF with the KDF context C as shared data), compared with the
 * vector's, then the RFC 5649 unwrap of the vector's CA key under 0x210A,
 * else 0x210B, with CKA_NSS_DB where the EC template needs it, and an ECDSA
 * signature by it that OpenSSL verifies.  And the two bindings: a KEK from a
 * context with one bit flipped unwraps nothing, and a wrapped key with one
 * bit flipped unwraps nothing.  One line per scheme:
 *
 *   SCHEME derive 0xCKR kek-matches 0|1 kwp 0xN nss_db 0|1 verifies 0|1 other-context 0xCKR altered 0xCKR
 *
 *   kt_vectors MODULE LABEL PIN VECTORS
 *
 * A test tool only (tests/backends/test_advertise.sh).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"

static CK_FUNCTION_LIST *f;
static CK_SESSION_HANDLE s;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static unsigned char *vector(const char *path, const char *name, size_t *len)
{
    FILE *fp = fopen(path, "r");
    char line[4096];
    unsigned char *out = NULL;
    size_t nl = strlen(name);
    while (fp != NULL && fgets(line, sizeof(line), fp) != NULL) {
        if (strncmp(line, name, nl) != 0 || strncmp(line + nl, " = ", 3) != 0)
            continue;
        {
            const char *h = line + nl + 3;
            size_t n = strcspn(h, "\r\n") / 2;
            out = malloc(n ? n : 1);
            for (size_t i = 0; out != NULL && i < n; i++)
                sscanf(h + 2 * i, "%2hhx", &out[i]);
            *len = n;
        }
        break;
    }
    if (fp != NULL)
        fclose(fp);
    return out;
}

static CK_RV find_slot(const char *label, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        CK_TOKEN_INFO ti;
        size_t len = strlen(label);
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || len > sizeof(ti.label))
            continue;
        if (memcmp(ti.label, label, len) == 0 && strspn((char *)ti.label + len, " ") == sizeof(ti.label) - len) {
            *out = slots[i];
            return CKR_OK;
        }
    }
    return rv == CKR_OK ? CKR_TOKEN_NOT_PRESENT : rv;
}

/* The KEK of `scheme` (1 aes-cbc, 2 x963-sha256), readable so that it can be compared. */
static CK_RV kek_of(int scheme, CK_OBJECT_HANDLE g, const unsigned char *point, size_t plen,
                    const unsigned char *ctx, size_t clen, CK_OBJECT_HANDLE *kek)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG len32 = 32;
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_AES_CBC_ENCRYPT_DATA_PARAMS cbc;
    CK_MECHANISM m_ecdh = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)}, m_cbc = {CKM_AES_CBC_ENCRYPT_DATA, &cbc, sizeof(cbc)};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                        {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_TOKEN, &no, 1}, {CKA_SENSITIVE, &no, 1},
                        {CKA_EXTRACTABLE, &yes, 1}, {CKA_UNWRAP, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    CK_OBJECT_HANDLE z;
    CK_RV rv;
    memset(&ecdh, 0, sizeof(ecdh));
    ecdh.pPublicData = (CK_BYTE_PTR)point;
    ecdh.ulPublicDataLen = plen;
    if (scheme == 2) {
        ecdh.kdf = CKD_SHA256_KDF;
        ecdh.pSharedData = (CK_BYTE_PTR)ctx;
        ecdh.ulSharedDataLen = clen;
        return f->C_DeriveKey(s, &m_ecdh, g, t, 8, kek);
    }
    ecdh.kdf = CKD_NULL;
    if ((rv = f->C_DeriveKey(s, &m_ecdh, g, t, 8, &z)) != CKR_OK)
        return rv;
    memset(&cbc, 0, sizeof(cbc));
    cbc.pData = (CK_BYTE_PTR)ctx;
    cbc.length = clen;
    rv = f->C_DeriveKey(s, &m_cbc, z, t, 8, kek);
    f->C_DestroyObject(s, z);
    return rv;
}

static CK_RV unwrap(CK_OBJECT_HANDLE kek, const unsigned char *w, size_t wl, CK_MECHANISM_TYPE *kwp, int *nss_db,
                    CK_OBJECT_HANDLE *out)
{
    static const CK_MECHANISM_TYPE numbers[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP};
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
    CK_KEY_TYPE ec = CKK_EC;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_TOKEN, &no, 1},
                        {CKA_SIGN, &yes, 1}, {GUARDIAN_CKA_NSS_DB, "vector", 6}};
    CK_RV rv = CKR_MECHANISM_INVALID, first = CKR_OK;
    for (size_t i = 0; i < 2; i++) {
        CK_MECHANISM m = {numbers[i], NULL, 0};
        if (*kwp != 0 && *kwp != numbers[i])
            continue;
        rv = f->C_UnwrapKey(s, &m, kek, (CK_BYTE_PTR)w, wl, t, *nss_db ? 5 : 4, out);
        if ((rv == CKR_TEMPLATE_INCOMPLETE || rv == CKR_KEY_TYPE_INCONSISTENT) && !*nss_db &&
            f->C_UnwrapKey(s, &m, kek, (CK_BYTE_PTR)w, wl, t, 5, out) == CKR_OK) {
            *nss_db = 1;
            rv = CKR_OK;
        }
        if (rv == CKR_OK) {
            *kwp = numbers[i];
            return rv;
        }
        if (first == CKR_OK)
            first = rv;
    }
    return first != CKR_OK ? first : rv;
}

static int verifies(CK_OBJECT_HANDLE ca, const unsigned char *p8, size_t lp)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    unsigned char hash[32], sig[64], der[80], *q = der;
    CK_ULONG sl = sizeof(sig);
    const unsigned char *p = p8;
    EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, (long)lp);
    ECDSA_SIG *es = ECDSA_SIG_new();
    EVP_PKEY_CTX *c = NULL;
    int ok = 0, dl;
    memset(hash, 0x5a, sizeof(hash));
    if (k == NULL || es == NULL || f->C_SignInit(s, &m, ca) != CKR_OK || f->C_Sign(s, hash, 32, sig, &sl) != CKR_OK ||
        sl != 64)
        goto out;
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
    dl = i2d_ECDSA_SIG(es, &q);
    c = EVP_PKEY_CTX_new(k, NULL);
    ok = c != NULL && EVP_PKEY_verify_init(c) == 1 && EVP_PKEY_verify(c, der, (size_t)dl, hash, 32) == 1;
out:
    EVP_PKEY_CTX_free(c);
    ECDSA_SIG_free(es);
    EVP_PKEY_free(k);
    return ok;
}

int main(int argc, char **argv)
{
    static const char *names[] = {"", "aes-cbc", "x963-sha256"};
    static const char *kek_names[] = {"", "kek_ecdh_aescbc", "kek_ecdh_x963sha256"};
    static const char *wrap_names[] = {"", "wrapped_aescbc", "wrapped_x963sha256"};
    size_t lg, le, lc, lp;
    unsigned char *gd, *ep, *ctx, *p8;
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
    CK_KEY_TYPE ec = CKK_EC;
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_OBJECT_HANDLE g;
    CK_SLOT_ID slot;
    void *dl;
    CK_C_GetFunctionList gf;

    if (argc != 5) {
        fprintf(stderr, "usage: kt_vectors MODULE LABEL PIN VECTORS\n");
        return 2;
    }
    gd = vector(argv[4], "guardian_private", &lg), ep = vector(argv[4], "ephemeral_public", &le);
    ctx = vector(argv[4], "kdf_context_c", &lc), p8 = vector(argv[4], "ca_private_pkcs8", &lp);
    if (gd == NULL || ep == NULL || ctx == NULL || p8 == NULL || (dl = dlopen(argv[1], RTLD_NOW)) == NULL ||
        (gf = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL || gf(&f) != CKR_OK ||
        f->C_Initialize(NULL) != CKR_OK || find_slot(argv[2], &slot) != CKR_OK ||
        f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK ||
        f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])) != CKR_OK) {
        fprintf(stderr, "kt_vectors: cannot read the vectors or reach the token\n");
        return 1;
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                            {CKA_EC_PARAMS, p256, sizeof(p256)}, {CKA_VALUE, gd, lg}, {CKA_TOKEN, &no, 1},
                            {CKA_PRIVATE, &no, 1}, {CKA_DERIVE, &yes, 1}};
        CK_RV rv = f->C_CreateObject(s, t, 7, &g);
        if (rv != CKR_OK) {
            fprintf(stderr, "kt_vectors: the vector's Guardian key: 0x%lx\n", (unsigned long)rv);
            return 1;
        }
    }
    for (int scheme = 1; scheme <= 2; scheme++) {
        size_t lk, lw;
        unsigned char *kv = vector(argv[4], kek_names[scheme], &lk), *w = vector(argv[4], wrap_names[scheme], &lw);
        unsigned char value[64], other[64];
        CK_ATTRIBUTE get = {CKA_VALUE, value, sizeof(value)};
        CK_OBJECT_HANDLE kek = 0, kek2 = 0, ca = 0, h;
        CK_MECHANISM_TYPE kwp = 0;
        int nss_db = 0, match = 0, ok = 0;
        CK_RV rv_ctx = CKR_GENERAL_ERROR, rv_alt = CKR_GENERAL_ERROR;
        CK_RV rv = kek_of(scheme, g, ep, le, ctx, lc, &kek);
        if (rv == CKR_OK && f->C_GetAttributeValue(s, kek, &get, 1) == CKR_OK)
            match = get.ulValueLen == lk && memcmp(value, kv, lk) == 0;
        if (rv == CKR_OK && unwrap(kek, w, lw, &kwp, &nss_db, &ca) == CKR_OK)
            ok = verifies(ca, p8, lp);
        if (rv == CKR_OK && kwp != 0) {
            /* The context binds the KEK: one bit of C changed, nothing unwraps. */
            memcpy(other, ctx, lc);
            other[0] ^= 1;
            if (kek_of(scheme, g, ep, le, other, lc, &kek2) == CKR_OK)
                rv_ctx = unwrap(kek2, w, lw, &kwp, &nss_db, &h);
            /* The wrap is authenticated: one bit of it changed, nothing unwraps. */
            w[lw / 2] ^= 1;
            rv_alt = unwrap(kek, w, lw, &kwp, &nss_db, &h);
        }
        printf("%s derive 0x%lx kek-matches %d kwp 0x%lx nss_db %d verifies %d other-context 0x%lx altered 0x%lx\n",
               names[scheme], (unsigned long)rv, match, (unsigned long)kwp, nss_db, ok, (unsigned long)rv_ctx,
               (unsigned long)rv_alt);
        free(kv), free(w);
    }
    f->C_Logout(s);
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    free(gd), free(ep), free(ctx), free(p8);
    return 0;
}
