"""Small SVG line charts drawn on the server: the loss chart needs what gradio's LinePlot cannot draw (eval
points as points, a lone one included, and a marker at the best step), and an HTML chart shows at once
with its page update instead of after a chart library loads.

Pure string building, no gradio: `line_chart(...)` returns an <svg> for a gr.HTML. Every point carries a
<title>, so hovering shows its exact value.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

W = 640                              # the viewBox width; the SVG scales to its container's width
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 58


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str
    dots: bool = False               # draw every point as a dot (eval loss: few points, each one a measurement)
    css: str = ""                    # a class on the series' group, for tests and styling


@dataclass
class Marker:
    """A dashed vertical line at x with a label (e.g. the best step)."""
    x: float
    label: str
    color: str = "#16a34a"


@dataclass
class Chart:
    series: list[Series]
    x_title: str = "step"
    y_title: str = ""
    markers: list[Marker] = field(default_factory=list)
    empty: str = "No points yet."
    height: int = 260                # in viewBox units (W wide)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def fmt_tick(v: float, ticks: list[float]) -> str:
    """Ticks as people write them: 0.5, 1.25, 200, 2e-4 (never a bare exponent)."""
    if v == 0:
        return "0"
    span = max(abs(t) for t in ticks) if ticks else abs(v)
    if span < 1e-3 or span >= 1e6:
        m, e = f"{v:.2e}".split("e")
        return f"{float(m):g}e{int(e)}"
    return f"{v:.6g}" if abs(v) >= 1 else f"{v:.4g}"


def line_chart(chart: Chart) -> str:
    pts = [p for s in chart.series for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return f'<div class="studio-chart studio-chart-empty">{html.escape(chart.empty)}</div>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt = nice_ticks(min(xs), max(xs))
    yt = nice_ticks(min(ys), max(ys))
    x0, x1 = min(xt[0], min(xs)), max(xt[-1], max(xs))
    y0, y1 = min(yt[0], min(ys)), max(yt[-1], max(ys))
    H = chart.height
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [f'<svg class="studio-chart" viewBox="0 0 {W} {H}" width="100%" role="img" '
           f'aria-label="{html.escape(chart.y_title)} by {html.escape(chart.x_title)}" '
           f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">']
    for t in yt:  # grid and y labels
        y = py(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#6b7280" '
                   f'class="tick-y">{fmt_tick(t, yt)}</text>')
    for t in xt:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#f1f2f4"/>'
                   f'<text x="{x:.1f}" y="{TOP + ph + 15}" text-anchor="middle" fill="#6b7280" '
                   f'class="tick-x">{fmt_tick(t, xt)}</text>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{TOP + ph + 31}" text-anchor="middle" fill="#374151">'
               f'{html.escape(chart.x_title)}</text>'
               f'<text transform="translate(13 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'fill="#374151">{html.escape(chart.y_title)}</text>')
    for m in chart.markers:
        x = px(m.x)
        out.append(f'<g class="marker"><line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" '
                   f'stroke="{m.color}" stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{TOP + 11}" '
                   f'fill="{m.color}" text-anchor="{"end" if x > LEFT + pw * 0.7 else "start"}" '
                   f'dx="{-8 if x > LEFT + pw * 0.7 else 0}">{html.escape(m.label)}</text></g>')
    for s in chart.series:
        good = [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
        if not good:
            continue
        out.append(f'<g class="series {html.escape(s.css)}">')
        if len(good) > 1:
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
            out.append(f'<polyline points="{d}" fill="none" stroke="{s.color}" stroke-width="1.8"/>')
        if s.dots or len(good) == 1:
            for x, y in good:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{s.color}">'
                           f'<title>{html.escape(s.name)} {y:.4g} at {chart.x_title} {x:g}</title></circle>')
        else:  # hover targets without visible dots
            for x, y in good:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="transparent">'
                           f'<title>{html.escape(s.name)} {y:.4g} at {chart.x_title} {x:g}</title></circle>')
        out.append("</g>")
    lx = LEFT
    for s in chart.series:  # legend
        out.append(f'<g class="legend"><rect x="{lx}" y="{H - 14}" width="12" height="3" fill="{s.color}"/>'
                   f'<text x="{lx + 16}" y="{H - 10}" fill="#374151">{html.escape(s.name)}</text></g>')
        lx += 24 + 7 * len(s.name)
    out.append("</svg>")
    return "".join(out)
