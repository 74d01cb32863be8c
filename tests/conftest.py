"""Shared fixtures: offline env, a private studio home, the real demo tokenizer, a tiny random Llama built with it,
run configs, the shared finished runs, the app in a child process; and the `train` marker put on every test that
uses a training fixture. What tests share that is not a fixture is in tests/helpers.py.

Tests never write into the real studio home (~/.cache/qlora-studio or $STUDIO_HOME): the session runs in a private
one, which every child process inherits, with the demo model linked from the real home when it is there (else it is
fetched once into the private one). Everything trained in tests uses the tiny model unless a test is marked `slow`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS, CHROMIUM, ROOT, free_port, sample_head, studio_cli, tiny_run_config, wait_http

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The fixtures that train a model themselves, here and in test modules. A test that uses one, directly or through
# another fixture (sft_run, f16_export, engine, ... build on trained_run), is marked `train` at collection:
# pytest's item.fixturenames is the closure of every fixture the test needs. A test that trains inline (`studio
# train`, runs.launch/start/resume, lifecycle.run, build_trainer) carries @pytest.mark.train itself.
TRAINING_FIXTURES = frozenset({
    "trained_run", "demo_run",  # here
    "trained",  # test_ui_handlers: a run started from the Train tab's form
    "dpo_run",  # test_dpo
    "ddp_run",  # test_distributed
    "cuda_run",  # test_cuda
})


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.train)


@pytest.fixture(scope="session", autouse=True)
def private_studio_home(tmp_path_factory) -> Path:
    """$STUDIO_HOME for the whole session: a fresh folder (trainer lock, CPU precision cache, runs), never the user's.
    A cached measurement taken on a busy test machine once decided every later run on it: not again."""
    from studio.env.paths import DEMO_NAME, demo_dir
    real_demo = demo_dir()
    home = tmp_path_factory.mktemp("studio-home")
    if (real_demo / "model.safetensors").is_file() and (real_demo / "tokenizer.json").is_file():
        (home / "models").mkdir()
        (home / "models" / DEMO_NAME).symlink_to(real_demo, target_is_directory=True)  # read, never written
    before = os.environ.get("STUDIO_HOME")
    os.environ["STUDIO_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("STUDIO_HOME", None)
    else:
        os.environ["STUDIO_HOME"] = before


@pytest.fixture(scope="session")
def demo_model_dir(private_studio_home) -> Path:
    from studio.models import fetch_demo
    return fetch_demo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, demo_model_dir) -> Path:
    """A 2-layer Llama (hidden 64) with random weights and the real SmolLM2 tokenizer + chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, initializer_range=0.15,  # logits wide enough to learn
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(d))
    return d


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """The first 48 rows of the sample data: enough for a few steps, fast to tokenize."""
    return sample_head(48, tmp_path / "small.jsonl")


@pytest.fixture
def tiny_config(tiny_model_dir, small_dataset):
    """A quick QLoRA run config on the tiny model: 4-bit NF4 base (bitsandbytes CPU backend), LoRA r=16,
    lr 1e-2 (the config's maximum) so a few steps move the loss well past noise."""
    return tiny_run_config(tiny_model_dir, small_dataset)


WEIRD_NAME = "my run/../é*?"  # a run name no file system likes, for the export slug


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished 8-step QLoRA run on the tiny model, shared by the chat, export and UI tests."""
    from studio.train.lifecycle import run
    d = tmp_path_factory.mktemp("shared-tiny-run")
    cfg = tiny_run_config(tiny_model_dir, sample_head(48, d / "small.jsonl")).replace(name=WEIRD_NAME)
    assert run(cfg, d / "run") == 0, (d / "run" / "train.log").read_text(encoding="utf-8")[-3000:]
    return d / "run"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_model_dir) -> Path:
    """`studio train assets/configs/demo.yaml` (the demo model, 30 steps, ~1 min here), shared by the slow tests."""
    import time

    out = tmp_path_factory.mktemp("demo") / "run"
    t = time.time()
    res = studio_cli("train", ROOT / "assets/configs/demo.yaml", "--output", out, timeout=1500, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"demo run: {time.time() - t:.0f} s")
    return out


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def app_url(tmp_path, demo_model_dir):
    """`python launch.py` in a child process, as a user starts it, on a free port with its own runs folder:
    (url, runs folder, app log). Fails at once, saying what to install, when Chromium is missing."""
    import json
    import subprocess
    import sys

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install chromium` (Debian) or set "
                    f"STUDIO_CHROMIUM to its path. This test never downloads a browser.")
    port = free_port()
    runs_dir = tmp_path / "runs"
    log = tmp_path / "app.log"
    env = {**os.environ, "STUDIO_RUNS_DIR": str(runs_dir), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--runs-dir",
                                 str(runs_dir)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc, log)
        yield f"http://127.0.0.1:{port}/", runs_dir, log
    finally:
        from studio.runs import queue
        from studio.runs.process import trainer_pid
        if runs_dir.is_dir():  # a queue left by the test must not start runs after it
            queue.set_paused(True, runs_dir)
            worker = queue.worker_holder(runs_dir)
            if worker:
                os.kill(worker["pid"], 15)
        for d in runs_dir.glob("*"):  # never leave a trainer behind; only the recorded trainer itself is signalled
            try:
                st = json.loads((d / "status.json").read_text())
                pid = trainer_pid(st) if st.get("state") in ("queued", "running", "stopping") else None
                if pid is not None:
                    os.kill(pid, 15)
            except (OSError, ValueError):
                pass
        # a signalled trainer saves a checkpoint before it ends: the next test's training must not meet its lock
        from studio.runs.lock import wait_released
        wait_released(120)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
