"""The Train tab's components: `build()` lays them out (the settings form on the left) and returns them as a
TrainTab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio.runs.events import Losses

from .. import settings as settings_mod
from ..common import box
from . import picker as picker_mod
from . import queue as queue_mod
from . import sweep as sweep_mod
from .compare import RUN_COLUMNS
from .curves import run_charts
from .handlers import LOG_LINES

POLL_S = 2.0  # the issue asks for charts "about every 2 s"


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
    picker: picker_mod.Picker | None = None  # which model, and will it fit
    queue_it: gr.Button | None = None  # shown while a run trains: the form becomes a queued run
    data_label: gr.Markdown | None = None  # the data Start trains on
    queue: queue_mod.QueuePanel | None = None
    sweep: sweep_mod.SweepPanel | None = None
    new_name: gr.Textbox | None = None
    rename: gr.Button | None = None
    delete: gr.Button | None = None
    delete_armed: gr.State | None = None  # the run a first Delete press named; the second deletes it
    follow: gr.State | None = None  # True: once the watched run ends, show the run that trains then (the queue's
    #                                 next); False after the user picked a run from the list


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
                queue_it = gr.Button("+ Queue it", visible=False, elem_id="train-queue")
            data_label = gr.Markdown("", elem_id="train-data")
            notice = gr.HTML(visible=False, elem_id="train-notice")
            queue = queue_mod.build()
            sweep = sweep_mod.build()
            progress = gr.HTML(box("No run yet: check the data, pick a preset and press Start.", "info"),
                               elem_id="train-progress")
            empty = run_charts(Losses(), [])
            alert = gr.HTML("", elem_id="train-alert")
            loss_plot = gr.Plot(empty[0], label="Loss", elem_id="loss-plot")
            lr_plot = gr.Plot(empty[1], label="Learning rate", elem_id="lr-plot")
            grad_plot = gr.Plot(empty[2], label="Gradient norm (before clipping); DPO runs: reward margin and "
                                                "preference accuracy", elem_id="grad-plot")
            log = gr.Textbox(label="Trainer log (last lines of train.log)", lines=LOG_LINES + 2,
                             max_lines=LOG_LINES + 2, autoscroll=True, interactive=False, elem_id="train-log")
            command = gr.Code(label="The command this run executes", language="shell", interactive=False,
                              elem_id="train-command", visible=False)
    picker = picker_mod.build()
    with gr.Accordion("Earlier runs", open=True, elem_id="runs-list"):
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100)
            gr.Markdown("Click a row to show that run above. Pick runs below to compare their loss curves.")
        with gr.Row():
            new_name = gr.Textbox(label="Rename the run shown above", placeholder="a new name", scale=3,
                                  elem_id="run-new-name")
            rename = gr.Button("Rename", size="sm", scale=1, elem_id="run-rename")
            delete = gr.Button("Delete run", size="sm", variant="stop", scale=1, elem_id="run-delete")
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
                    gr.State(None), gr.State(None), picker, queue_it, data_label, queue, sweep,
                    new_name, rename, delete, gr.State(None), gr.State(True))
