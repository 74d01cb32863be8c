"""A new run folder: the validated, normalised copy of the data its stage trains on, its config pointing at that
copy, run.json, and status "queued". The user's file is read, never changed; the folder is self-contained and
resumable even if the original file moves."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .. import stages
from ..config import RunConfig
from ..env.io import write_text
from ..env.paths import runs_root
from . import events
from .layout import CONFIG, RUN_INFO, TEMPLATE_COPY


def slug(name: str) -> str:
    """A folder/file name safe on every OS: ASCII letters, digits, '-', '_' only, at most 40 chars."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:40]
    return s or "run"


def _refuse_other_kind(cfg: RunConfig, stage: stages.Stage) -> None:
    """DataError when a file the config reads as instruction examples (format auto, no column mapping) holds another
    stage's data: preference pairs or rated answers would train the wrong thing as SFT rows."""
    from .. import data
    if stage.data != data.CONVERSATIONS or cfg.data.format != "auto" or cfg.data.columns.used():
        return
    other = data.kind_of_file(cfg.data.path)
    target = stages.for_data(other.name) if other is not None else None
    if target is not None:
        raise data.DataError(f"{Path(cfg.data.path).name} holds {other.what}: they train the {target.name} stage"
                             f"{other.not_sft}. Set Training stage to {target.name} and Start from to an SFT run's "
                             f"folder (Advanced), or pick an instruction dataset for SFT.")


def create_run(cfg: RunConfig, root: str | Path | None = None) -> Path:
    """A new run folder with config.yaml and the validated, normalised copy of its data (status: queued): the stage's
    own file (studio.stages: dataset.jsonl, pairs.jsonl, unpaired.jsonl), which the run's config points at."""
    from .. import data

    cfg.ready_to_train()
    stage = stages.get(cfg.train.stage)
    kind = data.kind(stage.data)
    _refuse_other_kind(cfg, stage)
    report = kind.read(cfg.data)
    root = runs_root(root)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(cfg.name)}"
    run_dir, n = root / base, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{base}-{n}"
    run_dir.mkdir(parents=True)
    own = run_dir / stage.run_file
    kind.write(report.examples, own)
    if kind.name == data.CONVERSATIONS:  # the other cells of each row, for the checks' compare_to
        from ..evals.rows import keep_cells, report_cells
        keep_cells(run_dir, report_cells(report))
    run_cfg = cfg.replace(data={"path": str(own.resolve()), "format": kind.run_format, "columns": {},
                                "skip_invalid": True})
    if cfg.model.chat_template.lower().endswith(".jinja"):
        # the run keeps its own copy: the user's file may move or go, and the run must still load (list, resume)
        tmpl = run_dir / TEMPLATE_COPY
        write_text(tmpl, Path(cfg.model.chat_template).expanduser().read_text(encoding="utf-8"))
        run_cfg = run_cfg.replace(model={"chat_template": str(tmpl.resolve())})
    run_cfg.save(run_dir / CONFIG)
    write_text(run_dir / RUN_INFO, json.dumps({
        "name": cfg.name, "created": time.time(), "source_data": cfg.data.path, "data_summary": report.summary(),
        "rows_used": len(report.examples), "rows_skipped": report.n_skipped}, indent=1))
    events.write_status(run_dir, "queued", message="Created")
    return run_dir
