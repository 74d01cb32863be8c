"""A failed run as a sentence that says what to change (status.json's error, the UI's message), and what a full
disk leaves behind cleaned up."""
from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from ..env.io import folder_bytes, free_space
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
        return oom_advice(_run_config(run_dir))
    return f"{type(e).__name__}: {e}"


def _run_config(run_dir: Path | None):
    from ..config import RunConfig
    from ..runs.layout import CONFIG
    try:
        return RunConfig.load(Path(run_dir) / CONFIG) if run_dir is not None else None
    except Exception:  # the advice falls back to the general levers; the run's own error is what matters
        return None


def oom_advice(cfg) -> str:
    """"Out of memory." and what to change in this run's settings, the levers that matter most first (none it
    already uses: a run that is already NF4 is not told to quantise)."""
    if cfg is None:
        return ("Out of memory. Lower the batch size (and raise gradient accumulation to keep the effective "
                "batch), lower Max sequence length, turn on gradient checkpointing, or use 4-bit quantisation.")
    t, fixes = cfg.train, []
    if not t.gradient_checkpointing:
        fixes.append("turn on gradient checkpointing (Memory and compute; about a third slower, a fraction of the "
                     "activations)")
    if t.batch_size > 1:
        fixes.append(f"lower Batch size from {t.batch_size} to {max(1, t.batch_size // 2)} and raise Gradient "
                     f"accumulation from {t.grad_accum} to {t.grad_accum * 2} (the same effective batch)")
    if t.max_length > 256:
        fixes.append(f"lower Max sequence length from {t.max_length} to {t.max_length // 2} (longer rows are cut)")
    if cfg.model.quantization != "nf4":
        fixes.append("use 4-bit quantisation (nf4)")
    if not fixes:
        fixes.append("choose a smaller model: this run already uses 4-bit weights, checkpointing, batch 1 and "
                     "short rows")
    return "Out of memory. " + "; or ".join(f[0].upper() + f[1:] if i == 0 else f for i, f in enumerate(fixes)) + "."


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
    free = free_space(where) or f"no space left in {where}"
    need = ""
    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    if ckpt is not None:
        need = f"; a checkpoint of this run needs ~{folder_bytes(ckpt) / 2**20:.0f} MB"
    return (f"Disk full: {free}{need}. Free some space (or lower Checkpoints kept), then Resume: it continues "
            f"from the last complete checkpoint.")


def _is_oom(e: BaseException) -> bool:
    # cuBLAS failing to allocate its workspace is the same condition under another name (an RTX card with the
    # Chat tab's model loaded met it before torch's own OutOfMemoryError)
    text = str(e).lower()
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text \
        or "cublas_status_alloc_failed" in text
