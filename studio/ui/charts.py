"""The Train tab's charts as plotly figures for gr.Plot (plotly.js ships inside gradio: nothing is fetched).

gradio's LinePlot draws lines only: it cannot show eval losses as points (a lone one vanishes) or mark the
best step, which is why these are plotly. A figure is built only when the run's files changed (the tab's
signature check), never per idle tick.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str
    dots: bool = False               # every point as a marker (eval loss: few points, each one a measurement)


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
    height: int = 300
    y_format: str = ""  # a d3 tick format for the y axis: "~e" writes a learning rate 2e-3 as the form does


def figure(chart: Chart):
    """A plotly Figure: lines (with markers where `dots`), dashed markers, readable ticks (2e-4, not 200µ)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for s in chart.series:
        if not s.points:
            continue
        xs, ys = zip(*s.points)
        lone = len(s.points) == 1
        fig.add_trace(go.Scatter(
            x=list(xs), y=list(ys), name=s.name, mode="markers" if lone else ("lines+markers" if s.dots else "lines"),
            line={"color": s.color, "width": 2, "simplify": False}, marker={"color": s.color, "size": 7},
            hovertemplate=f"{s.name} %{{y:.4g}} at {chart.x_title} %{{x}}<extra></extra>"))
    for m in chart.markers:
        fig.add_vline(x=m.x, line_dash="dash", line_color=m.color, line_width=1.5,
                      annotation_text=m.label, annotation_font_color=m.color, annotation_position="top")
    if not fig.data:
        fig.add_annotation(text=chart.empty, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                           font={"color": "#6b7280", "size": 13})
    axis = {"showgrid": True, "gridcolor": "#e5e7eb", "zeroline": False, "exponentformat": "e",
            "showexponent": "all"}
    ys = [y for s in chart.series for _, y in s.points]
    if ys and max(ys) - min(ys) <= 1e-9 * max(abs(y) for y in ys):  # a constant (e.g. the learning rate)
        v = ys[0]  # plotly would centre it in a +-0.5 range, which reads as 0 for a learning rate of 5e-3
        fig.update_yaxes(range=[v - abs(v) * 0.5, v + abs(v) * 0.5] if v else [-1, 1])
    fig.update_layout(
        template="plotly_white", height=chart.height, margin={"l": 60, "r": 16, "t": 28, "b": 40},
        xaxis={**axis, "title": {"text": chart.x_title}, "visible": bool(fig.data)},
        yaxis={**axis, "title": {"text": chart.y_title}, "visible": bool(fig.data),
               **({"tickformat": chart.y_format} if chart.y_format else {})},
        legend={"orientation": "h", "y": -0.25, "x": 0}, showlegend=len(chart.series) > 1 and bool(fig.data),
        hovermode="closest")
    return fig
