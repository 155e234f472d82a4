/*
 * fuzz_config.c — libFuzzer target for the configuration parser.
 *
 * The configuration is the only text the module parses today; a malformed file
 * must give an error line, never a crash, an over-read or an unterminated value.
 */
#include <stdint.h>
#include <string.h>

#include "module.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct guardian_config cfg;
    char err[256];

    memset(&cfg, 0xa5, sizeof(cfg));
    err[0] = '\0';
    if (guardian_config_parse((const char *)data, size, "fuzz", &cfg, err, sizeof(err))) {
        /* Values are NUL-terminated, absolute paths. */
        if (memchr(cfg.backend, '\0', sizeof(cfg.backend)) == NULL ||
            memchr(cfg.state_dir, '\0', sizeof(cfg.state_dir)) == NULL)
            __builtin_trap();
        if ((cfg.backend[0] != '\0' && cfg.backend[0] != '/') ||
            (cfg.state_dir[0] != '\0' && cfg.state_dir[0] != '/'))
            __builtin_trap();
        if (cfg.log_level < -1 || cfg.log_level > GUARDIAN_LOG_TRACE)
            __builtin_trap();
        /* backend_init_args: NUL-terminated, at most 1024 bytes, no NUL inside
         * the line it came from (so the backend gets exactly those bytes). */
        if (strnlen(cfg.backend_init_args, sizeof(cfg.backend_init_args)) > GUARDIAN_BACKEND_INIT_ARGS_MAX)
            __builtin_trap();
        /* The store's keys: an engine named, a connection string only with
         * PostgreSQL and never holding a password keyword, the password's
         * file an absolute path. */
        if (cfg.store_engine != 0 && cfg.store_engine != 1)
            __builtin_trap();
        if (strnlen(cfg.store_conninfo, sizeof(cfg.store_conninfo)) > GUARDIAN_STORE_CONNINFO_MAX ||
            (cfg.store_engine == 1) != (cfg.store_conninfo[0] != '\0'))
            __builtin_trap();
        if (strstr(cfg.store_conninfo, "password=") != NULL || strstr(cfg.store_conninfo, "passfile=") != NULL)
            __builtin_trap();
        if (cfg.store_password_file[0] != '\0' && (cfg.store_password_file[0] != '/' || cfg.store_engine != 1))
            __builtin_trap();
    } else if (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0') {
        __builtin_trap(); /* every refusal says why */
    }
    return 0;
}
