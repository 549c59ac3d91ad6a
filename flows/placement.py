"""Training placement: which pool takes a training job, and failing over when it does not finish.

:func:`place` is the policy, a pure function: the cheapest healthy pool that satisfies the job's
constraints wins, and the decision names every pool with why it was chosen or skipped.
:func:`run_placed` drives a job through a :class:`PoolBackend` (Prefect work pools in production,
:mod:`flows.placement_pools`): submit to the chosen pool, follow the run, and place again without a
pool that lost its worker, whose run crashed or passed its deadline. A run that *failed* in its own
code is not retried elsewhere: it would fail the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.placement_params import PlacementConstraints, TrainingPool


class PlacementError(EdgeloopError):
    """No pool could finish the training job; the message names each pool and why."""


@dataclass(frozen=True)
class PoolHealth:
    live: bool
    reason: str = ""


@dataclass(frozen=True)
class PoolVerdict:
    """One pool in a decision: whether it qualifies, and why it was chosen or skipped."""

    pool: str
    provider: str
    region: str
    cost_per_hour: float
    eligible: bool
    healthy: bool
    chosen: bool
    reason: str


@dataclass(frozen=True)
class PlacementDecision:
    """Which pool takes the job (None when none can), with every pool's verdict."""

    chosen: str | None
    verdicts: list[PoolVerdict]

    def explain(self) -> str:
        return "; ".join(f"{v.pool}: {v.reason}" for v in self.verdicts) or "no pools configured"

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "pools": [asdict(v) for v in self.verdicts]}


def violations(pool: TrainingPool, constraints: PlacementConstraints) -> list[str]:
    """Each constraint ``pool`` breaks, in words."""
    found = []
    if constraints.residency is not None and pool.data_residency != constraints.residency:
        found.append(f"data residency {pool.data_residency}, job needs {constraints.residency}")
    if constraints.accelerator is not None and pool.accelerator != constraints.accelerator:
        found.append(f"accelerator {pool.accelerator}, job needs {constraints.accelerator}")
    if (
        constraints.max_cost_per_hour is not None
        and pool.cost_per_hour > constraints.max_cost_per_hour
    ):
        found.append(
            f"costs {pool.cost_per_hour:g}/h, over the limit of {constraints.max_cost_per_hour:g}/h"
        )
    return found


def place(
    pools: Sequence[TrainingPool],
    constraints: PlacementConstraints,
    health: Mapping[str, PoolHealth],
) -> PlacementDecision:
    """The cheapest healthy pool satisfying ``constraints`` (ties: by name); every pool explained."""
    unknown = PoolHealth(False, "health unknown")
    broken = {p.name: violations(p, constraints) for p in pools}
    ready = sorted(
        (p for p in pools if not broken[p.name] and health.get(p.name, unknown).live),
        key=lambda p: (p.cost_per_hour, p.name),
    )
    chosen = ready[0] if ready else None
    verdicts = []
    for p in pools:
        state = health.get(p.name, unknown)
        if broken[p.name]:
            reason = "; ".join(broken[p.name])
        elif not state.live:
            reason = state.reason or "not live"
        elif chosen is not None and p.name == chosen.name:
            reason = f"cheapest healthy pool that fits ({p.cost_per_hour:g}/h)"
        else:
            assert chosen is not None
            reason = (
                f"fallback: costs {p.cost_per_hour:g}/h, {chosen.name} {chosen.cost_per_hour:g}/h"
            )
        verdicts.append(
            PoolVerdict(
                pool=p.name,
                provider=p.provider,
                region=p.region,
                cost_per_hour=p.cost_per_hour,
                eligible=not broken[p.name],
                healthy=state.live,
                chosen=chosen is not None and p.name == chosen.name,
                reason=reason,
            )
        )
    return PlacementDecision(chosen.name if chosen else None, verdicts)


class RunState(StrEnum):
    PENDING = "pending"  # scheduled or running
    COMPLETED = "completed"
    FAILED = "failed"  # the flow's own code raised: retrying elsewhere fails the same way
    CRASHED = "crashed"  # infrastructure: the process died, the run was cancelled, ...


class PoolBackend(Protocol):
    """Where runs go: a work-pool scheduler (Prefect in production, a fake in unit tests)."""

    def health(self, pools: Sequence[str]) -> dict[str, PoolHealth]: ...
    def submit(self, pool: str) -> str: ...
    def state(self, run_id: str) -> tuple[RunState, str]: ...
    def cancel(self, run_id: str, reason: str, *, worker_alive: bool) -> None: ...


@dataclass(frozen=True)
class Attempt:
    pool: str
    run_id: str
    outcome: str  # completed | failed | failed over
    reason: str
    seconds: float


@dataclass
class Placement:
    """Everything a placed job went through: each decision and each attempt."""

    decisions: list[PlacementDecision] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def pool(self) -> str | None:
        done = [a for a in self.attempts if a.outcome == "completed"]
        return done[-1].pool if done else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "decisions": [d.as_dict() for d in self.decisions],
            "attempts": [asdict(a) for a in self.attempts],
        }


def _follow(
    backend: PoolBackend,
    pool: str,
    constraints: PlacementConstraints,
    poll_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Attempt:
    started = clock()
    run_id = backend.submit(pool)
    while True:
        state, message = backend.state(run_id)
        elapsed = clock() - started
        if state is RunState.COMPLETED:
            return Attempt(pool, run_id, "completed", message or "completed", elapsed)
        if state is RunState.FAILED:
            return Attempt(pool, run_id, "failed", f"the run failed: {message}", elapsed)
        if state is RunState.CRASHED:
            return Attempt(pool, run_id, "failed over", f"the run crashed: {message}", elapsed)
        if elapsed > constraints.deadline_s:
            reason = f"the run passed its deadline of {constraints.deadline_s:g} s"
            backend.cancel(run_id, reason, worker_alive=True)
            return Attempt(pool, run_id, "failed over", reason, elapsed)
        health = backend.health([pool]).get(pool, PoolHealth(False, "health unknown"))
        if not health.live:
            reason = f"lost its worker during the run ({health.reason})"
            backend.cancel(run_id, reason, worker_alive=False)
            return Attempt(pool, run_id, "failed over", reason, elapsed)
        sleep(poll_s)


def run_placed(
    backend: PoolBackend,
    pools: Sequence[TrainingPool],
    constraints: PlacementConstraints,
    *,
    poll_s: float,
    record: Placement | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Placement:
    """Place, submit, follow; on a lost worker, crash or deadline place again without that pool.

    Raises PlacementError naming every pool and why when no pool is left, or when the run failed;
    ``record`` (filled in as it goes) then still holds every decision and attempt.
    """
    record = record if record is not None else Placement()
    lost: dict[str, str] = {}
    while True:
        health = backend.health([p.name for p in pools])
        health.update({name: PoolHealth(False, why) for name, why in lost.items()})
        decision = place(pools, constraints, health)
        record.decisions.append(decision)
        if decision.chosen is None:
            raise PlacementError(
                f"no training pool can take the job: {decision.explain()}",
                hint="start a worker on one of these pools or relax placement.constraints",
            )
        attempt = _follow(backend, decision.chosen, constraints, poll_s, clock, sleep)
        record.attempts.append(attempt)
        if attempt.outcome == "completed":
            return record
        if attempt.outcome == "failed":
            raise PlacementError(
                f"training on pool {attempt.pool} failed: {attempt.reason}",
                hint=f"see flow run {attempt.run_id} in Prefect",
            )
        lost[attempt.pool] = f"attempt failed over: {attempt.reason}"
