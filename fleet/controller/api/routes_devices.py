"""Device-facing endpoints (enrolment, desired state, artifacts, telemetry) and their admin helpers.

Requests and answers are the models of ``fleet.shared.protocol``, the contract shared with the agent. Handlers
are thin: they authenticate (``auth``), call ``store`` with the app's clock, and translate the store's
typed errors into HTTP statuses in ``app``. The artifact routes (registration and download) are in
``routes_artifacts``, included in this router.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from fleet.controller.api.auth import (
    Admin,
    DeviceIdentity,
    OwnDevice,
    SessionDep,
    forget_devices,
)
from fleet.controller.api.responses import errors
from fleet.controller.api.routes_artifacts import router as artifacts_router
from fleet.controller.observe import ingest as observe_ingest
from fleet.controller.storage import events as stored_events
from fleet.controller.storage import store
from fleet.shared.admin_protocol import (
    Baseline,
    BaselineSet,
    RetireRequest,
    RetireResult,
)
from fleet.shared.protocol import (
    LONG_POLL_MAX_S,
    MAX_DB_INT,
    DesiredState,
    EnrolmentToken,
    EnrolmentTokenInfo,
    EnrolmentTokenRequest,
    EnrolRequest,
    EnrolResponse,
    TelemetryAck,
    TelemetryBatch,
)

router = APIRouter()
router.include_router(artifacts_router)


@router.post("/enrolment-tokens", response_model=EnrolmentToken, dependencies=[Admin])
def create_enrolment_token(
    body: EnrolmentTokenRequest, request: Request, session: SessionDep
) -> EnrolmentToken:
    return store.create_enrolment_token(session, body, request.app.state.clock())


@router.get("/enrolment-tokens", response_model=list[EnrolmentTokenInfo], dependencies=[Admin])
def list_enrolment_tokens(request: Request, session: SessionDep) -> list[EnrolmentTokenInfo]:
    """Tokens that can still enrol a device (never the tokens themselves)."""
    return store.live_enrolment_tokens(session, request.app.state.clock())


@router.delete(
    "/enrolment-tokens/{token_id}",
    status_code=204,
    dependencies=[Admin],
    responses=errors(404),
)
def revoke_enrolment_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_DB_INT)], session: SessionDep
) -> Response:
    """Revoke a token: no device enrols with it any more (those enrolled stay; retire them)."""
    if not store.revoke_enrolment_token(session, token_id):
        raise HTTPException(404, f"no enrolment token {token_id}")
    return Response(status_code=204)


@router.post("/enrol", response_model=EnrolResponse, responses=errors(401, 409))
def enrol(body: EnrolRequest, request: Request, session: SessionDep) -> EnrolResponse:
    credential = store.enrol(session, body, request.app.state.clock())
    return EnrolResponse(
        device_id=body.device_id,
        credential=credential,
        public_key_pem=request.app.state.settings.public_key_pem(),
    )


def _read_desired(request: Request, device: DeviceIdentity) -> DesiredState:
    with request.app.state.sessions() as session:
        row = store.device(session, device.device_id)
        assert row is not None
        return store.desired_state(session, row)


@router.get("/devices/{device_id}/desired", response_model=DesiredState, responses=errors(403))
async def desired(
    request: Request,
    device: OwnDevice,
    revision: Annotated[int | None, Query(ge=0, le=MAX_DB_INT)] = None,
    wait: Annotated[float, Query(ge=0, le=3600)] = 0.0,
) -> DesiredState:
    """Answers at once when ``revision`` differs from the stored one, else when it changes or after
    ``min(wait, 30)`` s. Changes made in this process wake the poll at once; changes made by another
    replica too on PostgreSQL (``LISTEN``, ``storage.replicas``), and in any case by re-reading the
    database every ``long_poll_recheck_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, LONG_POLL_MAX_S)
    recheck: float = request.app.state.settings.long_poll_recheck_s
    with request.app.state.notifier.subscribe(device.device_id) as waiter:
        while True:
            published = waiter.desired(device.hardware_class)  # a woken poll needs no query
            waiter.clear()
            current = published or await run_in_threadpool(_read_desired, request, device)
            remaining = deadline - loop.time()
            if revision is None or current.revision != revision or remaining <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout=min(remaining, recheck))


@router.post("/devices/retire", response_model=RetireResult, dependencies=[Admin])
def retire(body: RetireRequest, request: Request, session: SessionDep) -> RetireResult:
    """Take devices out of the fleet (a device that is gone for good, a simulation that ended)."""
    retired = store.retire_devices(
        session, body.device_ids, body.silent_for_s, request.app.state.clock()
    )
    session.commit()
    forget_devices(request, retired)
    return RetireResult(retired=retired)


@router.put("/baselines/{model}", response_model=BaselineSet, dependencies=[Admin])
def put_baseline(model: str, body: Baseline, request: Request, session: SessionDep) -> BaselineSet:
    changed = store.set_baseline(session, model, body.version, request.app.state.clock())
    session.commit()
    request.app.state.notifier.notify(changed)
    return BaselineSet(model=model, version=body.version, devices_changed=len(changed))


@router.post(
    "/devices/{device_id}/telemetry", response_model=TelemetryAck, responses=errors(403, 422)
)
def telemetry(body: TelemetryBatch, request: Request, device: OwnDevice) -> TelemetryAck:
    """Idempotent per (device, buffer_id, seq); duplicates and any order are fine.

    One session and one transaction per batch, and no read before the insert: the device is the one
    the credential check just found (devices are never deleted), so the handler goes straight to the
    ``INSERT ... ON CONFLICT DO NOTHING`` and the ``last_seen`` update."""
    bounds = store.accepted_bounds()
    odd = sorted({r.seq for r in body.reports if tuple(r.latency_ms.bounds_ms) != bounds})
    if odd:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"reports {odd}: latency_ms.bounds_ms must be {list(bounds)}",
        )
    now = request.app.state.clock()
    garbage = observe_ingest.report_problems(body.reports)
    with request.app.state.sessions() as session:
        if garbage:
            stored_events.count_rejection(session, device.device_id, garbage, now)
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="; ".join(garbage))
        ack = store.ingest_telemetry(session, device, body.reports, now)
        observe_ingest.record(session, device.device_id, body.reports, ack.accepted, now)
    return ack
