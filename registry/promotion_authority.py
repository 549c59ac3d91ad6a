"""Who may promote: the users and MLflow roles named in settings, checked where the identity is known.

MLflow's alias and tag calls carry no user, and its webhooks say nothing of who moved an alias. With
MLflow's basic-auth app the server knows the user of every request, so the check happens there
(``mlflow server --app-name edgeloop-auth``, :mod:`registry.mlflow_app`): setting or deleting
``production``, or setting the force tag, is a 403 for anyone not named here, and an allowed change
is recorded on the version (``edgeloop.promote.by`` / ``edgeloop.promote.force.by``, JSON
``{"user", "at"}``), tags no client may write. The listener and the poller then act on
``production`` only when the version records a promoter who set it within
:data:`RECORD_FRESH_S`, and honour the force tag only when a promoter set it: a server started
without the app, or a stale record from an earlier promotion, starts no rollout.

Read from ``EDGELOOP_PROMOTION_``: ``USERS`` and ``ROLES`` (JSON lists). Both empty, the default:
no authority is configured and anyone who can write to MLflow promotes (one machine, development).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic_settings import BaseSettings, SettingsConfigDict

from registry import tags as tag

RECORD_FRESH_S = 600.0
"""How old a promoter's record may be when the listener or the poller sees the alias change: the
poller looks every few seconds, a webhook retry comes within minutes."""


class PromotionAuthority(BaseSettings):
    """The users and roles who may move ``production`` and force a promotion."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_PROMOTION_", extra="ignore")

    users: list[str] = []
    roles: list[str] = []

    @property
    def configured(self) -> bool:
        return bool(self.users or self.roles)

    def allows(self, user: str, roles: list[str]) -> bool:
        return user in self.users or bool(set(roles) & set(self.roles))

    def named(self) -> str:
        names = [f"user {u}" for u in self.users] + [f"role {r}" for r in self.roles]
        return ", ".join(names)


def record(user: str, at: float) -> str:
    return json.dumps({"user": user, "at": round(at, 3)})


def recorded_user(tags: Mapping[str, str], key: str, now: float) -> str | None:
    """The user a promoter record names, when it is well formed and fresh; else None."""
    try:
        entry = json.loads(tags.get(key, ""))
        user, at = entry["user"], float(entry["at"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(user, str) or not 0 <= now - at <= RECORD_FRESH_S:
        return None
    return user


def check_promoter(
    authority: PromotionAuthority, tags: Mapping[str, str], now: float
) -> str | None:
    """Why ``production`` on a version with ``tags`` must not start a rollout, or None."""
    if not authority.configured:
        return None
    if recorded_user(tags, tag.PROMOTED_BY, now) is None:
        return (
            "production was set without a promoter's record (MLflow must run with "
            f"--app-name edgeloop-auth; promoters: {authority.named()})"
        )
    return None


def forced(authority: PromotionAuthority, tags: Mapping[str, str]) -> bool:
    """Whether the version's force tag counts: set, and by a promoter when authority is configured."""
    if tags.get(tag.PROMOTE_FORCE, "").lower() != "true":
        return False
    return not authority.configured or tag.FORCED_BY in tags
