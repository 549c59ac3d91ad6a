"""The reconcile pass: the shell around the pure decision that loads, decides, saves, then acts.

``reconcile_once`` is retry-safe (STYLE rule 3): it first performs actions a previous pass saved but did
not finish (a controller killed between saving and acting resumes here), then builds observations from
the database, calls ``next_state``, persists the new status with its actions in one transaction, and only
then performs them. Actions are idempotent, so doing one twice is harmless.

Inside the loop an error becomes status, not an exception that kills the loop (STYLE rule 5): a pass
that fails records ``last_error`` on the rollout and returns; the next pass tries again. Losing an
optimistic-lock race to another replica is not an error at all: that replica made the transition.

With several replicas on one database the background pass runs on the leader only
(``storage.replicas``); operators' commands run on whichever replica they reach, so each outbox
action is still claimed in the transaction of its effect, and done once whoever performs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from fleet.controller.errors import ConcurrentUpdate
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.rollout.actions import Action, TargetDevices
from fleet.controller.rollout.decide import Decision, RolloutStatus, next_state
from fleet.controller.storage import store
from fleet.controller.storage.db import Session, SessionFactory
from fleet.controller.storage.replicas import Leadership

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What one pass did: the phase after it and the actions it performed."""

    rollout_id: str
    phase: str
    performed: list[Action] = field(default_factory=list)
    error: str | None = None


def perform_pending(
    session: Session, rollout_id: str, now: datetime, notifier: ChangeNotifier | None = None
) -> list[Action]:
    """Perform the outbox of a rollout in order; each is claimed in the same commit as its effect.

    ``TargetDevices`` moves the desired state (and wakes long-polls after the commit, handing them
    their new state). ``RecordOutcome``
    and ``Notify`` are for the registry follower and people: they are logged and marked done here;
    the rows stay in the outbox as the record. An action another performer (a replica, a command
    racing the pass) claimed first is skipped: it was, or is being, done once.
    """
    row = store.load_rollout(session, rollout_id)
    model = store.status_of(row).model
    outbox = [(p.id, p.action) for p in store.pending_actions(session, rollout_id)]
    performed: list[Action] = []
    for action_id, stored in outbox:
        session.rollback()  # the claim opens the transaction of the action's effect
        if not store.claim_action(session, action_id, now):
            continue
        action = store.ACTION.validate_python(stored)
        changed: dict[str, int] = {}
        version = None
        if isinstance(action, TargetDevices):
            version = action.version
            changed = store.retarget(
                session,
                action.device_ids,
                model=model,
                version=action.version,
                rollout_id=rollout_id,
                now=now,
            )
        else:
            log.info("rollout %s: %s %s", rollout_id, action.kind, action.model_dump(mode="json"))
        session.commit()
        if version and changed and notifier is not None:  # one broadcast, answered from it
            notifier.publish(store.targeted(session, model, version, rollout_id), changed)
        performed.append(action)
    return performed


def apply_decision(
    session: Session,
    rollout_id: str,
    decide: Callable[[RolloutStatus], Decision],
    now: datetime,
    notifier: ChangeNotifier | None = None,
) -> tuple[RolloutStatus, list[Action]]:
    """Load (locked), decide, save status + outbox, perform. Shared by the pass and the commands.

    Raises what ``decide`` raises (``RolloutCommandError`` for a refused command) and
    :class:`ConcurrentUpdate` when another writer got there first.
    """
    row = store.load_rollout(session, rollout_id, lock=True)
    status = store.status_of(row)
    new, actions = decide(status)
    if new != status or actions:
        store.save_decision(session, row, new, actions, now)
    else:
        session.rollback()
    performed = perform_pending(session, rollout_id, now, notifier)
    return new, performed


def reconcile_once(
    session: Session,
    rollout_id: str,
    now: datetime,
    notifier: ChangeNotifier | None = None,
) -> PassResult:
    """One pass over one rollout; never raises for conditions of the fleet or of the database."""
    try:
        perform_pending(session, rollout_id, now, notifier)

        def decide(status: RolloutStatus) -> Decision:
            return next_state(status, store.observations(session, status), now)

        new, performed = apply_decision(session, rollout_id, decide, now, notifier)
        return PassResult(rollout_id=rollout_id, phase=str(new.phase), performed=performed)
    except ConcurrentUpdate:
        session.rollback()
        return PassResult(rollout_id=rollout_id, phase="unknown", error=None)
    except Exception as exc:  # the loop survives anything; the rollout shows the error
        session.rollback()
        message = f"{type(exc).__name__}: {exc}"
        log.exception("reconcile of rollout %s failed", rollout_id)
        try:
            store.record_error(session, rollout_id, message)
        except Exception:
            session.rollback()
            log.exception("could not record the error of rollout %s", rollout_id)
        return PassResult(rollout_id=rollout_id, phase="unknown", error=message)


def reconcile_all(
    sessions: SessionFactory,
    now: datetime,
    notifier: ChangeNotifier | None = None,
    leader: Leadership | None = None,
) -> list[PassResult]:
    """A pass over every rollout that has work, each in its own session; nothing unless this
    replica leads (``leader``: one replica at a time runs the pass, ``storage.replicas``)."""
    if leader is not None and not leader.leading():
        return []
    with sessions() as session:
        ids = store.active_rollout_ids(session)
    results = []
    for rollout_id in ids:
        with sessions() as session:
            results.append(reconcile_once(session, rollout_id, now, notifier))
    return results


async def run_forever(
    sessions: SessionFactory,
    clock: Callable[[], datetime],
    period_s: float,
    notifier: ChangeNotifier | None = None,
    leader: Leadership | None = None,
) -> None:
    """The app's background task: ``reconcile_all`` every ``period_s`` until cancelled."""
    while True:
        try:
            await run_in_threadpool(reconcile_all, sessions, clock(), notifier, leader)
        except Exception:  # e.g. the database is down: try again next period
            log.exception("reconcile pass failed")
        await asyncio.sleep(period_s)
