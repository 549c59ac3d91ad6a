"""The fleet controller's FastAPI application: ``create_app(settings) -> FastAPI``.

The factory wires the pieces and owns their lifetimes: the engine (migrated to head at start, Alembic
with a Config built in code), the long-poll notifier, the clock and the background reconcile task;
and for replicas (``storage.replicas``) the leadership the background passes run under, the
listener that wakes long-polls for other replicas' changes, and SQLite's one-process lock. It
is also where the store's typed errors become HTTP statuses, so routes stay thin and the store stays
free of HTTP. Run it with ``uvicorn --factory fleet.controller.api.app:app_from_env``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fleet.controller import reconcile as loop
from fleet.controller.api import metrics
from fleet.controller.api.body_limits import controller_limits
from fleet.controller.api.early_auth import CredentialBeforeBody
from fleet.controller.api.responses import add_implied_errors
from fleet.controller.api.routes_devices import router as devices_router
from fleet.controller.api.routes_devices import wake_from_database
from fleet.controller.api.routes_field import router as field_router
from fleet.controller.api.routes_observe import router as observe_router
from fleet.controller.api.routes_outcomes import router as outcomes_router
from fleet.controller.api.routes_rollouts import router as rollouts_router
from fleet.controller.dashboard.routes import router as dashboard_router
from fleet.controller.errors import (
    ConcurrentUpdate,
    ControllerError,
    DeviceAlreadyEnrolled,
    EnrolmentRefused,
    RolloutCommandError,
    RolloutConflict,
    RolloutInvalid,
    RolloutNotFound,
)
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.observe import loop as observe
from fleet.controller.settings import FleetSettings
from fleet.controller.storage import db, replicas
from fleet.shared.body_limit import LimitBodySize
from fleet.shared.protocol import API_PREFIX


def utc_now() -> datetime:
    return datetime.now(UTC)


_STATUS: tuple[tuple[type[ControllerError], int], ...] = (
    (EnrolmentRefused, status.HTTP_401_UNAUTHORIZED),
    (DeviceAlreadyEnrolled, status.HTTP_409_CONFLICT),
    (RolloutNotFound, status.HTTP_404_NOT_FOUND),
    (RolloutConflict, status.HTTP_409_CONFLICT),
    (RolloutInvalid, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (RolloutCommandError, status.HTTP_409_CONFLICT),
    (ConcurrentUpdate, status.HTTP_409_CONFLICT),
)


def _error_response(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControllerError)
    code = next((c for kind, c in _STATUS if isinstance(exc, kind)), 500)
    body: dict[str, object] = {"detail": exc.message}
    if exc.hint:
        body["hint"] = exc.hint
    for key in ("reason", "command", "phase"):
        if hasattr(exc, key):
            body[key] = str(getattr(exc, key))
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse(body, status_code=code, headers=headers)


async def _no_nul_in_the_path(request: Request) -> None:
    """A path parameter with a NUL character is a 422 on either database: no PostgreSQL text column
    holds one, so it used to be a 500 there (``GET /v1/rollouts/a%00b``, ``PUT /v1/baselines/a%00b``).
    Strings in bodies and queries are refused by their models' patterns (``fleet.shared.protocol``)."""
    bad = [name for name, value in request.path_params.items() if "\x00" in str(value)]
    if bad:
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", name),
                    "msg": "must not contain a NUL character",
                    "input": request.path_params[name],
                }
                for name in bad
            ]
        )


class ControllerApp(FastAPI):
    """FastAPI whose OpenAPI document also lists the errors each route answers by its shape
    (``fleet.controller.api.responses``): every answer the controller gives is documented."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = add_implied_errors(super().openapi())
        return self.openapi_schema


def create_app(
    settings: FleetSettings | None = None, *, clock: Callable[[], datetime] = utc_now
) -> FastAPI:
    """The controller app over ``settings.db_url``; ``clock`` is injected for tests (STYLE rule 6)."""
    settings = settings or FleetSettings()
    observing = observe.configure()  # a bad playbooks file stops the start here, with its reason
    engine = db.make_engine(settings.db_url, sqlite_synchronous=settings.sqlite_synchronous)
    replica = replicas.new_replica_id()
    sessions = db.make_sessionmaker(engine, replica=replica)
    notifier = ChangeNotifier()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # SQLite: one controller process per file; a second one stops here, saying so
        release_sqlite = replicas.hold_sqlite(settings.db_url)
        leader = listening = task = observer = None
        try:
            if settings.migrate_on_start:
                await run_in_threadpool(db.migrate, engine)
            # PostgreSQL: other replicas' changes wake this one's long-polls
            listening = replicas.listener(
                engine, replica, wake_from_database(sessions, notifier), notifier.notify_all
            )
            if listening is not None:  # another replica's change is known here only through it
                notifier.trusted = listening.listening.is_set
            if settings.reconcile_enabled:  # the passes run on the one replica that leads
                leader = app.state.leader = replicas.leadership(engine)
                task = asyncio.create_task(
                    loop.run_forever(sessions, clock, settings.reconcile_s, notifier, leader)
                )
                observer = observe.start(sessions, clock, notifier, observing, leader)
            yield
        finally:
            await observe.stop(observer)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if listening is not None:
                await run_in_threadpool(listening.stop)
            if leader is not None:
                await run_in_threadpool(leader.close)
            engine.dispose()
            release_sqlite()

    app = ControllerApp(
        title="edgeloop fleet controller",
        version="1",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        dependencies=[Depends(_no_nul_in_the_path)],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.notifier = notifier
    app.state.clock = clock
    app.add_exception_handler(ControllerError, _error_response)
    # before anything reads a body: a 300 MB one is a 413, never in memory (body_limits); and,
    # added last so it runs first, who is asking before a large body is read (early_auth)
    app.add_middleware(LimitBodySize, limits=controller_limits(settings))
    app.add_middleware(CredentialBeforeBody)

    app.state.leader = None

    @app.get(f"{API_PREFIX}/health")
    def health() -> dict[str, str | bool]:
        """``leader``: whether this replica runs the background passes (reconcile, observe) now;
        on SQLite the one process always does, unless its passes are turned off."""
        leader: replicas.Leadership | None = app.state.leader
        return {"status": "ok", "leader": leader is not None and leader.held}

    app.include_router(devices_router, prefix=API_PREFIX)
    app.include_router(rollouts_router, prefix=API_PREFIX)
    app.include_router(outcomes_router, prefix=API_PREFIX)
    app.include_router(field_router, prefix=API_PREFIX)
    app.include_router(observe_router, prefix=API_PREFIX)
    metrics.install(app)
    app.include_router(dashboard_router)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory fleet.controller.api.app:app_from_env``: settings from ``EDGELOOP_FLEET_*``."""
    return create_app(FleetSettings())
