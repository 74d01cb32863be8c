"""Text files: CSV/TSV, JSON and JSON Lines, and their encodings (UTF-8, UTF-16 with a BOM, Windows-1252 with a
warning). `read_text` reads one whole; `iter_text` streams one in chunks for `read.iter_tables`; both end in the
same DataErrors, naming the file, the line and what to do. The caps are `limits`'.

Read-only on the user's file. No transformers, no torch.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from . import limits
from .issues import DataError, Issue, typename
from .limits import empty, no_rows, too_many_rows

_BLOCK = 1 << 20  # bytes (or characters) read at a time while streaming a text file


def read_text(p: Path, name: str, ext: str) -> tuple[pd.DataFrame, list[int], list[Issue]]:
    """(DataFrame of raw cells, their row numbers, the file's own issues) of a whole text file `limits.check_file`
    passed."""
    raw = p.read_bytes()
    text, issues = _decode(raw, name)
    if ext in (".csv", ".tsv"):
        df, rows = _read_csv(text, name, "\t" if ext == ".tsv" else ",")
    elif ext == ".json" or (text.lstrip().startswith("[") and ext in (".jsonl", ".ndjson")):
        df, rows = _read_json(text, name)
    else:
        df, rows = _read_jsonl(text, name)
    return df, rows, issues


def file_encoding(p: Path, name: str) -> tuple[str, list[Issue]]:
    """(codec, issues) of a text file, read a block at a time (see _encoding)."""
    return _encoding(lambda: _blocks(p), name)


def is_json_array(p: Path, ext: str, enc: str) -> bool:
    """Whether the file is one JSON array (.json, or JSON Lines that start with '['), which cannot be streamed."""
    return ext == ".json" or (ext in (".jsonl", ".ndjson") and _first_char(p, enc) == "[")


def iter_text(p: Path, name: str, ext: str, enc: str, issues: list[Issue], rows_per_chunk: int
              ) -> Iterator[tuple[pd.DataFrame, list[int], list[Issue]]]:
    """A CSV/TSV or JSON Lines file in `enc` as (DataFrame of at most `rows_per_chunk` rows, their row numbers,
    `issues` with the first piece only), read as it goes; DataError at the first bad line. Not a JSON array: that
    is read whole (read.iter_tables)."""
    n = 0
    with open(p, encoding=enc, newline="") as f:
        if ext in (".csv", ".tsv"):
            sep = _csv_sep(p, enc, "\t" if ext == ".tsv" else ",")
            pieces = _csv_batches(f, name, sep, rows_per_chunk)
        else:
            pieces = _jsonl_batches(_lines(f), name, rows_per_chunk)
        for columns, records, rows in pieces:
            if not rows:
                if n == 0:
                    raise no_rows(name, columns or [])
                continue
            df = pd.DataFrame(records, columns=columns, dtype=object)
            yield df, rows, issues
            n, issues = n + len(rows), []


def _where(text: str, pos: int, first_line: int = 1) -> str:
    """'line L, column C' (1-based) of a character offset."""
    line = text.count("\n", 0, pos) + first_line
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _deep_spot(text: str) -> int:
    """Offset of the first bracket that opens level limits.MAX_DEPTH + 1 (strings skipped), or 0."""
    depth = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in ("[", "{"):
            depth += 1
            if depth > limits.MAX_DEPTH:
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
        raise DataError(f"{name}: the data is nested more than {limits.MAX_DEPTH} lists/objects deep at {spot}. "
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
            raise empty(name)
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
            raise empty(name)
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
        raise empty(name)
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
                if total == limits.MAX_ROWS:
                    raise too_many_rows(name, f"more than {limits.MAX_ROWS:,}")
                records.append(rec[:len(header)] + [""] * (len(header) - len(rec)))
                rows.append(n)
                total += 1
                if rows_per_chunk:
                    chars += sum(map(len, rec))
                    if len(rows) >= rows_per_chunk or chars >= limits.CHUNK_CHARS:
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
    if len(records) > limits.MAX_ROWS:
        raise too_many_rows(name, f"{len(records):,}")
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
        raise DataError(f"{name}: expected {shape}, but the file holds a single {typename(obj)}.")
    for i, r in enumerate(obj, 1):
        if not isinstance(r, dict):
            raise DataError(f"{name}: item {i} is a {typename(r)}; expected {shape}.")
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
            raise DataError(f"{name}, line {n} is a {typename(obj)}, not a JSON object. Each line must look "
                            f'like {{"messages": [...]}} or {{"instruction": "...", "output": "..."}}.')
        if total == limits.MAX_ROWS:
            raise too_many_rows(name, f"more than {limits.MAX_ROWS:,}")
        records.append(obj)
        rows.append(n)
        total += 1
        if rows_per_chunk:
            chars += len(line)
            if len(rows) >= rows_per_chunk or chars >= limits.CHUNK_CHARS:
                yield None, records, rows
                records, rows, chars = [], [], 0
    if rows or not total:
        yield None, records, rows
