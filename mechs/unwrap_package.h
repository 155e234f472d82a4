/*
 * unwrap_package.h — the argument checks of CKM_GUARDIAN_UNWRAP_PACKAGE,
 * exposed for the fuzz target (tests/fuzz/fuzz_unwrap_args.c).
 */
#ifndef GUARDIAN_MECHS_UNWRAP_PACKAGE_H
#define GUARDIAN_MECHS_UNWRAP_PACKAGE_H

#include "p11.h"

/* Usages the caller's template left on (it may only switch them off). */
struct guardian_unwrap_usage {
    CK_BBOOL sign, decrypt, derive, unwrap;
};

/* The mechanism parameter (none is defined: NULL/0 only) and the caller's
 * template (it may only narrow).  CKR_OK, CKR_ARGUMENTS_BAD,
 * CKR_MECHANISM_PARAM_INVALID or CKR_TEMPLATE_INCONSISTENT. */
CK_RV guardian_unwrap_check_arguments(const CK_MECHANISM *mech, const CK_ATTRIBUTE *templ, CK_ULONG count,
                                      struct guardian_unwrap_usage *usage);

#endif
