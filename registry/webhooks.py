"""Registering the listener with MLflow: one webhook on ``model_version_alias.created``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from edgeloop.core.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIAS_CREATED: Final[Literal["model_version_alias.created"]] = "model_version_alias.created"
WEBHOOK_NAME = "edgeloop-promotion"


def ensure_webhook(
    client_or_tracking_uri: MlflowClient | str, url: str, secret: str
) -> tuple[Any, bool]:
    """The webhook to ``url`` (created, or its secret refreshed and re-activated); ``(hook, created)``."""
    from mlflow import MlflowClient
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.exceptions import MlflowException

    client = (
        MlflowClient(tracking_uri=client_or_tracking_uri)
        if isinstance(client_or_tracking_uri, str)
        else client_or_tracking_uri
    )
    event = WebhookEvent.from_str(ALIAS_CREATED)
    try:
        for hook in _all_webhooks(client):
            if hook.url == url and event in hook.events:
                updated = client.update_webhook(hook.webhook_id, secret=secret, status="ACTIVE")
                return updated, False
        created = client.create_webhook(
            name=WEBHOOK_NAME,
            url=url,
            events=[event],
            description="edgeloop: setting alias production starts a staged rollout",
            secret=secret,
        )
    except MlflowException as exc:
        raise RegistryError(
            f"MLflow refused the webhook to {url}: {exc.message.splitlines()[0]}",
            hint="use an https URL reachable from the MLflow server, and a tracking store "
            "with webhooks (an SQL backend)",
        ) from exc
    return created, True


def _all_webhooks(client: MlflowClient) -> list[Any]:
    hooks: list[Any] = []
    token: str | None = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        hooks.extend(page)
        token = page.token
        if not token:
            return hooks
