"""The Train tab's charts of one run, read from its metrics.jsonl: loss (train and eval), learning rate, and a third
chart that the run's stage chooses in studio.stages (its own series, e.g. DPO's rewards; else the gradient norm).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from studio import runs, stages
from studio.config import RunConfig
from studio.data import CONVERSATIONS
from studio.runs.events import Losses, loss_series, read_metrics_events

from .. import charts

LOSS_COLUMNS = ["step", "loss", "series"]
SERIES = ("train loss", "eval loss")
TRAIN_COLOR, EVAL_COLOR = "#4f7cff", "#f59e0b"
PALETTE = (TRAIN_COLOR, EVAL_COLOR, "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#f97316", "#64748b")
GRAD_NOTE = ("The gradient norm (before clipping) appears here: a spike is the first sign of a learning rate that is "
             "too high.")


def empty_frame(**dtypes) -> pd.DataFrame:
    """An empty frame with real dtypes: gradio picks the axis type from the dtype, and an object column
    would make the axis categorical."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _empty_loss() -> pd.DataFrame:
    return empty_frame(step=float, loss=float, series=str)


def _empty_lr() -> pd.DataFrame:
    return empty_frame(step=float, learning_rate=float)


def loss_frame(run_dir: str | Path | None, losses: Losses | None = None) -> pd.DataFrame:
    """Train and eval loss on one x axis (step): columns step, loss, series.

    Both series are always present (a NaN row stands in for one without points yet)."""
    out = _empty_loss()
    if run_dir:
        losses = losses or loss_series(Path(run_dir))
        rows = [(s, v, name) for name, pts in zip(SERIES, (losses.train, losses.eval)) for s, v in pts]
        if rows:
            out = pd.DataFrame(rows, columns=LOSS_COLUMNS).astype({"step": float, "loss": float, "series": str})
    first = float(out["step"].min()) if len(out) else 0.0
    holders = [{"step": first, "loss": float("nan"), "series": s} for s in SERIES if s not in set(out["series"])]
    if holders:
        out = pd.concat([out, pd.DataFrame(holders)]).astype({"step": float, "loss": float, "series": str})
    return out.reset_index(drop=True)


def lr_frame(run_dir: str | Path | None, events: list[dict] | None = None) -> pd.DataFrame:
    if not run_dir:
        return _empty_lr()
    pts = train_points(run_dir, "learning_rate", events)
    return pd.DataFrame({"step": [float(s) for s, _ in pts], "learning_rate": [v for _, v in pts]},
                        columns=["step", "learning_rate"]).astype(float)


def train_points(run_dir: str | Path, key: str, events: list[dict] | None = None) -> list[tuple[int, float]]:
    """(step, value) of a number the trainer logs with each train step (learning_rate, grad_norm)."""
    events = read_metrics_events(Path(run_dir)) if events is None else events
    return [(e["step"], float(e[key])) for e in events if e.get("kind") == "train"
            and isinstance(e.get("step"), int) and isinstance(e.get(key), (int, float))]


# gradio draws a gr.Plot's label badge (~30 px high) over the figure's top-left corner: the top tick label (the
# peak learning rate, 2e-3 at the top edge) sat under it with plotly's 28 px top margin; 44 px puts it below.
TOP_MARGIN = 44
MAX_STEP_TICKS = 10


def step_ticks(top: float) -> int:
    """A whole-number tick spacing (1, 2, 5, 10, 20, 50, ...) giving at most MAX_STEP_TICKS ticks up to step `top`:
    plotly's own choice for 8 steps was 0.5, which labels steps 1.5 and 2.5 that no run has."""
    d = 1
    while top / d > MAX_STEP_TICKS:
        d = d * 5 // 2 if str(d)[0] == "2" else d * 2  # 1, 2, 5, 10, 20, 50, ...
    return d


def readable(fig):
    """The studio's step charts drawn readably: whole-number ticks on the step axis and the top tick label clear of
    gradio's label badge (TOP_MARGIN). Returns the figure."""
    xs = [x for t in fig.data for x in (t.x or ()) if isinstance(x, (int, float))]
    if xs:
        fig.update_xaxes(tickmode="linear", tick0=0, dtick=step_ticks(max(xs)))
    fig.update_layout(margin={"t": TOP_MARGIN})
    return fig


def loss_chart(losses: Losses):
    """Train loss as a line, every eval loss as a point (on a line when there are several), the best step marked."""
    best = losses.best_eval
    marks = [charts.Marker(best[0], f"best eval: step {best[0]}")] if best and len(losses.eval) > 1 else []
    return readable(charts.figure(charts.Chart(
        [charts.Series("train loss", losses.train, TRAIN_COLOR),
         charts.Series("eval loss", losses.eval, EVAL_COLOR, dots=True)],
        y_title="loss", markers=marks, empty="The loss appears here after the first logged step.")))


def small_chart(points: list[tuple[int, float]], name: str, empty: str, y_format: str = ""):
    return readable(charts.figure(charts.Chart([charts.Series(name, points, TRAIN_COLOR)], y_title=name,
                                               empty=empty, height=210, y_format=y_format)))


def run_stage(run_dir: str | Path) -> stages.Stage:
    """The stage the run trains, from its config.yaml. A missing or unreadable config counts as the stage that trains
    on conversations (sft, the default): the charts still show what metrics.jsonl holds."""
    try:
        return stages.get(RunConfig.load(Path(run_dir) / runs.CONFIG).train.stage)
    except (OSError, ValueError, TypeError):
        return stages.for_data(CONVERSATIONS)


def stage_chart(title: str, names: list[str], points: list[list[tuple[int, float]]]):
    """A stage's own chart in place of the gradient norm (studio.stages: DPO's and KTO's rewards)."""
    series = [charts.Series(name, pts, PALETTE[i % len(PALETTE)]) for i, (name, pts) in enumerate(zip(names, points))]
    return readable(charts.figure(charts.Chart(series, y_title=title, empty="", height=210)))


def third_chart(run_dir: str | Path | None, events: list[dict]):
    """The chart studio.stages names for the run's stage when it has one and its first series has points, else the
    gradient norm. A stage that trains for the checks shows each check's mean reward too."""
    stage = run_stage(run_dir) if run_dir else None
    chart = stage.chart if stage else None
    if chart is not None:
        title, series = chart
        if stage.needs_checks:  # each check's mean reward too (grpo): check_<name>
            prefix = stages.CHECK_KEY.format("")
            found = dict.fromkeys(k for e in events or [] if e.get("kind") == "train" for k in e
                                  if k.startswith(prefix))
            series = (*series, *((k, f"check {k[len(prefix):]}") for k in found))
        points = [train_points(run_dir, key, events) for key, _ in series]
        if points[0]:
            return stage_chart(title, [name for _, name in series], points)
    grad = train_points(run_dir, "grad_norm", events) if run_dir else []
    return small_chart(grad, "grad norm", GRAD_NOTE)


def run_charts(losses: Losses, events: list[dict], run_dir: str | Path | None = None) -> tuple:
    """(loss, learning rate, third chart) as plotly figures for the tab's three gr.Plot."""
    lr = train_points(run_dir, "learning_rate", events) if run_dir else []
    return (loss_chart(losses),
            small_chart(lr, "learning rate", "The learning rate appears here after the first logged step.", "~e"),
            third_chart(run_dir, events))
