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
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import ColumnMapping, DataSettings

from . import tokens
from .read import MAX_DEPTH, ROWS_PER_CHUNK, DataError, Issue, _read, _typename, iter_tables

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


class _Counts:
    """What a report of examples read from a file counts: used examples, skipped rows and why (SFT and DPO data)."""
    examples: list
    issues: list

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


@dataclass
class DatasetReport(_Counts):
    path: str
    format: str
    mapping: ColumnMapping
    columns: list[str]
    n_rows: int
    examples: list[list[dict]]
    rows: list[int]
    issues: list[Issue]
    table: pd.DataFrame | None = field(default=None, repr=False)  # the raw cells as read (for a preview)

    def summary(self) -> str:
        return _summary(self.n_rows, self.format, self.n_used, self.n_skipped, self.skipped_reasons,
                        Counter(i.kind for i in self.issues if i.severity == "warning"))


@dataclass
class ScanReport:
    """What `scan_examples` found in a file it streamed: DatasetReport's counts and summary, without every
    example and issue. `issues` holds the first `keep_issues` of `n_issues`; `sample`/`sample_rows` the examples
    tokens.Reservoir picked (TOKEN_SAMPLE of them, or all when there are fewer) and their row numbers."""
    path: str
    format: str
    mapping: ColumnMapping
    columns: list[str]
    n_rows: int
    n_used: int
    n_skipped: int
    skipped_reasons: Counter
    warnings: Counter
    issues: list[Issue]
    n_issues: int
    sample: list[list[dict]]
    sample_rows: list[int]

    def summary(self) -> str:
        return _summary(self.n_rows, self.format, self.n_used, self.n_skipped, self.skipped_reasons, self.warnings)


def _summary(n_rows: int, fmt: str, n_used: int, n_skipped: int, skipped: Counter, warnings: Counter) -> str:
    head = f"{_n(n_rows, 'row')} read as {fmt}; "
    if n_skipped:
        why = ", ".join(f"{n} {k}" for k, n in skipped.most_common())
        head += f"{n_used} used, {n_skipped} skipped: {why}."
    else:
        head += f"all {n_used} used."
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
    df, rows, file_issues = _read(path)
    fmt, mapping = _resolve(df, format, columns or ColumnMapping(), name)
    tally = _Tally(file_issues, keep=None)
    examples, used_rows = [], []
    for rownum, msgs, row_issues in _examples([(df, rows)], fmt, mapping, system_prompt):
        tally.add(msgs, row_issues)
        if msgs is not None:
            examples.append(msgs)
            used_rows.append(rownum)
    df.attrs.update(rows=rows, issues=list(file_issues))
    report = DatasetReport(str(path), fmt, mapping, list(df.columns), len(rows), examples, used_rows, tally.issues,
                           df)
    tally.check(name, len(rows), skip_invalid)
    return report


def scan_examples(path: str | os.PathLike, format: str = "auto", columns: ColumnMapping | None = None,
                  system_prompt: str = "", skip_invalid: bool = True, sample: int | None = None,
                  keep_issues: int | None = None, rows_per_chunk: int = ROWS_PER_CHUNK) -> ScanReport:
    """read_examples' check of a file, streamed: the same rows used and skipped, the same issues and summary and
    the same DataErrors, with memory bounded by one chunk of `rows_per_chunk` rows (plus ~24 bytes a used row for
    finding duplicates) instead of ~10x the file. Keeps the first `keep_issues` issues (None: all) and a
    Reservoir sample of `sample` examples (default tokens.TOKEN_SAMPLE) for token statistics."""
    name = Path(path).name
    user = columns or ColumnMapping()
    k = tokens.TOKEN_SAMPLE if sample is None else sample
    report, all_columns = _scan(path, name, format, user, system_prompt, skip_invalid, k, keep_issues,
                                rows_per_chunk, None)
    if report is None:
        # JSON Lines whose later lines bring keys the first ones lack: a whole read gives every row all the keys
        # (the format can depend on them), so look again knowing them (~never: a file's lines share their keys)
        report, _ = _scan(path, name, format, user, system_prompt, skip_invalid, k, keep_issues, rows_per_chunk,
                          all_columns)
    assert report is not None
    return report


_DETECT_ROWS = 20  # _turn_style looks at the first 20 rows


def _scan(path: str | os.PathLike, name: str, format: str, user: ColumnMapping, system_prompt: str,
          skip_invalid: bool, k: int, keep: int | None, rows_per_chunk: int, columns: list[str] | None
          ) -> tuple[ScanReport | None, list[str]]:
    """One pass; (None, the file's columns) when they turned out not to be `columns` (first pass: None)."""
    chunks = iter_tables(path, rows_per_chunk)
    seen_cols: dict[str, None] = {}
    head, file_issues = [], []
    for df, rows, issues in chunks:
        file_issues += issues
        seen_cols.update(dict.fromkeys(df.columns))
        head.append((df, rows))
        if sum(len(r) for _, r in head) >= _DETECT_ROWS:
            break
    cols = columns or list(seen_cols)
    first = pd.concat([d for d, _ in head], ignore_index=True) if len(head) > 1 else head[0][0]
    first = first.reindex(columns=cols) if list(first.columns) != cols else first
    try:
        fmt, mapping = _resolve(first, format, user, name)
    except DataError:
        for df, _, _ in chunks:  # a whole read fails first on a bad line anywhere, then on the columns
            seen_cols.update(dict.fromkeys(df.columns))
        if list(seen_cols) != cols:
            return None, list(seen_cols)
        raise
    del first

    def aligned() -> Iterator[tuple[pd.DataFrame, list[int]]]:
        while head:  # handed on and let go, so the first chunks are not held to the end
            df, rows = head.pop(0)
            yield (df if list(df.columns) == cols else df.reindex(columns=cols)), rows
        for df, rows, _ in chunks:
            seen_cols.update(dict.fromkeys(df.columns))
            yield (df if list(df.columns) == cols else df.reindex(columns=cols)), rows
    tally = _Tally(file_issues, keep)
    res = tokens.Reservoir(k)
    for rownum, msgs, row_issues in _examples(aligned(), fmt, mapping, system_prompt):
        tally.add(msgs, row_issues)
        if msgs is not None and tally.n_used - 1 == res.next:
            res.put(tally.n_used - 1, (msgs, rownum))
    if list(seen_cols) != cols:
        return None, list(seen_cols)
    tally.check(name, tally.n_rows, skip_invalid)
    picked = res.items()
    return ScanReport(str(path), fmt, mapping, cols, tally.n_rows, tally.n_used, tally.n_skipped, tally.skipped,
                      tally.warned, tally.issues, tally.n_issues, [e for e, _ in picked], [r for _, r in picked]), cols


class _Tally:
    """Counts of what `_examples` yields, the issues (all, or the first `keep`), and the DataErrors read_examples
    has always raised: one place for both read_examples and scan_examples."""

    def __init__(self, file_issues: list[Issue], keep: int | None):
        self.issues: list[Issue] = list(file_issues)[:keep]
        self.keep = keep
        self.n_issues = len(file_issues)
        self.n_rows = self.n_used = self.n_skipped = 0
        self.skipped: Counter = Counter()
        self.warned: Counter = Counter()
        self.n_errors = 0  # errors other than duplicates
        self.first_errors: list[Issue] = []  # the first 3 of them
        self.first_error: Issue | None = None
        for i in file_issues:
            self._count(i)

    def add(self, msgs: list[dict] | None, issues: list[Issue] | tuple) -> None:
        self.n_rows += 1
        if msgs is not None:
            self.n_used += 1
        elif issues:
            self.n_skipped += 1  # a row is skipped for one error, and comes once
        for i in issues:
            self._count(i)
            self.n_issues += 1
            if self.keep is None or len(self.issues) < self.keep:
                self.issues.append(i)

    def _count(self, i: Issue) -> None:
        if i.severity == "warning":
            self.warned[i.kind] += 1
            return
        self.skipped[i.kind] += 1
        self.first_error = self.first_error or i
        if i.kind != "duplicate":
            self.n_errors += 1
            if len(self.first_errors) < 3:
                self.first_errors.append(i)

    def check(self, name: str, n_rows: int, skip_invalid: bool) -> None:
        if self.n_errors and not skip_invalid:
            first = "; ".join(_issue_line(i) for i in self.first_errors)
            more = f" (and {self.n_errors - 3} more)" if self.n_errors > 3 else ""
            raise DataError(f"{name}: {_n(self.n_errors, 'row')} of {n_rows} cannot be used: {first}{more}. Fix "
                            f"them, or turn on 'Skip bad rows' to train on the rest.")
        if not self.n_used:
            why = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
            raise DataError(f"{name}: nothing usable: {_n(n_rows, 'row')}, all skipped: {why}. First problem: "
                            f"{_issue_line(self.first_error)}.")


_BATCH = 2048  # rows validated before their duplicates are looked up together


def _examples(chunks: Iterable[tuple[pd.DataFrame, list[int]]], fmt: str, mapping: ColumnMapping,
              system_prompt: str) -> Iterator[tuple[int, list[dict] | None, list[Issue] | tuple]]:
    """THE per-row rules, for training (read_examples: one chunk, the whole table) and the CLI check (scan_examples:
    chunk by chunk) alike. Yields every row in file order: (row number, its messages, or None when it is skipped,
    and its issues)."""
    system_prompt = system_prompt.strip()
    earlier = _Digests()
    for df, rows in chunks:
        cells = {part: df[col].tolist() for part, col in mapping.used().items()}
        for start in range(0, len(rows), _BATCH):
            # a batch held as flat lists, no tuple or empty list a row: objects that live across a batch get
            # promoted to the collector's oldest generation, and full collections then cost ~25% of a streamed check
            got: list[list[dict] | Issue] = []  # messages, or the Issue that skips the row
            keys: list[bytes] = []  # of the rows with messages
            warned: dict[int, list[Issue]] = {}
            for i in range(start, min(start + _BATCH, len(rows))):
                warns: list[Issue] = []
                try:
                    row = {part: vals[i] for part, vals in cells.items()}
                    msgs = _row_messages(fmt, row, mapping, system_prompt, warns)
                    if sum(len(m["content"]) for m in msgs) > MAX_ROW_CHARS:
                        raise _Bad("row too long", None, f"row is over {MAX_ROW_CHARS:,} characters",
                                   "split it into shorter examples or delete it; it would be cut at the max length "
                                   "anyway")
                except _Bad as bad:
                    bad.issue.row = rows[i]
                    got.append(bad.issue)
                    continue
                if warns:
                    for w in warns:
                        w.row = rows[i]
                    warned[i] = warns
                got.append(msgs)
                keys.append(_digest(msgs))
            firsts = earlier.find(keys)
            here: dict[bytes, int] = {}
            k = 0
            for i, out in enumerate(got, start):
                if isinstance(out, Issue):
                    yield rows[i], None, [out]
                    continue
                key, first = keys[k], firsts[k]
                k += 1
                first = first or here.get(key)
                if first:
                    bad = _Bad("duplicate", None, f"same example as row {first}",
                               "delete one copy; duplicates would be trained on twice")
                    bad.issue.row = rows[i]
                    yield rows[i], None, [bad.issue]  # its warnings go with it, as they always did
                else:
                    here[key] = rows[i]
                    yield rows[i], out, warned.get(i, ())
            earlier.add(here)


def _digest(msgs: list[dict]) -> bytes:
    """16 bytes that differ when the turns do: a digest, not the text (the full JSON of every row doubled the
    memory of a big file). "role:length:content" per turn reads back one way only (roles hold no ':'), and takes
    1 us a row where json.dumps took 3 (a sixth of checking a 200 MB file)."""
    h = hashlib.blake2b(digest_size=16)
    for m in msgs:
        c = m["content"]
        h.update(f"{m['role']}:{len(c)}:{c}".encode("utf-8"))
    return h.digest()


_RUN_CAP = 1 << 20  # digests in one sorted run (24 MB); a 5 M-row file is looked up in ~13 runs


class _Digests:
    """The 16-byte digests of the examples kept so far and the row each came from, to name a duplicate's first
    copy: sorted numpy runs, 24 bytes a row. A dict of bytes -> int took ~130 bytes a row (230 MB for the 1.8 M
    rows of a 200 MB CSV, more than all the rest of a streamed check)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (first 8 bytes, sorted; last 8; row)

    def find(self, keys: list[bytes]) -> list[int]:
        """The row of each key's first copy, or 0."""
        out = np.zeros(len(keys), dtype=np.int64)
        if keys and self._runs:
            q = np.frombuffer(b"".join(keys), dtype=np.uint64).reshape(-1, 2)
            for hi, lo, row in self._runs:
                pos = np.searchsorted(hi, q[:, 0])
                at = np.minimum(pos, len(hi) - 1)
                same = (pos < len(hi)) & (hi[at] == q[:, 0])
                hit = same & (lo[at] == q[:, 1])
                out[hit] = row[at[hit]]
                for j in np.flatnonzero(same & ~hit):  # equal first halves, different second (~never): walk on
                    p = pos[j]
                    while p < len(hi) and hi[p] == q[j, 0]:
                        if lo[p] == q[j, 1]:
                            out[j] = row[p]
                            break
                        p += 1
        return out.tolist()

    def add(self, found: dict[bytes, int]) -> None:
        if not found:
            return
        q = np.frombuffer(b"".join(found), dtype=np.uint64).reshape(-1, 2)
        rows = np.fromiter(found.values(), dtype=np.int64, count=len(found))
        order = np.argsort(q[:, 0], kind="stable")
        self._runs.append((q[order, 0], q[order, 1], rows[order]))
        # merge while the run before is not over twice as long (run lengths halve: ~log2(n/4096) runs to look in,
        # each digest copied ~log2 times; timsort merges two sorted runs in one pass), up to _RUN_CAP digests: a
        # merge of everything would hold the store ~3 times over at its end
        while (len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0])
               and len(self._runs[-2][0]) + len(self._runs[-1][0]) <= _RUN_CAP):
            a, b = self._runs.pop(), self._runs.pop()
            order = np.argsort(np.concatenate([b[0], a[0]]), kind="stable")
            self._runs.append(tuple(np.concatenate([b[j], a[j]])[order] for j in range(3)))


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
        norm, content = _turn(t, n, column)
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


def _turn(t: Any, n: int, column: str, where: str = "") -> tuple[str, Any]:
    """Turn n of a conversation -> (role, content): 'role'/'content' or ShareGPT's 'from'/'value', the role
    normalised, OpenAI content parts joined. `where` prefixes the messages ("chosen: " in a preference cell).
    The content is not checked yet: the caller reads it as text under its own label."""
    if not isinstance(t, dict) or not ({"role", "from"} & t.keys()) or not ({"content", "value"} & t.keys()):
        raise _Bad("bad turn", column, f"{where}turn {n} has no role or no content",
                   "give every turn a 'role' and a 'content' (ShareGPT: 'from' and 'value')")
    role = t["role"] if "role" in t else t["from"]
    norm = _ROLES.get(str(role).strip().lower())
    if norm is None:
        raise _Bad("unknown role", column, f"{where}turn {n} has role '{_show(str(role))}'",
                   f"use one of {_ALLOWED_ROLES}")
    content = t["content"] if "content" in t else t["value"]
    if isinstance(content, (list, np.ndarray)):  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = list(content)
        if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
            content = "".join(str(p.get("text", "")) for p in parts)
    return norm, content


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
