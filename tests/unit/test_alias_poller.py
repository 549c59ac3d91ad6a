"""registry.alias_poller over a real SQLite MLflow registry, sharing the listener's store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from promotion_registry import MODEL, PASSED, SUCCEEDED, Recorder, fresh_registry, production

from registry import tags as tag
from registry.alias_poller import poll_once, run_poller
from registry.promotion_guard import handle_production
from registry.promotion_store import PromotionStore


def setup(tmp_path: Path, *versions: dict[str, str]) -> tuple[MlflowClient, PromotionStore]:
    return fresh_registry(tmp_path, *versions), PromotionStore(tmp_path / "promotions.db")


def test_first_pass_records_what_is_there_and_starts_nothing(tmp_path: Path) -> None:
    client, store = setup(tmp_path, SUCCEEDED)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    assert poll_once(client, store, trigger) == []
    assert store.seen(MODEL) == "1" and trigger.calls == []


def test_an_alias_change_starts_one_rollout(tmp_path: Path) -> None:
    client, store = setup(tmp_path, SUCCEEDED, PASSED)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    client.set_registered_model_alias(MODEL, "production", "2")
    [outcome] = poll_once(client, store, trigger)
    assert (outcome.status, outcome.run_id) == ("started", "run-1")
    assert poll_once(client, store, trigger) == []
    assert trigger.calls == [(MODEL, "2", "1")]
    assert [(t.version, t.source) for t in store.triggered()] == [("2", "poller")]


def test_a_change_the_webhook_handled_is_not_started_again(tmp_path: Path) -> None:
    client, store = setup(tmp_path, SUCCEEDED, PASSED)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    client.set_registered_model_alias(MODEL, "production", "2")
    handle_production(client, store, trigger, MODEL, "2", source="webhook")
    assert poll_once(client, store, trigger) == []
    assert trigger.calls == [(MODEL, "2", "1")]


def test_a_version_without_hardware_results_is_refused(tmp_path: Path) -> None:
    client, store = setup(tmp_path, SUCCEEDED, {})
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    client.set_registered_model_alias(MODEL, "production", "2")
    [outcome] = poll_once(client, store, trigger)
    assert outcome.status == "refused"
    assert production(client) == "1"
    assert "no hardware results" in client.get_model_version(MODEL, "2").tags[tag.PROMOTE_REFUSED]
    assert poll_once(client, store, trigger) == [] and trigger.calls == []


def test_only_the_configured_models_are_watched(tmp_path: Path) -> None:
    client, store = setup(tmp_path, PASSED)
    client.create_registered_model("other")
    trigger = Recorder()
    poll_once(client, store, trigger, models=["other"])
    client.set_registered_model_alias(MODEL, "production", "1")
    assert poll_once(client, store, trigger, models=["other"]) == []
    assert poll_once(client, store, trigger) == []  # first sight of MODEL: recorded only
    assert trigger.calls == []


def test_the_loop_reacts_within_its_interval_until_stopped(tmp_path: Path) -> None:
    client, store = setup(tmp_path, PASSED)
    trigger = Recorder()
    stop = threading.Event()
    seen: list[str] = []
    thread = threading.Thread(
        target=run_poller,
        args=(0.05, client, store, trigger),
        kwargs={"stop": stop, "report": lambda o: seen.append(o.status)},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while store.seen(MODEL) is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # until the first pass recorded "no alias"
        client.set_registered_model_alias(MODEL, "production", "1")
        while not trigger.calls and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert trigger.calls == [(MODEL, "1", None)] and seen == ["started"]


def test_a_failed_start_is_retried_on_the_next_pass(tmp_path: Path) -> None:
    client, store = setup(tmp_path, PASSED)
    trigger = Recorder()
    poll_once(client, store, trigger)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger.fail = True
    assert poll_once(client, store, trigger) == []
    trigger.fail = False
    [outcome] = poll_once(client, store, trigger)
    assert outcome.status == "started" and trigger.calls == [(MODEL, "1", None)]


def test_a_promotion_whose_promoter_starts_the_rollout_starts_nothing_more(
    tmp_path: Path,
) -> None:
    """`edgeloop promote` and auto-promotion record that they start the rollout before the alias
    moves: the poller and the webhook, which both see the move, leave it to them."""
    from registry.outcomes import promote

    client, store = setup(tmp_path, SUCCEEDED, PASSED)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    promote(client, MODEL, "2", rollout_by="edgeloop promote")
    [outcome] = poll_once(client, store, trigger)
    assert (outcome.status, outcome.reason) == (
        "claimed",
        "edgeloop promote starts its rollout itself",
    )
    again = handle_production(client, store, trigger, MODEL, "2", source="webhook")
    assert again.status == "duplicate"
    assert trigger.calls == [] and production(client) == "2"


def test_a_stale_or_forged_rollout_record_does_not_silence_the_trigger(tmp_path: Path) -> None:
    """A record from an earlier promotion of the version (older than the freshness window), or one
    that is not a record at all, is no claim: the alias change starts the rollout as usual."""
    from registry.promotion_authority import RECORD_FRESH_S, record

    client, store = setup(tmp_path, SUCCEEDED, PASSED, PASSED)
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    stale = record("edgeloop promote", time.time() - RECORD_FRESH_S - 60)
    client.set_model_version_tag(MODEL, "2", tag.PROMOTE_ROLLOUT, stale)
    client.set_registered_model_alias(MODEL, "production", "2")
    [outcome] = poll_once(client, store, trigger)
    assert outcome.status == "started"
    client.set_model_version_tag(MODEL, "3", tag.PROMOTE_ROLLOUT, "me, honestly")
    client.set_registered_model_alias(MODEL, "production", "3")
    [outcome] = poll_once(client, store, trigger)
    assert outcome.status == "started"
    assert trigger.calls == [(MODEL, "2", "1"), (MODEL, "3", "1")]


def test_a_claim_does_not_let_a_version_without_results_through(tmp_path: Path) -> None:
    client, store = setup(tmp_path, SUCCEEDED, {})
    client.set_registered_model_alias(MODEL, "production", "1")
    trigger = Recorder()
    poll_once(client, store, trigger)
    from registry.promotion_authority import record

    client.set_model_version_tag(MODEL, "2", tag.PROMOTE_ROLLOUT, record("me", time.time()))
    client.set_registered_model_alias(MODEL, "production", "2")
    [outcome] = poll_once(client, store, trigger)
    assert outcome.status == "refused" and production(client) == "1"
