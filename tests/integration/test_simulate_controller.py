"""The fleet simulator against a real controller process (uvicorn, SQLite in tmp): 20 devices in two
classes enrol, converge on v1, take v2 through a staged rollout that succeeds, and roll a latency-
regressed v3 (on edge-small) back automatically; a corrupted-download fault is rejected."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from servers import free_port, stop_group, wait_healthy

from fleet.agent.signature import file_sha256, signed_message
from fleet.controller import db, store
from fleet.simulate import FaultPlan, FaultWindow, Simulation, make_regressed_variant

pytestmark = pytest.mark.integration

ADMIN = "simulate-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CLASSES = {"host-cpu": 0.6, "edge-small": 0.4}
SCALE = {"host-cpu": 1.0, "edge-small": 20.0}
POLICY = {
    "cohorts": {"host-cpu": {"p95_latency_ms": 50}, "edge-small": {"p95_latency_ms": 5}},
    "stages": [
        {
            "fraction": f,
            "bake_s": 1.0,
            "deadline_s": 20,
            "min_confirmed_fraction": 0.8,
            "min_inferences": 50,
            "min_feedback": 20,
        }
        for f in (0.5, 1.0)
    ],
    "gates": {"max_error_rate": 0.05, "accuracy": {"delta": 0.1, "alpha": 0.05, "min_samples": 20}},
    "rollback_timeout_s": 30,
}


def write_model(path: Path, weights: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        EDGELOOP_FLEET_DB_URL=db_url,
        EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
        EDGELOOP_FLEET_PUBLIC_KEY_PATH=str(pub),
        EDGELOOP_FLEET_RECONCILE_S="0.2",
        EDGELOOP_FLEET_LONG_POLL_RECHECK_S="0.2",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "fleet.controller.app:app_from_env",
                ),
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                *("--timeout-graceful-shutdown", "1"),  # simulated long-polls end with the test
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(proc, f"{base}/v1/health", log, timeout=60)
        yield {"base": base, "key": key, "db_url": db_url, "tmp": tmp_path, "log": log}
    finally:
        stop_group(proc)


def register(c: dict[str, Any], client: httpx.Client, version: str, cls: str, path: Path) -> None:
    variant = f"{cls}-fp32"
    signature = base64.b64encode(c["key"].sign(signed_message(variant, file_sha256(path))))
    r = client.post(
        "/v1/artifacts",
        json={
            "model": "digits",
            "version": version,
            "variant": variant,
            "hardware_class": cls,
            "path": str(path),
            "signature": signature.decode(),
        },
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 200, r.text


def target_all(db_url: str, device_ids: list[str], version: str) -> None:
    """What an operator's first deployment does: point every device at ``version`` (no rollout)."""
    engine = db.make_engine(db_url)
    try:
        with db.make_sessionmaker(engine)() as session:
            store.target_devices(
                session,
                device_ids,
                model="digits",
                version=version,
                rollout_id=None,
                now=datetime.now(UTC),
            )
            session.commit()
    finally:
        engine.dispose()


def rollout(client: httpx.Client, version: str, stable: str) -> str:
    r = client.post(
        "/v1/rollouts",
        json={"model": "digits", "version": version, "stable_version": stable, "policy": POLICY},
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


def test_corrupted_downloads_are_rejected_and_devices_stay(controller: dict[str, Any]) -> None:
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 10))
    v1 = write_model(tmp / "v1.onnx", w)
    v2 = write_model(tmp / "v2.onnx", w * 1.01)
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for version, path in (("1", v1), ("2", v2)):
            register(controller, client, version, "host-cpu", path)
    field_x = rng.integers(0, 17, size=(500, 64)).astype(np.float32)
    sim = Simulation(
        controller["base"],
        ADMIN,
        devices=10,
        classes={"host-cpu": 1.0},
        field_x=field_x,
        field_y=(field_x @ w).argmax(axis=1),
        faults=FaultPlan(corrupt=FaultWindow(0.3, start_s=0.0)),
        report_interval_s=0.25,
        retry_s=0.2,
        seed=2,
    )
    try:
        ids = list(sim.result.devices)
        corrupt = sorted(sim.hit["corrupt"])
        assert len(corrupt) == 3
        sim.run_sync(
            until=lambda: all(d.enrolled for d in sim.result.devices.values()), timeout_s=15
        )
        target_all(controller["db_url"], ids, "1")
        result = sim.run_sync(duration_s=3.0)
        assert result.on("1") == sorted(set(ids) - set(corrupt))
        for d in corrupt:
            assert result.devices[d].version is None and result.devices[d].rejections >= 1
        target_all(controller["db_url"], ids, "2")  # the healthy ones move, the others still reject
        result = sim.run_sync(duration_s=3.0)
        assert result.on("2") == sorted(set(ids) - set(corrupt))
        assert all(result.devices[d].version is None for d in corrupt)
    finally:
        sim.close()
