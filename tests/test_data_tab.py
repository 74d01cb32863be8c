"""The Data tab's handlers: only files this page may read are read (audit item 8), and a checked file is not
read again when only Example #, max length or the model change; token statistics come from a stated sample
(audit item 5)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from studio import data as sdata
from studio.data import tokens as stokens
from studio.ui.data import handlers
from tests.helpers import SAMPLE_JSONL as SAMPLE


def write_qa(p: Path, n: int) -> Path:
    p.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer number {i}, matey."})
                         + "\n" for i in range(n)), encoding="utf-8")
    return p


@pytest.fixture
def reads(monkeypatch):
    """Counts the files read_examples is asked to read; starts from an empty cache."""
    for cache in (getattr(handlers, "_REPORTS", {}), getattr(handlers, "_STATS", {})):
        cache.clear()
    calls = []
    real = sdata.read_examples

    def counted(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(sdata, "read_examples", counted)
    return calls


def test_a_path_outside_uploads_and_samples_is_not_read(tmp_path, monkeypatch, reads):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    secret = write_qa(tmp_path / "secret.jsonl", 3)
    sneaky = str(tmp_path / "gradio" / ".." / "secret.jsonl")
    for path in (str(secret), sneaky):
        v = handlers.handle(path, [], model_source="no-such-model")
        assert not v.ok and v.config is None
        assert "secret.jsonl" in v.message and "upload" in v.message.lower(), v.message
    assert reads == []
    assert not handlers.allowed("/etc/passwd") and not handlers.allowed("\0bad")


def test_uploads_samples_and_session_choices_are_read(tmp_path, monkeypatch, reads):
    cache = tmp_path / "gradio"
    (cache / "abc123").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    up = write_qa(cache / "abc123" / "up.jsonl", 3)
    mine = write_qa(tmp_path / "mine.jsonl", 4)
    assert handlers.handle(str(up), [], model_source="no-such-model").ok
    assert handlers.handle(str(SAMPLE), None, model_source="no-such-model").ok
    chosen = handlers.choose([], str(mine))
    assert chosen == handlers.choose(chosen, str(mine)) == [str(mine)]
    v = handlers.handle(str(mine), chosen, model_source="no-such-model")
    assert v.ok and v.n_examples == 4
    assert len(reads) == 3


def test_example_max_length_and_model_changes_do_not_reread(tmp_path, demo_model_dir, reads):
    p = write_qa(tmp_path / "qa.jsonl", 12)
    model = str(demo_model_dir)
    first = handlers.inspect(str(p), model_source=model, max_length=64, example_index=1)
    assert first.ok and first.example
    second = handlers.inspect(str(p), model_source=model, max_length=64, example_index=7)
    assert "Example 7 of 12 (row 7" in second.example_note
    handlers.inspect(str(p), model_source=model, max_length=128, example_index=3)
    assert len(reads) == 1
    assert second.preview.equals(first.preview)
    handlers.inspect(str(p), system_prompt="Be a pirate.", model_source=model)  # different examples: read again
    assert len(reads) == 2
    write_qa(p, 13)  # the file changed: read again
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    v = handlers.inspect(str(p), system_prompt="Be a pirate.", model_source=model)
    assert len(reads) == 3 and v.n_examples == 13


def test_token_statistics_come_from_a_stated_sample(tmp_path, demo_model_dir, monkeypatch, reads):
    monkeypatch.setattr(stokens, "TOKEN_SAMPLE", 5)
    p = write_qa(tmp_path / "qa.jsonl", 20)
    v = handlers.inspect(str(p), model_source=str(demo_model_dir), max_length=64, example_index=20)
    assert v.ok and v.n_examples == 20
    assert int(v.hist["examples"].sum()) == 5
    assert "sample of **5** of the 20 examples" in v.token_note, v.token_note
    assert "Example 20 of 20" in v.example_note  # any example can still be shown
    small = handlers.inspect(str(SAMPLE), model_source=str(demo_model_dir), max_length=64)
    monkeypatch.setattr(stokens, "TOKEN_SAMPLE", 2000)
    handlers._STATS.clear()
    assert "sample" not in handlers.inspect(str(p), model_source=str(demo_model_dir), max_length=64).token_note
    assert small.ok
