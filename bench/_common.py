"""What every benchmark records about the machine, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

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
