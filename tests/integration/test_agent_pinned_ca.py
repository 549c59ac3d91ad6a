"""A real agent process against a real controller process serving TLS with a throwaway CA: the agent
pinned to that CA enrols; pinned to another CA (or to no CA, the default trust store) it refuses the
controller before sending anything, says why and exits 3, and the controller has no device and an
unused token; a device whose https controller is not on loopback does not start without its CA
pinned (exit 2, naming ``EDGELOOP_AGENT_CA_FILE``).

Why a process and not the client: what a person provisioning a device sees is the agent's exit code
and its log, and the refusal has to come from the enrolment path the agent really takes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import Controller, write_public_key
from test_controller_faults import make_ca, pem_cert, server_cert

pytestmark = pytest.mark.integration

CLS = "tls-cpu"


def run_agent(
    folder: Path, device_id: str, url: str, token: str, ca: Path | None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m fleet.agent.agent --once`` as a device runs it: settings from the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_AGENT_")}
    environ.update(
        EDGELOOP_AGENT_CONTROLLER_URL=url,
        EDGELOOP_AGENT_STATE_DIR=str(folder / device_id),
        EDGELOOP_AGENT_DEVICE_ID=device_id,
        EDGELOOP_AGENT_HARDWARE_CLASS=CLS,
        EDGELOOP_AGENT_ENROLMENT_TOKEN=token,
        EDGELOOP_AGENT_LONG_POLL_S="1",
        EDGELOOP_AGENT_PREDICT_PORT="off",
        **env,
    )
    if ca is not None:
        environ["EDGELOOP_AGENT_CA_FILE"] = str(ca)
    return subprocess.run(
        [sys.executable, "-m", "fleet.agent.agent", "--once", "--no-serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def enrolled(db_url: str) -> list[str]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as con:
        return [d for (d,) in con.execute("SELECT device_id FROM devices ORDER BY device_id")]


def test_a_real_agent_enrols_only_with_the_controllers_pinned_ca(tmp_path: Path) -> None:
    ca_key, ca = make_ca("edgeloop test CA")
    srv_key, srv = server_cert(ca_key, ca)
    ca_pem = pem_cert(ca, tmp_path / "ca.pem")
    cert_pem = pem_cert(srv, tmp_path / "server.pem")
    key_pem = tmp_path / "server.key"
    key_pem.write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _, other_ca = make_ca("some other CA")
    other_pem = pem_cert(other_ca, tmp_path / "other-ca.pem")
    public_key = write_public_key(Ed25519PrivateKey.generate(), tmp_path / "registry.pub.pem")
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    ctl = Controller(tmp_path, db_url, public_key, tls=(cert_pem, key_pem, ca_pem))
    ctl.start()
    agents = tmp_path / "agents"
    try:
        assert ctl.base.startswith("https://127.0.0.1:")
        token = ctl.token(CLS, uses=1)

        for device_id, ca_file, trusted in (
            ("imposter-ca", other_pem, f"the pinned CA {other_pem}"),
            ("no-ca", None, "the default trust store"),
        ):
            refused = run_agent(agents, device_id, ctl.base, token, ca_file)
            log = refused.stdout + refused.stderr
            assert refused.returncode == 3, log
            assert f"refusing the controller at {ctl.base}/" in log, log
            assert f"does not verify against {trusted}" in log, log
            assert "nothing was sent" in log and "EDGELOOP_AGENT_CA_FILE" in log, log
            assert not (agents / device_id / "credential.json").exists()
        assert enrolled(db_url) == []  # no device, and the one-use token is still unused

        ok = run_agent(agents, "pinned-0", ctl.base, token, ca_pem)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert enrolled(db_url) == ["pinned-0"]
        assert (agents / "pinned-0" / "credential.json").is_file()
    finally:
        ctl.kill(signal.SIGTERM)

    # off loopback, an https controller without a pinned CA: the device does not start at all
    unpinned = run_agent(
        agents, "remote-0", "https://fleet.invalid:8700", "t", None,
        EDGELOOP_AGENT_PUBLIC_KEY_FILE=str(public_key),
    )  # fmt: skip
    log = unpinned.stdout + unpinned.stderr
    assert unpinned.returncode == 2, log
    assert "EDGELOOP_AGENT_CA_FILE is not set" in log, log
    assert not (agents / "remote-0").exists()
