"""The desired-state answer read in one statement (``store.desired_states``) with the rollout's context
cached by the rollout row's version: never an older answer than what was committed, whoever
committed it (another replica writes the same rows behind this process's back); and the answers
handed to woken long-polls (published by this process, or read in one batch for another replica's
change) are the answers a read gives."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from builders import REGISTRY_KEY, claim
from test_controller_builders import ADMIN_HEADERS, Fleet, policy

from fleet.controller.api.routes_devices import wake_from_database
from fleet.controller.api.routes_rollouts import run_command
from fleet.controller.longpoll import ChangeNotifier
from fleet.controller.storage import store
from fleet.controller.storage.db import ArtifactRow, DesiredStateRow, DeviceRow, RolloutRow
from fleet.shared.protocol import DesiredState


def shadow_policy() -> dict[str, Any]:
    raw = policy()
    raw["shadow"] = {"rate": 0.2, "cpu_budget": 0.3, "tolerance": 0.5}
    return raw


def auth(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def start(fleet: Fleet, version: str = "2", stable: str = "1", devices: int = 4) -> str:
    for i in range(devices):
        fleet.enrol(f"dev-{i}")
    body = {"model": "churn", "version": version, "stable_version": stable}
    r = fleet.client.post(
        "/v1/rollouts", json={**body, "policy": shadow_policy()}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 201, r.text
    rollout_id = str(r.json()["rollout_id"])
    assert fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success
    return rollout_id


def read(fleet: Fleet) -> dict[str, DesiredState]:
    with fleet.app.state.sessions() as session:
        return store.desired_states(session, [f"dev-{i}" for i in range(4)])


def canaries(answers: dict[str, DesiredState], version: str = "2") -> list[str]:
    return [
        d for d, s in answers.items() if s.artifact is not None and s.artifact.version == version
    ]


def row_by_row(fleet: Fleet, device_id: str) -> DesiredState:
    """The read this replaced (five ORM reads, the rollout's status decoded): the reference."""
    with fleet.app.state.sessions() as session:
        device = session.get(DeviceRow, device_id)
        assert device is not None
        row = session.get(DesiredStateRow, device_id)
        if row is None:
            return DesiredState(device_id=device_id, revision=0)
        artifact = None
        if row.model is not None and row.version is not None:
            found = session.get(ArtifactRow, (row.model, row.version, device.hardware_class))
            if found is not None and found.signature:
                artifact = store._artifact(found)
        shadow = None
        if artifact is not None and row.rollout_id is not None:
            shadow = store._shadow_plan(session, row.rollout_id, artifact.version)
        return DesiredState(
            device_id=device_id,
            revision=row.revision,
            artifact=artifact,
            rollout_id=row.rollout_id,
            shadow=shadow,
            rollback=artifact is not None
            and store.is_rollback(session, artifact.model, artifact.version, row.rollout_id),
        )


def same_as_row_by_row(fleet: Fleet) -> dict[str, DesiredState]:
    answers = read(fleet)
    assert answers == {d: row_by_row(fleet, d) for d in answers}
    return answers


def test_the_answer_is_what_the_row_by_row_read_gave(fleet: Fleet) -> None:
    for version in ("1", "2"):
        fleet.artifact("churn", version)
    fleet.artifact("churn", "2", hardware_class="edge-small")
    same_as_row_by_row(fleet)  # nothing targeted yet
    assert fleet.client.put("/v1/baselines/churn", json={"version": "1"}, headers=ADMIN_HEADERS)
    rollout_id = start(fleet)
    answers = same_as_row_by_row(fleet)
    chosen = canaries(answers)
    assert chosen and len(chosen) < 4
    for device_id in chosen:
        shadow = answers[device_id].shadow
        assert shadow is not None and (shadow.version, shadow.rate) == ("1", 0.2)
    for command in ("pause", "resume", "abort"):
        r = fleet.client.post(f"/v1/rollouts/{rollout_id}/{command}", headers=ADMIN_HEADERS)
        assert r.is_success, r.text
        answers = same_as_row_by_row(fleet)
    assert all(answers[d].rollback and answers[d].shadow is None for d in chosen)
    with fleet.app.state.sessions() as session:
        assert store.desired_states(session, ["nobody"]) == {}


def test_a_rollout_saved_by_another_replica_changes_the_next_answer(fleet: Fleet) -> None:
    """The cached context is keyed by the rollout row's version: a save elsewhere (here: a session
    that is not the API's, the phase moved past the stages) is seen by the next read, although
    no device's revision changed. Keyed by the rollout alone, the shadow plan would stay."""
    for version in ("1", "2"):
        fleet.artifact("churn", version)
    rollout_id = start(fleet)
    before = read(fleet)
    canary = canaries(before)[0]
    assert before[canary].shadow is not None
    with fleet.app.state.sessions() as session:  # "another replica"
        row = session.get(RolloutRow, rollout_id)
        assert row is not None
        row.phase = "completed"  # row_version + 1, as every save of the row
        session.commit()
    after = read(fleet)
    assert after[canary].revision == before[canary].revision
    assert after[canary].shadow is None
    with fleet.app.state.sessions() as session:
        row = session.get(RolloutRow, rollout_id)
        assert row is not None
        row.phase = "progressing"
        row.status = {**row.status, "policy": {**row.status["policy"], "shadow": None}}
        session.commit()
    assert read(fleet)[canary].shadow is None  # the policy read again: no shadow any more


def test_a_release_registered_again_changes_the_rollback_flag(fleet: Fleet) -> None:
    """A rollout to an older release than its stable one: its canary is a way back (``rollback``)
    while the canary's release is below the stable one's. Registering the stable version again with
    a lower release changes that without touching the rollout row: the artifacts' fingerprint is
    part of the context's key, so the cached flag is not used."""
    fleet.artifact("churn", "3")
    fleet.artifact("churn", "2")
    start(fleet, version="2", stable="3")
    chosen = canaries(read(fleet))
    assert chosen and all(read(fleet)[d].rollback for d in chosen)
    data = b"churn 3 again" * 100
    query = claim(
        REGISTRY_KEY, "host-cpu-int8", data, model="churn", version="3",
        hardware_class="host-cpu", release=1,
    )  # fmt: skip
    r = fleet.client.post("/v1/artifacts", params=query, content=data, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    assert not any(read(fleet)[d].rollback for d in chosen)


def test_a_retarget_committed_elsewhere_is_the_next_answer(fleet: Fleet) -> None:
    """No answer is older than a committed change: another writer retargets a device (no
    notification reaches this process); the next read, and the long-poll, answer the new state."""
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    credential = fleet.enrol("dev-x")
    first = fleet.client.get("/v1/devices/dev-x/desired", headers=auth(credential)).json()
    with fleet.app.state.sessions() as session:
        for version in ("2", "3"):
            store.retarget(
                session,
                ["dev-x"],
                model="churn",
                version=version,
                rollout_id=None,
                now=fleet.clock(),
            )
            session.commit()
        assert session.get(DesiredStateRow, "dev-x").revision == first["revision"] + 2  # type: ignore[union-attr]
    r = fleet.client.get(
        "/v1/devices/dev-x/desired",
        params={"revision": first["revision"], "wait": 5},
        headers=auth(credential),
    )
    assert r.json()["revision"] == first["revision"] + 2
    assert r.json()["artifact"]["version"] == "3"


def test_an_unsigned_variant_is_no_artifact(fleet: Fleet) -> None:
    fleet.artifact("churn", "1", signed=False)
    fleet.enrol("dev-u")
    with fleet.app.state.sessions() as session:
        store.retarget(
            session, ["dev-u"], model="churn", version="1", rollout_id=None, now=fleet.clock()
        )
        session.commit()
        answer = store.desired_states(session, ["dev-u"])["dev-u"]
        assert answer.revision == 1 and answer.artifact is None and not answer.rollback
        session.execute(ArtifactRow.__table__.delete())
        session.commit()
        assert store.desired_states(session, ["dev-u"])["dev-u"].artifact is None


def _held(
    notifier: ChangeNotifier, device_ids: list[str], act: Any
) -> dict[str, DesiredState | None]:
    """Long-polls held for ``device_ids`` while ``act`` runs in another thread; what each was handed."""

    async def main() -> dict[str, DesiredState | None]:
        with contextlib.ExitStack() as held:
            waiters = {d: held.enter_context(notifier.subscribe(d)) for d in device_ids}
            thread = threading.Thread(target=act)
            thread.start()
            thread.join()
            await asyncio.sleep(0.05)  # the wake-ups scheduled on this loop have run
            return {d: w.desired("host-cpu") for d, w in waiters.items()}

    return asyncio.run(main())


def test_a_published_answer_is_the_answer_a_read_gives(fleet: Fleet) -> None:
    """This process's own change: the long-polls are handed the shared document (shadow plan
    included), the same answer a read of the database gives afterwards."""
    for version in ("1", "2"):
        fleet.artifact("churn", version)
    for i in range(4):
        fleet.enrol(f"dev-{i}")
    body = {"model": "churn", "version": "2", "stable_version": "1", "policy": shadow_policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    rollout_id = r.json()["rollout_id"]
    notifier = ChangeNotifier()
    devices = [f"dev-{i}" for i in range(4)]

    def start_it() -> None:
        with fleet.app.state.sessions() as session:
            run_command(session, rollout_id, "start", "", fleet.clock(), notifier)

    handed = _held(notifier, devices, start_it)
    answers = read(fleet)
    woken = {d: s for d, s in handed.items() if s is not None}
    assert woken and canaries(answers)
    for device_id, published in woken.items():
        assert published == answers[device_id]
        assert published.shadow is not None or published.artifact is None


def test_another_replicas_change_is_read_once_and_handed_to_the_long_polls(fleet: Fleet) -> None:
    """``wake_from_database``: the devices named by a notification that hold a long-poll here get
    the state read after the commit, in one read; an older state handed later (a slow
    notification) never replaces it."""
    for version in ("1", "2", "3"):
        fleet.artifact("churn", version)
    for device_id in ("dev-a", "dev-b"):
        fleet.enrol(device_id)
    notifier = ChangeNotifier()
    wake = wake_from_database(fleet.app.state.sessions, notifier)
    stale = DesiredState(device_id="dev-a", revision=1)

    def other_replica() -> None:
        with fleet.app.state.sessions() as session:
            for version in ("2", "3"):
                store.retarget(
                    session, ["dev-a", "dev-b", "dev-c"], model="churn", version=version,
                    rollout_id=None, now=fleet.clock(),
                )  # fmt: skip
                session.commit()
        wake(["dev-a", "dev-b", "dev-c", "not-held"])
        notifier.deliver([stale])  # the notification of revision 1, late

    handed = _held(notifier, ["dev-a", "dev-b"], other_replica)
    for device_id in ("dev-a", "dev-b"):
        answer = handed[device_id]
        assert answer is not None and answer.revision == 2, answer
        assert answer.artifact is not None and answer.artifact.version == "3"
        assert answer == read_one(fleet, device_id)


def read_one(fleet: Fleet, device_id: str) -> DesiredState:
    with fleet.app.state.sessions() as session:
        return store.desired_states(session, [device_id])[device_id]


# --- the revision a process knows to be current: polls that present it park without a read -------


def test_a_read_that_began_before_a_change_is_not_remembered() -> None:
    notifier = ChangeNotifier()
    token = notifier.token()
    notifier.notify(["a"])  # a change became known while the read ran: it may predate it
    notifier.remember(DesiredState(device_id="a", revision=4), token)
    assert not notifier.current("a", 4)
    token = notifier.token()
    notifier.remember(DesiredState(device_id="a", revision=5), token)
    assert notifier.current("a", 5) and not notifier.current("a", 4)
    assert not notifier.current("a", None)  # no revision: answered at once, always read


def test_a_change_replaces_or_forgets_the_current_revision() -> None:
    notifier = ChangeNotifier()
    notifier.remember(DesiredState(device_id="a", revision=5), notifier.token())
    notifier.deliver([DesiredState(device_id="a", revision=7)])
    assert notifier.current("a", 7)
    notifier.deliver([DesiredState(device_id="a", revision=6)])  # late and older: kept out
    assert notifier.current("a", 7) and not notifier.current("a", 6)
    notifier.notify(["a"])  # a change whose state is not known here
    assert not notifier.current("a", 7)
    notifier.remember(DesiredState(device_id="b", revision=1), notifier.token())
    assert notifier.current("b", 1)
    notifier.trusted = lambda: False  # the listener of other replicas' changes is down
    assert not notifier.current("b", 1)
    notifier.trusted = lambda: True
    notifier.notify_all()  # it came back: whatever happened meanwhile is unknown
    assert not notifier.current("b", 1)


@pytest.fixture
def quiet(fleet: Fleet) -> Fleet:
    """A controller that never re-reads a held long-poll before its time-out (as the benchmarks
    run PostgreSQL replicas): what a poll reads shows."""
    state = fleet.app.state
    state.settings = state.settings.model_copy(update={"long_poll_recheck_s": 30.0})
    return fleet


def test_a_poll_that_presents_the_current_revision_reads_only_at_its_time_out(
    quiet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll parks without a read; at the time-out it reads, and answers what it read: a change
    made where no notification reached this process (a lost ``NOTIFY``) is answered then, not the
    revision remembered."""
    from fleet.controller.api import routes_devices

    reads: list[str] = []
    real = routes_devices._read_states

    def counted(sessions: Any, device_ids: list[str]) -> dict[str, DesiredState]:
        reads.extend(device_ids)
        return real(sessions, device_ids)

    monkeypatch.setattr(routes_devices, "_read_states", counted)
    quiet.artifact("churn", "1")
    quiet.artifact("churn", "2")
    credential = quiet.enrol("dev-q")
    url, headers = "/v1/devices/dev-q/desired", auth(credential)
    first = quiet.client.get(url, headers=headers).json()
    assert len(reads) == 1
    again = quiet.client.get(
        url, params={"revision": first["revision"], "wait": 0.3}, headers=headers
    )
    assert again.json() == first and len(reads) == 2  # only the time-out's read
    with quiet.app.state.sessions() as session:  # no notification of this change
        store.retarget(
            session, ["dev-q"], model="churn", version="2", rollout_id=None, now=quiet.clock()
        )
        session.commit()
    late = quiet.client.get(
        url, params={"revision": first["revision"], "wait": 0.3}, headers=headers
    )
    assert late.json()["revision"] == first["revision"] + 1
    assert late.json()["artifact"]["version"] == "2"
    # the time-out's read made the new revision current: a change known here is answered at once
    with quiet.app.state.sessions() as session:
        changed = store.retarget(
            session, ["dev-q"], model="churn", version="1", rollout_id=None, now=quiet.clock()
        )
        session.commit()
    quiet.app.state.notifier.notify(changed)
    answer = quiet.client.get(
        url, params={"revision": late.json()["revision"], "wait": 20}, headers=headers
    )
    assert answer.json()["revision"] == late.json()["revision"] + 1
    assert answer.elapsed.total_seconds() < 10


def test_the_polls_of_one_turn_of_the_loop_share_one_read(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of polls (time-outs, a fleet connecting) is one read of all their devices, and each
    gets its own state; a poll that asks after the read began gets a read of its own."""
    from fleet.controller.api import routes_devices

    fleet.artifact("churn", "1")
    for device_id in ("dev-a", "dev-b", "dev-c"):
        fleet.enrol(device_id)
    with fleet.app.state.sessions() as session:
        store.retarget(
            session, ["dev-b"], model="churn", version="1", rollout_id=None, now=fleet.clock()
        )
        session.commit()
    batches: list[list[str]] = []
    real = routes_devices._read_states

    def counted(sessions: Any, device_ids: list[str]) -> dict[str, DesiredState]:
        batches.append(sorted(device_ids))
        return real(sessions, device_ids)

    monkeypatch.setattr(routes_devices, "_read_states", counted)
    reader = routes_devices.DesiredReader(fleet.app.state.sessions, ChangeNotifier())

    async def main() -> tuple[list[DesiredState], DesiredState]:
        burst = await asyncio.gather(
            *(reader.read(d) for d in ("dev-a", "dev-b", "dev-a", "nobody"))
        )
        return burst, await reader.read("dev-c")

    burst, later = asyncio.run(main())
    assert batches == [["dev-a", "dev-b", "nobody"], ["dev-c"]]
    assert [(s.device_id, s.revision) for s in burst] == [
        ("dev-a", 0), ("dev-b", 1), ("dev-a", 0), ("nobody", 0)
    ]  # fmt: skip
    assert burst[1].artifact is not None and later.device_id == "dev-c"


def test_another_replicas_change_of_a_device_between_polls_is_read_at_its_next_poll(
    quiet: Fleet,
) -> None:
    """A device with no long-poll held here when the notification comes (between two polls): this
    process forgets its current revision, so the next poll reads and answers the change at once
    instead of parking until its time-out."""
    quiet.artifact("churn", "1")
    credential = quiet.enrol("dev-n")
    url, headers = "/v1/devices/dev-n/desired", auth(credential)
    first = quiet.client.get(url, headers=headers).json()  # its revision is now current here
    with quiet.app.state.sessions() as session:  # another replica
        changed = store.retarget(
            session, ["dev-n"], model="churn", version="1", rollout_id=None, now=quiet.clock()
        )
        session.commit()
    wake_from_database(quiet.app.state.sessions, quiet.app.state.notifier)(list(changed))
    r = quiet.client.get(url, params={"revision": first["revision"], "wait": 20}, headers=headers)
    assert r.json()["revision"] == first["revision"] + 1
    assert r.elapsed.total_seconds() < 10
