"""The production profile: `edgeloop run` against a real `mlflow server` on PostgreSQL.

The server is started the way an operator starts it (backend store on PostgreSQL, served artifacts),
in its own database that the test creates and drops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, stop_group, wait_healthy

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


@pytest.fixture
def mlflow_server(postgres_db: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", postgres_db.replace("postgresql://", "postgresql+psycopg://"),
            "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{url}/health", tmp_path / "mlflow-server.log")
        yield url
    finally:
        stop_group(proc)
        log.close()


def test_run_registers_on_mlflow_server_backed_by_postgresql(
    project: Project, mlflow_server: str
) -> None:
    project.extra_env["MLFLOW_TRACKING_URI"] = mlflow_server
    project.set_params(training={"epochs": 5})
    result = project.edgeloop("run")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((project.home / "last-run.json").read_text())
    assert summary["tracking_uri"] == mlflow_server
    client = project.client()
    version = client.get_model_version_by_alias("digits-classifier", "candidate")
    assert version.tags["edgeloop.hw.host-cpu.status"] == "passed"
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "variants")}
    assert "variants/int8-static.onnx" in artifacts and "variants/manifest.json" in artifacts
    assert not (project.home / "mlflow.db").exists()
    listed = project.edgeloop("models")
    assert listed.returncode == 0 and "candidate" in listed.stdout
