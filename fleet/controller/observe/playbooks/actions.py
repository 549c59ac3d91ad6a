"""Playbooks' actions: what each one does to the fleet or the outside world, given the alert.

Each action takes an :class:`ActionContext` and its :class:`~.config.PlaybookAction` and returns a
one-line result (``skipped: ...`` when it has nothing to act on); it raises when it failed, and the
runner retries it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from fleet.controller.errors import PlaybookActionFailed
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.observe.alerts import alert_dict
from fleet.controller.observe.playbooks.config import PlaybookAction
from fleet.controller.rollout.decide import abort, pause
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.storage import store
from fleet.controller.storage.db import Session
from fleet.controller.storage.observe_tables import AlertRow
from fleet.shared.admin_protocol import Alert

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

RETRAIN_FLOW = "scheduled-retrain"
"""The Prefect flow of ``flows/scheduled.py`` whose deployment ``open_retrain`` runs; spelled out here
because the controller is a layer below ``flows`` and cannot import ``flows.deployments``."""


def prefect_client(api_url: str, httpx_settings: dict[str, Any] | None = None) -> SyncPrefectClient:
    """Prefect's synchronous client for the API at ``api_url`` (10 s timeout). Prefect is imported
    here, not at the top: the controller starts without loading it, and only ``open_retrain`` of a
    controller with ``PREFECT_API_URL`` pays for it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return get_client(
            httpx_settings={"timeout": 10, **(httpx_settings or {})}, sync_client=True
        )


@dataclass
class ActionContext:
    """What an action may use: the database, the alert, the clock and the outside world."""

    session: Session
    alert: AlertRow
    now: datetime
    notifier: ChangeNotifier | None = None
    http: Callable[[], httpx.Client] = httpx.Client
    prefect_api_url: str | None = field(default_factory=lambda: os.environ.get("PREFECT_API_URL"))
    prefect: Callable[[str], SyncPrefectClient] = prefect_client


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
    if not device_id or store.device(ctx.session, device_id) is None:
        return "skipped: the alert names no enrolled device"
    model = ctx.alert.scope.get("model", "")
    version = store.baseline_version(ctx.session, model)
    reason = f"alert {ctx.alert.id}: {ctx.alert.reason}"
    store.quarantine(ctx.session, device_id, model, version, reason, ctx.now)
    changed: list[str] = []
    if version is not None:
        changed = store.target_devices(
            ctx.session, [device_id], model=model, version=version, rollout_id=None, now=ctx.now
        )
    ctx.session.commit()
    if changed and ctx.notifier is not None:
        ctx.notifier.notify(changed)
    return f"quarantined {device_id} on {model} {version or '(no baseline)'}"


def _active_retrain(client: SyncPrefectClient, deployment_id: Any) -> Any:
    """A run of the retrain deployment that has not ended (scheduled, pending or running), if any."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    found = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active)),
        ),
        limit=1,
    )
    return found[0] if found else None


def open_retrain(ctx: ActionContext, action: PlaybookAction) -> str:
    """Start the retrain deployment with the alert as its parameter ``alert`` (the run pulls the
    field data behind it from this controller: ``flows.fleet_trigger``); a retrain that is already
    under way gets the alert attached (a flow-run tag) instead of a second run."""
    if not ctx.prefect_api_url:
        return "skipped: no Prefect API (PREFECT_API_URL is not set)"
    name = f"{RETRAIN_FLOW}/{action.deployment}"
    alert = Alert.model_validate(alert_dict(ctx.alert)).model_dump(mode="json")
    marker = f"edgeloop.alert.{ctx.alert.id}"  # a Prefect flow-run tag, not an MLflow tag
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        with ctx.prefect(ctx.prefect_api_url) as client:
            deployment = client.read_deployment_by_name(name)
            running = _active_retrain(client, deployment.id)
            if running is not None:
                client.update_flow_run(running.id, tags=sorted({*running.tags, marker}))
                state = running.state.name if running.state else "scheduled"
                return f"attached to flow run {running.id} of {name} ({state}): one retrain"
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={**action.parameters, "alert": alert},
                tags=["edgeloop.playbook", marker],
            )
    except ObjectNotFound as exc:
        raise PlaybookActionFailed(
            f"no Prefect deployment {name} at {ctx.prefect_api_url}"
        ) from exc
    except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
        raise PlaybookActionFailed(f"Prefect API {ctx.prefect_api_url}: {exc}") from exc
    return f"flow run {run.id} of {name} for alert {ctx.alert.id}"


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
