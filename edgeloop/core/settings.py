"""One settings object for every process, read from the environment.

Each embedded default lives under ``.edgeloop/`` and is replaced by one setting:
``MLFLOW_TRACKING_URI`` (or ``EDGELOOP_MLFLOW_TRACKING_URI``) points at a real MLflow server,
``PREFECT_API_URL`` at a real Prefect server. Everything else uses the ``EDGELOOP_`` prefix.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where state lives and which servers to talk to."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    home: Path = Field(default=Path(".edgeloop"), description="Root of embedded state.")
    params_file: Path = Path("params.yaml")
    model_cards_dir: Path = Path("model-cards")
    data_dir: Path = Path("data")
    profiles_dir: Path = Path("hardware-tests/profiles")
    hardware_tests_dir: Path = Path("hardware-tests")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EDGELOOP_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    prefect_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EDGELOOP_PREFECT_API_URL", "PREFECT_API_URL"),
    )
    dvc_remote: str | None = Field(
        default=None,
        description="The DVC remote training data goes through to training workers: a directory, "
        "or s3://bucket/prefix (S3-compatible with dvc_remote_endpoint_url; credentials from the "
        "usual AWS variables, never a setting). Default: <home>/dvc-remote.",
    )
    dvc_remote_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible server (MinIO, Ceph, ...); none: AWS itself."
    )
    signing_keys_dir: Path | None = Field(
        default=None,
        description="Where the registry's ed25519 signing key lives: on the host that registers "
        "versions, never on a serving host. Default: <home>/keys.",
    )

    @cached_property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def data_remote(self) -> str:
        """The DVC remote's URL: ``dvc_remote``, or a directory under the home."""
        return self.dvc_remote or str((self.home / "dvc-remote").resolve())

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def keys_dir(self) -> Path:
        return self.signing_keys_dir or self.home / "keys"

    @property
    def work_dir(self) -> Path:
        """Outputs of the pipeline stages (model, variants, evaluation); DVC outs too."""
        return self.home / "work"

    @property
    def splits_dir(self) -> Path:
        return self.data_dir / "splits"

    @property
    def last_run_file(self) -> Path:
        return self.home / "last-run.json"

    def uses_embedded_mlflow(self) -> bool:
        return not self.mlflow_tracking_uri

    def export_environment(self) -> None:
        """Set the variables Prefect and MLflow read, before either is imported."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(self.prefect_home.resolve()))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if self.prefect_api_url:
            os.environ["PREFECT_API_URL"] = self.prefect_api_url
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
