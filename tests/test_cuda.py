"""The CUDA path: a 4-bit NF4 base with bf16 autocast, trained a few steps, chatted with, exported.

These run only where CUDA is present (`pytest -m cuda` on a GPU machine); elsewhere pytest reports them as
skipped with the reason. The tiny model keeps them to seconds; bench/gpu_qlora.py measures the 8B shape.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.helpers import sample_head, tiny_run_config


def _cuda_reason() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device on this machine (these run on a GPU machine: pytest -m cuda)"
    import importlib.util
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return ""


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(bool(_cuda_reason()), reason=_cuda_reason() or "-")]
QUESTION = [{"role": "user", "content": "How do I boil an egg?"}]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, tiny_model_dir) -> Path:
    """12 steps of QLoRA on the GPU: NF4 base, compute dtype auto (bf16 where the GPU has it)."""
    from studio.train.lifecycle import run
    d = tmp_path_factory.mktemp("cuda-run")
    cfg = tiny_run_config(tiny_model_dir, sample_head(48, d / "small.jsonl")).replace(
        name="cuda", train={"max_steps": 12, "logging_steps": 1})
    assert cfg.model.quantization == "nf4" and cfg.model.compute_dtype == "auto"
    assert run(cfg, d / "run") == 0, (d / "run" / "train.log").read_text()[-3000:]
    return d / "run"


def test_training_on_cuda_lowers_the_loss_in_bf16_autocast_with_fp32_adapters(cuda_run):
    import torch
    from safetensors import safe_open

    from studio.runs.events import read_metrics
    from studio.runs import ADAPTER, latest_checkpoint
    log = (cuda_run / "train.log").read_text()
    from studio.env.devices import cuda_dtype_name
    want = cuda_dtype_name()  # bf16 only at compute capability >= 8 (is_bf16_supported counts emulation)
    assert want == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16")
    assert " on cuda" in log and f"compute dtype {want}" in log and "4-bit NF4" in log, log[:2000]
    df = read_metrics(cuda_run)
    loss = df[df.kind == "train"].loss.tolist()
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.5, loss
    with safe_open(str(cuda_run / ADAPTER / "adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
    ckpt = latest_checkpoint(cuda_run)
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 12
    args = torch.load(ckpt / "training_args.bin", weights_only=False)  # our own file, written by this test's run
    assert "adamw_torch_fused" in str(args.optim) and args.bf16 == (want == "bfloat16")  # optimizer auto on CUDA


def test_chat_on_a_4bit_base_on_cuda(cuda_run):
    from studio.chat import ChatEngine, GenSettings
    engine = ChatEngine.load(cuda_run, device="cuda", quantize=True)
    assert engine.key[1] == "cuda" and engine.quantize
    assert getattr(engine.model, "is_loaded_in_4bit", False) or any(
        "4bit" in type(m).__name__.lower() for m in engine.model.modules())
    s = GenSettings(temperature=0, max_new_tokens=12)
    tuned = engine.generate_ids(QUESTION, tuned=True, settings=s)
    base = engine.generate_ids(QUESTION, tuned=False, settings=s)
    assert tuned and base and tuned != base
    assert engine.generate_ids(QUESTION, tuned=True, settings=s) == tuned  # greedy is deterministic


def test_export_on_cuda_reloads_and_generates(cuda_run, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.cli import main
    zip_path, merged_dir = tmp_path / "a.zip", tmp_path / "merged"
    assert main(["export", str(cuda_run), "--out", str(zip_path), "--merged", "--merged-out", str(merged_dir)]) == 0
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], dtype=torch.float32).to("cuda")
    model = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).to("cuda").eval()
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"].to("cuda")
    with torch.inference_mode():
        a, b = model(input_ids=ids).logits, merged(input_ids=ids).logits
        gen = merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=8, eos_token_id=2, pad_token_id=2)
    # the merge ran on the CPU in bf16 (studio.export.merged.merge_dtype), so the two agree to bf16's rounding
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert gen.shape[1] > ids.shape[1]


def _train(tmp_path, tiny_model_dir, model: dict | None = None, **train):
    """A short tiny-model run on the GPU in this process: (run folder, exit code, train losses)."""
    from studio.runs.events import read_metrics
    from studio.train.lifecycle import run
    cfg = tiny_run_config(tiny_model_dir, sample_head(48, tmp_path / "small.jsonl")).replace(
        name="cuda-variant", model=model or {}, train={"max_steps": 8, "logging_steps": 1, "eval_steps": 0,
                                                       "eval_fraction": 0.0, **train})
    code = run(cfg, tmp_path / "run")
    df = read_metrics(tmp_path / "run") if (tmp_path / "run" / "metrics.jsonl").is_file() else None
    return tmp_path / "run", code, ([] if df is None else df[df.kind == "train"].loss.tolist())


def test_gradient_checkpointing_on_cuda(tmp_path, tiny_model_dir):
    run, code, loss = _train(tmp_path, tiny_model_dir, gradient_checkpointing=True)
    assert code == 0, (run / "train.log").read_text()[-3000:]
    assert len(loss) == 8 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss


def test_fp16_with_the_grad_scaler_on_cuda(tmp_path, tiny_model_dir):
    """What a T4 / V100 / RTX 20xx runs (auto picks it below compute capability 8): forced here on any GPU."""
    import torch

    from studio.runs import latest_checkpoint
    run, code, loss = _train(tmp_path, tiny_model_dir, model={"compute_dtype": "float16"})
    assert code == 0, (run / "train.log").read_text()[-3000:]
    assert "compute dtype float16" in (run / "train.log").read_text()
    assert len(loss) == 8 and all(x == x for x in loss) and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    args = torch.load(latest_checkpoint(run) / "training_args.bin", weights_only=False)
    assert args.fp16 and not args.bf16


def test_out_of_memory_on_cuda_is_the_runs_own_advice(tmp_path, tiny_model_dir):
    """A GPU cap of ~2% of the card and a batch whose logits alone are ~13 GB: the run fails with the advice read
    from its settings (not a traceback, not "use 4-bit" to an NF4 run), and the cap is lifted after."""
    import torch

    from studio.runs.events import read_status
    torch.cuda.set_per_process_memory_fraction(0.02)
    try:
        run, code, _ = _train(tmp_path, tiny_model_dir, batch_size=64, max_length=1024, packing=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    st = read_status(run)
    assert code != 0 and st["state"] == "failed", st
    assert st["error"].startswith("Out of memory.") and "4-bit" not in st["error"], st["error"]
    assert "Batch size from 64 to 32" in st["error"]


def test_dpo_on_cuda(cuda_run, tmp_path):
    from studio.runs import followups, judgements
    from studio.train.lifecycle import run
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    for i in range(8):
        judgements.append_vote(cuda_run, prompt, f"Boil it for {i + 6} minutes. Arr!", f"No idea {i}.", "base",
                               "tuned", "a")
    cfg = followups.dpo_config(cuda_run).replace(train={"max_steps": 4, "logging_steps": 1})
    assert run(cfg, tmp_path / "dpo") == 0, (tmp_path / "dpo" / "train.log").read_text()[-3000:]
    assert "reference: the starting adapter, frozen" in (tmp_path / "dpo" / "train.log").read_text()


@pytest.mark.skipif(not _cuda_reason() and __import__("torch").cuda.device_count() < 2,
                    reason="DDP needs two GPUs; this machine has one")
def test_ddp_on_two_gpus(tmp_path, tiny_model_dir):
    from tests.helpers import studio_cli
    cfg = tiny_run_config(tiny_model_dir, sample_head(48, tmp_path / "small.jsonl")).replace(
        name="ddp", train={"max_steps": 6, "devices": 2, "eval_steps": 0, "eval_fraction": 0.0})
    cfg.save(tmp_path / "ddp.yaml")
    res = studio_cli("train", tmp_path / "ddp.yaml", "--output", tmp_path / "run", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Rank 1 of 2" in log or "2 processes" in log, log[-2000:]
