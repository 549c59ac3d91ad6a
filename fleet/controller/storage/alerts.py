"""Repository functions over the ``alerts`` table: find, open, update and close alerts.

The rules (deduplication per kind and scope, rate limit per scope) are ``observe.alerts``'s; these
functions only read and write rows. They flush and never commit: the observation pass commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import AlertRow


def open_alert(session: Session, kind: str, scope_key: str) -> AlertRow | None:
    """The open alert of ``(kind, scope)``, if any."""
    return session.scalars(
        select(AlertRow).where(
            AlertRow.kind == kind, AlertRow.scope_key == scope_key, AlertRow.status == "open"
        )
    ).first()


def add_occurrence(
    session: Session, row: AlertRow, value: float, reason: str, now: datetime
) -> AlertRow:
    """One more occurrence of an open alert, with its latest value and reason. Flushes."""
    row.occurrences += 1
    row.value, row.reason, row.last_seen_at = value, reason, now
    session.flush()
    return row


def opened_since(session: Session, scope_key: str, since: datetime) -> int:
    """How many alerts of the scope were opened at or after ``since``."""
    return (
        session.scalar(
            select(func.count()).where(AlertRow.scope_key == scope_key, AlertRow.opened_at >= since)
        )
        or 0
    )


def count_suppressed(session: Session, scope_key: str) -> None:
    """Count one suppressed finding on the scope's latest alert (if it has one). Flushes."""
    latest = session.scalars(
        select(AlertRow).where(AlertRow.scope_key == scope_key).order_by(AlertRow.id.desc())
    ).first()
    if latest is not None:
        latest.suppressed += 1
        session.flush()


def insert_alert(
    session: Session,
    *,
    kind: str,
    scope_key: str,
    scope: dict[str, str],
    value: float,
    threshold: float,
    reason: str,
    now: datetime,
) -> AlertRow:
    """A new open alert with one occurrence. Flushes."""
    row = AlertRow(
        kind=kind,
        scope_key=scope_key,
        scope=scope,
        value=value,
        threshold=threshold,
        reason=reason,
        status="open",
        occurrences=1,
        suppressed=0,
        opened_at=now,
        last_seen_at=now,
    )
    session.add(row)
    session.flush()
    return row


def close_seen_before(session: Session, cutoff: datetime, now: datetime) -> int:
    """Close the open alerts last seen before ``cutoff``; returns how many. Flushes."""
    rows = session.scalars(
        select(AlertRow).where(AlertRow.status == "open", AlertRow.last_seen_at < cutoff)
    ).all()
    for row in rows:
        row.status, row.closed_at = "closed", now
    session.flush()
    return len(rows)


def open_alerts(session: Session) -> list[AlertRow]:
    """Open alerts, oldest first."""
    return list(
        session.scalars(select(AlertRow).where(AlertRow.status == "open").order_by(AlertRow.id))
    )


def alert(session: Session, alert_id: int) -> AlertRow | None:
    return session.get(AlertRow, alert_id)


def newest_alerts(
    session: Session, *, status: Literal["open", "all"] = "open", limit: int = 100, offset: int = 0
) -> list[AlertRow]:
    """Alerts, newest first, one page."""
    query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit).offset(offset)
    if status == "open":
        query = query.where(AlertRow.status == "open")
    return list(session.scalars(query))
