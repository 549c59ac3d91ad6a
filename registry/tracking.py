"""Connecting to MLflow: the tracking URI, a fast reachability check, and the experiment.

MLflow's own client retries an unreachable server for minutes; :func:`preflight` answers in
seconds with one line naming the URI, before any work starts (and before MLflow is imported).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from edgeloop.core.errors import TrackingUnavailableError

if TYPE_CHECKING:
    from mlflow import MlflowClient


def preflight(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingUnavailableError unless the tracking store answers."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server {tracking_uri} is unreachable ({type(exc).__name__})",
                hint="start it, fix MLFLOW_TRACKING_URI, or unset it to use the embedded store",
            ) from exc
        if response.status_code != 200:
            raise TrackingUnavailableError(
                f"MLflow tracking server {tracking_uri} answered {response.status_code} on /health",
                hint="check the server's logs or fix MLFLOW_TRACKING_URI",
            )
    elif tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def connect(tracking_uri: str) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    preflight(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifacts_root: Path | None) -> str:
    """The experiment's id; with the embedded store its artifacts live under ``artifacts_root``."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = (artifacts_root / name).resolve().as_uri() if artifacts_root else None
    return str(client.create_experiment(name, artifact_location=location))
