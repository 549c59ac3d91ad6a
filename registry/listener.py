"""The promotion listener: MLflow's webhook for ``production`` set in the UI starts a rollout.

``POST /webhooks/mlflow`` verifies the delivery (:mod:`registry.webhook_auth`), then, for
``model_version_alias.created`` with alias ``production``, hands the version to
:func:`registry.promotion_guard.handle_production`. Answers:

- 200 ``started`` (with the flow run id), ``refused`` (alias put back, reason tagged), ``current``,
  ``duplicate`` or ``ignored`` (another event or alias);
- 400 a body that is not an MLflow webhook payload; 401 bad signature or stale timestamp; 409 replay;
- 413 a body over ``EDGELOOP_LISTENER_MAX_BODY_BYTES``, refused before it is read (nothing recorded);
- 404 the model or version is not in the registry (nothing started);
- 502 the rollout could not be started (the delivery id is forgotten, so MLflow's retry is accepted).

The trigger only creates the flow run, so the answer comes back in well under MLflow's timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from edgeloop.core.errors import RegistryError
from fleet.shared.body_limit import BodyLimit, LimitBodySize
from registry.promotion_config import ListenerSettings, Trigger
from registry.promotion_guard import handle_production
from registry.publish import PRODUCTION
from registry.webhook_auth import WebhookRejected, verify_delivery

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIAS_EVENT = ("model_version_alias", "created")
log = logging.getLogger("edgeloop.listener")


def create_listener_app(
    settings: ListenerSettings,
    trigger: Trigger,
    client: Callable[[], MlflowClient],
    *,
    home: Path,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The listener; ``client()`` gives the MLflow client (called per delivery, may be cached)."""
    secret = settings.require_secret()
    store = settings.open_store(home)
    app = FastAPI(title="edgeloop promotion listener", docs_url=None, redoc_url=None)
    app.state.store = store
    hint = "an MLflow webhook payload is far smaller; raise EDGELOOP_LISTENER_MAX_BODY_BYTES if not"
    app.add_middleware(LimitBodySize, limits=[BodyLimit(settings.max_body_bytes, hint=hint)])

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/webhooks/mlflow")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            delivery_id = verify_delivery(
                request.headers,
                body,
                secret=secret,
                store=store,
                now=clock(),
                tolerance_s=settings.tolerance_s,
            )
        except WebhookRejected as exc:
            log.warning("delivery refused: %s", exc.detail)
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        response = await run_in_threadpool(_handle, body)
        if response.status_code >= 500:
            store.forget_delivery(delivery_id)
        return response

    def _handle(body: bytes) -> JSONResponse:
        try:
            payload = json.loads(body)
            event = (payload["entity"], payload["action"])
            data = payload["data"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"detail": "body is not an MLflow webhook payload (entity, action, data)"},
                status_code=400,
            )
        if event != ALIAS_EVENT or data.get("alias") != PRODUCTION:
            what = f"{event[0]}.{event[1]}" + (f" alias {data.get('alias')}" if data else "")
            return JSONResponse({"status": "ignored", "reason": f"{what} starts no rollout"})
        model, version = str(data.get("name", "")), str(data.get("version", ""))
        try:
            outcome = handle_production(
                client(), store, trigger, model, version, source="webhook", clock=clock
            )
        except RegistryError as exc:
            return JSONResponse({"detail": str(exc), "status": "unknown"}, status_code=404)
        except Exception as exc:
            log.exception("could not start the rollout of %s v%s", model, version)
            detail = (
                f"could not start the rollout of {model} v{version}: {type(exc).__name__}: {exc}"
            )
            return JSONResponse({"detail": detail}, status_code=502)
        return JSONResponse(asdict(outcome))

    return app
