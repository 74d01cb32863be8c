"""The caps on a user's file and the checks before any row is read: which extensions are read, how big a file and
how many rows, how deep its JSON may nest, how big a streamed chunk is; `check_file`, and the DataErrors that name
each cap and what to do.

The readers (`text`, `parquet`) look the caps up here when they check (`limits.MAX_ROWS`, not a copy taken at
import), so one value, and a test that lowers it, reaches every reader.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .issues import DataError

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")

# Caps checked before any row is read (Parquet: from its footer). Reading whole costs 10-17x the text in memory
# (raw bytes, the decoded text, a Python object per cell, chat messages; a 200 MB CSV of 1.9 M rows took 3.5 GB in
# the UI), so 500 MB is already 5-9 GB of RAM. A QLoRA fine-tune uses thousands to ~100k examples: data past either
# cap is better split or sampled before it is loaded here. `studio data` streams (iter_tables) in ~80 MB, under
# the same caps so that it accepts and refuses the files training does.
MAX_DATA_BYTES = 500_000_000  # CSV/JSON/JSONL: bytes on disk; Parquet: bytes once uncompressed
MAX_ROWS = 5_000_000
# How deep lists/objects may nest before a parse error names the spot (chat data needs 3 or 4 levels).
MAX_DEPTH = 100
# iter_tables: a chunk ends at this many rows or this many characters of cells, whichever comes first (10,000 rows
# of a typical 110-byte CSV row are ~1 MB of text, ~10 MB as Python objects; the character cap bounds long rows).
ROWS_PER_CHUNK = 10_000
CHUNK_CHARS = 8_000_000


def check_file(path: str | os.PathLike) -> tuple[Path, str, str, int]:
    """(path, name, extension, size) of a file the readers can read; DataError before anything is read if not."""
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
        raise empty(name)
    if ext not in (".parquet", ".pq") and size > MAX_DATA_BYTES:
        raise too_big(name, f"it is {human_size(size)}", f"{human_size(MAX_DATA_BYTES)} of text")
    return p, name, ext, size


def no_rows(name: str, columns: Iterable) -> DataError:
    cols = ", ".join(map(str, columns))
    return DataError(f"{name} has no rows" + (f" (only the header: {cols})" if cols else "")
                     + ". Add at least one example per row.")


def empty(name: str) -> DataError:
    return DataError(f"{name} is empty. Choose the file that holds your examples.")


def human_size(n: float) -> str:
    """'950 bytes', '1.2 MB': bytes in powers of 1000."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def too_big(name: str, found: str, cap: str) -> DataError:
    return DataError(f"{name} is too big to check here: {found}, and the cap is {cap}. Split it into smaller files, "
                     f"or take a sample (e.g. the first 100,000 rows) and load that; a QLoRA fine-tune rarely "
                     f"needs more.")


def too_many_rows(name: str, found: str) -> DataError:
    return too_big(name, f"it has {found} rows", f"{MAX_ROWS:,} rows")
