/*
 * test_probe.c — CKG_GUARDIAN_REQ_PROBE on SoftHSMv2 2.6.1 through
 * guardian-pkcs11.so: the protections the backend really enforces, measured
 * by trying them (docs/backend-protections.md holds the table this test
 * checks), with nothing left behind and the caller's session undisturbed.
 *
 * Each test gets its own token and state directory, with the user logged in.
 * GUARDIAN_TEST_PROBE_PRINT=1 prints the probe's text.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;

/* What SoftHSMv2 2.6.1 does, measured (docs/backend-protections.md). */
static const struct {
    const char *name;
    const char *verdict;
    const char *ckr;
} expected[] = {
    {"sensitive", "ENFORCED", "CKR_ATTRIBUTE_SENSITIVE"},
    {"sensitive-sticky", "ENFORCED", "CKR_ATTRIBUTE_READ_ONLY"},
    {"extractable", "ENFORCED", "CKR_KEY_UNEXTRACTABLE"},
    {"extractable-sticky", "ENFORCED", "CKR_ATTRIBUTE_READ_ONLY"},
    {"modifiable", "ENFORCED", "CKR_ACTION_PROHIBITED"},
    {"copyable", "ENFORCED", "CKR_ACTION_PROHIBITED"},
    {"copy-sticky", "ENFORCED", "CKR_ATTRIBUTE_READ_ONLY"},
    {"usage-derive", "ENFORCED", "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {"usage-sign", "ENFORCED", "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {"allowed-mechanisms", "ENFORCED", "CKR_MECHANISM_INVALID"},
    {"derive-template", "UNSUPPORTED", "CKR_ATTRIBUTE_TYPE_INVALID"},
    {"unwrap-template", "ENFORCED", "CKR_TEMPLATE_INCONSISTENT"},
    {"destroyable", "ENFORCED", "CKR_ACTION_PROHIBITED"},
    {"trusted-so-only", "ENFORCED", "CKR_ATTRIBUTE_READ_ONLY"},
};
#define N_EXPECTED (sizeof(expected) / sizeof(expected[0]))

static CK_ULONG count_objects(CK_BBOOL token_objects)
{
    CK_OBJECT_HANDLE h[256];
    CK_ATTRIBUTE t = {CKA_TOKEN, &token_objects, sizeof(token_objects)};
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, &t, 1), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 256, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    return n;
}

static CK_RV probe(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_PROBE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    return m->C_CreateObject(session, t, 2, out);
}

static void open_module(void)
{
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
}

static int setup(void **st)
{
    char dir[PATH_MAX];
    (void)st;
    assert_int_equal(test_token_create(&token, "probe"), 0);
    snprintf(dir, sizeof(dir), "%s/state", token.dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    setenv("GUARDIAN_STATE_DIR", dir, 1);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    open_module();
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    m->C_CloseAllSessions(slot);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    test_token_destroy(&token);
    return 0;
}

/* The probe's text, NUL-terminated (free it); the output object destroyed. */
static char *run_probe(void)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    char *text;
    assert_int_equal(probe(s, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    text = calloc(1, a.ulValueLen + 1);
    assert_non_null(text);
    a.pValue = text;
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    if (getenv("GUARDIAN_TEST_PROBE_PRINT") != NULL)
        fputs(text, stdout);
    return text;
}

/* Every protection has its line, with the verdict and CKR measured on
 * SoftHSM 2.6.1 and a sentence. */
static void test_probe_softhsm(void **st)
{
    char *text = run_probe(), *save = NULL, *line;
    size_t seen = 0;
    (void)st;
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char name[64], verdict[32], ckr[64];
        int off = 0;
        assert_int_equal(sscanf(line, "%63s %31s %63s %n", name, verdict, ckr, &off), 3);
        assert_true(off > 0 && strlen(line + off) > 10); /* the sentence */
        assert_true(strcmp(verdict, "ENFORCED") == 0 || strcmp(verdict, "NOT-ENFORCED") == 0 ||
                    strcmp(verdict, "UNSUPPORTED") == 0);
        assert_true(seen < N_EXPECTED);
        assert_string_equal(name, expected[seen].name);
        if (strcmp(verdict, expected[seen].verdict) != 0 || strcmp(ckr, expected[seen].ckr) != 0)
            fail_msg("%s: measured %s %s, expected %s %s", name, verdict, ckr, expected[seen].verdict,
                     expected[seen].ckr);
        seen++;
    }
    assert_int_equal(seen, N_EXPECTED);
    free(text);
}

/* Nothing is left behind: the session and token object counts are unchanged,
 * and a second run gives the same text. */
static void test_probe_leaves_nothing(void **st)
{
    CK_ULONG sessions = count_objects(CK_FALSE), tokens = count_objects(CK_TRUE);
    CK_SESSION_INFO si;
    char *a, *b;
    (void)st;
    a = run_probe();
    assert_int_equal(count_objects(CK_FALSE), sessions);
    assert_int_equal(count_objects(CK_TRUE), tokens);
    b = run_probe();
    assert_string_equal(a, b);
    assert_int_equal(count_objects(CK_FALSE), sessions);
    /* The caller's session is as it was. */
    assert_int_equal(m->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
    free(a);
    free(b);
}

/* A logged-in user and a read-write session are needed; no attribute is taken. */
static void test_probe_needs_user(void **st)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE ro;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_PROBE;
    CK_BYTE label[] = "x";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                        {CKA_LABEL, label, 1}};
    (void)st;
    assert_int_equal(m->C_CreateObject(s, t, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
    assert_int_equal(probe(ro, &h), CKR_SESSION_READ_ONLY);
    assert_int_equal(m->C_CloseSession(ro), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(probe(s, &h), CKR_USER_NOT_LOGGED_IN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_probe_softhsm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_needs_user, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
