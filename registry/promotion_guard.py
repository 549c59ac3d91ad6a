"""What happens when ``production`` lands on a version, by the webhook or the poller alike.

1. One alias change is handled once: the version is claimed in the promotion store first.
2. A version the fleet already runs (its rollout succeeded and no newer one did; e.g. the alias moved
   back by a rollback) starts nothing.
3. ``production`` set by someone who is not a promoter (when promoters are configured,
   :mod:`registry.promotion_authority`) is refused the same way as below.
4. A version without passing hardware results (:func:`registry.outcomes.promotable`) is refused:
   ``production`` goes back to the stable version (deleted when there is none) and the version gets
   the tag ``edgeloop.promote.refused`` with the reason. The operator forces a promotion with the tag
   ``edgeloop.promote.force=true`` on the version.
5. A promotion whose promoter starts the rollout itself (`edgeloop promote`, auto-promotion: a fresh
   ``edgeloop.promote.rollout`` record on the version, written before the alias moved) starts nothing
   more: one promotion, one rollout, whichever path moved the alias.
6. Otherwise the trigger starts the rollout of the version, from the stable version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry import tags as tag
from registry.outcomes import production_version, promotable, stable_version
from registry.promotion_authority import PromotionAuthority, check_promoter, recorded_user
from registry.promotion_config import Trigger
from registry.promotion_store import PromotionStore
from registry.publish import PRODUCTION

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("edgeloop.promotion")


@dataclass(frozen=True)
class PromotionOutcome:
    """What :func:`handle_production` did about one alias change, and why."""

    status: str  # started | refused | current | duplicate | claimed
    model: str
    version: str
    reason: str
    stable_version: str | None = None
    run_id: str | None = None


def handle_production(
    client: MlflowClient,
    store: PromotionStore,
    trigger: Trigger,
    model: str,
    version: str,
    *,
    source: str,
    clock: Callable[[], float] = time.time,
) -> PromotionOutcome:
    """Handle ``production`` set on ``model`` v``version``; RegistryError when it does not exist."""
    claimed, previous = store.claim(model, version, clock())
    if not claimed:
        return PromotionOutcome(
            "duplicate", model, version, f"{model} v{version} was handled already"
        )
    try:
        outcome = _decide_and_start(client, store, trigger, model, version, clock)
    except Exception:
        store.release(model, previous, clock())
        raise
    if outcome.run_id is not None:
        store.record_trigger(
            model=model,
            version=version,
            stable_version=outcome.stable_version,
            run_id=outcome.run_id,
            source=source,
            now=clock(),
        )
    log.info("%s v%s via %s: %s (%s)", model, version, source, outcome.status, outcome.reason)
    return outcome


def _decide_and_start(
    client: MlflowClient,
    store: PromotionStore,
    trigger: Trigger,
    model: str,
    version: str,
    clock: Callable[[], float],
) -> PromotionOutcome:
    ok, why = promotable(client, model, version)  # RegistryError for an unknown model or version
    stable = stable_version(client, model, exclude=version)
    tags = client.get_model_version(model, version).tags
    if tags.get(tag.ROLLOUT_STATUS) == "succeeded" and (
        stable is None or int(stable) < int(version)
    ):
        return PromotionOutcome("current", model, version, "the fleet already runs it", stable)
    not_a_promoter = check_promoter(PromotionAuthority(), tags, clock())
    if not_a_promoter is not None:
        ok, why = False, not_a_promoter
    if not ok:
        refuse(client, store, model, version, why, stable, clock)
        return PromotionOutcome("refused", model, version, why, stable)
    starter = recorded_user(tags, tag.PROMOTE_ROLLOUT, clock())
    if starter is not None:
        return PromotionOutcome(
            "claimed", model, version, f"{starter} starts its rollout itself", stable
        )
    run_id = trigger(model, version, stable)
    return PromotionOutcome("started", model, version, why, stable, run_id)


def refuse(
    client: MlflowClient,
    store: PromotionStore,
    model: str,
    version: str,
    reason: str,
    stable: str | None,
    clock: Callable[[], float],
) -> None:
    """Put ``production`` back on ``stable`` (or remove it) and say why on the version."""
    if production_version(client, model) == version:  # else someone moved it on already
        store.set_seen(model, stable, clock())  # before the move, so its own event is a duplicate
        if stable is not None:
            client.set_registered_model_alias(model, PRODUCTION, stable)
        else:
            client.delete_registered_model_alias(model, PRODUCTION)
    client.set_model_version_tag(
        model,
        version,
        tag.PROMOTE_REFUSED,
        f"{reason}; set tag {tag.PROMOTE_FORCE}=true on the version to promote it anyway",
    )
