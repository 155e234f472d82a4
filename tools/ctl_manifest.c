/*
 * ctl_manifest.c — the provisioning manifest (ctl_manifest.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ctl_manifest.h"
#include "guardianctl.h"

struct manifest {
    const char *path;
    int fd, dir_fd;
    char **known; /* device IDs already listed, sorted */
    size_t n_known;
    pthread_mutex_t lock;
    char *pending; /* lines not yet written */
    size_t pending_len, pending_cap;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The device IDs of the manifest's lines (our own writer's: the ID is the
 * first member and holds no escaped character, --prefix allows none). */
static void read_known(struct manifest *m, const char *text, size_t len)
{
    static const char key[] = "{\"device_id\":\"";
    size_t cap = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = (size_t)(nl - p);
        if (l > sizeof(key) - 1 && memcmp(p, key, sizeof(key) - 1) == 0) {
            const char *id = p + sizeof(key) - 1, *q = memchr(id, '"', l - (sizeof(key) - 1));
            if (q != NULL) {
                if (m->n_known == cap) {
                    cap = cap ? 2 * cap : 256;
                    m->known = realloc(m->known, cap * sizeof(*m->known));
                    if (m->known == NULL)
                        die("out of memory");
                }
                if ((m->known[m->n_known++] = strndup(id, (size_t)(q - id))) == NULL)
                    die("out of memory");
            }
        }
        p = nl + 1;
    }
    if (m->n_known > 1) /* qsort and bsearch want a real array, even of none */
        qsort(m->known, m->n_known, sizeof(*m->known), by_name);
}

struct manifest *manifest_open(const char *path, const char *out_dir)
{
    struct manifest *m = calloc(1, sizeof(*m));
    struct stat st;
    char *text;
    ssize_t got;
    size_t keep;

    if (m == NULL)
        die("out of memory");
    m->path = path;
    pthread_mutex_init(&m->lock, NULL);
    m->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (m->fd < 0 || fstat(m->fd, &st) != 0)
        die("cannot open the manifest %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        die("the manifest %s is not a regular file", path);
    m->dir_fd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (m->dir_fd < 0)
        die("cannot open %s: %s", out_dir, strerror(errno));
    text = malloc((size_t)st.st_size + 1);
    if (text == NULL)
        die("out of memory");
    got = pread(m->fd, text, (size_t)st.st_size, 0);
    if (got != (ssize_t)st.st_size)
        die("cannot read the manifest %s: %s", path, got < 0 ? strerror(errno) : "short read");
    /* A last line without its newline was cut by a crash: drop it (its file,
     * if any, is listed again by manifest_recover). */
    for (keep = (size_t)got; keep > 0 && text[keep - 1] != '\n'; keep--)
        ;
    if (keep != (size_t)got) {
        if (ftruncate(m->fd, (off_t)keep) != 0 || fsync(m->fd) != 0)
            die("cannot cut the manifest %s's last, incomplete line: %s", path, strerror(errno));
        fprintf(stderr, PROG ": the manifest %s ended in an incomplete line (a crash): dropped it\n", path);
    }
    read_known(m, text, keep);
    free(text);
    return m;
}

static void append(struct manifest *m, const char *line, size_t len)
{
    pthread_mutex_lock(&m->lock);
    if (m->pending_len + len > m->pending_cap) {
        size_t cap = m->pending_cap ? m->pending_cap : 65536;
        while (cap < m->pending_len + len)
            cap *= 2;
        m->pending = realloc(m->pending, cap);
        if (m->pending == NULL)
            die("out of memory");
        m->pending_cap = cap;
    }
    memcpy(m->pending + m->pending_len, line, len);
    m->pending_len += len;
    pthread_mutex_unlock(&m->lock);
}

/* The line of certificate x (DER der), or 0 when it cannot be made. */
static int line_of(struct manifest *m, const char *id, X509 *x, const unsigned char *der, size_t len, int64_t issued)
{
    unsigned char md[32];
    char file[256], *line = NULL, *serial;
    size_t line_len = 0;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    struct ctl_json j;
    FILE *f;

    serial = bn ? BN_bn2hex(bn) : NULL;
    BN_free(bn);
    if (serial == NULL || EVP_Digest(der, len, md, NULL, EVP_sha256(), NULL) != 1 ||
        (f = open_memstream(&line, &line_len)) == NULL) {
        OPENSSL_free(serial);
        return 0;
    }
    snprintf(file, sizeof(file), "%s.pem", id);
    ctl_json_begin(&j, f);
    ctl_json_object(&j, NULL);
    ctl_json_string(&j, "device_id", id);
    ctl_json_string(&j, "serial", serial);
    ctl_json_string(&j, "file", file);
    ctl_json_hex(&j, "sha256", md, sizeof(md));
    ctl_json_time(&j, "issued", issued);
    ctl_json_end(&j);
    fclose(f);
    OPENSSL_free(serial);
    append(m, line, line_len);
    free(line);
    return 1;
}

void manifest_add(struct manifest *m, const char *id, const unsigned char *der, size_t len, int64_t issued)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || !line_of(m, id, x, der, len, issued))
        fprintf(stderr, PROG ": warning: no manifest line for %s (its certificate does not parse)\n", id);
    X509_free(x);
}

void manifest_recover(struct manifest *m, const char *id, const char *path)
{
    const char *key = id;
    FILE *f;
    X509 *x = NULL;
    unsigned char *der = NULL;
    int len = 0;
    struct stat st;

    if (m->n_known > 0 && bsearch(&key, m->known, m->n_known, sizeof(*m->known), by_name) != NULL)
        return;
    f = fopen(path, "r");
    if (f != NULL) {
        x = PEM_read_X509(f, NULL, NULL, NULL);
        if (fstat(fileno(f), &st) != 0)
            st.st_mtime = 0;
        fclose(f);
    }
    if (x != NULL)
        len = i2d_X509(x, &der);
    if (len <= 0 || !line_of(m, id, x, der, (size_t)len, (int64_t)st.st_mtime))
        fprintf(stderr, PROG ": warning: %s exists but is no certificate: not in the manifest %s\n", path, m->path);
    OPENSSL_free(der);
    X509_free(x);
}

int manifest_flush(struct manifest *m)
{
    char *buf;
    size_t len, off = 0;
    pthread_mutex_lock(&m->lock);
    buf = m->pending;
    len = m->pending_len;
    m->pending = NULL;
    m->pending_len = m->pending_cap = 0;
    pthread_mutex_unlock(&m->lock);
    if (len == 0) {
        free(buf);
        return 1;
    }
    /* The files these lines name were renamed into place before their lines
     * were added: once syncfs returns they are on disk, so the lines may go. */
    if (syncfs(m->dir_fd) != 0) {
        fprintf(stderr, PROG ": cannot sync the certificates' file system: %s\n", strerror(errno));
        free(buf);
        return 0;
    }
    while (off < len) {
        ssize_t n = write(m->fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, PROG ": cannot write the manifest %s: %s\n", m->path, strerror(errno));
            free(buf);
            return 0;
        }
        off += (size_t)n;
    }
    free(buf);
    if (fsync(m->fd) != 0) {
        fprintf(stderr, PROG ": cannot sync the manifest %s: %s\n", m->path, strerror(errno));
        return 0;
    }
    return 1;
}

void manifest_close(struct manifest *m)
{
    if (m == NULL)
        return;
    close(m->fd);
    close(m->dir_fd);
    for (size_t i = 0; i < m->n_known; i++)
        free(m->known[i]);
    free(m->known);
    free(m->pending);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
