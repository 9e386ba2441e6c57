"""A line chart as a standalone SVG, for benchmarks that must draw without matplotlib.

>>> svg = line_chart("t", "x", "y", [Series("a", [(1, 2.0), (2, 1.0)])])
>>> svg.startswith("<svg") and "<polyline" in svg and ">a</text>" in svg
True
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

W, H = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 60, 190, 40, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[float, float]]
    dashed: bool = False
    colour: int = -1  # index into COLOURS; -1: the series' own


def _ticks(hi: float, n: int = 5) -> list[float]:
    step = hi / n if hi > 0 else 1.0
    return [round(step * i, 2) for i in range(n + 1)]


def line_chart(title: str, xlabel: str, ylabel: str, series: list[Series]) -> str:
    """Every series over one x axis (its distinct x values, evenly spaced) and a y from 0."""
    xs = sorted({x for s in series for x, _ in s.points})
    hi = max((y for s in series for _, y in s.points), default=1.0) * 1.1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (xs.index(x) + 0.5) * pw / max(len(xs), 1)

    def py(y: float) -> float:
        return TOP + ph - y / hi * ph if hi > 0 else TOP + ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="black"/>',
        f'<text x="{LEFT + pw / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text x="16" y="{TOP + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + ph / 2})">{escape(ylabel)}</text>',
    ]
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 18}" text-anchor="middle">{x:g}</text>')
    for t in _ticks(hi / 1.1):
        y = py(t)
        out.append(
            f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    for i, s in enumerate(series):
        colour = COLOURS[(s.colour if s.colour >= 0 else i) % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for x, y in s.points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 16 + 18 * i
        out.append(
            f'<line x1="{W - RIGHT + 12}" y1="{ly - 4}" x2="{W - RIGHT + 36}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{W - RIGHT + 42}" y="{ly}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
