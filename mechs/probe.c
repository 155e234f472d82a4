/*
 * probe.c — CKG_GUARDIAN_REQ_PROBE: which key protections the backend really
 * enforces, found by trying each one, not by reading its mechanism list.
 *
 * Why.  Through the module every Guardian object is refused to standard calls
 * (policy.c).  Someone who holds the backend's own user PIN can load the
 * backend directly and skip the module: what they can then do to the
 * Guardian's keys depends only on what the backend itself enforces.  The probe
 * measures that, so that `guardianctl status` can say it plainly.
 *
 * How.  In a session of its own on the caller's slot (the caller's searches
 * and operations are left alone), through the backend list (no policy), on
 * throwaway SESSION objects labelled GUARDIAN_IMPORT_PREFIX "probe" (so that
 * no standard call through the module may touch them meanwhile), one trial per
 * protection.  Where a refusal could also mean "the backend cannot do this at
 * all", a control runs first with the protection off: if the control fails
 * too, the answer is UNSUPPORTED, not ENFORCED.  Everything made is destroyed
 * on every path; the session's close takes whatever the backend would not
 * destroy (CKA_DESTROYABLE FALSE).
 *
 * The result is an output object (guardian_output_create) whose CKA_VALUE is
 * text, one line per protection:
 *     <name> <ENFORCED|NOT-ENFORCED|UNSUPPORTED> <CKR name> <sentence>
 * where the CKR is what the backend answered to the decisive call, and the
 * sentence says what someone holding the backend PIN could do when the
 * protection is not enforced.  docs/backend-protections.md.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "identity.h"
#include "module.h"
#include "request.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define PROBE_LABEL GUARDIAN_IMPORT_PREFIX "probe"
#define MAX_MADE 64

enum verdict { ENFORCED, NOT_ENFORCED, UNSUPPORTED };

static const char *const verdict_names[] = {"ENFORCED", "NOT-ENFORCED", "UNSUPPORTED"};

struct probe {
    CK_FUNCTION_LIST *be;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE made[MAX_MADE];
    size_t n_made;
    CK_RV fatal; /* a failure that is no answer about a protection: the probe stops */
};

struct result {
    enum verdict v;
    CK_RV rv;
};

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "CKR_VENDOR_DEFINED";
}

/* Codes that say nothing about the protection tried: the session, the token
 * or the host failed. */
static int is_fatal(CK_RV rv)
{
    switch (rv) {
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_USER_NOT_LOGGED_IN:
        return 1;
    default:
        return 0;
    }
}

/* Every backend call of a trial goes through here: a fatal code stops the probe. */
static CK_RV seen(struct probe *p, CK_RV rv)
{
    if (is_fatal(rv) && p->fatal == CKR_OK)
        p->fatal = rv;
    return rv;
}

static void made(struct probe *p, CK_OBJECT_HANDLE h)
{
    guardian_policy_forget(h);
    if (p->n_made < MAX_MADE)
        p->made[p->n_made++] = h;
    /* beyond MAX_MADE (never, with the trials below) the session's close destroys it */
}

static struct result verdict(enum verdict v, CK_RV rv)
{
    struct result r = {v, rv};
    return r;
}

/* ---- makers: session objects, labelled as the Guardian's ---------------------- */

#define MAX_EXTRA 8

/* The template of an AES-256 session key of the probe's, then `extra` (no
 * duplicates of the base): its length, or 0 when `extra` does not fit. */
#define AES_BASE 5
static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE aes_type = CKK_AES;
static CK_ULONG aes_len = 32;

static CK_ULONG aes_template(CK_ATTRIBUTE t[AES_BASE + MAX_EXTRA], const CK_ATTRIBUTE *extra, CK_ULONG n_extra)
{
    const CK_ATTRIBUTE base[AES_BASE] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                                         {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
                                         {CKA_VALUE_LEN, &aes_len, sizeof(aes_len)},
                                         {CKA_TOKEN, &no, sizeof(no)},
                                         {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    if (n_extra > MAX_EXTRA)
        return 0;
    memcpy(t, base, sizeof(base));
    if (n_extra > 0)
        memcpy(t + AES_BASE, extra, n_extra * sizeof(*extra));
    return AES_BASE + n_extra;
}

/* An AES-256 session key with the `extra` attributes. */
static CK_RV aes_key(struct probe *p, const CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[AES_BASE + MAX_EXTRA];
    CK_ULONG n = aes_template(t, extra, n_extra);
    CK_RV rv;
    *out = CK_INVALID_HANDLE;
    if (n == 0)
        return CKR_GENERAL_ERROR;
    rv = seen(p, p->be->C_GenerateKey(p->s, &gen, t, n, out));
    if (rv == CKR_OK)
        made(p, *out);
    return rv;
}

/* An EC P-256 session key pair; `extra` goes to the private key. */
static CK_RV ec_key(struct probe *p, const CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_OBJECT_HANDLE *pub,
                    CK_OBJECT_HANDLE *priv)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)},
                            {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_VERIFY, &yes, sizeof(yes)},
                            {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    CK_ATTRIBUTE priv_t[3 + MAX_EXTRA] = {{CKA_TOKEN, &no, sizeof(no)},
                                          {CKA_PRIVATE, &yes, sizeof(yes)},
                                          {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    CK_RV rv;
    *pub = *priv = CK_INVALID_HANDLE;
    if (n_extra > MAX_EXTRA)
        return CKR_GENERAL_ERROR;
    memcpy(priv_t + 3, extra, n_extra * sizeof(*extra));
    rv = seen(p, p->be->C_GenerateKeyPair(p->s, &gen, pub_t, 4, priv_t, 3 + n_extra, pub, priv));
    if (rv == CKR_OK) {
        made(p, *pub);
        made(p, *priv);
    }
    return rv;
}

/* ---- operations ----------------------------------------------------------------- */

static CK_RV read_value(struct probe *p, CK_OBJECT_HANDLE h)
{
    CK_BYTE buf[512];
    CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof(buf)};
    CK_RV rv = seen(p, p->be->C_GetAttributeValue(p->s, h, &a, 1));
    OPENSSL_cleanse(buf, sizeof(buf));
    /* Some backends answer CKR_OK with CK_UNAVAILABLE_INFORMATION. */
    if (rv == CKR_OK && a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        rv = CKR_ATTRIBUTE_SENSITIVE;
    return rv;
}

static CK_RV set_bool(struct probe *p, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_BBOOL value)
{
    CK_ATTRIBUTE a = {type, &value, sizeof(value)};
    return seen(p, p->be->C_SetAttributeValue(p->s, h, &a, 1));
}

static CK_RV get_bool(struct probe *p, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_BBOOL *value)
{
    CK_ATTRIBUTE a = {type, value, sizeof(*value)};
    *value = CK_FALSE;
    return seen(p, p->be->C_GetAttributeValue(p->s, h, &a, 1));
}

static CK_RV set_label(struct probe *p, CK_OBJECT_HANDLE h)
{
    static const char other[] = PROBE_LABEL "-renamed";
    CK_ATTRIBUTE a = {CKA_LABEL, (void *)other, sizeof(other) - 1};
    return seen(p, p->be->C_SetAttributeValue(p->s, h, &a, 1));
}

static CK_RV wrap(struct probe *p, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key, CK_BYTE *out, CK_ULONG *len)
{
    CK_MECHANISM m = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_RV rv = seen(p, p->be->C_WrapKey(p->s, &m, wrapping, key, out, len));
    return rv;
}

/* A copy (recorded for destruction; it keeps the probe's label and is a
 * session object) with the `extra` attributes changed.  SoftHSM wants a
 * template pointer even for no attribute, and refuses any attribute, even an
 * unchanged one, in a copy of a non-modifiable key. */
static CK_RV copy(struct probe *p, CK_OBJECT_HANDLE h, CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[MAX_EXTRA] = {{CKA_TOKEN, &no, sizeof(no)}};
    CK_RV rv;
    *out = CK_INVALID_HANDLE;
    if (n_extra > MAX_EXTRA)
        return CKR_GENERAL_ERROR;
    if (n_extra > 0)
        memcpy(t, extra, n_extra * sizeof(*extra));
    rv = seen(p, p->be->C_CopyObject(p->s, h, t, n_extra, out));
    if (rv == CKR_OK)
        made(p, *out);
    return rv;
}

/* C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA into an AES-256 session key with
 * the `extra` attributes. */
static CK_RV derive_aes(struct probe *p, CK_OBJECT_HANDLE base, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
                        CK_OBJECT_HANDLE *out)
{
    CK_BYTE data[32] = "guardian probe: derive 32 bytes";
    CK_KEY_DERIVATION_STRING_DATA sd = {data, sizeof(data)};
    CK_MECHANISM m = {CKM_AES_ECB_ENCRYPT_DATA, &sd, sizeof(sd)};
    CK_ATTRIBUTE t[AES_BASE + MAX_EXTRA];
    CK_ULONG n = aes_template(t, extra, n_extra);
    CK_RV rv;
    *out = CK_INVALID_HANDLE;
    if (n == 0)
        return CKR_GENERAL_ERROR;
    rv = seen(p, p->be->C_DeriveKey(p->s, &m, base, t, n, out));
    if (rv == CKR_OK)
        made(p, *out);
    return rv;
}

/* ECDH1 (CKD_NULL) of `priv` with the public key `pub` (its own: any point
 * on the curve will do) into a sensitive AES-256 session key. */
static CK_RV derive_ecdh(struct probe *p, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
    CK_BYTE point[160];
    CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
                        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
                        {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    CK_OBJECT_HANDLE z = CK_INVALID_HANDLE;
    CK_RV rv = seen(p, p->be->C_GetAttributeValue(p->s, pub, &a, 1));
    if (rv != CKR_OK)
        return rv;
    memset(&ecdh, 0, sizeof(ecdh));
    ecdh.kdf = CKD_NULL;
    ecdh.pPublicData = point;
    ecdh.ulPublicDataLen = a.ulValueLen;
    /* CKA_EC_POINT is a DER OCTET STRING; ECDH takes the raw point. */
    if (a.ulValueLen == 67 && point[0] == 0x04 && point[1] == 65 && point[2] == 0x04) {
        ecdh.pPublicData = point + 2;
        ecdh.ulPublicDataLen = 65;
    }
    rv = seen(p, p->be->C_DeriveKey(p->s, &m, priv, t, sizeof(t) / sizeof(t[0]), &z));
    if (rv == CKR_OK)
        made(p, z);
    return rv;
}

/* C_SignInit + C_Sign with CKM_ECDSA over a 32-byte digest. */
static CK_RV sign(struct probe *p, CK_OBJECT_HANDLE priv)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE digest[32] = {0}, sig[256];
    CK_ULONG sig_len = sizeof(sig);
    CK_RV rv = seen(p, p->be->C_SignInit(p->s, &m, priv));
    if (rv != CKR_OK)
        return rv;
    return seen(p, p->be->C_Sign(p->s, digest, sizeof(digest), sig, &sig_len));
}

/* ---- the trials ------------------------------------------------------------------ */

/* CKA_SENSITIVE TRUE: CKA_VALUE of a secret key and of an EC private key is
 * refused. */
static struct result t_sensitive(struct probe *p)
{
    CK_ATTRIBUTE ka[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE k, pub, priv;
    CK_RV rv, rv_ec;
    if ((rv = aes_key(p, ka, 2, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((rv = read_value(p, k)) == CKR_OK)
        return verdict(NOT_ENFORCED, rv);
    if (ec_key(p, ka, 2, &pub, &priv) == CKR_OK && (rv_ec = read_value(p, priv)) == CKR_OK)
        return verdict(NOT_ENFORCED, rv_ec);
    return verdict(ENFORCED, rv);
}

/* CKA_SENSITIVE cannot go back to FALSE, even on a modifiable key. */
static struct result t_sensitive_sticky(struct probe *p)
{
    CK_ATTRIBUTE ka[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_MODIFIABLE, &yes, 1}};
    CK_OBJECT_HANDLE k;
    CK_RV rv;
    if ((rv = aes_key(p, ka, 3, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((rv = set_bool(p, k, CKA_SENSITIVE, CK_FALSE)) == CKR_OK)
        return verdict(NOT_ENFORCED, rv);
    return verdict(ENFORCED, rv);
}

/* CKA_EXTRACTABLE FALSE: C_WrapKey of the key is refused (while an
 * extractable one wraps under the same key: the control). */
static struct result t_extractable(struct probe *p)
{
    CK_ATTRIBUTE wa[] = {{CKA_WRAP, &yes, 1}};
    CK_ATTRIBUTE ea[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_ATTRIBUTE na[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_OBJECT_HANDLE w, e, n;
    CK_BYTE out[128];
    CK_ULONG len = sizeof(out);
    CK_RV rv;
    if ((rv = aes_key(p, wa, 1, &w)) != CKR_OK || (rv = aes_key(p, ea, 2, &e)) != CKR_OK ||
        (rv = aes_key(p, na, 2, &n)) != CKR_OK || (rv = wrap(p, w, e, out, &len)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    len = sizeof(out);
    rv = wrap(p, w, n, out, &len);
    OPENSSL_cleanse(out, sizeof(out));
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_EXTRACTABLE cannot go back to TRUE, even on a modifiable key. */
static struct result t_extractable_sticky(struct probe *p)
{
    CK_ATTRIBUTE ka[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}, {CKA_MODIFIABLE, &yes, 1}};
    CK_OBJECT_HANDLE k;
    CK_RV rv;
    if ((rv = aes_key(p, ka, 3, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    rv = set_bool(p, k, CKA_EXTRACTABLE, CK_TRUE);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_MODIFIABLE FALSE: no label, no new usage (CKA_DERIVE, CKA_SIGN).  The
 * control: a modifiable key takes a new label. */
static struct result t_modifiable(struct probe *p)
{
    CK_ATTRIBUTE ma[] = {{CKA_MODIFIABLE, &yes, 1}};
    CK_ATTRIBUTE ka[] = {{CKA_MODIFIABLE, &no, 1}, {CKA_DERIVE, &no, 1}};
    CK_ATTRIBUTE ea[] = {{CKA_MODIFIABLE, &no, 1}, {CKA_DERIVE, &no, 1}, {CKA_SIGN, &no, 1},
                         {CKA_SENSITIVE, &yes, 1}};
    CK_OBJECT_HANDLE c, k, pub, priv;
    CK_RV rv, first;
    if ((rv = aes_key(p, ma, 1, &c)) != CKR_OK || (rv = set_label(p, c)) != CKR_OK ||
        (rv = aes_key(p, ka, 2, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((first = set_label(p, k)) == CKR_OK)
        return verdict(NOT_ENFORCED, first);
    if ((rv = set_bool(p, k, CKA_DERIVE, CK_TRUE)) == CKR_OK)
        return verdict(NOT_ENFORCED, rv);
    if (ec_key(p, ea, 4, &pub, &priv) == CKR_OK) {
        if ((rv = set_bool(p, priv, CKA_SIGN, CK_TRUE)) == CKR_OK ||
            (rv = set_bool(p, priv, CKA_DERIVE, CK_TRUE)) == CKR_OK)
            return verdict(NOT_ENFORCED, rv);
    }
    return verdict(ENFORCED, first);
}

/* CKA_COPYABLE FALSE (set at C_GenerateKey: SoftHSM refuses it in
 * C_UnwrapKey templates): C_CopyObject is refused.  The control: a copyable
 * key copies. */
static struct result t_copyable(struct probe *p)
{
    CK_ATTRIBUTE ca[] = {{CKA_COPYABLE, &yes, 1}};
    CK_ATTRIBUTE ka[] = {{CKA_COPYABLE, &no, 1}};
    CK_OBJECT_HANDLE c, k, out;
    CK_RV rv;
    if ((rv = aes_key(p, ca, 1, &c)) != CKR_OK || (rv = copy(p, c, NULL, 0, &out)) != CKR_OK ||
        (rv = aes_key(p, ka, 1, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    rv = copy(p, k, NULL, 0, &out);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* A copy keeps the protections: C_CopyObject of a copyable, sensitive,
 * non-extractable, non-modifiable key cannot make the copy extractable,
 * non-sensitive or modifiable (the imported keys are copyable on SoftHSM). */
static struct result t_copy_sticky(struct probe *p)
{
    CK_ATTRIBUTE ka[] = {{CKA_COPYABLE, &yes, 1},
                         {CKA_SENSITIVE, &yes, 1},
                         {CKA_EXTRACTABLE, &no, 1},
                         {CKA_MODIFIABLE, &no, 1}};
    static const struct {
        CK_ATTRIBUTE_TYPE type;
        CK_BBOOL value;
    } asks[] = {{CKA_EXTRACTABLE, CK_TRUE}, {CKA_SENSITIVE, CK_FALSE}, {CKA_MODIFIABLE, CK_TRUE}};
    CK_OBJECT_HANDLE k, out;
    CK_RV rv, first = CKR_OK;
    if ((rv = aes_key(p, ka, 4, &k)) != CKR_OK || (rv = copy(p, k, NULL, 0, &out)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    for (size_t i = 0; i < sizeof(asks) / sizeof(asks[0]); i++) {
        CK_BBOOL v = asks[i].value, got;
        CK_ATTRIBUTE a = {asks[i].type, &v, sizeof(v)};
        rv = copy(p, k, &a, 1, &out);
        /* Accepted but not applied is a refusal too. */
        if (rv == CKR_OK && get_bool(p, out, asks[i].type, &got) == CKR_OK && got == asks[i].value)
            return verdict(NOT_ENFORCED, rv);
        if (first == CKR_OK)
            first = rv;
    }
    return verdict(ENFORCED, first);
}

/* CKA_DERIVE FALSE: no C_DeriveKey (AES_ECB_ENCRYPT_DATA on a secret key,
 * ECDH1 on an EC key); CKA_SIGN FALSE: no signature.  Each has its control. */
static struct result t_usage_derive(struct probe *p)
{
    CK_ATTRIBUTE da[] = {{CKA_DERIVE, &yes, 1}};
    CK_ATTRIBUTE na[] = {{CKA_DERIVE, &no, 1}};
    CK_ATTRIBUTE ea[] = {{CKA_DERIVE, &no, 1}, {CKA_SENSITIVE, &yes, 1}};
    CK_ATTRIBUTE sa[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE c, k, out, pub, priv, cpub, cpriv;
    CK_ATTRIBUTE ca[] = {{CKA_DERIVE, &yes, 1}, {CKA_SENSITIVE, &yes, 1}};
    CK_RV rv, first;
    if ((rv = aes_key(p, da, 1, &c)) != CKR_OK || (rv = derive_aes(p, c, sa, 2, &out)) != CKR_OK ||
        (rv = aes_key(p, na, 1, &k)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((first = derive_aes(p, k, sa, 2, &out)) == CKR_OK)
        return verdict(NOT_ENFORCED, first);
    /* ECDH: only where the backend has it (the control). */
    if (ec_key(p, ca, 2, &cpub, &cpriv) == CKR_OK && derive_ecdh(p, cpriv, cpub) == CKR_OK &&
        ec_key(p, ea, 2, &pub, &priv) == CKR_OK && (rv = derive_ecdh(p, priv, pub)) == CKR_OK)
        return verdict(NOT_ENFORCED, rv);
    return verdict(ENFORCED, first);
}

static struct result t_usage_sign(struct probe *p)
{
    CK_ATTRIBUTE ya[] = {{CKA_SIGN, &yes, 1}, {CKA_SENSITIVE, &yes, 1}};
    CK_ATTRIBUTE na[] = {{CKA_SIGN, &no, 1}, {CKA_SENSITIVE, &yes, 1}};
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;
    if ((rv = ec_key(p, ya, 2, &pub, &priv)) != CKR_OK || (rv = sign(p, priv)) != CKR_OK ||
        (rv = ec_key(p, na, 2, &pub, &priv)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    rv = sign(p, priv);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_ALLOWED_MECHANISMS = {CKM_ECDSA} on an EC key that may both sign and
 * derive: ECDSA works, ECDH1 is refused.  The control: ECDH1 works on the
 * same kind of key without the list. */
static struct result t_allowed_mechanisms(struct probe *p)
{
    CK_MECHANISM_TYPE allowed[] = {CKM_ECDSA};
    CK_ATTRIBUTE ca[] = {{CKA_DERIVE, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_SENSITIVE, &yes, 1}};
    CK_ATTRIBUTE ka[] = {{CKA_DERIVE, &yes, 1},
                         {CKA_SIGN, &yes, 1},
                         {CKA_SENSITIVE, &yes, 1},
                         {CKA_ALLOWED_MECHANISMS, allowed, sizeof(allowed)}};
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;
    if ((rv = ec_key(p, ca, 3, &pub, &priv)) != CKR_OK || (rv = derive_ecdh(p, priv, pub)) != CKR_OK ||
        (rv = ec_key(p, ka, 4, &pub, &priv)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((rv = sign(p, priv)) != CKR_OK)
        guardian_warn("probe", "allowed-mechanisms: the backend refused CKM_ECDSA, the one mechanism allowed: %s",
                      ckr(rv));
    rv = derive_ecdh(p, priv, pub);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_DERIVE_TEMPLATE {SENSITIVE TRUE, EXTRACTABLE FALSE} on a base key: a
 * derived key asked for as non-sensitive and extractable is refused, or made
 * sensitive anyway. */
static struct result t_derive_template(struct probe *p)
{
    CK_ATTRIBUTE dt[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE ka[] = {{CKA_DERIVE, &yes, 1}, {CKA_DERIVE_TEMPLATE, dt, sizeof(dt)}};
    CK_ATTRIBUTE ok[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE bad[] = {{CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE k, out;
    CK_RV rv;
    if ((rv = aes_key(p, ka, 2, &k)) != CKR_OK || (rv = derive_aes(p, k, ok, 2, &out)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    if ((rv = derive_aes(p, k, bad, 2, &out)) != CKR_OK)
        return verdict(ENFORCED, rv);
    rv = read_value(p, out);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_UNWRAP_TEMPLATE {SENSITIVE TRUE, EXTRACTABLE FALSE} on an unwrapping
 * key: a key unwrapped as non-sensitive and extractable is refused, or made
 * sensitive anyway. */
static struct result t_unwrap_template(struct probe *p)
{
    CK_ATTRIBUTE ut[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE wa[] = {{CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1}, {CKA_UNWRAP_TEMPLATE, ut, sizeof(ut)}};
    CK_ATTRIBUTE ea[] = {{CKA_EXTRACTABLE, &yes, 1}};
    CK_MECHANISM m = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &no, sizeof(no)},       {CKA_SENSITIVE, &no, sizeof(no)},
                        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
                        {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    CK_OBJECT_HANDLE w, e, out = CK_INVALID_HANDLE;
    CK_BYTE blob[128];
    CK_ULONG len = sizeof(blob);
    CK_RV rv;
    if ((rv = aes_key(p, wa, 3, &w)) != CKR_OK || (rv = aes_key(p, ea, 1, &e)) != CKR_OK ||
        (rv = wrap(p, w, e, blob, &len)) != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    rv = seen(p, p->be->C_UnwrapKey(p->s, &m, w, blob, len, t, sizeof(t) / sizeof(t[0]), &out));
    OPENSSL_cleanse(blob, sizeof(blob));
    if (rv != CKR_OK)
        return verdict(ENFORCED, rv);
    made(p, out);
    rv = read_value(p, out);
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* CKA_DESTROYABLE FALSE: C_DestroyObject is refused (the object goes with
 * the probe's session).  The control is every other destruction here. */
static struct result t_destroyable(struct probe *p)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_TOKEN, &no, sizeof(no)},
                        {CKA_DESTROYABLE, &no, sizeof(no)},
                        {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1}};
    CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
    CK_RV rv = seen(p, p->be->C_GenerateKey(p->s, &gen, t, sizeof(t) / sizeof(t[0]), &k));
    if (rv != CKR_OK)
        return verdict(UNSUPPORTED, rv);
    guardian_policy_forget(k);
    rv = seen(p, p->be->C_DestroyObject(p->s, k));
    return verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
}

/* A small self-signed certificate, DER, made here (OPENSSL_free it). */
static int self_signed(unsigned char **der)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n = NULL;
    int len = -1;
    if (k == NULL || x == NULL || X509_set_version(x, 2) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 || X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 3600) == NULL || X509_set_pubkey(x, k) != 1)
        goto out;
    n = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"Guardian probe", -1, -1, 0) != 1 ||
        X509_set_issuer_name(x, n) != 1 || X509_sign(x, k, EVP_sha256()) <= 0)
        goto out;
    len = i2d_X509(x, der);
out:
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    return len;
}

/* CKA_TRUSTED TRUE is the Security Officer's: a plain user's C_CreateObject
 * of a trusted certificate is refused (the control: the same certificate,
 * untrusted, is created). */
static struct result t_trusted_so_only(struct probe *p)
{
    static CK_BYTE serial_one[] = {0x02, 0x01, 0x01}; /* self_signed's serial, DER */
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    unsigned char *der = NULL, *subj = NULL;
    const unsigned char *q;
    X509 *x = NULL;
    int len = self_signed(&der), subj_len = -1;
    CK_OBJECT_HANDLE h;
    CK_RV rv = CKR_HOST_MEMORY;
    struct result r = verdict(UNSUPPORTED, CKR_HOST_MEMORY);
    if (len > 0 && (q = der, x = d2i_X509(NULL, &q, len)) != NULL)
        subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    if (subj_len <= 0) {
        p->fatal = CKR_HOST_MEMORY;
        goto out;
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                            {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_LABEL, (void *)PROBE_LABEL, sizeof(PROBE_LABEL) - 1},
                            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
                            {CKA_VALUE, der, (CK_ULONG)len},
                            /* NSS softoken: CKR_TEMPLATE_INCOMPLETE without these two */
                            {CKA_ISSUER, subj, (CK_ULONG)subj_len},
                            {CKA_SERIAL_NUMBER, serial_one, sizeof(serial_one)},
                            {CKA_TRUSTED, &yes, sizeof(yes)}};
        rv = seen(p, p->be->C_CreateObject(p->s, t, 8, &h));
        if (rv != CKR_OK) {
            r = verdict(UNSUPPORTED, rv);
            goto out;
        }
        /* Gone before the trusted one: NSS keeps one copy of a certificate
         * and refuses a second (which would read as enforced). */
        if (seen(p, p->be->C_DestroyObject(p->s, h)) != CKR_OK)
            made(p, h);
        else
            guardian_policy_forget(h);
        rv = seen(p, p->be->C_CreateObject(p->s, t, 9, &h));
        if (rv == CKR_OK)
            made(p, h);
        r = verdict(rv == CKR_OK ? NOT_ENFORCED : ENFORCED, rv);
    }
out:
    OPENSSL_free(der);
    OPENSSL_free(subj);
    X509_free(x);
    return r;
}

static const struct trial {
    const char *name;
    struct result (*run)(struct probe *p);
    const char *if_not; /* what someone holding the backend PIN could do when it is not enforced */
} trials[] = {
    {"sensitive", t_sensitive,
     "read the value of every sensitive key: the production CA keys, the package secrets, the identity key."},
    {"sensitive-sticky", t_sensitive_sticky,
     "turn CKA_SENSITIVE off on a key that is modifiable and then read its value."},
    {"extractable", t_extractable,
     "wrap non-extractable keys (the production CA keys, the package secrets) under a key of their own and "
     "decrypt them outside the token."},
    {"extractable-sticky", t_extractable_sticky, "turn CKA_EXTRACTABLE on for a key that is modifiable and then "
                                                 "wrap it out."},
    {"modifiable", t_modifiable,
     "change the Guardian's keys: relabel them, give the production CA key or a secret new uses (derive, sign)."},
    {"copyable", t_copyable, "copy keys marked CKA_COPYABLE FALSE (the identity key)."},
    {"copy-sticky", t_copy_sticky,
     "copy a copyable key (the imported keys are: SoftHSM refuses CKA_COPYABLE at unwrap) into one that is "
     "extractable, not sensitive or modifiable, and so export it."},
    {"usage-derive", t_usage_derive,
     "derive from keys that have CKA_DERIVE FALSE (the production CA key), e.g. export an ECDH secret made with it."},
    {"usage-sign", t_usage_sign,
     "sign with keys that have CKA_SIGN FALSE (the package secrets, the intermediate keys)."},
    {"allowed-mechanisms", t_allowed_mechanisms,
     "use a key with mechanisms outside its CKA_ALLOWED_MECHANISMS (the Guardian could not narrow a key to one "
     "mechanism)."},
    {"derive-template", t_derive_template,
     "derive from a key with a CKA_DERIVE_TEMPLATE a key outside that template, extractable and readable."},
    {"unwrap-template", t_unwrap_template,
     "unwrap under a key with a CKA_UNWRAP_TEMPLATE a key outside that template, extractable and readable."},
    {"destroyable", t_destroyable,
     "destroy objects marked CKA_DESTROYABLE FALSE (the Guardian could not make its state anchor undeletable)."},
    {"trusted-so-only", t_trusted_so_only,
     "make a trusted certificate as a plain user: enrol an OEM root of their own (label \"guardian-root:<OEM "
     "ID>\") so that the Guardian imports packages signed under it."},
};

static CK_RV append(char *buf, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static CK_RV append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len)
        return CKR_HOST_MEMORY;
    *len += (size_t)n;
    return CKR_OK;
}

static CK_RV probe(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE session,
                   const struct guardian_request *rq, CK_OBJECT_HANDLE *out)
{
    struct probe p = {be, CK_INVALID_HANDLE, {0}, 0, CKR_OK};
    CK_SESSION_INFO si;
    char text[4096];
    size_t len = 0;
    int counts[3] = {0, 0, 0};
    CK_RV rv = CKR_GENERAL_ERROR;
    (void)st;
    (void)rq;

    if ((rv = be->C_GetSessionInfo(session, &si)) != CKR_OK ||
        (rv = be->C_OpenSession(si.slotID, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &p.s)) != CKR_OK)
        goto out;
    for (size_t i = 0; i < sizeof(trials) / sizeof(trials[0]); i++) {
        struct result r = trials[i].run(&p);
        if (p.fatal != CKR_OK) {
            rv = p.fatal;
            guardian_error("probe", "%s: the backend failed (%s): no answer about the protection, probe stopped",
                           trials[i].name, ckr(rv));
            goto out;
        }
        counts[r.v]++;
        guardian_debug("probe", "%s %s %s", trials[i].name, verdict_names[r.v], ckr(r.rv));
        if ((rv = append(text, sizeof(text), &len, "%s %s %s %s\n", trials[i].name, verdict_names[r.v], ckr(r.rv),
                         trials[i].if_not)) != CKR_OK)
            goto out;
        /* Each trial's objects go before the next: a small footprint. */
        while (p.n_made > 0) {
            CK_OBJECT_HANDLE h = p.made[--p.n_made];
            be->C_DestroyObject(p.s, h);
            guardian_policy_forget(h);
        }
    }
    rv = guardian_output_create(be, session, "probe", (const uint8_t *)text, len, out);
    if (rv == CKR_OK)
        guardian_info("probe", "backend protections: %d enforced, %d not enforced, %d not supported", counts[ENFORCED],
                      counts[NOT_ENFORCED], counts[UNSUPPORTED]);
out:
    while (p.n_made > 0) {
        CK_OBJECT_HANDLE h = p.made[--p.n_made];
        be->C_DestroyObject(p.s, h);
        guardian_policy_forget(h);
    }
    /* Takes what would not be destroyed (CKA_DESTROYABLE FALSE). */
    if (p.s != CK_INVALID_HANDLE)
        be->C_CloseSession(p.s);
    return rv;
}

const struct guardian_request_type guardian_request_probe = {
    .type = CKG_GUARDIAN_REQ_PROBE,
    .name = "CKG_GUARDIAN_REQ_PROBE",
    .session = GUARDIAN_REQUEST_USER_RW,
    .attributes = NULL,
    .n_attributes = 0,
    .run = probe,
};
