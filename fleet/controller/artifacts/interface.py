"""The artifact store's interface: what the API asks of every store, and the bytes on their way in.

A store holds immutable objects named by their sha256. Writing goes through a :class:`Pending`,
which hashes every byte it is given and publishes the object only on :meth:`Pending.commit`, and only
under the digest it was opened for; anything else (a mismatch, a refused signature, a client that
went away) ends in :meth:`Pending.discard`, after which no reader can see a byte of it. Reading is by
digest and byte range, which is all a resumed download needs.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType

from fleet.controller.errors import ControllerError

SHA256 = re.compile(r"^[0-9a-f]{64}$")

CHUNK = 1 << 20
"""Bytes per read of a download, and per write of an upload (1 MiB)."""


class ArtifactMissing(ControllerError):
    """The store has no object with this sha256 (never stored, or removed behind its back)."""


class ArtifactStoreUnavailable(ControllerError):
    """The store failed (an object-storage server that does not answer, or refuses our credentials);
    the API answers 503: the request may succeed later, nothing was stored."""


def check_sha256(sha256: str) -> str:
    """``sha256`` when it is 64 lowercase hex digits: the only names a store accepts, so a name
    can never walk out of a folder or a key prefix."""
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return sha256


class Pending(ABC):
    """An object being written: hashed as it arrives, invisible until :meth:`commit`.

    Use it as a context manager: leaving the block without a commit discards it.
    """

    def __init__(self, sha256: str) -> None:
        self.expected = check_sha256(sha256)
        self.size = 0
        self._digest = hashlib.sha256()
        self._done = False

    @property
    def sha256(self) -> str:
        """The digest of the bytes written so far."""
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or discard")
        self._digest.update(data)
        self.size += len(data)
        self._write(data)

    def commit(self) -> None:
        """Publish the object under its sha256. Refuses (``ValueError``, nothing published) bytes
        whose digest is not the one it was opened for: a store never names an object wrongly."""
        if self._done:
            raise RuntimeError("commit after commit or discard")
        if self.sha256 != self.expected:
            self.discard()
            raise ValueError(f"the bytes have sha256 {self.sha256}, not {self.expected}")
        self._commit()
        self._done = True

    def discard(self) -> None:
        """Throw the bytes away (a no-op after a commit)."""
        if not self._done:
            self._done = True
            self._discard()

    def __enter__(self) -> Pending:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...


class ArtifactStore(ABC):
    """Immutable objects by sha256. Implementations are safe to share between threads."""

    @abstractmethod
    def begin(self, sha256: str) -> Pending:
        """Start writing the object that should hash to ``sha256``."""

    @abstractmethod
    def size(self, sha256: str) -> int | None:
        """The object's size in bytes, or None when it is not stored."""

    @abstractmethod
    def read(self, sha256: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` (exclusive; None: the end) of the object, in chunks.

        The object is opened before this returns, so a missing one raises :class:`ArtifactMissing`
        here rather than half-way through an answer."""

    def download_url(self, sha256: str) -> str | None:
        """A URL a device may fetch the object from directly (with ``Range``), or None when the
        controller should send the bytes itself. Only a store configured for it has one."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """Where the objects are, for logs and errors (no credentials)."""
