"""`edgeloop registry follow`: write the fleet controller's rollout outcomes to the MLflow registry.

`edgeloop serve` runs it as the child ``registry-follower``; it can run on its own next to any
controller and MLflow (``--url`` and ``MLFLOW_TRACKING_URI``, the admin token from
``EDGELOOP_FLEET_ADMIN_TOKEN``). See ``registry.follower`` for what it writes and why it is safe
to kill at any moment.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgeloop.cli.common import console, err_console, guard, prepare
from edgeloop.core.settings import Settings

registry_app = typer.Typer(
    help="Keep the MLflow registry in step with the fleet controller.", no_args_is_help=True
)


@registry_app.command("follow")
def follow(
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between reads of the outcome feed.")
    ] = 5.0,
    once: Annotated[
        bool, typer.Option("--once", help="One pass to the end of the feed, then exit.")
    ] = False,
    max_backoff: Annotated[
        float,
        typer.Option(min=0.05, help="Longest wait, in seconds, after failed passes in a row."),
    ] = 30.0,
    url: Annotated[
        str | None,
        typer.Option(
            help="Controller URL (default: where `edgeloop serve` records it, else params.yaml)."
        ),
    ] = None,
) -> None:
    """Apply each rollout outcome of the controller to MLflow once: the version's rollout
    status and reason, and alias production. Resumes after the last outcome applied."""

    def go() -> None:
        # One quick try per MLflow call: the follower backs off and retries the whole outcome
        # itself, instead of MLflow's client retrying a server that is down for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        settings = Settings()
        prepare(settings)
        from mlflow import MlflowClient

        from edgeloop.core import fleet_address
        from fleet.admin import AdminClient
        from fleet.shared.admin_protocol import OutcomeEntry
        from registry.follower import FollowerStore, follow_once, run_follower, store_path
        from registry.tracking import preflight

        address = fleet_address.resolve(settings, url)
        admin = AdminClient(address.url, fleet_address.admin_token(settings, address))
        tracking_uri = settings.tracking_uri
        client = MlflowClient(tracking_uri=tracking_uri)  # MLflow may be down now: no preflight
        store = FollowerStore(store_path(settings.home))

        def report(outcome: OutcomeEntry, result: str, writes: list[str]) -> None:
            done = f": {', '.join(writes)}" if writes else ""
            console.print(
                f"outcome {outcome.id}: {escape(outcome.model)} v{escape(outcome.version)} "
                f"{outcome.status} (rollout {escape(outcome.rollout_id)}) {result}{escape(done)}",
                highlight=False,
            )

        try:
            if once:
                preflight(tracking_uri)
                count = follow_once(admin, client, store, report=report)
                console.print(
                    f"{count} outcome(s) applied; cursor at {store.cursor()}", highlight=False
                )
                return
            stop = threading.Event()

            def stopping(_signum: int, _frame: Any) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, stopping)
            console.print(
                f"following the outcomes of {address.url} into {tracking_uri} every "
                f"{interval:g} s, from outcome {store.cursor() + 1}",
                highlight=False,
            )
            run_follower(
                admin, client, store, interval_s=interval, max_backoff_s=max_backoff, stop=stop,
                check=lambda: preflight(tracking_uri), report=report,
                on_error=lambda message, delay: err_console.print(
                    f"[yellow]{escape(message)}; again in {delay:.1f} s[/]", highlight=False
                ),
            )  # fmt: skip
        finally:
            admin.close()
            store.close()

    guard(go)
