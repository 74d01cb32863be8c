"""Formats: which columns hold what (alpaca, OpenAI messages, ShareGPT, prompt/completion, text), and every
row turned into chat messages or an Issue naming its row, column and what to do. No transformers, no torch.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import numbers
import os
import random
import re
import sys
from pathlib import Path
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from studio.config import ColumnMapping, DataSettings

from .read import MAX_DEPTH, DataError, Issue, _read, _typename

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
# ~25k tokens: far past any sensible max_length, so such a row is almost surely a paste accident.
MAX_ROW_CHARS = 100_000

# Role names accepted in a turn -> the normalised role (OpenAI, ShareGPT and Gemma spellings).
_ROLES = {"system": "system", "user": "user", "human": "user",
          "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
_ALLOWED_ROLES = "system, user, assistant (ShareGPT: system, human, gpt)"
# A "\ud800" escape without its pair parses to a str no UTF-8 file (or tokenizer) can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")

# Column names that fill each part of an example, in order of preference (compared lower-case).
_ALIASES = {
    "messages": ("messages", "conversations", "conversation", "chat", "dialog", "dialogue"),
    "instruction": ("instruction", "question", "query", "prompt", "input", "source", "user"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "completion", "target", "reply", "assistant"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text", "content", "document", "body"),
    "system": ("system", "system_prompt"),
}
# format -> (required parts, optional parts); also the order `detect_format` tries them in.
_PARTS = {
    "messages": (("messages",), ("system",)),
    "sharegpt": (("messages",), ("system",)),
    "prompt_completion": (("prompt", "completion"), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system")),
    "text": (("text",), ()),
}
_EXPECTED = ("instruction + output [+ input] (alpaca), messages (OpenAI chat), conversations (ShareGPT), "
             "prompt + completion, or text")


@dataclass
class DatasetReport:
    path: str
    format: str
    mapping: ColumnMapping
    columns: list[str]
    n_rows: int
    examples: list[list[dict]]
    rows: list[int]
    issues: list[Issue]
    table: pd.DataFrame | None = field(default=None, repr=False)  # the raw cells as read (for a preview)

    @property
    def n_used(self) -> int:
        return len(self.examples)

    @property
    def n_skipped(self) -> int:
        return len({i.row for i in self.issues if i.severity == "error"})

    @property
    def skipped_reasons(self) -> Counter:
        return Counter(i.kind for i in self.issues if i.severity == "error")

    def issues_table(self) -> list[dict]:
        return [{"row": i.row, "column": i.column, "problem": i.problem, "fix": i.fix, "severity": i.severity}
                for i in self.issues]

    def summary(self) -> str:
        head = f"{_n(self.n_rows, 'row')} read as {self.format}; "
        if self.n_skipped:
            why = ", ".join(f"{n} {k}" for k, n in self.skipped_reasons.most_common())
            head += f"{self.n_used} used, {self.n_skipped} skipped: {why}."
        else:
            head += f"all {self.n_used} used."
        warnings = Counter(i.kind for i in self.issues if i.severity == "warning")
        if warnings:
            head += " Warnings: " + ", ".join(f"{n} {k}" for k, n in warnings.most_common()) + "."
        return head


# --- format detection -------------------------------------------------------------------------

def detect_format(df: pd.DataFrame) -> tuple[str, ColumnMapping]:
    """(format, mapping) from the column names, case-insensitively; DataError when nothing fits."""
    return _resolve(df, "auto", ColumnMapping(), df.attrs.get("source", "the file"))


def _resolve(df: pd.DataFrame, fmt: str, user: ColumnMapping, name: str) -> tuple[str, ColumnMapping]:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"{name}: format '{fmt}' is not known: use auto or one of {', '.join(FORMATS)}.")
    by_lower: dict[str, str] = {}
    for c in df.columns:
        by_lower.setdefault(str(c).strip().lower(), str(c))
    found = ", ".join(map(str, df.columns))
    chosen: dict[str, str] = {}
    for part, col in user.used().items():
        real = by_lower.get(col.strip().lower())
        if real is None:
            raise DataError(f"{name}: column '{col}' (set as the {part} column) is not in the file; its columns "
                            f"are: {found}. Pick one of those in the column mapping.")
        chosen[part] = real
    sniff = fmt == "auto"  # auto: tell OpenAI from ShareGPT turns by looking at the data
    if fmt == "auto":
        set_parts = set(chosen) - {"system"}
        for f, (req, opt) in _PARTS.items():
            if set_parts & set(req + opt):
                fmt = f
                break
    candidates = [fmt] if fmt != "auto" else list(_PARTS)
    for f in candidates:
        parts = dict(chosen)
        req, opt = _PARTS[f]
        for part in req + opt:
            if part not in parts:
                taken = set(parts.values())
                col = next((by_lower[a] for a in _ALIASES[part] if a in by_lower and by_lower[a] not in taken), None)
                if col is not None:
                    parts[part] = col
        if all(p in parts for p in req):
            if f in ("messages", "sharegpt"):
                f = _turn_style(df[parts["messages"]]) if sniff else f
            keep = {p: c for p, c in parts.items() if p in req + opt}
            return f, ColumnMapping(**keep)
    if fmt != "auto":
        missing = [p for p in _PARTS[fmt][0] if p not in chosen]
        raise DataError(f"{name}: format '{fmt}' needs the {' and '.join(missing)} column"
                        f"{'s' if len(missing) > 1 else ''}, but the file's columns are: {found}. Set them in the "
                        f"column mapping, or choose format 'auto'.")
    raise DataError(f"{name}: cannot tell the format from its columns ({found}). Expected {_EXPECTED}. Rename "
                    f"the columns, or set the column mapping by hand.")


def _turn_style(col: pd.Series) -> str:
    """'sharegpt' when turns use {from, value}, else 'messages' (looks at the first few rows)."""
    for v in col.head(20):
        try:
            turns = _as_list(json.loads(v) if isinstance(v, str) else v)
        except (ValueError, TypeError, RecursionError):
            continue
        for t in turns if isinstance(turns, list) else []:
            if isinstance(t, dict):
                return "sharegpt" if "from" in t or "value" in t else "messages"
    return "sharegpt" if str(col.name).lower().startswith("conv") else "messages"


# --- rows -> examples -------------------------------------------------------------------------

class _Bad(Exception):
    """One row cannot be used; carries the Issue fields (row filled in by the caller)."""

    def __init__(self, kind: str, column: str | None, problem: str, fix: str):
        super().__init__(problem)
        self.issue = Issue(None, column, problem, fix, "error", kind)


def read_examples(path: str | os.PathLike, format: str = "auto", columns: ColumnMapping | None = None,
                  system_prompt: str = "", skip_invalid: bool = True) -> DatasetReport:
    """Read, detect, normalise and validate. With skip_invalid=False any bad row (duplicates aside:
    dropping one copy loses nothing) raises DataError; otherwise bad rows are skipped and reported."""
    name = Path(path).name
    df, rows, issues = _read(path)
    fmt, mapping = _resolve(df, format, columns or ColumnMapping(), name)
    cells = {part: df[col].tolist() for part, col in mapping.used().items()}
    examples, used_rows, seen = [], [], {}
    for i, rownum in enumerate(rows):
        warns: list[Issue] = []
        try:
            row = {part: vals[i] for part, vals in cells.items()}
            msgs = _row_messages(fmt, row, mapping, system_prompt.strip(), warns)
            if sum(len(m["content"]) for m in msgs) > MAX_ROW_CHARS:
                raise _Bad("row too long", None, f"row is over {MAX_ROW_CHARS:,} characters",
                           "split it into shorter examples or delete it; it would be cut at the max length anyway")
            # a 16-byte digest, not the text: the full JSON of every row doubled the memory of a big file
            key = hashlib.blake2b(json.dumps(msgs, ensure_ascii=False).encode("utf-8"), digest_size=16).digest()
            if key in seen:
                raise _Bad("duplicate", None, f"same example as row {seen[key]}",
                           "delete one copy; duplicates would be trained on twice")
            seen[key] = rownum
        except _Bad as bad:
            bad.issue.row = rownum
            issues.append(bad.issue)
            continue
        for w in warns:
            w.row = rownum
        issues.extend(warns)
        examples.append(msgs)
        used_rows.append(rownum)
    df.attrs.update(rows=rows, issues=[i for i in issues if i.row is None])
    report = DatasetReport(str(path), fmt, mapping, list(df.columns), len(rows), examples, used_rows, issues, df)
    errors = [i for i in issues if i.severity == "error" and i.kind != "duplicate"]
    if errors and not skip_invalid:
        first = "; ".join(_issue_line(i) for i in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DataError(f"{name}: {_n(len(errors), 'row')} of {len(rows)} cannot be used: {first}{more}. Fix "
                        f"them, or turn on 'Skip bad rows' to train on the rest.")
    if not examples:
        why = ", ".join(f"{n} {k}" for k, n in report.skipped_reasons.most_common())
        first = next(i for i in issues if i.severity == "error")
        raise DataError(f"{name}: nothing usable: {_n(len(rows), 'row')}, all skipped: {why}. First problem: "
                        f"{_issue_line(first)}.")
    return report


def from_config(data_cfg: DataSettings) -> DatasetReport:
    return read_examples(data_cfg.path, data_cfg.format, data_cfg.columns, data_cfg.system_prompt,
                         data_cfg.skip_invalid)


def _row_messages(fmt: str, row: dict, m: ColumnMapping, system_prompt: str, warns: list[Issue]) -> list[dict]:
    if fmt == "text":
        return [{"role": "assistant", "content": _text(row["text"], m.text, "text", warns)}]
    system = _text(row["system"], m.system, "system", warns, required=False) if "system" in row else ""
    system = system or system_prompt
    if fmt in ("messages", "sharegpt"):
        msgs = _turns(row["messages"], m.messages, warns)
        if system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system})
        return msgs
    if fmt == "alpaca":
        user = _text(row["instruction"], m.instruction, "instruction", warns)
        extra = _text(row["input"], m.input, "input", warns, required=False) if "input" in row else ""
        user = f"{user}\n\n{extra}" if extra else user
        answer = _text(row["output"], m.output, "output", warns)
    else:
        user = _text(row["prompt"], m.prompt, "prompt", warns)
        answer = _text(row["completion"], m.completion, "completion", warns)
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return ([{"role": "system", "content": system}] if system else []) + msgs


def _text(v: Any, column: str, part: str, warns: list[Issue], required: bool = True) -> str:
    """A cell as stripped text; numbers are converted with a warning, lists/dicts refused."""
    if _missing(v):
        s = ""
    elif isinstance(v, str):
        s = v.strip()
        bad = _SURROGATE.search(s)
        if bad:
            raise _Bad("invalid character", column, f"{part} holds a lone UTF-16 surrogate "
                                                    f"({_show(bad.group())}) at character {bad.start() + 1}, which "
                                                    f"cannot be saved as UTF-8 or trained on",
                       "fix that \\uXXXX escape in the file (\\ud800-\\udfff come in pairs), or delete the row")
    elif isinstance(v, (numbers.Number, np.bool_)) and not isinstance(v, complex):
        s = _num_str(v)
        warns.append(Issue(None, column, f"{part} is the number {s}, not text; it was used as the text '{s}'",
                           "put quotes around it in the file if that is what you meant", "warning",
                           kind="number as text"))
    else:
        raise _Bad("not text", column, f"{part} is a {_typename(v)}, not text",
                   f"write the {part} as plain text" + (" (or map this column as 'messages')"
                                                         if isinstance(v, (list, np.ndarray)) else ""))
    if required and not s:
        raise _Bad(f"empty {part}", column, f"{part} is empty", f"fill in the {part}, or delete the row")
    return s


def _turns(v: Any, column: str, warns: list[Issue]) -> list[dict]:
    """A messages cell -> validated turns: optional system, then user/assistant alternating."""
    shape = 'write them as a JSON list like [{"role": "user", "content": "..."}, {"role": "assistant", ...}]'
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise _Bad("empty messages", column, "messages are empty", "add the conversation, or delete the row")
        try:
            v = json.loads(s)  # CSV cells hold JSON text
        except RecursionError:
            raise _Bad("bad messages", column, f"messages are nested more than {MAX_DEPTH} lists/objects deep",
                       shape) from None
        except json.JSONDecodeError as e:
            try:
                v = ast.literal_eval(s)  # a pandas DataFrame with a list column saved with to_csv
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise _Bad("bad messages", column, f"messages are not valid JSON ({e.msg} at character {e.pos})",
                           shape) from None
        except ValueError:  # an integer past Python's digit limit
            digits = max((len(d) for d in re.findall(r"\d+", s)), default=0)
            raise _Bad("bad messages", column, f"messages hold a number of {digits} digits, more than the "
                                               f"{sys.get_int_max_str_digits() or 4300} Python reads",
                       "put quotes around it to keep it as text, or delete it") from None
    v = _as_list(v)
    if _missing(v) or (isinstance(v, list) and not v):
        raise _Bad("empty messages", column, "messages are empty", "add the conversation, or delete the row")
    if not isinstance(v, list):
        raise _Bad("messages not a list", column, f"messages are a {_typename(v)}, not a list of turns", shape)
    turns = []
    for n, t in enumerate(v, 1):
        if not isinstance(t, dict) or not ({"role", "from"} & t.keys()) or not ({"content", "value"} & t.keys()):
            raise _Bad("bad turn", column, f"turn {n} has no role or no content",
                       "give every turn a 'role' and a 'content' (ShareGPT: 'from' and 'value')")
        role = t["role"] if "role" in t else t["from"]
        norm = _ROLES.get(str(role).strip().lower())
        if norm is None:
            raise _Bad("unknown role", column, f"turn {n} has role '{_show(str(role))}'",
                       f"use one of {_ALLOWED_ROLES}")
        content = t["content"] if "content" in t else t["value"]
        if isinstance(content, (list, np.ndarray)):  # OpenAI content parts: [{"type": "text", "text": ...}]
            parts = list(content)
            if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                content = "".join(str(p.get("text", "")) for p in parts)
        try:
            text = _text(content, column, f"turn {n} ({norm})", warns, required=False)
        except _Bad as bad:
            bad.issue.kind = "bad turn"
            raise
        if not text:
            raise _Bad("empty message", column, f"turn {n} ({norm}) is empty",
                       "fill in the message, or delete the turn")
        turns.append({"role": norm, "content": text})
    lead = 1 if turns[0]["role"] == "system" else 0
    for j, t in enumerate(turns[lead:]):
        want = "user" if j % 2 == 0 else "assistant"
        if t["role"] != want:
            raise _Bad("wrong order", column, f"turn {lead + j + 1} is {t['role']} where {want} was expected",
                       "after an optional first system turn, turns must alternate user, assistant, user, ...")
    if len(turns) > lead and turns[-1]["role"] == "user":
        turns.pop()
        if len(turns) > lead:
            warns.append(Issue(None, column, f"the last turn ({len(turns) + 1}) is a user turn with no answer; "
                                             f"it was dropped", "add the assistant's answer, or leave it",
                               "warning", kind="trailing user turn"))
    if not any(t["role"] == "assistant" for t in turns):
        raise _Bad("no assistant turn", column, "there is no assistant turn to learn from",
                   "add the assistant's answer after the user turn")
    return turns


def _as_list(v: Any) -> Any:
    if isinstance(v, (np.ndarray, tuple)):  # Parquet list columns arrive as numpy arrays
        return [dict(t) if isinstance(t, dict) else t for t in list(v)]
    return v


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _num_str(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, float) and v.is_integer():  # 4 became 4.0 in a column with gaps
        return str(int(v))
    return str(v)


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _show(s: str) -> str:
    """Text safe to print or save: a lone surrogate shown as its escape, e.g. \\ud800."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _issue_line(i: Issue) -> str:
    where = ("the file" if i.row is None else f"row {i.row}") + (f", column '{i.column}'" if i.column else "")
    return f"{where}: {i.problem} ({i.fix})"


def split(examples: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval), the same for the same seed. random.Random(int) does not depend on PYTHONHASHSEED."""
    n = len(examples)
    if eval_fraction <= 0 or n < 2:
        return list(examples), []
    n_eval = min(max(1, round(n * eval_fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
