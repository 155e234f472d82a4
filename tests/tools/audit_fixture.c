/*
 * audit_fixture.c — test helper for tests/tools/test_audit_report.sh.
 *
 *   audit_fixture issue STATE_DIR CA.key CA.pem OEM PRODUCT ISSUE RELEASE KEEP
 *       reserves ISSUE + RELEASE + KEEP units of the installed package through
 *       the store API (guardian_store_reserve_block), issues ISSUE device
 *       certificates signed with CA.key following the device certificate
 *       profile (docs/audit-report.md), releases RELEASE and leaves KEEP
 *       reserved, not issued: the trail a provisioning run leaves behind.
 *   audit_fixture issue ... KEEP die
 *       the same, then SIGKILLs itself instead of closing the store: a line
 *       killed mid-production, its issue journal left behind unfolded.
 *   audit_fixture credential STATE_DIR ACTION SUBJECT
 *       a Guardian credential change through the store API, as the module
 *       makes it in service mode: ACTION so-set, user-set, changed, fail,
 *       so-cleared or removed; SUBJECT the operator's name, "so" for the SO
 *       (salt and hash are fixed test bytes: no KDF runs here).
 *   audit_fixture export STATE_DIR [OEM PRODUCT]
 *       the EXPORT record an audit export writes before it builds its report
 *       (guardian_store_record_export), of the whole trail or of one product,
 *       without the report: what an export leaves in the trail for the next.
 *   In all three, $AUDIT_FIXTURE_OPERATOR, if set, is the operator the records
 *   name (guardian_store_set_operator), and $AUDIT_FIXTURE_GUARDIAN, if set (64
 *   hex digits), the Guardian they name (guardian_store_set_guardian; unset:
 *   none, as a process without a Guardian certificate writes); in issue, $AUDIT_FIXTURE_DEVICE, if
 *   set, the device ID of every certificate (what two processes racing one
 *   new device ID leave: the store API, below the module's device index,
 *   records it as it comes).
 *   audit_fixture join STATE_DIR PACKAGE_ID DIGEST OEM PRODUCT RELEASE UNITS MEMBER
 *       a group package's import by MEMBER (hex: the SHA-256 of a Guardian
 *       certificate) through the store API, as the module records it, but
 *       with no check that MEMBER is one the package names: what an operator
 *       writing straight into the state leaves, for verify-report to refuse.
 *   audit_fixture rehash IN OUT one|chain SEQ
 *       recomputes the hash of record SEQ (one), or of SEQ and every record
 *       after it with their prev_hash links and the head line (chain): what a
 *       forger who altered a record would do.  Other lines are copied.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cert_builder.h"
#include "package.h"
#include "report.h"


static void unhex(const char *hex, uint8_t *out, size_t n);

/* Who the fixture's records name: $AUDIT_FIXTURE_OPERATOR and
 * $AUDIT_FIXTURE_GUARDIAN (above). */
static void set_author(struct guardian_store *st)
{
    const char *g = getenv("AUDIT_FIXTURE_GUARDIAN");
    uint8_t fp[GUARDIAN_HASH_LEN];

    guardian_store_set_operator(st, getenv("AUDIT_FIXTURE_OPERATOR"));
    if (g != NULL && *g != '\0') {
        unhex(g, fp, sizeof(fp));
        guardian_store_set_guardian(st, fp);
    }
}

static void fail(const char *what)
{
    fprintf(stderr, "audit_fixture: %s\n", what);
    exit(1);
}

/* DER TLV with a definite length (< 65536). */
static size_t tlv(uint8_t *out, uint8_t tag, const void *v, size_t n)
{
    size_t h = 0;
    out[h++] = tag;
    if (n < 128) {
        out[h++] = (uint8_t)n;
    } else if (n < 256) {
        out[h++] = 0x81;
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = 0x82;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    }
    memmove(out + h, v, n);
    return h + n;
}

static X509 *device_cert(struct guardian_store *st, EVP_PKEY *ca_key, X509 *ca, const char *oem, const char *product,
                         const struct guardian_product *p, uint64_t serial, const char *device)
{
    X509 *x = X509_new();
    EVP_PKEY *dev = EVP_EC_gen("P-256");
    uint8_t sn[16], body[1024], seq[1100], rel[5];
    size_t n = 0, rel_len = 0;
    BIGNUM *bn;
    X509_NAME *name = NULL;
    ASN1_OCTET_STRING *val = ASN1_OCTET_STRING_new();
    ASN1_OBJECT *oid = NULL;
    X509_EXTENSION *ext = NULL;
    struct guardian_package_material m;
    GUARDIAN_CERT_TEMPLATE *t = NULL;
    struct guardian_subject_pattern pat;
    uint8_t ext_oid[GUARDIAN_DEVICE_EXT_OID_MAX], name_der[1024];
    const unsigned char *q;
    size_t name_len = 0;
    int ext_oid_len = 0;

    if (x == NULL || dev == NULL || val == NULL)
        fail("out of memory");
    /* The profile of the package's own template, as the module follows it:
     * its subject pattern, its device-identity extension setting. */
    if (guardian_store_package_material(st, p->package_id, &m) != CKR_OK || m.cert_template == NULL)
        fail("the package's template was not recorded");
    q = m.cert_template;
    if ((t = d2i_GUARDIAN_CERT_TEMPLATE(NULL, &q, (long)m.cert_template_len)) == NULL ||
        (ext_oid_len = guardian_template_device_ext(t, ext_oid)) < 0 ||
        !guardian_subject_pattern_parse((const char *)ASN1_STRING_get0_data(t->subject),
                                        (size_t)ASN1_STRING_length(t->subject), &pat, NULL, 0) ||
        (name_len = guardian_subject_der(&pat, device, oem, product, name_der, sizeof(name_der), NULL, 0)) == 0)
        fail("the package's template is not usable");
    q = name_der;
    if ((name = d2i_X509_NAME(NULL, &q, (long)name_len)) == NULL)
        fail("the subject does not parse");
    if (ext_oid_len > 0 && (oid = ASN1_OBJECT_create(NID_undef, ext_oid, ext_oid_len, NULL, NULL)) == NULL)
        fail("out of memory");
    GUARDIAN_CERT_TEMPLATE_free(t);
    guardian_store_package_material_free(&m);
    sn[0] = (uint8_t)(0x40 | (p->package_id[0] & 0x3f));
    memcpy(sn + 1, p->package_id + 1, 7);
    for (int i = 0; i < 8; i++)
        sn[8 + i] = (uint8_t)(serial >> (56 - 8 * i));
    bn = BN_bin2bn(sn, 16, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, 2);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
    X509_set_pubkey(x, dev);
    /* release INTEGER, minimal positive encoding */
    {
        uint8_t b[5] = {0, (uint8_t)(p->release_version >> 24), (uint8_t)(p->release_version >> 16),
                        (uint8_t)(p->release_version >> 8), (uint8_t)p->release_version};
        size_t i = 0;
        while (i < 4 && b[i] == 0 && !(b[i + 1] & 0x80))
            i++;
        rel_len = 5 - i;
        memcpy(rel, b + i, rel_len);
    }
    n += tlv(body + n, 0x0c, oem, strlen(oem));
    n += tlv(body + n, 0x0c, product, strlen(product));
    n += tlv(body + n, 0x04, device, strlen(device));
    n += tlv(body + n, 0x04, p->package_id, 16);
    n += tlv(body + n, 0x02, rel, rel_len);
    n = tlv(seq, 0x30, body, n);
    ASN1_OCTET_STRING_set(val, seq, (int)n);
    if (oid != NULL && ((ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, val)) == NULL || !X509_add_ext(x, ext, -1)))
        fail("cannot add the device-identity extension");
    if (!X509_sign(x, ca_key, EVP_sha256()))
        fail("cannot make a device certificate");
    X509_EXTENSION_free(ext);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(val);
    X509_NAME_free(name);
    EVP_PKEY_free(dev);
    return x;
}

static int issue(char **argv, int die)
{
    struct guardian_store *st;
    struct guardian_product p;
    FILE *f;
    EVP_PKEY *ca_key;
    X509 *ca;
    uint64_t n_issue = strtoull(argv[7], NULL, 10), n_release = strtoull(argv[8], NULL, 10);
    uint64_t n_keep = strtoull(argv[9], NULL, 10), first = 0, got = 0;

    if ((f = fopen(argv[3], "r")) == NULL || (ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL)) == NULL)
        fail("cannot read the CA key");
    fclose(f);
    if ((f = fopen(argv[4], "r")) == NULL || (ca = PEM_read_X509(f, NULL, NULL, NULL)) == NULL)
        fail("cannot read the CA certificate");
    fclose(f);
    if (guardian_store_open(argv[2], &st) != CKR_OK)
        fail("cannot open the store");
    set_author(st);
    if (guardian_store_product_get(st, argv[5], argv[6], &p) != CKR_OK)
        fail("no such product");
    if (guardian_store_reserve_block(st, p.oem_id, p.product_id, p.package_id, (int64_t)time(NULL),
                                     n_issue + n_release + n_keep, &first, &got) != CKR_OK ||
        got != n_issue + n_release + n_keep)
        fail("cannot reserve the units");
    for (uint64_t i = 0; i < n_issue; i++) {
        char device[32];
        unsigned char *der = NULL;
        int len;
        X509 *x;
        snprintf(device, sizeof(device), "DEV-%06llu", (unsigned long long)(first + i));
        if (getenv("AUDIT_FIXTURE_DEVICE") != NULL) /* every certificate to one device: issued twice */
            snprintf(device, sizeof(device), "%s", getenv("AUDIT_FIXTURE_DEVICE"));
        x = device_cert(st, ca_key, ca, p.oem_id, p.product_id, &p, first + i, device);
        len = i2d_X509(x, &der);
        if (len <= 0 || guardian_store_issue(st, p.oem_id, p.product_id, first + i, (const uint8_t *)device,
                                             strlen(device), der, (size_t)len) != CKR_OK)
            fail("cannot record an issued certificate");
        OPENSSL_free(der);
        X509_free(x);
    }
    for (uint64_t i = 0; i < n_release; i++)
        if (guardian_store_release(st, p.oem_id, p.product_id, first + n_issue + i) != CKR_OK)
            fail("cannot release a unit");
    if (die) {
        printf("serials %llu..%llu, killed\n", (unsigned long long)first, (unsigned long long)(first + got - 1));
        fflush(stdout);
        raise(SIGKILL);
    }
    guardian_store_close(st);
    EVP_PKEY_free(ca_key);
    X509_free(ca);
    printf("issued %llu, released %llu, kept %llu (serials %llu..%llu)\n", (unsigned long long)n_issue,
           (unsigned long long)n_release, (unsigned long long)n_keep, (unsigned long long)first,
           (unsigned long long)(first + got - 1));
    return 0;
}

static int credential(char **argv)
{
    static const char *const actions[] = {NULL, "so-set", "user-set", "changed", "fail", "so-cleared", "removed"};
    struct guardian_store *st;
    struct guardian_credential c;
    const char *subject = argv[4];
    int so = strcmp(subject, "so") == 0, action = 0, role = so ? (int)CKU_SO : (int)CKU_USER;
    const char *name = so ? "" : subject;
    CK_RV rv;

    for (int i = 1; i < (int)(sizeof(actions) / sizeof(actions[0])); i++)
        if (strcmp(argv[3], actions[i]) == 0)
            action = i;
    if (action == 0)
        fail("unknown credential action");
    if (guardian_store_open(argv[2], &st) != CKR_OK)
        fail("cannot open the store");
    set_author(st);
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.role = role;
    memset(c.salt, 0x5a, sizeof(c.salt));
    memset(c.hash, 0xa5, sizeof(c.hash));
    c.kdf_n = 32768;
    c.kdf_r = 8;
    c.kdf_p = 1;
    if (action == GUARDIAN_CREDENTIAL_LOCKED)
        rv = guardian_store_credential_failed(st, role, name, NULL);
    else if (action == GUARDIAN_CREDENTIAL_SO_CLEARED || action == GUARDIAN_CREDENTIAL_REMOVED)
        rv = guardian_store_credential_remove(st, role, name, action);
    else
        rv = guardian_store_credential_put(st, &c, action, NULL);
    guardian_store_close(st);
    if (rv != CKR_OK)
        fail("the credential change was refused");
    return 0;
}

static int export_record(int argc, char **argv)
{
    struct guardian_store *st;
    CK_RV rv;

    if (guardian_store_open(argv[2], &st) != CKR_OK)
        fail("cannot open the store");
    set_author(st);
    rv = guardian_store_record_export(st, argc == 5 ? argv[3] : NULL, argc == 5 ? argv[4] : NULL, (int64_t)time(NULL),
                                      NULL, NULL, NULL);
    guardian_store_close(st);
    if (rv != CKR_OK)
        fail("the export record was refused");
    return 0;
}

static void unhex(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        fail("a hex argument has the wrong length");
    for (size_t i = 0; i < n; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            fail("not hex");
        out[i] = (uint8_t)b;
    }
}

static int join(char **argv)
{
    struct guardian_store *st;
    struct guardian_package_info p;
    uint8_t member[GUARDIAN_HASH_LEN];
    CK_RV rv;

    memset(&p, 0, sizeof(p));
    unhex(argv[3], p.package_id, sizeof(p.package_id));
    unhex(argv[4], p.package_digest, sizeof(p.package_digest));
    snprintf(p.oem_id, sizeof(p.oem_id), "%s", argv[5]);
    snprintf(p.product_id, sizeof(p.product_id), "%s", argv[6]);
    p.release_version = (uint32_t)strtoul(argv[7], NULL, 10);
    p.authorised_units = strtoull(argv[8], NULL, 10);
    p.not_after = (int64_t)time(NULL) + 86400;
    unhex(argv[9], member, sizeof(member));
    p.group_member = member;
    if (guardian_store_open(argv[2], &st) != CKR_OK)
        fail("cannot open the store");
    rv = guardian_store_package_install(st, &p, (int64_t)time(NULL), NULL, NULL);
    guardian_store_close(st);
    if (rv != CKR_OK)
        fail("the join was refused");
    return 0;
}

static int rehash(char **argv)
{
    FILE *in = fopen(argv[2], "r"), *out = fopen(argv[3], "w");
    int chain = strcmp(argv[4], "chain") == 0;
    uint64_t from = strtoull(argv[5], NULL, 10), head_seq = 0;
    uint8_t prev[GUARDIAN_HASH_LEN] = {0};
    int have_prev = 0;
    static char line[REPORT_MAX_LINE + 2];
    static char *lines[1 << 16];
    size_t n = 0, head_idx = (size_t)-1;

    if (in == NULL || out == NULL)
        fail("cannot open the files");
    while (n < sizeof(lines) / sizeof(lines[0]) && fgets(line, sizeof(line), in) != NULL) {
        if (strncmp(line, "head ", 5) == 0)
            head_idx = n;
        lines[n++] = strdup(line);
    }
    for (size_t i = 0; i < n; i++) {
        struct guardian_audit_record r;
        size_t len = strlen(lines[i]);
        char buf[2048];
        if (strncmp(lines[i], "record ", 7) != 0 || report_parse_record(lines[i], len - 1, &r, NULL) != NULL)
            continue;
        if (r.seq >= from && (chain || r.seq == from)) {
            if (chain && have_prev)
                memcpy(r.prev_hash, prev, sizeof(prev));
            guardian_audit_hash(&r, r.hash);
            report_format_record(&r, buf, sizeof(buf));
            free(lines[i]);
            lines[i] = strdup(buf);
        }
        memcpy(prev, r.hash, sizeof(prev));
        have_prev = 1;
        head_seq = r.seq;
    }
    if (chain && head_idx != (size_t)-1) {
        char buf[128];
        int o = snprintf(buf, sizeof(buf), "head %llu ", (unsigned long long)head_seq);
        for (int k = 0; k < GUARDIAN_HASH_LEN; k++)
            o += snprintf(buf + o, sizeof(buf) - (size_t)o, "%02x", prev[k]);
        snprintf(buf + o, sizeof(buf) - (size_t)o, "\n");
        free(lines[head_idx]);
        lines[head_idx] = strdup(buf);
    }
    for (size_t i = 0; i < n; i++) {
        fputs(lines[i], out);
        free(lines[i]);
    }
    fclose(in);
    fclose(out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 10 && strcmp(argv[1], "issue") == 0)
        return issue(argv, 0);
    if (argc == 11 && strcmp(argv[1], "issue") == 0 && strcmp(argv[10], "die") == 0)
        return issue(argv, 1);
    if (argc == 6 && strcmp(argv[1], "rehash") == 0)
        return rehash(argv);
    if (argc == 5 && strcmp(argv[1], "credential") == 0)
        return credential(argv);
    if ((argc == 3 || argc == 5) && strcmp(argv[1], "export") == 0)
        return export_record(argc, argv);
    if (argc == 10 && strcmp(argv[1], "join") == 0)
        return join(argv);
    fprintf(stderr, "usage: audit_fixture issue STATE_DIR CA.key CA.pem OEM PRODUCT ISSUE RELEASE KEEP [die]\n"
                    "       audit_fixture credential STATE_DIR ACTION SUBJECT\n"
                    "       audit_fixture export STATE_DIR [OEM PRODUCT]\n"
                    "       audit_fixture join STATE_DIR PACKAGE_ID DIGEST OEM PRODUCT RELEASE UNITS MEMBER\n"
                    "       audit_fixture rehash IN OUT one|chain SEQ\n");
    return 2;
}
