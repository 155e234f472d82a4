/*
 * ctl_manifest.h — the provisioning manifest (docs/guardianctl.md, "The
 * manifest"): one JSON line per device whose certificate file the run wrote,
 *   {"device_id": "...", "serial": "HEX", "file": "ID.pem", "sha256": "hex",
 *    "issued": "2026-12-01T13:45:00Z", "issued_unix": N}
 * serial as `openssl x509 -serial` prints it (uppercase hex), sha256 that of
 * the certificate's DER, issued the time the certificate came back from the
 * module.
 *
 * Durable and consistent with the files: a line is only written after
 * syncfs() of the certificates' file system, that is after every file it
 * names is on disk, then fsync()ed itself; lines wait in memory until
 * manifest_flush (the run calls it every 200 ms and at the end).  A crash can
 * so only leave files without their line, never a line without its file:
 * when the run resumes, each existing file not in the manifest
 * (manifest_recover) is read back and its line added, dated by the file's
 * modification time.  A last line cut by a crash is dropped when the
 * manifest is opened.  Thread-safe: workers add, the main thread flushes.
 */
#ifndef CTL_MANIFEST_H
#define CTL_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

struct manifest;

/* Opens (creating) the manifest at `path` for appending, for certificates in
 * `out_dir`; reads the device IDs it already lists.  Dies on error. */
struct manifest *manifest_open(const char *path, const char *out_dir);
/* A certificate (DER) just written as <out_dir>/<id>.pem. */
void manifest_add(struct manifest *m, const char *id, const unsigned char *der, size_t len, int64_t issued);
/* A certificate file found done (resume): its line, unless listed already. */
void manifest_recover(struct manifest *m, const char *id, const char *path);
/* Writes the waiting lines durably (see above); 0 on error (said on stderr). */
int manifest_flush(struct manifest *m);
void manifest_close(struct manifest *m);

#endif /* CTL_MANIFEST_H */
