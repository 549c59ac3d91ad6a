"""The Pareto front of a version's variants over size, quality (accuracy, or MAE for a regressor)
and p95 latency."""

from __future__ import annotations

from typing import Any

from flows.quality import ACCURACY, QualityMetric


def dominates(a: dict[str, Any], b: dict[str, Any], metric: QualityMetric = ACCURACY) -> bool:
    """``a`` is no worse than ``b`` on size, quality and p95, and better on at least one."""
    qa, qb = a[metric.key], b[metric.key]
    no_worse = (
        a["size_bytes"] <= b["size_bytes"]
        and metric.at_least_as_good(qa, qb)
        and a["p95_ms"] <= b["p95_ms"]
    )
    better = (
        a["size_bytes"] < b["size_bytes"]
        or (qa != qb and metric.at_least_as_good(qa, qb))
        or a["p95_ms"] < b["p95_ms"]
    )
    return no_worse and better


def pareto_table(
    records: list[dict[str, Any]], metric: QualityMetric = ACCURACY
) -> list[dict[str, Any]]:
    """The records, smallest first, each with ``pareto``: no other variant dominates it."""
    rows = [
        {**r, "pareto": not any(dominates(o, r, metric) for o in records if o is not r)}
        for r in records
    ]
    return sorted(rows, key=lambda r: (r["size_bytes"], r["p95_ms"]))
