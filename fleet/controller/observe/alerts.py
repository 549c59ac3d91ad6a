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

from fleet.controller.storage import alerts as stored
from fleet.controller.storage.db import Session
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
    open_row = stored.open_alert(session, kind, key)
    if open_row is not None:
        return stored.add_occurrence(session, open_row, value, reason, now)
    since = now - timedelta(seconds=rules.rate_window_s)
    if stored.opened_since(session, key, since) >= rules.max_new_per_scope:
        stored.count_suppressed(session, key)
        return None
    return stored.insert_alert(
        session, kind=kind, scope_key=key, scope={k: v for k, v in scope.items() if v},
        value=value, threshold=threshold, reason=reason, now=now,
    )  # fmt: skip


def close_stale(session: Session, now: datetime, quiet_s: float) -> int:
    """Close open alerts not seen for ``quiet_s``; returns how many. Flushes."""
    return stored.close_seen_before(session, now - timedelta(seconds=quiet_s), now)


def alert_dict(row: AlertRow) -> dict[str, Any]:
    return row_dict(row, leave_out=("scope_key",))


def list_alerts(
    session: Session, *, status: Literal["open", "all"] = "open", limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Alerts, newest first, as JSON-ready dicts (for the API and the dashboard)."""
    return [
        alert_dict(r)
        for r in stored.newest_alerts(session, status=status, limit=limit, offset=offset)
    ]
