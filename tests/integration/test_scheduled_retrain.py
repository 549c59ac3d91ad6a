"""Scheduled retraining through real servers: `prefect deployment run 'scheduled-retrain/scheduled'` on the
worker `edgeloop serve` starts produces a version; run again with nothing changed, it records a skip
with its reason and trains nothing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from serve_process import Served, edgeloop_serve
from training_params import FAST_PARAMS

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


@pytest.fixture
def project(bare_project: Project) -> Project:
    """`edgeloop serve` starts the servers this test uses: no session server."""
    return bare_project


MODEL = "digits-classifier"


def run_deployment(project: Project, served: Served) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "scheduled-retrain/scheduled",
         "--watch", "--watch-timeout", "600", "--watch-interval", "2"],
        cwd=project.root, env={**project.env(), "PREFECT_API_URL": f"{served.prefect}/api"},
        capture_output=True, text=True, timeout=660,
    )  # fmt: skip


def test_scheduled_run_trains_then_skips_with_the_reason(project: Project) -> None:
    project.set_params(training={"epochs": 3}, **FAST_PARAMS)
    with edgeloop_serve(project) as served:
        project.extra_env["MLFLOW_TRACKING_URI"] = served.mlflow
        first = run_deployment(project, served)
        worker_log = (project.home / "logs" / "worker-edgeloop-ops.log").read_text()[-4000:]
        assert first.returncode == 0, first.stdout + first.stderr + worker_log
        assert "Completed" in first.stdout, first.stdout + worker_log
        client = project.client()
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert [v.version for v in versions] == ["1"]
        tags = versions[0].tags
        assert len(tags["edgeloop.training.hash"]) == 64 and tags["edgeloop.data.hash"]
        result = client.get_registered_model(MODEL).tags["edgeloop.schedule.last_result"]
        assert "retrained: v1" in result

        second = run_deployment(project, served)
        assert second.returncode == 0 and "Completed" in second.stdout, second.stdout
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1  # nothing trained
        result = client.get_registered_model(MODEL).tags["edgeloop.schedule.last_result"]
        assert f"skipped: data and training code unchanged since {MODEL} v1" in result

        project.set_params(training={"epochs": 2})  # a training change: retrain is due again
        third = run_deployment(project, served)
        assert third.returncode == 0 and "Completed" in third.stdout, third.stdout
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
