"""`edgeloop listener serve|poll|register-webhook`: promotion from the MLflow UI starts a rollout."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from edgeloop.cli.common import console, guard, prepare
from edgeloop.core.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

listener_app = typer.Typer(
    help="Start rollouts when alias production is set in MLflow (webhook listener or poller).",
    no_args_is_help=True,
)


@listener_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8790,
) -> None:
    """Serve POST /webhooks/mlflow and GET /health (secret from EDGELOOP_LISTENER_SECRET)."""

    def go() -> None:
        from registry.promotion_config import ListenerSettings

        listener = ListenerSettings()
        listener.require_secret()
        settings = Settings()
        prepare(settings)
        import uvicorn

        from registry.listener import create_listener_app

        app = create_listener_app(
            listener, listener.trigger(), _client_factory(settings), home=settings.home
        )
        scheme = "https" if listener.tls_certfile else "http"
        console.print(f"listening on {scheme}://{host}:{port}/webhooks/mlflow", highlight=False)
        uvicorn.run(
            app,
            host=host,
            port=port,
            ssl_certfile=str(listener.tls_certfile) if listener.tls_certfile else None,
            ssl_keyfile=str(listener.tls_keyfile) if listener.tls_keyfile else None,
            log_level="warning",
        )

    guard(go)


@listener_app.command("poll")
def poll(
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds between passes (default EDGELOOP_LISTENER_INTERVAL_S)."),
    ] = None,
) -> None:
    """Watch alias production of every model (or EDGELOOP_LISTENER_MODELS) and start rollouts."""

    def go() -> None:
        from edgeloop.core.errors import ConfigError
        from registry.alias_poller import run_poller
        from registry.promotion_config import ListenerSettings
        from registry.tracking import connect

        listener = ListenerSettings()
        every = listener.interval_s if interval is None else interval
        if every <= 0:
            raise ConfigError(f"interval {every:g} is not positive", hint="give seconds > 0")
        settings = Settings()
        prepare(settings)
        client = connect(settings.tracking_uri)
        console.print(f"polling alias production every {every:g} s", highlight=False)
        run_poller(
            every,
            client,
            listener.open_store(settings.home),
            listener.trigger(),
            models=listener.models or None,
            report=lambda o: console.print(
                f"{o.model} v{o.version}: {o.status} ({escape(o.reason)})", highlight=False
            ),
        )

    guard(go)


@listener_app.command("register-webhook")
def register_webhook(
    url: Annotated[
        str, typer.Option(help="The listener's URL, e.g. https://host/webhooks/mlflow.")
    ],
) -> None:
    """Create (or refresh) the MLflow webhook on model_version_alias.created to the listener."""

    def go() -> None:
        from registry.promotion_config import ListenerSettings
        from registry.tracking import connect
        from registry.webhooks import ensure_webhook

        secret = ListenerSettings().require_secret()
        settings = Settings()
        prepare(settings)
        hook, created = ensure_webhook(connect(settings.tracking_uri), url, secret)
        verb = "created" if created else "updated"
        console.print(f"webhook {hook.webhook_id} {verb}: {url}", highlight=False)

    guard(go)


def _client_factory(settings: Settings) -> Callable[[], MlflowClient]:
    """The MLflow client, connected on first use (the listener may start before MLflow)."""
    from functools import cache

    from registry.tracking import connect

    return cache(lambda: connect(settings.tracking_uri))
