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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")

# Caps checked before any row is read (Parquet: from its footer). Reading whole costs 10-17x the text in memory
# (raw bytes, the decoded text, a Python object per cell, chat messages; a 200 MB CSV of 1.9 M rows took 3.5 GB in
# the UI), so 500 MB is already 5-9 GB of RAM. A QLoRA fine-tune uses thousands to ~100k examples: data past either
# cap is better split or sampled before it is loaded here. `studio data` streams (iter_tables) in ~80 MB, under
# the same caps so that it accepts and refuses the files training does.
MAX_DATA_BYTES = 500_000_000  # CSV/JSON/JSONL: bytes on disk; Parquet: bytes once uncompressed
MAX_ROWS = 5_000_000
# No format read here is compressed as a whole file (.gz/.zst are refused by extension); Parquet's pages are the
# only decompression, and MAX_DATA_BYTES bounds them (footer first, then counted while the batches are read).
_PARQUET_BATCH = 256  # rows per batch: the in-memory count is checked at least this often
# How deep lists/objects may nest before a parse error names the spot (chat data needs 3 or 4 levels).
MAX_DEPTH = 100
# iter_tables: a chunk ends at this many rows or this many characters of cells, whichever comes first (10,000 rows
# of a typical 110-byte CSV row are ~1 MB of text, ~10 MB as Python objects; the character cap bounds long rows).
ROWS_PER_CHUNK = 10_000
_CHUNK_CHARS = 8_000_000
_BLOCK = 1 << 20  # bytes (or characters) read at a time while streaming a text file

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
    p, name, ext, _ = _check_file(path)
    issues: list[Issue] = []
    if ext in (".parquet", ".pq"):
        df = _read_parquet(p, name)
        rows = list(range(1, len(df) + 1))
    else:
        raw = p.read_bytes()
        text, issues = _decode(raw, name)
        if ext in (".csv", ".tsv"):
            df, rows = _read_csv(text, name, "\t" if ext == ".tsv" else ",")
        elif ext == ".json" or (text.lstrip().startswith("[") and ext in (".jsonl", ".ndjson")):
            df, rows = _read_json(text, name)
        else:
            df, rows = _read_jsonl(text, name)
    if len(df) == 0:
        raise _no_rows(name, df.columns)
    df.columns = [str(c) for c in df.columns]
    df.attrs["source"] = name
    return df, rows, issues


def iter_tables(path: str | os.PathLike, rows_per_chunk: int = ROWS_PER_CHUNK
                ) -> Iterator[tuple[pd.DataFrame, list[int], list[Issue]]]:
    """The file as `_read` reads it, in pieces: (DataFrame of at most `rows_per_chunk` rows, their row numbers, the
    file's own issues with the first piece only). The same checks, caps, errors and cells as one `_read`, read as
    it goes, so memory stays ~ one piece whatever the file's size. A DataError can come at any piece (the first
    bad line); the caller must not act on the rows before the end. JSON Lines pieces hold the keys their own rows
    have (a whole read gives every row the keys of all); CSV and Parquet pieces all have the same columns."""
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be 1 or more, not {rows_per_chunk}")
    p, name, ext, _ = _check_file(path)
    n = 0
    if ext in (".parquet", ".pq"):
        batches, held, nbytes, schema = [], 0, 0, None
        for schema, b in _parquet_batches(p, name, min(_PARQUET_BATCH, rows_per_chunk)):
            batches.append(b)
            held, nbytes = held + b.num_rows, nbytes + b.nbytes
            if held >= rows_per_chunk or nbytes >= _CHUNK_CHARS:
                df = _parquet_frame(p, name, batches, schema)
                yield _named(df, name), list(range(n + 1, n + len(df) + 1)), []
                batches, held, nbytes, n = [], 0, 0, n + len(df)
        if batches or n == 0:
            df = _parquet_frame(p, name, batches, schema)
            if n + len(df) == 0:
                raise _no_rows(name, df.columns)
            yield _named(df, name), list(range(n + 1, n + len(df) + 1)), []
        return
    enc, issues = _encoding(lambda: _blocks(p), name)
    if ext == ".json" or (ext in (".jsonl", ".ndjson") and _first_char(p, enc) == "["):
        # a JSON array cannot be parsed in pieces without another dependency (ijson): read whole, as training does
        yield _read(p)
        return
    with open(p, encoding=enc, newline="") as f:
        if ext in (".csv", ".tsv"):
            sep = _csv_sep(p, enc, "\t" if ext == ".tsv" else ",")
            pieces = _csv_batches(f, name, sep, rows_per_chunk)
        else:
            pieces = _jsonl_batches(_lines(f), name, rows_per_chunk)
        for columns, records, rows in pieces:
            if not rows:
                if n == 0:
                    raise _no_rows(name, columns or [])
                continue
            df = pd.DataFrame(records, columns=columns, dtype=object)
            yield _named(df, name), rows, issues
            n, issues = n + len(rows), []


def _named(df: pd.DataFrame, name: str) -> pd.DataFrame:
    df.columns = [str(c) for c in df.columns]
    df.attrs["source"] = name
    return df


def _no_rows(name: str, columns: Iterable) -> DataError:
    cols = ", ".join(map(str, columns))
    return DataError(f"{name} has no rows" + (f" (only the header: {cols})" if cols else "")
                     + ". Add at least one example per row.")


def _check_file(path: str | os.PathLike) -> tuple[Path, str, str, int]:
    """(path, name, extension, size) of a file this module can read; DataError before anything is read if not."""
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
        raise _empty(name)
    if ext not in (".parquet", ".pq") and size > MAX_DATA_BYTES:
        raise _too_big(name, f"it is {_size(size)}", f"{_size(MAX_DATA_BYTES)} of text")
    return p, name, ext, size


def _empty(name: str) -> DataError:
    return DataError(f"{name} is empty. Choose the file that holds your examples.")


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
    batches, schema = [], None
    for schema, b in _parquet_batches(p, name, _PARQUET_BATCH):
        batches.append(b)
    return _parquet_frame(p, name, batches, schema)


def _parquet_frame(p: Path, name: str, batches: list, schema: Any) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        if schema is None:  # no row groups, so no batch: the footer's schema gives the columns
            with pq.ParquetFile(p) as f:
                schema = f.schema_arrow
        table = pa.Table.from_batches(batches, schema=schema)
        batches.clear()
        return table.to_pandas()  # what pd.read_parquet does with pyarrow >= 19
    except Exception as e:  # pyarrow raises a zoo of types for damaged files
        raise _unreadable(name, e) from None


def _unreadable(name: str, e: Exception) -> DataError:
    return DataError(f"{name} is not a readable Parquet file ({e}). Export it again, or save it as .jsonl or .csv.")


def _parquet_batches(p: Path, name: str, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """(schema, record batch of `batch_size` rows), after the footer's caps; DataError once MAX_DATA_BYTES are read."""
    import pyarrow.parquet as pq

    unreadable = partial(_unreadable, name)
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
    held = 0
    with f:
        try:
            schema = f.schema_arrow
            batches = f.iter_batches(batch_size=batch_size)
        except Exception as e:
            raise unreadable(e) from None
        while True:
            try:
                b = next(batches, None)
            except Exception as e:
                raise unreadable(e) from None
            if b is None:
                return
            # batch by batch, so a dictionary-encoded value repeated in every row (small in the footer, big in
            # memory) is stopped at the cap instead of expanded whole; counted over the whole file when streamed
            # too, so a streamed check refuses what a whole read refuses
            held += b.nbytes
            if held > MAX_DATA_BYTES:
                raise _too_big(name, f"its {meta.num_rows:,} rows are more than {_size(MAX_DATA_BYTES)} of data "
                                     f"once read (the file stores repeated values once)", _size(MAX_DATA_BYTES))
            yield schema, b


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
    enc, issues = _encoding(lambda: (raw[i:i + _BLOCK] for i in range(0, len(raw), _BLOCK)), name)
    return raw.decode(enc), issues


def _blocks(p: Path) -> Iterator[bytes]:
    with open(p, "rb") as f:
        while b := f.read(_BLOCK):
            yield b


def _encoding(blocks: Callable[[], Iterator[bytes]], name: str) -> tuple[str, list[Issue]]:
    """(codec, issues): how to read the text whose bytes `blocks()` gives piece by piece (called again when the
    first guess fails), so a file is checked without holding it whole. DataError when it is not text, or empty."""
    it = blocks()
    first = next(it, b"")
    if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        dec, blank = codecs.getincrementaldecoder("utf-16")(), True
        try:
            for b in chain([first], it, [None]):
                s = dec.decode(b"", final=True) if b is None else dec.decode(b)
                blank = blank and not s.strip()
        except UnicodeDecodeError:  # rare: find the line the one way that is surely right, on the whole file
            raw = b"".join(blocks())
            try:
                raw.decode("utf-16")
            except UnicodeDecodeError as e:
                line = raw[:e.start].decode("utf-16", errors="replace").count("\n") + 1
                raise DataError(f"{name} is UTF-16 text with a damaged character on line {line} (a lone "
                                f"surrogate). Fix that line, or save the file as UTF-8 and load it again.") from None
            raise AssertionError("the pieces and the whole disagree") from None
        if blank:
            raise _empty(name)
        return "utf-16", []
    dec, blank, lines, where = codecs.getincrementaldecoder("utf-8-sig")(), True, 0, ""
    for b in chain([first], it, [None]):
        if b is not None and b"\x00" in b:
            raise DataError(f"{name} contains NUL bytes, so it is not a text file. Export it as UTF-8 "
                            f"CSV or JSON Lines.")
        if where:
            continue  # not UTF-8: still looking for NUL bytes, as a whole read would have first
        try:
            s = dec.decode(b"", final=True) if b is None else dec.decode(b)
            blank = blank and not s.strip()
        except UnicodeDecodeError as e:
            # e.object is the bytes held back from the last piece (part of one character, no newline) + this piece
            line = lines + e.object[:e.start].count(b"\n") + 1
            where = f"byte 0x{e.object[e.start]:02X} on line {line}"
        lines += b.count(b"\n") if b else 0
    if not where:
        if blank:
            raise _empty(name)
        return "utf-8-sig", []
    blank = True
    for b in blocks():
        try:
            # Windows-1252 is what Excel writes for "CSV (Comma delimited)" in western locales.
            s = b.decode("cp1252")  # one byte a character: pieces decode alone
            blank = blank and not s.strip()
        except UnicodeDecodeError:
            raise DataError(f"{name} is not UTF-8 text (first bad {where}). Save it with UTF-8 encoding (Excel: "
                            f"Save As > 'CSV UTF-8'; editors: Save with Encoding > UTF-8) and load it "
                            f"again.") from None
    if blank:
        raise _empty(name)
    return "cp1252", [Issue(None, None, f"the file is not UTF-8 (first odd {where}); it was read as Windows-1252, "
                                        f"so accented letters may be wrong",
                            "save the file as UTF-8 to be sure", "warning", kind="not UTF-8")]


def _first_char(p: Path, enc: str) -> str:
    """The file's first character that is not white space ('' if none)."""
    with open(p, encoding=enc, newline="") as f:
        while s := f.read(_BLOCK):
            if s := s.lstrip():
                return s[0]
    return ""


def _csv_sep(p: Path, enc: str, sep: str) -> str:
    """';' for a .csv whose first line (up to the first "\n") has ';' and no ',': Excel in locales that write
    decimal commas."""
    if sep != ",":
        return sep
    comma = semi = False
    with open(p, encoding=enc, newline="") as f:
        while s := f.read(_BLOCK):
            s, nl, _ = s.partition("\n")
            comma, semi = comma or "," in s, semi or ";" in s
            if nl:
                break
    return ";" if semi and not comma else sep


def _read_csv(text: str, name: str, sep: str) -> tuple[pd.DataFrame, list[int]]:
    first = text.split("\n", 1)[0]
    if sep == "," and "," not in first and ";" in first:
        sep = ";"  # Excel in locales that write decimal commas (as _csv_sep)
    records, rows, header = [], [], []
    for header, recs, rs in _csv_batches(io.StringIO(text, newline=""), name, sep, None):
        records += recs
        rows += rs
    return pd.DataFrame(records, columns=header, dtype=object), rows


def _csv_batches(f: TextIO, name: str, sep: str, rows_per_chunk: int | None
                 ) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    """(header, records, their row numbers), `rows_per_chunk` records at a time (None: all at once); always at least
    one batch, so an empty file still tells its header."""
    # csv, not pandas: pandas silently turns an extra field in every row into an index column.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long row is a row issue, not a crash
    reader = csv.reader(f, delimiter=sep, strict=True)
    records, rows, header = [], [], None
    start, n, total, chars = 1, 0, 0, 0
    try:
        for rec in reader:
            if header is None:
                header = _unique_names([h.strip() for h in rec])
            elif any(x.strip() for x in rec):
                n += 1  # data row number; blank rows count, as in a spreadsheet
                if len(rec) > len(header) and any(x.strip() for x in rec[len(header):]):
                    raise DataError(
                        f"{name}: row {n} (line {start}) has {len(rec)} fields but the header has "
                        f"{len(header)}. Put double quotes around fields that contain '{sep}', quotes or "
                        f"line breaks (spreadsheet programs do this when exporting CSV).")
                if total == MAX_ROWS:
                    raise _too_many_rows(name, f"more than {MAX_ROWS:,}")
                records.append(rec[:len(header)] + [""] * (len(header) - len(rec)))
                rows.append(n)
                total += 1
                if rows_per_chunk:
                    chars += sum(map(len, rec))
                    if len(rows) >= rows_per_chunk or chars >= _CHUNK_CHARS:
                        yield header, records, rows
                        records, rows, chars = [], [], 0
            else:
                n += 1  # blank line: counts as a row number, holds no example
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{name} is not valid CSV: {e} in the row starting on line {start}. A quote inside a "
                        f"field must be doubled (\"\") and the whole field quoted.") from None
    if rows or not total:
        yield header or [], records, rows


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
    # split on "\n" only: str.splitlines would also cut at U+2028, which JSON allows inside strings
    (_, records, rows), = _jsonl_batches(text.split("\n"), name, None)
    return pd.DataFrame(records, dtype=object), rows


def _lines(f: TextIO) -> Iterator[str]:
    """The text split on "\n" only, as str.split("\n") would (a file's own readline also cuts at "\r")."""
    rest: list[str] = []  # pieces of a line longer than a block, joined once
    while block := f.read(_BLOCK):
        pieces = block.split("\n")
        if len(pieces) > 1:
            yield "".join(rest) + pieces[0]
            yield from pieces[1:-1]
            rest = []
        rest.append(pieces[-1])
    yield "".join(rest)


def _jsonl_batches(lines: Iterable[str], name: str, rows_per_chunk: int | None
                   ) -> Iterator[tuple[None, list[dict], list[int]]]:
    """(None, records, their line numbers), `rows_per_chunk` records at a time (None: all at once); always at least
    one batch."""
    records, rows, total, chars = [], [], 0, 0
    for n, line in enumerate(lines, 1):
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
        if total == MAX_ROWS:
            raise _too_many_rows(name, f"more than {MAX_ROWS:,}")
        records.append(obj)
        rows.append(n)
        total += 1
        if rows_per_chunk:
            chars += len(line)
            if len(rows) >= rows_per_chunk or chars >= _CHUNK_CHARS:
                yield None, records, rows
                records, rows, chars = [], [], 0
    if rows or not total:
        yield None, records, rows


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
