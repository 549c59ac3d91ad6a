"""The agent's models on disk: verified artifacts, their manifests, and which ones fill the slots.

Layout under the state directory::

    <state>/models/<model>/<version>/<variant>.onnx    the verified bytes
    <state>/models/<model>/<version>/<variant>.json    manifest: sha256, signature, size, stored_at
    <state>/slots.json                                 which artifacts are active and previous

Why a separate store: the disk outlives the process. A device that crashes or loses power must come
back serving the model it served, and a fleet rollback re-targets devices to the stable version, which
they must still have (DESIGN.md, Rollouts). So the store never deletes the artifacts that ``slots.json``
names, and prunes others only beyond ``keep``.

Every write is atomic: bytes go to a temporary file in the destination directory, are fsynced, then
``os.replace``d over the final name, and the directory is fsynced. A crash leaves either the old file or
the new one, never half of one. An artifact counts as present only once its manifest exists, and the
manifest is written after the model file, so a model file without a manifest is debris that
:meth:`ModelStore.prune` removes.

The store checks nothing about a model's content: ``SlotManager`` verifies the sha256 and signature of
the staged bytes before it calls :meth:`ModelStore.commit`, so only verified bytes reach their final
name. The store only records what it was given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.agent.errors import NotStored, StoreError, UnsafeName

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_TMP_SUFFIX = ".tmp"
SLOTS_FILE = "slots.json"
DEFAULT_KEEP = 3


@dataclass(frozen=True, order=True)
class ArtifactRef:
    """One variant of one model version: what a slot holds and what a report names.

    Each name becomes a path component, so each is checked: it starts with a letter or digit and
    holds only letters, digits and ``. _ + -`` (so never ``..`` or a slash).
    """

    model: str
    version: str
    variant: str

    def __post_init__(self) -> None:
        for field in ("model", "version", "variant"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME.match(value):
                raise UnsafeName(
                    f"{field} {value!r} cannot be used as a file name (letters, digits, '._+-'; "
                    "starting with a letter or digit; at most 128 characters)",
                    field=field,
                    value=str(value),
                )

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "variant": self.variant}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactRef:
        return cls(model=raw["model"], version=raw["version"], variant=raw["variant"])

    def __str__(self) -> str:
        return f"{self.model}/{self.version}/{self.variant}"


@dataclass(frozen=True)
class StoredArtifact:
    """A verified artifact on disk, as its manifest describes it."""

    ref: ArtifactRef
    path: Path
    sha256: str
    signature: str
    size: int
    stored_at: float
    release: int = 0
    """The release counter the signature binds; 0 in a manifest written before there was one (its
    signature does not verify, so such a model is downloaded again)."""


@dataclass(frozen=True)
class StagedArtifact:
    """Bytes copied next to their final name but not yet committed; ``sha256`` is of these bytes."""

    ref: ArtifactRef
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Slots:
    """What ``slots.json`` records: the artifact serving, and the one kept for a local rollback."""

    active: ArtifactRef | None = None
    previous: ArtifactRef | None = None

    def protects(self, ref: ArtifactRef) -> bool:
        return ref in (self.active, self.previous)


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class ModelStore:
    """Verified model artifacts under ``state_dir``; see the module docstring for the layout.

    ``keep`` is how many artifacts stay on disk after :meth:`prune` (at least 2: the active and the
    previous one are never pruned whatever their age). ``clock`` stamps ``stored_at``, which orders
    artifacts for pruning.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        keep: int = DEFAULT_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 2:
            raise ValueError(
                f"keep must be at least 2 (the active and previous models), got {keep}"
            )
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.keep = keep
        self._clock = clock
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the model store at {self.models_dir}: {exc}") from exc

    # paths ---------------------------------------------------------------------------------------

    def _dir(self, ref: ArtifactRef) -> Path:
        return self.models_dir / ref.model / ref.version

    def model_path(self, ref: ArtifactRef) -> Path:
        return self._dir(ref) / f"{ref.variant}.onnx"

    def _manifest_path(self, ref: ArtifactRef) -> Path:
        return self._dir(ref) / f"{ref.variant}.json"

    # writing -------------------------------------------------------------------------------------

    def stage(self, ref: ArtifactRef, source: Path) -> StagedArtifact:
        """Copy ``source`` into a temporary file beside ``ref``'s final name, hashing as it copies.

        The hash is of the bytes written here, so what is verified is what gets committed, whatever
        happens to ``source`` afterwards. Raises ``OSError`` when ``source`` cannot be read and
        :class:`StoreError` when the store cannot be written.
        """
        try:
            self._dir(ref).mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self._dir(ref), prefix=f".{ref.variant}.onnx.", suffix=_TMP_SUFFIX
            )
        except OSError as exc:
            raise StoreError(f"cannot write to the model store for {ref}: {exc}") from exc
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, Path(source).open("rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return StagedArtifact(ref=ref, path=Path(tmp), sha256=digest.hexdigest(), size=size)

    def discard(self, staged: StagedArtifact) -> None:
        """Remove a staged file that will not be committed."""
        with contextlib.suppress(FileNotFoundError):
            staged.path.unlink()
        self._remove_empty_dirs(staged.ref)

    def commit(self, staged: StagedArtifact, *, signature: str, release: int) -> StoredArtifact:
        """Move verified staged bytes to their final name, then write the manifest that makes them count."""
        ref = staged.ref
        stored = StoredArtifact(
            ref=ref,
            path=self.model_path(ref),
            sha256=staged.sha256,
            signature=signature,
            size=staged.size,
            stored_at=self._clock(),
            release=release,
        )
        manifest = {
            **ref.to_dict(),
            "sha256": stored.sha256,
            "signature": stored.signature,
            "release": stored.release,
            "size": stored.size,
            "stored_at": stored.stored_at,
        }
        try:
            os.replace(staged.path, stored.path)
            _fsync_dir(stored.path.parent)
            write_atomic(self._manifest_path(ref), json.dumps(manifest, indent=2).encode())
            _fsync_dir(self.models_dir / ref.model)
        except OSError as exc:
            raise StoreError(f"cannot commit {ref} to the model store: {exc}") from exc
        return stored

    def remove(self, ref: ArtifactRef) -> None:
        """Delete an artifact (manifest first, so a crash midway leaves debris, not a half artifact).

        Raises :class:`StoreError` for an artifact that ``slots.json`` names as active or previous.
        """
        if self.read_slots().protects(ref):
            raise StoreError(f"{ref} fills a slot (active or previous) and cannot be removed")
        try:
            with contextlib.suppress(FileNotFoundError):
                self._manifest_path(ref).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.model_path(ref).unlink()
        except OSError as exc:
            raise StoreError(f"cannot remove {ref} from the model store: {exc}") from exc
        self._remove_empty_dirs(ref)

    def _remove_empty_dirs(self, ref: ArtifactRef) -> None:
        for directory in (self._dir(ref), self.models_dir / ref.model):
            try:
                directory.rmdir()
            except OSError:  # not empty, or already gone
                return

    # reading -------------------------------------------------------------------------------------

    def get(self, ref: ArtifactRef) -> StoredArtifact:
        """The artifact's manifest; raises :class:`NotStored` when it is not (completely) on disk."""
        manifest = self._manifest_path(ref)
        try:
            raw = json.loads(manifest.read_bytes())
        except FileNotFoundError as exc:
            raise NotStored(f"{ref} is not in the model store") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"the manifest {manifest} cannot be read: {exc}") from exc
        path = self.model_path(ref)
        if not path.is_file():
            raise NotStored(f"{ref} has a manifest but no model file ({path})")
        try:
            return StoredArtifact(
                ref=ref,
                path=path,
                sha256=str(raw["sha256"]),
                signature=str(raw["signature"]),
                size=int(raw["size"]),
                stored_at=float(raw["stored_at"]),
                release=int(raw.get("release", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the manifest {manifest} is incomplete: {exc!r}") from exc

    def has(self, ref: ArtifactRef) -> bool:
        try:
            self.get(ref)
        except NotStored:
            return False
        return True

    def artifacts(self, model: str | None = None) -> list[StoredArtifact]:
        """Every complete artifact (of ``model``, or of all models), oldest first."""
        found: list[StoredArtifact] = []
        model_dirs = [self.models_dir / model] if model else sorted(self.models_dir.iterdir())
        for model_dir in model_dirs:
            if not model_dir.is_dir():
                continue
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                for manifest in sorted(version_dir.glob("*.json")):
                    try:
                        ref = ArtifactRef(model_dir.name, version_dir.name, manifest.stem)
                        found.append(self.get(ref))
                    except (NotStored, UnsafeName):
                        continue
        return sorted(found, key=lambda a: (a.stored_at, a.ref))

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` present on disk, oldest stored first."""
        seen: dict[str, None] = {}
        for artifact in self.artifacts(model):
            seen.setdefault(artifact.ref.version)
        return list(seen)

    # slots ---------------------------------------------------------------------------------------

    def read_slots(self) -> Slots:
        """What ``slots.json`` says; empty slots when the file does not exist yet."""
        path = self.state_dir / SLOTS_FILE
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return Slots()
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} cannot be read: {exc}") from exc
        try:
            active, previous = raw.get("active"), raw.get("previous")
            return Slots(
                active=ArtifactRef.from_dict(active) if active else None,
                previous=ArtifactRef.from_dict(previous) if previous else None,
            )
        except (AttributeError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is malformed: {exc!r}") from exc

    def write_slots(self, slots: Slots) -> None:
        """Record which artifacts fill the slots; this is what a restart restores."""
        body = {
            "active": slots.active.to_dict() if slots.active else None,
            "previous": slots.previous.to_dict() if slots.previous else None,
        }
        try:
            write_atomic(self.state_dir / SLOTS_FILE, json.dumps(body, indent=2).encode())
        except OSError as exc:
            raise StoreError(f"cannot record the slots in {self.state_dir}: {exc}") from exc

    # pruning -------------------------------------------------------------------------------------

    def prune(self) -> list[ArtifactRef]:
        """Delete the oldest artifacts beyond ``keep``, never one that fills a slot; also debris.

        Debris is what a crash can leave: temporary files and model files without a manifest. Call
        it only while no artifact is being staged (``SlotManager`` calls it under its install lock).
        """
        slots = self.read_slots()
        kept = 0
        removed: list[ArtifactRef] = []
        for artifact in reversed(self.artifacts()):  # newest first
            if slots.protects(artifact.ref):
                kept += 1
        budget = self.keep - kept
        for artifact in reversed(self.artifacts()):
            if slots.protects(artifact.ref):
                continue
            if budget > 0:
                budget -= 1
                continue
            self.remove(artifact.ref)
            removed.append(artifact.ref)
        self._remove_debris()
        return removed

    def _remove_debris(self) -> None:
        for path in self.models_dir.glob("*/*/*"):
            orphan = path.suffix == ".onnx" and not path.with_suffix(".json").exists()
            if path.name.endswith(_TMP_SUFFIX) or orphan:
                with contextlib.suppress(OSError):
                    path.unlink()
        for version_dir in self.models_dir.glob("*/*"):
            with contextlib.suppress(OSError):
                version_dir.rmdir()
        for model_dir in self.models_dir.glob("*"):
            with contextlib.suppress(OSError):
                model_dir.rmdir()
