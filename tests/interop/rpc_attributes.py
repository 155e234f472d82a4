#!/usr/bin/python3
"""rpc_attributes.py - what C_GetAttributeValue answers, attribute by attribute,
for every object a PKCS#11 module shows, so that one view can be compared with
another: the Guardian in-process against the Guardian behind p11-kit's RPC, and
the Guardian behind the RPC against SoftHSM behind the same RPC
(tests/interop/p11kit_remote.sh).

  rpc_attributes.py dump MODULE PIN OUT.json [--request OEM/PRODUCT DEVICE-ID SPKI.der]
      Logs in and, with --request, first makes a device certificate (a module
      object, CKG_GUARDIAN_REQ_DEVICE_CERT, label "rpc-attributes") and a
      status output (CKG_GUARDIAN_REQ_STATUS).  Then for every object and
      every attribute type PyKCS11 names plus the Guardian's: a size query
      (NULL buffer: CKR, length), a value query with a buffer of that length
      (CKR, SHA-256 of the value) and one a byte short (CKR); the whole
      template in one go as PyKCS11's getAttributeValue asks it, with and
      without the array attributes (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE,
      CKA_DERIVE_TEMPLATE); and PyKCS11's printout of the object (str()).
      Through p11-kit-client.so, P11_KIT_SERVER_ADDRESS names the server.

  rpc_attributes.py compare NAME EXPECTED.json ACTUAL.json {same|rpc|arrays}
      same:   every answer for every object both show is the same (values too,
              but for the objects each run makes anew: their CKR and lengths).
      rpc:    ACTUAL (through the RPC) shows the objects EXPECTED (in-process)
              does, with the same answers for every attribute that is not an
              array attribute (p11-kit 0.24.1's client refuses any answer
              that names one: below).
      arrays: the answers for array attributes, and for whole templates that
              hold them, are the same sets of CKR codes in both (the Guardian
              behind the RPC against SoftHSM behind the same RPC).
      Prints one PASS or FAIL line (and INFO lines), as lib.sh counts them.
"""
import ctypes
import hashlib
import json
import sys

import PyKCS11
from PyKCS11.LowLevel import ckattrlist

G_ATTR = PyKCS11.CKA_VENDOR_DEFINED | 0x47440000
G_CLASS = PyKCS11.CKO_VENDOR_DEFINED | 0x47440000
VENDOR_TYPES = [G_ATTR | n for n in list(range(0x01, 0x09)) + list(range(0x10, 0x16))]
# Objects made, or changed, by every run: their CKR codes must agree, their
# values and lengths may not (a new certificate, a new status, the anchor
# moved up and the package's live counters changed by the run's certificate).
PER_RUN_LABELS = {"rpc-attributes", "guardian-output:status", "guardian-anchor"}


def per_run(label):
    return label in PER_RUN_LABELS or label.startswith("guardian-package:")


def ulong(v):
    return v.to_bytes(ctypes.sizeof(ctypes.c_ulong), sys.byteorder)


def ckr(rv):
    name = PyKCS11.CKR.get(rv)
    return name if isinstance(name, str) else "0x%x" % rv


# The attributes p11-kit 0.24.1 treats as arrays of attributes
# (common/attrs.h, IS_ATTRIBUTE_ARRAY: these three types, not the
# CKF_ARRAY_ATTRIBUTE bit, which CKA_ALLOWED_MECHANISMS and every Guardian
# attribute, 0xC744...., carry too).
TEMPLATE_TYPES = {PyKCS11.CKA_WRAP_TEMPLATE, PyKCS11.CKA_UNWRAP_TEMPLATE, PyKCS11.CKA_DERIVE_TEMPLATE}


def is_array(t):
    return t in TEMPLATE_TYPES


def all_types():
    return sorted(k for k in PyKCS11.CKA if isinstance(k, int)) + VENDOR_TYPES


def query(s, o, t, reserve=None):
    a = ckattrlist(1)
    a[0].SetType(t)
    if reserve is not None:
        a[0].Reserve(reserve)
    rv = s.lib.C_GetAttributeValue(s.session, o, a)
    return rv, a[0].GetLen(), bytes(a[0].GetBin())


def whole(s, o, types):
    try:
        s.getAttributeValue(o, types, allAsBinary=True)
        return "CKR_OK"
    except PyKCS11.PyKCS11Error as e:
        return ckr(e.value)


def printout(o):
    try:
        str(o)
        return "ok"
    except PyKCS11.PyKCS11Error as e:
        return ckr(e.value)
    except Exception as e:  # PyKCS11's own: a vendor class it has no name for
        return type(e).__name__


def label_and_class(s, o):
    v = s.getAttributeValue(o, [PyKCS11.CKA_CLASS], allAsBinary=True)[0]
    cls = int.from_bytes(bytes(v), sys.byteorder) if v is not None else -1
    rv, n, _ = query(s, o, PyKCS11.CKA_LABEL)
    label = bytes(query(s, o, PyKCS11.CKA_LABEL, n)[2]).decode("utf-8", "replace") if rv == 0 and n > 0 else ""
    rv, n, _ = query(s, o, PyKCS11.CKA_ID)
    oid = bytes(query(s, o, PyKCS11.CKA_ID, n)[2]).hex() if rv == 0 and n > 0 else ""
    return cls, label, oid


def dump(module, pin, out, request):
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(pin)
    if request:
        product, device_id, spki = request
        oem, prod = product.split("/", 1)
        s.createObject([(PyKCS11.CKA_CLASS, G_CLASS | 2), (G_ATTR | 0x10, ulong(8)), (G_ATTR | 1, oem.encode()),
                        (G_ATTR | 2, prod.encode()), (G_ATTR | 0x13, device_id.encode()),
                        (G_ATTR | 0x15, open(spki, "rb").read()), (PyKCS11.CKA_LABEL, "rpc-attributes")])
        s.createObject([(PyKCS11.CKA_CLASS, G_CLASS | 2), (G_ATTR | 0x10, ulong(9))])
    types = all_types()
    plain = [t for t in types if not is_array(t)]
    objects = {}
    for o in s.findObjects([]):
        cls, label, oid = label_and_class(s, o)
        key = "class=0x%x label=%s id=%s" % (cls, label, oid)
        while key in objects:
            key += "+"
        attrs = {}
        for t in types:
            rv1, n, _ = query(s, o, t)
            entry = [ckr(rv1), n]
            if rv1 == PyKCS11.CKR_OK:
                rv2, n2, value = query(s, o, t, n)
                entry += [ckr(rv2), n2, hashlib.sha256(value).hexdigest()]
                if n > 0:
                    entry.append(ckr(query(s, o, t, n - 1)[0]))
            attrs["0x%x" % t] = entry
        objects[key] = {"handle": "0x%x" % int(o.value()), "per_run": per_run(label), "attrs": attrs,
                        "whole": whole(s, o, plain), "whole_with_arrays": whole(s, o, types),
                        "printout": printout(o)}
    s.logout()
    s.closeSession()
    with open(out, "w") as f:
        json.dump({"module": module, "objects": objects}, f, indent=1, sort_keys=True)


def name_of(t):
    n = PyKCS11.CKA.get(int(t, 16))
    return n if isinstance(n, str) else t


def compare(name, expected_file, actual_file, mode):
    exp = json.load(open(expected_file))["objects"]
    act = json.load(open(actual_file))["objects"]
    diffs = []
    if mode == "rpc":
        for k in sorted(set(exp) ^ set(act)):
            diffs.append("%s: shown %s only" % (k, "in-process" if k in exp else "through the RPC"))
    common = sorted(set(exp) & set(act))
    if not common:
        diffs.append("no object in common")
    for k in common:
        e, a = exp[k], act[k]
        per_run = e["per_run"] or a["per_run"]
        for t in sorted(e["attrs"]):
            arr = is_array(int(t, 16))
            if mode == "arrays" or (mode == "rpc" and arr):
                continue
            x, y = e["attrs"][t], a["attrs"].get(t)
            if per_run and y is not None:
                # Made anew by each run: the CKR codes must agree, the values may not.
                x, y = [v for i, v in enumerate(x) if i not in (1, 3, 4)], [v for i, v in enumerate(y) if i not in (1, 3, 4)]
            if x != y:
                diffs.append("%s %s: %s vs %s" % (k, name_of(t), x, y))
        for field in ("whole",) + (("whole_with_arrays", "printout") if mode == "same" else ()):
            if e[field] != a[field]:
                diffs.append("%s %s: %s vs %s" % (k, field, e[field], a[field]))
    if mode == "arrays":
        def answers(objs):
            got = set()
            for o in objs.values():
                got |= {tuple(v[:1]) for t, v in o["attrs"].items() if is_array(int(t, 16))}
                got.add(("whole_with_arrays", o["whole_with_arrays"]))
                got.add(("printout", o["printout"] if o["printout"].startswith("CKR_") else "not a CKR"))
            return got
        x, y = answers(exp), answers(act)
        if x != y:
            diffs.append("array attributes: %s vs %s" % (sorted(x), sorted(y)))
        for v in sorted(x & y):
            print("INFO %s: answered by both: %s" % (name, " ".join(v)))
    if diffs:
        print("FAIL %s: %d differences, first: %s" % (name, len(diffs), "; ".join(diffs[:4])))
        return 1
    print("PASS %s (%d objects)" % (name, len(common)))
    return 0


def main(argv):
    if len(argv) >= 4 and argv[1] == "dump":
        request = None
        if len(argv) == 9 and argv[5] == "--request":
            request = argv[6:9]
        elif len(argv) != 5:
            sys.exit(__doc__)
        dump(argv[2], argv[3], argv[4], request)
        return 0
    if len(argv) == 6 and argv[1] == "compare" and argv[5] in ("same", "rpc", "arrays"):
        return compare(argv[2], argv[3], argv[4], argv[5])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
