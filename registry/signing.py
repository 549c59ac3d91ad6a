"""The registry's ed25519 signing key, generated on first use, and signatures for variants.

The private key never leaves ``<home>/keys/`` (mode 0600) of the host that registers versions; the
public key is logged with every version so a device can verify what it downloads
(``fleet.shared.signature``: a signature binds model, version, variant, sha256 and release).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.shared.signature import ReleaseClaim

PRIVATE = "signing-ed25519.pem"
PUBLIC = "signing-ed25519.pub.pem"


def load_or_create_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = keys_dir / PRIVATE
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 private key")
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    (keys_dir / PUBLIC).write_bytes(public_pem(key))
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_claim(key: Ed25519PrivateKey, claim: ReleaseClaim) -> str:
    """The base64 ed25519 signature of ``claim`` (``fleet.shared.signature``)."""
    return base64.b64encode(key.sign(claim.message())).decode()
