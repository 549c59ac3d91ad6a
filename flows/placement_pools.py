"""Training pools on Prefect: a deployment of the training flow per pool, worker health, runs.

Each training pool gets a deployment ``placed-training/<pool>`` of :func:`flows.placement_flow.
placed_training`, made the way :mod:`flows.pool` deploys the hardware flow: its code from
``placement.source``, by default the worker's own installed edgeloop (the trainer image). A pool is
live when it is not paused and one of its workers sent a heartbeat within three of its heartbeat
intervals (Prefect's own rule for marking a worker offline, computed here so no server loop lags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from flows.placement import PoolHealth, RunState
from flows.pool import deploy_flow, ensure_process_pools

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, Worker

FLOW_NAME = "placed-training"
TRAINING_FLOW = "flows.placement_flow.placed_training"
MISSED_HEARTBEATS = 3
DEFAULT_HEARTBEAT_S = 30


def worker_alive(worker: Worker, now: datetime) -> bool:
    if worker.status.value != "ONLINE" or worker.last_heartbeat_time is None:
        return False
    interval = worker.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_S
    return (now - worker.last_heartbeat_time).total_seconds() <= MISSED_HEARTBEATS * interval


def pool_health(pools: Sequence[str]) -> dict[str, PoolHealth]:
    """Each pool's health from the Prefect server: exists, not paused, a worker alive."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out: dict[str, PoolHealth] = {}
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for name in pools:
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                out[name] = PoolHealth(False, "no such work pool on the Prefect server")
                continue
            if pool.is_paused:
                out[name] = PoolHealth(False, "work pool is paused")
                continue
            workers = client.read_workers_for_work_pool(name)
            if any(worker_alive(w, now) for w in workers):
                out[name] = PoolHealth(True, "a worker is alive")
            elif workers:
                last = max(
                    w.last_heartbeat_time or datetime.min.replace(tzinfo=UTC) for w in workers
                )
                age = (now - last).total_seconds()
                out[name] = PoolHealth(False, f"no live worker (last heartbeat {age:.0f} s ago)")
            else:
                out[name] = PoolHealth(False, "no live worker (none ever polled the pool)")
    return out


def ensure_training_deployments(pools: Sequence[str], source: str | None) -> None:
    """Create each pool (process type) and its deployment of the training flow, if missing; the
    flow's code comes from ``source`` (``placement.source``)."""
    ensure_process_pools(pools)
    deploy_flow(TRAINING_FLOW, [(name, name) for name in pools], source)


@dataclass
class PrefectPools:
    """The :class:`flows.placement.PoolBackend` over a Prefect server (PREFECT_API_URL)."""

    parameters: dict[str, Any]  # placed_training's, less ``pool``
    submitted: list[str] = field(default_factory=list)

    def health(self, pools: Sequence[str]) -> dict[str, PoolHealth]:
        return pool_health(pools)

    def submit(self, pool: str) -> str:
        from prefect.deployments import run_deployment

        flow_run = cast(
            "FlowRun",
            run_deployment(
                f"{FLOW_NAME}/{pool}",
                parameters={**self.parameters, "pool": pool},
                timeout=0,
                as_subflow=False,
            ),
        )
        self.submitted.append(str(flow_run.id))
        return str(flow_run.id)

    def state(self, run_id: str) -> tuple[RunState, str]:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
        if state is None:
            return RunState.PENDING, ""
        message = state.message or state.name or str(state.type.value)
        if state.is_completed():
            return RunState.COMPLETED, message
        if state.is_crashed() or state.is_cancelled() or state.is_cancelling():
            return RunState.CRASHED, message
        if state.is_failed():
            return RunState.FAILED, message
        return RunState.PENDING, message

    def cancel(self, run_id: str, reason: str, *, worker_alive: bool) -> None:
        """A live worker stops the run on Cancelling; with none, mark it Cancelled outright."""
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import State
        from prefect.states import Cancelled, Cancelling

        state: State = Cancelling(message=reason) if worker_alive else Cancelled(message=reason)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(run_id), state, force=True)
