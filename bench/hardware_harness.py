"""Hardware-harness benchmark: does the hardware-tests suite measure what the model costs, stably?

Run from the repository root: ``python bench/hardware_harness.py`` (``--help`` for options).

It runs the offline loop's stages (ingest, train, compress, evaluate from :mod:`flows.stages`,
parameters from ``params.yaml``) into a temporary workspace, then measures one variant
(``int8-static``) on one profile (``host-cpu``: one thread, batch 1) two ways:

* suite: :func:`flows.hardware.run_profile`, the ``hardware-tests/`` pytest suite in its own
  process, exactly as the flow runs it; its p50 and p95 come from the suite's JSON report;
* bare: a fresh interpreter that imports only numpy and onnxruntime, opens an
  ``onnxruntime.InferenceSession`` with one intra-op thread and times ``session.run`` on one row at
  a time with ``time.perf_counter``, cycling through the same golden rows with the profile's
  warm-up and timed runs. No pytest and no :mod:`fleet.shared.runtime`.

Both sides run in a fresh process, so neither carries this process's torch. For information the
bare loop is also timed in this process (torch loaded), after each bare run.

Targets:

* fidelity: bare and suite alternate (bare, suite, bare, suite, ...) for ``--rounds`` rounds; the
  median suite p50 is within 5 % of the median bare p50;
* repeatability: ``--repeats`` suite runs back to back; the p95 of every two consecutive runs is
  within 10 % (larger / smaller - 1). The spread over all of them (min, max, max/min - 1) is
  reported for p50 and p95. As a control, the bare loop then runs ``--repeats`` times back to back
  and its spread is reported too (information only): when the bare loop spreads as much as the
  suite, the noise is the machine's, not the harness's.

A suite verdict of ``failed`` (a budget or a sanity check) does not stop the benchmark: only the
latency figures of the report are used here, and the failure messages are printed.

Each target prints PASS or MISS; a MISS does not change the exit code. The load average is
recorded before and after, since other processes on the machine move these numbers. All numbers go
to ``.edgeloop/bench/hardware_harness.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, write_report
from rich import box
from rich.console import Console
from rich.table import Table

from edgeloop.core.errors import HardwareCheckError
from edgeloop.core.params import load_params
from fleet.shared.profile import HardwareProfile, ProfileError, load_profile
from flows import stages
from flows.hardware import run_profile
from flows.workspace import Workspace

NAME = "hardware_harness"
REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "hardware-tests"
PROFILES = SUITE / "profiles"
FIDELITY_LIMIT = 0.05  # |suite p50 / bare p50 - 1|
REPEAT_LIMIT = 0.10  # p95 of two back-to-back suite runs: larger / smaller - 1

# The bare loop: onnxruntime and numpy only, the simplest way to time the model at batch 1. Run as
# ``python -c BARE model golden threads warmup runs`` in a fresh interpreter, or exec'd here.
BARE = """
import json, sys, time
import numpy as np
import onnxruntime as ort


def measure(model, golden, threads, warmup, runs):
    with np.load(golden) as data:
        rows = [r[None, :] for r in np.asarray(data["x"], dtype=np.float32)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for i in range(warmup):
        session.run(None, {name: rows[i % len(rows)]})
    samples = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        row = rows[i % len(rows)]
        start = clock()
        session.run(None, {name: row})
        samples[i] = clock() - start
    p50, p95 = np.percentile(samples * 1e3, [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]))))
"""


class BenchError(RuntimeError):
    pass


def build_model(ws: Workspace) -> dict[str, float]:
    """Ingest, train, compress and evaluate into ``ws``; return each stage's seconds."""
    params = load_params(REPO / "params.yaml")
    seconds: dict[str, float] = {}
    for name, step in (
        ("ingest", stages.ingest),
        ("train", stages.train_model),
        ("compress", stages.compress),
        ("evaluate", stages.evaluate),
    ):
        start = time.perf_counter()
        with warnings.catch_warnings():  # torch.export's deprecation notes, not ours
            warnings.simplefilter("ignore", FutureWarning)
            step(params, ws)
        seconds[name] = time.perf_counter() - start
    return seconds


def bare_args(model: Path, golden: Path, profile: HardwareProfile) -> list[Any]:
    return [str(model), str(golden), profile.threads, profile.warmup_runs, profile.timed_runs]


def bare_fresh(model: Path, golden: Path, profile: HardwareProfile) -> dict[str, float]:
    args = [str(a) for a in bare_args(model, golden, profile)]
    proc = subprocess.run(
        [sys.executable, "-c", BARE, *args], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise BenchError(f"bare loop failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return {k: float(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def bare_here(model: Path, golden: Path, profile: HardwareProfile) -> dict[str, float]:
    """The same loop, run in this process (torch and the stages already loaded)."""
    namespace: dict[str, Any] = {"__name__": "bare"}
    exec(BARE, namespace)
    return dict(namespace["measure"](*bare_args(model, golden, profile)))


def suite(model: Path, golden: Path, profile: str, out_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    result = run_profile(
        model, profile, golden, out_dir, suite_dir=SUITE, profiles_dir=PROFILES, timeout_s=600
    )
    return {
        "p50_ms": result.metrics["p50_ms"],
        "p95_ms": result.metrics["p95_ms"],
        "status": result.status,
        "failures": result.failures,
        "wall_s": time.perf_counter() - start,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "max": max(values), "spread": max(values) / min(values) - 1}


def pair_gaps(values: list[float]) -> list[float]:
    """For each two consecutive values: larger / smaller - 1."""
    return [max(a, b) / min(a, b) - 1 for a, b in pairwise(values)]


def verdict(passed: bool) -> str:
    return "[green]PASS[/]" if passed else "[red]MISS[/]"


def fidelity_table(result: dict[str, Any]) -> Table:
    fid = result["fidelity"]
    table = Table(
        title=f"harness fidelity: {result['variant']} on {result['profile']}, p50 (ms) by round",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("round")
    for column in ("bare (fresh process)", "suite", "suite / bare - 1", "bare (this process)"):
        table.add_column(column, justify="right")
    for i, (b, s, h) in enumerate(zip(fid["bare"], fid["suite"], fid["bare_here"], strict=True)):
        table.add_row(
            str(i + 1),
            f"{b['p50_ms']:.4f}",
            f"{s['p50_ms']:.4f}",
            f"{(s['p50_ms'] / b['p50_ms'] - 1) * 100:+.1f} %",
            f"[dim]{h['p50_ms']:.4f}[/]",
        )
    table.add_row(
        "[bold]median[/]",
        f"{fid['bare_p50_ms']:.4f}",
        f"{fid['suite_p50_ms']:.4f}",
        f"{fid['ratio_minus_1'] * 100:+.1f} %",
        f"[dim]{fid['bare_here_p50_ms']:.4f}[/]",
    )
    return table


def repeat_table(result: dict[str, Any]) -> Table:
    rep = result["repeatability"]
    table = Table(
        title="repeatability: suite runs back to back, then the bare loop as a control (ms)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("run")
    columns = ("suite p50", "suite p95", "p95 gap", "[dim]bare p50[/]", "[dim]bare p95[/]")
    for column in (*columns, "[dim]p95 gap[/]"):
        table.add_column(column, justify="right")
    control = rep["bare_control"]

    def gaps(values: list[float]) -> list[str]:
        return ["", *(f"{g * 100:.1f} %" for g in values)]

    rows = zip(
        rep["runs"],
        gaps(rep["p95_pair_gaps"]),
        control["runs"],
        gaps(control["p95_pair_gaps"]),
        strict=True,
    )
    for i, (run, gap, bare, bare_gap) in enumerate(rows):
        table.add_row(
            str(i + 1),
            f"{run['p50_ms']:.4f}",
            f"{run['p95_ms']:.4f}",
            gap,
            f"[dim]{bare['p50_ms']:.4f}[/]",
            f"[dim]{bare['p95_ms']:.4f}[/]",
            f"[dim]{bare_gap}[/]",
        )

    def cells(spreads: dict[str, Any]) -> list[str]:
        p50, p95 = spreads["p50_spread"], spreads["p95_spread"]
        return [f"{p50['spread'] * 100:.1f} %", f"{p95['spread'] * 100:.1f} %"]

    table.add_row("[bold]max/min - 1[/]", *cells(rep), "", *cells(control), "")
    return table


def targets_table(result: dict[str, Any]) -> Table:
    table = Table(title="targets", box=box.SIMPLE_HEAD)
    for column in ("target", "measured", "limit", "result"):
        table.add_column(column, justify="right" if column in ("measured", "limit") else "left")
    for target in result["targets"].values():
        table.add_row(
            target["label"],
            f"{target['measured'] * 100:.1f} %",
            f"<= {target['limit'] * 100:g} %",
            verdict(target["passed"]),
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="host-cpu", help="hardware profile name")
    parser.add_argument("--variant", default="int8-static", help="variant file to measure")
    parser.add_argument("--rounds", type=int, default=3, help="bare/suite alternations")
    parser.add_argument("--repeats", type=int, default=5, help="back-to-back suite runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 2:
        parser.error("--rounds must be at least 1 and --repeats at least 2")
    out = args.out.resolve()

    console = Console() if sys.stdout.isatty() else Console(width=120)
    root = Path(tempfile.mkdtemp(prefix="edgeloop-bench-harness-"))
    ws = Workspace(root / "splits", root / "work")
    hw_dir = root / "hardware"
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    try:
        with console.status("building the model (ingest, train, compress, evaluate)…"):
            stage_seconds = build_model(ws)
        profile = load_profile(args.profile, PROFILES)
        model = ws.variants_dir / f"{args.variant}.onnx"
        if not model.is_file():
            raise BenchError(f"no variant {args.variant!r} in {ws.variants_dir}")

        bares, suites, heres = [], [], []
        for i in range(args.rounds):
            with console.status(f"fidelity round {i + 1}/{args.rounds}: bare loop…"):
                bares.append(bare_fresh(model, ws.golden, profile))
                heres.append(bare_here(model, ws.golden, profile))
            with console.status(f"fidelity round {i + 1}/{args.rounds}: suite…"):
                suites.append(suite(model, ws.golden, args.profile, hw_dir))
        repeats = []
        for i in range(args.repeats):
            with console.status(f"repeatability: suite run {i + 1}/{args.repeats}…"):
                repeats.append(suite(model, ws.golden, args.profile, hw_dir))
        # Control: the bare loop back to back, to tell machine noise from harness noise.
        controls = []
        for i in range(args.repeats):
            with console.status(f"repeatability control: bare run {i + 1}/{args.repeats}…"):
                controls.append(bare_fresh(model, ws.golden, profile))
    except (BenchError, HardwareCheckError, ProfileError, subprocess.TimeoutExpired) as exc:
        console.print(f"[red]benchmark failed:[/] {exc}\n(files kept in {root})", highlight=False)
        sys.exit(1)
    load_after = os.getloadavg()

    with np.load(ws.golden) as data:
        golden_rows = int(data["x"].shape[0])
    bare_p50 = float(np.median([b["p50_ms"] for b in bares]))
    suite_p50 = float(np.median([s["p50_ms"] for s in suites]))
    fidelity = suite_p50 / bare_p50 - 1
    p95s = [r["p95_ms"] for r in repeats]
    gaps = pair_gaps(p95s)
    control_p95s = [c["p95_ms"] for c in controls]
    result: dict[str, Any] = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "profile": args.profile,
        "variant": args.variant,
        "model_size_bytes": model.stat().st_size,
        "threads": profile.threads,
        "warmup_runs": profile.warmup_runs,
        "timed_runs": profile.timed_runs,
        "golden_rows": golden_rows,
        "stage_seconds": stage_seconds,
        "fidelity": {
            "bare": bares,
            "suite": suites,
            "bare_here": heres,
            "bare_p50_ms": bare_p50,
            "suite_p50_ms": suite_p50,
            "bare_here_p50_ms": float(np.median([h["p50_ms"] for h in heres])),
            "ratio_minus_1": fidelity,
        },
        "repeatability": {
            "runs": repeats,
            "p95_pair_gaps": gaps,
            "p50_spread": spread([r["p50_ms"] for r in repeats]),
            "p95_spread": spread(p95s),
            "bare_control": {
                "runs": controls,
                "p95_pair_gaps": pair_gaps(control_p95s),
                "p50_spread": spread([c["p50_ms"] for c in controls]),
                "p95_spread": spread(control_p95s),
            },
        },
        "targets": {
            "fidelity_p50": {
                "label": "suite p50 vs bare onnxruntime p50 (|ratio - 1|)",
                "measured": abs(fidelity),
                "limit": FIDELITY_LIMIT,
                "passed": abs(fidelity) <= FIDELITY_LIMIT,
            },
            "repeat_p95": {
                "label": "p95 of back-to-back suite runs (worst consecutive pair)",
                "measured": max(gaps),
                "limit": REPEAT_LIMIT,
                "passed": max(gaps) <= REPEAT_LIMIT,
            },
        },
        "machine": machine_info() | {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    result["all_passed"] = all(t["passed"] for t in result["targets"].values())
    # The bare loop has no harness at all: if it spreads past the limit, so would any harness.
    noise = spread(control_p95s)["spread"]
    result["machine_noisy"] = (
        noise > REPEAT_LIMIT or spread([b["p50_ms"] for b in bares])["spread"] > FIDELITY_LIMIT
    )

    console.print(fidelity_table(result))
    console.print(repeat_table(result))
    console.print(targets_table(result))
    statuses = sorted({r["status"] for r in suites + repeats})
    failures = sorted({f for r in suites + repeats for f in r["failures"]})
    console.print(
        f"{args.variant}: {result['model_size_bytes'] / 1024:.0f} KiB, "
        f"{profile.warmup_runs} warm-up + {profile.timed_runs} timed runs over "
        f"{result['golden_rows']} golden rows; suite verdicts: {', '.join(statuses)}"
        + "".join(f"\n  suite failure: {f}" for f in failures)
        + "\n"
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs)",
        highlight=False,
    )
    if result["machine_noisy"]:
        console.print(
            "[yellow]note:[/] the bare loop alone varies past the limits on this machine (p95 "
            f"spread {noise * 100:.0f} % over {args.repeats} runs), so a MISS here measures the "
            "machine's noise more than the harness; rerun on a quiet machine or with more --rounds",
            highlight=False,
        )
    write_report(console, out, result, root, args.keep)


if __name__ == "__main__":
    main()
