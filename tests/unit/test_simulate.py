"""The fleet simulator's pure parts, without a server: class and fault assignment, the regressed
variants (real ONNX run by onnxruntime) and the shared session cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.simulate import (
    FaultPlan,
    FaultWindow,
    SessionCache,
    assign_classes,
    make_regressed_variant,
)
from fleet.simulate.faults import parse_classes

FEATURES, CLASSES = 64, 10


def write_model(path: Path, weights: np.ndarray) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def task() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(FEATURES, CLASSES))
    x = rng.integers(0, 17, size=(2000, FEATURES)).astype(np.float32)
    return w, x, (x @ w).argmax(axis=1)


def accuracy(cache: SessionCache, path: Path, x: np.ndarray, y: np.ndarray) -> float:
    scores, _ = cache.run(cache.get(path.name, path), x)
    return float((scores.argmax(axis=1) == y).mean())


def test_classes_by_fraction_are_deterministic_by_seed() -> None:
    a = assign_classes(100, {"host-cpu": 0.7, "edge-small": 0.3}, seed=1)
    assert a == assign_classes(100, {"host-cpu": 0.7, "edge-small": 0.3}, seed=1)
    assert a != assign_classes(100, {"host-cpu": 0.7, "edge-small": 0.3}, seed=2)
    assert (a.count("host-cpu"), a.count("edge-small")) == (70, 30)
    assert sorted(assign_classes(3, {"a": 1, "b": 1}, 0)) in (["a", "a", "b"], ["a", "b", "b"])
    assert parse_classes("host-cpu:0.7, edge-small:0.3") == {"host-cpu": 0.7, "edge-small": 0.3}
    with pytest.raises(ValueError):
        parse_classes("host-cpu")
    with pytest.raises(ValueError):
        assign_classes(5, {}, 0)


def test_fault_windows_hit_a_fraction_inside_their_window() -> None:
    plan = FaultPlan(offline=FaultWindow(0.25, 2.0, 5.0), corrupt=FaultWindow(0.5))
    ids = [f"d{i}" for i in range(20)]
    hit = plan.assign(ids, seed=3)
    assert hit == plan.assign(ids, seed=3)
    assert len(hit["offline"]) == 5 and len(hit["corrupt"]) == 10 and not hit["crash"]
    device = sorted(hit["offline"])[0]
    assert [plan.active("offline", device, hit, t) for t in (1.9, 2.0, 4.9, 5.0)] == [
        False,
        True,
        True,
        False,
    ]
    spared = next(d for d in ids if d not in hit["offline"])
    assert not plan.active("offline", spared, hit, 3.0)
    assert plan.boundaries(device, hit) == [2.0, 5.0]
    with pytest.raises(ValueError):
        FaultWindow(1.5)
    with pytest.raises(ValueError):
        FaultWindow(0.5, 3.0, 1.0)


def test_accuracy_regression_is_valid_same_shapes_and_worse(
    tmp_path: Path, task: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    w, x, y = task
    good = write_model(tmp_path / "good.onnx", w)
    bad = make_regressed_variant(good, tmp_path / "bad.onnx", "accuracy", share=0.5)
    onnx.checker.check_model(onnx.load(str(bad)))
    cache = SessionCache()
    s_good, s_bad = cache.get("good", good), cache.get("bad", bad)
    assert [(i.name, i.shape) for i in s_bad.get_inputs()] == [
        (i.name, i.shape) for i in s_good.get_inputs()
    ]
    assert [(o.name, o.shape) for o in s_bad.get_outputs()] == [
        (o.name, o.shape) for o in s_good.get_outputs()
    ]
    assert accuracy(cache, good, x, y) == 1.0
    worse = accuracy(cache, bad, x, y)
    assert 0.35 < worse < 0.65, worse  # about half the rows rotated
    again, _ = cache.run(s_bad, x[:50])
    assert np.array_equal(again, cache.run(s_bad, x[:50])[0])  # the same row, the same answer


def test_latency_regression_same_answers_and_slower(
    tmp_path: Path, task: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    w, x, _ = task
    good = write_model(tmp_path / "good.onnx", w)
    slow = make_regressed_variant(good, tmp_path / "slow.onnx", "latency", layers=4, width=512)
    cache = SessionCache()
    s_good, s_slow = cache.get("good", good), cache.get("slow", slow)
    batch = x[:20]
    p_good, _ = cache.run(s_good, batch)
    p_slow, _ = cache.run(s_slow, batch)
    assert np.array_equal(p_good, p_slow)

    def best_ms(session: Any) -> float:
        return min(cache.run(session, batch)[1] for _ in range(5))

    assert best_ms(s_slow) > 5 * best_ms(s_good)
    nonsense: Any = "nonsense"
    with pytest.raises(ValueError):
        make_regressed_variant(good, tmp_path / "x.onnx", nonsense)


def test_devices_on_the_same_bytes_share_one_session(
    tmp_path: Path, task: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    w, x, _ = task
    path = write_model(tmp_path / "m.onnx", w)
    cache = SessionCache()
    assert cache.get("sha-a", path) is cache.get("sha-a", path)
    assert cache.loads == 1
    cache.get("sha-b", path)
    assert cache.loads == 2 and len(cache) == 2

    import asyncio

    async def two_devices() -> None:
        await asyncio.gather(*(cache.predict("sha-a", path, x[:5]) for _ in range(2)))

    started = time.perf_counter()
    asyncio.run(two_devices())
    assert cache.loads == 2 and time.perf_counter() - started < 5
    cache.close()
