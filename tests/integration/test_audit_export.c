/*
 * test_audit_export.c — CKG_GUARDIAN_REQ_AUDIT_EXPORT through guardian-pkcs11.so
 * over a real SoftHSMv2 token: the module builds the audit report and signs it
 * with the Guardian identity key; the caller gets a read-only output object.
 *
 * Setup per test: a fresh token; the Guardian identity made by the module
 * (CKG_GUARDIAN_REQ_IDENTITY); the OEM root enrolled by the SO; one package
 * (make_packages.sh, guardian-wrap) imported, so the trail has a record and
 * the store a product.  In service mode (setup_service), the same with the
 * Guardian's own SO and operator alice logged in: every record names them.
 *
 * Every export writes its own EXPORT record first (who, when, what scope),
 * and the report covers the trail up to it: its last record.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
/* after softhsm_token.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static X509 *identity; /* the Guardian (agreement) certificate the module made: what OEMs wrap for */
static X509 *signing;  /* the Guardian's signing certificate: it issued `identity` and signs reports */

#define ALICE "alice:alice-secret"

static const char *path(const char *name) { return test_path(token.dir, name); }

/* CKA_VALUE of `h`, length first (malloc'd, NUL-terminated). */
static unsigned char *value_of(CK_OBJECT_HANDLE h, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    a.pValue = malloc(a.ulValueLen + 1);
    assert_non_null(a.pValue);
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    ((unsigned char *)a.pValue)[a.ulValueLen] = '\0';
    *len = a.ulValueLen;
    return a.pValue;
}

static void make_identity(void)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_IDENTITY, len;
    CK_BYTE cn[] = "audit-export-test";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                        {CKA_LABEL, cn, sizeof(cn) - 1}};
    CK_OBJECT_HANDLE cert;
    unsigned char *der;
    const unsigned char *p;
    FILE *f;

    assert_int_equal(m->C_CreateObject(s, t, 3, &cert), CKR_OK);
    der = value_of(cert, &len);
    p = der;
    identity = d2i_X509(NULL, &p, (long)len);
    assert_non_null(identity);
    free(der);
    {
        CK_OBJECT_CLASS cert_cls = CKO_CERTIFICATE;
        CK_ATTRIBUTE find[] = {{CKA_CLASS, &cert_cls, sizeof(cert_cls)}, {CKA_ID, "guardian-signing", 16}};
        CK_OBJECT_HANDLE h;
        CK_ULONG n = 0;
        assert_int_equal(m->C_FindObjectsInit(s, find, 2), CKR_OK);
        assert_int_equal(m->C_FindObjects(s, &h, 1, &n), CKR_OK);
        assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
        assert_int_equal(n, 1);
        der = value_of(h, &len);
        p = der;
        signing = d2i_X509(NULL, &p, (long)len);
        assert_non_null(signing);
        free(der);
    }
    /* A is issued by S; S is self-signed; A agrees keys only, S signs. */
    assert_int_equal(X509_check_issued(signing, identity), X509_V_OK);
    assert_int_equal(X509_check_issued(signing, signing), X509_V_OK);
    assert_int_equal(X509_get_key_usage(identity), KU_KEY_AGREEMENT);
    assert_int_equal(X509_get_key_usage(signing), KU_DIGITAL_SIGNATURE | KU_KEY_CERT_SIGN);
    assert_int_equal(X509_check_ca(identity), 0);
    f = fopen(path("guardian.pem"), "w");
    assert_non_null(f);
    PEM_write_X509(f, identity);
    PEM_write_X509(f, signing);
    fclose(f);
}

/* The import request (a mechanism would be refused in service mode, which
 * some of these tests use). */
static void import_good(void)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_IMPORT;
    CK_OBJECT_HANDLE obj;
    unsigned char *pkg = malloc(1 << 20);
    FILE *f = fopen(path("good.gpk"), "rb");
    size_t len;

    assert_non_null(pkg);
    assert_non_null(f);
    len = fread(pkg, 1, 1 << 20, f);
    fclose(f);
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                            {CKA_VALUE, pkg, (CK_ULONG)len}};
        assert_int_equal(m->C_CreateObject(s, t, 3, &obj), CKR_OK);
    }
    free(pkg);
}

static void write_file(const char *file, const char *text, mode_t mode)
{
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(file, mode), 0);
}

static const char *user_pin;

static int setup_mode(int service)
{
    char cmd[PATH_MAX * 3];

    assert_int_equal(test_token_create(&token, "audit"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    if (service) {
        /* docs/service-mode.md: the backend's PINs in files only the module
         * reads; the Guardian's own SO (here with the PIN test_enrol_root
         * logs in with) and operator alice. */
        char conf[4 * PATH_MAX + 128], state_dir[PATH_MAX], pin[PATH_MAX], so_pin[PATH_MAX];
        snprintf(state_dir, sizeof(state_dir), "%s", path("state"));
        snprintf(pin, sizeof(pin), "%s", path("backend.pin"));
        snprintf(so_pin, sizeof(so_pin), "%s", path("backend-so.pin"));
        write_file(pin, TEST_PIN "\n", 0400);
        write_file(so_pin, TEST_SO_PIN "\n", 0400);
        snprintf(conf, sizeof(conf),
                 "backend = %s\nstate_dir = %s\nbackend_pin_file = %s\nbackend_so_pin_file = %s\n"
                 "pin_kdf_cost = 1024\n",
                 test_softhsm_path(), state_dir, pin, so_pin);
        write_file(path("guardian.conf"), conf, 0600);
        setenv("GUARDIAN_CONF", path("guardian.conf"), 1);
        unsetenv("GUARDIAN_STATE_DIR");
        unsetenv("GUARDIAN_BACKEND");
        user_pin = ALICE;
    } else {
        setenv("GUARDIAN_STATE_DIR", path("state"), 1);
        setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
        unsetenv("GUARDIAN_CONF");
        user_pin = TEST_PIN;
    }
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    if (service) {
        assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN), (CK_UTF8CHAR_PTR)"x"),
                         CKR_OK);
        assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
        assert_int_equal(m->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)TEST_SO_PIN, strlen(TEST_SO_PIN)), CKR_OK);
        assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)ALICE, strlen(ALICE)), CKR_OK);
        assert_int_equal(m->C_Logout(s), CKR_OK);
        assert_int_equal(m->C_CloseSession(s), CKR_OK);
    }
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin)), CKR_OK);
    make_identity();
    snprintf(cmd, sizeof(cmd), "%s %s %s", getenv("GUARDIAN_TEST_MAKE_PACKAGES"), token.dir,
             getenv("GUARDIAN_TEST_WRAP"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    {
        CK_OBJECT_HANDLE root;
        assert_int_equal(test_enrol_root(m, slot, path("oem-root.pem"), "ACME", &root), CKR_OK);
    }
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin)), CKR_OK);
    import_good();
    return 0;
}

static int setup(void **st)
{
    (void)st;
    return setup_mode(0);
}

static int setup_service(void **st)
{
    (void)st;
    return setup_mode(1);
}

static int teardown(void **st)
{
    (void)st;
    m->C_CloseAllSessions(slot);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    X509_free(identity);
    X509_free(signing);
    identity = signing = NULL;
    unsetenv("GUARDIAN_CONF");
    test_token_destroy(&token);
    return 0;
}

/* The line of the report that starts with `prefix` (malloc'd, without its
 * '\n'), or NULL; *after: the line after it. */
static char *line_starting(const char *r, const char *prefix, const char **after)
{
    size_t n = strlen(prefix);
    for (const char *p = r; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len >= n && memcmp(p, prefix, n) == 0) {
            if (after != NULL)
                *after = nl ? nl + 1 : p + len;
            return strndup(p, len);
        }
        p += len + (nl != NULL);
    }
    return NULL;
}

/* The value of `key` in the Guardian's status (CKG_GUARDIAN_REQ_STATUS), malloc'd. */
static char *status_value(const char *key)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_STATUS, len;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    CK_OBJECT_HANDLE h;
    char prefix[64], *text, *v;

    assert_int_equal(m->C_CreateObject(s, t, 2, &h), CKR_OK);
    text = (char *)value_of(h, &len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    snprintf(prefix, sizeof(prefix), "\n%s=", key);
    v = strstr(text, prefix);
    assert_non_null(v);
    v = strndup(v + strlen(prefix), strcspn(v + strlen(prefix), "\n"));
    free(text);
    return v;
}

static void assert_status(const char *key, const char *want)
{
    char *v = status_value(key);
    if (strcmp(v, want) != 0)
        fail_msg("status %s=%s, not %s", key, v, want);
    free(v);
}

/* The report's own EXPORT record: record SEQ, the last record line, with the
 * scope ("- -" for the whole trail), serial SEQ - 1, nothing else, dated the
 * report's "exported" time, named by operator `op` ("-": none), its hash
 * the signed head's. */
static void assert_own_export(const char *r, unsigned seq, const char *scope, const char *op)
{
    char prefix[64], want[512], *line, *head, *exported;
    const char *after = NULL;

    exported = line_starting(r, "exported ", NULL);
    assert_non_null(exported);
    snprintf(prefix, sizeof(prefix), "record %u ", seq);
    line = line_starting(r, prefix, &after);
    assert_non_null(line);
    snprintf(want, sizeof(want), "record %u EXPORT %s %s %u - %064d %032d 0 0 %s ", seq, exported + 9, scope, seq - 1,
             0, 0, op);
    if (strncmp(line, want, strlen(want)) != 0)
        fail_msg("record %u is\n  %s\nnot\n  %s...", seq, line, want);
    /* The last record: templates, certificates or the signature follow. */
    assert_true(strncmp(after, "template ", 9) == 0 || strncmp(after, "certificate ", 12) == 0 ||
                strncmp(after, "signature ", 10) == 0);
    snprintf(prefix, sizeof(prefix), "head %u ", seq);
    head = line_starting(r, prefix, NULL);
    assert_non_null(head);
    assert_string_equal(head + strlen(prefix), line + strlen(line) - 64);
    free(head);
    free(line);
    free(exported);
}

/* C_CreateObject of the export request, scoped when oem/product are given. */
static CK_RV export(const char *oem, const char *product, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_AUDIT_EXPORT, n = 2;
    CK_ATTRIBUTE t[4] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    if (oem != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, (void *)oem, (CK_ULONG)strlen(oem)};
    if (product != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)};
    *out = CK_INVALID_HANDLE;
    return m->C_CreateObject(s, t, n, out);
}

/* The report's last line is "signature BASE64": a DER ECDSA-Sig-Value over
 * every byte before it, by the key of the signing certificate (not the
 * agreement key, which cannot sign). */
static void assert_signed_by_identity(const unsigned char *r, size_t len)
{
    const char *sig_line, *b64;
    unsigned char der[256];
    size_t tbs_len, b64_len;
    int der_len;
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    assert_true(len > 1 && r[len - 1] == '\n');
    sig_line = strstr((const char *)r, "\nsignature ");
    assert_non_null(sig_line);
    sig_line++;
    tbs_len = (size_t)(sig_line - (const char *)r);
    b64_len = len - 1 - tbs_len - strlen("signature ");
    assert_true(b64_len > 0 && b64_len < 4 * sizeof(der) / 3);
    b64 = sig_line + strlen("signature ");
    der_len = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)b64_len);
    assert_true(der_len > 0);
    der_len -= (b64[b64_len - 1] == '=') + (b64[b64_len - 2] == '='); /* EVP_DecodeBlock keeps the padding */
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(signing)), 1);
    assert_int_equal(EVP_DigestVerify(md, der, (size_t)der_len, r, tbs_len), 1);
    {
        /* Not the agreement key (a context of its own: a re-initialised one
         * may keep the previous key). */
        EVP_MD_CTX *other = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestVerifyInit(other, NULL, EVP_sha256(), NULL, X509_get0_pubkey(identity)), 1);
        assert_int_not_equal(EVP_DigestVerify(other, der, (size_t)der_len, r, tbs_len), 1);
        EVP_MD_CTX_free(other);
        ERR_clear_error();
    }
    /* One byte changed: the signature no longer holds. */
    {
        unsigned char *copy = malloc(tbs_len);
        memcpy(copy, r, tbs_len);
        copy[tbs_len / 2] ^= 1;
        assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(signing)), 1);
        assert_int_not_equal(EVP_DigestVerify(md, der, (size_t)der_len, copy, tbs_len), 1);
        free(copy);
    }
    EVP_MD_CTX_free(md);
}

/* The Guardian certificates, A then S, as PEM_write_X509 writes them, follow
 * the head line. */
static void assert_holds_identity_pem(const unsigned char *r)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *pem, *copy, *at;
    long n;
    assert_int_equal(PEM_write_bio_X509(b, identity), 1);
    assert_int_equal(PEM_write_bio_X509(b, signing), 1);
    n = BIO_get_mem_data(b, &pem);
    assert_true(n > 0);
    copy = strndup(pem, (size_t)n);
    at = strstr((const char *)r, copy);
    assert_non_null(at);
    assert_memory_equal(at + n, "product ", 8);
    free(copy);
    BIO_free(b);
}

static void test_export_signed(void **st)
{
    CK_OBJECT_HANDLE h;
    CK_ULONG len;
    unsigned char *r;
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    r = value_of(h, &len);
    assert_int_equal(strlen((char *)r), len);
    assert_memory_equal(r, "GUARDIAN AUDIT REPORT 3\nexported ", 33);
    assert_non_null(strstr((char *)r, "\nscope all\nhead 2 "));
    assert_non_null(strstr((char *)r, "\nproduct ACME SENSOR-1 3 "));
    assert_non_null(strstr((char *)r, "\nrecord 1 IMPORT "));
    /* The imported package's template, which names its certificates' profile. */
    assert_non_null(strstr((char *)r, "\ntemplate 1 "));
    /* Its own record, the last: an export of the whole trail, by nobody
     * (in-process, no service mode). */
    assert_own_export((char *)r, 2, "- -", "-");
    /* The token's anchor moved up to it, as after an import. */
    assert_status("records_export", "1");
    assert_status("anchor", "agrees");
    assert_status("anchor_seq", "2");
    assert_holds_identity_pem(r);
    assert_signed_by_identity(r, len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);

    /* Restricted to the product: the same record in clear, scope named, the
     * earlier export shown (it is no OEM's), its own record last. */
    assert_int_equal(export("ACME", "SENSOR-1", &h), CKR_OK);
    r = value_of(h, &len);
    assert_non_null(strstr((char *)r, "\nscope ACME/SENSOR-1\nhead 3 "));
    assert_non_null(strstr((char *)r, "\nrecord 1 IMPORT "));
    assert_non_null(strstr((char *)r, "\nrecord 2 EXPORT "));
    assert_own_export((char *)r, 3, "ACME SENSOR-1", "-");
    assert_signed_by_identity(r, len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);

    /* Restricted to another OEM's product that this Guardian does not have:
     * refused, and nothing recorded. */
    assert_int_equal(export("BETA", "SENSOR-1", &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(export("ACME", "NOPE", &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    r = value_of(h, &len);
    assert_own_export((char *)r, 4, "- -", "-");
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);
}

/* Service mode: the EXPORT record names the operator logged in; two exports
 * give two records, each report ending with its own. */
static void test_export_names_operator(void **st)
{
    CK_OBJECT_HANDLE h;
    CK_ULONG len;
    unsigned char *r;
    char *line;
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    r = value_of(h, &len);
    /* SO set (nobody logged in), alice set by the SO, the identity, the
     * root, the import; then the export by alice. */
    line = line_starting((char *)r, "record 2 CREDENTIAL ", NULL);
    assert_non_null(line);
    assert_non_null(strstr(line, " 0 0 so "));
    free(line);
    line = line_starting((char *)r, "head ", NULL);
    assert_non_null(line);
    {
        unsigned seq = (unsigned)strtoul(line + 5, NULL, 10);
        assert_true(seq >= 4);
        assert_own_export((char *)r, seq, "- -", "alice");
        assert_signed_by_identity(r, len);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
        free(r);
        free(line);

        assert_int_equal(export("ACME", "SENSOR-1", &h), CKR_OK);
        r = value_of(h, &len);
        assert_own_export((char *)r, seq + 1, "ACME SENSOR-1", "alice");
        /* The first export is still there, unchanged in kind. */
        {
            char prefix[64];
            snprintf(prefix, sizeof(prefix), "record %u EXPORT ", seq);
            line = line_starting((char *)r, prefix, NULL);
            assert_non_null(line);
            assert_non_null(strstr(line, " - - "));
            assert_non_null(strstr(line, " 0 0 alice "));
            free(line);
        }
    }
    assert_signed_by_identity(r, len);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    free(r);
}

static void run(const char *fmt)
{
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof(cmd), fmt, token.dir, token.dir, token.dir);
    assert_int_equal(system(cmd), 0);
}

/* An export moves the token's anchor up to its EXPORT record: a store
 * restored from before it is not the Guardian's state, and is neither
 * reported nor written to. */
static void test_export_moves_anchor(void **st)
{
    CK_OBJECT_HANDLE h;
    (void)st;

    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    run("cp -a %s/state %s/state-backup");
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin)), CKR_OK);
    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    run("rm -rf %s/state && mv %s/state-backup %s/state");
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin)), CKR_OK);
    assert_int_equal(export(NULL, NULL, &h), CKR_GUARDIAN_STATE_ROLLBACK);
    assert_int_equal(export("ACME", "SENSOR-1", &h), CKR_GUARDIAN_STATE_ROLLBACK);
}

static void test_export_refusals(void **st)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_AUDIT_EXPORT;
    CK_BYTE bytes[] = "bytes to sign";
    CK_ATTRIBUTE with_value[] = {{CKA_CLASS, &cls, sizeof(cls)},
                                 {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                                 {CKA_VALUE, bytes, sizeof(bytes) - 1}};
    CK_OBJECT_HANDLE h;
    (void)st;

    /* Both scope attributes or neither. */
    assert_int_equal(export("ACME", NULL, &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(export(NULL, "SENSOR-1", &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(export("", "SENSOR-1", &h), CKR_ATTRIBUTE_VALUE_INVALID);
    /* The request takes no bytes from the caller. */
    assert_int_equal(m->C_CreateObject(s, with_value, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
    /* A user session is needed. */
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(export(NULL, NULL, &h), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    /* None of these recorded an export: the next report's own is record 2. */
    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    {
        CK_ULONG len;
        unsigned char *r = value_of(h, &len);
        assert_own_export((char *)r, 2, "- -", "-");
        free(r);
    }
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
}

static void test_output_read_and_destroy_only(void **st)
{
    CK_OBJECT_HANDLE h, copy;
    CK_BYTE label[] = "mine", forged[] = "GUARDIAN AUDIT REPORT 2\n";
    CK_BBOOL yes = CK_TRUE, priv = CK_FALSE, token_obj = CK_TRUE;
    CK_OBJECT_CLASS cls = 0;
    char got[64];
    CK_ATTRIBUTE set_label = {CKA_LABEL, label, sizeof(label) - 1};
    CK_ATTRIBUTE set_value = {CKA_VALUE, forged, sizeof(forged) - 1};
    CK_ATTRIBUTE make_token = {CKA_TOKEN, &yes, sizeof(yes)};
    CK_ATTRIBUTE read[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, got, sizeof(got)},
                           {CKA_PRIVATE, &priv, sizeof(priv)}, {CKA_TOKEN, &token_obj, sizeof(token_obj)}};
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, read, 4), CKR_OK);
    assert_int_equal(cls, CKO_DATA);
    assert_int_equal(read[1].ulValueLen, strlen("guardian-output:audit-report"));
    assert_memory_equal(got, "guardian-output:audit-report", read[1].ulValueLen);
    assert_int_equal(priv, CK_TRUE);
    assert_int_equal(token_obj, CK_FALSE);
    /* Neither changed nor copied into something else. */
    assert_int_equal(m->C_SetAttributeValue(s, h, &set_label, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_SetAttributeValue(s, h, &set_value, 1), CKR_ACTION_PROHIBITED);
    assert_int_equal(m->C_CopyObject(s, h, &make_token, 1, &copy), CKR_ACTION_PROHIBITED);
    /* Destroyed by the caller; gone. */
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, read, 1), CKR_OBJECT_HANDLE_INVALID);
}

/* The number of objects a search with `t` finds in session `s`. */
static CK_ULONG found(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_OBJECT_HANDLE hs[8];
    CK_ULONG count = 0;
    assert_int_equal(m->C_FindObjectsInit(s, (CK_ATTRIBUTE_PTR)t, n), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, hs, 8, &count), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    return count;
}

/* The output is held by the module (module/cert_objects.c) and private: a
 * session that is not logged in as the user neither finds it, reads it nor
 * destroys it; logged in again (the control), it does all three. */
static void test_output_private(void **st)
{
    CK_OBJECT_HANDLE h;
    CK_OBJECT_CLASS data = CKO_DATA;
    char label[] = "guardian-output:audit-report", got[64];
    CK_ATTRIBUTE by_label[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, label, sizeof(label) - 1}};
    CK_ATTRIBUTE read = {CKA_LABEL, got, sizeof(got)};
    (void)st;

    assert_int_equal(export(NULL, NULL, &h), CKR_OK);
    assert_int_equal(found(by_label, 2), 1);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(found(by_label, 2), 0);
    assert_int_equal(found(NULL, 0) > 0, 1); /* the search itself runs: the public objects */
    assert_int_equal(m->C_GetAttributeValue(s, h, &read, 1), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin)), CKR_OK);
    assert_int_equal(found(by_label, 2), 1);
    assert_int_equal(m->C_GetAttributeValue(s, h, &read, 1), CKR_OK);
    assert_memory_equal(got, label, sizeof(label) - 1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(found(by_label, 2), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_export_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_read_and_destroy_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_private, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_names_operator, setup_service, teardown),
        cmocka_unit_test_setup_teardown(test_export_moves_anchor, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
