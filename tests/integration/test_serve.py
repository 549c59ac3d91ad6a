"""`edgeloop serve` against real servers: every child healthy, a crashed child restarted, SIGTERM
stops everything (no process left, checked by pid), on SQLite and on PostgreSQL; a stack stopped
and started again on the same home comes back, the MLflow webhook it made included."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import psutil
import pytest
from serve_process import Served, alive, edgeloop_serve, serve_databases

from edgeloop.cli.serve_plan import pool_has_live_worker

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


@pytest.fixture
def project(bare_project: Project) -> Project:
    """`edgeloop serve` starts the servers this test uses: no session server."""
    return bare_project


def _assert_all_healthy(served: Served) -> None:
    assert httpx.get(f"{served.prefect}/api/health", timeout=5).status_code == 200
    assert httpx.get(f"{served.mlflow}/health", timeout=5).status_code == 200
    assert httpx.get(f"{served.controller}/v1/health", timeout=5).status_code == 200
    assert httpx.get(f"{served.listener}/health", timeout=5).status_code == 200
    assert pool_has_live_worker(f"{served.prefect}/api", "edgeloop-ops")
    for name in ("rollout/promoted", "scheduled-retrain/scheduled"):
        found = httpx.get(f"{served.prefect}/api/deployments/name/{name}", timeout=5)
        assert found.status_code == 200, name
    scheduled = httpx.get(
        f"{served.prefect}/api/deployments/name/scheduled-retrain/scheduled"
    ).json()
    assert scheduled["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert set(served.state["children"]) == {
        "prefect-server", "mlflow-server", "fleet-controller", "promotion-listener",
        "registry-follower", "worker edgeloop-ops",
    }  # fmt: skip


# Which secret (by its file under <home>/secrets/) each child may hold in its environment.
MAY_HOLD = {
    "prefect-server": set(),
    "mlflow-server": {"mlflow-webhook-key"},
    "fleet-controller": {"fleet-admin-token"},
    "promotion-listener": {"listener-secret"},
    "registry-follower": {"fleet-admin-token"},
    "worker edgeloop-ops": {"fleet-admin-token"},
}


def _assert_no_secret_where_it_leaks(served: Served, project: Project) -> None:
    """No secret on any command line (what `ps` shows every user), in serve.json or in a log;
    in a child's environment only where that child uses it."""
    held = {f.name: f.read_text().strip() for f in (project.home / "secrets").iterdir()}
    assert set(held) == {"fleet-admin-token", "listener-secret", "mlflow-webhook-key"}
    for proc in [psutil.Process(served.proc.pid), *psutil.Process(served.proc.pid).children(True)]:
        line = " ".join(proc.cmdline())
        assert not [n for n, v in held.items() if v in line], line
    assert not [n for n, v in held.items() if v in (project.home / "serve.json").read_text()]
    for log in (project.home / "logs").iterdir():
        assert not [n for n, v in held.items() if v in log.read_text(errors="replace")], log
    for name, child in served.state["children"].items():
        environ = psutil.Process(child["pid"]).environ()
        found = {n for n, v in held.items() if v in environ.values()}
        assert found == MAY_HOLD.get(name, set()), name


def _sigterm_leaves_nothing(served: Served) -> None:
    pids = served.descendants()
    assert len(pids) >= 5
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=90) == 0, served.output()
    time.sleep(0.5)
    assert alive(pids) == [], [psutil.Process(p).cmdline() for p in alive(pids)]
    assert "stopped" in served.output()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.mark.slow  # kills a child and stops the stack: a stack of its own
def test_serve_on_sqlite_heals_a_crashed_child_and_stops_cleanly(project: Project) -> None:
    with edgeloop_serve(project) as served:
        _assert_all_healthy(served)
        assert (project.home / "prefect-server.db").is_file()
        assert (project.home / "mlflow-server.db").is_file()
        secret = project.home / "secrets" / "listener-secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        _assert_no_secret_where_it_leaks(served, project)
        crashed = served.state["children"]["fleet-controller"]["pid"]
        os.kill(crashed, signal.SIGKILL)
        _wait(
            lambda: (
                httpx.get(f"{served.controller}/v1/health", timeout=2).status_code == 200
                and "restarting fleet-controller" in served.output()
            ),
            90,
            "the fleet controller was not restarted",
        )
        _sigterm_leaves_nothing(served)


@pytest.mark.slow  # stops the stack and starts it again: stacks of its own
def test_serve_stopped_and_started_again_reads_the_webhook_it_stored(project: Project) -> None:
    from mlflow import MlflowClient

    for start in ("first", "again"):
        with edgeloop_serve(project, "--allow-loopback-webhooks") as served:
            assert "MLflow webhook on alias changes" in served.output(), (start, served.output())
            hooks = MlflowClient(tracking_uri=served.mlflow).list_webhooks()
            assert served.listener + "/" in " ".join(h.url for h in hooks), start
            _sigterm_leaves_nothing(served)
    assert "MLflow refused the webhook" not in served.output()


@pytest.mark.slow  # kills a child and stops the stack: a stack of its own
def test_serve_on_postgresql(project: Project, postgres_db: str) -> None:
    with (
        serve_databases(postgres_db) as names,
        edgeloop_serve(project, "--db-url", postgres_db) as served,
    ):
        _assert_all_healthy(served)
        assert not (project.home / "mlflow-server.db").exists()
        assert names == [
            f"{postgres_db.rsplit('/', 1)[1]}_{s}" for s in ("prefect", "mlflow", "fleet")
        ]
        _sigterm_leaves_nothing(served)


def test_database_names_are_identifiers_not_sql(postgres_db: str) -> None:
    """A NAME with a quote and a statement in it becomes three databases of that exact name."""
    import psycopg
    from psycopg import sql

    from edgeloop.cli.serve_plan import ensure_databases

    server = postgres_db.rsplit("/", 1)[0]
    name = 'e"; DROP DATABASE postgres; --'
    try:
        made = ensure_databases(f"{server}/{name}")
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            found = {r[0] for r in admin.execute("SELECT datname FROM pg_database")}
            assert {f"{name}_{s}" for s in ("prefect", "mlflow", "fleet")} == set(made) <= found
            assert "postgres" in found
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            for service in ("prefect", "mlflow", "fleet"):
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(f"{name}_{service}")))


def test_serve_refuses_a_db_url_that_is_not_postgresql(project: Project) -> None:
    result = project.edgeloop("serve", "--db-url", "mysql://root@127.0.0.1/edgeloop", timeout=60)
    assert result.returncode == 1
    assert "--db-url 'mysql://root@127.0.0.1/edgeloop' is not a PostgreSQL URL" in result.stderr
    assert not (project.home / "logs").exists()  # nothing started


def test_serve_names_an_unreachable_postgresql(project: Project) -> None:
    result = project.edgeloop(
        "serve", "--db-url", "postgresql://postgres@127.0.0.1:1/x", timeout=60
    )
    assert result.returncode == 1
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in result.stderr
    assert not (project.home / "logs").exists()
