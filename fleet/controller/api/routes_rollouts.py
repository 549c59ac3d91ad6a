"""Admin rollout endpoints: create (with its refusals), the operator commands, and status.

Every command goes through ``loop.apply_decision`` with a pure function of ``fleet.controller.rollout.decide``,
so a command and a reconcile pass share one path: lock the row, decide, save the status with its
outbox, then act. A refused command (``RolloutCommandError``) becomes 409 in ``app``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, status

from fleet.controller.api.auth import Admin, SessionDep
from fleet.controller.api.responses import errors
from fleet.controller.errors import ConcurrentUpdate, PolicyError, RolloutConflict, RolloutInvalid
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.reconcile import apply_decision
from fleet.controller.rollout.decide import (
    Decision,
    RolloutStatus,
    abort,
    new_rollout,
    pause,
    resume,
    retry,
    start,
)
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.rollout.policy import RolloutPolicy, default_policy, load_policy
from fleet.controller.settings import FleetSettings
from fleet.controller.storage import store
from fleet.controller.storage.db import RolloutRow, Session
from fleet.shared.admin_protocol import (
    RolloutCommand,
    RolloutDetail,
    RolloutRequest,
    RolloutSummary,
)
from fleet.shared.profile import ProfileError

router = APIRouter(dependencies=[Admin])

Command = Literal["start", "pause", "resume", "abort", "retry"]
RolloutId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=256)]
"""``<model>-<10 hex digits>`` (``store.new_rollout_id``); anything else names no rollout, and a NUL
character, which no PostgreSQL text column holds, is a 422 here instead of a 500 there."""


def detail(row: RolloutRow) -> RolloutDetail:
    return RolloutDetail(
        **store.summary(row).model_dump(), status=row.status, last_error=row.last_error
    )


def _stable_version(session: Session, request: RolloutRequest) -> str:
    if request.stable_version is not None:
        return request.stable_version
    for row in reversed(store.list_rollouts(session)):
        if row.model == request.model and row.phase == RolloutPhase.SUCCEEDED:
            return store.status_of(row).canary_version
    raise RolloutInvalid(
        f"no stable version of {request.model} to fall back to",
        reason="stable_version is required: no earlier rollout of this model succeeded",
    )


def _policy(session: Session, request: RolloutRequest, settings: FleetSettings) -> RolloutPolicy:
    if request.policy is not None:
        try:
            return load_policy(request.policy)
        except PolicyError as exc:
            raise RolloutInvalid(str(exc), reason=exc.message) from exc
    classes = sorted(store.artifacts_of(session, request.model, request.version))
    if not classes:
        raise RolloutInvalid(
            f"{request.model} {request.version} has no variant",
            reason=f"no variant of {request.model} {request.version} for any hardware class",
        )
    try:
        return default_policy({c: settings.p95_budget_ms(c) for c in classes})
    except PolicyError as exc:
        raise RolloutInvalid(str(exc), reason=exc.message) from exc
    except ProfileError as exc:  # a class's profile that does not load: no budget to hold it to
        raise RolloutInvalid(str(exc), reason=f"hardware profile: {exc}") from exc


def create_rollout(
    session: Session,
    request: RolloutRequest,
    *,
    settings: FleetSettings,
    now: datetime,
    notifier: ChangeNotifier | None = None,
) -> RolloutRow:
    """A PENDING rollout, or a refusal with the reason: another active one (409, unless
    ``supersede``, which aborts it first), or a targeted class without a signed variant (422)."""
    stable = _stable_version(session, request)
    if stable == request.version:
        raise RolloutInvalid(
            "canary and stable are the same version",
            reason=f"version {request.version} is already the stable version",
        )
    policy = _policy(session, request, settings)
    variants = store.artifacts_of(session, request.model, request.version)
    missing = [c for c in sorted(policy.cohorts) if c not in variants]
    unsigned = [c for c in sorted(policy.cohorts) if c in variants and not variants[c].signature]
    if missing or unsigned:
        parts = []
        if missing:
            parts.append(f"no variant for {', '.join(missing)}")
        if unsigned:
            parts.append(f"no signature on the variant for {', '.join(unsigned)}")
        reason = f"{request.model} {request.version}: " + "; ".join(parts)
        raise RolloutInvalid(reason, reason=reason)
    rollout_id = store.new_rollout_id(request.model)
    others = store.open_rollouts(session, request.model)
    if others and not request.supersede:
        names = ", ".join(f"{r.rollout_id} ({r.phase})" for r in others)
        raise RolloutConflict(
            f"another rollout of {request.model} is active: {names}",
            reason=f"another rollout of {request.model} is active: {names}",
            hint="wait for it, abort it, or ask to supersede it",
        )
    rolling_back = [r.rollout_id for r in others if r.phase == RolloutPhase.ROLLING_BACK]
    if rolling_back:
        reason = f"rollout(s) {', '.join(rolling_back)} are rolling back; wait for them to end"
        raise RolloutConflict(reason, reason=reason)
    session.rollback()
    for other in others:
        apply_decision(
            session,
            other.rollout_id,
            lambda s: abort(s, now, reason=f"superseded by {rollout_id}"),
            now,
            notifier,
        )
    status_ = new_rollout(
        rollout_id=rollout_id,
        model=request.model,
        canary_version=request.version,
        stable_version=stable,
        policy=policy,
        now=now,
    )
    return store.insert_rollout(session, status_, now)  # 409 when another replica won the race


@router.post(
    "/rollouts",
    response_model=RolloutDetail,
    status_code=status.HTTP_201_CREATED,
    responses=errors(409, 422),
)
def post_rollout(body: RolloutRequest, request: Request, session: SessionDep) -> RolloutDetail:
    state = request.app.state
    row = create_rollout(
        session, body, settings=state.settings, now=state.clock(), notifier=state.notifier
    )
    return detail(row)


@router.get("/rollouts", response_model=list[RolloutSummary])
def get_rollouts(session: SessionDep) -> list[RolloutSummary]:
    return [store.summary(r) for r in store.list_rollouts(session)]


@router.get("/rollouts/{rollout_id}", response_model=RolloutDetail, responses=errors(404))
def get_rollout(rollout_id: RolloutId, session: SessionDep) -> RolloutDetail:
    return detail(store.load_rollout(session, rollout_id))


COMMAND_ATTEMPTS = 3
"""An operator's command that loses the race with a reconcile pass is decided again on the saved
status (a command refused by then is refused with its reason), not answered 409 for the race."""


def run_command(
    session: Session,
    rollout_id: str,
    command: Command,
    reason: str,
    now: datetime,
    notifier: ChangeNotifier | None = None,
) -> RolloutStatus:
    """Apply one operator command through the same save-then-act path as the reconcile pass."""

    def decide(status_: RolloutStatus) -> Decision:
        if command == "start":
            return start(status_, store.observations(session, status_), now)
        if command == "retry":
            return retry(status_, store.observations(session, status_), now)
        if command == "pause":
            return pause(status_, now, reason=reason or "paused by an operator")
        if command == "resume":
            return resume(status_, now)
        return abort(status_, now, reason=reason or "aborted by an operator")

    for attempt in range(COMMAND_ATTEMPTS):
        try:
            new, _ = apply_decision(session, rollout_id, decide, now, notifier)
            return new
        except ConcurrentUpdate:  # a reconcile pass saved first: decide again on what it saved
            session.rollback()
            if attempt == COMMAND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@router.post(
    "/rollouts/{rollout_id}/{command}", response_model=RolloutDetail, responses=errors(404, 409)
)
def post_command(
    rollout_id: RolloutId,
    command: Command,
    request: Request,
    session: SessionDep,
    body: RolloutCommand | None = None,
) -> RolloutDetail:
    state = request.app.state
    reason = body.reason if body is not None else ""
    run_command(session, rollout_id, command, reason, state.clock(), state.notifier)
    row = store.load_rollout(session, rollout_id)  # read again: the command changed it
    return detail(row)
