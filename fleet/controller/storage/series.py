"""Repository functions over the aggregated series (``series_points``) and the telemetry they are
folded from; and the pruning of raw observations.

A series is keyed by :class:`Scope` and metric; its points by the end of their window. The arithmetic
(sums, percentiles, rates) is ``observe.aggregate``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleet.controller.storage.db import TelemetryRow
from fleet.controller.storage.observe_tables import DeviceEventRow, InputStatsRow, SeriesPointRow

ALL = "*"
"""The label of a scope over every device of a model version and class."""


@dataclass(frozen=True)
class Scope:
    """What a series is about: a model version on a hardware class, over all devices or a label."""

    model: str
    version: str
    hardware_class: str
    label: str = ALL


def telemetry_between(session: Session, start: datetime, end: datetime) -> Sequence[Any]:
    """``(device_id, model, version, inferences, errors, latency, feedback_correct,
    feedback_total)`` of each report received in ``[start, end)``."""
    return session.execute(
        select(
            TelemetryRow.device_id, TelemetryRow.model, TelemetryRow.version,
            TelemetryRow.inferences, TelemetryRow.errors, TelemetryRow.latency,
            TelemetryRow.feedback_correct, TelemetryRow.feedback_total,
        ).where(TelemetryRow.received_at >= start, TelemetryRow.received_at < end)
    ).all()  # fmt: skip


def upsert_points(
    session: Session, scope: Scope, end: datetime, metrics: dict[str, tuple[float, int, int]]
) -> None:
    """Write the scope's points of the window ending at ``end`` (``{metric: (value, devices,
    samples)}``), replacing those already there: running a window twice is harmless. Adds, does
    not flush."""
    existing = {
        r.metric: r
        for r in session.scalars(
            select(SeriesPointRow).where(
                SeriesPointRow.model == scope.model,
                SeriesPointRow.version == scope.version,
                SeriesPointRow.hardware_class == scope.hardware_class,
                SeriesPointRow.label == scope.label,
                SeriesPointRow.window_end == end,
            )
        )
    }
    for metric, (value, devices, samples) in metrics.items():
        row = existing.get(metric)
        if row is None:
            row = SeriesPointRow(
                model=scope.model,
                version=scope.version,
                hardware_class=scope.hardware_class,
                label=scope.label,
                metric=metric,
                window_end=end,
            )
            session.add(row)
        row.value, row.devices, row.samples = value, devices, samples


def history(
    session: Session, scope: Scope, metric: str, before: datetime, limit: int
) -> list[float]:
    """The last ``limit`` values of a series before ``before``, oldest first."""
    rows = session.scalars(
        select(SeriesPointRow.value)
        .where(
            SeriesPointRow.model == scope.model,
            SeriesPointRow.version == scope.version,
            SeriesPointRow.hardware_class == scope.hardware_class,
            SeriesPointRow.label == scope.label,
            SeriesPointRow.metric == metric,
            SeriesPointRow.window_end < before,
        )
        .order_by(SeriesPointRow.window_end.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def points(
    session: Session,
    *,
    model: str,
    metric: str,
    version: str | None = None,
    hardware_class: str | None = None,
    label: str = ALL,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[SeriesPointRow]:
    """Points of one metric, oldest first; ``None`` filters nothing."""
    query = select(SeriesPointRow).where(
        SeriesPointRow.model == model,
        SeriesPointRow.metric == metric,
        SeriesPointRow.label == label,
    )
    if version is not None:
        query = query.where(SeriesPointRow.version == version)
    if hardware_class is not None:
        query = query.where(SeriesPointRow.hardware_class == hardware_class)
    if since is not None:
        query = query.where(SeriesPointRow.window_end >= since)
    return list(session.scalars(query.order_by(SeriesPointRow.window_end).limit(limit)))


def prune(session: Session, before: datetime) -> int:
    """Delete device events, input statistics and series points older than ``before`` (alerts and
    playbook runs are the record and stay). Returns the rows deleted; flushes, does not commit."""
    deleted = 0
    for column in (
        DeviceEventRow.received_at,
        InputStatsRow.received_at,
        SeriesPointRow.window_end,
    ):
        result = session.execute(delete(column.class_).where(column < before))
        deleted += getattr(result, "rowcount", 0) or 0
    return deleted
