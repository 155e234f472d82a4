/*
 * ctl_json.c — the tools' JSON writer and ISO 8601 times (ctl_json.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl_json.h"

void ctl_iso8601(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if ((int64_t)tt != t || gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%lld", (long long)t);
}

/* The length of the valid UTF-8 sequence at s (RFC 3629: no overlong form,
 * no surrogate, nothing above U+10FFFF), 0 if none starts there. */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

size_t ctl_json_quote(const char *s, size_t len, char *out, size_t cap)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
#define PUT(str, n)                                                                                                  \
    do {                                                                                                             \
        if (o + (n) >= cap)                                                                                          \
            return 0;                                                                                                \
        memcpy(out + o, (str), (n));                                                                                 \
        o += (n);                                                                                                    \
    } while (0)
    PUT("\"", 1);
    for (size_t i = 0; i < len;) {
        unsigned char c = u[i];
        size_t n;
        char esc[8];
        switch (c) {
        case '"': PUT("\\\"", 2); i++; continue;
        case '\\': PUT("\\\\", 2); i++; continue;
        case '\b': PUT("\\b", 2); i++; continue;
        case '\f': PUT("\\f", 2); i++; continue;
        case '\n': PUT("\\n", 2); i++; continue;
        case '\r': PUT("\\r", 2); i++; continue;
        case '\t': PUT("\\t", 2); i++; continue;
        default: break;
        }
        if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            PUT(esc, 6);
            i++;
            continue;
        }
        n = utf8_len(u + i, len - i);
        if (n == 0) {
            PUT("\\ufffd", 6); /* not UTF-8: the replacement character, never the raw byte */
            i++;
            continue;
        }
        PUT(u + i, n);
        i += n;
    }
    PUT("\"", 1);
#undef PUT
    out[o] = '\0';
    return o;
}

static void sep(struct ctl_json *j, const char *key)
{
    if (j->had[j->depth] & 1)
        fputc(',', j->f);
    j->had[j->depth] |= 1;
    if (key != NULL) {
        char q[256];
        if (ctl_json_quote(key, strlen(key), q, sizeof(q)) == 0)
            snprintf(q, sizeof(q), "\"?\"");
        fprintf(j->f, "%s:", q);
    }
}

void ctl_json_begin(struct ctl_json *j, FILE *f)
{
    memset(j, 0, sizeof(*j));
    j->f = f;
}

static void open_level(struct ctl_json *j, const char *key, char c)
{
    sep(j, key);
    fputc(c, j->f);
    if (j->depth + 1 < CTL_JSON_DEPTH)
        j->depth++;
    /* Which bracket closes this level: kept in the high bit of had[]. */
    j->had[j->depth] = c == '[' ? 0x80 : 0;
}

void ctl_json_object(struct ctl_json *j, const char *key)
{
    open_level(j, key, '{');
}

void ctl_json_array(struct ctl_json *j, const char *key)
{
    open_level(j, key, '[');
}

void ctl_json_close(struct ctl_json *j)
{
    if (j->depth == 0)
        return;
    fputc(j->had[j->depth] & 0x80 ? ']' : '}', j->f);
    j->depth--;
}

void ctl_json_string_n(struct ctl_json *j, const char *key, const char *s, size_t len)
{
    char buf[1024], *big = NULL, *q = buf;
    size_t cap = sizeof(buf);
    if (len * 6 + 3 > cap) {
        cap = len * 6 + 3;
        big = malloc(cap);
        q = big;
    }
    sep(j, key);
    if (q == NULL || ctl_json_quote(s, len, q, cap) == 0)
        fputs("null", j->f);
    else
        fputs(q, j->f);
    free(big);
}

void ctl_json_string(struct ctl_json *j, const char *key, const char *s)
{
    if (s == NULL)
        ctl_json_null(j, key);
    else
        ctl_json_string_n(j, key, s, strlen(s));
}

void ctl_json_hex(struct ctl_json *j, const char *key, const unsigned char *b, size_t len)
{
    sep(j, key);
    fputc('"', j->f);
    for (size_t i = 0; i < len; i++)
        fprintf(j->f, "%02x", b[i]);
    fputc('"', j->f);
}

void ctl_json_uint(struct ctl_json *j, const char *key, unsigned long long v)
{
    sep(j, key);
    fprintf(j->f, "%llu", v);
}

void ctl_json_int(struct ctl_json *j, const char *key, long long v)
{
    sep(j, key);
    fprintf(j->f, "%lld", v);
}

void ctl_json_real(struct ctl_json *j, const char *key, double v)
{
    sep(j, key);
    if (!isfinite(v))
        fputs("null", j->f);
    else
        fprintf(j->f, "%.3f", v);
}

void ctl_json_bool(struct ctl_json *j, const char *key, int v)
{
    sep(j, key);
    fputs(v ? "true" : "false", j->f);
}

void ctl_json_null(struct ctl_json *j, const char *key)
{
    sep(j, key);
    fputs("null", j->f);
}

void ctl_json_time(struct ctl_json *j, const char *key, int64_t t)
{
    char iso[32], k[96];
    ctl_iso8601(t, iso);
    ctl_json_string(j, key, iso);
    snprintf(k, sizeof(k), "%s_unix", key);
    ctl_json_int(j, k, (long long)t);
}

void ctl_json_end(struct ctl_json *j)
{
    while (j->depth > 0)
        ctl_json_close(j);
    fputc('\n', j->f);
    fflush(j->f);
}
