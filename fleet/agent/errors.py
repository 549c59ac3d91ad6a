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
    ├── TelemetryError           a report cannot be buffered (telemetry)
    │   └── ReportTooLarge       one report is bigger than the whole buffer may hold
    ├── AgentConfigError         agent settings that cannot work (config, client); also a ValueError
    │   └── InsecureTransport    plain HTTP to a host that is not loopback, without ``allow_insecure``
    └── ControllerCallFailed     talking to the controller failed (client); ``status_code`` when it answered
        ├── ControllerUnreachable  offline: a transport error, a timeout or a 5xx; retried later
        ├── UntrustedController  its TLS certificate fails verification against the pinned CA; a person must act
        ├── Unauthorized         401: enrolment token or device credential refused; never retried silently
        ├── Forbidden            403: a valid credential used for another device or resource
        ├── BadResponse          an answer that does not parse against ``fleet.shared.protocol``, or a status
        │                        the client does not expect (a 404 for an artifact, a 422)
        └── DownloadFailed       an artifact could not be fetched whole within the retries (client)

The agent's library layers (``store``, ``slots``, ``telemetry``) raise these; the agent loop that talks
to the controller turns them into status it reports (STYLE rule 5) instead of dying on them. A rejected
artifact is not exceptional for the loop (a corrupted download happens), so ``SlotManager.install``
returns it inside an ``InstallResult``; ``InstallResult.raise_for_rejection()`` raises it for callers
that prefer an exception. Outside exceptions (``OSError``, ``sqlite3.Error``, onnxruntime's) are
converted at the boundary with the cause kept (``raise ... from exc``).

These classes deliberately do not derive from ``edgeloop.core.errors.EdgeloopError``: the agent installs and
runs on its own, and depends on nothing outside ``fleet.agent`` but its few third-party packages. Their
names stay apart from the platform's: ``AgentConfigError`` is not ``edgeloop.core.errors.ConfigError``
(params.yaml), and ``ControllerCallFailed`` (the agent's call to the controller failed) is not
``fleet.controller.errors.ControllerError`` (the controller's own errors).
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
    """The fleet key did not sign this file as this model, version, variant and release."""
    RELEASE = "release"
    """An older release than the one serving, and not the controller's rollback path."""
    LOAD = "load"
    """onnxruntime could not open the file as a model with this device's settings."""
    SMOKE = "smoke"
    """The model ran on the golden inputs but its output is unusable (shape, NaN/Inf, not probabilities)."""

    def phrase(self) -> str:
        """A short stable phrase for event logs and reports: ``"sha256 mismatch"``, ..."""
        return {
            RejectReason.SHA256: "sha256 mismatch",
            RejectReason.SIGNATURE: "invalid signature",
            RejectReason.RELEASE: "older release",
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


class InvalidInput(AgentError, ValueError):
    """Raised by ``SlotManager.predict`` when a request's inputs do not fit the serving model's
    contract (the message names the input, the expected and the received shape); not counted as a
    model error, and the model keeps serving."""


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


class AgentConfigError(AgentError, ValueError):
    """Raised by ``AgentConfig`` and ``ControllerClient`` for settings that cannot work; names the setting."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class InsecureTransport(AgentConfigError):
    """Raised by ``ControllerClient`` for a plain-HTTP URL to a host that is not loopback.

    A credential or a model sent in the clear can be read or replaced on the way; plain HTTP is for a
    controller on the same machine, or needs ``allow_insecure=True`` said out loud.
    """


class ControllerCallFailed(AgentError):
    """Raised by ``ControllerClient``; ``status_code`` is the HTTP status when the controller answered.

    The agent loop turns these into status (STYLE rule 5); library callers get the exception.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ControllerUnreachable(ControllerCallFailed):
    """Raised by ``ControllerClient`` on a transport error, a timeout or a 5xx answer.

    The device is offline as far as the agent is concerned: it keeps serving, buffers telemetry and
    tries again after a back-off. The transport error, if any, is the ``__cause__``.
    """


class UntrustedController(ControllerCallFailed):
    """Raised by ``ControllerClient`` when the controller's TLS certificate does not verify against
    the CA the device pinned (``ca_file``): a wrong CA file, or someone else answering in its name.

    Not "offline": nothing was sent (the handshake failed before any request), and waiting will not
    fix it, so the agent refuses to enrol (exit 3) and an enrolled agent's status says so.
    """


class Unauthorized(ControllerCallFailed):
    """Raised by ``ControllerClient`` on a 401: the enrolment token or the device credential was refused.

    Never answered by enrolling again on its own: an enrolment token is one-time, so a used one would
    only be refused too, and a revoked device must not let itself back in.
    """


class Forbidden(ControllerCallFailed):
    """Raised by ``ControllerClient`` on a 403: the credential is valid but not for this device."""


class BadResponse(ControllerCallFailed):
    """Raised by ``ControllerClient`` when an answer does not parse against ``fleet.shared.protocol`` or has
    a status the client does not expect (404, 409, 422, ...); ``detail`` holds the start of the body."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: str = "") -> None:
        super().__init__(message, status_code=status_code)
        self.detail = detail


class DownloadFailed(ControllerCallFailed):
    """Raised by ``ControllerClient.download`` when an artifact could not be fetched whole within the
    retries; a partial file is kept for the next try to resume. The last error is the ``__cause__``."""

    def __init__(
        self,
        message: str,
        *,
        version: str,
        received: int,
        expected: int,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.version = version
        self.received = received
        self.expected = expected
