"""Remediation playbooks as data: a trigger (alert kind, scope, threshold) and the actions it runs.

``playbooks.yaml`` (or the ``playbooks:`` section of ``params.yaml``)::

    playbooks:
      - name: drift-retrain
        trigger: {kind: input_drift, scope: {class: edge-small}, threshold: 0.25}
        actions:
          - {action: pause_rollout}
          - {action: open_retrain}
          - {action: notify_webhook, url: "https://hooks.example.com/fleet"}
        max_attempts: 3
        backoff_s: 5

A playbook matches an open alert of its ``kind`` whose scope contains every entry of the trigger's
``scope`` and whose value reaches ``threshold``. Each (playbook, alert, action) runs at most once: its
row in ``playbook_runs`` is unique on the three, so a replica, a restart or the next pass never runs it
again. An action that raises is retried after ``backoff_s * 2 ** (attempt - 1)`` until
``max_attempts``, then recorded as ``failed`` with the error; it is not repeated after that. An action
that has nothing to act on records ``skipped`` with the reason.

Actions:

- ``pause_rollout``: pause the model's progressing rollouts (``decide.pause``).
- ``rollback_cohort``: abort the model's open rollouts; every targeted device goes back to stable.
- ``quarantine_device``: the alert's device runs the model's baseline version and takes no new targets.
- ``open_retrain``: write the scope's drifted field data (events and input statistics) to a JSON file
  and create a run of the Prefect deployment ``retrain/<deployment>`` through Prefect's REST API with
  the file's path attached; without ``PREFECT_API_URL`` it records ``skipped: no Prefect API``.
- ``notify_webhook``: POST the alert as JSON to ``url``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet.controller.errors import PolicyError
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.observe.alerts import alert_dict
from fleet.controller.rollout.decide import abort, pause
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.storage import store
from fleet.controller.storage.alerts import open_alerts
from fleet.controller.storage.db import BaselineRow, DeviceRow
from fleet.controller.storage.observe_tables import (
    AlertRow,
    DeviceEventRow,
    InputStatsRow,
    PlaybookRunRow,
    QuarantineRow,
    row_dict,
)
from fleet.shared.backoff import backoff_delay

log = logging.getLogger(__name__)

ActionName = Literal[
    "pause_rollout", "rollback_cohort", "quarantine_device", "open_retrain", "notify_webhook"
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Config):
    kind: str = Field(min_length=1)
    scope: dict[str, str] = Field(default_factory=dict)
    threshold: float | None = None

    def matches(self, alert: AlertRow) -> bool:
        if alert.kind != self.kind:
            return False
        if any(alert.scope.get(k) != v for k, v in self.scope.items()):
            return False
        return self.threshold is None or alert.value >= self.threshold


class PlaybookAction(_Config):
    action: ActionName
    url: str | None = Field(None, description="notify_webhook: where to POST")
    deployment: str = Field("scheduled", description="open_retrain: deployment of flow `retrain`")
    parameters: dict[str, Any] = Field(default_factory=dict, description="open_retrain")


class Playbook(_Config):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    trigger: Trigger
    actions: list[PlaybookAction] = Field(min_length=1)
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_s: float = Field(5.0, ge=0)


class Playbooks(_Config):
    playbooks: list[Playbook] = Field(default_factory=list)


def load_playbooks(raw: object) -> list[Playbook]:
    """Playbooks from parsed YAML (a mapping with ``playbooks:``); :class:`PolicyError` names what is
    wrong."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise PolicyError(f"playbooks must be a mapping with a `playbooks:` list, not {raw!r}")
    try:
        found = Playbooks.model_validate({"playbooks": raw.get("playbooks", [])}).playbooks
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise PolicyError(
            f"playbooks are invalid: {problems}",
            hint="fix the file; its format is in the README (Observing the fleet)",
        ) from exc
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise PolicyError(f"playbook names must be unique, got {names}")
    return found


def load_playbooks_file(path: Path) -> list[Playbook]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read playbooks file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"playbooks file {path} is not valid YAML: {exc}") from exc
    try:
        return load_playbooks(raw)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc.message}", hint=exc.hint) from exc


# --- actions ---------------------------------------------------------------------------------


@dataclass
class ActionContext:
    """What an action may use: the database, the alert, the clock and the outside world."""

    session: Session
    alert: AlertRow
    now: datetime
    notifier: ChangeNotifier | None = None
    http: Callable[[], httpx.Client] = httpx.Client
    prefect_api_url: str | None = field(default_factory=lambda: os.environ.get("PREFECT_API_URL"))
    field_dir: Path = Path(".edgeloop/field-data")


ActionFn = Callable[[ActionContext, PlaybookAction], str]


def _rollouts(ctx: ActionContext, phases: tuple[RolloutPhase, ...]) -> list[str]:
    model = ctx.alert.scope.get("model")
    return [
        r.rollout_id
        for r in store.open_rollouts(ctx.session, model)
        if RolloutPhase(r.phase) in phases
    ]


def _decide_open_rollouts(
    ctx: ActionContext,
    phases: tuple[RolloutPhase, ...],
    decide: Callable[..., Any],
    *,
    none_left: str,
    done: str,
) -> str:
    """Apply ``decide`` (pause or abort) to the alert model's rollouts in ``phases``."""
    from fleet.controller.reconcile import apply_decision

    ids = _rollouts(ctx, phases)
    if not ids:
        return f"skipped: no {none_left} rollout of {ctx.alert.scope.get('model', 'any model')}"
    reason = f"alert {ctx.alert.id}: {ctx.alert.reason}"[:400]
    for rollout_id in ids:
        apply_decision(
            ctx.session, rollout_id, lambda s: decide(s, ctx.now, reason=reason), ctx.now,
            ctx.notifier,
        )  # fmt: skip
    return f"{done} {', '.join(ids)}"


def pause_rollout(ctx: ActionContext, _action: PlaybookAction) -> str:
    return _decide_open_rollouts(
        ctx, (RolloutPhase.PROGRESSING,), pause, none_left="progressing", done="paused"
    )


def rollback_cohort(ctx: ActionContext, _action: PlaybookAction) -> str:
    phases = (RolloutPhase.PENDING, RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)
    return _decide_open_rollouts(ctx, phases, abort, none_left="open", done="rolled back")


def quarantine_device(ctx: ActionContext, _action: PlaybookAction) -> str:
    device_id = ctx.alert.scope.get("device")
    if not device_id or ctx.session.get(DeviceRow, device_id) is None:
        return "skipped: the alert names no enrolled device"
    model = ctx.alert.scope.get("model", "")
    baseline = ctx.session.get(BaselineRow, model)
    version = baseline.version if baseline is not None else None
    if ctx.session.get(QuarantineRow, device_id) is None:
        ctx.session.add(
            QuarantineRow(
                device_id=device_id, model=model, version=version,
                reason=f"alert {ctx.alert.id}: {ctx.alert.reason}"[:2000], created_at=ctx.now,
            )
        )  # fmt: skip
    changed: list[str] = []
    if version is not None:
        changed = store.target_devices(
            ctx.session, [device_id], model=model, version=version, rollout_id=None, now=ctx.now
        )
    ctx.session.commit()
    if changed and ctx.notifier is not None:
        ctx.notifier.notify(changed)
    return f"quarantined {device_id} on {model} {version or '(no baseline)'}"


def write_field_data(ctx: ActionContext) -> Path:
    """The drifted field data of the alert's scope (its model version's device events and input
    statistics) as one JSON file; returns its path."""
    scope = ctx.alert.scope
    events = select(DeviceEventRow).where(DeviceEventRow.kind == "input_drift")
    stats = select(InputStatsRow)
    for column_e, column_s, key in (
        (DeviceEventRow.model, InputStatsRow.model, "model"),
        (DeviceEventRow.version, InputStatsRow.version, "version"),
    ):
        if scope.get(key):
            events, stats = (
                events.where(column_e == scope[key]),
                stats.where(column_s == scope[key]),
            )
    drifted = {e.device_id: e for e in ctx.session.scalars(events.limit(10_000))}
    rows = ctx.session.scalars(
        stats.where(InputStatsRow.device_id.in_(list(drifted))).limit(10_000)
    )
    data = {
        "alert": alert_dict(ctx.alert),
        "events": [
            {"device": e.device_id, "feature": e.feature, "psi": e.value} for e in drifted.values()
        ],
        "input_stats": [{"device": r.device_id, "version": r.version, **r.stats} for r in rows],
    }
    ctx.field_dir.mkdir(parents=True, exist_ok=True)
    path = (ctx.field_dir / f"alert-{ctx.alert.id}.json").resolve()
    path.write_text(json.dumps(data, indent=1))
    return path


def open_retrain(ctx: ActionContext, action: PlaybookAction) -> str:
    if not ctx.prefect_api_url:
        return "skipped: no Prefect API (PREFECT_API_URL is not set)"
    path = write_field_data(ctx)
    api = ctx.prefect_api_url.rstrip("/")
    with ctx.http() as client:
        found = client.get(f"{api}/deployments/name/retrain/{action.deployment}", timeout=10)
        found.raise_for_status()
        deployment_id = found.json()["id"]
        created = client.post(
            f"{api}/deployments/{deployment_id}/create_flow_run",
            json={
                "parameters": dict(action.parameters),
                "tags": ["edgeloop.playbook", f"edgeloop.alert.{ctx.alert.id}"],
                "job_variables": {"env": {"EDGELOOP_FIELD_DATA": str(path)}},
            },
            timeout=10,
        )
        created.raise_for_status()
    return f"flow run {created.json().get('id')} of retrain/{action.deployment}; field data {path}"


def notify_webhook(ctx: ActionContext, action: PlaybookAction) -> str:
    if not action.url:
        return "skipped: notify_webhook has no url"
    with ctx.http() as client:
        response = client.post(action.url, json=alert_dict(ctx.alert), timeout=10)
        response.raise_for_status()
    return f"POST {action.url}: {response.status_code}"


ACTIONS: dict[str, ActionFn] = {
    "pause_rollout": pause_rollout,
    "rollback_cohort": rollback_cohort,
    "quarantine_device": quarantine_device,
    "open_retrain": open_retrain,
    "notify_webhook": notify_webhook,
}


# --- running them ----------------------------------------------------------------------------


def schedule(session: Session, playbooks: list[Playbook], now: datetime) -> int:
    """A pending run for each (playbook, open alert, action) not recorded yet; returns how many."""
    known = set(
        session.execute(
            select(PlaybookRunRow.playbook, PlaybookRunRow.alert_id, PlaybookRunRow.action)
        ).all()
    )
    added = 0
    for alert in open_alerts(session):
        for playbook in playbooks:
            if not playbook.trigger.matches(alert):
                continue
            for action in playbook.actions:
                if (playbook.name, alert.id, action.action) in known:
                    continue
                session.add(
                    PlaybookRunRow(
                        playbook=playbook.name, alert_id=alert.id, action=action.action,
                        cause=f"{alert.kind} {alert.scope_key}: {alert.reason}"[:2000],
                        status="pending", result="", attempts=0, next_attempt_at=now,
                        created_at=now, updated_at=now,
                    )
                )  # fmt: skip
                added += 1
    try:
        session.commit()
    except IntegrityError:  # another replica scheduled them first
        session.rollback()
        return 0
    return added


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
    due = session.scalars(
        select(PlaybookRunRow)
        .where(PlaybookRunRow.status == "pending", PlaybookRunRow.next_attempt_at <= now)
        .order_by(PlaybookRunRow.id)
    ).all()
    done = []
    for run in due:
        playbook = by_name.get(run.playbook)
        alert = session.get(AlertRow, run.alert_id)
        action = (
            next((a for a in playbook.actions if a.action == run.action), None)
            if playbook
            else None
        )
        if playbook is None or alert is None or action is None:
            run.status, run.result, run.next_attempt_at = (
                "failed",
                "playbook no longer configured",
                None,
            )
            session.commit()
            continue
        if not _claim(session, run, now):
            continue  # another replica took this attempt
        ctx = context(session, alert, now) if context else ActionContext(session, alert, now)
        try:
            result = actions[run.action](ctx, action)
        except Exception as exc:  # any failure is recorded and retried, never raised
            session.rollback()
            message = f"attempt {run.attempts}: {type(exc).__name__}: {exc}"[:2000]
            if run.attempts >= playbook.max_attempts:
                run.status, run.next_attempt_at = "failed", None
            else:
                delay = backoff_delay(run.attempts, initial_s=playbook.backoff_s)
                run.next_attempt_at = now + timedelta(seconds=delay)
            run.result = message
            log.warning(
                "playbook %s alert %s %s: %s", run.playbook, run.alert_id, run.action, message
            )
        else:
            run.status = "skipped" if result.startswith("skipped") else "succeeded"
            run.result, run.next_attempt_at = result[:2000], None
        run.updated_at = now
        session.commit()
        done.append(run)
    return done


def _claim(session: Session, run: PlaybookRunRow, now: datetime) -> bool:
    """Count one attempt, committed before the action runs (a process that dies inside the action
    used its attempt), and only if nobody else counted it first: two replicas never run the same
    attempt."""
    seen = run.attempts
    claimed = session.execute(
        update(PlaybookRunRow)
        .where(
            PlaybookRunRow.id == run.id,
            PlaybookRunRow.attempts == seen,
            PlaybookRunRow.status == "pending",
        )
        .values(attempts=seen + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(run)
    return getattr(claimed, "rowcount", 0) == 1


def run_dict(row: PlaybookRunRow) -> dict[str, Any]:
    return row_dict(row)


def list_playbook_runs(
    session: Session, *, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Playbook runs, newest first, as JSON-ready dicts (for the API and the dashboard)."""
    rows = session.scalars(
        select(PlaybookRunRow).order_by(PlaybookRunRow.id.desc()).limit(limit).offset(offset)
    )
    return [run_dict(r) for r in rows]
