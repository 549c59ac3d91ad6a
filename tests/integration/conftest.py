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


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database (skips with the reason when PostgreSQL is not running)."""
    import psycopg
    from servers import PG, postgres_database

    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG} is not reachable: {exc}")
    with postgres_database("edgeloop_test") as url:
        yield url


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def new_project(root: Path, prefect_home: Path) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return Project(root=root, prefect_home=prefect_home)


@pytest.fixture
def project(tmp_path: Path, prefect_home: Path) -> Project:
    return new_project(tmp_path / "project", prefect_home)


@pytest.fixture(scope="session")
def trained(
    tmp_path_factory: pytest.TempPathFactory, prefect_home: Path
) -> Iterator[tuple[Project, subprocess.CompletedProcess[str]]]:
    """One full `edgeloop run`, shared by the tests that inspect its results."""
    proj = new_project(tmp_path_factory.mktemp("trained") / "project", prefect_home)
    result = proj.edgeloop("run", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    yield proj, result
