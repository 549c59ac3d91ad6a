"""The flow a hardware runner executes: fetch one variant from MLflow, run the suite, log the result.

It is deployed once per profile to the Prefect work pool ``hw-<profile>`` (:mod:`flows.pool`); a
worker started by ``edgeloop runner start --profile P`` on the device picks it up. The caller reads
the JUnit and JSON reports back from the MLflow run, so nothing depends on Prefect's result storage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow

from edgeloop.core.settings import Settings
from flows.hardware import run_profile


def artifact_folder(profile: str, variant: str) -> str:
    """Where a runner logs its reports inside the MLflow run."""
    return f"hardware/{profile}/{variant}"


@flow(name="hardware-validate", log_prints=True)
def validate_on_runner(tracking_uri: str, run_id: str, variant: str, profile: str) -> str:
    """Run the suite for ``profile`` on ``variant`` of run ``run_id``; return the suite's status."""
    import mlflow
    from mlflow import MlflowClient

    settings = Settings()
    client = MlflowClient(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)

        def fetch(path: str) -> Path:
            return Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            )

        model = fetch(f"variants/{variant}.onnx")
        result = run_profile(
            model,
            profile,
            fetch("golden/golden.npz"),
            local / "out",
            reference=fetch("variants/fp32.onnx"),
            suite_dir=settings.hardware_tests_dir,
            profiles_dir=settings.profiles_dir,
        )
        for path in (result.junit_path, result.report_path):
            client.log_artifact(run_id, str(path), artifact_folder(profile, variant))
    print(f"{profile}: {variant} {result.status}")
    return result.status
