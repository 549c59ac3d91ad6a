"""Who is what in a simulated fleet: hardware classes by fraction, and the fault plan.

Both are pure functions of the device ids and a seed, so a run can be repeated exactly and a unit test
can check them without a server. A fault hits a fraction of the devices inside a time window measured
from the start of the simulation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAULT_KINDS = ("offline", "crash", "slow", "corrupt", "drift")


@dataclass(frozen=True)
class FaultWindow:
    """A fault for ``fraction`` of the devices from ``start_s`` until ``end_s`` (simulation time)."""

    fraction: float
    start_s: float = 0.0
    end_s: float = math.inf

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction must be within [0, 1], got {self.fraction}")
        if self.end_s < self.start_s:
            raise ValueError(f"end_s ({self.end_s}) is before start_s ({self.start_s})")

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class FaultPlan:
    """Every fault is optional; see each field.

    - ``offline``: no requests inside the window; reports are buffered and sent on reconnect.
    - ``crash``: the device dies at ``start_s`` and restarts at ``end_s``, losing what it held in
      memory and keeping its disk (credential, downloaded models, the active model, its outbox).
    - ``slow``: latency multiplied by ``slow_factor`` inside the window.
    - ``corrupt``: downloads inside the window arrive with flipped bytes (the device must reject them).
    - ``drift``: inputs shifted by ``drift_shift`` and noised by ``drift_noise`` (in feature units),
      then clipped to ``drift_clip`` when given (a sensor saturates at its range: drifted inputs
      that stay valid for the model's input contract).
    """

    offline: FaultWindow | None = None
    crash: FaultWindow | None = None
    slow: FaultWindow | None = None
    corrupt: FaultWindow | None = None
    drift: FaultWindow | None = None
    slow_factor: float = 5.0
    drift_shift: float = 1.0
    drift_noise: float = 1.0
    drift_clip: tuple[float, float] | None = None

    def window(self, kind: str) -> FaultWindow | None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        found: FaultWindow | None = getattr(self, kind)
        return found

    def assign(self, device_ids: Sequence[str], seed: int) -> dict[str, frozenset[str]]:
        """Which devices each fault hits: ``round(fraction * n)`` of them, chosen by ``seed``."""
        out: dict[str, frozenset[str]] = {}
        for i, kind in enumerate(FAULT_KINDS):
            window = self.window(kind)
            if window is None or not device_ids:
                out[kind] = frozenset()
                continue
            rng = random.Random(seed * 1_000_003 + i)
            count = round(window.fraction * len(device_ids))
            out[kind] = frozenset(rng.sample(list(device_ids), count))
        return out

    def active(
        self, kind: str, device_id: str, hit: Mapping[str, frozenset[str]], t: float
    ) -> bool:
        window = self.window(kind)
        return window is not None and device_id in hit.get(kind, ()) and window.active(t)

    def boundaries(self, device_id: str, hit: Mapping[str, frozenset[str]]) -> list[float]:
        """The times at which this device's faults start or end (finite ones only), sorted."""
        edges: set[float] = set()
        for kind in FAULT_KINDS:
            window = self.window(kind)
            if window is not None and device_id in hit.get(kind, ()):
                edges.update(e for e in (window.start_s, window.end_s) if math.isfinite(e))
        return sorted(edges)


def assign_classes(n: int, classes: Mapping[str, float], seed: int) -> list[str]:
    """``n`` hardware classes in proportion to ``classes`` (largest remainder), shuffled by ``seed``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not classes or any(f < 0 for f in classes.values()) or sum(classes.values()) <= 0:
        raise ValueError(f"classes need positive fractions, got {dict(classes)}")
    total = sum(classes.values())
    names = sorted(classes)
    exact = {c: n * classes[c] / total for c in names}
    counts = {c: math.floor(exact[c]) for c in names}
    by_remainder = sorted(names, key=lambda c: (-(exact[c] - counts[c]), c))
    for c in by_remainder[: n - sum(counts.values())]:
        counts[c] += 1
    out = [c for c in names for _ in range(counts[c])]
    random.Random(seed).shuffle(out)
    return out


def parse_classes(text: str) -> dict[str, float]:
    """``"host-cpu:0.7,edge-small:0.3"`` -> ``{"host-cpu": 0.7, "edge-small": 0.3}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, frac = part.partition(":")
        if not sep or not name:
            raise ValueError(f"expected CLASS:FRACTION, got {part!r}")
        out[name.strip()] = float(frac)
    if not out:
        raise ValueError("no classes given")
    return out


def parse_faults(text: str) -> FaultPlan:
    """``"drift:0.1,slow:0.05"`` -> a plan hitting those fractions of the devices for the whole run."""
    windows: dict[str, FaultWindow] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, frac = part.partition(":")
        if not sep or kind.strip() not in FAULT_KINDS:
            raise ValueError(
                f"expected FAULT:FRACTION with FAULT one of {FAULT_KINDS}, got {part!r}"
            )
        try:
            windows[kind.strip()] = FaultWindow(float(frac))
        except ValueError as exc:
            raise ValueError(f"fault {part!r}: {exc}") from exc
    return FaultPlan(**windows)  # type: ignore[arg-type]
