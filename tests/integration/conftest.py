"""Fixtures for integration tests: a throw-away project folder driven through the real CLI.

Each project gets its own ``.edgeloop/`` (MLflow SQLite store, artifacts, keys), data folder and
model-card folder; all projects of a session share one PREFECT_HOME so Prefect's database is
migrated once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import held
import pytest
import yaml
from tolerant_profiles import load_tolerant_profiles
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
            EDGELOOP_PROFILES_DIR=str(load_tolerant_profiles()),
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


@pytest.fixture(params=["sqlite", "postgresql"])
def controller_on_each_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A controller process (uvicorn) on SQLite, then on PostgreSQL; yields its base URL."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from servers import uvicorn_controller, write_public_key

    key = write_public_key(Ed25519PrivateKey.generate(), tmp_path / "k.pem")
    db_url = request.getfixturevalue("postgres_db") if request.param == "postgresql" else None
    with uvicorn_controller(tmp_path, key, db_url) as (base, _db_url):
        yield base


# Session servers, one per backend, started on first use and shared by every test (and every
# pytest-xdist worker) that needs one (held.py). A test sharing one keeps to names of its own
# (registered models, work pools, listeners) and filters what it reads back by them, so tests stay
# independent of each other, of their order and of the tests running beside them.


@pytest.fixture(scope="session")
def prefect_sqlite() -> str:
    """`prefect server start` on SQLite; its API URL."""
    return held.server("prefect-sqlite")


@pytest.fixture(scope="session")
def prefect_postgresql() -> str:
    """`prefect server start` on a PostgreSQL database of its own; its API URL."""
    _require_postgres()
    return held.server("prefect-postgresql")


@pytest.fixture(scope="session")
def mlflow_sqlite() -> str:
    """`mlflow server` on SQLite with served artifacts; its URL."""
    return held.server("mlflow-sqlite")


@pytest.fixture(scope="session")
def mlflow_postgresql() -> str:
    """`mlflow server` on a PostgreSQL database of its own, served artifacts; its URL."""
    _require_postgres()
    return held.server("mlflow-postgresql")


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
    prefect_home: Path, prefect_sqlite: str
) -> tuple[Project, subprocess.CompletedProcess[str], Path]:
    """One full `edgeloop run` per test run (the first worker that asks makes it; the others wait
    for it), and a snapshot of the project taken before any test touches it."""
    with held.locked("trained") as folder:
        done = folder / "result.json"
        if done.exists():
            proj = Project(root=folder / "project", prefect_home=prefect_home)
            proj.extra_env["PREFECT_API_URL"] = prefect_sqlite
        else:
            proj = new_project(folder / "project", prefect_home, prefect_sqlite)
            proj.set_params(**TRAINED_PARAMS)
            ran = proj.edgeloop("run", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
            shutil.copytree(proj.root, folder / "snapshot" / "project", symlinks=True)
            outcome = {"returncode": ran.returncode, "stdout": ran.stdout, "stderr": ran.stderr}
            done.write_text(json.dumps(outcome))
        outcome = json.loads(done.read_text())
    result = subprocess.CompletedProcess(
        ["edgeloop", "run"], outcome["returncode"], outcome["stdout"], outcome["stderr"]
    )
    return proj, result, folder / "snapshot" / "project"


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
