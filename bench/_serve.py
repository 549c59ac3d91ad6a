"""`edgeloop serve` in a scratch project for the benchmarks: free ports, start, wait, stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_run(count: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        try:
            for i in range(count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no run of {count} free ports")


@dataclass
class Serving:
    root: Path
    proc: subprocess.Popen[bytes]
    started: float
    urls: dict[str, str]

    @property
    def home(self) -> Path:
        return self.root / ".edgeloop"

    def env(self) -> dict[str, str]:
        return scrubbed_env(
            MLFLOW_TRACKING_URI=self.urls["mlflow"], PREFECT_API_URL=self.urls["prefect"] + "/api"
        )


def scrubbed_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGELOOP_", "MLFLOW_", "PREFECT_"))
    }
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EDGELOOP_PROFILES_DIR=str(REPO / "hardware-tests" / "profiles"),
        EDGELOOP_HARDWARE_TESTS_DIR=str(REPO / "hardware-tests"),
        **extra,
    )
    return env


def scratch_project(root: Path, **params: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in params.items():
        raw[key] = {**raw.get(key, {}), **value}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


@contextmanager
def serving(
    root: Path,
    *args: str,
    timeout: float = 600,
    on_spawn: Callable[[dict[str, str], float], None] | None = None,
) -> Iterator[Serving]:
    """`edgeloop serve` in ``root`` (params.yaml already there); yields when every child is healthy.

    ``on_spawn(urls, started)`` is called right after the launch (to time the children from it)."""
    base = _free_run(4)
    urls = {
        "prefect": f"http://127.0.0.1:{base}",
        "mlflow": f"http://127.0.0.1:{base + 1}",
        "listener": f"http://127.0.0.1:{base + 2}",
        "controller": f"http://127.0.0.1:{base + 3}",
    }
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw.setdefault("rollout", {})["controller_url"] = urls["controller"]
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    log = (root / "serve.out").open("w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "serve", "--base-port", str(base), *args],
        cwd=root, env=scrubbed_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    if on_spawn is not None:
        on_spawn(urls, started)
    try:
        state = root / ".edgeloop" / "serve.json"
        while not state.exists():
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"edgeloop serve failed: {(root / 'serve.out').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield Serving(root=root, proc=proc, started=started, urls=urls)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=90)
        log.close()


def serve_state(serving: Serving) -> dict[str, Any]:
    return dict(json.loads((serving.home / "serve.json").read_text()))


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
