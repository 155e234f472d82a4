#!/usr/bin/python3
"""PyKCS11 through SoftHSMv2 directly and through the Guardian module, compared.

    pykcs11_compare.py DIRECT_SO MODULE_SO TOKEN_LABEL PIN

prints one "PASS name" / "FAIL name: why" line per check (and "INFO ..." notes)
and exits 1 when a check failed.  Run by pykcs11.sh, which makes the token.

Each library runs in a worker process of its own (this file with --worker):
the module loads the same libsofthsm2.so, and two PKCS#11 libraries sharing one
SoftHSM in one process would share its state (the second C_Initialize returns
CKR_CRYPTOKI_ALREADY_INITIALIZED).  Workers answer in JSON on stdout.

Checks: C_GetInfo (only manufacturer, description and library version may
differ), slot lists, slot and token info, mechanism lists and every mechanism's
info, EC P-256 key pair generation through each path, CKM_ECDSA signatures
over a SHA-256 hash made through each path and verified through the other
path, with C_Verify and with the `cryptography` package, C_FindObjects with
several templates, and every attribute of every object read through both.
"""

import hashlib
import json
import os
import subprocess
import sys

import PyKCS11
from PyKCS11 import LowLevel

# DER OID of prime256v1 (CKA_EC_PARAMS).
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")

# Every attribute an EC key or a certificate may carry, read through both paths.
ATTRIBUTES = sorted(a for a in PyKCS11.CKA if isinstance(a, int))


# ---- worker side ---------------------------------------------------------------


def ckr_name(err):
    value = getattr(err, "value", None)
    return PyKCS11.CKR.get(value, str(value))


def load(lib_path):
    lib = PyKCS11.PyKCS11Lib()
    lib.load(lib_path)
    return lib


def find_slot(lib, label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return slot
    raise SystemExit("token %r not found" % label)


def session(lib, label, pin, rw=False):
    flags = PyKCS11.CKF_SERIAL_SESSION | (PyKCS11.CKF_RW_SESSION if rw else 0)
    s = lib.openSession(find_slot(lib, label), flags)
    s.login(pin)
    return s


def info_dict(obj):
    d = obj.to_dict()
    d["flags_raw"] = obj.flags if hasattr(obj, "flags") else None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def step_info(lib, label, pin, args):
    out = {"info": info_dict(lib.getInfo())}
    out["slots_all"] = [int(s) for s in lib.getSlotList(tokenPresent=False)]
    out["slots_present"] = [int(s) for s in lib.getSlotList(tokenPresent=True)]
    out["slot_info"] = {str(s): info_dict(lib.getSlotInfo(s)) for s in out["slots_all"]}
    out["token_info"] = {str(s): info_dict(lib.getTokenInfo(s)) for s in out["slots_present"]}
    # utcTime is the token's clock: the two runs may straddle a second.
    for ti in out["token_info"].values():
        ti.pop("utcTime", None)
    slot = find_slot(lib, label)
    out["token_slot"] = int(slot)
    mechs = lib.getMechanismList(slot)
    out["mechanisms"] = list(mechs)
    out["mechanism_info"] = {}
    for m in mechs:
        mi = lib.getMechanismInfo(slot, m)
        out["mechanism_info"][m] = [mi.ulMinKeySize, mi.ulMaxKeySize, mi.flags]
    return out


def step_generate(lib, label, pin, args):
    s = session(lib, label, pin, rw=True)
    key_id = bytes.fromhex(args["id"])
    pub_t = [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_VERIFY, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_EC_PARAMS, P256_PARAMS),
        (PyKCS11.CKA_LABEL, args["key_label"]),
        (PyKCS11.CKA_ID, key_id),
    ]
    priv_t = [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SENSITIVE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SIGN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_LABEL, args["key_label"]),
        (PyKCS11.CKA_ID, key_id),
    ]
    pub, priv = s.generateKeyPair(pub_t, priv_t, mecha=PyKCS11.MechanismECGENERATEKEYPAIR)
    point = bytes(s.getAttributeValue(pub, [PyKCS11.CKA_EC_POINT], allAsBinary=True)[0])
    s.logout()
    s.closeSession()
    return {"ec_point": point.hex(), "handles": [pub.value(), priv.value()]}


def key(s, cls, key_label):
    found = s.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_LABEL, key_label)])
    if len(found) != 1:
        raise SystemExit("expected one %s labelled %r, found %d" % (PyKCS11.CKO[cls], key_label, len(found)))
    return found[0]


def step_sign(lib, label, pin, args):
    s = session(lib, label, pin)
    priv = key(s, PyKCS11.CKO_PRIVATE_KEY, args["key_label"])
    sig = bytes(s.sign(priv, bytes.fromhex(args["hash"]), PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)))
    s.logout()
    s.closeSession()
    return {"signature": sig.hex()}


def step_verify(lib, label, pin, args):
    s = session(lib, label, pin)
    pub = key(s, PyKCS11.CKO_PUBLIC_KEY, args["key_label"])
    ok = s.verify(pub, bytes.fromhex(args["hash"]), bytes.fromhex(args["signature"]),
                  PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None))
    s.logout()
    s.closeSession()
    return {"valid": bool(ok)}


def describe(s, obj):
    cls, lab, oid = s.getAttributeValue(obj, [PyKCS11.CKA_CLASS, PyKCS11.CKA_LABEL, PyKCS11.CKA_ID],
                                        allAsBinary=True)
    return "%s/%s/%s" % (bytes(cls).hex(), bytes(lab).decode(errors="replace"), bytes(oid).hex())


def step_find(lib, label, pin, args):
    out = {}
    # Not logged in: public objects only.
    s = lib.openSession(find_slot(lib, label), PyKCS11.CKF_SERIAL_SESSION)
    out["public session, all"] = sorted(describe(s, o) for o in s.findObjects())
    s.closeSession()
    s = session(lib, label, pin)
    templates = {
        "all": [],
        "private keys": [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY)],
        "public keys": [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY)],
        "EC keys able to sign": [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC), (PyKCS11.CKA_SIGN, PyKCS11.CK_TRUE)],
        "label py-direct": [(PyKCS11.CKA_LABEL, "py-direct")],
        "no such label": [(PyKCS11.CKA_LABEL, "no-such-object")],
    }
    for name, t in templates.items():
        out[name] = sorted(describe(s, o) for o in s.findObjects(t))
    s.logout()
    s.closeSession()
    return out


def step_attributes(lib, label, pin, args):
    s = session(lib, label, pin)
    out = {}
    for obj in s.findObjects():
        values = s.getAttributeValue(obj, ATTRIBUTES, allAsBinary=True)
        out[describe(s, obj)] = {
            PyKCS11.CKA.get(a, hex(a)): (None if v is None else bytes(v).hex()) for a, v in zip(ATTRIBUTES, values)
        }
    s.logout()
    s.closeSession()
    return out


STEPS = {
    "info": step_info,
    "generate": step_generate,
    "sign": step_sign,
    "verify": step_verify,
    "find": step_find,
    "attributes": step_attributes,
}


def worker(lib_path, label, pin, step, args_json):
    lib = load(lib_path)
    try:
        result = {"ok": STEPS[step](lib, label, pin, json.loads(args_json))}
    except PyKCS11.PyKCS11Error as e:
        result = {"error": "%s (%s)" % (e, ckr_name(e))}
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.flush()
    # Unloading finalizes the library.
    del lib
    return 0


# ---- orchestrator side ---------------------------------------------------------

FAILED = 0


def report(ok, name, why=""):
    global FAILED
    if ok:
        print("PASS %s" % name)
    else:
        FAILED += 1
        print("FAIL %s: %s" % (name, why))
    sys.stdout.flush()


def run(lib_path, label, pin, step, **args):
    """Run one step in a fresh process; (result, error-text)."""
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", lib_path, label, pin, step, json.dumps(args)],
        capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return None, "worker exit status %d: %s" % (p.returncode, (p.stderr or p.stdout).strip()[-500:])
    try:
        out = json.loads(p.stdout)
    except ValueError:
        return None, "worker printed no JSON: %r" % p.stdout[-300:]
    if "error" in out:
        return None, out["error"]
    return out["ok"], None


def both(paths, label, pin, step, name, **args):
    """Run a step through both; report a FAIL for a path that errs."""
    res = {}
    for which in ("direct", "module"):
        r, err = run(paths[which], label, pin, step, **args)
        if err is not None:
            report(False, "%s (%s)" % (name, which), err)
        res[which] = r
    return res["direct"], res["module"]


def first_difference(a, b, path=""):
    if type(a) is not type(b):
        return "%s: %r vs %r" % (path or "value", a, b)
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                return "%s: only through the module" % (path + "/" + str(k))
            if k not in b:
                return "%s: only direct" % (path + "/" + str(k))
            d = first_difference(a[k], b[k], path + "/" + str(k))
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return "%s: %d items direct, %d through the module" % (path or "list", len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    return None if a == b else "%s: direct %r, module %r" % (path or "value", a, b)


def compare(name, direct, module):
    if direct is None or module is None:
        return  # the worker failure is already reported
    if not direct and not module:
        report(False, name + ": direct = module", "nothing to compare (both empty)")
        return
    d = first_difference(direct, module)
    report(d is None, name + ": direct = module", d or "")


def verify_with_cryptography(ec_point_hex, digest, sig_hex):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

    point = bytes.fromhex(ec_point_hex)
    # CKA_EC_POINT is a DER OCTET STRING holding 04||X||Y (65 bytes for P-256).
    if len(point) == 67 and point[0] == 0x04 and point[1] == 65:
        point = point[2:]
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    sig = bytes.fromhex(sig_hex)
    if len(sig) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        pub.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return True
    except InvalidSignature:
        return False


def main(direct_so, module_so, label, pin):
    paths = {"direct": direct_so, "module": module_so}

    # -- library, slots, token, mechanisms
    d, m = both(paths, label, pin, "info", "PyKCS11 info")
    if d is not None and m is not None:
        di, mi = d["info"], m["info"]
        report(di["cryptokiVersion"] == mi["cryptokiVersion"] == [2, 40],
               "PyKCS11 getInfo: cryptokiVersion 2.40 both ways",
               "direct %r, module %r" % (di["cryptokiVersion"], mi["cryptokiVersion"]))
        report(mi["manufacturerID"].strip() == "Guardian PKCS#11",
               "PyKCS11 getInfo: module manufacturerID is Guardian PKCS#11", repr(mi["manufacturerID"]))
        report(di["manufacturerID"].strip() == "SoftHSM",
               "PyKCS11 getInfo: direct manufacturerID is SoftHSM", repr(di["manufacturerID"]))
        legit = ("manufacturerID", "libraryDescription", "libraryVersion")
        compare("PyKCS11 getInfo (all but manufacturer, description, library version)",
                {k: v for k, v in di.items() if k not in legit}, {k: v for k, v in mi.items() if k not in legit})
        compare("PyKCS11 getSlotList(tokenPresent=False)", d["slots_all"], m["slots_all"])
        compare("PyKCS11 getSlotList(tokenPresent=True)", d["slots_present"], m["slots_present"])
        compare("PyKCS11 getSlotInfo, every slot", d["slot_info"], m["slot_info"])
        compare("PyKCS11 getTokenInfo, every token", d["token_info"], m["token_info"])
        # The module adds the Guardian's vendor mechanisms to the backend's list.
        vendor = [x for x in m["mechanisms"] if x.startswith("CKM_VENDOR_DEFINED")]
        compare("PyKCS11 getMechanismList, vendor mechanisms aside", d["mechanisms"],
                [x for x in m["mechanisms"] if x not in vendor])
        report("CKM_ECDSA" in m["mechanisms"], "PyKCS11 getMechanismList (module) has CKM_ECDSA",
               "not in %r" % m["mechanisms"])
        report(vendor == ["CKM_VENDOR_DEFINED_0x47440001", "CKM_VENDOR_DEFINED_0x47440002"],
               "PyKCS11 getMechanismList (module) adds exactly unwrap-into-token and derive-device-certificate",
               repr(vendor))
        compare("PyKCS11 getMechanismInfo, every mechanism, vendor mechanisms aside", d["mechanism_info"],
                {k: v for k, v in m["mechanism_info"].items() if k not in vendor})

    # -- one key pair generated through each path
    gen = {}
    for which, key_label, key_id in (("direct", "py-direct", "d1"), ("module", "py-module", "e1")):
        r, err = run(paths[which], label, pin, "generate", key_label=key_label, id=key_id)
        report(err is None, "PyKCS11 generateKeyPair EC P-256 (%s)" % which, err or "")
        if r is not None:
            gen[key_label] = r["ec_point"]

    # -- sign a SHA-256 hash with each key through each path; verify each
    #    signature through the other path and with `cryptography`
    digest = hashlib.sha256(b"PyKCS11 interop message").digest()
    wrong = hashlib.sha256(b"another message").digest()
    for key_label in sorted(gen):
        for signer, checker in (("direct", "module"), ("module", "direct")):
            r, err = run(paths[signer], label, pin, "sign", key_label=key_label, hash=digest.hex())
            report(err is None and len(bytes.fromhex(r["signature"])) == 64,
                   "PyKCS11 sign CKM_ECDSA with %s (%s): 64-byte r||s" % (key_label, signer),
                   err or "length %d" % (len(r["signature"]) // 2))
            if r is None:
                continue
            sig = r["signature"]
            report(verify_with_cryptography(gen[key_label], digest, sig),
                   "cryptography verifies the %s signature by %s" % (signer, key_label), "signature invalid")
            v, err = run(paths[checker], label, pin, "verify", key_label=key_label, hash=digest.hex(), signature=sig)
            report(err is None and v["valid"], "PyKCS11 verify (%s) accepts the %s signature by %s"
                   % (checker, signer, key_label), err or "C_Verify said CKR_SIGNATURE_INVALID")
            if signer == "module" and key_label == "py-module":
                v, err = run(paths["module"], label, pin, "verify", key_label=key_label, hash=wrong.hex(),
                             signature=sig)
                report(err is None and not v["valid"], "PyKCS11 verify (module) rejects it over another hash",
                       err or "C_Verify accepted a signature over another hash")

    # -- find objects, attribute values
    d, m = both(paths, label, pin, "find", "PyKCS11 findObjects")
    compare("PyKCS11 findObjects with 7 templates", d, m)
    if m is not None:
        report(len(m["all"]) >= 4 and m["no such label"] == [] and len(m["private keys"]) >= 2,
               "PyKCS11 findObjects (module) sees both key pairs", repr(m))
    d, m = both(paths, label, pin, "attributes", "PyKCS11 getAttributeValue")
    compare("PyKCS11 getAttributeValue, %d attributes of every object" % len(ATTRIBUTES), d, m)
    if m is not None:
        report(len(m) >= 4, "PyKCS11 getAttributeValue (module) read at least 4 objects", "%d objects" % len(m))
        points = {k.split("/")[1]: v.get("CKA_EC_POINT") for k, v in m.items() if k.startswith("0200000000000000")}
        report(points.get("py-direct") == gen.get("py-direct") and points.get("py-module") == gen.get("py-module"),
               "PyKCS11 CKA_EC_POINT read through the module = the one returned at generation",
               "%r vs %r" % (points, gen))

    return 1 if FAILED else 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--worker":
        sys.exit(worker(*sys.argv[2:]))
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
