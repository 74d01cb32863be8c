"""A run's trainer process: the command the UI runs (and can show), start, stop, resume, the status corrected for
a trainer that died without saying so, and the one-run-at-a-time rule (with the trainer lock, studio.runs.lock)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..config import RunConfig
from ..env import procs
from ..env.io import foreign_folder
from ..env.paths import runs_root
from . import events
from .create import create_run
from .layout import ADAPTER, CHECKPOINTS, CONFIG, CONSOLE, LOG, METRICS, STOP_FILE, is_run
from .lock import RunError, busy_message, lock_holder, wait_released


def train_command(run_dir: Path, resume: bool = False) -> list[str]:
    """The exact command the UI runs (and can show): the trainer CLI on the run's own config."""
    cmd = [sys.executable, "-m", "studio", "train", str(Path(run_dir) / CONFIG), "--output", str(run_dir)]
    return cmd + ["--resume"] if resume else cmd


def trainer_pid(st: dict) -> int | None:
    """The pid status.json names when it is still that run's trainer, else None: the pid must be alive with the
    start time recorded beside it (studio.env.procs.same_process) and run the studio. A recycled pid (after a crash
    or a reboot: `studio ui`, another run's trainer, anything) or an older status.json with no start time is not
    trusted, so nothing acts on it."""
    pid, started_at = st.get("pid"), st.get("pid_started")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    _reap(pid, started_at)
    if not procs.same_process(pid, started_at):
        return None
    import psutil
    try:  # an extra condition only: a matching start time is the identity
        return pid if "studio" in " ".join(psutil.Process(pid).cmdline()) else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _reap(pid: int, started_at) -> None:
    """Reap our own trainer child once it has ended (a zombie keeps its pid); a pid whose start time differs from
    the recorded one is another process and is left alone."""
    if not procs.same_start(pid, started_at):  # a zombie still has its start time
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def status(run_dir: Path) -> dict:
    """status.json, corrected when the trainer died without saying so (killed, crashed, machine rebooted)."""
    def orphaned(st: dict) -> bool:  # queued without a pid is a run not started yet: not orphaned
        return st.get("state") in events.ACTIVE_STATES and bool(st.get("pid")) and trainer_pid(st) is None

    st = events.read_status(run_dir)
    if orphaned(st):
        time.sleep(0.2)  # the trainer may be writing its final status right now
        st = events.read_status(run_dir)
        if orphaned(st):
            # said in memory, never written: a read must not write (a full disk would break every reader)
            msg = f"The trainer process ended unexpectedly; see {Path(run_dir) / LOG}. Resume continues " \
                  f"from the last checkpoint."
            st = {**st, "state": "failed", "error": msg, "message": msg}
    return st


def check_output(out: Path, config_path: Path, resume: bool) -> None:
    """RunError when `studio train CONFIG --output OUT` must not write into OUT: a file, a folder that is not
    empty and not a run folder (a user's folder), a run folder with results unless --resume, or another run's
    folder (its own config.yaml is not the one given). A new or empty folder is always fine."""
    out = Path(out)
    why = foreign_folder(out, "--output", "the run", "a run folder", is_run)
    if why:
        raise RunError(why)
    if resume or not out.is_dir() or not any(out.iterdir()):
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
            if st.get("state") in events.ACTIVE_STATES and st.get("pid"):
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
        holder = wait_released(ENDING_WAIT_S)
        if holder is not None and _ending(holder):
            where = Path(holder["run_dir"])
            raise RunError(f"Run '{where.name}' has ended, but its trainer process (pid {holder.get('pid', '?')}) "
                           f"still holds the machine's trainer lock {ENDING_WAIT_S:g} s later. End that process "
                           f"(kill {holder.get('pid', 'PID')}), then start again.")
    if holder is not None:
        raise RunError(busy_message(holder))


ENDING_WAIT_S = 30.0  # a trainer that has written its final status still holds the lock while its process exits


def _ending(holder: dict) -> bool:
    """True when the lock holder's run folder already says the run has ended (finished, stopped, failed): its
    process is on its way out and the lock is released in a moment."""
    run_dir = holder.get("run_dir")
    state = events.read_status(Path(run_dir)).get("state") if run_dir else None
    return state is not None and state not in events.ACTIVE_STATES


def launch(cfg: RunConfig, root: str | Path | None = None) -> Path:
    """Create a run folder for cfg and start the trainer on it (what the Start button does).

    The one-run check comes first, so a refused start leaves no empty run folder behind."""
    check_idle(root)
    run_dir = create_run(cfg, root)
    try:
        start(run_dir, root=root)
    except RunError:
        shutil.rmtree(run_dir, ignore_errors=True)  # lost a race with another browser: nothing was trained in it
        raise
    return run_dir


def start(run_dir: Path, resume: bool = False, root: str | Path | None = None,
          extra_env: dict | None = None) -> subprocess.Popen:
    """Start the trainer on run_dir in its own process. One run at a time per machine."""
    run_dir = Path(run_dir)
    check_idle(root if root is not None else run_dir.parent)
    if not is_run(run_dir):
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG}).")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
    events.write_status(run_dir, "queued", pid=None, error=None,
                         message="Resuming" if resume else "Starting the trainer")
    with open(run_dir / CONSOLE, "ab") as console:
        proc = subprocess.Popen(train_command(run_dir, resume), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    if events.read_status(run_dir).get("state") == "queued":  # the trainer writes "running" itself after imports
        events.write_status(run_dir, "queued", pid=proc.pid)
    return proc


def stop(run_dir: Path, wait: float = 0.0) -> dict:
    """Ask the trainer to stop: it finishes the current step, saves a checkpoint and the adapter. Only the process
    recorded in status.json (pid and start time) is signalled; a run whose trainer is gone comes back as not
    running (status() says so), with nothing signalled."""
    run_dir = Path(run_dir)
    st = status(run_dir)
    if st.get("state") not in events.ACTIVE_STATES:
        return st
    (run_dir / STOP_FILE).touch()
    pid = trainer_pid(st)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + wait
    while time.time() < deadline and trainer_pid(st) is not None:
        time.sleep(0.5)
    return status(run_dir)


def resume(run_dir: Path, root: str | Path | None = None) -> subprocess.Popen:
    st = status(run_dir)
    if st.get("state") in ("running", "stopping"):
        raise RunError(f"Run '{Path(run_dir).name}' is still running.")
    return start(run_dir, resume=True, root=root)
