#!/usr/bin/python3
"""engine_cert.py URI OUT.der -- a certificate loaded from a pkcs11: URI by the
OpenSSL libp11 engine (libengine-pkcs11-openssl 0.4.12), written as DER.
Used by test_service_boundary.sh, with OPENSSL_CONF naming an engine
configuration whose MODULE_PATH is p11-kit-client.so.

The engine loads certificates only through its "LOAD_CERT_CTRL" control,
which takes a C structure ({const char *s_slot_cert_id; X509 *cert;}, libp11's
engine.c), so no openssl 3.0 command can call it: `openssl x509 -in URI` and
`openssl storeutl -engine pkcs11 URI` look for an OSSL_STORE loader of the
"pkcs11" scheme, which the engine does not register.  An application that
uses the engine calls the control, as this does through ctypes.  Exit 0
done, 1 refused (what failed is printed), 2 usage.
"""
import ctypes
import sys

OPENSSL_INIT_LOAD_CONFIG = 0x40


class LoadCert(ctypes.Structure):
    _fields_ = [("s_slot_cert_id", ctypes.c_char_p), ("cert", ctypes.c_void_p)]


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    uri, out = sys.argv[1], sys.argv[2]
    c = ctypes.CDLL("libcrypto.so.3")
    c.OPENSSL_init_crypto.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
    c.ENGINE_by_id.argtypes, c.ENGINE_by_id.restype = [ctypes.c_char_p], ctypes.c_void_p
    c.ENGINE_init.argtypes = c.ENGINE_finish.argtypes = c.ENGINE_free.argtypes = [ctypes.c_void_p]
    c.ENGINE_ctrl_cmd.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int]
    c.i2d_X509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    c.X509_free.argtypes = [ctypes.c_void_p]
    c.OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, None)  # OPENSSL_CONF: the engine and its MODULE_PATH
    e = c.ENGINE_by_id(b"pkcs11")
    if not e:
        sys.exit("no engine 'pkcs11' (OPENSSL_CONF names none)")
    if c.ENGINE_init(e) != 1:
        sys.exit("the pkcs11 engine did not initialise")
    p = LoadCert(uri.encode(), None)
    ok = c.ENGINE_ctrl_cmd(e, b"LOAD_CERT_CTRL", 0, ctypes.byref(p), None, 0)
    if ok != 1 or not p.cert:
        sys.exit("LOAD_CERT_CTRL found no certificate for %s" % uri)
    n = c.i2d_X509(p.cert, None)
    buf = ctypes.create_string_buffer(n)
    end = ctypes.c_void_p(ctypes.addressof(buf))
    c.i2d_X509(p.cert, ctypes.byref(end))
    with open(out, "wb") as f:
        f.write(buf.raw)
    print("loaded %s: %d bytes" % (uri, n))
    c.X509_free(p.cert)
    c.ENGINE_finish(e)
    c.ENGINE_free(e)


if __name__ == "__main__":
    main()
