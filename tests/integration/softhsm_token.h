/*
 * softhsm_token.h — a throwaway SoftHSMv2 token in a temporary directory, and
 * dlopen helpers, for the integration tests.
 */
#ifndef GUARDIAN_SOFTHSM_TOKEN_H
#define GUARDIAN_SOFTHSM_TOKEN_H

#include <limits.h>

#include "p11.h"

#define TEST_PIN "1234"
#define TEST_SO_PIN "12345678"

struct test_token {
    char dir[PATH_MAX - 64]; /* leaves room for the file names below it */
    char conf[PATH_MAX];
    char label[33];
};

/* mkdtemp + softhsm2.conf + softhsm2-util --init-token; exports SOFTHSM2_CONF.
 * Returns 0 on success. */
int test_token_create(struct test_token *t, const char *label);
/* rm -rf the directory. */
void test_token_destroy(struct test_token *t);

/* dlopen a module and return its function list (C_GetFunctionList), or NULL. */
CK_FUNCTION_LIST *test_load_module(const char *path, void **dl_out);

/* The slot whose token carries `label`; C_Initialize must have been called. */
CK_RV test_find_slot(CK_FUNCTION_LIST *p11, const char *label, CK_SLOT_ID *slot);

/* Paths, from the environment CTest sets (GUARDIAN_TEST_MODULE, SOFTHSM2_MODULE). */
const char *test_guardian_path(void);
const char *test_softhsm_path(void);

#endif
