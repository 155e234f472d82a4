/*
 * store_internal.h — what store.c lends the other files of store/ (roots.c):
 * its transactions, its audit append and its one SQLite-to-CKR mapping, so
 * that there is still one engine, one transaction shape and one error map.
 * Not for use outside store/.
 */
#ifndef GUARDIAN_STORE_INTERNAL_H
#define GUARDIAN_STORE_INTERNAL_H
#include <sqlite3.h>

#include "store.h"

/* store.c's store_write (lock, BEGIN IMMEDIATE, journal folded, `fn`, COMMIT
 * or ROLLBACK on its result), synchronous=FULL; `fn` gets the connection. */
CK_RV guardian_store_internal_write(struct guardian_store *st,
                                    CK_RV (*fn)(struct guardian_store *st, sqlite3 *db, void *ctx), void *ctx);
/* The store's lock held around `fn`, which only reads. */
CK_RV guardian_store_internal_read(struct guardian_store *st,
                                   CK_RV (*fn)(struct guardian_store *st, sqlite3 *db, void *ctx), void *ctx);
/* Inside guardian_store_internal_write: `r` (type, time and fields set by
 * the caller; seq, hashes, encoding and operator set here: the current one)
 * appended to the trail, the head moved. */
CK_RV guardian_store_internal_append(struct guardian_store *st, struct guardian_audit_record *r);
/* map_sqlite: an SQLite result code as a CKR code (logged unless OK). */
CK_RV guardian_store_internal_sqlite(struct guardian_store *st, int rc, const char *what);

#endif /* GUARDIAN_STORE_INTERNAL_H */
