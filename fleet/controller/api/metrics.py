"""Prometheus metrics at ``GET /metrics``: the fleet and its rollouts, read from the database at scrape.

Nothing is counted on the telemetry path: a custom collector runs a few grouped queries per scrape.
Gauges (devices by class, version and health; rollouts by phase; each open rollout's stage, confirmed
devices and gate values) are read afresh. Telemetry counters (reports, inferences, errors, labelled
feedback) and the latency histogram advance by the reports stored since the previous scrape (a cursor
on the report id that trails ``SETTLE_S`` behind), so a scrape costs what arrived since the last one.
The counters start from the database's totals; the latency histogram from the last few minutes.

Fleet series are database-wide: with several replicas behind a load balancer, scrape one (or take
``max`` over replicas). The only per-process series is the count of rejected telemetry batches, which
is counted where they are refused; Prometheus sums it over replicas.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.controller.api.auth import MetricsReader
from fleet.controller.rollout.decide import RolloutStatus
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.storage import overview, store
from fleet.controller.storage.db import Session, SessionFactory
from fleet.shared.latency import LATENCY_BOUNDS_MS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HISTOGRAM_START_S = 300.0
"""At the first scrape the latency histogram counts the reports of this many recent seconds."""
SETTLE_S = 2.0
"""Reports are counted once they are this old: a transaction that took a report id earlier but
commits a little later (PostgreSQL, several replicas) is still counted, and counted once."""

router = APIRouter()

_TOTALS = ("reports", "inferences", "errors", "feedback_correct", "feedback_total")
_HELP = {
    "reports": "Telemetry reports stored",
    "inferences": "Inferences reported by devices",
    "errors": "Failed inferences reported by devices",
    "feedback_correct": "Labelled field feedback where the prediction was right",
    "feedback_total": "Labelled field feedback received",
}


class FleetCollector(Collector):
    """Reads the fleet's series from the database at each scrape."""

    def __init__(self, sessions: SessionFactory[Session], clock: Callable[[], datetime]) -> None:
        self._sessions = sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._cursor: int | None = None
        self._totals: dict[tuple[str, str, str], list[int]] = {}
        self._latency: dict[tuple[str, str], list[int]] = {}

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock, self._sessions() as session:
            self._advance(session, now)
            yield from self._device_series(session, now)
            yield from self._telemetry_series()
            yield from _rollout_series(session)

    def _advance(self, session: Session, now: datetime) -> None:
        """Add the reports stored since the previous scrape to the counters and histograms."""
        first = self._cursor is None
        after = self._cursor or 0
        upto = max(after, overview.last_report_id(session, now - timedelta(seconds=SETTLE_S)))
        totals = overview.telemetry_totals(session, after, upto)
        for t in totals:
            sums = self._totals.setdefault((t.model, t.version, t.hardware_class), [0] * 5)
            for i, value in enumerate(
                (t.reports, t.inferences, t.errors, t.feedback_correct, t.feedback_total)
            ):
                sums[i] += value
        since = now - timedelta(seconds=HISTOGRAM_START_S) if first else None
        samples = overview.recent_reports(
            session, since=since, after_id=after, upto_id=upto, limit=50_000
        )
        for sample in samples:
            counts = sample.latency.get("counts", [])
            if tuple(sample.latency.get("bounds_ms", ())) != LATENCY_BOUNDS_MS:
                continue
            buckets = self._latency.setdefault(
                (sample.version, sample.hardware_class), [0] * len(counts)
            )
            for i, c in enumerate(counts):
                buckets[i] += int(c)
        self._cursor = upto

    def _device_series(self, session: Session, now: datetime) -> Iterator[Metric]:
        groups = overview.device_groups(session, now)
        devices = GaugeMetricFamily(
            "edgeloop_fleet_devices",
            "Enrolled devices by hardware class, running version (of the latest report) and health",
            labels=["hardware_class", "version", "health"],
        )
        online = GaugeMetricFamily(
            "edgeloop_fleet_devices_online",
            f"Devices heard from within {overview.ONLINE_WITHIN_S:.0f} s",
        )
        for g in groups:
            devices.add_metric([g.hardware_class, g.version, g.health], g.devices)
        online.add_metric([], sum(g.devices for g in groups if g.health == overview.ONLINE))
        yield devices
        yield online

    def _telemetry_series(self) -> Iterator[Metric]:
        for i, name in enumerate(_TOTALS):
            family = CounterMetricFamily(
                f"edgeloop_fleet_telemetry_{name}",
                _HELP[name],
                labels=["model", "version", "hardware_class"],
            )
            for key, sums in sorted(self._totals.items()):
                family.add_metric(list(key), sums[i])
            yield family
        latency = HistogramMetricFamily(
            "edgeloop_fleet_inference_latency_ms",
            "Inference latency reported by devices (ms), per version and hardware class",
            labels=["version", "hardware_class"],
        )
        bounds = [*(f"{b:g}" for b in LATENCY_BOUNDS_MS), "+Inf"]
        for (version, cls), counts in sorted(self._latency.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=False):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([version, cls], cumulative, sum_value=None)
        yield latency


def _rollout_series(session: Session) -> Iterator[Metric]:
    phases = overview.rollouts_by_phase(session)
    by_phase = GaugeMetricFamily("edgeloop_rollouts", "Rollouts by phase", labels=["phase"])
    for phase in RolloutPhase:
        by_phase.add_metric([str(phase)], phases.get(str(phase), 0))
    yield by_phase
    finished = CounterMetricFamily(
        "edgeloop_rollout_outcomes",
        "Finished rollout attempts by model and outcome (succeeded, rolled_back, failed, aborted)",
        labels=["model", "outcome"],
    )
    rollbacks = CounterMetricFamily(
        "edgeloop_rollouts_rolled_back", "Rollout attempts that ended rolled back"
    )
    counts = overview.outcomes(session)
    for (model, outcome), n in sorted(counts.items()):
        finished.add_metric([model, outcome], n)
    rollbacks.add_metric([], sum(n for (_, o), n in counts.items() if o == "rolled_back"))
    yield from (finished, rollbacks)
    alerts = GaugeMetricFamily("edgeloop_alerts_open", "Open alerts by kind", labels=["kind"])
    for kind, n in sorted(overview.open_alerts_by_kind(session).items()):
        alerts.add_metric([kind], n)
    runs = GaugeMetricFamily(
        "edgeloop_playbook_runs", "Playbook runs by action and status", labels=["action", "status"]
    )
    for (action, state), n in sorted(overview.playbook_runs_by_status(session).items()):
        runs.add_metric([action, state], n)
    yield from (alerts, runs)
    labels = ["rollout_id", "model", "version"]
    stage = GaugeMetricFamily(
        "edgeloop_rollout_stage", "1-based stage of each open rollout", labels=labels
    )
    confirmed = GaugeMetricFamily(
        "edgeloop_rollout_confirmed_devices",
        "Devices confirmed on the canary (telemetry from it) at the last check, per cohort",
        labels=[*labels, "hardware_class"],
    )
    gates = GaugeMetricFamily(
        "edgeloop_rollout_gate_value",
        "Measured value of each gate at the last check (threshold in its own series)",
        labels=[*labels, "hardware_class", "gate", "verdict"],
    )
    thresholds = GaugeMetricFamily(
        "edgeloop_rollout_gate_threshold",
        "Threshold each gate is held against",
        labels=[*labels, "hardware_class", "gate"],
    )
    for row in store.open_rollouts(session):
        status = RolloutStatus.model_validate(row.status)
        key = [status.rollout_id, status.model, status.canary_version]
        stage.add_metric(key, status.stage + 1)
        for cohort in status.last_check.cohorts if status.last_check else ():
            confirmed.add_metric([*key, cohort.hardware_class], cohort.confirmed)
            for gate in cohort.gates:
                if gate.measured is not None:
                    gates.add_metric(
                        [*key, cohort.hardware_class, str(gate.gate), str(gate.verdict)],
                        gate.measured,
                    )
                thresholds.add_metric([*key, cohort.hardware_class, str(gate.gate)], gate.threshold)
    yield from (stage, confirmed, gates, thresholds)


def install(app: FastAPI) -> None:
    """A registry for this app (fleet collector + the rejected-batch counter) and the handlers that
    count telemetry refused with 422 (invalid body or statistics); answers are unchanged."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(app.state.sessions, app.state.clock))
    rejected = Counter(
        "edgeloop_fleet_telemetry_rejected_batches",
        "Telemetry batches refused with 422 by this process",
        registry=registry,
    )
    app.state.metrics_registry = registry

    def counted(request: Request, code: int) -> None:
        if code == 422 and request.url.path.endswith("/telemetry"):
            rejected.inc()

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        counted(request, 422)
        safe = RequestValidationError(_json_safe(exc.errors()), body=None)
        return await request_validation_exception_handler(request, safe)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        counted(request, exc.status_code)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.include_router(router)


def _json_safe(value: Any) -> Any:
    """NaN and infinities (echoed back as the refused input) as strings: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@router.get("/metrics", include_in_schema=False, dependencies=[MetricsReader])
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition, for the metrics token or the admin token: its labels carry
    model names, versions and rollout ids, which are not for anyone who can reach the port."""
    registry: Any = request.app.state.metrics_registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE)
