"""Promotion to a fleet, end to end: registry → rollout flow → real controller → simulated devices.

v1 trained by `edgeloop run` (the session's run, copied: ``registered``), v2 the same network brought
in with `edgeloop register` (through the same gates), and one regressed v3 brought in the same way.
`edgeloop promote` makes v1 the fleet's baseline, rolls v2 out through staged canaries (it succeeds),
then rolls out the regressed v3 (forced past its failed gates by the documented tag): the accuracy gate
fails, every device goes back to v2, and the registry follows (production back on v2, tags, card).
Last, a promotion to a controller with no device enrolled is refused and leaves nothing behind:
production where it was, the rollout it created aborted.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, stop_group, wait_healthy

from fleet.simulate import Simulation, make_regressed_variant
from fleet.simulate.fleet import load_field

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
ADMIN = "promote-admin-token"
MODEL = "digits-classifier"
FAST_POLICY = {
    "stages": [
        {"fraction": f, "bake_s": 2, "deadline_s": 40, "min_confirmed_fraction": 0.8,
         "min_inferences": 40, "min_feedback": 20}
        for f in (0.5, 1.0)
    ],
    "gates": {"max_error_rate": 0.05, "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 20}},
    "shadow": None,
    "required_gates": ["p95_latency", "error_rate", "accuracy"],  # a labelled fleet, judged on accuracy
    "poll_s": 0.5,
    "deadline_s": 240,
}  # fmt: skip
POLL_WAIT_S = 2.0
"""How long a simulated device's long poll waits (a change answers it at once): the controller's
SIGTERM waits out the polls it holds, 30 s at the devices' default."""


@contextmanager
def controller(project: Project, tmp_path: Path) -> Iterator[str]:
    """`edgeloop fleet serve` as an operator starts it, on SQLite, with the registry's public key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **project.env(),
        "EDGELOOP_FLEET_DB_URL": f"sqlite:///{tmp_path / 'fleet.db'}",
        "EDGELOOP_FLEET_ADMIN_TOKEN": ADMIN,
        "EDGELOOP_FLEET_PUBLIC_KEY_PATH": str(project.home / "keys" / "signing-ed25519.pub.pem"),
        "EDGELOOP_FLEET_RECONCILE_S": "0.5",
    }
    log_path = tmp_path / "controller.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "fleet", "serve", "--port", str(port)],
            cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_healthy(proc, f"{url}/v1/health", log_path, timeout=60)
            yield url
        finally:
            stop_group(proc)


def test_promote_first_release_success_then_automatic_rollback(
    registered: Project, tmp_path: Path
) -> None:
    project = registered
    project.set_params(rollout={**FAST_POLICY, "controller_url": "http://127.0.0.1:1"})
    fp32 = project.home / "work" / "variants" / "fp32.onnx"
    again = tmp_path / "v2.onnx"
    again.write_bytes(fp32.read_bytes())
    result = project.edgeloop(
        "register", str(again), "--name", MODEL, "--dataset", "sklearn-digits"
    )
    assert result.returncode == 0, result.stdout + result.stderr  # v2: a candidate too
    regressed = make_regressed_variant(fp32, tmp_path / "regressed.onnx", "accuracy", share=0.6)
    result = project.edgeloop(
        "register", str(regressed), "--name", MODEL, "--dataset", "sklearn-digits"
    )
    assert result.returncode == 3, result.stdout + result.stderr  # gates failed: not a candidate
    client = project.client()
    client.set_model_version_tag(MODEL, "3", "edgeloop.promote.force", "true")
    refused = project.edgeloop("promote", MODEL, "3", EDGELOOP_FLEET_ADMIN_TOKEN="")
    assert refused.returncode == 1 and "EDGELOOP_FLEET_ADMIN_TOKEN" in refused.stderr

    with controller_and_fleet(project, tmp_path) as url:
        project.set_params(rollout={**FAST_POLICY, "controller_url": url})
        first = project.edgeloop("promote", MODEL, "1", EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "first release" in first.stdout
        second = project.edgeloop("promote", MODEL, "2", EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "p95_latency" in second.stdout  # the live rollout table, as --watch shows it
        assert _aliases(client)["production"] == "2"
        assert client.get_model_version(MODEL, "2").tags["edgeloop.rollout.status"] == "succeeded"
        third = project.edgeloop("promote", MODEL, "3", EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN)
        assert third.returncode == 4, third.stdout + third.stderr
        assert "production is back on v2" in third.stderr
        status = project.edgeloop(
            "rollout", "status", "--url", url, EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN
        )
        assert status.returncode == 0 and "rolled_back" in status.stdout

    tags = client.get_model_version(MODEL, "3").tags
    assert tags["edgeloop.rollout.status"] == "rolled_back"
    assert "accuracy" in tags["edgeloop.rollout.reason"]
    assert _aliases(client)["production"] == "2"
    card = (project.root / "model-cards" / MODEL / "v3.md").read_text()
    assert "## Rollouts" in card and "rolled_back" in card
    listed = project.edgeloop("models", COLUMNS="80")
    assert (
        listed.returncode == 0 and "rolled_back" in listed.stdout and "succeeded" in listed.stdout
    )
    assert "…" not in listed.stdout  # wrapped at 80 columns, never cut

    empty = tmp_path / "empty"
    empty.mkdir()
    with controller(project, empty) as url:  # no device enrolled: the start is refused
        project.set_params(rollout={**FAST_POLICY, "controller_url": url})
        refused = project.edgeloop("promote", MODEL, "1", EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "no enrolled device" in refused.stderr
        assert _aliases(client)["production"] == "2"  # all or nothing: as it was
        status = project.edgeloop(
            "rollout", "status", "--url", url, EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN
        )
        assert status.returncode == 0 and "aborted" in status.stdout, status.stdout


def _aliases(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


@contextmanager
def controller_and_fleet(project: Project, tmp_path: Path) -> Iterator[str]:
    """A real controller process and 20 simulated devices running in a thread until exit."""
    with controller(project, tmp_path) as url:
        x, y = load_field(project.root / "data" / "splits" / "field.parquet")
        stop = threading.Event()
        sim = Simulation(
            url, ADMIN, devices=20, classes={"host-cpu": 0.6, "edge-small": 0.4},
            field_x=x, field_y=y, feedback_rate=0.6, report_interval_s=0.5, seed=1,
            poll_wait_s=POLL_WAIT_S,
        )  # fmt: skip
        thread = threading.Thread(target=lambda: sim.run_sync(until=stop.is_set), daemon=True)
        thread.start()
        try:
            yield url
        finally:
            stop.set()
            thread.join(timeout=30)
            sim.close()
