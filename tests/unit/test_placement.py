"""The placement policy (a pure function) and the failover driver over a fake pool backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop.core.errors import ConfigError
from edgeloop.core.params import Params, load_params
from edgeloop.core.placement_params import PlacementConstraints, PlacementParams, TrainingPool
from flows.placement import (
    PlacementError,
    PoolHealth,
    RunState,
    place,
    run_placed,
    violations,
)

LIVE = PoolHealth(True, "a worker is alive")


def pool(name: str, cost: float, residency: str = "eu", accelerator: str = "none") -> TrainingPool:
    return TrainingPool(
        name=name,
        provider=name.split("-")[0],
        region="r1",
        cost_per_hour=cost,
        data_residency=residency,
        accelerator=accelerator,
    )


POOLS = [pool("gcp-eu", 0.45), pool("aws-eu", 0.40), pool("azure-us", 0.10, residency="us")]


def test_cheapest_healthy_pool_wins_and_every_pool_is_explained() -> None:
    decision = place(
        POOLS,
        PlacementConstraints(residency="eu"),
        dict.fromkeys(("gcp-eu", "aws-eu", "azure-us"), LIVE),
    )
    assert decision.chosen == "aws-eu"
    why = {v.pool: v.reason for v in decision.verdicts}
    assert why["aws-eu"] == "cheapest healthy pool that fits (0.4/h)"
    assert why["gcp-eu"].startswith("fallback: costs 0.45/h")
    assert why["azure-us"] == "data residency us, job needs eu"


def test_residency_accelerator_and_cost_constraints_each_exclude_with_a_reason() -> None:
    pools = [
        pool("a", 0.1, residency="us"),
        pool("b", 0.2),
        pool("c", 3.0, accelerator="t4"),
        pool("d", 5.0, accelerator="t4"),
    ]
    constraints = PlacementConstraints(residency="eu", accelerator="t4", max_cost_per_hour=4.0)
    decision = place(pools, constraints, dict.fromkeys("abcd", LIVE))
    assert decision.chosen == "c"
    why = {v.pool: v.reason for v in decision.verdicts}
    assert (
        "data residency us, job needs eu" in why["a"]
        and "accelerator none, job needs t4" in why["a"]
    )
    assert why["b"] == "accelerator none, job needs t4"
    assert why["d"] == "costs 5/h, over the limit of 4/h"


def test_an_unhealthy_pool_is_skipped_with_its_reason_and_the_next_cheapest_wins() -> None:
    health = {
        "aws-eu": PoolHealth(False, "no live worker (last heartbeat 95 s ago)"),
        "gcp-eu": LIVE,
    }
    decision = place(POOLS, PlacementConstraints(residency="eu"), health)
    assert decision.chosen == "gcp-eu"
    skipped = next(v for v in decision.verdicts if v.pool == "aws-eu")
    assert not skipped.healthy and skipped.eligible
    assert skipped.reason == "no live worker (last heartbeat 95 s ago)"
    missing = next(v for v in decision.verdicts if v.pool == "azure-us")
    assert not missing.healthy


def test_all_pools_down_gives_no_choice_and_explains_each() -> None:
    decision = place(POOLS[:2], PlacementConstraints(), {})
    assert decision.chosen is None
    assert decision.explain() == "gcp-eu: health unknown; aws-eu: health unknown"


health_st = st.builds(PoolHealth, st.booleans(), st.just("down"))
pool_st = st.builds(
    TrainingPool,
    name=st.sampled_from([f"p{i}" for i in range(8)]),
    provider=st.just("x"),
    region=st.just("r"),
    cost_per_hour=st.floats(0, 10, allow_nan=False),
    data_residency=st.sampled_from(["eu", "us"]),
    accelerator=st.sampled_from(["none", "t4"]),
)
constraints_st = st.builds(
    PlacementConstraints,
    residency=st.one_of(st.none(), st.sampled_from(["eu", "us"])),
    accelerator=st.one_of(st.none(), st.sampled_from(["none", "t4"])),
    max_cost_per_hour=st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
)


@given(
    st.lists(pool_st, max_size=8, unique_by=lambda p: p.name),
    constraints_st,
    st.dictionaries(st.sampled_from([f"p{i}" for i in range(8)]), health_st),
)
def test_chosen_pool_fits_and_no_cheaper_eligible_healthy_pool_exists(
    pools: list[TrainingPool], constraints: PlacementConstraints, health: dict[str, PoolHealth]
) -> None:
    decision = place(pools, constraints, health)
    ok = [
        p
        for p in pools
        if not violations(p, constraints) and health.get(p.name, PoolHealth(False)).live
    ]
    assert len(decision.verdicts) == len(pools)
    if decision.chosen is None:
        assert not ok
        return
    chosen = next(p for p in pools if p.name == decision.chosen)
    assert chosen in ok
    assert not violations(chosen, constraints)
    assert all(p.cost_per_hour >= chosen.cost_per_hour for p in ok)
    assert [v.pool for v in decision.verdicts if v.chosen] == [chosen.name]


@dataclass
class FakeBackend:
    """Pools with scripted health and runs: each submitted run plays its pool's script of states."""

    health_of: dict[str, list[PoolHealth]]
    scripts: dict[str, list[tuple[RunState, str]]]
    submitted: list[str] = field(default_factory=list)
    cancelled: list[tuple[str, str, bool]] = field(default_factory=list)

    def health(self, pools: list[str]) -> dict[str, PoolHealth]:
        out = {}
        for name in pools:
            states = self.health_of[name]
            out[name] = states.pop(0) if len(states) > 1 else states[0]
        return out

    def submit(self, pool: str) -> str:
        self.submitted.append(pool)
        return f"run-{pool}"

    def state(self, run_id: str) -> tuple[RunState, str]:
        script = self.scripts[run_id.removeprefix("run-")]
        return script.pop(0) if len(script) > 1 else script[0]

    def cancel(self, run_id: str, reason: str, *, worker_alive: bool) -> None:
        self.cancelled.append((run_id, reason, worker_alive))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


EU = [pool("aws-eu", 0.40), pool("gcp-eu", 0.45)]
PENDING = (RunState.PENDING, "Running")


def drive(backend: FakeBackend, deadline_s: float = 100) -> tuple[object, Clock]:
    clock = Clock()
    record = run_placed(
        backend,
        EU,
        PlacementConstraints(deadline_s=deadline_s),
        poll_s=1,
        clock=clock,
        sleep=clock.sleep,
    )
    return record, clock


def test_a_worker_lost_mid_run_fails_over_to_the_next_pool() -> None:
    backend = FakeBackend(
        health_of={
            "aws-eu": [LIVE, LIVE, LIVE, PoolHealth(False, "no live worker")],
            "gcp-eu": [LIVE],
        },
        scripts={"aws-eu": [PENDING], "gcp-eu": [PENDING, (RunState.COMPLETED, "Completed")]},
    )
    record, _ = drive(backend)
    assert backend.submitted == ["aws-eu", "gcp-eu"]
    assert backend.cancelled == [
        ("run-aws-eu", "lost its worker during the run (no live worker)", False)
    ]
    assert record.pool == "gcp-eu"  # type: ignore[attr-defined]
    second = record.decisions[1]  # type: ignore[attr-defined]
    assert second.chosen == "gcp-eu"
    assert "lost its worker" in next(v.reason for v in second.verdicts if v.pool == "aws-eu")


def test_a_crashed_run_fails_over() -> None:
    backend = FakeBackend(
        health_of={"aws-eu": [LIVE], "gcp-eu": [LIVE]},
        scripts={
            "aws-eu": [PENDING, (RunState.CRASHED, "process exited -9")],
            "gcp-eu": [(RunState.COMPLETED, "ok")],
        },
    )
    record, _ = drive(backend)
    assert [a.outcome for a in record.attempts] == ["failed over", "completed"]  # type: ignore[attr-defined]
    assert record.attempts[0].reason == "the run crashed: process exited -9"  # type: ignore[attr-defined]
    assert backend.cancelled == []


def test_a_late_run_is_cancelled_at_its_deadline_and_fails_over() -> None:
    backend = FakeBackend(
        health_of={"aws-eu": [LIVE], "gcp-eu": [LIVE]},
        scripts={"aws-eu": [PENDING], "gcp-eu": [(RunState.COMPLETED, "ok")]},
    )
    record, clock = drive(backend, deadline_s=30)
    assert backend.cancelled == [("run-aws-eu", "the run passed its deadline of 30 s", True)]
    assert record.pool == "gcp-eu"  # type: ignore[attr-defined]
    assert 30 < clock.now < 35


def test_a_failed_run_is_not_retried_elsewhere() -> None:
    backend = FakeBackend(
        health_of={"aws-eu": [LIVE], "gcp-eu": [LIVE]},
        scripts={
            "aws-eu": [(RunState.FAILED, "data checks failed")],
            "gcp-eu": [(RunState.COMPLETED, "ok")],
        },
    )
    with pytest.raises(
        PlacementError, match="training on pool aws-eu failed: the run failed: data checks failed"
    ):
        drive(backend)
    assert backend.submitted == ["aws-eu"]


def test_every_pool_down_raises_naming_each_pool_and_submits_nothing() -> None:
    backend = FakeBackend(
        health_of={
            "aws-eu": [PoolHealth(False, "no live worker")],
            "gcp-eu": [PoolHealth(False, "work pool is paused")],
        },
        scripts={},
    )
    with pytest.raises(PlacementError) as caught:
        drive(backend)
    assert str(caught.value) == (
        "no training pool can take the job: aws-eu: no live worker; gcp-eu: work pool is paused "
        "(start a worker on one of these pools or relax placement.constraints)"
    )
    assert backend.submitted == []


def test_failing_over_from_every_pool_ends_with_each_reason() -> None:
    backend = FakeBackend(
        health_of={"aws-eu": [LIVE], "gcp-eu": [LIVE]},
        scripts={
            "aws-eu": [(RunState.CRASHED, "oom")],
            "gcp-eu": [(RunState.CRASHED, "preempted")],
        },
    )
    with pytest.raises(PlacementError) as caught:
        drive(backend)
    message = str(caught.value)
    assert "aws-eu: attempt failed over: the run crashed: oom" in message
    assert "gcp-eu: attempt failed over: the run crashed: preempted" in message


def test_default_params_hold_two_eu_process_pools() -> None:
    pools = Params().placement.pools
    assert [(p.name, p.data_residency) for p in pools] == [
        ("train-aws-eu", "eu"),
        ("train-gcp-eu", "eu"),
    ]


def test_duplicate_pool_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        PlacementParams(pools=[pool("a", 1), pool("a", 2)])


def test_an_invalid_placement_section_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        "placement:\n  pools:\n    - {name: a, provider: aws, region: r, cost_per_hour: -1, data_residency: eu}\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"placement\.pools\.0\.cost_per_hour: Input should be greater than or equal to 0",
    ):
        load_params(path)


def test_place_without_a_prefect_server_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edgeloop.cli import app

    (tmp_path / "params.yaml").write_text("model_name: m\n")
    monkeypatch.chdir(tmp_path)
    for name in ("PREFECT_API_URL", "EDGELOOP_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["place", "--dry-run"])
    assert result.exit_code == 1
    assert "training placement needs a Prefect server" in result.output
    assert "PREFECT_API_URL" in result.output
