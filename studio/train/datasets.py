"""The data step of the recipe, shared by the stages' glue: the report of what was read, the held-out split, and the
copies a run keeps (its stage's own file, and dataset.jsonl / eval.jsonl as conversations for Chat's held-out
comparison and the GGUF check)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..config import RunConfig
from ..runs.layout import DATASET, EVAL_SET, run_info

log = logging.getLogger("studio.train")


def log_report(what: str, report, cfg: RunConfig | None = None, run_dir: Path | None = None) -> None:
    """The data's summary in train.log; for a run made by the studio, which file of the user's it is a copy of and
    how the Data tab read it, so the log and the Data tab name one thing ("alpaca columns, kept as chat messages")."""
    log.info("%s: %s", _origin(what, cfg, run_dir), report.summary())
    for issue in report.issues[:20]:
        where = f"row {issue.row}" + (f", column {issue.column}" if issue.column is not None else "")
        log.info("  %s: %s (%s)", where, issue.problem, issue.fix)


def _origin(what: str, cfg: RunConfig | None, run_dir: Path | None) -> str:
    info = run_info(run_dir) if run_dir is not None else {}
    src, summary = info.get("source_data"), info.get("data_summary")
    if cfg is None or not isinstance(src, str) or Path(cfg.data.path).name == Path(src).name:
        return what
    read = re.search(r"read as (\w+)", summary) if isinstance(summary, str) else None
    how = f" ({read.group(1)} columns)" if read and read.group(1) != cfg.data.format else ""
    return f"{what} from {Path(src).name}{how}, kept as {Path(cfg.data.path).name}"


def split_and_keep(cfg: RunConfig, run_dir: Path, examples: list, kind, own: str | None,
                   cells: list[dict] | None = None) -> tuple[list, list]:
    """The examples split into (train, held out) by the run's seed, and kept in the run folder: `own` (the stage's
    file, written by `kind.write`, once) and dataset.jsonl (once) / eval.jsonl as `kind.conversations` of them.
    `cells`: each example's other cells (studio.evals.rows), kept beside them for the checks' compare_to."""
    from .. import data
    from ..evals.rows import COLUMNS, EVAL_COLUMNS, keep_cells

    train_ex, eval_ex = data.split(examples, cfg.train.eval_fraction, cfg.train.seed)
    if cells is not None and any(cells):
        if not (run_dir / COLUMNS).exists():
            keep_cells(run_dir, cells, COLUMNS)
        keep_cells(run_dir, data.split(cells, cfg.train.eval_fraction, cfg.train.seed)[1], EVAL_COLUMNS)
    if own is not None and not (run_dir / own).exists():
        kind.write(examples, run_dir / own)
    if not (run_dir / DATASET).exists():
        data.write_jsonl(kind.conversations(examples), run_dir / DATASET)
    data.write_jsonl(kind.conversations(eval_ex), run_dir / EVAL_SET)
    return train_ex, eval_ex
