"""Compression benchmark: what int8 quantisation buys over fp32 ONNX and over PyTorch eager.

Run from the repository root: ``python bench/compression.py`` (``--help`` for options).

In one process it runs the offline loop's stages (ingest, validate, train, compress, evaluate from
:mod:`flows.stages`, parameters from ``params.yaml``) into a temporary workspace, then measures four
ways of running the trained model, each on one thread at batch 1 with the same warm-up and number
of timed calls (:func:`fleet.shared.runtime.time_batch1`, cycling through the test rows):

* ``torch-eager``: the trained ``Classifier`` wrapped in ``flows.models.Probabilities``, called
  under ``torch.inference_mode`` after ``torch.set_num_threads(1)``;
* ``fp32``, ``int8-dynamic``, ``int8-static``: the ONNX variants, each in an onnxruntime session
  from :func:`fleet.shared.runtime.open_session` with ``threads=1``.

The timed calls are split into interleaved rounds (every model in turn, each round re-warmed), so
load from other processes falls on every model alike; p50 and p95 are medians over the rounds.
For reference it also times an ONNX ``Identity`` graph the same way: the fixed cost of one
``session.run`` call, which no quantisation can remove.

For each model it reports file size (``model.pt`` for torch), test accuracy, p50 and p95 latency,
and the ratios against fp32 ONNX (size, accuracy drop in percentage points, p50) and the p50 ratio
against torch eager.

Targets, checked on ``int8-static``:

* size <= 0.27x fp32 ONNX;
* test accuracy drop <= 0.5 points against fp32 ONNX;
* p50 latency <= 0.65x fp32 ONNX;
* p50 latency <= 0.25x torch eager.

Each target prints PASS or MISS; a MISS does not change the exit code. All numbers, with machine
information, go to ``.edgeloop/bench/compression.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _common import machine_info, write_report
from onnx import TensorProto, helper
from rich import box
from rich.console import Console
from rich.table import Table

from edgeloop.core.params import load_params
from edgeloop.core.settings import Settings
from fleet.shared.modelspec import read_spec
from fleet.shared.profile import load_profile
from fleet.shared.runtime import LatencyStats, open_session, predict, time_batch1
from flows import stages
from flows.compress import VARIANTS
from flows.datasets import read_splits, xy
from flows.models import Probabilities, Values
from flows.quality import metric_for
from flows.validation import LocalRunner, candidates, choose
from flows.workspace import Workspace

NAME = "compression"
REPO = Path(__file__).resolve().parents[1]
TARGET = "int8-static"
FLOOR = "ort-floor"  # an Identity graph: the cost of a session.run call
TARGETS = {
    "size_ratio_vs_fp32": 0.27,  # int8-static bytes / fp32 bytes
    "accuracy_drop_points": 0.5,  # (fp32 - int8-static) test accuracy, percentage points
    "p50_ratio_vs_fp32": 0.65,  # int8-static p50 / fp32 ONNX p50
    "p50_ratio_vs_torch": 0.25,  # int8-static p50 / torch eager p50
}
REGRESSION_TARGETS = {"mae_increase_pct": 2.0}  # int8-static test MAE within 2% of fp32
TARGET_LABELS = {
    "mae_increase_pct": "MAE increase vs fp32 ONNX (%)",
    "size_ratio_vs_fp32": "size vs fp32 ONNX",
    "accuracy_drop_points": "accuracy drop vs fp32 ONNX (points)",
    "p50_ratio_vs_fp32": "p50 vs fp32 ONNX",
    "p50_ratio_vs_torch": "p50 vs torch eager",
}


def loader_args(pairs: list[str]) -> dict[str, int]:
    """``KEY=INT`` pairs as a mapping."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = int(value)
    return out


def run_stages(
    params_file: Path, ws: Workspace, overrides: dict[str, int] | None = None
) -> tuple[Any, dict[str, float]]:
    """Run ingest to evaluate into ``ws``; return the params and each stage's seconds."""
    params = load_params(params_file)
    if overrides:
        data = params.data.model_copy(
            update={"loader_args": {**params.data.loader_args, **overrides}}
        )
        params = params.model_copy(update={"data": data})
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


def identity_model(path: Path, n_features: int) -> Path:
    """An ONNX graph that only copies its input: the fixed cost of one ``session.run`` call."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_features])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _run(session: Any, spec: Any, wanted: list[str], row: np.ndarray) -> Any:
    """One call of ``session`` on ``row``, fed by the model's contract."""
    return session.run(wanted, spec.feed(row))


def measure(
    params: Any, ws: Workspace, warmup: int, runs: int, rounds: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], int]:
    """Size, accuracy and batch-1 latency of each model, plus the ``session.run`` floor."""
    torch.set_num_threads(1)
    schema, splits = read_splits(ws.splits_dir)
    metric = metric_for(schema.task)
    x_test, y_test = xy(splits["test"])
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)

    trained = stages.load_trained(params, ws)
    model = (Values(trained) if schema.task == "regression" else Probabilities(trained)).eval()
    with torch.inference_mode():
        eager_scores = model(torch.from_numpy(x_test)).numpy()
    paths = {"torch-eager": ws.model_state}
    quality = {"torch-eager": metric.of(eager_scores, y_test)}
    calls: dict[str, Callable[[np.ndarray], object]] = {
        "torch-eager": lambda row: model(torch.from_numpy(row))
    }
    for name in VARIANTS:
        path = ws.variants_dir / f"{name}.onnx"
        if not path.is_file():
            continue
        session = open_session(str(path), threads=1)
        spec = read_spec(session)
        wanted = [spec.scored.name]
        # Each row is fed by the model's contract (reshaped to an image, cast to uint8, ...).
        calls[name] = functools.partial(_run, session, spec, wanted)
        paths[name] = path
        quality[name] = metric.of(predict(session, x_test, spec), y_test)
    floor = open_session(str(identity_model(ws.work_dir / "identity.onnx", x_test.shape[1])))
    calls[FLOOR] = lambda row: floor.run(None, {"x": row})
    paths[FLOOR] = ws.work_dir / "identity.onnx"

    per_round: dict[str, list[LatencyStats]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, call in calls.items():
                stats = time_batch1(call, x_test, warmup=warmup // rounds, runs=runs // rounds)
                per_round[name].append(stats)
    records = {
        name: _record(paths[name], metric.key, quality.get(name), per_round[name]) for name in calls
    }
    floor = records.pop(FLOOR)
    return records, floor, len(x_test)


def _record(
    path: Path, key: str, quality: float | None, rounds: list[LatencyStats]
) -> dict[str, Any]:
    p50s = [r.p50_ms for r in rounds]
    return {
        "path": path.name,
        "size_bytes": path.stat().st_size,
        key: quality,
        "p50_ms": float(np.median(p50s)),
        "p95_ms": float(np.median([r.p95_ms for r in rounds])),
        "p99_ms": float(np.median([r.p99_ms for r in rounds])),
        "mean_ms": float(np.mean([r.mean_ms for r in rounds])),
        "p50_ms_round_min": min(p50s),
        "p50_ms_round_max": max(p50s),
        "runs": sum(r.runs for r in rounds),
        "rounds": [vars(r) for r in rounds],
    }


def add_ratios(results: dict[str, dict[str, Any]], floor_ms: float) -> None:
    fp32, eager = results["fp32"], results["torch-eager"]
    for record in results.values():
        record["size_ratio_vs_fp32"] = record["size_bytes"] / fp32["size_bytes"]
        if "mae" in record:
            record["mae_increase_pct"] = (record["mae"] - fp32["mae"]) / fp32["mae"] * 100
        else:
            record["accuracy_drop_points"] = (fp32["accuracy"] - record["accuracy"]) * 100
        record["p50_ratio_vs_fp32"] = record["p50_ms"] / fp32["p50_ms"]
        record["p50_ratio_vs_torch"] = record["p50_ms"] / eager["p50_ms"]
        # Informational: the ratio once the fixed cost of a session.run call is taken off both.
        record["p50_above_floor_ratio_vs_fp32"] = (record["p50_ms"] - floor_ms) / (
            fp32["p50_ms"] - floor_ms
        )


def check_targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    targets = REGRESSION_TARGETS if "mae" in record else TARGETS
    return [
        {
            "target": key,
            "label": TARGET_LABELS[key],
            "variant": TARGET,
            "measured": record[key],
            "limit": limit,
            "passed": bool(record[key] <= limit),
        }
        for key, limit in targets.items()
    ]


def results_table(results: dict[str, dict[str, Any]], floor: dict[str, Any], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", no_wrap=True)
    for column in (
        "KB",
        "acc/MAE",
        "p50 ms",
        "p95 ms",
        "size/fp32",
        "loss",
        "p50/fp32",
        "p50/torch",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for name, r in results.items():
        regression = "mae" in r
        table.add_row(
            name,
            f"{r['size_bytes'] / 1024:.1f}",
            f"{r['mae']:.3f}" if regression else f"{r['accuracy']:.4f}",
            f"{r['p50_ms']:.4f}",
            f"{r['p95_ms']:.4f}",
            f"{r['size_ratio_vs_fp32']:.3f}",
            f"{r['mae_increase_pct']:+.2f}%" if regression else f"{r['accuracy_drop_points']:+.2f}",
            f"{r['p50_ratio_vs_fp32']:.3f}",
            f"{r['p50_ratio_vs_torch']:.3f}",
        )
    table.add_row(
        f"[dim]{FLOOR}[/]",
        "",
        "",
        f"[dim]{floor['p50_ms']:.4f}[/]",
        f"[dim]{floor['p95_ms']:.4f}[/]",
    )
    return table


def targets_table(checks: list[dict[str, Any]], title: str = f"targets ({TARGET})") -> Table:
    table = Table(title=title)
    for column in ("target", "measured", "limit", "result"):
        table.add_column(column)
    for c in checks:
        result = "[green]PASS[/]" if c["passed"] else "[red]MISS[/]"
        table.add_row(c["label"], f"{c['measured']:.3f}", f"<= {c['limit']:g}", result)
    return table


def edge_small_search(ws: Workspace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The variant the flow's per-profile search picks for edge-small, against its targets."""
    settings = Settings(
        profiles_dir=REPO / "hardware-tests" / "profiles",
        hardware_tests_dir=REPO / "hardware-tests",
    )
    evaluation = json.loads(ws.evaluation.read_text())
    profile = load_profile("edge-small", settings.profiles_dir)
    choice = choose(profile, candidates(evaluation, profile), LocalRunner(settings, ws))
    variant = choice.variant or "none"
    picked = results.get(variant, {})
    size_ratio = picked.get("size_bytes", float("inf")) / results["fp32"]["size_bytes"]
    drop = (results["fp32"]["accuracy"] - picked.get("accuracy", 0.0)) * 100
    checks = [
        {"label": "edge-small variant size vs fp32", "measured": round(size_ratio, 3),
         "limit": 0.20, "passed": size_ratio <= 0.20},
        {"label": "edge-small accuracy drop (points)", "measured": round(drop, 3),
         "limit": 1.0, "passed": drop <= 1.0},
    ]  # fmt: skip
    attempts = ", ".join(f"{a.variant} {a.status}" for a in choice.attempts)
    return {"variant": variant, "attempts": attempts, "targets": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per model")
    parser.add_argument("--runs", type=int, default=2000, help="timed calls per model")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    parser.add_argument(
        "--params", type=Path, default=None, help="params.yaml to use (or an example's)"
    )
    parser.add_argument(
        "--loader-arg",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="override one of data.loader_args (e.g. upsample=4 for 32x32 digit images)",
    )
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    if args.rounds < 1 or args.runs < args.rounds:
        parser.error("need 1 <= --rounds <= --runs")
    params_file = args.params or (
        Path("params.yaml") if Path("params.yaml").is_file() else REPO / "params.yaml"
    )
    warmup = args.warmup // args.rounds * args.rounds
    runs = args.runs // args.rounds * args.rounds

    console = Console() if sys.stdout.isatty() else Console(width=120)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-compression-") as tmp:
        ws = Workspace(Path(tmp) / "splits", Path(tmp) / "work")
        with console.status("running ingest, validate, train, compress, evaluate…"):
            params, stage_seconds = run_stages(params_file, ws, loader_args(args.loader_arg))
        with console.status(f"timing {len(VARIANTS) + 2} models, {warmup} + {runs} calls each…"):
            timing_start = time.perf_counter()
            results, floor, n_test = measure(params, ws, warmup, runs, args.rounds)
            timing_seconds = time.perf_counter() - timing_start
        search = None
        if "accuracy" in results["fp32"]:
            with console.status("compression search: the variant validation picks for edge-small…"):
                search = edge_small_search(ws, results)
    load_after = os.getloadavg()
    add_ratios(results, floor["p50_ms"])
    checks = check_targets(results[TARGET])

    title = (
        f"compression: 1 thread, batch 1, {warmup} warm-up + {runs} timed calls per model "
        f"in {args.rounds} rounds, {n_test} test rows"
    )
    console.print(results_table(results, floor, title))
    console.print(targets_table(checks))
    missed = [c["label"] for c in checks if not c["passed"]]
    static = results[TARGET]
    if search is not None:
        console.print(targets_table(search["targets"], "compression search for edge-small"))
        console.print(
            f"edge-small takes {search['variant']} (attempts: {search['attempts']})",
            highlight=False,
        )
    console.print(
        f"{len(checks) - len(missed)}/{len(checks)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + f"\nsession.run floor {floor['p50_ms'] * 1e3:.1f} µs; above it, {TARGET} p50 is "
        f"{static['p50_above_floor_ratio_vs_fp32']:.3f}x fp32 ONNX"
        + f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs)",
        highlight=False,
    )

    report = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "params_file": str(params_file),
        "warmup": warmup,
        "runs": runs,
        "rounds": args.rounds,
        "batch": 1,
        "threads": 1,
        "test_rows": n_test,
        "stage_seconds": stage_seconds,
        "timing_seconds": timing_seconds,
        "models": results,
        "session_run_floor": floor,
        "targets": checks,
        "all_passed": not missed,
        "edge_small_search": search,
        "loader_args": loader_args(args.loader_arg),
        "machine": machine_info() | {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    write_report(console, args.out, report)


if __name__ == "__main__":
    main()
