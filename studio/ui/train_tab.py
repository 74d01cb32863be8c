"""Train tab: the settings form, Start / Stop / Resume, live progress and charts, the log, earlier runs.

The trainer runs in its own process (`studio train <run>/config.yaml --output <run>`); this tab only
creates the run folder, starts that command, and reads back status.json, metrics.jsonl and train.log
every 2 s (gr.Timer). Which run a browser is watching is per-browser gr.State; reloading the page
re-attaches to the run that is training (or the newest one).
"""
from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import runs
from studio.runs.events import ACTIVE_STATES, Losses, loss_series, read_metrics_events
from studio.config import RunConfig, field_meta
from studio.data import DataError

from . import charts
from . import settings as settings_mod
from .common import box, fmt_duration, is_active

POLL_S = 2.0  # the issue asks for charts "about every 2 s"
LOG_LINES = 14  # what the log box shows without scrolling (it opens at the top, not at the end)
LOSS_COLUMNS = ["step", "loss", "series"]
SERIES = ("train loss", "eval loss")


def _empty(**dtypes) -> pd.DataFrame:
    """An empty frame with real dtypes: gradio picks the axis type from the dtype, and an object column
    would make the axis categorical."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _empty_loss() -> pd.DataFrame:
    return _empty(step=float, loss=float, series=str)


def _empty_lr() -> pd.DataFrame:
    return _empty(step=float, learning_rate=float)


def _is_skip(update) -> bool:
    return isinstance(update, dict) and update.get("__type__") == "update" and len(update) == 1


RUN_COLUMNS = ["name", "state", "step", "train loss", "eval loss", "best", "adapter", "id"]
TRAIN_COLOR, EVAL_COLOR = "#4f7cff", "#f59e0b"
PALETTE = ("#4f7cff", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#f97316", "#64748b")


# --- plain handlers -------------------------------------------------------------------------------

def attach(root: str | Path | None) -> str | None:
    """The run a freshly loaded page shows: the one training now, else the newest."""
    busy = runs.active_run(root)
    if busy is not None:
        return str(busy)
    listed = runs.list_runs(root)
    return listed[0]["path"] if listed else None


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
    pts = _train_points(run_dir, "learning_rate", events)
    return pd.DataFrame({"step": [float(s) for s, _ in pts], "learning_rate": [v for _, v in pts]},
                        columns=["step", "learning_rate"]).astype(float)


def _train_points(run_dir: str | Path, key: str, events: list[dict] | None = None) -> list[tuple[int, float]]:
    """(step, value) of a number the trainer logs with each train step (learning_rate, grad_norm)."""
    events = read_metrics_events(Path(run_dir)) if events is None else events
    return [(e["step"], float(e[key])) for e in events if e.get("kind") == "train"
            and isinstance(e.get("step"), int) and isinstance(e.get(key), (int, float))]


def loss_chart(losses: Losses):
    """Train loss as a line, every eval loss as a point (on a line when there are several), the best step marked."""
    best = losses.best_eval
    marks = [charts.Marker(best[0], f"best eval: step {best[0]}")] if best and len(losses.eval) > 1 else []
    return charts.figure(charts.Chart(
        [charts.Series("train loss", losses.train, TRAIN_COLOR),
         charts.Series("eval loss", losses.eval, EVAL_COLOR, dots=True)],
        y_title="loss", markers=marks, empty="The loss appears here after the first logged step."))


def small_chart(points: list[tuple[int, float]], name: str, empty: str):
    return charts.figure(charts.Chart([charts.Series(name, points, TRAIN_COLOR)], y_title=name, empty=empty,
                                      height=210))


def alert_html(events: list[dict], losses: Losses) -> str:
    """The overfitting alert (while no lower eval loss came after it) and the early stop, from the trainer's
    events in metrics.jsonl."""
    out = []
    best = losses.best_eval
    alerts = [e for e in events if e.get("kind") == "overfit"]
    if alerts and best and alerts[-1].get("best_step") == best[0]:
        a = alerts[-1]
        out.append(box(f"Overfitting: the eval loss has risen {a['rises']} evaluations in a row, to "
                       f"{a['eval_loss']:.4f} at step {a['step']}, while the train loss still falls. It was lowest at "
                       f"step {a['best_step']} ({a['best_eval_loss']:.4f}): that checkpoint is kept, and Chat and "
                       f"Export pick it by default. More steps will not help here; fewer steps, a lower learning "
                       f"rate, more data or early stopping will.", "warn"))
    stops = [e for e in events if e.get("kind") == "early_stop"]
    if stops:
        e = stops[-1]
        out.append(box(f"Stopped early at step {e['step']}: the eval loss had not improved for {e['patience']} "
                       f"evaluations. Best: step {e['best_step']} ({e['best_eval_loss']:.4f}).", "info"))
    return "".join(out)


def log_tail(run_dir: str | Path | None, n: int = LOG_LINES) -> str:
    """The last lines of train.log, or of console.log when the trainer died before it could log."""
    if not run_dir:
        return ""
    for name in (runs.LOG, runs.CONSOLE):
        p = Path(run_dir) / name
        if p.is_file() and p.stat().st_size:
            with open(p, "rb") as f:
                f.seek(max(0, p.stat().st_size - 64_000))
                text = f.read().decode("utf-8", errors="replace")
            lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # progress bars redraw with \r
            return "\n".join(lines[-n:])
    return ""


def progress_html(st: dict, run_name: str = "", eval_loss: float | None = None) -> str:
    """Progress bar with step, epoch, tokens/s and ETA, plus the trainer's message or error."""
    state = st.get("state") or "unknown"
    step, total = st.get("step") or 0, st.get("max_steps") or 0
    pct = 100.0 * step / total if total else 0.0
    if state == "finished":
        pct = 100.0
    facts = [f"step <b>{step}</b> / {total or '?'}"]
    if isinstance(st.get("epoch"), (int, float)):
        facts.append(f"epoch {st['epoch']:.2f}")
    if isinstance(st.get("tokens_per_s"), (int, float)):
        facts.append(f"{st['tokens_per_s']:.0f} tokens/s")
    if state in ("running", "stopping") and st.get("eta_s") is not None:
        facts.append(f"ETA {fmt_duration(st.get('eta_s'))}")
    if isinstance(st.get("loss"), (int, float)):
        facts.append(f"loss {st['loss']:.4f}")
    if isinstance(eval_loss, (int, float)):  # one eval point draws no line, so it is spelled out here too
        facts.append(f"eval loss {eval_loss:.4f}")
    msg = st.get("message") or ""
    out = (f'<div class="studio-run"><div class="studio-run-head"><span class="studio-state studio-state-{state}">'
           f'{html.escape(state)}</span> <b>{html.escape(run_name)}</b> <span class="studio-msg">'
           f'{html.escape(msg) if state != "failed" else ""}</span></div>'
           f'<div class="studio-bar"><div style="width:{pct:.1f}%"></div></div>'
           f'<div class="studio-facts">{" · ".join(facts)}</div></div>')
    if state == "failed":
        out += box(st.get("error") or msg or "The run failed; see the log below.", "error")
    return out


@dataclass
class RunView:
    run_dir: str | None
    state: str
    html: str
    loss: pd.DataFrame
    lr: pd.DataFrame
    charts: tuple  # loss, learning rate and grad norm charts (plotly figures)
    alert: str
    log: str
    command: str
    can_start: bool
    can_stop: bool
    can_resume: bool
    signature: tuple


def signature(run_dir: str | None) -> tuple:
    """Changes whenever anything the tab shows could have changed (so an idle tick costs ~nothing)."""
    if not run_dir:
        return (None,)
    out = [run_dir]
    for name in (runs.STATUS, runs.METRICS, runs.LOG, runs.CONSOLE):
        try:
            s = (Path(run_dir) / name).stat()
            out.append((s.st_size, s.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def view_key(run_dir: str | None, root: str | Path | None) -> tuple:
    """What decides whether the screen is stale: the run's files, whether Start is allowed, the state."""
    state = runs.status(Path(run_dir)).get("state") if run_dir and Path(run_dir).is_dir() else "none"
    return signature(run_dir), runs.active_run(root) is None, state


def run_view(run_dir: str | None, root: str | Path | None) -> RunView:
    busy = runs.active_run(root)
    if not run_dir or not Path(run_dir).is_dir():
        empty = Losses()
        return RunView(None, "none", box("No run yet: check the data, pick a preset and press Start.", "info"),
                       loss_frame(None), lr_frame(None), _charts(empty, []), "", "", "", busy is None, False, False,
                       (None,))
    st = runs.status(Path(run_dir))
    state = st.get("state") or "unknown"
    name = runs.run_name(run_dir)
    has_ckpt = runs.latest_checkpoint(run_dir) is not None
    events = read_metrics_events(Path(run_dir))  # read once for every chart
    losses = loss_series(Path(run_dir), events)
    return RunView(run_dir, state, progress_html(st, name, losses.last_eval), loss_frame(run_dir, losses),
                   lr_frame(run_dir, events), _charts(losses, events, run_dir), alert_html(events, losses),
                   log_tail(run_dir), shlex.join(runs.train_command(Path(run_dir))),
                   can_start=busy is None, can_stop=state in ACTIVE_STATES,
                   can_resume=busy is None and state in ("stopped", "failed") and has_ckpt,
                   signature=signature(run_dir))


def _charts(losses: Losses, events: list[dict], run_dir: str | None = None) -> tuple:
    lr = _train_points(run_dir, "learning_rate", events) if run_dir else []
    grad = _train_points(run_dir, "grad_norm", events) if run_dir else []
    margin = _train_points(run_dir, "reward_margin", events) if run_dir else []
    third = (reward_chart(margin, _train_points(run_dir, "reward_accuracy", events)) if margin else
             small_chart(grad, "grad norm", "The gradient norm (before clipping) appears here: a spike is the first "
                                            "sign of a learning rate that is too high."))
    return (loss_chart(losses),
            small_chart(lr, "learning rate", "The learning rate appears here after the first logged step."), third)


def reward_chart(margin: list[tuple[int, float]], accuracy: list[tuple[int, float]]):
    """A DPO run's preference signal instead of the gradient norm: the reward margin (how much more the tuned
    model prefers the chosen answer than the reference does, times beta) and the share of pairs it ranks right."""
    return charts.figure(charts.Chart([charts.Series("reward margin", margin, TRAIN_COLOR),
                                       charts.Series("preference accuracy", accuracy, EVAL_COLOR)],
                                      y_title="DPO rewards", empty="", height=210))


def runs_frame(root: str | Path | None) -> pd.DataFrame:
    rows = []
    for r in runs.list_runs(root):
        rows.append({"name": r["name"], "state": r["state"],
                     "step": f"{r['step'] or 0}/{r['max_steps'] or '?'}",
                     "train loss": round(r["loss"], 4) if isinstance(r["loss"], (int, float)) else None,
                     "eval loss": round(r["eval_loss"], 4) if isinstance(r["eval_loss"], (int, float)) else None,
                     "best": _best_label(r["best"]), "adapter": "yes" if r["adapter"] else "", "id": r["id"]})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _best_label(best: runs.Best | None) -> str:
    if best is None:
        return ""
    return f"★ {'final' if best.name == runs.FINAL else best.name} ({best.eval_loss:.4f})"


def overlay_frame(run_ids: list[str] | None, root: str | Path | None) -> pd.DataFrame:
    """Train and eval loss of several runs: columns step, loss, run, series."""
    frames = []
    base = runs.runs_root(root)
    for rid in run_ids or []:
        lf = loss_frame(base / rid).dropna()
        if not lf.empty:
            frames.append(pd.DataFrame({"step": lf["step"], "loss": lf["loss"], "run": rid, "series": lf["series"]}))
    return (pd.concat(frames, ignore_index=True) if frames
            else _empty(step=float, loss=float, run=str, series=str))


def overlay_chart(run_ids: list[str] | None, root: str | Path | None):
    """Several runs on one chart: each run's train loss as a line, its eval losses as dots in the same colour."""
    series = []
    base = runs.runs_root(root)
    for i, rid in enumerate(run_ids or []):
        losses, color, name = loss_series(base / rid), PALETTE[i % len(PALETTE)], runs.run_name(base / rid)
        series += [charts.Series(f"{name} train", losses.train, color),
                   charts.Series(f"{name} eval", losses.eval, color, dots=True)]
    return charts.figure(charts.Chart(series, y_title="loss", empty="Pick runs to compare."))


def compare_frame(run_ids: list[str] | None, root: str | Path | None) -> pd.DataFrame:
    """One column per run; rows: the settings that differ between them, then their results."""
    if not run_ids or len(run_ids) < 2:
        return pd.DataFrame(columns=["", *(run_ids or [])])
    base = runs.runs_root(root)
    keys, rows = runs.compare([base / r for r in run_ids])
    results = ["final eval loss", "best eval loss", "best at", "tokens/s", "wall s", "peak memory GB", "state"]
    names = [f"{i + 1}. {r['name']}" for i, r in enumerate(rows)]

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    table = [[_setting_label(k), *(cell(r[k]) for r in rows)] for k in keys]
    table += [[k, *(cell(r[k]) for r in rows)] for k in results]
    if not keys:
        table.insert(0, ["(settings)", *(["the same"] * len(rows))])
    return pd.DataFrame(table, columns=["", *names])


def _setting_label(key: str) -> str:
    """"train.learning_rate" -> "Learning rate (train.learning_rate)": the form's label and the config's name."""
    parts = key.split(".")
    try:
        label = field_meta(parts[0], parts[1])["label"] if len(parts) == 2 else None
    except KeyError:
        label = None
    return f"{label} ({key})" if label else key


def start_from_form(values: list | tuple, data: dict | None, root: str | Path | None) -> tuple[str | None, str]:
    """(run folder or None, message) for the Start button; every failure becomes a readable message."""
    if not data:
        return None, "No usable data yet: upload a file or pick a sample on the Data tab (and fix what it reports)."
    try:
        cfg = settings_mod.values_to_config(values, data)
        run_dir = runs.launch(cfg, root)
    except (ValueError, DataError, runs.RunError) as e:  # DataError is a ValueError; listed for the reader
        return None, str(e)
    return str(run_dir), f"Started run '{cfg.name}' in {run_dir}."


def stop_run(run_dir: str | None) -> str:
    if not run_dir:
        return "No run selected."
    st = runs.stop(Path(run_dir))
    if st.get("state") in ACTIVE_STATES:
        return "Stopping: the trainer finishes its current step, saves a checkpoint and the adapter, then ends."
    return f"The run is not training (state: {st.get('state')})."


def resume_run(run_dir: str | None, root: str | Path | None) -> str:
    if not run_dir:
        return "No run selected."
    try:
        runs.resume(Path(run_dir), root)
    except runs.RunError as e:
        return str(e)
    return "Resuming from the last checkpoint."


# --- the tab --------------------------------------------------------------------------------------

@dataclass
class TrainTab:
    settings: settings_mod.Settings
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    notice: gr.HTML
    progress: gr.HTML
    alert: gr.HTML
    loss_plot: gr.Plot
    lr_plot: gr.Plot
    grad_plot: gr.Plot
    log: gr.Textbox
    command: gr.Code
    runs_table: gr.Dataframe
    refresh: gr.Button
    overlay: gr.Dropdown
    compare_chart: gr.Plot
    compare_table: gr.Dataframe
    open_chat: gr.Button
    timer: gr.Timer
    run: gr.State        # the run folder this browser watches
    seen: gr.State       # signature of what is on screen, so idle ticks send nothing


def build(root: str) -> TrainTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=360, elem_classes="studio-panel"):
            gr.Markdown("### Model and settings")
            settings = settings_mod.build()
        with gr.Column(scale=7, min_width=420):
            with gr.Row():
                start = gr.Button("▶ Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("■ Stop", variant="stop", interactive=False, elem_id="train-stop")
                resume = gr.Button("↻ Resume", interactive=False, elem_id="train-resume")
            notice = gr.HTML(visible=False, elem_id="train-notice")
            progress = gr.HTML(box("No run yet: check the data, pick a preset and press Start.", "info"),
                               elem_id="train-progress")
            empty = _charts(Losses(), [])
            alert = gr.HTML("", elem_id="train-alert")
            loss_plot = gr.Plot(empty[0], label="Loss", elem_id="loss-plot")
            lr_plot = gr.Plot(empty[1], label="Learning rate", elem_id="lr-plot")
            grad_plot = gr.Plot(empty[2], label="Gradient norm (before clipping); DPO runs: reward margin and "
                                                "preference accuracy", elem_id="grad-plot")
            log = gr.Textbox(label="Trainer log (last lines of train.log)", lines=LOG_LINES + 2,
                             max_lines=LOG_LINES + 2, autoscroll=True, interactive=False, elem_id="train-log")
            command = gr.Code(label="The command this run executes", language="shell", interactive=False,
                              elem_id="train-command", visible=False)
    with gr.Accordion("Earlier runs", open=True, elem_id="runs-list"):
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100)
            gr.Markdown("Click a row to show that run above. Pick runs below to compare their loss curves.")
        runs_table = gr.Dataframe(pd.DataFrame(columns=RUN_COLUMNS), interactive=False, wrap=True,
                                  max_height=260, elem_id="runs-table")
        overlay = gr.Dropdown(choices=[], multiselect=True, label="Compare runs",
                              info="Pick two or more: their loss curves on one chart, the settings that differ and "
                                   "their results.", elem_id="runs-overlay")
        compare_chart = gr.Plot(label="Loss by run", elem_id="runs-overlay-plot", visible=False)
        compare_table = gr.Dataframe(pd.DataFrame(columns=[""]), interactive=False, wrap=True, visible=False,
                                     elem_id="runs-compare-table")
        open_chat = gr.Button("Open the first two in Chat, against each other", visible=False, size="sm",
                              elem_id="runs-open-chat")
    timer = gr.Timer(POLL_S)
    return TrainTab(settings, start, stop, resume, notice, progress, alert, loss_plot, lr_plot, grad_plot, log,
                    command, runs_table, refresh, overlay, compare_chart, compare_table, open_chat, timer,
                    gr.State(None), gr.State(None))


def wire(t: TrainTab, data_state: gr.State, root: str, demo: gr.Blocks) -> None:
    settings_mod.wire(t.settings, data_state, root)
    view_outs = [t.progress, t.alert, t.loss_plot, t.lr_plot, t.grad_plot, t.log, t.command, t.start, t.stop,
                 t.resume, t.seen]
    list_outs = [t.runs_table, t.overlay]

    def show(run_dir, seen, force=False):
        """(updates for view_outs, whether the run's state changed since `seen`). An idle tick reads three
        file stats and a status.json, and sends nothing."""
        key = view_key(run_dir, root)
        if not force and seen == key:
            return [gr.skip()] * len(view_outs), False
        changed = not isinstance(seen, (tuple, list)) or len(seen) != 3 or seen[2] != key[2]
        v = run_view(run_dir, root)
        return [v.html, v.alert, *v.charts, v.log, gr.Code(v.command, visible=bool(v.command)),
                gr.Button(interactive=v.can_start),
                gr.Button(interactive=v.can_stop), gr.Button(interactive=v.can_resume), key], changed

    def run_list():
        df = runs_frame(root)
        return [df, gr.Dropdown(choices=[(f"{n} ({i})", i) for n, i in zip(df["name"], df["id"])])]

    def notice(msg, kind):
        return gr.HTML(box(msg, kind), visible=bool(msg))

    def on_load():
        run_dir = attach(root)
        form = [gr.skip()] * len(t.settings.inputs)
        if run_dir:  # the form shows the settings of the run on screen
            try:
                form = settings_mod.config_values(RunConfig.load(Path(run_dir) / runs.CONFIG))
            except ValueError:
                pass
        return [run_dir, *show(run_dir, None, force=True)[0], *run_list(), *form]

    demo.load(on_load, [], [t.run, *view_outs, *list_outs, *t.settings.inputs])

    def on_tick(run_dir, seen):
        if not run_dir:  # nothing watched yet: a run started from another browser shows up here too
            run_dir = attach(root)
        outs, changed = show(run_dir, seen)
        # the run list follows the watched run's step and state (cheap: it reads a few small files per run)
        moved = changed or (not _is_skip(outs[-1]) and is_active(run_dir))
        # a new state says it all: the last button's message ("Started…", "Stopping…") is stale then
        note = gr.HTML(visible=False) if changed and seen is not None else gr.skip()
        return [run_dir, *outs, *(run_list() if moved else [gr.skip()] * len(list_outs)), note]

    t.timer.tick(on_tick, [t.run, t.seen], [t.run, *view_outs, *list_outs, t.notice], show_progress="hidden")

    def on_start(data, *values):
        run_dir, msg = start_from_form(values, data, root)
        if run_dir is None:
            gr.Warning(msg)
            return [gr.skip(), notice(msg, "error"), *[gr.skip()] * len(view_outs), *[gr.skip()] * len(list_outs)]
        return [run_dir, notice(msg, "ok"), *show(run_dir, None, force=True)[0], *run_list()]

    t.start.click(on_start, [data_state, *t.settings.inputs], [t.run, t.notice, *view_outs, *list_outs])

    def on_stop(run_dir):
        return [notice(stop_run(run_dir), "info"), *show(run_dir, None, force=True)[0]]

    t.stop.click(on_stop, t.run, [t.notice, *view_outs])

    def on_resume(run_dir):
        msg = resume_run(run_dir, root)
        return [notice(msg, "info"), *show(run_dir, None, force=True)[0], *run_list()]

    t.resume.click(on_resume, t.run, [t.notice, *view_outs, *list_outs])
    t.refresh.click(run_list, [], list_outs)

    def on_select(df, evt: gr.SelectData):
        try:
            rid = df.iloc[evt.index[0]]["id"]
        except (IndexError, KeyError, TypeError):
            return [gr.skip()] * (1 + len(view_outs))
        run_dir = str(runs.runs_root(root) / rid)
        return [run_dir, *show(run_dir, None, force=True)[0]]

    t.runs_table.select(on_select, t.runs_table, [t.run, *view_outs])

    def on_compare(ids):
        many = bool(ids) and len(ids) >= 2
        try:
            table = compare_frame(ids, root)
        except (ValueError, OSError) as e:  # a run folder with a broken config: say so, keep the page
            return gr.skip(), gr.Dataframe(visible=False), gr.Button(visible=False), \
                gr.HTML(box(str(e), "error"), visible=True)
        chart = gr.Plot(overlay_chart(ids, root), visible=True) if ids else gr.Plot(None, visible=False)
        return chart, gr.Dataframe(table, visible=many), gr.Button(visible=many), gr.skip()

    t.overlay.change(on_compare, t.overlay, [t.compare_chart, t.compare_table, t.open_chat, t.notice])
