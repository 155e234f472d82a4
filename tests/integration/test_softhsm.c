/*
 * test_softhsm.c — the module over a real SoftHSMv2, one fresh token per test.
 *
 * The conformance test runs one scripted session twice, against SoftHSM
 * directly and through guardian-pkcs11.so, writes every return value and every
 * output that must not differ into a transcript, and compares the two.
 * Config/backend failures run in forked children: the module loads its backend
 * once per process.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "softhsm_token.h"
/* after softhsm_token.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
/* This program, to re-run in a fresh process (argv[0]: under valgrind,
 * /proc/self/exe names valgrind). */
static char self_path[PATH_MAX];

static int token_setup(void **st)
{
    (void)st;
    assert_int_equal(test_token_create(&token, "itest"), 0);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    return 0;
}

static int token_teardown(void **st)
{
    (void)st;
    test_token_destroy(&token);
    return 0;
}

/* ---- conformance: direct vs through the module ----------------------------- */

struct transcript {
    char *text;
    size_t len, cap;
    CK_ULONG vendor_mechs; /* Guardian mechanisms listed on the token's slot */
};

static void tr_add(struct transcript *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tr_add(struct transcript *t, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (t->cap - t->len < 4096) {
        t->cap = t->cap * 2 + 65536;
        t->text = realloc(t->text, t->cap);
        assert_non_null(t->text);
    }
    va_start(ap, fmt);
    n = vsnprintf(t->text + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < t->cap - t->len);
    t->len += (size_t)n;
}

static void tr_hex(struct transcript *t, const char *what, const CK_BYTE *b, CK_ULONG n)
{
    tr_add(t, "%s:", what);
    for (CK_ULONG i = 0; i < n; i++)
        tr_add(t, "%02x", b[i]);
    tr_add(t, "\n");
}

#define RV(t, call) tr_add((t), "%s -> 0x%lx\n", #call, (unsigned long)(call))

static void conformance_script(CK_FUNCTION_LIST *p, struct transcript *t)
{
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_SLOT_ID slot = 0, slots[8];
    CK_ULONG n = 0, len = 0;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_SESSION_INFO sinfo;
    CK_MECHANISM_TYPE mechs[256];
    CK_OBJECT_HANDLE pub = 0, priv = 0, found[8];
    CK_BYTE ec_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BYTE label[] = "conf-key";
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, ec_p256, sizeof(ec_p256)}, {CKA_TOKEN, &no, 1},
                            {CKA_VERIFY, &yes, 1}, {CKA_LABEL, label, sizeof(label) - 1}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                             {CKA_PRIVATE, &yes, 1}, {CKA_LABEL, label, sizeof(label) - 1}};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0}, sha = {CKM_SHA256, NULL, 0};
    CK_BYTE hash[32], sig[128], buf[256], abc[] = "abc";
    CK_ATTRIBUTE get[2];
    CK_ATTRIBUTE find_t[] = {{CKA_LABEL, label, sizeof(label) - 1}};

    RV(t, p->C_Initialize(&args));
    RV(t, p->C_Initialize(&args));
    RV(t, p->C_GetSlotList(CK_TRUE, NULL, &n));
    tr_add(t, "slots with token: %lu\n", n);
    n = 0;
    RV(t, p->C_GetSlotList(CK_FALSE, slots, &n)); /* too small */
    RV(t, test_find_slot(p, token.label, &slot));
    RV(t, p->C_GetSlotInfo(slot, &si));
    tr_add(t, "slot flags 0x%lx\n", si.flags);
    RV(t, p->C_GetTokenInfo(slot, &ti));
    tr_add(t, "token %.32s %.16s %.16s flags 0x%lx pin %lu..%lu\n", ti.label, ti.model, ti.serialNumber, ti.flags,
           ti.ulMinPinLen, ti.ulMaxPinLen);
    RV(t, p->C_GetSlotInfo(0xdeadbeef, &si));
    RV(t, p->C_GetTokenInfo(0xdeadbeef, &ti));

    n = 256;
    RV(t, p->C_GetMechanismList(slot, mechs, &n));
    /* The Guardian adds its vendor mechanisms to the backend's: those are
     * counted apart, the rest must be identical. */
    t->vendor_mechs = 0;
    for (CK_ULONG i = 0; i < n; i++)
        t->vendor_mechs += GUARDIAN_IS_VENDOR_VALUE(CKM_GUARDIAN_BASE, mechs[i]);
    tr_add(t, "mechanisms: %lu\n", n - t->vendor_mechs);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_MECHANISM_INFO mi;
        if (GUARDIAN_IS_VENDOR_VALUE(CKM_GUARDIAN_BASE, mechs[i]))
            continue;
        memset(&mi, 0, sizeof(mi));
        tr_add(t, "mech 0x%lx rv 0x%lx", mechs[i], (unsigned long)p->C_GetMechanismInfo(slot, mechs[i], &mi));
        tr_add(t, " %lu..%lu 0x%lx\n", mi.ulMinKeySize, mi.ulMaxKeySize, mi.flags);
    }
    n = 1;
    RV(t, p->C_GetMechanismList(slot, mechs, &n));
    /* A number in our range that names no mechanism: invalid, as direct. */
    RV(t, p->C_GetMechanismInfo(slot, CKM_GUARDIAN_BASE | 0xFFFFUL, &(CK_MECHANISM_INFO){0}));

    RV(t, p->C_OpenSession(slot, 0, NULL, NULL, &s));
    RV(t, p->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    RV(t, p->C_GetSessionInfo(s, &sinfo));
    tr_add(t, "session state %lu flags 0x%lx\n", sinfo.state, sinfo.flags);
    RV(t, p->C_GetSessionInfo(s + 1000, &sinfo));
    RV(t, p->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "9999", 4));
    RV(t, p->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4));
    RV(t, p->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4));

    RV(t, p->C_DigestInit(s, &sha));
    len = sizeof(hash);
    RV(t, p->C_Digest(s, abc, 3, hash, &len));
    tr_hex(t, "sha256(abc)", hash, len);

    RV(t, p->C_GenerateKeyPair(s, &gen, pub_t, 4, priv_t, 5, &pub, &priv));
    RV(t, p->C_SignInit(s, &ecdsa, priv));
    len = 0;
    RV(t, p->C_Sign(s, hash, sizeof(hash), NULL, &len));
    tr_add(t, "signature length %lu\n", len);
    len = 10;
    RV(t, p->C_Sign(s, hash, sizeof(hash), sig, &len));
    len = sizeof(sig);
    RV(t, p->C_Sign(s, hash, sizeof(hash), sig, &len));
    RV(t, p->C_VerifyInit(s, &ecdsa, pub));
    RV(t, p->C_Verify(s, hash, sizeof(hash), sig, len));
    sig[5] ^= 1;
    RV(t, p->C_VerifyInit(s, &ecdsa, pub));
    RV(t, p->C_Verify(s, hash, sizeof(hash), sig, len));

    get[0] = (CK_ATTRIBUTE){CKA_EC_PARAMS, buf, sizeof(buf)};
    RV(t, p->C_GetAttributeValue(s, pub, get, 1));
    tr_hex(t, "ec params", buf, get[0].ulValueLen);
    get[0] = (CK_ATTRIBUTE){CKA_VALUE, buf, sizeof(buf)};
    RV(t, p->C_GetAttributeValue(s, priv, get, 1));
    tr_add(t, "private CKA_VALUE len 0x%lx\n", get[0].ulValueLen);
    RV(t, p->C_GetAttributeValue(s, 0xdead, get, 1));

    RV(t, p->C_FindObjectsInit(s, find_t, 1));
    n = 0;
    RV(t, p->C_FindObjects(s, found, 8, &n));
    tr_add(t, "found %lu\n", n);
    RV(t, p->C_FindObjectsFinal(s));
    RV(t, p->C_GenerateRandom(s, buf, 32));
    RV(t, p->C_DestroyObject(s, pub));
    RV(t, p->C_DestroyObject(s, pub));
    RV(t, p->C_Logout(s));
    RV(t, p->C_CloseAllSessions(slot));
    RV(t, p->C_CloseSession(s));
    RV(t, p->C_Finalize(NULL));
    RV(t, p->C_Finalize(NULL));
}

static void test_conformance_direct_vs_module(void **st)
{
    struct transcript direct = {0}, module = {0};
    CK_FUNCTION_LIST *d = test_load_module(test_softhsm_path(), NULL);
    CK_FUNCTION_LIST *m = test_load_module(test_guardian_path(), NULL);
    (void)st;

    assert_non_null(d);
    assert_non_null(m);
    conformance_script(d, &direct);
    conformance_script(m, &module);
    if (direct.len != module.len || memcmp(direct.text, module.text, direct.len) != 0) {
        FILE *f1 = fopen("conformance-direct.txt", "w"), *f2 = fopen("conformance-module.txt", "w");
        if (f1 && f2) {
            fwrite(direct.text, 1, direct.len, f1);
            fwrite(module.text, 1, module.len, f2);
        }
        if (f1)
            fclose(f1);
        if (f2)
            fclose(f2);
        fail_msg("transcripts differ: diff conformance-direct.txt conformance-module.txt");
    }
    assert_int_equal(direct.vendor_mechs, 0);
    assert_int_equal(module.vendor_mechs, 2); /* CKM_GUARDIAN_UNWRAP_PACKAGE, _DERIVE_DEVICE_CERT */
    /* Sanity: the script really exercised the token. */
    assert_non_null(strstr(module.text, "signature length 64"));
    assert_non_null(strstr(module.text, "found 2"));
    free(direct.text);
    free(module.text);
}

/* ---- fork ----------------------------------------------------------------- */

static CK_RV sign_once(CK_FUNCTION_LIST *p, CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0};
    CK_BYTE ec_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, ec_p256, sizeof(ec_p256)}, {CKA_TOKEN, &no, 1}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE pub, priv;
    CK_BYTE hash[32] = {1}, sig[64];
    CK_ULONG len = sizeof(sig);
    CK_RV rv;

    rv = p->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        return rv;
    rv = p->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4);
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    if (rv == CKR_OK)
        rv = p->C_GenerateKeyPair(s, &gen, pub_t, 2, priv_t, 2, &pub, &priv);
    if (rv == CKR_OK)
        rv = p->C_SignInit(s, &ecdsa, priv);
    if (rv == CKR_OK)
        rv = p->C_Sign(s, hash, sizeof(hash), sig, &len);
    p->C_CloseSession(s);
    return rv;
}

static void test_fork(void **st)
{
    CK_FUNCTION_LIST *m = test_load_module(test_guardian_path(), NULL);
    CK_SLOT_ID slot;
    int status = 0;
    pid_t pid;
    (void)st;

    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(sign_once(m, slot), CKR_OK);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_ULONG n;
        int fail = 0;
        if (m->C_GetSlotList(CK_TRUE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED)
            fail |= 1;
        if (sign_once(m, slot) != CKR_CRYPTOKI_NOT_INITIALIZED)
            fail |= 2;
        if (m->C_Initialize(NULL) != CKR_OK)
            fail |= 4;
        if (sign_once(m, slot) != CKR_OK)
            fail |= 8;
        if (m->C_Finalize(NULL) != CKR_OK)
            fail |= 16;
        _exit(fail);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(sign_once(m, slot), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
}

/* ---- sharing a backend another user initialized (p11-kit loads SoftHSM's own
 * .module beside ours into the same process) ---------------------------- */

static void test_shared_backend(void **st)
{
    CK_FUNCTION_LIST *d = test_load_module(test_softhsm_path(), NULL);
    CK_FUNCTION_LIST *m = test_load_module(test_guardian_path(), NULL);
    CK_SLOT_ID slot;
    (void)st;

    assert_int_equal(d->C_Initialize(NULL), CKR_OK);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(sign_once(m, slot), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    /* The owner's SoftHSM is still initialized and working. */
    assert_int_equal(sign_once(d, slot), CKR_OK);
    assert_int_equal(d->C_Finalize(NULL), CKR_OK);
}

/* ---- racing C_Initialize (SoftHSM alone crashes here) --------------------- */

struct race {
    CK_FUNCTION_LIST *m;
    pthread_barrier_t barrier;
    CK_RV rv[8];
    atomic_int next;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    int me = atomic_fetch_add(&r->next, 1);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    pthread_barrier_wait(&r->barrier);
    r->rv[me] = r->m->C_Initialize(&args);
    return NULL;
}

static void test_initialize_race(void **st)
{
    struct race r = {.m = test_load_module(test_guardian_path(), NULL)};
    pthread_t t[8];
    CK_SLOT_ID slot;
    int ok = 0;
    (void)st;

    assert_non_null(r.m);
    for (int round = 0; round < 20; round++) {
        atomic_store(&r.next, 0);
        pthread_barrier_init(&r.barrier, NULL, 8);
        for (int i = 0; i < 8; i++)
            pthread_create(&t[i], NULL, race_thread, &r);
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&r.barrier);
        ok = 0;
        for (int i = 0; i < 8; i++) {
            ok += r.rv[i] == CKR_OK;
            assert_true(r.rv[i] == CKR_OK || r.rv[i] == CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        assert_int_equal(ok, 1);
        assert_int_equal(test_find_slot(r.m, token.label, &slot), CKR_OK);
        assert_int_equal(sign_once(r.m, slot), CKR_OK);
        assert_int_equal(r.m->C_Finalize(NULL), CKR_OK);
    }
}

/* ---- configuration and backend failures ---------------------------------- */

struct failure_case {
    const char *name;
    const char *conf_text;     /* written to a file named by GUARDIAN_CONF, or NULL */
    const char *conf_path;     /* GUARDIAN_CONF as given, when conf_text is NULL */
    const char *backend;       /* GUARDIAN_BACKEND, or NULL to unset */
    CK_RV expect;
    const char *message;       /* must appear in stderr, exactly once */
};

/* In a child: set the environment, C_Initialize, check CKR and stderr. */
static void run_failure_case(const struct failure_case *c)
{
    char conf[PATH_MAX], log[PATH_MAX], text[4096] = {0};
    int status = 0;
    pid_t pid;

    snprintf(conf, sizeof(conf), "%s/guardian.conf", token.dir);
    snprintf(log, sizeof(log), "%s/stderr.txt", token.dir);
    if (c->conf_text != NULL) {
        FILE *f = fopen(conf, "w");
        assert_non_null(f);
        fputs(c->conf_text, f);
        fclose(f);
    }
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char expect[32];
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, STDERR_FILENO);
        if (c->conf_text != NULL)
            setenv("GUARDIAN_CONF", conf, 1);
        else if (c->conf_path != NULL)
            setenv("GUARDIAN_CONF", c->conf_path, 1);
        else
            unsetenv("GUARDIAN_CONF");
        if (c->backend != NULL)
            setenv("GUARDIAN_BACKEND", c->backend, 1);
        else
            unsetenv("GUARDIAN_BACKEND");
        /* A fresh process: this one has loaded its backend already. */
        snprintf(expect, sizeof(expect), "%lx", (unsigned long)c->expect);
        execl(self_path, "test_softhsm", "--initialize-expect", expect, (char *)NULL);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    {
        FILE *f = fopen(log, "r");
        size_t got = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
        if (f)
            fclose(f);
        text[got] = '\0';
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("%s: child status %d, stderr: %s", c->name, status, text);
    {
        const char *first = strstr(text, c->message);
        const char *line = first;
        if (first == NULL) {
            fail_msg("%s: stderr lacks '%s': %s", c->name, c->message, text);
            return;
        }
        if (strstr(first + strlen(c->message), c->message) != NULL)
            fail_msg("%s: message logged more than once: %s", c->name, text);
        while (line > text && line[-1] != '\n')
            line--;
        if (strncmp(line, "guardian[", 9) != 0 || strstr(line, "]: error: ") == NULL)
            fail_msg("%s: not a guardian error line: %s", c->name, text);
    }
}

static void test_config_and_backend_failures(void **st)
{
    char bad_backend_conf[PATH_MAX + 64], self_conf[PATH_MAX + 64];
    (void)st;
    snprintf(bad_backend_conf, sizeof(bad_backend_conf), "backend = %s/missing.so\n", token.dir);
    snprintf(self_conf, sizeof(self_conf), "backend = %s\n", test_guardian_path());
    {
        const struct failure_case cases[] = {
            {"missing file", NULL, "/nonexistent/guardian.conf", NULL, CKR_GUARDIAN_CONFIG_INVALID,
             "configuration file /nonexistent/guardian.conf not found"},
            {"missing file with backend env", NULL, "/nonexistent/guardian.conf", test_softhsm_path(),
             CKR_GUARDIAN_CONFIG_INVALID, "configuration file /nonexistent/guardian.conf not found"},
            {"unknown key", "backend = /usr/lib/softhsm/libsofthsm2.so\nbakend = /x\n", NULL, NULL,
             CKR_GUARDIAN_CONFIG_INVALID, "guardian.conf:2: unknown key 'bakend'"},
            {"no equals", "backend /usr/lib/softhsm/libsofthsm2.so\n", NULL, NULL, CKR_GUARDIAN_CONFIG_INVALID,
             "guardian.conf:1: expected 'key = value'"},
            {"relative backend", "backend = libsofthsm2.so\n", NULL, NULL, CKR_GUARDIAN_CONFIG_INVALID,
             "'backend' must be an absolute path"},
            {"no backend", "log_level = debug\n", NULL, NULL, CKR_GUARDIAN_CONFIG_INVALID, "no 'backend' set"},
            {"backend missing", bad_backend_conf, NULL, NULL, CKR_GUARDIAN_BACKEND_LOAD_FAILED,
             "missing.so cannot be loaded"},
            {"backend env missing", NULL, "/nonexistent/guardian.conf", NULL, CKR_GUARDIAN_CONFIG_INVALID,
             "not found"},
            {"backend not pkcs11", "backend = /lib/x86_64-linux-gnu/libz.so.1\n", NULL, NULL,
             CKR_GUARDIAN_BACKEND_LOAD_FAILED, "is not a PKCS#11 module"},
            {"backend is self", self_conf, NULL, NULL, CKR_GUARDIAN_BACKEND_IS_SELF,
             "is the Guardian module itself"},
            {"backend env is self", "backend = /usr/lib/softhsm/libsofthsm2.so\n", NULL, test_guardian_path(),
             CKR_GUARDIAN_BACKEND_IS_SELF, "is the Guardian module itself"},
            {"backend env relative", "backend = /usr/lib/softhsm/libsofthsm2.so\n", NULL, "softhsm.so",
             CKR_GUARDIAN_CONFIG_INVALID, "GUARDIAN_BACKEND must be an absolute path"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
            run_failure_case(&cases[i]);
    }
}

/* Child mode for the failure cases: load the module, C_Initialize, compare. */
static int initialize_expect(const char *hex)
{
    CK_RV expect = strtoul(hex, NULL, 16);
    CK_FUNCTION_LIST *m = test_load_module(test_guardian_path(), NULL);
    if (m == NULL)
        return 100;
    if (m->C_Initialize(NULL) != expect)
        return 101;
    /* Not initialized afterwards. */
    if (m->C_Finalize(NULL) != CKR_CRYPTOKI_NOT_INITIALIZED)
        return 102;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--initialize-expect") == 0)
        return initialize_expect(argv[2]);
    if (realpath(argv[0], self_path) == NULL)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance_direct_vs_module, token_setup, token_teardown),
        cmocka_unit_test_setup_teardown(test_fork, token_setup, token_teardown),
        cmocka_unit_test_setup_teardown(test_shared_backend, token_setup, token_teardown),
        cmocka_unit_test_setup_teardown(test_initialize_race, token_setup, token_teardown),
        cmocka_unit_test_setup_teardown(test_config_and_backend_failures, token_setup, token_teardown),
    };
    return cmocka_run_group_tests_name("integration: SoftHSMv2", tests, NULL, NULL);
}
