"""Errors the fleet controller raises, and who raises each.

Hierarchy::

    EdgeloopError (edgeloop.core.errors)
    └── ControllerError            base of the controller's own errors
        ├── PolicyError            a rollout policy is missing a field or contradicts itself (policy)
        ├── RolloutCommandError    a command the rollout's phase does not allow: start twice, resume
        │                          what is not paused, retry a success (decide); the API answers 409
        ├── ObservationsError      observations that do not fit the status they are judged against,
        │                          e.g. aggregated over another window (decide): a controller bug
        ├── EnrolmentRefused       unknown, expired or used-up enrolment token, or a class it does
        │                          not allow (store); the API answers 401
        ├── DeviceAlreadyEnrolled  the device id is taken (store); 409
        ├── RolloutNotFound        no rollout with that id (store); 404
        ├── RolloutRefused         a rollout that may not be created (store)
        │   ├── RolloutConflict    another rollout of the model is active (409)
        │   └── RolloutInvalid     no signed variant for a targeted class, bad policy (422)
        └── ConcurrentUpdate       another replica changed the rollout first (store, loop); the
                                   loop retries on its next pass, the API answers 409

The pure decision core raises these only for input that no pass of a correct controller produces, or for
commands an operator may be refused. Conditions of the fleet (silent devices, failing gates) are never
exceptions: ``next_state`` turns them into a phase and a reason (STYLE rule 5).
"""

from __future__ import annotations

from edgeloop.core.errors import EdgeloopError


class ControllerError(EdgeloopError):
    """Base class of the errors the fleet controller raises on purpose."""


class PolicyError(ControllerError):
    """Raised by ``fleet.controller.rollout.policy`` loaders; the message names every field to fix."""


class RolloutCommandError(ControllerError):
    """Raised by the rollout commands in ``fleet.controller.rollout.decide`` when the phase does not allow one.

    ``command`` is the refused command, ``phase`` the phase the rollout was in.
    """

    def __init__(self, message: str, *, command: str, phase: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.command = command
        self.phase = phase


class ObservationsError(ControllerError):
    """Raised by ``fleet.controller.rollout.decide`` when observations cannot be judged against the status.

    ``expected`` and ``got`` say what did not match (for example the two window starts).
    """

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class EnrolmentRefused(ControllerError):
    """Raised by ``fleet.controller.storage.store.enrol``; deliberately vague: it never says which check failed."""


class DeviceAlreadyEnrolled(ControllerError):
    """Raised by ``fleet.controller.storage.store.enrol`` when ``device_id`` is enrolled already."""

    def __init__(self, message: str, *, device_id: str) -> None:
        super().__init__(message)
        self.device_id = device_id


class RolloutNotFound(ControllerError):
    """Raised by ``fleet.controller.storage.store`` when no rollout has ``rollout_id``."""

    def __init__(self, message: str, *, rollout_id: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class RolloutRefused(ControllerError):
    """Raised by ``fleet.controller.storage.store.create_rollout``; ``reason`` is shown to the operator."""

    def __init__(self, message: str, *, reason: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class RolloutConflict(RolloutRefused):
    """Another rollout of the same model is active (and ``supersede`` was not asked for)."""


class RolloutInvalid(RolloutRefused):
    """The version lacks a signed variant for a targeted class, or the policy does not validate."""


class ConcurrentUpdate(ControllerError):
    """Raised by ``fleet.controller.storage.store`` when a rollout row changed under us (optimistic lock)."""

    def __init__(self, message: str, *, rollout_id: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class PlaybookActionFailed(ControllerError):
    """Raised by a playbook action (``fleet.controller.observe.playbooks.actions``) when the outside
    world refused it; the runner records the message and retries the action with backoff."""
