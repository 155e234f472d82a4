/*
 * registry.c — the one table of Guardian vendor mechanisms.
 */
#include "anchor.h"
#include "registry.h"

static const struct guardian_mech *const table[] = {
    &guardian_mech_unwrap_package,
    &guardian_mech_derive_device_cert,
};

size_t guardian_mech_count(void)
{
    return sizeof(table) / sizeof(table[0]);
}

const struct guardian_mech *guardian_mech_at(size_t i)
{
    return i < guardian_mech_count() ? table[i] : NULL;
}

const struct guardian_mech *guardian_mech_find(CK_MECHANISM_TYPE type)
{
    for (size_t i = 0; i < guardian_mech_count(); i++)
        if (table[i]->type == type)
            return table[i];
    return NULL;
}

bool guardian_mech_available(const struct guardian_mech *m, const CK_MECHANISM_TYPE *available, size_t n)
{
    if (m == NULL || (m->unwrap == NULL && m->derive == NULL))
        return false;
    for (size_t r = 0; r < m->n_requires; r++) {
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = available[i] == m->requires[r];
        if (!found)
            return false;
    }
    for (size_t r = 0; r < m->n_requires_one_of; r++)
        for (size_t i = 0; i < n; i++)
            if (available[i] == m->requires_one_of[r])
                return true;
    return m->n_requires_one_of == 0;
}

void guardian_mechs_finalize(struct guardian_store *st)
{
    for (size_t i = 0; i < guardian_mech_count(); i++)
        if (table[i]->finalize != NULL)
            table[i]->finalize(st);
}

void guardian_mechs_forget(CK_OBJECT_HANDLE h)
{
    if (h == CK_INVALID_HANDLE)
        guardian_anchor_forget();
    for (size_t i = 0; i < guardian_mech_count(); i++)
        if (table[i]->forget != NULL)
            table[i]->forget(h);
}

void guardian_mechs_atfork_child(void)
{
    guardian_anchor_atfork_child();
    guardian_selftest_atfork_child();
    for (size_t i = 0; i < guardian_mech_count(); i++)
        if (table[i]->atfork_child != NULL)
            table[i]->atfork_child();
}

CK_RV guardian_backend_find(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE *templ, CK_ULONG n,
                            CK_OBJECT_HANDLE *found, CK_ULONG max, CK_ULONG *count)
{
    CK_RV rv = be->C_FindObjectsInit(s, templ, n);
    *count = 0;
    if (rv != CKR_OK)
        return rv;
    rv = be->C_FindObjects(s, found, max, count);
    be->C_FindObjectsFinal(s);
    return rv;
}
