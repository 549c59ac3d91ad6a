"""Errors the fleet controller raises, and who raises each.

Hierarchy::

    EdgeloopError (edgeloop.errors)
    └── ControllerError            base of the controller's own errors
        ├── PolicyError            a rollout policy is missing a field or contradicts itself (policy)
        ├── RolloutCommandError    a command the rollout's phase does not allow: start twice, resume
        │                          what is not paused, retry a success (decide); the API answers 409
        └── ObservationsError      observations that do not fit the status they are judged against,
                                   e.g. aggregated over another window (decide): a controller bug

The pure decision core raises these only for input that no pass of a correct controller produces, or for
commands an operator may be refused. Conditions of the fleet (silent devices, failing gates) are never
exceptions: ``next_state`` turns them into a phase and a reason (STYLE rule 5).
"""

from __future__ import annotations

from edgeloop.errors import EdgeloopError


class ControllerError(EdgeloopError):
    """Base class of the errors the fleet controller raises on purpose."""


class PolicyError(ControllerError):
    """Raised by ``fleet.controller.policy`` loaders; the message names every field to fix."""


class RolloutCommandError(ControllerError):
    """Raised by the rollout commands in ``fleet.controller.decide`` when the phase does not allow one.

    ``command`` is the refused command, ``phase`` the phase the rollout was in.
    """

    def __init__(self, message: str, *, command: str, phase: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.command = command
        self.phase = phase


class ObservationsError(ControllerError):
    """Raised by ``fleet.controller.decide`` when observations cannot be judged against the status.

    ``expected`` and ``got`` say what did not match (for example the two window starts).
    """

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
