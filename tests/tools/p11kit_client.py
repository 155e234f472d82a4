#!/usr/bin/python3
"""p11kit_client.py — a PKCS#11 client of p11-kit-client.so that holds its
connection, for test_service.sh's checks of how p11-kit server behaves
(docs/service-mode.md).  P11_KIT_SERVER_ADDRESS names the server.

  p11kit_client.py hold PIN|- SECONDS
      open a read-write session on the first token, log in (unless -), print
      "STATE <CKS_*>", sleep, print "STATE <CKS_*>" again.
  p11kit_client.py so-login PIN
      log in as the Security Officer in a read-write session: "STATE <CKS_*>",
      or "ERROR CKR_*" (exit 1).
  p11kit_client.py survive PIN|- [--sigpipe-default]
      open a session and log in, print "READY", wait for a line on stdin (the
      test kills what serves this connection meanwhile), then print the
      result of two more calls ("STATE n" or "ERROR CKR_*"), then "SLOTS n"
      after a C_Finalize and a new C_Initialize.  --sigpipe-default: SIGPIPE
      kills this process, as it does a C program that does not ignore it.
"""
import signal
import sys
import time

import PyKCS11

CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


def session(lib, pin, who=PyKCS11.CKU_USER):
    slot = lib.getSlotList(tokenPresent=True)[0]
    s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    if pin != "-":
        s.login(pin, who)
    return s


def state(s):
    try:
        return "STATE %d" % s.getSessionInfo().state
    except PyKCS11.PyKCS11Error as e:
        return "ERROR %s" % PyKCS11.CKR[e.value]


def main():
    cmd, pin = sys.argv[1], sys.argv[2]
    if "--sigpipe-default" in sys.argv:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    lib = PyKCS11.PyKCS11Lib()
    lib.load(CLIENT)
    if cmd == "so-login":
        try:
            print(state(session(lib, pin, PyKCS11.CKU_SO)))
        except PyKCS11.PyKCS11Error as e:
            print("ERROR %s" % PyKCS11.CKR[e.value])
            sys.exit(1)
        return
    s = session(lib, pin)
    if cmd == "hold":
        print(state(s), flush=True)
        time.sleep(float(sys.argv[3]))
        print(state(s), flush=True)
    elif cmd == "survive":
        print("READY", flush=True)
        sys.stdin.readline()
        print(state(s), flush=True)
        print(state(s), flush=True)
        lib2 = PyKCS11.PyKCS11Lib()
        lib2.load(CLIENT)
        print("SLOTS %d" % len(lib2.getSlotList(tokenPresent=True)), flush=True)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
