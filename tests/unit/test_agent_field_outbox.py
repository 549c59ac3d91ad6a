"""fleet.agent: labelled predictions go back to the controller as field samples, through a bounded
outbox on disk, with the telemetry; against the fake controller, with real ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from test_agent_loop import DEVICE, GOLDEN, MODEL, Device, key, new_device, pem, publish, ref

from fleet.agent.agent import AgentPhase
from fleet.agent.fake_controller import FakeController
from fleet.agent.slots import Prediction
from fleet.shared import protocol
from fleet.simulate import Simulation

__all__ = ["key"]  # a fixture of test_agent_loop, used here


def serving_v1(state: Path, key: Ed25519PrivateKey, field_samples_max: int = 100) -> Device:
    fake = FakeController(public_key_pem=pem(key))
    device = new_device(state, key, fake, field_samples_max=field_samples_max)
    device.agent.run_once()
    fake.target(DEVICE, publish(fake, key, "v1"))
    device.agent.run_once()
    assert device.agent.slots.active == ref("v1")
    device.calls(), device.steps()
    return device


def predict(device: Device, rows: np.ndarray) -> Prediction:
    return device.agent.slots.predict(rows)


def test_a_labelled_prediction_is_sent_as_a_field_sample_with_its_version(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    device = serving_v1(tmp_path / "state", key)
    prediction = predict(device, GOLDEN[:3])
    predicted = [int(i) for i in prediction.probabilities.argmax(axis=1)]
    slots = device.agent.slots
    assert slots.record_label(prediction.ids[0], 7)
    assert slots.record_label(prediction.ids[2], 1)
    assert not slots.record_label("no-such-id", 2)  # nothing to send for it

    assert device.agent.run_once() == 0
    sent = [(s.model, s.version, s.label, s.predicted) for _, s, _ in device.fake.field_samples]
    assert sent == [(MODEL, "v1", 7, predicted[0]), (MODEL, "v1", 1, predicted[2])]
    features = [s.features for _, s, _ in device.fake.field_samples]
    assert np.allclose(features, GOLDEN[[0, 2]])
    assert ("field-samples", DEVICE, 2) in device.calls()
    assert device.agent.status.field_samples_sent == 2
    assert device.agent.field_buffer is not None
    assert device.agent.field_buffer.stats().pending == 0
    device.agent.run_once()
    assert len(device.fake.field_samples) == 2  # acknowledged ones are not sent again


def test_offline_samples_wait_on_disk_bounded_and_the_drops_are_reported(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    device = serving_v1(tmp_path / "state", key, field_samples_max=3)
    device.fake.offline = True
    prediction = predict(device, GOLDEN[:5])
    for pid in prediction.ids:
        device.agent.slots.record_label(pid, 4)
    device.agent.run_once()
    assert device.agent.status.phase is AgentPhase.OFFLINE
    field_buffer = device.agent.field_buffer
    assert field_buffer is not None
    assert field_buffer.stats().pending == 3 and field_buffer.dropped == 2
    field_buffer.close()

    # A restart keeps the outbox: the samples come from the disk, not from memory.
    restarted = new_device(tmp_path / "state", key, device.fake, field_samples_max=3)
    device.fake.offline = False
    assert restarted.agent.run_once() == 0
    received = device.fake.field_samples
    assert len(received) == 3 and {dropped for _, _, dropped in received} == {2}
    assert np.allclose([s.features for _, s, _ in received], GOLDEN[2:5])  # the oldest went


@pytest.mark.parametrize("label", [-1, 100_001])
def test_a_sample_the_protocol_refuses_is_dropped_and_counted_not_blocking_the_rest(
    tmp_path: Path, key: Ed25519PrivateKey, label: int
) -> None:
    """A label out of the protocol's range is refused where it comes in (the prediction keeps
    waiting for a good one); a refused sample already in the outbox (kept by an earlier agent) is
    dropped and counted, and the others still go."""
    device = serving_v1(tmp_path / "state", key)
    prediction = predict(device, GOLDEN[:2])
    with pytest.raises(ValueError, match="class index"):
        device.agent.slots.record_label(prediction.ids[0], label)
    assert device.agent.field_buffer is not None
    device.agent.field_buffer.append(
        {"model": MODEL, "version": "v1", "features": [0.0] * 64, "predicted": 1, "label": label}
    )
    device.agent.slots.record_label(prediction.ids[1], 3)
    assert device.agent.run_once() == 0
    assert [s.label for _, s, _ in device.fake.field_samples] == [3]
    assert device.agent.status.invalid_field_samples == 1
    assert device.agent.status.phase is AgentPhase.ONLINE


def test_without_a_field_outbox_no_inputs_are_kept(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    fake = FakeController(public_key_pem=pem(key))
    device = new_device(tmp_path / "state", key, fake)
    device.agent.run_once()
    fake.target(DEVICE, publish(fake, key, "v1"))
    device.agent.run_once()
    prediction = predict(device, GOLDEN[:1])
    assert device.agent.slots.record_label(prediction.ids[0], 2)
    device.agent.run_once()
    assert fake.field_samples == []
    assert not any(c[0] == "field-samples" for c in fake.log)


def test_a_row_that_is_not_finite_is_never_kept(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    device = serving_v1(tmp_path / "state", key)
    rows = GOLDEN[:2].copy()
    rows[0, 5] = np.nan
    prediction = predict(device, rows)
    for pid in prediction.ids:
        assert device.agent.slots.record_label(pid, 1)  # the label still counts for the gate
    assert device.agent.run_once() == 0
    assert np.allclose([s.features for _, s, _ in device.fake.field_samples], GOLDEN[1:2])


def test_the_simulator_refuses_a_field_outbox_of_no_samples(tmp_path: Path) -> None:
    x = np.zeros((4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="field_outbox_limit must be at least 1"):
        Simulation(
            "http://127.0.0.1:9",
            "token",
            devices=1,
            classes={"host-cpu": 1.0},
            field_x=x,
            field_y=np.zeros(4, dtype=np.int64),
            field_outbox_limit=0,
            workdir=tmp_path,
        )


def test_batches_are_bounded_by_their_values_not_only_their_count(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "MAX_FIELD_BATCH_VALUES", 150)  # two 64-value samples a batch
    device = serving_v1(tmp_path / "state", key)
    prediction = predict(device, GOLDEN[:5])
    for pid in prediction.ids:
        device.agent.slots.record_label(pid, 2)
    assert device.agent.run_once() == 0
    sizes = [n for call, _, n in [c for c in device.calls() if c[0] == "field-samples"]]
    assert sizes == [2, 2, 1] and len(device.fake.field_samples) == 5
    with pytest.raises(ValidationError, match="more than 150"):
        protocol.FieldSampleBatch(samples=[s for _, s, _ in device.fake.field_samples[:3]])


def test_values_prefix_always_lets_one_sample_through() -> None:
    assert protocol.values_prefix([40, 40, 40], limit=100) == 2
    assert protocol.values_prefix([500, 1], limit=100) == 1
    assert protocol.values_prefix([], limit=100) == 0
