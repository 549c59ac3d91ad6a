"""Promotion from the MLflow UI with `edgeloop serve` running: setting alias ``production`` through
MLflow's REST API (the call the UI makes) starts a rollout, through the webhook, the listener, the
rollout deployment and the ops worker. The first release becomes the fleet's baseline; the next one
is a staged rollout that reaches phase ``progressing`` on the controller. Both versions are the
session's trained network brought in with `edgeloop register` (through the same gates), so no test
here trains."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from serve_process import Served, backend_args, edgeloop_serve

from fleet.admin import AdminClient
from fleet.simulate import Simulation
from fleet.simulate.fleet import load_field

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


@pytest.fixture
def project(registered: Project) -> Project:
    """A copy of the session's trained project (its splits, variants and signing key); `edgeloop
    serve` starts the servers this test uses: no session server."""
    registered.extra_env.pop("PREFECT_API_URL", None)
    return registered


MODEL = "digits-classifier"


def set_production_like_the_ui(served: Served, version: str) -> float:
    """POST /api/2.0/mlflow/registered-models/alias, as the MLflow UI does; returns the time."""
    response = httpx.post(
        f"{served.mlflow}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "production", "version": version},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return time.monotonic()


def wait_for(check: Any, timeout: float, what: str, served: Served, project: Project) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    logs = project.home / "logs"
    raise AssertionError(
        f"{what} within {timeout} s\nlistener: "
        + (logs / "promotion-listener.log").read_text()[-2000:]
        + "\nworker: "
        + (logs / "worker-edgeloop-ops.log").read_text()[-3000:]
    )


@contextmanager
def devices(project: Project, url: str, token: str) -> Iterator[None]:
    """Six simulated devices on the served controller, in a thread until exit."""
    x, y = load_field(project.root / "data" / "splits" / "field.parquet")
    stop = threading.Event()
    sim = Simulation(
        url, token, devices=6, classes={"host-cpu": 0.5, "edge-small": 0.5},
        field_x=x, field_y=y, feedback_rate=0.5, report_interval_s=0.5, seed=1,
        poll_wait_s=2.0,  # a change answers a poll at once; a stopping controller waits them out
    )  # fmt: skip
    thread = threading.Thread(target=lambda: sim.run_sync(until=stop.is_set), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        sim.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    yield from backend_args(request)


def test_alias_set_through_the_mlflow_api_starts_a_rollout(
    project: Project, backend: list[str]
) -> None:
    with edgeloop_serve(project, "--allow-loopback-webhooks", *backend) as served:
        servers = {"MLFLOW_TRACKING_URI": served.mlflow, "PREFECT_API_URL": f"{served.prefect}/api"}
        project.extra_env.update(servers)
        first = register_fp32(project)
        assert first.returncode == 0, first.stdout + first.stderr
        client = project.client()
        token = (project.home / "secrets" / "fleet-admin-token").read_text().strip()
        with devices(project, served.controller, token):
            promote_twice(project, served, client, token)


def register_fp32(project: Project) -> Any:
    """`edgeloop register` of the trained fp32 variant: the next version, a candidate."""
    fp32 = project.home / "work" / "variants" / "fp32.onnx"
    return project.edgeloop("register", str(fp32), "--name", MODEL, "--dataset", "sklearn-digits")


def promote_twice(project: Project, served: Served, client: Any, token: str) -> None:
    """v1 by alias: the first release (baseline); v2 by alias: a staged rollout from v1."""
    set_production_like_the_ui(served, "1")
    tags = wait_for(
        lambda: (t := client.get_model_version(MODEL, "1").tags).get("edgeloop.rollout.reason")
        and t,  # the outcome writes status, then reason: wait for the last of them
        120, "the first release was not rolled out", served, project,
    )  # fmt: skip
    assert tags["edgeloop.rollout.status"] == "succeeded"
    assert "first release" in tags["edgeloop.rollout.reason"]

    second = register_fp32(project)
    assert second.returncode == 0, second.stdout + second.stderr
    admin = AdminClient(served.controller, token)
    try:
        set_production_like_the_ui(served, "2")
        rollout = wait_for(
            lambda: next((r for r in admin.rollouts() if r.version == "2"), None),
            120, "no rollout of v2 was created", served, project,
        )  # fmt: skip
        assert rollout.stable_version == "1"
        wait_for(
            lambda: admin.rollout(rollout.rollout_id).phase == "progressing",
            30, "the rollout of v2 did not reach progressing", served, project,
        )  # fmt: skip
    finally:
        admin.close()
