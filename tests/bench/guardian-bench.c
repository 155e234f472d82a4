/*
 * guardian-bench.c — what the Guardian module costs over its backend.
 *
 *   guardian-bench --module <guardian-pkcs11.so> --backend <libsofthsm2.so>
 *                  [--token-label L --pin P] [--seconds S] [--round-ms MS]
 *                  [--threads 1,2] [--memory-calls N] [--calls LIST] [--csv] [--verbose]
 *
 * Method (docs/performance.md has the full argument):
 *
 * - One process loads both the backend and the module.  The module dlopen()s the
 *   same libsofthsm2.so, so the dynamic linker hands it the very same instance:
 *   we C_Initialize once, through the module, and the backend's own function
 *   list then works on the same initialised library with the same session and
 *   object handles.  Both arms therefore run identical backend work on identical
 *   sessions; the only difference is which function list the call goes through.
 *
 * - Throughput is measured in short rounds (--round-ms, 50 ms) that alternate
 *   between the arms in blocks of four, A-B-B-A then B-A-A-B: a linear drift in
 *   machine speed (thermal, a neighbour's compile) weighs equally on both arms
 *   within each block.  Each block gives one paired ratio module/direct; we
 *   report the median of those ratios and their spread, and, as a cross-check,
 *   the pooled ratio (all ops over all time, per arm).  The median is the
 *   headline because the machine is shared: a round disturbed by another process
 *   moves one block, not the result.
 *
 * - With T threads each thread has its own session (the token is logged in once,
 *   as PKCS#11 login state is per token); a round's rate is the sum over threads
 *   of that thread's ops divided by that thread's own elapsed time.
 *
 * - Resident memory added by the module is measured in fresh processes: we
 *   re-execute ourselves with a hidden --rss-child flag, once loading only the
 *   backend and once only the module, each doing the same work (C_Initialize,
 *   session, login, find the key, one sign) before reading /proc/self/status.
 *   Neither child has ever mapped the other library.
 *
 * - Growth: VmRSS of this process before and after N cheap calls through the
 *   module (C_GenerateRandom 16 bytes and C_GetAttributeValue, alternating),
 *   after a warm-up; the same through the backend alone as a control.
 *
 * - cert (opt-in): the two arms do different work.  Module arm: one device
 *   certificate, as a programming system gets it: C_DeriveKey
 *   (CKM_GUARDIAN_DERIVE_DEVICE_CERT) on the imported production CA key, with
 *   the module's durable quota and audit, then C_GetAttributeValue(CKA_VALUE)
 *   and C_DestroyObject of the certificate object.  Direct arm: C_SignInit +
 *   C_Sign (CKM_ECDSA, 32-byte hash) with the same CA key through the
 *   backend's own list: the signature a certificate cannot do without.  The
 *   ratio is certificates/s over signatures/s; the target is 0.5.
 *
 * Exit status: 0 on success, 1 on a PKCS#11 or system error, 2 on bad usage.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>
/* after the PKCS#11 header: the module's vendor return values */
#include "guardian/guardian-pkcs11.h"

#define BENCH_KEY_LABEL "guardian-bench-p256"
#define BENCH_TOKEN_LABEL "bench"
#define BENCH_TOKEN_PIN "1234"
#define BENCH_TOKEN_SO_PIN "12345678"
#define MAX_THREADS 16
#define RSS_CHILD_PAIRS 3 /* A-B then B-A then A-B: six fresh processes */
#define GROWTH_WARMUP_CALLS 20000UL
/* cert: device public keys made before timing (key generation is the part's
 * cost, not the Guardian's), used round-robin; each call a new device ID. */
#define DEVICE_POOL 1024
#define DEVICE_SPKI_MAX 128
#define CERT_VALUE_MAX 4096
/* The memory children get the PIN here, not on a command line others can read. */
#define CHILD_PIN_ENV "GUARDIAN_BENCH_PIN"

/* ---- errors ------------------------------------------------------------- */

static const char *ckr_name(CK_RV rv)
{
    switch (rv) {
#define N(x) \
    case x:  \
        return #x;
        N(CKR_OK) N(CKR_CANCEL) N(CKR_HOST_MEMORY) N(CKR_SLOT_ID_INVALID) N(CKR_GENERAL_ERROR)
        N(CKR_FUNCTION_FAILED) N(CKR_ARGUMENTS_BAD) N(CKR_CANT_LOCK) N(CKR_ATTRIBUTE_SENSITIVE)
        N(CKR_ATTRIBUTE_TYPE_INVALID) N(CKR_ATTRIBUTE_VALUE_INVALID) N(CKR_DATA_INVALID) N(CKR_DATA_LEN_RANGE)
        N(CKR_DEVICE_ERROR) N(CKR_DEVICE_MEMORY) N(CKR_FUNCTION_NOT_SUPPORTED) N(CKR_KEY_HANDLE_INVALID)
        N(CKR_KEY_TYPE_INCONSISTENT) N(CKR_KEY_FUNCTION_NOT_PERMITTED) N(CKR_MECHANISM_INVALID)
        N(CKR_MECHANISM_PARAM_INVALID) N(CKR_OBJECT_HANDLE_INVALID) N(CKR_OPERATION_ACTIVE)
        N(CKR_OPERATION_NOT_INITIALIZED) N(CKR_PIN_INCORRECT) N(CKR_PIN_LOCKED) N(CKR_SESSION_CLOSED)
        N(CKR_SESSION_COUNT) N(CKR_SESSION_HANDLE_INVALID) N(CKR_SESSION_READ_ONLY) N(CKR_TEMPLATE_INCOMPLETE)
        N(CKR_TEMPLATE_INCONSISTENT) N(CKR_TOKEN_NOT_PRESENT) N(CKR_TOKEN_NOT_RECOGNIZED)
        N(CKR_USER_ALREADY_LOGGED_IN) N(CKR_USER_NOT_LOGGED_IN) N(CKR_USER_PIN_NOT_INITIALIZED)
        N(CKR_USER_TYPE_INVALID) N(CKR_BUFFER_TOO_SMALL) N(CKR_SIGNATURE_INVALID) N(CKR_SIGNATURE_LEN_RANGE)
        N(CKR_CRYPTOKI_NOT_INITIALIZED) N(CKR_CRYPTOKI_ALREADY_INITIALIZED) N(CKR_DOMAIN_PARAMS_INVALID)
        N(CKR_RANDOM_NO_RNG) N(CKR_CURVE_NOT_SUPPORTED) N(CKR_ACTION_PROHIBITED)
        N(CKR_GUARDIAN_CONFIG_INVALID) N(CKR_GUARDIAN_BACKEND_LOAD_FAILED) N(CKR_GUARDIAN_BACKEND_IS_SELF)
        N(CKR_GUARDIAN_QUOTA_EXHAUSTED) N(CKR_GUARDIAN_PRODUCT_UNKNOWN) N(CKR_GUARDIAN_DEVICE_KEY_INVALID)
        N(CKR_GUARDIAN_DEVICE_ID_INVALID) N(CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY) N(CKR_GUARDIAN_PACKAGE_SUPERSEDED)
        N(CKR_GUARDIAN_PACKAGE_EXPIRED) N(CKR_GUARDIAN_STORE_FAILED) N(CKR_GUARDIAN_AUDIT_CORRUPT)
#undef N
    default:
        return rv >= CKR_VENDOR_DEFINED ? "vendor-defined CKR" : "unknown CKR";
    }
}

static void report_ckr(const char *what, CK_RV rv)
{
    fprintf(stderr, "guardian-bench: %s failed: CKR 0x%08lx (%s)\n", what, (unsigned long)rv, ckr_name(rv));
}

/* For the `rv = ...; goto out;` style: report and leave on anything but CKR_OK. */
#define P11_CHECK(expr, what)          \
    do {                               \
        rv = (expr);                   \
        if (rv != CKR_OK) {            \
            report_ckr((what), rv);    \
            goto out;                  \
        }                              \
    } while (0)

#define FAIL(...)                                       \
    do {                                                \
        fprintf(stderr, "guardian-bench: " __VA_ARGS__); \
        fputc('\n', stderr);                            \
        rv = CKR_GENERAL_ERROR;                         \
        goto out;                                       \
    } while (0)

/* ---- options -------------------------------------------------------------- */

struct options {
    const char *module_path;
    const char *backend_path;
    const char *token_label; /* NULL: make a throwaway token */
    const char *pin;
    double seconds;          /* measured time per arm, per call, per thread count */
    double round_s;          /* length of one round */
    int threads[MAX_THREADS];
    int n_threads;
    unsigned long memory_calls;
    unsigned calls_mask;     /* bit i: calls[i] is measured */
    bool csv;
    bool verbose;            /* print every block's ratio */
    const char *rss_child; /* hidden: "direct" or "module" */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: guardian-bench --module <guardian-pkcs11.so> --backend <libsofthsm2.so>\n"
            "                      [--token-label L --pin P] [--seconds S] [--round-ms MS]\n"
            "                      [--threads 1,2] [--memory-calls N] [--calls LIST] [--csv] [--verbose]\n"
            "\n"
            "  --module PATH        the Guardian module\n"
            "  --backend PATH       the backend it forwards to (must be the library the module loads)\n"
            "  --token-label L      use this existing token (default: a throwaway token in a temp dir)\n"
            "  --pin P              user PIN of that token (or set " CHILD_PIN_ENV ")\n"
            "  --seconds S          measured seconds per arm, per call, per thread count (default 6)\n"
            "  --round-ms MS        length of one interleaved round (default 50)\n"
            "  --threads LIST       thread counts to run, comma-separated (default 1,2)\n"
            "  --memory-calls N     calls for the memory growth check, 0 to skip (default 1000000)\n"
            "  --calls LIST         any of sign,getattr,find,random,sessioninfo,cert\n"
            "                       (default: sign,getattr,find,random; cert needs a token holding an\n"
            "                       imported package: tests/bench/cert-bench.sh sets one up)\n"
            "  --csv                CSV on stdout (the readable table goes to stderr)\n"
            "  --verbose            print each block's ratio (to judge the spread)\n");
}

static bool parse_threads(const char *text, struct options *o)
{
    const char *p = text;

    o->n_threads = 0;
    while (*p != '\0') {
        char *end;
        long v;

        errno = 0;
        v = strtol(p, &end, 10);
        if (errno != 0 || end == p || v < 1 || v > MAX_THREADS || o->n_threads == MAX_THREADS)
            return false;
        o->threads[o->n_threads++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end != '\0')
            return false;
        p = end;
    }
    return o->n_threads > 0;
}

/* The short names accepted by --calls, in the order of calls[] below. */
static const char *const call_keys[] = {"sign", "getattr", "find", "random", "sessioninfo", "cert"};
/* The default set; "sessioninfo" is an opt-in diagnostic (see op_sessioninfo),
 * "cert" needs a token with an imported package (tests/bench/cert-bench.sh). */
#define DEFAULT_CALLS 0xfU
#define N_CALLS (sizeof(call_keys) / sizeof(call_keys[0]))
#define CALL_CERT (1U << 5)

static bool parse_calls(const char *text, unsigned *mask)
{
    const char *p = text;

    *mask = 0;
    while (*p != '\0') {
        size_t len = strcspn(p, ",");
        size_t i;
        for (i = 0; i < N_CALLS; i++)
            if (strlen(call_keys[i]) == len && strncmp(p, call_keys[i], len) == 0)
                break;
        if (i == N_CALLS)
            return false;
        *mask |= 1U << i;
        p += len;
        if (*p == ',')
            p++;
    }
    return *mask != 0;
}

/* 0 on success, 2 on bad usage (after printing why). */
static int parse_options(int argc, char **argv, struct options *o)
{
    enum { OPT_MODULE = 256, OPT_BACKEND, OPT_LABEL, OPT_PIN, OPT_SECONDS, OPT_ROUND, OPT_THREADS, OPT_MEM,
           OPT_CSV, OPT_RSS_CHILD, OPT_HELP, OPT_CALLS, OPT_VERBOSE };
    static const struct option longopts[] = {
        {"module", required_argument, NULL, OPT_MODULE},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"token-label", required_argument, NULL, OPT_LABEL},
        {"pin", required_argument, NULL, OPT_PIN},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"round-ms", required_argument, NULL, OPT_ROUND},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"memory-calls", required_argument, NULL, OPT_MEM},
        {"csv", no_argument, NULL, OPT_CSV},
        {"calls", required_argument, NULL, OPT_CALLS},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"rss-child", required_argument, NULL, OPT_RSS_CHILD},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(o, 0, sizeof(*o));
    o->seconds = 6.0;
    o->round_s = 0.05;
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->n_threads = 2;
    o->memory_calls = 1000000UL;
    o->calls_mask = DEFAULT_CALLS;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case OPT_MODULE:
            o->module_path = optarg;
            break;
        case OPT_BACKEND:
            o->backend_path = optarg;
            break;
        case OPT_LABEL:
            o->token_label = optarg;
            break;
        case OPT_PIN:
            o->pin = optarg;
            break;
        case OPT_SECONDS:
            o->seconds = strtod(optarg, &end);
            if (*end != '\0' || !(o->seconds > 0.0 && o->seconds <= 3600.0)) {
                fprintf(stderr, "guardian-bench: --seconds wants a number in (0, 3600]\n");
                return 2;
            }
            break;
        case OPT_ROUND: {
            double ms = strtod(optarg, &end);
            if (*end != '\0' || !(ms >= 10.0 && ms <= 10000.0)) {
                fprintf(stderr, "guardian-bench: --round-ms wants a number in [10, 10000]\n");
                return 2;
            }
            o->round_s = ms / 1000.0;
            break;
        }
        case OPT_THREADS:
            if (!parse_threads(optarg, o)) {
                fprintf(stderr, "guardian-bench: --threads wants a list like 1,2 (each 1..%d)\n", MAX_THREADS);
                return 2;
            }
            break;
        case OPT_MEM:
            errno = 0;
            o->memory_calls = strtoul(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || optarg[0] == '-') {
                fprintf(stderr, "guardian-bench: --memory-calls wants a non-negative integer\n");
                return 2;
            }
            break;
        case OPT_CSV:
            o->csv = true;
            break;
        case OPT_VERBOSE:
            o->verbose = true;
            break;
        case OPT_CALLS:
            if (!parse_calls(optarg, &o->calls_mask)) {
                fprintf(stderr,
                        "guardian-bench: --calls wants a list of sign,getattr,find,random,sessioninfo,cert\n");
                return 2;
            }
            break;
        case OPT_RSS_CHILD:
            o->rss_child = optarg;
            break;
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || o->module_path == NULL || o->backend_path == NULL) {
        usage(stderr);
        return 2;
    }
    if (o->token_label != NULL && o->pin == NULL)
        o->pin = getenv(CHILD_PIN_ENV);
    if (o->rss_child == NULL && (o->token_label == NULL) != (o->pin == NULL)) {
        fprintf(stderr, "guardian-bench: --token-label needs --pin (or %s in the environment)\n", CHILD_PIN_ENV);
        return 2;
    }
    return 0;
}

/* ---- small helpers -------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

struct rss {
    long vm_rss, rss_anon, rss_file; /* KiB */
};

static bool read_rss(struct rss *r)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "re");
    int found = 0;

    if (f == NULL)
        return false;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld", &r->vm_rss) == 1 || sscanf(line, "RssAnon: %ld", &r->rss_anon) == 1 ||
            sscanf(line, "RssFile: %ld", &r->rss_file) == 1)
            found++;
    }
    fclose(f);
    return found == 3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile by linear interpolation on a sorted array. */
static double percentile(const double *sorted, size_t n, double p)
{
    double pos, frac;
    size_t lo;

    if (n == 0)
        return NAN;
    pos = p * (double)(n - 1);
    lo = (size_t)pos;
    frac = pos - (double)lo;
    if (lo + 1 >= n)
        return sorted[n - 1];
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

/* Distribution-free 95 % confidence interval of the median of sorted[0..n-1]:
 * the order statistics at ranks (n -/+ 1.96 sqrt(n)) / 2 (binomial, p = 1/2). */
static void median_ci95(const double *sorted, size_t n, double *lo, double *hi)
{
    double half = 1.96 * sqrt((double)n) / 2.0;
    long j = (long)floor((double)n / 2.0 - half);     /* 1-based rank */
    long k = (long)ceil((double)n / 2.0 + half) + 1; /* 1-based rank */

    if (j < 1)
        j = 1;
    if (k > (long)n)
        k = (long)n;
    *lo = sorted[j - 1];
    *hi = sorted[k - 1];
}

static double cv_of(const double *v, size_t n)
{
    double mean = 0.0, var = 0.0;

    if (n < 2)
        return NAN;
    for (size_t i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        var += (v[i] - mean) * (v[i] - mean);
    return sqrt(var / (double)(n - 1)) / mean;
}

static void padded_label(CK_UTF8CHAR out[32], const char *label)
{
    size_t n = strlen(label);
    memset(out, ' ', 32);
    memcpy(out, label, n < 32 ? n : 32);
}

/* ---- loading PKCS#11 libraries ------------------------------------------ */

struct lib {
    void *dl;
    CK_FUNCTION_LIST *list;
};

static CK_RV lib_open(const char *path, struct lib *l)
{
    CK_C_GetFunctionList get_list;
    CK_RV rv = CKR_GENERAL_ERROR;

    memset(l, 0, sizeof(*l));
    l->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL)
        FAIL("cannot load %s: %s", path, dlerror());
    get_list = (CK_C_GetFunctionList)dlsym(l->dl, "C_GetFunctionList");
    if (get_list == NULL)
        FAIL("%s has no C_GetFunctionList", path);
    P11_CHECK(get_list(&l->list), "C_GetFunctionList");
    if (l->list == NULL)
        FAIL("%s: C_GetFunctionList returned no list", path);
out:
    return rv;
}

static void lib_close(struct lib *l)
{
    if (l->dl != NULL)
        dlclose(l->dl);
    memset(l, 0, sizeof(*l));
}

static CK_RV initialize(CK_FUNCTION_LIST *l)
{
    CK_C_INITIALIZE_ARGS args;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    return l->C_Initialize(&args);
}

static CK_RV find_slot(CK_FUNCTION_LIST *l, const char *label, CK_SLOT_ID *slot)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    CK_RV rv = CKR_GENERAL_ERROR;

    padded_label(want, label);
    P11_CHECK(l->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (l->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
            *slot = slots[i];
            rv = CKR_OK;
            goto out;
        }
    }
    FAIL("no token labelled '%s'", label);
out:
    return rv;
}

static CK_RV login(CK_FUNCTION_LIST *l, CK_SESSION_HANDLE s, const char *pin)
{
    CK_RV rv = l->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
    return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

/* First object of `klass` labelled BENCH_KEY_LABEL, or CK_INVALID_HANDLE. */
static CK_RV find_key(CK_FUNCTION_LIST *l, CK_SESSION_HANDLE s, CK_OBJECT_CLASS klass, CK_OBJECT_HANDLE *out)
{
    static const char label[] = BENCH_KEY_LABEL;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &klass, sizeof(klass)},
        {CKA_LABEL, (void *)label, sizeof(label) - 1},
    };
    CK_ULONG n = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    *out = CK_INVALID_HANDLE;
    P11_CHECK(l->C_FindObjectsInit(s, tmpl, 2), "C_FindObjectsInit");
    rv = l->C_FindObjects(s, out, 1, &n);
    l->C_FindObjectsFinal(s);
    if (rv != CKR_OK) {
        report_ckr("C_FindObjects", rv);
        goto out;
    }
    if (n == 0)
        *out = CK_INVALID_HANDLE;
out:
    return rv;
}

/* ---- the throwaway token ------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir)
{
    if (dir[0] != '\0' && nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "guardian-bench: warning: could not remove %s: %s\n", dir, strerror(errno));
}

/* Run argv (searched in PATH) with stdout sent to /dev/null; true on exit 0. */
static bool run_quiet(char *const argv[])
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0, err;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0) {
        fprintf(stderr, "guardian-bench: cannot run %s: %s\n", argv[0], strerror(err));
        return false;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* A token in a fresh temp dir; SOFTHSM2_CONF is set before anything loads
 * SoftHSM (it reads the file in C_Initialize, softhsm2-util reads it too). */
static CK_RV make_token(char *dir, size_t dirlen)
{
    char path[PATH_MAX], tokens[PATH_MAX];
    FILE *f = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;
    char *argv[] = {"softhsm2-util", "--init-token", "--free", "--label", BENCH_TOKEN_LABEL,
                    "--pin", BENCH_TOKEN_PIN, "--so-pin", BENCH_TOKEN_SO_PIN, NULL};
    const char *tmp = getenv("TMPDIR");

    if ((size_t)snprintf(dir, dirlen, "%s/guardian-bench.XXXXXX", tmp != NULL && tmp[0] == '/' ? tmp : "/tmp") >=
        dirlen) {
        dir[0] = '\0';
        FAIL("TMPDIR is too long");
    }
    if (mkdtemp(dir) == NULL) {
        int e = errno;
        fprintf(stderr, "guardian-bench: mkdtemp %s: %s\n", dir, strerror(e));
        dir[0] = '\0'; /* nothing to remove */
        goto out;
    }
    if ((size_t)snprintf(tokens, sizeof(tokens), "%s/tokens", dir) >= sizeof(tokens) ||
        (size_t)snprintf(path, sizeof(path), "%s/softhsm2.conf", dir) >= sizeof(path))
        FAIL("temp dir path %s is too long", dir);
    if (mkdir(tokens, 0700) != 0)
        FAIL("mkdir %s: %s", tokens, strerror(errno));
    f = fopen(path, "we");
    if (f == NULL)
        FAIL("cannot write %s: %s", path, strerror(errno));
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens);
    if (fclose(f) != 0) {
        f = NULL;
        FAIL("cannot write %s", path);
    }
    f = NULL;
    if (setenv("SOFTHSM2_CONF", path, 1) != 0)
        FAIL("setenv: %s", strerror(errno));
    if (!run_quiet(argv))
        FAIL("softhsm2-util --init-token failed");
    rv = CKR_OK;
out:
    if (f != NULL)
        fclose(f);
    return rv;
}

/* ---- the measured calls ---------------------------------------------------- */

/* What one thread needs; read-only during rounds except ops/elapsed/rv/fn. */
struct shared_keys {
    CK_OBJECT_HANDLE priv, pub;
    char label[sizeof(BENCH_KEY_LABEL)];
    /* cert only: the production CA key and the device key pool */
    CK_OBJECT_HANDLE ca;
    unsigned run_tag; /* makes device IDs unique across runs on one store */
    size_t n_devices;
    CK_BYTE (*device_spki)[DEVICE_SPKI_MAX];
    CK_ULONG *device_spki_len;
};

struct worker;
typedef CK_RV (*op_fn)(CK_FUNCTION_LIST *l, struct worker *w, const char **fn);

struct runner {
    /* Held by the main thread while it starts the workers; a worker passes it
     * before touching the barriers, and leaves if `quit` is already set (a
     * pthread_create failed, the barriers would never fill). */
    pthread_mutex_t gate;
    pthread_barrier_t start, done;
    atomic_bool stop;
    /* Written by the main thread before `start`, read by workers after it. */
    bool quit;
    op_fn op;
    CK_FUNCTION_LIST *list;
};

struct worker {
    pthread_t thread;
    struct runner *runner;
    const struct shared_keys *keys;
    CK_SESSION_HANDLE session;
    int index;              /* thread number, part of the device IDs */
    CK_BYTE hash[32];
    unsigned long devices;  /* cert: certificates this worker asked for */
    CK_BYTE *cert_value;    /* cert: CERT_VALUE_MAX bytes */
    /* Results of the last round. */
    unsigned long ops;
    double elapsed;
    CK_RV rv;
    const char *fn;
};

/* C_SignInit + C_Sign, CKM_ECDSA over the worker's 32-byte hash, with `key`. */
static CK_RV sign_hash(CK_FUNCTION_LIST *l, struct worker *w, CK_OBJECT_HANDLE key, const char **fn)
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_BYTE sig[132];
    CK_ULONG sig_len = sizeof(sig);
    CK_RV rv;

    rv = l->C_SignInit(w->session, &mech, key);
    if (rv != CKR_OK) {
        *fn = "C_SignInit";
        return rv;
    }
    rv = l->C_Sign(w->session, w->hash, sizeof(w->hash), sig, &sig_len);
    if (rv != CKR_OK)
        *fn = "C_Sign";
    return rv;
}

static CK_RV op_sign(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    return sign_hash(l, w, w->keys->priv, fn);
}

static CK_RV op_getattr(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    CK_BYTE point[128];
    CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
    CK_RV rv = l->C_GetAttributeValue(w->session, w->keys->pub, &a, 1);

    if (rv != CKR_OK)
        *fn = "C_GetAttributeValue";
    return rv;
}

static CK_RV op_find(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    CK_ATTRIBUTE tmpl = {CKA_LABEL, (void *)w->keys->label, sizeof(w->keys->label) - 1};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    CK_RV rv;

    rv = l->C_FindObjectsInit(w->session, &tmpl, 1);
    if (rv != CKR_OK) {
        *fn = "C_FindObjectsInit";
        return rv;
    }
    rv = l->C_FindObjects(w->session, found, 4, &n);
    if (rv != CKR_OK) {
        *fn = "C_FindObjects";
        l->C_FindObjectsFinal(w->session);
        return rv;
    }
    rv = l->C_FindObjectsFinal(w->session);
    if (rv != CKR_OK) {
        *fn = "C_FindObjectsFinal";
        return rv;
    }
    if (n < 2) { /* the key pair: both halves carry the label */
        *fn = "C_FindObjects (key pair not found)";
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

static CK_RV op_random(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    CK_BYTE buf[32];
    CK_RV rv = l->C_GenerateRandom(w->session, buf, sizeof(buf));

    if (rv != CKR_OK)
        *fn = "C_GenerateRandom";
    return rv;
}

/* Diagnostic: about the cheapest call SoftHSM has (a handle lookup under its
 * lock), so the ratio shows the per-call forwarding cost nearly undiluted. */
static CK_RV op_sessioninfo(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    CK_SESSION_INFO info;
    CK_RV rv = l->C_GetSessionInfo(w->session, &info);

    if (rv != CKR_OK)
        *fn = "C_GetSessionInfo";
    return rv;
}

/* cert, direct arm: the CA key's raw ECDSA signature of a hash, through the
 * backend's own list (what any certificate costs at least). */
static CK_RV op_ca_sign(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    return sign_hash(l, w, w->keys->ca, fn);
}

/* cert, module arm: one device certificate, as a programming system gets it. */
static CK_RV op_cert(CK_FUNCTION_LIST *l, struct worker *w, const char **fn)
{
    const struct shared_keys *k = w->keys;
    size_t d = w->devices % k->n_devices;
    char id[64];
    int id_len = snprintf(id, sizeof(id), "B%x-%d-%lu", k->run_tag, w->index, w->devices);
    CK_GUARDIAN_DEVICE_CERT_PARAMS params = {
        CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT, (CK_BYTE_PTR)id, (CK_ULONG)id_len,
        k->device_spki[d], k->device_spki_len[d],
    };
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &params, sizeof(params)};
    CK_OBJECT_HANDLE cert = CK_INVALID_HANDLE;
    CK_ATTRIBUTE v = {CKA_VALUE, w->cert_value, CERT_VALUE_MAX};
    CK_RV rv;

    w->devices++;
    rv = l->C_DeriveKey(w->session, &mech, k->ca, NULL, 0, &cert);
    if (rv != CKR_OK) {
        *fn = "C_DeriveKey (CKM_GUARDIAN_DERIVE_DEVICE_CERT)";
        return rv;
    }
    rv = l->C_GetAttributeValue(w->session, cert, &v, 1);
    if (rv != CKR_OK) {
        *fn = "C_GetAttributeValue (certificate CKA_VALUE)";
        l->C_DestroyObject(w->session, cert);
        return rv;
    }
    rv = l->C_DestroyObject(w->session, cert);
    if (rv != CKR_OK)
        *fn = "C_DestroyObject (certificate)";
    return rv;
}

static const struct call_desc {
    const char *name;
    op_fn op;        /* both arms, or the module arm when op_direct is set */
    op_fn op_direct; /* NULL: the same op through the backend's list */
    double target;   /* the ratio the verdict compares against */
} calls[N_CALLS] = {
    {"C_SignInit+C_Sign (ECDSA P-256)", op_sign, NULL, 0.99},
    {"C_GetAttributeValue (EC_POINT)", op_getattr, NULL, 0.99},
    {"C_FindObjects Init/Find/Final", op_find, NULL, 0.99},
    {"C_GenerateRandom (32 B)", op_random, NULL, 0.99},
    {"C_GetSessionInfo (diagnostic)", op_sessioninfo, NULL, 0.99},
    {"certificate / CA C_Sign", op_cert, op_ca_sign, 0.5},
};
/* ---- cert: the production CA key and the device keys ----------------------- */

/* The first private key labelled "...:production-ca" with a 16-byte CKA_ID
 * (a package ID): the imported production CA key (tools/ctl_provision.c finds
 * it the same way). */
static CK_RV find_ca_key(CK_FUNCTION_LIST *l, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *out)
{
    static const char suffix[] = ":production-ca";
    CK_OBJECT_CLASS klass = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl = {CKA_CLASS, &klass, sizeof(klass)};
    CK_OBJECT_HANDLE h[64];
    CK_ULONG n = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    *out = CK_INVALID_HANDLE;
    P11_CHECK(l->C_FindObjectsInit(s, &tmpl, 1), "C_FindObjectsInit (CA key)");
    rv = l->C_FindObjects(s, h, 64, &n);
    l->C_FindObjectsFinal(s);
    if (rv != CKR_OK) {
        report_ckr("C_FindObjects (CA key)", rv);
        goto out;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        char label[256];
        CK_BYTE id[32];
        CK_ATTRIBUTE a[] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_ID, id, sizeof(id)}};
        if (l->C_GetAttributeValue(s, h[i], a, 2) != CKR_OK || a[1].ulValueLen != 16)
            continue;
        label[a[0].ulValueLen] = '\0';
        if (a[0].ulValueLen > sizeof(suffix) - 1 &&
            strcmp(label + a[0].ulValueLen - (sizeof(suffix) - 1), suffix) == 0) {
            *out = h[i];
            fprintf(stderr, "guardian-bench: certificate issuer: %s\n", label);
            rv = CKR_OK;
            goto out;
        }
    }
    FAIL("--calls cert: the token holds no imported production CA key (label \"...%s\"); "
         "tests/bench/cert-bench.sh makes such a token",
         suffix);
out:
    return rv;
}

/* DEVICE_POOL P-256 SubjectPublicKeyInfos, made with OpenSSL before timing. */
static CK_RV make_device_pool(struct shared_keys *k)
{
    CK_RV rv = CKR_GENERAL_ERROR;

    k->device_spki = calloc(DEVICE_POOL, sizeof(*k->device_spki));
    k->device_spki_len = calloc(DEVICE_POOL, sizeof(*k->device_spki_len));
    if (k->device_spki == NULL || k->device_spki_len == NULL)
        FAIL("out of memory");
    for (size_t i = 0; i < DEVICE_POOL; i++) {
        EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        unsigned char *p = k->device_spki[i];
        int len = pk != NULL && i2d_PUBKEY(pk, NULL) <= DEVICE_SPKI_MAX ? i2d_PUBKEY(pk, &p) : -1;
        EVP_PKEY_free(pk);
        if (len <= 0)
            FAIL("cannot make a P-256 device key with OpenSSL");
        k->device_spki_len[i] = (CK_ULONG)len;
    }
    k->n_devices = DEVICE_POOL;
    k->run_tag = (unsigned)getpid() ^ (unsigned)time(NULL) << 12;
    rv = CKR_OK;
out:
    return rv;
}

/* One certificate through the module, before timing: it parses as X.509 and
 * the derive path works (the first call also proves the CA key to the module). */
/* The direct arm signs with the CA key through the backend's own list (the
 * module refuses a standard C_Sign with it: module/policy.c). */
static CK_RV cert_sanity(CK_FUNCTION_LIST *l, CK_FUNCTION_LIST *direct, CK_SESSION_HANDLE s,
                         const struct shared_keys *k)
{
    struct worker w;
    const unsigned char *p;
    X509 *x;
    const char *fn = "";
    CK_BYTE value[CERT_VALUE_MAX];
    CK_OBJECT_HANDLE cert = CK_INVALID_HANDLE;
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    char id[32];
    int id_len = snprintf(id, sizeof(id), "B%x-sanity", k->run_tag);
    CK_GUARDIAN_DEVICE_CERT_PARAMS params = {
        CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT, (CK_BYTE_PTR)id, (CK_ULONG)id_len,
        k->device_spki[0], k->device_spki_len[0],
    };
    CK_MECHANISM mech = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &params, sizeof(params)};
    CK_RV rv = CKR_GENERAL_ERROR;

    memset(&w, 0, sizeof(w));
    w.keys = k;
    w.session = s;
    P11_CHECK(op_ca_sign(direct, &w, &fn), "C_Sign with the CA key through the backend (sanity)");
    P11_CHECK(l->C_DeriveKey(s, &mech, k->ca, NULL, 0, &cert), "C_DeriveKey (sanity)");
    rv = l->C_GetAttributeValue(s, cert, &v, 1);
    l->C_DestroyObject(s, cert);
    if (rv != CKR_OK) {
        report_ckr("C_GetAttributeValue (certificate, sanity)", rv);
        goto out;
    }
    p = value;
    x = d2i_X509(NULL, &p, (long)v.ulValueLen);
    if (x == NULL || p != value + v.ulValueLen) {
        X509_free(x);
        FAIL("the derived certificate does not parse as X.509");
    }
    X509_free(x);
    fprintf(stderr, "guardian-bench: sanity certificate: %lu bytes DER\n", (unsigned long)v.ulValueLen);
    rv = CKR_OK;
out:
    return rv;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct runner *r = w->runner;
    bool quit;

    pthread_mutex_lock(&r->gate);
    quit = r->quit;
    pthread_mutex_unlock(&r->gate);
    if (quit)
        return NULL;
    for (;;) {
        unsigned long n = 0;
        const char *fn = NULL;
        CK_RV rv = CKR_OK;
        op_fn op;
        CK_FUNCTION_LIST *l;
        double t0;

        pthread_barrier_wait(&r->start);
        if (r->quit)
            break;
        op = r->op;
        l = r->list;
        /* The loop is the same for both arms: only `l` differs. */
        t0 = now_s();
        while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
            rv = op(l, w, &fn);
            if (rv != CKR_OK)
                break;
            n++;
        }
        w->elapsed = now_s() - t0;
        w->ops = n;
        w->rv = rv;
        w->fn = fn;
        pthread_barrier_wait(&r->done);
    }
    return NULL;
}

enum arm { ARM_DIRECT = 0, ARM_MODULE = 1 };

struct result {
    const char *call;
    int threads;
    size_t blocks;
    double rate[2];        /* pooled ops/s per arm */
    double pooled_ratio;   /* rate[MODULE] / rate[DIRECT] */
    double ratio_min, ratio_p25, ratio_med, ratio_p75, ratio_max; /* over ABBA blocks */
    double ci_lo, ci_hi;   /* 95 % confidence interval of the median ratio */
    double round_cv[2];    /* coefficient of variation of per-round rates, per arm */
    double target;         /* of the verdict */
};

/* One round of `arm` on all workers; returns the aggregate rate (ops/s). */
static CK_RV run_round(struct runner *r, struct worker *ws, int nw, op_fn op, CK_FUNCTION_LIST *l, double round_s,
                       double *rate, double ops_sum[][2], enum arm arm)
{
    CK_RV rv = CKR_OK;

    r->op = op;
    r->list = l;
    atomic_store(&r->stop, false);
    pthread_barrier_wait(&r->start);
    sleep_s(round_s);
    atomic_store(&r->stop, true);
    pthread_barrier_wait(&r->done);

    *rate = 0.0;
    for (int i = 0; i < nw; i++) {
        if (ws[i].rv != CKR_OK && rv == CKR_OK) {
            char what[128];
            snprintf(what, sizeof(what), "%s (%s, thread %d)", ws[i].fn ? ws[i].fn : "call",
                     arm == ARM_DIRECT ? "direct" : "module", i);
            report_ckr(what, ws[i].rv);
            rv = ws[i].rv;
        }
        if (ws[i].elapsed > 0.0)
            *rate += (double)ws[i].ops / ws[i].elapsed;
        if (ops_sum != NULL) {
            ops_sum[i][0] += (double)ws[i].ops;
            ops_sum[i][1] += ws[i].elapsed;
        }
    }
    return rv;
}

static CK_RV bench_call(struct runner *r, struct worker *ws, int nw, const struct call_desc *call,
                        CK_FUNCTION_LIST *lists[2], const struct options *o, struct result *res)
{
    size_t blocks = (size_t)ceil(o->seconds / (2.0 * o->round_s));
    double *round_rate[2] = {NULL, NULL}, *ratios = NULL;
    double (*ops_sum[2])[2] = {NULL, NULL}; /* per arm, per thread: {ops, seconds} */
    size_t nr[2] = {0, 0};
    op_fn ops[2] = {call->op_direct != NULL ? call->op_direct : call->op, call->op};
    double warm;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (blocks < 2)
        blocks = 2;
    for (int a = 0; a < 2; a++) {
        round_rate[a] = calloc(2 * blocks, sizeof(double));
        ops_sum[a] = calloc((size_t)nw, sizeof(*ops_sum[a]));
    }
    ratios = calloc(blocks, sizeof(double));
    if (round_rate[0] == NULL || round_rate[1] == NULL || ops_sum[0] == NULL || ops_sum[1] == NULL ||
        ratios == NULL) {
        rv = CKR_HOST_MEMORY;
        report_ckr("allocation", rv);
        goto out;
    }

    /* Warm-up, not counted: caches, branch predictors, SoftHSM's lazy state. */
    for (int a = 0; a < 2; a++) {
        rv = run_round(r, ws, nw, ops[a], lists[a], o->round_s > 0.2 ? o->round_s : 0.2, &warm, NULL, (enum arm)a);
        if (rv != CKR_OK)
            goto out;
    }

    for (size_t b = 0; b < blocks; b++) {
        /* A-B-B-A, then B-A-A-B: the first arm of a block alternates too. */
        static const enum arm order[2][4] = {
            {ARM_DIRECT, ARM_MODULE, ARM_MODULE, ARM_DIRECT},
            {ARM_MODULE, ARM_DIRECT, ARM_DIRECT, ARM_MODULE},
        };
        double block_rate[2] = {0.0, 0.0};

        for (int k = 0; k < 4; k++) {
            enum arm a = order[b % 2][k];
            double rate = 0.0;
            rv = run_round(r, ws, nw, ops[a], lists[a], o->round_s, &rate, ops_sum[a], a);
            if (rv != CKR_OK)
                goto out;
            round_rate[a][nr[a]++] = rate;
            block_rate[a] += rate / 2.0;
        }
        ratios[b] = block_rate[ARM_MODULE] / block_rate[ARM_DIRECT];
        if (o->verbose)
            fprintf(stderr, "  block %2zu (%s): direct %10.0f/s  module %10.0f/s  ratio %.4f\n", b,
                    b % 2 ? "BAAB" : "ABBA", block_rate[ARM_DIRECT], block_rate[ARM_MODULE], ratios[b]);
    }

    memset(res, 0, sizeof(*res));
    res->call = call->name;
    res->target = call->target;
    res->threads = nw;
    res->blocks = blocks;
    for (int a = 0; a < 2; a++) {
        res->rate[a] = 0.0;
        for (int i = 0; i < nw; i++)
            res->rate[a] += ops_sum[a][i][1] > 0.0 ? ops_sum[a][i][0] / ops_sum[a][i][1] : 0.0;
        res->round_cv[a] = cv_of(round_rate[a], nr[a]);
    }
    res->pooled_ratio = res->rate[ARM_MODULE] / res->rate[ARM_DIRECT];
    qsort(ratios, blocks, sizeof(double), cmp_double);
    res->ratio_min = ratios[0];
    res->ratio_p25 = percentile(ratios, blocks, 0.25);
    res->ratio_med = percentile(ratios, blocks, 0.5);
    res->ratio_p75 = percentile(ratios, blocks, 0.75);
    res->ratio_max = ratios[blocks - 1];
    median_ci95(ratios, blocks, &res->ci_lo, &res->ci_hi);
    rv = CKR_OK;
out:
    for (int a = 0; a < 2; a++) {
        free(round_rate[a]);
        free(ops_sum[a]);
    }
    free(ratios);
    return rv;
}

/* The selected calls at one thread count, appended to out_results[*n_out...].
 * `sessions` has at least `nw` entries. */
static CK_RV bench_threads(int nw, const CK_SESSION_HANDLE *sessions, const struct shared_keys *keys,
                           CK_FUNCTION_LIST *lists[2], const struct options *o, struct result *out_results,
                           size_t *n_out)
{
    struct runner r;
    struct worker ws[MAX_THREADS];
    int started = 0;
    bool barriers = false, gate_held = false;
    CK_RV rv = CKR_GENERAL_ERROR;

    memset(&r, 0, sizeof(r));
    memset(ws, 0, sizeof(ws));
    atomic_init(&r.stop, false);
    pthread_mutex_init(&r.gate, NULL);
    if (pthread_barrier_init(&r.start, NULL, (unsigned)nw + 1) != 0)
        FAIL("pthread_barrier_init failed");
    if (pthread_barrier_init(&r.done, NULL, (unsigned)nw + 1) != 0) {
        pthread_barrier_destroy(&r.start);
        FAIL("pthread_barrier_init failed");
    }
    barriers = true;
    pthread_mutex_lock(&r.gate);
    gate_held = true;
    for (int i = 0; i < nw; i++) {
        ws[i].runner = &r;
        ws[i].keys = keys;
        ws[i].session = sessions[i];
        ws[i].index = i;
        if ((o->calls_mask & CALL_CERT) && (ws[i].cert_value = malloc(CERT_VALUE_MAX)) == NULL) {
            r.quit = true;
            FAIL("out of memory");
        }
        for (size_t j = 0; j < sizeof(ws[i].hash); j++)
            ws[i].hash[j] = (CK_BYTE)(j * 7 + (size_t)i);
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            r.quit = true; /* the started ones leave at the gate */
            FAIL("pthread_create failed");
        }
        started++;
    }
    pthread_mutex_unlock(&r.gate);
    gate_held = false;

    for (size_t c = 0; c < N_CALLS; c++) {
        if (!(o->calls_mask & (1U << c)))
            continue;
        fprintf(stderr, "guardian-bench: %d thread%s: %s ...\n", nw, nw == 1 ? "" : "s", calls[c].name);
        rv = bench_call(&r, ws, nw, &calls[c], lists, o, &out_results[(*n_out)++]);
        if (rv != CKR_OK)
            goto out;
    }
    rv = CKR_OK;
out:
    if (gate_held)
        pthread_mutex_unlock(&r.gate);
    if (started == nw) {
        /* All workers wait at the start barrier: let them through to see `quit`. */
        r.quit = true;
        pthread_barrier_wait(&r.start);
    }
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].thread, NULL);
    for (int i = 0; i < nw; i++)
        free(ws[i].cert_value);
    if (barriers) {
        pthread_barrier_destroy(&r.start);
        pthread_barrier_destroy(&r.done);
    }
    pthread_mutex_destroy(&r.gate);
    return rv;
}

/* ---- memory: added RSS, measured in fresh child processes ---------------- */

/* The hidden child: load one library, do the minimal real work, print VmRSS. */
static int rss_child(const struct options *o)
{
    bool via_module = strcmp(o->rss_child, "module") == 0;
    struct lib lib = {NULL, NULL};
    struct rss rs;
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_BYTE hash[32] = {1, 2, 3}, sig[72];
    CK_ULONG sig_len = sizeof(sig);
    const char *pin = o->pin; /* from CHILD_PIN_ENV, see spawn_rss_child */
    bool initialized = false;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (!via_module && strcmp(o->rss_child, "direct") != 0)
        FAIL("--rss-child wants direct or module");
    if (o->token_label == NULL || pin == NULL)
        FAIL("--rss-child needs --token-label and %s in the environment", CHILD_PIN_ENV);
    rv = lib_open(via_module ? o->module_path : o->backend_path, &lib);
    if (rv != CKR_OK)
        goto out;
    P11_CHECK(initialize(lib.list), "C_Initialize");
    initialized = true;
    rv = find_slot(lib.list, o->token_label, &slot);
    if (rv != CKR_OK)
        goto out;
    P11_CHECK(lib.list->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    P11_CHECK(login(lib.list, s, pin), "C_Login");
    rv = find_key(lib.list, s, CKO_PRIVATE_KEY, &priv);
    if (rv != CKR_OK)
        goto out;
    if (priv == CK_INVALID_HANDLE)
        FAIL("key %s not found", BENCH_KEY_LABEL);
    P11_CHECK(lib.list->C_SignInit(s, &mech, priv), "C_SignInit");
    P11_CHECK(lib.list->C_Sign(s, hash, sizeof(hash), sig, &sig_len), "C_Sign");
    if (!read_rss(&rs))
        FAIL("cannot read /proc/self/status");
    printf("%ld %ld %ld\n", rs.vm_rss, rs.rss_anon, rs.rss_file);
    fflush(stdout);
out:
    if (initialized)
        lib.list->C_Finalize(NULL);
    lib_close(&lib);
    return rv == CKR_OK ? 0 : 1;
}

/* Our environment plus CHILD_PIN_ENV=pin, in a fresh array (free it and [0]). */
static char **child_environment(const char *pin)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ[n] != NULL)
        n++;
    env = calloc(n + 2, sizeof(*env));
    if (env == NULL)
        return NULL;
    if (asprintf(&env[k], "%s=%s", CHILD_PIN_ENV, pin) < 0) {
        free(env);
        return NULL;
    }
    k++;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], CHILD_PIN_ENV "=", sizeof(CHILD_PIN_ENV)) != 0)
            env[k++] = environ[i];
    env[k] = NULL;
    return env;
}

static CK_RV spawn_rss_child(const char *self, const char *kind, const struct options *o, const char *label,
                             const char *pin, struct rss *out)
{
    char *argv[] = {(char *)self, "--rss-child", (char *)kind, "--module", (char *)o->module_path,
                    "--backend", (char *)o->backend_path, "--token-label", (char *)label, NULL};
    char **envp = NULL;
    posix_spawn_file_actions_t fa;
    char buf[256];
    size_t len = 0;
    ssize_t got;
    int fds[2] = {-1, -1}, status = 0, err;
    pid_t pid = -1;
    CK_RV rv = CKR_GENERAL_ERROR;

    envp = child_environment(pin);
    if (envp == NULL)
        FAIL("out of memory");
    if (pipe2(fds, O_CLOEXEC) != 0)
        FAIL("pipe: %s", strerror(errno));
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    err = posix_spawn(&pid, self, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    fds[1] = -1;
    if (err != 0) {
        pid = -1;
        FAIL("cannot re-execute %s: %s", self, strerror(err));
    }
    while (len < sizeof(buf) - 1 && (got = read(fds[0], buf + len, sizeof(buf) - 1 - len)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)got;
    }
    buf[len] = '\0';
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("memory child (%s) failed", kind);
    if (sscanf(buf, "%ld %ld %ld", &out->vm_rss, &out->rss_anon, &out->rss_file) != 3)
        FAIL("memory child (%s) printed no result", kind);
    rv = CKR_OK;
out:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    if (envp != NULL) {
        free(envp[0]);
        free(envp);
    }
    return rv;
}

struct rss_result {
    struct rss direct, module; /* medians */
    long min_delta, max_delta; /* VmRSS, over the pairs */
    int pairs;
};

static long median_long(long *v, int n)
{
    /* n is small: insertion sort. */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            long t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static CK_RV measure_added_rss(const struct options *o, const char *label, const char *pin, struct rss_result *res)
{
    char self[PATH_MAX];
    long d[3][RSS_CHILD_PAIRS], m[3][RSS_CHILD_PAIRS];
    ssize_t n;
    CK_RV rv = CKR_GENERAL_ERROR;

    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        FAIL("readlink /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    memset(res, 0, sizeof(*res));
    res->pairs = RSS_CHILD_PAIRS;
    res->min_delta = LONG_MAX;
    res->max_delta = LONG_MIN;
    for (int p = 0; p < RSS_CHILD_PAIRS; p++) {
        struct rss a, b;
        /* Alternate which one runs first: page cache warm-up favours the second. */
        if (p % 2 == 0) {
            if ((rv = spawn_rss_child(self, "direct", o, label, pin, &a)) != CKR_OK ||
                (rv = spawn_rss_child(self, "module", o, label, pin, &b)) != CKR_OK)
                goto out;
        } else {
            if ((rv = spawn_rss_child(self, "module", o, label, pin, &b)) != CKR_OK ||
                (rv = spawn_rss_child(self, "direct", o, label, pin, &a)) != CKR_OK)
                goto out;
        }
        d[0][p] = a.vm_rss, d[1][p] = a.rss_anon, d[2][p] = a.rss_file;
        m[0][p] = b.vm_rss, m[1][p] = b.rss_anon, m[2][p] = b.rss_file;
        if (b.vm_rss - a.vm_rss < res->min_delta)
            res->min_delta = b.vm_rss - a.vm_rss;
        if (b.vm_rss - a.vm_rss > res->max_delta)
            res->max_delta = b.vm_rss - a.vm_rss;
    }
    res->direct.vm_rss = median_long(d[0], RSS_CHILD_PAIRS);
    res->direct.rss_anon = median_long(d[1], RSS_CHILD_PAIRS);
    res->direct.rss_file = median_long(d[2], RSS_CHILD_PAIRS);
    res->module.vm_rss = median_long(m[0], RSS_CHILD_PAIRS);
    res->module.rss_anon = median_long(m[1], RSS_CHILD_PAIRS);
    res->module.rss_file = median_long(m[2], RSS_CHILD_PAIRS);
    rv = CKR_OK;
out:
    return rv;
}

/* ---- memory: growth over many calls ----------------------------------------- */

struct growth {
    long before, after; /* VmRSS KiB, after warm-up and after the N calls */
    double seconds;
};

static CK_RV measure_growth(CK_FUNCTION_LIST *l, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, unsigned long calls_n,
                            struct growth *g)
{
    CK_BYTE buf[16], point[128];
    struct rss r0, r1;
    double t0 = 0.0;
    CK_RV rv = CKR_GENERAL_ERROR;

    for (int phase = 0; phase < 2; phase++) {
        unsigned long n = phase == 0 ? GROWTH_WARMUP_CALLS : calls_n;
        if (phase == 1) {
            if (!read_rss(&r0))
                FAIL("cannot read /proc/self/status");
            t0 = now_s();
        }
        for (unsigned long i = 0; i < n; i++) {
            if (i % 2 == 0) {
                P11_CHECK(l->C_GenerateRandom(s, buf, sizeof(buf)), "C_GenerateRandom (growth)");
            } else {
                CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
                P11_CHECK(l->C_GetAttributeValue(s, pub, &a, 1), "C_GetAttributeValue (growth)");
            }
        }
    }
    g->seconds = now_s() - t0;
    if (!read_rss(&r1))
        FAIL("cannot read /proc/self/status");
    g->before = r0.vm_rss;
    g->after = r1.vm_rss;
    rv = CKR_OK;
out:
    return rv;
}

/* ---- output ---------------------------------------------------------------- */

static void cpu_model(char *out, size_t len)
{
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "re");

    snprintf(out, len, "unknown");
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            colon++;
            while (*colon == ' ' || *colon == '\t')
                colon++;
            colon[strcspn(colon, "\n")] = '\0';
            snprintf(out, len, "%s", colon);
            break;
        }
    }
    fclose(f);
}

static void print_machine(FILE *f, const struct options *o, int argc, char **argv)
{
    char model[256];
    struct utsname u;

    cpu_model(model, sizeof(model));
    if (uname(&u) != 0)
        memset(&u, 0, sizeof(u));
    fprintf(f, "machine: %ld online CPUs, %s, %s %s %s\n", sysconf(_SC_NPROCESSORS_ONLN), model, u.sysname,
            u.release, u.machine);
    fprintf(f, "command:");
    for (int i = 0; i < argc; i++)
        fprintf(f, " %s", i > 0 && strcmp(argv[i - 1], "--pin") == 0 ? "****" : argv[i]);
    fprintf(f, "\nmodule:  %s\nbackend: %s\n", o->module_path, o->backend_path);
    fprintf(f, "method:  %.0f ms rounds, ABBA/BAAB blocks, %.1f s measured per arm per call; ratio = module/direct\n",
            o->round_s * 1000.0, o->seconds);
}

/* A verdict against the call's target ratio (0.99; cert 0.5), honest about the noise. */
static const char *verdict(const struct result *r)
{
    if (r->ratio_med >= r->target)
        return "ok";
    if (r->ci_hi >= r->target)
        return "noise?"; /* below, but the target is inside the 95 % interval */
    return "SLOWER";
}

static void print_table(FILE *f, const struct result *res, size_t n)
{
    fprintf(f, "\n%-3s %-32s %11s %11s %7s %-17s %7s %-17s %5s  %s\n", "thr", "call", "direct/s", "module/s",
            "ratio", "95% CI", "pooled", "IQR of blocks", "CV%", "verdict");
    for (size_t i = 0; i < n; i++) {
        const struct result *r = &res[i];
        double cv = r->round_cv[ARM_DIRECT] > r->round_cv[ARM_MODULE] ? r->round_cv[ARM_DIRECT]
                                                                      : r->round_cv[ARM_MODULE];
        fprintf(f, "%-3d %-32s %11.0f %11.0f %7.4f [%6.4f, %6.4f] %7.4f [%6.4f, %6.4f] %5.1f  %s\n", r->threads,
                r->call, r->rate[ARM_DIRECT], r->rate[ARM_MODULE], r->ratio_med, r->ci_lo, r->ci_hi,
                r->pooled_ratio, r->ratio_p25, r->ratio_p75, 100.0 * cv, verdict(r));
    }
    fprintf(f, "direct/s, module/s: all ops / all time per arm (per thread, summed over threads)\n"
               "ratio: median over ABBA/BAAB blocks of module rate / direct rate, with its 95%% CI\n"
               "pooled: module/s / direct/s; IQR: spread of the block ratios; CV%%: per-round rate\n"
               "variation (the larger arm's); verdict vs the target (0.99; certificate 0.5): ok,\n"
               "noise? (target inside the CI), SLOWER\n");
    for (size_t i = 0; i < n; i++)
        if (res[i].call == calls[5].name) {
            fprintf(f, "certificate: direct/s = C_Sign/s with the CA key through SoftHSM, module/s = certificates/s"
                       " (C_DeriveKey + C_GetAttributeValue + C_DestroyObject)\n");
            break;
        }
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (res[i].call == calls[5].name && res[j].call == calls[5].name && res[i].threads == 1)
                fprintf(f, "certificates/s through the module: %d thread %.0f, %d threads %.0f (x%.3f; not "
                           "interleaved)\n",
                        res[i].threads, res[i].rate[ARM_MODULE], res[j].threads, res[j].rate[ARM_MODULE],
                        res[j].rate[ARM_MODULE] / res[i].rate[ARM_MODULE]);
}

/* One CSV table: `unit` says whether direct/module are ops/s or KiB; memory rows
 * leave the ratio columns empty and fill `delta` (module - direct). */
static void print_csv(FILE *f, const struct result *res, size_t n, const struct rss_result *rr,
                      const struct growth *gm, const struct growth *gd, unsigned long calls_n)
{
    const struct {
        const char *name;
        long direct, module;
    } rss_rows[] = {
        {"VmRSS after init+login+sign", rr->direct.vm_rss, rr->module.vm_rss},
        {"RssAnon after init+login+sign", rr->direct.rss_anon, rr->module.rss_anon},
        {"RssFile after init+login+sign", rr->direct.rss_file, rr->module.rss_file},
    };

    fprintf(f, "kind,threads,item,unit,direct,module,delta,ratio_median,ratio_ci95_lo,ratio_ci95_hi,ratio_pooled,"
               "ratio_min,ratio_p25,ratio_p75,ratio_max,blocks,direct_round_cv,module_round_cv\n");
    for (size_t i = 0; i < n; i++) {
        const struct result *r = &res[i];
        fprintf(f, "throughput,%d,\"%s\",ops/s,%.1f,%.1f,,%.5f,%.5f,%.5f,%.5f,%.5f,%.5f,%.5f,%.5f,%zu,%.5f,%.5f\n",
                r->threads, r->call, r->rate[ARM_DIRECT], r->rate[ARM_MODULE], r->ratio_med, r->ci_lo, r->ci_hi,
                r->pooled_ratio, r->ratio_min, r->ratio_p25, r->ratio_p75, r->ratio_max, r->blocks,
                r->round_cv[ARM_DIRECT], r->round_cv[ARM_MODULE]);
    }
    for (size_t i = 0; i < sizeof(rss_rows) / sizeof(rss_rows[0]); i++)
        fprintf(f, "rss_added,1,\"%s\",KiB,%ld,%ld,%ld,,,,,,,,,%d,,\n", rss_rows[i].name, rss_rows[i].direct,
                rss_rows[i].module, rss_rows[i].module - rss_rows[i].direct, rr->pairs);
    if (calls_n > 0)
        fprintf(f, "rss_growth,1,\"VmRSS growth over %lu calls\",KiB,%ld,%ld,%ld,,,,,,,,,,,\n", calls_n,
                gd->after - gd->before, gm->after - gm->before, (gm->after - gm->before) - (gd->after - gd->before));
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    struct options o;
    struct lib backend = {0}, module = {0};
    char tmpdir[PATH_MAX] = "";
    const char *label, *pin;
    CK_FUNCTION_LIST *lists[2];
    CK_SESSION_HANDLE sessions[MAX_THREADS];
    int n_sessions = 0, max_threads = 1;
    struct shared_keys keys;
    bool initialized = false, generated_key = false;
    struct result *results = NULL;
    size_t n_results = 0;
    struct rss_result rr;
    struct growth gm = {0, 0, 0.0}, gd = {0, 0, 0.0};
    CK_SLOT_ID slot = 0;
    CK_SESSION_INFO si;
    FILE *table;
    double t_start = now_s();
    CK_RV rv = CKR_GENERAL_ERROR;
    int usage_rc = parse_options(argc, argv, &o);

    if (usage_rc != 0)
        return usage_rc;
    if (o.rss_child != NULL)
        return rss_child(&o);
    table = o.csv ? stderr : stdout;
    memset(&keys, 0, sizeof(keys));
    memset(&rr, 0, sizeof(rr));
    for (int i = 0; i < o.n_threads; i++)
        if (o.threads[i] > max_threads)
            max_threads = o.threads[i];

    /* The module must load the very backend we load, or nothing is shared. */
    {
        const char *env = getenv("GUARDIAN_BACKEND");
        if (env != NULL && strcmp(env, o.backend_path) != 0)
            fprintf(stderr, "guardian-bench: note: overriding GUARDIAN_BACKEND=%s with --backend\n", env);
        if (setenv("GUARDIAN_BACKEND", o.backend_path, 1) != 0)
            FAIL("setenv: %s", strerror(errno));
        env = getenv("GUARDIAN_DEBUG");
        if (env != NULL && env[0] != '\0')
            fprintf(stderr, "guardian-bench: warning: GUARDIAN_DEBUG=%s is set; tracing slows the module arm\n",
                    env);
    }

    if (o.token_label == NULL) {
        rv = make_token(tmpdir, sizeof(tmpdir));
        if (rv != CKR_OK)
            goto out;
        label = BENCH_TOKEN_LABEL;
        pin = BENCH_TOKEN_PIN;
    } else {
        label = o.token_label;
        pin = o.pin;
    }

    rv = lib_open(o.backend_path, &backend);
    if (rv != CKR_OK)
        goto out;
    rv = lib_open(o.module_path, &module);
    if (rv != CKR_OK)
        goto out;
    if (module.list == backend.list)
        FAIL("--module and --backend are the same library");
    lists[ARM_DIRECT] = backend.list;
    lists[ARM_MODULE] = module.list;

    /* Initialise once, through the module: it initialises the shared backend. */
    P11_CHECK(initialize(module.list), "C_Initialize (module)");
    initialized = true;
    rv = find_slot(module.list, label, &slot);
    if (rv != CKR_OK)
        goto out;
    for (; n_sessions < max_threads; n_sessions++)
        P11_CHECK(module.list->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                             &sessions[n_sessions]),
                  "C_OpenSession");
    /* Proof that both lists drive one SoftHSM instance: the backend's own list
     * knows the session the module opened. */
    rv = backend.list->C_GetSessionInfo(sessions[0], &si);
    if (rv != CKR_OK) {
        report_ckr("C_GetSessionInfo (direct, on a session opened through the module)", rv);
        FAIL("the module does not share the backend instance loaded from %s; is it configured with a different "
             "backend?",
             o.backend_path);
    }
    P11_CHECK(login(module.list, sessions[0], pin), "C_Login");

    /* The token key: reuse ours if a previous run left it, else generate it. */
    rv = find_key(module.list, sessions[0], CKO_PRIVATE_KEY, &keys.priv);
    if (rv != CKR_OK)
        goto out;
    rv = find_key(module.list, sessions[0], CKO_PUBLIC_KEY, &keys.pub);
    if (rv != CKR_OK)
        goto out;
    if (keys.priv == CK_INVALID_HANDLE || keys.pub == CK_INVALID_HANDLE) {
        static const CK_BYTE p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
        CK_BBOOL yes = CK_TRUE;
        char key_label[] = BENCH_KEY_LABEL;
        CK_ATTRIBUTE pub_t[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_VERIFY, &yes, sizeof(yes)},
            {CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid)},
            {CKA_LABEL, key_label, sizeof(key_label) - 1},
        };
        CK_ATTRIBUTE priv_t[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_SIGN, &yes, sizeof(yes)},
            {CKA_LABEL, key_label, sizeof(key_label) - 1},
        };
        if (keys.priv != CK_INVALID_HANDLE || keys.pub != CK_INVALID_HANDLE)
            FAIL("token has half of key pair '%s'; delete it and rerun", BENCH_KEY_LABEL);
        P11_CHECK(module.list->C_GenerateKeyPair(sessions[0], &mech, pub_t, 4, priv_t, 5, &keys.pub, &keys.priv),
                  "C_GenerateKeyPair (EC P-256)");
        generated_key = true;
    }
    memcpy(keys.label, BENCH_KEY_LABEL, sizeof(keys.label));

    /* Sanity: a signature made through the module verifies through the backend. */
    {
        CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
        CK_BYTE hash[32] = {0x42}, sig[72];
        CK_ULONG sig_len = sizeof(sig);
        P11_CHECK(module.list->C_SignInit(sessions[0], &mech, keys.priv), "C_SignInit (sanity)");
        P11_CHECK(module.list->C_Sign(sessions[0], hash, sizeof(hash), sig, &sig_len), "C_Sign (sanity)");
        P11_CHECK(backend.list->C_VerifyInit(sessions[0], &mech, keys.pub), "C_VerifyInit (sanity)");
        P11_CHECK(backend.list->C_Verify(sessions[0], hash, sizeof(hash), sig, sig_len), "C_Verify (sanity)");
    }

    if (o.calls_mask & CALL_CERT) {
        rv = find_ca_key(module.list, sessions[0], &keys.ca);
        if (rv != CKR_OK)
            goto out;
        fprintf(stderr, "guardian-bench: %d P-256 device keys with OpenSSL (not timed) ...\n", DEVICE_POOL);
        rv = make_device_pool(&keys);
        if (rv != CKR_OK)
            goto out;
        rv = cert_sanity(module.list, backend.list, sessions[0], &keys);
        if (rv != CKR_OK)
            goto out;
    }

    print_machine(table, &o, argc, argv);
    {
        /* per call and thread count: 4 rounds per block, plus one warm-up round per arm */
        double per_call = 4.0 * ceil(o.seconds / (2.0 * o.round_s)) * o.round_s +
                          2.0 * (o.round_s > 0.2 ? o.round_s : 0.2);
        int n_calls = __builtin_popcount(o.calls_mask & ((1U << N_CALLS) - 1));
        fprintf(stderr, "guardian-bench: estimated run time %.0f s\n",
                (double)(o.n_threads * n_calls) * per_call + (double)o.memory_calls * 2.0 / 80000.0 + 3.0);
    }

    /* Memory added, in fresh processes (the token must exist: it does now). */
    fprintf(stderr, "guardian-bench: resident memory, %d fresh processes per side ...\n", RSS_CHILD_PAIRS);
    rv = measure_added_rss(&o, label, pin, &rr);
    if (rv != CKR_OK)
        goto out;

    results = calloc((size_t)o.n_threads * N_CALLS, sizeof(*results));
    if (results == NULL) {
        rv = CKR_HOST_MEMORY;
        report_ckr("allocation", rv);
        goto out;
    }
    for (int t = 0; t < o.n_threads; t++) {
        rv = bench_threads(o.threads[t], sessions, &keys, lists, &o, results, &n_results);
        if (rv != CKR_OK)
            goto out;
    }

    if (o.memory_calls > 0) {
        fprintf(stderr, "guardian-bench: memory growth over %lu calls, module then direct ...\n", o.memory_calls);
        rv = measure_growth(module.list, sessions[0], keys.pub, o.memory_calls, &gm);
        if (rv != CKR_OK)
            goto out;
        rv = measure_growth(backend.list, sessions[0], keys.pub, o.memory_calls, &gd);
        if (rv != CKR_OK)
            goto out;
    }

    print_table(table, results, n_results);
    fprintf(table, "\nresident memory after C_Initialize+login+1 sign (median of %d fresh processes each):\n",
            rr.pairs);
    fprintf(table, "  VmRSS   backend alone %6ld KiB, through module %6ld KiB, added %+ld KiB (pairs: %+ld..%+ld)\n",
            rr.direct.vm_rss, rr.module.vm_rss, rr.module.vm_rss - rr.direct.vm_rss, rr.min_delta, rr.max_delta);
    fprintf(table, "  RssAnon backend alone %6ld KiB, through module %6ld KiB, added %+ld KiB\n", rr.direct.rss_anon,
            rr.module.rss_anon, rr.module.rss_anon - rr.direct.rss_anon);
    fprintf(table, "  RssFile backend alone %6ld KiB, through module %6ld KiB, added %+ld KiB\n", rr.direct.rss_file,
            rr.module.rss_file, rr.module.rss_file - rr.direct.rss_file);
    if (o.memory_calls > 0) {
        fprintf(table, "VmRSS growth over %lu calls (C_GenerateRandom 16 B / C_GetAttributeValue alternating, after "
                       "%lu warm-up calls):\n",
                o.memory_calls, GROWTH_WARMUP_CALLS);
        fprintf(table, "  through module: %ld -> %ld KiB (%+ld KiB, %.1f s)\n", gm.before, gm.after,
                gm.after - gm.before, gm.seconds);
        fprintf(table, "  backend alone:  %ld -> %ld KiB (%+ld KiB, %.1f s)\n", gd.before, gd.after,
                gd.after - gd.before, gd.seconds);
    }
    fprintf(table, "total run time %.0f s\n", now_s() - t_start);
    if (o.csv)
        print_csv(stdout, results, n_results, &rr, &gm, &gd, o.memory_calls);
    rv = CKR_OK;
out:
    if (generated_key && o.token_label != NULL) {
        /* Leave a user's token as we found it. */
        module.list->C_DestroyObject(sessions[0], keys.priv);
        module.list->C_DestroyObject(sessions[0], keys.pub);
    }
    if (initialized) {
        CK_RV frv = module.list->C_Finalize(NULL);
        if (frv != CKR_OK) {
            report_ckr("C_Finalize", frv);
            if (rv == CKR_OK)
                rv = frv;
        }
    }
    lib_close(&module);
    lib_close(&backend);
    if (tmpdir[0] != '\0')
        remove_tree(tmpdir);
    free(results);
    free(keys.device_spki);
    free(keys.device_spki_len);
    return rv == CKR_OK ? 0 : 1;
}
