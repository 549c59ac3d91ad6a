"""Shadow comparison on a device: the stable model scores a sampled share of the canary's real inputs.

During a canary the controller's desired state carries a :class:`~fleet.shared.protocol.ShadowPlan`:
the stable version to run beside the canary, the share of rows to sample, a CPU budget and, for
regressors, a tolerance. The device keeps serving from the canary alone; the sampled rows are scored
by the stable model too, off the serving path, and the two answers are compared row by row:

* a classifier's row **agrees** when both models pick the same top class;
* a regressor's row agrees when every output value differs by at most ``tolerance``.

The counts (:class:`ShadowTally`) go out with the canary's telemetry window as a
:class:`~fleet.shared.protocol.ShadowReport`. They are paired (both answers come from the same input),
need no label, and feed the controller's ``agreement`` and ``prediction_shift`` gates.

The device enforces the budget itself (:class:`ShadowBudget`): shadow inference may use at most
``cpu_budget`` of the time spent serving. A sampled row over budget is **skipped** and counted; a
shadow inference that raises is **failed** and counted. Neither ever reaches the caller of ``predict``.
The agent and the simulator both use this module, so "agree" means one thing across the fleet.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleet.shared.modelspec import Task


def disagreements(
    canary: np.ndarray, stable: np.ndarray, *, task: Task, tolerance: float
) -> np.ndarray:
    """One bool per row: True where the two scored outputs (``(n, width)``) disagree."""
    if canary.shape != stable.shape:
        raise ValueError(
            f"the canary's output {canary.shape} and the stable model's {stable.shape} differ "
            "in shape: the two versions do not answer the same question"
        )
    if task is Task.REGRESSION:
        diff = np.abs(canary.astype(np.float64) - stable.astype(np.float64))
        return np.asarray((diff > tolerance).reshape(len(canary), -1).any(axis=1))
    return np.asarray(canary.argmax(axis=1) != stable.argmax(axis=1))


def sample_rows(rng: np.random.Generator, rows: int, rate: float) -> np.ndarray:
    """Indices of the rows (of ``rows``) to score in shadow, each drawn with probability ``rate``."""
    return np.flatnonzero(rng.random(rows) < rate)


@dataclass
class ShadowTally:
    """The paired counts of one telemetry window against one stable version (not thread-safe: the
    window that holds it locks around every change)."""

    against: str
    compared: int = 0
    disagreed: int = 0
    failed: int = 0
    skipped: int = 0
    busy_ms: float = 0.0
    canary_classes: Counter[str] = field(default_factory=Counter)
    stable_classes: Counter[str] = field(default_factory=Counter)

    def add(
        self,
        canary: np.ndarray,
        stable: np.ndarray,
        *,
        task: Task,
        tolerance: float,
        busy_ms: float,
    ) -> None:
        """Compare the scored outputs of the same rows and count them."""
        differ = disagreements(canary, stable, task=task, tolerance=tolerance)
        self.compared += len(differ)
        self.disagreed += int(differ.sum())
        self.busy_ms += busy_ms
        if task is Task.CLASSIFICATION:
            self.canary_classes.update(str(int(c)) for c in canary.argmax(axis=1))
            self.stable_classes.update(str(int(c)) for c in stable.argmax(axis=1))

    def fail(self, rows: int, busy_ms: float = 0.0) -> None:
        """``rows`` sampled rows on which the shadow model raised."""
        self.failed += rows
        self.busy_ms += busy_ms

    def skip(self, rows: int) -> None:
        """``rows`` sampled rows not scored: over budget, or the shadow queue was full."""
        self.skipped += rows

    def to_dict(self) -> dict[str, Any]:
        """The wire form, a :class:`~fleet.shared.protocol.ShadowReport`."""
        return {
            "against": self.against,
            "compared": self.compared,
            "disagreed": self.disagreed,
            "failed": self.failed,
            "skipped": self.skipped,
            "busy_ms": round(self.busy_ms, 3),
            "canary_classes": dict(self.canary_classes),
            "stable_classes": dict(self.stable_classes),
        }


class ShadowBudget:
    """Shadow time at most ``cpu_budget`` of serving time, counted since the plan began.

    :meth:`allows` is asked before a shadow inference; the first one always runs (nothing to compare
    with yet), after that only while ``shadow_ms <= cpu_budget * served_ms``. Thread-safe.
    """

    def __init__(self, cpu_budget: float) -> None:
        if not 0 < cpu_budget <= 1:
            raise ValueError(f"cpu_budget must be in (0, 1], got {cpu_budget}")
        self.cpu_budget = cpu_budget
        self.served_ms = 0.0
        self.shadow_ms = 0.0
        self._lock = threading.Lock()

    def served(self, ms: float) -> None:
        """Serving time spent by the canary."""
        with self._lock:
            self.served_ms += ms

    def spent(self, ms: float) -> None:
        """Time spent in shadow inference."""
        with self._lock:
            self.shadow_ms += ms

    def allows(self) -> bool:
        """Whether another shadow inference fits the budget."""
        with self._lock:
            return self.shadow_ms <= self.cpu_budget * self.served_ms
