"""Tests for flows.hardware: the real hardware-tests suite run as a subprocess on tiny ONNX models.

The models are built here with the onnx helper API (MatMul + Softmax, 64 features to 10 classes)
with fixed weights, so their accuracy, size and outputs are known exactly and every assertion
checks a specific value or message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgeloop.errors import HardwareCheckError
from flows.hardware import ProfileResult, run_profile, write_golden

SUITE = Path(__file__).resolve().parents[2] / "hardware-tests"
FEATURES, CLASSES, ROWS = 64, 10, 200

# Weights that copy the first 10 features to the logits: argmax(x[:, :10]) is the label.
IDENTITY = np.zeros((FEATURES, CLASSES), dtype=np.float32)
IDENTITY[np.arange(CLASSES), np.arange(CLASSES)] = 1.0


def make_model(path: Path, weights: np.ndarray, *, nan: bool = False) -> Path:
    """features[N, 64] -> MatMul -> Softmax -> probabilities[N, 10]; ``nan`` multiplies by NaN."""
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs" if nan else "probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W")]
    if nan:
        nodes.append(helper.make_node("Mul", ["probs", "nan"], ["probabilities"]))
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_profile(directory: Path, name: str, budgets: dict[str, float | None]) -> Path:
    """A fast profile (50 timed runs) with loose budgets, changed by ``budgets``."""
    limits: dict[str, float | None] = {
        "p95_latency_ms": 50,
        "model_size_mb": 1,
        "min_accuracy": 0.9,
        "peak_memory_mb": 4096,
        "max_disagreement": 0.03,
    }
    raw = {
        "name": name,
        "threads": 1,
        "warmup_runs": 5,
        "timed_runs": 50,
        "budgets": limits | budgets,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardware")
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype(np.float32)
    write_golden(x, np.argmax(x[:, :CLASSES], axis=1), root / "golden.npz")
    make_model(root / "good.onnx", IDENTITY)
    make_model(root / "nan.onnx", IDENTITY, nan=True)
    make_model(root / "shuffled.onnx", np.roll(IDENTITY, 1, axis=1))  # predicts label + 1
    profiles = root / "profiles"
    profiles.mkdir()
    write_profile(profiles, "test-cpu", {})
    write_profile(profiles, "tiny-latency", {"p95_latency_ms": 1e-6})
    write_profile(profiles, "tiny-size", {"model_size_mb": 0.001})
    write_profile(profiles, "no-accuracy", {"min_accuracy": None})
    return root


def check(
    work: Path, model: str, profile: str, reference: str | None = None, timeout_s: float = 120
) -> ProfileResult:
    return run_profile(
        work / model,
        profile,
        work / "golden.npz",
        work / "out" / model,
        reference=work / reference if reference else None,
        suite_dir=SUITE,
        profiles_dir=work / "profiles",
        timeout_s=timeout_s,
    )


def outcomes(result: ProfileResult) -> dict[str, tuple[str, str]]:
    tests = json.loads(result.report_path.read_text())["tests"]
    return {t["name"]: (t["outcome"], t["message"]) for t in tests}


def test_good_model_passes_with_metrics(work: Path) -> None:
    result = check(work, "good.onnx", "test-cpu", reference="good.onnx")

    assert result.passed and result.status == "passed" and result.failures == []
    assert result.profile == "test-cpu"
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["disagreement"] == 0.0
    assert result.metrics["runs"] == 50
    assert result.metrics["model_size_mb"] == pytest.approx(
        (work / "good.onnx").stat().st_size / 2**20
    )
    assert 0 < result.metrics["p50_ms"] <= result.metrics["p95_ms"] <= result.metrics["p99_ms"]
    assert result.metrics["throughput_per_s"] > 0 and result.metrics["load_ms"] > 0
    assert 10 < result.metrics["peak_rss_mb"] < 4096
    assert result.junit_path == work / "out" / "good.onnx" / "test-cpu" / "junit.xml"
    assert result.junit_path.is_file()
    report = json.loads(result.report_path.read_text())
    assert report["profile"] == "test-cpu" and report["status"] == "passed"
    assert report["model"] == str(work / "good.onnx")
    assert len(report["sha256"]) == 64
    assert set(outcomes(result).values()) == {("passed", "")}
    assert len(outcomes(result)) == 8


def test_without_reference_disagreement_is_skipped_not_failed(work: Path) -> None:
    result = check(work, "good.onnx", "no-accuracy")

    assert result.passed
    assert "disagreement" not in result.metrics
    tests = outcomes(result)
    assert tests["test_disagreement"] == (
        "skipped",
        "no --reference model given, so disagreement was not measured",
    )
    assert tests["test_accuracy"] == ("skipped", "profile no-accuracy sets no min_accuracy budget")


def test_latency_budget_breach_names_value_budget_and_profile(work: Path) -> None:
    result = check(work, "good.onnx", "tiny-latency")

    assert not result.passed and result.status == "failed"
    p95 = result.metrics["p95_ms"]
    measured = f"{p95:.2f}" if p95 >= 0.1 else f"{p95:.3g}"
    assert result.failures == [
        f"p95 latency {measured} ms exceeds budget 1e-06 ms on profile tiny-latency"
    ]


def test_size_budget_breach(work: Path) -> None:
    result = check(work, "good.onnx", "tiny-size")

    size = (work / "good.onnx").stat().st_size / 2**20
    assert result.failures == [
        f"model size {size:.3g} MB exceeds budget 0.001 MB on profile tiny-size"
    ]


def test_disagreeing_model_fails_accuracy_and_disagreement(work: Path) -> None:
    result = check(work, "shuffled.onnx", "test-cpu", reference="good.onnx")

    assert result.metrics["accuracy"] == 0.0 and result.metrics["disagreement"] == 1.0
    assert result.failures == [
        "accuracy 0.0000 below budget 0.9000 on profile test-cpu",
        "disagreement with the reference 1.0000 exceeds budget 0.0300 on profile test-cpu",
    ]


def test_nan_model_fails_sanity(work: Path) -> None:
    result = check(work, "nan.onnx", "test-cpu")

    tests = outcomes(result)
    assert result.status == "failed"
    assert tests["test_output_shape"] == ("passed", "")
    assert tests["test_outputs_finite"] == (
        "failed",
        f"{ROWS * CLASSES} of {ROWS * CLASSES} output values are NaN or Inf on profile test-cpu",
    )
    assert tests["test_outputs_are_probabilities"][0] == "failed"
    assert (
        f"{ROWS * CLASSES} output values are outside [0, 1]"
        in (tests["test_outputs_are_probabilities"][1])
    )


def test_unknown_profile_is_a_hardware_check_error(work: Path) -> None:
    with pytest.raises(HardwareCheckError) as caught:
        check(work, "good.onnx", "no-such-profile")

    message = str(caught.value)
    assert "profile 'no-such-profile' could not run (pytest exit code 4" in message
    assert "hardware profile 'no-such-profile' not found" in message
    assert "'test-cpu'" in message  # the known profiles are listed
    assert "\n" not in message


def test_profile_with_unknown_key_is_a_hardware_check_error(work: Path) -> None:
    write_profile(work / "profiles", "typo", {"p95_latency": 5})

    with pytest.raises(HardwareCheckError, match=r"budgets\.p95_latency: Extra inputs"):
        check(work, "good.onnx", "typo")


def test_missing_model_is_a_hardware_check_error(work: Path) -> None:
    with pytest.raises(HardwareCheckError, match=r"model file .*missing\.onnx not found"):
        check(work, "missing.onnx", "test-cpu")


def test_timeout_is_a_hardware_check_error(work: Path) -> None:
    with pytest.raises(HardwareCheckError, match=r"'test-cpu' timed out after 0\.01 s"):
        check(work, "good.onnx", "test-cpu", timeout_s=0.01)


def test_write_golden_keeps_the_path_and_dtypes(tmp_path: Path) -> None:
    path = write_golden(np.ones((3, 2), dtype=np.float64), np.array([0, 1, 1]), tmp_path / "g")

    assert path == tmp_path / "g"
    with np.load(path) as data:
        assert data["x"].dtype == np.float32 and data["x"].shape == (3, 2)
        assert data["y"].dtype == np.int64 and data["y"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="golden x must be n by d"):
        write_golden(np.ones(3), np.ones(3), tmp_path / "bad.npz")
