"""Run folders, the one owner: their file names and checkpoints (studio.layout, re-exported here), create,
launch (a subprocess with an argument list), status, stop, resume, list, delete, and the one-run-at-a-time rule.

A run folder holds everything about one run; the UI and the CLI both work through these functions,
and the only thing they share with the trainer is the folder itself.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import metrics
from .config import RunConfig, config_diff
from .layout import *  # noqa: F403 — the run folder's names and path helpers are part of this module's API
from .layout import (ADAPTER, CHECKPOINTS, CONFIG, CONSOLE, DATASET, FEEDBACK, FINAL, METRICS, PAIRS, RUN_INFO,
                     STATUS, UNPAIRED, adapter_choices, run_name, checkpoint_step, checkpoints, has_adapter, is_run)
from .models import studio_home


class RunError(RuntimeError):
    """A run operation that cannot be done now; the message says why and what to do."""


def runs_root(root: str | Path | None = None) -> Path:
    p = Path(root or os.environ.get("STUDIO_RUNS_DIR") or studio_home() / "runs").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def slug(name: str) -> str:
    """A folder/file name safe on every OS: ASCII letters, digits, '-', '_' only, at most 40 chars."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:40]
    return s or "run"


def create_run(cfg: RunConfig, root: str | Path | None = None) -> Path:
    """A new run folder with config.yaml and the validated, normalised dataset.jsonl (status: queued).

    The user's file is read, never changed; the run's config points at the run's own copy of the data,
    so the folder is self-contained and resumable even if the original file moves.
    """
    from . import data

    stage = cfg.train.stage
    if stage == "dpo":
        report = data.read_preferences(cfg.data.path, skip_invalid=cfg.data.skip_invalid)
    elif stage == "kto":
        report = data.read_feedback(cfg.data.path, skip_invalid=cfg.data.skip_invalid)
    elif cfg.data.format == "auto" and not cfg.data.columns.used() and data.is_preference_file(cfg.data.path):
        raise data.DataError(f"{Path(cfg.data.path).name} holds preference pairs (prompt, chosen, rejected): they "
                             f"train the dpo stage. Set Training stage to dpo and Start from to an SFT run's folder "
                             f"(Advanced), or pick an instruction dataset for SFT.")
    elif cfg.data.format == "auto" and not cfg.data.columns.used() and data.is_feedback_file(cfg.data.path):
        raise data.DataError(f"{Path(cfg.data.path).name} holds answers rated good or bad (prompt, completion, label): "
                             f"as SFT data it would teach the bad answers too. They train the kto stage: set Training "
                             f"stage to kto and Start from to an SFT run's folder (Advanced).")
    else:
        report = data.from_config(cfg.data)
    root = runs_root(root)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(cfg.name)}"
    run_dir, n = root / base, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{base}-{n}"
    run_dir.mkdir(parents=True)
    # the run's own copy of the data, which its config points at
    own, write = {"dpo": (PAIRS, data.write_pairs), "kto": (UNPAIRED, data.write_unpaired)}.get(
        stage, (DATASET, data.write_jsonl))
    own = run_dir / own
    write(report.examples, own)
    run_cfg = cfg.replace(data={"path": str(own.resolve()), "format": "messages" if stage == "sft" else "auto",
                                "columns": {}, "skip_invalid": True})
    run_cfg.save(run_dir / CONFIG)
    (run_dir / RUN_INFO).write_text(json.dumps({
        "name": cfg.name, "created": time.time(), "source_data": cfg.data.path, "data_summary": report.summary(),
        "rows_used": len(report.examples), "rows_skipped": report.n_skipped}, indent=1), encoding="utf-8")
    metrics.write_status(run_dir, "queued", message="Created")
    return run_dir


def train_command(run_dir: Path, resume: bool = False) -> list[str]:
    """The exact command the UI runs (and can show): the trainer CLI on the run's own config."""
    cmd = [sys.executable, "-m", "studio", "train", str(Path(run_dir) / CONFIG), "--output", str(run_dir)]
    return cmd + ["--resume"] if resume else cmd


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # reap our own finished child, else it lingers as a zombie that looks alive
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass
    import psutil
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and "studio" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def status(run_dir: Path) -> dict:
    """status.json, corrected when the trainer died without saying so (killed, crashed, machine rebooted)."""
    def orphaned(st: dict) -> bool:  # queued without a pid is a run not started yet: not orphaned
        return st.get("state") in metrics.ACTIVE_STATES and bool(st.get("pid")) and not _alive(st.get("pid"))

    st = metrics.read_status(run_dir)
    if orphaned(st):
        time.sleep(0.2)  # the trainer may be writing its final status right now
        st = metrics.read_status(run_dir)
        if orphaned(st):
            # said in memory, never written: a read must not write (a full disk would break every reader)
            msg = f"The trainer process ended unexpectedly; see {Path(run_dir) / metrics.LOG}. Resume continues " \
                  f"from the last checkpoint."
            st = {**st, "state": "failed", "error": msg, "message": msg}
    return st


# --- one trainer at a time, and never into someone else's folder ------------------------------------

def _lock_path() -> Path:
    return studio_home() / "trainer.lock"


@contextmanager
def trainer_lock(run_dir: Path):
    """Held by the trainer for its whole life: one trainer per machine (an exclusive flock on
    $STUDIO_HOME/trainer.lock, released by the OS when the process ends, however it ends). RunError naming
    the run that holds it. No-op where fcntl does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = _lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(_busy_message(_holder(path))) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"run_dir": str(Path(run_dir).resolve()), "pid": os.getpid()}))
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def _holder(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy_message(holder: dict) -> str:
    where = Path(holder.get("run_dir") or "another run folder")
    return (f"Run '{where.name}' is training (pid {holder.get('pid', '?')}, in {where}); only one run trains at a "
            f"time on this machine. Stop it first (studio runs stop {where}), or wait until it finishes.")


def lock_holder() -> dict | None:
    """{"run_dir", "pid"} of the trainer holding the machine's trainer lock, or None when no trainer runs."""
    try:
        import fcntl
    except ImportError:
        return None
    path = _lock_path()
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _holder(path)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def check_output(out: Path, config_path: Path, resume: bool) -> None:
    """RunError when `studio train CONFIG --output OUT` must not write into OUT: a file, a folder that is not
    empty and not a run folder (a user's folder), a run folder with results unless --resume, or another run's
    folder (its own config.yaml is not the one given). A new or empty folder is always fine."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise RunError(f"{out} is a file: give a folder for the run with --output.")
    if not is_run(out):
        raise RunError(f"{out} is not empty and is not a run folder: give a new or empty folder with --output "
                       f"(nothing was written).")
    if resume:
        return
    results = [n for n in (METRICS, CHECKPOINTS, ADAPTER) if (out / n).exists()]
    if results:
        raise RunError(f"{out} already holds a run's results ({', '.join(results)}): add --resume to continue that "
                       f"run, or give a new --output folder (nothing was written).")
    if Path(config_path).resolve() != (out / CONFIG).resolve():
        raise RunError(f"{out} is another run's folder: train it with `studio train {out / CONFIG} --output {out}`, "
                       f"or give a new --output folder (nothing was written).")


def active_run(root: str | Path | None = None) -> Path | None:
    for d in sorted(runs_root(root).iterdir()):
        if d.is_dir():
            st = status(d)
            if st.get("state") in metrics.ACTIVE_STATES and st.get("pid"):
                return d
    return None


def check_idle(root: str | Path | None = None) -> None:
    """RunError when a run is training (under this runs root, or anywhere on this machine through the trainer
    lock): one run at a time fits this machine."""
    busy = active_run(root)
    if busy is not None:
        raise RunError(f"Run '{busy.name}' is still training; only one run at a time fits this machine. "
                       f"Stop it first, or wait until it finishes.")
    holder = lock_holder()
    if holder is not None and _ending(holder):
        holder = _wait_released(ENDING_WAIT_S)
        if holder is not None and _ending(holder):
            where = Path(holder["run_dir"])
            raise RunError(f"Run '{where.name}' has ended, but its trainer process (pid {holder.get('pid', '?')}) "
                           f"still holds the machine's trainer lock {ENDING_WAIT_S:g} s later. End that process "
                           f"(kill {holder.get('pid', 'PID')}), then start again.")
    if holder is not None:
        raise RunError(_busy_message(holder))


ENDING_WAIT_S = 30.0  # a trainer that has written its final status still holds the lock while its process exits


def _ending(holder: dict) -> bool:
    """True when the lock holder's run folder already says the run has ended (finished, stopped, failed): its
    process is on its way out and the lock is released in a moment."""
    run_dir = holder.get("run_dir")
    state = metrics.read_status(Path(run_dir)).get("state") if run_dir else None
    return state is not None and state not in metrics.ACTIVE_STATES


def _wait_released(timeout: float) -> dict | None:
    """Wait up to timeout seconds for the trainer lock to be released; the holder still there after it, or None."""
    deadline = time.monotonic() + timeout
    holder = lock_holder()
    while holder is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        holder = lock_holder()
    return holder


def launch(cfg: RunConfig, root: str | Path | None = None) -> Path:
    """Create a run folder for cfg and start the trainer on it (what the Start button does).

    The one-run check comes first, so a refused start leaves no empty run folder behind."""
    check_idle(root)
    run_dir = create_run(cfg, root)
    try:
        start(run_dir, root=root)
    except RunError:
        delete_run(run_dir, root)  # lost a race with another browser: nothing was trained in it
        raise
    return run_dir


MIN_PAIRS = 4  # fewer decided votes (or ratings) than this teach DPO (KTO) nothing but noise


def _preference_base(run_dir: Path) -> RunConfig:
    """The SFT run a preference run starts from; RunError when it is not one, or has no final adapter."""
    cfg = RunConfig.load(run_dir / CONFIG)
    if cfg.train.stage != "sft":
        raise RunError(f"Run '{run_name(run_dir)}' is already a preference run: vote on its answers against the "
                       f"SFT run's instead, or start from this run in a config of your own.")
    if not has_adapter(run_dir / ADAPTER):
        raise RunError(f"Run '{run_name(run_dir)}' has no final adapter yet: finish or stop it first.")
    return cfg


def _preference_run(cfg: RunConfig, run_dir: Path, stage: str, data_file: str, **train) -> RunConfig:
    """The SFT run's config as a `stage` run on its own file `data_file`, continuing its final adapter: 3 epochs at
    batch 2 and the SFT run's learning rate (see dpo_config)."""
    return cfg.replace(name=f"{cfg.name} + {stage.upper()}", data={
        "path": str(run_dir / data_file), "format": "auto", "columns": {}, "skip_invalid": True},
        train={"stage": stage, "start_from": str(run_dir.resolve()), "epochs": 3.0, "max_steps": 0,
               "batch_size": 2, "grad_accum": 1, "packing": False, "eval_steps": 0, "early_stopping_patience": 0,
               **train})


def dpo_config(run_dir: str | Path) -> RunConfig:
    """A preference-tuning run on a run's own votes (RUN/preferences.jsonl, written by the Chat tab): stage dpo,
    starting from (and measured against) the run's final adapter, on the same base model and system prompt.
    The settings are for a few dozen pairs: 3 epochs at batch 2, the SFT run's learning rate, beta 0.1 and the DPO
    loss plus the chosen answers' LM loss (sigmoid+sft; on the demo model 16 such steps at the demo's 1e-3 moved a
    preferred opening from 0/20 to 20/20 held-out answers, tests/test_dpo.py)."""
    from .prefs import PREFERENCES, read_votes

    run_dir = Path(run_dir)
    cfg = _preference_base(run_dir)
    pairs = [v for v in read_votes(run_dir) if v.get("chosen") and v.get("rejected")]
    if len(pairs) < MIN_PAIRS:
        raise RunError(f"{len(pairs)} vote(s) with a winner for run '{run_name(run_dir)}'; preference tuning needs at "
                       f"least {MIN_PAIRS} (A or B better; ties and both-bad do not count). Vote on more prompts.")
    return _preference_run(cfg, run_dir, "dpo", PREFERENCES, dpo_loss="sigmoid+sft",
                           eval_fraction=0.1 if len(pairs) >= 20 else 0.0)


def kto_config(run_dir: str | Path) -> RunConfig:
    """As dpo_config, on the run's 👍/👎 ratings (RUN/feedback.jsonl): stage kto, from the run's final adapter."""
    from .prefs import read_feedback

    run_dir = Path(run_dir)
    cfg = _preference_base(run_dir)
    rated = read_feedback(run_dir)
    good = sum(f["label"] for f in rated)
    if len(rated) < MIN_PAIRS or good in (0, len(rated)):
        raise RunError(f"{len(rated)} rated answer(s) for run '{run_name(run_dir)}' ({good} 👍, "
                       f"{len(rated) - good} 👎); KTO needs at least {MIN_PAIRS}, with some of each. Rate more "
                       f"answers in the Chat tab.")
    return _preference_run(cfg, run_dir, "kto", FEEDBACK, eval_fraction=0.0)


def launch_kto(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Start a KTO run on the run's ratings (kto_config); returns the new run folder."""
    return launch(kto_config(run_dir), root if root is not None else Path(run_dir).parent)


def launch_dpo(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Start a DPO run on the run's votes (dpo_config); returns the new run folder. What "Train on my votes" does."""
    return launch(dpo_config(run_dir), root if root is not None else Path(run_dir).parent)


def start(run_dir: Path, resume: bool = False, root: str | Path | None = None,
          extra_env: dict | None = None) -> subprocess.Popen:
    """Start the trainer on run_dir in its own process. One run at a time per machine."""
    run_dir = Path(run_dir)
    check_idle(root if root is not None else run_dir.parent)
    if not is_run(run_dir):
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG}).")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
    metrics.write_status(run_dir, "queued", pid=None, error=None,
                         message="Resuming" if resume else "Starting the trainer")
    with open(run_dir / CONSOLE, "ab") as console:
        proc = subprocess.Popen(train_command(run_dir, resume), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    if metrics.read_status(run_dir).get("state") == "queued":  # the trainer writes "running" itself after imports
        metrics.write_status(run_dir, "queued", pid=proc.pid)
    return proc


def stop(run_dir: Path, wait: float = 0.0) -> dict:
    """Ask the trainer to stop: it finishes the current step, saves a checkpoint and the adapter."""
    run_dir = Path(run_dir)
    st = status(run_dir)
    if st.get("state") not in metrics.ACTIVE_STATES:
        return st
    (run_dir / metrics.STOP_FILE).touch()
    pid = st.get("pid")
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + wait
    while time.time() < deadline and _alive(pid):
        time.sleep(0.5)
    return status(run_dir)


def resume(run_dir: Path, root: str | Path | None = None) -> subprocess.Popen:
    st = status(run_dir)
    if st.get("state") in ("running", "stopping"):
        raise RunError(f"Run '{Path(run_dir).name}' is still running.")
    return start(run_dir, resume=True, root=root)


def final_loss(run_dir: Path) -> tuple[float | None, float | None]:
    """(last train loss, last eval loss) from metrics.jsonl."""
    losses = metrics.loss_series(run_dir)
    return losses.last_train, losses.last_eval


@dataclass(frozen=True)
class Best:
    """The run's adapter with the lowest eval loss: `name` is what the pickers offer ("adapter" or
    "checkpoint-N"); `last` says it is also the run's newest adapter (so there is nothing to choose)."""
    name: str
    step: int
    eval_loss: float
    last: bool


def best_adapter(run_dir: Path, losses: metrics.Losses | None = None, st: dict | None = None,
                 ckpts: list[Path] | None = None) -> Best | None:
    """Among the adapters on disk measured on the held-out rows (a checkpoint at a step with an eval, the final
    adapter when the run's last step has one), the lowest eval loss; None when none was measured. `losses`,
    `st` (the run's status) and `ckpts` (its checkpoints) when the caller has them already."""
    evals = dict((losses or metrics.loss_series(run_dir)).eval)
    if not evals:
        return None
    found = {checkpoint_step(c): c.name for c in (checkpoints(run_dir) if ckpts is None else ckpts)}
    st = status(run_dir) if st is None else st
    final_step = st.get("step") if st.get("state") in ("finished", "stopped") and has_adapter(
        Path(run_dir) / ADAPTER) else None
    if isinstance(final_step, int):
        found[final_step] = FINAL  # the same weights as a checkpoint at that step: the final adapter's name wins
    measured = [(evals[s], s, n) for s, n in found.items() if s in evals]
    if not measured:
        return None
    loss, step, name = min(measured)
    return Best(name, step, loss, last=step == max(found))


def adapter_options(run_dir: Path | None) -> tuple[list[tuple[str, str]], str | None]:
    """(label, value) pairs for a picker of the run's adapters, the best one marked, and the default value:
    the best adapter when it is not the newest, else the newest."""
    if not run_dir:
        return [], None
    names = adapter_choices(run_dir)
    best = best_adapter(Path(run_dir))
    opts = []
    for n in names:
        label = "adapter (final)" if n == FINAL else n
        if best and n == best.name:
            label += f" ★ best (eval loss {best.eval_loss:.4f})"
        opts.append((label, n))
    default = best.name if best and not best.last and best.name in names else (names[0] if names else None)
    return opts, default


def _info(run_dir: Path) -> dict:
    """run.json: name, creation time, the user's data file and its summary; {} when missing or unreadable."""
    try:
        info = json.loads((Path(run_dir) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _summary(run_dir: Path) -> dict:
    """The trainer's last "summary" event (wall time, tokens/s, peak memory), or {} before the run ends."""
    found = [e for e in metrics.read_metrics_events(run_dir) if e.get("kind") == "summary"]
    return found[-1] if found else {}


def compare(run_dirs: list[Path]) -> tuple[list[str], list[dict]]:
    """(the settings that differ between the runs, one row per run): each row has id, name, the differing
    settings' values, final and best eval loss, best step, tokens/s, wall time and peak memory."""
    cfgs, rows = [], []
    for d in map(Path, run_dirs):
        cfg = RunConfig.load(d / CONFIG)
        source = _info(d).get("source_data")
        if isinstance(source, str) and source:  # not the run's own copy of the data: every run has its own
            cfg = cfg.replace(data={"path": source})
        cfgs.append(cfg)
        losses, st, summ = metrics.loss_series(d), status(d), _summary(d)
        best = best_adapter(d, losses, st)
        wall = summ.get("wall_s")
        if wall is None and isinstance(st.get("started"), (int, float)):
            wall = round(float(st.get("updated", time.time())) - st["started"], 1)
        rows.append({"id": d.name, "name": cfg.name, "state": st.get("state", "unknown"), "step": st.get("step"),
                     "final train loss": losses.last_train, "final eval loss": losses.last_eval,
                     "best eval loss": best.eval_loss if best else None, "best at": best.name if best else None,
                     "tokens/s": summ.get("tokens_per_s", st.get("tokens_per_s")), "wall s": wall,
                     "peak memory GB": summ.get("peak_memory_gb", st.get("peak_memory_gb"))})
    keys = config_diff(cfgs)
    for row, cfg in zip(rows, cfgs):
        flat = cfg.flat()
        row.update({k: flat.get(k) for k in keys})
    return keys, rows


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Newest first: id, name, state, step, final losses, whether an adapter exists, the best adapter."""
    out = []
    for d in sorted(runs_root(root).iterdir(), reverse=True):
        if not is_run(d):
            continue
        st = status(d)
        info = _info(d)
        losses, ckpts = metrics.loss_series(d), checkpoints(d)  # read once for the row and its best adapter
        out.append({"id": d.name, "name": info.get("name", d.name), "state": st.get("state", "unknown"),
                    "step": st.get("step"), "max_steps": st.get("max_steps"), "loss": losses.last_train,
                    "eval_loss": losses.last_eval,
                    "adapter": has_adapter(d / ADAPTER), "n_checkpoints": len(ckpts),
                    "best": best_adapter(d, losses, st, ckpts),
                    "created": info.get("created"), "path": str(d), "error": st.get("error")})
    return out


def delete_run(run_dir: Path, root: str | Path | None = None) -> None:
    """Delete a run folder: only one the studio made (config.yaml plus run.json or status.json) directly under
    the runs root, never the current directory or a folder holding it, never a run that trains."""
    run_dir = Path(run_dir).resolve()
    cwd = Path.cwd().resolve()
    if run_dir == cwd or run_dir in cwd.parents:
        raise RunError(f"{run_dir} is the current directory or holds it; nothing deleted. Change to another "
                       f"directory first.")
    base = runs_root(root).resolve()
    made = is_run(run_dir) and ((run_dir / RUN_INFO).is_file() or (run_dir / STATUS).is_file())
    if run_dir.parent != base or not made:
        raise RunError(f"{run_dir} is not a run folder under {base}; nothing deleted. Only runs that `studio runs "
                       f"list` shows can be deleted.")
    st = status(run_dir)
    if st.get("state") in metrics.ACTIVE_STATES and st.get("pid"):
        raise RunError(f"Run '{run_dir.name}' is training: stop it before deleting it.")
    shutil.rmtree(run_dir)


def find_run(ref: str, root: str | Path | None = None) -> Path:
    """A run by folder path or by id (folder name) under the runs root."""
    p = Path(ref).expanduser()
    if is_run(p):
        return p
    q = runs_root(root) / ref
    if is_run(q):
        return q
    raise RunError(f"No run '{ref}': give a run folder or an id from `studio runs list`.")
