"""Settings of the promotion listener and the alias poller, and the trigger that starts a rollout.

Read from ``EDGELOOP_LISTENER_*``:

- ``SECRET``: the webhook secret shared with MLflow (required to serve or register the webhook);
- ``TOLERANCE_S``: how far a delivery's timestamp may be from this clock (default 300 s);
- ``STORE``: the SQLite file of accepted deliveries and handled aliases (default
  ``<edgeloop home>/promotions.db``);
- ``DEPLOYMENT``: the Prefect deployment a promotion runs (default ``rollout/promoted``, parameters
  ``model``, ``version``, ``stable_version``);
- ``RECORD_TO``: a dry run: append each promotion as a JSON line to this file instead of starting the
  deployment (to check the wiring from MLflow without touching the fleet);
- ``MODELS``: the models the poller watches (JSON list; default every registered model);
- ``INTERVAL_S``: the poller's interval (default 10 s);
- ``TLS_CERTFILE`` / ``TLS_KEYFILE``: serve HTTPS (MLflow delivers to https outside tests);
- ``MAX_BODY_BYTES``: the largest delivery the listener reads (default 1 MiB; an MLflow payload is
  well under a kilobyte); a larger one is a 413, refused before it is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop.core.errors import ConfigError
from fleet.shared.body_limit import MiB
from registry.promotion_store import PromotionStore
from registry.webhook_auth import DEFAULT_TOLERANCE_S

Trigger = Callable[[str, str, "str | None"], str]
"""``trigger(model, version, stable_version) -> run id``: starts a rollout without waiting for it."""


class ListenerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_LISTENER_", extra="ignore")

    secret: SecretStr | None = None
    tolerance_s: float = DEFAULT_TOLERANCE_S
    store: Path | None = None
    deployment: str = "rollout/promoted"
    record_to: Path | None = None
    models: list[str] = []
    interval_s: float = 10.0
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    max_body_bytes: int = Field(1 * MiB, ge=1024)

    def require_secret(self) -> str:
        if self.secret is None or not self.secret.get_secret_value():
            raise ConfigError(
                "no webhook secret",
                hint="set EDGELOOP_LISTENER_SECRET to the secret the MLflow webhook signs with",
            )
        return self.secret.get_secret_value()

    def open_store(self, home: Path) -> PromotionStore:
        return PromotionStore(self.store or home / "promotions.db")

    def trigger(self) -> Trigger:
        if self.record_to is not None:
            return recording_trigger(self.record_to)
        return deployment_trigger(self.deployment)


def deployment_trigger(deployment: str) -> Trigger:
    """Start a flow run of ``deployment`` and return at once with its id."""

    def start(model: str, version: str, stable_version: str | None) -> str:
        from prefect.deployments import run_deployment

        run: Any = run_deployment(
            name=deployment,
            parameters={"model": model, "version": version, "stable_version": stable_version},
            timeout=0,
        )
        return str(run.id)

    return start


def recording_trigger(path: Path) -> Trigger:
    """Append ``{"model", "version", "stable_version"}`` to ``path``; the run id is the line number."""

    def record(model: str, version: str, stable_version: str | None) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"model": model, "version": version, "stable_version": stable_version}
        with path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        return f"dry-run-{sum(1 for _ in path.open())}"

    return record
