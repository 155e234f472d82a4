/*
 * attr.c — the PKCS#11 attribute rules for the objects the module serves
 * itself (package_objects.c, cert_objects.c): one place for the NULL-buffer,
 * short-buffer and unknown-attribute cases of C_GetAttributeValue, and for
 * comparing a C_FindObjectsInit template entry with a value.
 */
#include <string.h>

#include "module.h"

CK_RV guardian_attr_put(CK_ATTRIBUTE *a, const void *value, CK_ULONG len)
{
    if (a->pValue == NULL) {
        a->ulValueLen = len;
        return CKR_OK;
    }
    if (a->ulValueLen < len) {
        a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (len > 0)
        memcpy(a->pValue, value, len);
    a->ulValueLen = len;
    return CKR_OK;
}

CK_RV guardian_attr_invalid(CK_ATTRIBUTE *a)
{
    a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
    return CKR_ATTRIBUTE_TYPE_INVALID;
}

CK_RV guardian_attr_fill(const void *obj, guardian_attr_fn one, CK_ATTRIBUTE *templ, CK_ULONG count)
{
    CK_RV worst = CKR_OK;

    if (templ == NULL && count != 0)
        return CKR_ARGUMENTS_BAD;
    /* Every attribute is processed whatever the others give (PKCS#11 5.7). */
    for (CK_ULONG i = 0; i < count; i++) {
        CK_RV r = one(obj, &templ[i]);
        if (r == CKR_ATTRIBUTE_TYPE_INVALID || (r == CKR_BUFFER_TOO_SMALL && worst == CKR_OK))
            worst = r;
    }
    return worst;
}

int guardian_attr_equal(const CK_ATTRIBUTE *want, const void *value, CK_ULONG len)
{
    return want->ulValueLen == len && (len == 0 || (want->pValue != NULL && memcmp(want->pValue, value, len) == 0));
}
