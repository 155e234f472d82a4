/*
 * guardian-wrap — the OEM's tool: wrap provisioning secrets for one Guardian,
 * and inspect a package.  Runs on the OEM's PC with OpenSSL only; needs no HSM.
 *
 *   guardian-wrap create  --guardian-cert G.pem --signer-key K.pem --signer-cert C.pem ...
 *   guardian-wrap inspect PACKAGE [--oem-root ROOT.pem] [--guardian-cert G.pem]
 *   guardian-wrap verify-report REPORT --guardian G.pem --ca-chain CHAIN.pem [--root ROOT.pem] ...
 *
 * The format is docs/package-format.md; the CLI is docs/guardian-wrap.md; the
 * audit report docs/audit-report.md (tools/report.c reads and checks it).
 * --version; --help on its own or after any command.  Exit 0 done, 1 refused
 * or failed (verify-report: does not verify, or a file it cannot read), 2
 * usage error: the convention of guardianctl.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "ca_binding.h"
#include "cert_builder.h"
#include "package.h"
#include "transport.h"
#include "package_container.h"
#include "report.h"
#include "tty_prompt.h"

#define PROG "guardian-wrap"

/* Exit statuses, one convention with guardianctl (docs/guardian-wrap.md):
 * 0 done (verify-report: verifies), 1 refused or failed (a file that cannot
 * be read, a report that does not verify), 2 a usage error: nothing read. */
#define EXIT_REFUSED 1
#define EXIT_USAGE 2
/* 130: a passphrase prompt ended by SIGINT/SIGTERM (tty_prompt.c) */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    unsigned long e;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    /* OpenSSL's reason, when there is one: it often names the real cause. */
    if ((e = ERR_peek_last_error()) != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        fprintf(stderr, PROG ": (OpenSSL: %s)\n", buf);
    }
    exit(EXIT_REFUSED);
}

static void usage_die(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

/* A usage error of `cmd`: named, with where to look, exit 2. */
static void usage_die(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (" PROG " %s --help)\n", cmd);
    exit(EXIT_USAGE);
}

/* getopt_long returned '?' or ':' (optstring starts with ':', opterr is 0). */
static void bad_option(const char *cmd, int c, char **argv)
{
    if (c == ':')
        usage_die(cmd, "option '%s' needs a value", argv[optind - 1]);
    if (optopt != 0)
        usage_die(cmd, "unknown option '-%c'", optopt);
    usage_die(cmd, "unknown option '%s'", argv[optind - 1]);
}

/* ---- passphrases (--passin), as openssl takes them ------------------------- */

/* A --passin source: pass:TEXT, env:VAR, file:PATH (its first line), fd:N
 * (a line read from it) or stdin (a line read from standard input), as
 * openssl's -passin.  Resolved when a key first needs it, once. */
struct passin {
    const char *spec;
    char value[1024];
    int resolved, asked, typed; /* typed: asked on the terminal */
    const char *path;           /* the key being read, for the prompt */
};

static int passin_spec_valid(const char *spec)
{
    if (strncmp(spec, "fd:", 3) == 0) {
        const char *d = spec + 3;
        if (*d == '\0')
            return 0;
        for (; *d; d++)
            if (!isdigit((unsigned char)*d))
                return 0;
        return 1;
    }
    return strcmp(spec, "stdin") == 0 || strncmp(spec, "pass:", 5) == 0 ||
           (strncmp(spec, "env:", 4) == 0 && spec[4] != '\0') ||
           (strncmp(spec, "file:", 5) == 0 && spec[5] != '\0');
}

/* The first line of fd (without its end of line) into out; 0 if fd cannot
 * be read. */
static int read_line_fd(int fd, char *out, size_t cap)
{
    size_t n = 0;
    char ch;
    ssize_t r = 0;
    while (n + 1 < cap && (r = read(fd, &ch, 1)) == 1 && ch != '\n')
        out[n++] = ch;
    if (n > 0 && out[n - 1] == '\r')
        n--;
    out[n] = '\0';
    return r >= 0;
}

static void passin_resolve(struct passin *p)
{
    const char *s = p->spec;
    if (p->resolved)
        return;
    if (strncmp(s, "pass:", 5) == 0) {
        snprintf(p->value, sizeof(p->value), "%s", s + 5);
    } else if (strncmp(s, "env:", 4) == 0) {
        const char *v = getenv(s + 4);
        if (v == NULL)
            die("--passin %s: no variable %s in the environment", s, s + 4);
        snprintf(p->value, sizeof(p->value), "%s", v);
    } else if (strncmp(s, "file:", 5) == 0) {
        int fd = open(s + 5, O_RDONLY);
        if (fd < 0)
            die("--passin %s: cannot open %s: %s", s, s + 5, strerror(errno));
        if (!read_line_fd(fd, p->value, sizeof(p->value)))
            die("--passin %s: cannot read %s: %s", s, s + 5, strerror(errno));
        close(fd);
    } else if (strcmp(s, "stdin") == 0) {
        if (!read_line_fd(STDIN_FILENO, p->value, sizeof(p->value)))
            die("--passin stdin: cannot read standard input: %s", strerror(errno));
    } else if (!read_line_fd(atoi(s + 3), p->value, sizeof(p->value))) {
        die("--passin %s: cannot read descriptor %s: %s", s, s + 3, strerror(errno));
    }
    p->resolved = 1;
}

static void passin_wipe(struct passin *p)
{
    OPENSSL_cleanse(p->value, sizeof(p->value));
    p->resolved = 0;
}

/* A passphrase asked on the terminal, echo off (tty_prompt.c: SIGINT or
 * SIGTERM there restore the echo and exit 130).  OpenSSL's own prompt,
 * PEM_def_callback, swallowed Ctrl-C and went on waiting for a line
 * (measured). */
static int prompt_passphrase(const char *path, char *buf, int size)
{
    char prompt[PATH_MAX + 32];
    snprintf(prompt, sizeof(prompt), "Enter the pass phrase of %s", path);
    return tty_read_secret(prompt, buf, (size_t)size) ? (int)strlen(buf) : -1;
}

/* OpenSSL's pem_password_cb: the --passin passphrase; without one, asked on
 * the terminal; without a terminal, none (the caller says). */
static int passin_cb(char *buf, int size, int rwflag, void *u)
{
    struct passin *p = u;
    size_t len;
    (void)rwflag;
    p->asked = 1;
    if (p->spec == NULL) {
        p->typed = isatty(STDIN_FILENO);
        return p->typed ? prompt_passphrase(p->path, buf, size) : -1;
    }
    passin_resolve(p);
    len = strlen(p->value);
    if (len >= (size_t)size)
        return -1;
    memcpy(buf, p->value, len);
    return (int)len;
}

/* ---- reading inputs ---------------------------------------------------------- */

static unsigned char *read_all(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    size_t n = 0, cap = 4096;

    if (f == NULL)
        die("cannot open %s: %s", path, strerror(errno));
    buf = malloc(cap);
    if (buf == NULL)
        die("out of memory");
    for (;;) {
        size_t got;
        if (n == cap) {
            if (cap >= max)
                die("%s is larger than %zu bytes", path, max);
            cap *= 2;
            buf = realloc(buf, cap);
            if (buf == NULL)
                die("out of memory");
        }
        got = fread(buf + n, 1, cap - n, f);
        if (got == 0)
            break;
        n += got;
    }
    if (ferror(f))
        die("cannot read %s", path);
    fclose(f);
    if (n > max)
        die("%s is larger than %zu bytes", path, max);
    *len = n;
    return buf;
}

/* PEM or DER certificates: all of them, in file order. */
static STACK_OF(X509) *read_certs(const char *path)
{
    STACK_OF(X509) *out = sk_X509_new_null();
    size_t len;
    unsigned char *data = read_all(path, 1 << 20, &len);
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    X509 *x;

    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        sk_X509_push(out, x);
    ERR_clear_error();
    if (sk_X509_num(out) == 0) {
        const unsigned char *p = data;
        x = d2i_X509(NULL, &p, (long)len);
        if (x == NULL)
            die("%s holds no certificate (PEM or DER expected)", path);
        sk_X509_push(out, x);
    }
    BIO_free(bio);
    free(data);
    return out;
}

static X509 *read_cert(const char *path)
{
    STACK_OF(X509) *all = read_certs(path);
    X509 *x = sk_X509_shift(all);
    if (sk_X509_num(all) > 0)
        die("%s holds more than one certificate; give exactly one", path);
    sk_X509_free(all);
    return x;
}

/* The Guardian's certificates as `guardianctl cert` writes them: the Guardian
 * certificate A first (the key packages are wrapped for, the target), then
 * optionally its signing certificate S, which must have issued A.  A file
 * holding A alone (or a Guardian made before the signing key was split off)
 * is one certificate.  *signing gets S or NULL when signing is not NULL. */
static X509 *read_guardian(const char *path, X509 **signing)
{
    STACK_OF(X509) *all = read_certs(path);
    X509 *a = sk_X509_shift(all), *sc = sk_X509_shift(all);
    if (sk_X509_num(all) > 0)
        die("%s holds more than two certificates; give the Guardian certificate, optionally followed by its "
            "signing certificate ('guardianctl cert' writes both)",
            path);
    sk_X509_free(all);
    if (sc != NULL) {
        EVP_PKEY *k = X509_get0_pubkey(sc);
        if (X509_get_key_usage(a) & KU_KEY_CERT_SIGN)
            die("%s: the first certificate is the Guardian's signing certificate; the Guardian certificate (key "
                "agreement) comes first, as 'guardianctl cert' writes it",
                path);
        if (k == NULL || X509_NAME_cmp(X509_get_issuer_name(a), X509_get_subject_name(sc)) != 0 ||
            X509_verify(a, k) != 1)
            die("%s: the second certificate did not issue the first (expected the Guardian certificate, then its "
                "signing certificate)",
                path);
    }
    if (signing != NULL)
        *signing = sc;
    else
        X509_free(sc);
    return a;
}

/* The OEM signing key may live in a token: a pkcs11: URI (RFC 7512), loaded
 * through OpenSSL's libp11 engine (Debian 12 packages no PKCS#11 provider for
 * OpenSSL 3).  The PKCS#11 module is PKCS11_MODULE_PATH, else p11-kit's proxy. */
static EVP_PKEY *load_pkcs11_key(const char *uri)
{
    ENGINE *e;
    EVP_PKEY *k;
    const char *module = getenv("PKCS11_MODULE_PATH");

    ENGINE_load_builtin_engines();
    e = ENGINE_by_id("pkcs11");
    if (e == NULL)
        die("a pkcs11: key needs OpenSSL's pkcs11 engine (Debian: libengine-pkcs11-openssl)");
    if (module != NULL && ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module, 0) != 1)
        die("the pkcs11 engine refused MODULE_PATH %s", module);
    if (ENGINE_init(e) != 1)
        die("the pkcs11 engine did not initialize (module %s)", module ? module : "p11-kit-proxy");
    k = ENGINE_load_private_key(e, uri, NULL, NULL);
    if (k == NULL)
        die("no private key at %s (check token=, object= and pin-value= or pin-source=)", uri);
    ENGINE_finish(e);
    ENGINE_free(e);
    return k;
}

static EVP_PKEY *read_private_key(const char *path, struct passin *pass)
{
    size_t len;
    unsigned char *data;
    BIO *bio;
    EVP_PKEY *k;

    if (strncmp(path, "pkcs11:", 7) == 0)
        return load_pkcs11_key(path);
    data = read_all(path, 1 << 20, &len);
    bio = BIO_new_mem_buf(data, (int)len);
    pass->asked = 0;
    pass->path = path;
    k = PEM_read_bio_PrivateKey(bio, NULL, passin_cb, pass);
    if (k == NULL && pass->asked) {
        OPENSSL_cleanse(data, len);
        free(data);
        BIO_free(bio);
        if (pass->spec == NULL && pass->typed)
            die("cannot decrypt %s with the passphrase typed (wrong passphrase?)", path);
        if (pass->spec == NULL)
            die("%s is encrypted: give its passphrase with --passin pass:TEXT|env:VAR|file:PATH|fd:N|stdin (no terminal "
                "to ask on)",
                path);
        die("cannot decrypt %s with the passphrase from --passin %.*s (wrong passphrase?)", path,
            (int)strcspn(pass->spec, ":"), pass->spec);
    }
    if (k == NULL) {
        const unsigned char *p = data;
        ERR_clear_error();
        k = d2i_AutoPrivateKey(NULL, &p, (long)len);
    }
    OPENSSL_cleanse(data, len);
    free(data);
    BIO_free(bio);
    if (k == NULL)
        die("%s is not a private key (PEM, encrypted or not, or unencrypted DER)", path);
    return k;
}

static void print_hex(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
}

static const ASN1_OBJECT *package_oid(void)
{
    static ASN1_OBJECT *oid;
    if (oid == NULL && (oid = OBJ_txt2obj(GUARDIAN_OID_PACKAGE, 1)) == NULL)
        die("cannot parse the package OID");
    return oid;
}

/* ---- key transport (docs/package-format.md, "Key transport") ---------------- */

/* Z = ECDH(ephemeral, guardian).x; KEK per scheme.  Returns the ephemeral
 * public point in `eph_point` (uncompressed). */
static void make_kek(EVP_PKEY *guardian_pub, int scheme, const uint8_t package_id[16], const uint8_t target[32],
                     uint8_t kek[32], uint8_t *eph_point, size_t *eph_len)
{
    EVP_PKEY *eph = NULL;
    EVP_PKEY_CTX *kctx = NULL, *dctx = NULL;
    uint8_t z[66], ctx_hash[32];
    size_t zlen = sizeof(z);

    kctx = EVP_PKEY_CTX_new_from_pkey(NULL, guardian_pub, NULL);
    if (kctx == NULL || EVP_PKEY_keygen_init(kctx) != 1 || EVP_PKEY_keygen(kctx, &eph) != 1)
        die("cannot generate the ephemeral key on the Guardian's curve");
    if (EVP_PKEY_get_octet_string_param(eph, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, eph_point, 97, eph_len) != 1)
        die("cannot encode the ephemeral public key");
    dctx = EVP_PKEY_CTX_new_from_pkey(NULL, eph, NULL);
    if (dctx == NULL || EVP_PKEY_derive_init(dctx) != 1 || EVP_PKEY_derive_set_peer(dctx, guardian_pub) != 1 ||
        EVP_PKEY_derive(dctx, z, &zlen) != 1)
        die("ECDH with the Guardian's key failed");

    if (!guardian_kek_context(package_id, target, eph_point, *eph_len, ctx_hash))
        die("SHA-256 failed");

    if (scheme == GUARDIAN_KT_ECDH_AESCBC) {
        /* KEK = AES-256-CBC(key = first 32 bytes of Z, IV = 0, C): what
         * CKM_AES_CBC_ENCRYPT_DATA computes inside the token. */
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        uint8_t iv[16] = {0};
        int n1 = 0, n2 = 0;
        if (zlen < 32)
            die("shared secret shorter than 32 bytes");
        if (c == NULL || EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), NULL, z, iv) != 1 ||
            EVP_CIPHER_CTX_set_padding(c, 0) != 1 || EVP_EncryptUpdate(c, kek, &n1, ctx_hash, 32) != 1 ||
            EVP_EncryptFinal_ex(c, kek + n1, &n2) != 1 || n1 + n2 != 32)
            die("AES-CBC KDF failed");
        EVP_CIPHER_CTX_free(c);
    } else {
        /* KEK = ANSI X9.63 KDF with SHA-256 (CKD_SHA256_KDF), shared info C. */
        EVP_KDF *kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL);
        EVP_KDF_CTX *k = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z, zlen),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, ctx_hash, 32),
            OSSL_PARAM_construct_end(),
        };
        if (k == NULL || EVP_KDF_derive(k, kek, 32, params) != 1)
            die("X9.63 KDF failed");
        EVP_KDF_CTX_free(k);
        EVP_KDF_free(kdf);
    }
    OPENSSL_cleanse(z, sizeof(z));
    EVP_PKEY_CTX_free(kctx);
    EVP_PKEY_CTX_free(dctx);
    EVP_PKEY_free(eph);
}

/* id-guardian-kt-rsaoaep-sha256-v1: a fresh KEK, RSAES-OAEP (SHA-256,
 * MGF1-SHA-256, label C) to the Guardian's RSA key; the ciphertext in
 * `enc` (the modulus' length). */
static void make_kek_oaep(EVP_PKEY *guardian_pub, const uint8_t package_id[16], const uint8_t target[32],
                          uint8_t kek[32], uint8_t *enc, size_t *enc_len)
{
    uint8_t label[32];
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, guardian_pub, NULL);
    unsigned char *l = NULL;

    if (EVP_PKEY_get_bits(guardian_pub) < 2048 || EVP_PKEY_get_bits(guardian_pub) > 4096)
        die("the Guardian's RSA key must have 2048..4096 bits");
    if (RAND_bytes(kek, 32) != 1)
        die("no randomness for the key-encryption key");
    if (!guardian_kek_context(package_id, target, NULL, 0, label) || (l = OPENSSL_memdup(label, 32)) == NULL)
        die("SHA-256 failed");
    if (c == NULL || EVP_PKEY_encrypt_init(c) != 1 || EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256()) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256()) != 1 ||
        EVP_PKEY_CTX_set0_rsa_oaep_label(c, l, 32) != 1)
        die("cannot set up RSA-OAEP with SHA-256");
    if (EVP_PKEY_encrypt(c, enc, enc_len, kek, 32) != 1)
        die("RSA-OAEP encryption to the Guardian's key failed");
    EVP_PKEY_CTX_free(c);
}

/* Each key and confidential item under the KEK: RFC 5649 AES-256 key wrap
 * with padding (the ECDH schemes) or, for id-guardian-kt-rsaoaep-sha256-v1,
 * IV || AES-256-CBC with PKCS#7 padding (what CKM_AES_CBC_PAD unwraps; the
 * CMS signature, checked before any unwrap, covers every byte). */
static ASN1_OCTET_STRING *wrap(int scheme, const uint8_t kek[32], const uint8_t *in, size_t len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t *out = malloc(len + 48), *at = out;
    int n1 = 0, n2 = 0, iv_len = 0;
    ASN1_OCTET_STRING *s = ASN1_OCTET_STRING_new();

    if (c == NULL || out == NULL || s == NULL)
        die("out of memory");
    if (scheme == GUARDIAN_KT_RSAOAEP_SHA256) {
        iv_len = GUARDIAN_KT_RSAOAEP_IV_LEN;
        if (RAND_bytes(out, iv_len) != 1)
            die("no randomness for the IV");
        at = out + iv_len;
        if (EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), NULL, kek, out) != 1)
            die("AES-CBC failed");
    } else {
        EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        if (EVP_EncryptInit_ex(c, EVP_aes_256_wrap_pad(), NULL, kek, NULL) != 1)
            die("AES key wrap failed");
    }
    if (EVP_EncryptUpdate(c, at, &n1, in, (int)len) != 1 || EVP_EncryptFinal_ex(c, at + n1, &n2) != 1)
        die("AES key wrap failed");
    if (!ASN1_OCTET_STRING_set(s, out, iv_len + n1 + n2))
        die("out of memory");
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(out, len + 48);
    free(out);
    return s;
}

static GUARDIAN_WRAPPED_KEY *wrap_private_key(int scheme, const uint8_t kek[32], EVP_PKEY *key, const char *label)
{
    GUARDIAN_WRAPPED_KEY *w = GUARDIAN_WRAPPED_KEY_new();
    unsigned char *p8 = NULL;
    int n = i2d_PrivateKey(key, NULL) > 0 ? 0 : -1;
    PKCS8_PRIV_KEY_INFO *info = EVP_PKEY2PKCS8(key);

    if (w == NULL || info == NULL || n < 0)
        die("cannot encode the private key '%s' as PKCS#8", label);
    n = i2d_PKCS8_PRIV_KEY_INFO(info, &p8);
    if (n <= 0)
        die("cannot encode the private key '%s' as PKCS#8", label);
    ASN1_STRING_set(w->label, label, (int)strlen(label));
    ASN1_INTEGER_set(w->key_type, EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA ? 0x00 : 0x03);
    ASN1_OCTET_STRING_free(w->wrapped);
    w->wrapped = wrap(scheme, kek, p8, (size_t)n);
    OPENSSL_cleanse(p8, (size_t)n);
    OPENSSL_free(p8);
    PKCS8_PRIV_KEY_INFO_free(info);
    return w;
}

/* ---- create ------------------------------------------------------------------ */


struct create_opts {
    const char *guardian_cert, *signer_key, *signer_cert, *signer_chain;
    const char *ca_key, *ca_cert, *ca_chain, *ca_request;
    const char *oem_id, *product_id, *subject, *not_after, *out, *kdf;
    const char *key_usage, *ext_key_usage, *device_ext_oid;
    struct passin passin, ca_passin; /* ca_passin.spec NULL: the CA key takes --passin */
    int force, kdf_unlisted;
    time_t not_after_time;
    long release, validity_days;
    unsigned long long units;
    const char *extra_keys[GUARDIAN_PKG_MAX_ITEMS];
    int n_extra;
    const char *data[GUARDIAN_PKG_MAX_ITEMS];
    int data_conf[GUARDIAN_PKG_MAX_ITEMS];
    int n_data;
    /* --guardian-cert, each time given: more than one makes a group package. */
    const char *guardians[GUARDIAN_GROUP_MAX];
    int n_guardians;
};

static void set_utf8(ASN1_UTF8STRING *s, const char *v)
{
    if (!ASN1_STRING_set(s, v, (int)strlen(v)))
        die("out of memory");
}

/* "YYYY-MM-DD" (end of that day, UTC, a real date) or "+N" days from now
 * (N a whole number 1..36500); in the future.  A usage error otherwise. */
static time_t parse_not_after(const char *v)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    struct tm tm;
    int y, m, d, max;
    time_t t;

    memset(&tm, 0, sizeof(tm));
    if (v[0] == '+') {
        long n = 0;
        size_t len = strlen(v + 1);
        if (len == 0 || len > 5 || strspn(v + 1, "0123456789") != len || (n = strtol(v + 1, NULL, 10)) < 1 ||
            n > 36500)
            usage_die("create", "--not-after '%s': +DAYS needs a whole number of days, 1..36500", v);
        return time(NULL) + (time_t)n * 86400;
    }
    if (strlen(v) != 10 || v[4] != '-' || v[7] != '-' || strspn(v, "0123456789") != 4 ||
        strspn(v + 5, "0123456789") != 2 || strspn(v + 8, "0123456789") != 2)
        usage_die("create", "--not-after must be YYYY-MM-DD or +DAYS, not '%s'", v);
    y = atoi(v);
    m = atoi(v + 5);
    d = atoi(v + 8);
    if (m < 1 || m > 12)
        usage_die("create", "--not-after '%s' is not a date: no month %02d", v, m);
    max = mdays[m - 1] + (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    if (d < 1 || d > max)
        usage_die("create", "--not-after '%s' is not a date: %04d-%02d has %d days", v, y, m, max);
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;
    tm.tm_hour = 23;
    tm.tm_min = 59;
    tm.tm_sec = 59;
    t = timegm(&tm);
    if (t <= time(NULL))
        usage_die("create", "--not-after %s is in the past", v);
    return t;
}

static void key_usage_bits(ASN1_BIT_STRING *bits, const char *list)
{
    static const char *const names[] = {"digitalSignature", "nonRepudiation", "keyEncipherment",
                                        "dataEncipherment", "keyAgreement", "keyCertSign", "cRLSign"};
    char *copy = strdup(list), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
            if (strcmp(t, names[i]) == 0)
                found = i;
        if (found < 0)
            die("unknown key usage '%s' (use digitalSignature, keyAgreement, keyEncipherment, ...)", t);
        ASN1_BIT_STRING_set_bit(bits, found, 1);
    }
    free(copy);
}

/* "LABEL=PATH" → label (static buffer copy) and path. */
static void split_assignment(const char *arg, const char *what, char *label, size_t cap, const char **path)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg || eq[1] == '\0' || (size_t)(eq - arg) >= cap)
        die("%s expects NAME=FILE, not '%s'", what, arg);
    memcpy(label, arg, (size_t)(eq - arg));
    label[eq - arg] = '\0';
    *path = eq + 1;
}

/* SHA-256 of a certificate's DER: how a package names its target Guardian. */
static void cert_sha256(X509 *x, uint8_t out[32])
{
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), out, &n) != 1 || n != 32)
        die("cannot hash the Guardian certificate");
}

/* Write the signed package as the one encoding a Guardian accepts
 * (docs/package-format.md, "The container exactly as signed").  OpenSSL signs
 * ECDSA with whatever s comes out, but (r, s) and (r, n - s) both verify, so
 * the Guardian takes only the low-s form: half of all signatures are turned
 * into it here, by the public key (the private key may be in a token).  Then
 * what would be written is checked as a Guardian checks it. */
/* Write `len` bytes as `path` through a temporary file in the same folder
 * and a rename: a reader never sees half a file.  An existing `path` is kept
 * (and this fails, naming --force) unless `force`. */
static void write_new_file(const char *path, const unsigned char *data, size_t len, int force)
{
    char tmp[4096];
    mode_t mask = umask(0);
    int fd, placeholder = 0;
    size_t done = 0;

    umask(mask);
    if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp))
        die("%s: the name is too long", path);
    if (!force) {
        /* Claim the name first: two runs cannot both take it. */
        int p = open(path, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (p < 0 && errno == EEXIST)
            die("%s exists: not overwritten (give --force to replace it)", path);
        if (p < 0)
            die("cannot create %s: %s", path, strerror(errno));
        close(p);
        placeholder = 1;
    }
    fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        if (placeholder)
            unlink(path);
        die("cannot create a temporary file next to %s: %s", path, strerror(e));
    }
    fchmod(fd, 0666 & ~mask);
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    if (done != len || fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        if (placeholder)
            unlink(path);
        die("cannot write %s: %s", path, strerror(e));
    }
}

static void write_package(CMS_ContentInfo *cms, X509 *signer, const char *path, int force)
{
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    EVP_PKEY *pub = X509_get0_pubkey(signer);
    unsigned char *der = NULL;
    const unsigned char *p;
    CMS_ContentInfo *again;
    BIO *sink = BIO_new(BIO_s_null());
    const char *why;
    int len;

    if (si == NULL || pub == NULL || sink == NULL)
        die("cannot read back the CMS signature");
    if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC &&
        guardian_ecdsa_sig_make_low_s(pub, CMS_SignerInfo_get0_signature(si)) != 1)
        die("cannot put the ECDSA signature in low-s form");
    len = i2d_CMS_ContentInfo(cms, &der);
    p = der;
    again = len > 0 ? d2i_CMS_ContentInfo(NULL, &p, len) : NULL;
    if (again == NULL || CMS_verify(again, NULL, NULL, NULL, sink, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1)
        die("the package's signature does not verify");
    why = guardian_container_profile(again, der, (size_t)len, NULL);
    if (why != NULL)
        die("the package would be refused by a Guardian: %s", why);
    write_new_file(path, der, (size_t)len, force);
    BIO_free(sink);
    CMS_ContentInfo_free(again);
    OPENSSL_free(der);
}

/* ---- the Guardian-made production CA key (docs/guardian-wrap.md) ---------- */

/* A `guardianctl ca-request` file checked against the Guardian's
 * certificates (A, then S, as 'guardianctl cert' writes them): the CSR's own
 * signature (the key in the token signed it), the binding's signature by S,
 * that it binds this CSR to this Guardian (A's SHA-256) and to `oem`/`product`
 * (when not NULL).  Returns the CSR; *b gets the binding; dies otherwise. */
static X509_REQ *read_ca_request(const char *path, const char *guardian_path, const char *oem, const char *product,
                                 struct guardian_ca_binding *b)
{
    X509 *sc = NULL, *a = read_guardian(guardian_path, &sc);
    size_t len, bl = 0;
    unsigned char *text = read_all(path, 65536, &len), *csr_der = NULL;
    uint8_t *binding = NULL, target[32];
    X509_REQ *req = NULL;
    EVP_PKEY *pub;
    char err[256];
    int csr_len;

    if (sc == NULL)
        die("%s holds the Guardian certificate only: the binding is checked against its signing certificate, "
            "which follows it in what 'guardianctl cert' writes",
            guardian_path);
    if (!guardian_ca_request_parse((const char *)text, len, &req, &binding, &bl, err, sizeof(err)))
        die("%s: %s", path, err);
    pub = X509_REQ_get0_pubkey(req);
    if (pub == NULL || X509_REQ_verify(req, pub) != 1)
        die("%s: the CSR's own signature does not verify (altered?)", path);
    csr_len = i2d_X509_REQ(req, &csr_der);
    if (csr_len <= 0 || !guardian_ca_binding_check(binding, bl, X509_get0_pubkey(sc), csr_der, (size_t)csr_len, b,
                                                   err, sizeof(err)))
        die("%s: refused: %s", path, csr_len <= 0 ? "the CSR does not encode" : err);
    cert_sha256(a, target);
    if (CRYPTO_memcmp(target, b->guardian, sizeof(target)) != 0)
        die("%s: refused: the binding names another Guardian certificate than %s's", path, guardian_path);
    if ((oem != NULL && strcmp(oem, b->oem_id) != 0) || (product != NULL && strcmp(product, b->product_id) != 0))
        die("%s: refused: the key was made for %s/%s, not %s/%s", path, b->oem_id, b->product_id, oem ? oem : "*",
            product ? product : "*");
    ERR_clear_error();
    OPENSSL_free(csr_der);
    OPENSSL_free(binding);
    free(text);
    X509_free(a);
    X509_free(sc);
    return req;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e == NULL || X509_add_ext(x, e, -1) != 1)
        die("cannot add an extension to the production CA certificate");
    X509_EXTENSION_free(e);
}

static int cmd_certify_ca(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"csr", required_argument, NULL, 'r'},       {"guardian-cert", required_argument, NULL, 'g'},
        {"ca-key", required_argument, NULL, 'K'},    {"ca-cert", required_argument, NULL, 'A'},
        {"oem-id", required_argument, NULL, 'O'},    {"product-id", required_argument, NULL, 'P'},
        {"days", required_argument, NULL, 'd'},      {"out", required_argument, NULL, 'o'},
        {"passin", required_argument, NULL, 'p'},    {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0}};
    const char *csr_path = NULL, *guardian = NULL, *ca_key_path = NULL, *ca_cert_path = NULL, *out = NULL;
    const char *oem = NULL, *product = NULL;
    struct passin passin = {0};
    long days = 3650;
    int force = 0, c, len;
    char *end;
    struct guardian_ca_binding b;
    X509_REQ *req;
    X509 *issuer, *x;
    EVP_PKEY *ca_key;
    unsigned char serial[16];
    BIGNUM *bn;
    BIO *pem;
    char *text;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': csr_path = optarg; break;
        case 'g': guardian = optarg; break;
        case 'K': ca_key_path = optarg; break;
        case 'A': ca_cert_path = optarg; break;
        case 'O': oem = optarg; break;
        case 'P': product = optarg; break;
        case 'o': out = optarg; break;
        case 'F': force = 1; break;
        case 'd':
            days = strtol(optarg, &end, 10);
            if (*end != '\0' || days < 1 || days > 36500)
                usage_die("certify-ca", "--days must be 1..36500, not '%s'", optarg);
            break;
        case 'p':
            if (!passin_spec_valid(optarg))
                usage_die("certify-ca", "--passin '%s': use pass:TEXT, env:VAR, file:PATH, fd:N or stdin", optarg);
            passin.spec = optarg;
            break;
        default: bad_option("certify-ca", c, argv);
        }
    }
    if (optind != argc)
        usage_die("certify-ca", "unexpected argument '%s'", argv[optind]);
    if (csr_path == NULL || guardian == NULL || ca_key_path == NULL || ca_cert_path == NULL || out == NULL ||
        oem == NULL || product == NULL)
        usage_die("certify-ca", "needs --csr, --guardian-cert, --ca-key, --ca-cert, --oem-id, --product-id and --out");
    if (!force && access(out, F_OK) == 0)
        die("%s exists: not overwritten (give --force to replace it)", out);

    req = read_ca_request(csr_path, guardian, oem, product, &b);
    issuer = read_cert(ca_cert_path);
    if (!(X509_get_extension_flags(issuer) & EXFLAG_CA) || !(X509_get_key_usage(issuer) & KU_KEY_CERT_SIGN))
        die("%s is not a CA certificate that may sign certificates", ca_cert_path);
    ca_key = read_private_key(ca_key_path, &passin);
    if (X509_check_private_key(issuer, ca_key) != 1)
        die("%s does not match the public key of %s", ca_key_path, ca_cert_path);
    x = X509_new();
    if (x == NULL || RAND_bytes(serial, sizeof(serial)) != 1)
        die("out of memory");
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (bn == NULL || X509_set_version(x, 2) != 1 || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
        X509_set_subject_name(x, X509_REQ_get_subject_name(req)) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(issuer)) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), days * 86400L) == NULL ||
        X509_set_pubkey(x, X509_REQ_get0_pubkey(req)) != 1)
        die("cannot build the production CA certificate");
    /* Within the issuer's validity: `openssl verify` checks both. */
    if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(issuer)) > 0)
        X509_set1_notAfter(x, X509_get0_notAfter(issuer));
    add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(x, issuer, NID_subject_key_identifier, "hash");
    add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    if (X509_sign(x, ca_key, EVP_sha256()) <= 0)
        die("cannot sign the production CA certificate with %s", ca_key_path);
    passin_wipe(&passin);
    pem = BIO_new(BIO_s_mem());
    if (pem == NULL || PEM_write_bio_X509(pem, x) != 1)
        die("out of memory");
    len = (int)BIO_get_mem_data(pem, &text);
    write_new_file(out, (unsigned char *)text, (size_t)len, force);
    printf("wrote %s: production CA certificate for %s/%s (key made in the Guardian, key ID ", out, b.oem_id,
           b.product_id);
    print_hex(b.key_id, sizeof(b.key_id));
    printf(")\n  next: guardian-wrap create --ca-cert %s --ca-request %s ... (no --ca-key)\n", out, csr_path);
    BIO_free(pem);
    BN_free(bn);
    X509_free(x);
    X509_free(issuer);
    EVP_PKEY_free(ca_key);
    X509_REQ_free(req);
    return 0;
}

struct group_member_in {
    uint8_t digest[32];
    X509 *a;
    const char *path;
};

static int member_cmp(const void *x, const void *y)
{
    return memcmp(((const struct group_member_in *)x)->digest, ((const struct group_member_in *)y)->digest, 32);
}

/* A group package (docs/package-format.md, "A package for a group of
 * Guardians"): a fresh package KEK, and for each member in ascending order of
 * its certificate digest its own ephemeral key and the package KEK wrapped
 * (RFC 5649) under the member's KEK, which is derived as a one-Guardian
 * package's with the member's digest as the target.  Every member must offer
 * `scheme` (the first member's choice).  Returns the members; `target` gets
 * the group ID, `kek` the package KEK. */
static STACK_OF(GUARDIAN_GROUP_MEMBER) *make_group(const struct create_opts *o, int scheme, const uint8_t id[16],
                                                   uint8_t kek[32], uint8_t target[32])
{
    struct group_member_in in[GUARDIAN_GROUP_MAX];
    uint8_t digests[GUARDIAN_GROUP_MAX * 32];
    STACK_OF(GUARDIAN_GROUP_MEMBER) *out = sk_GUARDIAN_GROUP_MEMBER_new_null();
    char err[GUARDIAN_TRANSPORTS_MAX * (GUARDIAN_TRANSPORT_OID_MAX + 24) + 400];

    if (out == NULL || RAND_bytes(kek, 32) != 1)
        die("no randomness for the package key-encryption key");
    for (int i = 0; i < o->n_guardians; i++) {
        struct guardian_transports offered;
        EVP_PKEY *pub;
        in[i].path = o->guardians[i];
        in[i].a = read_guardian(o->guardians[i], NULL);
        pub = X509_get0_pubkey(in[i].a);
        if (pub == NULL || EVP_PKEY_get_base_id(pub) != EVP_PKEY_EC)
            die("%s: a group package is for EC Guardians (ECDH key transport); this certificate carries no EC key",
                o->guardians[i]);
        if (!guardian_transports_read(in[i].a, &offered, err, sizeof(err)))
            die("%s: %s", o->guardians[i], err);
        if (guardian_transport_choose(&offered, scheme, o->kdf_unlisted, err, sizeof(err)) != scheme)
            die("%s: a group package uses one transport for every member, %s, and this Guardian does not offer it: "
                "%s", o->guardians[i], guardian_transport_name(scheme), err);
        cert_sha256(in[i].a, in[i].digest);
    }
    qsort(in, (size_t)o->n_guardians, sizeof(in[0]), member_cmp);
    for (int i = 0; i < o->n_guardians; i++) {
        GUARDIAN_GROUP_MEMBER *m = GUARDIAN_GROUP_MEMBER_new();
        uint8_t member_kek[32], eph[97];
        size_t eph_len = 0;
        ASN1_OCTET_STRING *w;
        if (i > 0 && memcmp(in[i - 1].digest, in[i].digest, 32) == 0)
            die("%s and %s are the same Guardian certificate: name each member once", in[i - 1].path, in[i].path);
        if (m == NULL)
            die("out of memory");
        make_kek(X509_get0_pubkey(in[i].a), scheme, id, in[i].digest, member_kek, eph, &eph_len);
        w = wrap(scheme, member_kek, kek, 32);
        OPENSSL_cleanse(member_kek, sizeof(member_kek));
        ASN1_OCTET_STRING_set(m->guardian, in[i].digest, 32);
        ASN1_OCTET_STRING_set(m->ephemeral_key, eph, (int)eph_len);
        ASN1_OCTET_STRING_free(m->wrapped_kek);
        m->wrapped_kek = w;
        sk_GUARDIAN_GROUP_MEMBER_push(out, m);
        memcpy(digests + (size_t)i * 32, in[i].digest, 32);
        X509_free(in[i].a);
    }
    if (!guardian_group_id(digests, (size_t)o->n_guardians, target))
        die("SHA-256 failed");
    return out;
}

static int create_package(struct create_opts *o)
{
    X509 *guardian = read_guardian(o->guardian_cert, NULL), *signer = read_cert(o->signer_cert);
    X509 *ca_cert = read_cert(o->ca_cert);
    STACK_OF(X509) *signer_chain = o->signer_chain ? read_certs(o->signer_chain) : sk_X509_new_null();
    EVP_PKEY *signer_key = read_private_key(o->signer_key, &o->passin);
    /* --ca-request: the CA key is the Guardian's own (format version 2). */
    EVP_PKEY *ca_key =
        o->ca_key ? read_private_key(o->ca_key, o->ca_passin.spec ? &o->ca_passin : &o->passin) : NULL;
    EVP_PKEY *guardian_pub = X509_get0_pubkey(guardian);
    struct guardian_ca_binding binding;
    int secrets = o->n_extra > 0;
    GUARDIAN_PACKAGE *pkg = GUARDIAN_PACKAGE_new();
    uint8_t kek[32], eph[512], target[32], id[16];
    size_t eph_len = 0;
    int scheme, requested, n;
    struct guardian_transports offered;
    char err[GUARDIAN_TRANSPORTS_MAX * (GUARDIAN_TRANSPORT_OID_MAX + 24) + 400],
        offers[GUARDIAN_TRANSPORTS_MAX * (GUARDIAN_TRANSPORT_OID_MAX + 24) + 160];
    unsigned char *der = NULL;
    BIO *content = NULL;
    CMS_ContentInfo *cms = NULL;
    CMS_SignerInfo *si = NULL;
    STACK_OF(X509) *signer_path = NULL;
    time_t not_after = o->not_after_time;

    if (pkg == NULL)
        die("out of memory");
    if (guardian_pub == NULL ||
        (EVP_PKEY_get_base_id(guardian_pub) != EVP_PKEY_EC && EVP_PKEY_get_base_id(guardian_pub) != EVP_PKEY_RSA))
        die("%s: the Guardian certificate must carry an EC key (P-256 or P-384) or an RSA key", o->guardian_cert);
    if (X509_check_private_key(signer, signer_key) != 1)
        die("%s does not match the public key of %s", o->signer_key, o->signer_cert);
    if (ca_key != NULL && X509_check_private_key(ca_cert, ca_key) != 1)
        die("%s does not match the public key of %s", o->ca_key, o->ca_cert);
    if (ca_key == NULL) {
        X509_REQ *req = read_ca_request(o->ca_request, o->guardian_cert, o->oem_id, o->product_id, &binding);
        if (EVP_PKEY_eq(X509_REQ_get0_pubkey(req), X509_get0_pubkey(ca_cert)) != 1)
            die("%s is not a certificate for the key of %s (another key's certificate)", o->ca_cert, o->ca_request);
        X509_REQ_free(req);
    }
    for (int i = 0; i < o->n_data; i++)
        secrets |= o->data_conf[i];

    /* The Guardian certificate states what its token imports with
     * (id-guardian-transports, measured there when it was made); without
     * the statement, aes-cbc only, what every Guardian could do before. */
    if (!guardian_transports_read(guardian, &offered, err, sizeof(err)))
        die("%s: %s", o->guardian_cert, err);
    requested = strcmp(o->kdf, "auto") == 0 ? 0 : guardian_transport_by_name(o->kdf);
    if (requested != GUARDIAN_KT_ECDH_AESCBC && requested != GUARDIAN_KT_ECDH_SHA256KDF &&
        requested != GUARDIAN_KT_RSAOAEP_SHA256 && requested != 0)
        die("--kdf must be auto, aes-cbc, x963-sha256 or rsa-oaep-sha256");
    guardian_transports_describe(&offered, offers, sizeof(offers));

    if (ca_key == NULL)
        memcpy(id, binding.key_id, sizeof(id)); /* the key's CKA_ID: one package per key */
    else if (RAND_bytes(id, sizeof(id)) != 1)
        die("no randomness for the package ID");
    cert_sha256(guardian, target);
    /* No secret to carry (a Guardian-made CA key, no extra key, no secret
     * item): no key transport at all, and the Guardian needs no ECDH. */
    if (ca_key == NULL && !secrets) {
        scheme = GUARDIAN_KT_NONE;
    } else {
        /* An RSA Guardian (a token without EC) imports with RSA-OAEP, an EC
         * one with ECDH: the key type decides what can be chosen at all. */
        if ((scheme = guardian_transport_choose(&offered, requested, o->kdf_unlisted, err, sizeof(err))) == 0)
            die("%s: %s", o->guardian_cert, err);
        if (scheme == GUARDIAN_KT_RSAOAEP_SHA256) {
            eph_len = sizeof(eph);
            make_kek_oaep(guardian_pub, id, target, kek, eph, &eph_len);
        } else if (o->n_guardians > 1) {
            if (scheme == GUARDIAN_KT_RSAOAEP_SHA256)
                die("%s: a group package is for EC Guardians (ECDH key transport)", o->guardian_cert);
            pkg->group = make_group(o, scheme, id, kek, target);
        } else
            make_kek(guardian_pub, scheme, id, target, kek, eph, &eph_len);
    }

    ASN1_INTEGER_set(pkg->version, ca_key ? GUARDIAN_PACKAGE_VERSION : GUARDIAN_PACKAGE_VERSION_CA_IN_GUARDIAN);
    ASN1_OCTET_STRING_set(pkg->package_id, id, sizeof(id));
    ASN1_OCTET_STRING_set(pkg->target_guardian, target, sizeof(target));
    set_utf8(pkg->oem_id, o->oem_id);
    set_utf8(pkg->product_id, o->product_id);
    ASN1_INTEGER_set_uint64(pkg->release_version, (uint64_t)o->release);
    ASN1_INTEGER_set_uint64(pkg->authorised_units, o->units);
    if (ASN1_GENERALIZEDTIME_set(pkg->not_after, not_after) == NULL)
        die("cannot encode --not-after");
    {
        /* The module refuses a pattern it cannot fill: refuse it here, before
         * the package travels (same parser, mechs/cert_builder.c). */
        struct guardian_subject_pattern pat;
        char perr_buf[160];
        uint8_t name[4096];
        if (!guardian_subject_pattern_parse(o->subject, strlen(o->subject), &pat, perr_buf, sizeof(perr_buf)))
            die("--subject: %s", perr_buf);
        /* The OEM and product IDs are known now: a PrintableString value
         * they make unwritable ('_' in C or serialNumber) is refused here,
         * not at every device ("A" stands for a device ID that fits). */
        if (guardian_subject_der(&pat, "A", o->oem_id, o->product_id, name, sizeof(name), perr_buf,
                                 sizeof(perr_buf)) == 0)
            die("--subject: %s", perr_buf);
    }
    set_utf8(pkg->cert_template->subject, o->subject);
    if (o->device_ext_oid != NULL) {
        pkg->cert_template->device_ext_oid = OBJ_txt2obj(o->device_ext_oid, 1);
        if (pkg->cert_template->device_ext_oid == NULL ||
            !guardian_device_ext_oid_ok(pkg->cert_template->device_ext_oid))
            die("--device-ext-oid: '%s' is not a usable OID (dotted numbers; not under 2.5.29 or 1.3.6.1.5.5.7)",
                o->device_ext_oid);
    } else {
        /* No OID given: say "no device-identity extension" in the signed
         * template ([1] noDeviceExt); a template with neither field means the
         * legacy 2.25 default (docs/certificate-profile.md). */
        pkg->cert_template->no_device_ext = ASN1_NULL_new();
        if (pkg->cert_template->no_device_ext == NULL)
            die("out of memory");
    }
    ASN1_INTEGER_set(pkg->cert_template->validity_days, o->validity_days);
    key_usage_bits(pkg->cert_template->key_usage, o->key_usage);
    if (o->ext_key_usage != NULL) {
        char *copy = strdup(o->ext_key_usage), *save = NULL;
        pkg->cert_template->ext_key_usage = sk_ASN1_OBJECT_new_null();
        for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
            ASN1_OBJECT *obj = OBJ_txt2obj(t, 0);
            if (obj == NULL)
                die("unknown extended key usage '%s' (e.g. clientAuth, serverAuth or an OID)", t);
            sk_ASN1_OBJECT_push(pkg->cert_template->ext_key_usage, obj);
        }
        free(copy);
    }
    ASN1_OBJECT_free(pkg->transport->scheme);
    pkg->transport->scheme = OBJ_txt2obj(scheme == GUARDIAN_KT_NONE              ? GUARDIAN_OID_KT_NONE
                                         : scheme == GUARDIAN_KT_ECDH_AESCBC     ? GUARDIAN_OID_KT_ECDH_AESCBC
                                         : scheme == GUARDIAN_KT_RSAOAEP_SHA256 ? GUARDIAN_OID_KT_RSAOAEP_SHA256
                                                                                 : GUARDIAN_OID_KT_ECDH_SHA256KDF,
                                         1);
    ASN1_OCTET_STRING_set(pkg->transport->ephemeral_key, eph, (int)eph_len);

    GUARDIAN_WRAPPED_KEY_free(pkg->production_ca->key);
    if (ca_key != NULL) {
        pkg->production_ca->key = wrap_private_key(scheme, kek, ca_key, "production-ca");
    } else {
        /* Version 2: the key's type and label, no bytes: it is in the Guardian. */
        GUARDIAN_WRAPPED_KEY *k = GUARDIAN_WRAPPED_KEY_new();
        if (k == NULL)
            die("out of memory");
        set_utf8(k->label, "production-ca");
        ASN1_INTEGER_set(k->key_type, EVP_PKEY_get_base_id(X509_get0_pubkey(ca_cert)) == EVP_PKEY_RSA ? 0x00 : 0x03);
        pkg->production_ca->key = k;
    }
    X509_up_ref(ca_cert);
    sk_X509_push(pkg->production_ca->chain, ca_cert);
    if (o->ca_chain != NULL) {
        STACK_OF(X509) *chain = read_certs(o->ca_chain);
        X509 *x;
        while ((x = sk_X509_shift(chain)) != NULL)
            sk_X509_push(pkg->production_ca->chain, x);
        sk_X509_free(chain);
    }
    for (int i = 0; i < o->n_extra; i++) {
        char label[GUARDIAN_PKG_NAME_MAX + 1];
        const char *path;
        EVP_PKEY *k;
        split_assignment(o->extra_keys[i], "--extra-key", label, sizeof(label), &path);
        k = read_private_key(path, &o->passin);
        if (pkg->extra_keys == NULL)
            pkg->extra_keys = sk_GUARDIAN_WRAPPED_KEY_new_null();
        sk_GUARDIAN_WRAPPED_KEY_push(pkg->extra_keys, wrap_private_key(scheme, kek, k, label));
        EVP_PKEY_free(k);
    }
    for (int i = 0; i < o->n_data; i++) {
        char name[GUARDIAN_PKG_NAME_MAX + 1];
        const char *path;
        size_t len;
        unsigned char *value;
        GUARDIAN_DATA_ITEM *item = GUARDIAN_DATA_ITEM_new();
        split_assignment(o->data[i], o->data_conf[i] ? "--secret-data" : "--data", name, sizeof(name), &path);
        /* The wrapping adds up to 16 bytes (RFC 5649) or 32 (IV and padding). */
        value = read_all(path, GUARDIAN_PKG_MAX_DATA_BYTES - (o->data_conf[i] ? 32 : 16), &len);
        set_utf8(item->name, name);
        ASN1_ENUMERATED_set(item->protection, o->data_conf[i] ? GUARDIAN_DATA_CONFIDENTIAL : GUARDIAN_DATA_INTEGRITY);
        if (o->data_conf[i]) {
            ASN1_OCTET_STRING_free(item->value);
            item->value = wrap(scheme, kek, value, len);
            OPENSSL_cleanse(value, len);
        } else {
            ASN1_OCTET_STRING_set(item->value, value, (int)len);
        }
        free(value);
        if (pkg->data_items == NULL)
            pkg->data_items = sk_GUARDIAN_DATA_ITEM_new_null();
        sk_GUARDIAN_DATA_ITEM_push(pkg->data_items, item);
    }
    OPENSSL_cleanse(kek, sizeof(kek));

    n = i2d_GUARDIAN_PACKAGE(pkg, &der);
    if (n <= 0)
        die("cannot encode the package");
    {
        /* What we wrote must pass the Guardian's own decoder. */
        struct guardian_package check;
        if (!guardian_package_decode(der, (size_t)n, &check, err, sizeof(err)))
            die("invalid package: %s", err);
        guardian_package_free(&check);
    }

    /* The certificates it carries: the signer's, then its path up to (not
     * including) the root; a Guardian refuses any other set. */
    signer_path = guardian_signer_path(signer, signer_chain);
    if (signer_path == NULL)
        die("out of memory");
    for (int i = 0; i < sk_X509_num(signer_chain); i++) {
        X509 *x = sk_X509_value(signer_chain, i), *top = sk_X509_value(signer_path, sk_X509_num(signer_path) - 1);
        int on_path = 0;
        for (int j = 0; j < sk_X509_num(signer_path); j++)
            on_path |= X509_cmp(x, sk_X509_value(signer_path, j)) == 0;
        if (on_path || (X509_self_signed(x, 0) == 1 && X509_check_issued(x, top) == X509_V_OK))
            continue; /* the root is not carried: the Guardian has it enrolled */
        {
            char *name = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
            die("--signer-chain: %s is not on the signer's path to its root (a Guardian refuses a package that "
                "carries any other certificate)", name ? name : "a certificate");
        }
    }

    content = BIO_new_mem_buf(der, n);
    cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP);
    if (cms == NULL || CMS_set1_eContentType(cms, package_oid()) != 1 ||
        (si = CMS_add1_signer(cms, signer, signer_key, EVP_sha256(), CMS_BINARY | CMS_NOSMIMECAP)) == NULL)
        die("cannot set up the CMS signature");
    for (int i = 1; i < sk_X509_num(signer_path); i++)
        if (CMS_add1_cert(cms, sk_X509_value(signer_path, i)) != 1)
            die("cannot add the signer's chain to the package");
    {
        /* The certificates' bytes are signed too (SigningCertificateV2). */
        unsigned char *attr = NULL;
        int attr_len = guardian_signing_cert_attr(signer_path, &attr);
        ASN1_STRING *seq = ASN1_STRING_new();
        if (attr_len < 0 || seq == NULL || ASN1_STRING_set(seq, attr, attr_len) != 1 ||
            CMS_signed_add1_attr_by_NID(si, NID_id_smime_aa_signingCertificateV2, V_ASN1_SEQUENCE, seq, -1) != 1)
            die("cannot add the signingCertificateV2 attribute");
        ASN1_STRING_free(seq);
        OPENSSL_free(attr);
    }
    if (CMS_final(cms, content, NULL, CMS_BINARY) != 1)
        die("cannot sign the package");
    passin_wipe(&o->passin);
    passin_wipe(&o->ca_passin);
    write_package(cms, signer, o->out, o->force);

    printf("wrote %s\n  package id   ", o->out);
    print_hex(id, sizeof(id));
    if (pkg->group != NULL) {
        /* pkg is freed below: its members are still here. */
        printf("\n  for a group of %d Guardians, group ID sha256:", sk_GUARDIAN_GROUP_MEMBER_num(pkg->group));
        print_hex(target, sizeof(target));
        for (int i = 0; i < sk_GUARDIAN_GROUP_MEMBER_num(pkg->group); i++) {
            printf("\n    member     sha256:");
            print_hex(ASN1_STRING_get0_data(sk_GUARDIAN_GROUP_MEMBER_value(pkg->group, i)->guardian), 32);
        }
    } else {
        printf("\n  for Guardian sha256:");
        print_hex(target, sizeof(target));
    }
    {
        char when[32];
        struct tm tm;
        if (gmtime_r(&o->not_after_time, &tm) == NULL || strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
            snprintf(when, sizeof(when), "%s", o->not_after);
        printf("\n  product      %s/%s release %ld, %llu units, not after %s\n", o->oem_id, o->product_id,
               o->release, o->units, when);
    }
    printf("  transport    %s (%s)%s\n  the Guardian offers %s\n", guardian_transport_name(scheme),
           guardian_transport_oid(scheme),
           scheme == GUARDIAN_KT_NONE ? ", no secret travels"
           : requested == 0           ? ", chosen by --kdf auto"
                                      : "",
           offers);
    if (scheme != GUARDIAN_KT_NONE && requested != 0 && guardian_transport_choose(&offered, requested, 0, err,
                                                                                  sizeof(err)) == 0)
        fprintf(stderr, PROG ": warning: --kdf-unlisted: the Guardian certificate does not list %s: its Guardian "
                        "will refuse the package (CKR_GUARDIAN_TRANSPORT_UNSUPPORTED) unless its token runs it\n",
                guardian_transport_name(scheme));

    CMS_ContentInfo_free(cms);
    BIO_free(content);
    OPENSSL_free(der);
    GUARDIAN_PACKAGE_free(pkg);
    EVP_PKEY_free(signer_key);
    EVP_PKEY_free(ca_key);
    X509_free(guardian);
    X509_free(signer);
    X509_free(ca_cert);
    sk_X509_pop_free(signer_chain, X509_free);
    sk_X509_pop_free(signer_path, X509_free);
    return 0;
}

static int cmd_create(int argc, char **argv)
{
    struct create_opts o = {.release = -1, .validity_days = 3650, .kdf = "auto", .key_usage = "digitalSignature",
                            .subject = "CN=${device_id},OU=${product_id},O=${oem_id}"};
    static const struct option longopts[] = {
        {"guardian-cert", required_argument, NULL, 'g'}, {"signer-key", required_argument, NULL, 'k'},
        {"signer-cert", required_argument, NULL, 'c'},   {"signer-chain", required_argument, NULL, 'C'},
        {"ca-key", required_argument, NULL, 'K'},        {"ca-cert", required_argument, NULL, 'A'},
        {"ca-chain", required_argument, NULL, 'H'},      {"oem-id", required_argument, NULL, 'O'},
        {"product-id", required_argument, NULL, 'P'},    {"release", required_argument, NULL, 'r'},
        {"units", required_argument, NULL, 'u'},         {"not-after", required_argument, NULL, 'n'},
        {"subject", required_argument, NULL, 's'},       {"validity-days", required_argument, NULL, 'v'},
        {"key-usage", required_argument, NULL, 'U'},     {"ext-key-usage", required_argument, NULL, 'E'},
        {"extra-key", required_argument, NULL, 'x'},     {"data", required_argument, NULL, 'd'},
        {"secret-data", required_argument, NULL, 'D'},   {"kdf", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},           {"force", no_argument, NULL, 'F'},
        {"kdf-unlisted", no_argument, NULL, 'L'},
        {"passin", required_argument, NULL, 'p'},        {"ca-passin", required_argument, NULL, 'a'},
        {"device-ext-oid", required_argument, NULL, 'X'}, {"ca-request", required_argument, NULL, 'R'},
        {NULL, 0, NULL, 0}};
    int c;
    char *end;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'g':
            if (o.n_guardians == GUARDIAN_GROUP_MAX)
                usage_die("create", "at most %d --guardian-cert (a group package names up to %d Guardians)",
                          GUARDIAN_GROUP_MAX, GUARDIAN_GROUP_MAX);
            o.guardians[o.n_guardians++] = optarg;
            if (o.guardian_cert == NULL)
                o.guardian_cert = optarg;
            break;
        case 'k': o.signer_key = optarg; break;
        case 'c': o.signer_cert = optarg; break;
        case 'C': o.signer_chain = optarg; break;
        case 'K': o.ca_key = optarg; break;
        case 'A': o.ca_cert = optarg; break;
        case 'R': o.ca_request = optarg; break;
        case 'H': o.ca_chain = optarg; break;
        case 'O': o.oem_id = optarg; break;
        case 'P': o.product_id = optarg; break;
        case 'r':
            o.release = strtol(optarg, &end, 10);
            if (*end != '\0' || o.release < 0 || o.release > 4294967295L)
                usage_die("create", "--release must be 0..4294967295, not '%s'", optarg);
            break;
        case 'u':
            o.units = strtoull(optarg, &end, 10);
            if (*end != '\0' || o.units < 1 || o.units > (1ULL << 40))
                usage_die("create", "--units must be 1..2^40, not '%s'", optarg);
            break;
        case 'n': o.not_after = optarg; break;
        case 's': o.subject = optarg; break;
        case 'v':
            o.validity_days = strtol(optarg, &end, 10);
            if (*end != '\0' || o.validity_days < 1 || o.validity_days > 36500)
                usage_die("create", "--validity-days must be 1..36500, not '%s'", optarg);
            break;
        case 'U': o.key_usage = optarg; break;
        case 'E': o.ext_key_usage = optarg; break;
        case 'X': o.device_ext_oid = optarg; break;
        case 'x':
            if (o.n_extra == GUARDIAN_PKG_MAX_ITEMS)
                usage_die("create", "at most %d --extra-key", GUARDIAN_PKG_MAX_ITEMS);
            o.extra_keys[o.n_extra++] = optarg;
            break;
        case 'd':
        case 'D':
            if (o.n_data == GUARDIAN_PKG_MAX_ITEMS)
                usage_die("create", "at most %d data items", GUARDIAN_PKG_MAX_ITEMS);
            o.data_conf[o.n_data] = c == 'D';
            o.data[o.n_data++] = optarg;
            break;
        case 'f': o.kdf = optarg; break;
        case 'L': o.kdf_unlisted = 1; break;
        case 'o': o.out = optarg; break;
        case 'p':
        case 'a':
            if (!passin_spec_valid(optarg))
                usage_die("create", "--%s '%s': use pass:TEXT, env:VAR, file:PATH, fd:N or stdin", c == 'p' ? "passin" : "ca-passin",
                          optarg);
            (c == 'p' ? &o.passin : &o.ca_passin)->spec = optarg;
            break;
        case 'F': o.force = 1; break;
        default: bad_option("create", c, argv);
        }
    }
    if (optind != argc)
        usage_die("create", "unexpected argument '%s'", argv[optind]);
#define REQUIRE(field, flag)                                                                                    \
    if (o.field == NULL)                                                                                        \
        usage_die("create", "missing --" flag);
    REQUIRE(guardian_cert, "guardian-cert");
    REQUIRE(signer_key, "signer-key");
    REQUIRE(signer_cert, "signer-cert");
    if ((o.ca_key == NULL) == (o.ca_request == NULL))
        usage_die("create", "give --ca-key (the CA key travels, wrapped) or --ca-request (the CA key was made in "
                            "the Guardian by 'guardianctl ca-request'), not both");
    if (o.n_guardians > 1 && o.ca_request != NULL)
        usage_die("create", "a group package (--guardian-cert more than once) carries its production CA key "
                            "(--ca-key): a key made in one Guardian (--ca-request) cannot be shared by a group");
    REQUIRE(ca_cert, "ca-cert");
    REQUIRE(oem_id, "oem-id");
    REQUIRE(product_id, "product-id");
    REQUIRE(not_after, "not-after");
    REQUIRE(out, "out");
    if (o.release < 0)
        usage_die("create", "missing --release");
    if (o.units == 0)
        usage_die("create", "missing --units");
    o.not_after_time = parse_not_after(o.not_after);
    /* Before any key is read or passphrase asked: the answer would be the same. */
    if (!o.force && access(o.out, F_OK) == 0)
        die("%s exists: not overwritten (give --force to replace it)", o.out);
    return create_package(&o);
}

/* ---- inspect ------------------------------------------------------------------ */

static void print_time(const char *label, int64_t t)
{
    char buf[64];
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm); /* ISO 8601, as every time the tools print */
    printf("%s%s", label, buf);
}

static void print_name(const char *label, const X509_NAME *name)
{
    char *s = X509_NAME_oneline(name, NULL, 0);
    printf("%s%s\n", label, s ? s : "?");
    OPENSSL_free(s);
}

static const char *key_type_name(const ASN1_INTEGER *t)
{
    switch (ASN1_INTEGER_get(t)) {
    case 0x00: return "RSA private key";
    case 0x03: return "EC private key";
    case 0x10: return "generic secret";
    case 0x1f: return "AES key";
    default: return "?";
    }
}

static int cmd_inspect(int argc, char **argv)
{
    static const struct option longopts[] = {{"oem-root", required_argument, NULL, 'r'},
                                             {"guardian-cert", required_argument, NULL, 'g'},
                                             {NULL, 0, NULL, 0}};
    const char *root_path = NULL, *guardian_path = NULL, *path, *why;
    BIO *content = BIO_new(BIO_s_mem());
    unsigned char *file;
    const unsigned char *p;
    size_t file_len = 0;
    CMS_ContentInfo *cms;
    X509_STORE *store = NULL;
    STACK_OF(X509) *signers;
    struct guardian_package pkg;
    char err[256];
    const unsigned char *data;
    long dlen;
    int c, problems = 0;
    struct guardian_transports offered;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': root_path = optarg; break;
        case 'g': guardian_path = optarg; break;
        default: bad_option("inspect", c, argv);
        }
    }
    if (optind != argc - 1)
        usage_die("inspect", "takes exactly one PACKAGE");
    path = argv[optind];

    file = read_all(path, GUARDIAN_PACKAGE_MAX_BYTES, &file_len);
    p = file;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)file_len);
    if (cms == NULL || p != file + file_len)
        die("%s is not a Guardian package: not a DER CMS structure", path);
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
        OBJ_cmp(CMS_get0_eContentType(cms), package_oid()) != 0)
        die("%s is not a Guardian package: CMS content is not signed id-guardian-package", path);

    if (root_path != NULL) {
        STACK_OF(X509) *roots = read_certs(root_path);
        store = X509_STORE_new();
        for (int i = 0; i < sk_X509_num(roots); i++)
            X509_STORE_add_cert(store, sk_X509_value(roots, i));
        sk_X509_pop_free(roots, X509_free);
    }
    if (CMS_verify(cms, NULL, store, NULL, content,
                   CMS_BINARY | (store == NULL ? CMS_NO_SIGNER_CERT_VERIFY : 0)) != 1) {
        printf("signature    INVALID%s\n", store ? " (or the signer does not chain to the given root)" : "");
        problems++;
        /* Show what is there all the same, marked unverified. */
        ERR_clear_error();
        BIO_free(content);
        content = BIO_new(BIO_s_mem());
        {
            ASN1_OCTET_STRING **pos = CMS_get0_content(cms);
            if (pos != NULL && *pos != NULL)
                BIO_write(content, ASN1_STRING_get0_data(*pos), ASN1_STRING_length(*pos));
        }
    } else {
        printf("signature    valid%s\n", store ? ", signer chains to the given OEM root"
                                               : " (signer chain NOT checked: give --oem-root)");
        /* What a Guardian checks beyond the signature: the one encoding. */
        why = guardian_container_profile(cms, file, file_len, store);
        if (why != NULL) {
            printf("container    ALTERED outside its signature: %s\n", why);
            problems++;
        } else {
            printf("container    exactly as signed\n");
        }
    }
    signers = CMS_get0_signers(cms);
    for (int i = 0; i < sk_X509_num(signers); i++)
        print_name("signed by    ", X509_get_subject_name(sk_X509_value(signers, i)));
    sk_X509_free(signers);

    dlen = BIO_get_mem_data(content, (char **)&data);
    if (!guardian_package_decode(data, (size_t)dlen, &pkg, err, sizeof(err)))
        die("%s: %s", path, err);

    printf("package id   ");
    print_hex(pkg.package_id, sizeof(pkg.package_id));
    printf("\ntarget       sha256:");
    print_hex(pkg.target_guardian, sizeof(pkg.target_guardian));
    if (pkg.group_members > 0) {
        printf(" (the group ID of %d Guardians)", pkg.group_members);
        for (int i = 0; i < pkg.group_members; i++) {
            printf("\nmember       sha256:");
            print_hex(ASN1_STRING_get0_data(sk_GUARDIAN_GROUP_MEMBER_value(pkg.asn1->group, i)->guardian), 32);
        }
    }
    if (guardian_path != NULL) {
        X509 *g = read_guardian(guardian_path, NULL);
        uint8_t h[32];
        cert_sha256(g, h);
        if (!guardian_transports_read(g, &offered, err, sizeof(err)))
            die("%s: %s", guardian_path, err);
        X509_free(g);
        if (pkg.group_members > 0) {
            if (guardian_group_member(&pkg, h) >= 0) {
                printf("\n             (%s is a member)", guardian_path);
            } else {
                printf("\n             (%s is NOT a member)", guardian_path);
                problems++;
            }
        } else if (memcmp(h, pkg.target_guardian, 32) == 0) {
            printf(" (this is %s)", guardian_path);
        } else {
            printf(" (NOT %s)", guardian_path);
            problems++;
        }
    }
    printf("\nproduct      %s / %s\n", pkg.oem_id, pkg.product_id);
    printf("release      %u\nunits        %llu\n", pkg.release_version, (unsigned long long)pkg.authorised_units);
    print_time("not after    ", pkg.not_after);
    if (pkg.not_after < (int64_t)time(NULL)) {
        printf(" (EXPIRED)");
        problems++;
    }
    printf("\ntransport    %s\n", pkg.scheme == GUARDIAN_KT_NONE ? "none (no secret travels)"
                                  : pkg.scheme == GUARDIAN_KT_ECDH_AESCBC
                                      ? "ECDH + AES-256-CBC KDF + AES key wrap with padding (in-token)"
                                  : pkg.scheme == GUARDIAN_KT_RSAOAEP_SHA256
                                      ? "RSA-OAEP-SHA256 key-encryption key + AES-256-CBC-PAD (in-token)"
                                      : "ECDH + X9.63 SHA-256 KDF + AES key wrap with padding");
    if (guardian_path != NULL) {
        char offers[GUARDIAN_TRANSPORTS_MAX * (GUARDIAN_TRANSPORT_OID_MAX + 24) + 160];
        int listed = pkg.scheme == GUARDIAN_KT_NONE;
        for (size_t i = 0; i < offered.n; i++)
            listed |= offered.kt[i] == pkg.scheme;
        guardian_transports_describe(&offered, offers, sizeof(offers));
        printf("guardian     offers %s%s\n", offers,
               listed ? "" : "; the package's transport is NOT among them: that Guardian refuses it");
        problems += !listed;
    }
    {
        const GUARDIAN_CERT_TEMPLATE *t = pkg.asn1->cert_template;
        printf("template     subject \"%.*s\", %ld days, key usage 0x%02x", ASN1_STRING_length(t->subject),
               ASN1_STRING_get0_data(t->subject), ASN1_INTEGER_get(t->validity_days),
               ASN1_STRING_length(t->key_usage) > 0 ? ASN1_STRING_get0_data(t->key_usage)[0] : 0);
        for (int i = 0; t->ext_key_usage && i < sk_ASN1_OBJECT_num(t->ext_key_usage); i++) {
            char oid[80];
            OBJ_obj2txt(oid, sizeof(oid), sk_ASN1_OBJECT_value(t->ext_key_usage, i), 0);
            printf("%s%s", i == 0 ? ", EKU " : ",", oid);
        }
        if (t->device_ext_oid != NULL) {
            char oid[128];
            OBJ_obj2txt(oid, sizeof(oid), t->device_ext_oid, 1);
            printf(", device extension %s", oid);
        } else if (t->no_device_ext != NULL) {
            printf(", no device extension");
        } else {
            printf(", device extension %s (the legacy default: a package made before noDeviceExt)",
                   GUARDIAN_OID_DEVICE);
        }
        printf("\n");
    }
    {
        const GUARDIAN_PRODUCTION_CA *ca = pkg.asn1->production_ca;
        if (pkg.ca_in_guardian)
            printf("CA key       %s, made in the Guardian (format version 2: no key travels; the package ID is "
                   "its key ID)\n",
                   key_type_name(ca->key->key_type));
        else
            printf("CA key       \"%.*s\" (%s, %d bytes wrapped)\n", ASN1_STRING_length(ca->key->label),
                   ASN1_STRING_get0_data(ca->key->label), key_type_name(ca->key->key_type),
                   ASN1_STRING_length(ca->key->wrapped));
        for (int i = 0; i < sk_X509_num(ca->chain); i++)
            print_name(i == 0 ? "CA chain     " : "             ", X509_get_subject_name(sk_X509_value(ca->chain, i)));
    }
    for (int i = 0; pkg.asn1->extra_keys && i < sk_GUARDIAN_WRAPPED_KEY_num(pkg.asn1->extra_keys); i++) {
        const GUARDIAN_WRAPPED_KEY *k = sk_GUARDIAN_WRAPPED_KEY_value(pkg.asn1->extra_keys, i);
        printf("extra key    \"%.*s\" (%s, %d bytes wrapped)\n", ASN1_STRING_length(k->label),
               ASN1_STRING_get0_data(k->label), key_type_name(k->key_type), ASN1_STRING_length(k->wrapped));
    }
    for (int i = 0; pkg.asn1->data_items && i < sk_GUARDIAN_DATA_ITEM_num(pkg.asn1->data_items); i++) {
        const GUARDIAN_DATA_ITEM *d = sk_GUARDIAN_DATA_ITEM_value(pkg.asn1->data_items, i);
        int conf = ASN1_ENUMERATED_get(d->protection) == GUARDIAN_DATA_CONFIDENTIAL;
        printf("data item    \"%.*s\" %s, %d bytes", ASN1_STRING_length(d->name), ASN1_STRING_get0_data(d->name),
               conf ? "confidential" : "integrity", ASN1_STRING_length(d->value));
        if (!conf) {
            uint8_t h[32];
            unsigned int hl = 0;
            EVP_Digest(ASN1_STRING_get0_data(d->value), (size_t)ASN1_STRING_length(d->value), h, &hl, EVP_sha256(),
                       NULL);
            printf(", sha256:");
            print_hex(h, hl);
        }
        printf("\n");
    }
    guardian_package_free(&pkg);
    CMS_ContentInfo_free(cms);
    BIO_free(content);
    X509_STORE_free(store);
    free(file);
    if (problems) {
        printf("%d problem(s) found\n", problems);
        return 1;
    }
    return 0;
}

/* ---- verify-report ------------------------------------------------------------ */

/* What the OEM's own package file says, for the report's quota check. */
static void read_package_file(const char *path, struct report_package *out)
{
    size_t len;
    unsigned char *data = read_all(path, GUARDIAN_PACKAGE_MAX_BYTES, &len);
    const unsigned char *p = data;
    unsigned int hl = 0;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    ASN1_OCTET_STRING **content = cms ? CMS_get0_content(cms) : NULL;
    struct guardian_package pkg;
    char err[256];

    if (content == NULL || *content == NULL || OBJ_cmp(CMS_get0_eContentType(cms), package_oid()) != 0)
        die("%s is not a Guardian package", path);
    if (!guardian_package_decode(ASN1_STRING_get0_data(*content), (size_t)ASN1_STRING_length(*content), &pkg, err,
                                 sizeof(err)))
        die("%s: %s", path, err);
    memset(out, 0, sizeof(*out));
    out->name = path;
    if (EVP_Digest(data, len, out->digest, &hl, EVP_sha256(), NULL) != 1)
        die("SHA-256 failed");
    memcpy(out->package_id, pkg.package_id, sizeof(out->package_id));
    snprintf(out->oem_id, sizeof(out->oem_id), "%s", pkg.oem_id);
    snprintf(out->product_id, sizeof(out->product_id), "%s", pkg.product_id);
    out->release_version = pkg.release_version;
    out->authorised_units = pkg.authorised_units;
    _Static_assert(REPORT_MAX_MEMBERS == GUARDIAN_GROUP_MAX, "a report package holds every member");
    out->n_members = (size_t)pkg.group_members;
    for (int i = 0; i < pkg.group_members; i++)
        memcpy(out->members[i], ASN1_STRING_get0_data(sk_GUARDIAN_GROUP_MEMBER_value(pkg.asn1->group, i)->guardian),
               GUARDIAN_HASH_LEN);
    {
        /* Compared with the report's template line of its IMPORT. */
        unsigned char *der = NULL;
        int n = i2d_GUARDIAN_CERT_TEMPLATE(pkg.asn1->cert_template, &der);
        if (n <= 0 || (out->cert_template = malloc((size_t)n)) == NULL)
            die("out of memory");
        memcpy(out->cert_template, der, (size_t)n);
        out->cert_template_len = (size_t)n;
        OPENSSL_free(der);
    }
    guardian_package_free(&pkg);
    CMS_ContentInfo_free(cms);
    free(data);
}

/* The report at `path`, mapped read-only (NULL for an empty file, *data then
 * points at ""); dies if it cannot be read or is too large. */
static void *map_report(const char *path, const uint8_t **data, size_t *size)
{
    struct stat st;
    void *map = NULL;
    int fd = open(path, O_RDONLY);

    if (fd < 0 || fstat(fd, &st) != 0)
        die("cannot open %s: %s", path, strerror(errno));
    if ((uint64_t)st.st_size > REPORT_MAX_BYTES)
        die("%s is larger than %zu bytes", path, REPORT_MAX_BYTES);
    *data = (const uint8_t *)"";
    *size = (size_t)st.st_size;
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
            die("cannot read %s: %s", path, strerror(errno));
        *data = map;
    }
    close(fd);
    return map;
}

static int cmd_verify_report(int argc, char **argv)
{
    static const struct option longopts[] = {{"guardian", required_argument, NULL, 'g'},
                                             {"ca-chain", required_argument, NULL, 'c'},
                                             {"root", required_argument, NULL, 'r'},
                                             {"package", required_argument, NULL, 'p'},
                                             {"authorised", required_argument, NULL, 'a'},
                                             {"product", required_argument, NULL, 'P'},
                                             {"device-ext-oid", required_argument, NULL, 'X'},
                                             {"previous", required_argument, NULL, 'v'},
                                             {NULL, 0, NULL, 0}};
    const char *guardian_path = NULL, *chain_path = NULL, *root_path = NULL, *authorised = NULL, *path;
    const char *previous_path = NULL;
    const char *package_paths[GUARDIAN_PKG_MAX_ITEMS];
    struct report_package packages[GUARDIAN_PKG_MAX_ITEMS];
    struct report_inputs in;
    const uint8_t *data = NULL;
    size_t size = 0;
    void *map = NULL, *previous_map = NULL;
    unsigned long problems;
    int c, n_packages = 0;
    char *end;

    memset(&in, 0, sizeof(in));
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'g': guardian_path = optarg; break;
        case 'c':
            if (chain_path != NULL) {
                if (in.n_more_chains == REPORT_MAX_CHAINS - 1)
                    usage_die("verify-report", "at most %d --ca-chain", REPORT_MAX_CHAINS);
                in.more_chains[in.n_more_chains++] = read_certs(optarg);
            } else
                chain_path = optarg;
            break;
        case 'r':
            if (root_path != NULL) {
                if (in.n_more_roots == REPORT_MAX_CHAINS - 1)
                    usage_die("verify-report", "at most %d --root", REPORT_MAX_CHAINS);
                in.more_roots[in.n_more_roots++] = read_cert(optarg);
            } else
                root_path = optarg;
            break;
        case 'p':
            if (n_packages == GUARDIAN_PKG_MAX_ITEMS)
                usage_die("verify-report", "at most %d --package", GUARDIAN_PKG_MAX_ITEMS);
            package_paths[n_packages++] = optarg;
            break;
        case 'a': authorised = optarg; break;
        case 'P': in.product = optarg; break;
        case 'X': in.device_ext_oid = optarg; break;
        case 'v': previous_path = optarg; break;
        default: bad_option("verify-report", c, argv);
        }
    }
    if (optind != argc - 1)
        usage_die("verify-report", "takes exactly one REPORT");
    if (guardian_path == NULL || chain_path == NULL)
        usage_die("verify-report", "needs --guardian and --ca-chain");
    if ((authorised == NULL) != (in.product == NULL))
        usage_die("verify-report", "--authorised and --product go together");
    if (authorised != NULL) {
        errno = 0;
        in.authorised = strtoull(authorised, &end, 10);
        if (errno != 0 || *end != '\0' || authorised[0] < '0' || authorised[0] > '9')
            usage_die("verify-report", "--authorised must be a number of units, not '%s'", authorised);
        if (strchr(in.product, '/') == NULL)
            usage_die("verify-report", "--product must be OEM/PRODUCT, not '%s'", in.product);
    }
    path = argv[optind];
    in.guardian = read_guardian(guardian_path, &in.guardian_signing);
    in.ca_chain = read_certs(chain_path);
    in.root = root_path ? read_cert(root_path) : NULL;
    for (int i = 0; i < n_packages; i++)
        read_package_file(package_paths[i], &packages[i]);
    in.packages = packages;
    in.n_packages = (size_t)n_packages;
    in.out = stdout;
    in.name = path;

    map = map_report(path, &data, &size);
    if (previous_path != NULL) {
        previous_map = map_report(previous_path, &in.previous, &in.previous_len);
        in.previous_name = previous_path;
    }

    problems = report_verify(data, size, &in);

    if (map != NULL)
        munmap(map, size);
    if (previous_map != NULL)
        munmap(previous_map, in.previous_len);
    X509_free(in.guardian);
    X509_free(in.guardian_signing);
    X509_free(in.root);
    sk_X509_pop_free(in.ca_chain, X509_free);
    for (size_t i = 0; i < in.n_more_chains; i++)
        sk_X509_pop_free(in.more_chains[i], X509_free);
    for (size_t i = 0; i < in.n_more_roots; i++)
        X509_free(in.more_roots[i]);
    for (int i = 0; i < n_packages; i++)
        free(packages[i].cert_template);
    return problems == 0 ? 0 : 1;
}

/* ---- main ---------------------------------------------------------------------- */

static const char create_usage[] =
    "usage: " PROG " create --guardian-cert G.pem --signer-key K.pem --signer-cert C.pem\n"
    "         [--signer-chain CHAIN.pem] (--ca-key CA.key | --ca-request CA.csr) --ca-cert CA.pem\n"
    "         [--ca-chain CHAIN.pem]\n"
    "         --oem-id ID --product-id ID --release N --units N --not-after YYYY-MM-DD|+DAYS\n"
    "         [--subject PATTERN] [--validity-days N] [--key-usage LIST] [--ext-key-usage OIDS]\n"
    "         [--device-ext-oid OID]   (without it: no device-identity extension)\n"
    "         [--extra-key LABEL=KEY.pem]... [--data NAME=FILE]... [--secret-data NAME=FILE]...\n"
    "         [--kdf auto|aes-cbc|x963-sha256] [--kdf-unlisted]\n"
    "         [--passin pass:TEXT|env:VAR|file:PATH|fd:N|stdin] [--ca-passin SOURCE]\n"
    "         --out PACKAGE [--force]\n"
    "--ca-request: the CA key was made in the Guardian ('guardianctl ca-request'); the package\n"
    "carries its certificate and no key (format version 2; the Guardian must hold the key).\n"
    "--guardian-cert given 2-16 times: one package for a group of EC Guardians sharing one\n"
    "allowance (needs --ca-key; every member must offer the transport the first one's --kdf gives).\n"
    "Encrypted PEM keys: --passin (every key), --ca-passin (the CA key, if its passphrase differs);\n"
    "pass:TEXT shows in ps: prefer env:, file:, fd: or stdin.\n"
    "--kdf auto (the default): the strongest key transport the Guardian certificate lists\n"
    "(id-guardian-transports; none listed: aes-cbc); a --kdf it does not list is refused\n"
    "unless --kdf-unlisted.\n"
    "An existing PACKAGE is not overwritten without --force.\n"
    "Exit 0: written; 1: refused or failed; 2: usage error.\n";
static const char certify_usage[] =
    "usage: " PROG " certify-ca --csr CA.csr --guardian-cert G.pem --oem-id ID --product-id ID\n"
    "         --ca-key ISSUER.key --ca-cert ISSUER.pem [--days N] [--passin SOURCE] --out CA.pem [--force]\n"
    "Checks the CSR's signature and the Guardian's binding ('guardianctl ca-request' wrote both; G.pem\n"
    "as 'guardianctl cert' writes it, with the signing certificate), then issues the production CA\n"
    "certificate: CA:TRUE pathlen 0, keyUsage keyCertSign+cRLSign (critical), SKI/AKI.\n"
    "Exit 0: written; 1: refused or failed; 2: usage error.\n";
static const char inspect_usage[] =
    "usage: " PROG " inspect PACKAGE [--oem-root ROOT.pem] [--guardian-cert G.pem]\n"
    "Prints everything but the secrets; checks the signature (and, with --oem-root,\n"
    "the signer's chain; with --guardian-cert, that the package targets that Guardian).\n"
    "Exit 0: no problem; 1: problems found (or a file could not be read); 2: usage error.\n";
static const char verify_usage[] =
    "usage: " PROG " verify-report REPORT --guardian GUARDIAN-CERT.pem --ca-chain PRODUCTION-CHAIN.pem\n"
    "         [--root OEM-ROOT.pem] [--package PACKAGE]... [--authorised N --product OEM/PRODUCT]\n"
    "         (--ca-chain and --root repeat, up to 16 each, for a report over several production CAs)\n"
    "         [--device-ext-oid OID]   (for releases an old report or --package does not describe)\n"
    "         [--previous OLD-REPORT]  (an earlier report: this one must extend it)\n"
    "Checks the Guardian's signature, every record hash and the chain, the quotas and every\n"
    "certificate.  Exit 0: OK; 1: the report does not verify, or a file cannot be read; 2: usage error.\n";

static const struct command {
    const char *name, *usage;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"create", create_usage, cmd_create},
    {"certify-ca", certify_usage, cmd_certify_ca},
    {"inspect", inspect_usage, cmd_inspect},
    {"verify-report", verify_usage, cmd_verify_report},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " create ...   wrap provisioning secrets for one Guardian\n"
               "       " PROG " certify-ca --csr CA.csr --guardian-cert G.pem ...   certify a Guardian-made CA key\n"
               "       " PROG " inspect PACKAGE [--oem-root ROOT.pem] [--guardian-cert G.pem]\n"
               "       " PROG " verify-report REPORT --guardian G.pem --ca-chain CHAIN.pem [--root ROOT.pem] ...\n"
               "       " PROG " --version | --help | COMMAND --help\n"
               "Run '" PROG " COMMAND --help' for a command's options.\n"
               "Exit status: 0 done; 1 refused or failed (verify-report: the report does not verify);\n"
               "2 usage error (nothing read); the same as guardianctl.\n");
}

int main(int argc, char **argv)
{
    const struct command *cmd = NULL;

    opterr = 0; /* bad_option names a bad option itself */
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf(PROG " " GUARDIAN_TOOLS_VERSION "\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            cmd = &commands[i];
    if (cmd == NULL) {
        fprintf(stderr, PROG ": unknown %s '%s' (create, certify-ca, inspect, verify-report; " PROG " --help)\n",
                argv[1][0] == '-' ? "option" : "command", argv[1]);
        return EXIT_USAGE;
    }
    /* --help anywhere after the command: its usage, before any option is
     * checked or any file read. */
    for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(cmd->usage, stdout);
            return 0;
        }
    return cmd->run(argc - 1, argv + 1);
}
