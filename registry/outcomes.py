"""The registry follows the fleet: promotion starts a rollout, its outcome is written back.

``production`` means "what the fleet should run". When a rollout is rolled back (or fails, or is
aborted) the alias goes back to the stable version, so the registry never claims the fleet runs a
version it does not; the version carries ``edgeloop.rollout.status`` and ``.reason``, and its model card
gets a line in its rollout history. A succeeded rollout records success the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import RegistryError
from registry import tags as tag
from registry.modelcard import render_markdown
from registry.promotion_authority import PromotionAuthority, forced, record
from registry.publish import PRODUCTION

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


def _version(client: MlflowClient, model: str, version: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model, version)
    except MlflowException as exc:
        raise RegistryError(
            f"{model} v{version} is not in the registry", hint="check `edgeloop models`"
        ) from exc


def promotable(client: MlflowClient, model: str, version: str) -> tuple[bool, str]:
    """Whether ``version`` may become ``production``, and why (or why not)."""
    tags = _version(client, model, version).tags
    if forced(PromotionAuthority(), tags):
        return True, f"forced by tag {tag.PROMOTE_FORCE}"
    hardware = {
        profile: v for k, v in tags.items() if (profile := tag.hw_status_profile(k)) is not None
    }
    if not hardware:
        return False, "it has no hardware results"
    failed = sorted(profile for profile, v in hardware.items() if v != "passed")
    if failed:
        return False, f"hardware profile(s) {', '.join(failed)} did not pass"
    if tags.get(tag.GATES) != "passed":
        return False, "not every gate passed"
    return True, "every gate and hardware profile passed"


def promote(
    client: MlflowClient,
    model: str,
    version: str,
    *,
    rollout_by: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """Set ``production`` on ``version`` if it may be promoted; returns the reason.

    ``rollout_by`` names a caller that starts the rollout itself: the version records it
    (:data:`registry.tags.PROMOTE_ROLLOUT`) before the alias moves, so the listener and the poller,
    which see the move, leave the rollout to it."""
    ok, why = promotable(client, model, version)
    if not ok:
        raise RegistryError(
            f"{model} v{version} cannot be promoted: {why}",
            hint=f"fix the version, or set tag {tag.PROMOTE_FORCE}=true to force it (recorded)",
        )
    if rollout_by is not None:
        client.set_model_version_tag(
            model, version, tag.PROMOTE_ROLLOUT, record(rollout_by, clock())
        )
    client.set_registered_model_alias(model, PRODUCTION, version)
    return why


def restore_production(
    client: MlflowClient, model: str, version: str | None, *, replacing: str
) -> None:
    """Put ``production`` back on ``version`` after ``replacing`` did not make it to the fleet; with
    no ``version`` (a first release) the alias goes, if ``replacing`` still holds it."""
    if version:
        client.set_registered_model_alias(model, PRODUCTION, version)
    elif production_version(client, model) == replacing:
        client.delete_registered_model_alias(model, PRODUCTION)


def production_version(client: MlflowClient, model: str) -> str | None:
    aliases = client.get_registered_model(model).aliases
    return str(aliases[PRODUCTION]) if PRODUCTION in aliases else None


def stable_version(client: MlflowClient, model: str, *, exclude: str | None = None) -> str | None:
    """The newest version (other than ``exclude``) whose rollout succeeded: what the fleet runs."""
    succeeded = [
        int(v.version)
        for v in client.search_model_versions(f"name = '{model}'")
        if v.tags.get(tag.ROLLOUT_STATUS) == "succeeded" and str(v.version) != exclude
    ]
    return str(max(succeeded)) if succeeded else None


MAX_REASON = 5000
"""The longest ``edgeloop.rollout.reason`` written; a longer reason is cut."""


def outcome_tags(outcome: str, reason: str) -> dict[str, str]:
    """The tags a rollout's outcome leaves on its version, in the order they are written."""
    return {tag.ROLLOUT_STATUS: outcome, tag.ROLLOUT_REASON: reason[:MAX_REASON]}


def record_outcome(
    client: MlflowClient,
    *,
    model: str,
    version: str,
    stable_version: str | None,
    outcome: str,
    reason: str,
    causes: list[dict[str, Any]],
    cards_dir: Path,
    now: datetime | None = None,
) -> None:
    """Write a rollout's outcome on the version; anything but success moves ``production`` back."""
    _version(client, model, version)
    if outcome != "succeeded":
        restore_production(client, model, stable_version, replacing=version)
    for key, value in outcome_tags(outcome, reason).items():
        client.set_model_version_tag(model, version, key, value)
    _append_to_card(
        cards_dir,
        model,
        version,
        {
            "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "outcome": outcome,
            "stable_version": stable_version,
            "reason": reason,
            "causes": causes,
        },
    )


def _append_to_card(cards_dir: Path, model: str, version: str, entry: dict[str, Any]) -> None:
    json_path = cards_dir / model / f"v{version}.json"
    if not json_path.is_file():
        return  # a card written elsewhere (another checkout): the tags carry the outcome
    card = json.loads(json_path.read_text())
    card.setdefault("rollouts", []).append(entry)
    if entry["outcome"] != "succeeded":
        card["aliases"] = [a for a in card.get("aliases", []) if a != PRODUCTION]
    json_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    json_path.with_suffix(".md").write_text(render_markdown(card))
