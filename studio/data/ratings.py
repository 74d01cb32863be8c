"""Rated answers for the KTO stage: single answers to a prompt, each rated good or bad (TRL's unpaired preference
format), from the Chat tab's 👍/👎 file (feedback.jsonl) or any file with prompt, completion and label columns,
checked row by row as `pairs` checks preference pairs (the cells read by `answers`).

Not to be confused with studio.runs.judgements.read_ratings, which reads a run's own 👍/👎 lines as they were
written; `read_rated_answers` reads a user's file of them for training. No transformers, no torch.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .answers import answer_turns, check_answer, check_prompt, first_rows, prompt_turns, read_rows, write_lines
from .cells import Bad, is_missing
from .formats import Counts, Tally
from .issues import DataError, Issue, plural, show
from .read import read_table

_LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "up": True,
                "down": False, "good": True, "bad": False, "👍": True, "👎": False}


@dataclass
class RatedReport(Counts):
    """Answers rated one at a time: {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": bool}."""
    path: str
    n_rows: int
    examples: list[dict]
    rows: list[int]
    issues: list[Issue]

    @property
    def n_desirable(self) -> int:
        return sum(e["label"] for e in self.examples)

    def summary(self) -> str:
        n = self.n_used
        text = (f"{plural(self.n_rows, 'row')} read as rated answers; {n} used: {self.n_desirable} good, "
                f"{n - self.n_desirable} bad")
        text += (f"; {plural(self.n_skipped, 'row')} skipped" if self.n_skipped else "") + "."
        warned = Counter(i.kind for i in self.issues if i.severity == "warning")
        return text + (" Warnings: " + ", ".join(f"{n} {k}" for k, n in warned.most_common()) + "." if warned else "")


def _label(v: Any, column: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)) and not is_missing(v) and float(v) in (0.0, 1.0):
        return bool(v)
    word = str(v).strip().lower() if isinstance(v, str) else None
    if word in _LABEL_WORDS:
        return _LABEL_WORDS[word]
    raise Bad("bad label", column, f"label is '{show(str(v))}'",
              "write true for a good answer and false for a bad one (1/0, yes/no, 👍/👎 work too)")


def is_rated_file(path: str | os.PathLike) -> bool:
    """Whether the file's first rows have prompt, completion and label columns: answers rated one at a time (the KTO
    stage's data), which as SFT data would teach the bad answers too."""
    df = first_rows(path)
    return df is not None and {"prompt", "completion", "label"} <= {str(c).strip().lower() for c in df.columns}


def read_rated_answers(path: str | os.PathLike, skip_invalid: bool = True) -> RatedReport:
    """Read answers rated one at a time (the Chat tab's feedback.jsonl, or any file with prompt, completion and
    label columns; prompt and completion as text or chat turns), validated row by row as read_preferences does."""
    name = Path(path).name
    df = read_table(path)
    rows, file_issues = df.attrs["rows"], list(df.attrs["issues"])
    lower = {str(c).strip().lower(): c for c in df.columns}
    cols = {part: lower[part] for part in ("prompt", "completion", "label", "system") if part in lower}
    missing = [p for p in ("prompt", "completion", "label") if p not in cols]
    if missing:
        raise DataError(f"{name} is not a file of rated answers: its columns are {', '.join(map(str, df.columns))}, "
                        f"and it has no {' and no '.join(missing)} column. It needs prompt, completion and label "
                        f"(true for a good answer, false for a bad one), as the Chat tab's 👍/👎 file has.")
    cells = {part: df[c].tolist() for part, c in cols.items()}
    tally = Tally(file_issues, keep=None)

    def rated(row: dict, warns: list[Issue]) -> dict:
        prompt = prompt_turns(row, cols, warns)
        completion = answer_turns(row["completion"], cols["completion"], "completion", False, warns)
        check_prompt(prompt, cols["prompt"])
        check_answer(completion, cols["completion"], "completion")
        return {"prompt": prompt, "completion": completion, "label": _label(row["label"], cols["label"])}

    examples, used_rows = read_rows(rows, cells, tally, rated, "rated answer")
    tally.check(name, len(rows), skip_invalid)
    return RatedReport(str(path), len(rows), examples, used_rows, tally.issues)


def write_rated(examples: list[dict], path: str | os.PathLike) -> Path:
    """One {"prompt", "completion", "label"} per line (TRL's unpaired preference format, what the KTO stage reads)."""
    return write_lines(examples, ("prompt", "completion", "label"), path)
