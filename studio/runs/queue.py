"""The run queue: runs created now that train later, one after another, with the browser closed and across restarts
of the UI server.

The queue lives in the runs root, in .queue/: queue.json ({"runs": [id, ...], "paused": bool}, edited under a
file lock) and the worker's lock and pid. A queued run is an ordinary run folder (its config and its own copy of
the data, made when it was queued) in state "queued" with no pid. One worker per runs root (`studio runs queue
--worker`, started on demand by `ensure_worker`) takes the head whenever the machine's trainer lock is free and
starts the trainer exactly as Start does (studio.runs.process.start); so the rules of one trainer at a time hold
for queued runs too, and `studio train` is refused while a queued run trains. The worker, like the trainer,
outlives the UI server that started it (its own session): the queue must go on with the browser closed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..env import procs
from ..env.io import read_json_dict, write_text
from ..env.paths import runs_root
from . import events
from .layout import CONSOLE, RUN_INFO, is_run, run_info
from .lock import RunError

FOLDER = ".queue"
POLL_S = 1.0  # how often a waiting worker looks at the machine's trainer lock


def _folder(root) -> Path:
    d = runs_root(root) / FOLDER
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def _editing(root):
    """The queue file, read and written under its lock: {"runs": [...], "paused": bool}."""
    from filelock import FileLock
    folder = _folder(root)
    with FileLock(str(folder / "queue.json.lock"), timeout=30):
        q = _read(root)
        yield q
        write_text(folder / "queue.json", json.dumps(q, indent=1))


def _read(root) -> dict:
    q = read_json_dict(runs_root(root) / FOLDER / "queue.json")
    ids = q.get("runs")
    return {"runs": [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else [],
            "paused": q.get("paused") is True}


def _waiting(root, run_id: str) -> bool:
    """Whether a queued id is still a run waiting for its turn (not deleted, not started, not cancelled)."""
    d = runs_root(root) / run_id
    st = events.read_status(d)
    return is_run(d) and st.get("state") == "queued" and not st.get("pid")


def queued(root=None) -> list[Path]:
    """The runs waiting in the queue, in the order they will train."""
    return [runs_root(root) / i for i in _read(root)["runs"] if _waiting(root, i)]


def is_paused(root=None) -> bool:
    return _read(root)["paused"]


def position(run_dir: Path, root=None) -> int | None:
    """1 for the next run to train, None when the run is not waiting in the queue."""
    names = [p.name for p in queued(root)]
    return names.index(Path(run_dir).name) + 1 if Path(run_dir).name in names else None


# --- what the user does ---------------------------------------------------------------------------

def fingerprint(path: str | Path) -> dict | None:
    """Size and SHA-256 of the user's data file when the run is queued: at its turn the run refuses to train on a
    copy of a file that has since changed (the user fixed it: they meant the new one) or vanished."""
    p = Path(path)
    try:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"size": p.stat().st_size, "sha256": h.hexdigest()}
    except OSError:
        return None


def enqueue(run_dir: Path, root=None, seen: tuple[str, dict | None] | None = None) -> int:
    """Put a created run (state queued) at the end of the queue, recording its data file's fingerprint; its
    1-based position. `seen`: (file, fingerprint) already taken of that file now (a sweep's runs share one file:
    it is hashed once, not once per run)."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    src = info.get("source_data")
    if isinstance(src, str) and src and "queued_data" not in info:
        fp = seen[1] if seen is not None and seen[0] == src else fingerprint(src)
        write_text(run_dir / RUN_INFO, json.dumps({**info, "queued_data": fp, "queued_at": time.time()}, indent=1))
    events.write_status(run_dir, "queued", pid=None, message="Waiting in the queue")
    with _editing(root) as q:
        q["runs"] = [i for i in q["runs"] if _waiting(root, i) and i != run_dir.name] + [run_dir.name]
        return len(q["runs"])


def queue_run(cfg, root=None) -> tuple[Path, int]:
    """What "Queue it" does: a new run folder for cfg (validated, its data copied now), at the end of the queue,
    and a worker to train it when its turn comes. (run folder, position)."""
    from .create import create_run
    run_dir = create_run(cfg, root)
    pos = enqueue(run_dir, root)
    ensure_worker(root)
    return run_dir, pos


def cancel(run_dir: Path, root=None) -> None:
    """Take a waiting run out of the queue: it stays in the run list as stopped, with nothing trained."""
    run_dir = Path(run_dir)
    with _editing(root) as q:
        if run_dir.name not in q["runs"] or not _waiting(root, run_dir.name):
            raise RunError(f"Run '{run_dir.name}' is not waiting in the queue (it may have started already).")
        q["runs"].remove(run_dir.name)
        events.write_status(run_dir, "stopped", message="Cancelled in the queue before it started: nothing was "
                                                        "trained.")


def move(run_dir: Path, where: str, root=None) -> int:
    """Move a waiting run "up" one place or to the "front" (run next); its new 1-based position."""
    name = Path(run_dir).name
    with _editing(root) as q:
        ids = [i for i in q["runs"] if _waiting(root, i)]
        if name not in ids:
            raise RunError(f"Run '{name}' is not waiting in the queue (it may have started already).")
        at = ids.index(name)
        ids.pop(at)
        ids.insert(0 if where == "front" else max(at - 1, 0), name)
        q["runs"] = ids
        return ids.index(name) + 1


def set_paused(paused: bool, root=None) -> None:
    """Pause: the run that trains finishes, the next one waits. Resume starts the worker again."""
    with _editing(root) as q:
        q["paused"] = paused
    if not paused:
        ensure_worker(root)


# --- the worker -----------------------------------------------------------------------------------

def worker_holder(root=None) -> dict | None:
    """{"pid", "started"} of the live worker of this runs root, or None."""
    w = read_json_dict(runs_root(root) / FOLDER / "worker.json")
    return w if procs.same_process(w.get("pid"), w.get("started")) else None


def worker_command(root=None) -> list[str]:
    return [sys.executable, "-m", "studio", "runs", "queue", "--worker", "--runs-dir", str(runs_root(root))]


def ensure_worker(root=None) -> int | None:
    """Start the queue's worker when runs wait, the queue is not paused and no worker is alive; its pid, else None.
    Cheap enough for the UI's 2 s timer: two small file reads when nothing is to be done."""
    if worker_holder(root) is not None or is_paused(root) or not queued(root):
        return None
    folder = _folder(root)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(folder / "worker.log", "ab") as log:
        # its own session: it outlives the UI server (like the trainer does), so the queue goes on without it
        proc = subprocess.Popen(worker_command(root), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    # reaped when it ends, so a long-lived UI server does not collect one zombie per queue it ran
    threading.Thread(target=proc.wait, daemon=True, name="queue-worker-reaper").start()
    return proc.pid


def data_problem(run_dir: Path) -> str | None:
    """The sentence that fails a queued run at its turn: the user's data file vanished or changed since it was
    queued. None when it is as it was (or the run was queued without a fingerprint)."""
    info = run_info(run_dir)
    was, src = info.get("queued_data"), info.get("source_data")
    if not isinstance(was, dict) or not isinstance(src, str):
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("queued_at") or 0))
    now = fingerprint(src)
    if now is None:
        return (f"The data file {src} is gone (it was there when this run was queued, {when}): nothing was trained. "
                f"Put the file back and queue the run again.")
    if now != was:
        return (f"The data file {src} changed after this run was queued ({when}): the run would have trained on the "
                f"old copy, so nothing was trained. Queue it again to train on the file as it is now.")
    return None


def _pop_head(root) -> Path | None:
    with _editing(root) as q:
        ids = [i for i in q["runs"] if _waiting(root, i)]
        q["runs"] = ids[1:]
        return runs_root(root) / ids[0] if ids else None


def _push_front(run_dir: Path, root) -> None:
    with _editing(root) as q:
        q["runs"] = [run_dir.name, *[i for i in q["runs"] if i != run_dir.name]]


def work(root=None, say: Callable[[str], None] = print, poll: float = POLL_S) -> int:
    """The worker: while runs wait and the queue is not paused, wait for the machine's trainer lock to be free,
    then train the head (a run whose data changed fails with that sentence; a failed run does not stop the queue).
    A second worker of the same runs root exits at once. Returns 0."""
    from filelock import FileLock, Timeout

    from .process import check_idle, start, status
    folder = _folder(root)
    lock = FileLock(str(folder / "worker.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        say(f"Another worker runs this queue (pid {(worker_holder(root) or {}).get('pid', '?')}).")
        return 0
    try:
        write_text(folder / "worker.json", json.dumps({"pid": os.getpid(), "started": procs.started(os.getpid())}))
        while True:
            if is_paused(root):
                say("The queue is paused.")
                return 0
            if not queued(root):
                say("The queue is empty.")
                return 0
            try:
                check_idle(root)
            except RunError:
                time.sleep(poll)  # a run trains (one Start pressed, `studio train`): the next waits for it
                continue
            head = _pop_head(root)
            if head is None:
                continue
            problem = data_problem(head)
            if problem:
                events.write_status(head, "failed", error=problem, message=problem)
                say(f"{head.name}: {problem}")
                continue
            console = head / CONSOLE
            offset = console.stat().st_size if console.is_file() else 0
            try:
                proc = start(head, root=root)
            except RunError:  # lost a race with a Start elsewhere: the run keeps its place
                _push_front(head, root)
                time.sleep(poll)
                continue
            say(f"Training {head.name} (pid {proc.pid}).")
            rc = proc.wait()
            if events.read_status(head).get("state") == "queued":  # its trainer ended before it began training
                _not_started(head, rc, _tail(console, offset), root)
            say(f"{head.name}: {status(head).get('state')}.")
    finally:
        lock.release()


def _tail(path: Path, offset: int) -> str:
    """What a file got after `offset` (at most its last 16 KiB: the trainer's error is one line at the end)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - (1 << 14)))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _not_started(run_dir: Path, rc: int, console: str, root) -> None:
    """A queued run whose trainer exited before training: another trainer took the machine's lock in between (the
    run goes back to the front and waits), or the trainer refused the run (its config names a model that is not
    there...): failed, with the trainer's own sentence, and the queue goes on."""
    if "only one run trains at a time" in console:
        events.write_status(run_dir, "queued", pid=None, message="Waiting in the queue")
        _push_front(run_dir, root)
        return
    said = [ln.removeprefix("error: ").strip() for ln in console.splitlines() if ln.startswith("error: ")]
    msg = said[-1] if said else f"The trainer exited with code {rc} before training began; see {run_dir / CONSOLE}."
    events.write_status(run_dir, "failed", error=msg, message=msg)
