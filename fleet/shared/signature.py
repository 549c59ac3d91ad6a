"""What a variant's ed25519 signature covers, and how a device checks it.

The registry signs (``registry.signing``); the agent verifies before it swaps a model in. Both use
:func:`signed_message`, so the two sides cannot drift apart. The signature covers the variant's
name and sha256, so a device also rejects a valid file served under another variant's name.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

DOMAIN = b"edgeloop-variant-v1"


def signed_message(variant: str, sha256_hex: str) -> bytes:
    return b"\n".join([DOMAIN, variant.encode(), sha256_hex.encode()])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_variant(public_key_pem: bytes, variant: str, path: Path, signature_b64: str) -> bool:
    """True only when the file's sha256 and name carry a valid signature by this key."""
    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an ed25519 key")
    try:
        key.verify(base64.b64decode(signature_b64), signed_message(variant, file_sha256(path)))
    except (InvalidSignature, ValueError):
        return False
    return True
