/*
 * engine.c — the engine interface of store_internal.h, dispatched to the
 * store's engine: SQLite (engine_sqlite.c, the default) or PostgreSQL
 * (engine_pg.c, `store = postgresql`), chosen at open.  Functions that take
 * the store go through st->ops; those that take only a statement go through
 * the statement's first member, its engine's ops.
 */
#include "store_internal.h"

/* The first member of every engine's struct store_stmt. */
struct stmt_head {
    const struct engine_ops *ops;
};
#define OPS(s) (((const struct stmt_head *)(const void *)(s))->ops)

bool engine_usable(const struct guardian_store *st)
{
    return st->ops->usable();
}

CK_RV engine_open(struct guardian_store *st, const char *path, bool memory)
{
    return st->ops->open(st, path, memory);
}

CK_RV engine_reader_open(struct guardian_store *st, const char *path)
{
    return st->ops->reader_open(st, path);
}

void engine_close(struct guardian_store *st)
{
    if (st->ops != NULL)
        st->ops->close(st);
}

CK_RV tx_begin(struct guardian_store *st, bool durable)
{
    return st->ops->tx_begin(st, durable);
}

CK_RV tx_end(struct guardian_store *st, CK_RV rv)
{
    return st->ops->tx_end(st, rv);
}

CK_RV stmt_step(struct guardian_store *st, enum stmt_id id, struct store_stmt **s, bool *row, const char *what,
                const char *types, ...)
{
    va_list ap;
    CK_RV rv;

    va_start(ap, types);
    rv = st->ops->stmt_step(st, id, s, row, what, types, ap);
    va_end(ap);
    return rv;
}

CK_RV stmt_next(struct guardian_store *st, struct store_stmt *s, bool *row, const char *what)
{
    return st->ops->stmt_next(st, s, row, what);
}

void stmt_done(struct store_stmt *s)
{
    if (s != NULL)
        OPS(s)->stmt_done(s);
}

int store_changes(struct guardian_store *st)
{
    return st->ops->changes(st);
}

store_int store_last_insert_id(struct guardian_store *st)
{
    return st->ops->last_insert_id(st);
}

bool column_id(struct store_stmt *s, int col, char out[GUARDIAN_ID_MAX + 1])
{
    return OPS(s)->column_id(s, col, out);
}

bool column_operator(struct store_stmt *s, int col, char out[GUARDIAN_OPERATOR_MAX + 1])
{
    return OPS(s)->column_operator(s, col, out);
}

bool column_blob(struct store_stmt *s, int col, void *out, size_t max, size_t *len)
{
    return OPS(s)->column_blob(s, col, out, max, len);
}

bool column_blob_exact(struct store_stmt *s, int col, void *out, size_t len)
{
    size_t got = 0;
    return column_blob(s, col, out, len, &got) && got == len;
}

CK_RV column_blob_dup(struct store_stmt *s, int col, uint8_t **out, size_t *len)
{
    return OPS(s)->column_blob_dup(s, col, out, len);
}

bool column_uint(struct store_stmt *s, int col, uint64_t max, uint64_t *out)
{
    return OPS(s)->column_uint(s, col, max, out);
}

bool col_is_null(struct store_stmt *s, int col)
{
    return OPS(s)->col_is_null(s, col);
}

bool col_is_int(struct store_stmt *s, int col)
{
    return OPS(s)->col_is_int(s, col);
}

store_int col_int(struct store_stmt *s, int col)
{
    return OPS(s)->col_int(s, col);
}

const char *col_text(struct store_stmt *s, int col)
{
    return OPS(s)->col_text(s, col);
}

bool engine_has_reader(const struct guardian_store *st)
{
    return st->ops->has_reader(st);
}

CK_RV reader_device_get(struct guardian_store *st, struct store_stmt **s, bool *found, const char *oem_id,
                        const char *product_id, const uint8_t *device_id, size_t device_id_len)
{
    return st->ops->reader_device_get(st, s, found, oem_id, product_id, device_id, device_id_len);
}

void reader_done(struct guardian_store *st, struct store_stmt *s)
{
    st->ops->reader_done(st, s);
}
