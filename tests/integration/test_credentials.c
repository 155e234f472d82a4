/*
 * test_credentials.c — service mode (docs/service-mode.md) on SoftHSMv2
 * through guardian-pkcs11.so: the Guardian's own operators and Security
 * Officer, the backend's PIN read from a file only the module reads, lockout
 * counted durably, the token flags, and the recovery of a locked SO.
 *
 * Each test gets its own token, state directory and configuration file (the
 * scrypt cost lowered to its minimum to keep the tier fast; the production
 * default is in docs/configuration.md).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static char state_dir[PATH_MAX], conf[PATH_MAX], pin_file[PATH_MAX], so_pin_file[PATH_MAX];

#define SO_SECRET "so-secret-1"
#define ALICE "alice:alice-secret"

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f;
    unlink(path);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static void write_conf(const char *extra)
{
    char text[4 * PATH_MAX + 256];
    snprintf(text, sizeof(text),
             "backend = %s\nstate_dir = %s\nbackend_pin_file = %s\nbackend_so_pin_file = %s\npin_kdf_cost = 1024\n%s",
             test_softhsm_path(), state_dir, pin_file, so_pin_file, extra);
    write_file(conf, text, 0600);
}

static int setup(void **st)
{
    (void)st;
    if (test_token_create(&token, "cred") != 0)
        return -1;
    snprintf(state_dir, sizeof(state_dir), "%s/state", token.dir);
    snprintf(conf, sizeof(conf), "%s/guardian.conf", token.dir);
    snprintf(pin_file, sizeof(pin_file), "%s/backend.pin", token.dir);
    snprintf(so_pin_file, sizeof(so_pin_file), "%s/backend-so.pin", token.dir);
    write_file(pin_file, TEST_PIN "\n", 0400);
    write_file(so_pin_file, TEST_SO_PIN "\n", 0400);
    write_conf("");
    setenv("GUARDIAN_CONF", conf, 1);
    unsetenv("GUARDIAN_BACKEND");
    unsetenv("GUARDIAN_STATE_DIR");
    m = test_load_module(test_guardian_path(), NULL);
    if (m == NULL || m->C_Initialize(NULL) != CKR_OK || test_find_slot(m, token.label, &slot) != CKR_OK)
        return -1;
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    if (m != NULL)
        m->C_Finalize(NULL);
    unsetenv("GUARDIAN_CONF");
    test_token_destroy(&token);
    return 0;
}

static CK_SESSION_HANDLE open_rw(void)
{
    CK_SESSION_HANDLE s;
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    return s;
}

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin)
{
    return m->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
}

static CK_FLAGS flags(void)
{
    CK_TOKEN_INFO ti;
    assert_int_equal(m->C_GetTokenInfo(slot, &ti), CKR_OK);
    return ti.flags;
}

/* SO set with C_InitToken, operator alice with C_InitPIN. */
static void provision_credentials(void)
{
    CK_SESSION_HANDLE s;
    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_SECRET, strlen(SO_SECRET), (CK_UTF8CHAR_PTR)"x"),
                     CKR_OK);
    s = open_rw();
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE)), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

static void test_first_so_then_operators(void **st)
{
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    CK_FLAGS f;
    (void)st;

    f = flags();
    assert_false(f & CKF_TOKEN_INITIALIZED);
    assert_false(f & CKF_USER_PIN_INITIALIZED);
    assert_true(f & CKF_LOGIN_REQUIRED);
    s = open_rw();
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_USER_PIN_NOT_INITIALIZED);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_USER_PIN_NOT_INITIALIZED);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);

    /* Too short a secret is refused, and sets nothing. */
    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)"short", 5, (CK_UTF8CHAR_PTR)"x"), CKR_PIN_LEN_RANGE);
    assert_false(flags() & CKF_TOKEN_INITIALIZED);
    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_SECRET, strlen(SO_SECRET), (CK_UTF8CHAR_PTR)"x"),
                     CKR_OK);
    assert_true(flags() & CKF_TOKEN_INITIALIZED);

    s = open_rw();
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RW_SO_FUNCTIONS); /* the backend is open, as SO */
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_USER_ALREADY_LOGGED_IN);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"bob-secret-1", 12), CKR_PIN_INVALID); /* no NAME: */
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"Bob:bob-secret-1", 16), CKR_PIN_INVALID);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"bob:short", 9), CKR_PIN_LEN_RANGE);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE)), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"bob:bob-secret-1", 16), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_true(flags() & CKF_USER_PIN_INITIALIZED);

    /* An operator logs in by name; the backend is open as user. */
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"eve:eve-secret-1", 16), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
    assert_int_equal(login(s, CKU_USER, "bob:bob-secret-1"), CKR_USER_ALREADY_LOGGED_IN);
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"eve:eve-secret-1", 16), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(login(s, CKU_USER, "bob:bob-secret-1"), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);

    /* The last session closed logged the token out, here and in the backend. */
    s = open_rw();
    assert_int_equal(m->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RW_PUBLIC_SESSION);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* The backend's PIN is no Guardian credential, and a Guardian credential does
 * not open the backend. */
static void test_backend_pin_separate(void **st)
{
    CK_FUNCTION_LIST *raw;
    CK_SESSION_HANDLE s;
    void *dl = NULL;
    (void)st;

    provision_credentials();
    s = open_rw();
    assert_int_equal(login(s, CKU_USER, TEST_PIN), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, "alice:" TEST_PIN), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_SO, TEST_SO_PIN "x"), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, "nobody:alice-secret"), CKR_PIN_INCORRECT);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);

    raw = test_load_module(test_softhsm_path(), &dl);
    assert_non_null(raw);
    /* SoftHSM is already initialized in this process (by the module): share it. */
    {
        CK_RV rv = raw->C_Initialize(NULL);
        assert_true(rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED);
    }
    assert_int_equal(raw->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(raw->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE)), CKR_PIN_INCORRECT);
    assert_int_equal(raw->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)"alice-secret", 12), CKR_PIN_INCORRECT);
    assert_int_equal(raw->C_CloseSession(s), CKR_OK);
}

static void test_lockout_and_reset(void **st)
{
    CK_SESSION_HANDLE s;
    CK_FLAGS f;
    (void)st;

    provision_credentials();
    s = open_rw();
    for (int i = 1; i <= 4; i++) {
        assert_int_equal(login(s, CKU_USER, "alice:wrong-secret"), CKR_PIN_INCORRECT);
        f = flags();
        assert_true(f & CKF_USER_PIN_COUNT_LOW);
        assert_int_equal(!!(f & CKF_USER_PIN_FINAL_TRY), i == 4);
        assert_false(f & CKF_USER_PIN_LOCKED);
    }
    assert_int_equal(login(s, CKU_USER, "alice:wrong-secret"), CKR_PIN_LOCKED);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_PIN_LOCKED); /* the right PIN no longer helps */
    assert_true(flags() & CKF_USER_PIN_LOCKED);                 /* alice is the only operator */

    /* The SO resets her. */
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"alice:alice-secret-2", 20), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    f = flags();
    assert_false(f & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY));
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, "alice:alice-secret-2"), CKR_OK); /* a success resets the count */
    assert_false(flags() & CKF_USER_PIN_COUNT_LOW);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* A wrong guess is counted even when the process dies right after it. */
static void test_failure_survives_kill(void **st)
{
    pid_t pid;
    int status = 0;
    (void)st;

    provision_credentials();
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_SESSION_HANDLE s;
        CK_RV rv = m->C_Initialize(NULL);
        if (rv == CKR_OK)
            rv = m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
        if (rv == CKR_OK)
            rv = login(s, CKU_USER, "alice:wrong-secret");
        _exit(rv == CKR_PIN_INCORRECT ? 0 : 1); /* no C_Finalize, no cleanup: as if killed */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_true(flags() & CKF_USER_PIN_COUNT_LOW);
}

static void test_set_pin(void **st)
{
    CK_SESSION_HANDLE s;
    (void)st;

    provision_credentials();
    s = open_rw();
    /* Not logged in: the old PIN names the operator. */
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE), (CK_UTF8CHAR_PTR)"alice-secret-3", 14),
                     CKR_OK);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, "alice:alice-secret-3"), CKR_OK);
    /* Logged in: the operator's own PIN, with or without the name. */
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)"alice-secret-3", 14, (CK_UTF8CHAR_PTR)"bob:bob-secret-9", 16),
                     CKR_PIN_INVALID);
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)"wrong-secret", 12, (CK_UTF8CHAR_PTR)"alice-secret-4", 14),
                     CKR_PIN_INCORRECT);
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)"alice-secret-3", 14, (CK_UTF8CHAR_PTR)"alice:alice-secret-4",
                                 20),
                     CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(login(s, CKU_USER, "alice:alice-secret-4"), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    /* The SO changes its own. */
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)SO_SECRET, strlen(SO_SECRET), (CK_UTF8CHAR_PTR)"so-secret-2", 11),
                     CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_SO, "so-secret-2"), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* C_InitToken never reaches the backend; a locked SO is recovered with the
 * backend's SO PIN, which only the service's user can read. */
static void test_init_token_and_so_recovery(void **st)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_LABEL, "keep-me", 7}};
    CK_OBJECT_HANDLE h, found[4];
    CK_ULONG n = 0;
    (void)st;

    provision_credentials();
    s = open_rw();
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_CreateObject(s, t, 3, &h), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);

    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_SECRET, strlen(SO_SECRET), (CK_UTF8CHAR_PTR)"x"),
                     CKR_ACTION_PROHIBITED);
    s = open_rw();
    for (int i = 0; i < 4; i++)
        assert_int_equal(login(s, CKU_SO, "not-the-so-pin"), CKR_PIN_INCORRECT);
    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)"not-the-so-pin", 14, (CK_UTF8CHAR_PTR)"x"),
                     CKR_PIN_LOCKED);
    assert_true(flags() & CKF_SO_PIN_LOCKED);
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_PIN_LOCKED);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);

    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN), (CK_UTF8CHAR_PTR)"x"),
                     CKR_OK);
    assert_false(flags() & CKF_TOKEN_INITIALIZED);
    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)"so-secret-new", 13, (CK_UTF8CHAR_PTR)"x"), CKR_OK);
    s = open_rw();
    assert_int_equal(login(s, CKU_SO, "so-secret-new"), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    /* Nothing was erased: the operator and her object are still there. */
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_FindObjectsInit(s, &t[2], 1), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, found, 4, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* The PIN files: refused unless private to the module's user; a wrong backend
 * PIN gives its own code after a right Guardian credential. */
static void test_pin_file_rules(void **st)
{
    CK_SESSION_HANDLE s;
    char link[PATH_MAX + 8];
    (void)st;

    provision_credentials();
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    assert_int_equal(chmod(pin_file, 0640), 0);
    assert_int_equal(m->C_Initialize(NULL), CKR_GUARDIAN_CONFIG_INVALID);
    assert_int_equal(chmod(pin_file, 0600), 0);
    snprintf(link, sizeof(link), "%s.link", pin_file);
    assert_int_equal(symlink(pin_file, link), 0);
    {
        char text[4 * PATH_MAX + 256];
        snprintf(text, sizeof(text), "backend = %s\nstate_dir = %s\nbackend_pin_file = %s\npin_kdf_cost = 1024\n",
                 test_softhsm_path(), state_dir, link);
        write_file(conf, text, 0600);
    }
    assert_int_equal(m->C_Initialize(NULL), CKR_GUARDIAN_CONFIG_INVALID);
    write_conf("pin_kdf_cost = 2048\n"); /* set twice */
    assert_int_equal(m->C_Initialize(NULL), CKR_GUARDIAN_CONFIG_INVALID);
    write_conf("");

    write_file(pin_file, "9999\n", 0600);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    s = open_rw();
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_GUARDIAN_BACKEND_LOGIN_FAILED);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* The field `i` (0-based) of the report line that starts with `prefix`. */
static int report_field(const char *report, const char *prefix, int i, char *out, size_t cap)
{
    const char *line = strstr(report, prefix);
    if (line == NULL)
        return 0;
    for (int k = 0; k < i; k++) {
        line = strchr(line, ' ');
        if (line == NULL)
            return 0;
        line++;
    }
    size_t n = strcspn(line, " \n");
    if (n >= cap)
        return 0;
    memcpy(out, line, n);
    out[n] = '\0';
    return 1;
}

/* Credential changes are audit records that name who made them; no PIN,
 * salt or hash is in the report. */
static void test_credential_records(void **st)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG identity = CKG_GUARDIAN_REQ_IDENTITY, export_type = CKG_GUARDIAN_REQ_AUDIT_EXPORT;
    CK_ATTRIBUTE idt[] = {{CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_GUARDIAN_REQUEST, &identity, sizeof(identity)},
                          {CKA_LABEL, "cred-test", 9}};
    CK_ATTRIBUTE ext[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &export_type, sizeof(export_type)}};
    CK_OBJECT_HANDLE h;
    static char report[1 << 16];
    CK_ATTRIBUTE v = {CKA_VALUE, report, sizeof(report) - 1};
    char f[80];
    (void)st;

    provision_credentials();
    s = open_rw();
    for (int i = 0; i < 5; i++)
        assert_int_equal(login(s, CKU_USER, "alice:wrong-secret"), i < 4 ? CKR_PIN_INCORRECT : CKR_PIN_LOCKED);
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE)), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)"so:so-as-operator", 17), CKR_PIN_INVALID);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_SetPIN(s, (CK_UTF8CHAR_PTR)"alice-secret", 12, (CK_UTF8CHAR_PTR)"alice-secret-5", 14), CKR_OK);
    assert_int_equal(m->C_CreateObject(s, idt, 3, &h), CKR_OK);
    assert_int_equal(m->C_CreateObject(s, ext, 2, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, &v, 1), CKR_OK);
    report[v.ulValueLen] = '\0';

    /* 1: SO set (nobody logged in); 2: alice set by the SO; 3: alice locked;
     * 4: alice reset by the SO; 5: alice changed her own PIN. */
    const struct {
        const char *seq, *action, *subject, *operator_name;
    } want[] = {{"record 1 ", "1", "736f", "-"},
                {"record 2 ", "2", "616c696365", "so"},
                {"record 3 ", "4", "616c696365", "-"},
                {"record 4 ", "2", "616c696365", "so"},
                {"record 5 ", "3", "616c696365", "alice"}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_true(report_field(report, want[i].seq, 2, f, sizeof(f)));
        assert_string_equal(f, "CREDENTIAL");
        assert_true(report_field(report, want[i].seq, 6, f, sizeof(f)));
        assert_string_equal(f, want[i].action);
        assert_true(report_field(report, want[i].seq, 7, f, sizeof(f)));
        assert_string_equal(f, want[i].subject);
        assert_true(report_field(report, want[i].seq, 12, f, sizeof(f)));
        assert_string_equal(f, want[i].operator_name);
    }
    assert_null(strstr(report, "alice-secret"));
    assert_null(strstr(report, "616c6963652d736563726574")); /* "alice-secret" in hex */
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* Service mode: no vendor mechanism, and no mechanism whose parameter holds
 * pointers (p11-kit-remote hands such a parameter over as the client's raw
 * bytes); flat parameters and none at all go through. */
static void test_service_mechanisms(void **st)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM_TYPE list[512];
    CK_ULONG n = 512;
    CK_MECHANISM_INFO info;
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 16;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE kt[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ENCRYPT, &yes, sizeof(yes)},
                         {CKA_DERIVE, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE key, out;
    CK_BYTE iv[16] = {0}, gcm_iv[12] = {0};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_GCM_PARAMS gcm = {gcm_iv, sizeof(gcm_iv), 96, NULL, 0, 128};
    CK_MECHANISM gcm_mech = {CKM_AES_GCM, &gcm, sizeof(gcm)};
    CK_KEY_DERIVATION_STRING_DATA kd = {(CK_BYTE_PTR)0x1000, 16};
    CK_MECHANISM derive = {CKM_AES_ECB_ENCRYPT_DATA, &kd, sizeof(kd)};
    CK_GUARDIAN_DEVICE_CERT_PARAMS dp = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT,
                                         (CK_BYTE_PTR)0x1000, 4, (CK_BYTE_PTR)0x1000, 91};
    CK_MECHANISM dev = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &dp, sizeof(dp)};
    (void)st;

    provision_credentials();
    assert_int_equal(m->C_GetMechanismList(slot, list, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++)
        assert_false(GUARDIAN_IS_VENDOR_VALUE(CKM_GUARDIAN_BASE, list[i]));
    assert_int_equal(m->C_GetMechanismInfo(slot, CKM_GUARDIAN_DERIVE_DEVICE_CERT, &info), CKR_MECHANISM_INVALID);
    s = open_rw();
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(m->C_GenerateKey(s, &keygen, kt, 3, &key), CKR_OK);
    assert_int_equal(m->C_EncryptInit(s, &cbc, key), CKR_OK); /* an IV: flat */
    {
        CK_BYTE pt[16] = {0}, ct[32];
        CK_ULONG ct_len = sizeof(ct);
        assert_int_equal(m->C_Encrypt(s, pt, sizeof(pt), ct, &ct_len), CKR_OK);
    }
    assert_int_equal(m->C_EncryptInit(s, &gcm_mech, key), CKR_MECHANISM_INVALID);      /* pointers */
    assert_int_equal(m->C_DeriveKey(s, &derive, key, NULL, 0, &out), CKR_MECHANISM_INVALID); /* pointer 0x1000 */
    assert_int_equal(m->C_DeriveKey(s, &dev, key, NULL, 0, &out), CKR_MECHANISM_INVALID);    /* vendor */
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

/* Without backend_so_pin_file (NSS has no SO; tpm2-pkcs11's SO makes no
 * object) the Guardian SO logs into the backend as its user, and the module,
 * not the backend's session state, says who it is: the SO's requests and
 * C_InitPIN only, never an operator's request; an operator never gets the
 * SO's (docs/service-mode.md, "Enrolment where the token cannot hold roots"). */
static CK_RV request(CK_SESSION_HANDLE s, CK_ULONG type)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    CK_RV rv = m->C_CreateObject(s, t, 2, &h);
    if (rv == CKR_OK)
        m->C_DestroyObject(s, h);
    return rv;
}

static void test_so_as_backend_user(void **st)
{
    char text[4 * PATH_MAX + 256];
    CK_SESSION_INFO si;
    CK_SESSION_HANDLE s;
    (void)st;

    snprintf(text, sizeof(text), "backend = %s\nstate_dir = %s\nbackend_pin_file = %s\npin_kdf_cost = 1024\n",
             test_softhsm_path(), state_dir, pin_file);
    write_file(conf, text, 0600);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    provision_credentials(); /* the SO logs in (as the backend's user) and sets alice */
    s = open_rw();
    assert_int_equal(login(s, CKU_SO, SO_SECRET), CKR_OK);
    assert_int_equal(m->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS); /* the backend's view */
    /* An operator's request in the SO's session: refused. */
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_STATUS), CKR_USER_NOT_LOGGED_IN);
    /* The SO's own request reaches its handler (which wants its attributes). */
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_ENROL_ROOT), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    /* The operator: its own request, never the SO's. */
    assert_int_equal(login(s, CKU_USER, ALICE), CKR_OK);
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_STATUS), CKR_OK);
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_ENROL_ROOT), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR) "bob:bob-secret-1", 16), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(m->C_CloseSession(s), CKR_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_first_so_then_operators, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_pin_separate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lockout_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_survives_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_init_token_and_so_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pin_file_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credential_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_mechanisms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_so_as_backend_user, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
