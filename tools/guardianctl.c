/*
 * guardianctl — the programming centre operator's tool.  Everything goes
 * through the Guardian PKCS#11 module, like any other PKCS#11 application, no
 * side door; every Guardian operation is a request (C_CreateObject of a
 * CKO_GUARDIAN_REQUEST), which p11-kit's RPC carries, so the module may run
 * in-process or behind `p11-kit server` (--module p11-kit-client.so).  It
 * reads neither the state directory nor the module's configuration (behind
 * the server both are the service account's): products are the module's
 * CKO_GUARDIAN_PACKAGE objects, the state is CKG_GUARDIAN_REQ_STATUS.
 *
 *   guardianctl [options] init [--subject DN] [--days N] [--csr FILE] [--out FILE]
 *   guardianctl [options] import-cert CERT.pem
 *   guardianctl [options] cert [--out FILE]
 *   guardianctl [options] enroll-oem ROOT.pem [--yes]
 *   guardianctl [options] list-oems
 *   guardianctl [options] remove-oem FINGERPRINT-PREFIX [--yes]
 *   guardianctl [options] import PACKAGE [--json]
 *   guardianctl [options] products [--json]
 *   guardianctl [options] status [--json] [--watch [SECONDS]]
 *   guardianctl [options] provision --product OEM/PRODUCT --count N ... [--manifest FILE] [--json]
 *   guardianctl [options] retire-ca --product OEM/PRODUCT --release N [--yes] [--json]
 *   guardianctl [options] audit export [--product OEM/PRODUCT] [--out FILE] [--json]
 *
 * Options: --module PATH (or GUARDIAN_MODULE), --token LABEL (or
 * GUARDIAN_TOKEN); PINs from GUARDIAN_PIN / GUARDIAN_SO_PIN, else asked on the
 * terminal.  --version; --help on its own or after any command, answered
 * (like every usage error, exit 2) before the module is loaded.  Exit 0 done,
 * 1 refused or failed, 2 usage, 130 interrupted (provision, a PIN prompt): the
 * same as guardian-wrap.  docs/guardianctl.md, guardianctl(1).
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "guardianctl.h"
#include "tty_prompt.h"

#define PACKAGE_MAX_BYTES (1024 * 1024) /* docs/package-format.md */

#ifndef GUARDIAN_MODULE_PATH
#define GUARDIAN_MODULE_PATH "guardian-pkcs11.so"
#endif

CK_FUNCTION_LIST *p11;
CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
CK_SLOT_ID slot;
const char *token_label;
int assume_yes;
int json_out;

/* Close what open_token opened (if it ran) and exit with `status`. */
static void __attribute__((noreturn)) leave(int status)
{
    if (p11 != NULL) {
        if (session != CK_INVALID_HANDLE)
            p11->C_CloseSession(session);
        p11->C_Finalize(NULL);
    }
    exit(status);
}

/* --json: the error as the one object on stdout.  Its code is the first
 * CKR_ name the message gives (the module's answer), else `fallback`. */
static void json_error(const char *msg, const char *fallback)
{
    struct ctl_json j;
    char code[64];
    const char *c = strstr(msg, "CKR_");
    if (c != NULL)
        snprintf(code, sizeof(code), "%.*s", (int)strspn(c, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"), c);
    else
        snprintf(code, sizeof(code), "%s", fallback);
    ctl_json_begin(&j, stdout);
    ctl_json_object(&j, NULL);
    ctl_json_object(&j, "error");
    ctl_json_string(&j, "code", code);
    ctl_json_string(&j, "message", msg);
    ctl_json_end(&j);
}

void die(const char *fmt, ...)
{
    va_list ap;
    char msg[4096];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s\n", msg);
    if (json_out)
        json_error(msg, "CKR_FUNCTION_FAILED");
    leave(EXIT_REFUSED);
}

void usage_die(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    char msg[4096];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s: %s (" PROG " %s --help)\n", cmd, msg, cmd);
    if (json_out)
        json_error(msg, "CKR_ARGUMENTS_BAD");
    leave(EXIT_USAGE);
}

const char *ckr(CK_RV rv)
{
    const char *n = guardian_ckr_name(rv);
    return n ? n : "unknown CKR";
}


/* ---- PINs ------------------------------------------------------------------ */

void read_pin(const char *env, const char *prompt, char *out, size_t cap)
{
    const char *v = getenv(env);

    if (v != NULL && *v != '\0') {
        snprintf(out, cap, "%s", v);
        return;
    }
    if (!isatty(STDIN_FILENO))
        die("no %s in the environment and no terminal to ask for it", env);
    /* Echo off; Ctrl-C there puts it back and exits 130 (tty_prompt.c). */
    if (!tty_read_secret(prompt, out, cap))
        die("cannot read the %s from the terminal", prompt);
}

/* The module open_token loaded, to start again from it (login). */
static const char *opened_module;

void login(CK_USER_TYPE who)
{
    char pin[256];
    CK_RV rv;
    if (who == CKU_SO)
        read_pin("GUARDIAN_SO_PIN", "Security Officer PIN", pin, sizeof(pin));
    else
        read_pin("GUARDIAN_PIN", "User PIN", pin, sizeof(pin));
    /* SoftHSM's C_Login reads the token's files and fails with
     * CKR_GENERAL_ERROR or CKR_USER_PIN_NOT_INITIALIZED while another process
     * rewrites them (measured: 1 in ~100 of 4 processes starting together):
     * try again, 3 times. */
    for (int attempt = 0; attempt < 4; attempt++) {
        if (attempt > 0) {
            /* What SoftHSM read of the token stays wrong until the next
             * C_Initialize: start again from there. */
            usleep(100 * 1000);
            close_token();
            open_token(opened_module);
        }
        rv = p11->C_Login(session, who, (CK_UTF8CHAR_PTR)pin, strlen(pin));
        if (rv != CKR_GENERAL_ERROR && rv != CKR_USER_PIN_NOT_INITIALIZED)
            break;
    }
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rv == CKR_PIN_INCORRECT)
        die("wrong %s PIN for token '%s'", who == CKU_SO ? "Security Officer" : "user", token_label);
    if (rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT)
        /* p11-kit-client.so's answer once its connection is gone. */
        die("login failed: %s: the token went away (through the Guardian service: the connection was lost, or the "
            "service restarted); once it is back, run the same command again",
            ckr(rv));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        die("login failed: %s", ckr(rv));
}

/* ---- module and token ------------------------------------------------------------ */

/* A module that is not the Guardian (the plain SoftHSM module given as
 * --module, say) answers every PKCS#11 call but no Guardian request: say so
 * before anything is asked of it.  The Guardian's C_GetInfo names it; a
 * module that forwards (p11-kit-client.so to the Guardian service) is taken
 * as what it fronts. */
static void not_guardian_dies(const char *module_path)
{
    CK_INFO info;
    char manufacturer[33], description[33];
    if (strstr(module_path, "p11-kit") != NULL || p11->C_GetInfo(&info) != CKR_OK)
        return;
    if (memcmp(info.manufacturerID, "Guardian", 8) == 0)
        return;
    snprintf(manufacturer, sizeof(manufacturer), "%.32s", (const char *)info.manufacturerID);
    snprintf(description, sizeof(description), "%.32s", (const char *)info.libraryDescription);
    for (int k = 31; k >= 0 && (manufacturer[k] == ' ' || manufacturer[k] == '\0'); k--)
        manufacturer[k] = '\0';
    for (int k = 31; k >= 0 && (description[k] == ' ' || description[k] == '\0'); k--)
        description[k] = '\0';
    p11->C_Finalize(NULL);
    p11 = NULL;
    die("%s is not the Guardian module (it is '%s' by '%s': it knows no Guardian request); use --module %s, "
        "which loads it as its backend (guardian.conf(5))",
        module_path, description, manufacturer, GUARDIAN_MODULE_PATH);
}

void open_token(const char *module_path)
{
    opened_module = module_path;
    void *dl = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get;
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv;

    /* A module that remotes its calls (p11-kit-client.so, to the Guardian
     * service) writes to a socket: when the service has gone, that write must
     * fail with CKR_DEVICE_ERROR, not end this process (docs/service-mode.md). */
    signal(SIGPIPE, SIG_IGN);
    if (dl == NULL)
        die("cannot load the Guardian module %s: %s (use --module or GUARDIAN_MODULE)", module_path, dlerror());
    get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    if (get == NULL || get(&p11) != CKR_OK)
        die("%s is not a PKCS#11 module", module_path);
    rv = p11->C_Initialize(&args);
    if (rv == CKR_GUARDIAN_NOT_CONFIGURED) {
        p11 = NULL;
        die("the Guardian module %s is not configured: no configuration file %s, no GUARDIAN_CONF and no "
            "GUARDIAN_BACKEND; write that file (backend = the HSM's module, state_dir = ...: guardian.conf(5)) "
            "or set GUARDIAN_CONF",
            module_path, GUARDIAN_DEFAULT_CONF);
    }
    if (rv != CKR_OK) {
        p11 = NULL;
        die("the Guardian module did not initialize: %s (its log line above says why)", ckr(rv));
    }
    not_guardian_dies(module_path);
    /* SoftHSM reads its token directory at C_Initialize: a process that
     * starts while another writes the token may not see it (measured, 4
     * processes started at once: ../shared/INTEROP-NOTES.md), or see it
     * without its user PIN.  So a token not found is looked for again after
     * a new C_Initialize, 5 times in 1 s. */
    for (int attempt = 0; attempt < 5; attempt++) {
        if (attempt > 0) {
            p11->C_Finalize(NULL);
            usleep(200 * 1000);
            rv = p11->C_Initialize(&args);
            if (rv != CKR_OK) {
                p11 = NULL;
                die("the Guardian module did not initialize: %s (its log line above says why)", ckr(rv));
            }
        }
        n = 64;
        P11(p11->C_GetSlotList(CK_TRUE, slots, &n));
        for (CK_ULONG i = 0; i < n; i++) {
            CK_TOKEN_INFO ti;
            size_t len = strlen(token_label);
            if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                continue;
            if (len <= 32 && memcmp(ti.label, token_label, len) == 0 && (len == 32 || ti.label[len] == ' ')) {
                /* Read while another process rewrote it, SoftHSM's token can
                 * look as if it had no user PIN until the next
                 * C_Initialize (measured): look again. */
                if (!(ti.flags & CKF_USER_PIN_INITIALIZED) && attempt < 4)
                    break;
                slot = slots[i];
                P11(p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &session));
                return;
            }
        }
    }
    if (strstr(module_path, "p11-kit-client") != NULL && n == 0)
        die("no token labelled '%s' through the Guardian service at %s: is the service running, and are you in "
            "its operators' group? (p11-kit-client.so shows no token when it cannot connect; docs/service-mode.md)",
            token_label, getenv("P11_KIT_SERVER_ADDRESS") ? getenv("P11_KIT_SERVER_ADDRESS") : "(P11_KIT_SERVER_ADDRESS unset)");
    {
        /* Name the tokens there are: the label given may be a typo. */
        char labels[1024] = "";
        size_t used = 0;
        for (CK_ULONG i = 0; i < n && used + 40 < sizeof(labels); i++) {
            CK_TOKEN_INFO ti;
            int len = 32;
            if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                continue;
            while (len > 0 && ti.label[len - 1] == ' ')
                len--;
            used += (size_t)snprintf(labels + used, sizeof(labels) - used, len ? "%s'%.*s'" : "%s(one without a label)",
                                     used ? ", " : "", len, (const char *)ti.label);
        }
        die("no token labelled '%s' (--token or GUARDIAN_TOKEN); %s%s", token_label,
            n == 0 ? "the module shows no token at all" : "the tokens there are: ", labels);
    }
}

static const char *module_path = GUARDIAN_MODULE_PATH;

void need_token(void)
{
    if (p11 == NULL)
        open_token(module_path);
}

void close_token(void)
{
    p11->C_CloseSession(session);
    session = CK_INVALID_HANDLE;
    p11->C_Finalize(NULL);
    p11 = NULL;
}

CK_ULONG find_all(CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max)
{
    CK_ULONG count = 0;
    P11(p11->C_FindObjectsInit(session, t, n));
    P11(p11->C_FindObjects(session, out, max, &count));
    P11(p11->C_FindObjectsFinal(session));
    return count;
}

unsigned char *get_attr(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    P11(p11->C_GetAttributeValue(session, h, &a, 1));
    a.pValue = malloc(a.ulValueLen + 1);
    if (a.pValue == NULL)
        die("out of memory");
    P11(p11->C_GetAttributeValue(session, h, &a, 1));
    ((unsigned char *)a.pValue)[a.ulValueLen] = 0;
    *len = a.ulValueLen;
    return a.pValue;
}

static CK_OBJECT_HANDLE find_id(const char *id, CK_OBJECT_CLASS cls)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, strlen(id)}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = find_all(t, 2, h, 2);
    if (n > 1)
        die("more than one Guardian object %s of class %lu in token '%s'", id, (unsigned long)cls, token_label);
    return n == 1 ? h[0] : CK_INVALID_HANDLE;
}

CK_OBJECT_HANDLE find_identity(CK_OBJECT_CLASS cls)
{
    return find_id(GUARDIAN_KEY_ID, cls);
}

CK_OBJECT_HANDLE find_signing(CK_OBJECT_CLASS cls)
{
    return find_id(GUARDIAN_SIGNING_KEY_ID, cls);
}

/* ---- certificates ------------------------------------------------------------------ */

void fingerprint(X509 *x, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

X509 *read_cert_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    X509 *x;
    if (f == NULL)
        die("cannot open %s: %s", path, strerror(errno));
    x = PEM_read_X509(f, NULL, NULL, NULL);
    if (x == NULL) {
        rewind(f);
        ERR_clear_error();
        x = d2i_X509_fp(f, NULL);
    }
    fclose(f);
    if (x == NULL)
        die("%s is not an X.509 certificate (PEM or DER)", path);
    return x;
}

X509 *cert_from_object(CK_OBJECT_HANDLE h)
{
    CK_ULONG len;
    unsigned char *der = get_attr(h, CKA_VALUE, &len);
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    free(der);
    if (x == NULL)
        die("a certificate object in the token does not parse");
    return x;
}

/* ---- output files ---------------------------------------------------------------- */

/* The directory part of `path` ("." when it has none) into dir. */
static void dir_of(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, cap, ".");
    else if (slash == path)
        snprintf(dir, cap, "/");
    else
        snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

/* Make and remove a file in `dir`: the one proof that a file can be written
 * there (root passes every permission check, a read-only mount does not). */
static void probe_dir(const char *dir, const char *what)
{
    char tmp[PATH_MAX];
    struct stat st;
    int fd;
    if (stat(dir, &st) != 0)
        die("cannot write %s: the directory %s %s; create it first", what, dir,
            errno == ENOENT ? "does not exist" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        die("cannot write %s: %s is not a directory", what, dir);
    if (snprintf(tmp, sizeof(tmp), "%s/.guardianctl-probe-XXXXXX", dir) >= (int)sizeof(tmp))
        die("cannot write %s: the path is too long", what);
    fd = mkstemp(tmp);
    if (fd < 0)
        die("cannot write %s: no new file can be made in %s: %s%s", what, dir, strerror(errno),
            errno == EROFS ? " (remount it read-write or choose another directory)" : "");
    close(fd);
    unlink(tmp);
}

void check_output(const char *cmd, const char *path, int force)
{
    char dir[PATH_MAX];
    struct stat st;
    if (path == NULL)
        return;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            die("%s: %s is a directory: name a file", cmd, path);
        if (!force)
            die("%s: %s exists: not overwritten (give --force to replace it)", cmd, path);
    }
    dir_of(path, dir, sizeof(dir));
    probe_dir(dir, path);
}

void check_output_dir(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        die("cannot create the directory %s: %s", dir, strerror(errno));
    probe_dir(dir, "the certificates (--out)");
}

void write_output(const char *path, const void *data, size_t len, int force)
{
    char tmp[PATH_MAX + 32];
    size_t done = 0;
    int fd, e;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp))
        die("%s: the path is too long", path);
    fd = mkstemp(tmp);
    if (fd < 0)
        die("cannot create a temporary file next to %s: %s", path, strerror(errno));
    {
        mode_t mask = umask(0);
        umask(mask);
        fchmod(fd, 0666 & ~mask);
    }
    while (done < len) {
        ssize_t w = write(fd, (const char *)data + done, len - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    if (done != len || fsync(fd) != 0 || close(fd) != 0) {
        e = errno;
        unlink(tmp);
        die("cannot write %s: %s", path, strerror(e));
    }
    if (force ? rename(tmp, path) != 0 : link(tmp, path) != 0) {
        e = errno;
        /* A file system without hard links (vfat, some FUSE): rename, which
         * is still atomic, if the name is still free. */
        if (!force && (e == EPERM || e == EOPNOTSUPP) && access(path, F_OK) != 0 && rename(tmp, path) == 0)
            return;
        unlink(tmp);
        if (e == EEXIST)
            die("%s appeared meanwhile: not overwritten (give --force to replace it)", path);
        die("cannot write %s: %s", path, strerror(e));
    }
    if (!force)
        unlink(tmp);
}

/* The Guardian's certificates as OEMs take them: A (the target of their
 * packages) first, then S (which issued A and signs the reports), if any;
 * to `out` (write_output) or standard output. */
static void write_pem_certs(X509 *a, X509 *sc, const char *out, int force)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long len;
    if (b == NULL || !PEM_write_bio_X509(b, a) || (sc != NULL && !PEM_write_bio_X509(b, sc)))
        die("out of memory");
    len = BIO_get_mem_data(b, &data);
    if (out != NULL)
        write_output(out, data, (size_t)len, force);
    else if (fwrite(data, 1, (size_t)len, stdout) != (size_t)len || fflush(stdout) != 0)
        die("cannot write the certificates to standard output");
    BIO_free(b);
}

X509 *cert_or_null(CK_OBJECT_HANDLE h)
{
    return h == CK_INVALID_HANDLE ? NULL : cert_from_object(h);
}

CK_RV request_in(CK_SESSION_HANDLE s, CK_ULONG type, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
                 CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ATTRIBUTE t[2 + REQUEST_MAX_EXTRA] = {{CKA_CLASS, &cls, sizeof(cls)},
                                             {CKA_GUARDIAN_REQUEST, &type, sizeof(type)}};
    if (n_extra > REQUEST_MAX_EXTRA)
        die("internal: too many request attributes");
    if (n_extra > 0)
        memcpy(t + 2, extra, n_extra * sizeof(*extra));
    return p11->C_CreateObject(s, t, 2 + n_extra, out);
}

/* A Guardian request in the command's session. */
static CK_RV request(CK_ULONG type, CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_OBJECT_HANDLE *out)
{
    return request_in(session, type, extra, n_extra, out);
}

/* What OEMs need to hear when A changed (an upgrade, a new signing
 * certificate): their packages name A's SHA-256. */
static void say_certificate_changed(const char *old_fpr, const char *new_fpr, const char *out)
{
    fprintf(stderr,
            "the Guardian certificate CHANGED (sha256:%s, was sha256:%s): give your OEM customers the new %s; "
            "packages made for the old certificate are refused (CKR_GUARDIAN_WRONG_GUARDIAN) until they wrap "
            "again for the new one\n",
            new_fpr, old_fpr, out ? out : "certificates ('" PROG " cert --out guardian.pem')");
}

static int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {{"subject", required_argument, NULL, 's'},
                                         {"days", required_argument, NULL, 'd'},
                                         {"csr", required_argument, NULL, 'c'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"force", no_argument, NULL, 'F'},
                                         {"key-type", required_argument, NULL, 'k'},
                                         {NULL, 0, NULL, 0}};
    const char *subject = NULL, *csr_out = NULL, *out = NULL, *key_type = NULL;
    CK_ULONG ktype = 0;
    long days = 3650;
    int force = 0;
    CK_OBJECT_HANDLE priv, sign_priv, h;
    X509 *old_a, *a, *sc;
    char subject_buf[128], fpr[65], old_fpr[65] = "", sfpr[65];
    CK_ATTRIBUTE t[3];
    CK_ULONG udays, n = 0;
    CK_RV rv;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': subject = optarg; break;
        case 'd': {
            char *end;
            days = strtol(optarg, &end, 10);
            if (*end != '\0' || days < 1 || days > 36500)
                usage_die("init", "--days must be 1..36500, not '%s'", optarg);
            break;
        }
        case 'c': csr_out = optarg; break;
        case 'o': out = optarg; break;
        case 'F': force = 1; break;
        case 'k':
            key_type = optarg;
            ktype = strcmp(optarg, "p256") == 0      ? CKG_GUARDIAN_IDENTITY_P256
                    : strcmp(optarg, "rsa2048") == 0 ? CKG_GUARDIAN_IDENTITY_RSA2048
                    : strcmp(optarg, "rsa3072") == 0 ? CKG_GUARDIAN_IDENTITY_RSA3072
                                                     : 0;
            if (ktype == 0)
                usage_die("init", "--key-type is p256, rsa2048 or rsa3072, not '%s'", optarg);
            break;
        default: usage_die("init", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc)
        usage_die("init", "unexpected argument '%s'", argv[optind]);
    if (csr_out != NULL && out != NULL)
        usage_die("init", "--csr and --out go separately (the certificates come with import-cert)");
    check_output("init", csr_out ? csr_out : out, force);
    need_token();
    login(CKU_USER);

    priv = find_identity(CKO_PRIVATE_KEY);
    sign_priv = find_signing(CKO_PRIVATE_KEY);
    old_a = cert_or_null(find_identity(CKO_CERTIFICATE));
    if (old_a != NULL)
        fingerprint(old_a, old_fpr);
    if (priv != CK_INVALID_HANDLE && sign_priv == CK_INVALID_HANDLE)
        fprintf(stderr, "Guardian in token '%s' has one key for key agreement and signing (made before the "
                        "signing key was split off): making its signing key%s\n",
                token_label, csr_out ? "" : " and issuing its certificate again under it");
    /* The module makes the keys (if none) and signs what it built.  A name
     * only for a new Guardian (or when asked): an existing one keeps its own. */
    if (subject != NULL || old_a == NULL) {
        if (subject == NULL) {
            snprintf(subject_buf, sizeof(subject_buf), "/CN=Guardian %s", token_label);
            subject = subject_buf;
        }
        if (strncmp(subject, "/CN=", 4) == 0)
            subject += 4;
        t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)subject, (CK_ULONG)strlen(subject)};
    }
    if (key_type != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_IDENTITY_KEY_TYPE, &ktype, sizeof(ktype)};
    udays = (CK_ULONG)days;
    if (csr_out == NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_GUARDIAN_VALIDITY_DAYS, &udays, sizeof(udays)};
    rv = request(csr_out ? CKG_GUARDIAN_REQ_IDENTITY_CSR : CKG_GUARDIAN_REQ_IDENTITY, t, n, &h);
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
        die("refused: %s (the module's log line says which)",
            key_type != NULL ? "an invalid --subject (a CN of 1..56 characters, no control characters), or "
                               "--key-type other than the type of the Guardian's existing keys"
                             : "invalid --subject: a CN of 1..56 characters, no control characters");
    if (rv != CKR_OK)
        die("the module refused to make the Guardian identity: %s (0x%lx); its log line says why", ckr(rv),
            (unsigned long)rv);
    {
        CK_KEY_TYPE kt = CKK_EC;
        CK_ULONG bits = 0;
        CK_OBJECT_HANDLE pub = find_signing(CKO_PUBLIC_KEY);
        CK_ATTRIBUTE ka[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}};
        CK_ATTRIBUTE ba[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
        char what[32] = "EC P-256";
        if (pub != CK_INVALID_HANDLE && p11->C_GetAttributeValue(session, pub, ka, 1) == CKR_OK && kt == CKK_RSA) {
            if (p11->C_GetAttributeValue(session, pub, ba, 1) == CKR_OK)
                snprintf(what, sizeof(what), "RSA %lu", (unsigned long)bits);
            else
                snprintf(what, sizeof(what), "RSA");
        }
        if (priv == CK_INVALID_HANDLE)
            fprintf(stderr, "generated the Guardian key pairs (%s, sensitive, never extractable) in token '%s': "
                            "agreement (%s only) and signing (sign only)\n",
                    what, token_label, kt == CKK_RSA ? "unwrap" : "derive");
        else if (sign_priv == CK_INVALID_HANDLE)
            fprintf(stderr, "generated the Guardian signing key pair (%s, sign only) in token '%s'\n", what,
                    token_label);
    }
    if (csr_out != NULL) {
        CK_ULONG len;
        unsigned char *der = get_attr(h, CKA_VALUE, &len);
        const unsigned char *p = der;
        X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
        BIO *b = BIO_new(BIO_s_mem());
        char *pem;
        long pem_len;
        P11(p11->C_DestroyObject(session, h));
        if (req == NULL)
            die("the module's CSR does not parse");
        if (b == NULL || !PEM_write_bio_X509_REQ(b, req))
            die("out of memory");
        pem_len = BIO_get_mem_data(b, &pem);
        write_output(csr_out, pem, (size_t)pem_len, force);
        BIO_free(b);
        fprintf(stderr, "wrote %s, the signing key's CSR: have the centre's CA sign it as a CA certificate "
                        "(basicConstraints CA:TRUE,pathlen:0; keyUsage digitalSignature,keyCertSign), then '" PROG
                        " import-cert CERT.pem'\n",
                csr_out);
        X509_REQ_free(req);
        free(der);
        X509_free(old_a);
        return 0;
    }
    a = cert_from_object(h);
    sc = cert_or_null(find_signing(CKO_CERTIFICATE));
    if (sc == NULL)
        die("the module made no signing certificate; its log line says why");
    fingerprint(a, fpr);
    fingerprint(sc, sfpr);
    if (old_a != NULL && strcmp(old_fpr, fpr) == 0)
        fprintf(stderr, "Guardian already initialized in token '%s'; certificate sha256:%s\n", token_label, fpr);
    else
        fprintf(stderr, "Guardian certificate (%s, the target of OEM packages) sha256:%s\n",
                EVP_PKEY_get_base_id(X509_get0_pubkey(a)) == EVP_PKEY_RSA ? "RSA key transport" : "key agreement", fpr);
    fprintf(stderr, "signing certificate (issued it, signs reports) sha256:%s\n", sfpr);
    if (old_a != NULL && strcmp(old_fpr, fpr) != 0)
        say_certificate_changed(old_fpr, fpr, out);
    write_pem_certs(a, sc, out, force);
    if (out)
        fprintf(stderr, "wrote %s (the Guardian certificate, then its signing certificate): give it to your OEM "
                        "customers\n",
                out);
    X509_free(a);
    X509_free(sc);
    X509_free(old_a);
    return 0;
}

static int cmd_import_cert(int argc, char **argv)
{
    X509 *x, *old_a, *a, *sc;
    CK_OBJECT_HANDLE h;
    unsigned char *der = NULL;
    int der_len;
    char fpr[65], old_fpr[65] = "", sfpr[65];
    CK_RV rv;
    if (argc != 2)
        usage_die("import-cert", "takes exactly one CERT.pem");
    x = read_cert_file(argv[1]);
    need_token();
    login(CKU_USER);
    if (find_identity(CKO_PUBLIC_KEY) == CK_INVALID_HANDLE || find_signing(CKO_PUBLIC_KEY) == CK_INVALID_HANDLE)
        die("no Guardian key pairs in token '%s': run '" PROG " init --csr FILE' first", token_label);
    old_a = cert_or_null(find_identity(CKO_CERTIFICATE));
    if (old_a != NULL)
        fingerprint(old_a, old_fpr);
    der_len = i2d_X509(x, &der);
    if (der_len <= 0)
        die("cannot encode %s", argv[1]);
    {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, der, (CK_ULONG)der_len}};
        rv = request(CKG_GUARDIAN_REQ_IDENTITY_CERT, t, 1, &h);
    }
    OPENSSL_free(der);
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
        die("%s refused: it is for neither Guardian key, or for the signing key but not a CA certificate (it "
            "must be a CA certificate: CA:TRUE, keyUsage digitalSignature,keyCertSign), or for the agreement key "
            "but not issued by the signing certificate (the module's log line says which)",
            argv[1]);
    if (rv != CKR_OK)
        die("the module refused the certificate: %s (0x%lx)", ckr(rv), (unsigned long)rv);
    a = cert_from_object(h);
    sc = cert_or_null(find_signing(CKO_CERTIFICATE));
    fingerprint(a, fpr);
    if (sc != NULL && X509_cmp(sc, x) == 0) {
        fingerprint(sc, sfpr);
        fprintf(stderr, "installed the signing certificate sha256:%s and issued the Guardian certificate "
                        "sha256:%s under it\n",
                sfpr, fpr);
    } else {
        fprintf(stderr, "installed the Guardian certificate sha256:%s\n", fpr);
    }
    if (old_a != NULL && strcmp(old_fpr, fpr) != 0)
        say_certificate_changed(old_fpr, fpr, NULL);
    else if (old_a == NULL)
        fprintf(stderr, "give your OEM customers the certificates: '" PROG " cert --out guardian.pem'\n");
    X509_free(x);
    X509_free(a);
    X509_free(sc);
    X509_free(old_a);
    return 0;
}

static int cmd_cert(int argc, char **argv)
{
    CK_OBJECT_HANDLE h;
    X509 *a, *sc;
    const char *out = NULL;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0)
            force = 1;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc && out == NULL)
            out = argv[++i];
        else
            usage_die("cert", "takes only --out FILE [--force]");
    }
    check_output("cert", out, force);
    need_token();
    h = find_identity(CKO_CERTIFICATE);
    if (h == CK_INVALID_HANDLE)
        die("no Guardian certificate in token '%s': run '" PROG " init'", token_label);
    a = cert_from_object(h);
    sc = cert_or_null(find_signing(CKO_CERTIFICATE));
    if (sc == NULL)
        fprintf(stderr, PROG ": warning: no signing certificate in token '%s' (a Guardian made before the "
                        "signing key was split off): run '" PROG " init' once (docs/operator-guide.md)\n",
                token_label);
    write_pem_certs(a, sc, out, force);
    X509_free(a);
    X509_free(sc);
    return 0;
}

/* ---- OEM roots ------------------------------------------------------------------------ */

/* The enrolled roots' certificates: the token's trusted certificates, and
 * the certificates labelled "guardian-root:" without CKA_TRUSTED that the
 * module makes to list a root of its ledger where the token refuses a
 * trusted certificate (opencryptoki, SoftHSM's user: mechs/enrol_root.c). */
CK_ULONG list_roots(CK_OBJECT_HANDLE *out, CK_ULONG max)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TRUSTED, &yes, 1}};
    CK_OBJECT_HANDLE all[256];
    CK_ULONG n = find_all(t, 2, out, max), m = find_all(t, 1, all, 256);
    for (CK_ULONG i = 0; i < m && n < max; i++) {
        CK_ULONG len = 0, k;
        unsigned char *label;
        for (k = 0; k < n && out[k] != all[i]; k++)
            ;
        if (k < n)
            continue;
        label = get_attr(all[i], CKA_LABEL, &len);
        if (label != NULL && len > strlen("guardian-root:") && strncmp((char *)label, "guardian-root:", 14) == 0)
            out[n++] = all[i];
        free(label);
    }
    return n;
}

/* How many enrolled roots have a SHA-256 fingerprint starting with `prefix`;
 * the last one found goes to `match`. */
static int roots_matching(const char *prefix, CK_OBJECT_HANDLE *match)
{
    CK_OBJECT_HANDLE roots[64];
    CK_ULONG n = list_roots(roots, 64);
    int matches = 0;
    for (CK_ULONG i = 0; i < n; i++) {
        X509 *x = cert_from_object(roots[i]);
        char fpr[65];
        fingerprint(x, fpr);
        X509_free(x);
        if (strncmp(fpr, prefix, strlen(prefix)) == 0) {
            *match = roots[i];
            matches++;
        }
    }
    return matches;
}

/* One enrolled root as a --json object: subject, sha256, oem_ids (empty: a
 * root enrolled before roots were bound to OEM IDs). */
void json_root(struct ctl_json *j, CK_OBJECT_HANDLE h)
{
    X509 *x = cert_from_object(h);
    char fpr[65], *subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    CK_ULONG len;
    unsigned char *label = get_attr(h, CKA_LABEL, &len);
    const char *prefix = "guardian-root:";
    fingerprint(x, fpr);
    ctl_json_object(j, NULL);
    ctl_json_string(j, "subject", subject);
    ctl_json_string(j, "sha256", fpr);
    ctl_json_array(j, "oem_ids");
    if (len > strlen(prefix) && strncmp((char *)label, prefix, strlen(prefix)) == 0)
        for (char *id = (char *)label + strlen(prefix), *comma; *id != '\0'; id = comma ? comma + 1 : id + strlen(id)) {
            comma = strchr(id, ',');
            ctl_json_string_n(j, NULL, id, comma ? (size_t)(comma - id) : strlen(id));
        }
    ctl_json_close(j);
    ctl_json_close(j);
    free(label);
    OPENSSL_free(subject);
    X509_free(x);
}

int confirm(const char *question)
{
    char answer[16];
    if (assume_yes)
        return 1;
    if (!isatty(STDIN_FILENO))
        die("%s — no terminal to confirm: pass --yes", question);
    fprintf(stderr, "%s [y/N] ", question);
    return fgets(answer, sizeof(answer), stdin) != NULL && (answer[0] == 'y' || answer[0] == 'Y');
}

void colon_fingerprint(X509 *x, char out[96])
{
    unsigned char md[32];
    unsigned int n = 0;
    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 3 * i, 4, "%02X%s", md[i], i < 31 ? ":" : "");
}

static int cmd_enroll(int argc, char **argv)
{
    X509 *x;
    char fpr[65], colons[96], ids[1100] = "", *subject;
    unsigned char *der = NULL;
    int der_len;
    const char *file = NULL;
    CK_OBJECT_HANDLE existing, h;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_ENROL_ROOT;
    CK_RV rv;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--oem-id") == 0 && i + 1 < argc) {
            const char *id = argv[++i];
            if (strlen(ids) + strlen(id) + 2 > sizeof(ids))
                die("too many --oem-id");
            if (ids[0] != '\0')
                strcat(ids, ",");
            strcat(ids, id);
        } else if (file == NULL && argv[i][0] != '-') {
            file = argv[i];
        } else {
            usage_die("enroll-oem", "unexpected argument '%s'", argv[i]);
        }
    }
    if (file == NULL || ids[0] == '\0')
        usage_die("enroll-oem", "needs ROOT.pem and --oem-id OEM for every OEM ID this root may sign packages for");
    need_token();
    x = read_cert_file(file);
    fingerprint(x, fpr);
    colon_fingerprint(x, colons);
    subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    if (X509_check_ca(x) != 1)
        die("%s (%s) is not a CA certificate: an OEM root must have basicConstraints CA:TRUE", file, subject);
    if (roots_matching(fpr, &existing) > 0) {
        CK_ULONG len;
        unsigned char *label = get_attr(existing, CKA_LABEL, &len);
        const char *prefix = "guardian-root:";
        int same = len > strlen(prefix) && strcmp((char *)label + strlen(prefix), ids) == 0;
        if (same) {
            fprintf(stderr, "already enrolled: %s sha256:%s for %s\n", subject, fpr, ids);
            free(label);
            OPENSSL_free(subject);
            X509_free(x);
            return 0;
        }
        die("%s is already enrolled as '%s': remove it first (" PROG " remove-oem %.16s) to change its OEM IDs",
            subject, (char *)label, fpr);
    }
    printf("OEM root  %s\nOEM IDs   %s\nsha256    %s\nSHA256 Fingerprint=%s\n", subject, ids, fpr, colons);
    if (!confirm("Check this fingerprint with the OEM out of band. Enrol this OEM root for these OEM IDs?"))
        die("not enrolled");
    login(CKU_SO);
    der_len = i2d_X509(x, &der);
    if (der_len <= 0)
        die("cannot encode %s", file);
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                            {CKA_VALUE, der, (CK_ULONG)der_len},
                            {CKA_GUARDIAN_OEM_IDS, ids, (CK_ULONG)strlen(ids)}};
        rv = p11->C_CreateObject(session, t, 4, &h);
    }
    OPENSSL_free(der);
    if (rv == CKR_GUARDIAN_ROOT_NOT_CA)
        die("%s is not a CA certificate", file);
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
        die("the OEM IDs '%s' are not valid (1..64 characters of A-Z a-z 0-9 - . _ : each, at most 16)", ids);
    if (rv == CKR_GUARDIAN_ROOT_NOT_ANCHORED)
        die("enrolment not anchored: the root is in the Guardian's store, but the token refused its state anchor, "
            "so the root does not count (%s; the module's log line names the backend's answer)",
            ckr(rv));
    if (rv != CKR_OK)
        die("enrolment refused: %s (0x%lx); the module's log line says why", ckr(rv), (unsigned long)rv);
    P11(p11->C_Logout(session));
    fprintf(stderr, "enrolled: packages signed under this root for %s can now be imported\n", ids);
    OPENSSL_free(subject);
    X509_free(x);
    return 0;
}

/* list-oems --json: {"oem_roots": [{"subject", "sha256", "oem_ids": [...]}]} */
static int json_list_oems(void)
{
    CK_OBJECT_HANDLE roots[64];
    CK_ULONG n = list_roots(roots, 64);
    struct ctl_json j;
    ctl_json_begin(&j, stdout);
    ctl_json_object(&j, NULL);
    ctl_json_array(&j, "oem_roots");
    for (CK_ULONG i = 0; i < n; i++)
        json_root(&j, roots[i]);
    ctl_json_end(&j);
    return 0;
}

static int cmd_list_oems(void)
{
    CK_OBJECT_HANDLE roots[64];
    CK_ULONG n;
    if (json_out)
        return json_list_oems();
    n = list_roots(roots, 64);
    for (CK_ULONG i = 0; i < n; i++) {
        X509 *x = cert_from_object(roots[i]);
        char fpr[65], *subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
        CK_ULONG len;
        unsigned char *label = get_attr(roots[i], CKA_LABEL, &len);
        const char *prefix = "guardian-root:";
        fingerprint(x, fpr);
        if (len > strlen(prefix) && strncmp((char *)label, prefix, strlen(prefix)) == 0)
            printf("sha256:%s  %s  for %s\n", fpr, subject, (char *)label + strlen(prefix));
        else
            printf("sha256:%s  %s  for no OEM ID (enrolled before roots were bound to OEM IDs: remove-oem and "
                   "enroll-oem --oem-id again)\n",
                   fpr, subject);
        free(label);
        OPENSSL_free(subject);
        X509_free(x);
    }
    if (n == 0)
        fprintf(stderr, "no OEM root enrolled in token '%s' ('" PROG " enroll-oem ROOT.pem --oem-id OEM')\n",
                token_label);
    return 0;
}

static int cmd_remove_oem(int argc, char **argv)
{
    CK_OBJECT_HANDLE match = CK_INVALID_HANDLE;
    int matches;
    const char *prefix;
    if (argc != 2 || strlen(argv[1]) < 8)
        usage_die("remove-oem", "takes one FINGERPRINT-PREFIX (at least 8 hex digits, from list-oems)");
    need_token();
    prefix = strncmp(argv[1], "sha256:", 7) == 0 ? argv[1] + 7 : argv[1];
    matches = roots_matching(prefix, &match);
    if (matches != 1)
        die("%s OEM root matches '%s'", matches == 0 ? "no" : "more than one", prefix);
    if (!confirm("Remove this OEM root? Its packages can no longer be imported."))
        die("not removed");
    login(CKU_SO);
    /* Find it again under the SO session: handles may change across logins. */
    if (roots_matching(prefix, &match) != 1)
        die("the OEM root changed while logging in; nothing removed");
    P11(p11->C_DestroyObject(session, match));
    P11(p11->C_Logout(session));
    fprintf(stderr, "removed\n");
    return 0;
}

/* ---- packages ------------------------------------------------------------------------------ */

static const char *explain(CK_RV rv)
{
    switch (rv) {
    case CKR_GUARDIAN_PACKAGE_SIGNATURE_INVALID: return "the OEM signature does not verify: the file was altered";
    case CKR_GUARDIAN_WRONG_GUARDIAN: return "the package was made for another Guardian";
    case CKR_GUARDIAN_UNTRUSTED_SIGNER: return "the signer does not chain to an enrolled OEM root (enroll-oem)";
    case CKR_GUARDIAN_PACKAGE_EXPIRED: return "the package's not-after date has passed: ask the OEM for a new one";
    case CKR_GUARDIAN_PACKAGE_REPLAYED: return "this package was already imported";
    case CKR_GUARDIAN_PACKAGE_ROLLBACK: return "a newer or equal release of this product is installed";
    case CKR_WRAPPED_KEY_INVALID: return "not a valid Guardian package";
    case CKR_WRAPPED_KEY_LEN_RANGE: return "the file is empty or too large";
    case CKR_MECHANISM_INVALID: return "this Guardian's backend cannot run the package import";
    case CKR_GUARDIAN_STORE_FAILED: return "the Guardian state store failed (see the log line)";
    default: return NULL;
    }
}

static int cmd_import(int argc, char **argv)
{
    FILE *f;
    unsigned char *pkg = malloc(PACKAGE_MAX_BYTES + 1);
    size_t len;
    CK_OBJECT_HANDLE obj = 0;
    CK_RV rv;

    struct stat st;

    if (argc != 2)
        usage_die("import", "takes exactly one PACKAGE");
    /* The file before the token: a directory, an empty or an oversized file
     * is named here, not sent to the module to be refused as bytes. */
    if (stat(argv[1], &st) != 0)
        die("cannot open %s: %s", argv[1], strerror(errno));
    if (S_ISDIR(st.st_mode))
        die("%s is a directory, not a package: name the package file (guardian-wrap create --out FILE.gpk)",
            argv[1]);
    if (!S_ISREG(st.st_mode))
        die("%s is not a regular file: name the package file", argv[1]);
    if (st.st_size == 0 || st.st_size > PACKAGE_MAX_BYTES)
        die("%s has %lld bytes: a package has 1..%d (docs/package-format.md)", argv[1], (long long)st.st_size,
            PACKAGE_MAX_BYTES);
    f = fopen(argv[1], "rb");
    if (f == NULL || pkg == NULL)
        die("cannot open %s: %s", argv[1], strerror(errno));
    len = fread(pkg, 1, PACKAGE_MAX_BYTES + 1, f);
    fclose(f);
    need_token();
    login(CKU_USER);
    if (find_identity(CKO_PRIVATE_KEY) == CK_INVALID_HANDLE)
        die("no Guardian key in token '%s': run '" PROG " init' first", token_label);
    {
        /* The request, not C_UnwrapKey with the vendor mechanism: the same
         * import in the module (with the Guardian key it finds itself), and
         * a call p11-kit's RPC carries. */
        CK_ATTRIBUTE t[] = {{CKA_VALUE, pkg, (CK_ULONG)len}};
        rv = request(CKG_GUARDIAN_REQ_IMPORT, t, 1, &obj);
    }
    free(pkg);
    if (rv != CKR_OK) {
        const char *why = explain(rv);
        die("import of %s refused: %s%s%s", argv[1], ckr(rv), why ? ": " : "", why ? why : "");
    }
    {
        /* The package object (CKO_GUARDIAN_PACKAGE) describes what is installed. */
        CK_ULONG release = 0, authorised = 0, remaining = 0, not_after = 0;
        CK_BYTE id[16];
        char oem[65] = "", product[65] = "";
        CK_ATTRIBUTE a[] = {{CKA_GUARDIAN_OEM_ID, oem, sizeof(oem) - 1},
                            {CKA_GUARDIAN_PRODUCT_ID, product, sizeof(product) - 1},
                            {CKA_GUARDIAN_RELEASE, &release, sizeof(release)},
                            {CKA_GUARDIAN_AUTHORISED_UNITS, &authorised, sizeof(authorised)},
                            {CKA_GUARDIAN_REMAINING_UNITS, &remaining, sizeof(remaining)},
                            {CKA_GUARDIAN_NOT_AFTER, &not_after, sizeof(not_after)},
                            {CKA_GUARDIAN_PACKAGE_ID, id, sizeof(id)}};
        P11(p11->C_GetAttributeValue(session, obj, a, sizeof(a) / sizeof(a[0])));
        oem[a[0].ulValueLen] = '\0';
        product[a[1].ulValueLen] = '\0';
        if (json_out) {
            struct ctl_json j;
            ctl_json_begin(&j, stdout);
            ctl_json_object(&j, NULL);
            ctl_json_string(&j, "imported", argv[1]);
            ctl_json_hex(&j, "package_id", id, sizeof(id));
            ctl_json_string(&j, "oem_id", oem);
            ctl_json_string(&j, "product_id", product);
            ctl_json_uint(&j, "release", release);
            ctl_json_uint(&j, "authorised_units", authorised);
            ctl_json_uint(&j, "remaining_units", remaining);
            ctl_json_time(&j, "not_after", (int64_t)not_after);
            ctl_json_end(&j);
            return 0;
        }
        {
            char when[32];
            ctl_iso8601((int64_t)not_after, when);
            printf("imported %s\npackage_id=", argv[1]);
            for (int i = 0; i < 16; i++)
                printf("%02x", id[i]);
            printf("\noem_id=%s\nproduct_id=%s\nrelease=%lu\nauthorised_units=%lu\nremaining_units=%lu\n"
                   "not_after=%s\nnot_after_unix=%lu\n",
                   oem, product, release, authorised, remaining, when, not_after);
        }
    }
    return 0;
}

/* ---- products and the Guardian's state, through the module ------------------------------------ */

static int product_order(const void *a, const void *b)
{
    const struct product *x = a, *y = b;
    int c = strcmp(x->oem, y->oem);
    return c != 0 ? c : strcmp(x->product, y->product);
}

/* Every installed product, ordered by OEM ID then product ID: the package
 * objects the module serves (one per installed release, CKA_PRIVATE FALSE: no
 * login needed), so the same through p11-kit-client.so as in-process, and
 * nothing of the state directory is read here.  *out is malloc'd. */
size_t list_products(struct product **out)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_PACKAGE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_OBJECT_HANDLE h[256];
    CK_ULONG n = find_all(t, 1, h, 256);
    struct product *p = calloc(n ? n : 1, sizeof(*p));
    if (p == NULL)
        die("out of memory");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_ATTRIBUTE a[] = {{CKA_GUARDIAN_OEM_ID, p[i].oem, GUARDIAN_ID_MAX},
                            {CKA_GUARDIAN_PRODUCT_ID, p[i].product, GUARDIAN_ID_MAX},
                            {CKA_GUARDIAN_RELEASE, &p[i].release, sizeof(CK_ULONG)},
                            {CKA_GUARDIAN_AUTHORISED_UNITS, &p[i].authorised, sizeof(CK_ULONG)},
                            {CKA_GUARDIAN_ISSUED_UNITS, &p[i].issued, sizeof(CK_ULONG)},
                            {CKA_GUARDIAN_REMAINING_UNITS, &p[i].remaining, sizeof(CK_ULONG)},
                            {CKA_GUARDIAN_NOT_AFTER, &p[i].not_after, sizeof(CK_ULONG)},
                            {CKA_GUARDIAN_PACKAGE_ID, p[i].package_id, sizeof(p[i].package_id)}};
        CK_RV rv = p11->C_GetAttributeValue(session, h[i], a, sizeof(a) / sizeof(a[0]));
        if (rv != CKR_OK)
            die("cannot read package object 0x%lx: %s (0x%lx)", (unsigned long)h[i], ckr(rv), (unsigned long)rv);
        for (size_t k = 2; k < 7; k++)
            if (a[k].ulValueLen != sizeof(CK_ULONG))
                die("package object 0x%lx: attribute 0x%lx is not a CK_ULONG (%lu bytes): a module of another "
                    "CK_ULONG size?",
                    (unsigned long)h[i], (unsigned long)a[k].type, (unsigned long)a[k].ulValueLen);
        p[i].oem[a[0].ulValueLen] = '\0';
        p[i].product[a[1].ulValueLen] = '\0';
    }
    qsort(p, n, sizeof(*p), product_order);
    *out = p;
    return n;
}

/* The product table, each line after `indent`. */
static void print_products(const char *indent)
{
    struct product *p;
    size_t n = list_products(&p);
    printf("%s%-16s %-20s %8s %10s %10s %10s  %s\n", indent, "OEM", "PRODUCT", "RELEASE", "AUTHORISED", "ISSUED",
           "REMAINING", "NOT AFTER");
    for (size_t i = 0; i < n; i++) {
        char when[32];
        time_t t = (time_t)p[i].not_after;
        ctl_iso8601((int64_t)p[i].not_after, when);
        printf("%s%-16s %-20s %8lu %10lu %10lu %10lu  %s%s\n", indent, p[i].oem, p[i].product, p[i].release,
               p[i].authorised, p[i].issued, p[i].remaining, when, t < time(NULL) ? " (expired)" : "");
    }
    free(p);
}

/* A product's members in a --json object (docs/guardianctl.md). */
void json_product(struct ctl_json *j, const struct product *p)
{
    ctl_json_string(j, "oem_id", p->oem);
    ctl_json_string(j, "product_id", p->product);
    ctl_json_uint(j, "release", p->release);
    ctl_json_hex(j, "package_id", p->package_id, sizeof(p->package_id));
    ctl_json_uint(j, "authorised_units", p->authorised);
    ctl_json_uint(j, "issued_units", p->issued);
    ctl_json_uint(j, "remaining_units", p->remaining);
    ctl_json_time(j, "not_after", (int64_t)p->not_after);
    ctl_json_bool(j, "expired", (time_t)p->not_after < time(NULL));
}

static int cmd_products(void)
{
    struct product *p;
    size_t n;
    struct ctl_json j;
    if (!json_out) {
        print_products("");
        return 0;
    }
    n = list_products(&p);
    ctl_json_begin(&j, stdout);
    ctl_json_object(&j, NULL);
    ctl_json_array(&j, "products");
    for (size_t i = 0; i < n; i++) {
        ctl_json_object(&j, NULL);
        json_product(&j, &p[i]);
        ctl_json_close(&j);
    }
    ctl_json_end(&j);
    free(p);
    return 0;
}

const char *status_value(const struct guardian_status *s, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *line = s->text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > klen && strncmp(line, key, klen) == 0 && line[klen] == '=') {
            snprintf(out, cap, "%.*s", (int)(len - klen - 1), line + klen + 1);
            return out;
        }
        line += len + (nl != NULL);
    }
    return NULL;
}

unsigned long long status_number(const struct guardian_status *s, const char *key)
{
    char v[32], *end = NULL;
    unsigned long long n;
    if (status_value(s, key, v, sizeof(v)) == NULL)
        die("the module's status has no '%s' (an older module?)", key);
    n = strtoull(v, &end, 10);
    if (end == v || *end != '\0')
        die("the module's status: '%s=%s' is not a number", key, v);
    return n;
}

static void status_word(const struct guardian_status *s, const char *key, char *out, size_t cap)
{
    if (status_value(s, key, out, cap) == NULL)
        die("the module's status has no '%s' (an older module?)", key);
}

void read_status(struct guardian_status *s)
{
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG len = 0;
    char v[32];
    CK_RV rv = request(CKG_GUARDIAN_REQ_STATUS, NULL, 0, &h);

    if (rv != CKR_OK)
        die("the module could not report the Guardian's state: %s (0x%lx)%s", ckr(rv), (unsigned long)rv,
            rv == CKR_GUARDIAN_REQUEST_INVALID ? ": a module older than this guardianctl"
                                               : "; its log line says why");
    memset(s, 0, sizeof(*s));
    s->text = (char *)get_attr(h, CKA_VALUE, &len);
    P11(p11->C_DestroyObject(session, h));
    if (status_number(s, "version") < 1)
        die("the module's status is of an unknown version");
    if (status_value(s, "backend", s->backend, sizeof(s->backend)) == NULL ||
        status_value(s, "configuration", s->configuration, sizeof(s->configuration)) == NULL ||
        status_value(s, "state_dir", s->state_dir, sizeof(s->state_dir)) == NULL)
        die("the module's status names no backend, configuration or state directory");
    status_word(s, "audit_chain", v, sizeof(v));
    s->chain_ok = strcmp(v, "ok") == 0;
    status_word(s, "anchor", s->anchor, sizeof(s->anchor));
    s->audit_records = status_number(s, "audit_records");
    s->audit_head_seq = status_number(s, "audit_head_seq");
    s->audit_head_time = status_number(s, "audit_head_time");
    s->anchor_seq = status_number(s, "anchor_seq");
    s->products = status_number(s, "products");
}

/* The status's "Guardian state" section. */
static void print_state(const struct guardian_status *s)
{
    char when[40] = "-", v[16];
    time_t t = (time_t)s->audit_head_time;
    struct tm tm;
    if (s->audit_head_seq > 0 && gmtime_r(&t, &tm) != NULL)
        ctl_iso8601((int64_t)t, when);
    if (s->chain_ok)
        printf("  audit trail   %llu record%s, hash chain intact; head %llu, %s\n", s->audit_records,
               s->audit_records == 1 ? "" : "s", s->audit_head_seq, when);
    else
        printf("  audit trail   hash chain BROKEN after record %llu (CKR_GUARDIAN_AUDIT_CORRUPT)\n", s->audit_records);
    printf("                %llu import, %llu reserve, %llu issue, %llu release, %llu journal lost, %llu "
           "credential, %llu export\n",
           status_number(s, "records_import"), status_number(s, "records_reserve"),
           status_number(s, "records_issue"), status_number(s, "records_release"),
           status_number(s, "records_journal_lost"), status_number(s, "records_credential"),
           status_number(s, "records_export"));
    if (strcmp(s->anchor, "absent") == 0)
        printf("  anchor        none in the token yet (the first import writes it)\n");
    else if (strcmp(s->anchor, "agrees") == 0)
        printf("  anchor        the store agrees with the token's anchor (record %llu)\n", s->anchor_seq);
    else if (strcmp(s->anchor, "store-ahead") == 0)
        printf("  anchor        the store is ahead of the token's anchor (record %llu): the next import or block of "
               "units moves it up\n",
               s->anchor_seq);
    else if (strcmp(s->anchor, "behind") == 0)
        printf("  anchor        the store is BEHIND the token's anchor (record %llu): CKR_GUARDIAN_STATE_ROLLBACK\n",
               s->anchor_seq);
    else
        printf("  anchor        INVALID: not an anchor the Guardian wrote (%s)\n", s->anchor);
    printf("  products      %llu installed: %llu units authorised, %llu issued, %llu remaining\n", s->products,
           status_number(s, "units_authorised"), status_number(s, "units_issued"),
           status_number(s, "units_remaining"));
    status_word(s, "service_mode", v, sizeof(v));
    if (strcmp(v, "yes") != 0) {
        printf("  service mode  no: C_Login takes the backend's own PINs\n");
        return;
    }
    printf("  service mode  yes: C_Login takes the Guardian's own credentials; the module alone holds the "
           "backend's PIN\n");
    {
        char so_locked[8];
        unsigned long long ops = status_number(s, "operators");
        status_word(s, "so", v, sizeof(v));
        status_word(s, "so_locked", so_locked, sizeof(so_locked));
        if (strcmp(v, "set") == 0)
            printf("  credentials   Security Officer set%s (%llu failed logins in a row)",
                   strcmp(so_locked, "yes") == 0 ? " and LOCKED" : "", status_number(s, "so_failures"));
        else
            printf("  credentials   no Security Officer yet (C_InitToken sets it)");
        printf("; %llu operator%s, %llu locked", ops, ops == 1 ? "" : "s", status_number(s, "operators_locked"));
        if (ops > 0)
            printf(" (at most %llu failed logins in a row)", status_number(s, "operators_max_failures"));
        printf("\n");
    }
}

const char *state_unsound(const struct guardian_status *s, const char **code)
{
    static char msg[PATH_MAX + 512];
    *code = "CKR_GUARDIAN_STATE_ROLLBACK";
    /* No record at all while the token has seen some: not an old copy but no
     * state, most often a file system that is not mounted (its mount point
     * is an empty directory) or a state_dir naming another directory. */
    if (strcmp(s->anchor, "behind") == 0 && s->audit_records == 0)
        snprintf(msg, sizeof(msg),
                 "the Guardian state in %s is empty while the token has seen record %llu "
                 "(CKR_GUARDIAN_STATE_ROLLBACK): is the file system that holds it mounted? is state_dir (or "
                 "GUARDIAN_STATE_DIR) the Guardian's directory? mount it or correct the setting; nothing is granted "
                 "from an empty state",
                 s->state_dir, s->anchor_seq);
    else if (strcmp(s->anchor, "behind") == 0)
        snprintf(msg, sizeof(msg),
                 "the Guardian state in %s is older than the token's anchor (CKR_GUARDIAN_STATE_ROLLBACK): a restored "
                 "backup, a deleted or swapped guardian.db, or another state directory; put the Guardian's current "
                 "state back, nothing is granted from this one",
                 s->state_dir);
    else if (strcmp(s->anchor, "invalid") == 0)
        snprintf(msg, sizeof(msg),
                 "the token's state anchor is not one the Guardian wrote (CKR_GUARDIAN_STATE_ROLLBACK): the token was "
                 "changed outside the Guardian; nothing is granted until it is put right");
    else if (!s->chain_ok) {
        *code = "CKR_GUARDIAN_AUDIT_CORRUPT";
        snprintf(msg, sizeof(msg),
                 "the audit trail in %s is corrupt after record %llu (CKR_GUARDIAN_AUDIT_CORRUPT): a record was "
                 "altered, removed or reordered; the module's log line names it",
                 s->state_dir, s->audit_records);
    } else
        return NULL;
    return msg;
}

void die_if_state_unsound(const struct guardian_status *s)
{
    const char *code, *msg = state_unsound(s, &code);
    if (msg != NULL)
        die("%s", msg);
}

/* ---- status ------------------------------------------------------------------------------------ */

void trimmed(char *out, const CK_UTF8CHAR *field, size_t width)
{
    size_t n = width;
    while (n > 0 && (field[n - 1] == ' ' || field[n - 1] == '\0'))
        n--;
    memcpy(out, field, n);
    out[n] = '\0';
}

static void print_token_flags(CK_FLAGS f)
{
    static const struct {
        CK_FLAGS flag;
        const char *name;
    } names[] = {
        {CKF_RNG, "rng"},
        {CKF_WRITE_PROTECTED, "write-protected"},
        {CKF_LOGIN_REQUIRED, "login-required"},
        {CKF_USER_PIN_INITIALIZED, "user-pin-initialized"},
        {CKF_PROTECTED_AUTHENTICATION_PATH, "protected-authentication-path"},
        {CKF_TOKEN_INITIALIZED, "token-initialized"},
        {CKF_USER_PIN_COUNT_LOW, "USER-PIN-COUNT-LOW"},
        {CKF_USER_PIN_FINAL_TRY, "USER-PIN-FINAL-TRY"},
        {CKF_USER_PIN_LOCKED, "USER-PIN-LOCKED"},
        {CKF_USER_PIN_TO_BE_CHANGED, "USER-PIN-TO-BE-CHANGED"},
        {CKF_SO_PIN_COUNT_LOW, "SO-PIN-COUNT-LOW"},
        {CKF_SO_PIN_FINAL_TRY, "SO-PIN-FINAL-TRY"},
        {CKF_SO_PIN_LOCKED, "SO-PIN-LOCKED"},
        {CKF_SO_PIN_TO_BE_CHANGED, "SO-PIN-TO-BE-CHANGED"},
    };
    const char *sep = "";
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (f & names[i].flag) {
            printf("%s%s", sep, names[i].name);
            sep = " ";
        }
    printf("\n");
}

int parse_probe_line(char *line, struct probe_line *out)
{
    int off = 0;
    if (sscanf(line, "%39s %15s %63s %n", out->name, out->verdict, out->rv, &off) != 3 || off == 0)
        return 0;
    out->sentence = line + off;
    return 1;
}

void status_report(const struct guardian_status *s)
{
    struct guardian_status gs = *s;
    CK_TOKEN_INFO ti;
    CK_OBJECT_HANDLE cert, roots[64], probe_out = CK_INVALID_HANDLE;
    CK_ULONG n_roots, probe_len = 0;
    char field[65], *probe_text = NULL, *save = NULL, *line;
    int n_not = 0;
    CK_RV rv;

    P11(p11->C_GetTokenInfo(slot, &ti));
    printf("Token\n");
    trimmed(field, ti.label, sizeof(ti.label));
    printf("  label         %s\n", field);
    trimmed(field, ti.model, sizeof(ti.model));
    printf("  model         %s\n", field);
    trimmed(field, ti.manufacturerID, sizeof(ti.manufacturerID));
    printf("  manufacturer  %s\n", field);
    trimmed(field, ti.serialNumber, sizeof(ti.serialNumber));
    printf("  serial        %s\n", field);
    printf("  flags         ");
    print_token_flags(ti.flags);

    printf("\nBackend\n");
    printf("  library       %s\n", gs.backend);
    printf("  configuration %s\n", gs.configuration[0] ? gs.configuration : "(none: GUARDIAN_BACKEND from the environment)");
    printf("  state         %s\n", gs.state_dir);
    print_status_store(&gs);

    printf("\nGuardian identity\n");
    cert = find_identity(CKO_CERTIFICATE);
    if (cert == CK_INVALID_HANDLE && find_signing(CKO_PRIVATE_KEY) != CK_INVALID_HANDLE) {
        printf("  key pairs made, no signing certificate yet: '" PROG " import-cert' the centre CA's answer to the "
               "CSR, or '" PROG " init' for self-signed certificates\n");
    } else if (cert == CK_INVALID_HANDLE) {
        printf("  none: run '" PROG " init'\n");
    } else {
        X509 *a = cert_from_object(cert), *sc = cert_or_null(find_signing(CKO_CERTIFICATE));
        X509 *both[2] = {a, sc};
        int rsa = a != NULL && EVP_PKEY_get_base_id(X509_get0_pubkey(a)) == EVP_PKEY_RSA;
        const char *what[2] = {rsa ? "certificate (RSA key transport: the target of OEM packages)"
                                   : "certificate (key agreement: the target of OEM packages)",
                               "signing certificate (issued it; signs reports)"};
        for (int i = 0; i < 2 && both[i] != NULL; i++) {
            char colons[96], *subject = X509_NAME_oneline(X509_get_subject_name(both[i]), NULL, 0);
            char *issuer = X509_NAME_oneline(X509_get_issuer_name(both[i]), NULL, 0);
            colon_fingerprint(both[i], colons);
            printf("  %s\n    subject     %s\n    issuer      %s\n    SHA256 Fingerprint=%s\n", what[i], subject,
                   issuer, colons);
            OPENSSL_free(subject);
            OPENSSL_free(issuer);
        }
        if (find_signing(CKO_PRIVATE_KEY) == CK_INVALID_HANDLE)
            printf("  no signing key: this Guardian was made before the signing key was split off; run '" PROG
                   " init' once (docs/operator-guide.md, \"Upgrading a Guardian made before the split\")\n");
        else if (sc == NULL)
            printf("  no signing certificate yet: '" PROG " import-cert' the CA's answer to the CSR, or '" PROG
                   " init'\n");
        X509_free(a);
        X509_free(sc);
    }

    printf("\nEnrolled OEM roots\n");
    n_roots = list_roots(roots, 64);
    for (CK_ULONG i = 0; i < n_roots; i++) {
        X509 *x = cert_from_object(roots[i]);
        char colons[96], *subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
        CK_ULONG len;
        unsigned char *label = get_attr(roots[i], CKA_LABEL, &len);
        const char *prefix = "guardian-root:";
        int bound = len > strlen(prefix) && strncmp((char *)label, prefix, strlen(prefix)) == 0;
        colon_fingerprint(x, colons);
        printf("  %s  for %s\n    SHA256 Fingerprint=%s\n", subject,
               bound ? (char *)label + strlen(prefix) : "no OEM ID (enrolled before roots were bound to OEM IDs)",
               colons);
        free(label);
        OPENSSL_free(subject);
        X509_free(x);
    }
    if (n_roots == 0)
        printf("  none ('" PROG " enroll-oem ROOT.pem --oem-id OEM')\n");

    printf("\nProducts\n");
    print_status_products(&gs, "  ");

    printf("\nGuardian state (checked by the module now)\n");
    print_state(&gs);

    /* The probe: the module tries each protection on throwaway objects. */
    rv = request(CKG_GUARDIAN_REQ_PROBE, NULL, 0, &probe_out);
    if (rv != CKR_OK)
        die("the module could not probe the backend: %s (0x%lx); its log line says why", ckr(rv), (unsigned long)rv);
    probe_text = (char *)get_attr(probe_out, CKA_VALUE, &probe_len);
    P11(p11->C_DestroyObject(session, probe_out));

    printf("\nWhat the backend itself enforces (tried by the module on throwaway session objects)\n");
    {
        char *copy = strdup(probe_text);
        if (copy == NULL)
            die("out of memory");
        for (line = strtok_r(copy, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
            struct probe_line pl;
            if (!parse_probe_line(line, &pl))
                die("the module's probe answer does not parse: '%s'", line);
            printf("  %-20s %-13s %s\n", pl.name, pl.verdict, pl.rv);
        }
        free(copy);
    }

    printf("\nThrough the Guardian module every Guardian object is refused to standard calls. Someone who holds "
           "this backend's own user PIN and loads %s directly could still:\n",
           gs.backend);
    save = NULL;
    for (line = strtok_r(probe_text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        struct probe_line pl;
        if (parse_probe_line(line, &pl) && strcmp(pl.verdict, "NOT-ENFORCED") == 0) {
            printf("  - %s (%s is not enforced)\n", pl.sentence, pl.name);
            n_not++;
        }
    }
    printf("  - sign with the production CA keys and the Guardian's signing key, within their usage flags: issue "
           "device certificates that no quota counts and no audit record lists, sign reports and CSRs as this "
           "Guardian;\n"
           "  - derive with the Guardian's agreement key (ECDH, CKA_DERIVE; it cannot sign) the key-encryption key "
           "of any package made for "
           "this Guardian, and so unwrap its secrets, the production CA key included, as keys of their own "
           "choosing;\n"
           "  - delete token objects, including the state anchor, the enrolled OEM roots and the Guardian "
           "identity;\n"
           "  - read the state directory %s (packages imported, counters, the audit trail), and change it where "
           "the account can write it.\n",
           gs.state_dir);
    if (n_not == 0)
        printf("(The backend enforced every protection it supports; the remainder above is what no backend "
               "setting removes.)\n");
    printf("Service mode (p11-kit server, next issue) removes that: the operators never hold the backend's PIN.\n");
    free(probe_text);
}

/* ---- main -------------------------------------------------------------------------------------- */

static int run_list_oems(int argc, char **argv)
{
    if (argc != 1)
        usage_die("list-oems", "unexpected argument '%s'", argv[1]);
    need_token();
    return cmd_list_oems();
}

static int run_products(int argc, char **argv)
{
    if (argc != 1)
        usage_die("products", "unexpected argument '%s'", argv[1]);
    need_token();
    return cmd_products();
}

/* The commands: their usage, the options they take ("name=" takes a value),
 * main checks a command's options against this
 * table, and answers --help, before anything is loaded or opened. */
static const struct command {
    const char *name, *args, *about;
    const char *opts[12];
    int (*run)(int argc, char **argv);
} commands[] = {
    {"init", "[--subject /CN=NAME] [--days N] [--key-type p256|rsa2048|rsa3072] [--csr FILE | --out FILE] [--force]",
     "create the Guardian's key pairs (agreement, signing) and certificates\n"
     "(or the signing key's CSR); upgrades a one-key Guardian",
     {"subject=", "days=", "key-type=", "csr=", "out=", "force"}, cmd_init},
    {"import-cert", "CERT", "install a CA-signed certificate for the signing key (or agreement key)", {""}, cmd_import_cert},
    {"cert", "[--out FILE] [--force]", "print the Guardian certificate, then its signing certificate (PEM)",
     {"out=", "force"}, cmd_cert},
    {"enroll-oem", "ROOT.pem --oem-id OEM [--oem-id OEM...] [--yes]", "trust an OEM root (Security Officer)",
     {"oem-id=", "yes"}, cmd_enroll},
    {"list-oems", "[--json]", "list enrolled OEM roots", {"json"}, run_list_oems},
    {"remove-oem", "FINGERPRINT-PREFIX [--yes]", "remove an OEM root (Security Officer)", {"yes"}, cmd_remove_oem},
    {"import", "PACKAGE [--json]", "import a wrapped package (unwrapped inside the HSM by the module)", {"json"},
     cmd_import},
    {"products", "[--json]", "installed products, quotas, remaining units (the module's package objects)", {"json"},
     run_products},
    {"status", "[--json] [--watch [SECONDS]]",
     "token, backend, identity, OEM roots, products with the running lines'\n"
     "rate and ETA, the state (audit chain, anchor; checked by the module\n"
     "now), and what the backend itself enforces against someone who holds\n"
     "its own PIN; --watch refreshes every SECONDS (default 2) until Ctrl-C",
     {"json", "watch"}, run_status},
    {"provision",
     "--product OEM/PRODUCT --count N [--out DIR] [--threads T] [--first K]\n"
     "    [--prefix SN-] [--key-type p256|p384|rsa2048] [--quiet] [--reissue]\n"
     "    [--manifest FILE] [--json]",
     "issue certificates for N simulated parts (resumable); each is listed\n"
     "in the manifest (default DIR/manifest.jsonl) once its file is durable",
     {"product=", "count=", "out=", "threads=", "first=", "prefix=", "key-type=", "quiet", "reissue", "manifest=",
      "json"},
     cmd_provision},
    {"ca-request", "--product OEM/PRODUCT --subject /O=ORG/CN=NAME [--key-type p256|p384|rsa2048]\n"
     "    --out FILE [--force]",
     "make a production CA key pair for a product inside the token and its\n"
     "CSR, bound to this Guardian by its signing key (the key never leaves)",
     {"product=", "subject=", "key-type=", "out=", "force"}, cmd_ca_request},
    {"retire-ca", "--product OEM/PRODUCT --release N [--yes] [--json]",
     "destroy a superseded release's production CA key in the token\n"
     "(recorded in the audit trail; never the installed release's)",
     {"product=", "release=", "yes", "json"}, cmd_retire_ca},
    {"audit", "export [--product OEM/PRODUCT] [--out FILE] [--force] [--json]",
     "the audit trail and certificates, signed by the Guardian's signing key", {"product=", "out=", "force", "json"},
     cmd_audit},
    {"part", "--product OEM/PRODUCT (--device ID | --from FILE) [--hex] programmed|scrapped",
     "report what became of issued parts (an OUTCOME audit record each)", {"product=", "device=", "from=", "hex"},
     cmd_part},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--module PATH] [--token LABEL] COMMAND [ARGS]\n"
               "       " PROG " --version | --help | COMMAND --help\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const char *a = commands[i].about;
        fprintf(f, "  %s %s\n", commands[i].name, commands[i].args);
        while (*a != '\0') {
            const char *nl = strchr(a, '\n');
            int len = nl ? (int)(nl - a) : (int)strlen(a);
            fprintf(f, "        %.*s\n", len, a);
            a += len + (nl != NULL);
        }
    }
    fprintf(f, "PINs: GUARDIAN_PIN, GUARDIAN_SO_PIN, else asked on the terminal.\n"
               "Exit status (as guardian-wrap): 0 done; 1 refused or failed; 2 usage error; 130 interrupted.\n");
}

static void command_usage(const struct command *c)
{
    printf("usage: " PROG " [--module PATH] [--token LABEL] %s %s\n%s\n", c->name, c->args, c->about);
    printf("guardianctl(1), docs/guardianctl.md; exit status: 0 done, 1 refused or failed, 2 usage error, "
           "130 interrupted.\n");
}

/* 1 if `arg` ("--name" or "--name=value") is one of c's options; *takes_value
 * says whether it needs one. */
static int known_option(const struct command *c, const char *arg, int *takes_value)
{
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    for (size_t i = 0; i < sizeof(c->opts) / sizeof(c->opts[0]) && c->opts[i] != NULL; i++) {
        const char *o = c->opts[i];
        size_t olen = strcspn(o, "=");
        if (olen == len && olen > 0 && strncmp(o, name, len) == 0) {
            *takes_value = o[olen] == '=';
            return 1;
        }
    }
    return 0;
}

/* Before anything is loaded: --help / -h anywhere prints the command's usage;
 * an unknown option, or one without its value, is a usage error.  Returns a
 * copy of argv with every "--name=value" split in two, which is what the
 * commands' own parsers expect. */
static char **check_options(const struct command *c, int argc, char **argv, int *out_argc)
{
    char **v = calloc((size_t)argc * 2 + 1, sizeof(*v));
    int n = 0;
    if (v == NULL)
        die("out of memory");
    for (int j = 1; j < argc; j++)
        if (strcmp(argv[j], "--help") == 0 || strcmp(argv[j], "-h") == 0) {
            command_usage(c);
            exit(0);
        }
    v[n++] = argv[0];
    for (int j = 1; j < argc; j++) {
        const char *a = argv[j], *eq;
        int takes_value = 0;
        if (a[0] != '-' || a[1] == '\0') {
            v[n++] = argv[j];
            continue;
        }
        if (a[1] != '-' || !known_option(c, a, &takes_value))
            usage_die(c->name, "unknown option '%s'", a);
        eq = strchr(a, '=');
        if (eq != NULL && !takes_value)
            usage_die(c->name, "option '%.*s' takes no value", (int)(eq - a), a);
        if (eq != NULL) {
            char *name = strndup(a, (size_t)(eq - a));
            if (name == NULL)
                die("out of memory");
            v[n++] = name;
            v[n++] = (char *)eq + 1;
            continue;
        }
        v[n++] = argv[j];
        if (takes_value) {
            if (j + 1 >= argc)
                usage_die(c->name, "option '%s' needs a value", a);
            v[n++] = argv[++j];
        }
    }
    *out_argc = n;
    return v;
}

int main(int argc, char **argv)
{
    const struct command *cmd = NULL;
    char **cargv;
    int i = 1, cargc, rc;

    opterr = 0; /* the commands name a bad option themselves */
    if (getenv("GUARDIAN_MODULE") != NULL)
        module_path = getenv("GUARDIAN_MODULE");
    token_label = getenv("GUARDIAN_TOKEN") ? getenv("GUARDIAN_TOKEN") : "guardian";
    for (; i < argc && argv[i][0] == '-'; i++) {
        if ((strcmp(argv[i], "--module") == 0 || strcmp(argv[i], "--token") == 0) && i + 1 >= argc) {
            fprintf(stderr, PROG ": option '%s' needs a value (" PROG " --help)\n", argv[i]);
            return EXIT_USAGE;
        } else if (strcmp(argv[i], "--module") == 0)
            module_path = argv[++i];
        else if (strcmp(argv[i], "--token") == 0)
            token_label = argv[++i];
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf(PROG " " GUARDIAN_TOOLS_VERSION "\n");
            return 0;
        } else {
            fprintf(stderr, PROG ": unknown option '%s' (" PROG " --help)\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[i], "version") == 0) {
        printf(PROG " " GUARDIAN_TOOLS_VERSION "\n");
        return 0;
    }
    if (strcmp(argv[i], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t k = 0; k < N_COMMANDS; k++)
        if (strcmp(argv[i], commands[k].name) == 0)
            cmd = &commands[k];
    if (cmd == NULL) {
        fprintf(stderr, PROG ": unknown command '%s' (" PROG " --help)\n", argv[i]);
        return EXIT_USAGE;
    }
    for (int j = i + 1; j < argc; j++) /* so that a usage error is JSON too */
        if (strcmp(argv[j], "--json") == 0)
            json_out = 1;
    cargv = check_options(cmd, argc - i, argv + i, &cargc);
    for (int j = 1; j < cargc; j++)
        if (strcmp(cargv[j], "--yes") == 0 || strcmp(cargv[j], "--json") == 0) {
            *(strcmp(cargv[j], "--yes") == 0 ? &assume_yes : &json_out) = 1;
            memmove(cargv + j, cargv + j + 1, (size_t)(cargc - j) * sizeof(*cargv));
            cargc--;
            j--;
        }
    rc = cmd->run(cargc, cargv);
    if (p11 != NULL)
        close_token();
    free(cargv);
    return rc;
}
