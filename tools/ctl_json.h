/*
 * ctl_json.h — the one JSON writer of the tools (guardianctl's --json, the
 * provisioning manifest) and the one formatter of times a person reads.
 *
 * Why a writer of our own: the tools link only OpenSSL, and what they write is
 * small and flat; what matters is that every string is escaped as RFC 8259
 * says (", \, and every control character U+0000..U+001F as \uXXXX or its
 * short form; DEL too), and that text which is not valid UTF-8 never reaches
 * a parser as such: a byte that does not start or continue a valid UTF-8
 * sequence is written as U+FFFD.  Valid UTF-8 passes through unchanged.
 *
 * Times: ISO 8601 in UTC, "2026-12-01T13:45:00Z" (ctl_iso8601), the form
 * docs/guardianctl.md gives for every time guardianctl and guardian-wrap
 * print; a JSON object carries a time as that string under its name and as
 * the integer seconds since 1970 under NAME_unix (ctl_json_time), for a
 * program that computes with it.
 *
 * A writer holds one document; members and elements are separated by commas
 * as they come (the writer remembers, per level, whether one came before).
 * Output goes to a FILE through stdio; ctl_json_end ends the line and
 * flushes, so that a reader of JSON lines (--watch, the manifest) sees whole
 * lines only.
 */
#ifndef CTL_JSON_H
#define CTL_JSON_H

#include <stdint.h>
#include <stdio.h>

#define CTL_JSON_DEPTH 16

struct ctl_json {
    FILE *f;
    int depth;
    unsigned char had[CTL_JSON_DEPTH]; /* [level]: bit 0 a member or element was written, bit 7 an array */
};

/* "YYYY-MM-DDTHH:MM:SSZ" of t (seconds since 1970, UTC); the decimal number
 * when gmtime cannot represent it. */
void ctl_iso8601(int64_t t, char out[32]);

void ctl_json_begin(struct ctl_json *j, FILE *f);
/* `key` is the member's name inside an object, NULL inside an array or at the top. */
void ctl_json_object(struct ctl_json *j, const char *key);
void ctl_json_array(struct ctl_json *j, const char *key);
void ctl_json_close(struct ctl_json *j); /* the innermost object or array */
void ctl_json_string(struct ctl_json *j, const char *key, const char *s);
void ctl_json_string_n(struct ctl_json *j, const char *key, const char *s, size_t len);
/* Bytes as lowercase hex, a string. */
void ctl_json_hex(struct ctl_json *j, const char *key, const unsigned char *b, size_t len);
void ctl_json_uint(struct ctl_json *j, const char *key, unsigned long long v);
void ctl_json_int(struct ctl_json *j, const char *key, long long v);
/* A finite number with up to 3 decimals (rates); null when not finite. */
void ctl_json_real(struct ctl_json *j, const char *key, double v);
void ctl_json_bool(struct ctl_json *j, const char *key, int v);
void ctl_json_null(struct ctl_json *j, const char *key);
/* KEY: ISO 8601 string, KEY_unix: the integer. */
void ctl_json_time(struct ctl_json *j, const char *key, int64_t t);
/* Ends the document: closes what is open, a newline, fflush. */
void ctl_json_end(struct ctl_json *j);
/* The escaped form of s[0..len) as a JSON string (quotes included) into
 * out (cap bytes, NUL-terminated); the length written, or 0 when it does
 * not fit.  What ctl_json_string writes; for tests and the manifest. */
size_t ctl_json_quote(const char *s, size_t len, char *out, size_t cap);

#endif /* CTL_JSON_H */
