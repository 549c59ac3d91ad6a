"""The observation pass: aggregate the last window, detect, raise alerts, run playbooks.

``observe_once`` is what the controller's background task runs every ``period_s`` (``start``/``stop``
are its lifetime, used by the app): it folds the window's telemetry and device events into series
(``aggregate``), raises

- ``input_drift`` per model version and class when enough devices report input drift (the reason
  names the worst feature, its PSI and the devices);
- ``<metric>_anomaly`` when a series leaves its robust median/MAD band (``anomaly.RobustZ``):
  latency p95 and error rate upwards, accuracy downwards;
- ``latency_regression`` and ``error_burst`` per device, from the device's own detectors;

closes alerts quiet for ``alert_quiet_s``, deletes raw observations older than ``retention_s``,
then schedules and executes the matching playbooks. Each
step commits; a failing pass is logged and the next one tries again.

A fleet alert (input drift, a series anomaly) needs ``alert_min_devices`` distinct devices behind it:
a device's reports are its own word, so one device, broken or lying, never raises one alone (nor,
through it, a playbook acting on the fleet). The per-device alerts are about the reporting device
itself.

Settings come from ``EDGELOOP_FLEET_OBSERVE_*`` variables (:class:`ObserveSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.observe import aggregate, alerts
from fleet.controller.observe.anomaly import Direction, RobustZ
from fleet.controller.observe.playbooks import actions as playbook_actions
from fleet.controller.observe.playbooks import config as playbook_config
from fleet.controller.observe.playbooks import runner as playbook_runner
from fleet.controller.storage import events, series, store
from fleet.controller.storage.db import Session, SessionFactory
from fleet.controller.storage.observe_tables import AlertRow
from fleet.controller.storage.replicas import Leadership

log = logging.getLogger(__name__)

WATCHED: tuple[tuple[str, Direction, str], ...] = (
    ("latency_p95_ms", "up", "anomaly_min_latency_ms"),
    ("error_rate", "up", "anomaly_min_rate"),
    ("accuracy", "down", "anomaly_min_rate"),
)
"""Series watched for anomalies: the side that hurts, and the setting with the smallest change worth
an alert."""
DEVICE_KINDS = ("latency_regression", "error_burst")


class ObserveSettings(BaseSettings):
    """Knobs of the observation pass; each has an ``EDGELOOP_FLEET_OBSERVE_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_FLEET_OBSERVE_", extra="ignore")

    enabled: bool = Field(True, description="run the observation pass in the background")
    period_s: float = Field(5.0, gt=0, description="how often the pass runs")
    window_s: float = Field(30.0, gt=0, description="the window each pass aggregates")
    alert_min_devices: int = Field(
        2,
        ge=1,
        description="distinct devices behind a fleet alert (reporting input drift, or in the "
        "window of an anomalous series): one device's noise (or one device lying) never raises one",
    )
    drift_min_fraction: float = Field(
        0.05, ge=0, le=1, description="and at least this share of the scope's devices"
    )
    anomaly_threshold: float = Field(3.5, gt=0, description="robust z beyond which a point alerts")
    anomaly_history: int = Field(24, ge=4, description="past windows an anomaly is judged against")
    anomaly_min_history: int = Field(8, ge=3)
    anomaly_min_latency_ms: float = Field(
        1.0, ge=0, description="smallest p95 rise (ms) over the median worth a latency alert"
    )
    anomaly_min_rate: float = Field(
        0.01, ge=0, description="smallest move of error rate or accuracy (0.01 = 1 point)"
    )
    max_new_alerts_per_scope: int = Field(3, ge=1)
    rate_window_s: float = Field(600.0, gt=0)
    alert_quiet_s: float = Field(600.0, gt=0, description="close an alert not seen for this long")
    playbooks_path: Path = Field(Path("playbooks.yaml"), description="missing file: no playbooks")
    retention_s: float = Field(
        7 * 86_400, gt=0, description="device events, input statistics and series kept this long"
    )

    def rules(self) -> alerts.AlertRules:
        return alerts.AlertRules(self.max_new_alerts_per_scope, self.rate_window_s)

    def load_playbooks(self) -> list[playbook_config.Playbook]:
        if not self.playbooks_path.is_file():
            return []
        return playbook_config.load_playbooks_file(self.playbooks_path)


def _scope(s: aggregate.Scope) -> dict[str, str]:
    out = {"model": s.model, "version": s.version, "class": s.hardware_class}
    if s.label != aggregate.ALL:
        out["label"] = s.label
    return out


def detect(session: Session, now: datetime, settings: ObserveSettings) -> list[AlertRow]:
    """Aggregate the window ending at ``now`` and raise what it shows; commits."""
    rules = settings.rules()
    points, findings = aggregate.aggregate_window(session, now, settings.window_s)
    raised: list[AlertRow | None] = []
    for f in findings:
        fraction = len(f.drifted) / max(1, f.devices)
        if len(f.drifted) < settings.alert_min_devices or fraction < settings.drift_min_fraction:
            continue
        reason = (
            f"input drift on feature {f.feature}: PSI {f.psi:.2f} > {f.threshold:.2f} "
            f"on {len(f.drifted)}/{f.devices} devices of {f.scope.hardware_class} running "
            f"{f.scope.model} {f.scope.version} (worst: {f.worst_device})"
        )
        raised.append(
            alerts.raise_alert(
                session, kind="input_drift", scope=_scope(f.scope), value=f.psi,
                threshold=f.threshold, reason=reason, now=now, rules=rules,
            )
        )  # fmt: skip
    for scope, metrics in points.items():
        for metric, direction, min_change in WATCHED:
            if metric not in metrics:
                continue
            value, devices, _samples = metrics[metric]
            if devices < settings.alert_min_devices:
                continue
            detector = RobustZ(
                threshold=settings.anomaly_threshold,
                min_history=settings.anomaly_min_history,
                direction=direction,
                min_change=getattr(settings, min_change),
            )
            past = series.history(session, scope, metric, now, settings.anomaly_history)
            if not detector.is_anomaly(past, value):
                continue
            limit = detector.limit(past)
            assert limit is not None
            side = "above" if direction == "up" else "below"
            reason = (
                f"{metric} {value:.4g} is {side} its robust limit {limit:.4g} (median/MAD over "
                f"{len(past)} windows, z {detector.score(past, value):.1f}, {devices} devices) for "
                f"{scope.model} {scope.version} on {scope.hardware_class}"
                + (f" {scope.label}" if scope.label != aggregate.ALL else "")
            )
            raised.append(
                alerts.raise_alert(
                    session, kind=f"{metric}_anomaly", scope=_scope(scope), value=value,
                    threshold=limit, reason=reason, now=now, rules=rules,
                )
            )  # fmt: skip
    raised += _device_alerts(session, now, settings)
    alerts.close_stale(session, now, settings.alert_quiet_s)
    series.prune(session, now - timedelta(seconds=settings.retention_s))
    session.commit()
    return [a for a in raised if a is not None]


def _device_alerts(
    session: Session, now: datetime, settings: ObserveSettings
) -> list[AlertRow | None]:
    start = now - timedelta(seconds=settings.window_s)
    out: list[AlertRow | None] = []
    for e in events.events_between(session, DEVICE_KINDS, start, now):
        device = store.device(session, e.device_id)
        reason = (
            f"{e.kind} on device {e.device_id}: {e.value:.4g} > {e.threshold:.4g} over "
            f"{e.window_s:.0f} s ({e.model} {e.version}; device action: {e.action})"
        )
        scope = {
            "model": e.model,
            "version": e.version,
            "class": device.hardware_class if device else "",
            "device": e.device_id,
        }
        out.append(
            alerts.raise_alert(
                session, kind=e.kind, scope=scope, value=e.value, threshold=e.threshold,
                reason=reason, now=now, rules=settings.rules(),
            )
        )  # fmt: skip
    return out


def observe_once(
    sessions: SessionFactory,
    now: datetime,
    settings: ObserveSettings,
    books: list[playbook_config.Playbook],
    notifier: ChangeNotifier | None = None,
    actions: dict[str, playbook_actions.ActionFn] | None = None,
) -> dict[str, Any]:
    """One pass: detect, then schedule and execute playbooks; returns what it did."""
    with sessions() as session:
        raised = detect(session, now, settings)
    with sessions() as session:
        scheduled = playbook_runner.schedule(session, books, now)

        def context(s: Session, alert: AlertRow, at: datetime) -> playbook_actions.ActionContext:
            return playbook_actions.ActionContext(s, alert, at, notifier=notifier)

        runs = playbook_runner.execute_due(
            session, books, now, actions=actions or playbook_actions.ACTIONS, context=context
        )
        return {
            "alerts": [a.id for a in raised],
            "scheduled": scheduled,
            "runs": [(r.playbook, r.action, r.status) for r in runs],
        }


@dataclass(frozen=True)
class Observer:
    """The pass's settings and playbooks, read once when the app is built."""

    settings: ObserveSettings
    books: list[playbook_config.Playbook]


def configure() -> Observer:
    """Settings from the environment and the playbooks file; a bad file raises
    :class:`~fleet.controller.errors.PolicyError` naming it, before the controller serves."""
    settings = ObserveSettings()
    return Observer(settings, settings.load_playbooks())


async def run_forever(
    sessions: SessionFactory,
    clock: Callable[[], datetime],
    observer: Observer,
    notifier: ChangeNotifier | None = None,
    leader: Leadership | None = None,
) -> None:
    settings, books = observer.settings, observer.books

    def observe_if_leading(now: datetime) -> None:
        # One replica observes: two would fold the same window twice (the loser's pass fails on
        # the series' unique key) and could open the same alert twice (found, then added).
        if leader is None or leader.leading():
            observe_once(sessions, now, settings, books, notifier)

    while True:
        try:
            await run_in_threadpool(observe_if_leading, clock())
        except Exception:  # the database may be down: try again next period
            log.exception("observation pass failed")
        await asyncio.sleep(settings.period_s)


def start(
    sessions: SessionFactory,
    clock: Callable[[], datetime],
    notifier: ChangeNotifier,
    observer: Observer,
    leader: Leadership | None = None,
) -> asyncio.Task[None] | None:
    """The app's observation task (None when disabled); it observes while ``leader`` leads."""
    if not observer.settings.enabled:
        return None
    return asyncio.create_task(run_forever(sessions, clock, observer, notifier, leader))


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
