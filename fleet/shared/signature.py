"""What a release signature covers, and how a device checks it.

The registry signs (``registry.signing``) when it registers a version; the controller checks every
artifact it is given, and the agent checks again before it swaps a model in. All use
:class:`ReleaseClaim`, so the sides cannot drift apart.

A signature binds the whole release, not just a file: the model, its version, the variant's name, the
file's sha256 and the **release counter**, the registry's version number (it only grows for a model).
So a file signed for one model is refused as another model, a variant of version 3 is refused as
version 4's, and an old release cannot pass as a new one. The device also refuses a release counter
lower than the one it runs unless the controller's rollback path asks for it (``DesiredState.rollback``).
Every field is a name without a newline (``NAME``) or a number, so the newline-joined message is
unambiguous.

The hardware class is not covered: which variant a class runs is decided by hardware validation,
which may run after registration on runners that must not hold the signing key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

DOMAIN = b"edgeloop-release-v2"


@dataclass(frozen=True)
class ReleaseClaim:
    """What one variant's signature says: these bytes are ``variant`` of ``model`` ``version``,
    release ``release``."""

    model: str
    version: str
    variant: str
    sha256: str
    release: int

    def message(self) -> bytes:
        """The signed bytes: the domain, then each field on its own line."""
        fields = (self.model, self.version, self.variant, self.sha256, str(self.release))
        if any("\n" in f for f in fields):
            raise ValueError(f"a release field holds a newline: {fields}")
        return b"\n".join([DOMAIN, *(f.encode() for f in fields)])

    def describe(self) -> str:
        return (
            f"{self.model} version {self.version} variant {self.variant} (release {self.release})"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _public_key(public_key_pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an ed25519 key")
    return key


def verify_claim(public_key_pem: bytes, claim: ReleaseClaim, signature_b64: str) -> bool:
    """True only when ``signature_b64`` is this key's signature of exactly ``claim``."""
    key = _public_key(public_key_pem)
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), claim.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_variant(
    public_key_pem: bytes, claim: ReleaseClaim, path: Path, signature_b64: str
) -> bool:
    """True only when the file's sha256 is the claim's and the claim carries a valid signature."""
    return file_sha256(path) == claim.sha256 and verify_claim(public_key_pem, claim, signature_b64)
