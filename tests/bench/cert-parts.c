/*
 * cert-parts.c — where one device certificate's time goes, step by step.
 *
 *   cert-parts --backend <libsofthsm2.so> --token-label L --pin P
 *              --state-dir DIR --oem OEM --product PRODUCT [--rounds N] [--slice-ms MS]
 *
 * The token and the state directory are the ones tests/bench/cert-bench.sh
 * made (an imported package, its production CA key in the token).  The steps
 * are those of mechs/derive_device_cert.c, called here directly (the
 * module's own sources: cert_builder.c, store/), and the backend is SoftHSM
 * loaded alone, without the module:
 *
 *   device key check    guardian_device_key_check (strict DER + on-curve test)
 *   TBS fill            guardian_tbs_build (template filling, SKI = SHA-1 of the key)
 *   SHA-256 of the TBS  EVP_Digest
 *   cert finish         guardian_cert_finish (signature appended, wrapped)
 *   CA key attributes   C_GetAttributeValue(CKA_CLASS, CKA_ID, CKA_LABEL) of the CA
 *                       key: the module reads them until the key is proven (then no longer)
 *   ECDSA sign          C_SignInit + C_Sign (CKM_ECDSA) with the CA key, in SoftHSM
 *   store issue         guardian_store_issue (the ISSUE record + certificate: a journal append)
 *   device lookup       guardian_store_device_claim + _unclaim of a new device ID (schema 6)
 *   store reserve / 64  guardian_store_reserve_block(64) (FULL commit), per unit
 *   and for comparison:
 *   OpenSSL X509 build  the same TBSCertificate with OpenSSL's X509 API (d2i_PUBKEY,
 *                       X509_set_*, the same extensions, i2d_re_X509_tbs)
 *   d2i_PUBKEY          the device key as an EVP_PKEY, alone
 *
 * Each step runs in slices of --slice-ms (default 100 ms); the steps take
 * turns, --rounds times (default 7), and the median of a step's slices is
 * reported (with min and max) in microseconds per operation.  The store steps
 * write real records into DIR's store (units of the package are used up).
 * A benchmark, not a test.  Exit status 0, 1 on error, 2 on bad usage.
 */
#include <dlfcn.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11-kit/pkcs11.h>

#include "cert_builder.h"
#include "store.h"
/* after the PKCS#11 header */
#include "guardian/guardian-pkcs11.h"

#define POOL 128
#define MAX_ROUNDS 64
#define STORE_BLOCK 64

struct ctx {
    CK_FUNCTION_LIST *p11;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE ca;
    struct guardian_store *st;
    struct guardian_cert_issuer is;
    char oem[GUARDIAN_ID_MAX + 1], product[GUARDIAN_ID_MAX + 1];
    uint8_t spki[POOL][128];
    size_t spki_len[POOL];
    struct guardian_device_key keys[POOL];
    unsigned tag;
    unsigned long n; /* operations so far, all steps: device IDs, pool index */
    uint8_t buf[GUARDIAN_CERT_BUF];
    size_t tbs_len, cert_len;
    uint8_t hash[32], sig[132];
    CK_ULONG sig_len;
    uint64_t next_serial, end_serial; /* reserved, unused serials */
    double reserve_s;                 /* time in reserve_block during the current slice */
    unsigned long reserved;           /* units reserved during the current slice */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

_Noreturn static void die(const char *what)
{
    fprintf(stderr, "cert-parts: %s\n", what);
    exit(1);
}

static void p11_check(CK_RV rv, const char *what)
{
    if (rv != CKR_OK) {
        fprintf(stderr, "cert-parts: %s failed: CKR 0x%08lx\n", what, (unsigned long)rv);
        exit(1);
    }
}

static void device(struct ctx *c, size_t k, char id[40], struct guardian_device *d)
{
    snprintf(id, 40, "P%x-%lu", c->tag, c->n);
    d->id = (const uint8_t *)id;
    d->id_len = strlen(id);
    d->id_text = id;
    d->key = &c->keys[k];
}

/* ---- the steps: one operation each --------------------------------------------------- */

static void step_key_check(struct ctx *c)
{
    size_t k = c->n % POOL;
    const char *why = NULL;
    if (guardian_device_key_check(c->spki[k], c->spki_len[k], &c->keys[k], &why) != GUARDIAN_DEVKEY_OK)
        die("device key check failed");
}

static void step_tbs(struct ctx *c)
{
    struct guardian_device d;
    char id[40];
    uint8_t ski[20];

    device(c, c->n % POOL, id, &d);
    c->tbs_len = guardian_tbs_build(&c->is, 1000000 + c->n, (int64_t)time(NULL), &d, c->buf, sizeof(c->buf), ski);
    if (c->tbs_len == 0)
        die("guardian_tbs_build failed");
}

static void step_sha256(struct ctx *c)
{
    unsigned int hl = 0;
    if (EVP_Digest(c->buf, c->tbs_len, c->hash, &hl, c->is.md, NULL) != 1)
        die("EVP_Digest failed");
}

static void step_finish(struct ctx *c)
{
    /* the TBS stays in buf[0..tbs_len): finish rewrites only what follows */
    c->cert_len = guardian_cert_finish(&c->is, c->buf, sizeof(c->buf), c->tbs_len, c->sig, c->sig_len);
    if (c->cert_len == 0)
        die("guardian_cert_finish failed");
}

static void step_ca_attrs(struct ctx *c)
{
    CK_OBJECT_CLASS cls = 0;
    CK_BYTE id[17];
    char label[200];
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id, sizeof(id)}, {CKA_LABEL, label, sizeof(label)}};
    p11_check(c->p11->C_GetAttributeValue(c->session, c->ca, a, 3), "C_GetAttributeValue (CA key)");
}

static void step_sign(struct ctx *c)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    c->sig_len = sizeof(c->sig);
    p11_check(c->p11->C_SignInit(c->session, &m, c->ca), "C_SignInit");
    p11_check(c->p11->C_Sign(c->session, c->hash, 32, c->sig, &c->sig_len), "C_Sign");
}

/* One issue; a block reservation when the reserved serials run out, timed apart. */
static void step_issue(struct ctx *c)
{
    char id[40];
    CK_RV rv;

    if (c->next_serial == c->end_serial) {
        uint64_t first = 0, got = 0;
        double t0 = now_s();
        rv = guardian_store_reserve_block(c->st, c->oem, c->product, c->is.package_id, (int64_t)time(NULL),
                                          STORE_BLOCK, &first, &got);
        c->reserve_s += now_s() - t0;
        p11_check(rv, "guardian_store_reserve_block");
        c->reserved += got;
        c->next_serial = first;
        c->end_serial = first + got;
    }
    snprintf(id, sizeof(id), "P%x-%lu", c->tag, c->n);
    rv = guardian_store_issue(c->st, c->oem, c->product, c->next_serial, (const uint8_t *)id, strlen(id), c->buf,
                              c->cert_len);
    p11_check(rv, "guardian_store_issue");
    c->next_serial++;
}

/* The device index's lookup of a new device ID, as issue_certificate makes it
 * before every certificate: claimed (this process's journal, then the
 * database through the read-only connection), not found, unclaimed. */
static void step_lookup(struct ctx *c)
{
    struct guardian_device_cert d;
    char id[40];
    bool found = true;

    snprintf(id, sizeof(id), "Q%x-%lu", c->tag, c->n);
    p11_check(guardian_store_device_claim(c->st, c->oem, c->product, (const uint8_t *)id, strlen(id), &d, &found),
              "guardian_store_device_claim");
    if (found)
        die("a new device ID was found in the device index");
    guardian_store_device_unclaim(c->st, c->oem, c->product, (const uint8_t *)id, strlen(id));
    guardian_store_device_cert_free(&d);
}

/* The same TBSCertificate through OpenSSL's X509 API, as a straightforward
 * implementation would make it (the device key through d2i_PUBKEY). */
static void step_openssl(struct ctx *c)
{
    size_t k = c->n % POOL;
    const unsigned char *p = c->spki[k];
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)c->spki_len[k]);
    X509 *x = X509_new();
    X509_NAME *subj = X509_NAME_new();
    const unsigned char *ip = c->is.issuer_name;
    X509_NAME *iss = d2i_X509_NAME(NULL, &ip, (long)c->is.issuer_name_len);
    ASN1_INTEGER *sn = ASN1_INTEGER_new();
    BIGNUM *bn = BN_new();
    uint8_t serial[GUARDIAN_CERT_SERIAL_LEN], ski[SHA_DIGEST_LENGTH];
    ASN1_OCTET_STRING *ski_os = ASN1_OCTET_STRING_new();
    X509_EXTENSION *ext;
    char id[40];
    unsigned char *tbs = NULL;
    int ok;

    snprintf(id, sizeof(id), "P%x-%lu", c->tag, c->n);
    guardian_cert_serial(c->is.package_id, 1000000 + c->n, serial);
    ok = pk != NULL && x != NULL && subj != NULL && iss != NULL && sn != NULL && bn != NULL && ski_os != NULL &&
         X509_set_version(x, 2) && BN_bin2bn(serial, sizeof(serial), bn) != NULL && BN_to_ASN1_INTEGER(bn, sn) &&
         X509_set_serialNumber(x, sn) && X509_set_issuer_name(x, iss) &&
         X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
         X509_gmtime_adj(X509_getm_notAfter(x), (long)c->is.validity_days * 86400) != NULL &&
         X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)id, -1, -1, 0) &&
         X509_NAME_add_entry_by_txt(subj, "OU", MBSTRING_UTF8, (const unsigned char *)c->product, -1, -1, 0) &&
         X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_UTF8, (const unsigned char *)c->oem, -1, -1, 0) &&
         X509_set_subject_name(x, subj) && X509_set_pubkey(x, pk);
    /* the fixed extensions (BC, KU, EKU, AKI), decoded one by one from the issuer's DER */
    for (const unsigned char *e = c->is.fixed_ext, *end = e + c->is.fixed_ext_len; ok && e < end;) {
        ext = d2i_X509_EXTENSION(NULL, &e, (long)(end - e));
        ok = ext != NULL && X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    /* SKI: SHA-1 of the key bits, as the profile says */
    if (ok) {
        SHA1(c->keys[k].key, c->keys[k].key_len, ski);
        ok = ASN1_OCTET_STRING_set(ski_os, ski, sizeof(ski)) &&
             X509_add1_ext_i2d(x, NID_subject_key_identifier, ski_os, 0, X509V3_ADD_DEFAULT) == 1;
    }
    /* (the Guardian's own device-identity extension is left out: one more
     * X509_add_ext of an opaque OCTET STRING) */
    /* The TBS signature algorithm, which X509_sign would set: ecdsa-with-SHA256. */
    ok = ok && X509_ALGOR_set0((X509_ALGOR *)X509_get0_tbs_sigalg(x), OBJ_nid2obj(NID_ecdsa_with_SHA256),
                               V_ASN1_UNDEF, NULL) == 1;
    ok = ok && i2d_re_X509_tbs(x, &tbs) > 0;
    OPENSSL_free(tbs);
    ASN1_OCTET_STRING_free(ski_os);
    BN_free(bn);
    ASN1_INTEGER_free(sn);
    X509_NAME_free(iss);
    X509_NAME_free(subj);
    X509_free(x);
    EVP_PKEY_free(pk);
    if (!ok) {
        ERR_print_errors_fp(stderr);
        die("OpenSSL X509 build failed");
    }
}

static void step_d2i_pubkey(struct ctx *c)
{
    size_t k = c->n % POOL;
    const unsigned char *p = c->spki[k];
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)c->spki_len[k]);
    if (pk == NULL)
        die("d2i_PUBKEY failed");
    EVP_PKEY_free(pk);
}

static const struct step {
    const char *name;
    void (*fn)(struct ctx *c);
    bool in_guardian; /* part of the Guardian's own path (summed) */
} steps[] = {
    {"device key check (DER + on-curve)", step_key_check, true},
    {"TBS fill (template, SKI SHA-1)", step_tbs, true},
    {"SHA-256 of the TBS", step_sha256, true},
    {"certificate finish (sig, wrap)", step_finish, true},
    {"CA key C_GetAttributeValue (3 attrs)", step_ca_attrs, true},
    {"ECDSA P-256 C_SignInit+C_Sign (SoftHSM)", step_sign, true},
    {"guardian_store_issue (journal append)", step_issue, true},
    {"device index lookup (claim, new device)", step_lookup, true},
    {"OpenSSL X509 API: same TBS (compare)", step_openssl, false},
    {"d2i_PUBKEY of the device key (compare)", step_d2i_pubkey, false},
};
#define N_STEPS (sizeof(steps) / sizeof(steps[0]))

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cert-parts --backend <libsofthsm2.so> --token-label L --pin P --state-dir DIR\n"
               "                  --oem OEM --product PRODUCT [--rounds N] [--slice-ms MS]\n");
}

int main(int argc, char **argv)
{
    static struct ctx c;
    static const struct option longopts[] = {
        {"backend", required_argument, NULL, 'b'}, {"token-label", required_argument, NULL, 't'},
        {"pin", required_argument, NULL, 'p'},     {"state-dir", required_argument, NULL, 's'},
        {"oem", required_argument, NULL, 'o'},     {"product", required_argument, NULL, 'r'},
        {"rounds", required_argument, NULL, 'n'},  {"slice-ms", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *backend = NULL, *label = NULL, *pin = NULL, *dir = NULL, *oem = NULL, *product = NULL;
    int rounds = 7, opt;
    double slice = 0.1;
    double us[N_STEPS][MAX_ROUNDS], reserve_us[MAX_ROUNDS];
    void *dl;
    CK_C_GetFunctionList get_list = NULL;
    CK_C_INITIALIZE_ARGS init_args;
    CK_SLOT_ID slots[64];
    CK_ULONG n_slots = 64;
    CK_UTF8CHAR want[32];
    CK_SLOT_ID slot = 0;
    bool found = false;
    struct guardian_product prod;
    struct guardian_package_material m;
    char err[256] = "";

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b': backend = optarg; break;
        case 't': label = optarg; break;
        case 'p': pin = optarg; break;
        case 's': dir = optarg; break;
        case 'o': oem = optarg; break;
        case 'r': product = optarg; break;
        case 'n': rounds = atoi(optarg); break;
        case 'm': slice = atof(optarg) / 1000.0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (backend == NULL || label == NULL || pin == NULL || dir == NULL || oem == NULL || product == NULL ||
        optind != argc || rounds < 1 || rounds > MAX_ROUNDS || !(slice >= 0.005 && slice <= 10.0) ||
        strlen(oem) > GUARDIAN_ID_MAX || strlen(product) > GUARDIAN_ID_MAX) {
        usage(stderr);
        return 2;
    }
    snprintf(c.oem, sizeof(c.oem), "%s", oem);
    snprintf(c.product, sizeof(c.product), "%s", product);
    c.tag = (unsigned)getpid() ^ (unsigned)time(NULL) << 12;

    /* the issuer, from the store, as the module builds it */
    p11_check(guardian_store_open(dir, &c.st), "guardian_store_open");
    p11_check(guardian_store_product_get(c.st, oem, product, &prod), "guardian_store_product_get");
    p11_check(guardian_store_package_material(c.st, prod.package_id, &m), "guardian_store_package_material");
    if (!guardian_cert_issuer_init(&c.is, prod.package_id, m.oem_id, m.product_id, m.release_version,
                                   m.cert_template, m.cert_template_len, m.ca_cert, m.ca_cert_len, err, sizeof(err))) {
        fprintf(stderr, "cert-parts: issuer: %s\n", err);
        return 1;
    }
    guardian_store_package_material_free(&m);

    /* device keys, not timed */
    for (size_t i = 0; i < POOL; i++) {
        EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        unsigned char *p = c.spki[i];
        int len = pk != NULL && i2d_PUBKEY(pk, NULL) <= (int)sizeof(c.spki[i]) ? i2d_PUBKEY(pk, &p) : -1;
        EVP_PKEY_free(pk);
        if (len <= 0)
            die("device key generation failed");
        c.spki_len[i] = (size_t)len;
        step_key_check(&c);
        c.n++;
    }

    /* SoftHSM alone: the CA key */
    dl = dlopen(backend, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL || (get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL)
        die("cannot load the backend");
    p11_check(get_list(&c.p11), "C_GetFunctionList");
    memset(&init_args, 0, sizeof(init_args));
    init_args.flags = CKF_OS_LOCKING_OK;
    p11_check(c.p11->C_Initialize(&init_args), "C_Initialize");
    memset(want, ' ', sizeof(want));
    memcpy(want, label, strlen(label) < 32 ? strlen(label) : 32);
    p11_check(c.p11->C_GetSlotList(CK_TRUE, slots, &n_slots), "C_GetSlotList");
    for (CK_ULONG i = 0; i < n_slots && !found; i++) {
        CK_TOKEN_INFO ti;
        if (c.p11->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
            slot = slots[i];
            found = true;
        }
    }
    if (!found)
        die("no such token");
    p11_check(c.p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &c.session),
              "C_OpenSession");
    p11_check(c.p11->C_Login(c.session, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)), "C_Login");
    {
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, prod.package_id, GUARDIAN_PACKAGE_ID_LEN}};
        CK_ULONG n = 0;
        p11_check(c.p11->C_FindObjectsInit(c.session, t, 2), "C_FindObjectsInit");
        p11_check(c.p11->C_FindObjects(c.session, &c.ca, 1, &n), "C_FindObjects");
        c.p11->C_FindObjectsFinal(c.session);
        if (n != 1)
            die("the package's production CA key is not in the token");
    }

    /* one certificate end to end: every step has real input */
    step_tbs(&c);
    step_sha256(&c);
    step_sign(&c);
    step_finish(&c);

    printf("cert-parts: %d rounds of %.0f ms slices per step, steps interleaved; us per operation\n", rounds,
           slice * 1000.0);
    for (int r = 0; r < rounds; r++) {
        for (size_t s = 0; s < N_STEPS; s++) {
            unsigned long ops = 0;
            double t0, el;
            c.reserve_s = 0.0;
            c.reserved = 0;
            t0 = now_s();
            do {
                steps[s].fn(&c);
                c.n++;
                ops++;
            } while ((el = now_s() - t0) < slice);
            if (steps[s].fn == step_issue) {
                el -= c.reserve_s;
                /* per unit: a block's commit shared by its STORE_BLOCK units */
                reserve_us[r] = c.reserved ? 1e6 * c.reserve_s / (double)c.reserved : 0.0;
            }
            us[s][r] = 1e6 * el / (double)ops;
        }
    }

    {
        double sum = 0.0, sorted[MAX_ROUNDS];
        printf("%-42s %10s %10s %10s\n", "step", "median", "min", "max");
        for (size_t s = 0; s < N_STEPS; s++) {
            memcpy(sorted, us[s], sizeof(double) * (size_t)rounds);
            qsort(sorted, (size_t)rounds, sizeof(double), cmp_double);
            printf("%-42s %10.2f %10.2f %10.2f\n", steps[s].name, sorted[rounds / 2], sorted[0], sorted[rounds - 1]);
            if (steps[s].in_guardian)
                sum += sorted[rounds / 2];
            if (steps[s].fn == step_issue) {
                memcpy(sorted, reserve_us, sizeof(double) * (size_t)rounds);
                qsort(sorted, (size_t)rounds, sizeof(double), cmp_double);
                printf("%-42s %10.2f %10.2f %10.2f\n", "guardian_store_reserve_block(64) / 64 (FULL)",
                       sorted[rounds / 2], sorted[0], sorted[rounds - 1]);
                sum += sorted[rounds / 2];
            }
        }
        printf("%-42s %10.2f  (-> %.0f certificates/s on one thread if nothing else cost)\n",
               "sum of the Guardian's steps", sum, 1e6 / sum);
    }

    /* give back the serials reserved and not issued, as the module does */
    for (; c.next_serial < c.end_serial; c.next_serial++)
        guardian_store_release(c.st, c.oem, c.product, c.next_serial);
    c.p11->C_Logout(c.session);
    c.p11->C_Finalize(NULL);
    guardian_cert_issuer_free(&c.is);
    guardian_store_close(c.st);
    return 0;
}
