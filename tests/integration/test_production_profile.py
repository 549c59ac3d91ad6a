"""The production profile: `edgeloop run` against a real `mlflow server` on PostgreSQL.

The server is started the way an operator starts it (backend store on PostgreSQL, served artifacts),
in its own database that the test creates and drops.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
PG = os.environ.get("EDGELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_db() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"edgeloop_mlflow_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG} is not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def mlflow_server(postgres_db: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", postgres_db,
            "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy in 120 s")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
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
