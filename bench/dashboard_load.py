"""Dashboard load time with 1,000 and 10,000 devices: HTTP GET of /dashboard and of device-table pages,
and the browser's load event when chromium is installed.

For each fleet size a fresh SQLite database (or the ``--db-url`` PostgreSQL database, emptied) is
migrated and seeded directly through SQLAlchemy: the devices in two classes, their desired states and
``--reports`` telemetry reports per device over two versions. A real controller process serves it;
each page is fetched ``--repeat`` times and the median and worst are reported. Target: under 2 s.

    python bench/dashboard_load.py [--sizes 1000,10000] [--reports 3] [--db-url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import (
    ADMIN,
    ControllerProcess,
    free_port,
    latency_counts,
    machine_info,
    write_report,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from fleet.controller.storage import db

HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CHROMIUM = os.environ.get("EDGELOOP_TEST_CHROMIUM", "/usr/bin/chromium")
TARGET_S = 2.0


def seed(db_url: str, devices: int, reports: int) -> None:
    engine = db.make_engine(db_url)
    if engine.dialect.name == "postgresql":  # one database for every size: start it empty
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    db.migrate(engine)
    now = datetime.now(UTC)
    latency = latency_counts()
    ids = [f"dev-{i:06d}" for i in range(devices)]
    with engine.begin() as connection:
        connection.execute(
            insert(db.DeviceRow),
            [
                {
                    "device_id": d,
                    "hardware_class": "host-cpu" if i % 10 < 7 else "edge-small",
                    "labels": {"site": f"site-{i % 40}"},
                    "credential_hash": f"{i:064x}",
                    "enrolled_at": now - timedelta(hours=2),
                    "last_seen": now - timedelta(seconds=(i % 300)),
                }
                for i, d in enumerate(ids)
            ],
        )
        connection.execute(
            insert(db.DesiredStateRow),
            [
                {"device_id": d, "revision": 1, "model": "m", "version": "2", "updated_at": now}
                for d in ids
            ],
        )
        rows = [
            {
                "device_id": d,
                "buffer_id": "b",
                "seq": s + 1,
                "model": "m",
                "version": "1" if s < reports // 2 or i % 3 else "2",
                "variant": "v",
                "running": True,
                "window_start": float(s),
                "window_end": float(s + 1),
                "inferences": 100,
                "errors": 0,
                "latency": latency,
                "feedback_correct": 18,
                "feedback_total": 20,
                "dropped_total": 0,
                "received_at": now - timedelta(seconds=60 * (reports - s)),
            }
            for i, d in enumerate(ids)
            for s in range(reports)
        ]
        for start in range(0, len(rows), 5000):
            connection.execute(insert(db.TelemetryRow), rows[start : start + 5000])
    engine.dispose()


def timed_get(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - start)
        r.raise_for_status()
    return {"median_s": statistics.median(times), "max_s": max(times), "bytes": len(r.content)}


def browser_load(base: str, paths: list[str], repeat: int) -> dict[str, dict[str, float]] | None:
    if not Path(CHROMIUM).is_file():
        return None
    from playwright.sync_api import sync_playwright

    out: dict[str, dict[str, float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(extra_http_headers=HEADERS).new_page()
            for path in paths:
                times = []
                for _ in range(repeat):
                    page.goto(f"{base}{path}", wait_until="load")
                    ms = page.evaluate(
                        "() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return n.loadEventEnd - n.startTime; }"
                    )
                    times.append(float(ms) / 1000)
                out[path] = {"median_s": statistics.median(times), "max_s": max(times)}
        finally:
            browser.close()
    return out


def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    results = []
    for size in args.sizes:
        db_url = args.db_url or f"sqlite:///{root / f'fleet-{size}.db'}"
        started = time.perf_counter()
        seed(db_url, size, args.reports)
        seeded_s = time.perf_counter() - started
        controller = ControllerProcess(
            root=root, db_url=db_url, port=free_port(), cpus=args.cpus,
            env_extra={"EDGELOOP_FLEET_RECONCILE_ENABLED": "false"},
        ).start()  # fmt: skip
        try:
            middle = max(1, size // 50 // 2)
            paths = ["/dashboard", "/dashboard/devices", f"/dashboard/devices?page={middle}"]
            with httpx.Client(base_url=controller.base, headers=HEADERS, timeout=60) as client:
                client.get("/dashboard").raise_for_status()  # warm-up
                http = {p: timed_get(client, p, args.repeat) for p in paths}
            browser = browser_load(controller.base, paths, args.repeat)
        finally:
            controller.stop()
        results.append(
            {
                "devices": size,
                "reports": size * args.reports,
                "seed_s": seeded_s,
                "http": http,
                "browser": browser,
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--reports", type=int, default=3, help="telemetry reports per device")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="cores the controller is pinned to")
    parser.add_argument("--db-url", default=None, help="default: SQLite in a scratch folder")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    backend = (args.db_url or "sqlite").split(":")[0].split("+")[0]
    out = args.out or Path(f".edgeloop/bench/dashboard_load-{backend}.json")
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="edgeloop-dashboard-bench-"))
    try:
        results = run(args, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    table = Table(title=f"dashboard load, {backend}, median of {args.repeat} (worst)")
    for column in ("devices", "page", "HTTP GET s", "browser load s", "KiB"):
        table.add_column(column, justify="right")
    for r in results:
        for path, h in r["http"].items():
            b = (r["browser"] or {}).get(path)
            table.add_row(
                f"{r['devices']:,}",
                path,
                f"{h['median_s']:.3f} ({h['max_s']:.3f})",
                "—" if b is None else f"{b['median_s']:.3f} ({b['max_s']:.3f})",
                f"{h['bytes'] / 1024:.0f}",
            )
    console.print(table)
    worst_get = max(h["max_s"] for r in results for h in r["http"].values())
    loads = [b["max_s"] for r in results for b in (r["browser"] or {}).values()]
    worst_load = f"{max(loads):.3f} s" if loads else "not measured (no chromium)"
    console.print(
        f"target: every page under {TARGET_S:.0f} s; worst GET {worst_get:.3f} s, "
        f"worst browser load {worst_load}",
        highlight=False,
    )
    write_report(
        console,
        out,
        {
            "bench": "dashboard_load",
            "db": backend,
            "machine": machine_info(("fastapi", "uvicorn", "sqlalchemy", "playwright")),
            "target_s": TARGET_S,
            "results": results,
        },
        root=root,
        keep=args.keep,
    )


if __name__ == "__main__":
    main()
