"""The production profile: `edgeloop run` against a real `mlflow server` on PostgreSQL.

The server is started the way an operator starts it (backend store on PostgreSQL, served artifacts),
in its own database; it is the session's (conftest.py: ``mlflow_postgresql``), so the test registers
a model name of its own.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from training_params import FAST_PARAMS

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


def test_run_registers_on_mlflow_server_backed_by_postgresql(
    project: Project, mlflow_postgresql: str
) -> None:
    mlflow_server = mlflow_postgresql  # the session's server: a model name of this test's own
    model = f"digits-{uuid.uuid4().hex[:8]}"
    project.extra_env["MLFLOW_TRACKING_URI"] = mlflow_server
    project.set_params(model_name=model, training={"epochs": 5}, **FAST_PARAMS)
    result = project.edgeloop("run")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((project.home / "last-run.json").read_text())
    assert summary["tracking_uri"] == mlflow_server
    client = project.client()
    version = client.get_model_version_by_alias(model, "candidate")
    assert version.tags["edgeloop.hw.host-cpu.status"] == "passed"
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "variants")}
    assert "variants/int8-static.onnx" in artifacts and "variants/manifest.json" in artifacts
    assert not (project.home / "mlflow.db").exists()
    listed = project.edgeloop("models", "--name", model)
    assert listed.returncode == 0 and model in listed.stdout and "candidate" in listed.stdout
