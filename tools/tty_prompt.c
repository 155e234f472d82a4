/*
 * tty_prompt.c — the terminal prompt for secrets both tools share
 * (tty_prompt.h).  tcsetattr is async-signal-safe, so the signal handler can
 * put the saved settings back before _exit.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "tty_prompt.h"

#define EXIT_INTERRUPTED 130

static struct termios saved;
static volatile sig_atomic_t echo_off;

static void on_signal(int sig)
{
    (void)sig;
    if (echo_off)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    if (write(STDERR_FILENO, "\n", 1) < 0) {
        /* nothing left to do */
    }
    _exit(EXIT_INTERRUPTED);
}

int tty_read_secret(const char *prompt, char *out, size_t cap)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    struct sigaction sa, before[4];
    struct termios quiet;
    size_t n = 0;
    ssize_t r = 0;
    char ch;

    if (cap == 0 || !isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved) != 0)
        return 0;
    fprintf(stderr, "%s: ", prompt);
    fflush(stderr);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < 4; i++)
        sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, &before[i]);
    quiet = saved;
    quiet.c_lflag &= (tcflag_t)~ECHO;
    echo_off = 1;
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
    while (n + 1 < cap && (r = read(STDIN_FILENO, &ch, 1)) == 1 && ch != '\n')
        out[n++] = ch;
    if (n > 0 && out[n - 1] == '\r')
        n--;
    out[n] = '\0';
    tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    echo_off = 0;
    for (size_t i = 0; i < 4; i++)
        sigaction(sigs[i], &before[i], NULL);
    fputc('\n', stderr);
    return r >= 0;
}
