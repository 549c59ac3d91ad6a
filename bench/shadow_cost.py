"""Shadow comparison's cost on the device: ``/predict`` p50 with shadow at ``--rate`` against off.

Run from the repository root: ``python bench/shadow_cost.py`` (``--help`` for options).

It trains the image-CNN example (``examples/digits-cnn/params.yaml``, 32x32 images by default) into
a temporary workspace and installs its ``int8-static`` variant twice in a real agent's slots, as
version 1 (stable, then in the previous slot) and version 2 (the canary, serving), behind a real
``PredictServer``. Then, one image per call on one kept-alive connection, interleaved in rounds, it
times ``POST /predict`` with no shadow plan and with a plan that scores ``--rate`` of the rows with
version 1 on the agent's shadow thread (CPU budget ``--cpu-budget``). Target: p50 with shadow at most
1.1x without; a MISS does not change the exit code. The shadow counts (compared, skipped) show how
much shadow work the budget let through. Numbers, with machine information and the load average, go to
``.edgeloop/bench/shadow_cost.json``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import machine_info, p50_results, p50_table, write_report
from compression import run_stages
from predict_overhead import install, post
from rich.console import Console

from fleet.agent.agent import NPY, PredictServer
from fleet.shared.modelspec import read_spec
from fleet.shared.protocol import ShadowPlan
from fleet.shared.runtime import LatencyStats, open_session, time_batch1
from flows.datasets import read_splits, xy
from flows.workspace import Workspace

NAME = "shadow_cost"
REPO = Path(__file__).resolve().parents[1]
VARIANT = "int8-static"
TARGET = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upsample", type=int, default=4, help="digit images of 8 x N pixels")
    parser.add_argument("--rate", type=float, default=0.1, help="share of rows run in shadow")
    parser.add_argument("--cpu-budget", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=120)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    plans = {
        "off": None,
        f"shadow {args.rate:g}": ShadowPlan(
            version="1", rate=args.rate, cpu_budget=args.cpu_budget
        ),
    }
    rounds: dict[str, list[LatencyStats]] = {name: [] for name in plans}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-shadow-") as tmp:
        ws = Workspace(Path(tmp) / "splits", Path(tmp) / "work")
        params_file = REPO / "examples" / "digits-cnn" / "params.yaml"
        with console.status("training and compressing the CNN example…"):
            run_stages(params_file, ws, {"upsample": args.upsample})
        model = ws.variants_dir / f"{VARIANT}.onnx"
        _, splits = read_splits(ws.splits_dir)
        x_test, _ = xy(splits["test"])
        spec = read_spec(open_session(str(model), threads=1))
        (image,) = spec.inputs
        bodies = []
        for i in range(len(x_test)):
            buffer = io.BytesIO()
            np.save(buffer, spec.feed(x_test[i : i + 1])[image.name], allow_pickle=False)
            bodies.append(buffer.getvalue())
        slots = install(model, Path(tmp) / "agent", versions=("1", "2"))
        server = PredictServer(slots).start()
        host, port = server.address
        connection = http.client.HTTPConnection(host, port, timeout=10)
        index = np.arange(len(bodies)).reshape(-1, 1)
        with console.status(f"timing {args.runs} calls each in {args.rounds} rounds…"):
            for _ in range(args.rounds):
                for name, plan in plans.items():
                    slots.plan_shadow(plan)
                    rounds[name].append(
                        time_batch1(
                            lambda i: post(connection, bodies[int(i[0, 0])], NPY),
                            index,
                            warmup=args.warmup // args.rounds,
                            runs=args.runs // args.rounds,
                        )
                    )
        connection.close()
        server.stop()
        (canary,) = [r for r in slots.flush_telemetry() if r["version"] == "2"]
    shadow = canary.get("shadow", {})
    load_after = os.getloadavg()
    results = p50_results(rounds, "off")
    console.print(
        p50_table(
            f"/predict with shadow comparison, {image.describe()}, {VARIANT}",
            "shadow",
            results,
            "off",
        )
    )
    name = f"shadow {args.rate:g}"
    ratio = results[name]["p50_ratio"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    console.print(
        f"{name}: p50 {ratio:.3f}x off (target <= {TARGET}): {verdict}; rows compared in "
        f"shadow {shadow.get('compared', 0)}, skipped {shadow.get('skipped', 0)} (budget "
        f"{args.cpu_budget:g}), failed {shadow.get('failed', 0)}\n"
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs)",
        highlight=False,
    )
    report = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "input": image.describe(),
        "variant": VARIANT,
        "rate": args.rate,
        "cpu_budget": args.cpu_budget,
        "runs": args.runs,
        "rounds": args.rounds,
        "results": results,
        "shadow": shadow,
        "target": {"ratio": TARGET, "measured": ratio, "passed": ratio <= TARGET},
        "machine": machine_info() | {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    write_report(console, args.out, report)


if __name__ == "__main__":
    main()
