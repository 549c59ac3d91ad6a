"""Artifact download: one variant fetched by many devices at once, through the controller or from
presigned URLs.

Starts moto's standalone S3 server (``python -m moto.server``, as tests/s3_server.py does for the
tests) and, per mode, a real controller (``python -m fleet.controller.api.serve``, SQLite in a scratch
folder) whose artifact store is that bucket. A ``--size-mb`` variant (random bytes, signed) is
uploaded, ``--devices`` devices are enrolled, then all of them ask for it at the same moment, as the
agent does (``GET /v1/artifacts/<model>/<version>/<variant>`` with the device credential):

- ``stream``: ``EDGELOOP_FLEET_ARTIFACT_REDIRECT_S=0``, the controller reads the object from S3 and
  streams every byte through itself;
- ``redirect``: ``EDGELOOP_FLEET_ARTIFACT_REDIRECT_S=600``, the controller answers 307 to a presigned
  URL and the device fetches the bytes from S3 itself, without its credential;
- ``local`` (not in the default set): the controller's local folder store, streamed by the controller.

It measures the wall time until every device holds every byte (and the p50 and p95 of each device's
time), and the CPU seconds the controller, the S3 server and the client process spent on it (from
``/proc/<pid>/stat``), plus the controller's and the S3 server's peak RSS. Each device counts its bytes
and checks the total; ``--verify`` also hashes them (client CPU).

moto keeps an object in memory and copies it whole for each request it answers, so N devices reading
at once can hold N times the size in moto: the run watches ``MemAvailable`` and stops a mode (reported as
such) when it falls under ``--min-available-gib``, so a shared host is never pushed into the OOM killer.
moto's wall time is not S3's: in the redirect mode the bytes' rate is moto's (one Python process),
where S3 or a CDN scales out; the controller's CPU seconds are the number that carries over.

    python bench/artifact_download.py [--devices 500] [--size-mb 20] [--modes stream,redirect]

Measured (500 devices, a 20 MB variant, 10 GB in all; controller, moto and the client process on one
2-core host; every device got all 20,000,000 bytes, no errors):

| mode     | every device done | p50 / p95       | controller CPU | S3 server CPU | client CPU | peak RSS controller / S3 | load average |
| -------- | ----------------- | --------------- | -------------- | ------------- | ---------- | ------------------------ | ------------ |
| stream   | 75.4 s            | 55.9 s / 56.9 s | 21.0 s         | 19.9 s        | 7.4 s      | 1,372 / 9,649 MiB        | 2.7 → 2.0    |
| redirect | 10.4 s            | 9.7 s / 10.4 s  | 1.8 s          | 6.2 s         | 7.8 s      | 195 / 7,883 MiB          | 2.0 → 2.5    |

Through the controller, every byte costs it CPU: 21.0 s for 10 GB, 2.1 CPU-seconds per GB (about 0.48
GB/s per core), and memory: 1,372 - 195 = 1,177 MiB for 500 streams at once, 2.4 MiB each (a 1 MiB
read chunk per stream and the sockets' buffers). With presigned URLs the controller answers a 307 per
device: 1.8 CPU-seconds for 500 (3.6 ms each, the credential check and the artifact row included), the
same for any size. Both walls are mostly moto's (one Python process holding a copy of the object per
request: 7.9-9.6 GiB at peak) on a host shared with the controller and the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    REPO,
    VARIANT,
    ControllerProcess,
    cpu_seconds,
    enrol_all,
    free_port,
    load_average,
    machine_info,
    mem_available_gib,
    own_cpu_seconds,
    raise_nofile,
    rss_mib,
    write_report,
)
from rich.console import Console
from rich.table import Table

MODES = ("stream", "redirect", "local")


@contextmanager
def s3_server(root: Path) -> Iterator[Any]:
    """moto's server with one empty bucket: tests/s3_server.py's, shared with the tests."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import moto_s3

    with moto_s3(root) as server:
        yield server


class Watch:
    """Samples memory while the devices download; ``low`` is set when the host runs short."""

    def __init__(self, pids: dict[str, int], min_available_gib: float) -> None:
        self.pids = pids
        self.min_available_gib = min_available_gib
        self.peak_rss_mib = dict.fromkeys(pids, 0.0)
        self.min_available = float("inf")
        self.low = asyncio.Event()

    async def run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak_rss_mib[name] = max(self.peak_rss_mib[name], rss_mib(pid))
            available = mem_available_gib()
            self.min_available = min(self.min_available, available)
            if available < self.min_available_gib:
                self.low.set()
            await asyncio.sleep(0.2)


async def download(
    device: aiohttp.ClientSession,
    plain: aiohttp.ClientSession,
    path: str,
    credential: str,
    size: int,
    verify: str | None,
) -> tuple[float, int, int]:
    """One device's download, as the agent makes it: (done at, bytes, redirects followed)."""
    digest = hashlib.sha256() if verify else None

    async def body(response: aiohttp.ClientResponse) -> int:
        response.raise_for_status()
        got = 0
        async for chunk in response.content.iter_chunked(1 << 20):
            got += len(chunk)
            if digest is not None:
                digest.update(chunk)
        return got

    headers = {"Authorization": f"Bearer {credential}"}
    hops = 0
    async with device.get(path, headers=headers, allow_redirects=False) as r:
        location = r.headers.get("Location") if r.status == 307 else None
        got = 0 if location else await body(r)
    if location:
        hops = 1
        async with plain.get(location) as r:  # never the device credential to another origin
            got = await body(r)
    if got != size or (digest is not None and digest.hexdigest() != verify):
        raise RuntimeError(f"got {got} of {size} bytes, or the wrong ones")
    return time.monotonic(), got, hops


async def fetch_all(
    base: str,
    path: str,
    creds: dict[str, str],
    size: int,
    verify: str | None,
    watch: Watch,
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=120, sock_read=300)
    device = aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
    plain = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
    watcher = asyncio.create_task(watch.run())
    try:
        started = time.monotonic()
        tasks = [
            asyncio.create_task(download(device, plain, path, c, size, verify))
            for c in creds.values()
        ]
        everything = asyncio.gather(*tasks, return_exceptions=True)
        low = asyncio.create_task(watch.low.wait())
        first: set[asyncio.Future[Any]] = {everything, low}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():  # the host ran short of memory: stop here
            for task in tasks:
                task.cancel()
        results = await everything
        low.cancel()
    finally:
        watcher.cancel()
        await device.close()
        await plain.close()
    done = sorted(r[0] - started for r in results if isinstance(r, tuple))
    errors = [repr(r) for r in results if isinstance(r, BaseException)]

    def pct(q: float) -> float | None:
        return done[min(len(done) - 1, int(q * len(done)))] if done else None

    return {
        "completed": len(done),
        "bytes": sum(r[1] for r in results if isinstance(r, tuple)),
        "redirects": sum(r[2] for r in results if isinstance(r, tuple)),
        "wall_s": done[-1] if len(done) == len(creds) else None,
        "p50_s": pct(0.5),
        "p95_s": pct(0.95),
        "stopped_low_memory": watch.low.is_set(),
        "errors": errors[:5],
        "error_count": len(errors),
    }


def run_mode(
    mode: str, root: Path, s3: Any, data: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    folder = root / mode
    folder.mkdir()
    env: dict[str, str] = {"EDGELOOP_FLEET_RECONCILE_S": "5"}
    if mode != "local":
        env.update(
            s3.controller_env(f"bench/{mode}/"),
            EDGELOOP_FLEET_ARTIFACT_REDIRECT_S="600" if mode == "redirect" else "0",
        )
    ctl = ControllerProcess(folder, f"sqlite:///{folder / 'fleet.db'}", free_port(), env_extra=env)
    ctl.start()
    try:
        token = ctl.admin("POST", "/v1/enrolment-tokens", json={"uses": args.devices})["token"]
        creds = asyncio.run(enrol_all(ctl.base, token, args.devices, f"dl{mode}"))
        t = time.monotonic()
        artifact = ctl.register("bench", "1", data)
        upload_s = time.monotonic() - t
        path = f"/v1/artifacts/bench/1/{VARIANT}"
        assert artifact["url"] == path, artifact
        verify = hashlib.sha256(data).hexdigest() if args.verify else None
        pids = {"controller": ctl.pid, "s3": s3.pid}
        watch = Watch(pids, args.min_available_gib)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client0 = own_cpu_seconds()
        result = asyncio.run(fetch_all(ctl.base, path, creds, len(data), verify, watch))
        result["cpu_s"] = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        result["cpu_s"]["client"] = own_cpu_seconds() - client0
        result["peak_rss_mib"] = watch.peak_rss_mib
        result["min_available_gib"] = watch.min_available
        result["upload_s"] = upload_s
        result["mode"] = mode
        return result
    finally:
        ctl.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--size-mb", type=float, default=20.0, help="the variant, in 10^6 bytes")
    parser.add_argument(
        "--modes", default="stream,redirect", help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--verify", action="store_true", help="each device hashes its bytes")
    parser.add_argument(
        "--min-available-gib", type=float, default=4.0,
        help="stop a mode when the host's MemAvailable falls under this",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench/artifact_download.json"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")
    raise_nofile()
    console = Console() if sys.stdout.isatty() else Console(width=160)
    data = os.urandom(int(args.size_mb * 1_000_000))
    root = Path(tempfile.mkdtemp(prefix="bench-download-"))
    results: list[dict[str, Any]] = []
    try:
        with s3_server(root) as s3:
            for mode in modes:
                load_before = load_average()
                result = run_mode(mode, root, s3, data, args)
                result["loadavg_before"], result["loadavg_after"] = load_before, load_average()
                results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    table = Table(
        title=f"artifact download: {args.size_mb:g} MB by {args.devices} devices at once "
        "(S3 on moto, controller on SQLite)"
    )
    for column in (
        "mode",
        "every device done",
        "p50 / p95",
        "controller CPU",
        "S3 server CPU",
        "client CPU",
        "peak RSS controller / S3",
        "load average (1 min)",
    ):
        table.add_column(column)

    def s(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f} s"

    for r in results:
        done = s(r["wall_s"]) if r["wall_s"] is not None else f"{r['completed']} done"
        if r["stopped_low_memory"]:
            done += " (stopped: memory)"
        table.add_row(
            r["mode"],
            done,
            f"{s(r['p50_s'])} / {s(r['p95_s'])}",
            f"{r['cpu_s']['controller']:.1f} s",
            f"{r['cpu_s']['s3']:.1f} s",
            f"{r['cpu_s']['client']:.1f} s",
            f"{r['peak_rss_mib']['controller']:.0f} / {r['peak_rss_mib']['s3']:.0f} MiB",
            f"{r['loadavg_before'].split()[0]} → {r['loadavg_after'].split()[0]}",
        )
    console.print(table)
    for r in results:
        if r["errors"]:
            console.print(f"{r['mode']}: {r['error_count']} errors, e.g. {r['errors'][:2]}")
    write_report(
        console,
        args.out,
        {
            "bench": "artifact_download",
            "devices": args.devices,
            "size_bytes": len(data),
            "machine": machine_info(("fastapi", "uvicorn", "boto3", "moto", "aiohttp")),
            "modes": results,
        },
    )


if __name__ == "__main__":
    main()
