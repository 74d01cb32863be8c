"""What the data checks say: `DataError` (the file cannot be used at all) and `Issue` (one row's problem, or a warning
on the file), and the small helpers their messages are written with (`typename`, `show`, `plural`).

The leaf of studio.data: it imports nothing of the studio, and every other module here builds on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class DataError(ValueError):
    """The file cannot be used at all; the message names the file and says what to do."""


@dataclass
class Issue:
    row: int | None        # 1-based, as the user counts rows in the file (CSV: header excluded)
    column: str | None
    problem: str
    fix: str
    severity: str = "error"  # "error": the row is skipped; "warning": the row is kept
    kind: str = ""           # short label for counting, e.g. "empty output"; defaults to `problem`

    def __post_init__(self) -> None:
        self.kind = self.kind or self.problem


def typename(v: Any) -> str:
    """What a value is, in the user's words: list, object (dict), string, or the Python type's name."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(v, dict):
        return "object (dict)"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def show(s: str) -> str:
    """Text safe to print or save: a lone surrogate shown as its escape, e.g. \\ud800."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def plural(k: int, word: str) -> str:
    """'1 row', '2 rows'."""
    return f"{k} {word}" + ("" if k == 1 else "s")
