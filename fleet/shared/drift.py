"""On-device detection: input drift, prediction shift, latency regression and error bursts.

Each detector compares what the device sees now with a reference and raises a :class:`DriftFinding`
(kind, value, threshold, window) that travels with the next telemetry report; a
:class:`DetectorPolicy` says which local action an event calls for (``fallback``: serve the previous
slot's model again).

Input drift is measured by the population stability index (PSI) of each feature (of an image: of
each channel's mean and spread, :func:`channel_stats`) against the training reference: per-feature bin edges (deciles of the training split) and the share of training rows in
each bin, computed once at registration (:func:`build_reference`) and shipped with the variant.
``PSI = sum((a - e) * ln(a / e))`` over the bins, ``e`` the reference share and ``a`` the share seen
on the device, both floored at ``PSI_FLOOR`` so an empty bin is finite. Rules of thumb: below 0.1 no
change, 0.1 to 0.25 a moderate one, above 0.25 a significant one. The same index over predicted
classes measures a prediction-distribution shift. Latency regression compares each window's p95 with
the device's own baseline (the median p95 of its first windows); an error burst is a window whose
error rate and error count both pass their limits.

Sampling noise alone gives a PSI of about ``chi2(bins - 1) * (1/n + 1/n_ref)`` for ``n`` device
rows against ``n_ref`` reference rows, and a device checks every feature in every window, so a
fixed threshold alone raises false alarms on small windows. A feature counts as drifted only when
its PSI passes both ``psi_threshold`` and :func:`chance_psi` at ``policy.chance_z`` (the upper tail
of that chi-square, by the Wilson-Hilferty approximation). The device's bin counts get half a count
each (additive smoothing) so a bin it happened not to see adds no spurious mass.

numpy only: this runs on the device.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

PSI_FLOOR = 1e-4
"""Shares are floored here before the logarithm; it bounds PSI by about ``2 * ln(1 / PSI_FLOOR)``."""
PSI_MAX = 2 * math.log(1 / PSI_FLOOR) + 1
"""No honest PSI is larger; the controller rejects a report that claims one."""

EventKind = Literal["input_drift", "prediction_drift", "latency_regression", "error_burst"]
LocalAction = Literal["none", "fallback"]


# --- the reference ---------------------------------------------------------------------------


def channel_stats(rows: np.ndarray, image: Sequence[int]) -> np.ndarray:
    """Per image (a flat row of an NCHW ``[C, H, W]`` image) and per channel: the mean and the
    standard deviation of its pixels, ``2 * C`` values in all. Brightness, contrast and exposure
    shifts move these; one PSI per pixel would cost a small device thousands of histograms and
    raise alarms on noise."""
    c, h, w = (int(d) for d in image)
    pixels = np.asarray(rows, dtype=np.float64).reshape(len(rows), c, h * w)
    return np.concatenate([pixels.mean(axis=2), pixels.std(axis=2)], axis=1)


def channel_stat_names(channels: int) -> tuple[str, ...]:
    return tuple(f"c{i}.mean" for i in range(channels)) + tuple(
        f"c{i}.std" for i in range(channels)
    )


def _image_shape(value: Any) -> tuple[int, int, int] | None:
    if not value:
        return None
    c, h, w = (int(v) for v in value)
    if min(c, h, w) < 1:
        raise ValueError(f"a drift reference's image shape must be positive, got {value}")
    return c, h, w


@dataclass(frozen=True)
class DriftReference:
    """Per feature: the inner bin edges and the training share of each bin; and the share of each
    predicted class on the training split (empty when unknown)."""

    edges: tuple[tuple[float, ...], ...]
    shares: tuple[tuple[float, ...], ...]
    class_shares: tuple[float, ...] = ()
    feature_names: tuple[str, ...] = ()
    rows: int = 0
    """Training rows the shares come from (0: unknown, read as many)."""
    image: tuple[int, int, int] | None = None
    """Set for an image input (``[C, H, W]``, NCHW): the reference is over :func:`channel_stats`
    of each image (a mean and a spread per channel) instead of one PSI per pixel."""

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.shares) or not self.edges:
            raise ValueError("a drift reference needs edges and shares for each feature")
        for e, s in zip(self.edges, self.shares, strict=True):
            if len(s) != len(e) + 1:
                raise ValueError("each feature needs one share per bin (edges + 1)")
        if self.feature_names and len(self.feature_names) != len(self.edges):
            raise ValueError("feature_names must name every feature")

    @property
    def features(self) -> int:
        return len(self.edges)

    def name(self, index: int) -> str:
        return self.feature_names[index] if self.feature_names else f"f{index}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": [list(e) for e in self.edges],
            "shares": [list(s) for s in self.shares],
            "class_shares": list(self.class_shares),
            "feature_names": list(self.feature_names),
            "rows": self.rows,
            **({"image": list(self.image)} if self.image else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        return cls(
            edges=tuple(tuple(float(v) for v in e) for e in data["edges"]),
            shares=tuple(tuple(float(v) for v in s) for s in data["shares"]),
            class_shares=tuple(float(v) for v in data.get("class_shares", ())),
            feature_names=tuple(str(n) for n in data.get("feature_names", ())),
            rows=int(data.get("rows", 0)),
            image=_image_shape(data.get("image")),
        )

    def summarise(self, rows: np.ndarray) -> np.ndarray:
        """What the reference is over: the rows themselves, or each image's channel statistics."""
        return rows if self.image is None else channel_stats(rows, self.image)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        return cls.from_dict(json.loads(path.read_text()))


def build_reference(
    x: np.ndarray,
    *,
    predictions: np.ndarray | None = None,
    classes: int = 0,
    bins: int = 10,
    feature_names: Sequence[str] = (),
    image: Sequence[int] | None = None,
) -> DriftReference:
    """The reference of a training split ``x`` (n by d): quantile edges per feature (repeated
    quantiles merged) and the training share of each bin; with ``predictions`` (class indices) and
    ``classes``, the share of each predicted class too. With ``image`` (``[C, H, W]``) the
    features are each image's :func:`channel_stats`, not its pixels."""
    x = np.asarray(x, dtype=np.float64)
    shape = _image_shape(image)
    if shape is not None:
        x = channel_stats(x, shape)
        feature_names = channel_stat_names(shape[0])
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"the training split must be a non-empty n by d array, got {x.shape}")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    edges: list[tuple[float, ...]] = []
    shares: list[tuple[float, ...]] = []
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    for column in x.T:
        e = np.unique(np.quantile(column[np.isfinite(column)], qs))
        edges.append(tuple(float(v) for v in e))
        shares.append(tuple(float(v) for v in bin_shares(column, e)))
    class_shares: tuple[float, ...] = ()
    if predictions is not None and classes > 0:
        counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=classes)[:classes]
        class_shares = tuple(float(v) for v in counts / max(1, counts.sum()))
    return DriftReference(
        tuple(edges), tuple(shares), class_shares, tuple(feature_names), rows=len(x), image=shape
    )


def bin_counts(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Counts per bin: bin ``i`` holds values in ``(edges[i-1], edges[i]]``; non-finite values are
    left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return np.bincount(np.searchsorted(np.asarray(edges), v, side="left"), minlength=len(edges) + 1)


def bin_shares(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    counts = bin_counts(values, edges)
    return counts / max(1, counts.sum())


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of ``actual`` shares (or counts) against ``expected`` shares."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"psi needs two share vectors of one length, got {e.shape} and {a.shape}")
    a = a / a.sum() if a.sum() > 0 else a
    e = np.clip(e, PSI_FLOOR, None)
    a = np.clip(a, PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def chance_psi(bins: int, rows: int, reference_rows: int, z: float) -> float:
    """The PSI that sampling noise alone passes with about the normal tail probability of ``z``,
    for ``rows`` device rows in ``bins`` bins against ``reference_rows`` (0: unknown, left out)."""
    if bins < 2 or rows <= 0:
        return 0.0
    df = bins - 1
    c = 2 / (9 * df)
    quantile = df * max(0.0, 1 - c + z * math.sqrt(c)) ** 3
    return quantile * (1 / rows + (1 / reference_rows if reference_rows > 0 else 0.0))


# --- events and policy -----------------------------------------------------------------------


@dataclass(frozen=True)
class DriftFinding:
    """What a detector found; ``feature`` names the input for input drift.

    :meth:`to_dict` is what travels: the telemetry report carries it as a
    :class:`fleet.shared.protocol.DeviceEvent`, the wire model the controller validates.
    """

    kind: EventKind
    value: float
    threshold: float
    window_s: float
    feature: str | None = None
    action: LocalAction = "none"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "value": round(self.value, 6),
            "threshold": self.threshold,
            "window_s": round(self.window_s, 3),
            "action": self.action,
        }
        if self.feature is not None:
            out["feature"] = self.feature
        return out


@dataclass(frozen=True)
class DetectorPolicy:
    """Thresholds of the detectors and the local action each event kind calls for."""

    psi_threshold: float = 0.25
    chance_z: float = 5.0
    min_rows: int = 500
    max_features_reported: int = 3
    prediction_psi_threshold: float = 0.25
    latency_factor: float = 2.0
    baseline_windows: int = 5
    error_rate: float = 0.2
    min_errors: int = 5
    on_input_drift: LocalAction = "none"
    on_prediction_drift: LocalAction = "none"
    on_latency_regression: LocalAction = "none"
    on_error_burst: LocalAction = "fallback"

    def action_for(self, kind: EventKind) -> LocalAction:
        action: LocalAction = getattr(self, f"on_{kind}")
        return action


# --- the detectors ---------------------------------------------------------------------------


@dataclass
class _Accumulator:
    started_at: float
    rows: int = 0
    counts: list[np.ndarray] = field(default_factory=list)
    predicted: np.ndarray | None = None


class DeviceDetector:
    """Every detector of one device. Feed it with :meth:`observe_inputs`, :meth:`observe_predictions`
    and :meth:`observe_window`; :meth:`take_events` returns (and forgets) what was raised since the
    last call. Input and prediction PSI are evaluated every ``policy.min_rows`` rows. Thread-safe:
    the predict server feeds it from many threads while the agent loop takes the events."""

    def __init__(
        self,
        reference: DriftReference,
        policy: DetectorPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self.policy = policy or DetectorPolicy()
        self._clock = clock
        self._acc = self._fresh()
        self._p95_history: list[float] = []
        self._events: list[DriftFinding] = []
        self._lock = threading.Lock()

    def _fresh(self) -> _Accumulator:
        return _Accumulator(
            started_at=self._clock(),
            counts=[np.zeros(len(e) + 1, dtype=np.int64) for e in self.reference.edges],
            predicted=np.zeros(len(self.reference.class_shares), dtype=np.int64),
        )

    def _raise(
        self,
        kind: EventKind,
        value: float,
        threshold: float,
        window_s: float,
        feature: str | None = None,
    ) -> None:
        action = self.policy.action_for(kind)
        self._events.append(DriftFinding(kind, value, threshold, window_s, feature, action))

    def observe_inputs(self, x: np.ndarray) -> None:
        """Rows the model scored; rows of another width than the reference are ignored."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        image = self.reference.image
        if image is not None:
            if rows.ndim != 2 or rows.shape[1] != image[0] * image[1] * image[2]:
                return
            rows = channel_stats(rows, image)
        if rows.ndim != 2 or rows.shape[1] < self.reference.features:
            return
        counts = [bin_counts(rows[:, i], e) for i, e in enumerate(self.reference.edges)]
        with self._lock:
            for total, c in zip(self._acc.counts, counts, strict=True):
                total += c
            self._acc.rows += len(rows)
            if self._acc.rows >= self.policy.min_rows:
                self._evaluate_distributions()

    def observe_predictions(self, classes: np.ndarray) -> None:
        """Predicted class indices; classes the reference does not know are ignored."""
        k = len(self.reference.class_shares)
        if k == 0 or self._acc.predicted is None:
            return
        c = np.asarray(classes, dtype=np.int64).ravel()
        c = c[(c >= 0) & (c < k)]
        with self._lock:
            self._acc.predicted += np.bincount(c, minlength=k)[:k]

    def _evaluate_distributions(self) -> None:
        acc, policy, ref = self._acc, self.policy, self.reference
        window_s = max(0.0, self._clock() - acc.started_at)
        drifted: list[tuple[float, float, int]] = []
        for i in range(ref.features):
            counts = acc.counts[i]
            limit = max(
                policy.psi_threshold,
                chance_psi(len(counts), int(counts.sum()), ref.rows, policy.chance_z),
            )
            score = psi(ref.shares[i], counts + 0.5)
            if score > limit:
                drifted.append((score, limit, i))
        for score, limit, i in sorted(drifted, reverse=True)[: policy.max_features_reported]:
            self._raise("input_drift", score, round(limit, 4), window_s, ref.name(i))
        if acc.predicted is not None and acc.predicted.sum() >= policy.min_rows:
            score = psi(ref.class_shares, acc.predicted)
            if score > policy.prediction_psi_threshold:
                self._raise("prediction_drift", score, policy.prediction_psi_threshold, window_s)
        self._acc = self._fresh()

    def observe_window(
        self, *, inferences: int, errors: int, p95_ms: float | None, window_s: float
    ) -> None:
        """One telemetry window: its counts and latency p95 (None when nothing was timed)."""
        with self._lock:
            policy = self.policy
            if (
                errors >= policy.min_errors
                and inferences > 0
                and errors / inferences >= policy.error_rate
            ):
                self._raise("error_burst", errors / inferences, policy.error_rate, window_s)
            if p95_ms is None or not math.isfinite(p95_ms):
                return
            history = self._p95_history
            if len(history) < policy.baseline_windows:
                history.append(p95_ms)
                return
            limit = float(np.median(history)) * policy.latency_factor
            if p95_ms > limit:
                self._raise("latency_regression", p95_ms, limit, window_s)

    def take_events(self) -> list[DriftFinding]:
        with self._lock:
            events, self._events = self._events, []
        return events


def local_action(events: Sequence[DriftFinding]) -> LocalAction:
    """``fallback`` when any event calls for it, else ``none``."""
    return "fallback" if any(e.action == "fallback" for e in events) else "none"
