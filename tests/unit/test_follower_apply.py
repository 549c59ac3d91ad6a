"""The registry follower: one outcome applied to a real (SQLite) MLflow registry, idempotently; its
cursor store; a pass that fails on MLflow or the controller moves past nothing."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from fleet.admin import AdminError
from fleet.shared.admin_protocol import OutcomeEntry, OutcomePage
from registry import tags as tag
from registry.follower import (
    APPLIED,
    NOT_IN_REGISTRY,
    UNCHANGED,
    FeedBehindCursor,
    FollowerStore,
    apply_outcome,
    follow_once,
    healthy,
    run_follower,
)

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_models = itertools.count()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    folder = tmp_path_factory.mktemp("follower-mlflow")
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def model(registry: MlflowClient, tmp_path: Path) -> str:
    """A fresh model with versions 1, 2 and 3 (no tags, no alias)."""
    name = f"follower-{next(_models)}"
    registry.create_registered_model(name)
    for n in (1, 2, 3):
        registry.create_model_version(name, (tmp_path / f"m{n}").as_uri())
    return name


def outcome(model: str, version: str, status: str, stable: str, id: int = 1) -> OutcomeEntry:
    return OutcomeEntry(
        id=id, rollout_id=f"{model}-{id:010x}", attempt=1, model=model, version=version,
        stable_version=stable, status=status, reason=f"{status}: because {id}", at=AT,
    )  # fmt: skip


def production(client: MlflowClient, model: str) -> str | None:
    aliases = client.get_registered_model(model).aliases
    return str(aliases["production"]) if "production" in aliases else None


def rollout_tags(client: MlflowClient, model: str, version: str) -> dict[str, str]:
    tags = client.get_model_version(model, version).tags
    return {k: v for k, v in tags.items() if k in (tag.ROLLOUT_STATUS, tag.ROLLOUT_REASON)}


class CountingClient:
    """The MLflow client, counting the writes that go through it."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name.startswith(("set_", "delete_")):
            self.writes.append(name)
        return method


# --- one outcome ---------------------------------------------------------------------------------


def test_a_rollback_puts_production_back_on_stable_and_a_second_apply_writes_nothing(
    registry: MlflowClient, model: str
) -> None:
    registry.set_registered_model_alias(model, "production", "3")  # the promotion of v3
    rolled_back = outcome(model, "3", "rolled_back", "2")
    counting = CountingClient(registry)
    result, writes = apply_outcome(counting, rolled_back)  # type: ignore[arg-type]
    assert result == APPLIED and len(writes) == 3, writes
    assert production(registry, model) == "2"
    assert rollout_tags(registry, model, "3") == {
        tag.ROLLOUT_STATUS: "rolled_back",
        tag.ROLLOUT_REASON: "rolled_back: because 1",
    }
    before = (rollout_tags(registry, model, "3"), production(registry, model))
    counting.writes.clear()
    assert apply_outcome(counting, rolled_back) == (UNCHANGED, [])  # type: ignore[arg-type]
    assert counting.writes == []  # not one write to MLflow
    assert (rollout_tags(registry, model, "3"), production(registry, model)) == before


@pytest.mark.parametrize(
    ("before", "after"),
    [("2", "2"), (None, "2"), ("1", "2"), ("3", "3")],
    ids=["on-the-version", "unset", "on-stable", "a-newer-promotion"],
)
def test_a_success_leaves_or_sets_production_but_never_undoes_a_newer_promotion(
    registry: MlflowClient, model: str, before: str | None, after: str
) -> None:
    if before is not None:
        registry.set_registered_model_alias(model, "production", before)
    succeeded = outcome(model, "2", "succeeded", "1")
    assert apply_outcome(registry, succeeded)[0] == APPLIED
    assert production(registry, model) == after
    assert rollout_tags(registry, model, "2")[tag.ROLLOUT_STATUS] == "succeeded"
    assert apply_outcome(registry, succeeded) == (UNCHANGED, [])
    assert production(registry, model) == after


def test_an_old_rollback_does_not_move_production_off_a_later_promotion(
    registry: MlflowClient, model: str
) -> None:
    registry.set_registered_model_alias(model, "production", "3")  # promoted while it was down
    result, writes = apply_outcome(registry, outcome(model, "2", "aborted", "1"))
    assert result == APPLIED and writes == [
        f"tag {tag.ROLLOUT_STATUS}",
        f"tag {tag.ROLLOUT_REASON}",
    ]
    assert production(registry, model) == "3"
    assert rollout_tags(registry, model, "2")[tag.ROLLOUT_STATUS] == "aborted"


def test_the_flow_and_the_follower_leave_the_same_values_whichever_writes_first(
    registry: MlflowClient, model: str, tmp_path: Path
) -> None:
    from registry.outcomes import record_outcome

    registry.set_registered_model_alias(model, "production", "3")
    rolled_back = outcome(model, "3", "rolled_back", "2")
    record_outcome(
        registry, model=model, version="3", stable_version="2", outcome="rolled_back",
        reason=rolled_back.reason, causes=[], cards_dir=tmp_path,
    )  # fmt: skip
    assert apply_outcome(registry, rolled_back) == (UNCHANGED, [])
    assert production(registry, model) == "2"


def test_a_version_the_registry_does_not_have_is_recorded_as_such(registry: MlflowClient) -> None:
    assert apply_outcome(registry, outcome("never-registered", "7", "succeeded", "6")) == (
        NOT_IN_REGISTRY,
        [],
    )


# --- the store -----------------------------------------------------------------------------------


def test_the_cursor_survives_a_restart_and_only_moves_forward(tmp_path: Path) -> None:
    path = tmp_path / "home" / "registry-follower.db"
    store = FollowerStore(path)
    assert store.cursor() == 0
    assert store.advance(outcome("m", "2", "succeeded", "1", id=1), APPLIED, 10.0)
    assert store.advance(outcome("m", "3", "rolled_back", "2", id=2), APPLIED, 11.0)
    store.close()
    again = FollowerStore(path)
    assert again.cursor() == 2
    assert not again.advance(outcome("m", "2", "succeeded", "1", id=1), APPLIED, 12.0)
    assert not again.advance(outcome("m", "3", "rolled_back", "2", id=2), APPLIED, 12.0)
    assert [(a.id, a.status, a.result) for a in again.applied()] == [
        (1, "succeeded", APPLIED),
        (2, "rolled_back", APPLIED),
    ]


def test_healthy_means_caught_up_lately_with_no_failure_since(tmp_path: Path) -> None:
    path = tmp_path / "registry-follower.db"
    assert not healthy(path, 60, now=100.0)  # no follower yet
    store = FollowerStore(path)
    assert not healthy(path, 60, now=100.0)  # never caught up
    store.caught_up(100.0)
    assert healthy(path, 60, now=150.0)
    assert not healthy(path, 60, now=161.0)  # too long ago
    store.failed("ConnectError: MLflow is down", 155.0)
    assert not healthy(path, 60, now=156.0)
    store.caught_up(157.0)
    assert healthy(path, 60, now=158.0) and store.state().error is None


# --- passes --------------------------------------------------------------------------------------


class Feed:
    """The controller's feed in memory; ``down`` calls fail as an unreachable controller does."""

    def __init__(self, entries: list[OutcomeEntry], down: int = 0) -> None:
        self.entries = entries
        self.down = down
        self.calls: list[int] = []

    def outcomes(self, after: int = 0, limit: int = 100) -> OutcomePage:
        self.calls.append(after)
        if self.down:
            self.down -= 1
            raise AdminError("fleet controller unreachable: ConnectError: refused")
        page = [e for e in self.entries if e.id > after][:limit]
        head = max((e.id for e in self.entries), default=0)
        return OutcomePage(outcomes=page, last=page[-1].id if page else after, head=head)


class FailingOn:
    """The MLflow client, failing ``times`` times on setting tags of ``version`` (MLflow down)."""

    def __init__(self, client: MlflowClient, version: str, times: int) -> None:
        self.client, self.version, self.times = client, version, times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def set_model_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        if version == self.version and self.times:
            self.times -= 1
            raise ConnectionError("MLflow is down")
        self.client.set_model_version_tag(model, version, key, value)


def test_a_pass_that_fails_on_an_outcome_leaves_the_cursor_before_it(
    registry: MlflowClient, model: str, tmp_path: Path
) -> None:
    registry.set_registered_model_alias(model, "production", "2")
    feed = Feed(
        [
            outcome(model, "2", "succeeded", "1", id=1),
            outcome(model, "3", "rolled_back", "2", id=2),
            outcome(model, "3", "succeeded", "2", id=3),  # a retry of v3 that succeeded
        ]
    )
    store = FollowerStore(tmp_path / "f.db")
    flaky = FailingOn(registry, "3", times=1)
    with pytest.raises(ConnectionError):
        follow_once(feed, flaky, store, page=2)  # type: ignore[arg-type]
    assert store.cursor() == 1 and store.state().caught_up_at is None
    assert follow_once(feed, flaky, store, page=2) == 2  # type: ignore[arg-type]
    assert store.cursor() == 3 and feed.calls[-2:] == [1, 3]
    assert [a.id for a in store.applied()] == [1, 2, 3]
    assert rollout_tags(registry, model, "3")[tag.ROLLOUT_STATUS] == "succeeded"
    assert production(registry, model) == "3"  # the retry of v3 moved it on from stable v2
    assert follow_once(feed, registry, store) == 0  # nothing new: nothing applied twice


def test_the_loop_backs_off_while_the_controller_is_down_and_skips_nothing(
    registry: MlflowClient, model: str, tmp_path: Path
) -> None:
    feed = Feed([outcome(model, "2", "succeeded", "1", id=1)], down=3)
    store = FollowerStore(tmp_path / "f.db")
    stop = threading.Event()
    errors: list[tuple[str, float]] = []
    options = {"interval_s": 0.02, "max_backoff_s": 0.05, "stop": stop}
    thread = threading.Thread(
        target=run_follower,
        args=(feed, registry, store),
        kwargs={**options, "on_error": lambda m, d: errors.append((m, d))},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 30
    while store.cursor() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert store.cursor() == 1
    assert len(errors) == 3 and all("controller unreachable" in m for m, _ in errors)
    assert all(0 < d <= 0.05 for _, d in errors)
    assert store.state().error is None  # the pass that got through cleared it
    assert production(registry, model) == "2"


def test_a_feed_that_ends_below_the_cursor_stops_the_follower_instead_of_waiting_forever(
    registry: MlflowClient, model: str, tmp_path: Path
) -> None:
    """A controller database started anew gives out ids 1, 2, ... again: a follower at 2 would
    never see them. It says so and applies nothing."""
    store = FollowerStore(tmp_path / "f.db")
    for id in (1, 2):
        store.advance(outcome(model, "2", "succeeded", "1", id=id), APPLIED, 1.0)
    feed = Feed([outcome(model, "3", "rolled_back", "2", id=1)])
    with pytest.raises(
        FeedBehindCursor, match="ends at 1, but this follower applied outcomes up to 2"
    ):
        follow_once(feed, registry, store)
    assert store.cursor() == 2 and rollout_tags(registry, model, "3") == {}
