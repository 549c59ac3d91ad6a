"""HTML of the dashboard's pages, rendered on the server from the read-side aggregates.

Plain f-strings; every value from the database goes through ``escape``. No script, no stylesheet or
font from elsewhere: one inline style block and inline SVG charts (``dashboard_charts``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from fleet.controller.dashboard import charts
from fleet.controller.rollout.decide import RolloutStatus
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.rollout.stats import LatencyHistogram, merge_histograms, quantile_ms
from fleet.controller.storage import overview

CHART_BUCKETS = 20
ROLLING_BACK = RolloutPhase.ROLLING_BACK

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#111827;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff}main{padding:16px 20px;display:grid;gap:16px}
section.panel{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:12px 16px}
h2{margin:0 0 8px;font-size:18px}h3{margin:12px 0 4px;font-size:15px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e5e7eb;padding:3px 8px;
text-align:left}.note{color:#6b7280;font-size:13px}.phase{padding:1px 6px;border-radius:4px;
font-size:12px;background:#e5e7eb}.phase.rolled_back,.phase.failed,.phase.aborted,.fail{
background:#fee2e2;color:#991b1b}.phase.succeeded,.pass{background:#dcfce7;color:#166534}
.phase.progressing,.phase.rolling_back{background:#dbeafe}.reason{font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.pager a,.pager span{margin-right:12px}
"""


REFRESH_S = 30


def page(title: str, body: str, refresh_s: int | None = None) -> str:
    refresh = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{refresh}"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        "<header><strong>edgeloop fleet</strong><a href='/dashboard'>overview</a>"
        "<a href='/dashboard/devices'>devices</a>"
        "<form method='post' action='/dashboard/logout' style='margin-left:auto'>"
        "<button type='submit'>sign out</button></form></header>"
        f"<main>{body}</main></body></html>"
    )


def login(message: str = "") -> str:
    note = f"<p class='note' id='login-message'>{escape(message)}</p>" if message else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>edgeloop fleet: sign in"
        f"</title><style>{STYLE}</style></head><body><main><section class='panel'>"
        "<h2>edgeloop fleet dashboard</h2>"
        f"{note}<form method='post' action='/dashboard/login'>"
        "<label>admin token <input type='password' name='token' autocomplete='off'></label> "
        "<button type='submit'>sign in</button></form></section></main></body></html>"
    )


def when(at: datetime | None) -> str:
    return "never" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


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
    return page(
        "edgeloop fleet",
        _devices_panel(data.groups)
        + _rollouts_panel(data.rollouts)
        + _charts_panel(data)
        + _alerts_panel(data.alerts, data.playbook_runs),
        refresh_s=REFRESH_S,
    )


def _devices_panel(groups: Sequence[overview.DeviceGroup]) -> str:
    by_version: Counter[str] = Counter()
    by_class: Counter[str] = Counter()
    by_health: Counter[str] = Counter()
    table: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for g in groups:
        by_version[f"v{g.version}" if g.version != overview.NO_VERSION else "no report"] += (
            g.devices
        )
        by_class[g.hardware_class] += g.devices
        by_health[g.health] += g.devices
        table[(g.hardware_class, g.version)][g.health] += g.devices
    rows = "".join(
        f"<tr><td><a href='/dashboard/devices?{escape(urlencode({'hardware_class': cls}))}'>"
        f"{escape(cls)}</a></td><td>{escape(version)}</td>"
        + "".join(f"<td>{counts[h]}</td>" for h in overview.HEALTHS)
        + f"<td>{sum(counts.values())}</td></tr>"
        for (cls, version), counts in sorted(table.items())
    )
    heads = "".join(f"<th>{h}</th>" for h in overview.HEALTHS)
    return (
        "<section class='panel' id='devices'><h2>Devices</h2>"
        f"<p id='device-total'>{sum(by_class.values())} devices enrolled, "
        f"{by_health[overview.ONLINE]} online (heard from within "
        f"{overview.ONLINE_WITHIN_S:.0f} s). Version is the version of each device's latest "
        "report. <a href='/dashboard/devices'>device table</a></p>"
        f"<div class='charts'>{charts.bars('by version', dict(sorted(by_version.items())))}"
        f"{charts.bars('by hardware class', dict(sorted(by_class.items())))}"
        f"{charts.bars('by health', {h: by_health[h] for h in overview.HEALTHS})}</div>"
        f"<table id='device-groups'><tr><th>class</th><th>version</th>{heads}<th>total</th></tr>"
        f"{rows}</table></section>"
    )


def _rollouts_panel(rollouts: Sequence[RolloutStatus]) -> str:
    if not rollouts:
        return (
            "<section class='panel' id='rollouts'><h2>Rollouts</h2>"
            "<p class='note'>no rollouts yet</p></section>"
        )
    return (
        "<section class='panel' id='rollouts'><h2>Rollouts</h2>"
        + "".join(_rollout(s) for s in rollouts)
        + "</section>"
    )


def _rollout(s: RolloutStatus) -> str:
    phase = str(s.phase)
    stages = "".join(
        f"<li class='{'current' if i == s.stage else ''}'>{escape(s.stage_label(i))}, "
        f"bake {st.bake_s:g} s, deadline {st.deadline_s:g} s</li>"
        for i, st in enumerate(s.policy.stages)
    )
    history = "".join(
        f"<tr><td>{when(t.at)}</td><td>{escape(str(t.from_phase))} → {escape(str(t.to_phase))}"
        f"</td><td>{escape(s.stage_label(t.stage))}</td><td>{escape(t.reason)}</td></tr>"
        for t in s.history
    )
    outcome = ""
    why = next((t.reason for t in reversed(s.history) if t.to_phase is ROLLING_BACK), None)
    if why:
        outcome = f"<p class='outcome reason'><strong>rolled back:</strong> {escape(why)}</p>"
    if s.causes:
        outcome += (
            f"<h3>{'rolled back' if phase == 'rolled_back' else 'stopped'} because</h3>"
            + _gate_table(s.causes, "causes")
        )
    if s.silent_devices:
        outcome += (
            "<p class='reason'>silent devices: "
            + escape(", ".join(s.silent_devices[:50]))
            + ("…" if len(s.silent_devices) > 50 else "")
            + "</p>"
        )
    check = ""
    if s.last_check is not None:
        cohorts = "".join(
            f"<tr><td>{escape(c.hardware_class)}</td><td>{c.targeted}</td><td>{c.confirmed}/"
            f"{c.required_confirmed}</td><td>{c.inferences}/{c.required_inferences}</td>"
            f"<td>{c.feedback}/{c.required_feedback}</td></tr>"
            for c in s.last_check.cohorts
        )
        gates = [g for c in s.last_check.cohorts for g in c.results]
        check = (
            f"<h3>last check ({when(s.last_check.at)}, {escape(s.stage_label(s.last_check.stage))})"
            "</h3><table class='cohorts'><tr><th>cohort</th><th>targeted</th><th>confirmed</th>"
            f"<th>inferences</th><th>feedback</th></tr>{cohorts}</table>"
            + _gate_table(gates, "gates")
        )
    return (
        f"<article class='rollout' id='rollout-{escape(s.rollout_id)}' data-phase='{phase}'>"
        f"<h3>{escape(s.rollout_id)}: {escape(s.model)} v{escape(s.canary_version)} "
        f"(stable v{escape(s.stable_version)}) <span class='phase {phase}'>{phase}</span></h3>"
        f"<p class='reason'>{escape(s.reason)}</p>"
        f"<ol class='stages'>{stages}</ol>{outcome}{check}"
        "<table class='timeline'><tr><th>at</th><th>phase</th><th>stage</th><th>reason</th></tr>"
        f"{history}</table></article>"
    )


def _gate_table(results: Iterable[Any], css: str) -> str:
    rows = "".join(
        f"<tr class='{escape(str(r.verdict))}'><td>{escape(r.cohort)}</td>"
        f"<td>{escape(str(r.gate))}</td><td>{escape(str(r.verdict))}</td>"
        f"<td>{'—' if r.measured is None else f'{r.measured:.4g}'}</td><td>{r.threshold:.4g}</td>"
        f"<td>{r.samples}</td><td>{escape(r.reason)}</td></tr>"
        for r in results
    )
    return (
        f"<table class='{css}'><tr><th>cohort</th><th>gate</th><th>verdict</th><th>measured</th>"
        f"<th>threshold</th><th>samples</th><th>reason</th></tr>{rows}</table>"
    )


def _charts_panel(data: OverviewData) -> str:
    latency, accuracy = chart_series(data.reports, data.now)
    drift = charts.lines("largest input drift (PSI) per version and class", data.drift or {})
    return (
        "<section class='panel' id='charts'><h2>Latency, accuracy and drift</h2>"
        f"<p class='note'>the newest {len(data.reports)} reports of the last hour; x: seconds "
        "before now</p><div class='charts'>"
        f"{charts.lines('p95 latency per version and class', latency, ' ms')}"
        f"{charts.lines('accuracy on labelled feedback', accuracy)}{drift}</div></section>"
    )


def chart_series(
    reports: Sequence[overview.ReportSample], now: datetime
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """p95 latency and accuracy per ``v<version> <class>``, in up to ``CHART_BUCKETS`` windows."""
    if not reports:
        return {}, {}
    start = min(r.received_at for r in reports)
    width = max((now - start).total_seconds(), 1.0) / CHART_BUCKETS
    hist: dict[tuple[str, int], list[LatencyHistogram]] = defaultdict(list)
    labels: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in reports:
        key = (
            f"v{r.version} {r.hardware_class}",
            int((r.received_at - start).total_seconds() // width),
        )
        hist[key].append(
            LatencyHistogram(
                bounds_ms=tuple(r.latency["bounds_ms"]), counts=tuple(r.latency["counts"])
            )
        )
        labels[key][0] += r.feedback_correct
        labels[key][1] += r.feedback_total
    ago = (now - start).total_seconds()
    latency: dict[str, list[tuple[float, float]]] = defaultdict(list)
    accuracy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (name, bucket), hs in sorted(hist.items()):
        x = -(ago - (bucket + 0.5) * width)
        merged = merge_histograms(hs)
        p95 = quantile_ms(merged, 0.95) if merged is not None else None
        if p95 is not None:
            latency[name].append((x, p95[0]))
        correct, total = labels[(name, bucket)]
        if total:
            accuracy[name].append((x, correct / total))
    return dict(latency), dict(accuracy)


ALERT_COLUMNS = ("kind", "scope", "value", "threshold", "reason", "occurrences", "opened_at")
RUN_COLUMNS = ("playbook", "action", "status", "cause", "result", "attempts", "updated_at")


def _alerts_panel(alerts: list[dict[str, Any]] | None, runs: list[dict[str, Any]] | None) -> str:
    return (
        "<section class='panel' id='alerts'><h2>Active alerts</h2>"
        + _records(alerts, ALERT_COLUMNS, "alerts are not recorded", "no active alerts")
        + "</section><section class='panel' id='playbooks'><h2>Playbook runs</h2>"
        + _records(runs, RUN_COLUMNS, "playbook runs are not recorded", "no playbook runs")
        + "</section>"
    )


def _records(
    records: list[dict[str, Any]] | None, keys: Sequence[str], missing: str, empty: str
) -> str:
    if records is None:
        return f"<p class='note'>{missing}</p>"
    if not records:
        return f"<p class='note'>{empty}</p>"
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(_cell(r.get(k)))}</td>" for k in keys) + "</tr>"
        for r in records
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def devices_page(result: overview.DevicePage, hardware_class: str | None) -> str:
    def link(to: int) -> str:
        query = {"page": to, "size": result.size}
        if hardware_class:
            query["hardware_class"] = hardware_class  # type: ignore[assignment]
        return f"/dashboard/devices?{urlencode(query)}"

    rows = "".join(
        f"<tr><td>{escape(d.device_id)}</td><td>{escape(d.hardware_class)}</td>"
        f"<td>{escape(d.running_version)}</td><td>{escape(d.desired_version)}</td>"
        f"<td class='{d.health}'>{d.health}</td><td>{when(d.last_seen)}</td>"
        f"<td>{escape(', '.join(f'{k}={v}' for k, v in sorted(d.labels.items())))}</td></tr>"
        for d in result.lines
    )
    prev = f"<a id='prev' href='{link(result.page - 1)}'>previous</a>" if result.page > 1 else ""
    nxt = (
        f"<a id='next' href='{link(result.page + 1)}'>next</a>"
        if result.page < result.pages
        else ""
    )
    scope = f" of class {escape(hardware_class)}" if hardware_class else ""
    return page(
        "edgeloop fleet: devices",
        "<section class='panel' id='device-table'>"
        f"<h2>Devices{scope}</h2><p class='pager'><span id='page-info'>page {result.page} of "
        f"{result.pages} ({result.total} devices)</span>{prev}{nxt}</p>"
        "<table><tr><th>device</th><th>class</th><th>running</th><th>desired</th>"
        f"<th>health</th><th>last seen</th><th>labels</th></tr>{rows}</table></section>",
    )
