"""Holes a hostile audit found (issue 10): each test reproduced the hole on the code before its fix.

Nothing lost: a trainer never writes into a folder that holds someone else's results, two trainers never
run at once, `runs delete` deletes only studio run folders under the runs root, and a full disk never
breaks reading a run's status."""
import errno
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio import runs
from studio.runs import events
from tests.helpers import SAMPLE_JSONL, studio_cli


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.train
def test_train_refuses_a_folder_with_another_runs_results(tiny_config, tmp_path):
    done = tmp_path / "finished-run"
    (done / "adapter").mkdir(parents=True)
    tiny_config.save(done / "config.yaml")
    (done / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n')
    (done / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    before = _digest(done)
    cfg = tiny_config.save(tmp_path / "other.yaml")
    out = studio_cli("train", cfg, "--output", done, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "already holds a run's results" in out.stderr and "--resume" in out.stderr
    assert _digest(done) == before


@pytest.mark.train
def test_train_refuses_a_users_folder(tiny_config, tmp_path):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "eval.jsonl").write_text('{"my": "notes"}\n')
    before = _digest(mine)
    out = studio_cli("train", tiny_config.save(tmp_path / "c.yaml"), "--output", mine, timeout=120)
    assert out.returncode == 2 and "is not empty and is not a run folder" in out.stderr, out.stderr[-2000:]
    assert _digest(mine) == before


@pytest.mark.train
def test_second_trainer_is_refused_while_one_trains(tiny_config, runs_dir, tmp_path):
    run_dir = runs.launch(tiny_config.replace(name="long", train={"max_steps": 400}), runs_dir)
    try:
        deadline = time.time() + 120
        while runs.status(run_dir).get("state") != "running" or not (run_dir / "metrics.jsonl").exists():
            assert time.time() < deadline, (run_dir / "console.log").read_text()[-2000:]
            time.sleep(0.3)
        other = tmp_path / "second"
        out = studio_cli("train", tiny_config.save(tmp_path / "c.yaml"), "--output", other, "--max-steps", 2,
                         timeout=120)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "is training" in out.stderr and run_dir.name in out.stderr
        assert not (other / "metrics.jsonl").exists()
        # the folder being trained cannot be taken over either, not even with --resume
        out = studio_cli("train", run_dir / "config.yaml", "--output", run_dir, "--resume", timeout=120)
        assert out.returncode == 2 and "is training" in out.stderr, out.stderr[-2000:]
    finally:
        runs.stop(run_dir, wait=60)
    assert runs.status(run_dir)["state"] in ("stopped", "finished")


def test_runs_delete_only_deletes_studio_runs_under_the_root(tiny_config, runs_dir, tmp_path):
    project = tmp_path / "project"  # a user's folder that happens to hold a config.yaml
    project.mkdir()
    tiny_config.save(project / "config.yaml")
    (project / "notes.txt").write_text("mine")
    out = studio_cli("runs", "delete", project, env={"STUDIO_RUNS_DIR": str(runs_dir)}, timeout=120)
    assert out.returncode == 2 and "not a run folder under" in out.stderr, out.stderr
    assert (project / "notes.txt").is_file()
    run_dir = runs.create_run(tiny_config, runs_dir)
    out = studio_cli("runs", "delete", ".", cwd=run_dir, env={"STUDIO_RUNS_DIR": str(runs_dir)}, timeout=120)
    assert out.returncode == 2 and "current directory" in out.stderr, out.stderr
    assert run_dir.is_dir()
    out = studio_cli("runs", "delete", run_dir.name, env={"STUDIO_RUNS_DIR": str(runs_dir)}, timeout=120)
    assert out.returncode == 0 and not run_dir.exists(), out.stderr


def test_status_read_survives_a_full_disk(tiny_config, runs_dir, monkeypatch):
    run_dir = runs.create_run(tiny_config, runs_dir)
    events.write_status(run_dir, "running", pid=2**22 + 12345)  # a trainer that died without a word
    before = (run_dir / "status.json").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(events, "write_status", full)
    st = runs.status(run_dir)
    assert st["state"] == "failed" and "ended unexpectedly" in st["error"]
    assert (run_dir / "status.json").read_bytes() == before  # the read did not write
    assert runs.list_runs(runs_dir)[0]["state"] == "failed"
    from studio.ui.train import handlers
    assert handlers.run_view(str(run_dir), runs_dir).state == "failed"


def test_status_read_does_not_write(tiny_config, runs_dir):
    run_dir = runs.create_run(tiny_config, runs_dir)
    events.write_status(run_dir, "running", pid=2**22 + 12345)
    before = (run_dir / "status.json").read_bytes()
    assert runs.status(run_dir)["state"] == "failed"
    assert (run_dir / "status.json").read_bytes() == before


def test_disk_full_is_explained(tmp_path):
    from studio.train.failure import explain
    msg = explain(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert msg.startswith("Disk full: ") and "MB free in" in msg and str(tmp_path) in msg
    json.dumps(msg)


def test_status_written_by_several_threads_at_once(tmp_path):
    import threading
    errors = []

    def writer(i):
        try:
            for j in range(60):
                events.write_status(tmp_path, "running", **{f"k{i}": j})
        except Exception as e:  # noqa: BLE001 — collected and asserted below
            errors.append(repr(e))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    st = json.loads((tmp_path / "status.json").read_text())
    assert {f"k{i}": 59 for i in range(6)}.items() <= st.items()  # no key lost by a torn read-modify-write
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left behind


def test_cli_bad_numbers_and_paths_are_one_line_messages(trained_run, tmp_path):
    sample = SAMPLE_JSONL
    for args, want in ((("data", sample, "--max-length", "-5"), "--max-length must be"),
                       (("data", sample, "--tokens", "--model", "/nope"), "Model '/nope' is neither"),
                       (("train", trained_run / "config.yaml", "--output", tmp_path / "r", "--max-steps", "-3"),
                        "Max steps must be"),
                       (("export", trained_run, "--out", tmp_path / "a-file.txt"), "is a file, not a folder")):
        (tmp_path / "a-file.txt").write_text("mine")
        out = studio_cli(*args, env={"HF_HUB_OFFLINE": "1"}, timeout=120)
        assert out.returncode == 2 and want in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert (tmp_path / "a-file.txt").read_text() == "mine"


@pytest.mark.train
def test_resume_skips_a_damaged_checkpoint_and_says_which(tiny_config, tmp_path):
    from studio.train.lifecycle import run
    run_dir = tmp_path / "run"
    cfg = tiny_config.replace(train={"max_steps": 8, "save_steps": 4, "save_total_limit": 0})
    assert run(cfg, run_dir) == 0
    assert [p.name for p in runs.checkpoints(run_dir)] == ["checkpoint-4", "checkpoint-8"]
    last = run_dir / "checkpoints" / "checkpoint-8"
    for name, cut in (("trainer_state.json", 0.5), ("adapter_model.safetensors", 0.9), ("optimizer.pt", 0.5)):
        f = last / name
        keep = f.read_bytes()
        f.write_bytes(keep[:int(len(keep) * cut)])  # what a full disk or a kill mid-write leaves
        assert not runs.is_intact(last) and runs.latest_checkpoint(run_dir).name == "checkpoint-4", name
        f.write_bytes(keep)
        assert runs.is_intact(last)
    f = last / "optimizer.pt"
    f.write_bytes(f.read_bytes()[:100])
    # the Chat/Export pickers no longer offer it, and resume continues from the previous one, saying so
    assert "checkpoint-8" not in runs.adapter_choices(run_dir)
    out = studio_cli("train", run_dir / "config.yaml", "--output", run_dir, "--resume", "--max-steps", "10",
                     timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Skipping checkpoint-8: damaged" in out.stderr and "resuming from checkpoint-4" in out.stderr
    resumes = [e for e in events.read_metrics_events(run_dir) if e["kind"] == "resume"]
    assert resumes[-1]["step"] == 4 and runs.status(run_dir)["state"] == "finished"


@pytest.mark.train
def test_train_checks_the_data_path_first_and_reads_it_next_to_the_config(tiny_config, small_dataset, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.jsonl").write_bytes(small_dataset.read_bytes())
    cfg = tiny_config.replace(data={"path": "train.jsonl"}).save(project / "run.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = studio_cli("train", cfg, "--output", tmp_path / "r1", "--max-steps", "1", cwd=elsewhere, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert runs.status(tmp_path / "r1")["state"] == "finished"
    for path, want in (("", "names no data file"), ("nope.jsonl", "Data file"), (str(project), "is a folder")):
        bad = tiny_config.replace(data={"path": path}).save(project / "bad.yaml")
        t0 = time.time()
        out = studio_cli("train", bad, "--output", tmp_path / "r2", cwd=elsewhere, timeout=120)
        assert out.returncode == 2 and want in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert time.time() - t0 < 30 and not (tmp_path / "r2").exists()  # said before any model loads


def test_data_tab_with_a_bad_max_length_says_so(small_dataset, demo_model_dir):
    from studio.ui.data import handlers
    for bad in (-5, 10**9):  # (an empty box, None or 0, means the default 512)
        view = handlers.inspect(str(small_dataset), max_length=bad)
        assert view.ok and "Max sequence length from 16" in view.token_note, (bad, view.token_note)
    assert handlers.inspect(str(small_dataset), max_length=64).hist is not None


@pytest.mark.train
def test_disk_full_while_saving_ends_failed_with_the_space_and_cleans_up(tiny_config, tmp_path, monkeypatch):
    from studio.train import lifecycle
    run_dir = tmp_path / "run"
    half = run_dir / "checkpoints" / "checkpoint-999"  # what a save cut short by a full disk leaves
    half.mkdir(parents=True)
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 1000)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(lifecycle, "save_adapter", full)
    assert lifecycle.run(tiny_config.replace(train={"max_steps": 2, "save_steps": 1}), run_dir) == 1
    st = runs.status(run_dir)
    assert st["state"] == "failed" and st["error"].startswith("Disk full: ") and "MB free in" in st["error"]
    assert "a checkpoint of this run needs ~" in st["error"]  # sized from the checkpoints it did write
    assert not half.exists() and [p.name for p in runs.checkpoints(run_dir)] == ["checkpoint-1", "checkpoint-2"]


@pytest.mark.train
def test_run_folder_removed_while_training_ends_with_one_line(tiny_config, tmp_path):
    import shutil
    cfg = tiny_config.replace(train={"max_steps": 400}).save(tmp_path / "c.yaml")
    out_dir = tmp_path / "gone"
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", str(cfg), "--output", str(out_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out_dir / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    shutil.rmtree(out_dir)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "During handling" not in err, err[-3000:]
