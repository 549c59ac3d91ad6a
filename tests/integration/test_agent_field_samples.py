"""A real edge agent (``fleet.agent.agent.build``) against a real controller under uvicorn: a
prediction served on the local ``/predict`` whose label comes back on ``/label`` reaches the
controller as a labelled field sample, which the admin API hands to the training side."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import register, target_all
from servers import ADMIN_HEADERS, uvicorn_controller, write_public_key
from test_controller_faults import model_bytes

from fleet.agent.agent import PredictServer, build
from fleet.agent.config import AgentConfig

pytestmark = pytest.mark.integration

MODEL, DEVICE = "digits", "field-0"


def test_a_labelled_prediction_reaches_the_controller_as_a_field_sample(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    rows = np.random.default_rng(1).integers(0, 17, size=(3, 64)).astype(float)
    with uvicorn_controller(tmp_path, write_public_key(key, tmp_path / "k.pem")) as (base, db_url):
        admin = httpx.Client(base_url=base, headers=ADMIN_HEADERS, timeout=30)
        model = tmp_path / "v1.onnx"
        model.write_bytes(model_bytes(1))
        register(admin, key, "1", "host-cpu", model, model=MODEL)
        token = admin.post("/v1/enrolment-tokens", json={"uses": 1}).json()["token"]
        config = AgentConfig(
            controller_url=base,
            state_dir=tmp_path / "agent",
            device_id=DEVICE,
            enrolment_token=token,  # type: ignore[arg-type]
            predict_port=None,
            long_poll_s=0.5,
        )
        agent, client = build(config, stop=threading.Event())
        server = PredictServer(agent.slots, port=0).start()
        try:
            target_all(db_url, [DEVICE], "1", model=MODEL)
            agent.run_once()
            assert agent.slots.active is not None and agent.slots.active.version == "1"
            local = f"http://{server.address[0]}:{server.address[1]}"
            served = httpx.post(f"{local}/predict", json={"inputs": rows.tolist()}).json()
            for pid, label in zip(served["ids"][:2], (4, 7), strict=True):
                r = httpx.post(f"{local}/label", json={"prediction_id": pid, "label": label})
                assert r.json() == {"recorded": True}
            assert agent.run_once() == 0
            page = admin.get("/v1/field-samples").json()
        finally:
            server.stop()
            agent.buffer.close()
            if agent.field_buffer is not None:
                agent.field_buffer.close()
            client.close()
            admin.close()
    assert agent.status.field_samples_sent == 2
    samples = page["samples"]
    assert [(s["device_id"], s["model"], s["version"]) for s in samples] == [
        (DEVICE, MODEL, "1")
    ] * 2
    assert [s["label"] for s in samples] == [4, 7]
    assert [s["predicted"] for s in samples] == served["predicted"][:2]
    assert np.allclose([s["features"] for s in samples], rows[:2])
