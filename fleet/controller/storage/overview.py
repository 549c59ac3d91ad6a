"""Read-side aggregates of the fleet for ``/metrics`` and the dashboard, computed in SQL.

Everything here is a handful of grouped queries whatever the fleet's size: counts are ``GROUP BY``
in the database, the device table is one page (``LIMIT``/``OFFSET`` on the primary key) plus the
latest report of the devices on that page, and charts read a bounded sample of recent reports. The
version a device runs is the version of its latest report (a device counts as upgraded only once it
reports from the new version); its health comes from when it was last heard from, unless a playbook
quarantined it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from fleet.controller.storage.db import (
    BaselineRow,
    DesiredStateRow,
    DeviceRow,
    RolloutActionRow,
    RolloutRow,
    TelemetryRow,
)
from fleet.controller.storage.observe_tables import AlertRow, PlaybookRunRow, QuarantineRow
from fleet.controller.storage.store import latest_versions

ONLINE_WITHIN_S = 120.0
"""A device heard from within this many seconds is online (long-polls answer within 30 s)."""
NEVER = "never_seen"
ONLINE = "online"
OFFLINE = "offline"
QUARANTINED = "quarantined"
RETIRED = "retired"
HEALTHS = (ONLINE, OFFLINE, NEVER, QUARANTINED, RETIRED)
NO_VERSION = "none"
"""The version label of a device that has not reported yet."""


def health(
    last_seen: datetime | None, now: datetime, quarantined: bool = False, retired: bool = False
) -> str:
    if retired:
        return RETIRED
    if quarantined:
        return QUARANTINED
    if last_seen is None:
        return NEVER
    return ONLINE if last_seen >= now - timedelta(seconds=ONLINE_WITHIN_S) else OFFLINE


def _latest_report_ids() -> Any:
    return (
        select(TelemetryRow.device_id, func.max(TelemetryRow.id).label("report_id"))
        .group_by(TelemetryRow.device_id)
        .subquery()
    )


@dataclass(frozen=True)
class DeviceGroup:
    """How many devices of one class run one version with one health."""

    hardware_class: str
    version: str
    health: str
    devices: int


def device_groups(session: Session, now: datetime) -> list[DeviceGroup]:
    """Devices by hardware class, running version and health: one grouped query."""
    latest = _latest_report_ids()
    online_since = now - timedelta(seconds=ONLINE_WITHIN_S)
    state = case(
        (DeviceRow.retired_at.is_not(None), RETIRED),
        (DeviceRow.device_id.in_(select(QuarantineRow.device_id)), QUARANTINED),
        (DeviceRow.last_seen.is_(None), NEVER),
        (DeviceRow.last_seen >= online_since, ONLINE),
        else_=OFFLINE,
    )
    per_device = (
        select(
            DeviceRow.hardware_class.label("cls"),
            func.coalesce(TelemetryRow.version, NO_VERSION).label("version"),
            state.label("health"),
        )
        .select_from(DeviceRow)
        .outerjoin(latest, latest.c.device_id == DeviceRow.device_id)
        .outerjoin(TelemetryRow, TelemetryRow.id == latest.c.report_id)
        .subquery()
    )  # grouped outside: PostgreSQL would see the bound time twice as two expressions
    query = select(
        per_device.c.cls, per_device.c.version, per_device.c.health, func.count()
    ).group_by(per_device.c.cls, per_device.c.version, per_device.c.health)
    counts = {(c, v, h): int(n) for c, v, h, n in session.execute(query)}
    return [DeviceGroup(c, v, h, n) for (c, v, h), n in sorted(counts.items())]


@dataclass(frozen=True)
class DeviceLine:
    """One row of the device table."""

    device_id: str
    hardware_class: str
    labels: dict[str, str]
    running_version: str
    desired_version: str
    last_seen: datetime | None
    health: str


@dataclass(frozen=True)
class DevicePage:
    lines: list[DeviceLine]
    page: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


def device_page(
    session: Session,
    now: datetime,
    *,
    page: int,
    size: int,
    hardware_class: str | None = None,
) -> DevicePage:
    """One page of devices ordered by id, with what each runs and should run."""
    where: Select[Any] = select(DeviceRow)
    count = select(func.count()).select_from(DeviceRow)
    if hardware_class:
        where = where.where(DeviceRow.hardware_class == hardware_class)
        count = count.where(DeviceRow.hardware_class == hardware_class)
    total = int(session.scalar(count) or 0)
    devices = session.scalars(
        where.order_by(DeviceRow.device_id).limit(size).offset((page - 1) * size)
    ).all()
    ids = [d.device_id for d in devices]
    running = latest_versions(session, ids)
    desired = dict(
        session.execute(
            select(DesiredStateRow.device_id, DesiredStateRow.version).where(
                DesiredStateRow.device_id.in_(ids)
            )
        ).all()
    )
    quarantined = set(
        session.scalars(select(QuarantineRow.device_id).where(QuarantineRow.device_id.in_(ids)))
    )
    lines = [
        DeviceLine(
            device_id=d.device_id,
            hardware_class=d.hardware_class,
            labels=dict(d.labels or {}),
            running_version=running.get(d.device_id) or NO_VERSION,
            desired_version=desired.get(d.device_id) or NO_VERSION,
            last_seen=d.last_seen,
            health=health(d.last_seen, now, d.device_id in quarantined, d.retired_at is not None),
        )
        for d in devices
    ]
    return DevicePage(lines=lines, page=page, size=size, total=total)


@dataclass(frozen=True)
class VersionTotals:
    """Telemetry summed per (model, version, class) over reports with ``id > after``."""

    model: str
    version: str
    hardware_class: str
    reports: int
    inferences: int
    errors: int
    feedback_correct: int
    feedback_total: int


def telemetry_totals(session: Session, after: int, upto: int) -> list[VersionTotals]:
    """Sums of the reports with ids in ``(after, upto]``."""
    rows = session.execute(
        select(
            TelemetryRow.model,
            TelemetryRow.version,
            DeviceRow.hardware_class,
            func.count(),
            func.sum(TelemetryRow.inferences),
            func.sum(TelemetryRow.errors),
            func.sum(TelemetryRow.feedback_correct),
            func.sum(TelemetryRow.feedback_total),
        )
        .join(DeviceRow, DeviceRow.device_id == TelemetryRow.device_id)
        .where(TelemetryRow.id > after, TelemetryRow.id <= upto)
        .group_by(TelemetryRow.model, TelemetryRow.version, DeviceRow.hardware_class)
    ).all()
    return [
        VersionTotals(m, v, c, int(n), int(i or 0), int(e or 0), int(fc or 0), int(ft or 0))
        for m, v, c, n, i, e, fc, ft in rows
    ]


@dataclass(frozen=True)
class ReportSample:
    """What the charts need from one report."""

    received_at: datetime
    version: str
    hardware_class: str
    latency: dict[str, Any]
    inferences: int
    errors: int
    feedback_correct: int
    feedback_total: int
    shadow: dict[str, Any] | None = None


def recent_reports(
    session: Session,
    *,
    since: datetime | None,
    after_id: int = 0,
    upto_id: int | None = None,
    limit: int = 5000,
) -> list[ReportSample]:
    """The newest ``limit`` reports with ids in ``(after_id, upto_id]`` received since ``since``."""
    query = (
        select(
            TelemetryRow.received_at,
            TelemetryRow.version,
            DeviceRow.hardware_class,
            TelemetryRow.latency,
            TelemetryRow.inferences,
            TelemetryRow.errors,
            TelemetryRow.feedback_correct,
            TelemetryRow.feedback_total,
            TelemetryRow.shadow,
        )
        .join(DeviceRow, DeviceRow.device_id == TelemetryRow.device_id)
        .where(TelemetryRow.id > after_id)
        .order_by(TelemetryRow.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(TelemetryRow.received_at >= since)
    if upto_id is not None:
        query = query.where(TelemetryRow.id <= upto_id)
    rows = session.execute(query).all()
    return [ReportSample(*row) for row in reversed(rows)]


def last_report_id(session: Session, received_before: datetime) -> int:
    """The id of the newest report received before ``received_before`` (0 for none): one step
    down the ``received_at`` index, whatever the table's size."""
    query = (
        select(TelemetryRow.id)
        .where(TelemetryRow.received_at < received_before)
        .order_by(TelemetryRow.received_at.desc(), TelemetryRow.id.desc())
        .limit(1)
    )
    return int(session.scalar(query) or 0)


def rollouts_by_phase(session: Session) -> dict[str, int]:
    rows = session.execute(select(RolloutRow.phase, func.count()).group_by(RolloutRow.phase))
    return {phase: int(n) for phase, n in rows}


def recent_rollouts(session: Session, limit: int = 20) -> list[RolloutRow]:
    """The newest rollouts first."""
    return list(
        session.scalars(select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit))
    )


def known_models(session: Session) -> list[str]:
    """Models with a baseline or a rollout."""
    baselines = set(session.scalars(select(BaselineRow.model)))
    return sorted(baselines | set(session.scalars(select(RolloutRow.model).distinct())))


def outcomes(session: Session) -> dict[tuple[str, str], int]:
    """Finished rollout attempts by (model, outcome), from the outbox's ``record_outcome`` actions
    (one per attempt, kept after a retry: a counter that never goes down)."""
    counts: Counter[tuple[str, str]] = Counter()
    rows = session.scalars(
        select(RolloutActionRow.action).where(RolloutActionRow.kind == "record_outcome")
    )
    for action in rows:
        counts[(str(action.get("model", "")), str(action.get("outcome", "")))] += 1
    return dict(counts)


def open_alerts_by_kind(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(AlertRow.kind, func.count()).where(AlertRow.status == "open").group_by(AlertRow.kind)
    )
    return {kind: int(n) for kind, n in rows}


def playbook_runs_by_status(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(PlaybookRunRow.action, PlaybookRunRow.status, func.count()).group_by(
            PlaybookRunRow.action, PlaybookRunRow.status
        )
    )
    return {(action, status): int(n) for action, status, n in rows}
