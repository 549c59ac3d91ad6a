"""Errors the edge agent raises, and why each one exists.

Hierarchy::

    AgentError                   base; ``message``, plus keyword-only context on each subclass
    ├── ArtifactRejected         a candidate model failed a check and was never served (slots)
    │                            ``reason``: sha256 | signature | load | smoke; ``model``, ``version``,
    │                            ``variant``, ``detail``
    ├── NoModelServing           ``predict`` before any model was installed or restored (slots)
    ├── NoPreviousModel          ``rollback_local`` with nothing in the previous slot (slots)
    ├── InferenceFailed          the serving session raised on this input; counted as an error (slots)
    ├── StoreError               the on-disk model store cannot be read or written (store)
    │   ├── UnsafeName           a model, version or variant name that cannot be a path component
    │   └── NotStored            a version asked for by name is not on disk (store, slots)
    └── TelemetryError           a report cannot be buffered (telemetry)
        └── ReportTooLarge       one report is bigger than the whole buffer may hold

The agent's library layers (``store``, ``slots``, ``telemetry``) raise these; the agent loop that talks
to the controller turns them into status it reports (STYLE rule 5) instead of dying on them. A rejected
artifact is not exceptional for the loop (a corrupted download happens), so ``SlotManager.install``
returns it inside an ``InstallResult``; ``InstallResult.raise_for_rejection()`` raises it for callers
that prefer an exception. Outside exceptions (``OSError``, ``sqlite3.Error``, onnxruntime's) are
converted at the boundary with the cause kept (``raise ... from exc``).

These classes deliberately do not derive from ``edgeloop.errors.EdgeloopError``: the agent installs and
runs on its own, and depends on nothing outside ``fleet.agent`` but its few third-party packages.
"""

from __future__ import annotations

from enum import StrEnum


class AgentError(Exception):
    """Base class of every error the agent raises on purpose; ``message`` says what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RejectReason(StrEnum):
    """Which check turned a candidate model away, in the order the checks run."""

    SHA256 = "sha256"
    """The bytes on disk are not the bytes the controller announced (tampered or truncated)."""
    SIGNATURE = "signature"
    """The fleet key did not sign this file under this variant's name."""
    LOAD = "load"
    """onnxruntime could not open the file as a model with this device's settings."""
    SMOKE = "smoke"
    """The model ran on the golden inputs but its output is unusable (shape, NaN/Inf, not probabilities)."""

    def phrase(self) -> str:
        """A short stable phrase for event logs and reports: ``"sha256 mismatch"``, ..."""
        return {
            RejectReason.SHA256: "sha256 mismatch",
            RejectReason.SIGNATURE: "invalid signature",
            RejectReason.LOAD: "load failed",
            RejectReason.SMOKE: "smoke test failed",
        }[self]


class ArtifactRejected(AgentError):
    """Raised (or returned inside an ``InstallResult``) by ``SlotManager`` when a candidate fails a check.

    The model named here was never served; the agent stays on the model it had.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: RejectReason,
        model: str,
        version: str,
        variant: str,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.model = model
        self.version = version
        self.variant = variant
        self.detail = detail


class NoModelServing(AgentError):
    """Raised by ``SlotManager.predict`` when no model has been installed or restored yet."""


class NoPreviousModel(AgentError):
    """Raised by ``SlotManager.rollback_local`` when the previous slot is empty."""


class InferenceFailed(AgentError):
    """Raised by ``SlotManager.predict`` when the serving session raised; the error is counted.

    ``version`` is the version that was serving; the onnxruntime error is the ``__cause__``.
    """

    def __init__(self, message: str, *, model: str, version: str) -> None:
        super().__init__(message)
        self.model = model
        self.version = version


class StoreError(AgentError):
    """Raised by ``ModelStore`` when the state directory cannot be read or written."""


class UnsafeName(StoreError, ValueError):
    """Raised by ``ArtifactRef`` when a name could escape the state directory or is empty."""

    def __init__(self, message: str, *, field: str, value: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class NotStored(StoreError):
    """Raised by ``ModelStore.get`` and ``SlotManager.activate`` for a version that is not on disk."""


class TelemetryError(AgentError):
    """Raised by ``TelemetryBuffer`` when a report cannot be buffered (not JSON, a reserved key, ...)."""


class ReportTooLarge(TelemetryError):
    """Raised by ``TelemetryBuffer.append`` when one report alone exceeds ``max_bytes``."""

    def __init__(self, message: str, *, size: int, max_bytes: int) -> None:
        super().__init__(message)
        self.size = size
        self.max_bytes = max_bytes
