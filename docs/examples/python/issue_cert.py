#!/usr/bin/python3
"""issue_cert.py — the Guardian's production-line operations from Python
(PyKCS11: Debian's python3-pykcs11), through standard PKCS#11 calls only:
every Guardian operation is a C_CreateObject of a CKO_GUARDIAN_REQUEST, and
the counters are attributes of the product's CKO_GUARDIAN_PACKAGE object.
No vendor mechanism is used, so this works through p11-kit's RPC
(p11-kit-client.so) exactly as on guardian-pkcs11.so.

  issue_cert.py MODULE TOKEN import PACKAGE.gpk
  issue_cert.py MODULE TOKEN issue PRODUCT DEVICE_ID DEVICE_SPKI.der OUT.der
  issue_cert.py MODULE TOKEN remaining OEM/PRODUCT
  issue_cert.py MODULE TOKEN audit OUT [OEM/PRODUCT]

PRODUCT is OEM/PRODUCT (the product's current release) or a package ID, 32
hex digits.  The user PIN is read from GUARDIAN_PIN ("NAME:SECRET" in the
service mode).  Exit status: 0 done, 1 refused (the CKR name is printed),
2 usage.
"""
import ctypes
import os
import sys

import PyKCS11

# ---- The vendor constants (include/guardian/guardian-pkcs11.h) --------------
# Every Guardian value is <kind>_VENDOR_DEFINED | 0x47440000 | n.
GD = 0x47440000
CKO_GUARDIAN_PACKAGE = PyKCS11.CKO_VENDOR_DEFINED | GD | 0x0001
CKO_GUARDIAN_REQUEST = PyKCS11.CKO_VENDOR_DEFINED | GD | 0x0002
CKA_GUARDIAN_OEM_ID = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0001  # UTF-8 bytes
CKA_GUARDIAN_PRODUCT_ID = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0002  # UTF-8 bytes
CKA_GUARDIAN_RELEASE = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0003  # CK_ULONG
CKA_GUARDIAN_AUTHORISED_UNITS = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0004  # CK_ULONG
CKA_GUARDIAN_ISSUED_UNITS = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0005  # CK_ULONG
CKA_GUARDIAN_REMAINING_UNITS = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0006  # CK_ULONG
CKA_GUARDIAN_PACKAGE_ID = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0008  # 16 bytes
CKA_GUARDIAN_REQUEST = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0010  # CK_ULONG
CKA_GUARDIAN_DEVICE_ID = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0013  # bytes
CKA_GUARDIAN_DEVICE_SPKI = PyKCS11.CKA_VENDOR_DEFINED | GD | 0x0015  # DER
CKG_GUARDIAN_REQ_AUDIT_EXPORT = 2
CKG_GUARDIAN_REQ_IMPORT = 7
CKG_GUARDIAN_REQ_DEVICE_CERT = 8

CKR_GUARDIAN = {PyKCS11.CKR_VENDOR_DEFINED | GD | n: "CKR_GUARDIAN_" + name for n, name in [
    (0x01, "CONFIG_INVALID"), (0x02, "BACKEND_LOAD_FAILED"), (0x03, "BACKEND_IS_SELF"),
    (0x11, "PACKAGE_SIGNATURE_INVALID"), (0x12, "WRONG_GUARDIAN"), (0x13, "UNTRUSTED_SIGNER"),
    (0x14, "PACKAGE_EXPIRED"), (0x15, "PACKAGE_REPLAYED"), (0x16, "PACKAGE_ROLLBACK"),
    (0x17, "OEM_NOT_ENROLLED"), (0x20, "QUOTA_EXHAUSTED"), (0x21, "PRODUCT_UNKNOWN"),
    (0x22, "DEVICE_KEY_INVALID"), (0x23, "DEVICE_KEY_UNSUPPORTED"), (0x24, "DEVICE_KEY_IS_CA_KEY"),
    (0x25, "DEVICE_ID_INVALID"), (0x26, "NOT_PRODUCTION_CA_KEY"), (0x27, "PACKAGE_SUPERSEDED"),
    (0x30, "STORE_FAILED"), (0x31, "AUDIT_CORRUPT"), (0x32, "STATE_ROLLBACK"), (0x33, "CLOCK_BEHIND"),
    (0x34, "STATE_UNSAFE"), (0x40, "REQUEST_INVALID"), (0x41, "ROOT_NOT_CA")]}
CKR_GUARDIAN_PRODUCT_UNKNOWN = PyKCS11.CKR_VENDOR_DEFINED | GD | 0x0021

# PyKCS11 knows no vendor attribute, so it passes their values as bytes,
# unchanged, and hands them back as bytes.  A CK_ULONG is sizeof(CK_ULONG)
# bytes in the machine's order (8, little-endian, on x86_64 Linux): the module
# reads it as a CK_ULONG, and p11-kit's RPC carries it as an opaque byte array.
ULONG_SIZE = ctypes.sizeof(ctypes.c_ulong)


def ulong(v):
    return v.to_bytes(ULONG_SIZE, sys.byteorder)


def from_ulong(b):
    return int.from_bytes(bytes(b), sys.byteorder)


def ckr_name(rv):
    return CKR_GUARDIAN.get(rv) or PyKCS11.CKR.get(rv) or "CKR_?"


class Refused(Exception):
    """A call the module refused: which call, and its return value."""

    def __init__(self, what, rv):
        super().__init__(f"{what}: {ckr_name(rv)} (0x{rv:08x})")


class Usage(Exception):
    """A malformed argument (exit status 2)."""


def call(what, fn, *args):
    """Run a PyKCS11 call; a refusal becomes Refused with the CKR name."""
    try:
        return fn(*args)
    except PyKCS11.PyKCS11Error as e:
        raise Refused(what, e.value) from None


def product_attrs(arg):
    """OEM/PRODUCT -> the two ID attributes; 32 hex digits -> CKA_GUARDIAN_PACKAGE_ID."""
    if len(arg) == 32 and all(c in "0123456789abcdefABCDEF" for c in arg):
        return [(CKA_GUARDIAN_PACKAGE_ID, bytes.fromhex(arg))]
    oem, slash, product = arg.partition("/")
    if not (oem and slash and product):
        raise Usage(f"{arg} is neither OEM/PRODUCT nor a 32-hex-digit package ID")
    return [(CKA_GUARDIAN_OEM_ID, oem.encode()), (CKA_GUARDIAN_PRODUCT_ID, product.encode())]


def request(session, what, req, attrs):
    """C_CreateObject of a CKO_GUARDIAN_REQUEST; returns the result's handle."""
    template = [(PyKCS11.CKA_CLASS, CKO_GUARDIAN_REQUEST), (CKA_GUARDIAN_REQUEST, ulong(req))] + attrs
    return call(f"C_CreateObject ({what})", session.createObject, template)


def read_value(session, obj):
    return bytes(call("C_GetAttributeValue (CKA_VALUE)", session.getAttributeValue, obj,
                      [PyKCS11.CKA_VALUE], True)[0])


def print_package(session, pkg, what):
    oem, product, pid, release, authorised, issued, remaining = call(
        "C_GetAttributeValue (package)", session.getAttributeValue, pkg,
        [CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_PACKAGE_ID, CKA_GUARDIAN_RELEASE,
         CKA_GUARDIAN_AUTHORISED_UNITS, CKA_GUARDIAN_ISSUED_UNITS, CKA_GUARDIAN_REMAINING_UNITS], True)
    print(f"{what} {bytes(oem).decode()}/{bytes(product).decode()} release {from_ulong(release)} "
          f"package {bytes(pid).hex()}: {from_ulong(authorised)} authorised, {from_ulong(issued)} issued, "
          f"{from_ulong(remaining)} remaining")


def run(session, cmd, args):
    if cmd == "import":
        # (a) Import a package: CKA_VALUE = the file's bytes; the module finds
        # the Guardian's key itself.  The result is the package object.
        with open(args[0], "rb") as f:
            pkg = request(session, "import", CKG_GUARDIAN_REQ_IMPORT, [(PyKCS11.CKA_VALUE, f.read())])
        print_package(session, pkg, "imported")
    elif cmd == "issue":
        # (b) Issue a device certificate: the product (or one package), the
        # device's ID (text format, the default) and its public key.
        product, device_id, spki_file, out = args
        with open(spki_file, "rb") as f:
            spki = f.read()
        cert = request(session, "device certificate", CKG_GUARDIAN_REQ_DEVICE_CERT, product_attrs(product) + [
            (CKA_GUARDIAN_DEVICE_ID, device_id.encode()), (CKA_GUARDIAN_DEVICE_SPKI, spki)])
        # A CKO_CERTIFICATE session object: read its DER, then destroy it.
        der = read_value(session, cert)
        with open(out, "wb") as f:
            f.write(der)
        call("C_DestroyObject", session.destroyObject, cert)
        print(f"issued {product} for device {device_id}: {out} ({len(der)} bytes)")
    elif cmd == "remaining":
        # Not a request: find the product's package object (one per product,
        # its current release) and read its live counters.
        ids = product_attrs(args[0])
        if len(ids) != 2:
            raise Usage(f"{args[0]} is not OEM/PRODUCT")
        found = call("C_FindObjects", session.findObjects, [(PyKCS11.CKA_CLASS, CKO_GUARDIAN_PACKAGE)] + ids)
        if len(found) != 1:
            raise Refused("find the package object", CKR_GUARDIAN_PRODUCT_UNKNOWN)
        print_package(session, found[0], "product")
    else:
        # (c) The signed audit report, optionally for one product: a session
        # CKO_DATA object whose CKA_VALUE is the report.
        ids = product_attrs(args[1]) if len(args) == 2 else []
        if len(args) == 2 and len(ids) != 2:
            raise Usage(f"{args[1]} is not OEM/PRODUCT")
        report = request(session, "audit export", CKG_GUARDIAN_REQ_AUDIT_EXPORT, ids)
        value = read_value(session, report)
        with open(args[0], "wb") as f:
            f.write(value)
        call("C_DestroyObject", session.destroyObject, report)
        print(f"audit report: {args[0]} ({len(value)} bytes)")


ARGS = {"import": (1,), "issue": (4,), "remaining": (1,), "audit": (1, 2)}


def main(argv):
    pin = os.environ.get("GUARDIAN_PIN")
    if len(argv) < 4 or argv[3] not in ARGS or len(argv) - 4 not in ARGS[argv[3]] or pin is None:
        print(f"usage: GUARDIAN_PIN=... {argv[0]} MODULE TOKEN import PACKAGE | issue PRODUCT DEVICE_ID "
              "SPKI.der OUT.der | remaining OEM/PRODUCT | audit OUT [OEM/PRODUCT]", file=sys.stderr)
        return 2
    module, token, cmd, args = argv[1], argv[2], argv[3], argv[4:]
    lib = PyKCS11.PyKCS11Lib()
    session = None
    try:
        call("load", lib.load, module)  # dlopen + C_GetFunctionList + C_Initialize
        # The slot whose token has this label (SoftHSM, for one, adds an empty slot).
        slots = [s for s in call("C_GetSlotList", lib.getSlotList, True)
                 if call("C_GetTokenInfo", lib.getTokenInfo, s).label.strip() == token]
        if not slots:
            raise Refused(f"find token {token}", PyKCS11.CKR_TOKEN_NOT_PRESENT)
        # Read-write: the import needs it.
        session = call("C_OpenSession", lib.openSession, slots[0],
                       PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        call("C_Login", session.login, pin, PyKCS11.CKU_USER)
        run(session, cmd, args)
        return 0
    except (Refused, OSError) as e:
        print(f"issue_cert.py: {e}", file=sys.stderr)
        return 1
    except Usage as e:
        print(f"issue_cert.py: {e}", file=sys.stderr)
        return 2
    finally:
        if session is not None:
            try:
                session.closeSession()  # logs out too
            except PyKCS11.PyKCS11Error:
                pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
