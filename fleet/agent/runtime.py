"""Inference on the device: an onnxruntime session configured from a hardware profile.

The hardware-tests suite, the offline evaluation and the agent all run models through here, so a
latency measured before registration is measured the way the device will run the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


def open_session(
    path: str, *, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """A session with ``threads`` intra-op threads, sequential execution, providers in order."""
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise RuntimeError(
            f"execution provider(s) {missing} are not installed "
            f"(available: {ort.get_available_providers()})"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=list(providers))


def predict(session: ort.InferenceSession, features: np.ndarray) -> np.ndarray:
    """Run one batch; the first input and output are the model's features and probabilities."""
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: features.astype(np.float32, copy=False)})[0])


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency over ``runs`` timed inferences, after warm-up."""

    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float

    @classmethod
    def from_samples(cls, seconds: np.ndarray) -> LatencyStats:
        ms = seconds * 1e3
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(
            runs=len(ms),
            p50_ms=float(p50),
            p95_ms=float(p95),
            p99_ms=float(p99),
            mean_ms=float(ms.mean()),
            throughput_per_s=float(len(ms) / seconds.sum()),
        )


def time_batch1(
    call: Callable[[np.ndarray], object], rows: np.ndarray, *, warmup: int, runs: int
) -> LatencyStats:
    """Time ``call(row)`` one row at a time, cycling through ``rows``, after ``warmup`` calls."""
    if len(rows) < 1 or runs < 1:
        raise ValueError(
            f"time_batch1 needs at least one row and one run (got {len(rows)}, {runs})"
        )
    singles = [rows[i : i + 1] for i in range(len(rows))]
    for i in range(warmup):
        call(singles[i % len(singles)])
    samples = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        row = singles[i % len(singles)]
        start = clock()
        call(row)
        samples[i] = clock() - start
    return LatencyStats.from_samples(samples)


def session_latency(
    session: ort.InferenceSession, rows: np.ndarray, *, warmup: int, runs: int
) -> LatencyStats:
    name = session.get_inputs()[0].name
    rows = rows.astype(np.float32, copy=False)
    return time_batch1(lambda row: session.run(None, {name: row}), rows, warmup=warmup, runs=runs)
