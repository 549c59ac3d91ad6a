"""The servers a test run shares, one per backend, each a context manager that yields its URL
(held for the whole run by tests/integration/held.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from servers import mlflow_server, postgres_database, prefect_server

# MLflow delivers webhooks only to public https addresses; the session servers may deliver to a
# listener on loopback over http (tests only), and a disabled webhook stops at once.
MLFLOW_TEST_SETTINGS = {
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@contextmanager
def prefect_sqlite(folder: Path) -> Iterator[str]:
    """`prefect server start` on SQLite; yields its API URL."""
    with prefect_server(folder) as api:
        yield api


@contextmanager
def prefect_postgresql(folder: Path) -> Iterator[str]:
    """`prefect server start` on a PostgreSQL database of its own; yields its API URL."""
    with postgres_database("edgeloop_prefect") as url, prefect_server(folder, url) as api:
        yield api


@contextmanager
def mlflow_sqlite(folder: Path) -> Iterator[str]:
    """`mlflow server` on SQLite with served artifacts; yields its URL."""
    backend = f"sqlite:///{folder / 'mlflow.db'}"
    with mlflow_server(folder, backend, **MLFLOW_TEST_SETTINGS) as url:
        yield url


@contextmanager
def mlflow_postgresql(folder: Path) -> Iterator[str]:
    """`mlflow server` on a PostgreSQL database of its own, served artifacts; yields its URL."""
    with postgres_database("edgeloop_mlflow") as url:
        backend = url.replace("postgresql://", "postgresql+psycopg://")
        with mlflow_server(folder, backend, **MLFLOW_TEST_SETTINGS) as server:
            yield server


SERVERS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "prefect-sqlite": prefect_sqlite,
    "prefect-postgresql": prefect_postgresql,
    "mlflow-sqlite": mlflow_sqlite,
    "mlflow-postgresql": mlflow_postgresql,
}
