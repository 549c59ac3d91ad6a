"""Alerts: raised by the aggregation's detectors, deduplicated, rate-limited, read by the dashboard.

- Dedup: while an alert of ``(kind, scope)`` is open, the same finding adds an occurrence (and the
  latest value and reason) to it instead of opening another; a storm of devices reporting one cause
  is one alert.
- Rate limit: at most ``max_new_per_scope`` alerts are opened per scope within ``rate_window_s``;
  findings past that are counted on the scope's latest alert (``suppressed``), never lost silently.

A scope is a dict over ``model``, ``version``, ``class``, ``label`` and ``device``; its key is the sorted
``k=v`` pairs, so two scopes are the same exactly when their non-empty entries are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import AlertRow, row_dict

SCOPE_KEYS = ("model", "version", "class", "label", "device")
AlertStatus = Literal["open", "closed"]


@dataclass(frozen=True)
class AlertRules:
    max_new_per_scope: int = 3
    rate_window_s: float = 600.0


def scope_key(scope: dict[str, str]) -> str:
    unknown = set(scope) - set(SCOPE_KEYS)
    if unknown:
        raise ValueError(f"unknown scope keys {sorted(unknown)}; known: {SCOPE_KEYS}")
    return ",".join(f"{k}={scope[k]}" for k in SCOPE_KEYS if scope.get(k))


def raise_alert(
    session: Session,
    *,
    kind: str,
    scope: dict[str, str],
    value: float,
    threshold: float,
    reason: str,
    now: datetime,
    rules: AlertRules | None = None,
) -> AlertRow | None:
    """The open alert of ``(kind, scope)``, new or updated; None when the scope's rate limit
    suppressed it. Flushes, does not commit."""
    rules = rules or AlertRules()
    key = scope_key(scope)
    open_row = session.scalars(
        select(AlertRow).where(
            AlertRow.kind == kind, AlertRow.scope_key == key, AlertRow.status == "open"
        )
    ).first()
    if open_row is not None:
        open_row.occurrences += 1
        open_row.value, open_row.reason, open_row.last_seen_at = value, reason, now
        session.flush()
        return open_row
    since = now - timedelta(seconds=rules.rate_window_s)
    recent = session.scalar(
        select(func.count()).where(AlertRow.scope_key == key, AlertRow.opened_at >= since)
    )
    if (recent or 0) >= rules.max_new_per_scope:
        latest = session.scalars(
            select(AlertRow).where(AlertRow.scope_key == key).order_by(AlertRow.id.desc())
        ).first()
        if latest is not None:
            latest.suppressed += 1
            session.flush()
        return None
    row = AlertRow(
        kind=kind,
        scope_key=key,
        scope={k: v for k, v in scope.items() if v},
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


def close_stale(session: Session, now: datetime, quiet_s: float) -> int:
    """Close open alerts not seen for ``quiet_s``; returns how many. Flushes."""
    cutoff = now - timedelta(seconds=quiet_s)
    rows = session.scalars(
        select(AlertRow).where(AlertRow.status == "open", AlertRow.last_seen_at < cutoff)
    ).all()
    for row in rows:
        row.status, row.closed_at = "closed", now
    session.flush()
    return len(rows)


def open_alerts(session: Session) -> list[AlertRow]:
    return list(
        session.scalars(select(AlertRow).where(AlertRow.status == "open").order_by(AlertRow.id))
    )


def alert_dict(row: AlertRow) -> dict[str, Any]:
    return row_dict(row, leave_out=("scope_key",))


def list_alerts(
    session: Session, *, status: Literal["open", "all"] = "open", limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Alerts, newest first, as JSON-ready dicts (for the API and the dashboard)."""
    query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit).offset(offset)
    if status == "open":
        query = query.where(AlertRow.status == "open")
    return [alert_dict(r) for r in session.scalars(query)]
