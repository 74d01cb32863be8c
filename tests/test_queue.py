"""The run queue and sweeps without training: order, moves, cancel, pause, the data-changed refusal, one worker per
queue, the grid's validation and naming, the sweep table's ranking, and the Optuna extra's absence said in words.
The trained paths (a queue of runs, a 2x2 sweep, an Optuna search) are in tests/test_queue_train.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from studio import runs
from studio.config import preset
from studio.runs import events, queue, sweep, tune
from tests.helpers import ROOT, sample_head


@pytest.fixture
def cfg(tmp_path):
    data = sample_head(20, tmp_path / "mine.jsonl")
    return preset("quick", model={"source": str(tmp_path / "no-model-needed")},
                  data={"path": str(data)}).replace(name="q")


def _queue(cfg, runs_dir, n):
    made = []
    for i in range(n):
        d = runs.create_run(cfg.replace(name=f"q{i}"), runs_dir)
        queue.enqueue(d, runs_dir)
        made.append(d)
    return made


def test_queue_order_moves_cancel_and_pause(cfg, runs_dir):
    a, b, c = _queue(cfg, runs_dir, 3)
    assert queue.queued(runs_dir) == [a, b, c]
    assert [queue.position(d, runs_dir) for d in (a, b, c)] == [1, 2, 3]
    assert queue.move(c, "up", runs_dir) == 2
    assert queue.queued(runs_dir) == [a, c, b]
    assert queue.move(b, "front", runs_dir) == 1
    assert queue.queued(runs_dir) == [b, a, c]
    queue.cancel(a, runs_dir)
    assert queue.queued(runs_dir) == [b, c]
    st = runs.status(a)
    assert st["state"] == "stopped" and "nothing was trained" in st["message"]
    with pytest.raises(runs.RunError, match="not waiting in the queue"):
        queue.cancel(a, runs_dir)
    # a deleted queued run drops out of the queue by itself
    runs.delete_run(b, runs_dir)
    assert queue.queued(runs_dir) == [c]
    # paused: no worker is started; resumed: one is (and leaves at once with an empty queue after we cancel)
    queue.set_paused(True, runs_dir)
    assert queue.ensure_worker(runs_dir) is None and queue.is_paused(runs_dir)
    queue.cancel(c, runs_dir)
    queue.set_paused(False, runs_dir)
    assert not queue.is_paused(runs_dir) and queue.queued(runs_dir) == []
    # the runs stay in the list: nothing the user made is lost
    assert {r["id"] for r in runs.list_runs(runs_dir)} == {a.name, c.name}


def test_changed_or_vanished_data_fails_the_run_at_its_turn(cfg, runs_dir, tmp_path):
    d1, d2 = _queue(cfg, runs_dir, 2)
    assert queue.data_problem(d1) is None
    src = tmp_path / "mine.jsonl"
    src.write_text(src.read_text(encoding="utf-8") + src.read_text(encoding="utf-8").splitlines(True)[0],
                   encoding="utf-8")
    msg = queue.data_problem(d1)
    assert "changed after this run was queued" in msg and str(src) in msg and "Queue it again" in msg
    src.unlink()
    assert "is gone" in queue.data_problem(d2)
    # the worker fails both with the sentence and goes on (here: the queue is then empty, so it ends)
    said = []
    assert queue.work(runs_dir, say=said.append, poll=0.1) == 0
    for d in (d1, d2):
        st = runs.status(d)
        assert st["state"] == "failed" and "is gone" in st["error"], st
    assert said[-1] == "The queue is empty."


def test_only_one_worker_per_queue(cfg, runs_dir):
    """A second worker of the same queue leaves at once, naming the first; the first waits for a busy machine."""
    (d,) = _queue(cfg, runs_dir, 1)
    from studio.runs.lock import trainer_lock
    with trainer_lock(runs_dir / "someone-else"):  # the machine is busy: the worker waits, it does not start d
        first = subprocess.Popen([sys.executable, "-m", "studio", "runs", "queue", "--worker", "--runs-dir",
                                  str(runs_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            deadline = time.time() + 60
            while queue.worker_holder(runs_dir) is None and time.time() < deadline:
                assert first.poll() is None, first.stdout.read()
                time.sleep(0.2)
            assert queue.worker_holder(runs_dir)["pid"] == first.pid
            said = []
            assert queue.work(runs_dir, say=said.append) == 0
            assert said == [f"Another worker runs this queue (pid {first.pid})."]
            assert queue.ensure_worker(runs_dir) is None  # the UI's timer starts none while one lives
            time.sleep(1.5)
            assert runs.status(d)["state"] == "queued" and not runs.status(d).get("pid")  # still waiting
        finally:
            queue.set_paused(True, runs_dir)  # it leaves when it next looks
    assert first.wait(30) == 0
    assert "The queue is paused." in first.stdout.read()
    assert queue.queued(runs_dir) == [d]


def test_sweep_grid_is_validated_and_named(cfg):
    axes = sweep.parse_axes({"train.learning_rate": "1e-4, 2e-4,5e-4", "lora.r": ["8", "16"]})
    assert axes == {"train.learning_rate": [1e-4, 2e-4, 5e-4], "lora.r": [8, 16]}
    points = sweep.grid(cfg, axes)
    assert len(points) == 6
    assert [p.name for _, p in points][:2] == ["q lr=1e-4 r=8", "q lr=1e-4 r=16"]
    assert {(p.train.learning_rate, p.lora.r) for _, p in points} == {(a, b) for a in (1e-4, 2e-4, 5e-4)
                                                                      for b in (8, 16)}
    for bad, needle in [({"train.learning_rate": "1e-4"}, "2 to 5 values"),
                        ({"train.learning_rate": "1,2,3,4,5,6"}, "2 to 5 values"),
                        ({"train.logging_steps": "1,2"}, "cannot be swept"),
                        ({"lora.r": "8,16", "lora.alpha": "8,16", "train.epochs": "1,2"}, "at most 2 settings"),
                        ({"lora.r": "4,8,16,32", "train.learning_rate": "1e-4,2e-4,3e-4,4e-4"}, "at most 12"),
                        ({"lora.r": "8,sixteen"}, "'sixteen' is not a whole number"),
                        ({"lora.r": "8,16.5"}, "is not a whole number")]:
        with pytest.raises(ValueError, match=needle):
            sweep.parse_axes(bad)
    # every point is checked by the config before anything is queued: 0.5 is past the learning rate's maximum
    with pytest.raises(ValueError, match="Sweep point lr=0.5.*Learning rate.*Nothing was queued"):
        sweep.grid(cfg, sweep.parse_axes({"train.learning_rate": "1e-4,0.5"}))
    assert sweep.fmt(2e-4) == "2e-4" and sweep.fmt(1.5e-5) == "1.5e-5" and sweep.fmt(16.0) == "16"
    assert "lora.r" in dict(sweep.sweep_fields()) and "train.dpo_beta" in dict(sweep.sweep_fields())


def _fake_result(run_dir, evals, state="finished"):
    """What a trainer leaves behind, for the ranking only: eval events and a final status."""
    for step, loss in evals:
        events.append_metrics(run_dir, {"kind": "eval", "step": step, "eval_loss": loss})
    events.write_status(run_dir, state, step=evals[-1][0] if evals else 0)


def test_sweep_table_ranks_by_best_eval_loss_and_marks_the_winner(cfg, runs_dir):
    queue.set_paused(True, runs_dir)  # no worker: these runs get fake results, never a trainer
    sid, made = sweep.queue_sweep(cfg, {"train.learning_rate": [1e-4, 1e-3], "lora.r": [4, 8]}, runs_dir)
    assert len(made) == 4 and len(queue.queued(runs_dir)) == 4
    _fake_result(made[0], [(1, 2.5), (2, 2.4)])
    _fake_result(made[1], [(1, 2.2), (2, 2.3)])  # its best (2.2) is not its last
    _fake_result(made[2], [(1, 1.9)], state="failed")  # lowest, but failed: not the winner
    s = sweep.find_sweep(sid, runs_dir)
    assert s["keys"] == ["train.learning_rate", "lora.r"] and len(s["runs"]) == 4
    rows = sweep.table(s)
    assert [r["id"] for r in rows] == [made[2].name, made[1].name, made[0].name, made[3].name]
    assert [r["winner"] for r in rows] == [False, True, False, False]
    assert rows[1]["train.learning_rate"] == 1e-4 and rows[1]["lora.r"] == 8
    assert rows[1]["best eval loss"] == pytest.approx(2.2)
    assert sweep.winner(s) == made[1]
    longer, pos = sweep.train_longer(s, 40, runs_dir)
    from studio.config import RunConfig
    lc = RunConfig.load(longer / runs.CONFIG)
    assert lc.train.max_steps == 40 and lc.lora.r == 8 and lc.train.learning_rate == 1e-4
    assert lc.name.endswith("longer") and pos == 2  # behind the one queued run left of the sweep


def test_optuna_missing_is_said_in_words(monkeypatch, cfg, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets where the extra is not installed
    msg = tune.optuna_missing()
    assert "pip install 'qlora-studio[tune]'" in msg and "grid" in msg
    assert tune.parse_ranges({"train.learning_rate": "1e-5:1e-3", "lora.r": "4,8"}) == {
        "train.learning_rate": ("range", 1e-5, 1e-3, True), "lora.r": ("choice", [4, 8])}
    with pytest.raises(ValueError, match="LOW below HIGH"):
        tune.parse_ranges({"lora.dropout": "0.2:0.1"})


def test_cli_queue_list_and_sweep_errors(cfg, runs_dir, tmp_path):
    from tests.helpers import studio_cli
    (d,) = _queue(cfg, runs_dir, 1)
    queue.set_paused(True, runs_dir)
    out = studio_cli("runs", "queue", "--runs-dir", runs_dir)
    assert out.returncode == 0 and f"#1   {d.name}" in out.stdout and "paused" in out.stdout, out
    path = cfg.save(tmp_path / "c.yaml")
    out = studio_cli("sweep", path, "--set", "lora.r=8", "--runs-dir", runs_dir)
    assert out.returncode == 2 and "2 to 5 values" in out.stderr and "Traceback" not in out.stderr
    out = studio_cli("sweep", path, "--set", "lora.r", "--runs-dir", runs_dir)
    assert out.returncode == 2 and "KEY=VALUES" in out.stderr
    assert json.loads((runs_dir / queue.FOLDER / "queue.json").read_text())["runs"] == [d.name]
