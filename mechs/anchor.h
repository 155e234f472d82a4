/*
 * anchor.h — the Guardian token's anchor of the state store (anchor.c).
 */
#ifndef GUARDIAN_MECHS_ANCHOR_H
#define GUARDIAN_MECHS_ANCHOR_H

#include "p11.h"

struct guardian_store;

/* Before the store grants anything (an import, a reservation, an export): the
 * store must not be behind the token's anchor (store.h: anchor_check);
 * CKR_GUARDIAN_STATE_ROLLBACK otherwise.  A token without an anchor gets one
 * now (a new Guardian, or one made by a version before anchors). */
CK_RV guardian_anchor_check(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st);
/* After the store committed an import or a reservation: the anchor moves up
 * to the store's state (never down).  CKR_GUARDIAN_STATE_ROLLBACK when the
 * token's anchor names what this store lacks (another process moved it up
 * from another store meanwhile): the caller must not use what it reserved. */
CK_RV guardian_anchor_update(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st);
/* Forget the cached handle of the anchor object (logout, session closed). */
void guardian_anchor_forget(void);
/* In a fork() child: the lock may have been held by another parent thread;
 * the parent's handle is not the child's. */
void guardian_anchor_atfork_child(void);

#endif /* GUARDIAN_MECHS_ANCHOR_H */
