/*
 * issue_cert.c — the Guardian's production-line operations from C, through
 * standard PKCS#11 calls only: every Guardian operation is a C_CreateObject of
 * a CKO_GUARDIAN_REQUEST, and the counters are attributes of the product's
 * CKO_GUARDIAN_PACKAGE object.  No vendor mechanism is used, so this works
 * through p11-kit's RPC (p11-kit-client.so) exactly as on guardian-pkcs11.so.
 *
 *   issue_cert MODULE TOKEN import PACKAGE.gpk
 *   issue_cert MODULE TOKEN issue PRODUCT DEVICE_ID DEVICE_SPKI.der OUT.der
 *   issue_cert MODULE TOKEN remaining OEM/PRODUCT
 *   issue_cert MODULE TOKEN audit OUT [OEM/PRODUCT]
 *
 * PRODUCT is OEM/PRODUCT (the product's current release) or a package ID, 32
 * hex digits (one release).  The user PIN is read from GUARDIAN_PIN (never
 * from the command line, where `ps` shows it); in the service mode it is
 * "NAME:SECRET".  Exit status: 0 done, 1 refused (the CKR name is printed),
 * 2 usage.  Build: see docs/vendor-interface.md ("Using the Guardian from C,
 * Python and Go").
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h> /* any pkcs11.h: the vendor header needs its types first */
#include <guardian/guardian-pkcs11.h>

#define MAX_FILE (1024 * 1024) /* a package is at most 1 MiB (docs/package-format.md) */

static CK_FUNCTION_LIST *p11;

/* The names of the return values this program can meet: the standard ones a
 * login, a session or a request gives, and every Guardian one. */
#define N(x) {x, #x}
static const struct {
    CK_RV rv;
    const char *name;
} names[] = {
    N(CKR_OK), N(CKR_HOST_MEMORY), N(CKR_GENERAL_ERROR), N(CKR_FUNCTION_FAILED), N(CKR_ARGUMENTS_BAD),
    N(CKR_ATTRIBUTE_TYPE_INVALID), N(CKR_ATTRIBUTE_VALUE_INVALID), N(CKR_DEVICE_ERROR), N(CKR_DEVICE_REMOVED),
    N(CKR_ACTION_PROHIBITED), N(CKR_OBJECT_HANDLE_INVALID), N(CKR_PIN_INCORRECT), N(CKR_PIN_LOCKED),
    N(CKR_SESSION_READ_ONLY), N(CKR_TEMPLATE_INCOMPLETE), N(CKR_TEMPLATE_INCONSISTENT),
    N(CKR_TOKEN_NOT_PRESENT), N(CKR_USER_NOT_LOGGED_IN), N(CKR_USER_PIN_NOT_INITIALIZED),
    N(CKR_WRAPPED_KEY_INVALID), N(CKR_WRAPPED_KEY_LEN_RANGE), N(CKR_CRYPTOKI_NOT_INITIALIZED),
    N(CKR_GUARDIAN_CONFIG_INVALID), N(CKR_GUARDIAN_BACKEND_LOAD_FAILED), N(CKR_GUARDIAN_BACKEND_IS_SELF),
    N(CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID), N(CKR_GUARDIAN_WRONG_GUARDIAN), N(CKR_GUARDIAN_UNTRUSTED_SIGNER),
    N(CKR_GUARDIAN_PACKAGE_EXPIRED), N(CKR_GUARDIAN_PACKAGE_REPLAYED), N(CKR_GUARDIAN_PACKAGE_ROLLBACK),
    N(CKR_GUARDIAN_OEM_NOT_ENROLLED), N(CKR_GUARDIAN_QUOTA_EXHAUSTED), N(CKR_GUARDIAN_PRODUCT_UNKNOWN),
    N(CKR_GUARDIAN_DEVICE_KEY_INVALID), N(CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED),
    N(CKR_GUARDIAN_DEVICE_KEY_IS_CA_KEY), N(CKR_GUARDIAN_DEVICE_ID_INVALID),
    N(CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY), N(CKR_GUARDIAN_PACKAGE_SUPERSEDED), N(CKR_GUARDIAN_STORE_FAILED),
    N(CKR_GUARDIAN_AUDIT_CORRUPT), N(CKR_GUARDIAN_STATE_ROLLBACK), N(CKR_GUARDIAN_CLOCK_BEHIND),
    N(CKR_GUARDIAN_STATE_UNSAFE), N(CKR_GUARDIAN_REQUEST_INVALID), N(CKR_GUARDIAN_ROOT_NOT_CA),
};

static const char *ckr_name(CK_RV rv)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].rv == rv)
            return names[i].name;
    return GUARDIAN_IS_VENDOR_VALUE(CKR_GUARDIAN_BASE, rv) ? "CKR_GUARDIAN_(newer than this program)" : "CKR_?";
}

/* Every call goes through CALL: on failure it prints which call failed and
 * its CKR name, and jumps to the clean-up at `out` with rv set. */
#define CALL(what, call)                                                                                      \
    do {                                                                                                      \
        rv = (call);                                                                                          \
        if (rv != CKR_OK) {                                                                                   \
            fprintf(stderr, "issue_cert: %s: %s (0x%08lx)\n", what, ckr_name(rv), (unsigned long)rv);        \
            goto out;                                                                                         \
        }                                                                                                     \
    } while (0)

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = malloc(MAX_FILE + 1);
    if (f == NULL || buf == NULL) {
        perror(path);
        free(buf);
        if (f != NULL)
            fclose(f);
        return NULL;
    }
    *len = fread(buf, 1, MAX_FILE + 1, f);
    fclose(f);
    if (*len == 0 || *len > MAX_FILE) {
        fprintf(stderr, "issue_cert: %s: empty or larger than %d bytes\n", path, MAX_FILE);
        free(buf);
        return NULL;
    }
    return buf;
}

static int write_file(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

/* The slot whose token has this label (SoftHSM, for one, adds an empty slot). */
static CK_RV find_token(const char *label, CK_SLOT_ID *slot)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_TOKEN_INFO ti;
    CK_RV rv = p11->C_GetSlotList(CK_TRUE, slots, &n);
    size_t len = strlen(label);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        /* the label is blank-padded to 32 bytes, not NUL-terminated */
        if (len <= sizeof(ti.label) && memcmp(ti.label, label, len) == 0 &&
            (len == sizeof(ti.label) || ti.label[len] == ' ')) {
            *slot = slots[i];
            return CKR_OK;
        }
    }
    return rv == CKR_OK ? CKR_TOKEN_NOT_PRESENT : rv;
}

/* CKA_VALUE of an object, malloc'd: the usual two calls, length then value. */
static CK_RV read_value(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, unsigned char **p, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
    CK_RV rv = p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if ((a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1)) == NULL)
        return CKR_HOST_MEMORY;
    rv = p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) {
        free(a.pValue);
        return rv;
    }
    *p = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

/* "OEM/PRODUCT" into two attributes (pointing into `buf`), or 32 hex digits
 * into CKA_GUARDIAN_PACKAGE_ID (the 16 bytes in `id`).  Returns the number of
 * attributes written to t[], 0 if `arg` is neither. */
static CK_ULONG product_attrs(const char *arg, char *buf, size_t bufsize, CK_BYTE id[16], CK_ATTRIBUTE t[2])
{
    char *slash;
    if (strlen(arg) == 32 && strspn(arg, "0123456789abcdefABCDEF") == 32) {
        for (int i = 0; i < 16; i++)
            sscanf(arg + 2 * i, "%2hhx", &id[i]);
        t[0] = (CK_ATTRIBUTE){CKA_GUARDIAN_PACKAGE_ID, id, 16};
        return 1;
    }
    if (strlen(arg) >= bufsize || (slash = strchr(strcpy(buf, arg), '/')) == NULL || slash == buf || !slash[1])
        return 0;
    *slash = '\0'; /* vendor string attributes are UTF-8 bytes, no NUL */
    t[0] = (CK_ATTRIBUTE){CKA_GUARDIAN_OEM_ID, buf, (CK_ULONG)strlen(buf)};
    t[1] = (CK_ATTRIBUTE){CKA_GUARDIAN_PRODUCT_ID, slash + 1, (CK_ULONG)strlen(slash + 1)};
    return 2;
}

/* Print a package object's counters.  Vendor CK_ULONG attributes are read
 * into a CK_ULONG, like any standard one. */
static CK_RV print_package(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pkg, const char *what)
{
    char oem[65] = "", product[65] = "";
    CK_BYTE id[16];
    CK_ULONG release = 0, authorised = 0, issued = 0, remaining = 0;
    CK_ATTRIBUTE a[] = {
        {CKA_GUARDIAN_OEM_ID, oem, sizeof(oem) - 1},
        {CKA_GUARDIAN_PRODUCT_ID, product, sizeof(product) - 1},
        {CKA_GUARDIAN_PACKAGE_ID, id, sizeof(id)},
        {CKA_GUARDIAN_RELEASE, &release, sizeof(release)},
        {CKA_GUARDIAN_AUTHORISED_UNITS, &authorised, sizeof(authorised)},
        {CKA_GUARDIAN_ISSUED_UNITS, &issued, sizeof(issued)},
        {CKA_GUARDIAN_REMAINING_UNITS, &remaining, sizeof(remaining)},
    };
    CK_RV rv = p11->C_GetAttributeValue(s, pkg, a, sizeof(a) / sizeof(a[0]));
    if (rv != CKR_OK)
        return rv;
    oem[a[0].ulValueLen] = product[a[1].ulValueLen] = '\0';
    printf("%s %s/%s release %lu package ", what, oem, product, release);
    for (int i = 0; i < 16; i++)
        printf("%02x", id[i]);
    printf(": %lu authorised, %lu issued, %lu remaining\n", authorised, issued, remaining);
    return CKR_OK;
}

int main(int argc, char **argv)
{
    CK_RV rv = CKR_OK;
    int status = 1;
    void *dl = NULL;
    CK_C_GetFunctionList get_list;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS request_class = CKO_GUARDIAN_REQUEST, package_class = CKO_GUARDIAN_PACKAGE;
    CK_ULONG request; /* a vendor CK_ULONG attribute: sizeof(CK_ULONG) bytes, native order */
    CK_ATTRIBUTE t[8];
    CK_ULONG n = 0;
    unsigned char *in = NULL, *spki = NULL, *value = NULL;
    size_t in_len = 0, spki_len = 0;
    CK_ULONG value_len = 0, found = 0;
    char names_buf[160];
    CK_BYTE package_id[16];
    const char *pin = getenv("GUARDIAN_PIN"), *cmd = argc > 3 ? argv[3] : "";
    int ok_args = (!strcmp(cmd, "import") && argc == 5) || (!strcmp(cmd, "issue") && argc == 8) ||
                  (!strcmp(cmd, "remaining") && argc == 5) || (!strcmp(cmd, "audit") && (argc == 5 || argc == 6));

    if (!ok_args || pin == NULL) {
        fprintf(stderr, "usage: GUARDIAN_PIN=... %s MODULE TOKEN import PACKAGE | issue PRODUCT DEVICE_ID "
                        "SPKI.der OUT.der | remaining OEM/PRODUCT | audit OUT [OEM/PRODUCT]\n",
                argv[0]);
        return 2;
    }

    /* Load the module (guardian-pkcs11.so, or p11-kit-client.so in front of
     * the Guardian service) and log in as the user. */
    if ((dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) == NULL) {
        fprintf(stderr, "issue_cert: %s\n", dlerror());
        return 1;
    }
    if ((get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL) {
        fprintf(stderr, "issue_cert: %s is not a PKCS#11 module\n", argv[1]);
        dlclose(dl);
        return 1;
    }
    CALL("C_GetFunctionList", get_list(&p11));
    CALL("C_Initialize", p11->C_Initialize(NULL));
    CALL("find the token", find_token(argv[2], &slot));
    /* Read-write: the import needs it (the other requests would do with R/O). */
    CALL("C_OpenSession", p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    CALL("C_Login", p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)));

    /* Every request starts with the same two attributes. */
    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, &request_class, sizeof(request_class)};
    t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_REQUEST, &request, sizeof(request)};

    if (!strcmp(cmd, "import")) {
        /* (a) Import a package: CKA_VALUE = the file's bytes.  The module
         * finds the Guardian's key itself; the result is the package object. */
        request = CKG_GUARDIAN_REQ_IMPORT;
        if ((in = read_file(argv[4], &in_len)) == NULL)
            goto out;
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE, in, (CK_ULONG)in_len};
        CALL("C_CreateObject (import)", p11->C_CreateObject(s, t, n, &obj));
        CALL("C_GetAttributeValue (package)", print_package(s, obj, "imported"));
    } else if (!strcmp(cmd, "issue")) {
        /* (b) Issue a device certificate: the product (or one package), the
         * device's ID (text format, the default) and its public key. */
        request = CKG_GUARDIAN_REQ_DEVICE_CERT;
        if ((found = product_attrs(argv[4], names_buf, sizeof(names_buf), package_id, &t[n])) == 0) {
            fprintf(stderr, "issue_cert: %s is neither OEM/PRODUCT nor a 32-hex-digit package ID\n", argv[4]);
            status = 2;
            goto out;
        }
        n += found;
        if ((spki = read_file(argv[6], &spki_len)) == NULL)
            goto out;
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_ID, argv[5], (CK_ULONG)strlen(argv[5])};
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_DEVICE_SPKI, spki, (CK_ULONG)spki_len};
        CALL("C_CreateObject (device certificate)", p11->C_CreateObject(s, t, n, &obj));
        /* The result is a CKO_CERTIFICATE session object: read its DER, then
         * destroy it (a production run makes many). */
        CALL("C_GetAttributeValue (CKA_VALUE)", read_value(s, obj, &value, &value_len));
        if (write_file(argv[7], value, value_len) != 0)
            goto out;
        CALL("C_DestroyObject", p11->C_DestroyObject(s, obj));
        printf("issued %s for device %s: %s (%lu bytes)\n", argv[4], argv[5], argv[7], value_len);
    } else if (!strcmp(cmd, "remaining")) {
        /* Not a request: find the product's package object (one per product,
         * its current release) and read its live counters. */
        if (product_attrs(argv[4], names_buf, sizeof(names_buf), package_id, &t[1]) != 2) {
            fprintf(stderr, "issue_cert: %s is not OEM/PRODUCT\n", argv[4]);
            status = 2;
            goto out;
        }
        t[0] = (CK_ATTRIBUTE){CKA_CLASS, &package_class, sizeof(package_class)};
        CALL("C_FindObjectsInit", p11->C_FindObjectsInit(s, t, 3));
        rv = p11->C_FindObjects(s, &obj, 1, &found);
        p11->C_FindObjectsFinal(s);
        CALL("C_FindObjects", rv);
        CALL("find the package object", found == 1 ? CKR_OK : CKR_GUARDIAN_PRODUCT_UNKNOWN);
        CALL("C_GetAttributeValue (package)", print_package(s, obj, "product"));
    } else {
        /* (c) Export the signed audit report, optionally for one product: a
         * session CKO_DATA object whose CKA_VALUE is the report. */
        request = CKG_GUARDIAN_REQ_AUDIT_EXPORT;
        if (argc == 6) {
            if ((found = product_attrs(argv[5], names_buf, sizeof(names_buf), package_id, &t[n])) != 2) {
                fprintf(stderr, "issue_cert: %s is not OEM/PRODUCT\n", argv[5]);
                status = 2;
                goto out;
            }
            n += found;
        }
        CALL("C_CreateObject (audit export)", p11->C_CreateObject(s, t, n, &obj));
        CALL("C_GetAttributeValue (CKA_VALUE)", read_value(s, obj, &value, &value_len));
        if (write_file(argv[4], value, value_len) != 0)
            goto out;
        CALL("C_DestroyObject", p11->C_DestroyObject(s, obj));
        printf("audit report: %s (%lu bytes)\n", argv[4], value_len);
    }
    status = 0;

out:
    free(in);
    free(spki);
    free(value);
    if (p11 != NULL) {
        if (s != CK_INVALID_HANDLE)
            p11->C_CloseSession(s); /* logs out too */
        p11->C_Finalize(NULL);
    }
    dlclose(dl);
    return status;
}
