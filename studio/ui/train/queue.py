"""The Train tab's queue: "Queue it" while a run trains, the queued runs in order with Cancel, Move up and Run next,
Pause / Resume, and Stop asking whether the queue stops too. The queue itself is studio.runs.queue: a worker process
that outlives this server trains the runs in order; this panel only edits the queue file and shows it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import runs
from studio.runs import queue as q

from ..common import box

COLUMNS = ["#", "run", "queued"]


@dataclass
class QueuePanel:
    box: gr.Accordion
    table: gr.Dataframe
    pick: gr.Dropdown
    cancel: gr.Button
    up: gr.Button
    first: gr.Button
    pause: gr.Button
    state_note: gr.HTML
    ask: gr.Row          # Stop with runs waiting: "this run only" or "and pause the queue"
    ask_note: gr.HTML
    stop_one: gr.Button
    stop_all: gr.Button
    seen: gr.State       # what the panel shows, so idle ticks send nothing


def build() -> QueuePanel:
    with gr.Row(visible=False, elem_id="stop-ask") as ask:
        ask_note = gr.HTML("")
        stop_one = gr.Button("Stop this run; the queue goes on", size="sm", elem_id="stop-one")
        stop_all = gr.Button("Stop this run and pause the queue", size="sm", variant="stop", elem_id="stop-all")
    with gr.Accordion("Queue", open=True, visible=False, elem_id="queue-panel") as acc:
        state_note = gr.HTML("", elem_id="queue-note")
        table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, wrap=True, max_height=220,
                             elem_id="queue-table")
        with gr.Row():
            pick = gr.Dropdown(choices=[], label="Queued run", scale=3, elem_id="queue-pick")
            cancel = gr.Button("Cancel", size="sm", scale=1, elem_id="queue-cancel")
            up = gr.Button("Move up", size="sm", scale=1, elem_id="queue-up")
            first = gr.Button("Run next", size="sm", scale=1, elem_id="queue-next")
            pause = gr.Button("Pause the queue", size="sm", scale=1, elem_id="queue-pause")
    return QueuePanel(acc, table, pick, cancel, up, first, pause, state_note, ask, ask_note, stop_one, stop_all,
                      gr.State(None))


# --- handlers (plain functions) -------------------------------------------------------------------

def queue_frame(waiting: list[Path]) -> pd.DataFrame:
    """The queued runs (q.queued's order): place, name, when queued."""
    rows = []
    for i, d in enumerate(waiting, 1):
        info = runs.run_info(d)
        created = info.get("queued_at") or info.get("created")
        when = time.strftime("%H:%M", time.localtime(created)) if isinstance(created, (int, float)) else ""
        rows.append({"#": i, "run": runs.run_name(d), "queued": when})
    return pd.DataFrame(rows, columns=COLUMNS)


def note_html(waiting: list[Path], paused: bool, root) -> str:
    if not waiting:
        return ""
    if paused:
        return box(f"The queue is paused: {len(waiting)} run(s) wait. Resume the queue to go on.", "warn")
    busy = runs.active_run(root)
    now = f"'{runs.run_name(busy)}' trains now; " if busy else ""
    return box(f"{now}{len(waiting)} run(s) wait and start one after another, also with this page closed.", "info")


def queue_from_form(values, data, root, checks=None) -> tuple[str | None, str]:
    """(run folder or None, message) for "Queue it": the form becomes a run waiting in the queue."""
    from .handlers import form_config
    cfg, msg = form_config(values, data, checks)
    if cfg is None:
        return None, msg
    try:
        run_dir, pos = q.queue_run(cfg, root)
    except (ValueError, runs.RunError) as e:
        return None, str(e)
    return str(run_dir), (f"Queued run '{cfg.name}' as #{pos}: it starts by itself when the runs before it have "
                          f"ended, also with this page closed.")


def act(action: str, run_id: str | None, root) -> str:
    """Cancel / Move up / Run next on a queued run (by id): the sentence that says what happened."""
    if not run_id:
        return "Pick a queued run first."
    run_dir = runs.runs_root(root) / Path(run_id).name
    try:
        if action == "cancel":
            q.cancel(run_dir, root)
            return f"Cancelled '{runs.run_name(run_dir)}': it stays in the run list, with nothing trained."
        pos = q.move(run_dir, "front" if action == "next" else "up", root)
    except runs.RunError as e:
        return str(e)
    return f"'{runs.run_name(run_dir)}' is now #{pos} in the queue."


def stop_needs_asking(root) -> bool:
    return bool(q.queued(root)) and not q.is_paused(root)


# --- wiring -----------------------------------------------------------------------------------------

def updates(p: QueuePanel, root, seen=None, force: bool = False) -> list:
    """Updates for [box, table, pick, pause, state_note, seen]: nothing sent when the queue is as `seen` says (its
    order, pause and whether a worker lives); the queue is read once for both."""
    waiting, paused = q.queued(root), q.is_paused(root)
    key = (tuple(d.name for d in waiting), paused, q.worker_holder(root) is not None)
    if not force and seen == key:
        return [gr.skip()] * 6
    choices = [(f"#{i} {runs.run_name(d)}", d.name) for i, d in enumerate(waiting, 1)]
    return [gr.Accordion(visible=bool(waiting) or paused), queue_frame(waiting),
            gr.Dropdown(choices=choices, value=choices[0][1] if choices else None),
            gr.Button("Resume the queue" if paused else "Pause the queue"), note_html(waiting, paused, root), key]


def outs(p: QueuePanel) -> list:
    return [p.box, p.table, p.pick, p.pause, p.state_note, p.seen]


def wire(p: QueuePanel, notice: gr.HTML, root) -> None:
    """Cancel, Move up, Run next and Pause / Resume; `notice` is the Train tab's message line."""
    def on(action):
        def handler(run_id):
            return [gr.HTML(box(act(action, run_id, root), "info"), visible=True), *updates(p, root, force=True)]
        return handler

    for button, action in ((p.cancel, "cancel"), (p.up, "up"), (p.first, "next")):
        button.click(on(action), p.pick, [notice, *outs(p)])

    def on_pause():
        paused = not q.is_paused(root)
        q.set_paused(paused, root)
        msg = ("The queue is paused: the run that trains finishes, the next one waits." if paused else
               "The queue goes on.")
        return [gr.HTML(box(msg, "info"), visible=True), *updates(p, root, force=True)]

    p.pause.click(on_pause, [], [notice, *outs(p)])
