#!/usr/bin/python3
"""boundary_attacks.py MODULE TOKEN PIN ATTACK [ARGS...] -- one attack of a
dishonest operator (who holds the user PIN) on an object, through the module,
with PyKCS11 (and ctypes on the module's function list for the two calls
PyKCS11 1.5 lacks: C_CopyObject, C_SignRecoverInit).  Used by test_boundary.sh
and, with MODULE = p11-kit-client.so and PIN = NAME:SECRET, by
test_service_boundary.sh.  p11-kit-client.so makes a new connection for each
C_GetFunctionList: the ctypes calls then open a session of their own on it,
log in and find the object again there.

Prints one verdict line first:
  REFUSED <CKR name>   the call failed and nothing changed
  ALLOWED [detail]     the call succeeded (the attack worked, or a control did)
  CHANGED <CKR name>   the call failed, yet the object changed or vanished
  COUNT <n> / FOUND <n>
then, indented, what was tried.  Exit 0 unless the harness itself failed
(object not found, bad arguments: exit 2).

Objects are named by a selector CLASS:FIELD=VALUE, CLASS one of private,
public, secret, cert, data, any; FIELD label (text), id (CKA_ID as text) or
idhex (CKA_ID in hex).  It must match exactly one object.

Attacks (SEL = the object attacked):
  count                       objects visible to the logged-in user
  exists SEL                  how many objects match SEL
  show SEL CKA_X              an attribute's value (hex for byte strings)
  reveal SEL CKA_X            C_GetAttributeValue of a secret attribute (CKA_VALUE)
  sign SEL                    C_SignInit + C_Sign (ECDSA / RSA-PKCS / SHA256-HMAC by key type)
  verify SEL                  C_VerifyInit (SHA256-HMAC) with a secret key
  signrecover SEL             C_SignRecoverInit (ECDSA / RSA-PKCS)
  decrypt SEL                 C_DecryptInit (+ C_Decrypt)
  encrypt SEL                 C_EncryptInit (+ C_Encrypt)
  digestkey SEL               C_DigestInit(SHA-256) + C_DigestKey + C_DigestFinal
  ecdh SEL                    C_DeriveKey(ECDH1_DERIVE, CKD_NULL, P-256 generator) -> extractable secret
  unwrapwith SEL [MECH]       C_UnwrapKey with SEL as the unwrapping key (standard mechanism)
  wrapwith SEL TARGET [MECH]  C_WrapKey of TARGET with SEL as the wrapping key
  wrapped SEL WRAPPING [MECH] C_WrapKey of SEL under WRAPPING
  setattr SEL CKA_X VALUE     C_SetAttributeValue (VALUE true/false or text), then read back
  copy SEL [CKA_X=VALUE...]   C_CopyObject with that template
  destroy SEL                 C_DestroyObject, then look for it again
  create CLASS [CKA_X=VALUE...] C_CreateObject of a CLASS object (a CLASSES name) with that
                              template (VALUE true/false, a number for a CK_ULONG attribute,
                              hex:HEX or file:PATH for bytes, else text); a made object is
                              destroyed again
  enrol ROOT.der OEM-IDS      the SO's enrolment request (CKG_GUARDIAN_REQ_ENROL_ROOT) in this
                              (user) session
  initpin NEW-PIN             C_InitPIN (the SO's: makes or resets an operator) in this session
  issue PRODUCT DEVICE-ID SPKI.der OUT.der [CKA_X=VALUE...]
                              a control: the device certificate request
                              (CKG_GUARDIAN_REQ_DEVICE_CERT, PRODUCT = OEM/PRODUCT), with
                              e.g. CKA_TOKEN=true; writes the certificate's DER to OUT.der
  second-guardian TOKEN2      a status request (CKG_GUARDIAN_REQ_STATUS) in this session, then
                              one in a session of TOKEN2 (same PIN) in the same process: a
                              process serves one Guardian, so another Guardian's token is
                              refused (ALLOWED when TOKEN2 is this token or the same Guardian)
MECH (wrapping, unwrapping): aes-key-wrap-pad (the default), aes-ecb, rsa-pkcs.
"""
import ctypes
import os
import re
import sys

import PyKCS11
from PyKCS11 import LowLevel

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "..", "..", "include", "guardian", "guardian-pkcs11.h")
CKR_GUARDIAN_BASE = PyKCS11.CKR_VENDOR_DEFINED | 0x47440000
CKM_AES_KEY_WRAP_PAD = 0x210A

# The P-256 base point, uncompressed: a valid peer point for ECDH.
P256_G = bytes.fromhex(
    "04" "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")


def vendor_names():
    """CKR_GUARDIAN_* names from the public header, so new codes print by name."""
    names = {}
    try:
        text = open(HEADER).read()
    except OSError:
        return names
    for name, n in re.findall(r"#define (CKR_GUARDIAN_\w+) \(CKR_GUARDIAN_BASE \| (0x[0-9A-Fa-f]+)UL\)", text):
        names[CKR_GUARDIAN_BASE | int(n, 16)] = name
    return names


VENDOR = vendor_names()


def vendor_constants():
    """CKA_GUARDIAN_*, CKO_GUARDIAN_* and CKG_GUARDIAN_REQ_* values from the public header."""
    bases = {"CKA": PyKCS11.CKA_VENDOR_DEFINED | 0x47440000, "CKO": PyKCS11.CKO_VENDOR_DEFINED | 0x47440000}
    values = {}
    try:
        text = open(HEADER).read()
    except OSError:
        return values
    for full, kind, n in re.findall(r"#define ((CK[AO])_GUARDIAN_\w+) \(CK[AO]_GUARDIAN_BASE \| (0x[0-9A-Fa-f]+)UL\)",
                                    text):
        values[full] = bases[kind] | int(n, 16)
    for name, n in re.findall(r"#define (CKG_GUARDIAN_REQ_\w+) (\d+)UL", text):
        values[name] = int(n)
    return values


GUARDIAN = vendor_constants()


# PKCS#11 2.40 codes that PyKCS11 1.5 does not name.
MISSING = {0x1B: "CKR_ACTION_PROHIBITED", 0x140: "CKR_CURVE_NOT_SUPPORTED"}


def ckr_name(rv):
    rv &= 0xFFFFFFFF
    if rv in VENDOR:
        return VENDOR[rv]
    if rv in MISSING:
        return MISSING[rv]
    if rv in PyKCS11.CKR and isinstance(PyKCS11.CKR[rv], str):
        return PyKCS11.CKR[rv]
    return "0x%08X" % rv


NOTES = []
TOKEN, PIN = "", ""  # main's, for Direct


def note(text):
    """A detail line, printed after the verdict."""
    NOTES.append(text)


class Refused(Exception):
    def __init__(self, rv, where):
        super().__init__(where)
        self.rv, self.where = rv, where


def call(where, fn, *args):
    """Run a PyKCS11 call; a PKCS#11 error becomes Refused(rv, where)."""
    try:
        return fn(*args)
    except PyKCS11.PyKCS11Error as e:
        raise Refused(e.value, where) from None


# ---- ctypes on the module's own function list (same dlopen handle as PyKCS11) ----------

FUNCTIONS = ("C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo "
             "C_GetTokenInfo C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN "
             "C_OpenSession C_CloseSession C_CloseAllSessions C_GetSessionInfo C_GetOperationState "
             "C_SetOperationState C_Login C_Logout C_CreateObject C_CopyObject C_DestroyObject "
             "C_GetObjectSize C_GetAttributeValue C_SetAttributeValue C_FindObjectsInit C_FindObjects "
             "C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal C_DecryptInit "
             "C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate C_DigestKey "
             "C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal C_SignRecoverInit C_SignRecover").split()


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p), ("ulValueLen", ctypes.c_ulong)]


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [("mechanism", ctypes.c_ulong), ("pParameter", ctypes.c_void_p), ("ulParameterLen", ctypes.c_ulong)]


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(n, ctypes.c_void_p) for n in FUNCTIONS]


def function_list(module):
    lib = ctypes.CDLL(module)
    get = lib.C_GetFunctionList
    get.argtypes = [ctypes.POINTER(ctypes.POINTER(CK_FUNCTION_LIST))]
    get.restype = ctypes.c_ulong
    fl = ctypes.POINTER(CK_FUNCTION_LIST)()
    rv = get(ctypes.byref(fl))
    if rv != 0:
        sys.exit("ERROR C_GetFunctionList: %s" % ckr_name(rv))
    return fl.contents


def cfunc(fl, name, *argtypes):
    return ctypes.CFUNCTYPE(ctypes.c_ulong, *argtypes)(getattr(fl, name))


# ---- objects -----------------------------------------------------------------------------------

CLASSES = {"private": PyKCS11.CKO_PRIVATE_KEY, "public": PyKCS11.CKO_PUBLIC_KEY, "secret": PyKCS11.CKO_SECRET_KEY,
           "cert": PyKCS11.CKO_CERTIFICATE, "data": PyKCS11.CKO_DATA, "any": None}


def template_of(sel):
    try:
        cls, rest = sel.split(":", 1)
        field, value = rest.split("=", 1)
        t = [] if CLASSES[cls] is None else [(PyKCS11.CKA_CLASS, CLASSES[cls])]
    except (ValueError, KeyError):
        sys.exit("ERROR bad selector %r (CLASS:FIELD=VALUE)" % sel)
    if field == "label":
        t.append((PyKCS11.CKA_LABEL, value))
    elif field == "id":
        t.append((PyKCS11.CKA_ID, value.encode()))
    elif field == "idhex":
        t.append((PyKCS11.CKA_ID, bytes.fromhex(value)))
    else:
        sys.exit("ERROR bad selector field %r" % field)
    return t


def find(s, sel):
    found = s.findObjects(template_of(sel))
    if len(found) != 1:
        sys.exit("ERROR %d objects match %s" % (len(found), sel))
    return found[0]


def count(s, sel=None):
    return len(s.findObjects(template_of(sel) if sel else []))


class Direct:
    """C_CopyObject and C_SignRecoverInit through ctypes.  On the module itself
    the ctypes function list is PyKCS11's: its session and handles serve.
    p11-kit-client.so answers each C_GetFunctionList with a new connection (its
    client.c): then this opens a session of its own on that one, logs in, finds
    the object again (handles are per connection) and counts objects there."""

    def __init__(self, lib_path, s, sel, obj):
        self.fl, self.own = function_list(lib_path), False
        info = (ctypes.c_ulong * 8)()
        if cfunc(self.fl, "C_GetSessionInfo", ctypes.c_ulong, ctypes.c_void_p)(s.session.value(), info) == 0:
            self.session, self.obj, self.count = s.session.value(), obj.value(), lambda: count(s)
            return
        note("the ctypes function list is a connection of its own: a session, a login and the object there")
        self.own = True
        rv = cfunc(self.fl, "C_Initialize", ctypes.c_void_p)(None)
        if rv not in (0, 0x191):  # CKR_CRYPTOKI_ALREADY_INITIALIZED
            sys.exit("ERROR C_Initialize (ctypes): %s" % ckr_name(rv))
        get_slots = cfunc(self.fl, "C_GetSlotList", ctypes.c_ubyte, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong))
        n = ctypes.c_ulong(0)
        get_slots(1, None, ctypes.byref(n))
        slots = (ctypes.c_ulong * max(1, n.value))()
        get_slots(1, slots, ctypes.byref(n))
        token_info = cfunc(self.fl, "C_GetTokenInfo", ctypes.c_ulong, ctypes.c_void_p)
        mine = []
        for slot in slots[:n.value]:
            ti = ctypes.create_string_buffer(512)
            if token_info(slot, ti) == 0 and ti.raw[:32].decode(errors="replace").rstrip() == TOKEN:
                mine.append(slot)
        if len(mine) != 1:
            sys.exit("ERROR ctypes: %d tokens labelled %r" % (len(mine), TOKEN))
        h = ctypes.c_ulong(0)
        rv = cfunc(self.fl, "C_OpenSession", ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_ulong))(mine[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION,
                                                   None, None, ctypes.byref(h))
        if rv != 0:
            sys.exit("ERROR C_OpenSession (ctypes): %s" % ckr_name(rv))
        self.session = h.value
        pin = PIN.encode()
        rv = cfunc(self.fl, "C_Login", ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong)(
            self.session, PyKCS11.CKU_USER, pin, len(pin))
        if rv not in (0, 0x100):  # CKR_USER_ALREADY_LOGGED_IN
            sys.exit("ERROR C_Login (ctypes): %s" % ckr_name(rv))
        found = self.find(template_of(sel))
        if len(found) != 1:
            sys.exit("ERROR ctypes: %d objects match %s" % (len(found), sel))
        self.obj = found[0]
        self.count = lambda: len(self.find([]))
        note("on that connection %s = handle %d" % (sel, self.obj))

    def find(self, template):
        keep, attrs = [], []
        for t, v in template:
            raw = (v.to_bytes(ctypes.sizeof(ctypes.c_ulong), sys.byteorder) if isinstance(v, int)
                   else v.encode() if isinstance(v, str) else bytes(v))
            buf = ctypes.create_string_buffer(raw, max(1, len(raw)))
            keep.append(buf)
            attrs.append(CK_ATTRIBUTE(t, ctypes.cast(buf, ctypes.c_void_p), len(raw)))
        arr = (CK_ATTRIBUTE * max(1, len(attrs)))(*attrs)
        init = cfunc(self.fl, "C_FindObjectsInit", ctypes.c_ulong, ctypes.POINTER(CK_ATTRIBUTE), ctypes.c_ulong)
        more = cfunc(self.fl, "C_FindObjects", ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.c_ulong,
                     ctypes.POINTER(ctypes.c_ulong))
        if init(self.session, arr, len(attrs)) != 0:
            sys.exit("ERROR C_FindObjectsInit (ctypes)")
        found, batch, n = [], (ctypes.c_ulong * 64)(), ctypes.c_ulong(0)
        while more(self.session, batch, 64, ctypes.byref(n)) == 0 and n.value:
            found += batch[:n.value]
        cfunc(self.fl, "C_FindObjectsFinal", ctypes.c_ulong)(self.session)
        return found

    def close(self):
        if self.own:
            cfunc(self.fl, "C_Finalize", ctypes.c_void_p)(None)


def attr_code(name):
    code = PyKCS11.CKA.get(name)
    if not isinstance(code, int):
        sys.exit("ERROR unknown attribute %s" % name)
    return code


def create_value(s, code, v):
    """A template value for C_CreateObject: true/false, a number for a CK_ULONG
    attribute, hex:HEX or file:PATH for bytes, else text (bytes where PyKCS11
    takes bytes)."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.startswith("hex:"):
        return bytes.fromhex(v[4:])
    if v.startswith("file:"):
        with open(v[5:], "rb") as f:
            return f.read()
    if s.isNum(code):
        return int(v, 0)
    return v.encode() if s.isBin(code) else v


def request(s, what, attrs):
    """C_CreateObject of a CKO_GUARDIAN_REQUEST (docs/vendor-interface.md); the result's handle.
    Vendor attributes cross as bytes: a CK_ULONG is sizeof(CK_ULONG) bytes in the machine's order."""
    ulong = ctypes.sizeof(ctypes.c_ulong)
    t = [(PyKCS11.CKA_CLASS, GUARDIAN["CKO_GUARDIAN_REQUEST"]),
         (GUARDIAN["CKA_GUARDIAN_REQUEST"], GUARDIAN[what].to_bytes(ulong, sys.byteorder))] + attrs
    note("C_CreateObject of a CKO_GUARDIAN_REQUEST, %s" % what)
    return call("C_CreateObject (%s)" % what, s.createObject, t)


def parse_value(v):
    return {"true": True, "false": False}.get(v.lower(), v)


def read_attr(s, obj, code):
    try:
        v = s.getAttributeValue(obj, [code])[0]
    except PyKCS11.PyKCS11Error as e:
        return "<%s>" % ckr_name(e.value)
    if isinstance(v, (list, tuple)):
        return bytes(v)
    return v


def key_type(s, key):
    return s.getAttributeValue(key, [PyKCS11.CKA_KEY_TYPE])[0]


def sign_mechanism(kt):
    if kt == PyKCS11.CKK_EC:
        return PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)
    if kt == PyKCS11.CKK_RSA:
        return PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS, None)
    return PyKCS11.Mechanism(PyKCS11.CKM_SHA256_HMAC, None)


def wrap_mechanism(name):
    """MECH of the wrapping attacks."""
    if name == "aes-key-wrap-pad":
        return PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD, None)
    if name == "aes-ecb":
        return PyKCS11.Mechanism(PyKCS11.CKM_AES_ECB, None)
    if name == "rsa-pkcs":
        return PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS, None)
    sys.exit("ERROR unknown wrapping mechanism %r" % name)


def cipher_mechanism(kt):
    if kt == PyKCS11.CKK_RSA:
        return PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS, None)
    if kt == PyKCS11.CKK_EC:
        return PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)  # no EC cipher exists: the policy must answer first
    return PyKCS11.Mechanism(PyKCS11.CKM_AES_ECB, None)


# ---- attacks -----------------------------------------------------------------------------------

def attack(lib_path, s, name, args):
    """Returns the verdict line; raises Refused for a refused call."""
    if name == "count":
        return "COUNT %d" % count(s)
    if name == "exists":
        return "FOUND %d" % count(s, args[0])

    if name == "create":
        t = [(PyKCS11.CKA_CLASS, CLASSES[args[0]])]
        for a in args[1:]:
            n, v = a.split("=", 1)
            t.append((attr_code(n), create_value(s, attr_code(n), v)))
        note("C_CreateObject of a %s object with %s" % (args[0], " ".join(args[1:])))
        before = count(s)
        try:
            h = s.createObject(t)
        except PyKCS11.PyKCS11Error as e:
            if count(s) != before:
                return "CHANGED %s (the object count changed)" % ckr_name(e.value)
            raise Refused(e.value, "C_CreateObject") from None
        s.destroyObject(h)
        return "ALLOWED the object was made (handle %d; destroyed again)" % h.value()
    if name == "second-guardian":
        request(s, "CKG_GUARDIAN_REQ_STATUS", [])
        other = [sl for sl in LIB.getSlotList(tokenPresent=True) if LIB.getTokenInfo(sl).label.strip() == args[0]]
        if len(other) != 1:
            return "ERROR %d tokens labelled %r" % (len(other), args[0])
        s2 = LIB.openSession(other[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        if args[0] != TOKEN:
            s2.login(PIN)
        try:
            request(s2, "CKG_GUARDIAN_REQ_STATUS", [])
        finally:
            if args[0] != TOKEN:
                s2.logout()
            s2.closeSession()
        return "ALLOWED a status request on %s in the same process" % args[0]
    if name == "enrol":
        with open(args[0], "rb") as f:
            der = f.read()
        h = request(s, "CKG_GUARDIAN_REQ_ENROL_ROOT", [(PyKCS11.CKA_VALUE, der),
                                                      (GUARDIAN["CKA_GUARDIAN_OEM_IDS"], args[1].encode())])
        return "ALLOWED the root was enrolled (handle %d)" % h.value()
    if name == "initpin":
        call("C_InitPIN", s.initPin, args[0])
        return "ALLOWED C_InitPIN returned CKR_OK"
    if name == "issue":
        oem, product = args[0].split("/", 1)
        with open(args[2], "rb") as f:
            spki = f.read()
        t = [(GUARDIAN["CKA_GUARDIAN_OEM_ID"], oem.encode()), (GUARDIAN["CKA_GUARDIAN_PRODUCT_ID"], product.encode()),
             (GUARDIAN["CKA_GUARDIAN_DEVICE_ID"], args[1].encode()), (GUARDIAN["CKA_GUARDIAN_DEVICE_SPKI"], spki)]
        for a in args[4:]:
            n, v = a.split("=", 1)
            t.append((attr_code(n), create_value(s, attr_code(n), v)))
        h = request(s, "CKG_GUARDIAN_REQ_DEVICE_CERT", t)
        der = read_attr(s, h, PyKCS11.CKA_VALUE)
        with open(args[3], "wb") as f:
            f.write(der)
        on_token = read_attr(s, h, PyKCS11.CKA_TOKEN)
        return "ALLOWED certificate of %d bytes, CKA_TOKEN %s" % (len(der), on_token)

    obj = find(s, args[0])
    note("object %s = handle %d" % (args[0], obj.value()))
    if name == "show":
        v = read_attr(s, obj, attr_code(args[1]))
        return "VALUE %s" % (v.hex() if isinstance(v, bytes) else v)

    if name == "reveal":
        code = attr_code(args[1])
        t = LowLevel.ckattrlist(1)
        t[0].SetType(code)
        rv = s.lib.C_GetAttributeValue(s.session, obj, t)
        if rv != PyKCS11.CKR_OK:
            raise Refused(rv, "C_GetAttributeValue(%s)" % args[1])
        return "ALLOWED %s is %d bytes long" % (args[1], t[0].GetLen())
    if name == "sign":
        mech = sign_mechanism(key_type(s, obj))
        sig = call("C_Sign", s.sign, obj, b"\x11" * 32, mech)
        return "ALLOWED signature of %d bytes" % len(sig)
    if name == "verify":
        mech = PyKCS11.Mechanism(PyKCS11.CKM_SHA256_HMAC, None)
        try:
            s.verify(obj, b"\x11" * 32, b"\x00" * 32, mech)
        except PyKCS11.PyKCS11Error as e:
            if e.value == PyKCS11.CKR_SIGNATURE_INVALID:
                return "ALLOWED (C_VerifyInit accepted it; the MAC given was wrong)"
            raise Refused(e.value, "C_VerifyInit/C_Verify") from None
        return "ALLOWED"
    if name == "signrecover":
        kt = key_type(s, obj)
        d = Direct(lib_path, s, args[0], obj)
        f = cfunc(d.fl, "C_SignRecoverInit", ctypes.c_ulong, ctypes.POINTER(CK_MECHANISM), ctypes.c_ulong)
        m = CK_MECHANISM(PyKCS11.CKM_RSA_PKCS if kt == PyKCS11.CKK_RSA else PyKCS11.CKM_ECDSA, None, 0)
        rv = f(d.session, ctypes.byref(m), d.obj)
        d.close()
        if rv != 0:
            raise Refused(rv, "C_SignRecoverInit")
        return "ALLOWED (C_SignRecoverInit returned CKR_OK)"
    if name in ("decrypt", "encrypt"):
        mech = cipher_mechanism(key_type(s, obj))
        fn = s.decrypt if name == "decrypt" else s.encrypt
        out = call("C_%sInit/C_%s" % ((name.capitalize(),) * 2), fn, obj, b"\x22" * 16, mech)
        return "ALLOWED %d bytes out" % len(out)
    if name == "digestkey":
        d = call("C_DigestInit", s.digestSession, PyKCS11.Mechanism(PyKCS11.CKM_SHA256, None))
        call("C_DigestKey", d.digestKey, obj)
        digest = call("C_DigestFinal", d.final)
        return "ALLOWED SHA-256 of the key = %s" % bytes(digest).hex()
    if name == "ecdh":
        mech = PyKCS11.ECDH1_DERIVE_Mechanism(P256_G)
        t = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_GENERIC_SECRET),
             (PyKCS11.CKA_VALUE_LEN, 32), (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_SENSITIVE, False),
             (PyKCS11.CKA_EXTRACTABLE, True)]
        k = call("C_DeriveKey", s.deriveKey, obj, t, mech)
        z = read_attr(s, k, PyKCS11.CKA_VALUE)
        s.destroyObject(k)
        return "ALLOWED shared secret %s" % (z.hex() if isinstance(z, bytes) else z)
    if name == "unwrapwith":
        kt = key_type(s, obj)
        if len(args) > 1:
            mech, blob = wrap_mechanism(args[1]), b"\x33" * (256 if kt == PyKCS11.CKK_RSA else 48)
        elif kt == PyKCS11.CKK_RSA:
            mech, blob = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1), b"\x33" * 256
        elif kt == PyKCS11.CKK_EC:
            mech, blob = PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD, None), b"\x33" * 40  # no EC unwrap exists
        else:
            mech, blob = PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD, None), b"\x33" * 40
        t = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_GENERIC_SECRET),
             (PyKCS11.CKA_TOKEN, False)]
        call("C_UnwrapKey", s.unwrapKey, obj, blob, t, mech)
        return "ALLOWED"
    if name == "wrapwith":
        target = find(s, args[1])
        kt = key_type(s, obj)
        if len(args) > 2:
            mech = wrap_mechanism(args[2])
        elif kt == PyKCS11.CKK_RSA:
            mech = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1)
        else:
            mech = PyKCS11.Mechanism(CKM_AES_KEY_WRAP_PAD, None)
        w = call("C_WrapKey", s.wrapKey, obj, target, mech)
        return "ALLOWED %d wrapped bytes" % len(w)
    if name == "wrapped":
        wrapping = find(s, args[1])
        mech = wrap_mechanism(args[2] if len(args) > 2 else "aes-key-wrap-pad")
        w = call("C_WrapKey", s.wrapKey, wrapping, obj, mech)
        return "ALLOWED %d wrapped bytes: the secret left the token" % len(w)
    if name == "setattr":
        code, value = attr_code(args[1]), parse_value(args[2])
        if isinstance(value, str) and s.isBin(code):
            value = value.encode()
        before = read_attr(s, obj, code)
        note("%s before: %r; setting %r" % (args[1], before, value))
        try:
            s.setAttributeValue(obj, [(code, value)])
        except PyKCS11.PyKCS11Error as e:
            after = read_attr(s, obj, code)
            if after != before:
                return "CHANGED %s (%s is now %r)" % (ckr_name(e.value), args[1], after)
            raise Refused(e.value, "C_SetAttributeValue") from None
        return "ALLOWED %s is now %r" % (args[1], read_attr(s, obj, code))
    if name == "copy":
        d = Direct(lib_path, s, args[0], obj)
        f = cfunc(d.fl, "C_CopyObject", ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(CK_ATTRIBUTE), ctypes.c_ulong,
                  ctypes.POINTER(ctypes.c_ulong))
        keep, attrs = [], []
        for a in args[1:]:
            n, v = a.split("=", 1)
            v = parse_value(v)
            buf = ctypes.create_string_buffer(bytes([1 if v else 0]) if isinstance(v, bool) else v.encode(),
                                              1 if isinstance(v, bool) else len(v))
            keep.append(buf)
            attrs.append(CK_ATTRIBUTE(attr_code(n), ctypes.cast(buf, ctypes.c_void_p), len(buf.raw)))
        arr = (CK_ATTRIBUTE * max(1, len(attrs)))(*attrs)
        before = d.count()
        out = ctypes.c_ulong(0)
        rv = f(d.session, d.obj, arr, len(attrs), ctypes.byref(out))
        after = d.count()
        d.close()
        if rv != 0:
            if after != before:
                return "CHANGED %s (the object count changed)" % ckr_name(rv)
            raise Refused(rv, "C_CopyObject")
        return "ALLOWED copy = handle %d" % out.value
    if name == "destroy":
        before = count(s)
        try:
            s.destroyObject(obj)
        except PyKCS11.PyKCS11Error as e:
            if count(s, args[0]) != 1 or count(s) != before:
                return "CHANGED %s (the object is gone)" % ckr_name(e.value)
            raise Refused(e.value, "C_DestroyObject") from None
        return "ALLOWED the object is gone (%d objects, were %d)" % (count(s), before)
    sys.exit("ERROR unknown attack %r" % name)


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    global TOKEN, PIN, LIB
    module, token, pin, name, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    TOKEN, PIN = token, pin
    lib = LIB = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slots = [sl for sl in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(sl).label.strip() == token]
    if len(slots) != 1:
        sys.exit("ERROR %d tokens labelled %r" % (len(slots), token))
    s = lib.openSession(slots[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(pin)
    try:
        print(attack(module, s, name, args))
    except Refused as r:
        print("REFUSED %s" % ckr_name(r.rv))
        note("refused at %s" % r.where)
    finally:
        for n in NOTES:
            print("    " + n)
        try:
            s.logout()
            s.closeSession()
        except PyKCS11.PyKCS11Error:
            pass


if __name__ == "__main__":
    main()
