"""What the controller must do after a decision: typed, frozen, serialisable actions.

The decision returns actions instead of doing them so that it stays pure and so that the controller can
persist them together with the new status (an outbox) before performing any: a controller killed between
saving and acting finds the actions still owed when it restarts. Every action is idempotent when keyed by
``(rollout_id, attempt, transition)``: targeting a device at the version it is already targeted at
changes nothing, and an outcome is recorded once per attempt.

Order matters and is fixed by the decision (STYLE rule 4): on a rollback, devices are moved to the stable
version first, then the outcome is recorded in the registry, then people are told.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.controller.rollout.stats import GateResult

AttemptOutcome = Literal["succeeded", "rolled_back", "failed", "aborted"]
"""How an attempt ended, as the registry records it (``edgeloop.rollout.status``)."""


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout_id: str
    attempt: int = Field(ge=1)
    transition: int = Field(ge=0, description="index in the status's history that produced it")


class TargetDevices(_Action):
    """Set the desired version of these devices; a device long-polling its desired state hears at once."""

    kind: Literal["target_devices"] = "target_devices"
    version: str
    device_ids: tuple[str, ...] = Field(min_length=1)


class RecordOutcome(_Action):
    """Tell the registry how the attempt ended, so the model version carries it.

    ``succeeded``: the version is the fleet's. ``rolled_back``: a gate failed (``causes`` says which,
    where, measured against what); the ``production`` alias goes back to ``stable_version``. ``failed``:
    no verdict for lack of data; ``aborted``: an operator stopped it. In both the alias also goes back.
    """

    kind: Literal["record_outcome"] = "record_outcome"
    model: str
    version: str = Field(description="the canary version the outcome is about")
    stable_version: str
    outcome: AttemptOutcome
    reason: str
    causes: tuple[GateResult, ...] = ()


class Notify(_Action):
    """A line for people (log, Prefect artifact, chat): what changed and why."""

    kind: Literal["notify"] = "notify"
    phase: str
    message: str


Action = Annotated[TargetDevices | RecordOutcome | Notify, Field(discriminator="kind")]
"""Any action; ``TypeAdapter(list[Action])`` reads a persisted outbox back."""
