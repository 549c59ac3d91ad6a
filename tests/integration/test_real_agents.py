"""Real ``edgeloop agent`` processes (``fleet.simulate.agents``) against a real controller under
uvicorn, with traffic on their local ``/predict`` and no label at all: a first release, a canary that
succeeds on the agreement gate while one agent is killed half-way through its download (behind a slow
link) and resumes it after a restart, and a disagreeing canary rolled back automatically, every agent
back on the stable model from its other slot."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from builders import write_model
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import label_free_policy, register
from servers import ADMIN, ADMIN_HEADERS, uvicorn_controller, write_public_key
from tcp_proxy import SlowLink

from fleet.admin import AdminClient
from fleet.simulate import make_regressed_variant
from fleet.simulate.agents import RealAgents

pytestmark = pytest.mark.integration

MODEL, CLASS = "digits", "host-cpu"
TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}
PADDING = 3_000_000
"""Bytes of unused weights in v2, so that its download takes seconds on the slow link."""


def padded(path: Path, extra_bytes: int) -> Path:
    """The model at ``path`` with an unused initializer of ``extra_bytes``: same answers, bigger file."""
    model = onnx.load(str(path))
    padding = np.zeros(extra_bytes // 4, dtype=np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(padding, "padding"))
    onnx.save(model, str(path))
    return path


def test_real_agents_take_a_release_a_canary_resumed_after_a_kill_and_a_rollback(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(2000, 64)).astype(np.float32)
    v1 = write_model(tmp_path / "v1.onnx", w, softmax=True)
    v2 = write_model(tmp_path / "v2.onnx", w + rng.normal(0, 1e-3, size=w.shape), softmax=True)
    v2 = padded(v2, PADDING)
    v3 = make_regressed_variant(v1, tmp_path / "v3.onnx", "accuracy", share=0.6)
    policy = label_free_policy({CLASS: 1000}, deadline_s=60, min_inferences=10)
    with (
        uvicorn_controller(tmp_path, write_public_key(key, tmp_path / "k.pem")) as (base, _),
        httpx.Client(base_url=base, headers=ADMIN_HEADERS, timeout=30) as client,
        closing(AdminClient(base, ADMIN)) as admin,
    ):
        for version, path in (("1", v1), ("2", v2), ("3", v3)):
            register(client, key, version, CLASS, path, model=MODEL)
        token = admin.enrolment_token(uses=3).token
        with (
            SlowLink(base, rate=600_000) as link,
            RealAgents(
                base, token, field_x, tmp_path / "agents", controller_urls={0: link.url}
            ) as agents,
        ):
            everyone = [a.device_id for a in agents.agents]
            admin.set_baseline(MODEL, "1")  # the first release
            seen = agents.wait_for(dict.fromkeys(everyone, "1"))
            assert seen == dict.fromkeys(everyone, "1"), seen

            def rollout(version: str, stable: str) -> str:
                body = {
                    "model": MODEL, "version": version, "stable_version": stable, "policy": policy,
                }  # fmt: skip
                r = client.post("/v1/rollouts", json=body)
                assert r.status_code == 201, r.text
                rollout_id = str(r.json()["rollout_id"])
                assert client.post(f"/v1/rollouts/{rollout_id}/start").is_success
                return rollout_id

            def detail(rollout_id: str) -> dict[str, object]:
                return dict(client.get(f"/v1/rollouts/{rollout_id}").json())

            # The canary: agent-00 is killed when half of v2 has come through the slow link.
            r2 = rollout("2", "1")
            part = agents.agents[0].downloads / MODEL / "2" / f"{CLASS}-fp32.onnx.part"
            killed_at = 0
            for _ in range(600):
                if detail(r2)["phase"] in TERMINAL:
                    break
                size = part.stat().st_size if part.is_file() else 0
                if not killed_at and PADDING // 4 < size < PADDING // 2:
                    agents.kill(0)
                    killed_at = size
                    agents.start_agent(0)
                time.sleep(0.1)
            done = detail(r2)
            assert done["phase"] == "succeeded", done["reason"]
            assert killed_at, "agent-00 was never caught half-way through its download"
            resumed = [n for n in link.ranges() if n > 0]
            assert resumed and resumed[0] >= killed_at, link.ranges()
            assert agents.agents[0].starts == 2
            seen = agents.wait_for(dict.fromkeys(everyone, "2"))
            assert seen == dict.fromkeys(everyone, "2"), seen
            last = done["status"]["last_check"]["cohorts"][0]  # type: ignore[index]
            gates = {g["gate"]: g for g in last["gates"]}
            assert last["feedback"] == 0 and gates["agreement"]["verdict"] == "pass"

            # A canary that disagrees with v2 on most inputs: rolled back on agreement alone.
            r3 = rollout("3", "2")
            for _ in range(600):
                if detail(r3)["phase"] in TERMINAL:
                    break
                time.sleep(0.1)
            done = detail(r3)
            assert done["phase"] == "rolled_back", done["reason"]
            assert {c["gate"] for c in done["status"]["causes"]} == {"agreement"}  # type: ignore[index]
            seen = agents.wait_for(dict.fromkeys(everyone, "2"))
            assert seen == dict.fromkeys(everyone, "2"), seen
            assert all(a.served > 0 for a in agents.agents)
