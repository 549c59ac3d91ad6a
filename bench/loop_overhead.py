"""Loop-overhead benchmark: wall time of ``edgeloop run``, and the share spent on orchestration.

Run from the repository root: ``python bench/loop_overhead.py`` (``--help`` for options).

In a temporary directory holding copies of ``params.yaml`` and ``hardware-tests/`` (the package is
installed editable, so imports resolve to this checkout), it times three subprocesses, each
end-to-end including interpreter start:

* cold: ``python -m edgeloop.cli run`` with no ``.edgeloop/`` yet, so the run also pays the
  Prefect ephemeral database migration and the MLflow database creation;
* warm: the same command again in the same directory;
* plain: ``bench/_plain_loop.py``, the same compute as plain function calls in a fresh interpreter
  (``flows.stages`` ingest, validate, train_model, compress, evaluate, then
  ``flows.hardware.run_profile`` on the chosen variant for each profile), with no Prefect, MLflow,
  registration or display.

For attribution only, it then times an empty Prefect flow in a fresh process using the run's
``PREFECT_HOME``: the fixed cost of Prefect's ephemeral server that every ``edgeloop run`` pays.

Every run uses the same params and seed, so the amount of compute is the same (the weights are not:
the model is initialised before the seed is set, so each process trains from a different start).
The environment is stripped of ``EDGELOOP_*``, ``PREFECT_*`` and ``MLFLOW_*`` variables, so each
run uses embedded state in the temporary directory, and gets
``PREFECT_SERVER_ANALYTICS_ENABLED=false``. Per-stage seconds come from ``.edgeloop/last-run.json``
(its ``stages`` list) and from the plain script's own report.

Overhead share = (warm wall - plain wall) / warm wall: the part of a warm run spent in orchestration
and tracking (Prefect, MLflow logging and registry, plots, model card, display). Training time
moves by many seconds with other load on the machine, which this difference inherits; so the
table also shows, for information, the overhead outside the stages both sides share (time outside
any stage, plus ``register``), and ``--repeat N`` alternates N warm and plain runs and reports the
median of each.

Targets: warm wall <= 60 s; overhead share <= 25 %. Each prints PASS or MISS; a MISS does not change
the exit code (a run that fails does: then there is nothing to measure). The numbers, with machine
information, go to ``.edgeloop/bench/loop_overhead.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import machine_info, write_report
from rich import box
from rich.console import Console
from rich.table import Table

NAME = "loop_overhead"
REPO = Path(__file__).resolve().parents[1]
PLAIN_SCRIPT = Path(__file__).resolve().parent / "_plain_loop.py"
COPIED = ("params.yaml", "hardware-tests")
TARGET_WARM_S = 60.0
TARGET_OVERHEAD = 0.25
# `edgeloop run` exits 3 when the version registered but a gate failed: the loop still ran in full.
COMPLETED_CODES = (0, 3)
PLAIN_STAGES = ("ingest", "validate", "train", "compress", "evaluate", "hardware")


class BenchError(RuntimeError):
    pass


def prepare(root: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            shutil.copy2(source, root / name)


def clean_environment() -> dict[str, str]:
    prefixes = ("EDGELOOP_", "PREFECT_", "MLFLOW_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def timed_run(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float, log: Path
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(command)} timed out after {timeout:g} s") from exc
    wall = time.perf_counter() - start
    log.write_text(f"$ {' '.join(command)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return wall, proc


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def cli_run(label: str, root: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "edgeloop.cli", "run"]
    summary = root / ".edgeloop" / "last-run.json"
    summary.unlink(missing_ok=True)
    wall, proc = timed_run(command, root, env, timeout, root / f"{label}.log")
    if proc.returncode not in COMPLETED_CODES or not summary.is_file():
        raise BenchError(f"{label} run failed (exit {proc.returncode}):\n{_tail(proc)}")
    data = json.loads(summary.read_text())
    stage_seconds = {s["stage"]: float(s["seconds"]) for s in data["stages"]}
    return {
        "wall_s": wall,
        "exit_code": proc.returncode,
        "stages": data["stages"],
        "stage_seconds": stage_seconds,
        "stages_total_s": sum(stage_seconds.values()),
        "outside_stages_s": wall - sum(stage_seconds.values()),
        "version": data.get("version"),
        "aliases": data.get("aliases"),
        "chosen_variant": data.get("chosen_variant"),
        "hardware": data.get("hardware"),
    }


def plain_run(root: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(PLAIN_SCRIPT)]
    wall, proc = timed_run(command, root, env, timeout, root / "plain.log")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"plain run failed (exit {proc.returncode}):\n{_tail(proc)}")
    data = json.loads(lines[-1])
    seconds = data["seconds"]
    return {
        "wall_s": wall,
        "stage_seconds": {k: seconds[k] for k in PLAIN_STAGES},
        "imports_s": seconds["imports"],
        "in_process_s": seconds["total_in_process"],
        # Interpreter start is ~0.1 s; most of this is teardown at exit (torch, great_expectations).
        "start_and_exit_s": wall - seconds["total_in_process"],
        "chosen_variant": data["chosen"],
        "hardware": data["hardware"],
        "test_accuracy": data["test_accuracy"],
    }


EMPTY_FLOW = """
import time
start = time.perf_counter()
from prefect import flow

@flow(name="bench-empty", log_prints=False)
def empty() -> int:
    return 1

imported = time.perf_counter()
empty()
print(f"{imported - start} {time.perf_counter() - imported}")
"""


def empty_flow_run(root: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """An empty Prefect flow in a fresh process, with the run's (already migrated) PREFECT_HOME."""
    env = env | {
        "PREFECT_HOME": str(root / ".edgeloop" / "prefect"),
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    }
    command = [sys.executable, "-c", EMPTY_FLOW]
    wall, proc = timed_run(command, root, env, timeout, root / "empty-flow.log")
    try:
        import_s, flow_s = (float(v) for v in proc.stdout.split()[-2:])
    except ValueError as exc:
        raise BenchError(
            f"empty Prefect flow failed (exit {proc.returncode}):\n{_tail(proc)}"
        ) from exc
    return {"wall_s": wall, "import_s": import_s, "flow_s": flow_s}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]


def summary_table(result: dict[str, Any]) -> Table:
    cold, warm, plain = result["cold"], result["warm"], result["plain"]
    table = Table(title="edgeloop run: wall time and orchestration overhead")
    for column in ("measure", "value", "target", "result"):
        table.add_column(column, justify="right" if column == "value" else "left")

    def verdict(passed: bool) -> str:
        return "[green]PASS[/]" if passed else "[red]MISS[/]"

    table.add_row("cold run (fresh .edgeloop/)", f"{cold['wall_s']:.1f} s", "", "")
    warm_ok = result["targets"]["warm_wall_s"]["passed"]
    table.add_row(
        "warm run", f"{warm['wall_s']:.1f} s", f"<= {TARGET_WARM_S:g} s", verdict(warm_ok)
    )
    table.add_row("plain function calls", f"{plain['wall_s']:.1f} s", "", "")
    table.add_row("overhead, warm - plain", f"{result['overhead_s']:.1f} s", "", "")
    overhead_ok = result["targets"]["overhead_share"]["passed"]
    table.add_row(
        "overhead share of warm run",
        f"{result['overhead_share'] * 100:.1f} %",
        f"<= {TARGET_OVERHEAD * 100:g} %",
        verdict(overhead_ok),
    )
    table.add_row(
        "[dim]overhead outside shared stages[/]",
        f"[dim]{result['overhead_outside_stages_s']:.1f} s, "
        f"{result['overhead_outside_stages_share'] * 100:.1f} %[/]",
        "[dim]info[/]",
        "",
    )
    table.add_row(
        "cold-start cost, cold - warm", f"{cold['wall_s'] - warm['wall_s']:.1f} s", "", ""
    )
    return table


def stage_table(result: dict[str, Any]) -> Table:
    cold, warm, plain = result["cold"], result["warm"], result["plain"]
    table = Table(title="seconds by stage", box=box.SIMPLE_HEAD)
    table.add_column("stage")
    for column in ("cold run", "warm run", "plain", "warm - plain"):
        table.add_column(column, justify="right")
    names = list(dict.fromkeys([*warm["stage_seconds"], *cold["stage_seconds"], *PLAIN_STAGES]))

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for name in names:
        c, w = cold["stage_seconds"].get(name), warm["stage_seconds"].get(name)
        p = plain["stage_seconds"].get(name)
        diff = None if w is None else w - (p or 0.0)
        table.add_row(name, cell(c), cell(w), cell(p), cell(diff))
    outside = (
        "outside stages (start, imports, Prefect, display)",
        cold["outside_stages_s"],
        warm["outside_stages_s"],
        plain["wall_s"] - sum(plain["stage_seconds"].values()),
    )
    table.add_row(*outside[:1], *(cell(v) for v in outside[1:]), cell(outside[2] - outside[3]))
    table.add_row(
        "[bold]total wall[/]",
        cell(cold["wall_s"]),
        cell(warm["wall_s"]),
        cell(plain["wall_s"]),
        cell(warm["wall_s"] - plain["wall_s"]),
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="warm and plain runs, alternated; the run with the median wall time is reported",
    )
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    out = args.out.resolve()

    console = Console() if sys.stdout.isatty() else Console(width=120)
    root = Path(tempfile.mkdtemp(prefix="edgeloop-bench-loop-"))
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    try:
        prepare(root)
        env = clean_environment()
        with console.status("cold `edgeloop run` (fresh .edgeloop/)…"):
            cold = cli_run("cold", root, env, args.timeout)
        warms, plains = [], []
        for i in range(args.repeat):
            with console.status(f"warm `edgeloop run` ({i + 1}/{args.repeat})…"):
                warms.append(cli_run(f"warm-{i + 1}", root, env, args.timeout))
            with console.status(f"plain function calls ({i + 1}/{args.repeat})…"):
                plains.append(plain_run(root, env, args.timeout))
        with console.status("empty Prefect flow…"):
            floor = empty_flow_run(root, env, args.timeout)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}\n(logs kept in {root})", highlight=False)
        sys.exit(1)
    load_after = os.getloadavg()

    warm, plain = median_run(warms), median_run(plains)
    overhead_s = warm["wall_s"] - plain["wall_s"]
    overhead_share = overhead_s / warm["wall_s"]
    # Less sensitive to noise in the compute (other processes on the machine): only the time the
    # run spends outside the stages both sides share, plus its tracking-only stages.
    outside_s = (
        warm["outside_stages_s"]
        - (plain["wall_s"] - sum(plain["stage_seconds"].values()))
        + sum(v for k, v in warm["stage_seconds"].items() if k not in PLAIN_STAGES)
    )
    result: dict[str, Any] = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "edgeloop.cli", "run"],
        "cold": cold,
        "warm": warm,
        "plain": plain,
        "empty_prefect_flow": floor,
        "warm_walls_s": [r["wall_s"] for r in warms],
        "plain_walls_s": [r["wall_s"] for r in plains],
        "overhead_s": overhead_s,
        "overhead_share": overhead_share,
        "overhead_outside_stages_s": outside_s,
        "overhead_outside_stages_share": outside_s / warm["wall_s"],
        "cold_start_extra_s": cold["wall_s"] - warm["wall_s"],
        "targets": {
            "warm_wall_s": {
                "measured": warm["wall_s"],
                "limit": TARGET_WARM_S,
                "passed": warm["wall_s"] <= TARGET_WARM_S,
            },
            "overhead_share": {
                "measured": overhead_share,
                "limit": TARGET_OVERHEAD,
                "passed": overhead_share <= TARGET_OVERHEAD,
            },
        },
        "machine": machine_info() | {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    result["all_passed"] = all(t["passed"] for t in result["targets"].values())

    console.print(summary_table(result))
    console.print(stage_table(result))
    console.print(
        f"chosen variant: run {warm['chosen_variant']}, plain {plain['chosen_variant']}; "
        f"plain: imports {plain['imports_s']:.1f} s, interpreter start + exit "
        f"{plain['start_and_exit_s']:.1f} s\n"
        f"an empty Prefect flow in a fresh process (warm PREFECT_HOME): "
        f"{floor['wall_s']:.1f} s wall, {floor['flow_s']:.1f} s in the flow call\n"
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs)",
        highlight=False,
    )
    write_report(console, out, result, root, args.keep)


if __name__ == "__main__":
    main()
