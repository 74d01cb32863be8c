"""What keeps an export from harming what is around it:
- `check_dest` / `mark`: a merged export replaces only a new or empty folder or one the studio wrote itself (it
  carries MARK), never a user's folder that happens to be named with --merged-out.
- `claim` / `sweep`: each work folder records its exporter's pid and start time (OWNER); a later export removes the
  ones whose exporter is no longer running (decided by studio.env.procs.same_process, never by age alone).
- `check_adapter`: the adapter's files read back before any export writes anything.
- `stop_on_sigterm`: SIGTERM (kill, timeout, a service stop) raises `Stopped` in the main thread, so the exporter's
  own cleanup runs: its children are ended, its work folder removed (SIGTERM's default action would skip both).
- `disk_full` / `disk_full_sentence`: a full disk is said as such, with the free space.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from ..env.io import folder_bytes, foreign_folder, free_space
from ..env.procs import same_process, started
from ..models.weights import safetensors_problem
from ..runs.layout import ADAPTER_CONFIG, STUDIO_CONFIG, checkpoints
from .llamacpp import DISK_FULL_TEXT, DiskFull, GGUFError

MARK = ".qlora-studio-export"  # written into every finished merged export: "the studio may replace this folder"
OWNER = ".exporter.json"       # {"pid", "started"} of the process building this work folder
WEIGHTS = "adapter_model.safetensors"
# What a merged export held before MARK existed: recognised by these names alone, so an earlier export is still
# replaced, while a folder holding anything else (a user's thesis.txt, photos/) is refused.
_MERGED_FILES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".yaml")


class Stopped(GGUFError):
    """The export was stopped by SIGTERM; a GGUFError so `studio export` reports it like any failed export step."""


def check_dest(dest: Path, option: str = "--merged-out") -> None:
    """ValueError unless `dest` is new, an empty folder or an earlier merged export of the studio: the same rule
    `studio train --output` keeps for a run folder (studio.runs.process.check_output)."""
    why = foreign_folder(dest, option, "the merged model", "a merged model the studio exported", is_own_merged)
    if why:
        raise ValueError(why)


def is_own_merged(folder: Path) -> bool:
    if (folder / MARK).is_file():
        return True
    entries = list(folder.iterdir())
    return (folder / STUDIO_CONFIG).is_file() and (folder / "config.json").is_file() and \
        all(p.is_file() and p.name.endswith(_MERGED_FILES) for p in entries)


def mark(folder: Path, kind: str, run_dir: Path) -> None:
    (folder / MARK).write_text(json.dumps({"kind": kind, "run": str(run_dir), "written": time.time()}) + "\n",
                               encoding="utf-8")


def claim(folder: Path) -> Path:
    """Record this process (pid + start time) as the one building `folder` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (folder / OWNER).write_text(json.dumps({"pid": pid, "started": started(pid)}), encoding="utf-8")
    return folder


def release(folder: Path) -> None:
    """The finished folder no longer needs its owner record (it is not a work folder any more)."""
    (folder / OWNER).unlink(missing_ok=True)


def sweep(parent: Path) -> list[str]:
    """Remove the hidden work folders in `parent` whose exporter is no longer running; returns one sentence per
    folder removed, and one per unfinished GGUF work folder that has no owner record (left alone: an older studio
    made it, and whether it still runs cannot be told)."""
    said: list[str] = []
    if not parent.is_dir():
        return said
    for d in sorted(parent.iterdir()):
        if not d.name.startswith(".") or not d.is_dir() or d.is_symlink():
            continue
        try:
            owner = json.loads((d / OWNER).read_text(encoding="utf-8"))
        except FileNotFoundError:
            if d.name.startswith(".gguf-"):
                said.append(f"Left {d} alone: an unfinished GGUF export without a record of its exporter; remove it "
                            f"by hand when no export is running.")
            continue
        except (OSError, ValueError):
            owner = {}
        if isinstance(owner, dict) and same_process(owner.get("pid"), owner.get("started")):
            continue  # another export is building it right now
        size = folder_bytes(d) / 2**20
        shutil.rmtree(d, ignore_errors=True)
        said.append(f"Removed {d.name} ({size:,.0f} MB), an unfinished export whose exporter is no longer running.")
    return said


def check_adapter(adapter: Path, run_dir: Path | None = None) -> None:
    """ValueError naming the file when the adapter's config is not a peft config or its weights do not read back
    (a truncated or garbled file after a full disk or a kill): its header parses and its data fits the file, without
    reading the weights."""
    cfg_file, weights = adapter / ADAPTER_CONFIG, adapter / WEIGHTS
    why = None
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("peft_type"), str):
            why = "no peft_type in it"
    except (OSError, ValueError) as e:
        why = f"not JSON: {str(e)[:80]}"
    if why is not None:
        raise ValueError(f"{cfg_file} is damaged ({why}): {_instead(adapter, run_dir)}")
    why = safetensors_problem(weights)  # the one header check (studio.models.weights), as loaders use it
    if why is not None:
        raise ValueError(f"{weights} is damaged ({why}): {_instead(adapter, run_dir)}")


def _instead(adapter: Path, run_dir: Path | None) -> str:
    intact = [p.name for p in checkpoints(run_dir) if p != adapter] if run_dir is not None else []
    if intact:
        return (f"export an earlier checkpoint instead ({intact[-1]} is intact: pick it in the Export tab or pass "
                f"--checkpoint {intact[-1]}), or train the run again.")
    return "export an earlier checkpoint instead (this run has no intact one), or train the run again."


@contextlib.contextmanager
def stop_on_sigterm(what: str = "The export"):
    """SIGTERM raises Stopped in the main thread while the block runs (the trainer turns it into a clean stop the
    same way, studio.train.lifecycle). Elsewhere signal handlers cannot be installed: the UI server runs exports in
    worker threads, where its own shutdown and the children's die_with_parent cover it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:  # a second SIGTERM during the cleanup must not cut the cleanup short
            return
        fired.append(signum)
        raise Stopped(f"{what} was stopped (SIGTERM): its helper processes were ended and its unfinished files "
                      f"removed. Export again to make it.")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def disk_full(e: BaseException | str) -> bool:
    """Whether an OSError, or a tool's output, says the disk (or the user's quota) is full."""
    if isinstance(e, DiskFull):
        return True
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(t in str(e) for t in DISK_FULL_TEXT)


def disk_full_sentence(folder: Path) -> str:
    """"disk full: 12 MB free in /x/exports" (the free space where the export was being written)."""
    free = free_space(folder)
    return f"disk full: {free}" if free else f"disk full in {folder}"
