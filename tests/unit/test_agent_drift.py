"""fleet.shared.drift: the reference, PSI, and each on-device detector with its event and action."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from builders import make_serving_model_raise
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_agent_loop import DEVICE, Device, key, new_device, on_v1, pem, publish, ref

from fleet.agent.agent import PredictServer, _detector
from fleet.agent.config import AgentConfig
from fleet.agent.errors import AgentConfigError, InferenceFailed, InvalidInput
from fleet.agent.fake_controller import FakeController
from fleet.shared.drift import (
    PSI_MAX,
    DetectorPolicy,
    DeviceDetector,
    DriftReference,
    build_reference,
    chance_psi,
    local_action,
    psi,
)
from fleet.shared.latency import LatencyHistogram, p95_ms, quantile_ms

__all__ = ["key", "on_v1"]  # fixtures of test_agent_loop, used here

RNG = np.random.default_rng(0)
TRAIN = RNG.normal(0, 1, size=(5000, 4))
PREDICTED = RNG.integers(0, 3, size=5000)


def reference() -> DriftReference:
    return build_reference(
        TRAIN, predictions=PREDICTED, classes=3, feature_names=("a", "b", "c", "d")
    )


def test_reference_has_deciles_and_round_trips(tmp_path: Path) -> None:
    ref = reference()
    assert ref.features == 4
    assert all(len(e) == 9 and len(s) == 10 for e, s in zip(ref.edges, ref.shares, strict=True))
    assert all(abs(sum(s) - 1) < 1e-9 for s in ref.shares)
    assert all(abs(v - 0.1) < 0.01 for v in ref.shares[0])
    assert DriftReference.load(ref.save(tmp_path / "ref.json")) == ref


def test_reference_refuses_an_empty_split() -> None:
    with pytest.raises(ValueError, match="non-empty n by d"):
        build_reference(np.zeros((0, 3)))


def test_psi_is_zero_for_the_same_distribution_and_bounded() -> None:
    assert psi([0.5, 0.5], [50, 50]) == pytest.approx(0)
    worst = psi([1.0, 0.0], [0, 1000])
    assert 0 < worst <= PSI_MAX
    with pytest.raises(ValueError, match="one length"):
        psi([0.5, 0.5], [1, 2, 3])


def test_clean_inputs_raise_no_event_and_shifted_ones_name_the_feature() -> None:
    detector = DeviceDetector(reference(), DetectorPolicy(min_rows=500))
    detector.observe_inputs(RNG.normal(0, 1, size=(1000, 4)))
    assert detector.take_events() == []
    shifted = RNG.normal(0, 1, size=(500, 4))
    shifted[:, 2] += 1.5
    detector.observe_inputs(shifted)
    events = detector.take_events()
    assert [(e.kind, e.feature) for e in events] == [("input_drift", "c")]
    assert events[0].value > 0.25 == events[0].threshold
    assert detector.take_events() == []  # taken once


def test_many_small_clean_windows_of_many_discrete_features_raise_no_event() -> None:
    """Digit-like inputs (64 features, few distinct values, a small reference): sampling noise alone
    passes a fixed PSI threshold of 0.25 in some window; the chance limit keeps it quiet."""
    rng = np.random.default_rng(3)
    levels = rng.integers(2, 17, size=64)

    def draw(n: int) -> np.ndarray:
        return np.floor(rng.random((n, 64)) ** 2 * levels).astype(np.float64)

    ref = build_reference(draw(300))
    assert ref.rows == 300
    detector = DeviceDetector(ref, DetectorPolicy(min_rows=100))
    naive = 0
    for _ in range(200):
        x = draw(100)
        detector.observe_inputs(x)
        naive += any(
            psi(ref.shares[i], np.bincount(np.searchsorted(ref.edges[i], x[:, i]),
                                           minlength=len(ref.edges[i]) + 1)) > 0.25
            for i in range(64)
        )  # fmt: skip
    assert naive > 0, "the case must be one where a fixed threshold alone raises false alarms"
    assert detector.take_events() == []
    shifted = draw(100) + 3
    detector.observe_inputs(shifted)
    assert [e.kind for e in detector.take_events()][:1] == ["input_drift"]


def test_chance_psi_shrinks_with_more_rows_and_grows_with_bins() -> None:
    assert chance_psi(10, 1000, 0, 5) < chance_psi(10, 100, 0, 5)
    assert chance_psi(10, 100, 1000, 5) > chance_psi(10, 100, 0, 5)
    assert chance_psi(3, 100, 0, 5) < chance_psi(10, 100, 0, 5)
    assert chance_psi(1, 100, 0, 5) == 0.0
    # about the chi-square(9) upper quantile at z=2 (16.9 exactly) over 100 rows
    assert chance_psi(10, 100, 0, 1.645) == pytest.approx(16.9 / 100, rel=0.03)


def test_prediction_shift_raises_prediction_drift() -> None:
    detector = DeviceDetector(reference(), DetectorPolicy(min_rows=300))
    detector.observe_predictions(np.zeros(300, dtype=int))  # everything is class 0 now
    detector.observe_inputs(RNG.normal(0, 1, size=(300, 4)))
    assert [e.kind for e in detector.take_events()] == ["prediction_drift"]


def test_latency_regression_against_the_device_baseline() -> None:
    detector = DeviceDetector(reference(), DetectorPolicy(baseline_windows=3, latency_factor=2))
    for _ in range(3):
        detector.observe_window(inferences=100, errors=0, p95_ms=10.0, window_s=1)
    detector.observe_window(inferences=100, errors=0, p95_ms=15.0, window_s=1)
    assert detector.take_events() == []
    detector.observe_window(inferences=100, errors=0, p95_ms=25.0, window_s=1)
    (event,) = detector.take_events()
    assert (event.kind, event.value, event.threshold) == ("latency_regression", 25.0, 20.0)


def test_error_burst_calls_for_a_local_fallback_by_policy() -> None:
    detector = DeviceDetector(reference(), DetectorPolicy(error_rate=0.2, min_errors=5))
    detector.observe_window(inferences=100, errors=4, p95_ms=None, window_s=1)
    assert detector.take_events() == []
    detector.observe_window(inferences=20, errors=10, p95_ms=None, window_s=1)
    events = detector.take_events()
    assert [e.kind for e in events] == ["error_burst"]
    assert local_action(events) == "fallback"
    assert events[0].to_dict()["action"] == "fallback"


def test_the_device_reads_its_p95_as_the_gate_does() -> None:
    def p95(counts: tuple[int, ...]) -> float | None:
        return p95_ms(LatencyHistogram(bounds_ms=(1, 2, 4), counts=counts))

    assert p95((0, 0, 0, 0)) is None
    assert p95((90, 5, 5, 0)) == 1.0 + (95 - 90) / 5  # interpolated inside (1, 2]
    assert p95((0, 0, 0, 10)) == 4.0  # the overflow bucket reads as the last bound
    h = LatencyHistogram(bounds_ms=(1, 2, 4), counts=(50, 30, 20, 0))
    assert p95_ms(h) == quantile_ms(h, 0.95)[0]  # type: ignore[index]


# --- in the agent ------------------------------------------------------------------------------


def test_an_error_burst_falls_back_to_the_previous_model_and_reports_why(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeController(public_key_pem=pem(key))
    device = new_device(tmp_path / "state", key, fake)
    agent = device.agent
    agent.detector = DeviceDetector(reference(), DetectorPolicy(min_errors=3, error_rate=0.5))
    agent.run_once()
    for version in ("v1", "v2"):
        fake.target(DEVICE, publish(fake, key, version))
        agent.run_once()
    assert (agent.slots.active, agent.slots.previous) == (ref("v2"), ref("v1"))
    with pytest.raises(InvalidInput):  # a request that does not fit is refused, not an error
        agent.slots.predict(np.zeros((1, 3), dtype=np.float32))
    make_serving_model_raise(agent.slots, monkeypatch)
    for _ in range(4):  # the model raises: each call is an error
        with pytest.raises(InferenceFailed):
            agent.slots.predict(np.zeros((1, 64), dtype=np.float32))
    device.steps()
    agent._buffer_windows()
    assert agent.slots.active == ref("v1")
    assert ("fallback", "v1", "error_burst") in device.steps()
    (report,) = [r for r in agent.buffer.pending() if r["version"] == "v2" and r["errors"]]
    assert [(e["kind"], e["action"]) for e in report["events"]] == [("error_burst", "fallback")]
    agent.run_once()  # v2 is still desired, but stays out of service for the cool-down
    assert agent.slots.active == ref("v1")


def test_the_predict_server_feeds_the_input_detector(on_v1: Device) -> None:
    detector = DeviceDetector(reference_of(64), DetectorPolicy(min_rows=40))
    server = PredictServer(on_v1.agent.slots, detector=detector).start()
    try:
        host, port = server.address
        rows = (np.random.default_rng(1).normal(0, 1, size=(40, 64)) + 3).tolist()
        request = urllib.request.Request(
            f"http://{host}:{port}/predict",
            data=json.dumps({"inputs": rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.stop()
    events = detector.take_events()
    assert events and {e.kind for e in events} == {"input_drift"}


def test_a_broken_drift_reference_next_to_the_golden_inputs_is_refused(tmp_path: Path) -> None:
    golden = tmp_path / "golden.npy"
    np.save(golden, np.zeros((2, 4), dtype=np.float32))
    (tmp_path / "drift-reference.json").write_text('{"edges": [[0.0]], "shares": [[1.0]]}')
    config = AgentConfig(state_dir=tmp_path / "state", device_id="d", golden_inputs=golden)
    with pytest.raises(AgentConfigError, match=r"drift reference .* is not valid"):
        _detector(config)
    (tmp_path / "drift-reference.json").unlink()
    assert _detector(config) is None


def reference_of(features: int) -> DriftReference:
    return build_reference(RNG.normal(0, 1, size=(2000, features)))
