/*
 * test_module.c — the module's entry points against a fake backend.
 *
 * Built twice: against libfake240.so (a 2.40 backend whose version field lies)
 * and, with FAKE_WITH_3_0, against libfake30.so (a real 3.0 backend).  The
 * backend path arrives through GUARDIAN_BACKEND (set by CTest), so the real
 * loader is exercised; the module itself is linked in as objects.
 */
#include <fcntl.h>
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
#include "guardian/guardian-pkcs11.h"
#include "registry.h"
#include "package.h"
#include "transport.h"

static CK_FUNCTION_LIST *mod;

static int setup(void **st)
{
    (void)st;
    fake_backend_reset();
    assert_int_equal(C_GetFunctionList(&mod), CKR_OK);
    return 0;
}

static int setup_init(void **st)
{
    setup(st);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    fake_backend_reset();
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    if (guardian_backend_list() != NULL)
        assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    return 0;
}

/* ---- C_Initialize / C_Finalize ---------------------------------------------- */

static CK_RV mutex_create(CK_VOID_PTR_PTR m)
{
    *m = malloc(1);
    return CKR_OK;
}
static CK_RV mutex_destroy(CK_VOID_PTR m)
{
    free(m);
    return CKR_OK;
}
static CK_RV mutex_noop(CK_VOID_PTR m)
{
    (void)m;
    return CKR_OK;
}

static void test_calls_before_initialize(void **st)
{
    CK_ULONG n = 0;
    CK_INFO info;
    (void)st;
    assert_int_equal(mod->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(mod->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(mod->C_GetMechanismList(1, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(mod->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_null(fake_backend()->last_name);
}

static void test_initialize_args(void **st)
{
    CK_C_INITIALIZE_ARGS args;
    (void)st;

    memset(&args, 0, sizeof(args));
    args.pReserved = &args;
    assert_int_equal(mod->C_Initialize(&args), CKR_ARGUMENTS_BAD);

    memset(&args, 0, sizeof(args));
    args.CreateMutex = mutex_create; /* one of four */
    assert_int_equal(mod->C_Initialize(&args), CKR_ARGUMENTS_BAD);
    assert_int_equal(atomic_load(&fake_backend()->init_calls), 0);

    /* All four callbacks, without CKF_OS_LOCKING_OK: reach the backend as given. */
    args.DestroyMutex = mutex_destroy;
    args.LockMutex = mutex_noop;
    args.UnlockMutex = mutex_noop;
    assert_int_equal(mod->C_Initialize(&args), CKR_OK);
    assert_ptr_equal(fake_backend()->last_init_args, &args);
    assert_int_equal(mod->C_Initialize(&args), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_int_equal(atomic_load(&fake_backend()->init_calls), 1);

    assert_int_equal(mod->C_Finalize(&args), CKR_ARGUMENTS_BAD);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(mod->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    assert_int_equal(mod->C_Initialize(&args), CKR_OK);
    assert_ptr_equal(fake_backend()->last_init_args, &args);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);

    /* NULL (or no locking asked for): the backend is still allowed OS locking,
     * so that an application breaking its single-thread promise cannot crash it. */
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    assert_non_null(fake_backend()->last_init_args);
    assert_int_equal(fake_backend()->last_init_copy.flags, CKF_OS_LOCKING_OK);
    assert_null(fake_backend()->last_init_copy.CreateMutex);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    args.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    assert_int_equal(mod->C_Initialize(&args), CKR_OK);
    assert_int_equal(fake_backend()->last_init_copy.flags, CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
}

/* backend_init_args (here from GUARDIAN_BACKEND_INIT_ARGS; the configuration
 * is re-read at every C_Initialize) reaches the backend as pReserved, byte for
 * byte, beside the caller's callbacks and flags; unset, pReserved stays NULL. */
static void test_initialize_backend_init_args(void **st)
{
    static const char nss[] = "configdir='sql:/var/lib/guardian/nssdb' certPrefix='' keyPrefix='' "
                              "secmod='secmod.db' flags= dbTokenDescription='guardian'";
    CK_C_INITIALIZE_ARGS args;
    (void)st;

    setenv("GUARDIAN_BACKEND_INIT_ARGS", nss, 1);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    assert_non_null(fake_backend()->last_init_copy.pReserved);
    assert_string_equal(fake_backend()->last_init_reserved, nss);
    assert_int_equal(fake_backend()->last_init_copy.flags, CKF_OS_LOCKING_OK);
    assert_null(fake_backend()->last_init_copy.CreateMutex);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);

    /* The caller's callbacks and flags are kept (a copy: the caller's struct is
     * not written to); its own pReserved is still refused. */
    memset(&args, 0, sizeof(args));
    args.CreateMutex = mutex_create;
    args.DestroyMutex = mutex_destroy;
    args.LockMutex = mutex_noop;
    args.UnlockMutex = mutex_noop;
    args.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    assert_int_equal(mod->C_Initialize(&args), CKR_OK);
    assert_ptr_not_equal(fake_backend()->last_init_args, &args);
    assert_null(args.pReserved);
    assert_ptr_equal(fake_backend()->last_init_copy.CreateMutex, mutex_create);
    assert_ptr_equal(fake_backend()->last_init_copy.DestroyMutex, mutex_destroy);
    assert_ptr_equal(fake_backend()->last_init_copy.LockMutex, mutex_noop);
    assert_ptr_equal(fake_backend()->last_init_copy.UnlockMutex, mutex_noop);
    assert_int_equal(fake_backend()->last_init_copy.flags, CKF_LIBRARY_CANT_CREATE_OS_THREADS);
    assert_string_equal(fake_backend()->last_init_reserved, nss);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);

    args.pReserved = &args;
    assert_int_equal(mod->C_Initialize(&args), CKR_ARGUMENTS_BAD);

    unsetenv("GUARDIAN_BACKEND_INIT_ARGS");
    args.pReserved = NULL;
    args.flags = CKF_OS_LOCKING_OK;
    assert_int_equal(mod->C_Initialize(&args), CKR_OK);
    assert_ptr_equal(fake_backend()->last_init_args, &args);
    assert_null(fake_backend()->last_init_copy.pReserved);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    assert_null(fake_backend()->last_init_copy.pReserved);
    assert_string_equal(fake_backend()->last_init_reserved, "");
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
}

static void test_backend_initialize_failure_passes_through(void **st)
{
    CK_ULONG n;
    (void)st;
    fake_backend()->init_rv = CKR_DEVICE_ERROR;
    assert_int_equal(mod->C_Initialize(NULL), CKR_DEVICE_ERROR);
    assert_int_equal(mod->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    fake_backend()->init_rv = CKR_OK;
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
}

static void test_backend_initialized_by_someone_else(void **st)
{
    CK_ULONG n = 0;
    (void)st;
    /* Another user of the same backend in this process initialized it first. */
    atomic_store(&fake_backend()->initialized, 1);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    assert_int_equal(mod->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    /* ... and it is still theirs: we did not finalize it. */
    assert_int_equal(atomic_load(&fake_backend()->finalize_calls), 0);
    assert_int_equal(atomic_load(&fake_backend()->initialized), 1);
    assert_int_equal(mod->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    /* When we initialize it ourselves, we finalize it too. */
    atomic_store(&fake_backend()->initialized, 0);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(atomic_load(&fake_backend()->finalize_calls), 1);
    assert_int_equal(atomic_load(&fake_backend()->initialized), 0);
}

struct race {
    pthread_barrier_t barrier;
    CK_RV rv[8];
};

static void *race_thread(void *p)
{
    struct race *r = p;
    static atomic_int next;
    int me = atomic_fetch_add(&next, 1) % 8;
    pthread_barrier_wait(&r->barrier);
    r->rv[me] = mod->C_Initialize(NULL);
    return NULL;
}

static void test_initialize_race(void **st)
{
    struct race r;
    pthread_t t[8];
    int ok = 0, already = 0;
    (void)st;

    memset(&r, 0, sizeof(r));
    fake_backend()->init_delay_us = 2000;
    pthread_barrier_init(&r.barrier, NULL, 8);
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, race_thread, &r);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&r.barrier);
    for (int i = 0; i < 8; i++) {
        ok += r.rv[i] == CKR_OK;
        already += r.rv[i] == CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    assert_int_equal(ok, 1);
    assert_int_equal(already, 7);
    /* The backend saw exactly one C_Initialize: we never let it be raced. */
    assert_int_equal(atomic_load(&fake_backend()->init_calls), 1);
}

static void test_fork_child_must_reinitialize(void **st)
{
    pid_t pid;
    int status = 0;
    (void)st;

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_ULONG n = 0;
        int fail = 0;
        fake_backend_reset();
        if (mod->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED)
            fail |= 1;
        if (fake_backend()->last_name != NULL)
            fail |= 2; /* the call must not have reached the backend */
        /* The fake, like SoftHSM, still believes it is initialized: the module
         * finalizes the inherited state and initializes afresh. */
        if (mod->C_Initialize(NULL) != CKR_OK)
            fail |= 4;
        if (atomic_load(&fake_backend()->finalize_calls) != 1 || atomic_load(&fake_backend()->init_calls) != 2)
            fail |= 8;
        if (mod->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK)
            fail |= 16;
        if (mod->C_Finalize(NULL) != CKR_OK)
            fail |= 32;
        _exit(fail);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* The parent is untouched. */
    assert_non_null(guardian_backend_list());
}

/* ---- C_GetInfo -------------------------------------------------------------- */

static void test_get_info(void **st)
{
    CK_INFO info;
    (void)st;
    assert_int_equal(mod->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(mod->C_GetInfo(&info), CKR_OK);
    assert_int_equal(info.cryptokiVersion.major, 2);
    assert_int_equal(info.cryptokiVersion.minor, 40);
    assert_memory_equal(info.manufacturerID, "Guardian PKCS#11", 16);
    assert_int_equal(info.manufacturerID[31], ' ');
    assert_int_equal(info.libraryVersion.major, GUARDIAN_VERSION_MAJOR);
}

/* ---- every forwarded function -------------------------------------------------- */

#define EXPECT_FORWARDED(call, fname, first)                                   \
    do {                                                                       \
        fake_backend()->last_name = NULL;                                      \
        fake_backend()->rv = CKR_DEVICE_MEMORY;                                \
        assert_int_equal((call), CKR_DEVICE_MEMORY);                           \
        assert_non_null(fake_backend()->last_name);                            \
        assert_string_equal(fake_backend()->last_name, fname);                 \
        assert_int_equal(fake_backend()->last_a, (first));                     \
        n_checked++;                                                           \
    } while (0)

static void test_every_function_forwarded(void **st)
{
    const CK_SESSION_HANDLE s = 0x5e55;
    CK_BYTE buf[8] = {0};
    CK_ULONG len = sizeof(buf);
    CK_SLOT_ID slot = 0;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_ATTRIBUTE attr = {CKA_VALUE, NULL, 0}; /* not an attribute the policy classifies by */
    CK_OBJECT_HANDLE h = 0;
    CK_SESSION_INFO si;
    CK_SLOT_INFO sli;
    CK_TOKEN_INFO ti;
    int n_checked = 0;
    (void)st;

    EXPECT_FORWARDED(mod->C_GetSlotList(CK_TRUE, &slot, &len), "C_GetSlotList", CK_TRUE);
    EXPECT_FORWARDED(mod->C_GetSlotInfo(7, &sli), "C_GetSlotInfo", 7);
    EXPECT_FORWARDED(mod->C_GetTokenInfo(7, &ti), "C_GetTokenInfo", 7);
    EXPECT_FORWARDED(mod->C_InitToken(7, buf, 4, buf), "C_InitToken", 7);
    EXPECT_FORWARDED(mod->C_InitPIN(s, buf, 4), "C_InitPIN", s);
    EXPECT_FORWARDED(mod->C_SetPIN(s, buf, 4, buf, 4), "C_SetPIN", s);
    EXPECT_FORWARDED(mod->C_OpenSession(7, CKF_SERIAL_SESSION, NULL, NULL, &h), "C_OpenSession", 7);
    EXPECT_FORWARDED(mod->C_CloseSession(s), "C_CloseSession", s);
    EXPECT_FORWARDED(mod->C_CloseAllSessions(7), "C_CloseAllSessions", 7);
    EXPECT_FORWARDED(mod->C_GetSessionInfo(s, &si), "C_GetSessionInfo", s);
    EXPECT_FORWARDED(mod->C_GetOperationState(s, buf, &len), "C_GetOperationState", s);
    EXPECT_FORWARDED(mod->C_SetOperationState(s, buf, len, 0, 0), "C_SetOperationState", s);
    EXPECT_FORWARDED(mod->C_Login(s, CKU_USER, buf, 4), "C_Login", s);
    EXPECT_FORWARDED(mod->C_Logout(s), "C_Logout", s);
    EXPECT_FORWARDED(mod->C_CreateObject(s, &attr, 1, &h), "C_CreateObject", s);
    EXPECT_FORWARDED(mod->C_CopyObject(s, 1, &attr, 1, &h), "C_CopyObject", s);
    EXPECT_FORWARDED(mod->C_DestroyObject(s, 1), "C_DestroyObject", s);
    EXPECT_FORWARDED(mod->C_GetObjectSize(s, 1, &len), "C_GetObjectSize", s);
    EXPECT_FORWARDED(mod->C_GetAttributeValue(s, 1, &attr, 1), "C_GetAttributeValue", s);
    EXPECT_FORWARDED(mod->C_SetAttributeValue(s, 1, &attr, 1), "C_SetAttributeValue", s);
    EXPECT_FORWARDED(mod->C_FindObjectsInit(s, &attr, 1), "C_FindObjectsInit", s);
    EXPECT_FORWARDED(mod->C_FindObjects(s, &h, 1, &len), "C_FindObjects", s);
    EXPECT_FORWARDED(mod->C_FindObjectsFinal(s), "C_FindObjectsFinal", s);
    EXPECT_FORWARDED(mod->C_EncryptInit(s, &mech, 1), "C_EncryptInit", s);
    EXPECT_FORWARDED(mod->C_Encrypt(s, buf, 1, buf, &len), "C_Encrypt", s);
    EXPECT_FORWARDED(mod->C_EncryptUpdate(s, buf, 1, buf, &len), "C_EncryptUpdate", s);
    EXPECT_FORWARDED(mod->C_EncryptFinal(s, buf, &len), "C_EncryptFinal", s);
    EXPECT_FORWARDED(mod->C_DecryptInit(s, &mech, 1), "C_DecryptInit", s);
    EXPECT_FORWARDED(mod->C_Decrypt(s, buf, 1, buf, &len), "C_Decrypt", s);
    EXPECT_FORWARDED(mod->C_DecryptUpdate(s, buf, 1, buf, &len), "C_DecryptUpdate", s);
    EXPECT_FORWARDED(mod->C_DecryptFinal(s, buf, &len), "C_DecryptFinal", s);
    EXPECT_FORWARDED(mod->C_DigestInit(s, &mech), "C_DigestInit", s);
    EXPECT_FORWARDED(mod->C_Digest(s, buf, 1, buf, &len), "C_Digest", s);
    EXPECT_FORWARDED(mod->C_DigestUpdate(s, buf, 1), "C_DigestUpdate", s);
    EXPECT_FORWARDED(mod->C_DigestKey(s, 1), "C_DigestKey", s);
    EXPECT_FORWARDED(mod->C_DigestFinal(s, buf, &len), "C_DigestFinal", s);
    EXPECT_FORWARDED(mod->C_SignInit(s, &mech, 1), "C_SignInit", s);
    EXPECT_FORWARDED(mod->C_Sign(s, buf, 1, buf, &len), "C_Sign", s);
    EXPECT_FORWARDED(mod->C_SignUpdate(s, buf, 1), "C_SignUpdate", s);
    EXPECT_FORWARDED(mod->C_SignFinal(s, buf, &len), "C_SignFinal", s);
    EXPECT_FORWARDED(mod->C_SignRecoverInit(s, &mech, 1), "C_SignRecoverInit", s);
    EXPECT_FORWARDED(mod->C_SignRecover(s, buf, 1, buf, &len), "C_SignRecover", s);
    EXPECT_FORWARDED(mod->C_VerifyInit(s, &mech, 1), "C_VerifyInit", s);
    EXPECT_FORWARDED(mod->C_Verify(s, buf, 1, buf, 1), "C_Verify", s);
    EXPECT_FORWARDED(mod->C_VerifyUpdate(s, buf, 1), "C_VerifyUpdate", s);
    EXPECT_FORWARDED(mod->C_VerifyFinal(s, buf, 1), "C_VerifyFinal", s);
    EXPECT_FORWARDED(mod->C_VerifyRecoverInit(s, &mech, 1), "C_VerifyRecoverInit", s);
    EXPECT_FORWARDED(mod->C_VerifyRecover(s, buf, 1, buf, &len), "C_VerifyRecover", s);
    EXPECT_FORWARDED(mod->C_DigestEncryptUpdate(s, buf, 1, buf, &len), "C_DigestEncryptUpdate", s);
    EXPECT_FORWARDED(mod->C_DecryptDigestUpdate(s, buf, 1, buf, &len), "C_DecryptDigestUpdate", s);
    EXPECT_FORWARDED(mod->C_SignEncryptUpdate(s, buf, 1, buf, &len), "C_SignEncryptUpdate", s);
    EXPECT_FORWARDED(mod->C_DecryptVerifyUpdate(s, buf, 1, buf, &len), "C_DecryptVerifyUpdate", s);
    EXPECT_FORWARDED(mod->C_GenerateKey(s, &mech, &attr, 1, &h), "C_GenerateKey", s);
    EXPECT_FORWARDED(mod->C_GenerateKeyPair(s, &mech, &attr, 1, &attr, 1, &h, &h), "C_GenerateKeyPair", s);
    EXPECT_FORWARDED(mod->C_WrapKey(s, &mech, 1, 2, buf, &len), "C_WrapKey", s);
    EXPECT_FORWARDED(mod->C_UnwrapKey(s, &mech, 1, buf, 1, &attr, 1, &h), "C_UnwrapKey", s);
    EXPECT_FORWARDED(mod->C_DeriveKey(s, &mech, 1, &attr, 1, &h), "C_DeriveKey", s);
    EXPECT_FORWARDED(mod->C_SeedRandom(s, buf, 1), "C_SeedRandom", s);
    EXPECT_FORWARDED(mod->C_GenerateRandom(s, buf, 1), "C_GenerateRandom", s);
    EXPECT_FORWARDED(mod->C_GetFunctionStatus(s), "C_GetFunctionStatus", s);
    EXPECT_FORWARDED(mod->C_CancelFunction(s), "C_CancelFunction", s);
    EXPECT_FORWARDED(mod->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL), "C_WaitForSlotEvent", CKF_DONT_BLOCK);
    EXPECT_FORWARDED(mod->C_GetMechanismInfo(1, CKM_ECDSA, &(CK_MECHANISM_INFO){0}), "C_GetMechanismInfo", 1);
    /* 68 functions in 2.40; the other five are C_Initialize, C_Finalize,
     * C_GetInfo, C_GetFunctionList and C_GetMechanismList, tested on their own. */
    assert_int_equal(n_checked, 63);
}

static void test_no_null_entries(void **st)
{
    /* A CK_FUNCTION_LIST is a version followed by function pointers only. */
    size_t n = (sizeof(CK_FUNCTION_LIST) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(void (*)(void));
    void (*const *fn)(void) = (void (*const *)(void)) & mod->C_Initialize;
    (void)st;
    assert_int_equal(n, 68);
    for (size_t i = 0; i < n; i++)
        assert_non_null(fn[i]);
}

static void test_backend_null_function(void **st)
{
    (void)st;
    fake_backend_list()->C_GetFunctionStatus = NULL;
    fake_backend_list3()->C_GetFunctionStatus = NULL;
    assert_int_equal(mod->C_GetFunctionStatus(1), CKR_FUNCTION_NOT_SUPPORTED);
}

/* ---- mechanisms ---------------------------------------------------------------- */

static void script_mechs(void)
{
    static const CK_MECHANISM_TYPE m[] = {CKM_ECDSA, CKM_ECDH1_DERIVE, CKM_AES_CBC_ENCRYPT_DATA,
                                          CKM_AES_KEY_WRAP_PAD, CKM_SHA256};
    memcpy(fake_backend()->mechs, m, sizeof(m));
    fake_backend()->n_mechs = sizeof(m) / sizeof(m[0]);
}

/* A new C_Initialize: the self-tests run again (their results are kept per
 * slot until then). */
static void reinitialize(void)
{
    assert_int_equal(mod->C_Finalize(NULL), CKR_OK);
    assert_int_equal(mod->C_Initialize(NULL), CKR_OK);
}

static bool listed(CK_MECHANISM_TYPE type)
{
    CK_MECHANISM_TYPE list[16];
    CK_ULONG n = 16;
    assert_int_equal(mod->C_GetMechanismList(1, list, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++)
        if (list[i] == type)
            return true;
    return false;
}

static void test_mechanism_list(void **st)
{
    CK_MECHANISM_TYPE list[16];
    CK_ULONG n = 0;
    (void)st;
    script_mechs();

    assert_int_equal(mod->C_GetMechanismList(1, NULL, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(mod->C_GetMechanismList(2, NULL, &n), CKR_SLOT_ID_INVALID);
    assert_int_equal(mod->C_GetMechanismList(1, NULL, &n), CKR_OK);
    /* The backend's five, then unwrap-into-token and derive-device-
     * certificate (their self-tests pass on this token). */
    assert_int_equal(n, 7);
    n = 2;
    assert_int_equal(mod->C_GetMechanismList(1, list, &n), CKR_BUFFER_TOO_SMALL);
    assert_int_equal(n, 7);
    n = 16;
    assert_int_equal(mod->C_GetMechanismList(1, list, &n), CKR_OK);
    assert_int_equal(n, 7);
    assert_int_equal(list[0], CKM_ECDSA);
    assert_int_equal(list[4], CKM_SHA256);
    assert_int_equal(list[5], CKM_GUARDIAN_UNWRAP_PACKAGE);
    assert_int_equal(list[6], CKM_GUARDIAN_DERIVE_DEVICE_CERT);

    /* What the token does counts, not the names it lists: a token that does
     * AES key wrap without listing it (NSS and CKM_AES_CBC_ENCRYPT_DATA)... */
    fake_backend()->mechs[3] = CKM_AES_ECB;
    reinitialize();
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    /* ... and one that lists 0x210A and fails it (NSS's 0x210A is not RFC
     * 5649) while 0x210B (PKCS#11 3.0's number) is RFC 5649: advertised ... */
    script_mechs();
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_PAD;
    fake_backend()->broken_rv = CKR_WRAPPED_KEY_INVALID;
    reinitialize();
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    /* ... but not where neither number is RFC 5649. */
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_KWP;
    reinitialize();
    assert_false(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    n = 16;
    assert_int_equal(mod->C_GetMechanismList(1, list, &n), CKR_OK);
    assert_int_equal(n, 6);

    /* No ECDSA (opencryptoki has no EC): derive still runs with an RSA-only
     * production CA... */
    fake_backend()->n_broken = 0;
    fake_backend()->broken_rv = 0;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_ECDSA;
    reinitialize();
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    /* ... but not without either signature. */
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_RSA_PKCS;
    reinitialize();
    assert_false(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    /* Either derivation of the key-encryption key is enough for the import;
     * neither is not. */
    fake_backend()->n_broken = 0;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_CBC_ENCRYPT_DATA;
    reinitialize();
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE)); /* CKD_SHA256_KDF */
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_ECDH1_DERIVE;
    reinitialize();
    assert_false(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
}

/* Once per slot: the first look runs the self-tests in one session, later
 * ones reuse the result until C_Finalize/C_Initialize. */
static void test_selftest_once_per_slot(void **st)
{
    CK_MECHANISM_INFO info;
    (void)st;
    script_mechs();
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    assert_int_equal(atomic_load(&fake_backend()->open_sessions), 1);
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_GUARDIAN_UNWRAP_PACKAGE, &info), CKR_OK);
    assert_int_equal(atomic_load(&fake_backend()->open_sessions), 1);
    /* A primitive that breaks later changes nothing until the next cycle. */
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_ECDH1_DERIVE;
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    reinitialize();
    assert_false(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    assert_int_equal(atomic_load(&fake_backend()->open_sessions), 2);
    /* A slot where no session opens: the list decides, and it is tried again. */
    fake_backend()->n_broken = 0;
    reinitialize();
    fake_backend()->rv = CKR_SESSION_COUNT;
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    fake_backend()->mechs[1] = CKM_AES_ECB; /* ECDH no longer listed */
    assert_false(listed(CKM_GUARDIAN_UNWRAP_PACKAGE));
    fake_backend()->rv = CKR_OK;
}

/* A self-test that needs a login (tpm2-pkcs11 makes no object before it)
 * cannot decide: the names in the list answer until a login, after which it
 * runs again. */
static void test_selftest_undecided_until_login(void **st)
{
    CK_SESSION_HANDLE s = 5;
    (void)st;
    script_mechs();
    /* No key can be made before the login: no test can run. */
    fake_backend()->create_rv = CKR_USER_NOT_LOGGED_IN;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_EC_KEY_PAIR_GEN;
    fake_backend()->broken_rv = CKR_USER_NOT_LOGGED_IN;
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE)); /* the list rule */
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    fake_backend()->mechs[0] = CKM_RSA_PKCS; /* an RSA-only CA signs with it */
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    fake_backend()->mechs[0] = CKM_SHA384; /* no signature listed */
    assert_false(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    fake_backend()->mechs[0] = CKM_ECDSA;
    /* Keys can be made now, and the token's key wrap is not RFC 5649. */
    fake_backend()->create_rv = CKR_OK;
    fake_backend()->broken[0] = CKM_AES_KEY_WRAP_PAD;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_KWP;
    fake_backend()->broken_rv = CKR_WRAPPED_KEY_INVALID;
    assert_true(listed(CKM_GUARDIAN_UNWRAP_PACKAGE)); /* not run again yet */
    assert_int_equal(mod->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4), CKR_OK);
    assert_false(listed(CKM_GUARDIAN_UNWRAP_PACKAGE)); /* decided: the unwrap fails */
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
    fake_backend()->mechs[0] = CKM_SHA384; /* decided: the list no longer matters */
    assert_true(listed(CKM_GUARDIAN_DERIVE_DEVICE_CERT));
}

/* What the unwrap self-test measures for the key transports, per slot
 * (selftest.c): each scheme on its own, and the number RFC 5649 has there;
 * and what the agreement certificate then states (transport.h). */
static void test_transport_facts(void **st)
{
    struct guardian_transport_facts f;
    struct guardian_transports t;
    char err[200];
    X509 *x = X509_new();
    (void)st;
    script_mechs();
    reinitialize();
    guardian_transport_facts(fake_backend_list(), 1, &f);
    assert_int_equal(f.state, GUARDIAN_SELFTEST_PASS);
    assert_int_equal(f.schemes, (1u << GUARDIAN_KT_ECDH_SHA256KDF) | (1u << GUARDIAN_KT_ECDH_AESCBC));
    assert_int_equal(f.kwp, CKM_AES_KEY_WRAP_PAD); /* 0x210A first, SoftHSM's */
    assert_false(f.nss_db);
    /* The statement: strongest first, and no transport last. */
    assert_non_null(x);
    assert_int_equal(guardian_transport_state_in_cert(fake_backend_list(), 5, x), 1);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.present, 1);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_SHA256KDF);
    assert_int_equal(t.kt[1], GUARDIAN_KT_ECDH_AESCBC);
    assert_int_equal(t.kt[2], GUARDIAN_KT_NONE);

    /* NSS: 0x210A is not RFC 5649, 0x210B is. */
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_PAD;
    fake_backend()->broken_rv = CKR_WRAPPED_KEY_INVALID;
    reinitialize();
    guardian_transport_facts(fake_backend_list(), 1, &f);
    assert_int_equal(f.state, GUARDIAN_SELFTEST_PASS);
    assert_int_equal(f.kwp, CKM_AES_KEY_WRAP_KWP);
    assert_int_equal(f.schemes, (1u << GUARDIAN_KT_ECDH_SHA256KDF) | (1u << GUARDIAN_KT_ECDH_AESCBC));

    /* No AES_CBC_ENCRYPT_DATA: the X9.63 scheme only, and A says so. */
    fake_backend()->n_broken = 0;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_CBC_ENCRYPT_DATA;
    reinitialize();
    guardian_transport_facts(fake_backend_list(), 1, &f);
    assert_int_equal(f.schemes, 1u << GUARDIAN_KT_ECDH_SHA256KDF);
    assert_int_equal(guardian_transport_state_in_cert(fake_backend_list(), 5, x), 1);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.n, 2); /* replaced, not added twice */
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_SHA256KDF);
    assert_int_equal(t.kt[1], GUARDIAN_KT_NONE);

    /* Neither RFC 5649 number: no ECDH scheme works, only no transport is stated. */
    fake_backend()->n_broken = 0;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_PAD;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_AES_KEY_WRAP_KWP;
    reinitialize();
    guardian_transport_facts(fake_backend_list(), 1, &f);
    assert_int_equal(f.state, GUARDIAN_SELFTEST_FAIL);
    assert_int_equal(f.schemes, 0);
    assert_int_equal(f.kwp, 0);
    assert_int_equal(guardian_transport_state_in_cert(fake_backend_list(), 5, x), 1);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.kt[0], GUARDIAN_KT_NONE);

    /* Not measurable now (no key can be made before a login): A states
     * nothing, which reads as aes-cbc only. */
    fake_backend()->n_broken = 0;
    fake_backend()->create_rv = CKR_USER_NOT_LOGGED_IN;
    reinitialize();
    guardian_transport_facts(fake_backend_list(), 1, &f);
    assert_int_equal(f.state, GUARDIAN_SELFTEST_UNKNOWN);
    X509_free(x);
    x = X509_new();
    assert_int_equal(guardian_transport_state_in_cert(fake_backend_list(), 5, x), 1);
    assert_int_equal(guardian_transports_read(x, &t, err, sizeof(err)), 1);
    assert_int_equal(t.present, 0);
    assert_int_equal(t.kt[0], GUARDIAN_KT_ECDH_AESCBC);
    fake_backend()->create_rv = CKR_OK;
    X509_free(x);
}

/* Calling a vendor mechanism on a slot that does not advertise it is
 * CKR_MECHANISM_INVALID, before the mechanism looks at anything. */
static void test_unadvertised_mechanism_invalid(void **st)
{
    CK_MECHANISM unwrap = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    CK_MECHANISM derive = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, NULL, 0};
    CK_MECHANISM_INFO info;
    CK_BYTE pkg[4] = {1, 2, 3, 4};
    CK_OBJECT_HANDLE h = 0;
    (void)st;
    script_mechs();
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_ECDH1_DERIVE;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_ECDSA;
    fake_backend()->broken[fake_backend()->n_broken++] = CKM_RSA_PKCS;
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_GUARDIAN_UNWRAP_PACKAGE, &info), CKR_MECHANISM_INVALID);
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_GUARDIAN_DERIVE_DEVICE_CERT, &info), CKR_MECHANISM_INVALID);
    assert_int_equal(mod->C_UnwrapKey(1, &unwrap, 2, pkg, sizeof(pkg), NULL, 0, &h), CKR_MECHANISM_INVALID);
    assert_int_equal(mod->C_DeriveKey(1, &derive, 2, NULL, 0, &h), CKR_MECHANISM_INVALID);
    assert_int_equal(h, 0);
    /* The backend never saw them. */
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_UNWRAP_PACKAGE);
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_DERIVE_DEVICE_CERT);
    /* Where they work, the same calls reach the mechanisms (which refuse the
     * missing parameter). */
    fake_backend()->n_broken = 0;
    reinitialize();
    assert_int_equal(mod->C_DeriveKey(1, &derive, 2, NULL, 0, &h), CKR_MECHANISM_PARAM_INVALID);
}

/* Enrolled roots count only on a token that keeps CKA_TRUSTED for its SO
 * (mechs/unwrap_package.c): tried once per slot, in a session of its own. */
static void test_trusted_so_only(void **st)
{
    char why[200];
    int opened;
    (void)st;
    /* tpm2-pkcs11 and NSS: a plain user makes a trusted certificate. */
    assert_false(guardian_trusted_so_only(fake_backend_list(), 5, why, sizeof(why)));
    assert_non_null(strstr(why, "plain user can make a CKA_TRUSTED certificate"));
    opened = atomic_load(&fake_backend()->open_sessions);
    assert_int_equal(opened, 1);
    /* Kept for the slot: the token is not asked again. */
    fake_backend()->refuse_trusted = 1;
    assert_false(guardian_trusted_so_only(fake_backend_list(), 5, why, sizeof(why)));
    assert_int_equal(atomic_load(&fake_backend()->open_sessions), opened);
    /* SoftHSM refuses it to a plain user: after a new C_Initialize, true. */
    reinitialize();
    assert_true(guardian_trusted_so_only(fake_backend_list(), 5, why, sizeof(why)));
    assert_string_equal(why, "CKA_TRUSTED is the SO's");
    /* Where even the control cannot be made now, false and tried again. */
    reinitialize();
    fake_backend()->create_rv = CKR_USER_NOT_LOGGED_IN;
    assert_false(guardian_trusted_so_only(fake_backend_list(), 5, why, sizeof(why)));
    fake_backend()->create_rv = CKR_OK;
    assert_true(guardian_trusted_so_only(fake_backend_list(), 5, why, sizeof(why)));
}

/* A 2.40 caller does not get the flags PKCS#11 3.0 added; a caller of the
 * 3.0 interface of a 3.0 backend does. */
static void test_mechanism_info_3_0_flags(void **st)
{
    const CK_FLAGS v3_only = 0x7e | 0x04000000; /* CKF_MESSAGE_*, _MULTI_MESSAGE, _FIND_OBJECTS, _EC_CURVENAME */
    CK_MECHANISM_INFO info;
    (void)st;
    fake_backend()->mech_info_flags = CKF_ENCRYPT | CKF_DECRYPT | v3_only | CKF_EC_NAMEDCURVE;
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_AES_GCM, &info), CKR_OK);
    assert_int_equal(info.flags, CKF_ENCRYPT | CKF_DECRYPT | CKF_EC_NAMEDCURVE);
    {
        CK_INTERFACE *iface = NULL;
        CK_VERSION v30 = {3, 0};
        CK_RV rv = C_GetInterface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &iface, 0);
#ifdef FAKE_WITH_3_0
        assert_int_equal(rv, CKR_OK);
        CK_FUNCTION_LIST_3_0 *l3 = iface->pFunctionList;
        assert_int_equal(l3->C_GetMechanismInfo(1, CKM_AES_GCM, &info), CKR_OK);
        assert_int_equal(info.flags, CKF_ENCRYPT | CKF_DECRYPT | v3_only | CKF_EC_NAMEDCURVE);
#else
        assert_int_equal(rv, CKR_ARGUMENTS_BAD); /* no 3.0 interface over a 2.40 backend */
#endif
    }
}

static void test_mechanism_list_drops_backend_collision(void **st)
{
    CK_MECHANISM_TYPE list[16];
    CK_ULONG n = 16;
    (void)st;
    script_mechs();
    /* A backend that (wrongly) uses a number in our range. */
    fake_backend()->mechs[fake_backend()->n_mechs++] = CKM_GUARDIAN_DERIVE_DEVICE_CERT;
    assert_int_equal(mod->C_GetMechanismList(1, list, &n), CKR_OK);
    /* Listed once, as ours (after the backend's own five). */
    assert_int_equal(n, 7);
    for (CK_ULONG i = 0; i < 6; i++)
        assert_int_not_equal(list[i], CKM_GUARDIAN_DERIVE_DEVICE_CERT);
    assert_int_equal(list[6], CKM_GUARDIAN_DERIVE_DEVICE_CERT);
}

static void test_mechanism_info(void **st)
{
    CK_MECHANISM_INFO info;
    (void)st;
    script_mechs();
    fake_backend()->mech_info_flags = CKF_SIGN;
    memset(&info, 0xff, sizeof(info));
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_ECDSA, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_ECDSA, &info), CKR_OK);
    /* Garbage in the caller's struct does not leak into the answer. */
    assert_int_equal(info.flags, CKF_SIGN);
    assert_int_equal(fake_backend()->last_mechanism, CKM_ECDSA);

    fake_backend()->last_name = NULL;
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_GUARDIAN_UNWRAP_PACKAGE, &info), CKR_OK);
    assert_int_equal(info.flags, CKF_UNWRAP);
    assert_int_equal(mod->C_GetMechanismInfo(1, CKM_GUARDIAN_DERIVE_DEVICE_CERT, &info), CKR_OK);
    assert_int_equal(info.flags, CKF_DERIVE);
    assert_int_equal(mod->C_GetMechanismInfo(2, CKM_GUARDIAN_UNWRAP_PACKAGE, &info), CKR_SLOT_ID_INVALID);
    /* The backend was never asked about our mechanism. */
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_UNWRAP_PACKAGE);
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_DERIVE_DEVICE_CERT);
}

static void test_vendor_mechanisms_not_forwarded(void **st)
{
    CK_BYTE param[4] = {0};
    CK_MECHANISM unwrap = {CKM_GUARDIAN_UNWRAP_PACKAGE, param, sizeof(param)};
    CK_MECHANISM derive = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, NULL, 0};
    CK_BYTE pkg[4] = {1, 2, 3, 4};
    CK_OBJECT_HANDLE h = 0;
    (void)st;
    /* Bad parameters (none defined for unwrap; derive's is missing): refused
     * before the backend is asked. */
    script_mechs();
    assert_int_equal(mod->C_UnwrapKey(1, &unwrap, 2, pkg, sizeof(pkg), NULL, 0, &h), CKR_MECHANISM_PARAM_INVALID);
    assert_int_equal(mod->C_DeriveKey(1, &derive, 2, NULL, 0, &h), CKR_MECHANISM_PARAM_INVALID);
    /* The backend was asked which slot the session is on (and ran the
     * self-tests there), never with our mechanisms. */
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_UNWRAP_PACKAGE);
    assert_int_not_equal(fake_backend()->last_mechanism, CKM_GUARDIAN_DERIVE_DEVICE_CERT);
    assert_int_equal(h, 0);
    /* NULL mechanism: the backend decides, as it would without us. */
    fake_backend()->rv = CKR_ARGUMENTS_BAD;
    assert_int_equal(mod->C_DeriveKey(1, NULL, 2, NULL, 0, &h), CKR_ARGUMENTS_BAD);
    assert_string_equal(fake_backend()->last_name, "C_DeriveKey");
}

static CK_RV dummy_derive(CK_FUNCTION_LIST *be, struct guardian_store *st, CK_SESSION_HANDLE s, CK_MECHANISM *m,
                          CK_OBJECT_HANDLE k, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    (void)be, (void)st, (void)s, (void)m, (void)k, (void)t, (void)n, (void)out;
    return CKR_OK;
}

static void test_registry_availability(void **st)
{
    static const CK_MECHANISM_TYPE req[] = {CKM_ECDSA, CKM_SHA256};
    struct guardian_mech m = {.type = CKM_GUARDIAN_BASE | 0xfff0, .requires = req, .n_requires = 2};
    CK_MECHANISM_TYPE have[] = {CKM_SHA256, CKM_RSA_PKCS, CKM_ECDSA};
    (void)st;
    assert_false(guardian_mech_available(&m, have, 3)); /* not implemented */
    m.derive = dummy_derive;
    assert_true(guardian_mech_available(&m, have, 3));
    assert_false(guardian_mech_available(&m, have, 2)); /* CKM_ECDSA missing */
    assert_false(guardian_mech_available(NULL, have, 3));
    /* One of: derive's ECDSA or RSA PKCS#1 v1.5 (an RSA-only CA). */
    {
        static const CK_MECHANISM_TYPE sig[] = {CKM_ECDSA, CKM_RSA_PKCS};
        CK_MECHANISM_TYPE rsa_only[] = {CKM_SHA256, CKM_RSA_PKCS};
        m.requires_one_of = sig;
        m.n_requires_one_of = 2;
        m.n_requires = 1; /* CKM_ECDSA no longer required */
        m.requires = req + 1;
        assert_true(guardian_mech_available(&m, rsa_only, 2));
        assert_true(guardian_mech_available(&m, have, 3));
        assert_false(guardian_mech_available(&m, rsa_only, 1)); /* neither signature */
    }
    assert_null(guardian_mech_find(CKM_ECDSA));
    assert_ptr_equal(guardian_mech_find(CKM_GUARDIAN_UNWRAP_PACKAGE), &guardian_mech_unwrap_package);
    assert_ptr_equal(guardian_mech_find(CKM_GUARDIAN_DERIVE_DEVICE_CERT), &guardian_mech_derive_device_cert);
    for (size_t i = 0; i < guardian_mech_count(); i++)
        assert_true(GUARDIAN_IS_VENDOR_VALUE(CKM_GUARDIAN_BASE, guardian_mech_at(i)->type));
    assert_null(guardian_mech_at(guardian_mech_count()));
}

/* ---- interfaces ------------------------------------------------------------------ */

static void test_interfaces(void **st)
{
    CK_INTERFACE ifs[4];
    CK_INTERFACE *iface = NULL;
    CK_ULONG n = 0;
    CK_VERSION v240 = {2, 40}, v30 = {3, 0}, v31 = {3, 1};
#ifdef FAKE_WITH_3_0
    const CK_ULONG expect = 2;
#else
    const CK_ULONG expect = 1;
#endif
    (void)st;

    assert_int_equal(C_GetInterfaceList(NULL, NULL), CKR_ARGUMENTS_BAD);
    assert_int_equal(C_GetInterfaceList(NULL, &n), CKR_OK);
    assert_int_equal(n, expect);
    n = 0;
    assert_int_equal(C_GetInterfaceList(ifs, &n), CKR_BUFFER_TOO_SMALL);
    assert_int_equal(n, expect);
    n = 4;
    assert_int_equal(C_GetInterfaceList(ifs, &n), CKR_OK);
    assert_int_equal(n, expect);
    for (CK_ULONG i = 0; i < n; i++)
        assert_string_equal((char *)ifs[i].pInterfaceName, "PKCS 11");

    assert_int_equal(C_GetInterface(NULL, NULL, NULL, 0), CKR_ARGUMENTS_BAD);
    assert_int_equal(C_GetInterface((CK_UTF8CHAR_PTR) "Vendor X", NULL, &iface, 0), CKR_ARGUMENTS_BAD);
    assert_int_equal(C_GetInterface(NULL, &v31, &iface, 0), CKR_ARGUMENTS_BAD);
    assert_int_equal(C_GetInterface(NULL, NULL, &iface, CKF_INTERFACE_FORK_SAFE), CKR_ARGUMENTS_BAD);

    assert_int_equal(C_GetInterface((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &iface, 0), CKR_OK);
    assert_ptr_equal(iface->pFunctionList, mod);
    assert_int_equal(C_GetInterface(NULL, NULL, &iface, 0), CKR_OK);
#ifdef FAKE_WITH_3_0
    {
        CK_FUNCTION_LIST_3_0 *l3;
        CK_INFO info;
        assert_int_equal(((CK_FUNCTION_LIST_3_0 *)iface->pFunctionList)->version.major, 3);
        assert_int_equal(C_GetInterface(NULL, &v30, &iface, 0), CKR_OK);
        l3 = iface->pFunctionList;
        assert_int_equal(l3->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
        assert_int_equal(l3->C_Initialize(NULL), CKR_OK);
        assert_int_equal(l3->C_GetInfo(&info), CKR_OK);
        assert_int_equal(info.cryptokiVersion.major, 3);
        assert_int_equal(info.cryptokiVersion.minor, 0);
        {
            CK_INTERFACE *again = NULL;
            assert_int_equal(l3->C_GetInterface(NULL, &v30, &again, 0), CKR_OK);
            assert_ptr_equal(again, iface);
        }
    }
#else
    /* The backend's list says 3.1, but it came from C_GetFunctionList: 2.40. */
    assert_ptr_equal(iface->pFunctionList, mod);
    assert_int_equal(C_GetInterface(NULL, &v30, &iface, 0), CKR_ARGUMENTS_BAD);
#endif
}

#ifdef FAKE_WITH_3_0
static void test_every_3_0_function_forwarded(void **st)
{
    CK_INTERFACE *iface = NULL;
    CK_VERSION v30 = {3, 0};
    CK_FUNCTION_LIST_3_0 *l;
    const CK_SESSION_HANDLE s = 0x3030;
    CK_MECHANISM mech = {CKM_AES_GCM, NULL, 0};
    CK_BYTE buf[8] = {0};
    CK_ULONG len = sizeof(buf);
    int n_checked = 0;
    (void)st;

    assert_int_equal(C_GetInterface(NULL, &v30, &iface, 0), CKR_OK);
    l = iface->pFunctionList;
    EXPECT_FORWARDED(l->C_LoginUser(s, CKU_USER, buf, 4, buf, 4), "C_LoginUser", s);
    EXPECT_FORWARDED(l->C_SessionCancel(s, 0), "C_SessionCancel", s);
    EXPECT_FORWARDED(l->C_MessageEncryptInit(s, &mech, 1), "C_MessageEncryptInit", s);
    EXPECT_FORWARDED(l->C_EncryptMessage(s, buf, 1, buf, 1, buf, 1, buf, &len), "C_EncryptMessage", s);
    EXPECT_FORWARDED(l->C_EncryptMessageBegin(s, buf, 1, buf, 1), "C_EncryptMessageBegin", s);
    EXPECT_FORWARDED(l->C_EncryptMessageNext(s, buf, 1, buf, 1, buf, &len, 0), "C_EncryptMessageNext", s);
    EXPECT_FORWARDED(l->C_MessageEncryptFinal(s), "C_MessageEncryptFinal", s);
    EXPECT_FORWARDED(l->C_MessageDecryptInit(s, &mech, 1), "C_MessageDecryptInit", s);
    EXPECT_FORWARDED(l->C_DecryptMessage(s, buf, 1, buf, 1, buf, 1, buf, &len), "C_DecryptMessage", s);
    EXPECT_FORWARDED(l->C_DecryptMessageBegin(s, buf, 1, buf, 1), "C_DecryptMessageBegin", s);
    EXPECT_FORWARDED(l->C_DecryptMessageNext(s, buf, 1, buf, 1, buf, &len, 0), "C_DecryptMessageNext", s);
    EXPECT_FORWARDED(l->C_MessageDecryptFinal(s), "C_MessageDecryptFinal", s);
    EXPECT_FORWARDED(l->C_MessageSignInit(s, &mech, 1), "C_MessageSignInit", s);
    EXPECT_FORWARDED(l->C_SignMessage(s, buf, 1, buf, 1, buf, &len), "C_SignMessage", s);
    EXPECT_FORWARDED(l->C_SignMessageBegin(s, buf, 1), "C_SignMessageBegin", s);
    EXPECT_FORWARDED(l->C_SignMessageNext(s, buf, 1, buf, 1, buf, &len), "C_SignMessageNext", s);
    EXPECT_FORWARDED(l->C_MessageSignFinal(s), "C_MessageSignFinal", s);
    EXPECT_FORWARDED(l->C_MessageVerifyInit(s, &mech, 1), "C_MessageVerifyInit", s);
    EXPECT_FORWARDED(l->C_VerifyMessage(s, buf, 1, buf, 1, buf, 1), "C_VerifyMessage", s);
    EXPECT_FORWARDED(l->C_VerifyMessageBegin(s, buf, 1), "C_VerifyMessageBegin", s);
    EXPECT_FORWARDED(l->C_VerifyMessageNext(s, buf, 1, buf, 1, buf, 1), "C_VerifyMessageNext", s);
    EXPECT_FORWARDED(l->C_MessageVerifyFinal(s), "C_MessageVerifyFinal", s);
    EXPECT_FORWARDED(l->C_Sign(s, buf, 1, buf, &len), "C_Sign", s);
    assert_int_equal(n_checked, 23);
}
#endif

/* ---- logging never carries a PIN ---------------------------------------------- */

static void test_trace_names_calls_not_pins(void **st)
{
    char path[] = "/tmp/guardian-trace-XXXXXX";
    char text[8192] = {0};
    CK_UTF8CHAR pin[] = "S3cretPIN-4711";
    int fd = mkstemp(path), saved = dup(STDERR_FILENO);
    ssize_t got;
    (void)st;

    assert_true(fd >= 0 && saved >= 0);
    dup2(fd, STDERR_FILENO);
    guardian_log_set_level(GUARDIAN_LOG_TRACE);
    fake_backend()->rv = CKR_PIN_INCORRECT;
    assert_int_equal(mod->C_Login(1, CKU_USER, pin, sizeof(pin) - 1), CKR_PIN_INCORRECT);
    guardian_log_set_level(GUARDIAN_LOG_WARN);
    dup2(saved, STDERR_FILENO);
    close(saved);
    got = pread(fd, text, sizeof(text) - 1, 0);
    close(fd);
    unlink(path);
    assert_true(got > 0);
    assert_non_null(strstr(text, "trace: call: C_Login\n"));
    assert_non_null(strstr(text, "C_Login = CKR_PIN_INCORRECT"));
    assert_null(strstr(text, "S3cretPIN"));
}

int main(void)
{
    /* The vendor mechanisms open the store in GUARDIAN_STATE_DIR. */
    char state[] = "/tmp/guardian-unit-state-XXXXXX";
    if (mkdtemp(state) == NULL)
        return 1;
    setenv("GUARDIAN_STATE_DIR", state, 1);
    const struct CMUnitTest before_init[] = {
        cmocka_unit_test_setup_teardown(test_calls_before_initialize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_initialize_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_initialize_backend_init_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_initialize_failure_passes_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_initialize_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_initialized_by_someone_else, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interfaces, setup, teardown),
        cmocka_unit_test(test_registry_availability),
    };
    const struct CMUnitTest initialized[] = {
        cmocka_unit_test_setup_teardown(test_get_info, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_every_function_forwarded, setup_init, teardown),
#ifdef FAKE_WITH_3_0
        cmocka_unit_test_setup_teardown(test_every_3_0_function_forwarded, setup_init, teardown),
#endif
        cmocka_unit_test_setup_teardown(test_no_null_entries, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_backend_null_function, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_mechanism_list, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_mechanism_list_drops_backend_collision, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_mechanism_info, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_selftest_once_per_slot, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_selftest_undecided_until_login, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_transport_facts, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_unadvertised_mechanism_invalid, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_mechanism_info_3_0_flags, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_trusted_so_only, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_vendor_mechanisms_not_forwarded, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_fork_child_must_reinitialize, setup_init, teardown),
        cmocka_unit_test_setup_teardown(test_trace_names_calls_not_pins, setup_init, teardown),
    };
    int failed = cmocka_run_group_tests_name("module: lifecycle and interfaces", before_init, NULL, NULL);
    failed += cmocka_run_group_tests_name("module: initialized", initialized, NULL, NULL);
    {
        char cmd[sizeof(state) + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", state);
        if (system(cmd) != 0)
            failed++;
    }
    return failed;
}
