"""What telemetry ingest keeps for observability: device events and input statistics; and the
checks that turn garbage statistics into a counted 422.

A device that sends NaN, negative counts, a PSI no detector can produce or statistics whose lengths
disagree has a bug or is compromised; its batch is refused whole (nothing half-stored), the refusal is
counted per device (``storage.events.count_rejection``) and the answer names what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from fleet.controller.storage import events as stored
from fleet.controller.storage.db import Session
from fleet.shared.drift import PSI_MAX
from fleet.shared.protocol import MAX_DB_INT, TelemetryReport

PSI_KINDS = ("input_drift", "prediction_drift")
COUNT_KEYS = ("count", "nonfinite_rows", "skipped_rows")
MAX_TRACKED_FEATURES = 4096
"""The most features a report's ``input_stats`` may describe (the agent tracks 256 by default)."""


def _finite(values: Iterable[object]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def stats_problems(stats: dict[str, object]) -> list[str]:
    """What is wrong with one report's ``input_stats`` (empty: fine or absent)."""
    if not stats:
        return []
    problems = []
    for key in COUNT_KEYS:
        value = stats.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DB_INT:
            problems.append(
                f"input_stats.{key} must be an integer in [0, {MAX_DB_INT}], got {value!r}"
            )
    mean, std = stats.get("mean", []), stats.get("std", [])
    if not isinstance(mean, list) or not isinstance(std, list):
        return [*problems, "input_stats.mean and .std must be lists"]
    tracked = stats.get("features_tracked", len(mean))
    if len(mean) > MAX_TRACKED_FEATURES:
        return [*problems, f"input_stats describes {len(mean)} features, at most "
                f"{MAX_TRACKED_FEATURES}"]  # fmt: skip
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
        if r.shadow is not None:
            problems.extend(r.shadow.problems(r.served_rows))
        for e in r.events:
            if not _finite((e.value, e.threshold, e.window_s)):
                problems.append(f"event {e.kind}: value, threshold and window_s must be finite")
            elif e.window_s < 0 or e.threshold < 0:
                problems.append(f"event {e.kind}: window_s and threshold must be non-negative")
            elif e.kind in PSI_KINDS and not 0 <= e.value <= PSI_MAX:
                problems.append(f"event {e.kind}: PSI {e.value} is outside [0, {PSI_MAX:.1f}]")
        out.extend(f"report {r.seq}: {p}" for p in problems)
    return out


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
            stored.add_event(session, device_id, r.model, r.version, e, now)
            added += 1
        rows = r.input_stats.get("count", 0)
        if isinstance(rows, int) and rows > 0:
            stats = {k: r.input_stats.get(k) for k in ("count", "mean", "std")}
            stored.add_input_stats(session, device_id, r.model, r.version, rows, stats, now)
            added += 1
    if added:
        session.commit()
    return added
