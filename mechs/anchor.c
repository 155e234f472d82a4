/*
 * anchor.c — the Guardian token's anchor of the state store.
 *
 * The store (SQLite in the state directory) can be copied back, deleted,
 * swapped or pointed elsewhere by whoever controls the host; the token
 * cannot be rewound that way.  So the token holds an anchor of the store: a
 * private, token CKO_DATA object labelled "guardian-anchor" whose CKA_VALUE is
 * store.h's anchor encoding (the chain head, each package's issued units and
 * each installed product's next serial).  Every import and every reservation
 * block is checked against it before the store grants anything and moves it
 * up after the store committed, so a store that is behind it — a restored
 * backup, a deleted or swapped guardian.db, GUARDIAN_STATE_DIR pointing at
 * another directory — is refused with CKR_GUARDIAN_STATE_ROLLBACK.
 *
 * Where the token makes no CKO_DATA token object (NSS softoken 3.87 refuses
 * every one: CKR_ATTRIBUTE_VALUE_INVALID), the anchor is a private token
 * generic secret key of no use (every usage flag false, not modifiable) with
 * the same label, whose CKA_ID holds the bytes: NSS returns no secret key's
 * CKA_VALUE, but keeps and returns a CKA_ID of 60,000 bytes (measured).
 *
 * The object belongs to the Guardian (policy.c: role STATE): no standard call
 * through the module may change, copy or destroy it.  Someone who
 * loads the backend directly with the user PIN can delete it (then the next
 * operation anchors whatever store is there): that remainder is what the
 * service mode removes (docs/threat-model.md).
 *
 * Processes: every process on this state (each connection of the service is
 * one) moves the same object, so each look at it holds the store's anchor
 * lock (an flock in the state directory) besides this process's mutex: no
 * process sees another's update half done (two objects, or a handle
 * destroyed between two reads).
 *
 * Cost: one C_FindObjects the first time, two C_GetAttributeValue, one
 * C_CreateObject and one C_DestroyObject of a token object per block of up
 * to 1,024 units, and an flock pair.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anchor.h"
#include "identity.h"
#include "module.h"
#include "registry.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define LOG "anchor"
#define ANCHOR_MAX_BYTES (1024 * 1024)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static CK_OBJECT_HANDLE cached = CK_INVALID_HANDLE;
/* guardian_anchor_bind: the slot whose Guardian the store names, and
 * whether that is still known (false after a forget: looked up again). */
/* bound_known and bound_slot are read without the lock on every call (the
 * fast path of each certificate: two threads issuing must not queue on a
 * mutex), written under it. */
static _Atomic CK_SLOT_ID bound_slot;
static atomic_bool bound_known;
static bool bound_ever;

static const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "vendor CKR";
}

void guardian_anchor_forget(void)
{
    pthread_mutex_lock(&lock);
    cached = CK_INVALID_HANDLE;
    atomic_store(&bound_known, false); /* bound_ever stays: which slot the store names */
    pthread_mutex_unlock(&lock);
}

void guardian_anchor_forget_guardian(void)
{
    atomic_store(&bound_known, false);
}

void guardian_anchor_atfork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    cached = CK_INVALID_HANDLE;
    atomic_store(&bound_known, false);
    bound_ever = false;
}

CK_RV guardian_anchor_bind(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_SLOT_ID slot,
                           struct guardian_store *st)
{
    uint8_t fp[GUARDIAN_HASH_LEN], named[GUARDIAN_HASH_LEN];
    char fp_hex[2 * GUARDIAN_HASH_LEN + 1], named_hex[2 * GUARDIAN_HASH_LEN + 1];
    int found = 0;
    CK_RV rv;

    if (atomic_load(&bound_known) && atomic_load(&bound_slot) == slot)
        return CKR_OK;
    pthread_mutex_lock(&lock);
    rv = guardian_identity_fingerprint(be, session, fp, &found);
    if (rv != CKR_OK || !found)
        goto out; /* no certificate yet (before init): records name what they named */
    if (guardian_store_guardian(st, named) && memcmp(named, fp, sizeof(fp)) != 0) {
        for (size_t i = 0; i < GUARDIAN_HASH_LEN; i++) {
            snprintf(fp_hex + 2 * i, 3, "%02x", fp[i]);
            snprintf(named_hex + 2 * i, 3, "%02x", named[i]);
        }
        if (!bound_ever || slot != atomic_load(&bound_slot)) {
            guardian_error(LOG, "refused: this process works for Guardian sha256:%s already, and the token in slot "
                                "%lu is Guardian sha256:%s: one process serves one Guardian (every record names "
                                "it, and the state anchor is its token's); use a process per Guardian token",
                           named_hex, (unsigned long)slot, fp_hex);
            rv = CKR_GUARDIAN_WRONG_GUARDIAN;
            goto out;
        }
        guardian_info(LOG, "the Guardian in slot %lu has a new certificate: records name sha256:%s from now on "
                           "(sha256:%s until now)",
                      (unsigned long)slot, fp_hex, named_hex);
    }
    guardian_store_set_guardian(st, fp);
    atomic_store(&bound_slot, slot);
    atomic_store(&bound_known, true);
    bound_ever = true;
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

/* The bytes of anchor object `h` (malloc'd): CKA_VALUE of a data object,
 * CKA_ID of the secret key that stands for one (above). */
static CK_RV bytes_of(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, uint8_t **buf, size_t *len)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    CK_RV rv = be->C_GetAttributeValue(s, h, &c, 1);

    *buf = NULL;
    if (rv != CKR_OK)
        return rv;
    if (cls == CKO_SECRET_KEY)
        a.type = CKA_ID;
    rv = be->C_GetAttributeValue(s, h, &a, 1);
    if (rv == CKR_OK && (a.ulValueLen == 0 || a.ulValueLen > ANCHOR_MAX_BYTES))
        return CKR_GUARDIAN_AUDIT_CORRUPT;
    if (rv == CKR_OK && (a.pValue = malloc(a.ulValueLen)) == NULL)
        return CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = be->C_GetAttributeValue(s, h, &a, 1);
    if (rv != CKR_OK) {
        free(a.pValue);
        return rv;
    }
    *buf = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

/* The anchor with the highest seq; an update writes the new one before it
 * destroys the old (SoftHSM keeps a data object's CKA_VALUE read-only), so
 * after a crash there may be two: the older is destroyed here. */
static CK_RV find_locked(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_LABEL, (void *)GUARDIAN_ANCHOR_LABEL, sizeof(GUARDIAN_ANCHOR_LABEL) - 1}};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0, k = 0;
    CK_RV rv;
    if (cached != CK_INVALID_HANDLE) {
        *out = cached;
        return CKR_OK;
    }
    rv = guardian_backend_find(be, s, t, 3, found, 4, &n);
    if (rv != CKR_OK)
        return rv;
    if (n < 4) {
        cls = CKO_SECRET_KEY;
        rv = guardian_backend_find(be, s, t, 3, found + n, 4 - n, &k);
        if (rv != CKR_OK)
            return rv;
        n += k;
    }
    if (n > 2) {
        guardian_error(LOG, "the token holds %lu state anchors: it was tampered with outside the Guardian",
                       (unsigned long)n);
        return CKR_GUARDIAN_STATE_ROLLBACK;
    }
    if (n == 2) {
        uint64_t seq[2] = {0, 0};
        for (int i = 0; i < 2; i++) {
            uint8_t *full = NULL;
            size_t len = 0;
            rv = bytes_of(be, s, found[i], &full, &len);
            if (rv == CKR_OK)
                seq[i] = guardian_store_anchor_seq(full, len);
            free(full);
            if (rv != CKR_OK)
                return rv;
        }
        {
            int keep = seq[1] > seq[0];
            be->C_DestroyObject(s, found[!keep]);
            found[0] = found[keep];
            n = 1;
        }
    }
    *out = cached = n == 1 ? found[0] : CK_INVALID_HANDLE;
    return CKR_OK;
}

/* The anchor's bytes (malloc'd) or *buf NULL when the token has none. */
static CK_RV read_locked(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h, uint8_t **buf, size_t *len)
{
    CK_RV rv = CKR_GENERAL_ERROR;
    *buf = NULL;
    /* A handle cached from before another process's update names an object
     * that is gone: find the anchor again (the lock keeps it from going
     * between the find and the reads). */
    for (int attempt = 0; attempt < 2; attempt++) {
        rv = find_locked(be, s, h);
        if (rv != CKR_OK || *h == CK_INVALID_HANDLE)
            return rv;
        rv = bytes_of(be, s, *h, buf, len);
        if (rv != CKR_OBJECT_HANDLE_INVALID)
            break;
        cached = CK_INVALID_HANDLE;
    }
    return rv;
}

static CK_RV write_locked(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE old, const uint8_t *buf,
                          size_t len)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_HANDLE h;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_PRIVATE, &yes, sizeof(yes)},
                        {CKA_MODIFIABLE, &no, sizeof(no)},
                        {CKA_LABEL, (void *)GUARDIAN_ANCHOR_LABEL, sizeof(GUARDIAN_ANCHOR_LABEL) - 1},
                        {CKA_APPLICATION, (void *)GUARDIAN_ANCHOR_LABEL, sizeof(GUARDIAN_ANCHOR_LABEL) - 1},
                        {CKA_VALUE, (void *)buf, (CK_ULONG)len}};
    CK_SESSION_INFO si;
    CK_SESSION_HANDLE own = CK_INVALID_HANDLE;
    CK_RV rv = be->C_GetSessionInfo(s, &si);

    if (rv != CKR_OK)
        return rv;
    /* Issuing a session certificate needs no read-write session, but a block
     * of units moves the anchor, a token object: through a read-write
     * session of our own on the same slot (the caller's login covers it). */
    if (!(si.flags & CKF_RW_SESSION)) {
        rv = be->C_OpenSession(si.slotID, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &own);
        if (rv != CKR_OK) {
            guardian_error(LOG, "cannot open a read-write session to write the state anchor: %s", ckr(rv));
            return rv;
        }
        s = own;
    }
    /* The new one first: a crash in between leaves two, and the newer wins.
     * SoftHSM fails a token object's creation now and then with
     * CKR_GENERAL_ERROR while another process reads the token's files (a
     * login): try again, 3 times. */
    for (int attempt = 0;; attempt++) {
        rv = be->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h);
        if (rv != CKR_GENERAL_ERROR || attempt == 3)
            break;
        usleep(20 * 1000);
    }
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT) {
        /* No data object on this token (NSS softoken): the secret key that
         * stands for one (above). */
        CK_OBJECT_CLASS key_cls = CKO_SECRET_KEY;
        CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
        static const CK_BYTE filler[16];
        CK_ATTRIBUTE k[] = {{CKA_CLASS, &key_cls, sizeof(key_cls)},
                            {CKA_KEY_TYPE, &kt, sizeof(kt)},
                            {CKA_TOKEN, &yes, sizeof(yes)},
                            {CKA_PRIVATE, &yes, sizeof(yes)},
                            {CKA_MODIFIABLE, &no, sizeof(no)},
                            {CKA_LABEL, (void *)GUARDIAN_ANCHOR_LABEL, sizeof(GUARDIAN_ANCHOR_LABEL) - 1},
                            {CKA_VALUE, (void *)filler, sizeof(filler)},
                            {CKA_ID, (void *)buf, (CK_ULONG)len},
                            {CKA_ENCRYPT, &no, sizeof(no)},
                            {CKA_DECRYPT, &no, sizeof(no)},
                            {CKA_SIGN, &no, sizeof(no)},
                            {CKA_VERIFY, &no, sizeof(no)},
                            {CKA_WRAP, &no, sizeof(no)},
                            {CKA_UNWRAP, &no, sizeof(no)},
                            {CKA_DERIVE, &no, sizeof(no)}};
        CK_RV data_rv = rv;
        rv = be->C_CreateObject(s, k, sizeof(k) / sizeof(k[0]), &h);
        if (rv == CKR_OK)
            guardian_debug(LOG, "the token makes no data object (%s): the anchor is a secret key's CKA_ID",
                           ckr(data_rv));
    }
    if (rv != CKR_OK) {
        guardian_error(LOG, "cannot write the state anchor into the token: %s", ckr(rv));
        goto out;
    }
    guardian_policy_forget(h);
    cached = h;
    if (old != CK_INVALID_HANDLE && be->C_DestroyObject(s, old) == CKR_OK)
        guardian_policy_forget(old);
out:
    if (own != CK_INVALID_HANDLE)
        be->C_CloseSession(own);
    return rv;
}

CK_RV guardian_anchor_check(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint8_t *buf = NULL, *now = NULL;
    size_t len = 0, now_len = 0;
    int newer = 0;
    CK_RV rv;

    pthread_mutex_lock(&lock);
    rv = guardian_store_anchor_lock(st);
    if (rv != CKR_OK) {
        pthread_mutex_unlock(&lock);
        return rv;
    }
    rv = read_locked(be, session, &h, &buf, &len);
    if (rv != CKR_OK) {
        if (rv != CKR_GUARDIAN_STATE_ROLLBACK)
            guardian_error(LOG, "cannot read the token's state anchor: %s", ckr(rv));
        goto out;
    }
    if (buf == NULL) {
        /* No anchor yet.  A new Guardian with an empty store: nothing to
         * anchor (the first import writes it).  A store with records: the
         * first run of a version with anchors; anchor what is here. */
        rv = guardian_store_anchor_get(st, &now, &now_len);
        if (rv == CKR_OK && guardian_store_anchor_seq(now, now_len) > 0) {
            rv = write_locked(be, session, CK_INVALID_HANDLE, now, now_len);
            if (rv == CKR_OK)
                guardian_warn(LOG, "the token had no state anchor: anchored the state store as it is now (record "
                                   "%llu)",
                              (unsigned long long)guardian_store_anchor_seq(now, now_len));
        }
        goto out;
    }
    rv = guardian_store_anchor_check(st, buf, len, &newer);
out:
    guardian_store_anchor_unlock(st);
    pthread_mutex_unlock(&lock);
    free(buf);
    free(now);
    return rv;
}

CK_RV guardian_anchor_compare(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st,
                              enum guardian_anchor_state *state, uint64_t *seq)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint8_t *buf = NULL;
    size_t len = 0;
    int newer = 0;
    CK_RV rv;

    *state = GUARDIAN_ANCHOR_ABSENT;
    *seq = 0;
    pthread_mutex_lock(&lock);
    rv = guardian_store_anchor_lock(st);
    if (rv == CKR_OK) {
        rv = read_locked(be, session, &h, &buf, &len);
        guardian_store_anchor_unlock(st);
    }
    pthread_mutex_unlock(&lock);
    if (rv == CKR_GUARDIAN_STATE_ROLLBACK || rv == CKR_GUARDIAN_AUDIT_CORRUPT) {
        /* More anchors than a crash leaves, or one of no plausible size. */
        *state = GUARDIAN_ANCHOR_INVALID;
        return CKR_OK;
    }
    if (rv != CKR_OK) {
        guardian_error(LOG, "cannot read the token's state anchor: %s", ckr(rv));
        return rv;
    }
    if (buf == NULL)
        return CKR_OK;
    *seq = guardian_store_anchor_seq(buf, len);
    rv = guardian_store_anchor_check(st, buf, len, &newer);
    free(buf);
    switch (rv) {
    case CKR_OK: *state = newer ? GUARDIAN_ANCHOR_STORE_AHEAD : GUARDIAN_ANCHOR_AGREES; return CKR_OK;
    case CKR_GUARDIAN_STATE_ROLLBACK: *state = GUARDIAN_ANCHOR_BEHIND; return CKR_OK;
    case CKR_GUARDIAN_AUDIT_CORRUPT: *state = GUARDIAN_ANCHOR_INVALID; return CKR_OK;
    default: return rv;
    }
}

CK_RV guardian_anchor_update(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint8_t *buf = NULL, *now = NULL;
    size_t len = 0, now_len = 0;
    int newer = 0;
    CK_RV rv;

    pthread_mutex_lock(&lock);
    rv = guardian_store_anchor_lock(st);
    if (rv != CKR_OK) {
        pthread_mutex_unlock(&lock);
        return rv;
    }
    rv = guardian_store_anchor_get(st, &now, &now_len);
    if (rv != CKR_OK)
        goto out;
    rv = read_locked(be, session, &h, &buf, &len);
    if (rv != CKR_OK)
        goto out;
    /* Never down: another process on the same store may have moved it
     * further already (then this store still has all it names: nothing to
     * write).  A store that no longer has what the anchor names is another
     * store, raced past the check by a process on the genuine one: refused,
     * so that both cannot grant the same units. */
    if (buf != NULL) {
        rv = guardian_store_anchor_check(st, buf, len, &newer);
        if (rv != CKR_OK || !newer)
            goto out;
    }
    rv = write_locked(be, session, h, now, now_len);
out:
    guardian_store_anchor_unlock(st);
    pthread_mutex_unlock(&lock);
    free(buf);
    free(now);
    return rv;
}
