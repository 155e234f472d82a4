/*
 * tty_prompt.h — a secret (PIN, passphrase) read from the terminal with its
 * echo off, for guardianctl and guardian-wrap.  SIGINT, SIGTERM, SIGHUP or
 * SIGQUIT during the prompt put the terminal back as it was and end the
 * process with 130 (the tools' exit convention): an interrupted prompt never
 * leaves the operator's shell without echo.
 */
#ifndef TTY_PROMPT_H
#define TTY_PROMPT_H

#include <stddef.h>

/* Prints "PROMPT: " on stderr and reads one line from stdin (a terminal) into
 * out, without its end of line.  1 when a line (maybe empty) was read, 0 when
 * stdin is no terminal or cannot be read. */
int tty_read_secret(const char *prompt, char *out, size_t cap);

#endif /* TTY_PROMPT_H */
