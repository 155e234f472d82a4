#!/usr/bin/env python3
"""package_sig.py — the ECDSA signature of Guardian packages, read with a DER
parser of its own (not OpenSSL's, not guardian-wrap's), for the shell tests.

  package_sig.py check PACKAGE...   prints "low" or "high" per package (P-256 or
                                    P-384 signer); exit 1 if any is high-s
  package_sig.py flip IN OUT        writes IN with its signature (r, s) replaced
                                    by (r, n - s): still valid, other bytes
  package_sig.py empty-crls IN OUT  writes IN with an empty CRL set ([1] holding
                                    nothing) after its certificates: outside the
                                    signature, and OpenSSL still verifies it
"""
import sys

ORDERS = {  # the curve orders, by the byte length of r and s
    32: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    48: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
}


def head(b, i):
    """(tag, start of the value, length of the value) of the TLV at b[i]."""
    tag, n = b[i], b[i + 1]
    if n < 0x80:
        return tag, i + 2, n
    k = n & 0x7F
    return tag, i + 2 + k, int.from_bytes(b[i + 2:i + 2 + k], "big")


def tlv(tag, value):
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + value


def children(b):
    out, i = [], 0
    while i < len(b):
        _, v, n = head(b, i)
        out.append(b[i:v + n])
        i = v + n
    return out


def value(t):
    _, v, n = head(t, 0)
    return t[v:v + n]


def integer(i):
    return tlv(0x02, i.to_bytes(i.bit_length() // 8 + 1, "big"))


def path(pkg):
    """ContentInfo -> [0] -> SignedData -> signerInfos -> SignerInfo."""
    ci = children(value(pkg))
    sd = children(value(value(ci[1])))
    si = children(value(sd[-1]))[0]
    return ci, sd, children(value(si))


def signature(pkg):
    _, _, si = path(pkg)
    sig = value(si[-1])  # no unsigned attributes: the signature is last
    r, s = (int.from_bytes(value(x), "big") for x in children(value(sig)))
    size = max(len(value(x).lstrip(b"\0")) for x in children(value(sig)))
    order = ORDERS[32] if size <= 32 else ORDERS[48]
    return r, s, order


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        high = 0
        for name in sys.argv[2:]:
            _, s, n = signature(open(name, "rb").read())
            print(f"{name}: {'high' if s > n // 2 else 'low'}")
            high += s > n // 2
        return 1 if high else 0
    if len(sys.argv) == 4 and sys.argv[1] == "flip":
        pkg = open(sys.argv[2], "rb").read()
        r, s, n = signature(pkg)
        ci, sd, si = path(pkg)
        si[-1] = tlv(0x04, tlv(0x30, integer(r) + integer(n - s)))
        sd[-1] = tlv(0x31, tlv(0x30, b"".join(si)))
        out = tlv(0x30, ci[0] + tlv(0xA0, tlv(0x30, b"".join(sd))))
        open(sys.argv[3], "wb").write(out)
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "empty-crls":
        ci, sd, _ = path(open(sys.argv[2], "rb").read())
        sd.insert([f[0] for f in sd].index(0xA0) + 1, b"\xa1\x00")
        open(sys.argv[3], "wb").write(tlv(0x30, ci[0] + tlv(0xA0, tlv(0x30, b"".join(sd)))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
