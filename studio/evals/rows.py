"""The rows checks score: each example's prompt, its reference answer (the last assistant turn) and the other cells
of its row in the user's file (what a check's `compare_to` reads).

A run keeps those cells beside its normalised data: columns.jsonl next to dataset.jsonl (one object per line, in
its order) and eval_columns.jsonl next to eval.jsonl, so a run's checks read the same columns as the user's file.
Only the columns the data format did not use are kept: the answer column is the reference already.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..env.io import read_json_lines, write_json_lines
from ..runs.layout import DATASET, EVAL_SET

COLUMNS = "columns.jsonl"            # beside dataset.jsonl: the other cells of each row, line by line
EVAL_COLUMNS = "eval_columns.jsonl"  # beside eval.jsonl, the same for the held-out rows


def make_row(messages: list[dict], row: int | None, columns: dict | None = None) -> dict:
    """A row checks score: {"row", "prompt" (the turns before the last answer), "reference" (the last assistant
    answer, None when there is none), "columns"}."""
    last = max((j for j, t in enumerate(messages) if t.get("role") == "assistant"), default=None)
    return {"row": row, "prompt": messages if last is None else messages[:last],
            "reference": None if last is None else messages[last]["content"], "columns": dict(columns or {})}


def report_cells(report) -> list[dict]:
    """The other cells of each example of a DatasetReport (from data.read_examples), aligned with report.examples:
    from the run's columns.jsonl when the report read a run's own dataset.jsonl, else from the file's table."""
    n = len(report.examples)
    side = Path(report.path).with_name(COLUMNS)
    if Path(report.path).name == DATASET and side.is_file():
        kept = read_json_lines(side)
        return kept if len(kept) == n else [{}] * n
    table = getattr(report, "table", None)
    if table is None:
        return [{}] * n
    at = {r: i for i, r in enumerate(table.attrs.get("rows") or range(1, len(table) + 1))}
    used = set(report.mapping.used().values())
    extra = [c for c in table.columns if c not in used]
    return [{c: plain(table[c].iat[at[r]]) for c in extra} if r in at else {} for r in report.rows]


def report_rows(report) -> list[dict]:
    """Every example of a DatasetReport as a row checks score."""
    return [make_row(m, r, c) for m, r, c in zip(report.examples, report.rows, report_cells(report))]


def columns_of(rows: list[dict]) -> list[str]:
    """The column names the rows carry, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r["columns"]))


def keep_cells(folder: Path, cells: list[dict], name: str = COLUMNS) -> Path | None:
    """Write the rows' other cells beside the run's data (nothing when no row has any)."""
    if not any(cells):
        return None
    return write_json_lines(Path(folder) / name, cells)


def run_rows(run_dir: str | Path, n: int | None = None) -> tuple[list[dict], str]:
    """The rows a run is evaluated on: its held-out rows (eval.jsonl), or when it kept none its first training rows
    (dataset.jsonl); the first n with an answer. Returns (rows, where: "held-out" or "training")."""
    from ..data import read_jsonl
    run_dir = Path(run_dir)
    for data, side, where in ((EVAL_SET, EVAL_COLUMNS, "held-out"), (DATASET, COLUMNS, "training")):
        path = run_dir / data
        if not path.is_file():
            continue
        convs = read_jsonl(path)
        cells = read_json_lines(run_dir / side)
        if len(cells) != len(convs):
            cells = [{}] * len(convs)
        rows = [make_row(m, i, c) for i, (m, c) in enumerate(zip(convs, cells), 1)]
        rows = [r for r in rows if r["reference"] is not None]
        if rows:
            return (rows[:n] if n else rows), where
    raise ValueError(f"{run_dir} keeps no rows to evaluate on (neither {EVAL_SET} nor {DATASET} has an answer).")


def plain(v: Any) -> Any:
    """A raw cell as JSON keeps it: None for a missing one, numbers and text as they are, anything else as JSON
    text (lists, mappings) or str."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (str, bool, int, float)):
        return v
    if hasattr(v, "item") and not hasattr(v, "__len__"):  # a numpy scalar
        return plain(v.item())
    try:
        return json.dumps(v if not hasattr(v, "tolist") else v.tolist(), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(v)
