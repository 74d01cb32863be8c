"""A failed run as a sentence that says what to change (status.json's error, the UI's message), and what a full
disk leaves behind cleaned up."""
from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from ..runs.layout import CHECKPOINTS, checkpoints, latest_checkpoint

log = logging.getLogger("studio.train")


def explain(e: BaseException, run_dir: Path | None = None) -> str:
    """Turn an exception into a sentence that says what to change."""
    from ..data import DataError
    from ..models import ModelError
    from ..runs.events import NonFiniteLoss
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return disk_full(Path(run_dir) if run_dir else Path.cwd())
    if isinstance(e, (DataError, ModelError, NonFiniteLoss, ValueError)) and not _is_oom(e):
        return str(e)
    if _is_oom(e):
        return ("Out of memory. Lower the batch size (and raise gradient accumulation to keep the effective "
                "batch), lower Max sequence length, turn on gradient checkpointing, or use 4-bit quantisation.")
    return f"{type(e).__name__}: {e}"


def remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoint folders that were never completed (no trainer_state.json: transformers writes it last);
    complete ones, damaged or not, are left to the user."""
    complete = {p.name for p in checkpoints(run_dir, intact=False)}
    folder = run_dir / CHECKPOINTS
    gone = []
    for p in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        if p.is_dir() and p.name not in complete:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    if gone:
        log.info("Removed the incomplete %s after the disk filled up.", ", ".join(gone))
    return gone


def disk_full(run_dir: Path) -> str:
    """"Disk full: N MB free in <folder>; a checkpoint of this run needs ~M MB. ..." (M from the newest checkpoint
    on disk, when there is one)."""
    where = run_dir if run_dir.exists() else run_dir.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.0f} MB free in {where}"
    except OSError:
        free = f"no space left in {where}"
    need = ""
    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    if ckpt is not None:
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        need = f"; a checkpoint of this run needs ~{size / 2**20:.0f} MB"
    return (f"Disk full: {free}{need}. Free some space (or lower Checkpoints kept), then Resume: it continues "
            f"from the last complete checkpoint.")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
