"""Tests for flows.hardware: the real hardware-tests suite run as a subprocess on tiny ONNX models.

The models are built here with the onnx helper API (MatMul + Softmax, 64 features to 10 classes)
with fixed weights, so their accuracy, size and outputs are known exactly and every assertion
checks a specific value or message. Bad input (an impossible profile, a missing execution provider,
a model beyond the memory cap, NaN outputs) must each end in a failure that names the profile and
the limit: never a crash, never a pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile
from fleet.shared.runtime import host_arch, missing_providers, usable_cores
from flows.hardware import (
    ProfileResult,
    crashed_under_cap,
    read_result,
    run_profile,
    write_golden,
)

SUITE = Path(__file__).resolve().parents[2] / "hardware-tests"
FEATURES, CLASSES, ROWS = 64, 10, 200
SUITE_TESTS = 10
CPU = "CPUExecutionProvider"
CAP_MB = 288  # the suite itself needs about 195 MB of address space (edge-small.yaml)
OTHER_ARCH = "riscv64" if host_arch() != "riscv64" else "x86_64"

# Weights that copy the first 10 features to the logits: argmax(x[:, :10]) is the label.
IDENTITY = np.zeros((FEATURES, CLASSES), dtype=np.float32)
IDENTITY[np.arange(CLASSES), np.arange(CLASSES)] = 1.0


def make_model(path: Path, weights: np.ndarray, *, nan: bool = False, ballast_mb: int = 0) -> Path:
    """features[N, 64] -> MatMul -> Softmax -> probabilities[N, 10]; ``nan`` multiplies by NaN.

    ``ballast_mb`` adds an unused initializer of that size: onnxruntime still has to read and
    parse it, so the model needs that memory (several times over) to load.
    """
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs" if nan else "probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W")]
    if nan:
        nodes.append(helper.make_node("Mul", ["probs", "nan"], ["probabilities"]))
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
    if ballast_mb:
        ballast = np.zeros(ballast_mb * 2**20 // 4, dtype=np.float32)
        inits.append(numpy_helper.from_array(ballast, "ballast"))
    return save_classifier(path, nodes, inits)


def save_classifier(path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> Path:
    """``nodes`` as a model from ``features`` [N, 64] to ``probabilities`` [N, 10], checked and
    saved at ``path``."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_profile(
    directory: Path, name: str, budgets: dict[str, float | None], **fields: Any
) -> Path:
    """A fast profile (50 timed runs) with loose budgets, changed by ``budgets`` and ``fields``."""
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
    } | fields
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
    write_profile(profiles, "capped", {"peak_memory_mb": 200}, memory_cap_mb=CAP_MB)
    write_profile(profiles, "pinned", {}, cpu_affinity=[min(usable_cores())])
    write_profile(profiles, "no-fallback", {}, execution_providers=[CPU, "NoSuchExecutionProvider"])
    write_profile(profiles, "gpu-first", {}, execution_providers=["CUDAExecutionProvider", CPU])
    write_profile(profiles, "other-arch", {}, arch=OTHER_ARCH)
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
    assert report["variant"] == "good" and report["reason"] == ""
    assert report["host"]["onnxruntime"] and CPU in report["host"]["available_providers"]
    assert report["host"]["session_providers"] == [CPU]
    assert report["host"]["cpu_count"] >= 1 and report["host"]["platform"]
    tests = outcomes(result)
    assert len(tests) == SUITE_TESTS
    assert tests.pop("test_fits_memory_cap") == (
        "skipped",
        "profile test-cpu sets no memory_cap_mb",
    )
    assert set(tests.values()) == {("passed", "")}
    assert result.variant == "good" and result.sha256 == report["sha256"]
    assert result.metrics["agreement"] == 1.0


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


def skipped_with(result: ProfileResult, reason: str, *but: str) -> bool:
    """Whether every test except ``but`` was skipped with exactly ``reason``."""
    tests = {k: v for k, v in outcomes(result).items() if k not in but}
    return len(tests) == SUITE_TESTS - len(but) and set(tests.values()) == {("skipped", reason)}


def test_impossible_budget_is_a_hardware_check_error_naming_the_field(work: Path) -> None:
    write_profile(work / "profiles", "impossible", {"peak_memory_mb": 512}, memory_cap_mb=256)

    with pytest.raises(HardwareCheckError) as caught:
        check(work, "good.onnx", "impossible")
    assert "impossible.yaml is invalid: budgets.peak_memory_mb: 512 MB is above memory_cap_mb" in (
        str(caught.value)
    )


@pytest.fixture(scope="module")
def big(work: Path) -> str:
    make_model(work / "big.onnx", IDENTITY, ballast_mb=96)
    return "big.onnx"


def test_model_beyond_the_memory_cap_fails_naming_profile_and_cap(work: Path, big: str) -> None:
    result = check(work, big, "capped")

    assert result.status == "failed" and not result.passed
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.startswith(
        f"model does not fit the memory cap of {CAP_MB} MB on profile capped: "
        "onnxruntime failed to allocate ("
    )
    assert "bad_alloc" in failure or "MemoryError" in failure
    assert outcomes(result)["test_fits_memory_cap"] == ("failed", failure)
    assert skipped_with(result, f"not measured: {failure}", "test_fits_memory_cap")
    assert result.reason == failure


def test_model_within_the_memory_cap_passes_under_it(work: Path) -> None:
    result = check(work, "good.onnx", "capped")

    assert result.passed, result.failures
    assert outcomes(result)["test_fits_memory_cap"] == ("passed", "")
    assert result.host["address_space_cap_mb"] == CAP_MB
    assert 0 < result.metrics["peak_rss_mb"] <= result.metrics["peak_vm_mb"] < CAP_MB


def test_memory_cap_too_small_for_the_suite_itself_is_a_hardware_check_error(work: Path) -> None:
    write_profile(work / "profiles", "starved", {"peak_memory_mb": 48}, memory_cap_mb=48)

    with pytest.raises(HardwareCheckError) as caught:
        check(work, "good.onnx", "starved")
    message = str(caught.value)
    assert "hardware tests for profile 'starved' could not run" in message
    assert "does not fit memory_cap_mb 48" in message or "memory cap of 48 MB" in message


def test_crash_under_a_memory_cap_is_a_failed_result(tmp_path: Path) -> None:
    profile = HardwareProfile(name="edge", memory_cap_mb=64)

    result = crashed_under_cap(
        profile, "was killed by SIGKILL", "Killed\n", tmp_path / "j.xml", tmp_path / "r.json"
    )
    assert result.status == "failed" and not result.passed
    assert result.failures == [
        "model does not fit the memory cap of 64 MB on profile edge: the suite was killed by "
        "SIGKILL (Killed)"
    ]
    assert json.loads(result.report_path.read_text())["status"] == "failed"


def test_cpu_affinity_pins_the_suite(work: Path) -> None:
    result = check(work, "good.onnx", "pinned")

    core = min(usable_cores())
    assert result.passed
    assert result.host["pinned_cores"] == [core] and result.host["usable_cores"] == [core]


def test_core_this_host_lacks_is_a_usage_error_naming_profile_and_core(work: Path) -> None:
    write_profile(work / "profiles", "no-such-core", {}, cpu_affinity=[4095])

    with pytest.raises(HardwareCheckError, match=r"profile no-such-core pins cores \[4095\]: "):
        check(work, "good.onnx", "no-such-core")
    with pytest.raises(HardwareCheckError, match=r"core\(s\) \[4095\] do not exist here"):
        check(work, "good.onnx", "no-such-core")


def test_missing_fallback_provider_fails_naming_profile_and_provider(work: Path) -> None:
    result = check(work, "good.onnx", "no-fallback")

    assert result.status == "failed" and not result.passed
    available = ort.get_available_providers()
    failure = (
        "execution provider(s) ['NoSuchExecutionProvider'] of profile no-fallback are not installed "
        f"in onnxruntime {ort.__version__} on this host (available: {available})"
    )
    assert result.failures == [failure]
    assert outcomes(result)["test_execution_providers"] == ("failed", failure)
    assert skipped_with(result, f"not measured: {failure}", "test_execution_providers")


def test_missing_first_provider_makes_the_profile_unavailable_never_passed(work: Path) -> None:
    if not missing_providers(["CUDAExecutionProvider"]):
        pytest.skip("CUDAExecutionProvider is installed here")
    result = check(work, "good.onnx", "gpu-first")

    assert result.status == "unavailable" and not result.passed and result.failures == []
    assert result.reason == (
        f"CUDAExecutionProvider is not available in onnxruntime {ort.__version__} on this host "
        f"(available: {ort.get_available_providers()}), so profile gpu-first cannot run here"
    )
    assert skipped_with(result, result.reason)
    assert result.metrics == {}


def test_shipped_gpu_profile_is_unavailable_without_cuda(work: Path) -> None:
    if not missing_providers(["CUDAExecutionProvider"]):
        pytest.skip("CUDAExecutionProvider is installed here")
    result = run_profile(
        work / "good.onnx", "gpu-cuda", work / "golden.npz", work / "out" / "gpu", suite_dir=SUITE
    )
    assert result.status == "unavailable" and not result.passed
    assert "CUDAExecutionProvider is not available" in result.reason
    assert skipped_with(result, result.reason)


def test_profile_for_another_arch_is_unavailable(work: Path) -> None:
    result = check(work, "good.onnx", "other-arch")

    assert result.status == "unavailable" and not result.passed
    assert result.reason == f"profile other-arch targets {OTHER_ARCH}; this host is {host_arch()}"
    assert skipped_with(result, result.reason)


def test_write_golden_keeps_the_path_and_dtypes(tmp_path: Path) -> None:
    path = write_golden(np.ones((3, 2), dtype=np.float64), np.array([0, 1, 1]), tmp_path / "g")

    assert path == tmp_path / "g"
    with np.load(path) as data:
        assert data["x"].dtype == np.float32 and data["x"].shape == (3, 2)
        assert data["y"].dtype == np.int64 and data["y"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="golden x must be n by d"):
        write_golden(np.ones(3), np.ones(3), tmp_path / "bad.npz")


def test_read_result_refuses_a_report_that_is_not_the_suites(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with pytest.raises(
        HardwareCheckError, match=r"'p' left no readable report .*FileNotFoundError"
    ):
        read_result("p", report, tmp_path / "junit.xml")
    report.write_text(json.dumps({"profile": "p", "status": "skipped", "metrics": {}, "tests": []}))
    with pytest.raises(
        HardwareCheckError, match=r"ValueError: 'skipped' is not a valid HardwareStatus"
    ):
        read_result("p", report, tmp_path / "junit.xml")


def wide_activation_model(path: Path) -> Path:
    """features[N, 64] -> Tile to [N, 64, 4096] (1 MiB a row) -> ReduceMean -> MatMul -> Softmax:
    a model whose activations grow with the batch, as a conv net's do."""
    nodes = [
        helper.make_node("Unsqueeze", ["features", "axis2"], ["column"]),
        helper.make_node("Tile", ["column", "repeats"], ["wide"]),
        helper.make_node("ReduceMean", ["wide", "axis2"], ["back"], keepdims=0),
        helper.make_node("MatMul", ["back", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(IDENTITY, "W"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1, 1, 4096], dtype=np.int64), "repeats"),
    ]
    return save_classifier(path, nodes, inits)


def test_the_golden_set_runs_in_small_batches_under_a_memory_cap(work: Path) -> None:
    """400 golden rows of 1 MiB activations each would need 400 MiB in one batch, beyond the cap;
    a device runs small batches, and so does the suite."""
    x = np.random.default_rng(1).normal(size=(400, FEATURES)).astype(np.float32)
    golden = write_golden(x, np.argmax(x[:, :CLASSES], axis=1), work / "golden-400.npz")
    result = run_profile(
        wide_activation_model(work / "wide.onnx"),
        "capped",
        golden,
        work / "out" / "wide",
        suite_dir=SUITE,
        profiles_dir=work / "profiles",
        timeout_s=120,
    )
    assert result.passed, result.failures
    assert result.metrics["accuracy"] == 1.0 and result.metrics["peak_vm_mb"] < CAP_MB
