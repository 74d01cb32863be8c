"""Parquet files: `read_parquet` reads one whole, `iter_parquet` streams one in chunks for `read.iter_tables`. The
caps are checked from the footer before any row is read, then counted batch by batch while the rows are.

Read-only on the user's file. pyarrow is imported when a Parquet file is read. No transformers, no torch.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from . import limits
from .issues import DataError, Issue
from .limits import human_size, no_rows, too_big, too_many_rows

# No format read here is compressed as a whole file (.gz/.zst are refused by extension); Parquet's pages are the
# only decompression, and MAX_DATA_BYTES bounds them (footer first, then counted while the batches are read).
_PARQUET_BATCH = 256  # rows per batch: the in-memory count is checked at least this often


def read_parquet(p: Path, name: str) -> pd.DataFrame:
    """The whole file's cells (a file `limits.check_file` passed)."""
    batches, schema = [], None
    for schema, b in _parquet_batches(p, name, _PARQUET_BATCH):
        batches.append(b)
    return _parquet_frame(p, name, batches, schema)


def iter_parquet(p: Path, name: str, rows_per_chunk: int) -> Iterator[tuple[pd.DataFrame, list[int], list[Issue]]]:
    """(DataFrame of at most `rows_per_chunk` rows or CHUNK_CHARS bytes, their row numbers, no issues), read as it
    goes; DataError when the file has no rows or passes a cap."""
    n = 0
    batches, held, nbytes, schema = [], 0, 0, None
    for schema, b in _parquet_batches(p, name, min(_PARQUET_BATCH, rows_per_chunk)):
        batches.append(b)
        held, nbytes = held + b.num_rows, nbytes + b.nbytes
        if held >= rows_per_chunk or nbytes >= limits.CHUNK_CHARS:
            df = _parquet_frame(p, name, batches, schema)
            yield df, list(range(n + 1, n + len(df) + 1)), []
            batches, held, nbytes, n = [], 0, 0, n + len(df)
    if batches or n == 0:
        df = _parquet_frame(p, name, batches, schema)
        if n + len(df) == 0:
            raise no_rows(name, df.columns)
        yield df, list(range(n + 1, n + len(df) + 1)), []


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
    if meta.num_rows > limits.MAX_ROWS:
        raise too_many_rows(name, f"{meta.num_rows:,}")
    if size > limits.MAX_DATA_BYTES:
        raise too_big(name, f"its {meta.num_rows:,} rows are {human_size(size)} of data once uncompressed "
                            f"({human_size(p.stat().st_size)} on disk)", human_size(limits.MAX_DATA_BYTES))
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
            if held > limits.MAX_DATA_BYTES:
                cap = human_size(limits.MAX_DATA_BYTES)
                raise too_big(name, f"its {meta.num_rows:,} rows are more than {cap} of data once read (the file "
                                    f"stores repeated values once)", cap)
            yield schema, b

