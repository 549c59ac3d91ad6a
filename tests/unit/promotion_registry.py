"""A real (SQLite) MLflow registry per test for the promotion listener and poller tests, copied from
one migrated template so each test starts in milliseconds; and a recording trigger."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from mlflow import MlflowClient

from registry.webhook_auth import sign

MODEL = "digits"
PASSED = {"edgeloop.gates": "passed", "edgeloop.hw.host-cpu.status": "passed"}
SUCCEEDED = {**PASSED, "edgeloop.rollout.status": "succeeded"}
SECRET = "s3cret"


@cache
def _template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_registered_models()
    return folder / "mlflow.db"


def fresh_registry(tmp_path: Path, *versions: dict[str, str]) -> MlflowClient:
    """A registry holding MODEL with one version per tag dict (versions "1", "2", ...)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_template(), db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.create_registered_model(MODEL)
    for n, tags in enumerate(versions, start=1):
        client.create_model_version(MODEL, (tmp_path / f"m{n}").as_uri(), tags=tags)
    return client


def production(client: MlflowClient, model: str = MODEL) -> str | None:
    aliases = client.get_registered_model(model).aliases
    return str(aliases["production"]) if "production" in aliases else None


class Recorder:
    """A trigger that records its calls (and fails while ``fail`` is set)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail = False

    def __call__(self, model: str, version: str, stable_version: str | None) -> str:
        if self.fail:
            raise ConnectionError("Prefect API unreachable")
        self.calls.append((model, version, stable_version))
        return f"run-{len(self.calls)}"


def signed_headers(
    body: bytes, delivery_id: str, timestamp: int, secret: str = SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": sign(secret, delivery_id, str(timestamp), body),
    }
