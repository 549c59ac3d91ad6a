"""What telemetry ingest keeps for observability: device events and input statistics; and the
checks that turn garbage statistics into a counted 422.

A device that sends NaN, negative counts, a PSI no detector can produce or statistics whose lengths
disagree has a bug or is compromised; its batch is refused whole (nothing half-stored), the refusal is
counted per device (``rejected_reports``) and the answer names what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.controller.storage.observe_tables import (
    DeviceEventRow,
    InputStatsRow,
    RejectedReportsRow,
)
from fleet.shared.drift import PSI_MAX
from fleet.shared.protocol import TelemetryReport

PSI_KINDS = ("input_drift", "prediction_drift")
COUNT_KEYS = ("count", "nonfinite_rows", "skipped_rows")


def _finite(values: Iterable[object]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def stats_problems(stats: dict[str, object]) -> list[str]:
    """What is wrong with one report's ``input_stats`` (empty: fine or absent)."""
    if not stats:
        return []
    problems = []
    for key in COUNT_KEYS:
        value = stats.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"input_stats.{key} must be a non-negative integer, got {value!r}")
    mean, std = stats.get("mean", []), stats.get("std", [])
    if not isinstance(mean, list) or not isinstance(std, list):
        return [*problems, "input_stats.mean and .std must be lists"]
    tracked = stats.get("features_tracked", len(mean))
    if not (len(mean) == len(std) == tracked):
        problems.append(
            f"input_stats lengths disagree: mean {len(mean)}, std {len(std)}, "
            f"features_tracked {tracked}"
        )
    if not _finite(mean) or not _finite(std):
        problems.append("input_stats.mean and .std must be finite numbers (no NaN or Inf)")
    elif any(float(s) < 0 for s in std):
        problems.append("input_stats.std must be non-negative")
    return problems


def report_problems(reports: Sequence[TelemetryReport]) -> list[str]:
    """Every problem of a batch, each prefixed with the report's seq."""
    out: list[str] = []
    for r in reports:
        problems = stats_problems(r.input_stats)
        for e in r.events:
            if not _finite((e.value, e.threshold, e.window_s)):
                problems.append(f"event {e.kind}: value, threshold and window_s must be finite")
            elif e.window_s < 0 or e.threshold < 0:
                problems.append(f"event {e.kind}: window_s and threshold must be non-negative")
            elif e.kind in PSI_KINDS and not 0 <= e.value <= PSI_MAX:
                problems.append(f"event {e.kind}: PSI {e.value} is outside [0, {PSI_MAX:.1f}]")
        out.extend(f"report {r.seq}: {p}" for p in problems)
    return out


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


def record(
    session: Session,
    device_id: str,
    reports: Sequence[TelemetryReport],
    accepted: Iterable[int],
    now: datetime,
) -> int:
    """Keep the events of the reports stored now (not of duplicates), and the input statistics of
    those that carry an event: the field data a drift playbook hands to retraining. Reports without
    events cost nothing here (no query, no commit). Returns the rows added."""
    fresh = set(accepted)
    added = 0
    for r in reports:
        if r.seq not in fresh or not r.events:
            continue
        fresh.discard(r.seq)
        for e in r.events:
            session.add(
                DeviceEventRow(
                    device_id=device_id, model=r.model, version=r.version, kind=e.kind,
                    feature=e.feature, value=e.value, threshold=e.threshold,
                    window_s=e.window_s, action=e.action, received_at=now,
                )
            )  # fmt: skip
            added += 1
        rows = r.input_stats.get("count", 0)
        if isinstance(rows, int) and rows > 0:
            stats = {k: r.input_stats.get(k) for k in ("count", "mean", "std")}
            session.add(
                InputStatsRow(
                    device_id=device_id, model=r.model, version=r.version, rows=rows,
                    stats=stats, received_at=now,
                )
            )  # fmt: skip
            added += 1
    if added:
        session.commit()
    return added
