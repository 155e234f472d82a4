/*
 * test_cert_objects.c — the module-held certificate session objects
 * (module/cert_objects.c) against the fake backend.
 *
 * Objects are made with guardian_cert_object_create, as the derive mechanism
 * makes them, and used through the module's function list.  The fake's
 * C_GetSessionInfo and C_FindObjects* are replaced here by a small session
 * model (session s lives in slot s / 100, logged in as the user when s % 100
 * >= 50; 0 and >= 1000 are invalid) and a
 * scripted list of backend matches.
 */
#include <openssl/sha.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_backend.h"
#include "module.h"

#define MAX_LIVE 0xFFFF

static CK_FUNCTION_LIST *mod;

/* ---- the backend's side: sessions and search results ------------------------ */

static atomic_int session_info_calls;
static CK_OBJECT_HANDLE backend_matches[4];
static CK_ULONG n_backend_matches, backend_pos;
static atomic_int backend_find_inits;

static CK_RV test_session_info(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR si)
{
    atomic_fetch_add(&session_info_calls, 1);
    if (s == 0 || s >= 1000)
        return CKR_SESSION_HANDLE_INVALID;
    memset(si, 0, sizeof(*si));
    si->slotID = s / 100;
    si->state = s % 100 >= 50 ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION;
    si->flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    return CKR_OK;
}

static CK_RV backend_find_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    (void)s, (void)t, (void)n;
    atomic_fetch_add(&backend_find_inits, 1);
    backend_pos = 0;
    return CKR_OK;
}

static CK_RV backend_find(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count)
{
    (void)s;
    *count = 0;
    while (*count < max && backend_pos < n_backend_matches)
        out[(*count)++] = backend_matches[backend_pos++];
    return CKR_OK;
}

static int setup(void **st)
{
    (void)st;
    fake_backend_reset();
    assert_int_equal(C_GetFunctionList(&mod), CKR_OK);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    fake_backend_reset();
    fake_backend_list()->C_GetSessionInfo = test_session_info;
    fake_backend_list()->C_FindObjectsInit = backend_find_init;
    fake_backend_list()->C_FindObjects = backend_find;
    n_backend_matches = 0;
    atomic_store(&backend_find_inits, 0);
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    if (guardian_backend_list() != NULL)
        assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);
    return 0;
}

/* ---- objects -------------------------------------------------------------------- */

struct cert {
    unsigned char der[600], id[4];
    char label[32];
    size_t der_len;
};

static const unsigned char subject[] = {0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55,
                                        0x04, 0x03, 0x0c, 0x04, 'd',  'e',  'v',  '1'};
static const unsigned char issuer[] = {0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03,
                                       0x55, 0x04, 0x03, 0x0c, 0x03, 'C',  'A',  '1'};
static const unsigned char serial[] = {0x02, 0x03, 0x01, 0x00, 0x01};

/* A certificate-shaped value for `tag` (the module does not parse it). */
static void make_cert(struct cert *c, unsigned tag, size_t der_len)
{
    for (size_t i = 0; i < der_len; i++)
        c->der[i] = (unsigned char)(tag * 31 + i);
    c->der[0] = 0x30;
    c->der_len = der_len;
    c->id[0] = (unsigned char)(tag >> 24), c->id[1] = (unsigned char)(tag >> 16);
    c->id[2] = (unsigned char)(tag >> 8), c->id[3] = (unsigned char)tag;
    snprintf(c->label, sizeof(c->label), "device-%u", tag);
}

static CK_RV create(CK_SESSION_HANDLE s, unsigned tag, size_t der_len, CK_OBJECT_HANDLE *h)
{
    struct cert c;
    struct guardian_cert_object_value v = {0};
    make_cert(&c, tag, der_len);
    v.der = c.der, v.der_len = c.der_len;
    v.subject = subject, v.subject_len = sizeof(subject);
    v.issuer = issuer, v.issuer_len = sizeof(issuer);
    v.serial = serial, v.serial_len = sizeof(serial);
    v.id = c.id, v.id_len = sizeof(c.id);
    v.label = c.label;
    return guardian_cert_object_create(s, &v, h);
}

static CK_OBJECT_HANDLE make(CK_SESSION_HANDLE s, unsigned tag)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    assert_int_equal(create(s, tag, 600, &h), CKR_OK);
    assert_true(guardian_is_cert_object(h));
    assert_true(guardian_is_module_object(h));
    return h;
}

static int live(CK_OBJECT_HANDLE h)
{
    CK_ULONG size;
    return mod->C_GetObjectSize(101, h, &size) == CKR_OK;
}

/* ---- attributes ------------------------------------------------------------------ */

static void test_handle_ranges(void **st)
{
    (void)st;
    assert_true(guardian_is_module_object(0x47440001));
    assert_true(guardian_is_module_object(0x4745FFFF));
    assert_false(guardian_is_module_object(0x47460000));
    assert_false(guardian_is_module_object(0x4743FFFF));
    assert_false(guardian_is_module_object(1));
    assert_true(guardian_is_cert_object(0x47450001));
    assert_false(guardian_is_cert_object(0x47440001));
    assert_false(guardian_is_package_object(0x47450001));
}

static void test_attributes(void **st)
{
    CK_OBJECT_HANDLE h = make(101, 7);
    struct cert c;
    CK_OBJECT_CLASS cls = 0;
    CK_CERTIFICATE_TYPE type = 0;
    CK_BBOOL token = 1, priv = 1, modifiable = 1, copyable = 1, destroyable = 0, trusted = 1;
    CK_ULONG category = 9, midp = 9;
    unsigned char value[1024], subj[64], iss[64], ser[16], id[16], check[8], empty[4], md[SHA_DIGEST_LENGTH];
    char label[64];
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_CERTIFICATE_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &token, 1},
        {CKA_PRIVATE, &priv, 1},
        {CKA_MODIFIABLE, &modifiable, 1},
        {CKA_COPYABLE, &copyable, 1},
        {CKA_DESTROYABLE, &destroyable, 1},
        {CKA_TRUSTED, &trusted, 1},
        {CKA_CERTIFICATE_CATEGORY, &category, sizeof(category)},
        {CKA_JAVA_MIDP_SECURITY_DOMAIN, &midp, sizeof(midp)},
        {CKA_LABEL, label, sizeof(label)},
        {CKA_ID, id, sizeof(id)},
        {CKA_VALUE, value, sizeof(value)},
        {CKA_SUBJECT, subj, sizeof(subj)},
        {CKA_ISSUER, iss, sizeof(iss)},
        {CKA_SERIAL_NUMBER, ser, sizeof(ser)},
        {CKA_CHECK_VALUE, check, sizeof(check)},
        {CKA_START_DATE, empty, sizeof(empty)},
        {CKA_END_DATE, empty, sizeof(empty)},
        {CKA_URL, empty, sizeof(empty)},
        {CKA_HASH_OF_SUBJECT_PUBLIC_KEY, empty, sizeof(empty)},
        {CKA_HASH_OF_ISSUER_PUBLIC_KEY, empty, sizeof(empty)},
    };
    (void)st;

    make_cert(&c, 7, 600);
    assert_int_equal(mod->C_GetAttributeValue(101, h, t, sizeof(t) / sizeof(t[0])), CKR_OK);
    assert_int_equal(cls, CKO_CERTIFICATE);
    assert_int_equal(type, CKC_X_509);
    assert_int_equal(token, CK_FALSE);
    assert_int_equal(priv, CK_FALSE);
    assert_int_equal(modifiable, CK_FALSE);
    assert_int_equal(copyable, CK_FALSE);
    assert_int_equal(destroyable, CK_TRUE);
    assert_int_equal(trusted, CK_FALSE);
    assert_int_equal(category, 0);
    assert_int_equal(midp, 0);
    assert_int_equal(t[10].ulValueLen, strlen(c.label));
    assert_memory_equal(label, c.label, strlen(c.label));
    assert_int_equal(t[11].ulValueLen, 4);
    assert_memory_equal(id, c.id, 4);
    assert_int_equal(t[12].ulValueLen, 600);
    assert_memory_equal(value, c.der, 600);
    assert_int_equal(t[13].ulValueLen, sizeof(subject));
    assert_memory_equal(subj, subject, sizeof(subject));
    assert_int_equal(t[14].ulValueLen, sizeof(issuer));
    assert_memory_equal(iss, issuer, sizeof(issuer));
    assert_int_equal(t[15].ulValueLen, sizeof(serial));
    assert_memory_equal(ser, serial, sizeof(serial));
    SHA1(c.der, 600, md);
    assert_int_equal(t[16].ulValueLen, 3);
    assert_memory_equal(check, md, 3);
    for (size_t i = 17; i < sizeof(t) / sizeof(t[0]); i++)
        assert_int_equal(t[i].ulValueLen, 0);
    /* Any valid session of the application reads it, the backend is not asked. */
    fake_backend()->last_name = NULL;
    assert_int_equal(mod->C_GetAttributeValue(201, h, t, 1), CKR_OK);
    assert_null(fake_backend()->last_name);
}

static void test_short_buffer_and_unknown_attribute(void **st)
{
    CK_OBJECT_HANDLE h = make(101, 8);
    unsigned char small[10], id[4];
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE, small, sizeof(small)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_ID, id, sizeof(id)},
        {CKA_LABEL, NULL, 0},
    };
    (void)st;

    /* Unknown attribute wins over a short buffer; every other one is filled. */
    assert_int_equal(mod->C_GetAttributeValue(101, h, t, 4), CKR_ATTRIBUTE_TYPE_INVALID);
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[2].ulValueLen, 4);
    assert_memory_equal(id, "\0\0\0\x08", 4);
    assert_int_equal(t[3].ulValueLen, strlen("device-8"));

    t[0].ulValueLen = sizeof(small);
    assert_int_equal(mod->C_GetAttributeValue(101, h, t, 1), CKR_BUFFER_TOO_SMALL);
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    t[0].pValue = NULL;
    assert_int_equal(mod->C_GetAttributeValue(101, h, t, 1), CKR_OK);
    assert_int_equal(t[0].ulValueLen, 600);
    assert_int_equal(mod->C_GetAttributeValue(101, h, NULL, 1), CKR_ARGUMENTS_BAD);
}

/* ---- the other object calls ------------------------------------------------------- */

static void test_object_calls(void **st)
{
    CK_OBJECT_HANDLE h = make(101, 9), copy = 0, dead = GUARDIAN_COBJ_BASE | 0x1234;
    CK_ATTRIBUTE label = {CKA_LABEL, NULL, 0}, value = {CKA_VALUE, NULL, 0};
    CK_ULONG size = 0;
    (void)st;

    /* The session must be valid: the backend's answer. */
    assert_int_equal(mod->C_GetAttributeValue(1000, h, &label, 1), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(mod->C_GetObjectSize(1000, h, &size), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(1000, h), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(mod->C_SetAttributeValue(1000, h, &label, 1), CKR_SESSION_HANDLE_INVALID);
    assert_true(live(h));

    assert_int_equal(mod->C_GetObjectSize(101, h, &size), CKR_OK);
    assert_true(size > 600);
    assert_int_equal(mod->C_SetAttributeValue(101, h, &label, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(mod->C_CopyObject(101, h, &label, 1, &copy), CKR_ACTION_PROHIBITED);

    /* Not live: invalid, whatever the call. */
    assert_int_equal(mod->C_GetAttributeValue(101, dead, &label, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_GetObjectSize(101, dead, &size), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_SetAttributeValue(101, dead, &label, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_CopyObject(101, dead, &label, 1, &copy), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(101, dead), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(101, GUARDIAN_COBJ_BASE), CKR_OBJECT_HANDLE_INVALID);

    /* Destroyed from another session of the application. */
    fake_backend()->last_name = NULL;
    assert_int_equal(mod->C_DestroyObject(202, h), CKR_OK);
    assert_null(fake_backend()->last_name);
    assert_false(live(h));
    assert_int_equal(mod->C_GetAttributeValue(101, h, &label, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(101, h), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);

    /* Other handles still reach the backend. */
    h = make(101, 10);
    fake_backend()->rv = CKR_DEVICE_MEMORY;
    assert_int_equal(mod->C_GetAttributeValue(101, 5, &value, 1), CKR_DEVICE_MEMORY);
    assert_string_equal(fake_backend()->last_name, "C_GetAttributeValue");
    assert_int_equal(mod->C_DestroyObject(101, 5), CKR_DEVICE_MEMORY);
    assert_string_equal(fake_backend()->last_name, "C_DestroyObject");
    fake_backend()->rv = CKR_OK;
    assert_true(live(h));
}

static void test_create_refusals(void **st)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    (void)st;
    assert_int_equal(create(1000, 1, 600, &h), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(h, CK_INVALID_HANDLE);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(create(101, 1, 600, &h), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);
}

/* ---- numbers: reuse, never twice live, the limit ----------------------------------- */

static void test_handle_reuse_and_limit(void **st)
{
    static CK_OBJECT_HANDLE h[MAX_LIVE];
    static unsigned char seen[MAX_LIVE + 1];
    CK_OBJECT_HANDLE a, b, extra = 0;
    (void)st;

    /* A destroyed handle is not the next one handed out. */
    a = make(101, 1);
    assert_int_equal(mod->C_DestroyObject(101, a), CKR_OK);
    b = make(101, 2);
    assert_int_not_equal(a, b);
    assert_int_equal(mod->C_DestroyObject(101, b), CKR_OK);

    for (unsigned i = 0; i < MAX_LIVE; i++) {
        assert_int_equal(create(101, i, 16, &h[i]), CKR_OK);
        assert_true(guardian_is_cert_object(h[i]));
        assert_int_not_equal(h[i] & 0xFFFF, 0);
        assert_int_equal(seen[h[i] & 0xFFFF], 0);
        seen[h[i] & 0xFFFF] = 1;
    }
    assert_int_equal(atomic_load(&guardian_cert_objects_live), MAX_LIVE);
    assert_int_equal(create(101, 1, 16, &extra), CKR_HOST_MEMORY);
    assert_int_equal(extra, 0);

    /* Numbers come back in the order they were destroyed. */
    assert_int_equal(mod->C_DestroyObject(101, h[100]), CKR_OK);
    assert_int_equal(mod->C_DestroyObject(101, h[5]), CKR_OK);
    assert_int_equal(create(101, 1, 16, &extra), CKR_OK);
    assert_int_equal(extra, h[100]);
    assert_int_equal(create(101, 2, 16, &extra), CKR_OK);
    assert_int_equal(extra, h[5]);
    assert_int_equal(create(101, 3, 16, &extra), CKR_HOST_MEMORY);
    /* The reused handle is the new object, not the old one. */
    {
        unsigned char id[4];
        CK_ATTRIBUTE t = {CKA_ID, id, sizeof(id)};
        assert_int_equal(mod->C_GetAttributeValue(101, h[5], &t, 1), CKR_OK);
        assert_memory_equal(id, "\0\0\0\x02", 4);
    }
    /* teardown: C_Finalize frees all 65,535 (valgrind and ASan check). */
}

/* ---- lifetime ------------------------------------------------------------------------ */

static void test_close_session_close_all_finalize(void **st)
{
    CK_OBJECT_HANDLE a1 = make(101, 1), a2 = make(101, 2), b = make(102, 3), c = make(201, 4), d = make(301, 5);
    (void)st;

    assert_int_equal(mod->C_CloseSession(101), CKR_OK);
    assert_false(live(a1));
    assert_false(live(a2));
    assert_true(live(b) && live(c) && live(d));

    assert_int_equal(mod->C_CloseAllSessions(1), CKR_OK);
    assert_false(live(b));
    assert_true(live(c) && live(d));

    /* A close the backend refuses for another reason leaves the objects. */
    fake_backend()->rv = CKR_DEVICE_ERROR;
    assert_int_equal(mod->C_CloseSession(201), CKR_DEVICE_ERROR);
    assert_int_equal(mod->C_CloseAllSessions(3), CKR_DEVICE_ERROR);
    fake_backend()->rv = CKR_OK;
    assert_true(live(c) && live(d));
    /* A session the backend no longer knows has no objects. */
    fake_backend()->rv = CKR_SESSION_HANDLE_INVALID;
    assert_int_equal(mod->C_CloseSession(201), CKR_SESSION_HANDLE_INVALID);
    fake_backend()->rv = CKR_OK;
    assert_false(live(c));
    assert_true(live(d));
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 1);

    /* C_Finalize frees the rest; after C_Initialize the handle is dead. */
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), 0);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    fake_backend_list()->C_GetSessionInfo = test_session_info;
    assert_false(live(d));
}

static void test_fork_child_starts_empty(void **st)
{
    CK_OBJECT_HANDLE h = make(101, 1);
    CK_ATTRIBUTE t = {CKA_LABEL, NULL, 0};
    int status = 0;
    pid_t pid;
    (void)st;

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (mod->C_GetAttributeValue(101, h, &t, 1) != CKR_CRYPTOKI_NOT_INITIALIZED)
            fail |= 1;
        if (mod->C_Initialize(NULL) != CKR_OK)
            fail |= 2;
        fake_backend_list()->C_GetSessionInfo = test_session_info;
        if (atomic_load(&guardian_cert_objects_live) != 0)
            fail |= 4;
        if (mod->C_GetAttributeValue(101, h, &t, 1) != CKR_OBJECT_HANDLE_INVALID)
            fail |= 8;
        if (create(101, 2, 16, &h) != CKR_OK || mod->C_Finalize(NULL) != CKR_OK)
            fail |= 16;
        _exit(fail);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* The parent's object is untouched. */
    assert_int_equal(mod->C_GetAttributeValue(101, h, &t, 1), CKR_OK);
}

/* ---- finding -------------------------------------------------------------------------- */

/* Everything a search finds, a few handles per call. */
static CK_ULONG find_all(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG room)
{
    CK_ULONG total = 0, got = 0;
    assert_int_equal(mod->C_FindObjectsInit(s, t, n), CKR_OK);
    do {
        assert_int_equal(mod->C_FindObjects(s, out + total, room - total < 3 ? room - total : 3, &got), CKR_OK);
        total += got;
    } while (got > 0 && total < room);
    assert_int_equal(mod->C_FindObjectsFinal(s), CKR_OK);
    return total;
}

static int contains(const CK_OBJECT_HANDLE *list, CK_ULONG n, CK_OBJECT_HANDLE h)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (list[i] == h)
            return 1;
    return 0;
}

static void test_find(void **st)
{
    CK_OBJECT_CLASS cert = CKO_CERTIFICATE, key = CKO_PRIVATE_KEY;
    CK_CERTIFICATE_TYPE x509 = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    unsigned char id_b[4] = {0, 0, 0, 2}, id_none[4] = {9, 9, 9, 9};
    CK_ATTRIBUTE by_class[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)}};
    CK_ATTRIBUTE by_id[] = {{CKA_ID, id_b, sizeof(id_b)}, {CKA_TOKEN, &no, sizeof(no)}};
    CK_ATTRIBUTE no_id[] = {{CKA_ID, id_none, sizeof(id_none)}};
    CK_ATTRIBUTE keys[] = {{CKA_CLASS, &key, sizeof(key)}};
    CK_ATTRIBUTE token[] = {{CKA_TOKEN, &yes, sizeof(yes)}};
    CK_ATTRIBUTE key_type[] = {{CKA_KEY_TYPE, &x509, sizeof(x509)}};
    CK_OBJECT_HANDLE a, b, found[16];
    CK_ULONG n;
    (void)st;

    /* No live certificate object: nothing of ours, the hot path. */
    assert_true(guardian_cert_objects_idle(by_class, 2));
    assert_true(guardian_cert_objects_idle(NULL, 0));

    a = make(101, 1);
    b = make(201, 2);
    backend_matches[0] = 11, backend_matches[1] = 12;
    n_backend_matches = 2;

    /* The backend's matches first, then ours. */
    n = find_all(101, by_class, 2, found, 16);
    assert_int_equal(n, 4);
    assert_int_equal(found[0], 11);
    assert_int_equal(found[1], 12);
    assert_true(contains(found + 2, 2, a) && contains(found + 2, 2, b));
    assert_int_equal(atomic_load(&backend_find_inits), 1);
    assert_false(guardian_package_objects_searching());

    n = find_all(301, NULL, 0, found, 16);
    assert_int_equal(n, 4);
    assert_true(contains(found, n, a) && contains(found, n, b));

    n = find_all(101, by_id, 2, found, 16);
    assert_int_equal(n, 3);
    assert_int_equal(found[2], b);

    /* Templates no certificate object can match stay with the backend alone:
     * no search state of ours (C_FindObjects and Final are tail calls). */
    assert_true(guardian_cert_objects_idle(keys, 1));
    assert_true(guardian_cert_objects_idle(token, 1));
    assert_true(guardian_cert_objects_idle(key_type, 1));
    assert_false(guardian_cert_objects_idle(no_id, 1));
    assert_int_equal(mod->C_FindObjectsInit(101, keys, 1), CKR_OK);
    assert_false(guardian_package_objects_searching());
    assert_int_equal(mod->C_FindObjects(101, found, 16, &n), CKR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(mod->C_FindObjectsFinal(101), CKR_OK);
    /* One that could but does not: the backend's alone as well. */
    assert_int_equal(mod->C_FindObjectsInit(101, no_id, 1), CKR_OK);
    assert_false(guardian_package_objects_searching());
    assert_int_equal(mod->C_FindObjectsFinal(101), CKR_OK);

    /* A search in progress survives its objects' destruction; a closed
     * session forgets its search. */
    assert_int_equal(mod->C_FindObjectsInit(101, by_class, 2), CKR_OK);
    assert_true(guardian_package_objects_searching());
    assert_int_equal(mod->C_FindObjectsInit(101, by_class, 2), CKR_OPERATION_ACTIVE);
    assert_int_equal(mod->C_CloseSession(101), CKR_OK);
    assert_false(guardian_package_objects_searching());
    assert_false(live(a));
    assert_true(live(b));

    /* Without live objects, nothing of ours again. */
    assert_int_equal(mod->C_DestroyObject(201, b), CKR_OK);
    assert_true(guardian_cert_objects_idle(by_class, 2));
    n = find_all(101, by_class, 2, found, 16);
    assert_int_equal(n, 2);
}

/* ---- threads --------------------------------------------------------------------------- */

#define THREADS 4
#define ROUNDS 6000
#define KEEP 8
#define FILLER 65000

static atomic_uchar in_use[MAX_LIVE + 1];
static atomic_int failures, stop_finding;

static void *churn(void *arg)
{
    unsigned t = (unsigned)(uintptr_t)arg;
    CK_OBJECT_HANDLE kept[KEEP] = {0};
    CK_SESSION_HANDLE s = 101 + t;

    for (unsigned i = 0; i < ROUNDS; i++) {
        unsigned tag = (t << 24) | i;
        CK_OBJECT_HANDLE h;
        unsigned char id[4];
        CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};

        if (kept[i % KEEP] != 0) {
            CK_OBJECT_HANDLE old = kept[i % KEEP];
            atomic_store(&in_use[old & 0xFFFF], 0);
            if (mod->C_DestroyObject(s, old) != CKR_OK)
                atomic_fetch_add(&failures, 1);
        }
        if (create(s, tag, 64, &h) != CKR_OK) {
            atomic_fetch_add(&failures, 1);
            kept[i % KEEP] = 0;
            continue;
        }
        if (atomic_exchange(&in_use[h & 0xFFFF], 1) != 0)
            atomic_fetch_add(&failures, 1); /* a live handle handed out twice */
        /* The handle names this thread's new object. */
        if (mod->C_GetAttributeValue(s, h, &a, 1) != CKR_OK ||
            ((unsigned)id[0] << 24 | (unsigned)id[1] << 16 | (unsigned)id[2] << 8 | id[3]) != tag)
            atomic_fetch_add(&failures, 1);
        kept[i % KEEP] = h;
    }
    for (unsigned k = 0; k < KEEP; k++)
        if (kept[k] != 0) {
            atomic_store(&in_use[kept[k] & 0xFFFF], 0);
            if (mod->C_DestroyObject(s, kept[k]) != CKR_OK)
                atomic_fetch_add(&failures, 1);
        }
    return NULL;
}

static void *find_loop(void *arg)
{
    CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
    CK_ATTRIBUTE t = {CKA_CLASS, &cert, sizeof(cert)};
    CK_OBJECT_HANDLE found[64];
    CK_ULONG n;
    (void)arg;
    while (!atomic_load(&stop_finding)) {
        if (mod->C_FindObjectsInit(900, &t, 1) != CKR_OK)
            atomic_fetch_add(&failures, 1);
        do {
            if (mod->C_FindObjects(900, found, 64, &n) != CKR_OK)
                atomic_fetch_add(&failures, 1), n = 0;
            for (CK_ULONG i = 0; i < n; i++)
                if (!guardian_is_cert_object(found[i]))
                    atomic_fetch_add(&failures, 1);
        } while (n > 0);
        if (mod->C_FindObjectsFinal(900) != CKR_OK)
            atomic_fetch_add(&failures, 1);
    }
    return NULL;
}

/* A request's output (guardian_output_object_create): a private CKO_DATA,
 * seen only by a user session of its slot; its attributes are a data
 * object's, none of a certificate's. */
static void test_outputs(void **st)
{
    CK_OBJECT_CLASS cls = 0, data = CKO_DATA, cert = CKO_CERTIFICATE, key = CKO_PRIVATE_KEY;
    CK_BBOOL priv = CK_FALSE, tok = CK_TRUE, yes = CK_TRUE;
    char label[40], value[8], app[4];
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &priv, sizeof(priv)},
                        {CKA_TOKEN, &tok, sizeof(tok)},   {CKA_LABEL, label, sizeof(label)},
                        {CKA_VALUE, value, sizeof(value)}, {CKA_APPLICATION, app, sizeof(app)}};
    CK_ATTRIBUTE cert_only[] = {{CKA_CERTIFICATE_TYPE, NULL, 0}, {CKA_ID, NULL, 0}, {CKA_CHECK_VALUE, NULL, 0},
                                {CKA_SUBJECT, NULL, 0}, {CKA_TRUSTED, NULL, 0}};
    CK_ATTRIBUTE by_data[] = {{CKA_CLASS, &data, sizeof(data)}};
    CK_ATTRIBUTE by_cert[] = {{CKA_CLASS, &cert, sizeof(cert)}};
    CK_ATTRIBUTE keys[] = {{CKA_CLASS, &key, sizeof(key)}};
    CK_ATTRIBUTE private_ones[] = {{CKA_PRIVATE, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE h, empty, c, found[16];
    (void)st;

    assert_int_equal(guardian_output_object_create(150, "guardian-output:t", (const uint8_t *)"hi", 2, &h), CKR_OK);
    assert_true(guardian_is_cert_object(h));
    assert_int_equal(mod->C_GetAttributeValue(150, h, a, 6), CKR_OK);
    assert_int_equal(cls, CKO_DATA);
    assert_true(priv);
    assert_false(tok);
    assert_int_equal(a[3].ulValueLen, strlen("guardian-output:t"));
    assert_memory_equal(label, "guardian-output:t", a[3].ulValueLen);
    assert_int_equal(a[4].ulValueLen, 2);
    assert_memory_equal(value, "hi", 2);
    assert_int_equal(a[5].ulValueLen, 0);
    for (size_t i = 0; i < sizeof(cert_only) / sizeof(cert_only[0]); i++) {
        assert_int_equal(mod->C_GetAttributeValue(150, h, &cert_only[i], 1), CKR_ATTRIBUTE_TYPE_INVALID);
        assert_int_equal(cert_only[i].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    }
    /* Unseen: a public session of its slot, a user session of another slot. */
    assert_int_equal(mod->C_GetAttributeValue(101, h, a, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_GetAttributeValue(250, h, a, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(101, h), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(250, h), CKR_OBJECT_HANDLE_INVALID);
    c = make(101, 7);
    assert_int_equal(find_all(150, by_data, 1, found, 16), 1);
    assert_int_equal(found[0], h);
    assert_int_equal(find_all(150, private_ones, 1, found, 16), 1);
    assert_int_equal(find_all(150, NULL, 0, found, 16), 2);
    assert_int_equal(find_all(101, by_data, 1, found, 16), 0);
    assert_int_equal(find_all(250, NULL, 0, found, 16), 1);
    assert_int_equal(found[0], c);
    assert_int_equal(find_all(150, by_cert, 1, found, 16), 1);
    assert_int_equal(found[0], c);
    /* A search for keys stays the backend's alone while outputs are live. */
    assert_true(guardian_cert_objects_idle(keys, 1));
    assert_false(guardian_cert_objects_idle(by_data, 1));
    /* An empty output is one; another user session of the slot destroys it. */
    assert_int_equal(guardian_output_object_create(150, "guardian-output:e", NULL, 0, &empty), CKR_OK);
    a[4].ulValueLen = sizeof(value);
    assert_int_equal(mod->C_GetAttributeValue(151, empty, &a[4], 1), CKR_OK);
    assert_int_equal(a[4].ulValueLen, 0);
    assert_int_equal(mod->C_DestroyObject(151, empty), CKR_OK);
    assert_int_equal(mod->C_DestroyObject(150, h), CKR_OK);
    assert_int_equal(mod->C_GetAttributeValue(150, h, a, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(mod->C_DestroyObject(101, c), CKR_OK);
}

static void test_threads(void **st)
{
    static CK_OBJECT_HANDLE filler[FILLER];
    pthread_t th[THREADS], finder;
    (void)st;

    /* Most numbers in use, so that the threads reuse destroyed ones. */
    for (unsigned i = 0; i < FILLER; i++) {
        assert_int_equal(create(101, i, 16, &filler[i]), CKR_OK);
        atomic_store(&in_use[filler[i] & 0xFFFF], 1);
    }
    for (unsigned i = 0; i < FILLER; i += 2) {
        atomic_store(&in_use[filler[i] & 0xFFFF], 0);
        assert_int_equal(mod->C_DestroyObject(101, filler[i]), CKR_OK);
    }
    assert_int_equal(pthread_create(&finder, NULL, find_loop, NULL), 0);
    for (unsigned t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, churn, (void *)(uintptr_t)t), 0);
    for (unsigned t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    atomic_store(&stop_finding, 1);
    assert_int_equal(pthread_join(finder, NULL), 0);
    assert_int_equal(atomic_load(&failures), 0);
    assert_int_equal(atomic_load(&guardian_cert_objects_live), FILLER / 2);
}

int main(void)
{
    /* No state directory: no package objects. */
    setenv("GUARDIAN_STATE_DIR", "/nonexistent/guardian-unit-cert-objects", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_ranges),
        cmocka_unit_test_setup_teardown(test_attributes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_buffer_and_unknown_attribute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handle_reuse_and_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_session_close_all_finalize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_child_starts_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests_name("certificate objects", tests, NULL, NULL);
}
