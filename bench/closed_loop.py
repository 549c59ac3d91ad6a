"""The closed loop, timed: drift in the field -> alert -> retrain on the field data -> canary.

Run from the repository root: ``python bench/closed_loop.py [--epochs 10] [--devices 20]``.

In a scratch project (a git and DVC repository) it starts `edgeloop serve`, trains v1 through the
``scheduled-retrain`` deployment (auto-promotion ``always``: v1 becomes the fleet's first release),
then starts a simulated fleet whose drifting share (30%) sees brighter, noisier inputs saturating at
the pixel range from its first report on, with labels on 60% of the predictions. From the fleet's
start (its first reports, drifting ones among them, go out within one report interval, 0.5 s) it
times: the first input-drift alert, the retrained version's registration, and its canary's creation
on the controller. No command is given after the fleet starts.

Then the accuracy of v1 and of the retrained version on drifted inputs made the way the drifting
devices make them (shifted, noised and clipped, with a seed of its own), and undrifted: each
version's chosen variant, as the fleet runs it, under onnxruntime. These rows are the test split,
which no version trains on (the fleet's world is the field split). The table is printed; the
numbers go to ``.edgeloop/bench/closed_loop.json``.

Measured (one run; 20 devices, 10 epochs per version; 2-core host, nothing else running, load
average 0.98 at the start and 0.20 at the end):

| measure | value |
| --- | --- |
| first drifting report -> first input-drift alert | 22.3 s |
| -> retrained version registered | 74.1 s |
| -> its canary created on the controller | 82.1 s |
| field samples the retrain pulled | 30,494 labelled |
| accuracy on the test split, drifted: v1 -> v2 | 0.9556 -> 0.9778 |
| accuracy on the test split, undrifted: v1 -> v2 | 0.9741 -> 0.9815 |

The alert waits for the devices' detectors (1,500 rows each, 40 rows per 0.5 s report); the
retrain is most of the rest (ingest with the pulled rows, training, compression, both profiles'
checks, registration). One run on 270 rows: a difference of 0.02 is 6 rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _common import write_result
from _serve import Serving, remove, scratch_project, serving
from rich.console import Console
from rich.table import Table

from fleet.admin import AdminClient
from fleet.simulate import FaultPlan, FaultWindow, Simulation
from fleet.simulate.fleet import load_field
from flows.fleet_demo import DEMO_POLICY, DETECTOR, drift_reference

NAME = "closed_loop"
MODEL = "digits-classifier"
SHIFT, NOISE, RANGE = 2.0, 1.0, (0.0, 16.0)
PLAYBOOKS = {
    "playbooks": [
        {
            "name": "input-drift",
            "trigger": {"kind": "input_drift", "threshold": 0.25},
            "actions": [{"action": "open_retrain", "deployment": "scheduled"}],
        }
    ]
}


def until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise RuntimeError(f"no {what} within {timeout:.0f} s")


def first_version(served: Serving) -> None:
    """v1 through the scheduled-retrain deployment, as its schedule would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "scheduled-retrain/scheduled",
         "--watch", "--watch-timeout", "900"],
        cwd=served.root, env=served.env(), capture_output=True, text=True, timeout=960,
    )  # fmt: skip
    if result.returncode != 0 or "Completed" not in result.stdout:
        raise RuntimeError(f"the first retrain failed: {result.stdout[-2000:]}{result.stderr}")


def accuracy(client: Any, version: str, x: np.ndarray, y: np.ndarray) -> float:
    from flows.champion import score_on_rows
    from flows.quality import ACCURACY

    return score_on_rows(client, MODEL, version, ACCURACY, (x, y))


def measure(served: Serving, devices: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(served.urls["mlflow"])
    until(
        "first release of v1",
        lambda: client.get_model_version(MODEL, "1").tags.get("edgeloop.rollout.status"),
        300,
    )
    token = (served.home / "secrets" / "fleet-admin-token").read_text().strip()
    # The fleet's world is the held-out field split with a little noise (new rows, as a fleet's
    # are); the accuracies below are measured on the test split, which no version trains on.
    seen_x, seen_y = load_field(served.root / "data" / "splits" / "field.parquet")
    x, y = load_field(served.root / "data" / "splits" / "test.parquet")
    world = np.clip(seen_x + np.random.default_rng(3).normal(0, 0.3, seen_x.shape), *RANGE)
    reference = drift_reference(client, MODEL, "1")
    sim = Simulation(
        served.urls["controller"], token, devices=devices,
        classes={"host-cpu": 0.5, "edge-small": 0.5}, field_x=world.astype(np.float32), field_y=seen_y,
        feedback_rate=0.6, report_interval_s=0.5, rows_per_report=40, seed=7,
        faults=FaultPlan(drift=FaultWindow(0.3, start_s=0.0), drift_shift=SHIFT,
                         drift_noise=NOISE, drift_clip=RANGE),
        drift_reference=reference, detector_policy=DETECTOR,
    )  # fmt: skip
    admin = AdminClient(served.urls["controller"], token)
    out: dict[str, Any] = {}
    try:
        with sim.in_background():
            t0 = time.monotonic()
            until("input-drift alert", lambda: any(a.kind == "input_drift" for a in admin.alerts("all")), 600)  # fmt: skip
            out["first drifting report -> alert (s)"] = round(time.monotonic() - t0, 1)
            v2 = until(
                "retrained version",
                lambda: next(
                    (v.version for v in client.search_model_versions(f"name = '{MODEL}'")
                     if v.version != "1"), None),
                1800,
            )  # fmt: skip
            out["first drifting report -> retrained version registered (s)"] = round(
                time.monotonic() - t0, 1
            )
            until("canary", lambda: any(r.version == v2 for r in admin.rollouts()), 600)
            out["first drifting report -> canary created (s)"] = round(time.monotonic() - t0, 1)
    finally:
        admin.close()
    rng = np.random.default_rng(11)  # drifted rows the way the drifting devices make them
    drifted = np.clip(x + SHIFT + rng.normal(0, NOISE, x.shape), *RANGE).astype(np.float32)
    out["retrained version"] = v2
    out["pulled"] = client.get_model_version(MODEL, v2).tags.get("edgeloop.field_data.pulled")
    out["accuracy on the test split, drifted"] = {
        "v1": round(accuracy(client, "1", drifted, y), 4),
        f"v{v2}": round(accuracy(client, v2, drifted, y), 4),
    }
    out["accuracy on the test split, undrifted"] = {
        "v1": round(accuracy(client, "1", x.astype(np.float32), y), 4),
        f"v{v2}": round(accuracy(client, v2, x.astype(np.float32), y), 4),
    }
    out["rows"] = len(y)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of each version")
    parser.add_argument("--devices", type=int, default=20, help="simulated devices")
    args = parser.parse_args(argv)
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="edgeloop-closed-loop-"))
    scratch_project(
        root,
        training={"epochs": args.epochs},
        compress={"prune_finetune_epochs": 1, "warmup_runs": 5, "latency_runs": 50},
        schedule={"auto_promote": "always", "enabled": False},
        rollout=DEMO_POLICY,
    )
    (root / "playbooks.yaml").write_text(yaml.safe_dump(PLAYBOOKS))
    dvc = str(Path(sys.executable).with_name("dvc"))
    for command in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120)
    (root / "data" / "field").mkdir(parents=True)
    try:
        with serving(root) as served:
            first_version(served)
            result = measure(served, args.devices)
    finally:
        remove(root)
    table = Table(title="closed loop: drift -> alert -> retrain on field data -> canary")
    table.add_column("measure")
    table.add_column("value")
    for key, value in result.items():
        table.add_row(key, str(value))
    console.print(table)
    write_result(console, NAME, {**result, "epochs": args.epochs, "devices": args.devices})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
