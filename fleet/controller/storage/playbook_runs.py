"""Repository functions over ``playbook_runs``: one row per (playbook, alert, action), its attempts
and outcome.

The row is unique on the three, so scheduling twice (a replica, a restart, the next pass) adds
nothing; an attempt is claimed with a conditional update, so two replicas never run the same one.
When and what to run is ``observe.playbooks.runner``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import PlaybookRunRow

PendingRun = tuple[str, int, str, str]
"""``(playbook, alert_id, action, cause)`` of a run to schedule."""


def known_runs(session: Session) -> set[tuple[str, int, str]]:
    """``(playbook, alert_id, action)`` of every run recorded."""
    return {
        (playbook, alert_id, action)
        for playbook, alert_id, action in session.execute(
            select(PlaybookRunRow.playbook, PlaybookRunRow.alert_id, PlaybookRunRow.action)
        ).all()
    }


def add_pending(session: Session, runs: Iterable[PendingRun], now: datetime) -> bool:
    """Record ``runs`` as pending, due now, in one commit; False (and nothing recorded) when another
    replica recorded one of them first."""
    for playbook, alert_id, action, cause in runs:
        session.add(
            PlaybookRunRow(
                playbook=playbook, alert_id=alert_id, action=action, cause=cause[:2000],
                status="pending", result="", attempts=0, next_attempt_at=now,
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
