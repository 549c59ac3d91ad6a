"""flows.rollout.RolloutOutcome: the rollout flow's result keeps the JSON keys the run summary had."""

from __future__ import annotations

from flows.rollout import RolloutOutcome


def test_a_first_release_outcome_dumps_the_keys_of_the_run_summary() -> None:
    outcome = RolloutOutcome(
        rollout_id="baseline", model="m", version="1", stable_version=None,
        outcome="succeeded", reason="first release of m",
    )  # fmt: skip
    assert list(outcome.model_dump(mode="json")) == [
        "rollout_id", "model", "version", "stable_version", "outcome", "reason", "causes", "history",
    ]  # fmt: skip
    assert outcome.model_dump(mode="json")["causes"] == []
