/*
 * ctl_retire.c — `guardianctl retire-ca --product OEM/PRODUCT --release N
 * [--yes] [--json]`: the production CA key of a superseded release taken off
 * the token, by the module, as an audit record (CKG_GUARDIAN_REQ_RETIRE_CA,
 * mechs/retire.c).  The user's (the operator's) to ask: it only reduces what
 * the token can do, the installed release's key is refused by the module
 * whoever asks, and the record names the operator.  docs/guardianctl.md,
 * "retire-ca".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guardianctl.h"

/* One "key=value" of the module's answer (NULL when absent). */
static const char *answer(const char *text, const char *key, char *out, size_t cap)
{
    struct guardian_status s = {.text = (char *)text};
    return status_value(&s, key, out, cap);
}

int cmd_retire_ca(int argc, char **argv)
{
    const char *product = NULL, *release_arg = NULL, *slash;
    char oem[GUARDIAN_ID_MAX + 1] = "", prod[GUARDIAN_ID_MAX + 1] = "", question[256];
    char record[32] = "?", pkg[40] = "?", keys[16] = "0", certs[16] = "0", recorded[8] = "yes";
    unsigned long long release;
    CK_ULONG rel;
    struct product *p;
    size_t n;
    long current = -1;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG len = 0;
    char *text, *end = NULL;
    CK_RV rv;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--product") == 0 && i + 1 < argc)
            product = argv[++i];
        else if (strcmp(argv[i], "--release") == 0 && i + 1 < argc)
            release_arg = argv[++i];
        else
            usage_die("retire-ca", "unexpected argument '%s'", argv[i]);
    }
    if (product == NULL || release_arg == NULL)
        usage_die("retire-ca", "needs --product OEM/PRODUCT and --release N");
    if ((slash = strchr(product, '/')) == NULL || slash == product || slash[1] == '\0' ||
        (size_t)(slash - product) > GUARDIAN_ID_MAX || strlen(slash + 1) > GUARDIAN_ID_MAX)
        usage_die("retire-ca", "--product must be OEM/PRODUCT (each 1..%d characters), not '%s'", GUARDIAN_ID_MAX,
                  product);
    release = strtoull(release_arg, &end, 10);
    if (end == release_arg || *end != '\0' || release_arg[0] == '-' || release > 0xffffffffULL)
        usage_die("retire-ca", "--release must be a release number 0..4294967295, not '%s'", release_arg);
    memcpy(oem, product, (size_t)(slash - product));
    snprintf(prod, sizeof(prod), "%s", slash + 1);

    need_token();
    n = list_products(&p);
    for (size_t i = 0; i < n; i++)
        if (strcmp(p[i].oem, oem) == 0 && strcmp(p[i].product, prod) == 0)
            current = (long)p[i].release;
    free(p);
    if (current < 0)
        die("no release of %s/%s is installed ('" PROG " products' lists what is)", oem, prod);
    if ((unsigned long long)current == release)
        die("release %llu of %s/%s is the installed one (CKR_GUARDIAN_RELEASE_CURRENT): its production CA key is "
            "the line's and is never retired; retire a release that a newer one replaced",
            release, oem, prod);
    snprintf(question, sizeof(question),
             "Destroy the production CA key of %s/%s release %llu (installed: release %ld)? It cannot be undone.", oem,
             prod, release, current);
    if (!confirm(question))
        die("not retired");
    login(CKU_USER);
    rel = (CK_ULONG)release;
    {
        CK_ATTRIBUTE t[] = {{CKA_GUARDIAN_OEM_ID, oem, (CK_ULONG)strlen(oem)},
                            {CKA_GUARDIAN_PRODUCT_ID, prod, (CK_ULONG)strlen(prod)},
                            {CKA_GUARDIAN_RELEASE, &rel, sizeof(rel)}};
        rv = request_in(session, CKG_GUARDIAN_REQ_RETIRE_CA, t, 3, &h);
    }
    switch (rv) {
    case CKR_OK: break;
    case CKR_GUARDIAN_RELEASE_CURRENT:
        die("release %llu of %s/%s is the installed one (CKR_GUARDIAN_RELEASE_CURRENT): not retired", release, oem,
            prod);
    case CKR_GUARDIAN_PRODUCT_UNKNOWN:
        die("no release %llu of %s/%s was imported into this Guardian (CKR_GUARDIAN_PRODUCT_UNKNOWN)", release, oem,
            prod);
    case CKR_GUARDIAN_CA_RETIRED:
        die("the production CA key of %s/%s release %llu was retired already (CKR_GUARDIAN_CA_RETIRED); the audit "
            "report shows when and by whom",
            oem, prod, release);
    case CKR_GUARDIAN_REQUEST_INVALID:
        die("the module refused the request (CKR_GUARDIAN_REQUEST_INVALID): a module older than this guardianctl?");
    default:
        die("the module did not retire the key: %s (0x%lx); its log line says why", ckr(rv), (unsigned long)rv);
    }
    text = (char *)get_attr(h, CKA_VALUE, &len);
    P11(p11->C_DestroyObject(session, h));
    answer(text, "record", record, sizeof(record));
    answer(text, "package_id", pkg, sizeof(pkg));
    answer(text, "keys_destroyed", keys, sizeof(keys));
    answer(text, "certificates_destroyed", certs, sizeof(certs));
    answer(text, "recorded_now", recorded, sizeof(recorded));
    if (json_out) {
        struct ctl_json j;
        ctl_json_begin(&j, stdout);
        ctl_json_object(&j, NULL);
        ctl_json_string(&j, "oem_id", oem);
        ctl_json_string(&j, "product_id", prod);
        ctl_json_uint(&j, "release", release);
        ctl_json_string(&j, "package_id", pkg);
        ctl_json_uint(&j, "record", strtoull(record, NULL, 10));
        ctl_json_bool(&j, "recorded_now", strcmp(recorded, "yes") == 0);
        ctl_json_uint(&j, "keys_destroyed", strtoull(keys, NULL, 10));
        ctl_json_uint(&j, "certificates_destroyed", strtoull(certs, NULL, 10));
        ctl_json_end(&j);
    } else {
        printf("retired the production CA key of %s/%s release %llu (package %s): audit record %s%s; %s key and %s "
               "certificate object destroyed\n",
               oem, prod, release, pkg, record, strcmp(recorded, "yes") == 0 ? "" : " (written by an earlier try)",
               keys, certs);
    }
    free(text);
    return 0;
}
