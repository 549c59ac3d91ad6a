"""Cold start of `edgeloop serve`: seconds from launch until each child answers its health check,
until every child is healthy (workers included), and from SIGTERM until everything has stopped.

Run from the repository root: ``python bench/serve_cold_start.py [--db-url postgresql://...]``.
Each backend starts in a fresh scratch project (no state: databases are created and migrated on the
way). SQLite always; PostgreSQL with ``--db-url`` (databases NAME_prefect, NAME_mlflow, NAME_fleet
are created, and dropped afterwards). The table is printed; the numbers, with machine information,
go to ``.edgeloop/bench/serve_cold_start.json`` under the current directory.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import write_result
from _serve import remove, scratch_project, serve_state, serving
from rich.console import Console
from rich.table import Table

NAME = "serve_cold_start"
HEALTH = {
    "prefect": "/api/health",
    "mlflow": "/health",
    "controller": "/v1/health",
    "listener": "/health",
}


def _watch(
    urls: dict[str, str], started: float, seen: dict[str, float], stop: threading.Event
) -> None:
    with httpx.Client(timeout=1) as client:
        while not stop.is_set() and len(seen) < len(HEALTH):
            for name, path in HEALTH.items():
                if name in seen:
                    continue
                try:
                    if client.get(urls[name] + path).status_code == 200:
                        seen[name] = time.monotonic() - started
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)


def measure(db_url: str | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="edgeloop-serve-bench-"))
    scratch_project(root)
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch(urls: dict[str, str], started: float) -> None:
        threading.Thread(target=_watch, args=(urls, started, seen, stop), daemon=True).start()

    try:
        with serving(root, *(["--db-url", db_url] if db_url else []), on_spawn=watch) as served:
            ready = time.monotonic() - served.started
            state = serve_state(served)
            t0 = time.monotonic()
            os.killpg(served.proc.pid, signal.SIGTERM)
            served.proc.wait(timeout=90)
            stopped = time.monotonic() - t0
    finally:
        stop.set()
        remove(root)
        if db_url:
            _drop(db_url)
    return {
        "children": dict(seen), "ready_s": ready, "serve_ready_s": state["ready_s"],
        "stop_s": stopped,
    }  # fmt: skip


def _drop(db_url: str) -> None:
    import psycopg

    from edgeloop.cli.serve_plan import database_name

    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        for service in ("prefect", "mlflow", "fleet"):
            conn.execute(f'DROP DATABASE IF EXISTS "{database_name(db_url, service)}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db-url", help="also measure on PostgreSQL (postgresql://USER@HOST:PORT/NAME)"
    )
    args = parser.parse_args(argv)
    console = Console()
    rows = {"sqlite": measure(None)}
    if args.db_url:
        rows["postgresql"] = measure(args.db_url)
    table = Table(title="edgeloop serve: cold start (s)")
    for column in ("backend", *HEALTH, "every child healthy", "SIGTERM to all stopped"):
        table.add_column(column, justify="right")
    for backend, row in rows.items():
        firsts = [f"{row['children'].get(n, float('nan')):.1f}" for n in HEALTH]
        table.add_row(backend, *firsts, f"{row['ready_s']:.1f}", f"{row['stop_s']:.1f}")
    console.print(table)
    write_result(console, NAME, {"results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
