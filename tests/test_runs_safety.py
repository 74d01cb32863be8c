"""Run folders, processes and the CLI under the audit of issue 22: a recorded pid is trusted only with its start
time, the CLI on a closed pipe, compare with a broken run, delete through a link, a killed rank named, and a resume
with another process count written in train.log."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import psutil
import pytest

from studio import runs
from studio.config import RunConfig
from studio.runs import events

from .helpers import ROOT, studio_cli


def _run_folder(root, name, **train):
    """A run folder as the studio makes it (config.yaml + status.json), without a model or data."""
    d = root / name
    cfg = RunConfig(name=name)
    (cfg.replace(train=train) if train else cfg).save(d / runs.CONFIG)
    events.write_status(d, "finished", step=4)
    return d


def _bystander():
    """A live process that is not a trainer but has "studio" in its command line, as `studio ui` has."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "studio", "ui"])


# --- 1. a pid is trusted only with its start time --------------------------------------------------

@pytest.mark.parametrize("record", ["no start time", "another start time"])
def test_stop_never_signals_a_process_that_merely_has_the_recorded_pid(runs_dir, record):
    run = _run_folder(runs_dir, "crashed")
    p = _bystander()
    try:
        st = {**events.read_status(run), "state": "running", "pid": p.pid}  # the trainer died, its pid was reused
        if record == "another start time":
            st["pid_started"] = time.time() - 3600
        (run / runs.STATUS).write_text(json.dumps(st))
        out = studio_cli("runs", "stop", run.name, "--runs-dir", runs_dir, timeout=60)
        time.sleep(0.3)
        assert p.poll() is None, "the unrelated process was killed"
        assert out.returncode == 0, out.stderr
        assert "is not running" in out.stdout and "nothing was signalled" in out.stdout, out.stdout
        assert runs.status(run)["state"] == "failed"  # said in memory: the run looks ended
        runs.delete_run(run, runs_dir)  # not "training": its pid belongs to someone else
        assert not run.exists()
    finally:
        p.kill()
        p.wait()


def test_stop_still_signals_the_recorded_trainer(runs_dir):
    run = _run_folder(runs_dir, "training")
    p = _bystander()  # stands in for the trainer: recorded through write_status, with its start time
    try:
        st = events.write_status(run, "running", pid=p.pid)
        assert st["pid_started"] == psutil.Process(p.pid).create_time()
        with pytest.raises(runs.RunError, match="is training"):
            runs.delete_run(run, runs_dir)
        t = time.monotonic()
        runs.stop(run)
        # SIGTERM ends it (-15), or 0 when stop() reaped it first, as the studio reaps its own trainer child
        assert p.wait(timeout=10) in (-15, 0) and time.monotonic() - t < 10
    finally:
        p.kill()
        p.wait()


# --- 2. a closed pipe ends the CLI quietly --------------------------------------------------------

def test_cli_on_a_pipe_closed_early_exits_quietly(runs_dir):
    run = _run_folder(runs_dir, "piped")
    r, w = os.pipe()
    os.close(r)  # the reader (`| head`) is gone before the CLI writes its first line
    err = subprocess.run([sys.executable, "-m", "studio", "runs", "status", run.name, "--runs-dir", str(runs_dir)],
                         stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    os.close(w)
    assert "Traceback" not in err.stderr and "BrokenPipeError" not in err.stderr, err.stderr
    assert err.returncode == 1


# --- 3. compare shows the readable runs and names the broken one ----------------------------------

def test_compare_of_eleven_runs_with_one_broken_config_shows_the_other_ten(runs_dir):
    made = [_run_folder(runs_dir, f"r{i:02d}", learning_rate=1e-4 * (i + 1)) for i in range(11)]
    (made[3] / runs.CONFIG).write_text("train: {learning_rate: [oops\n")  # cut short by a bad edit
    keys, rows = runs.compare(made)
    assert keys == ["train.learning_rate"]
    good = [r for r in rows if not r.get("error")]
    assert [r["id"] for r in good] == [d.name for d in made if d != made[3]]
    broken = [r for r in rows if r.get("error")]
    assert [r["id"] for r in broken] == ["r03"] and "config.yaml" in broken[0]["error"]
    out = studio_cli("runs", "compare", *[d.name for d in made], "--runs-dir", runs_dir, timeout=60)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header == [d.name for d in made if d != made[3]]
    assert "r03" in out.stderr and "config.yaml" in out.stderr, out.stderr
    from studio.ui.train.compare import compare_frame  # the Train tab's Compare table gets the same rows
    df = compare_frame([d.name for d in made], runs_dir)
    assert list(df.columns)[1:] == [f"{i + 1}. {d.name}" for i, d in enumerate(made)]
    assert df.set_index("").loc["state", "4. r03"] == "unreadable"


# --- 4. delete through a link ---------------------------------------------------------------------

def test_delete_refuses_a_link_to_a_run_and_keeps_the_run(runs_dir, tmp_path):
    run = _run_folder(runs_dir, "precious")
    for link in (runs_dir / "alias", tmp_path / "elsewhere"):  # beside the run, and outside the runs root
        link.symlink_to(run, target_is_directory=True)
        out = studio_cli("runs", "delete", link if link.parent != runs_dir else link.name, "--runs-dir", runs_dir,
                         timeout=60)
        assert out.returncode == 2, out.stdout
        assert "is a link" in out.stderr and "nothing deleted" in out.stderr, out.stderr
        assert (run / runs.CONFIG).is_file() and link.is_symlink()
    runs.delete_run(run, runs_dir)  # by its own folder it goes
    assert not run.exists()


# --- 5. a killed rank is named ---------------------------------------------------------------------

# torchrun 2.13's console (python -m torch.distributed.run --standalone --nproc_per_node 2) when rank 1 got SIGKILL
# after a gloo all_reduce: recorded on this machine, the traceback above the summary cut to its last line
KILLED_RANK_1 = """\
W1203 06:15:34.489000 26147 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 26170 closing \
signal SIGTERM
E1203 06:15:34.507000 26147 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) \
local_rank: 1 (pid: 26171) of binary: /work/main/.venv/bin/python
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
w.py FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-03_06:15:34
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 26170)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 26170
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_06:15:34
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 26171)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 26171
=======================================================
"""


def test_which_rank_was_killed_is_read_from_the_launchers_failure_summary():
    from studio.runs.group import killed_rank
    assert killed_rank(KILLED_RANK_1) == (1, 9)
    assert killed_rank(KILLED_RANK_1.split("Traceback")[0]) == (1, 9)  # the agent's line alone
    # rank 0 raised (exit 1) and torchrun ended rank 1 with SIGTERM: rank 0's own error is the cause, not a kill
    crashed = KILLED_RANK_1.replace("-15 (pid: 26170)  (SIGTERM)", "1 (pid: 26170)").replace(
        "-9 (pid: 26171)  (SIGKILL)", "-15 (pid: 26171)  (SIGTERM)").replace("exitcode: -9", "exitcode: 1")
    assert killed_rank(crashed) is None
    assert killed_rank("") is None


def test_a_killed_rank_is_named_in_the_status_instead_of_gloos_echo(tmp_path):
    from studio.runs import group
    run = _run_folder(tmp_path, "ddp")
    gloo = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500"
    events.write_status(run, "failed", error=gloo, message=gloo)  # what rank 0 wrote before torchrun exited
    with open(run / "launcher.log", "ab") as console:  # a stand-in launcher that prints the recorded summary
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write(sys.argv[1]); sys.exit(1)",
                                 KILLED_RANK_1], stdout=console, stderr=console)
    assert group._wait(proc, run) == 1
    st = events.read_status(run)
    assert st["state"] == "failed"
    assert st["error"].startswith("Rank 1 was killed by signal 9 (SIGKILL)") and "train.rank1.log" in st["error"]


# --- 6. a resume with another process count says so in train.log ----------------------------------

def _checkpoint_by(run, step, processes):
    """A checkpoint as transformers leaves it: rng_state_<rank>.pth per process of a group, rng_state.pth alone."""
    d = run / runs.CHECKPOINTS / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / runs.ADAPTER_CONFIG).write_text("{}")
    names = [f"rng_state_{r}.pth" for r in range(processes)] if processes > 1 else ["rng_state.pth"]
    for name in names:  # torch.save writes a zip archive; is_intact reads only that it is one
        zipfile.ZipFile(d / name, "w").close()
    (d / runs.TRAINER_STATE).write_text(json.dumps({"global_step": step}))


@pytest.fixture
def train_log():
    """Point the trainer's logging at a run's train.log as a run does (setup_logging), and put it back after."""
    import logging
    names = ("studio", "transformers", "trl", "peft")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}

    def setup(run):
        from studio.train.lifecycle import setup_logging
        setup_logging(run)
        return run / runs.LOG
    yield setup
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


@pytest.mark.parametrize("wrote,last_attempt,says", [(2, 1, True), (1, 2, False), (1, 1, False)])
def test_resume_with_another_process_count_than_the_checkpoints_is_written_in_train_log(
        tmp_path, train_log, monkeypatch, wrote, last_attempt, says):
    """The checkpoint was written by `wrote` processes; status.json holds the last attempt's count (a retry that
    failed before it saved anything); this resume has one process."""
    from studio.train.lifecycle import _resume_point
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = _run_folder(tmp_path, "resumed", max_steps=20, batch_size=4, grad_accum=2)
    _checkpoint_by(run, 8, wrote)
    log = train_log(run)
    assert _resume_point(run, last_attempt, RunConfig.load(run / runs.CONFIG).train).name == "checkpoint-8"
    text = log.read_text()
    assert ("written by 2 processes and resumes with 1" in text) is says, text
    if says:
        assert "1 x Batch size x Gradient accumulation = 8 rows instead of 16" in text
        assert "the 12 left to 20 see 0.5 x the rows each" in text and "--devices 2" in text


@pytest.mark.train
def test_a_rank_killed_in_a_real_two_process_run_is_named(tiny_model_dir, tmp_path, monkeypatch):
    """`studio train --devices 2` (torchrun + gloo on CPU) with rank 1 SIGKILLed at step 2: the run ends failed
    naming rank 1 and the signal, and no process of it is left (~21 s here)."""
    from studio.config import preset

    from .helpers import sample_head
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    data = sample_head(64, tmp_path / "d.jsonl")
    cfg = preset("quick", model={"source": str(tiny_model_dir)}, data={"path": str(data)}, lora={"r": 8, "alpha": 32},
                 train={"max_steps": 400, "batch_size": 2, "max_length": 128, "save_steps": 4, "eval_steps": 4,
                        "devices": 2, "seed": 3})
    cfg.save(tmp_path / "ddp.yaml")
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "studio", "train", str(tmp_path / "ddp.yaml"), "--output", str(run)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 240
        while (events.read_status(run).get("step") or 0) < 2:
            assert p.poll() is None and time.time() < deadline, "the run did not reach step 2"
            time.sleep(0.3)
        (rank1,) = [c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
        rank1.kill()
        out, _ = p.communicate(timeout=180)
    finally:
        p.kill()
    st = events.read_status(run)
    assert p.returncode == 1 and st["state"] == "failed", out[-3000:]
    assert st["error"].startswith("Rank 1 was killed by signal 9 (SIGKILL)"), st["error"]
    assert not [q for q in psutil.process_iter(["cmdline"]) if str(run) in " ".join(q.info["cmdline"] or [])]
