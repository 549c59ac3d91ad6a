"""The flow a hardware runner executes: fetch one variant and the suite from MLflow, run it, log the result.

It is deployed once per profile to the Prefect work pool ``hw-<profile>`` (:mod:`flows.pool`); a
worker started by ``edgeloop runner start --profile P`` on the device picks it up. By default the
deployment names this module, and the worker imports it from its own ``edgeloop[runner]`` install:
nothing comes from the build host's disk. Everything a run needs travels through the MLflow run:

- ``variants/<variant>.onnx``, ``variants/fp32.onnx`` (the reference) and ``golden/golden.npz``;
- ``hardware/suite/``: the build host's hardware-tests suite and the pool profiles it gates on, so a
  device judges with the same checks and budgets as the build host. The build host sends the
  bundle's SHA-256 with the flow run (Prefect's parameters); a bundle that does not match it is
  never run, so writing to MLflow alone cannot put code on a device.

The caller reads the JUnit and JSON reports back from the MLflow run, so nothing depends on
Prefect's result storage. This module stays light (the ``runner`` extra: Prefect, mlflow-skinny,
onnxruntime, pytest): no torch, DVC or training code.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from prefect import flow

from edgeloop.core.errors import HardwareCheckError
from flows.hardware import run_profile

SUITE_FOLDER = "hardware/suite"
"""Where the build host logs the suite and the pool profiles inside the MLflow run."""


def artifact_folder(profile: str, variant: str) -> str:
    """Where a runner logs its reports inside the MLflow run."""
    return f"hardware/{profile}/{variant}"


def suite_digest(folder: Path) -> str:
    """SHA-256 over every file of the suite bundle at ``folder``: relative path and content."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


@flow(name="hardware-validate", log_prints=True)
def validate_on_runner(
    tracking_uri: str, run_id: str, variant: str, profile: str, suite_sha256: str
) -> str:
    """Run the suite of run ``run_id`` for ``profile`` on ``variant``; return the suite's status."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)

        def fetch(path: str) -> Path:
            return Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            )

        suite = fetch(SUITE_FOLDER)
        found = suite_digest(suite)
        if found != suite_sha256:
            raise HardwareCheckError(
                f"the hardware suite in run {run_id} has SHA-256 {found}, not the "
                f"{suite_sha256} the build host sent: not running it",
                hint="someone changed the run's hardware/suite artifacts; retrain to make a new run",
            )
        model = fetch(f"variants/{variant}.onnx")
        result = run_profile(
            model,
            profile,
            fetch("golden/golden.npz"),
            local / "out",
            reference=fetch("variants/fp32.onnx"),
            suite_dir=suite,
            profiles_dir=suite / "profiles",
        )
        for path in (result.junit_path, result.report_path):
            client.log_artifact(run_id, str(path), artifact_folder(profile, variant))
    print(f"{profile}: {variant} {result.status}")
    return result.status
