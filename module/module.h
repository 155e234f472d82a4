/*
 * module.h — what module/ owns: the exported entry points, the forwarding layer,
 * the backend loader, the configuration, the module's state and its logging.
 *
 * module/ may call: the backend through the lists held in state.c, mechs/ through
 * mechs/registry.h.  Nothing in module/ holds a secret: PINs and key bytes pass
 * through forwarders untouched and are never logged.
 */
#ifndef GUARDIAN_MODULE_H
#define GUARDIAN_MODULE_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "functions.h"
#include "p11.h"

#define GUARDIAN_LIKELY(x) __builtin_expect(!!(x), 1)
#define GUARDIAN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define GUARDIAN_EXPORT __attribute__((visibility("default")))

/* ---- logging (log.c) --------------------------------------------------- */

enum guardian_log_level {
    GUARDIAN_LOG_ERROR = 0,
    GUARDIAN_LOG_WARN = 1,
    GUARDIAN_LOG_INFO = 2,
    GUARDIAN_LOG_DEBUG = 3,
    GUARDIAN_LOG_TRACE = 4, /* debug + one line per PKCS#11 call and its CKR */
};

/* Non-zero while the call trace is on: read on every forwarded call. */
extern atomic_int guardian_trace_on;

void guardian_log(enum guardian_log_level level, const char *category, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Parse "error|warn|warning|info|debug|trace" or "0".."4"; -1 when unknown. */
int guardian_log_level_parse(const char *text);
/* Level from the configuration; GUARDIAN_DEBUG, when set and valid, wins. */
void guardian_log_set_level(int configured_level);
void guardian_trace_enter(const char *function);
void guardian_trace_return(const char *function, CK_RV rv);

/* The trace of a hand-written function (entry.c, credentials.c): one relaxed
 * load while the trace is off. */
static inline void guardian_trace_in(const char *fn)
{
    if (GUARDIAN_UNLIKELY(atomic_load_explicit(&guardian_trace_on, memory_order_relaxed)))
        guardian_trace_enter(fn);
}

static inline CK_RV guardian_trace_out(const char *fn, CK_RV rv)
{
    if (GUARDIAN_UNLIKELY(atomic_load_explicit(&guardian_trace_on, memory_order_relaxed)))
        guardian_trace_return(fn, rv);
    return rv;
}

/* guardian_log drops a line whose text was printed less than this many
 * seconds ago (log.c); a caller that words one cause differently from call to
 * call (a clock reading in it) keeps its own memory for the same window. */
#define GUARDIAN_LOG_REPEAT_SECONDS 10

#define guardian_error(cat, ...) guardian_log(GUARDIAN_LOG_ERROR, cat, __VA_ARGS__)
#define guardian_warn(cat, ...) guardian_log(GUARDIAN_LOG_WARN, cat, __VA_ARGS__)
#define guardian_info(cat, ...) guardian_log(GUARDIAN_LOG_INFO, cat, __VA_ARGS__)
#define guardian_debug(cat, ...) guardian_log(GUARDIAN_LOG_DEBUG, cat, __VA_ARGS__)

/* A precondition that speaks: logs the failed condition and returns `val`.
 * Under GUARDIAN_STRICT_CHECKS (sanitizer builds) it aborts instead, so a test
 * that trips one fails loudly. */
#ifdef GUARDIAN_STRICT_CHECKS
#define GUARDIAN_PRECONDITION_FAILED() abort()
#else
#define GUARDIAN_PRECONDITION_FAILED() ((void)0)
#endif
#define return_val_if_fail(cond, val)                                                          \
    do {                                                                                       \
        if (GUARDIAN_UNLIKELY(!(cond))) {                                                      \
            guardian_error("internal", "%s: precondition failed: %s", __func__, #cond);        \
            GUARDIAN_PRECONDITION_FAILED();                                                    \
            return (val);                                                                      \
        }                                                                                      \
    } while (0)

/* ---- CKR names (ckr.c) -------------------------------------------------- */

/* "CKR_OK", "CKR_GUARDIAN_CONFIG_INVALID", ...; NULL for an unknown value. */
const char *guardian_ckr_name(CK_RV rv);

/* ---- configuration (config.c) ------------------------------------------ */

#define GUARDIAN_CONF_MAX_BYTES (64 * 1024)
#define GUARDIAN_BACKEND_INIT_ARGS_MAX 1024
#define GUARDIAN_STORE_CONNINFO_MAX 1024

struct guardian_config {
    char source[PATH_MAX];    /* the file read, or "" when none was */
    char backend[PATH_MAX];   /* absolute path of the backend PKCS#11 module */
    char state_dir[PATH_MAX]; /* absolute path of the store's directory */
    int log_level;            /* enum guardian_log_level, or -1 when not set */
    /* Service mode (docs/service-mode.md): set, the Guardian takes its own
     * credentials at C_Login and logs into the backend with the PIN in this
     * file, which only the service's user can read. */
    char backend_pin_file[PATH_MAX];
    char backend_so_pin_file[PATH_MAX]; /* the backend SO's, for the Guardian SO */
    uint32_t pin_kdf_n;                 /* scrypt N for new Guardian PINs */
    /* Passed as pReserved of the backend's C_Initialize ("" = NULL): NSS
     * softoken's "configdir='sql:…' …" string (docs/configuration.md). */
    char backend_init_args[GUARDIAN_BACKEND_INIT_ARGS_MAX + 1];
    /* The store's engine (docs/configuration.md, `store`): 0 SQLite in
     * state_dir (the default), 1 PostgreSQL at store_conninfo (a libpq
     * connection string without a password) with the password in
     * store_password_file (the backend_pin_file rules). */
    int store_engine;
    char store_conninfo[GUARDIAN_STORE_CONNINFO_MAX + 1];
    char store_password_file[PATH_MAX];
    /* Set when guardian_config_load failed because nothing configures the
     * module: no file at the default path, no GUARDIAN_CONF, no
     * GUARDIAN_BACKEND (C_Initialize: CKR_GUARDIAN_NOT_CONFIGURED, quietly). */
    bool unconfigured;
};

#define GUARDIAN_PIN_KDF_N_MIN 1024u
#define GUARDIAN_PIN_KDF_N_MAX 1048576u
#define GUARDIAN_PIN_KDF_N_DEFAULT 32768u

/* Parse configuration text (not NUL-terminated; `len` bytes).  `origin` names it
 * in messages.  On failure returns false and writes one line to `err`. */
bool guardian_config_parse(const char *text, size_t len, const char *origin,
                           struct guardian_config *cfg, char *err, size_t errlen);

/* The whole lookup: GUARDIAN_CONF or the default file, then the environment
 * overrides GUARDIAN_BACKEND, GUARDIAN_STATE_DIR and GUARDIAN_BACKEND_INIT_ARGS.
 * The default file may be absent when GUARDIAN_BACKEND is set; a file named by
 * GUARDIAN_CONF may not. */
bool guardian_config_load(struct guardian_config *cfg, char *err, size_t errlen);

/* ---- backend (backend.c) ------------------------------------------------ */

struct guardian_backend {
    void *dl;
    CK_FUNCTION_LIST *list;         /* used as a 2.40 list whatever its version says */
    CK_FUNCTION_LIST_3_0 *list3;    /* non-NULL only if the backend offers "PKCS 11" 3.x */
    CK_VERSION list_version;        /* the interface version we obtained */
};

/* dlopen the module at `path` and obtain its function list(s).  Refuses the
 * Guardian module itself.  On failure writes one line to `err`. */
CK_RV guardian_backend_open(const char *path, struct guardian_backend *be, char *err, size_t errlen);

/* ---- state (state.c) ----------------------------------------------------- */

/* The backend's lists while the module is initialized in this process, NULL
 * otherwise (before C_Initialize, after C_Finalize, in a forked child). */
extern _Atomic(CK_FUNCTION_LIST *) guardian_active_list;
extern _Atomic(CK_FUNCTION_LIST_3_0 *) guardian_active_list3;

static inline CK_FUNCTION_LIST *guardian_backend_list(void)
{
    return atomic_load_explicit(&guardian_active_list, memory_order_acquire);
}

static inline CK_FUNCTION_LIST_3_0 *guardian_backend_list3(void)
{
    return atomic_load_explicit(&guardian_active_list3, memory_order_acquire);
}

/* Load configuration and backend once per process (retried while it fails),
 * without logging: used to probe before C_Initialize. */
CK_RV guardian_state_load(void);
/* True once a backend with a 3.x interface is loaded. */
bool guardian_state_backend_has_3_0(void);
CK_RV guardian_state_initialize(CK_VOID_PTR init_args);
CK_RV guardian_state_finalize(CK_VOID_PTR reserved);
const struct guardian_config *guardian_state_config(void);
/* The durable store in the configured state_dir, opened on first use and
 * closed by C_Finalize; CKR_GUARDIAN_STORE_FAILED with a log line if it cannot
 * be opened. */
struct guardian_store;
CK_RV guardian_state_store(struct guardian_store **out);
/* The same without logging or creating the state directory's database when
 * the directory does not exist: for plain PKCS#11 users of the module. */
CK_RV guardian_state_store_quiet(struct guardian_store **out);

/* ---- attributes of the module's own objects (attr.c) --------------------- */

/* One attribute of one object: CKR_OK, CKR_BUFFER_TOO_SMALL or CKR_ATTRIBUTE_TYPE_INVALID. */
typedef CK_RV (*guardian_attr_fn)(const void *obj, CK_ATTRIBUTE *a);
/* Fill `a` from `value`: the length alone for a NULL buffer; for a short one
 * CKR_BUFFER_TOO_SMALL and ulValueLen = CK_UNAVAILABLE_INFORMATION. */
CK_RV guardian_attr_put(CK_ATTRIBUTE *a, const void *value, CK_ULONG len);
/* An attribute the object does not have: CKR_ATTRIBUTE_TYPE_INVALID,
 * ulValueLen = CK_UNAVAILABLE_INFORMATION. */
CK_RV guardian_attr_invalid(CK_ATTRIBUTE *a);
/* C_GetAttributeValue over `templ` with `one`: every attribute is filled, the
 * result is CKR_ATTRIBUTE_TYPE_INVALID, else CKR_BUFFER_TOO_SMALL, else CKR_OK. */
CK_RV guardian_attr_fill(const void *obj, guardian_attr_fn one, CK_ATTRIBUTE *templ, CK_ULONG count);
/* Non-zero when the template entry `want` asks for exactly this value. */
int guardian_attr_equal(const CK_ATTRIBUTE *want, const void *value, CK_ULONG len);

/* ---- package objects (package_objects.c) -------------------------------- */

/* Handles of the module's own CKO_GUARDIAN_PACKAGE objects. */
#define GUARDIAN_VOBJ_BASE 0x47440000UL
static inline int guardian_is_package_object(CK_OBJECT_HANDLE h)
{
    return (h & ~(CK_OBJECT_HANDLE)0xFFFF) == GUARDIAN_VOBJ_BASE;
}
void guardian_package_objects_reset(void);
/* In a fork child: the lock may have been held by another parent thread. */
void guardian_package_objects_atfork_child(void);
/* Non-zero when a search with this template cannot involve package objects
 * (none exists, none of ours is active, looked at the store this second). */
int guardian_package_objects_idle(const CK_ATTRIBUTE *templ, CK_ULONG count);
/* Non-zero while some session has a search that includes module objects
 * (package or certificate objects: the find machinery serves both). */
int guardian_package_objects_searching(void);
CK_OBJECT_HANDLE guardian_package_object_handle(const char *oem_id, const char *product_id);
CK_RV guardian_package_objects_get(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h,
                                   CK_ATTRIBUTE_PTR templ, CK_ULONG count);
CK_RV guardian_package_objects_size(CK_OBJECT_HANDLE h, CK_ULONG_PTR size);
CK_RV guardian_package_objects_find_init(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR templ,
                                         CK_ULONG count);
CK_RV guardian_package_objects_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out,
                                    CK_ULONG max, CK_ULONG_PTR count, int *handled);
CK_RV guardian_package_objects_find_final(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, int *handled);
/* A session ended (CK_INVALID_HANDLE: all of them): forget its searches. */
void guardian_package_objects_session_closed(CK_SESSION_HANDLE s);

/* ---- certificate objects (cert_objects.c) ---------------------------------- */

/* The session certificate objects made by CKM_GUARDIAN_DERIVE_DEVICE_CERT live
 * in the module, not in the backend: SoftHSMv2 keeps destroyed session objects
 * until C_Finalize and scans every object on each C_FindObjects, so 100,000
 * certificates there cost memory and time that a production run cannot spend.
 * Handles are GUARDIAN_COBJ_BASE | n (n in 1..0xFFFF, reused after destroy). */
#define GUARDIAN_COBJ_BASE 0x47450000UL
static inline int guardian_is_module_object(CK_OBJECT_HANDLE h)
{
    /* 0x4744xxxx package objects, 0x4745xxxx certificate objects: one test. */
    return (h & ~(CK_OBJECT_HANDLE)0x1FFFF) == GUARDIAN_VOBJ_BASE;
}
static inline int guardian_is_cert_object(CK_OBJECT_HANDLE h)
{
    return (h & ~(CK_OBJECT_HANDLE)0xFFFF) == GUARDIAN_COBJ_BASE;
}

/* What a certificate object holds; every pointer is copied. */
struct guardian_cert_object_value {
    const uint8_t *der;     /* the certificate, CKA_VALUE */
    size_t der_len;
    const uint8_t *subject; /* DER Name, CKA_SUBJECT */
    size_t subject_len;
    const uint8_t *issuer;  /* DER Name, CKA_ISSUER */
    size_t issuer_len;
    const uint8_t *serial;  /* DER INTEGER (tag and length included), CKA_SERIAL_NUMBER */
    size_t serial_len;
    const uint8_t *id;      /* CKA_ID */
    size_t id_len;
    const char *label;      /* CKA_LABEL, UTF-8, NUL-terminated */
    int output;             /* non-zero: a request's output, CKO_DATA (see below) */
};

/* A session object (CKO_CERTIFICATE, CKC_X_509, CKA_TOKEN FALSE) of `session`,
 * destroyed by C_DestroyObject, C_CloseSession, C_CloseAllSessions or
 * C_Finalize.  CKR_HOST_MEMORY when the module holds 65,535 already. */
CK_RV guardian_cert_object_create(CK_SESSION_HANDLE session, const struct guardian_cert_object_value *v,
                                  CK_OBJECT_HANDLE *out);

/* The same in two steps, for a caller that must do something between making
 * the object and letting anyone see it (the derive mechanism writes the ISSUE
 * record): _prepare makes the object and reserves its handle, but no call can
 * find or read it; then exactly one of _publish (it becomes live: *out is its
 * handle) or _discard (freed, never seen).  _publish fails, freeing the
 * object, only when C_Finalize or C_Initialize ran in between
 * (CKR_SESSION_HANDLE_INVALID: every session ended). */
struct guardian_cert_object;
/* A request's output (guardian_output_create, mechs/identity.c): a private
 * session CKO_DATA object, label `label`, CKA_VALUE `value`, held by the module
 * like the certificates (NSS softoken 3.87 refuses every private CKO_DATA; held
 * here, the output has one form on every backend and through p11-kit).  Only
 * a session of its slot whose backend session is logged in as the user finds
 * it, reads it or destroys it, as the backend would treat a private object;
 * it cannot be changed or copied. */
CK_RV guardian_output_object_create(CK_SESSION_HANDLE session, const char *label, const uint8_t *value, size_t len,
                                    CK_OBJECT_HANDLE *out);
CK_RV guardian_cert_object_prepare(CK_SESSION_HANDLE session, const struct guardian_cert_object_value *v,
                                   struct guardian_cert_object **out);
CK_RV guardian_cert_object_publish(struct guardian_cert_object *o, CK_OBJECT_HANDLE *out);
void guardian_cert_object_discard(struct guardian_cert_object *o);

/* How many certificate objects are live: read without a lock on the hot path
 * of C_FindObjectsInit, where 0 keeps the search a tail call to the backend. */
extern atomic_ulong guardian_cert_objects_live;
/* Non-zero when some certificate object could match the template (it names no
 * attribute they lack and no fixed value they do not have). */
int guardian_cert_objects_may_match(const CK_ATTRIBUTE *templ, CK_ULONG count);
/* Non-zero when a search with this template cannot involve certificate objects. */
static inline int guardian_cert_objects_idle(const CK_ATTRIBUTE *templ, CK_ULONG count)
{
    return GUARDIAN_LIKELY(atomic_load_explicit(&guardian_cert_objects_live, memory_order_relaxed) == 0) ||
           !guardian_cert_objects_may_match(templ, count);
}
/* The handles of the live certificate objects matching the template, in a
 * fresh array (NULL when none; free it). */
CK_RV guardian_cert_objects_match(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, const CK_ATTRIBUTE *templ,
                                  CK_ULONG count, CK_OBJECT_HANDLE **out, CK_ULONG *n_out);
/* C_GetAttributeValue, C_GetObjectSize, C_DestroyObject for a certificate
 * object handle (C_GetObjectSize and the refusals: entry.c checks the session). */
CK_RV guardian_cert_objects_get(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h,
                                CK_ATTRIBUTE_PTR templ, CK_ULONG count);
CK_RV guardian_cert_objects_size(CK_OBJECT_HANDLE h, CK_ULONG_PTR size);
CK_RV guardian_cert_objects_destroy(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h);
/* A session ended: destroy its objects. */
void guardian_cert_objects_session_closed(CK_SESSION_HANDLE session);
/* C_CloseAllSessions(slot): destroy the objects of every session of the slot. */
void guardian_cert_objects_slot_closed(CK_SLOT_ID slot);
/* Destroy every object (C_Initialize, C_Finalize). */
void guardian_cert_objects_reset(void);
/* In a fork child: the lock may have been held by another parent thread. */
void guardian_cert_objects_atfork_child(void);

/* ---- ownership and policy (policy.c) ---------------------------------------- */

/* The marks of the Guardian's objects (policy.c explains why they prove
 * ownership: callers cannot set them through the module). */
#define GUARDIAN_PACKAGE_PREFIX "guardian:"          /* a package's objects (label, data CKA_APPLICATION) */
#define GUARDIAN_IDENTITY_ID "guardian-identity"     /* CKA_ID and CKA_LABEL of the agreement key and its certificate */
#define GUARDIAN_SIGNING_ID "guardian-signing"       /* CKA_ID and CKA_LABEL of the signing key and its certificate */
#define GUARDIAN_IMPORT_PREFIX "guardian-import:"    /* an import's intermediate keys */
#define GUARDIAN_ANCHOR_LABEL "guardian-anchor"      /* the state anchor data object */
#define GUARDIAN_OUTPUT_PREFIX "guardian-output:"    /* a request's output object */
#define GUARDIAN_ROOT_PREFIX "guardian-root:"        /* an enrolled OEM root: "guardian-root:ACME,FOO" */

enum guardian_role {
    GUARDIAN_ROLE_UNOWNED = 1,
    GUARDIAN_ROLE_IDENTITY,
    GUARDIAN_ROLE_PRODUCTION,
    GUARDIAN_ROLE_SECRET,
    GUARDIAN_ROLE_INTERMEDIATE,
    GUARDIAN_ROLE_STATE,
    GUARDIAN_ROLE_PUBLIC,
    GUARDIAN_ROLE_ROOT,
    GUARDIAN_ROLE_OUTPUT,
    GUARDIAN_ROLE_COUNT
};

/* What a standard call does with an object. */
enum guardian_op {
    GUARDIAN_OP_ENCRYPT,
    GUARDIAN_OP_DECRYPT,
    GUARDIAN_OP_SIGN,
    GUARDIAN_OP_SIGN_RECOVER,
    GUARDIAN_OP_VERIFY,
    GUARDIAN_OP_VERIFY_RECOVER,
    GUARDIAN_OP_DIGEST_KEY,
    GUARDIAN_OP_DERIVE,      /* base key of a standard C_DeriveKey */
    GUARDIAN_OP_UNWRAP_WITH, /* unwrapping key of a standard C_UnwrapKey */
    GUARDIAN_OP_WRAP_WITH,   /* wrapping key of C_WrapKey */
    GUARDIAN_OP_WRAPPED,     /* the key C_WrapKey would wrap */
    GUARDIAN_OP_SET_ATTRIBUTE,
    GUARDIAN_OP_COPY,
    GUARDIAN_OP_DESTROY,
    GUARDIAN_OP_COUNT
};

/* The policy's cache: words (handle << 8 | role), 0 empty, UINT64_MAX a
 * tombstone; written under policy.c's lock, read without one. */
#define GUARDIAN_POLICY_CACHE_BITS 12
#define GUARDIAN_POLICY_CACHE_PROBES 8
extern _Atomic uint64_t guardian_policy_cache[1u << GUARDIAN_POLICY_CACHE_BITS];

static inline size_t guardian_policy_slot(CK_OBJECT_HANDLE h)
{
    return (size_t)(((uint64_t)h * 0x9E3779B97F4A7C15ull) >> (64 - GUARDIAN_POLICY_CACHE_BITS));
}

/* The cached role of `h`, 0 when not cached. */
static inline int guardian_policy_cached_role(CK_OBJECT_HANDLE h)
{
    const size_t mask = (1u << GUARDIAN_POLICY_CACHE_BITS) - 1;
    size_t i = guardian_policy_slot(h);
    if (GUARDIAN_UNLIKELY(h >> 56))
        return 0;
    for (int k = 0; k < GUARDIAN_POLICY_CACHE_PROBES; k++) {
        uint64_t w = atomic_load_explicit(&guardian_policy_cache[(i + k) & mask], memory_order_relaxed);
        if (w == 0)
            return 0;
        if ((w >> 8) == h && w != UINT64_MAX)
            return (int)(w & 0xff);
    }
    return 0;
}

/* The hot path: non-zero when `h` is cached as an object that is not the
 * Guardian's (the call may go straight to the backend); zero means "ask
 * guardian_policy_check". */
static inline int guardian_policy_fast(CK_OBJECT_HANDLE h)
{
    return guardian_policy_cached_role(h) == GUARDIAN_ROLE_UNOWNED;
}
/* The full check: classifies `h` if needed (reading its attributes in session
 * `s`), then CKR_OK, or CKR_KEY_FUNCTION_NOT_PERMITTED / CKR_ACTION_PROHIBITED
 * with one log line naming `function`.  An object the session cannot read is
 * not used either (fail closed): the code the call gives for a handle it
 * cannot use (CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID, ...). */
CK_RV guardian_policy_check(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, enum guardian_op op,
                            const char *function);
/* The role of `h` from its attributes (uncached); the backend's error when the
 * session cannot read the object. */
CK_RV guardian_policy_classify(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, int *role);
/* A caller's template may not create or change an object into one that carries
 * the Guardian's marks (or CKA_TRUSTED): CKR_OK or CKR_ACTION_PROHIBITED. */
CK_RV guardian_policy_template(const CK_ATTRIBUTE *t, CK_ULONG n, const char *function);
/* `h` was destroyed: its number may name another object later. */
void guardian_policy_forget(CK_OBJECT_HANDLE h);
/* Forget everything (C_Initialize, C_Finalize, logout, session closed). */
void guardian_policy_reset(void);
void guardian_policy_atfork_child(void);

/* ---- the Guardian's own credentials (credentials.c) ---------------------- */

/* True when the configuration sets backend_pin_file: C_Login then takes the
 * Guardian's credentials and the module alone logs into the backend. */
bool guardian_service_mode(void);
/* C_Initialize: the PIN files the configuration names are usable (one log
 * line and CKR_GUARDIAN_CONFIG_INVALID otherwise). */
CK_RV guardian_credentials_check_config(const struct guardian_config *cfg);
/* A secret in a file with backend_pin_file's rules (this user's regular
 * file, mode 0600 or 0400, 1..255 bytes, one trailing newline dropped), `key`
 * naming the setting in the log line; NUL-terminated in buf (cleanse it).
 * CKR_GUARDIAN_CONFIG_INVALID otherwise. */
CK_RV guardian_secret_file_read(const char *path, const char *key, char buf[256], size_t *len);
/* Forget every login (C_Initialize, C_Finalize) / in a fork child. */
void guardian_credentials_reset(void);
void guardian_credentials_atfork_child(void);
/* The backend logged `slot` out (C_Logout, C_CloseAllSessions). */
void guardian_credentials_logged_out(CK_SLOT_ID slot);
/* Who is logged in on session `s` as the Guardian sees it: CKU_SO, CKU_USER,
 * or GUARDIAN_NOBODY; *si (may be NULL) gets the backend's session info.
 * Outside service mode, the backend's session state.  In service mode, the
 * Guardian login (credentials.c): without backend_so_pin_file the Security
 * Officer's login opens the backend as its user (NSS softoken has no SO,
 * tpm2-pkcs11's SO cannot create objects; docs/service-mode.md), so the
 * backend's state would say "user" for the Guardian SO. */
#define GUARDIAN_NOBODY ((CK_USER_TYPE)~(CK_USER_TYPE)0)
CK_USER_TYPE guardian_session_who(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_SESSION_INFO *si);
/* True while the Guardian SO of service mode is logged into the backend as
 * its user (no backend_so_pin_file): the SO's requests then run in a user
 * session of the backend. */
bool guardian_so_as_backend_user(void);
/* Non-zero while this process runs the module in service mode: read on the
 * keyed forwarders' hot path. */
extern atomic_int guardian_service_on;
/* Service mode: p11-kit server hands a mechanism it does not serialise to the
 * module as the client's raw bytes, pointers included (p11-kit 0.24.1 and
 * upstream; measured with a client of the operator's own that speaks the RPC
 * directly): a parameter that holds pointers would be read at addresses the
 * client chose.  So in service mode only mechanisms whose parameter is flat
 * (an IV, CK_AES_CTR_PARAMS, CK_RSA_PKCS_PSS_PARAMS) or rebuilt by p11-kit
 * itself (CK_RSA_PKCS_OAEP_PARAMS) reach the backend with a parameter, and no
 * Guardian vendor mechanism at all (its operations are requests):
 * CKR_MECHANISM_INVALID with one log line otherwise. */
CK_RV guardian_service_mechanism_check(const CK_MECHANISM *m, const char *function);
static inline int guardian_mech_fast(const CK_MECHANISM *m)
{
    return m == NULL || (m->pParameter == NULL && (m->mechanism & CKM_VENDOR_DEFINED) == 0) ||
           !atomic_load_explicit(&guardian_service_on, memory_order_relaxed);
}
CK_RV guardian_cred_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info);
CK_RV guardian_cred_C_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR label);
CK_RV guardian_cred_C_InitPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG len);
CK_RV guardian_cred_C_SetPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old, CK_ULONG old_len, CK_UTF8CHAR_PTR pin,
                             CK_ULONG len);
CK_RV guardian_cred_C_Login(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len);
CK_RV guardian_cred_C_LoginUser(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len,
                                CK_UTF8CHAR_PTR user, CK_ULONG user_len);

/* ---- forwarding (forward.c) and entry points (entry.c) ------------------ */

/* One pass-through per function of functions.h: guardian_fwd_C_Sign, ... */
#define GUARDIAN_DECLARE_FORWARDER(name, params, args) CK_RV guardian_fwd_##name params;
GUARDIAN_FORWARD_2_40_PLAIN(GUARDIAN_DECLARE_FORWARDER)
GUARDIAN_FORWARD_2_40_CREDENTIALS(GUARDIAN_DECLARE_FORWARDER)
GUARDIAN_FORWARD_2_40_KEYED(GUARDIAN_DECLARE_FORWARDER)
GUARDIAN_FORWARD_3_0(GUARDIAN_DECLARE_FORWARDER)

#endif /* GUARDIAN_MODULE_H */
