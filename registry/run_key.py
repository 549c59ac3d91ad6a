"""Run keys: one training job registers at most one version, however often it is attempted.

A run key hashes what determines the result (data hash, parameters, code). The training run carries
it as the MLflow run tag ``edgeloop.run_key``; registration copies it to the version and first looks
for a version that already has it (:func:`existing_version`), so a job that failed over after a late
run had already registered still ends with exactly one version.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from registry import tags as tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


def run_key(data_hash: str, params_hash: str, code: str) -> str:
    """A stable key for (data, parameters, code)."""
    blob = f"data={data_hash}\nparams={params_hash}\ncode={code}".encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def existing_version(client: MlflowClient, model_name: str, key: str) -> ModelVersion | None:
    """The first (lowest) version of ``model_name`` registered with ``key``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(
            f"name = '{model_name}' and tags.`{tag.RUN_KEY}` = '{key}'"
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(found, key=lambda v: int(v.version)) if found else None
