"""The Train tab's events, one function per feature: watching a run (page load and the 2 s timer), Start / Stop /
Resume, and the list of earlier runs with their comparison; `wire` attaches them all, and the settings form's."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio import runs
from studio.config import RunConfig

from .. import settings as settings_mod
from ..common import box, is_active
from . import picker
from . import queue as queue_mod
from . import sweep as sweep_mod
from .compare import compare_frame, overlay_chart, runs_frame
from .handlers import attach, data_label, delete, rename, resume_run, run_view, start_from_form, stop_run, view_key
from .layout import TrainTab


def _is_skip(update) -> bool:
    return isinstance(update, dict) and update.get("__type__") == "update" and len(update) == 1


def _view_outs(t: TrainTab) -> list:
    """What shows the watched run: progress, alert, the three charts, log, command, the four buttons, and `seen`."""
    return [t.progress, t.alert, t.loss_plot, t.lr_plot, t.grad_plot, t.log, t.command, t.start, t.stop, t.resume,
            t.queue_it, t.seen]


def _list_outs(t: TrainTab) -> list:
    return [t.runs_table, t.overlay]


def show(t: TrainTab, run_dir: str | None, seen, root: str, force: bool = False) -> tuple[list, bool]:
    """(updates for _view_outs, whether the run's state changed since `seen`). An idle tick reads three file stats
    and a status.json, and sends nothing."""
    key = view_key(run_dir, root)
    if not force and seen == key:
        return [gr.skip()] * len(_view_outs(t)), False
    changed = not isinstance(seen, (tuple, list)) or len(seen) != 3 or seen[2] != key[2]
    v = run_view(run_dir, root)
    return [v.html, v.alert, *v.charts, v.log, gr.Code(v.command, visible=bool(v.command)),
            gr.Button(interactive=v.can_start),
            gr.Button(interactive=v.can_stop), gr.Button(interactive=v.can_resume),
            gr.Button(visible=not v.can_start), key], changed  # Queue it: while a run trains


def list_updates(root: str) -> list:
    """Updates for _list_outs: the runs table and the Compare runs choices."""
    df = runs_frame(root)
    return [df, gr.Dropdown(choices=[(f"{n} ({i})", i) for n, i in zip(df["name"], df["id"])])]


def _notice(msg: str, kind: str):
    return gr.HTML(box(msg, kind), visible=bool(msg))


def wire_watch(t: TrainTab, root: str, demo: gr.Blocks, checks: gr.State | None = None) -> None:
    """A loaded page shows the run that trains (else the newest) with its settings (and its checks, into the Data
    tab's Checks panel: `checks`); the timer follows it."""
    view_outs, list_outs = _view_outs(t), _list_outs(t)
    extra = [checks] if checks is not None else []

    def on_load():
        run_dir = attach(root)
        form, kept = [gr.skip()] * len(t.settings.inputs), [gr.skip()] * len(extra)
        if run_dir:  # the form shows the settings of the run on screen
            try:
                cfg = RunConfig.load(Path(run_dir) / runs.CONFIG)
                form, kept = settings_mod.config_values(cfg), [list(cfg.checks)] * len(extra)
            except ValueError:
                pass
        queue_mod.q.ensure_worker(root)  # a worker gone with its machine's restart: the queue goes on
        return [run_dir, *show(t, run_dir, None, root, force=True)[0], *list_updates(root), *form, *kept,
                *queue_mod.updates(t.queue, root, force=True)]

    demo.load(on_load, [], [t.run, *view_outs, *list_outs, *t.settings.inputs, *extra, *queue_mod.outs(t.queue)])

    def on_tick(run_dir, seen, queue_seen, follow):
        queue_mod.q.ensure_worker(root)  # cheap when nothing waits or a worker lives
        if not run_dir:  # nothing watched yet: a run started from another browser shows up here too
            run_dir = attach(root)
        elif follow and not is_active(run_dir):  # the watched run ended: show the one that trains now (the queue's
            busy = runs.active_run(root)         # next), unless the user picked this run from the list
            if busy is not None and str(busy) != run_dir:
                run_dir, seen = str(busy), None
        outs, changed = show(t, run_dir, seen, root)
        # the run list follows the watched run's step and state (cheap: it reads a few small files per run)
        moved = changed or (not _is_skip(outs[-1]) and is_active(run_dir))
        # a new state says it all: the last button's message ("Started…", "Stopping…") is stale then
        note = gr.HTML(visible=False) if changed and seen is not None else gr.skip()
        return [run_dir, *outs, *(list_updates(root) if moved else [gr.skip()] * len(list_outs)), note,
                *queue_mod.updates(t.queue, root, queue_seen)]

    t.timer.tick(on_tick, [t.run, t.seen, t.queue.seen, t.follow],
                 [t.run, *view_outs, *list_outs, t.notice, *queue_mod.outs(t.queue)], show_progress="hidden")


def wire_controls(t: TrainTab, data_state: gr.State, root: str, checks: gr.State | None = None) -> None:
    """Start (the form, the Data tab's settings and its checks become a run), Stop and Resume."""
    view_outs, list_outs = _view_outs(t), _list_outs(t)
    extra = [checks] if checks is not None else []

    def on_start(data, *args):
        chosen, values = (args[0], args[1:]) if extra else (None, args)
        run_dir, msg = start_from_form(values, data, root, chosen)
        if run_dir is None:
            gr.Warning(msg)
            return [gr.skip(), _notice(msg, "error"), *[gr.skip()] * len(view_outs), *[gr.skip()] * len(list_outs),
                    gr.skip()]
        return [run_dir, _notice(msg, "ok"), *show(t, run_dir, None, root, force=True)[0], *list_updates(root), True]

    t.start.click(on_start, [data_state, *extra, *t.settings.inputs],
                  [t.run, t.notice, *view_outs, *list_outs, t.follow])

    def on_stop(run_dir):
        if queue_mod.stop_needs_asking(root):  # runs wait: does the queue stop too?
            n = len(queue_mod.q.queued(root))
            return [gr.skip(), *[gr.skip()] * len(view_outs), gr.Row(visible=True),
                    box(f"{n} run(s) wait in the queue. Stop only this run (the next one then starts), or pause the "
                        f"queue too?", "warn")]
        return [_notice(stop_run(run_dir), "info"), *show(t, run_dir, None, root, force=True)[0], gr.skip(),
                gr.skip()]

    t.stop.click(on_stop, t.run, [t.notice, *view_outs, t.queue.ask, t.queue.ask_note])

    def stopper(pause: bool):
        def handler(run_dir):
            if pause:
                queue_mod.q.set_paused(True, root)
            msg = stop_run(run_dir) + (" The queue is paused: Resume the queue to go on." if pause else "")
            return [_notice(msg, "info"), *show(t, run_dir, None, root, force=True)[0], gr.Row(visible=False),
                    *queue_mod.updates(t.queue, root, force=True)]
        return handler

    for button, pause in ((t.queue.stop_one, False), (t.queue.stop_all, True)):
        button.click(stopper(pause), t.run, [t.notice, *view_outs, t.queue.ask, *queue_mod.outs(t.queue)])

    def on_resume(run_dir):
        msg = resume_run(run_dir, root)
        return [_notice(msg, "info"), *show(t, run_dir, None, root, force=True)[0], *list_updates(root)]

    t.resume.click(on_resume, t.run, [t.notice, *view_outs, *list_outs])

    def on_queue(data, *args):
        chosen, values = (args[0], args[1:]) if extra else (None, args)
        run_dir, msg = queue_mod.queue_from_form(values, data, root, chosen)
        if run_dir is None:
            gr.Warning(msg)
        return [_notice(msg, "ok" if run_dir else "error"), *list_updates(root),
                *queue_mod.updates(t.queue, root, force=True)]

    t.queue_it.click(on_queue, [data_state, *extra, *t.settings.inputs],
                     [t.notice, *list_outs, *queue_mod.outs(t.queue)])
    data_state.change(data_label, data_state, t.data_label)


def wire_runs_list(t: TrainTab, root: str) -> None:
    """Earlier runs: Refresh, a row click shows that run, Compare runs draws the picked runs' losses and settings."""
    view_outs, list_outs = _view_outs(t), _list_outs(t)

    def run_list():
        return list_updates(root)

    t.refresh.click(run_list, [], list_outs)

    def on_select(df, evt: gr.SelectData):
        try:
            rid = df.iloc[evt.index[0]]["id"]
        except (IndexError, KeyError, TypeError):
            return [gr.skip()] * (2 + len(view_outs))
        run_dir = str(runs.runs_root(root) / rid)
        return [run_dir, *show(t, run_dir, None, root, force=True)[0], False]  # stays on it when it has ended

    t.runs_table.select(on_select, t.runs_table, [t.run, *view_outs, t.follow])

    def on_compare(ids):
        many = bool(ids) and len(ids) >= 2
        try:
            table = compare_frame(ids, root)
        except (ValueError, OSError) as e:  # a run folder with a broken config: say so, keep the page
            return gr.skip(), gr.Dataframe(visible=False), gr.Button(visible=False), \
                gr.HTML(box(str(e), "error"), visible=True)
        chart = gr.Plot(overlay_chart(ids, root), visible=True) if ids else gr.Plot(None, visible=False)
        return chart, gr.Dataframe(table, visible=many), gr.Button(visible=many), gr.skip()

    def on_rename(run_dir, name):
        msg = rename(run_dir, name)
        return [_notice(msg, "info"), *show(t, run_dir, None, root, force=True)[0], *list_updates(root)]

    t.rename.click(on_rename, [t.run, t.new_name], [t.notice, *view_outs, *list_outs])

    def on_delete(run_dir, armed):
        msg, armed, gone = delete(run_dir, armed, root)
        if not gone:
            return [_notice(msg, "warn" if armed else "error"), armed, gr.skip(), *[gr.skip()] * len(view_outs),
                    *list_updates(root)]
        shown = attach(root)  # the run that trains, else the newest
        return [_notice(msg, "info"), None, shown, *show(t, shown, None, root, force=True)[0], *list_updates(root)]

    t.delete.click(on_delete, [t.run, t.delete_armed], [t.notice, t.delete_armed, t.run, *view_outs, *list_outs])
    # the log shows its newest lines after Resume, a run switch or a reload (the box keeps its old scroll otherwise)
    t.log.change(None, None, None, js="() => { const a = document.querySelector('#train-log textarea'); "
                                       "if (a) a.scrollTop = a.scrollHeight; }")

    t.overlay.change(on_compare, t.overlay, [t.compare_chart, t.compare_table, t.open_chat, t.notice])


def wire(t: TrainTab, data_state: gr.State, root: str, demo: gr.Blocks, checks: gr.State | None = None) -> None:
    """Every event of the Train tab; `data_state` is the Data tab's checked settings (DataTab.state), `checks` its
    Checks panel's list of checks (they go into the run's config at Start)."""
    settings_mod.wire(t.settings, data_state, root, checks)
    wire_watch(t, root, demo, checks)
    wire_controls(t, data_state, root, checks)
    wire_runs_list(t, root)
    queue_mod.wire(t.queue, t.notice, root)
    sweep_mod.wire(t.sweep, t.settings.inputs, data_state, t.notice, root, demo, checks)
    if t.picker is not None:
        picker.wire(t.picker, t.settings, data_state, demo, checks)
