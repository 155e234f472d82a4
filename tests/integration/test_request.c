/*
 * test_request.c — CKG_GUARDIAN_REQ_IMPORT and CKG_GUARDIAN_REQ_DEVICE_CERT
 * (C_CreateObject requests, what reaches the module through p11-kit's RPC)
 * against the mechanisms they stand for, CKM_GUARDIAN_UNWRAP_PACKAGE and
 * CKM_GUARDIAN_DERIVE_DEVICE_CERT, through guardian-pkcs11.so over a real
 * SoftHSMv2 token: for every case both paths give the same CKR code, leave
 * the same objects, count the same units and write the same audit records;
 * what only a request can get wrong (its attributes) is
 * CKR_GUARDIAN_REQUEST_INVALID and spends nothing.
 *
 * Each test gets its own token and state directory; the Guardian identity is
 * made by the module (CKG_GUARDIAN_REQ_IDENTITY), the ACME root enrolled by
 * the SO, and the packages made by make_packages.sh, plus two twins (TWIN-A
 * for the mechanism, TWIN-B for the request: the same content but the
 * product ID) and a package OTHER's root signs for ACME's product.
 *
 * And CKG_GUARDIAN_REQ_STATUS, which has no mechanism: what it reports of the
 * store (the chain, the anchor, the counts) as the store changes, a restored
 * copy and an altered record; in service mode, the credentials counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sqlite3.h>

#include "guardian_fixture.h"
#include "softhsm_token.h"
/* after the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

static struct test_token token;
static CK_FUNCTION_LIST *m;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;

static const char *path(const char *name) { return test_path(token.dir, name); }

static unsigned char *slurp(const char *name, size_t *len) { return test_slurp(path(name), len); }

static CK_ULONG count_objects(void) { return test_count_objects(m, s); }

/* The one object of class `cls` whose `type` is `value`, or CK_INVALID_HANDLE. */
static CK_OBJECT_HANDLE find_one(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {type, (void *)value, len}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, h, 2, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_true(n <= 1);
    return n == 1 ? h[0] : CK_INVALID_HANDLE;
}

static CK_RV request(CK_SESSION_HANDLE session, CK_ULONG type, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
                     CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ATTRIBUTE t[16] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    assert_true(n_extra <= 14);
    if (n_extra > 0)
        memcpy(t + 2, extra, n_extra * sizeof(*extra));
    return m->C_CreateObject(session, t, 2 + n_extra, out);
}

/* Both paths gave `expect`. */
#define SAME(expect, rv_mech, rv_req, what)                                                                      \
    do {                                                                                                         \
        CK_RV e_ = (expect), a_ = (rv_mech), b_ = (rv_req);                                                      \
        if (a_ != e_ || b_ != e_)                                                                                \
            fail_msg("%s: mechanism 0x%lx, request 0x%lx, expected 0x%lx", (what), (unsigned long)a_,             \
                     (unsigned long)b_, (unsigned long)e_);                                                      \
    } while (0)

/* ---- the module, the token, the packages ------------------------------------------------- */

static void open_module(void)
{
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
}

static void run(const char *cmd)
{
    if (system(cmd) != 0)
        fail_msg("set-up command failed: %s", cmd);
}

static int setup(void **st)
{
    CK_ULONG days = 30;
    CK_BYTE cn[] = "request-test", value[4096];
    CK_ATTRIBUTE t[] = {{CKA_LABEL, cn, sizeof(cn) - 1}, {CKA_GUARDIAN_VALIDITY_DAYS, &days, sizeof(days)}};
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    CK_OBJECT_HANDLE h;
    char cmd[PATH_MAX * 4];
    const char *wrap = getenv("GUARDIAN_TEST_WRAP");
    FILE *f;
    (void)st;

    assert_int_equal(test_token_create(&token, "request"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    setenv("GUARDIAN_STATE_DIR", path("state"), 1);
    setenv("GUARDIAN_BACKEND", test_softhsm_path(), 1);
    unsetenv("GUARDIAN_CONF");
    open_module();
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_IDENTITY, t, 2, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(s, h, &v, 1), CKR_OK);
    {
        const unsigned char *p = value;
        X509 *x = d2i_X509(NULL, &p, (long)v.ulValueLen);
        assert_non_null(x);
        f = fopen(path("guardian.pem"), "w");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
        X509_free(x);
    }
    snprintf(cmd, sizeof(cmd), "%s %s %s", getenv("GUARDIAN_TEST_MAKE_PACKAGES"), token.dir, wrap);
    run(cmd);
    /* The twins: the same package but for the product ID (3 units, data, a
     * confidential item, an extra key). */
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof(cmd),
                 "cd %s && %s create --guardian-cert guardian.pem --signer-key signer.key --signer-cert signer.pem"
                 " --ca-key ca.key --ca-cert ca.pem --ca-chain oem-root.pem --oem-id ACME --product-id TWIN-%c"
                 " --release 1 --units 3 --not-after +30 --data config=config.txt --secret-data bootkey=boot.secret"
                 " --extra-key attest=extra.key --out twin-%c.gpk >/dev/null",
                 token.dir, wrap, "AB"[i], "ab"[i]);
        run(cmd);
    }
    /* A second OEM, "OTHER", whose root signs a package claiming ACME's product. */
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other-root.key 2>/dev/null"
             " && openssl req -new -x509 -key other-root.key -subj /CN=OTHER-Root -days 30 -out other-root.pem"
             " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
             " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other-signer.key 2>/dev/null"
             " && openssl req -new -key other-signer.key -subj /CN=OTHER-Signer -out other-signer.csr"
             " && openssl x509 -req -in other-signer.csr -CA other-root.pem -CAkey other-root.key -days 30"
             " -out other-signer.pem 2>/dev/null"
             " && %s create --guardian-cert guardian.pem --signer-key other-signer.key --signer-cert other-signer.pem"
             " --ca-key ca.key --ca-cert ca.pem --oem-id ACME --product-id SENSOR-1 --release 99 --units 1000"
             " --not-after +30 --out takeover.gpk >/dev/null",
             token.dir, wrap);
    run(cmd);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(test_enrol_root(m, slot, path("oem-root.pem"), "ACME", &h), CKR_OK);
    assert_int_equal(test_enrol_root(m, slot, path("other-root.pem"), "OTHER", &h), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
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

/* The product's audit records as lines of what both paths must write alike
 * ("type serial device-id-hex release units"): read from the state database
 * once the module is finalized (the issue journal folded, the unused units
 * given back), then the module is opened again. */
static void records_of(const char *product, char *out, size_t cap)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    size_t used = 0;

    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    assert_int_equal(sqlite3_open_v2(path("state/guardian.db"), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT type, serial, hex(device_id), release_version, authorised_units "
                                        "FROM audit WHERE product_id = ? ORDER BY seq",
                                        -1, &q, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(q, 1, product, -1, SQLITE_STATIC);
    out[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW) {
        int n = snprintf(out + used, cap - used, "%d %lld %s %lld %lld\n", sqlite3_column_int(q, 0),
                         (long long)sqlite3_column_int64(q, 1), (const char *)sqlite3_column_text(q, 2),
                         (long long)sqlite3_column_int64(q, 3), (long long)sqlite3_column_int64(q, 4));
        assert_true(n > 0 && (size_t)n < cap - used);
        used += (size_t)n;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    open_module();
}

/* ---- import ------------------------------------------------------------------------------ */

static CK_OBJECT_HANDLE agreement_key(void)
{
    CK_OBJECT_HANDLE h = find_one(CKO_PRIVATE_KEY, CKA_ID, "guardian-identity", 17);
    assert_int_not_equal(h, CK_INVALID_HANDLE);
    return h;
}

static CK_RV mech_import_in(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key, const unsigned char *pkg, size_t len,
                            CK_OBJECT_HANDLE *out)
{
    CK_MECHANISM mech = {CKM_GUARDIAN_UNWRAP_PACKAGE, NULL, 0};
    return m->C_UnwrapKey(session, &mech, key, (CK_BYTE_PTR)pkg, (CK_ULONG)len, NULL, 0, out);
}

static CK_RV req_import_in(CK_SESSION_HANDLE session, const unsigned char *pkg, size_t len, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {{CKA_VALUE, (void *)pkg, (CK_ULONG)len}};
    return request(session, CKG_GUARDIAN_REQ_IMPORT, t, 1, out);
}

/* Import `name` both ways, expecting `expect` from each, and that a refusal
 * left no object and no record. */
static void import_both(const char *name, CK_RV expect)
{
    size_t len;
    unsigned char *pkg = slurp(name, &len);
    CK_ULONG before = count_objects();
    CK_OBJECT_HANDLE h = 0;
    CK_RV a = mech_import_in(s, agreement_key(), pkg, len, &h);
    CK_RV b = req_import_in(s, pkg, len, &h);
    SAME(expect, a, b, name);
    if (expect != CKR_OK)
        assert_int_equal(count_objects(), before);
    free(pkg);
}

static CK_RV req_import(const char *name, CK_OBJECT_HANDLE *out)
{
    size_t len;
    unsigned char *pkg = slurp(name, &len);
    CK_RV rv = req_import_in(s, pkg, len, out);
    free(pkg);
    return rv;
}

static CK_RV mech_import(const char *name, CK_OBJECT_HANDLE *out)
{
    size_t len;
    unsigned char *pkg = slurp(name, &len);
    CK_RV rv = mech_import_in(s, agreement_key(), pkg, len, out);
    free(pkg);
    return rv;
}

/* The package object of ACME's `product`. */
static CK_OBJECT_HANDLE package_object(const char *product)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_PACKAGE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_GUARDIAN_OEM_ID, "ACME", 4},
                        {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    assert_int_equal(m->C_FindObjectsInit(s, t, 3), CKR_OK);
    assert_int_equal(m->C_FindObjects(s, &h, 1, &n), CKR_OK);
    assert_int_equal(m->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
    return h;
}

static CK_ULONG ulong_of(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    return v;
}

static void test_import(void **st)
{
    CK_OBJECT_HANDLE pkg_obj = 0, h = 0;
    CK_ULONG before;
    size_t len;
    unsigned char *pkg;
    (void)st;

    /* Refusals: the same code from both, nothing made. */
    import_both("wrong-guardian.gpk", CKR_GUARDIAN_WRONG_GUARDIAN);
    import_both("evil.gpk", CKR_GUARDIAN_UNTRUSTED_SIGNER);
    import_both("takeover.gpk", CKR_GUARDIAN_OEM_NOT_ENROLLED);
    import_both("expired.gpk", CKR_GUARDIAN_PACKAGE_EXPIRED);
    import_both("config.txt", CKR_WRAPPED_KEY_INVALID);
    import_both("off-curve.gpk", CKR_WRAPPED_KEY_INVALID);
    import_both("no-intermediate.gpk", CKR_GUARDIAN_UNTRUSTED_SIGNER);
    /* Tampered in transit: every 7th byte flipped in turn gives the same
     * refusal both ways. */
    pkg = slurp("good.gpk", &len);
    for (size_t off = 0; off < len; off += 7) {
        CK_RV a, b;
        pkg[off] ^= 0x01;
        a = mech_import_in(s, agreement_key(), pkg, len, &h);
        b = req_import_in(s, pkg, len, &h);
        pkg[off] ^= 0x01;
        if (a != b || a == CKR_OK)
            fail_msg("byte %zu flipped: mechanism 0x%lx, request 0x%lx", off, (unsigned long)a, (unsigned long)b);
    }
    SAME(CKR_WRAPPED_KEY_INVALID, mech_import_in(s, agreement_key(), pkg, len - 1, &h),
         req_import_in(s, pkg, len - 1, &h), "truncated");
    SAME(CKR_WRAPPED_KEY_LEN_RANGE, mech_import_in(s, agreement_key(), pkg, 0, &h), req_import_in(s, pkg, 0, &h),
         "empty");
    {
        unsigned char *big = calloc(1, (1 << 20) + 1);
        SAME(CKR_WRAPPED_KEY_LEN_RANGE, mech_import_in(s, agreement_key(), big, (1 << 20) + 1, &h),
             req_import_in(s, big, (1 << 20) + 1, &h), "oversized");
        free(big);
    }

    /* The good package: the package object, live counters; then both paths
     * call it a replay, and the older release a rollback.  (Another product
     * first, so that the state anchor exists and is not counted below.) */
    assert_int_equal(mech_import("rsa.gpk", &h), CKR_OK);
    before = count_objects();
    assert_int_equal(req_import("good.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(ulong_of(pkg_obj, CKA_CLASS), CKO_GUARDIAN_PACKAGE);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_RELEASE), 3);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), 100);
    /* CA key, extra key, confidential item, CA and root certificates, the
     * integrity data item, and the package object. */
    assert_int_equal(count_objects(), before + 7);
    assert_int_not_equal(find_one(CKO_PRIVATE_KEY, CKA_LABEL, "guardian:ACME/SENSOR-1/r3:production-ca", 39),
                         CK_INVALID_HANDLE);
    import_both("good.gpk", CKR_GUARDIAN_PACKAGE_REPLAYED);
    import_both("older.gpk", CKR_GUARDIAN_PACKAGE_ROLLBACK);
    assert_int_equal(mech_import("newer.gpk", &h), CKR_OK);
    import_both("newer.gpk", CKR_GUARDIAN_PACKAGE_REPLAYED);

    /* The twins: the same objects and the same record, one way each. */
    {
        CK_OBJECT_HANDLE a_obj = 0, b_obj = 0;
        CK_ULONG n0 = count_objects(), n1, n2;
        char ra[4096], rb[4096];
        assert_int_equal(mech_import("twin-a.gpk", &a_obj), CKR_OK);
        n1 = count_objects();
        assert_int_equal(req_import("twin-b.gpk", &b_obj), CKR_OK);
        n2 = count_objects();
        assert_int_equal(n1 - n0, n2 - n1);
        assert_int_equal(ulong_of(a_obj, CKA_GUARDIAN_AUTHORISED_UNITS), ulong_of(b_obj, CKA_GUARDIAN_AUTHORISED_UNITS));
        records_of("TWIN-A", ra, sizeof(ra));
        records_of("TWIN-B", rb, sizeof(rb));
        assert_string_equal(ra, "1 0  1 3\n"); /* IMPORT, release 1, 3 units */
        assert_string_equal(ra, rb);
    }
    free(pkg);
}

/* Sessions and the request's own attributes. */
static void test_import_sessions_and_attributes(void **st)
{
    CK_SESSION_HANDLE ro;
    CK_OBJECT_HANDLE h = 0, key;
    size_t len;
    unsigned char *pkg = slurp("good.gpk", &len);
    unsigned int four = CKG_GUARDIAN_REQ_IMPORT;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG before = count_objects();
    (void)st;

    /* A read-only session, then a public one. */
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
    key = agreement_key();
    SAME(CKR_SESSION_READ_ONLY, mech_import_in(ro, key, pkg, len, &h), req_import_in(ro, pkg, len, &h), "RO session");
    assert_int_equal(m->C_Logout(s), CKR_OK);
    SAME(CKR_USER_NOT_LOGGED_IN, mech_import_in(s, key, pkg, len, &h), req_import_in(s, pkg, len, &h),
         "public R/W session");
    SAME(CKR_USER_NOT_LOGGED_IN, mech_import_in(ro, key, pkg, len, &h), req_import_in(ro, pkg, len, &h),
         "public R/O session");
    assert_int_equal(m->C_CloseSession(ro), CKR_OK);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);

    /* Missing, unknown, twice, without a value, ill-typed. */
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_IMPORT, NULL, 0, &h), CKR_GUARDIAN_REQUEST_INVALID);
    {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, pkg, (CK_ULONG)len}, {CKA_LABEL, "x", 1}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_IMPORT, t, 2, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, pkg, (CK_ULONG)len}, {CKA_VALUE, pkg, (CK_ULONG)len}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_IMPORT, t, 2, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, NULL, (CK_ULONG)len}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_IMPORT, t, 1, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_GUARDIAN_REQUEST, &four, sizeof(four)},
                            {CKA_VALUE, pkg, (CK_ULONG)len}};
        assert_int_equal(m->C_CreateObject(s, t, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    assert_int_equal(count_objects(), before);
    /* All that changed nothing: the package imports. */
    assert_int_equal(req_import_in(s, pkg, len, &h), CKR_OK);

    /* A token whose agreement key is gone (destroyed at the backend
     * directly: the module would refuse): the request has no key to use. */
    {
        CK_FUNCTION_LIST *direct = test_load_module(test_softhsm_path(), NULL);
        CK_OBJECT_HANDLE cert_h;
        assert_non_null(direct);
        assert_int_equal(direct->C_DestroyObject(s, agreement_key()), CKR_OK);
        assert_int_equal(req_import("newer.gpk", &cert_h), CKR_UNWRAPPING_KEY_HANDLE_INVALID);
    }
    free(pkg);
}

/* ---- device certificates ----------------------------------------------------------------- */

struct device {
    CK_ULONG format;
    const void *id;
    size_t id_len;
    const unsigned char *spki;
    size_t spki_len;
};

static size_t spki_of(EVP_PKEY *k, unsigned char *out)
{
    unsigned char *p = out;
    int n = i2d_PUBKEY(k, &p);
    assert_true(n > 0 && n <= 1100);
    return (size_t)n;
}

static CK_RV mech_cert_in(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE ca, const struct device *d,
                          CK_ATTRIBUTE *templ, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    CK_GUARDIAN_DEVICE_CERT_PARAMS p = {CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, d->format, (CK_BYTE_PTR)d->id,
                                        d->id_len, (CK_BYTE_PTR)d->spki, d->spki_len};
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &p, sizeof(p)};
    return m->C_DeriveKey(session, &mech, ca, templ, n, out);
}

/* The request for package `package_id` (NULL: by OEM ACME and `product`),
 * with the derive template's attributes `templ` as its own. */
static CK_RV req_cert_in(CK_SESSION_HANDLE session, const CK_BYTE *package_id, const char *product,
                         const struct device *d, const CK_ATTRIBUTE *templ, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[12];
    CK_ULONG k = 0;
    if (package_id != NULL) {
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PACKAGE_ID, (void *)package_id, 16};
    } else {
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, "ACME", 4};
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)};
    }
    t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_ID_FORMAT, (void *)&d->format, sizeof(d->format)};
    t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_ID, (void *)d->id, (CK_ULONG)d->id_len};
    t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_SPKI, (void *)d->spki, (CK_ULONG)d->spki_len};
    assert_true(k + n <= 12);
    if (n > 0)
        memcpy(t + k, templ, n * sizeof(*templ));
    return request(session, CKG_GUARDIAN_REQ_DEVICE_CERT, t, k + n, out);
}

/* What a test of the device certificates works with: SENSOR-1 r3 and SMALL
 * (3 units), imported through the mechanism. */
static CK_OBJECT_HANDLE pkg_obj, small_obj;
static CK_BYTE pkg_id[16], small_id[16];

static CK_OBJECT_HANDLE ca_key(const char *product, unsigned release)
{
    char label[128];
    CK_OBJECT_HANDLE h;
    snprintf(label, sizeof(label), "guardian:ACME/%s/r%u:production-ca", product, release);
    h = find_one(CKO_PRIVATE_KEY, CKA_LABEL, label, (CK_ULONG)strlen(label));
    assert_int_not_equal(h, CK_INVALID_HANDLE);
    return h;
}

static void package_id_of(CK_OBJECT_HANDLE obj, CK_BYTE id[16])
{
    CK_ATTRIBUTE a = {CKA_GUARDIAN_PACKAGE_ID, id, 16};
    assert_int_equal(m->C_GetAttributeValue(s, obj, &a, 1), CKR_OK);
}

static void import_for_certs(void)
{
    assert_int_equal(mech_import("good.gpk", &pkg_obj), CKR_OK);
    assert_int_equal(mech_import("small.gpk", &small_obj), CKR_OK);
    package_id_of(pkg_obj, pkg_id);
    package_id_of(small_obj, small_id);
}

/* Issue both ways for SENSOR-1 expecting `expect`; a certificate made is
 * destroyed again. */
static void cert_both(const struct device *d, CK_ATTRIBUTE *templ, CK_ULONG n, CK_RV expect, const char *what)
{
    CK_OBJECT_HANDLE a_h = 0, b_h = 0;
    CK_RV a = mech_cert_in(s, ca_key("SENSOR-1", 3), d, templ, n, &a_h);
    CK_RV b = req_cert_in(s, pkg_id, NULL, d, templ, n, &b_h);
    SAME(expect, a, b, what);
    if (a == CKR_OK)
        assert_int_equal(m->C_DestroyObject(s, a_h), CKR_OK);
    if (b == CKR_OK)
        assert_int_equal(m->C_DestroyObject(s, b_h), CKR_OK);
}

/* The certificate object's DER, parsed; it chains to the OEM root through ca.pem. */
static X509 *cert_of(CK_OBJECT_HANDLE h)
{
    CK_BYTE value[4096];
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE a[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_CLASS, &cls, sizeof(cls)}};
    const unsigned char *p = value;
    X509 *x, *root, *ca;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    FILE *f;

    assert_int_equal(m->C_GetAttributeValue(s, h, a, 2), CKR_OK);
    assert_int_equal(cls, CKO_CERTIFICATE);
    x = d2i_X509(NULL, &p, (long)a[0].ulValueLen);
    assert_non_null(x);
    f = fopen(path("oem-root.pem"), "r");
    root = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(path("ca.pem"), "r");
    ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    X509_STORE_add_cert(store, root);
    sk_X509_push(untrusted, ca);
    X509_STORE_CTX_init(ctx, store, x, untrusted);
    if (X509_verify_cert(ctx) != 1)
        fail_msg("device certificate does not verify: %s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(root);
    return x;
}

static void assert_cn(X509 *x, const char *cn)
{
    char got[128];
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, got, sizeof(got)) > 0);
    assert_string_equal(got, cn);
}

static void test_device_cert(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100];
    size_t n = spki_of(k, spki);
    struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "SN-1", 4, spki, n};
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG remaining;
    X509 *x;
    (void)st;

    import_for_certs();
    remaining = ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS);
    /* By package ID, by OEM and product, by the mechanism: one unit each. */
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h), CKR_OK);
    x = cert_of(h);
    assert_cn(x, "SN-1");
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), k), 1);
    X509_free(x);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), remaining - 1);
    d.id = "SN-2";
    assert_int_equal(req_cert_in(s, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_OK);
    x = cert_of(h);
    assert_cn(x, "SN-2");
    X509_free(x);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    d.id = "SN-3";
    assert_int_equal(mech_cert_in(s, ca_key("SENSOR-1", 3), &d, NULL, 0, &h), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), remaining - 3);
    /* A binary ID, shown as hex; a token object with the caller's label and ID. */
    {
        CK_BBOOL yes = CK_TRUE, is_token = CK_FALSE;
        char label[16] = "";
        CK_BYTE id[4] = "";
        CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, "line-7", 6}, {CKA_ID, "\x01\x02", 2}};
        CK_ATTRIBUTE q[] = {{CKA_TOKEN, &is_token, 1}, {CKA_LABEL, label, sizeof(label)}, {CKA_ID, id, sizeof(id)}};
        struct device b = {CKG_GUARDIAN_DEVICE_ID_BINARY, "\xde\xad\xbe\xef", 4, spki, n};
        assert_int_equal(req_cert_in(s, pkg_id, NULL, &b, t, 3, &h), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, h, q, 3), CKR_OK);
        assert_true(is_token);
        assert_int_equal(q[1].ulValueLen, 6);
        assert_memory_equal(label, "line-7", 6);
        assert_int_equal(q[2].ulValueLen, 2);
        x = cert_of(h);
        assert_cn(x, "deadbeef");
        X509_free(x);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    /* The default format is text: no CKA_GUARDIAN_DEVICE_ID_FORMAT. */
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_PACKAGE_ID, pkg_id, 16},
                            {CKA_GUARDIAN_DEVICE_ID, "SN-5", 4},
                            {CKA_GUARDIAN_DEVICE_SPKI, spki, (CK_ULONG)n}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_DEVICE_CERT, t, 3, &h), CKR_OK);
        x = cert_of(h);
        assert_cn(x, "SN-5");
        X509_free(x);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    /* Units are counted when reserved, in blocks of 1, 2, 4, ...: 7 for 5
     * certificates; the unused 2 are given back at C_Finalize. */
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), remaining - 7);
    {
        char r[4096];
        int issued = 0;
        records_of("SENSOR-1", r, sizeof(r));
        for (const char *p = r; *p != '\0'; p = strchr(p, '\n') + 1)
            issued += strncmp(p, "3 ", 2) == 0;
        assert_int_equal(issued, 5);
        assert_int_equal(ulong_of(package_object("SENSOR-1"), CKA_GUARDIAN_REMAINING_UNITS), remaining - 5);
    }
    EVP_PKEY_free(k);
}

static void test_device_cert_refusals(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100], bad[1100];
    size_t n = spki_of(k, spki);
    struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "dev-x", 5, spki, n};
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG remaining;
    (void)st;

    import_for_certs();
    remaining = ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS);

    /* Device keys: off the curve, cut short, trailing bytes, not DER,
     * unsupported, the CA's own. */
    memcpy(bad, spki, n);
    bad[n - 1] ^= 0x01;
    d.spki = bad;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_INVALID, "point off the curve");
    d.spki_len = n - 1;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_INVALID, "SPKI cut short");
    memcpy(bad, spki, n);
    bad[n] = 0;
    d.spki_len = n + 1;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_INVALID, "SPKI with a trailing byte");
    d.spki = (const unsigned char *)"\x30\x00";
    d.spki_len = 2;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_INVALID, "empty SEQUENCE");
    d.spki_len = 0;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_INVALID, "no SPKI bytes");
    {
        EVP_PKEY *p521 = EVP_EC_gen("P-521");
        d.spki = bad;
        d.spki_len = spki_of(p521, bad);
        cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED, "P-521");
        EVP_PKEY_free(p521);
    }
    {
        FILE *f = fopen(path("ca.pem"), "r");
        X509 *cax = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        d.spki_len = spki_of(X509_get0_pubkey(cax), bad);
        cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY, "the CA key as the device key");
        X509_free(cax);
    }
    d.spki = spki;
    d.spki_len = n;

    /* Device IDs. */
    d.format = 99;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_ID_INVALID, "format 99");
    d.format = CKG_GUARDIAN_DEVICE_ID_TEXT;
    d.id = "dev x";
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_ID_INVALID, "a space in a text ID");
    d.id_len = 0;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_ID_INVALID, "an empty ID");
    d.format = CKG_GUARDIAN_DEVICE_ID_BINARY;
    d.id = bad;
    d.id_len = 33;
    cert_both(&d, NULL, 0, CKR_GUARDIAN_DEVICE_ID_INVALID, "a 33-byte binary ID");
    d.format = CKG_GUARDIAN_DEVICE_ID_TEXT;
    d.id = "dev-x";
    d.id_len = 5;

    /* The output template: the derive mechanism's rules, and no Guardian marks. */
    {
        CK_BBOOL yes = CK_TRUE;
        CK_ULONG wide = 1;
        CK_SESSION_HANDLE ro;
        CK_ATTRIBUTE token_long = {CKA_TOKEN, &wide, sizeof(wide)};
        CK_ATTRIBUTE id_mark = {CKA_ID, "guardian-identity", 17}, signing_mark = {CKA_ID, "guardian-signing", 16};
        CK_ATTRIBUTE label_mark = {CKA_LABEL, "guardian:ACME/SENSOR-1/r3:production-ca-cert", 44};
        CK_ATTRIBUTE root_mark = {CKA_LABEL, "guardian-root:ACME", 18}, token_true = {CKA_TOKEN, &yes, 1};
        cert_both(&d, &token_long, 1, CKR_ATTRIBUTE_VALUE_INVALID, "CKA_TOKEN not a CK_BBOOL");
        cert_both(&d, &id_mark, 1, CKR_ACTION_PROHIBITED, "CKA_ID guardian-identity");
        cert_both(&d, &signing_mark, 1, CKR_ACTION_PROHIBITED, "CKA_ID guardian-signing");
        cert_both(&d, &label_mark, 1, CKR_ACTION_PROHIBITED, "a package label");
        cert_both(&d, &root_mark, 1, CKR_ACTION_PROHIBITED, "a root label");
        /* A token certificate needs a read/write session. */
        assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
        SAME(CKR_SESSION_READ_ONLY, mech_cert_in(ro, ca_key("SENSOR-1", 3), &d, &token_true, 1, &h),
             req_cert_in(ro, pkg_id, NULL, &d, &token_true, 1, &h), "token certificate in a R/O session");
        /* A session certificate does not. */
        assert_int_equal(mech_cert_in(ro, ca_key("SENSOR-1", 3), &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(ro, h), CKR_OK);
        assert_int_equal(req_cert_in(ro, pkg_id, NULL, &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(ro, h), CKR_OK);
        assert_int_equal(m->C_CloseSession(ro), CKR_OK);
        remaining = ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS);
    }

    /* What only a request can get wrong: its attributes. */
    {
        CK_BYTE short_id[15] = {0}, unknown[16] = {0};
        unsigned int four = CKG_GUARDIAN_DEVICE_ID_TEXT;
        CK_ULONG fmt = CKG_GUARDIAN_DEVICE_ID_TEXT;
        CK_ATTRIBUTE pid = {CKA_GUARDIAN_PACKAGE_ID, pkg_id, 16}, oem = {CKA_GUARDIAN_OEM_ID, "ACME", 4};
        CK_ATTRIBUTE product = {CKA_GUARDIAN_PRODUCT_ID, "SENSOR-1", 8};
        CK_ATTRIBUTE id = {CKA_GUARDIAN_DEVICE_ID, "dev-x", 5}, key = {CKA_GUARDIAN_DEVICE_SPKI, spki, (CK_ULONG)n};
        CK_ATTRIBUTE format = {CKA_GUARDIAN_DEVICE_ID_FORMAT, &fmt, sizeof(fmt)};
        const struct {
            const char *what;
            CK_ATTRIBUTE t[6];
            CK_ULONG n;
        } cases[] = {
            {"no device ID", {pid, key}, 2},
            {"no device key", {pid, id}, 2},
            {"no package", {id, key}, 2},
            {"OEM without product", {oem, id, key}, 3},
            {"product without OEM", {product, id, key}, 3},
            {"package ID and product", {pid, oem, product, id, key}, 5},
            {"a 15-byte package ID", {{CKA_GUARDIAN_PACKAGE_ID, short_id, 15}, id, key}, 3},
            {"an empty OEM ID", {{CKA_GUARDIAN_OEM_ID, "", 0}, product, id, key}, 4},
            {"a NUL in the product ID", {oem, {CKA_GUARDIAN_PRODUCT_ID, "SENSOR-1\0x", 10}, id, key}, 4},
            {"a 4-byte format", {pid, {CKA_GUARDIAN_DEVICE_ID_FORMAT, &four, sizeof(four)}, id, key}, 4},
            {"a device ID without a value", {pid, {CKA_GUARDIAN_DEVICE_ID, NULL, 5}, key}, 3},
            {"an attribute it does not take", {pid, id, key, {CKA_VALUE, "x", 1}}, 4},
            {"CKA_PRIVATE (the derive template's, not the request's)", {pid, id, key, {CKA_PRIVATE, "\0", 1}}, 4},
            {"the device ID twice", {pid, id, key, id}, 4},
            {"the format twice", {pid, format, id, key, format}, 5},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            CK_RV rv = request(s, CKG_GUARDIAN_REQ_DEVICE_CERT, cases[i].t, cases[i].n, &h);
            if (rv != CKR_GUARDIAN_REQUEST_INVALID)
                fail_msg("%s: 0x%lx, not CKR_GUARDIAN_REQUEST_INVALID", cases[i].what, (unsigned long)rv);
        }
        /* Well formed, but naming nothing installed. */
        assert_int_equal(req_cert_in(s, unknown, NULL, &d, NULL, 0, &h), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
        assert_int_equal(req_cert_in(s, NULL, "NO-SUCH", &d, NULL, 0, &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    }
    /* None of that spent a unit. */
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), remaining);

    /* Not logged in: the request says so before anything else. */
    {
        CK_SESSION_HANDLE ro;
        assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
        assert_int_equal(m->C_Logout(s), CKR_OK);
        assert_int_equal(req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h), CKR_USER_NOT_LOGGED_IN);
        assert_int_equal(req_cert_in(ro, pkg_id, NULL, &d, NULL, 0, &h), CKR_USER_NOT_LOGGED_IN);
        assert_int_equal(req_cert_in(ro, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_USER_NOT_LOGGED_IN);
        assert_int_equal(m->C_CloseSession(ro), CKR_OK);
        assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);
    }
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_REMAINING_UNITS), remaining);

    /* A key at the backend under the CA key's CKA_ID and label that is not
     * the CA key: the mechanism refuses it as base key, the request passes it
     * over for the one that proves itself. */
    {
        CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
        CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)}, {CKA_TOKEN, &no, 1}};
        CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_ID, pkg_id, 16},
                                 {CKA_LABEL, "guardian:ACME/SENSOR-1/r3:production-ca", 39}};
        CK_FUNCTION_LIST *direct = test_load_module(test_softhsm_path(), NULL);
        CK_OBJECT_HANDLE pub, priv;
        assert_non_null(direct);
        /* A fresh module: nothing proven yet in this process. */
        assert_int_equal(m->C_Finalize(NULL), CKR_OK);
        open_module();
        assert_int_equal(direct->C_GenerateKeyPair(s, &gen, pub_t, 2, priv_t, 4, &pub, &priv), CKR_OK);
        assert_int_equal(mech_cert_in(s, priv, &d, NULL, 0, &h), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
        assert_int_equal(req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    EVP_PKEY_free(k);
}

/* The quota both ways, with the same records; then a newer release
 * supersedes the old package for both. */
static void test_device_cert_quota_and_records(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100];
    size_t n = spki_of(k, spki);
    CK_OBJECT_HANDLE a_obj = 0, b_obj = 0, h = 0;
    CK_BYTE b_id[16];
    char ra[4096], rb[4096];
    (void)st;

    assert_int_equal(mech_import("twin-a.gpk", &a_obj), CKR_OK);
    assert_int_equal(req_import("twin-b.gpk", &b_obj), CKR_OK);
    package_id_of(b_obj, b_id);
    for (int i = 1; i <= 4; i++) {
        char id[16];
        struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, id, 0, spki, n};
        CK_OBJECT_HANDLE a_h = 0, b_h = 0;
        CK_RV a, b;
        snprintf(id, sizeof(id), "T-%d", i);
        d.id_len = strlen(id);
        a = mech_cert_in(s, ca_key("TWIN-A", 1), &d, NULL, 0, &a_h);
        b = req_cert_in(s, i % 2 ? b_id : NULL, "TWIN-B", &d, NULL, 0, &b_h);
        SAME(i <= 3 ? CKR_OK : CKR_GUARDIAN_QUOTA_EXHAUSTED, a, b, id);
        if (i <= 3) {
            assert_int_equal(m->C_DestroyObject(s, a_h), CKR_OK);
            assert_int_equal(m->C_DestroyObject(s, b_h), CKR_OK);
        }
    }
    assert_int_equal(ulong_of(a_obj, CKA_GUARDIAN_REMAINING_UNITS), 0);
    assert_int_equal(ulong_of(b_obj, CKA_GUARDIAN_REMAINING_UNITS), 0);
    assert_int_equal(ulong_of(b_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    records_of("TWIN-A", ra, sizeof(ra));
    records_of("TWIN-B", rb, sizeof(rb));
    assert_string_equal(ra, rb);
    /* IMPORT, then per part a RESERVE (blocks of 1 and 2) and an ISSUE. */
    assert_non_null(strstr(ra, "3 3 542D33 0 0\n")); /* ISSUE of serial 3 to "T-3" */

    /* A newer release of SENSOR-1: the old package ID is superseded for the
     * request as its CA key is for the mechanism (once the units this
     * process holds under it are used); the product's name follows it. */
    {
        CK_OBJECT_HANDLE old_obj = 0, new_obj = 0;
        CK_BYTE old_id[16];
        struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "S-1", 3, spki, n};
        /* A device ID each: asked again, one would get its certificate back
         * without a reservation (nothing spent, nothing superseded). */
        char ida[16], idb[16];
        struct device da = {CKG_GUARDIAN_DEVICE_ID_TEXT, ida, 0, spki, n};
        struct device db = {CKG_GUARDIAN_DEVICE_ID_TEXT, idb, 0, spki, n};
        CK_RV a = CKR_OK, b = CKR_OK;
        assert_int_equal(mech_import("good.gpk", &old_obj), CKR_OK);
        package_id_of(old_obj, old_id);
        assert_int_equal(req_cert_in(s, old_id, NULL, &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
        assert_int_equal(req_import("newer.gpk", &new_obj), CKR_OK);
        for (int i = 0; i < 64 && (a == CKR_OK || b == CKR_OK); i++) {
            snprintf(ida, sizeof(ida), "SA-%d", i);
            snprintf(idb, sizeof(idb), "SB-%d", i);
            da.id_len = strlen(ida);
            db.id_len = strlen(idb);
            if (a == CKR_OK && (a = mech_cert_in(s, ca_key("SENSOR-1", 3), &da, NULL, 0, &h)) == CKR_OK)
                assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
            if (b == CKR_OK && (b = req_cert_in(s, old_id, NULL, &db, NULL, 0, &h)) == CKR_OK)
                assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
        }
        SAME(CKR_GUARDIAN_PACKAGE_SUPERSEDED, a, b, "the superseded release");
        d.id = "S-2";
        assert_int_equal(req_cert_in(s, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(ulong_of(new_obj, CKA_GUARDIAN_ISSUED_UNITS), 1);
    }
    EVP_PKEY_free(k);
}

/* ---- the batch (CKG_GUARDIAN_REQ_DEVICE_CERTS) -------------------------------------------- */

/* Append one entry of CKA_GUARDIAN_DEVICE_BATCH's encoding. */
static size_t batch_put(unsigned char *b, size_t used, CK_ULONG format, const void *id, size_t id_len,
                        const unsigned char *spki, size_t spki_len)
{
    unsigned char *p = b + used;
    p[0] = (unsigned char)(format >> 24), p[1] = (unsigned char)(format >> 16);
    p[2] = (unsigned char)(format >> 8), p[3] = (unsigned char)format;
    p[4] = (unsigned char)(id_len >> 8), p[5] = (unsigned char)id_len;
    memcpy(p + 6, id, id_len);
    p[6 + id_len] = (unsigned char)(spki_len >> 8), p[7 + id_len] = (unsigned char)spki_len;
    memcpy(p + 8 + id_len, spki, spki_len);
    return used + 8 + id_len + spki_len;
}

/* `n` entries "<prefix>-1".. with the same key. */
static size_t batch_of(unsigned char *b, const char *prefix, int n, const unsigned char *spki, size_t spki_len)
{
    size_t used = 0;
    for (int i = 1; i <= n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%s-%d", prefix, i);
        used = batch_put(b, used, CKG_GUARDIAN_DEVICE_ID_TEXT, id, strlen(id), spki, spki_len);
    }
    return used;
}

static CK_RV batch_req(const CK_BYTE *package_id, const char *product, const unsigned char *b, size_t len,
                       CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[3];
    CK_ULONG k = 0;
    if (package_id != NULL) {
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PACKAGE_ID, (void *)package_id, 16};
    } else {
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, "ACME", 4};
        t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)};
    }
    t[k++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_BATCH, (void *)b, (CK_ULONG)len};
    *out = CK_INVALID_HANDLE;
    return request(s, CKG_GUARDIAN_REQ_DEVICE_CERTS, t, k, out);
}

static unsigned long be32_at(const unsigned char *p)
{
    return (unsigned long)p[0] << 24 | (unsigned long)p[1] << 16 | (unsigned long)p[2] << 8 | p[3];
}

/* The result object's records: status[i] and the CN of each certificate
 * (verified up to the OEM root as cert_of does) in cn[i]; the object is
 * checked (label, class) and destroyed.  Returns the number of records. */
static int batch_result(CK_OBJECT_HANDLE h, CK_RV status[], char cn[][32])
{
    static unsigned char value[64 * 4200];
    char label[64] = {0};
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE a[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_LABEL, label, sizeof(label) - 1},
                        {CKA_CLASS, &cls, sizeof(cls)}};
    size_t pos = 0;
    int n = 0;

    assert_int_equal(m->C_GetAttributeValue(s, h, a, 3), CKR_OK);
    assert_int_equal(cls, CKO_DATA);
    label[a[1].ulValueLen] = '\0';
    assert_string_equal(label, "guardian-output:device-certs");
    while (pos < a[0].ulValueLen) {
        size_t len;
        assert_true(a[0].ulValueLen - pos >= 8);
        status[n] = be32_at(value + pos);
        len = be32_at(value + pos + 4);
        pos += 8;
        assert_true(a[0].ulValueLen - pos >= len);
        cn[n][0] = '\0';
        assert_true((status[n] == CKR_OK) == (len > 0));
        if (len > 0) {
            const unsigned char *p = value + pos;
            X509 *x = d2i_X509(NULL, &p, (long)len);
            assert_non_null(x);
            assert_true(p == value + pos + len);
            assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn[n], 32) > 0);
            X509_free(x);
        }
        pos += len;
        n++;
    }
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    return n;
}

/* A batch is N single requests: the same ISSUE (and RESERVE) records, the
 * same units; the quota running out at entry k leaves 0..k-1 issued. */
static void test_device_certs_batch(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100], b[8192];
    size_t n = spki_of(k, spki), len;
    CK_OBJECT_HANDLE a_obj = 0, b_obj = 0, h = 0;
    CK_BYTE b_id[16];
    CK_RV status[64];
    char cn[64][32], ra[4096], rb[4096];
    (void)st;

    assert_int_equal(mech_import("twin-a.gpk", &a_obj), CKR_OK);
    assert_int_equal(req_import("twin-b.gpk", &b_obj), CKR_OK);
    package_id_of(b_obj, b_id);
    /* TWIN-A: three single requests; TWIN-B: one batch of the same three. */
    for (int i = 1; i <= 3; i++) {
        char id[16];
        struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, id, 0, spki, n};
        snprintf(id, sizeof(id), "T-%d", i);
        d.id_len = strlen(id);
        assert_int_equal(req_cert_in(s, NULL, "TWIN-A", &d, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    len = batch_of(b, "T", 3, spki, n);
    assert_int_equal(batch_req(b_id, NULL, b, len, &h), CKR_OK);
    assert_int_equal(batch_result(h, status, cn), 3);
    for (int i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof(want), "T-%d", i + 1);
        assert_int_equal(status[i], CKR_OK);
        assert_string_equal(cn[i], want);
    }
    assert_int_equal(ulong_of(a_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    assert_int_equal(ulong_of(b_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    /* Nothing left: the first entry's code, and no result object. */
    len = batch_of(b, "U", 2, spki, n);
    assert_int_equal(batch_req(NULL, "TWIN-B", b, len, &h), CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(h, CK_INVALID_HANDLE);
    records_of("TWIN-A", ra, sizeof(ra));
    records_of("TWIN-B", rb, sizeof(rb));
    assert_string_equal(ra, rb);
    assert_non_null(strstr(rb, "3 3 542D33 0 0\n")); /* ISSUE of serial 3 to "T-3" */

    /* SMALL has 3 units: a batch of 5 issues 3, the 4th is refused, the 5th
     * not tried; the call succeeds (something was issued). */
    import_for_certs();
    len = batch_of(b, "G", 5, spki, n);
    assert_int_equal(batch_req(small_id, NULL, b, len, &h), CKR_OK);
    assert_int_equal(batch_result(h, status, cn), 5);
    for (int i = 0; i < 3; i++)
        assert_int_equal(status[i], CKR_OK);
    assert_string_equal(cn[2], "G-3");
    assert_int_equal(status[3], CKR_GUARDIAN_QUOTA_EXHAUSTED);
    assert_int_equal(status[4], CKR_FUNCTION_CANCELED);
    assert_int_equal(ulong_of(small_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    assert_int_equal(ulong_of(small_obj, CKA_GUARDIAN_REMAINING_UNITS), 0);
    records_of("SMALL", ra, sizeof(ra));
    assert_non_null(strstr(ra, "3 3 472D33 0 0\n")); /* ISSUE of serial 3 to "G-3" */
    assert_null(strstr(ra, "472D34"));                 /* nothing for "G-4" */
    EVP_PKEY_free(k);
}

struct bad_entry {
    CK_ULONG format;
    const char *id;
    const unsigned char *key;
    size_t key_len;
    CK_RV expect;
    const char *what;
};

/* A bad entry anywhere refuses the whole batch with the code a single
 * request gives it, and spends nothing; so does a bad encoding (empty, 65
 * entries, cut short anywhere, a trailing byte), as
 * CKR_GUARDIAN_REQUEST_INVALID. */
static void test_device_certs_refusals(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100], bad[1100], ca_spki[1100], b[80000];
    size_t n = spki_of(k, spki), ca_n, len, one;
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG issued;
    struct bad_entry cases[4];
    (void)st;

    import_for_certs();
    {
        FILE *f = fopen(path("ca.pem"), "r");
        X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        ca_n = spki_of(X509_get0_pubkey(ca), ca_spki);
        X509_free(ca);
    }
    memcpy(bad, spki, n);
    bad[n - 1] ^= 0x01;
    cases[0] = (struct bad_entry){CKG_GUARDIAN_DEVICE_ID_TEXT, "bad/id", spki, n, CKR_GUARDIAN_DEVICE_ID_INVALID,
                                  "a text ID with '/'"};
    cases[1] = (struct bad_entry){7, "B-2", spki, n, CKR_GUARDIAN_DEVICE_ID_INVALID, "format 7"};
    cases[2] = (struct bad_entry){CKG_GUARDIAN_DEVICE_ID_TEXT, "B-2", bad, n, CKR_GUARDIAN_DEVICE_KEY_INVALID,
                                  "a point off the curve"};
    cases[3] = (struct bad_entry){CKG_GUARDIAN_DEVICE_ID_TEXT, "B-2", ca_spki, ca_n,
                                  CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY, "the CA's own key"};
    issued = ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct device d = {cases[c].format, cases[c].id, strlen(cases[c].id), cases[c].key, cases[c].key_len};
        CK_RV single = req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h);
        /* the bad entry second of three: the first is good, and not issued */
        len = batch_put(b, 0, CKG_GUARDIAN_DEVICE_ID_TEXT, "B-1", 3, spki, n);
        len = batch_put(b, len, cases[c].format, cases[c].id, strlen(cases[c].id), cases[c].key, cases[c].key_len);
        len = batch_put(b, len, CKG_GUARDIAN_DEVICE_ID_TEXT, "B-3", 3, spki, n);
        if (single != cases[c].expect)
            fail_msg("%s: the single request gave 0x%lx", cases[c].what, (unsigned long)single);
        if (batch_req(pkg_id, NULL, b, len, &h) != cases[c].expect)
            fail_msg("%s: the batch did not give the single request's code", cases[c].what);
        assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), issued);
    }

    /* The encoding. */
    assert_int_equal(batch_req(pkg_id, NULL, b, 0, &h), CKR_GUARDIAN_REQUEST_INVALID);      /* N = 0 */
    assert_int_equal(batch_req(pkg_id, NULL, NULL, 0, &h), CKR_GUARDIAN_REQUEST_INVALID);   /* N = 0 */
    len = batch_of(b, "N", 65, spki, n);
    assert_int_equal(batch_req(pkg_id, NULL, b, len, &h), CKR_GUARDIAN_REQUEST_INVALID);    /* N = 65 */
    len = batch_of(b, "N", 64, spki, n);
    b[len] = 0;
    assert_int_equal(batch_req(pkg_id, NULL, b, len + 1, &h), CKR_GUARDIAN_REQUEST_INVALID); /* trailing byte */
    one = batch_of(b, "C", 1, spki, n);
    len = batch_of(b, "C", 2, spki, n);
    for (size_t cut = 1; cut < len; cut++) {
        if (cut == one)
            continue; /* a whole first entry: a batch of one */
        if (batch_req(pkg_id, NULL, b, cut, &h) != CKR_GUARDIAN_REQUEST_INVALID)
            fail_msg("a batch cut to %zu of %zu bytes was not refused", cut, len);
    }
    /* An attribute the batch does not take (the single request's CKA_TOKEN). */
    {
        CK_BBOOL no = CK_FALSE;
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_PACKAGE_ID, pkg_id, 16},
                            {CKA_GUARDIAN_DEVICE_BATCH, b, (CK_ULONG)one},
                            {CKA_TOKEN, &no, sizeof(no)}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_DEVICE_CERTS, t, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), issued);
    /* And a good one of 64 goes through. */
    len = batch_of(b, "N", 64, spki, n);
    assert_int_equal(batch_req(pkg_id, NULL, b, len, &h), CKR_OK);
    {
        CK_RV status[64];
        char cn[64][32];
        assert_int_equal(batch_result(h, status, cn), 64);
        assert_string_equal(cn[63], "N-64");
    }
    /* At least those 64 (the module's reservation blocks count too). */
    assert_true(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS) >= issued + 64);
    EVP_PKEY_free(k);
}

/* ---- the status ------------------------------------------------------------------------------ */

/* CKG_GUARDIAN_REQ_STATUS in `session`: its text in `out`, the object checked
 * (a session CKO_DATA "guardian-output:status") and destroyed. */
static void status_in(CK_SESSION_HANDLE session, char *out, size_t cap)
{
    CK_OBJECT_HANDLE h = 0;
    CK_OBJECT_CLASS cls = 0;
    CK_BBOOL token_obj = CK_TRUE;
    char label[64];
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &token_obj, sizeof(token_obj)},
                        {CKA_LABEL, label, sizeof(label) - 1},
                        {CKA_VALUE, out, (CK_ULONG)cap - 1}};
    assert_int_equal(request(session, CKG_GUARDIAN_REQ_STATUS, NULL, 0, &h), CKR_OK);
    assert_int_equal(m->C_GetAttributeValue(session, h, a, 4), CKR_OK);
    label[a[2].ulValueLen] = '\0';
    out[a[3].ulValueLen] = '\0';
    assert_int_equal(cls, CKO_DATA);
    assert_false(token_obj);
    assert_string_equal(label, "guardian-output:status");
    assert_int_equal(m->C_DestroyObject(session, h), CKR_OK);
}

/* The value of `key` in a status text (asserted present). */
static const char *status_of(const char *text, const char *key)
{
    static char v[PATH_MAX];
    size_t klen = strlen(key);
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl); /* every line ends in a newline */
        if ((size_t)(nl - line) > klen && strncmp(line, key, klen) == 0 && line[klen] == '=') {
            snprintf(v, sizeof(v), "%.*s", (int)(nl - line - (long)klen - 1), line + klen + 1);
            return v;
        }
        line = nl + 1;
    }
    fail_msg("no %s= in the status:\n%s", key, text);
    return NULL;
}

#define STATUS_IS(text, key, want) assert_string_equal(status_of((text), (key)), (want))

/* Copy (or put back) the state database with its WAL, the module finalized. */
static void state_copy(const char *from, const char *to)
{
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof(cmd), "cd %s && mkdir -p -m 0700 %s && for f in guardian.db guardian.db-wal guardian.db-shm;"
             " do rm -f %s/$f; if [ -e %s/$f ]; then cp -p %s/$f %s/$f; fi; done", token.dir, to, to, from, from, to);
    run(cmd);
}

static void test_status(void **st)
{
    static char text[8192];
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100];
    size_t n = spki_of(k, spki);
    struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "ST-1", 4, spki, n};
    CK_OBJECT_HANDLE h = 0, pkg = 0;
    CK_SESSION_HANDLE ro = CK_INVALID_HANDLE;
    CK_ATTRIBUTE extra = {CKA_LABEL, "x", 1};
    char units[32];
    (void)st;

    /* A new Guardian: an empty trail, no anchor, no product; the paths are
     * the module's configuration (from the environment here). */
    status_in(s, text, sizeof(text));
    assert_true(strncmp(text, "version=4\n", 10) == 0);
    STATUS_IS(text, "backend", test_softhsm_path());
    STATUS_IS(text, "configuration", "");
    STATUS_IS(text, "state_dir", path("state"));
    /* The store: SQLite by default, its file in the state directory. */
    STATUS_IS(text, "store", "sqlite");
    {
        char db[PATH_MAX];
        snprintf(db, sizeof(db), "%s/guardian.db", path("state"));
        STATUS_IS(text, "store_location", db);
    }
    STATUS_IS(text, "audit_chain", "ok");
    STATUS_IS(text, "audit_records", "0");
    STATUS_IS(text, "audit_head_seq", "0");
    STATUS_IS(text, "audit_head_hash", "0000000000000000000000000000000000000000000000000000000000000000");
    STATUS_IS(text, "anchor", "absent");
    STATUS_IS(text, "products", "0");
    /* Not the service mode: the backend's own PINs, no Guardian credential. */
    STATUS_IS(text, "service_mode", "no");
    STATUS_IS(text, "so", "unset");
    STATUS_IS(text, "operators", "0");
    STATUS_IS(text, "operators_locked", "0");
    STATUS_IS(text, "records_credential", "0");
    STATUS_IS(text, "records_export", "0");
    /* The rate's window and the module's clock; no product, no rate line. */
    STATUS_IS(text, "rate_window", "60");
    {
        long long now = strtoll(status_of(text, "now"), NULL, 10);
        assert_true(now <= (long long)time(NULL) && now >= (long long)time(NULL) - 5);
    }
    assert_null(strstr(text, "issued_recent."));
    /* No secret and nothing of the token's PINs: only the documented keys. */
    assert_null(strstr(text, TEST_PIN "\n"));

    /* Who may ask: a user session, read-only will do; no attribute besides. */
    assert_int_equal(request(s, CKG_GUARDIAN_REQ_STATUS, &extra, 1, &h), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
    status_in(ro, text, sizeof(text));
    STATUS_IS(text, "audit_chain", "ok");
    assert_int_equal(m->C_Logout(s), CKR_OK);
    assert_int_equal(request(ro, CKG_GUARDIAN_REQ_STATUS, NULL, 0, &h), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(m->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)TEST_PIN, 4), CKR_OK);

    /* An import: one record, anchored, one product with its units. */
    assert_int_equal(req_import("good.gpk", &pkg), CKR_OK);
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "audit_records", "1");
    STATUS_IS(text, "audit_head_seq", "1");
    STATUS_IS(text, "records_import", "1");
    STATUS_IS(text, "anchor", "agrees");
    STATUS_IS(text, "anchor_seq", "1");
    STATUS_IS(text, "products", "1");
    snprintf(units, sizeof(units), "%lu", (unsigned long)ulong_of(pkg, CKA_GUARDIAN_AUTHORISED_UNITS));
    STATUS_IS(text, "units_authorised", units);
    STATUS_IS(text, "units_remaining", units);
    STATUS_IS(text, "issued_recent.ACME/SENSOR-1", "0");
    assert_int_not_equal(strcmp(status_of(text, "audit_head_hash"),
                                "0000000000000000000000000000000000000000000000000000000000000000"),
                         0);

    /* A certificate: its RESERVE and (this process's journal folded first)
     * its ISSUE are in the trail the status walked; the anchor is not behind. */
    assert_int_equal(req_cert_in(ro, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_OK);
    assert_int_equal(m->C_DestroyObject(ro, h), CKR_OK);
    status_in(ro, text, sizeof(text));
    STATUS_IS(text, "records_reserve", "1");
    STATUS_IS(text, "records_issue", "1");
    STATUS_IS(text, "audit_chain", "ok");
    /* The running line's count: that ISSUE record is within the last 60 s. */
    STATUS_IS(text, "issued_recent.ACME/SENSOR-1", "1");
    assert_true(strcmp(status_of(text, "anchor"), "agrees") == 0 || strcmp(status_of(text, "anchor"), "store-ahead") == 0);
    snprintf(units, sizeof(units), "%lu", (unsigned long)ulong_of(pkg, CKA_GUARDIAN_ISSUED_UNITS));
    STATUS_IS(text, "units_issued", units);
    assert_int_equal(m->C_CloseSession(ro), CKR_OK);

    /* A restored copy (taken before a certificate moved the anchor): reported
     * as behind, not refused; the store as it was is put back. */
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    state_copy("state", "backup");
    open_module();
    d.id = "ST-2"; /* a new device: ST-1 asked again would spend nothing, move no anchor */
    assert_int_equal(req_cert_in(s, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    state_copy("state", "current");
    state_copy("backup", "state");
    open_module();
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "anchor", "behind");
    STATUS_IS(text, "audit_chain", "ok");
    assert_int_equal(req_cert_in(s, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_GUARDIAN_STATE_ROLLBACK);
    assert_int_equal(m->C_Finalize(NULL), CKR_OK);
    state_copy("current", "state");

    /* An altered record: the chain is reported broken before it. */
    {
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open(path("state/guardian.db"), &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, "UPDATE audit SET serial = serial + 1 WHERE seq = 2", NULL, NULL, NULL),
                         SQLITE_OK);
        sqlite3_close(db);
    }
    open_module();
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "audit_chain", "corrupt");
    STATUS_IS(text, "audit_records", "1");
    STATUS_IS(text, "audit_head_seq", "1");
    EVP_PKEY_free(k);
}

/* ---- retiring a superseded release's CA key (CKG_GUARDIAN_REQ_RETIRE_CA) ----------------- */

static CK_RV req_retire(CK_SESSION_HANDLE session, const char *product, CK_ULONG release, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                        {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)},
                        {CKA_GUARDIAN_RELEASE, &release, sizeof(release)}};
    return request(session, CKG_GUARDIAN_REQ_RETIRE_CA, t, 3, out);
}

static void test_retire_ca(void **st)
{
    static char text[8192];
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100];
    char value[1024];
    size_t n = spki_of(k, spki);
    struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "RT-1", 4, spki, n};
    CK_OBJECT_HANDLE old_obj = 0, new_obj = 0, h = 0;
    CK_SESSION_HANDLE ro = CK_INVALID_HANDLE;
    CK_BYTE old_id[16];
    const char *r3 = "guardian:ACME/SENSOR-1/r3:production-ca", *r3_cert = "guardian:ACME/SENSOR-1/r3:production-ca-cert0";
    (void)st;

    /* Release 3 installed: its key is the line's, never retired. */
    assert_int_equal(req_import("good.gpk", &old_obj), CKR_OK);
    package_id_of(old_obj, old_id);
    assert_int_equal(req_retire(s, "SENSOR-1", 3, &h), CKR_GUARDIAN_RELEASE_CURRENT);
    /* Release 4 replaces it; 4 is now the one refused. */
    assert_int_equal(req_import("newer.gpk", &new_obj), CKR_OK);
    assert_int_equal(req_retire(s, "SENSOR-1", 4, &h), CKR_GUARDIAN_RELEASE_CURRENT);
    /* A release, or a product, never imported. */
    assert_int_equal(req_retire(s, "SENSOR-1", 2, &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(req_retire(s, "NO-SUCH", 3, &h), CKR_GUARDIAN_PRODUCT_UNKNOWN);
    /* A read-only session, a request without its release, a release that is no number. */
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
    assert_int_equal(req_retire(ro, "SENSOR-1", 3, &h), CKR_SESSION_READ_ONLY);
    assert_int_equal(m->C_CloseSession(ro), CKR_OK);
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4}, {CKA_GUARDIAN_PRODUCT_ID, "SENSOR-1", 8}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_RETIRE_CA, t, 2, &h), CKR_GUARDIAN_REQUEST_INVALID);
    }
    assert_int_equal(req_retire(s, "SENSOR-1", (CK_ULONG)UINT32_MAX + 1, &h), CKR_GUARDIAN_REQUEST_INVALID);
    /* Nothing of that was recorded or destroyed. */
    assert_int_not_equal(find_one(CKO_PRIVATE_KEY, CKA_LABEL, r3, (CK_ULONG)strlen(r3)), CK_INVALID_HANDLE);
    assert_int_not_equal(find_one(CKO_CERTIFICATE, CKA_LABEL, r3_cert, (CK_ULONG)strlen(r3_cert)), CK_INVALID_HANDLE);
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "records_retire", "0");

    /* Release 3: recorded, then its CA key and certificate destroyed; release 4's stay. */
    assert_int_equal(req_retire(s, "SENSOR-1", 3, &h), CKR_OK);
    {
        char label[64];
        CK_ATTRIBUTE a[] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_VALUE, value, sizeof(value) - 1}};
        assert_int_equal(m->C_GetAttributeValue(s, h, a, 2), CKR_OK);
        label[a[0].ulValueLen] = '\0';
        value[a[1].ulValueLen] = '\0';
        assert_string_equal(label, "guardian-output:retire-ca");
        assert_non_null(strstr(value, "release=3\n"));
        assert_non_null(strstr(value, "recorded_now=yes\n"));
        assert_non_null(strstr(value, "keys_destroyed=1\ncertificates_destroyed=1\n"));
    }
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(find_one(CKO_PRIVATE_KEY, CKA_LABEL, r3, (CK_ULONG)strlen(r3)), CK_INVALID_HANDLE);
    assert_int_equal(find_one(CKO_CERTIFICATE, CKA_LABEL, r3_cert, (CK_ULONG)strlen(r3_cert)), CK_INVALID_HANDLE);
    assert_int_not_equal(ca_key("SENSOR-1", 4), CK_INVALID_HANDLE);
    /* Twice: refused, nothing more recorded. */
    assert_int_equal(req_retire(s, "SENSOR-1", 3, &h), CKR_GUARDIAN_CA_RETIRED);
    /* Derive for release 3 is refused: the token holds no CA key of it now
     * (found missing before the store would say superseded); 4 issues. */
    assert_int_equal(req_cert_in(s, old_id, NULL, &d, NULL, 0, &h), CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY);
    assert_int_equal(req_cert_in(s, NULL, "SENSOR-1", &d, NULL, 0, &h), CKR_OK);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "records_retire", "1");
    STATUS_IS(text, "audit_chain", "ok");
    /* The one RETIRE record: type 10, the IDs, the package, the release; nothing else. */
    {
        sqlite3 *db = NULL;
        sqlite3_stmt *q = NULL;
        assert_int_equal(sqlite3_open_v2(path("state/guardian.db"), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT oem_id, product_id, release_version, serial, length(device_id), "
                                            "authorised_units, package_id, operator FROM audit WHERE type = 10",
                                            -1, &q, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(q, 0), "ACME");
        assert_string_equal((const char *)sqlite3_column_text(q, 1), "SENSOR-1");
        assert_int_equal(sqlite3_column_int64(q, 2), 3);
        assert_int_equal(sqlite3_column_int64(q, 3), 0);
        assert_int_equal(sqlite3_column_int64(q, 4), 0);
        assert_int_equal(sqlite3_column_int64(q, 5), 0);
        assert_int_equal(sqlite3_column_bytes(q, 6), 16);
        assert_memory_equal(sqlite3_column_blob(q, 6), old_id, 16);
        assert_string_equal((const char *)sqlite3_column_text(q, 7), ""); /* no Guardian operator outside service mode */
        assert_int_equal(sqlite3_step(q), SQLITE_DONE);
        sqlite3_finalize(q);
        sqlite3_close(db);
    }
    EVP_PKEY_free(k);
}

/* The status in service mode (docs/configuration.md, backend_pin_file): the
 * Guardian's credentials counted, never named.  A token and configuration of
 * its own, the scrypt cost at its minimum. */
static void write_file(const char *name, const char *text, mode_t mode)
{
    FILE *f;
    unlink(path(name));
    f = fopen(path(name), "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path(name), mode), 0);
}

static int setup_service(void **st)
{
    char text[4 * PATH_MAX];
    (void)st;
    assert_int_equal(test_token_create(&token, "status"), 0);
    assert_int_equal(mkdir(path("state"), 0700), 0);
    write_file("backend.pin", TEST_PIN "\n", 0400);
    write_file("backend-so.pin", TEST_SO_PIN "\n", 0400);
    snprintf(text, sizeof(text),
             "backend = %s\nstate_dir = %s\nbackend_pin_file = %s\nbackend_so_pin_file = %s\npin_kdf_cost = 1024\n",
             test_softhsm_path(), path("state"), path("backend.pin"), path("backend-so.pin"));
    write_file("guardian.conf", text, 0600);
    setenv("GUARDIAN_CONF", path("guardian.conf"), 1);
    unsetenv("GUARDIAN_BACKEND");
    unsetenv("GUARDIAN_STATE_DIR");
    m = test_load_module(test_guardian_path(), NULL);
    assert_non_null(m);
    assert_int_equal(m->C_Initialize(NULL), CKR_OK);
    assert_int_equal(test_find_slot(m, token.label, &slot), CKR_OK);
    assert_int_equal(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    return 0;
}

static int teardown_service(void **st)
{
    int rc = teardown(st);
    unsetenv("GUARDIAN_CONF");
    return rc;
}

static CK_RV login_as(CK_USER_TYPE who, const char *pin)
{
    return m->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
}

static void test_status_service_mode(void **st)
{
    static char text[8192];
    static const char so[] = "so-secret-1", alice[] = "alice:alice-secret", bob[] = "bob:bob-secret-9";
    (void)st;

    assert_int_equal(m->C_InitToken(slot, (CK_UTF8CHAR_PTR)so, strlen(so), (CK_UTF8CHAR_PTR)"x"), CKR_OK);
    assert_int_equal(login_as(CKU_SO, so), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)alice, strlen(alice)), CKR_OK);
    assert_int_equal(m->C_InitPIN(s, (CK_UTF8CHAR_PTR)bob, strlen(bob)), CKR_OK);
    assert_int_equal(m->C_Logout(s), CKR_OK);
    /* bob locked: five consecutive failures, the fifth answered as the lock. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(login_as(CKU_USER, "bob:not-the-secret"), i < 4 ? CKR_PIN_INCORRECT : CKR_PIN_LOCKED);
    assert_int_equal(login_as(CKU_USER, bob), CKR_PIN_LOCKED);

    assert_int_equal(login_as(CKU_USER, alice), CKR_OK);
    status_in(s, text, sizeof(text));
    STATUS_IS(text, "service_mode", "yes");
    STATUS_IS(text, "configuration", path("guardian.conf"));
    STATUS_IS(text, "so", "set");
    STATUS_IS(text, "so_failures", "0");
    STATUS_IS(text, "so_locked", "no");
    STATUS_IS(text, "operators", "2");
    STATUS_IS(text, "operators_locked", "1");
    STATUS_IS(text, "operators_max_failures", "5");
    /* SO set, alice set, bob set, bob locked. */
    STATUS_IS(text, "records_credential", "4");
    STATUS_IS(text, "records_export", "0");
    STATUS_IS(text, "records_other", "0");
    STATUS_IS(text, "audit_chain", "ok");
    /* Counted, never named; no secret, no PIN file's content. */
    assert_null(strstr(text, "alice"));
    assert_null(strstr(text, "bob"));
    assert_null(strstr(text, "secret"));
    assert_null(strstr(text, "=" TEST_PIN "\n"));
    assert_null(strstr(text, "backend.pin"));
}

/* ---- asking again, re-issues (the device index, schema 6) ------------------------------------- */

/* A certificate object's DER into der[4096]; its length. */
static size_t der_of(CK_OBJECT_HANDLE h, unsigned char *der)
{
    CK_ATTRIBUTE a = {CKA_VALUE, der, 4096};
    assert_int_equal(m->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
    return a.ulValueLen;
}

/* Asked again for a device with the key of its certificate, every path gives
 * that certificate back, byte for byte, in a new object, and spends nothing;
 * with another key every path refuses (CKR_GUARDIAN_DEVICE_ALREADY_ISSUED)
 * and spends nothing, unless CKA_GUARDIAN_REISSUE: then a new certificate, a
 * unit, and a REISSUE record naming both serials.  Before and after the
 * journal is folded (a lookup in this process's journal, then in the
 * database). */
static void test_device_cert_asked_again(void **st)
{
    EVP_PKEY *k1 = EVP_EC_gen("P-256"), *k2 = EVP_EC_gen("P-256"), *k3 = EVP_EC_gen("P-256");
    unsigned char spki1[1100], spki2[1100], spki3[1100], der1[4096], der[4096], b[8192];
    size_t n1 = spki_of(k1, spki1), n2 = spki_of(k2, spki2), n3 = spki_of(k3, spki3), len1, len, blen;
    struct device d1 = {CKG_GUARDIAN_DEVICE_ID_TEXT, "RA-1", 4, spki1, n1};
    struct device d2 = {CKG_GUARDIAN_DEVICE_ID_TEXT, "RA-1", 4, spki2, n2};
    struct device d3 = {CKG_GUARDIAN_DEVICE_ID_TEXT, "RA-1", 4, spki3, n3};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE reissue = {CKA_GUARDIAN_REISSUE, &yes, sizeof(yes)};
    CK_OBJECT_HANDLE h1 = 0, h = 0;
    CK_RV status[64];
    char cn[64][32], rec[8192], want[128];
    X509 *x;
    (void)st;

    import_for_certs();
    assert_int_equal(mech_cert_in(s, ca_key("SENSOR-1", 3), &d1, NULL, 0, &h1), CKR_OK);
    len1 = der_of(h1, der1);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), 1);

    /* The same key: the mechanism, the request, a batch. */
    assert_int_equal(mech_cert_in(s, ca_key("SENSOR-1", 3), &d1, NULL, 0, &h), CKR_OK);
    assert_int_not_equal(h, h1);
    len = der_of(h, der);
    assert_int_equal(len, len1);
    assert_memory_equal(der, der1, len1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d1, NULL, 0, &h), CKR_OK);
    len = der_of(h, der);
    assert_int_equal(len, len1);
    assert_memory_equal(der, der1, len1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    blen = batch_of(b, "RA", 1, spki1, n1);
    assert_int_equal(batch_req(pkg_id, NULL, b, blen, &h), CKR_OK);
    assert_int_equal(batch_result(h, status, cn), 1);
    assert_int_equal(status[0], CKR_OK);
    assert_string_equal(cn[0], "RA-1");
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), 1);

    /* Another key: refused three ways, nothing spent (a batch with it and a
     * new device issues neither). */
    cert_both(&d2, NULL, 0, CKR_GUARDIAN_DEVICE_ALREADY_ISSUED, "another key");
    blen = batch_of(b, "NEW", 1, spki2, n2);
    blen += batch_of(b + blen, "RA", 1, spki2, n2);
    assert_int_equal(batch_req(pkg_id, NULL, b, blen, &h), CKR_GUARDIAN_DEVICE_ALREADY_ISSUED);
    assert_int_equal(h, CK_INVALID_HANDLE);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), 1);

    /* Re-issued, by the request, then by the mechanism's template: a new
     * certificate (serial 2, then 3) for the new key each time, a unit each. */
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d2, &reissue, 1, &h), CKR_OK);
    x = cert_of(h);
    assert_cn(x, "RA-1");
    X509_free(x);
    len = der_of(h, der);
    assert_true(len != len1 || memcmp(der, der1, len1) != 0);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    /* (A reservation counts a block of units at once: the units spent are
     * the ISSUE records, checked below once folded.) */
    /* k1 is no longer the device's key: refused now. */
    cert_both(&d1, NULL, 0, CKR_GUARDIAN_DEVICE_ALREADY_ISSUED, "the replaced key");
    assert_int_equal(mech_cert_in(s, ca_key("SENSOR-1", 3), &d3, &reissue, 1, &h), CKR_OK);
    len1 = der_of(h, der1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    /* With the flag and the same key: still the same certificate, no unit. */
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d3, &reissue, 1, &h), CKR_OK);
    len = der_of(h, der);
    assert_int_equal(len, len1);
    assert_memory_equal(der, der1, len1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);

    /* Folded (the module finalized, giving back what it reserved and did not
     * use, and opened again): the ISSUE records of serials 1..3 and two
     * REISSUE records, 2 replacing 1 and 3 replacing 2; 3 units used. */
    records_of("SENSOR-1", rec, sizeof(rec));
    assert_non_null(strstr(rec, "\n3 1 52412D31 0 0\n"));
    assert_non_null(strstr(rec, "\n3 2 52412D31 0 0\n9 2 52412D31 3 1\n"));
    assert_non_null(strstr(rec, "3 3 52412D31 0 0\n9 3 52412D31 3 2\n"));
    snprintf(want, sizeof(want), "\n3 4 ");
    assert_null(strstr(rec, want));
    /* From the database now: the same answers. */
    pkg_obj = package_object("SENSOR-1");
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d3, NULL, 0, &h), CKR_OK);
    len = der_of(h, der);
    assert_int_equal(len, len1);
    assert_memory_equal(der, der1, len1);
    assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d2, NULL, 0, &h), CKR_GUARDIAN_DEVICE_ALREADY_ISSUED);
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), 3);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(k3);
}

/* ---- part outcomes (CKG_GUARDIAN_REQ_PART_OUTCOME) ---------------------------------------------- */

/* Report `outcome` for ACME's `product` device `id`; the CKR code, and the
 * output's text in `text` (when CKR_OK). */
static CK_RV outcome_req(const char *product, const char *id, CK_ULONG outcome, char *text, size_t cap)
{
    CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                        {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)},
                        {CKA_GUARDIAN_DEVICE_ID, (void *)id, (CK_ULONG)strlen(id)},
                        {CKA_GUARDIAN_PART_OUTCOME, &outcome, sizeof(outcome)}};
    CK_ATTRIBUTE v = {CKA_VALUE, text, (CK_ULONG)cap - 1};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = request(s, CKG_GUARDIAN_REQ_PART_OUTCOME, t, 4, &h);
    if (rv == CKR_OK) {
        assert_int_equal(m->C_GetAttributeValue(s, h, &v, 1), CKR_OK);
        text[v.ulValueLen] = '\0';
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    return rv;
}

/* A part's outcome is recorded once per change, only for a device this
 * Guardian issued a certificate to, spends nothing, and is in the export. */
static void test_part_outcome(void **st)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    unsigned char spki[1100];
    size_t n = spki_of(k, spki);
    struct device d = {CKG_GUARDIAN_DEVICE_ID_TEXT, "PO-1", 4, spki, n};
    CK_ULONG bad = 3, fmt = 7, issued;
    CK_OBJECT_HANDLE h = 0;
    char text[256], rec[8192];
    (void)st;

    import_for_certs();
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h), CKR_OK);
    d.id = "PO-2";
    assert_int_equal(req_cert_in(s, pkg_id, NULL, &d, NULL, 0, &h), CKR_OK);
    issued = ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS);

    /* Refused: a device never issued, another product's, a product not
     * installed, an outcome that is none, a bad ID, a missing attribute. */
    assert_int_equal(outcome_req("SENSOR-1", "PO-9", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)),
                     CKR_GUARDIAN_DEVICE_NOT_ISSUED);
    assert_int_equal(outcome_req("SMALL", "PO-1", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)),
                     CKR_GUARDIAN_DEVICE_NOT_ISSUED);
    assert_int_equal(outcome_req("NOPE", "PO-1", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)),
                     CKR_GUARDIAN_PRODUCT_UNKNOWN);
    assert_int_equal(outcome_req("SENSOR-1", "PO-1", bad, text, sizeof(text)), CKR_GUARDIAN_REQUEST_INVALID);
    assert_int_equal(outcome_req("SENSOR-1", "PO 1", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)),
                     CKR_GUARDIAN_DEVICE_ID_INVALID);
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, "ACME", 4},
                            {CKA_GUARDIAN_PRODUCT_ID, "SENSOR-1", 8},
                            {CKA_GUARDIAN_DEVICE_ID, "PO-1", 4},
                            {CKA_GUARDIAN_DEVICE_ID_FORMAT, &fmt, sizeof(fmt)}};
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_PART_OUTCOME, t, 3, &h), CKR_GUARDIAN_REQUEST_INVALID);
        t[3].type = CKA_GUARDIAN_PART_OUTCOME;
        t[3].pValue = &bad;
        bad = CKG_GUARDIAN_OUTCOME_PROGRAMMED;
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_PART_OUTCOME, t, 4, &h), CKR_OK);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    /* Reported (the certificate still in this process's journal: the
     * request folds it first); again: nothing new; scrapped after programmed:
     * recorded; programmed after scrapped: refused. */
    assert_int_equal(outcome_req("SENSOR-1", "PO-1", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)), CKR_OK);
    assert_string_equal(text, "serial=1 outcome=programmed recorded=no\n"); /* the one just above */
    assert_int_equal(outcome_req("SENSOR-1", "PO-2", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)), CKR_OK);
    assert_string_equal(text, "serial=2 outcome=programmed recorded=yes\n");
    assert_int_equal(outcome_req("SENSOR-1", "PO-2", CKG_GUARDIAN_OUTCOME_SCRAPPED, text, sizeof(text)), CKR_OK);
    assert_string_equal(text, "serial=2 outcome=scrapped recorded=yes\n");
    assert_int_equal(outcome_req("SENSOR-1", "PO-2", CKG_GUARDIAN_OUTCOME_SCRAPPED, text, sizeof(text)), CKR_OK);
    assert_string_equal(text, "serial=2 outcome=scrapped recorded=no\n");
    assert_int_equal(outcome_req("SENSOR-1", "PO-2", CKG_GUARDIAN_OUTCOME_PROGRAMMED, text, sizeof(text)),
                     CKR_GUARDIAN_PART_SCRAPPED);
    /* Units stay spent: none given back, none taken. */
    assert_int_equal(ulong_of(pkg_obj, CKA_GUARDIAN_ISSUED_UNITS), issued);

    /* The records: three OUTCOMEs (serial, device, release 3, the outcome). */
    records_of("SENSOR-1", rec, sizeof(rec));
    assert_non_null(strstr(rec, "8 1 504F2D31 3 1\n8 2 504F2D32 3 1\n8 2 504F2D32 3 2\n"));
    assert_null(strstr(strstr(rec, "8 2 504F2D32 3 2\n") + 1, "\n8 "));
    /* And the export, which the OEM reads. */
    {
        CK_ATTRIBUTE v = {CKA_VALUE, NULL, 0};
        unsigned char *report;
        const char *p;
        int outcomes = 0;
        assert_int_equal(request(s, CKG_GUARDIAN_REQ_AUDIT_EXPORT, NULL, 0, &h), CKR_OK);
        assert_int_equal(m->C_GetAttributeValue(s, h, &v, 1), CKR_OK);
        report = malloc(v.ulValueLen + 1);
        assert_non_null(report);
        v.pValue = report;
        assert_int_equal(m->C_GetAttributeValue(s, h, &v, 1), CKR_OK);
        report[v.ulValueLen] = '\0';
        for (p = (const char *)report; (p = strstr(p, " OUTCOME ")) != NULL; p++)
            outcomes++;
        assert_int_equal(outcomes, 3);
        assert_non_null(strstr((const char *)report, " OUTCOME 1"));
        free(report);
        assert_int_equal(m->C_DestroyObject(s, h), CKR_OK);
    }
    EVP_PKEY_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_import, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_sessions_and_attributes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_cert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_cert_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_cert_quota_and_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_certs_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_certs_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_cert_asked_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_part_outcome, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retire_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_service_mode, setup_service, teardown_service),
    };
    return cmocka_run_group_tests_name("integration: Guardian requests = mechanisms", tests, NULL, NULL);
}
