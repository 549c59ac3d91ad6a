"""Latency histograms: one bucket layout, one quantile, for the device, the gates and the charts.

A device cannot ship every latency, so it counts them into fixed buckets (:data:`LATENCY_BOUNDS_MS`,
upper bounds inclusive, plus one overflow bucket) with a :class:`LatencyRecorder`; the telemetry report
carries the counts as a :class:`LatencyHistogram`. Histograms of many devices and windows add bucket by
bucket (:func:`merge_histograms`), and every quantile anywhere (the device's own latency-regression
detector, the canary's p95 gate, the dashboard's charts) is read off by :func:`quantile_ms`: linear
interpolation inside the bucket holding the rank, as Prometheus' ``histogram_quantile`` does. Defining
it once means the device and the controller agree on what "p95" is for the same counts.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

LATENCY_BOUNDS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
"""Upper bounds (inclusive) of the latency buckets; one more bucket counts everything above 1 s."""

MAX_BUCKETS = 64
"""Bounds one histogram may have: a report's histogram is bounded like everything else in it."""


class LatencyHistogram(BaseModel):
    """Inference latencies counted into buckets: ``counts[i]`` ≤ ``bounds_ms[i]``, the last is overflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bounds_ms: tuple[float, ...] = Field(LATENCY_BOUNDS_MS, min_length=1, max_length=MAX_BUCKETS)
    counts: tuple[int, ...] = Field(min_length=2, max_length=MAX_BUCKETS + 1)

    @model_validator(mode="after")
    def _shape(self) -> LatencyHistogram:
        if any(b <= a for a, b in zip(self.bounds_ms, self.bounds_ms[1:], strict=False)):
            raise ValueError("bounds_ms: bucket bounds must be strictly increasing")
        if self.bounds_ms[0] <= 0:
            raise ValueError("bounds_ms: bucket bounds must be positive")
        if len(self.counts) != len(self.bounds_ms) + 1:
            raise ValueError(
                f"counts: {len(self.counts)} counts for {len(self.bounds_ms)} bounds "
                f"(need one per bound plus the overflow bucket)"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("counts: must not be negative")
        return self

    @classmethod
    def empty(cls, bounds_ms: tuple[float, ...] = LATENCY_BOUNDS_MS) -> LatencyHistogram:
        """No samples, on ``bounds_ms``."""
        return cls(bounds_ms=bounds_ms, counts=(0,) * (len(bounds_ms) + 1))

    @classmethod
    def of(
        cls, latencies_ms: Iterable[float], bounds_ms: tuple[float, ...] = LATENCY_BOUNDS_MS
    ) -> LatencyHistogram:
        """The histogram of raw latencies (for agents, simulators and tests)."""
        counts = [0] * (len(bounds_ms) + 1)
        for value in latencies_ms:
            counts[next((i for i, b in enumerate(bounds_ms) if value <= b), len(bounds_ms))] += 1
        return cls(bounds_ms=bounds_ms, counts=tuple(counts))

    @property
    def total(self) -> int:
        """Number of latencies counted."""
        return sum(self.counts)


def merge_histograms(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram | None:
    """The bucket-wise sum; None for no histograms. Different bounds raise ValueError."""
    merged: LatencyHistogram | None = None
    for h in histograms:
        if merged is None:
            merged = h
            continue
        if h.bounds_ms != merged.bounds_ms:
            raise ValueError(f"bounds_ms: cannot merge {h.bounds_ms} into {merged.bounds_ms}")
        merged = LatencyHistogram(
            bounds_ms=merged.bounds_ms,
            counts=tuple(a + b for a, b in zip(merged.counts, h.counts, strict=True)),
        )
    return merged


def quantile_ms(histogram: LatencyHistogram, q: float) -> tuple[float, bool] | None:
    """``(estimate, overflow)`` of quantile ``q``; None when empty.

    Interpolates linearly inside the bucket holding the rank (the first bucket starts at 0). When the
    rank falls in the overflow bucket the estimate is the last bound and ``overflow`` is True: the true
    value is somewhere above it.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q: {q} is not in (0, 1]")
    total = histogram.total
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram.counts):
        if count and seen + count >= rank:
            if i == len(histogram.bounds_ms):
                return histogram.bounds_ms[-1], True
            low = histogram.bounds_ms[i - 1] if i else 0.0
            high = histogram.bounds_ms[i]
            return low + (high - low) * (rank - seen) / count, False
        seen += count
    raise AssertionError("unreachable: the counts add up to total")  # pragma: no cover


def p95_ms(histogram: LatencyHistogram) -> float | None:
    """The 95th percentile (:func:`quantile_ms`; the last bound when it lies in the overflow
    bucket); None when empty."""
    estimate = quantile_ms(histogram, 0.95)
    return None if estimate is None else estimate[0]


class LatencyRecorder:
    """Counts latencies into buckets as they happen (not thread-safe: its owner locks)."""

    def __init__(self, bounds_ms: Iterable[float] = LATENCY_BOUNDS_MS) -> None:
        self.bounds_ms = tuple(float(b) for b in bounds_ms)
        LatencyHistogram.empty(self.bounds_ms)  # the same checks on the bounds
        self.counts = [0] * (len(self.bounds_ms) + 1)

    def observe(self, value_ms: float) -> None:
        """Count one latency: into the first bucket whose bound is at least ``value_ms``."""
        self.counts[bisect.bisect_left(self.bounds_ms, value_ms)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> LatencyHistogram:
        """The counts so far, as the histogram a report carries."""
        return LatencyHistogram(bounds_ms=self.bounds_ms, counts=tuple(self.counts))

    def to_dict(self) -> dict[str, Any]:
        return {"bounds_ms": list(self.bounds_ms), "counts": list(self.counts)}
