"""fleet.shared.runtime: sessions, predictions, batch-1 latency, process limits and host facts."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.shared.runtime import (
    LatencyStats,
    ProviderUnavailableError,
    address_space_mb,
    host_arch,
    host_info,
    is_allocation_failure,
    missing_providers,
    open_session,
    peak_rss_mb,
    predict,
    session_latency,
    time_batch1,
    usable_cores,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """features [N, 4] -> MatMul(identity-like) -> Softmax -> probabilities [N, 3]."""
    weights = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_latency_stats_from_known_samples() -> None:
    seconds = np.arange(1, 101) / 1000.0  # 1 ms .. 100 ms
    stats = LatencyStats.from_samples(seconds)
    assert stats.runs == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.throughput_per_s == pytest.approx(100 / 5.05)
    assert all(isinstance(v, float) for v in (stats.p50_ms, stats.p95_ms, stats.mean_ms))


def test_latency_stats_constant_samples() -> None:
    stats = LatencyStats.from_samples(np.full(10, 0.002))
    assert stats.p50_ms == stats.p95_ms == stats.p99_ms == pytest.approx(2.0)
    assert stats.throughput_per_s == pytest.approx(500.0)


def test_missing_provider_is_named(model_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"\['NoSuchExecutionProvider'\] are not installed"):
        open_session(str(model_path), providers=("CPUExecutionProvider", "NoSuchExecutionProvider"))


def test_session_options(model_path: Path) -> None:
    session = open_session(str(model_path), threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_predict_casts_and_returns_probabilities(model_path: Path) -> None:
    session = open_session(str(model_path))
    features = np.array([[5.0, 0, 0, 9], [0, 0, 5, 0]], dtype=np.float64)
    out = predict(session, features)
    assert out.dtype == np.float32
    assert out.shape == (2, 3)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert out.argmax(axis=1).tolist() == [0, 2]


def test_time_batch1_calls_warmup_plus_runs_with_single_rows() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen: list[np.ndarray] = []
    stats = time_batch1(seen.append, rows, warmup=4, runs=7)
    assert len(seen) == 4 + 7
    assert all(row.shape == (1, 4) for row in seen)
    # Cycles through the rows, warm-up and timed runs each from the first row.
    firsts = [int(row[0, 0]) for row in seen]
    assert firsts[:4] == [0, 4, 8, 0]  # warm-up
    assert firsts[4:] == [0, 4, 8, 0, 4, 8, 0]  # timed
    assert stats.runs == 7
    assert stats.p50_ms >= 0


def test_time_batch1_without_warmup() -> None:
    calls: list[int] = []
    stats = time_batch1(lambda row: calls.append(1), np.zeros((2, 3)), warmup=0, runs=10)
    assert len(calls) == 10
    assert stats.runs == 10


def test_session_latency(model_path: Path) -> None:
    session = open_session(str(model_path))
    rows = np.random.default_rng(0).standard_normal((5, 4))  # float64: cast to float32
    stats = session_latency(session, rows, warmup=2, runs=20)
    assert stats.runs == 20
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.throughput_per_s > 0


def test_missing_provider_error_carries_what_is_missing_and_available(model_path: Path) -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        open_session(str(model_path), providers=("NoSuchExecutionProvider",))
    assert caught.value.missing == ["NoSuchExecutionProvider"]
    assert caught.value.available == ort.get_available_providers()
    assert missing_providers(["CPUExecutionProvider", "NoSuchExecutionProvider", "Nope"]) == [
        "NoSuchExecutionProvider",
        "Nope",
    ]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), True),
        (
            RuntimeError(
                "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:std::bad_alloc"
            ),
            True,
        ),
        (
            RuntimeError(
                "BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer"
            ),
            True,
        ),
        (OSError(12, "Cannot allocate memory"), True),
        (RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model"), False),
        (ValueError("shape mismatch"), False),
    ],
)
def test_is_allocation_failure(exc: BaseException, expected: bool) -> None:
    assert is_allocation_failure(exc) is expected


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Process limits are for the process that sets them, so each check runs in a child."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux")
def test_pin_to_cores() -> None:
    core = min(usable_cores())
    proc = run_python(
        "import os; from fleet.shared.runtime import pin_to_cores, usable_cores\n"
        f"pin_to_cores([{core}]); print(sorted(os.sched_getaffinity(0)), sorted(usable_cores()))\n"
        "try:\n    pin_to_cores([4095])\nexcept ValueError as e:\n    print(e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"[{core}] [{core}]"
    assert lines[1] == f"core(s) [4095] do not exist here (usable: [{core}])"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_cap_address_space_makes_a_large_allocation_fail() -> None:
    proc = run_python(
        "import numpy as np; from fleet.shared.runtime import address_space_cap_mb, cap_address_space\n"
        "assert address_space_cap_mb() is None\n"
        "np.ones(50 * 2**20 // 8)\n"
        "cap_address_space(1024); cap_address_space(4096)  # the tighter one holds\n"
        "print(address_space_cap_mb())\n"
        "try:\n    np.ones(2 * 2**30 // 8)\nexcept MemoryError:\n    print('MemoryError')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1024.0", "MemoryError"]


def test_memory_readings() -> None:
    if sys.platform.startswith("linux"):
        size, peak = address_space_mb("VmSize"), address_space_mb("VmPeak")
        assert size is not None and peak is not None and 0 < size <= peak
        assert address_space_mb("NoSuchField") is None
    assert 0 < peak_rss_mb() < 100_000


def test_host_info_says_where_it_was_measured() -> None:
    info = host_info()
    assert info["onnxruntime"] == ort.__version__
    assert info["available_providers"] == ort.get_available_providers()
    assert info["cpu_count"] == os.cpu_count()
    assert info["usable_cores"] == sorted(usable_cores())
    assert info["arch"] == host_arch() and host_arch() in {"x86_64", "aarch64", "armv7l", "riscv64"}
    assert isinstance(info["platform"], str) and info["platform"]
