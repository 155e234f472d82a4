#!/usr/bin/python3
"""Key-transport test vectors for docs/package-format.md, computed with Python's
`cryptography` package: a second implementation, independent of the C code.
Fixed inputs (test-only keys), every intermediate value printed as hex.
Run: python3 tests/vectors/make_key_transport_vectors.py > tests/vectors/key-transport-v1.txt
"""
import hashlib
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

def h(b):
    return b.hex()

guardian_d = int("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721", 16)
eph_d = int("519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464", 16)
ca_d = int("0f56db78ca460b055c500064824bed999a25aaf48ebb519ac201537b85479813", 16)
package_id = bytes.fromhex("00112233445566778899aabbccddeeff")
target = hashlib.sha256(b"test Guardian certificate").digest()

g = ec.derive_private_key(guardian_d, ec.SECP256R1())
e = ec.derive_private_key(eph_d, ec.SECP256R1())
ca = ec.derive_private_key(ca_d, ec.SECP256R1())
G = g.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
E = e.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
Z = e.exchange(ec.ECDH(), g.public_key())
assert Z == g.exchange(ec.ECDH(), e.public_key())
C = hashlib.sha256(b"GUARDIAN-KEK-v1" + package_id + target + E).digest()
enc = Cipher(algorithms.AES(Z[:32]), modes.CBC(bytes(16))).encryptor()
kek_cbc = enc.update(C) + enc.finalize()
kek_x963 = X963KDF(algorithm=hashes.SHA256(), length=32, sharedinfo=C).derive(Z)
pkcs8 = ca.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                         serialization.NoEncryption())

print("# Guardian package key transport, format version 1 (docs/package-format.md).")
print("# Test-only keys. Produced by tests/vectors/make_key_transport_vectors.py.")
for name, value in [
    ("guardian_private", "%064x" % guardian_d), ("guardian_public", h(G)),
    ("ephemeral_private", "%064x" % eph_d), ("ephemeral_public", h(E)),
    ("package_id", h(package_id)), ("target_guardian", h(target)),
    ("shared_secret_z", h(Z)), ("kdf_context_c", h(C)),
    ("kek_ecdh_aescbc", h(kek_cbc)), ("kek_ecdh_x963sha256", h(kek_x963)),
    ("ca_private_pkcs8", h(pkcs8)),
    ("wrapped_aescbc", h(aes_key_wrap_with_padding(kek_cbc, pkcs8))),
    ("wrapped_x963sha256", h(aes_key_wrap_with_padding(kek_x963, pkcs8))),
]:
    print("%s = %s" % (name, value))
