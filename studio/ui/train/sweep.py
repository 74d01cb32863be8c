"""The Train tab's sweep: up to two settings of the form with 2-5 values each, queued as a grid of runs
(studio.runs.sweep), and each sweep's table (best first, the winner marked), its loss curves on one chart and
"Train the best longer"."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio.config import field_meta
from studio.runs import RunError
from studio.runs import sweep as sw

from ..common import box

NONE = ""


@dataclass
class SweepPanel:
    field1: gr.Dropdown
    values1: gr.Dropdown
    field2: gr.Dropdown
    values2: gr.Dropdown
    go: gr.Button
    pick: gr.Dropdown
    table: gr.Dataframe
    chart: gr.Plot
    steps: gr.Number
    longer: gr.Button
    timer: gr.Timer
    seen: gr.State


def build() -> SweepPanel:
    fields = [(label, key) for key, label in sw.sweep_fields()]
    with gr.Accordion("Sweep: try several values, keep the best", open=False, elem_id="sweep-panel"):
        gr.Markdown("Pick one or two settings and 2-5 values of each: every combination (at most "
                    f"{sw.MAX_RUNS}) is queued as a run with the rest of the form, and they train one after another. "
                    "The table ranks them by their lowest eval loss.")
        with gr.Row():
            field1 = gr.Dropdown(fields, value="train.learning_rate", label="Setting", elem_id="sweep-field1")
            values1 = gr.Dropdown(suggestions("train.learning_rate"), value=suggestions("train.learning_rate")[1:4],
                                  multiselect=True, allow_custom_value=True, label="Values", elem_id="sweep-values1")
        with gr.Row():
            field2 = gr.Dropdown([("(none)", NONE), *fields], value=NONE, label="Second setting (optional)",
                                 elem_id="sweep-field2")
            values2 = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Values",
                                  elem_id="sweep-values2")
        go = gr.Button("Queue the sweep", variant="secondary", elem_id="sweep-go")
        pick = gr.Dropdown([], label="Sweep", elem_id="sweep-pick")
        table = gr.Dataframe(pd.DataFrame(), interactive=False, wrap=True, elem_id="sweep-table", visible=False)
        chart = gr.Plot(label="Loss by run", visible=False, elem_id="sweep-chart")
        with gr.Row():
            steps = gr.Number(200, precision=0, minimum=1, label="Steps for the best run", scale=1,
                              elem_id="sweep-steps")
            longer = gr.Button("Train the best longer", size="sm", scale=1, elem_id="sweep-longer")
    return SweepPanel(field1, values1, field2, values2, go, pick, table, chart, steps, longer, gr.Timer(5.0),
                      gr.State(None))


# --- handlers (plain functions) -------------------------------------------------------------------

def suggestions(key: str) -> list[str]:
    """Values to pick from for a setting (any other can be typed): its choices, or a spread around its default."""
    if not key:
        return []
    sect, name = key.split(".", 1)
    meta = field_meta(sect, name)
    if meta.get("choices"):
        return list(meta["choices"])
    d = meta["default"]
    if isinstance(d, bool):
        return ["true", "false"]
    if isinstance(d, int):
        base = d or 1
        vals = [base // 2, base, base * 2, base * 4]
    else:
        base = d or 0.1
        vals = [base / 4, base / 2, base, base * 2.5, base * 5]
    lo, hi = meta.get("minimum"), meta.get("maximum")
    kept = [v for v in vals if (lo is None or v >= lo) and (hi is None or v <= hi) and (v or not isinstance(d, int))]
    return list(dict.fromkeys(sw.fmt(float(v)) if isinstance(v, float) else str(v) for v in kept))


def queue_sweep(f1, v1, f2, v2, values, data, root, checks=None) -> tuple[str | None, str]:
    """(sweep id or None, message) for "Queue the sweep"."""
    from .handlers import form_config
    cfg, msg = form_config(values, data, checks)
    if cfg is None:
        return None, msg
    specs = {f1: list(v1 or [])} if f1 else {}
    if f2 and f2 != f1:
        specs[f2] = list(v2 or [])
    elif f2:
        return None, "Pick two different settings (or none as the second)."
    try:
        sid, made = sw.queue_sweep(cfg, sw.parse_axes(specs), root)
    except (ValueError, RunError) as e:
        return None, str(e)
    return sid, (f"Queued sweep {sid}: {len(made)} runs, trained one after another (also with this page closed). "
                 f"Its table is below.")


def sweep_choices(root) -> list[tuple[str, str]]:
    return [(f"{s['base']} · {', '.join(k.split('.')[-1] for k in s['keys'])} · {len(s['runs'])} runs ({s['id']})",
             s["id"]) for s in sw.sweeps(root)]


def sweep_frame(s: dict) -> pd.DataFrame:
    """The table of sweep `s` (sw.find_sweep's) for the page: best first, the winner starred, values as set."""
    rows = []
    for r in sw.table(s):
        row = {"": "★" if r["winner"] else "", "run": r["name"]}
        row.update({k.split(".")[-1]: sw.fmt(r[k]) if isinstance(r[k], float) else r[k] for k in s["keys"]})
        row.update({"state": r["state"], "best eval loss": _num(r["best eval loss"]),
                    "check score": _num(r["check score"]), "tokens/s": _num(r["tokens/s"], 0),
                    "wall s": _num(r["wall s"], 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# --- wiring -----------------------------------------------------------------------------------------

def show(p: SweepPanel, sid: str | None, root, s: dict | None = None) -> list:
    """Updates for [table, chart]; `s`: the sweep, when the caller has found it already."""
    if not sid:
        return [gr.Dataframe(visible=False), gr.Plot(visible=False)]
    from .compare import overlay_chart
    s = s or sw.find_sweep(sid, root)
    return [gr.Dataframe(sweep_frame(s), visible=True),
            gr.Plot(overlay_chart([d.name for d in s["runs"]], root), visible=True)]


def wire(p: SweepPanel, settings_inputs: list, data_state: gr.State, notice: gr.HTML, root, demo: gr.Blocks,
         checks: gr.State | None = None) -> None:
    """The sweep's events: pick settings and values, queue, show a sweep (and follow it while it trains), train
    its best longer."""
    extra = [checks] if checks is not None else []

    def values_for(key):
        opts = suggestions(key)
        return gr.Dropdown(choices=opts, value=opts[1:4] if len(opts) > 3 else opts)

    p.field1.change(values_for, p.field1, p.values1)
    p.field2.change(values_for, p.field2, p.values2)

    def on_go(f1, v1, f2, v2, data, *args):
        chosen, values = (args[0], args[1:]) if extra else (None, args)
        sid, msg = queue_sweep(f1, v1, f2, v2, values, data, root, chosen)
        if sid is None:
            return [gr.HTML(box(msg, "error"), visible=True), gr.skip(), gr.skip(), gr.skip()]
        return [gr.HTML(box(msg, "ok"), visible=True), gr.Dropdown(choices=sweep_choices(root), value=sid),
                *show(p, sid, root)]

    p.go.click(on_go, [p.field1, p.values1, p.field2, p.values2, data_state, *extra, *settings_inputs],
               [notice, p.pick, p.table, p.chart])
    p.pick.change(lambda sid: show(p, sid, root), p.pick, [p.table, p.chart])

    def on_longer(sid, steps):
        if not sid:
            return gr.HTML(box("Pick a sweep first.", "info"), visible=True)
        try:
            run_dir, pos = sw.train_longer(sw.find_sweep(sid, root), int(steps or 0), root)
        except (ValueError, RunError) as e:
            return gr.HTML(box(str(e), "error"), visible=True)
        return gr.HTML(box(f"Queued '{run_dir.name}' as #{pos}: the winner's settings with {int(steps)} steps.",
                           "ok"), visible=True)

    p.longer.click(on_longer, [p.pick, p.steps], notice)

    def on_load():
        choices = sweep_choices(root)
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    demo.load(on_load, [], p.pick)

    def on_tick(sid, seen):
        if not sid:
            return [gr.skip()] * 3
        try:
            s = sw.find_sweep(sid, root)  # once per tick: it reads every run's run.json
        except ValueError:  # its runs were deleted
            return [gr.skip()] * 3
        key = progress_key(s)
        return [gr.skip()] * 3 if key == seen else [*show(p, sid, root, s), key]

    p.timer.tick(on_tick, [p.pick, p.seen], [p.table, p.chart, p.seen], show_progress="hidden")


def progress_key(s: dict) -> tuple:
    """Changes when any run of sweep `s` moved (state, step): the table and chart are redrawn only then."""
    from studio.runs.process import status
    return tuple((d.name, st.get("state"), st.get("step")) for d in s["runs"] for st in [status(d)])
