/*
 * credentials.c — the Guardian's own credentials (service mode).
 *
 * Without `backend_pin_file` in the configuration, the functions here forward
 * to the backend unchanged: whoever runs the module in-process holds the
 * backend's PIN (benches, tests, a single-user workstation).
 *
 * With it (docs/service-mode.md), the module is the only holder of the
 * backend's PINs and the slot takes credentials of the Guardian's own:
 *   - CKU_USER: several named operators, PIN "NAME:SECRET" (or C_LoginUser);
 *   - CKU_SO: one Security Officer.
 * Each is a salted scrypt hash in the store (store.h, guardian_credential).
 * A login is checked here and then opens the backend with the PIN read from
 * the backend PIN file, so that an operator's PIN never opens the backend and
 * the backend's PIN never reaches a client.  A failed attempt is counted in the
 * store *before* the hash is compared, so killing the process after a wrong
 * guess does not get the guess for free; the 5th consecutive failure locks.
 * C_InitToken, C_InitPIN and C_SetPIN manage these credentials and are never
 * forwarded (a forwarded C_InitToken would erase the backend token).
 *
 * Threads: one mutex (cred_lock) serialises logins and credential changes in
 * the process; they are rare and the scrypt cost dominates anyway.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "anchor.h"
#include "module.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define CRED_LOG "login"
#define PIN_FILE_MAX 255
#define SECRET_MIN 8
#define SECRET_MAX 128
#define KDF_R 8u
#define KDF_P 1u
#define SO_NAME "so"

/* Who is logged in on which slot, in this process (PKCS#11 logins belong to
 * the application, not to a session).  A slot the backend reports logged out
 * (its last session closed) is stale and cleared on the next look. */
#define MAX_LOGINS 16
static struct login {
    bool used;
    CK_SLOT_ID slot;
    CK_USER_TYPE who; /* CKU_USER or CKU_SO */
    char name[GUARDIAN_OPERATOR_MAX + 1];
} logins[MAX_LOGINS];
static pthread_mutex_t cred_lock = PTHREAD_MUTEX_INITIALIZER;

atomic_int guardian_service_on;

/* Mechanisms whose parameter may reach the backend in service mode: flat
 * bytes or flat structs, and OAEP, which p11-kit serialises and rebuilds
 * with pointers of its own (rpc-message.c). */
static const CK_MECHANISM_TYPE flat_parameter[] = {
    CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_OFB, CKM_AES_CFB8, CKM_AES_CFB64, CKM_AES_CFB128, CKM_AES_CTS,
    CKM_AES_CTR, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_DES3_CBC, CKM_DES3_CBC_PAD,
    CKM_RSA_PKCS_PSS, CKM_SHA1_RSA_PKCS_PSS, CKM_SHA224_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP,
};

CK_RV guardian_service_mechanism_check(const CK_MECHANISM *m, const char *function)
{
    if (m == NULL || !atomic_load_explicit(&guardian_service_on, memory_order_relaxed))
        return CKR_OK;
    if ((m->mechanism & CKM_VENDOR_DEFINED) != 0) {
        guardian_warn(CRED_LOG, "%s: refused: vendor mechanism 0x%lx in service mode (the Guardian's operations are "
                                "CKO_GUARDIAN_REQUEST requests: docs/vendor-interface.md)",
                      function, (unsigned long)m->mechanism);
        return CKR_MECHANISM_INVALID;
    }
    if (m->pParameter == NULL && m->ulParameterLen == 0)
        return CKR_OK;
    for (size_t i = 0; i < sizeof(flat_parameter) / sizeof(flat_parameter[0]); i++)
        if (flat_parameter[i] == m->mechanism)
            return CKR_OK;
    guardian_warn(CRED_LOG, "%s: refused: mechanism 0x%lx with a parameter in service mode (p11-kit's RPC cannot "
                            "carry its pointers; docs/service-mode.md)",
                  function, (unsigned long)m->mechanism);
    return CKR_MECHANISM_INVALID;
}

bool guardian_service_mode(void)
{
    const struct guardian_config *cfg = guardian_state_config();
    return cfg != NULL && cfg->backend_pin_file[0] != '\0';
}

void guardian_credentials_reset(void)
{
    pthread_mutex_lock(&cred_lock);
    memset(logins, 0, sizeof(logins));
    pthread_mutex_unlock(&cred_lock);
}

void guardian_credentials_atfork_child(void)
{
    pthread_mutex_init(&cred_lock, NULL);
    memset(logins, 0, sizeof(logins));
}

static struct login *login_find_locked(CK_SLOT_ID slot)
{
    for (size_t i = 0; i < MAX_LOGINS; i++)
        if (logins[i].used && logins[i].slot == slot)
            return &logins[i];
    return NULL;
}

static void login_clear_locked(CK_SLOT_ID slot)
{
    struct login *l = login_find_locked(slot);
    if (l != NULL)
        memset(l, 0, sizeof(*l));
}

/* ---- the backend's PIN files ---------------------------------------------------- */

/* Read the PIN in `path` (config key `key`): a regular file of this process's
 * user, not readable by group or others, 1..255 bytes, one trailing newline
 * dropped.  CKR_GUARDIAN_CONFIG_INVALID with one log line otherwise. */
static CK_RV pin_file_read(const char *path, const char *key, unsigned char buf[PIN_FILE_MAX + 1], size_t *len)
{
    struct stat sb;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        guardian_error("config", "%s %s cannot be opened: %s%s", key, path, strerror(errno),
                       errno == ELOOP ? " (it is a symbolic link: refused)" : "");
        return CKR_GUARDIAN_CONFIG_INVALID;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        guardian_error("config", "%s %s is not a regular file: refused", key, path);
        goto bad;
    }
    if (sb.st_uid != geteuid()) {
        guardian_error("config", "%s %s belongs to uid %u, not to the user the module runs as (uid %u): refused; "
                                 "chown it to the service's user",
                       key, path, (unsigned)sb.st_uid, (unsigned)geteuid());
        goto bad;
    }
    if ((sb.st_mode & 077) != 0) {
        guardian_error("config", "%s %s is readable or writable by group or others (mode %04o): refused; chmod 400 %s",
                       key, path, (unsigned)(sb.st_mode & 07777), path);
        goto bad;
    }
    if (sb.st_size < 1 || sb.st_size > PIN_FILE_MAX) {
        guardian_error("config", "%s %s must hold 1 to %d bytes (it has %lld)", key, path, PIN_FILE_MAX,
                       (long long)sb.st_size);
        goto bad;
    }
    do
        n = read(fd, buf, PIN_FILE_MAX + 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 1 || n > PIN_FILE_MAX) {
        OPENSSL_cleanse(buf, PIN_FILE_MAX + 1);
        guardian_error("config", "%s %s could not be read whole", key, path);
        return CKR_GUARDIAN_CONFIG_INVALID;
    }
    if (buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        OPENSSL_cleanse(buf, PIN_FILE_MAX + 1);
        guardian_error("config", "%s %s holds an empty PIN", key, path);
        return CKR_GUARDIAN_CONFIG_INVALID;
    }
    *len = (size_t)n;
    return CKR_OK;
bad:
    close(fd);
    return CKR_GUARDIAN_CONFIG_INVALID;
}

CK_RV guardian_secret_file_read(const char *path, const char *key, char buf[256], size_t *len)
{
    unsigned char b[PIN_FILE_MAX + 1];
    CK_RV rv = pin_file_read(path, key, b, len);

    if (rv == CKR_OK) {
        if (memchr(b, '\0', *len) != NULL) {
            guardian_error("config", "%s %s holds a NUL byte: refused", key, path);
            rv = CKR_GUARDIAN_CONFIG_INVALID;
        } else {
            memcpy(buf, b, *len);
            buf[*len] = '\0';
        }
    }
    OPENSSL_cleanse(b, sizeof(b));
    return rv;
}

CK_RV guardian_credentials_check_config(const struct guardian_config *cfg)
{
    unsigned char pin[PIN_FILE_MAX + 1];
    size_t len = 0;
    CK_RV rv;

    atomic_store(&guardian_service_on, 0);
    if (cfg->backend_pin_file[0] == '\0') {
        if (cfg->backend_so_pin_file[0] != '\0') {
            guardian_error("config", "%s: backend_so_pin_file is set without backend_pin_file (service mode needs "
                                     "both, or neither)",
                           cfg->source[0] ? cfg->source : "configuration");
            return CKR_GUARDIAN_CONFIG_INVALID;
        }
        return CKR_OK;
    }
    rv = pin_file_read(cfg->backend_pin_file, "backend_pin_file", pin, &len);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rv == CKR_OK && cfg->backend_so_pin_file[0] != '\0') {
        rv = pin_file_read(cfg->backend_so_pin_file, "backend_so_pin_file", pin, &len);
        OPENSSL_cleanse(pin, sizeof(pin));
    }
    if (rv == CKR_OK)
        atomic_store(&guardian_service_on, 1);
    return rv;
}

/* Log into the backend on `s` as `who` with the PIN from the file. */
static CK_RV backend_login(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_USER_TYPE who)
{
    const struct guardian_config *cfg = guardian_state_config();
    const char *path = who == CKU_SO ? cfg->backend_so_pin_file : cfg->backend_pin_file;
    const char *key = who == CKU_SO ? "backend_so_pin_file" : "backend_pin_file";
    unsigned char pin[PIN_FILE_MAX + 1];
    size_t len = 0;
    const char *name;
    CK_RV rv;

    if (path[0] == '\0') {
        guardian_error(CRED_LOG, "the Security Officer's login needs the backend's SO PIN: set backend_so_pin_file "
                                 "in %s",
                       cfg->source[0] ? cfg->source : "the configuration");
        return CKR_GUARDIAN_BACKEND_LOGIN_FAILED;
    }
    rv = pin_file_read(path, key, pin, &len);
    /* SoftHSM's C_Login reads the token's files and fails now and then while
     * another process (another connection of the service) rewrites them:
     * CKR_GENERAL_ERROR or CKR_USER_PIN_NOT_INITIALIZED (measured).  The
     * Guardian credential was right: try the backend again, 3 times. */
    for (int attempt = 0; rv == CKR_OK; attempt++) {
        rv = be->C_Login(s, who, pin, (CK_ULONG)len);
        if ((rv != CKR_GENERAL_ERROR && rv != CKR_USER_PIN_NOT_INITIALIZED) || attempt == 3)
            break;
        usleep(50 * 1000);
        rv = CKR_OK;
    }
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
        rv == CKR_SESSION_READ_ONLY_EXISTS || rv == CKR_USER_ANOTHER_ALREADY_LOGGED_IN ||
        rv == CKR_USER_TOO_MANY_TYPES || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT)
        return rv;
    if (rv == CKR_GUARDIAN_CONFIG_INVALID)
        return CKR_GUARDIAN_BACKEND_LOGIN_FAILED;
    name = guardian_ckr_name(rv);
    guardian_error(CRED_LOG, "the backend refused the PIN in %s %s: %s (the Guardian credential was right; fix the "
                             "PIN file or the backend token)",
                   key, path, name ? name : "unknown CKR");
    return CKR_GUARDIAN_BACKEND_LOGIN_FAILED;
}

/* ---- PINs, names and hashes ------------------------------------------------------------- */

/* `n` bytes at `p` as an operator's name (store.h's syntax; "" is none). */
static bool name_take(const void *p, size_t n, char name[GUARDIAN_OPERATOR_MAX + 1])
{
    if (n < 1 || n > GUARDIAN_OPERATOR_MAX)
        return false;
    memcpy(name, p, n);
    name[n] = '\0';
    return guardian_operator_name_ok(name);
}

/* "NAME:SECRET" → name (copied) and the secret (pointer into `pin`). */
static bool split_user_pin(const CK_UTF8CHAR *pin, CK_ULONG len, char name[GUARDIAN_OPERATOR_MAX + 1],
                           const CK_UTF8CHAR **secret, size_t *secret_len)
{
    const CK_UTF8CHAR *colon;
    size_t n;

    if (pin == NULL || len == 0)
        return false;
    colon = memchr(pin, ':', len);
    if (colon == NULL)
        return false;
    n = (size_t)(colon - pin);
    if (!name_take(pin, n, name))
        return false;
    *secret = colon + 1;
    *secret_len = len - n - 1;
    return true;
}

static CK_RV kdf(const CK_UTF8CHAR *secret, size_t len, const struct guardian_credential *c, uint8_t out[32])
{
    uint64_t maxmem = (uint64_t)128 * c->kdf_r * (c->kdf_n + c->kdf_p + 2) + (1u << 20);

    if (EVP_PBE_scrypt((const char *)secret, len, c->salt, sizeof(c->salt), c->kdf_n, c->kdf_r, c->kdf_p, maxmem,
                       out, 32) != 1) {
        guardian_error(CRED_LOG, "scrypt (N=%u r=%u p=%u) failed", (unsigned)c->kdf_n, (unsigned)c->kdf_r,
                       (unsigned)c->kdf_p);
        return CKR_HOST_MEMORY;
    }
    return CKR_OK;
}

/* A fresh credential for `secret`, with this configuration's cost. */
static CK_RV credential_make(int role, const char *name, const CK_UTF8CHAR *secret, size_t len,
                             struct guardian_credential *c)
{
    const struct guardian_config *cfg = guardian_state_config();
    CK_RV rv;

    if (len < SECRET_MIN || len > SECRET_MAX) {
        guardian_error(CRED_LOG, "a Guardian PIN's secret must have %d to %d bytes (this one has %zu)", SECRET_MIN,
                       SECRET_MAX, len);
        return CKR_PIN_LEN_RANGE;
    }
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->role = role;
    c->kdf_n = cfg->pin_kdf_n;
    c->kdf_r = KDF_R;
    c->kdf_p = KDF_P;
    c->changed_at = (int64_t)time(NULL);
    if (RAND_bytes(c->salt, sizeof(c->salt)) != 1)
        return CKR_GENERAL_ERROR;
    rv = kdf(secret, len, c, c->hash);
    return rv;
}

/* Check `secret` against the stored credential, counting a failure first.
 * CKR_OK, CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_PIN_NOT_INITIALIZED or a
 * store failure. */
static CK_RV credential_verify(struct guardian_store *st, int role, const char *name, const CK_UTF8CHAR *secret,
                               size_t len)
{
    struct guardian_credential c;
    uint8_t h[32];
    uint32_t failures = 0;
    const char *who = role == CKU_SO ? "the Security Officer" : name;
    CK_RV rv;

    rv = guardian_store_credential_get(st, role, role == CKU_SO ? "" : name, &c);
    if (rv == CKR_USER_PIN_NOT_INITIALIZED) {
        /* The same work as a known name, so that timing does not list names:
         * the cost new credentials get here. */
        const struct guardian_credential dummy = {.kdf_n = guardian_state_config()->pin_kdf_n, .kdf_r = KDF_R,
                                                  .kdf_p = KDF_P};
        bool any_operator = false;
        size_t n_users = 0, n_locked = 0;
        uint32_t max_fail = 0, so_fail = 0;
        bool so_set = false;
        (void)kdf(secret, len, &dummy, h);
        OPENSSL_cleanse(h, sizeof(h));
        if (role == CKU_SO) {
            guardian_warn(CRED_LOG, "login refused: the Guardian has no Security Officer PIN yet (C_InitToken sets it)");
            return CKR_USER_PIN_NOT_INITIALIZED;
        }
        if (guardian_store_credential_summary(st, &so_set, &n_users, &max_fail, &n_locked, &so_fail) == CKR_OK)
            any_operator = n_users > 0;
        guardian_warn(CRED_LOG, "login refused: no operator named '%s'", name);
        return any_operator ? CKR_PIN_INCORRECT : CKR_USER_PIN_NOT_INITIALIZED;
    }
    if (rv != CKR_OK)
        return rv;
    if (c.failures >= GUARDIAN_CREDENTIAL_MAX_FAILURES) {
        guardian_warn(CRED_LOG, "login refused: %s is locked after %u failed attempts (%s)", who,
                      (unsigned)c.failures,
                      role == CKU_SO ? "recovery: docs/service-mode.md" : "the Security Officer resets it with C_InitPIN");
        OPENSSL_cleanse(&c, sizeof(c));
        return CKR_PIN_LOCKED;
    }
    rv = guardian_store_credential_failed(st, role, c.name, &failures);
    if (rv == CKR_OK)
        rv = kdf(secret, len, &c, h);
    if (rv == CKR_OK && CRYPTO_memcmp(h, c.hash, sizeof(h)) != 0) {
        guardian_warn(CRED_LOG, "login refused: wrong PIN for %s (%u of %d failed attempts)", who, (unsigned)failures,
                      GUARDIAN_CREDENTIAL_MAX_FAILURES);
        rv = failures >= GUARDIAN_CREDENTIAL_MAX_FAILURES ? CKR_PIN_LOCKED : CKR_PIN_INCORRECT;
    } else if (rv == CKR_OK) {
        rv = guardian_store_credential_succeeded(st, role, c.name);
    }
    OPENSSL_cleanse(h, sizeof(h));
    OPENSSL_cleanse(&c, sizeof(c));
    return rv;
}

/* `pin` given for operator `name`: "NAME:SECRET" of that operator or SECRET. */
static void own_secret(const char *name, const CK_UTF8CHAR *pin, CK_ULONG len, const CK_UTF8CHAR **secret,
                       size_t *secret_len, bool *names_other)
{
    char other[GUARDIAN_OPERATOR_MAX + 1];
    const CK_UTF8CHAR *sec;
    size_t sec_len;

    *names_other = false;
    *secret = pin;
    *secret_len = len;
    if (split_user_pin(pin, len, other, &sec, &sec_len)) {
        if (strcmp(other, name) == 0) {
            *secret = sec;
            *secret_len = sec_len;
        } else {
            *names_other = true;
        }
    }
}

/* The slot's login as this process knows it, refreshed against the backend. */
static CK_RV session_login(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_SESSION_INFO *si, struct login *out)
{
    struct login *l;
    CK_RV rv = be->C_GetSessionInfo(s, si);

    memset(out, 0, sizeof(*out));
    if (rv != CKR_OK)
        return rv;
    l = login_find_locked(si->slotID);
    if (l != NULL && si->state != CKS_RO_USER_FUNCTIONS && si->state != CKS_RW_USER_FUNCTIONS &&
        si->state != CKS_RW_SO_FUNCTIONS) {
        login_clear_locked(si->slotID);
        l = NULL;
    }
    if (l != NULL)
        *out = *l;
    return CKR_OK;
}

/* ---- C_Login ------------------------------------------------------------------------ */

static CK_RV service_login(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_USER_TYPE who, const CK_UTF8CHAR *pin,
                           CK_ULONG pin_len, const CK_UTF8CHAR *user, CK_ULONG user_len)
{
    struct guardian_store *st = NULL;
    char name[GUARDIAN_OPERATOR_MAX + 1] = "";
    const CK_UTF8CHAR *secret = pin;
    size_t secret_len = pin_len;
    bool other = false;
    CK_SESSION_INFO si;
    struct login cur, *l = NULL;
    CK_RV rv;

    if (who != CKU_USER && who != CKU_SO && who != CKU_CONTEXT_SPECIFIC)
        return CKR_USER_TYPE_INVALID;
    if (pin == NULL && pin_len != 0)
        return CKR_ARGUMENTS_BAD;

    pthread_mutex_lock(&cred_lock);
    rv = session_login(be, s, &si, &cur);
    if (rv != CKR_OK)
        goto out;
    if (cur.used)
        l = &cur;
    if (who == CKU_CONTEXT_SPECIFIC) {
        if (l == NULL || l->who != CKU_USER) {
            rv = CKR_USER_NOT_LOGGED_IN;
            goto out;
        }
        memcpy(name, l->name, sizeof(name));
        own_secret(name, pin, pin_len, &secret, &secret_len, &other);
        if (other) {
            rv = CKR_PIN_INCORRECT;
            goto out;
        }
    } else {
        if (l != NULL || si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS ||
            si.state == CKS_RW_SO_FUNCTIONS) {
            bool same = (l != NULL ? l->who : (si.state == CKS_RW_SO_FUNCTIONS ? CKU_SO : CKU_USER)) == who;
            rv = same ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
            goto out;
        }
        if (who == CKU_USER && user != NULL) { /* C_LoginUser */
            if (!name_take(user, user_len, name)) {
                guardian_warn(CRED_LOG, "login refused: an operator name is 1 to %d of a-z 0-9 . _ - "
                                        "(starting with a letter or digit)",
                              GUARDIAN_OPERATOR_MAX);
                rv = CKR_PIN_INCORRECT;
                goto out;
            }
        } else if (who == CKU_USER && !split_user_pin(pin, pin_len, name, &secret, &secret_len)) {
            guardian_warn(CRED_LOG, "login refused: an operator's PIN is NAME:SECRET (for example alice:…); this "
                                    "one names no operator");
            rv = CKR_PIN_INCORRECT;
            goto out;
        }
    }
    if (secret_len > SECRET_MAX) {
        rv = CKR_PIN_INCORRECT;
        goto out;
    }
    rv = guardian_state_store(&st);
    if (rv != CKR_OK)
        goto out;
    /* The login's records (a failure counted, a lock) name this token's
     * Guardian, as every later one does (mechs/anchor.c). */
    rv = guardian_anchor_bind(be, s, si.slotID, st);
    if (rv != CKR_OK)
        goto out;
    rv = credential_verify(st, who == CKU_SO ? CKU_SO : CKU_USER, name, secret, secret_len);
    if (rv != CKR_OK)
        goto out;
    /* The Guardian SO opens the backend as its SO when the configuration
     * gives the backend's SO PIN, else as its user (guardian_session_who). */
    rv = backend_login(be, s, who == CKU_SO && guardian_so_as_backend_user() ? CKU_USER : who);
    if (rv != CKR_OK || who == CKU_CONTEXT_SPECIFIC)
        goto out;
    for (size_t i = 0; i < MAX_LOGINS; i++)
        if (!logins[i].used) {
            logins[i].used = true;
            logins[i].slot = si.slotID;
            logins[i].who = who;
            snprintf(logins[i].name, sizeof(logins[i].name), "%s", who == CKU_SO ? SO_NAME : name);
            break;
        }
    guardian_store_set_operator(st, who == CKU_SO ? SO_NAME : name);
    guardian_info(CRED_LOG, "%s logged in on slot %lu", who == CKU_SO ? "the Security Officer" : name,
                  (unsigned long)si.slotID);
out:
    pthread_mutex_unlock(&cred_lock);
    return rv;
}

CK_RV guardian_cred_C_Login(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_Login(s, who, pin, len);
    guardian_trace_in("C_Login");
    rv = service_login(be, s, who, pin, len, NULL, 0);
    return guardian_trace_out("C_Login", rv);
}

CK_RV guardian_cred_C_LoginUser(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len,
                                CK_UTF8CHAR_PTR user, CK_ULONG user_len)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_LoginUser(s, who, pin, len, user, user_len);
    guardian_trace_in("C_LoginUser");
    if (who == CKU_USER && user == NULL)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = service_login(be, s, who, pin, len, who == CKU_USER ? user : NULL, who == CKU_USER ? user_len : 0);
    return guardian_trace_out("C_LoginUser", rv);
}

bool guardian_so_as_backend_user(void)
{
    const struct guardian_config *cfg = guardian_state_config();
    return guardian_service_mode() && cfg->backend_so_pin_file[0] == '\0';
}

CK_USER_TYPE guardian_session_who(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_SESSION_INFO *si)
{
    CK_SESSION_INFO mine;
    struct login l;
    CK_USER_TYPE who = GUARDIAN_NOBODY;

    if (si == NULL)
        si = &mine;
    memset(si, 0, sizeof(*si));
    if (!guardian_service_mode()) {
        if (be->C_GetSessionInfo(s, si) != CKR_OK)
            return GUARDIAN_NOBODY;
        if (si->state == CKS_RW_SO_FUNCTIONS)
            return CKU_SO;
        return si->state == CKS_RO_USER_FUNCTIONS || si->state == CKS_RW_USER_FUNCTIONS ? CKU_USER : GUARDIAN_NOBODY;
    }
    pthread_mutex_lock(&cred_lock);
    if (session_login(be, s, si, &l) == CKR_OK && l.used)
        who = l.who;
    pthread_mutex_unlock(&cred_lock);
    return who;
}

void guardian_credentials_logged_out(CK_SLOT_ID slot)
{
    struct guardian_store *st = NULL;

    if (!guardian_service_mode())
        return;
    pthread_mutex_lock(&cred_lock);
    login_clear_locked(slot);
    if (guardian_state_store_quiet(&st) == CKR_OK && st != NULL)
        guardian_store_set_operator(st, "");
    pthread_mutex_unlock(&cred_lock);
}

/* ---- C_InitToken, C_InitPIN, C_SetPIN ------------------------------------------------ */

CK_RV guardian_cred_C_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR label)
{
    struct guardian_store *st = NULL;
    struct guardian_credential c;
    bool so_set = false;
    size_t n_users = 0, n_locked = 0;
    uint32_t max_fail = 0, so_fail = 0;
    CK_TOKEN_INFO ti;
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_InitToken(slot, pin, len, label);
    guardian_trace_in("C_InitToken");
    if (pin == NULL || label == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto done;
    }
    rv = be->C_GetTokenInfo(slot, &ti); /* the slot exists and holds a token */
    if (rv != CKR_OK)
        goto done;
    pthread_mutex_lock(&cred_lock);
    rv = guardian_state_store(&st);
    if (rv == CKR_OK)
        rv = guardian_store_credential_summary(st, &so_set, &n_users, &max_fail, &n_locked, &so_fail);
    if (rv != CKR_OK)
        goto out;
    if (!so_set) {
        rv = credential_make(CKU_SO, "", pin, len, &c);
        if (rv == CKR_OK)
            rv = guardian_store_credential_put(st, &c, GUARDIAN_CREDENTIAL_SO_SET, SO_NAME);
        OPENSSL_cleanse(&c, sizeof(c));
        if (rv == CKR_OK)
            guardian_info(CRED_LOG, "the Guardian's Security Officer PIN is set");
        goto out;
    }
    /* Recovery: the backend's SO PIN, which only the service's user can read,
     * clears a Guardian SO PIN that is lost or locked. */
    if (guardian_state_config()->backend_so_pin_file[0] != '\0') {
        unsigned char bpin[PIN_FILE_MAX + 1];
        size_t blen = 0;
        bool match = false;
        if (pin_file_read(guardian_state_config()->backend_so_pin_file, "backend_so_pin_file", bpin, &blen) ==
            CKR_OK)
            match = blen == len && CRYPTO_memcmp(bpin, pin, blen) == 0;
        OPENSSL_cleanse(bpin, sizeof(bpin));
        if (match) {
            rv = guardian_store_credential_remove(st, CKU_SO, "", GUARDIAN_CREDENTIAL_SO_CLEARED);
            if (rv == CKR_OK)
                guardian_warn(CRED_LOG, "the Guardian's Security Officer PIN was cleared with the backend's SO PIN "
                                        "(recovery); C_InitToken sets a new one");
            goto out;
        }
    }
    rv = credential_verify(st, CKU_SO, "", pin, len);
    if (rv == CKR_OK) {
        guardian_error(CRED_LOG, "C_InitToken: the Guardian is never re-initialised through PKCS#11 (its state holds "
                                 "production records); the Security Officer PIN is unchanged (C_SetPIN changes it)");
        rv = CKR_ACTION_PROHIBITED;
    }
out:
    pthread_mutex_unlock(&cred_lock);
done:
    return guardian_trace_out("C_InitToken", rv);
}

CK_RV guardian_cred_C_InitPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    struct guardian_store *st = NULL;
    struct guardian_credential c;
    char name[GUARDIAN_OPERATOR_MAX + 1];
    const CK_UTF8CHAR *secret;
    size_t secret_len;
    CK_SESSION_INFO si;
    struct login l;
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_InitPIN(s, pin, len);
    guardian_trace_in("C_InitPIN");
    pthread_mutex_lock(&cred_lock);
    rv = session_login(be, s, &si, &l);
    if (rv != CKR_OK)
        goto out;
    if (!l.used || l.who != CKU_SO) {
        rv = CKR_USER_NOT_LOGGED_IN;
        goto out;
    }
    if (!(si.flags & CKF_RW_SESSION)) {
        rv = CKR_SESSION_READ_ONLY;
        goto out;
    }
    if (!split_user_pin(pin, len, name, &secret, &secret_len) || strcmp(name, SO_NAME) == 0) {
        guardian_error(CRED_LOG, "C_InitPIN: an operator's PIN is NAME:SECRET, NAME 1 to %d of a-z 0-9 . _ - "
                                 "starting with a letter or digit, not \"so\" (for example alice:…)",
                       GUARDIAN_OPERATOR_MAX);
        rv = CKR_PIN_INVALID;
        goto out;
    }
    rv = credential_make(CKU_USER, name, secret, secret_len, &c);
    if (rv == CKR_OK)
        rv = guardian_state_store(&st);
    if (rv == CKR_OK)
        rv = guardian_store_credential_put(st, &c, GUARDIAN_CREDENTIAL_USER_SET, name);
    OPENSSL_cleanse(&c, sizeof(c));
    if (rv == CKR_OK)
        guardian_info(CRED_LOG, "operator '%s' set by the Security Officer", name);
out:
    pthread_mutex_unlock(&cred_lock);
    return guardian_trace_out("C_InitPIN", rv);
}

CK_RV guardian_cred_C_SetPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old, CK_ULONG old_len, CK_UTF8CHAR_PTR pin,
                             CK_ULONG len)
{
    CK_FUNCTION_LIST *be = guardian_backend_list();
    struct guardian_store *st = NULL;
    struct guardian_credential c;
    char name[GUARDIAN_OPERATOR_MAX + 1] = "";
    const CK_UTF8CHAR *old_secret = old, *new_secret = pin;
    size_t old_secret_len = old_len, new_secret_len = len;
    bool other = false;
    int role;
    CK_SESSION_INFO si;
    struct login l;
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_SetPIN(s, old, old_len, pin, len);
    guardian_trace_in("C_SetPIN");
    pthread_mutex_lock(&cred_lock);
    if (old == NULL || pin == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_login(be, s, &si, &l);
    if (rv != CKR_OK)
        goto out;
    if (!(si.flags & CKF_RW_SESSION)) {
        rv = CKR_SESSION_READ_ONLY;
        goto out;
    }
    if (l.used && l.who == CKU_SO) {
        role = CKU_SO;
    } else {
        role = CKU_USER;
        if (l.used) {
            snprintf(name, sizeof(name), "%s", l.name);
            own_secret(name, old, old_len, &old_secret, &old_secret_len, &other);
        } else if (!split_user_pin(old, old_len, name, &old_secret, &old_secret_len)) {
            guardian_error(CRED_LOG, "C_SetPIN without a login: the old PIN must be NAME:SECRET");
            rv = CKR_PIN_INCORRECT;
            goto out;
        }
        if (other) {
            rv = CKR_PIN_INCORRECT;
            goto out;
        }
        own_secret(name, pin, len, &new_secret, &new_secret_len, &other);
        if (other) {
            guardian_error(CRED_LOG, "C_SetPIN changes the PIN of operator '%s' only; the new PIN names another",
                           name);
            rv = CKR_PIN_INVALID;
            goto out;
        }
    }
    rv = guardian_state_store(&st);
    if (rv == CKR_OK)
        rv = credential_verify(st, role, name, old_secret, old_secret_len);
    if (rv == CKR_OK)
        rv = credential_make(role, role == CKU_SO ? "" : name, new_secret, new_secret_len, &c);
    if (rv == CKR_OK) {
        rv = guardian_store_credential_put(st, &c, GUARDIAN_CREDENTIAL_CHANGED, role == CKU_SO ? SO_NAME : name);
        OPENSSL_cleanse(&c, sizeof(c));
    }
    if (rv == CKR_OK)
        guardian_info(CRED_LOG, "%s changed %s PIN", role == CKU_SO ? "the Security Officer" : name,
                      role == CKU_SO ? "the SO" : "its own");
out:
    pthread_mutex_unlock(&cred_lock);
    return guardian_trace_out("C_SetPIN", rv);
}

/* ---- C_GetTokenInfo ----------------------------------------------------------------- */

#define PIN_FLAGS                                                                                            \
    (CKF_USER_PIN_INITIALIZED | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED |        \
     CKF_USER_PIN_TO_BE_CHANGED | CKF_SO_PIN_COUNT_LOW | CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_LOCKED |            \
     CKF_SO_PIN_TO_BE_CHANGED | CKF_PROTECTED_AUTHENTICATION_PATH | CKF_TOKEN_INITIALIZED)

CK_RV guardian_cred_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    struct guardian_store *st = NULL;
    bool so_set = false;
    size_t n_users = 0, n_locked = 0;
    uint32_t max_fail = 0, so_fail = 0;
    CK_FUNCTION_LIST *be = guardian_backend_list();
    CK_RV rv;

    if (!guardian_service_mode() || be == NULL)
        return guardian_fwd_C_GetTokenInfo(slot, info);
    guardian_trace_in("C_GetTokenInfo");
    rv = be->C_GetTokenInfo(slot, info);
    if (rv == CKR_OK)
        rv = guardian_state_store(&st);
    if (rv == CKR_OK)
        rv = guardian_store_credential_summary(st, &so_set, &n_users, &max_fail, &n_locked, &so_fail);
    if (rv == CKR_OK) {
        CK_FLAGS f = info->flags & ~(CK_FLAGS)PIN_FLAGS;
        f |= CKF_LOGIN_REQUIRED;
        if (so_set)
            f |= CKF_TOKEN_INITIALIZED;
        if (n_users > 0)
            f |= CKF_USER_PIN_INITIALIZED;
        if (max_fail > 0)
            f |= CKF_USER_PIN_COUNT_LOW;
        if (max_fail == GUARDIAN_CREDENTIAL_MAX_FAILURES - 1)
            f |= CKF_USER_PIN_FINAL_TRY;
        if (n_users > 0 && n_locked == n_users)
            f |= CKF_USER_PIN_LOCKED;
        if (so_fail > 0 && so_fail < GUARDIAN_CREDENTIAL_MAX_FAILURES)
            f |= CKF_SO_PIN_COUNT_LOW;
        if (so_fail == GUARDIAN_CREDENTIAL_MAX_FAILURES - 1)
            f |= CKF_SO_PIN_FINAL_TRY;
        if (so_fail >= GUARDIAN_CREDENTIAL_MAX_FAILURES)
            f |= CKF_SO_PIN_LOCKED;
        info->flags = f;
        info->ulMinPinLen = SECRET_MIN;
        info->ulMaxPinLen = SECRET_MAX + GUARDIAN_OPERATOR_MAX + 1;
    }
    return guardian_trace_out("C_GetTokenInfo", rv);
}
