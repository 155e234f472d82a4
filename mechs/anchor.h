/*
 * anchor.h — the Guardian token's anchor of the state store (anchor.c).
 */
#ifndef GUARDIAN_MECHS_ANCHOR_H
#define GUARDIAN_MECHS_ANCHOR_H

#include <stdint.h>

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
/* How the store stands against the token's anchor (CKG_GUARDIAN_REQ_STATUS
 * reports it).  ABSENT: the token has no anchor (a new Guardian: the first
 * import writes it); AGREES: the store has exactly what it names;
 * STORE_AHEAD: the store has more (records since the last anchored import or
 * block: releases at C_Finalize, issue records folded; the next import or
 * block moves it up); BEHIND: the store lacks what it names (a restored
 * backup, a deleted or swapped database, another state directory: what
 * guardian_anchor_check refuses with CKR_GUARDIAN_STATE_ROLLBACK); INVALID:
 * bytes that are no anchor, or more anchor objects than a crash leaves (the
 * token was changed outside the Guardian). */
enum guardian_anchor_state {
    GUARDIAN_ANCHOR_ABSENT,
    GUARDIAN_ANCHOR_AGREES,
    GUARDIAN_ANCHOR_STORE_AHEAD,
    GUARDIAN_ANCHOR_BEHIND,
    GUARDIAN_ANCHOR_INVALID,
};
/* The comparison alone: neither the store nor the anchor is written (unlike
 * guardian_anchor_check, which anchors a store the token has no anchor for).
 * *seq: the chain head the anchor names (0 when there is none).  CKR_OK, or
 * the backend's or the store's error reading them. */
CK_RV guardian_anchor_compare(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, struct guardian_store *st,
                              enum guardian_anchor_state *state, uint64_t *seq);
/* Before a Guardian mechanism or request runs on `session` (module/entry.c,
 * mechs/request.c, and at C_Login in service mode): the store names this
 * token's Guardian - the SHA-256 of its certificate A - in every record it
 * writes from now on (guardian_store_set_guardian).  A token without A yet
 * changes nothing.  One process serves one Guardian: a second token whose
 * Guardian differs from the one this process's records already name is
 * refused (CKR_GUARDIAN_WRONG_GUARDIAN, a log line naming both), since its
 * records would name the wrong one and the token anchor is one per process;
 * the same token with a new certificate (initialised again) is named anew.
 * `slot`: the session's (the caller read its session info already).  Cost:
 * two atomic loads while the slot is the one looked up last, else one
 * certificate lookup and SHA-256. */
CK_RV guardian_anchor_bind(CK_FUNCTION_LIST *be, CK_SESSION_HANDLE session, CK_SLOT_ID slot,
                           struct guardian_store *st);
/* The token's certificate A may have changed (an identity request ran): the
 * next guardian_anchor_bind looks it up again. */
void guardian_anchor_forget_guardian(void);
/* Forget the cached handle of the anchor object (logout, session closed). */
void guardian_anchor_forget(void);
/* In a fork() child: the lock may have been held by another parent thread;
 * the parent's handle is not the child's. */
void guardian_anchor_atfork_child(void);

#endif /* GUARDIAN_MECHS_ANCHOR_H */
