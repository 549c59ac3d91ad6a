"""The fleet simulator against a real controller process (uvicorn, SQLite in tmp): 20 devices in two
classes enrol, converge on v1, take v2 through a staged rollout that succeeds, and roll a latency-
regressed v3 (on edge-small) back automatically; a fleet that sends no labels at all does the same on
the agreement gate (shadow comparisons on the devices). Faults: test_simulate_faults.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from builders import regressor, write_model
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import label_free_policy, target_all, two_stage_policy
from fleet_builders import register as register_signed
from servers import ADMIN, ADMIN_HEADERS, uvicorn_controller, write_public_key

from fleet.simulate import Simulation, make_regressed_variant

pytestmark = pytest.mark.integration

CLASSES = {"host-cpu": 0.6, "edge-small": 0.4}
SCALE = {"host-cpu": 1.0, "edge-small": 20.0}
POLICY = two_stage_policy({"host-cpu": 50, "edge-small": 20}, deadline_s=20, min_inferences=50)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    with uvicorn_controller(tmp_path, write_public_key(key, tmp_path / "k.pem")) as (base, db_url):
        yield {"base": base, "key": key, "db_url": db_url, "tmp": tmp_path}


def register(c: dict[str, Any], client: httpx.Client, version: str, cls: str, path: Path) -> None:
    register_signed(client, c["key"], version, cls, path)


def rollout(
    client: httpx.Client, version: str, stable: str, policy: dict[str, Any] = POLICY
) -> str:
    r = client.post(
        "/v1/rollouts",
        json={"model": "digits", "version": version, "stable_version": stable, "policy": policy},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    rollout_id = str(r.json()["rollout_id"])
    r = client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return rollout_id


def test_simulated_fleet_rolls_out_and_rolls_back(controller: dict[str, Any]) -> None:
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(3000, 64)).astype(np.float32)
    field_y = (field_x @ w).argmax(axis=1)
    v1 = write_model(tmp / "v1.onnx", w)
    v2 = write_model(tmp / "v2.onnx", w + rng.normal(0, 1e-3, size=w.shape))
    v3_slow = make_regressed_variant(v2, tmp / "v3-slow.onnx", "latency", layers=16, width=1024)
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for cls in CLASSES:
            register(controller, client, "1", cls, v1)
            register(controller, client, "2", cls, v2)
        register(controller, client, "3", "host-cpu", v2)
        register(controller, client, "3", "edge-small", v3_slow)

        sim = Simulation(
            controller["base"],
            ADMIN,
            devices=20,
            classes=CLASSES,
            field_x=field_x,
            field_y=field_y,
            feedback_rate=0.5,
            latency_scale=SCALE,
            report_interval_s=0.25,
            rows_per_report=50,
            seed=1,
        )
        try:
            ids = list(sim.result.devices)
            result = sim.run_sync(
                until=lambda: all(d.enrolled for d in sim.result.devices.values()), timeout_s=15
            )
            assert all(d.enrolled for d in result.devices.values())
            target_all(controller["db_url"], ids, "1")
            result = sim.run_sync(until=lambda: result.versions() == {"1": 20}, timeout_s=15)
            assert result.versions() == {"1": 20}
            assert sim.sessions.loads == 1  # one shared session for every device on v1

            def phase(rollout_id: str) -> str:
                r = client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS)
                return str(r.json()["phase"])

            terminal = {"succeeded", "rolled_back", "failed", "aborted"}
            r2 = rollout(client, "2", "1")
            sim.run_sync(until=lambda: phase(r2) in terminal, timeout_s=40)
            detail = client.get(f"/v1/rollouts/{r2}", headers=ADMIN_HEADERS).json()
            assert detail["phase"] == "succeeded", detail
            sim.run_sync(until=lambda: result.versions() == {"2": 20}, timeout_s=10)
            assert result.versions() == {"2": 20}

            r3 = rollout(client, "3", "2")
            sim.run_sync(until=lambda: phase(r3) in terminal, timeout_s=40)
            detail = client.get(f"/v1/rollouts/{r3}", headers=ADMIN_HEADERS).json()
            assert detail["phase"] == "rolled_back", detail
            assert "latency" in str(detail["status"]), detail["status"]
            sim.run_sync(until=lambda: result.versions() == {"2": 20}, timeout_s=10)
            assert result.versions() == {"2": 20}
            went_to_3 = {d for _, d, v in result.timeline if v == "3"}
            assert went_to_3  # the canary really ran somewhere, then came back from disk
            assert all(result.devices[d].activations_from_disk >= 1 for d in went_to_3)
            sent = sum(d.reports_sent for d in result.devices.values())
            acked = sum(d.reports_acked for d in result.devices.values())
            assert sent > 0 and acked == sent
        finally:
            sim.close()


TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}


def fleet_on_v1(
    controller: dict[str, Any],
    field_x: np.ndarray,
    devices: int,
    seed: int,
    field_y: np.ndarray | None = None,
) -> Simulation:
    """``devices`` simulated devices, enrolled and all running version 1; without ``field_y``
    they send no label, with it they label half their predictions."""
    sim = Simulation(
        controller["base"], ADMIN, devices=devices, classes=CLASSES, field_x=field_x,
        field_y=np.zeros(len(field_x), dtype=np.int64) if field_y is None else field_y,
        feedback_rate=0.0 if field_y is None else 0.5,
        report_interval_s=0.25, rows_per_report=50, seed=seed,
    )  # fmt: skip
    sim.run_sync(until=lambda: all(d.enrolled for d in sim.result.devices.values()), timeout_s=15)
    target_all(controller["db_url"], list(sim.result.devices), "1")
    sim.run_sync(until=lambda: sim.result.versions() == {"1": devices}, timeout_s=15)
    assert sim.result.versions() == {"1": devices}
    return sim


def rollout_to_the_end(
    sim: Simulation, client: httpx.Client, version: str, stable: str, policy: dict[str, Any]
) -> dict[str, Any]:
    """Start a rollout, run the fleet until it ends, and return its detail."""
    rollout_id = rollout(client, version, stable, policy)

    def detail() -> dict[str, Any]:
        return dict(client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS).json())

    sim.run_sync(until=lambda: detail()["phase"] in TERMINAL, timeout_s=60)
    return detail()


def test_a_fleet_without_labels_rolls_out_on_agreement_and_rolls_back_a_disagreeing_canary(
    controller: dict[str, Any],
) -> None:
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(3000, 64)).astype(np.float32)
    v1 = write_model(tmp / "v1.onnx", w)
    v2 = write_model(tmp / "v2.onnx", w + rng.normal(0, 1e-3, size=w.shape))
    v3_wrong = make_regressed_variant(v2, tmp / "v3-wrong.onnx", "accuracy", share=0.6)
    policy = label_free_policy({"host-cpu": 50, "edge-small": 50}, deadline_s=30)
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for cls in CLASSES:
            register(controller, client, "1", cls, v1)
            register(controller, client, "2", cls, v2)
            register(controller, client, "3", cls, v3_wrong)
        sim = fleet_on_v1(controller, field_x, devices=12, seed=2)
        try:
            done = rollout_to_the_end(sim, client, "2", "1", policy)
            assert done["phase"] == "succeeded", done["reason"]
            for cohort in done["status"]["last_check"]["cohorts"]:
                gates = {g["gate"]: g for g in cohort["gates"]}
                assert cohort["feedback"] == 0
                assert gates["accuracy"]["verdict"] == "inconclusive"
                assert gates["agreement"]["verdict"] == "pass"
                assert gates["agreement"]["samples"] >= 100
            sim.run_sync(until=lambda: sim.result.versions() == {"2": 12}, timeout_s=10)

            done = rollout_to_the_end(sim, client, "3", "2", policy)
            assert done["phase"] == "rolled_back", done["reason"]
            assert {c["gate"] for c in done["status"]["causes"]} == {"agreement"}, done["reason"]
            sim.run_sync(until=lambda: sim.result.versions() == {"2": 12}, timeout_s=10)
            assert sim.result.versions() == {"2": 12}
        finally:
            sim.close()


def test_a_regressor_is_judged_on_agreement_within_its_tolerance_and_on_its_field_error(
    controller: dict[str, Any],
) -> None:
    """Devices send target values for half their predictions: a canary as good as stable succeeds
    with the MAE gate required; one 1.0 off on every value agrees with stable within a tolerance of
    2.0 and is rolled back on its field error alone; one 5.0 off is rolled back on agreement by a
    policy that judges without targets."""
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(3)
    w = rng.normal(size=10)
    field_x = rng.normal(size=(2000, 10)).astype(np.float32)
    field_y = field_x @ w + rng.normal(0, 0.5, size=len(field_x))  # stable's MAE about 0.4
    versions = {
        "1": regressor(w),
        "2": regressor(w + rng.normal(0, 1e-3, size=w.shape)),  # as good as stable
        "3": regressor(w, bias=1.0),  # every value 1 off: the MAE about 1.1
        "4": regressor(w, bias=5.0),  # every value 5 off
    }
    policy = label_free_policy({"host-cpu": 50, "edge-small": 50}, deadline_s=30)
    policy["shadow"]["tolerance"] = 2.0
    policy["gates"]["mae"] = {"max_increase": 0.3, "alpha": 0.05, "min_samples": 50}
    for cohort in policy["cohorts"].values():
        cohort["required"] = [*cohort["required"], "mae"]
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for version, model in versions.items():
            path = tmp / f"r{version}.onnx"
            path.write_bytes(model.SerializeToString())
            for cls in CLASSES:
                register(controller, client, version, cls, path)
        sim = fleet_on_v1(controller, field_x, devices=8, seed=4, field_y=field_y)
        try:
            done = rollout_to_the_end(sim, client, "2", "1", policy)
            assert done["phase"] == "succeeded", done["reason"]
            for cohort in done["status"]["last_check"]["cohorts"]:
                gates = {g["gate"]: g for g in cohort["gates"]}
                assert gates["mae"]["verdict"] == "pass" and gates["mae"]["samples"] >= 50
                assert gates["accuracy"]["verdict"] == "inconclusive"  # no class labels
            sim.run_sync(until=lambda: sim.result.versions() == {"2": 8}, timeout_s=10)

            done = rollout_to_the_end(sim, client, "3", "2", policy)
            assert done["phase"] == "rolled_back", done["reason"]
            assert {c["gate"] for c in done["status"]["causes"]} == {"mae"}, done["reason"]
            sim.run_sync(until=lambda: sim.result.versions() == {"2": 8}, timeout_s=10)

            label_free = label_free_policy({"host-cpu": 50, "edge-small": 50}, deadline_s=30)
            label_free["shadow"]["tolerance"] = 0.5  # judged as if no target came back
            done = rollout_to_the_end(sim, client, "4", "2", label_free)
            assert done["phase"] == "rolled_back", done["reason"]
            assert {c["gate"] for c in done["status"]["causes"]} == {"agreement"}, done["reason"]
            assert sum(d.field_samples_sent for d in sim.result.devices.values()) == 0
        finally:
            sim.close()


def test_a_canary_its_devices_refuse_is_rolled_back_at_once_naming_the_refusal(
    controller: dict[str, Any],
) -> None:
    """v2's object is rewritten in the controller's artifact store after it was registered
    (signed and checked): every device refuses the bytes it downloads, says so in its next report,
    and the rollout is rolled back on the artifact gate within seconds, not at the stage's
    deadline."""
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(5)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(1000, 64)).astype(np.float32)
    v1 = write_model(tmp / "a1.onnx", w)
    v2 = write_model(tmp / "a2.onnx", w + rng.normal(0, 1e-3, size=w.shape))
    policy = label_free_policy({"host-cpu": 50, "edge-small": 50}, deadline_s=60)
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for cls in CLASSES:
            register(controller, client, "1", cls, v1)
            register(controller, client, "2", cls, v2)
        digest = hashlib.sha256(v2.read_bytes()).hexdigest()
        stored = tmp / "artifact-store" / digest[:2] / digest
        assert stored.is_file(), f"v2 is not at {stored}"
        stored.write_bytes(write_model(tmp / "tampered.onnx", w * 2).read_bytes())
        sim = fleet_on_v1(controller, field_x, devices=6, seed=6)
        try:
            done = rollout_to_the_end(sim, client, "2", "1", policy)
            assert done["phase"] == "rolled_back", done["reason"]
            causes = done["status"]["causes"]
            assert {c["gate"] for c in causes} == {"artifact"}, done["reason"]
            assert "refused 2's artifact" in causes[0]["reason"] and "sha256" in causes[0]["reason"]
            started, ended = done["status"]["history"][1]["at"], done["status"]["history"][-1]["at"]
            took = datetime.fromisoformat(ended) - datetime.fromisoformat(started)
            assert took.total_seconds() < 30, took  # not the 60 s deadline
            assert sim.result.versions() == {"1": 6}
        finally:
            sim.close()
