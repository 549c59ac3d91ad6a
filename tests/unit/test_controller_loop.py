"""fleet.controller.reconcile: the reconcile pass walks real rollouts over the API's database, with
synthetic telemetry on a fake clock: one to SUCCEEDED, one rolled back on a latency breach."""

from __future__ import annotations

from test_controller_builders import ADMIN_HEADERS, Fleet, policy, report

from fleet.controller.reconcile import reconcile_all, reconcile_once
from fleet.controller.rollout.actions import Notify, RecordOutcome, TargetDevices
from fleet.controller.storage import store

DEVICES = [f"dev-{i}" for i in range(4)]


class Devices:
    """Four enrolled host-cpu devices that report what their desired state says they run."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.credentials = {d: fleet.enrol(d) for d in DEVICES}
        self.seq = dict.fromkeys(DEVICES, 0)

    def desired(self, device_id: str) -> dict[str, object]:
        r = self.fleet.client.get(
            f"/v1/devices/{device_id}/desired",
            headers={"Authorization": f"Bearer {self.credentials[device_id]}"},
        )
        return dict(r.json())

    def running(self, device_id: str) -> str:
        artifact = self.desired(device_id)["artifact"]
        return str(artifact["version"]) if isinstance(artifact, dict) else "1"

    def report_all(self, at: float, **kwargs_by_version: dict[str, object]) -> None:
        self.fleet.clock.at(at)
        for device_id in DEVICES:
            version = self.running(device_id)
            self.seq[device_id] += 1
            body = report(self.seq[device_id], version, **kwargs_by_version.get(version, {}))  # type: ignore[arg-type]
            r = self.fleet.client.post(
                f"/v1/devices/{device_id}/telemetry",
                json={"reports": [body]},
                headers={"Authorization": f"Bearer {self.credentials[device_id]}"},
            )
            assert r.status_code == 200, r.text


def create_rollout(fleet: Fleet) -> str:
    """Versions 1 and 2 of ``churn`` and a rollout of 2 from 1, created but not started."""
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    r = fleet.client.post(
        "/v1/rollouts",
        json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy()},
        headers=ADMIN_HEADERS,
    )
    return str(r.json()["rollout_id"])


def start_rollout(fleet: Fleet) -> str:
    rollout_id = create_rollout(fleet)
    r = fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return rollout_id


def reconcile(fleet: Fleet, rollout_id: str, at: float) -> str:
    with fleet.app.state.sessions() as session:
        result = reconcile_once(session, rollout_id, fleet.clock.at(at), fleet.app.state.notifier)
    assert result.error is None
    return result.phase


def test_reconcile_walks_a_rollout_to_succeeded(fleet: Fleet) -> None:
    devices = Devices(fleet)
    rollout_id = start_rollout(fleet)
    assert sorted(devices.running(d) for d in DEVICES) == ["1", "1", "2", "2"]

    assert reconcile(fleet, rollout_id, 10) == "progressing"  # nothing reported yet, bake not over
    devices.report_all(20)
    assert reconcile(fleet, rollout_id, 30) == "progressing"  # data, but still baking
    assert reconcile(fleet, rollout_id, 61) == "progressing"  # stage 2 started
    assert [devices.running(d) for d in DEVICES] == ["2"] * 4
    devices.report_all(70)
    assert reconcile(fleet, rollout_id, 100) == "progressing"
    assert reconcile(fleet, rollout_id, 125) == "succeeded"
    assert reconcile(fleet, rollout_id, 200) == "succeeded"  # terminal: a pass changes nothing

    with fleet.app.state.sessions() as session:
        actions = store.all_actions(session, rollout_id)
        assert store.pending_actions(session, rollout_id) == []
    assert [type(a) for a in actions] == [
        TargetDevices,
        Notify,
        TargetDevices,
        Notify,
        RecordOutcome,
        Notify,
    ]
    outcome = actions[4]
    assert isinstance(outcome, RecordOutcome) and outcome.outcome == "succeeded"
    summary = fleet.client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS).json()
    assert summary["phase"] == "succeeded" and summary["last_error"] is None


def test_reconcile_rolls_back_on_a_latency_breach_and_retargets_every_device(fleet: Fleet) -> None:
    devices = Devices(fleet)
    rollout_id = start_rollout(fleet)
    canaries = [d for d in DEVICES if devices.running(d) == "2"]
    revisions = {d: devices.desired(d)["revision"] for d in DEVICES}

    devices.report_all(20, **{"2": {"latency_ms": 40.0}})  # budget is 5 ms
    assert reconcile(fleet, rollout_id, 30) == "rolling_back"  # no need to wait for the bake
    assert [devices.running(d) for d in DEVICES] == ["1"] * 4
    for d in canaries:
        assert devices.desired(d)["revision"] == int(str(revisions[d])) + 1
    status = fleet.client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS).json()
    assert "p95_latency" in status["reason"]

    assert reconcile(fleet, rollout_id, 35) == "rolling_back"  # canaries not back on stable yet
    devices.report_all(40)
    assert reconcile(fleet, rollout_id, 45) == "rolled_back"
    with fleet.app.state.sessions() as session:
        outcomes = [
            a for a in store.all_actions(session, rollout_id) if isinstance(a, RecordOutcome)
        ]
    assert [o.outcome for o in outcomes] == ["rolled_back"]
    assert outcomes[0].causes[0].gate == "p95_latency"


def test_a_failing_pass_becomes_status_and_the_loop_goes_on(fleet: Fleet) -> None:
    Devices(fleet)
    rollout_id = start_rollout(fleet)
    with fleet.app.state.sessions() as session:
        row = store.load_rollout(session, rollout_id)
        row.status = {**row.status, "stage": "not a number"}
        session.commit()
    with fleet.app.state.sessions() as session:
        result = reconcile_once(session, rollout_id, fleet.clock.at(10))
    assert result.error is not None and "ValidationError" in result.error
    with fleet.app.state.sessions() as session:
        assert "ValidationError" in str(store.load_rollout(session, rollout_id).last_error)
    assert reconcile_all(fleet.app.state.sessions, fleet.clock.at(11))[0].error is not None


def test_outbox_actions_left_by_a_crash_are_performed_by_the_next_pass(fleet: Fleet) -> None:
    devices = Devices(fleet)
    rollout_id = create_rollout(fleet)
    # The controller saved the start decision and died before acting on it.
    from fleet.controller.rollout.decide import start

    with fleet.app.state.sessions() as session:
        row = store.load_rollout(session, rollout_id)
        status = store.status_of(row)
        new, actions = start(status, store.observations(session, status), fleet.clock.at(1))
        store.save_decision(session, row, new, actions, fleet.clock.now)
    assert [devices.running(d) for d in DEVICES] == ["1"] * 4
    assert reconcile(fleet, rollout_id, 2) == "progressing"
    assert sorted(devices.running(d) for d in DEVICES) == ["1", "1", "2", "2"]


def test_a_first_report_landing_between_the_reads_counts_the_device_as_silent(
    fleet: Fleet,
) -> None:
    """observations() reads the devices, then their reports: a device whose first report is
    committed between the two reads has a report but no ``last_seen`` in what was read. It counts
    as silent until the next pass instead of failing the pass (once a 500 on rollout start)."""
    from sqlalchemy import update

    from fleet.controller.storage.db import DeviceRow

    devices = Devices(fleet)
    rollout_id = create_rollout(fleet)
    devices.report_all(at=1)
    with fleet.app.state.sessions() as session:
        session.execute(
            update(DeviceRow).where(DeviceRow.device_id == "dev-0").values(last_seen=None)
        )
        session.commit()
        status = store.status_of(store.load_rollout(session, rollout_id))
        seen = {d.device_id: d for d in store.observations(session, status).devices}
    assert seen["dev-0"].running_version is None and seen["dev-0"].last_seen is None
    assert [seen[d].running_version for d in DEVICES[1:]] == ["1", "1", "1"]
    assert all(seen[d].last_seen is not None for d in DEVICES[1:])
