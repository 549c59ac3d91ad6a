"""Starting and stopping real servers for integration tests, the way an operator would."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from builders import claim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.agent.client import ControllerClient
from fleet.shared.ports import free_port

PG = os.environ.get("EDGELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REPO = Path(__file__).resolve().parents[2]
ADMIN = "test-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout} s: {log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process group (server plus its workers), then SIGKILL what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the local PostgreSQL; yields ``postgresql://.../<name>``."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def write_public_key(key: Ed25519PrivateKey, path: Path) -> Path:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(public)
    return path


def wait_until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Controller:
    """``python -m fleet.controller.api.serve`` in its own process group, and an admin client."""

    root: Path
    db_url: str
    public_key: Path
    port: int = field(default_factory=free_port)
    tls: tuple[Path, Path, Path] | None = None  # cert, key, ca
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """More ``EDGELOOP_FLEET_*`` (or ``AWS_*``) settings of the process."""

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Controller:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            PYTHONPATH=str(REPO),
            EDGELOOP_FLEET_DB_URL=self.db_url,
            EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
            EDGELOOP_FLEET_RECONCILE_S="0.2",
            EDGELOOP_FLEET_LONG_POLL_RECHECK_S="0.5",
            EDGELOOP_FLEET_PUBLIC_KEY_PATH=str(self.public_key),
            EDGELOOP_FLEET_HOST="127.0.0.1",
            EDGELOOP_FLEET_PORT=str(self.port),
            EDGELOOP_FLEET_ARTIFACT_DIR=str(self.artifact_dir),
        )
        env.update(self.env)
        if self.tls:
            env.update(
                EDGELOOP_FLEET_TLS_CERTFILE=str(self.tls[0]),
                EDGELOOP_FLEET_TLS_KEYFILE=str(self.tls[1]),
            )
        self.starts += 1
        log = self.root / f"controller-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleet.controller.api.serve"],
                cwd=self.root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        verify = self.verify()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/v1/health", verify=verify, timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"controller not healthy: {log.read_text()[-3000:]}")

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.tls[2])) if self.tls else True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        verify = self.verify()
        return httpx.request(
            method, f"{self.base}{path}", headers=ADMIN_HEADERS, verify=verify, timeout=30, **kwargs
        )

    def client(self, **kwargs: Any) -> ControllerClient:
        return ControllerClient(self.base, backoff_s=0.01, **kwargs)

    def token(self, cls: str, uses: int = 100) -> str:
        r = self.admin("POST", "/v1/enrolment-tokens", json={"uses": uses, "hardware_class": cls})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def enrol(self, device_id: str, cls: str) -> str:
        with self.client() as c:
            return c.enrol(self.token(cls, 1), device_id, cls).credential

    def register(
        self, model: str, version: str, cls: str, data: bytes, signature: str | None
    ) -> None:
        """Upload ``data`` as the ``<cls>-int8`` variant of ``model`` ``version`` (signed when
        ``signature`` is given)."""
        query = claim(None, f"{cls}-int8", data, model=model, version=version, hardware_class=cls)
        if signature is not None:
            query["signature"] = signature
        r = self.admin("POST", "/v1/artifacts", params=query, content=data)
        assert r.status_code == 200, r.text

    @property
    def artifact_dir(self) -> Path:
        """The controller's local artifact store (``EDGELOOP_FLEET_ARTIFACT_DIR``)."""
        return self.root / "artifact-store"

    def rollout(self, model: str, version: str, cls: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "version": version, "stable_version": "1", **extra}
        body.setdefault("policy", policy(cls))
        return self.admin("POST", "/v1/rollouts", json=body)

    def command(self, rollout_id: str, command: str) -> dict[str, Any]:
        r = self.admin("POST", f"/v1/rollouts/{rollout_id}/{command}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def status(self, rollout_id: str) -> dict[str, Any]:
        r = self.admin("GET", f"/v1/rollouts/{rollout_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def policy(
    cls: str, *, bake_s: float = 1.0, deadline_s: float = 30.0, on_inconclusive: str = "fail"
) -> dict[str, Any]:
    return {
        "cohorts": {cls: {"p95_latency_ms": 50}},
        "stages": [
            {
                "fraction": f,
                "bake_s": bake_s,
                "deadline_s": deadline_s,
                "min_confirmed_devices": 1,
                "min_confirmed_fraction": 1.0,
                "min_inferences": 100,
                "min_feedback": 50,
            }
            for f in (0.5, 1.0)
        ],
        "gates": {
            "max_error_rate": 0.05,
            "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 50},
        },
        "on_inconclusive": on_inconclusive,
        "rollback_timeout_s": 60,
    }


@contextmanager
def uvicorn_controller(
    root: Path, public_key: Path, db_url: str | None = None, **env: str
) -> Iterator[tuple[str, str]]:
    """The controller app under ``uvicorn --factory`` (on ``db_url``, default SQLite in ``root``;
    admin token ``ADMIN``; a fast reconcile pass; no Prefect API); yields its base URL and database
    URL. ``env`` adds settings."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db_url = db_url or f"sqlite:///{root / 'fleet.db'}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP_", "PREFECT_"))}
    environ.update(
        EDGELOOP_FLEET_DB_URL=db_url,
        EDGELOOP_FLEET_ARTIFACT_DIR=str(root / "artifact-store"),
        EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
        EDGELOOP_FLEET_PUBLIC_KEY_PATH=str(public_key),
        EDGELOOP_FLEET_RECONCILE_S="0.2",
        EDGELOOP_FLEET_LONG_POLL_RECHECK_S="0.2",
        PYTHONPATH=str(REPO),
        **env,
    )
    log = root / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "fleet.controller.api.app:app_from_env",
                ),
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                *("--timeout-graceful-shutdown", "1"),  # held long-polls end with the test
            ],
            cwd=root,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(proc, f"{base}/v1/health", log, timeout=60)
        yield base, db_url
    finally:
        stop_group(proc)


@contextmanager
def prefect_server(folder: Path, db_url: str | None = None) -> Iterator[str]:
    """`prefect server start` with its home and working directory in ``folder``, on SQLite or on PostgreSQL ``db_url``;
    yields its API URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(folder / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url.replace(
            "postgresql://", "postgresql+asyncpg://"
        )
    folder.mkdir(parents=True, exist_ok=True)
    port, log_path = free_port(), folder / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}/api/health", log_path, timeout=180)
            yield f"http://127.0.0.1:{port}/api"
        finally:
            stop_group(proc)


@contextmanager
def mlflow_server(folder: Path, backend: str, *args: str, **env: str) -> Iterator[str]:
    """`mlflow server` (working directory and served artifacts in ``folder``) on the SQLAlchemy URL ``backend``; yields
    its URL. MLflow's job runner (about ten huey consumer processes) is off: no test submits a
    job. ``args`` add options, ``env`` settings."""
    folder.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environ.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **env)
    port, log_path = free_port(), folder / "mlflow-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                "--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args,
            ],
            cwd=folder, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, f"{url}/health", log_path)
            yield url
        finally:
            stop_group(proc)
