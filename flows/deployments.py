"""The Prefect deployments ``edgeloop serve`` keeps up to date on the ops pool ``edgeloop-ops``.

- ``rollout/promoted``: the rollout flow (:mod:`flows.rollout`), started for a version that became
  ``production``; its worker holds ``EDGELOOP_FLEET_ADMIN_TOKEN``, so no run carries the token.
- ``retrain/scheduled``: the scheduled retrain (:mod:`flows.scheduled`) on the cron schedule of
  params.yaml's ``schedule`` section (paused when ``schedule.enabled`` is false).

Both run from this checkout (``flow.from_source``) on a process pool, as the hardware pools do.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any, cast

from edgeloop.schedule_params import ScheduleParams
from edgeloop.serve_plan import OPS_POOL
from flows.pool import SOURCE

if TYPE_CHECKING:
    from prefect import Flow

ROLLOUT_DEPLOYMENT = "rollout/promoted"
SCHEDULED_DEPLOYMENT = "retrain/scheduled"


def ensure_process_pool(name: str) -> None:
    """Create the process work pool ``name`` if it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def _deploy(entrypoint: str, name: str, **options: Any) -> str:
    from prefect import Flow

    deployable = cast("Flow[..., Any]", Flow.from_source(source=str(SOURCE), entrypoint=entrypoint))
    with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints a table per deployment
        deployable.deploy(
            name=name,
            work_pool_name=OPS_POOL,
            build=False,
            push=False,
            print_next_steps=False,
            enforce_parameter_schema=False,
            ignore_warnings=True,
            **options,
        )
    return f"{deployable.name}/{name}"


def ensure_ops_deployments(schedule: ScheduleParams) -> list[str]:
    """Create or update the ops pool and both deployments; returns their names."""
    from prefect.schedules import Cron

    ensure_process_pool(OPS_POOL)
    rollout = _deploy(
        "flows/rollout.py:rollout_flow",
        ROLLOUT_DEPLOYMENT.split("/")[1],
        description="Roll a version that became production out to the fleet.",
    )
    scheduled = _deploy(
        "flows/scheduled.py:scheduled_retrain_flow",
        SCHEDULED_DEPLOYMENT.split("/")[1],
        description="Retrain when the data or the training code changed; skip with the reason.",
        schedules=[Cron(schedule.cron, timezone=schedule.timezone, active=schedule.enabled)],
    )
    return [rollout, scheduled]
