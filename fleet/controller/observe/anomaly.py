"""Anomaly detection over the controller's aggregated series: the robust z-score (median/MAD).

For a history ``h`` of past windows and a new value ``x``::

    z = 0.6745 * (x - median(h)) / max(MAD(h), floor)      MAD(h) = median(|h - median(h)|)

0.6745 makes the MAD a consistent estimate of the standard deviation for normal data, so ``|z| > 3.5``
(Iglewicz and Hoaglin's cut-off) flags a value about 3.5 standard deviations out, while a few outliers
in the history move neither the median nor the MAD. ``floor`` (``min_scale`` plus ``rel_scale`` of
``|median|``) keeps a perfectly flat history from turning the tiniest wobble into an alert; a flat
series whose new value equals it has ``z = 0`` and never alerts. ``direction`` keeps only the side
that hurts (latency and error rate up, accuracy down). ``min_change`` is the smallest move from the
median worth an alert, in the metric's unit: a very steady series (a p95 of 0.10 ms) otherwise alerts
on moves nobody would act on (0.16 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

MAD_TO_SIGMA = 0.6745

Direction = Literal["up", "down", "both"]


@dataclass(frozen=True)
class RobustZ:
    """The median/MAD detector; ``min_history`` windows are needed before it says anything."""

    threshold: float = 3.5
    min_history: int = 8
    min_scale: float = 1e-9
    rel_scale: float = 0.01
    direction: Direction = "up"
    min_change: float = 0.0

    def center_scale(self, history: Sequence[float]) -> tuple[float, float] | None:
        """``(median, max(MAD, floor))`` of the finite history; None while it is too short."""
        h = np.asarray([v for v in history if np.isfinite(v)], dtype=np.float64)
        if len(h) < self.min_history:
            return None
        median = float(np.median(h))
        mad = float(np.median(np.abs(h - median)))
        return median, max(mad, self.min_scale + self.rel_scale * abs(median))

    def score(self, history: Sequence[float], value: float) -> float | None:
        """The robust z of ``value`` against ``history``; None while the history is too short."""
        found = self.center_scale(history)
        if found is None or not np.isfinite(value):
            return None
        median, scale = found
        return MAD_TO_SIGMA * (float(value) - median) / scale

    def is_anomaly(self, history: Sequence[float], value: float) -> bool:
        z = self.score(history, value)
        found = self.center_scale(history)
        if z is None or found is None or abs(float(value) - found[0]) < self.min_change:
            return False
        if self.direction == "up":
            return z > self.threshold
        if self.direction == "down":
            return z < -self.threshold
        return abs(z) > self.threshold

    def limit(self, history: Sequence[float]) -> float | None:
        """The value above (or below, for ``down``) which a new value is an anomaly."""
        found = self.center_scale(history)
        if found is None:
            return None
        median, scale = found
        step = max(self.threshold * scale / MAD_TO_SIGMA, self.min_change)
        return median - step if self.direction == "down" else median + step
