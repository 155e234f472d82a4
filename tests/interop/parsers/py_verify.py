#!/usr/bin/python3
"""py_verify.py ROOT.pem CA.pem DEVICE.pem — Python's cryptography (Debian 12:
38.0.4, run with /usr/bin/python3) parses the three certificates, every
extension included, and verifies each signature of the chain device ->
production CA -> OEM root: with verify_directly_issued_by where the version
has it (40 and later), else with the issuer's public key over the TBS bytes.
Exit 0 and "OK subject", or 1 and the error."""
import sys

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def load(path):
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    # Reading the extensions parses each one (where 38 fails on a long arc).
    for ext in cert.extensions:
        _ = ext.value
    cert.subject.rfc4514_string()
    return cert


def verify(child, issuer):
    if child.issuer != issuer.subject:
        raise ValueError("issuer name differs from the issuer's subject")
    if hasattr(child, "verify_directly_issued_by"):
        child.verify_directly_issued_by(issuer)
        return
    pub = issuer.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), child.signature_hash_algorithm)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
    else:
        raise ValueError("unexpected issuer key type")


def main():
    if len(sys.argv) != 4:
        print("usage: py_verify.py ROOT.pem CA.pem DEVICE.pem", file=sys.stderr)
        return 2
    try:
        root, ca, dev = (load(p) for p in sys.argv[1:4])
        verify(dev, ca)
        verify(ca, root)
        verify(root, root)
    except Exception as e:  # the test shows what the library said
        print("cryptography %s: %s: %s" % (cryptography.__version__, type(e).__name__, e), file=sys.stderr)
        return 1
    print("OK %s (cryptography %s, %d extensions)" % (dev.subject.rfc4514_string(), cryptography.__version__,
                                                      len(dev.extensions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
