"""fleet.agent.agent: the loop against the fake controller, with real ONNX models and signatures.

Models are tiny MatMul+Softmax graphs (64 -> 10) signed by a throwaway ed25519 key, built as
tests/unit/test_agent_slots.py builds them. Each test asserts the exact sequence of calls the
controller saw and of steps the agent and its slots went through (STYLE rule 12).
"""

from __future__ import annotations

import hashlib
import json
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from builders import model_bytes, release_of, sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.agent.agent import Agent, AgentPhase, PredictServer, field_sample_sink
from fleet.agent.client import ControllerClient
from fleet.agent.config import AgentConfig
from fleet.agent.fake_controller import FakeController
from fleet.agent.slots import SlotManager
from fleet.agent.store import ArtifactRef, ModelStore
from fleet.agent.telemetry import TelemetryBuffer
from fleet.shared.protocol import Artifact, TelemetryBatch, TelemetryReport

FEATURES, CLASSES = 64, 10
MODEL, VARIANT, DEVICE = "digits", "int8", "dev-1"
GOLDEN = np.random.default_rng(42).standard_normal((8, FEATURES)).astype(np.float32)
Event = tuple[str, ...]


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def publish(
    fake: FakeController, key: Ed25519PrivateKey, version: str, *, tamper: bool = False
) -> Artifact:
    """Sign ``version``'s model; ``tamper`` flips a byte after signing (the sha256 still matches
    what is served, so only the signature catches it)."""
    data = model_bytes(int(version.lstrip("v")))
    signature = sign(key, VARIANT, data, model=MODEL, version=version)
    if tamper:
        data = data[:-1] + bytes([data[-1] ^ 1])
    return fake.publish(
        MODEL, version, VARIANT, data, sha256=hashlib.sha256(data).hexdigest(),
        signature=signature, release=release_of(version),
    )  # fmt: skip


@dataclass
class Device:
    agent: Agent
    fake: FakeController
    events: list[Event]
    slept: list[float]

    def calls(self) -> list[tuple[object, ...]]:
        calls, self.fake.log[:] = list(self.fake.log), []
        return calls

    def steps(self) -> list[Event]:
        steps, self.events[:] = list(self.events), []
        return steps


def new_device(
    state: Path,
    key: Ed25519PrivateKey,
    fake: FakeController,
    token: str | None = None,
    *,
    field_samples_max: int | None = None,
) -> Device:
    """``field_samples_max``: keep labelled predictions in a field-sample outbox of that size."""
    events: list[Event] = []
    slept: list[float] = []
    config = AgentConfig(
        state_dir=state,
        device_id=DEVICE,
        enrolment_token=token or fake.issue_token(),  # type: ignore[arg-type]
        backoff_jitter=0,
        predict_port=None,
    )
    client = ControllerClient(
        "http://127.0.0.1:8700", transport=fake.transport(), sleep=slept.append, backoff_s=0.01
    )
    field_buffer = None
    if field_samples_max is not None:
        field_buffer = TelemetryBuffer(config.field_buffer_path, field_samples_max, durable=False)
    slots = SlotManager(
        ModelStore(state),
        pem(key).encode(),
        GOLDEN,
        CLASSES,
        events=events.append,
        on_label=None if field_buffer is None else field_sample_sink(field_buffer),
    )
    slots.restore()
    buffer = TelemetryBuffer(state / "telemetry.db", 50, durable=False)
    agent = Agent(
        config,
        client,
        slots,
        buffer,
        lambda: 0.0,
        slept.append,
        events=events.append,
        field_buffer=field_buffer,
    )
    return Device(agent, fake, events, slept)


def ref(version: str) -> ArtifactRef:
    return ArtifactRef(MODEL, version, VARIANT)


def installed(version: str) -> list[Event]:
    return [
        ("download", version),
        ("verify", version),
        ("load", version),
        ("smoke", version),
        ("swap", version),
        ("install", version, "installed"),
    ]


@pytest.fixture()
def on_v1(tmp_path: Path, key: Ed25519PrivateKey) -> Device:
    """An enrolled device serving v1, logs cleared."""
    fake = FakeController(public_key_pem=pem(key))
    device = new_device(tmp_path / "state", key, fake)
    device.agent.run_once()
    fake.target(DEVICE, publish(fake, key, "v1"))
    assert device.agent.run_once() == 0
    assert device.agent.slots.active == ref("v1")
    device.calls(), device.steps()
    return device


def test_enrols_once_and_reuses_the_credential_after_restart(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    fake = FakeController(public_key_pem=pem(key))
    state = tmp_path / "state"
    token = fake.issue_token()
    first = new_device(state, key, fake, token)
    assert first.agent.run_once() == 0
    credential_file = state / "credential.json"
    assert stat.S_IMODE(credential_file.stat().st_mode) == 0o600
    assert json.loads(credential_file.read_text())["public_key_pem"] == pem(key)
    first.agent.buffer.close()

    restarted = new_device(state, key, fake, token)  # the same, now used, token in its settings
    assert restarted.agent.run_once() == 0

    assert fake.log == [
        ("enrol", DEVICE),
        ("desired", DEVICE, None),
        ("desired", DEVICE, None),  # a restart does not remember the revision; the poll answers
    ]
    assert first.events == [("enrol", DEVICE), ("desired", "0")]
    assert restarted.events == [("desired", "0")]
    assert restarted.agent.status.phase is AgentPhase.ONLINE


def test_installs_a_signed_version_and_reports_from_it(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    device, fake = on_v1, on_v1.fake
    device.agent.slots.predict(GOLDEN[:2])
    revision = fake.target(DEVICE, publish(fake, key, "v2"))

    assert device.agent.run_once() == 0
    assert device.agent.run_once() == 0  # nothing changed: long-poll with the revision seen

    assert device.steps() == [
        ("desired", str(revision)),
        *installed("v2"),
        ("send", "2"),
        ("desired", str(revision)),
        ("send", "1"),
    ]
    assert device.calls() == [
        ("desired", DEVICE, revision - 1),
        ("download", "v2", None),
        ("telemetry", DEVICE, (2, 3)),
        ("desired", DEVICE, revision),
        ("telemetry", DEVICE, (4,)),
    ]
    reports = fake.reports(DEVICE)
    # v2 serves and says so; v1's last window (one call) is credited to v1.
    assert [(r.version, r.running, r.inferences) for r in reports[-3:]] == [
        ("v2", True, 0),
        ("v1", False, 1),
        ("v2", True, 0),
    ]
    assert device.agent.slots.active == ref("v2")
    assert not list((device.agent.config.downloads_dir).rglob("*.part"))


def test_tampered_artifact_is_rejected_and_the_device_keeps_its_model(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    device, fake = on_v1, on_v1.fake
    revision = fake.target(DEVICE, publish(fake, key, "v2", tamper=True))

    assert device.agent.run_once() == 0
    assert device.agent.run_once() == 0  # not fetched again within reject_retry_s

    assert device.steps() == [
        ("desired", str(revision)),
        ("download", "v2"),
        ("verify", "v2"),
        ("reject", "v2", "invalid signature"),
        ("install", "v2", "rejected"),
        ("reject", "v2", "signature"),
        ("send", "1"),
        ("desired", str(revision)),
        ("send", "1"),
    ]
    assert [c[0] for c in device.calls()] == [
        "desired",
        "download",
        "telemetry",
        "desired",
        "telemetry",
    ]
    assert device.agent.slots.active == ref("v1")
    assert device.agent.slots.predict(GOLDEN[:1]).ref == ref("v1")
    assert "invalid signature" in (device.agent.status.last_rejection or "")
    # the controller hears of it in the next report, once: the rollout need not wait it out
    refusals = [r for report in fake.reports(DEVICE) for r in report.refusals]
    assert [(r.version, r.variant, r.reason) for r in refusals] == [("v2", VARIANT, "signature")]
    assert "did not sign this file as digits version v2" in refusals[0].detail
    assert device.agent.slots.store.versions(MODEL) == ["v1"]
    assert {r.version for r in fake.reports(DEVICE)} == {"v1"}


def test_truncated_download_is_resumed_with_range(on_v1: Device, key: Ed25519PrivateKey) -> None:
    device, fake = on_v1, on_v1.fake
    artifact = publish(fake, key, "v2")
    fake.truncate_next_download(artifact, 500)
    fake.target(DEVICE, artifact)

    assert device.agent.run_once() == 0

    assert [c for c in device.calls() if c[0] == "download"] == [
        ("download", "v2", None),
        ("download", "v2", "bytes=500-"),
    ]
    assert device.agent.slots.active == ref("v2")


def test_rollback_to_the_stable_version_on_disk_needs_no_download(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    device, fake = on_v1, on_v1.fake
    stable = publish(fake, key, "v1")
    fake.target(DEVICE, publish(fake, key, "v2"))
    device.agent.run_once()
    device.calls(), device.steps()

    revision = fake.target(DEVICE, stable, rollout_id="rolled-back", rollback=True)
    assert device.agent.run_once() == 0

    assert device.steps() == [
        ("desired", str(revision)),
        ("activate", "v1"),
        ("rollback", "v1"),
        ("install", "v1", "reused_previous"),
        ("send", "1"),
    ]
    assert [c[0] for c in device.calls()] == ["desired", "telemetry"]  # no download
    assert (device.agent.slots.active, device.agent.slots.previous) == (ref("v1"), ref("v2"))


def test_an_older_release_is_refused_unless_the_controller_rolls_back(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    """A desired state that points a device on release 2 at release 1 without the rollback flag (a
    stale or confused controller, a replayed answer) is refused and the device stays on release 2;
    the same artifact as the controller's rollback path is taken at once."""
    device, fake = on_v1, on_v1.fake
    stable = publish(fake, key, "v1")
    fake.target(DEVICE, publish(fake, key, "v2"))
    device.agent.run_once()
    device.calls(), device.steps()

    revision = fake.target(DEVICE, stable)
    assert device.agent.run_once() == 0
    assert ("reject", "v1", "older release") in device.steps()
    assert device.agent.slots.active == ref("v2")
    assert "release 1 is older than release 2" in (device.agent.status.last_rejection or "")

    revision = fake.target(DEVICE, stable, rollback=True)
    assert device.agent.run_once() == 0
    assert ("install", "v1", "reused_previous") in device.steps(), revision
    assert device.agent.slots.active == ref("v1")


def test_reports_the_controller_calls_out_of_scope_are_forgotten_and_counted(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    """A report the controller acknowledges as ``refused`` (a version the device was not told to
    run) is never sent again: the outbox moves on, and the status counts it."""
    device, fake = on_v1, on_v1.fake
    fake.out_of_scope_versions = {"v1"}
    device.agent.slots.predict(GOLDEN[:2])
    assert device.agent.run_once() == 0
    assert device.agent.status.out_of_scope_reports >= 1
    assert device.agent.buffer.stats().pending == 0
    sent = len([c for c in fake.log if c[0] == "telemetry"])
    assert device.agent.run_once() == 0
    resent = [c for c in fake.log[sent:] if c[0] == "telemetry"]
    assert all(len(c[2]) <= 1 for c in resent)  # only the new window's report, not the old ones


def test_a_download_the_controller_cannot_serve_keeps_the_model_and_the_reports_flowing(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    """The controller answers, but its artifact store does not: the device keeps serving v1 and
    keeps reporting (a rollout must see it, not a silent device), and tries the download again
    after a growing back-off instead of at every long-poll."""
    device, fake = on_v1, on_v1.fake
    agent = device.agent
    fake.store_unavailable = True
    fake.target(DEVICE, publish(fake, key, "v2"))
    delays = []
    for _ in range(2):
        agent.slots.predict(GOLDEN[:1])
        delays.append(agent.run_once())
    assert delays == [1.0, 2.0]
    assert agent.status.phase is AgentPhase.FAILING
    assert "v2" in agent.status.message and "503" in agent.status.message
    calls = [c[0] for c in device.calls()]
    assert calls.count("telemetry") == 2 and "unavailable" in calls
    assert agent.buffer.stats().pending == 0
    assert {r.version for r in fake.reports(DEVICE)} == {"v1"}
    assert agent.slots.active == ref("v1")

    fake.store_unavailable = False
    assert agent.run_once() == 0
    assert agent.slots.active == ref("v2") and agent.status.phase is AgentPhase.ONLINE


def test_offline_keeps_serving_and_buffering_then_sends_everything(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    device, fake = on_v1, on_v1.fake
    agent = device.agent
    fake.offline = True
    delays = []
    for _ in range(3):
        agent.slots.predict(GOLDEN[:1])
        delays.append(agent.run_once())
    assert agent.status.phase is AgentPhase.OFFLINE
    assert delays == [1.0, 2.0, 4.0]  # exponential back-off
    assert agent.buffer.stats().pending == 3
    assert [c[0] for c in device.calls()] == ["offline"] * 3

    fake.offline = False
    pending = [r["seq"] for r in agent.buffer.pending()]
    assert agent.run_once() == 0

    assert agent.status.phase is AgentPhase.ONLINE
    assert agent.buffer.stats().pending == 0
    sent = [c for c in device.calls() if c[0] == "telemetry"]
    assert sent == [("telemetry", DEVICE, (*pending, pending[-1] + 1))]
    assert sum(r.inferences for r in fake.reports(DEVICE) if r.seq in pending) == 3
    # Sent again (an ack lost on the way): acknowledged as a duplicate, nothing stored twice.
    stored_before = len(fake.telemetry)
    ack = agent.client.send_telemetry(
        DEVICE,
        agent.credentials.credential,  # type: ignore[union-attr]
        TelemetryBatch(reports=[fake.reports(DEVICE)[-1]]),
    )
    assert ack.accepted == [] and len(ack.duplicates) == 1
    assert len(fake.telemetry) == stored_before


def buffered_offline(device: Device, windows: int) -> list[int]:
    """Serve a prediction in each of ``windows`` loop turns with the controller away, then bring
    it back; the seqs of the reports the outbox holds."""
    device.fake.offline = True
    for _ in range(windows):
        device.agent.slots.predict(GOLDEN[:1])
        device.agent.run_once()
    device.fake.offline = False
    return [r["seq"] for r in device.agent.buffer.pending()]


def test_a_report_the_controller_refuses_is_dropped_and_counted_not_resent_forever(
    on_v1: Device,
) -> None:
    device, fake = on_v1, on_v1.fake
    agent = device.agent
    pending = buffered_offline(device, 3)
    refused = pending[1]
    fake.refuse_seqs = {refused}  # e.g. a value its database cannot hold: 422 for the batch
    device.calls()

    assert agent.run_once() == 0

    stored = {r.seq for r in fake.reports(DEVICE)}
    assert set(pending) - {refused} <= stored and refused not in stored
    assert agent.status.invalid_reports == 1
    assert agent.buffer.stats().pending == 0  # nothing left behind the refused report
    sent = [c[2] for c in device.calls() if c[0] == "telemetry"]
    assert sent[0] == (*pending, pending[-1] + 1)  # the batch, refused whole
    assert sorted(s for (s,) in sent[1:]) == [*pending, pending[-1] + 1]  # then one by one
    agent.slots.predict(GOLDEN[:1])
    assert agent.run_once() == 0
    assert [c[0] for c in device.calls()].count("telemetry") == 1  # the outbox flows again


def test_a_batch_the_controller_finds_too_large_is_sent_one_report_at_a_time(
    on_v1: Device,
) -> None:
    """413 for the batch (a controller with a smaller body limit than the agent's outbox):
    each report goes alone and none is lost; one that is too large alone is dropped and counted,
    so it cannot hold the outbox behind it."""
    device, fake = on_v1, on_v1.fake
    agent = device.agent
    pending = buffered_offline(device, 3)
    one = len(TelemetryBatch(reports=[fake_report(agent)]).model_dump_json())
    fake.max_body_bytes = one * 2  # a batch of four is too large, one report is not
    device.calls()

    assert agent.run_once() == 0

    assert {r.seq for r in fake.reports(DEVICE)} >= set(pending)
    assert agent.status.invalid_reports == 0 and agent.buffer.stats().pending == 0
    calls = device.calls()
    assert calls[1][0] == "too-large"
    assert sorted(c[2][0] for c in calls if c[0] == "telemetry") == [*pending, pending[-1] + 1]

    fake.max_body_bytes = 10  # nothing fits: dropped and counted, never resent
    agent.slots.predict(GOLDEN[:1])
    assert agent.run_once() == 0
    assert agent.status.invalid_reports == 1 and agent.buffer.stats().pending == 0


def fake_report(agent: Agent) -> TelemetryReport:
    """One of the agent's reports as the controller would parse it (to size a body limit)."""
    [raw] = agent.buffer.pending(1) or [None]
    assert raw is not None
    return TelemetryReport.model_validate(raw)


def test_a_refused_credential_is_not_answered_by_enrolling_again(
    on_v1: Device, key: Ed25519PrivateKey
) -> None:
    device, fake = on_v1, on_v1.fake
    fake.revoke(DEVICE)
    for _ in range(2):
        assert device.agent.run_once() == device.agent.config.backoff_max_s

    assert device.calls() == [("desired", DEVICE, 1), ("desired", DEVICE, 1)]
    status = device.agent.status
    assert status.phase is AgentPhase.UNAUTHORIZED and status.phase.needs_person()
    assert "does not re-enrol" in status.message and "credential.json" in status.message
    assert device.agent.slots.predict(GOLDEN[:1]).ref == ref("v1")  # still serving


def test_a_controller_whose_certificate_stops_verifying_is_untrusted_not_offline(
    on_v1: Device,
) -> None:
    """Someone else answering in the controller's name (or a CA the device was not given): the
    agent keeps serving, says so, and waits as for any refusal a person must act on."""
    device, fake = on_v1, on_v1.fake
    fake.untrusted = True
    assert device.agent.run_once() == device.agent.config.backoff_max_s
    status = device.agent.status
    assert status.phase is AgentPhase.UNTRUSTED and status.phase.needs_person()
    assert "TLS certificate does not verify" in status.message
    assert device.calls() == [("untrusted", "GET", f"/v1/devices/{DEVICE}/desired")]
    assert device.agent.slots.predict(GOLDEN[:1]).ref == ref("v1")  # still serving
    fake.untrusted = False
    assert device.agent.run_once() == 0
    assert device.agent.status.phase is AgentPhase.ONLINE


def test_a_used_enrolment_token_is_sent_once(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    fake = FakeController(public_key_pem=pem(key))
    token = fake.issue_token()
    new_device(tmp_path / "a", key, fake, token).agent.run_once()  # uses it
    device = new_device(tmp_path / "b", key, fake, token)
    device.calls()
    device.agent.run_once()
    device.agent.run_once()
    assert device.calls() == [("enrol", DEVICE)]
    assert device.agent.status.phase is AgentPhase.UNAUTHORIZED
    assert "fresh EDGELOOP_AGENT_ENROLMENT_TOKEN" in device.agent.status.message
    assert not (tmp_path / "b" / "credential.json").exists()


def test_predict_server_serves_the_active_model(on_v1: Device) -> None:
    server = PredictServer(on_v1.agent.slots, port=0).start()
    try:
        host, port = server.address
        request = urllib.request.Request(
            f"http://{host}:{port}/predict",
            data=json.dumps({"inputs": GOLDEN[:2].tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    finally:
        server.stop()
    assert body["version"] == "v1" and len(body["predicted"]) == 2
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1, atol=1e-3)


def test_a_long_poll_never_outlasts_the_report_interval(
    on_v1: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    desired = on_v1.agent.client.desired

    def recording(device_id: str, credential: str, revision: int | None, wait: float) -> object:
        waits.append(wait)
        return desired(device_id, credential, revision, wait)

    monkeypatch.setattr(on_v1.agent.client, "desired", recording)
    assert on_v1.agent.config.long_poll_s == 30 and on_v1.agent.config.report_interval_s == 10
    on_v1.agent.run_once()
    assert waits == [10]  # telemetry goes out at least every 10 s, not every 30
