"""The queue and sweeps with real trainers on the tiny model: a queue goes on past a failed run and a changed data
file, two workers never train at once and `studio train` is refused while a queued run trains; a 2x2 sweep trains
four distinct configs and its table names the lowest eval loss; an Optuna search of 3 trials runs. (The browser
test that queues a run while another trains, across a restart of the UI server: tests/test_browser_queue.py.)"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from studio import runs
from studio.config import RunConfig
from studio.runs import events, queue
from tests.helpers import ROOT, sample_head, studio_cli, tiny_run_config

pytestmark = pytest.mark.train


def _cfg(tiny_model_dir, tmp_path, **train):
    data = sample_head(48, tmp_path / "d.jsonl")
    return tiny_run_config(tiny_model_dir, data).replace(train={"max_steps": 2, "eval_steps": 1, "save_steps": 2,
                                                                **train})


def _span(run_dir):
    """(started, ended) of a run's training, from its status.json."""
    st = events.read_status(run_dir)
    return st.get("started"), st.get("updated")


def _wait_all_done(run_dirs, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(runs.status(d).get("state") not in events.ACTIVE_STATES for d in run_dirs):
            return
        time.sleep(1)
    pytest.fail("the queue did not finish: " + ", ".join(f"{d.name}={runs.status(d).get('state')}"
                                                         for d in run_dirs))


def test_queue_goes_on_past_failures_with_one_trainer_at_a_time(tiny_model_dir, runs_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    queue.set_paused(True, runs_dir)  # all four queued first; then two workers race for them
    a, _ = queue.queue_run(cfg.replace(name="a", train={"max_steps": 30, "eval_steps": 10}), runs_dir)
    b, _ = queue.queue_run(cfg.replace(name="b", model={"source": str(tmp_path / "no-such-model")}), runs_dir)
    changing = sample_head(40, tmp_path / "changing.jsonl")
    c, _ = queue.queue_run(cfg.replace(name="c", data={"path": str(changing)}), runs_dir)
    d, _ = queue.queue_run(cfg.replace(name="d"), runs_dir)
    assert queue.queued(runs_dir) == [a, b, c, d]
    changing.write_text(changing.read_text(encoding="utf-8")[:-200], encoding="utf-8")  # the user edits it

    queue.set_paused(False, runs_dir)  # starts one worker
    second = subprocess.Popen([sys.executable, "-m", "studio", "runs", "queue", "--worker", "--runs-dir",
                               str(runs_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # while a trains, a CLI run is refused by the same machine lock
    deadline = time.time() + 120
    while runs.status(a).get("state") != "running" and time.time() < deadline:
        time.sleep(0.5)
    assert runs.status(a).get("state") == "running"
    other = studio_cli("train", cfg.save(tmp_path / "other.yaml"), "--output", tmp_path / "other-run", timeout=300)
    _wait_all_done([a, b, c, d], timeout=400)
    second_out = second.communicate(timeout=120)[0]

    assert other.returncode == 2 and "only one run trains at a time" in other.stderr, other.stderr[-2000:]
    assert not (tmp_path / "other-run" / "metrics.jsonl").exists()
    states = {n: runs.status(x) for n, x in zip("abcd", (a, b, c, d))}
    assert states["a"]["state"] == "finished" and states["d"]["state"] == "finished", states
    assert states["b"]["state"] == "failed" and "no-such-model" in states["b"]["error"], states["b"]
    assert states["c"]["state"] == "failed" and "changed after this run was queued" in states["c"]["error"]
    assert (d / runs.ADAPTER / runs.ADAPTER_CONFIG).is_file()
    assert _span(a)[1] <= _span(d)[0], "d started before a ended"  # in order, never two at once
    logs = second_out + (runs_dir / queue.FOLDER / "worker.log").read_text(encoding="utf-8")
    assert logs.count("Another worker runs this queue") == 1, logs  # one of the two trained, the other left
    assert logs.count("Training ") == 3, logs  # a, b and d; c failed before a trainer was started


def test_sweep_2x2_trains_four_configs_and_names_the_lowest_eval_loss(tiny_model_dir, runs_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path).replace(name="sw")
    out = studio_cli("sweep", cfg.save(tmp_path / "sw.yaml"), "--set", "train.learning_rate=1e-3,1e-2",
                     "--set", "lora.r=4,8", "--runs-dir", runs_dir, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    made = sorted(p for p in runs_dir.iterdir() if runs.is_run(p))
    assert len(made) == 4
    cfgs = [RunConfig.load(p / runs.CONFIG) for p in made]
    assert {(c.train.learning_rate, c.lora.r) for c in cfgs} == {(1e-3, 4), (1e-3, 8), (1e-2, 4), (1e-2, 8)}
    assert all(runs.status(p)["state"] == "finished" for p in made)
    best = {p.name: events.loss_series(p).best_eval[1] for p in made}
    winner = min(best, key=best.get)
    assert f"* the winner: {runs.run_name(runs_dir / winner)} ({winner})" in out.stdout, out.stdout
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("* ") and "winner" not in ln]
    assert len(lines) == 1 and runs.run_name(runs_dir / winner) in lines[0]  # the table's first row is marked


def test_optuna_search_of_three_trials(tiny_model_dir, runs_dir, tmp_path):
    pytest.importorskip("optuna", reason="the search needs the tune extra: pip install 'qlora-studio[tune]'")
    cfg = _cfg(tiny_model_dir, tmp_path, max_steps=3).replace(name="tpe")
    out = studio_cli("sweep", cfg.save(tmp_path / "t.yaml"), "--set", "train.learning_rate=1e-4:1e-2",
                     "--set", "lora.r=4,8", "--trials", "3", "--runs-dir", runs_dir, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    made = sorted(p for p in runs_dir.iterdir() if runs.is_run(p))
    assert len(made) == 3 and [f"Trial {i}/3" in out.stdout for i in (1, 2, 3)] == [True] * 3
    lrs = [RunConfig.load(p / runs.CONFIG).train.learning_rate for p in made]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 3  # TPE's picks, inside the range
    assert "* the winner:" in out.stdout
    for p in made:  # every trial ended with eval losses Optuna was told (finished, or stopped by the pruner)
        assert runs.status(p)["state"] in ("finished", "stopped") and events.loss_series(p).eval
