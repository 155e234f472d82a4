/*
 * ctl_ca_request.c — `guardianctl ca-request --product OEM/PRODUCT --subject
 * /O=ACME/CN=NAME [--key-type p256|p384|rsa2048] --out FILE [--force]`: the
 * module makes a production CA key pair for the product inside the token and
 * a CSR signed by it, bound to this Guardian by its signing key
 * (CKG_GUARDIAN_REQ_CA_KEY, mechs/ca_request.c).  The file holds the CSR,
 * then the "GUARDIAN CA KEY BINDING" block: the OEM certifies it with
 * `guardian-wrap certify-ca` (docs/guardianctl.md, "ca-request").  Without
 * --key-type the module chooses by what the slot can do (P-256, or RSA 2048
 * on a token without EC); the line printed names what the CSR holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "guardianctl.h"

/* "/O=ACME/CN=Name" (openssl's -subj form) as a DER Name; dies otherwise. */
static unsigned char *subject_der(const char *text, int *len)
{
    X509_NAME *name = X509_NAME_new();
    char *copy = strdup(text), *p, *next;
    unsigned char *der = NULL;

    if (name == NULL || copy == NULL)
        die("out of memory");
    if (copy[0] != '/' || copy[1] == '\0')
        usage_die("ca-request", "--subject must look like /O=ACME/CN=NAME, not '%s'", text);
    for (p = copy + 1; p != NULL && *p != '\0'; p = next) {
        char *eq = strchr(p, '=');
        next = strchr(p, '/');
        if (next != NULL)
            *next++ = '\0';
        if (eq != NULL && eq != p)
            *eq = '\0';
        if (eq == NULL || eq == p || eq[1] == '\0' ||
            X509_NAME_add_entry_by_txt(name, p, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1, 0) != 1) {
            ERR_clear_error();
            usage_die("ca-request", "--subject: '%s' is not FIELD=VALUE with a known field (C, O, OU, CN, ...)", p);
        }
    }
    *len = i2d_X509_NAME(name, &der);
    if (*len <= 0)
        die("cannot encode --subject");
    X509_NAME_free(name);
    free(copy);
    return der;
}

/* What the CSR at the start of the module's text holds ("RSA 2048", "EC
 * P-256"), for the line that says what was made. */
static void csr_key_name(const char *text, size_t len, char *name, size_t name_len)
{
    BIO *b = BIO_new_mem_buf(text, (int)len);
    X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = req ? X509_REQ_get0_pubkey(req) : NULL;
    char group[32] = "";
    size_t glen = 0;

    if (k == NULL)
        snprintf(name, name_len, "a key the CSR does not show");
    else if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA)
        snprintf(name, name_len, "RSA %d", EVP_PKEY_get_bits(k));
    else if (EVP_PKEY_get_group_name(k, group, sizeof(group), &glen) == 1)
        snprintf(name, name_len, "EC %s",
                 strcmp(group, "prime256v1") == 0 ? "P-256" : strcmp(group, "secp384r1") == 0 ? "P-384" : group);
    else
        snprintf(name, name_len, "EC");
    ERR_clear_error();
    X509_REQ_free(req);
    BIO_free(b);
}

int cmd_ca_request(int argc, char **argv)
{
    const char *product = NULL, *subject = NULL, *key_type = NULL, *out = NULL, *slash;
    char oem[GUARDIAN_ID_MAX + 1] = "", prod[GUARDIAN_ID_MAX + 1] = "", made[48];
    CK_ULONG type;
    unsigned char *der;
    int der_len, force = 0;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG len = 0;
    char *text;
    CK_RV rv;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--product") == 0 && i + 1 < argc)
            product = argv[++i];
        else if (strcmp(argv[i], "--subject") == 0 && i + 1 < argc)
            subject = argv[++i];
        else if (strcmp(argv[i], "--key-type") == 0 && i + 1 < argc)
            key_type = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--force") == 0)
            force = 1;
        else
            usage_die("ca-request", "unexpected argument '%s'", argv[i]);
    }
    if (product == NULL || subject == NULL || out == NULL)
        usage_die("ca-request", "needs --product OEM/PRODUCT, --subject /O=.../CN=... and --out FILE");
    if ((slash = strchr(product, '/')) == NULL || slash == product || slash[1] == '\0' ||
        (size_t)(slash - product) > GUARDIAN_ID_MAX || strlen(slash + 1) > GUARDIAN_ID_MAX)
        usage_die("ca-request", "--product must be OEM/PRODUCT (each 1..%d characters), not '%s'", GUARDIAN_ID_MAX,
                  product);
    memcpy(oem, product, (size_t)(slash - product));
    snprintf(prod, sizeof(prod), "%s", slash + 1);
    if (key_type == NULL)
        type = 0; /* not sent: the module chooses by the slot */
    else if (strcmp(key_type, "p256") == 0)
        type = CKG_GUARDIAN_CA_KEY_P256;
    else if (strcmp(key_type, "p384") == 0)
        type = CKG_GUARDIAN_CA_KEY_P384;
    else if (strcmp(key_type, "rsa2048") == 0)
        type = CKG_GUARDIAN_CA_KEY_RSA2048;
    else
        usage_die("ca-request", "--key-type must be p256, p384 or rsa2048, not '%s'", key_type);
    der = subject_der(subject, &der_len);
    check_output("ca-request", out, force);

    need_token();
    login(CKU_USER);
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, oem, (CK_ULONG)strlen(oem)},
                            {CKA_GUARDIAN_PRODUCT_ID, prod, (CK_ULONG)strlen(prod)},
                            {CKA_SUBJECT, der, (CK_ULONG)der_len},
                            {CKA_GUARDIAN_CA_KEY_TYPE, &type, sizeof(type)}};
        rv = request_in(session, CKG_GUARDIAN_REQ_CA_KEY, t, key_type != NULL ? 4 : 3, &h);
    }
    OPENSSL_free(der);
    switch (rv) {
    case CKR_OK: break;
    case CKR_KEY_HANDLE_INVALID:
        die("the Guardian has no identity yet: run '" PROG " init' first");
    case CKR_GUARDIAN_REQUEST_INVALID:
        die("the module refused the request (CKR_GUARDIAN_REQUEST_INVALID): an OEM or product ID outside "
            "A-Z a-z 0-9 . _ - :, or a module older than this guardianctl; its log line says which");
    default:
        die("the module made no CA key: %s (0x%lx); its log line says why", ckr(rv), (unsigned long)rv);
    }
    text = (char *)get_attr(h, CKA_VALUE, &len);
    P11(p11->C_DestroyObject(session, h));
    write_output(out, text, (size_t)len, force);
    csr_key_name(text, (size_t)len, made, sizeof(made));
    fprintf(stderr,
            "made a production CA key pair for %s/%s in token '%s' (%s; sensitive, never extractable, sign only: it "
            "never leaves the Guardian)\n"
            "wrote %s: its CSR and the Guardian's binding; have the OEM certify it ('guardian-wrap certify-ca "
            "--csr %s ...') and send a package made with 'guardian-wrap create --ca-cert CA.pem --ca-request %s' "
            "(no --ca-key)\n",
            oem, prod, token_label, made, out, out, out);
    free(text);
    return 0;
}
