/*
 * log.c — leveled, categorised logging to stderr, and the call trace.
 *
 * Lines look like "guardian[1234]: error: config: ...".  The level comes from the
 * configuration (log_level) and GUARDIAN_DEBUG, which wins when set.  Nothing
 * that reaches this file may contain a PIN, a key or package bytes: callers log
 * names, lengths and CKR codes only.  The audit trail is data, not logging.
 *
 * An error or warning line is printed once: the same line again within
 * GUARDIAN_LOG_REPEAT_SECONDS (several threads of one run failing on the
 * same cause, each of guardianctl provision's workers say) is dropped.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "module.h"

atomic_int guardian_trace_on = 0;
static atomic_int log_level = GUARDIAN_LOG_WARN;
static atomic_int env_checked = 0;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

int guardian_log_level_parse(const char *text)
{
    if (text == NULL)
        return -1;
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
        if (strcasecmp(text, level_names[i]) == 0)
            return i;
    if (strcasecmp(text, "warning") == 0)
        return GUARDIAN_LOG_WARN;
    if (text[0] >= '0' && text[0] <= '4' && text[1] == '\0')
        return text[0] - '0';
    return -1;
}

static void apply_level(int level)
{
    atomic_store(&log_level, level);
    atomic_store(&guardian_trace_on, level >= GUARDIAN_LOG_TRACE);
}

/* GUARDIAN_DEBUG is read once, lazily, so that messages printed before the
 * configuration is read (a bad configuration, say) already honour it. */
static int env_level(void)
{
    const char *v = secure_getenv("GUARDIAN_DEBUG"); /* ignored when setuid/setcap, like config.c's */
    if (v == NULL || *v == '\0')
        return -1;
    if (strcmp(v, "1") == 0 || strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0)
        return GUARDIAN_LOG_DEBUG;
    return guardian_log_level_parse(v);
}

static void check_env_once(void)
{
    if (atomic_exchange(&env_checked, 1) == 0) {
        int lvl = env_level();
        if (lvl >= 0)
            apply_level(lvl);
    }
}

void guardian_log_set_level(int configured_level)
{
    int lvl = env_level();
    atomic_store(&env_checked, 1);
    if (lvl < 0)
        lvl = configured_level >= 0 ? configured_level : GUARDIAN_LOG_WARN;
    apply_level(lvl);
}

#define LOG_RECENT 16

/* 1 when the same line (level, category, text: `line` without its pid
 * prefix) was printed less than GUARDIAN_LOG_REPEAT_SECONDS ago; else
 * remembers it. */
static int repeated(const char *line)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static struct {
        uint64_t hash;
        time_t when;
    } recent[LOG_RECENT];
    static unsigned next;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    time_t now = time(NULL);
    int seen = 0;

    for (const unsigned char *p = (const unsigned char *)line; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < LOG_RECENT; i++)
        if (recent[i].hash == h && recent[i].when != 0 && now - recent[i].when < GUARDIAN_LOG_REPEAT_SECONDS) {
            seen = 1;
            break;
        }
    if (!seen) {
        recent[next].hash = h;
        recent[next].when = now;
        next = (next + 1) % LOG_RECENT;
    }
    pthread_mutex_unlock(&lock);
    return seen;
}

void guardian_log(enum guardian_log_level level, const char *category, const char *fmt, ...)
{
    char line[1024];
    int n;
    va_list ap;

    check_env_once();
    if ((int)level > atomic_load(&log_level))
        return;
    n = snprintf(line, sizeof(line), "guardian[%ld]: %s: %s: ", (long)getpid(),
                 level_names[level], category);
    if (n < 0 || (size_t)n >= sizeof(line))
        return;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    /* The pid prefix is the same for every line of this process. */
    if (level <= GUARDIAN_LOG_WARN && repeated(strchr(line, ' ') != NULL ? strchr(line, ' ') : line))
        return;
    /* One write per line keeps lines whole when several threads log. */
    n = (int)strlen(line);
    if ((size_t)n < sizeof(line) - 1) {
        line[n++] = '\n';
    } else {
        line[sizeof(line) - 2] = '\n';
        n = (int)sizeof(line) - 1;
    }
    if (write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
}

void guardian_trace_enter(const char *function)
{
    guardian_log(GUARDIAN_LOG_TRACE, "call", "%s", function);
}

void guardian_trace_return(const char *function, CK_RV rv)
{
    const char *name = guardian_ckr_name(rv);
    if (name != NULL)
        guardian_log(GUARDIAN_LOG_TRACE, "call", "%s = %s", function, name);
    else
        guardian_log(GUARDIAN_LOG_TRACE, "call", "%s = 0x%08lx", function, (unsigned long)rv);
}
