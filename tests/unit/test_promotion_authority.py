"""Who may promote: the promoter record the MLflow app writes, as the listener and poller read it."""

from __future__ import annotations

import pytest

from registry import tags as tag
from registry.promotion_authority import (
    RECORD_FRESH_S,
    PromotionAuthority,
    check_promoter,
    forced,
    record,
    recorded_user,
)

NOW = 1_800_000_000.0


def authority(monkeypatch: pytest.MonkeyPatch, users: str = '["alice"]') -> PromotionAuthority:
    monkeypatch.setenv("EDGELOOP_PROMOTION_USERS", users)
    monkeypatch.setenv("EDGELOOP_PROMOTION_ROLES", '["release-managers"]')
    return PromotionAuthority()


def test_users_and_roles_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    a = authority(monkeypatch)
    assert a.configured
    assert a.allows("alice", []) and a.allows("bob", ["release-managers"])
    assert not a.allows("mallory", ["data-scientists"])
    assert a.named() == "user alice, role release-managers"


def test_a_fresh_record_passes_and_a_stale_forged_or_missing_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = authority(monkeypatch)
    fresh = {tag.PROMOTED_BY: record("alice", NOW - 5)}
    assert recorded_user(fresh, tag.PROMOTED_BY, NOW) == "alice"
    assert check_promoter(a, fresh, NOW) is None
    stale = {tag.PROMOTED_BY: record("alice", NOW - RECORD_FRESH_S - 1)}
    future = {tag.PROMOTED_BY: record("alice", NOW + 60)}
    for tags in [{}, stale, future, {tag.PROMOTED_BY: "alice"}, {tag.PROMOTED_BY: '{"user": 3}'}]:
        reason = check_promoter(a, tags, NOW)
        assert reason is not None and "without a promoter's record" in reason, tags
        assert "--app-name edgeloop-auth" in reason


def test_without_promoters_anyone_who_writes_to_mlflow_promotes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGELOOP_PROMOTION_USERS", raising=False)
    monkeypatch.delenv("EDGELOOP_PROMOTION_ROLES", raising=False)
    a = PromotionAuthority()
    assert not a.configured
    assert check_promoter(a, {}, NOW) is None
    assert forced(a, {tag.PROMOTE_FORCE: "true"})


def test_the_force_tag_counts_only_with_a_promoters_record(monkeypatch: pytest.MonkeyPatch) -> None:
    a = authority(monkeypatch)
    assert not forced(a, {tag.PROMOTE_FORCE: "true"})
    assert forced(a, {tag.PROMOTE_FORCE: "TRUE", tag.FORCED_BY: record("alice", NOW)})
    assert not forced(a, {tag.PROMOTE_FORCE: "false", tag.FORCED_BY: record("alice", NOW)})
