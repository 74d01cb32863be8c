"""Shared fixtures: offline env, a private studio home, the real demo tokenizer, a tiny random Llama built with it,
run configs.

Tests never write into the real studio home (~/.cache/qlora-studio or $STUDIO_HOME): the session runs in a private
one, which every child process inherits, with the demo model linked from the real home when it is there (else it is
fetched once into the private one). Everything trained in tests uses the tiny model unless a test is marked `slow`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_JSONL = ROOT / "assets" / "datasets" / "pirate_qa.jsonl"
SAMPLE_CSV = ROOT / "assets" / "datasets" / "pirate_qa.csv"
ARTIFACTS = ROOT / "test-artifacts"


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


def _tiny_config(tiny_model_dir, dataset):
    from studio.config import preset
    return preset("quick", model={"source": str(tiny_model_dir)},
                  data={"path": str(dataset)},
                  lora={"r": 16, "alpha": 64},
                  train={"max_steps": 8, "learning_rate": 1e-2, "batch_size": 4, "max_length": 128,
                         "save_steps": 4, "eval_steps": 4, "eval_fraction": 0.1, "threads": 1})


def _head(n: int, path: Path) -> Path:
    path.write_text("".join(SAMPLE_JSONL.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return path


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """The first 48 rows of the sample data: enough for a few steps, fast to tokenize."""
    return _head(48, tmp_path / "small.jsonl")


@pytest.fixture
def tiny_config(tiny_model_dir, small_dataset):
    """A quick QLoRA run config on the tiny model: 4-bit NF4 base (bitsandbytes CPU backend), LoRA r=16,
    lr 1e-2 (the config's maximum) so a few steps move the loss well past noise."""
    return _tiny_config(tiny_model_dir, small_dataset)


WEIRD_NAME = "my run/../é*?"  # a run name no file system likes, for the export slug


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished 8-step QLoRA run on the tiny model, shared by the chat, export and UI tests."""
    from studio.train.lifecycle import run
    d = tmp_path_factory.mktemp("shared-tiny-run")
    cfg = _tiny_config(tiny_model_dir, _head(48, d / "small.jsonl")).replace(name=WEIRD_NAME)
    assert run(cfg, d / "run") == 0, (d / "run" / "train.log").read_text(encoding="utf-8")[-3000:]
    return d / "run"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_model_dir) -> Path:
    """`studio train assets/configs/demo.yaml` (the demo model, 30 steps, ~1 min here), shared by the slow tests."""
    import subprocess
    import sys
    import time

    out = tmp_path_factory.mktemp("demo") / "run"
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "assets/configs/demo.yaml"),
                          "--output", str(out)], capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"demo run: {time.time() - t:.0f} s")
    return out


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def data_refused(path: Path, *needles: str) -> str:
    """read_examples(path) raises DataError naming the file and holding every needle (case-insensitive)."""
    from studio.data import DataError, read_examples
    with pytest.raises(DataError) as e:
        read_examples(path)
    msg = str(e.value)
    assert path.name in msg, msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in: {msg}"
    return msg
