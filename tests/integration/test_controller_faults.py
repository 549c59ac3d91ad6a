"""Bad input and faults against a real controller process (issue 4, "Bad input and faults").

Every test talks HTTP to ``python -m fleet.controller.api.serve`` in a subprocess (SQLite in tmp, one test
also on PostgreSQL), through the real agent client where a device would: credentials, a tampered
artifact, a truncated download, duplicate and absurd telemetry, a device offline mid-stage, a
controller killed with SIGKILL mid-rollout, refused rollouts, and TLS with a pinned throwaway CA.
Rollouts run on the real clock with short bake times, so "wait until" helpers poll the status.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from builders import claim, model_bytes, sign
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from servers import ADMIN_HEADERS, Controller, policy, wait_until, write_public_key

from fleet.agent.agent import Agent
from fleet.agent.client import ControllerClient
from fleet.agent.config import AgentConfig
from fleet.agent.errors import (
    ControllerCallFailed,
    Forbidden,
    InsecureTransport,
    Unauthorized,
    UntrustedController,
)
from fleet.agent.slots import Candidate, SlotManager
from fleet.agent.store import ModelStore
from fleet.agent.telemetry import TelemetryBuffer
from fleet.controller.api.serve import check_serving
from fleet.controller.errors import ControllerError as ServingRefused
from fleet.controller.settings import FleetSettings
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram
from fleet.shared.protocol import Artifact, TelemetryBatch

pytestmark = pytest.mark.integration

FEATURES, CLASSES = 64, 10
GOLDEN = np.random.default_rng(7).standard_normal((4, FEATURES)).astype(np.float32)
NO_CREDENTIALS = {"detail": "missing or invalid credentials"}


# --- builders ----------------------------------------------------------------------------------


def report(seq: int, version: str, *, buffer_id: str = "buf", **changes: Any) -> dict[str, Any]:
    hist = LatencyHistogram.of([1.0] * 200, LATENCY_BOUNDS_MS)
    body: dict[str, Any] = {
        "seq": seq,
        "buffer_id": buffer_id,
        "version": version,
        "window_start": 1.0,
        "window_end": 2.0,
        "inferences": 200,
        "errors": 0,
        "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
        "feedback": [{"predicted": 1, "label": 1 if i < 95 else 0} for i in range(100)],
    }
    body.update(changes)
    return body


def sqlite_count(db_url: str, sql: str, *args: object) -> Any:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as con:
        return con.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey
) -> Iterator[Controller]:
    root = tmp_path_factory.mktemp("controller")
    ctl = Controller(root, f"sqlite:///{root / 'fleet.db'}", write_public_key(key, root / "k.pem"))
    ctl.start()
    yield ctl
    ctl.kill(signal.SIGTERM)


# --- a fleet of reporting devices --------------------------------------------------------------


@dataclass
class Reporter:
    """Devices that long-poll (wait 0) and report telemetry FROM the version they are told to run
    (the stable ``1`` while untargeted), through the real client. Unacked reports are resent with
    the same seq, as an agent's buffer does; ``offline`` devices do nothing."""

    ctl: Controller
    credentials: dict[str, str]
    offline: set[str] = field(default_factory=set)
    accepted: dict[str, set[int]] = field(default_factory=dict)
    stored: dict[str, set[int]] = field(default_factory=dict)
    """Seqs the controller acknowledged as stored: accepted now, or a duplicate of a stored one (a
    report whose ack was lost, e.g. to a SIGKILL after the commit, comes back as a duplicate)."""
    duplicates: int = 0
    seq: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def running(self, client: ControllerClient, device: str) -> str:
        desired = client.desired(device, self.credentials[device], None, 0)
        return desired.artifact.version if desired.artifact else "1"

    def tick(self, client: ControllerClient) -> None:
        for device, credential in self.credentials.items():
            if device in self.offline:
                continue
            pending = self.unacked.setdefault(device, [])
            try:
                version = self.running(client, device)
                self.seq[device] = self.seq.get(device, 0) + 1
                pending.append(report(self.seq[device], version, buffer_id=device))
                batch = TelemetryBatch.model_validate({"reports": pending})
                ack = client.send_telemetry(device, credential, batch)
            except ControllerCallFailed:
                continue  # offline or restarting: keep the reports, resend them
            self.accepted.setdefault(device, set()).update(ack.accepted)
            self.stored.setdefault(device, set()).update(ack.accepted, ack.duplicates)
            self.duplicates += len(ack.duplicates)
            pending.clear()

    def run(self) -> None:
        with self.ctl.client(timeout=2) as client:
            while not self.stop.is_set():
                self.tick(client)
                self.stop.wait(0.3)

    def __enter__(self) -> Reporter:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


def desired_versions(ctl: Controller, credentials: dict[str, str]) -> dict[str, tuple[int, str]]:
    with ctl.client() as client:
        out = {}
        for device, credential in credentials.items():
            d = client.desired(device, credential, None, 0)
            out[device] = (d.revision, d.artifact.version if d.artifact else "1")
        return out


def start_rollout(ctl: Controller, model: str, cls: str, key: Ed25519PrivateKey, **kw: Any) -> str:
    for version in ("1", "2"):
        data = model_bytes(int(version))
        ctl.register(
            model, version, cls, data, sign(key, f"{cls}-int8", data, model=model, version=version)
        )
    r = ctl.rollout(model, "2", cls, **kw)
    assert r.status_code == 201, r.text
    rollout_id = str(r.json()["rollout_id"])
    assert ctl.command(rollout_id, "start")["phase"] == "progressing"
    return rollout_id


# --- credentials -------------------------------------------------------------------------------


def test_device_endpoints_refuse_missing_wrong_and_foreign_credentials(
    controller: Controller, key: Ed25519PrivateKey
) -> None:
    cls = "auth-cpu"
    a, b = controller.enrol("auth-a", cls), controller.enrol("auth-b", cls)
    data = model_bytes(1)
    controller.register(
        "authm", "1", cls, data, sign(key, f"{cls}-int8", data, model="authm", version="1")
    )
    controller.register(
        "authm",
        "1",
        "other-cpu",
        data,
        sign(key, "other-cpu-int8", data, model="authm", version="1"),
    )
    batch = {"reports": [report(1, "1")]}
    endpoints: list[tuple[str, str, dict[str, Any]]] = []
    for device in ("auth-a", "no-such-device"):
        endpoints += [
            ("GET", f"/v1/devices/{device}/desired", {}),
            ("POST", f"/v1/devices/{device}/telemetry", {"json": batch}),
        ]
    endpoints.append(("GET", f"/v1/artifacts/authm/1/{cls}-int8", {}))
    for method, path, kwargs in endpoints:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {a}"}):
            r = httpx.request(method, controller.base + path, headers=headers, **kwargs, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == NO_CREDENTIALS, (path, r.text)  # same answer: existence not leaked
            assert r.headers["www-authenticate"] == "Bearer"
    # a device's credential is no admin token
    r = httpx.post(
        f"{controller.base}/v1/enrolment-tokens",
        headers={"Authorization": f"Bearer {a}"},
        json={},
        timeout=30,
    )
    assert r.status_code == 401
    # a's credential on b's paths (and on a path that does not exist): 403, the same body, nothing of b
    for device in ("auth-b", "no-such-device"):
        paths: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "desired", {}),
            ("POST", "telemetry", {"json": batch}),
        ]
        for method, suffix, kwargs in paths:
            r = httpx.request(
                method,
                f"{controller.base}/v1/devices/{device}/{suffix}",
                headers={"Authorization": f"Bearer {a}"},
                **kwargs,
                timeout=30,
            )
            assert r.status_code == 403, r.text
            assert r.json() == {"detail": "not this device's resource"}
    # another class's variant looks exactly like a missing one
    own = httpx.get(
        f"{controller.base}/v1/artifacts/authm/1/other-cpu-int8",
        headers={"Authorization": f"Bearer {a}"},
        timeout=30,
    )
    missing = httpx.get(
        f"{controller.base}/v1/artifacts/authm/9/other-cpu-int8",
        headers={"Authorization": f"Bearer {a}"},
        timeout=30,
    )
    assert own.status_code == missing.status_code == 404 and own.json() == missing.json()
    # the agent's client turns these into typed errors
    with controller.client() as client:
        with pytest.raises(Forbidden):
            client.desired("auth-b", a, None, 0)
        with pytest.raises(Unauthorized):
            client.desired("auth-a", "not-a-credential", None, 0)
        assert client.desired("auth-b", b, None, 0).device_id == "auth-b"
    assert sqlite_count(controller.db_url, "select count(*) from telemetry_reports") == [(0,)]


# --- artifacts ---------------------------------------------------------------------------------


def test_tampered_artifact_is_rejected_and_the_device_keeps_its_model(
    controller: Controller, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    cls, model, variant = "tamper-cpu", "tamperm", "tamper-cpu-int8"
    good_v1 = model_bytes(1)
    controller.register(
        model, "1", cls, good_v1, sign(key, variant, good_v1, model=model, version="1")
    )
    v2 = model_bytes(2)
    tampered = v2[:-1] + bytes([v2[-1] ^ 1])  # signed before the flip
    signed_v2 = claim(key, variant, v2, model=model, version="2", hardware_class=cls)
    for query in (signed_v2, {**signed_v2, "sha256": hashlib.sha256(tampered).hexdigest()}):
        refused = httpx.post(
            f"{controller.base}/v1/artifacts", params=query, content=tampered,
            headers=ADMIN_HEADERS, timeout=30,
        )  # fmt: skip
        assert refused.status_code == 422, refused.text  # the controller checks what it is handed
        assert "nothing was stored" in refused.text
    assert "the signature does not verify for tamperm version 2" in refused.text
    assert controller.rollout(model, "2", cls).status_code != 201  # nothing was stored
    # registered as signed, then rewritten in the controller's store: the device catches it
    controller.register(model, "2", cls, v2, sign(key, variant, v2, model=model, version="2"))
    sha = hashlib.sha256(v2).hexdigest()
    (controller.artifact_dir / sha[:2] / sha).write_bytes(tampered)
    # the device was provisioned with v1 (it is on disk and serving)
    events: list[tuple[str, ...]] = []
    public_pem = controller.public_key.read_bytes()
    slots = SlotManager(ModelStore(tmp_path), public_pem, GOLDEN, CLASSES, events=events.append)
    factory = tmp_path / "factory-v1.onnx"
    factory.write_bytes(good_v1)
    installed = slots.install(
        Candidate(
            model,
            "1",
            variant,
            factory,
            hashlib.sha256(good_v1).hexdigest(),
            sign(key, variant, good_v1, model=model, version="1"),
            1,
        )
    )
    assert installed.ok
    config = AgentConfig(
        controller_url=controller.base,
        state_dir=tmp_path,
        device_id="tamper-0",
        hardware_class=cls,
        enrolment_token=controller.token(cls, 1),
        predict_port=None,
        long_poll_s=1.0,
        backoff_jitter=0,
    )
    client = controller.client()
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 100, durable=False)
    agent = Agent(
        config, client, slots, buffer, time.monotonic, lambda _s: None, events=events.append
    )
    agent.run_once()  # enrols; desired: nothing yet
    r = controller.rollout(model, "2", cls)
    assert r.status_code == 201, r.text
    controller.command(r.json()["rollout_id"], "start")
    agent.run_once()
    assert slots.active is not None and slots.active.version == "1"
    assert agent.status.last_rejection and "sha256" in agent.status.last_rejection
    assert ("download", "2") in events
    assert any(e[:2] == ("reject", "2") for e in events), events
    assert slots.predict(GOLDEN[:1]).ref.version == "1"  # still serving its model
    client.close()


def test_truncated_download_resumes_with_range(
    controller: Controller, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    cls = "dl-cpu"
    credential = controller.enrol("dl-0", cls)
    data = os.urandom(300_000)
    controller.register(
        "dlm", "1", cls, data, sign(key, f"{cls}-int8", data, model="dlm", version="1")
    )
    artifact = Artifact(
        model="dlm",
        version="1",
        variant=f"{cls}-int8",
        sha256=hashlib.sha256(data).hexdigest(),
        signature="unused",
        release=1,
        size_bytes=len(data),
        url=f"/v1/artifacts/dlm/1/{cls}-int8",
    )
    ranges: list[str | None] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            ranges.append(request.headers.get("range"))
            return super().handle_request(request)

    dest = tmp_path / "part.onnx"
    dest.write_bytes(data[:123_456])  # the connection dropped here last time
    with controller.client(transport=Recording()) as client:
        client.download(artifact, dest, credential)
    assert dest.read_bytes() == data
    assert ranges == ["bytes=123456-"]
    # and the controller answers ranges and ETags itself
    headers = {"Authorization": f"Bearer {credential}"}
    r = httpx.get(
        controller.base + artifact.url, headers={**headers, "Range": "bytes=1000-"}, timeout=30
    )
    assert r.status_code == 206 and r.content == data[1000:]
    etag = r.headers["etag"]
    r = httpx.get(
        controller.base + artifact.url, headers={**headers, "If-None-Match": etag}, timeout=30
    )
    assert r.status_code == 304


# --- telemetry ---------------------------------------------------------------------------------


def test_duplicate_and_out_of_order_telemetry_is_idempotent_and_absurd_values_are_422(
    controller: Controller,
) -> None:
    cls = "tele-cpu"
    credential = controller.enrol("tele-0", cls)

    def batch(*reports: dict[str, Any]) -> TelemetryBatch:
        return TelemetryBatch.model_validate({"reports": list(reports)})

    with controller.client() as client:
        ack = client.send_telemetry(
            "tele-0", credential, batch(*(report(s, "1") for s in (3, 1, 2)))
        )
        assert (ack.accepted, ack.duplicates) == ([3, 1, 2], [])
        ack = client.send_telemetry(
            "tele-0", credential, batch(*(report(s, "1") for s in (2, 4, 3)))
        )
        assert (ack.accepted, ack.duplicates) == ([4], [2, 3])
        ack = client.send_telemetry("tele-0", credential, batch(report(5, "1"), report(5, "1")))
        assert (ack.accepted, ack.duplicates) == ([5], [5])
        # the same seq from another buffer (the agent's buffer was reset) is a different report
        ack = client.send_telemetry("tele-0", credential, batch(report(1, "1", buffer_id="new")))
        assert ack.accepted == [1]
    hist = LatencyHistogram.of([1.0] * 10, LATENCY_BOUNDS_MS)
    absurd: list[dict[str, Any]] = [
        {"inferences": 10**12},
        {"errors": 201},
        {"inferences": -1},
        {"seq": 0},
        {"window_start": 5.0, "window_end": 1.0},
        {"latency_ms": {"bounds_ms": [1.0, 2.0], "counts": [1, 2, 3]}},
        {"latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": [-1, *hist.counts[1:]]}},
        {"feedback": [{"predicted": -3, "label": 1}]},
        {"version": "../../etc/passwd"},
        {"inferences": "many"},
    ]
    url = f"{controller.base}/v1/devices/tele-0/telemetry"
    headers = {"Authorization": f"Bearer {credential}"}
    for seq, change in enumerate(absurd, start=100):
        body = {"reports": [report(seq, "1") | change]}
        r = httpx.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 422, (change, r.text)
    r = httpx.post(
        url, json={"reports": [report(i, "1") for i in range(1, 502)]}, headers=headers, timeout=30
    )
    assert r.status_code == 422
    r = httpx.post(
        url,
        content=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422
    rows = sqlite_count(
        controller.db_url,
        "select buffer_id, seq from telemetry_reports where device_id = ? order by buffer_id, seq",
        "tele-0",
    )
    assert rows == [("buf", 1), ("buf", 2), ("buf", 3), ("buf", 4), ("buf", 5), ("new", 1)]


# --- rollouts: refusals, silence, restarts -----------------------------------------------------


def test_rollout_refusals_name_the_reason_and_a_second_one_needs_supersede(
    controller: Controller, key: Ed25519PrivateKey
) -> None:
    cls, model = "refuse-cpu", "refusem"
    for version in ("1", "3", "4"):
        data = model_bytes(int(version))
        controller.register(
            model, version, cls, data, sign(key, f"{cls}-int8", data, model=model, version=version)
        )
    controller.register(model, "2", cls, model_bytes(2), None)  # never signed
    r = controller.rollout(model, "2", cls)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == f"{model} 2: no signature on the variant for {cls}"
    two_classes = policy(cls)
    two_classes["cohorts"]["refuse-arm"] = {"p95_latency_ms": 80}
    r = controller.rollout(model, "3", cls, policy=two_classes)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == f"{model} 3: no variant for refuse-arm"
    r = controller.rollout(model, "3", cls)
    assert r.status_code == 201, r.text
    first = r.json()["rollout_id"]
    r = controller.rollout(model, "4", cls)
    assert r.status_code == 409, r.text
    assert first in r.json()["reason"] and "active" in r.json()["reason"]
    assert controller.status(first)["phase"] == "pending"  # the refusal changed nothing
    r = controller.rollout(model, "4", cls, supersede=True)
    assert r.status_code == 201, r.text
    superseded = controller.status(first)
    assert superseded["phase"] not in ("pending", "progressing", "paused")
    assert r.json()["rollout_id"] in (superseded["reason"] or "")


def test_device_offline_mid_stage_is_not_success_and_converges_after_reconnect(
    controller: Controller, key: Ed25519PrivateKey
) -> None:
    cls = "off-cpu"
    creds = {f"off-{i}": controller.enrol(f"off-{i}", cls) for i in range(4)}
    rollout_id = start_rollout(
        controller,
        "offm",
        cls,
        key,
        policy=policy(cls, bake_s=1.0, deadline_s=3.0, on_inconclusive="pause"),
    )
    targeted = sorted(d for d, (_, v) in desired_versions(controller, creds).items() if v == "2")
    assert len(targeted) == 2
    silent = targeted[1]
    with Reporter(controller, creds, offline={silent}) as fleet:
        status = wait_until(
            "the stage to pause on silence",
            lambda: (s := controller.status(rollout_id))["phase"] != "progressing" and s,
        )
        assert status["phase"] == "paused", status
        assert silent in status["reason"] and targeted[0] not in status["reason"], status["reason"]
        assert status["status"]["stage"] == 0  # silence did not advance the stage
        fleet.offline.clear()  # it reconnects: long-polls, gets v2, reports from v2
        wait_until("the silent device to report", lambda: fleet.accepted.get(silent))
        controller.command(rollout_id, "resume")
        final = wait_until(
            "the rollout to end",
            lambda: (s := controller.status(rollout_id))["phase"] not in ("progressing",) and s,
        )
    assert final["phase"] == "succeeded", final
    assert {v for _, v in desired_versions(controller, creds).values()} == {"2"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return str(request.getfixturevalue("postgres_db"))


def test_sigkill_mid_rollout_resumes_without_losing_or_double_counting(
    db_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cls, model = "kill-cpu", "killm"
    ctl = Controller(tmp_path, db_url, write_public_key(key, tmp_path / "k.pem")).start()
    try:
        creds = {f"kill-{i}": ctl.enrol(f"kill-{i}", cls) for i in range(4)}
        rollout_id = start_rollout(ctl, model, cls, key, policy=policy(cls, bake_s=2.0))
        before = desired_versions(ctl, creds)
        assert sorted(v for _, v in before.values()) == ["1", "1", "2", "2"]
        with Reporter(ctl, creds) as fleet:
            wait_until("telemetry from every device", lambda: len(fleet.accepted) == 4)
            persisted = ctl.status(rollout_id)
            ctl.kill(signal.SIGKILL)  # mid-stage: no shutdown, no flush, reports in flight
            time.sleep(0.5)
            ctl.start()
            desired = desired_versions(ctl, creds)  # first: the stage can only move on after it
            resumed = ctl.status(rollout_id)
            assert resumed["phase"] == "progressing"
            assert resumed["status"]["stage"] >= persisted["status"]["stage"]
            assert desired == before or resumed["status"]["stage"] > 0
            final = wait_until(
                "the rollout to end",
                lambda: (s := ctl.status(rollout_id))["phase"] != "progressing" and s,
                timeout=30,
            )
        assert final["phase"] == "succeeded", final
        after = desired_versions(ctl, creds)
        assert after == {d: (1, "2") for d in creds}, after  # each device targeted exactly once
        stored = ctl.admin("GET", "/v1/rollouts").json()
        assert [r["rollout_id"] for r in stored] == [rollout_id]
        counts = rows_per_device(db_url)
        assert all(not pending for pending in fleet.unacked.values())
        # every report each device made is stored exactly once, whether its ack got through or not
        made = {d: set(range(1, fleet.seq[d] + 1)) for d in creds}
        assert fleet.stored == made, (fleet.stored, made)
        assert counts == {d: len(made[d]) for d in creds}, (counts, made)
    finally:
        ctl.kill(signal.SIGTERM)


def rows_per_device(db_url: str) -> dict[str, int]:
    sql = "select device_id, count(*) from telemetry_reports group by device_id"
    if db_url.startswith("sqlite"):
        return dict(sqlite_count(db_url, sql))
    import psycopg

    with psycopg.connect(db_url) as con:
        return dict(con.execute(sql).fetchall())


# --- TLS ---------------------------------------------------------------------------------------


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, cert


def server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_with_a_pinned_ca_and_plain_http_refused_off_loopback(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
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
    ctl = Controller(
        tmp_path,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        write_public_key(key, tmp_path / "k.pem"),
        tls=(cert_pem, key_pem, ca_pem),
    )
    ctl.start()
    try:
        assert ctl.base.startswith("https://")
        with ControllerClient(ctl.base, verify=ca_pem) as client:
            enrolled = client.enrol(ctl.token("tls-cpu", 1), "tls-0", "tls-cpu")
            assert client.desired("tls-0", enrolled.credential, None, 0).revision == 0
        with (
            ControllerClient(ctl.base, verify=other_pem) as client,
            pytest.raises(UntrustedController, match="does not verify against the pinned CA"),
        ):
            client.desired("tls-0", enrolled.credential, None, 0)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nowhere
            httpx.get(f"http://127.0.0.1:{ctl.port}/v1/health", timeout=5)
    finally:
        ctl.kill(signal.SIGTERM)
    with pytest.raises(InsecureTransport, match="in the clear"):
        ControllerClient("http://192.0.2.10:8700")
    ControllerClient("http://192.0.2.10:8700", allow_insecure=True).close()
    # and the controller refuses to listen in the clear off loopback
    with pytest.raises(ServingRefused, match="refusing plain HTTP"):
        check_serving(FleetSettings(host="0.0.0.0"))
    check_serving(FleetSettings(host="0.0.0.0", allow_plain_http=True))
    check_serving(FleetSettings(host="0.0.0.0", tls_certfile=cert_pem, tls_keyfile=key_pem))
    with pytest.raises(ServingRefused, match="both"):
        check_serving(FleetSettings(tls_certfile=cert_pem))
