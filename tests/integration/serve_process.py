"""`edgeloop serve` as a subprocess in a test project, the way an operator starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from servers import free_port, stop_group


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    log: Path
    state: dict[str, Any]
    prefect: str
    mlflow: str
    controller: str
    listener: str

    def descendants(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def flow_runs(self, flow: str) -> list[dict[str, Any]]:
        """Every run of the flow named ``flow`` on the stack's Prefect server (its API's JSON)."""
        import httpx

        found = httpx.post(
            f"{self.prefect}/api/flow_runs/filter",
            json={"flows": {"name": {"any_": [flow]}}},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        return list(found.json())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_run(count: int) -> int:
    """A port P with P..P+count-1 free right now."""
    for _ in range(50):
        base = free_port()
        if base + count < 65535 and all(_bindable(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no run of {count} free ports")


@contextmanager
def serve_databases(db_url: str) -> Iterator[list[str]]:
    """Drops the databases `edgeloop serve --db-url` creates from ``db_url`` at exit."""
    import psycopg
    from servers import PG

    from edgeloop.cli.serve_plan import SERVICES, database_name

    names = [database_name(db_url, s) for s in SERVICES]
    try:
        yield names
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_args(request: Any) -> Iterator[list[str]]:
    """`edgeloop serve` arguments for ``request.param``: [] for SQLite, --db-url for PostgreSQL."""
    if request.param == "sqlite":
        yield []
        return
    db_url = request.getfixturevalue("postgres_db")
    with serve_databases(db_url):
        yield ["--db-url", db_url]


def alive(pids: list[int]) -> list[int]:
    """The pids still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@contextmanager
def edgeloop_serve(project: Any, *args: str, timeout: float = 480) -> Iterator[Served]:
    """Start `edgeloop serve` in ``project`` with free ports; yields once every child is healthy."""
    base = free_port_run(3)
    controller = f"http://127.0.0.1:{free_port()}"
    project.set_params(rollout={"controller_url": controller})
    log = project.root / "serve.out"
    state_file = project.home / "serve.json"
    state_file.unlink(missing_ok=True)
    env = {  # the stack's own servers, never a session server the project may point at
        **{
            k: v
            for k, v in project.env().items()
            if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
        },
        "EDGELOOP_HOME": str(project.home),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "serve", "--base-port", str(base), *args],
            cwd=project.root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    served = Served(
        proc=proc, log=log, state={}, prefect=f"http://127.0.0.1:{base}",
        mlflow=f"http://127.0.0.1:{base + 1}", controller=controller,
        listener=f"http://127.0.0.1:{base + 2}",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not state_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"edgeloop serve exited {proc.returncode}: {served.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"edgeloop serve not ready in {timeout} s: {served.output()}")
            time.sleep(0.5)
        served.state = json.loads(state_file.read_text())
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_group(proc, timeout=5)
