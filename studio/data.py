"""Dataset intake: read a user's file, work out its format, turn every row into chat messages.

The trainer only ever sees normalised examples, `[{"role": "system"|"user"|"assistant", "content": str}, ...]`
ending with an assistant turn, written to `runs/<id>/dataset.jsonl` by `write_jsonl`. Every row that cannot
become one is reported as an `Issue` naming the row, the column and what to do; the user's file is only read.

torch/transformers are never imported here: `tokenize_messages` and `token_stats` take a tokenizer object.
"""
from __future__ import annotations

import ast
import codecs
import csv
import io
import json
import math
import numbers
import os
import random
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio.config import ColumnMapping, DataConfig

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")
FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
# ~25k tokens: far past any sensible max_length, so such a row is almost surely a paste accident.
MAX_ROW_CHARS = 100_000

# ChatML as SmolLM2/Qwen write it; used only when a tokenizer ships no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Role names accepted in a turn -> the normalised role (OpenAI, ShareGPT and Gemma spellings).
_ROLES = {"system": "system", "user": "user", "human": "user",
          "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
_ALLOWED_ROLES = "system, user, assistant (ShareGPT: system, human, gpt)"

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


# --- reading ----------------------------------------------------------------------------------

def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The file as a DataFrame of raw cells. Read-only; warnings (e.g. a non-UTF-8 file read as
    Windows-1252) are in `df.attrs["issues"]`, source row numbers in `df.attrs["rows"]`."""
    df, rows, issues = _read(path)
    df.attrs.update(rows=rows, issues=issues)  # only here: pandas deep-copies attrs on every operation
    return df


def _read(path: str | os.PathLike) -> tuple[pd.DataFrame, list[int], list[Issue]]:
    p = Path(path)
    name = p.name
    if not p.exists():
        raise DataError(f"{name}: file not found at {p}. Check the path, or upload the file again.")
    if not p.is_file():
        raise DataError(f"{name} is a folder, not a file: choose one {', '.join(EXTENSIONS)} file.")
    ext = p.suffix.lower()
    if ext in (".xlsx", ".xls", ".ods"):
        raise DataError(f"{name} is a spreadsheet: save it as CSV first (Excel: File > Save As > 'CSV UTF-8').")
    if ext not in EXTENSIONS:
        raise DataError(f"{name}: files ending in '{ext or '(nothing)'}' are not supported. Save the data as "
                        f"{', '.join(EXTENSIONS)} (one example per row or line).")
    raw = p.read_bytes()
    if not raw.strip():
        raise DataError(f"{name} is empty. Choose the file that holds your examples.")
    issues: list[Issue] = []
    if ext in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(io.BytesIO(raw))
        except Exception as e:  # pyarrow raises a zoo of types for damaged files
            raise DataError(f"{name} is not a readable Parquet file ({e}). Export it again, or save it as "
                            f".jsonl or .csv.") from None
        rows = list(range(1, len(df) + 1))
    else:
        text, issues = _decode(raw, name)
        if not text.strip():
            raise DataError(f"{name} is empty. Choose the file that holds your examples.")
        if ext in (".csv", ".tsv"):
            df, rows = _read_csv(text, name, "\t" if ext == ".tsv" else ",")
        elif ext == ".json" or (text.lstrip().startswith("[") and ext in (".jsonl", ".ndjson")):
            df, rows = _read_json(text, name)
        else:
            df, rows = _read_jsonl(text, name)
    if len(df) == 0:
        cols = ", ".join(map(str, df.columns))
        raise DataError(f"{name} has no rows" + (f" (only the header: {cols})" if cols else "")
                        + ". Add at least one example per row.")
    df.columns = [str(c) for c in df.columns]
    df.attrs["source"] = name
    return df, rows, issues


def _decode(raw: bytes, name: str) -> tuple[str, list[Issue]]:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        return raw.decode("utf-16"), []
    if b"\x00" in raw:
        raise DataError(f"{name} contains NUL bytes, so it is not a text file. Export it as UTF-8 "
                        f"CSV or JSON Lines.")
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        where = f"byte 0x{raw[e.start]:02X} on line {line}"
    try:
        # Windows-1252 is what Excel writes for "CSV (Comma delimited)" in western locales.
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        raise DataError(f"{name} is not UTF-8 text (first bad {where}). Save it with UTF-8 encoding (Excel: "
                        f"Save As > 'CSV UTF-8'; editors: Save with Encoding > UTF-8) and load it again.") from None
    return text, [Issue(None, None, f"the file is not UTF-8 (first odd {where}); it was read as Windows-1252, "
                                    f"so accented letters may be wrong",
                        "save the file as UTF-8 to be sure", "warning", kind="not UTF-8")]


def _read_csv(text: str, name: str, sep: str) -> tuple[pd.DataFrame, list[int]]:
    first = text.split("\n", 1)[0]
    if sep == "," and "," not in first and ";" in first:
        sep = ";"  # Excel in locales that write decimal commas
    # csv, not pandas: pandas silently turns an extra field in every row into an index column.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long row is a row issue, not a crash
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    records, rows, header = [], [], None
    start = 1
    try:
        for rec in reader:
            if header is None:
                header = _unique_names([h.strip() for h in rec])
            elif any(f.strip() for f in rec):
                n = len(rows) + 1  # data row number; blank rows count, as in a spreadsheet
                if len(rec) > len(header) and any(f.strip() for f in rec[len(header):]):
                    raise DataError(
                        f"{name}: row {n} (line {start}) has {len(rec)} fields but the header has "
                        f"{len(header)}. Put double quotes around fields that contain '{sep}', quotes or "
                        f"line breaks (spreadsheet programs do this when exporting CSV).")
                records.append(rec[:len(header)] + [""] * (len(header) - len(rec)))
                rows.append(n)
            else:
                rows.append(-1)  # blank line: counts as a row number, holds no example
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{name} is not valid CSV: {e} in the row starting on line {start}. A quote inside a "
                        f"field must be doubled (\"\") and the whole field quoted.") from None
    rows = [r for r in rows if r > 0]
    return pd.DataFrame(records, columns=header or [], dtype=object), rows


def _unique_names(names: list[str]) -> list[str]:
    """'output', 'output' -> 'output', 'output.1' (as pandas does), so every column can be picked."""
    seen: Counter = Counter()
    out = []
    for n in names:
        out.append(f"{n}.{seen[n]}" if seen[n] else n)
        seen[n] += 1
    return out


def _read_json(text: str, name: str) -> tuple[pd.DataFrame, list[int]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json, as `df.to_json(lines=True)` does
            try:
                return _read_jsonl(text, name)
            except DataError:
                pass
        raise DataError(f"{name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. Fix that "
                        f"spot (a missing comma or quote is typical) or save the data as JSON Lines.") from None
    records = _json_records(obj, name)
    return pd.DataFrame(records, dtype=object), list(range(1, len(records) + 1))


def _json_records(obj: Any, name: str) -> list[dict]:
    shape = 'a list of objects like [{"instruction": "...", "output": "..."}, ...]'
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:  # {"data": [...]} or {"version": 1, "train": [...]}
            obj = lists[0]
        elif obj and all(isinstance(v, list) for v in obj.values()):  # columns: {"instruction": [...], ...}
            lengths = {len(v) for v in obj.values()}
            if len(lengths) > 1:
                raise DataError(f"{name}: its columns have different lengths ({sorted(lengths)}). Every "
                                f"column must have one value per example.")
            keys = list(obj)
            obj = [dict(zip(keys, vals)) for vals in zip(*obj.values())]
        elif obj and all(isinstance(v, dict) for v in obj.values()):
            inner = set().union(*(v.keys() for v in obj.values()))
            if all(k.isdigit() for k in inner) and not all(k.isdigit() for k in obj):
                # pandas' default to_json: {"column": {"0": value, ...}}
                obj = pd.DataFrame(obj).to_dict("records")
            else:  # records keyed by id: {"id1": {"instruction": ...}, ...}
                obj = list(obj.values())
        else:
            raise DataError(f"{name}: expected {shape}, but the top level is an object with keys "
                            f"{', '.join(list(map(str, obj))[:8])}.")
    if not isinstance(obj, list):
        raise DataError(f"{name}: expected {shape}, but the file holds a single {_typename(obj)}.")
    for i, r in enumerate(obj, 1):
        if not isinstance(r, dict):
            raise DataError(f"{name}: item {i} is a {_typename(r)}; expected {shape}.")
    return obj


def _read_jsonl(text: str, name: str) -> tuple[pd.DataFrame, list[int]]:
    records, rows = [], []
    # split on "\n" only: str.splitlines would also cut at U+2028, which JSON allows inside strings
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}, line {n} is not valid JSON ({e.msg} at column {e.colno}). Each line "
                            f"must be one complete JSON object; fix or delete that line.") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}, line {n} is a {_typename(obj)}, not a JSON object. Each line must look "
                            f'like {{"messages": [...]}} or {{"instruction": "...", "output": "..."}}.')
        records.append(obj)
        rows.append(n)
    return pd.DataFrame(records, dtype=object), rows


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
        except (ValueError, TypeError):
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


def load_dataset(path: str | os.PathLike, format: str = "auto", columns: ColumnMapping | None = None,
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
            key = json.dumps(msgs, ensure_ascii=False)
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
    report = DatasetReport(str(path), fmt, mapping, list(df.columns), len(rows), examples, used_rows, issues)
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


def load_from_config(data_cfg: DataConfig) -> DatasetReport:
    return load_dataset(data_cfg.path, data_cfg.format, data_cfg.columns, data_cfg.system_prompt,
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
        except json.JSONDecodeError as e:
            try:
                v = ast.literal_eval(s)  # a pandas DataFrame with a list column saved with to_csv
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise _Bad("bad messages", column, f"messages are not valid JSON ({e.msg} at character {e.pos})",
                           shape) from None
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
            raise _Bad("unknown role", column, f"turn {n} has role '{role}'", f"use one of {_ALLOWED_ROLES}")
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


def _typename(v: Any) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(v, dict):
        return "object (dict)"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _issue_line(i: Issue) -> str:
    where = f"row {i.row}" + (f", column '{i.column}'" if i.column else "")
    return f"{where}: {i.problem} ({i.fix})"


# --- tokenisation -----------------------------------------------------------------------------

def tokenize_messages(messages: list[dict], tokenizer: Any, max_length: int) -> dict:
    """{"input_ids", "assistant_masks"} under the tokenizer's chat template, cut at max_length.

    The mask is 1 on the content of every assistant turn and on the end-of-turn token closing it, so
    the model learns the answers and when to stop, never the prompts."""
    ids, mask = _tokenize_full(messages, tokenizer)
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def _tokenize_full(messages: list[dict], tokenizer: Any) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    if len(messages) == 1 and messages[0]["role"] == "assistant":  # "text" format: learn all of it
        ids = list(tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"])
        ids += [eos] if eos is not None else []
        return ids, [1] * len(ids)
    template = None if getattr(tokenizer, "chat_template", None) else CHATML_TEMPLATE

    def render(msgs: list[dict], gen: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                             chat_template=template)

    try:
        full = render(messages)
    except Exception:
        if messages[0]["role"] != "system" or len(messages) < 2:
            raise
        # Templates such as Gemma's refuse a system turn: fold it into the first user turn instead.
        first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [first] + messages[2:]
        full = render(messages)
    enders = sorted(_special_tokens(tokenizer) | {"<|im_end|>"}, key=len, reverse=True)
    spans, pos, closed = [], 0, True
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:i], gen=True)
        hint = len(before) if full.startswith(before) else pos
        start = full.find(msg["content"], max(hint, pos))
        if start < 0:
            start = full.find(msg["content"], pos)
        if start < 0:  # the template rewrote the content; nothing safe to mark
            continue
        end = start + len(msg["content"])
        gap = len(full[end:]) - len(full[end:].lstrip())
        closer = next((t for t in enders if full.startswith(t, end + gap)), None)
        closed = closer is not None
        if closed:
            end += gap + len(closer)
        spans.append((start, end))
        pos = end
    ids, mask = _mark_spans(full, spans, tokenizer)
    if not closed and eos is not None:  # template leaves the final answer open: add eos so it learns to stop
        ids.append(eos)
        mask.append(1)
    return ids, mask


def _mark_spans(text: str, spans: list[tuple[int, int]], tokenizer: Any) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [int(any(s < e2 and e > s2 for s2, e2 in spans)) for s, e in enc["offset_mapping"]]
        return ids, mask
    # slow tokenizers have no offsets: tokenize the pieces between span edges separately
    ids, mask, cut = [], [], 0
    for s, e in spans + [(len(text), len(text))]:
        for piece, flag in ((text[cut:s], 0), (text[s:e], 1)):
            if piece:
                toks = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += toks
                mask += [flag] * len(toks)
        cut = e
    return ids, mask


def _special_tokens(tokenizer: Any) -> set[str]:
    toks = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(t, "special", False):
            toks.add(str(t.content))
    if tokenizer.eos_token:
        toks.add(tokenizer.eos_token)
    return {t for t in toks if t}


@dataclass
class TokenStats:
    lengths: list[int]        # tokens per example before truncation
    trained_tokens: int       # assistant tokens left after truncation (what the loss sees)
    total_tokens: int         # all tokens after truncation
    max_length: int
    n_over: int               # examples longer than max_length (they get cut)
    pct_over: float
    p50: int
    p95: int
    max: int
    n_no_target: int = 0      # examples whose answer is cut away entirely: they teach nothing

    def histogram(self, bins: int = 30) -> tuple[list[int], list[float]]:
        counts, edges = np.histogram(self.lengths or [0], bins=bins)
        return counts.tolist(), edges.tolist()


def token_stats(examples: list[list[dict]], tokenizer: Any, max_length: int) -> TokenStats:
    lengths, trained, total, no_target = [], 0, 0, 0
    for msgs in examples:
        ids, mask = _tokenize_full(msgs, tokenizer)
        lengths.append(len(ids))
        kept = sum(mask[:max_length])
        trained += kept
        total += min(len(ids), max_length)
        no_target += kept == 0
    n_over = sum(n > max_length for n in lengths)
    arr = np.array(lengths or [0])
    return TokenStats(lengths, trained, total, max_length, n_over, 100.0 * n_over / max(len(lengths), 1),
                      int(np.percentile(arr, 50)), int(np.percentile(arr, 95)), int(arr.max()), no_target)


# --- split and run-folder files ---------------------------------------------------------------

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


def write_jsonl(examples: list[list[dict]], path: str | os.PathLike) -> Path:
    """One {"messages": [...]} per line; written to a temp file and renamed, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        for msgs in examples:
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[list[dict]]:
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line)["messages"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path.name}, line {n} is not a {{\"messages\": [...]}} line ({e}). This file is "
                            f"written by QLoRA Studio; create the run again to rewrite it.") from None
    return out


__all__ = ["DataError", "Issue", "DatasetReport", "TokenStats", "read_table", "detect_format", "load_dataset",
           "load_from_config", "tokenize_messages", "token_stats", "split", "write_jsonl", "read_jsonl",
           "CHATML_TEMPLATE", "EXTENSIONS", "FORMATS", "MAX_ROW_CHARS"]
