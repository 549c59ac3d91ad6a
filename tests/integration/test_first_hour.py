"""The README's first hour, through the CLI only: after `edgeloop fleet demo`, `edgeloop rollout
status`, `edgeloop models` and `edgeloop fleet token create` find the demo's controller and token
themselves; one real `edgeloop agent` started with the printed address and token enrols and takes
production; `edgeloop promote` rolls another version out to it and follows it to the end. No address,
port or token is typed that a command did not print."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fleet.shared.ports import free_port
from fleet.simulate.fleet import load_field

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

Project = Any  # tests/integration/conftest.py: Project
MODEL = "digits-classifier"
FAST = {
    "stages": [
        {"fraction": f, "bake_s": 1, "deadline_s": 60, "min_inferences": 10} for f in (0.5, 1.0)
    ],
    "gates": {
        "max_error_rate": 0.05,
        "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 20},
        "agreement": {"max_disagreement": 0.1, "alpha": 0.05, "min_samples": 20},
    },
    "shadow": {"rate": 0.5, "cpu_budget": 1.0},
    "poll_s": 0.5,
    "deadline_s": 240,
}  # fmt: skip
"""The default policy's shape with seconds instead of minutes, for one device."""


def traffic(port: int, rows: np.ndarray, stop: threading.Event) -> None:
    """An application on the device: 20 rows at a time on its /predict."""
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=5) as client:
        while not stop.wait(0.2):
            body = io.BytesIO()
            np.save(body, rows[rng.integers(0, len(rows), 20)].astype(np.float32))
            try:
                client.post(
                    f"http://127.0.0.1:{port}/predict",
                    content=body.getvalue(),
                    headers={"Content-Type": "application/x-npy"},
                )
            except httpx.HTTPError:
                continue


def serving(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json().get("version")
    except (httpx.HTTPError, ValueError):
        return None


def test_the_first_hour_through_the_cli(registered: Project, tmp_path: Path) -> None:
    project = registered
    shutil.copy(REPO / "playbooks.yaml", project.root / "playbooks.yaml")
    demo = project.edgeloop("fleet", "demo", timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "were retired" in demo.stdout
    agent: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    try:
        status = project.edgeloop("rollout", "status")
        assert status.returncode == 0, status.stderr
        assert "rolled_back" in status.stdout and "succeeded" in status.stdout
        models = project.edgeloop("models")
        assert models.returncode == 0 and "rolled_back" in models.stdout, models.stderr
        client = project.client()
        production = str(client.get_registered_model(MODEL).aliases["production"])

        made = project.edgeloop("fleet", "token", "create", "--uses", "1")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        url = re.search(r"EDGELOOP_AGENT_CONTROLLER_URL=(\S+)", made.stderr)
        assert url is not None, made.stderr
        port = free_port()
        env = {
            **project.env(),
            "EDGELOOP_AGENT_CONTROLLER_URL": url.group(1),
            "EDGELOOP_AGENT_ENROLMENT_TOKEN": token,
            "EDGELOOP_AGENT_STATE_DIR": str(tmp_path / "my-device"),
            "EDGELOOP_AGENT_PREDICT_PORT": str(port),
            "EDGELOOP_AGENT_LONG_POLL_S": "1",
        }
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.cli", "agent"],
                cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while serving(port) != production and time.monotonic() < deadline:
            time.sleep(0.5)
        assert serving(port) == production, (tmp_path / "agent.log").read_text()[-3000:]
        rows, _ = load_field(project.root / "data" / "splits" / "field.parquet")
        threading.Thread(target=traffic, args=(port, rows, stop), daemon=True).start()

        project.set_params(rollout=FAST)
        promoted = project.edgeloop("promote", MODEL, "1")
        assert promoted.returncode == 0, promoted.stdout[-3000:] + promoted.stderr[-3000:]
        assert "succeeded" in promoted.stdout and "agreement" in promoted.stdout
        assert serving(port) == "1"
        assert str(client.get_registered_model(MODEL).aliases["production"]) == "1"
        # The admin token never became a flow-run parameter, which the Prefect API stores and shows
        admin_token = (project.home / "fleet-demo" / "admin-token").read_text().strip()
        runs = httpx.post(
            f"{project.extra_env['PREFECT_API_URL']}/flow_runs/filter",
            json={"flow_runs": {"name": {"like_": ""}}, "limit": 200, "sort": "START_TIME_DESC"},
            timeout=30,
        ).json()
        rollouts = [r for r in runs if "stable_version" in r["parameters"]]
        assert rollouts and all(admin_token not in json.dumps(r["parameters"]) for r in rollouts)
    finally:
        stop.set()
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        project.edgeloop("fleet", "demo", "--stop")
