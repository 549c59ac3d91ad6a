"""Training placement against a real `prefect server` with two process work pools and their workers.

The two pools stand for two providers. The cheaper one's worker is killed (SIGKILL of its process
group) while it trains; the placement flow notices the lost worker, cancels the run and fails over
to the other pool, and the registry ends with exactly one version for the job's run key. With no
worker on either pool the placement flow run fails with a reason naming each pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
CHEAP, DEAR = "train-aws-eu", "train-gcp-eu"
FAST = {
    "training": {"epochs": 2},
    "compress": {"prune_finetune_epochs": 1, "warmup_runs": 5, "latency_runs": 20},
    "gates": {"profiles": ["host-cpu"], "min_test_accuracy": 0.5},
}


def placement(deadline_s: float = 600) -> dict[str, Any]:
    def pool(name: str, provider: str, cost: float) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "region": "eu-test",
            "cost_per_hour": cost,
            "data_residency": "eu",
            "accelerator": "none",
        }

    return {
        "pools": [pool(DEAR, "gcp", 0.45), pool(CHEAP, "aws", 0.40)],
        "constraints": {"residency": "eu", "deadline_s": deadline_s},
        "poll_s": 1,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def prefect_api(request: pytest.FixtureRequest) -> str:
    """The session's `prefect server start` on SQLite, or on PostgreSQL when it runs."""
    return str(request.getfixturevalue(f"prefect_{request.param}"))


def start_worker(project: Project, api: str, pool: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **project.env(),
        "PREFECT_API_URL": api,
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            cwd=project.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def online(api: str, pool: str) -> bool:
    """Whether ``pool`` has a worker the server counts as online (no pool yet: no)."""
    response = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=10)
    if response.status_code == 404:  # the worker creates its pool when it starts
        return False
    response.raise_for_status()
    return any(worker["status"] == "ONLINE" for worker in response.json())


def flow_runs(api: str, flow_name: str) -> list[dict[str, Any]]:
    return post(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})  # type: ignore[no-any-return]


def kill_flow_run_processes(run_ids: set[str]) -> None:
    """A run's process has a process group of its own: stop any that outlived its worker."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") in run_ids:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


@pytest.mark.parametrize("prefect_api", ["sqlite"], indirect=True)  # database-independent: once
def test_every_pool_down_fails_the_flow_run_naming_each_pool(
    project: Project, prefect_api: str
) -> None:
    project.set_params(placement=placement(), **FAST)
    project.extra_env["PREFECT_API_URL"] = prefect_api
    trained_before = {r["id"] for r in flow_runs(prefect_api, "placed-training")}
    placed_before = {r["id"] for r in flow_runs(prefect_api, "placed-retrain")}
    result = project.edgeloop("place", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: no training pool can take the job:"), line
    assert f"{CHEAP}: no live worker" in line and f"{DEAR}: no live worker" in line
    assert project.version_count() == 0
    runs = [r for r in flow_runs(prefect_api, "placed-retrain") if r["id"] not in placed_before]
    failed = [r for r in runs if r["state_type"] == "FAILED"]
    assert failed, runs
    assert CHEAP in failed[-1]["state"]["message"], failed[-1]["state"]
    assert {r["id"] for r in flow_runs(prefect_api, "placed-training")} == trained_before


@contextmanager
def workers_on_both_pools(
    project: Project, api: str, logs: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A process worker per pool, live (as `edgeloop place --dry-run` sees it) before yielding."""
    workers = {
        pool: start_worker(project, api, pool, logs / f"{pool}.log") for pool in (CHEAP, DEAR)
    }
    try:
        wait_for(
            "a live worker on each pool",
            lambda: all(online(api, pool) for pool in (CHEAP, DEAR)),
            timeout=120,
        )
        dry = wait_for(
            "both pools live to `edgeloop place`",
            lambda: (
                (r := project.edgeloop("place", "--dry-run", timeout=120)).returncode == 0
                and r.stdout.count("fallback") == 1
                and r
            ),
            timeout=60,
        )
        assert "chosen" in dry.stdout and "cheapest healthy pool" in dry.stdout, dry.stdout
        yield workers
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_flow_run_processes({r["id"] for r in flow_runs(api, "placed-training")})


def test_killing_the_chosen_pools_worker_fails_over_with_one_version(
    project: Project, prefect_api: str, tmp_path: Path
) -> None:
    project.set_params(placement=placement(), **FAST)
    project.extra_env["PREFECT_API_URL"] = prefect_api
    with workers_on_both_pools(project, prefect_api, tmp_path) as workers:
        driver_log = tmp_path / "place.log"
        with driver_log.open("w") as out:
            driver = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.cli", "place"], cwd=project.root, env=project.env(),
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        wait_for(
            f"a training run on {CHEAP}",
            lambda: [
                r
                for r in flow_runs(prefect_api, "placed-training")
                if r["work_pool_name"] == CHEAP and r["state_type"] == "RUNNING"
            ],
            timeout=240,
        )
        time.sleep(3)  # mid-run: the loop is importing and training
        os.killpg(workers[CHEAP].pid, signal.SIGKILL)
        workers[CHEAP].wait()
        driver.wait(timeout=900)
        output = driver_log.read_text()
        assert driver.returncode == 0, output + (tmp_path / f"{DEAR}.log").read_text()[-3000:]
        # The killed worker's run either dies with it (crashed) or is orphaned (worker lost).
        assert "the run crashed" in output or "lost its worker" in output, output
        assert f"trained on pool {DEAR}" in output, output

    client = project.client()
    versions = client.search_model_versions("name = 'digits-classifier'")
    assert len(versions) == 1, [(v.version, v.tags.get("edgeloop.run_key")) for v in versions]
    key = versions[0].tags["edgeloop.run_key"]
    placed = client.search_runs(
        [client.get_experiment_by_name("digits-classifier").experiment_id],
        filter_string="tags.`edgeloop.source` = 'placement'",
    )
    assert len(placed) == 1
    tags = placed[0].data.tags
    assert tags["edgeloop.run_key"] == key
    assert (
        tags["edgeloop.placement.pool"] == DEAR and tags["edgeloop.placement.status"] == "completed"
    )
    decision = json.loads(
        Path(
            client.download_artifacts(
                placed[0].info.run_id, "placement/decision.json", str(tmp_path)
            )
        ).read_text()
    )
    assert [a["pool"] for a in decision["attempts"]] == [CHEAP, DEAR]
    assert decision["attempts"][0]["outcome"] == "failed over"
    assert (
        decision["decisions"][0]["chosen"] == CHEAP and decision["decisions"][1]["chosen"] == DEAR
    )


@pytest.mark.parametrize("prefect_api", ["sqlite"], indirect=True)  # database-independent: once
def test_runs_past_their_deadline_are_cancelled_on_each_pool_and_nothing_registers(
    project: Project, prefect_api: str, tmp_path: Path
) -> None:
    project.set_params(placement=placement(deadline_s=6), **FAST)
    project.extra_env["PREFECT_API_URL"] = prefect_api
    before = {r["id"] for r in flow_runs(prefect_api, "placed-training")}
    with workers_on_both_pools(project, prefect_api, tmp_path):
        result = project.edgeloop("place", timeout=300)
        late = [r for r in flow_runs(prefect_api, "placed-training") if r["id"] not in before]
        assert [r["work_pool_name"] for r in sorted(late, key=lambda r: r["created"])] == [
            CHEAP,
            DEAR,
        ]
        # Each late run was cancelled: its live worker stops it and reports Cancelled.
        wait_for(
            "both late runs cancelled",
            lambda: all(
                r["state_type"] == "CANCELLED"
                for r in flow_runs(prefect_api, "placed-training")
                if r["id"] not in before
            ),
            timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: no training pool can take the job:"), line
    for pool in (CHEAP, DEAR):
        assert f"{pool}: attempt failed over: the run passed its deadline of 6 s" in line, line
    assert project.version_count() == 0
