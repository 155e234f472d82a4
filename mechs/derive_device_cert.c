/*
 * derive_device_cert.c — CKM_GUARDIAN_DERIVE_DEVICE_CERT (C_DeriveKey).
 *
 * Issues one X.509 device certificate, signed inside the backend by an
 * imported production CA key (the base key), counted against the product's
 * authorised units and recorded in the audit trail before the handle is
 * returned (docs/derive-mechanism.md, docs/certificate-profile.md).
 *
 * Per call: check the parameters and the device key (cert_builder.c, no
 * EVP_PKEY), find the package by the base key's CKA_ID in a per-process cache
 * (built once per package from the store, and proven to match the key by one
 * test signature), take a serial from this process's block of reserved units
 * (guardian_store_reserve_block, power-safe, 1, 2, 4, ... up to 1,024 units at
 * a time; the next block reserved early, so other threads never wait for it),
 * fill the TBSCertificate, hash it here and sign the hash with raw
 * CKM_ECDSA (SoftHSMv2 has no ECDSA-with-hash) or CKM_RSA_PKCS over a
 * DigestInfo, make the module-held session certificate object hidden
 * (module/cert_objects.c), record ISSUE with the certificate
 * (guardian_store_issue), and only then publish the object and return its
 * handle; a backend token object (CKA_TOKEN TRUE) is created after the record.
 * No one can see a certificate whose ISSUE record is not written.
 *
 * Units reserved and not used (the block in hand and the spare) are given
 * back (RELEASE) at C_Finalize; a killed process leaves them "reserved, not
 * issued": counted, never issued twice.
 *
 * CKG_GUARDIAN_REQ_DEVICE_CERT (a C_CreateObject request, for callers behind
 * a remoting layer that drops vendor mechanisms) carries the parameter as
 * attributes and names a package instead of the CA key: the module finds the
 * key, puts it through the base-key checks, and issues with the same
 * issue_certificate().  CKG_GUARDIAN_REQ_DEVICE_CERTS (a gang programmer's
 * batch of 1..64 devices in one call, one RPC instead of three per
 * certificate through the Guardian service) checks every entry first and
 * then runs issue_certificate() for each in order.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "anchor.h"
#include "ca_binding.h"
#include "cert_builder.h"
#include "device_batch.h"
#include "identity.h"
#include "module.h"
#include "registry.h"
#include "request.h"
#include "store.h"
/* after the headers above: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "derive"
#define MAX_ISSUERS 64
/* Units reserved at a time, at most: one FULL commit (~3 ms of fsync on this
 * VM) and one state-anchor write into the token (~4 ms on SoftHSM's file
 * store: a new object and the old one destroyed) per block; a killed process
 * loses at most the rest of its block and its spare (counted, never issued:
 * up to 2 x BLOCK_MAX).  At 256 the anchor cost 13-18 % of the certificate
 * rate; at 1024 the rate is back above what it was before anchors
 * (docs/performance.md). */
#define BLOCK_MAX 1024
/* From blocks of this size on, the next block is reserved early (the spare),
 * so that no other thread waits for the reservation; smaller ones, a short
 * run's first few, are reserved when used up, and a first article reserves
 * one unit. */
#define EARLY_MIN 64
#define DEVICE_TEXT_MAX 64
#define DEVICE_BINARY_MAX 32
#define LABEL_MAX 255
#define ID_MAX 64

struct issuer {
    struct guardian_cert_issuer cb;
    int64_t not_after;
    char label[GUARDIAN_PKG_NAME_MAX * 2 + 48]; /* the CA key's label */
    char made_label[GUARDIAN_PKG_NAME_MAX * 2 + 48]; /* or, made in the Guardian (ca_request.c), this one */
    /* A handle shown (by a test signature) to hold this CA's private key;
     * guarded by cache_lock.  Forgotten when the module sees it destroyed, a
     * logout or a session close, or a signature with it fail. */
    CK_OBJECT_HANDLE proven_key;
    pthread_mutex_t lock;                       /* guards what follows */
    pthread_cond_t refilled;                    /* a reservation ended (refilling went false) */
    uint64_t next, end;                         /* reserved serials [next, end) */
    uint64_t spare_first, spare_count;          /* the next block, committed and anchored, or 0 */
    uint64_t block;                             /* size of the next reservation */
    bool refilling;                             /* a thread is reserving (outside the lock) */
    bool early_failed;                          /* an early reservation failed: wait for the empty block */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct issuer *issuers[MAX_ISSUERS];
static size_t n_issuers;
static pid_t cache_pid;

/* ---- parameters ----------------------------------------------------------------- */

/* The device, as checked: every byte copied out of the caller's memory before
 * it is checked, and only the copies used afterwards.  The caller's buffers
 * may change under us at any time (another thread of the application): what
 * goes into the certificate and the audit trail is what was checked. */
struct device_in {
    uint8_t id[DEVICE_TEXT_MAX];
    size_t id_len;
    char text[2 * DEVICE_BINARY_MAX + 1];
    uint8_t spki[GUARDIAN_DEVKEY_MAX_DER]; /* the SubjectPublicKeyInfo */
    struct guardian_device_key key;        /* points into spki */
};

/* The device as the caller gave it: the mechanism parameter's fields, or the
 * request's attributes. */
struct device_arg {
    CK_ULONG format; /* CKG_GUARDIAN_DEVICE_ID_* */
    const CK_BYTE *id;
    CK_ULONG id_len;
    const CK_BYTE *spki;
    CK_ULONG spki_len;
};

CK_RV guardian_device_id_check(CK_ULONG format, const CK_BYTE *id, CK_ULONG id_len, uint8_t out[DEVICE_TEXT_MAX],
                                size_t *out_len, char text[2 * DEVICE_BINARY_MAX + 1])
{
    CK_ULONG id_max;

    switch (format) {
    case CKG_GUARDIAN_DEVICE_ID_TEXT: id_max = DEVICE_TEXT_MAX; break;
    case CKG_GUARDIAN_DEVICE_ID_BINARY: id_max = DEVICE_BINARY_MAX; break;
    default:
        guardian_error(LOG, "refused: device ID format %lu is unknown (1 text, 2 binary)", (unsigned long)format);
        return CKR_GUARDIAN_DEVICE_ID_INVALID;
    }
    if (id_len < 1 || id_len > id_max || (id == NULL && id_len != 0)) {
        guardian_error(LOG, "refused: a %s device ID has 1..%lu %s, got %lu",
                       id_max == DEVICE_TEXT_MAX ? "text" : "binary", (unsigned long)id_max,
                       id_max == DEVICE_TEXT_MAX ? "characters" : "bytes", (unsigned long)id_len);
        return CKR_GUARDIAN_DEVICE_ID_INVALID;
    }
    memcpy(out, id, id_len);
    *out_len = id_len;
    if (format == CKG_GUARDIAN_DEVICE_ID_TEXT) {
        for (size_t i = 0; i < id_len; i++) {
            if (!guardian_id_char(out[i])) {
                guardian_error(LOG, "refused: a text device ID may hold only A-Z a-z 0-9 - . _ : (byte %zu is not)",
                               i);
                return CKR_GUARDIAN_DEVICE_ID_INVALID;
            }
        }
        memcpy(text, out, id_len);
        text[id_len] = '\0';
    } else {
        for (size_t i = 0; i < id_len; i++)
            snprintf(text + 2 * i, 3, "%02x", out[i]);
    }
    return CKR_OK;
}

/* The device ID and key, checked and copied into `dev`: the same checks and
 * CKR codes for both paths. */
static CK_RV check_device(const struct device_arg *p, struct device_in *dev)
{
    const uint8_t *spki = NULL;
    const char *why = NULL;
    CK_RV rv = guardian_device_id_check(p->format, p->id, p->id_len, dev->id, &dev->id_len, dev->text);
    int r;

    if (rv != CKR_OK)
        return rv;

    /* Longer than any key accepted, or empty: not copied; the check refuses
     * it by its length. */
    if (p->spki_len > 0 && p->spki_len <= sizeof(dev->spki)) {
        memcpy(dev->spki, p->spki, p->spki_len);
        spki = dev->spki;
    }
    r = guardian_device_key_check(spki, p->spki_len, &dev->key, &why);
    if (r != GUARDIAN_DEVKEY_OK) {
        guardian_error(LOG, "refused: device %s: public key %s: %s", dev->text,
                       r == GUARDIAN_DEVKEY_UNSUPPORTED ? "not supported" : "invalid", why);
        return r == GUARDIAN_DEVKEY_UNSUPPORTED ? CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED : CKR_GUARDIAN_DEVICE_KEY_INVALID;
    }
    return CKR_OK;
}

/* The mechanism parameter: a CK_GUARDIAN_DEVICE_CERT_PARAMS of this version. */
static CK_RV check_params(const CK_MECHANISM *mech, struct device_in *dev)
{
    CK_GUARDIAN_DEVICE_CERT_PARAMS p;
    struct device_arg a;

    if (mech->pParameter == NULL || mech->ulParameterLen != sizeof(p)) {
        guardian_error(LOG, "the parameter must be a CK_GUARDIAN_DEVICE_CERT_PARAMS (%zu bytes), got %lu bytes",
                       sizeof(p), (unsigned long)mech->ulParameterLen);
        return CKR_MECHANISM_PARAM_INVALID;
    }
    memcpy(&p, mech->pParameter, sizeof(p));
    if (p.version != CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION) {
        guardian_error(LOG, "parameter version %lu is not supported (this module knows 1)", (unsigned long)p.version);
        return CKR_MECHANISM_PARAM_INVALID;
    }
    if ((p.pDeviceId == NULL && p.ulDeviceIdLen != 0) || (p.pPublicKeyInfo == NULL && p.ulPublicKeyInfoLen != 0))
        return CKR_ARGUMENTS_BAD;
    a = (struct device_arg){p.deviceIdFormat, p.pDeviceId, p.ulDeviceIdLen, p.pPublicKeyInfo, p.ulPublicKeyInfoLen};
    return check_device(&a, dev);
}

/* What the template asks for, copied out of the caller's memory: read once,
 * so a value cannot change between the check and its use, and an empty value
 * ({CKA_LABEL, NULL, 0}) is an empty buffer here, never a NULL to memcpy. */
struct out_template {
    CK_BBOOL token;
    bool has_label, has_id;
    bool reissue; /* CKA_GUARDIAN_REISSUE TRUE: a device with another key gets a new certificate */
    char label[LABEL_MAX + 1]; /* NUL-terminated */
    uint8_t id[ID_MAX];
    size_t id_len;
};

/* The template may name the class and type (the only ones produced), choose
 * CKA_TOKEN, and set CKA_LABEL and CKA_ID; anything else is refused. */
static CK_RV check_template(const CK_ATTRIBUTE *t, CK_ULONG n, struct out_template *o)
{
    memset(o, 0, sizeof(*o));
    if (t == NULL && n != 0)
        return CKR_ARGUMENTS_BAD;
    for (CK_ULONG i = 0; i < n; i++) {
        const CK_ATTRIBUTE *a = &t[i];
        switch (a->type) {
        case CKA_CLASS:
            if (a->pValue == NULL || a->ulValueLen != sizeof(CK_OBJECT_CLASS) ||
                *(CK_OBJECT_CLASS *)a->pValue != CKO_CERTIFICATE)
                return CKR_TEMPLATE_INCONSISTENT;
            break;
        case CKA_CERTIFICATE_TYPE:
            if (a->pValue == NULL || a->ulValueLen != sizeof(CK_CERTIFICATE_TYPE) ||
                *(CK_CERTIFICATE_TYPE *)a->pValue != CKC_X_509)
                return CKR_TEMPLATE_INCONSISTENT;
            break;
        case CKA_TOKEN:
        case CKA_PRIVATE:
            if (a->pValue == NULL || a->ulValueLen != sizeof(CK_BBOOL))
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if (a->type == CKA_TOKEN)
                o->token = *(CK_BBOOL *)a->pValue != CK_FALSE;
            else if (*(CK_BBOOL *)a->pValue != CK_FALSE)
                return CKR_TEMPLATE_INCONSISTENT; /* certificates are public */
            break;
        case CKA_LABEL:
            if ((a->pValue == NULL && a->ulValueLen != 0) || a->ulValueLen > LABEL_MAX)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if (a->ulValueLen > 0)
                memcpy(o->label, a->pValue, a->ulValueLen);
            o->label[a->ulValueLen] = '\0';
            o->has_label = true;
            break;
        case CKA_ID:
            if ((a->pValue == NULL && a->ulValueLen != 0) || a->ulValueLen > ID_MAX)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if (a->ulValueLen > 0)
                memcpy(o->id, a->pValue, a->ulValueLen);
            o->id_len = a->ulValueLen;
            o->has_id = true;
            break;
        case CKA_GUARDIAN_REISSUE:
            if (a->pValue == NULL || a->ulValueLen != sizeof(CK_BBOOL))
                return CKR_ATTRIBUTE_VALUE_INVALID;
            o->reissue = *(CK_BBOOL *)a->pValue != CK_FALSE;
            break;
        default:
            guardian_error(LOG, "template attribute 0x%lx is not accepted (only CKA_CLASS, CKA_CERTIFICATE_TYPE, "
                                "CKA_TOKEN, CKA_PRIVATE FALSE, CKA_LABEL, CKA_ID, CKA_GUARDIAN_REISSUE)",
                           (unsigned long)a->type);
            return CKR_ATTRIBUTE_TYPE_INVALID;
        }
    }
    return CKR_OK;
}

/* ---- signing inside the backend ------------------------------------------------------ */

static const uint8_t digest_info_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                             0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
#define DIGEST_INFO_LEN (sizeof(digest_info_sha256) + 32)

/* The PKCS#1 v1.5 DigestInfo of a SHA-256 hash: what CKM_RSA_PKCS signs. */
static void digest_info(const uint8_t hash[32], uint8_t out[DIGEST_INFO_LEN])
{
    memcpy(out, digest_info_sha256, sizeof(digest_info_sha256));
    memcpy(out + sizeof(digest_info_sha256), hash, 32);
}

/* Sign a hash with the CA key: raw ECDSA (r || s) or PKCS#1 v1.5. */
static CK_RV token_sign(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key,
                        const struct guardian_cert_issuer *is, const uint8_t *hash, size_t hash_len, uint8_t *sig,
                        CK_ULONG *sig_len)
{
    CK_MECHANISM m = {is->ca_kind == GUARDIAN_DEVKEY_RSA ? CKM_RSA_PKCS : CKM_ECDSA, NULL, 0};
    uint8_t di[DIGEST_INFO_LEN];
    const uint8_t *in = hash;
    CK_ULONG in_len = hash_len;
    CK_RV rv;

    if (is->ca_kind == GUARDIAN_DEVKEY_RSA) {
        digest_info(hash, di);
        in = di;
        in_len = sizeof(di);
    }
    rv = be->C_SignInit(session, &m, key);
    if (rv != CKR_OK)
        return rv;
    rv = be->C_Sign(session, (CK_BYTE_PTR)in, in_len, sig, sig_len);
    if (rv == CKR_OK && *sig_len != is->ca_sig_len)
        rv = CKR_FUNCTION_FAILED;
    return rv;
}

/* One test signature, verified with the CA certificate's key: the base key
 * really is this package's production CA key, not merely labelled so. */
static CK_RV prove_key(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key, struct issuer *is)
{
    uint8_t hash[48], sig[1024], der[1100];
    CK_ULONG sig_len = sizeof(sig);
    size_t hl = (size_t)EVP_MD_get_size(is->cb.md), der_len = 0;
    EVP_PKEY_CTX *ctx = NULL;
    CK_RV rv;
    int ok = 0;

    if (RAND_bytes(hash, (int)hl) != 1)
        return CKR_FUNCTION_FAILED;
    rv = token_sign(be, session, key, &is->cb, hash, hl, sig, &sig_len);
    if (rv != CKR_OK)
        return rv;
    if (is->cb.ca_kind == GUARDIAN_DEVKEY_RSA) {
        digest_info(hash, der);
        der_len = DIGEST_INFO_LEN;
    } else {
        ECDSA_SIG *s = ECDSA_SIG_new();
        unsigned char *p = der;
        if (s != NULL && ECDSA_SIG_set0(s, BN_bin2bn(sig, (int)sig_len / 2, NULL),
                                        BN_bin2bn(sig + sig_len / 2, (int)sig_len / 2, NULL)) == 1) {
            int n = i2d_ECDSA_SIG(s, &p);
            der_len = n > 0 ? (size_t)n : 0;
        }
        ECDSA_SIG_free(s);
    }
    ctx = EVP_PKEY_CTX_new(is->cb.ca_pub, NULL);
    if (ctx != NULL && is->cb.ca_kind == GUARDIAN_DEVKEY_RSA) {
        uint8_t rec[1024];
        size_t rl = sizeof(rec);
        ok = EVP_PKEY_verify_recover_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_verify_recover(ctx, rec, &rl, sig, sig_len) == 1 && rl == der_len &&
             CRYPTO_memcmp(rec, der, rl) == 0;
    } else if (ctx != NULL) {
        ok = der_len > 0 && EVP_PKEY_verify_init(ctx) == 1 && EVP_PKEY_verify(ctx, der, der_len, hash, hl) == 1;
    }
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    if (!ok) {
        guardian_error(LOG, "refused: the base key does not match the production CA certificate of %s/%s r%u",
                       is->cb.oem_id, is->cb.product_id, is->cb.release);
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    return CKR_OK;
}

/* ---- the issuer cache ------------------------------------------------------------------- */

static void issuer_free(struct issuer *is)
{
    if (is == NULL)
        return;
    guardian_cert_issuer_free(&is->cb);
    pthread_cond_destroy(&is->refilled);
    pthread_mutex_destroy(&is->lock);
    OPENSSL_free(is);
}

/* A forked child starts without the parent's reservations (they are the
 * parent's to use or give back) and without its cache. */
static void cache_check_pid_locked(void)
{
    pid_t pid = getpid();
    if (cache_pid == pid)
        return;
    if (cache_pid != 0)
        n_issuers = 0; /* the parent's memory: left alone, not freed twice */
    cache_pid = pid;
}

/* The pthread_atfork child handler (through the registry): cache_lock may
 * have been held by another parent thread, and so may each issuer's lock
 * (take_serial holds it across a reservation); the child drops the parent's
 * issuers, as cache_check_pid_locked would, and never takes those. */
static void derive_atfork_child(void)
{
    pthread_mutex_init(&cache_lock, NULL);
    n_issuers = 0; /* the parent's memory: left alone, not freed twice */
}

static CK_RV issuer_load(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                         struct issuer **out)
{
    struct guardian_package_material m;
    struct issuer *is;
    char err[256] = "";
    CK_RV rv = guardian_store_package_material(st, package_id, &m);

    if (rv == CKR_GUARDIAN_PRODUCT_UNKNOWN) {
        guardian_error(LOG, "refused: the base key's CKA_ID names no imported package");
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    if (rv != CKR_OK)
        return rv;
    is = OPENSSL_zalloc(sizeof(*is));
    if (is == NULL) {
        guardian_store_package_material_free(&m);
        return CKR_HOST_MEMORY;
    }
    pthread_mutex_init(&is->lock, NULL);
    pthread_cond_init(&is->refilled, NULL);
    if (!guardian_cert_issuer_init(&is->cb, package_id, m.oem_id, m.product_id, m.release_version,
                                   m.cert_template, m.cert_template_len, m.ca_cert, m.ca_cert_len, err,
                                   sizeof(err))) {
        guardian_error(LOG, "package %s/%s r%u cannot issue certificates: %s", m.oem_id, m.product_id,
                       m.release_version, err);
        guardian_store_package_material_free(&m);
        issuer_free(is);
        return CKR_FUNCTION_FAILED;
    }
    is->not_after = m.not_after;
    is->block = 1;
    snprintf(is->label, sizeof(is->label), "guardian:%s/%s/r%u:production-ca", m.oem_id, m.product_id,
             m.release_version);
    snprintf(is->made_label, sizeof(is->made_label), GUARDIAN_CA_KEY_LABEL_FMT, m.oem_id, m.product_id);
    guardian_store_package_material_free(&m);
    *out = is;
    return CKR_OK;
}

static CK_RV issuer_get(struct guardian_store *st, const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN],
                        struct issuer **out)
{
    struct issuer *is = NULL;
    CK_RV rv;

    pthread_mutex_lock(&cache_lock);
    cache_check_pid_locked();
    for (size_t i = 0; i < n_issuers; i++)
        if (memcmp(issuers[i]->cb.package_id, package_id, GUARDIAN_PACKAGE_ID_LEN) == 0) {
            *out = issuers[i];
            pthread_mutex_unlock(&cache_lock);
            return CKR_OK;
        }
    /* Built under the lock: once per package per process. */
    if (n_issuers == MAX_ISSUERS) {
        rv = CKR_HOST_MEMORY;
        guardian_error(LOG, "more than %d packages used in one process", MAX_ISSUERS);
    } else {
        rv = issuer_load(st, package_id, &is);
        if (rv == CKR_OK)
            issuers[n_issuers++] = is;
    }
    pthread_mutex_unlock(&cache_lock);
    *out = is;
    return rv;
}

/* The issuer whose proven key `key` is, or NULL.  The hot path: SoftHSMv2
 * re-reads a token object's file for every attribute read (44-68 us here), so
 * a key proven once is not asked for its attributes again. */
static struct issuer *proven_issuer(CK_OBJECT_HANDLE key)
{
    struct issuer *found = NULL;
    pthread_mutex_lock(&cache_lock);
    cache_check_pid_locked();
    for (size_t i = 0; i < n_issuers && found == NULL; i++)
        if (issuers[i]->proven_key == key)
            found = issuers[i];
    pthread_mutex_unlock(&cache_lock);
    return found;
}

static void derive_forget(CK_OBJECT_HANDLE h)
{
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < n_issuers; i++)
        if (h == CK_INVALID_HANDLE || issuers[i]->proven_key == h)
            issuers[i]->proven_key = CK_INVALID_HANDLE;
    pthread_mutex_unlock(&cache_lock);
}

/* The base key: a private key whose CKA_ID is a package ID and whose label is
 * that package's production CA label, proven by signature on first use. */
static CK_RV base_key_issuer(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE key, struct issuer **out)
{
    CK_OBJECT_CLASS cls = 0;
    CK_BYTE id[GUARDIAN_PACKAGE_ID_LEN + 1];
    char label[sizeof(((struct issuer *)0)->label)];
    CK_ATTRIBUTE a[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_ID, id, sizeof(id)},
        {CKA_LABEL, label, sizeof(label) - 1},
    };
    struct issuer *is;
    CK_OBJECT_HANDLE proven;
    CK_RV rv;

    if (guardian_is_module_object(key)) {
        guardian_error(LOG, "refused: the base key is a package or certificate object, not a key");
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    rv = be->C_GetAttributeValue(session, key, a, 3);

    if (rv == CKR_OBJECT_HANDLE_INVALID)
        return CKR_KEY_HANDLE_INVALID;
    if ((rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) || cls != CKO_PRIVATE_KEY ||
        a[1].ulValueLen != GUARDIAN_PACKAGE_ID_LEN || a[2].ulValueLen == (CK_ULONG)-1) {
        if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL && rv != CKR_ATTRIBUTE_TYPE_INVALID)
            return rv;
        guardian_error(LOG, "refused: the base key is not the production CA key of an imported package");
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    label[a[2].ulValueLen] = '\0';
    rv = issuer_get(st, id, &is);
    /* A key whose package the store does not know: a store behind the
     * token's anchor (deleted, restored, redirected) says so by name. */
    if (rv == CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY && guardian_anchor_check(be, session, st) == CKR_GUARDIAN_STATE_ROLLBACK)
        return CKR_GUARDIAN_STATE_ROLLBACK;
    if (rv != CKR_OK)
        return rv;
    if (strcmp(label, is->label) != 0 && strcmp(label, is->made_label) != 0) {
        guardian_error(LOG, "refused: the base key is labelled \"%s\", not %s's production CA key \"%s\"", label,
                       is->cb.product_id, is->label);
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    pthread_mutex_lock(&cache_lock);
    proven = is->proven_key;
    pthread_mutex_unlock(&cache_lock);
    if (proven != key) {
        rv = prove_key(be, session, key, is);
        if (rv != CKR_OK)
            return rv;
        pthread_mutex_lock(&cache_lock);
        is->proven_key = key;
        pthread_mutex_unlock(&cache_lock);
    }
    *out = is;
    return CKR_OK;
}

/* ---- units ----------------------------------------------------------------------------------- */

/* One reservation of is->block units: checked against the token's anchor,
 * committed (FULL durability), and the anchor moved up to it, before any of
 * its units may be used.  Called without is->lock: the store and the backend
 * take their time (a FULL commit folding the last block's ISSUE records, a
 * token object written: ~20 ms per 1,024 units here), and the other threads
 * go on issuing from the block in hand meanwhile. */
static CK_RV reserve(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st, struct issuer *is,
                     uint64_t want, int64_t now, uint64_t *first, uint64_t *got)
{
    /* The store must not be behind the token's anchor (a restored backup
     * would grant these units and serials again); once the block is
     * committed, the anchor moves up to it before any unit is used. */
    CK_RV rv = guardian_anchor_check(be, session, st);
    if (rv == CKR_OK)
        rv = guardian_store_reserve_block(st, is->cb.oem_id, is->cb.product_id, is->cb.package_id, now, want, first,
                                          got);
    if (rv == CKR_OK && (rv = guardian_anchor_update(be, session, st)) != CKR_OK) {
        /* Committed but not anchored: give the block back rather than
         * use units a restored backup (or another store) could grant
         * again. */
        for (uint64_t u = *first; u < *first + *got; u++)
            guardian_store_release(st, is->cb.oem_id, is->cb.product_id, u);
        if (rv != CKR_GUARDIAN_STATE_ROLLBACK && rv != CKR_GUARDIAN_STORE_UNREACHABLE)
            rv = CKR_GUARDIAN_STORE_FAILED; /* (a state server gone stays what it is: the line resumes) */
    }
    return rv;
}

/* One serial from this process's reserved block, reserving more (FULL
 * durability) when it is used up: 1, 2, 4, ... BLOCK_MAX units at a time, so
 * a first article reserves one unit and a long run one commit per 1,024.
 * From blocks of EARLY_MIN units on, the next block is reserved as soon as
 * the one in hand is started, by the thread that took its first serial, and
 * kept as the spare: the other threads go on issuing meanwhile, and a thread
 * waits for a reservation only when both blocks are used up.  (Reserved when
 * half the block was left, the spare was late once or twice per second on
 * this loaded VM, where a reservation takes 20-100 ms and 1,024 units last
 * 60 ms at two threads.) */
static CK_RV take_serial(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st,
                         struct issuer *is, int64_t now, uint64_t *serial)
{
    uint64_t first = 0, got = 0, want;
    bool have = false, early = false;
    CK_RV rv;

    pthread_mutex_lock(&is->lock);
    for (;;) {
        if (is->next == is->end && is->spare_count > 0) {
            is->next = is->spare_first;
            is->end = is->spare_first + is->spare_count;
            is->spare_count = 0;
        }
        if (is->next < is->end) {
            *serial = is->next++;
            have = true;
            early = !is->refilling && !is->early_failed && is->spare_count == 0 && is->block >= 2 * EARLY_MIN;
            break;
        }
        if (!is->refilling)
            break; /* nothing left and no one reserving: this call reserves */
        pthread_cond_wait(&is->refilled, &is->lock);
    }
    if (have && !early) {
        pthread_mutex_unlock(&is->lock);
        return CKR_OK;
    }
    is->refilling = true;
    want = is->block;
    pthread_mutex_unlock(&is->lock);

    rv = reserve(be, session, st, is, want, now, &first, &got);

    pthread_mutex_lock(&is->lock);
    is->refilling = false;
    if (rv == CKR_OK) {
        is->early_failed = false;
        if (is->block < BLOCK_MAX)
            is->block *= 2;
        if (have) {
            is->spare_first = first;
            is->spare_count = got;
        } else {
            *serial = first;
            is->next = first + 1;
            is->end = first + got;
        }
    } else if (have) {
        /* This call has its serial; the refusal (quota exhausted, a
         * superseded release, a store behind the anchor) is the answer of
         * the reservation made when the block in hand is used up. */
        is->early_failed = true;
        rv = CKR_OK;
    }
    pthread_cond_broadcast(&is->refilled);
    pthread_mutex_unlock(&is->lock);
    return rv;
}

/* Give back the unused part of each block (C_Finalize). */
static void derive_finalize(struct guardian_store *st)
{
    pthread_mutex_lock(&cache_lock);
    cache_check_pid_locked();
    for (size_t i = 0; i < n_issuers; i++) {
        struct issuer *is = issuers[i];
        uint64_t unused = is->end - is->next + is->spare_count, given = 0;
        for (; st != NULL && is->next < is->end; is->next++, given++)
            if (guardian_store_release(st, is->cb.oem_id, is->cb.product_id, is->next) != CKR_OK)
                break; /* logged; the rest stay reserved, not issued */
        for (; st != NULL && is->next == is->end && is->spare_count > 0; is->spare_first++, is->spare_count--, given++)
            if (guardian_store_release(st, is->cb.oem_id, is->cb.product_id, is->spare_first) != CKR_OK)
                break;
        if (unused > 0)
            guardian_info(LOG, "%s/%s: %llu reserved units given back", is->cb.oem_id, is->cb.product_id,
                          (unsigned long long)given);
        issuer_free(is);
        issuers[i] = NULL;
    }
    n_issuers = 0;
    pthread_mutex_unlock(&cache_lock);
}

/* ---- the mechanism ----------------------------------------------------------------------------- */

/* The certificate object's values: the certificate, its slices, and the
 * label and ID from the template or the defaults. */
static CK_RV object_values(const struct out_template *o, const uint8_t *cert, size_t cert_len, const uint8_t ski[20],
                           const char *default_label, struct guardian_cert_object_value *v)
{
    struct guardian_cert_slices sl;

    if (!guardian_cert_slices(cert, cert_len, &sl))
        return CKR_GENERAL_ERROR;
    memset(v, 0, sizeof(*v));
    v->der = cert, v->der_len = cert_len;
    v->subject = sl.subject, v->subject_len = sl.subject_len;
    v->issuer = sl.issuer, v->issuer_len = sl.issuer_len;
    v->serial = sl.serial, v->serial_len = sl.serial_len;
    v->id = o->has_id ? o->id : ski;
    v->id_len = o->has_id ? o->id_len : 20;
    v->label = o->has_label ? o->label : default_label;
    return CKR_OK;
}

/* A token certificate: the backend's object, created only once the ISSUE
 * record is written (a backend has no hidden objects). */
static CK_RV token_object_create(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session,
                                 const struct guardian_cert_object_value *v, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_VALUE, (void *)v->der, v->der_len},
        {CKA_SUBJECT, (void *)v->subject, v->subject_len},
        {CKA_ISSUER, (void *)v->issuer, v->issuer_len},
        {CKA_SERIAL_NUMBER, (void *)v->serial, v->serial_len},
        {CKA_ID, (void *)v->id, v->id_len},
        {CKA_LABEL, (void *)v->label, strlen(v->label)},
    };
    return be->C_CreateObject(session, t, sizeof(t) / sizeof(t[0]), out);
}

/* The output's template, and the session it needs: a token certificate is
 * refused in a read-only session before a unit is spent (its object is made
 * only after the ISSUE record, when a refusal would leave a recorded
 * certificate without its object).  The label and ID may not be the
 * Guardian's marks (policy.c): a token certificate with CKA_ID
 * "guardian-identity" would be taken for the Guardian's own. */
static CK_RV check_output(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, const CK_ATTRIBUTE *templ,
                          CK_ULONG count, const char *function, struct out_template *o)
{
    CK_SESSION_INFO si;
    CK_RV rv = check_template(templ, count, o);

    if (rv != CKR_OK)
        return rv;
    rv = guardian_policy_template(templ, count, function);
    if (rv != CKR_OK || !o->token)
        return rv;
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK)
        return rv;
    if (!(si.flags & CKF_RW_SESSION)) {
        guardian_error(LOG, "refused: a token certificate (CKA_TOKEN TRUE) needs a read/write session");
        return CKR_SESSION_READ_ONLY;
    }
    return CKR_OK;
}

/* The device's certificate is the one issued before (a re-ask with the same
 * key): a new object of the same DER, nothing spent, nothing recorded. */
static CK_RV existing_certificate(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, const struct device_in *dev,
                                  const struct out_template *o, const struct issuer *is,
                                  const struct guardian_device_cert *prev, CK_OBJECT_HANDLE *out)
{
    struct guardian_cert_object_value v;
    struct guardian_cert_object *pending = NULL;
    char default_label[LABEL_MAX + 1];
    uint8_t ski[20];
    CK_RV rv;

    /* The subject key identifier the certificate carries, as guardian_tbs_build makes it. */
    SHA1(dev->key.key, dev->key.key_len, ski);
    snprintf(default_label, sizeof(default_label), "device:%s/%s:%s", is->cb.oem_id, is->cb.product_id, dev->text);
    rv = object_values(o, prev->cert, prev->cert_len, ski, default_label, &v);
    if (rv != CKR_OK)
        return rv;
    if (o->token)
        rv = token_object_create(be, session, &v, out);
    else if ((rv = guardian_cert_object_prepare(session, &v, &pending)) == CKR_OK)
        rv = guardian_cert_object_publish(pending, out);
    if (rv == CKR_OK)
        guardian_info(LOG, "%s/%s: device %s asked again with the key of its certificate (serial %llu): the same "
                           "certificate returned, nothing spent",
                      is->cb.oem_id, is->cb.product_id, dev->text, (unsigned long long)prev->serial);
    return rv;
}

/* Whether a device already holds a certificate of `is`'s product (`prev`,
 * found by the store's device index) for the key it presents now. */
static bool same_device_key(const struct device_in *dev, const struct guardian_device_cert *prev)
{
    uint8_t h[32];
    unsigned int hl = 0;

    return prev->has_spki && prev->cert != NULL &&
           EVP_Digest(dev->key.spki, dev->key.spki_len, h, &hl, EVP_sha256(), NULL) == 1 && hl == sizeof(h) &&
           memcmp(h, prev->spki_hash, sizeof(h)) == 0;
}

static void refuse_other_key(const struct device_in *dev, const struct issuer *is, uint64_t serial)
{
    guardian_error(LOG, "refused: device %s of %s/%s already holds a certificate (serial %llu) for another public "
                        "key: nothing spent; to issue a new one for the new key, ask with CKA_GUARDIAN_REISSUE "
                        "TRUE (guardianctl provision --reissue): it is recorded as a re-issue",
                   dev->text, is->cb.oem_id, is->cb.product_id, (unsigned long long)serial);
}

static CK_RV issue_new_certificate(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                   const struct device_in *dev, const struct out_template *o, struct issuer *is,
                                   CK_OBJECT_HANDLE key, uint64_t old_serial, CK_OBJECT_HANDLE *out);

/* One certificate for the checked device `dev`, signed with `key`, the proven
 * production CA key of `is`: the one code path of the mechanism and the
 * request from the CA key check to the handle.  The device's claim in the
 * store's index is held throughout, so no other thread of this process
 * issues for it meanwhile: a device that holds a certificate for this key
 * gets it again (nothing spent); one that holds a certificate for another
 * key is refused (CKR_GUARDIAN_DEVICE_ALREADY_ISSUED) unless o->reissue. */
static CK_RV issue_certificate(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                               const struct device_in *dev, const struct out_template *o, struct issuer *is,
                               CK_OBJECT_HANDLE key, CK_OBJECT_HANDLE *out)
{
    struct guardian_device_cert prev;
    bool found = false;
    CK_RV rv;

    if (dev->key.key_len == is->cb.ca_key_len && memcmp(dev->key.key, is->cb.ca_key, dev->key.key_len) == 0) {
        guardian_error(LOG, "refused: device %s presents the production CA's own public key", dev->text);
        return CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY;
    }
    rv = guardian_store_device_claim(st, is->cb.oem_id, is->cb.product_id, dev->id, dev->id_len, &prev, &found);
    if (rv != CKR_OK)
        return rv;
    if (found && same_device_key(dev, &prev))
        rv = existing_certificate(be, session, dev, o, is, &prev, out);
    else if (found && !o->reissue) {
        refuse_other_key(dev, is, prev.serial);
        rv = CKR_GUARDIAN_DEVICE_ALREADY_ISSUED;
    } else
        rv = issue_new_certificate(be, st, session, dev, o, is, key, found ? prev.serial : 0, out);
    guardian_store_device_unclaim(st, is->cb.oem_id, is->cb.product_id, dev->id, dev->id_len);
    guardian_store_device_cert_free(&prev);
    return rv;
}

/* A new certificate: a unit spent, an ISSUE record (and, replacing serial
 * old_serial when that is not 0, a REISSUE record). */
static CK_RV issue_new_certificate(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                   const struct device_in *dev, const struct out_template *o, struct issuer *is,
                                   CK_OBJECT_HANDLE key, uint64_t old_serial, CK_OBJECT_HANDLE *out)
{
    struct guardian_device d;
    uint8_t buf[GUARDIAN_CERT_BUF], hash[EVP_MAX_MD_SIZE], sig[1024], ski[20];
    char default_label[LABEL_MAX + 1];
    unsigned int hl = 0;
    CK_ULONG sig_len = sizeof(sig);
    struct guardian_cert_object_value v;
    struct guardian_cert_object *pending = NULL;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint64_t serial = 0;
    int64_t now = (int64_t)time(NULL);
    size_t tbs_len, cert_len;
    CK_RV rv;

    if (is->not_after < now) {
        guardian_error(LOG, "refused: %s/%s r%u: the allowance expired", is->cb.oem_id, is->cb.product_id,
                       is->cb.release);
        return CKR_GUARDIAN_PACKAGE_EXPIRED;
    }

    {
        /* A subject the pattern cannot write faithfully (a PrintableString
         * value with '_') is refused before a unit is spent. */
        char why[200];
        if (!guardian_subject_check(&is->cb, dev->text, why, sizeof(why))) {
            guardian_error(LOG, "refused: device %s of %s/%s: %s", dev->text, is->cb.oem_id, is->cb.product_id, why);
            return CKR_GUARDIAN_DEVICE_ID_INVALID;
        }
    }
    rv = take_serial(be, session, st, is, now, &serial);
    if (rv != CKR_OK) {
        if (rv == CKR_GUARDIAN_QUOTA_EXHAUSTED)
            guardian_error(LOG, "refused: %s/%s: all authorised units are used (quota exhausted)", is->cb.oem_id,
                           is->cb.product_id);
        else if (rv == CKR_GUARDIAN_PACKAGE_SUPERSEDED)
            guardian_error(LOG, "refused: %s/%s r%u was superseded by a newer release: use its CA key",
                           is->cb.oem_id, is->cb.product_id, is->cb.release);
        else if (rv == CKR_GUARDIAN_PACKAGE_EXPIRED)
            guardian_error(LOG, "refused: %s/%s r%u: the allowance expired", is->cb.oem_id, is->cb.product_id,
                           is->cb.release);
        return rv;
    }

    d.id = dev->id;
    d.id_len = dev->id_len;
    d.id_text = dev->text;
    d.key = &dev->key;
    tbs_len = guardian_tbs_build(&is->cb, serial, now, &d, buf, sizeof(buf), ski);
    if (tbs_len == 0 || EVP_Digest(buf, tbs_len, hash, &hl, is->cb.md, NULL) != 1) {
        rv = CKR_GENERAL_ERROR;
        goto unused;
    }
    rv = token_sign(be, session, key, &is->cb, hash, hl, sig, &sig_len);
    if (rv != CKR_OK) {
        if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID)
            derive_forget(key);
        guardian_error(LOG, "the backend refused to sign with the production CA key: %s",
                       guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "vendor CKR");
        goto unused;
    }
    cert_len = guardian_cert_finish(&is->cb, buf, sizeof(buf), tbs_len, sig, sig_len);
    if (cert_len == 0) {
        rv = CKR_GENERAL_ERROR;
        goto unused;
    }

    snprintf(default_label, sizeof(default_label), "device:%s/%s:%s", is->cb.oem_id, is->cb.product_id, dev->text);
    rv = object_values(o, buf, cert_len, ski, default_label, &v);
    if (rv != CKR_OK)
        goto unused;
    /* A session object is made now, hidden, so that running out of objects
     * or memory is found before the record; no call can see it yet. */
    if (!o->token) {
        rv = guardian_cert_object_prepare(session, &v, &pending);
        if (rv != CKR_OK)
            goto unused;
    }
    /* Recorded before anyone can see the certificate: no other thread finds
     * or reads the object, and the caller gets no handle, before its ISSUE
     * record is written. */
    if (old_serial != 0)
        rv = guardian_store_reissue(st, is->cb.oem_id, is->cb.product_id, serial, dev->id, dev->id_len, buf, cert_len,
                                    old_serial);
    else
        rv = guardian_store_issue(st, is->cb.oem_id, is->cb.product_id, serial, dev->id, dev->id_len, buf, cert_len);
    if (rv != CKR_OK) {
        guardian_cert_object_discard(pending);
        /* The serial stays reserved, not issued: whether the record reached
         * the disk is unknown, so it is not handed out again. */
        return rv;
    }
    if (o->token)
        rv = token_object_create(be, session, &v, &h);
    else
        rv = guardian_cert_object_publish(pending, &h);
    if (rv != CKR_OK) {
        /* Recorded as issued (the certificate is in the audit trail), but no
         * object holds it: the serial is spent. */
        guardian_error(LOG, "%s/%s serial %llu for device %s is recorded as issued, but its object could not be "
                            "created: %s",
                       is->cb.oem_id, is->cb.product_id, (unsigned long long)serial, dev->text,
                       guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "vendor CKR");
        return rv;
    }
    if (old_serial != 0)
        guardian_info(LOG, "re-issued: %s/%s device %s: serial %llu for its new key replaces serial %llu (recorded)",
                      is->cb.oem_id, is->cb.product_id, dev->text, (unsigned long long)serial,
                      (unsigned long long)old_serial);
    guardian_debug(LOG, "issued %s/%s serial %llu to %s", is->cb.oem_id, is->cb.product_id,
                   (unsigned long long)serial, dev->text);
    *out = h;
    return CKR_OK;

unused:
    /* No certificate exists: the serial goes back to this process's block. */
    pthread_mutex_lock(&is->lock);
    if (is->next == serial + 1)
        is->next = serial;
    pthread_mutex_unlock(&is->lock);
    return rv;
}

static CK_RV derive_device_cert(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                CK_MECHANISM *mech, CK_OBJECT_HANDLE base_key, CK_ATTRIBUTE *templ, CK_ULONG count,
                                CK_OBJECT_HANDLE *out)
{
    struct device_in dev;
    struct out_template o;
    struct issuer *is = NULL;
    CK_RV rv;

    if (out == NULL || mech == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = check_params(mech, &dev);
    if (rv != CKR_OK)
        return rv;
    rv = check_output(be, session, templ, count, "C_DeriveKey", &o);
    if (rv != CKR_OK)
        return rv;
    if (base_key == CK_INVALID_HANDLE || (is = proven_issuer(base_key)) == NULL) {
        rv = base_key_issuer(be, st, session, base_key, &is);
        if (rv != CKR_OK)
            return rv;
    }
    return issue_certificate(be, st, session, &dev, &o, is, base_key, out);
}

/* ---- the request ------------------------------------------------------------------------------- */

/* The package a request names: CKA_GUARDIAN_PACKAGE_ID, or the installed
 * release of CKA_GUARDIAN_OEM_ID + CKA_GUARDIAN_PRODUCT_ID (one or the other),
 * read and checked before anything else. */
struct package_name {
    bool by_id;
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    char oem_id[GUARDIAN_ID_MAX + 1], product_id[GUARDIAN_ID_MAX + 1];
};

static CK_RV request_package_name(const struct guardian_request *rq, struct package_name *pn)
{
    const CK_ATTRIBUTE *pid, *oem, *product;
    CK_RV rv;

    if ((rv = guardian_request_bytes(rq, CKA_GUARDIAN_PACKAGE_ID, false, &pid)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_OEM_ID, false, &oem)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_PRODUCT_ID, false, &product)) != CKR_OK)
        return rv;
    if (pid != NULL ? oem != NULL || product != NULL : oem == NULL || product == NULL) {
        guardian_error(LOG, "refused: the request names its package by CKA_GUARDIAN_PACKAGE_ID, or by "
                            "CKA_GUARDIAN_OEM_ID and CKA_GUARDIAN_PRODUCT_ID (the installed release), not %s",
                       pid != NULL ? "both ways" : oem != NULL || product != NULL ? "half of one" : "at all");
        return CKR_GUARDIAN_REQUEST_INVALID;
    }
    pn->by_id = pid != NULL;
    if (pn->by_id) {
        if (pid->ulValueLen != GUARDIAN_PACKAGE_ID_LEN) {
            guardian_error(LOG, "refused: CKA_GUARDIAN_PACKAGE_ID has %d bytes, not %lu", GUARDIAN_PACKAGE_ID_LEN,
                           (unsigned long)pid->ulValueLen);
            return CKR_GUARDIAN_REQUEST_INVALID;
        }
        memcpy(pn->package_id, pid->pValue, GUARDIAN_PACKAGE_ID_LEN);
        return CKR_OK;
    }
    if ((rv = guardian_request_id(rq, CKA_GUARDIAN_OEM_ID, "CKA_GUARDIAN_OEM_ID", pn->oem_id)) != CKR_OK)
        return rv;
    return guardian_request_id(rq, CKA_GUARDIAN_PRODUCT_ID, "CKA_GUARDIAN_PRODUCT_ID", pn->product_id);
}

/* The package ID of a product's installed release, from the store. */
static CK_RV installed_package(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                               struct package_name *pn)
{
    struct guardian_product p;
    CK_RV rv = guardian_store_product_get(st, pn->oem_id, pn->product_id, &p);

    if (rv == CKR_GUARDIAN_PRODUCT_UNKNOWN) {
        /* A store behind the token's anchor knows no product: say so by name. */
        if (guardian_anchor_check(be, session, st) == CKR_GUARDIAN_STATE_ROLLBACK)
            return CKR_GUARDIAN_STATE_ROLLBACK;
        guardian_error(LOG, "refused: no release of %s/%s is installed", pn->oem_id, pn->product_id);
    }
    if (rv == CKR_OK)
        memcpy(pn->package_id, p.package_id, GUARDIAN_PACKAGE_ID_LEN);
    return rv;
}

/* The production CA key of the package: the key proven in this process, or
 * the private key the token holds with the package's CKA_ID and production CA
 * label, which then passes exactly the mechanism's base key checks (class,
 * CKA_ID, label, a test signature). */
static CK_RV package_key_issuer(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                const uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN], struct issuer **out,
                                CK_OBJECT_HANDLE *key)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_OBJECT_HANDLE found[8];
    CK_ULONG n = 0;
    struct issuer *is;
    CK_RV rv = issuer_get(st, package_id, &is);

    if (rv == CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY && guardian_anchor_check(be, session, st) == CKR_GUARDIAN_STATE_ROLLBACK)
        return CKR_GUARDIAN_STATE_ROLLBACK;
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&cache_lock);
    *key = is->proven_key;
    pthread_mutex_unlock(&cache_lock);
    if (*key != CK_INVALID_HANDLE) {
        *out = is;
        return CKR_OK;
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_ID, (void *)package_id, GUARDIAN_PACKAGE_ID_LEN},
                            {CKA_LABEL, is->label, (CK_ULONG)strlen(is->label)}};
        rv = guardian_backend_find(be, session, t, 3, found, sizeof(found) / sizeof(found[0]), &n);
        /* A package of format version 2: the key the Guardian made itself
         * (same CKA_ID rule, its own label). */
        if (rv == CKR_OK && n == 0) {
            t[2].pValue = is->made_label;
            t[2].ulValueLen = (CK_ULONG)strlen(is->made_label);
            rv = guardian_backend_find(be, session, t, 3, found, sizeof(found) / sizeof(found[0]), &n);
        }
    }
    if (rv != CKR_OK)
        return rv;
    if (n == 0) {
        guardian_error(LOG, "refused: the token holds no production CA key \"%s\"", is->label);
        return CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    }
    /* More than one is an object made at the backend directly under the
     * Guardian's label: the one that proves itself is the CA key. */
    rv = CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY;
    for (CK_ULONG i = 0; i < n && rv != CKR_OK; i++) {
        rv = base_key_issuer(be, st, session, found[i], out);
        *key = found[i];
    }
    return rv;
}

/* CKG_GUARDIAN_REQ_DEVICE_CERT: the derive mechanism's parameter as
 * attributes, its template's CKA_TOKEN, CKA_LABEL and CKA_ID as the request's,
 * the base key found here from the package the request names. */
static CK_RV device_cert_request(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                 const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    static const CK_ATTRIBUTE_TYPE output_types[] = {CKA_TOKEN, CKA_LABEL, CKA_ID, CKA_GUARDIAN_REISSUE};
    CK_ATTRIBUTE output[sizeof(output_types) / sizeof(output_types[0])];
    CK_ULONG n_output = 0;
    const CK_ATTRIBUTE *id, *spki;
    struct device_arg a = {CKG_GUARDIAN_DEVICE_ID_TEXT, NULL, 0, NULL, 0};
    struct device_in dev;
    struct out_template o;
    struct package_name pn;
    struct issuer *is = NULL;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    CK_RV rv;

    /* Every attribute read and its type checked (CKR_GUARDIAN_REQUEST_INVALID)
     * before the mechanism's own checks run on the values. */
    if ((rv = request_package_name(rq, &pn)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_DEVICE_ID, true, &id)) != CKR_OK ||
        (rv = guardian_request_ulong(rq, CKA_GUARDIAN_DEVICE_ID_FORMAT, false, &a.format)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_DEVICE_SPKI, true, &spki)) != CKR_OK)
        return rv;
    a.id = id->pValue;
    a.id_len = id->ulValueLen;
    a.spki = spki->pValue;
    a.spki_len = spki->ulValueLen;
    rv = check_device(&a, &dev);
    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < sizeof(output_types) / sizeof(output_types[0]); i++) {
        const CK_ATTRIBUTE *t = guardian_request_attr(rq, output_types[i]);
        if (t != NULL)
            output[n_output++] = *t;
    }
    rv = check_output(be, session, output, n_output, "C_CreateObject", &o);
    if (rv != CKR_OK)
        return rv;
    if (!pn.by_id && (rv = installed_package(be, st, session, &pn)) != CKR_OK)
        return rv;
    rv = package_key_issuer(be, st, session, pn.package_id, &is, &key);
    if (rv != CKR_OK)
        return rv;
    return issue_certificate(be, st, session, &dev, &o, is, key, out);
}

/* ---- the batch request ----------------------------------------------------------------------- */

/* CKG_GUARDIAN_REQ_DEVICE_CERTS: the devices of CKA_GUARDIAN_DEVICE_BATCH,
 * every one checked as the single request checks its device (and against the
 * CA key) before the first is issued; then each issued by
 * issue_certificate(), in order, as a session certificate object whose DER
 * is copied into the result and which is then destroyed.  The first failure
 * stops the batch: the entries before it stay issued (their ISSUE records are
 * written), it has its CKR, the ones after it CKR_FUNCTION_CANCELED (not
 * tried, nothing spent). */
static CK_RV device_certs_request(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                                  const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    struct guardian_batch_entry e[GUARDIAN_DEVICE_BATCH_MAX];
    const CK_ATTRIBUTE *batch;
    struct device_in *dev = NULL;
    struct out_template o;
    struct package_name pn;
    struct issuer *is = NULL;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    uint8_t *copy = NULL, *result = NULL;
    size_t n = 0, used = 0, cap, issued = 0;
    const char *why = NULL;
    CK_RV rv, first = CKR_OK;

    if ((rv = request_package_name(rq, &pn)) != CKR_OK ||
        (rv = guardian_request_bytes(rq, CKA_GUARDIAN_DEVICE_BATCH, true, &batch)) != CKR_OK)
        return rv;
    /* Copied once: what is checked is what is issued, whatever the caller's
     * other threads do to its buffer meanwhile. */
    copy = malloc(batch->ulValueLen > 0 ? batch->ulValueLen : 1);
    if (copy == NULL)
        return CKR_HOST_MEMORY;
    if (batch->ulValueLen > 0)
        memcpy(copy, batch->pValue, batch->ulValueLen);
    if (guardian_device_batch_parse(copy, batch->ulValueLen, e, &n, &why) != 0) {
        guardian_error(LOG, "refused: CKA_GUARDIAN_DEVICE_BATCH: %s", why);
        rv = CKR_GUARDIAN_REQUEST_INVALID;
        goto out;
    }
    dev = malloc(n * sizeof(*dev));
    if (dev == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        struct device_arg a = {e[i].format, e[i].id, e[i].id_len, e[i].spki, e[i].spki_len};
        rv = check_device(&a, &dev[i]);
        if (rv != CKR_OK) {
            guardian_error(LOG, "refused: the batch's entry %zu (of %zu) is not valid: nothing issued", i, n);
            goto out;
        }
    }
    /* The single request's output with no template: a session object
     * (CKA_GUARDIAN_REISSUE as the single request takes it). */
    {
        const CK_ATTRIBUTE *r = guardian_request_attr(rq, CKA_GUARDIAN_REISSUE);
        rv = check_output(be, session, r, r != NULL ? 1 : 0, "C_CreateObject", &o);
    }
    if (rv != CKR_OK)
        goto out;
    if (!pn.by_id && (rv = installed_package(be, st, session, &pn)) != CKR_OK)
        goto out;
    rv = package_key_issuer(be, st, session, pn.package_id, &is, &key);
    if (rv != CKR_OK)
        goto out;
    /* issue_certificate()'s one check of a device that needs the CA: made
     * for all of them here, before anything is spent. */
    for (size_t i = 0; i < n; i++) {
        if (dev[i].key.key_len == is->cb.ca_key_len && memcmp(dev[i].key.key, is->cb.ca_key, dev[i].key.key_len) == 0) {
            guardian_error(LOG, "refused: the batch's entry %zu, device %s, presents the production CA's own public "
                                "key: nothing issued", i, dev[i].text);
            rv = CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY;
            goto out;
        }
        {
            char subject_why[200];
            if (!guardian_subject_check(&is->cb, dev[i].text, subject_why, sizeof(subject_why))) {
                guardian_error(LOG, "refused: the batch's entry %zu, device %s: %s: nothing issued", i, dev[i].text,
                               subject_why);
                rv = CKR_GUARDIAN_DEVICE_ID_INVALID;
                goto out;
            }
        }
        /* A device with a certificate for another key, without a re-issue:
         * refused before anything is spent too (issue_certificate checks it
         * again, holding the device's claim). */
        if (!o.reissue) {
            struct guardian_device_cert prev;
            bool found = false, other;
            rv = guardian_store_device_get(st, is->cb.oem_id, is->cb.product_id, dev[i].id, dev[i].id_len, &prev,
                                           &found);
            other = rv == CKR_OK && found && !same_device_key(&dev[i], &prev);
            if (other)
                refuse_other_key(&dev[i], is, prev.serial);
            guardian_store_device_cert_free(&prev);
            if (other) {
                guardian_error(LOG, "refused: the batch's entry %zu: nothing issued", i);
                rv = CKR_GUARDIAN_DEVICE_ALREADY_ISSUED;
            }
            if (rv != CKR_OK)
                goto out;
        }
    }

    cap = n * (GUARDIAN_DEVICE_BATCH_RESULT_HEADER + GUARDIAN_CERT_BUF);
    result = malloc(cap);
    if (result == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t der[GUARDIAN_CERT_BUF];
        CK_ATTRIBUTE v = {CKA_VALUE, der, sizeof(der)};
        CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

        rv = first != CKR_OK ? CKR_FUNCTION_CANCELED : issue_certificate(be, st, session, &dev[i], &o, is, key, &h);
        if (rv == CKR_OK) {
            rv = guardian_cert_objects_get(be, session, h, &v, 1);
            guardian_cert_objects_destroy(be, session, h);
            if (rv != CKR_OK)
                guardian_error(LOG, "%s/%s: the batch's entry %zu is recorded as issued, but its certificate could "
                                    "not be read back: %s",
                               is->cb.oem_id, is->cb.product_id, i, guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "vendor CKR");
        }
        if (rv == CKR_OK)
            issued++;
        else if (first == CKR_OK)
            first = rv;
        if (guardian_device_batch_put_result(result, cap, &used, (uint32_t)rv, der, rv == CKR_OK ? v.ulValueLen : 0) !=
            0) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
    }
    if (issued == 0) {
        rv = first; /* the first entry's CKR: nothing was issued */
        goto out;
    }
    if (first != CKR_OK)
        guardian_warn(LOG, "%s/%s: batch of %zu stopped after %zu certificates: %s", is->cb.oem_id, is->cb.product_id,
                      n, issued, guardian_ckr_name(first) ? guardian_ckr_name(first) : "vendor CKR");
    rv = guardian_output_create(be, session, "device-certs", result, used, out);
    if (rv != CKR_OK)
        guardian_error(LOG, "%s/%s: %zu certificates of the batch are recorded as issued, but the result object "
                            "could not be created (the audit trail holds them)",
                       is->cb.oem_id, is->cb.product_id, issued);
out:
    free(result);
    free(dev);
    free(copy);
    return rv;
}

static const CK_ATTRIBUTE_TYPE batch_attributes[] = {
    CKA_GUARDIAN_PACKAGE_ID, CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_DEVICE_BATCH,
    CKA_GUARDIAN_REISSUE,
};

const struct guardian_request_type guardian_request_device_certs = {
    .type = CKG_GUARDIAN_REQ_DEVICE_CERTS,
    .name = "CKG_GUARDIAN_REQ_DEVICE_CERTS",
    .session = GUARDIAN_REQUEST_USER,
    .attributes = batch_attributes,
    .n_attributes = sizeof(batch_attributes) / sizeof(batch_attributes[0]),
    .run = device_certs_request,
};

static const CK_ATTRIBUTE_TYPE request_attributes[] = {
    CKA_GUARDIAN_PACKAGE_ID, CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_DEVICE_ID,
    CKA_GUARDIAN_DEVICE_ID_FORMAT, CKA_GUARDIAN_DEVICE_SPKI, CKA_TOKEN, CKA_LABEL, CKA_ID, CKA_GUARDIAN_REISSUE,
};

const struct guardian_request_type guardian_request_device_cert = {
    .type = CKG_GUARDIAN_REQ_DEVICE_CERT,
    .name = "CKG_GUARDIAN_REQ_DEVICE_CERT",
    .session = GUARDIAN_REQUEST_USER,
    .attributes = request_attributes,
    .n_attributes = sizeof(request_attributes) / sizeof(request_attributes[0]),
    .run = device_cert_request,
};

/* The production CA's signature: ECDSA, or RSA PKCS#1 v1.5 for an RSA CA. */
static const CK_MECHANISM_TYPE signatures[] = {
    CKM_ECDSA,
    CKM_RSA_PKCS,
};

const struct guardian_mech guardian_mech_derive_device_cert = {
    .type = CKM_GUARDIAN_DERIVE_DEVICE_CERT,
    .name = "CKM_GUARDIAN_DERIVE_DEVICE_CERT",
    .info = {.ulMinKeySize = 256, .ulMaxKeySize = 4096, .flags = CKF_DERIVE},
    .requires_one_of = signatures,
    .n_requires_one_of = sizeof(signatures) / sizeof(signatures[0]),
    .selftest = guardian_selftest_derive_device_cert,
    .derive = derive_device_cert,
    .finalize = derive_finalize,
    .forget = derive_forget,
    .atfork_child = derive_atfork_child,
};
