/*
 * test_config.c — the configuration parser and the environment overrides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "module.h"

static struct guardian_config cfg;
static char err[512];

static bool parse(const char *text)
{
    err[0] = '\0';
    return guardian_config_parse(text, strlen(text), "test.conf", &cfg, err, sizeof(err));
}

static void test_valid(void **st)
{
    (void)st;
    assert_true(parse("# comment\n; another\n\n  backend =  /usr/lib/x.so  \r\n"
                      "state_dir=/var/lib/g\nlog_level = Debug\n"));
    assert_string_equal(cfg.backend, "/usr/lib/x.so");
    assert_string_equal(cfg.state_dir, "/var/lib/g");
    assert_int_equal(cfg.log_level, GUARDIAN_LOG_DEBUG);
    assert_true(parse(""));
    assert_int_equal(cfg.log_level, -1);
    assert_string_equal(cfg.backend, "");
    assert_true(parse("backend = /a b/c.so")); /* spaces inside a value are kept */
    assert_string_equal(cfg.backend, "/a b/c.so");
    assert_string_equal(cfg.backend_pin_file, "");
    assert_int_equal(cfg.pin_kdf_n, GUARDIAN_PIN_KDF_N_DEFAULT);
    assert_true(parse("backend_pin_file = /etc/guardian/backend.pin\nbackend_so_pin_file = /etc/g/so.pin\n"
                      "pin_kdf_cost = 1024\n"));
    assert_string_equal(cfg.backend_pin_file, "/etc/guardian/backend.pin");
    assert_string_equal(cfg.backend_so_pin_file, "/etc/g/so.pin");
    assert_int_equal(cfg.pin_kdf_n, 1024);
    assert_true(parse("pin_kdf_cost = 1048576\n"));
    assert_int_equal(cfg.pin_kdf_n, 1048576);
}

struct bad_case {
    const char *text;
    const char *message;
};

static void test_malformed(void **st)
{
    static const struct bad_case cases[] = {
        {"backend /x.so\n", "test.conf:1: expected 'key = value'"},
        {"\n\nbackendd = /x.so\n", "test.conf:3: unknown key 'backendd'"},
        {" = /x.so\n", "test.conf:1: missing key before '='"},
        {"backend =\n", "test.conf:1: 'backend' has no value"},
        {"backend = x.so\n", "test.conf:1: 'backend' must be an absolute path"},
        {"state_dir = var/lib\n", "test.conf:1: 'state_dir' must be an absolute path"},
        {"backend = /a.so\nbackend = /b.so\n", "test.conf:2: 'backend' is set twice"},
        {"log_level = loud\n", "test.conf:1: invalid log_level 'loud'"},
        {"log_level = 5\n", "test.conf:1: invalid log_level '5'"},
        {"averyveryveryveryveryverylongkeyname = 1\n", "test.conf:1: unknown key"},
        {"backend_pin_file = pin\n", "test.conf:1: 'backend_pin_file' must be an absolute path"},
        {"backend_so_pin_file = /a\nbackend_so_pin_file = /b\n", "test.conf:2: 'backend_so_pin_file' is set twice"},
        {"pin_kdf_cost = 1000\n", "test.conf:1: pin_kdf_cost must be a power of two from 1024 to 1048576"},
        {"pin_kdf_cost = 512\n", "pin_kdf_cost must be a power of two"},
        {"pin_kdf_cost = 2097152\n", "pin_kdf_cost must be a power of two"},
        {"pin_kdf_cost = 4096x\n", "pin_kdf_cost must be a power of two"},
        {"pin_kdf_cost = 99999999999999999999999\n", "pin_kdf_cost must be a power of two"},
        {"pin_kdf_cost = 1024\npin_kdf_cost = 1024\n", "test.conf:2: 'pin_kdf_cost' is set twice"},
    };
    (void)st;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_false(parse(cases[i].text));
        if (strstr(err, cases[i].message) == NULL)
            fail_msg("case %zu: '%s' does not contain '%s'", i, err, cases[i].message);
    }
}

static void test_limits(void **st)
{
    char *big;
    char with_nul[] = "backend = /x\0.so\n";
    (void)st;

    big = malloc(GUARDIAN_CONF_MAX_BYTES + 2);
    memset(big, '#', GUARDIAN_CONF_MAX_BYTES + 1);
    big[GUARDIAN_CONF_MAX_BYTES + 1] = '\0';
    assert_false(parse(big));
    assert_non_null(strstr(err, "larger than"));

    memset(big, 'a', 5000);
    memcpy(big, "backend = /", 11);
    big[5000] = '\0';
    assert_false(parse(big));
    assert_non_null(strstr(err, "line longer than"));

    memset(big, 'a', PATH_MAX + 20);
    memcpy(big, "backend = /", 11);
    big[PATH_MAX + 20] = '\0';
    assert_false(parse(big));
    assert_non_null(strstr(err, "longer than"));
    free(big);

    assert_false(guardian_config_parse(with_nul, sizeof(with_nul) - 1, "t", &cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "NUL byte"));
}

/* backend_init_args: kept byte for byte (quotes, '=', inner spaces), trimmed
 * like every value, at most 1024 bytes, once. */
static void test_backend_init_args(void **st)
{
    static const char nss[] = "configdir='sql:/var/lib/guardian/nssdb' certPrefix='' keyPrefix='' "
                              "secmod='secmod.db' flags= dbTokenDescription='guardian'";
    char text[2200];
    (void)st;

    assert_true(parse("backend = /x.so\n"));
    assert_string_equal(cfg.backend_init_args, "");
    snprintf(text, sizeof(text), "backend = /x.so\nbackend_init_args =  %s \t\n", nss);
    assert_true(parse(text));
    assert_string_equal(cfg.backend_init_args, nss);
    assert_true(parse("backend_init_args = a=b = c;#d\n"));
    assert_string_equal(cfg.backend_init_args, "a=b = c;#d");

    memset(text, 0, sizeof(text));
    memcpy(text, "backend_init_args = ", 20);
    memset(text + 20, 'x', GUARDIAN_BACKEND_INIT_ARGS_MAX);
    assert_true(parse(text));
    assert_int_equal(strlen(cfg.backend_init_args), GUARDIAN_BACKEND_INIT_ARGS_MAX);
    text[20 + GUARDIAN_BACKEND_INIT_ARGS_MAX] = 'x';
    assert_false(parse(text));
    assert_string_equal(err, "test.conf:1: 'backend_init_args' is longer than 1024 bytes");

    assert_false(parse("backend_init_args = a\nbackend_init_args = b\n"));
    assert_string_equal(err, "test.conf:2: 'backend_init_args' is set twice");
    assert_false(parse("backend_init_args =\n"));
    assert_string_equal(err, "test.conf:1: 'backend_init_args' has no value");
}

static char dir[] = "/tmp/guardian-config-XXXXXX";
static char path[PATH_MAX];

static void write_file(const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int env_setup(void **st)
{
    (void)st;
    unsetenv("GUARDIAN_CONF");
    unsetenv("GUARDIAN_BACKEND");
    unsetenv("GUARDIAN_STATE_DIR");
    unsetenv("GUARDIAN_BACKEND_INIT_ARGS");
    snprintf(path, sizeof(path), "%s/guardian.conf", dir);
    unlink(path);
    return 0;
}

/* store, store_conninfo, store_password_file (issue 12): the engine by name,
 * a connection string without a password, the password's file by absolute
 * path; a password in the string refused without repeating it. */
static void test_store_keys(void **st)
{
    (void)st;
    assert_true(parse("backend = /x.so\n"));
    assert_int_equal(cfg.store_engine, 0);
    assert_string_equal(cfg.store_conninfo, "");
    assert_true(parse("store = sqlite\n"));
    assert_int_equal(cfg.store_engine, 0);
    assert_true(parse("store = postgresql\nstore_conninfo = host=/run/pg port=5432 dbname=g user=guardian\n"
                      "store_password_file = /etc/guardian/pg.pass\n"));
    assert_int_equal(cfg.store_engine, 1);
    assert_string_equal(cfg.store_conninfo, "host=/run/pg port=5432 dbname=g user=guardian");
    assert_string_equal(cfg.store_password_file, "/etc/guardian/pg.pass");
    assert_true(parse("store = postgresql\nstore_conninfo = postgresql://guardian@db.example/guardian\n"));

    assert_false(parse("store = postgresql\nstore_conninfo = host=/run/pg password=s3cret\n"));
    assert_non_null(strstr(err, "'store_conninfo' holds a password: refused"));
    assert_null(strstr(err, "s3cret"));
    assert_false(parse("store = postgresql\nstore_conninfo = host=/run/pg PassWord = s3cret\n"));
    assert_null(strstr(err, "s3cret"));
    assert_false(parse("store = postgresql\nstore_conninfo = host=/run/pg passfile=/root/.pgpass\n"));
    assert_false(parse("store = postgresql\nstore_conninfo = postgresql://guardian:s3cret@db/guardian\n"));
    assert_null(strstr(err, "s3cret"));
    assert_false(parse("store = postgresql\n"));
    assert_string_equal(err, "test.conf: 'store = postgresql' needs store_conninfo (a libpq connection string: "
                             "host=... port=... dbname=... user=...)");
    assert_false(parse("store_conninfo = host=/run/pg\n"));
    assert_string_equal(err, "test.conf: store_conninfo and store_password_file are for 'store = postgresql'");
    assert_false(parse("store = sqlite\nstore_password_file = /p\n"));
    assert_false(parse("store = postgresql\nstore_conninfo = host=/x\nstore_password_file = rel/p\n"));
    assert_string_equal(err, "test.conf:3: 'store_password_file' must be an absolute path");
    assert_false(parse("store = mysql\n"));
    assert_string_equal(err, "test.conf:1: invalid store 'mysql' (use sqlite or postgresql)");
    assert_false(parse("store = sqlite\nstore = postgresql\n"));
    assert_string_equal(err, "test.conf:2: 'store' is set twice");
    assert_false(parse("store = postgresql\nstore_conninfo = a\nstore_conninfo = b\n"));
    assert_string_equal(err, "test.conf:3: 'store_conninfo' is set twice");

    /* A URI that ends the buffer, which is not NUL-terminated (the parser
     * reads a file's bytes): judged on its own bytes alone. */
    {
        static const char uri[] = "store = postgresql\nstore_conninfo = postgresql://guardian:s3cret@db";
        char *exact = malloc(sizeof(uri) - 1);
        assert_non_null(exact);
        memcpy(exact, uri, sizeof(uri) - 1);
        assert_false(guardian_config_parse(exact, sizeof(uri) - 1, "test.conf", &cfg, err, sizeof(err)));
        assert_non_null(strstr(err, "holds a password"));
        assert_true(guardian_config_parse(exact, sizeof(uri) - 1 - strlen(":s3cret@db"), "test.conf", &cfg, err,
                                          sizeof(err)));
        assert_string_equal(cfg.store_conninfo, "postgresql://guardian");
        free(exact);
    }
}

static void test_load_from_file_and_overrides(void **st)
{
    (void)st;
    write_file("backend = /from/file.so\nstate_dir = /from/file/state\n");
    setenv("GUARDIAN_CONF", path, 1);
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.source, path);
    assert_string_equal(cfg.backend, "/from/file.so");
    assert_string_equal(cfg.state_dir, "/from/file/state");

    setenv("GUARDIAN_BACKEND", "/from/env.so", 1);
    setenv("GUARDIAN_STATE_DIR", "/from/env/state", 1);
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.backend, "/from/env.so");
    assert_string_equal(cfg.state_dir, "/from/env/state");

    setenv("GUARDIAN_BACKEND", "relative.so", 1);
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(err, "GUARDIAN_BACKEND must be an absolute path");
}

static void test_load_errors(void **st)
{
    (void)st;
    /* A file named by GUARDIAN_CONF must exist, even with GUARDIAN_BACKEND. */
    setenv("GUARDIAN_CONF", path, 1);
    setenv("GUARDIAN_BACKEND", "/x.so", 1);
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "not found"));
    assert_non_null(strstr(err, path));

    setenv("GUARDIAN_CONF", dir, 1); /* a directory */
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "not a regular file"));

    unsetenv("GUARDIAN_BACKEND");
    setenv("GUARDIAN_CONF", path, 1);
    write_file("state_dir = /s\n");
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "no 'backend' set"));

    write_file("backend = /b.so\nfrobnicate = yes\n");
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, ":2: unknown key 'frobnicate'"));
}

static void test_backend_init_args_override(void **st)
{
    char big[GUARDIAN_BACKEND_INIT_ARGS_MAX + 2];
    (void)st;
    setenv("GUARDIAN_CONF", path, 1);
    write_file("backend = /b.so\nbackend_init_args = configdir='sql:/file'\n");
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.backend_init_args, "configdir='sql:/file'");

    setenv("GUARDIAN_BACKEND_INIT_ARGS", " configdir='sql:/env' flags= ", 1);
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.backend_init_args, " configdir='sql:/env' flags= "); /* as given */

    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    setenv("GUARDIAN_BACKEND_INIT_ARGS", big, 1);
    assert_false(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(err, "GUARDIAN_BACKEND_INIT_ARGS is longer than 1024 bytes");

    setenv("GUARDIAN_BACKEND_INIT_ARGS", "", 1); /* empty: the file's value stays */
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.backend_init_args, "configdir='sql:/file'");
    unsetenv("GUARDIAN_BACKEND_INIT_ARGS");
}

static void test_default_state_dir(void **st)
{
    (void)st;
    setenv("GUARDIAN_CONF", path, 1);
    write_file("backend = /b.so\n");
    assert_true(guardian_config_load(&cfg, err, sizeof(err)));
    assert_string_equal(cfg.state_dir, GUARDIAN_DEFAULT_STATE_DIR);
}

static void test_log_levels(void **st)
{
    (void)st;
    assert_int_equal(guardian_log_level_parse("error"), GUARDIAN_LOG_ERROR);
    assert_int_equal(guardian_log_level_parse("WARNING"), GUARDIAN_LOG_WARN);
    assert_int_equal(guardian_log_level_parse("trace"), GUARDIAN_LOG_TRACE);
    assert_int_equal(guardian_log_level_parse("3"), GUARDIAN_LOG_DEBUG);
    assert_int_equal(guardian_log_level_parse("34"), -1);
    assert_int_equal(guardian_log_level_parse(""), -1);
    assert_int_equal(guardian_log_level_parse(NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_backend_init_args),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_store_keys),
        cmocka_unit_test_setup(test_load_from_file_and_overrides, env_setup),
        cmocka_unit_test_setup(test_load_errors, env_setup),
        cmocka_unit_test_setup(test_default_state_dir, env_setup),
        cmocka_unit_test_setup(test_backend_init_args_override, env_setup),
    };
    int failed;
    if (mkdtemp(dir) == NULL)
        return 1;
    failed = cmocka_run_group_tests_name("config", tests, NULL, NULL);
    snprintf(path, sizeof(path), "%s/guardian.conf", dir);
    unlink(path);
    rmdir(dir);
    return failed;
}
