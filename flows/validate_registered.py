"""`edgeloop validate MODEL_URI --profile P`: the suite on a registered version, recorded on it.

For a runner or a person checking a version that is already in the registry: the variant is fetched
from MLflow (checked against its sha256), the suite runs locally under the profile, and the result is
recorded as an MLflow run linked to the version plus the version's ``edgeloop.hw.<profile>.*`` tags.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeloop.core.errors import ConfigError
from edgeloop.core.settings import Settings
from flows.hardware import ProfileResult, run_profile
from registry import tags as tag
from registry.fetch import fetch_for_profile
from registry.tracking import connect, ensure_experiment


def validate_registered(
    settings: Settings, model_uri: str, profile: str, out_dir: Path
) -> ProfileResult:
    import mlflow

    if not model_uri.startswith("models:/"):
        raise ConfigError(
            f"{model_uri!r} is not a registered version",
            hint="use models:/NAME@ALIAS or models:/NAME/VERSION",
        )
    client = connect(settings.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = fetch_for_profile(model_uri, None, Path(tmp), profile=profile)
        result = run_profile(
            fetched.model,
            profile,
            fetched.golden,
            out_dir,
            reference=fetched.reference,
            suite_dir=settings.hardware_tests_dir,
            profiles_dir=settings.profiles_dir,
        )
    name, version = str(fetched.model_name), str(fetched.version)
    artifacts = settings.artifacts_dir if settings.uses_embedded_mlflow() else None
    experiment = ensure_experiment(client, name, artifacts)
    with mlflow.start_run(experiment_id=experiment, run_name=f"validate-{profile}-v{version}"):
        mlflow.set_tags(
            {
                tag.MODEL: name,
                tag.MODEL_VERSION: version,
                tag.PROFILE: profile,
                tag.VARIANT: fetched.variant,
                tag.HW_STATUS: result.status,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
        mlflow.log_artifact(str(result.junit_path), artifact_path=f"hardware/{profile}")
        mlflow.log_artifact(str(result.report_path), artifact_path=f"hardware/{profile}")
    tags = {
        tag.hw_status(profile): result.status,
        tag.hw_variant(profile): fetched.variant,
    }
    for key in ("p95_ms", "accuracy"):
        if key in result.metrics:
            tags[tag.hw(profile, key)] = f"{result.metrics[key]:.4g}"
    if not result.passed:
        tags[tag.hw_reason(profile)] = "; ".join(result.failures)[:1000] or result.status
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return result
