"""Replicas on one database, the parts a SQLite file shows: the database refuses a second open rollout
of a model (whoever asks, whatever the API read before), and SQLite serves one controller process.

The PostgreSQL parts (the leader's advisory lock, NOTIFY wake-ups, racing replicas) run against real
processes in ``tests/integration/test_controller_replicas.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_controller_builders import ADMIN_HEADERS, Fleet, policy

from fleet.controller.errors import RolloutConflict
from fleet.controller.rollout.decide import new_rollout
from fleet.controller.rollout.policy import load_policy
from fleet.controller.storage import replicas, store


def _create(fleet: Fleet, version: str) -> str:
    body = {"model": "churn", "version": version, "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 201, r.text
    return str(r.json()["rollout_id"])


def test_the_database_refuses_a_second_open_rollout_the_api_did_not_see(fleet: Fleet) -> None:
    """As if another replica inserted between this one's check and its insert: the API's check is
    past, and the insert itself is refused with the same reason (a 409 in the API)."""
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    first = _create(fleet, "2")
    racing = new_rollout(
        rollout_id=store.new_rollout_id("churn"),
        model="churn",
        canary_version="3",
        stable_version="1",
        policy=load_policy(policy()),
        now=fleet.clock(),
    )
    with fleet.app.state.sessions() as session, pytest.raises(RolloutConflict) as refused:
        store.insert_rollout(session, racing, fleet.clock())
    assert first in refused.value.reason and "active" in refused.value.reason
    r = fleet.client.get("/v1/rollouts", headers=ADMIN_HEADERS)
    assert [s["rollout_id"] for s in r.json()] == [first]


def test_the_api_check_still_answers_with_its_message(fleet: Fleet) -> None:
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    first = _create(fleet, "2")
    body = {"model": "churn", "version": "3", "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 409
    assert r.json()["reason"] == f"another rollout of churn is active: {first} (pending)"
    assert r.json()["hint"] == "wait for it, abort it, or ask to supersede it"


def test_retrying_an_ended_rollout_while_another_is_open_is_a_409_naming_it(fleet: Fleet) -> None:
    fleet.enrol("dev-0")
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    ended = _create(fleet, "2")
    r = fleet.client.post(f"/v1/rollouts/{ended}/abort", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json()["phase"] == "aborted", r.text
    second = _create(fleet, "3")
    r = fleet.client.post(f"/v1/rollouts/{ended}/retry", headers=ADMIN_HEADERS)
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == f"another rollout of churn is active: {second} (pending)"
    r = fleet.client.get(f"/v1/rollouts/{ended}", headers=ADMIN_HEADERS)
    assert r.json()["phase"] == "aborted"  # the retry changed nothing


HOLDER = """
import sys, time
from fleet.controller.storage import replicas
replicas.hold_sqlite(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_sqlite_serves_one_controller_process_and_a_killed_one_leaves_no_lock(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == b"held"
        with pytest.raises(replicas.AnotherController) as refused:
            replicas.hold_sqlite(url)
        message = str(refused.value)
        assert f"pid {other.pid}" in message and "SQLite serves one controller process" in message
        assert "PostgreSQL" in refused.value.hint
    finally:
        other.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops the lock
        other.wait()
        assert other.stdout is not None
        other.stdout.close()
    release = replicas.hold_sqlite(url)
    release()


def test_apps_of_one_process_share_the_sqlite_file(tmp_path: Path) -> None:
    """Tests (and an embedded app beside a CLI) open the same file twice in one process."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    first, second = replicas.hold_sqlite(url), replicas.hold_sqlite(url)
    first()
    first()  # releasing twice is harmless
    probe = subprocess.run(
        [sys.executable, "-c", HOLDER.replace("time.sleep(600)", ""), url],
        capture_output=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    assert probe.returncode == 1 and b"AnotherController" in probe.stderr  # still held
    second()
    probe = subprocess.run(
        [sys.executable, "-c", HOLDER.replace("time.sleep(600)", ""), url],
        capture_output=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr


def test_a_memory_or_postgresql_database_takes_no_file_lock(tmp_path: Path) -> None:
    replicas.hold_sqlite("sqlite://")()
    replicas.hold_sqlite("postgresql://nobody@127.0.0.1:1/none")()


def test_notifications_stay_under_the_payload_limit_and_name_every_device() -> None:
    ids = [f"device-{i:05d}-{'x' * 100}" for i in range(1000)]
    payloads = list(replicas.notify_payloads("r1", ids))
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    import json

    named = [d for p in payloads for d in json.loads(p)["devices"]]
    assert named == ids


def test_an_outbox_action_two_performers_read_as_pending_is_performed_once(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two performers (the leader's pass, a command on another replica) both read the outbox
    while its actions were pending; the claim in each action's transaction lets one do each."""
    from fleet.controller.reconcile import perform_pending
    from fleet.controller.rollout.decide import start

    for i in range(2):
        fleet.enrol(f"dev-{i}")
    for version in ("1", "2"):
        fleet.artifact("churn", version)
    rollout_id = _create(fleet, "2")
    sessions = fleet.app.state.sessions
    with sessions() as session:  # a decision saved, its actions not yet performed
        row = store.load_rollout(session, rollout_id)
        status = store.status_of(row)
        new, actions = start(status, store.observations(session, status), fleet.clock())
        store.save_decision(session, row, new, actions, fleet.clock())
    with sessions() as session:
        read_by_both = store.pending_actions(session, rollout_id)
    assert len(read_by_both) == len(actions) >= 2
    with sessions() as session:
        first = perform_pending(session, rollout_id, fleet.clock())
    assert [a.kind for a in first] == [a.kind for a in actions]
    monkeypatch.setattr(store, "pending_actions", lambda _session, _id: read_by_both)
    with sessions() as session:
        assert perform_pending(session, rollout_id, fleet.clock()) == []
    monkeypatch.undo()
    with sessions() as session:
        assert store.pending_actions(session, rollout_id) == []


class Follower:
    """A replica that does not lead: the background passes skip their work."""

    asked = 0

    def leading(self) -> bool:
        self.asked += 1
        return False

    def close(self) -> None:
        pass


def test_a_replica_that_does_not_lead_skips_the_reconcile_pass(fleet: Fleet) -> None:
    from fleet.controller.reconcile import reconcile_all

    fleet.enrol("dev-0")
    for version in ("1", "2"):
        fleet.artifact("churn", version)
    rollout_id = _create(fleet, "2")
    r = fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    before = fleet.client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS).json()
    follower = Follower()
    later = fleet.clock.at(3600)  # far past every deadline: a pass would move the rollout
    assert reconcile_all(fleet.app.state.sessions, later, leader=follower) == []
    assert follower.asked == 1
    after = fleet.client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS).json()
    assert after == before
    (result,) = reconcile_all(fleet.app.state.sessions, later, leader=replicas.Alone())
    assert result.phase != "progressing"
