/*
 * report_write.h — the writer of the signed audit report's lines
 * (docs/audit-report.md): every line the Guardian writes, in its one
 * canonical spelling.  The module builds the report with these
 * (mechs/audit_export.c); the OEM-side reader (tools/report.c) parses a line,
 * formats what it parsed with the same function and refuses the line unless
 * the two are byte for byte the same — so there is one writer and one reader.
 *
 * Pure: needs store.h's record and product structs only; no PKCS#11 calls, no
 * SQLite, no OpenSSL.
 */
#ifndef GUARDIAN_MECHS_REPORT_WRITE_H
#define GUARDIAN_MECHS_REPORT_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* What the Guardian writes: version 3, which adds a `template SEQ BASE64`
 * line per in-clear IMPORT record (the package's DeviceCertTemplate as the
 * Guardian recorded it, so that each release's certificate profile — its
 * device-identity extension setting, its subject — is in the signed report).
 * Version 2 (record lines naming the operator of each record of encoding 2;
 * EXPORT records, type 7, new in version 2 without a new number) and version
 * 1 (reports made before schema 4: every record of encoding 1, 14 fields,
 * types 1..5) are still read (docs/audit-report.md).  OUTCOME (8) and
 * REISSUE (9), of schema 6, are record lines of the same 15 fields. */
#define REPORT_MAGIC "GUARDIAN AUDIT REPORT 3"
#define REPORT_MAGIC_2 "GUARDIAN AUDIT REPORT 2"
#define REPORT_MAGIC_1 "GUARDIAN AUDIT REPORT 1"

/* Record types by their report name; [0] is NULL (a redacted line has no type). */
#define REPORT_TYPE_MAX GUARDIAN_AUDIT_JOIN
extern const char *const report_type_names[REPORT_TYPE_MAX + 1];
/* The base64 alphabet (standard, '=' padding). */
extern const char report_base64_alphabet[65];

/* Non-zero for a byte an ID is written with as it is (A-Z a-z 0-9 . _ - :);
 * any other byte is written %XX. */
int report_id_char(unsigned char c);
/* Lower-case hex of `n` bytes at `p`, NUL-terminated; returns the NUL. */
char *report_hex(char *p, const uint8_t *b, size_t n);

/* Each function writes one canonical line with its '\n' (NUL-terminated) and
 * returns its length, or 0 if `cap` is too small or the value cannot be
 * written (an ID of 0 or more than 64 bytes, an unknown record type). */

/* The four header lines: magic, "exported T", "scope all" or "scope
 * OEM/PRODUCT" (oem_id NULL: all), "head SEQ HASH" (zeros for an empty trail). */
size_t report_format_header(int64_t exported, const char *oem_id, const char *product_id, uint64_t head_seq,
                            const uint8_t head_hash[GUARDIAN_HASH_LEN], char *out, size_t cap);
/* "record SEQ TYPE TIME OEM PRODUCT SERIAL DEVICE DIGEST PACKAGE-ID RELEASE
 * UNITS [OPERATOR] PREV-HASH HASH": OPERATOR (the name, or "-" for none) for a
 * record of encoding 2 only, so that the line shows exactly what its hash
 * covers; OEM and PRODUCT "-" for a CREDENTIAL record (it has none) and for
 * the EXPORT record of the whole trail (an EXPORT record's scope ID "-" is
 * written "%2D"). */
size_t report_format_record(const struct guardian_audit_record *r, char *out, size_t cap);
/* A record outside a restricted report's scope: "redacted SEQ PREV-HASH HASH". */
size_t report_format_redacted(const struct guardian_audit_record *r, char *out, size_t cap);
size_t report_format_product(const struct guardian_product *p, char *out, size_t cap);
/* "certificate SEQ BASE64"; needs 4 * ceil(der_len / 3) + 36 bytes. */
size_t report_format_certificate(uint64_t seq, const uint8_t *der, size_t der_len, char *out, size_t cap);
/* "template SEQ BASE64": the DeviceCertTemplate DER of the package that the
 * IMPORT record SEQ imported; needs 4 * ceil(der_len / 3) + 33 bytes. */
size_t report_format_template(uint64_t seq, const uint8_t *der, size_t der_len, char *out, size_t cap);
/* "signature BASE64" of a DER ECDSA-Sig-Value. */
size_t report_format_signature(const uint8_t *sig, size_t sig_len, char *out, size_t cap);

/* "OEM/PRODUCT" with each ID percent-encoded as in a record line (no '\n'). */
size_t report_format_scope(const char *oem_id, const char *product_id, char *out, size_t cap);
/* Standard base64 with padding, no line breaks; NUL-terminated; the length of
 * the text, or 0 if `cap` < 4 * ceil(len / 3) + 1. */
size_t report_base64(const uint8_t *in, size_t len, char *out, size_t cap);

#endif /* GUARDIAN_MECHS_REPORT_WRITE_H */
