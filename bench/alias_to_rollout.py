"""Alias set in MLflow -> rollout progressing on the fleet controller, with `edgeloop serve` running.

Run from the repository root: ``python bench/alias_to_rollout.py [--interval 2]``.

In a scratch project it starts `edgeloop serve --allow-loopback-webhooks`, trains v1 with
`edgeloop run` (few epochs), registers the same fp32 model twice more (v2, v3), simulates six devices,
and sets alias ``production`` through MLflow's REST API (the call the UI makes):

* v1: first release, timed until the registry records the fleet baseline;
* v2, through the webhook: timed until the controller shows a rollout of v2 in phase progressing
  (then aborted, which puts production back on v1);
* v3, through the poller: the webhook is disabled and `edgeloop listener poll --interval N` runs;
  timed the same way.

Targets: webhook <= 5 s; poller <= its interval plus the webhook path's time. The table is printed;
the numbers go to ``.edgeloop/bench/alias_to_rollout.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import write_result
from _serve import Serving, remove, scratch_project, serving
from rich.console import Console
from rich.table import Table

from fleet.admin import AdminClient
from fleet.simulate import Simulation
from fleet.simulate.fleet import load_field

NAME = "alias_to_rollout"
MODEL = "digits-classifier"


def edgeloop(served: Serving, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args], cwd=served.root, env=served.env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"edgeloop {args[0]} failed: {result.stdout[-1500:]}{result.stderr}")


def set_production(served: Serving, version: str) -> float:
    response = httpx.post(
        f"{served.urls['mlflow']}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "production", "version": version}, timeout=10,
    )  # fmt: skip
    response.raise_for_status()
    return time.monotonic()


def until(check: Callable[[], Any], timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"condition not met within {timeout} s")


def progressing(admin: AdminClient, version: str) -> Callable[[], bool]:
    return lambda: any(r.version == version and r.phase == "progressing" for r in admin.rollouts())


def measure(served: Serving, interval: float) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(served.urls["mlflow"])
    token = (served.home / "secrets" / "fleet-admin-token").read_text().strip()
    admin = AdminClient(served.urls["controller"], token)
    out: dict[str, float] = {}
    t0 = set_production(served, "1")
    out["first release (baseline recorded)"] = (
        until(lambda: "edgeloop.rollout.status" in client.get_model_version(MODEL, "1").tags) - t0
    )
    t0 = set_production(served, "2")
    out["webhook"] = until(progressing(admin, "2")) - t0
    rollout = next(r for r in admin.rollouts() if r.version == "2")
    admin.command(rollout.rollout_id, "abort", "benchmark: next measurement")
    until(lambda: str(client.get_registered_model(MODEL).aliases.get("production")) == "1")
    for hook in client.list_webhooks():
        client.update_webhook(hook.webhook_id, status="DISABLED")
    poller = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "listener", "poll", "--interval", str(interval)],
        cwd=served.root, env=served.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2 * interval + 5)  # the poller's first passes see production on v1 as handled
        t0 = set_production(served, "3")
        out[f"poller (interval {interval:g} s)"] = until(progressing(admin, "3")) - t0
    finally:
        poller.terminate()
        poller.wait(timeout=30)
        admin.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=2.0, help="the poller's interval (s)")
    args = parser.parse_args(argv)
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="edgeloop-alias-bench-"))
    scratch_project(root, training={"epochs": 3}, compress={"prune_finetune_epochs": 1})
    try:
        with serving(root, "--allow-loopback-webhooks") as served:
            edgeloop(served, "run")
            fp32 = str(served.home / "work" / "variants" / "fp32.onnx")
            for _ in ("2", "3"):
                edgeloop(served, "register", fp32, "--name", MODEL, "--dataset", "sklearn-digits")
            token = (served.home / "secrets" / "fleet-admin-token").read_text().strip()
            x, y = load_field(root / "data" / "splits" / "field.parquet")
            stop = threading.Event()
            sim = Simulation(
                served.urls["controller"], token, devices=6, classes={"host-cpu": 0.5, "edge-small": 0.5},
                field_x=x, field_y=y, feedback_rate=0.5, report_interval_s=0.5, seed=1,
            )  # fmt: skip
            thread = threading.Thread(target=lambda: sim.run_sync(until=stop.is_set), daemon=True)
            thread.start()
            try:
                seconds = measure(served, args.interval)
            finally:
                stop.set()
                thread.join(timeout=30)
                sim.close()
    finally:
        remove(root)
    table = Table(title="alias production set in MLflow -> rollout progressing (s)")
    table.add_column("path")
    table.add_column("seconds", justify="right")
    for path, value in seconds.items():
        table.add_row(path, f"{value:.2f}")
    console.print(table)
    write_result(console, NAME, {"interval_s": args.interval, "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
