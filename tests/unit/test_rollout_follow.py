"""flows.rollout.follow: the flow's deadline aborts a rollout once and follows it to its end."""

from __future__ import annotations

from typing import Any

import pytest

import flows.rollout as rollout_mod
from fleet.admin import AdminError


class FakeAdmin:
    """Phases in order, one per poll; ``abort`` answers 409 when the rollout is already ending."""

    def __init__(self, phases: list[str]) -> None:
        self.phases = phases
        self.polls = 0
        self.commands: list[str] = []

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        phase = self.phases[min(self.polls, len(self.phases) - 1)]
        self.polls += 1
        return {"rollout_id": rollout_id, "model": "m", "version": "2", "phase": phase, "stage": 0}

    def command(self, rollout_id: str, command: str, reason: str = "") -> dict[str, Any]:
        self.commands.append(command)
        if self.phases[min(self.polls - 1, len(self.phases) - 1)] == "rolling_back":
            raise AdminError("cannot abort", status=409)
        return {}


@pytest.fixture(autouse=True)
def no_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_mod, "create_markdown_artifact", lambda **_: None)


def test_past_its_deadline_a_rollout_is_aborted_once_and_followed_to_its_end() -> None:
    admin = FakeAdmin(["paused", "paused", "rolling_back", "rolling_back", "aborted"])
    final = rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=0)  # type: ignore[arg-type]
    assert final["phase"] == "aborted"
    assert admin.commands == ["abort"]


def test_an_abort_refused_because_the_rollout_is_ending_is_not_an_error() -> None:
    admin = FakeAdmin(["rolling_back", "rolling_back", "rolled_back"])
    assert rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=0)["phase"] == "rolled_back"  # type: ignore[arg-type]
    assert admin.commands == ["abort"]


def test_other_refusals_of_the_abort_are_raised() -> None:
    class Down(FakeAdmin):
        def command(self, rollout_id: str, command: str, reason: str = "") -> dict[str, Any]:
            raise AdminError("fleet controller unreachable", status=0)

    with pytest.raises(AdminError, match="unreachable"):
        rollout_mod.follow(Down(["paused"]), "r1", poll_s=0, deadline_s=0)  # type: ignore[arg-type]
