/*
 * journal.h — the issue journal's record codec, internal to store/ (and its
 * fuzz target, tests/fuzz/fuzz_journal.c).
 *
 * A file-backed store appends each ISSUE to its process's issue journal,
 * <state_dir>/issued-<pid>-<time>.journal, with one write() of one record,
 * and folds the journal into the audit trail later (store.c).  The journal
 * lives in a directory the centre's operator may be able to write, so the
 * parser treats it as hostile: every length is checked against what is left
 * before a byte is read.  Format (docs/audit-format.md, "The issue journal"):
 *
 *   "GDJ1" | u32 body length | body | SHA-256(body)
 *   body = serial u64 | time i64 | u8 n + OEM ID | u8 n + product ID
 *          | u8 n + device ID | u16 n + certificate (DER)
 *
 *   "GDJ2" | u32 body length | body | SHA-256(body)
 *   body = the GDJ1 body | u8 n + operator (1..32 bytes)
 *
 *   "GDJ3" | u32 body length | body | SHA-256(body)
 *   body = the GDJ1 body | u8 n + operator (0..32 bytes) | Guardian (32 bytes)
 *
 * GDJ2 carries the operator who issued the certificate (the ISSUE record's
 * operator); a record without one is GDJ1, byte for byte what journals held
 * before operators were recorded.  GDJ3 also carries the Guardian that issued
 * it (the SHA-256 of its certificate A: the ISSUE record's Guardian, schema 9
 * on), with or without an operator; a record without a Guardian is GDJ2 or
 * GDJ1 as before.  So each record has exactly one encoding and a journal left
 * by an earlier version still folds.  Integers big-endian.
 * Only libcrypto (SHA-256), no SQLite, no logging.
 */
#ifndef GUARDIAN_STORE_JOURNAL_H
#define GUARDIAN_STORE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define GUARDIAN_JOURNAL_MAGIC "GDJ1"   /* without an operator */
#define GUARDIAN_JOURNAL_MAGIC_2 "GDJ2" /* with one */
#define GUARDIAN_JOURNAL_MAGIC_3 "GDJ3" /* with the Guardian, and an operator or none */
#define GUARDIAN_JOURNAL_HEADER 8 /* magic, body length */
/* The fixed part of a GDJ1 body and its four length fields: 8 + 8 + 1 + 1 + 1 + 2. */
#define GUARDIAN_JOURNAL_BODY_FIXED 21
/* Every field at least one byte long (GDJ1: 25; GDJ2, with the operator's
 * length and at least one byte of it: 27). */
#define GUARDIAN_JOURNAL_BODY_MIN (GUARDIAN_JOURNAL_BODY_FIXED + 4)
#define GUARDIAN_JOURNAL_BODY_2_MIN (GUARDIAN_JOURNAL_BODY_MIN + 2)
/* GDJ3: the operator's length (its bytes may be none) and the Guardian. */
#define GUARDIAN_JOURNAL_BODY_3_MIN (GUARDIAN_JOURNAL_BODY_MIN + 1 + GUARDIAN_HASH_LEN)
#define GUARDIAN_JOURNAL_BODY_1_MAX \
    (GUARDIAN_JOURNAL_BODY_FIXED + 2 * GUARDIAN_ID_MAX + GUARDIAN_DEVICE_ID_MAX + GUARDIAN_CERT_MAX)
#define GUARDIAN_JOURNAL_BODY_2_MAX (GUARDIAN_JOURNAL_BODY_1_MAX + 1 + GUARDIAN_OPERATOR_MAX)
#define GUARDIAN_JOURNAL_BODY_MAX (GUARDIAN_JOURNAL_BODY_2_MAX + GUARDIAN_HASH_LEN)
#define GUARDIAN_JOURNAL_RECORD_MAX (GUARDIAN_JOURNAL_HEADER + GUARDIAN_JOURNAL_BODY_MAX + GUARDIAN_HASH_LEN)

/* One parsed record.  device_id and cert point into the parsed buffer. */
struct guardian_journal_record {
    uint64_t serial; /* 1..INT64_MAX */
    int64_t time;
    char oem_id[GUARDIAN_ID_MAX + 1];     /* 1..64 bytes, no NUL inside */
    char product_id[GUARDIAN_ID_MAX + 1]; /* 1..64 bytes, no NUL inside */
    const uint8_t *device_id;             /* 1..128 bytes */
    size_t device_id_len;
    const uint8_t *cert;                  /* 1..GUARDIAN_CERT_MAX bytes */
    size_t cert_len;
    char operator_name[GUARDIAN_OPERATOR_MAX + 1]; /* GDJ2: 1..32 bytes (guardian_operator_name_ok); GDJ3: 0..32;
                                                      GDJ1: "" */
    uint8_t guardian[GUARDIAN_HASH_LEN];           /* GDJ3; zeros otherwise */
    bool has_guardian;                             /* GDJ3 */
};

enum guardian_journal_parse {
    GUARDIAN_JOURNAL_OK = 0,   /* a whole, valid record */
    GUARDIAN_JOURNAL_SHORT,    /* fewer bytes than the record its header announces (a cut write) */
    GUARDIAN_JOURNAL_BAD,      /* not a valid record: magic, length, hash or a field */
};

/* Encodes one record into buf (at least GUARDIAN_JOURNAL_RECORD_MAX bytes, or
 * `cap` if smaller and enough): GDJ3 when `guardian` is not NULL; otherwise
 * GDJ2 when `operator_name` is a name, GDJ1 when it is "" or NULL.  The length written, or 0 if a field is out of its
 * range (the same ranges the parser accepts) or SHA-256 failed. */
size_t guardian_journal_encode(uint8_t *buf, size_t cap, const char *oem_id, const char *product_id,
                               uint64_t serial, int64_t t, const uint8_t *device_id, size_t device_id_len,
                               const uint8_t *cert, size_t cert_len, const char *operator_name,
                               const uint8_t *guardian);

/* Parses the record at the start of buf[0..len).  GUARDIAN_JOURNAL_OK: *r is
 * filled and *used is the record's length; otherwise *r and *used are zero.
 * Reads no byte outside buf[0..len). */
enum guardian_journal_parse guardian_journal_parse(const uint8_t *buf, size_t len, struct guardian_journal_record *r,
                                                   size_t *used);

/* The SubjectPublicKeyInfo inside a certificate's DER (cert_len bytes): the
 * TBSCertificate's seventh element (after the optional [0] version, serial,
 * signature algorithm, issuer, validity and subject), its whole TLV, into
 * *spki (pointing into cert) and *spki_len.  Non-zero on success; 0 when the
 * bytes are not that shape (DER definite lengths of at most 4 bytes, every
 * length within what is left).  The device index (schema 6) keys re-asks by
 * the SHA-256 of these bytes, taken from a journal's certificate or an ISSUE
 * record's: hostile input, read like the journal's records.  Reads no byte
 * outside cert[0..cert_len). */
int guardian_journal_cert_spki(const uint8_t *cert, size_t cert_len, const uint8_t **spki, size_t *spki_len);

#endif /* GUARDIAN_STORE_JOURNAL_H */
