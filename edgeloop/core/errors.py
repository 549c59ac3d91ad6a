"""Errors a user can act on.

Hierarchy::

    EdgeloopError                 base; carries a one-line message and a hint
    ├── ConfigError               params.yaml missing, unreadable or invalid (edgeloop.core.params)
    ├── PluginError               unknown dataset loader or model builder name (flows.plugins)
    ├── DataCheckError            a Great Expectations check failed (flows.datacheck)
    ├── ModelFileError            a file given to `register` is not a usable ONNX model (flows.onnxfile)
    ├── HardwareCheckError        the hardware-tests suite could not run at all (flows.hardware)
    ├── TrackingUnavailableError  the MLflow tracking server does not answer (registry.tracking)
    └── RegistryError             registration failed and was undone (registry.publish)

The CLI prints ``str(error)`` on one line and exits non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` what to do about it."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(EdgeloopError):
    """Raised by edgeloop.core.params when params.yaml cannot be read or does not validate."""


class PluginError(EdgeloopError):
    """Raised by flows.plugins when a dataset loader or model builder name is unknown."""


class DataCheckError(EdgeloopError):
    """Raised by flows.datacheck when one or more expectations fail; ``report`` holds the details."""

    def __init__(self, message: str, *, hint: str = "", report: dict | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report or {}


class ModelFileError(EdgeloopError):
    """Raised by flows.onnxfile when a model file is missing, not ONNX, corrupt or mismatched."""


class HardwareCheckError(EdgeloopError):
    """Raised by flows.hardware when the hardware-tests suite could not produce a result."""


class TrackingUnavailableError(EdgeloopError):
    """Raised by registry.tracking when the MLflow tracking server cannot be reached."""


class RegistryError(EdgeloopError):
    """Raised by registry.publish when a version could not be registered; nothing is left behind."""
