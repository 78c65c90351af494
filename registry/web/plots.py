"""Plots as inline SVG, drawn on the server: no JavaScript, no plotting library, and nothing
that a Content-Security-Policy without inline styles would block (colours come from classes in
the stylesheet; tooltips are SVG ``<title>`` elements). Every label is escaped: module names
come from the uploaded weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE_SIZE = 8
W, H = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 44


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]] = field(default_factory=list)
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _y_ticks(ys: Sequence[float], log_y: bool) -> list[float]:
    """Tick values in plotted units: whole powers of ten (log) or round numbers from 0."""
    if log_y:
        lo, hi = math.floor(min(ys)), math.ceil(max(ys))
        if hi == lo:
            lo -= 1
        return [float(t) for t in range(int(lo), int(hi) + 1)]
    return nice_ticks(min(0.0, min(ys)), max(ys))


def _frame(width: int, yt: Sequence[float], log_y: bool, x_label: str, y_label: str,
           title: str) -> tuple[list[str], Callable[[float], float]]:
    """The chart's opening tag, grid, y ticks, axes and labels; and the y scale."""
    pw, ph = width - LEFT - RIGHT, H - TOP - BOTTOM
    y0, y1 = yt[0], yt[-1]

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {H}" role="img" '
           f'aria-label="{escape(title or y_label)}" xmlns="http://www.w3.org/2000/svg">']
    for t in yt:
        label = fmt(10 ** t) if log_y else fmt(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{sy(t):.1f}" '
                   f'y2="{sy(t):.1f}"/><text class="tick" x="{LEFT - 6}" y="{sy(t) + 4:.1f}" '
                   f'text-anchor="end">{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{TOP + ph}" '
               f'y2="{TOP + ph}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + ph}"/>')
    out.append(f'<text class="axis-label" x="{LEFT + pw / 2:.1f}" y="{H - 6}" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text class="axis-label" x="14" y="{TOP + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + ph / 2:.1f})">{escape(y_label)}</text>')
    return out, sy


def line_chart(series: Sequence[Series], x_label: str, y_label: str, *, log_y: bool = False,
               integer_x: bool = True, title: str = "", width: int = W) -> Markup:
    """Lines with markers for each series; ``log_y`` plots log10 of positive values. ``width``
    is in the same units as the text, so a chart drawn wider keeps its labels legible."""
    pts = [(x, y) for s in series for x, y in s.points if math.isfinite(y)]
    if log_y:
        pts = [(x, y) for x, y in pts if y > 0]
    if not pts:
        return Markup('<p class="muted">Nothing to plot.</p>')
    xs = [x for x, _ in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    yt = _y_ticks([math.log10(y) if log_y else y for _, y in pts], log_y)
    out, sy = _frame(width, yt, log_y, x_label, y_label, title)
    pw = width - LEFT - RIGHT

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    for t in _x_ticks(x0, x1, integer_x):
        out.append(f'<text class="tick" x="{sx(t):.1f}" y="{H - BOTTOM + 16}" '
                   f'text-anchor="middle">{escape(fmt(t))}</text>')
    for i, s in enumerate(series):
        cls = f"s{i % PALETTE_SIZE}"
        sp = [(x, y) for x, y in s.points if math.isfinite(y) and (y > 0 or not log_y)]
        coords = [(sx(x), sy(math.log10(y) if log_y else y)) for x, y in sp]
        if len(coords) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            dash = " dashed" if s.dashed else ""
            out.append(f'<polyline class="line {cls}{dash}" points="{d}"/>')
        for (x, y), (px, py) in zip(sp, coords, strict=True):
            tip = f"{s.label} · {fmt(x)} · {fmt(y)}"
            out.append(f'<circle class="dot {cls}" cx="{px:.1f}" cy="{py:.1f}" r="3">'
                       f'<title>{escape(tip)}</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))


def _x_ticks(x0: float, x1: float, integer: bool) -> list[float]:
    ticks = [t for t in nice_ticks(x0, x1, 8) if x0 <= t <= x1]
    if integer:
        ticks = sorted({float(round(t)) for t in ticks if abs(t - round(t)) < 1e-9})
    return ticks or [x0, x1]


def bar_chart(values: Sequence[float], x_label: str, y_label: str, *, log_y: bool = True,
              title: str = "", width: int = W) -> Markup:
    """One bar per value (e.g. singular values, largest first), index from 1."""
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log_y)]
    if not vals:
        return Markup('<p class="muted">Nothing to plot.</p>')
    ys = [math.log10(v) for v in vals] if log_y else vals
    yt = _y_ticks(ys, log_y)
    out, sy = _frame(width, yt, log_y, x_label, y_label, title)
    n = len(vals)
    bw = (width - LEFT - RIGHT) / n
    base = sy(yt[0])
    for i, (v, y) in enumerate(zip(vals, ys, strict=True)):
        x = LEFT + i * bw + bw * 0.1
        top = sy(y)
        out.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{bw * 0.8:.1f}" '
                   f'height="{max(base - top, 0.5):.1f}"><title>σ{i + 1} = {escape(fmt(v))}'
                   f'</title></rect>')
    step = max(1, math.ceil(n / 16))
    for i in range(0, n, step):
        out.append(f'<text class="tick" x="{LEFT + (i + 0.5) * bw:.1f}" y="{H - BOTTOM + 16}" '
                   f'text-anchor="middle">{i + 1}</text>')
    out.append("</svg>")
    return Markup("".join(out))
