/*
 * state.c — the module's life cycle: load, C_Initialize, C_Finalize, fork.
 *
 * One mutex (init_lock) serialises loading, C_Initialize and C_Finalize, so that
 * threads racing C_Initialize reach the backend's C_Initialize exactly once
 * (SoftHSMv2 2.6.1 crashes when raced); the losers get
 * CKR_CRYPTOKI_ALREADY_INITIALIZED from us.  It is never held by the forwarders:
 * they read guardian_active_list atomically.
 *
 * Fork: a pthread_atfork child handler clears the active lists, so every call in
 * the child answers CKR_CRYPTOKI_NOT_INITIALIZED until the child calls
 * C_Initialize.  The backend in the child still believes it is initialized
 * (SoftHSMv2 does unless library.reset_on_fork is set), so the child's
 * C_Initialize finalizes that inherited state first when the backend says
 * CKR_CRYPTOKI_ALREADY_INITIALIZED.
 *
 * Sharing: outside that fork case, a backend that answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED was initialized by another user in this
 * process (p11-kit loading SoftHSM's own .module beside ours, or an application
 * using both): we use it as it is and do not finalize it for its owner.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "module.h"
#include "registry.h"
#include "store.h"
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

_Atomic(CK_FUNCTION_LIST *) guardian_active_list = NULL;
_Atomic(CK_FUNCTION_LIST_3_0 *) guardian_active_list3 = NULL;

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static bool loaded;
static struct guardian_config config;
static struct guardian_backend backend;
/* Set in a forked child whose parent had initialized the backend. */
static bool inherited_backend_init;
/* The backend was already initialized by someone else in this process (p11-kit
 * or the application loading SoftHSM beside us): we share it and leave its
 * C_Finalize to its owner. */
static bool backend_borrowed;
/* The durable store, opened on first use by a vendor mechanism. */
static struct guardian_store *store;

static void atfork_child(void)
{
    if (atomic_load(&guardian_active_list) != NULL)
        inherited_backend_init = true;
    atomic_store(&guardian_active_list, NULL);
    atomic_store(&guardian_active_list3, NULL);
    /* The parent's store handle is the parent's: the store refuses it in a
     * child, and closing it here could disturb the parent's WAL. */
    store = NULL;
    /* package_objects.c and cert_objects.c are reset by the child's
     * C_Initialize, the mechanisms' caches on their first use in the child;
     * but each one's lock may have been held by another parent thread at
     * fork time, and would then never be unlocked in the child. */
    guardian_package_objects_atfork_child();
    guardian_cert_objects_atfork_child();
    guardian_policy_atfork_child();
    guardian_credentials_atfork_child();
    guardian_mechs_atfork_child();
    /* The parent may have held the lock in another thread at fork time. */
    pthread_mutex_init(&init_lock, NULL);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Nothing configures the module (guardian_config.unconfigured): every p11-kit
 * client loads the registered module, and one nobody set up must not write to
 * their stderr.  One line to syslog per process, the debug log with
 * GUARDIAN_DEBUG; C_Initialize fails with CKR_GUARDIAN_NOT_CONFIGURED, which
 * p11-kit takes as "skip this module" (critical: no). */
static void not_configured(const char *err)
{
    static bool said;
    if (!said) {
        said = true;
        syslog(LOG_USER | LOG_NOTICE, "guardian-pkcs11: not configured, no slots offered: %s", err);
    }
    guardian_debug("config", "not configured: %s", err);
}

/* `quiet`: the caller is only probing (C_GetInterface* before C_Initialize);
 * C_Initialize will report the same failure, once. */
static CK_RV load_locked(bool quiet)
{
    char err[PATH_MAX + 256] = "";
    CK_RV rv;

    if (loaded) {
        /* Loaded in an earlier C_Initialize of this process: re-read the
         * configuration (state_dir, log_level); the backend stays. */
        struct guardian_config fresh;
        if (quiet)
            return CKR_OK;
        if (!guardian_config_load(&fresh, err, sizeof(err))) {
            if (fresh.unconfigured) {
                not_configured(err);
                return CKR_GUARDIAN_NOT_CONFIGURED;
            }
            guardian_error("config", "%s", err);
            return CKR_GUARDIAN_CONFIG_INVALID;
        }
        if (strcmp(fresh.backend, config.backend) != 0)
            guardian_warn("config", "backend changed to %s: still using %s until the process restarts",
                          fresh.backend, config.backend);
        snprintf(fresh.backend, sizeof(fresh.backend), "%s", config.backend);
        config = fresh;
        guardian_log_set_level(config.log_level);
        return CKR_OK;
    }
    if (!guardian_config_load(&config, err, sizeof(err))) {
        if (config.unconfigured) {
            if (!quiet)
                not_configured(err);
            return CKR_GUARDIAN_NOT_CONFIGURED;
        }
        if (!quiet)
            guardian_error("config", "%s", err);
        return CKR_GUARDIAN_CONFIG_INVALID;
    }
    guardian_log_set_level(config.log_level);
    rv = guardian_backend_open(config.backend, &backend, err, sizeof(err));
    if (rv != CKR_OK) {
        if (!quiet)
            guardian_error("backend", "%s", err);
        return rv;
    }
    guardian_info("backend", "loaded %s (interface %u.%u) using %s", config.backend,
                  backend.list_version.major, backend.list_version.minor,
                  config.source[0] ? config.source : "no configuration file");
    loaded = true;
    return CKR_OK;
}

CK_RV guardian_state_load(void)
{
    CK_RV rv;

    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&init_lock);
    rv = load_locked(true);
    pthread_mutex_unlock(&init_lock);
    return rv;
}

bool guardian_state_backend_has_3_0(void)
{
    bool has;
    pthread_mutex_lock(&init_lock);
    has = loaded && backend.list3 != NULL;
    pthread_mutex_unlock(&init_lock);
    return has;
}

const struct guardian_config *guardian_state_config(void)
{
    return loaded ? &config : NULL;
}

static CK_RV check_init_args(const CK_C_INITIALIZE_ARGS *args)
{
    int callbacks;

    if (args == NULL)
        return CKR_OK;
    if (args->pReserved != NULL) {
        guardian_error("init", "C_Initialize: pReserved must be NULL");
        return CKR_ARGUMENTS_BAD;
    }
    callbacks = (args->CreateMutex != NULL) + (args->DestroyMutex != NULL) + (args->LockMutex != NULL) +
                (args->UnlockMutex != NULL);
    if (callbacks != 0 && callbacks != 4) {
        guardian_error("init", "C_Initialize: mutex callbacks must be all set or all NULL (%d of 4 set)",
                       callbacks);
        return CKR_ARGUMENTS_BAD;
    }
    return CKR_OK;
}

/* At C_Initialize, as for the PIN files: store = postgresql in a build
 * without it, or a store_password_file that breaks the rules, is refused
 * with CKR_GUARDIAN_CONFIG_INVALID before anything runs. */
static CK_RV store_check_config(const struct guardian_config *cfg)
{
    char password[256];
    size_t len = 0;
    CK_RV rv = CKR_OK;

    if (cfg->store_engine != 1)
        return CKR_OK;
    if (!guardian_store_engine_available(GUARDIAN_STORE_ENGINE_POSTGRESQL)) {
        guardian_error("config", "%s: store = postgresql, but this module was built without libpq",
                       cfg->source[0] != '\0' ? cfg->source : "configuration");
        return CKR_GUARDIAN_CONFIG_INVALID;
    }
    if (cfg->store_password_file[0] != '\0')
        rv = guardian_secret_file_read(cfg->store_password_file, "store_password_file", password, &len);
    OPENSSL_cleanse(password, sizeof(password));
    return rv;
}

CK_RV guardian_state_initialize(CK_VOID_PTR init_args)
{
    CK_C_INITIALIZE_ARGS *args = init_args;
    CK_RV rv = CKR_GENERAL_ERROR;

    rv = check_init_args(args);
    if (rv != CKR_OK)
        return rv;

    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&guardian_active_list) != NULL) {
        rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
        goto out;
    }
    rv = load_locked(false);
    if (rv == CKR_OK)
        rv = guardian_credentials_check_config(&config);
    if (rv == CKR_OK)
        rv = store_check_config(&config);
    if (rv != CKR_OK)
        goto out;

    /* The application's mutex callbacks and flags reach the backend as given.
     * One change: without callbacks, the backend is always told it may use OS
     * locking.  An application that passes NULL promises not to call from
     * several threads, and some do anyway (pkcs11-tool --test-threads: the main
     * thread initializes with NULL, test threads then call concurrently);
     * SoftHSMv2 initialized without locking crashes then.  Locking when not
     * strictly needed costs the backend little and breaks no caller.
     * The other: pReserved (always NULL from the caller) becomes the
     * configured backend_init_args when that is set (NSS softoken's
     * "configdir=…" string); the string lives in `config`, which outlives the
     * backend's initialisation. */
    {
        CK_C_INITIALIZE_ARGS upgraded;
        CK_VOID_PTR be_args = init_args;
        bool lock_upgrade = args == NULL || (args->CreateMutex == NULL && !(args->flags & CKF_OS_LOCKING_OK));
        if (lock_upgrade || config.backend_init_args[0] != '\0') {
            if (args != NULL)
                upgraded = *args;
            else
                memset(&upgraded, 0, sizeof(upgraded));
            if (lock_upgrade)
                upgraded.flags |= CKF_OS_LOCKING_OK;
            if (config.backend_init_args[0] != '\0') {
                upgraded.pReserved = config.backend_init_args;
                guardian_debug("init", "backend C_Initialize gets backend_init_args (%zu bytes) as pReserved",
                               strlen(config.backend_init_args));
            }
            be_args = &upgraded;
        }
        rv = backend.list->C_Initialize(be_args);
        if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && inherited_backend_init) {
            guardian_debug("init", "backend still initialized from before fork(); finalizing the inherited state");
            backend.list->C_Finalize(NULL);
            rv = backend.list->C_Initialize(be_args);
        }
    }
    backend_borrowed = false;
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && !inherited_backend_init) {
        guardian_info("init", "backend already initialized by another user in this process: sharing it; "
                              "our C_Finalize will leave it initialized");
        backend_borrowed = true;
        rv = CKR_OK;
    }
    if (rv != CKR_OK) {
        const char *name = guardian_ckr_name(rv);
        guardian_error("init", "backend C_Initialize failed: %s", name ? name : "unknown CKR");
        goto out;
    }
    inherited_backend_init = false;
    guardian_package_objects_reset();
    guardian_cert_objects_reset();
    guardian_policy_reset();
    guardian_credentials_reset();
    atomic_store(&guardian_active_list3, backend.list3);
    atomic_store(&guardian_active_list, backend.list);
    guardian_debug("init", "initialized");
out:
    pthread_mutex_unlock(&init_lock);
    return rv;
}

CK_RV guardian_state_finalize(CK_VOID_PTR reserved)
{
    CK_RV rv = CKR_GENERAL_ERROR;

    if (reserved != NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&guardian_active_list) == NULL) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        goto out;
    }
    /* Stop new calls first; the standard leaves calls racing C_Finalize to the
     * application. */
    atomic_store(&guardian_active_list, NULL);
    atomic_store(&guardian_active_list3, NULL);
    guardian_mechs_finalize(store);
    guardian_store_close(store);
    store = NULL;
    guardian_package_objects_reset();
    guardian_cert_objects_reset();
    guardian_policy_reset();
    guardian_credentials_reset();
    atomic_store(&guardian_service_on, 0);
    if (backend_borrowed) {
        backend_borrowed = false;
        rv = CKR_OK;
        goto out;
    }
    rv = backend.list->C_Finalize(NULL);
    if (rv != CKR_OK)
        guardian_warn("init", "backend C_Finalize returned %s", guardian_ckr_name(rv) ? guardian_ckr_name(rv) : "?");
    if (rv == CKR_CRYPTOKI_NOT_INITIALIZED)
        rv = CKR_OK;
out:
    pthread_mutex_unlock(&init_lock);
    return rv;
}

/* Where state_dir came from, for the messages below. */
static const char *state_dir_origin(char *buf, size_t cap)
{
    const char *env = secure_getenv("GUARDIAN_STATE_DIR");
    if (env != NULL && *env != '\0')
        snprintf(buf, cap, "GUARDIAN_STATE_DIR");
    else if (config.source[0] != '\0' && strcmp(config.state_dir, GUARDIAN_DEFAULT_STATE_DIR) != 0)
        snprintf(buf, cap, "state_dir in %s", config.source);
    else
        snprintf(buf, cap, "the default state_dir");
    return buf;
}

/* Before the store opens its directory (under init_lock): the cases where it
 * cannot hold the Guardian's state, each named with what to do
 * (CKR_GUARDIAN_STATE_UNAVAILABLE).  A missing directory whose parent exists
 * is left to the store, which creates it (a new Guardian); one whose parent is
 * missing too is most often a file system that is not mounted. */
static CK_RV state_dir_usable(const char *dir)
{
    char origin[PATH_MAX + 32], parent[PATH_MAX];
    struct stat st;
    struct statvfs vfs;
    const char *slash;

    if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            return CKR_OK; /* the store says what it is */
        slash = strrchr(dir, '/');
        snprintf(parent, sizeof(parent), "%.*s", slash != NULL && slash != dir ? (int)(slash - dir) : 1, dir);
        if (stat(parent, &st) == 0)
            return CKR_OK;
        guardian_error("store",
                       "the state directory %s (%s) does not exist, nor its parent %s: if it lives on a file system "
                       "that is not mounted, mount it; otherwise create it (install -d -m 700 %s as the user the "
                       "module runs as) or correct the setting; nothing was created, nothing granted",
                       dir, state_dir_origin(origin, sizeof(origin)), parent, dir);
        return CKR_GUARDIAN_STATE_UNAVAILABLE;
    }
    if (!S_ISDIR(st.st_mode))
        return CKR_OK; /* the store refuses it (CKR_GUARDIAN_STATE_UNSAFE) */
    if (statvfs(dir, &vfs) == 0 && (vfs.f_flag & ST_RDONLY) != 0) {
        guardian_error("store",
                       "the state directory %s (%s) is on a read-only file system: the Guardian records every "
                       "import, reservation and certificate there before it grants it; remount it read-write "
                       "(mount -o remount,rw) or set state_dir to a writable directory; nothing granted",
                       dir, state_dir_origin(origin, sizeof(origin)));
        return CKR_GUARDIAN_STATE_UNAVAILABLE;
    }
    if (st.st_uid == geteuid() && access(dir, W_OK | X_OK) != 0) {
        guardian_error("store",
                       "the state directory %s (%s) is not writable (mode %04o): the Guardian records every import, "
                       "reservation and certificate there; chmod 700 %s; nothing granted",
                       dir, state_dir_origin(origin, sizeof(origin)), (unsigned)(st.st_mode & 07777), dir);
        return CKR_GUARDIAN_STATE_UNAVAILABLE;
    }
    return CKR_OK;
}

/* The store, opened on first use.  `quiet`: no log line, and no database
 * created when the state directory does not exist (plain PKCS#11 users);
 * but a state directory that was set (not the default) and is missing is
 * said once: a product list that is empty for that reason must not look
 * like a Guardian without products. */
/* The store of the configuration: SQLite in state_dir, or PostgreSQL at
 * store_conninfo with the password read from store_password_file now (a
 * password changed in the file counts from the next open). */
static CK_RV state_store_open(struct guardian_store **out)
{
    struct guardian_store_options opt = {GUARDIAN_STORE_ENGINE_SQLITE, NULL, NULL};
    char password[256];
    size_t len = 0;
    CK_RV rv;

    if (config.store_engine != 1)
        return guardian_store_open(config.state_dir, out);
    opt.engine = GUARDIAN_STORE_ENGINE_POSTGRESQL;
    opt.conninfo = config.store_conninfo;
    if (config.store_password_file[0] != '\0') {
        rv = guardian_secret_file_read(config.store_password_file, "store_password_file", password, &len);
        if (rv != CKR_OK)
            return rv;
        opt.password = password;
    }
    rv = guardian_store_open_options(config.state_dir, &opt, out);
    OPENSSL_cleanse(password, sizeof(password));
    return rv;
}

static CK_RV state_store(struct guardian_store **out, bool quiet)
{
    struct stat st_dir;
    struct statvfs vfs;
    CK_RV rv = CKR_GENERAL_ERROR;

    pthread_mutex_lock(&init_lock);
    if (atomic_load(&guardian_active_list) == NULL) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        goto out;
    }
    if (store == NULL) {
        if (quiet) {
            /* Missing (said only when it was set: the default's absence is
             * a plain PKCS#11 user's), or read-only (SQLite cannot open it
             * there, its -shm: said in words rather than its open error). */
            static bool said_missing, said_ro;
            const char *why = NULL;
            bool *said = NULL;
            char origin[PATH_MAX + 32];
            if (stat(config.state_dir, &st_dir) != 0 || !S_ISDIR(st_dir.st_mode)) {
                if (strcmp(config.state_dir, GUARDIAN_DEFAULT_STATE_DIR) != 0)
                    why = "does not exist: no product is shown; mount its file system or correct the setting";
                said = &said_missing;
            } else if (statvfs(config.state_dir, &vfs) == 0 && (vfs.f_flag & ST_RDONLY) != 0) {
                why = "is on a read-only file system: no product is shown; remount it read-write";
                said = &said_ro;
            }
            if (said != NULL) {
                if (why != NULL && !*said) {
                    *said = true;
                    guardian_warn("store", "the state directory %s (%s) %s", config.state_dir,
                                  state_dir_origin(origin, sizeof(origin)), why);
                }
                rv = CKR_GUARDIAN_STORE_FAILED;
                goto out;
            }
        }
        if (!quiet && (rv = state_dir_usable(config.state_dir)) != CKR_OK)
            goto out;
        rv = state_store_open(&store);
        if (rv != CKR_OK) {
            char origin[PATH_MAX + 32];
            if (!quiet)
                guardian_error("store", "cannot open the Guardian state in %s (%s; the line above says why; "
                                        "docs/configuration.md)",
                               config.state_dir, state_dir_origin(origin, sizeof(origin)));
            store = NULL;
            goto out;
        }
    }
    *out = store;
    rv = CKR_OK;
out:
    pthread_mutex_unlock(&init_lock);
    return rv;
}

CK_RV guardian_state_store_quiet(struct guardian_store **out)
{
    return state_store(out, true);
}

CK_RV guardian_state_store(struct guardian_store **out)
{
    return state_store(out, false);
}
