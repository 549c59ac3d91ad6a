"""Controller CPU per served desired-state answer, against the CPU of the cheapest request it serves.

Starts one real controller process (``python -m fleet.controller.api.serve``) on a scratch PostgreSQL
database (``--db-url``, or SQLite by default), seeds ``--devices`` devices and a rollout of v2 over v1
in progress (its status names every device), then sends ``-n`` requests of each kind from this
process (aiohttp, ``--concurrency`` at a time) and reads the controller's CPU time before and after:

- ``health``: ``GET /v1/health`` (HTTP, routing, no database, no credential);
- ``desired``: ``GET /v1/devices/{id}/desired`` without a revision (answered at once: the
  credential from its cache, one desired-state read on a worker thread, the answer's JSON);
- ``parked``: a long-poll with the current revision and ``wait=--wait-s`` (held, then answered at its
  time-out: the read before parking and the one at the time-out), all devices at once.

    python bench/served_answer_cpu.py --db-url postgresql+psycopg://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    ControllerProcess,
    free_port,
    held_rollout,
    load_average,
    raise_nofile,
    scratch_database,
    seed_devices,
)


async def _drive(
    base: str, urls: list[tuple[str, dict[str, str], dict[str, str]]], concurrency: int
) -> float:
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(
        base, connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as http:

        async def one(url: str, params: dict[str, str], headers: dict[str, str]) -> None:
            async with sem, http.get(url, params=params, headers=headers) as r:
                r.raise_for_status()
                await r.read()

        t = time.perf_counter()
        await asyncio.gather(*(one(u, p, h) for u, p, h in urls))
        return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", default=None)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--wait-s", type=float, default=5.0)
    args = parser.parse_args()
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="bench-served-answer-"))
    env = {"EDGELOOP_FLEET_RECONCILE_S": "3600", "EDGELOOP_FLEET_LONG_POLL_RECHECK_S": "30"}
    with scratch_database(args.db_url, root, "bench_served", args.db_url is not None) as db_url:
        ctl = ControllerProcess(root, db_url, free_port(), env_extra=env).start()
        try:
            creds = seed_devices(db_url, args.devices, f"sa{os.getpid()}")
            model = f"bench{os.getpid()}"
            ctl.register(model, "1")
            ctl.register(model, "2")
            body = held_rollout(model)
            rollout = ctl.admin("POST", "/v1/rollouts", json=body)
            ctl.admin("POST", f"/v1/rollouts/{rollout['rollout_id']}/start")
            devices = sorted(creds.items())
            auth = {d: {"Authorization": f"Bearer {c}"} for d, c in devices}

            def desired_urls(count: int) -> list[tuple[str, dict[str, str], dict[str, str]]]:
                return [
                    (f"/v1/devices/{devices[i % len(devices)][0]}/desired", {}, auth[devices[i % len(devices)][0]])
                    for i in range(count)
                ]  # fmt: skip

            asyncio.run(_drive(ctl.base, desired_urls(len(devices)), args.concurrency))  # warm
            rows = []
            health: list[tuple[str, dict[str, str], dict[str, str]]] = [
                ("/v1/health", {}, {})
            ] * args.n
            for name, urls in (("health", health), ("desired", desired_urls(args.n))):
                cpu = ctl.cpu_seconds()
                wall = asyncio.run(_drive(ctl.base, urls, args.concurrency))
                used = ctl.cpu_seconds() - cpu
                rows.append((name, len(urls), used * 1000 / len(urls), len(urls) / wall))
            import httpx

            revisions = {}
            for device_id, _ in devices[:1]:
                revisions[device_id] = httpx.get(
                    f"{ctl.base}/v1/devices/{device_id}/desired", headers=auth[device_id]
                ).json()["revision"]
            revision = str(next(iter(revisions.values())))
            parked = [
                (f"/v1/devices/{d}/desired", {"revision": revision, "wait": str(args.wait_s)}, auth[d])
                for d, _ in devices
            ]  # fmt: skip
            cpu = ctl.cpu_seconds()
            wall = asyncio.run(_drive(ctl.base, parked, len(parked)))
            used = ctl.cpu_seconds() - cpu
            rows.append(("parked", len(parked), used * 1000 / len(parked), len(parked) / wall))
        finally:
            ctl.stop()
    print(f"load average {load_average()}; {args.devices} devices; {db_url.split(':')[0]}")
    for name, count, ms, rate in rows:
        print(f"{name:8s} {count:6d} requests  {ms:6.2f} ms controller CPU each  ({rate:7.0f}/s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
