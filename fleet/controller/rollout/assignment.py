"""Which devices of each cohort a stage targets at the canary, chosen so that a restart chooses the same.

Devices are ranked by a hash of the rollout id and the device id: the rank of a device never depends on
which other devices exist, when the controller started or in what order the database returned rows, so
the same fleet always yields the same canaries, and a device that enrols mid-rollout slots into the
ranking without moving anyone else. A later stage keeps every device an earlier stage targeted and adds
the best-ranked untargeted ones until the stage's share of the cohort is reached; targets only grow,
so no device is flipped back and forth during a rollout.

The chosen sets are persisted in the status; this module is only consulted when a stage starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from fleet.controller.rollout.observations import Observations
from fleet.controller.rollout.policy import RolloutPolicy


class Assignment(BaseModel):
    """The devices of one cohort targeted at the canary, in rank order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware_class: str
    device_ids: tuple[str, ...]


def canary_rank(rollout_id: str, device_id: str) -> str:
    """The stable sort key of a device within a rollout (hex sha256 of ``rollout_id/device_id``)."""
    return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).hexdigest()


def ranked(rollout_id: str, device_ids: Iterable[str]) -> list[str]:
    """``device_ids`` in canary order: the first ones become canaries first."""
    return sorted(set(device_ids), key=lambda d: (canary_rank(rollout_id, d), d))


def assign_stage(
    *,
    rollout_id: str,
    policy: RolloutPolicy,
    stage: int,
    previous: tuple[Assignment, ...],
    observations: Observations,
) -> tuple[Assignment, ...]:
    """Targets of ``stage``: ``previous`` plus the next ranked devices of each cohort, cohorts by name.

    A cohort's size counts every enrolled device of the class in ``observations`` (online or not) and
    every device targeted before. Cohorts without any device get no assignment.
    """
    stage_policy = policy.stage(stage)
    before = {a.hardware_class: a.device_ids for a in previous}
    result = []
    for cohort in sorted(policy.cohorts):
        kept = before.get(cohort, ())
        enrolled = [d.device_id for d in observations.devices if d.hardware_class == cohort]
        members = ranked(rollout_id, [*enrolled, *kept])
        wanted = stage_policy.targeted_count(len(members))
        chosen, already = list(kept), set(kept)
        for device_id in members:
            if len(chosen) >= wanted:
                break
            if device_id not in already:
                chosen.append(device_id)
        if chosen:
            result.append(Assignment(hardware_class=cohort, device_ids=tuple(chosen)))
    return tuple(result)
