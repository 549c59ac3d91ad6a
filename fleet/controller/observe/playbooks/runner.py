"""Running playbooks: a pending run for each (playbook, open alert, action) that matches, each run
claimed before its action, retried with backoff up to ``max_attempts`` and recorded with its cause.

A playbook's fleet actions act on at most ``max_runs_per_model`` alerts of one model per
``rate_window_s`` (``config``'s module docstring says why). The count is read from the runs table
when a run is scheduled, so it holds across replicas sharing the database; a run past it is
recorded as ``limited`` with the reason (the API, the dashboard and ``/metrics`` list it like any
run) and never performed. The alerts of a model are taken oldest first, so the first ones are acted
on and the flood behind them is held back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from fleet.controller.observe.playbooks.actions import ACTIONS, ActionContext, ActionFn
from fleet.controller.observe.playbooks.config import FLEET_ACTIONS, Playbook
from fleet.controller.storage import alerts as stored_alerts
from fleet.controller.storage import playbook_runs as runs_table
from fleet.controller.storage.db import Session
from fleet.controller.storage.observe_tables import AlertRow, PlaybookRunRow, row_dict
from fleet.shared.backoff import backoff_delay

log = logging.getLogger(__name__)


def schedule(session: Session, playbooks: list[Playbook], now: datetime) -> int:
    """A run for each (playbook, open alert, action) not recorded yet, pending or held back by the
    playbook's rate limit; returns how many were recorded."""
    known = runs_table.known_runs(session)
    acted: dict[tuple[str, str], set[int]] = {}  # (playbook, model): alerts its fleet actions took
    pending: list[runs_table.PendingRun] = []
    for alert in stored_alerts.open_alerts(session):
        model = alert.scope.get("model", "")
        for playbook in playbooks:
            if not playbook.trigger.matches(alert):
                continue
            new = [
                a.action
                for a in playbook.actions
                if (playbook.name, alert.id, a.action) not in known
            ]
            if not new:
                continue
            limited = None
            if FLEET_ACTIONS.intersection(new):
                limited = _over_limit(session, acted, playbook, alert, model, now)
            cause = f"{alert.kind} {alert.scope_key}: {alert.reason}"
            for action in new:
                held = limited if action in FLEET_ACTIONS else None
                pending.append(
                    runs_table.PendingRun(playbook.name, alert.id, action, cause, model, held)
                )
    if not runs_table.add_pending(session, pending, now):
        return 0
    return len(pending)


def _over_limit(
    session: Session,
    acted: dict[tuple[str, str], set[int]],
    playbook: Playbook,
    alert: AlertRow,
    model: str,
    now: datetime,
) -> str | None:
    """Why ``playbook`` may not act on ``alert`` (its rate limit for ``model`` is spent), or None,
    counting the alert in ``acted`` when it may."""
    key = (playbook.name, model)
    if key not in acted:
        since = now - timedelta(seconds=playbook.rate_window_s)
        acted[key] = runs_table.alerts_acted_on(session, playbook.name, model, FLEET_ACTIONS, since)
    taken = acted[key]
    if alert.id in taken:
        return None
    if len(taken) >= playbook.max_runs_per_model:
        return (
            f"limited: playbook {playbook.name} already acted on {len(taken)} alerts of model "
            f"{model or '(none)'} within {playbook.rate_window_s:g} s (max_runs_per_model "
            f"{playbook.max_runs_per_model}); not performed"
        )
    taken.add(alert.id)
    return None


def execute_due(
    session: Session,
    playbooks: list[Playbook],
    now: datetime,
    *,
    actions: Mapping[str, ActionFn] = ACTIONS,
    context: Callable[[Session, AlertRow, datetime], ActionContext] | None = None,
) -> list[PlaybookRunRow]:
    """Run every pending action whose time has come, in order; each attempt is committed."""
    by_name = {p.name: p for p in playbooks}
    done = []
    for run in runs_table.due_runs(session, now):
        playbook = by_name.get(run.playbook)
        alert = stored_alerts.alert(session, run.alert_id)
        action = (
            next((a for a in playbook.actions if a.action == run.action), None)
            if playbook
            else None
        )
        if playbook is None or alert is None or action is None:
            runs_table.record(
                session, run, status="failed", result="playbook no longer configured",
                next_attempt_at=None,
            )  # fmt: skip
            continue
        if not runs_table.claim(session, run, now):
            continue  # another replica took this attempt
        ctx = context(session, alert, now) if context else ActionContext(session, alert, now)
        try:
            result = actions[run.action](ctx, action)
        except Exception as exc:  # any failure is recorded and retried, never raised
            session.rollback()
            message = f"attempt {run.attempts}: {type(exc).__name__}: {exc}"[:2000]
            if run.attempts >= playbook.max_attempts:
                status, next_attempt_at = "failed", None
            else:
                delay = backoff_delay(run.attempts, initial_s=playbook.backoff_s)
                status, next_attempt_at = "pending", now + timedelta(seconds=delay)
            log.warning(
                "playbook %s alert %s %s: %s", run.playbook, run.alert_id, run.action, message
            )
            runs_table.record(
                session, run, status=status, result=message, next_attempt_at=next_attempt_at,
                now=now,
            )  # fmt: skip
        else:
            status = "skipped" if result.startswith("skipped") else "succeeded"
            runs_table.record(
                session, run, status=status, result=result, next_attempt_at=None, now=now
            )
        done.append(run)
    return done


def run_dict(row: PlaybookRunRow) -> dict[str, Any]:
    """The run as the API's ``PlaybookRun`` shows it: the model it was counted under is in its
    cause (the alert's scope) and, when limited, in its result."""
    return row_dict(row, leave_out=("model",))


def list_playbook_runs(
    session: Session, *, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Playbook runs, newest first, as JSON-ready dicts (for the API and the dashboard)."""
    return [run_dict(r) for r in runs_table.newest_runs(session, limit=limit, offset=offset)]
