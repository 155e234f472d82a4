/*
 * guardianctl.h — what the guardianctl commands share (guardianctl.c owns it):
 * the module and token opened once per run, errors that end the run, PINs,
 * object lookups, the Guardian's state.  guardianctl signs nothing with the Guardian's identity key:
 * the module does, for what it built (Guardian requests).  One file per
 * group of commands: guardianctl.c (identity, OEM roots, import, products),
 * ctl_audit.c (audit export), ctl_provision.c (the provisioning run) and
 * ctl_manifest.c (its manifest), ctl_status.c (status: --json, --watch, rates),
 * ctl_retire.c (retire-ca); ctl_json.c writes every --json object.
 */
#ifndef GUARDIANCTL_H
#define GUARDIANCTL_H

#include <limits.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "ctl_json.h"
#include "module.h" /* guardian_ckr_name (module/ckr.c is linked, nothing else of module/) */
#include "store.h"  /* the ID and package-ID sizes only: nothing of store/ is linked */
/* after module.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

#define PROG "guardianctl"
#define GUARDIAN_KEY_ID "guardian-identity"     /* the agreement key and its certificate A (what OEMs wrap for) */
#define GUARDIAN_KEY_LABEL "guardian-identity"
#define GUARDIAN_SIGNING_KEY_ID "guardian-signing" /* the signing key and its certificate S (issued A, signs reports) */

extern CK_FUNCTION_LIST *p11;       /* the Guardian module, once open_token ran */
extern CK_SESSION_HANDLE session;   /* a read-write session on the token */
extern CK_SLOT_ID slot;
extern const char *token_label;
extern int assume_yes;              /* --yes was given */
/* --json was given: stdout carries one JSON object (docs/guardianctl.md,
 * "JSON output") and no human text; die() and usage_die() write their error
 * as {"error": {"code": "CKR_...", "message": "..."}} there too. */
extern int json_out;

/* Exit statuses, the same in guardian-wrap (docs/guardianctl.md): 0 done,
 * 1 refused or failed, 2 a usage error (nothing was touched), 130 a
 * provisioning run stopped by SIGINT/SIGTERM. */
#define EXIT_REFUSED 1
#define EXIT_USAGE 2
#define EXIT_INTERRUPTED 130

/* Print "guardianctl: <message>", close the session, finalize, exit(1). */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* A usage error of command `cmd`: "guardianctl: CMD: <message> (guardianctl
 * CMD --help)", close the session if open, exit(2). */
void usage_die(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* The CKR_* name of rv (vendor codes included). */
const char *ckr(CK_RV rv);
#define P11(call)                                                                                        \
    do {                                                                                                 \
        CK_RV rv_ = (call);                                                                              \
        if (rv_ != CKR_OK)                                                                               \
            die("%s failed: %s (0x%lx)", #call, ckr(rv_), (unsigned long)rv_);                           \
    } while (0)

/* PIN from the environment variable `env`, else from the terminal without echo. */
void read_pin(const char *env, const char *prompt, char *out, size_t cap);
void login(CK_USER_TYPE who);
void open_token(const char *module_path);
/* Open the token (the module main was told of) unless open: each command
 * calls it once its arguments are checked, so usage errors load nothing. */
void need_token(void);
void close_token(void);
/* The Guardian's state as the module reports it (CKG_GUARDIAN_REQ_STATUS,
 * docs/vendor-interface.md "The status"): guardianctl never reads the state
 * directory or the module's configuration itself, which behind p11-kit
 * server belong to the service's account. */
struct guardian_status {
    char *text;                    /* the request's output, "key=value" lines (malloc'd) */
    char backend[PATH_MAX], configuration[PATH_MAX], state_dir[PATH_MAX];
    char anchor[16];               /* absent, agrees, store-ahead, behind, invalid */
    int chain_ok;                  /* the audit trail's hash chain verified */
    unsigned long long audit_records, audit_head_seq, audit_head_time, anchor_seq, products;
};
/* Asks the module (the user logged in); dies when it refuses. */
void read_status(struct guardian_status *s);
/* Dies, saying why and with the CKR name, when the store is behind the
 * token's anchor, the anchor is not the Guardian's, or the chain is broken. */
void die_if_state_unsound(const struct guardian_status *s);

/* One "key=value" line of the status text into out; NULL when absent. */
const char *status_value(const struct guardian_status *s, const char *key, char *out, size_t cap);
/* A number of the status text; dies when absent or not a number. */
unsigned long long status_number(const struct guardian_status *s, const char *key);

/* An installed product as its CKO_GUARDIAN_PACKAGE object describes it (the
 * module reads the object's counters live from its store). */
struct product {
    char oem[GUARDIAN_ID_MAX + 1], product[GUARDIAN_ID_MAX + 1];
    CK_ULONG release, authorised, issued, remaining, not_after;
    CK_BYTE package_id[GUARDIAN_PACKAGE_ID_LEN];
};
/* Every installed product, ordered by OEM ID then product ID; *out malloc'd. */
size_t list_products(struct product **out);

/* One line of the probe's text: "<name> <verdict> <CKR> <sentence>". */
struct probe_line {
    char name[40], verdict[16], rv[64];
    const char *sentence;
};
int parse_probe_line(char *line, struct probe_line *out); /* 1 if it parses */

/* The enrolled OEM roots (trusted certificate objects), up to max. */
CK_ULONG list_roots(CK_OBJECT_HANDLE *out, CK_ULONG max);
/* "AB:CD:..." as `openssl x509 -fingerprint -sha256` prints it. */
void colon_fingerprint(X509 *x, char out[96]);
/* The certificate object, or NULL when there is none. */
X509 *cert_or_null(CK_OBJECT_HANDLE h);
/* --json members of a product (the members only), and one enrolled root (an object). */
void json_product(struct ctl_json *j, const struct product *p);
void json_root(struct ctl_json *j, CK_OBJECT_HANDLE h);
/* A blank-padded CK_TOKEN_INFO field without its padding. */
void trimmed(char *out, const CK_UTF8CHAR *field, size_t width);

CK_ULONG find_all(CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max);
/* malloc'd value (NUL-terminated for convenience); dies on error. */
unsigned char *get_attr(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG *len);
/* The Guardian identity object of class `cls`, or CK_INVALID_HANDLE. */
CK_OBJECT_HANDLE find_identity(CK_OBJECT_CLASS cls);
/* The signing key's object of class `cls` (CKA_ID "guardian-signing"). */
CK_OBJECT_HANDLE find_signing(CK_OBJECT_CLASS cls);

/* A Guardian request (C_CreateObject of a CKO_GUARDIAN_REQUEST of `type`)
 * with up to REQUEST_MAX_EXTRA `extra` attributes, in session `s`; the
 * result's handle or the module's CKR code. */
#define REQUEST_MAX_EXTRA 10
CK_RV request_in(CK_SESSION_HANDLE s, CK_ULONG type, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
                 CK_OBJECT_HANDLE *out);

void fingerprint(X509 *x, char out[65]); /* SHA-256, lowercase hex */
X509 *read_cert_file(const char *path);  /* PEM or DER; dies otherwise */
X509 *cert_from_object(CK_OBJECT_HANDLE h);

/* Output files (--out, --csr): never overwritten silently.  check_output
 * runs before the token is opened or anything is spent: it refuses (exit 1)
 * a `path` that exists unless `force` (naming --force), and a directory that
 * cannot take a new file (missing, read-only, not a directory), saying
 * which.  write_output writes through a temporary file in the same directory:
 * with `force` renamed over `path`, without it linked to `path`, so a file
 * that appeared meanwhile is still not replaced. */
void check_output(const char *cmd, const char *path, int force);
void write_output(const char *path, const void *data, size_t len, int force);
/* A directory that will hold output files (provision --out): created if
 * missing, and proved writable by making (and removing) a file in it. */
void check_output_dir(const char *dir);

/* Commands in their own files. */
int cmd_audit(int argc, char **argv);     /* ctl_audit.c */
int cmd_provision(int argc, char **argv); /* ctl_provision.c */
int cmd_part(int argc, char **argv);      /* ctl_part.c */
int cmd_retire_ca(int argc, char **argv); /* ctl_retire.c */
int cmd_ca_request(int argc, char **argv); /* ctl_ca_request.c */
/* 1 when --yes was given or the terminal's answer is yes; dies without a terminal. */
int confirm(const char *question);
/* ctl_status.c: `status` (--json, --watch) around guardianctl.c's human
 * report (status_report), and the running lines' rate and ETA. */
int run_status(int argc, char **argv);
void status_report(const struct guardian_status *gs); /* guardianctl.c: the human report, sound or not */
void print_status_products(const struct guardian_status *gs, const char *indent);
/* The status's "  store  ENGINE (LOCATION)" line (status version 4 on). */
void print_status_store(const struct guardian_status *gs);
/* The message and CKR name when the state grants nothing (store behind the
 * anchor, anchor not the Guardian's, chain broken); NULL when sound. */
const char *state_unsound(const struct guardian_status *s, const char **code);

#endif /* GUARDIANCTL_H */
