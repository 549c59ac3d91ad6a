"""HTML of the dashboard's pages, rendered on the server from the read-side aggregates.

Jinja2 templates in ``templates/`` with autoescape on, so every value from the database is escaped
by the template engine, not by hand. No script, no stylesheet or font from elsewhere: one inline
style block and inline SVG charts (``charts`` gives their geometry, ``templates/_charts.html`` draws
them). This module turns the aggregates into what the templates show; the routes serve the result.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from fleet.controller.dashboard import charts
from fleet.controller.rollout.decide import RolloutStatus
from fleet.controller.rollout.evaluate import StageCheck
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.rollout.stats import GateResult
from fleet.controller.storage import overview
from fleet.shared.latency import LatencyHistogram, merge_histograms, quantile_ms

CHART_BUCKETS = 20
REFRESH_S = 30
ALERT_COLUMNS = ("kind", "scope", "value", "threshold", "reason", "occurrences", "opened_at")
RUN_COLUMNS = ("playbook", "action", "status", "cause", "result", "attempts", "updated_at")


HEALTH_COLOURS = {
    overview.ONLINE: "#16a34a",
    overview.OFFLINE: "#d97706",
    overview.NEVER: "#6b7280",
    overview.QUARANTINED: "#dc2626",
    overview.RETIRED: "#d1d5db",
}
"""What each health looks like on the dashboard: green is fine, amber needs a look, red is not."""

SUMMARY_CHARS = 160


def when(at: datetime | None) -> str:
    """The dashboard's one timestamp format."""
    return "never" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cell(value: Any) -> str:
    """One table cell's text: a mapping as sorted ``k=v`` pairs, a float to 4 significant digits,
    a timestamp (or its ISO text) in :func:`when`'s format."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, str) and _ISO.match(value):
        try:
            return when(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return value
    return "" if value is None else str(value)


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def summary(reason: str) -> str:
    """The first clause of a long reason (the rest is folded beneath it on the page)."""
    first = re.split(r"(?<=[;.])\s", reason, maxsplit=1)[0]
    if len(first) <= SUMMARY_CHARS:
        return first
    return first[: SUMMARY_CHARS - 1].rstrip() + "…"


def rolled_back_reason(s: RolloutStatus) -> str | None:
    """The reason of the rollout's last move to ``rolling_back``, if it made one."""
    return next(
        (t.reason for t in reversed(s.history) if t.to_phase is RolloutPhase.ROLLING_BACK), None
    )


def gates_of(check: StageCheck) -> list[GateResult]:
    """Every gate result of a stage check, cohort by cohort."""
    return [g for c in check.cohorts for g in c.results]


_templates = Environment(
    loader=PackageLoader("fleet.controller.dashboard", "templates"),
    autoescape=True,  # every template is HTML: each value is escaped unless marked safe
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(when=when, cell=cell, fmt=format, summary=summary)
_templates.globals.update(
    rolled_back_reason=rolled_back_reason,
    gates_of=gates_of,
    HEALTHS=overview.HEALTHS,
    ONLINE_WITHIN_S=overview.ONLINE_WITHIN_S,
    ALERT_COLUMNS=ALERT_COLUMNS,
    RUN_COLUMNS=RUN_COLUMNS,
    WIDTH=charts.WIDTH,
    HEIGHT=charts.HEIGHT,
    PAD=charts.PAD,
    LEFT=charts.LEFT,
)


def _render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


def login(message: str = "") -> str:
    return _render("login.html", message=message, refresh_s=None)


def past_last_page(requested: int, last: int) -> str:
    """The device table asked for page ``requested`` of ``last``."""
    return _render("past_last_page.html", requested=requested, last=last, refresh_s=None)


@dataclass
class OverviewData:
    """What the overview page shows, read in one database session."""

    now: datetime
    groups: list[overview.DeviceGroup]
    rollouts: list[RolloutStatus]
    reports: list[overview.ReportSample]
    alerts: list[dict[str, Any]] | None = None
    playbook_runs: list[dict[str, Any]] | None = None
    drift: dict[str, list[tuple[float, float]]] | None = None


def overview_page(data: OverviewData) -> str:
    series = chart_series(data.reports, data.now)
    return _render(
        "overview.html",
        refresh_s=REFRESH_S,
        devices=_devices_panel(data.groups),
        rollouts=data.rollouts,
        reports=len(data.reports),
        trends=[
            charts.lines("p95 latency per version and class", series.latency, " ms"),
            charts.lines("accuracy on labelled feedback", series.accuracy),
            charts.lines("agreement with the stable version (shadow)", series.agreement),
            charts.lines("largest input drift (PSI) per version and class", data.drift or {}),
        ],
        alerts=data.alerts,
        playbook_runs=data.playbook_runs,
    )


@dataclass(frozen=True)
class GroupRow:
    """One line of the overview's device table: a class and version, devices per health."""

    hardware_class: str
    version: str
    counts: Counter[str]
    query: str  # the device table of this class

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class DevicesPanel:
    total: int
    online: int
    charts: list[charts.Chart]
    rows: list[GroupRow]


def _devices_panel(groups: Sequence[overview.DeviceGroup]) -> DevicesPanel:
    by_version: Counter[str] = Counter()
    by_class: Counter[str] = Counter()
    by_health: Counter[str] = Counter()
    table: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for g in groups:
        version = f"v{g.version}" if g.version != overview.NO_VERSION else "no report"
        by_version[version] += g.devices
        by_class[g.hardware_class] += g.devices
        by_health[g.health] += g.devices
        table[(g.hardware_class, g.version)][g.health] += g.devices
    return DevicesPanel(
        total=sum(by_class.values()),
        online=by_health[overview.ONLINE],
        charts=[
            charts.bars("by version", dict(sorted(by_version.items()))),
            charts.bars("by hardware class", dict(sorted(by_class.items()))),
            charts.bars("by health", {h: by_health[h] for h in overview.HEALTHS}, HEALTH_COLOURS),
        ],
        rows=[
            GroupRow(cls, version, counts, urlencode({"hardware_class": cls}))
            for (cls, version), counts in sorted(table.items())
        ],
    )


Series = dict[str, list[tuple[float, float]]]
"""Points ``(seconds from now, value)`` per ``v<version> <class>``."""


@dataclass(frozen=True)
class TrendSeries:
    """The overview's trend charts."""

    latency: Series
    accuracy: Series
    agreement: Series


@dataclass
class _Bucket:
    histograms: list[LatencyHistogram]
    correct: int = 0
    labelled: int = 0
    compared: int = 0
    disagreed: int = 0


def chart_series(reports: Sequence[overview.ReportSample], now: datetime) -> TrendSeries:
    """p95 latency, accuracy on labels and agreement in shadow per ``v<version> <class>``, in up
    to ``CHART_BUCKETS`` windows."""
    if not reports:
        return TrendSeries({}, {}, {})
    start = min(r.received_at for r in reports)
    width = max((now - start).total_seconds(), 1.0) / CHART_BUCKETS
    buckets: dict[tuple[str, int], _Bucket] = defaultdict(lambda: _Bucket([]))
    for r in reports:
        key = (
            f"v{r.version} {r.hardware_class}",
            int((r.received_at - start).total_seconds() // width),
        )
        bucket = buckets[key]
        bucket.histograms.append(
            LatencyHistogram(
                bounds_ms=tuple(r.latency["bounds_ms"]), counts=tuple(r.latency["counts"])
            )
        )
        bucket.correct += r.feedback_correct
        bucket.labelled += r.feedback_total
        if r.shadow is not None:
            bucket.compared += int(r.shadow.get("compared", 0))
            bucket.disagreed += int(r.shadow.get("disagreed", 0))
    ago = (now - start).total_seconds()
    series = TrendSeries(defaultdict(list), defaultdict(list), defaultdict(list))
    for (name, index), bucket in sorted(buckets.items()):
        x = -(ago - (index + 0.5) * width)
        merged = merge_histograms(bucket.histograms)
        p95 = quantile_ms(merged, 0.95) if merged is not None else None
        if p95 is not None:
            series.latency[name].append((x, p95[0]))
        if bucket.labelled:
            series.accuracy[name].append((x, bucket.correct / bucket.labelled))
        if bucket.compared:
            series.agreement[name].append((x, 1 - bucket.disagreed / bucket.compared))
    return TrendSeries(dict(series.latency), dict(series.accuracy), dict(series.agreement))


def devices_page(result: overview.DevicePage, hardware_class: str | None) -> str:
    def link(to: int) -> str:
        query: dict[str, int | str] = {"page": to, "size": result.size}
        if hardware_class:
            query["hardware_class"] = hardware_class
        return f"/dashboard/devices?{urlencode(query)}"

    return _render(
        "devices.html",
        refresh_s=None,
        result=result,
        hardware_class=hardware_class,
        prev_href=link(result.page - 1) if result.page > 1 else None,
        next_href=link(result.page + 1) if result.page < result.pages else None,
    )
