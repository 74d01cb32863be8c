"""One trainer at a time on this machine: the trainer lock.

The trainer holds $STUDIO_HOME/trainer.lock for its whole life through filelock (an exclusive flock on Linux and
macOS, a Windows lock there), released by the OS when the process ends, however it ends. Beside it, trainer.json
names the holder (its run folder, pid and the pid's start time), so a refusal can say which run trains.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..env import procs
from ..env.io import read_json_dict, write_text
from ..env.paths import studio_home


class RunError(RuntimeError):
    """A run operation that cannot be done now; the message says why and what to do."""


def lock_path() -> Path:
    return studio_home() / "trainer.lock"


def _holder_path() -> Path:
    return studio_home() / "trainer.json"


def _lock(timeout: float = 0):
    from filelock import FileLock
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


@contextmanager
def trainer_lock(run_dir: Path):
    """Held by the trainer for its whole life: one trainer per machine. RunError naming the run that holds it."""
    from filelock import Timeout
    lock = _lock()
    try:
        lock.acquire()
    except Timeout:
        raise RunError(busy_message(lock_holder() or {})) from None
    try:
        write_text(_holder_path(), json.dumps({"run_dir": str(Path(run_dir).resolve()), "pid": os.getpid(),
                                               "started": procs.started(os.getpid())}))
        yield
    finally:
        lock.release()


def busy_message(holder: dict) -> str:
    where = Path(holder.get("run_dir") or "another run folder")
    return (f"Run '{where.name}' is training (pid {holder.get('pid', '?')}, in {where}); only one run trains at a "
            f"time on this machine. Stop it first (studio runs stop {where}), or wait until it finishes.")


def lock_holder() -> dict | None:
    """{"run_dir", "pid", "started"} of the trainer holding the machine's trainer lock, or None when no trainer
    runs ({} when one holds it but has not said who yet)."""
    from filelock import Timeout
    if not lock_path().is_file():
        return None
    lock = _lock()
    try:
        lock.acquire()
    except Timeout:
        holder = read_json_dict(_holder_path())
        pid = holder.get("pid")
        # a pid is trusted only with its start time: a stale trainer.json names a process that is gone (or a
        # recycled pid), and one without a start time cannot be told from it
        if pid is not None and not procs.same_process(pid, holder.get("started")):
            return {}
        return holder
    lock.release()
    return None


def wait_released(timeout: float) -> dict | None:
    """Wait up to timeout seconds for the trainer lock to be released; the holder still there after it, or None."""
    deadline = time.monotonic() + timeout
    holder = lock_holder()
    while holder is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        holder = lock_holder()
    return holder
