/*
 * softhsm_token.c — see softhsm_token.h.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "softhsm_token.h"

extern char **environ;

const char *test_guardian_path(void)
{
    const char *p = getenv("GUARDIAN_TEST_MODULE");
    return p ? p : "guardian-pkcs11.so";
}

const char *test_softhsm_path(void)
{
    const char *p = getenv("SOFTHSM2_MODULE");
    return p ? p : "/usr/lib/softhsm/libsofthsm2.so";
}

int test_token_create(struct test_token *t, const char *label)
{
    char tokens[PATH_MAX + 8];
    FILE *f;
    pid_t pid;
    int status = 0;
    char *argv[] = {"softhsm2-util", "--init-token", "--free", "--label", t->label,
                    "--pin", TEST_PIN, "--so-pin", TEST_SO_PIN, NULL};
    posix_spawn_file_actions_t fa;

    memset(t, 0, sizeof(*t));
    snprintf(t->label, sizeof(t->label), "%s", label);
    snprintf(t->dir, sizeof(t->dir), "%s/guardian-itest-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(t->dir) == NULL)
        return -1;
    snprintf(tokens, sizeof(tokens), "%s/tokens", t->dir);
    snprintf(t->conf, sizeof(t->conf), "%s/softhsm2.conf", t->dir);
    if (mkdir(tokens, 0700) != 0)
        return -1;
    f = fopen(t->conf, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens);
    fclose(f);
    setenv("SOFTHSM2_CONF", t->conf, 1);

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid, "softhsm2-util", &fa, NULL, argv, environ) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    posix_spawn_file_actions_destroy(&fa);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

void test_token_destroy(struct test_token *t)
{
    if (t->dir[0] != '\0')
        nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    t->dir[0] = '\0';
}

CK_FUNCTION_LIST *test_load_module(const char *path, void **dl_out)
{
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST *list = NULL;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);

    if (dl == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return NULL;
    }
    get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    if (get == NULL || get(&list) != CKR_OK) {
        dlclose(dl);
        return NULL;
    }
    if (dl_out != NULL)
        *dl_out = dl;
    return list;
}

CK_RV test_find_slot(CK_FUNCTION_LIST *p11, const char *label, CK_SLOT_ID *slot)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_RV rv = p11->C_GetSlotList(CK_TRUE, slots, &n);
    size_t len = strlen(label);

    if (rv != CKR_OK)
        return rv;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if (memcmp(ti.label, label, len) == 0 && (len == 32 || ti.label[len] == ' ')) {
            *slot = slots[i];
            return CKR_OK;
        }
    }
    return CKR_TOKEN_NOT_PRESENT;
}
