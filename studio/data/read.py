"""Reading a user's file: `read_table` / `read_cells` (whole) and `iter_tables` (in chunks) check the file
(`limits`) and hand it to its reader (`text`: CSV/TSV, JSON, JSON Lines and their encodings; `parquet`); and the run
folder's own JSONL (`write_jsonl` / `read_jsonl`).

Read-only on the user's file. No transformers, no torch.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pandas as pd

from ..env.io import write_json_lines
from .issues import DataError, Issue
from .limits import ROWS_PER_CHUNK, check_file, no_rows
from .parquet import iter_parquet, read_parquet
from .text import file_encoding, is_json_array, iter_text, read_text

# --- reading ------------------------------------------------------------------------------------

def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The file as a DataFrame of raw cells. Read-only; warnings (e.g. a non-UTF-8 file read as
    Windows-1252) are in `df.attrs["issues"]`, source row numbers in `df.attrs["rows"]`. A vote file the studio
    writes itself (`written_by_studio`) is read line by line, its damaged lines skipped and listed as warnings."""
    df, rows, issues = _read_own_lines(path) if written_by_studio(path) else read_cells(path)
    df.attrs.update(rows=rows, issues=issues)  # only here: pandas deep-copies attrs on every operation
    return df


def read_cells(path: str | os.PathLike) -> tuple[pd.DataFrame, list[int], list[Issue]]:
    """(DataFrame of raw cells, source row numbers, the file's own issues): read_table without the attrs."""
    p, name, ext, _ = check_file(path)
    issues: list[Issue] = []
    if ext in (".parquet", ".pq"):
        df = read_parquet(p, name)
        rows = list(range(1, len(df) + 1))
    else:
        df, rows, issues = read_text(p, name, ext)
    if len(df) == 0:
        raise no_rows(name, df.columns)
    return _named(df, name), rows, issues


def iter_tables(path: str | os.PathLike, rows_per_chunk: int = ROWS_PER_CHUNK
                ) -> Iterator[tuple[pd.DataFrame, list[int], list[Issue]]]:
    """The file as `read_cells` reads it, in pieces: (DataFrame of at most `rows_per_chunk` rows, their row numbers,
    the file's own issues with the first piece only). The same checks, caps, errors and cells as one `read_cells`,
    read as it goes, so memory stays ~ one piece whatever the file's size. A DataError can come at any piece (the
    first bad line); the caller must not act on the rows before the end. JSON Lines pieces hold the keys their own
    rows have (a whole read gives every row the keys of all); CSV and Parquet pieces all have the same columns."""
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be 1 or more, not {rows_per_chunk}")
    p, name, ext, _ = check_file(path)
    if ext in (".parquet", ".pq"):
        pieces = iter_parquet(p, name, rows_per_chunk)
    else:
        enc, issues = file_encoding(p, name)
        if is_json_array(p, ext, enc):
            # a JSON array cannot be parsed in pieces without another dependency (ijson): read whole, as training does
            yield read_cells(p)
            return
        pieces = iter_text(p, name, ext, enc, issues, rows_per_chunk)
    with closing(pieces):  # a caller that stops early (is_preference_file takes one piece) closes the file now
        for df, rows, issues in pieces:
            yield _named(df, name), rows, issues


def _named(df: pd.DataFrame, name: str) -> pd.DataFrame:
    df.columns = [str(c) for c in df.columns]
    df.attrs["source"] = name
    return df


# --- the studio's own vote files ---------------------------------------------------------------

# The Chat tab appends these to a run folder (studio.runs.judgements, names as in studio.runs.layout), one fsynced
# line per vote. A line torn by a crash (or zero-filled by a file system replaying its journal: NUL bytes) is not the
# user's mistake and cannot be fixed by them: it is skipped, as the Chat tab's counts skip it, not the whole file.
OWN_VOTE_FILES = ("preferences.jsonl", "feedback.jsonl")
DAMAGED_LINE = "damaged line"


def written_by_studio(path: str | os.PathLike) -> bool:
    """A run folder's own vote file: preferences.jsonl or feedback.jsonl with the run's config.yaml beside it."""
    p = Path(path)
    return p.name in OWN_VOTE_FILES and (p.parent / "config.yaml").is_file()


def _read_own_lines(path: str | os.PathLike) -> tuple[pd.DataFrame, list[int], list[Issue]]:
    """read_cells for a vote file the studio wrote: the same size checks, then each line that is whole JSON (an
    object, valid UTF-8, no NUL byte) as a row; every other non-blank line is a warning naming its number."""
    p, name, _, _ = check_file(path)
    records, rows, issues = [], [], []
    for n, raw in enumerate(p.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = None if b"\x00" in raw else json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            records.append(obj)
            rows.append(n)
        else:
            issues.append(Issue(n, None, "damaged line skipped (torn by a crash, or holding NUL bytes)",
                                "nothing to do: the other lines are used; vote again if it mattered",
                                severity="warning", kind=DAMAGED_LINE))
    if not records:
        raise no_rows(name, [])
    return _named(pd.DataFrame.from_records(records), name), rows, issues


# --- the run folder's own JSONL -----------------------------------------------------------------

def write_jsonl(examples: list[list[dict]], path: str | os.PathLike) -> Path:
    """One {"messages": [...]} per line; written whole or not at all (studio.env.io), so readers never see half."""
    return write_json_lines(path, ({"messages": msgs} for msgs in examples))


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
