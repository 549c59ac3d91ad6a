"""Server-rendered SVG charts for the dashboard: no script, nothing fetched from anywhere.

Each function returns one ``<svg>`` element as a string; every text in it is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT, PAD = 560, 200, 36


def bars(title: str, counts: Mapping[str, int]) -> str:
    """Horizontal bars, one per key, labelled with its count."""
    if not counts:
        return _empty(title)
    top = max(counts.values()) or 1
    row = 22
    height = PAD + row * len(counts)
    parts = [_open(title, height), _title(title)]
    for i, (name, value) in enumerate(counts.items()):
        y = PAD + i * row
        width = (WIDTH - 220) * value / top
        parts.append(
            f'<text x="4" y="{y + 14}" font-size="12">{escape(name)}</text>'
            f'<rect x="160" y="{y + 3}" width="{width:.1f}" height="14" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{164 + width:.1f}" y="{y + 14}" font-size="12">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def lines(title: str, series: Mapping[str, Sequence[tuple[float, float]]], unit: str = "") -> str:
    """One polyline per series over a shared x range (seconds) and y range."""
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = 0.0, max(p[1] for p in points) or 1.0
    span_x = (x1 - x0) or 1.0

    def place(x: float, y: float) -> str:
        px = PAD + (WIDTH - 2 * PAD) * (x - x0) / span_x
        py = HEIGHT - PAD + (2 * PAD - HEIGHT) * (y - y0) / (y1 - y0)
        return f"{px:.1f},{py:.1f}"

    parts = [
        _open(title, HEIGHT + 18 * len(series)),
        _title(title),
        f'<text x="4" y="{PAD + 4}" font-size="11">{y1:.3g}{escape(unit)}</text>',
        f'<text x="4" y="{HEIGHT - PAD}" font-size="11">0</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#9ca3af"/>',
    ]
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(place(x, y) for x, y in values)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
        parts.extend(
            f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" fill="{colour}"/>'
            for c in coords.split()
        )
        y = HEIGHT + 4 + 18 * i
        parts.append(
            f'<rect x="{PAD}" y="{y}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{PAD + 18}" y="{y + 11}" font-size="12">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(title: str, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">'
    )


def _title(title: str) -> str:
    return f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>'


def _empty(title: str) -> str:
    return (
        _open(title, 60)
        + _title(title)
        + '<text x="4" y="42" font-size="12" fill="#6b7280">no data yet</text></svg>'
    )
