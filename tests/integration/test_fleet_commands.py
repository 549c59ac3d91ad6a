"""The fleet commands a user types after `make demo`, as real CLI processes against a real controller:
every command finds the controller and its admin token where the demo recorded them (no --url, no
token in the environment); enrolment tokens, pause, resume and abort; and the one-line errors when
the controller is not there or the token cannot be found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import register, two_stage_policy
from servers import ADMIN, ADMIN_HEADERS, REPO, uvicorn_controller, write_public_key

from edgeloop.core import fleet_address
from edgeloop.core.settings import Settings

pytestmark = pytest.mark.integration


def edgeloop(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP_", "PREFECT_"))}
    env.update(EDGELOOP_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_commands_find_the_recorded_controller_and_token(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    home = tmp_path / "home"
    settings = Settings(home=home)
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN + "\n")
    with (
        uvicorn_controller(tmp_path, write_public_key(key, tmp_path / "k.pem")) as (base, _),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        fleet_address.record(settings, base, token_file, "edgeloop fleet demo")

        made = edgeloop(home, "fleet", "token", "create", "--uses", "2", "--class", "host-cpu")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert f"EDGELOOP_AGENT_CONTROLLER_URL={base}" in made.stderr
        for i in range(2):
            body = {"token": token, "device_id": f"dev-{i}", "hardware_class": "host-cpu"}
            assert client.post("/v1/enrol", json=body).status_code == 200
        third = {"token": token, "device_id": "dev-2", "hardware_class": "host-cpu"}
        assert client.post("/v1/enrol", json=third).status_code != 200  # two uses only

        made = edgeloop(home, "fleet", "token", "create", "--uses", "3", "--device-prefix", "cam-")
        assert made.returncode == 0, made.stderr
        prefixed = {"token": made.stdout.strip(), "hardware_class": "host-cpu"}
        assert (
            client.post("/v1/enrol", json={**prefixed, "device_id": "kiosk-1"}).status_code == 401
        )
        assert client.post("/v1/enrol", json={**prefixed, "device_id": "cam-1"}).status_code == 200
        listed = edgeloop(home, "fleet", "token", "list")
        assert listed.returncode == 0 and "cam-" in listed.stdout, listed.stderr
        [live] = client.get("/v1/enrolment-tokens", headers=ADMIN_HEADERS).json()
        assert live["uses_left"] == 2  # the refused id spent no use: it never matched the token
        revoked = edgeloop(home, "fleet", "token", "revoke", str(live["token_id"]))
        assert revoked.returncode == 0, revoked.stderr
        assert client.post("/v1/enrol", json={**prefixed, "device_id": "cam-2"}).status_code == 401
        assert client.get("/v1/enrolment-tokens", headers=ADMIN_HEADERS).json() == []
        unknown = edgeloop(home, "fleet", "token", "revoke", "424242")
        assert unknown.returncode == 1 and "no enrolment token 424242" in unknown.stderr

        for version in ("1", "2"):
            register(client, key, version, "host-cpu", tmp_path / "k.pem")
        policy = two_stage_policy({"host-cpu": 50})
        body = {"model": "digits", "version": "2", "stable_version": "1", "policy": policy}
        created = client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
        rollout_id = created.json()["rollout_id"]
        assert client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success

        paused = edgeloop(home, "rollout", "pause", rollout_id, "--reason", "a look first")
        assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
        resumed = edgeloop(home, "rollout", "resume", rollout_id)
        assert resumed.returncode == 0 and "progressing" in resumed.stdout, resumed.stderr
        again = edgeloop(home, "rollout", "resume", rollout_id)
        assert again.returncode == 1 and "rollout status" in again.stderr  # not paused
        aborted = edgeloop(home, "rollout", "abort", rollout_id)
        assert aborted.returncode == 0 and "rolling_back" in aborted.stdout, aborted.stderr
        status = edgeloop(home, "rollout", "status")
        assert status.returncode == 0 and rollout_id in status.stdout, status.stderr

        token_file.unlink()
        missing = edgeloop(home, "rollout", "status")
        assert missing.returncode == 1
        assert "EDGELOOP_FLEET_ADMIN_TOKEN" in missing.stderr and str(token_file) in missing.stderr

    token_file.write_text(ADMIN + "\n")
    gone = edgeloop(home, "rollout", "status")  # the controller stopped with the block
    assert gone.returncode == 1
    assert f"tried {base}" in gone.stderr and "fleet.json (edgeloop fleet demo)" in gone.stderr
