"""The artifact store unreachable in the middle of a rollout: real ``edgeloop agent`` processes on a
real controller whose artifacts live in a real S3-speaking server (moto's standalone server, see
``tests/s3_server.py``), which is killed after the stable version reached every device and before the
canary starts.

Every download of the canary is answered 503 by the controller; the agents keep serving the stable
model; the stage ends at its deadline without a verdict and the rollout fails, never succeeds, with a
reason that names the store and its error for each device.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
from builders import write_model
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import label_free_policy, register
from s3_server import moto_s3
from servers import ADMIN, ADMIN_HEADERS, Controller, write_public_key

from fleet.admin import AdminClient
from fleet.simulate.agents import RealAgents

pytestmark = pytest.mark.integration

MODEL, CLASS = "outage", "host-cpu"
TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}


def test_a_rollout_whose_store_goes_away_fails_naming_it_and_devices_keep_their_model(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(500, 64)).astype(np.float32)
    v1 = write_model(tmp_path / "v1.onnx", w, softmax=True)
    v2 = write_model(tmp_path / "v2.onnx", w + rng.normal(0, 1e-3, size=w.shape), softmax=True)
    policy = label_free_policy({CLASS: 1000}, deadline_s=8, min_inferences=10)
    with moto_s3(tmp_path) as s3:
        controller = Controller(
            tmp_path,
            f"sqlite:///{tmp_path / 'fleet.db'}",
            write_public_key(key, tmp_path / "k.pem"),
            env=s3.controller_env(),
        ).start()
        try:
            with (
                httpx.Client(base_url=controller.base, headers=ADMIN_HEADERS, timeout=30) as client,
                closing(AdminClient(controller.base, ADMIN)) as admin,
            ):
                for version, path in (("1", v1), ("2", v2)):
                    register(client, key, version, CLASS, path, model=MODEL)
                token = admin.enrolment_token(uses=2).token
                with RealAgents(
                    controller.base, token, field_x, tmp_path / "agents", count=2
                ) as agents:
                    everyone = [a.device_id for a in agents.agents]
                    admin.set_baseline(MODEL, "1")
                    seen = agents.wait_for(dict.fromkeys(everyone, "1"))
                    assert seen == dict.fromkeys(everyone, "1"), seen

                    s3.stop()  # the bucket is gone: every read of the store now fails
                    body = {
                        "model": MODEL, "version": "2", "stable_version": "1", "policy": policy,
                    }  # fmt: skip
                    r = client.post("/v1/rollouts", json=body)
                    assert r.status_code == 201, r.text
                    rollout_id = str(r.json()["rollout_id"])
                    assert client.post(f"/v1/rollouts/{rollout_id}/start").is_success
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        done = client.get(f"/v1/rollouts/{rollout_id}").json()
                        if done["phase"] in TERMINAL:
                            break
                        time.sleep(0.5)
                    assert done["phase"] == "failed", done["reason"]
                    [failing] = [
                        t["reason"]
                        for t in done["status"]["history"]
                        if t["to_phase"] == "rolling_back"
                    ]
                    reason = str(failing)
                    assert "silence is not success" in reason, reason
                    assert "could not serve its download" in reason, reason
                    assert s3.bucket in reason, reason  # the store, by name
                    # every agent still serves the model it had: none was left without one
                    seen = agents.wait_for(dict.fromkeys(everyone, "1"))
                    assert seen == dict.fromkeys(everyone, "1"), seen
                    assert all(a.served > 0 for a in agents.agents)
        finally:
            controller.kill()
