"""Repository functions over what devices report for observability: their detectors' events, the
input statistics kept with them, and the count of refused telemetry batches per device.

``observe.ingest`` decides what to keep and ``observe.aggregate`` what the rows mean; these
functions only read and write them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import (
    DeviceEventRow,
    InputStatsRow,
    RejectedReportsRow,
)
from fleet.shared.protocol import DeviceEvent


def count_rejection(
    session: Session, device_id: str, problems: Sequence[str], now: datetime
) -> int:
    """Count one refused batch for ``device_id``; returns its total. Commits."""
    row = session.get(RejectedReportsRow, device_id, with_for_update=True)
    if row is None:
        row = RejectedReportsRow(device_id=device_id, count=0)
        session.add(row)
    row.count += 1
    row.last_reason, row.last_at = "; ".join(problems)[:2000], now
    session.commit()
    return row.count


def rejected_counts(session: Session) -> dict[str, int]:
    """Refused batches per device."""
    return dict(
        session.execute(select(RejectedReportsRow.device_id, RejectedReportsRow.count)).all()
    )


def add_event(
    session: Session, device_id: str, model: str, version: str, event: DeviceEvent, now: datetime
) -> None:
    """Keep one detector event as the device reported it. Adds, does not commit."""
    session.add(
        DeviceEventRow(
            device_id=device_id, model=model, version=version, kind=event.kind,
            feature=event.feature, value=event.value, threshold=event.threshold,
            window_s=event.window_s, action=event.action, received_at=now,
        )
    )  # fmt: skip


def add_input_stats(
    session: Session,
    device_id: str,
    model: str,
    version: str,
    rows: int,
    stats: dict[str, Any],
    now: datetime,
) -> None:
    """Keep the input statistics of one report. Adds, does not commit."""
    session.add(
        InputStatsRow(
            device_id=device_id, model=model, version=version, rows=rows, stats=stats,
            received_at=now,
        )
    )  # fmt: skip


def events_between(
    session: Session, kinds: Iterable[str], start: datetime, end: datetime
) -> Sequence[DeviceEventRow]:
    """Events of ``kinds`` received in ``[start, end)``."""
    return session.scalars(
        select(DeviceEventRow).where(
            DeviceEventRow.kind.in_(list(kinds)),
            DeviceEventRow.received_at >= start,
            DeviceEventRow.received_at < end,
        )
    ).all()


def drift_events_between(
    session: Session, start: datetime, end: datetime
) -> Sequence[DeviceEventRow]:
    """``input_drift`` events received in ``[start, end)``."""
    return session.scalars(
        select(DeviceEventRow).where(
            DeviceEventRow.kind == "input_drift",
            DeviceEventRow.received_at >= start,
            DeviceEventRow.received_at < end,
        )
    ).all()
