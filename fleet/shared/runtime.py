"""Inference on the device: an onnxruntime session configured from a hardware profile.

The hardware-tests suite, the offline evaluation and the agent all run models through here, so a
latency measured before registration is measured the way the device will run the model. The process
limits that emulate a smaller device (pinned cores, an address-space cap) live here too: they shape
how inference runs, and the suite applies them the same way on a build host and on a device.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fleet.shared.modelspec import ModelSpec, read_spec

MB = 1024 * 1024

# How onnxruntime, the C++ runtime and Python word an allocation that the address-space cap refused.
_ALLOCATION_FAILURES = (
    "bad_alloc",
    "failed to allocate",
    "cannot allocate memory",
    "out of memory",
)


class ProviderUnavailableError(RuntimeError):
    """Raised by :func:`open_session` when an execution provider is not in this onnxruntime build."""

    def __init__(self, message: str, *, missing: list[str], available: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.available = available


def missing_providers(providers: Iterable[str]) -> list[str]:
    """The providers of ``providers`` that this onnxruntime build does not offer, in order."""
    available = set(ort.get_available_providers())
    return [p for p in providers if p not in available]


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says memory could not be had (an address-space cap, or a device that is full)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _ALLOCATION_FAILURES)


def open_session(
    path: str, *, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """A session with ``threads`` intra-op threads, sequential execution, providers in order."""
    missing = missing_providers(providers)
    if missing:
        available = ort.get_available_providers()
        raise ProviderUnavailableError(
            f"execution provider(s) {missing} are not installed (available: {available})",
            missing=missing,
            available=available,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=list(providers))


def usable_cores() -> set[int]:
    """The cores this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def pin_to_cores(cores: Iterable[int]) -> None:
    """Run this process (and the threads it starts later) on ``cores`` only.

    Raises ``ValueError`` naming the cores this host does not have, and ``NotImplementedError``
    where the OS cannot pin (macOS, Windows).
    """
    wanted = set(cores)
    if not hasattr(os, "sched_setaffinity"):
        raise NotImplementedError(f"pinning to cores needs Linux (this is {sys.platform})")
    absent = sorted(wanted - usable_cores())
    if absent:
        raise ValueError(f"core(s) {absent} do not exist here (usable: {sorted(usable_cores())})")
    os.sched_setaffinity(0, wanted)


def address_space_cap_mb() -> float | None:
    """This process's address-space limit (RLIMIT_AS) in MB, or None when it has none."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft / MB


def cap_address_space(cap_mb: int) -> None:
    """Lower this process's address-space limit to ``cap_mb``; every later allocation counts.

    An address-space cap is how a small device is emulated: an allocation beyond it fails the way it
    fails on the device (``MemoryError``, ``std::bad_alloc``), instead of the host quietly swapping.
    Raises ``NotImplementedError`` where the OS has no RLIMIT_AS that is enforced (only Linux has).
    """
    if not sys.platform.startswith("linux"):
        raise NotImplementedError(f"a memory cap needs Linux's RLIMIT_AS (this is {sys.platform})")
    import resource

    current = address_space_cap_mb()
    if current is not None and current <= cap_mb:
        return  # already as tight (the build side set it before the interpreter started)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = cap_mb * MB if hard == resource.RLIM_INFINITY else min(cap_mb * MB, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def address_space_mb(field: str = "VmSize") -> float | None:
    """A ``/proc/self/status`` field in MB: ``VmSize`` (address space now), ``VmPeak``, ``VmHWM``.

    None off Linux. ``VmPeak`` is what an address-space cap is measured against.
    """
    if not sys.platform.startswith("linux"):
        return None
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / MB
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    On Linux ``ru_maxrss`` survives exec, so a suite started from a large parent (a flow with torch
    loaded) would report the parent's peak; ``VmHWM`` belongs to this process image alone.
    """
    peak = address_space_mb("VmHWM")
    if peak is not None:
        return peak
    if sys.platform == "darwin":
        import resource  # not on Windows

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB
    import psutil

    return float(psutil.Process().memory_info().rss) / MB


def host_arch() -> str:
    """``platform.machine()`` in the names profiles use (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_info() -> dict[str, Any]:
    """What a report needs to say where it was measured."""
    return {
        "platform": platform.platform(),
        "arch": host_arch(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cores": sorted(usable_cores()),
        "onnxruntime": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
        "address_space_cap_mb": address_space_cap_mb(),
    }


def scored_output(
    session: ort.InferenceSession, rows: np.ndarray, spec: ModelSpec, *, batch: int | None = None
) -> np.ndarray:
    """The raw values of the contract's scored output for flat ``rows`` (probabilities, logits or
    regression values, as the graph emits them); only that output is computed. With ``batch``,
    ``rows`` go through in chunks of that many, so the activations held at once are those of one
    chunk (a small device's memory cap is for the model, not for the size of a test set)."""
    wanted = [spec.scored.name]
    if batch is None or len(rows) <= batch:
        return np.asarray(session.run(wanted, spec.feed(rows))[0])
    parts = [
        np.asarray(session.run(wanted, spec.feed(rows[i : i + batch]))[0])
        for i in range(0, len(rows), batch)
    ]
    return np.concatenate(parts)


def predict(
    session: ort.InferenceSession, rows: np.ndarray, spec: ModelSpec | None = None
) -> np.ndarray:
    """Scores of one batch of flat ``rows`` as the contract defines them: class probabilities
    (softmax of logits) for a classifier, predicted values for a regressor; ``spec`` defaults to
    the one stored in the model."""
    spec = spec or read_spec(session)
    return spec.scores({spec.scored.name: scored_output(session, rows, spec)})


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
    session: ort.InferenceSession,
    rows: np.ndarray,
    *,
    warmup: int,
    runs: int,
    spec: ModelSpec | None = None,
) -> LatencyStats:
    """Batch-1 latency of the scored output; the rows are turned into the graph's inputs before
    the clock starts, so the figure is the model's alone."""
    spec = spec or read_spec(session)
    feeds = [spec.feed(rows[i : i + 1]) for i in range(len(rows))]
    wanted = [spec.scored.name]
    index = np.arange(len(feeds)).reshape(-1, 1)
    return time_batch1(
        lambda i: session.run(wanted, feeds[int(i[0, 0])]), index, warmup=warmup, runs=runs
    )
