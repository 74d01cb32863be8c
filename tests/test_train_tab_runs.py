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


def test_sweep_panel_queues_a_grid_from_the_form_and_shows_its_table(runs_dir, tmp_path, monkeypatch):
    """The sweep panel's handlers: suggestions, "Queue the sweep" from the form's values, the table (the runs get
    eval losses written here, no trainer: the queue is paused first), the run list's queue places."""
    from studio.runs import events, queue, sweep
    from studio.ui import settings as settings_mod
    from studio.ui.train import sweep as panel
    from studio.ui.train.compare import runs_frame

    assert panel.suggestions("train.learning_rate") == ["5e-5", "1e-4", "2e-4", "5e-4", "1e-3"]
    assert panel.suggestions("lora.r") == ["8", "16", "32", "64"]
    assert panel.suggestions("train.lr_scheduler")[:2] == ["cosine", "linear"]
    data = sample_head(12, tmp_path / "mine.jsonl")
    cfg = preset("quick", model={"source": "demo"}, data={"path": str(data)}).replace(name="sw")
    values = settings_mod.config_values(cfg)
    state = {"path": str(data), "format": "auto", "columns": {}, "system_prompt": "", "skip_invalid": True}
    monkeypatch.setattr("studio.ui.train.handlers.catalog.source_problem", lambda *a: None)
    monkeypatch.setattr("studio.ui.data.handlers.template_refusal", lambda cfg: None)
    queue.set_paused(True, runs_dir)
    sid, msg = panel.queue_sweep("lora.r", ["8", "16"], "", [], values, state, runs_dir)
    assert sid and "2 runs" in msg, msg
    sid2, msg = panel.queue_sweep("lora.r", ["8"], "", [], values, state, runs_dir)
    assert sid2 is None and "2 to 5 values" in msg
    made = {runs.run_name(d): d for d in runs_dir.iterdir() if runs.is_run(d)}
    for name, loss in (("sw r=8", 2.0), ("sw r=16", 1.5)):
        d = made[name]
        events.append_metrics(d, {"kind": "eval", "step": 2, "eval_loss": loss})
        events.write_status(d, "finished", step=2)
    table = panel.sweep_frame(sweep.find_sweep(sid, runs_dir))
    assert list(table["run"]) == ["sw r=16", "sw r=8"] and list(table[""]) == ["★", ""]
    assert list(table["r"]) == [16, 8] and list(table["best eval loss"]) == ["1.5000", "2.0000"]
    # queued runs show their place in the run list
    d3 = runs.create_run(cfg.replace(name="later"), runs_dir)
    queue.enqueue(d3, runs_dir)
    frame = runs_frame(runs_dir)
    assert frame.loc[frame["name"] == "later", "state"].item() == "queued #1"
