"""The export harms nothing around it (issue 22): it never deletes a user's folder, no helper child (converter,
quantiser, llama-server) outlives it (SIGKILL, SIGTERM), its half-written work folders are swept, a damaged adapter is
refused before anything is written, and a full disk is said as such with a log the user can still read.

Fast: the run here carries a real but untrained LoRA adapter on the tiny model (no training), and the llama.cpp tools
are stand-ins (tiny Python scripts) put in place through `llamacpp.tools()`, the one place the real code asks where
they are, so the real code paths start them."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, sample_head, tiny_run_config

ENOSPC_LINE = "OSError: [Errno 28] No space left on device"

# One script for the three stand-ins: the converters (convert_*_to_gguf.py ... --outfile OUT) and llama-server
# (-m MODEL --port P). STANDIN_MODE: ok (write OUT), hang (record the pid, then sleep), enospc (fail as a full disk).
STANDIN = textwrap.dedent(f"""\
    #!{sys.executable}
    import http.server, json, os, sys, time
    from pathlib import Path
    mode, state = os.environ.get("STANDIN_MODE", "ok"), Path(os.environ["STANDIN_DIR"])
    args = sys.argv[1:]
    if "--port" in args:  # llama-server
        (state / "server.pid").write_text(str(os.getpid()))
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b'{{"status": "ok"}}')
            def do_POST(self):
                (state / "completion").write_text("asked")
                time.sleep(600)  # stays busy: the exporter is killed while it waits
            def log_message(self, *a):
                pass
        http.server.HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), H).serve_forever()
    (state / "converter.pid").write_text(str(os.getpid()))
    if mode == "hang":
        print("converting ...", flush=True)
        time.sleep(600)
    if mode == "fail":
        print("KeyError: 'model.layers.0.weird'")
        sys.exit(3)
    if mode == "enospc":
        print("writing tensors ...")
        print("{ENOSPC_LINE}")
        sys.exit(1)
    Path(args[args.index("--outfile") + 1]).write_bytes(b"GGUF stand-in")
    """)

# The exporter as a user runs it (`studio export RUN --gguf f16 ...`), with the stand-in tools and a quick merge.
EXPORTER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from studio.export import llamacpp
    tools = Path(sys.argv[1])
    llamacpp.tools = lambda: llamacpp.Tools(tree=tools / "tree", lib=tools / "lib", server=tools / "llama-server")
    import studio.export.gguf.pipeline as eg

    def quick(self, quant, n_prompts, n_tokens):  # the merge without PyTorch (seconds, not half a minute)
        (self.work / "merged").mkdir()
        return None, 1, "f16", [[{"role": "user", "content": "hi"}]], "training", [[1, 2, 3]], [[4]], []

    eg._Work.merge_and_answer = quick
    from studio.cli import main
    sys.exit(main(["export", *sys.argv[2:]]))
    """)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A run folder (config.yaml, dataset.jsonl, adapter/) whose adapter is a real, untrained LoRA on the tiny
    model: every export can read, merge and convert it, and nothing trains."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("lora-run") / "run"
    run.mkdir()
    data = sample_head(8, run / "dataset.jsonl")
    tiny_run_config(tiny_model_dir, data).replace(name="safety").save(run / "config.yaml")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(run / "adapter", safe_serialization=True)
    return run


@pytest.fixture
def run(lora_run, tmp_path) -> Path:
    """A private copy of lora_run for one test."""
    import shutil
    return Path(shutil.copytree(lora_run, tmp_path / "run"))


@pytest.fixture
def stand_ins(tmp_path) -> Path:
    d = tmp_path / "tools"
    for rel in ("tree/convert_hf_to_gguf.py", "tree/convert_lora_to_gguf.py", "llama-server"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(STANDIN, encoding="utf-8")
        (d / rel).chmod(0o755)
    (d / "lib").mkdir()
    (d / "state").mkdir()
    return d


@pytest.fixture
def use_stand_ins(stand_ins, monkeypatch):
    from studio.export import llamacpp
    monkeypatch.setattr(llamacpp, "tools", lambda: llamacpp.Tools(tree=stand_ins / "tree", lib=stand_ins / "lib",
                                                                  server=stand_ins / "llama-server"))
    monkeypatch.setenv("STANDIN_DIR", str(stand_ins / "state"))
    return stand_ins


def _exporter(stand_ins: Path, tmp_path: Path, *args, mode: str = "ok") -> subprocess.Popen:
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER, encoding="utf-8")
    env = {**os.environ, "STANDIN_MODE": mode, "STANDIN_DIR": str(stand_ins / "state"), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(stand_ins), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the exporter ended first (exit {proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def _gone(pid: int, timeout: float = 10) -> bool:
    """True once `pid` is no longer a live process (a zombie counts as gone: it runs nothing)."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


# --- 1. --merged-out never deletes a user's folder ------------------------------------------------------------

def test_merged_out_refuses_a_users_folder(run, tmp_path, capsys):
    from studio.cli import main
    from studio.export import export_merged

    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years of work", encoding="utf-8")
    (mine / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="is not empty and is not a merged model the studio exported") as e:
        export_merged(run, mine)
    assert "nothing was written" in str(e.value) and "--merged-out" in str(e.value)
    assert main(["export", str(run), "--out", str(tmp_path / "a.zip"), "--merged", "--merged-out", str(mine)]) != 0
    assert "is not empty and is not a merged model" in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text(encoding="utf-8") == "four years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["photos", "thesis.txt"] and (mine / "photos" / "a.jpg").exists()
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is a file"):
        export_merged(run, tmp_path / "a-file")


def test_merged_out_replaces_its_own_earlier_export(run, tmp_path):
    """A new or empty folder is fine; an earlier merged export (marked as the studio's) is replaced."""
    from studio.export import export_merged
    from studio.export.safety import MARK

    dest = tmp_path / "merged"
    dest.mkdir()
    assert export_merged(run, dest) == dest
    assert (dest / MARK).is_file() and (dest / "model.safetensors").is_file()
    (dest / "stale.bin").write_bytes(b"old")
    assert export_merged(run, dest) == dest
    assert not (dest / "stale.bin").exists() and (dest / "model.safetensors").is_file()
    assert _hidden(tmp_path) == []


# --- 2. no helper child outlives the exporter; its work folder is swept at the next export -------------------

def test_sigkilled_exporter_leaves_no_server_and_its_folder_is_swept(run, use_stand_ins, tmp_path):
    from studio.export import llamacpp
    from studio.export.gguf import export_gguf

    out = tmp_path / "gguf"
    state = use_stand_ins / "state"
    proc = _exporter(use_stand_ins, tmp_path, run, "--out", tmp_path / "a.zip", "--gguf", "f16", "--gguf-out", out)
    try:
        _wait_for(state / "completion", proc)  # llama-server is up and checking the file
        server = int((state / "server.pid").read_text())
        proc.kill()
        proc.wait(10)
        assert _gone(server), "llama-server outlived the SIGKILLed exporter"
    finally:
        _kill(proc.pid)
        if (state / "server.pid").exists():
            _kill(int((state / "server.pid").read_text()))
    left = [n for n in _hidden(out) if n.startswith(".gguf-")]
    assert len(left) == 1, _hidden(out)

    said = []

    def stop_after_sweep(*a, **k):
        raise llamacpp.GGUFError("stopped by the test after the sweep")

    import studio.export.gguf.pipeline as eg
    orig = eg._Work.merge_and_answer
    eg._Work.merge_and_answer = stop_after_sweep
    try:
        with pytest.raises(llamacpp.GGUFError, match="stopped by the test"):
            export_gguf(run, "f16", out=out, progress=lambda f, d: said.append(d))
    finally:
        eg._Work.merge_and_answer = orig
    assert _hidden(out) == [], _hidden(out)
    assert any("unfinished export" in d and left[0] in d for d in said), said


def test_sweep_keeps_a_running_exports_folder(tmp_path):
    """A work folder whose exporter still runs (pid + start time match) is left alone; one whose recorded pid is
    now another process (start time differs) is swept."""
    from studio.env.procs import started
    from studio.export.safety import claim, sweep

    live = claim(tmp_path / ".gguf-live")
    dead = tmp_path / ".gguf-dead"
    dead.mkdir()
    (dead / "big.gguf").write_bytes(b"x" * 1000)
    (dead / ".exporter.json").write_text(json.dumps({"pid": os.getpid(), "started": started(os.getpid()) - 60}))
    said = sweep(tmp_path)
    assert live.is_dir() and not dead.exists()
    assert len(said) == 1 and ".gguf-dead" in said[0], said


def test_real_children_get_die_with_parent(monkeypatch, tmp_path):
    """The converter/quantiser (_run) and llama-server (Server) are started with die_with_parent."""
    from studio.env import procs
    from studio.export import llamacpp

    seen = []
    real = subprocess.Popen

    def spy(*a, **k):
        seen.append(k.get("preexec_fn"))
        return real(*a, **k)

    monkeypatch.setattr(llamacpp.subprocess, "Popen", spy)
    llamacpp._run([sys.executable, "-c", "pass"], tmp_path / "log", "A stand-in")
    assert seen == [procs.die_with_parent]


# --- 3. SIGTERM: the child is ended, the work folder removed, a sentence, non-zero ---------------------------

def test_sigterm_during_conversion_cleans_up(run, stand_ins, tmp_path):
    out = tmp_path / "gguf"
    state = stand_ins / "state"
    proc = _exporter(stand_ins, tmp_path, run, "--out", tmp_path / "a.zip", "--gguf", "f16", "--gguf-out", out,
                     mode="hang")
    try:
        _wait_for(state / "converter.pid", proc)
        converter = int((state / "converter.pid").read_text())
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        print(f"SIGTERM -> exit in {time.monotonic() - t0:.2f} s")
        assert proc.returncode not in (0, -signal.SIGTERM), proc.returncode
        assert "stopped" in err.lower() and "SIGTERM" in err and "Traceback" not in err, err[-2000:]
        assert _gone(converter), "the converter outlived the export"
    finally:
        _kill(proc.pid)
        if (state / "converter.pid").exists():
            _kill(int((state / "converter.pid").read_text()))
    assert _hidden(out) == [], _hidden(out)


# --- 4. a damaged adapter is refused before any export ------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage_config"])
def test_damaged_adapter_is_refused_before_any_export(run, tmp_path, capsys, damage):
    from studio.cli import main
    from studio.export import export_adapter_zip, export_merged
    from studio.export.gguf import export_gguf

    adapter = run / "adapter"
    if damage == "truncated":
        st = adapter / "adapter_model.safetensors"
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
        name = "adapter_model.safetensors"
    else:
        (adapter / "adapter_config.json").write_text("\x00garbage{", encoding="utf-8")
        name = "adapter_config.json"
    for export in (export_adapter_zip, export_merged, export_gguf):
        with pytest.raises(ValueError, match="is damaged") as e:
            export(run)
        assert name in str(e.value) and "earlier checkpoint" in str(e.value), str(e.value)
    zip_path = tmp_path / "a.zip"
    assert main(["export", str(run), "--out", str(zip_path), "--gguf", "f16"]) != 0
    err = capsys.readouterr().err
    assert "is damaged" in err and "Traceback" not in err, err
    assert not zip_path.exists() and not (run / "exports").exists()


# --- 5. a full disk is said, with the free space and a log that still exists -------------------------------

def test_disk_full_in_the_converter_is_said_and_its_log_kept(run, use_stand_ins, tmp_path, monkeypatch):
    from studio.export import llamacpp
    from studio.export.gguf import export_gguf

    monkeypatch.setenv("STANDIN_MODE", "enospc")
    _quick_merge(monkeypatch)
    out = tmp_path / "gguf"
    with pytest.raises(llamacpp.GGUFError) as e:
        export_gguf(run, "f16", out=out)
    msg = str(e.value)
    assert re.search(rf"disk full: \d+ MB free in {re.escape(str(out))}", msg), msg
    logs = [Path(m) for m in re.findall(r"(/\S+\.log)", msg)]
    assert logs and all(p.is_file() for p in logs), msg
    assert ENOSPC_LINE in logs[0].read_text(encoding="utf-8")
    assert _hidden(out) == [], _hidden(out)


def test_failed_tool_log_is_kept_where_the_message_says(run, use_stand_ins, tmp_path, monkeypatch):
    """Any tool failure: the message's log path is one that still exists once the work folder is gone."""
    from studio.export import llamacpp
    from studio.export.gguf import export_gguf

    monkeypatch.setenv("STANDIN_MODE", "fail")
    _quick_merge(monkeypatch)
    out = tmp_path / "gguf"
    with pytest.raises(llamacpp.GGUFError, match="exit 3") as e:
        export_gguf(run, "f16", out=out)
    logs = [Path(m) for m in re.findall(r"(/\S+\.log)", str(e.value))]
    assert logs and all(p.is_file() and p.parent == out for p in logs), str(e.value)
    assert "model.layers.0.weird" in logs[0].read_text(encoding="utf-8")
    assert _hidden(out) == [], _hidden(out)


def test_disk_full_in_the_studio_process_is_said(run, use_stand_ins, tmp_path, monkeypatch):
    """An OSError ENOSPC raised in the exporter itself (saving the merged model) becomes the same sentence."""
    import studio.export.gguf.pipeline as eg
    from studio.export import llamacpp

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eg._Work, "merge_and_answer", full)
    out = tmp_path / "gguf"
    with pytest.raises(llamacpp.GGUFError, match=rf"disk full: \d+ MB free in {re.escape(str(out))}"):
        eg.export_gguf(run, "f16", out=out)
    assert _hidden(out) == [], _hidden(out)


def _quick_merge(monkeypatch) -> None:
    """merge_and_answer without PyTorch: the merged folder the converter reads, and empty answers."""
    import studio.export.gguf.pipeline as eg

    def quick(self, quant, n_prompts, n_tokens):
        (self.work / "merged").mkdir()
        return None, 1, "f16", [], "training", [], [], []

    monkeypatch.setattr(eg._Work, "merge_and_answer", quick)

