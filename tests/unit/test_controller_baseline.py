"""Baselines: a model's version outside any rollout, for enrolled and newly enrolled devices."""

from __future__ import annotations

from test_controller_builders import ADMIN_HEADERS, Fleet


def desired(fleet: Fleet, device: str, credential: str) -> dict[str, object]:
    r = fleet.client.get(
        f"/v1/devices/{device}/desired", headers={"Authorization": f"Bearer {credential}"}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_baseline_targets_devices_of_classes_with_a_variant_and_new_enrolments(
    fleet: Fleet,
) -> None:
    cpu = fleet.enrol("cpu-1", "host-cpu")
    arm = fleet.enrol("arm-1", "rpi4-arm64")
    fleet.artifact("churn", "1", "host-cpu")
    r = fleet.client.put("/v1/baselines/churn", json={"version": "1"}, headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json()["devices_changed"] == 1
    state = desired(fleet, "cpu-1", cpu)
    assert state["artifact"]["version"] == "1" and state["revision"] == 1  # type: ignore[index]
    assert desired(fleet, "arm-1", arm)["artifact"] is None  # no variant for its class
    late = fleet.enrol("cpu-2", "host-cpu")
    assert desired(fleet, "cpu-2", late)["artifact"]["version"] == "1"  # type: ignore[index]
    again = fleet.client.put("/v1/baselines/churn", json={"version": "1"}, headers=ADMIN_HEADERS)
    assert again.json()["devices_changed"] == 0  # idempotent


def test_baseline_needs_the_admin_token(fleet: Fleet) -> None:
    assert fleet.client.put("/v1/baselines/churn", json={"version": "1"}).status_code == 401
