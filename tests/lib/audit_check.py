#!/usr/bin/python3
"""audit_check.py STATE_DB CHECK [DIR...] -- an observer's checks of a
Guardian's state database (the tests read it as its owner or root; an
operator of the service cannot):

  recorded DIR...  every certificate file DIR/*.pem has an ISSUE record whose
                   digest is its SHA-256, and the store holds that very
                   certificate; no product's serial is issued twice
  chain            the audit hash chain, recomputed independently from
                   docs/audit-format.md (encoding 1, 2 with the operator, 3 with the Guardian too)
  operators NAME.. every ISSUE record names one of NAME...

Prints one line saying what held; exits 1 (with the reason) when a check fails.
"""
import glob
import hashlib
import sqlite3
import ssl
import struct
import sys


def recorded(db, dirs):
    issued = {bytes(d) for (d,) in db.execute("SELECT digest FROM audit WHERE type = 3")}
    stored = {hashlib.sha256(bytes(c)).digest() for (c,) in
              db.execute("SELECT c.certificate FROM certificates c JOIN issuance i ON i.issue_seq = c.issue_seq")}
    files = [f for d in dirs for f in glob.glob(d + "/*.pem")]
    missing = [f for f in files
               if hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(f).read())).digest() not in issued & stored]
    for f in missing[:5]:
        print("no ISSUE record for", f)
    dup = db.execute("SELECT oem_id, product_id, serial, count(*) FROM audit WHERE type = 3 "
                     "GROUP BY oem_id, product_id, serial HAVING count(*) > 1").fetchall()
    for d in dup[:5]:
        print("serial issued twice:", d)
    print(f"{len(files)} certificates, {len(missing)} without their record, {len(dup)} serials issued twice")
    return not missing and not dup


def chain(db):
    prev, n = bytes(32), 0
    for (seq, typ, t, oem, prod, serial, dev, dig, pid, rel, auth, op, v, g, ph, h) in db.execute(
            "SELECT seq, type, time, oem_id, product_id, serial, device_id, digest, package_id, release_version, "
            "authorised_units, operator, encoding, guardian, prev_hash, hash FROM audit ORDER BY seq"):
        s = lambda b: struct.pack(">I", len(b)) + b
        enc = (b"GDAUDIT%d" % v + struct.pack(">QIq", seq, typ, t) + s(oem.encode()) +
               s(prod.encode()) + struct.pack(">Q", serial) + s(bytes(dev)) + bytes(dig) + bytes(pid) +
               struct.pack(">IQ", rel, auth) + (s(op.encode()) if v >= 2 else b"") +
               (s(bytes(g)) if v == 3 else b"") + bytes(ph))
        if bytes(ph) != prev or hashlib.sha256(enc).digest() != bytes(h):
            print(f"record {seq} breaks the chain")
            return False
        prev, n = bytes(h), n + 1
    print(n, "records chain")
    return True


def operators(db, names):
    ops = {o for (o,) in db.execute("SELECT DISTINCT operator FROM audit WHERE type = 3")}
    print("ISSUE records name", ", ".join(sorted(ops)) or "nobody")
    return ops <= set(names)


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in ("recorded", "chain", "operators"):
        print(__doc__, file=sys.stderr)
        return 2
    db = sqlite3.connect(sys.argv[1])
    check = {"recorded": lambda: recorded(db, sys.argv[3:]), "chain": lambda: chain(db),
             "operators": lambda: operators(db, sys.argv[3:])}[sys.argv[2]]
    return 0 if check() else 1


if __name__ == "__main__":
    sys.exit(main())
