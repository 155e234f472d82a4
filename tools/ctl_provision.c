/*
 * ctl_provision.c — `guardianctl provision`: the programming system's job, for
 * N simulated parts.  Each part makes its key pair (as a real part would, on
 * chip; the private key is discarded), and the certificate is issued by the
 * module for a CKG_GUARDIAN_REQ_DEVICE_CERT request (C_CreateObject, which
 * p11-kit's RPC carries; in the module the same code as
 * C_DeriveKey(CKM_GUARDIAN_DERIVE_DEVICE_CERT), with the production CA key of
 * the package the module finds itself) and written out as <out>/<device-id>.pem.
 * The certificate objects are freed by closing the session every
 * SESSION_CERTS certificates, not by a C_DestroyObject each (one RPC fewer
 * per certificate through the Guardian service).
 *
 * Several worker threads, each with its own session; a progress bar with rate
 * and ETA on a terminal, a plain line every 10 % otherwise; SIGINT/SIGTERM stop
 * cleanly (the parts in flight finish, the module gives back the units it
 * reserved and did not use); running the same command again resumes: a part
 * whose certificate file exists is skipped.  docs/guardianctl.md, "provision".
 *
 * The manifest (ctl_manifest.c) lists every certificate file of the
 * directory, one JSON line per device, each line written only once its
 * certificate file is on disk (syncfs first), so that after a crash or power
 * loss every line names a file that exists; a file a crash left without its
 * line gets it when the run resumes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ctl_manifest.h"
#include "guardianctl.h"

#define MAX_THREADS 16
/* Certificates a worker's session holds before it is closed (and a new one
 * opened): the certificate objects are not destroyed one by one (through the
 * Guardian service each C_DestroyObject is one more RPC, a third of a
 * certificate's round trips) but all at once by C_CloseSession, which frees
 * the session's module-held certificate objects (module/cert_objects.c).  A
 * worker holds at most this many, so memory stays bounded: 16 threads x 1000
 * stays far below the module's 65,535 live certificate objects. */
#define SESSION_CERTS 1000

struct run {
    char oem[GUARDIAN_ID_MAX + 1], product[GUARDIAN_ID_MAX + 1];
    CK_BYTE package_id[GUARDIAN_PACKAGE_ID_LEN];
    const char *out_dir, *prefix, *key_type;
    unsigned long long first, count;
    int threads, quiet;
    CK_BBOOL reissue;        /* --reissue: CKA_GUARDIAN_REISSUE TRUE in each request */
    atomic_ullong next;      /* next index to take */
    atomic_ullong issued, skipped, failed;
    atomic_int stop;         /* 1: stop taking parts (Ctrl-C, quota, error) */
    pthread_mutex_t err_lock;
    CK_RV first_error;
    char first_error_part[96];
    struct manifest *manifest;
};

/* The largest part number (--first + --count - 1): device IDs are
 * <prefix><number>, and the workers' counter runs up to one past the last
 * part per thread, so it must not wrap (a wrapped counter issued part 0 and
 * ran for ever).  2^63-1 leaves it room and is 19 digits. */
#define PART_NUMBER_MAX 9223372036854775807ULL

static volatile sig_atomic_t interrupted;

/* --count / --first: a whole number (no sign), not out of range. */
static unsigned long long number(const char *opt, const char *v, char **end)
{
    unsigned long long n;
    errno = 0;
    n = strtoull(v, end, 10);
    if (errno == ERANGE)
        usage_die("provision", "%s '%s' is larger than %llu", opt, v, (unsigned long long)PART_NUMBER_MAX);
    return n;
}

static void on_signal(int sig)
{
    interrupted = 1;
    signal(sig, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the package -------------------------------------------------------------------- */

/* Before the first unit is spent: refuse a run that needs more units than
 * remain.  The parts to issue are those without a certificate file (a resumed
 * run skips the others); counted until more than `remaining` are found, so
 * the check costs at most (files present + remaining + 1) stat calls. */
static void check_remaining(const struct run *r, CK_ULONG remaining)
{
    unsigned long long missing = 0;
    char path[PATH_MAX];
    if (r->count <= remaining)
        return;
    for (unsigned long long i = r->first; i < r->first + r->count && missing <= remaining; i++) {
        snprintf(path, sizeof(path), "%s/%s%06llu.pem", r->out_dir, r->prefix, i);
        if (access(path, F_OK) != 0)
            missing++;
    }
    if (missing > remaining)
        die("--count %llu: %s/%s has only %lu units remaining, fewer than the parts to issue; nothing was issued "
            "(lower --count to %lu, or import a new release of the product)",
            r->count, r->oem, r->product, (unsigned long)remaining, (unsigned long)remaining);
}

static void find_package(struct run *r)
{
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_PACKAGE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_GUARDIAN_OEM_ID, r->oem, strlen(r->oem)},
                        {CKA_GUARDIAN_PRODUCT_ID, r->product, strlen(r->product)}};
    CK_OBJECT_HANDLE h;
    CK_ULONG remaining = 0;
    CK_ATTRIBUTE a[] = {{CKA_GUARDIAN_PACKAGE_ID, r->package_id, sizeof(r->package_id)},
                        {CKA_GUARDIAN_REMAINING_UNITS, &remaining, sizeof(remaining)}};

    if (find_all(t, 3, &h, 1) != 1) {
        /* A store behind the token's anchor knows no product: say that
         * (the module checks; the state may be the service's). */
        struct guardian_status gs;
        read_status(&gs);
        die_if_state_unsound(&gs);
        free(gs.text);
        die("product %s/%s is not installed ('" PROG " products' lists what is)", r->oem, r->product);
    }
    P11(p11->C_GetAttributeValue(session, h, a, 2));
    check_remaining(r, remaining);
    if (!r->quiet && !json_out)
        printf("%s/%s: %lu units remaining\n", r->oem, r->product, (unsigned long)remaining);
}

/* ---- one part ------------------------------------------------------------------------- */

static EVP_PKEY *part_keygen(const char *type)
{
    if (strcmp(type, "rsa2048") == 0)
        return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", strcmp(type, "p384") == 0 ? "P-384" : "P-256");
}

/* The part's public key (SubjectPublicKeyInfo, DER) into spki[cap]: the one
 * kept in <out>/<id>.spki by a run that was stopped before the part's
 * certificate was written, else a new key pair's, kept there (temporary
 * file, then rename) before it is sent.  A real part keeps its key; so does
 * the simulated one until its certificate is written, so a resumed part asks
 * again with the same key and gets the certificate already issued, nothing
 * spent (docs/derive-mechanism.md, "Asking again").  The length, or -1. */
static int part_spki(const struct run *r, const char *id, unsigned char *spki, size_t cap)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    unsigned char *sp = spki;
    EVP_PKEY *k;
    FILE *f;
    int len;

    snprintf(path, sizeof(path), "%s/%s.spki", r->out_dir, id);
    if ((f = fopen(path, "r")) != NULL) {
        size_t n = fread(spki, 1, cap, f);
        fclose(f);
        return n > 0 && n < cap ? (int)n : -1;
    }
    k = part_keygen(r->key_type);
    len = k != NULL && i2d_PUBKEY(k, NULL) <= (int)cap ? i2d_PUBKEY(k, &sp) : -1;
    EVP_PKEY_free(k); /* the part keeps its private key; the simulation has no use for it */
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (len <= 0 || (f = fopen(tmp, "w")) == NULL)
        return -1;
    if (fwrite(spki, 1, (size_t)len, f) != (size_t)len || fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return len;
}

/* Write <out>/<id>.pem atomically (temporary file, then rename). */
static int write_cert(const struct run *r, const char *id, const unsigned char *der, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    FILE *f;
    int ok;

    snprintf(path, sizeof(path), "%s/%s.pem", r->out_dir, id);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (x == NULL)
        return 0;
    f = fopen(tmp, "w");
    ok = f != NULL && PEM_write_X509(f, x) == 1;
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    X509_free(x);
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok)
        unlink(tmp);
    return ok;
}

static void record_error(struct run *r, CK_RV rv, const char *id)
{
    pthread_mutex_lock(&r->err_lock);
    if (r->first_error == CKR_OK) {
        r->first_error = rv;
        snprintf(r->first_error_part, sizeof(r->first_error_part), "%s", id);
    }
    pthread_mutex_unlock(&r->err_lock);
}

static void *worker(void *arg)
{
    struct run *r = arg;
    CK_SESSION_HANDLE s;
    unsigned char *value = malloc(GUARDIAN_CERT_MAX);
    unsigned held = 0; /* certificate objects this session holds */

    if (value == NULL || p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK) {
        record_error(r, CKR_HOST_MEMORY, "(session)");
        atomic_store(&r->stop, 1);
        free(value);
        return NULL;
    }
    while (!atomic_load(&r->stop) && !interrupted) {
        unsigned long long i = atomic_fetch_add(&r->next, 1);
        char id[80], path[PATH_MAX];
        unsigned char spki[1024];
        int spki_len;
        CK_ULONG format = CKG_GUARDIAN_DEVICE_ID_TEXT;
        CK_OBJECT_HANDLE cert = CK_INVALID_HANDLE;
        CK_ATTRIBUTE v = {CKA_VALUE, value, GUARDIAN_CERT_MAX};
        CK_RV rv;

        if (i >= r->first + r->count)
            break;
        if (held >= SESSION_CERTS) {
            /* The login is the token's, not the session's: a new session
             * opened before the old one closes stays logged in. */
            CK_SESSION_HANDLE fresh;
            rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &fresh);
            if (rv != CKR_OK) {
                record_error(r, rv, "(session)");
                atomic_store(&r->stop, 1);
                break;
            }
            p11->C_CloseSession(s);
            s = fresh;
            held = 0;
        }
        snprintf(id, sizeof(id), "%s%06llu", r->prefix, i);
        snprintf(path, sizeof(path), "%s/%s.pem", r->out_dir, id);
        if (access(path, F_OK) == 0) { /* done in an earlier run */
            manifest_recover(r->manifest, id, path);
            atomic_fetch_add(&r->skipped, 1);
            continue;
        }
        spki_len = part_spki(r, id, spki, sizeof(spki));
        if (spki_len <= 0) {
            record_error(r, CKR_HOST_MEMORY, id);
            atomic_fetch_add(&r->failed, 1);
            atomic_store(&r->stop, 1);
            break;
        }
        {
            /* The package found at the start: a newer release imported
             * meanwhile stops the run (superseded), as its CA key would. */
            CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_PACKAGE_ID, r->package_id, sizeof(r->package_id)},
                                {CKA_GUARDIAN_DEVICE_ID_FORMAT, &format, sizeof(format)},
                                {CKA_GUARDIAN_DEVICE_ID, id, (CK_ULONG)strlen(id)},
                                {CKA_GUARDIAN_DEVICE_SPKI, spki, (CK_ULONG)spki_len},
                                {CKA_GUARDIAN_REISSUE, &r->reissue, sizeof(r->reissue)}};
            /* Without --reissue the attribute is left out (a module of
             * before re-issues refuses it). */
            rv = request_in(s, CKG_GUARDIAN_REQ_DEVICE_CERT, t, sizeof(t) / sizeof(t[0]) - (r->reissue ? 0 : 1), &cert);
        }
        if (rv == CKR_OK) {
            /* Not destroyed: the session's close frees it (SESSION_CERTS). */
            held++;
            rv = p11->C_GetAttributeValue(s, cert, &v, 1);
            if (rv == CKR_OK && !write_cert(r, id, value, v.ulValueLen))
                rv = CKR_FUNCTION_FAILED;
            if (rv == CKR_OK) {
                /* The certificate is written: the part's key goes with it. */
                char kept[PATH_MAX];
                snprintf(kept, sizeof(kept), "%s/%s.spki", r->out_dir, id);
                unlink(kept);
                manifest_add(r->manifest, id, value, v.ulValueLen, (int64_t)time(NULL));
            }
        }
        if (rv != CKR_OK) {
            record_error(r, rv, id);
            atomic_fetch_add(&r->failed, 1);
            atomic_store(&r->stop, 1);
            break;
        }
        atomic_fetch_add(&r->issued, 1);
    }
    p11->C_CloseSession(s);
    free(value);
    return NULL;
}

/* ---- progress -------------------------------------------------------------------------- */

/* The terminal's width: TIOCGWINSZ on stderr, else COLUMNS, else 80. */
static int terminal_columns(void)
{
    struct winsize ws;
    const char *c = getenv("COLUMNS");
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    if (c != NULL && atoi(c) > 0)
        return atoi(c);
    return 80;
}

static void progress(struct run *r, double t0, int final, int *last_decile)
{
    unsigned long long issued = atomic_load(&r->issued), done = issued + atomic_load(&r->skipped);
    double el = now_s() - t0, rate = el > 0 ? (double)issued / el : 0;
    double eta = rate > 0 ? (double)(r->count - done) / rate : 0;
    int pct = r->count ? (int)(100 * done / r->count) : 100;

    if (r->quiet || json_out)
        return;
    if (isatty(STDERR_FILENO)) {
        /* One line that never wraps: the text, and a bar in what is left of
         * the terminal's width (TIOCGWINSZ, else COLUMNS, else 80) minus one
         * column (a line that fills the last column wraps on some terminals);
         * narrower, the text without the rate; narrower still no bar, then
         * the text cut. */
        char text[160], bar[512];
        int cols = terminal_columns(), width, len, fill;
        len = snprintf(text, sizeof(text), "%llu/%llu %3d%%  %.0f certs/s  ETA %d:%02d:%02d", done, r->count, pct,
                       rate, (int)eta / 3600, (int)eta / 60 % 60, (int)eta % 60);
        if (len < 0 || len >= (int)sizeof(text))
            len = (int)strlen(text);
        width = cols - 1 - len - 3; /* "[" bar "] " */
        if (width < 10) { /* narrow: the rate goes, the bar stays */
            len = snprintf(text, sizeof(text), "%llu/%llu %3d%% ETA %d:%02d:%02d", done, r->count, pct,
                           (int)eta / 3600, (int)eta / 60 % 60, (int)eta % 60);
            if (len < 0 || len >= (int)sizeof(text))
                len = (int)strlen(text);
            width = cols - 1 - len - 3;
        }
        if (width > (int)sizeof(bar) - 1)
            width = (int)sizeof(bar) - 1;
        if (width >= 10) {
            fill = pct * width / 100;
            memset(bar, '#', (size_t)fill);
            memset(bar + fill, '.', (size_t)(width - fill));
            bar[width] = '\0';
            fprintf(stderr, "\r[%s] %s", bar, text);
        } else {
            fprintf(stderr, "\r%.*s%*s", cols - 1 < len ? cols - 1 : len, text,
                    cols - 1 > len ? cols - 1 - len : 0, "");
        }
        if (final)
            fputc('\n', stderr);
        fflush(stderr);
    } else if (pct / 10 > *last_decile || final) {
        *last_decile = pct / 10;
        fprintf(stderr, "provision: %llu/%llu parts (%d%%), %.0f certs/s, ETA %ds\n", done, r->count, pct, rate,
                (int)eta);
    }
}

/* ---- the command ------------------------------------------------------------------------- */

/* Why the run stopped, for the error that stopped it. */
static const char *stop_reason(CK_RV rv)
{
    switch (rv) {
    case CKR_GUARDIAN_QUOTA_EXHAUSTED: return "the authorised quota is used up";
    case CKR_GUARDIAN_PACKAGE_EXPIRED: return "the package's allowance has expired";
    case CKR_GUARDIAN_PACKAGE_SUPERSEDED: return "a newer release of the product was imported; run again to use it";
    case CKR_GUARDIAN_NOT_PRODUCTION_CA_KEY: return "the token holds no usable production CA key of this package";
    case CKR_GUARDIAN_DEVICE_ALREADY_ISSUED:
        return "the part already holds a certificate for another key (its certificate file is gone, and the part "
               "made a new key); run again with --reissue to issue it a new certificate (recorded as a re-issue)";
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
        /* p11-kit-client.so's answer once its connection is gone. */
        return "the token went away (through the Guardian service: the connection was lost, or the service "
               "restarted); once it is back, run the same command again to resume";
    default: return "see the module's log line above";
    }
}


int cmd_provision(int argc, char **argv)
{
    static struct run r;
    pthread_t th[MAX_THREADS];
    struct sigaction sa;
    char default_out[2 * GUARDIAN_ID_MAX + 32];
    const char *product = NULL, *slash, *manifest_path = NULL;
    char manifest_default[PATH_MAX];
    double t0;
    int last_decile = -1, n_threads;

    memset(&r, 0, sizeof(r));
    r.threads = 2;
    r.prefix = "SN-";
    r.key_type = "p256";
    r.first = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(a, "--quiet") == 0) {
            r.quiet = 1;
            continue;
        }
        if (strcmp(a, "--reissue") == 0) {
            r.reissue = CK_TRUE;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            usage_die("provision", "unexpected argument '%s'", a);
        if (v == NULL)
            usage_die("provision", "option '%s' needs a value", a);
        i++;
        if (strcmp(a, "--product") == 0)
            product = v;
        else if (strcmp(a, "--count") == 0)
            r.count = number(a, v, &end);
        else if (strcmp(a, "--first") == 0)
            r.first = number(a, v, &end);
        else if (strcmp(a, "--threads") == 0)
            r.threads = (int)strtol(v, &end, 10);
        else if (strcmp(a, "--out") == 0)
            r.out_dir = v;
        else if (strcmp(a, "--prefix") == 0)
            r.prefix = v;
        else if (strcmp(a, "--key-type") == 0)
            r.key_type = v;
        else if (strcmp(a, "--manifest") == 0)
            manifest_path = v;
        else
            usage_die("provision", "unknown option '%s'", a);
        if (end != NULL && (*end != '\0' || end == v || v[0] == '-'))
            usage_die("provision", "%s: '%s' is not a number", a, v);
    }
    if (product == NULL)
        usage_die("provision", "needs --product OEM/PRODUCT and --count N");
    if ((slash = strchr(product, '/')) == NULL || slash == product || slash[1] == '\0' ||
        (size_t)(slash - product) > GUARDIAN_ID_MAX || strlen(slash + 1) > GUARDIAN_ID_MAX)
        usage_die("provision", "--product must be OEM/PRODUCT (each 1..%d characters), not '%s'", GUARDIAN_ID_MAX,
                  product);
    if (r.count < 1 || r.count > (1ULL << 40))
        usage_die("provision", "--count must be 1..2^40");
    if (r.first > PART_NUMBER_MAX || r.count - 1 > PART_NUMBER_MAX - r.first)
        usage_die("provision", "--first %llu --count %llu: the last part would be beyond the largest part number, "
                  "%llu (2^63-1); lower --first or --count",
                  r.first, r.count, (unsigned long long)PART_NUMBER_MAX);
    if (r.threads < 1 || r.threads > MAX_THREADS)
        usage_die("provision", "--threads must be 1..%d", MAX_THREADS);
    if (strcmp(r.key_type, "p256") != 0 && strcmp(r.key_type, "p384") != 0 && strcmp(r.key_type, "rsa2048") != 0)
        usage_die("provision", "--key-type must be p256, p384 or rsa2048, not '%s'", r.key_type);
    if (strlen(r.prefix) > 40 || strspn(r.prefix, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:") !=
                                     strlen(r.prefix))
        usage_die("provision", "--prefix may hold up to 40 of A-Z a-z 0-9 - . _ :");
    memcpy(r.oem, product, (size_t)(slash - product));
    snprintf(r.product, sizeof(r.product), "%s", slash + 1);
    need_token();
    if (r.out_dir == NULL) {
        snprintf(default_out, sizeof(default_out), "certs-%s-%s", r.oem, r.product);
        r.out_dir = default_out;
    }
    /* Before the login and the first unit: a directory no certificate can
     * be written to would cost a unit per part. */
    check_output_dir(r.out_dir);
    if (manifest_path == NULL) {
        if ((size_t)snprintf(manifest_default, sizeof(manifest_default), "%s/manifest.jsonl", r.out_dir) >=
            sizeof(manifest_default))
            die("--out %s: path too long", r.out_dir);
        manifest_path = manifest_default;
    }
    r.manifest = manifest_open(manifest_path, r.out_dir);
    pthread_mutex_init(&r.err_lock, NULL);

    login(CKU_USER);
    find_package(&r);
    atomic_store(&r.next, r.first);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    t0 = now_s();
    for (n_threads = 0; n_threads < r.threads; n_threads++)
        if (pthread_create(&th[n_threads], NULL, worker, &r) != 0)
            break;
    if (n_threads == 0)
        die("cannot start a worker thread");
    for (;;) {
        unsigned long long done = atomic_load(&r.issued) + atomic_load(&r.skipped) + atomic_load(&r.failed);
        if (done >= r.count || atomic_load(&r.stop) || interrupted)
            break;
        progress(&r, t0, 0, &last_decile);
        usleep(200 * 1000);
        if (!manifest_flush(r.manifest)) {
            record_error(&r, CKR_FUNCTION_FAILED, "(manifest)");
            atomic_store(&r.stop, 1);
        }
    }
    /* After an error, a worker may never come back: p11-kit-client.so 0.24
     * leaves a thread waiting for ever on a connection that died under
     * another thread's call (measured: kill -9 of the Guardian service with
     * two threads; tests/tools/test_service_faults.sh).  Its part was not
     * issued to us, so stop without it rather than hang the line. */
    for (int i = 0; i < n_threads; i++) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 10;
        if (!atomic_load(&r.stop) || interrupted) {
            pthread_join(th[i], NULL);
        } else if (pthread_timedjoin_np(th[i], NULL, &deadline) != 0) {
            fprintf(stderr, PROG ": stopped at part %s: %s (%s); a call through the module has not returned 10 s "
                                 "later: exiting without it\n",
                    r.first_error_part, ckr(r.first_error), stop_reason(r.first_error));
            manifest_flush(r.manifest); /* the certificates written so far */
            fflush(stdout);
            _exit(1);
        }
    }
    progress(&r, t0, 1, &last_decile);
    if (!manifest_flush(r.manifest))
        record_error(&r, CKR_FUNCTION_FAILED, "(manifest)");
    manifest_close(r.manifest);

    {
        double el = now_s() - t0;
        unsigned long long issued = atomic_load(&r.issued), skipped = atomic_load(&r.skipped);
        if (json_out) {
            struct ctl_json j;
            char msg[512];
            ctl_json_begin(&j, stdout);
            ctl_json_object(&j, NULL);
            ctl_json_string(&j, "oem_id", r.oem);
            ctl_json_string(&j, "product_id", r.product);
            ctl_json_string(&j, "out", r.out_dir);
            ctl_json_string(&j, "manifest", manifest_path);
            ctl_json_uint(&j, "first", r.first);
            ctl_json_uint(&j, "count", r.count);
            ctl_json_uint(&j, "issued", issued);
            ctl_json_uint(&j, "skipped", skipped);
            ctl_json_uint(&j, "failed", atomic_load(&r.failed));
            ctl_json_int(&j, "threads", n_threads);
            ctl_json_real(&j, "elapsed_s", el);
            ctl_json_real(&j, "rate_per_s", el > 0 ? (double)issued / el : 0.0);
            ctl_json_bool(&j, "interrupted", interrupted && r.first_error == CKR_OK);
            if (r.first_error != CKR_OK) {
                snprintf(msg, sizeof(msg), "stopped at part %s: %s", r.first_error_part, stop_reason(r.first_error));
                ctl_json_object(&j, "error");
                ctl_json_string(&j, "code", ckr(r.first_error));
                ctl_json_string(&j, "message", msg);
                ctl_json_string(&j, "part", r.first_error_part);
                ctl_json_close(&j);
            }
            ctl_json_end(&j);
        } else {
            printf("provisioned %llu parts in %.1f s (%.0f certs/s, %d threads); %llu already done; certificates in "
                   "%s/\n",
                   issued, el, el > 0 ? (double)issued / el : 0.0, n_threads, skipped, r.out_dir);
        }
        if (r.first_error != CKR_OK) {
            const char *why = stop_reason(r.first_error);
            fprintf(stderr, PROG ": stopped at part %s: %s (%s)\n", r.first_error_part, ckr(r.first_error), why);
            return 1;
        }
        if (interrupted) {
            fprintf(stderr, PROG ": interrupted after %llu of %llu parts; run the same command again to resume\n",
                    issued + skipped, r.count);
            return EXIT_INTERRUPTED;
        }
    }
    return 0;
}
