"""The embedded artifact store: a folder of files named by their sha256.

An upload is written to a temporary file in the store's ``incoming/`` folder (the same filesystem, so
publishing it is one atomic ``os.replace``) and renamed to ``<sha256[:2]>/<sha256>`` only on commit;
a discarded upload is deleted, and one a crash interrupted is deleted by the next store opened on the
folder once it is a day old. Two registrations of the same bytes share one file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from fleet.controller.artifacts.interface import (
    CHUNK,
    ArtifactMissing,
    ArtifactStore,
    Pending,
    check_sha256,
)

STALE_S = 86_400.0
"""An ``incoming/`` file this old belongs to an upload that will never finish."""


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def path(self, sha256: str) -> Path:
        """Where the object with this digest lives (whether or not it is there)."""
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def begin(self, sha256: str) -> Pending:
        check_sha256(sha256)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by commit or discard)
            dir=self.incoming, prefix=f"{sha256[:12]}-", suffix=".part", delete=False
        )
        return _LocalPending(sha256, handle, self.path(sha256))

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, sha256: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        try:
            handle = self.path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"no object {sha256} in {self.describe()}") from exc
        return _chunks(handle, start, stop)

    def describe(self) -> str:
        return f"the folder {self.root}"

    def _sweep(self) -> None:
        cutoff = time.time() - STALE_S
        for part in self.incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()


def _chunks(handle: IO[bytes], start: int, stop: int | None) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = None if stop is None else max(0, stop - start)
        while left is None or left > 0:
            data = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


class _LocalPending(Pending):
    def __init__(self, sha256: str, handle: IO[bytes], dest: Path) -> None:
        super().__init__(sha256)
        self._handle = handle
        self._dest = dest

    def _write(self, data: bytes) -> None:
        self._handle.write(data)

    def _commit(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._handle.name, self._dest)

    def _discard(self) -> None:
        self._handle.close()
        Path(self._handle.name).unlink(missing_ok=True)
