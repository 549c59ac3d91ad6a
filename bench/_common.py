"""What every benchmark records about the machine, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

PACKAGES = ("onnxruntime", "numpy", "torch", "prefect", "mlflow")


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **versions,
    }


def write_report(
    console: Console,
    out: Path,
    result: dict[str, Any],
    root: Path | None = None,
    keep: bool = False,
) -> None:
    """Write the JSON result; remove the scratch folder unless asked to keep it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {out}", highlight=False)
    if root is None:
        return
    if keep:
        console.print(f"kept {root}", highlight=False)
    else:
        shutil.rmtree(root, ignore_errors=True)


def write_result(
    console: Console,
    name: str,
    fields: dict[str, Any],
    root: Path | None = None,
    keep: bool = False,
) -> None:
    """Write ``.edgeloop/bench/<name>.json``: the benchmark, when, the machine, then ``fields``."""
    result = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        **fields,
    }
    write_report(console, Path(".edgeloop") / "bench" / f"{name}.json", result, root, keep)


def p50_results(rounds: Mapping[str, Sequence[Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per call: the median over rounds of its p50 and p95 (``LatencyStats``), each round, and
    ``p50_ratio``, its p50 over ``baseline``'s."""
    results: dict[str, dict[str, Any]] = {
        name: {
            "p50_ms": float(np.median([r.p50_ms for r in stats])),
            "p95_ms": float(np.median([r.p95_ms for r in stats])),
            "rounds": [vars(r) for r in stats],
        }
        for name, stats in rounds.items()
    }
    for r in results.values():
        r["p50_ratio"] = r["p50_ms"] / results[baseline]["p50_ms"]
    return results


def p50_table(
    title: str, first: str, results: Mapping[str, Mapping[str, Any]], baseline: str
) -> Table:
    """The :func:`p50_results` as a table: p50, p95 and the p50 ratio to ``baseline``."""
    table = Table(title=title)
    for column in (first, "p50 ms", "p95 ms", f"p50 / {baseline}"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, f"{r['p50_ms']:.4f}", f"{r['p95_ms']:.4f}", f"{r['p50_ratio']:.3f}")
    return table
