"""What `edgeloop serve` runs: addresses, stores per backend, secrets, webhook settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeloop.cli.serve_plan import (
    ADMIN_TOKEN,
    LISTENER_SECRET,
    SECRETS,
    SIGNING_KEYS,
    WEBHOOK_KEY,
    ServePlan,
    ServeSecrets,
    check_db_url,
    children,
    secret,
    webhook_key,
)
from edgeloop.core.errors import ConfigError


def plan(tmp_path: Path, **kw: object) -> ServePlan:
    return ServePlan(
        home=tmp_path, host="127.0.0.1", base_port=4200,
        controller_url="http://127.0.0.1:8787", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def held(tmp_path: Path, mlflow_key: str = "fernet-key") -> ServeSecrets:
    return ServeSecrets("admin-token", "listener-secret", mlflow_key, tmp_path / "keys")


def test_each_secret_goes_to_the_children_that_use_it_and_no_other(tmp_path: Path) -> None:
    specs = {c.name: c for c in children(plan(tmp_path), {}, ["hw-rpi4-arm64"], held(tmp_path))}
    holders = {name: sorted(k for k in SECRETS if spec.env.get(k)) for name, spec in specs.items()}
    assert holders == {
        "prefect-server": [],
        "mlflow-server": [WEBHOOK_KEY],
        "fleet-controller": [ADMIN_TOKEN],
        "promotion-listener": [LISTENER_SECRET],
        "registry-follower": [ADMIN_TOKEN],  # it reads the controller's outcome feed
        "worker edgeloop-ops": [ADMIN_TOKEN, SIGNING_KEYS],  # its flows roll out and register
        "worker hw-rpi4-arm64": [],
    }
    for spec in specs.values():  # what serve's own environment holds is not inherited either
        assert spec.withheld == SECRETS - spec.env.keys(), spec.name
    with pytest.raises(AssertionError, match="a secret in the environment every child gets"):
        children(plan(tmp_path), {ADMIN_TOKEN: "x"}, [], held(tmp_path))


def test_sqlite_stores_live_under_the_home(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert p.database("prefect") == f"sqlite+aiosqlite:///{tmp_path}/prefect-server.db"
    assert p.database("mlflow") == f"sqlite:///{tmp_path}/mlflow-server.db"
    assert p.database("fleet") == f"sqlite:///{tmp_path}/fleet.db"
    assert (p.prefect_api_url, p.mlflow_url) == (
        "http://127.0.0.1:4200/api",
        "http://127.0.0.1:4201",
    )


def test_postgresql_gives_each_server_its_database_and_driver(tmp_path: Path) -> None:
    p = plan(tmp_path, db_url="postgresql://pg@db:5433/edge")
    assert p.database("prefect") == "postgresql+asyncpg://pg@db:5433/edge_prefect"
    assert p.database("mlflow") == "postgresql+psycopg://pg@db:5433/edge_mlflow"
    assert p.database("fleet") == "postgresql://pg@db:5433/edge_fleet"


@pytest.mark.parametrize("url", ["mysql://root@db/x", "sqlite:///x.db", "postgresql:///nohost"])
def test_a_db_url_that_is_not_postgresql_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a PostgreSQL URL"):
        check_db_url(url)


def test_secret_prefers_the_variable_then_the_file_else_makes_one_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secrets" / "s"
    monkeypatch.setenv("S_FOR_TEST", "from-env")
    assert secret("S_FOR_TEST", path) == "from-env" and not path.exists()
    monkeypatch.delenv("S_FOR_TEST")
    made = secret("S_FOR_TEST", path)
    assert len(made) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert secret("S_FOR_TEST", path) == made  # stable across restarts


def test_loopback_webhook_settings_only_when_asked(tmp_path: Path) -> None:
    def mlflow_env(p: ServePlan) -> dict[str, str]:
        return next(c.env for c in children(p, {}, [], held(tmp_path)) if c.name == "mlflow-server")

    assert "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS" not in mlflow_env(plan(tmp_path))
    allowed = plan(tmp_path, allow_loopback_webhooks=True)
    assert mlflow_env(allowed)["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert allowed.webhook_allowed and not plan(tmp_path).webhook_allowed


def test_mlflow_job_runner_is_off_unless_the_operator_turns_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def job_execution() -> str:
        spec = next(
            c for c in children(plan(tmp_path), {}, [], held(tmp_path)) if c.name == "mlflow-server"
        )
        return spec.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]

    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert job_execution() == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert job_execution() == "true"


def test_one_worker_per_pool_and_the_controller_where_params_say(tmp_path: Path) -> None:
    specs = {c.name: c for c in children(plan(tmp_path), {}, ["hw-rpi4-arm64"], held(tmp_path))}
    assert {"worker edgeloop-ops", "worker hw-rpi4-arm64"} <= set(specs)
    argv = specs["fleet-controller"].argv
    assert argv[argv.index("--port") + 1] == "8787"


def test_the_webhook_key_is_kept_and_goes_to_the_mlflow_server_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.delenv(WEBHOOK_KEY, raising=False)
    p = plan(tmp_path)
    key = webhook_key(p)
    kept = tmp_path / "secrets" / "mlflow-webhook-key"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert webhook_key(p) == key  # a restarted stack decrypts what it stored
    token = Fernet(key.encode()).encrypt(b"listener secret")  # the form mlflow server takes
    assert Fernet(webhook_key(p).encode()).decrypt(token) == b"listener secret"
    specs = children(p, {"SHARED": "1"}, ["hw-rpi4-arm64"], held(tmp_path, key))
    holders = [c.name for c in specs if WEBHOOK_KEY in c.env]
    assert holders == ["mlflow-server"]
    monkeypatch.setenv(WEBHOOK_KEY, "from-the-operator")
    assert webhook_key(p) == "from-the-operator"


def test_a_database_name_postgresql_would_cut_short_is_refused() -> None:
    check_db_url(f"postgresql://u@h:5432/{'n' * 54}")  # n…n_prefect: 62 bytes
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63 bytes"):
        check_db_url(f"postgresql://u@h:5432/{'n' * 56}")


def test_no_database_password_on_a_child_command_line(tmp_path: Path) -> None:
    p = plan(tmp_path, db_url="postgresql://edgeloop:hunter2@db:5432/edgeloop")
    specs = children(p, {}, ["hw-rpi4-arm64"], held(tmp_path))
    assert not [c.name for c in specs if any("hunter2" in a for a in c.argv)]
    mlflow = next(c for c in specs if c.name == "mlflow-server")
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == p.database("mlflow")
    assert "hunter2" in p.database("mlflow")


def test_the_registry_follower_follows_the_controller_and_is_healthy_once_caught_up(
    tmp_path: Path,
) -> None:
    from edgeloop.cli.serve_plan import FOLLOWER_HEALTHY_S
    from registry.follower import FollowerStore, store_path

    specs = {c.name: c for c in children(plan(tmp_path), {}, [], held(tmp_path))}
    follower = specs["registry-follower"]
    assert follower.argv[-6:] == [
        "registry", "follow", "--url", "http://127.0.0.1:8787", "--interval", "2.0",
    ]  # fmt: skip
    assert not follower.health()  # not started: no store yet
    store = FollowerStore(store_path(tmp_path))
    assert not follower.health()  # started, never through the feed (MLflow or controller down)
    store.caught_up(time.time())
    assert follower.health()
    store.failed("ConnectError: MLflow is down", time.time() + 1)
    assert not follower.health()
    store.caught_up(time.time() - FOLLOWER_HEALTHY_S - 5)
    assert not follower.health()  # stuck for longer than it may be
