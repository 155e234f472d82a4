/*
 * service-bench.c — device certificates per second, and the latency of one,
 * through any PKCS#11 library: the Guardian module in-process, or
 * p11-kit-client.so in front of `p11-kit server` (the service model).
 *
 *   service-bench --module LIB --token-label L [--pin P] --path mech|request|sign|rtt|batch
 *                 [--workers N] [--procs] [--seconds S] [--warmup S] [--tag T] [--keep N] [--batch N]
 *
 * One certificate, as a programming system gets it:
 *   mech     C_DeriveKey(CKM_GUARDIAN_DERIVE_DEVICE_CERT) on the production CA
 *            key (in-process only: a vendor mechanism does not cross p11-kit's RPC)
 *   request  C_CreateObject of a CKO_GUARDIAN_REQUEST, CKG_GUARDIAN_REQ_DEVICE_CERT,
 *            naming the CA key's package by CKA_GUARDIAN_PACKAGE_ID
 * each followed by C_GetAttributeValue(CKA_VALUE) and C_DestroyObject of the
 * returned certificate object (with --keep N, no C_DestroyObject: every N
 * certificates a new session, and the old one closed with its objects).  Each certificate has a new text device ID and a
 * P-256 key from a pool made before timing (the part's key generation is not the
 * Guardian's cost).
 *   batch    C_CreateObject of one CKG_GUARDIAN_REQ_DEVICE_CERTS request for --batch N
 *            (default 16) devices, C_GetAttributeValue of its result and
 *            C_DestroyObject: three RPCs for N certificates (reported as
 *            path=batchN; ops and rate count certificates, and each
 *            certificate's latency is its batch's divided by N)
 *   sign     C_SignInit + C_Sign (CKM_ECDSA, 32-byte hash) with the same CA key:
 *            the signature no certificate can do without.  The module refuses a
 *            plain C_Sign with a production CA key, so LIB is the backend here.
 *   rtt      C_GetSessionInfo, about the cheapest call there is: through the
 *            service, the cost of one RPC round trip.
 *
 * Workers: N threads in this process, each with its own session (--workers N),
 * or N processes (--procs), each loading LIB on its own: N clients of the
 * service, each with its own connection (p11-kit server forks one
 * p11-kit-remote per connection).  Every worker opens its session, logs in,
 * finds the key and runs --warmup seconds of operations (the module proves the
 * CA key and its reservation blocks grow) before a common start; then each
 * runs --seconds and times every operation (CLOCK_MONOTONIC).
 *
 * Output: one line on stdout,
 *   result path=P workers=N mode=threads|procs seconds=S ops=K rate=R
 *          p50_us=… p90_us=… p99_us=… max_us=… errors=E cpu_us=C
 * rate is the sum over workers of ops / that worker's elapsed time; the
 * percentiles are over every operation of every worker; cpu_us is the
 * workers' own CPU time per operation (CLOCK_THREAD_CPUTIME_ID: through the
 * service, the client's share only).  Progress and errors
 * go to stderr.  tests/bench/service-bench.sh runs the variants interleaved and
 * takes the medians (docs/performance.md, "Issue #9").
 *
 * Exit status: 0 on success; 1 on a PKCS#11 or system error (in the set-up, or
 * more than ERRORS_MAX timed operations of one worker failing: a benchmark of
 * errors measures nothing; fewer are reported and counted in errors=); 2 on
 * bad usage.
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>
/* after the PKCS#11 header: the vendor types */
#include "guardian/guardian-pkcs11.h"

/* The device-certificate request (issue 9), as specified; older headers lack it. */
#ifndef CKG_GUARDIAN_REQ_DEVICE_CERT
#define CKG_GUARDIAN_REQ_DEVICE_CERT 8UL
#endif
#ifndef CKA_GUARDIAN_DEVICE_ID
#define CKA_GUARDIAN_DEVICE_ID (CKA_GUARDIAN_BASE | 0x0013UL)
#endif
#ifndef CKA_GUARDIAN_DEVICE_SPKI
#define CKA_GUARDIAN_DEVICE_SPKI (CKA_GUARDIAN_BASE | 0x0015UL)
#endif

#define PROG "service-bench"
#define MAX_WORKERS 16
#define DEVICE_POOL 256
#define DEVICE_SPKI_MAX 128
#define CERT_VALUE_MAX 4096
#define LAT_MAX (1u << 20) /* timed operations kept per worker */
#define PIN_ENV "GUARDIAN_BENCH_PIN"
/* Failed timed operations tolerated per worker (each reported, and counted in
 * errors=): a rare one, such as two processes racing on SoftHSM's file store,
 * does not void a run; more do. */
#define ERRORS_MAX 10
#define SETUP_TRIES 8

enum path { PATH_MECH, PATH_REQUEST, PATH_SIGN, PATH_RTT, PATH_BATCH };
static const char *const path_names[] = {"mech", "request", "sign", "rtt", "batch"};
#define N_PATHS 5
#define BATCH_MAX 64
/* The batch request and its attribute (issue 9); older headers lack them. */
#ifndef CKG_GUARDIAN_REQ_DEVICE_CERTS
#define CKG_GUARDIAN_REQ_DEVICE_CERTS 10UL
#endif
#ifndef CKA_GUARDIAN_DEVICE_BATCH
#define CKA_GUARDIAN_DEVICE_BATCH (CKA_GUARDIAN_BASE | 0x0016UL)
#endif

struct options {
    const char *module;
    const char *label;
    const char *pin;
    enum path path;
    int workers;
    bool procs;
    double seconds, warmup;
    const char *tag;
    unsigned long keep; /* 0: destroy each certificate; N: close the session every N instead */
    unsigned batch;     /* --path batch: certificates per request (default 16) */
};

/* One worker's results, in memory shared with the parent (--procs). */
struct slot {
    atomic_int state; /* 0 setting up, 1 ready, 2 done, -1 failed */
    uint64_t ops;
    uint64_t errors; /* timed operations that failed (not in ops nor in the latencies) */
    double cpu;      /* the worker thread's CPU time over the timed window (s) */
    double elapsed;
    uint32_t n_lat;
    float lat_us[LAT_MAX];
};

struct shared {
    atomic_int go;     /* set by the parent once every worker is ready */
    double start, end; /* CLOCK_MONOTONIC; the same clock in every process */
    struct slot slot[];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void nap(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void report(const char *what, CK_RV rv)
{
    fprintf(stderr, PROG ": %s failed: CKR 0x%08lx\n", what, (unsigned long)rv);
}

/* ---- one process's PKCS#11 state ----------------------------------------- */

struct lib {
    void *dl;
    CK_FUNCTION_LIST *l;
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE ca;
    CK_BYTE package_id[16];
    CK_BYTE *spki[DEVICE_POOL];
    CK_ULONG spki_len[DEVICE_POOL];
};

struct worker {
    const struct options *o;
    struct lib *lib;
    struct shared *sh;
    struct slot *slot;
    int index;
    CK_SESSION_HANDLE session;
    unsigned long n; /* operations so far, warm-up included: the device ID's number */
    CK_BYTE value[CERT_VALUE_MAX];
    unsigned certs;        /* certificates the last operation issued */
    CK_BYTE *batch_in, *batch_out; /* --path batch: the request's encoding, its result */
};

static CK_RV lib_open(const struct options *o, struct lib *b)
{
    CK_C_GetFunctionList get;

    memset(b, 0, sizeof(*b));
    b->dl = dlopen(o->module, RTLD_NOW | RTLD_LOCAL);
    if (b->dl == NULL) {
        fprintf(stderr, PROG ": cannot load %s: %s\n", o->module, dlerror());
        return CKR_GENERAL_ERROR;
    }
    get = (CK_C_GetFunctionList)dlsym(b->dl, "C_GetFunctionList");
    if (get == NULL || get(&b->l) != CKR_OK || b->l == NULL) {
        fprintf(stderr, PROG ": %s: no function list\n", o->module);
        b->l = NULL;
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

/* C_Initialize and the slot of the token labelled o->label.
 * CKR_TOKEN_NOT_PRESENT (reported only when `quiet` is false): no such token. */
static CK_RV lib_init(const struct options *o, struct lib *b, bool quiet)
{
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    size_t ll = strlen(o->label);
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    if ((rv = b->l->C_Initialize(&args)) != CKR_OK) {
        report("C_Initialize", rv);
        return rv;
    }
    memset(want, ' ', sizeof(want));
    memcpy(want, o->label, ll < 32 ? ll : 32);
    if ((rv = b->l->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK) {
        report("C_GetSlotList", rv);
        return rv;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (b->l->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
            b->slot = slots[i];
            return CKR_OK;
        }
    }
    if (!quiet)
        fprintf(stderr, PROG ": no token labelled '%s' through %s (%lu slots with a token)\n", o->label, o->module,
                (unsigned long)n);
    return CKR_TOKEN_NOT_PRESENT;
}

/* The imported production CA key: a private key labelled "...:production-ca"
 * with a 16-byte CKA_ID, its package ID (guardianctl provision finds it so). */
static CK_RV find_ca_key(struct lib *b, CK_SESSION_HANDLE s)
{
    static const char suffix[] = ":production-ca";
    CK_OBJECT_CLASS klass = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &klass, sizeof(klass)};
    CK_OBJECT_HANDLE h[64];
    CK_ULONG n = 0;
    CK_RV rv = b->l->C_FindObjectsInit(s, &t, 1);

    if (rv == CKR_OK) {
        rv = b->l->C_FindObjects(s, h, 64, &n);
        b->l->C_FindObjectsFinal(s);
    }
    if (rv != CKR_OK) {
        report("C_FindObjects (CA key)", rv);
        return rv;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        char label[256];
        CK_BYTE id[32];
        CK_ATTRIBUTE a[] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_ID, id, sizeof(id)}};
        if (b->l->C_GetAttributeValue(s, h[i], a, 2) != CKR_OK || a[1].ulValueLen != 16)
            continue;
        label[a[0].ulValueLen] = '\0';
        if (a[0].ulValueLen > sizeof(suffix) - 1 &&
            strcmp(label + a[0].ulValueLen - (sizeof(suffix) - 1), suffix) == 0) {
            b->ca = h[i];
            memcpy(b->package_id, id, 16);
            return CKR_OK;
        }
    }
    fprintf(stderr, PROG ": the token holds no production CA key (label \"...%s\")\n", suffix);
    return CKR_GENERAL_ERROR;
}

static CK_RV make_device_pool(struct lib *b)
{
    for (size_t i = 0; i < DEVICE_POOL; i++) {
        EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        unsigned char *p;
        int len = pk != NULL ? i2d_PUBKEY(pk, NULL) : -1;
        if (len > 0 && len <= DEVICE_SPKI_MAX && (b->spki[i] = malloc(DEVICE_SPKI_MAX)) != NULL) {
            p = b->spki[i];
            len = i2d_PUBKEY(pk, &p);
        } else {
            len = -1;
        }
        EVP_PKEY_free(pk);
        if (len <= 0) {
            fprintf(stderr, PROG ": cannot make a P-256 device key with OpenSSL\n");
            return CKR_GENERAL_ERROR;
        }
        b->spki_len[i] = (CK_ULONG)len;
    }
    return CKR_OK;
}

static void lib_unload(struct lib *b)
{
    if (b->l != NULL)
        b->l->C_Finalize(NULL);
    b->l = NULL;
    for (size_t i = 0; i < DEVICE_POOL; i++)
        free(b->spki[i]);
    /* Not dlclose()d: a library's atexit handlers may still run. */
    memset(b, 0, sizeof(*b));
}

/* ---- one operation ----------------------------------------------------------- */

/* The certificate's value read back, and the object destroyed. */
static CK_RV fetch_and_destroy(struct worker *w, CK_OBJECT_HANDLE cert, const char **fn)
{
    CK_FUNCTION_LIST *l = w->lib->l;
    CK_ATTRIBUTE v = {CKA_VALUE, w->value, sizeof(w->value)};
    CK_RV rv = l->C_GetAttributeValue(w->session, cert, &v, 1);

    if (rv == CKR_OK && w->o->keep > 0 && v.ulValueLen >= 64 && w->value[0] == 0x30)
        return CKR_OK; /* destroyed with its session (rotate_session) */
    if (rv != CKR_OK) {
        *fn = "C_GetAttributeValue (certificate CKA_VALUE)";
        l->C_DestroyObject(w->session, cert);
        return rv;
    }
    if (v.ulValueLen < 64 || w->value[0] != 0x30) {
        *fn = "C_GetAttributeValue (not a DER certificate)";
        l->C_DestroyObject(w->session, cert);
        return CKR_GENERAL_ERROR;
    }
    rv = l->C_DestroyObject(w->session, cert);
    if (rv != CKR_OK)
        *fn = "C_DestroyObject (certificate)";
    return rv;
}

/* --keep N: every N certificates a new session replaces the worker's, and
 * closing the old one destroys its certificate objects (one call for N
 * instead of N C_DestroyObject).  The new one is opened first: closing a
 * token's last session would log the user out. */
static CK_RV rotate_session(struct worker *w, const char **fn)
{
    CK_FUNCTION_LIST *l = w->lib->l;
    CK_SESSION_HANDLE s;
    CK_RV rv;

    if (w->o->keep == 0 || w->o->path > PATH_REQUEST || w->n % w->o->keep != 0)
        return CKR_OK;
    rv = l->C_OpenSession(w->lib->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        *fn = "C_OpenSession (--keep)";
        return rv;
    }
    rv = l->C_CloseSession(w->session);
    w->session = s;
    if (rv != CKR_OK)
        *fn = "C_CloseSession (--keep)";
    return rv;
}

static CK_RV one_op(struct worker *w, const char **fn)
{
    struct lib *b = w->lib;
    size_t d = w->n % DEVICE_POOL;
    char id[64];
    int id_len = snprintf(id, sizeof(id), "S%s-%ld-%d-%lu", w->o->tag, (long)getpid(), w->index, w->n);
    CK_OBJECT_HANDLE cert = CK_INVALID_HANDLE;
    CK_RV rv;

    w->n++;
    w->certs = 1;
    if (id_len <= 0 || (size_t)id_len >= sizeof(id)) {
        *fn = "device ID (--tag too long)";
        return CKR_ARGUMENTS_BAD;
    }
    switch (w->o->path) {
    case PATH_MECH: {
        CK_GUARDIAN_DEVICE_CERT_PARAMS p = {
            CK_GUARDIAN_DEVICE_CERT_PARAMS_VERSION, CKG_GUARDIAN_DEVICE_ID_TEXT, (CK_BYTE_PTR)id, (CK_ULONG)id_len,
            b->spki[d], b->spki_len[d],
        };
        CK_MECHANISM m = {CKM_GUARDIAN_DERIVE_DEVICE_CERT, &p, sizeof(p)};
        rv = b->l->C_DeriveKey(w->session, &m, b->ca, NULL, 0, &cert);
        if (rv != CKR_OK) {
            *fn = "C_DeriveKey (CKM_GUARDIAN_DERIVE_DEVICE_CERT)";
            return rv;
        }
        rv = fetch_and_destroy(w, cert, fn);
        return rv == CKR_OK ? rotate_session(w, fn) : rv;
    }
    case PATH_REQUEST: {
        CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
        CK_ULONG req = CKG_GUARDIAN_REQ_DEVICE_CERT;
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_GUARDIAN_REQUEST, &req, sizeof(req)},
            {CKA_GUARDIAN_PACKAGE_ID, b->package_id, sizeof(b->package_id)},
            {CKA_GUARDIAN_DEVICE_ID, id, (CK_ULONG)id_len},
            {CKA_GUARDIAN_DEVICE_SPKI, b->spki[d], b->spki_len[d]},
        };
        rv = b->l->C_CreateObject(w->session, t, sizeof(t) / sizeof(t[0]), &cert);
        if (rv != CKR_OK) {
            *fn = "C_CreateObject (CKG_GUARDIAN_REQ_DEVICE_CERT)";
            return rv;
        }
        rv = fetch_and_destroy(w, cert, fn);
        return rv == CKR_OK ? rotate_session(w, fn) : rv;
    }
    case PATH_BATCH: {
        /* One CKG_GUARDIAN_REQ_DEVICE_CERTS of o->batch devices, its result
         * read (every record's status checked) and destroyed: three RPCs for
         * o->batch certificates. */
        CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
        CK_ULONG req = CKG_GUARDIAN_REQ_DEVICE_CERTS;
        size_t used = 0, out_cap = (size_t)w->o->batch * (8 + CERT_VALUE_MAX), pos = 0;
        unsigned got = 0;
        if (w->batch_in == NULL) {
            w->batch_in = malloc((size_t)BATCH_MAX * (8 + sizeof(id) + 1024));
            w->batch_out = malloc(out_cap);
            if (w->batch_in == NULL || w->batch_out == NULL) {
                *fn = "malloc";
                return CKR_HOST_MEMORY;
            }
        }
        for (unsigned i = 0; i < w->o->batch; i++) {
            CK_BYTE *p = w->batch_in + used;
            size_t dd = (d + i) % DEVICE_POOL;
            int n = snprintf(id, sizeof(id), "B%s-%ld-%d-%lu-%u", w->o->tag, (long)getpid(), w->index, w->n, i);
            if (n <= 0 || (size_t)n >= sizeof(id) || b->spki_len[dd] > 1024) {
                *fn = "device ID (--tag too long)";
                return CKR_ARGUMENTS_BAD;
            }
            p[0] = 0, p[1] = 0, p[2] = 0, p[3] = (CK_BYTE)CKG_GUARDIAN_DEVICE_ID_TEXT;
            p[4] = (CK_BYTE)(n >> 8), p[5] = (CK_BYTE)n;
            memcpy(p + 6, id, (size_t)n);
            p[6 + n] = (CK_BYTE)(b->spki_len[dd] >> 8), p[7 + n] = (CK_BYTE)b->spki_len[dd];
            memcpy(p + 8 + n, b->spki[dd], b->spki_len[dd]);
            used += 8 + (size_t)n + b->spki_len[dd];
        }
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &cls, sizeof(cls)},
                {CKA_GUARDIAN_REQUEST, &req, sizeof(req)},
                {CKA_GUARDIAN_PACKAGE_ID, b->package_id, sizeof(b->package_id)},
                {CKA_GUARDIAN_DEVICE_BATCH, w->batch_in, (CK_ULONG)used},
            };
            CK_ATTRIBUTE v = {CKA_VALUE, w->batch_out, (CK_ULONG)out_cap};
            rv = b->l->C_CreateObject(w->session, t, sizeof(t) / sizeof(t[0]), &cert);
            if (rv != CKR_OK) {
                *fn = "C_CreateObject (CKG_GUARDIAN_REQ_DEVICE_CERTS)";
                return rv;
            }
            rv = b->l->C_GetAttributeValue(w->session, cert, &v, 1);
            b->l->C_DestroyObject(w->session, cert);
            if (rv != CKR_OK) {
                *fn = "C_GetAttributeValue (batch result)";
                return rv;
            }
            while (v.ulValueLen - pos >= 8) {
                CK_BYTE *r = w->batch_out + pos;
                unsigned long st = (unsigned long)r[0] << 24 | (unsigned long)r[1] << 16 | r[2] << 8 | r[3];
                size_t len = (size_t)r[4] << 24 | (size_t)r[5] << 16 | (size_t)r[6] << 8 | r[7];
                if (v.ulValueLen - pos - 8 < len)
                    break;
                if (st == CKR_OK && len >= 64 && r[8] == 0x30)
                    got++;
                pos += 8 + len;
            }
        }
        w->certs = got;
        if (got != w->o->batch) {
            *fn = "the batch result (an entry without its certificate)";
            return CKR_GENERAL_ERROR;
        }
        return CKR_OK;
    }
    case PATH_RTT: {
        CK_SESSION_INFO si;
        rv = b->l->C_GetSessionInfo(w->session, &si);
        if (rv != CKR_OK)
            *fn = "C_GetSessionInfo";
        return rv;
    }
    case PATH_SIGN: {
        CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
        CK_BYTE hash[32], sig[256];
        CK_ULONG sig_len = sizeof(sig);
        memset(hash, (int)(w->n & 0xff), sizeof(hash));
        rv = b->l->C_SignInit(w->session, &m, b->ca);
        if (rv == CKR_OK)
            rv = b->l->C_Sign(w->session, hash, sizeof(hash), sig, &sig_len);
        if (rv != CKR_OK)
            *fn = "C_SignInit + C_Sign (CA key)";
        return rv;
    }
    }
    return CKR_GENERAL_ERROR;
}

/* ---- a worker ------------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct slot *s = w->slot;
    const char *fn = "";
    double t0, t, last = 0, cpu0;
    CK_RV rv = CKR_OK;

    /* Warm-up: the module proves the key, its reservation blocks grow. */
    for (t0 = now_s(); rv == CKR_OK && now_s() - t0 < w->o->warmup;)
        rv = one_op(w, &fn);
    if (rv != CKR_OK) {
        report(fn, rv);
        atomic_store(&s->state, -1);
        return NULL;
    }
    atomic_store(&s->state, 1);
    while (atomic_load(&w->sh->go) == 0)
        nap(0.001);
    if (atomic_load(&w->sh->go) < 0)
        return NULL;
    while ((t = now_s()) < w->sh->start)
        ;
    t0 = t;
    cpu0 = thread_cpu_s();
    while (t < w->sh->end) {
        rv = one_op(w, &fn);
        last = now_s();
        if (rv != CKR_OK) {
            /* Counted and reported; more than ERRORS_MAX stops the run. */
            if (s->errors++ < 3)
                report(fn, rv);
            if (s->errors > ERRORS_MAX) {
                fprintf(stderr, PROG ": more than %d failed operations: stopped\n", ERRORS_MAX);
                atomic_store(&s->state, -1);
                return NULL;
            }
            t = last;
            continue;
        }
        /* Per certificate: a batch's time shared by its certificates. */
        if (s->n_lat < LAT_MAX)
            s->lat_us[s->n_lat++] = (float)((last - t) * 1e6 / w->certs);
        s->ops += w->certs;
        t = last;
    }
    s->elapsed = last - t0;
    s->cpu = thread_cpu_s() - cpu0;
    atomic_store(&s->state, 2);
    return NULL;
}

/* Load LIB, open `n` sessions and log in, then run workers slot[first..first+n)
 * as threads of this process. */
static int run_workers(const struct options *o, struct shared *sh, int first, int n)
{
    struct lib b;
    struct worker *ws = calloc((size_t)n, sizeof(*ws));
    pthread_t th[MAX_WORKERS];
    int started = 0, ret = 1;
    CK_RV rv;

    if (ws == NULL || lib_open(o, &b) != CKR_OK)
        goto fail;
    /* SoftHSM reads its token files at C_Initialize: a token whose files
     * another process was rewriting at that moment (an anchor update) is
     * missing until the next C_Initialize, or looks uninitialised (C_Login
     * answers CKR_USER_PIN_NOT_INITIALIZED).  So the set-up is tried again
     * from C_Initialize, a few times. */
    for (int attempt = 1;; attempt++) {
        bool last = attempt == SETUP_TRIES;
        rv = lib_init(o, &b, !last);
        for (int i = 0; rv == CKR_OK && i < n; i++) {
            ws[i].o = o, ws[i].lib = &b, ws[i].sh = sh, ws[i].slot = &sh->slot[first + i], ws[i].index = first + i;
            rv = b.l->C_OpenSession(b.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &ws[i].session);
            if (rv != CKR_OK)
                report("C_OpenSession", rv);
        }
        if (rv == CKR_OK) {
            rv = b.l->C_Login(ws[0].session, CKU_USER, (CK_UTF8CHAR_PTR)o->pin, (CK_ULONG)strlen(o->pin));
            if (rv == CKR_USER_ALREADY_LOGGED_IN)
                rv = CKR_OK;
            if (rv != CKR_OK && (last || rv != CKR_USER_PIN_NOT_INITIALIZED))
                report("C_Login", rv);
        }
        if (rv == CKR_OK)
            break;
        if (last || (rv != CKR_TOKEN_NOT_PRESENT && rv != CKR_USER_PIN_NOT_INITIALIZED))
            goto fail;
        b.l->C_Finalize(NULL);
        nap(0.05 * attempt);
    }
    if (find_ca_key(&b, ws[0].session) != CKR_OK || make_device_pool(&b) != CKR_OK)
        goto fail;
    for (; started < n; started++)
        if (pthread_create(&th[started], NULL, worker_main, &ws[started]) != 0) {
            fprintf(stderr, PROG ": cannot start a thread\n");
            break;
        }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    ret = started == n ? 0 : 1;
    for (int i = 0; i < n; i++)
        if (atomic_load(&sh->slot[first + i].state) != 2)
            ret = 1;
    lib_unload(&b);
    free(ws);
    return ret;
fail:
    for (int i = first; i < first + n; i++)
        atomic_store(&sh->slot[i].state, -1);
    if (ws != NULL && b.l != NULL)
        lib_unload(&b);
    free(ws);
    return 1;
}

/* ---- the parent ------------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double pct(const float *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    i = (size_t)ceil(p * (double)n) - (p > 0 ? 1 : 0);
    return v[i < n ? i : n - 1];
}

static void *worker_thread(void *arg)
{
    void **a = arg;
    *(int *)a[3] = run_workers(a[0], a[1], 0, *(int *)a[2]);
    return NULL;
}

static int usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --module LIB --token-label L [--pin P] --path mech|request|sign|rtt|batch\n"
               "                     [--workers N] [--procs] [--seconds S] [--warmup S] [--tag T]\n"
               "  --pin P      the user PIN (or $" PIN_ENV ")\n"
               "  --workers N  1..16 concurrent sessions (default 1); --procs: one process each\n"
               "  --seconds S  timed seconds (default 3); --warmup S untimed, per worker (default 0.5)\n"
               "  --tag T      part of every device ID (default: the pid)\n"
               "  --keep N     no C_DestroyObject per certificate: a new session every N\n"
               "               certificates, the old one closed (its objects with it)\n"
               "  --batch N    --path batch: N (1..64, default 16) certificates per request\n");
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"module", required_argument, NULL, 'm'}, {"token-label", required_argument, NULL, 'l'},
        {"pin", required_argument, NULL, 'p'},    {"path", required_argument, NULL, 'P'},
        {"workers", required_argument, NULL, 'w'}, {"procs", no_argument, NULL, 'f'},
        {"seconds", required_argument, NULL, 's'}, {"warmup", required_argument, NULL, 'W'},
        {"tag", required_argument, NULL, 't'},    {"keep", required_argument, NULL, 'k'},
        {"batch", required_argument, NULL, 'b'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct options o = {.workers = 1, .seconds = 3, .warmup = 0.5, .path = (enum path) - 1, .batch = 16};
    char tag[32];
    struct shared *sh;
    size_t sh_size;
    pid_t pids[MAX_WORKERS];
    float *all;
    size_t n_all = 0;
    uint64_t ops = 0, errors = 0;
    double rate = 0, deadline, cpu = 0;
    int c, ret = 0, ready;

    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'm': o.module = optarg; break;
        case 'l': o.label = optarg; break;
        case 'p': o.pin = optarg; break;
        case 'P':
            for (int i = 0; i < N_PATHS; i++)
                if (strcmp(optarg, path_names[i]) == 0)
                    o.path = (enum path)i;
            break;
        case 'w':
            o.workers = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || o.workers < 1 || o.workers > MAX_WORKERS)
                return usage(stderr);
            break;
        case 'f': o.procs = true; break;
        case 's':
            o.seconds = strtod(optarg, &end);
            if (*end != '\0' || !(o.seconds > 0 && o.seconds <= 3600))
                return usage(stderr);
            break;
        case 'W':
            o.warmup = strtod(optarg, &end);
            if (*end != '\0' || !(o.warmup >= 0 && o.warmup <= 600))
                return usage(stderr);
            break;
        case 't': o.tag = optarg; break;
        case 'k':
            o.keep = strtoul(optarg, &end, 10);
            if (*end != '\0' || o.keep > 60000)
                return usage(stderr);
            break;
        case 'b':
            o.batch = (unsigned)strtoul(optarg, &end, 10);
            if (*end != '\0' || o.batch < 1 || o.batch > BATCH_MAX)
                return usage(stderr);
            break;
        case 'h': usage(stdout); return 0;
        default: return usage(stderr);
        }
    }
    if (o.pin == NULL)
        o.pin = getenv(PIN_ENV);
    if (optind != argc || o.module == NULL || o.label == NULL || o.pin == NULL || (int)o.path < 0 ||
        (int)o.path >= N_PATHS)
        return usage(stderr);
    if (o.tag == NULL) {
        snprintf(tag, sizeof(tag), "%lx", (unsigned long)getpid());
        o.tag = tag;
    }

    sh_size = sizeof(*sh) + (size_t)o.workers * sizeof(struct slot);
    sh = mmap(NULL, sh_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        fprintf(stderr, PROG ": mmap: %s\n", strerror(errno));
        return 1;
    }
    memset(sh, 0, sizeof(*sh));

    /* Start the workers: processes (each loads LIB itself) or threads of one
     * helper thread's process (this one), which loads LIB once. */
    pthread_t helper;
    int helper_ret = 1, nw = o.workers;
    void *helper_args[4] = {&o, sh, &nw, &helper_ret};
    if (o.procs) {
        fflush(NULL);
        for (int i = 0; i < o.workers; i++) {
            pids[i] = fork();
            if (pids[i] < 0) {
                fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
                return 1;
            }
            if (pids[i] == 0)
                _exit(run_workers(&o, sh, i, 1));
        }
    } else if (pthread_create(&helper, NULL, worker_thread, helper_args) != 0) {
        fprintf(stderr, PROG ": cannot start a thread\n");
        return 1;
    }

    /* Every worker ready (or one failed), then a common start. */
    deadline = now_s() + 120 + o.warmup;
    do {
        ready = 0;
        for (int i = 0; i < o.workers; i++) {
            int st = atomic_load(&sh->slot[i].state);
            if (st < 0)
                ready = -1;
            else if (ready >= 0 && st == 1)
                ready++;
        }
        if (ready < 0 || ready == o.workers)
            break;
        nap(0.005);
    } while (now_s() < deadline);
    if (ready == o.workers) {
        sh->start = now_s() + 0.02;
        sh->end = sh->start + o.seconds;
        atomic_store(&sh->go, 1);
    } else {
        fprintf(stderr, PROG ": %s\n", ready < 0 ? "a worker failed during set-up" : "workers not ready in 120 s");
        atomic_store(&sh->go, -1);
        ret = 1;
    }

    if (o.procs) {
        for (int i = 0; i < o.workers; i++) {
            int status = 0;
            while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
                ;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                ret = 1;
        }
    } else {
        pthread_join(helper, NULL);
        if (helper_ret != 0)
            ret = 1;
    }
    if (ret != 0)
        return 1;

    for (int i = 0; i < o.workers; i++)
        n_all += sh->slot[i].n_lat;
    all = malloc((n_all ? n_all : 1) * sizeof(*all));
    if (all == NULL)
        return 1;
    n_all = 0;
    for (int i = 0; i < o.workers; i++) {
        const struct slot *s = &sh->slot[i];
        memcpy(all + n_all, s->lat_us, s->n_lat * sizeof(*all));
        n_all += s->n_lat;
        ops += s->ops;
        errors += s->errors;
        cpu += s->cpu;
        if (s->elapsed > 0)
            rate += (double)s->ops / s->elapsed;
    }
    qsort(all, n_all, sizeof(*all), cmp_float);
    char batch_name[16] = "";
    if (o.path == PATH_BATCH)
        snprintf(batch_name, sizeof(batch_name), "%u", o.batch);
    printf("result path=%s%s%s workers=%d mode=%s seconds=%.2f ops=%llu rate=%.1f p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f max_us=%.1f errors=%llu cpu_us=%.1f\n",
           path_names[o.path], batch_name, o.keep > 0 ? "+keep" : "", o.workers, o.procs ? "procs" : "threads", o.seconds,
           (unsigned long long)ops, rate, pct(all, n_all, 0.50), pct(all, n_all, 0.90), pct(all, n_all, 0.99),
           n_all ? all[n_all - 1] : 0.0, (unsigned long long)errors, ops ? cpu * 1e6 / (double)ops : 0.0);
    free(all);
    munmap(sh, sh_size);
    return 0;
}
