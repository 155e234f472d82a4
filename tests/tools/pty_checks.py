#!/usr/bin/env python3
"""pty_checks.py — what only a terminal shows, for tests/tools/test_errors.sh.

  pty_checks.py echo CMD...
      Runs CMD on a pseudo-terminal (stdin, stdout, stderr) with no PIN in the
      environment, waits for its PIN (or passphrase) prompt, checks the prompt turned the
      terminal's ECHO off, sends SIGINT (or $SIGNAL: TERM), and checks that CMD
      exited 130 and the terminal has ECHO again (what `stty -a` shows as
      "echo").
  pty_checks.py progress COLS CMD...
      Runs CMD with stderr on a pseudo-terminal: COLS > 0 sets the terminal's
      size (TIOCSWINSZ); COLS = 0 leaves it 0x0 so that CMD falls back to
      $COLUMNS.  Every piece of the output between carriage returns and line
      ends must be narrower than the width (WIDTH: $COLUMNS when COLS is 0), and
      at least one must be a progress bar ("[###...] n/m").
Exit 0 when the check holds, 1 (with the reason) otherwise.
"""
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time


def read_until(fd, pattern, timeout):
    buf = b""
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if fd in r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf):
                return buf, True
    return buf, False


def check_echo(cmd):
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("GUARDIAN_PIN", "GUARDIAN_SO_PIN")}
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    out, seen = read_until(master, rb"(PIN|pass phrase of .*): ", 30)
    if not seen:
        p.kill()
        print("no PIN prompt; output: %r" % out)
        return 1
    time.sleep(0.2)
    if termios.tcgetattr(slave)[3] & termios.ECHO:
        p.kill()
        print("the prompt did not turn echo off: the check could not tell anything")
        return 1
    sig = signal.SIGTERM if os.environ.get("SIGNAL") == "TERM" else signal.SIGINT
    p.send_signal(sig)
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        print("still running 10 s after %s" % sig.name)
        return 1
    lflag = termios.tcgetattr(slave)[3]
    stty = subprocess.run(["stty", "-a"], stdin=slave, capture_output=True, text=True).stdout
    if not lflag & termios.ECHO or not re.search(r"(^|\s)echo(\s|$)", stty):
        print("echo is still off after %s (exit %d); stty -a: %s" % (sig.name, rc, stty))
        return 1
    if rc != 130:
        print("exit %d after %s, not 130" % (rc, sig.name))
        return 1
    print("echo off at the prompt, on again after %s; exit 130; stty -a shows 'echo'" % sig.name)
    return 0


def check_progress(cols, cmd):
    master, slave = pty.openpty()
    if cols > 0:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
        width = cols
    else:
        width = int(os.environ["COLUMNS"])
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    buf = b""
    while True:
        r, _, _ = select.select([master], [], [], 0.2)
        if master in r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        elif p.poll() is not None:
            break
    rc = p.wait()
    pieces = [x for x in re.split(rb"[\r\n]+", buf) if x]
    bars = [x for x in pieces if re.match(rb"\[[#.]+\] \d+/\d+", x)]
    too_wide = [x for x in pieces if len(x.decode(errors="replace")) > width - 1]
    if rc != 0:
        print("exit %d: %r" % (rc, buf[-500:]))
        return 1
    if not bars:
        print("no progress bar in %r" % buf[-500:])
        return 1
    if too_wide:
        print("%d of %d lines wider than %d columns, e.g. %r" % (len(too_wide), len(pieces), width - 1, too_wide[0]))
        return 1
    print("%d progress lines, %d bars, the widest %d columns (terminal %d)" %
          (len(pieces), len(bars), max(len(x) for x in pieces), width))
    return 0


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "echo":
        return check_echo(sys.argv[2:])
    if len(sys.argv) >= 4 and sys.argv[1] == "progress":
        return check_progress(int(sys.argv[2]), sys.argv[3:])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
