"""The Train tab's run list actions without a browser: rename the run shown, delete it on a second press, and the
training data named beside Start (issue 23 items 1 and 13)."""
from __future__ import annotations

from studio import runs
from studio.config import preset
from studio.ui.train.handlers import data_label, delete, rename
from tests.helpers import sample_head


def test_rename_and_delete_the_run_shown(runs_dir, tmp_path):
    data = sample_head(12, tmp_path / "mine.jsonl")
    cfg = preset("quick", model={"source": str(tmp_path / "m")}, data={"path": str(data)}).replace(name="old name")
    run_dir = str(runs.create_run(cfg, runs_dir))
    assert rename(run_dir, "  a   better name ") == "Renamed the run to 'a better name'."
    assert runs.run_name(run_dir) == "a better name"
    assert [r["name"] for r in runs.list_runs(runs_dir)] == ["a better name"]
    assert "Type a new name" in rename(run_dir, "   ") and runs.run_name(run_dir) == "a better name"
    msg, armed, gone = delete(run_dir, None, runs_dir)  # the first press only asks
    assert not gone and armed == run_dir and "Press Delete again" in msg and "a better name" in msg
    assert runs.is_run(run_dir)
    msg, armed, gone = delete(run_dir, armed, runs_dir)
    assert gone and armed is None and msg == "Deleted run 'a better name'." and not runs.is_run(run_dir)
    assert rename(None, "x") == "Pick a run in the list first."


def test_the_training_data_is_named_beside_start(tmp_path):
    data = sample_head(12, tmp_path / "qa.jsonl")
    assert data_label({"path": str(data), "format": "auto", "columns": {}, "system_prompt": "",
                       "skip_invalid": True}) == "**Training data:** qa.jsonl, 12 rows (12 used)"
    assert "none yet" in data_label(None)
