/*
 * policy.c — what the Guardian owns on its token, and which standard calls may
 * touch it: one table, consulted by handle.
 *
 * Ownership.  An object belongs to the Guardian when the module made it: the
 * identity's two key pairs and their certificates (CKA_ID / CKA_LABEL
 * "guardian-identity": the agreement key, derive only; "guardian-signing":
 * the signing key, sign only), every
 * object of an imported package (label "guardian:<oem>/<product>/r<n>:...",
 * data objects CKA_APPLICATION "guardian:<package id>"), the import's
 * intermediate keys ("guardian-import:..."), the state anchor
 * ("guardian-anchor"), request outputs ("guardian-output:..."), and every
 * trusted certificate (enrolled OEM roots, "guardian-root:<oem ids>").  Callers
 * cannot make such an object through the module: guardian_policy_template()
 * refuses a template that names one of those labels, IDs or applications, or
 * sets CKA_TRUSTED.  So the marks can be read back as proof of ownership.
 *
 * The table.  roles × operations → allowed, or the refusal.  The Guardian's own
 * mechanisms call the backend directly and are never refused here.
 *
 * Cost.  Classifying an object reads its attributes (tens of microseconds on
 * SoftHSM), so the answer is cached by handle in a lock-free open-addressing
 * table of 64-bit words (handle << 8 | role): the hot path of a forwarder is
 * one multiply, one or two relaxed loads and a table lookup.  The cache only
 * accelerates: a miss classifies again, so an entry may be dropped at any
 * time (session closed, logout, object destroyed, table full).  Handles of
 * 2^56 and above are never cached (always classified).
 */
#include <pthread.h>
#include <string.h>

#include "module.h"

#define CACHE_SIZE (1u << GUARDIAN_POLICY_CACHE_BITS)
#define CACHE_PROBES GUARDIAN_POLICY_CACHE_PROBES
#define TOMBSTONE UINT64_MAX

enum verdict {
    REFUSE_USE = 0, /* CKR_KEY_FUNCTION_NOT_PERMITTED */
    ALLOW = 1,
    REFUSE_ACTION = 2, /* CKR_ACTION_PROHIBITED */
    SO_ONLY = 3,       /* allowed in a Security Officer session, else CKR_ACTION_PROHIBITED */
};

/* Roles (the low byte of a cache word; 0 is "no entry"). */
#define U ALLOW
#define N REFUSE_USE
#define P REFUSE_ACTION
static const unsigned char policy[GUARDIAN_ROLE_COUNT][GUARDIAN_OP_COUNT] = {
    /*                          ENC DEC SIGN SREC VER VREC DIG DERIVE UNWRAP WRAP WRAPPED SET COPY DESTROY */
    [GUARDIAN_ROLE_UNOWNED]     = {U, U, U, U, U, U, U, U, U, U, U, U, U, U},
    [GUARDIAN_ROLE_IDENTITY]    = {N, N, N, N, N, N, N, N, N, N, P, P, P, P},
    [GUARDIAN_ROLE_PRODUCTION]  = {N, N, N, N, N, N, N, N, N, N, P, P, P, P},
    [GUARDIAN_ROLE_SECRET]      = {N, N, N, N, N, N, N, N, N, N, P, P, P, P},
    [GUARDIAN_ROLE_INTERMEDIATE]= {N, N, N, N, N, N, N, N, N, N, P, P, P, P},
    [GUARDIAN_ROLE_STATE]       = {N, N, N, N, N, N, N, N, N, N, P, P, P, P},
    /* Public objects: verifying with a public key harms nobody. */
    [GUARDIAN_ROLE_PUBLIC]      = {N, N, N, N, U, U, N, N, N, N, P, P, P, P},
    [GUARDIAN_ROLE_ROOT]        = {N, N, N, N, U, U, N, N, N, N, P, P, P, SO_ONLY},
    /* A request's output (a report, a CSR): the caller reads it and destroys it. */
    [GUARDIAN_ROLE_OUTPUT]      = {N, N, N, N, N, N, N, N, N, N, P, P, P, U},
};
#undef U
#undef N
#undef P

static const char *const role_names[GUARDIAN_ROLE_COUNT] = {
    [GUARDIAN_ROLE_UNOWNED] = "not the Guardian's",
    [GUARDIAN_ROLE_IDENTITY] = "a Guardian identity key (agreement or signing)",
    [GUARDIAN_ROLE_PRODUCTION] = "a production CA key of an imported package",
    [GUARDIAN_ROLE_SECRET] = "a confidential data item of an imported package",
    [GUARDIAN_ROLE_INTERMEDIATE] = "an intermediate key of a package import",
    [GUARDIAN_ROLE_STATE] = "the Guardian's state anchor",
    [GUARDIAN_ROLE_PUBLIC] = "a public object of the Guardian",
    [GUARDIAN_ROLE_ROOT] = "an enrolled OEM root",
    [GUARDIAN_ROLE_OUTPUT] = "the output of a Guardian request",
};

static const char *const op_names[GUARDIAN_OP_COUNT] = {
    [GUARDIAN_OP_ENCRYPT] = "encrypt with",       [GUARDIAN_OP_DECRYPT] = "decrypt with",
    [GUARDIAN_OP_SIGN] = "sign with",             [GUARDIAN_OP_SIGN_RECOVER] = "sign with",
    [GUARDIAN_OP_VERIFY] = "verify with",         [GUARDIAN_OP_VERIFY_RECOVER] = "verify with",
    [GUARDIAN_OP_DIGEST_KEY] = "digest",          [GUARDIAN_OP_DERIVE] = "derive from",
    [GUARDIAN_OP_UNWRAP_WITH] = "unwrap with",    [GUARDIAN_OP_WRAP_WITH] = "wrap with",
    [GUARDIAN_OP_WRAPPED] = "wrap",               [GUARDIAN_OP_SET_ATTRIBUTE] = "change",
    [GUARDIAN_OP_COPY] = "copy",                  [GUARDIAN_OP_DESTROY] = "destroy",
};

/* What each operation answers for a handle it cannot use. */
static const CK_RV unusable_handle[GUARDIAN_OP_COUNT] = {
    [GUARDIAN_OP_ENCRYPT] = CKR_KEY_HANDLE_INVALID,       [GUARDIAN_OP_DECRYPT] = CKR_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_SIGN] = CKR_KEY_HANDLE_INVALID,          [GUARDIAN_OP_SIGN_RECOVER] = CKR_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_VERIFY] = CKR_KEY_HANDLE_INVALID,        [GUARDIAN_OP_VERIFY_RECOVER] = CKR_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_DIGEST_KEY] = CKR_KEY_HANDLE_INVALID,    [GUARDIAN_OP_DERIVE] = CKR_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_UNWRAP_WITH] = CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_WRAP_WITH] = CKR_WRAPPING_KEY_HANDLE_INVALID,
    [GUARDIAN_OP_WRAPPED] = CKR_KEY_HANDLE_INVALID,       [GUARDIAN_OP_SET_ATTRIBUTE] = CKR_OBJECT_HANDLE_INVALID,
    [GUARDIAN_OP_COPY] = CKR_OBJECT_HANDLE_INVALID,       [GUARDIAN_OP_DESTROY] = CKR_OBJECT_HANDLE_INVALID,
};

_Atomic uint64_t guardian_policy_cache[CACHE_SIZE];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned cache_used; /* words written since the last reset (tombstones included) */

static inline size_t slot_of(CK_OBJECT_HANDLE h)
{
    return guardian_policy_slot(h);
}

static void cache_put(CK_OBJECT_HANDLE h, int role)
{
    size_t i = slot_of(h);
    uint64_t word = ((uint64_t)h << 8) | (uint64_t)role;
    if (h >> 56 || h == CK_INVALID_HANDLE)
        return;
    pthread_mutex_lock(&cache_lock);
    if (cache_used >= CACHE_SIZE / 2) {
        /* Full enough that probes get long: forget everything not owned (the
         * owned are few, and a miss only costs a classification). */
        for (size_t j = 0; j < CACHE_SIZE; j++) {
            uint64_t w = atomic_load_explicit(&guardian_policy_cache[j], memory_order_relaxed);
            if (w == TOMBSTONE || (w != 0 && (w & 0xff) == GUARDIAN_ROLE_UNOWNED))
                atomic_store_explicit(&guardian_policy_cache[j], TOMBSTONE, memory_order_relaxed);
        }
        /* Rebuild without tombstones: readers meanwhile only miss. */
        {
            uint64_t keep[CACHE_SIZE / 2];
            unsigned n = 0;
            for (size_t j = 0; j < CACHE_SIZE && n < CACHE_SIZE / 2; j++) {
                uint64_t w = atomic_load_explicit(&guardian_policy_cache[j], memory_order_relaxed);
                if (w != 0 && w != TOMBSTONE)
                    keep[n++] = w;
            }
            for (size_t j = 0; j < CACHE_SIZE; j++)
                atomic_store_explicit(&guardian_policy_cache[j], 0, memory_order_relaxed);
            cache_used = 0;
            for (unsigned k = 0; k < n; k++) {
                size_t s = slot_of((CK_OBJECT_HANDLE)(keep[k] >> 8));
                for (int p = 0; p < CACHE_PROBES; p++) {
                    _Atomic uint64_t *c = &guardian_policy_cache[(s + p) & (CACHE_SIZE - 1)];
                    if (atomic_load_explicit(c, memory_order_relaxed) == 0) {
                        atomic_store_explicit(c, keep[k], memory_order_relaxed);
                        cache_used++;
                        break;
                    }
                }
            }
        }
    }
    for (int k = 0; k < CACHE_PROBES; k++) {
        _Atomic uint64_t *c = &guardian_policy_cache[(i + k) & (CACHE_SIZE - 1)];
        uint64_t w = atomic_load_explicit(c, memory_order_relaxed);
        if (w != 0 && w != TOMBSTONE && (w >> 8) == h) {
            atomic_store_explicit(c, word, memory_order_relaxed);
            break;
        }
        if (w == 0) {
            atomic_store_explicit(c, word, memory_order_relaxed);
            cache_used++;
            break;
        }
    }
    pthread_mutex_unlock(&cache_lock);
}

void guardian_policy_forget(CK_OBJECT_HANDLE h)
{
    size_t i = slot_of(h);
    if (h >> 56)
        return;
    pthread_mutex_lock(&cache_lock);
    for (int k = 0; k < CACHE_PROBES; k++) {
        _Atomic uint64_t *c = &guardian_policy_cache[(i + k) & (CACHE_SIZE - 1)];
        uint64_t w = atomic_load_explicit(c, memory_order_relaxed);
        if (w == 0)
            break;
        if (w != TOMBSTONE && (w >> 8) == h) {
            atomic_store_explicit(c, TOMBSTONE, memory_order_relaxed);
            break;
        }
    }
    pthread_mutex_unlock(&cache_lock);
}

void guardian_policy_reset(void)
{
    pthread_mutex_lock(&cache_lock);
    if (cache_used > 0)
        for (size_t j = 0; j < CACHE_SIZE; j++)
            atomic_store_explicit(&guardian_policy_cache[j], 0, memory_order_relaxed);
    cache_used = 0;
    pthread_mutex_unlock(&cache_lock);
}

void guardian_policy_atfork_child(void)
{
    pthread_mutex_init(&cache_lock, NULL);
}

/* ---- classification ------------------------------------------------------------ */

static int has_prefix(const CK_BYTE *v, CK_ULONG len, const char *prefix)
{
    size_t n = strlen(prefix);
    return v != NULL && len != CK_UNAVAILABLE_INFORMATION && len >= n && memcmp(v, prefix, n) == 0;
}

static int equals(const CK_BYTE *v, CK_ULONG len, const char *s)
{
    return v != NULL && len == strlen(s) && memcmp(v, s, len) == 0;
}

/* The labels (and data-object applications) the module gives its objects:
 * exactly these prefixes, so that an operator's "guardian-test" key stays the
 * operator's. */
static const char *const marks[] = {
    GUARDIAN_PACKAGE_PREFIX, GUARDIAN_IDENTITY_ID,   GUARDIAN_SIGNING_ID,  GUARDIAN_IMPORT_PREFIX,
    GUARDIAN_ANCHOR_LABEL,   GUARDIAN_OUTPUT_PREFIX, GUARDIAN_ROOT_PREFIX,
};

/* The identity's CKA_IDs: the agreement key's and the signing key's. */
static int is_identity_id(const CK_BYTE *v, CK_ULONG len)
{
    return equals(v, len, GUARDIAN_IDENTITY_ID) || equals(v, len, GUARDIAN_SIGNING_ID);
}

static int has_mark(const CK_BYTE *v, CK_ULONG len)
{
    for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++)
        if (has_prefix(v, len, marks[i]))
            return 1;
    return 0;
}

/* One attribute into `buf` (cap bytes): its length, or CK_UNAVAILABLE_INFORMATION
 * when the object lacks it; a longer value is truncated to cap (only prefixes
 * are compared).  CKR_OK or the backend's error for the object itself. */
static CK_RV read_attr(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                       CK_BYTE *buf, CK_ULONG cap, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = be->C_GetAttributeValue(s, h, &a, 1);
    *len = CK_UNAVAILABLE_INFORMATION;
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE)
        return CKR_OK;
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return CKR_OK;
    if (a.ulValueLen > cap) {
        /* Longer than anything compared exactly (the full length says so),
         * but its prefix still decides ownership (a package label can be
         * ~200 bytes): read it whole, keep the first `cap` bytes. */
        CK_BYTE *tmp = malloc(a.ulValueLen);
        if (tmp == NULL)
            return CKR_HOST_MEMORY;
        a.pValue = tmp;
        rv = be->C_GetAttributeValue(s, h, &a, 1);
        if (rv == CKR_OK) {
            memcpy(buf, tmp, cap);
            *len = a.ulValueLen;
        }
        free(tmp);
        return rv;
    }
    a.pValue = buf;
    rv = be->C_GetAttributeValue(s, h, &a, 1);
    if (rv == CKR_OK)
        *len = a.ulValueLen;
    return rv;
}

#define MARK_CAP 64

CK_RV guardian_policy_classify(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, int *role_out)
{
    CK_OBJECT_CLASS cls = 0;
    CK_BYTE label[MARK_CAP], id[MARK_CAP], app[MARK_CAP], cls_buf[sizeof(CK_OBJECT_CLASS)];
    CK_BBOOL trusted = CK_FALSE;
    CK_ULONG label_len, id_len, app_len = CK_UNAVAILABLE_INFORMATION, cls_len, trusted_len;
    int role = GUARDIAN_ROLE_UNOWNED, guardian_mark;
    CK_RV rv;

    rv = read_attr(be, s, h, CKA_CLASS, cls_buf, sizeof(cls_buf), &cls_len);
    if (rv != CKR_OK)
        return rv;
    if (cls_len != sizeof(cls))
        return CKR_OBJECT_HANDLE_INVALID;
    memcpy(&cls, cls_buf, sizeof(cls));
    if ((rv = read_attr(be, s, h, CKA_LABEL, label, sizeof(label), &label_len)) != CKR_OK ||
        (rv = read_attr(be, s, h, CKA_ID, id, sizeof(id), &id_len)) != CKR_OK)
        return rv;
    if (cls == CKO_DATA && (rv = read_attr(be, s, h, CKA_APPLICATION, app, sizeof(app), &app_len)) != CKR_OK)
        return rv;
    if (cls == CKO_CERTIFICATE) {
        rv = read_attr(be, s, h, CKA_TRUSTED, &trusted, sizeof(trusted), &trusted_len);
        if (rv != CKR_OK)
            return rv;
        if (trusted_len != sizeof(trusted))
            trusted = CK_FALSE;
    }

    guardian_mark = has_mark(label, label_len) || is_identity_id(id, id_len) || has_mark(app, app_len);
    /* A certificate labelled "guardian-root:" is a root's too where the token
     * refused it CKA_TRUSTED: the module made it to list a root of its
     * ledger (mechs/enrol_root.c). */
    if (cls == CKO_CERTIFICATE && (trusted || has_prefix(label, label_len, GUARDIAN_ROOT_PREFIX)))
        role = GUARDIAN_ROLE_ROOT;
    else if (!guardian_mark)
        role = GUARDIAN_ROLE_UNOWNED;
    else if (cls != CKO_PRIVATE_KEY && cls != CKO_SECRET_KEY)
        role = has_prefix(label, label_len, GUARDIAN_OUTPUT_PREFIX) ? GUARDIAN_ROLE_OUTPUT
               : has_prefix(label, label_len, GUARDIAN_ANCHOR_LABEL) ? GUARDIAN_ROLE_STATE
                                                                     : GUARDIAN_ROLE_PUBLIC;
    else if (is_identity_id(id, id_len) || is_identity_id(label, label_len))
        role = GUARDIAN_ROLE_IDENTITY;
    else if (has_prefix(label, label_len, GUARDIAN_IMPORT_PREFIX))
        role = GUARDIAN_ROLE_INTERMEDIATE;
    else if (cls == CKO_SECRET_KEY)
        role = GUARDIAN_ROLE_SECRET;
    else
        role = GUARDIAN_ROLE_PRODUCTION;
    *role_out = role;
    return CKR_OK;
}

CK_RV guardian_policy_check(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, enum guardian_op op,
                            const char *function)
{
    int role = guardian_policy_cached_role(h);
    CK_RV rv;

    if (role == 0) {
        rv = guardian_policy_classify(be, s, h, &role);
        /* SoftHSM's file store can fail a read while another process
         * rewrites the token: once more before giving up. */
        if (rv != CKR_OK && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_CRYPTOKI_NOT_INITIALIZED)
            rv = guardian_policy_classify(be, s, h, &role);
        /* An object the policy cannot classify is not used: fail closed,
         * with the code the call itself gives for a handle it cannot use
         * (a bad handle, a private object before login). */
        if (rv != CKR_OK)
            return rv != CKR_OBJECT_HANDLE_INVALID ? rv : unusable_handle[op];
        guardian_debug("policy", "object 0x%lx: %s", (unsigned long)h, role_names[role]);
        cache_put(h, role);
    }
    switch (policy[role][op]) {
    case ALLOW:
        return CKR_OK;
    case SO_ONLY: {
        CK_SESSION_INFO si;
        if (guardian_session_who(be, s, &si) == CKU_SO && (si.flags & CKF_RW_SESSION))
            return CKR_OK;
        rv = CKR_ACTION_PROHIBITED;
        break;
    }
    case REFUSE_ACTION:
        rv = CKR_ACTION_PROHIBITED;
        break;
    default:
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
        break;
    }
    guardian_error("policy", "%s refused: object 0x%lx is %s; it serves only the Guardian's mechanisms (cannot %s "
                             "it through a standard call)",
                   function, (unsigned long)h, role_names[role], op_names[op]);
    return rv;
}

/* ---- templates ------------------------------------------------------------------ */

CK_RV guardian_policy_template(const CK_ATTRIBUTE *t, CK_ULONG n, const char *function)
{
    const char *why = NULL;
    if (t == NULL)
        return CKR_OK;
    for (CK_ULONG i = 0; i < n && why == NULL; i++) {
        const CK_BYTE *v = t[i].pValue;
        CK_ULONG len = t[i].ulValueLen;
        if (v == NULL)
            continue;
        switch (t[i].type) {
        case CKA_LABEL:
            if (has_mark(v, len))
                why = "a CKA_LABEL of the Guardian's (\"guardian:\", \"guardian-identity\", \"guardian-signing\", "
                      "\"guardian-root:\", ...)";
            break;
        case CKA_APPLICATION:
            if (has_mark(v, len))
                why = "a CKA_APPLICATION of the Guardian's (\"guardian:\", \"guardian-anchor\")";
            break;
        case CKA_ID:
            if (is_identity_id(v, len))
                why = "a CKA_ID of the Guardian identity's (\"guardian-identity\", \"guardian-signing\")";
            break;
        case CKA_TRUSTED:
            if (len == sizeof(CK_BBOOL) && *v != CK_FALSE)
                why = "CKA_TRUSTED (OEM roots are enrolled with guardianctl enroll-oem)";
            break;
        default:
            break;
        }
    }
    if (why == NULL)
        return CKR_OK;
    guardian_error("policy", "%s refused: the template sets %s, which only the Guardian's own objects carry",
                   function, why);
    return CKR_ACTION_PROHIBITED;
}
