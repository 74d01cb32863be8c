"""The Train tab's handlers: which run a page shows, what it shows of it (progress, alerts, charts, log, command,
which buttons work), and Start / Stop / Resume. Plain functions, tested without a browser."""
from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from studio import runs
from studio.chat.engine import free_gpu
from studio.data import DataError
from studio.models import catalog
from studio.runs.events import ACTIVE_STATES, Losses, loss_series, read_metrics_events
from studio.runs.results import run_folders

from .. import settings as settings_mod
from ..common import box, files_key, fmt_duration
from .curves import loss_frame, lr_frame, run_charts

LOG_LINES = 14  # what the log box shows without scrolling (it opens at the top, not at the end)


def attach(root: str | Path | None) -> str | None:
    """The run a freshly loaded page shows: the one training now, else the newest."""
    busy = runs.active_run(root)
    if busy is not None:
        return str(busy)
    # the newest folder, not list_runs()[0]: the page load (the Train and Data tabs each) need not read every run
    newest = run_folders(root)
    return str(newest[0]) if newest else None


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
    charts: tuple  # loss, learning rate and the third chart (the stage's own, else grad norm): plotly figures
    alert: str
    log: str
    command: str
    can_start: bool
    can_stop: bool
    can_resume: bool
    signature: tuple


def signature(run_dir: str | None) -> tuple:
    """Changes whenever anything the tab shows could have changed (so an idle tick costs ~nothing)."""
    return files_key(run_dir, (runs.STATUS, runs.METRICS, runs.LOG, runs.CONSOLE))


def view_key(run_dir: str | None, root: str | Path | None) -> tuple:
    """What decides whether the screen is stale: the run's files, whether Start is allowed, the state."""
    state = runs.status(Path(run_dir)).get("state") if run_dir and Path(run_dir).is_dir() else "none"
    return signature(run_dir), runs.active_run(root) is None, state


def run_view(run_dir: str | None, root: str | Path | None) -> RunView:
    busy = runs.active_run(root)
    if not run_dir or not Path(run_dir).is_dir():
        empty = Losses()
        return RunView(None, "none", box("No run yet: check the data, pick a preset and press Start.", "info"),
                       loss_frame(None), lr_frame(None), run_charts(empty, []), "", "", "", busy is None, False, False,
                       (None,))
    st = runs.status(Path(run_dir))
    state = st.get("state") or "unknown"
    name = runs.run_name(run_dir)
    has_ckpt = runs.latest_checkpoint(run_dir) is not None
    events = read_metrics_events(Path(run_dir))  # read once for every chart
    losses = loss_series(Path(run_dir), events)
    return RunView(run_dir, state, progress_html(st, name, losses.last_eval), loss_frame(run_dir, losses),
                   lr_frame(run_dir, events), run_charts(losses, events, run_dir), alert_html(events, losses),
                   log_tail(run_dir), shlex.join(runs.train_command(Path(run_dir))),
                   can_start=busy is None, can_stop=state in ACTIVE_STATES,
                   can_resume=busy is None and state in ("stopped", "failed") and has_ckpt,
                   signature=signature(run_dir))


def form_config(values: list | tuple, data: dict | None, checks: list | None = None) -> tuple[object, str]:
    """(RunConfig or None, message): the form, the Data tab's settings and its checks as a config that may train
    (what Start, Queue it and Sweep each begin with); every refusal (no data, the grpo stage without checks, a
    model that brings its own code, a chat template under which no answer is found) is the message."""
    if not data:
        return None, "No usable data yet: upload a file or pick a sample on the Data tab (and fix what it reports)."
    try:
        cfg = settings_mod.values_to_config(values, data, checks=checks)
        cfg.ready_to_train()  # what an edited config may lack but a run may not (grpo without checks): refused here
        remote = catalog.source_problem(cfg.model.source, cfg.model.trust_remote_code)
        if remote:  # a model that brings its own code runs it only when the user said so
            return None, remote
        from ..data.handlers import template_refusal
        refused = template_refusal(cfg)  # a chat template under which no answer is found would train nothing
        if refused:
            return None, refused
    except (ValueError, DataError) as e:  # DataError is a ValueError; listed for the reader
        return None, str(e)
    return cfg, ""


def start_from_form(values: list | tuple, data: dict | None, root: str | Path | None,
                    checks: list | None = None) -> tuple[str | None, str]:
    """(run folder or None, message) for the Start button: the form, the Data tab's settings and its checks become
    a run; every failure becomes a readable message."""
    cfg, msg = form_config(values, data, checks)
    if cfg is None:
        return None, msg
    try:
        run_dir = runs.launch(cfg, root)
    except (ValueError, DataError, runs.RunError) as e:
        return None, str(e)
    freed = free_gpu("the run")  # the trainer imports for seconds before it touches the GPU: time enough
    return str(run_dir), f"Started run '{cfg.name}' in {run_dir}." + (f" {freed}" if freed else "")


def data_label(state: dict | None) -> str:
    """Beside Start: the data the run will train on, so a page reloaded onto another file cannot surprise anyone."""
    if not state or not state.get("path"):
        return "**Training data:** none yet: upload a file or pick a sample on the Data tab."
    name = Path(str(state["path"])).name
    try:
        from ..data.handlers import checked_report
        report = checked_report(state)
    except (OSError, ValueError):
        report = None
    if report is None:
        return f"**Training data:** {name}"
    return f"**Training data:** {name}, {report.n_rows:,} rows ({report.n_used:,} used)"


def stop_run(run_dir: str | None) -> str:
    if not run_dir:
        return "No run selected."
    st = runs.stop(Path(run_dir))
    if st.get("state") in ACTIVE_STATES:
        return "Stopping: the trainer finishes its current step, saves a checkpoint and the adapter, then ends."
    why = f" {st['error']}" if st.get("state") == "failed" and st.get("error") else ""
    return f"The run is not training (state: {st.get('state')}); nothing was signalled.{why}"


def resume_run(run_dir: str | None, root: str | Path | None) -> str:
    if not run_dir:
        return "No run selected."
    try:
        runs.resume(Path(run_dir), root)
    except runs.RunError as e:
        return str(e)
    return "Resuming from the last checkpoint."


def rename(run_dir: str | None, name: str) -> str:
    if not run_dir:
        return "Pick a run in the list first."
    try:
        return f"Renamed the run to '{runs.rename_run(Path(run_dir), name)}'."
    except (ValueError, runs.RunError, OSError) as e:
        return str(e)


def delete(run_dir: str | None, armed: str | None, root) -> tuple[str, str | None, bool]:
    """Delete the run shown, on the second press: (message, what is armed now, whether it was deleted)."""
    if not run_dir:
        return "Pick a run in the list first.", None, False
    name = runs.run_name(run_dir)
    if armed != run_dir:
        return (f"Press Delete again to delete run '{name}' with its adapter, checkpoints and exports; this cannot "
                f"be undone.", run_dir, False)
    try:
        runs.delete_run(Path(run_dir), root)
    except (runs.RunError, OSError) as e:
        return str(e), None, False
    return f"Deleted run '{name}'.", None, True
