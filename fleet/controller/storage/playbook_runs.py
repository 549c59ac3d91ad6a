"""Repository functions over ``playbook_runs``: one row per (playbook, alert, action), its attempts
and outcome.

The row is unique on the three, so scheduling twice (a replica, a restart, the next pass) adds
nothing; an attempt is claimed with a conditional update, so two replicas never run the same one.
Each row also keeps the alert's model, so a playbook's rate limit per model is counted here, in the
database every replica shares (:func:`alerts_acted_on`), never in one process's memory. A run the
limit held back is stored as ``limited`` with the reason, never due.
When and what to run is ``observe.playbooks.runner``'s.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import PlaybookRunRow

LIMITED = "limited"
"""The status of a run the playbook's rate limit held back: recorded, never performed."""


class PendingRun(NamedTuple):
    """A run to schedule; ``limited`` is the reason when the rate limit holds it back."""

    playbook: str
    alert_id: int
    action: str
    cause: str
    model: str = ""
    limited: str | None = None


def known_runs(session: Session) -> set[tuple[str, int, str]]:
    """``(playbook, alert_id, action)`` of every run recorded."""
    return {
        (playbook, alert_id, action)
        for playbook, alert_id, action in session.execute(
            select(PlaybookRunRow.playbook, PlaybookRunRow.alert_id, PlaybookRunRow.action)
        ).all()
    }


def alerts_acted_on(
    session: Session, playbook: str, model: str, actions: Collection[str], since: datetime
) -> set[int]:
    """The alerts of ``model`` for which ``playbook`` scheduled one of ``actions`` (not held back
    by its rate limit) at or after ``since``."""
    return set(
        session.scalars(
            select(PlaybookRunRow.alert_id)
            .where(
                PlaybookRunRow.playbook == playbook,
                PlaybookRunRow.model == model,
                PlaybookRunRow.action.in_(sorted(actions)),
                PlaybookRunRow.status != LIMITED,
                PlaybookRunRow.created_at >= since,
            )
            .distinct()
        )
    )


def add_pending(session: Session, runs: Iterable[PendingRun], now: datetime) -> bool:
    """Record ``runs`` in one commit: pending and due now, or ``limited`` with the reason and never
    due; False (and nothing recorded) when another replica recorded one of them first. That one
    commit is what keeps the rate limit across replicas: two replicas deciding on the same alert
    write the same row, so only the one that counted every run before it lands."""
    for run in runs:
        session.add(
            PlaybookRunRow(
                playbook=run.playbook, alert_id=run.alert_id, action=run.action,
                model=run.model, cause=run.cause[:2000],
                status=LIMITED if run.limited else "pending", result=(run.limited or "")[:2000],
                attempts=0, next_attempt_at=None if run.limited else now,
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    try:
        session.commit()
    except IntegrityError:  # another replica scheduled them first
        session.rollback()
        return False
    return True


CLAIM_LEASE_S = 300.0
"""How long a claimed attempt is another replica's: an action that has not recorded its outcome by
then (its process died inside it) is due again, as its next attempt."""


def due_runs(session: Session, now: datetime) -> Sequence[PlaybookRunRow]:
    """Runs whose next attempt is due (pending, or claimed by a replica whose lease ran out), in
    the order they were scheduled."""
    return session.scalars(
        select(PlaybookRunRow)
        .where(
            PlaybookRunRow.status.in_(("pending", "running")),
            PlaybookRunRow.next_attempt_at <= now,
        )
        .order_by(PlaybookRunRow.id)
    ).all()


def claim(session: Session, run: PlaybookRunRow, now: datetime) -> bool:
    """Count one attempt and mark it ``running`` under a lease of :data:`CLAIM_LEASE_S`, committed
    before the action runs (a process that dies inside the action used its attempt), and only if
    the run is still as this replica read it: one compare-and-set, so two replicas never run the
    same attempt, and a replica that reads the run while another runs it finds it leased, not due."""
    seen = run.attempts
    claimed = session.execute(
        update(PlaybookRunRow)
        .where(
            PlaybookRunRow.id == run.id,
            PlaybookRunRow.attempts == seen,
            PlaybookRunRow.status.in_(("pending", "running")),
            PlaybookRunRow.next_attempt_at <= now,
        )
        .values(
            attempts=seen + 1,
            status="running",
            next_attempt_at=now + timedelta(seconds=CLAIM_LEASE_S),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(run)
    return getattr(claimed, "rowcount", 0) == 1


def record(
    session: Session,
    run: PlaybookRunRow,
    *,
    status: str,
    result: str,
    next_attempt_at: datetime | None,
    now: datetime | None = None,
) -> None:
    """Record the outcome of an attempt (``status`` stays ``pending`` for a retry). Commits."""
    run.status, run.result, run.next_attempt_at = status, result[:2000], next_attempt_at
    if now is not None:
        run.updated_at = now
    session.commit()


def newest_runs(session: Session, *, limit: int = 100, offset: int = 0) -> list[PlaybookRunRow]:
    """Playbook runs, newest first, one page."""
    return list(
        session.scalars(
            select(PlaybookRunRow).order_by(PlaybookRunRow.id.desc()).limit(limit).offset(offset)
        )
    )
