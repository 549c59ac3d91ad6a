"""What one test run shares between its pytest-xdist workers: session servers, one trained project.

The first worker that asks for a resource makes it, under a file lock in the run's folder; the
others wait on the lock and read what it wrote. A server is held by a small process of its own
(``python tests/held.py NAME FOLDER OWNER``) that enters the server's context manager, writes what it
yields to ``FOLDER/value.json`` and leaves it (stopping the server, dropping its database) on
SIGTERM or once the run's main pytest process ``OWNER`` is gone. The main process sends that
SIGTERM when the run ends (tests/conftest.py: ``stop_holders``), so a server outlives the worker
that started it and serves every worker until then.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

RUN_DIR = "EDGELOOP_TEST_RUN_DIR"  # set by the run's main process (tests/conftest.py)
RUN_PID = "EDGELOOP_TEST_RUN_PID"
HERE = Path(__file__).resolve().parent
_HOLDERS: list[subprocess.Popen[bytes]] = []
REPO = HERE.parent


def run_dir() -> Path:
    """The folder every worker of this run shares (made here when no main process set one)."""
    if RUN_DIR not in os.environ:
        os.environ[RUN_DIR] = tempfile.mkdtemp(prefix="edgeloop-test-run-")
        os.environ[RUN_PID] = str(os.getpid())
    return Path(os.environ[RUN_DIR])


@contextmanager
def locked(name: str) -> Iterator[Path]:
    """Holds the run-wide lock ``name``; yields the folder of that name."""
    root = run_dir()
    folder = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def server(name: str, timeout: float = 300) -> str:
    """The value the held server ``name`` yields (its URL), starting its holder on first use."""
    with locked(name) as folder:
        value, failed = folder / "value.json", folder / "failed"
        if failed.exists():
            raise AssertionError(f"{name} did not start earlier in this run: {failed.read_text()}")
        if not value.exists():
            _start_holder(name, folder, timeout)
        return str(json.loads(value.read_text()))


def _start_holder(name: str, folder: Path, timeout: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "holder.log"
    owner = os.environ.get(RUN_PID, str(os.getpid()))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "held.py"), name, str(folder), owner],
            cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE / "integration")])},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    _HOLDERS.append(proc)  # it outlives this call: keep its Popen until this process ends
    (run_dir() / "holders").mkdir(exist_ok=True)
    (run_dir() / "holders" / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not (folder / "value.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
            message = f"{reason}: {log.read_text(errors='replace')[-3000:]}"
            (folder / "failed").write_text(message)
            raise AssertionError(f"{name} {message}")
        time.sleep(0.2)


def stop_holders(root: Path, timeout: float = 60) -> None:
    """SIGTERM every holder of the run at ``root`` and wait until each has left its server."""
    import psutil

    holders = []
    for pid_file in sorted((root / "holders").glob("*.pid")):
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            holders.append(psutil.Process(pid))
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    deadline = time.monotonic() + timeout
    for holder in holders:
        while time.monotonic() < deadline:
            try:
                if holder.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        else:
            with suppress(ProcessLookupError):
                os.killpg(holder.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _servers() -> dict[str, Callable[[Path], AbstractContextManager[str]]]:
    from session_servers import SERVERS  # tests/integration, on the holder's PYTHONPATH

    return SERVERS


def hold(name: str, folder: Path, owner: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _servers()[name](folder) as value:
        partial = folder / "value.json.partial"
        partial.write_text(json.dumps(value))
        partial.rename(folder / "value.json")
        while not stop.wait(1.0) and _alive(owner):
            pass


if __name__ == "__main__":
    hold(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
