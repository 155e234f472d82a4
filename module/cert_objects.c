/*
 * cert_objects.c — the certificate session objects, held by the module.
 *
 * CKM_GUARDIAN_DERIVE_DEVICE_CERT hands back one CKO_CERTIFICATE session
 * object per device, hundreds of thousands in a production run, each destroyed
 * by the caller once read.  SoftHSMv2 2.6.1 keeps destroyed session objects in
 * memory until C_Finalize and scans all of them on every C_FindObjects, so
 * these objects live here instead: one allocation each (values included),
 * handles GUARDIAN_COBJ_BASE | n with n in 1..0xFFFF, found in O(1) through a
 * table indexed by n.
 *
 * Numbers: the never-used ones first, then destroyed ones in the order they
 * were destroyed (a FIFO), so a stale handle stays invalid for as long as
 * possible and a live one is never handed out twice.  At most 65,535 live
 * objects (CKR_HOST_MEMORY beyond).  The tables are static and zero: pages are
 * touched only as numbers are used (640 KiB after 65,535 objects).
 *
 * Lifetime: C_DestroyObject, C_CloseSession of the creating session,
 * C_CloseAllSessions of its slot, C_Initialize and C_Finalize (which also
 * covers a forked child: it must call C_Initialize).  Like every session
 * object they are visible to all sessions of the application.
 *
 * Visibility: an object is made in two steps (guardian_cert_object_prepare,
 * then _publish or _discard), so the derive mechanism can write the
 * certificate's ISSUE record in between: a prepared object holds a handle
 * number that no one else can get, but no call can find it or read it.
 *
 * Request outputs (guardian_output_object_create): the same objects, of class
 * CKO_DATA and private, for every request's answer (status, probe, CSR, audit
 * report...).  NSS softoken 3.87 refuses every private CKO_DATA, so the
 * backend cannot hold them there; held here they have one form everywhere.  A
 * private object is seen only by sessions of its slot whose backend session
 * is logged in as the user (what the backend's own private object would
 * get): found, read and destroyed by those only.
 *
 * Cost on the hot path: none but one relaxed load of guardian_cert_objects_live
 * in C_FindObjectsInit; handles are told apart with one mask compare
 * (guardian_is_module_object).  One mutex guards the tables; it is never held
 * across a backend call.
 */
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>

#include "module.h"

#define MAX_OBJECTS 0xFFFFu
#define CHECK_VALUE_LEN 3

/* The per-object values, in the order they follow the header. */
enum { V_VALUE, V_SUBJECT, V_ISSUER, V_SERIAL, V_ID, V_LABEL, N_VALUES };

struct cobj {
    struct cobj *prev, *next; /* the list of live objects */
    CK_OBJECT_HANDLE handle;
    CK_SESSION_HANDLE session;
    CK_SLOT_ID slot;
    unsigned generation; /* of the tables its number was taken from */
    size_t size; /* of this allocation: C_GetObjectSize */
    int output; /* a request's output (CKO_DATA, private), not a certificate */
    const unsigned char *value[N_VALUES];
    CK_ULONG len[N_VALUES];
    unsigned char check_value[CHECK_VALUE_LEN];
    unsigned char data[]; /* the values, one after the other */
};

atomic_ulong guardian_cert_objects_live;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct cobj *slots[MAX_OBJECTS + 1];   /* by number; [0] unused */
static uint16_t free_next[MAX_OBJECTS + 1];   /* the FIFO of destroyed numbers */
static unsigned free_head, free_tail;         /* 0: empty */
static unsigned fresh = 1;                    /* fresh..MAX_OBJECTS never used yet */
static struct cobj *live;                     /* head of the list of live objects */
static unsigned generation;                   /* counts resets: a prepared object from before one is void */

/* ---- numbers and the live list (with the lock held) ------------------------- */

static unsigned take_number_locked(void)
{
    unsigned n;
    if (fresh <= MAX_OBJECTS)
        return fresh++;
    n = free_head;
    if (n != 0) {
        free_head = free_next[n];
        if (free_head == 0)
            free_tail = 0;
    }
    return n; /* 0: all 65,535 are live */
}

static void link_locked(struct cobj *o)
{
    slots[o->handle & MAX_OBJECTS] = o;
    o->prev = NULL;
    o->next = live;
    if (live != NULL)
        live->prev = o;
    live = o;
    atomic_fetch_add(&guardian_cert_objects_live, 1);
}

/* Number `n` goes to the end of the FIFO of destroyed numbers. */
static void give_back_number_locked(unsigned n)
{
    free_next[n] = 0;
    if (free_tail != 0)
        free_next[free_tail] = (uint16_t)n;
    else
        free_head = n;
    free_tail = n;
}

/* Take `o` out of the tables; the caller frees it after unlocking. */
static void unlink_locked(struct cobj *o)
{
    unsigned n = (unsigned)(o->handle & MAX_OBJECTS);

    slots[n] = NULL;
    give_back_number_locked(n);
    if (o->prev != NULL)
        o->prev->next = o->next;
    else
        live = o->next;
    if (o->next != NULL)
        o->next->prev = o->prev;
    o->next = NULL;
    atomic_fetch_sub(&guardian_cert_objects_live, 1);
}

static struct cobj *lookup_locked(CK_OBJECT_HANDLE h)
{
    return guardian_is_cert_object(h) ? slots[h & MAX_OBJECTS] : NULL;
}

/* May a session (its backend's answer `si`) see `o`?  A private output only
 * on its slot and logged in as the user, as the backend hides its own private
 * objects. */
static int visible(const struct cobj *o, const CK_SESSION_INFO *si)
{
    if (!o->output)
        return 1;
    return si->slotID == o->slot && (si->state == CKS_RO_USER_FUNCTIONS || si->state == CKS_RW_USER_FUNCTIONS);
}

/* For a call on `h` in `session`: the session must be valid (the backend's
 * error otherwise), the object live and visible to it
 * (CKR_OBJECT_HANDLE_INVALID).  On CKR_OK the lock is held and *o is the
 * object. */
static CK_RV lock_object(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h, struct cobj **o)
{
    CK_SESSION_INFO si;
    CK_RV rv = be->C_GetSessionInfo(session, &si);

    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&lock);
    *o = lookup_locked(h);
    if (*o == NULL || !visible(*o, &si)) {
        pthread_mutex_unlock(&lock);
        return CKR_OBJECT_HANDLE_INVALID;
    }
    return CKR_OK;
}

/* Free a chain of unlinked objects (linked through `next`). */
static void free_chain(struct cobj *o)
{
    while (o != NULL) {
        struct cobj *next = o->next;
        free(o);
        o = next;
    }
}

/* ---- creating ------------------------------------------------------------------ */

/* module.h's name for a prepared object is this file's struct cobj. */
static struct cobj *prepared(struct guardian_cert_object *p)
{
    return (struct cobj *)(void *)p;
}

CK_RV guardian_cert_object_prepare(CK_SESSION_HANDLE session, const struct guardian_cert_object_value *v,
                                   struct guardian_cert_object **out)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    const void *src[N_VALUES];
    size_t len[N_VALUES], total = sizeof(struct cobj), off = 0;
    CK_SESSION_INFO si;
    struct cobj *o = NULL;
    unsigned n;
    CK_RV rv = CKR_GENERAL_ERROR;

    return_val_if_fail(v != NULL && out != NULL, CKR_ARGUMENTS_BAD);
    return_val_if_fail(v->der != NULL && (v->der_len > 0 || v->output), CKR_ARGUMENTS_BAD);
    if (be == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    memset(&si, 0, sizeof(si));
    rv = be->C_GetSessionInfo(session, &si);
    if (rv != CKR_OK)
        return rv;

    src[V_VALUE] = v->der, len[V_VALUE] = v->der_len;
    src[V_SUBJECT] = v->subject, len[V_SUBJECT] = v->subject != NULL ? v->subject_len : 0;
    src[V_ISSUER] = v->issuer, len[V_ISSUER] = v->issuer != NULL ? v->issuer_len : 0;
    src[V_SERIAL] = v->serial, len[V_SERIAL] = v->serial != NULL ? v->serial_len : 0;
    src[V_ID] = v->id, len[V_ID] = v->id != NULL ? v->id_len : 0;
    src[V_LABEL] = v->label, len[V_LABEL] = v->label != NULL ? strlen(v->label) : 0;
    for (int i = 0; i < N_VALUES; i++) {
        return_val_if_fail(len[i] <= SIZE_MAX - total, CKR_ARGUMENTS_BAD);
        total += len[i];
    }
    o = malloc(total);
    if (o == NULL)
        return CKR_HOST_MEMORY;
    memset(o, 0, sizeof(*o));
    o->session = session;
    o->slot = si.slotID;
    o->size = total;
    o->output = v->output != 0;
    for (int i = 0; i < N_VALUES; i++) {
        o->value[i] = o->data + off;
        o->len[i] = (CK_ULONG)len[i];
        if (len[i] > 0)
            memcpy(o->data + off, src[i], len[i]);
        off += len[i];
    }
    /* PKCS#11 3.0 4.6.2: the first three bytes of the SHA-1 of CKA_VALUE. */
    {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1(v->der, v->der_len, md);
        memcpy(o->check_value, md, CHECK_VALUE_LEN);
    }

    /* The number is this object's from now on, but it is in no table: no
     * call can find the object or read it until it is published. */
    pthread_mutex_lock(&lock);
    n = take_number_locked();
    if (n != 0) {
        o->handle = GUARDIAN_COBJ_BASE | n;
        o->generation = generation;
    }
    pthread_mutex_unlock(&lock);
    if (n == 0) {
        guardian_error("objects", "%u certificate objects exist already: destroy some first", MAX_OBJECTS);
        free(o);
        return CKR_HOST_MEMORY;
    }
    *out = (struct guardian_cert_object *)(void *)o;
    return CKR_OK;
}

CK_RV guardian_cert_object_publish(struct guardian_cert_object *p, CK_OBJECT_HANDLE *out)
{
    struct cobj *o = prepared(p);
    int current;

    return_val_if_fail(o != NULL && out != NULL, CKR_ARGUMENTS_BAD);
    pthread_mutex_lock(&lock);
    current = o->generation == generation;
    if (current)
        link_locked(o);
    pthread_mutex_unlock(&lock);
    if (!current) {
        /* C_Finalize (or C_Initialize) ran meanwhile and ended every
         * session, this object's too; the tables it was numbered in are gone. */
        free(o);
        return CKR_SESSION_HANDLE_INVALID;
    }
    *out = o->handle;
    guardian_debug("objects", "%s object %#lx created in session %lu", o->output ? "output" : "certificate", *out,
                   o->session);
    return CKR_OK;
}

void guardian_cert_object_discard(struct guardian_cert_object *p)
{
    struct cobj *o = prepared(p);

    if (o == NULL)
        return;
    pthread_mutex_lock(&lock);
    if (o->generation == generation)
        give_back_number_locked((unsigned)(o->handle & MAX_OBJECTS));
    pthread_mutex_unlock(&lock);
    free(o);
}

CK_RV guardian_cert_object_create(CK_SESSION_HANDLE session, const struct guardian_cert_object_value *v,
                                  CK_OBJECT_HANDLE *out)
{
    struct guardian_cert_object *p = NULL;
    CK_RV rv = guardian_cert_object_prepare(session, v, &p);

    if (rv != CKR_OK)
        return rv;
    return guardian_cert_object_publish(p, out);
}

CK_RV guardian_output_object_create(CK_SESSION_HANDLE session, const char *label, const uint8_t *value, size_t len,
                                    CK_OBJECT_HANDLE *out)
{
    static const uint8_t empty[1];
    struct guardian_cert_object_value v;

    return_val_if_fail(label != NULL && (value != NULL || len == 0), CKR_ARGUMENTS_BAD);
    memset(&v, 0, sizeof(v));
    v.der = value != NULL ? value : empty, v.der_len = len;
    v.label = label;
    v.output = 1;
    return guardian_cert_object_create(session, &v, out);
}

/* ---- attributes ------------------------------------------------------------------ */

static const CK_OBJECT_CLASS class_certificate = CKO_CERTIFICATE, class_data = CKO_DATA;
static const CK_CERTIFICATE_TYPE type_x509 = CKC_X_509;
static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
/* CK_CERTIFICATE_CATEGORY_UNSPECIFIED, CK_SECURITY_DOMAIN_UNSPECIFIED */
static const CK_ULONG unspecified = 0;

enum { ATTR_NONE, ATTR_FIXED, ATTR_PER_OBJECT };

/* Where attribute `type` is.  ATTR_FIXED: the same for every object (*p, *len
 * set); ATTR_PER_OBJECT: *p, *len set when `o` is not NULL; ATTR_NONE: the
 * objects have no such attribute (`o` NULL: none of either kind). */
static int where(const struct cobj *o, CK_ATTRIBUTE_TYPE type, const void **p, CK_ULONG *len)
{
    int i;

    /* The two kinds: what only one has, and what differs between them. */
    switch (type) {
    case CKA_CLASS: case CKA_PRIVATE:
        if (o != NULL && type == CKA_CLASS)
            *p = o->output ? &class_data : &class_certificate, *len = sizeof(CK_OBJECT_CLASS);
        else if (o != NULL)
            *p = o->output ? &yes : &no, *len = sizeof(CK_BBOOL);
        return ATTR_PER_OBJECT;
    case CKA_APPLICATION: case CKA_OBJECT_ID:
        if (o != NULL && !o->output)
            return ATTR_NONE;
        *p = &unspecified, *len = 0;
        return ATTR_PER_OBJECT;
    case CKA_TOKEN: case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE: case CKA_LABEL: case CKA_VALUE:
        break;
    default:
        if (o != NULL && o->output)
            return ATTR_NONE;
        break;
    }
    switch (type) {
#define FIXED(x) *p = &(x), *len = sizeof(x); return ATTR_FIXED
    case CKA_CERTIFICATE_TYPE: FIXED(type_x509);
    case CKA_TOKEN: case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_TRUSTED: FIXED(no);
    case CKA_DESTROYABLE: FIXED(yes);
    case CKA_CERTIFICATE_CATEGORY: case CKA_JAVA_MIDP_SECURITY_DOMAIN: FIXED(unspecified);
#undef FIXED
    case CKA_START_DATE: case CKA_END_DATE: case CKA_URL: case CKA_HASH_OF_SUBJECT_PUBLIC_KEY:
    case CKA_HASH_OF_ISSUER_PUBLIC_KEY:
        *p = &unspecified, *len = 0;
        return ATTR_FIXED;
    case CKA_CHECK_VALUE:
        if (o != NULL)
            *p = o->check_value, *len = CHECK_VALUE_LEN;
        return ATTR_PER_OBJECT;
    case CKA_VALUE: i = V_VALUE; break;
    case CKA_SUBJECT: i = V_SUBJECT; break;
    case CKA_ISSUER: i = V_ISSUER; break;
    case CKA_SERIAL_NUMBER: i = V_SERIAL; break;
    case CKA_ID: i = V_ID; break;
    case CKA_LABEL: i = V_LABEL; break;
    default: return ATTR_NONE;
    }
    if (o != NULL)
        *p = o->value[i], *len = o->len[i];
    return ATTR_PER_OBJECT;
}

static CK_RV attribute(const void *obj, CK_ATTRIBUTE *a)
{
    const void *p = NULL;
    CK_ULONG len = 0;
    if (where(obj, a->type, &p, &len) == ATTR_NONE)
        return guardian_attr_invalid(a);
    return guardian_attr_put(a, p, len);
}

CK_RV guardian_cert_objects_get(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h,
                                CK_ATTRIBUTE_PTR templ, CK_ULONG count)
{
    struct cobj *o = NULL;
    CK_RV rv = lock_object(be, session, h, &o);

    if (rv != CKR_OK)
        return rv;
    /* Copied out under the lock: another thread may destroy the object. */
    rv = guardian_attr_fill(o, attribute, templ, count);
    pthread_mutex_unlock(&lock);
    return rv;
}

CK_RV guardian_cert_objects_size(CK_OBJECT_HANDLE h, CK_ULONG_PTR size)
{
    struct cobj *o;
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;

    if (size == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    o = lookup_locked(h);
    if (o != NULL) {
        *size = (CK_ULONG)o->size;
        rv = CKR_OK;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

/* ---- finding --------------------------------------------------------------------- */

/* Does `o` (or, with `o` NULL, could any object) match the template? */
static int matches(const struct cobj *o, const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    for (CK_ULONG i = 0; i < count; i++) {
        const void *p = NULL;
        CK_ULONG len = 0;
        int kind;
        /* Could any: a class other than these two keeps a search (of keys,
         * say) on the backend's fast path while certificates are live. */
        if (o == NULL && templ[i].type == CKA_CLASS) {
            if (!guardian_attr_equal(&templ[i], &class_certificate, sizeof(class_certificate)) &&
                !guardian_attr_equal(&templ[i], &class_data, sizeof(class_data)))
                return 0;
            continue;
        }
        kind = where(o, templ[i].type, &p, &len);
        if (kind == ATTR_NONE || ((kind == ATTR_FIXED || o != NULL) && !guardian_attr_equal(&templ[i], p, len)))
            return 0;
    }
    return 1;
}

int guardian_cert_objects_may_match(const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    if (templ == NULL)
        return count == 0;
    return matches(NULL, templ, count);
}

CK_RV guardian_cert_objects_match(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, const CK_ATTRIBUTE *templ,
                                  CK_ULONG count, CK_OBJECT_HANDLE **out, CK_ULONG *n_out)
{
    CK_OBJECT_HANDLE *found = NULL;
    CK_ULONG n = 0, room;
    CK_SESSION_INFO si;

    *out = NULL;
    *n_out = 0;
    if (!guardian_cert_objects_may_match(templ, count))
        return CKR_OK;
    /* Sized before locking; objects created meanwhile may be missed, as
     * PKCS#11 allows for objects created after C_FindObjectsInit. */
    room = atomic_load(&guardian_cert_objects_live);
    if (room == 0)
        return CKR_OK;
    /* A session the backend does not know sees no private output (its own
     * C_FindObjectsInit then refuses the search). */
    memset(&si, 0, sizeof(si));
    si.slotID = (CK_SLOT_ID)-1;
    if (be->C_GetSessionInfo(session, &si) != CKR_OK)
        si.slotID = (CK_SLOT_ID)-1, si.state = CKS_RO_PUBLIC_SESSION;
    found = malloc(room * sizeof(*found));
    if (found == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_lock(&lock);
    for (const struct cobj *o = live; o != NULL && n < room; o = o->next)
        if (visible(o, &si) && matches(o, templ, count))
            found[n++] = o->handle;
    pthread_mutex_unlock(&lock);
    if (n == 0) {
        free(found);
        found = NULL;
    }
    *out = found;
    *n_out = n;
    return CKR_OK;
}

/* ---- destroying ------------------------------------------------------------------ */

CK_RV guardian_cert_objects_destroy(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h)
{
    struct cobj *o = NULL;
    CK_RV rv = lock_object(be, session, h, &o);

    if (rv != CKR_OK)
        return rv;
    unlink_locked(o);
    pthread_mutex_unlock(&lock);
    free(o);
    return CKR_OK;
}

/* Destroy every object for which `doomed` says so. */
static void destroy_where(int (*doomed)(const struct cobj *o, CK_ULONG key), CK_ULONG key)
{
    struct cobj *gone = NULL, *o, *next;

    if (GUARDIAN_LIKELY(atomic_load_explicit(&guardian_cert_objects_live, memory_order_relaxed) == 0))
        return;
    pthread_mutex_lock(&lock);
    for (o = live; o != NULL; o = next) {
        next = o->next;
        if (doomed(o, key)) {
            unlink_locked(o);
            o->next = gone;
            gone = o;
        }
    }
    pthread_mutex_unlock(&lock);
    free_chain(gone);
}

static int of_session(const struct cobj *o, CK_ULONG session)
{
    return o->session == session;
}

static int of_slot(const struct cobj *o, CK_ULONG slot)
{
    return o->slot == slot;
}

void guardian_cert_objects_session_closed(CK_SESSION_HANDLE session)
{
    destroy_where(of_session, session);
}

void guardian_cert_objects_slot_closed(CK_SLOT_ID slot)
{
    destroy_where(of_slot, slot);
}

void guardian_cert_objects_reset(void)
{
    struct cobj *gone;

    pthread_mutex_lock(&lock);
    gone = live;
    for (struct cobj *o = live; o != NULL; o = o->next)
        slots[o->handle & MAX_OBJECTS] = NULL;
    live = NULL;
    atomic_store(&guardian_cert_objects_live, 0);
    /* free_next is read only for the numbers in the FIFO: no need to clear it
     * (and touch its pages). */
    fresh = 1;
    free_head = free_tail = 0;
    generation++;
    pthread_mutex_unlock(&lock);
    free_chain(gone);
}

void guardian_cert_objects_atfork_child(void)
{
    /* The objects stay until the child's C_Initialize frees them. */
    pthread_mutex_init(&lock, NULL);
}
