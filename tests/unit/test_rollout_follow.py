"""flows.rollout.follow: the flow's deadline aborts a rollout once and follows it to its end."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import flows.rollout as rollout_mod
from fleet.admin import AdminError
from fleet.shared.admin_protocol import RolloutDetail


def _detail(rollout_id: str, phase: str) -> RolloutDetail:
    return RolloutDetail(
        rollout_id=rollout_id, model="m", version="2", stable_version="1", phase=phase,
        stage="stage 1/2 (10%)", reason=None, updated_at=datetime.now(UTC), status={},
    )  # fmt: skip


class FakeAdmin:
    """Phases in order, one per poll; ``abort`` answers 409 when the rollout is already ending."""

    def __init__(self, phases: list[str]) -> None:
        self.phases = phases
        self.polls = 0
        self.commands: list[str] = []

    def rollout(self, rollout_id: str) -> RolloutDetail:
        phase = self.phases[min(self.polls, len(self.phases) - 1)]
        self.polls += 1
        return _detail(rollout_id, phase)

    def command(self, rollout_id: str, command: str, reason: str = "") -> RolloutDetail:
        self.commands.append(command)
        if self.phases[min(self.polls - 1, len(self.phases) - 1)] == "rolling_back":
            raise AdminError("cannot abort", status=409)
        return _detail(rollout_id, self.phases[min(self.polls - 1, len(self.phases) - 1)])


@pytest.fixture(autouse=True)
def no_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_mod, "create_markdown_artifact", lambda **_: None)


def test_past_its_deadline_a_rollout_is_aborted_once_and_followed_to_its_end() -> None:
    admin = FakeAdmin(["paused", "paused", "rolling_back", "rolling_back", "aborted"])
    final = rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=0)  # type: ignore[arg-type]
    assert final.phase == "aborted"
    assert admin.commands == ["abort"]


def test_an_abort_refused_because_the_rollout_is_ending_is_not_an_error() -> None:
    admin = FakeAdmin(["rolling_back", "rolling_back", "rolled_back"])
    assert rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=0).phase == "rolled_back"  # type: ignore[arg-type]
    assert admin.commands == ["abort"]


def test_other_refusals_of_the_abort_are_raised() -> None:
    class Down(FakeAdmin):
        def command(self, rollout_id: str, command: str, reason: str = "") -> RolloutDetail:
            raise AdminError("fleet controller unreachable", status=0)

    with pytest.raises(AdminError, match="unreachable"):
        rollout_mod.follow(Down(["paused"]), "r1", poll_s=0, deadline_s=0)  # type: ignore[arg-type]


def test_the_flow_takes_the_outcome_the_controller_recorded_for_its_attempt() -> None:
    """The flow writes what the registry follower writes: the controller's record of the attempt
    (a controller without the outcome feed answers 404: the flow falls back to its own reason)."""
    from fleet.shared.admin_protocol import OutcomeEntry, OutcomePage

    def entry(id: int, attempt: int, status: str) -> OutcomeEntry:
        return OutcomeEntry(
            id=id, rollout_id="r1", attempt=attempt, model="m", version="2", stable_version="1",
            status=status, reason=f"attempt {attempt}", at=datetime.now(UTC),
        )  # fmt: skip

    class Feed:
        def __init__(self, status: int = 0) -> None:
            self.status = status

        def outcomes(
            self, after: int = 0, limit: int = 100, rollout_id: str | None = None
        ) -> OutcomePage:
            if self.status:
                raise AdminError("refused", status=self.status)
            found = [entry(3, 1, "rolled_back"), entry(9, 2, "succeeded")]
            return OutcomePage(outcomes=found, last=9, head=9)

    found = rollout_mod.recorded_outcome(Feed(), "r1", 2)  # type: ignore[arg-type]
    assert found is not None and (found.status, found.reason) == ("succeeded", "attempt 2")
    assert rollout_mod.recorded_outcome(Feed(), "r1", 3) is None  # type: ignore[arg-type]
    assert rollout_mod.recorded_outcome(Feed(404), "r1", 1) is None  # type: ignore[arg-type]
    with pytest.raises(AdminError):
        rollout_mod.recorded_outcome(Feed(503), "r1", 1)  # type: ignore[arg-type]


class Flaky(FakeAdmin):
    """No answer on the polls listed in ``down`` (a replica dying behind a load balancer)."""

    def __init__(self, phases: list[str], down: set[int], status: int = 0) -> None:
        super().__init__(phases)
        self.down, self.status, self.calls = down, status, 0

    def rollout(self, rollout_id: str) -> RolloutDetail:
        self.calls += 1
        if self.calls in self.down:
            raise AdminError("fleet controller unreachable: ConnectError", status=self.status)
        return super().rollout(rollout_id)


@pytest.mark.parametrize("status", [0, 502, 503, 504])
def test_a_controller_that_gives_no_answer_for_a_while_is_asked_again(status: int) -> None:
    warned: list[str] = []
    admin = Flaky(["progressing", "rolling_back", "rolled_back"], {2, 3}, status)
    final = rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=60, warn=warned.append)  # type: ignore[arg-type]
    assert final.phase == "rolled_back" and admin.calls == 5
    assert len(warned) == 2 and "no answer from the controller" in warned[0]


def test_no_answer_for_longer_than_allowed_is_raised() -> None:
    admin = Flaky(["progressing"], set(range(2, 100)))
    with pytest.raises(AdminError, match="unreachable"):
        rollout_mod.follow(admin, "r1", poll_s=0.01, deadline_s=60, unreachable_s=0.05)  # type: ignore[arg-type]
    assert 3 <= admin.calls < 99


def test_a_refusal_is_raised_at_once() -> None:
    admin = Flaky(["progressing"], {2}, status=404)
    with pytest.raises(AdminError):
        rollout_mod.follow(admin, "r1", poll_s=0, deadline_s=60)  # type: ignore[arg-type]
    assert admin.calls == 2


def test_a_second_path_told_of_the_same_promotion_finds_the_rollout_to_follow() -> None:
    from fleet.shared.admin_protocol import RolloutSummary

    def summary(rollout_id: str, version: str, stable: str, phase: str) -> RolloutSummary:
        return RolloutSummary(
            rollout_id=rollout_id, model="m", version=version, stable_version=stable,
            phase=phase, stage="", reason=None, updated_at=datetime.now(UTC),
        )  # fmt: skip

    class Listing:
        def __init__(self, *found: RolloutSummary) -> None:
            self.found = list(found)

        def rollouts(self) -> list[RolloutSummary]:
            return self.found

    same = summary("r2", "3", "2", "progressing")
    admin = Listing(summary("r1", "3", "2", "rolled_back"), same)
    assert rollout_mod.same_active_rollout(admin, "m", "3", "2") == same  # type: ignore[arg-type]
    # another version's rollout, or this version over another stable one, is not this promotion
    other = Listing(summary("r3", "4", "2", "progressing"), summary("r4", "3", "1", "pending"))
    assert rollout_mod.same_active_rollout(other, "m", "3", "2") is None  # type: ignore[arg-type]
    ended = Listing(summary("r1", "3", "2", "succeeded"))
    assert rollout_mod.same_active_rollout(ended, "m", "3", "2") is None  # type: ignore[arg-type]
