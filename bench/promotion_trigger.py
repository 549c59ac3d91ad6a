"""Promotion from the MLflow UI: from alias ``production`` set in MLflow to the rollout being started.

Starts a real ``mlflow server`` (SQLite in a scratch folder; loopback webhooks allowed, as in the
tests) and ``edgeloop listener serve`` in dry-run mode (``EDGELOOP_LISTENER_RECORD_TO``: each rollout it
would start is appended to a file), registers the webhook, then sets ``production`` N times through
MLflow's REST API (the call the UI makes) and times each until its rollout is recorded. Then it disables
the webhook, runs ``edgeloop listener poll`` and times N more changes through the poller. The Prefect
flow run creation itself (``run_deployment(timeout=0)``) is not included.

    python bench/promotion_trigger.py [--changes 10] [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _common import write_result
from _serve import scrubbed_env
from rich.console import Console
from rich.table import Table

from fleet.shared.ports import free_port

NAME = "promotion_trigger"
MODEL = "bench-model"
SECRET = "bench-secret"
PASSED = {"edgeloop.gates": "passed", "edgeloop.hw.host-cpu.status": "passed"}


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path, health: str | None) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while health is not None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[2:5]} did not start: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(health, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            yield
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)


def recorded(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def time_changes(mlflow: str, versions: list[str], record: Path, timeout: float) -> list[float]:
    """Set production on each version in turn; seconds until each rollout was recorded."""
    times = []
    for version in versions:
        before = recorded(record)
        started = time.monotonic()
        response = httpx.post(
            f"{mlflow}/api/2.0/mlflow/registered-models/alias",
            json={"name": MODEL, "alias": "production", "version": version},
            timeout=10,
        )
        response.raise_for_status()
        while recorded(record) == before:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"no rollout of v{version} within {timeout} s")
            time.sleep(0.01)
        times.append(time.monotonic() - started)
    return times


def measure(root: Path, changes: int, interval: float) -> dict[str, Any]:
    from mlflow import MlflowClient

    from registry.webhooks import ensure_webhook

    mlflow = f"http://127.0.0.1:{free_port()}"
    record = root / "rollouts.jsonl"
    server_env = scrubbed_env(
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",  # loopback listener: benchmark only
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_CACHE_TTL="1",
    )
    edgeloop_env = scrubbed_env(
        MLFLOW_TRACKING_URI=mlflow,
        EDGELOOP_HOME=str(root / "home"),
        EDGELOOP_LISTENER_SECRET=SECRET,
        EDGELOOP_LISTENER_RECORD_TO=str(record),
    )
    port = free_port()
    listener = f"http://127.0.0.1:{port}"
    mlflow_argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", mlflow.rsplit(":", 1)[1], "--workers", "1",
    ]  # fmt: skip
    cli = [sys.executable, "-m", "edgeloop.cli", "listener"]
    with (
        process(mlflow_argv, server_env, root / "mlflow.log", f"{mlflow}/health"),
        process([*cli, "serve", "--port", str(port)], edgeloop_env, root / "listener.log",
                f"{listener}/health"),
    ):  # fmt: skip
        client = MlflowClient(tracking_uri=mlflow)
        hook, _ = ensure_webhook(client, f"{listener}/webhooks/mlflow", SECRET)
        client.create_registered_model(MODEL)
        run_id = client.create_run("0").info.run_id
        for _ in range(2 * changes):
            client.create_model_version(MODEL, f"runs:/{run_id}/m", run_id=run_id, tags=PASSED)
        versions = [str(v) for v in range(1, 2 * changes + 1)]
        webhook = time_changes(mlflow, versions[:changes], record, timeout=60)
        client.update_webhook(hook.webhook_id, status="DISABLED")
        time.sleep(2)  # the server's webhook cache (TTL 1 s) forgets the webhook
        poll_argv = [*cli, "poll", "--interval", str(interval)]
        with process(poll_argv, edgeloop_env, root / "poller.log", None):
            time.sleep(interval + 3)  # its first pass records the current alias
            poller = time_changes(mlflow, versions[changes:], record, timeout=interval + 60)
    started = [json.loads(line) for line in record.read_text().splitlines()]
    assert [s["version"] for s in started] == versions, "a change was started twice or not at all"
    return {"webhook_s": webhook, "poller_s": poller, "poll_interval_s": interval}


def summary(times: list[float]) -> dict[str, float]:
    return {
        "n": len(times),
        "p50_s": statistics.median(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10, help="alias changes per path")
    parser.add_argument("--interval", type=float, default=2.0, help="the poller's interval (s)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="edgeloop-bench-promotion-"))
    raw = measure(root, args.changes, args.interval)
    rows = {"webhook": summary(raw["webhook_s"]), "poller": summary(raw["poller_s"])}
    table = Table(title="alias production set in MLflow -> rollout started (s)")
    for column in ("path", "n", "p50", "mean", "max"):
        table.add_column(column, justify="right")
    for path, row in rows.items():
        table.add_row(
            path + (f" (interval {args.interval:g} s)" if path == "poller" else ""),
            str(row["n"]), f"{row['p50_s']:.2f}", f"{row['mean_s']:.2f}", f"{row['max_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    write_result(console, NAME, {"results": rows, "raw": raw}, root, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
