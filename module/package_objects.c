/*
 * package_objects.c — the CKO_GUARDIAN_PACKAGE objects, served by the module.
 *
 * SoftHSMv2 (like many HSMs) stores no vendor object classes, so the package
 * objects live here: one per installed product release, read from the store.
 * Their handles are in a reserved range (GUARDIAN_VOBJ_BASE | n) that the
 * module intercepts in C_GetAttributeValue, C_FindObjects*, C_DestroyObject,
 * C_SetAttributeValue, C_CopyObject and C_GetObjectSize; every other handle
 * goes to the backend untouched.  The range is chosen far from the small
 * sequential handles backends hand out; docs/unwrap-mechanism.md says so.
 *
 * Cost on the hot path: C_GetAttributeValue and C_FindObjects test one handle
 * range or one atomic counter; C_FindObjectsInit matches the template against
 * an in-memory list of the (few) products, refreshed from the store at most
 * once a second and after every import.
 *
 * They are the Guardian token's: a package object appears only to sessions
 * on the token its release was imported into, the one that holds that
 * release's production CA certificate (CKA_ID the package ID, label
 * "guardian:<oem>/<product>/r<n>:production-ca-cert0": a public object, so
 * the answer is the same logged in or not, and a label callers cannot make
 * through the module, policy.c).  A session on another token of the backend
 * (a second SoftHSM token, another slot of the HSM) neither finds it nor
 * reads it (CKR_OBJECT_HANDLE_INVALID), as it finds none of that token's
 * keys.  The backend is asked in a session of the module's own (the caller's
 * may have a search active), and the answer kept per slot for a second, like
 * the products, and forgotten at each import.
 *
 * The search machinery here also serves the certificate objects of
 * cert_objects.c: a search that may find either kind of module object gets a
 * find_state, whose matches (package objects, then certificate objects) follow
 * the backend's.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "module.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define MAX_PRODUCTS 256
#define MAX_FINDS 64
#define MAX_SLOTS 16

struct vobj {
    CK_OBJECT_HANDLE handle;
    struct guardian_product p;
    char label[2 * GUARDIAN_ID_MAX + 40];
};

struct find_state {
    int active;
    CK_SESSION_HANDLE session;
    CK_BBOOL backend_active;
    CK_OBJECT_HANDLE *matches; /* malloc'd: up to 256 packages and 65,535 certificates */
    CK_ULONG n, pos;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct vobj objs[MAX_PRODUCTS];
static size_t n_objs;
static atomic_size_t n_objs_visible; /* n_objs, readable without the lock */
static CK_OBJECT_HANDLE next_handle = GUARDIAN_VOBJ_BASE + 1;
static atomic_llong refreshed_at; /* time() of the last refresh */
static struct find_state finds[MAX_FINDS];
static atomic_int n_finds; /* read without the lock on every C_FindObjects */
/* Which products' releases each slot's token holds (bit i: objs[i]), asked
 * at most once a second per slot. */
static struct {
    CK_SLOT_ID slot;
    long long at; /* time() of the answer; 0: free */
    uint64_t present[MAX_PRODUCTS / 64];
} slots_seen[MAX_SLOTS];

/* Free a search's slot (the lock held; the caller counts n_finds). */
static void end_find_locked(struct find_state *f)
{
    free(f->matches);
    memset(f, 0, sizeof(*f));
}

static CK_RV refresh_one(const struct guardian_product *p, void *ctx)
{
    size_t i;
    (void)ctx;
    for (i = 0; i < n_objs; i++)
        if (strcmp(objs[i].p.oem_id, p->oem_id) == 0 && strcmp(objs[i].p.product_id, p->product_id) == 0)
            break;
    if (i == n_objs) {
        if (n_objs == MAX_PRODUCTS)
            return CKR_OK; /* more products than package objects: the rest stay in the store */
        objs[n_objs++].handle = next_handle++;
        atomic_store(&n_objs_visible, n_objs);
    }
    objs[i].p = *p;
    snprintf(objs[i].label, sizeof(objs[i].label), "guardian-package:%s/%s/r%u", p->oem_id, p->product_id,
             p->release_version);
    return CKR_OK;
}

/* The store, quietly: NULL when there is none (a plain PKCS#11 user of the
 * module may have no state directory).  Called before taking `lock`, so that
 * `lock` never nests the module's init lock. */
static struct guardian_store *store_or_null(void)
{
    struct guardian_store *st = NULL;
    return guardian_state_store_quiet(&st) == CKR_OK ? st : NULL;
}

/* With the lock held. */
static void refresh_locked(struct guardian_store *st, int force)
{
    long long now = (long long)time(NULL);
    if (!force && now == atomic_load(&refreshed_at))
        return;
    atomic_store(&refreshed_at, now); /* also without a store: look again in a second */
    if (st == NULL)
        return;
    guardian_store_products_each(st, refresh_one, NULL);
}

static int ours_only(const CK_ATTRIBUTE *templ, CK_ULONG count);

int guardian_package_objects_idle(const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    return atomic_load_explicit(&n_objs_visible, memory_order_relaxed) == 0 &&
           atomic_load_explicit(&n_finds, memory_order_relaxed) == 0 &&
           atomic_load_explicit(&refreshed_at, memory_order_relaxed) == (long long)time(NULL) &&
           (templ == NULL || !ours_only(templ, count));
}

int guardian_package_objects_searching(void)
{
    return atomic_load_explicit(&n_finds, memory_order_relaxed) != 0;
}

void guardian_package_objects_reset(void)
{
    pthread_mutex_lock(&lock);
    n_objs = 0;
    memset(slots_seen, 0, sizeof(slots_seen));
    atomic_store(&n_objs_visible, 0);
    atomic_store(&refreshed_at, 0);
    for (int i = 0; i < MAX_FINDS; i++)
        if (finds[i].active)
            end_find_locked(&finds[i]);
    atomic_store(&n_finds, 0);
    pthread_mutex_unlock(&lock);
}

void guardian_package_objects_atfork_child(void)
{
    /* The objects and searches stay until the child's C_Initialize resets them. */
    pthread_mutex_init(&lock, NULL);
}

CK_OBJECT_HANDLE guardian_package_object_handle(const char *oem_id, const char *product_id)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    struct guardian_store *st = store_or_null();
    pthread_mutex_lock(&lock);
    refresh_locked(st, 1);
    memset(slots_seen, 0, sizeof(slots_seen)); /* after an import: ask the tokens again */
    for (size_t i = 0; i < n_objs; i++)
        if (strcmp(objs[i].p.oem_id, oem_id) == 0 && strcmp(objs[i].p.product_id, product_id) == 0)
            h = objs[i].handle;
    pthread_mutex_unlock(&lock);
    return h;
}

/* ---- the token a release was imported into ------------------------------------ */

/* What identifies a release on its token: its production CA certificate. */
struct release_mark {
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    char label[2 * GUARDIAN_ID_MAX + 48];
};

/* Sets bit i of `present` for each mark the token in `slot` holds, asked in a
 * session of our own, without the lock.  A read/write one where the token
 * allows it: a read-only session, even for a moment, would make another
 * thread's C_Login(CKU_SO) fail with CKR_SESSION_READ_ONLY_EXISTS. */
static CK_RV ask_token(CK_FUNCTION_LIST *be, CK_SLOT_ID slot, const struct release_mark *marks, size_t n,
                       uint64_t present[MAX_PRODUCTS / 64])
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_SESSION_HANDLE own = CK_INVALID_HANDLE;
    CK_RV rv = be->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &own);

    if (rv == CKR_TOKEN_WRITE_PROTECTED)
        rv = be->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &own);

    memset(present, 0, MAX_PRODUCTS / 8);
    for (size_t i = 0; rv == CKR_OK && i < n; i++) {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_ID, (void *)marks[i].package_id, GUARDIAN_PACKAGE_ID_LEN},
                            {CKA_LABEL, (void *)marks[i].label, (CK_ULONG)strlen(marks[i].label)}};
        CK_OBJECT_HANDLE h;
        CK_ULONG got = 0;
        rv = be->C_FindObjectsInit(own, t, 3);
        if (rv != CKR_OK)
            break;
        rv = be->C_FindObjects(own, &h, 1, &got);
        be->C_FindObjectsFinal(own);
        if (rv == CKR_OK && got == 1)
            present[i / 64] |= (uint64_t)1 << (i % 64);
    }
    if (own != CK_INVALID_HANDLE)
        be->C_CloseSession(own);
    return rv;
}

/* Which package objects belong to the session's token: bit i for objs[i]. */
static CK_RV token_releases(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, uint64_t present[MAX_PRODUCTS / 64])
{
    CK_SESSION_INFO si;
    long long now = (long long)time(NULL);
    int hit = -1, slot_i = -1, free_i = -1, oldest = 0;
    struct release_mark *marks = NULL;
    size_t n = 0;
    CK_RV rv = be->C_GetSessionInfo(s, &si);

    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_SLOTS && hit < 0; i++)
        if (slots_seen[i].at == now && slots_seen[i].slot == si.slotID)
            hit = i;
    if (hit >= 0) {
        memcpy(present, slots_seen[hit].present, sizeof(slots_seen[hit].present));
        pthread_mutex_unlock(&lock);
        return CKR_OK;
    }
    n = n_objs;
    marks = n > 0 ? calloc(n, sizeof(*marks)) : NULL;
    for (size_t i = 0; marks != NULL && i < n; i++) {
        memcpy(marks[i].package_id, objs[i].p.package_id, GUARDIAN_PACKAGE_ID_LEN);
        snprintf(marks[i].label, sizeof(marks[i].label), "guardian:%s/%s/r%u:production-ca-cert0", objs[i].p.oem_id,
                 objs[i].p.product_id, objs[i].p.release_version);
    }
    pthread_mutex_unlock(&lock);
    if (n > 0 && marks == NULL)
        return CKR_HOST_MEMORY;
    rv = ask_token(be, si.slotID, marks, n, present);
    free(marks);
    if (rv != CKR_OK) {
        guardian_debug("objects", "cannot tell which releases the token in slot %lu holds: %s",
                       (unsigned long)si.slotID, guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "vendor CKR");
        return rv;
    }
    /* Keep the answer: in the slot's entry, a free one, or the oldest. */
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_SLOTS; i++) {
        if (slots_seen[i].at != 0 && slots_seen[i].slot == si.slotID)
            slot_i = i;
        else if (slots_seen[i].at == 0 && free_i < 0)
            free_i = i;
        if (slots_seen[i].at < slots_seen[oldest].at)
            oldest = i;
    }
    hit = slot_i >= 0 ? slot_i : free_i >= 0 ? free_i : oldest;
    slots_seen[hit].slot = si.slotID;
    slots_seen[hit].at = now;
    memcpy(slots_seen[hit].present, present, sizeof(slots_seen[hit].present));
    pthread_mutex_unlock(&lock);
    return CKR_OK;
}

static int has_release(const uint64_t present[MAX_PRODUCTS / 64], size_t i)
{
    return (present[i / 64] >> (i % 64)) & 1;
}

/* ---- attributes -------------------------------------------------------------- */

/* One attribute of `obj` (a struct vobj): a guardian_attr_fn. */
static CK_RV attribute(const void *obj, CK_ATTRIBUTE *a)
{
    const struct vobj *o = obj;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_PACKAGE;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG v = 0, len = sizeof(v);
    const void *p = &v; /* the CK_ULONG attributes */

    switch (a->type) {
    case CKA_CLASS: p = &cls, len = sizeof(cls); break;
    case CKA_TOKEN: p = &yes, len = sizeof(yes); break;
    case CKA_PRIVATE: case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE: p = &no, len = sizeof(no); break;
    case CKA_LABEL: p = o->label, len = strlen(o->label); break;
    case CKA_ID: case CKA_GUARDIAN_PACKAGE_ID: p = o->p.package_id, len = sizeof(o->p.package_id); break;
    case CKA_GUARDIAN_OEM_ID: p = o->p.oem_id, len = strlen(o->p.oem_id); break;
    case CKA_GUARDIAN_PRODUCT_ID: p = o->p.product_id, len = strlen(o->p.product_id); break;
    case CKA_GUARDIAN_RELEASE: v = o->p.release_version; break;
    case CKA_GUARDIAN_AUTHORISED_UNITS: v = (CK_ULONG)o->p.authorised_units; break;
    case CKA_GUARDIAN_ISSUED_UNITS: v = (CK_ULONG)o->p.issued_units; break;
    case CKA_GUARDIAN_REMAINING_UNITS: v = (CK_ULONG)o->p.remaining_units; break;
    case CKA_GUARDIAN_NOT_AFTER: v = (CK_ULONG)o->p.not_after; break;
    default: return guardian_attr_invalid(a);
    }
    return guardian_attr_put(a, p, len);
}

static struct vobj *lookup_locked(CK_OBJECT_HANDLE h)
{
    for (size_t i = 0; i < n_objs; i++)
        if (objs[i].handle == h)
            return &objs[i];
    return NULL;
}

CK_RV guardian_package_objects_get(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h,
                                   CK_ATTRIBUTE_PTR templ, CK_ULONG count)
{
    struct vobj *o, copy;
    uint64_t present[MAX_PRODUCTS / 64];
    size_t i = 0;
    struct guardian_store *st = store_or_null();
    CK_RV rv;

    pthread_mutex_lock(&lock);
    refresh_locked(st, 1); /* counters are live */
    pthread_mutex_unlock(&lock);
    if ((rv = token_releases(be, session, present)) != CKR_OK)
        return rv;
    pthread_mutex_lock(&lock);
    o = lookup_locked(h);
    if (o != NULL) {
        copy = *o;
        i = (size_t)(o - objs);
    }
    pthread_mutex_unlock(&lock);
    /* Another token's session: not its object. */
    if (o == NULL || !has_release(present, i))
        return CKR_OBJECT_HANDLE_INVALID;
    return guardian_attr_fill(&copy, attribute, templ, count);
}

CK_RV guardian_package_objects_size(CK_OBJECT_HANDLE h, CK_ULONG_PTR size)
{
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
    if (size == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    if (lookup_locked(h) != NULL) {
        *size = sizeof(struct vobj);
        rv = CKR_OK;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

/* ---- finding --------------------------------------------------------------------- */

/* Does `o` match every attribute of the template? */
static int matches(const struct vobj *o, const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    for (CK_ULONG i = 0; i < count; i++) {
        unsigned char buf[256];
        CK_ATTRIBUTE a = {templ[i].type, buf, sizeof(buf)};
        if (attribute(o, &a) != CKR_OK || !guardian_attr_equal(&templ[i], buf, a.ulValueLen))
            return 0;
    }
    return 1;
}

/* Could the backend object store see these attributes at all?  Templates that
 * ask for our class or our attributes are ours alone. */
static int ours_only(const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    for (CK_ULONG i = 0; i < count; i++) {
        if (GUARDIAN_IS_VENDOR_VALUE(CKA_GUARDIAN_BASE, templ[i].type))
            return 1;
        if (templ[i].type == CKA_CLASS && templ[i].pValue != NULL && templ[i].ulValueLen == sizeof(CK_OBJECT_CLASS) &&
            *(const CK_OBJECT_CLASS *)templ[i].pValue == CKO_GUARDIAN_PACKAGE)
            return 1;
    }
    return 0;
}

static struct find_state *find_locked(CK_SESSION_HANDLE s)
{
    for (int i = 0; i < MAX_FINDS; i++)
        if (finds[i].active && finds[i].session == s)
            return &finds[i];
    return NULL;
}

void guardian_package_objects_session_closed(CK_SESSION_HANDLE s)
{
    if (GUARDIAN_LIKELY(atomic_load_explicit(&n_finds, memory_order_relaxed) == 0))
        return;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_FINDS; i++)
        if (finds[i].active && (s == CK_INVALID_HANDLE || finds[i].session == s)) {
            end_find_locked(&finds[i]);
            atomic_fetch_sub(&n_finds, 1);
        }
    pthread_mutex_unlock(&lock);
}

CK_RV guardian_package_objects_find_init(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR templ,
                                         CK_ULONG count)
{
    CK_OBJECT_HANDLE found[MAX_PRODUCTS], *certs = NULL, *all = NULL;
    uint64_t present[MAX_PRODUCTS / 64];
    CK_ULONG n = 0, n_certs = 0;
    int only = templ != NULL && ours_only(templ, count);
    struct find_state *f = NULL;
    struct guardian_store *st = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (templ == NULL && count != 0)
        return be->C_FindObjectsInit(s, templ, count);
    /* The store is read at most once a second here. */
    if (atomic_load_explicit(&refreshed_at, memory_order_relaxed) != (long long)time(NULL)) {
        st = store_or_null();
        pthread_mutex_lock(&lock);
        refresh_locked(st, 0);
        pthread_mutex_unlock(&lock);
    }
    /* The usual case, without taking the lock: no package object exists, no
     * search of ours is active, the template is not ours, and no certificate
     * object could match. */
    if (GUARDIAN_LIKELY(atomic_load_explicit(&n_objs_visible, memory_order_relaxed) == 0 &&
                        atomic_load_explicit(&n_finds, memory_order_relaxed) == 0 && !only &&
                        guardian_cert_objects_idle(templ, count)))
        return be->C_FindObjectsInit(s, templ, count);
    pthread_mutex_lock(&lock);
    if (atomic_load(&n_finds) > 0 && find_locked(s) != NULL) {
        pthread_mutex_unlock(&lock);
        return CKR_OPERATION_ACTIVE;
    }
    pthread_mutex_unlock(&lock);
    /* Package objects of the session's token only. */
    memset(present, 0, sizeof(present));
    if (atomic_load_explicit(&n_objs_visible, memory_order_relaxed) > 0 &&
        (rv = token_releases(be, s, present)) != CKR_OK)
        return rv;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_objs; i++)
        if (has_release(present, i) && matches(&objs[i], templ, count))
            found[n++] = objs[i].handle;
    pthread_mutex_unlock(&lock);
    /* A template that is ours alone names our class or attributes: no
     * certificate object has them. */
    if (!only) {
        rv = guardian_cert_objects_match(be, s, templ, count, &certs, &n_certs);
        if (rv != CKR_OK)
            return rv;
    }

    if (n == 0 && n_certs == 0 && !only)
        return be->C_FindObjectsInit(s, templ, count); /* the usual case: nothing of ours */

    if (n + n_certs > 0) {
        all = malloc((n + n_certs) * sizeof(*all));
        if (all == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        memcpy(all, found, n * sizeof(*all));
        if (n_certs > 0)
            memcpy(all + n, certs, n_certs * sizeof(*all));
    }
    if (only) {
        CK_SESSION_INFO si;
        rv = be->C_GetSessionInfo(s, &si);
    } else {
        rv = be->C_FindObjectsInit(s, templ, count);
    }
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_FINDS && f == NULL; i++)
        if (!finds[i].active)
            f = &finds[i];
    if (f == NULL) {
        pthread_mutex_unlock(&lock);
        if (!only)
            be->C_FindObjectsFinal(s);
        guardian_error("objects", "more than %d concurrent searches that include module objects", MAX_FINDS);
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    f->active = 1;
    f->session = s;
    f->backend_active = only ? CK_FALSE : CK_TRUE;
    f->matches = all;
    all = NULL;
    f->n = n + n_certs;
    f->pos = 0;
    atomic_fetch_add(&n_finds, 1);
    pthread_mutex_unlock(&lock);
    rv = CKR_OK;
out:
    free(all);
    free(certs);
    return rv;
}

/* CKR_OK and *handled = 1 when the session has a search that includes module
 * objects; *handled = 0 means: forward to the backend as is. */
CK_RV guardian_package_objects_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out,
                                    CK_ULONG max, CK_ULONG_PTR count, int *handled)
{
    struct find_state *f;
    CK_ULONG got = 0;
    CK_RV rv = CKR_OK;

    *handled = 0;
    if (GUARDIAN_LIKELY(atomic_load_explicit(&n_finds, memory_order_relaxed) == 0))
        return CKR_OK;
    pthread_mutex_lock(&lock);
    f = find_locked(s);
    pthread_mutex_unlock(&lock);
    if (f == NULL)
        return CKR_OK;
    *handled = 1;
    if (out == NULL || count == NULL)
        return CKR_ARGUMENTS_BAD;
    if (f->backend_active) {
        rv = be->C_FindObjects(s, out, max, &got);
        if (rv != CKR_OK)
            return rv;
    }
    pthread_mutex_lock(&lock);
    while (got < max && f->pos < f->n)
        out[got++] = f->matches[f->pos++];
    pthread_mutex_unlock(&lock);
    *count = got;
    return CKR_OK;
}

CK_RV guardian_package_objects_find_final(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, int *handled)
{
    struct find_state *f;
    CK_RV rv = CKR_OK;

    *handled = 0;
    if (GUARDIAN_LIKELY(atomic_load_explicit(&n_finds, memory_order_relaxed) == 0))
        return CKR_OK;
    pthread_mutex_lock(&lock);
    f = find_locked(s);
    if (f != NULL) {
        *handled = 1;
        if (f->backend_active)
            rv = be->C_FindObjectsFinal(s);
        end_find_locked(f);
        atomic_fetch_sub(&n_finds, 1);
    }
    pthread_mutex_unlock(&lock);
    return rv;
}
