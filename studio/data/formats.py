"""SFT examples from a user's file: `read_examples` (the whole file, for training) and `scan_examples` (streamed,
for `studio data`) run the same per-row rules (`cells`) on the format `detect` resolved, refuse duplicates, and
count what was used and skipped and why (`Counts`, `Tally`: the preference readers count with them too) into a
DatasetReport or ScanReport; `split` holds out the eval examples. No transformers, no torch.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ColumnMapping, DataSettings

from . import tokens
from .cells import MAX_ROW_CHARS, Bad, row_messages
from .detect import resolve_format
from .issues import DataError, Issue, plural
from .limits import ROWS_PER_CHUNK
from .read import iter_tables, read_cells

class Counts:
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
class DatasetReport(Counts):
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
    head = f"{plural(n_rows, 'row')} read as {fmt}; "
    if n_skipped:
        why = ", ".join(f"{n} {k}" for k, n in skipped.most_common())
        head += f"{n_used} used, {n_skipped} skipped: {why}."
    else:
        head += f"all {n_used} used."
    if warnings:
        head += " Warnings: " + ", ".join(f"{n} {k}" for k, n in warnings.most_common()) + "."
    return head



def read_examples(path: str | os.PathLike, format: str = "auto", columns: ColumnMapping | None = None,
                  system_prompt: str = "", skip_invalid: bool = True) -> DatasetReport:
    """Read, detect, normalise and validate. With skip_invalid=False any bad row (duplicates aside:
    dropping one copy loses nothing) raises DataError; otherwise bad rows are skipped and reported."""
    name = Path(path).name
    df, rows, file_issues = read_cells(path)
    fmt, mapping = resolve_format(df, format, columns or ColumnMapping(), name)
    tally = Tally(file_issues, keep=None)
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


_DETECT_ROWS = 20  # detect._turn_style looks at the first 20 rows


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
        fmt, mapping = resolve_format(first, format, user, name)
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
    tally = Tally(file_issues, keep)
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


class Tally:
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
            raise DataError(f"{name}: {plural(self.n_errors, 'row')} of {n_rows} cannot be used: {first}{more}. Fix "
                            f"them, or turn on 'Skip bad rows' to train on the rest.")
        if not self.n_used:
            why = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
            raise DataError(f"{name}: nothing usable: {plural(n_rows, 'row')}, all skipped: {why}. First problem: "
                            f"{_issue_line(self.first_error)}.")


_BATCH = 2048  # rows validated before their duplicates are looked up together


def _examples(chunks: Iterable[tuple[pd.DataFrame, list[int]]], fmt: str, mapping: ColumnMapping,
              system_prompt: str) -> Iterator[tuple[int, list[dict] | None, list[Issue] | tuple]]:
    """THE per-row rules, for training (read_examples: one chunk, the whole table) and the CLI check (scan_examples:
    chunk by chunk) alike. Yields every row in file order: (row number, its messages, or None when it is skipped,
    and its issues)."""
    system_prompt = system_prompt.strip()
    earlier = _Digests()
    roles = {col: part for part, col in mapping.used().items() if col != part}  # e.g. answer -> output
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
                    msgs = row_messages(fmt, row, mapping, system_prompt, warns)
                    if sum(len(m["content"]) for m in msgs) > MAX_ROW_CHARS:
                        raise Bad("row too long", None, f"row is over {MAX_ROW_CHARS:,} characters",
                                  "split it into shorter examples or delete it; it would be cut at the max length "
                                  "anyway")
                except Bad as bad:
                    bad.issue.row = rows[i]
                    got.append(_in_users_words(bad.issue, roles))
                    continue
                if warns:
                    for w in warns:
                        w.row = rows[i]
                        _in_users_words(w, roles)
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
                    bad = Bad("duplicate", None, f"same example as row {first}",
                              "delete one copy; duplicates would be trained on twice")
                    bad.issue.row = rows[i]
                    yield rows[i], None, [bad.issue]  # its warnings go with it, as they always did
                else:
                    here[key] = rows[i]
                    yield rows[i], out, warned.get(i, ())
            earlier.add(here)


def _in_users_words(issue: Issue, roles: dict[str, str]) -> Issue:
    """`issue` worded with the user's column name where the rules named the role it is read as: "'answer' is
    empty - fill in 'answer'", not "output is empty - fill in the output" for a CSV whose answers are in `answer`."""
    part = roles.get(issue.column or "")
    if part:
        name = f"'{issue.column[:60]}'"  # a user's column name, bounded before it is echoed
        for attr in ("problem", "fix", "kind"):
            text = getattr(issue, attr)
            # one pass, with a function: the name is the user's text ("my output" must not be rewritten again, and
            # "\\1" in it is no group reference)
            setattr(issue, attr, re.sub(rf"\b(?:the )?{part}( are)?\b",
                                        lambda m: name + (" is" if m.group(1) else ""), text))
    return issue


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
