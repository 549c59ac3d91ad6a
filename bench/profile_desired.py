"""Where one desired-state answer's time goes: the read alone, and the whole request, in process.

Builds what ``rollback_reaction.py`` measures against (``--devices`` devices, a two-stage rollout of
v2 over stable v1 in progress, so the rollout's status names every device), on a scratch
PostgreSQL database (``--db-url``) or SQLite, then times in this process, on one thread:

- ``read``: the desired-state read a long-poll does (``routes_devices._read_states`` of one device), N times;
- ``request``: ``GET /v1/devices/{id}/desired`` through the ASGI app (routing, the credential
  check from its cache, the read on a worker thread, the answer's validation and JSON), N times;

and prints a cProfile of the read (``--profile``). No HTTP server and no network: what is left of
the 17 ms a served answer costs is uvicorn's and the client's.

    python bench/profile_desired.py --db-url postgresql+psycopg://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import (
    ADMIN,
    ADMIN_HEADERS,
    SIGNING_KEY,
    held_rollout,
    scratch_database,
    seed_devices,
    signed_upload,
)
from fastapi.testclient import TestClient

from fleet.controller.api.routes_devices import _read_states
from fleet.controller.reconcile import reconcile_all
from fleet.controller.settings import FleetSettings
from registry.signing import public_pem


def _register(client: TestClient, model: str, version: str) -> None:
    params, data = signed_upload(model, version)
    headers = {**ADMIN_HEADERS, "Content-Type": "application/octet-stream"}
    r = client.post("/v1/artifacts", params=params, content=data, headers=headers)
    r.raise_for_status()


def _times(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", default=None, help="PostgreSQL server (a scratch database)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--abort", action="store_true", help="then profile the abort command")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-profile-desired-"))
    key = root / "registry.pub.pem"
    key.write_bytes(public_pem(SIGNING_KEY))
    with scratch_database(args.db_url, root, "bench_profile", args.db_url is not None) as db_url:
        settings = FleetSettings(
            db_url=db_url,
            admin_token=ADMIN,
            public_key_path=key,
            artifact_dir=root / "artifacts",
            reconcile_enabled=False,
            long_poll_recheck_s=30,
        )
        from fleet.controller.api.app import create_app

        app = create_app(settings)
        with TestClient(app) as client:
            creds = seed_devices(db_url, args.devices, f"pd{os.getpid()}")
            model = f"bench{os.getpid()}"
            _register(client, model, "1")
            _register(client, model, "2")
            r = client.post(
                "/v1/rollouts",
                json=held_rollout(model, shadow={"rate": 0.1}),
                headers=ADMIN_HEADERS,
            )
            r.raise_for_status()
            rollout_id = r.json()["rollout_id"]
            client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
            reconcile_all(app.state.sessions, app.state.clock(), app.state.notifier)
            device_id, credential = sorted(creds.items())[len(creds) // 2]
            sessions = app.state.sessions

            def one() -> Any:
                return _read_states(sessions, [device_id])[device_id]

            answer = one()
            print(f"answer: {answer.model_dump_json()[:300]}", file=sys.stderr)
            read = _times(one, args.n)
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(args.n):
                    one()
                profile.disable()
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(35)
                print(out.getvalue())

            async def requests() -> list[float]:
                transport = httpx.ASGITransport(app=app)
                headers = {"Authorization": f"Bearer {credential}"}
                async with httpx.AsyncClient(transport=transport, base_url="http://c") as http:
                    url = f"/v1/devices/{device_id}/desired"
                    (await http.get(url, headers=headers)).raise_for_status()
                    out = []
                    for _ in range(args.n):
                        t = time.perf_counter()
                        (await http.get(url, headers=headers)).raise_for_status()
                        out.append((time.perf_counter() - t) * 1000)
                    return out

            whole = asyncio.run(requests())
            if args.abort:  # the rollback itself: decide, save, re-target every canary, publish
                profile = cProfile.Profile()
                t = time.perf_counter()
                profile.enable()
                r = client.post(f"/v1/rollouts/{rollout_id}/abort", headers=ADMIN_HEADERS)
                profile.disable()
                print(f"abort: {r.status_code} in {time.perf_counter() - t:.3f} s")
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(30)
                print(out.getvalue())
            cpu0 = time.process_time()
            asyncio.run(requests())
            cpu = (time.process_time() - cpu0) * 1000 / (args.n + 1)
        for name, values in (("read", read), ("request", whole)):
            print(
                f"{name:8s} p50 {statistics.median(values):6.2f} ms  "
                f"mean {statistics.fmean(values):6.2f} ms  (n={len(values)})"
            )
        print(f"request  CPU {cpu:6.2f} ms each (this process, client included)")


if __name__ == "__main__":
    main()
