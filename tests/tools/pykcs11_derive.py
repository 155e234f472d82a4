#!/usr/bin/python3
"""CKM_GUARDIAN_DERIVE_DEVICE_CERT from PyKCS11: a standard C_DeriveKey, no
custom protocol.  The same code is the PyKCS11 example in
docs/derive-mechanism.md.

    pykcs11_derive.py MODULE TOKEN_LABEL PIN OEM_ID PRODUCT_ID CA_CERT_PEM

prints "PASS ..." / "FAIL ..." lines; exit 1 on a failure.
"""

import ctypes
import sys

import PyKCS11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CKM_GUARDIAN_DERIVE_DEVICE_CERT = 0xC7440002
CKO_GUARDIAN_PACKAGE = 0xC7440001
CKA_GUARDIAN_OEM_ID = 0xC7440001
CKA_GUARDIAN_PRODUCT_ID = 0xC7440002
CKA_GUARDIAN_REMAINING_UNITS = 0xC7440006
CKG_GUARDIAN_DEVICE_ID_TEXT = 1
CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED = 0xC7440023


class DeviceCertParams(ctypes.Structure):
    """CK_GUARDIAN_DEVICE_CERT_PARAMS (include/guardian/guardian-pkcs11.h)."""
    _fields_ = [("version", ctypes.c_ulong), ("deviceIdFormat", ctypes.c_ulong),
                ("pDeviceId", ctypes.c_void_p), ("ulDeviceIdLen", ctypes.c_ulong),
                ("pPublicKeyInfo", ctypes.c_void_p), ("ulPublicKeyInfoLen", ctypes.c_ulong)]


def derive_device_cert(session, ca_key, device_id: bytes, spki: bytes):
    """Issue one certificate; returns the certificate's DER."""
    id_buf = ctypes.create_string_buffer(device_id, len(device_id))
    key_buf = ctypes.create_string_buffer(spki, len(spki))
    params = DeviceCertParams(1, CKG_GUARDIAN_DEVICE_ID_TEXT, ctypes.addressof(id_buf), len(device_id),
                              ctypes.addressof(key_buf), len(spki))
    mech = PyKCS11.Mechanism(CKM_GUARDIAN_DERIVE_DEVICE_CERT, bytes(params))
    cert = session.deriveKey(ca_key, [], mech)  # buffers must live until here
    der = bytes(session.getAttributeValue(cert, [PyKCS11.CKA_VALUE])[0])
    session.destroyObject(cert)
    return der


def remaining(session, pkg):
    """A vendor CK_ULONG attribute: PyKCS11 hands unknown attributes over as bytes."""
    return int.from_bytes(bytes(session.getAttributeValue(pkg, [CKA_GUARDIAN_REMAINING_UNITS])[0]), sys.byteorder)


def main():
    module, label, pin, oem, product, ca_pem = sys.argv[1:7]
    failed = 0

    def check(name, cond, why=""):
        nonlocal failed
        print(("PASS " if cond else "FAIL ") + name + ("" if cond else ": " + why))
        failed += not cond

    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == label)
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    session.login(pin)

    # The package object names the package ID; the CA key has it as CKA_ID.
    pkg = session.findObjects([(PyKCS11.CKA_CLASS, CKO_GUARDIAN_PACKAGE),
                               (CKA_GUARDIAN_OEM_ID, oem.encode()), (CKA_GUARDIAN_PRODUCT_ID, product.encode())])
    check("package object found by class and IDs", len(pkg) == 1)
    package_id = bytes(session.getAttributeValue(pkg[0], [PyKCS11.CKA_ID])[0])
    before = remaining(session, pkg[0])
    keys = [k for k in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                            (PyKCS11.CKA_ID, package_id)])
            if session.getAttributeValue(k, [PyKCS11.CKA_LABEL])[0].endswith(":production-ca")]
    check("production CA key found", len(keys) == 1)

    device = ec.generate_private_key(ec.SECP256R1())
    spki = device.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    der = derive_device_cert(session, keys[0], b"PY-0001", spki)
    cert = x509.load_der_x509_certificate(der)
    ca = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(cert.signature_hash_algorithm))
        check("certificate signed by the production CA", True)
    except Exception as e:  # noqa: BLE001
        check("certificate signed by the production CA", False, str(e))
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    check("subject CN is the device ID", cn == "PY-0001", cn)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.999.1"))
    check("device extension under the package's OID, not critical", not ext.critical)
    check("certificate carries the device key", cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki)
    after = remaining(session, pkg[0])
    check("one unit counted", after == before - 1, f"{before} -> {after}")

    # A refusal arrives as a PyKCS11Error carrying the vendor code.
    k1 = ec.generate_private_key(ec.SECP521R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        derive_device_cert(session, keys[0], b"PY-0002", k1)
        check("P-521 device key refused", False, "accepted")
    except PyKCS11.PyKCS11Error as e:
        check("P-521 device key refused with CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED",
              e.value == CKR_GUARDIAN_DEVICE_KEY_UNSUPPORTED, hex(e.value))
    session.logout()
    session.closeSession()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
