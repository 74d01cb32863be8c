"""studio.data size and row caps: a file too big to check is refused before its rows are read, with a message
naming the file, what was found, the cap and what to do (audit item 6)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio.data import limits as slimits
from studio.data import read_examples
from tests.helpers import data_refused as refused


def no_row_reads(monkeypatch):
    """Any attempt to read Parquet row data fails the test: the refusal must come from the footer alone."""
    def boom(*a, **k):
        raise AssertionError("row data was read")
    for name in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, name, boom)
    monkeypatch.setattr(pq, "read_table", boom)
    monkeypatch.setattr(pd, "read_parquet", boom)


def test_a_44kb_parquet_of_a_gigabyte_is_refused_from_its_metadata(tmp_path, monkeypatch):
    """The audit's file: 1,000 rows of 1 MB each, zstd, a few dozen KB on disk (3.2 GB RSS to read before)."""
    p = tmp_path / "bomb.parquet"
    block = pa.table({"instruction": ["q"] * 10, "output": ["x" * (1 << 20)] * 10})
    with pq.ParquetWriter(p, block.schema, compression="zstd", use_dictionary=False) as w:
        for _ in range(100):
            w.write_table(block)
    assert p.stat().st_size < 200_000
    no_row_reads(monkeypatch)
    t0 = time.perf_counter()
    msg = refused(p, "1,000 rows", "1.0 GB", "split")
    assert time.perf_counter() - t0 < 2, msg


def test_parquet_rows_over_the_cap_refused_from_metadata(tmp_path, monkeypatch):
    p = tmp_path / "many.parquet"
    pd.DataFrame({"instruction": ["q"] * 50, "output": [f"a{i}" for i in range(50)]}).to_parquet(p)
    monkeypatch.setattr(slimits, "MAX_ROWS", 10)
    no_row_reads(monkeypatch)
    refused(p, "50 rows", "10", "split")


def test_parquet_whose_dictionary_hides_its_size_is_stopped_while_reading(tmp_path, monkeypatch):
    """Dictionary encoding stores one copy of a repeated value: the footer's size is small, the table is not."""
    p = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"instruction": ["q"] * 200, "output": ["y" * 100_000] * 200}), p, compression="zstd")
    monkeypatch.setattr(slimits, "MAX_DATA_BYTES", 5_000_000)  # 20 MB in memory, well under 5 MB in the footer
    refused(p, "MB", "split")


@pytest.mark.parametrize("name,content", [
    ("big.csv", "instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(2000))),
    ("big.jsonl", "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(2000))),
    ("big.json", json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(2000)])),
])
def test_text_files_over_the_size_cap_are_refused_before_reading(tmp_path, monkeypatch, name, content):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    monkeypatch.setattr(slimits, "MAX_DATA_BYTES", 10_000)

    def boom(*a, **k):
        raise AssertionError("the file was read")
    monkeypatch.setattr(Path, "read_bytes", boom)
    refused(p, "KB", "cap", "split")


@pytest.mark.parametrize("name,content", [
    ("rows.csv", "instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(12))),
    ("rows.jsonl", "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(12))),
    ("rows.json", json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(12)])),
])
def test_text_files_over_the_row_cap_are_refused(tmp_path, monkeypatch, name, content):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    monkeypatch.setattr(slimits, "MAX_ROWS", 10)
    refused(p, "10", "rows", "split")
    monkeypatch.setattr(slimits, "MAX_ROWS", 12)
    assert read_examples(p).n_used == 12


def test_caps_are_documented_numbers():
    assert slimits.MAX_DATA_BYTES == 500_000_000
    assert slimits.MAX_ROWS == 5_000_000
