"""The rollout outcome feed: how each rollout attempt ended, in one ordered, resumable sequence.

The registry follower (``registry.follower``) reads it with ``GET /v1/outcomes?after=<id>`` and
writes each entry to MLflow; the controller itself never talks to MLflow.

Why a table of its own rather than the ``record_outcome`` rows of the outbox: a reader pages by
"everything after the last id I applied", which is only safe if no row can ever appear below an id
already read. Outbox ids come from an autoincrement that every action of every rollout shares; on
PostgreSQL two transactions (two replicas, or a command and the reconcile pass) can take ids 7 and
8 and commit 8 first, and a reader that saw 8 would never see 7. Here the id is ``max(id) + 1``,
taken in the transaction that saves the decision (:func:`record`, called by
``store.save_decision``): a second writer of the same id fails on the primary key when the first
commits, and its whole decision is retried (``ConcurrentUpdate``), so ids are committed in order
and without gaps. The outbox stays the controller's private record of what it owes; this table is
the contract, and nothing deletes from it.

Registered on the controller's ``Base.metadata`` (``db`` imports this module); migration 0014
creates it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet.controller.rollout.actions import RecordOutcome
from fleet.controller.storage.db import ID, Base, UTCDateTime


class RolloutOutcomeRow(Base):
    """One attempt's outcome, saved in the transaction of the decision that called for it."""

    __tablename__ = "rollout_outcomes"
    __table_args__ = (
        UniqueConstraint("rollout_id", "attempt", "transition", name="uq_rollout_outcome"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=False)
    """The feed position: ``max(id) + 1`` when written, so committed ids have no gaps."""
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id"))
    attempt: Mapped[int] = mapped_column(Integer)
    transition: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    stable_version: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


def record(session: Session, action: RecordOutcome, now: datetime) -> None:
    """Add the outcome ``action`` calls for at the end of the feed. Does not commit: the caller
    commits it with the decision (a clash on the id surfaces there as an ``IntegrityError``)."""
    session.add(
        RolloutOutcomeRow(
            id=head(session) + 1,
            rollout_id=action.rollout_id,
            attempt=action.attempt,
            transition=action.transition,
            model=action.model,
            version=action.version,
            stable_version=action.stable_version,
            status=action.outcome,
            reason=action.reason,
            at=now,
        )
    )


def outcomes_after(
    session: Session, after: int, limit: int, rollout_id: str | None = None
) -> list[RolloutOutcomeRow]:
    """Outcomes with ``id > after`` in id order, at most ``limit`` (of one rollout, if given)."""
    query = select(RolloutOutcomeRow).where(RolloutOutcomeRow.id > after)
    if rollout_id is not None:
        query = query.where(RolloutOutcomeRow.rollout_id == rollout_id)
    return list(session.scalars(query.order_by(RolloutOutcomeRow.id).limit(limit)))


def head(session: Session) -> int:
    """The highest id in the feed (0 when empty)."""
    return session.scalar(select(func.max(RolloutOutcomeRow.id))) or 0
