"""Fixtures for integration tests: a throw-away project folder driven through the real CLI.

Each project gets its own ``.edgeloop/`` (MLflow SQLite store, artifacts, keys), data folder and
model-card folder; all projects of a session share one PREFECT_HOME so Prefect's database is
migrated once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from training_params import TRAINED_PARAMS

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Project:
    root: Path
    prefect_home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / ".edgeloop"

    @property
    def tracking_uri(self) -> str:
        return self.extra_env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EDGELOOP_", "MLFLOW_", "PREFECT_"))
        }
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            COLUMNS="200",
            EDGELOOP_HARDWARE_TESTS_DIR=str(REPO / "hardware-tests"),
            EDGELOOP_PROFILES_DIR=str(REPO / "hardware-tests" / "profiles"),
        )
        env.update(self.extra_env)
        return env

    def edgeloop(
        self, *args: str, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeloop.cli", *args],
            cwd=self.root,
            env={**self.env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def set_params(self, **sections: object) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(params.get(key), dict):
                params[key].update(value)
            else:
                params[key] = value
        path.write_text(yaml.safe_dump(params))

    def client(self):  # type: ignore[no-untyped-def]
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def version_count(self) -> int:
        if self.tracking_uri.startswith("sqlite") and not (self.home / "mlflow.db").exists():
            return 0
        return len(self.client().search_model_versions())


def _require_postgres() -> None:
    import psycopg
    from servers import PG

    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG} is not reachable: {exc}")


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database (skips with the reason when PostgreSQL is not running)."""
    from servers import postgres_database

    _require_postgres()
    with postgres_database("edgeloop_test") as url:
        yield url


# Session servers, one per backend, started on first use and shared by every test that needs one.
# A test sharing one keeps to names of its own (registered models, work pools, listeners) and
# filters what it reads back by them, so tests stay independent of each other and of their order.


@pytest.fixture(scope="session")
def prefect_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on SQLite; yields its API URL."""
    from servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-sqlite")) as api:
        yield api


@pytest.fixture(scope="session")
def prefect_postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a PostgreSQL database of its own; yields its API URL."""
    from servers import postgres_database, prefect_server

    _require_postgres()
    folder = tmp_path_factory.mktemp("prefect-postgresql")
    with postgres_database("edgeloop_prefect") as url, prefect_server(folder, url) as api:
        yield api


# MLflow delivers webhooks only to public https addresses; the session servers may deliver to a
# listener on loopback over http (tests only), and a disabled webhook stops at once.
MLFLOW_TEST_SETTINGS = {
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on SQLite with served artifacts; yields its URL."""
    from servers import mlflow_server

    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(folder, f"sqlite:///{folder / 'mlflow.db'}", **MLFLOW_TEST_SETTINGS) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a PostgreSQL database of its own, served artifacts; yields its URL."""
    from servers import mlflow_server, postgres_database

    _require_postgres()
    folder = tmp_path_factory.mktemp("mlflow-postgresql")
    with postgres_database("edgeloop_mlflow") as url:
        backend = url.replace("postgresql://", "postgresql+psycopg://")
        with mlflow_server(folder, backend, **MLFLOW_TEST_SETTINGS) as server:
            yield server


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def new_project(root: Path, prefect_home: Path, prefect_api: str | None = None) -> Project:
    """A project folder; with ``prefect_api`` its CLI processes use that Prefect server instead
    of each booting Prefect's temporary one (about 10 s a process)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    project = Project(root=root, prefect_home=prefect_home)
    if prefect_api:
        project.extra_env["PREFECT_API_URL"] = prefect_api
    return project


@pytest.fixture
def project(tmp_path: Path, prefect_home: Path, prefect_sqlite: str) -> Project:
    return new_project(tmp_path / "project", prefect_home, prefect_sqlite)


@pytest.fixture
def bare_project(tmp_path: Path, prefect_home: Path) -> Project:
    """A project that starts servers of its own (`edgeloop serve`): no session server."""
    return new_project(tmp_path / "project", prefect_home)


@pytest.fixture(scope="session")
def _trained_once(
    tmp_path_factory: pytest.TempPathFactory, prefect_home: Path, prefect_sqlite: str
) -> tuple[Project, subprocess.CompletedProcess[str], Path]:
    """One full `edgeloop run`, and a snapshot of the project taken before any test touches it."""
    proj = new_project(tmp_path_factory.mktemp("trained") / "project", prefect_home, prefect_sqlite)
    proj.set_params(**TRAINED_PARAMS)
    result = proj.edgeloop("run", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    snapshot = tmp_path_factory.mktemp("trained-snapshot") / "project"
    shutil.copytree(proj.root, snapshot, symlinks=True)
    return proj, result, snapshot


@pytest.fixture(scope="session")
def trained(
    _trained_once: tuple[Project, subprocess.CompletedProcess[str], Path],
) -> tuple[Project, subprocess.CompletedProcess[str]]:
    """One full `edgeloop run`, shared by the tests that inspect its results."""
    proj, result, _ = _trained_once
    return proj, result


@pytest.fixture
def registered(
    _trained_once: tuple[Project, subprocess.CompletedProcess[str], Path],
    tmp_path: Path,
    prefect_home: Path,
    prefect_sqlite: str,
) -> Project:
    """A project of its own holding v1 of digits-classifier (alias ``candidate``, hardware
    passed), copied from the session's `edgeloop run` instead of trained again: its embedded
    MLflow store, artifacts, signing keys, splits and model cards, with every absolute path in the
    store moved to the copy."""
    _, result, snapshot = _trained_once
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "project"
    shutil.copytree(snapshot, root, symlinks=True)
    _move_store_paths(root / ".edgeloop" / "mlflow.db", str(_trained_once[0].root), str(root))
    proj = Project(root=root, prefect_home=prefect_home)
    proj.extra_env["PREFECT_API_URL"] = prefect_sqlite
    return proj


def _move_store_paths(db: Path, old: str, new: str) -> None:
    """Rewrite ``old`` to ``new`` in every text column of the SQLite store at ``db``."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                name, kind = column[1], (column[2] or "").upper()
                if "CHAR" in kind or "TEXT" in kind or "CLOB" in kind:
                    conn.execute(
                        f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) '
                        f'WHERE instr("{name}", ?) > 0',
                        (old, new, old),
                    )
    conn.close()
