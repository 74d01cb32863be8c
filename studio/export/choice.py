"""Which of a run's adapters an export means ("adapter", "best", "checkpoint-N"), where it is, what the export is
called, and how its base is named for someone else."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import DEMO_MODEL, RunConfig
from ..runs.create import slug
from ..runs.layout import ADAPTER, CONFIG, FINAL, checkpoint_step, resolve_adapter, run_name
from ..runs.results import best_adapter
from .safety import check_adapter

DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the bundled demo model is a copy of
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def which(run_dir: Path, checkpoint: str | None) -> str:
    """The adapter name to export: "adapter" (the final one, the default), "checkpoint-N", or "best" -> the
    run's adapter with the lowest eval loss (the final one when nothing was measured)."""
    if checkpoint == "best":
        best = best_adapter(run_dir)
        return best.name if best else FINAL
    return checkpoint or FINAL


def adapter_dir(run_dir: Path, checkpoint: str | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG} in it).")
    name = which(run_dir, checkpoint)
    if name == FINAL:
        adapter = run_dir / ADAPTER
        if not all((adapter / f).is_file() for f in ADAPTER_FILES):
            raise ValueError(f"Run {run_dir.name} has no adapter yet: finish or stop the run first (stopping saves "
                             f"the adapter), then export.")
    else:
        adapter, _, _ = resolve_adapter(run_dir, name)
        if not (adapter / ADAPTER_FILES[0]).is_file():
            raise ValueError(f"{adapter} has no {ADAPTER_FILES[0]}: export the final adapter or another checkpoint.")
    check_adapter(adapter, run_dir)  # every export starts here: a damaged file is refused before anything is written
    return adapter


def zip_name(run_dir: Path, checkpoint: str | None = None) -> str:
    """<slug of the run name>-adapter[-stepN]-<YYYYMMDD the adapter was saved>.zip (-stepN for a checkpoint):
    only ASCII letters, digits, - and _."""
    run_dir = Path(run_dir)
    name = which(run_dir, checkpoint)
    folder = run_dir / ADAPTER if name == FINAL else resolve_adapter(run_dir, name)[0]
    st = folder / "adapter_model.safetensors"
    day = time.strftime("%Y%m%d", time.localtime(st.stat().st_mtime if st.exists() else time.time()))
    step = "" if name == FINAL else f"-step{checkpoint_step(name)}"
    return f"{slug(run_name(run_dir))}-adapter{step}-{day}.zip"


def portable_base(cfg: RunConfig) -> str:
    """The base as someone else can load it: the hub id for the demo or a hub source, else the folder."""
    src = cfg.model.source
    if src == DEMO_MODEL:
        return DEMO_HUB_ID
    return src
