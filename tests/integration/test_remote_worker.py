"""A hardware runner that has nothing of the build host's disk: no checkout, no suite, no profile.

The worker (`edgeloop runner start --profile P`, as a device starts it) runs with its working
directory in a fresh empty folder and an environment that names no path of this checkout: only
PREFECT_API_URL. Its interpreter is this test's virtualenv, standing in for a device's
`pip install 'edgeloop[runner]'`: the training stack, which that extra leaves out, cannot be imported
by the worker or the flow runs it starts. The deployment names the runner flow by module path (no pull
step), the variant, golden set and suite bundle come from the MLflow server the build host logged
them to, and the pool profile's gate still passes.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from servers import stop_group
from tolerant_profiles import load_tolerant_profiles
from training_params import FAST_PARAMS

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
REPO = Path(__file__).resolve().parents[2]


# Not in the runner extra: the worker and every flow run it starts fail to import any of these, as
# on a device that installed `edgeloop[runner]` (a sitecustomize on the device's PYTHONPATH).
TRAINING_STACK = (
    "torch", "dvc", "dvc_data", "sklearn", "pandas", "matplotlib", "great_expectations", "onnx",
    "onnxscript", "boto3", "docker",
)  # fmt: skip
BLOCKER = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {TRAINING_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in edgeloop[runner])", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def device_env(project: Project, prefect_api: str, device: Path) -> dict[str, str]:
    """What a device sets: the Prefect API and a home of its own; nothing of this checkout, and
    none of the training stack importable."""
    site = device / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {
        k: v
        for k, v in project.env().items()
        if not k.startswith(("EDGELOOP_", "MLFLOW_", "PREFECT_")) and str(REPO) not in v
    }
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=str(device),
        PREFECT_API_URL=prefect_api,
        PREFECT_HOME=str(device / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(site),
    )
    assert not any(str(REPO) in v for v in env.values())
    return env


def test_a_worker_with_no_checkout_passes_a_pool_profiles_gate(
    project: Project, prefect_postgresql: str, mlflow_sqlite: str, tmp_path: Path
) -> None:
    profile_name = f"remote-{uuid.uuid4().hex[:6]}"  # its pool hw-<name> is this test's alone
    profiles = tmp_path / "build-host-profiles"
    profiles.mkdir()
    profile = yaml.safe_load((load_tolerant_profiles() / "host-cpu.yaml").read_text())
    profile.update(name=profile_name, runner="pool", variant="auto", description="a device")
    (profiles / f"{profile_name}.yaml").write_text(yaml.safe_dump(profile))
    model = f"digits-{uuid.uuid4().hex[:8]}"
    project.extra_env.update(
        PREFECT_API_URL=prefect_postgresql,
        MLFLOW_TRACKING_URI=mlflow_sqlite,
        EDGELOOP_PROFILES_DIR=str(profiles),
    )
    project.set_params(
        model_name=model,
        training={"epochs": 3},
        gates={"profiles": [profile_name], "runner_deadline_s": 240},
        **FAST_PARAMS,
    )
    device = tmp_path / "device"
    device.mkdir()
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "runner", "start", "--profile", profile_name],
            cwd=device, env=device_env(project, prefect_postgresql, device),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            result = project.edgeloop("run", timeout=900)
        finally:
            stop_group(worker)
    logs = result.stdout + result.stderr + worker_log.read_text()[-4000:]
    assert result.returncode == 0, logs

    client = project.client()
    version = client.get_model_version_by_alias(model, "candidate")
    assert version.tags[f"edgeloop.hw.{profile_name}.status"] == "passed", logs
    run = version.run_id
    suite = {a.path for a in client.list_artifacts(run, "hardware/suite")}
    assert {"hardware/suite/conftest.py", "hardware/suite/profiles"} <= suite
    variant = version.tags[f"edgeloop.hw.{profile_name}.variant"]
    reports = {a.path for a in client.list_artifacts(run, f"hardware/{profile_name}/{variant}")}
    assert f"hardware/{profile_name}/{variant}/report.json" in reports, logs

    # The deployment the worker ran names the flow by module path and pulls nothing.
    deployment = httpx.get(
        f"{prefect_postgresql}/deployments/name/hardware-validate/hw-{profile_name}", timeout=30
    ).json()
    assert deployment["entrypoint"] == "flows.runner_flow.validate_on_runner", deployment
    assert not deployment["pull_steps"] and not deployment["path"], deployment
    # The worker's folder holds only what the worker made there, no suite or profile of its own.
    assert not list(device.rglob("conftest.py")) and not list(device.rglob("*.yaml"))
    assert "not in edgeloop[runner]" not in worker_log.read_text()
