"""The loop closed unattended, through `edgeloop serve` (real Prefect, MLflow, controller, listener
and ops worker): drift on part of a simulated fleet → the input-drift alert → its playbook's
``open_retrain`` → a scheduled-retrain run that pulls the fleet's labelled field samples (a new DVC
version of ``data/field``), trains with them and registers a version naming the alert and the field
data → auto-promotion → that version's canary on the fleet. After the drift starts the test types
nothing: it only watches.

The project is a git and DVC repository, as a user's is; the first version comes from the same
scheduled-retrain deployment, run once by hand before the fleet exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_process import Served, edgeloop_serve
from servers import wait_until
from test_scheduled_retrain import run_deployment
from training_params import FAST_PARAMS

from fleet.admin import AdminClient
from fleet.simulate import FaultPlan, FaultWindow, Simulation
from fleet.simulate.fleet import load_field
from flows.fleet_demo import DEMO_POLICY, DETECTOR, drift_reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Project = Any  # tests/integration/conftest.py: Project
MODEL = "digits-classifier"
PLAYBOOKS = """\
playbooks:
  - name: input-drift
    trigger: {kind: input_drift, threshold: 0.25}
    actions:
      - {action: open_retrain, deployment: scheduled}
    max_attempts: 3
    backoff_s: 5
"""


@pytest.fixture
def project(bare_project: Project) -> Project:
    """A user's project: git and DVC repositories, fast training, auto-promotion, the demo's stage
    plan, and a playbook that opens a retrain on input drift."""
    root = bare_project.root
    dvc = str(Path(sys.executable).with_name("dvc"))
    for command in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120)
    (root / "data" / "field").mkdir(parents=True)
    (root / "playbooks.yaml").write_text(PLAYBOOKS)
    bare_project.set_params(
        training={"epochs": 3},
        schedule={"auto_promote": True, "enabled": False},
        rollout=DEMO_POLICY,
        **FAST_PARAMS,
    )
    return bare_project


@contextmanager
def drifting_fleet(project: Project, served: Served, token: str) -> Iterator[Simulation]:
    """20 simulated devices with labels on 60% of their predictions (each becomes a field sample);
    30% of them see drifted inputs from the start: brighter, noisier, saturating at the pixels'
    range (the input contract holds; the data checks would refuse values outside it).

    The world they see is the held-out field split with a little noise: new rows, as a fleet's are,
    not copies of the rows the project holds out (those would move from the field split to train)."""
    x, y = load_field(project.root / "data" / "splits" / "field.parquet")
    x = np.clip(x + np.random.default_rng(3).normal(0, 0.3, x.shape), 0, 16).astype(np.float32)
    reference = drift_reference(project.client(), MODEL, "1")
    assert reference is not None, "v1 logged no drift reference"
    sim = Simulation(
        served.controller, token, devices=20, classes={"host-cpu": 0.5, "edge-small": 0.5},
        field_x=x, field_y=y, feedback_rate=0.6, report_interval_s=0.5, rows_per_report=40,
        seed=7, faults=FaultPlan(drift=FaultWindow(0.3, start_s=0.0), drift_shift=2.0, drift_clip=(0, 16)),
        drift_reference=reference,
        detector_policy=DETECTOR,
    )  # fmt: skip
    with sim.in_background():
        yield sim


def test_drift_on_part_of_the_fleet_ends_in_the_canary_of_a_version_trained_on_its_field_data(
    project: Project,
) -> None:
    with edgeloop_serve(project) as served:
        project.extra_env["MLFLOW_TRACKING_URI"] = served.mlflow
        first = run_deployment(project, served)  # v1, auto-promoted: the fleet's first release
        assert first.returncode == 0 and "Completed" in first.stdout, first.stdout
        client = project.client()
        wait_until(
            "v1's first release",
            lambda: client.get_model_version(MODEL, "1").tags.get("edgeloop.rollout.status"),
            timeout=180,
        )
        token = (project.home / "secrets" / "fleet-admin-token").read_text().strip()
        admin = AdminClient(served.controller, token)
        try:
            with drifting_fleet(project, served, token):
                # from here the test types nothing
                wait_until(
                    "an input-drift alert",
                    lambda: any(a.kind == "input_drift" for a in admin.alerts("all")),
                    timeout=300,
                )
                v2 = wait_until(
                    "a version trained for the alert",
                    lambda: next(
                        (v for v in client.search_model_versions(f"name = '{MODEL}'")
                         if v.version != "1"),
                        None,
                    ),
                    timeout=900,
                )  # fmt: skip
                rollout = wait_until(
                    "the canary of v2",
                    lambda: next((r for r in admin.rollouts() if r.version == v2.version), None),
                    timeout=300,
                )
            drift_alerts = {  # v1's drift; v2's canaries may raise their own later
                a.id for a in admin.alerts("all")
                if a.kind == "input_drift" and a.scope.get("version") == "1"
            }  # fmt: skip
            runs = [
                r for r in served.flow_runs("scheduled-retrain")
                if (r.get("parameters", {}).get("alert") or {}).get("id") in drift_alerts
            ]  # fmt: skip
            opened = [
                r for r in admin.playbook_runs()
                if r.action == "open_retrain" and r.alert_id in drift_alerts
            ]  # fmt: skip
            logs = (project.home / "logs" / "worker-edgeloop-ops.log").read_text()[-4000:]
            assert rollout.stable_version == "1" and rollout.model == MODEL, rollout
            tags = client.get_model_version(MODEL, v2.version).tags
            said = json.loads(tags["edgeloop.trigger.alert"])
            assert said["id"] in drift_alerts and said["kind"] == "input_drift", (said, logs)
            assert tags["edgeloop.field_data.version"].startswith("fd-"), tags
            assert "new labelled field sample(s)" in tags["edgeloop.field_data.pulled"], tags
            # one retrain for the drift: an alert per hardware class, the later ones attached
            assert len(runs) == 1, runs
            started = [r for r in opened if r.result.startswith("flow run ")]
            assert [r.alert_id for r in started] == [said["id"]], opened
            assert all(
                r.result.startswith("attached to flow run") for r in opened if r not in started
            ), opened
        finally:
            admin.close()
    pulled = sorted((project.root / "data" / "field").glob("field-*.csv.dvc"))
    assert pulled, "no DVC-tracked field data in the project"
    card = (project.root / "model-cards" / MODEL / f"v{v2.version}.md").read_text()
    assert "edgeloop.trigger.alert" in card and tags["edgeloop.field_data.version"] in card
