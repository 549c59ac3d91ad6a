"""Rollback reaction: from an abort to every online device holding the stable version.

Starts the real controller (``python -m fleet.controller.api.serve``, SQLite in a scratch folder by default,
``--db-url postgresql+psycopg://...`` for PostgreSQL), enrols N simulated devices (asyncio + aiohttp
long-polls, no inference), rolls v2 out to all of them (one stage, long bake, so it is in progress),
then sends the operator ``abort`` command: the rollback re-targets every device to the stable v1. It
measures from sending the command to (a) every device's long-poll answering with v1 and (b) every device
having its telemetry FROM v1 acknowledged. It also reads the controller's RSS before and after the N
long-polls connect: memory per connected device.

The trigger is the abort command, not a failing gate: a gate failure is detected by the reconcile pass
(period ``reconcile_s``) and then takes the same path (decide → save outbox → target → wake long-polls),
so a gate-triggered rollback adds at most one reconcile period to these numbers.

With ``--replicas N`` (PostgreSQL only) N controller processes share the database and the devices
are spread round-robin over them; the abort goes to the first, so the long-polls held by the others
learn of it through ``LISTEN``/``NOTIFY`` (``fleet/controller/storage/replicas.py``). The devices run
in ``--client-procs`` worker processes (default: one per 2,500 devices), each with its descriptor
limit raised to the hard limit; the times are ``CLOCK_MONOTONIC``, one clock for every process.
``--scratch-db`` makes a fresh database on the ``--db-url`` server and drops it at the end.

    python bench/rollback_reaction.py [--devices 1000] [--db-url URL] [--replicas N] [--scratch-db]

Measured (1,000 long-polling devices, 990 on the canary; controller and clients on one 2-core host
shared with other work, load average 1.9-3.7):

| database   | abort answered | every device received v1 (p50) | every v1 report acked | KiB / device |
| ---------- | -------------- | ------------------------------ | --------------------- | ------------ |
| SQLite     | 0.85 s         | 0.22 s (0.14 s)                | 3.5 s                 | 40.5         |
| PostgreSQL | 1.08 s         | 0.61 s (0.49 s)                | 4.6 s                 | 33.3         |

Before set-based re-targeting and the broadcast wake-up, SQLite took 1.58 s to reach every device. The
acked column is one telemetry request per device (about 3 ms each on the server); under a load average
of 8 the same run took 0.67 s (SQLite) and 2.97 s (PostgreSQL) to reach every device.

After making that request cheap (a verified credential is answered from a bounded, short-lived
in-process cache of credential hashes instead of a query on a worker thread; one session and no read
before the insert; the insert and ``last_seen`` update compiled once per dialect instead of per batch;
SQLite WAL with ``--sqlite-synchronous NORMAL``, not the durable default ``FULL``), same host, two runs each (load average before → after):

| database   | abort answered | every device received v1 (p50) | every v1 report acked | KiB / device | load average |
| ---------- | -------------- | ------------------------------ | --------------------- | ------------ | ------------ |
| SQLite     | 0.66 s         | 0.16 s (0.09 s)                | 1.18 s                | 41.4         | 0.7 → 1.2    |
| SQLite     | 0.87 s         | 0.39 s (0.32 s)                | 1.53 s                | 40.3         | 1.2 → 1.1    |
| PostgreSQL | 0.78 s         | 0.35 s (0.30 s)                | 1.60 s                | 34.2         | 1.2 → 1.2    |
| PostgreSQL | 1.54 s         | 0.33 s (0.27 s)                | 1.68 s                | 38.8         | 1.1 → 0.9    |

Before these changes the SQLite run acked every v1 report in 3.83 s (load average 1.1 → 2.0). Under
a load average of 5 it took 1.45 s (2.05 s without the credential cache). In process, 1,000 concurrent telemetry requests went from 3.7 ms to 1.5 ms each.

Replicas, and the cost of a held long-poll (this script's present form: the devices learn v2 from a
first poll without a revision, run in client processes, and retry a failed request; artifacts are
uploaded; the long-poll answer now reads five rows: device, desired state, artifact, the rollout's
status for the shadow plan, the highest release for the rollback flag). Same 2-core host, controller,
PostgreSQL and clients on it, ``--settle-s 15`` (40 for the last 1 x 1,000 row); "recheck" is
``EDGELOOP_FLEET_LONG_POLL_RECHECK_S`` (30: a held poll is never re-read, only answered at its 30 s
time-out or woken):

| replicas x devices | recheck | abort answered | every device received v1 (p50, p95) | every v1 report acked | KiB / device | controller CPU while parked | load average |
| ------------------ | ------- | -------------- | ----------------------------------- | --------------------- | ------------ | --------------------------- | ------------ |
| SQLite 1 x 1,000   | 5 s     | 15.0 s         | 17.1 s (12.3 s, 14.9 s)              | 17.5 s                | 60.9         | 1.08 s/s (saturated)        | 6.9 → 2.8    |
| 1 x 1,000          | 5 s     | 25.2 s         | 28.6 s (21.4 s, 26.8 s)              | 29.3 s                | 54.3         | 0.98 s/s (saturated)        | 2.6 → 2.8    |
| 1 x 1,000          | 30 s    | 2.01 s         | 3.33 s (0.45 s, 0.55 s)              | 3.98 s                | 53.0         | 0.70 s/s                    | 2.8 → 2.2    |
| 1 x 1,000          | 30 s    | 2.85 s         | 4.34 s (0.67 s, 0.79 s)              | 4.41 s                | 57.9         | 0.66 s/s                    | 3.2 → 2.1    |
| 1 x 1,000          | 30 s    | 1.31 s         | **0.99 s** (0.36 s, 0.43 s)          | 3.19 s                | 53.2         | 0.54 s/s                    | 0.4 → 1.2    |
| 1 x 1,000          | 5 s     | 23.1 s         | 27.1 s (20.5 s, 26.1 s)              | 28.5 s                | 53.3         | 0.99 s/s (saturated)        | 1.2 → 2.6    |
| 2 x 1,000          | 30 s    | 1.82 s         | 4.37 s (0.65 s, 3.82 s)              | 5.42 s                | 55.7         | 0.16 + 0.01 s/s (no time-out yet) | 2.2 → 4.5 |
| 2 x 2,000          | 30 s    | 16.3 s         | 24.6 s (13.2 s, 21.4 s)              | 25.3 s                | 70.1         | 0.75 + 0.70 s/s (saturated) | 2.0 → 10.0   |
| 1 x 2,000          | 30 s    | 78.0 s         | 1,768 of 1,980 (67.0 s, 76.3 s)      | —                     | 54.0         | 0.97 s/s (saturated)        | 9.4 → 2.7    |

All rows on PostgreSQL unless named. On a quiet host (load average under 1.2) one replica reaches
every one of 1,000 devices in 0.99 s with a 30 s re-check, inside the 2 s target, and in 27.1 s with
the 5 s one this script defaults to (a saturated controller: the tail of the earlier rows is load
and re-reads). The 10,000-device target over 2 replicas (every device on v1 in
≤ 5 s) was not met on this host: the fleet never finished connecting. With ``--enrol db --recheck-s
30 --connect-timeout 240`` 3,048 of 10,000 long-polls were parked after 240 s (580 failed requests
retried), and the abort was not answered within 120 s (load average 1.8 → 17.3; an earlier try
while other work ran, load average 10-22, had 2,918 parked after 600 s). What bounds it, from the rows
above (1 x 1,000, recheck 30, 40 s idle): a parked long-poll costs nothing until it is answered, but
each answer costs the controller (0.663 - 0.142 s/s) / 30.3 answers/s = 17 ms of CPU (two
desired-state reads, 3.8 ms each in process with cProfile, plus HTTP and the thread hop) and
PostgreSQL 0.5 ms (4.1 transactions). Every device is answered at least every 30 s (the protocol's
longest wait), so 10,000 devices cost 10,000 / 30 x 17 ms = 5.7 CPU-seconds per second, nearly three
times the host; a re-check every 5 s adds five reads per poll, which is why a single replica at 1,000
devices saturates with it. A replica woken by ``NOTIFY`` reads each woken device's state from the
database (the notification carries only ids): in the 2 x 1,000 row the listening replica spent 4.56 s
of CPU, 9.1 ms per device, against 2.15 s on the replica that took the abort (0.9 s of it its leader
passes), and its devices were the slow tail (p95 3.82 s). The leader's reconcile and observe passes (every 0.5 s here) cost
0.13-0.14 s/s before the devices connect with 1,000 devices in the rollout, 0.22-0.29 s/s with 2,000
and 0.53 s/s with 10,000: the rollout's status, which every long-poll answer loads, is 79 KB, 155 KB
and 756 KB. docs/scale.md turns these into replicas per fleet size.

The answer made cheap. Where the 17 ms went (``bench/profile_desired.py``: 10,000 devices, the read
in process on PostgreSQL, 756 KB of rollout status): 15.3 ms per read (p50, load average 1.2); under
cProfile, of 3.7 s for 200 reads, 1.6 s decoded JSON (the rollout's status) and nearly all the rest
was SQLAlchemy's ORM and psycopg for six statements a read (device, desired state, artifact,
rollout, the release counters of two versions). Now the read is one Core statement (device, desired
state, signed variant, the rollout's ``row_version`` and the baseline, joined;
``store.desired_states``) and what it needs of the rollout (shadow plan, rollback flag) is kept per
(rollout, ``row_version``, fingerprint of the model's artifacts), so the status is decoded once per
save of the rollout row per process: 1.06 ms per read (p50, load 2.6). Then a poll that presents the
revision its replica last knew to be current parks without a read (the ``NOTIFY`` listener and this
process's own changes keep that knowledge; nothing is answered from it), the reads of the polls of
one turn of the event loop share one worker thread and one statement per 500 devices, a replica
woken by ``NOTIFY`` reads the woken devices' states in one batch and hands each poll its answer, and
an answer published by the replica that made the change carries the shadow plan. Served
(``bench/served_answer_cpu.py``, 5,000 devices, PostgreSQL, one controller, the code before and
after in one sitting, load average 16.3 and 13.0 with other work): an answer at once 4.57 → 0.66 ms
of controller CPU (50 requests in flight, their reads batched), a held poll answered at its time-out
4.67 → 0.96 ms (one read instead of two), ``/v1/health`` 0.39 and 0.43 ms; with steps 1 and 2 below
only, 4.56 → 1.74 ms and 5.02 → 1.92 ms (load 13.4 and 12.4). Same host, PostgreSQL, recheck 30 s,
``--settle-s 40`` (15 for the first row); "step" says which of those changes the run had (1: the
one-statement read and the batched ``NOTIFY`` wake-up; 2: and no read before parking; 3: and the
batched reads):

| replicas x devices | step | abort answered | every device received v1 (p50, p95) | every v1 report acked | KiB / device | controller CPU while parked (answers/s) | load average |
| ------------------ | ---- | -------------- | ----------------------------------- | --------------------- | ------------ | --------------------------------------- | ------------ |
| 1 x 1,000          | 1    | 2.22 s         | 0.84 s (0.64 s, 0.83 s)             | 3.90 s                | 42.0         | 0.121 s/s (no time-out yet)             | 4.8 → 4.6    |
| 1 x 1,000          | 2    | 3.64 s         | 0.45 s (0.30 s, 0.44 s)             | 4.07 s                | 43.4         | 0.209 s/s (25.0), 0.141 before          | 3.2 → 5.6    |
| 1 x 1,000          | 3    | 1.59 s         | **0.37 s** (0.30 s, 0.37 s)         | 2.73 s                | 40.7         | 0.185 s/s (25.0), 0.137 before          | 5.5 → 2.5    |
| 2 x 10,000         | 1    | 54.5 s         | 61.9 s (53.0 s, 59.3 s)             | 815 of 9,683          | 50.4         | 0.409 + 0.634 s/s (279.9)               | 4.3 → 16.0   |
| 2 x 10,000         | 2    | 24.0 s         | 57.6 s (26.1 s, 29.8 s)             | 5,223 of 9,900        | 51.8         | 0.580 + 0.418 s/s (267.5)               | 2.6 → 14.6   |
| 2 x 10,000         | 3    | 24.1 s         | 57.5 s (14.1 s, 55.9 s)             | 5,982 of 9,900        | 45.5         | 0.511 + 0.254 s/s (306.7)               | 5.0 → 10.5   |

The 10,000-device rows ran with ``--enrol db --connect-timeout 300`` (240 for step 1). Step 1 had
9,580 of 10,000 polls parked after 240 s (3,048 before these changes); step 2 had all of them after
250 s and step 3 after 96.7 s. A held poll's answer at its time-out now costs (0.185 - 0.137) / 25.0
= 1.9 ms of controller CPU at 1,000 devices and (0.511 + 0.254 - 0.360 - 0.004) / 306.7 = 1.3 ms at
10,000 (17 ms before), with 0.69 and 0.93 database transactions per answer (4.1 before). The
1,000-device target (≤ 2 s) holds at 0.37 s. The 10,000-device target (≤ 5 s over 2 replicas) is
still missed on this host, by the reaction's CPU, not the parked fleet's: from the abort to the end
the replicas spent 30.8 + 26.2 CPU-seconds (the second one, woken by ``NOTIFY``, 26.2 s for its
4,950 devices: 5.3 ms per device, 9.1 ms before, answer, telemetry request and reconnections
included), on 2 cores shared with the 4 client processes (27.2 CPU-s over the run) and PostgreSQL
(0.0015 s/s while parked: not the bottleneck). 9,900 answers alone at 1.3 ms are 13 CPU-seconds,
6.4 s on two whole cores; the telemetry request each device sends on receiving v1 (2.25 ms each in
``bench/telemetry_ingest.py``, 22 CPU-s for 9,900) and the leader's passes (0.36 s/s with 10,000
devices in the rollout, before any device connects) run at the same time. The tail (p95 55.9 s
against p50 14.1 s) is requests that failed in that burst (3,589 retried: server disconnects,
connection resets, telemetry bodies that could not be written) and then waited out the client's
back-off of up to 10 s. The abort's own answer (24 s) queues behind the same burst on the event loop
of the replica that took it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import (
    ADMIN_HEADERS,
    ControllerProcess,
    enrol_all,
    held_rollout,
    latency_counts,
    load_average,
    machine_info,
    own_cpu_seconds,
    postgres_cpu_delta,
    postgres_sessions,
    raise_nofile,
    scratch_database,
    seed_devices,
    start_replicas,
    stop_all,
    write_report,
)
from rich.console import Console
from rich.table import Table

# --- the devices, in client worker processes ---------------------------------------------------

FIRST_POLLS = 100
"""First polls in flight at once per client process: the fleet connects in a ramp."""


@dataclass
class Device:
    device_id: str
    credential: str
    replica: int
    revision: int = 0
    version: str | None = None
    parked: bool = False
    """Answered once and asking again: its long-poll is held by the controller."""
    canary: bool = False
    """It held v2 (the rollout's version) at some point: the abort must bring it back to v1."""
    received_at: float | None = None
    reported_at: float | None = None
    polls: int = 0
    retries: int = 0
    error: str | None = None


async def device_loop(
    http: aiohttp.ClientSession,
    device: Device,
    latency: dict[str, Any],
    wait_s: float,
    first: asyncio.Semaphore,
) -> None:
    """Long-poll until the abort's v1 arrives, then report from v1 once. A failed request (the
    controller overloaded, a connection reset) is retried after a back-off, as the agent does, and
    counted; the first poll of each device waits for ``first`` (a ramp, not 10,000 at once)."""
    headers = {"Authorization": f"Bearer {device.credential}"}
    url = f"/v1/devices/{device.device_id}/desired"
    while True:
        # the first poll names no revision: it answers at once with the current state
        params = {"revision": str(device.revision), "wait": str(wait_s)} if device.polls else {}
        device.parked = device.polls > 0
        try:
            if device.polls:
                async with http.get(url, params=params, headers=headers) as r:
                    r.raise_for_status()
                    body = await r.json()
            else:
                async with first, http.get(url, params=params, headers=headers) as r:
                    r.raise_for_status()
                    body = await r.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            device.retries += 1
            device.error = repr(exc)
            await asyncio.sleep(min(10.0, 0.5 * 2 ** min(device.retries, 5)))
            continue
        device.polls += 1
        if body["revision"] == device.revision:
            continue
        device.revision = body["revision"]
        version = (body.get("artifact") or {}).get("version")
        previous, device.version = device.version, version
        device.canary = device.canary or version == "2"
        if previous == "2" and version == "1":
            device.received_at = time.monotonic()
            report = {
                "seq": 1,
                "buffer_id": "b",
                "version": "1",
                "window_start": 0.0,
                "window_end": 1.0,
                "inferences": 100,
                "errors": 0,
                "latency_ms": latency,
            }
            while True:
                try:
                    async with http.post(
                        f"/v1/devices/{device.device_id}/telemetry",
                        json={"reports": [report]},
                        headers=headers,
                    ) as r:
                        r.raise_for_status()
                    break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    device.retries += 1
                    device.error = repr(exc)
                    await asyncio.sleep(0.5)
            device.reported_at = time.monotonic()
            return


async def _client(
    conn: Connection, bases: list[str], devices: list[tuple[str, str, int]], wait_s: float
) -> None:
    latency = latency_counts()
    fleet = [Device(d, c, r) for d, c, r in devices]
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=120, sock_read=wait_s + 60)
    sessions = [
        aiohttp.ClientSession(b, connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
        for b in bases
    ]
    first = asyncio.Semaphore(FIRST_POLLS)
    tasks = [
        asyncio.create_task(device_loop(sessions[d.replica], d, latency, wait_s, first))
        for d in fleet
    ]
    message = loop.run_in_executor(None, conn.recv)

    def errors() -> list[str]:
        return [
            repr(t.exception())
            for t in tasks
            if t.done() and not t.cancelled() and t.exception() is not None
        ]

    while not message.done():  # until "go" (the abort is on its way): how far the fleet got
        retries = sum(d.retries for d in fleet)
        conn.send(
            ("state", sum(d.parked for d in fleet), sum(d.canary for d in fleet), errors()[:3],
             retries, sum(d.polls for d in fleet))
        )  # fmt: skip
        await asyncio.wait({message}, timeout=0.5)
    if message.result() == "go":
        message = loop.run_in_executor(None, conn.recv)  # "stop": the parent's deadline passed
        while not message.done() and not all(d.reported_at for d in fleet if d.canary):
            await asyncio.wait({message}, timeout=0.01)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for http in sessions:
        await http.close()
    conn.send(
        (
            "done",
            [(d.received_at, d.reported_at, d.polls, d.retries) for d in fleet if d.canary],
            errors()[:5] + sorted({d.error for d in fleet if d.error})[:5],
            own_cpu_seconds(),
            sum(d.retries for d in fleet),
        )
    )


def client_worker(
    conn: Connection, bases: list[str], devices: list[tuple[str, str, int]], wait_s: float
) -> None:
    """One client process: its share of the devices, each long-polling its own replica."""
    raise_nofile()
    asyncio.run(_client(conn, bases, devices, wait_s))


# --- the measurement ---------------------------------------------------------------------------


def pg_transactions(db_url: str) -> int | None:
    """Transactions (committed + rolled back) of the database so far; None on SQLite."""
    if not db_url.startswith("postgresql"):
        return None
    from sqlalchemy import text

    from fleet.controller.storage.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "select xact_commit + xact_rollback from pg_stat_database "
                        "where datname = current_database()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def rollout_status_bytes(db_url: str, rollout_id: str) -> int | None:
    """Bytes of the rollout's stored status as JSON text (every long-poll answer of its devices
    loads the row); None on SQLite."""
    if not db_url.startswith("postgresql"):
        return None
    from sqlalchemy import text

    from fleet.controller.storage.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("select octet_length(status::text) from rollouts where rollout_id = :id"),
                {"id": rollout_id},
            ).scalar_one_or_none()
            return None if found is None else int(found)
    finally:
        engine.dispose()


def measure(
    controllers: list[ControllerProcess],
    creds: dict[str, str],
    rollout_id: str,
    args: argparse.Namespace,
    db_url: str,
) -> dict[str, Any]:
    bases = [c.base for c in controllers]
    devices = [(d, c, i % len(bases)) for i, (d, c) in enumerate(sorted(creds.items()))]
    procs = args.client_procs or max(1, math.ceil(len(devices) / 2500))
    rss_before = [c.rss_mib() for c in controllers]
    # idle before the devices connect (the rollout in progress, the reconcile pass): the baseline
    cpu0, xact0, t0 = (
        [c.cpu_seconds() for c in controllers],
        pg_transactions(db_url),
        time.monotonic(),
    )
    time.sleep(args.settle_s)
    base_s = time.monotonic() - t0
    base_cpu = [(c.cpu_seconds() - b) / base_s for c, b in zip(controllers, cpu0, strict=True)]
    xact1 = pg_transactions(db_url)
    base_xact = None if xact0 is None or xact1 is None else (xact1 - xact0) / base_s
    print(
        f"before the devices connect: controller CPU {' + '.join(f'{v:.3f}' for v in base_cpu)} "
        f"s/s, database transactions {base_xact} /s",
        file=sys.stderr,
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    for k in range(procs):
        parent, child = context.Pipe()
        process = context.Process(
            target=client_worker, args=(child, bases, devices[k::procs], args.wait_s), daemon=True
        )
        process.start()
        workers.append((process, parent))
    states: dict[int, tuple[Any, ...]] = {}

    def drain() -> tuple[int, int, int, int]:
        """Parked, canary, retries and polls answered, over every worker."""
        for k, (_, conn) in enumerate(workers):
            while conn.poll():
                states[k] = conn.recv()
        errors = [e for s in states.values() for e in s[3]]
        if errors:
            raise RuntimeError(f"devices failed: {errors[:3]}")
        totals = [sum(s[i] for s in states.values()) for i in (1, 2, 4, 5)]
        return totals[0], totals[1], totals[2], totals[3]

    try:
        t = time.monotonic()
        stable_since, last_canary, shown = time.monotonic(), -1, 0.0
        while True:  # every long-poll parked, and the canary count steady for 2 s
            parked, canary, retries, _ = drain()
            if canary != last_canary:
                stable_since, last_canary = time.monotonic(), canary
            if parked == len(devices) and time.monotonic() - stable_since > 2.0:
                break
            if time.monotonic() - t > args.connect_timeout:  # measure what connected
                print(
                    f"only {parked} of {len(devices)} long-polls parked after "
                    f"{args.connect_timeout:.0f} s ({canary} on v2, {retries} failed requests "
                    f"retried); load average {load_average()}; the abort goes out now",
                    file=sys.stderr,
                    flush=True,
                )
                break
            if time.monotonic() - shown > 10:
                shown = time.monotonic()
                print(
                    f"{shown - t:5.0f} s: {parked} parked, {canary} on v2, {retries} retries, "
                    f"load average {load_average()}",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.2)
        connect_s = time.monotonic() - t
        parked_at_abort = parked
        # idle: every long-poll held; what holding them costs the controllers and the database
        cpu0, xact0, t0 = (
            [c.cpu_seconds() for c in controllers],
            pg_transactions(db_url),
            time.monotonic(),
        )
        postgres = db_url.startswith("postgresql")
        pg0 = postgres_sessions(db_url) if postgres else {}
        polls0 = drain()[3]
        time.sleep(args.settle_s)
        polls_idle = drain()[3] - polls0
        idle_s = time.monotonic() - t0
        idle_cpu = [(c.cpu_seconds() - b) / idle_s for c, b in zip(controllers, cpu0, strict=True)]
        idle_pg = postgres_cpu_delta(pg0, postgres_sessions(db_url)) / idle_s if postgres else None
        xact1 = pg_transactions(db_url)
        rss_after = [c.rss_mib() for c in controllers]
        status_bytes = rollout_status_bytes(db_url, rollout_id)
        cpu_before_abort = [c.cpu_seconds() for c in controllers]
        started = time.monotonic()
        command_s: float | None = None
        try:
            r = httpx.post(
                f"{bases[0]}/v1/rollouts/{rollout_id}/abort",
                json={"reason": "bench: rollback reaction"},
                headers=ADMIN_HEADERS,
                timeout=args.deadline_s,
            )
            r.raise_for_status()
            command_s = time.monotonic() - started
            phase = r.json()["phase"]
        except httpx.TimeoutException:  # an overloaded controller: what reached the devices?
            phase = f"no answer in {args.deadline_s:.0f} s"
        for _, conn in workers:
            conn.send("go")
        results: dict[int, tuple[Any, ...]] = {}
        stopped = False
        while len(results) < len(workers):
            for k, (_, conn) in enumerate(workers):
                while k not in results and conn.poll():
                    message = conn.recv()
                    if message[0] == "done":
                        results[k] = message
            if not stopped and time.monotonic() - started > args.deadline_s:
                for _, conn in workers:
                    conn.send("stop")
                stopped = True
            time.sleep(0.01)
        reaction_cpu = [
            c.cpu_seconds() - b for c, b in zip(controllers, cpu_before_abort, strict=True)
        ]
    finally:
        for worker, conn in workers:
            if worker.is_alive():
                with contextlib.suppress(OSError):
                    conn.send("stop")  # a failed run: the workers end at once
        for worker, _ in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    rows = [row for r in results.values() for row in r[1]]
    errors = [e for r in results.values() for e in r[2]]
    received = sorted(row[0] - started for row in rows if row[0] is not None)
    reported = sorted(row[1] - started for row in rows if row[1] is not None)

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    return {
        "replicas": len(controllers),
        "client_procs": procs,
        "devices_connected": len(devices),
        "parked_before_abort": parked_at_abort,
        "devices": len(rows),
        "connect_s": connect_s,
        "phase_after_command": phase,
        "command_answer_s": command_s,
        "received_stable": len(received),
        "reported_stable": len(reported),
        "all_received_s": received[-1] if len(received) == len(rows) else None,
        "received_p50_s": pct(received, 0.5),
        "received_p95_s": pct(received, 0.95),
        "all_reported_s": reported[-1] if len(reported) == len(rows) else None,
        "reported_p95_s": pct(reported, 0.95),
        "rss_before_mib": rss_before,
        "rss_connected_mib": rss_after,
        "kib_per_connected_device": (sum(rss_after) - sum(rss_before)) * 1024 / len(devices),
        "idle_cpu_per_s": idle_cpu,
        "idle_polls_per_s": polls_idle / idle_s,
        "idle_postgres_cpu_per_s": idle_pg,
        "rollout_status_bytes": status_bytes,
        "baseline_cpu_per_s": base_cpu,
        "baseline_db_transactions_per_s": base_xact,
        "client_retries": sum(r[4] for r in results.values()),
        "idle_db_transactions_per_s": None
        if xact0 is None or xact1 is None
        else (xact1 - xact0) / idle_s,
        "reaction_cpu_s": reaction_cpu,
        "client_cpu_s": sum(r[3] for r in results.values()),
        "client_errors": errors[:5],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    env = {
        "EDGELOOP_FLEET_RECONCILE_S": "0.5",
        "EDGELOOP_FLEET_LONG_POLL_RECHECK_S": str(args.recheck_s),
        "EDGELOOP_FLEET_SQLITE_SYNCHRONOUS": args.sqlite_synchronous,
    }
    with scratch_database(
        args.db_url, root, "bench_rollback", args.scratch_db, args.keep
    ) as db_url:
        controllers = start_replicas(root, db_url, args.replicas, env)
        ctl = controllers[0]
        try:
            t = time.perf_counter()
            if args.enrol == "api":
                uses = {"uses": args.devices}
                token = ctl.admin("POST", "/v1/enrolment-tokens", json=uses)["token"]
                bases = [c.base for c in controllers]
                creds = asyncio.run(enrol_all(bases, token, args.devices, f"rb{os.getpid()}"))
            else:
                creds = seed_devices(db_url, args.devices, f"rb{os.getpid()}")
            enrol_s = time.perf_counter() - t
            model = f"bench{os.getpid()}"
            ctl.register(model, "1")
            ctl.register(model, "2")
            rollout = ctl.admin("POST", "/v1/rollouts", json=held_rollout(model))
            ctl.admin("POST", f"/v1/rollouts/{rollout['rollout_id']}/start")
            result = measure(controllers, creds, rollout["rollout_id"], args, db_url)
            result["enrol_s"] = enrol_s
            result["final_phase"] = ctl.admin("GET", f"/v1/rollouts/{rollout['rollout_id']}")[
                "phase"
            ]
            return result
        finally:
            stop_all(controllers)
            if not args.keep:
                import shutil

                shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--db-url", default=None, help="default: SQLite in a scratch folder")
    parser.add_argument(
        "--scratch-db", action="store_true",
        help="with a PostgreSQL --db-url: a fresh database on that server, dropped at the end",
    )  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, default=1, help="controller processes (more than one: PostgreSQL)"
    )
    parser.add_argument(
        "--client-procs", type=int, default=0, help="device processes; 0: one per 2,500 devices"
    )
    parser.add_argument(
        "--enrol", choices=("api", "db"), default="api",
        help="devices enrolled through /v1/enrol, or written straight into the database (fast)",
    )  # fmt: skip
    parser.add_argument("--wait-s", type=float, default=30.0, help="each long-poll's wait")
    parser.add_argument(
        "--recheck-s", type=float, default=5.0,
        help="the controllers' EDGELOOP_FLEET_LONG_POLL_RECHECK_S (30: no re-read during a poll)",
    )  # fmt: skip
    parser.add_argument(
        "--settle-s", type=float, default=5.0,
        help="idle seconds with every long-poll parked before the abort (its CPU is measured)",
    )  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument(
        "--sqlite-synchronous", choices=("FULL", "NORMAL"), default="FULL",
        help="SQLite durability (the controller's EDGELOOP_FLEET_SQLITE_SYNCHRONOUS)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    target = 2.0 if args.replicas == 1 else 5.0
    console = Console() if sys.stdout.isatty() else Console(width=120)
    load_before = load_average()
    result = run(args)
    load_after = load_average()
    backend = (args.db_url or "sqlite").split(":")[0].split("+")[0]
    out = args.out or Path(
        f".edgeloop/bench/rollback_reaction-{backend}-{args.replicas}x{args.devices}.json"
    )
    table = Table(
        title=f"rollback reaction: {result['devices_connected']} long-polling devices "
        f"({result['devices']} on the canary), {backend}, {result['replicas']} replica(s)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(v: Any, unit: str = "s") -> str:
        return "—" if v is None else f"{v:.3f} {unit}" if isinstance(v, float) else str(v)

    rows = [
        ("abort command answered", fmt(result["command_answer_s"])),
        ("every device received v1 (long-poll)", fmt(result["all_received_s"])),
        (
            "received p50 / p95",
            f"{fmt(result['received_p50_s'])} / {fmt(result['received_p95_s'])}",
        ),
        ("every device's v1 telemetry acked", fmt(result["all_reported_s"])),
        ("received / reported", f"{result['received_stable']} / {result['reported_stable']}"),
        ("target (every device received)", f"≤ {target:.3f} s"),
        (
            "controller RSS idle → connected",
            " + ".join(
                f"{a:.1f} → {b:.1f}"
                for a, b in zip(result["rss_before_mib"], result["rss_connected_mib"], strict=True)
            )
            + " MiB",
        ),
        ("memory per connected device", fmt(result["kib_per_connected_device"], "KiB")),
        (
            "controller CPU while parked",
            " + ".join(f"{v:.3f}" for v in result["idle_cpu_per_s"]) + " s/s",
        ),
        ("database transactions while parked", fmt(result["idle_db_transactions_per_s"], "/s")),
        ("PostgreSQL CPU while parked", fmt(result["idle_postgres_cpu_per_s"], "s/s")),
        ("polls answered while parked (time-outs)", fmt(result["idle_polls_per_s"], "/s")),
        ("rollout status (read by every poll)", fmt(result["rollout_status_bytes"], "bytes")),
        (
            "controller CPU, abort → all acked",
            " + ".join(f"{v:.2f}" for v in result["reaction_cpu_s"]) + " s",
        ),
        ("client processes, CPU", f"{result['client_procs']}, {result['client_cpu_s']:.1f} s"),
        (
            "controller CPU before the devices connect",
            " + ".join(f"{v:.3f}" for v in result["baseline_cpu_per_s"]) + " s/s",
        ),
        (
            "database transactions before they connect",
            fmt(result["baseline_db_transactions_per_s"], "/s"),
        ),
        ("client retries (failed requests)", str(result["client_retries"])),
        (
            "long-polls parked before the abort",
            f"{result['parked_before_abort']} of {result['devices_connected']} after "
            f"{fmt(result['connect_s'])}",
        ),
        (f"enrolment of all devices ({args.enrol})", fmt(result["enrol_s"])),
        ("load average before → after", f"{load_before} → {load_after}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    write_report(
        console,
        out,
        {
            "bench": "rollback_reaction",
            "trigger": "abort command (a failing gate adds ≤ one reconcile period)",
            "db": backend,
            "machine": machine_info(("fastapi", "uvicorn", "sqlalchemy", "aiohttp")),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "target_s": target,
            "recheck_s": args.recheck_s,
            **result,
        },
    )


if __name__ == "__main__":
    main()
