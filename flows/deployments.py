"""The Prefect deployments ``edgeloop serve`` keeps up to date on the ops pool ``edgeloop-ops``.

- ``rollout/promoted``: the rollout flow (:mod:`flows.rollout`), started for a version that became
  ``production``; its worker holds ``EDGELOOP_FLEET_ADMIN_TOKEN``, so no run carries the token.
- ``scheduled-retrain/scheduled``: the scheduled retrain (:mod:`flows.scheduled`) on the cron schedule of
  params.yaml's ``schedule`` section (paused when ``schedule.enabled`` is false).

Both run on a process pool whose worker is a child of ``edgeloop serve`` on this host, from this
checkout (the ``checkout`` flow source, chosen here on purpose: the hardware and training pools,
whose workers run elsewhere, default to the installed package instead).
"""

from __future__ import annotations

from typing import Any

from edgeloop.core.flow_source import CHECKOUT
from edgeloop.core.schedule_params import ScheduleParams
from flows.pool import OPS_POOL, deploy_flow, ensure_process_pools

ROLLOUT_DEPLOYMENT = "rollout/promoted"
SCHEDULED_DEPLOYMENT = "scheduled-retrain/scheduled"  # <flow name>/<deployment name>


def _deploy(entrypoint: str, name: str, **options: Any) -> str:
    [deployed] = deploy_flow(
        entrypoint, [(name, OPS_POOL)], CHECKOUT, enforce_parameter_schema=False, **options
    )
    return deployed


def ensure_ops_deployments(schedule: ScheduleParams) -> list[str]:
    """Create or update the ops pool and both deployments; returns their names."""
    from prefect.schedules import Cron

    ensure_process_pools([OPS_POOL])
    rollout = _deploy(
        "flows.rollout.rollout_flow",
        ROLLOUT_DEPLOYMENT.split("/")[1],
        description="Roll a version that became production out to the fleet.",
    )
    scheduled = _deploy(
        "flows.scheduled.scheduled_retrain_flow",
        SCHEDULED_DEPLOYMENT.split("/")[1],
        description="Retrain when the data or the training code changed; skip with the reason.",
        schedules=[Cron(schedule.cron, timezone=schedule.timezone, active=schedule.enabled)],
    )
    return [rollout, scheduled]
