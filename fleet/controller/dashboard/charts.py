"""Geometry of the dashboard's SVG charts: where each bar, line and label goes, as plain numbers.

No markup here: ``templates/_charts.html`` draws these with Jinja2's autoescape, so a series name
or a title from the database can never become an element. No script, nothing fetched from anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT, PAD = 560, 200, 36
LEFT = 64
"""Room left of a line chart's y axis for its tick labels."""
BAR_ROW = 22
LEGEND_ROW = 18
EMPTY_HEIGHT = 60
X_TICKS = 4


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: its label and count, top edge ``y`` and length ``width``."""

    label: str
    value: int
    y: int
    width: float
    colour: str


@dataclass(frozen=True)
class Series:
    """One polyline: its name, colour, points in pixels and the legend row's top edge."""

    name: str
    colour: str
    points: list[tuple[float, float]]
    legend_y: int


@dataclass(frozen=True)
class Tick:
    """One labelled tick of an axis, at pixel ``at`` (y for the y axis, x for the x axis)."""

    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    """One ``<svg>``: ``bars`` or ``series`` (neither: "no data yet"), with the lines' axis ticks."""

    kind: str
    title: str
    height: int
    bars: list[Bar] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.bars and not self.series


def bars(title: str, counts: Mapping[str, int], colours: Mapping[str, str] | None = None) -> Chart:
    """Horizontal bars, one per key, labelled with its count; ``colours`` gives a key its colour
    (health: green is fine, red is not), else every bar is the neutral first colour (a colour that
    means nothing must not look like a warning)."""
    if not counts:
        return Chart("bars", title, EMPTY_HEIGHT)
    top = max(counts.values()) or 1
    return Chart(
        "bars",
        title,
        PAD + BAR_ROW * len(counts),
        bars=[
            Bar(
                name,
                value,
                PAD + i * BAR_ROW,
                (WIDTH - 220) * value / top,
                (colours or {}).get(name, PALETTE[0]),
            )
            for i, (name, value) in enumerate(counts.items())
        ],
    )


def lines(title: str, series: Mapping[str, Sequence[tuple[float, float]]], unit: str = "") -> Chart:
    """One polyline per series over a shared x range (seconds) and y range."""
    points = [p for s in series.values() for p in s]
    if not points:
        return Chart("lines", title, EMPTY_HEIGHT)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = 0.0, max(p[1] for p in points) or 1.0
    span_x = (x1 - x0) or 1.0

    def place(x: float, y: float) -> tuple[float, float]:
        px = LEFT + (WIDTH - LEFT - PAD) * (x - x0) / span_x
        py = HEIGHT - PAD + (2 * PAD - HEIGHT) * (y - y0) / (y1 - y0)
        return px, py

    return Chart(
        "lines",
        title,
        HEIGHT + LEGEND_ROW * len(series),
        series=[
            Series(name, _colour(i), [place(x, y) for x, y in values], HEIGHT + 4 + LEGEND_ROW * i)
            for i, (name, values) in enumerate(series.items())
        ],
        y_ticks=[Tick(place(x0, y)[1], f"{y:.3g}{unit}") for y in (y0, (y0 + y1) / 2, y1)],
        x_ticks=[
            Tick(place(x, 0.0)[0], _ago(x))
            for x in (x0 + span_x * k / (X_TICKS - 1) for k in range(X_TICKS))
        ],
    )


def _ago(seconds: float) -> str:
    """An x value (seconds from now, negative in the past) as people read it."""
    back = -seconds
    if back < 1:
        return "now"
    if back < 120:
        return f"-{back:.0f} s"
    return f"-{back / 60:.0f} min"


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]
