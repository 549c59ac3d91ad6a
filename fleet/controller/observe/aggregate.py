"""Aggregation: the fleet's telemetry and device events folded into series per scope and window.

A scope is a model version on a hardware class, either over every device (``label = "*"``) or over
the devices carrying one site/region label (``label = "site=berlin"``; devices give labels at
enrolment). For each window ``[end - window_s, end)`` and scope the series are:

- ``latency_p50_ms``, ``latency_p95_ms``, ``latency_p99_ms``: percentiles of the merged latency
  histograms;
- ``error_rate``: errors / inferences;
- ``accuracy``: correct / labelled feedback (absent without feedback);
- ``drift_psi``: the largest input-drift PSI a device of the scope reported (0 when none did);
- ``drift_devices``: the share of the scope's reporting devices that reported input drift.

Each point keeps how many distinct devices its value stands on: those that reported inferences for
the error rate, labelled feedback for accuracy, latencies for the percentiles, and every reporting
device for the drift series. An alert on a series needs enough of them (``loop``), so a device that
alone sends feedback cannot pass its numbers off as a scope's of several devices.

Points are upserted by ``(scope, metric, window_end)``, so running a window twice is harmless.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fleet.controller.storage import events, series, store
from fleet.controller.storage.db import DeviceRow, Session
from fleet.controller.storage.series import ALL, Scope
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram, quantile_ms

METRICS = (
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "accuracy",
    "drift_psi",
    "drift_devices",
)


@dataclass
class _Sums:
    devices: set[str] = field(default_factory=set)
    inferences: int = 0
    errors: int = 0
    correct: int = 0
    labelled: int = 0
    latency_counts: list[int] = field(default_factory=list)
    inferring: set[str] = field(default_factory=set)
    labelling: set[str] = field(default_factory=set)
    timing: set[str] = field(default_factory=set)
    drifted: set[str] = field(default_factory=set)
    psi: float = 0.0


@dataclass(frozen=True)
class DriftFinding:
    """Input drift in one scope and window: who reported it and the worst feature."""

    scope: Scope
    devices: int
    drifted: tuple[str, ...]
    feature: str
    psi: float
    threshold: float
    worst_device: str


def _scopes(
    model: str, version: str, device: DeviceRow | None, label_keys: Iterable[str]
) -> list[Scope]:
    cls = device.hardware_class if device is not None else "unknown"
    out = [Scope(model, version, cls)]
    labels = device.labels if device is not None else {}
    out += [Scope(model, version, cls, f"{k}={labels[k]}") for k in label_keys if labels.get(k)]
    return out


def aggregate_window(
    session: Session,
    end: datetime,
    window_s: float,
    *,
    label_keys: Iterable[str] = ("site", "region"),
) -> tuple[dict[Scope, dict[str, tuple[float, int, int]]], list[DriftFinding]]:
    """Series points of the window ending at ``end`` (``{scope: {metric: (value, devices,
    samples)}}``) and the input-drift findings of the window, per scope over all labels. Upserts the
    points; flushes, does not commit."""
    start = end - timedelta(seconds=window_s)
    keys = tuple(label_keys)
    sums: dict[Scope, _Sums] = defaultdict(_Sums)
    telemetry = series.telemetry_between(session, start, end)
    drift_events = events.drift_events_between(session, start, end)
    devices = store.devices_by_id(
        session, {t[0] for t in telemetry} | {e.device_id for e in drift_events}
    )
    for device_id, model, version, inferences, errors, latency, correct, labelled in telemetry:
        for scope in _scopes(model, version, devices.get(device_id), keys):
            s = sums[scope]
            s.devices.add(device_id)
            s.inferences += inferences
            s.errors += errors
            s.correct += correct
            s.labelled += labelled
            if inferences:
                s.inferring.add(device_id)
            if labelled:
                s.labelling.add(device_id)
            if tuple(latency["bounds_ms"]) == LATENCY_BOUNDS_MS:  # the one layout ingest accepts
                counts = latency["counts"]
                if any(counts):
                    s.timing.add(device_id)
                s.latency_counts = (
                    [a + b for a, b in zip(s.latency_counts, counts, strict=True)]
                    if s.latency_counts
                    else list(counts)
                )
    worst: dict[Scope, tuple[float, str, str, float]] = {}
    for e in drift_events:
        for scope in _scopes(e.model, e.version, devices.get(e.device_id), keys):
            s = sums[scope]
            s.devices.add(e.device_id)
            s.drifted.add(e.device_id)
            s.psi = max(s.psi, e.value)
            if scope.label == ALL and e.value > worst.get(scope, (-1.0, "", "", 0.0))[0]:
                worst[scope] = (e.value, e.feature or "?", e.device_id, e.threshold)
    points: dict[Scope, dict[str, tuple[float, int, int]]] = {}
    for scope, s in sums.items():
        n = len(s.devices)
        metrics: dict[str, tuple[float, int, int]] = {
            "drift_psi": (s.psi, n, len(s.drifted)),
            "drift_devices": (len(s.drifted) / n, n, len(s.drifted)),
        }
        if s.inferences:
            metrics["error_rate"] = (s.errors / s.inferences, len(s.inferring), s.inferences)
        if s.labelled:
            metrics["accuracy"] = (s.correct / s.labelled, len(s.labelling), s.labelled)
        merged = (
            LatencyHistogram(bounds_ms=LATENCY_BOUNDS_MS, counts=tuple(s.latency_counts))
            if s.latency_counts
            else None
        )
        for q, metric in (
            (0.5, "latency_p50_ms"),
            (0.95, "latency_p95_ms"),
            (0.99, "latency_p99_ms"),
        ):
            found = quantile_ms(merged, q) if merged is not None else None
            if found is not None and merged is not None:
                metrics[metric] = (found[0], len(s.timing), merged.total)
        points[scope] = metrics
        series.upsert_points(session, scope, end, metrics)
    findings = [
        DriftFinding(
            scope=scope,
            devices=len(sums[scope].devices),
            drifted=tuple(sorted(sums[scope].drifted)),
            feature=feature,
            psi=psi,
            threshold=threshold,
            worst_device=device,
        )
        for scope, (psi, feature, device, threshold) in sorted(
            worst.items(), key=lambda kv: repr(kv[0])
        )
    ]
    session.flush()
    return points, findings


def fleet_series(
    session: Session,
    *,
    model: str,
    metric: str,
    version: str | None = None,
    hardware_class: str | None = None,
    label: str = ALL,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Points of one metric for the dashboard, oldest first, as JSON-ready dicts."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    rows = series.points(
        session, model=model, metric=metric, version=version, hardware_class=hardware_class,
        label=label, since=since, limit=limit,
    )  # fmt: skip
    return [
        {
            "model": r.model,
            "version": r.version,
            "class": r.hardware_class,
            "label": r.label,
            "metric": r.metric,
            "window_end": r.window_end.isoformat(),
            "value": r.value,
            "devices": r.devices,
            "samples": r.samples,
        }
        for r in rows
    ]
