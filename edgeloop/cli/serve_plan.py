"""What `edgeloop serve` runs: the servers and workers as supervised children, with their settings.

Ports: the Prefect server on ``base_port``, the MLflow server on ``base_port + 1``, the promotion
listener on ``base_port + 2``; the fleet controller where params.yaml's ``rollout.controller_url``
says it is, so the rollout flow finds it. State lives under the edgeloop home: SQLite databases
(``prefect-server.db``, ``mlflow-server.db``, ``fleet.db``) and served artifacts (``mlartifacts``).
With ``db_url`` (``postgresql://user@host:port/NAME``) each server gets its own PostgreSQL database,
``NAME_prefect``, ``NAME_mlflow`` and ``NAME_fleet``, created when missing. The listener's webhook
secret, the controller's admin token and the key MLflow encrypts stored webhook secrets with come
from ``EDGELOOP_LISTENER_SECRET``, ``EDGELOOP_FLEET_ADMIN_TOKEN`` and
``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``, or are generated once into ``<home>/secrets/`` (mode 0600),
so a stack stopped and started again reads what it stored.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from edgeloop.cli.supervisor import ChildSpec
from edgeloop.core.errors import ConfigError

SERVICES = ("prefect", "mlflow", "fleet")


@dataclass(frozen=True)
class ServePlan:
    """Addresses and stores of one `edgeloop serve`."""

    home: Path
    host: str
    base_port: int
    controller_url: str
    db_url: str | None = None
    allow_loopback_webhooks: bool = False

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.base_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.base_port + 1}"

    @property
    def listener_url(self) -> str:
        """https when the listener has a certificate (EDGELOOP_LISTENER_TLS_CERTFILE)."""
        scheme = "https" if os.environ.get("EDGELOOP_LISTENER_TLS_CERTFILE") else "http"
        return f"{scheme}://{self.host}:{self.base_port + 2}"

    @property
    def webhook_allowed(self) -> bool:
        """MLflow delivers to https; to http only when loopback webhooks are allowed."""
        return self.listener_url.startswith("https:") or self.allow_loopback_webhooks

    @property
    def webhook_url(self) -> str:
        return f"{self.listener_url}/webhooks/mlflow"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def database(self, service: str) -> str:
        """The SQLAlchemy URL of one server's store (``service`` in SERVICES)."""
        if self.db_url is None:
            name = {"prefect": "prefect-server.db", "mlflow": "mlflow-server.db"}.get(
                service, "fleet.db"
            )
            path = (self.home / name).resolve()
            return f"sqlite+aiosqlite:///{path}" if service == "prefect" else f"sqlite:///{path}"
        driver = {"prefect": "postgresql+asyncpg", "mlflow": "postgresql+psycopg"}
        parts = urlsplit(self.db_url)
        url = urlunsplit(parts._replace(path=f"/{database_name(self.db_url, service)}"))
        return url.replace("postgresql://", f"{driver.get(service, 'postgresql')}://", 1)


PG_NAME_BYTES = 63
"""PostgreSQL's longest identifier: a longer database name is cut short without an error, and the
three services' names could end up the same."""


def check_db_url(db_url: str) -> None:
    parts = urlsplit(db_url)
    if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
        raise ConfigError(
            f"--db-url {db_url!r} is not a PostgreSQL URL",
            hint="give postgresql://USER@HOST:PORT/NAME (leave it out for SQLite under the home)",
        )
    longest = max((database_name(db_url, s) for s in SERVICES), key=lambda n: len(n.encode()))
    if len(longest.encode()) > PG_NAME_BYTES:
        raise ConfigError(
            f"--db-url's database name makes {longest!r}, longer than PostgreSQL's "
            f"{PG_NAME_BYTES} bytes",
            hint="give a shorter NAME in postgresql://USER@HOST:PORT/NAME",
        )


def database_name(db_url: str, service: str) -> str:
    base = urlsplit(db_url).path.strip("/") or "edgeloop"
    return f"{base}_{service}"


def ensure_databases(db_url: str) -> list[str]:
    """Create the three databases of ``db_url`` that do not exist yet; returns their names."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(db_url.replace("postgres://", "postgresql://", 1))
    admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    try:
        conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise ConfigError(
            f"cannot reach PostgreSQL at {parts.hostname}:{parts.port or 5432}: "
            f"{str(exc).strip().splitlines()[0]}",
            hint="start PostgreSQL or fix --db-url",
        ) from exc
    names = [database_name(db_url, s) for s in SERVICES]
    with conn:
        for name in names:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not found:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return names


def fernet_key() -> str:
    """A new key in the form ``cryptography.fernet.Fernet`` takes: 32 random bytes, url-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def secret(
    env_name: str, path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)
) -> str:
    """The variable's value, else the file's, else a new secret from ``make`` written with mode
    0600."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def http_ok(url: str) -> bool:
    # Only the status is read, from a child this process started: a self-signed certificate is fine.
    return httpx.get(url, timeout=2, verify=False).status_code == 200


def pool_has_live_worker(prefect_api_url: str, pool: str) -> bool:
    response = httpx.post(f"{prefect_api_url}/work_pools/{pool}/workers/filter", json={}, timeout=3)
    return response.status_code == 200 and any(w.get("status") == "ONLINE" for w in response.json())


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


WEBHOOK_KEY = "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"
"""The key ``mlflow server`` encrypts webhook secrets with in its database. Unset, it makes up a
new one per process, and a restarted server can no longer read the webhooks it stored."""


def webhook_key(plan: ServePlan) -> str:
    """``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``, else the key kept in ``<home>/secrets/``."""
    return secret(WEBHOOK_KEY, plan.home / "secrets" / "mlflow-webhook-key", make=fernet_key)


ADMIN_TOKEN = "EDGELOOP_FLEET_ADMIN_TOKEN"
LISTENER_SECRET = "EDGELOOP_LISTENER_SECRET"
SIGNING_KEYS = "EDGELOOP_SIGNING_KEYS_DIR"
SECRETS = frozenset(
    {
        ADMIN_TOKEN,
        LISTENER_SECRET,
        WEBHOOK_KEY,
        SIGNING_KEYS,
        "EDGELOOP_FLEET_METRICS_TOKEN",
        "EDGELOOP_DB_URL",
    }
)
"""What no child inherits from `edgeloop serve`'s environment: each is handed, by
:func:`children`, to the one child that uses it."""


@dataclass(frozen=True)
class ServeSecrets:
    """The secrets `edgeloop serve` holds, and who gets each: the admin token the controller
    checks and the ops worker's rollout flow and the registry follower send; the webhook secret the listener checks; the key
    MLflow encrypts stored webhook secrets with; the signing keys' folder to the ops worker alone,
    whose flows register (and sign) versions. The Prefect server and the hardware pools' workers
    get none, so a flaw in one of them reads none."""

    admin_token: str
    listener_secret: str
    mlflow_key: str
    keys_dir: Path


FOLLOW_INTERVAL_S = 2.0
"""How often the registry follower reads the controller's outcome feed."""
FOLLOWER_HEALTHY_S = 60.0
"""The follower is healthy while its last pass through the feed, with MLflow and the controller
reachable, is at most this old."""


def follower_caught_up(home: Path) -> bool:
    """The registry follower's health: it reached the end of the outcome feed lately."""
    from registry.follower import healthy, store_path

    return healthy(store_path(home), FOLLOWER_HEALTHY_S)


def _given(**secrets: str) -> tuple[dict[str, str], frozenset[str]]:
    """A child's secrets in its ``env``, and ``withheld``: these secrets and no other."""
    return secrets, SECRETS - secrets.keys()


def children(
    plan: ServePlan, env: dict[str, str], pools: list[str], secrets: ServeSecrets
) -> list[ChildSpec]:
    """The servers and one worker per pool; ``env`` (addresses and paths, no secret) goes to each,
    each of ``secrets`` to the child that needs it (:class:`ServeSecrets`)."""
    controller = urlsplit(plan.controller_url)
    mlflow_env = (
        {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"}
        if plan.allow_loopback_webhooks
        else {}
    )
    assert not SECRETS & env.keys(), "a secret in the environment every child gets"
    metrics = {"EDGELOOP_FLEET_METRICS_TOKEN": os.environ.get("EDGELOOP_FLEET_METRICS_TOKEN", "")}
    mlflow = _given(**{WEBHOOK_KEY: secrets.mlflow_key})
    fleet = _given(**{ADMIN_TOKEN: secrets.admin_token}, **metrics)
    listener = _given(**{LISTENER_SECRET: secrets.listener_secret})
    ops = _given(**{ADMIN_TOKEN: secrets.admin_token, SIGNING_KEYS: str(secrets.keys_dir)})
    nothing = _given()
    # MLflow's job runner (about ten huey consumer processes) serves GenAI jobs edgeloop never
    # submits; webhooks are delivered without it. Off unless the operator turns it on.
    mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = os.environ.get(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
    )
    specs = [
        ChildSpec(
            name="prefect-server",
            argv=_python("prefect", "server", "start", "--host", plan.host, "--port", str(plan.base_port)),
            env={**env, "PREFECT_HOME": str((plan.home / "prefect-server").resolve()),
                 "PREFECT_API_DATABASE_CONNECTION_URL": plan.database("prefect")},
            withheld=SECRETS,
            log=plan.logs / "prefect-server.log",
            health=lambda: http_ok(f"{plan.prefect_api_url}/health"),
            url=plan.prefect_url,
        ),
        ChildSpec(
            name="mlflow-server",
            argv=_python(
                "mlflow", "server", "--serve-artifacts", "--artifacts-destination",
                (plan.home / "mlartifacts").resolve().as_uri(),
                "--host", plan.host, "--port", str(plan.base_port + 1), "--workers", "1",
            ),
            # the store URI (a database password in it) by environment, not on the command line
            env={**env, **mlflow_env, **mlflow[0], "MLFLOW_BACKEND_STORE_URI": plan.database("mlflow")},
            withheld=mlflow[1],
            log=plan.logs / "mlflow-server.log",
            health=lambda: http_ok(f"{plan.mlflow_url}/health"),
            url=plan.mlflow_url,
        ),
        ChildSpec(
            name="fleet-controller",
            argv=_python("edgeloop.cli", "fleet", "serve", "--host", controller.hostname or plan.host,
                         "--port", str(controller.port or 8787)),
            env={**env, **fleet[0], "EDGELOOP_FLEET_DB_URL": plan.database("fleet")},
            withheld=fleet[1],
            log=plan.logs / "fleet-controller.log",
            health=lambda: http_ok(f"{plan.controller_url}/v1/health"),
            url=plan.controller_url,
        ),
    ]  # fmt: skip
    specs.append(
        ChildSpec(
            name="promotion-listener",
            argv=_python("edgeloop.cli", "listener", "serve", "--host", plan.host,
                         "--port", str(plan.base_port + 2)),
            env={**env, **listener[0]},
            withheld=listener[1],
            log=plan.logs / "promotion-listener.log",
            health=lambda: http_ok(f"{plan.listener_url}/health"),
            url=plan.webhook_url,
        )
    )  # fmt: skip
    follower = _given(**{ADMIN_TOKEN: secrets.admin_token})
    specs.append(
        ChildSpec(
            name="registry-follower",
            argv=_python("edgeloop.cli", "registry", "follow", "--url", plan.controller_url,
                         "--interval", str(FOLLOW_INTERVAL_S)),
            env={**env, **follower[0]},
            withheld=follower[1],
            log=plan.logs / "registry-follower.log",
            health=lambda: follower_caught_up(plan.home),
            url=f"outcomes of {plan.controller_url}",
        )
    )  # fmt: skip
    # Imported here: flows.pool imports Prefect, which reads its settings once, and `edgeloop
    # serve` sets PREFECT_API_URL only after importing this module.
    from flows.pool import OPS_POOL

    for pool in [OPS_POOL, *pools]:
        given = ops if pool == OPS_POOL else nothing
        specs.append(
            ChildSpec(
                name=f"worker {pool}",
                argv=_python("prefect", "worker", "start", "--pool", pool, "--type", "process"),
                # Poll for work every second (Prefect's default is 10 s): a promotion waits on it.
                env={
                    **env,
                    **given[0],
                    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
                    "PREFECT_WORKER_QUERY_SECONDS": "1",
                },
                withheld=given[1],
                log=plan.logs / f"worker-{pool}.log",
                health=lambda pool=pool: pool_has_live_worker(plan.prefect_api_url, pool),  # type: ignore[misc]
                url=f"pool {pool}",
            )
        )
    return specs
