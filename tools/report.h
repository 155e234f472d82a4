/*
 * report.h — the signed audit report (docs/audit-report.md), read back,
 * strictly, by `guardian-wrap verify-report` on the OEM's side.  The lines are
 * written inside the module (mechs/audit_export.c) by mechs/report_write.c,
 * which this reader compiles too, so that there is exactly one way to write a
 * line: the reader parses a line, formats what it parsed with the writer and
 * refuses the line unless the two are byte for byte the same.
 *
 * Needs libcrypto, mechs/report_write.c and store/audit.c (record hashes)
 * only: no SQLite, no module.
 *
 * The reader is a fuzz target (tests/fuzz/fuzz_report.c): it treats the report
 * as hostile input, with limits on size, line length and counts.
 */
#ifndef GUARDIAN_TOOLS_REPORT_H
#define GUARDIAN_TOOLS_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/x509.h>

#include "report_write.h" /* the lines, written: mechs/report_write.c */
#include "store.h"

#define REPORT_MAX_BYTES ((size_t)1 << 31)  /* 2 GiB */
#define REPORT_MAX_LINE 24576               /* a 16 KiB certificate in base64, and its prefix */
#define REPORT_MAX_RECORDS ((size_t)1 << 21) /* about a million certificates per report */
#define REPORT_MAX_PRODUCTS 1024
#define REPORT_MAX_PACKAGES 4096
#define REPORT_MAX_PEM_LINES 256             /* the Guardian certificate: 16 KiB */
#define REPORT_MAX_OPERATORS 256             /* distinct operators named by the records */
#define REPORT_MAX_GUARDIANS 256             /* distinct Guardians named by the records (encoding 3) */

/* Parses one record line (without its '\n') strictly: NULL on success, else
 * why not.  14 fields make a record of encoding 1, 15 (with the operator) one
 * of encoding 2 (r->encoding).  `dev_hex`, if not NULL, points at the device
 * ID's hex (or NULL). */
const char *report_parse_record(const char *s, size_t len, struct guardian_audit_record *r, const char **dev_hex);

/* ---- verifying (guardian-wrap verify-report) -------------------------------- */

/* A package file the OEM made, as it knows it (guardian-wrap decodes it). */
/* A group package's members, at most (GUARDIAN_GROUP_MAX, mechs/package.h). */
#define REPORT_MAX_MEMBERS 16

struct report_package {
    const char *name;                           /* file name, for messages */
    uint8_t digest[GUARDIAN_HASH_LEN];          /* SHA-256 of the file */
    uint8_t package_id[GUARDIAN_PACKAGE_ID_LEN];
    char oem_id[GUARDIAN_ID_MAX + 1];
    char product_id[GUARDIAN_ID_MAX + 1];
    uint32_t release_version;
    uint64_t authorised_units;
    uint8_t *cert_template;                     /* its DeviceCertTemplate, DER (NULL: not compared) */
    size_t cert_template_len;
    /* A group package: its members' certificate digests (SHA-256 of each A);
     * n_members 0 for a one-Guardian package.  Every IMPORT and JOIN of it in
     * the trail must name one of them (docs/audit-report.md). */
    uint8_t members[REPORT_MAX_MEMBERS][GUARDIAN_HASH_LEN];
    size_t n_members;
};

/* --ca-chain / --root given at most this many times each. */
#define REPORT_MAX_CHAINS 16

struct report_inputs {
    X509 *guardian;                 /* the Guardian certificate the OEM trusts (A); NULL: the embedded one (fuzzing) */
    X509 *guardian_signing;         /* its signing certificate S, if the OEM has it; NULL: the report's */
    STACK_OF(X509) *ca_chain;       /* production CA first, then towards the root; NULL: certificates unchecked */
    X509 *root;                     /* OEM root: build every chain up to it; NULL: production CA only */
    /* A centre-wide report holds the certificates of several production CAs
     * (several OEMs, or an OEM's CA rolled over): further chains and roots,
     * given beside ca_chain and root.  Each certificate is checked against
     * the chain whose production CA issued it, up to any of the roots. */
    STACK_OF(X509) *more_chains[REPORT_MAX_CHAINS - 1];
    size_t n_more_chains;
    X509 *more_roots[REPORT_MAX_CHAINS - 1];
    size_t n_more_roots;
    const struct report_package *packages;
    size_t n_packages;
    const char *product;            /* "OEM/PRODUCT" for `authorised` */
    uint64_t authorised;            /* with `product`: the OEM's total for that product */
    const char *device_ext_oid;     /* for releases whose template the report does not carry (versions 1, 2):
                                       their device-extension OID; NULL: the legacy default */
    const uint8_t *previous;        /* an earlier report of this Guardian: this one must extend it; NULL: none */
    size_t previous_len;
    const char *previous_name;
    FILE *out;                      /* summary and problems; NULL: silent */
    const char *name;               /* the report's file name, for messages */
};

/* Verifies a whole report held in memory.  Returns the number of problems
 * found (0: the report verifies); a malformed report is one problem, named by
 * its line number, and ends the verification.  Prints the summary and every
 * problem (up to a limit, then a count) to in->out. */
unsigned long report_verify(const uint8_t *data, size_t len, const struct report_inputs *in);

#endif /* GUARDIAN_TOOLS_REPORT_H */
