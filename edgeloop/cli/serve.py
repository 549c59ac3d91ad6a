"""`edgeloop serve`: every server and worker of the platform as supervised child processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgeloop.cli.common import console, guard, prepare
from edgeloop.core import fleet_address
from edgeloop.core.settings import Settings

app = typer.Typer()
HEALTHY_WITHIN_S = 300.0  # a first start creates and migrates every database; slow on a busy host


@app.command()
def serve(
    db_url: Annotated[
        str | None,
        typer.Option(
            envvar="EDGELOOP_DB_URL",
            help="PostgreSQL URL postgresql://USER[:PASSWORD]@HOST:PORT/NAME: databases "
            "NAME_prefect, NAME_mlflow and NAME_fleet (created when missing). Give a password "
            "through EDGELOOP_DB_URL, not here: a command line is visible to every user of the "
            "host. Default: SQLite under the home.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address the servers listen on.")] = "127.0.0.1",
    base_port: Annotated[
        int, typer.Option(help="Prefect on this port, MLflow on +1, the listener on +2.")
    ] = 4200,
    allow_loopback_webhooks: Annotated[
        bool,
        typer.Option(
            help="Let MLflow deliver webhooks over http to private addresses (tests, one machine). "
            "Production uses https."
        ),
    ] = False,
) -> None:
    """Run Prefect, MLflow, the fleet controller, the promotion listener, the registry follower
    and the workers until stopped."""
    guard(lambda: _serve(db_url, host, base_port, allow_loopback_webhooks))


def _serve(db_url: str | None, host: str, base_port: int, loopback_hooks: bool) -> None:
    from edgeloop.cli.serve_plan import (
        ADMIN_TOKEN,
        LISTENER_SECRET,
        ServePlan,
        ServeSecrets,
        check_db_url,
        ensure_databases,
        secret,
        webhook_key,
    )
    from edgeloop.cli.supervisor import Supervisor, SupervisorError
    from edgeloop.core.params import load_params

    base = Settings()
    params = load_params(base.params_file)
    home = base.home.resolve()
    plan = ServePlan(
        home=home, host=host, base_port=base_port, controller_url=params.rollout.controller_url,
        db_url=db_url, allow_loopback_webhooks=loopback_hooks,
    )  # fmt: skip
    if db_url:
        check_db_url(db_url)
        ensure_databases(db_url)
    env = _child_env(base, plan)
    token_file = home / "secrets" / "fleet-admin-token"
    held = ServeSecrets(
        admin_token=secret(ADMIN_TOKEN, token_file),
        listener_secret=secret(LISTENER_SECRET, home / "secrets" / "listener-secret"),
        mlflow_key=webhook_key(plan),
        keys_dir=base.keys_dir.resolve(),
    )
    fleet_address.record(base, plan.controller_url, token_file, "edgeloop serve")
    os.environ.update(env)  # this process creates the deployments and the webhook
    settings = Settings()
    prepare(settings)
    pools = _hardware_pools(settings, params.gates.profiles)
    from edgeloop.cli.serve_plan import children

    supervisor = Supervisor(
        children(plan, env, pools, held),
        on_event=lambda line: console.print(f"[yellow]{escape(line)}[/]", highlight=False),
    )
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        supervisor.request_stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        # The workers need the Prefect server and the deployments; the others start at once.
        first = ["prefect-server", "mlflow-server", "fleet-controller", "promotion-listener"]
        for name in first:
            supervisor.start(supervisor.child(name))
        supervisor.wait_healthy(["prefect-server"], timeout_s=HEALTHY_WITHIN_S)
        _deploy(params, pools)
        supervisor.start_all()
        supervisor.wait_healthy(timeout_s=HEALTHY_WITHIN_S)
        ready_s = time.monotonic() - started
        webhook = _webhook(plan, held.listener_secret)
        console.print(_table(supervisor, ready_s))
        console.print(webhook, highlight=False)
        _write_state(plan, supervisor, ready_s)
        supervisor.run()
    except SupervisorError:
        if not stopping:
            raise
    finally:
        console.print("stopping every child…", highlight=False)
        supervisor.stop_all()
        fleet_address.forget(base, "edgeloop serve")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopped", highlight=False)


def _child_env(base: Settings, plan: Any) -> dict[str, str]:
    """Absolute paths and server addresses: flow runs execute from the source checkout, not here."""
    home = plan.home
    return {
        "EDGELOOP_HOME": str(home),
        "EDGELOOP_PARAMS_FILE": str(base.params_file.resolve()),
        "EDGELOOP_MODEL_CARDS_DIR": str(base.model_cards_dir.resolve()),
        "EDGELOOP_DATA_DIR": str(base.data_dir.resolve()),
        "EDGELOOP_PROFILES_DIR": str(base.profiles_dir.resolve()),
        "EDGELOOP_HARDWARE_TESTS_DIR": str(base.hardware_tests_dir.resolve()),
        "EDGELOOP_FLEET_PUBLIC_KEY_PATH": str(base.keys_dir.resolve() / "signing-ed25519.pub.pem"),
        "EDGELOOP_FLEET_ARTIFACT_DIR": str(home / "artifact-store"),
        "MLFLOW_TRACKING_URI": plan.mlflow_url,
        "EDGELOOP_MLFLOW_TRACKING_URI": plan.mlflow_url,
        "PREFECT_API_URL": plan.prefect_api_url,
        "EDGELOOP_PREFECT_API_URL": plan.prefect_api_url,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _hardware_pools(settings: Settings, profiles: list[str]) -> list[str]:
    """The pools of the required profiles that run on a work pool (``runner: pool``)."""
    from edgeloop.cli.common import check_profiles
    from fleet.shared.profile import load_profile
    from flows.pool import pool_name

    check_profiles(settings, profiles)
    return [
        pool_name(p) for p in profiles if load_profile(p, settings.profiles_dir).runner == "pool"
    ]


def _deploy(params: Any, pools: list[str]) -> None:
    from flows.deployments import ensure_ops_deployments
    from flows.pool import ensure_deployment

    names = ensure_ops_deployments(params.schedule)
    for pool in pools:
        names.append(ensure_deployment(pool.removeprefix("hw-"), params.gates.runner_source))
    console.print(f"deployments: {', '.join(names)}", highlight=False)


def _webhook(plan: Any, secret: str) -> str:
    """Create the MLflow webhook to the listener when MLflow may deliver to it; say what was done."""
    if not plan.webhook_allowed:
        return (
            "no MLflow webhook: the listener serves plain http; give the listener a certificate "
            "(EDGELOOP_LISTENER_TLS_CERTFILE/_KEYFILE), or --allow-loopback-webhooks on one machine, "
            "or run `edgeloop listener poll`"
        )
    from registry.webhooks import ensure_webhook

    ensure_webhook(plan.mlflow_url, plan.webhook_url, secret)
    return f"MLflow webhook on alias changes -> {plan.webhook_url}"


def _table(supervisor: Any, ready_s: float) -> Table:
    table = Table(title=f"edgeloop serve: every child healthy after {ready_s:.1f} s")
    for column in ("child", "url", "pid", "log"):
        table.add_column(column)
    for child in supervisor.children:
        table.add_row(child.spec.name, child.spec.url, str(child.pid), str(child.spec.log))
    return table


def _write_state(plan: Any, supervisor: Any, ready_s: float) -> None:
    """``<home>/serve.json``: addresses and pids of the running children (no secrets)."""
    state = {
        "ready_s": round(ready_s, 3),
        "children": {
            c.spec.name: {"url": c.spec.url, "pid": c.pid, "log": str(c.spec.log)}
            for c in supervisor.children
        },
    }
    Path(plan.home / "serve.json").write_text(json.dumps(state, indent=2))
