"""Reading a user's file: CSV/TSV, JSON, JSON Lines, Parquet; encodings; and the run folder's own JSONL.

Read-only on the user's file. No transformers, no torch.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")

# Caps checked before any row is read (Parquet: from its footer). Reading costs 10-17x the text in memory (raw
# bytes, the decoded text, a Python object per cell, chat messages; a 200 MB CSV of 1.9 M rows took 2.15 GB in
# the CLI, 3.5 GB in the UI), so 500 MB is already 5-9 GB of RAM. A QLoRA fine-tune uses thousands to ~100k
# examples: data past either cap is better split or sampled before it is loaded here.
MAX_DATA_BYTES = 500_000_000  # CSV/JSON/JSONL: bytes on disk; Parquet: bytes once uncompressed
MAX_ROWS = 5_000_000
# No format read here is compressed as a whole file (.gz/.zst are refused by extension); Parquet's pages are the
# only decompression, and MAX_DATA_BYTES bounds them (footer first, then counted while the batches are read).
_PARQUET_BATCH = 256  # rows per batch: the in-memory count is checked at least this often
# How deep lists/objects may nest before a parse error names the spot (chat data needs 3 or 4 levels).
MAX_DEPTH = 100

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
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{name} is empty. Choose the file that holds your examples.")
    issues: list[Issue] = []
    if ext in (".parquet", ".pq"):
        df = _read_parquet(p, name)
        rows = list(range(1, len(df) + 1))
    else:
        if size > MAX_DATA_BYTES:
            raise _too_big(name, f"it is {_size(size)}", f"{_size(MAX_DATA_BYTES)} of text")
        raw = p.read_bytes()
        if not raw.strip():
            raise DataError(f"{name} is empty. Choose the file that holds your examples.")
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


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def _too_big(name: str, found: str, cap: str) -> DataError:
    return DataError(f"{name} is too big to check here: {found}, and the cap is {cap}. Split it into smaller files, "
                     f"or take a sample (e.g. the first 100,000 rows) and load that; a QLoRA fine-tune rarely "
                     f"needs more.")


def _too_many_rows(name: str, found: str) -> DataError:
    return _too_big(name, f"it has {found} rows", f"{MAX_ROWS:,} rows")


def _read_parquet(p: Path, name: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> DataError:
        return DataError(f"{name} is not a readable Parquet file ({e}). Export it again, or save it as "
                         f".jsonl or .csv.")
    try:
        f = pq.ParquetFile(p)  # reads the footer only
        meta = f.metadata
        # a row group's total_byte_size is its columns' size uncompressed (dictionary pages count once)
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as e:  # pyarrow raises a zoo of types for damaged files
        raise unreadable(e) from None
    if meta.num_rows > MAX_ROWS:
        raise _too_many_rows(name, f"{meta.num_rows:,}")
    if size > MAX_DATA_BYTES:
        raise _too_big(name, f"its {meta.num_rows:,} rows are {_size(size)} of data once uncompressed "
                             f"({_size(p.stat().st_size)} on disk)", _size(MAX_DATA_BYTES))
    batches, held = [], 0
    try:
        with f:
            # batch by batch, so a dictionary-encoded value repeated in every row (small in the footer, big in
            # memory) is stopped at the cap instead of expanded whole
            for b in f.iter_batches(batch_size=_PARQUET_BATCH):
                held += b.nbytes
                if held > MAX_DATA_BYTES:
                    raise _too_big(name, f"its {meta.num_rows:,} rows are more than {_size(MAX_DATA_BYTES)} of data "
                                         f"once read (the file stores repeated values once)", _size(MAX_DATA_BYTES))
                batches.append(b)
            table = pa.Table.from_batches(batches, schema=f.schema_arrow)
        del batches
        return table.to_pandas()  # what pd.read_parquet does with pyarrow >= 19
    except DataError:
        raise
    except Exception as e:
        raise unreadable(e) from None


def _where(text: str, pos: int, first_line: int = 1) -> str:
    """'line L, column C' (1-based) of a character offset."""
    line = text.count("\n", 0, pos) + first_line
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _deep_spot(text: str) -> int:
    """Offset of the first bracket that opens level MAX_DEPTH + 1 (strings skipped), or 0."""
    depth = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif c in ("]", "}"):
            depth -= 1
    return 0


def _long_number(text: str) -> tuple[int, int]:
    """(offset, digits) of the first number outside strings longer than Python's int limit, or (0, 0)."""
    limit = sys.get_int_max_str_digits() or 4300
    for m in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|\d{%d,}' % (limit + 1), text):
        if not m.group().startswith('"'):
            return m.start(), len(m.group())
    return 0, 0


def _json_loads(text: str, name: str, first_line: int = 1) -> Any:
    """json.loads; nesting past Python's recursion limit and numbers past its int-digits limit become a
    DataError naming the line and column (`first_line`: the text's first line in the file). JSONDecodeError
    passes through."""
    try:
        return json.loads(text)
    except RecursionError:
        spot = _where(text, _deep_spot(text), first_line)
        raise DataError(f"{name}: the data is nested more than {MAX_DEPTH} lists/objects deep at {spot}. "
                        f"Chat data needs 3 or 4 levels: fix or delete that value.") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        pos, digits = _long_number(text)
        if not digits:
            raise DataError(f"{name}: line {first_line} cannot be read as JSON ({e}). Fix that value, or save "
                            f"the data again.") from None
        raise DataError(f"{name}: {_where(text, pos, first_line)} holds a number of {digits} digits, more than the "
                        f"{sys.get_int_max_str_digits() or 4300} Python reads. Put quotes around it to keep it as "
                        f"text, or delete it.") from None


def _decode(raw: bytes, name: str) -> tuple[str, list[Issue]]:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        try:
            return raw.decode("utf-16"), []
        except UnicodeDecodeError as e:
            line = raw[:e.start].decode("utf-16", errors="replace").count("\n") + 1
            raise DataError(f"{name} is UTF-16 text with a damaged character on line {line} (a lone surrogate). "
                            f"Fix that line, or save the file as UTF-8 and load it again.") from None
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
                if len(records) == MAX_ROWS:
                    raise _too_many_rows(name, f"more than {MAX_ROWS:,}")
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
        obj = _json_loads(text, name)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json, as `df.to_json(lines=True)` does
            try:
                return _read_jsonl(text, name)
            except DataError:
                pass
        raise DataError(f"{name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. Fix that "
                        f"spot (a missing comma or quote is typical) or save the data as JSON Lines.") from None
    records = _json_records(obj, name)
    if len(records) > MAX_ROWS:
        raise _too_many_rows(name, f"{len(records):,}")
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
            obj = _json_loads(line, name, first_line=n)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}, line {n} is not valid JSON ({e.msg} at column {e.colno}). Each line "
                            f"must be one complete JSON object; fix or delete that line.") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}, line {n} is a {_typename(obj)}, not a JSON object. Each line must look "
                            f'like {{"messages": [...]}} or {{"instruction": "...", "output": "..."}}.')
        if len(records) == MAX_ROWS:
            raise _too_many_rows(name, f"more than {MAX_ROWS:,}")
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
