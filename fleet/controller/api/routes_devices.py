"""Device-facing endpoints (enrolment, desired state, artifacts, telemetry) and their admin helpers.

Requests and answers are the models of ``fleet.shared.protocol``, the contract shared with the agent. Handlers
are thin: they authenticate (``auth``), call ``store`` with the app's clock, and translate the store's
typed errors into HTTP statuses in ``app``. The artifact routes (registration and download) are in
``routes_artifacts``, included in this router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from fleet.controller.api.auth import (
    Admin,
    OwnDevice,
    SessionDep,
    forget_devices,
)
from fleet.controller.api.responses import errors
from fleet.controller.api.routes_artifacts import router as artifacts_router
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.observe import ingest as observe_ingest
from fleet.controller.storage import events as stored_events
from fleet.controller.storage import store
from fleet.controller.storage.db import Session, SessionFactory
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

log = logging.getLogger(__name__)
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


def _read_states(
    sessions: SessionFactory[Session], device_ids: list[str]
) -> dict[str, DesiredState]:
    """One session, one statement per 500 devices (``store.desired_states``)."""
    with sessions() as session:
        return store.desired_states(session, device_ids)


class DesiredReader:
    """The desired-state reads of the long-polls on one event loop, batched: every poll that asks
    in the same turn of the loop (a burst of time-outs, the first polls of a fleet) shares one
    worker thread, one session and one statement per 500 devices, instead of a thread hop, a
    pooled connection and a query each. A read starts after every request of its batch was made, so
    no answer is older than what was committed before its poll asked; each state read is
    remembered in the notifier (``ChangeNotifier.remember``) with a token taken before the read."""

    def __init__(self, sessions: SessionFactory[Session], notifier: ChangeNotifier) -> None:
        self._sessions = sessions
        self._notifier = notifier
        self._pending: dict[str, list[asyncio.Future[DesiredState]]] = {}
        self._batches: set[asyncio.Task[None]] = set()

    async def read(self, device_id: str) -> DesiredState:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[DesiredState] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after the other polls of this turn have asked
        self._pending.setdefault(device_id, []).append(answer)
        return await answer

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.ensure_future(self._read(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[DesiredState]]]) -> None:
        token = self._notifier.token()
        try:
            states = await run_in_threadpool(_read_states, self._sessions, list(batch))
        except Exception as exc:
            for waiting in batch.values():
                for answer in waiting:
                    if not answer.done():
                        answer.set_exception(exc)
            return
        for device_id, waiting in batch.items():
            state = states.get(device_id) or DesiredState(device_id=device_id, revision=0)
            self._notifier.remember(state, token)
            for answer in waiting:
                if not answer.done():
                    answer.set_result(state)


def _reader(request: Request) -> DesiredReader:
    """The app's reader for the running loop, made on first use."""
    state = request.app.state
    readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DesiredReader] | None
    readers = getattr(state, "desired_readers", None)
    if readers is None:
        readers = weakref.WeakKeyDictionary()
        state.desired_readers = readers
    loop = asyncio.get_running_loop()
    reader = readers.get(loop)
    if reader is None:
        reader = readers[loop] = DesiredReader(state.sessions, state.notifier)
    return reader


def wake_from_database(
    sessions: SessionFactory[Session], notifier: ChangeNotifier
) -> Callable[[list[str]], None]:
    """What another replica's change does here (``replicas.ChangeListener``, in its thread): read
    the new states of the devices named whose long-poll this process holds, 500 a statement, and
    hand each its answer; forget the current revision of the others, so that their next poll reads.
    The read starts after the change committed (``NOTIFY`` is delivered on commit), so no answer is
    older than it. Reading fails: the waiters are woken to read for themselves, as before."""

    def wake(device_ids: list[str]) -> None:
        held = notifier.held(device_ids)
        wanted = set(held)
        notifier.notify(d for d in device_ids if d not in wanted)  # no long-poll here: forget
        if not held:
            return
        try:
            with sessions() as session:
                states = store.desired_states(session, held)
        except Exception:
            log.warning("could not read the desired states of %d woken devices", len(held))
            notifier.notify(held)
            return
        notifier.deliver(states.values())
        notifier.notify(d for d in held if d not in states)  # not enrolled: as before

    return wake


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
    database every ``long_poll_recheck_s``.

    Every answer is read from the database (``DesiredReader``: the polls of one turn of the loop
    in one statement) or handed over by the change that woke the poll, never taken from memory. A
    poll that presents the revision this process last knew to be current parks without reading
    (``ChangeNotifier.current``): most polls are a device asking again after its last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, LONG_POLL_MAX_S)
    recheck: float = request.app.state.settings.long_poll_recheck_s
    notifier: ChangeNotifier = request.app.state.notifier
    with notifier.subscribe(device.device_id) as waiter:
        unread = notifier.current(device.device_id, revision)  # after subscribe: no change missed
        while True:
            published = waiter.desired(device.hardware_class)  # a woken poll needs no query
            waiter.clear()
            remaining = deadline - loop.time()
            if published is not None:
                current = published
            elif unread and remaining > 0:
                current = None  # parks; a change wakes it, the time-out or a re-check reads
            else:
                current = await _reader(request).read(device.device_id)
            unread = False
            if current is not None and (
                revision is None or current.revision != revision or remaining <= 0
            ):
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
