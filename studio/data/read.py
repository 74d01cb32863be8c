"""Reading a user's file: CSV/TSV, JSON, JSON Lines, Parquet; encodings; and the run folder's own JSONL.

Read-only on the user's file. No transformers, no torch.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")

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


def _typename(v: Any) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(v, dict):
        return "object (dict)"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


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
