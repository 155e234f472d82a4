/*
 * config.c — the configuration file and its environment overrides.
 *
 * Format (docs/configuration.md): one "key = value" per line; blank lines and
 * lines starting with '#' or ';' are ignored; white space around keys and values
 * is trimmed.  Unknown keys, repeated keys, empty values and relative paths are
 * errors: a typo in a security product's configuration must not be ignored.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "module.h"

#define MAX_LINE 4096

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Copy a path value: absolute, shorter than PATH_MAX.  `lineno` 0 means the
 * value came from the environment variable named by `origin`. */
static bool take_path(char *dst, const char *value, size_t vlen, const char *origin, unsigned lineno,
                      const char *key, char *err, size_t errlen)
{
    char where[PATH_MAX + 16];

    if (lineno > 0)
        snprintf(where, sizeof(where), "%s:%u: '%s'", origin, lineno, key);
    else
        snprintf(where, sizeof(where), "%s", origin);
    if (vlen >= PATH_MAX) {
        set_err(err, errlen, "%s is longer than %d bytes", where, PATH_MAX - 1);
        return false;
    }
    if (value[0] != '/') {
        set_err(err, errlen, "%s must be an absolute path", where);
        return false;
    }
    memcpy(dst, value, vlen);
    dst[vlen] = '\0';
    return true;
}

/* backend_init_args: passed to the backend as it is (NSS softoken parses it);
 * only its length is ours to check (a NUL cannot reach here). */
static bool take_init_args(char *dst, const char *value, size_t vlen, const char *where, char *err, size_t errlen)
{
    if (vlen > GUARDIAN_BACKEND_INIT_ARGS_MAX) {
        set_err(err, errlen, "%s is longer than %d bytes", where, GUARDIAN_BACKEND_INIT_ARGS_MAX);
        return false;
    }
    memcpy(dst, value, vlen);
    dst[vlen] = '\0';
    return true;
}

/* The keys whose value is an absolute path. */
enum { SEEN_LEVEL = 1u << 0, SEEN_KDF = 1u << 1 };
static const struct path_key {
    const char *name;
    size_t offset;
    unsigned bit;
} path_keys[] = {
    {"backend", offsetof(struct guardian_config, backend), 1u << 2},
    {"state_dir", offsetof(struct guardian_config, state_dir), 1u << 3},
    {"backend_pin_file", offsetof(struct guardian_config, backend_pin_file), 1u << 4},
    {"backend_so_pin_file", offsetof(struct guardian_config, backend_so_pin_file), 1u << 5},
    {"store_password_file", offsetof(struct guardian_config, store_password_file), 1u << 6},
};
enum { SEEN_STORE = 1u << 7 };

/* Whether a libpq connection string names a password (keyword password= or
 * passfile=, or a URI's user:password@): refused, the password goes in
 * store_password_file.  The engine checks again with libpq's own parser. */
static bool conninfo_has_password(const char *v, size_t len)
{
    static const char *const keys[] = {"password", "passfile"};
    const char *auth, *at, *colon;
    size_t scheme = 0;

    for (size_t i = 0; i < len; i++)
        for (size_t k = 0; k < 2; k++) {
            size_t n = strlen(keys[k]), j = i + n;
            if (len - i < n || strncasecmp(v + i, keys[k], n) != 0)
                continue;
            while (j < len && is_space(v[j]))
                j++;
            if (j < len && v[j] == '=')
                return true;
        }
    /* v is not NUL-terminated (a line of the file): no str* function on it. */
    if (len >= 13 && memcmp(v, "postgresql://", 13) == 0)
        scheme = 13;
    else if (len >= 11 && memcmp(v, "postgres://", 11) == 0)
        scheme = 11;
    if (scheme == 0)
        return false;
    auth = v + scheme;
    at = memchr(auth, '@', len - scheme);
    colon = at != NULL ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    return colon != NULL;
}

bool guardian_config_parse(const char *text, size_t len, const char *origin, struct guardian_config *cfg,
                           char *err, size_t errlen)
{
    unsigned seen = 0, lineno = 0;
    const struct path_key *path_key;
    size_t pos = 0;

    return_val_if_fail(cfg != NULL, false);
    return_val_if_fail(text != NULL || len == 0, false);
    if (origin == NULL)
        origin = "configuration";

    memset(cfg->backend, 0, sizeof(cfg->backend));
    memset(cfg->state_dir, 0, sizeof(cfg->state_dir));
    memset(cfg->backend_pin_file, 0, sizeof(cfg->backend_pin_file));
    memset(cfg->backend_so_pin_file, 0, sizeof(cfg->backend_so_pin_file));
    memset(cfg->backend_init_args, 0, sizeof(cfg->backend_init_args));
    memset(cfg->store_conninfo, 0, sizeof(cfg->store_conninfo));
    memset(cfg->store_password_file, 0, sizeof(cfg->store_password_file));
    cfg->store_engine = 0;
    cfg->log_level = -1;
    cfg->pin_kdf_n = GUARDIAN_PIN_KDF_N_DEFAULT;

    if (len > GUARDIAN_CONF_MAX_BYTES) {
        set_err(err, errlen, "%s: file is larger than %d bytes", origin, GUARDIAN_CONF_MAX_BYTES);
        return false;
    }

    while (pos < len) {
        size_t start = pos, end, kend, vstart, vend;
        const char *line = text + start;
        const char *eq;
        char key[32];

        lineno++;
        while (pos < len && text[pos] != '\n')
            pos++;
        end = pos;
        if (pos < len)
            pos++; /* the '\n' */

        if (end - start > MAX_LINE) {
            set_err(err, errlen, "%s:%u: line longer than %d bytes", origin, lineno, MAX_LINE);
            return false;
        }
        if (memchr(line, '\0', end - start) != NULL) {
            set_err(err, errlen, "%s:%u: NUL byte in line", origin, lineno);
            return false;
        }
        /* trim */
        while (start < end && is_space(text[start]))
            start++;
        while (end > start && is_space(text[end - 1]))
            end--;
        if (start == end || text[start] == '#' || text[start] == ';')
            continue;

        line = text + start;
        eq = memchr(line, '=', end - start);
        if (eq == NULL) {
            set_err(err, errlen, "%s:%u: expected 'key = value'", origin, lineno);
            return false;
        }
        kend = (size_t)(eq - text);
        while (kend > start && is_space(text[kend - 1]))
            kend--;
        vstart = (size_t)(eq - text) + 1;
        while (vstart < end && is_space(text[vstart]))
            vstart++;
        vend = end;

        if (kend == start) {
            set_err(err, errlen, "%s:%u: missing key before '='", origin, lineno);
            return false;
        }
        if (kend - start >= sizeof(key)) {
            set_err(err, errlen, "%s:%u: unknown key '%.*s...'", origin, lineno, (int)(sizeof(key) - 1), line);
            return false;
        }
        memcpy(key, line, kend - start);
        key[kend - start] = '\0';
        if (vend == vstart) {
            set_err(err, errlen, "%s:%u: '%s' has no value", origin, lineno, key);
            return false;
        }

        path_key = NULL;
        for (size_t k = 0; k < sizeof(path_keys) / sizeof(path_keys[0]); k++)
            if (strcmp(key, path_keys[k].name) == 0)
                path_key = &path_keys[k];
        if (path_key != NULL) {
            char *dst = (char *)cfg + path_key->offset;
            if (seen & path_key->bit) {
                set_err(err, errlen, "%s:%u: '%s' is set twice", origin, lineno, key);
                return false;
            }
            if (!take_path(dst, text + vstart, vend - vstart, origin, lineno, key, err, errlen))
                return false;
            seen |= path_key->bit;
        } else if (strcmp(key, "pin_kdf_cost") == 0) {
            char value[16], *endp = NULL;
            unsigned long n;
            if (seen & SEEN_KDF) {
                set_err(err, errlen, "%s:%u: 'pin_kdf_cost' is set twice", origin, lineno);
                return false;
            }
            snprintf(value, sizeof(value), "%.*s", (int)(vend - vstart), text + vstart);
            errno = 0;
            n = strtoul(value, &endp, 10);
            if (vend - vstart >= sizeof(value) || errno != 0 || endp == value || *endp != '\0' ||
                n < GUARDIAN_PIN_KDF_N_MIN || n > GUARDIAN_PIN_KDF_N_MAX || (n & (n - 1)) != 0) {
                set_err(err, errlen, "%s:%u: pin_kdf_cost must be a power of two from %u to %u (scrypt N)", origin,
                        lineno, GUARDIAN_PIN_KDF_N_MIN, GUARDIAN_PIN_KDF_N_MAX);
                return false;
            }
            cfg->pin_kdf_n = (uint32_t)n;
            seen |= SEEN_KDF;
        } else if (strcmp(key, "log_level") == 0) {
            char value[16];
            if (seen & SEEN_LEVEL) {
                set_err(err, errlen, "%s:%u: 'log_level' is set twice", origin, lineno);
                return false;
            }
            if (vend - vstart >= sizeof(value)) {
                set_err(err, errlen, "%s:%u: invalid log_level (use error, warn, info, debug or trace)",
                        origin, lineno);
                return false;
            }
            memcpy(value, text + vstart, vend - vstart);
            value[vend - vstart] = '\0';
            cfg->log_level = guardian_log_level_parse(value);
            if (cfg->log_level < 0) {
                set_err(err, errlen, "%s:%u: invalid log_level '%s' (use error, warn, info, debug or trace)",
                        origin, lineno, value);
                return false;
            }
            seen |= SEEN_LEVEL;
        } else if (strcmp(key, "backend_init_args") == 0) {
            char where[PATH_MAX + 48];
            if (cfg->backend_init_args[0] != '\0') { /* values are never empty */
                set_err(err, errlen, "%s:%u: 'backend_init_args' is set twice", origin, lineno);
                return false;
            }
            snprintf(where, sizeof(where), "%s:%u: 'backend_init_args'", origin, lineno);
            if (!take_init_args(cfg->backend_init_args, text + vstart, vend - vstart, where, err, errlen))
                return false;
        } else if (strcmp(key, "store") == 0) {
            size_t n = vend - vstart;
            if (seen & SEEN_STORE) {
                set_err(err, errlen, "%s:%u: 'store' is set twice", origin, lineno);
                return false;
            }
            if (n == 6 && strncmp(text + vstart, "sqlite", 6) == 0)
                cfg->store_engine = 0;
            else if (n == 10 && strncmp(text + vstart, "postgresql", 10) == 0)
                cfg->store_engine = 1;
            else {
                set_err(err, errlen, "%s:%u: invalid store '%.*s' (use sqlite or postgresql)", origin, lineno,
                        (int)(n > 32 ? 32 : n), text + vstart);
                return false;
            }
            seen |= SEEN_STORE;
        } else if (strcmp(key, "store_conninfo") == 0) {
            size_t n = vend - vstart;
            if (cfg->store_conninfo[0] != '\0') {
                set_err(err, errlen, "%s:%u: 'store_conninfo' is set twice", origin, lineno);
                return false;
            }
            if (n > GUARDIAN_STORE_CONNINFO_MAX) {
                set_err(err, errlen, "%s:%u: 'store_conninfo' is longer than %d bytes", origin, lineno,
                        GUARDIAN_STORE_CONNINFO_MAX);
                return false;
            }
            if (conninfo_has_password(text + vstart, n)) {
                /* the value is not repeated: it holds a password */
                set_err(err, errlen,
                        "%s:%u: 'store_conninfo' holds a password: refused; put the password alone in a file "
                        "only the service's user can read and name it with store_password_file",
                        origin, lineno);
                return false;
            }
            memcpy(cfg->store_conninfo, text + vstart, n);
            cfg->store_conninfo[n] = '\0';
        } else {
            set_err(err, errlen,
                    "%s:%u: unknown key '%s' (known: backend, state_dir, log_level, backend_pin_file, "
                    "backend_so_pin_file, pin_kdf_cost, backend_init_args, store, store_conninfo, "
                    "store_password_file)",
                    origin, lineno, key);
            return false;
        }
    }
    if (cfg->store_engine == 1 && cfg->store_conninfo[0] == '\0') {
        set_err(err, errlen, "%s: 'store = postgresql' needs store_conninfo (a libpq connection string: "
                             "host=... port=... dbname=... user=...)",
                origin);
        return false;
    }
    if (cfg->store_engine != 1 && (cfg->store_conninfo[0] != '\0' || cfg->store_password_file[0] != '\0')) {
        set_err(err, errlen, "%s: store_conninfo and store_password_file are for 'store = postgresql'", origin);
        return false;
    }
    return true;
}

/* Read a whole (small) file.  Returns 0, or an errno value. */
static int read_file(const char *path, char **out, size_t *out_len)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    int fd, e = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0) {
        e = errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        e = EINVAL;
        goto out;
    }
    if (st.st_size > GUARDIAN_CONF_MAX_BYTES) {
        e = EFBIG;
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        e = ENOMEM;
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n < 0 ? errno : EIO;
            goto out;
        }
        got += (size_t)n;
    }
    *out = buf;
    *out_len = got;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return e;
}

bool guardian_config_load(struct guardian_config *cfg, char *err, size_t errlen)
{
    /* secure_getenv: in a setuid or setcap process (AT_SECURE) the overrides
     * are ignored, so that whoever starts it cannot point it at another
     * backend, configuration or state directory. */
    const char *env_conf = secure_getenv("GUARDIAN_CONF");
    const char *env_backend = secure_getenv("GUARDIAN_BACKEND");
    const char *env_state = secure_getenv("GUARDIAN_STATE_DIR");
    const char *env_init_args = secure_getenv("GUARDIAN_BACKEND_INIT_ARGS");
    const char *path = (env_conf != NULL && *env_conf != '\0') ? env_conf : GUARDIAN_DEFAULT_CONF;
    bool explicit_file = env_conf != NULL && *env_conf != '\0';
    bool have_env_backend = env_backend != NULL && *env_backend != '\0';
    char *text = NULL;
    size_t len = 0;
    int e;

    return_val_if_fail(cfg != NULL, false);
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_level = -1;
    cfg->pin_kdf_n = GUARDIAN_PIN_KDF_N_DEFAULT;

    e = read_file(path, &text, &len);
    if (e == 0) {
        bool ok;
        snprintf(cfg->source, sizeof(cfg->source), "%s", path);
        ok = guardian_config_parse(text, len, path, cfg, err, errlen);
        free(text);
        if (!ok)
            return false;
    } else if (e == ENOENT && !explicit_file && have_env_backend) {
        /* A test bench with GUARDIAN_BACKEND needs no file at all. */
        cfg->source[0] = '\0';
    } else if (e == ENOENT) {
        /* Without GUARDIAN_CONF the default file's absence means nobody set
         * the module up (a p11-kit client that loads every registered
         * module): state.c says nothing on stderr then. */
        cfg->unconfigured = !explicit_file;
        set_err(err, errlen,
                "configuration file %s not found (set GUARDIAN_CONF to its path, or GUARDIAN_BACKEND to a "
                "backend module)",
                path);
        return false;
    } else if (e == EFBIG) {
        set_err(err, errlen, "configuration file %s is larger than %d bytes", path, GUARDIAN_CONF_MAX_BYTES);
        return false;
    } else if (e == EINVAL) {
        set_err(err, errlen, "configuration file %s is not a regular file", path);
        return false;
    } else {
        set_err(err, errlen, "configuration file %s cannot be read: %s", path, strerror(e));
        return false;
    }

    if (have_env_backend) {
        if (!take_path(cfg->backend, env_backend, strlen(env_backend), "GUARDIAN_BACKEND", 0, NULL, err,
                       errlen))
            return false;
    }
    if (env_state != NULL && *env_state != '\0') {
        if (!take_path(cfg->state_dir, env_state, strlen(env_state), "GUARDIAN_STATE_DIR", 0, NULL, err,
                       errlen))
            return false;
    }
    if (env_init_args != NULL && *env_init_args != '\0') {
        if (!take_init_args(cfg->backend_init_args, env_init_args, strlen(env_init_args),
                            "GUARDIAN_BACKEND_INIT_ARGS", err, errlen))
            return false;
    }
    if (cfg->backend[0] == '\0') {
        set_err(err, errlen, "%s: no 'backend' set (add 'backend = /path/to/module.so' or set GUARDIAN_BACKEND)",
                cfg->source[0] ? cfg->source : "configuration");
        return false;
    }
    if (cfg->state_dir[0] == '\0')
        snprintf(cfg->state_dir, sizeof(cfg->state_dir), "%s", GUARDIAN_DEFAULT_STATE_DIR);
    return true;
}
