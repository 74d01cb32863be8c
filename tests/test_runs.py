"""The run folder's one owner (studio.runs, studio.runs.layout) and the one reading of its loss curves."""
from __future__ import annotations

import json

import pytest

from studio import runs
from studio.runs import events, process


def _ckpt(run_dir, step, complete=True):
    d = run_dir / runs.CHECKPOINTS / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / runs.ADAPTER_CONFIG).write_text("{}")
    if complete:  # what transformers writes last; is_intact reads its global_step
        (d / runs.TRAINER_STATE).write_text(f'{{"global_step": {step}}}')
    return d


def test_checkpoints_are_complete_ones_in_step_order(tmp_path):
    (tmp_path / runs.CONFIG).write_text("name: x\n")
    assert runs.checkpoints(tmp_path) == [] and runs.latest_checkpoint(tmp_path) is None
    for step in (9, 10, 2):
        _ckpt(tmp_path, step)
    _ckpt(tmp_path, 11, complete=False)  # cut short by a kill or a full disk: never offered
    (tmp_path / runs.CHECKPOINTS / "checkpoint-last").mkdir()
    assert [p.name for p in runs.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert runs.latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert runs.checkpoint_step(runs.latest_checkpoint(tmp_path)) == 10
    assert runs.adapter_choices(tmp_path) == ["checkpoint-10", "checkpoint-9", "checkpoint-2"]
    (tmp_path / runs.ADAPTER).mkdir()
    (tmp_path / runs.ADAPTER / runs.ADAPTER_CONFIG).write_text("{}")
    assert runs.adapter_choices(tmp_path)[0] == "adapter"


def test_resolve_adapter_from_run_checkpoint_or_adapter_folder(tmp_path):
    from studio.config import RunConfig
    run = tmp_path / "run"
    RunConfig(name="r1").save(run / runs.CONFIG)
    ck = _ckpt(run, 4)
    adapter, cfg, run_dir = runs.resolve_adapter(run, "checkpoint-4")
    assert adapter == ck and run_dir == run and cfg.name == "r1"
    assert runs.resolve_adapter(ck)[2] == run  # a checkpoint folder knows its run
    with pytest.raises(ValueError, match=r"no 'adapter' adapter yet \(available: checkpoint-4\)"):
        runs.resolve_adapter(run)
    with pytest.raises(ValueError, match="not known"):
        runs.resolve_adapter(run, "best")
    loose = tmp_path / "unzipped"
    loose.mkdir()
    (loose / runs.ADAPTER_CONFIG).write_text("{}")
    assert runs.resolve_adapter(loose) == (loose, None, None)
    with pytest.raises(ValueError, match="chosen from a run folder"):
        runs.resolve_adapter(loose, "checkpoint-4")


def test_loss_series_is_the_one_reading_of_the_curves(tmp_path):
    logged = [{"kind": "train", "step": 1, "loss": 3.0}, {"kind": "train", "step": 2, "loss": 2.5},
              {"kind": "eval", "step": 2, "eval_loss": 2.8}, {"kind": "train", "step": 3, "loss": "inf"},
              {"kind": "train", "step": 4, "loss": None}, {"kind": "resume", "step": 2},
              {"kind": "train", "step": 3, "loss": 2.0}, {"kind": "eval", "step": 3, "eval_loss": 2.6}]
    (tmp_path / runs.METRICS).write_text("".join(json.dumps(e) + "\n" for e in logged) + '{"kind": "tr')
    losses = events.loss_series(tmp_path)
    assert losses.train == [(1, 3.0), (2, 2.5), (3, 2.0)]  # the diverged and the replaced steps are gone
    assert losses.eval == [(2, 2.8), (3, 2.6)]
    assert (losses.last_train, losses.last_eval, losses.best_eval) == (2.0, 2.6, (3, 2.6))
    assert runs.final_loss(tmp_path) == (2.0, 2.6)
    assert events.loss_series(tmp_path / "nothing").train == []


@pytest.mark.train
def test_one_run_at_a_time_is_checked_before_any_folder_is_made(tiny_config, runs_dir):
    import subprocess
    import sys
    busy = runs.create_run(tiny_config, runs_dir)
    # a process whose command line names the studio stands in for a trainer
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "studio"])
    try:
        events.write_status(busy, "running", pid=stand_in.pid)
        with pytest.raises(runs.RunError, match="one run at a time"):
            runs.launch(tiny_config, runs_dir)
        assert [d.name for d in runs_dir.iterdir()] == [busy.name]
    finally:
        stand_in.kill()
        stand_in.wait()


_HOLDER = """
import sys, time
from pathlib import Path
from studio import runs
from studio.runs import events
run_dir, state = Path(sys.argv[1]), sys.argv[2]
with runs.trainer_lock(run_dir):
    events.write_status(run_dir, state)
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold_lock(run_dir, state, seconds):
    """A process that takes the machine's trainer lock for run_dir, writes `state` to its status, and holds the
    lock `seconds` longer (as a trainer's process does between its final status and its exit)."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir), state, str(seconds)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_run_that_has_ended_does_not_block_the_next_while_its_process_exits(tiny_config, runs_dir, tmp_path,
                                                                           monkeypatch):
    import time
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    ended = runs.create_run(tiny_config, runs_dir)
    p = _hold_lock(ended, "finished", 2)
    try:
        t = time.monotonic()
        runs.check_idle(runs_dir)  # waits for the exiting process instead of calling the run still training
        assert time.monotonic() - t > 1  # the holder kept the lock 2 s after its final status
    finally:
        p.kill()
        p.wait()


@pytest.mark.train
def test_a_training_lock_holder_is_refused_at_once(tiny_config, runs_dir, tmp_path, monkeypatch):
    import time
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    elsewhere = runs.create_run(tiny_config, tmp_path / "other-runs")  # another runs root: only the lock tells
    p = _hold_lock(elsewhere, "running", 60)
    try:
        t = time.monotonic()
        with pytest.raises(runs.RunError, match=f"Run '{elsewhere.name}' is training"):
            runs.launch(tiny_config, runs_dir)
        assert time.monotonic() - t < 5
        assert not any(runs_dir.iterdir())
    finally:
        p.kill()
        p.wait()


def test_an_ended_run_whose_process_never_exits_is_named_as_such(tiny_config, runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(process, "ENDING_WAIT_S", 0.5)
    ended = runs.create_run(tiny_config, runs_dir)
    p = _hold_lock(ended, "finished", 60)
    try:
        with pytest.raises(runs.RunError, match=rf"'{ended.name}' has ended, but its trainer process \(pid {p.pid}\)"
                                                rf".*kill {p.pid}"):
            runs.check_idle(runs_dir)
    finally:
        p.kill()
        p.wait()
