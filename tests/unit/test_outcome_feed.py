"""``GET /v1/outcomes``: the controller's rollout outcomes as an ordered, resumable feed (admin), on
a tmp SQLite with a fake clock; written in the transaction of the decision, ids without gaps."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from test_controller_builders import ADMIN_HEADERS, Fleet, policy

from fleet.controller.rollout.actions import RecordOutcome
from fleet.controller.storage import outcomes
from fleet.shared.admin_protocol import OutcomePage


def feed(fleet: Fleet, **params: Any) -> OutcomePage:
    r = fleet.client.get("/v1/outcomes", params=params, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return OutcomePage.model_validate(r.json())


def create(fleet: Fleet, version: str = "2") -> str:
    body = {"model": "churn", "version": version, "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 201, r.text
    return str(r.json()["rollout_id"])


def command(fleet: Fleet, rollout_id: str, name: str, reason: str = "") -> dict[str, Any]:
    r = fleet.client.post(
        f"/v1/rollouts/{rollout_id}/{name}", json={"reason": reason}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_each_ended_attempt_is_one_entry_in_order_and_the_feed_resumes_after_an_id(
    fleet: Fleet,
) -> None:
    from fleet.controller.reconcile import reconcile_once

    for i in range(2):
        fleet.enrol(f"dev-{i}")
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    assert feed(fleet) == OutcomePage(outcomes=[], last=0, head=0)

    fleet.clock.at(10)
    pending = create(fleet)
    command(fleet, pending, "abort", "not today")  # no device targeted: aborted at once
    fleet.clock.at(20)
    started = create(fleet, "3")
    command(fleet, started, "start")
    fleet.clock.at(30)
    command(fleet, started, "abort")  # rolling back: the outcome is recorded now
    for at in (31, 32):  # later passes decide again; they record nothing more
        with fleet.app.state.sessions() as session:
            reconcile_once(session, started, fleet.clock.at(at))

    page = feed(fleet)
    assert [(o.id, o.rollout_id, o.version, o.status) for o in page.outcomes] == [
        (1, pending, "2", "aborted"),
        (2, started, "3", "aborted"),
    ]
    first, second = page.outcomes
    assert (first.reason, first.stable_version, first.attempt) == ("not today", "1", 1)
    assert second.reason == "aborted by an operator" and second.at == fleet.clock.at(30)
    assert (page.last, page.head) == (2, 2)

    assert feed(fleet, after=1).outcomes == [second]  # resumed after the last id applied
    assert feed(fleet, after=2) == OutcomePage(outcomes=[], last=2, head=2)
    assert feed(fleet, limit=1) == OutcomePage(outcomes=[first], last=1, head=2)
    assert feed(fleet, rollout_id=started).outcomes == [second]


def test_the_feed_takes_the_admin_token_and_refuses_bad_cursors(fleet: Fleet) -> None:
    assert fleet.client.get("/v1/outcomes").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert fleet.client.get("/v1/outcomes", headers=wrong).status_code in (401, 403)
    for params in ({"after": -1}, {"limit": 0}, {"limit": 100_000}, {"rollout_id": "a/b"}):
        r = fleet.client.get("/v1/outcomes", params=params, headers=ADMIN_HEADERS)
        assert r.status_code == 422, (params, r.text)


def test_two_writers_of_the_same_feed_id_cannot_both_commit(fleet: Fleet) -> None:
    """Ids are ``max + 1`` in the deciding transaction: a writer that read the same max as one
    that committed first fails (and its decision is retried), so ids commit in order, no gaps."""
    fleet.artifact("churn", "2")
    rollout_id = create(fleet)

    def action(transition: int) -> RecordOutcome:
        return RecordOutcome(
            rollout_id=rollout_id, attempt=1, transition=transition, model="churn",
            version="2", stable_version="1", outcome="aborted", reason="x",
        )  # fmt: skip

    sessions = fleet.app.state.sessions
    with sessions() as first, sessions() as second:
        outcomes.record(first, action(1), fleet.clock())
        outcomes.record(second, action(2), fleet.clock())  # read the same max: 0
        first.commit()
        with pytest.raises(IntegrityError):
            second.commit()
    assert [o.id for o in feed(fleet).outcomes] == [1]
