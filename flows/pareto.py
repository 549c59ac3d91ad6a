"""The Pareto front of a version's variants over size, accuracy and p95 latency."""

from __future__ import annotations

from typing import Any


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is no worse than ``b`` on size, accuracy and p95, and better on at least one."""
    no_worse = (
        a["size_bytes"] <= b["size_bytes"]
        and a["accuracy"] >= b["accuracy"]
        and a["p95_ms"] <= b["p95_ms"]
    )
    better = (
        a["size_bytes"] < b["size_bytes"]
        or a["accuracy"] > b["accuracy"]
        or a["p95_ms"] < b["p95_ms"]
    )
    return no_worse and better


def pareto_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, smallest first, each with ``pareto``: no other variant dominates it."""
    rows = [
        {**r, "pareto": not any(dominates(o, r) for o in records if o is not r)} for r in records
    ]
    return sorted(rows, key=lambda r: (r["size_bytes"], r["p95_ms"]))
