"""The fallback for MLflow stores without webhooks: watch ``production`` and react to changes.

Each pass reads the ``production`` alias of every registered model (or the configured ones) and
compares it with the version last handled (the promotion store, shared with the listener, so an
alias change the webhook already handled starts nothing here). A changed alias goes through the same
guard and trigger as a webhook (:func:`registry.promotion_guard.handle_production`). A model seen
for the first time is recorded as it is, without starting anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from registry.outcomes import production_version
from registry.promotion_config import Trigger
from registry.promotion_guard import PromotionOutcome, handle_production
from registry.promotion_store import UNSEEN, PromotionStore

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("edgeloop.poller")


def model_names(client: MlflowClient) -> list[str]:
    names: list[str] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        names.extend(m.name for m in page)
        token = page.token
        if not token:
            return names


def poll_once(
    client: MlflowClient,
    state: PromotionStore,
    trigger: Trigger,
    *,
    models: list[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> list[PromotionOutcome]:
    """One pass over the watched models; the outcome of each alias change handled."""
    outcomes = []
    for model in models or model_names(client):
        current = production_version(client, model)
        seen = state.seen(model)
        if seen is UNSEEN or current is None:
            if seen != current:
                state.set_seen(model, current, clock())
            continue
        if current == seen:
            continue
        try:
            outcomes.append(
                handle_production(
                    client, state, trigger, model, current, source="poller", clock=clock
                )
            )
        except Exception:  # the guard released its claim: the next pass tries again
            log.exception("could not handle production v%s of %s", current, model)
    return outcomes


def run_poller(
    interval_s: float,
    client: MlflowClient,
    state: PromotionStore,
    trigger: Trigger,
    *,
    models: list[str] | None = None,
    stop: threading.Event | None = None,
    report: Callable[[PromotionOutcome], None] = lambda _: None,
) -> None:
    """Poll every ``interval_s`` until ``stop`` is set; a failed pass is logged and retried."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            for outcome in poll_once(client, state, trigger, models=models):
                report(outcome)
        except Exception:
            log.exception("alias poll failed; retrying in %.0f s", interval_s)
        stop.wait(interval_s)
