"""Compression benchmark: what int8 quantisation buys over fp32 ONNX and over PyTorch eager.

Run from the repository root: ``python bench/compression.py``.

In one process it runs the offline loop's stages (ingest, train, compress, evaluate from
:mod:`flows.stages`, with the parameters in ``params.yaml``) into a temporary workspace, then measures
four ways of running the trained model, each single-threaded at batch 1 with the same warm-up and
number of timed calls (:func:`fleet.agent.runtime.time_batch1`, cycling through the test rows):

* ``torch-eager``: the trained ``Classifier`` wrapped in ``flows.models.Probabilities``, called under
  ``torch.inference_mode`` with ``torch.set_num_threads(1)``;
* ``fp32``, ``int8-dynamic``, ``int8-static``: the ONNX variants, each in an onnxruntime session from
  :func:`fleet.agent.runtime.open_session` with ``threads=1``.

For each it reports file size (the state dict for torch), test accuracy, p50 and p95 latency, and the
ratios against fp32 ONNX (size, accuracy drop in percentage points, p50) and the p50 ratio against
torch eager.

Targets, checked on ``int8-static``:

* size <= 0.27x fp32 ONNX;
* test accuracy drop <= 0.5 points against fp32 ONNX;
* p50 latency <= 0.65x fp32 ONNX;
* p50 latency <= 0.25x torch eager.

Each target prints PASS or MISS; a MISS does not change the exit code. All numbers, plus machine
information, go to ``.edgeloop/bench/compression.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgeloop.params import load_params
from fleet.agent.runtime import LatencyStats, open_session, predict, time_batch1
from flows import stages
from flows.compress import VARIANTS
from flows.datasets import read_splits, xy
from flows.models import Probabilities
from flows.workspace import Workspace

NAME = "compression"
REPO = Path(__file__).resolve().parents[1]
TARGET = "int8-static"
TARGETS = {
    "size_ratio_vs_fp32": 0.27,  # int8-static bytes / fp32 bytes
    "accuracy_drop_points": 0.5,  # (fp32 - int8-static) test accuracy, percentage points
    "p50_ratio_vs_fp32": 0.65,  # int8-static p50 / fp32 ONNX p50
    "p50_ratio_vs_torch": 0.25,  # int8-static p50 / torch eager p50
}
TARGET_LABELS = {
    "size_ratio_vs_fp32": "size vs fp32 ONNX",
    "accuracy_drop_points": "accuracy drop vs fp32 ONNX (points)",
    "p50_ratio_vs_fp32": "p50 vs fp32 ONNX",
    "p50_ratio_vs_torch": "p50 vs torch eager",
}


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def run_stages(params_file: Path, ws: Workspace) -> tuple[Any, dict[str, float]]:
    """Ingest, validate, train, compress and evaluate into ``ws``; return params and stage seconds."""
    params = load_params(params_file)
    seconds: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("ingest", lambda: stages.ingest(params, ws)),
        ("validate", lambda: stages.validate(params, ws)),
        ("train", lambda: stages.train_model(params, ws)),
        ("compress", lambda: stages.compress(params, ws)),
        ("evaluate", lambda: stages.evaluate(params, ws)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - start
    return params, seconds


def measure(
    params: Any, ws: Workspace, warmup: int, runs: int
) -> tuple[dict[str, dict[str, Any]], int]:
    """Size, accuracy and batch-1 latency of torch eager and every ONNX variant, one thread."""
    torch.set_num_threads(1)
    _, splits = read_splits(ws.splits_dir)
    x_test, y_test = xy(splits["test"])
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    results: dict[str, dict[str, Any]] = {}

    model = Probabilities(stages.load_trained(params, ws)).eval()
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(dim=1).numpy() == y_test).mean())
        stats = time_batch1(
            lambda row: model(torch.from_numpy(row)), x_test, warmup=warmup, runs=runs
        )
    results["torch-eager"] = _record(ws.model_state, accuracy, stats, "state_dict (model.pt)")

    for name in VARIANTS:
        path = ws.variants_dir / f"{name}.onnx"
        session = open_session(str(path), threads=1)
        accuracy = float((predict(session, x_test).argmax(axis=1) == y_test).mean())
        input_name = session.get_inputs()[0].name
        stats = time_batch1(
            lambda row, s=session, n=input_name: s.run(None, {n: row}),
            x_test,
            warmup=warmup,
            runs=runs,
        )
        results[name] = _record(path, accuracy, stats, "onnx")
    return results, len(x_test)


def _record(path: Path, accuracy: float, stats: LatencyStats, kind: str) -> dict[str, Any]:
    return {
        "format": kind,
        "size_bytes": path.stat().st_size,
        "accuracy": accuracy,
        "p50_ms": stats.p50_ms,
        "p95_ms": stats.p95_ms,
        "p99_ms": stats.p99_ms,
        "mean_ms": stats.mean_ms,
        "throughput_per_s": stats.throughput_per_s,
        "runs": stats.runs,
    }


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    fp32, eager = results["fp32"], results["torch-eager"]
    for record in results.values():
        record["size_ratio_vs_fp32"] = record["size_bytes"] / fp32["size_bytes"]
        record["accuracy_drop_points"] = (fp32["accuracy"] - record["accuracy"]) * 100
        record["p50_ratio_vs_fp32"] = record["p50_ms"] / fp32["p50_ms"]
        record["p50_ratio_vs_torch"] = record["p50_ms"] / eager["p50_ms"]


def check_targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "target": key,
            "label": TARGET_LABELS[key],
            "variant": TARGET,
            "measured": record[key],
            "limit": limit,
            "passed": bool(record[key] <= limit),
        }
        for key, limit in TARGETS.items()
    ]


def results_table(results: dict[str, dict[str, Any]], warmup: int, runs: int) -> Table:
    table = Table(title=f"compression: 1 thread, batch 1, {warmup} warm-up + {runs} timed calls")
    for column in ("variant", "size KB", "test acc", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for column in ("size/fp32", "acc drop pts", "p50/fp32", "p50/torch"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['size_bytes'] / 1024:.1f}",
            f"{r['accuracy']:.4f}",
            f"{r['p50_ms']:.4f}",
            f"{r['p95_ms']:.4f}",
            f"{r['size_ratio_vs_fp32']:.3f}",
            f"{r['accuracy_drop_points']:+.2f}",
            f"{r['p50_ratio_vs_fp32']:.3f}",
            f"{r['p50_ratio_vs_torch']:.3f}",
        )
    return table


def targets_table(checks: list[dict[str, Any]]) -> Table:
    table = Table(title=f"targets ({TARGET})")
    for column in ("target", "measured", "limit", "result"):
        table.add_column(column)
    for c in checks:
        result = "[green]PASS[/]" if c["passed"] else "[red]MISS[/]"
        table.add_row(c["label"], f"{c['measured']:.3f}", f"<= {c['limit']:g}", result)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per model")
    parser.add_argument("--runs", type=int, default=2000, help="timed calls per model")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml to use")
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    params_file = args.params or (
        Path("params.yaml") if Path("params.yaml").is_file() else REPO / "params.yaml"
    )

    console = Console()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-compression-") as tmp:
        ws = Workspace(Path(tmp) / "splits", Path(tmp) / "work")
        with console.status("running ingest, validate, train, compress, evaluate…"):
            params, stage_seconds = run_stages(params_file, ws)
        with console.status(f"timing 4 models, {args.warmup} + {args.runs} calls each…"):
            results, n_test = measure(params, ws, args.warmup, args.runs)
    add_ratios(results)
    checks = check_targets(results[TARGET])

    console.print(results_table(results, args.warmup, args.runs))
    console.print(targets_table(checks))
    missed = [c["label"] for c in checks if not c["passed"]]
    console.print(
        f"{len(checks) - len(missed)}/{len(checks)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else ""),
        highlight=False,
    )

    report = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "params_file": str(params_file),
        "warmup": args.warmup,
        "runs": args.runs,
        "batch": 1,
        "threads": 1,
        "test_rows": n_test,
        "stage_seconds": stage_seconds,
        "models": results,
        "targets": checks,
        "all_passed": not missed,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}", highlight=False)


if __name__ == "__main__":
    main()
